//! Initialisation and state dicts: `Mlp::new` is deterministic, follows the
//! documented draw order and PyTorch's default `nn.Linear` distribution;
//! parameters and buffers survive an export/import round trip, in both
//! precisions, and after training has moved the running statistics.

mod common;

use clae_reference::encoder::{Branch, Mlp, MlpConfig};
use clae_reference::loss::LossKind;
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::rng::Rng;
use clae_reference::state::Role;
use clae_reference::step::{clae_step, ClaeConfig};
use common::*;

#[test]
fn new_is_deterministic_and_follows_the_documented_draw_order() {
    let config = MlpConfig::new(7, 5, 2, 3);
    let a = Mlp::<f64>::new(config, 1234).unwrap();
    assert!(a == Mlp::<f64>::new(config, 1234).unwrap());
    assert!(a != Mlp::<f64>::new(config, 1235).unwrap());
    // By hand: one Rng seeded with `seed`; backbone 0..L, head 0, head 1;
    // per layer the weight (row-major) then the bias, each U(-k, k) with
    // k = 1/√fan_in, drawn as lo + (hi − lo) u.
    let mut rng = Rng::new(1234);
    let mut draw = |fan_in: usize, len: usize| -> Vec<f64> {
        let k = 1.0 / (fan_in as f64).sqrt();
        (0..len).map(|_| -k + 2.0 * k * rng.uniform()).collect()
    };
    let mut expected = Vec::new();
    for (fan_in, fan_out) in [(7, 5), (5, 5), (5, 5), (5, 3)] {
        expected.push(draw(fan_in, fan_in * fan_out));
        expected.push(draw(fan_in, fan_out));
    }
    let linear: Vec<Vec<f64>> = a
        .state_dict()
        .entries
        .iter()
        .filter(|e| !e.name.contains(".bn.")) // the linear layers, in order
        .map(|e| e.value.iter().copied().collect())
        .collect();
    assert_eq!(linear, expected);
    // f32 holds the same draws rounded
    let b = Mlp::<f32>::new(config, 1234).unwrap();
    assert_eq!(b.state_dict(), a.state_dict().cast::<f32>().unwrap());
}

#[test]
fn init_follows_pytorch_defaults() {
    let config = MlpConfig::new(64, 128, 2, 32);
    let mlp = Mlp::<f64>::new(config, 7).unwrap();
    for (name, fan_in, values) in [
        ("backbone.0.linear", 64.0, &mlp.backbone[0].linear),
        ("backbone.1.linear", 128.0, &mlp.backbone[1].linear),
        ("head.0", 128.0, &mlp.head[0]),
        ("head.2", 128.0, &mlp.head[1]),
    ] {
        let k = 1.0 / f64::sqrt(fan_in);
        for v in values.weight.iter().chain(&values.bias) {
            assert!((-k..k).contains(v), "{name}: {v} outside [-{k}, {k})");
        }
        // U(-k, k): mean 0, variance k²/3 (loose: a few standard errors)
        let n = values.weight.len() as f64;
        let mean = values.weight.sum() / n;
        let var = values.weight.mapv(|v| (v - mean) * (v - mean)).sum() / n;
        assert!(
            mean.abs() < 4.0 * k / (3.0 * n).sqrt(),
            "{name}: mean {mean}"
        );
        assert!(
            (var / (k * k / 3.0) - 1.0).abs() < 0.05,
            "{name}: var {var}"
        );
    }
    for layer in &mlp.backbone {
        for bn in [&layer.bn.clean, &layer.bn.adv] {
            assert!(bn.gamma.iter().all(|&v| v == 1.0));
            assert!(bn.beta.iter().all(|&v| v == 0.0));
            assert!(bn.running_mean.iter().all(|&v| v == 0.0));
            assert!(bn.running_var.iter().all(|&v| v == 1.0));
        }
    }
    let c = mlp.config();
    assert_eq!(
        (c.bn_eps, c.bn_momentum_clean, c.bn_momentum_adv),
        (1e-5, 0.1, 0.01)
    );
}

#[test]
fn state_dict_layout_uses_pytorch_names() {
    let mlp = Mlp::<f64>::new(MlpConfig::new(3, 4, 1, 2), 0).unwrap();
    let sd = mlp.state_dict();
    let names: Vec<&str> = sd.names();
    assert_eq!(
        names,
        [
            "backbone.0.linear.weight",
            "backbone.0.linear.bias",
            "backbone.0.bn.clean.weight",
            "backbone.0.bn.clean.bias",
            "backbone.0.bn.clean.running_mean",
            "backbone.0.bn.clean.running_var",
            "backbone.0.bn.adv.weight",
            "backbone.0.bn.adv.bias",
            "backbone.0.bn.adv.running_mean",
            "backbone.0.bn.adv.running_var",
            "head.0.weight",
            "head.0.bias",
            "head.2.weight",
            "head.2.bias",
        ]
    );
    for e in &sd.entries {
        let buffer = e.name.contains("running");
        assert_eq!(
            e.role,
            if buffer {
                Role::Buffer
            } else {
                Role::Parameter
            },
            "{}",
            e.name
        );
    }
    // parameter_names is the parameter subset, in the same order
    let params: Vec<&str> = sd
        .entries
        .iter()
        .filter(|e| e.role == Role::Parameter)
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(mlp.parameter_names(), params);
    assert_eq!(
        mlp.num_parameters(),
        3 * 4 + 4 + 4 * 4 + (4 * 4 + 4) + (4 * 2 + 2)
    );
}

#[test]
fn state_dict_round_trips_after_training() {
    let config = MlpConfig::new(6, 8, 2, 4);
    let mut mlp = distinct_branch_mlp(config, 91);
    let mut opt = Optimizer::new(OptimizerConfig::authors_sgd(), &mlp).unwrap();
    let mut rng = Rng::new(92);
    for _ in 0..3 {
        let p = randn(&mut rng, 8, 6);
        let q = &p * 0.9;
        clae_step(
            &mut mlp,
            &mut opt,
            p.view(),
            q.view(),
            &ClaeConfig::paper(LossKind::Uel),
        )
        .unwrap();
    }
    let fresh = Mlp::<f64>::new(config, 0).unwrap();
    assert!(mlp.backbone[0].bn.adv.running_var != fresh.backbone[0].bn.adv.running_var);
    let sd = mlp.state_dict();
    let back = Mlp::<f64>::from_state_dict(config, &sd).unwrap();
    assert!(back == mlp);
    assert_eq!(back.state_dict(), sd);
    // entries in any order load the same
    let mut shuffled = sd.clone();
    shuffled.entries.reverse();
    assert!(Mlp::<f64>::from_state_dict(config, &shuffled).unwrap() == mlp);
    // f64 → f32 → f64 is exact for f32 values; f32 → f64 → f32 always
    let m32 = Mlp::<f32>::from_state_dict(config, &sd.cast::<f32>().unwrap()).unwrap();
    let sd32 = m32.state_dict();
    let m32_again =
        Mlp::<f32>::from_state_dict(config, &sd32.cast::<f64>().unwrap().cast::<f32>().unwrap())
            .unwrap();
    assert!(m32_again == m32);
    // the imported encoder computes what the original computes
    let x = randn(&mut rng, 5, 6);
    assert_eq!(back.embed(x.view()).unwrap(), mlp.embed(x.view()).unwrap());
    let mut a = back.clone();
    let mut b = mlp.clone();
    assert_eq!(
        a.forward_train(x.view(), Branch::Adv).unwrap(),
        b.forward_train(x.view(), Branch::Adv).unwrap()
    );
}
