//! # clae-conformance
//!
//! Cross-checks of the pure-ndarray reference (`clae-reference`) against the
//! libtorch implementation (`clae-accelerated`), and the JSON conformance
//! vectors (SPEC 9) that any port can check itself against. The vector
//! format is documented in this crate's `README.md`.

#![warn(missing_docs)]

pub mod json;
pub mod vectors;
