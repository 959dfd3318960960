//! `digits`: plain contrastive learning vs CLAE on scikit-learn's 8x8 digits
//! (issue 6). Trains every (loss, method, seed), writes the report folder
//! (default `report-out/digits/`) and prints the summary to stdout; progress
//! bars go to stderr. See `digits --help` and the `clae_benches::digits` docs.

use clae_benches::digits::report;
use clae_benches::digits::run::{run, Options, USAGE};
use std::process::ExitCode;

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("digits: error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(rep) => {
            println!("{}", report::summary_table(&rep));
            println!("{}", report::comparison_table(&rep));
            println!("{}\n", report::conclusion(&rep));
            println!(
                "Report written to {}/ (report.md, runs.csv, curves.csv, learning_curves.svg, final_accuracy.svg) in {:.0} s.",
                rep.options.out_dir().display(),
                rep.seconds
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("digits: error: {e}");
            ExitCode::FAILURE
        }
    }
}
