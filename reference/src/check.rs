//! Input validation shared by every public entry point (SPEC 7).

use crate::error::{ClaeError, Result};
use crate::real::Real;
use ndarray::{ArrayView, ArrayView2, Dimension};

/// Fails with [`ClaeError::NonFinite`] at the first NaN or infinity.
pub fn finite<F: Real, D: Dimension>(what: &str, a: ArrayView<'_, F, D>) -> Result<()> {
    // `iter()` walks in logical row-major order, so the flat position can be
    // turned back into a multi-index with the shape.
    if let Some((flat, v)) = a.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let mut index = vec![0; a.ndim()];
        let mut rest = flat;
        for (k, &len) in a.shape().iter().enumerate().rev() {
            index[k] = rest % len;
            rest /= len;
        }
        return Err(ClaeError::NonFinite {
            what: what.to_string(),
            index,
            value: v.as_f64(),
        });
    }
    Ok(())
}

/// A batch: `N >= 2` rows of `cols` finite values.
pub fn batch<F: Real>(what: &str, x: ArrayView2<'_, F>, cols: Option<usize>) -> Result<()> {
    let (n, c) = x.dim();
    if let Some(want) = cols {
        if c != want {
            return Err(ClaeError::ShapeMismatch {
                what: what.to_string(),
                expected: format!("N x {want}"),
                actual: format!("{n} x {c}"),
            });
        }
    }
    if c == 0 {
        return Err(ClaeError::ZeroDimension {
            what: format!("number of columns of {what}"),
        });
    }
    if n < 2 {
        return Err(ClaeError::BatchTooSmall {
            what: what.to_string(),
            n,
        });
    }
    finite(what, x)
}

/// Two views of the same batch: same shape, both valid batches.
pub fn pair<F: Real>(
    (name_a, a): (&str, ArrayView2<'_, F>),
    (name_b, b): (&str, ArrayView2<'_, F>),
    cols: Option<usize>,
) -> Result<()> {
    if a.dim() != b.dim() {
        return Err(ClaeError::ShapeMismatch {
            what: format!("{name_b} (must match {name_a})"),
            expected: format!("{} x {}", a.nrows(), a.ncols()),
            actual: format!("{} x {}", b.nrows(), b.ncols()),
        });
    }
    batch(name_a, a, cols)?;
    batch(name_b, b, cols)
}

/// `tau` finite and `> 0`.
pub fn tau<F: Real>(tau: F) -> Result<()> {
    if tau.is_finite() && tau > F::zero() {
        Ok(())
    } else {
        Err(ClaeError::InvalidTemperature {
            value: tau.as_f64(),
        })
    }
}

/// `x` finite and `>= 0` (eps, alpha, lr, weight decay, PGD eta, ...).
pub fn non_negative<F: Real>(name: &str, x: F) -> Result<()> {
    if x.is_finite() && x >= F::zero() {
        Ok(())
    } else {
        Err(ClaeError::InvalidHyperParameter {
            name: name.to_string(),
            expected: "finite and >= 0".to_string(),
            value: x.as_f64(),
        })
    }
}

/// `x` finite and in `[0, 1)` (momenta, Adam betas).
pub fn unit_interval<F: Real>(name: &str, x: F) -> Result<()> {
    if x.is_finite() && x >= F::zero() && x < F::one() {
        Ok(())
    } else {
        Err(ClaeError::InvalidHyperParameter {
            name: name.to_string(),
            expected: "finite and in [0, 1)".to_string(),
            value: x.as_f64(),
        })
    }
}

/// `x` finite and `> 0` (Adam eps, BatchNorm eps).
pub fn positive<F: Real>(name: &str, x: F) -> Result<()> {
    if x.is_finite() && x > F::zero() {
        Ok(())
    } else {
        Err(ClaeError::InvalidHyperParameter {
            name: name.to_string(),
            expected: "finite and > 0".to_string(),
            value: x.as_f64(),
        })
    }
}
