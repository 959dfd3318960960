//! `overhead-report`: the overhead report (README's main job). Run through
//! `scripts/report.sh`, which sets up libtorch first; `--help` lists the options.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // OpenBLAS (the reference's f32 GEMM on AVX-512 CPUs) keeps its worker
    // threads spinning for 2^28 cycles after every product by default: in
    // a harness that runs libtorch right after, they would steal its cores.
    // OPENBLAS_THREAD_TIMEOUT is read when the library loads, so the report
    // restarts itself once with 2^4 (recorded in the report's machine table).
    if std::env::var_os("OPENBLAS_THREAD_TIMEOUT").is_none() {
        use std::os::unix::process::CommandExt;
        if let Ok(me) = std::env::current_exe() {
            let err = std::process::Command::new(me)
                .args(&args)
                .env("OPENBLAS_THREAD_TIMEOUT", "4")
                .exec();
            eprintln!("overhead-report: could not restart with OPENBLAS_THREAD_TIMEOUT=4 ({err}); continuing");
        }
    }
    match clae_benches::overhead::run::main_with_args(args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("overhead-report: error: {e}");
            ExitCode::from(2)
        }
    }
}
