//! `overhead-report`: the overhead report (README's main job). Run through
//! `scripts/report.sh`, which sets up libtorch first; `--help` lists the options.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    clae_benches::overhead::run::restart_with_settings(&args);
    match clae_benches::overhead::run::main_with_args(args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("overhead-report: error: {e}");
            ExitCode::from(2)
        }
    }
}
