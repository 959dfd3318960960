//! The CUDA backend really gets loaded (the reason for `device::load_cuda_backend`).
//!
//! With the PyPI libtorch, the linker's `--as-needed` drops
//! `libtorch_cuda.so` from the binary, so libtorch has no CUDA backend and
//! `tch::Cuda::is_available()` is false even on a GPU machine. The first
//! test creates a CUDA tensor before and after the `dlopen`, in a child
//! process started with `CLAE_NO_CUDA_PRELOAD=1` (so the crate's start-up
//! loader stays out of the way): before, libtorch does not know the CUDA
//! backend at all; after, it does — creating the tensor either works (GPU
//! present) or fails for lack of a driver. That proves the loading works on
//! a machine without a GPU too. The second shows the start-up loader did
//! its job in an ordinary process, before any code ran.

use std::io::Write;
use std::process::Command;
use tch::{Device, Kind, Tensor};

const NO_BACKEND: &str = "with arguments from the 'CUDA' backend";
const CHILD: &str = "CLAE_NO_CUDA_PRELOAD";

fn cuda_tensor() -> Result<(), String> {
    Tensor::f_zeros([1], (Kind::Float, Device::Cuda(0)))
        .map(|_| ())
        .map_err(|e| {
            e.to_string()
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect()
        })
}

#[test]
fn dlopen_registers_the_cuda_backend() {
    let mut err = std::io::stderr();
    if std::env::var_os(CHILD).is_none() {
        // Re-run exactly this test in a fresh process without the preload.
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([
                "--exact",
                "dlopen_registers_the_cuda_backend",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let _ = err.write_all(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed:\n{stdout}");
        assert!(stdout.contains("1 passed"), "child ran no test:\n{stdout}");
        return;
    }
    assert!(
        !clae_accelerated::device::cuda_backend_load_attempted(),
        "preload was not skipped"
    );
    let before = cuda_tensor();
    if let Err(e) = clae_accelerated::device::load_cuda_backend() {
        let _ = writeln!(
            err,
            "libtorch_cuda.so cannot be loaded ({e}): a CPU-only libtorch; nothing to prove here"
        );
        return;
    }
    let after = cuda_tensor();
    let _ = writeln!(
        err,
        "CUDA tensor before loading: {before:?}\nCUDA tensor after loading:  {after:?}"
    );
    match &before {
        Err(e) => assert!(
            e.contains(NO_BACKEND),
            "unexpected error before loading: {e}"
        ),
        Ok(()) => {
            let _ = writeln!(err, "libtorch_cuda.so was already linked into this binary");
        }
    }
    if let Err(e) = &after {
        assert!(
            !e.contains(NO_BACKEND),
            "the CUDA backend is still not registered: {e}"
        );
    }
    assert_eq!(clae_accelerated::device::cuda_available(), after.is_ok());
}

#[test]
fn the_backend_is_loaded_at_start_up() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    // Nothing in this test called the loader; the start-up constructor did.
    assert!(clae_accelerated::device::cuda_backend_load_attempted());
    if clae_accelerated::device::load_cuda_backend().is_ok() {
        // so even a bare tch query first is safe
        let direct = tch::Cuda::is_available();
        if let Err(e) = cuda_tensor() {
            assert!(!e.contains(NO_BACKEND), "{e}");
            assert!(!e.contains("without ATen_cuda library"), "{e}");
        }
        assert_eq!(direct, clae_accelerated::device::cuda_available());
    }
}
