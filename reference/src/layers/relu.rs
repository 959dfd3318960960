//! Rectified linear unit.

use crate::real::Real;
use ndarray::{Array2, ArrayView2, Zip};

/// `y = max(x, 0)`; a NaN stays NaN, as in PyTorch (so a non-finite value
/// is never hidden). Shapes: `x: N x h` → `y: N x h`.
pub(crate) fn relu_forward<F: Real>(x: ArrayView2<'_, F>) -> Array2<F> {
    Zip::from(&x).par_map_collect(|&v| if v <= F::zero() { F::zero() } else { v })
}

/// `dx = dy ⊙ [y > 0]`, written with the *output* `y` as PyTorch's
/// `threshold_backward` does (so the derivative at 0 is 0).
/// Shapes: `y, dy: N x h` → `dx: N x h`.
pub(crate) fn relu_backward<F: Real>(y: ArrayView2<'_, F>, dy: ArrayView2<'_, F>) -> Array2<F> {
    Zip::from(&y)
        .and(&dy)
        .par_map_collect(|&y, &g| if y > F::zero() { g } else { F::zero() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn relu_and_its_derivative_at_zero() {
        assert_eq!(relu_forward(array![[-1.0, 2.0]].view()), array![[0.0, 2.0]]);
        let dx = relu_backward(array![[0.0, 2.0]].view(), array![[5.0, 7.0]].view());
        assert_eq!(dx, array![[0.0, 7.0]]);
    }
}
