//! The layers of the encoder, each a pair of plain functions
//! `*_forward` / `*_backward` with the shapes written above them
//! (llm.c style). They assume validated input; [`crate::encoder::Mlp`] checks.

pub mod batchnorm;
pub mod linear;
pub mod normalize;
pub mod relu;

pub use batchnorm::{
    batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train, BatchNorm1d, BnCache,
    BnStats, DualBatchNorm1d,
};
pub use linear::{linear_backward, linear_forward, Linear, LinearGrads};
pub use normalize::{l2_normalize_backward, l2_normalize_forward, NORMALIZE_EPS};
pub use relu::{relu_backward, relu_forward};
