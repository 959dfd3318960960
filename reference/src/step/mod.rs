//! The plain and CLAE training steps of SPEC 5.
//!
//! ```text
//! Z_P = f_clean(P);  Z_Q = f_clean(Q);  Z_A = f_adv(Q_adv)
//! L_total = L(Z_P, Z_Q) + alpha * L(Z_P, Z_A)       (Z_P computed once, used twice)
//! theta  <- optimizer(theta, dL_total/dtheta)
//! ```
//!
//! A plain step is the same without the `alpha` term and without the
//! adversarial pass. Running statistics are updated in the order P, Q (clean
//! branch), then Q_adv (adv branch).

use crate::adversarial::{
    adversarial_view_authors_unchecked, adversarial_view_unchecked, AdvConfig, Recipe,
};
use crate::check;
use crate::encoder::{Branch, Forward, Mlp, MlpGrads, Mode, Need};
use crate::error::Result;
use crate::loss::{loss_forward_backward_unchecked, LossKind, LossOutput};
use crate::optim::Optimizer;
use crate::real::Real;
use ndarray::{Array2, ArrayView2};

/// Everything that defines a CLAE step besides the optimizer.
///
/// ```
/// use clae_reference::{loss::LossKind, step::ClaeConfig};
/// let c = ClaeConfig::<f64>::paper(LossKind::SimClr);
/// assert_eq!((c.tau, c.alpha, c.adv.eps), (0.5, 1.0, 0.01));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClaeConfig<F> {
    /// Which loss `L`.
    pub loss: LossKind,
    /// Temperature, finite and `> 0`.
    pub tau: F,
    /// Weight of the adversarial term, finite and `>= 0`.
    pub alpha: F,
    /// The adversarial view.
    pub adv: AdvConfig<F>,
    /// How the view is computed (same numbers, different cost).
    pub recipe: Recipe,
}

impl<F: Real> ClaeConfig<F> {
    /// SPEC defaults for `loss`: its `tau` and `eps`, `alpha = 1`, FGSM on
    /// `P`, no clamp, lean recipe.
    pub fn paper(loss: LossKind) -> Self {
        ClaeConfig {
            loss,
            tau: F::c(loss.default_tau()),
            alpha: F::one(),
            adv: AdvConfig::fgsm(F::c(loss.default_eps())),
            recipe: Recipe::Lean,
        }
    }

    /// Checks `tau`, `alpha` and the adversarial configuration.
    pub fn validate(&self) -> Result<()> {
        check::tau(self.tau)?;
        check::non_negative("alpha", self.alpha)?;
        self.adv.validate()
    }
}

/// The loss terms of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport<F> {
    /// `L(Z_P, Z_Q)`.
    pub loss_clean: F,
    /// `L(Z_P, Z_A)` (CLAE steps only).
    pub loss_adv: Option<F>,
    /// `L_total = loss_clean + alpha * loss_adv`.
    pub total: F,
    /// The adversarial view used (CLAE steps only).
    pub q_adv: Option<Array2<F>>,
}

fn backprop_into<F: Real>(mlp: &Mlp<F>, grads: &mut MlpGrads<F>, fwd: &Forward<F>, dz: &Array2<F>) {
    let back = mlp.backward_unchecked(
        fwd,
        dz.view(),
        Need {
            params: true,
            input: false,
        },
    );
    grads.accumulate(&back.params.expect("parameter gradients were asked for"));
}

fn clean_forwards<F: Real>(
    mlp: &mut Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
) -> (Forward<F>, Forward<F>) {
    let fwd_p = mlp.forward_unchecked(p, Mode::Train(Branch::Clean));
    mlp.update_running_stats_unchecked(&fwd_p);
    let fwd_q = mlp.forward_unchecked(q, Mode::Train(Branch::Clean));
    mlp.update_running_stats_unchecked(&fwd_q);
    (fwd_p, fwd_q)
}

/// Loss and parameter gradients of a plain step; updates the clean running
/// statistics (P, then Q) but not the parameters.
pub fn plain_gradients<F: Real>(
    mlp: &mut Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
) -> Result<(StepReport<F>, MlpGrads<F>)> {
    mlp.validate()?;
    check::tau(tau)?;
    check::pair(("P", p), ("Q", q), Some(mlp.config().d_in))?;
    let (fwd_p, fwd_q) = clean_forwards(mlp, p, q);
    let out = loss_forward_backward_unchecked(loss, fwd_p.z.view(), fwd_q.z.view(), tau);
    let mut grads = MlpGrads::empty(mlp);
    backprop_into(mlp, &mut grads, &fwd_p, &out.grad_z_p);
    backprop_into(mlp, &mut grads, &fwd_q, &out.grad_z_q);
    let report = StepReport {
        loss_clean: out.value,
        loss_adv: None,
        total: out.value,
        q_adv: None,
    };
    Ok((report, grads))
}

/// Loss and parameter gradients of a CLAE step; updates running statistics
/// (clean: P, Q; adv: Q_adv — plus the recipe's own side effects) but not
/// the parameters.
///
/// With [`Recipe::Authors`] the view is made as the public code makes it
/// (see [`crate::adversarial::adversarial_view_authors`]), and for the Plain
/// loss `f_clean(P)` is computed a second time for the adversarial term, as
/// the authors' Plain variant does (it updates the clean running statistics
/// once more). `L_total` and `Q_adv` equal the lean recipe's.
pub fn clae_gradients<F: Real>(
    mlp: &mut Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &ClaeConfig<F>,
) -> Result<(StepReport<F>, MlpGrads<F>)> {
    mlp.validate()?;
    cfg.validate()?;
    check::pair(("P", p), ("Q", q), Some(mlp.config().d_in))?;
    let (loss, tau, alpha) = (cfg.loss, cfg.tau, cfg.alpha);
    let (fwd_p, fwd_q) = clean_forwards(mlp, p, q);
    let clean: LossOutput<F> =
        loss_forward_backward_unchecked(loss, fwd_p.z.view(), fwd_q.z.view(), tau);
    let mut grads = MlpGrads::empty(mlp);
    let (q_adv, adv_loss) = match cfg.recipe {
        Recipe::Lean => {
            let view = adversarial_view_unchecked(mlp, p, q, loss, tau, &cfg.adv);
            let fwd_a = mlp.forward_unchecked(view.q_adv.view(), Mode::Train(Branch::Adv));
            mlp.update_running_stats_unchecked(&fwd_a);
            let adv = loss_forward_backward_unchecked(loss, fwd_p.z.view(), fwd_a.z.view(), tau);
            // Z_P is shared: its two gradients are summed before one backward pass.
            let dz_p = &clean.grad_z_p + &(&adv.grad_z_p * alpha);
            backprop_into(mlp, &mut grads, &fwd_p, &dz_p);
            backprop_into(mlp, &mut grads, &fwd_q, &clean.grad_z_q);
            backprop_into(mlp, &mut grads, &fwd_a, &(&adv.grad_z_q * alpha));
            (view.q_adv, adv.value)
        }
        Recipe::Authors => {
            let view = adversarial_view_authors_unchecked(mlp, p, q, loss, tau, &cfg.adv);
            // The authors' Plain variant recomputes f_clean(P) for the second term.
            let fwd_p2 = if loss == LossKind::Plain {
                let f = mlp.forward_unchecked(p, Mode::Train(Branch::Clean));
                mlp.update_running_stats_unchecked(&f);
                Some(f)
            } else {
                None
            };
            let fwd_a = mlp.forward_unchecked(view.q_adv.view(), Mode::Train(Branch::Adv));
            mlp.update_running_stats_unchecked(&fwd_a);
            let anchor = fwd_p2.as_ref().unwrap_or(&fwd_p);
            let adv = loss_forward_backward_unchecked(loss, anchor.z.view(), fwd_a.z.view(), tau);
            let adv_dz_p = &adv.grad_z_p * alpha;
            match &fwd_p2 {
                Some(f) => {
                    backprop_into(mlp, &mut grads, &fwd_p, &clean.grad_z_p);
                    backprop_into(mlp, &mut grads, f, &adv_dz_p);
                }
                None => backprop_into(mlp, &mut grads, &fwd_p, &(&clean.grad_z_p + &adv_dz_p)),
            }
            backprop_into(mlp, &mut grads, &fwd_q, &clean.grad_z_q);
            backprop_into(mlp, &mut grads, &fwd_a, &(&adv.grad_z_q * alpha));
            (view.q_adv, adv.value)
        }
    };
    let report = StepReport {
        loss_clean: clean.value,
        loss_adv: Some(adv_loss),
        total: clean.value + alpha * adv_loss,
        q_adv: Some(q_adv),
    };
    Ok((report, grads))
}

/// One plain contrastive step: [`plain_gradients`], then the optimizer.
///
/// On an error nothing has changed — with one exception: if the optimizer
/// rejects the gradients it was handed (non-finite after an overflow), the
/// running statistics have already taken this batch.
pub fn plain_step<F: Real>(
    mlp: &mut Mlp<F>,
    opt: &mut Optimizer<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
) -> Result<StepReport<F>> {
    // an optimizer made for another encoder fails before the running
    // statistics move
    opt.check_fits(mlp)?;
    let (report, grads) = plain_gradients(mlp, p, q, loss, tau)?;
    opt.step(mlp, &grads)?;
    Ok(report)
}

/// One CLAE step: [`clae_gradients`], then the optimizer. Errors leave
/// everything as it was, with the exception noted at [`plain_step`].
///
/// ```
/// use ndarray::Array2;
/// use clae_reference::{encoder::{Mlp, MlpConfig}, loss::LossKind};
/// use clae_reference::{optim::{Optimizer, OptimizerConfig}, step::{clae_step, ClaeConfig}};
/// let mut mlp = Mlp::<f32>::new(MlpConfig::new(8, 16, 2, 4), 3).unwrap();
/// let mut opt = Optimizer::new(OptimizerConfig::authors_adam(), &mlp).unwrap();
/// let p = Array2::from_shape_fn((5, 8), |(i, j)| ((3 * i + j) as f32).sin());
/// let q = p.mapv(|v| v * 0.8 + 0.1);
/// let r = clae_step(&mut mlp, &mut opt, p.view(), q.view(), &ClaeConfig::paper(LossKind::SimClr)).unwrap();
/// assert_eq!(r.total, r.loss_clean + r.loss_adv.unwrap());
/// ```
pub fn clae_step<F: Real>(
    mlp: &mut Mlp<F>,
    opt: &mut Optimizer<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &ClaeConfig<F>,
) -> Result<StepReport<F>> {
    opt.check_fits(mlp)?;
    let (report, grads) = clae_gradients(mlp, p, q, cfg)?;
    opt.step(mlp, &grads)?;
    Ok(report)
}
