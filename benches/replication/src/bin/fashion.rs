//! `fashion`: does CLAE's adversarial view help on Fashion-MNIST, and does
//! it buy robustness? Trains every cell (appending each to the report
//! folder's `runs.csv` as it finishes; a rerun skips them), writes the
//! report folder (default `report-out/fashion-mnist/`) and prints the
//! result paragraph; progress bars go to stderr. See `fashion --help` and
//! the `clae_replication::fashion` docs.

use clae_replication::fashion::report;
use clae_replication::fashion::run::{run, Options, USAGE};
use std::process::ExitCode;

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fashion: error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options).and_then(|rep| report::write(&rep).map(|_| rep)) {
        Ok(rep) => {
            println!("{}", report::summary_table(&rep));
            println!("{}\n", report::conclusion(&rep));
            println!(
                "Report written to {}/ (report.md, runs.csv, curves.csv, accuracy.svg, accuracy_vs_eps.svg, robustness.svg, learning_curves.svg) in {:.0} s.",
                rep.options.out.display(),
                rep.seconds
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fashion: error: {e}");
            ExitCode::FAILURE
        }
    }
}
