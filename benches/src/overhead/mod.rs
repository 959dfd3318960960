//! The overhead report: what an adversarial view costs in training time,
//! measured side by side with a plain step and set against the exact FLOP
//! model of [`crate::flops`].
//!
//! The pieces, in the order a run uses them:
//!
//! * [`plan`] — which configurations to measure ([`plan::Plan::cpu`], the
//!   CPU selection, about 17 minutes on two cores; [`plan::Plan::full`], which adds CUDA);
//! * [`workloads`] — one closure-like [`measure::Workload`] per measured
//!   thing (a reference step, a libtorch step, a loss, a GEMM);
//! * [`measure`] — the harness: every member of a group is run in the same
//!   rounds, in rotating order, and summarised by medians, so ratios inside a
//!   group are measured side by side and never across runs;
//! * [`profile`] — where the time of a reference step goes (GEMMs versus
//!   elementwise work and bookkeeping), next to libtorch's time for the same
//!   products;
//! * [`memory`] — peak resident memory per step, one fresh process per
//!   member (the binary re-runs itself as a probe; PyTorch eager probes
//!   itself);
//! * [`analysis`] — ratios, GFLOP/s, fractions of the GEMM peak, and the
//!   issue's targets, each met or missed with the reason;
//! * [`report`] and [`charts`] — Markdown, CSV and SVG output (the
//!   per-encoder cost chart, the scaling chart in `N` and width);
//! * [`cli`] and [`run`] — the `overhead-report` binary's options and main loop.
//!
//! Timings never decide a test: the tests of this module check that files
//! are well formed from synthetic measurements.

pub mod analysis;
pub mod charts;
pub mod cli;
pub mod eager;
pub mod measure;
pub mod memory;
pub mod plan;
pub mod profile;
pub mod report;
pub mod run;
pub mod workloads;

use std::fmt;
use thiserror::Error;

/// Everything that can go wrong while planning, measuring or writing a report.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The reference rejected an input (a bug in the plan: the shapes are ours).
    #[error("reference implementation: {0}")]
    Reference(#[from] clae_reference::ClaeError),
    /// libtorch raised an error.
    #[error("libtorch: {0}")]
    Torch(String),
    /// A bad command-line argument.
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Drawing a chart failed.
    #[error("chart {path}: {message}")]
    Chart {
        /// The SVG file.
        path: String,
        /// What plotters said.
        message: String,
    },
    /// A measured workload produced a non-finite result.
    #[error("{what} produced a non-finite value")]
    NonFinite {
        /// Which workload.
        what: String,
    },
}

impl From<clae_accelerated::Error> for BenchError {
    fn from(e: clae_accelerated::Error) -> Self {
        match e {
            clae_accelerated::Error::Spec(e) => BenchError::Reference(e),
            other => BenchError::Torch(other.to_string()),
        }
    }
}

impl From<tch::TchError> for BenchError {
    fn from(e: tch::TchError) -> Self {
        BenchError::Torch(e.to_string())
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Which implementation runs a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// `clae-reference` (pure ndarray, CPU).
    Reference,
    /// `clae-accelerated` / libtorch on the CPU.
    TchCpu,
    /// `clae-accelerated` / libtorch on CUDA device 0.
    TchCuda,
    /// A plain PyTorch eager script on the same libtorch, on the CPU
    /// ([`eager`]): the alternative a user would pick.
    EagerCpu,
    /// The PyTorch eager script on CUDA device 0.
    EagerCuda,
}

impl Backend {
    /// Short name: `reference`, `tch-cpu`, `tch-cuda`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::TchCpu => "tch-cpu",
            Backend::TchCuda => "tch-cuda",
            Backend::EagerCpu => "pytorch-cpu",
            Backend::EagerCuda => "pytorch-cuda",
        }
    }
}

/// Element type: the workspace's one precision vocabulary, `clae-accelerated`'s.
pub use clae_accelerated::device::Precision;

/// An implementation at a precision: what a row of a table compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Impl {
    /// Which code.
    pub backend: Backend,
    /// Which element type.
    pub precision: Precision,
}

impl Impl {
    /// Reference in `f32`.
    pub const REF_F32: Impl = Impl {
        backend: Backend::Reference,
        precision: Precision::F32,
    };
    /// Reference in `f64`.
    pub const REF_F64: Impl = Impl {
        backend: Backend::Reference,
        precision: Precision::F64,
    };
    /// libtorch CPU in `f32`.
    pub const TCH_CPU_F32: Impl = Impl {
        backend: Backend::TchCpu,
        precision: Precision::F32,
    };
    /// libtorch CPU in `f64`.
    pub const TCH_CPU_F64: Impl = Impl {
        backend: Backend::TchCpu,
        precision: Precision::F64,
    };
    /// libtorch CUDA in `f32`.
    pub const TCH_CUDA_F32: Impl = Impl {
        backend: Backend::TchCuda,
        precision: Precision::F32,
    };
    /// PyTorch eager on the CPU in `f32`.
    pub const EAGER_CPU_F32: Impl = Impl {
        backend: Backend::EagerCpu,
        precision: Precision::F32,
    };
    /// PyTorch eager on CUDA in `f32`.
    pub const EAGER_CUDA_F32: Impl = Impl {
        backend: Backend::EagerCuda,
        precision: Precision::F32,
    };
}

impl fmt::Display for Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.backend.name(), self.precision.name())
    }
}
