//! The plain and CLAE training steps of docs/SPEC.md §5, generic over the
//! [`Encoder`] (the MLP and the ResNet-18 share this code).
//!
//! ```text
//! Z_P = f_clean(P);  Z_Q = f_clean(Q);  Z_A = f_adv(Q_adv)
//! L_total = L(Z_P, Z_Q) + alpha * L(Z_P, Z_A)       (Z_P computed once, used twice)
//! theta  <- optimizer(theta, dL_total/dtheta)        (autograd)
//! ```
//!
//! Running statistics are updated in the order P, Q (clean branch), then the
//! recipe's generation pass (authors' only), then — authors' recipe with the
//! Plain loss — `f_clean(P)` again, then Q_adv (adv branch): the reference's
//! order. [`ClaeConfig`] is the reference's.

use crate::adversarial::{authors_view_unchecked, lean_view_unchecked, Adv, Recipe};
use crate::check::{self, for_precision, Health};
use crate::encoder::{Branch, BufferSnapshot, Encoder, Gradients, Mode};
use crate::error::Result;
use crate::loss::{checked_loss, LossKind};
use crate::optim::Optimizer;
use crate::peers::{acl_attack_unchecked, rocl_attack_unchecked, PeerConfig, PeerMethod};
use tch::Tensor;

pub use clae_reference::step::ClaeConfig;

/// The loss terms of one step.
#[derive(Debug)]
pub struct StepReport {
    /// `L(Z_P, Z_Q)`.
    pub loss_clean: f64,
    /// `L(Z_P, Z_A)` (CLAE steps only).
    pub loss_adv: Option<f64>,
    /// `L_total = loss_clean + alpha * loss_adv`, computed in the encoder's precision.
    pub total: f64,
    /// The adversarial view used (CLAE steps only).
    pub q_adv: Option<Tensor>,
}

/// Places two views for `enc` and checks their shapes (their values are
/// checked with the step's other checks, in one read).
fn prepare_views<E: Encoder + ?Sized>(enc: &E, p: &Tensor, q: &Tensor) -> Result<(Tensor, Tensor)> {
    let p = crate::convert::placed(p, enc.device(), enc.precision())?;
    let q = crate::convert::placed(q, enc.device(), enc.precision())?;
    check::pair_shapes(("P", &p), ("Q", &q), Some(&enc.input_shape()))?;
    enc.check_activations("P", &p)?;
    Ok((p, q))
}

/// `checks`, the checks a step makes without reading any tensor; if one
/// fails, the encoder's own validation (which reads it) runs first, so the
/// error is the one the reference's order gives (a non-finite parameter
/// before a bad hyper-parameter or view).
fn sync_free<E: Encoder + ?Sized, T>(enc: &E, checks: impl FnOnce() -> Result<T>) -> Result<T> {
    checks().or_else(|e| {
        enc.validate()?;
        Err(e)
    })
}

/// The losses of a step, computed in the encoder's precision: indices of
/// their values in the step's reading.
struct Losses {
    clean: usize,
    adv: Option<usize>,
    total: usize,
}

/// How a step runs, in one place: the checks that need no synchronisation
/// first; then `compute` (forwards, losses, gradients; it updates running
/// statistics in place and pushes its checks into a [`Health`]); then one
/// read of every check — the views' values, the small parameters and the
/// running statistics, the losses, each gradient's `max |g|` and, for a
/// step, the parameters' `max |p|` the optimizer's guard needs; then the
/// optimizer's update, if any.
///
/// On any failure the running statistics are put back (the call changes
/// nothing) and the error is the one the reference's order gives: a
/// non-finite parameter or input is found by the full validation (which
/// only runs then), otherwise the first check that failed is an `Overflow`.
fn atomically<E: Encoder + ?Sized>(
    enc: &mut E,
    views: (&Tensor, &Tensor),
    opt: Option<&mut Optimizer>,
    compute: impl FnOnce(&mut E, &mut Health) -> Result<(Losses, Option<Tensor>, Gradients)>,
) -> Result<(StepReport, Gradients)> {
    let saved = BufferSnapshot::take(enc)?;
    let mut health = Health::new(enc.precision());
    let result = (|| -> Result<(StepReport, Gradients)> {
        let (p, q) = views;
        health.blame("P");
        health.push_finite("P", p)?;
        health.blame("Q");
        health.push_finite("Q", q)?;
        enc.push_small_tensors(&mut health)?;
        let (losses, q_adv, grads) = compute(enc, &mut health)?;
        health.blame("P, Q (and Q_adv), tau and alpha");
        let mut grad_at = Vec::with_capacity(grads.tensors.len());
        for (name, g) in grads.names.iter().zip(&grads.tensors) {
            grad_at.push(match g {
                Some(g) => Some(health.push_finite(format!("the gradient of {name}"), g)?),
                None => None,
            });
        }
        let param_at = match &opt {
            Some(o) => Some(o.push_param_magnitudes(enc, &mut health)?),
            None => None,
        };
        saved.push_running_flag(enc, &mut health)?;
        let reading = health.read()?;
        if let Some(overflow) = reading.failure {
            // invalid input first, as the reference checks it first — on the
            // encoder as it was before this call
            saved.restore(enc)?;
            enc.validate()?;
            check::finite("P", p)?;
            check::finite("Q", q)?;
            return Err(overflow.into());
        }
        let value = |i: usize| reading.values[i];
        let report = StepReport {
            loss_clean: value(losses.clean),
            loss_adv: losses.adv.map(value),
            total: value(losses.total),
            q_adv,
        };
        if let (Some(opt), Some(param_at)) = (opt, param_at) {
            let grad_mags: Vec<Option<f64>> = grad_at.iter().map(|a| a.map(value)).collect();
            opt.step_measured(enc, &grads, &param_at, &reading, &grad_mags)?;
        }
        Ok((report, grads))
    })();
    saved.restore_on_error(enc, result)
}

/// Loss and parameter gradients of a plain step; updates the clean running
/// statistics (P, then Q) but not the parameters. Parameters outside the
/// graph (the adv BatchNorm affine parameters) get `None`.
///
/// ```
/// use clae_accelerated::{device::Precision, mlp::Mlp, step::plain_gradients};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mut mlp = Mlp::new(MlpConfig::new(4, 8, 1, 3), 0, tch::Device::Cpu, Precision::F64).unwrap();
/// let p = tch::Tensor::randn([6, 4], (tch::Kind::Double, tch::Device::Cpu));
/// let (report, grads) = plain_gradients(&mut mlp, &p, &(&p * 0.9), LossKind::Uel, 0.1).unwrap();
/// assert!(report.loss_adv.is_none());
/// assert!(grads.get("backbone.0.bn.adv.weight").is_none());
/// assert!(grads.get("backbone.0.bn.clean.weight").is_some());
/// ```
pub fn plain_gradients<E: Encoder + ?Sized>(
    enc: &mut E,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
) -> Result<(StepReport, Gradients)> {
    plain_run(enc, None, p, q, loss, tau)
}

fn plain_run<E: Encoder + ?Sized>(
    enc: &mut E,
    opt: Option<&mut Optimizer>,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
) -> Result<(StepReport, Gradients)> {
    let (p, q) = sync_free(enc, || {
        check::tau(enc.precision(), tau)?;
        prepare_views(enc, p, q)
    })?;
    atomically(enc, (&p, &q), opt, |enc, health| {
        tch::with_grad(|| {
            let clean = Mode::Train(Branch::Clean);
            health.blame("P");
            let z_p = enc.forward_unchecked(&p, clean, true, health)?;
            health.blame("Q");
            let z_q = enc.forward_unchecked(&q, clean, true, health)?;
            health.blame("the embeddings of P, Q and tau");
            let (l, at) = checked_loss(loss, &z_p, &z_q, tau, health)?;
            let grads = Gradients::of(enc, &l)?;
            let losses = Losses {
                clean: at,
                adv: None,
                total: at,
            };
            Ok((losses, None, grads))
        })
    })
}

/// Loss and parameter gradients of a CLAE step; updates running statistics
/// (clean: P, Q; adv: Q_adv — plus the recipe's own side effects) but not the
/// parameters.
///
/// With [`Recipe::Authors`] the view is made as the public code makes it
/// (see [`crate::adversarial::adversarial_view_authors`]), and for the Plain
/// loss `f_clean(P)` is computed a second time for the adversarial term, as
/// the authors' Plain variant does (updating the clean running statistics
/// once more). `L_total` and `Q_adv` equal the lean recipe's.
///
/// ```
/// use clae_accelerated::{device::Precision, mlp::Mlp, step::{clae_gradients, ClaeConfig}};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mut mlp = Mlp::new(MlpConfig::new(4, 8, 1, 3), 0, tch::Device::Cpu, Precision::F32).unwrap();
/// let p = tch::Tensor::randn([6, 4], (tch::Kind::Float, tch::Device::Cpu));
/// let cfg = ClaeConfig::paper(LossKind::SimClr);
/// let (report, grads) = clae_gradients(&mut mlp, &p, &(&p * 0.9), &cfg).unwrap();
/// assert_eq!(report.q_adv.unwrap().size(), vec![6, 4]);
/// assert!(grads.tensors.iter().all(|g| g.is_some())); // both BN branches took part
/// ```
pub fn clae_gradients<E: Encoder + ?Sized>(
    enc: &mut E,
    p: &Tensor,
    q: &Tensor,
    cfg: &ClaeConfig,
) -> Result<(StepReport, Gradients)> {
    clae_run(enc, None, p, q, cfg)
}

fn clae_run<E: Encoder + ?Sized>(
    enc: &mut E,
    opt: Option<&mut Optimizer>,
    p: &Tensor,
    q: &Tensor,
    cfg: &ClaeConfig,
) -> Result<(StepReport, Gradients)> {
    let (adv, p, q) = sync_free(enc, || {
        for_precision!(enc.precision(), F => cfg.validate_for::<F>())?;
        let adv = Adv::new(&cfg.adv, enc.precision())?;
        let (p, q) = prepare_views(enc, p, q)?;
        adv.check_steps(enc, &p)?;
        Ok((adv, p, q))
    })?;
    let (loss, tau, alpha) = (cfg.loss, cfg.tau, cfg.alpha);
    let clean = Mode::Train(Branch::Clean);
    let adv_mode = Mode::Train(Branch::Adv);
    atomically(enc, (&p, &q), opt, |enc, health| {
        tch::with_grad(|| {
            health.blame("P");
            let z_p = enc.forward_unchecked(&p, clean, true, health)?;
            health.blame("Q");
            let z_q = enc.forward_unchecked(&q, clean, true, health)?;
            health.blame("the embeddings of P, Q and tau");
            let (l_clean, clean_at) = checked_loss(loss, &z_p, &z_q, tau, health)?;
            let (q_adv, (l_adv, adv_at)) = match cfg.recipe {
                Recipe::Lean => {
                    let view = lean_view_unchecked(enc, &p, &q, loss, tau, &adv, health)?;
                    health.blame("Q_adv");
                    let z_a = enc.forward_unchecked(&view.q_adv, adv_mode, true, health)?;
                    health.blame("the embeddings of P, Q_adv and tau");
                    (view.q_adv, checked_loss(loss, &z_p, &z_a, tau, health)?)
                }
                Recipe::Authors => {
                    let view = authors_view_unchecked(enc, &p, &q, loss, tau, &adv, health)?;
                    // The authors' Plain variant recomputes f_clean(P) for the second term.
                    let anchors = if loss == LossKind::Plain {
                        health.blame("P");
                        enc.forward_unchecked(&p, clean, true, health)?
                    } else {
                        z_p.shallow_clone()
                    };
                    health.blame("Q_adv");
                    let z_a = enc.forward_unchecked(&view.q_adv, adv_mode, true, health)?;
                    health.blame("the embeddings of P, Q_adv and tau");
                    (view.q_adv, checked_loss(loss, &anchors, &z_a, tau, health)?)
                }
            };
            let total = l_clean.f_add(&l_adv.f_mul_scalar(alpha)?)?;
            health.blame(&format!("alpha = {alpha}"));
            let total_at = health.push(
                "L_total = L(Z_P, Z_Q) + alpha L(Z_P, Z_A)",
                total.f_detach()?,
            );
            let grads = Gradients::of(enc, &total)?;
            let losses = Losses {
                clean: clean_at,
                adv: Some(adv_at),
                total: total_at,
            };
            Ok((losses, Some(q_adv), grads))
        })
    })
}

/// One plain contrastive step: [`plain_gradients`], then the optimizer —
/// all or nothing, with one read of every check.
pub fn plain_step<E: Encoder + ?Sized>(
    enc: &mut E,
    opt: &mut Optimizer,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
) -> Result<StepReport> {
    sync_free(enc, || opt.check_fits(enc))?;
    Ok(plain_run(enc, Some(opt), p, q, loss, tau)?.0)
}

/// One CLAE step: [`clae_gradients`], then the optimizer — all or nothing,
/// with one read of every check.
///
/// ```
/// use clae_accelerated::{device::Precision, mlp::Mlp};
/// use clae_accelerated::{optim::{Optimizer, OptimizerConfig}, step::{clae_step, ClaeConfig}};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mut mlp = Mlp::new(MlpConfig::new(8, 16, 2, 4), 3, tch::Device::Cpu, Precision::F32).unwrap();
/// let mut opt = Optimizer::new(OptimizerConfig::authors_adam(), &mlp).unwrap();
/// let p = tch::Tensor::randn([5, 8], (tch::Kind::Float, tch::Device::Cpu));
/// let r = clae_step(&mut mlp, &mut opt, &p, &(&p * 0.8), &ClaeConfig::paper(LossKind::SimClr)).unwrap();
/// assert!((r.total - (r.loss_clean + r.loss_adv.unwrap())).abs() < 1e-5);
/// ```
pub fn clae_step<E: Encoder + ?Sized>(
    enc: &mut E,
    opt: &mut Optimizer,
    p: &Tensor,
    q: &Tensor,
    cfg: &ClaeConfig,
) -> Result<StepReport> {
    sync_free(enc, || opt.check_fits(enc))?;
    Ok(clae_run(enc, Some(opt), p, q, cfg)?.0)
}

/// Loss and parameter gradients of a peer step (docs/SPEC.md §6.1: ACL or
/// RoCL style); updates the running statistics (clean: P, Q; adv: the
/// adversarial views) but not the parameters. The report's `q_adv` is the
/// view of `P`; `loss_adv` the adversarial term's `L`.
pub fn peer_gradients<E: Encoder + ?Sized>(
    enc: &mut E,
    p: &Tensor,
    q: &Tensor,
    cfg: &PeerConfig,
) -> Result<(StepReport, Gradients)> {
    peer_run(enc, None, p, q, cfg)
}

/// One peer step: [`peer_gradients`], then the optimizer — all or nothing.
///
/// ```
/// use clae_accelerated::{device::Precision, mlp::Mlp, optim::{Optimizer, OptimizerConfig}};
/// use clae_accelerated::{peers::PeerConfig, step::peer_step};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mut mlp = Mlp::new(MlpConfig::new(8, 16, 2, 4), 3, tch::Device::Cpu, Precision::F32).unwrap();
/// let mut opt = Optimizer::new(OptimizerConfig::authors_adam(), &mlp).unwrap();
/// let p = tch::Tensor::rand([5, 8], (tch::Kind::Float, tch::Device::Cpu));
/// let r = peer_step(&mut mlp, &mut opt, &p, &(&p * 0.9), &PeerConfig::acl(LossKind::SimClr)).unwrap();
/// assert!((r.total - 0.5 * (r.loss_clean + r.loss_adv.unwrap())).abs() < 1e-5);
/// ```
pub fn peer_step<E: Encoder + ?Sized>(
    enc: &mut E,
    opt: &mut Optimizer,
    p: &Tensor,
    q: &Tensor,
    cfg: &PeerConfig,
) -> Result<StepReport> {
    sync_free(enc, || opt.check_fits(enc))?;
    Ok(peer_run(enc, Some(opt), p, q, cfg)?.0)
}

fn peer_run<E: Encoder + ?Sized>(
    enc: &mut E,
    opt: Option<&mut Optimizer>,
    p: &Tensor,
    q: &Tensor,
    cfg: &PeerConfig,
) -> Result<(StepReport, Gradients)> {
    let (p, q) = sync_free(enc, || {
        for_precision!(enc.precision(), F => cfg.validate_for::<F>())?;
        let (p, q) = prepare_views(enc, p, q)?;
        crate::peers::check_size(enc, cfg, &p)?;
        Ok((p, q))
    })?;
    let (loss, tau, pgd) = (cfg.loss, cfg.tau, cfg.pgd);
    let clean = Mode::Train(Branch::Clean);
    let adv = Mode::Train(Branch::Adv);
    atomically(enc, (&p, &q), opt, |enc, health| {
        tch::with_grad(|| {
            // the views first (parameters frozen, nothing updated), then the
            // training passes in the reference's order: P, Q clean, views adv
            let views = match cfg.method {
                PeerMethod::Acl => {
                    let (x1, x2) =
                        acl_attack_unchecked(enc, &p, &q, loss, tau, &pgd, health, None)?;
                    vec![x1, x2]
                }
                PeerMethod::Rocl { .. } => {
                    vec![rocl_attack_unchecked(
                        enc, &p, &q, loss, tau, &pgd, health, None,
                    )?]
                }
            };
            health.blame("P");
            let z_p = enc.forward_unchecked(&p, clean, true, health)?;
            health.blame("Q");
            let z_q = enc.forward_unchecked(&q, clean, true, health)?;
            let mut z_adv = Vec::with_capacity(views.len());
            for v in &views {
                health.blame("the adversarial views");
                z_adv.push(enc.forward_unchecked(v, adv, true, health)?);
            }
            health.blame("the embeddings of P, Q and tau");
            let (l_clean, clean_at) = checked_loss(loss, &z_p, &z_q, tau, health)?;
            health.blame("the embeddings of the adversarial views and tau");
            // ACL: ½ L(Z_P, Z_Q) + ½ L(Z_X₁, Z_X₂); RoCL: L(Z_P, Z_Q) + λ L(Z_Q, Z_X)
            let (total, adv_at) = match cfg.method {
                PeerMethod::Acl => {
                    let (l_adv, at) = checked_loss(loss, &z_adv[0], &z_adv[1], tau, health)?;
                    let half = |l: &Tensor| l.f_mul_scalar(0.5);
                    (half(&l_clean)?.f_add(&half(&l_adv)?)?, at)
                }
                PeerMethod::Rocl { weight } => {
                    let (l_adv, at) = checked_loss(loss, &z_q, &z_adv[0], tau, health)?;
                    (l_clean.f_add(&l_adv.f_mul_scalar(weight)?)?, at)
                }
            };
            health.blame("the loss terms and their weights");
            let total_at = health.push("L_total", total.f_detach()?);
            let grads = Gradients::of(enc, &total)?;
            let losses = Losses {
                clean: clean_at,
                adv: Some(adv_at),
                total: total_at,
            };
            Ok((losses, views.into_iter().next(), grads))
        })
    })
}
