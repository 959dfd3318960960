//! The API contract suite (docs/SPEC.md §7.1), harness-less: hostile calls
//! through the public API of the reference (f32, f64) and of libtorch on the
//! CPU (f32, f64), then a table of what was tried and how it ended.
//!
//! `CLAE_CONTRACT_CASES` sets the number of calls (default 2000; each runs on
//! all four implementations); the seed follows the conformance suite's
//! (`PROPTEST_RNG_SEED`, `CLAE_SUITE_RANDOM=1`). Failing calls are kept in
//! `conformance/proptest-regressions/contract.txt` and replayed first.
//! `cargo test conformance` (or `contract`) at the workspace root runs it
//! too; another filter skips it with one line.

use clae_conformance::contract::{calls, run, Tally};
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

fn main() -> ExitCode {
    if !clae_conformance::suite::selected("contract") {
        return ExitCode::SUCCESS;
    }
    let cases = std::env::var("CLAE_CONTRACT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // the panics the suite provokes on purpose must not drown its output:
    // a panic is reported as a violation with its message
    std::panic::set_hook(Box::new(|_| {}));
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/contract.txt",
        ))),
        rng_seed: clae_conformance::suite::seed(),
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let tally = Mutex::new(Tally::default());
    let start = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&calls(), |call| {
        let violations = run(&call, &mut tally.lock().expect("not poisoned"));
        if violations.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(violations.join("; ")))
        }
    });
    let _ = std::panic::take_hook();
    println!(
        "contract suite: {cases} calls (CLAE_CONTRACT_CASES), each on reference f32/f64 and tch CPU f32/f64, in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    println!("\n{}", tally.lock().expect("not poisoned").table());
    match result {
        Ok(()) => {
            println!("contract suite: the contract held for every call");
            ExitCode::SUCCESS
        }
        Err(TestError::Fail(why, call)) => {
            println!("contract suite: VIOLATED: {why}\n  minimal call: {call:?}");
            ExitCode::FAILURE
        }
        Err(TestError::Abort(why)) => {
            println!("contract suite: aborted: {why}");
            ExitCode::FAILURE
        }
    }
}
