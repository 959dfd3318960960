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

/// What a computation found about the representability of its own results
/// (and, in a training step, the magnitudes the optimizer's overflow guard
/// needs), read with one device synchronisation.
///
/// Two kinds of entries:
///
/// * **values**: 0-d tensors, each read back (a loss, `max |g|` of a
///   gradient, `max |p|` of a parameter); the check fails where one is not
///   finite;
/// * **small tensors** (BatchNorm statistics, embedding norms, running
///   statistics): every entry finite, or every entry `> 0` — checked
///   together by one reduction each, so a ResNet's sixty BatchNorm passes
///   cost two reductions, not sixty.
///
/// `Health::read` makes the one transfer; when something failed, the
/// entries are examined one by one (the slow path only) and the first that
/// failed becomes a [`ClaeError::Overflow`] naming its cause and quantity.
#[derive(Debug)]
pub struct Health {
    precision: Precision,
    cause: String,
    values: Vec<(String, String, Tensor)>,
    finite: Vec<(String, String, Tensor)>,
    positive: Vec<(String, String, Tensor)>,
}

/// What [`Health::read`] read.
#[derive(Debug)]
pub(crate) struct Reading {
    /// The values, in the order they were pushed.
    pub(crate) values: Vec<f64>,
    /// The first failed entry, as the error to return (after the caller has
    /// ruled out invalid input: see the steps).
    pub(crate) failure: Option<ClaeError>,
}

/// `max |t|` as a 0-d `f64` tensor, NaN or inf when `t` holds one: from one
/// `aminmax` pass, `max(max t, −min t)` (both NaN-propagating). Ten times
/// faster on the CPU than `abs().max()` (no temporary) or the `inf` norm
/// (a scalar kernel), and twenty than `isfinite().all()`. 0 for an empty
/// tensor (and no failing op: in tch 0.24 a failing op with a Scalar
/// argument panics in the Scalar's drop).
pub(crate) fn inf_norm(t: &Tensor) -> Result<Tensor> {
    if t.numel() == 0 {
        return Ok(Tensor::f_zeros([], (Kind::Double, t.device()))?);
    }
    let (lo, hi) = t.f_detach()?.f_aminmax(None::<i64>, false)?;
    Ok(hi.f_maximum(&lo.f_neg()?)?.f_to_kind(Kind::Double)?)
}

impl Health {
    /// No entries yet; overflow errors will say `precision` (what a caller
    /// of [`crate::Encoder::forward_unchecked`] hands it).
    pub fn new(precision: Precision) -> Self {
        Health {
            precision,
            cause: String::new(),
            values: Vec::new(),
            finite: Vec::new(),
            positive: Vec::new(),
        }
    }

    /// The input the entries pushed from now on are blamed on (`P`, `Q`, ...).
    pub(crate) fn blame(&mut self, cause: &str) {
        self.cause = cause.to_string();
    }

    /// A 0-d value that must be finite; returns its index in [`Reading::values`].
    pub(crate) fn push(&mut self, quantity: impl Into<String>, value: Tensor) -> usize {
        self.values
            .push((self.cause.clone(), quantity.into(), value));
        self.values.len() - 1
    }

    /// `max |t|` as a value (every entry of `t` finite); returns its index.
    pub(crate) fn push_finite(&mut self, quantity: impl Into<String>, t: &Tensor) -> Result<usize> {
        Ok(self.push(quantity, inf_norm(t)?))
    }

    /// A small tensor whose every entry must be finite (checked with the
    /// others in one reduction).
    pub fn push_small_finite(&mut self, quantity: impl Into<String>, t: &Tensor) -> Result<()> {
        self.finite.push((
            self.cause.clone(),
            quantity.into(),
            t.f_detach()?.f_reshape([-1])?,
        ));
        Ok(())
    }

    /// A small tensor whose every entry must be `> 0` (and not NaN).
    pub(crate) fn push_small_positive(
        &mut self,
        quantity: impl Into<String>,
        t: &Tensor,
    ) -> Result<()> {
        self.positive.push((
            self.cause.clone(),
            quantity.into(),
            t.f_detach()?.f_reshape([-1])?,
        ));
        Ok(())
    }

    /// One reduction over a group of small tensors: `max |t|` for the
    /// finite group, `min t` (NaN propagating) for the positive group.
    fn summary(group: &[(String, String, Tensor)], positive: bool) -> Result<Option<Tensor>> {
        let parts: Vec<Tensor> = group
            .iter()
            .filter(|(_, _, t)| t.numel() > 0)
            .map(|(_, _, t)| t.f_to_kind(Kind::Double))
            .collect::<std::result::Result<_, _>>()?;
        if parts.is_empty() {
            return Ok(None);
        }
        let all = Tensor::f_cat(&parts, 0)?;
        // torch's full min / max reductions propagate NaN
        Ok(Some(if positive {
            all.f_min()?
        } else {
            inf_norm(&all)?
        }))
    }

    /// Reads every entry with one transfer.
    pub(crate) fn read(&self) -> Result<Reading> {
        let mut scalars: Vec<Tensor> = self
            .values
            .iter()
            .map(|(_, _, v)| v.f_to_kind(Kind::Double))
            .collect::<std::result::Result<_, _>>()?;
        let finite = Self::summary(&self.finite, false)?;
        let positive = Self::summary(&self.positive, true)?;
        scalars.extend(finite.iter().map(|t| t.shallow_clone()));
        scalars.extend(positive.iter().map(|t| t.shallow_clone()));
        if scalars.is_empty() {
            return Ok(Reading {
                values: Vec::new(),
                failure: None,
            });
        }
        let mut all =
            Vec::<f64>::try_from(&Tensor::f_stack(&scalars, 0)?.f_to_device(tch::Device::Cpu)?)?;
        let positive_min = positive.is_some().then(|| all.pop()).flatten();
        let finite_max = finite.is_some().then(|| all.pop()).flatten();
        let overflow = |(cause, quantity, _): &(String, String, Tensor)| ClaeError::Overflow {
            cause: cause.clone(),
            quantity: quantity.clone(),
            precision: self.precision.name().to_string(),
        };
        let mut failure = self
            .values
            .iter()
            .zip(&all)
            .find(|(_, v)| !v.is_finite())
            .map(|(e, _)| overflow(e));
        if failure.is_none() && finite_max.is_some_and(|m| !m.is_finite()) {
            for e in &self.finite {
                if !inf_norm(&e.2)?.f_double_value(&[])?.is_finite() {
                    failure = Some(overflow(e));
                    break;
                }
            }
        }
        if failure.is_none() && positive_min.is_some_and(|m| m.is_nan() || m <= 0.0) {
            for e in &self.positive {
                let min = if e.2.numel() > 0 {
                    e.2.f_min()?.f_double_value(&[])?
                } else {
                    1.0
                };
                if min.is_nan() || min <= 0.0 {
                    failure = Some(overflow(e));
                    break;
                }
            }
        }
        Ok(Reading {
            values: all,
            failure,
        })
    }

    /// [`Health::read`], failing at the first failed entry.
    pub(crate) fn check(&self) -> Result<Reading> {
        let reading = self.read()?;
        match reading.failure {
            Some(e) => Err(e.into()),
            None => Ok(reading),
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
    let maxima = ts.iter().map(|t| inf_norm(t)).collect::<Result<Vec<_>>>()?;
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

/// Fails with [`ClaeError::NonFinite`] at the first NaN or infinity of `t`
/// (row-major order), as [`check::finite`] does.
pub(crate) fn finite(what: &str, t: &Tensor) -> Result<()> {
    if inf_norm(t)?.f_double_value(&[])?.is_finite() {
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

/// Every tensor finite, with one device synchronisation when they are
/// (`max |t|` of each, [`inf_norm`]); the first non-finite entry located
/// otherwise.
pub(crate) fn all_finite(named: &[(&str, &Tensor)]) -> Result<()> {
    if named.is_empty() {
        return Ok(());
    }
    let ts: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
    if magnitudes(&ts)?.iter().all(|m| m.is_finite()) {
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

/// The shape of a batch `x` of `N >= 2` images, each of shape `per_image`
/// when given (`[D_in]` for the MLP, `[C, H, W]` for the ResNet), in the
/// reference's order: shape against the encoder, zero-size image, `N < 2`.
/// The values are checked separately ([`finite`]), with no device
/// synchronisation here.
pub(crate) fn batch_shape_only(what: &str, x: &Tensor, per_image: Option<&[i64]>) -> Result<()> {
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
    Ok(())
}

/// Two views of the same batch: the same shape (checked first, with the
/// reference's message), then each a valid [`batch_shape_only`]. The values
/// are read by the caller (the steps read them with their other checks and
/// locate a non-finite entry only if one is there).
pub(crate) fn pair_shapes(
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
    batch_shape_only(name_a, a, per_image)?;
    batch_shape_only(name_b, b, per_image)
}

/// `tau` finite and `> 0` in the element type ([`check::tau`]).
pub(crate) fn tau(precision: Precision, tau: f64) -> Result<()> {
    for_precision!(precision, F => check::tau::<F>(tau).map(|_| ())).map_err(Error::from)
}
