//! The layers of the encoder, each a pair of plain functions
//! `*_forward` / `*_backward` with the shapes written above them
//! (llm.c style), and the parameter structs they read.
//!
//! The functions are crate-private: they compute on input the encoder has
//! validated (shapes agree, values finite) and do not check it themselves.
//! The public, validated entry points are [`crate::encoder::Mlp`]'s
//! `forward`, `backward` and friends. Their unit tests (finite differences
//! included) sit at the end of each file.

pub(crate) mod batchnorm;
pub(crate) mod linear;
pub(crate) mod normalize;
pub(crate) mod relu;

#[cfg(test)]
mod gradcheck;

pub use batchnorm::{BatchNorm1d, BnCache, BnStats, DualBatchNorm1d};
pub use linear::Linear;
pub use normalize::NORMALIZE_EPS;

pub(crate) use batchnorm::{batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train};
pub(crate) use linear::{linear_backward_input, linear_backward_params, linear_forward};
pub(crate) use normalize::{l2_normalize_backward, l2_normalize_forward};
pub(crate) use relu::{relu_backward, relu_forward};
