//! Parameter gradients of an [`Mlp`], in [`Mlp::parameter_names`] order.

use super::{Branch, Mlp};
use crate::real::Real;
use ndarray::{Array1, Array2, ArrayD};

/// One optional gradient per trainable tensor, in [`Mlp::parameter_names`]
/// order. `None` means the tensor took no part in the loss (e.g. the adv
/// BatchNorm affine parameters in a plain step); optimizers then skip it, as
/// `torch.optim` skips parameters whose `.grad` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpGrads<F> {
    /// The gradients.
    pub tensors: Vec<Option<ArrayD<F>>>,
    depth: usize,
}

/// Parameter tensors per backbone block: linear weight and bias, clean γ β, adv γ β.
const PER_BLOCK: usize = 6;

impl<F: Real> MlpGrads<F> {
    /// All `None`, shaped for `mlp`.
    pub fn empty(mlp: &Mlp<F>) -> Self {
        let depth = mlp.backbone.len();
        MlpGrads {
            tensors: vec![None; PER_BLOCK * depth + 4],
            depth,
        }
    }

    pub(crate) fn block_index(&self, l: usize) -> usize {
        PER_BLOCK * l
    }

    pub(crate) fn head_index(&self, k: usize) -> usize {
        PER_BLOCK * self.depth + 2 * k
    }

    pub(crate) fn set_linear(&mut self, i: usize, w: Option<Array2<F>>, b: Option<Array1<F>>) {
        self.tensors[i] = w.map(|w| w.into_dyn());
        self.tensors[i + 1] = b.map(|b| b.into_dyn());
    }

    pub(crate) fn set_bn(&mut self, l: usize, branch: Branch, gamma: Array1<F>, beta: Array1<F>) {
        let i = self.block_index(l) + if branch == Branch::Clean { 2 } else { 4 };
        self.tensors[i] = Some(gamma.into_dyn());
        self.tensors[i + 1] = Some(beta.into_dyn());
    }

    /// `self += other`, tensor by tensor (`None` is the empty sum, so a
    /// tensor present in either side is present in the result).
    pub fn accumulate(&mut self, other: &MlpGrads<F>) {
        for (a, b) in self.tensors.iter_mut().zip(&other.tensors) {
            match (a.as_mut(), b) {
                (Some(a), Some(b)) => *a += b,
                (None, Some(b)) => *a = Some(b.clone()),
                (_, None) => {}
            }
        }
    }

    /// The gradients that are present, with their index.
    pub fn present(&self) -> impl Iterator<Item = (usize, &ArrayD<F>)> {
        self.tensors
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.as_ref().map(|g| (i, g)))
    }
}
