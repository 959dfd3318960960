//! Methods, the reference-MLP trainer and the training loop.
//!
//! One run ("cell") = one (loss, method, `eps`, seed). The seed fixes the
//! encoder's initialisation and, through a second stream, the batch order
//! and the augmentations; no step draws from that stream (the peers' PGD
//! random start has its own, seeded per step), so every method of one seed
//! starts from the same weights and sees the same views (a paired design).
//!
//! Inputs arrive in `[0, 1]` pixel units; the trainer normalises them
//! ([`normalise`]) before the encoder, so CLAE's `eps` is in normalised
//! units (the authors' convention) and the peers' `eps` is converted from
//! pixel units to normalised ones (`eps / STD`), their pixel clamp to the
//! normalised image of `[0, 1]`.

use super::augment::{augment_batch, AugmentConfig};
use super::data::{normalise, normalised_range, Images, PIXELS, STD};
use super::{FashionError, Result};
use clae_reference::encoder::{Mlp, MlpConfig, Mode};
use clae_reference::loss::LossKind;
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::peers::{peer_step, PeerConfig};
use clae_reference::rng::Rng;
use clae_reference::step::{clae_step, plain_step, ClaeConfig, StepReport};
use indicatif::ProgressBar;
use ndarray::{Array2, ArrayView2, Axis};
use std::time::Instant;

/// What a run trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `L(Z_P, Z_Q)` only.
    Plain,
    /// CLAE: `L(Z_P, Z_Q) + alpha L(Z_P, Z_A)`, FGSM view (lean recipe).
    Clae,
    /// The CLAE step with `eps = 0` (`Q_adv = P`): the same second term
    /// through the adv BatchNorm branch, the same cost, no perturbation.
    ClaeEps0,
    /// Plain steps for as many epochs as take CLAE's wall-clock
    /// (the equal-time comparison).
    PlainLong,
    /// ACL-style step (`clae_reference::peers`, PGD-5 on both views).
    Acl,
    /// RoCL-style step (PGD-7 on one view, `λ = 1/256`).
    Rocl,
}

impl Method {
    /// Every method, in run order.
    pub const ALL: [Method; 6] = [
        Method::Plain,
        Method::Clae,
        Method::ClaeEps0,
        Method::PlainLong,
        Method::Acl,
        Method::Rocl,
    ];

    /// Short name used in files: `plain`, `clae`, `clae-eps0`, `plain-long`, `acl`, `rocl`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Plain => "plain",
            Method::Clae => "clae",
            Method::ClaeEps0 => "clae-eps0",
            Method::PlainLong => "plain-long",
            Method::Acl => "acl",
            Method::Rocl => "rocl",
        }
    }

    /// Parses [`Method::name`].
    pub fn parse(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                FashionError::config(
                    "method",
                    format!("expected plain, clae, clae-eps0, plain-long, acl or rocl, got {s:?}"),
                )
            })
    }
}

/// Encoder shape (`D_in = 784`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Hidden width `h`.
    pub hidden: usize,
    /// Backbone blocks `L`.
    pub depth: usize,
    /// Embedding dimension `d`.
    pub d: usize,
}

/// Which encoder a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// The reference dual-BN MLP ([`ModelConfig`] gives its shape).
    Mlp,
    /// The dual-BN CNN of `clae_accelerated::cnn` on libtorch (CPU, f32):
    /// `blocks` conv blocks from `width` channels, [`ModelConfig::d`] outputs.
    Cnn {
        /// Channels of the first block.
        width: usize,
        /// Conv blocks.
        blocks: usize,
    },
}

/// Everything that defines a run besides its seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Encoder.
    pub encoder: EncoderKind,
    /// Loss family.
    pub loss: LossKind,
    /// Method.
    pub method: Method,
    /// Temperature.
    pub tau: f64,
    /// CLAE's FGSM step in normalised units (used by [`Method::Clae`] only).
    pub eps: f64,
    /// Weight of CLAE's adversarial term.
    pub alpha: f64,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Encoder shape.
    pub model: ModelConfig,
    /// Batch size; the last incomplete batch of an epoch is dropped.
    pub batch_size: usize,
    /// Training epochs.
    pub epochs: usize,
    /// Augmentations.
    pub augment: AugmentConfig,
}

impl TrainConfig {
    /// The replication's setting for `loss` and `method`: docs/SPEC.md's
    /// `tau`, `eps = 0.03`, `alpha = 1`, the authors' optimizer families (SGD
    /// lr 0.03 for Plain and UEL; Adam for SimCLR with lr raised from 3e-4
    /// to 1e-3, as in the digits replication, because a run is a few
    /// thousand steps, not ~10^5); MLP `h = 512`, `L = 2`, `d = 128`;
    /// `N = 256`; 20 epochs.
    pub fn fashion(loss: LossKind, method: Method) -> Self {
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
            encoder: EncoderKind::Mlp,
            loss,
            method,
            tau: loss.default_tau(),
            eps: loss.default_eps(),
            alpha: 1.0,
            optimizer,
            model: ModelConfig {
                hidden: 512,
                depth: 2,
                d: 128,
            },
            batch_size: 256,
            epochs: 20,
            augment: AugmentConfig::fashion(),
        }
    }

    /// The FGSM step this run takes: `eps` for CLAE, 0 for the control (and
    /// for runs without an FGSM view).
    pub fn effective_eps(&self) -> f64 {
        match self.method {
            Method::Clae => self.eps,
            _ => 0.0,
        }
    }

    /// The reference's CLAE step (FGSM on `P`, no clamp, lean recipe).
    pub fn clae_config(&self) -> ClaeConfig {
        let mut c = ClaeConfig::paper(self.loss);
        c.tau = self.tau;
        c.alpha = self.alpha;
        c.adv.eps = self.effective_eps();
        c
    }

    /// The reference's peer step for ACL / RoCL (`None` otherwise), its
    /// attack converted to normalised units; `random_start` is reseeded
    /// every step by the trainer.
    pub fn peer_config(&self) -> Option<PeerConfig> {
        let mut c = match self.method {
            Method::Acl => PeerConfig::acl(self.loss),
            Method::Rocl => PeerConfig::rocl(self.loss),
            _ => return None,
        };
        c.tau = self.tau;
        c.pgd.eps /= STD;
        c.pgd.eta /= STD;
        c.pgd.clamp = Some(normalised_range());
        Some(c)
    }

    /// Checks what the reference does not check itself, and what it does.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 2 {
            return Err(FashionError::config(
                "batch size",
                format!("must be >= 2, got {}", self.batch_size),
            ));
        }
        self.augment.validate()?;
        self.optimizer.validate()?;
        self.clae_config().validate_for::<f32>()?;
        if let Some(p) = self.peer_config() {
            p.validate_for::<f32>()?;
        }
        match self.encoder {
            EncoderKind::Mlp => {
                MlpConfig::new(PIXELS, self.model.hidden, self.model.depth, self.model.d)
                    .validate_for::<f32>()?
            }
            EncoderKind::Cnn { .. } => self.cnn_config().validate_for::<f32>()?,
        }
        Ok(())
    }

    /// The CNN's configuration for [`EncoderKind::Cnn`] (the defaults of
    /// [`clae_accelerated::cnn::CnnConfig::fashion`] with this `d`, and the
    /// kind's width and blocks where it is one).
    pub fn cnn_config(&self) -> clae_accelerated::cnn::CnnConfig {
        let base = clae_accelerated::cnn::CnnConfig::fashion();
        match self.encoder {
            EncoderKind::Cnn { width, blocks } => clae_accelerated::cnn::CnnConfig {
                width,
                blocks,
                d: self.model.d,
                ..base
            },
            EncoderKind::Mlp => clae_accelerated::cnn::CnnConfig {
                d: self.model.d,
                ..base
            },
        }
    }

    /// A fresh trainer of this configuration's encoder, initialised from `seed`.
    pub fn trainer(&self, seed: u64) -> Result<Box<dyn Trainer>> {
        Ok(match self.encoder {
            EncoderKind::Mlp => Box::new(ReferenceTrainer::new(self, seed)?),
            EncoderKind::Cnn { .. } => Box::new(super::cnn_trainer::CnnTrainer::new(
                self,
                self.cnn_config(),
                seed,
            )?),
        })
    }
}

/// Loss terms of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLoss {
    /// `L_total`.
    pub total: f64,
    /// The clean term.
    pub clean: f64,
    /// The adversarial term (CLAE and peer steps).
    pub adv: Option<f64>,
}

/// What the training loop and the evaluation need from an encoder. All
/// inputs are `[0, 1]` pixel batches `n x 784`; the trainer normalises.
pub trait Trainer {
    /// A short description, e.g. `reference-f32 MLP 784-512x2-128`.
    fn backend(&self) -> String;
    /// One step of `method` on views `p`, `q`.
    fn step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss>;
    /// Eval-mode (clean running statistics) embeddings, `n x d`.
    fn embed_eval(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>>;
    /// Eval-mode embeddings `z` of `x` and the pixel-space gradient
    /// `dL/dx` of the scalar whose gradient with respect to `z` is
    /// `dz(z)`: one forward, one backward to the input.
    fn embed_eval_vjp(
        &self,
        x: ArrayView2<'_, f32>,
        dz: &mut dyn FnMut(ArrayView2<'_, f32>) -> Result<Array2<f32>>,
    ) -> Result<(Array2<f32>, Array2<f32>)>;
}

/// [`Trainer`] for the reference dual-BN MLP in `f32`.
#[derive(Debug, Clone)]
pub struct ReferenceTrainer {
    mlp: Mlp<f32>,
    opt: Optimizer<f32>,
    cfg: TrainConfig,
    seed: u64,
    steps: u64,
}

impl ReferenceTrainer {
    /// A fresh encoder initialised from `seed` ([`Mlp::new`]) and its optimizer.
    pub fn new(cfg: &TrainConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let m = cfg.model;
        let mlp = Mlp::new(MlpConfig::new(PIXELS, m.hidden, m.depth, m.d), seed)?;
        let opt = Optimizer::new(cfg.optimizer, &mlp)?;
        Ok(ReferenceTrainer {
            mlp,
            opt,
            cfg: *cfg,
            seed,
            steps: 0,
        })
    }

    /// The encoder.
    pub fn mlp(&self) -> &Mlp<f32> {
        &self.mlp
    }
}

fn step_loss(r: &StepReport<f32>) -> StepLoss {
    StepLoss {
        total: r.total as f64,
        clean: r.loss_clean as f64,
        adv: r.loss_adv.map(|v| v as f64),
    }
}

/// Salt of the peers' per-step PGD random-start seeds.
const PGD_SEED_SALT: u64 = 0x0A77_AC4E_0000_0000;

/// The PGD random-start seed of a peer step: a function of the run's seed
/// and the step's index only, so both encoders draw the same starts.
pub fn pgd_seed(seed: u64, step: u64) -> u64 {
    PGD_SEED_SALT ^ (seed << 32) ^ step
}

impl Trainer for ReferenceTrainer {
    fn backend(&self) -> String {
        let m = self.cfg.model;
        format!("reference-f32 MLP 784-{}x{}-{}", m.hidden, m.depth, m.d)
    }

    fn step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss> {
        let (p, q) = (normalise(p), normalise(q));
        let (mlp, opt, cfg) = (&mut self.mlp, &mut self.opt, &self.cfg);
        let r = match cfg.method {
            Method::Plain | Method::PlainLong => {
                plain_step(mlp, opt, p.view(), q.view(), cfg.loss, cfg.tau)?
            }
            Method::Clae | Method::ClaeEps0 => {
                clae_step(mlp, opt, p.view(), q.view(), &cfg.clae_config())?
            }
            Method::Acl | Method::Rocl => {
                let mut peer = cfg.peer_config().ok_or_else(|| {
                    FashionError::config("method", "a peer method without a peer config")
                })?;
                peer.pgd.random_start = Some(pgd_seed(self.seed, self.steps));
                peer_step(mlp, opt, p.view(), q.view(), &peer)?
            }
        };
        self.steps += 1;
        Ok(step_loss(&r))
    }

    fn embed_eval(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        Ok(self.mlp.embed(normalise(x).view())?)
    }

    fn embed_eval_vjp(
        &self,
        x: ArrayView2<'_, f32>,
        dz: &mut dyn FnMut(ArrayView2<'_, f32>) -> Result<Array2<f32>>,
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        let fwd = self.mlp.forward(normalise(x).view(), Mode::Eval)?;
        let g = dz(fwd.z.view())?;
        let dx = self.mlp.backward_input(&fwd, g.view())?;
        // x_norm = (x − MEAN) / STD, so dL/dx = dL/dx_norm / STD.
        let inv = (1.0 / STD) as f32;
        Ok((fwd.z, dx.mapv(|v| v * inv)))
    }
}

/// One point of a learning curve (epoch 0 is the untrained encoder).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRecord {
    /// Epochs completed.
    pub epoch: usize,
    /// Mean `L_total` over the epoch's steps (NaN at epoch 0).
    pub loss: f64,
    /// Wall-clock seconds of the epoch's training (augmentation and steps,
    /// not the evaluation); 0 at epoch 0.
    pub seconds: f64,
    /// kNN-200 top-1 of the curve subset of the test set (NaN where not
    /// evaluated).
    pub knn200: f64,
}

/// A trained run's curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    /// Epochs `0..=E`.
    pub curve: Vec<EpochRecord>,
}

impl Trained {
    /// Median seconds per training epoch (robust to bursts of load from
    /// other processes; 0 without epochs).
    pub fn seconds_per_epoch(&self) -> f64 {
        median(self.curve.iter().skip(1).map(|e| e.seconds).collect())
    }

    /// Total training seconds.
    pub fn seconds(&self) -> f64 {
        self.curve.iter().map(|e| e.seconds).sum()
    }
}

/// Median of `xs` (0 for none).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => 0.5 * (xs[n / 2 - 1] + xs[n / 2]),
    }
}

/// Salt that separates a run's data stream from its initialisation stream.
pub const DATA_STREAM_SALT: u64 = 0x5EED_DA7A_0000_0000;

/// Trains `trainer` for `cfg.epochs` epochs on `train`; after epoch 0 and
/// every `curve_every` epochs (and the last) calls `curve_eval` for the
/// learning curve's accuracy. `bar` advances once per step.
pub fn train_run(
    trainer: &mut dyn Trainer,
    cfg: &TrainConfig,
    seed: u64,
    train: &Images,
    curve_every: usize,
    curve_eval: &mut dyn FnMut(&dyn Trainer) -> Result<f64>,
    bar: &ProgressBar,
) -> Result<Trained> {
    cfg.validate()?;
    train.check()?;
    let n = train.len();
    if n < cfg.batch_size {
        return Err(FashionError::config(
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
    curve.push(EpochRecord {
        epoch: 0,
        loss: f64::NAN,
        seconds: 0.0,
        knn200: curve_eval(trainer)?,
    });
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        let order = rng.permutation(n);
        let mut sum = 0.0;
        for b in 0..steps_per_epoch {
            let idx = &order[b * cfg.batch_size..(b + 1) * cfg.batch_size];
            let batch = train.images.select(Axis(0), idx);
            let p = augment_batch(batch.view(), &cfg.augment, &mut rng)?;
            let q = augment_batch(batch.view(), &cfg.augment, &mut rng)?;
            let l = trainer.step(p.view(), q.view())?;
            if !l.total.is_finite() {
                return Err(FashionError::Diverged {
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
            bar.inc(1);
        }
        let seconds = start.elapsed().as_secs_f64();
        let evaluate = curve_every > 0 && (epoch % curve_every == 0 || epoch == cfg.epochs);
        let knn200 = if evaluate {
            curve_eval(trainer)?
        } else {
            f64::NAN
        };
        curve.push(EpochRecord {
            epoch,
            loss: sum / steps_per_epoch as f64,
            seconds,
            knn200,
        });
    }
    Ok(Trained { curve })
}
