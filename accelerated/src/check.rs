//! Input validation on tensors (docs/SPEC.md §7), delegating every rule that
//! the reference states to the reference's own validators
//! ([`clae_reference::check`]), so both backends report the same error for
//! the same input; and the [`Health`] of a computation — the checks that
//! its results are representable, read with one device synchronisation.
//!
//! Shape rules are checked by handing the reference validator a zero-cost
//! stand-in with the tensor's shape (a broadcast view of a single `0.0`),
//! finiteness by reductions on the tensor's own device. Hyper-parameters
//! are checked in the encoder's element type with the reference's
//! [`clae_reference::check::hyper`] ([`for_precision!`]).

use crate::device::Precision;
use crate::error::{Error, Result};
use clae_reference::{check, ClaeError};
use ndarray::Array2;
use tch::{Kind, Tensor};

/// Runs `$body` with the type alias `$t` set to `f32` or `f64` as the
/// precision `$p` says: how a reference validator generic over the element
/// type is applied to a tensor computation whose type is known at run time.
macro_rules! for_precision {
    ($p:expr, $t:ident => $body:expr) => {
        match $p {
            $crate::device::Precision::F32 => {
                #[allow(dead_code)]
                type $t = f32;
                $body
            }
            $crate::device::Precision::F64 => {
                #[allow(dead_code)]
                type $t = f64;
                $body
            }
        }
    };
}
pub(crate) use for_precision;

/// What a computation found about the representability of its own results:
/// one flag per check, each a 0-d tensor on the computation's device that is
/// finite when the check passed. [`Health::check`] reads them all with one
/// synchronisation; the first that failed becomes a
/// [`ClaeError::Overflow`] naming its cause and quantity.
///
/// The flags cost a reduction each and no synchronisation until the end, so
/// a training step pays for one transfer of a few numbers.
#[derive(Debug)]
pub struct Health {
    precision: Precision,
    cause: String,
    flags: Vec<(String, String, Tensor)>,
}

impl Health {
    /// No flags yet; overflow errors will say `precision`.
    pub(crate) fn new(precision: Precision) -> Self {
        Health {
            precision,
            cause: String::new(),
            flags: Vec::new(),
        }
    }

    /// The input the flags pushed from now on are blamed on (`P`, `Q`, ...).
    pub(crate) fn blame(&mut self, cause: &str) {
        self.cause = cause.to_string();
    }

    /// A flag that is finite exactly when `quantity` is representable.
    pub(crate) fn push(&mut self, quantity: impl Into<String>, flag: Tensor) {
        self.flags.push((self.cause.clone(), quantity.into(), flag));
    }

    /// A flag for "every entry of `t` is finite": `max |t|` (NaN and inf
    /// propagate through it).
    pub(crate) fn push_finite(&mut self, quantity: impl Into<String>, t: &Tensor) -> Result<()> {
        let flag = if t.numel() == 0 {
            Tensor::f_zeros([], (Kind::Double, t.device()))?
        } else {
            t.f_detach()?.f_abs()?.f_max()?.f_to_kind(Kind::Double)?
        };
        self.push(quantity, flag);
        Ok(())
    }

    /// Reads every flag (one synchronisation) and fails at the first that is
    /// not finite.
    pub(crate) fn check(&self) -> Result<()> {
        if self.flags.is_empty() {
            return Ok(());
        }
        let flags: Vec<Tensor> = self
            .flags
            .iter()
            .map(|(_, _, f)| f.f_to_kind(Kind::Double))
            .collect::<std::result::Result<_, _>>()?;
        let values =
            Vec::<f64>::try_from(&Tensor::f_stack(&flags, 0)?.f_to_device(tch::Device::Cpu)?)?;
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => {
                let (cause, quantity, _) = &self.flags[i];
                Err(ClaeError::Overflow {
                    cause: cause.clone(),
                    quantity: quantity.clone(),
                    precision: self.precision.name().to_string(),
                }
                .into())
            }
        }
    }
}

/// `max |t|` of every tensor, read with one synchronisation (NaN or inf for
/// a tensor with a non-finite entry; 0 for an empty one). The exact
/// magnitudes the optimizer's overflow guard reads
/// ([`clae_reference::optim::OptimizerConfig::update_bound`]).
pub(crate) fn magnitudes(ts: &[&Tensor]) -> Result<Vec<f64>> {
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let maxima = ts
        .iter()
        .map(|t| -> Result<Tensor> {
            let t = t.f_detach()?;
            if t.numel() == 0 {
                return Ok(Tensor::f_zeros([], (Kind::Double, t.device()))?);
            }
            Ok(t.f_abs()?.f_max()?.f_to_kind(Kind::Double)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Vec::<f64>::try_from(
        &Tensor::f_stack(&maxima, 0)?.f_to_device(tch::Device::Cpu)?,
    )?)
}

/// `"2 x 3 x 32 x 32"`.
pub(crate) fn shape_string(dims: &[i64]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" x ")
}

fn as_bool(t: &Tensor) -> Result<bool> {
    Ok(t.f_to_kind(Kind::Int64)?.f_int64_value(&[])? != 0)
}

/// Fails with [`ClaeError::NonFinite`] at the first NaN or infinity of `t`
/// (row-major order), as [`check::finite`] does.
pub(crate) fn finite(what: &str, t: &Tensor) -> Result<()> {
    if as_bool(&t.f_isfinite()?.f_all()?)? {
        return Ok(());
    }
    locate_non_finite(what, t)
}

fn locate_non_finite(what: &str, t: &Tensor) -> Result<()> {
    let flat = t.f_reshape([-1])?;
    let bad = flat.f_isfinite()?.f_logical_not()?.f_nonzero()?;
    if bad.size().first().copied().unwrap_or(0) == 0 {
        return Ok(());
    }
    let k = bad.f_int64_value(&[0, 0])?;
    let value = flat.f_double_value(&[k])?;
    let shape = t.size();
    let mut index = vec![0usize; shape.len()];
    let mut rest = k;
    for (i, &len) in shape.iter().enumerate().rev() {
        index[i] = (rest % len) as usize;
        rest /= len;
    }
    Err(ClaeError::NonFinite {
        what: what.to_string(),
        index,
        value,
    }
    .into())
}

/// Every tensor finite, with one device synchronisation when they are.
pub(crate) fn all_finite(named: &[(&str, &Tensor)]) -> Result<()> {
    if named.is_empty() {
        return Ok(());
    }
    let flags = named
        .iter()
        .map(|(_, t)| t.f_isfinite()?.f_all())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if as_bool(&Tensor::f_stack(&flags, 0)?.f_all()?)? {
        return Ok(());
    }
    for (what, t) in named {
        finite(what, t)?;
    }
    Ok(())
}

/// Runs [`check::batch`] on the shape `n x c` (values are checked separately).
fn batch_shape(what: &str, n: i64, c: i64, cols: Option<usize>) -> Result<()> {
    // A zero-cost stand-in with the tensor's shape: one 0.0 broadcast to
    // n x c. The validator only reads the shape (and finds 0.0 finite).
    let one = Array2::<f64>::zeros((1, 1));
    let view = one
        .broadcast((n.max(0) as usize, c.max(0) as usize))
        .expect("a 1 x 1 array broadcasts to every 2-D shape");
    check::batch(what, view, cols).map_err(Error::from)
}

/// A batch `x` of `N >= 2` images, each of shape `per_image` when given
/// (`[D_in]` for the MLP, `[C, H, W]` for the ResNet), finite.
///
/// The order of the checks is the reference's: shape against the encoder,
/// zero-size image, `N < 2`, then values.
pub(crate) fn batch(what: &str, x: &Tensor, per_image: Option<&[i64]>) -> Result<()> {
    let size = x.size();
    let expected = |dims: &[i64]| format!("N x {}", shape_string(dims));
    if size.is_empty() || per_image.is_some_and(|d| d.len() + 1 != size.len()) {
        return Err(ClaeError::ShapeMismatch {
            what: what.to_string(),
            expected: per_image.map_or("N x ...".to_string(), expected),
            actual: shape_string(&size),
        }
        .into());
    }
    let n = size[0];
    let rest = &size[1..];
    let cols: i64 = rest.iter().product();
    match per_image {
        // 2-D: exactly the reference's rule and message.
        Some([d]) => batch_shape(what, n, cols, Some(*d as usize))?,
        Some(dims) => {
            if rest != dims {
                return Err(ClaeError::ShapeMismatch {
                    what: what.to_string(),
                    expected: expected(dims),
                    actual: shape_string(&size),
                }
                .into());
            }
            batch_shape(what, n, cols, None)?
        }
        None => batch_shape(what, n, cols, None)?,
    }
    finite(what, x)
}

/// Two views of the same batch: same shape (checked first, with the
/// reference's message), then each a valid [`batch`].
pub(crate) fn pair(
    (name_a, a): (&str, &Tensor),
    (name_b, b): (&str, &Tensor),
    per_image: Option<&[i64]>,
) -> Result<()> {
    if a.size() != b.size() {
        return Err(ClaeError::ShapeMismatch {
            what: format!("{name_b} (must match {name_a})"),
            expected: shape_string(&a.size()),
            actual: shape_string(&b.size()),
        }
        .into());
    }
    batch(name_a, a, per_image)?;
    batch(name_b, b, per_image)
}

/// `tau` finite and `> 0` in the element type ([`check::tau`]).
pub(crate) fn tau(precision: Precision, tau: f64) -> Result<()> {
    for_precision!(precision, F => check::tau::<F>(tau).map(|_| ())).map_err(Error::from)
}
