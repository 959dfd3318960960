//! Closed forms: values derived by hand in the test from docs/SPEC.md's formulas
//! (never numbers the code printed), and exact identities between code paths
//! (`eps = 0`, `alpha = 0`, PGD with one step, authors' vs lean recipe).

mod common;

use approx::assert_relative_eq;
use clae_reference::adversarial::{
    adversarial_view, adversarial_view_authors, AdvConfig, Attack, QStart, Recipe,
};
use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
use clae_reference::loss::{loss_forward_backward, loss_value, LossKind};
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::rng::Rng;
use clae_reference::step::{clae_gradients, clae_step, plain_step, ClaeConfig};
use common::*;
use ndarray::{array, Array1, Array2, Axis};

// ------------------------------------------------------------ N = 2 by hand --

/// `z_p0 = (1, 0)`, `z_p1 = (0, 1)`, `z_q0 = (cos a, sin a)`, `z_q1 = (cos b, sin b)`.
fn two_by_two(a: f64, b: f64) -> (Array2<f64>, Array2<f64>) {
    (
        array![[1.0, 0.0], [0.0, 1.0]],
        array![[a.cos(), a.sin()], [b.cos(), b.sin()]],
    )
}

const A: f64 = 0.3;
const B: f64 = 1.2;

#[test]
fn plain_loss_n2_by_hand() {
    let (z_p, z_q) = two_by_two(A, B);
    let tau = 0.2;
    let (ca, sa, cb, sb) = (A.cos(), A.sin(), B.cos(), B.sin());
    // S = [[cos a, cos b], [sin a, sin b]] / tau; row i's target is column i.
    let expected =
        0.5 * ((1.0 + ((cb - ca) / tau).exp()).ln() + (1.0 + ((sa - sb) / tau).exp()).ln());
    let out = loss_forward_backward(LossKind::Plain, z_p.view(), z_q.view(), tau).unwrap();
    assert!(
        rel_err_scalar(out.value, expected) < 1e-15,
        "{} vs {expected}",
        out.value
    );
    // gradients: A01 = off-diagonal softmax weight of row 0, A10 of row 1
    let a01 = 1.0 / (1.0 + ((ca - cb) / tau).exp());
    let a10 = 1.0 / (1.0 + ((sb - sa) / tau).exp());
    let (p0, p1) = (z_p.row(0), z_p.row(1));
    let (q0, q1) = (z_q.row(0), z_q.row(1));
    let k = 1.0 / (2.0 * tau);
    let gp = ndarray::stack![Axis(0), (&q1 - &q0) * (a01 * k), (&q0 - &q1) * (a10 * k)];
    let gq = ndarray::stack![
        Axis(0),
        (&p1 * a10 - &p0 * a01) * k,
        (&p0 * a01 - &p1 * a10) * k
    ];
    assert!(rel_err(&out.grad_z_p, &gp) < 1e-14);
    assert!(rel_err(&out.grad_z_q, &gq) < 1e-14);
}

#[test]
fn simclr_loss_n2_by_hand() {
    let (z_p, z_q) = two_by_two(A, B);
    let tau = 0.5;
    let e = |c: f64| (c / tau).exp();
    let (ca, sa, cb, sb, cab) = (A.cos(), A.sin(), B.cos(), B.sin(), (A - B).cos());
    // rows p0, p1, q0, q1; positives p0<->q0, p1<->q1; <p0, p1> = 0.
    let l_p0 = -ca / tau + (e(0.0) + e(ca) + e(cb)).ln();
    let l_p1 = -sb / tau + (e(0.0) + e(sa) + e(sb)).ln();
    let l_q0 = -ca / tau + (e(ca) + e(sa) + e(cab)).ln();
    let l_q1 = -sb / tau + (e(cb) + e(sb) + e(cab)).ln();
    let expected = (l_p0 + l_p1 + l_q0 + l_q1) / 4.0;
    let got = loss_value(LossKind::SimClr, z_p.view(), z_q.view(), tau).unwrap();
    assert_relative_eq!(got, expected, max_relative = 1e-15);
    // the loss normalises its inputs: scaling rows changes nothing
    let scaled_p = &z_p * &array![[3.0], [0.25]];
    let scaled_q = &z_q * &array![[0.5], [7.0]];
    let got_scaled = loss_value(LossKind::SimClr, scaled_p.view(), scaled_q.view(), tau).unwrap();
    assert_relative_eq!(got_scaled, expected, max_relative = 1e-14);
}

#[test]
fn uel_loss_n2_by_hand() {
    let (z_p, z_q) = two_by_two(A, B);
    let tau = 0.3;
    let e = |c: f64| (c / tau).exp();
    let (ca, sa, cb, sb, cab) = (A.cos(), A.sin(), B.cos(), B.sin(), (A - B).cos());
    // row: (positive, negative, negative) exponentials
    let row = |pos: f64, n1: f64, n2: f64| {
        let d = pos + n1 + n2;
        -((pos / d).ln() + (1.0 - n1 / d).ln() + (1.0 - n2 / d).ln())
    };
    let l_p0 = row(e(ca), e(0.0), e(cb));
    let l_p1 = row(e(sb), e(0.0), e(sa));
    let l_q0 = row(e(ca), e(sa), e(cab));
    let l_q1 = row(e(sb), e(cb), e(cab));
    let expected = (l_p0 + l_p1 + l_q0 + l_q1) / 4.0;
    let got = loss_value(LossKind::Uel, z_p.view(), z_q.view(), tau).unwrap();
    assert_relative_eq!(got, expected, max_relative = 1e-15);
}

#[test]
fn uel_n2_stop_gradient_by_hand() {
    // dL/dX[a] = (1/(2N tau)) Σ_c ∂l_a/∂s[a,c] X[c]; for row p0 of the N = 2
    // example, with softmax weights w = e/D over (p1, q0 = positive, q1):
    // ∂l/∂s[c] = −[c = pos] + w_c (1 − R) + [c neg] w_c/(1 − w_c),  R = Σ_neg w/(1 − w).
    let (z_p, z_q) = two_by_two(A, B);
    let tau = 0.3;
    let e = |c: f64| (c / tau).exp();
    let (ca, cb) = (A.cos(), B.cos());
    let d = e(0.0) + e(ca) + e(cb);
    let (w_p1, w_q0, w_q1) = (e(0.0) / d, e(ca) / d, e(cb) / d);
    let r = w_p1 / (1.0 - w_p1) + w_q1 / (1.0 - w_q1);
    let ds_p1 = w_p1 * (1.0 - r) + w_p1 / (1.0 - w_p1);
    let ds_q0 = -1.0 + w_q0 * (1.0 - r);
    let ds_q1 = w_q1 * (1.0 - r) + w_q1 / (1.0 - w_q1);
    let expected: Array1<f64> =
        (&z_p.row(1) * ds_p1 + &z_q.row(0) * ds_q0 + &z_q.row(1) * ds_q1) / (4.0 * tau);
    let out = loss_forward_backward(LossKind::Uel, z_p.view(), z_q.view(), tau).unwrap();
    assert!(rel_err(&out.grad_z_p.row(0).to_owned(), &expected) < 1e-14);
}

#[test]
fn losses_agree_with_naive_implementations_on_random_batches() {
    let mut rng = Rng::new(31);
    for (n, d) in [(2, 3), (7, 5), (16, 4)] {
        let z_p = unit_rows(&mut rng, n, d);
        let z_q = unit_rows(&mut rng, n, d);
        for tau in [0.1, 0.5, 1.0] {
            let plain = loss_value(LossKind::Plain, z_p.view(), z_q.view(), tau).unwrap();
            let simclr = loss_value(LossKind::SimClr, z_p.view(), z_q.view(), tau).unwrap();
            let uel = loss_value(LossKind::Uel, z_p.view(), z_q.view(), tau).unwrap();
            let x = stack(z_p.view(), z_q.view());
            assert_relative_eq!(
                plain,
                naive_plain(z_p.view(), z_q.view(), tau),
                max_relative = 1e-13
            );
            assert_relative_eq!(
                simclr,
                naive_simclr(z_p.view(), z_q.view(), tau),
                max_relative = 1e-13
            );
            assert_relative_eq!(
                uel,
                naive_uel_frozen(x.view(), x.view(), tau),
                max_relative = 1e-13
            );
        }
    }
}

/// `N` orthonormal rows in `R^d` (Gram–Schmidt on Gaussian vectors).
fn orthonormal_rows(rng: &mut Rng, n: usize, d: usize) -> Array2<f64> {
    let mut q = randn(rng, n, d);
    for i in 0..n {
        for j in 0..i {
            let proj = q.row(i).dot(&q.row(j));
            let qj = q.row(j).to_owned();
            q.row_mut(i).scaled_add(-proj, &qj);
        }
        let norm = q.row(i).dot(&q.row(i)).sqrt();
        q.row_mut(i).mapv_inplace(|v| v / norm);
    }
    q
}

#[test]
fn identical_views_with_orthonormal_rows_give_the_known_values() {
    let mut rng = Rng::new(32);
    let (n, d) = (4, 6);
    let z = orthonormal_rows(&mut rng, n, d);
    let nf = n as f64;
    for tau in [0.1f64, 0.2, 1.0] {
        // Written with ln_1p so that the expected values themselves are
        // accurate to a few ulps (the losses are small here).
        let small = (-1.0 / tau).exp();
        // Plain: each row sees its positive at 1/tau and N−1 zeros:
        // −log(e^{1/τ} / (e^{1/τ} + N − 1)) = log(1 + (N − 1) e^{−1/τ}).
        let plain = ((nf - 1.0) * small).ln_1p();
        // SimCLR: each of 2N rows sees its positive at 1/tau and 2N−2 zeros.
        let simclr = ((2.0 * nf - 2.0) * small).ln_1p();
        // UEL: same logits; 2N−2 negatives each with p = 1/D, D = e^{1/τ} + 2N − 2.
        let p_neg = small / (1.0 + (2.0 * nf - 2.0) * small);
        let uel = simclr - (2.0 * nf - 2.0) * (-p_neg).ln_1p();
        for (kind, expected) in [
            (LossKind::Plain, plain),
            (LossKind::SimClr, simclr),
            (LossKind::Uel, uel),
        ] {
            let got = loss_value(kind, z.view(), z.view(), tau).unwrap();
            assert!(
                rel_err_scalar(got, expected) < 1e-13,
                "{kind} tau {tau}: {got} vs {expected}"
            );
        }
    }
}

// ------------------------------------------------ adversarial identities --

fn setup(seed: u64) -> (Mlp<f64>, Array2<f64>, Array2<f64>) {
    let mlp = distinct_branch_mlp(MlpConfig::new(6, 8, 2, 4), seed);
    let mut rng = Rng::new(seed + 1);
    let p = randn(&mut rng, 7, 6);
    let q = &p + &randn(&mut rng, 7, 6).mapv(|v| 0.3 * v);
    (mlp, p, q)
}

#[test]
fn eps_zero_gives_q_adv_equal_to_q_start_exactly() {
    let (mlp, p, q) = setup(41);
    for kind in LossKind::ALL {
        for start in [QStart::P, QStart::Q] {
            for attack in [
                Attack::Fgsm,
                Attack::Pgd {
                    steps: 3,
                    eta: 0.01,
                },
            ] {
                let cfg = AdvConfig {
                    eps: 0.0,
                    start,
                    attack,
                    clamp: None,
                };
                let view = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &cfg).unwrap();
                let want = if start == QStart::P { &p } else { &q };
                assert_eq!(&view.q_adv, want, "{kind} {start:?} {attack:?}");
                let authors =
                    adversarial_view_authors(&mut mlp.clone(), p.view(), q.view(), kind, 0.1, &cfg)
                        .unwrap();
                assert_eq!(&authors.q_adv, want);
            }
        }
    }
}

#[test]
fn pgd_with_one_step_of_size_eps_equals_fgsm_exactly() {
    let (mlp, p, q) = setup(42);
    for kind in LossKind::ALL {
        for start in [QStart::P, QStart::Q] {
            for clamp in [None, Some((-1.0, 1.0))] {
                let eps = 0.07;
                let fgsm = AdvConfig {
                    eps,
                    start,
                    attack: Attack::Fgsm,
                    clamp,
                };
                let pgd = AdvConfig {
                    attack: Attack::Pgd { steps: 1, eta: eps },
                    ..fgsm
                };
                let a = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &fgsm).unwrap();
                let b = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &pgd).unwrap();
                assert_eq!(a.q_adv, b.q_adv, "{kind} {start:?} {clamp:?}");
                assert_eq!(a.grads, b.grads);
            }
        }
    }
}

#[test]
fn fgsm_is_q_start_plus_eps_sign_g() {
    // docs/SPEC.md §4 written out: Q_adv = Q_start + eps * sign(g), with g from
    // input_gradient, then the optional clamp.
    let (mlp, p, q) = setup(43);
    let eps = 0.05;
    for kind in LossKind::ALL {
        for start in [QStart::P, QStart::Q] {
            let x = if start == QStart::P { &p } else { &q };
            let g =
                clae_reference::adversarial::input_gradient(&mlp, p.view(), x.view(), kind, 0.1)
                    .unwrap();
            let sign = g.mapv(|v| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            });
            let expected = x + &(sign * eps);
            let cfg = AdvConfig {
                eps,
                start,
                attack: Attack::Fgsm,
                clamp: None,
            };
            let view = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &cfg).unwrap();
            assert_eq!(view.q_adv, expected, "{kind} {start:?}");
            assert_eq!(view.grads[0], g);
            let clamped = adversarial_view(
                &mlp,
                p.view(),
                q.view(),
                kind,
                0.1,
                &AdvConfig {
                    clamp: Some((-0.5, 0.8)),
                    ..cfg
                },
            )
            .unwrap();
            assert_eq!(clamped.q_adv, expected.mapv(|v| v.clamp(-0.5, 0.8)));
        }
    }
}

/// docs/SPEC.md §8's sign rule: `a` and `b` may differ only where `|g| <= 1e-6 max|g|`,
/// and there by at most `2 eps`. Returns how many entries were excused.
fn assert_sign_rule(a: &Array2<f64>, b: &Array2<f64>, g: &Array2<f64>, eps: f64) -> usize {
    let gmax = max_abs(g);
    let mut excused = 0;
    for ((x, y), gv) in a.iter().zip(b).zip(g) {
        if x != y {
            assert!(gv.abs() <= 1e-6 * gmax, "Q_adv differs where |g| = {gv:e}");
            assert!((x - y).abs() <= 2.0 * eps * (1.0 + 1e-12));
            excused += 1;
        }
    }
    assert!(excused * 100 <= a.len(), "{excused} of {} excused", a.len());
    excused
}

#[test]
fn authors_recipe_gives_the_same_view_as_the_lean_one() {
    let (mlp, p, q) = setup(44);
    for kind in LossKind::ALL {
        for start in [QStart::P, QStart::Q] {
            for attack in [
                Attack::Fgsm,
                Attack::Pgd {
                    steps: 3,
                    eta: 0.02,
                },
            ] {
                let cfg = AdvConfig {
                    eps: 0.05,
                    start,
                    attack,
                    clamp: None,
                };
                let lean = adversarial_view(&mlp, p.view(), q.view(), kind, 0.1, &cfg).unwrap();
                let authors =
                    adversarial_view_authors(&mut mlp.clone(), p.view(), q.view(), kind, 0.1, &cfg)
                        .unwrap();
                let excused = assert_sign_rule(&authors.q_adv, &lean.q_adv, &lean.grads[0], 0.05);
                assert_eq!(excused, 0, "{kind} {start:?} {attack:?}");
                for (ga, gl) in authors.grads.iter().zip(&lean.grads) {
                    assert!(rel_err(ga, gl) < 1e-12);
                }
            }
        }
    }
}

#[test]
fn authors_recipe_gives_the_same_step_as_the_lean_one() {
    for kind in LossKind::ALL {
        let (mlp, p, q) = setup(45);
        let lean_cfg = ClaeConfig::paper(kind);
        let authors_cfg = ClaeConfig {
            recipe: Recipe::Authors,
            ..lean_cfg
        };
        let (lean, lean_grads) =
            clae_gradients(&mut mlp.clone(), p.view(), q.view(), &lean_cfg).unwrap();
        let (auth, auth_grads) =
            clae_gradients(&mut mlp.clone(), p.view(), q.view(), &authors_cfg).unwrap();
        assert_sign_rule(
            auth.q_adv.as_ref().unwrap(),
            lean.q_adv.as_ref().unwrap(),
            &clae_reference::adversarial::input_gradient(
                &mlp,
                p.view(),
                p.view(),
                kind,
                lean_cfg.tau,
            )
            .unwrap(),
            lean_cfg.adv.eps,
        );
        assert!(rel_err_scalar(auth.total, lean.total) < 1e-12, "{kind}");
        assert!(rel_err_scalar(auth.loss_clean, lean.loss_clean) < 1e-12);
        let e = grad_set_err(&owned(&auth_grads), &owned(&lean_grads));
        assert!(e < 1e-12, "{kind}: gradients differ by {e:e}");
        // and after a whole optimizer step the parameters agree
        let mut m_lean = mlp.clone();
        let mut m_auth = mlp.clone();
        let mut o_lean = Optimizer::new(OptimizerConfig::authors_sgd(), &m_lean).unwrap();
        let mut o_auth = Optimizer::new(OptimizerConfig::authors_sgd(), &m_auth).unwrap();
        clae_step(&mut m_lean, &mut o_lean, p.view(), q.view(), &lean_cfg).unwrap();
        clae_step(&mut m_auth, &mut o_auth, p.view(), q.view(), &authors_cfg).unwrap();
        for (a, l) in m_auth.parameters().iter().zip(m_lean.parameters()) {
            assert!(rel_err(&a.to_owned(), &l.to_owned()) < 1e-12);
        }
    }
}

/// The running statistics of `mlp` as a flat list (clean then adv, per block).
fn running_stats(mlp: &Mlp<f64>) -> Vec<Array1<f64>> {
    mlp.backbone
        .iter()
        .flat_map(|l| {
            [
                l.bn.clean.running_mean.clone(),
                l.bn.clean.running_var.clone(),
                l.bn.adv.running_mean.clone(),
                l.bn.adv.running_var.clone(),
            ]
        })
        .collect()
}

#[test]
fn running_statistics_follow_the_documented_order_of_each_recipe() {
    // Lean: clean P, clean Q, adv Q_adv. Authors (one FGSM step): clean P,
    // clean Q, adv P, adv X (= Q_start), [Plain: clean P again], adv Q_adv.
    // Replayed with forward_train on a copy taken before the step.
    for kind in LossKind::ALL {
        for recipe in [Recipe::Lean, Recipe::Authors] {
            let (mlp, p, q) = setup(46);
            let cfg = ClaeConfig {
                recipe,
                ..ClaeConfig::paper(kind)
            };
            let mut stepped = mlp.clone();
            let (report, _) = clae_gradients(&mut stepped, p.view(), q.view(), &cfg).unwrap();
            let q_adv = report.q_adv.unwrap();
            let mut replay = mlp.clone();
            let mut pass = |x: &Array2<f64>, b: Branch| {
                replay.forward_train(x.view(), b).unwrap();
            };
            pass(&p, Branch::Clean);
            pass(&q, Branch::Clean);
            if recipe == Recipe::Authors {
                pass(&p, Branch::Adv);
                pass(&p, Branch::Adv); // X, a copy of Q_start = P
                if kind == LossKind::Plain {
                    pass(&p, Branch::Clean);
                }
            }
            pass(&q_adv, Branch::Adv);
            assert_eq!(
                running_stats(&stepped),
                running_stats(&replay),
                "{kind} {recipe:?}"
            );
            // parameters are not touched by clae_gradients
            assert_eq!(stepped.parameters(), mlp.parameters());
        }
    }
}

#[test]
fn running_statistics_use_pytorch_momentum_and_unbiased_variance() {
    // First block by hand: pre = P W0ᵀ + b0; mean and unbiased variance per
    // feature; running = (1 − m) running + m stat, m = 0.1 clean, 0.01 adv.
    let (mlp, p, q) = setup(47);
    let w = &mlp.backbone[0].linear.weight;
    let b = &mlp.backbone[0].linear.bias;
    let stats = |x: &Array2<f64>| {
        let n = x.nrows() as f64;
        let pre = x.dot(&w.t()) + b;
        let mean = pre.sum_axis(Axis(0)) / n;
        let var = (&pre - &mean).mapv(|v| v * v).sum_axis(Axis(0)) / (n - 1.0);
        (mean, var)
    };
    let mut m = mlp.clone();
    m.forward_train(p.view(), Branch::Clean).unwrap();
    m.forward_train(q.view(), Branch::Clean).unwrap();
    m.forward_train(q.view(), Branch::Adv).unwrap();
    let (mp, vp) = stats(&p);
    let (mq, vq) = stats(&q);
    let bn0 = &mlp.backbone[0].bn;
    let clean_mean = (&bn0.clean.running_mean * 0.9 + &mp * 0.1) * 0.9 + &mq * 0.1;
    let clean_var = (&bn0.clean.running_var * 0.9 + &vp * 0.1) * 0.9 + &vq * 0.1;
    let adv_mean = &bn0.adv.running_mean * 0.99 + &mq * 0.01;
    let adv_var = &bn0.adv.running_var * 0.99 + &vq * 0.01;
    let got = &m.backbone[0].bn;
    assert!(rel_err(&got.clean.running_mean, &clean_mean) < 1e-14);
    assert!(rel_err(&got.clean.running_var, &clean_var) < 1e-14);
    assert!(rel_err(&got.adv.running_mean, &adv_mean) < 1e-14);
    assert!(rel_err(&got.adv.running_var, &adv_var) < 1e-14);
    // evaluation mode reads the clean running statistics: a fresh pass in
    // eval mode gives the same embeddings after the adv stats are scrambled
    let z1 = m.embed(p.view()).unwrap();
    let mut m2 = m.clone();
    for l in &mut m2.backbone {
        l.bn.adv.running_mean.fill(5.0);
        l.bn.adv.running_var.fill(9.0);
    }
    assert_eq!(z1, m2.embed(p.view()).unwrap());
    // and it does differ when the clean ones change
    for l in &mut m2.backbone {
        l.bn.clean.running_mean.fill(5.0);
    }
    assert_ne!(z1, m2.embed(p.view()).unwrap());
    // training mode ignores running statistics altogether
    let t1 = m.forward(p.view(), Mode::Train(Branch::Clean)).unwrap().z;
    assert_eq!(
        t1,
        m2.forward(p.view(), Mode::Train(Branch::Clean)).unwrap().z
    );
}

// ------------------------------------------------------ alpha = 0 identity --

#[test]
fn alpha_zero_clae_step_equals_plain_step_exactly() {
    for kind in LossKind::ALL {
        for opt_cfg in [
            OptimizerConfig::authors_sgd(),
            OptimizerConfig::authors_adam(),
        ] {
            let (mlp, p, q) = setup(48);
            let mut cfg = ClaeConfig::paper(kind);
            cfg.alpha = 0.0;
            let mut m_plain = mlp.clone();
            let mut m_clae = mlp.clone();
            let mut o_plain = Optimizer::new(opt_cfg, &m_plain).unwrap();
            let mut o_clae = Optimizer::new(opt_cfg, &m_clae).unwrap();
            // the adversarial term's gradients are exactly zero
            let (_, g) = clae_gradients(&mut mlp.clone(), p.view(), q.view(), &cfg).unwrap();
            for (name, t) in mlp.parameter_names().iter().zip(&owned(&g)) {
                if name.contains(".bn.adv.") {
                    assert!(t.as_ref().unwrap().iter().all(|&v| v == 0.0), "{name}");
                }
            }
            let mut adv_before = Vec::new();
            for step in 0..3 {
                adv_before.push(mlp_adv_affine(&m_clae));
                let snapshot = m_clae.clone();
                let rp = plain_step(
                    &mut m_plain,
                    &mut o_plain,
                    p.view(),
                    q.view(),
                    kind,
                    cfg.tau,
                )
                .unwrap();
                let rc = clae_step(&mut m_clae, &mut o_clae, p.view(), q.view(), &cfg).unwrap();
                assert_eq!(rp.loss_clean, rc.loss_clean, "{kind} step {step}");
                assert_eq!(rp.total, rc.total, "{kind} step {step}");
                // every shared / clean parameter and clean running stat bit-equal
                let names = mlp.parameter_names();
                for ((name, a), b) in names
                    .iter()
                    .zip(m_plain.parameters())
                    .zip(m_clae.parameters())
                {
                    if !name.contains(".bn.adv.") {
                        assert_eq!(a, b, "{kind} {name} step {step}");
                    }
                }
                for (a, b) in m_plain.backbone.iter().zip(&m_clae.backbone) {
                    assert_eq!(a.bn.clean, b.bn.clean);
                }
                // the adv running statistics track Q_adv: one adv-mode pass
                // of Q_adv with the pre-step parameters, folded in once
                let mut replay = snapshot;
                let q_adv = rc.q_adv.unwrap();
                replay.forward_train(q_adv.view(), Branch::Adv).unwrap();
                for (a, b) in replay.backbone.iter().zip(&m_clae.backbone) {
                    assert_eq!(a.bn.adv.running_mean, b.bn.adv.running_mean);
                    assert_eq!(a.bn.adv.running_var, b.bn.adv.running_var);
                }
            }
            // The adv branch legitimately differs. Plain step: its affine
            // parameters have no gradient (untouched). CLAE step with
            // alpha = 0: a zero gradient, so only weight decay moves them.
            for (a, b) in m_plain.backbone.iter().zip(&mlp.backbone) {
                assert_eq!(a.bn.adv, b.bn.adv, "plain step touched the adv branch");
            }
            let expected = replay_zero_grad_updates(&opt_cfg, &adv_before[0], 3);
            let got = mlp_adv_affine(&m_clae);
            for (e, g) in expected.iter().zip(&got) {
                assert!(rel_err(g, e) < 1e-14, "{kind} {}", opt_cfg.name());
                assert_ne!(g, &adv_before[0][0]);
            }
        }
    }
}

/// The adv BatchNorm `γ, β` of every block, flattened into one list.
fn mlp_adv_affine(mlp: &Mlp<f64>) -> Vec<Array1<f64>> {
    mlp.backbone
        .iter()
        .flat_map(|l| [l.bn.adv.gamma.clone(), l.bn.adv.beta.clone()])
        .collect()
}

/// `steps` torch.optim updates of parameters whose gradient is exactly 0:
/// SGD `g = wd p, b = mu b + g, p −= lr b`; Adam with `g = wd p` and the
/// bias-corrected moments, written out per scalar.
fn replay_zero_grad_updates(
    cfg: &OptimizerConfig,
    start: &[Array1<f64>],
    steps: usize,
) -> Vec<Array1<f64>> {
    start
        .iter()
        .map(|t| {
            t.mapv(|p0| {
                let mut p = p0;
                let (mut b, mut m, mut v) = (0.0, 0.0, 0.0);
                for t in 1..=steps {
                    match *cfg {
                        OptimizerConfig::Sgd {
                            lr,
                            momentum,
                            weight_decay,
                        } => {
                            let g = weight_decay * p;
                            b = if t == 1 { g } else { momentum * b + g };
                            p -= lr * b;
                        }
                        OptimizerConfig::Adam {
                            lr,
                            beta1,
                            beta2,
                            eps,
                            weight_decay,
                        } => {
                            let g = weight_decay * p;
                            m = beta1 * m + (1.0 - beta1) * g;
                            v = beta2 * v + (1.0 - beta2) * g * g;
                            let m_hat = m / (1.0 - beta1.powi(t as i32));
                            let v_hat = v / (1.0 - beta2.powi(t as i32));
                            p -= lr * m_hat / (v_hat.sqrt() + eps);
                        }
                    }
                }
                p
            })
        })
        .collect()
}
