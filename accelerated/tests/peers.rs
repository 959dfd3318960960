//! The peer steps (docs/SPEC.md §6.1) against the reference in f64: the
//! attacks' views, the losses, and the parameters, running statistics and
//! optimizer state after a step, for ACL and RoCL, both attack BatchNorm
//! modes, every loss, SGD and Adam — at docs/SPEC.md §8's f64 tolerances.
//! The conformance suite draws these too; this is the fixed-case check.

mod common;

use clae_accelerated::device::Precision;
use clae_accelerated::encoder::Encoder;
use clae_accelerated::mlp::Mlp;
use clae_accelerated::{optim as acc_optim, peers as acc_peers, step as acc_step};
use clae_reference::encoder::{Mlp as RefMlp, MlpConfig};
use clae_reference::loss::LossKind;
use clae_reference::optim::{Optimizer as RefOptimizer, OptimizerConfig};
use clae_reference::peers::{self as ref_peers, AttackBn, PeerConfig, PeerPgd};
use clae_reference::state::StateDict;
use common::*;
use tch::Device;

fn state_err(a: &StateDict<f64>, b: &StateDict<f64>, keep: impl Fn(&str) -> bool) -> f64 {
    assert_eq!(a.names(), b.names());
    a.entries
        .iter()
        .zip(&b.entries)
        .filter(|(x, _)| keep(&x.name))
        .map(|(x, y)| rel_err(&x.value, &y.value))
        .fold(0.0, f64::max)
}

#[test]
fn peer_views_and_steps_match_the_reference() {
    let config = MlpConfig::new(6, 10, 2, 4);
    let mut worst = [0.0f64; 4];
    for base in [
        PeerConfig::acl(LossKind::SimClr),
        PeerConfig::rocl(LossKind::SimClr),
    ] {
        for bn in [AttackBn::Eval, AttackBn::Train] {
            for loss in LossKind::ALL {
                for opt in [
                    OptimizerConfig::authors_sgd(),
                    OptimizerConfig::authors_adam(),
                ] {
                    let cfg = PeerConfig {
                        loss,
                        tau: loss.default_tau(),
                        pgd: PeerPgd {
                            bn,
                            random_start: Some(3),
                            ..base.pgd
                        },
                        ..base
                    };
                    let mut reference = RefMlp::<f64>::new(config, 9).unwrap();
                    let mut mlp =
                        Mlp::from_reference(&reference, Device::Cpu, Precision::F64).unwrap();
                    let mut ref_opt = RefOptimizer::new(opt, &reference).unwrap();
                    let mut acc_opt = acc_optim::Optimizer::new(opt, &mlp).unwrap();
                    let p = normal2(8, 6, 41).mapv(|v| (0.5 + 0.2 * v).clamp(0.0, 1.0));
                    let q = p.mapv(|v| (0.9 * v + 0.05f64).clamp(0.0, 1.0));
                    let what = format!("{:?} {bn:?} {loss} {}", cfg.method, opt.name());

                    let want = ref_peers::peer_views(&reference, p.view(), q.view(), &cfg).unwrap();
                    let got = acc_peers::peer_views(&mlp, &t64(&p), &t64(&q), &cfg).unwrap();
                    assert_eq!(want.len(), got.len());
                    for (w, g) in want.iter().zip(&got) {
                        let e = rel_err(&arr(g), w);
                        worst[0] = worst[0].max(e);
                        assert!(e < 1e-12, "{what}: view {e:e}");
                    }

                    let w = ref_peers::peer_step(
                        &mut reference,
                        &mut ref_opt,
                        p.view(),
                        q.view(),
                        &cfg,
                    )
                    .unwrap();
                    let g = acc_step::peer_step(&mut mlp, &mut acc_opt, &t64(&p), &t64(&q), &cfg)
                        .unwrap();
                    let loss_err = [
                        (g.loss_clean, w.loss_clean),
                        (g.loss_adv.unwrap(), w.loss_adv.unwrap()),
                        (g.total, w.total),
                    ]
                    .iter()
                    .map(|(a, b)| ((a - b) / b).abs())
                    .fold(0.0, f64::max);
                    worst[1] = worst[1].max(loss_err);
                    assert!(loss_err < 1e-12, "{what}: losses {loss_err:e}");
                    let model =
                        state_err(&mlp.state_dict().unwrap(), &reference.state_dict(), |_| {
                            true
                        });
                    worst[2] = worst[2].max(model);
                    assert!(model < 1e-10, "{what}: state after the step {model:e}");
                    // the pre-BatchNorm biases' gradients are analytically 0:
                    // their optimizer state is noise (docs/SPEC.md §8)
                    let noise = |n: &str| n.starts_with("backbone.") && n.contains(".linear.bias.");
                    let (a, b) = (
                        acc_opt.state_dict().unwrap(),
                        ref_opt.state_dict(&reference),
                    );
                    let o = state_err(&a, &b, |n| !noise(n));
                    worst[3] = worst[3].max(o);
                    assert!(o < 1e-10, "{what}: optimizer state {o:e}");
                }
            }
        }
    }
    println!(
        "PEERS tch f64 vs reference f64: views {:.1e}, losses {:.1e}, state {:.1e}, optimizer state {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn a_failed_peer_step_changes_nothing() {
    let config = MlpConfig::new(6, 10, 2, 4);
    let mut mlp = Mlp::new(config, 2, Device::Cpu, Precision::F32).unwrap();
    let mut opt = acc_optim::Optimizer::new(OptimizerConfig::authors_adam(), &mlp).unwrap();
    let p = normal2(8, 6, 1).mapv(|v| v.abs().min(1.0));
    let before = (
        mlp.state_dict::<f64>().unwrap(),
        opt.state_dict::<f64>().unwrap(),
    );
    // huge views overflow in f32 inside the encoder: a typed error
    let huge = p.mapv(|v| v * 1e30);
    let cfg = PeerConfig {
        pgd: PeerPgd {
            clamp: None,
            ..PeerPgd::acl()
        },
        ..PeerConfig::acl(LossKind::SimClr)
    };
    assert!(acc_step::peer_step(&mut mlp, &mut opt, &t32(&huge), &t32(&huge), &cfg).is_err());
    assert!(acc_step::peer_step(
        &mut mlp,
        &mut opt,
        &t32(&p),
        &t32(&p),
        &PeerConfig { tau: 0.0, ..cfg }
    )
    .is_err());
    assert_eq!(
        before,
        (
            mlp.state_dict::<f64>().unwrap(),
            opt.state_dict::<f64>().unwrap()
        )
    );
    // and a normal batch then trains
    acc_step::peer_step(&mut mlp, &mut opt, &t32(&p), &t32(&p), &cfg).unwrap();
}
