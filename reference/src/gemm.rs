//! The matrix product every layer and loss uses: `a · b`.
//!
//! For `f64`, and by default, this is `ndarray`'s `dot` (matrixmultiply).
//! For `f32` on CPUs with AVX-512 it is the system BLAS's `sgemm` (Debian's
//! OpenBLAS, which the crate links for LAPACK anyway): the same product,
//! about twice as fast there, where matrixmultiply's kernels stop at AVX2
//! (measured on a 2-core Xeon: 97–146 GFLOP/s against 197–263 for the
//! report's shapes). `f64` stays on matrixmultiply so that the conformance
//! vectors reproduce bit for bit on every CPU of one kernel family.
//!
//! `CLAE_REFERENCE_GEMM=ndarray` or `=blas` overrides the choice (read once).

use crate::real::Real;
use ndarray::{Array2, ArrayView2};
use std::sync::OnceLock;

/// `a · b`. Shapes: `a: m x k`, `b: k x n` → `m x n`.
pub(crate) fn matmul<F: Real>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Array2<F> {
    F::matmul(a, b)
}

/// Which GEMM computes `f32` products here: `"openblas"` or
/// `"matrixmultiply"` (`f64` products always use matrixmultiply).
///
/// ```
/// let g = clae_reference::gemm::f32_backend();
/// assert!(g == "openblas" || g == "matrixmultiply");
/// ```
pub fn f32_backend() -> &'static str {
    if f32_uses_blas() {
        "openblas"
    } else {
        "matrixmultiply"
    }
}

/// Whether `f32` products go to the system BLAS.
pub(crate) fn f32_uses_blas() -> bool {
    static CHOICE: OnceLock<bool> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("CLAE_REFERENCE_GEMM").as_deref() {
        Ok("blas") => true,
        Ok("ndarray") => false,
        _ => avx512(),
    })
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512() -> bool {
    false
}

extern "C" {
    // CBLAS, from the libopenblas that ndarray-linalg's `openblas-system` links.
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        order: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
}

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// A view as CBLAS sees it: `(transpose flag, leading dimension)`, when its
/// memory is a row-major matrix or the transpose of one.
fn blas_layout(a: &ArrayView2<'_, f32>) -> Option<(i32, i32)> {
    let (rows, cols) = a.dim();
    let [s0, s1] = [a.strides()[0], a.strides()[1]];
    let fits = |v: isize| i32::try_from(v).is_ok();
    if (s1 == 1 || cols <= 1) && s0 >= cols.max(1) as isize && fits(s0) {
        Some((NO_TRANS, s0 as i32))
    } else if (s0 == 1 || rows <= 1) && s1 >= rows.max(1) as isize && fits(s1) {
        Some((TRANS, s1 as i32))
    } else {
        None
    }
}

/// `a · b` through `cblas_sgemm` when both views have a BLAS layout and
/// the sizes fit its `int`s; `None` otherwise (the caller uses `dot`).
pub(crate) fn sgemm(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> Option<Array2<f32>> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let (ta, lda) = blas_layout(&a)?;
    let (tb, ldb) = blas_layout(&b)?;
    let (mi, ni, ki) = (
        i32::try_from(m).ok()?,
        i32::try_from(n).ok()?,
        i32::try_from(k).ok()?,
    );
    // `beta = 0`: sgemm writes every element of C without reading it, so C
    // starts uninitialised (no zeroing pass over a weight gradient's size)
    let mut c = Array2::<f32>::uninit((m, n));
    // SAFETY: a and b are valid for the extents CBLAS reads given their
    // transpose flags and leading dimensions (checked by `blas_layout`); c is
    // a fresh, contiguous m x n row-major array with ldc = n, which sgemm
    // with beta = 0 overwrites entirely (it never reads it); `MaybeUninit<f32>`
    // has f32's layout.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            ta,
            tb,
            mi,
            ni,
            ki,
            1.0,
            a.as_ptr(),
            lda,
            b.as_ptr(),
            ldb,
            0.0,
            c.as_mut_ptr().cast::<f32>(),
            ni,
        );
        Some(c.assume_init())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn sgemm_is_the_product_for_every_layout() {
        let a = Array2::<f32>::from_shape_fn((5, 7), |(i, j)| (i * 7 + j) as f32 * 0.1 - 1.0);
        let b = Array2::<f32>::from_shape_fn((7, 3), |(i, j)| (i + 2 * j) as f32 * 0.2 - 0.5);
        let bt = b.t().to_owned();
        let at = a.t().to_owned();
        for (x, y) in [
            (a.view(), b.view()),
            (at.t(), b.view()),
            (a.view(), bt.t()),
            (at.t(), bt.t()),
        ] {
            let want = x.dot(&y);
            let got = sgemm(x, y).expect("a BLAS layout");
            let err = (&got - &want).iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(err < 1e-5, "{err}");
        }
        // a strided view has no BLAS layout: the caller falls back to dot
        let wide = Array2::<f32>::zeros((5, 14));
        assert!(sgemm(wide.slice(ndarray::s![.., ..;2]), b.view()).is_none());
    }
}
