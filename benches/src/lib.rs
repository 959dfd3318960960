//! # clae-benches
//!
//! Benchmarks and reports for CLAE (Ho & Vasconcelos, NeurIPS 2020):
//!
//! * [`flops`] — exact FLOP counts of the dual-BN MLP and the CIFAR
//!   ResNet-18, layer by layer, and of the plain, lean and authors' training
//!   steps (docs/SPEC.md §6);
//! * [`overhead`] — the overhead report (`scripts/report.sh`, binary
//!   `overhead-report`): plain and CLAE steps measured side by side against
//!   that FLOP model, GEMM peaks, losses, and the targets;
//! * [`digits`] — the replication on scikit-learn's 8x8 digits (binary `digits`).
//!
//! The criterion benches (`cargo bench`: `loss`, `step`, `gemm`) use the same
//! workloads as the report, from [`overhead::workloads`].

pub mod digits;
pub mod flops;
pub mod overhead;
