//! Finite-difference checks in f64 of every analytic backward pass of the
//! reference (each layer's are unit tests in `src/layers/gradcheck.rs`):
//! each loss w.r.t. both embedding sets, the encoder
//! (input and parameters, both BatchNorm branches and evaluation mode with
//! either branch's running statistics), the
//! adversarial input gradient `g`, and the parameter gradients of plain and
//! CLAE steps.
//!
//! Central differences with a step of `1e-6` relative to the tensor's scale;
//! the error of a tensor is `max|analytic − fd| / max|fd|` (docs/SPEC.md §8) and must
//! be below `1e-6`. Every check prints its error on a `FD-CHECK` line
//! (`cargo test -p clae-reference --test gradcheck -- --nocapture`).

mod common;

use clae_reference::adversarial::input_gradient;
use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
use clae_reference::loss::{loss_forward_backward, loss_value, LossKind};
use clae_reference::rng::Rng;
use clae_reference::step::{clae_gradients, plain_gradients, ClaeConfig};
use common::*;
use ndarray::{Array2, ArrayView2};

/// Relative finite-difference step.
const H: f64 = 1e-6;

// ---------------------------------------------------------------- losses --

/// FD of a loss w.r.t. both embedding sets. Plain and SimCLR are true
/// scalars; UEL is differentiated with its right factors frozen (docs/SPEC.md §3.3):
/// the scalar is the naive criterion with left factors `[Z_P; Z_Q]` varying
/// and right factors fixed at the evaluation point.
fn loss_fd_errors(kind: LossKind, z_p: &Array2<f64>, z_q: &Array2<f64>, tau: f64) -> (f64, f64) {
    let out = loss_forward_backward(kind, z_p.view(), z_q.view(), tau).unwrap();
    let right = stack(z_p.view(), z_q.view());
    let scalar = |zp: &Array2<f64>, zq: &Array2<f64>| match kind {
        LossKind::Uel => naive_uel_frozen(stack(zp.view(), zq.view()).view(), right.view(), tau),
        _ => loss_value(kind, zp.view(), zq.view(), tau).unwrap(),
    };
    let fd_p = fd_gradient(z_p, H, |zp| scalar(zp, z_q));
    let fd_q = fd_gradient(z_q, H, |zq| scalar(z_p, zq));
    (rel_err(&out.grad_z_p, &fd_p), rel_err(&out.grad_z_q, &fd_q))
}

#[test]
fn loss_gradients_match_finite_differences_on_unit_rows() {
    let mut rng = Rng::new(21);
    let z_p = unit_rows(&mut rng, 5, 4);
    let z_q = unit_rows(&mut rng, 5, 4);
    for kind in LossKind::ALL {
        for tau in [kind.default_tau(), 0.3] {
            let (ep, eq) = loss_fd_errors(kind, &z_p, &z_q, tau);
            report_fd(&format!("{kind} loss dL/dZ_P, unit rows, tau {tau}"), ep);
            report_fd(&format!("{kind} loss dL/dZ_Q, unit rows, tau {tau}"), eq);
        }
    }
}

#[test]
fn loss_gradients_match_finite_differences_on_non_unit_rows() {
    // SimCLR normalises its own inputs: its gradient must include that
    // normalisation. Plain and UEL use the inner products as given.
    let mut rng = Rng::new(22);
    let mut z_p = randn(&mut rng, 4, 3);
    let mut z_q = randn(&mut rng, 4, 3);
    for (i, (mut a, mut b)) in z_p.rows_mut().into_iter().zip(z_q.rows_mut()).enumerate() {
        let (na, nb) = (a.dot(&a).sqrt(), b.dot(&b).sqrt());
        a *= [0.5, 0.8, 1.3, 2.0][i] / na;
        b *= [1.7, 0.6, 1.0, 1.2][i] / nb;
    }
    for kind in LossKind::ALL {
        let tau = kind.default_tau().max(0.25);
        let (ep, eq) = loss_fd_errors(kind, &z_p, &z_q, tau);
        report_fd(
            &format!("{kind} loss dL/dZ_P, non-unit rows, tau {tau}"),
            ep,
        );
        report_fd(
            &format!("{kind} loss dL/dZ_Q, non-unit rows, tau {tau}"),
            eq,
        );
    }
}

/// Largest softmax probability of a *negative* and of the positive over all
/// rows of `[Z_P; Z_Q]` (diagonal masked), to show which regime a case hits.
fn dominance(z_p: &Array2<f64>, z_q: &Array2<f64>, tau: f64) -> (f64, f64) {
    let x = stack(z_p.view(), z_q.view());
    let m = x.nrows();
    let (mut neg, mut posi) = (0.0f64, 0.0f64);
    for a in 0..m {
        let e: Vec<f64> = (0..m)
            .map(|b| {
                if b == a {
                    0.0
                } else {
                    (x.row(a).dot(&x.row(b)) / tau).exp()
                }
            })
            .collect();
        let d: f64 = e.iter().sum();
        for (b, eb) in e.iter().enumerate() {
            if b == pos(a, m / 2) {
                posi = posi.max(eb / d);
            } else if b != a {
                neg = neg.max(eb / d);
            }
        }
    }
    (neg, posi)
}

#[test]
fn loss_gradients_match_finite_differences_when_one_entry_dominates() {
    // (a) a negative dominates some rows (Z_P has two near-duplicate rows,
    //     the positives are far): UEL's dominant-negative branch;
    // (b) the positive dominates every row (aligned views): the branch where
    //     1 − p[pos] is taken as the sum of the other probabilities.
    let mut rng = Rng::new(24);
    let base = unit_rows(&mut rng, 4, 3);
    let mut z_p = base.clone();
    let row0 = z_p.row(0).to_owned();
    z_p.row_mut(1).assign(&(&row0 + &(&base.row(1) * 0.1)));
    let z_p = normalize(z_p);
    let z_q = normalize(&z_p + &randn(&mut rng, 4, 3).mapv(|v| 0.9 * v));
    let aligned_q = normalize(&base + &randn(&mut rng, 4, 3).mapv(|v| 0.05 * v));
    let tau = 0.1;
    let (neg, _) = dominance(&z_p, &z_q, tau);
    assert!(
        neg > 0.6,
        "case (a) must have a dominating negative, max p_neg = {neg}"
    );
    let (_, posi) = dominance(&base, &aligned_q, tau);
    assert!(
        posi > 0.99,
        "case (b) must have a dominating positive, max p_pos = {posi}"
    );
    for kind in LossKind::ALL {
        let (ep, eq) = loss_fd_errors(kind, &z_p, &z_q, tau);
        report_fd(
            &format!("{kind} dL/dZ_P, dominating negative (p = {neg:.2})"),
            ep,
        );
        report_fd(
            &format!("{kind} dL/dZ_Q, dominating negative (p = {neg:.2})"),
            eq,
        );
        let (ep, eq) = loss_fd_errors(kind, &base, &aligned_q, tau);
        report_fd(
            &format!("{kind} dL/dZ_P, dominating positive (p = {posi:.4})"),
            ep,
        );
        report_fd(
            &format!("{kind} dL/dZ_Q, dominating positive (p = {posi:.4})"),
            eq,
        );
    }
}

fn normalize(mut z: Array2<f64>) -> Array2<f64> {
    for mut row in z.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row /= norm;
    }
    z
}

#[test]
fn simclr_gradient_on_unit_rows_is_the_tangential_dot_product_gradient() {
    // docs/SPEC.md §3.2: on unit-norm inputs, dL/dZ is the plain-dot-product gradient
    // with each row's radial component removed. The dot-product gradient is
    // taken by finite differences of the naive loss *without* normalisation.
    let mut rng = Rng::new(23);
    let z_p = unit_rows(&mut rng, 4, 3);
    let z_q = unit_rows(&mut rng, 4, 3);
    let tau = 0.5;
    let dot_loss = |zp: &Array2<f64>, zq: &Array2<f64>| {
        let n = zp.nrows();
        let u = stack(zp.view(), zq.view());
        let mut total = 0.0;
        for a in 0..2 * n {
            let s = |b: usize| u.row(a).dot(&u.row(b)) / tau;
            let denom: f64 = (0..2 * n).filter(|&b| b != a).map(|b| s(b).exp()).sum();
            total += -s(pos(a, n)) + denom.ln();
        }
        total / (2 * n) as f64
    };
    let tangential = |g: Array2<f64>, z: &Array2<f64>| {
        let mut g = g;
        for (mut gr, zr) in g.rows_mut().into_iter().zip(z.rows()) {
            let radial = gr.dot(&zr);
            gr.scaled_add(-radial, &zr);
        }
        g
    };
    let out = loss_forward_backward(LossKind::SimClr, z_p.view(), z_q.view(), tau).unwrap();
    let fd_p = tangential(fd_gradient(&z_p, H, |zp| dot_loss(zp, &z_q)), &z_p);
    let fd_q = tangential(fd_gradient(&z_q, H, |zq| dot_loss(&z_p, zq)), &z_q);
    report_fd(
        "simclr dL/dZ_P = tangential dot-product gradient",
        rel_err(&out.grad_z_p, &fd_p),
    );
    report_fd(
        "simclr dL/dZ_Q = tangential dot-product gradient",
        rel_err(&out.grad_z_q, &fd_q),
    );
}

// --------------------------------------------------------------- encoder --

fn small_config() -> MlpConfig {
    MlpConfig::new(5, 6, 2, 4)
}

#[test]
fn encoder_backward_matches_finite_differences_in_every_mode() {
    // f(x, θ) = Σ R ⊙ z(x; θ), in training mode through each branch (batch
    // statistics) and in evaluation mode (running statistics).
    for (mode, label) in [
        (Mode::Train(Branch::Clean), "train clean"),
        (Mode::Train(Branch::Adv), "train adv"),
        (Mode::Eval, "eval"),
        (Mode::EvalAdv, "eval adv"),
    ] {
        let branches = match mode {
            Mode::Train(b) => vec![b],
            Mode::Eval | Mode::EvalAdv => vec![],
        };
        let (mlp, xs) = kink_free_setup(small_config(), 6, 100, 1e-3, &branches, 1);
        let x = &xs[0];
        if matches!(mode, Mode::Eval | Mode::EvalAdv) {
            let fwd = mlp.forward(x.view(), mode).unwrap();
            assert!(
                relu_margin(&mlp, &fwd) > 1e-3,
                "eval pass too close to a kink"
            );
        }
        let r = randn(&mut Rng::new(5), 6, 4);
        let fwd = mlp.forward(x.view(), mode).unwrap();
        let (grads, back_input) = mlp.backward_with_input(&fwd, r.view()).unwrap();
        let value =
            |m: &Mlp<f64>, x: &Array2<f64>| (m.forward(x.view(), mode).unwrap().z * &r).sum();
        let fd_x = fd_gradient(x, H, |x| value(&mlp, x));
        report_fd(
            &format!("encoder dz->dx, {label}"),
            rel_err(&back_input, &fd_x),
        );
        let fd_theta = fd_param_gradients(&mlp, H, |m| value(m, x));
        // the branch that was not used has no gradient
        let names = mlp.parameter_names();
        for (name, g) in names.iter().zip(&owned(&grads)) {
            let other = match mode.branch() {
                Branch::Adv => ".bn.clean.",
                Branch::Clean => ".bn.adv.",
            };
            if name.contains(other) {
                assert!(g.is_none(), "{label}: {name} should have no gradient");
            }
        }
        let e = compare_param_grads(
            &format!("encoder {label}"),
            &names,
            &owned(&grads),
            &fd_theta,
        );
        report_fd(&format!("encoder dz->dθ (all tensors), {label}"), e);
    }
}

#[test]
fn input_gradient_g_matches_finite_differences_through_dual_bn() {
    let (mlp, xs) = kink_free_setup(small_config(), 6, 200, 1e-3, &[Branch::Adv], 2);
    let (p, other) = (&xs[0], &xs[1]);
    for kind in LossKind::ALL {
        let tau = kind.default_tau();
        // X = P (the authors' Q_start) and X ≠ P
        for (x, label) in [(p, "X = P"), (other, "X != P")] {
            let w = mlp.forward(p.view(), Mode::Train(Branch::Adv)).unwrap().z;
            let z0 = mlp.forward(x.view(), Mode::Train(Branch::Adv)).unwrap().z;
            let right = stack(w.view(), z0.view());
            let g = input_gradient(&mlp, p.view(), x.view(), kind, tau).unwrap();
            let fd = fd_gradient(x, H, |x| adv_scalar(&mlp, &w, x, &right, kind, tau));
            report_fd(
                &format!("g = dL(W, f_adv(X))/dX, {kind}, {label}"),
                rel_err(&g, &fd),
            );
        }
    }
}

// ----------------------------------------------------------------- steps --

/// `L(Z_P, Z_Q)` as a function of the parameters; for UEL with the right
/// factors frozen at `right`.
fn pair_loss(
    kind: LossKind,
    z_p: ArrayView2<f64>,
    z_q: ArrayView2<f64>,
    right: &Array2<f64>,
    tau: f64,
) -> f64 {
    match kind {
        LossKind::Uel => naive_uel_frozen(stack(z_p, z_q).view(), right.view(), tau),
        _ => loss_value(kind, z_p, z_q, tau).unwrap(),
    }
}

#[test]
fn plain_step_parameter_gradients_match_finite_differences() {
    let (mlp, xs) = kink_free_setup(small_config(), 6, 300, 1e-3, &[Branch::Clean], 2);
    let (p, q) = (&xs[0], &xs[1]);
    let names = mlp.parameter_names();
    for kind in LossKind::ALL {
        let tau = kind.default_tau();
        let (_, grads) = plain_gradients(&mut mlp.clone(), p.view(), q.view(), kind, tau).unwrap();
        let clean = |m: &Mlp<f64>, x: &Array2<f64>| {
            m.forward(x.view(), Mode::Train(Branch::Clean)).unwrap().z
        };
        let right = stack(clean(&mlp, p).view(), clean(&mlp, q).view());
        let fd = fd_param_gradients(&mlp, H, |m| {
            pair_loss(kind, clean(m, p).view(), clean(m, q).view(), &right, tau)
        });
        let e = compare_param_grads(&format!("plain step {kind}"), &names, &owned(&grads), &fd);
        report_fd(&format!("plain step dL/dθ, {kind}"), e);
    }
}

#[test]
fn clae_step_parameter_gradients_match_finite_differences() {
    // L_total(θ) = L(f_clean(P), f_clean(Q)) + α L(f_clean(P), f_adv(Q_adv))
    // with Q_adv held at the value the step computed (sign(g) is piecewise
    // constant; the generation pass is not differentiated).
    for kind in LossKind::ALL {
        let mut cfg = ClaeConfig::paper(kind);
        cfg.alpha = 0.7;
        cfg.adv.eps = 0.05;
        // a seed whose P, Q (clean) and Q_adv (adv) passes are all kink-free
        let mut found = None;
        for seed in 400..600 {
            let (mlp, xs) = kink_free_setup(small_config(), 6, seed, 1e-3, &[Branch::Clean], 2);
            let (report, grads) =
                clae_gradients(&mut mlp.clone(), xs[0].view(), xs[1].view(), &cfg).unwrap();
            let q_adv = report.q_adv.clone().unwrap();
            let fwd = mlp.forward(q_adv.view(), Mode::Train(Branch::Adv)).unwrap();
            if relu_margin(&mlp, &fwd) > 1e-3 {
                found = Some((mlp, xs, report, grads, q_adv));
                break;
            }
        }
        let (mlp, xs, report, grads, q_adv) = found.expect("a kink-free seed");
        let (p, q) = (&xs[0], &xs[1]);
        let tau = cfg.tau;
        let fwd = |m: &Mlp<f64>, x: &Array2<f64>, b: Branch| {
            m.forward(x.view(), Mode::Train(b)).unwrap().z
        };
        let (zp0, zq0, za0) = (
            fwd(&mlp, p, Branch::Clean),
            fwd(&mlp, q, Branch::Clean),
            fwd(&mlp, &q_adv, Branch::Adv),
        );
        let right_clean = stack(zp0.view(), zq0.view());
        let right_adv = stack(zp0.view(), za0.view());
        let total = |m: &Mlp<f64>| {
            let zp = fwd(m, p, Branch::Clean);
            pair_loss(
                kind,
                zp.view(),
                fwd(m, q, Branch::Clean).view(),
                &right_clean,
                tau,
            ) + cfg.alpha
                * pair_loss(
                    kind,
                    zp.view(),
                    fwd(m, &q_adv, Branch::Adv).view(),
                    &right_adv,
                    tau,
                )
        };
        if kind != LossKind::Uel {
            // the reported L_total is the scalar being differentiated
            assert!(rel_err_scalar(report.total, total(&mlp)) < 1e-13);
        }
        let fd = fd_param_gradients(&mlp, H, total);
        let e = compare_param_grads(
            &format!("clae step {kind}"),
            &mlp.parameter_names(),
            &owned(&grads),
            &fd,
        );
        report_fd(&format!("clae step dL_total/dθ (Q_adv fixed), {kind}"), e);
        // every adv BN affine parameter got a (non-zero) gradient
        for (name, g) in mlp.parameter_names().iter().zip(&owned(&grads)) {
            if name.contains(".bn.adv.") {
                assert!(max_abs(g.as_ref().unwrap()) > 0.0, "{name}");
            }
        }
    }
}

#[test]
fn the_error_measure_keeps_nan_and_follows_spec_8() {
    // a NaN anywhere must fail every `err < tol` comparison
    let b = ndarray::array![1.0, -2.0, 0.5];
    let a = ndarray::array![1.0, f64::NAN, 0.5];
    assert!(rel_err(&a, &b).is_nan());
    assert!(max_abs(&a).is_nan());
    // max|a − b| / max|b|, and max|a| where b is all zero
    let a = ndarray::array![1.1, -2.0, 0.3];
    assert!((rel_err(&a, &b) - 0.2 / 2.0).abs() < 1e-15);
    let zero = ndarray::Array1::<f64>::zeros(3);
    assert_eq!(rel_err(&zero, &zero), 0.0);
    assert_eq!(rel_err(&b, &zero), 2.0);
}
