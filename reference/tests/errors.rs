//! docs/SPEC.md §7: every bad input gives a typed error — never a panic, never a NaN —
//! from every public entry point that reads it, and leaves the encoder and
//! the optimizer as they were. One test per error case of docs/SPEC.md §7.

mod common;

use clae_reference::adversarial::{
    adversarial_view, adversarial_view_authors, input_gradient, AdvConfig, Attack,
};
use clae_reference::diagnostics::{alignment, effective_rank, singular_values, uniformity};
use clae_reference::encoder::{Branch, Mlp, MlpConfig, MlpGrads, Mode};
use clae_reference::loss::{loss_forward_backward, loss_value, LossKind};
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::rng::Rng;
use clae_reference::state::StateDict;
use clae_reference::step::{clae_gradients, clae_step, plain_gradients, plain_step, ClaeConfig};
use clae_reference::{ClaeError, ErrorKind, Result};
use common::*;
use ndarray::{Array2, ArrayD};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, asserting it neither panics nor succeeds, and that it fails
/// with `kind` and a message that mentions `needle`.
#[track_caller]
fn expect_err<T>(label: &str, kind: ErrorKind, needle: &str, f: impl FnOnce() -> Result<T>) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(_) => panic!("{label}: panicked instead of returning {kind:?}"),
        Ok(Ok(_)) => panic!("{label}: succeeded, expected {kind:?}"),
        Ok(Err(e)) => {
            assert_eq!(e.kind(), kind, "{label}: wrong error {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "{label}: message `{msg}` does not mention `{needle}`"
            );
        }
    }
}

const D_IN: usize = 5;

fn mlp() -> Mlp<f64> {
    distinct_branch_mlp(MlpConfig::new(D_IN, 6, 2, 3), 3)
}

fn views(n: usize) -> (Array2<f64>, Array2<f64>) {
    let mut rng = Rng::new(71);
    (randn(&mut rng, n, D_IN), randn(&mut rng, n, D_IN))
}

fn sgd(m: &Mlp<f64>) -> Optimizer<f64> {
    Optimizer::new(OptimizerConfig::authors_sgd(), m).unwrap()
}

/// Every step-like entry point on `(p, q)` with `cfg`, each expected to fail
/// with `kind`; the encoder and optimizer must be untouched afterwards.
fn all_steps_fail(
    label: &str,
    m: &Mlp<f64>,
    (p, q): (&Array2<f64>, &Array2<f64>),
    cfg: &ClaeConfig,
    kind: ErrorKind,
    needle: &str,
    plain_too: bool,
) {
    for recipe in [
        clae_reference::adversarial::Recipe::Lean,
        clae_reference::adversarial::Recipe::Authors,
    ] {
        let cfg = ClaeConfig { recipe, ..*cfg };
        let mut mm = m.clone();
        let mut opt = sgd(&mm);
        let opt0 = opt.clone();
        expect_err(
            &format!("{label}: clae_step {recipe:?}"),
            kind,
            needle,
            || clae_step(&mut mm, &mut opt, p.view(), q.view(), &cfg),
        );
        assert!(same(&mm, m), "{label}: clae_step changed the encoder");
        assert_eq!(opt, opt0, "{label}: clae_step changed the optimizer");
        expect_err(&format!("{label}: clae_gradients"), kind, needle, || {
            clae_gradients(&mut mm, p.view(), q.view(), &cfg)
        });
        assert!(same(&mm, m));
    }
    let mut mm = m.clone();
    if plain_too {
        let mut opt = sgd(&mm);
        expect_err(&format!("{label}: plain_step"), kind, needle, || {
            plain_step(&mut mm, &mut opt, p.view(), q.view(), cfg.loss, cfg.tau)
        });
        expect_err(&format!("{label}: plain_gradients"), kind, needle, || {
            plain_gradients(&mut mm, p.view(), q.view(), cfg.loss, cfg.tau)
        });
        assert!(same(&mm, m), "{label}: plain_step changed the encoder");
    }
    expect_err(&format!("{label}: adversarial_view"), kind, needle, || {
        adversarial_view(m, p.view(), q.view(), cfg.loss, cfg.tau, &cfg.adv)
    });
    expect_err(
        &format!("{label}: adversarial_view_authors"),
        kind,
        needle,
        || adversarial_view_authors(&mut mm, p.view(), q.view(), cfg.loss, cfg.tau, &cfg.adv),
    );
    assert!(
        same(&mm, m),
        "{label}: adversarial_view_authors changed the encoder"
    );
}

/// Bitwise equality of two encoders, NaN included.
fn same(a: &Mlp<f64>, b: &Mlp<f64>) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn paper(kind: LossKind) -> ClaeConfig {
    ClaeConfig::paper(kind)
}

#[test]
fn shape_mismatch_between_views() {
    let m = mlp();
    let (p, _) = views(6);
    let (q5, _) = views(5);
    for kind in LossKind::ALL {
        all_steps_fail(
            "P 6 rows, Q 5 rows",
            &m,
            (&p, &q5),
            &paper(kind),
            ErrorKind::ShapeMismatch,
            "shape",
            true,
        );
        expect_err("input_gradient", ErrorKind::ShapeMismatch, "shape", || {
            input_gradient(&m, p.view(), q5.view(), kind, 0.1)
        });
        // embeddings
        let z = unit_rows(&mut Rng::new(1), 6, 3);
        for other in [
            unit_rows(&mut Rng::new(2), 5, 3),
            unit_rows(&mut Rng::new(2), 6, 4),
        ] {
            expect_err("loss rows/cols", ErrorKind::ShapeMismatch, "Z_Q", || {
                loss_forward_backward(kind, z.view(), other.view(), 0.1)
            });
            expect_err("loss value", ErrorKind::ShapeMismatch, "Z_Q", || {
                loss_value(kind, other.view(), z.view(), 0.1)
            });
        }
    }
    let z = unit_rows(&mut Rng::new(1), 6, 3);
    expect_err("alignment", ErrorKind::ShapeMismatch, "shape", || {
        alignment(z.view(), z.slice(ndarray::s![..5, ..]), 2.0)
    });
}

#[test]
fn shape_mismatch_with_the_encoder() {
    let m = mlp();
    let wide = randn(&mut Rng::new(72), 6, D_IN + 1);
    for kind in LossKind::ALL {
        all_steps_fail(
            "D_in + 1 columns",
            &m,
            (&wide, &wide),
            &paper(kind),
            ErrorKind::ShapeMismatch,
            "N x 5",
            true,
        );
        expect_err("input_gradient", ErrorKind::ShapeMismatch, "N x 5", || {
            input_gradient(&m, wide.view(), wide.view(), kind, 0.1)
        });
    }
    for mode in [
        Mode::Train(Branch::Clean),
        Mode::Train(Branch::Adv),
        Mode::Eval,
    ] {
        expect_err("forward", ErrorKind::ShapeMismatch, "N x 5", || {
            m.forward(wide.view(), mode)
        });
    }
    expect_err("forward_train", ErrorKind::ShapeMismatch, "N x 5", || {
        m.clone().forward_train(wide.view(), Branch::Clean)
    });
    expect_err("embed", ErrorKind::ShapeMismatch, "N x 5", || {
        m.embed(wide.view())
    });
    // backward: dz of the wrong shape, and a cache from another encoder
    let (p, _) = views(6);
    let fwd = m.forward(p.view(), Mode::Train(Branch::Clean)).unwrap();
    expect_err("backward dz", ErrorKind::ShapeMismatch, "dL/dz", || {
        m.backward_with_input(&fwd, Array2::zeros((6, 4)).view())
    });
    let other = Mlp::<f64>::new(MlpConfig::new(D_IN, 9, 2, 3), 0).unwrap();
    let other_fwd = other.forward(p.view(), Mode::Train(Branch::Clean)).unwrap();
    expect_err(
        "backward with another encoder's cache",
        ErrorKind::InvalidState,
        "cache",
        || m.backward_with_input(&other_fwd, Array2::zeros((6, 3)).view()),
    );
    let mut mm = m.clone();
    expect_err(
        "running stats from another encoder's pass",
        ErrorKind::InvalidState,
        "cache",
        || mm.update_running_stats(&other_fwd),
    );
    assert!(mm == m);
    // an optimizer fed the gradients of another encoder
    let mut opt = sgd(&mm);
    // another d: only the last two tensors differ, so a partial update would show
    let wider = Mlp::<f64>::new(MlpConfig::new(D_IN, 6, 2, 4), 0).unwrap();
    let (_, g_other) =
        plain_gradients(&mut wider.clone(), p.view(), p.view(), LossKind::Plain, 0.1).unwrap();
    expect_err(
        "optimizer with another encoder's gradients",
        ErrorKind::ShapeMismatch,
        "gradient",
        || opt.step(&mut mm, &g_other),
    );
    assert!(mm == m, "a failed optimizer step changed the encoder");
    // steps handed an optimizer made for another encoder fail before
    // anything moves (running statistics included)
    let mut opt_wider = sgd(&wider);
    opt_wider.step(&mut wider.clone(), &g_other).unwrap(); // give it state
    let shallow_opt = sgd(&Mlp::<f64>::new(MlpConfig::new(D_IN, 6, 1, 3), 0).unwrap());
    for mut bad in [opt_wider, shallow_opt] {
        expect_err(
            "plain_step, foreign optimizer",
            ErrorKind::InvalidState,
            "optimizer",
            || plain_step(&mut mm, &mut bad, p.view(), p.view(), LossKind::Plain, 0.1),
        );
        expect_err(
            "clae_step, foreign optimizer",
            ErrorKind::InvalidState,
            "optimizer",
            || clae_step(&mut mm, &mut bad, p.view(), p.view(), &paper(LossKind::Uel)),
        );
        assert!(
            mm == m,
            "a step with a foreign optimizer changed the encoder"
        );
    }
    // an optimizer for a deeper encoder, with that encoder's gradients
    let deeper = Mlp::<f64>::new(MlpConfig::new(D_IN, 6, 3, 3), 0).unwrap();
    let (_, g_deeper) = plain_gradients(
        &mut deeper.clone(),
        p.view(),
        p.view(),
        LossKind::Plain,
        0.1,
    )
    .unwrap();
    let mut opt = sgd(&deeper);
    expect_err(
        "optimizer and gradients of a deeper encoder",
        ErrorKind::InvalidState,
        "optimizer",
        || opt.step(&mut mm, &g_deeper),
    );
    assert!(mm == m);
    let shallow = Mlp::<f64>::new(MlpConfig::new(D_IN, 6, 1, 3), 0).unwrap();
    let mut opt = sgd(&mm);
    expect_err(
        "optimizer for another depth",
        ErrorKind::InvalidState,
        "optimizer",
        || opt.step(&mut mm, &MlpGrads::none(&shallow)),
    );
}

#[test]
fn batch_smaller_than_two() {
    let m = mlp();
    for n in [0, 1] {
        let (p, q) = views(n);
        for kind in LossKind::ALL {
            all_steps_fail(
                &format!("N = {n}"),
                &m,
                (&p, &q),
                &paper(kind),
                ErrorKind::BatchTooSmall,
                "N >= 2",
                true,
            );
            let z = Array2::<f64>::ones((n, 3));
            expect_err("loss", ErrorKind::BatchTooSmall, "N >= 2", || {
                loss_forward_backward(kind, z.view(), z.view(), 0.1)
            });
        }
        for branch in [Branch::Clean, Branch::Adv] {
            expect_err("train forward", ErrorKind::BatchTooSmall, "N >= 2", || {
                m.forward(p.view(), Mode::Train(branch))
            });
        }
        let z = Array2::<f64>::ones((n, 3));
        expect_err("uniformity", ErrorKind::BatchTooSmall, "N >= 2", || {
            uniformity(z.view(), 2.0)
        });
    }
    // evaluation mode embeds any number of images, one included
    let (p1, _) = views(1);
    assert_eq!(m.embed(p1.view()).unwrap().dim(), (1, 3));
}

#[test]
fn zero_dimension() {
    for (config, what) in [
        (MlpConfig::new(5, 6, 2, 0), "embedding dimension d"),
        (MlpConfig::new(0, 6, 2, 3), "D_in"),
        (MlpConfig::new(5, 0, 2, 3), "hidden"),
    ] {
        expect_err("Mlp::new", ErrorKind::ZeroDimension, what, || {
            Mlp::<f64>::new(config, 0)
        });
        expect_err(
            "Mlp::from_state_dict",
            ErrorKind::ZeroDimension,
            what,
            || Mlp::<f64>::from_state_dict(config, &StateDict::default()),
        );
    }
    let z = Array2::<f64>::zeros((4, 0));
    for kind in LossKind::ALL {
        expect_err("loss with d = 0", ErrorKind::ZeroDimension, "Z_P", || {
            loss_forward_backward(kind, z.view(), z.view(), 0.1)
        });
    }
    expect_err(
        "singular values",
        ErrorKind::ZeroDimension,
        "columns",
        || singular_values(z.view()),
    );
    expect_err(
        "effective rank",
        ErrorKind::ZeroDimension,
        "columns",
        || effective_rank(z.view()),
    );
    expect_err("uniformity", ErrorKind::ZeroDimension, "columns", || {
        uniformity(z.view(), 2.0)
    });
    let empty = Array2::<f64>::zeros((0, 3));
    expect_err(
        "alignment of no pairs",
        ErrorKind::ZeroDimension,
        "pairs",
        || alignment(empty.view(), empty.view(), 2.0),
    );
    // PGD with k = 0 steps
    let m = mlp();
    let (p, q) = views(4);
    let mut cfg = paper(LossKind::Plain);
    cfg.adv.attack = Attack::Pgd {
        steps: 0,
        eta: 0.01,
    };
    all_steps_fail(
        "PGD k = 0",
        &m,
        (&p, &q),
        &cfg,
        ErrorKind::ZeroDimension,
        "PGD",
        false,
    );
}

#[test]
fn temperature_not_finite_or_not_positive() {
    let m = mlp();
    let (p, q) = views(4);
    let z = unit_rows(&mut Rng::new(3), 4, 3);
    for tau in [0.0, -0.1, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for kind in LossKind::ALL {
            let cfg = ClaeConfig { tau, ..paper(kind) };
            all_steps_fail(
                &format!("tau = {tau}"),
                &m,
                (&p, &q),
                &cfg,
                ErrorKind::InvalidTemperature,
                "tau",
                true,
            );
            expect_err("loss", ErrorKind::InvalidTemperature, "tau", || {
                loss_forward_backward(kind, z.view(), z.view(), tau)
            });
            expect_err(
                "input_gradient",
                ErrorKind::InvalidTemperature,
                "tau",
                || input_gradient(&m, p.view(), q.view(), kind, tau),
            );
        }
        // f32 too
        let z32 = z.mapv(|v| v as f32);
        expect_err("f32 loss", ErrorKind::InvalidTemperature, "tau", || {
            loss_value(LossKind::Uel, z32.view(), z32.view(), tau)
        });
    }
}

#[test]
fn eps_negative_or_not_finite() {
    let m = mlp();
    let (p, q) = views(4);
    for eps in [-0.01, f64::NAN, f64::INFINITY] {
        for kind in LossKind::ALL {
            let mut cfg = paper(kind);
            cfg.adv.eps = eps;
            all_steps_fail(
                &format!("eps = {eps}"),
                &m,
                (&p, &q),
                &cfg,
                ErrorKind::InvalidHyperParameter,
                "eps",
                false,
            );
        }
    }
    // PGD step size eta as well
    for eta in [-0.01, f64::NAN] {
        let mut cfg = paper(LossKind::Uel);
        cfg.adv.attack = Attack::Pgd { steps: 2, eta };
        all_steps_fail(
            &format!("eta = {eta}"),
            &m,
            (&p, &q),
            &cfg,
            ErrorKind::InvalidHyperParameter,
            "eta",
            false,
        );
    }
}

#[test]
fn alpha_negative_or_not_finite() {
    let m = mlp();
    let (p, q) = views(4);
    for alpha in [-1.0, f64::NAN, f64::INFINITY] {
        for kind in LossKind::ALL {
            let cfg = ClaeConfig {
                alpha,
                ..paper(kind)
            };
            for recipe in [
                clae_reference::adversarial::Recipe::Lean,
                clae_reference::adversarial::Recipe::Authors,
            ] {
                let cfg = ClaeConfig { recipe, ..cfg };
                let mut mm = m.clone();
                let mut opt = sgd(&mm);
                expect_err(
                    "clae_step",
                    ErrorKind::InvalidHyperParameter,
                    "alpha",
                    || clae_step(&mut mm, &mut opt, p.view(), q.view(), &cfg),
                );
                assert!(same(&mm, &m));
            }
        }
    }
}

#[test]
fn optimizer_hyper_parameters_out_of_their_domain() {
    let m = mlp();
    let sgd_cfg = |lr, momentum, weight_decay| OptimizerConfig::Sgd {
        lr,
        momentum,
        weight_decay,
    };
    for (cfg, needle) in [
        (sgd_cfg(-0.1, 0.9, 0.0), "lr"),
        (sgd_cfg(f64::NAN, 0.9, 0.0), "lr"),
        (sgd_cfg(f64::INFINITY, 0.9, 0.0), "lr"),
        (sgd_cfg(0.1, 1.0, 0.0), "momentum"),
        (sgd_cfg(0.1, -0.5, 0.0), "momentum"),
        (sgd_cfg(0.1, 0.9, -1e-4), "weight_decay"),
        (sgd_cfg(0.1, 0.9, f64::NAN), "weight_decay"),
    ] {
        expect_err(
            "Optimizer::new",
            ErrorKind::InvalidHyperParameter,
            needle,
            || Optimizer::new(cfg, &m),
        );
    }
    let adam = |lr, beta1, beta2, eps, weight_decay| OptimizerConfig::Adam {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
    };
    for (cfg, needle) in [
        (adam(-3e-4, 0.9, 0.999, 1e-8, 0.0), "lr"),
        (adam(f64::NAN, 0.9, 0.999, 1e-8, 0.0), "lr"),
        (adam(3e-4, 1.0, 0.999, 1e-8, 0.0), "beta1"),
        (adam(3e-4, 0.9, f64::NAN, 1e-8, 0.0), "beta2"),
        (adam(3e-4, 0.9, 0.999, 0.0, 0.0), "eps"),
        (adam(3e-4, 0.9, 0.999, 1e-8, f64::INFINITY), "weight_decay"),
    ] {
        expect_err(
            "Optimizer::new",
            ErrorKind::InvalidHyperParameter,
            needle,
            || Optimizer::new(cfg, &m),
        );
    }
}

#[test]
fn pixel_range_with_lo_above_hi() {
    let m = mlp();
    let (p, q) = views(4);
    for (lo, hi) in [(1.0, 0.0), (f64::NAN, 1.0), (0.0, f64::INFINITY)] {
        for kind in LossKind::ALL {
            let mut cfg = paper(kind);
            cfg.adv.clamp = Some((lo, hi));
            all_steps_fail(
                &format!("clamp ({lo}, {hi})"),
                &m,
                (&p, &q),
                &cfg,
                ErrorKind::InvalidRange,
                "lo <= hi",
                false,
            );
        }
    }
    // lo == hi is a valid (degenerate) range
    let mut cfg = AdvConfig::fgsm(0.1);
    cfg.clamp = Some((0.5, 0.5));
    let v = adversarial_view(&m, p.view(), q.view(), LossKind::Plain, 0.1, &cfg).unwrap();
    assert!(v.q_adv.iter().all(|&x| x == 0.5));
}

#[test]
fn non_finite_values_in_inputs() {
    let m = mlp();
    let (p, q) = views(4);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut p_bad = p.clone();
        p_bad[[2, 3]] = bad;
        let mut q_bad = q.clone();
        q_bad[[1, 0]] = bad;
        for kind in LossKind::ALL {
            all_steps_fail(
                "non-finite P",
                &m,
                (&p_bad, &q),
                &paper(kind),
                ErrorKind::NonFinite,
                "P",
                true,
            );
            all_steps_fail(
                "non-finite Q",
                &m,
                (&p, &q_bad),
                &paper(kind),
                ErrorKind::NonFinite,
                "Q",
                true,
            );
            expect_err(
                "input_gradient X",
                ErrorKind::NonFinite,
                "non-finite",
                || input_gradient(&m, p.view(), q_bad.view(), kind, 0.1),
            );
            let z = unit_rows(&mut Rng::new(4), 4, 3);
            let mut z_bad = z.clone();
            z_bad[[3, 2]] = bad;
            expect_err("loss Z_P", ErrorKind::NonFinite, "Z_P", || {
                loss_forward_backward(kind, z_bad.view(), z.view(), 0.1)
            });
            expect_err("loss Z_Q", ErrorKind::NonFinite, "Z_Q", || {
                loss_forward_backward(kind, z.view(), z_bad.view(), 0.1)
            });
        }
        for mode in [Mode::Train(Branch::Clean), Mode::Eval] {
            match m.forward(p_bad.view(), mode) {
                Err(ClaeError::NonFinite { index, .. }) => assert_eq!(index, vec![2, 3]),
                other => panic!("forward: {other:?}"),
            }
        }
        // a non-finite dL/dz in a hand-driven backward pass
        let fwd = m.forward(p.view(), Mode::Train(Branch::Clean)).unwrap();
        let mut dz = Array2::<f64>::zeros((4, 3));
        dz[[0, 0]] = bad;
        expect_err("backward dz", ErrorKind::NonFinite, "dL/dz", || {
            m.backward(&fwd, dz.view())
        });
        let mut z = unit_rows(&mut Rng::new(4), 4, 3);
        z[[0, 1]] = bad;
        expect_err("singular values", ErrorKind::NonFinite, "embedding", || {
            singular_values(z.view())
        });
        expect_err("uniformity", ErrorKind::NonFinite, "embedding", || {
            uniformity(z.view(), 2.0)
        });
        expect_err("alignment", ErrorKind::NonFinite, "z_p", || {
            alignment(z.view(), z.view(), 2.0)
        });
    }
}

#[test]
fn non_finite_values_in_parameters_and_buffers() {
    let (p, q) = views(4);
    let sd0 = mlp().state_dict();
    let names = sd0.names();
    for name in [
        "backbone.0.linear.weight",
        "backbone.1.bn.adv.weight",
        "backbone.0.bn.clean.running_var",
        "head.2.bias",
    ] {
        assert!(names.contains(&name));
        for bad in [f64::NAN, f64::INFINITY] {
            let mut sd = mlp().state_dict();
            let entry = sd.entries.iter_mut().find(|e| e.name == name).unwrap();
            // build the broken encoder by hand: from_state_dict itself refuses it
            let mut broken = mlp();
            entry.value.as_slice_mut().unwrap()[0] = bad;
            expect_err("from_state_dict", ErrorKind::NonFinite, name, || {
                Mlp::<f64>::from_state_dict(*broken.config(), &sd)
            });
            set_first(&mut broken, name, bad);
            for kind in LossKind::ALL {
                all_steps_fail(
                    &format!("{name} = {bad}"),
                    &broken,
                    (&p, &q),
                    &paper(kind),
                    ErrorKind::NonFinite,
                    name,
                    true,
                );
                expect_err("input_gradient", ErrorKind::NonFinite, name, || {
                    input_gradient(&broken, p.view(), q.view(), kind, 0.1)
                });
            }
            expect_err("forward", ErrorKind::NonFinite, name, || {
                broken.forward(p.view(), Mode::Eval)
            });
            expect_err("validate", ErrorKind::NonFinite, name, || broken.validate());
            // an optimizer step on a broken encoder, with finite gradients
            let good = mlp();
            let (_, grads) =
                plain_gradients(&mut good.clone(), p.view(), q.view(), LossKind::Plain, 0.1)
                    .unwrap();
            for cfg in [
                OptimizerConfig::authors_sgd(),
                OptimizerConfig::authors_adam(),
            ] {
                let mut opt = Optimizer::new(cfg, &broken).unwrap();
                let before = broken.clone();
                expect_err(
                    "optimizer step on a non-finite parameter",
                    ErrorKind::NonFinite,
                    name,
                    || opt.step(&mut broken, &grads),
                );
                assert_eq!(format!("{before:?}"), format!("{broken:?}"));
            }
        }
    }
    // a non-finite gradient handed to the optimizer
    let mut m = mlp();
    let (_, mut grads) =
        plain_gradients(&mut m.clone(), p.view(), q.view(), LossKind::Plain, 0.1).unwrap();
    grads.backbone[0].bn.clean.beta.as_mut().unwrap()[0] = f64::NAN;
    let mut opt = sgd(&m);
    let before = m.clone();
    expect_err(
        "optimizer step with a NaN gradient",
        ErrorKind::NonFinite,
        "gradient",
        || opt.step(&mut m, &grads),
    );
    assert!(m == before);
}

/// Writes `value` into the first entry of the tensor called `name`.
fn set_first(m: &mut Mlp<f64>, name: &str, value: f64) {
    let l = |s: &str| s.split('.').nth(1).unwrap().parse::<usize>().unwrap();
    match name {
        n if n.ends_with("linear.weight") => m.backbone[l(n)].linear.weight[[0, 0]] = value,
        n if n.ends_with("bn.adv.weight") => m.backbone[l(n)].bn.adv.gamma[0] = value,
        n if n.ends_with("bn.clean.running_var") => {
            m.backbone[l(n)].bn.clean.running_var[0] = value
        }
        "head.2.bias" => m.head[1].bias[0] = value,
        _ => unreachable!("{name}"),
    }
}

#[test]
fn state_dict_missing_extra_or_misshapen_tensors() {
    let m = mlp();
    let config = *m.config();
    // missing
    let mut sd = m.state_dict();
    sd.entries
        .retain(|e| e.name != "backbone.1.bn.adv.running_mean");
    expect_err(
        "missing",
        ErrorKind::InvalidState,
        "backbone.1.bn.adv.running_mean",
        || Mlp::<f64>::from_state_dict(config, &sd),
    );
    // extra
    let mut sd = m.state_dict();
    let mut extra = sd.entries[0].clone();
    extra.name = "head.4.weight".into();
    sd.entries.push(extra);
    expect_err("extra", ErrorKind::InvalidState, "head.4.weight", || {
        Mlp::<f64>::from_state_dict(config, &sd)
    });
    // duplicated
    let mut sd = m.state_dict();
    let dup = sd.entries[2].clone();
    sd.entries.push(dup);
    expect_err("duplicate", ErrorKind::InvalidState, "unexpected", || {
        Mlp::<f64>::from_state_dict(config, &sd)
    });
    // wrong shape
    let mut sd = m.state_dict();
    sd.entries[0].value = ArrayD::zeros(vec![6, D_IN + 1]);
    expect_err(
        "shape",
        ErrorKind::ShapeMismatch,
        "backbone.0.linear.weight",
        || Mlp::<f64>::from_state_dict(config, &sd),
    );
    let mut sd = m.state_dict();
    sd.entries[1].value = ArrayD::zeros(vec![1, 6]);
    expect_err(
        "rank",
        ErrorKind::ShapeMismatch,
        "backbone.0.linear.bias",
        || Mlp::<f64>::from_state_dict(config, &sd),
    );
    // a state dict of another architecture
    expect_err("deeper config", ErrorKind::InvalidState, "missing", || {
        Mlp::<f64>::from_state_dict(MlpConfig::new(D_IN, 6, 3, 3), &m.state_dict())
    });
    expect_err(
        "shallower config",
        ErrorKind::InvalidState,
        "unexpected",
        || Mlp::<f64>::from_state_dict(MlpConfig::new(D_IN, 6, 1, 3), &m.state_dict()),
    );
    // a bad config inside an encoder is caught before any arithmetic
    let mut bad_cfg = config;
    bad_cfg.bn_momentum_adv = 1.5;
    expect_err(
        "bn momentum",
        ErrorKind::InvalidHyperParameter,
        "bn_momentum_adv",
        || Mlp::<f64>::new(bad_cfg, 0),
    );
    bad_cfg = config;
    bad_cfg.bn_eps = 0.0;
    expect_err("bn eps", ErrorKind::InvalidHyperParameter, "bn_eps", || {
        Mlp::<f64>::new(bad_cfg, 0)
    });
    // an encoder whose public fields were edited into an inconsistent shape
    let mut edited = m.clone();
    edited.backbone.pop();
    let (p, q) = views(4);
    expect_err(
        "edited encoder",
        ErrorKind::InvalidState,
        "backbone",
        || edited.validate(),
    );
    all_steps_fail(
        "edited encoder",
        &edited,
        (&p, &q),
        &paper(LossKind::Plain),
        ErrorKind::InvalidState,
        "backbone",
        true,
    );
    let mut edited = m.clone();
    edited.head[1].bias = ndarray::Array1::zeros(7);
    expect_err(
        "edited head",
        ErrorKind::ShapeMismatch,
        "head.2.bias",
        || edited.forward(p.view(), Mode::Eval),
    );
}

#[test]
fn loss_kind_parsing() {
    assert_eq!("SimCLR".parse::<LossKind>().unwrap(), LossKind::SimClr);
    expect_err(
        "parse",
        ErrorKind::InvalidHyperParameter,
        "plain, simclr, uel",
        || "moco".parse::<LossKind>(),
    );
}
