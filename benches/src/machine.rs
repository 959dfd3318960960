//! The machine and software a report was measured on.

use std::time::{SystemTime, UNIX_EPOCH};

/// Machine, threads, versions and date of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs the process may use.
    pub logical_cpus: usize,
    /// Threads of the reference's GEMM (matrixmultiply), and where that comes from.
    pub reference_threads: String,
    /// libtorch's intra-op threads.
    pub torch_threads: i64,
    /// `OMP_WAIT_POLICY` as set for this process (libtorch's OpenMP threads
    /// spin between parallel regions unless it is `PASSIVE`).
    pub omp_wait_policy: String,
    /// The C allocator's settings (`GLIBC_TUNABLES`), which libtorch, the
    /// reference and the PyTorch eager child all allocate through.
    pub malloc: String,
    /// CUDA device(s), or why there is none.
    pub cuda: String,
    /// `rustc --version` of the compiler that built the report.
    pub rustc: String,
    /// Versions of tch, torch-sys, libtorch, ndarray, matrixmultiply.
    pub versions: Vec<(String, String)>,
    /// Operating system kernel.
    pub kernel: String,
    /// `git` commit of the source tree the report was run from, and whether
    /// tracked files had uncommitted changes.
    pub source: String,
    /// Start of the run, UTC, `YYYY-MM-DD HH:MM:SS`.
    pub date: String,
    /// `/proc/loadavg` at the start.
    pub load_before: String,
    /// `/proc/loadavg` at the end (filled in when the run finishes).
    pub load_after: String,
}

/// The CPU model from `/proc/cpuinfo` (`unknown` where there is none).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Threads of the global rayon pool the reference's elementwise work uses,
/// as rayon sizes it: `RAYON_NUM_THREADS`, else the logical CPUs.
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

impl Machine {
    /// Collects everything from this process and machine. `cuda` describes
    /// the CUDA situation (the caller knows whether it looked).
    pub fn detect(cuda: String) -> Self {
        let cpu_model = cpu_model();
        let logical_cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let matmul = match std::env::var("MATMUL_NUM_THREADS") {
            Ok(v) => format!("{v} threads (MATMUL_NUM_THREADS)"),
            Err(_) => "its default threads (physical cores, at most 4)".into(),
        };
        let reference_threads = format!(
            "f64 products: matrixmultiply, {matmul}; f32 products: {} (OPENBLAS_THREAD_TIMEOUT {}); elementwise work: rayon, {} threads ({logical_cpus} logical CPUs)",
            clae_reference::gemm::f32_backend(),
            std::env::var("OPENBLAS_THREAD_TIMEOUT").unwrap_or_else(|_| "unset: OpenBLAS spins 2^28 cycles after each product".into()),
            rayon_threads(),
        );
        let libtorch = libtorch_version();
        Machine {
            cpu_model,
            logical_cpus,
            reference_threads,
            torch_threads: i64::from(tch::get_num_threads()),
            omp_wait_policy: std::env::var("OMP_WAIT_POLICY")
                .unwrap_or_else(|_| "unset (libgomp default: spin, then sleep)".into()),
            malloc: match std::env::var("GLIBC_TUNABLES") {
                Ok(v) if !v.is_empty() => format!("GLIBC_TUNABLES={v} (every implementation)"),
                _ => "glibc defaults (adaptive mmap and trim thresholds)".into(),
            },
            cuda,
            rustc: env!("CLAE_RUSTC_VERSION").to_string(),
            versions: vec![
                ("tch".into(), env!("CLAE_TCH_VERSION").into()),
                ("torch-sys".into(), env!("CLAE_TORCH_SYS_VERSION").into()),
                ("libtorch".into(), libtorch),
                ("ndarray".into(), env!("CLAE_NDARRAY_VERSION").into()),
                (
                    "matrixmultiply".into(),
                    env!("CLAE_MATRIXMULTIPLY_VERSION").into(),
                ),
            ],
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| format!("Linux {}", s.trim()))
                .unwrap_or_else(|_| std::env::consts::OS.into()),
            source: git_source(),
            date: utc_now(),
            load_before: load_average(),
            load_after: String::new(),
        }
    }
}

/// `abc1234` or `abc1234 + uncommitted changes in 3 tracked files`, from
/// `git` in the current directory (`unknown` without git).
pub fn git_source() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| s.lines().count())
        .unwrap_or(0);
    if dirty == 0 {
        head.trim().to_string()
    } else {
        format!(
            "{} + uncommitted changes in {dirty} tracked files",
            head.trim()
        )
    }
}

/// The one-minute load average, if readable.
pub fn load_1min() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The first three fields of `/proc/loadavg` (or `unknown`).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// libtorch's version from `$LIBTORCH/version.py` (the PyTorch wheel's),
/// looked up at run time, then at build time.
pub fn libtorch_version() -> String {
    let dirs = [
        std::env::var("LIBTORCH").ok(),
        option_env!("LIBTORCH").map(String::from),
    ];
    for dir in dirs.into_iter().flatten() {
        if let Ok(s) = std::fs::read_to_string(format!("{dir}/version.py")) {
            if let Some(v) = s
                .lines()
                .find(|l| l.starts_with("__version__"))
                .and_then(|l| l.split('\'').nth(1))
            {
                return v.to_string();
            }
        }
    }
    "unknown".into()
}

/// Now, UTC, as `YYYY-MM-DD HH:MM:SS`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
///
/// ```
/// use clae_benches::machine::format_utc;
/// assert_eq!(format_utc(0), "1970-01-01 00:00:00");
/// assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
/// ```
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
