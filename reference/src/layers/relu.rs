//! Rectified linear unit.

use crate::real::Real;
use ndarray::{Array2, ArrayView2, Zip};

/// `y = max(x, 0)`, any shape (here `N x h`).
///
/// ```
/// use ndarray::array;
/// use clae_reference::layers::relu_forward;
/// assert_eq!(relu_forward(array![[-1.0, 2.0]].view()), array![[0.0, 2.0]]);
/// ```
pub fn relu_forward<F: Real>(x: ArrayView2<'_, F>) -> Array2<F> {
    x.mapv(|v| if v > F::zero() { v } else { F::zero() })
}

/// `dx = dy ⊙ [y > 0]`, written with the *output* `y` as PyTorch's
/// `threshold_backward` does (so the derivative at 0 is 0).
///
/// ```
/// use ndarray::array;
/// use clae_reference::layers::relu_backward;
/// let dx = relu_backward(array![[0.0, 2.0]].view(), array![[5.0, 7.0]].view());
/// assert_eq!(dx, array![[0.0, 7.0]]);
/// ```
pub fn relu_backward<F: Real>(y: ArrayView2<'_, F>, dy: ArrayView2<'_, F>) -> Array2<F> {
    Zip::from(&y)
        .and(&dy)
        .map_collect(|&y, &g| if y > F::zero() { g } else { F::zero() })
}
