//! docs/SPEC.md §7: every bad input gives a typed error — never a panic, never a NaN —
//! and the *same* error as the reference for the same input (both backends
//! validate with the reference's validators, in the reference's order).

mod common;

use clae_accelerated::device::Precision;
use clae_accelerated::encoder::{Encoder, Gradients};
use clae_accelerated::mlp::Mlp;
use clae_accelerated::resnet::{ResNet18, ResNetConfig};
use clae_accelerated::{
    adversarial as acc_adv, loss as acc_loss, optim as acc_optim, step as acc_step,
};
use clae_reference::adversarial::{self as ref_adv, AdvConfig, Attack, QStart, Recipe};
use clae_reference::encoder::{Mlp as RefMlp, MlpConfig};
use clae_reference::loss::{self as ref_loss, LossKind};
use clae_reference::optim::{Optimizer as RefOptimizer, OptimizerConfig};
use clae_reference::state::StateDict;
use clae_reference::step::{self as ref_step, ClaeConfig};
use clae_reference::{ClaeError, ErrorKind};
use common::*;
use ndarray::Array2;
use tch::Device;

const D_IN: usize = 6;

fn config() -> MlpConfig {
    MlpConfig::new(D_IN, 8, 2, 3)
}

fn pair() -> (RefMlp<f64>, Mlp) {
    let r = RefMlp::<f64>::new(config(), 1).unwrap();
    let a = Mlp::from_reference(&r, Device::Cpu, Precision::F64).unwrap();
    (r, a)
}

/// Debug text of an outcome: the error (with its payload) or "ok".
fn show<T>(r: &Result<T, ClaeError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

fn show_acc<T>(r: &clae_accelerated::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.spec() {
            Some(s) => format!("{s:?}"),
            None => panic!("not a docs/SPEC.md §7 error: {e}"),
        },
    }
}

fn kind_of(s: &str) -> String {
    s.split([' ', '{']).next().unwrap_or("").to_string()
}

/// Runs every entry point that reads views and a config on both backends;
/// asserts the outcomes are identical (same error, same payload) and returns
/// them by entry point.
fn outcomes(p: &Array2<f64>, q: &Array2<f64>, cfg: &ClaeConfig) -> Vec<(&'static str, String)> {
    let (mut r, mut a) = pair();
    let (tp, tq) = (t64(p), t64(q));
    let (kind, tau) = (cfg.loss, cfg.tau);
    let mut out = Vec::new();
    let mut add = |name: &'static str, want: String, got: String| {
        assert_eq!(got, want, "{name}: accelerated vs reference");
        out.push((name, got));
    };
    add(
        "input_gradient",
        show(&ref_adv::input_gradient(&r, p.view(), q.view(), kind, tau)),
        show_acc(&acc_adv::input_gradient(&a, &tp, &tq, kind, tau)),
    );
    add(
        "adversarial_view",
        show(&ref_adv::adversarial_view(
            &r,
            p.view(),
            q.view(),
            kind,
            tau,
            &cfg.adv,
        )),
        show_acc(&acc_adv::adversarial_view(
            &a, &tp, &tq, kind, tau, &cfg.adv,
        )),
    );
    add(
        "adversarial_view_authors",
        show(&ref_adv::adversarial_view_authors(
            &mut r,
            p.view(),
            q.view(),
            kind,
            tau,
            &cfg.adv,
        )),
        show_acc(&acc_adv::adversarial_view_authors(
            &mut a, &tp, &tq, kind, tau, &cfg.adv,
        )),
    );
    add(
        "plain_gradients",
        show(&ref_step::plain_gradients(
            &mut r,
            p.view(),
            q.view(),
            kind,
            tau,
        )),
        show_acc(&acc_step::plain_gradients(&mut a, &tp, &tq, kind, tau)),
    );
    for recipe in [Recipe::Lean, Recipe::Authors] {
        let cfg = ClaeConfig { recipe, ..*cfg };
        add(
            "clae_gradients",
            show(&ref_step::clae_gradients(&mut r, p.view(), q.view(), &cfg)),
            show_acc(&acc_step::clae_gradients(&mut a, &tp, &tq, &cfg)),
        );
    }
    out
}

fn expect(outs: &[(&str, String)], entry_points: &[&str], kind: ErrorKind) {
    let want = format!("{kind:?}");
    for (name, got) in outs {
        if entry_points.contains(name) {
            assert_eq!(kind_of(got), want, "{name}: {got}");
        } else {
            assert_eq!(got, "ok", "{name} should not read this input: {got}");
        }
    }
}

const ALL: &[&str] = &[
    "input_gradient",
    "adversarial_view",
    "adversarial_view_authors",
    "plain_gradients",
    "clae_gradients",
];
const ADV: &[&str] = &[
    "adversarial_view",
    "adversarial_view_authors",
    "clae_gradients",
];

fn good() -> (Array2<f64>, Array2<f64>, ClaeConfig) {
    let p = normal2(4, D_IN, 1);
    (p.clone(), &p * 0.9, ClaeConfig::paper(LossKind::Plain))
}

#[test]
fn valid_input_is_accepted_everywhere() {
    let (p, q, cfg) = good();
    expect(&outcomes(&p, &q, &cfg), &[], ErrorKind::ShapeMismatch);
}

#[test]
fn shape_mismatch_between_views_and_with_the_encoder() {
    let (p, _, cfg) = good();
    expect(
        &outcomes(&p, &normal2(5, D_IN, 2), &cfg),
        ALL,
        ErrorKind::ShapeMismatch,
    );
    expect(
        &outcomes(&p, &normal2(4, D_IN + 1, 2), &cfg),
        ALL,
        ErrorKind::ShapeMismatch,
    );
    let wrong = normal2(4, D_IN - 1, 3);
    expect(
        &outcomes(&wrong, &wrong, &cfg),
        ALL,
        ErrorKind::ShapeMismatch,
    );
    // tensors of the wrong rank (the reference cannot even be called so)
    let (_, a) = pair();
    let flat = tch::Tensor::zeros([D_IN as i64], (tch::Kind::Double, Device::Cpu));
    let e = acc_adv::input_gradient(&a, &flat, &flat, LossKind::Plain, 0.1).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::ShapeMismatch));
    // a ResNet fed the wrong image size
    let net = ResNet18::new(
        ResNetConfig::cifar().with_width(1),
        0,
        Device::Cpu,
        Precision::F32,
    )
    .unwrap();
    let x = tch::Tensor::zeros([2, 3, 16, 16], (tch::Kind::Float, Device::Cpu));
    let e = acc_adv::input_gradient(&net, &x, &x, LossKind::Plain, 0.1).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::ShapeMismatch), "{e}");
}

#[test]
fn batch_too_small() {
    let (_, _, cfg) = good();
    let one = normal2(1, D_IN, 4);
    expect(&outcomes(&one, &one, &cfg), ALL, ErrorKind::BatchTooSmall);
}

#[test]
fn bad_temperature() {
    let (p, q, cfg) = good();
    for tau in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        let outs = outcomes(&p, &q, &ClaeConfig { tau, ..cfg });
        expect(&outs, ALL, ErrorKind::InvalidTemperature);
    }
}

#[test]
fn bad_eps_alpha_and_pgd() {
    let (p, q, cfg) = good();
    for eps in [-0.01, f64::NAN, f64::INFINITY] {
        let c = ClaeConfig {
            adv: AdvConfig { eps, ..cfg.adv },
            ..cfg
        };
        expect(&outcomes(&p, &q, &c), ADV, ErrorKind::InvalidHyperParameter);
    }
    for alpha in [-1.0, f64::NAN, f64::INFINITY] {
        let c = ClaeConfig { alpha, ..cfg };
        expect(
            &outcomes(&p, &q, &c),
            &["clae_gradients"],
            ErrorKind::InvalidHyperParameter,
        );
    }
    let pgd = |steps, eta| ClaeConfig {
        adv: AdvConfig {
            attack: Attack::Pgd { steps, eta },
            ..cfg.adv
        },
        ..cfg
    };
    expect(
        &outcomes(&p, &q, &pgd(0, 0.01)),
        ADV,
        ErrorKind::ZeroDimension,
    );
    expect(
        &outcomes(&p, &q, &pgd(2, -0.01)),
        ADV,
        ErrorKind::InvalidHyperParameter,
    );
}

#[test]
fn empty_pixel_range() {
    let (p, q, cfg) = good();
    for clamp in [(1.0, 0.0), (f64::NAN, 1.0), (0.0, f64::INFINITY)] {
        let c = ClaeConfig {
            adv: AdvConfig {
                clamp: Some(clamp),
                start: QStart::Q,
                ..cfg.adv
            },
            ..cfg
        };
        expect(&outcomes(&p, &q, &c), ADV, ErrorKind::InvalidRange);
    }
}

#[test]
fn non_finite_views() {
    let (p, q, cfg) = good();
    let mut bad = p.clone();
    bad[[2, 3]] = f64::NAN;
    let outs = outcomes(&bad, &q, &cfg);
    expect(&outs, ALL, ErrorKind::NonFinite);
    assert!(
        outs[0].1.contains("what: \"P\"") && outs[0].1.contains("index: [2, 3]"),
        "{}",
        outs[0].1
    );
    let mut bad = q.clone();
    bad[[0, 5]] = f64::NEG_INFINITY;
    expect(&outcomes(&p, &bad, &cfg), ALL, ErrorKind::NonFinite);
}

#[test]
fn non_finite_parameter() {
    let (p, q, cfg) = good();
    let (mut r, mut a) = pair();
    r.head[1].weight[[1, 2]] = f64::NAN;
    let entry = a
        .tensors()
        .entries()
        .iter()
        .find(|e| e.name == "head.2.weight")
        .unwrap();
    let t = entry.tensor.shallow_clone();
    tch::no_grad(|| {
        let _ = t.get(1).get(2).fill_(f64::NAN);
    });
    let want = show(&ref_step::clae_gradients(&mut r, p.view(), q.view(), &cfg));
    let got = show_acc(&acc_step::clae_gradients(&mut a, &t64(&p), &t64(&q), &cfg));
    assert_eq!(got, want);
    assert!(
        got.starts_with("NonFinite") && got.contains("head.2.weight") && got.contains("[1, 2]"),
        "{got}"
    );
    assert_eq!(
        a.forward(&t64(&p), clae_reference::encoder::Mode::Eval)
            .unwrap_err()
            .kind(),
        Some(ErrorKind::NonFinite)
    );
}

#[test]
fn loss_inputs() {
    let z = unit_rows(&normal2(4, 3, 5));
    let cases: Vec<(Array2<f64>, Array2<f64>, f64, ErrorKind)> = vec![
        (
            z.clone(),
            unit_rows(&normal2(4, 2, 6)),
            0.1,
            ErrorKind::ShapeMismatch,
        ),
        (
            z.clone(),
            unit_rows(&normal2(5, 3, 6)),
            0.1,
            ErrorKind::ShapeMismatch,
        ),
        (
            normal2(1, 3, 7),
            normal2(1, 3, 8),
            0.1,
            ErrorKind::BatchTooSmall,
        ),
        (
            Array2::zeros((4, 0)),
            Array2::zeros((4, 0)),
            0.1,
            ErrorKind::ZeroDimension,
        ),
        (z.clone(), z.clone(), 0.0, ErrorKind::InvalidTemperature),
        (
            z.clone(),
            z.clone(),
            f64::NAN,
            ErrorKind::InvalidTemperature,
        ),
        (
            z.clone(),
            z.mapv(|v| if v > 0.5 { f64::NAN } else { v }),
            0.1,
            ErrorKind::NonFinite,
        ),
    ];
    for kind in LossKind::ALL {
        for (z_p, z_q, tau, want) in &cases {
            let r = show(&ref_loss::loss_forward_backward(
                kind,
                z_p.view(),
                z_q.view(),
                *tau,
            ));
            let a = show_acc(&acc_loss::loss_forward_backward(
                kind,
                &t64(z_p),
                &t64(z_q),
                *tau,
            ));
            assert_eq!(a, r, "{kind}");
            assert_eq!(kind_of(&a), format!("{want:?}"), "{kind}: {a}");
            let v = show_acc(&acc_loss::loss(kind, &t64(z_p), &t64(z_q), *tau));
            assert_eq!(v, a);
        }
    }
}

#[test]
fn bad_encoder_configs() {
    let dev = Device::Cpu;
    for c in [
        MlpConfig::new(6, 8, 1, 0),
        MlpConfig::new(0, 8, 1, 3),
        MlpConfig::new(6, 0, 1, 3),
    ] {
        let r = show(&RefMlp::<f64>::new(c, 0));
        let a = show_acc(&Mlp::new(c, 0, dev, Precision::F64));
        assert_eq!(a, r);
        assert_eq!(kind_of(&a), "ZeroDimension");
    }
    let c = MlpConfig {
        bn_momentum_adv: 2.0,
        ..config()
    };
    assert_eq!(
        show_acc(&Mlp::new(c, 0, dev, Precision::F64)),
        show(&RefMlp::<f64>::new(c, 0))
    );
    let rc = ResNetConfig::cifar();
    for bad in [
        ResNetConfig { d: 0, ..rc },
        ResNetConfig { width: 0, ..rc },
        ResNetConfig {
            image_size: 0,
            ..rc
        },
    ] {
        let e = ResNet18::new(bad, 0, dev, Precision::F32).unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::ZeroDimension));
    }
    let e = ResNet18::new(
        ResNetConfig {
            bn_eps: 0.0,
            ..rc.with_width(1)
        },
        0,
        dev,
        Precision::F32,
    )
    .unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::InvalidHyperParameter));
}

#[test]
fn bad_optimizer_hyper_parameters() {
    let (r, a) = pair();
    let sgd = |lr, momentum| OptimizerConfig::Sgd {
        lr,
        momentum,
        weight_decay: 0.0,
    };
    let adam = |beta1, eps| OptimizerConfig::Adam {
        lr: 1e-3,
        beta1,
        beta2: 0.999,
        eps,
        weight_decay: 0.0,
    };
    for c in [
        sgd(-0.1, 0.9),
        sgd(f64::INFINITY, 0.9),
        sgd(f64::NAN, 0.9),
        sgd(0.1, 1.0),
        adam(1.5, 1e-8),
        adam(0.9, 0.0),
    ] {
        let want = show(&RefOptimizer::new(c, &r));
        assert_eq!(kind_of(&want), "InvalidHyperParameter");
        assert_eq!(show_acc(&acc_optim::Optimizer::new(c, &a)), want);
        assert_eq!(show_acc(&acc_optim::Optimizer::libtorch(c, &a)), want);
    }
}

#[test]
fn bad_gradients_for_the_optimizer() {
    let (_, mut a) = pair();
    let (p, q, _) = good();
    let mut opt = acc_optim::Optimizer::new(OptimizerConfig::authors_sgd(), &a).unwrap();
    let (_, mut grads) =
        acc_step::plain_gradients(&mut a, &t64(&p), &t64(&q), LossKind::Plain, 0.1).unwrap();
    let g = grads.tensors[0].as_ref().unwrap().shallow_clone();
    let _ = tch::no_grad(|| g.get(0).get(0).fill_(f64::INFINITY));
    assert_eq!(
        opt.step(&mut a, &grads).unwrap_err().kind(),
        Some(ErrorKind::NonFinite)
    );
    grads.tensors.pop();
    grads.names.pop();
    assert_eq!(
        opt.step(&mut a, &grads).unwrap_err().kind(),
        Some(ErrorKind::InvalidState)
    );
    let empty = Gradients {
        names: a.parameter_names(),
        tensors: a.parameter_names().iter().map(|_| None).collect(),
    };
    assert!(
        opt.step(&mut a, &empty).is_ok(),
        "no gradient at all is a no-op"
    );
}

#[test]
fn bad_state_dicts() {
    let (r, _) = pair();
    let good = r.state_dict();
    let mut missing = good.clone();
    missing.entries.remove(3);
    let mut extra = good.clone();
    extra.entries.push(good.entries[0].clone());
    extra.entries.last_mut().unwrap().name = "head.9.weight".into();
    let mut shape = good.clone();
    shape.entries[0].value = ndarray::ArrayD::zeros(vec![2, 2]);
    let mut nan = good.clone();
    nan.entries[5].value[[0]] = f64::NAN;
    for (sd, kind) in [
        (missing, "InvalidState"),
        (extra, "InvalidState"),
        (shape, "ShapeMismatch"),
        (nan, "NonFinite"),
    ] {
        let sd: StateDict<f64> = sd;
        let want = show(&RefMlp::from_state_dict(config(), &sd));
        let got = show_acc(&Mlp::from_state_dict(
            config(),
            &sd,
            Device::Cpu,
            Precision::F64,
        ));
        assert_eq!(got, want);
        assert_eq!(kind_of(&got), kind);
    }
}

#[test]
fn an_unusable_device_is_an_error_not_a_panic() {
    let e = Mlp::new(config(), 0, Device::Cuda(999), Precision::F32).unwrap_err();
    assert_eq!(e.kind(), None);
    assert!(matches!(e, clae_accelerated::Error::Device(_)), "{e}");
}

#[test]
fn optimizer_step_errors_match_the_reference() {
    let (p, q, _) = good();
    // gradient 1 non-finite and gradient 4 misshapen: the first in order wins
    for (nan_at, bad_shape_at) in [
        (Some(1), None),
        (None, Some(4)),
        (Some(1), Some(4)),
        (Some(6), Some(4)),
    ] {
        let (mut r, mut a) = pair();
        let (_, mut rg) =
            ref_step::plain_gradients(&mut r, p.view(), q.view(), LossKind::Plain, 0.1).unwrap();
        let (_, mut ag) =
            acc_step::plain_gradients(&mut a, &t64(&p), &t64(&q), LossKind::Plain, 0.1).unwrap();
        if let Some(i) = nan_at {
            let mut tensors: Vec<_> = rg
                .tensors()
                .iter()
                .map(|t| t.as_ref().map(|t| t.to_owned()))
                .collect();
            tensors[i]
                .as_mut()
                .unwrap()
                .iter_mut()
                .for_each(|v| *v = f64::NAN);
            rg = clae_reference::encoder::MlpGrads::from_tensors(&r, tensors).unwrap();
            let mut g = ag.tensors[i].as_ref().unwrap().shallow_clone();
            let _ = tch::no_grad(|| g.fill_(f64::NAN));
        }
        if let Some(i) = bad_shape_at {
            assert_eq!(i, 4, "tensor 4 is backbone.0.bn.adv.weight");
            rg.backbone[0].bn.adv.gamma = Some(ndarray::Array1::zeros(1));
            ag.tensors[i] = Some(tch::Tensor::zeros([1], (tch::Kind::Double, Device::Cpu)));
        }
        for c in [
            OptimizerConfig::authors_sgd(),
            OptimizerConfig::authors_adam(),
        ] {
            let mut ro = RefOptimizer::new(c, &r).unwrap();
            let mut ao = acc_optim::Optimizer::new(c, &a).unwrap();
            let want = show(&ro.step(&mut r, &rg));
            assert_ne!(want, "ok");
            assert_eq!(
                show_acc(&ao.step(&mut a, &ag)),
                want,
                "{nan_at:?} {bad_shape_at:?}"
            );
        }
    }
}
