//! Parameter gradients of an [`Mlp`], in a struct that mirrors the encoder
//! (`grads.backbone[l].bn.adv.gamma` is the gradient of
//! `mlp.backbone[l].bn.adv.gamma`).
//!
//! Every tensor is optional: `None` means the tensor took no part in the
//! loss (e.g. the adv BatchNorm affine parameters in a plain step);
//! optimizers then skip it, as `torch.optim` skips parameters whose `.grad`
//! is `None`.

use super::Mlp;
use crate::error::{ClaeError, Result};
use crate::real::Real;
use ndarray::{Array1, Array2, ArrayD, ArrayViewD, Dimension, Ix1, Ix2};

/// Gradients of one [`crate::layers::Linear`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads<F> {
    /// `dL/dW`, `out x in`.
    pub weight: Option<Array2<F>>,
    /// `dL/db`, `out`.
    pub bias: Option<Array1<F>>,
}

/// Gradients of one BatchNorm's affine parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BnGrads<F> {
    /// `dL/dγ`, `h`.
    pub gamma: Option<Array1<F>>,
    /// `dL/dβ`, `h`.
    pub beta: Option<Array1<F>>,
}

/// Gradients of a [`crate::layers::DualBatchNorm1d`].
#[derive(Debug, Clone, PartialEq)]
pub struct DualBnGrads<F> {
    /// The clean branch.
    pub clean: BnGrads<F>,
    /// The adversarial branch.
    pub adv: BnGrads<F>,
}

/// Gradients of one [`super::BackboneLayer`].
#[derive(Debug, Clone, PartialEq)]
pub struct BlockGrads<F> {
    /// The linear map.
    pub linear: LinearGrads<F>,
    /// Both BatchNorm branches.
    pub bn: DualBnGrads<F>,
}

/// Parameter gradients of an [`Mlp`], shaped like it.
///
/// ```
/// use clae_reference::encoder::{Mlp, MlpConfig, MlpGrads};
/// let mlp = Mlp::<f64>::new(MlpConfig::new(4, 6, 1, 3), 0)?;
/// let g = MlpGrads::none(&mlp);
/// assert!(g.backbone[0].bn.adv.gamma.is_none());
/// assert_eq!(g.tensors().len(), mlp.parameter_names().len());
/// # Ok::<(), clae_reference::ClaeError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MlpGrads<F> {
    /// One entry per backbone block.
    pub backbone: Vec<BlockGrads<F>>,
    /// `head[0]` and `head[1]` (state-dict names `head.0`, `head.2`).
    pub head: [LinearGrads<F>; 2],
}

impl<F> DualBnGrads<F> {
    /// The branch `branch`, mutably.
    pub fn branch_mut(&mut self, branch: super::Branch) -> &mut BnGrads<F> {
        match branch {
            super::Branch::Clean => &mut self.clean,
            super::Branch::Adv => &mut self.adv,
        }
    }
}

impl<F> LinearGrads<F> {
    fn none() -> Self {
        LinearGrads {
            weight: None,
            bias: None,
        }
    }
}

impl<F> BnGrads<F> {
    fn none() -> Self {
        BnGrads {
            gamma: None,
            beta: None,
        }
    }
}

/// `a += b`, where `None` is the empty sum. Shapes are the caller's to check.
fn add_into<F: Real, D: Dimension>(
    a: &mut Option<ndarray::Array<F, D>>,
    b: &Option<ndarray::Array<F, D>>,
) {
    match (a.as_mut(), b) {
        (Some(a), Some(b)) => ndarray::Zip::from(a).and(b).par_for_each(|a, &b| *a += b),
        (None, Some(b)) => *a = Some(b.clone()),
        (_, None) => {}
    }
}

impl<F: Real> MlpGrads<F> {
    /// Every gradient `None`, shaped for `mlp`.
    pub fn none(mlp: &Mlp<F>) -> Self {
        MlpGrads {
            backbone: (0..mlp.backbone.len())
                .map(|_| BlockGrads {
                    linear: LinearGrads::none(),
                    bn: DualBnGrads {
                        clean: BnGrads::none(),
                        adv: BnGrads::none(),
                    },
                })
                .collect(),
            head: [LinearGrads::none(), LinearGrads::none()],
        }
    }

    /// The gradients in [`Mlp::parameter_names`] order (the order of the
    /// optimizer state).
    pub fn tensors(&self) -> Vec<Option<ArrayViewD<'_, F>>> {
        let mut out = Vec::new();
        for block in &self.backbone {
            out.push(dyn_view(&block.linear.weight));
            out.push(dyn_view(&block.linear.bias));
            for bn in [&block.bn.clean, &block.bn.adv] {
                out.push(dyn_view(&bn.gamma));
                out.push(dyn_view(&bn.beta));
            }
        }
        for lin in &self.head {
            out.push(dyn_view(&lin.weight));
            out.push(dyn_view(&lin.bias));
        }
        out
    }

    /// The inverse of [`MlpGrads::tensors`]: one optional gradient per
    /// parameter of `mlp`, in [`Mlp::parameter_names`] order, each shaped
    /// like its parameter.
    ///
    /// Errors: [`ClaeError::InvalidState`] for the wrong number of tensors,
    /// [`ClaeError::ShapeMismatch`] for a misshapen one.
    pub fn from_tensors(mlp: &Mlp<F>, tensors: Vec<Option<ArrayD<F>>>) -> Result<Self> {
        let names = mlp.parameter_names();
        if tensors.len() != names.len() {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "{} gradients for an encoder of {} parameters",
                    tensors.len(),
                    names.len()
                ),
            });
        }
        let params = mlp.parameters();
        let mut it = tensors.into_iter().zip(params.iter().zip(&names));
        let mut grads = MlpGrads::none(mlp);
        macro_rules! next {
            ($d:ty) => {{
                let (grad, (param, name)) = it.next().expect("counts checked above");
                take::<F, $d>(grad, param, name)?
            }};
        }
        for block in &mut grads.backbone {
            block.linear.weight = next!(Ix2);
            block.linear.bias = next!(Ix1);
            for bn in [&mut block.bn.clean, &mut block.bn.adv] {
                bn.gamma = next!(Ix1);
                bn.beta = next!(Ix1);
            }
        }
        for lin in &mut grads.head {
            lin.weight = next!(Ix2);
            lin.bias = next!(Ix1);
        }
        Ok(grads)
    }

    /// `self += other`, tensor by tensor (`None` is the empty sum, so a
    /// tensor present in either side is present in the result).
    ///
    /// Errors (nothing is changed then): [`ClaeError::ShapeMismatch`] if the
    /// two are not shaped alike, [`ClaeError::Overflow`] if a sum is not
    /// representable.
    pub fn accumulate(&mut self, other: &MlpGrads<F>) -> Result<()> {
        let shapes = |g: &MlpGrads<F>| -> Vec<Option<Vec<usize>>> {
            g.tensors()
                .iter()
                .map(|t| t.as_ref().map(|t| t.shape().to_vec()))
                .collect()
        };
        let (a, b) = (shapes(self), shapes(other));
        let compatible = a.len() == b.len()
            && a.iter().zip(&b).all(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            });
        if !compatible {
            return Err(ClaeError::ShapeMismatch {
                what: "gradients to accumulate".into(),
                expected: format!("{a:?}"),
                actual: format!("{b:?}"),
            });
        }
        // every sum finite (checked without forming it), then added in place
        let representable =
            |a: &Option<ArrayViewD<'_, F>>, b: &Option<ArrayViewD<'_, F>>| match (a, b) {
                (Some(a), Some(b)) => ndarray::Zip::from(a).and(b).par_fold(
                    || true,
                    |ok, &x, &y| ok & (x + y).is_finite(),
                    |p, q| p & q,
                ),
                (Some(t), None) | (None, Some(t)) => crate::check::all_finite(t.view()),
                (None, None) => true,
            };
        if !self
            .tensors()
            .iter()
            .zip(other.tensors().iter())
            .all(|(a, b)| representable(a, b))
        {
            return Err(ClaeError::Overflow {
                cause: "the two gradients".into(),
                quantity: "their sum".into(),
                precision: F::NAME.to_string(),
            });
        }
        self.add_unchecked(other);
        Ok(())
    }

    /// `self += other` for gradients of the same encoder.
    pub(crate) fn add_unchecked(&mut self, other: &MlpGrads<F>) {
        for (a, b) in self.backbone.iter_mut().zip(&other.backbone) {
            add_into(&mut a.linear.weight, &b.linear.weight);
            add_into(&mut a.linear.bias, &b.linear.bias);
            for (x, y) in [(&mut a.bn.clean, &b.bn.clean), (&mut a.bn.adv, &b.bn.adv)] {
                add_into(&mut x.gamma, &y.gamma);
                add_into(&mut x.beta, &y.beta);
            }
        }
        for (a, b) in self.head.iter_mut().zip(&other.head) {
            add_into(&mut a.weight, &b.weight);
            add_into(&mut a.bias, &b.bias);
        }
    }
}

fn dyn_view<F, D: Dimension>(a: &Option<ndarray::Array<F, D>>) -> Option<ArrayViewD<'_, F>> {
    a.as_ref().map(|a| a.view().into_dyn())
}

/// One entry of [`MlpGrads::from_tensors`]: its shape checked against its
/// parameter, converted to the dimension the struct holds.
fn take<F: Real, D: Dimension>(
    grad: Option<ArrayD<F>>,
    param: &ArrayViewD<'_, F>,
    name: &str,
) -> Result<Option<ndarray::Array<F, D>>> {
    let Some(grad) = grad else { return Ok(None) };
    if grad.shape() != param.shape() {
        return Err(ClaeError::ShapeMismatch {
            what: format!("gradient of {name}"),
            expected: format!("{:?}", param.shape()),
            actual: format!("{:?}", grad.shape()),
        });
    }
    grad.into_dimensionality::<D>()
        .map(Some)
        .map_err(|e| ClaeError::ShapeMismatch {
            what: format!("gradient of {name}"),
            expected: format!("{:?}", param.shape()),
            actual: e.to_string(),
        })
}
