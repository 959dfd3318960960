//! CLAE (Contrastive Learning with Adversarial Examples, Ho & Vasconcelos,
//! NeurIPS 2020) computed with libtorch's autograd through `tch`, on CPU and
//! CUDA, in `f32` and `f64`.
//!
//! This crate is the independent counterpart of `clae-reference`: the same
//! spec (docs/SPEC.md), the same vocabulary (re-exported from the reference), but every
//! gradient comes from autograd, never from a hand-written backward pass.
//!
//! | module | docs/SPEC.md § | what |
//! |---|---|---|
//! | [`device`] | — | CPU/CUDA, `f32`/`f64`, loading libtorch's CUDA backend, TF32, bf16 autocast |
//! | [`convert`] | — | ndarray ⇄ tensor |
//! | [`encoder`] | 2 | the [`Encoder`] trait, named tensors, state dicts |
//! | [`mlp`] | 2 | the dual-BN MLP |
//! | [`resnet`] | 2 | CIFAR ResNet-18 with dual BatchNorm2d and a projection head |
//! | [`loss`] | 3 | Plain, SimCLR, UEL losses with tensor ops |
//! | [`adversarial`] | 4, 6 | input gradient `g`, FGSM/PGD views, lean and authors' recipes |
//! | [`optim`] | 5 | SGD and Adam with `torch.optim`'s rules, exportable state |
//! | [`step`] | 5, 6 | plain and CLAE steps, generic over the encoder |
//!
//! Glossary (docs/SPEC.md §1): `p`, `q` the two views (`P`, `Q`), `z_p`, `z_q` their
//! embeddings, `tau` the temperature, `eps` the FGSM step, `alpha` the weight
//! of the adversarial term, `q_adv` the adversarial view, `g` the input
//! gradient that makes it.
//!
//! ```
//! use clae_accelerated::{device::Precision, encoder::Encoder, mlp::Mlp};
//! use clae_accelerated::optim::{Optimizer, OptimizerConfig};
//! use clae_accelerated::step::{clae_step, ClaeConfig};
//! use clae_reference::{encoder::MlpConfig, loss::LossKind};
//! let mut mlp = Mlp::new(MlpConfig::new(8, 16, 1, 4), 0, tch::Device::Cpu, Precision::F64).unwrap();
//! let mut opt = Optimizer::new(OptimizerConfig::authors_sgd(), &mlp).unwrap();
//! let p = tch::Tensor::randn([6, 8], (tch::Kind::Double, tch::Device::Cpu));
//! let q = &p * 0.9;
//! let report = clae_step(&mut mlp, &mut opt, &p, &q, &ClaeConfig::paper(LossKind::Plain)).unwrap();
//! assert!(report.total.is_finite());
//! ```

#![warn(missing_docs)]

pub mod adversarial;
mod check;
pub mod cnn;
pub mod convert;
pub mod device;
pub mod encoder;
pub mod error;
mod layers;
pub mod loss;
pub mod mlp;
pub mod optim;
pub mod peers;
pub mod resnet;
pub mod step;

pub use check::Health;
pub use encoder::Encoder;
pub use error::{Error, Result};
pub use layers::NORMALIZE_EPS;
