//! The adversarial view of docs/SPEC.md §4 (FGSM over the whole batch, and PGD) and
//! the two recipes of docs/SPEC.md §6 that compute it.
//!
//! ```text
//! W     = sg( f_adv(P) )                      anchors through the adv BN branch
//! g     = d/dX L( W, f_adv(X) )  at X = Q_start          (autograd)
//! Q_adv = Q_start + eps * sign(g)             torch.sign: sign(0) = 0
//! Q_adv = clamp(Q_adv, lo, hi)                only if a pixel range is given
//! ```
//!
//! * **lean** ([`adversarial_view`]): the parameters' `requires_grad` is off
//!   for the whole pass, so autograd records only the input's graph; with
//!   `Q_start = P` one adv-mode forward gives both the anchors (detached) and
//!   `f_adv(X)`; `torch.autograd.grad(L, X)` is a backward to the input only.
//!   Batch statistics are used but no running statistics are updated.
//! * **authors'** ([`adversarial_view_authors`]): as the public code, per
//!   step `f_adv(P)` and `f_adv(X)` (a fresh leaf copied from `X`) in
//!   training mode — each updating the adv BatchNorm running statistics —
//!   then a full backward that also computes every parameter gradient
//!   (discarded).
//!
//! Both give the same `g` and `Q_adv`: the anchors carry no gradient into
//! `X` either way, and running statistics play no part in training mode.
//! The vocabulary ([`AdvConfig`], [`Attack`], [`QStart`], [`Recipe`]) is the
//! reference's.

use crate::check::{self, for_precision, Health};
use crate::encoder::{gradients_of, Branch, BufferSnapshot, Encoder, FrozenParameters, Mode};
use crate::error::{Error, Result};
use crate::loss::{checked_loss, LossKind};
use tch::Tensor;

pub use clae_reference::adversarial::{AdvConfig, Attack, QStart, Recipe};

/// The view and the input gradients that made it.
#[derive(Debug)]
pub struct AdvView {
    /// `Q_adv`, same shape as the views.
    pub q_adv: Tensor,
    /// `g` at every step (one for FGSM), same shape as the views.
    pub grads: Vec<Tensor>,
}

/// The hyper-parameters of an [`AdvConfig`], checked in the encoder's
/// precision by the reference's rules (libtorch rounds the `f64` scalars to
/// the tensors' type exactly as the reference's `F::c` does).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adv {
    pub(crate) eps: f64,
    pub(crate) start: QStart,
    /// `(steps, eta)`; FGSM is `(1, eps)` without the projection.
    pub(crate) pgd: Option<(usize, f64)>,
    pub(crate) clamp: Option<(f64, f64)>,
}

impl Adv {
    /// Validates `cfg` with the reference's own rules in `precision`.
    pub(crate) fn new(cfg: &AdvConfig, precision: crate::device::Precision) -> Result<Self> {
        for_precision!(precision, F => cfg.validate_for::<F>())?;
        Ok(Adv {
            eps: cfg.eps,
            start: cfg.start,
            pgd: match cfg.attack {
                Attack::Fgsm => None,
                Attack::Pgd { steps, eta } => Some((steps, eta)),
            },
            clamp: cfg.clamp,
        })
    }

    fn steps(&self) -> usize {
        self.pgd.map_or(1, |(k, _)| k)
    }

    /// The reference's rule: the view keeps `g` of every step, `k` arrays
    /// shaped like the batch, which must be addressable and allocatable.
    pub(crate) fn check_steps<E: Encoder + ?Sized>(&self, enc: &E, x: &Tensor) -> Result<()> {
        let what = "the input gradients of every PGD step";
        let kept = clae_reference::check::elements(what, &[self.steps(), x.numel()])?;
        for_precision!(enc.precision(), F => clae_reference::check::allocatable::<F>(what, kept))?;
        Ok(())
    }
}

/// Places both views on the encoder's device and precision and validates
/// encoder, `tau`, config and views (the reference's order).
pub(crate) fn prepare<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    (q_name, q): (&str, &Tensor),
    tau: f64,
    cfg: &AdvConfig,
) -> Result<(Tensor, Tensor, Adv)> {
    enc.validate()?;
    check::tau(enc.precision(), tau)?;
    let adv = Adv::new(cfg, enc.precision())?;
    let p = crate::convert::placed(p, enc.device(), enc.precision())?;
    let q = crate::convert::placed(q, enc.device(), enc.precision())?;
    check::pair_shapes(("P", &p), (q_name, &q), Some(&enc.input_shape()))?;
    enc.check_activations("P", &p)?;
    adv.check_steps(enc, &p)?;
    check::finite("P", &p)?;
    check::finite(q_name, &q)?;
    Ok((p, q, adv))
}

/// `x` as a fresh leaf that requires grad (`X = Q_start.clone().requires_grad_()`).
fn leaf(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_detach()?.f_set_requires_grad(true)?)
}

fn one_gradient(output: &Tensor, input: &Tensor) -> Result<Tensor> {
    gradients_of(output, &[input])?
        .pop()
        .flatten()
        .ok_or_else(|| Error::Torch("the loss does not depend on the input".into()))
}

/// One sign step from `x`, without autograd: FGSM `x + eps·sign(g)`, or a PGD
/// step `min(max(x + eta·sign(g), start − eps), start + eps)`.
fn sign_step(x: &Tensor, g: &Tensor, start: &Tensor, adv: &Adv) -> Result<Tensor> {
    tch::no_grad(|| match adv.pgd {
        None => Ok(x.f_add(&g.f_sign()?.f_mul_scalar(adv.eps)?)?),
        Some((_, eta)) => {
            let stepped = x.f_add(&g.f_sign()?.f_mul_scalar(eta)?)?;
            let lower = start.f_sub_scalar(adv.eps)?;
            let upper = start.f_add_scalar(adv.eps)?;
            Ok(stepped.f_maximum(&lower)?.f_minimum(&upper)?)
        }
    })
}

fn apply_clamp(x: Tensor, adv: &Adv) -> Result<Tensor> {
    match adv.clamp {
        Some((lo, hi)) => Ok(tch::no_grad(|| x.f_clamp(lo, hi))?),
        None => Ok(x),
    }
}

/// The input gradient `g = d/dX L(sg(f_adv(P)), f_adv(X))` of docs/SPEC.md §4, both
/// forwards in training mode through the adv branch, no side effects.
/// `p, x`: `N x …` (the encoder's image shape) → `g` of the same shape.
///
/// ```
/// use clae_accelerated::{adversarial::input_gradient, device::Precision, mlp::Mlp};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mlp = Mlp::new(MlpConfig::new(4, 6, 1, 3), 1, tch::Device::Cpu, Precision::F64).unwrap();
/// let p = tch::Tensor::randn([3, 4], (tch::Kind::Double, tch::Device::Cpu));
/// let g = input_gradient(&mlp, &p, &p, LossKind::Plain, 0.1).unwrap();
/// assert_eq!(g.size(), vec![3, 4]);
/// ```
pub fn input_gradient<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    x: &Tensor,
    loss: LossKind,
    tau: f64,
) -> Result<Tensor> {
    let (p, x, _) = prepare(enc, p, ("X", x), tau, &AdvConfig::fgsm(0.0))?;
    let mode = Mode::Train(Branch::Adv);
    let _frozen = FrozenParameters::new(enc)?;
    let mut health = Health::new(enc.precision());
    let g = tch::with_grad(|| {
        health.blame("P (adversarial branch)");
        let w = tch::no_grad(|| enc.forward_unchecked(&p, mode, false, &mut health))?;
        let x = leaf(&x)?;
        health.blame("X");
        let z = enc.forward_unchecked(&x, mode, false, &mut health)?;
        one_gradient(&checked_loss(loss, &w, &z, tau, &mut health)?.0, &x)
    })?;
    health.blame("P, X and tau");
    health.push_finite("the input gradient g", &g)?;
    health.check()?;
    Ok(g)
}

/// The adversarial view by the **lean** recipe (docs/SPEC.md §4 and 6), with no side
/// effects: parameters frozen, one adv-mode forward per step (plus one for
/// the anchors when `Q_start = Q`), input-only backward.
///
/// ```
/// use clae_accelerated::{adversarial::{adversarial_view, AdvConfig}, device::Precision, mlp::Mlp};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mlp = Mlp::new(MlpConfig::new(4, 6, 1, 3), 1, tch::Device::Cpu, Precision::F64).unwrap();
/// let p = tch::Tensor::randn([3, 4], (tch::Kind::Double, tch::Device::Cpu));
/// let view = adversarial_view(&mlp, &p, &p, LossKind::Uel, 0.1, &AdvConfig::fgsm(0.03)).unwrap();
/// // every pixel moved by exactly eps (or not at all where g = 0)
/// let moved = (&view.q_adv - &p).abs();
/// let off = (&moved - 0.03).abs().minimum(&moved).max().double_value(&[]);
/// assert!(off < 1e-15);
/// ```
pub fn adversarial_view<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
    cfg: &AdvConfig,
) -> Result<AdvView> {
    let (p, q, adv) = prepare(enc, p, ("Q", q), tau, cfg)?;
    let mut health = Health::new(enc.precision());
    let view = lean_view_unchecked(enc, &p, &q, loss, tau, &adv, &mut health)?;
    health.check()?;
    Ok(view)
}

/// The lean view on checked input; its representability flags go into
/// `health` (the caller checks them).
pub(crate) fn lean_view_unchecked<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
    adv: &Adv,
    health: &mut Health,
) -> Result<AdvView> {
    let start = match adv.start {
        QStart::P => p,
        QStart::Q => q,
    };
    let mode = Mode::Train(Branch::Adv);
    let _frozen = FrozenParameters::new(enc)?;
    tch::with_grad(|| {
        // Anchors: with Q_start = P they come out of the first step's forward.
        health.blame("P (adversarial branch)");
        let mut w = match adv.start {
            QStart::P => None,
            QStart::Q => Some(tch::no_grad(|| {
                enc.forward_unchecked(p, mode, false, health)
            })?),
        };
        let mut x = start.shallow_clone();
        let mut grads = Vec::with_capacity(adv.steps());
        for step in 0..adv.steps() {
            if step > 0 || adv.start == QStart::Q {
                health.blame("the adversarial view");
            }
            let x_leaf = leaf(&x)?;
            let z = enc.forward_unchecked(&x_leaf, mode, false, health)?;
            let anchors = match &w {
                Some(w) => w.shallow_clone(),
                None => {
                    let detached = z.f_detach()?;
                    w = Some(detached.shallow_clone());
                    detached
                }
            };
            health.blame("the adversarial pass's embeddings and tau");
            let g = one_gradient(&checked_loss(loss, &anchors, &z, tau, health)?.0, &x_leaf)?;
            health.blame("the adversarial pass (P, Q_start and tau)");
            health.push_finite("the input gradient g", &g)?;
            x = sign_step(&x, &g, start, adv)?;
            grads.push(g);
        }
        finish(x, grads, adv, health)
    })
}

/// Clamp, and the flag that `Q_adv` is representable.
fn finish(x: Tensor, grads: Vec<Tensor>, adv: &Adv, health: &mut Health) -> Result<AdvView> {
    let q_adv = apply_clamp(x, adv)?;
    health.blame("Q_start and eps");
    health.push_finite("Q_adv = Q_start + eps sign(g)", &q_adv)?;
    Ok(AdvView { q_adv, grads })
}

/// The adversarial view by the **authors'** recipe (docs/SPEC.md §6): per step,
/// training-mode adv forwards of `P` and of a fresh leaf `X`, each updating
/// the adv BatchNorm running statistics (as `model(x, adv=True)` does), and
/// one backward of `L(f_adv(P), f_adv(X))` that also computes every
/// parameter gradient (discarded; nothing is accumulated into `.grad`).
/// Same `Q_adv` as [`adversarial_view`]; more work, and these side effects.
///
/// ```
/// use clae_accelerated::{adversarial::{adversarial_view, adversarial_view_authors, AdvConfig}};
/// use clae_accelerated::{device::Precision, encoder::Encoder, mlp::Mlp};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mut mlp = Mlp::new(MlpConfig::new(4, 6, 1, 3), 1, tch::Device::Cpu, Precision::F64).unwrap();
/// let p = tch::Tensor::randn([5, 4], (tch::Kind::Double, tch::Device::Cpu));
/// let cfg = AdvConfig::fgsm(0.03);
/// let lean = adversarial_view(&mlp, &p, &p, LossKind::SimClr, 0.5, &cfg).unwrap();
/// let authors = adversarial_view_authors(&mut mlp, &p, &p, LossKind::SimClr, 0.5, &cfg).unwrap();
/// assert!(lean.q_adv.allclose(&authors.q_adv, 0.0, 0.0, false));
/// // the authors' pass moved the adv running mean
/// let rm = mlp.state_dict::<f64>().unwrap();
/// assert!(rm.get("backbone.0.bn.adv.running_mean").unwrap().iter().any(|&v| v != 0.0));
/// ```
pub fn adversarial_view_authors<E: Encoder + ?Sized>(
    enc: &mut E,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
    cfg: &AdvConfig,
) -> Result<AdvView> {
    let (p, q, adv) = prepare(enc, p, ("Q", q), tau, cfg)?;
    let saved = BufferSnapshot::take(enc)?;
    let mut health = Health::new(enc.precision());
    let view = authors_view_unchecked(enc, &p, &q, loss, tau, &adv, &mut health).and_then(|v| {
        saved.push_running_flag(enc, &mut health)?;
        health.check()?;
        Ok(v)
    });
    saved.restore_on_error(enc, view)
}

/// The authors' view on checked input; updates the adv running statistics
/// in place and pushes its flags into `health` (the caller checks them and
/// restores the statistics if they fail).
pub(crate) fn authors_view_unchecked<E: Encoder + ?Sized>(
    enc: &mut E,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
    adv: &Adv,
    health: &mut Health,
) -> Result<AdvView> {
    let start = match adv.start {
        QStart::P => p,
        QStart::Q => q,
    };
    let mode = Mode::Train(Branch::Adv);
    let params = enc.parameters();
    tch::with_grad(|| {
        let mut x = start.shallow_clone();
        let mut grads = Vec::with_capacity(adv.steps());
        for _ in 0..adv.steps() {
            health.blame("P (adversarial branch)");
            let z_p = enc.forward_unchecked(p, mode, true, health)?;
            let x_leaf = leaf(&x)?;
            health.blame("the adversarial view");
            let z_x = enc.forward_unchecked(&x_leaf, mode, true, health)?;
            health.blame("the adversarial pass's embeddings and tau");
            let (l, _) = checked_loss(loss, &z_p, &z_x, tau, health)?;
            // The full backward: the input and every parameter.
            let mut inputs: Vec<&Tensor> = vec![&x_leaf];
            inputs.extend(params.iter().filter(|t| t.requires_grad()));
            let mut all = gradients_of(&l, &inputs)?;
            let g = all
                .drain(..1)
                .next()
                .flatten()
                .ok_or_else(|| Error::Torch("the loss does not depend on the input".into()))?;
            drop(all); // the parameter gradients are discarded
            health.blame("the adversarial pass (P, Q_start and tau)");
            health.push_finite("the input gradient g", &g)?;
            x = sign_step(&x, &g, start, adv)?;
            grads.push(g);
        }
        finish(x, grads, adv, health)
    })
}
