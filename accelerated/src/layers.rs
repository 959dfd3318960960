//! The building blocks shared by both encoders, each one libtorch call, the
//! way a PyTorch module would make it: `nn.Linear`, a dual `nn.BatchNorm{1,2}d`
//! and `F.normalize`.

use crate::check::Health;
use crate::device::Precision;
use crate::encoder::NamedTensors;
use crate::error::Result;
use clae_reference::encoder::{Branch, Mode};
use clae_reference::rng::Rng;
use clae_reference::state::Role;
use tch::{Device, Tensor};

/// Builds a convolutional encoder's tensors in layout order, drawing initial
/// values from one [`Rng`]: PyTorch's default `kaiming_uniform_(a = √5)` for
/// convolutions and linear weights (`U(−k, k)`, `k = 1/√fan_in`) and
/// `U(−k, k)` for linear biases, in `f64`, row-major, then rounded to the
/// precision; BatchNorm `γ = 1, β = 0`, running mean 0, variance 1, with the
/// encoder's `eps_bn` and the clean and adv branches' momenta.
pub(crate) struct Builder {
    pub(crate) tensors: NamedTensors,
    rng: Rng,
    bn_eps: f64,
    bn_momenta: (f64, f64),
}

impl Builder {
    /// An empty layout on `device` in `precision`; `bn_momenta` is `(clean, adv)`.
    pub(crate) fn new(
        device: Device,
        precision: Precision,
        seed: u64,
        bn_eps: f64,
        bn_momenta: (f64, f64),
    ) -> Self {
        Builder {
            tensors: NamedTensors::new(device, precision),
            rng: Rng::new(seed),
            bn_eps,
            bn_momenta,
        }
    }

    /// A parameter of `shape` drawn from `U(−k, k)`, `k = 1/√fan_in`.
    pub(crate) fn uniform(&mut self, name: &str, shape: &[i64], fan_in: i64) -> Result<Tensor> {
        let k = 1.0 / (fan_in as f64).sqrt();
        let n: i64 = shape.iter().product();
        let values: Vec<f64> = (0..n).map(|_| self.rng.uniform_in(-k, k)).collect();
        let t = Tensor::f_from_slice(&values)?
            .f_reshape(shape)?
            .f_to_kind(self.tensors.precision().kind())?
            .f_to_device(self.tensors.device())?;
        Ok(self.tensors.add(name, Role::Parameter, t))
    }

    /// A dual BatchNorm over `c` channels: `{name}.clean.*`, then `{name}.adv.*`.
    pub(crate) fn bn(&mut self, name: &str, c: i64) -> Result<DualBatchNorm> {
        let opts = (self.tensors.precision().kind(), self.tensors.device());
        let eps = self.bn_eps;
        let t = &mut self.tensors;
        let mut branch = |branch: &str, momentum: f64| -> Result<BatchNorm> {
            let p = format!("{name}.{branch}");
            Ok(BatchNorm {
                weight: t.add(
                    &format!("{p}.weight"),
                    Role::Parameter,
                    Tensor::f_ones([c], opts)?,
                ),
                bias: t.add(
                    &format!("{p}.bias"),
                    Role::Parameter,
                    Tensor::f_zeros([c], opts)?,
                ),
                running_mean: t.add(
                    &format!("{p}.running_mean"),
                    Role::Buffer,
                    Tensor::f_zeros([c], opts)?,
                ),
                running_var: t.add(
                    &format!("{p}.running_var"),
                    Role::Buffer,
                    Tensor::f_ones([c], opts)?,
                ),
                momentum,
                eps,
            })
        };
        let clean = branch("clean", self.bn_momenta.0)?;
        let adv = branch("adv", self.bn_momenta.1)?;
        Ok(DualBatchNorm {
            name: name.to_string(),
            clean,
            adv,
        })
    }

    /// `nn.Linear(fan_in, fan_out)` with a bias: `{name}.weight`, `{name}.bias`.
    pub(crate) fn linear(&mut self, name: &str, fan_in: i64, fan_out: i64) -> Result<Linear> {
        let weight = self.uniform(&format!("{name}.weight"), &[fan_out, fan_in], fan_in)?;
        let bias = self.uniform(&format!("{name}.bias"), &[fan_out], fan_in)?;
        Ok(Linear {
            weight,
            bias: Some(bias),
        })
    }
}

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
