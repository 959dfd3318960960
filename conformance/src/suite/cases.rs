//! What the suite generates: a configuration (sizes, hyper-parameters, loss,
//! optimizer, attack) and a batch of data of one of several kinds, with the
//! `proptest` strategies that draw them.

use crate::backend::{Model, StepKind};
use clae_reference::adversarial::{AdvConfig, Attack, QStart, Recipe};
use clae_reference::encoder::{Mlp, MlpConfig};
use clae_reference::loss::LossKind;
use clae_reference::optim::OptimizerConfig;
use clae_reference::rng::Rng;
use clae_reference::step::ClaeConfig;
use ndarray::Array2;
use proptest::prelude::*;

/// The kinds of data docs/SPEC.md's properties must hold on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Standard normal rows; `Q = 0.9 P + 0.3 noise`.
    Gaussian,
    /// Every row a small perturbation of one common row, of relative size
    /// [`Case::spread`]: `1e-3` between `f64` backends, `5e-2` when an
    /// `f32` backend takes part (and then `tau >= 0.1`, see
    /// [`crate::suite::properties::Pair::prepare`]). The gradients of
    /// near-duplicates are differences of nearly equal vectors weighted by
    /// `1/tau` (and BatchNorm divides by their spread), so their rounding
    /// error is about `u / (tau · spread)` relative: `1e-11` for `f64` at
    /// `tau = 0.01`, but `6e-4` for `f32` at `tau = 0.01` and spread `1e-2`
    /// — beyond docs/SPEC.md §8's `1e-4` for any `f32` implementation. With `tau >=
    /// 0.1` and `5e-2` it is `1e-5`.
    NearDuplicates,
    /// Gaussian, with one row of each view exactly zero (before any
    /// normalisation). One, not several: two zero images are duplicates,
    /// whose gradients cancel analytically, leaving both backends with
    /// rounding noise of arbitrary sign where docs/SPEC.md §8's relative measure has
    /// no scale to work with.
    ZeroRows,
    /// Gaussian times `1e3`.
    Large,
    /// Gaussian, with row 0 of `Q` equal to row 0 of `P`.
    SharedRow,
}

/// One generated configuration plus the seed of its data and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// `N` in `2..=64`.
    pub n: usize,
    /// `d` in `1..=64`.
    pub d: usize,
    /// `D_in` in `1..=64`.
    pub d_in: usize,
    /// Backbone depth in `0..=3`.
    pub depth: usize,
    /// Hidden width in `1..=64`.
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
    /// Seed of the data and the initial parameters.
    pub seed: u64,
    /// Whether an `f32` backend takes part (set by the pair, not drawn):
    /// widens [`DataKind::NearDuplicates`].
    pub f32_involved: bool,
}

/// The full configuration space of the issue.
pub fn any_case() -> impl Strategy<Value = Case> {
    let sizes = (
        2usize..=64,
        1usize..=64,
        1usize..=64,
        0usize..=3,
        1usize..=64,
    );
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
        prop_oneof![
            3 => Just(DataKind::Gaussian),
            1 => Just(DataKind::NearDuplicates),
            1 => Just(DataKind::ZeroRows),
            1 => Just(DataKind::Large),
            1 => Just(DataKind::SharedRow),
        ],
        any::<u64>(),
    );
    (sizes, hyper, kinds).prop_map(
        |(
            (n, d, d_in, depth, hidden),
            (log_tau, eps, alpha),
            (loss, sgd, q_start, clamp, pgd_steps, data, seed),
        )| {
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
                seed,
                f32_involved: false,
            }
        },
    )
}

/// Like [`any_case`] but with `d >= 2`, for every property that
/// differentiates through the encoder's normalisation. At `d = 1` every
/// embedding is `±1` and its derivative w.r.t. the pre-normalisation output
/// is zero analytically: the reference's tangent projection returns exact
/// zeros, autograd through `F.normalize` returns rounding noise, and the
/// sign of noise is arbitrary (docs/SPEC.md §8 has no scale to excuse it by, since
/// `max|g_ref| = 0`). The losses and embeddings are still checked at `d = 1`.
pub fn encoder_case() -> impl Strategy<Value = Case> {
    any_case().prop_map(|c| Case { d: c.d.max(2), ..c })
}

/// Like [`encoder_case`] but with an encoder without BatchNorm (`depth = 0`), so
/// that a dependence across rows cannot come from batch statistics.
pub fn case_without_bn() -> impl Strategy<Value = Case> {
    encoder_case().prop_map(|c| Case { depth: 0, ..c })
}

impl Case {
    /// The encoder shape.
    pub fn mlp_config(&self) -> MlpConfig {
        MlpConfig::new(self.d_in, self.hidden, self.depth, self.d)
    }

    /// The initial encoder: the reference's seeded initialisation, with the
    /// BatchNorm state moved off PyTorch's initial values (γ, β, running
    /// statistics drawn at random) so that those code paths are exercised.
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
        if self.f32_involved {
            5e-2
        } else {
            1e-3
        }
    }

    /// `count` batches `(P, Q)` of `N x width` encoder inputs of this case's data kind.
    pub fn batches(&self, width: usize, count: usize) -> Vec<(Array2<f64>, Array2<f64>)> {
        let mut rng = Rng::new(self.seed ^ 0xDA7A);
        (0..count)
            .map(|_| self.batch(width, self.spread(), &mut rng))
            .collect()
    }

    fn batch(&self, width: usize, spread: f64, rng: &mut Rng) -> (Array2<f64>, Array2<f64>) {
        let n = self.n;
        let mut p = Array2::from_shape_simple_fn((n, width), || rng.normal());
        let noise = Array2::from_shape_simple_fn((n, width), || rng.normal());
        let mut q = &p * 0.9 + &noise * 0.3;
        match self.data {
            DataKind::Gaussian => {}
            DataKind::NearDuplicates => {
                let base: Vec<f64> = (0..width).map(|_| rng.normal()).collect();
                for m in [&mut p, &mut q] {
                    for mut row in m.rows_mut() {
                        for (v, b) in row.iter_mut().zip(&base) {
                            *v = b + spread * rng.normal();
                        }
                    }
                }
            }
            DataKind::ZeroRows => {
                for m in [&mut p, &mut q] {
                    let i = rng.below(n);
                    m.row_mut(i).fill(0.0);
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

    /// Embedding-like loss inputs `(Z_P, Z_Q)`, `N x d`: the data's rows
    /// normalised as the encoder would (zero rows stay zero); for SimCLR,
    /// whose loss normalises its own inputs, the raw rows (and at `d = 1`
    /// the raw rows for every loss).
    pub fn embeddings(&self) -> (Array2<f64>, Array2<f64>) {
        // At d = 1 a unit row is ±1, so near-duplicates would be exact
        // duplicates (whose gradients cancel to noise): use Gaussian rows.
        let data = if self.d == 1 && self.data == DataKind::NearDuplicates {
            DataKind::Gaussian
        } else {
            self.data
        };
        let case = Case {
            data,
            ..self.clone()
        };
        let (p, q) = case.batch(self.d, self.spread(), &mut Rng::new(self.seed ^ 0xE111));
        // SimCLR normalises its own inputs; at d = 1 unit rows are ±1 and a
        // batch of them is all duplicates (gradients cancel to noise), so
        // Plain and UEL get the raw rows there too.
        if self.loss == LossKind::SimClr || self.d == 1 {
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
