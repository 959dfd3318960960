//! placeholder
pub mod check;
pub mod encoder;
pub mod error;
pub mod layers;
pub mod real;
pub mod rng;
pub mod state;
pub use error::{ClaeError, ErrorKind, Result};
pub use real::Real;
pub mod loss;
