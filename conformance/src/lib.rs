//! # clae-conformance
//!
//! Cross-checks of the pure-ndarray reference (`clae-reference`) against the
//! libtorch implementation (`clae-accelerated`), written once against the
//! small [`backend::Backend`] trait and instantiated per backend pair, and
//! the JSON conformance vectors (SPEC 9) that any port can check itself
//! against. The vector format is documented in this crate's `README.md`.

#![warn(missing_docs)]

pub mod backend;
pub mod json;
pub mod metrics;
pub mod suite;
pub mod vectors;
