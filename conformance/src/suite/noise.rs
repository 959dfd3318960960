//! docs/SPEC.md §8's noise floor: `noise(T) = max_S max|T(S) − T(base)|`,
//! `T(base)` the reference at the pair's coarser precision on the case's
//! input and the samples `S` the same reference on (i) the batch's rows
//! reordered — reversed, rotated by one, two fixed pseudo-random shuffles (an
//! exact symmetry; per-image rows are put back before subtracting), (ii)
//! every entry multiplied by `1 ± ε`, `ε` the precision's machine epsilon,
//! sign pseudo-random, (iii) for pairs with `f32`, the reference in `f64` —
//! except where the side under test is the reference in `f32` itself, whose
//! distance from `f64` is what is measured.

use super::pair::Pair;
use crate::backend::{Backend, Precision, Reference};
use crate::metrics::nan_max;
use ndarray::{Array2, Axis};
use std::collections::HashMap;

/// How far beyond the reference's own measured rounding noise the side
/// under test may lie where that noise, not docs/SPEC.md §8's `tol · max|b|`,
/// sets the bound: the samples bound one algorithm's rounding, and another
/// correct one (libtorch's vectorised pairwise sums, its BatchNorm variance)
/// was seen at 12.5 times the reference `f32`'s error (depth 3, `N = 4`).
pub const NOISE_FACTOR: f64 = 100.0;

/// Rounding noise per named quantity (largest absolute difference).
pub type Noise = HashMap<String, f64>;

/// Named flat values of one evaluation, rows in the base order.
pub type Values = Vec<(String, Vec<f64>)>;

/// How a sample's inputs differ from the base's.
#[derive(Debug, Clone, PartialEq)]
pub enum Perturbation {
    /// The case's own inputs.
    None,
    /// The rows of every batch in this order (row `k` is image `order[k]`).
    Reordered(Vec<usize>),
    /// Every entry moved by one unit in the last place of the precision.
    Jittered(Precision),
}

impl Perturbation {
    /// `x` (a batch, one row per image) as this sample sees it.
    pub fn apply(&self, x: &Array2<f64>) -> Array2<f64> {
        match self {
            Perturbation::None => x.clone(),
            Perturbation::Reordered(order) => x.select(Axis(0), order),
            Perturbation::Jittered(p) => jitter(x, *p),
        }
    }

    /// A per-image result `y` of this sample put back in the base order.
    pub fn undo(&self, y: &Array2<f64>) -> Array2<f64> {
        match self {
            Perturbation::Reordered(order) => {
                let mut back = y.clone();
                for (k, &i) in order.iter().enumerate() {
                    back.row_mut(i).assign(&y.row(k));
                }
                back
            }
            _ => y.clone(),
        }
    }
}

/// Row orders under which everything compared is exactly symmetric:
/// reversed, rotated by one, and two fixed pseudo-random shuffles
/// (Fisher–Yates, xorshift).
pub fn orders(n: usize) -> Vec<Vec<usize>> {
    let mut orders: Vec<Vec<usize>> = vec![
        (0..n).rev().collect(),
        (0..n).map(|i| (i + 1) % n).collect(),
    ];
    for seed in [0x9E37_79B9_7F4A_7C15u64, 0xD1B5_4A32_D192_ED03] {
        let mut state = seed ^ n as u64;
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        orders.push(order);
    }
    orders
}

/// `x` with every entry moved by one unit in the last place of `precision`
/// (relative `2u`, pseudo-random sign). A backward-stable algorithm computes
/// the exact result of inputs perturbed this much, so how far the
/// reference's result moves is rounding noise two correct implementations
/// may differ by.
pub fn jitter(x: &Array2<f64>, precision: Precision) -> Array2<f64> {
    let ulp = match precision {
        Precision::F32 => f32::EPSILON as f64,
        Precision::F64 => f64::EPSILON,
    };
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    x.mapv(|v| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let sign = if state & 1 == 0 { 1.0 } else { -1.0 };
        v * (1.0 + sign * ulp)
    })
}

/// `noise(T)` for every quantity `eval` names, for `pair` on a case with
/// `n` images, and the base values: [`sample_at`] the pair's coarser
/// precision, with the `f64` sample unless the side under test is the
/// reference in `f32` itself.
pub fn sample<E>(pair: &Pair, n: usize, eval: E) -> Result<(Values, Noise), String>
where
    E: Fn(&dyn Backend, &Perturbation) -> crate::backend::Result<Values>,
{
    let test_is_reference_f32 = pair.test.name() == Reference::<f32>::new().name();
    sample_at(pair.coarser(), !test_is_reference_f32, n, eval)
}

/// `noise(T)` at `precision` for every quantity `eval` names, on a case
/// with `n` images, and the base values. `eval(backend, perturbation)` runs
/// the quantities on `backend` with its inputs perturbed (rows put back);
/// `Err` when the reference at the base precision fails. A sample the
/// reference cannot run is left out; the `f64` sample is taken for `f32`
/// when `with_f64`.
pub fn sample_at<E>(
    precision: Precision,
    with_f64: bool,
    n: usize,
    eval: E,
) -> Result<(Values, Noise), String>
where
    E: Fn(&dyn Backend, &Perturbation) -> crate::backend::Result<Values>,
{
    let base_backend: Box<dyn Backend> = match precision {
        Precision::F64 => Box::new(Reference::<f64>::new()),
        Precision::F32 => Box::new(Reference::<f32>::new()),
    };
    let base = eval(base_backend.as_ref(), &Perturbation::None)
        .map_err(|e| format!("the reference at {precision:?} failed: {e}"))?;
    let mut runs: Vec<Values> = Vec::new();
    for order in orders(n) {
        runs.extend(eval(base_backend.as_ref(), &Perturbation::Reordered(order)).ok());
    }
    runs.extend(eval(base_backend.as_ref(), &Perturbation::Jittered(precision)).ok());
    if precision == Precision::F32 && with_f64 {
        runs.extend(eval(&Reference::<f64>::new(), &Perturbation::None).ok());
    }
    let mut noise = Noise::new();
    for run in &runs {
        for ((name, x), (_, y)) in run.iter().zip(&base) {
            let d = x
                .iter()
                .zip(y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f64, nan_max);
            let e = noise.entry(name.clone()).or_insert(0.0);
            *e = nan_max(*e, d);
        }
    }
    Ok((base, noise))
}
