//! The plain and CLAE training steps of docs/SPEC.md §5.
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
//!
//! Every step computes everything first — forwards, losses, gradients, the
//! optimizer's update and the new running statistics — checks it, and only
//! then commits: a step that returns an error has changed nothing.

use crate::adversarial::{authors_view, lean_view, AdvConfig, Recipe};
use crate::check::{self, Domain};
use crate::encoder::{
    backward_pass, check_grads, Branch, Forward, Mlp, MlpGrads, Mode, Running, StatsLog,
};
use crate::error::{ClaeError, Result};
use crate::loss::{checked_loss, LossKind};
use crate::optim::Optimizer;
use crate::real::Real;
use ndarray::{Array2, ArrayView2};

// --------------------------------------------------------------- the steps --

/// What a step computed, nothing committed yet.
pub(crate) struct Pass<F> {
    pub(crate) report: StepReport<F>,
    pub(crate) grads: MlpGrads<F>,
    /// The running statistics to commit.
    pub(crate) running: Running<F>,
    /// `max |g|` of every present gradient (checked finite).
    pub(crate) grad_mags: Vec<Option<f64>>,
}

/// `dL/dθ` of one forward pass, for the `dz = dL/dz` its embeddings got.
fn grads_of<F: Real>(mlp: &Mlp<F>, fwd: &Forward<F>, dz: &Array2<F>) -> MlpGrads<F> {
    backward_pass(mlp, fwd, dz.view()).0
}

/// A plain step's loss and gradients, and the running statistics it would
/// leave (not committed). Input checked by the caller.
fn plain_pass<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
) -> Result<Pass<F>> {
    let clean = Mode::Train(Branch::Clean);
    let fwd_p = mlp.forward_checked("P", p, clean)?;
    let fwd_q = mlp.forward_checked("Q", q, clean)?;
    let out = checked_loss(
        loss,
        fwd_p.z.view(),
        fwd_q.z.view(),
        tau,
        "the embeddings of P, Q and tau",
    )?;
    let mut grads = grads_of(mlp, &fwd_p, &out.grad_z_p);
    grads.add_unchecked(&grads_of(mlp, &fwd_q, &out.grad_z_q));
    let grad_mags = check_grads(mlp, &grads, "P and Q")?;
    let running = mlp.running_after([fwd_p.stats_of(), fwd_q.stats_of()], "P and Q")?;
    let report = StepReport {
        loss_clean: out.value,
        loss_adv: None,
        total: out.value,
        q_adv: None,
    };
    Ok(Pass {
        report,
        grads,
        running,
        grad_mags,
    })
}

/// A CLAE step's losses and gradients, and the running statistics it would
/// leave (not committed). Input checked by the caller.
fn clae_pass<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &ClaeConfig,
) -> Result<Pass<F>> {
    let (loss, recipe) = (cfg.loss, cfg.recipe);
    let tau = check::tau::<F>(cfg.tau)?;
    let alpha = check::hyper::<F>("alpha", cfg.alpha, Domain::NonNegative)?;
    let adv_cfg = cfg.adv.resolve::<F>()?;
    let (clean, adv) = (Mode::Train(Branch::Clean), Mode::Train(Branch::Adv));

    let fwd_p = mlp.forward_checked("P", p, clean)?;
    let fwd_q = mlp.forward_checked("Q", q, clean)?;
    let l_clean = checked_loss(
        loss,
        fwd_p.z.view(),
        fwd_q.z.view(),
        tau,
        "the embeddings of P, Q and tau",
    )?;
    let mut passes: StatsLog<F> = vec![(clean, fwd_p.stats.clone()), (clean, fwd_q.stats.clone())];
    let mut grads = MlpGrads::none(mlp);
    let (q_adv, l_adv) = match recipe {
        Recipe::Lean => {
            let view = lean_view(mlp, p, q, loss, tau, &adv_cfg)?;
            let fwd_a = mlp.forward_checked("Q_adv", view.q_adv.view(), adv)?;
            let l_adv = checked_loss(
                loss,
                fwd_p.z.view(),
                fwd_a.z.view(),
                tau,
                "the embeddings of P, Q_adv and tau",
            )?;
            // Z_P is shared: its two gradients are summed before one backward pass.
            let dz_p = &l_clean.grad_z_p + &(&l_adv.grad_z_p * alpha);
            grads.add_unchecked(&grads_of(mlp, &fwd_p, &dz_p));
            grads.add_unchecked(&grads_of(mlp, &fwd_q, &l_clean.grad_z_q));
            grads.add_unchecked(&grads_of(mlp, &fwd_a, &(&l_adv.grad_z_q * alpha)));
            passes.push((adv, fwd_a.stats));
            (view.q_adv, l_adv.value)
        }
        Recipe::Authors => {
            let (view, view_passes) = authors_view(mlp, p, q, loss, tau, &adv_cfg)?;
            passes.extend(view_passes);
            // The authors' Plain variant recomputes f_clean(P) for the second term.
            let fwd_p2 = if loss == LossKind::Plain {
                let f = mlp.forward_checked("P", p, clean)?;
                passes.push((clean, f.stats.clone()));
                Some(f)
            } else {
                None
            };
            let fwd_a = mlp.forward_checked("Q_adv", view.q_adv.view(), adv)?;
            let anchor = fwd_p2.as_ref().unwrap_or(&fwd_p);
            let l_adv = checked_loss(
                loss,
                anchor.z.view(),
                fwd_a.z.view(),
                tau,
                "the embeddings of P, Q_adv and tau",
            )?;
            let adv_dz_p = &l_adv.grad_z_p * alpha;
            match &fwd_p2 {
                Some(f) => {
                    grads.add_unchecked(&grads_of(mlp, &fwd_p, &l_clean.grad_z_p));
                    grads.add_unchecked(&grads_of(mlp, f, &adv_dz_p));
                }
                None => {
                    grads.add_unchecked(&grads_of(mlp, &fwd_p, &(&l_clean.grad_z_p + &adv_dz_p)))
                }
            }
            grads.add_unchecked(&grads_of(mlp, &fwd_q, &l_clean.grad_z_q));
            grads.add_unchecked(&grads_of(mlp, &fwd_a, &(&l_adv.grad_z_q * alpha)));
            passes.push((adv, fwd_a.stats));
            (view.q_adv, l_adv.value)
        }
    };
    let total = l_clean.value + alpha * l_adv;
    if !total.is_finite() {
        return Err(ClaeError::Overflow {
            cause: format!("alpha = {}", cfg.alpha),
            quantity: "L_total = L(Z_P, Z_Q) + alpha L(Z_P, Z_A)".into(),
            precision: F::NAME.to_string(),
        });
    }
    let grad_mags = check_grads(mlp, &grads, "P, Q, Q_adv and alpha")?;
    let running = mlp.running_after(
        passes.iter().map(|(m, s)| (*m, s.as_slice())),
        "P, Q and Q_adv",
    )?;
    let report = StepReport {
        loss_clean: l_clean.value,
        loss_adv: Some(l_adv),
        total,
        q_adv: Some(q_adv),
    };
    Ok(Pass {
        report,
        grads,
        running,
        grad_mags,
    })
}

// ------------------------------------------------------------ the config --

/// Everything that defines a CLAE step besides the optimizer.
/// Hyper-parameters are `f64`, checked in the element type where they are
/// used ([`ClaeConfig::validate_for`]).
///
/// ```
/// use clae_reference::{loss::LossKind, step::ClaeConfig};
/// let c = ClaeConfig::paper(LossKind::SimClr);
/// assert_eq!((c.tau, c.alpha, c.adv.eps), (0.5, 1.0, 0.03));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClaeConfig {
    /// Which loss `L`.
    pub loss: LossKind,
    /// Temperature, finite and `> 0`.
    pub tau: f64,
    /// Weight of the adversarial term, finite and `>= 0`.
    pub alpha: f64,
    /// The adversarial view.
    pub adv: AdvConfig,
    /// How the view is computed (same numbers, different cost).
    pub recipe: Recipe,
}

impl ClaeConfig {
    /// docs/SPEC.md defaults for `loss`: its `tau` and `eps`, `alpha = 1`,
    /// FGSM on `P`, no clamp, lean recipe.
    pub fn paper(loss: LossKind) -> Self {
        ClaeConfig {
            loss,
            tau: loss.default_tau(),
            alpha: 1.0,
            adv: AdvConfig::fgsm(loss.default_eps()),
            recipe: Recipe::Lean,
        }
    }

    /// Checks `tau`, `alpha` and the adversarial configuration (in `f64`).
    pub fn validate(&self) -> Result<()> {
        self.validate_for::<f64>()
    }

    /// [`ClaeConfig::validate`] in the element type `F`.
    pub fn validate_for<F: Real>(&self) -> Result<()> {
        check::tau::<F>(self.tau)?;
        check::hyper::<F>("alpha", self.alpha, Domain::NonNegative)?;
        self.adv.validate_for::<F>()
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

// -------------------------------------------------------- the public API --

/// The two views of a batch for `mlp`, in docs/SPEC.md §7.1's order: same
/// shape and `N >= 2`, small enough for the step's activations, finite.
fn check_views<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    adv: Option<&AdvConfig>,
) -> Result<()> {
    check::pair_shapes(("P", p), ("Q", q), Some(mlp.config().d_in))?;
    mlp.config().check_batch_size::<F>("P", p.nrows())?;
    if let Some(adv) = adv {
        adv.resolve::<F>()?.check_steps(p.nrows(), p.ncols())?;
    }
    check::finite("P", p)?;
    check::finite("Q", q)
}

/// Loss and parameter gradients of a plain step; updates the clean running
/// statistics (P, then Q) but not the parameters. On an error nothing is
/// changed.
pub fn plain_gradients<F: Real>(
    mlp: &mut Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: f64,
) -> Result<(StepReport<F>, MlpGrads<F>)> {
    mlp.validate()?;
    let tau = check::tau::<F>(tau)?;
    check_views(mlp, p, q, None)?;
    let pass = plain_pass(mlp, p, q, loss, tau)?;
    mlp.commit_running(pass.running);
    Ok((pass.report, pass.grads))
}

/// Loss and parameter gradients of a CLAE step; updates running statistics
/// (clean: P, Q; adv: Q_adv — plus the recipe's own side effects) but not
/// the parameters. On an error nothing is changed.
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
    cfg: &ClaeConfig,
) -> Result<(StepReport<F>, MlpGrads<F>)> {
    mlp.validate()?;
    cfg.validate_for::<F>()?;
    check_views(mlp, p, q, Some(&cfg.adv))?;
    let pass = clae_pass(mlp, p, q, cfg)?;
    mlp.commit_running(pass.running);
    Ok((pass.report, pass.grads))
}

/// One plain contrastive step: [`plain_gradients`], then the optimizer.
/// On an error nothing has changed (parameters, running statistics,
/// optimizer state).
pub fn plain_step<F: Real>(
    mlp: &mut Mlp<F>,
    opt: &mut Optimizer<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: f64,
) -> Result<StepReport<F>> {
    let param_mags = mlp.parameter_magnitudes()?;
    opt.check_fits(mlp)?;
    let tau = check::tau::<F>(tau)?;
    check_views(mlp, p, q, None)?;
    let pass = plain_pass(mlp, p, q, loss, tau)?;
    // the optimizer bounds its whole update before it moves anything
    opt.step_measured(mlp, &pass.grads, &param_mags, &pass.grad_mags)?;
    mlp.commit_running(pass.running);
    Ok(pass.report)
}

/// One CLAE step: [`clae_gradients`], then the optimizer. On an error
/// nothing has changed (parameters, running statistics, optimizer state).
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
/// // a batch too large for f32 is an error naming it, and changes nothing
/// let before = mlp.clone();
/// let huge = p.mapv(|v| v * 1e30);
/// let err = clae_step(&mut mlp, &mut opt, huge.view(), q.view(), &ClaeConfig::paper(LossKind::SimClr)).unwrap_err();
/// assert!(err.to_string().contains("caused by P"));
/// assert_eq!(mlp, before);
/// ```
pub fn clae_step<F: Real>(
    mlp: &mut Mlp<F>,
    opt: &mut Optimizer<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &ClaeConfig,
) -> Result<StepReport<F>> {
    let param_mags = mlp.parameter_magnitudes()?;
    opt.check_fits(mlp)?;
    cfg.validate_for::<F>()?;
    check_views(mlp, p, q, Some(&cfg.adv))?;
    let pass = clae_pass(mlp, p, q, cfg)?;
    opt.step_measured(mlp, &pass.grads, &param_mags, &pass.grad_mags)?;
    mlp.commit_running(pass.running);
    Ok(pass.report)
}
