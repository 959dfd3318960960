//! SGD and Adam against a hand-written, per-scalar re-derivation of
//! `torch.optim`'s update rules (docs/SPEC.md §5), over several steps, with
//! parameters whose gradient is `None` on some or all steps (skipped: no
//! decay, no state) and `Some(0)` (decayed).

mod common;

use clae_reference::encoder::{Mlp, MlpConfig, MlpGrads};
use clae_reference::optim::{Optimizer, OptimizerConfig, ParamState};
use clae_reference::rng::Rng;
use common::*;
use ndarray::ArrayD;

const STEPS: usize = 5;

/// Per-scalar optimizer state of the re-derivation.
#[derive(Clone, Default)]
struct Scalar {
    p: f64,
    buf: Option<f64>,
    m: f64,
    v: f64,
    t: i32,
}

/// One torch.optim update of one scalar, written from the documentation:
///
/// SGD:  `g ← g + wd p;  b ← g (first step) or mu b + g;  p ← p − lr b`
/// Adam: `g ← g + wd p;  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;`
///       `p ← p − lr m̂ / (√v̂ + eps)` with `m̂ = m / (1 − β1^t)`, `v̂ = v / (1 − β2^t)`.
fn update(s: &mut Scalar, g: f64, cfg: &OptimizerConfig) {
    match *cfg {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        } => {
            let mut d = g + weight_decay * s.p;
            if momentum != 0.0 {
                let b = match s.buf {
                    None => d,
                    Some(b) => momentum * b + d,
                };
                s.buf = Some(b);
                d = b;
            }
            s.p -= lr * d;
        }
        OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let g = g + weight_decay * s.p;
            s.t += 1;
            s.m = beta1 * s.m + (1.0 - beta1) * g;
            s.v = beta2 * s.v + (1.0 - beta2) * g * g;
            let m_hat = s.m / (1.0 - beta1.powi(s.t));
            let v_hat = s.v / (1.0 - beta2.powi(s.t));
            s.p -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
}

fn mlp() -> Mlp<f64> {
    Mlp::new(MlpConfig::new(4, 5, 1, 3), 21).unwrap()
}

/// Random gradients for step `t`: tensor 2 (clean BN γ) has none on the
/// first two steps, tensors 4 and 5 (adv BN γ, β) never have one, tensor 3
/// (clean BN β) is exactly zero on every step.
fn grads_at(m: &Mlp<f64>, t: usize, rng: &mut Rng) -> MlpGrads<f64> {
    let tensors = m
        .parameters()
        .iter()
        .enumerate()
        .map(|(i, p)| match i {
            2 if t < 2 => None,
            4 | 5 => None,
            3 => Some(ArrayD::zeros(p.raw_dim())),
            _ => Some(ArrayD::from_shape_simple_fn(p.raw_dim(), || rng.normal())),
        })
        .collect();
    MlpGrads::from_tensors(m, tensors).unwrap()
}

fn configs() -> [OptimizerConfig; 4] {
    [
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-2,
        },
        OptimizerConfig::Sgd {
            lr: 0.05,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        OptimizerConfig::Adam {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        },
        OptimizerConfig::Adam {
            lr: 3e-3,
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
        },
    ]
}

#[test]
fn updates_match_the_torch_rules_scalar_by_scalar() {
    for cfg in configs() {
        let mut m = mlp();
        let start = m.clone();
        let mut opt = Optimizer::new(cfg, &m).unwrap();
        let mut scalars: Vec<Vec<Scalar>> = m
            .parameters()
            .iter()
            .map(|p| {
                p.iter()
                    .map(|&p| Scalar {
                        p,
                        ..Scalar::default()
                    })
                    .collect()
            })
            .collect();
        let mut rng = Rng::new(22);
        for t in 0..STEPS {
            let g = grads_at(&m, t, &mut rng);
            opt.step(&mut m, &g).unwrap();
            for (i, gi) in g.tensors().iter().enumerate() {
                if let Some(gi) = gi {
                    for (s, &gv) in scalars[i].iter_mut().zip(gi.iter()) {
                        update(s, gv, &cfg);
                    }
                }
            }
            let mut worst = 0.0f64;
            for (i, p) in m.parameters().iter().enumerate() {
                let want =
                    ArrayD::from_shape_vec(p.raw_dim(), scalars[i].iter().map(|s| s.p).collect())
                        .unwrap();
                let e = rel_err(&p.to_owned(), &want);
                worst = worst.max(e);
                assert!(e < 1e-13, "{cfg:?} step {t} tensor {i}: rel err {e:e}");
            }
            println!(
                "OPTIM {} step {t}: max rel err vs scalar re-derivation {worst:.1e}",
                cfg.name()
            );
        }
        // never-updated tensors: untouched and without state
        let names = m.parameter_names();
        for i in [4, 5] {
            assert!(names[i].contains(".bn.adv."));
            assert_eq!(m.parameters()[i], start.parameters()[i], "{cfg:?}");
            assert!(opt.state()[i].is_none());
        }
        // the state itself, and what the state dict exports
        let sd = opt.state_dict(&m);
        match cfg {
            OptimizerConfig::Sgd { momentum: 0.0, .. } => {
                assert!(sd.entries.is_empty(), "no momentum, no state");
            }
            OptimizerConfig::Sgd { .. } => {
                for (i, st) in opt.state().iter().enumerate() {
                    if let Some(ParamState::Sgd {
                        momentum_buffer: Some(b),
                    }) = st
                    {
                        let want: Vec<f64> = scalars[i].iter().map(|s| s.buf.unwrap()).collect();
                        assert!(
                            rel_err(b, &ArrayD::from_shape_vec(b.raw_dim(), want).unwrap()) < 1e-13
                        );
                        assert_eq!(sd.get(&format!("{}.momentum_buffer", names[i])), Some(b));
                    }
                }
                assert_eq!(sd.entries.len(), names.len() - 2);
            }
            OptimizerConfig::Adam { .. } => {
                for (i, st) in opt.state().iter().enumerate() {
                    if let Some(ParamState::Adam { step, .. }) = st {
                        // counted per parameter: tensor 2 missed two steps
                        let want = if i == 2 { STEPS - 2 } else { STEPS } as u64;
                        assert_eq!(*step, want, "{}", names[i]);
                        let exported = sd.get(&format!("{}.step", names[i])).unwrap();
                        assert_eq!(exported.ndim(), 0);
                        assert_eq!(exported.first(), Some(&(want as f64)));
                        assert!(sd.get(&format!("{}.exp_avg", names[i])).is_some());
                        assert!(sd.get(&format!("{}.exp_avg_sq", names[i])).is_some());
                    }
                }
                assert_eq!(sd.entries.len(), 3 * (names.len() - 2));
            }
        }
    }
}

#[test]
fn a_zero_gradient_is_decayed_but_a_missing_one_is_not() {
    let cfg = OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.5,
    };
    let mut m = mlp();
    m.backbone[0].bn.clean.beta.fill(2.0); // tensor 3
    m.backbone[0].bn.adv.beta.fill(2.0); // tensor 5
    let mut opt = Optimizer::new(cfg, &m).unwrap();
    let mut g = MlpGrads::none(&m);
    g.backbone[0].bn.clean.beta = Some(ndarray::Array1::zeros(5)); // tensor 3
    opt.step(&mut m, &g).unwrap();
    // p − lr (0 + wd p) = 2 − 0.1 · 1 = 1.9
    assert!(m.backbone[0]
        .bn
        .clean
        .beta
        .iter()
        .all(|&v| (v - 1.9).abs() < 1e-15));
    assert!(m.backbone[0].bn.adv.beta.iter().all(|&v| v == 2.0));
}

#[test]
fn adam_with_zero_learning_rate_moves_nothing_but_counts_steps() {
    let cfg = OptimizerConfig::Adam {
        lr: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut m = mlp();
    let start = m.clone();
    let mut opt = Optimizer::new(cfg, &m).unwrap();
    let mut rng = Rng::new(23);
    for t in 0..3 {
        let g = grads_at(&m, t, &mut rng);
        opt.step(&mut m, &g).unwrap();
    }
    assert!(m == start);
    assert!(matches!(
        opt.state()[0],
        Some(ParamState::Adam { step: 3, .. })
    ));
}

#[test]
fn f32_updates_follow_the_f64_rules_to_f32_precision() {
    for cfg in configs() {
        let m64 = mlp();
        let sd = m64.state_dict().cast::<f32>().unwrap();
        let mut m32 = Mlp::<f32>::from_state_dict(*m64.config(), &sd).unwrap();
        let mut opt = Optimizer::new(cfg, &m32).unwrap();
        let mut scalars: Vec<Vec<Scalar>> = m32
            .parameters()
            .iter()
            .map(|p| {
                p.iter()
                    .map(|&p| Scalar {
                        p: p as f64,
                        ..Scalar::default()
                    })
                    .collect()
            })
            .collect();
        let mut rng = Rng::new(24);
        for t in 0..STEPS {
            let g64 = grads_at(&m64, t, &mut rng);
            // the f32 gradients, and the f64 rules fed with exactly those values
            let t32: Vec<_> = g64
                .tensors()
                .iter()
                .map(|g| g.as_ref().map(|g| g.mapv(|v| v as f32)))
                .collect();
            for (i, g) in t32.iter().enumerate() {
                if let Some(g) = g {
                    for (s, &gv) in scalars[i].iter_mut().zip(g.iter()) {
                        update(s, gv as f64, &cfg);
                    }
                }
            }
            let g32 = MlpGrads::from_tensors(&m32, t32).unwrap();
            opt.step(&mut m32, &g32).unwrap();
        }
        for (i, p) in m32.parameters().iter().enumerate() {
            let got = p.mapv(|v| v as f64);
            let want =
                ArrayD::from_shape_vec(p.raw_dim(), scalars[i].iter().map(|s| s.p).collect())
                    .unwrap();
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "{cfg:?} tensor {i}: f32 rel err {e:e}");
        }
    }
}

#[test]
fn the_authors_presets() {
    assert_eq!(
        OptimizerConfig::authors_sgd(),
        OptimizerConfig::Sgd {
            lr: 0.03,
            momentum: 0.9,
            weight_decay: 5e-4
        }
    );
    assert_eq!(
        OptimizerConfig::authors_adam(),
        OptimizerConfig::Adam {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-6
        }
    );
}
