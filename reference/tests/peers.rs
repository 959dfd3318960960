//! The peer steps (docs/SPEC.md §6.1): finite-difference checks in f64 of
//! their parameter gradients (the adversarial views held fixed, as the
//! peers detach them — a view moves with the parameters only through signs,
//! which are locally constant), and the attacks' semantics: every view
//! stays in its L∞ ball and the pixel range, and a small step raises the
//! attacked objective.

mod common;

use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
use clae_reference::loss::{loss_value, LossKind};
use clae_reference::peers::{
    peer_gradients, peer_views, start_noise, AttackBn, PeerConfig, PeerMethod, PeerPgd,
};
use common::*;
use ndarray::Array2;

fn config() -> MlpConfig {
    MlpConfig::new(5, 7, 2, 4)
}

/// `L_total` with the adversarial views fixed, from the encoder `m`.
fn total(
    m: &Mlp<f64>,
    cfg: &PeerConfig,
    p: &Array2<f64>,
    q: &Array2<f64>,
    views: &[Array2<f64>],
) -> f64 {
    let z = |x: &Array2<f64>, b: Branch| m.forward(x.view(), Mode::Train(b)).unwrap().z;
    let l = |a: &Array2<f64>, b: &Array2<f64>| {
        loss_value(cfg.loss, a.view(), b.view(), cfg.tau).unwrap()
    };
    let (zp, zq) = (z(p, Branch::Clean), z(q, Branch::Clean));
    match cfg.method {
        PeerMethod::Acl => {
            0.5 * l(&zp, &zq) + 0.5 * l(&z(&views[0], Branch::Adv), &z(&views[1], Branch::Adv))
        }
        PeerMethod::Rocl { weight } => l(&zp, &zq) + weight * l(&zq, &z(&views[0], Branch::Adv)),
    }
}

#[test]
fn peer_gradients_match_finite_differences() {
    for method in ["acl", "rocl"] {
        for loss in [LossKind::Plain, LossKind::SimClr] {
            let mut cfg = match method {
                "acl" => PeerConfig::acl(loss),
                _ => PeerConfig::rocl(loss),
            };
            // a weight that makes the adversarial term matter to the check
            if let PeerMethod::Rocl { .. } = cfg.method {
                cfg.method = PeerMethod::Rocl { weight: 0.7 };
            }
            // inputs in [0, 1] like the peers' pixels; a seed whose every
            // training pass (P, Q clean; the views adv) is kink-free
            let mut found = None;
            for seed in 0..400 {
                let (mlp, xs) = kink_free_setup(config(), 6, seed, 1e-3, &[Branch::Clean], 2);
                let pix = |x: &Array2<f64>| x.mapv(|v| 0.5 + 0.2 * v);
                let (p, q) = (pix(&xs[0]), pix(&xs[1]));
                let views = peer_views(&mlp, p.view(), q.view(), &cfg).unwrap();
                let margins = views
                    .iter()
                    .chain([&p, &q])
                    .map(|x| {
                        let b = if views.iter().any(|v| std::ptr::eq(v, x)) {
                            Branch::Adv
                        } else {
                            Branch::Clean
                        };
                        relu_margin(&mlp, &mlp.forward(x.view(), Mode::Train(b)).unwrap())
                    })
                    .fold(f64::INFINITY, f64::min);
                if margins > 1e-3 {
                    found = Some((mlp, p, q, views));
                    break;
                }
            }
            let (mlp, p, q, views) = found.expect("a kink-free seed");
            let (report, grads) =
                peer_gradients(&mut mlp.clone(), p.view(), q.view(), &cfg).unwrap();
            assert!((report.total - total(&mlp, &cfg, &p, &q, &views)).abs() < 1e-12);
            let fd = fd_param_gradients(&mlp, 1e-6, |m| total(m, &cfg, &p, &q, &views));
            let err = compare_param_grads(
                &format!("{method} {loss} step"),
                &mlp.parameter_names(),
                &owned(&grads),
                &fd,
            );
            report_fd(
                &format!("{method} step, {loss} loss, parameter gradients"),
                err,
            );
        }
    }
}

#[test]
fn views_stay_in_the_ball_and_the_pixel_range() {
    let mlp = distinct_branch_mlp(config(), 3);
    let mut rng = clae_reference::rng::Rng::new(9);
    let p = randn(&mut rng, 6, 5).mapv(|v| (0.5 + 0.4 * v).clamp(0.0, 1.0));
    let q = p.mapv(|v| (0.9 * v + 0.05f64).clamp(0.0, 1.0));
    for cfg in [
        PeerConfig::acl(LossKind::SimClr),
        PeerConfig::rocl(LossKind::SimClr),
    ] {
        for bn in [AttackBn::Eval, AttackBn::Train] {
            let cfg = PeerConfig {
                pgd: PeerPgd {
                    bn,
                    eta: 0.02,
                    ..cfg.pgd
                },
                ..cfg
            };
            let views = peer_views(&mlp, p.view(), q.view(), &cfg).unwrap();
            for (x, s) in views.iter().zip([&p, &q]) {
                let moved = x
                    .iter()
                    .zip(s.iter())
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    moved <= cfg.pgd.eps * (1.0 + 1e-12),
                    "{:?} {bn:?}: moved {moved}",
                    cfg.method
                );
                assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
                assert!(moved > 0.0, "the attack moved nothing");
            }
        }
    }
}

#[test]
fn the_random_start_is_the_documented_noise() {
    // one PGD step of size 0: the view is clamp(S + eps U), U from start_noise
    let mlp = distinct_branch_mlp(config(), 4);
    let mut rng = clae_reference::rng::Rng::new(10);
    let p = randn(&mut rng, 4, 5).mapv(|v| 0.5 + 0.1 * v);
    let q = p.mapv(|v| v + 0.01);
    let pgd = PeerPgd {
        eta: 0.0,
        steps: 1,
        random_start: Some(77),
        ..PeerPgd::acl()
    };
    let cfg = PeerConfig {
        pgd,
        ..PeerConfig::acl(LossKind::SimClr)
    };
    let views = peer_views(&mlp, p.view(), q.view(), &cfg).unwrap();
    let u = start_noise(77, 8, 5);
    for (k, s) in [&p, &q].into_iter().enumerate() {
        let want = (s + &(u.slice(ndarray::s![4 * k..4 * k + 4, ..]).to_owned() * pgd.eps))
            .mapv(|v| v.clamp(0.0, 1.0));
        assert!(rel_err(&views[k], &want) < 1e-15);
    }
    // without a random start and eta = 0 the view is the start itself
    let cfg = PeerConfig {
        pgd: PeerPgd {
            random_start: None,
            ..pgd
        },
        ..cfg
    };
    assert_eq!(peer_views(&mlp, p.view(), q.view(), &cfg).unwrap()[0], p);
}

#[test]
fn a_small_step_raises_the_attacked_objective() {
    let mlp = distinct_branch_mlp(config(), 5);
    let mut rng = clae_reference::rng::Rng::new(11);
    let p = randn(&mut rng, 6, 5).mapv(|v| 0.5 + 0.1 * v);
    let q = p.mapv(|v| v + 0.02);
    let eta = 1e-4;
    for bn in [AttackBn::Eval, AttackBn::Train] {
        let (anchor_mode, mode) = match bn {
            AttackBn::Eval => (Mode::Eval, Mode::EvalAdv),
            AttackBn::Train => (Mode::Train(Branch::Clean), Mode::Train(Branch::Adv)),
        };
        let z = |x: &Array2<f64>, m: Mode| mlp.forward(x.view(), m).unwrap().z;
        let pgd = PeerPgd {
            eps: 1.0,
            eta,
            steps: 1,
            random_start: None,
            bn,
            clamp: None,
        };
        for loss in LossKind::ALL {
            let tau = loss.default_tau();
            let acl = PeerConfig {
                pgd,
                tau,
                ..PeerConfig::acl(loss)
            };
            let v = peer_views(&mlp, p.view(), q.view(), &acl).unwrap();
            let j = |a: &Array2<f64>, b: &Array2<f64>| {
                loss_value(loss, z(a, mode).view(), z(b, mode).view(), tau).unwrap()
            };
            assert!(j(&v[0], &v[1]) > j(&p, &q), "ACL {loss} {bn:?}");
            let rocl = PeerConfig {
                pgd,
                tau,
                ..PeerConfig::rocl(loss)
            };
            let v = peer_views(&mlp, p.view(), q.view(), &rocl).unwrap();
            let w = z(&q, anchor_mode);
            let j = |x: &Array2<f64>| loss_value(loss, w.view(), z(x, mode).view(), tau).unwrap();
            assert!(j(&v[0]) > j(&p), "RoCL {loss} {bn:?}");
        }
    }
}
