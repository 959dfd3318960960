//! Input validation shared by every public entry point (docs/SPEC.md §7).

use crate::error::{ClaeError, Result};
use crate::real::Real;
use ndarray::{ArrayView, ArrayView2, Dimension};

/// Fails with [`ClaeError::NonFinite`] at the first NaN or infinity.
pub fn finite<F: Real, D: Dimension>(what: &str, a: ArrayView<'_, F, D>) -> Result<()> {
    if all_finite(a.view()) {
        return Ok(());
    }
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

/// Every entry `>= 0` (a running variance), or [`ClaeError::InvalidState`]
/// at the first negative one.
pub fn non_negative_entries<F: Real, D: Dimension>(
    what: &str,
    a: ArrayView<'_, F, D>,
) -> Result<()> {
    match a.iter().position(|v| *v < F::zero()) {
        None => Ok(()),
        Some(at) => Err(ClaeError::InvalidState {
            message: format!(
                "{what} has a negative entry {} at flat position {at}; a variance is >= 0",
                a.iter().nth(at).map_or(f64::NAN, |v| v.as_f64())
            ),
        }),
    }
}

/// A batch: `N >= 2` rows of `cols` finite values ([`batch_shape`], then
/// [`finite`]).
pub fn batch<F: Real>(what: &str, x: ArrayView2<'_, F>, cols: Option<usize>) -> Result<()> {
    batch_shape(what, x, cols)?;
    finite(what, x)
}

/// The shape of a batch: `cols` columns (when given), at least one, and
/// `N >= 2` rows. The values are not read.
pub fn batch_shape<F: Real>(what: &str, x: ArrayView2<'_, F>, cols: Option<usize>) -> Result<()> {
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
    Ok(())
}

/// Two views of the same batch: same shape, both valid batches
/// ([`pair_shapes`], then the values of each).
pub fn pair<F: Real>(
    (name_a, a): (&str, ArrayView2<'_, F>),
    (name_b, b): (&str, ArrayView2<'_, F>),
    cols: Option<usize>,
) -> Result<()> {
    pair_shapes((name_a, a), (name_b, b), cols)?;
    finite(name_a, a)?;
    finite(name_b, b)
}

/// The shapes of two views of the same batch: equal, and each a valid
/// [`batch_shape`]. The values are not read.
pub fn pair_shapes<F: Real>(
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
    batch_shape(name_a, a, cols)?;
    batch_shape(name_b, b, cols)
}

/// The domain of a scalar hyper-parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Finite and `>= 0` (`eps`, `alpha`, `lr`, weight decay, PGD `eta`).
    NonNegative,
    /// Finite and `> 0` (`tau`, Adam `eps`, `eps_bn`).
    Positive,
    /// Finite and in `[0, 1)` (SGD momentum, Adam betas).
    UnitInterval,
    /// Finite and in `[0, 1]` (BatchNorm momentum).
    ClosedUnit,
    /// Any finite value (pixel-range bounds).
    Finite,
}

impl Domain {
    fn contains<F: Real>(self, x: F) -> bool {
        x.is_finite()
            && match self {
                Domain::NonNegative => x >= F::zero(),
                Domain::Positive => x > F::zero(),
                Domain::UnitInterval => x >= F::zero() && x < F::one(),
                Domain::ClosedUnit => x >= F::zero() && x <= F::one(),
                Domain::Finite => true,
            }
    }

    fn describe(self) -> &'static str {
        match self {
            Domain::NonNegative => "finite and >= 0",
            Domain::Positive => "finite and > 0",
            Domain::UnitInterval => "finite and in [0, 1)",
            Domain::ClosedUnit => "finite and in [0, 1]",
            Domain::Finite => "finite",
        }
    }
}

/// The one place a hyper-parameter enters the element type.
///
/// Hyper-parameters are given as `f64` (as PyTorch takes Python floats) and
/// used as `F`. `x` must be in `domain` as given, and its value in `F` must
/// be too, and must not have rounded a non-zero value to zero: `1e-50` is a
/// valid Adam `eps` in `f64` but is `0` in `f32`, and `0.99999999` is a valid
/// momentum that rounds to `1` in `f32`. Returns the value the computation
/// uses.
///
/// ```
/// use clae_reference::check::{hyper, Domain};
/// assert_eq!(hyper::<f32>("lr", 0.5, Domain::NonNegative).unwrap(), 0.5);
/// let e = hyper::<f32>("Adam eps", 1e-50, Domain::Positive).unwrap_err();
/// assert!(e.to_string().contains("rounds to 0 in f32"));
/// assert!(hyper::<f64>("Adam eps", 1e-50, Domain::Positive).is_ok());
/// assert!(hyper::<f32>("beta2", 0.999999999, Domain::UnitInterval).is_err());
/// ```
pub fn hyper<F: Real>(name: &str, x: f64, domain: Domain) -> Result<F> {
    let bad = |expected: String| ClaeError::InvalidHyperParameter {
        name: name.to_string(),
        expected,
        value: x,
    };
    if !domain.contains(x) {
        return Err(bad(domain.describe().to_string()));
    }
    let v = F::c(x);
    if !v.is_finite() {
        return Err(bad(format!(
            "{} in {} (it overflows to {v})",
            domain.describe(),
            F::NAME
        )));
    }
    if x != 0.0 && v == F::zero() {
        return Err(bad(format!(
            "{} in {} (it rounds to 0 in {})",
            domain.describe(),
            F::NAME,
            F::NAME
        )));
    }
    if !domain.contains(v) {
        return Err(bad(format!(
            "{} in {} (it rounds to {v})",
            domain.describe(),
            F::NAME
        )));
    }
    Ok(v)
}

/// `tau` finite and `> 0` in `F` ([`hyper`], with its own error kind).
///
/// ```
/// use clae_reference::check::tau;
/// assert_eq!(tau::<f64>(0.1).unwrap(), 0.1);
/// assert!(tau::<f64>(0.0).is_err() && tau::<f32>(1e-60).is_err());
/// ```
pub fn tau<F: Real>(tau: f64) -> Result<F> {
    hyper::<F>("tau", tau, Domain::Positive)
        .map_err(|_| ClaeError::InvalidTemperature { value: tau })
}

/// `max |a|` over all entries (0 for an empty array), or
/// [`ClaeError::NonFinite`] at the first NaN or infinity. One pass: the
/// finiteness check and the magnitude the optimizer's overflow guard needs.
///
/// ```
/// use ndarray::array;
/// use clae_reference::check::max_abs;
/// assert_eq!(max_abs("x", array![1.0, -3.0].view()).unwrap(), 3.0);
/// assert!(max_abs("x", array![1.0, f64::NAN].view()).is_err());
/// ```
pub fn max_abs<F: Real, D: Dimension>(what: &str, a: ArrayView<'_, F, D>) -> Result<f64> {
    let (m, finite_all) = magnitude(a.view());
    if finite_all {
        Ok(m.as_f64())
    } else {
        finite(what, a).map(|_| f64::NAN)
    }
}

/// Whether every entry of `a` is finite: `a.iter().all(|v| v.is_finite())`,
/// in [`max_abs`]'s vectorised, parallel pass.
pub(crate) fn all_finite<F: Real, D: Dimension>(a: ArrayView<'_, F, D>) -> bool {
    magnitude(a).1
}

/// `(max |v|, every v finite)` of an array.
fn magnitude<F: Real, D: Dimension>(a: ArrayView<'_, F, D>) -> (F, bool) {
    match a.as_slice_memory_order() {
        // large contiguous arrays (parameters, gradients): in parallel
        Some(slice) if slice.len() >= 1 << 16 => {
            use ndarray::parallel::prelude::*;
            ndarray::ArrayView1::from(slice)
                .axis_chunks_iter(ndarray::Axis(0), 1 << 14)
                .into_par_iter()
                .map(|c| max_abs_finite(c.as_slice().unwrap_or(&[])))
                .reduce(
                    || (F::zero(), true),
                    |(m1, ok1), (m2, ok2)| (m1.max(m2), ok1 && ok2),
                )
        }
        Some(slice) => max_abs_finite(slice),
        None => a.iter().fold((F::zero(), true), |(m, ok), &v| {
            (m.max(v.abs()), ok && v.abs() <= F::max_value())
        }),
    }
}

/// `(max |v|, every v finite)` of a slice: the fold
/// `m = max(m, |v|); ok = ok && |v| <= MAX`, written as 16 independent
/// lanes so that the compiler vectorises it. Non-finite values are found by
/// `Σ 0·v`, which is NaN exactly when some `v` is NaN or infinite (the max
/// of the lanes is then not used).
fn max_abs_finite<F: Real>(s: &[F]) -> (F, bool) {
    const LANES: usize = 16;
    let mut m = [F::zero(); LANES];
    let mut z = [F::zero(); LANES];
    let chunks = s.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let a = c[l].abs();
            m[l] = if a > m[l] { a } else { m[l] };
            z[l] += c[l] * F::zero();
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        let a = v.abs();
        m[l] = if a > m[l] { a } else { m[l] };
        z[l] += v * F::zero();
    }
    let max = m.iter().fold(F::zero(), |x, &y| if y > x { y } else { x });
    (max, z.iter().all(|v| *v == F::zero()))
}

/// The number of elements of a tensor of shape `dims`, checked so that the
/// tensor can be addressed: no overflow, and at most `isize::MAX` bytes of
/// `f64` (what `ndarray` and libtorch allocate through).
///
/// ```
/// use clae_reference::check::elements;
/// assert_eq!(elements("W", &[3, 4]).unwrap(), 12);
/// assert!(elements("W", &[usize::MAX, 2]).is_err());
/// ```
pub fn elements(what: &str, dims: &[usize]) -> Result<usize> {
    let limit = isize::MAX as usize / std::mem::size_of::<f64>();
    let mut n: usize = 1;
    for &d in dims {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= limit)
            .ok_or_else(|| ClaeError::TooLarge {
                what: what.to_string(),
                detail: format!(
                    "shape {dims:?} has more elements than can be addressed (at most {limit})"
                ),
            })?;
    }
    Ok(n)
}

/// Whether the system would give `len` values of `F` at once: a
/// reservation made and released before anything is built, so that a
/// structure too large for this machine is [`ClaeError::TooLarge`] rather
/// than an abort halfway through building it.
pub fn allocatable<F>(what: &str, len: usize) -> Result<()> {
    let bytes = len
        .checked_mul(std::mem::size_of::<F>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| ClaeError::TooLarge {
            what: what.to_string(),
            detail: format!("{len} elements cannot be addressed"),
        })?;
    let mut probe: Vec<u8> = Vec::new();
    probe
        .try_reserve_exact(bytes)
        .map_err(|e| ClaeError::TooLarge {
            what: what.to_string(),
            detail: format!("allocating {len} elements ({bytes} bytes) failed ({e})"),
        })
}

/// A vector of `len` values from `fill`, allocated fallibly: an allocation
/// the system refuses is [`ClaeError::TooLarge`], not an abort.
pub(crate) fn try_filled<F>(what: &str, len: usize, mut fill: impl FnMut() -> F) -> Result<Vec<F>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|e| ClaeError::TooLarge {
        what: what.to_string(),
        detail: format!("allocating {len} elements failed ({e})"),
    })?;
    v.extend(std::iter::repeat_with(&mut fill).take(len));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    /// The plain fold `max_abs_finite` stands for.
    fn naive(s: &[f32]) -> (f32, bool) {
        s.iter().fold((0.0, true), |(m, ok), &v| {
            (if v.abs() > m { v.abs() } else { m }, ok && v.is_finite())
        })
    }

    #[test]
    fn the_lane_fold_is_the_plain_fold() {
        let mut rng = crate::rng::Rng::new(3);
        for len in [0, 1, 15, 16, 17, 100, 1000, (1 << 16) + 5] {
            let base: Vec<f32> = (0..len).map(|_| (rng.normal() * 1e3) as f32).collect();
            let specials = [
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::MAX,
                -0.0,
                1e-45,
            ];
            for (k, &special) in specials.iter().enumerate() {
                let mut s = base.clone();
                if len > 0 {
                    let at = (k * 7919 + 3) % len;
                    s[at] = special;
                }
                let (m, ok) = max_abs_finite(&s);
                let (m0, ok0) = naive(&s);
                assert_eq!(ok, ok0, "len {len}, {special}");
                if ok {
                    assert_eq!(m, m0, "len {len}, {special}");
                    let whole = max_abs("x", Array1::from(s.clone()).view()).unwrap();
                    assert_eq!(whole, m0 as f64);
                } else {
                    assert!(max_abs("x", Array1::from(s).view()).is_err());
                }
            }
        }
    }
}
