//! Errors of the accelerated crate.
//!
//! Bad input (every case of docs/SPEC.md §7) is reported with the reference's own
//! [`ClaeError`], produced by the same validators, so both backends agree on
//! the [`ErrorKind`]. Two further kinds of failure exist only here: libtorch
//! itself failing (out of memory, a CUDA error) and a device that cannot be
//! used.

use clae_reference::{ClaeError, ErrorKind};
use thiserror::Error;

/// Result alias used by every fallible function of the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in the accelerated crate.
///
/// ```
/// use clae_accelerated::Error;
/// use clae_reference::{ClaeError, ErrorKind};
/// let e: Error = ClaeError::InvalidTemperature { value: 0.0 }.into();
/// assert_eq!(e.kind(), Some(ErrorKind::InvalidTemperature));
/// assert!(e.to_string().contains("tau"));
/// assert_eq!(Error::Device("no GPU".into()).kind(), None);
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid input (docs/SPEC.md §7), exactly as the reference reports it.
    #[error(transparent)]
    Spec(#[from] ClaeError),
    /// libtorch raised an error on validated input (e.g. out of memory).
    #[error("libtorch error: {0}")]
    Torch(String),
    /// The requested device or device feature is not usable here.
    #[error("device error: {0}")]
    Device(String),
}

impl Error {
    /// The docs/SPEC.md §7 kind, for errors caused by bad input; `None` for libtorch
    /// and device failures.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Spec(e) => Some(e.kind()),
            Error::Torch(_) | Error::Device(_) => None,
        }
    }

    /// The reference error, for errors caused by bad input.
    pub fn spec(&self) -> Option<&ClaeError> {
        match self {
            Error::Spec(e) => Some(e),
            Error::Torch(_) | Error::Device(_) => None,
        }
    }
}

impl From<tch::TchError> for Error {
    /// An allocation libtorch could not make is the reference's
    /// [`ClaeError::TooLarge`] (docs/SPEC.md §7.1); any other libtorch error
    /// is [`Error::Torch`].
    fn from(e: tch::TchError) -> Self {
        let msg = e.to_string();
        let lower = msg.to_ascii_lowercase();
        if lower.contains("not enough memory")
            || lower.contains("out of memory")
            || lower.contains("can't allocate")
        {
            let first = msg.lines().next().unwrap_or_default().to_string();
            return Error::Spec(ClaeError::TooLarge {
                what: "a libtorch allocation".into(),
                detail: first,
            });
        }
        Error::Torch(msg)
    }
}
