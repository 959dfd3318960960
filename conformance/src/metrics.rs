//! docs/SPEC.md §8's error measures, the sign rule, and the table of largest errors
//! a run prints at its end.

use crate::backend::Precision;
use ndarray::{Array2, Zip};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// `err(a, b) = max|a − b| / max|b|` over all entries (`b` the reference
/// side). Where `max|b| = 0`, `a` must be exactly zero: the error is then 0
/// or infinite. Shapes must agree (`None` otherwise).
///
/// ```
/// use clae_conformance::metrics::rel_err;
/// assert!((rel_err(&[1.0, 2.1], &[1.0, 2.0]).unwrap() - 0.05).abs() < 1e-12);
/// assert_eq!(rel_err(&[0.0], &[0.0]), Some(0.0));
/// assert_eq!(rel_err(&[1e-30], &[0.0]), Some(f64::INFINITY));
/// assert_eq!(rel_err(&[f64::NAN, 1.0], &[1.0, 1.0]), Some(f64::INFINITY));
/// ```
pub fn rel_err(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    Some(err_over(a, b, scale))
}

/// `max|a − b| / scale`, with docs/SPEC.md §8's rule where `scale = 0` (`a` must
/// then equal `b`: the error is 0 or infinite); a NaN anywhere gives an
/// infinite error. [`rel_err`] is this with `scale = max|b|`; the main
/// suite passes `max(max|b|, 100 · noise / tol)`, docs/SPEC.md §8's noise
/// floor.
///
/// ```
/// use clae_conformance::metrics::err_over;
/// assert_eq!(err_over(&[1.0, 2.5], &[1.0, 2.0], 10.0), 0.05);
/// assert_eq!(err_over(&[1e-30], &[0.0], 0.0), f64::INFINITY);
/// ```
pub fn err_over<'a>(
    a: impl IntoIterator<Item = &'a f64>,
    b: impl IntoIterator<Item = &'a f64>,
    scale: f64,
) -> f64 {
    let diff = a
        .into_iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f64, nan_max);
    if diff.is_nan() {
        f64::INFINITY
    } else if scale == 0.0 {
        if diff == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        diff / scale
    }
}

/// [`rel_err`] of two matrices (infinite if their shapes differ).
pub fn rel_err2(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    if a.dim() != b.dim() {
        return f64::INFINITY;
    }
    rel_err(
        &a.iter().copied().collect::<Vec<_>>(),
        &b.iter().copied().collect::<Vec<_>>(),
    )
    .unwrap_or(f64::INFINITY)
}

/// `max` that keeps a NaN (so a NaN anywhere makes the error NaN, never 0).
pub fn nan_max(m: f64, x: f64) -> f64 {
    if x.is_nan() || x > m {
        x
    } else {
        m
    }
}

/// docs/SPEC.md §8's tolerances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Values and gradients after one step.
    pub one_step: f64,
    /// Multi-step trajectories (`None`: not compared at this precision).
    pub trajectory: Option<f64>,
    /// Relative threshold below which a sign of `g` is excused.
    pub sign_threshold: f64,
}

impl Tolerance {
    /// The tolerance for comparing a backend of precision `test` against a
    /// reference of precision `reference` (CUDA f32 behaves as f32).
    pub fn between(test: Precision, reference: Precision) -> Self {
        match (test, reference) {
            (Precision::F64, Precision::F64) => Tolerance {
                one_step: 1e-10,
                trajectory: Some(1e-8),
                sign_threshold: 1e-6,
            },
            _ => Tolerance {
                one_step: 1e-4,
                trajectory: None,
                sign_threshold: 1e-3,
            },
        }
    }
}

/// Outcome of comparing two sign patterns under docs/SPEC.md §8's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignReport {
    /// Entries compared.
    pub total: usize,
    /// Entries with `|g_ref| <= threshold · max|g_ref|`, where either sign is accepted.
    pub below: usize,
    /// Entries below the threshold whose signs do differ: the excuse was used.
    pub excused: usize,
    /// Entries above the threshold whose signs differ (must be 0).
    pub mismatched: usize,
}

impl SignReport {
    /// Fraction of entries whose sign difference was excused.
    pub fn excused_fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.excused as f64 / self.total as f64
        }
    }
}

/// `torch.sign`.
pub fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Entries where `|g_ref| <= threshold · max|g_ref|`: where docs/SPEC.md §8 accepts
/// either sign.
pub fn below_threshold(g_ref: &Array2<f64>, threshold: f64) -> Array2<bool> {
    let max = g_ref.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    g_ref.mapv(|v| v.abs() <= threshold * max)
}

/// Compares `sign(g_test)` with `sign(g_ref)` where `|g_ref| > threshold · max|g_ref|`.
///
/// ```
/// use ndarray::array;
/// use clae_conformance::metrics::compare_signs;
/// let r = compare_signs(&array![[1.0, -1e-9, 2.0]], &array![[3.0, 1e-9, 1.0]], 1e-6);
/// assert_eq!((r.total, r.below, r.excused, r.mismatched), (3, 1, 1, 0));
/// ```
pub fn compare_signs(g_test: &Array2<f64>, g_ref: &Array2<f64>, threshold: f64) -> SignReport {
    let below = below_threshold(g_ref, threshold);
    let mut r = SignReport {
        total: g_ref.len(),
        ..Default::default()
    };
    Zip::from(g_test)
        .and(g_ref)
        .and(&below)
        .for_each(|&t, &f, &b| {
            let differ = sign(t) != sign(f);
            if b {
                r.below += 1;
                r.excused += differ as usize;
            } else {
                r.mismatched += differ as usize;
            }
        });
    r
}

/// Compares two adversarial views: equal to `tol` (relative to `max|ref|`)
/// except where the sign was excused, where they may differ by `2 eps`.
/// Returns the largest error over non-excused entries, relative to the
/// view's scale, and the number of entries that broke either bound.
pub fn compare_views(
    q_test: &Array2<f64>,
    q_ref: &Array2<f64>,
    excused: &Array2<bool>,
    eps: f64,
    tol: f64,
) -> (f64, usize) {
    let scale = q_ref
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let mut worst = 0.0f64;
    let mut bad = 0;
    Zip::from(q_test)
        .and(q_ref)
        .and(excused)
        .for_each(|&t, &r, &ex| {
            let diff = (t - r).abs();
            if ex {
                if diff > 2.0 * eps + tol * scale {
                    bad += 1;
                }
            } else {
                worst = worst.max(diff / scale);
                if diff > tol * scale || diff.is_nan() {
                    bad += 1;
                }
            }
        });
    (worst, bad)
}

/// Largest error and case count per (backend pair, quantity).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stat {
    /// Cases compared.
    pub cases: usize,
    /// Largest error seen (relative error in the main suite, error over its
    /// bound in the corner suite).
    pub max_err: f64,
    /// Cases whose bound the rounding noise set (docs/SPEC.md §8's floor).
    pub by_noise: usize,
    /// Sign entries excused (for sign-rule quantities).
    pub excused: usize,
    /// Sign entries compared (for sign-rule quantities).
    pub compared: usize,
}

static TABLE: Mutex<BTreeMap<(String, String), Stat>> = Mutex::new(BTreeMap::new());

fn with_stat(pair: &str, quantity: &str, f: impl FnOnce(&mut Stat)) {
    let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    f(t.entry((pair.to_string(), quantity.to_string()))
        .or_default());
}

fn raise(s: &mut Stat, err: f64) {
    s.cases += 1;
    if err > s.max_err || err.is_nan() {
        s.max_err = err;
    }
}

/// Records one comparison.
pub fn record(pair: &str, quantity: &str, err: f64) {
    with_stat(pair, quantity, |s| raise(s, err));
}

/// Records one comparison and whether its bound was set by rounding noise.
pub fn record_bound(pair: &str, quantity: &str, err: f64, by_noise: bool) {
    with_stat(pair, quantity, |s| {
        raise(s, err);
        s.by_noise += by_noise as usize;
    });
}

/// Records a sign comparison's excused and compared counts (the error: the
/// share of entries whose signs differ above the threshold).
pub fn record_signs(pair: &str, quantity: &str, r: SignReport) {
    let frac = if r.total == 0 {
        0.0
    } else {
        r.mismatched as f64 / r.total as f64
    };
    with_stat(pair, quantity, |s| {
        raise(s, frac);
        s.excused += r.excused;
        s.compared += r.total;
    });
}

/// The table so far, as Markdown; `value` names the error column.
pub fn table(value: &str) -> String {
    let t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = format!(
        "| backend pair | quantity | cases | {value} | bound set by noise | excused signs |\n|---|---|---:|---:|---:|---:|\n"
    );
    for ((pair, q), s) in t.iter() {
        let excused = if s.compared > 0 {
            format!(
                "{} / {} ({:.3}%)",
                s.excused,
                s.compared,
                100.0 * s.excused as f64 / s.compared as f64
            )
        } else {
            String::new()
        };
        let by_noise = if s.by_noise > 0 {
            s.by_noise.to_string()
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {pair} | {q} | {} | {:.2e} | {by_noise} | {excused} |\n",
            s.cases, s.max_err
        ));
    }
    out
}
