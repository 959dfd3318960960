//! Diagnostics of an embedding batch: its singular values and effective
//! rank (through LAPACK's SVD, via `ndarray-linalg`), and the alignment and
//! uniformity of Wang & Isola (ICML 2020).
//!
//! All computed in `f64` whatever the element type.

use crate::check;
use crate::error::{ClaeError, Result};
use crate::real::Real;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::SVD;

/// Singular values of `z` (`N x d`), largest first, `min(N, d)` of them.
///
/// ```
/// use ndarray::array;
/// use clae_reference::diagnostics::singular_values;
/// let s = singular_values(array![[3.0, 0.0], [0.0, 4.0]].view()).unwrap();
/// assert!((s[0] - 4.0).abs() < 1e-12 && (s[1] - 3.0).abs() < 1e-12);
/// ```
pub fn singular_values<F: Real>(z: ArrayView2<'_, F>) -> Result<Array1<f64>> {
    if z.nrows() == 0 || z.ncols() == 0 {
        return Err(ClaeError::ZeroDimension {
            what: "rows and columns of the embedding batch".into(),
        });
    }
    check::finite("embedding batch", z)?;
    let z64: Array2<f64> = z.mapv(|v| v.as_f64());
    let (_, s, _) = z64.svd(false, false).map_err(|e| ClaeError::InvalidState {
        message: format!("LAPACK SVD failed: {e}"),
    })?;
    Ok(s)
}

/// Effective rank (Roy & Vetterli 2007): `exp(H(p))` with
/// `p_k = σ_k / Σ σ`, the entropy of the normalised singular values.
/// Between 1 (rank one) and `min(N, d)` (all singular values equal); 0 for
/// an all-zero batch.
///
/// ```
/// use ndarray::Array2;
/// use clae_reference::diagnostics::effective_rank;
/// let eye = Array2::<f64>::eye(5);
/// assert!((effective_rank(eye.view()).unwrap() - 5.0).abs() < 1e-12);
/// ```
pub fn effective_rank<F: Real>(z: ArrayView2<'_, F>) -> Result<f64> {
    let s = singular_values(z)?;
    let total: f64 = s.sum();
    if total == 0.0 {
        return Ok(0.0);
    }
    let entropy: f64 = s
        .iter()
        .map(|&v| v / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    Ok(entropy.exp())
}

/// Alignment `E ‖z_p − z_q‖₂^α` over positive pairs (Wang & Isola use `α = 2`).
/// Shapes: `z_p, z_q: N x d`. Lower is better.
///
/// ```
/// use ndarray::array;
/// use clae_reference::diagnostics::alignment;
/// let a = alignment(array![[1.0, 0.0]].view(), array![[0.0, 1.0]].view(), 2.0).unwrap();
/// assert!((a - 2.0).abs() < 1e-12);
/// ```
pub fn alignment<F: Real>(
    z_p: ArrayView2<'_, F>,
    z_q: ArrayView2<'_, F>,
    alpha: f64,
) -> Result<f64> {
    if z_p.dim() != z_q.dim() {
        return Err(ClaeError::ShapeMismatch {
            what: "second embedding batch".into(),
            expected: format!("{:?}", z_p.dim()),
            actual: format!("{:?}", z_q.dim()),
        });
    }
    if z_p.nrows() == 0 {
        return Err(ClaeError::ZeroDimension {
            what: "number of pairs".into(),
        });
    }
    check::hyper::<f64>("alignment exponent", alpha, check::Domain::Positive)?;
    check::finite("z_p", z_p)?;
    check::finite("z_q", z_q)?;
    let d = (&z_p.mapv(|v| v.as_f64()) - &z_q.mapv(|v| v.as_f64())).mapv(|v| v * v);
    let per_pair = d.sum_axis(Axis(1)).mapv(|s| s.sqrt().powf(alpha));
    let a = per_pair.mean().unwrap_or(0.0);
    if !a.is_finite() {
        return Err(overflow("the alignment exponent", "the alignment"));
    }
    Ok(a)
}

/// Uniformity `log E_{i<j} exp(−t ‖z_i − z_j‖²)` over distinct pairs
/// (Wang & Isola use `t = 2`). Needs `N >= 2`. Lower is more uniform.
/// Computed with the log-sum-exp trick; [`ClaeError::Overflow`] when `t` is
/// so large that the result is below `f64`'s range.
///
/// ```
/// use ndarray::array;
/// use clae_reference::diagnostics::uniformity;
/// // two antipodal points: one pair at squared distance 4
/// let u = uniformity(array![[1.0, 0.0], [-1.0, 0.0]].view(), 2.0).unwrap();
/// assert!((u + 8.0).abs() < 1e-12);
/// ```
pub fn uniformity<F: Real>(z: ArrayView2<'_, F>, t: f64) -> Result<f64> {
    check::batch("embedding batch", z, None)?;
    check::hyper::<f64>("uniformity temperature t", t, check::Domain::Positive)?;
    let z64: Array2<f64> = z.mapv(|v| v.as_f64());
    let n = z64.nrows();
    let sq_dist = |i: usize, j: usize| -> f64 {
        z64.row(i)
            .iter()
            .zip(z64.row(j))
            .map(|(a, b)| (a - b) * (a - b))
            .sum()
    };
    let pairs = || (0..n).flat_map(move |i| ((i + 1)..n).map(move |j| (i, j)));
    // log-sum-exp, streamed over the pairs (two passes, nothing kept): every
    // exponent −t d² is <= 0; the largest one is subtracted. When even it is
    // −inf (t d² overflows for every pair) the uniformity is a finite but
    // unrepresentably negative number.
    let m = pairs()
        .map(|(i, j)| -t * sq_dist(i, j))
        .fold(f64::NEG_INFINITY, f64::max);
    let count = (n as f64) * (n as f64 - 1.0) / 2.0;
    let mean = pairs()
        .map(|(i, j)| (-t * sq_dist(i, j) - m).exp())
        .sum::<f64>()
        / count;
    let u = m + mean.ln();
    if !u.is_finite() {
        return Err(overflow("the uniformity temperature t", "the uniformity"));
    }
    Ok(u)
}

fn overflow(cause: &str, quantity: &str) -> ClaeError {
    ClaeError::Overflow {
        cause: cause.to_string(),
        quantity: quantity.to_string(),
        precision: "f64".to_string(),
    }
}
