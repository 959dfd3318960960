//! The report: per-group summaries over seeds, Welch tests and per-seed
//! paired differences, and the files — `report.md`, `runs.csv` and
//! `curves.csv` (appended cell by cell by [`super::run`]), `accuracy.svg`,
//! `accuracy_vs_eps.svg`, `robustness.svg`, `learning_curves.svg`.

use super::data::STD;
use super::run::{Cell, Replication, RunRecord};
use super::train::Method;
use super::{FashionError, Result};
use crate::digits::stats::{
    detectable_difference, sign_test_two_sided, student_t_two_sided, welch, MeanStd, Welch,
};
use clae_reference::loss::LossKind;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// p-value below which a difference counts as beyond the seed noise.
pub const SIGNIFICANCE: f64 = 0.05;

/// The power at which [`Paired::detectable`] is stated.
pub const POWER: f64 = 0.8;

/// An accuracy of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// Test kNN-200 (the authors' protocol).
    Knn200,
    /// Linear probe, chosen on validation.
    Probe,
    /// Robust accuracy of the probe at this many /255.
    Robust(f64),
}

impl Metric {
    /// Display name.
    pub fn name(&self) -> String {
        match self {
            Metric::Knn200 => "kNN-200".into(),
            Metric::Probe => "linear probe".into(),
            Metric::Robust(e) => format!("PGD robust @{e}/255"),
        }
    }

    /// The value in a run (NaN where absent).
    pub fn of(&self, r: &RunRecord) -> f64 {
        match self {
            Metric::Knn200 => r.knn200,
            Metric::Probe => r.probe_test,
            Metric::Robust(e) => r
                .robust
                .iter()
                .find(|(x, _)| x == e)
                .map_or(f64::NAN, |(_, a)| *a),
        }
    }
}

/// The metrics of the comparisons: kNN-200, the probe, each robust radius.
pub fn metrics(rep: &Replication) -> Vec<Metric> {
    let mut m = vec![Metric::Knn200, Metric::Probe];
    m.extend(rep.options.attack_eps.iter().map(|&e| Metric::Robust(e)));
    m
}

/// A group: one cell without its seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Group {
    /// Loss family.
    pub loss: LossKind,
    /// Method.
    pub method: Method,
    /// CLAE's eps (normalised).
    pub eps: f64,
}

impl Group {
    fn of(c: &Cell) -> Self {
        Group {
            loss: c.loss,
            method: c.method,
            eps: c.eps,
        }
    }

    fn contains(&self, r: &RunRecord) -> bool {
        Group::of(&r.cell) == *self
    }

    /// Display name, e.g. `CLAE eps=0.03`.
    pub fn title(&self) -> String {
        match self.method {
            Method::Plain => "plain".into(),
            Method::Clae => format!("CLAE eps={}", self.eps),
            Method::ClaeEps0 => "CLAE eps=0 (control)".into(),
            Method::PlainLong => "plain, CLAE's wall-clock".into(),
            Method::Acl => "ACL-style".into(),
            Method::Rocl => "RoCL-style".into(),
        }
    }
}

/// The groups with runs, in grid order.
pub fn groups(rep: &Replication) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for r in &rep.runs {
        let g = Group::of(&r.cell);
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

fn runs_of<'a>(rep: &'a Replication, g: &Group) -> Vec<&'a RunRecord> {
    rep.runs.iter().filter(|r| g.contains(r)).collect()
}

fn values(runs: &[&RunRecord], m: &Metric) -> Vec<f64> {
    runs.iter()
        .map(|r| m.of(r))
        .filter(|v| v.is_finite())
        .collect()
}

/// Per-seed paired difference `other − base` over the seeds both have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// Mean ± std of the per-seed differences.
    pub diff: MeanStd,
    /// Seeds on which `other` is higher.
    pub wins: usize,
    /// Two-sided p of the paired t-test (NaN with fewer than 2 seeds or no spread).
    pub p: f64,
    /// The smallest true difference the paired test (at [`SIGNIFICANCE`])
    /// would detect with probability [`POWER`] given this spread of the
    /// per-seed differences ([`detectable_difference`]; NaN with fewer than
    /// 2 seeds): what a "no difference" can rule out.
    pub detectable: f64,
}

/// [`Paired`] of two run lists by seed.
pub fn paired(base: &[&RunRecord], other: &[&RunRecord], m: &Metric) -> Paired {
    let diffs: Vec<f64> = other
        .iter()
        .filter_map(|o| {
            let b = base.iter().find(|b| b.cell.seed == o.cell.seed)?;
            let d = m.of(o) - m.of(b);
            d.is_finite().then_some(d)
        })
        .collect();
    let diff = MeanStd::of(&diffs);
    let p = if diff.n >= 2 && diff.std > 0.0 {
        let t = diff.mean / (diff.std / (diff.n as f64).sqrt());
        student_t_two_sided(t, (diff.n - 1) as f64)
    } else {
        f64::NAN
    };
    Paired {
        diff,
        wins: diffs.iter().filter(|&&d| d > 0.0).count(),
        p,
        detectable: detectable_difference(diff.std, diff.n, SIGNIFICANCE, POWER),
    }
}

/// One group against another on one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The base group (e.g. plain).
    pub base: Group,
    /// The group under test.
    pub other: Group,
    /// Metric.
    pub metric: Metric,
    /// Base runs.
    pub base_stats: MeanStd,
    /// Other runs.
    pub other_stats: MeanStd,
    /// Welch's test of other against base.
    pub welch: Option<Welch>,
    /// Per-seed paired differences.
    pub paired: Paired,
}

impl Comparison {
    /// Difference of the means in points.
    pub fn delta_points(&self) -> f64 {
        100.0 * (self.other_stats.mean - self.base_stats.mean)
    }

    /// Whether Welch's p is below [`SIGNIFICANCE`].
    pub fn beyond_noise(&self) -> bool {
        self.welch.is_some_and(|w| w.p < SIGNIFICANCE)
    }
}

fn compare(rep: &Replication, base: Group, other: Group, metric: Metric) -> Option<Comparison> {
    let (b, o) = (runs_of(rep, &base), runs_of(rep, &other));
    if b.is_empty() || o.is_empty() {
        return None;
    }
    let (vb, vo) = (values(&b, &metric), values(&o, &metric));
    Some(Comparison {
        base,
        other,
        metric,
        base_stats: MeanStd::of(&vb),
        other_stats: MeanStd::of(&vo),
        welch: welch(&vb, &vo),
        paired: paired(&b, &o, &metric),
    })
}

/// The pairs compared: per loss CLAE vs plain, control vs plain, CLAE vs
/// control; for every other group of a loss, it against plain, and each
/// further CLAE eps (the sweep) also against the control.
pub fn comparison_pairs(rep: &Replication) -> Vec<(Group, Group)> {
    let gs = groups(rep);
    let mut out = Vec::new();
    let mut losses: Vec<LossKind> = Vec::new();
    for g in &gs {
        if !losses.contains(&g.loss) {
            losses.push(g.loss);
        }
    }
    for loss in losses {
        let find = |m: Method, eps: f64| {
            gs.iter()
                .copied()
                .find(|g| g.loss == loss && g.method == m && g.eps == eps)
        };
        let plain = find(Method::Plain, 0.0);
        let clae = find(Method::Clae, loss.default_eps());
        let control = find(Method::ClaeEps0, 0.0);
        if let (Some(p), Some(c)) = (plain, clae) {
            out.push((p, c));
        }
        if let (Some(p), Some(c)) = (plain, control) {
            out.push((p, c));
        }
        if let (Some(c0), Some(c)) = (control, clae) {
            out.push((c0, c));
        }
        if let Some(p) = plain {
            for g in gs.iter().filter(|g| g.loss == loss) {
                let listed = Some(*g) == plain || Some(*g) == clae || Some(*g) == control;
                if !listed {
                    out.push((p, *g));
                    // the eps sweep against the control too: does the
                    // perturbation's size matter once the second term is there?
                    if let (Method::Clae, Some(c0)) = (g.method, control) {
                        out.push((c0, *g));
                    }
                }
            }
        }
        if let (Some(long), Some(c)) = (find(Method::PlainLong, 0.0), clae) {
            out.push((c, long));
        }
    }
    out
}

/// Every comparison on every metric.
pub fn comparisons(rep: &Replication) -> Vec<Comparison> {
    let ms = metrics(rep);
    comparison_pairs(rep)
        .into_iter()
        .flat_map(|(b, o)| ms.iter().filter_map(move |m| compare(rep, b, o, *m)))
        .collect()
}

fn pct(m: &MeanStd) -> String {
    if m.n == 0 {
        return "–".into();
    }
    format!("{:.2} ± {:.2}", 100.0 * m.mean, 100.0 * m.std)
}

fn loss_title(l: LossKind) -> &'static str {
    match l {
        LossKind::Plain => "Plain",
        LossKind::SimClr => "SimCLR",
        LossKind::Uel => "UEL",
    }
}

/// The results table: mean ± std over seeds per group.
pub fn summary_table(rep: &Replication) -> String {
    let mut s = String::from("| loss | method | seeds | epochs | kNN-200 (%) | linear probe (%) | probe, best test epoch (%) ⚑ |");
    for e in &rep.options.attack_eps {
        let _ = write!(s, " robust @{e}/255 (%) |");
    }
    s.push_str(" train s/epoch |\n|---|---|---|---|---|---|---|");
    for _ in &rep.options.attack_eps {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for g in groups(rep) {
        let runs = runs_of(rep, &g);
        let m = |metric: &Metric| MeanStd::of(&values(&runs, metric));
        let best = MeanStd::of(&runs.iter().map(|r| r.probe_best_test).collect::<Vec<_>>());
        let spe = MeanStd::of(&runs.iter().map(|r| r.seconds_per_epoch).collect::<Vec<_>>());
        let epochs = MeanStd::of(&runs.iter().map(|r| r.epochs as f64).collect::<Vec<_>>());
        let _ = write!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {} |",
            loss_title(g.loss),
            g.title(),
            runs.len(),
            epochs.mean,
            pct(&m(&Metric::Knn200)),
            pct(&m(&Metric::Probe)),
            pct(&best),
        );
        for &e in &rep.options.attack_eps {
            let _ = write!(s, " {} |", pct(&m(&Metric::Robust(e))));
        }
        let _ = writeln!(s, " {:.2} ± {:.2} |", spe.mean, spe.std);
    }
    let b = &rep.baseline;
    let _ = write!(
        s,
        "| – | raw pixels (no encoder) | – | – | {:.2} | {:.2} | {:.2} |",
        100.0 * b.knn200,
        100.0 * b.probe_test,
        100.0 * b.probe_best_test
    );
    for e in &rep.options.attack_eps {
        match b.robust.iter().find(|(x, _)| x == e) {
            Some((_, a)) => {
                let _ = write!(s, " {:.2} |", 100.0 * a);
            }
            None => s.push_str(" – |"),
        }
    }
    s.push_str(" – |\n");
    s
}

/// The comparison table.
pub fn comparison_table(rep: &Replication) -> String {
    let mut s = String::from("| comparison | loss | metric | base (%) | other (%) | Δ (points) | Welch t | df | Welch p | paired Δ per seed (points) | seeds higher | paired p | detectable Δ at 80% power (points) | beyond seed noise? |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in comparisons(rep) {
        let (t, df, p) = match c.welch {
            Some(w) => (
                format!("{:.2}", w.t),
                format!("{:.1}", w.df),
                format!("{:.3}", w.p),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let pp = if c.paired.p.is_finite() {
            format!("{:.3}", c.paired.p)
        } else {
            "–".into()
        };
        let detectable = if c.paired.detectable.is_finite() {
            format!("{:.2}", 100.0 * c.paired.detectable)
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| {} vs {} | {} | {} | {} | {} | {:+.2} | {t} | {df} | {p} | {:+.2} ± {:.2} | {}/{} | {pp} | {detectable} | {} |",
            c.other.title(),
            c.base.title(),
            loss_title(c.base.loss),
            c.metric.name(),
            pct(&c.base_stats),
            pct(&c.other_stats),
            c.delta_points(),
            100.0 * c.paired.diff.mean,
            100.0 * c.paired.diff.std,
            c.paired.wins,
            c.paired.diff.n,
            if c.beyond_noise() { "**yes**" } else { "no" },
        );
    }
    s
}

fn find_cmp(all: &[Comparison], base: Method, other: Method, metric: Metric) -> Vec<&Comparison> {
    all.iter()
        .filter(|c| {
            c.base.method == base
                && c.other.method == other
                && c.metric == metric
                && (other != Method::Clae || c.other.eps == c.other.loss.default_eps())
        })
        .collect()
}

fn deltas(cs: &[&Comparison]) -> String {
    cs.iter()
        .map(|c| format!("{:+.2}", c.delta_points()))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn detectables(cs: &[&Comparison]) -> String {
    cs.iter()
        .map(|c| format!("{:.2}", 100.0 * c.paired.detectable))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn verdict(cs: &[&Comparison]) -> String {
    let beyond: Vec<&str> = cs
        .iter()
        .filter(|c| c.beyond_noise())
        .map(|c| loss_title(c.base.loss))
        .collect();
    match beyond.len() {
        0 => "none beyond the seed noise".to_string(),
        n if n == cs.len() => "all beyond the seed noise".to_string(),
        _ => format!("beyond the seed noise for {} only", beyond.join(" and ")),
    }
}

fn losses_of(cs: &[&Comparison]) -> String {
    cs.iter()
        .map(|c| loss_title(c.base.loss))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The encoder in words, e.g. `reference-f32 MLP 784-512x2-128`.
pub fn encoder_text(o: &super::run::Options) -> String {
    match o.encoder {
        super::train::EncoderKind::Mlp => format!(
            "reference-f32 dual-BN MLP 784-{}x{}-{}",
            o.model.hidden, o.model.depth, o.model.d
        ),
        super::train::EncoderKind::Cnn { width, blocks } => format!(
            "tch-cpu-f32 dual-BN CNN, {blocks} conv blocks from {width} channels, d = {}",
            o.model.d
        ),
    }
}

/// The result paragraph, written from the numbers (whatever they are).
pub fn conclusion(rep: &Replication) -> String {
    let all = comparisons(rep);
    let o = &rep.options;
    let mut s = format!(
        "On Fashion-MNIST ({} training images, {} seeds, {} epochs, {}{})",
        rep.sizes.0,
        o.seeds,
        o.epochs,
        encoder_text(o),
        if o.quick {
            ", quick smoke run — not a result"
        } else {
            ""
        }
    );
    let knn = find_cmp(&all, Method::Plain, Method::Clae, Metric::Knn200);
    if knn.is_empty() {
        s.push_str(" no CLAE-vs-plain comparison ran.");
        return s;
    }
    let _ = write!(
        s,
        ", CLAE changed test kNN-200 accuracy over plain contrastive learning by {} points for the {} loss(es) ({} by Welch's test, p < {SIGNIFICANCE})",
        deltas(&knn),
        losses_of(&knn),
        verdict(&knn)
    );
    let ctrl = find_cmp(&all, Method::ClaeEps0, Method::Clae, Metric::Knn200);
    if !ctrl.is_empty() {
        let _ = write!(
            s,
            "; against the eps = 0 control (same second term, adv BatchNorm branch and cost, no perturbation) CLAE's difference is {} points ({}; with these seeds the paired test would detect a true difference of {} points with {:.0}% power)",
            deltas(&ctrl),
            verdict(&ctrl),
            detectables(&ctrl),
            100.0 * POWER
        );
        if ctrl.len() > 1 {
            let wins: usize = ctrl.iter().map(|c| c.paired.wins).sum();
            let n: usize = ctrl.iter().map(|c| c.paired.diff.n).sum();
            let _ = write!(
                s,
                "; pooled over the losses, {wins} of {n} per-seed differences favour CLAE (two-sided sign test p = {:.3})",
                sign_test_two_sided(wins, n)
            );
        }
    }
    s.push('.');
    let probe = find_cmp(&all, Method::Plain, Method::Clae, Metric::Probe);
    if !probe.is_empty() {
        let _ = write!(
            s,
            " The validated linear probe moved by {} points ({}).",
            deltas(&probe),
            verdict(&probe)
        );
    }
    if let Some(&e) = o
        .attack_eps
        .iter()
        .find(|&&e| e == 2.0)
        .or(o.attack_eps.first())
    {
        let rob = find_cmp(&all, Method::Plain, Method::Clae, Metric::Robust(e));
        let rob_c = find_cmp(&all, Method::ClaeEps0, Method::Clae, Metric::Robust(e));
        if !rob.is_empty() {
            let _ = write!(
                s,
                " Under PGD-{} at {e}/255, the probe's robust accuracy changed by {} points over plain ({}){}.",
                o.pgd_steps,
                deltas(&rob),
                verdict(&rob),
                if rob_c.is_empty() {
                    String::new()
                } else {
                    format!(" and by {} over the control ({})", deltas(&rob_c), verdict(&rob_c))
                }
            );
        }
    }
    let focus = o.focus;
    let gs = groups(rep);
    let mut sweep: Vec<Group> = gs
        .iter()
        .copied()
        .filter(|g| g.loss == focus && matches!(g.method, Method::Clae | Method::ClaeEps0))
        .collect();
    sweep.sort_by(|a, b| a.eps.total_cmp(&b.eps));
    if sweep.len() > 2 {
        let text: Vec<String> = sweep
            .iter()
            .map(|g| format!("{:.2}% at {}", stat(rep, g, &Metric::Knn200).mean, g.eps))
            .collect();
        let _ = write!(
            s,
            " {} kNN-200 against CLAE's eps (normalised units, 0 = the control): {}.",
            loss_title(focus),
            text.join(", ")
        );
        let largest = sweep.last().copied().filter(|g| g.method == Method::Clae);
        let robust_eps = o.attack_eps.iter().copied().find(|&e| e == 2.0);
        if let Some(top) = largest {
            let vs_control = |m: Metric| {
                all.iter()
                    .find(|c| c.base.method == Method::ClaeEps0 && c.other == top && c.metric == m)
            };
            let mut parts = Vec::new();
            if let Some(c) = vs_control(Metric::Knn200) {
                parts.push(format!(
                    "{:+.2} kNN-200 points ({})",
                    c.delta_points(),
                    if c.beyond_noise() {
                        "beyond the seed noise"
                    } else {
                        "within the seed noise"
                    }
                ));
            }
            if let Some(c) = robust_eps.and_then(|e| vs_control(Metric::Robust(e))) {
                parts.push(format!(
                    "{:+.2} points of robust accuracy at 2/255 ({})",
                    c.delta_points(),
                    if c.beyond_noise() {
                        "beyond the seed noise"
                    } else {
                        "within the seed noise"
                    }
                ));
            }
            if !parts.is_empty() {
                let _ = write!(
                    s,
                    " Against the control, eps = {} changes {}.",
                    top.eps,
                    parts.join(" and ")
                );
            }
        }
    }
    let long = find_cmp(&all, Method::Clae, Method::PlainLong, Metric::Knn200);
    if let Some(c) = long.first() {
        let epochs = MeanStd::of(
            &runs_of(rep, &c.other)
                .iter()
                .map(|r| r.epochs as f64)
                .collect::<Vec<_>>(),
        );
        let _ = write!(
            s,
            " Given CLAE's wall-clock ({:.0} epochs), plain {} differs from CLAE by {:+.2} points ({}).",
            epochs.mean,
            loss_title(c.base.loss),
            c.delta_points(),
            if c.beyond_noise() { "beyond the seed noise" } else { "within the seed noise" }
        );
    }
    let peers: Vec<String> = [Method::Acl, Method::Rocl]
        .iter()
        .filter_map(|&m| {
            let g = gs.iter().find(|g| g.loss == focus && g.method == m)?;
            let rob = o
                .attack_eps
                .first()
                .map(|&e| stat(rep, g, &Metric::Robust(e)).mean)
                .unwrap_or(f64::NAN);
            Some(format!(
                "{} {:.2}% kNN-200, {:.2}% robust at {}/255",
                g.title(),
                stat(rep, g, &Metric::Knn200).mean,
                rob,
                o.attack_eps.first().copied().unwrap_or(0.0)
            ))
        })
        .collect();
    if !peers.is_empty() {
        let _ = write!(s, " Peers ({}): {}.", loss_title(focus), peers.join("; "));
    }
    let _ = write!(
        s,
        " Raw pixels score {:.2}% (kNN-200) and {:.2}% (probe).",
        100.0 * rep.baseline.knn200,
        100.0 * rep.baseline.probe_test
    );
    s
}

fn seconds_text(rep: &Replication) -> String {
    let mut s = String::from("| loss | method | s/epoch (median over epochs, mean over seeds) | relative to plain | final evaluation s/cell (kNN, probe, PGD) |\n|---|---|---|---|---|\n");
    for g in groups(rep) {
        let spe = |g: &Group| {
            MeanStd::of(
                &runs_of(rep, g)
                    .iter()
                    .map(|r| r.seconds_per_epoch)
                    .collect::<Vec<_>>(),
            )
            .mean
        };
        let plain = Group {
            loss: g.loss,
            method: Method::Plain,
            eps: 0.0,
        };
        let (t, tp) = (spe(&g), spe(&plain));
        let rel = if tp > 0.0 && t.is_finite() {
            format!("{:.2}x", t / tp)
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {rel} | {:.1} |",
            loss_title(g.loss),
            g.title(),
            t,
            MeanStd::of(
                &runs_of(rep, &g)
                    .iter()
                    .map(|r| r.eval_seconds)
                    .collect::<Vec<_>>()
            )
            .mean
        );
    }
    s
}

/// Every sweep value with its size in `[0, 1]` pixels (`eps x STD`) and in
/// 1/255 steps, e.g. `0.03 (0.0106 = 2.70/255 pixels)`.
pub fn sweep_pixels(sweep: &[f64]) -> String {
    sweep
        .iter()
        .map(|&e| format!("{e} ({:.4} = {:.2}/255 pixels)", e * STD, e * STD * 255.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How often each probe learning rate was chosen, e.g. `0.5 (12 cells), 0.05 (3 cells)`.
fn chosen_lrs(rep: &Replication) -> String {
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for r in &rep.runs {
        match counts.iter_mut().find(|(lr, _)| *lr == r.probe_lr) {
            Some(c) => c.1 += 1,
            None => counts.push((r.probe_lr, 1)),
        }
    }
    if counts.is_empty() {
        return "none (no cells)".into();
    }
    counts
        .iter()
        .map(|(lr, n)| format!("{lr} ({n} cells)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The full Markdown report.
pub fn markdown(rep: &Replication) -> String {
    let o = &rep.options;
    let mut s = String::new();
    let _ = writeln!(s, "# Does the adversarial view help? Fashion-MNIST\n");
    let _ = writeln!(s, "**Result.** {}\n", conclusion(rep));
    let load = rep.load_average.map_or(String::new(), |(a, b)| {
        format!(" (1-minute load average {a:.1} at the start, {b:.1} at the end)")
    });
    let _ = writeln!(
        s,
        "{} — {} cells ({} read back from an earlier invocation's runs.csv), {}; data from `{}`; this invocation {:.0} s{load}.\n",
        clae_benches::machine::utc_now(),
        rep.runs.len(),
        rep.reused,
        clae_benches::machine::cpu_model(),
        rep.data_dir.display(),
        rep.seconds,
    );
    if o.quick {
        s.push_str(
            "This is a **quick smoke run** (`--quick`): toy sizes, numbers meaningless.\n\n",
        );
    }
    let _ = writeln!(
        s,
        "## Results (mean ± std over seeds)\n\n{}",
        summary_table(rep)
    );
    s.push_str("⚑ \"best test epoch\": the best test accuracy over the probe's epochs and weight decays, as the authors report it — selected on the test set, so optimistic. The \"linear probe\" column selects learning rate, weight decay and stopping epoch on the validation split.\n\n");
    s.push_str("![accuracy per method](accuracy.svg)\n\n![accuracy vs eps](accuracy_vs_eps.svg)\n\n![robust accuracy](robustness.svg)\n\n![learning curves](learning_curves.svg)\n\n");
    let _ = writeln!(
        s,
        "## Comparisons\n\nWelch's unpaired t-test (unequal variances) and, because the same seed gives every method the same initialisation and the same augmented batches, the per-seed paired difference (mean ± std, how many seeds favour \"other\", paired t-test p). \"Beyond seed noise\" uses Welch's p < {SIGNIFICANCE}, uncorrected for the number of comparisons. The power column is the smallest true difference the paired test at p < {SIGNIFICANCE} would detect with 80% probability given the observed spread of the per-seed differences, `(t(0.975, n−1) + t(0.8, n−1)) · sd / √n` (the usual Student-t approximation, slightly optimistic for 3 seeds): a difference below it is not ruled out by a \"no\".\n\n{}",
        comparison_table(rep)
    );
    let _ = writeln!(s, "## Training time\n\n{}", seconds_text(rep));
    s.push_str("Plain at CLAE's wall-clock trains plain for round(E × t_CLAE / t_plain) epochs, the ratio measured on the same seed's plain and CLAE cells.\n\n");
    let (tr, val, bank, test) = rep.sizes;
    let focus = o.focus;
    let _ = writeln!(
        s,
        "## Protocol\n\n\
* Data: Fashion-MNIST's IDX files (60 000 training, 10 000 test, 28x28, 10 classes). A stratified validation split of {val} images is carved from the training set (seed {}); the encoders train on a stratified subset of {tr} of the rest; the kNN bank is {bank} training images outside validation; {test} test images are evaluated, {} of them attacked.\n\
* Inputs: pixels in [0, 1], normalised per channel with the training set's mean {} and std {} before the encoder, as the authors normalise CIFAR-10. CLAE's eps is in normalised units (the authors' convention), eps × std in [0, 1] pixels. Sweep (focus loss {}): eps ∈ {{{}}} normalised.\n\
* Views: random resized crop (area [0.2, 1], aspect [3/4, 4/3], bilinear), horizontal flip ½, brightness and contrast jitter 0.4 with probability 0.8 — the same for every method.\n\
* Encoder: {} (the MLP is docs/SPEC.md §2's; the CNN is `clae_accelerated::cnn`: conv3x3-DualBN2d-ReLU blocks, stride 2 after the first, global average pooling, the MLP's projection head); N = {}; {} epochs; tau and optimizer as docs/SPEC.md (SimCLR's Adam lr raised to 1e-3, as in the digits replication). CLAE: FGSM on P, alpha = 1, lean recipe. Control: the CLAE step with eps = 0. ACL-/RoCL-style: `clae_reference::peers` with their public attacks (PGD-5 at 8/255, PGD-7 at 0.0314, eval-mode BN, random start reseeded per step), converted to normalised units.\n\
* kNN-200 with the authors' temperatures (0.1 Plain/UEL, 0.5 SimCLR; raw pixels 0.1). Linear probe on the eval-mode embeddings of the {tr} training images: full-batch GD with momentum {}, up to {} epochs, learning rate ∈ {:?} and weight decay ∈ {:?}, all three (with the stopping epoch) chosen on validation; chosen learning rates: {}.\n\
* Learning curves: kNN-200 every {} epochs on {} test images with the {tr} contrastive training images as the bank (cheaper than the final kNN-200's bank of {bank} images, so curve values are not directly comparable with the final kNN-200).\n\
* Robustness: PGD-{} (L∞, [0, 1] pixels, eps ∈ {{{}}}/255, random start, step 2.5 eps / k, projection and clamp) on encoder + probe end to end; an image is robust when classified correctly clean and attacked.\n",
        super::run::SPLIT_SEED,
        o.robust.min(test),
        super::data::MEAN,
        STD,
        focus,
        sweep_pixels(&o.sweep),
        encoder_text(o),
        o.batch,
        o.epochs,
        o.probe.momentum,
        o.probe.epochs,
        o.probe.lrs,
        o.probe.weight_decays,
        chosen_lrs(rep),
        o.curve_every,
        o.curve_test.min(test),
        o.pgd_steps,
        o.attack_eps.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "),
    );
    let _ = writeln!(
        s,
        "Reproduce: `scripts/fashion.sh` (or `cargo run --release -p clae-replication --bin fashion -- --help` for every size). Rows of runs.csv carry a fingerprint of the sizes (`{}`); a rerun with the same sizes skips the cells already there.",
        o.fingerprint()
    );
    s
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| FashionError::Io {
        what: "writing the report".into(),
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes `report.md` and the charts into the output folder (the CSVs are
/// already there) and returns the paths written.
pub fn write(rep: &Replication) -> Result<Vec<PathBuf>> {
    let dir = &rep.options.out;
    std::fs::create_dir_all(dir).map_err(|e| FashionError::Io {
        what: "creating the report folder".into(),
        path: dir.clone(),
        source: e,
    })?;
    let mut written = Vec::new();
    let path = dir.join("report.md");
    write_file(&path, &markdown(rep))?;
    written.push(path);
    for (name, f) in [
        (
            "accuracy.svg",
            accuracy_svg as fn(&Replication, &Path) -> Result<()>,
        ),
        ("accuracy_vs_eps.svg", accuracy_vs_eps_svg),
        ("robustness.svg", robustness_svg),
        ("learning_curves.svg", learning_curves_svg),
    ] {
        let path = dir.join(name);
        f(rep, &path)?;
        written.push(path);
    }
    Ok(written)
}

// -------------------------------------------------------------- charts --

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const GREY: RGBColor = RGBColor(127, 127, 127);

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn plot_err(path: &Path) -> impl Fn(String) -> FashionError + '_ {
    move |message| FashionError::Plot {
        path: path.to_path_buf(),
        message,
    }
}

fn y_range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 100.0);
    }
    let pad = ((hi - lo) * 0.1).max(0.5);
    ((lo - pad).max(0.0), (hi + pad).min(100.0))
}

/// `accuracy.svg`: kNN-200 and linear probe per group, every seed a dot,
/// mean ± std a bar, raw pixels a grey line.
pub fn accuracy_svg(rep: &Replication, path: &Path) -> Result<()> {
    let err = plot_err(path);
    let gs = groups(rep);
    let width = (120 * gs.len().max(4)) as u32;
    let root = SVGBackend::new(path, (width, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((2, 1));
    let b = &rep.baseline;
    for (metric, area, base) in [
        (Metric::Knn200, &panels[0], 100.0 * b.knn200),
        (Metric::Probe, &panels[1], 100.0 * b.probe_test),
    ] {
        let (lo, hi) = y_range(rep.runs.iter().map(|r| 100.0 * metric.of(r)).chain([base]));
        let n = gs.len().max(1) as f64;
        let labels: Vec<String> = gs
            .iter()
            .map(|g| format!("{} {}", loss_title(g.loss), g.title()))
            .collect();
        let label_of = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} test top-1 (%)", metric.name()),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(60)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5..n - 0.5, lo..hi)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(gs.len().max(1) * 2 + 1)
            .x_label_formatter(&label_of)
            .x_label_style(("sans-serif", 10))
            .y_desc("accuracy (%)")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                [(-0.5, base), (n - 0.5, base)],
                GREY.stroke_width(1),
            ))
            .map_err(|e| err(e.to_string()))?
            .label("raw pixels")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], GREY));
        for (i, g) in gs.iter().enumerate() {
            let c = color(i);
            let vals: Vec<f64> = runs_of(rep, g)
                .iter()
                .map(|r| 100.0 * metric.of(r))
                .collect();
            let m = MeanStd::of(&vals);
            let x = i as f64;
            let k = vals.len().max(1) as f64;
            chart
                .draw_series(vals.iter().enumerate().map(|(j, &v)| {
                    Circle::new((x + 0.25 * ((j as f64 + 0.5) / k - 0.5), v), 3, c.filled())
                }))
                .map_err(|e| err(e.to_string()))?;
            if m.mean.is_finite() {
                let st = c.stroke_width(2);
                chart
                    .draw_series([
                        PathElement::new([(x - 0.3, m.mean), (x + 0.3, m.mean)], st),
                        PathElement::new([(x, m.mean - m.std), (x, m.mean + m.std)], st),
                    ])
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn line_chart(
    path: &Path,
    caption: &str,
    x_desc: &str,
    series: &[(String, Vec<(f64, MeanStd)>)],
    baseline: Option<(&str, Vec<(f64, f64)>)>,
) -> Result<()> {
    let err = plot_err(path);
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let xs = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .chain(baseline.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)));
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (x_lo, x_hi) = if x_lo.is_finite() && x_hi > x_lo {
        (x_lo, x_hi)
    } else {
        (0.0, 1.0)
    };
    let (lo, hi) = y_range(
        series
            .iter()
            .flat_map(|(_, p)| p.iter().flat_map(|(_, m)| [m.mean - m.std, m.mean + m.std]))
            .chain(baseline.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y))),
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(x_lo..x_hi, lo..hi)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .max_light_lines(1)
        .x_desc(x_desc)
        .y_desc("accuracy (%)")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    if let Some((name, pts)) = baseline {
        chart
            .draw_series(LineSeries::new(pts, GREY.stroke_width(1)))
            .map_err(|e| err(e.to_string()))?
            .label(name)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], GREY));
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, MeanStd)> = pts
            .iter()
            .filter(|(_, m)| m.mean.is_finite())
            .copied()
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|(x, m)| (*x, m.mean)),
                c.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|(x, m)| {
                PathElement::new(
                    [(*x, m.mean - m.std), (*x, m.mean + m.std)],
                    c.stroke_width(1),
                )
            }))
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn stat(rep: &Replication, g: &Group, m: &Metric) -> MeanStd {
    let v: Vec<f64> = values(&runs_of(rep, g), m)
        .iter()
        .map(|v| 100.0 * v)
        .collect();
    MeanStd::of(&v)
}

/// `accuracy_vs_eps.svg`: for the focus loss, kNN-200 and the probe against
/// CLAE's eps (0 = the control), mean ± std over seeds; plain as a grey line.
pub fn accuracy_vs_eps_svg(rep: &Replication, path: &Path) -> Result<()> {
    let loss = rep.options.focus;
    let mut pts: Vec<Group> = groups(rep)
        .into_iter()
        .filter(|g| g.loss == loss && matches!(g.method, Method::Clae | Method::ClaeEps0))
        .collect();
    pts.sort_by(|a, b| a.eps.total_cmp(&b.eps));
    let plain = Group {
        loss,
        method: Method::Plain,
        eps: 0.0,
    };
    let series: Vec<(String, Vec<(f64, MeanStd)>)> = [Metric::Knn200, Metric::Probe]
        .iter()
        .map(|m| {
            (
                format!("CLAE {}", m.name()),
                pts.iter().map(|g| (g.eps, stat(rep, g, m))).collect(),
            )
        })
        .collect();
    let x_hi = pts.last().map_or(0.1, |g| g.eps);
    let p = stat(rep, &plain, &Metric::Knn200).mean;
    line_chart(
        path,
        &format!(
            "{}: accuracy vs CLAE eps (normalised units)",
            loss_title(loss)
        ),
        &format!("eps (normalised; x {STD:.3} for [0,1] pixels)"),
        &series,
        p.is_finite()
            .then(|| ("plain kNN-200", vec![(0.0, p), (x_hi, p)])),
    )
}

/// `robustness.svg`: the probe's robust accuracy against the attack radius
/// for every group of the focus loss (radius 0 = clean accuracy on the
/// same attacked subset), and raw pixels.
pub fn robustness_svg(rep: &Replication, path: &Path) -> Result<()> {
    let loss = rep.options.focus;
    let series: Vec<(String, Vec<(f64, MeanStd)>)> = groups(rep)
        .into_iter()
        .filter(|g| g.loss == loss)
        .map(|g| {
            let mut radii = vec![0.0];
            radii.extend(rep.options.attack_eps.iter().filter(|&&e| e != 0.0));
            let pts = radii
                .into_iter()
                .map(|e| (e, stat(rep, &g, &Metric::Robust(e))))
                .filter(|(_, m)| m.mean.is_finite())
                .collect();
            (g.title(), pts)
        })
        .collect();
    let mut base: Vec<(f64, f64)> = rep
        .baseline
        .robust
        .iter()
        .map(|(e, a)| (*e, 100.0 * a))
        .collect();
    base.sort_by(|a, b| a.0.total_cmp(&b.0));
    line_chart(
        path,
        &format!(
            "{}: linear probe under PGD-{} (L-inf)",
            loss_title(loss),
            rep.options.pgd_steps
        ),
        "attack eps (/255, [0,1] pixels)",
        &series,
        Some(("raw pixels", base)),
    )
}

/// `learning_curves.svg`: curve-subset kNN-200 per epoch, plain, CLAE and
/// the control of every loss (mean ± std over seeds).
pub fn learning_curves_svg(rep: &Replication, path: &Path) -> Result<()> {
    let series: Vec<(String, Vec<(f64, MeanStd)>)> = groups(rep)
        .into_iter()
        .filter(|g| {
            matches!(g.method, Method::Plain | Method::ClaeEps0)
                || (g.method == Method::Clae && g.eps == g.loss.default_eps())
        })
        .map(|g| {
            let runs = runs_of(rep, &g);
            // Lined up by epoch number, not by position: a point is the
            // seeds that measured that epoch.
            let mut epochs: Vec<usize> = runs
                .iter()
                .flat_map(|r| r.curve.iter().map(|c| c.0))
                .collect();
            epochs.sort_unstable();
            epochs.dedup();
            let pts = epochs
                .into_iter()
                .filter_map(|e| {
                    let v: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| r.curve.iter().find(|c| c.0 == e))
                        .map(|c| 100.0 * c.3)
                        .filter(|v| v.is_finite())
                        .collect();
                    (!v.is_empty()).then(|| (e as f64, MeanStd::of(&v)))
                })
                .collect();
            (format!("{} {}", loss_title(g.loss), g.title()), pts)
        })
        .collect();
    line_chart(
        path,
        "learning curves: kNN-200 on the curve subset of the test set",
        "epoch",
        &series,
        None,
    )
}
