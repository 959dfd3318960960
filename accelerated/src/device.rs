//! Devices, precisions and the libtorch switches that matter for
//! conformance: loading the CUDA backend, TF32, bf16 autocast.
//!
//! # Why the CUDA backend has to be loaded by hand
//!
//! The PyPI libtorch ships the CUDA kernels in `libtorch_cuda.so`. Nothing in
//! a Rust binary references a symbol of that library directly, so the
//! linker's `--as-needed` drops it from the binary's dependencies and the
//! CUDA backend is never registered: `tch::Cuda::is_available()` is then
//! `false` even on a GPU machine, and creating a CUDA tensor fails with
//! "Could not run 'aten::empty.memory_format' with arguments from the 'CUDA'
//! backend". [`load_cuda_backend`] `dlopen`s the library (`RTLD_NOW |
//! RTLD_GLOBAL`) once, which runs its static initialisers and registers the
//! backend; [`cuda_available`] does that before asking libtorch.
//!
//! The load must come **before any CUDA query**: libtorch caches its CUDA
//! hooks on first use, so a `tch::Cuda::is_available()` (or
//! `tch::Device::cuda_if_available()`, `tch::autocast`) made while the
//! backend is missing leaves CUDA unusable for the rest of the process,
//! loaded library or not. So that no caller can get the order wrong, this
//! crate also runs [`load_cuda_backend`] from an ELF constructor
//! (`.init_array`) when the program starts, before `main`; set
//! `CLAE_NO_CUDA_PRELOAD=1` to skip that (the loading test uses it to see
//! the process without the backend).
//!
//! # TF32 and bf16
//!
//! tch 0.24 exposes neither `torch.backends.{cuda.matmul,cudnn}.allow_tf32`
//! nor the autocast dtype. [`set_tf32_allowed`] and [`with_bf16_autocast`]
//! reach the libtorch C++ functions (`at::Context::setAllowTF32CuBLAS`,
//! `setAllowTF32CuDNN`, `at::autocast::set_autocast_dtype`) through `dlsym`
//! with their Itanium-mangled names, calling them with the C calling
//! convention — what these signatures compile to on x86-64 and aarch64
//! Linux. A missing symbol (another libtorch version) is reported as an
//! [`Error::Device`], never a crash.

use crate::error::{Error, Result};
use clae_reference::Real;
use std::ffi::{c_void, CStr, CString};
use std::sync::OnceLock;
use tch::{Device, Kind};

/// Floating-point precision of an encoder and its tensors.
///
/// ```
/// use clae_accelerated::device::Precision;
/// assert_eq!(Precision::F64.kind(), tch::Kind::Double);
/// assert_eq!(Precision::of::<f32>(), Precision::F32);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// `f32` (`torch.float32`).
    F32,
    /// `f64` (`torch.float64`).
    F64,
}

impl Precision {
    /// The libtorch element kind.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::F64 => Kind::Double,
        }
    }

    /// The precision of the Rust element type `F`.
    pub fn of<F: TchReal>() -> Self {
        F::PRECISION
    }

    /// The precision of a libtorch element kind, if it is one of the two
    /// (`Float`, `Double`); other kinds (half, bf16, integers) are not a
    /// precision this crate computes in.
    ///
    /// ```
    /// use clae_accelerated::device::Precision;
    /// assert_eq!(Precision::of_kind(tch::Kind::Float), Some(Precision::F32));
    /// assert_eq!(Precision::of_kind(tch::Kind::Half), None);
    /// ```
    pub fn of_kind(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Float => Some(Precision::F32),
            Kind::Double => Some(Precision::F64),
            _ => None,
        }
    }

    /// `"f32"` or `"f64"`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
    }
}

/// `f32` or `f64`: a reference [`Real`] that libtorch can hold.
///
/// ```
/// use clae_accelerated::device::{Precision, TchReal};
/// assert_eq!(<f64 as TchReal>::PRECISION, Precision::F64);
/// ```
pub trait TchReal: Real + tch::kind::Element {
    /// The matching [`Precision`].
    const PRECISION: Precision;
}

impl TchReal for f32 {
    const PRECISION: Precision = Precision::F32;
}

impl TchReal for f64 {
    const PRECISION: Precision = Precision::F64;
}

/// The outcome of the one attempt to load `libtorch_cuda.so`.
static CUDA_BACKEND: OnceLock<std::result::Result<(), String>> = OnceLock::new();

fn dlerror_message() -> String {
    // SAFETY: dlerror returns either null or a valid C string owned by libc.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown dlopen error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next dl* call.
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}

fn dlopen_global(path: &str) -> std::result::Result<(), String> {
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; the handle is deliberately never closed, so
    // the library stays loaded for the life of the process.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        Err(dlerror_message())
    } else {
        Ok(())
    }
}

/// Loads `libtorch_cuda.so` once per process (later calls return the first
/// outcome). It is looked up by the dynamic loader (the binary's RUNPATH,
/// `LD_LIBRARY_PATH`), then in `$CLAE_TORCH_LIB` and `$LIBTORCH/lib`.
///
/// `Err` carries the loader's message: the library is absent (CPU-only
/// libtorch) or cannot be loaded. Success does not mean a GPU is present —
/// ask [`cuda_available`] for that.
///
/// ```
/// // On a CPU-only machine with the CUDA wheel this loads fine; with a
/// // CPU-only libtorch it reports why.
/// let outcome = clae_accelerated::device::load_cuda_backend();
/// assert_eq!(outcome, clae_accelerated::device::load_cuda_backend());
/// ```
pub fn load_cuda_backend() -> std::result::Result<(), String> {
    CUDA_BACKEND
        .get_or_init(|| {
            let mut errors = Vec::new();
            let mut candidates = vec!["libtorch_cuda.so".to_string()];
            if let Ok(dir) = std::env::var("CLAE_TORCH_LIB") {
                candidates.push(format!("{dir}/libtorch_cuda.so"));
            }
            if let Ok(dir) = std::env::var("LIBTORCH") {
                candidates.push(format!("{dir}/lib/libtorch_cuda.so"));
            }
            for path in candidates {
                match dlopen_global(&path) {
                    Ok(()) => return Ok(()),
                    Err(e) => errors.push(e),
                }
            }
            Err(errors.join("; "))
        })
        .clone()
}

/// Runs [`load_cuda_backend`] at program start (see the module docs).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static PRELOAD_CUDA_BACKEND: extern "C" fn() = preload_cuda_backend;

#[cfg(target_os = "linux")]
extern "C" fn preload_cuda_backend() {
    // Runs before `main`: only libc and the environment are touched.
    if std::env::var_os("CLAE_NO_CUDA_PRELOAD").is_none() {
        let _ = load_cuda_backend();
    }
}

/// Whether [`load_cuda_backend`] has already run in this process (at
/// start-up, unless `CLAE_NO_CUDA_PRELOAD` is set, or on first use).
pub fn cuda_backend_load_attempted() -> bool {
    CUDA_BACKEND.get().is_some()
}

/// Whether a CUDA device can be used: loads the CUDA backend (once), then
/// asks libtorch. Unlike a bare `tch::Cuda::is_available()`, this is `true`
/// on a GPU machine with the PyPI libtorch.
///
/// ```
/// let n = clae_accelerated::device::cuda_device_count();
/// assert_eq!(clae_accelerated::device::cuda_available(), n > 0);
/// ```
pub fn cuda_available() -> bool {
    load_cuda_backend().is_ok() && tch::Cuda::is_available()
}

/// Number of CUDA devices (0 when the backend cannot be loaded).
pub fn cuda_device_count() -> i64 {
    if load_cuda_backend().is_ok() {
        tch::Cuda::device_count()
    } else {
        0
    }
}

/// `Device::Cuda(0)` if [`cuda_available`], else `Device::Cpu`.
///
/// ```
/// let d = clae_accelerated::device::cuda_if_available();
/// assert_eq!(d.is_cuda(), clae_accelerated::device::cuda_available());
/// ```
pub fn cuda_if_available() -> Device {
    if cuda_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    }
}

/// Checks that `device` can hold tensors here (loading the CUDA backend
/// first when it is a CUDA device).
///
/// ```
/// use clae_accelerated::device::ensure_device;
/// assert!(ensure_device(tch::Device::Cpu).is_ok());
/// assert!(ensure_device(tch::Device::Cuda(999)).is_err());
/// ```
pub fn ensure_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(i) => {
            if let Err(e) = load_cuda_backend() {
                return Err(Error::Device(format!(
                    "CUDA device {i} requested but libtorch_cuda.so could not be loaded: {e}"
                )));
            }
            let count = cuda_device_count();
            if (i as i64) < count {
                Ok(())
            } else {
                Err(Error::Device(format!(
                    "CUDA device {i} requested but {count} CUDA device(s) are available"
                )))
            }
        }
        other => Err(Error::Device(format!(
            "device {other:?} is not supported (CPU and CUDA only)"
        ))),
    }
}

/// Looks up a libtorch C++ function by its mangled name.
fn libtorch_symbol(name: &str) -> Result<*mut c_void> {
    let c_name = CString::new(name).map_err(|e| Error::Device(e.to_string()))?;
    // SAFETY: RTLD_DEFAULT searches every loaded object; the name is valid.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c_name.as_ptr()) };
    if sym.is_null() {
        Err(Error::Device(format!(
            "libtorch symbol `{name}` not found (unsupported libtorch version?)"
        )))
    } else {
        Ok(sym)
    }
}

const GLOBAL_CONTEXT: &str = "_ZN2at13globalContextEv";
const SET_TF32_CUBLAS: &str = "_ZN2at7Context18setAllowTF32CuBLASEb";
const SET_TF32_CUDNN: &str = "_ZN2at7Context17setAllowTF32CuDNNEb";
const GET_TF32_CUBLAS: &str = "_ZNK2at7Context15allowTF32CuBLASEv";
const SET_AUTOCAST_DTYPE: &str =
    "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE";
const GET_AUTOCAST_DTYPE: &str = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE";
/// `c10::DeviceType::CUDA`.
const C10_DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16`.
const C10_BFLOAT16: i8 = 15;

/// `at::globalContext()`, the object holding libtorch's global switches.
fn global_context() -> Result<*mut c_void> {
    let f = libtorch_symbol(GLOBAL_CONTEXT)?;
    // SAFETY: `at::Context& at::globalContext()` takes nothing and returns a
    // reference, i.e. a pointer in the C ABI.
    let f: unsafe extern "C" fn() -> *mut c_void = unsafe { std::mem::transmute(f) };
    Ok(unsafe { f() })
}

/// Allows or forbids TF32 in CUDA matrix multiplications (cuBLAS) and
/// convolutions (cuDNN) — `torch.backends.cuda.matmul.allow_tf32` and
/// `torch.backends.cudnn.allow_tf32` together. Conformance runs forbid it
/// (docs/SPEC.md §8: CUDA vs f64 reference within `1e-4`). libtorch's defaults are
/// cuBLAS off, cuDNN on. A global switch: it affects every thread.
///
/// Works without a GPU (it only sets flags), so it can be checked anywhere:
///
/// ```
/// use clae_accelerated::device::{set_tf32_allowed, tf32_allowed};
/// set_tf32_allowed(false).unwrap();
/// assert_eq!(tf32_allowed().unwrap(), false);
/// ```
pub fn set_tf32_allowed(allowed: bool) -> Result<()> {
    let ctx = global_context()?;
    for name in [SET_TF32_CUBLAS, SET_TF32_CUDNN] {
        let f = libtorch_symbol(name)?;
        // SAFETY: `void at::Context::setAllowTF32*(bool)`: a member function
        // taking `this` then a bool.
        let f: unsafe extern "C" fn(*mut c_void, bool) = unsafe { std::mem::transmute(f) };
        unsafe { f(ctx, allowed) };
    }
    Ok(())
}

/// Whether TF32 is allowed in cuBLAS matrix multiplications
/// (`at::globalContext().allowTF32CuBLAS()`).
pub fn tf32_allowed() -> Result<bool> {
    let ctx = global_context()?;
    let f = libtorch_symbol(GET_TF32_CUBLAS)?;
    // SAFETY: `bool at::Context::allowTF32CuBLAS() const`: `this` only.
    let f: unsafe extern "C" fn(*const c_void) -> bool = unsafe { std::mem::transmute(f) };
    Ok(unsafe { f(ctx) })
}

fn autocast_dtype_cuda() -> Result<i8> {
    let f = libtorch_symbol(GET_AUTOCAST_DTYPE)?;
    // SAFETY: `c10::ScalarType at::autocast::get_autocast_dtype(c10::DeviceType)`;
    // both enums are `int8_t`-based.
    let f: unsafe extern "C" fn(i8) -> i8 = unsafe { std::mem::transmute(f) };
    Ok(unsafe { f(C10_DEVICE_CUDA) })
}

fn set_autocast_dtype_cuda(dtype: i8) -> Result<()> {
    let f = libtorch_symbol(SET_AUTOCAST_DTYPE)?;
    // SAFETY: `void at::autocast::set_autocast_dtype(c10::DeviceType, c10::ScalarType)`.
    let f: unsafe extern "C" fn(i8, i8) = unsafe { std::mem::transmute(f) };
    unsafe { f(C10_DEVICE_CUDA, dtype) };
    Ok(())
}

/// The CUDA autocast dtype is bf16 (`torch.get_autocast_dtype("cuda") == torch.bfloat16`).
/// Readable without a GPU.
pub fn cuda_autocast_dtype_is_bf16() -> Result<bool> {
    Ok(autocast_dtype_cuda()? == C10_BFLOAT16)
}

/// Runs `f` under CUDA autocast with bf16 (`torch.autocast("cuda",
/// dtype=torch.bfloat16)`): matrix products and convolutions in bf16,
/// BatchNorm, reductions and the losses in f32. **For benchmarks only** —
/// the numbers are not expected to meet any docs/SPEC.md §8 tolerance. The previous
/// autocast dtype is restored afterwards.
///
/// Errors with [`Error::Device`] when no CUDA device is available.
///
/// ```
/// let r = clae_accelerated::device::with_bf16_autocast(|| 1 + 1);
/// assert_eq!(r.is_ok(), clae_accelerated::device::cuda_available());
/// ```
pub fn with_bf16_autocast<T>(f: impl FnOnce() -> T) -> Result<T> {
    if !cuda_available() {
        return Err(Error::Device(
            "bf16 autocast needs a CUDA device; none is available".into(),
        ));
    }
    let previous = autocast_dtype_cuda()?;
    set_autocast_dtype_cuda(C10_BFLOAT16)?;
    let out = tch::autocast(true, f);
    set_autocast_dtype_cuda(previous)?;
    Ok(out)
}

/// Sets the autocast dtype for CUDA to bf16 and back, returning what was
/// read in between; used by the tests to prove the switch works without a GPU.
#[doc(hidden)]
pub fn probe_bf16_autocast_switch() -> Result<bool> {
    let previous = autocast_dtype_cuda()?;
    set_autocast_dtype_cuda(C10_BFLOAT16)?;
    let seen = cuda_autocast_dtype_is_bf16()?;
    set_autocast_dtype_cuda(previous)?;
    Ok(seen)
}
