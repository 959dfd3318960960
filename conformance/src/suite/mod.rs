//! The conformance suites, every property written once against
//! [`crate::backend::Backend`] and run for every backend pair ([`pairs`])
//! with `proptest`, each suite ending with one table:
//!
//! * the **main** suite ([`run_main`], `tests/suite.rs`): well-conditioned
//!   cases only ([`cases::well_conditioned_case`]), compared with
//!   docs/SPEC.md §8's one rule ([`pair::close`]);
//! * the **corner** suite ([`run_corner`], `tests/corner.rs`): what the main
//!   suite does not draw ([`cases::corner_case`]), with the bounds that hold
//!   there ([`corner`]).
//!
//! `PROPTEST_CASES` sets the number of cases per property and pair (default
//! [`DEFAULT_CASES`]), [`seed`] where they come from (a fixed seed unless
//! asked otherwise). Failing cases are persisted under
//! `conformance/proptest-regressions/` and replayed first on later runs.

pub mod cases;
pub mod conditioning;
pub mod corner;
pub mod errors;
pub mod noise;
pub mod pair;
pub mod properties;
pub mod semantics;

use crate::backend::{Precision, Reference, Torch};
use clae_accelerated::device::Precision as TorchPrecision;
use pair::{Outcome, Pair};
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

/// One line saying how a run draws its cases.
pub fn describe_run(suite: &str) -> String {
    let seed = match seed() {
        RngSeed::Fixed(s) => format!("seed {s} (PROPTEST_RNG_SEED)"),
        RngSeed::Random => "fresh random seeds (CLAE_SUITE_RANDOM)".into(),
    };
    format!(
        "conformance {suite} suite: {} cases per property and pair (PROPTEST_CASES), {seed}",
        cases()
    )
}

/// Whether a harness-less test binary called `name` runs, given the
/// arguments cargo passes it (`cargo test <filter>` hands the filter to
/// every test binary): with no filter, or with a filter that is a substring
/// of `name` or of `"conformance"`, and no `--skip` pattern that is.
/// libtest's own flags are ignored (with their values).
///
/// ```
/// use clae_conformance::suite::filter_selects;
/// let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
/// assert!(filter_selects(args(&[]), "corner"));
/// assert!(filter_selects(args(&["conformance"]), "corner"));
/// assert!(filter_selects(args(&["--nocapture", "corn"]), "corner"));
/// assert!(filter_selects(args(&["--test-threads", "1", "suite"]), "suite"));
/// assert!(!filter_selects(args(&["gradcheck"]), "suite"));
/// assert!(!filter_selects(args(&["corner"]), "suite"));
/// assert!(!filter_selects(args(&["--skip", "suite"]), "suite"));
/// ```
pub fn filter_selects(args: impl IntoIterator<Item = String>, name: &str) -> bool {
    const WITH_VALUE: [&str; 7] = [
        "--test-threads",
        "--skip",
        "--color",
        "--format",
        "--logfile",
        "--shuffle-seed",
        "-Z",
    ];
    let matches = |f: &str| name.contains(f) || "conformance".contains(f);
    let (mut filters, mut skipped) = (Vec::new(), false);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            let value = args.next().unwrap_or_default();
            skipped |= arg == "--skip" && matches(&value);
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    !skipped && (filters.is_empty() || filters.iter().any(|f| matches(f)))
}

/// [`filter_selects`] on this process's arguments; prints one line when the
/// binary is not selected.
pub fn selected(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = filter_selects(args.clone(), name);
    if !run {
        println!(
            "conformance `{name}`: not run (the filter {args:?} selects neither `{name}` nor `conformance`)"
        );
    }
    run
}

/// Every backend pair, the first named the side under test, the second the
/// side errors are measured against: reference `f32` vs reference `f64`,
/// tch CPU `f64` vs reference `f64`, tch CPU `f32` vs reference `f32`, tch
/// CPU `f32` vs reference `f64`, and tch CUDA `f32` (TF32 off) vs reference
/// `f64` — which, without a CUDA device, is left out with a printed line
/// saying so (it never passes silently). `CLAE_SUITE_PAIRS=a,b` keeps only
/// the pairs whose label contains `a` or `b` (`CUDA` on the GPU machine),
/// printing each pair it leaves out (unset or empty: every pair); a suite
/// left with no pair fails.
pub fn pairs() -> Vec<Pair> {
    let mut pairs = vec![
        Pair::new(
            Box::new(Reference::<f32>::new()),
            Box::new(Reference::<f64>::new()),
        ),
        Pair::new(
            Box::new(Torch::cpu(TorchPrecision::F64)),
            Box::new(Reference::<f64>::new()),
        ),
        Pair::new(
            Box::new(Torch::cpu(TorchPrecision::F32)),
            Box::new(Reference::<f32>::new()),
        ),
        Pair::new(
            Box::new(Torch::cpu(TorchPrecision::F32)),
            Box::new(Reference::<f64>::new()),
        ),
    ];
    match Torch::cuda(TorchPrecision::F32) {
        Some(cuda) => pairs.push(Pair::new(Box::new(cuda), Box::new(Reference::<f64>::new()))),
        None => println!(
            "CUDA not available: skipped the pair tch CUDA f32 (TF32 off) vs reference f64"
        ),
    }
    let wanted = std::env::var("CLAE_SUITE_PAIRS").unwrap_or_default();
    let wanted: Vec<&str> = wanted.split(',').filter(|w| !w.is_empty()).collect();
    if !wanted.is_empty() {
        let (kept, left): (Vec<Pair>, Vec<Pair>) = pairs
            .into_iter()
            .partition(|p| wanted.iter().any(|w| p.label().contains(w)));
        for p in &left {
            println!(
                "CLAE_SUITE_PAIRS={wanted:?}: left out the pair {}",
                p.label()
            );
        }
        return kept;
    }
    pairs
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

/// Every main-suite property on `pair`; returns the failures.
pub fn run_main(pair: &Pair, cases: u32) -> Vec<String> {
    use cases::{case_without_bn, main_case, well_conditioned_case as wc};
    eprintln!("\n{}", pair.label());
    let prec = pair.coarser();
    let mut failures = Vec::new();
    let mut add = |f: Option<String>| failures.extend(f);
    add(check(pair, "embeddings", wc(prec, 1), cases, |p, c| {
        properties::embeddings(p, &c)
    }));
    add(check(pair, "losses", main_case(prec), cases, |p, c| {
        properties::losses(p, &c)
    }));
    add(check(pair, "input_gradient", wc(prec, 1), cases, |p, c| {
        properties::input_gradient(p, &c)
    }));
    add(check(
        pair,
        "adversarial_views",
        wc(prec, 1),
        cases,
        |p, c| properties::adversarial_views(p, &c),
    ));
    add(check(pair, "one_step", wc(prec, 1), cases, |p, c| {
        properties::one_step(p, &c)
    }));
    if pair.tol.trajectory.is_some() {
        let steps = properties::TRAJECTORY_STEPS;
        add(check(
            pair,
            "trajectory",
            wc(prec, steps),
            cases.div_ceil(3),
            |p, c| properties::trajectory(p, &c),
        ));
    }
    add(check(pair, "recipes_agree", wc(prec, 1), cases, |p, c| {
        properties::recipes_agree(p, &c)
    }));
    add(check(
        pair,
        "peer_steps",
        cases::peer_case(prec),
        cases,
        |p, c| properties::peer_steps(p, &c),
    ));
    add(check(
        pair,
        "per_image_perturbation",
        case_without_bn(prec),
        cases,
        |p, c| semantics::per_image_perturbation(p, &c),
    ));
    add(check(
        pair,
        "anchors_couple_images",
        case_without_bn(prec),
        cases,
        |p, c| semantics::anchors_couple_images(p, &c),
    ));
    add(check(
        pair,
        "degenerate_cases",
        main_case(prec),
        cases,
        |p, c| semantics::degenerate_cases(p, &c),
    ));
    add(check(
        pair,
        "bad_input",
        (main_case(prec), errors::any_corruption()),
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

/// Every corner-suite property on `pair`; returns the failures.
pub fn run_corner(pair: &Pair, cases: u32) -> Vec<String> {
    use cases::corner_case;
    eprintln!("\n{}", pair.label());
    let prec = pair.coarser();
    let mut failures = Vec::new();
    let mut add = |f: Option<String>| failures.extend(f);
    add(check(
        pair,
        "corner_losses",
        corner_case(prec),
        cases,
        |p, c| corner::losses(p, &c),
    ));
    add(check(
        pair,
        "corner_input_gradient",
        corner_case(prec),
        cases,
        |p, c| corner::input_gradient(p, &c),
    ));
    add(check(
        pair,
        "corner_adversarial_view",
        corner_case(prec),
        cases,
        |p, c| corner::adversarial_view(p, &c),
    ));
    add(check(
        pair,
        "corner_step",
        corner_case(prec),
        cases,
        |p, c| corner::step(p, &c),
    ));
    failures
}

/// The main generator's draws so far, one line per precision: accepted,
/// rejected (share) and the rejections per condition.
pub fn generator_report() -> String {
    let mut out = String::new();
    for ((precision, peer), (accepted, rejected)) in cases::rejections() {
        let total: usize = rejected.values().sum();
        let drawn = accepted + total;
        let share = if drawn == 0 {
            0.0
        } else {
            100.0 * total as f64 / drawn as f64
        };
        let why: Vec<String> = rejected
            .iter()
            .map(|(ill, n)| format!("{n} {ill}"))
            .collect();
        let name = match (precision, peer) {
            (Precision::F32, false) => "pairs with f32",
            (Precision::F64, false) => "f64 pairs",
            (Precision::F32, true) => "peer steps, pairs with f32",
            (Precision::F64, true) => "peer steps, f64 pairs",
        };
        out.push_str(&format!(
            "generator ({name}): {drawn} drawn, {total} rejected ({share:.1}%){}{}\n",
            if why.is_empty() { "" } else { ": " },
            why.join("; ")
        ));
    }
    out
}

/// A suite binary's `main`: prints how it draws, runs `run` on every pair,
/// prints the table (error column `value`) and a verdict.
pub fn main(
    suite: &str,
    value: &str,
    run: fn(&Pair, u32) -> Vec<String>,
) -> std::process::ExitCode {
    eprintln!("{}", describe_run(suite));
    let start = Instant::now();
    let mut failures = Vec::new();
    let pairs = pairs();
    if pairs.is_empty() {
        failures.push("CLAE_SUITE_PAIRS selects no backend pair that can run here".to_string());
    }
    for pair in &pairs {
        failures.extend(run(pair, cases()));
    }
    println!("\n{}", crate::metrics::table(value));
    print!("{}", generator_report());
    println!(
        "conformance {suite} suite: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        println!("conformance {suite} suite: all properties hold");
        std::process::ExitCode::SUCCESS
    } else {
        println!(
            "conformance {suite} suite: {} failing properties:",
            failures.len()
        );
        for f in &failures {
            println!("  - {f}");
        }
        std::process::ExitCode::FAILURE
    }
}
