//! # clae-reference
//!
//! A pure-`ndarray` CPU reference of CLAE — *Contrastive Learning with
//! Adversarial Examples* (Ho & Vasconcelos, NeurIPS 2020) — written to be
//! read and ported from. Every number is defined by the project's SPEC.md;
//! the section numbers below refer to it.
//!
//! ## Glossary (SPEC 1 → the paper → this crate)
//!
//! | SPEC | paper / authors' code | here |
//! |---|---|---|
//! | `P`, `Q` (`N x D_in`) | two augmentations `x_i`, `x_j` | `p`, `q` |
//! | `f` | encoder + projection head + L2 norm | [`encoder::Mlp`] |
//! | `Z_P`, `Z_Q` (`N x d`) | `z_i`, `z_j` | `z_p`, `z_q` |
//! | `tau` | temperature `T` | `tau` |
//! | `L` | Plain `L_ce`, SimCLR NT-Xent, UEL batch criterion | [`loss::LossKind`] `::{Plain, SimClr, Uel}` |
//! | `W = sg(f_adv(P))` | the cross-entropy's "classifier weights" | anchors in [`adversarial`] |
//! | `g` | `x_j_adv.grad` | [`adversarial::input_gradient`] |
//! | `eps` | FGSM step `eps` | `eps` |
//! | `Q_adv` | `x_j_adv` | `q_adv` |
//! | `alpha` | weight of the adversarial loss | `alpha` |
//! | clean / adv BatchNorm | dual BN, `bn_adv_momentum = 0.01` | [`layers::DualBatchNorm1d`], [`encoder::Branch`] |
//! | `L_total` | `loss` after `loss += alpha * adv_loss` | [`step::StepReport::total`] |
//!
//! ## Where things live
//!
//! * [`layers`] — `linear_forward/backward`, `batchnorm_forward_*/backward`,
//!   `relu_forward/backward`, `l2_normalize_forward/backward` (SPEC 2);
//! * [`encoder`] — the dual-BN [`encoder::Mlp`], its forward/backward and
//!   state dict (SPEC 2);
//! * [`loss`] — Plain, SimCLR, UEL with analytic gradients (SPEC 3);
//! * [`adversarial`] — FGSM and PGD views, lean and authors' recipes (SPEC 4, 6);
//! * [`optim`] — SGD and Adam as `torch.optim` (SPEC 5);
//! * [`step`] — plain and CLAE steps (SPEC 5);
//! * [`diagnostics`] — singular values, effective rank, alignment, uniformity;
//! * [`error`] — typed errors (SPEC 7); [`check`] — the validators.
//!
//! Everything is generic over `f32` and `f64` ([`Real`]).
//!
//! ## Example: one CLAE step
//!
//! ```
//! use ndarray::Array2;
//! use clae_reference::encoder::{Mlp, MlpConfig};
//! use clae_reference::loss::LossKind;
//! use clae_reference::optim::{Optimizer, OptimizerConfig};
//! use clae_reference::step::{clae_step, ClaeConfig};
//! use clae_reference::rng::Rng;
//!
//! let mut rng = Rng::new(0);
//! let p = Array2::from_shape_simple_fn((16, 32), || rng.normal());
//! let q = p.mapv(|v| v + 0.1);
//! let mut mlp = Mlp::<f64>::new(MlpConfig::new(32, 64, 2, 8), 0)?;
//! let mut opt = Optimizer::new(OptimizerConfig::authors_sgd(), &mlp)?;
//! let report = clae_step(&mut mlp, &mut opt, p.view(), q.view(), &ClaeConfig::paper(LossKind::Plain))?;
//! assert!(report.total > report.loss_clean);
//! # Ok::<(), clae_reference::ClaeError>(())
//! ```

#![warn(missing_docs)]

pub mod adversarial;
pub mod check;
pub mod diagnostics;
pub mod encoder;
pub mod error;
pub mod layers;
pub mod loss;
pub mod optim;
pub mod real;
pub mod rng;
pub mod state;
pub mod step;

pub use error::{ClaeError, ErrorKind, Result};
pub use real::Real;
