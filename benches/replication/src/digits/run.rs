//! Command-line options and the whole replication: load, split, train every
//! (loss, method, seed), evaluate, report.

use super::data::{self, Digits, CLASSES};
use super::eval::{knn_top1, linear_probe, ProbeConfig, KNN_K, KNN_T};
use super::tch_trainer::TchTrainer;
use super::train::{
    train_run, Backend, Method, ModelConfig, ReferenceTrainer, RunRecord, TrainConfig, Trainer,
};
use super::{DigitsError, Result};
use clae_benches::machine::load_1min;
use clae_reference::loss::LossKind;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// `digits --help`.
pub const USAGE: &str = "\
Plain contrastive learning vs CLAE on scikit-learn's 8x8 digits (issue 6).

Usage: digits [OPTIONS]

Options:
  --quick             smoke run: tiny encoder, 2 epochs, 2 seeds (seconds)
  --seeds N           seeds per configuration (default 5; quick 2)
  --epochs N          training epochs (default 30; quick 2)
  --losses LIST       comma-separated subset of plain,simclr,uel (default all)
  --no-control        skip the control: CLAE with eps = 0 (the same extra
                      loss term and cost, no perturbation); run by default
  --backend NAME      reference-f32 (default), reference-f64, tch-cpu-f32
                      (libtorch, same configuration and initial weights)
                      or tch-cuda-f32
  --torch-threads N   libtorch intra-op and MKL threads for the tch
                      backends (default 1: the matrices are small, and on a
                      busy 2-core machine multi-threaded MKL is ~10x slower)
  --out DIR           report folder (default report-out/digits, or
                      report-out/digits-BACKEND for a non-default backend)
  --data PATH         digits.csv.gz (default $CLAE_DIGITS_CSV, else
                      ${XDG_CACHE_HOME:-$HOME/.cache}/clae/digits.csv.gz)
  --no-progress       no progress bars
  -h, --help          this text
";

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Smoke-run sizes.
    pub quick: bool,
    /// Seeds per configuration (`0..seeds`).
    pub seeds: usize,
    /// Training epochs per run.
    pub epochs: usize,
    /// Loss families to run.
    pub losses: Vec<LossKind>,
    /// Methods to run (plain first; the comparisons are against it).
    pub methods: Vec<Method>,
    /// Implementation.
    pub backend: Backend,
    /// Report folder (`None`: [`Options::out_dir`]'s default).
    pub out: Option<PathBuf>,
    /// Data file (`None`: [`data::default_path`]).
    pub data: Option<PathBuf>,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// libtorch intra-op threads (tch backends only).
    pub torch_threads: usize,
}

/// Seed of the train/test split (fixed for every run and every invocation).
pub const SPLIT_SEED: u64 = 2020;
/// Fraction of each class held out for testing.
pub const TEST_FRACTION: f64 = 0.25;

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            seeds: 5,
            epochs: 30,
            losses: LossKind::ALL.to_vec(),
            methods: vec![Method::Plain, Method::Clae, Method::ClaeEps0],
            backend: Backend::ReferenceF32,
            out: None,
            data: None,
            progress: true,
            torch_threads: 1,
        }
    }
}

impl Options {
    /// The smoke-run options (what `--quick` selects).
    pub fn quick() -> Self {
        Options {
            quick: true,
            seeds: 2,
            epochs: 2,
            ..Options::default()
        }
    }

    /// Parses command-line arguments (without the program name). `Ok(None)`
    /// means `--help` was asked for.
    ///
    /// ```
    /// use clae_replication::digits::run::Options;
    /// let o = Options::parse(["--quick", "--seeds", "3"].map(String::from)).unwrap().unwrap();
    /// assert!(o.quick && o.seeds == 3 && o.epochs == 2);
    /// assert!(Options::parse(["--seeds", "x"].map(String::from)).is_err());
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
                    .ok_or_else(|| DigitsError::config(name, "expects a value"))
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--quick" => {}
                "--no-progress" => o.progress = false,
                "--no-control" => o.methods.retain(|&m| m != Method::ClaeEps0),
                "--seeds" => o.seeds = parse_count("--seeds", &value("--seeds")?)?,
                "--epochs" => o.epochs = parse_count("--epochs", &value("--epochs")?)?,
                "--torch-threads" => {
                    o.torch_threads = parse_count("--torch-threads", &value("--torch-threads")?)?
                }
                "--out" => o.out = Some(PathBuf::from(value("--out")?)),
                "--data" => o.data = Some(PathBuf::from(value("--data")?)),
                "--backend" => o.backend = Backend::parse(&value("--backend")?)?,
                "--losses" => {
                    let list = value("--losses")?;
                    o.losses = list
                        .split(',')
                        .map(|s| s.trim().parse::<LossKind>())
                        .collect::<std::result::Result<_, _>>()?;
                    if o.losses.is_empty() {
                        return Err(DigitsError::config("--losses", "needs at least one loss"));
                    }
                }
                other => {
                    return Err(DigitsError::config(
                        "argument",
                        format!("unknown option {other:?}; see --help"),
                    ))
                }
            }
        }
        if o.seeds < 2 {
            return Err(DigitsError::config(
                "--seeds",
                "needs at least 2 seeds to estimate seed noise",
            ));
        }
        Ok(Some(o))
    }

    /// Where the report goes: `--out`, else `report-out/digits` for the
    /// default backend and `report-out/digits-<backend>` for the others.
    pub fn out_dir(&self) -> PathBuf {
        match (&self.out, self.backend) {
            (Some(p), _) => p.clone(),
            (None, Backend::ReferenceF32) => PathBuf::from("report-out/digits"),
            (None, b) => PathBuf::from(format!("report-out/digits-{}", b.name())),
        }
    }

    /// The training configuration of (`loss`, `method`) under these options.
    pub fn train_config(&self, loss: LossKind, method: Method) -> TrainConfig {
        let mut c = TrainConfig::digits(loss, method);
        c.epochs = self.epochs;
        if self.quick {
            c.model = ModelConfig {
                hidden: 64,
                depth: 1,
                d: 32,
            };
            c.batch_size = 64;
            c.probe = ProbeConfig {
                steps: 50,
                ..c.probe
            };
        }
        c
    }
}

fn parse_count(name: &str, v: &str) -> Result<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| DigitsError::config(name, format!("expects a positive integer, got {v:?}")))
}

/// Accuracy of the same protocols on the raw pixels (no encoder): the bar a
/// learned representation of these tiny images has to clear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelBaseline {
    /// Weighted kNN-200 on cosine similarity of raw pixels.
    pub knn200: f64,
    /// 1-NN on cosine similarity of raw pixels.
    pub knn1: f64,
    /// Linear probe on raw pixels.
    pub probe: f64,
}

/// Everything a replication produced.
#[derive(Debug, Clone)]
pub struct Replication {
    /// The options it ran with.
    pub options: Options,
    /// Where the data came from.
    pub data_path: PathBuf,
    /// Training and test set sizes.
    pub split_sizes: (usize, usize),
    /// One training configuration per loss (the plain one; CLAE differs only in `method`).
    pub configs: Vec<TrainConfig>,
    /// Every run.
    pub runs: Vec<RunRecord>,
    /// Raw-pixel baseline.
    pub baseline: PixelBaseline,
    /// Total wall-clock seconds.
    pub seconds: f64,
    /// The 1-minute load average (`/proc/loadavg`) at the start and the end,
    /// where available: other processes on the machine inflate wall-clock.
    pub load_average: Option<(f64, f64)>,
}

/// Loads the data, trains every configuration for every seed, and returns
/// the results (`report::write` writes the report folder).
pub fn run(options: &Options) -> Result<Replication> {
    let started = Instant::now();
    if matches!(options.backend, Backend::TchCpuF32 | Backend::TchCudaF32) {
        tch::set_num_threads(options.torch_threads.min(i32::MAX as usize) as i32);
    }
    let load_at_start = load_1min();
    let data_path = match &options.data {
        Some(p) => p.clone(),
        None => data::default_path()?,
    };
    let all = data::load(&data_path)?;
    let split = data::stratified_split(&all.labels, TEST_FRACTION, SPLIT_SEED)?;
    let (train, test) = (all.select(&split.train)?, all.select(&split.test)?);
    let baseline = pixel_baseline(
        &train,
        &test,
        &options.train_config(LossKind::Plain, Method::Plain).probe,
    )?;
    let configs: Vec<TrainConfig> = options
        .losses
        .iter()
        .map(|&l| options.train_config(l, Method::Plain))
        .collect();
    let total_runs = configs.len() * options.methods.len() * options.seeds;
    let mut runs = Vec::with_capacity(total_runs);
    // Seeds outside methods, so that a plain run and its CLAE runs follow
    // each other and share whatever load the machine is under.
    for base in &configs {
        for seed in 0..options.seeds as u64 {
            for &method in &options.methods {
                let cfg = TrainConfig { method, ..*base };
                let bar =
                    progress_bar(options, &cfg, seed, runs.len() + 1, total_runs, train.len());
                let mut trainer = make_trainer(options.backend, &cfg, seed)?;
                let record = train_run(trainer.as_mut(), &cfg, seed, &train, &test, &bar)?;
                let done = format!(
                    "kNN-200 {:.2}%  {:.3} s/epoch",
                    100.0 * record.final_eval.knn200,
                    record.seconds_per_epoch()
                );
                if options.progress && bar.is_hidden() {
                    // stderr is not a terminal (CI, a pipe): one line per run instead.
                    eprintln!(
                        "[{:>2}/{total_runs}] {} {} seed {seed}: {done}",
                        runs.len() + 1,
                        cfg.loss,
                        cfg.method.name()
                    );
                }
                bar.finish_with_message(done);
                runs.push(record);
            }
        }
    }
    let rep = Replication {
        options: options.clone(),
        data_path,
        split_sizes: (train.len(), test.len()),
        configs,
        runs,
        baseline,
        seconds: started.elapsed().as_secs_f64(),
        load_average: load_at_start.zip(load_1min()),
    };
    Ok(rep)
}

fn progress_bar(
    options: &Options,
    cfg: &TrainConfig,
    seed: u64,
    index: usize,
    total: usize,
    n_train: usize,
) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let steps = (cfg.epochs * (n_train / cfg.batch_size)) as u64;
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos:>4}/{len:4} {elapsed:>4} {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!(
        "[{index:>2}/{total}] {} {} seed {seed}",
        cfg.loss,
        cfg.method.name()
    ));
    bar
}

/// kNN and probe accuracy on the raw pixels.
pub fn pixel_baseline(train: &Digits, test: &Digits, probe: &ProbeConfig) -> Result<PixelBaseline> {
    let knn = |k| {
        knn_top1(
            train.view(),
            &train.labels,
            test.view(),
            &test.labels,
            CLASSES,
            k,
            KNN_T,
        )
    };
    Ok(PixelBaseline {
        knn200: knn(KNN_K)?,
        knn1: knn(1)?,
        probe: linear_probe(
            train.view(),
            &train.labels,
            test.view(),
            &test.labels,
            CLASSES,
            probe,
        )?,
    })
}

/// A trainer of `backend` for `cfg`, initialised from `seed`.
pub fn make_trainer(backend: Backend, cfg: &TrainConfig, seed: u64) -> Result<Box<dyn Trainer>> {
    Ok(match backend {
        Backend::ReferenceF32 => Box::new(ReferenceTrainer::<f32>::new(cfg, seed)?),
        Backend::ReferenceF64 => Box::new(ReferenceTrainer::<f64>::new(cfg, seed)?),
        Backend::TchCpuF32 => Box::new(TchTrainer::new(cfg, seed, tch::Device::Cpu)?),
        Backend::TchCudaF32 => Box::new(TchTrainer::new(cfg, seed, tch::Device::Cuda(0))?),
    })
}
