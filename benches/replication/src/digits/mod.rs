//! Real data: plain contrastive learning vs CLAE on scikit-learn's 8x8
//! handwritten digits (issue 6).
//!
//! The pipeline, one module per step:
//!
//! * [`data`] — parse the gzipped CSV that ships in scikit-learn
//!   (`sklearn/datasets/data/digits.csv.gz`: 1797 rows of 64 pixels in
//!   `0..=16` and a label), scale pixels to `[0, 1]`, and make a seeded,
//!   stratified train/test split;
//! * [`augment`] — the two random views: translation by up to one pixel with
//!   zero fill, random intensity scaling, additive Gaussian noise;
//! * [`train`] — a small [`train::Trainer`] trait (plain step, CLAE step,
//!   eval-mode embedding) implemented for the reference encoder, and the
//!   training loop that records a learning curve and wall-clock per epoch;
//!   [`tch_trainer`] implements the trait with `clae-accelerated` (libtorch);
//! * [`eval`] — weighted kNN top-1 (InstDisc/UEL protocol: `k = 200`,
//!   `T = 0.1`), 1-NN, a linear probe, and the reference's representation
//!   diagnostics (effective rank, alignment, uniformity);
//! * [`stats`] — mean ± standard deviation over seeds and Welch's t-test;
//! * [`report`] — Markdown table, CSV of every run, SVG charts;
//! * [`run`] — command-line options and the whole replication
//!   (`cargo run --release -p clae-replication --bin digits`).

pub mod augment;
pub mod data;
pub mod eval;
pub mod report;
pub mod run;
pub mod stats;
pub mod tch_trainer;
pub mod train;

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong in the digits replication. Every message
/// says what was wrong and, where there is one, what to do about it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DigitsError {
    /// The data file does not exist.
    #[error("digits data not found at {path}: run scripts/setup.sh (it extracts sklearn/datasets/data/digits.csv.gz from scikit-learn's wheel) or set CLAE_DIGITS_CSV to the file")]
    DataMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The data file exists but could not be read as gzip or as the
    /// expected CSV.
    #[error("digits data at {source_name} is corrupt: {message}")]
    DataCorrupt {
        /// The file (or a description of the reader).
        source_name: String,
        /// What was wrong, with the line number where there is one.
        message: String,
    },
    /// Neither `CLAE_DIGITS_CSV` nor a cache directory (`XDG_CACHE_HOME`,
    /// `HOME`) is set.
    #[error("cannot locate the digits data: set CLAE_DIGITS_CSV (or HOME / XDG_CACHE_HOME) and run scripts/setup.sh")]
    NoDataPath,
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
    /// The libtorch backend failed (device unavailable, libtorch error, or
    /// its own input validation).
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

impl DigitsError {
    /// Shorthand for [`DigitsError::InvalidConfig`].
    pub fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        DigitsError::InvalidConfig {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, DigitsError>;
