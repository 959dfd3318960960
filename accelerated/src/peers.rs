//! The peer methods' attacks (docs/SPEC.md §6.1), with autograd: ACL's
//! dual-stream PGD on both views and RoCL's instance-wise PGD against the
//! clean positive. The steps that train on them are
//! [`crate::step::peer_step`] and [`crate::step::peer_gradients`]; the
//! vocabulary ([`PeerConfig`], [`PeerPgd`], …) and the random start's noise
//! ([`start_noise`]) are the reference's.
//!
//! ```text
//! X₀ = clamp(S + eps·U)                                  U = start_noise(seed, ·)
//! X  ← clamp(min(max(X + eta·sign(∇_X J), S − eps), S + eps))     k times, parameters frozen
//! ACL:  J = L(f_adv(X₁), f_adv(X₂))        RoCL:  J = L(sg f_clean(Q), f_adv(X))
//! ```

use crate::check::{for_precision, Health};
use crate::encoder::{gradients_of, Branch, Encoder, FrozenParameters, Mode};
use crate::error::{Error, Result};
use crate::loss::{checked_loss, LossKind};
use tch::Tensor;

pub use clae_reference::peers::{start_noise, AttackBn, PeerConfig, PeerMethod, PeerPgd};

/// BatchNorm modes of the attack: (RoCL's anchors, the attacked views).
fn modes(bn: AttackBn) -> (Mode, Mode) {
    match bn {
        AttackBn::Eval => (Mode::Eval, Mode::EvalAdv),
        AttackBn::Train => (Mode::Train(Branch::Clean), Mode::Train(Branch::Adv)),
    }
}

/// The reference's size rule: the attack keeps a view and a gradient per
/// adversarial view, each shaped like the batch.
pub(crate) fn check_size<E: Encoder + ?Sized>(enc: &E, cfg: &PeerConfig, x: &Tensor) -> Result<()> {
    let what = "the views and gradients of the PGD attack";
    let kept = clae_reference::check::elements(what, &[2 * cfg.views(), x.numel()])?;
    for_precision!(enc.precision(), F => clae_reference::check::allocatable::<F>(what, kept))?;
    Ok(())
}

fn clamp(x: Tensor, pgd: &PeerPgd) -> Result<Tensor> {
    match pgd.clamp {
        Some((lo, hi)) => Ok(x.f_clamp(lo, hi)?),
        None => Ok(x),
    }
}

/// `X₀` for each start (their noise one stream of [`start_noise`], view
/// after view, rows of the flattened images).
fn starts(views: &[&Tensor], pgd: &PeerPgd) -> Result<Vec<Tensor>> {
    tch::no_grad(|| {
        let Some(seed) = pgd.random_start else {
            return views
                .iter()
                .map(|s| clamp(s.shallow_clone(), pgd))
                .collect();
        };
        let rows: i64 = views.iter().map(|s| s.size()[0]).sum();
        let cols = views[0].numel() as i64 / views[0].size()[0].max(1);
        let noise = start_noise(seed, rows as usize, cols as usize);
        let noise = crate::convert::tensor_from_array(noise.view(), views[0].device())?
            .f_to_kind(views[0].kind())?;
        let mut at = 0;
        views
            .iter()
            .map(|s| {
                let n = s.size()[0];
                let u = noise.f_narrow(0, at, n)?.f_reshape(s.size())?;
                at += n;
                clamp(s.f_add(&u.f_mul_scalar(pgd.eps)?)?, pgd)
            })
            .collect()
    })
}

/// One ascent step: `clamp(min(max(X + eta·sign(g), S − eps), S + eps))`.
fn step(x: &Tensor, g: &Tensor, start: &Tensor, pgd: &PeerPgd) -> Result<Tensor> {
    tch::no_grad(|| {
        let stepped = x.f_add(&g.f_sign()?.f_mul_scalar(pgd.eta)?)?;
        let lower = start.f_sub_scalar(pgd.eps)?;
        let upper = start.f_add_scalar(pgd.eps)?;
        clamp(stepped.f_maximum(&lower)?.f_minimum(&upper)?, pgd)
    })
}

fn leaf(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_detach()?.f_set_requires_grad(true)?)
}

fn gradients(l: &Tensor, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    gradients_of(l, inputs)?
        .into_iter()
        .map(|g| {
            g.ok_or_else(|| Error::Torch("the attack's loss does not depend on a view".into()))
        })
        .collect()
}

/// RoCL's attack on checked input (flags into `health`): `X` from `P`
/// against the clean positives `W = sg(f(Q))`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rocl_attack_unchecked<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
    pgd: &PeerPgd,
    health: &mut Health,
    mut trace: Option<&mut Vec<Vec<Tensor>>>,
) -> Result<Tensor> {
    let (anchor_mode, mode) = modes(pgd.bn);
    let _frozen = FrozenParameters::new(enc)?;
    tch::with_grad(|| {
        health.blame("Q (the clean positives)");
        let w = tch::no_grad(|| enc.forward_unchecked(q, anchor_mode, false, health))?;
        let mut x = starts(&[p], pgd)?.remove(0);
        for _ in 0..pgd.steps {
            let x_leaf = leaf(&x)?;
            health.blame("the adversarial view");
            let z = enc.forward_unchecked(&x_leaf, mode, false, health)?;
            health.blame("the attack's embeddings and tau");
            let (l, _) = checked_loss(loss, &w, &z, tau, health)?;
            let g = gradients(&l, &[&x_leaf])?.remove(0);
            health.blame("the attack (its views, anchors and tau)");
            health.push_finite("the input gradient of a PGD step", &g)?;
            x = step(&x, &g, p, pgd)?;
            if let Some(t) = trace.as_deref_mut() {
                t.push(vec![g]);
            }
        }
        health.blame("P and eps");
        health.push_finite("the adversarial view", &x)?;
        Ok(x)
    })
}

/// ACL's attack on checked input (flags into `health`): `X₁` from `P`,
/// `X₂` from `Q`, both moved by the gradient of `L(f_adv(X₁), f_adv(X₂))`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn acl_attack_unchecked<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    q: &Tensor,
    loss: LossKind,
    tau: f64,
    pgd: &PeerPgd,
    health: &mut Health,
    mut trace: Option<&mut Vec<Vec<Tensor>>>,
) -> Result<(Tensor, Tensor)> {
    let (_, mode) = modes(pgd.bn);
    let _frozen = FrozenParameters::new(enc)?;
    tch::with_grad(|| {
        let mut x = starts(&[p, q], pgd)?;
        let (mut x2, mut x1) = (x.pop().expect("two"), x.pop().expect("two"));
        for _ in 0..pgd.steps {
            let (l1, l2) = (leaf(&x1)?, leaf(&x2)?);
            health.blame("the adversarial view of P");
            let z1 = enc.forward_unchecked(&l1, mode, false, health)?;
            health.blame("the adversarial view of Q");
            let z2 = enc.forward_unchecked(&l2, mode, false, health)?;
            health.blame("the attack's embeddings and tau");
            let (l, _) = checked_loss(loss, &z1, &z2, tau, health)?;
            let mut g = gradients(&l, &[&l1, &l2])?;
            let (g2, g1) = (g.pop().expect("two"), g.pop().expect("two"));
            health.blame("the attack (its views, anchors and tau)");
            health.push_finite("the input gradient of a PGD step", &g1)?;
            health.push_finite("the input gradient of a PGD step", &g2)?;
            x1 = step(&x1, &g1, p, pgd)?;
            x2 = step(&x2, &g2, q, pgd)?;
            if let Some(t) = trace.as_deref_mut() {
                t.push(vec![g1, g2]);
            }
        }
        health.blame("P, Q and eps");
        health.push_finite("the adversarial views", &x1)?;
        health.push_finite("the adversarial views", &x2)?;
        Ok((x1, x2))
    })
}

/// [`peer_views`] with the input gradient of every PGD step
/// (`gradients[s][v]`: view `v` at step `s`, before the step moved it), as
/// the reference's [`clae_reference::peers::peer_attack_trace`]; no side
/// effects.
///
/// ```
/// use clae_accelerated::{device::Precision, mlp::Mlp, peers::peer_attack_trace};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind, peers::PeerConfig};
/// let mlp = Mlp::new(MlpConfig::new(4, 6, 1, 3), 1, tch::Device::Cpu, Precision::F64).unwrap();
/// let p = tch::Tensor::rand([5, 4], (tch::Kind::Double, tch::Device::Cpu));
/// let cfg = PeerConfig::acl(LossKind::SimClr);
/// let (views, gradients) = peer_attack_trace(&mlp, &p, &p, &cfg).unwrap();
/// assert_eq!((views.len(), gradients.len(), gradients[0].len()), (2, cfg.pgd.steps, 2));
/// ```
pub fn peer_attack_trace<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    q: &Tensor,
    cfg: &PeerConfig,
) -> Result<(Vec<Tensor>, Vec<Vec<Tensor>>)> {
    let mut gradients = Vec::with_capacity(cfg.pgd.steps.min(1 << 16));
    let views = attack(enc, p, q, cfg, Some(&mut gradients))?;
    Ok((views, gradients))
}

/// The adversarial views of a peer step (ACL `[X₁, X₂]`, RoCL `[X]`), with
/// no side effects.
///
/// ```
/// use clae_accelerated::{device::Precision, mlp::Mlp, peers::{peer_views, PeerConfig}};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mlp = Mlp::new(MlpConfig::new(4, 6, 1, 3), 1, tch::Device::Cpu, Precision::F64).unwrap();
/// let p = tch::Tensor::rand([5, 4], (tch::Kind::Double, tch::Device::Cpu));
/// let views = peer_views(&mlp, &p, &p, &PeerConfig::rocl(LossKind::SimClr)).unwrap();
/// assert_eq!(views.len(), 1);
/// assert!((&views[0] - &p).abs().max().double_value(&[]) <= 0.0314 + 1e-15);
/// ```
pub fn peer_views<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    q: &Tensor,
    cfg: &PeerConfig,
) -> Result<Vec<Tensor>> {
    attack(enc, p, q, cfg, None)
}

fn attack<E: Encoder + ?Sized>(
    enc: &E,
    p: &Tensor,
    q: &Tensor,
    cfg: &PeerConfig,
    trace: Option<&mut Vec<Vec<Tensor>>>,
) -> Result<Vec<Tensor>> {
    enc.validate()?;
    for_precision!(enc.precision(), F => cfg.validate_for::<F>())?;
    let p = crate::convert::placed(p, enc.device(), enc.precision())?;
    let q = crate::convert::placed(q, enc.device(), enc.precision())?;
    crate::check::pair_shapes(("P", &p), ("Q", &q), Some(&enc.input_shape()))?;
    enc.check_activations("P", &p)?;
    check_size(enc, cfg, &p)?;
    if trace.is_some() {
        // the reference's trace rule, so that both refuse the same inputs
        let what = "the iterates and gradients of the PGD attack";
        let d = (p.numel() as usize) / (p.size()[0].max(1) as usize);
        let kept = clae_reference::check::elements(
            what,
            &clae_reference::peers::trace_arrays(cfg, p.size()[0] as usize, d),
        )?;
        for_precision!(enc.precision(), F => clae_reference::check::allocatable::<F>(what, kept))?;
    }
    crate::check::finite("P", &p)?;
    crate::check::finite("Q", &q)?;
    let mut health = Health::new(enc.precision());
    let views = match cfg.method {
        PeerMethod::Acl => {
            let (x1, x2) =
                acl_attack_unchecked(enc, &p, &q, cfg.loss, cfg.tau, &cfg.pgd, &mut health, trace)?;
            vec![x1, x2]
        }
        PeerMethod::Rocl { .. } => {
            vec![rocl_attack_unchecked(
                enc,
                &p,
                &q,
                cfg.loss,
                cfg.tau,
                &cfg.pgd,
                &mut health,
                trace,
            )?]
        }
    };
    health.check()?;
    Ok(views)
}
