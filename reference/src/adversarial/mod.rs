//! The adversarial view of SPEC 4: an FGSM sign step over the whole batch
//! (and PGD, its iterated form).
//!
//! ```text
//! W     = sg( f_adv(P) )                      anchors through the adv BN branch
//! g     = d/dX L( W, f_adv(X) )  at X = Q_start
//! Q_adv = Q_start + eps * sign(g)             sign(0) = 0
//! Q_adv = clamp(Q_adv, lo, hi)                only if a pixel range is given
//! ```
//!
//! The perturbation is per image (`δ_i = eps sign(g_i)`), and each `g_i`
//! depends on every anchor `W_k` through the softmax denominator and on every
//! row of `X` through BatchNorm's batch statistics. The generation pass
//! updates no running statistics and no parameters ([`adversarial_view`]
//! takes the encoder by shared reference); [`adversarial_view_authors`]
//! reproduces the authors' side effects.

use crate::check;
use crate::encoder::{Branch, Forward, Mlp, Mode, Need};
use crate::error::{ClaeError, Result};
use crate::loss::{loss_forward_backward_unchecked, LossKind};
use crate::real::Real;
use ndarray::{Array2, ArrayView2, Zip};

/// Which clean view is perturbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QStart {
    /// The anchor view `P` (the authors' choice in all three variants): the
    /// perturbed anchor is then paired with its clean self.
    P,
    /// The second view `Q`.
    Q,
}

/// How the sign step is taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack<F> {
    /// One step of size `eps` (the paper).
    Fgsm,
    /// `steps` steps of size `eta`, each projected back onto the L∞ ball of
    /// radius `eps` around `Q_start` (RoCL/ACL-style; beyond the paper).
    Pgd {
        /// `k >= 1`.
        steps: usize,
        /// Step size, finite and `>= 0`.
        eta: F,
    },
}

/// Which computation produces the view (SPEC 6). Both give the same `Q_adv`;
/// they differ in cost and in side effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// One adv-mode forward of `Q_start` when `Q_start = P` (the anchors are
    /// that same forward, detached), and a backward to the input only. No
    /// side effects.
    Lean,
    /// As the public code: adv-mode forwards of `P` and of a fresh copy `X`
    /// of `Q_start`, both in training mode — so both update the adv
    /// BatchNorm running statistics — and a full backward that also computes
    /// parameter gradients (then discarded). In a step, the Plain loss also
    /// recomputes `f_clean(P)` for the second loss term.
    Authors,
}

/// Everything that defines the adversarial view.
///
/// ```
/// use clae_reference::adversarial::{AdvConfig, Attack, QStart};
/// let c = AdvConfig::fgsm(0.03f64);
/// assert_eq!((c.start, c.attack, c.clamp), (QStart::P, Attack::Fgsm, None));
/// assert!(AdvConfig { eps: -1.0, ..c }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdvConfig<F> {
    /// Step `eps`, finite and `>= 0` (`eps = 0` gives `Q_adv = Q_start`).
    pub eps: F,
    /// Which view is perturbed (default `P`).
    pub start: QStart,
    /// FGSM or PGD.
    pub attack: Attack<F>,
    /// Optional pixel range `(lo, hi)`, applied once at the end (off by
    /// default; the authors do not clamp).
    pub clamp: Option<(F, F)>,
}

impl<F: Real> AdvConfig<F> {
    /// FGSM of size `eps` on `P`, no clamp: the paper's setting.
    pub fn fgsm(eps: F) -> Self {
        AdvConfig {
            eps,
            start: QStart::P,
            attack: Attack::Fgsm,
            clamp: None,
        }
    }

    /// Checks `eps`, the PGD parameters and the pixel range.
    pub fn validate(&self) -> Result<()> {
        check::non_negative("eps", self.eps)?;
        if let Attack::Pgd { steps, eta } = self.attack {
            if steps == 0 {
                return Err(ClaeError::ZeroDimension {
                    what: "number of PGD steps k".into(),
                });
            }
            check::non_negative("PGD step size eta", eta)?;
        }
        if let Some((lo, hi)) = self.clamp {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(ClaeError::InvalidRange {
                    lo: lo.as_f64(),
                    hi: hi.as_f64(),
                });
            }
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        match self.attack {
            Attack::Fgsm => 1,
            Attack::Pgd { steps, .. } => steps,
        }
    }
}

/// The view and the input gradients that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvView<F> {
    /// `Q_adv`, `N x D_in`.
    pub q_adv: Array2<F>,
    /// `g` at every step (one entry for FGSM), `N x D_in` each.
    pub grads: Vec<Array2<F>>,
}

/// `torch.sign`: `-1, 0, +1`.
pub fn sign<F: Real>(x: F) -> F {
    if x > F::zero() {
        F::one()
    } else if x < F::zero() {
        -F::one()
    } else {
        F::zero()
    }
}

/// Validates everything an adversarial computation reads.
fn check_inputs<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    tau: F,
    cfg: &AdvConfig<F>,
) -> Result<()> {
    mlp.validate()?;
    check::tau(tau)?;
    cfg.validate()?;
    check::pair(("P", p), ("Q", q), Some(mlp.config().d_in))
}

/// `g = dL(W, z)/dX` for a forward pass of `X` through the adv branch,
/// with the anchors `W` constant: the loss's gradient w.r.t. its second
/// argument, back-propagated to the input only.
fn grad_from_forward<F: Real>(
    mlp: &Mlp<F>,
    w: ArrayView2<'_, F>,
    fwd_x: &Forward<F>,
    loss: LossKind,
    tau: F,
) -> Array2<F> {
    let out = loss_forward_backward_unchecked(loss, w, fwd_x.z.view(), tau);
    let back = mlp.backward_unchecked(
        fwd_x,
        out.grad_z_q.view(),
        Need {
            params: false,
            input: true,
        },
    );
    back.input.expect("input gradient was asked for")
}

/// The input gradient `g = d/dX L(sg(f_adv(P)), f_adv(X))` of SPEC 4, both
/// forwards in training mode through the adv branch, no side effects.
/// Shapes: `p, x: N x D_in` → `g: N x D_in`.
///
/// ```
/// use ndarray::Array2;
/// use clae_reference::{adversarial::input_gradient, encoder::{Mlp, MlpConfig}, loss::LossKind};
/// let mlp = Mlp::<f64>::new(MlpConfig::new(4, 6, 1, 3), 1).unwrap();
/// let p = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f64).sin());
/// let g = input_gradient(&mlp, p.view(), p.view(), LossKind::Plain, 0.1).unwrap();
/// assert_eq!(g.dim(), (3, 4));
/// ```
pub fn input_gradient<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    x: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
) -> Result<Array2<F>> {
    check_inputs(mlp, p, x, tau, &AdvConfig::fgsm(F::zero()))?;
    let w = mlp.forward_unchecked(p, Mode::Train(Branch::Adv)).z;
    let fwd_x = mlp.forward_unchecked(x, Mode::Train(Branch::Adv));
    Ok(grad_from_forward(mlp, w.view(), &fwd_x, loss, tau))
}

/// One sign step from `x`: FGSM (`x + eps sign(g)`) or a PGD step
/// (`min(max(x + eta sign(g), start − eps), start + eps)`, the projection
/// onto the L∞ ball as RoCL/ACL write it). With `k = 1, eta = eps` the PGD
/// step equals the FGSM step exactly.
fn sign_step<F: Real>(
    x: &mut Array2<F>,
    g: &Array2<F>,
    start: ArrayView2<'_, F>,
    cfg: &AdvConfig<F>,
) {
    match cfg.attack {
        Attack::Fgsm => Zip::from(x)
            .and(g)
            .for_each(|x, &g| *x += cfg.eps * sign(g)),
        Attack::Pgd { eta, .. } => Zip::from(x).and(g).and(start).for_each(|x, &g, &s| {
            let stepped = *x + eta * sign(g);
            let lower = s - cfg.eps;
            let upper = s + cfg.eps;
            *x = if stepped < lower { lower } else { stepped };
            *x = if *x > upper { upper } else { *x };
        }),
    }
}

fn apply_clamp<F: Real>(x: &mut Array2<F>, clamp: Option<(F, F)>) {
    if let Some((lo, hi)) = clamp {
        x.mapv_inplace(|v| {
            if v < lo {
                lo
            } else if v > hi {
                hi
            } else {
                v
            }
        });
    }
}

/// The adversarial view by the lean recipe (SPEC 4 and 6), with no side
/// effects. `p, q: N x D_in`; returns `Q_adv: N x D_in` and the gradients.
///
/// When `Q_start = P` the first step needs one adv-mode forward: the anchors
/// `W` and `f_adv(X)` at `X = P` are the same pass.
///
/// ```
/// use ndarray::Array2;
/// use clae_reference::adversarial::{adversarial_view, AdvConfig};
/// use clae_reference::{encoder::{Mlp, MlpConfig}, loss::LossKind};
/// let mlp = Mlp::<f64>::new(MlpConfig::new(4, 6, 1, 3), 1).unwrap();
/// let p = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f64).sin());
/// let q = p.mapv(|v| v + 0.1);
/// let view = adversarial_view(&mlp, p.view(), q.view(), LossKind::Uel, 0.1, &AdvConfig::fgsm(0.03)).unwrap();
/// // every pixel moved by exactly eps (or 0 where g = 0)
/// for (a, b) in view.q_adv.iter().zip(p.iter()) {
///     assert!(((a - b).abs() - 0.03).abs() < 1e-15 || a == b);
/// }
/// ```
pub fn adversarial_view<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
    cfg: &AdvConfig<F>,
) -> Result<AdvView<F>> {
    check_inputs(mlp, p, q, tau, cfg)?;
    Ok(adversarial_view_unchecked(mlp, p, q, loss, tau, cfg))
}

pub(crate) fn adversarial_view_unchecked<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
    cfg: &AdvConfig<F>,
) -> AdvView<F> {
    let start = match cfg.start {
        QStart::P => p,
        QStart::Q => q,
    };
    let fwd_p = mlp.forward_unchecked(p, Mode::Train(Branch::Adv));
    let w = fwd_p.z.clone();
    let mut x = start.to_owned();
    let mut grads = Vec::with_capacity(cfg.steps());
    for step in 0..cfg.steps() {
        let g = if step == 0 && cfg.start == QStart::P {
            grad_from_forward(mlp, w.view(), &fwd_p, loss, tau)
        } else {
            let fwd_x = mlp.forward_unchecked(x.view(), Mode::Train(Branch::Adv));
            grad_from_forward(mlp, w.view(), &fwd_x, loss, tau)
        };
        sign_step(&mut x, &g, start, cfg);
        grads.push(g);
    }
    apply_clamp(&mut x, cfg.clamp);
    AdvView { q_adv: x, grads }
}

/// The adversarial view by the authors' recipe (SPEC 6): per step, adv-mode
/// training forwards of `P` and of `X`, each updating the adv BatchNorm
/// running statistics (as `model(x, adv=True)` in training mode does), and a
/// full backward of `L(f_adv(P), f_adv(X))` that computes parameter
/// gradients too (discarded; the authors zero them before the real step).
/// Same `Q_adv` as [`adversarial_view`]; more work, and these side effects.
pub fn adversarial_view_authors<F: Real>(
    mlp: &mut Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
    cfg: &AdvConfig<F>,
) -> Result<AdvView<F>> {
    check_inputs(mlp, p, q, tau, cfg)?;
    Ok(adversarial_view_authors_unchecked(
        mlp, p, q, loss, tau, cfg,
    ))
}

pub(crate) fn adversarial_view_authors_unchecked<F: Real>(
    mlp: &mut Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
    cfg: &AdvConfig<F>,
) -> AdvView<F> {
    let start = match cfg.start {
        QStart::P => p,
        QStart::Q => q,
    };
    let full = Need {
        params: true,
        input: true,
    };
    let mut x = start.to_owned();
    let mut grads = Vec::with_capacity(cfg.steps());
    for _ in 0..cfg.steps() {
        let fwd_p = mlp.forward_unchecked(p, Mode::Train(Branch::Adv));
        mlp.update_running_stats_unchecked(&fwd_p);
        let fwd_x = mlp.forward_unchecked(x.view(), Mode::Train(Branch::Adv));
        mlp.update_running_stats_unchecked(&fwd_x);
        let out = loss_forward_backward_unchecked(loss, fwd_p.z.view(), fwd_x.z.view(), tau);
        // The public code back-propagates into both forwards; the parameter
        // gradients are computed and thrown away.
        let _discarded = mlp.backward_unchecked(
            &fwd_p,
            out.grad_z_p.view(),
            Need {
                params: true,
                input: false,
            },
        );
        let back = mlp.backward_unchecked(&fwd_x, out.grad_z_q.view(), full);
        let g = back.input.expect("input gradient was asked for");
        sign_step(&mut x, &g, start, cfg);
        grads.push(g);
    }
    apply_clamp(&mut x, cfg.clamp);
    AdvView { q_adv: x, grads }
}
