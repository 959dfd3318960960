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

/// Places and validates two views for `enc`.
fn prepare_views<E: Encoder + ?Sized>(enc: &E, p: &Tensor, q: &Tensor) -> Result<(Tensor, Tensor)> {
    let p = crate::convert::placed(p, enc.device(), enc.precision())?;
    let q = crate::convert::placed(q, enc.device(), enc.precision())?;
    check::pair(("P", &p), ("Q", &q), Some(&enc.input_shape()))?;
    enc.check_activations("P", &p)?;
    Ok((p, q))
}

/// Runs `compute` — which updates running statistics in place and pushes
/// representability flags — then checks the flags, the gradients and the
/// updated running statistics; on any error the running statistics are put
/// back, so the call changes nothing.
fn atomically<E: Encoder + ?Sized, T>(
    enc: &mut E,
    compute: impl FnOnce(&mut E, &mut Health) -> Result<(T, Gradients)>,
) -> Result<(T, Gradients)> {
    let saved = BufferSnapshot::take(enc)?;
    let mut health = Health::new(enc.precision());
    let result = compute(enc, &mut health).and_then(|(out, grads)| {
        health.blame("P, Q (and Q_adv), tau and alpha");
        for (name, g) in grads.names.iter().zip(&grads.tensors) {
            if let Some(g) = g {
                health.push_finite(format!("the gradient of {name}"), g)?;
            }
        }
        saved.push_running_flag(enc, &mut health)?;
        health.check()?;
        Ok((out, grads))
    });
    saved.restore_on_error(enc, result)
}

/// The values of 0-d tensors, with one transfer.
fn values(ts: &[&Tensor]) -> Result<Vec<f64>> {
    let stacked = Tensor::f_stack(ts, 0)?.f_detach()?;
    Ok(Vec::<f64>::try_from(
        &stacked
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(tch::Kind::Double)?,
    )?)
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
    enc.validate()?;
    check::tau(enc.precision(), tau)?;
    let (p, q) = prepare_views(enc, p, q)?;
    atomically(enc, |enc, health| {
        tch::with_grad(|| {
            let clean = Mode::Train(Branch::Clean);
            health.blame("P");
            let z_p = enc.forward_unchecked(&p, clean, true, health)?;
            health.blame("Q");
            let z_q = enc.forward_unchecked(&q, clean, true, health)?;
            health.blame("the embeddings of P, Q and tau");
            let l = checked_loss(loss, &z_p, &z_q, tau, health)?;
            let grads = Gradients::of(enc, &l)?;
            let v = values(&[&l])?;
            Ok((
                StepReport {
                    loss_clean: v[0],
                    loss_adv: None,
                    total: v[0],
                    q_adv: None,
                },
                grads,
            ))
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
    enc.validate()?;
    for_precision!(enc.precision(), F => cfg.validate_for::<F>())?;
    let adv = Adv::new(&cfg.adv, enc.precision())?;
    let (p, q) = prepare_views(enc, p, q)?;
    let (loss, tau, alpha) = (cfg.loss, cfg.tau, cfg.alpha);
    let clean = Mode::Train(Branch::Clean);
    let adv_mode = Mode::Train(Branch::Adv);
    atomically(enc, |enc, health| {
        tch::with_grad(|| {
            health.blame("P");
            let z_p = enc.forward_unchecked(&p, clean, true, health)?;
            health.blame("Q");
            let z_q = enc.forward_unchecked(&q, clean, true, health)?;
            health.blame("the embeddings of P, Q and tau");
            let l_clean = checked_loss(loss, &z_p, &z_q, tau, health)?;
            let (q_adv, l_adv) = match cfg.recipe {
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
            health.push(
                "L_total = L(Z_P, Z_Q) + alpha L(Z_P, Z_A)",
                total.f_detach()?.f_to_kind(tch::Kind::Double)?,
            );
            let grads = Gradients::of(enc, &total)?;
            let v = values(&[&l_clean, &l_adv, &total])?;
            Ok((
                StepReport {
                    loss_clean: v[0],
                    loss_adv: Some(v[1]),
                    total: v[2],
                    q_adv: Some(q_adv),
                },
                grads,
            ))
        })
    })
}

/// One plain contrastive step: [`plain_gradients`], then the optimizer.
pub fn plain_step<E: Encoder + ?Sized>(
    enc: &mut E,
    opt: &mut Optimizer,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
) -> Result<StepReport> {
    opt.check_fits(enc)?;
    let saved = BufferSnapshot::take(enc)?;
    let (report, grads) = plain_gradients(enc, p, q, loss, tau)?;
    let stepped = opt.step(enc, &grads);
    saved.restore_on_error(enc, stepped.map(|()| report))
}

/// One CLAE step: [`clae_gradients`], then the optimizer.
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
    opt.check_fits(enc)?;
    let saved = BufferSnapshot::take(enc)?;
    let (report, grads) = clae_gradients(enc, p, q, cfg)?;
    // the optimizer checks its whole update before it moves anything; if it
    // fails, the running statistics the gradients pass updated go back too
    let stepped = opt.step(enc, &grads);
    saved.restore_on_error(enc, stepped.map(|()| report))
}
