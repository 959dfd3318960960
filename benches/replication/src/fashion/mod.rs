//! Real data at scale: does CLAE's adversarial view help on Fashion-MNIST
//! (70 000 28x28 grey images, 10 classes), and does it buy robustness?
//!
//! The digits replication ([`crate::digits`]) found CLAE's gain over plain
//! contrastive learning matched by an `eps = 0` control. This module repeats
//! that controlled comparison on Fashion-MNIST, with SimCLR-family
//! augmentations, the authors' input normalisation, an `eps` sweep, the
//! ACL- and RoCL-style peer steps, a linear probe whose settings are chosen
//! on a validation split, and the probe's accuracy under PGD-20.
//!
//! One module per step:
//!
//! * [`data`] — the IDX files of Debian's `dataset-fashion-mnist` (gzipped
//!   or raw), parsed with typed errors, and the normalisation constants;
//! * [`augment`] — random resized crop, horizontal flip and brightness /
//!   contrast jitter for 28x28 grey images;
//! * [`train`] — methods (plain, CLAE, the `eps = 0` control, ACL, RoCL),
//!   the reference-MLP trainer and the training loop with learning curves;
//!   [`cnn_trainer`] trains the dual-BN CNN of `clae_accelerated::cnn` on
//!   libtorch instead;
//! * [`eval`] — kNN-200 with the authors' temperatures, the validated linear
//!   probe, PGD-20 robust accuracy of encoder + probe;
//! * [`run`] — options, the grid of cells, the resumable CSV, the whole run;
//! * [`report`] — `report.md`, CSV, SVG charts
//!   (`cargo run --release -p clae-replication --bin fashion`).

pub mod augment;
pub mod cnn_trainer;
pub mod data;
pub mod eval;
pub mod report;
pub mod run;
pub mod train;

use crate::digits::DigitsError;
use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong in the Fashion-MNIST replication. Every
/// message says what was wrong and, where there is one, what to do about it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FashionError {
    /// A data file does not exist.
    #[error("Fashion-MNIST file not found: {path} (run scripts/setup.sh as root, or `sudo apt-get install -y dataset-fashion-mnist`, or set CLAE_FASHION_DIR to a folder holding the four IDX files)")]
    DataMissing {
        /// The file (without or with `.gz`) that was looked for.
        path: PathBuf,
    },
    /// A data file exists but is not a valid IDX file of the expected kind.
    #[error("Fashion-MNIST data at {source_name} is corrupt: {message}")]
    DataCorrupt {
        /// The file (or a description of the reader).
        source_name: String,
        /// What was wrong.
        message: String,
    },
    /// An argument or configuration value is outside its domain.
    #[error("invalid {what}: {message}")]
    InvalidConfig {
        /// Which setting.
        what: String,
        /// What was expected.
        message: String,
    },
    /// An error from the CLAE reference implementation.
    #[error(transparent)]
    Clae(#[from] clae_reference::ClaeError),
    /// An error from the shared digits machinery (statistics, kNN) other
    /// than an invalid argument.
    #[error(transparent)]
    Shared(DigitsError),
    /// Reading or writing a file failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Drawing a chart failed.
    #[error("drawing {path} failed: {message}")]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// The plotting library's message.
        message: String,
    },
    /// The libtorch backend failed (its own input validation, or libtorch).
    #[error("libtorch backend: {message}")]
    Backend {
        /// What went wrong.
        message: String,
    },
    /// Training diverged (a loss became NaN or infinite).
    #[error("training diverged: {message}")]
    Diverged {
        /// Which run, at which step.
        message: String,
    },
}

impl FashionError {
    /// Shorthand for [`FashionError::InvalidConfig`].
    pub fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        FashionError::InvalidConfig {
            what: what.into(),
            message: message.into(),
        }
    }
}

impl From<DigitsError> for FashionError {
    fn from(e: DigitsError) -> Self {
        match e {
            DigitsError::InvalidConfig { what, message } => {
                FashionError::InvalidConfig { what, message }
            }
            DigitsError::Clae(c) => FashionError::Clae(c),
            other => FashionError::Shared(other),
        }
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, FashionError>;
