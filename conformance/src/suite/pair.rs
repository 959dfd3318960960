//! A backend pair (`test` measured against `reference`) and the one rule
//! the main suite compares with: docs/SPEC.md §8's per-tensor tolerance
//! with its noise floor for analytically zero tensors.

use super::noise::{Noise, NOISE_FACTOR};
use crate::backend::{Backend, Precision};
use crate::metrics::{record_bound, Tolerance};
use proptest::test_runner::TestCaseError;

/// Outcome of one property on one case.
pub type Outcome = Result<(), TestCaseError>;

/// Two backends and the tolerance between them.
pub struct Pair {
    /// The implementation under test.
    pub test: Box<dyn Backend>,
    /// The side errors are measured relative to (docs/SPEC.md §8's `b`).
    pub reference: Box<dyn Backend>,
    /// docs/SPEC.md §8's tolerance for these precisions.
    pub tol: Tolerance,
}

impl Pair {
    /// Pairs `test` with `reference` at docs/SPEC.md §8's tolerance for their precisions.
    pub fn new(test: Box<dyn Backend>, reference: Box<dyn Backend>) -> Self {
        let tol = Tolerance::between(test.precision(), reference.precision());
        Pair {
            test,
            reference,
            tol,
        }
    }

    /// The coarser precision of the two sides.
    pub fn coarser(&self) -> Precision {
        if self.involves_f32() {
            Precision::F32
        } else {
            Precision::F64
        }
    }

    /// Whether either side computes in `f32`.
    pub fn involves_f32(&self) -> bool {
        self.test.precision() == Precision::F32 || self.reference.precision() == Precision::F32
    }

    /// `"<test> vs <reference>"`.
    pub fn label(&self) -> String {
        format!("{} vs {}", self.test.name(), self.reference.name())
    }

    /// `f` on both sides, failing the case if either fails.
    pub fn both<T>(
        &self,
        f: impl Fn(&dyn Backend) -> crate::backend::Result<T>,
    ) -> Result<(T, T), TestCaseError> {
        let a = f(self.test.as_ref())
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", self.test.name())))?;
        let b = f(self.reference.as_ref())
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", self.reference.name())))?;
        Ok((a, b))
    }

    /// [`close`] recorded under this pair's label.
    pub fn close(
        &self,
        quantity: &str,
        a: &[f64],
        b: &[f64],
        tol: f64,
        noise: f64,
    ) -> Result<bool, TestCaseError> {
        close(&self.label(), quantity, a, b, tol, noise)
    }

    /// [`close_all`] recorded under this pair's label.
    pub fn close_all(
        &self,
        group: &str,
        a: &[(String, Vec<f64>)],
        b: &[(String, Vec<f64>)],
        tol: f64,
        noise: &Noise,
    ) -> Outcome {
        close_all(&self.label(), group, a, b, tol, noise)
    }
}

/// The error of `a` against `b` under docs/SPEC.md §8's bound
/// `max(tol · max|b|, NOISE_FACTOR · noise)`, on the scale the bound uses:
/// `max|a − b| / max(max|b|, NOISE_FACTOR · noise / tol)` (so the bound
/// holds entry by entry iff it is at most `tol`), and whether the noise set
/// the bound.
pub fn error(a: &[f64], b: &[f64], tol: f64, noise: f64) -> (f64, bool) {
    let max_b = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let by_noise = NOISE_FACTOR * noise > tol * max_b;
    let scale = max_b.max(NOISE_FACTOR * noise / tol);
    (crate::metrics::err_over(a, b, scale), by_noise)
}

/// The main suite's one rule, docs/SPEC.md §8: entry by entry
/// `|a − b| <= max(tol · max|b|, NOISE_FACTOR · noise)`, recorded under
/// `label` as [`error`] (the table counts the cases whose bound the noise
/// set). Returns whether the noise set it.
pub fn close(
    label: &str,
    quantity: &str,
    a: &[f64],
    b: &[f64],
    tol: f64,
    noise: f64,
) -> Result<bool, TestCaseError> {
    if a.len() != b.len() {
        return Err(TestCaseError::fail(format!("{quantity}: shapes differ")));
    }
    let (err, by_noise) = error(a, b, tol, noise);
    record_bound(label, quantity, err, by_noise);
    if err <= tol {
        Ok(by_noise)
    } else {
        Err(TestCaseError::fail(format!(
            "{quantity}: relative error {err:e} > {tol:e} (noise {noise:e})"
        )))
    }
}

/// [`close`] for every named quantity of `b` (same names, same order in
/// `a`), each with its own noise from `noise` (`0` if absent), recorded as
/// one row `group` (the worst tensor named on failure).
pub fn close_all(
    label: &str,
    group: &str,
    a: &[(String, Vec<f64>)],
    b: &[(String, Vec<f64>)],
    tol: f64,
    noise: &Noise,
) -> Outcome {
    let names = |v: &[(String, Vec<f64>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(a) != names(b) {
        return Err(TestCaseError::fail(format!(
            "{group}: tensor names differ: {:?} vs {:?}",
            names(a),
            names(b)
        )));
    }
    let mut worst = (0.0f64, String::new());
    let mut any_noise = false;
    for ((name, x), (_, y)) in a.iter().zip(b) {
        if x.len() != y.len() {
            return Err(TestCaseError::fail(format!("{group}: shape of {name}")));
        }
        let (e, by_noise) = error(x, y, tol, noise.get(name).copied().unwrap_or(0.0));
        any_noise |= by_noise;
        if e > worst.0 || e.is_nan() {
            worst = (e, name.clone());
        }
    }
    record_bound(label, group, worst.0, any_noise);
    if worst.0 <= tol {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{group}: relative error {:e} > {tol:e} (worst tensor {})",
            worst.0, worst.1
        )))
    }
}

/// A case the main suite's generator should not have let through: the
/// property met a condition [`super::conditioning::well_conditioned`] exists
/// to exclude. Fails the case loudly, naming the condition.
pub fn generator_let_through(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!(
        "the generator let through an ill-conditioned case ({what}): \
         its filter (suite::conditioning::well_conditioned) must reject it"
    ))
}
