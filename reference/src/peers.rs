//! The peer methods the overhead report prices against CLAE
//! (docs/SPEC.md §6.1): ACL-style and RoCL-style training steps, with PGD
//! as the peers run it.
//!
//! ```text
//! PGD (peers):  X₀ = clamp(S + eps·U),  U uniform in [−1, 1)   (or X₀ = S without a random start)
//!               X ← clamp( min(max(X + eta·sign(∇_X J), S − eps), S + eps) )     k times
//!               BatchNorm during the attack: running statistics (eval, as the peers' model.eval())
//!               or batch statistics (train); either way nothing is updated
//!
//! ACL (dual stream):  X₁, X₂ from P, Q together, J = L(f_adv(X₁), f_adv(X₂))
//!                     L_total = ½ L(f_clean(P), f_clean(Q)) + ½ L(f_adv(X₁), f_adv(X₂))
//! RoCL (instance-wise): X from P against its clean positive, J = L(sg f_clean(Q), f_adv(X))
//!                     L_total = L(f_clean(P), f_clean(Q)) + λ L(f_clean(Q), f_adv(X))
//! ```
//!
//! A step is a weighted sum of loss terms between forward passes
//! (`weighted_terms`); training passes update the running statistics of
//! their branch in order (P, Q clean; the adversarial views adv).

use crate::adversarial::sign;
use crate::check::{self, Domain};
use crate::encoder::{
    backward_input_pass, backward_pass, check_finite_result, check_grads, Branch, Mlp, MlpGrads,
    Mode, StatsLog,
};
use crate::error::{ClaeError, Result};
use crate::loss::{checked_loss, LossKind};
use crate::optim::Optimizer;
use crate::real::Real;
use crate::rng::Rng;
use crate::step::{Pass, StepReport};
use ndarray::{Array2, ArrayView2, Zip};

// -------------------------------------------------------------- the attack --

/// BatchNorm during a peer attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttackBn {
    /// Running statistics (`model.eval()`, as ACL's and RoCL's attacks run):
    /// the adversarial views read the adv branch's, the RoCL anchors the
    /// clean branch's.
    Eval,
    /// Batch statistics of each attack pass (CLAE's choice), not folded into
    /// the running statistics.
    Train,
}

/// PGD as the peers run it. Hyper-parameters are `f64`, checked in the
/// element type where they are used.
///
/// ```
/// use clae_reference::peers::{AttackBn, PeerPgd};
/// let acl = PeerPgd::acl();
/// assert_eq!((acl.steps, acl.bn, acl.clamp), (5, AttackBn::Eval, Some((0.0, 1.0))));
/// assert!(PeerPgd { steps: 0, ..acl }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerPgd {
    /// Radius of the L∞ ball, finite and `>= 0`.
    pub eps: f64,
    /// Step size, finite and `>= 0`.
    pub eta: f64,
    /// Number of steps `k >= 1`.
    pub steps: usize,
    /// `Some(seed)`: start at `S + eps·U` with `U` from [`start_noise`];
    /// `None`: start at `S`.
    pub random_start: Option<u64>,
    /// BatchNorm during the attack.
    pub bn: AttackBn,
    /// Pixel range `(lo, hi)` applied after the random start and after
    /// every step (the peers clamp to `[0, 1]`).
    pub clamp: Option<(f64, f64)>,
}

impl PeerPgd {
    /// ACL's attack (Jiang et al. 2020, public code): PGD-5, `eps = 8/255`,
    /// `eta = 2/255`, random start, eval-mode BatchNorm, pixels in `[0, 1]`.
    pub fn acl() -> Self {
        PeerPgd {
            eps: 8.0 / 255.0,
            eta: 2.0 / 255.0,
            steps: 5,
            random_start: Some(0),
            bn: AttackBn::Eval,
            clamp: Some((0.0, 1.0)),
        }
    }

    /// RoCL's attack (Kim et al. 2020, public run scripts): PGD-7,
    /// `eps = 0.0314`, `eta = 0.007`, random start, eval-mode BatchNorm,
    /// pixels in `[0, 1]`.
    pub fn rocl() -> Self {
        PeerPgd {
            eps: 0.0314,
            eta: 0.007,
            steps: 7,
            random_start: Some(0),
            bn: AttackBn::Eval,
            clamp: Some((0.0, 1.0)),
        }
    }

    /// Checks every value (in `f64`).
    pub fn validate(&self) -> Result<()> {
        self.resolve::<f64>().map(|_| ())
    }

    /// The values in `F`, each checked.
    pub(crate) fn resolve<F: Real>(&self) -> Result<Pgd<F>> {
        if self.steps == 0 {
            return Err(ClaeError::ZeroDimension {
                what: "number of PGD steps k".into(),
            });
        }
        let clamp = crate::adversarial::pixel_range::<F>(self.clamp)?;
        Ok(Pgd {
            eps: check::hyper::<F>("eps", self.eps, Domain::NonNegative)?,
            eta: check::hyper::<F>("PGD step size eta", self.eta, Domain::NonNegative)?,
            steps: self.steps,
            random_start: self.random_start,
            bn: self.bn,
            clamp,
        })
    }
}

/// A [`PeerPgd`] in the element type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pgd<F> {
    eps: F,
    eta: F,
    steps: usize,
    random_start: Option<u64>,
    bn: AttackBn,
    clamp: Option<(F, F)>,
}

/// The random start's unit noise: `n x d` values `2u − 1`, `u` uniform in
/// `[0, 1)` from [`Rng::new(seed)`](Rng::new), row by row, in `f64` (a port
/// can read them from the conformance vectors instead of re-implementing
/// the generator). For two views (ACL) the second view's noise continues
/// the first's stream: `start_noise(seed, 2n, d)` split into halves.
///
/// ```
/// let u = clae_reference::peers::start_noise(7, 3, 4);
/// assert!(u.iter().all(|v| (-1.0..1.0).contains(v)));
/// assert_eq!(u, clae_reference::peers::start_noise(7, 3, 4));
/// ```
pub fn start_noise(seed: u64, n: usize, d: usize) -> Array2<f64> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_simple_fn((n, d), || 2.0 * rng.uniform() - 1.0)
}

impl<F: Real> Pgd<F> {
    /// BatchNorm modes of the attack: (anchors of RoCL, the attacked views).
    fn modes(&self) -> (Mode, Mode) {
        match self.bn {
            AttackBn::Eval => (Mode::Eval, Mode::EvalAdv),
            AttackBn::Train => (Mode::Train(Branch::Clean), Mode::Train(Branch::Adv)),
        }
    }

    fn clamp(&self, x: &mut Array2<F>) {
        crate::adversarial::apply_clamp(x, self.clamp);
    }

    /// `X₀` for each start `S` (their noise one stream, view after view).
    fn starts(&self, views: &[ArrayView2<'_, F>]) -> Vec<Array2<F>> {
        let rows: usize = views.iter().map(|v| v.nrows()).sum();
        let cols = views.first().map_or(0, |v| v.ncols());
        let noise = self.random_start.map(|seed| start_noise(seed, rows, cols));
        let mut at = 0;
        views
            .iter()
            .map(|s| {
                let mut x = s.to_owned();
                if let Some(u) = &noise {
                    let u = u.slice(ndarray::s![at..at + s.nrows(), ..]);
                    Zip::from(&mut x)
                        .and(u)
                        .for_each(|x, &u| *x += self.eps * F::c(u));
                }
                at += s.nrows();
                self.clamp(&mut x);
                x
            })
            .collect()
    }

    /// One ascent step: `clamp(min(max(X + eta·sign(g), S − eps), S + eps))`.
    fn step(&self, x: &mut Array2<F>, g: &Array2<F>, start: ArrayView2<'_, F>) {
        Zip::from(&mut *x).and(g).and(start).for_each(|x, &g, &s| {
            let stepped = *x + self.eta * sign(g);
            let (lower, upper) = (s - self.eps, s + self.eps);
            *x = if stepped < lower { lower } else { stepped };
            *x = if *x > upper { upper } else { *x };
        });
        self.clamp(x);
    }

    /// The `k` iterates keep an `N x D_in` gradient per view: addressable
    /// and allocatable.
    fn check_size(&self, views: usize, n: usize, d_in: usize) -> Result<()> {
        let kept = check::elements(
            "the views and gradients of the PGD attack",
            &[2 * views, n, d_in],
        )?;
        check::allocatable::<F>("the views and gradients of the PGD attack", kept)
    }
}

fn check_g<F: Real>(g: &Array2<F>) -> Result<()> {
    check_finite_result(
        "the attack (its views, anchors and tau)",
        "the input gradient of a PGD step",
        g,
    )
}

/// RoCL's instance-wise attack on checked input: `X` from `P`, maximising
/// `L(W, f_adv(X))` against the clean positives `W = sg(f_clean(Q))`.
pub(crate) fn rocl_attack<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
    pgd: &Pgd<F>,
    mut trace: Option<&mut Vec<TraceStep<F>>>,
) -> Result<Array2<F>> {
    let (anchor_mode, mode) = pgd.modes();
    let w = mlp
        .forward_checked("Q (the clean positives)", q, anchor_mode)?
        .z;
    let mut x = pgd.starts(&[p]).remove(0);
    for _ in 0..pgd.steps {
        let fwd = mlp.forward_checked("the adversarial view", x.view(), mode)?;
        let out = checked_loss(
            loss,
            w.view(),
            fwd.z.view(),
            tau,
            "the attack's embeddings and tau",
        )?;
        let g = backward_input_pass(mlp, &fwd, out.grad_z_q.view());
        check_g(&g)?;
        let at = trace.is_some().then(|| x.clone());
        pgd.step(&mut x, &g, p);
        if let (Some(t), Some(at)) = (trace.as_deref_mut(), at) {
            t.push((vec![at], vec![g]));
        }
    }
    check_finite_result("P and eps", "the adversarial view", &x)?;
    Ok(x)
}

/// ACL's dual-stream attack on checked input: `X₁` from `P` and `X₂` from
/// `Q`, both moved at every step by the gradient of `L(f_adv(X₁), f_adv(X₂))`
/// at the current pair.
pub(crate) fn acl_attack<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    loss: LossKind,
    tau: F,
    pgd: &Pgd<F>,
    mut trace: Option<&mut Vec<TraceStep<F>>>,
) -> Result<(Array2<F>, Array2<F>)> {
    let (_, mode) = pgd.modes();
    let mut x = pgd.starts(&[p, q]);
    let mut x2 = x.pop().expect("two starts");
    let mut x1 = x.pop().expect("two starts");
    for _ in 0..pgd.steps {
        let f1 = mlp.forward_checked("the adversarial view of P", x1.view(), mode)?;
        let f2 = mlp.forward_checked("the adversarial view of Q", x2.view(), mode)?;
        let out = checked_loss(
            loss,
            f1.z.view(),
            f2.z.view(),
            tau,
            "the attack's embeddings and tau",
        )?;
        let g1 = backward_input_pass(mlp, &f1, out.grad_z_p.view());
        let g2 = backward_input_pass(mlp, &f2, out.grad_z_q.view());
        check_g(&g1)?;
        check_g(&g2)?;
        let at = trace.is_some().then(|| vec![x1.clone(), x2.clone()]);
        pgd.step(&mut x1, &g1, p);
        pgd.step(&mut x2, &g2, q);
        if let (Some(t), Some(at)) = (trace.as_deref_mut(), at) {
            t.push((at, vec![g1, g2]));
        }
    }
    check_finite_result("P, Q and eps", "the adversarial views", &x1)?;
    check_finite_result("P, Q and eps", "the adversarial views", &x2)?;
    Ok((x1, x2))
}

// ----------------------------------------------------------- the objective --

/// One loss term `weight · L(z_a, z_b)` between forward passes `a` and `b`.
#[derive(Debug, Clone, Copy)]
struct Term<F> {
    a: usize,
    b: usize,
    weight: F,
}

/// What [`weighted_terms`] computed.
struct Objective<F> {
    /// `L(z_a, z_b)` of every term, in order.
    values: Vec<F>,
    /// `Σ weight · value`.
    total: F,
    grads: MlpGrads<F>,
    stats: StatsLog<F>,
}

/// The value and parameter gradient of `Σ_t w_t L(z_{a_t}, z_{b_t})` over
/// the forward passes `z_i = f(x_i)` (every pass in a training mode):
///
/// ```text
/// dz_i = Σ_{t: a_t = i} w_t ∂L/∂z_a  +  Σ_{t: b_t = i} w_t ∂L/∂z_b
/// dθ   = Σ_i  backward(pass i, dz_i)
/// ```
fn weighted_terms<F: Real>(
    mlp: &Mlp<F>,
    inputs: &[(&str, ArrayView2<'_, F>, Mode)],
    terms: &[Term<F>],
    loss: LossKind,
    tau: F,
) -> Result<Objective<F>> {
    let passes = inputs
        .iter()
        .map(|(what, x, mode)| mlp.forward_checked(what, *x, *mode))
        .collect::<Result<Vec<_>>>()?;
    let mut dz: Vec<Array2<F>> = passes
        .iter()
        .map(|f| Array2::zeros(f.z.raw_dim()))
        .collect();
    let mut values = Vec::with_capacity(terms.len());
    let mut total = F::zero();
    for t in terms {
        let out = checked_loss(
            loss,
            passes[t.a].z.view(),
            passes[t.b].z.view(),
            tau,
            &format!(
                "the embeddings of {} and {}, and tau",
                inputs[t.a].0, inputs[t.b].0
            ),
        )?;
        dz[t.a].scaled_add(t.weight, &out.grad_z_p);
        dz[t.b].scaled_add(t.weight, &out.grad_z_q);
        total += t.weight * out.value;
        values.push(out.value);
    }
    if !total.is_finite() {
        return Err(ClaeError::Overflow {
            cause: "the loss terms and their weights".into(),
            quantity: "L_total".into(),
            precision: F::NAME.to_string(),
        });
    }
    let mut grads = MlpGrads::none(mlp);
    for (fwd, dz) in passes.iter().zip(&dz) {
        grads.add_unchecked(&backward_pass(mlp, fwd, dz.view()).0);
    }
    let stats = passes.into_iter().map(|f| (f.mode, f.stats)).collect();
    Ok(Objective {
        values,
        total,
        grads,
        stats,
    })
}

// ------------------------------------------------------------ the config --

/// Which peer method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PeerMethod {
    /// ACL-style dual stream: both views attacked together, the clean and
    /// the adversarial pair weighted ½ each.
    Acl,
    /// RoCL-style: `P` attacked against its clean positive `Q`; the
    /// adversarial term weighted `weight` (finite, `>= 0`).
    Rocl {
        /// `λ`.
        weight: f64,
    },
}

/// A peer training step besides its optimizer.
///
/// ```
/// use clae_reference::{loss::LossKind, peers::{PeerConfig, PeerMethod}};
/// let c = PeerConfig::rocl(LossKind::SimClr);
/// assert_eq!((c.tau, c.method), (0.5, PeerMethod::Rocl { weight: 1.0 / 256.0 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerConfig {
    /// ACL or RoCL.
    pub method: PeerMethod,
    /// The contrastive loss `L` (both peers use NT-Xent, [`LossKind::SimClr`]).
    pub loss: LossKind,
    /// Temperature, finite and `> 0`.
    pub tau: f64,
    /// The attack.
    pub pgd: PeerPgd,
}

impl PeerConfig {
    /// ACL's defaults with the loss's default `tau`.
    pub fn acl(loss: LossKind) -> Self {
        PeerConfig {
            method: PeerMethod::Acl,
            loss,
            tau: loss.default_tau(),
            pgd: PeerPgd::acl(),
        }
    }

    /// RoCL's defaults with the loss's default `tau`; `λ = 1/256`.
    pub fn rocl(loss: LossKind) -> Self {
        PeerConfig {
            method: PeerMethod::Rocl {
                weight: 1.0 / 256.0,
            },
            loss,
            tau: loss.default_tau(),
            pgd: PeerPgd::rocl(),
        }
    }

    /// Checks `tau`, `λ` and the attack in the element type `F`.
    pub fn validate_for<F: Real>(&self) -> Result<()> {
        self.resolve::<F>().map(|_| ())
    }

    fn resolve<F: Real>(&self) -> Result<(F, Option<F>, Pgd<F>)> {
        let tau = check::tau::<F>(self.tau)?;
        let weight = match self.method {
            PeerMethod::Acl => None,
            PeerMethod::Rocl { weight } => Some(check::hyper::<F>(
                "RoCL weight lambda",
                weight,
                Domain::NonNegative,
            )?),
        };
        Ok((tau, weight, self.pgd.resolve::<F>()?))
    }

    /// Number of adversarial views (ACL 2, RoCL 1).
    pub fn views(&self) -> usize {
        match self.method {
            PeerMethod::Acl => 2,
            PeerMethod::Rocl { .. } => 1,
        }
    }
}

// -------------------------------------------------------- the public API --

/// The factors of a [`PeerAttackTrace`]'s element count for an `n x d`
/// batch: `2k + 1` arrays (the start and `k − 1` further iterates, `k`
/// gradients, the view) per adversarial view. Both implementations' traces
/// are held to it (docs/SPEC.md §7.1, sizes), so the same input is too large
/// for both or for neither.
pub fn trace_arrays(cfg: &PeerConfig, n: usize, d: usize) -> [usize; 4] {
    [
        cfg.pgd.steps.saturating_mul(2).saturating_add(1),
        cfg.views(),
        n,
        d,
    ]
}

/// The checks of docs/SPEC.md §7.1 in its order; with `trace`, also the size
/// of a [`PeerAttackTrace`] (before the inputs' values, like every size).
fn check_inputs<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &PeerConfig,
    trace: bool,
) -> Result<(F, Option<F>, Pgd<F>)> {
    mlp.validate()?;
    let resolved = cfg.resolve::<F>()?;
    check::pair_shapes(("P", p), ("Q", q), Some(mlp.config().d_in))?;
    mlp.config().check_batch_size::<F>("P", p.nrows())?;
    resolved.2.check_size(cfg.views(), p.nrows(), p.ncols())?;
    if trace {
        let what = "the iterates and gradients of the PGD attack";
        let kept = check::elements(what, &trace_arrays(cfg, p.nrows(), p.ncols()))?;
        check::allocatable::<F>(what, kept)?;
    }
    check::finite("P", p)?;
    check::finite("Q", q)?;
    Ok(resolved)
}

/// The adversarial views of a peer step (ACL: `[X₁, X₂]`; RoCL: `[X]`),
/// with no side effects.
///
/// ```
/// use ndarray::Array2;
/// use clae_reference::{encoder::{Mlp, MlpConfig}, loss::LossKind, peers::{peer_views, PeerConfig}};
/// let mlp = Mlp::<f64>::new(MlpConfig::new(4, 6, 1, 3), 1).unwrap();
/// let p = Array2::from_shape_fn((5, 4), |(i, j)| 0.5 + 0.3 * ((i * 4 + j) as f64).sin());
/// let cfg = PeerConfig::acl(LossKind::SimClr);
/// let views = peer_views(&mlp, p.view(), p.view(), &cfg).unwrap();
/// assert_eq!(views.len(), 2);
/// for (x, s) in views[0].iter().zip(p.iter()) {
///     assert!((x - s).abs() <= cfg.pgd.eps + 1e-15 && (0.0..=1.0).contains(x));
/// }
/// ```
pub fn peer_views<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &PeerConfig,
) -> Result<Vec<Array2<F>>> {
    let (tau, _, pgd) = check_inputs(mlp, p, q, cfg, false)?;
    Ok(match cfg.method {
        PeerMethod::Acl => {
            let (x1, x2) = acl_attack(mlp, p, q, cfg.loss, tau, &pgd, None)?;
            vec![x1, x2]
        }
        PeerMethod::Rocl { .. } => vec![rocl_attack(mlp, p, q, cfg.loss, tau, &pgd, None)?],
    })
}

/// One PGD step of a trace: the views' iterates and their gradients.
type TraceStep<F> = (Vec<Array2<F>>, Vec<Array2<F>>);

/// A peer attack with the iterate and input gradient of every PGD step: what a
/// conformance check needs to tell a sign decided by rounding from a real
/// difference, and what the conformance vectors record.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerAttackTrace<F> {
    /// The adversarial views: ACL `[X₁, X₂]`, RoCL `[X]`.
    pub views: Vec<Array2<F>>,
    /// `iterates[s][v]`: view `v` before PGD step `s` moved it
    /// (`iterates[0]` is the start `X₀`).
    pub iterates: Vec<Vec<Array2<F>>>,
    /// `gradients[s][v]`: `∇_X J` of view `v` at `iterates[s][v]`, in the
    /// order of [`Self::views`].
    pub gradients: Vec<Vec<Array2<F>>>,
}

/// [`peer_views`] with every PGD step's iterate and input gradient, with no
/// side effects. Keeps `2k + 1` arrays per view: checked before anything is
/// allocated.
///
/// ```
/// use ndarray::Array2;
/// use clae_reference::{encoder::{Mlp, MlpConfig}, loss::LossKind};
/// use clae_reference::peers::{peer_attack_trace, peer_views, PeerConfig};
/// let mlp = Mlp::<f64>::new(MlpConfig::new(4, 6, 1, 3), 1).unwrap();
/// let p = Array2::from_shape_fn((5, 4), |(i, j)| 0.5 + 0.3 * ((i * 4 + j) as f64).sin());
/// let cfg = PeerConfig::rocl(LossKind::SimClr);
/// let trace = peer_attack_trace(&mlp, p.view(), p.view(), &cfg).unwrap();
/// assert_eq!((trace.gradients.len(), trace.gradients[0].len()), (cfg.pgd.steps, 1));
/// assert_eq!(trace.views, peer_views(&mlp, p.view(), p.view(), &cfg).unwrap());
/// ```
pub fn peer_attack_trace<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &PeerConfig,
) -> Result<PeerAttackTrace<F>> {
    let (tau, _, pgd) = check_inputs(mlp, p, q, cfg, true)?;
    let mut steps = Vec::new();
    let views = match cfg.method {
        PeerMethod::Acl => {
            let (x1, x2) = acl_attack(mlp, p, q, cfg.loss, tau, &pgd, Some(&mut steps))?;
            vec![x1, x2]
        }
        PeerMethod::Rocl { .. } => vec![rocl_attack(
            mlp,
            p,
            q,
            cfg.loss,
            tau,
            &pgd,
            Some(&mut steps),
        )?],
    };
    let (iterates, gradients) = steps.into_iter().unzip();
    Ok(PeerAttackTrace {
        views,
        iterates,
        gradients,
    })
}

/// A peer step's losses and gradients, and the running statistics it would
/// leave. Input checked by the caller.
fn peer_pass<F: Real>(
    mlp: &Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &PeerConfig,
    (tau, weight, pgd): (F, Option<F>, Pgd<F>),
) -> Result<Pass<F>> {
    let clean = Mode::Train(Branch::Clean);
    let adv = Mode::Train(Branch::Adv);
    let half = F::c(0.5);
    let (objective, view) = match cfg.method {
        PeerMethod::Acl => {
            let (x1, x2) = acl_attack(mlp, p, q, cfg.loss, tau, &pgd, None)?;
            let inputs = [
                ("P", p, clean),
                ("Q", q, clean),
                ("X1 (the adversarial view of P)", x1.view(), adv),
                ("X2 (the adversarial view of Q)", x2.view(), adv),
            ];
            let terms = [
                Term {
                    a: 0,
                    b: 1,
                    weight: half,
                },
                Term {
                    a: 2,
                    b: 3,
                    weight: half,
                },
            ];
            (weighted_terms(mlp, &inputs, &terms, cfg.loss, tau)?, x1)
        }
        PeerMethod::Rocl { .. } => {
            let x = rocl_attack(mlp, p, q, cfg.loss, tau, &pgd, None)?;
            let inputs = [
                ("P", p, clean),
                ("Q", q, clean),
                ("X (the adversarial view of P)", x.view(), adv),
            ];
            let terms = [
                Term {
                    a: 0,
                    b: 1,
                    weight: F::one(),
                },
                Term {
                    a: 1,
                    b: 2,
                    weight: weight.expect("RoCL has a weight"),
                },
            ];
            (weighted_terms(mlp, &inputs, &terms, cfg.loss, tau)?, x)
        }
    };
    let grad_mags = check_grads(
        mlp,
        &objective.grads,
        "P, Q, the adversarial views and the weights",
    )?;
    let running = mlp.running_after(
        objective.stats.iter().map(|(m, s)| (*m, s.as_slice())),
        "P, Q and the adversarial views",
    )?;
    let report = StepReport {
        loss_clean: objective.values[0],
        loss_adv: Some(objective.values[1]),
        total: objective.total,
        q_adv: Some(view),
    };
    Ok(Pass {
        report,
        grads: objective.grads,
        running,
        grad_mags,
    })
}

/// Loss and parameter gradients of a peer step; updates the running
/// statistics (clean: P, Q; adv: the adversarial views) but not the
/// parameters. The report's `q_adv` is the view of `P` (ACL's `X₁`,
/// RoCL's `X`); `loss_adv` the adversarial term's `L`. On an error nothing
/// is changed.
pub fn peer_gradients<F: Real>(
    mlp: &mut Mlp<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &PeerConfig,
) -> Result<(StepReport<F>, MlpGrads<F>)> {
    let resolved = check_inputs(mlp, p, q, cfg, false)?;
    let pass = peer_pass(mlp, p, q, cfg, resolved)?;
    mlp.commit_running(pass.running);
    Ok((pass.report, pass.grads))
}

/// One peer training step: [`peer_gradients`], then the optimizer. On an
/// error nothing has changed (parameters, running statistics, optimizer
/// state).
///
/// ```
/// use ndarray::Array2;
/// use clae_reference::{encoder::{Mlp, MlpConfig}, loss::LossKind};
/// use clae_reference::{optim::{Optimizer, OptimizerConfig}, peers::{peer_step, PeerConfig}};
/// let mut mlp = Mlp::<f64>::new(MlpConfig::new(4, 6, 1, 3), 1).unwrap();
/// let mut opt = Optimizer::new(OptimizerConfig::authors_adam(), &mlp).unwrap();
/// let p = Array2::from_shape_fn((5, 4), |(i, j)| 0.5 + 0.3 * ((i * 4 + j) as f64).sin());
/// let q = p.mapv(|v| 0.9 * v + 0.05);
/// let r = peer_step(&mut mlp, &mut opt, p.view(), q.view(), &PeerConfig::acl(LossKind::SimClr)).unwrap();
/// assert!((r.total - 0.5 * (r.loss_clean + r.loss_adv.unwrap())).abs() < 1e-12);
/// ```
pub fn peer_step<F: Real>(
    mlp: &mut Mlp<F>,
    opt: &mut Optimizer<F>,
    p: ArrayView2<'_, F>,
    q: ArrayView2<'_, F>,
    cfg: &PeerConfig,
) -> Result<StepReport<F>> {
    let param_mags = mlp.parameter_magnitudes()?;
    opt.check_fits(mlp)?;
    let resolved = check_inputs(mlp, p, q, cfg, false)?;
    let pass = peer_pass(mlp, p, q, cfg, resolved)?;
    opt.step_measured(mlp, &pass.grads, &param_mags, &pass.grad_mags)?;
    mlp.commit_running(pass.running);
    Ok(pass.report)
}
