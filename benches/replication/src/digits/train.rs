//! Training: a small backend trait, its reference implementation, the
//! replication's hyper-parameters, and the training loop.
//!
//! One run = one (backend, loss, method, seed). The seed fixes the encoder's
//! initialisation and, through a second stream, the batch order and the
//! augmentations; the CLAE step draws no random numbers, so a plain run and
//! a CLAE run with the same seed start from the same weights and see the
//! same views (a paired design).

use super::augment::{augment_batch, AugmentConfig};
use super::data::{Digits, CLASSES, PIXELS};
use super::eval::{diagnostics, knn_top1, linear_probe, Diagnostics, ProbeConfig, KNN_K, KNN_T};
use super::{DigitsError, Result};
use clae_reference::encoder::{Mlp, MlpConfig};
use clae_reference::loss::LossKind;
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::rng::Rng;
use clae_reference::step::{clae_step, plain_step, ClaeConfig, StepReport};
use clae_reference::Real;
use indicatif::ProgressBar;
use ndarray::{Array2, ArrayView2, Axis};
use std::time::Instant;

/// Plain contrastive learning, CLAE, or CLAE's `eps = 0` control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `L(Z_P, Z_Q)` only (docs/SPEC.md §5's plain step).
    Plain,
    /// `L(Z_P, Z_Q) + alpha L(Z_P, Z_A)` with the FGSM view (docs/SPEC.md §5).
    Clae,
    /// The CLAE step with `eps = 0`, so `Q_adv = P`: the same extra loss
    /// term through the adv BatchNorm branch, the same cost, but no
    /// adversarial perturbation. Separates the effect of the perturbation
    /// from that of the second loss term and the dual BatchNorm.
    ClaeEps0,
}

impl Method {
    /// Plain and CLAE, the default comparison.
    pub const ALL: [Method; 2] = [Method::Plain, Method::Clae];

    /// `plain`, `clae` or `clae-eps0`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Plain => "plain",
            Method::Clae => "clae",
            Method::ClaeEps0 => "clae-eps0",
        }
    }

    /// Whether the run takes CLAE steps.
    pub fn is_clae(self) -> bool {
        self != Method::Plain
    }
}

/// Which implementation trains the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The pure-ndarray reference in `f32`.
    ReferenceF32,
    /// The pure-ndarray reference in `f64` (slower; for checking).
    ReferenceF64,
    /// libtorch through `clae-accelerated`, CPU, `f32`.
    TchCpuF32,
    /// libtorch through `clae-accelerated`, CUDA device 0, `f32`.
    TchCudaF32,
}

impl Backend {
    /// Short name used in tables and file names.
    pub fn name(self) -> &'static str {
        match self {
            Backend::ReferenceF32 => "reference-f32",
            Backend::ReferenceF64 => "reference-f64",
            Backend::TchCpuF32 => "tch-cpu-f32",
            Backend::TchCudaF32 => "tch-cuda-f32",
        }
    }

    /// Parses [`Backend::name`] (also `reference`, meaning `reference-f32`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "reference" | "reference-f32" => Ok(Backend::ReferenceF32),
            "reference-f64" => Ok(Backend::ReferenceF64),
            "tch" | "tch-cpu-f32" => Ok(Backend::TchCpuF32),
            "tch-cuda-f32" => Ok(Backend::TchCudaF32),
            _ => Err(DigitsError::config(
                "backend",
                format!(
                    "expected reference-f32, reference-f64, tch-cpu-f32 or tch-cuda-f32, got {s:?}"
                ),
            )),
        }
    }
}

/// Encoder shape (`D_in = 64` is fixed by the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Hidden width `h`.
    pub hidden: usize,
    /// Backbone blocks `L`.
    pub depth: usize,
    /// Embedding dimension `d`.
    pub d: usize,
}

/// Everything that defines a run besides its seed and backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Loss family.
    pub loss: LossKind,
    /// Plain or CLAE.
    pub method: Method,
    /// Temperature `tau`.
    pub tau: f64,
    /// FGSM step `eps` in `[0, 1]` pixel units (CLAE only).
    pub eps: f64,
    /// Weight `alpha` of the adversarial term (CLAE only).
    pub alpha: f64,
    /// Optimizer and its hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// Encoder shape.
    pub model: ModelConfig,
    /// Batch size `N`; the last incomplete batch of an epoch is dropped.
    pub batch_size: usize,
    /// Training epochs.
    pub epochs: usize,
    /// Augmentation strengths.
    pub augment: AugmentConfig,
    /// Linear probe settings.
    pub probe: ProbeConfig,
}

impl TrainConfig {
    /// The replication's setting for `loss` and `method`: docs/SPEC.md defaults for
    /// `tau`, `eps`, `alpha` and the optimizer family, with the changes the
    /// digits need (documented in the report and in the crate's README
    /// section): an MLP with `h = 256`, `L = 2`, `d = 64`; `N = 128`;
    /// 30 epochs; Adam's learning rate for SimCLR raised from 3e-4 to 1e-3
    /// because a run is only ~300 steps.
    pub fn digits(loss: LossKind, method: Method) -> Self {
        let optimizer = match loss {
            LossKind::SimClr => OptimizerConfig::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-6,
            },
            LossKind::Plain | LossKind::Uel => OptimizerConfig::authors_sgd(),
        };
        TrainConfig {
            loss,
            method,
            tau: loss.default_tau(),
            eps: loss.default_eps(),
            alpha: 1.0,
            optimizer,
            model: ModelConfig {
                hidden: 256,
                depth: 2,
                d: 64,
            },
            batch_size: 128,
            epochs: 30,
            augment: AugmentConfig::digits(),
            probe: ProbeConfig::default(),
        }
    }

    /// Checks what the reference does not check itself.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 2 {
            return Err(DigitsError::config(
                "batch size",
                format!("must be >= 2, got {}", self.batch_size),
            ));
        }
        self.augment.validate()?;
        self.optimizer.validate()?;
        self.clae_config().validate()?;
        MlpConfig::new(PIXELS, self.model.hidden, self.model.depth, self.model.d).validate()?;
        Ok(())
    }

    /// The FGSM step this run uses: `eps`, or 0 for [`Method::ClaeEps0`]
    /// (and for plain runs, which make no adversarial view).
    pub fn effective_eps(&self) -> f64 {
        match self.method {
            Method::Clae => self.eps,
            Method::Plain | Method::ClaeEps0 => 0.0,
        }
    }

    /// The reference's step configuration (FGSM on `P`, no clamp, lean recipe).
    pub fn clae_config(&self) -> ClaeConfig {
        let mut c = ClaeConfig::paper(self.loss);
        c.tau = self.tau;
        c.alpha = self.alpha;
        c.adv.eps = self.effective_eps();
        c
    }
}

/// Loss terms of one step, in `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLoss {
    /// `L_total`.
    pub total: f64,
    /// `L(Z_P, Z_Q)`.
    pub clean: f64,
    /// `L(Z_P, Z_A)` (CLAE steps only).
    pub adv: Option<f64>,
}

/// What the training loop needs from an implementation: the two steps of
/// docs/SPEC.md §5 and eval-mode embeddings. Inputs are `N x 64` `f32` batches; an
/// implementation converts to its own element type.
pub trait Trainer {
    /// A short description, e.g. `reference-f32`.
    fn backend(&self) -> String;
    /// One plain contrastive step on views `p`, `q`.
    fn plain_step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss>;
    /// One CLAE step on views `p`, `q` (the adversarial view is made inside).
    fn clae_step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss>;
    /// Eval-mode (clean running statistics) embeddings `z`, `n x d`.
    fn embed_eval(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>>;
}

/// [`Trainer`] for the pure-ndarray reference in element type `F`.
#[derive(Debug, Clone)]
pub struct ReferenceTrainer<F> {
    mlp: Mlp<F>,
    opt: Optimizer<F>,
    step: ClaeConfig,
}

impl<F: Real> ReferenceTrainer<F> {
    /// A fresh encoder initialised from `seed` (see [`Mlp::new`]) and its optimizer.
    pub fn new(cfg: &TrainConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let m = cfg.model;
        let mlp = Mlp::new(MlpConfig::new(PIXELS, m.hidden, m.depth, m.d), seed)?;
        let opt = Optimizer::new(cfg.optimizer, &mlp)?;
        Ok(ReferenceTrainer {
            mlp,
            opt,
            step: cfg.clae_config(),
        })
    }

    /// The encoder.
    pub fn mlp(&self) -> &Mlp<F> {
        &self.mlp
    }
}

fn step_loss<F: Real>(r: &StepReport<F>) -> StepLoss {
    StepLoss {
        total: r.total.as_f64(),
        clean: r.loss_clean.as_f64(),
        adv: r.loss_adv.map(Real::as_f64),
    }
}

impl<F: Real> Trainer for ReferenceTrainer<F> {
    fn backend(&self) -> String {
        format!("reference-{}", F::NAME)
    }

    fn plain_step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss> {
        let (p, q) = (p.mapv(|v| F::c(v as f64)), q.mapv(|v| F::c(v as f64)));
        let (loss, tau) = (self.step.loss, self.step.tau);
        let r = plain_step(&mut self.mlp, &mut self.opt, p.view(), q.view(), loss, tau)?;
        Ok(step_loss(&r))
    }

    fn clae_step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss> {
        let (p, q) = (p.mapv(|v| F::c(v as f64)), q.mapv(|v| F::c(v as f64)));
        let r = clae_step(&mut self.mlp, &mut self.opt, p.view(), q.view(), &self.step)?;
        Ok(step_loss(&r))
    }

    fn embed_eval(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let x = x.mapv(|v| F::c(v as f64));
        Ok(self.mlp.embed(x.view())?.mapv(|v| v.as_f64() as f32))
    }
}

/// One point of a learning curve (epoch 0 is the untrained encoder).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRecord {
    /// Epochs completed.
    pub epoch: usize,
    /// Mean `L_total` over the epoch's steps (NaN at epoch 0).
    pub loss: f64,
    /// Mean `L(Z_P, Z_Q)` over the epoch's steps (NaN at epoch 0).
    pub loss_clean: f64,
    /// Mean `L(Z_P, Z_A)` (NaN for plain runs and at epoch 0).
    pub loss_adv: f64,
    /// Wall-clock seconds of the epoch's training (augmentation and steps;
    /// not the evaluation). 0 at epoch 0.
    pub seconds: f64,
    /// Test kNN top-1 accuracy (`k = 200`, `T = 0.1`).
    pub knn200: f64,
}

/// Final evaluation of a run on the test set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinalEval {
    /// Weighted kNN top-1, `k = 200`, `T = 0.1`.
    pub knn200: f64,
    /// 1-NN top-1.
    pub knn1: f64,
    /// Linear probe top-1.
    pub probe: f64,
    /// Effective rank, alignment, uniformity.
    pub diag: Diagnostics,
}

/// Everything recorded about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Backend name.
    pub backend: String,
    /// Loss family.
    pub loss: LossKind,
    /// Plain or CLAE.
    pub method: Method,
    /// Seed.
    pub seed: u64,
    /// Learning curve, epochs `0..=E`.
    pub curve: Vec<EpochRecord>,
    /// Final test metrics.
    pub final_eval: FinalEval,
}

impl RunRecord {
    /// Median wall-clock seconds per training epoch (the median, so that a
    /// burst of load from other processes on a shared machine does not
    /// dominate; 0 for a run without epochs).
    pub fn seconds_per_epoch(&self) -> f64 {
        let mut trained: Vec<f64> = self.curve.iter().skip(1).map(|e| e.seconds).collect();
        trained.sort_by(f64::total_cmp);
        match trained.len() {
            0 => 0.0,
            n if n % 2 == 1 => trained[n / 2],
            n => 0.5 * (trained[n / 2 - 1] + trained[n / 2]),
        }
    }
}

/// Seed of the stream that makes the two views used for the alignment
/// diagnostic: the same for every run, so runs are compared on the same views.
pub const EVAL_VIEW_SEED: u64 = 0x00D1_6175;

/// Salt that separates a run's data stream from its initialisation stream.
const DATA_STREAM_SALT: u64 = 0x5EED_DA7A_0000_0000;

fn test_knn(
    trainer: &dyn Trainer,
    train: &Digits,
    test: &Digits,
) -> Result<(f64, Array2<f32>, Array2<f32>)> {
    let z_train = trainer.embed_eval(train.view())?;
    let z_test = trainer.embed_eval(test.view())?;
    let acc = knn_top1(
        z_train.view(),
        &train.labels,
        z_test.view(),
        &test.labels,
        CLASSES,
        KNN_K,
        KNN_T,
    )?;
    Ok((acc, z_train, z_test))
}

/// Trains `trainer` for `cfg.epochs` epochs on `train` and evaluates on
/// `test` after every epoch (kNN-200) and at the end (everything).
/// `bar` advances once per step (use [`ProgressBar::hidden`] for none).
pub fn train_run(
    trainer: &mut dyn Trainer,
    cfg: &TrainConfig,
    seed: u64,
    train: &Digits,
    test: &Digits,
    bar: &ProgressBar,
) -> Result<RunRecord> {
    cfg.validate()?;
    let n = train.len();
    if n < cfg.batch_size {
        return Err(DigitsError::config(
            "batch size",
            format!(
                "{} is larger than the training set ({n} images)",
                cfg.batch_size
            ),
        ));
    }
    let steps_per_epoch = n / cfg.batch_size;
    let mut rng = Rng::new(seed ^ DATA_STREAM_SALT);
    let mut curve = Vec::with_capacity(cfg.epochs + 1);
    let (acc0, _, _) = test_knn(trainer, train, test)?;
    curve.push(EpochRecord {
        epoch: 0,
        loss: f64::NAN,
        loss_clean: f64::NAN,
        loss_adv: f64::NAN,
        seconds: 0.0,
        knn200: acc0,
    });
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        let order = rng.permutation(n);
        let (mut sum, mut sum_clean, mut sum_adv) = (0.0, 0.0, 0.0);
        for b in 0..steps_per_epoch {
            let idx = &order[b * cfg.batch_size..(b + 1) * cfg.batch_size];
            let batch = train.images.select(Axis(0), idx);
            let p = augment_batch(batch.view(), &cfg.augment, &mut rng)?;
            let q = augment_batch(batch.view(), &cfg.augment, &mut rng)?;
            let l = match cfg.method {
                Method::Plain => trainer.plain_step(p.view(), q.view())?,
                Method::Clae | Method::ClaeEps0 => trainer.clae_step(p.view(), q.view())?,
            };
            if !l.total.is_finite() {
                return Err(DigitsError::Diverged {
                    message: format!(
                        "{} {} {} seed {seed}: L_total = {} at epoch {epoch}, step {b}",
                        trainer.backend(),
                        cfg.loss,
                        cfg.method.name(),
                        l.total
                    ),
                });
            }
            sum += l.total;
            sum_clean += l.clean;
            sum_adv += l.adv.unwrap_or(f64::NAN);
            bar.inc(1);
        }
        let seconds = start.elapsed().as_secs_f64();
        let (acc, _, _) = test_knn(trainer, train, test)?;
        let steps = steps_per_epoch as f64;
        curve.push(EpochRecord {
            epoch,
            loss: sum / steps,
            loss_clean: sum_clean / steps,
            loss_adv: sum_adv / steps,
            seconds,
            knn200: acc,
        });
    }
    let final_eval = final_eval(trainer, cfg, train, test)?;
    Ok(RunRecord {
        backend: trainer.backend(),
        loss: cfg.loss,
        method: cfg.method,
        seed,
        curve,
        final_eval,
    })
}

/// kNN-200, 1-NN, linear probe and diagnostics of a trained encoder.
pub fn final_eval(
    trainer: &dyn Trainer,
    cfg: &TrainConfig,
    train: &Digits,
    test: &Digits,
) -> Result<FinalEval> {
    let (knn200, z_train, z_test) = test_knn(trainer, train, test)?;
    let knn1 = knn_top1(
        z_train.view(),
        &train.labels,
        z_test.view(),
        &test.labels,
        CLASSES,
        1,
        KNN_T,
    )?;
    let probe = linear_probe(
        z_train.view(),
        &train.labels,
        z_test.view(),
        &test.labels,
        CLASSES,
        &cfg.probe,
    )?;
    let mut view_rng = Rng::new(EVAL_VIEW_SEED);
    let a = augment_batch(test.view(), &cfg.augment, &mut view_rng)?;
    let b = augment_batch(test.view(), &cfg.augment, &mut view_rng)?;
    let diag = diagnostics(
        z_test.view(),
        trainer.embed_eval(a.view())?.view(),
        trainer.embed_eval(b.view())?.view(),
    )?;
    Ok(FinalEval {
        knn200,
        knn1,
        probe,
        diag,
    })
}
