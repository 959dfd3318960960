//! Doctests are linked by rustdoc, which does not see the workspace's
//! `build.rustflags` (where `scripts/setup.sh` puts libtorch's rpath), so
//! the rpath is also passed from here: `rustc-link-arg` reaches doctests.

fn main() {
    let dir = std::env::var("CLAE_TORCH_LIB")
        .ok()
        .or_else(|| std::env::var("LIBTORCH").ok().map(|d| format!("{d}/lib")));
    if let Some(dir) = dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=CLAE_TORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
