//! SGD and Adam (docs/SPEC.md §5): torch.optim's update rules checked against the
//! closed forms written out by hand, `None` gradients skipped, and the two
//! backends (tensor ops, libtorch's C++ optimizers) compared.

mod common;

use clae_accelerated::device::Precision;
use clae_accelerated::encoder::{Encoder, Gradients};
use clae_accelerated::mlp::Mlp;
use clae_accelerated::optim::{Backend, Optimizer, OptimizerConfig};
use clae_accelerated::step::{clae_step, ClaeConfig};
use clae_reference::encoder::MlpConfig;
use clae_reference::loss::LossKind;
use common::*;
use ndarray::ArrayD;
use tch::{Device, Tensor};

/// A small encoder and one gradient per parameter: `g = c · (index + 1) / 7`
/// (a fixed, easy pattern), except parameter 2 which gets `None`.
fn setup(c: f64) -> (Mlp, Gradients) {
    let mlp = Mlp::new(MlpConfig::new(3, 2, 1, 2), 5, Device::Cpu, Precision::F64).unwrap();
    let names = mlp.parameter_names();
    let tensors = mlp
        .parameters()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 2 {
                None
            } else {
                let n = p.numel() as i64;
                let g = Tensor::arange(n, (tch::Kind::Double, Device::Cpu))
                    .f_add_scalar(1.0)
                    .unwrap();
                Some(g.reshape(p.size()) * (c / 7.0))
            }
        })
        .collect();
    (mlp, Gradients { names, tensors })
}

fn params(mlp: &Mlp) -> Vec<ArrayD<f64>> {
    mlp.parameters().iter().map(arr).collect()
}

#[test]
fn sgd_two_steps_by_hand() {
    let (lr, mu, wd) = (0.03, 0.9, 5e-4);
    let config = OptimizerConfig::Sgd {
        lr,
        momentum: mu,
        weight_decay: wd,
    };
    let (mut mlp, g1) = setup(1.0);
    let (_, g2) = setup(-0.5);
    let p0 = params(&mlp);
    let mut opt = Optimizer::new(config, &mlp).unwrap();
    opt.step(&mut mlp, &g1).unwrap();
    opt.step(&mut mlp, &g2).unwrap();
    let p2 = params(&mlp);
    for i in 0..p0.len() {
        let (Some(a), Some(b)) = (&g1.tensors[i], &g2.tensors[i]) else {
            assert_eq!(p2[i], p0[i], "a parameter without gradient must not move");
            continue;
        };
        let (a, b) = (arr(a), arr(b));
        // step 1: d = g1 + wd p0; b1 = d; p1 = p0 − lr b1
        let b1 = &a + &(&p0[i] * wd);
        let p1 = &p0[i] - &(&b1 * lr);
        // step 2: d = g2 + wd p1; b2 = mu b1 + d; p2 = p1 − lr b2
        let b2 = &b1 * mu + (&b + &(&p1 * wd));
        let want = &p1 - &(&b2 * lr);
        assert!(rel_err(&p2[i], &want) < 1e-15, "parameter {i}");
    }
    let state = opt.state_dict::<f64>().unwrap();
    assert!(
        state
            .get("backbone.0.bn.clean.weight.momentum_buffer")
            .is_none(),
        "skipped parameter has no state"
    );
    assert_eq!(state.entries.len(), p0.len() - 1);
}

#[test]
fn adam_two_steps_by_hand() {
    let (lr, b1, b2, eps, wd) = (3e-4, 0.9, 0.999, 1e-8, 1e-6);
    let config = OptimizerConfig::Adam {
        lr,
        beta1: b1,
        beta2: b2,
        eps,
        weight_decay: wd,
    };
    let (mut mlp, g1) = setup(1.0);
    let (_, g2) = setup(-0.5);
    let p0 = params(&mlp);
    let mut opt = Optimizer::new(config, &mlp).unwrap();
    opt.step(&mut mlp, &g1).unwrap();
    opt.step(&mut mlp, &g2).unwrap();
    let p2 = params(&mlp);
    let state = opt.state_dict::<f64>().unwrap();
    let names = mlp.parameter_names();
    for i in 0..p0.len() {
        let (Some(a), Some(b)) = (&g1.tensors[i], &g2.tensors[i]) else {
            assert_eq!(p2[i], p0[i]);
            continue;
        };
        let (a, b) = (arr(a), arr(b));
        let update = |p: &ArrayD<f64>, m: &ArrayD<f64>, v: &ArrayD<f64>, t: i32| {
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            let denom = v.mapv(|x| x.sqrt() / c2.sqrt() + eps);
            p - &(m / &denom * (lr / c1))
        };
        let g = &a + &(&p0[i] * wd);
        let m1 = &g * (1.0 - b1);
        let v1 = &g * &g * (1.0 - b2);
        let p1 = update(&p0[i], &m1, &v1, 1);
        let g = &b + &(&p1 * wd);
        let m2 = &m1 * b1 + &g * (1.0 - b1);
        let v2 = &v1 * b2 + &g * &g * (1.0 - b2);
        let want = update(&p1, &m2, &v2, 2);
        assert!(
            rel_err(&p2[i], &want) < 1e-14,
            "parameter {i}: {:e}",
            rel_err(&p2[i], &want)
        );
        let n = &names[i];
        assert!(rel_err(state.get(&format!("{n}.exp_avg")).unwrap(), &m2) < 1e-14);
        assert!(rel_err(state.get(&format!("{n}.exp_avg_sq")).unwrap(), &v2) < 1e-14);
        assert_eq!(
            state.get(&format!("{n}.step")).unwrap().shape(),
            &[] as &[usize]
        );
        assert_eq!(
            state.get(&format!("{n}.step")).unwrap().iter().next(),
            Some(&2.0)
        );
    }
}

#[test]
fn tensor_ops_and_libtorch_backends_agree() {
    let config = MlpConfig::new(8, 12, 2, 4);
    for (opt_config, loss) in [
        (OptimizerConfig::authors_sgd(), LossKind::Plain),
        (OptimizerConfig::authors_adam(), LossKind::SimClr),
    ] {
        let mut ours = Mlp::new(config, 8, Device::Cpu, Precision::F64).unwrap();
        let mut theirs = Mlp::new(config, 8, Device::Cpu, Precision::F64).unwrap();
        let mut opt_ours = Optimizer::new(opt_config, &ours).unwrap();
        let mut opt_theirs = Optimizer::libtorch(opt_config, &theirs).unwrap();
        assert_eq!(
            (opt_ours.backend(), opt_theirs.backend()),
            (Backend::TensorOps, Backend::Libtorch)
        );
        let cfg = ClaeConfig::paper(loss);
        for s in 0..5 {
            let p = t64(&normal2(6, 8, 70 + s));
            let q = t64(&(normal2(6, 8, 80 + s) * 0.2)) + &p;
            clae_step(&mut ours, &mut opt_ours, &p, &q, &cfg).unwrap();
            clae_step(&mut theirs, &mut opt_theirs, &p, &q, &cfg).unwrap();
        }
        let (a, b) = (
            ours.state_dict::<f64>().unwrap(),
            theirs.state_dict::<f64>().unwrap(),
        );
        let worst = a
            .entries
            .iter()
            .zip(&b.entries)
            .map(|(x, y)| rel_err(&x.value, &y.value))
            .fold(0.0, f64::max);
        println!(
            "{}: tensor ops vs libtorch after 5 CLAE steps: {worst:e}",
            opt_config.name()
        );
        assert!(worst < 1e-12, "{}: {worst:e}", opt_config.name());
        assert!(
            opt_theirs.state_dict::<f64>().is_err(),
            "libtorch state is not exposed"
        );
    }
}
