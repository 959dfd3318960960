//! The building blocks shared by both encoders, each one libtorch call, the
//! way a PyTorch module would make it: `nn.Linear`, a dual `nn.BatchNorm{1,2}d`
//! and `F.normalize`.

use crate::error::Result;
use clae_reference::encoder::{Branch, Mode};
use tch::Tensor;

/// `F.normalize`'s clamp for the encoder output, `1e-12` (SPEC 2).
pub const NORMALIZE_EPS: f64 = 1e-12;

/// `nn.Linear`: `y = x Wᵀ + b`. Shapes: `x: N x in`, `W: out x in`, `b: out`.
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// One `nn.BatchNorm{1,2}d`: affine `weight` (γ) and `bias` (β), running
/// statistics, momentum and `eps_bn`.
#[derive(Debug)]
pub(crate) struct BatchNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) running_mean: Tensor,
    pub(crate) running_var: Tensor,
    pub(crate) momentum: f64,
    pub(crate) eps: f64,
}

/// Two independent BatchNorm layers, `clean` and `adv` (AdvProp-style, SPEC 2).
#[derive(Debug)]
pub(crate) struct DualBatchNorm {
    pub(crate) clean: BatchNorm,
    pub(crate) adv: BatchNorm,
}

impl DualBatchNorm {
    /// `F.batch_norm` through the branch `mode` selects.
    ///
    /// * `Train(branch)`: batch statistics (biased variance). With `track`,
    ///   libtorch also folds them into that branch's running statistics
    ///   (`running = (1 − m) running + m stat`, unbiased variance); without,
    ///   no running statistics are passed, so nothing is updated — the
    ///   generation pass of SPEC 4.
    /// * `Eval`: the clean branch's running statistics.
    ///
    /// Works for `N x C` (BatchNorm1d) and `N x C x H x W` (BatchNorm2d).
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode, track: bool) -> Result<Tensor> {
        let (bn, training) = match mode {
            Mode::Train(Branch::Clean) => (&self.clean, true),
            Mode::Train(Branch::Adv) => (&self.adv, true),
            Mode::Eval => (&self.clean, false),
        };
        let (mean, var) = if training && !track {
            (None, None)
        } else {
            (Some(&bn.running_mean), Some(&bn.running_var))
        };
        Ok(x.f_batch_norm(
            Some(&bn.weight),
            Some(&bn.bias),
            mean,
            var,
            training,
            bn.momentum,
            bn.eps,
            true,
        )?)
    }
}

/// `F.normalize(u, dim=1, eps)`, written as PyTorch writes it:
/// `u / u.norm(2, dim=1, keepdim=True).clamp_min(eps)`. A zero row stays zero.
pub(crate) fn l2_normalize(u: &Tensor, eps: f64) -> Result<Tensor> {
    let norm = u.f_norm_scalaropt_dim(2, [1], true)?.f_clamp_min(eps)?;
    Ok(u.f_div(&norm)?)
}
