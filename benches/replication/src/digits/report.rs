//! The report: summary statistics over seeds, the plain-vs-CLAE comparison,
//! and the files — `report.md`, `runs.csv`, `curves.csv`,
//! `learning_curves.svg`, `final_accuracy.svg`.

use super::run::Replication;
use super::stats::{welch, MeanStd, Welch};
use super::train::{Method, RunRecord, TrainConfig};
use super::{DigitsError, Result};
use clae_reference::loss::LossKind;
use clae_reference::optim::OptimizerConfig;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// p-value below which a difference counts as larger than the seed noise.
pub const SIGNIFICANCE: f64 = 0.05;

/// Mean ± std over seeds of one (loss, method).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSummary {
    /// Loss family.
    pub loss: LossKind,
    /// Plain or CLAE.
    pub method: Method,
    /// kNN-200 top-1 (fraction).
    pub knn200: MeanStd,
    /// 1-NN top-1 (fraction).
    pub knn1: MeanStd,
    /// Linear probe top-1 (fraction).
    pub probe: MeanStd,
    /// Effective rank of the test embeddings.
    pub effective_rank: MeanStd,
    /// Alignment of two augmented test views.
    pub alignment: MeanStd,
    /// Uniformity of the test embeddings.
    pub uniformity: MeanStd,
    /// Training wall-clock seconds per epoch.
    pub seconds_per_epoch: MeanStd,
}

/// An accuracy metric of [`RunRecord::final_eval`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Weighted kNN, `k = 200`, `T = 0.1`.
    Knn200,
    /// Nearest neighbour.
    Knn1,
    /// Linear probe.
    Probe,
}

impl Metric {
    /// All three, the paper's protocol first.
    pub const ALL: [Metric; 3] = [Metric::Knn200, Metric::Knn1, Metric::Probe];

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Knn200 => "kNN-200",
            Metric::Knn1 => "1-NN",
            Metric::Probe => "linear probe",
        }
    }

    /// The metric's value in a run.
    pub fn of(self, r: &RunRecord) -> f64 {
        match self {
            Metric::Knn200 => r.final_eval.knn200,
            Metric::Knn1 => r.final_eval.knn1,
            Metric::Probe => r.final_eval.probe,
        }
    }
}

/// One method against another (e.g. CLAE against plain) on one loss and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Loss family.
    pub loss: LossKind,
    /// Which accuracy.
    pub metric: Metric,
    /// The method compared against (e.g. plain).
    pub base: Method,
    /// The method under test (e.g. CLAE).
    pub other: Method,
    /// `base` runs.
    pub base_stats: MeanStd,
    /// `other` runs.
    pub other_stats: MeanStd,
    /// Welch's test of `other` against `base` (`None` with fewer than 2 seeds).
    pub welch: Option<Welch>,
}

impl Comparison {
    /// Whether the difference is larger than the seed noise (`p < 0.05`).
    pub fn beyond_noise(&self) -> bool {
        self.welch.is_some_and(|w| w.p < SIGNIFICANCE)
    }

    /// `mean(other) − mean(base)` in percentage points.
    pub fn delta_points(&self) -> f64 {
        100.0 * (self.other_stats.mean - self.base_stats.mean)
    }
}

/// The (base, other) pairs compared: CLAE vs plain, and with the control
/// also CLAE(eps = 0) vs plain and CLAE vs CLAE(eps = 0).
pub fn comparison_pairs(methods: &[Method]) -> Vec<(Method, Method)> {
    let has = |m| methods.contains(&m);
    let mut pairs = Vec::new();
    if has(Method::Plain) && has(Method::Clae) {
        pairs.push((Method::Plain, Method::Clae));
    }
    if has(Method::ClaeEps0) {
        if has(Method::Plain) {
            pairs.push((Method::Plain, Method::ClaeEps0));
        }
        if has(Method::Clae) {
            pairs.push((Method::ClaeEps0, Method::Clae));
        }
    }
    pairs
}

fn runs_of(rep: &Replication, loss: LossKind, method: Method) -> Vec<&RunRecord> {
    rep.runs
        .iter()
        .filter(|r| r.loss == loss && r.method == method)
        .collect()
}

fn metric_values(runs: &[&RunRecord], f: impl Fn(&RunRecord) -> f64) -> Vec<f64> {
    runs.iter().map(|r| f(r)).collect()
}

/// One summary per (loss, method) that has runs, in run order.
pub fn summaries(rep: &Replication) -> Vec<ConfigSummary> {
    let mut out = Vec::new();
    for cfg in &rep.configs {
        for &method in &rep.options.methods {
            let runs = runs_of(rep, cfg.loss, method);
            if runs.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&RunRecord) -> f64| MeanStd::of(&metric_values(&runs, f));
            out.push(ConfigSummary {
                loss: cfg.loss,
                method,
                knn200: m(&|r| r.final_eval.knn200),
                knn1: m(&|r| r.final_eval.knn1),
                probe: m(&|r| r.final_eval.probe),
                effective_rank: m(&|r| r.final_eval.diag.effective_rank),
                alignment: m(&|r| r.final_eval.diag.alignment),
                uniformity: m(&|r| r.final_eval.diag.uniformity),
                seconds_per_epoch: m(&|r| r.seconds_per_epoch()),
            });
        }
    }
    out
}

/// Every [`comparison_pairs`] pair for every loss and accuracy metric.
pub fn comparisons(rep: &Replication) -> Vec<Comparison> {
    let mut out = Vec::new();
    for (base, other) in comparison_pairs(&rep.options.methods) {
        for cfg in &rep.configs {
            let base_runs = runs_of(rep, cfg.loss, base);
            let other_runs = runs_of(rep, cfg.loss, other);
            for metric in Metric::ALL {
                let a = metric_values(&base_runs, |r| metric.of(r));
                let b = metric_values(&other_runs, |r| metric.of(r));
                out.push(Comparison {
                    loss: cfg.loss,
                    metric,
                    base,
                    other,
                    base_stats: MeanStd::of(&a),
                    other_stats: MeanStd::of(&b),
                    welch: welch(&a, &b),
                });
            }
        }
    }
    out
}

fn method_title(m: Method) -> &'static str {
    match m {
        Method::Plain => "plain",
        Method::Clae => "CLAE",
        Method::ClaeEps0 => "CLAE eps=0",
    }
}

fn pct(m: &MeanStd) -> String {
    format!("{:.2} ± {:.2}", 100.0 * m.mean, 100.0 * m.std)
}

fn num(m: &MeanStd, digits: usize) -> String {
    format!("{:.*} ± {:.*}", digits, m.mean, digits, m.std)
}

fn loss_title(l: LossKind) -> &'static str {
    match l {
        LossKind::Plain => "Plain",
        LossKind::SimClr => "SimCLR",
        LossKind::Uel => "UEL",
    }
}

/// The results table (Markdown): mean ± std over seeds per (loss, method).
pub fn summary_table(rep: &Replication) -> String {
    let mut s = String::new();
    s.push_str("| loss | method | kNN-200 top-1 (%) | 1-NN top-1 (%) | linear probe (%) | effective rank | alignment ↓ | uniformity ↓ | train s/epoch |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for c in summaries(rep) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            loss_title(c.loss),
            c.method.name(),
            pct(&c.knn200),
            pct(&c.knn1),
            pct(&c.probe),
            num(&c.effective_rank, 1),
            num(&c.alignment, 3),
            num(&c.uniformity, 3),
            num(&c.seconds_per_epoch, 3),
        );
    }
    s
}

/// The comparison table (Markdown): CLAE − plain (and the control's
/// comparisons) per loss and metric with Welch's t-test.
pub fn comparison_table(rep: &Replication) -> String {
    let mut s = String::new();
    s.push_str("| comparison | loss | metric | base (%) | other (%) | Δ other − base (points) | Welch t | df | p (two-sided) | beyond seed noise? |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for c in comparisons(rep) {
        let (t, df, p) = match c.welch {
            Some(w) => (
                format!("{:.2}", w.t),
                format!("{:.1}", w.df),
                format!("{:.3}", w.p),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} vs {} | {} | {} | {} | {} | {:+.2} | {t} | {df} | {p} | {} |",
            method_title(c.other),
            method_title(c.base),
            loss_title(c.loss),
            c.metric.name(),
            pct(&c.base_stats),
            pct(&c.other_stats),
            c.delta_points(),
            if c.beyond_noise() { "**yes**" } else { "no" },
        );
    }
    s
}

/// CLAE's training time per epoch over plain's, per loss.
pub fn cost_ratios(rep: &Replication) -> Vec<(LossKind, f64)> {
    rep.configs
        .iter()
        .filter_map(|cfg| {
            let t = |m| {
                MeanStd::of(&metric_values(&runs_of(rep, cfg.loss, m), |r| {
                    r.seconds_per_epoch()
                }))
                .mean
            };
            let (plain, clae) = (t(Method::Plain), t(Method::Clae));
            (plain > 0.0 && clae.is_finite()).then_some((cfg.loss, clae / plain))
        })
        .collect()
}

/// Plain after all its epochs against CLAE after the epoch at which it has
/// spent the same training time (by the measured mean seconds per epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct EqualTime {
    /// Loss family.
    pub loss: LossKind,
    /// CLAE / plain seconds per epoch.
    pub ratio: f64,
    /// Plain's epochs.
    pub plain_epoch: usize,
    /// CLAE's epoch with about the same training time, `round(E / ratio)`.
    pub clae_epoch: usize,
    /// Plain's test kNN-200 (%) at `plain_epoch`.
    pub plain: MeanStd,
    /// CLAE's test kNN-200 (%) at `clae_epoch`.
    pub clae: MeanStd,
}

/// [`EqualTime`] for every loss that has plain and CLAE runs.
pub fn equal_time(rep: &Replication) -> Vec<EqualTime> {
    cost_ratios(rep)
        .into_iter()
        .filter_map(|(loss, ratio)| {
            let plain = mean_curve(rep, loss, Method::Plain);
            let clae = mean_curve(rep, loss, Method::Clae);
            let last = plain.len().checked_sub(1)?;
            let at = ((last as f64 / ratio).round() as usize).min(clae.len().checked_sub(1)?);
            Some(EqualTime {
                loss,
                ratio,
                plain_epoch: last,
                clae_epoch: at,
                plain: plain[last].1,
                clae: clae[at].1,
            })
        })
        .collect()
}

/// The one-sentence result, written from the numbers (whatever they are).
pub fn conclusion(rep: &Replication) -> String {
    let all = comparisons(rep);
    let knn_of = |base, other| -> Vec<&Comparison> {
        all.iter()
            .filter(|c| c.metric == Metric::Knn200 && c.base == base && c.other == other)
            .collect()
    };
    let knn = knn_of(Method::Plain, Method::Clae);
    let losses: Vec<&str> = knn.iter().map(|c| loss_title(c.loss)).collect();
    let deltas = |cs: &[&Comparison]| -> String {
        cs.iter()
            .map(|c| format!("{:+.2}", c.delta_points()))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let verdict = |cs: &[&Comparison]| -> String {
        let beyond: Vec<&str> = cs
            .iter()
            .filter(|c| c.beyond_noise())
            .map(|c| loss_title(c.loss))
            .collect();
        match beyond.len() {
            0 => "none of these differences is larger than the seed noise".to_string(),
            n if n == cs.len() => {
                "all of these differences are larger than the seed noise".to_string()
            }
            _ => format!(
                "only the {} difference{} larger than the seed noise",
                beyond.join(" and "),
                if beyond.len() == 1 { " is" } else { "s are" }
            ),
        }
    };
    let ratios: Vec<f64> = cost_ratios(rep).into_iter().map(|(_, r)| r).collect();
    let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let cost = if ratios.is_empty() {
        String::new()
    } else if (hi - lo) < 0.05 {
        format!(", while CLAE cost {lo:.1}x the training time per epoch")
    } else {
        format!(", while CLAE cost {lo:.1}–{hi:.1}x the training time per epoch")
    };
    let mut sentence = format!(
        "On scikit-learn's 8x8 digits ({} seeds, {} epochs, {}), adding CLAE's adversarial view changed test kNN-200 accuracy by {} percentage points for the {} loss{}; by Welch's t-test (two-sided p < {SIGNIFICANCE}) {}{cost}.",
        rep.options.seeds,
        rep.options.epochs,
        rep.options.backend.name(),
        deltas(&knn),
        losses.join(" / "),
        if losses.len() > 1 { "es respectively" } else { "" },
        verdict(&knn),
    );
    let control = knn_of(Method::ClaeEps0, Method::Clae);
    if !control.is_empty() {
        let _ = write!(
            sentence,
            " Against its eps = 0 control (the same extra loss term, adv BatchNorm branch and cost, without the perturbation), CLAE's difference is {} points; {}.",
            deltas(&control),
            verdict(&control),
        );
    }
    sentence
}

fn optimizer_text(o: &OptimizerConfig) -> String {
    match *o {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        } => format!("SGD lr {lr}, momentum {momentum}, wd {weight_decay}"),
        OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => format!("Adam lr {lr}, betas ({beta1}, {beta2}), eps {eps}, wd {weight_decay}"),
    }
}

fn hyper_parameter_table(configs: &[TrainConfig]) -> String {
    let mut s = String::new();
    s.push_str("| loss | tau | eps (FGSM, [0,1] pixels) | alpha | optimizer | N | epochs | encoder (D_in-h x L-d) |\n");
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for c in configs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | 64-{} x {}-{} |",
            loss_title(c.loss),
            c.tau,
            c.eps,
            c.alpha,
            optimizer_text(&c.optimizer),
            c.batch_size,
            c.epochs,
            c.model.hidden,
            c.model.depth,
            c.model.d
        );
    }
    s
}

/// Today's date (UTC) from the system clock, `YYYY-MM-DD`.
fn today() -> String {
    clae_benches::machine::utc_now()[..10].to_string()
}

/// The full Markdown report.
pub fn markdown(rep: &Replication) -> String {
    let o = &rep.options;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let b = &rep.baseline;
    let mut s = String::new();
    let _ = writeln!(s, "# Plain vs CLAE on scikit-learn's 8x8 digits\n");
    let _ = writeln!(
        s,
        "{}{} — {} seeds x {} loss(es) x {} methods = {} runs, {} epochs each, backend `{}`; {} on {} ({threads} threads); total {:.0} s{}.\n",
        today(),
        if o.quick { " — **quick smoke run, not a result**" } else { "" },
        o.seeds,
        rep.configs.len(),
        o.methods.len(),
        rep.runs.len(),
        o.epochs,
        o.backend.name(),
        std::env::consts::OS,
        clae_benches::machine::cpu_model(),
        rep.seconds,
        match rep.load_average {
            Some((a, b)) => format!(" (1-minute load average {a:.1} at the start, {b:.1} at the end)"),
            None => String::new(),
        }
    );
    let _ = writeln!(
        s,
        "**Result.** {} For scale: the same kNN-200 protocol on the raw pixels scores {:.2}% (1-NN {:.2}%).\n",
        conclusion(rep),
        100.0 * rep.baseline.knn200,
        100.0 * rep.baseline.knn1
    );
    let _ = writeln!(s, "## Results (test set, mean ± std over seeds)\n");
    s.push_str(&summary_table(rep));
    let _ = writeln!(
        s,
        "\nRaw pixels, no encoder (same protocols): kNN-200 {:.2}%, 1-NN {:.2}%, linear probe {:.2}%.\n",
        100.0 * b.knn200,
        100.0 * b.knn1,
        100.0 * b.probe
    );
    let _ = writeln!(s, "## Is CLAE's difference larger than the seed noise?\n");
    let _ = writeln!(
        s,
        "Welch's unpaired two-sample t-test (unequal variances, sample std with n − 1) of one method's runs against another's (\"other\" against \"base\"); a difference counts as beyond the seed noise when the two-sided p < {SIGNIFICANCE}. p-values are not corrected for the {} comparisons; kNN-200 is the primary metric (the paper's protocol). The same seed gives every method the same initialisation and the same augmented batches.{}\n",
        comparisons(rep).len(),
        if rep.options.methods.contains(&Method::ClaeEps0) {
            " \"CLAE eps=0\" is the control: the CLAE step with eps = 0, i.e. Q_adv = P — the same second loss term through the adv BatchNorm branch at the same cost, without the adversarial perturbation."
        } else {
            ""
        }
    );
    s.push_str(&comparison_table(rep));
    let ratios: Vec<String> = cost_ratios(rep)
        .iter()
        .map(|(l, r)| format!("{} {r:.2}x", loss_title(*l)))
        .collect();
    let _ = writeln!(
        s,
        "\nTraining time per epoch, CLAE / plain: {} (per run the median over epochs of the training wall-clock, evaluation excluded; lean recipe; measured on a shared machine, so expect noise).\n",
        ratios.join(", ")
    );
    let eq = equal_time(rep);
    if !eq.is_empty() {
        let _ = writeln!(
            s,
            "### At equal training time
"
        );
        s.push_str("CLAE's step costs more, so it also gets fewer epochs for the same time. Plain after all its epochs against CLAE at the epoch where it has spent about the same training time (test kNN-200, mean ± std over seeds):\n\n");
        s.push_str("| loss | CLAE/plain time per epoch | plain: epoch, kNN-200 (%) | CLAE: epoch, kNN-200 (%) | Δ (points) |\n|---|---|---|---|---|\n");
        for e in &eq {
            let _ = writeln!(
                s,
                "| {} | {:.2}x | {}, {} | {}, {} | {:+.2} |",
                loss_title(e.loss),
                e.ratio,
                e.plain_epoch,
                num(&e.plain, 2),
                e.clae_epoch,
                num(&e.clae, 2),
                e.clae.mean - e.plain.mean
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## Setup\n");
    let _ = writeln!(
        s,
        "* Data: `{}` — {} images, stratified split (seed {}, {}% test per class): {} train / {} test. Pixels scaled from 0..16 to [0, 1].",
        rep.data_path.display(),
        rep.split_sizes.0 + rep.split_sizes.1,
        super::run::SPLIT_SEED,
        100.0 * super::run::TEST_FRACTION,
        rep.split_sizes.0,
        rep.split_sizes.1
    );
    if let Some(c) = rep.configs.first() {
        let a = c.augment;
        let _ = writeln!(
            s,
            "* Views: random translation by up to {} px (zero fill), intensity scale U[{}, {}), Gaussian noise σ = {}, clamp to [0, 1] = {}.",
            a.max_shift, a.scale_lo, a.scale_hi, a.noise_std, a.clamp
        );
        let _ = writeln!(
            s,
            "* Encoder: docs/SPEC.md §2's dual-BN MLP; evaluation on eval-mode (clean running statistics) embeddings `z`. Linear probe: multinomial logistic regression on standardised frozen `z`, {} full-batch steps (lr {}, momentum {}, L2 {}).",
            c.probe.steps, c.probe.lr, c.probe.momentum, c.probe.weight_decay
        );
    }
    let _ = writeln!(
        s,
        "* Backend `{}`: {}.",
        o.backend.name(),
        match o.backend {
            super::train::Backend::ReferenceF32 | super::train::Backend::ReferenceF64 =>
                "the pure-ndarray reference (hand-written backward passes; matmuls by matrixmultiply, threaded)".to_string(),
            _ => format!(
                "libtorch through clae-accelerated (autograd), same initial weights and batches as the reference run of each seed; {} intra-op thread(s)",
                o.torch_threads
            ),
        }
    );
    let _ = writeln!(
        s,
        "* kNN: cosine similarity, weighted vote exp(s / 0.1) over the k = 200 nearest training embeddings (InstDisc/UEL protocol), and k = 1. Diagnostics on the test set: effective rank of `z` (SVD), alignment E‖z − z'‖² over two augmented views of each test image (fixed view seed), uniformity log E exp(−2‖z_i − z_j‖²).\n"
    );
    s.push_str(&hyper_parameter_table(&rep.configs));
    let _ = writeln!(s, "\n### Changes from docs/SPEC.md's defaults\n");
    s.push_str(CHANGES);
    let _ = writeln!(s, "\n## Files\n");
    s.push_str(
        "* `runs.csv` — one row per run: configuration, final metrics, seconds per epoch.\n",
    );
    s.push_str("* `curves.csv` — one row per run and epoch: losses, seconds, test kNN-200.\n");
    s.push_str("* `learning_curves.svg` — test kNN-200 per epoch, mean ± std over seeds.\n");
    s.push_str("* `final_accuracy.svg` — final kNN-200, 1-NN and probe accuracy per run.\n");
    let mut args = String::new();
    if o.quick {
        args.push_str(" --quick");
    }
    if o.backend != super::train::Backend::ReferenceF32 {
        let _ = write!(args, " --backend {}", o.backend.name());
    }
    if !o.methods.contains(&Method::ClaeEps0) {
        args.push_str(" --no-control");
    }
    let _ = writeln!(s, "\nReproduce: `scripts/digits.sh{args}`.");
    s
}

/// Every deviation from docs/SPEC.md's defaults, with its reason.
pub const CHANGES: &str = "\
* tau, eps, alpha, recipe: docs/SPEC.md's defaults, unchanged (tau 0.1 / 0.5 / 0.1; eps 0.03 / 0.01 / 0.03; alpha 1; FGSM on P, lean recipe, no clamp). eps is in the units of the [0, 1] pixels, as for the authors' CIFAR images (one grey level of the digits is 1/16 = 0.0625).
* Optimizers: docs/SPEC.md's SGD (lr 0.03, momentum 0.9, wd 5e-4) for Plain and UEL unchanged. SimCLR's Adam lr raised from 3e-4 to 1e-3 (wd 1e-6 kept): a run here is ~300 steps, not the authors' ~10^5. In a 2-seed pilot at 30 epochs, lr 3e-4 gave test kNN-200 91.2% (plain) / 93.7% (CLAE) against 93.9% / 96.1% at 1e-3: both methods were still far from converged at 3e-4, and the raise helps both alike.
* Encoder: docs/SPEC.md §2's MLP with D_in = 64, h = 256, L = 2, d = 64 (the authors' ResNet-18 is far too large for 8x8 images and a CPU budget of minutes).
* Batch size N = 128 (the authors' default for Plain and UEL; SimCLR uses the same here so the three losses see the same batches); the last incomplete batch of each epoch is dropped.
* 30 epochs (10 steps each) instead of hundreds: the replication must run in a few minutes on 2 CPU cores.
* `--quick` (smoke runs only) shrinks everything further: h = 64, L = 1, d = 32, N = 64, 2 epochs, 2 seeds, 50 probe steps.
* Added a control that docs/SPEC.md does not define: CLAE with eps = 0 (Q_adv = P), which keeps CLAE's second loss term, its adv BatchNorm branch and its cost but drops the adversarial perturbation — so the comparison can tell the perturbation's effect from that of the extra term (`--no-control` skips it).
* Element type f32 (the reference is generic; f32 halves the cost, and docs/SPEC.md §8 bounds its error at 1e-4 relative per step).
";

fn csv_escape(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn config_of(rep: &Replication, loss: LossKind) -> Option<&TrainConfig> {
    rep.configs.iter().find(|c| c.loss == loss)
}

/// `runs.csv`: one row per run.
pub fn runs_csv(rep: &Replication) -> String {
    let mut s = String::from(
        "backend,loss,method,seed,epochs,batch_size,hidden,depth,d,tau,eps,alpha,optimizer,knn200,knn1,probe,effective_rank,alignment,uniformity,seconds_per_epoch,final_loss,final_loss_clean,final_loss_adv\n",
    );
    for r in &rep.runs {
        let Some(c) = config_of(rep, r.loss) else {
            continue;
        };
        let last = r.curve.last();
        let f = &r.final_eval;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_escape(&r.backend),
            r.loss,
            r.method.name(),
            r.seed,
            c.epochs,
            c.batch_size,
            c.model.hidden,
            c.model.depth,
            c.model.d,
            c.tau,
            TrainConfig {
                method: r.method,
                ..*c
            }
            .effective_eps(),
            if r.method.is_clae() { c.alpha } else { 0.0 },
            csv_escape(&optimizer_text(&c.optimizer)),
            f.knn200,
            f.knn1,
            f.probe,
            f.diag.effective_rank,
            f.diag.alignment,
            f.diag.uniformity,
            r.seconds_per_epoch(),
            last.map_or(f64::NAN, |e| e.loss),
            last.map_or(f64::NAN, |e| e.loss_clean),
            last.map_or(f64::NAN, |e| e.loss_adv),
        );
    }
    s
}

/// `curves.csv`: one row per run and epoch.
pub fn curves_csv(rep: &Replication) -> String {
    let mut s = String::from(
        "backend,loss,method,seed,epoch,loss_total,loss_clean,loss_adv,seconds,knn200\n",
    );
    for r in &rep.runs {
        for e in &r.curve {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{}",
                csv_escape(&r.backend),
                r.loss,
                r.method.name(),
                r.seed,
                e.epoch,
                e.loss,
                e.loss_clean,
                e.loss_adv,
                e.seconds,
                e.knn200
            );
        }
    }
    s
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| DigitsError::Io {
        what: "writing the report".into(),
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes every report file into [`Options::out_dir`](super::run::Options::out_dir) (created if needed) and
/// returns their paths.
pub fn write(rep: &Replication) -> Result<Vec<PathBuf>> {
    let dir = &rep.options.out_dir();
    std::fs::create_dir_all(dir).map_err(|e| DigitsError::Io {
        what: "creating the report folder".into(),
        path: dir.clone(),
        source: e,
    })?;
    let mut written = Vec::new();
    for (name, text) in [
        ("report.md", markdown(rep)),
        ("runs.csv", runs_csv(rep)),
        ("curves.csv", curves_csv(rep)),
    ] {
        let path = dir.join(name);
        write_file(&path, &text)?;
        written.push(path);
    }
    let path = dir.join("learning_curves.svg");
    learning_curves_svg(rep, &path)?;
    written.push(path);
    let path = dir.join("final_accuracy.svg");
    final_accuracy_svg(rep, &path)?;
    written.push(path);
    Ok(written)
}

const PLAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const CLAE_COLOR: RGBColor = RGBColor(214, 39, 40);
const CONTROL_COLOR: RGBColor = RGBColor(44, 160, 44);
const BASELINE_COLOR: RGBColor = RGBColor(127, 127, 127);

fn method_color(m: Method) -> RGBColor {
    match m {
        Method::Plain => PLAIN_COLOR,
        Method::Clae => CLAE_COLOR,
        Method::ClaeEps0 => CONTROL_COLOR,
    }
}

fn plot_err(path: &Path) -> impl Fn(String) -> DigitsError + '_ {
    move |message| DigitsError::Plot {
        path: path.to_path_buf(),
        message,
    }
}

/// Mean and std of test kNN-200 (in %) per epoch over the runs of (loss, method).
fn mean_curve(rep: &Replication, loss: LossKind, method: Method) -> Vec<(f64, MeanStd)> {
    let runs = runs_of(rep, loss, method);
    let epochs = runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
    (0..epochs)
        .map(|e| {
            let xs: Vec<f64> = runs.iter().map(|r| 100.0 * r.curve[e].knn200).collect();
            (r_epoch(&runs, e), MeanStd::of(&xs))
        })
        .collect()
}

fn r_epoch(runs: &[&RunRecord], e: usize) -> f64 {
    runs.first().map_or(e as f64, |r| r.curve[e].epoch as f64)
}

/// `learning_curves.svg`: one panel per loss; test kNN-200 per epoch, plain
/// and CLAE, mean (solid) and mean ± std (dashed) over seeds; raw-pixel
/// baseline in grey.
pub fn learning_curves_svg(rep: &Replication, path: &Path) -> Result<()> {
    let err = plot_err(path);
    let panels = rep.configs.len().max(1);
    let root = SVGBackend::new(path, (420 * panels as u32, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let areas = root.split_evenly((1, panels));
    let baseline = 100.0 * rep.baseline.knn200;
    for (cfg, area) in rep.configs.iter().zip(areas) {
        let curves: Vec<(Method, Vec<(f64, MeanStd)>)> = rep
            .options
            .methods
            .iter()
            .map(|&m| (m, mean_curve(rep, cfg.loss, m)))
            .collect();
        let all = curves
            .iter()
            .flat_map(|(_, c)| c.iter().map(|(_, m)| m.mean - m.std))
            .chain([baseline]);
        let lo = all.fold(100.0f64, f64::min);
        let y_lo = (lo - 2.0).floor().clamp(0.0, 100.0);
        let x_hi = (cfg.epochs as f64).max(1.0);
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("{}: test kNN-200 top-1 (%)", loss_title(cfg.loss)),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..x_hi, y_lo..100.0)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .max_light_lines(1)
            .x_desc("epoch")
            .y_desc("accuracy (%)")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, baseline), (x_hi, baseline)],
                BASELINE_COLOR.stroke_width(1),
            ))
            .map_err(|e| err(e.to_string()))?
            .label("raw pixels")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BASELINE_COLOR));
        for (method, curve) in &curves {
            let color = method_color(*method);
            chart
                .draw_series(LineSeries::new(
                    curve.iter().map(|(x, m)| (*x, m.mean)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(format!("{} (mean)", method.name()))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
            for sign in [-1.0, 1.0] {
                chart
                    .draw_series(DashedLineSeries::new(
                        curve.iter().map(move |(x, m)| (*x, m.mean + sign * m.std)),
                        4,
                        3,
                        color.mix(0.6).stroke_width(1),
                    ))
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// `final_accuracy.svg`: one panel per accuracy metric; for each (loss,
/// method) every seed as a dot, and the mean ± std as a bar; raw-pixel
/// baseline as a grey line.
pub fn final_accuracy_svg(rep: &Replication, path: &Path) -> Result<()> {
    let err = plot_err(path);
    let root = SVGBackend::new(path, (1500, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let areas = root.split_evenly((1, Metric::ALL.len()));
    let groups: Vec<(LossKind, Method)> = rep
        .configs
        .iter()
        .flat_map(|c| rep.options.methods.iter().map(|&m| (c.loss, m)))
        .collect();
    let labels: Vec<String> = groups
        .iter()
        .map(|(_, m)| {
            match m {
                Method::Plain => "plain",
                Method::Clae => "CLAE",
                Method::ClaeEps0 => "eps=0",
            }
            .to_string()
        })
        .collect();
    let per_loss = rep.options.methods.len().max(1);
    for (metric, area) in Metric::ALL.iter().zip(areas) {
        let baseline = 100.0
            * match metric {
                Metric::Knn200 => rep.baseline.knn200,
                Metric::Knn1 => rep.baseline.knn1,
                Metric::Probe => rep.baseline.probe,
            };
        let lo = rep
            .runs
            .iter()
            .map(|r| 100.0 * metric.of(r))
            .chain([baseline])
            .fold(100.0f64, f64::min);
        let y_lo = (lo - 1.0).floor().clamp(0.0, 100.0);
        let x_hi = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{} top-1 (%)", metric.name()), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d(-0.5..x_hi - 0.5, y_lo..100.0)
            .map_err(|e| err(e.to_string()))?;
        let label_of = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .x_labels(groups.len().max(1) * 2 + 1)
            .x_label_formatter(&label_of)
            .y_desc("accuracy (%)")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                [(-0.5, baseline), (x_hi - 0.5, baseline)],
                BASELINE_COLOR.stroke_width(1),
            ))
            .map_err(|e| err(e.to_string()))?
            .label("raw pixels")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BASELINE_COLOR));
        // Loss names above each group of methods, and separators between groups.
        let y_text = 100.0 - 0.02 * (100.0 - y_lo);
        for (i, cfg) in rep.configs.iter().enumerate() {
            let centre = (i * per_loss) as f64 + (per_loss as f64 - 1.0) / 2.0;
            chart
                .draw_series(std::iter::once(Text::new(
                    loss_title(cfg.loss).to_string(),
                    (centre - 0.25, y_text),
                    ("sans-serif", 14),
                )))
                .map_err(|e| err(e.to_string()))?;
            if i > 0 {
                let x = (i * per_loss) as f64 - 0.5;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        [(x, y_lo), (x, 100.0)],
                        BLACK.mix(0.3),
                    )))
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        for (g, &(loss, method)) in groups.iter().enumerate() {
            let color = method_color(method);
            let vals: Vec<f64> = runs_of(rep, loss, method)
                .iter()
                .map(|r| 100.0 * metric.of(r))
                .collect();
            let m = MeanStd::of(&vals);
            let x = g as f64;
            let n = vals.len().max(1) as f64;
            chart
                .draw_series(vals.iter().enumerate().map(|(i, &v)| {
                    let jitter = 0.25 * ((i as f64 + 0.5) / n - 0.5);
                    Circle::new((x + jitter, v), 3, color.filled())
                }))
                .map_err(|e| err(e.to_string()))?;
            if m.mean.is_finite() {
                let style = color.stroke_width(2);
                chart
                    .draw_series([
                        PathElement::new([(x - 0.3, m.mean), (x + 0.3, m.mean)], style),
                        PathElement::new([(x, m.mean - m.std), (x, m.mean + m.std)], style),
                        PathElement::new(
                            [(x - 0.1, m.mean - m.std), (x + 0.1, m.mean - m.std)],
                            style,
                        ),
                        PathElement::new(
                            [(x - 0.1, m.mean + m.std), (x + 0.1, m.mean + m.std)],
                            style,
                        ),
                    ])
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
