//! The building blocks shared by both encoders, each one libtorch call, the
//! way a PyTorch module would make it: `nn.Linear`, a dual `nn.BatchNorm{1,2}d`
//! and `F.normalize`.

use crate::check::Health;
use crate::error::Result;
use clae_reference::encoder::{Branch, Mode};
use tch::Tensor;

/// `F.normalize`'s clamp for the encoder output, `1e-12` (docs/SPEC.md §2).
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

/// Two independent BatchNorm layers, `clean` and `adv` (AdvProp-style,
/// docs/SPEC.md §2), and the layer's state-dict prefix (for messages).
#[derive(Debug)]
pub(crate) struct DualBatchNorm {
    pub(crate) name: String,
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
    ///   generation pass of docs/SPEC.md §4.
    /// * `Eval`: the clean branch's running statistics.
    ///
    /// Works for `N x C` (BatchNorm1d) and `N x C x H x W` (BatchNorm2d).
    ///
    /// In training mode the batch statistics are representable exactly when
    /// the saved mean is finite and the saved `1/√(σ² + eps)` is not 0 (an
    /// overflowed `σ²` gives 0): both go into `health`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        mode: Mode,
        track: bool,
        health: &mut Health,
    ) -> Result<Tensor> {
        let bn = match mode {
            Mode::Train(Branch::Clean) | Mode::Eval => &self.clean,
            Mode::Train(Branch::Adv) | Mode::EvalAdv => &self.adv,
        };
        let (w, b) = (Some(&bn.weight), Some(&bn.bias));
        let (y, save_mean, save_invstd) = match mode {
            Mode::Eval | Mode::EvalAdv => {
                let y = x.f_batch_norm(
                    w,
                    b,
                    Some(&bn.running_mean),
                    Some(&bn.running_var),
                    false,
                    bn.momentum,
                    bn.eps,
                    true,
                )?;
                return Ok(y);
            }
            // what F.batch_norm(training=True) runs, with the statistics it saves
            Mode::Train(_) if track => {
                let (y, mean, invstd, _) = x.f_internal_batch_norm_with_update(
                    w,
                    b,
                    &bn.running_mean,
                    &bn.running_var,
                    bn.momentum,
                    bn.eps,
                )?;
                (y, mean, invstd)
            }
            Mode::Train(_) => x.f_native_batch_norm(
                w,
                b,
                None::<&Tensor>,
                None::<&Tensor>,
                true,
                bn.momentum,
                bn.eps,
            )?,
        };
        let what = format!("the batch statistics of {}", self.name);
        health.push_small_finite(&what, &save_mean)?;
        // an overflowed σ² gives 1/√(σ² + eps) = 0
        health.push_small_positive(&what, &save_invstd)?;
        Ok(y)
    }
}

/// `F.normalize(u, dim=1, eps)`, written as PyTorch writes it:
/// `u / u.norm(2, dim=1, keepdim=True).clamp_min(eps)`. A zero row stays
/// zero. Also returns the clamped norms (`N x 1`): `z` is representable
/// exactly when they are finite.
pub(crate) fn l2_normalize(u: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let norm = u.f_norm_scalaropt_dim(2, [1], true)?.f_clamp_min(eps)?;
    Ok((u.f_div(&norm)?, norm))
}

/// The encoder's output normalisation, with its health flag.
pub(crate) fn embed_normalize(u: &Tensor, health: &mut Health) -> Result<Tensor> {
    let (z, norm) = l2_normalize(u, NORMALIZE_EPS)?;
    health.push_small_finite(
        "the embedding z (its norm, or an activation before it)",
        &norm,
    )?;
    Ok(z)
}
