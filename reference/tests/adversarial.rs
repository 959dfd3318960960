//! What the adversarial view means (docs/SPEC.md §4): one sign pattern per image,
//! each `g_i` driven by every anchor `W_k` through the softmax denominator,
//! a first-order increase of the loss, PGD as iterated projected sign steps,
//! and the side effects (none for the lean recipe; the authors' documented
//! running-statistics updates).

mod common;

use clae_reference::adversarial::{
    adversarial_view, adversarial_view_authors, input_gradient, AdvConfig, Attack, QStart,
};
use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
use clae_reference::loss::LossKind;
use clae_reference::rng::Rng;
use common::*;
use ndarray::Array2;
use std::collections::HashSet;

fn setup(depth: usize, seed: u64) -> (Mlp<f64>, Array2<f64>, Array2<f64>) {
    let mlp = distinct_branch_mlp(MlpConfig::new(8, 10, depth, 5), seed);
    let mut rng = Rng::new(seed + 100);
    let p = randn(&mut rng, 6, 8);
    let q = &p + &randn(&mut rng, 6, 8).mapv(|v| 0.3 * v);
    (mlp, p, q)
}

fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[test]
fn every_image_gets_its_own_sign_pattern() {
    let (mlp, p, q) = setup(2, 1);
    let eps = 0.03;
    for kind in LossKind::ALL {
        let view =
            adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &AdvConfig::fgsm(eps)).unwrap();
        let g = &view.grads[0];
        // Q_adv[i] = P[i] + eps sign(g_i), pixel by pixel, from image i's own gradient
        let expected = &p + &g.mapv(|v| eps * sign(v));
        assert_eq!(view.q_adv, expected, "{kind}");
        let patterns: HashSet<Vec<i8>> = g
            .rows()
            .into_iter()
            .map(|row| row.iter().map(|&v| sign(v) as i8).collect())
            .collect();
        println!(
            "{kind}: {} distinct sign patterns over {} images",
            patterns.len(),
            p.nrows()
        );
        assert_eq!(
            patterns.len(),
            p.nrows(),
            "{kind}: a sign pattern is shared across images"
        );
    }
}

#[test]
fn g_i_depends_on_every_anchor_even_without_batchnorm() {
    // Depth 0: no BatchNorm, so f(X_i) depends on X_i alone. Changing only
    // the anchor P_k (X fixed) must still change every g_i — through the
    // softmax denominator, where W_k is one of the "classifier weights".
    let (mlp, p, _) = setup(0, 2);
    assert!(mlp.backbone.is_empty());
    let x = &p + 0.05;
    for kind in LossKind::ALL {
        let g = input_gradient(&mlp, p.view(), x.view(), kind, 0.2).unwrap();
        for k in 0..p.nrows() {
            let mut p2 = p.clone();
            p2.row_mut(k).mapv_inplace(|v| v + 0.5);
            let g2 = input_gradient(&mlp, p2.view(), x.view(), kind, 0.2).unwrap();
            for i in (0..p.nrows()).filter(|&i| i != k) {
                let change = g2
                    .row(i)
                    .iter()
                    .zip(g.row(i))
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                let scale = g.row(i).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                // a genuine dependence, far above rounding
                assert!(
                    change > 1e-6 * scale,
                    "{kind}: g_{i} did not move when only anchor {k} changed ({change:e} vs {scale:e})"
                );
            }
        }
    }
}

#[test]
fn fgsm_raises_the_adversarial_loss_to_first_order() {
    // L(Q_start + eps sign g) − L(Q_start) = eps Σ|g| + O(eps²).
    let (mlp, p, q) = setup(2, 3);
    for kind in LossKind::ALL {
        for start in [QStart::P, QStart::Q] {
            let x0 = if start == QStart::P { &p } else { &q };
            let tau = kind.default_tau();
            let w = mlp.forward(p.view(), Mode::Train(Branch::Adv)).unwrap().z;
            let z0 = mlp.forward(x0.view(), Mode::Train(Branch::Adv)).unwrap().z;
            let right = stack(w.view(), z0.view());
            let before = adv_scalar(&mlp, &w, x0, &right, kind, tau);
            for eps in [1e-4, 1e-5] {
                let cfg = AdvConfig {
                    start,
                    ..AdvConfig::fgsm(eps)
                };
                let view = adversarial_view(&mlp, p.view(), q.view(), kind, tau, &cfg).unwrap();
                let after = adv_scalar(&mlp, &w, &view.q_adv, &right, kind, tau);
                let predicted = eps * view.grads[0].iter().map(|v| v.abs()).sum::<f64>();
                let rel = ((after - before) - predicted).abs() / predicted;
                assert!(after > before, "{kind} {start:?}: loss did not increase");
                assert!(
                    rel < 0.05,
                    "{kind} {start:?} eps {eps}: first-order error {rel:e}"
                );
            }
        }
    }
}

#[test]
fn pgd_is_iterated_projected_sign_steps() {
    let (mlp, p, q) = setup(2, 4);
    let (eps, eta, steps) = (0.05, 0.02, 4);
    for kind in LossKind::ALL {
        for start in [QStart::P, QStart::Q] {
            for clamp in [None, Some((-1.0, 1.0))] {
                let cfg = AdvConfig {
                    eps,
                    start,
                    attack: Attack::Pgd { steps, eta },
                    clamp,
                };
                let view = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &cfg).unwrap();
                // by hand: x <- min(max(x + eta sign g(x), s − eps), s + eps), then clamp
                let s = if start == QStart::P { &p } else { &q };
                let mut x = s.clone();
                for t in 0..steps {
                    let g = input_gradient(&mlp, p.view(), x.view(), kind, 0.1).unwrap();
                    assert_eq!(view.grads[t], g, "{kind} step {t}");
                    x = ndarray::Zip::from(&x)
                        .and(&g)
                        .and(s)
                        .map_collect(|&x, &g, &s| (x + eta * sign(g)).max(s - eps).min(s + eps));
                }
                if let Some((lo, hi)) = clamp {
                    x.mapv_inplace(|v| v.clamp(lo, hi));
                }
                assert_eq!(view.q_adv, x, "{kind} {start:?} {clamp:?}");
                // inside the L∞ ball around Q_start, or (clamped) inside the pixel range
                for (a, b) in view.q_adv.iter().zip(s) {
                    match clamp {
                        None => assert!((a - b).abs() <= eps * (1.0 + 1e-12)),
                        Some((lo, hi)) => assert!((lo..=hi).contains(a)),
                    }
                }
            }
        }
    }
}

#[test]
fn the_lean_generation_pass_has_no_side_effects() {
    // adversarial_view borrows the encoder immutably; also check that the
    // same call twice gives the same view (no hidden state).
    let (mlp, p, q) = setup(2, 5);
    let before = mlp.clone();
    for kind in LossKind::ALL {
        let cfg = AdvConfig {
            attack: Attack::Pgd {
                steps: 3,
                eta: 0.01,
            },
            ..AdvConfig::fgsm(0.03)
        };
        let a = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &cfg).unwrap();
        let b = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &cfg).unwrap();
        assert_eq!(a, b);
    }
    assert!(mlp == before);
}

#[test]
fn the_authors_generation_pass_updates_the_adv_running_statistics_per_step() {
    // Per step: adv-mode training forwards of P, then of X — each folded
    // into the adv running statistics; the clean branch and every
    // parameter untouched.
    let (mlp, p, q) = setup(2, 6);
    for kind in LossKind::ALL {
        for start in [QStart::P, QStart::Q] {
            let cfg = AdvConfig {
                start,
                attack: Attack::Pgd {
                    steps: 3,
                    eta: 0.02,
                },
                ..AdvConfig::fgsm(0.05)
            };
            let mut m = mlp.clone();
            let view =
                adversarial_view_authors(&mut m, p.view(), q.view(), kind, 0.1, &cfg).unwrap();
            let lean = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &cfg).unwrap();
            assert_eq!(view.q_adv, lean.q_adv, "{kind} {start:?}");
            let mut replay = mlp.clone();
            let s = if start == QStart::P { &p } else { &q };
            let mut x = s.clone();
            for g in &lean.grads {
                replay.forward_train(p.view(), Branch::Adv).unwrap();
                replay.forward_train(x.view(), Branch::Adv).unwrap();
                x = ndarray::Zip::from(&x)
                    .and(g)
                    .and(s)
                    .map_collect(|&x, &g, &s| (x + 0.02 * sign(g)).max(s - 0.05).min(s + 0.05));
            }
            assert!(
                m == replay,
                "{kind} {start:?}: side effects differ from the documented ones"
            );
            for (a, b) in m.backbone.iter().zip(&mlp.backbone) {
                assert_eq!(a.bn.clean, b.bn.clean);
                assert_ne!(a.bn.adv.running_mean, b.bn.adv.running_mean);
            }
            assert_eq!(m.parameters(), mlp.parameters());
        }
    }
}
