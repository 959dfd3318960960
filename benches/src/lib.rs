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
//! * [`machine`] — the machine and software a measurement ran on (CPU,
//!   threads, versions, load, date), shared with the replications
//!   (`clae-replication`, in `benches/replication/`).
//!
//! `cargo bench --bench overhead` (harness-less, the same options) produces
//! the report too; the criterion benches (`loss`, `step`, `gemm`) use the
//! same workloads, from [`overhead::workloads`].

pub mod flops;
pub mod machine;
pub mod overhead;
