//! The main conformance suite (harness-less): every property for every
//! backend pair on well-conditioned cases, under docs/SPEC.md §8's one rule,
//! then one table of cases and largest relative errors.
//!
//! `PROPTEST_CASES=96 cargo test --release -p clae-conformance --test suite`
//! for a deeper run; `CLAE_SUITE_RANDOM=1` for fresh cases instead of the
//! fixed seed's. `cargo test conformance` (or `suite`) at the workspace
//! root runs it too; another filter skips it with one line.

use std::process::ExitCode;

fn main() -> ExitCode {
    if !clae_conformance::suite::selected("suite") {
        return ExitCode::SUCCESS;
    }
    clae_conformance::suite::main("main", "max rel. error", clae_conformance::suite::run_main)
}
