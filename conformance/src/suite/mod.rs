//! The conformance suite: properties written once against
//! [`crate::backend::Backend`], run for every backend pair with `proptest`,
//! ending with one table of the largest errors seen.
//!
//! `tests/suite.rs` runs it (`cargo test -p clae-conformance --test suite`);
//! `PROPTEST_CASES` sets the number of cases per property and pair
//! (default [`DEFAULT_CASES`]), [`seed`] where they come from (a fixed seed
//! unless asked otherwise). Failing cases are persisted under
//! `conformance/proptest-regressions/` and replayed first on later runs.

pub mod cases;
pub mod errors;
pub mod kinks;
pub mod properties;
pub mod semantics;

use properties::{Outcome, Pair};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestError, TestRunner};
use std::fmt::Debug;
use std::time::Instant;

/// Cases per property and pair when `PROPTEST_CASES` is not set: sized so
/// the whole suite stays within a few minutes on a 2-core machine.
pub const DEFAULT_CASES: u32 = 12;

/// The RNG seed of a default run, so that the suite a CI job runs is the
/// same every time (failures reproduce; no run passes or fails by the luck
/// of its draw).
pub const DEFAULT_SEED: u64 = 2020;

/// Where each property's cases come from: `PROPTEST_RNG_SEED=<u64>` (any
/// seed), `CLAE_SUITE_RANDOM=1` (a fresh draw each property, as proptest
/// does by default), otherwise [`DEFAULT_SEED`].
pub fn seed() -> RngSeed {
    if std::env::var_os("CLAE_SUITE_RANDOM").is_some_and(|v| v != "0") {
        return RngSeed::Random;
    }
    match std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seed) => RngSeed::Fixed(seed),
        None => RngSeed::Fixed(DEFAULT_SEED),
    }
}

/// Cases per property: `PROPTEST_CASES` or [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs one property on one pair; returns a failure message, if any.
pub fn check<S, F>(pair: &Pair, name: &str, strategy: S, cases: u32, property: F) -> Option<String>
where
    S: Strategy,
    S::Value: Debug,
    F: Fn(&Pair, S::Value) -> Outcome,
{
    let file: &'static str = Box::leak(format!("proptest-regressions/{name}.txt").into_boxed_str());
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        max_shrink_time: 20_000,
        rng_seed: seed(),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let result = runner.run(&strategy, |v| property(pair, v));
    let secs = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            eprintln!("  ok    {name:<28} {cases:>4} cases  {secs:6.1} s");
            None
        }
        Err(TestError::Fail(why, value)) => {
            eprintln!("  FAIL  {name:<28} {why}\n        minimal case: {value:?}");
            Some(format!(
                "{} / {name}: {why}; minimal case: {value:?}",
                pair.label()
            ))
        }
        Err(TestError::Abort(why)) => {
            eprintln!("  ABORT {name:<28} {why}");
            Some(format!("{} / {name}: aborted: {why}", pair.label()))
        }
    }
}

/// Every property on `pair`; returns the failures.
pub fn run_pair(pair: &Pair, cases: u32) -> Vec<String> {
    use cases::{any_case, case_without_bn, encoder_case};
    eprintln!("\n{}", pair.label());
    let mut failures = Vec::new();
    let mut add = |f: Option<String>| failures.extend(f);
    add(check(pair, "embeddings", any_case(), cases, |p, c| {
        properties::embeddings(p, &c)
    }));
    add(check(pair, "losses", any_case(), cases, |p, c| {
        properties::losses(p, &c)
    }));
    add(check(
        pair,
        "input_gradient",
        encoder_case(),
        cases,
        |p, c| properties::input_gradient(p, &c),
    ));
    add(check(
        pair,
        "adversarial_views",
        encoder_case(),
        cases,
        |p, c| properties::adversarial_views(p, &c),
    ));
    add(check(pair, "one_step", encoder_case(), cases, |p, c| {
        properties::one_step(p, &c)
    }));
    if pair.tol.trajectory.is_some() {
        add(check(
            pair,
            "trajectory",
            // N >= 3: at N = 2 BatchNorm's backward is a cancellation
            // residue (see `kinks::pair_backward_condition`), and 20 steps
            // compound its rounding beyond 1e-8 even in f64 (seen: 6e-8
            // with SGD, 1.6e-8 with Adam on large inputs).
            encoder_case().prop_filter("trajectories need N >= 3", |c| c.n >= 3),
            cases.div_ceil(3),
            |p, c| properties::trajectory(p, &c),
        ));
    }
    add(check(
        pair,
        "recipes_agree",
        encoder_case(),
        cases,
        |p, c| properties::recipes_agree(p, &c),
    ));
    add(check(
        pair,
        "per_image_perturbation",
        case_without_bn(),
        cases,
        |p, c| semantics::per_image_perturbation(p, &c),
    ));
    add(check(
        pair,
        "anchors_couple_images",
        case_without_bn(),
        cases,
        |p, c| semantics::anchors_couple_images(p, &c),
    ));
    add(check(
        pair,
        "degenerate_cases",
        encoder_case(),
        cases,
        |p, c| semantics::degenerate_cases(p, &c),
    ));
    add(check(
        pair,
        "bad_input",
        (encoder_case(), errors::any_corruption()),
        cases * 2,
        |p, (c, k)| errors::bad_input(p, &c, k),
    ));
    add(check(
        pair,
        "garbage",
        errors::any_garbage(),
        cases * 4,
        |p, g| errors::garbage(p, &g),
    ));
    failures
}
