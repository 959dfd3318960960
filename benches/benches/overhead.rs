//! `cargo bench --bench overhead [-- OPTIONS]`: the overhead report, as the
//! `overhead-report` binary makes it (`scripts/report.sh` is the same with
//! setup first; `-- --help` lists the options, e.g. `-- --quick`,
//! `-- --only large`). Harness-less: cargo's own `--bench` flag is dropped.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    clae_benches::overhead::run::restart_with_settings(&args);
    match clae_benches::overhead::run::main_with_args(args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("overhead bench: error: {e}");
            ExitCode::from(2)
        }
    }
}
