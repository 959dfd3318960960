//! Where an input is so ill-conditioned that docs/SPEC.md §8's per-tensor bound
//! cannot hold for any implementation, detected with the reference in
//! `f64` (and, for ReLU kinks, in both precisions). The suite skips the
//! affected comparisons and counts every skip in its table.
//!
//! * ReLU kinks (`f32`). A gradient through a ReLU network is discontinuous
//!   where a pre-activation crosses zero. When an `f32` forward pass rounds a
//!   pre-activation to the other side of zero than the `f64` pass does, the
//!   two gradients legitimately differ by that unit's whole contribution —
//!   no tolerance on smooth error covers it ([`f32_relu_flip_risk`]), just as
//!   finite-difference checks stay away from kinks.
//! * BatchNorm's centring (`f32`): [`batchnorm_condition`].
//! * BatchNorm's backward at `N = 2` (any precision):
//!   [`pair_backward_condition`].
//! * A feature whose batch values coincide to rounding (any precision):
//!   [`centring_condition`].

use crate::backend::Model;
use clae_reference::encoder::{Branch, Mlp, Mode};
use clae_reference::Real;
use ndarray::Array2;

/// Every ReLU input of the encoder for `x` in `mode`, layer by layer
/// (backbone BatchNorm outputs, then the head's first linear layer), as
/// the reference computes them in `F`.
fn pre_relu<F: Real>(model: &Model, x: &Array2<f64>, mode: Mode) -> Option<Vec<Array2<f64>>> {
    let mlp = Mlp::<F>::from_state_dict(model.config, &model.state.cast().ok()?).ok()?;
    let fwd = mlp.forward(x.mapv(F::c).view(), mode).ok()?;
    let mut out = Vec::with_capacity(mlp.backbone.len() + 1);
    for (layer, cache) in mlp.backbone.iter().zip(&fwd.bn) {
        let bn = match mode {
            Mode::Train(Branch::Adv) => &layer.bn.adv,
            _ => &layer.bn.clean,
        };
        out.push((&cache.x_hat * &bn.gamma + &bn.beta).mapv(|v| v.as_f64()));
    }
    let last = fwd.acts.last()?;
    let h0 = last.dot(&mlp.head[0].weight.t()) + &mlp.head[0].bias;
    out.push(h0.mapv(|v| v.as_f64()));
    Some(out)
}

/// Whether an `f32` forward pass of `x` may put some ReLU on the other side
/// of its kink than the `f64` one: some pre-activation is within 8 times
/// its layer's largest `f32`-vs-`f64` difference of zero. (`true` when the
/// reference cannot run the input: the caller's own checks report that.)
pub fn f32_relu_flip_risk(model: &Model, x: &Array2<f64>, mode: Mode) -> bool {
    let (Some(hi), Some(lo)) = (
        pre_relu::<f64>(model, x, mode),
        pre_relu::<f32>(model, x, mode),
    ) else {
        return true;
    };
    hi.iter().zip(&lo).any(|(h, l)| {
        let err = h
            .iter()
            .zip(l.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f64, crate::metrics::nan_max);
        h.iter().any(|v| v.abs() <= 8.0 * err)
    })
}

/// The three BatchNorm condition numbers below, from one reference forward
/// pass in `f64`; all `0` in evaluation mode (running statistics, no
/// centring by the batch), all infinite when the reference cannot run the
/// input (the caller's own checks report that).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditioning {
    /// [`batchnorm_condition`].
    pub batchnorm: f64,
    /// [`centring_condition`].
    pub centring: f64,
    /// [`pair_backward_condition`].
    pub pair_backward: f64,
}

impl Conditioning {
    /// Whether `f32` rounding of BatchNorm's centring may cost more than a
    /// hundredth of docs/SPEC.md §8's `1e-4`: [`batchnorm_condition`] times `f32`'s
    /// unit roundoff above `1e-6`. (A hundredth, not a tenth: the backward
    /// pass meets the condition number again — `x̂` enters `dx` twice — and
    /// optimizer state squares gradients.)
    pub fn f32_ill(&self) -> bool {
        self.batchnorm * (f32::EPSILON as f64 / 2.0) > 1e-6
    }

    /// Whether, at `N = 2`, rounding with unit roundoff `u` may cost
    /// BatchNorm's backward more than a tenth of `tol`.
    pub fn pair_ill(&self, u: f64, tol: f64) -> bool {
        self.pair_backward * u > tol / 10.0
    }

    /// Whether some feature's batch values coincide to within what unit
    /// roundoff `u` resolves, relative to a tenth of `tol`.
    pub fn coinciding(&self, u: f64, tol: f64) -> bool {
        self.centring * u > tol / 10.0
    }
}

/// See [`Conditioning`].
pub fn conditioning(model: &Model, x: &Array2<f64>, mode: Mode) -> Conditioning {
    let mut c = Conditioning {
        batchnorm: 0.0,
        centring: 0.0,
        pair_backward: 0.0,
    };
    if mode == Mode::Eval {
        return c;
    }
    let forward = Mlp::<f64>::from_state_dict(model.config, &model.state)
        .ok()
        .and_then(|mlp| mlp.forward(x.view(), mode).ok().map(|fwd| (mlp, fwd)));
    let Some((mlp, fwd)) = forward else {
        return Conditioning {
            batchnorm: f64::INFINITY,
            centring: f64::INFINITY,
            pair_backward: f64::INFINITY,
        };
    };
    let eps = model.config.bn_eps;
    for (l, layer) in mlp.backbone.iter().enumerate() {
        let h = fwd.acts[l].dot(&layer.linear.weight.t()) + &layer.linear.bias;
        for (column, &inv_std) in h.columns().into_iter().zip(&fwd.bn[l].inv_std) {
            let peak = column.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let mean = column.mean().unwrap_or(0.0);
            let var =
                column.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / column.len() as f64;
            let centring = if peak == 0.0 { 0.0 } else { peak / var.sqrt() };
            c.batchnorm = crate::metrics::nan_max(c.batchnorm, peak * inv_std);
            c.centring = crate::metrics::nan_max(c.centring, centring);
            if x.nrows() == 2 {
                let pair = 1.0 / (inv_std * inv_std * eps);
                c.pair_backward = crate::metrics::nan_max(c.pair_backward, pair);
            }
        }
    }
    c
}

/// The relative condition number of BatchNorm's centring for `x` in a
/// training mode: over every backbone layer and feature, `max|h| / σ`, `h`
/// the layer's pre-BatchNorm activations and `σ = √(var + eps_bn)` its batch
/// standard deviation. `x̂ = (h − μ)/σ` loses `log10` of it in digits: a
/// feature whose batch values nearly coincide (common at `N = 2`, where
/// BatchNorm maps every feature to `±1` and the next layer's features can
/// differ by almost nothing) makes `f32`'s `6e-8` rounding an error of
/// `6e-8 · cond`. `0` in evaluation mode.
pub fn batchnorm_condition(model: &Model, x: &Array2<f64>, mode: Mode) -> f64 {
    conditioning(model, x, mode).batchnorm
}

/// [`Conditioning::f32_ill`] for `x` in `mode`.
pub fn f32_ill_conditioned(model: &Model, x: &Array2<f64>, mode: Mode) -> bool {
    conditioning(model, x, mode).f32_ill()
}

/// The relative condition number of BatchNorm's training-mode backward at
/// `N = 2`, where each feature normalises to `x̂ = ±s` with
/// `1 − s² = eps_bn / (σ² + eps_bn)`: the backward pass returns
/// `(dy₁ − dy₂)(1 − s²)/…`, a residue of `O(1)` terms, so rounding costs it
/// `u · (σ² + eps_bn) / eps_bn`; the largest such factor over every backbone
/// layer and feature. `0` for any other batch size (BatchNorm's backward then
/// projects out two directions of `N ≥ 3` and stays well-conditioned) and in
/// evaluation mode.
pub fn pair_backward_condition(model: &Model, x: &Array2<f64>, mode: Mode) -> f64 {
    conditioning(model, x, mode).pair_backward
}

/// [`Conditioning::pair_ill`] for `x` in `mode`.
pub fn pair_ill_conditioned(
    model: &Model,
    x: &Array2<f64>,
    mode: Mode,
    unit_roundoff: f64,
    tol: f64,
) -> bool {
    conditioning(model, x, mode).pair_ill(unit_roundoff, tol)
}

/// The relative condition number of BatchNorm's centring without the
/// `eps_bn` cushion: over every backbone layer and feature, `max|h| / s`,
/// `s` the batch's own (biased) standard deviation of `h` (infinite where
/// all of a feature's batch values coincide). `x̂ = (h − μ)/√(s² + eps_bn)`
/// is accurate to `u · max|h| / s` relative to *itself*; where `s² ≪ eps_bn`
/// that is far worse than [`batchnorm_condition`] says, and it is what a
/// quantity built from `x̂` alone — BatchNorm's `dγ = Σ dy ⊙ x̂`, its optimizer
/// state, the next layer's input — inherits when measured against its own
/// scale (seen: a clamped adversarial view whose rows all became `[1, 1]`,
/// giving `dγ` of the adv branch from rounding alone). `0` in evaluation mode.
pub fn centring_condition(model: &Model, x: &Array2<f64>, mode: Mode) -> f64 {
    conditioning(model, x, mode).centring
}
