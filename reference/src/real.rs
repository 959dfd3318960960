//! The floating-point element type: the reference is generic over `f32` and
//! `f64`.

use ndarray::{LinalgScalar, ScalarOperand};
use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// `f32` or `f64`: everything the reference needs from a real number.
///
/// ```
/// use clae_reference::Real;
/// fn half<F: Real>(x: F) -> F { x * F::c(0.5) }
/// assert_eq!(half(3.0f32), 1.5);
/// assert_eq!(f64::NAME, "f64");
/// ```
pub trait Real:
    num_traits::Float
    + LinalgScalar
    + ScalarOperand
    + Debug
    + Display
    + Default
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Send
    + Sync
    + 'static
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Converts an `f64` constant (rounding to nearest for `f32`).
    fn c(x: f64) -> Self;
    /// Widens to `f64` (exact for both types).
    fn as_f64(self) -> f64;

    /// `a · b` (see `gemm.rs` for which GEMM computes it).
    fn matmul(
        a: ndarray::ArrayView2<'_, Self>,
        b: ndarray::ArrayView2<'_, Self>,
    ) -> ndarray::Array2<Self> {
        a.dot(&b)
    }
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    #[inline]
    fn c(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn matmul(
        a: ndarray::ArrayView2<'_, f32>,
        b: ndarray::ArrayView2<'_, f32>,
    ) -> ndarray::Array2<f32> {
        if crate::gemm::f32_uses_blas() {
            if let Some(c) = crate::gemm::sgemm(a, b) {
                return c;
            }
        }
        a.dot(&b)
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    #[inline]
    fn c(x: f64) -> Self {
        x
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self
    }
}
