#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod adversarial;
pub mod check;
pub mod diagnostics;
pub mod encoder;
pub mod error;
pub mod gemm;
pub mod layers;
pub mod loss;
pub mod optim;
pub mod peers;
pub mod real;
pub mod rng;
pub mod state;
pub mod step;

pub use error::{ClaeError, ErrorKind, Result};
pub use real::Real;

/// The `ndarray` this crate is built on (0.17), for callers who want the
/// same version without naming it.
pub use ndarray;
