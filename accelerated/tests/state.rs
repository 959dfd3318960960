//! Round trips of every parameter and buffer: reference export → tch →
//! export reproduces every tensor exactly (f64, and f32 in f32), for the
//! MLP; the ResNet-18 exports and re-imports itself exactly; layouts and
//! parameter counts are what the architecture says.

mod common;

use clae_accelerated::device::Precision;
use clae_accelerated::encoder::{Branch, Encoder};
use clae_accelerated::mlp::Mlp;
use clae_accelerated::resnet::{ResNet18, ResNetConfig};
use clae_reference::encoder::{Mlp as RefMlp, MlpConfig};
use common::*;
use tch::Device;

/// A reference MLP whose running statistics are no longer the initial ones.
fn trained_reference<F: clae_reference::Real>(config: MlpConfig, seed: u64) -> RefMlp<F> {
    let mut mlp = RefMlp::<F>::new(config, seed).unwrap();
    let x = normal2(5, config.d_in, seed + 1).mapv(F::c);
    mlp.forward_train(x.view(), Branch::Clean).unwrap();
    mlp.forward_train(x.view(), Branch::Adv).unwrap();
    mlp
}

#[test]
fn mlp_round_trip_is_exact_in_f64() {
    for (i, config) in [
        MlpConfig::new(7, 5, 0, 3),
        MlpConfig::new(7, 5, 1, 3),
        MlpConfig::new(16, 32, 3, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let reference = trained_reference::<f64>(config, i as u64);
        let exported = reference.state_dict();
        let mlp = Mlp::from_state_dict(config, &exported, Device::Cpu, Precision::F64).unwrap();
        let back = mlp.state_dict::<f64>().unwrap();
        // names, roles, order, shapes and every bit of every value
        assert_eq!(back, exported, "{config:?}");
        assert_eq!(mlp.layout(), reference.layout());
        assert_eq!(mlp.parameter_names(), reference.parameter_names());
        let bits = |sd: &clae_reference::state::StateDict<f64>| -> Vec<u64> {
            sd.entries
                .iter()
                .flat_map(|e| e.value.iter().map(|v| v.to_bits()))
                .collect()
        };
        assert_eq!(bits(&back), bits(&exported));
    }
}

#[test]
fn mlp_round_trip_is_exact_in_f32_and_rounds_f64_like_the_reference() {
    let config = MlpConfig::new(9, 6, 2, 4);
    let reference = trained_reference::<f32>(config, 3);
    let mlp = Mlp::from_reference(&reference, Device::Cpu, Precision::F32).unwrap();
    assert_eq!(mlp.state_dict::<f32>().unwrap(), reference.state_dict());
    // f64 values into an f32 encoder: rounded to nearest, as StateDict::cast
    let r64 = trained_reference::<f64>(config, 4);
    let mlp = Mlp::from_reference(&r64, Device::Cpu, Precision::F32).unwrap();
    assert_eq!(
        mlp.state_dict::<f32>().unwrap(),
        r64.state_dict().cast::<f32>().unwrap()
    );
}

#[test]
fn mlp_new_has_the_reference_initial_values() {
    let config = MlpConfig::new(5, 7, 2, 3);
    let mlp = Mlp::new(config, 99, Device::Cpu, Precision::F64).unwrap();
    assert_eq!(
        mlp.state_dict::<f64>().unwrap(),
        RefMlp::<f64>::new(config, 99).unwrap().state_dict()
    );
}

#[test]
fn resnet_round_trip_is_exact() {
    let config = ResNetConfig::cifar().with_width(2);
    let mut a = ResNet18::new(config, 1, Device::Cpu, Precision::F64).unwrap();
    let x = t64(&normal_d(&[3, 3, 32, 32], 7));
    let _ = a.forward_train(&x, Branch::Clean).unwrap();
    let _ = a.forward_train(&x, Branch::Adv).unwrap();
    let exported = a.state_dict::<f64>().unwrap();
    let mut b = ResNet18::new(config, 2, Device::Cpu, Precision::F64).unwrap();
    assert_ne!(b.state_dict::<f64>().unwrap(), exported);
    b.load_state_dict(&exported).unwrap();
    assert_eq!(b.state_dict::<f64>().unwrap(), exported);
    // same embeddings in every mode afterwards
    for mode in [
        clae_accelerated::encoder::Mode::Eval,
        clae_accelerated::encoder::Mode::Train(Branch::Adv),
    ] {
        assert!(a
            .forward(&x, mode)
            .unwrap()
            .equal(&b.forward(&x, mode).unwrap()));
    }
}

#[test]
fn resnet18_layout_and_parameter_count() {
    let net = ResNet18::new(ResNetConfig::cifar(), 0, Device::Cpu, Precision::F32).unwrap();
    let names = net.parameter_names();
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
    // The CIFAR ResNet-18 with a 10-way classifier (kuangliu/pytorch-cifar)
    // has 11,173,962 parameters. Without its classifier (512*10 + 10), with
    // a second set of BatchNorm affine parameters (2C per BN: stem 64,
    // layer1 4 x 64, layers 2-4 five BNs each incl. the shortcut's:
    // 2 * (64 + 256 + 640 + 1280 + 2560) = 9,600) and the projection head
    // (512*512 + 512 + 512*128 + 128):
    let expected = 11_173_962 - (512 * 10 + 10) + 9_600 + (512 * 512 + 512) + (512 * 128 + 128);
    assert_eq!(net.num_parameters(), expected);
    // 20 convolutions (17 3x3 + 3 1x1 shortcuts), 20 dual BNs, 2 linears
    let convs = names
        .iter()
        .filter(|n| n.contains("conv") && n.ends_with(".weight"))
        .count();
    let bns = names.iter().filter(|n| n.contains(".clean.weight")).count();
    assert_eq!((convs, bns), (20, 20));
    assert_eq!(net.layout().len(), 20 + 20 * 8 + 4);
}
