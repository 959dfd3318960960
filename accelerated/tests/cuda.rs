//! CUDA checks. Each test runs when a CUDA device is present and prints
//! "CUDA not available: skipped" otherwise (to stderr, uncaptured, so the
//! skip is visible in an ordinary `cargo test` run — never a silent pass).
//!
//! TF32 is switched off first (docs/SPEC.md §8: CUDA vs f64 reference within 1e-4).

mod common;

use clae_accelerated::adversarial::Recipe;
use clae_accelerated::adversarial::{adversarial_view, input_gradient};
use clae_accelerated::device::{
    cuda_available, set_tf32_allowed, tf32_allowed, with_bf16_autocast, Precision,
};
use clae_accelerated::encoder::{Branch, Encoder, Mode};
use clae_accelerated::loss as acc_loss;
use clae_accelerated::mlp::Mlp;
use clae_accelerated::optim::{Optimizer, OptimizerConfig};
use clae_accelerated::resnet::{ResNet18, ResNetConfig};
use clae_accelerated::step::{clae_gradients, clae_step, ClaeConfig};
use clae_reference::adversarial::{self as ref_adv, AdvConfig};
use clae_reference::encoder::{Mlp as RefMlp, MlpConfig};
use clae_reference::loss::{self as ref_loss, LossKind};
use clae_reference::optim::Optimizer as RefOptimizer;
use clae_reference::step::{self as ref_step};
use common::*;
use std::io::Write;
use tch::{Device, Tensor};

fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The CUDA device with TF32 off, or `None` after printing the skip line.
fn gpu(test: &str) -> Option<Device> {
    if !cuda_available() {
        notice(&format!("CUDA not available: skipped ({test})"));
        return None;
    }
    set_tf32_allowed(false).unwrap();
    assert!(!tf32_allowed().unwrap());
    Some(Device::Cuda(0))
}

fn on(t: &Tensor, device: Device, precision: Precision) -> Tensor {
    t.to_device(device).to_kind(precision.kind())
}

#[test]
fn cuda_mlp_matches_the_f64_reference() {
    let Some(dev) = gpu("cuda_mlp_matches_the_f64_reference") else {
        return;
    };
    let config = MlpConfig::new(16, 32, 2, 8);
    for (precision, tol) in [(Precision::F32, 1e-4), (Precision::F64, 1e-8)] {
        for kind in LossKind::ALL {
            let tau = kind.default_tau();
            let reference = RefMlp::<f64>::new(config, 3).unwrap();
            let mlp = Mlp::from_reference(&reference, dev, precision).unwrap();
            let p = normal2(12, 16, 4);
            let q = &p * 0.8 + normal2(12, 16, 5) * 0.3;
            let (tp, tq) = (on(&t64(&p), dev, precision), on(&t64(&q), dev, precision));
            // embeddings and the loss with its gradients
            let z_ref = reference
                .forward(p.view(), Mode::Train(Branch::Clean))
                .unwrap()
                .z;
            let z = mlp.forward(&tp, Mode::Train(Branch::Clean)).unwrap();
            let e_z = rel_err(&arr(&z), &z_ref);
            let z_q_ref = reference
                .forward(q.view(), Mode::Train(Branch::Clean))
                .unwrap()
                .z;
            let want =
                ref_loss::loss_forward_backward(kind, z_ref.view(), z_q_ref.view(), tau).unwrap();
            let got = acc_loss::loss_forward_backward(
                kind,
                &on(&t64(&z_ref), dev, precision),
                &on(&t64(&z_q_ref), dev, precision),
                tau,
            )
            .unwrap();
            let e_l = ((got.value - want.value) / want.value).abs();
            let e_g = rel_err(&arr(&got.grad_z_p), &want.grad_z_p)
                .max(rel_err(&arr(&got.grad_z_q), &want.grad_z_q));
            // input gradient and the view (sign rule, docs/SPEC.md §8)
            let g_ref = ref_adv::input_gradient(&reference, p.view(), p.view(), kind, tau).unwrap();
            let g = input_gradient(&mlp, &tp, &tp, kind, tau).unwrap();
            let e_in = rel_err(&arr(&g), &g_ref);
            let cfg = AdvConfig::fgsm(kind.default_eps());
            let v_ref =
                ref_adv::adversarial_view(&reference, p.view(), q.view(), kind, tau, &cfg).unwrap();
            let v = adversarial_view(&mlp, &tp, &tq, kind, tau, &cfg).unwrap();
            let scale = g_ref.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let thresh = if precision == Precision::F32 {
                1e-3
            } else {
                1e-6
            } * scale;
            let (mut excused, mut worst) = (0usize, 0.0f64);
            for ((a, b), gr) in arr(&v.q_adv)
                .iter()
                .zip(v_ref.q_adv.iter())
                .zip(g_ref.iter())
            {
                if gr.abs() > thresh {
                    worst = worst.max((a - b).abs());
                } else {
                    excused += 1;
                }
            }
            // one CLAE step with SGD: parameters after it
            let mut r2 = reference.clone();
            let mut m2 = Mlp::from_reference(&reference, dev, precision).unwrap();
            let oc = OptimizerConfig::authors_sgd();
            let mut ro = RefOptimizer::new(oc, &r2).unwrap();
            let mut mo = Optimizer::new(oc, &m2).unwrap();
            let cc = ClaeConfig::paper(kind);
            ref_step::clae_step(&mut r2, &mut ro, p.view(), q.view(), &cc).unwrap();
            clae_step(&mut m2, &mut mo, &tp, &tq, &cc).unwrap();
            let (a, b) = (m2.state_dict::<f64>().unwrap(), r2.state_dict());
            let e_step = a
                .entries
                .iter()
                .zip(&b.entries)
                .map(|(x, y)| rel_err(&x.value, &y.value))
                .fold(0.0, f64::max);
            notice(&format!(
                "CUDA {} {kind}: z {e_z:.1e}, loss {e_l:.1e}, dL/dZ {e_g:.1e}, g {e_in:.1e}, Q_adv {worst:.1e} ({excused} excused), step {e_step:.1e}",
                precision.name()
            ));
            for (what, e) in [
                ("z", e_z),
                ("loss", e_l),
                ("dL/dZ", e_g),
                ("g", e_in),
                ("step", e_step),
            ] {
                assert!(e < tol, "{} {kind} {what}: {e:e}", precision.name());
            }
            // where the sign is clear, Q_adv agrees up to rounding of the f32 values
            let q_scale = v_ref.q_adv.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let round = if precision == Precision::F32 {
                4.0 * f32::EPSILON as f64
            } else {
                1e-15
            };
            assert!(
                worst <= round * q_scale,
                "Q_adv differs where the sign is clear: {worst:e}"
            );
            assert!(excused as f64 <= 0.01 * g_ref.len() as f64);
        }
    }
}

#[test]
fn cuda_resnet_matches_cpu_and_recipes_agree() {
    let Some(dev) = gpu("cuda_resnet_matches_cpu_and_recipes_agree") else {
        return;
    };
    let config = ResNetConfig::cifar().with_width(8);
    let p = t64(&normal_d(&[8, 3, 32, 32], 9));
    let q = t64(&(normal_d(&[8, 3, 32, 32], 10) * 0.3)) + &p;
    for kind in LossKind::ALL {
        let cfg = ClaeConfig::paper(kind);
        let mut cpu = ResNet18::new(config, 1, Device::Cpu, Precision::F64).unwrap();
        let (r_cpu, _) = clae_gradients(&mut cpu, &p, &q, &cfg).unwrap();
        let mut totals = Vec::new();
        for recipe in [Recipe::Lean, Recipe::Authors] {
            let mut net = ResNet18::new(config, 1, dev, Precision::F32).unwrap();
            let (r, _) = clae_gradients(
                &mut net,
                &on(&p, dev, Precision::F32),
                &on(&q, dev, Precision::F32),
                &ClaeConfig { recipe, ..cfg },
            )
            .unwrap();
            totals.push(r.total);
        }
        let e_cpu = ((totals[0] - r_cpu.total) / r_cpu.total).abs();
        let e_rec = ((totals[0] - totals[1]) / totals[0]).abs();
        notice(&format!("CUDA ResNet-18 width 8 f32 {kind}: L_total vs CPU f64 {e_cpu:.1e}, lean vs authors {e_rec:.1e}"));
        assert!(e_cpu < 1e-4, "{kind}: {e_cpu:e}");
        assert!(e_rec < 1e-5, "{kind}: {e_rec:e}");
    }
}

#[test]
fn cuda_full_width_resnet18_steps_and_bf16_autocast() {
    let Some(dev) = gpu("cuda_full_width_resnet18_steps_and_bf16_autocast") else {
        return;
    };
    let config = ResNetConfig::cifar();
    let p = Tensor::randn([64, 3, 32, 32], (tch::Kind::Float, dev));
    let q = &p * 0.9 + Tensor::randn([64, 3, 32, 32], (tch::Kind::Float, dev)) * 0.1;
    let cfg = ClaeConfig::paper(LossKind::SimClr);
    let mut f32_total = 0.0;
    for recipe in [Recipe::Lean, Recipe::Authors] {
        let mut net = ResNet18::new(config, 2, dev, Precision::F32).unwrap();
        let mut opt = Optimizer::new(OptimizerConfig::authors_adam(), &net).unwrap();
        let r = clae_step(&mut net, &mut opt, &p, &q, &ClaeConfig { recipe, ..cfg }).unwrap();
        assert!(r.total.is_finite());
        f32_total = r.total;
        notice(&format!(
            "CUDA ResNet-18 full width, N = 64, {recipe:?}: L_total {}",
            r.total
        ));
    }
    let mut net = ResNet18::new(config, 2, dev, Precision::F32).unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::authors_adam(), &net).unwrap();
    let r = with_bf16_autocast(|| clae_step(&mut net, &mut opt, &p, &q, &cfg))
        .unwrap()
        .unwrap();
    notice(&format!(
        "CUDA ResNet-18 full width, bf16 autocast: L_total {} (f32: {f32_total})",
        r.total
    ));
    assert!(r.total.is_finite());
    assert!(
        ((r.total - f32_total) / f32_total).abs() < 0.1,
        "bf16 far from f32"
    );
    assert!(net.validate().is_ok(), "parameters stayed finite");
}
