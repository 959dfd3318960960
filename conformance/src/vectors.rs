//! Conformance vectors (docs/SPEC.md §9): one JSON file per case with a configuration,
//! the initial encoder state, the inputs, and every quantity the reference
//! computes from them. The format is documented in `conformance/README.md`.

use crate::json::{state_from_json, state_to_json, NamedTensor, Tensor};
use clae_reference::adversarial::{input_gradient, AdvConfig, Attack, QStart, Recipe};
use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
use clae_reference::loss::{loss_forward_backward, LossKind};
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::rng::Rng;
use clae_reference::step::{clae_gradients, ClaeConfig};
use clae_reference::{ClaeError, Result};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub mod peers;

/// Value of the `format` field of every vector file.
pub const FORMAT: &str = "clae-conformance-vector/1";

/// Encoder shape and BatchNorm constants (docs/SPEC.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EncoderJson {
    /// `D_in`.
    pub d_in: usize,
    /// Hidden width `h`.
    pub hidden: usize,
    /// Backbone depth `L`.
    pub depth: usize,
    /// Embedding dimension `d`.
    pub d: usize,
    /// Clean BatchNorm momentum.
    pub bn_momentum_clean: f64,
    /// Adversarial BatchNorm momentum.
    pub bn_momentum_adv: f64,
    /// BatchNorm variance epsilon.
    pub bn_eps: f64,
}

impl From<MlpConfig> for EncoderJson {
    fn from(c: MlpConfig) -> Self {
        EncoderJson {
            d_in: c.d_in,
            hidden: c.hidden,
            depth: c.depth,
            d: c.d,
            bn_momentum_clean: c.bn_momentum_clean,
            bn_momentum_adv: c.bn_momentum_adv,
            bn_eps: c.bn_eps,
        }
    }
}

impl From<EncoderJson> for MlpConfig {
    fn from(c: EncoderJson) -> Self {
        MlpConfig {
            d_in: c.d_in,
            hidden: c.hidden,
            depth: c.depth,
            d: c.d,
            bn_momentum_clean: c.bn_momentum_clean,
            bn_momentum_adv: c.bn_momentum_adv,
            bn_eps: c.bn_eps,
        }
    }
}

/// The adversarial attack: `fgsm` (then `steps = 1`, `eta = eps`) or `pgd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackJson {
    /// `"fgsm"` or `"pgd"`.
    pub kind: String,
    /// Number of sign steps `k`.
    pub steps: usize,
    /// Step size `eta`.
    pub eta: f64,
}

/// Optimizer and hyper-parameters (`torch.optim` semantics, docs/SPEC.md §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerJson {
    /// `"sgd"` or `"adam"`.
    pub kind: String,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum (0 for Adam).
    pub momentum: f64,
    /// Adam `beta1` (0 for SGD).
    pub beta1: f64,
    /// Adam `beta2` (0 for SGD).
    pub beta2: f64,
    /// Adam `eps` (0 for SGD).
    pub eps: f64,
    /// L2 weight decay (added to the gradient).
    pub weight_decay: f64,
}

impl OptimizerJson {
    /// The vectors' SGD: `lr 0.03`, momentum 0.9, weight decay `5e-4`.
    pub fn case_sgd() -> Self {
        OptimizerJson {
            kind: "sgd".into(),
            lr: 0.03,
            momentum: 0.9,
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            weight_decay: 5e-4,
        }
    }

    /// The vectors' Adam: `lr 3e-4`, betas (0.9, 0.999), `eps 1e-8`, weight decay `1e-6`.
    pub fn case_adam() -> Self {
        OptimizerJson {
            kind: "adam".into(),
            lr: 3e-4,
            momentum: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-6,
        }
    }
}

/// Everything that defines a case besides the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseConfig {
    /// `"plain"`, `"simclr"` or `"uel"`.
    pub loss: String,
    /// Temperature.
    pub tau: f64,
    /// FGSM / PGD radius.
    pub eps: f64,
    /// Weight of the adversarial term.
    pub alpha: f64,
    /// Batch size `N`.
    pub n: usize,
    /// Embedding dimension `d`.
    pub d: usize,
    /// Input width `D_in`.
    pub d_in: usize,
    /// The encoder.
    pub encoder: EncoderJson,
    /// `"P"` or `"Q"`: which view is perturbed.
    pub q_start: String,
    /// FGSM or PGD.
    pub attack: AttackJson,
    /// Optional pixel clamp `[lo, hi]`.
    pub clamp: Option<[f64; 2]>,
    /// `"lean"` or `"authors"` (same numbers but for BatchNorm running statistics).
    pub recipe: String,
    /// The optimizer of the step.
    pub optimizer: OptimizerJson,
}

/// The inputs `P`, `Q` (`N x D_in`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// First view (anchors).
    #[serde(rename = "P")]
    pub p: Tensor,
    /// Second view.
    #[serde(rename = "Q")]
    pub q: Tensor,
}

/// What the reference computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    /// `f_clean(P)`, training mode (batch statistics), before the step.
    #[serde(rename = "Z_P")]
    pub z_p: Tensor,
    /// `f_clean(Q)`, likewise.
    #[serde(rename = "Z_Q")]
    pub z_q: Tensor,
    /// `L(Z_P, Z_Q)`.
    pub loss: f64,
    /// `dL/dZ_P` (for UEL the stop-gradient gradient of docs/SPEC.md §3.3).
    #[serde(rename = "dL_dZ_P")]
    pub grad_z_p: Tensor,
    /// `dL/dZ_Q`.
    #[serde(rename = "dL_dZ_Q")]
    pub grad_z_q: Tensor,
    /// `g = d/dX L(sg(f_adv(P)), f_adv(X))` at `X = Q_start` (the first sign step's gradient).
    pub g: Tensor,
    /// The adversarial view after all steps and the clamp.
    #[serde(rename = "Q_adv")]
    pub q_adv: Tensor,
    /// `L(Z_P, f_adv(Q_adv))`.
    pub loss_adv: f64,
    /// `L + alpha * loss_adv`.
    #[serde(rename = "L_total")]
    pub l_total: f64,
    /// Every parameter and buffer after one CLAE step with the optimizer.
    pub state_after_step: Vec<NamedTensor>,
    /// The optimizer's state after that step.
    pub optimizer_state_after_step: Vec<NamedTensor>,
}

/// Where a vector came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generator {
    /// `clae-reference <version>`.
    pub implementation: String,
    /// SIMD features of the generating CPU that select ndarray's matmul kernel
    /// (`avx2+fma`, `avx`, or `sse2`): on the same kind the reference
    /// reproduces the file bit for bit.
    pub cpu_features: String,
}

/// One conformance vector file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vector {
    /// Always [`FORMAT`].
    pub format: String,
    /// File stem, e.g. `case-07-uel-adam-pgd`.
    pub name: String,
    /// Seed of the data and initial parameters.
    pub seed: u64,
    /// Provenance.
    pub generator: Generator,
    /// The configuration.
    pub config: CaseConfig,
    /// The encoder's initial state (parameters and buffers).
    pub initial_state: Vec<NamedTensor>,
    /// `P` and `Q`.
    pub inputs: Inputs,
    /// The expected outputs.
    pub expected: Expected,
}

/// The matmul-kernel features of this CPU, as recorded in [`Generator`].
pub fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma".into();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            return "avx".into();
        }
        "sse2".into()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.into()
    }
}

/// Number of committed cases: 30 small ones and [`NUM_WIDE`] at realistic width.
pub const NUM_CASES: usize = 32;

/// Number of cases at realistic input width (`D_in` in the hundreds), the last ones.
pub const NUM_WIDE: usize = 2;

/// The configuration of case `i` (`0 <= i < NUM_CASES`), chosen so that the
/// set covers every loss, both optimizers, FGSM and PGD, the clamp, both
/// `Q_start` choices, both recipes, depths 0..=3 and `N` from 2 to 64; the
/// last [`NUM_WIDE`] take `D_in` 256 and 320 (narrow hidden layers keep the
/// files near 0.7 MB each). An `i` outside the set is an error.
pub fn case_config(i: usize) -> Result<CaseConfig> {
    if i >= NUM_CASES {
        return Err(invalid(format!("case {i}: there are {NUM_CASES} cases")));
    }
    if i >= NUM_CASES - NUM_WIDE {
        return Ok(wide_case_config(i - (NUM_CASES - NUM_WIDE)));
    }
    const SIZES: [(usize, usize, usize, usize, usize); 10] = [
        // (N, D_in, hidden, depth, d)
        (2, 3, 4, 1, 2),
        (3, 5, 6, 0, 3),
        (4, 8, 8, 2, 4),
        (5, 6, 7, 1, 5),
        (8, 12, 16, 3, 8),
        (16, 10, 12, 2, 6),
        (24, 8, 10, 1, 8),
        (32, 8, 12, 2, 6),
        (48, 6, 8, 3, 8),
        (64, 8, 8, 1, 8),
    ];
    let loss = LossKind::ALL[i % 3];
    let (n, d_in, hidden, depth, d) = SIZES[i % SIZES.len()];
    let optimizer = if (i / 3) % 2 == 0 {
        OptimizerJson::case_sgd()
    } else {
        OptimizerJson::case_adam()
    };
    // The committed vectors were generated with SimCLR's eps at 0.01, before
    // docs/SPEC.md §5 corrected its default to 0.03; they keep that value (each
    // file records its eps) so that they stay reproducible bit for bit.
    let base_eps = match loss {
        LossKind::SimClr => 0.01,
        LossKind::Plain | LossKind::Uel => loss.default_eps(),
    };
    let eps = base_eps * if i % 2 == 0 { 1.0 } else { 3.0 };
    let attack = if i % 4 == 2 {
        AttackJson {
            kind: "pgd".into(),
            steps: 2 + i % 3,
            eta: eps / 2.0,
        }
    } else {
        AttackJson {
            kind: "fgsm".into(),
            steps: 1,
            eta: eps,
        }
    };
    Ok(CaseConfig {
        loss: loss.name().into(),
        tau: loss.default_tau(),
        eps,
        alpha: [1.0, 0.5, 2.0][(i / 2) % 3],
        n,
        d,
        d_in,
        encoder: MlpConfig::new(d_in, hidden, depth, d).into(),
        q_start: if i % 5 == 3 { "Q" } else { "P" }.into(),
        attack,
        clamp: (i % 6 == 5).then_some([-1.0, 1.0]),
        recipe: if i % 7 == 6 { "authors" } else { "lean" }.into(),
        optimizer,
    })
}

/// The cases at realistic width: a plain-loss SGD FGSM lean step at
/// `N 16, D_in 256` and a SimCLR Adam PGD authors' step at `N 12, D_in 320`.
fn wide_case_config(j: usize) -> CaseConfig {
    let (loss, n, d_in, hidden, depth, d) = if j == 0 {
        (LossKind::Plain, 16, 256, 16, 2, 16)
    } else {
        (LossKind::SimClr, 12, 320, 12, 1, 8)
    };
    let eps = loss.default_eps();
    CaseConfig {
        loss: loss.name().into(),
        tau: loss.default_tau(),
        eps,
        alpha: 1.0,
        n,
        d,
        d_in,
        encoder: MlpConfig::new(d_in, hidden, depth, d).into(),
        q_start: "P".into(),
        attack: if j == 0 {
            AttackJson {
                kind: "fgsm".into(),
                steps: 1,
                eta: eps,
            }
        } else {
            AttackJson {
                kind: "pgd".into(),
                steps: 3,
                eta: eps / 2.0,
            }
        },
        clamp: None,
        recipe: if j == 0 { "lean" } else { "authors" }.into(),
        optimizer: if j == 0 {
            OptimizerJson::case_sgd()
        } else {
            OptimizerJson::case_adam()
        },
    }
}

/// The reference's typed configuration for a case.
pub fn typed(cfg: &CaseConfig) -> Result<(MlpConfig, ClaeConfig, OptimizerConfig)> {
    let loss: LossKind = cfg.loss.parse()?;
    let attack = match cfg.attack.kind.as_str() {
        "fgsm" => Attack::Fgsm,
        "pgd" => Attack::Pgd {
            steps: cfg.attack.steps,
            eta: cfg.attack.eta,
        },
        other => return Err(invalid(format!("unknown attack `{other}`"))),
    };
    let start = match cfg.q_start.as_str() {
        "P" => QStart::P,
        "Q" => QStart::Q,
        other => return Err(invalid(format!("unknown q_start `{other}`"))),
    };
    let recipe = match cfg.recipe.as_str() {
        "lean" => Recipe::Lean,
        "authors" => Recipe::Authors,
        other => return Err(invalid(format!("unknown recipe `{other}`"))),
    };
    let opt = optimizer_typed(&cfg.optimizer)?;
    let clae = ClaeConfig {
        loss,
        tau: cfg.tau,
        alpha: cfg.alpha,
        adv: AdvConfig {
            eps: cfg.eps,
            start,
            attack,
            clamp: cfg.clamp.map(|[lo, hi]| (lo, hi)),
        },
        recipe,
    };
    Ok((cfg.encoder.into(), clae, opt))
}

/// The reference's optimizer configuration for a vector's `optimizer`.
pub fn optimizer_typed(o: &OptimizerJson) -> Result<OptimizerConfig> {
    Ok(match o.kind.as_str() {
        "sgd" => OptimizerConfig::Sgd {
            lr: o.lr,
            momentum: o.momentum,
            weight_decay: o.weight_decay,
        },
        "adam" => OptimizerConfig::Adam {
            lr: o.lr,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        },
        other => return Err(invalid(format!("unknown optimizer `{other}`"))),
    })
}

pub(crate) fn invalid(message: String) -> ClaeError {
    ClaeError::InvalidState { message }
}

/// `P` (standard normal) and `Q = 0.9 P + 0.3 noise` (a correlated second
/// view), drawn from `rng` row-major, `P` first.
pub fn case_inputs(n: usize, d_in: usize, rng: &mut Rng) -> (Array2<f64>, Array2<f64>) {
    let p = Array2::from_shape_simple_fn((n, d_in), || rng.normal());
    let noise = Array2::from_shape_simple_fn((n, d_in), || rng.normal());
    let q = &p * 0.9 + &noise * 0.3;
    (p, q)
}

/// Everything a vector expects, computed by the reference in `f64`.
pub fn compute_expected(
    cfg: &CaseConfig,
    initial: &Mlp<f64>,
    p: &Array2<f64>,
    q: &Array2<f64>,
) -> Result<Expected> {
    let (_, clae, opt_cfg) = typed(cfg)?;
    let z_p = initial.forward(p.view(), Mode::Train(Branch::Clean))?.z;
    let z_q = initial.forward(q.view(), Mode::Train(Branch::Clean))?.z;
    let clean = loss_forward_backward(clae.loss, z_p.view(), z_q.view(), clae.tau)?;
    let start = match clae.adv.start {
        QStart::P => p,
        QStart::Q => q,
    };
    let g = input_gradient(initial, p.view(), start.view(), clae.loss, clae.tau)?;
    let mut mlp = initial.clone();
    let mut opt = Optimizer::new(opt_cfg, &mlp)?;
    let (report, grads) = clae_gradients(&mut mlp, p.view(), q.view(), &clae)?;
    opt.step(&mut mlp, &grads)?;
    let q_adv = report
        .q_adv
        .ok_or_else(|| invalid("a CLAE step returns Q_adv".into()))?;
    Ok(Expected {
        z_p: Tensor::from_array(z_p.view()),
        z_q: Tensor::from_array(z_q.view()),
        loss: clean.value,
        grad_z_p: Tensor::from_array(clean.grad_z_p.view()),
        grad_z_q: Tensor::from_array(clean.grad_z_q.view()),
        g: Tensor::from_array(g.view()),
        q_adv: Tensor::from_array(q_adv.view()),
        loss_adv: report.loss_adv.unwrap_or(f64::NAN),
        l_total: report.total,
        state_after_step: state_to_json(&mlp.state_dict()),
        optimizer_state_after_step: state_to_json(&opt.state_dict(&mlp)),
    })
}

/// Generates case `i` deterministically from `base_seed + i`.
pub fn generate(i: usize, base_seed: u64) -> Result<Vector> {
    let cfg = case_config(i)?;
    let seed = base_seed.wrapping_add(i as u64);
    let mlp_cfg: MlpConfig = cfg.encoder.into();
    let initial = Mlp::<f64>::new(mlp_cfg, seed)?;
    let mut rng = Rng::new(seed ^ 0x5EED_DA7A);
    let (p, q) = case_inputs(cfg.n, cfg.d_in, &mut rng);
    let expected = compute_expected(&cfg, &initial, &p, &q)?;
    let name = format!(
        "case-{i:02}-{}-{}-{}",
        cfg.loss, cfg.optimizer.kind, cfg.attack.kind
    );
    Ok(Vector {
        format: FORMAT.into(),
        name,
        seed,
        generator: Generator {
            implementation: format!("clae-reference {}", env!("CARGO_PKG_VERSION")),
            cpu_features: cpu_features(),
        },
        config: cfg,
        initial_state: state_to_json(&initial.state_dict()),
        inputs: Inputs {
            p: Tensor::from_array(p.view()),
            q: Tensor::from_array(q.view()),
        },
        expected,
    })
}

/// Errors of reading or writing vector files.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid JSON of this format.
    #[error("{path}: not a conformance vector: {source}")]
    Json {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// Valid JSON but inconsistent content.
    #[error("{path}: {source}")]
    Content {
        /// The file.
        path: String,
        /// The cause.
        source: ClaeError,
    },
}

/// Reads one vector file.
pub fn load(path: &Path) -> std::result::Result<Vector, VectorError> {
    load_as(path, FORMAT)
}

/// Reads one file of the given `format` (checked before the rest is parsed).
pub(crate) fn load_as<T: serde::de::DeserializeOwned>(
    path: &Path,
    format: &str,
) -> std::result::Result<T, VectorError> {
    #[derive(Deserialize)]
    struct Head {
        format: String,
    }
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| VectorError::Io {
        path: p.clone(),
        source,
    })?;
    let json = |source| VectorError::Json {
        path: p.clone(),
        source,
    };
    let head: Head = serde_json::from_str(&text).map_err(json)?;
    if head.format != format {
        return Err(VectorError::Content {
            path: p,
            source: invalid(format!("format `{}`, expected `{format}`", head.format)),
        });
    }
    serde_json::from_str(&text).map_err(json)
}

/// Reads every `*.json` vector in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> std::result::Result<Vec<Vector>, VectorError> {
    load_dir_as(dir, FORMAT)
}

pub(crate) fn load_dir_as<T: serde::de::DeserializeOwned>(
    dir: &Path,
    format: &str,
) -> std::result::Result<Vec<T>, VectorError> {
    let io = |source| VectorError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_as(p, format)).collect()
}

/// Writes `v` as JSON to `dir/<name>.json`.
pub fn save(v: &Vector, dir: &Path) -> std::result::Result<(), VectorError> {
    save_as(v, &v.name, dir)
}

pub(crate) fn save_as<T: Serialize>(
    v: &T,
    name: &str,
    dir: &Path,
) -> std::result::Result<(), VectorError> {
    let path = dir.join(format!("{name}.json"));
    let p = path.display().to_string();
    let text = serde_json::to_string(v).map_err(|source| VectorError::Json {
        path: p.clone(),
        source,
    })?;
    std::fs::write(&path, text + "\n").map_err(|source| VectorError::Io { path: p, source })
}

impl Vector {
    /// The initial encoder, `P` and `Q`, rebuilt from the file.
    pub fn reference_inputs(&self) -> Result<(Mlp<f64>, Array2<f64>, Array2<f64>)> {
        let sd = state_from_json(&self.initial_state)?;
        let mlp = Mlp::from_state_dict(self.config.encoder.into(), &sd)?;
        Ok((mlp, self.inputs.p.to_array2()?, self.inputs.q.to_array2()?))
    }
}
