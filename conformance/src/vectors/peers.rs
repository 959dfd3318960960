//! Conformance vectors of the peer steps (docs/SPEC.md §6.1, §9): ACL- and
//! RoCL-style PGD with a random start, eval- or train-mode BatchNorm during
//! the attack, and one optimizer step. One JSON file per case under
//! `conformance/vectors/peers/`, format [`FORMAT`] (documented in
//! `conformance/README.md`, "Peer vectors").
//!
//! The random start's noise is stored with the inputs (`U`), so a port needs
//! no copy of the reference's generator; the initial running statistics are
//! drawn at random and differ between the branches, so an attack that reads
//! the wrong branch's statistics (or batch statistics) in eval mode fails.

use super::{cpu_features, invalid, optimizer_typed, EncoderJson, Generator, OptimizerJson};
use crate::json::{state_from_json, state_to_json, NamedTensor, Tensor};
use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
use clae_reference::loss::{loss_forward_backward, LossKind};
use clae_reference::optim::Optimizer;
use clae_reference::peers::{
    peer_attack_trace, peer_gradients, start_noise, AttackBn, PeerConfig, PeerMethod, PeerPgd,
};
use clae_reference::rng::Rng;
use clae_reference::state::StateDict;
use clae_reference::Result;
use ndarray::{concatenate, Array2, ArrayD, Axis};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Value of the `format` field of every peer vector file.
pub const FORMAT: &str = "clae-conformance-peer-vector/1";

/// Number of committed peer cases.
pub const NUM_CASES: usize = 6;

/// The attack (docs/SPEC.md §6.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgdJson {
    /// L∞ radius.
    pub eps: f64,
    /// Step size.
    pub eta: f64,
    /// Number of steps `k`.
    pub steps: usize,
    /// Seed of the random start's noise (the noise itself is `inputs.U`);
    /// `null`: the attack starts at the clean view.
    pub random_start: Option<u64>,
    /// `"eval"` (running statistics: the attacked views read the adv
    /// branch's) or `"train"` (batch statistics, nothing updated).
    pub bn: String,
    /// Optional pixel range `[lo, hi]`, applied after the start and after every step.
    pub clamp: Option<[f64; 2]>,
}

/// Everything that defines a peer case besides the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerCaseConfig {
    /// `"acl"` or `"rocl"`.
    pub method: String,
    /// `"plain"`, `"simclr"` or `"uel"`.
    pub loss: String,
    /// Temperature.
    pub tau: f64,
    /// RoCL's weight `λ` of the adversarial term; `null` for ACL (½ and ½).
    pub weight: Option<f64>,
    /// Batch size `N`.
    pub n: usize,
    /// Input width `D_in`.
    pub d_in: usize,
    /// The encoder.
    pub encoder: EncoderJson,
    /// The attack.
    pub pgd: PgdJson,
    /// The optimizer of the step.
    pub optimizer: OptimizerJson,
}

impl PeerCaseConfig {
    /// The reference's typed configuration.
    pub fn typed(&self) -> Result<PeerConfig> {
        let loss: LossKind = self.loss.parse()?;
        let method = match (self.method.as_str(), self.weight) {
            ("acl", None) => PeerMethod::Acl,
            ("rocl", Some(weight)) => PeerMethod::Rocl { weight },
            (m, w) => return Err(invalid(format!("method `{m}` with weight {w:?}"))),
        };
        let bn = match self.pgd.bn.as_str() {
            "eval" => AttackBn::Eval,
            "train" => AttackBn::Train,
            other => return Err(invalid(format!("unknown attack BatchNorm mode `{other}`"))),
        };
        Ok(PeerConfig {
            method,
            loss,
            tau: self.tau,
            pgd: PeerPgd {
                eps: self.pgd.eps,
                eta: self.pgd.eta,
                steps: self.pgd.steps,
                random_start: self.pgd.random_start,
                bn,
                clamp: self.pgd.clamp.map(|[lo, hi]| (lo, hi)),
            },
        })
    }

    /// Number of adversarial views (ACL 2, RoCL 1).
    pub fn views(&self) -> usize {
        if self.method == "acl" {
            2
        } else {
            1
        }
    }
}

/// `P`, `Q` (`N x D_in`) and the random start's noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInputs {
    /// First view.
    #[serde(rename = "P")]
    pub p: Tensor,
    /// Second view.
    #[serde(rename = "Q")]
    pub q: Tensor,
    /// `views·N x D_in` values in `[−1, 1)`: rows `0..N` start the view of
    /// `P`, rows `N..2N` (ACL) the view of `Q`; `null` without a random start.
    #[serde(rename = "U")]
    pub u: Option<Tensor>,
}

/// What the reference computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerExpected {
    /// `f_clean(P)`, training mode, before the step.
    #[serde(rename = "Z_P")]
    pub z_p: Tensor,
    /// `f_clean(Q)`, likewise.
    #[serde(rename = "Z_Q")]
    pub z_q: Tensor,
    /// `L(Z_P, Z_Q)`.
    pub loss: f64,
    /// `dL/dZ_P`.
    #[serde(rename = "dL_dZ_P")]
    pub grad_z_p: Tensor,
    /// `dL/dZ_Q`.
    #[serde(rename = "dL_dZ_Q")]
    pub grad_z_q: Tensor,
    /// `∇_X J` at the attack's start, views stacked as in `U`.
    pub g: Tensor,
    /// The adversarial views after `k` steps, stacked as in `U`.
    #[serde(rename = "X_adv")]
    pub x_adv: Tensor,
    /// The adversarial term's `L` (ACL: `L(f_adv(X₁), f_adv(X₂))`;
    /// RoCL: `L(f_clean(Q), f_adv(X))`).
    pub loss_adv: f64,
    /// ACL: `(loss + loss_adv) / 2`; RoCL: `loss + λ loss_adv`.
    #[serde(rename = "L_total")]
    pub l_total: f64,
    /// Every parameter and buffer after one step with the optimizer.
    pub state_after_step: Vec<NamedTensor>,
    /// The optimizer's state after that step.
    pub optimizer_state_after_step: Vec<NamedTensor>,
}

/// One peer vector file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerVector {
    /// Always [`FORMAT`].
    pub format: String,
    /// File stem, e.g. `peer-00-acl-simclr-adam`.
    pub name: String,
    /// Seed of the data, the initial state and (as `pgd.random_start`) the noise.
    pub seed: u64,
    /// Provenance.
    pub generator: Generator,
    /// The configuration.
    pub config: PeerCaseConfig,
    /// The encoder's initial state (random running statistics).
    pub initial_state: Vec<NamedTensor>,
    /// `P`, `Q`, `U`.
    pub inputs: PeerInputs,
    /// The expected outputs.
    pub expected: PeerExpected,
}

/// The configuration of peer case `i`: both methods, every loss, SGD and
/// Adam, eval- and train-mode attacks, with and without the random start
/// and the clamp, the peers' defaults and a few shorter attacks. An `i`
/// outside the set is an error.
pub fn case_config(i: usize) -> Result<PeerCaseConfig> {
    // (method, loss, optimizer is Adam, bn, random start, clamp, (eps, eta, k), weight,
    //  (N, D_in, hidden, depth, d))
    type Row = (
        &'static str,
        LossKind,
        bool,
        &'static str,
        bool,
        bool,
        (f64, f64, usize),
        Option<f64>,
        (usize, usize, usize, usize, usize),
    );
    const ACL: (f64, f64, usize) = (8.0 / 255.0, 2.0 / 255.0, 5);
    const ROCL: (f64, f64, usize) = (0.0314, 0.007, 7);
    let rows: [Row; NUM_CASES] = [
        (
            "acl",
            LossKind::SimClr,
            true,
            "eval",
            true,
            true,
            ACL,
            None,
            (8, 12, 16, 2, 8),
        ),
        (
            "rocl",
            LossKind::SimClr,
            false,
            "eval",
            true,
            true,
            ROCL,
            Some(1.0 / 256.0),
            (10, 9, 12, 1, 6),
        ),
        (
            "acl",
            LossKind::Plain,
            false,
            "train",
            false,
            false,
            (0.05, 0.02, 3),
            None,
            (6, 8, 10, 1, 5),
        ),
        (
            "rocl",
            LossKind::Uel,
            true,
            "train",
            true,
            true,
            (0.05, 0.02, 2),
            Some(0.5),
            (16, 10, 12, 3, 8),
        ),
        (
            "acl",
            LossKind::Uel,
            false,
            "eval",
            true,
            false,
            (0.03, 0.01, 4),
            None,
            (5, 7, 9, 2, 4),
        ),
        (
            "rocl",
            LossKind::Plain,
            true,
            "eval",
            false,
            true,
            (0.04, 0.015, 3),
            Some(1.0),
            (24, 8, 10, 2, 6),
        ),
    ];
    let Some(&row) = rows.get(i) else {
        return Err(invalid(format!(
            "peer case {i}: there are {NUM_CASES} peer cases"
        )));
    };
    let (method, loss, adam, bn, random, clamp, (eps, eta, steps), weight, size) = row;
    let (n, d_in, hidden, depth, d) = size;
    Ok(PeerCaseConfig {
        method: method.into(),
        loss: loss.name().into(),
        tau: loss.default_tau(),
        weight,
        n,
        d_in,
        encoder: MlpConfig::new(d_in, hidden, depth, d).into(),
        pgd: PgdJson {
            eps,
            eta,
            steps,
            random_start: random.then_some(0),
            bn: bn.into(),
            clamp: clamp.then_some([0.0, 1.0]),
        },
        optimizer: if adam {
            OptimizerJson::case_adam()
        } else {
            OptimizerJson::case_sgd()
        },
    })
}

/// `P` uniform in `[0, 1)` and `Q = 0.8 P + 0.2 u` (`u` uniform), pixel-like
/// views as the peers attack them, drawn from `rng` row-major, `P` first.
pub fn case_inputs(n: usize, d_in: usize, rng: &mut Rng) -> (Array2<f64>, Array2<f64>) {
    let p = Array2::from_shape_simple_fn((n, d_in), || rng.uniform());
    let u = Array2::from_shape_simple_fn((n, d_in), || rng.uniform());
    let q = &p * 0.8 + &u * 0.2;
    (p, q)
}

/// `sd` with every BatchNorm running mean set to `0.1 z` and every running
/// variance to `exp(0.3 z)` (`z` standard normal from `rng`, tensor by
/// tensor in the state dict's order).
fn random_running_stats(mut sd: StateDict<f64>, rng: &mut Rng) -> StateDict<f64> {
    for e in &mut sd.entries {
        let draw: Option<fn(f64) -> f64> = if e.name.ends_with("running_mean") {
            Some(|z| 0.1 * z)
        } else if e.name.ends_with("running_var") {
            Some(|z| (0.3 * z).exp())
        } else {
            None
        };
        if let Some(f) = draw {
            e.value = ArrayD::from_shape_simple_fn(e.value.raw_dim(), || f(rng.normal()));
        }
    }
    sd
}

fn stacked(parts: &[Array2<f64>]) -> Result<Tensor> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    let a =
        concatenate(Axis(0), &views).map_err(|e| invalid(format!("stacking the views: {e}")))?;
    Ok(Tensor::from_array(a.view()))
}

/// Everything a peer vector expects, computed by the reference in `f64`.
pub fn compute_expected(
    cfg: &PeerCaseConfig,
    initial: &Mlp<f64>,
    p: &Array2<f64>,
    q: &Array2<f64>,
) -> Result<PeerExpected> {
    let peer = cfg.typed()?;
    let opt_cfg = optimizer_typed(&cfg.optimizer)?;
    let z_p = initial.forward(p.view(), Mode::Train(Branch::Clean))?.z;
    let z_q = initial.forward(q.view(), Mode::Train(Branch::Clean))?.z;
    let clean = loss_forward_backward(peer.loss, z_p.view(), z_q.view(), peer.tau)?;
    let trace = peer_attack_trace(initial, p.view(), q.view(), &peer)?;
    let first = trace
        .gradients
        .first()
        .ok_or_else(|| invalid("a PGD attack has at least one step".into()))?;
    let mut mlp = initial.clone();
    let mut opt = Optimizer::new(opt_cfg, &mlp)?;
    let (report, grads) = peer_gradients(&mut mlp, p.view(), q.view(), &peer)?;
    opt.step(&mut mlp, &grads)?;
    if report.q_adv.as_ref() != trace.views.first() {
        return Err(invalid("the step's view differs from the attack's".into()));
    }
    Ok(PeerExpected {
        z_p: Tensor::from_array(z_p.view()),
        z_q: Tensor::from_array(z_q.view()),
        loss: clean.value,
        grad_z_p: Tensor::from_array(clean.grad_z_p.view()),
        grad_z_q: Tensor::from_array(clean.grad_z_q.view()),
        g: stacked(first)?,
        x_adv: stacked(&trace.views)?,
        loss_adv: report.loss_adv.unwrap_or(f64::NAN),
        l_total: report.total,
        state_after_step: state_to_json(&mlp.state_dict()),
        optimizer_state_after_step: state_to_json(&opt.state_dict(&mlp)),
    })
}

/// Generates peer case `i` deterministically from `base_seed + i`: the
/// random start's seed is the case's seed.
pub fn generate(i: usize, base_seed: u64) -> Result<PeerVector> {
    let mut cfg = case_config(i)?;
    let seed = base_seed.wrapping_add(i as u64);
    if cfg.pgd.random_start.is_some() {
        cfg.pgd.random_start = Some(seed);
    }
    let mlp_cfg: MlpConfig = cfg.encoder.into();
    let mut rng = Rng::new(seed ^ 0x5EED_DA7A);
    let sd = random_running_stats(Mlp::<f64>::new(mlp_cfg, seed)?.state_dict(), &mut rng);
    let initial = Mlp::from_state_dict(mlp_cfg, &sd)?;
    let (p, q) = case_inputs(cfg.n, cfg.d_in, &mut rng);
    let u = cfg
        .pgd
        .random_start
        .map(|s| Tensor::from_array(start_noise(s, cfg.views() * cfg.n, cfg.d_in).view()));
    let expected = compute_expected(&cfg, &initial, &p, &q)?;
    let name = format!(
        "peer-{i:02}-{}-{}-{}",
        cfg.method, cfg.loss, cfg.optimizer.kind
    );
    Ok(PeerVector {
        format: FORMAT.into(),
        name,
        seed,
        generator: Generator {
            implementation: format!("clae-reference {}", env!("CARGO_PKG_VERSION")),
            cpu_features: cpu_features(),
        },
        config: cfg,
        initial_state: state_to_json(&initial.state_dict()),
        inputs: PeerInputs {
            p: Tensor::from_array(p.view()),
            q: Tensor::from_array(q.view()),
            u,
        },
        expected,
    })
}

impl PeerVector {
    /// The initial encoder, `P` and `Q`, rebuilt from the file.
    pub fn reference_inputs(&self) -> Result<(Mlp<f64>, Array2<f64>, Array2<f64>)> {
        let sd = state_from_json(&self.initial_state)?;
        let mlp = Mlp::from_state_dict(self.config.encoder.into(), &sd)?;
        Ok((mlp, self.inputs.p.to_array2()?, self.inputs.q.to_array2()?))
    }
}

/// Reads every `*.json` peer vector in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> std::result::Result<Vec<PeerVector>, super::VectorError> {
    super::load_dir_as(dir, FORMAT)
}

/// Writes `v` as JSON to `dir/<name>.json`.
pub fn save(v: &PeerVector, dir: &Path) -> std::result::Result<(), super::VectorError> {
    super::save_as(v, &v.name, dir)
}
