//! Typed errors (docs/SPEC.md §7): every public function validates its input and
//! returns one of these instead of panicking or producing NaN.

use thiserror::Error;

/// Result alias used by every fallible function of the crate.
pub type Result<T> = std::result::Result<T, ClaeError>;

/// Everything that can be wrong with the input of a CLAE computation.
///
/// Messages say what was wrong and what was expected:
///
/// ```
/// use clae_reference::{ClaeError, ErrorKind};
/// let e = ClaeError::BatchTooSmall { what: "P".into(), n: 1 };
/// assert_eq!(e.kind(), ErrorKind::BatchTooSmall);
/// assert!(e.to_string().contains("N >= 2"));
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ClaeError {
    /// Two arrays that must agree in shape do not (views, encoder input
    /// width, state-dict entries, pixel-range bounds, ...).
    #[error("shape mismatch for {what}: expected {expected}, got {actual}")]
    ShapeMismatch {
        /// Which array.
        what: String,
        /// The shape it must have.
        expected: String,
        /// The shape it has.
        actual: String,
    },
    /// `N < 2`: one image has no negatives.
    #[error("batch size N = {n} is too small for {what}: contrastive learning needs N >= 2 (one image has no negatives)")]
    BatchTooSmall {
        /// Which batch.
        what: String,
        /// Its number of rows.
        n: usize,
    },
    /// A dimension that must be positive is zero (`d`, `D_in`, hidden width,
    /// embedding columns, PGD steps).
    #[error("{what} must be at least 1, got 0")]
    ZeroDimension {
        /// Which dimension.
        what: String,
    },
    /// `tau` is not finite or not `> 0`.
    #[error("temperature tau must be finite and > 0, got {value}")]
    InvalidTemperature {
        /// The offending value.
        value: f64,
    },
    /// Any other scalar hyper-parameter outside its domain (`eps`, `alpha`,
    /// `lr`, momentum, Adam betas, BatchNorm momentum, PGD step size ...).
    #[error("{name} must be {expected}, got {value}")]
    InvalidHyperParameter {
        /// Parameter name as in docs/SPEC.md (`eps`, `alpha`, `lr`, ...).
        name: String,
        /// Its domain in words, e.g. "finite and >= 0".
        expected: String,
        /// The offending value.
        value: f64,
    },
    /// The optional pixel clamp `[lo, hi]` is empty or not finite.
    #[error("pixel range must have finite lo <= hi, got lo = {lo}, hi = {hi}")]
    InvalidRange {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// NaN or an infinity in an input, a parameter or a buffer.
    #[error("{what} contains a non-finite value {value} at index {index:?}; inputs and parameters must be finite")]
    NonFinite {
        /// Which array (e.g. `P`, `backbone.0.linear.weight`).
        what: String,
        /// Multi-index of the first offending entry.
        index: Vec<usize>,
        /// The entry itself (NaN or ±inf).
        value: f64,
    },
    /// A state dict or optimizer state does not describe this encoder
    /// (missing or unknown tensor names).
    #[error("state does not match the encoder: {message}")]
    InvalidState {
        /// What is missing or unexpected.
        message: String,
    },
    /// Valid, finite input whose result is not representable in the element
    /// type: a value overflowed (e.g. a batch of huge values whose BatchNorm
    /// variance exceeds `f32::MAX`, or logits `<Z_P, Z_Q> / tau` beyond the
    /// range). Nothing was changed.
    #[error("{quantity} is not representable in {precision} (caused by {cause}); scale the input down, raise tau, or use f64")]
    Overflow {
        /// The input (or hyper-parameter) responsible, e.g. `P`, `Z_P, Z_Q and tau`.
        cause: String,
        /// What overflowed, e.g. `batch variance of backbone block 0`.
        quantity: String,
        /// `f32` or `f64`.
        precision: String,
    },
    /// Sizes whose tensors cannot be addressed: an element count (or its
    /// size in bytes) beyond `isize::MAX`, or an allocation the system
    /// refused. Checked before anything is allocated.
    #[error("{what} is too large: {detail}")]
    TooLarge {
        /// Which tensor or size.
        what: String,
        /// The sizes involved.
        detail: String,
    },
}

/// The kind of a [`ClaeError`], without its payload: what the conformance
/// suite compares across backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`ClaeError::ShapeMismatch`]
    ShapeMismatch,
    /// [`ClaeError::BatchTooSmall`]
    BatchTooSmall,
    /// [`ClaeError::ZeroDimension`]
    ZeroDimension,
    /// [`ClaeError::InvalidTemperature`]
    InvalidTemperature,
    /// [`ClaeError::InvalidHyperParameter`]
    InvalidHyperParameter,
    /// [`ClaeError::InvalidRange`]
    InvalidRange,
    /// [`ClaeError::NonFinite`]
    NonFinite,
    /// [`ClaeError::InvalidState`]
    InvalidState,
    /// [`ClaeError::Overflow`]
    Overflow,
    /// [`ClaeError::TooLarge`]
    TooLarge,
}

impl ClaeError {
    /// The payload-free kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClaeError::ShapeMismatch { .. } => ErrorKind::ShapeMismatch,
            ClaeError::BatchTooSmall { .. } => ErrorKind::BatchTooSmall,
            ClaeError::ZeroDimension { .. } => ErrorKind::ZeroDimension,
            ClaeError::InvalidTemperature { .. } => ErrorKind::InvalidTemperature,
            ClaeError::InvalidHyperParameter { .. } => ErrorKind::InvalidHyperParameter,
            ClaeError::InvalidRange { .. } => ErrorKind::InvalidRange,
            ClaeError::NonFinite { .. } => ErrorKind::NonFinite,
            ClaeError::InvalidState { .. } => ErrorKind::InvalidState,
            ClaeError::Overflow { .. } => ErrorKind::Overflow,
            ClaeError::TooLarge { .. } => ErrorKind::TooLarge,
        }
    }
}
