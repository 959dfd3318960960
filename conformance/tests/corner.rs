//! The corner conformance suite (harness-less): what the main suite does
//! not draw (`N = 2` BatchNorm, `d = 1`, width-1 layers, coinciding
//! features, ReLU kinks, zero rows, `1e3` magnitudes, identical embeddings),
//! for every backend pair, with the bounds that hold there
//! (`clae_conformance::suite::corner`); the table gives each comparison's
//! largest error divided by its bound.
//!
//! `PROPTEST_CASES`, `PROPTEST_RNG_SEED` and `CLAE_SUITE_RANDOM=1` as for
//! the main suite; `cargo test conformance` (or `corner`) at the workspace
//! root runs it too.

use std::process::ExitCode;

fn main() -> ExitCode {
    if !clae_conformance::suite::selected("corner") {
        return ExitCode::SUCCESS;
    }
    clae_conformance::suite::main(
        "corner",
        "max error / bound",
        clae_conformance::suite::run_corner,
    )
}
