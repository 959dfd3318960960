//! The PyTorch eager baseline computes what the overhead report says it
//! times: `benches/python/eager.py check` runs two plain, lean and authors'
//! steps (every loss, SGD and Adam) from the reference's initial state in
//! `float32`, and its losses of both steps match the reference in `f64`
//! within docs/SPEC.md §8's f32 tolerance (`1e-4` relative) — the second
//! step's losses depend on the first step's update, so the optimizers are
//! checked too.

use clae_benches::overhead::eager::locate;
use clae_reference::adversarial::Recipe;
use clae_reference::encoder::{Mlp, MlpConfig};
use clae_reference::loss::LossKind;
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::rng::Rng;
use clae_reference::step::{clae_step, plain_step, ClaeConfig};
use ndarray::Array2;
use serde_json::{json, Value};

const STEPS: usize = 2;
const TOL: f64 = 1e-4;

fn optimizer_json(c: &OptimizerConfig) -> Value {
    match *c {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        } => {
            json!({"kind": "sgd", "lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        }
        OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            json!({"kind": "adam", "lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay})
        }
    }
}

fn rows(a: &Array2<f64>) -> Value {
    Value::Array(a.rows().into_iter().map(|r| json!(r.to_vec())).collect())
}

#[test]
fn the_eager_baseline_computes_the_reference_steps() {
    let (python, script) = match locate() {
        Ok(found) => found,
        // scripts/setup.sh sets CLAE_PYTHON; only a build without setup skips,
        // and a CLAE_PYTHON that points nowhere is a failure, not a skip
        Err(why)
            if std::env::var_os("CLAE_PYTHON").is_none()
                && option_env!("CLAE_PYTHON").is_none() =>
        {
            println!("PyTorch eager baseline check skipped: {why}");
            return;
        }
        Err(why) => panic!("the PyTorch eager baseline cannot run: {why}"),
    };
    let config = MlpConfig::new(10, 16, 2, 4);
    let mut rng = Rng::new(5);
    let p = Array2::from_shape_simple_fn((8, 10), || rng.normal());
    let q = p.mapv(|v| 0.9 * v) + Array2::from_shape_simple_fn((8, 10), || 0.1 * rng.normal());
    let mut worst = 0.0f64;
    let mut compared = 0;
    for loss in LossKind::ALL {
        for opt in [
            OptimizerConfig::authors_sgd(),
            OptimizerConfig::authors_adam(),
        ] {
            for step in ["plain", "lean", "authors"] {
                let mlp0 = Mlp::<f64>::new(config, 11).unwrap();
                let state: serde_json::Map<String, Value> = mlp0
                    .state_dict()
                    .entries
                    .iter()
                    .map(|e| {
                        (e.name.clone(), json!({"shape": e.value.shape(), "data": e.value.iter().copied().collect::<Vec<f64>>()}))
                    })
                    .collect();
                let cfg = ClaeConfig {
                    recipe: if step == "authors" {
                        Recipe::Authors
                    } else {
                        Recipe::Lean
                    },
                    ..ClaeConfig::paper(loss)
                };
                let input = json!({
                    "encoder": {"kind": "mlp", "d_in": config.d_in, "hidden": config.hidden, "depth": config.depth, "d": config.d},
                    "loss": loss.name(), "step": step, "tau": cfg.tau, "eps": cfg.adv.eps, "alpha": cfg.alpha,
                    "optimizer": optimizer_json(&opt), "dtype": "float32", "steps": STEPS,
                    "p": rows(&p), "q": rows(&q), "state": state,
                });
                let path = std::env::temp_dir().join(format!(
                    "clae-eager-check-{}-{loss}-{}-{step}.json",
                    std::process::id(),
                    opt.name()
                ));
                std::fs::write(&path, input.to_string()).unwrap();
                let out = std::process::Command::new(&python)
                    .arg(&script)
                    .args(["check", "--input"])
                    .arg(&path)
                    .output()
                    .unwrap();
                let _ = std::fs::remove_file(&path);
                assert!(
                    out.status.success(),
                    "eager.py check failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
                let losses = reply["losses"].as_array().unwrap();
                assert_eq!(losses.len(), STEPS);
                // the reference, f64, the same steps
                let mut mlp = mlp0.clone();
                let mut o = Optimizer::new(opt, &mlp).unwrap();
                for (k, got) in losses.iter().enumerate() {
                    let r = if step == "plain" {
                        plain_step(&mut mlp, &mut o, p.view(), q.view(), loss, cfg.tau).unwrap()
                    } else {
                        clae_step(&mut mlp, &mut o, p.view(), q.view(), &cfg).unwrap()
                    };
                    let want = [Some(r.loss_clean), r.loss_adv, Some(r.total)];
                    for (w, g) in want.iter().zip(got.as_array().unwrap()) {
                        let (Some(w), Some(g)) = (w, g.as_f64()) else {
                            assert!(
                                w.is_none() && g.is_null(),
                                "{loss} {step}: a loss term is missing"
                            );
                            continue;
                        };
                        let e = (g - w).abs() / w.abs().max(f64::MIN_POSITIVE);
                        worst = worst.max(e);
                        compared += 1;
                        assert!(e <= TOL, "{loss} {} {step}, step {k}: eager {g} vs reference {w} (rel err {e:e})", opt.name());
                    }
                }
            }
        }
    }
    println!("EAGER-CHECK {compared} losses of the PyTorch eager baseline (float32) against the reference (f64): max rel err {worst:.2e} (limit {TOL:e})");
}

/// The peers' steps (docs/SPEC.md §6.1): `eager.py check` runs two ACL-style
/// and two RoCL-style steps (every loss, the authors' optimizer for it) from
/// the reference's initial state, with the reference's random start
/// (`clae_reference::peers::start_noise` of the attack's seed, ACL's `2N`
/// rows split `P` first) and the reference's attack settings, in `float64`
/// so that PGD's sign steps see the same gradients; its losses match the
/// reference `f64`'s within `1e-6` relative. `P` and `Q` lie in `[0, 1]`, the
/// pixel range both peers clamp to.
#[test]
fn the_eager_peer_steps_compute_the_reference_peer_steps() {
    use clae_reference::peers::{peer_step, start_noise, PeerConfig, PeerMethod};
    const PEER_TOL: f64 = 1e-6;
    let (python, script) = match locate() {
        Ok(found) => found,
        Err(why)
            if std::env::var_os("CLAE_PYTHON").is_none()
                && option_env!("CLAE_PYTHON").is_none() =>
        {
            println!("PyTorch eager peer check skipped: {why}");
            return;
        }
        Err(why) => panic!("the PyTorch eager baseline cannot run: {why}"),
    };
    let config = MlpConfig::new(10, 16, 2, 4);
    let n = 8;
    let mut rng = Rng::new(7);
    let p = Array2::from_shape_simple_fn((n, 10), || rng.uniform());
    let q = Array2::from_shape_simple_fn((n, 10), || rng.uniform())
        .mapv(|u| (0.9 * u + 0.05).clamp(0.0, 1.0))
        * 0.5
        + &p * 0.5;
    let mut worst = 0.0f64;
    let mut compared = 0;
    for loss in LossKind::ALL {
        let opt = if loss == LossKind::SimClr {
            OptimizerConfig::authors_adam()
        } else {
            OptimizerConfig::authors_sgd()
        };
        for cfg in [PeerConfig::acl(loss), PeerConfig::rocl(loss)] {
            let (step, rows_of_noise) = match cfg.method {
                PeerMethod::Acl => ("acl", 2 * n),
                PeerMethod::Rocl { .. } => ("rocl", n),
            };
            let seed = cfg
                .pgd
                .random_start
                .expect("both peers start at a random point");
            let noise = start_noise(seed, rows_of_noise, config.d_in);
            let (lo, hi) = cfg.pgd.clamp.expect("both peers clamp to [0, 1]");
            let mut peer = json!({"eps": cfg.pgd.eps, "eta": cfg.pgd.eta, "steps": cfg.pgd.steps, "clamp": [lo, hi]});
            if let PeerMethod::Rocl { weight } = cfg.method {
                peer["weight"] = json!(weight);
            }
            let mlp0 = Mlp::<f64>::new(config, 13).unwrap();
            let state: serde_json::Map<String, Value> = mlp0
                .state_dict()
                .entries
                .iter()
                .map(|e| {
                    (e.name.clone(), json!({"shape": e.value.shape(), "data": e.value.iter().copied().collect::<Vec<f64>>()}))
                })
                .collect();
            let input = json!({
                "encoder": {"kind": "mlp", "d_in": config.d_in, "hidden": config.hidden, "depth": config.depth, "d": config.d},
                "loss": loss.name(), "step": step, "tau": cfg.tau,
                "optimizer": optimizer_json(&opt), "dtype": "float64", "steps": STEPS,
                "p": rows(&p), "q": rows(&q), "state": state, "noise": rows(&noise),
                "peers": {step: peer},
            });
            let path = std::env::temp_dir().join(format!(
                "clae-eager-peer-check-{}-{loss}-{step}.json",
                std::process::id()
            ));
            std::fs::write(&path, input.to_string()).unwrap();
            let out = std::process::Command::new(&python)
                .arg(&script)
                .args(["check", "--input"])
                .arg(&path)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&path);
            assert!(
                out.status.success(),
                "eager.py check failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
            let losses = reply["losses"].as_array().unwrap();
            assert_eq!(losses.len(), STEPS);
            let mut mlp = mlp0.clone();
            let mut o = Optimizer::new(opt, &mlp).unwrap();
            for (k, got) in losses.iter().enumerate() {
                let r = peer_step(&mut mlp, &mut o, p.view(), q.view(), &cfg).unwrap();
                let want = [Some(r.loss_clean), r.loss_adv, Some(r.total)];
                for (w, g) in want.iter().zip(got.as_array().unwrap()) {
                    let (Some(w), Some(g)) = (w, g.as_f64()) else {
                        panic!("{loss} {step}: a loss term is missing ({w:?}, {g:?})");
                    };
                    let e = (g - w).abs() / w.abs().max(f64::MIN_POSITIVE);
                    worst = worst.max(e);
                    compared += 1;
                    assert!(
                        e <= PEER_TOL,
                        "{loss} {step}, step {k}: eager {g} vs reference {w} (rel err {e:e})"
                    );
                }
            }
        }
    }
    assert_eq!(compared, 3 * 2 * STEPS * 3);
    println!("EAGER-PEER-CHECK {compared} losses of the PyTorch eager ACL/RoCL steps (float64) against the reference (f64): max rel err {worst:.2e} (limit {PEER_TOL:e})");
}
