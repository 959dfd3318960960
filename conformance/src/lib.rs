//! # clae-conformance
//!
//! Cross-checks of the pure-ndarray reference (`clae-reference`) against the
//! libtorch implementation (`clae-accelerated`), written once against the
//! small [`backend::Backend`] trait and instantiated per backend pair, and
//! the JSON conformance vectors (docs/SPEC.md §9) that any port can check itself
//! against, and the API contract suite ([`contract`], docs/SPEC.md §7.1).
//! The vector format is documented in this crate's `README.md`.

#![warn(missing_docs)]

pub mod backend;
pub mod contract;
pub mod json;
pub mod metrics;
pub mod suite;
pub mod vectors;
