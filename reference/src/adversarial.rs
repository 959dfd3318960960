//! The adversarial view of docs/SPEC.md §4: an FGSM sign step over
//! the whole batch (and PGD, its iterated form).
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

use crate::check::{self, Domain};
use crate::encoder::{
    backward_input_pass, backward_pass, input_gradient_from, Branch, Forward, Mlp, Mode, StatsLog,
};
use crate::error::{ClaeError, Result};
use crate::loss::{checked_loss, LossKind};
use crate::real::Real;
use ndarray::{Array2, ArrayView2, Zip};

// ----------------------------------------------------------- the sign step --

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

/// One sign step from `x`: FGSM (`x + eps sign(g)`) or a PGD step
/// (`min(max(x + eta sign(g), start − eps), start + eps)`, the projection
/// onto the L∞ ball as RoCL/ACL write it). With `k = 1, eta = eps` the PGD
/// step equals the FGSM step exactly.
fn sign_step<F: Real>(x: &mut Array2<F>, g: &Array2<F>, start: ArrayView2<'_, F>, adv: &Adv<F>) {
    match adv.eta {
        None => Zip::from(x)
            .and(g)
            .for_each(|x, &g| *x += adv.eps * sign(g)),
        Some(eta) => Zip::from(x).and(g).and(start).for_each(|x, &g, &s| {
            let stepped = *x + eta * sign(g);
            let lower = s - adv.eps;
            let upper = s + adv.eps;
            *x = if stepped < lower { lower } else { stepped };
            *x = if *x > upper { upper } else { *x };
        }),
    }
}

/// `x` clamped to the pixel range, if there is one (NaN kept).
pub(crate) fn apply_clamp<F: Real>(x: &mut Array2<F>, clamp: Option<(F, F)>) {
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

// -------------------------------------------------------- the two recipes --

/// `g = dL(W, z)/dX` for a forward pass of `X` through the adv branch, with
/// the anchors `W` constant: the loss's gradient w.r.t. its second argument,
/// back-propagated to the input only (lean: no parameter gradients).
fn lean_gradient<F: Real>(
    mlp: &Mlp<F>,
    w: ArrayView2<'_, F>,
    fwd_x: &Forward<F>,
    loss: LossKind,
    tau: F,
) -> Result<Array2<F>> {
    let out = checked_loss(
        loss,
        w,
        fwd_x.z.view(),
        tau,
        "the adversarial pass's embeddings and tau",
    )?;
    Ok(backward_input_pass(mlp, fwd_x, out.grad_z_q.view()))
}

/// The lean recipe (docs/SPEC.md §4 and 6) on checked input: one adv-mode
/// forward per step (with `Q_start = P` the first one also gives the
/// anchors), backward to the input only, no side effects.
pub(crate) fn lean_view<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
    adv: &Adv<F>,
) -> Result<AdvView<F>> {
    let start = adv.start_of(p, q);
    let fwd_p = mlp.forward_checked("P (adversarial branch)", p, Mode::Train(Branch::Adv))?;
    let w = fwd_p.z.clone();
    let mut x = start.to_owned();
    let mut grads = Vec::with_capacity(adv.steps);
    for step in 0..adv.steps {
        let g = if step == 0 && adv.start == QStart::P {
            lean_gradient(mlp, w.view(), &fwd_p, loss, tau)?
        } else {
            let fwd_x =
                mlp.forward_checked("the adversarial view", x.view(), Mode::Train(Branch::Adv))?;
            lean_gradient(mlp, w.view(), &fwd_x, loss, tau)?
        };
        adv.check_gradient(&g)?;
        sign_step(&mut x, &g, start, adv);
        grads.push(g);
    }
    adv.finish(x, grads)
}

/// The authors' recipe (docs/SPEC.md §6) on checked input: per step,
/// adv-mode training forwards of `P` and of `X` and a full backward of
/// `L(f_adv(P), f_adv(X))` that also computes parameter gradients
/// (discarded; the authors zero them before the real step). Returns the
/// view and the batch statistics of every pass in order — the caller folds
/// them into the adv running statistics (as `model(x, adv=True)` in
/// training mode does) when everything has succeeded.
pub(crate) fn authors_view<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
    adv: &Adv<F>,
) -> Result<(AdvView<F>, StatsLog<F>)> {
    let start = adv.start_of(p, q);
    let mode = Mode::Train(Branch::Adv);
    let mut x = start.to_owned();
    let mut grads = Vec::with_capacity(adv.steps);
    let mut passes = Vec::with_capacity(adv.steps.saturating_mul(2));
    for _ in 0..adv.steps {
        let fwd_p = mlp.forward_checked("P (adversarial branch)", p, mode)?;
        let fwd_x = mlp.forward_checked("the adversarial view", x.view(), mode)?;
        let out = checked_loss(
            loss,
            fwd_p.z.view(),
            fwd_x.z.view(),
            tau,
            "the adversarial pass's embeddings and tau",
        )?;
        // The public code back-propagates into both forwards; the parameter
        // gradients are computed and thrown away.
        let _discarded = backward_pass(mlp, &fwd_p, out.grad_z_p.view());
        let (_discarded, delta) = backward_pass(mlp, &fwd_x, out.grad_z_q.view());
        let g = input_gradient_from(mlp, delta.view());
        adv.check_gradient(&g)?;
        sign_step(&mut x, &g, start, adv);
        grads.push(g);
        passes.push((mode, fwd_p.stats));
        passes.push((mode, fwd_x.stats));
    }
    Ok((adv.finish(x, grads)?, passes))
}

// ------------------------------------------------------------ the config --

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
pub enum Attack {
    /// One step of size `eps` (the paper).
    Fgsm,
    /// `steps` steps of size `eta`, each projected back onto the L∞ ball of
    /// radius `eps` around `Q_start` (RoCL/ACL-style; beyond the paper).
    Pgd {
        /// `k >= 1`.
        steps: usize,
        /// Step size, finite and `>= 0`.
        eta: f64,
    },
}

/// Which computation produces the view (docs/SPEC.md §6). Both give the same
/// `Q_adv`; they differ in cost and in side effects.
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

/// Everything that defines the adversarial view. Hyper-parameters are
/// `f64`, checked in the element type where they are used
/// ([`AdvConfig::validate_for`]).
///
/// ```
/// use clae_reference::adversarial::{AdvConfig, Attack, QStart};
/// let c = AdvConfig::fgsm(0.03);
/// assert_eq!((c.start, c.attack, c.clamp), (QStart::P, Attack::Fgsm, None));
/// assert!(AdvConfig { eps: -1.0, ..c }.validate().is_err());
/// assert!(AdvConfig { eps: 1e300, ..c }.validate_for::<f32>().is_err()); // inf in f32
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdvConfig {
    /// Step `eps`, finite and `>= 0` (`eps = 0` gives `Q_adv = Q_start`).
    pub eps: f64,
    /// Which view is perturbed (default `P`).
    pub start: QStart,
    /// FGSM or PGD.
    pub attack: Attack,
    /// Optional pixel range `(lo, hi)`, applied once at the end (off by
    /// default; the authors do not clamp).
    pub clamp: Option<(f64, f64)>,
}

/// An [`AdvConfig`] in the element type: what the computation reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adv<F> {
    pub(crate) eps: F,
    pub(crate) start: QStart,
    pub(crate) steps: usize,
    /// `Some(eta)` for PGD.
    pub(crate) eta: Option<F>,
    pub(crate) clamp: Option<(F, F)>,
}

impl AdvConfig {
    /// FGSM of size `eps` on `P`, no clamp: the paper's setting.
    pub fn fgsm(eps: f64) -> Self {
        AdvConfig {
            eps,
            start: QStart::P,
            attack: Attack::Fgsm,
            clamp: None,
        }
    }

    /// Checks `eps`, the PGD parameters and the pixel range (in `f64`).
    pub fn validate(&self) -> Result<()> {
        self.validate_for::<f64>()
    }

    /// [`AdvConfig::validate`] in the element type `F`.
    pub fn validate_for<F: Real>(&self) -> Result<()> {
        self.resolve::<F>().map(|_| ())
    }

    /// The values in `F`, each checked ([`check::hyper`]).
    pub(crate) fn resolve<F: Real>(&self) -> Result<Adv<F>> {
        let eps = check::hyper::<F>("eps", self.eps, Domain::NonNegative)?;
        let (steps, eta) = match self.attack {
            Attack::Fgsm => (1, None),
            Attack::Pgd { steps, eta } => {
                if steps == 0 {
                    return Err(ClaeError::ZeroDimension {
                        what: "number of PGD steps k".into(),
                    });
                }
                (
                    steps,
                    Some(check::hyper::<F>(
                        "PGD step size eta",
                        eta,
                        Domain::NonNegative,
                    )?),
                )
            }
        };
        let clamp = pixel_range::<F>(self.clamp)?;
        Ok(Adv {
            eps,
            start: self.start,
            steps,
            eta,
            clamp,
        })
    }
}

impl<F: Real> Adv<F> {
    /// The view keeps `g` of every step: `k` arrays of `N x D_in`, which
    /// must be addressable and allocatable ([`ClaeError::TooLarge`]).
    pub(crate) fn check_steps(&self, n: usize, d_in: usize) -> Result<()> {
        let kept = check::elements(
            "the input gradients of every PGD step",
            &[self.steps, n, d_in],
        )?;
        check::allocatable::<F>("the input gradients of every PGD step", kept)
    }

    fn start_of<'a>(&self, p: ArrayView2<'a, F>, q: ArrayView2<'a, F>) -> ArrayView2<'a, F> {
        match self.start {
            QStart::P => p,
            QStart::Q => q,
        }
    }

    fn check_gradient(&self, g: &Array2<F>) -> Result<()> {
        crate::encoder::check_finite_result(
            "the adversarial pass (P, Q_start and tau)",
            "the input gradient g",
            g,
        )
    }

    fn finish(&self, mut x: Array2<F>, grads: Vec<Array2<F>>) -> Result<AdvView<F>> {
        apply_clamp(&mut x, self.clamp);
        crate::encoder::check_finite_result(
            "Q_start and eps",
            "Q_adv = Q_start + eps sign(g)",
            &x,
        )?;
        Ok(AdvView { q_adv: x, grads })
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

// -------------------------------------------------------- the public API --

/// Validates everything an adversarial computation reads (the second view
/// is called `q_name`: `Q`, or `X` for [`input_gradient`]); returns `tau`
/// and the config in `F`.
fn check_inputs<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    (q_name, q): (&str, ArrayView2<'_, F>),
    tau: f64,
    cfg: &AdvConfig,
) -> Result<(F, Adv<F>)> {
    mlp.validate()?;
    let tau = check::tau::<F>(tau)?;
    let adv = cfg.resolve::<F>()?;
    check::pair_shapes(("P", p), (q_name, q), Some(mlp.config().d_in))?;
    mlp.config().check_batch_size::<F>("P", p.nrows())?;
    adv.check_steps(p.nrows(), p.ncols())?;
    check::finite("P", p)?;
    check::finite(q_name, q)?;
    Ok((tau, adv))
}

/// The input gradient `g = d/dX L(sg(f_adv(P)), f_adv(X))` of docs/SPEC.md §4,
/// both forwards in training mode through the adv branch, no side effects.
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
    tau: f64,
) -> Result<Array2<F>> {
    let (tau, _) = check_inputs(mlp, p, ("X", x), tau, &AdvConfig::fgsm(0.0))?;
    let mode = Mode::Train(Branch::Adv);
    let w = mlp.forward_checked("P (adversarial branch)", p, mode)?.z;
    let fwd_x = mlp.forward_checked("X", x, mode)?;
    let g = lean_gradient(mlp, w.view(), &fwd_x, loss, tau)?;
    crate::encoder::check_finite_result("P, X and tau", "the input gradient g", &g)?;
    Ok(g)
}

/// The adversarial view by the lean recipe (docs/SPEC.md §4 and 6), with no
/// side effects. `p, q: N x D_in`; returns `Q_adv: N x D_in` and the
/// gradients.
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
    tau: f64,
    cfg: &AdvConfig,
) -> Result<AdvView<F>> {
    let (tau, adv) = check_inputs(mlp, p, ("Q", q), tau, cfg)?;
    lean_view(mlp, p, q, loss, tau, &adv)
}

/// The adversarial view by the authors' recipe (docs/SPEC.md §6): per step,
/// adv-mode training forwards of `P` and of `X`, each updating the adv
/// BatchNorm running statistics (as `model(x, adv=True)` in training mode
/// does), and a full backward of `L(f_adv(P), f_adv(X))` that computes
/// parameter gradients too (discarded). Same `Q_adv` as
/// [`adversarial_view`]; more work, and these side effects — made only when
/// the whole view succeeded.
pub fn adversarial_view_authors<F: Real>(
    mlp: &mut Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: f64,
    cfg: &AdvConfig,
) -> Result<AdvView<F>> {
    let (tau, adv) = check_inputs(mlp, p, ("Q", q), tau, cfg)?;
    let (view, passes) = authors_view(mlp, p, q, loss, tau, &adv)?;
    let running = mlp.running_after(
        passes.iter().map(|(m, s)| (*m, s.as_slice())),
        "P and Q_start",
    )?;
    mlp.commit_running(running);
    Ok(view)
}

/// A pixel range `(lo, hi)` in `F`: both finite in `F` and `lo <= hi`,
/// else [`ClaeError::InvalidRange`] (shared by the CLAE and peer attacks).
pub(crate) fn pixel_range<F: Real>(clamp: Option<(f64, f64)>) -> Result<Option<(F, F)>> {
    let Some((lo, hi)) = clamp else {
        return Ok(None);
    };
    let range = || ClaeError::InvalidRange { lo, hi };
    let lo_f = check::hyper::<F>("pixel range lo", lo, Domain::Finite).map_err(|_| range())?;
    let hi_f = check::hyper::<F>("pixel range hi", hi, Domain::Finite).map_err(|_| range())?;
    if lo > hi {
        return Err(range());
    }
    Ok(Some((lo_f, hi_f)))
}
