//! Command-line options, the grid of cells, the resumable CSV and the whole
//! replication: load, split, train every cell, evaluate, report.

use super::data::{self, Images, STD};
use super::eval::{
    knn_accuracy, knn_temperature, robust_accuracy, validated_probe, Features, Labelled, PgdConfig,
    ProbeConfig, KNN_K,
};
use super::train::{train_run, EncoderKind, Method, ModelConfig, TrainConfig, Trainer};
use super::{FashionError, Result};
use crate::digits::data::stratified_split;
use clae_benches::machine::load_1min;
use clae_reference::loss::LossKind;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `fashion --help`.
pub const USAGE: &str = "\
Does CLAE's adversarial view help on Fashion-MNIST, and does it buy robustness?
Plain vs CLAE vs CLAE(eps = 0) for every loss, an eps sweep, ACL- and
RoCL-style steps and plain at CLAE's wall-clock for one loss; kNN-200, a
validated linear probe and its PGD-20 robust accuracy.

Usage: fashion [OPTIONS]

Options (sizes of the headline run in parentheses; --quick shrinks them):
  --quick               smoke run of the whole pipeline in seconds
  --seeds N             seeds per cell (3)
  --epochs N            training epochs (20)
  --train N             contrastive training images, a stratified subset of
                        the 60k training set minus validation (10000)
  --val N               validation images carved from the training set (5000)
  --bank N              kNN bank: training images minus validation, 0 = all (0)
  --test N              test images evaluated, 0 = all 10000 (0)
  --curve-test N        test images of the learning curves' kNN (1000)
  --curve-every N       learning-curve kNN every N epochs (4)
  --robust N            test images attacked by PGD (500)
  --pgd-steps N         PGD steps (20)
  --attack-eps LIST     L-inf radii in 1/255 pixel units (1,2,4)
  --hidden N --depth N --d N   MLP 784-h x L-d (512, 2, 128)
  --encoder mlp|cnn     the reference MLP, or the dual-BN CNN on libtorch (mlp)
  --cnn-width N --cnn-blocks N  CNN channels of block 0 and blocks (16, 3; implies cnn)
  --batch N             batch size (256)
  --probe-epochs N      linear probe epochs at most (200)
  --losses LIST         subset of plain,simclr,uel (all)
  --focus LOSS          loss of the eps sweep, the peers and equal time (simclr)
  --sweep LIST          CLAE eps values > 0 (normalised units) for the focus loss (0.01,0.03,0.1)
  --no-peers            skip ACL and RoCL
  --no-equal-time       skip plain at CLAE's wall-clock
  --out DIR             report folder (report-out/fashion-mnist)
  --data DIR            IDX folder ($CLAE_FASHION_DIR, else /usr/share/datasets/fashion-mnist)
  --no-progress         no progress bars
  -h, --help            this text

Each finished cell is appended to DIR/runs.csv (and its curve to
DIR/curves.csv, the raw-pixel baselines to DIR/baseline.csv); a rerun with
the same sizes skips what it finds there.
";

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Smoke-run sizes.
    pub quick: bool,
    /// Seeds per cell (`0..seeds`).
    pub seeds: usize,
    /// Training epochs.
    pub epochs: usize,
    /// Contrastive training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// kNN bank size (0: all training images outside validation).
    pub bank: usize,
    /// Test images (0: all).
    pub test: usize,
    /// Test images of the learning curves.
    pub curve_test: usize,
    /// Learning-curve period in epochs.
    pub curve_every: usize,
    /// Test images attacked.
    pub robust: usize,
    /// PGD steps.
    pub pgd_steps: usize,
    /// Attack radii in 1/255 units.
    pub attack_eps: Vec<f64>,
    /// Encoder: the reference MLP or the tch CNN.
    pub encoder: EncoderKind,
    /// Encoder shape (the MLP's; `d` also the CNN's).
    pub model: ModelConfig,
    /// Batch size.
    pub batch: usize,
    /// Probe settings.
    pub probe: ProbeConfig,
    /// Losses of the plain / CLAE / control comparison.
    pub losses: Vec<LossKind>,
    /// Loss of the sweep, peers and equal-time cells.
    pub focus: LossKind,
    /// CLAE eps values for the focus loss (normalised units).
    pub sweep: Vec<f64>,
    /// Run ACL and RoCL.
    pub peers: bool,
    /// Run plain at CLAE's wall-clock.
    pub equal_time: bool,
    /// Report folder.
    pub out: PathBuf,
    /// Data folder (`None`: [`data::default_dir`]).
    pub data: Option<PathBuf>,
    /// Progress bars.
    pub progress: bool,
}

/// Version of the CSV formats and of the protocol: part of every
/// fingerprint, so rows written by another version are not reused.
pub const FORMAT_VERSION: u32 = 2;

/// Seed of the validation / subset splits (fixed).
pub const SPLIT_SEED: u64 = 2020;

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            seeds: 3,
            epochs: 20,
            train: 10_000,
            val: 5_000,
            bank: 0,
            test: 0,
            curve_test: 1_000,
            curve_every: 4,
            robust: 500,
            pgd_steps: 20,
            attack_eps: vec![1.0, 2.0, 4.0],
            encoder: EncoderKind::Mlp,
            model: ModelConfig {
                hidden: 512,
                depth: 2,
                d: 128,
            },
            batch: 256,
            probe: ProbeConfig::default(),
            losses: LossKind::ALL.to_vec(),
            focus: LossKind::SimClr,
            sweep: vec![0.01, 0.03, 0.1],
            peers: true,
            equal_time: true,
            out: PathBuf::from("report-out/fashion-mnist"),
            data: None,
            progress: true,
        }
    }
}

impl Options {
    /// `--quick`: every cell of the headline run at toy sizes (seconds).
    pub fn quick() -> Self {
        Options {
            quick: true,
            seeds: 2,
            epochs: 2,
            train: 256,
            val: 200,
            bank: 1_000,
            test: 300,
            curve_test: 100,
            curve_every: 1,
            robust: 40,
            pgd_steps: 3,
            model: ModelConfig {
                hidden: 32,
                depth: 1,
                d: 16,
            },
            batch: 64,
            probe: ProbeConfig {
                epochs: 20,
                eval_every: 5,
                ..ProbeConfig::default()
            },
            out: PathBuf::from("report-out/fashion-mnist-quick"),
            ..Options::default()
        }
    }

    /// Parses command-line arguments (without the program name); `Ok(None)`
    /// for `--help`.
    ///
    /// ```
    /// use clae_replication::fashion::run::Options;
    /// let o = Options::parse(["--quick", "--seeds", "3"].map(String::from)).unwrap().unwrap();
    /// assert!(o.quick && o.seeds == 3 && o.epochs == 2);
    /// assert!(Options::parse(["--train", "x"].map(String::from)).is_err());
    /// ```
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Option<Self>> {
        let args: Vec<String> = args.into_iter().collect();
        let mut o = if args.iter().any(|a| a == "--quick") {
            Options::quick()
        } else {
            Options::default()
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .ok_or_else(|| FashionError::config(name, "expects a value"))
            };
            let name = arg.as_str();
            match name {
                "-h" | "--help" => return Ok(None),
                "--quick" => {}
                "--no-progress" => o.progress = false,
                "--no-peers" => o.peers = false,
                "--no-equal-time" => o.equal_time = false,
                "--seeds" => o.seeds = count(name, &value(name)?, 1)?,
                "--epochs" => o.epochs = count(name, &value(name)?, 1)?,
                "--train" => o.train = count(name, &value(name)?, 2)?,
                "--val" => o.val = count(name, &value(name)?, 1)?,
                "--bank" => o.bank = count(name, &value(name)?, 0)?,
                "--test" => o.test = count(name, &value(name)?, 0)?,
                "--curve-test" => o.curve_test = count(name, &value(name)?, 1)?,
                "--curve-every" => o.curve_every = count(name, &value(name)?, 1)?,
                "--robust" => o.robust = count(name, &value(name)?, 1)?,
                "--pgd-steps" => o.pgd_steps = count(name, &value(name)?, 1)?,
                "--hidden" => o.model.hidden = count(name, &value(name)?, 1)?,
                "--depth" => o.model.depth = count(name, &value(name)?, 0)?,
                "--d" => o.model.d = count(name, &value(name)?, 1)?,
                "--encoder" => {
                    o.encoder = match value(name)?.as_str() {
                        "mlp" => EncoderKind::Mlp,
                        "cnn" => EncoderKind::Cnn {
                            width: 16,
                            blocks: 3,
                        },
                        other => {
                            return Err(FashionError::config(
                                name,
                                format!("expected mlp or cnn, got {other:?}"),
                            ))
                        }
                    }
                }
                "--cnn-width" | "--cnn-blocks" => {
                    let v = count(name, &value(name)?, 1)?;
                    let (mut width, mut blocks) = match o.encoder {
                        EncoderKind::Cnn { width, blocks } => (width, blocks),
                        EncoderKind::Mlp => (16, 3),
                    };
                    if name == "--cnn-width" {
                        width = v
                    } else {
                        blocks = v
                    }
                    o.encoder = EncoderKind::Cnn { width, blocks };
                }
                "--batch" => o.batch = count(name, &value(name)?, 2)?,
                "--probe-epochs" => o.probe.epochs = count(name, &value(name)?, 1)?,
                "--attack-eps" => o.attack_eps = numbers(name, &value(name)?)?,
                "--sweep" => o.sweep = numbers(name, &value(name)?)?,
                "--focus" => o.focus = value(name)?.trim().parse::<LossKind>()?,
                "--out" => o.out = PathBuf::from(value(name)?),
                "--data" => o.data = Some(PathBuf::from(value(name)?)),
                "--losses" => {
                    o.losses = value(name)?
                        .split(',')
                        .map(|s| s.trim().parse::<LossKind>())
                        .collect::<std::result::Result<_, _>>()?;
                }
                other => {
                    return Err(FashionError::config(
                        "argument",
                        format!("unknown option {other:?}; see --help"),
                    ))
                }
            }
        }
        if o.seeds < 2 {
            return Err(FashionError::config(
                "--seeds",
                "needs at least 2 seeds to estimate seed noise",
            ));
        }
        if o.losses.is_empty() {
            return Err(FashionError::config("--losses", "needs at least one loss"));
        }
        if o.sweep.contains(&0.0) {
            return Err(FashionError::config(
                "--sweep",
                "contains 0: the eps = 0 control runs for every loss anyway; list only eps > 0",
            ));
        }
        Ok(Some(o))
    }

    /// The training configuration of a cell.
    pub fn train_config(&self, loss: LossKind, method: Method, eps: f64) -> TrainConfig {
        let mut c = TrainConfig::fashion(loss, method);
        c.eps = eps;
        c.epochs = self.epochs;
        c.encoder = self.encoder;
        c.model = self.model;
        c.batch_size = self.batch;
        c
    }

    /// Every cell in run order: per loss and seed, plain, CLAE and the
    /// control (also for a focus loss not in `losses`); for the focus loss
    /// also the other sweep values (a 0 in the sweep is the control), plain at
    /// CLAE's wall-clock, ACL and RoCL. Plain at CLAE's wall-clock follows
    /// its seed's plain and CLAE cells (it reads their times).
    pub fn cells(&self) -> Vec<Cell> {
        let mut losses = self.losses.clone();
        if !losses.contains(&self.focus) {
            losses.push(self.focus);
        }
        let mut out = Vec::new();
        for &loss in &losses {
            let default_eps = loss.default_eps();
            for seed in 0..self.seeds as u64 {
                let mut push = |method, eps| {
                    out.push(Cell {
                        loss,
                        method,
                        eps,
                        seed,
                    })
                };
                if self.losses.contains(&loss) {
                    push(Method::Plain, 0.0);
                    push(Method::Clae, default_eps);
                    push(Method::ClaeEps0, 0.0);
                }
                if loss == self.focus {
                    if !self.losses.contains(&loss) {
                        push(Method::Plain, 0.0);
                        push(Method::Clae, default_eps);
                        push(Method::ClaeEps0, 0.0);
                    }
                    for &e in &self.sweep {
                        if e != default_eps && e != 0.0 {
                            push(Method::Clae, e);
                        }
                    }
                    if self.equal_time {
                        push(Method::PlainLong, 0.0);
                    }
                    if self.peers {
                        push(Method::Acl, 0.0);
                        push(Method::Rocl, 0.0);
                    }
                }
            }
        }
        out
    }

    /// Everything that changes the numbers beyond the sizes of
    /// [`Options::fingerprint`]'s readable part: the CSV format version, the
    /// probe's settings, every loss's training configuration (augmentation,
    /// optimizer, tau, alpha), the data folder and its files' sizes.
    pub fn fingerprint_details(&self) -> String {
        let dir = self.data.clone().unwrap_or_else(data::default_dir);
        let files: Vec<String> = [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ]
        .iter()
        .map(|name| {
            let gz = dir.join(format!("{name}.gz"));
            let path = if gz.exists() { gz } else { dir.join(name) };
            match std::fs::metadata(&path) {
                Ok(m) => format!("{}={}", path.display(), m.len()),
                Err(_) => format!("{}=missing", path.display()),
            }
        })
        .collect();
        let trains: Vec<String> = LossKind::ALL
            .iter()
            .map(|&l| {
                let c = self.train_config(l, Method::Clae, l.default_eps());
                format!(
                    "{l}:tau{}:alpha{}:{:?}:{:?}",
                    c.tau, c.alpha, c.optimizer, c.augment
                )
            })
            .collect();
        format!(
            "v{FORMAT_VERSION}|data {}|probe {:?}|train {}",
            files.join(";"),
            self.probe,
            trains.join(";")
        )
    }

    /// A string of every setting that changes the numbers: rows of the CSV
    /// with another fingerprint are not reused. The sizes are readable; the
    /// rest ([`Options::fingerprint_details`]) enters as a 64-bit FNV-1a
    /// hash. Holds no comma.
    pub fn fingerprint(&self) -> String {
        let m = self.model;
        let enc = match self.encoder {
            EncoderKind::Mlp => "mlp".to_string(),
            EncoderKind::Cnn { width, blocks } => format!("cnn{width}x{blocks}"),
        };
        let eps: Vec<String> = self.attack_eps.iter().map(|e| e.to_string()).collect();
        let hash = self
            .fingerprint_details()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
        format!(
            "v{FORMAT_VERSION}-{enc}-e{}-t{}-v{}-b{}-T{}-ct{}-ce{}-r{}-k{}-a{}-h{}x{}x{}-n{}-p{}-{hash:016x}",
            self.epochs,
            self.train,
            self.val,
            self.bank,
            self.test,
            self.curve_test,
            self.curve_every,
            self.robust,
            self.pgd_steps,
            eps.join("/"),
            m.hidden,
            m.depth,
            m.d,
            self.batch,
            self.probe.epochs
        )
    }
}

fn count(name: &str, v: &str, min: usize) -> Result<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n >= min)
        .ok_or_else(|| {
            FashionError::config(name, format!("expects an integer >= {min}, got {v:?}"))
        })
}

fn numbers(name: &str, v: &str) -> Result<Vec<f64>> {
    let xs: Option<Vec<f64>> = v
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
        })
        .collect();
    xs.filter(|x| !x.is_empty()).ok_or_else(|| {
        FashionError::config(name, format!("expects finite numbers >= 0, got {v:?}"))
    })
}

/// One training run of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    /// Loss family.
    pub loss: LossKind,
    /// Method.
    pub method: Method,
    /// CLAE's eps in normalised units (0 for the other methods).
    pub eps: f64,
    /// Seed.
    pub seed: u64,
}

impl Cell {
    /// `loss/method/eps/seed`, the CSV key.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.loss,
            self.method.name(),
            self.eps,
            self.seed
        )
    }

    /// The cell's group (all its seeds): `loss method` and `eps` for CLAE.
    pub fn group(&self) -> String {
        match self.method {
            Method::Clae => format!("{} clae eps={}", self.loss, self.eps),
            m => format!("{} {}", self.loss, m.name()),
        }
    }
}

/// Everything recorded about one finished cell.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The cell.
    pub cell: Cell,
    /// Backend description.
    pub backend: String,
    /// Epochs trained.
    pub epochs: usize,
    /// Median training seconds per epoch.
    pub seconds_per_epoch: f64,
    /// Total training seconds.
    pub train_seconds: f64,
    /// Seconds of the final evaluation (kNN, probe, PGD).
    pub eval_seconds: f64,
    /// Test kNN-200 top-1 (fraction).
    pub knn200: f64,
    /// Probe test accuracy at the validation choice.
    pub probe_test: f64,
    /// Its validation accuracy.
    pub probe_val: f64,
    /// Chosen weight decay.
    pub probe_wd: f64,
    /// Chosen learning rate.
    pub probe_lr: f64,
    /// Chosen epoch.
    pub probe_epoch: usize,
    /// Best test accuracy over probe epochs (the authors' number, optimistic).
    pub probe_best_test: f64,
    /// `(eps in 1/255 units, robust accuracy)` on the attacked subset:
    /// radius 0 (clean accuracy on that subset) first, then every attack
    /// radius.
    pub robust: Vec<(f64, f64)>,
    /// Learning curve: `(epoch, mean loss, seconds, curve kNN-200)`.
    pub curve: Vec<(usize, f64, f64, f64)>,
}

/// The raw-pixel baselines under the same protocols.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelBaseline {
    /// kNN-200 with `T = 0.1` on cosine similarity of pixels.
    pub knn200: f64,
    /// Linear probe on pixels (validated as for the encoders).
    pub probe_test: f64,
    /// Best test epoch of that probe.
    pub probe_best_test: f64,
    /// Robust accuracy of the pixel probe on the attacked subset: radius 0
    /// (clean) first, then every attack radius.
    pub robust: Vec<(f64, f64)>,
}

/// Everything a replication produced.
#[derive(Debug, Clone)]
pub struct Replication {
    /// The options.
    pub options: Options,
    /// The data folder.
    pub data_dir: PathBuf,
    /// Sizes: (contrastive train, validation, bank, test).
    pub sizes: (usize, usize, usize, usize),
    /// Every finished cell (reused or new), in grid order.
    pub runs: Vec<RunRecord>,
    /// How many of them were read back from an earlier run's CSV.
    pub reused: usize,
    /// Raw-pixel baselines.
    pub baseline: PixelBaseline,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// 1-minute load average at the start and the end.
    pub load_average: Option<(f64, f64)>,
}

/// The data a run reads, in `[0, 1]` pixels.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Contrastive training images (labels unused in training; the probe's training set).
    pub train: Images,
    /// Validation images (probe selection).
    pub val: Images,
    /// kNN bank.
    pub bank: Images,
    /// Test images.
    pub test: Images,
    /// Learning-curve test subset.
    pub curve_test: Images,
    /// Attacked test subset.
    pub robust: Images,
}

/// `n` rows of `labels`, stratified (a seeded subset), sorted; all when
/// `n >= len`.
fn subset(labels: &[usize], n: usize, seed: u64) -> Result<Vec<usize>> {
    if n >= labels.len() {
        return Ok((0..labels.len()).collect());
    }
    let frac = n as f64 / labels.len() as f64;
    Ok(stratified_split(labels, frac, seed)?.test)
}

/// Carves validation, training subset, bank and test subsets (fixed seeds).
pub fn prepare(all: &data::Fashion, o: &Options) -> Result<Prepared> {
    let n = all.train.len();
    if o.val + o.train > n {
        return Err(FashionError::config(
            "--train / --val",
            format!("{} + {} exceed the {n} training images", o.train, o.val),
        ));
    }
    let frac = o.val as f64 / n as f64;
    let split = stratified_split(&all.train.labels, frac, SPLIT_SEED)?;
    let val = all.train.select(&split.test)?;
    let pool = all.train.select(&split.train)?;
    let train = pool.select(&subset(&pool.labels, o.train, SPLIT_SEED + 1)?)?;
    let bank = if o.bank == 0 {
        pool
    } else {
        pool.select(&subset(&pool.labels, o.bank, SPLIT_SEED + 2)?)?
    };
    let test = if o.test == 0 {
        all.test.clone()
    } else {
        all.test
            .select(&subset(&all.test.labels, o.test, SPLIT_SEED + 3)?)?
    };
    let curve_test = test.select(&subset(&test.labels, o.curve_test, SPLIT_SEED + 4)?)?;
    let robust = test.select(&subset(&test.labels, o.robust, SPLIT_SEED + 5)?)?;
    Ok(Prepared {
        train,
        val,
        bank,
        test,
        curve_test,
        robust,
    })
}

/// kNN-200, the validated probe, and `(eps /255, robust accuracy)` at radius 0 and per attack radius.
type Evaluation = (f64, super::eval::ProbeResult, Vec<(f64, f64)>);

/// Final evaluation of a trained encoder (or of the raw pixels).
fn evaluate(
    features: Features<'_>,
    loss: Option<LossKind>,
    d: &Prepared,
    o: &Options,
    seed: u64,
) -> Result<Evaluation> {
    let t = loss.map_or(0.1, knn_temperature);
    let z_bank = features.of(d.bank.view())?;
    let z_test = features.of(d.test.view())?;
    let knn = knn_accuracy(
        z_bank.view(),
        &d.bank.labels,
        z_test.view(),
        &d.test.labels,
        KNN_K,
        t,
    )?;
    let z_train = features.of(d.train.view())?;
    let z_val = features.of(d.val.view())?;
    let probe = validated_probe(
        Labelled {
            x: z_train.view(),
            y: &d.train.labels,
        },
        Labelled {
            x: z_val.view(),
            y: &d.val.labels,
        },
        Labelled {
            x: z_test.view(),
            y: &d.test.labels,
        },
        &o.probe,
    )?;
    // Radius 0 (unless attacked anyway): clean accuracy on the attacked
    // subset, so the robustness curve starts on the same images.
    let mut robust = Vec::new();
    if !o.attack_eps.contains(&0.0) {
        let z = features.of(d.robust.view())?;
        let pred = probe.probe.predict(z.view())?;
        let hits = pred
            .iter()
            .zip(&d.robust.labels)
            .filter(|(p, y)| p == y)
            .count();
        robust.push((0.0, hits as f64 / d.robust.len().max(1) as f64));
    }
    for &e in &o.attack_eps {
        let cfg = PgdConfig {
            eps: e / 255.0,
            steps: o.pgd_steps,
            seed: 0xA77A_C000 ^ seed,
            batch: 250,
        };
        let acc = robust_accuracy(
            features,
            &probe.probe,
            d.robust.view(),
            &d.robust.labels,
            &cfg,
        )?;
        robust.push((e, acc));
    }
    Ok((knn, probe, robust))
}

/// Trains and evaluates one cell. `plain_long_epochs` is the epoch count of
/// a [`Method::PlainLong`] cell.
pub fn run_cell(
    cell: &Cell,
    o: &Options,
    d: &Prepared,
    epochs: usize,
    bar: &ProgressBar,
) -> Result<RunRecord> {
    let mut cfg = o.train_config(cell.loss, cell.method, cell.eps);
    cfg.epochs = epochs;
    let mut trainer = cfg.trainer(cell.seed)?;
    let t = knn_temperature(cell.loss);
    let mut curve_eval = |tr: &dyn Trainer| -> Result<f64> {
        let zb = tr.embed_eval(d.train.view())?;
        let zt = tr.embed_eval(d.curve_test.view())?;
        knn_accuracy(
            zb.view(),
            &d.train.labels,
            zt.view(),
            &d.curve_test.labels,
            KNN_K,
            t,
        )
    };
    let trained = train_run(
        trainer.as_mut(),
        &cfg,
        cell.seed,
        &d.train,
        o.curve_every,
        &mut curve_eval,
        bar,
    )?;
    let eval_start = Instant::now();
    let (knn200, probe, robust) = evaluate(
        Features::Encoder(trainer.as_ref()),
        Some(cell.loss),
        d,
        o,
        cell.seed,
    )?;
    Ok(RunRecord {
        cell: *cell,
        backend: trainer.backend(),
        epochs,
        seconds_per_epoch: trained.seconds_per_epoch(),
        train_seconds: trained.seconds(),
        eval_seconds: eval_start.elapsed().as_secs_f64(),
        knn200,
        probe_test: probe.test,
        probe_val: probe.val,
        probe_wd: probe.weight_decay,
        probe_lr: probe.lr,
        probe_epoch: probe.epoch,
        probe_best_test: probe.best_test,
        robust,
        curve: trained
            .curve
            .iter()
            .map(|e| (e.epoch, e.loss, e.seconds, e.knn200))
            .collect(),
    })
}

/// The raw-pixel baselines.
pub fn pixel_baseline(d: &Prepared, o: &Options) -> Result<PixelBaseline> {
    let (knn200, probe, robust) = evaluate(Features::Pixels, None, d, o, 0)?;
    Ok(PixelBaseline {
        knn200,
        probe_test: probe.test,
        probe_best_test: probe.best_test,
        robust,
    })
}

/// The epochs plain trains for in CLAE's wall-clock: `round(E * t_clae /
/// t_plain)` from the seconds per epoch of this seed's plain and CLAE cells
/// (default eps), at least `E` and at most [`MAX_EQUAL_TIME_RATIO`] `x E`
/// (a nonsense time read back from a CSV cannot ask for more).
pub fn equal_time_epochs(runs: &[RunRecord], loss: LossKind, seed: u64, epochs: usize) -> usize {
    let spe = |m: Method| {
        runs.iter()
            .find(|r| {
                r.cell.loss == loss
                    && r.cell.seed == seed
                    && r.cell.method == m
                    && (m != Method::Clae || r.cell.eps == loss.default_eps())
            })
            .map(|r| r.seconds_per_epoch)
    };
    match (spe(Method::Plain), spe(Method::Clae)) {
        (Some(p), Some(c)) if p > 0.0 && p.is_finite() && c.is_finite() && c > 0.0 => {
            let ratio = (c / p).min(MAX_EQUAL_TIME_RATIO);
            ((epochs as f64 * ratio).round() as usize).max(epochs)
        }
        _ => epochs,
    }
}

/// The largest `t_clae / t_plain` [`equal_time_epochs`] uses.
pub const MAX_EQUAL_TIME_RATIO: f64 = 100.0;

// ----------------------------------------------------------------- CSV --

/// Header of `runs.csv`.
pub const RUNS_HEADER: &str = "fingerprint,backend,loss,method,eps_normalised,eps_pixels,seed,epochs,seconds_per_epoch,train_seconds,knn200,knn_t,probe_test,probe_val,probe_wd,probe_lr,probe_epoch,probe_best_test,robust,eval_seconds";
/// Header of `curves.csv`.
pub const CURVES_HEADER: &str =
    "fingerprint,loss,method,eps_normalised,seed,epoch,loss_total,seconds,knn200_curve";

/// The `runs.csv` row of a record.
pub fn run_row(fp: &str, r: &RunRecord) -> String {
    format!(
        "{fp},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        r.backend.replace(',', ";"),
        r.cell.loss,
        r.cell.method.name(),
        r.cell.eps,
        r.cell.eps * STD,
        r.cell.seed,
        r.epochs,
        r.seconds_per_epoch,
        r.train_seconds,
        r.knn200,
        knn_temperature(r.cell.loss),
        r.probe_test,
        r.probe_val,
        r.probe_wd,
        r.probe_lr,
        r.probe_epoch,
        r.probe_best_test,
        robust_text(&r.robust),
        r.eval_seconds
    )
}

/// Header of `baseline.csv` (the raw-pixel baselines, reused by a rerun).
pub const BASELINE_HEADER: &str = "fingerprint,knn200,probe_test,probe_best_test,robust";

fn robust_text(r: &[(f64, f64)]) -> String {
    r.iter()
        .map(|(e, a)| format!("{e}:{a}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_robust(text: &str) -> Option<Vec<(f64, f64)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(';')
        .map(|p| {
            let (e, a) = p.split_once(':')?;
            Some((e.parse().ok()?, a.parse().ok()?))
        })
        .collect()
}

/// The `baseline.csv` row of the raw-pixel baselines.
pub fn baseline_row(fp: &str, b: &PixelBaseline) -> String {
    format!(
        "{fp},{},{},{},{}",
        b.knn200,
        b.probe_test,
        b.probe_best_test,
        robust_text(&b.robust)
    )
}

/// The raw-pixel baselines of fingerprint `fp` in `dir/baseline.csv`, if any.
pub fn read_baseline(dir: &Path, fp: &str) -> Result<Option<PixelBaseline>> {
    let path = dir.join("baseline.csv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.first() != Some(&fp) {
            continue;
        }
        let ln = i + 1;
        if f.len() != 5 {
            return Err(corrupt_csv(
                &path,
                ln,
                format!("{} fields, expected 5", f.len()),
            ));
        }
        return Ok(Some(PixelBaseline {
            knn200: field(&f, 1, &path, ln)?,
            probe_test: field(&f, 2, &path, ln)?,
            probe_best_test: field(&f, 3, &path, ln)?,
            robust: parse_robust(f[4]).ok_or_else(|| corrupt_csv(&path, ln, "robust column"))?,
        }));
    }
    Ok(None)
}

/// The `curves.csv` rows of a record.
pub fn curve_rows(fp: &str, r: &RunRecord) -> String {
    let mut s = String::new();
    for (epoch, loss, seconds, knn) in &r.curve {
        let _ = writeln!(
            s,
            "{fp},{},{},{},{},{epoch},{loss},{seconds},{knn}",
            r.cell.loss,
            r.cell.method.name(),
            r.cell.eps,
            r.cell.seed
        );
    }
    s
}

fn corrupt_csv(path: &Path, line: usize, message: impl Into<String>) -> FashionError {
    FashionError::DataCorrupt {
        source_name: format!("{}, line {line}", path.display()),
        message: message.into(),
    }
}

fn field<T: std::str::FromStr>(f: &[&str], i: usize, path: &Path, line: usize) -> Result<T> {
    f.get(i)
        .and_then(|v| v.parse::<T>().ok())
        .ok_or_else(|| corrupt_csv(path, line, format!("column {} is not valid", i + 1)))
}

/// Reads the records of `runs.csv` and `curves.csv` in `dir` with
/// fingerprint `fp` (missing files: none). A runs.csv row is the commit
/// marker of its cell ([`append_record`] writes it last): curve rows of a
/// cell without one are ignored, and each curve keeps one row per epoch
/// (the last written), sorted by epoch.
pub fn read_finished(dir: &Path, fp: &str) -> Result<Vec<RunRecord>> {
    let runs_path = dir.join("runs.csv");
    let text = match std::fs::read_to_string(&runs_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(FashionError::Io {
                what: "reading finished cells".into(),
                path: runs_path,
                source: e,
            })
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let ln = i + 1;
        let f: Vec<&str> = line.split(',').collect();
        if f.first() != Some(&fp) {
            continue;
        }
        if f.len() != 20 {
            return Err(corrupt_csv(
                &runs_path,
                ln,
                format!("{} fields, expected 20", f.len()),
            ));
        }
        let loss = f[2]
            .parse::<LossKind>()
            .map_err(|e| corrupt_csv(&runs_path, ln, e.to_string()))?;
        let robust =
            parse_robust(f[18]).ok_or_else(|| corrupt_csv(&runs_path, ln, "robust column"))?;
        out.push(RunRecord {
            cell: Cell {
                loss,
                method: Method::parse(f[3])?,
                eps: field(&f, 4, &runs_path, ln)?,
                seed: field(&f, 6, &runs_path, ln)?,
            },
            backend: f[1].to_string(),
            epochs: field(&f, 7, &runs_path, ln)?,
            seconds_per_epoch: field(&f, 8, &runs_path, ln)?,
            train_seconds: field(&f, 9, &runs_path, ln)?,
            knn200: field(&f, 10, &runs_path, ln)?,
            probe_test: field(&f, 12, &runs_path, ln)?,
            probe_val: field(&f, 13, &runs_path, ln)?,
            probe_wd: field(&f, 14, &runs_path, ln)?,
            probe_lr: field(&f, 15, &runs_path, ln)?,
            probe_epoch: field(&f, 16, &runs_path, ln)?,
            probe_best_test: field(&f, 17, &runs_path, ln)?,
            eval_seconds: field(&f, 19, &runs_path, ln)?,
            robust,
            curve: Vec::new(),
        });
    }
    let curves_path = dir.join("curves.csv");
    if let Ok(text) = std::fs::read_to_string(&curves_path) {
        for (i, line) in text.lines().enumerate().skip(1) {
            let ln = i + 1;
            let f: Vec<&str> = line.split(',').collect();
            if f.first() != Some(&fp) || f.len() != 9 {
                continue;
            }
            let key = format!("{}/{}/{}/{}", f[1], f[2], f[3], f[4]);
            // Rows of a cell without a runs.csv row (a crash before its
            // commit) are dropped; of repeated (cell, epoch) rows the last
            // written wins (the attempt that went on to commit).
            if let Some(r) = out.iter_mut().find(|r| r.cell.key() == key) {
                let point: (usize, f64, f64, f64) = (
                    field(&f, 5, &curves_path, ln)?,
                    field(&f, 6, &curves_path, ln)?,
                    field(&f, 7, &curves_path, ln)?,
                    field(&f, 8, &curves_path, ln)?,
                );
                match r.curve.iter_mut().find(|c| c.0 == point.0) {
                    Some(c) => *c = point,
                    None => r.curve.push(point),
                }
            }
        }
    }
    for r in &mut out {
        r.curve.sort_by_key(|c| c.0);
    }
    Ok(out)
}

fn append(path: &Path, header: &str, text: &str) -> Result<()> {
    let io = |e| FashionError::Io {
        what: "appending a finished cell".into(),
        path: path.to_path_buf(),
        source: e,
    };
    let fresh = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    if fresh {
        writeln!(f, "{header}").map_err(io)?;
    }
    f.write_all(text.as_bytes()).map_err(io)?;
    f.flush().map_err(io)
}

/// Appends a finished cell to `curves.csv` and then `runs.csv` in `dir`:
/// the runs.csv row, written last, commits the cell (see [`read_finished`]).
pub fn append_record(dir: &Path, fp: &str, r: &RunRecord) -> Result<()> {
    append(&dir.join("curves.csv"), CURVES_HEADER, &curve_rows(fp, r))?;
    append(
        &dir.join("runs.csv"),
        RUNS_HEADER,
        &format!("{}\n", run_row(fp, r)),
    )
}

// ------------------------------------------------------------- the run --

fn progress_bar(o: &Options, label: &str, steps: u64) -> ProgressBar {
    if !o.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix:>40} [{bar:30}] {pos:>5}/{len:5} {elapsed:>4} {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// Loads the data, trains and evaluates every cell not already in
/// `runs.csv` (appending each as it finishes), and returns everything.
pub fn run(o: &Options) -> Result<Replication> {
    let started = Instant::now();
    let load_at_start = load_1min();
    let data_dir = o.data.clone().unwrap_or_else(data::default_dir);
    let all = data::load(&data_dir)?;
    let d = prepare(&all, o)?;
    std::fs::create_dir_all(&o.out).map_err(|e| FashionError::Io {
        what: "creating the report folder".into(),
        path: o.out.clone(),
        source: e,
    })?;
    let fp = o.fingerprint();
    let finished = read_finished(&o.out, &fp)?;
    let baseline = match read_baseline(&o.out, &fp)? {
        Some(b) => b,
        None => {
            let t = Instant::now();
            let b = pixel_baseline(&d, o)?;
            if o.progress {
                eprintln!(
                    "raw-pixel baseline (kNN-200, probe, PGD): {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
            append(
                &o.out.join("baseline.csv"),
                BASELINE_HEADER,
                &format!("{}\n", baseline_row(&fp, &b)),
            )?;
            b
        }
    };
    let cells = o.cells();
    let total = cells.len();
    let mut runs: Vec<RunRecord> = Vec::with_capacity(total);
    let mut reused = 0;
    for (i, cell) in cells.iter().enumerate() {
        if let Some(r) = finished.iter().find(|r| r.cell.key() == cell.key()) {
            runs.push(r.clone());
            reused += 1;
            continue;
        }
        let epochs = match cell.method {
            Method::PlainLong => equal_time_epochs(&runs, cell.loss, cell.seed, o.epochs),
            _ => o.epochs,
        };
        let label = format!("[{:>2}/{total}] {} seed {}", i + 1, cell.group(), cell.seed);
        let steps = epochs
            .checked_mul(d.train.len() / o.batch.max(1))
            .ok_or_else(|| {
                FashionError::config(
                    "epochs",
                    format!(
                        "{epochs} epochs of {} steps overflow the step count",
                        d.train.len() / o.batch.max(1)
                    ),
                )
            })? as u64;
        let bar = progress_bar(o, &label, steps);
        let record = run_cell(cell, o, &d, epochs, &bar)?;
        let done = format!(
            "kNN-200 {:.2}%  probe {:.2}%  {:.2} s/epoch",
            100.0 * record.knn200,
            100.0 * record.probe_test,
            record.seconds_per_epoch
        );
        if o.progress && bar.is_hidden() {
            eprintln!("{label}: {done}");
        }
        bar.finish_with_message(done);
        append_record(&o.out, &fp, &record)?;
        runs.push(record);
    }
    Ok(Replication {
        options: o.clone(),
        data_dir,
        sizes: (d.train.len(), d.val.len(), d.bank.len(), d.test.len()),
        runs,
        reused,
        baseline,
        seconds: started.elapsed().as_secs_f64(),
        load_average: load_at_start.zip(load_1min()),
    })
}
