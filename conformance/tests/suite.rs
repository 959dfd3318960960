//! The conformance suite (harness-less): every property for every backend
//! pair, then one table of cases and largest relative errors.
//!
//! `PROPTEST_CASES=200 cargo test --release -p clae-conformance --test suite`
//! for a deeper run; `CLAE_SUITE_RANDOM=1` for fresh cases instead of the
//! fixed seed's.

use clae_accelerated::device::Precision as TorchPrecision;
use clae_conformance::backend::{Reference, Torch};
use clae_conformance::metrics::table;
use clae_conformance::suite::{cases, properties::Pair, run_pair};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cases = cases();
    let seed = match clae_conformance::suite::seed() {
        proptest::test_runner::RngSeed::Fixed(s) => format!("seed {s} (PROPTEST_RNG_SEED)"),
        proptest::test_runner::RngSeed::Random => "fresh random seeds (CLAE_SUITE_RANDOM)".into(),
    };
    eprintln!("conformance suite: {cases} cases per property and pair (PROPTEST_CASES), {seed}");
    let mut pairs = vec![
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
    let mut failures = Vec::new();
    for pair in &pairs {
        failures.extend(run_pair(pair, cases));
    }
    println!("\n{}", table());
    if failures.is_empty() {
        println!("conformance suite: all properties hold");
        ExitCode::SUCCESS
    } else {
        println!("conformance suite: {} failing properties:", failures.len());
        for f in &failures {
            println!("  - {f}");
        }
        ExitCode::FAILURE
    }
}
