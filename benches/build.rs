//! Records the compiler and the locked versions of the libraries the
//! overhead report names (tch, torch-sys, ndarray, matrixmultiply), so the
//! report states exactly what it measured. (libtorch's rpath for binaries
//! and doctests comes from `build.rustflags` / `build.rustdocflags`, which
//! `scripts/setup.sh` writes into `.cargo/config.toml`.)

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CLAE_RUSTC_VERSION={version}");

    let lock_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    println!("cargo:rerun-if-changed={lock_path}");
    let lock = std::fs::read_to_string(lock_path).unwrap_or_default();
    for (krate, var) in [
        ("tch", "CLAE_TCH_VERSION"),
        ("torch-sys", "CLAE_TORCH_SYS_VERSION"),
        ("ndarray", "CLAE_NDARRAY_VERSION"),
        ("matrixmultiply", "CLAE_MATRIXMULTIPLY_VERSION"),
    ] {
        println!("cargo:rustc-env={var}={}", locked_version(&lock, krate));
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// Every locked version of `krate` in a Cargo.lock, joined by ` + ` (e.g.
/// ndarray is locked twice: the workspace's and the one tch depends on).
fn locked_version(lock: &str, krate: &str) -> String {
    let mut versions = Vec::new();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{krate}\"") {
            if let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
            {
                versions.push(v.trim_matches('"').to_string());
            }
        }
    }
    if versions.is_empty() {
        "unknown".into()
    } else {
        versions.join(" + ")
    }
}
