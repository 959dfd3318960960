//! Fully connected layer, PyTorch layout (`weight` is `out x in`).

use crate::check;
use crate::error::Result;
use crate::gemm::matmul;
use crate::real::Real;
use crate::rng::Rng;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

/// `y = x Wᵀ + b`.
///
/// Shapes: `x: N x in`, `w: out x in`, `b: out` → `y: N x out`.
pub(crate) fn linear_forward<F: Real>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    b: ArrayView1<'_, F>,
) -> Array2<F> {
    let mut y = matmul(x, w.t());
    y += &b;
    y
}

/// Backward of [`linear_forward`] to its input: `dx = dy W`.
///
/// Shapes: `dy: N x out`, `w: out x in` → `dx: N x in`.
pub(crate) fn linear_backward_input<F: Real>(
    w: ArrayView2<'_, F>,
    dy: ArrayView2<'_, F>,
) -> Array2<F> {
    matmul(dy, w)
}

/// Backward of [`linear_forward`] to its parameters:
/// `dW = dyᵀ x`, `db = Σ_rows dy`.
///
/// Shapes: `x: N x in`, `dy: N x out` → `(dW: out x in, db: out)`.
pub(crate) fn linear_backward_params<F: Real>(
    x: ArrayView2<'_, F>,
    dy: ArrayView2<'_, F>,
) -> (Array2<F>, Array1<F>) {
    (matmul(dy.t(), x), dy.sum_axis(Axis(0)))
}

/// A linear layer's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear<F> {
    /// `out x in`.
    pub weight: Array2<F>,
    /// `out`.
    pub bias: Array1<F>,
}

impl<F: Real> Linear<F> {
    /// PyTorch's default `nn.Linear` initialisation: `kaiming_uniform_(a = √5)`
    /// for the weight, which is `U(-k, k)` with `k = 1/√in`, and `U(-k, k)`
    /// for the bias. Draws come from [`Rng::uniform_in`] in `f64`, weight
    /// first (row-major), then bias, then rounded to `F`.
    ///
    /// Errors: [`crate::ClaeError::TooLarge`] when `out x in` cannot be
    /// allocated (checked before anything is).
    pub(crate) fn init(fan_in: usize, fan_out: usize, rng: &mut Rng) -> Result<Self> {
        let k = 1.0 / (fan_in as f64).sqrt();
        let len = check::elements("linear weight", &[fan_out, fan_in])?;
        let w = check::try_filled("linear weight", len, || F::c(rng.uniform_in(-k, k)))?;
        let b = check::try_filled("linear bias", fan_out, || F::c(rng.uniform_in(-k, k)))?;
        Ok(Linear {
            weight: Array2::from_shape_vec((fan_out, fan_in), w)
                .expect("len = fan_out * fan_in was allocated above"),
            bias: Array1::from_vec(b),
        })
    }

    /// All zeros (allocated fallibly, as [`Linear::init`]).
    pub(crate) fn zeros(fan_in: usize, fan_out: usize) -> Result<Self> {
        let len = check::elements("linear weight", &[fan_out, fan_in])?;
        let w = check::try_filled("linear weight", len, F::zero)?;
        let b = check::try_filled("linear bias", fan_out, F::zero)?;
        Ok(Linear {
            weight: Array2::from_shape_vec((fan_out, fan_in), w)
                .expect("len = fan_out * fan_in was allocated above"),
            bias: Array1::from_vec(b),
        })
    }

    /// `in`, the input width.
    pub fn fan_in(&self) -> usize {
        self.weight.ncols()
    }

    /// `out`, the output width.
    pub fn fan_out(&self) -> usize {
        self.weight.nrows()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn forward_and_backward_on_small_numbers() {
        let x = array![[1.0, 2.0]];
        let w = array![[1.0, 1.0], [0.0, 2.0]];
        let y = linear_forward(x.view(), w.view(), array![0.5, -1.0].view());
        assert_eq!(y, array![[3.5, 3.0]]);
        let w1 = array![[1.0, 1.0]];
        let dy = array![[3.0]];
        assert_eq!(
            linear_backward_input(w1.view(), dy.view()),
            array![[3.0, 3.0]]
        );
        let (dw, db) = linear_backward_params(x.view(), dy.view());
        assert_eq!((dw, db), (array![[3.0, 6.0]], array![3.0]));
    }

    #[test]
    fn init_is_pytorch_default_range() {
        let l = Linear::<f64>::init(4, 3, &mut Rng::new(0)).unwrap();
        assert_eq!(l.weight.dim(), (3, 4));
        assert!(l.weight.iter().chain(l.bias.iter()).all(|w| w.abs() <= 0.5));
        assert!(Linear::<f32>::init(usize::MAX, 2, &mut Rng::new(0)).is_err());
    }
}
