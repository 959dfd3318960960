//! Row-wise L2 normalisation with a clamped norm, as
//! `torch.nn.functional.normalize(u, dim=1, eps)`.

use crate::real::Real;
use ndarray::{Array2, ArrayView2, Axis, Zip};

/// The encoder's clamp, `1e-12` (PyTorch's default for `F.normalize`).
pub const NORMALIZE_EPS: f64 = 1e-12;

/// `‖row‖₂`: `sqrt(Σ v²)`, and where the sum of squares overflows (a row
/// beyond `sqrt(max F)`, e.g. `1e20` in `f32`) the same norm as
/// `m · sqrt(Σ (v/m)²)`, `m = max|v|` (libtorch accumulates in a wider type;
/// the norm itself is representable).
fn row_norm<F: Real>(row: ndarray::ArrayView1<'_, F>) -> F {
    let squares = row.dot(&row);
    if squares.is_finite() {
        return squares.sqrt();
    }
    let m = row.fold(F::zero(), |m, &v| if v.abs() > m { v.abs() } else { m });
    if !m.is_finite() || m == F::zero() {
        return squares.sqrt();
    }
    let scaled = row.mapv(|v| v / m);
    m * scaled.dot(&scaled).sqrt()
}

/// `z_i = u_i / max(‖u_i‖₂, eps)` per row. Shapes: `u: N x d` → `z: N x d`.
///
/// A zero row stays zero (no NaN).
pub(crate) fn l2_normalize_forward<F: Real>(u: ArrayView2<'_, F>, eps: f64) -> Array2<F> {
    let eps = F::c(eps);
    let mut z = u.to_owned();
    for mut row in z.axis_iter_mut(Axis(0)) {
        let norm = row_norm(row.view());
        let denom = if norm > eps { norm } else { eps };
        row.mapv_inplace(|v| v / denom);
    }
    z
}

/// Backward of [`l2_normalize_forward`], row by row with `n = ‖u_i‖`:
///
/// * `n >= eps`: `du_i = (dz_i − ⟨dz_i, z_i⟩ z_i) / n` (the radial part removed);
/// * `n <  eps`: `du_i = dz_i / eps` (the clamp is constant; PyTorch's
///   `clamp_min` passes no gradient below its bound).
///
/// Shapes: `u, z, dz: N x d` → `du: N x d`.
pub(crate) fn l2_normalize_backward<F: Real>(
    u: ArrayView2<'_, F>,
    z: ArrayView2<'_, F>,
    dz: ArrayView2<'_, F>,
    eps: f64,
) -> Array2<F> {
    let eps = F::c(eps);
    let mut du = dz.to_owned();
    Zip::from(du.rows_mut())
        .and(u.rows())
        .and(z.rows())
        .for_each(|mut du, u, z| {
            let norm = row_norm(u);
            if norm >= eps {
                let radial = du.dot(&z);
                Zip::from(&mut du)
                    .and(&z)
                    .for_each(|g, &zv| *g = (*g - radial * zv) / norm);
            } else {
                du.mapv_inplace(|g| g / eps);
            }
        });
    du
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn small_cases() {
        let z = l2_normalize_forward(array![[3.0, 4.0], [0.0, 0.0]].view(), 1e-12);
        assert_eq!(z, array![[0.6, 0.8], [0.0, 0.0]]);
        let u = array![[2.0, 0.0]];
        let z = l2_normalize_forward(u.view(), 1e-12);
        let du = l2_normalize_backward(u.view(), z.view(), array![[1.0, 1.0]].view(), 1e-12);
        assert_eq!(du, array![[0.0, 0.5]]);
    }

    #[test]
    fn a_row_whose_squares_overflow_still_normalises() {
        // 1e30^2 overflows f32; the norm 1e30 * sqrt(2) does not
        let u = array![[1e30f32, -1e30], [3.0, 4.0]];
        let z = l2_normalize_forward(u.view(), 1e-12);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((z[[0, 0]] - h).abs() < 1e-7 && (z[[0, 1]] + h).abs() < 1e-7);
        assert_eq!(z.row(1), array![0.6f32, 0.8]);
        let du = l2_normalize_backward(
            u.view(),
            z.view(),
            array![[1.0f32, 0.0], [0.0, 0.0]].view(),
            1e-12,
        );
        assert!(du.iter().all(|v| v.is_finite()) && du[[0, 0]] > 0.0);
    }

    #[test]
    fn scaling_a_row_leaves_its_embedding_unchanged() {
        let mut rng = crate::rng::Rng::new(65);
        let u = ndarray::Array2::from_shape_simple_fn((6, 4), || rng.normal());
        let z = l2_normalize_forward(u.view(), NORMALIZE_EPS);
        for c in [1e-6, 0.3, 2.0, 1e6] {
            let mut scaled = u.clone();
            scaled.row_mut(2).mapv_inplace(|v| v * c);
            let zs = l2_normalize_forward(scaled.view(), NORMALIZE_EPS);
            let err = (&zs - &z).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(err < 1e-15, "c = {c}: {err:e}");
            // and only that row was touched
            for i in [0, 1, 3, 4, 5] {
                assert_eq!(zs.row(i), z.row(i));
            }
        }
        // every row of the output has unit norm
        for row in z.rows() {
            assert!((row.dot(&row) - 1.0).abs() < 1e-15);
        }
    }
}
