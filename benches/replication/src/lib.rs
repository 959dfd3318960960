//! # clae-replication
//!
//! Does the adversarial view help? CLAE trained end to end against plain
//! contrastive learning and an `eps = 0` control (the same second loss term
//! through the adversarial BatchNorm branch, no perturbation), evaluated on
//! frozen embeddings, with the statistics that say whether a difference is
//! beyond seed noise:
//!
//! * [`digits`] — scikit-learn's 8x8 digits, the seconds-to-minutes smoke
//!   replication (binary `digits`, `scripts/digits.sh`);
//! * [`fashion`] — Fashion-MNIST (70 000 real images): the same controlled
//!   comparison with an eps sweep, ACL-/RoCL-style peers, a validated linear
//!   probe and PGD-20 robust accuracy (binary `fashion`, `scripts/fashion.sh`).
//!
//! The machine facts its reports record come from [`clae_benches::machine`].

pub mod digits;
pub mod fashion;
