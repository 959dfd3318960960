//! What the suites generate: a configuration (sizes, hyper-parameters, loss,
//! optimizer, attack), a kind of data and, for the corner suite, a change to
//! the encoder, with the `proptest` strategies that draw them.
//!
//! * [`main_case`] draws only well-conditioned configurations (the static
//!   conditions, per precision), and [`well_conditioned_case`] adds the
//!   conditions that depend on the data and the model as a filter
//!   ([`super::conditioning::well_conditioned`]).
//! * [`corner_case`] draws exactly what the main suite leaves out.

use super::conditioning::{peer_well_conditioned, well_conditioned, Ill};
use crate::backend::{Model, Precision, StepKind};
use clae_reference::adversarial::{AdvConfig, Attack, QStart, Recipe};
use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
use clae_reference::loss::LossKind;
use clae_reference::optim::OptimizerConfig;
use clae_reference::peers::{AttackBn, PeerConfig, PeerMethod, PeerPgd};
use clae_reference::rng::Rng;
use clae_reference::step::ClaeConfig;
use ndarray::Array2;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The kinds of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Standard normal rows; `Q = 0.9 P + 0.3 noise`.
    Gaussian,
    /// Every row a small perturbation of one common row, of relative size
    /// [`Case::spread`]: `1e-3` between `f64` backends, `5e-2` when an `f32`
    /// backend takes part (with `tau >= 0.1`). Their gradients are
    /// differences of nearly equal vectors weighted by `1/tau`, with
    /// rounding error about `u / (tau · spread)` relative: `1e-11` in `f64`
    /// at `tau = 0.01`, `1e-5` in `f32` at `tau = 0.1`, but `6e-4` in `f32`
    /// at `tau = 0.01` and spread `1e-2`, beyond docs/SPEC.md §8's `1e-4`.
    NearDuplicates,
    /// Gaussian, with row 0 of `Q` equal to row 0 of `P`.
    SharedRow,
    /// Corner: Gaussian with this many rows of each view exactly zero
    /// (several zero rows are duplicate images).
    ZeroRows(usize),
    /// Corner: Gaussian times `1e3`.
    Large,
    /// Corner: every row one common row plus noise of relative size `1e-7`,
    /// so that every BatchNorm feature's batch values coincide to rounding.
    Coinciding,
}

/// A change the corner suite makes to the initial encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tweak {
    /// None.
    None,
    /// The first bias of the head moved so that image 0 of `Q_start`'s
    /// first head pre-activation is 0 in the adv branch: a ReLU at its kink.
    Kink,
    /// The head's first biases so negative that every head ReLU is off: all
    /// embeddings are one vector.
    DeadHead,
}

/// One generated configuration plus the seed of its data and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// `N`.
    pub n: usize,
    /// `d`.
    pub d: usize,
    /// `D_in`.
    pub d_in: usize,
    /// Backbone depth in `0..=3`.
    pub depth: usize,
    /// Hidden width.
    pub hidden: usize,
    /// `tau` in `[0.01, 2]` (log-uniform).
    pub tau: f64,
    /// `eps` in `[0, 0.5]`.
    pub eps: f64,
    /// `alpha` in `[0, 2]`.
    pub alpha: f64,
    /// The loss.
    pub loss: LossKind,
    /// `true`: SGD (authors' Plain/UEL settings); `false`: Adam (authors' SimCLR settings).
    pub sgd: bool,
    /// Which view is perturbed.
    pub q_start: QStart,
    /// Clamp `Q_adv` to `[-1, 1]` (scaled with the data for `Large`).
    pub clamp: bool,
    /// `0`: FGSM; `k >= 1`: PGD with `k` steps of `eta = eps / 2`.
    pub pgd_steps: usize,
    /// Which data.
    pub data: DataKind,
    /// A change to the initial encoder (corner suite).
    pub tweak: Tweak,
    /// Seed of the data and the initial parameters.
    pub seed: u64,
    /// Whether an `f32` backend takes part: selects the near-duplicates'
    /// spread and `tau` floor, and the precision the conditions are
    /// computed for.
    pub f32_involved: bool,
}

/// Which peer method a peer property runs (docs/SPEC.md §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// ACL-style dual stream.
    Acl,
    /// RoCL-style instance-wise.
    Rocl,
}

/// The draws every strategy shares: hyper-parameters and the discrete
/// choices, sizes and data left to the caller.
#[allow(clippy::type_complexity)]
fn common() -> impl Strategy<Value = ((f64, f64, f64), (LossKind, bool, QStart, bool, usize, u64))>
{
    // log10(tau) in [log10 0.01, log10 2]
    let hyper = (
        -2.0f64..=std::f64::consts::LOG10_2,
        0.0f64..=0.5,
        0.0f64..=2.0,
    );
    let kinds = (
        prop_oneof![
            Just(LossKind::Plain),
            Just(LossKind::SimClr),
            Just(LossKind::Uel)
        ],
        any::<bool>(),
        prop_oneof![Just(QStart::P), Just(QStart::Q)],
        any::<bool>(),
        prop_oneof![3 => Just(0usize), 2 => 1usize..=5],
        any::<u64>(),
    );
    (hyper, kinds)
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    (n, d, d_in, depth, hidden): (usize, usize, usize, usize, usize),
    (log_tau, eps, alpha): (f64, f64, f64),
    (loss, sgd, q_start, clamp, pgd_steps, seed): (LossKind, bool, QStart, bool, usize, u64),
    data: DataKind,
    tweak: Tweak,
    f32_involved: bool,
) -> Case {
    Case {
        n,
        d,
        d_in,
        depth,
        hidden,
        tau: 10f64.powf(log_tau),
        eps,
        alpha,
        loss,
        sgd,
        q_start,
        clamp,
        pgd_steps,
        data,
        tweak,
        seed,
        f32_involved,
    }
}

/// The main suite's configurations for a pair whose coarser precision is
/// `precision`, with the conditions that do not depend on the data: `N` in
/// `3..=64` (at `N = 2` BatchNorm's backward is a cancellation residue),
/// `d` in `2..=64` (at `d = 1` the gradient through the normalisation is
/// zero analytically), `D_in` in `1..=64`, depth `0..=3`, hidden width
/// `2..=64`; Gaussian rows, near-duplicates (spread and `tau` floor per
/// precision, see [`DataKind::NearDuplicates`]; for `f32` without
/// BatchNorm) or a row shared by `P` and `Q` — no zero rows, no `1e3`
/// magnitudes.
pub fn main_case(precision: Precision) -> impl Strategy<Value = Case> {
    let f32_involved = precision == Precision::F32;
    let sizes = (
        3usize..=64,
        2usize..=64,
        1usize..=64,
        0usize..=3,
        2usize..=64,
    );
    let data = prop_oneof![
        3 => Just(DataKind::Gaussian),
        1 => Just(DataKind::NearDuplicates),
        1 => Just(DataKind::SharedRow),
    ];
    (sizes, common(), data).prop_map(move |(sizes, (hyper, kinds), data)| {
        let mut c = assemble(sizes, hyper, kinds, data, Tweak::None, f32_involved);
        if f32_involved && data == DataKind::NearDuplicates {
            // u / (tau spread) below 1e-5; and no BatchNorm, whose centring
            // of features spread 5e-2 about their mean has kappa_bn about
            // 1 / 5e-2 = 20, above f32's limit of 1e-6 / 2^-24 = 17
            c.tau = c.tau.max(0.1);
            c.depth = 0;
        }
        c
    })
}

/// [`main_case`] with the encoder without BatchNorm (`depth = 0`), so that a
/// dependence across rows cannot come from batch statistics.
pub fn case_without_bn(precision: Precision) -> impl Strategy<Value = Case> {
    main_case(precision).prop_map(|c| Case { depth: 0, ..c })
}

/// Draws and rejections of [`well_conditioned_case`] (`false`) and
/// [`peer_case`] (`true`), per precision and condition (`None`: accepted).
static DRAWS: Mutex<BTreeMap<DrawKey, usize>> = Mutex::new(BTreeMap::new());

/// A draw's precision, generator (`true`: the peer one) and verdict.
type DrawKey = (Precision, bool, Option<Ill>);

fn count(precision: Precision, peer: bool, verdict: Option<Ill>) {
    *DRAWS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((precision, peer, verdict))
        .or_default() += 1;
}

/// [`main_case`] filtered by [`well_conditioned`] over `steps` training
/// steps: the main suite's generator. Every draw is counted
/// ([`rejections`]).
pub fn well_conditioned_case(precision: Precision, steps: usize) -> impl Strategy<Value = Case> {
    main_case(precision).prop_filter("ill-conditioned (suite::conditioning)", move |c| {
        let verdict = well_conditioned(c, steps).err();
        count(precision, false, verdict);
        verdict.is_none()
    })
}

/// [`main_case`] filtered by [`peer_well_conditioned`] for both peer
/// methods: the peer property's generator (counted apart, [`rejections`]).
pub fn peer_case(precision: Precision) -> impl Strategy<Value = Case> {
    main_case(precision).prop_filter(
        "ill-conditioned peer step (suite::conditioning)",
        move |c| {
            let verdict = [PeerKind::Acl, PeerKind::Rocl]
                .iter()
                .find_map(|&m| peer_well_conditioned(c, m).err());
            count(precision, true, verdict);
            verdict.is_none()
        },
    )
}

/// The generators' draws so far: per precision and generator (`true`: the
/// peer one), `(accepted, rejections per condition)`.
pub fn rejections() -> BTreeMap<(Precision, bool), (usize, BTreeMap<Ill, usize>)> {
    let draws = DRAWS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out: BTreeMap<(Precision, bool), (usize, BTreeMap<Ill, usize>)> = BTreeMap::new();
    for (&(precision, peer, verdict), &count) in draws.iter() {
        let entry = out.entry((precision, peer)).or_default();
        match verdict {
            None => entry.0 += count,
            Some(ill) => *entry.1.entry(ill).or_default() += count,
        }
    }
    out
}

/// The corners the main suite does not draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Corner {
    PairBatchNorm,
    OneDim,
    WidthOne,
    Coinciding,
    ReluKink,
    ZeroRows,
    Large,
    Identical,
}

/// The corner suite's configurations: each case is a [`main_case`]-like
/// draw (over `N` in `2..=64`, `d`, `D_in`, hidden in `1..=64`) with one
/// corner forced — `N = 2` with BatchNorm, `d = 1`, width-1 layers,
/// coinciding BatchNorm features, a ReLU at its kink, zero rows, `1e3`
/// magnitudes, identical embeddings. [`Case::corners`] names what a case
/// is.
pub fn corner_case(precision: Precision) -> impl Strategy<Value = Case> {
    let f32_involved = precision == Precision::F32;
    let sizes = (
        2usize..=64,
        1usize..=64,
        1usize..=64,
        0usize..=3,
        1usize..=64,
    );
    let corner = prop_oneof![
        Just(Corner::PairBatchNorm),
        Just(Corner::OneDim),
        Just(Corner::WidthOne),
        Just(Corner::Coinciding),
        Just(Corner::ReluKink),
        Just(Corner::ZeroRows),
        Just(Corner::Large),
        Just(Corner::Identical),
    ];
    (sizes, common(), corner, 1usize..=64).prop_map(
        move |((n, d, d_in, depth, hidden), (hyper, kinds), corner, zeros)| {
            let mut sizes = (n, d, d_in, depth, hidden);
            let (mut data, mut tweak) = (DataKind::Gaussian, Tweak::None);
            match corner {
                Corner::PairBatchNorm => {
                    sizes.0 = 2;
                    sizes.3 = depth.max(1);
                }
                Corner::OneDim => sizes.1 = 1,
                Corner::WidthOne => sizes.4 = 1,
                Corner::Coinciding => {
                    data = DataKind::Coinciding;
                    sizes.3 = depth.max(1);
                }
                Corner::ReluKink => tweak = Tweak::Kink,
                Corner::ZeroRows => data = DataKind::ZeroRows(zeros.min(n)),
                Corner::Large => data = DataKind::Large,
                Corner::Identical => tweak = Tweak::DeadHead,
            }
            assemble(sizes, hyper, kinds, data, tweak, f32_involved)
        },
    )
}

impl Case {
    /// The encoder shape.
    pub fn mlp_config(&self) -> MlpConfig {
        MlpConfig::new(self.d_in, self.hidden, self.depth, self.d)
    }

    /// What makes this case a corner (empty for a main-suite case).
    pub fn corners(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.n == 2 && self.depth > 0 {
            out.push("N = 2 BatchNorm");
        }
        if self.d == 1 {
            out.push("d = 1");
        }
        if self.hidden == 1 {
            out.push("width 1");
        }
        match self.data {
            DataKind::Coinciding => out.push("coinciding features"),
            DataKind::ZeroRows(_) => out.push("zero rows"),
            DataKind::Large => out.push("1e3 magnitudes"),
            _ => {}
        }
        match self.tweak {
            Tweak::Kink => out.push("ReLU kink"),
            Tweak::DeadHead => out.push("identical embeddings"),
            Tweak::None => {}
        }
        out
    }

    /// The initial encoder: the reference's seeded initialisation, with the
    /// BatchNorm state moved off PyTorch's initial values (γ, β, running
    /// statistics drawn at random) so that those code paths are exercised,
    /// and the case's [`Tweak`].
    pub fn model(&self) -> Model {
        let config = self.mlp_config();
        let mut mlp = Mlp::<f64>::new(config, self.seed).expect("generated configs are valid");
        let mut rng = Rng::new(self.seed ^ 0xB0B0);
        for layer in &mut mlp.backbone {
            for bn in [&mut layer.bn.clean, &mut layer.bn.adv] {
                bn.gamma.mapv_inplace(|_| rng.uniform_in(0.5, 1.5));
                bn.beta.mapv_inplace(|_| rng.uniform_in(-0.2, 0.2));
                bn.running_mean.mapv_inplace(|_| rng.uniform_in(-0.5, 0.5));
                bn.running_var.mapv_inplace(|_| rng.uniform_in(0.5, 2.0));
            }
        }
        if self.tweak != Tweak::None {
            let (p, q) = self.batches(self.d_in, 1).remove(0);
            let x = if self.q_start == QStart::P { &p } else { &q };
            // the head's pre-activations of Q_start in the adv branch
            let head_in = mlp
                .forward(x.view(), Mode::Train(Branch::Adv))
                .map(|f| f.acts.last().cloned().unwrap_or_else(|| x.clone()))
                .expect("the reference runs a generated case");
            let h = head_in.dot(&mlp.head[0].weight.t()) + &mlp.head[0].bias;
            match self.tweak {
                Tweak::Kink => mlp.head[0].bias[0] -= h[[0, 0]],
                Tweak::DeadHead => {
                    // far below every pre-activation any view within eps reaches
                    let reach = h.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let w = mlp.head[0].weight.iter().fold(0.0f64, |m, v| m + v.abs());
                    let margin = 2.0 * reach + 10.0 * (1.0 + w * self.scale());
                    mlp.head[0].bias.mapv_inplace(|b| b - margin);
                }
                Tweak::None => {}
            }
        }
        Model {
            config,
            state: mlp.state_dict(),
        }
    }

    /// Scale of the data (`1e3` for [`DataKind::Large`], else 1).
    pub fn scale(&self) -> f64 {
        if self.data == DataKind::Large {
            1e3
        } else {
            1.0
        }
    }

    /// Relative spread of near-duplicate rows (see [`DataKind::NearDuplicates`]).
    pub fn spread(&self) -> f64 {
        match (self.data, self.f32_involved) {
            (DataKind::Coinciding, _) => 1e-7,
            (_, true) => 5e-2,
            (_, false) => 1e-3,
        }
    }

    /// `count` batches `(P, Q)` of `N x width` encoder inputs of this case's data kind.
    pub fn batches(&self, width: usize, count: usize) -> Vec<(Array2<f64>, Array2<f64>)> {
        let mut rng = Rng::new(self.seed ^ 0xDA7A);
        (0..count).map(|_| self.batch(width, &mut rng)).collect()
    }

    fn batch(&self, width: usize, rng: &mut Rng) -> (Array2<f64>, Array2<f64>) {
        let n = self.n;
        let mut p = Array2::from_shape_simple_fn((n, width), || rng.normal());
        let noise = Array2::from_shape_simple_fn((n, width), || rng.normal());
        let mut q = &p * 0.9 + &noise * 0.3;
        match self.data {
            DataKind::Gaussian => {}
            DataKind::NearDuplicates | DataKind::Coinciding => {
                let base: Vec<f64> = (0..width).map(|_| rng.normal()).collect();
                for m in [&mut p, &mut q] {
                    for mut row in m.rows_mut() {
                        for (v, b) in row.iter_mut().zip(&base) {
                            *v = b + self.spread() * rng.normal();
                        }
                    }
                }
            }
            DataKind::ZeroRows(count) => {
                for m in [&mut p, &mut q] {
                    for i in rng.permutation(n).into_iter().take(count) {
                        m.row_mut(i).fill(0.0);
                    }
                }
            }
            DataKind::Large => {
                p *= 1e3;
                q *= 1e3;
            }
            DataKind::SharedRow => {
                let row = p.row(0).to_owned();
                q.row_mut(0).assign(&row);
            }
        }
        (p, q)
    }

    /// Loss inputs `(Z_P, Z_Q)`, `N x d`: the data's rows normalised as the
    /// encoder would (zero rows stay zero), or raw for SimCLR (whose loss
    /// normalises its own inputs), at `d = 1` (where unit rows are all ±1,
    /// duplicates) and for `1e3` magnitudes. With identical embeddings
    /// every row is the first.
    pub fn embeddings(&self) -> (Array2<f64>, Array2<f64>) {
        let (mut p, mut q) = self.batch(self.d, &mut Rng::new(self.seed ^ 0xE111));
        if self.tweak == Tweak::DeadHead {
            let first = p.row(0).to_owned();
            for m in [&mut p, &mut q] {
                for mut row in m.rows_mut() {
                    row.assign(&first);
                }
            }
        }
        if self.loss == LossKind::SimClr || self.d == 1 || self.data == DataKind::Large {
            return (p, q);
        }
        // u / max(‖u‖, 1e-12) per row, as the encoder's output normalisation
        let unit = |mut m: Array2<f64>| {
            for mut row in m.rows_mut() {
                let norm = row.dot(&row).sqrt();
                let denom = norm.max(clae_reference::layers::NORMALIZE_EPS);
                row.mapv_inplace(|v| v / denom);
            }
            m
        };
        (unit(p), unit(q))
    }

    /// The adversarial configuration.
    pub fn adv(&self) -> AdvConfig {
        AdvConfig {
            eps: self.eps,
            start: self.q_start,
            attack: if self.pgd_steps == 0 {
                Attack::Fgsm
            } else {
                Attack::Pgd {
                    steps: self.pgd_steps,
                    eta: self.eps / 2.0,
                }
            },
            clamp: self.clamp.then_some((-self.scale(), self.scale())),
        }
    }

    /// The CLAE step configuration for a recipe.
    pub fn clae(&self, recipe: Recipe) -> ClaeConfig {
        ClaeConfig {
            loss: self.loss,
            tau: self.tau,
            alpha: self.alpha,
            adv: self.adv(),
            recipe,
        }
    }

    /// A peer step of this case (docs/SPEC.md §6.1): the case's loss, `tau`
    /// and `eps`; `eta = eps / 2`, `max(k, 1)` steps, the random start from
    /// the case's seed, the clamp when the case clamps; the attack's
    /// BatchNorm in eval mode for an even seed, train mode for an odd one;
    /// RoCL's weight the case's `alpha`.
    pub fn peer(&self, method: PeerKind) -> PeerConfig {
        PeerConfig {
            method: match method {
                PeerKind::Acl => PeerMethod::Acl,
                PeerKind::Rocl => PeerMethod::Rocl { weight: self.alpha },
            },
            loss: self.loss,
            tau: self.tau,
            pgd: PeerPgd {
                eps: self.eps,
                eta: self.eps / 2.0,
                steps: self.pgd_steps.max(1),
                random_start: Some(self.seed),
                bn: if self.seed % 2 == 0 {
                    AttackBn::Eval
                } else {
                    AttackBn::Train
                },
                clamp: self.clamp.then_some((-self.scale(), self.scale())),
            },
        }
    }

    /// The plain step configuration.
    pub fn plain(&self) -> StepKind {
        StepKind::Plain {
            loss: self.loss,
            tau: self.tau,
        }
    }

    /// The optimizer (the authors' settings).
    pub fn optimizer(&self) -> OptimizerConfig {
        if self.sgd {
            OptimizerConfig::authors_sgd()
        } else {
            OptimizerConfig::authors_adam()
        }
    }
}
