//! From measurements to the report's numbers: step ratios next to the FLOP
//! model, GFLOP/s as a fraction of the measured GEMM peak, the loss
//! comparison, and the issue's targets, each met or missed with the reason.

use crate::flops::{model_ratio, model_ratios, step_flops, StepKind};
use crate::machine::Machine;
use crate::overhead::measure::{quantile, Stats};
use crate::overhead::plan::{Group, GroupKind, Member, StepConfig, Task};
use crate::overhead::profile::Profile;
use crate::overhead::{Backend, Impl};
use clae_reference::loss::LossKind;
use std::fmt::Write as _;

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
    /// Peak memory per step, one probe process per member.
    pub memory: Vec<crate::overhead::memory::MemoryResult>,
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
    /// Results by step kind, in [`StepKind::ALL`]'s order: plain, lean,
    /// authors', ACL, RoCL (None when not in the group).
    pub steps: [Option<MemberResult>; 5],
    /// Every step kind over the plain step, in [`StepKind::ALL`]'s order
    /// (plain's own is 1).
    pub over_plain: [Ratio; 5],
    /// lean / plain.
    pub lean_over_plain: Ratio,
    /// authors / plain.
    pub authors_over_plain: Ratio,
    /// authors / lean.
    pub authors_over_lean: Ratio,
    /// The implementation's GEMM peak (GFLOP/s), if measured.
    pub peak_gflops: Option<f64>,
    /// Per step kind, this implementation's time over PyTorch eager's on
    /// the same device in the same rounds (median and quartiles of the
    /// per-round ratio); `None` without an eager member.
    pub vs_eager: [Option<PairedRatio>; 5],
}

/// A per-round ratio: its median and, when the rounds pair up, quartiles.
pub type PairedRatio = (f64, Option<(f64, f64)>);

impl StepRow {
    /// Median seconds of a step kind.
    pub fn median(&self, kind: StepKind) -> Option<f64> {
        self.steps[kind.index()].as_ref()?.median()
    }

    /// Stats of a step kind.
    pub fn stats(&self, kind: StepKind) -> Option<&Stats> {
        self.steps[kind.index()].as_ref()?.stats()
    }

    /// Achieved GFLOP/s of a step kind.
    pub fn gflops(&self, kind: StepKind) -> Option<f64> {
        self.steps[kind.index()].as_ref()?.gflops()
    }

    /// Achieved fraction of the GEMM peak of a step kind.
    pub fn peak_fraction(&self, kind: StepKind) -> Option<f64> {
        Some(self.gflops(kind)? / self.peak_gflops?)
    }

    /// GFLOP/s of the extra work of `kind` over the plain step:
    /// `(FLOPs(kind) − FLOPs(plain)) / (t(kind) − t(plain))`.
    pub fn marginal_gflops(&self, kind: StepKind) -> Option<f64> {
        let (a, p) = (self.steps[kind.index()].as_ref()?, self.steps[0].as_ref()?);
        let dt = a.median()? - p.median()?;
        (dt > 0.0).then(|| (a.flops as f64 - p.flops as f64) / dt / 1e9)
    }
}

impl StepRow {
    /// `kind / plain`, measured and modelled.
    pub fn over_plain(&self, kind: StepKind) -> &Ratio {
        &self.over_plain[kind.index()]
    }

    /// Whether the row has any measured peer step (ACL or RoCL).
    pub fn has_peers(&self) -> bool {
        self.steps[3..]
            .iter()
            .flatten()
            .any(|m| m.stats().is_some())
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
pub fn paired_ratio(a: &Stats, b: &Stats) -> PairedRatio {
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
        let eager_of = |imp: Impl| match imp.backend {
            Backend::TchCuda | Backend::EagerCuda => Impl::EAGER_CUDA_F32,
            _ => Impl::EAGER_CPU_F32,
        };
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
            let eager = StepKind::ALL.map(|k| {
                g.find(
                    eager_of(imp),
                    |t| matches!(t, Task::Step { kind, .. } if *kind == k),
                )
                .and_then(|m| m.stats().cloned())
            });
            let vs_eager: [Option<PairedRatio>; 5] = std::array::from_fn(|i| {
                let (a, b) = (st(i)?, eager[i].as_ref()?);
                Some(paired_ratio(a, b))
            });
            let (lp, lp_s) = ratio(st(1), st(0));
            let (ap, ap_s) = ratio(st(2), st(0));
            let (al, al_s) = ratio(st(2), st(1));
            let over_plain = StepKind::ALL.map(|k| {
                let (m, sp) = ratio(st(k.index()), st(0));
                Ratio {
                    measured: m,
                    spread: sp,
                    model: model_ratio(&enc, k, config.loss, config.optimizer()),
                    spec: k.spec_ratio(config.loss),
                }
            });
            rows.push(StepRow {
                group_id: g.group.id.clone(),
                config,
                imp,
                over_plain,
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
                vs_eager,
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

/// Target 1 (issue 10).
pub const T_TCH_VS_EAGER: &str =
    "tch CPU f32 step time / PyTorch eager <= 1.00 (medium and large MLP, ResNet-18 at N 8)";
/// Target 2.
pub const T_REF_VS_EAGER: &str =
    "reference f32 step time / PyTorch eager <= 1.00 (medium and large MLP)";
/// Target 3.
pub const T_PEAK: &str = "plain step on the large MLP at >= 80% of the GEMM peak";
/// Target 4.
pub const T_REF_VS_TCH_LOSS: &str = "reference loss + gradients <= 1.00x tch CPU (N 256 and 1024)";
/// Target 5.
pub const T_LEAN_MODEL: &str = "tch lean/plain within 10% of the FLOP model (medium and large MLP)";

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}

/// `x ≤ limit` as a target check on `scope`, with the measured text and,
/// when missed, `why`.
fn check(
    target: &'static str,
    scope: String,
    measured: String,
    met: bool,
    why: impl FnOnce() -> String,
) -> TargetCheck {
    TargetCheck {
        target,
        scope,
        measured,
        status: if met { Status::Met } else { Status::Missed },
        reason: if met { String::new() } else { why() },
    }
}

/// Checks issue 10's targets on a run. Every ratio is per round, between
/// members timed side by side.
pub fn check_targets(run: &RunResult) -> Vec<TargetCheck> {
    let rows = step_rows(run);
    let mut out = Vec::new();
    let cpu = |r: &&StepRow| !matches!(r.imp.backend, Backend::TchCuda | Backend::EagerCuda);

    // 1 and 2: against PyTorch eager, every step kind.
    for (target, imp, sizes) in [
        (
            T_TCH_VS_EAGER,
            Impl::TCH_CPU_F32,
            &["medium", "large", "resnet18"][..],
        ),
        (T_REF_VS_EAGER, Impl::REF_F32, &["medium", "large"][..]),
    ] {
        let mut any = false;
        for r in rows
            .iter()
            .filter(cpu)
            .filter(|r| r.imp == imp && sizes.contains(&r.config.size))
        {
            if r.config.size == "resnet18" && r.config.n != 8 {
                continue;
            }
            // issue 10's targets are the CLAE steps'
            for (i, kind) in StepKind::ALL.into_iter().take(3).enumerate() {
                let scope = format!("{}, {} step", r.config, kind);
                let Some((x, spread)) = r.vs_eager[i] else {
                    out.push(not_measured(
                        target,
                        &scope,
                        "no PyTorch eager member measured beside it",
                    ));
                    continue;
                };
                any = true;
                let (t, e) = (
                    r.median(kind).unwrap_or(f64::NAN),
                    r.median(kind).unwrap_or(f64::NAN) / x,
                );
                let q = spread.map_or(String::new(), |(a, b)| format!(", quartiles {a:.2}–{b:.2}"));
                out.push(check(
                    target,
                    scope,
                    format!(
                        "{x:.3}x per round{q}: {} vs PyTorch {} (limit 1.00)",
                        ms(t),
                        ms(e)
                    ),
                    x <= 1.0,
                    || {
                        format!(
                            "{} per step slower than PyTorch eager on the same libtorch",
                            ms(t - e)
                        )
                    },
                ));
            }
        }
        if !any {
            out.push(not_measured(
                target,
                "all",
                "no step group with this implementation and PyTorch eager",
            ));
        }
    }

    // 3: the large MLP's plain step against the implementation's own GEMM peak.
    let mut any3 = false;
    for r in rows.iter().filter(cpu).filter(|r| {
        r.config.size == "large" && (r.imp == Impl::REF_F32 || r.imp == Impl::TCH_CPU_F32)
    }) {
        let scope = format!("{}, {}", r.config, r.imp);
        let Some(f) = r.peak_fraction(StepKind::Plain) else {
            out.push(not_measured(
                T_PEAK,
                &scope,
                "no GEMM peak or plain step measured",
            ));
            continue;
        };
        any3 = true;
        let gf = r.gflops(StepKind::Plain).unwrap_or(f64::NAN);
        let peak = r.peak_gflops.unwrap_or(f64::NAN);
        out.push(check(
            T_PEAK,
            scope,
            format!("{gf:.1} GFLOP/s of a {peak:.1} GFLOP/s GEMM peak = {:.0}% (limit 80%)", f * 100.0),
            f >= 0.8,
            || {
                let t = r.median(StepKind::Plain).unwrap_or(f64::NAN);
                let at_peak = r.steps[0].as_ref().map_or(f64::NAN, |m| m.flops as f64 / (peak * 1e9));
                let mut why = format!("at the peak its FLOPs take {}; the other {} of the {} step is below-peak work (smaller products, elementwise passes, the optimizer)", ms(at_peak), ms(t - at_peak), ms(t));
                // the same step in PyTorch eager, against libtorch's peak
                let torch_peak = rows
                    .iter()
                    .find(|o| o.config == r.config && o.imp == Impl::TCH_CPU_F32)
                    .and_then(|o| o.peak_gflops);
                let eager = rows
                    .iter()
                    .find(|o| o.config == r.config && o.imp == Impl::EAGER_CPU_F32)
                    .and_then(|o| o.gflops(StepKind::Plain));
                if let (Some(e), Some(p)) = (eager, torch_peak) {
                    let _ = write!(why, "; PyTorch eager's plain step: {e:.1} GFLOP/s, {:.0}% of libtorch's peak", 100.0 * e / p);
                }
                why
            },
        ));
    }
    if !any3 {
        out.push(not_measured(
            T_PEAK,
            "large MLP",
            "no large-MLP group with a GEMM peak in this run",
        ));
    }

    // 4: reference loss + gradients against tch at N 256 and 1024.
    let mut any4 = false;
    for row in loss_rows(run).iter().filter(|r| r.n == 256 || r.n == 1024) {
        let scope = format!("{} loss, N {}", row.kind, row.n);
        let (Some(rs), Some(ts)) = (row.stats(Impl::REF_F32), row.stats(Impl::TCH_CPU_F32)) else {
            continue;
        };
        any4 = true;
        let x = paired_ratio(rs, ts).0;
        out.push(check(
            T_REF_VS_TCH_LOSS,
            scope,
            format!(
                "reference f32 {} vs tch {}: {x:.2}x per round (limit 1.00)",
                ms(rs.median),
                ms(ts.median)
            ),
            x <= 1.0,
            || format!("{} slower per evaluation", ms(rs.median - ts.median)),
        ));
    }
    if !any4 {
        out.push(not_measured(
            T_REF_VS_TCH_LOSS,
            "N 256, 1024",
            "no such loss group with both implementations in this run",
        ));
    }

    // 5: tch lean/plain against the FLOP model.
    let mut any5 = false;
    for r in rows.iter().filter(|r| {
        r.imp == Impl::TCH_CPU_F32 && (r.config.size == "medium" || r.config.size == "large")
    }) {
        let scope = format!("{}", r.config);
        let Some(meas) = r.lean_over_plain.measured else {
            out.push(not_measured(T_LEAN_MODEL, &scope, &missing_reason(r)));
            continue;
        };
        any5 = true;
        let model = r.lean_over_plain.model;
        let off = meas / model - 1.0;
        out.push(check(
            T_LEAN_MODEL,
            scope,
            format!(
                "lean/plain {meas:.3} vs model {model:.3} ({:+.1}%; limit ±10%)",
                off * 100.0
            ),
            off.abs() <= 0.10,
            || lean_reason(r, off),
        ));
    }
    if !any5 {
        out.push(not_measured(
            T_LEAN_MODEL,
            "medium and large MLP",
            "no such tch group in this run",
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

fn lean_reason(r: &StepRow, off: f64) -> String {
    let plain_gf = r.gflops(StepKind::Plain).unwrap_or(f64::NAN);
    let extra_gf = r.marginal_gflops(StepKind::Lean).unwrap_or(f64::NAN);
    let direction = if off < 0.0 {
        "per-step work that does not grow with the passes (optimizer, checks) counts once in both steps and pulls the ratio below the model, which counts FLOPs only"
    } else {
        "the adversarial passes run below the plain step's rate"
    };
    format!("plain step {plain_gf:.1} GFLOP/s, the lean recipe's extra passes {extra_gf:.1} GFLOP/s: {direction}")
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

/// One implementation at one point of a scaling series.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePoint {
    /// The group it came from.
    pub group_id: String,
    /// Encoder, batch, loss.
    pub config: StepConfig,
    /// Which implementation.
    pub imp: Impl,
    /// On the series in `N`.
    pub on_n: bool,
    /// On the series in the hidden width.
    pub on_width: bool,
    /// Plain step, median seconds.
    pub plain_s: Option<f64>,
    /// lean / plain.
    pub lean: Ratio,
    /// ACL / plain.
    pub acl: Ratio,
    /// The loss evaluations' share of the plain step's FLOPs (model).
    pub loss_share: f64,
}

impl ScalePoint {
    /// The hidden width of the point's MLP (0 for other encoders).
    pub fn hidden(&self) -> usize {
        match self.config.model {
            crate::overhead::plan::Model::Mlp(c) => c.hidden,
            crate::overhead::plan::Model::ResNet18 { .. } => 0,
        }
    }
}

/// The loss evaluations' share of one `kind` step's FLOPs (FLOP model).
///
/// ```
/// use clae_benches::flops::StepKind;
/// use clae_benches::overhead::analysis::loss_share;
/// use clae_benches::overhead::plan::{mlp_sizes, Model, StepConfig};
/// use clae_reference::loss::LossKind;
/// let (_, medium, _) = mlp_sizes()[1];
/// let at = |n| loss_share(&StepConfig { size: "medium", model: Model::Mlp(medium), n, loss: LossKind::SimClr }, StepKind::Plain);
/// // O(N² d) against O(N): the share grows with N
/// assert!(at(64) < at(1024) && at(1024) < at(16384) && at(16384) < 1.0);
/// ```
pub fn loss_share(config: &StepConfig, kind: StepKind) -> f64 {
    let s = step_flops(
        &config.encoder_flops(),
        kind,
        config.loss,
        config.optimizer(),
    );
    s.loss_flops as f64 / s.total as f64
}

/// The smallest power-of-two `N` (up to 2^20) at which the loss terms are
/// at least `share` of a plain step's FLOPs on `config`'s encoder and
/// loss; `None` if they never are.
pub fn loss_share_crossing(config: &StepConfig, share: f64) -> Option<usize> {
    (1..=20)
        .map(|e| 1usize << e)
        .find(|&n| loss_share(&StepConfig { n, ..*config }, StepKind::Plain) >= share)
}

/// The scaling points of a run, one per (scaling group, implementation),
/// ordered by hidden width, then `N`.
pub fn scale_points(run: &RunResult) -> Vec<ScalePoint> {
    let mut out = Vec::new();
    for g in &run.groups {
        let GroupKind::Scaling {
            config,
            on_n,
            on_width,
        } = g.group.kind
        else {
            continue;
        };
        let mut imps: Vec<Impl> = g.members.iter().map(|m| m.member.imp).collect();
        imps.dedup();
        let enc = config.encoder_flops();
        for imp in imps {
            let st = |k: StepKind| {
                g.find(imp, |t| matches!(t, Task::Step { kind, .. } if *kind == k))
                    .and_then(|m| m.stats())
            };
            let r = |k: StepKind| {
                let (measured, spread) = ratio(st(k), st(StepKind::Plain));
                Ratio {
                    measured,
                    spread,
                    model: model_ratio(&enc, k, config.loss, config.optimizer()),
                    spec: k.spec_ratio(config.loss),
                }
            };
            out.push(ScalePoint {
                group_id: g.group.id.clone(),
                config,
                imp,
                on_n,
                on_width,
                plain_s: st(StepKind::Plain).map(|s| s.median),
                lean: r(StepKind::Lean),
                acl: r(StepKind::ACL),
                loss_share: loss_share(&config, StepKind::Plain),
            });
        }
    }
    out.sort_by_key(|p| (p.hidden(), p.config.n, p.imp));
    out
}
