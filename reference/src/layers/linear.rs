//! Fully connected layer, PyTorch layout (`weight` is `out x in`).

use crate::real::Real;
use crate::rng::Rng;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

/// `y = x Wᵀ + b`.
///
/// Shapes: `x: N x in`, `w: out x in`, `b: out` → `y: N x out`.
///
/// ```
/// use ndarray::array;
/// use clae_reference::layers::linear_forward;
/// let y = linear_forward(array![[1.0, 2.0]].view(), array![[1.0, 1.0], [0.0, 2.0]].view(),
///                        array![0.5, -1.0].view());
/// assert_eq!(y, array![[3.5, 3.0]]);
/// ```
pub fn linear_forward<F: Real>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    b: ArrayView1<'_, F>,
) -> Array2<F> {
    let mut y = x.dot(&w.t());
    y += &b;
    y
}

/// Gradients of a linear layer; each is `None` when it was not asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads<F> {
    /// `dL/dx = dy W`, `N x in`.
    pub x: Option<Array2<F>>,
    /// `dL/dW = dyᵀ x`, `out x in`.
    pub weight: Option<Array2<F>>,
    /// `dL/db = Σ_rows dy`, `out`.
    pub bias: Option<Array1<F>>,
}

/// Backward of [`linear_forward`].
///
/// Shapes: `x: N x in`, `w: out x in`, `dy: N x out`.
/// `need_x` asks for the input gradient, `need_params` for `dW` and `db`.
///
/// ```
/// use ndarray::array;
/// use clae_reference::layers::linear_backward;
/// let g = linear_backward(array![[1.0, 2.0]].view(), array![[1.0, 1.0]].view(),
///                         array![[3.0]].view(), true, true);
/// assert_eq!(g.x.unwrap(), array![[3.0, 3.0]]);
/// assert_eq!(g.weight.unwrap(), array![[3.0, 6.0]]);
/// assert_eq!(g.bias.unwrap(), array![3.0]);
/// ```
pub fn linear_backward<F: Real>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    dy: ArrayView2<'_, F>,
    need_x: bool,
    need_params: bool,
) -> LinearGrads<F> {
    LinearGrads {
        x: need_x.then(|| dy.dot(&w)),
        weight: need_params.then(|| dy.t().dot(&x)),
        bias: need_params.then(|| dy.sum_axis(Axis(0))),
    }
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
    /// ```
    /// use clae_reference::{layers::Linear, rng::Rng};
    /// let l = Linear::<f64>::init(4, 3, &mut Rng::new(0));
    /// assert_eq!(l.weight.dim(), (3, 4));
    /// assert!(l.weight.iter().all(|w| w.abs() <= 0.5));
    /// ```
    pub fn init(fan_in: usize, fan_out: usize, rng: &mut Rng) -> Self {
        let k = 1.0 / (fan_in as f64).sqrt();
        let weight =
            Array2::from_shape_simple_fn((fan_out, fan_in), || F::c(rng.uniform_in(-k, k)));
        let bias = Array1::from_shape_simple_fn(fan_out, || F::c(rng.uniform_in(-k, k)));
        Linear { weight, bias }
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
