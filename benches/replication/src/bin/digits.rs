//! `digits`: plain contrastive learning vs CLAE on scikit-learn's 8x8 digits
//! (issue 6). Trains every (loss, method, seed), writes the report folder
//! (default `report-out/digits/`) and prints the summary to stdout; progress
//! bars go to stderr. See `digits --help` and the `clae_replication::digits` docs.

use clae_replication::digits::report;
use clae_replication::digits::run::{run, Options, USAGE};
use clae_replication::digits::train::Backend;
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
    if matches!(options.backend, Backend::TchCpuF32 | Backend::TchCudaF32) {
        // libtorch's CPU matmuls run in MKL, whose thread count
        // `tch::set_num_threads` does not reach; MKL reads this variable at
        // its first call. Set here, while the process is single-threaded.
        if std::env::var_os("MKL_NUM_THREADS").is_none() {
            std::env::set_var("MKL_NUM_THREADS", options.torch_threads.to_string());
        }
    }
    match run(&options).and_then(|rep| report::write(&rep).map(|_| rep)) {
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
