//! Shared helpers for the integration tests.
#![allow(dead_code)]

use clae_accelerated::convert::{array_from_tensor, tensor_from_array};
use clae_reference::rng::Rng;
use ndarray::{Array2, ArrayD, IxDyn};
use tch::{Device, Tensor};

/// `N x D` array of standard normals from the reference's generator.
pub fn normal2(n: usize, d: usize, seed: u64) -> Array2<f64> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_simple_fn((n, d), || rng.normal())
}

/// Any-shape array of standard normals.
pub fn normal_d(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut rng = Rng::new(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.normal())
}

/// Rows scaled to unit norm.
pub fn unit_rows(a: &Array2<f64>) -> Array2<f64> {
    let mut out = a.clone();
    for mut row in out.rows_mut() {
        let n = row.dot(&row).sqrt();
        row.mapv_inplace(|v| v / n);
    }
    out
}

/// f64 CPU tensor of an array.
pub fn t64<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Tensor {
    tensor_from_array(a.view(), Device::Cpu).unwrap()
}

/// f32 CPU tensor of an f64 array (rounded).
pub fn t32<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Tensor {
    let a32 = a.mapv(|v| v as f32);
    tensor_from_array(a32.view(), Device::Cpu).unwrap()
}

/// Values of a tensor as f64.
pub fn arr(t: &Tensor) -> ArrayD<f64> {
    array_from_tensor::<f64>(t).unwrap()
}

/// docs/SPEC.md §8's error: `max|a − b| / max|b|` (b the reference side); where
/// `max|b| = 0`, `max|a|` (which must then be exactly 0).
pub fn rel_err<D: ndarray::Dimension, E: ndarray::Dimension>(
    a: &ndarray::Array<f64, D>,
    b: &ndarray::Array<f64, E>,
) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    // A NaN anywhere must not be swallowed by `f64::max`.
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f64, |m, d| if d.is_nan() || d > m { d } else { m });
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// `rel_err` of two tensors.
pub fn rel_err_t(a: &Tensor, b: &Tensor) -> f64 {
    rel_err(&arr(a), &arr(b))
}

/// The attacks the recipe tests sweep: FGSM from P, FGSM from Q, and three
/// PGD steps of 0.01 from P.
pub fn attack_settings() -> [(
    clae_reference::adversarial::QStart,
    clae_reference::adversarial::Attack,
); 3] {
    use clae_reference::adversarial::{Attack, QStart};
    [
        (QStart::P, Attack::Fgsm),
        (QStart::Q, Attack::Fgsm),
        (
            QStart::P,
            Attack::Pgd {
                steps: 3,
                eta: 0.01,
            },
        ),
    ]
}
