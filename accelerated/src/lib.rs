//! placeholder
use std::ffi::CString;
pub fn smoke() -> f64 {
    let a = tch::Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0]).reshape([2, 2]);
    let b = a.matmul(&a);
    b.sum(tch::Kind::Double).double_value(&[])
}
pub fn load() -> Result<(), String> {
    let name = CString::new("libtorch_cuda.so").unwrap();
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        let e = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) };
        return Err(e.to_string_lossy().into_owned());
    }
    Ok(())
}
pub fn cuda() -> bool {
    tch::Cuda::is_available()
}
