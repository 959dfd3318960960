//! `overhead-report`: the overhead report (README's main job). Run through
//! `scripts/report.sh`, which sets up libtorch first; `--help` lists the options.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Two settings are read when the process starts, so the report restarts
    // itself once with them (each only if unset; both are recorded in the
    // report's machine table, and the PyTorch eager child inherits them):
    //
    // * OpenBLAS (the reference's f32 GEMM on AVX-512 CPUs) keeps its worker
    //   threads spinning for 2^28 cycles after every product by default: in
    //   a harness that runs libtorch right after, they would steal its cores.
    //   OPENBLAS_THREAD_TIMEOUT=4 lets them sleep after 2^4.
    // * glibc malloc returns freed memory at the top of its heap to the
    //   kernel once it exceeds a threshold that adapts to each process's
    //   history, and every later step pays page faults to get it back: on
    //   the large MLP that is 20k-28k faults per libtorch step here, a
    //   per-process accident, not a cost of the step. Fixed thresholds
    //   (32 MiB, the largest mmap threshold; trim at 4 GiB) give every
    //   implementation the same allocator. `GLIBC_TUNABLES=` (set, empty)
    //   measures with glibc's defaults instead.
    let wanted = [
        ("OPENBLAS_THREAD_TIMEOUT", "4"),
        (
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296",
        ),
    ];
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if !missing.is_empty() {
        use std::os::unix::process::CommandExt;
        if let Ok(me) = std::env::current_exe() {
            let mut cmd = std::process::Command::new(me);
            cmd.args(&args);
            for (k, v) in &missing {
                cmd.env(k, v);
            }
            let err = cmd.exec();
            eprintln!("overhead-report: could not restart with {missing:?} ({err}); continuing");
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
