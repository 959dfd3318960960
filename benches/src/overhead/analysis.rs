//! From measurements to the report's numbers: step ratios next to the FLOP
//! model, GFLOP/s as a fraction of the measured GEMM peak, the loss
//! comparison, and the issue's targets, each met or missed with the reason.

use crate::flops::{model_ratios, step_flops, StepKind};
use crate::overhead::machine::Machine;
use crate::overhead::measure::{quantile, Stats};
use crate::overhead::plan::{Group, GroupKind, Member, StepConfig, Task};
use crate::overhead::profile::Profile;
use crate::overhead::{Backend, Impl};
use clae_reference::loss::LossKind;

/// What happened to one member.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Timed.
    Measured(Stats),
    /// Not runnable here (the reason is printed and reported).
    Skipped(String),
    /// Failed while running (the error is reported).
    Failed(String),
}

/// One member and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberResult {
    /// What was (to be) measured.
    pub member: Member,
    /// Exact FLOPs of one run.
    pub flops: u64,
    /// Timing or why there is none.
    pub outcome: Outcome,
}

impl MemberResult {
    /// The statistics, when measured.
    pub fn stats(&self) -> Option<&Stats> {
        match &self.outcome {
            Outcome::Measured(s) => Some(s),
            _ => None,
        }
    }

    /// Median seconds per run, when measured.
    pub fn median(&self) -> Option<f64> {
        self.stats().map(|s| s.median)
    }

    /// Achieved GFLOP/s at the median, when measured.
    pub fn gflops(&self) -> Option<f64> {
        self.median().map(|t| self.flops as f64 / t / 1e9)
    }
}

/// A group and its members' outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupResult {
    /// The group as planned.
    pub group: Group,
    /// One result per member, in plan order.
    pub members: Vec<MemberResult>,
    /// Seconds the group took, warm-up included.
    pub wall_s: f64,
    /// Timed rounds.
    pub rounds: usize,
    /// `/proc/loadavg` (1, 5, 15 min) when the group started.
    pub load: String,
    /// Rounds discarded because other processes were busy.
    pub discarded: usize,
    /// Median number of CPUs other processes kept busy during the kept rounds
    /// (NaN when unknown).
    pub foreign_cpus: f64,
}

impl GroupResult {
    /// The result of the member running `task` on `imp`.
    pub fn find(&self, imp: Impl, pred: impl Fn(&Task) -> bool) -> Option<&MemberResult> {
        self.members
            .iter()
            .find(|m| m.member.imp == imp && pred(&m.member.task))
    }
}

/// A whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// `cpu`, `full`, `quick`.
    pub plan_name: String,
    /// The command line that produced it.
    pub command: String,
    /// Machine, threads, versions, date.
    pub machine: Machine,
    /// The groups in run order.
    pub groups: Vec<GroupResult>,
    /// The reference-step profile, if run.
    pub profile: Option<Profile>,
    /// Seconds the whole run took.
    pub wall_s: f64,
    /// Notices printed during the run (skipped members, failures).
    pub notices: Vec<String>,
}

/// The measured GEMM peak of every implementation, in GFLOP/s: the fastest
/// sample of the GEMM groups (a peak is what the product can reach; the
/// fastest sample is also the one least disturbed by other processes).
pub fn gemm_peaks(run: &RunResult) -> Vec<(Impl, usize, f64)> {
    let mut peaks: Vec<(Impl, usize, f64)> = Vec::new();
    for g in &run.groups {
        let GroupKind::Gemm { size } = g.group.kind else {
            continue;
        };
        for m in &g.members {
            let Some(gf) = m.stats().map(|s| m.flops as f64 / s.min / 1e9) else {
                continue;
            };
            match peaks.iter_mut().find(|(i, _, _)| *i == m.member.imp) {
                Some(p) if p.2 < gf => *p = (m.member.imp, size, gf),
                Some(_) => {}
                None => peaks.push((m.member.imp, size, gf)),
            }
        }
    }
    peaks.sort_by_key(|p| p.0);
    peaks
}

/// The GEMM peak that a member's GFLOP/s is divided by.
pub fn peak_for(peaks: &[(Impl, usize, f64)], imp: Impl) -> Option<f64> {
    peaks.iter().find(|p| p.0 == imp).map(|p| p.2)
}

/// A measured over modelled ratio pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// Measured side by side: the median over rounds of the per-round ratio
    /// (see [`paired_ratio`]).
    pub measured: Option<f64>,
    /// First and third quartile of the per-round ratios.
    pub spread: Option<(f64, f64)>,
    /// Exact FLOP-model ratio.
    pub model: f64,
    /// docs/SPEC.md §6's idealised ratio.
    pub spec: f64,
}

/// One implementation on one step configuration: the report's main row.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    /// The group it came from.
    pub group_id: String,
    /// Encoder, batch, loss.
    pub config: StepConfig,
    /// Which implementation.
    pub imp: Impl,
    /// Plain, lean, authors' results (None when not in the group).
    pub steps: [Option<MemberResult>; 3],
    /// lean / plain.
    pub lean_over_plain: Ratio,
    /// authors / plain.
    pub authors_over_plain: Ratio,
    /// authors / lean.
    pub authors_over_lean: Ratio,
    /// The implementation's GEMM peak (GFLOP/s), if measured.
    pub peak_gflops: Option<f64>,
}

impl StepRow {
    /// Median seconds of a step kind.
    pub fn median(&self, kind: StepKind) -> Option<f64> {
        self.steps[kind_index(kind)].as_ref()?.median()
    }

    /// Stats of a step kind.
    pub fn stats(&self, kind: StepKind) -> Option<&Stats> {
        self.steps[kind_index(kind)].as_ref()?.stats()
    }

    /// Achieved GFLOP/s of a step kind.
    pub fn gflops(&self, kind: StepKind) -> Option<f64> {
        self.steps[kind_index(kind)].as_ref()?.gflops()
    }

    /// Achieved fraction of the GEMM peak of a step kind.
    pub fn peak_fraction(&self, kind: StepKind) -> Option<f64> {
        Some(self.gflops(kind)? / self.peak_gflops?)
    }

    /// GFLOP/s of the extra work of `kind` over the plain step:
    /// `(FLOPs(kind) − FLOPs(plain)) / (t(kind) − t(plain))`.
    pub fn marginal_gflops(&self, kind: StepKind) -> Option<f64> {
        let (a, p) = (
            self.steps[kind_index(kind)].as_ref()?,
            self.steps[0].as_ref()?,
        );
        let dt = a.median()? - p.median()?;
        (dt > 0.0).then(|| (a.flops as f64 - p.flops as f64) / dt / 1e9)
    }
}

fn kind_index(kind: StepKind) -> usize {
    match kind {
        StepKind::Plain => 0,
        StepKind::Lean => 1,
        StepKind::Authors => 2,
    }
}

/// The per-round ratios `a_r / b_r` of two members of one group, summarised
/// as `(median, q1, q3)`. Both were timed in the same rounds, so a slow patch
/// of the machine that lasts a round or longer cancels in each ratio; where
/// the samples do not pair up (different round counts) the ratio of medians
/// is returned with no spread.
///
/// ```
/// use clae_benches::overhead::analysis::paired_ratio;
/// use clae_benches::overhead::measure::Stats;
/// // the machine was twice as slow in the second round: the ratio stays 2
/// let a = Stats::from_samples(vec![2.0, 4.0, 2.0], 1);
/// let b = Stats::from_samples(vec![1.0, 2.0, 1.0], 1);
/// assert_eq!(paired_ratio(&a, &b), (2.0, Some((2.0, 2.0))));
/// ```
pub fn paired_ratio(a: &Stats, b: &Stats) -> (f64, Option<(f64, f64)>) {
    if a.samples.len() != b.samples.len() || a.samples.is_empty() {
        return (a.median / b.median, None);
    }
    let mut r: Vec<f64> = a
        .samples
        .iter()
        .zip(&b.samples)
        .map(|(x, y)| x / y)
        .collect();
    r.sort_by(f64::total_cmp);
    (
        quantile(&r, 0.5),
        Some((quantile(&r, 0.25), quantile(&r, 0.75))),
    )
}

fn ratio(a: Option<&Stats>, b: Option<&Stats>) -> (Option<f64>, Option<(f64, f64)>) {
    match (a, b) {
        (Some(a), Some(b)) => {
            let (m, s) = paired_ratio(a, b);
            (Some(m), s)
        }
        _ => (None, None),
    }
}

/// The step rows of a run, one per (step group, implementation).
pub fn step_rows(run: &RunResult) -> Vec<StepRow> {
    let peaks = gemm_peaks(run);
    let mut rows = Vec::new();
    for g in &run.groups {
        let GroupKind::Step(config) = g.group.kind else {
            continue;
        };
        let mut imps: Vec<Impl> = g.members.iter().map(|m| m.member.imp).collect();
        imps.dedup();
        let enc = config.encoder_flops();
        let (m_lean, m_auth, m_al) = model_ratios(&enc, config.loss, config.optimizer());
        let s_lean = StepKind::Lean.spec_ratio(config.loss);
        let s_auth = StepKind::Authors.spec_ratio(config.loss);
        for imp in imps {
            let steps = StepKind::ALL.map(|k| {
                g.find(imp, |t| matches!(t, Task::Step { kind, .. } if *kind == k))
                    .cloned()
            });
            let st = |i: usize| steps[i].as_ref().and_then(|m| m.stats());
            let (lp, lp_s) = ratio(st(1), st(0));
            let (ap, ap_s) = ratio(st(2), st(0));
            let (al, al_s) = ratio(st(2), st(1));
            rows.push(StepRow {
                group_id: g.group.id.clone(),
                config,
                imp,
                lean_over_plain: Ratio {
                    measured: lp,
                    spread: lp_s,
                    model: m_lean,
                    spec: s_lean,
                },
                authors_over_plain: Ratio {
                    measured: ap,
                    spread: ap_s,
                    model: m_auth,
                    spec: s_auth,
                },
                authors_over_lean: Ratio {
                    measured: al,
                    spread: al_s,
                    model: m_al,
                    spec: s_auth / s_lean,
                },
                peak_gflops: peak_for(&peaks, imp),
                steps,
            });
        }
    }
    // Report order: small to large, then the ResNet; run order differs.
    rows.sort_by_key(|r| size_rank(r.config.size));
    rows
}

/// Position of a size name in tables (small, medium, large, resnet18, others).
pub fn size_rank(size: &str) -> usize {
    ["tiny", "small", "medium", "large", "resnet18"]
        .iter()
        .position(|&s| s == size)
        .unwrap_or(5)
}

/// One loss at one `N`: every implementation's median.
#[derive(Debug, Clone, PartialEq)]
pub struct LossRow {
    /// Which loss.
    pub kind: LossKind,
    /// Batch size.
    pub n: usize,
    /// Embedding dimension.
    pub d: usize,
    /// `(implementation, result)` in plan order.
    pub results: Vec<(Impl, MemberResult)>,
}

impl LossRow {
    /// Median seconds of an implementation.
    pub fn median(&self, imp: Impl) -> Option<f64> {
        self.results.iter().find(|r| r.0 == imp)?.1.median()
    }

    /// Statistics of an implementation.
    pub fn stats(&self, imp: Impl) -> Option<&Stats> {
        self.results.iter().find(|r| r.0 == imp)?.1.stats()
    }
}

/// The loss rows of a run.
pub fn loss_rows(run: &RunResult) -> Vec<LossRow> {
    let mut rows = Vec::new();
    for g in &run.groups {
        let GroupKind::Loss { n, d } = g.group.kind else {
            continue;
        };
        for kind in LossKind::ALL {
            let results: Vec<(Impl, MemberResult)> = g
                .members
                .iter()
                .filter(|m| matches!(m.member.task, Task::Loss { kind: k, .. } if k == kind))
                .map(|m| (m.member.imp, m.clone()))
                .collect();
            if !results.is_empty() {
                rows.push(LossRow {
                    kind,
                    n,
                    d,
                    results,
                });
            }
        }
    }
    rows.sort_by_key(|r| r.n);
    rows
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Met.
    Met,
    /// Missed (the reason says why).
    Missed,
    /// Not measured in this run (the reason says why).
    NotMeasured,
}

impl Status {
    /// `met`, `MISSED`, `not measured`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Missed => "MISSED",
            Status::NotMeasured => "not measured",
        }
    }
}

/// One checked instance of a target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetCheck {
    /// The target, as the issue states it.
    pub target: &'static str,
    /// Which configuration / implementation it was checked on.
    pub scope: String,
    /// The measured quantity, with the threshold.
    pub measured: String,
    /// Met, missed or not measured.
    pub status: Status,
    /// Why it was missed (or not measured); empty when met.
    pub reason: String,
}

/// Target 1's text.
pub const T_LEAN_MODEL: &str = "lean overhead within 10% of its FLOP model (large MLP)";
/// Target 2's text.
pub const T_AUTHORS_SLOWER: &str =
    "authors' recipe measurably slower than lean (every configuration)";
/// Target 3's text.
pub const T_REF_VS_TCH_STEP: &str = "reference f32 step within 1.25x of tch CPU f32 (large MLP)";
/// Target 4's text.
pub const T_REF_VS_TCH_LOSS: &str = "reference loss+grad at least as fast as tch CPU (N >= 256)";

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}

/// Checks the issue's four targets on a run.
pub fn check_targets(run: &RunResult) -> Vec<TargetCheck> {
    let rows = step_rows(run);
    let mut out = Vec::new();
    let profile = run.profile.as_ref();

    // 1. Lean within 10% of the model on the large MLP.
    let large: Vec<&StepRow> = rows
        .iter()
        .filter(|r| r.config.size == "large" && r.imp.backend != Backend::TchCuda)
        .collect();
    if large.is_empty() {
        out.push(not_measured(
            T_LEAN_MODEL,
            "large MLP",
            "no large-MLP step group in this run",
        ));
    }
    for r in &large {
        let scope = format!("{} loss, {}", r.config.loss, r.imp);
        let Some(meas) = r.lean_over_plain.measured else {
            out.push(not_measured(T_LEAN_MODEL, &scope, &missing_reason(r)));
            continue;
        };
        let model = r.lean_over_plain.model;
        let off = meas / model - 1.0;
        let measured = format!(
            "lean/plain {meas:.3} vs model {model:.3} ({:+.1}%; limit ±10%)",
            off * 100.0
        );
        let (status, reason) = if off.abs() <= 0.10 {
            (Status::Met, String::new())
        } else {
            (Status::Missed, lean_reason(r, off, profile))
        };
        out.push(TargetCheck {
            target: T_LEAN_MODEL,
            scope,
            measured,
            status,
            reason,
        });
    }

    // 2. Authors slower than lean in at least three rounds of four: the
    //    first quartile of the per-round ratio authors/lean is above 1.
    for r in &rows {
        let scope = format!("{} ({}), {}", r.config.model, r.config.n, r.imp);
        let scope = format!("{scope}, {} loss", r.config.loss);
        let (Some(lean), Some(auth)) = (r.stats(StepKind::Lean), r.stats(StepKind::Authors)) else {
            out.push(not_measured(T_AUTHORS_SLOWER, &scope, &missing_reason(r)));
            continue;
        };
        let (med, spread) = paired_ratio(auth, lean);
        let (q1, q3) = spread.unwrap_or((auth.q1 / lean.q3, auth.q3 / lean.q1));
        let measured = format!(
            "authors/lean {med:.3} per round, quartiles {q1:.3}–{q3:.3} (model {:.3}); medians {} vs {}",
            r.authors_over_lean.model,
            ms(auth.median),
            ms(lean.median)
        );
        let (status, reason) = if q1 > 1.0 {
            (Status::Met, String::new())
        } else {
            (
                Status::Missed,
                format!(
                    "in more than a quarter of the rounds the authors' step was not slower than the lean one (lean {}–{}, authors {}–{} over rounds): timing noise exceeds the difference at this size",
                    ms(lean.q1),
                    ms(lean.q3),
                    ms(auth.q1),
                    ms(auth.q3)
                ),
            )
        };
        out.push(TargetCheck {
            target: T_AUTHORS_SLOWER,
            scope,
            measured,
            status,
            reason,
        });
    }

    // 3. Reference f32 within 1.25x of tch CPU f32 on the large MLP.
    let mut any3 = false;
    for g in &run.groups {
        let GroupKind::Step(config) = g.group.kind else {
            continue;
        };
        if config.size != "large" {
            continue;
        }
        for kind in StepKind::ALL {
            let is_kind = |t: &Task| matches!(t, Task::Step { kind: k, .. } if *k == kind);
            let (Some(r), Some(t)) = (
                g.find(Impl::REF_F32, is_kind),
                g.find(Impl::TCH_CPU_F32, is_kind),
            ) else {
                continue;
            };
            any3 = true;
            let scope = format!("{} loss, {} step", config.loss, kind);
            let (Some(rs), Some(ts)) = (r.stats(), t.stats()) else {
                let why = [r, t]
                    .iter()
                    .filter_map(|m| match &m.outcome {
                        Outcome::Skipped(w) | Outcome::Failed(w) => {
                            Some(format!("{}: {w}", m.member.imp))
                        }
                        Outcome::Measured(_) => None,
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                out.push(not_measured(T_REF_VS_TCH_STEP, &scope, &why));
                continue;
            };
            let (rm, tm) = (rs.median, ts.median);
            let x = paired_ratio(rs, ts).0;
            let measured = format!(
                "reference {} vs tch {}: {x:.2}x per round (limit 1.25x)",
                ms(rm),
                ms(tm)
            );
            let (status, reason) = if x <= 1.25 {
                (Status::Met, String::new())
            } else {
                (Status::Missed, ref_step_reason(rm, tm, kind, profile))
            };
            out.push(TargetCheck {
                target: T_REF_VS_TCH_STEP,
                scope,
                measured,
                status,
                reason,
            });
        }
    }
    if !any3 {
        out.push(not_measured(
            T_REF_VS_TCH_STEP,
            "large MLP",
            "no large-MLP group with both reference f32 and tch CPU f32 in this run",
        ));
    }

    // 4. Reference loss at least as fast as tch CPU for N >= 256.
    let mut any4 = false;
    for row in loss_rows(run).iter().filter(|r| r.n >= 256) {
        let scope = format!("{} loss, N {}", row.kind, row.n);
        let (Some(rs), Some(ts)) = (row.stats(Impl::REF_F32), row.stats(Impl::TCH_CPU_F32)) else {
            if row.results.iter().any(|x| x.0 == Impl::TCH_CPU_F32) {
                any4 = true;
                out.push(not_measured(
                    T_REF_VS_TCH_LOSS,
                    &scope,
                    "a member was skipped or failed",
                ));
            }
            continue;
        };
        any4 = true;
        let x = paired_ratio(rs, ts).0;
        let measured = format!(
            "reference f32 {} vs tch {}: {x:.2}x per round (limit 1.00x)",
            ms(rs.median),
            ms(ts.median),
        );
        let (status, reason) = if x <= 1.0 {
            (Status::Met, String::new())
        } else {
            (Status::Missed, loss_reason(row.kind, row.n, profile))
        };
        out.push(TargetCheck {
            target: T_REF_VS_TCH_LOSS,
            scope,
            measured,
            status,
            reason,
        });
    }
    if !any4 {
        out.push(not_measured(
            T_REF_VS_TCH_LOSS,
            "N >= 256",
            "no loss group with N >= 256 and both reference f32 and tch CPU f32 in this run",
        ));
    }
    out
}

fn not_measured(target: &'static str, scope: &str, why: &str) -> TargetCheck {
    TargetCheck {
        target,
        scope: scope.to_string(),
        measured: "—".into(),
        status: Status::NotMeasured,
        reason: why.to_string(),
    }
}

fn missing_reason(r: &StepRow) -> String {
    r.steps
        .iter()
        .flatten()
        .filter_map(|m| match &m.outcome {
            Outcome::Skipped(w) => Some(format!("{} skipped: {w}", m.member.label())),
            Outcome::Failed(w) => Some(format!("{} failed: {w}", m.member.label())),
            Outcome::Measured(_) => None,
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn lean_reason(r: &StepRow, off: f64, profile: Option<&Profile>) -> String {
    let plain_gf = r.gflops(StepKind::Plain).unwrap_or(f64::NAN);
    let extra_gf = r.marginal_gflops(StepKind::Lean).unwrap_or(f64::NAN);
    let mut s = format!(
        "the plain step runs at {plain_gf:.1} GFLOP/s, the lean recipe's extra passes at {extra_gf:.1} GFLOP/s; "
    );
    if off < 0.0 {
        // If the extra passes' rate held for the whole plain step, its FLOPs
        // would take this long; the rest is time that does not scale with passes.
        let fixed = r
            .median(StepKind::Plain)
            .zip(r.steps[0].as_ref())
            .map(|(t, m)| t - m.flops as f64 / (extra_gf * 1e9));
        if let (Some(fixed), Some(t)) = (fixed, r.median(StepKind::Plain)) {
            s.push_str(&format!(
                "at the extra passes' rate the plain step's FLOPs would take {}, so about {} ({:.0}%) of it is per-step work that does not grow with the number of passes (optimizer update, parameter and gradient checks, gradient bookkeeping, loss); it counts once in both steps and pulls the measured ratio below the FLOP model, which counts FLOPs only",
                ms(t - fixed),
                ms(fixed),
                100.0 * fixed / t
            ));
        } else {
            s.push_str("per-step work that does not grow with the number of passes (optimizer update, checks, bookkeeping) pulls the measured ratio below the FLOP model");
        }
        if let (Some(p), Backend::Reference) = (profile, r.imp.backend) {
            let fixed: f64 = [
                "parameter check",
                "gradient accumulation",
                "optimizer",
                "running",
            ]
            .iter()
            .filter_map(|n| p.piece(n))
            .map(|x| x.seconds * x.per_plain_step)
            .sum();
            s.push_str(&format!(
                " (the profile finds {} of such pieces in a {} reference plain step)",
                ms(fixed),
                ms(p.plain_step_s)
            ));
        }
    } else {
        s.push_str("the adversarial passes achieve fewer FLOP/s than the plain step's passes (the input-only backward and the extra forwards are more memory-bound than the weight-gradient products)");
    }
    s
}

fn ref_step_reason(rm: f64, tm: f64, kind: StepKind, profile: Option<&Profile>) -> String {
    let Some(p) = profile else {
        return format!(
            "the reference {kind} step takes {:.2}x libtorch's; run with the profile to see where",
            rm / tm
        );
    };
    let gemm = p.gemm_per_step();
    let other = p.non_gemm_per_step();
    let mut s = format!(
        "profile of the reference plain step ({}): matrix products {} ({:.0}%), everything else {} ({:.0}%)",
        ms(p.plain_step_s),
        ms(gemm),
        100.0 * gemm / p.plain_step_s,
        ms(other),
        100.0 * other / p.plain_step_s
    );
    if let Some(tg) = p.tch_gemm_per_step() {
        s.push_str(&format!(
            "; libtorch computes the same products in {} ({:.2}x faster)",
            ms(tg),
            gemm / tg
        ));
    }
    let mut worst: Vec<&crate::overhead::profile::Piece> = p
        .pieces
        .iter()
        .filter(|x| {
            x.name.starts_with("gradient")
                || x.name.starts_with("optimizer")
                || x.name.starts_with("parameter")
        })
        .collect();
    worst.sort_by(|a, b| (b.seconds * b.per_plain_step).total_cmp(&(a.seconds * a.per_plain_step)));
    if let Some(w) = worst.first() {
        s.push_str(&format!(
            "; the largest bookkeeping piece is {} at {} per step",
            w.name,
            ms(w.seconds * w.per_plain_step)
        ));
    }
    let fwd = p.piece("forward").map(|x| x.seconds).unwrap_or(f64::NAN);
    let bw = p.piece("backward").map(|x| x.seconds).unwrap_or(f64::NAN);
    s.push_str(&format!(
        "; elementwise work inside the passes: forward {} of {}, backward {} of {} (single-threaded ndarray)",
        ms(fwd - p.ref_gemm_forward_s),
        ms(fwd),
        ms(bw - p.ref_gemm_backward_s),
        ms(bw)
    ));
    s.push_str("; avoidable work in reference/src: `Optimizer::step` (optim/mod.rs) clones every gradient and, for SGD, the momentum buffer, and runs `Mlp::validate` a second time per step; `MlpGrads::accumulate` (encoder/grads.rs) clones the first pass's gradients instead of taking them; `Mlp::backward_unchecked` clones head.0's weight gradient; `batchnorm_backward` (layers/batchnorm.rs) walks row-major arrays column by column");
    s
}

/// What the reference's loss code does beyond its matrix products, per
/// loss (read from `reference/src/loss/`; only shown when the loss target is
/// missed).
fn loss_code_notes(kind: LossKind) -> &'static str {
    match kind {
        LossKind::Plain => "plain.rs: `z_p.dot(&z_q.t()) / tau` allocates a second N x N matrix for the division; `softmax_rows` copies S and computes exp twice per entry (in `logsumexp` and again in `mapv_inplace`), single-threaded",
        LossKind::SimClr => "simclr.rs: per row `logsumexp` (one exp per entry) and then `(row[b] - lse).exp()` again (a second), scalar and bounds-checked `g[[a, b]]` indexing, and `&g + &g.t()` builds a third 2N x 2N matrix through a transposed (strided) read, all single-threaded",
        LossKind::Uel => "uel.rs: exp three times per entry (`logsumexp`, the p loop, the derivative loop) plus `ln_1p`, scalar, single-threaded",
    }
}

fn loss_reason(kind: LossKind, n: usize, profile: Option<&Profile>) -> String {
    let piece = profile.and_then(|p| p.losses.iter().find(|l| l.kind == kind && l.n == n));
    let notes = loss_code_notes(kind);
    match piece {
        Some(l) => format!(
            "of the reference's {}, its matrix products take {} ({:.0}%); the rest is elementwise work over the {} logits that libtorch vectorises and spreads over its threads — {notes}",
            ms(l.total_s),
            ms(l.gemm_s),
            100.0 * l.gemm_s / l.total_s,
            match kind {
                LossKind::Plain => format!("{n}x{n}"),
                _ => format!("{0}x{0}", 2 * n),
            },
        ),
        None => format!("run with the profile to see the split; {notes}"),
    }
}

/// The FLOP model of a step configuration, for the report's model table:
/// `(kind, passes, total FLOPs, encoder GEMM FLOPs)`.
pub fn model_table(config: &StepConfig) -> Vec<(StepKind, String, u64, u64)> {
    let enc = config.encoder_flops();
    StepKind::ALL
        .iter()
        .map(|&k| {
            let s = step_flops(&enc, k, config.loss, config.optimizer());
            (k, s.passes.to_string(), s.total, s.encoder_gemm)
        })
        .collect()
}
