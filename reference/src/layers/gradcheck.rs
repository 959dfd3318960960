//! Finite-difference checks in f64 of every layer's backward pass (the
//! encoder, losses and steps are checked in `tests/gradcheck.rs`). Central
//! differences with a step of `1e-6`; the error of a tensor is
//! `max|analytic − fd| / max|fd|` (docs/SPEC.md §8), below `1e-6`.

use super::*;
use crate::rng::Rng;
use ndarray::{Array, Array1, Array2, Dimension};

const H: f64 = 1e-6;
const FD_TOL: f64 = 1e-6;

fn randn(rng: &mut Rng, n: usize, m: usize) -> Array2<f64> {
    Array2::from_shape_simple_fn((n, m), || rng.normal())
}

fn randv(rng: &mut Rng, n: usize) -> Array1<f64> {
    Array1::from_shape_simple_fn(n, || rng.normal())
}

/// Central differences of a scalar function of one array (the divisor is
/// the actual distance between the two perturbed points).
fn fd_gradient<D: Dimension>(
    x: &Array<f64, D>,
    h: f64,
    mut f: impl FnMut(&Array<f64, D>) -> f64,
) -> Array<f64, D> {
    let mut xv = x.as_standard_layout().into_owned();
    let mut g = Vec::with_capacity(xv.len());
    for j in 0..xv.len() {
        let orig = xv.as_slice().expect("standard layout")[j];
        let (plus, minus) = (orig + h, orig - h);
        xv.as_slice_mut().expect("standard layout")[j] = plus;
        let fp = f(&xv);
        xv.as_slice_mut().expect("standard layout")[j] = minus;
        let fm = f(&xv);
        xv.as_slice_mut().expect("standard layout")[j] = orig;
        g.push((fp - fm) / (plus - minus));
    }
    Array::from_shape_vec(x.raw_dim(), g).expect("same length")
}

/// docs/SPEC.md §8: `max|a − b| / max|b|`; NaN never passes.
fn check(name: &str, a: &Array<f64, impl Dimension>, b: &Array<f64, impl Dimension>) {
    let a = a.view().into_dyn();
    let b = b.view().into_dyn();
    assert_eq!(a.shape(), b.shape(), "{name}: shapes differ");
    let nan_max = |m: f64, v: f64| if v.is_nan() || v > m { v } else { m };
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, nan_max);
    let scale = b.iter().map(|v| v.abs()).fold(0.0, nan_max);
    let err = if scale == 0.0 { diff } else { diff / scale };
    println!("FD-CHECK {name:<58} max rel err = {err:.3e}");
    assert!(
        err < FD_TOL,
        "{name}: finite-difference relative error {err:.3e}"
    );
}

#[test]
fn linear_backward_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let (x, w, b) = (
        randn(&mut rng, 5, 4),
        randn(&mut rng, 3, 4),
        randv(&mut rng, 3),
    );
    let r = randn(&mut rng, 5, 3);
    let f = |x: &Array2<f64>, w: &Array2<f64>, b: &Array1<f64>| {
        (linear_forward(x.view(), w.view(), b.view()) * &r).sum()
    };
    let dx = linear_backward_input(w.view(), r.view());
    let (dw, db) = linear_backward_params(x.view(), r.view());
    check("linear dx", &dx, &fd_gradient(&x, H, |x| f(x, &w, &b)));
    check("linear dW", &dw, &fd_gradient(&w, H, |w| f(&x, w, &b)));
    check("linear db", &db, &fd_gradient(&b, H, |b| f(&x, &w, b)));
}

#[test]
fn batchnorm_train_backward_matches_finite_differences() {
    // Columns with different means and spreads, N = 6: the batch-statistics
    // path (every row's output depends on every row) is exercised.
    let mut rng = Rng::new(12);
    let mut x = randn(&mut rng, 6, 4);
    for (j, mut col) in x.columns_mut().into_iter().enumerate() {
        col.mapv_inplace(|v| (0.5 + j as f64) * v + j as f64 - 1.5);
    }
    let gamma = randv(&mut rng, 4).mapv(|v| 1.0 + 0.3 * v);
    let beta = randv(&mut rng, 4);
    let r = randn(&mut rng, 6, 4);
    let eps_bn = 1e-5;
    let f = |x: &Array2<f64>, gamma: &Array1<f64>, beta: &Array1<f64>| {
        (batchnorm_forward_train(x.view(), gamma.view(), beta.view(), eps_bn).0 * &r).sum()
    };
    let (_, cache, _) = batchnorm_forward_train(x.view(), gamma.view(), beta.view(), eps_bn);
    assert!(cache.batch_stats);
    let (dx, dgamma, dbeta) = batchnorm_backward(r.view(), gamma.view(), &cache);
    check(
        "batchnorm train dx (batch statistics)",
        &dx,
        &fd_gradient(&x, H, |x| f(x, &gamma, &beta)),
    );
    check(
        "batchnorm train dgamma",
        &dgamma,
        &fd_gradient(&gamma, H, |g| f(&x, g, &beta)),
    );
    check(
        "batchnorm train dbeta",
        &dbeta,
        &fd_gradient(&beta, H, |b| f(&x, &gamma, b)),
    );
}

#[test]
fn batchnorm_eval_backward_matches_finite_differences() {
    let mut rng = Rng::new(13);
    let x = randn(&mut rng, 5, 3);
    let gamma = randv(&mut rng, 3).mapv(|v| 1.0 + 0.3 * v);
    let beta = randv(&mut rng, 3);
    let mean = randv(&mut rng, 3);
    let var = randv(&mut rng, 3).mapv(|v| 0.5 + v * v);
    let r = randn(&mut rng, 5, 3);
    let eval = |x: &Array2<f64>, gamma: &Array1<f64>, beta: &Array1<f64>| {
        batchnorm_forward_eval(
            x.view(),
            gamma.view(),
            beta.view(),
            mean.view(),
            var.view(),
            1e-5,
        )
    };
    let f = |x: &Array2<f64>, gamma: &Array1<f64>, beta: &Array1<f64>| {
        (eval(x, gamma, beta).0 * &r).sum()
    };
    let (_, cache) = eval(&x, &gamma, &beta);
    assert!(!cache.batch_stats);
    let (dx, dgamma, dbeta) = batchnorm_backward(r.view(), gamma.view(), &cache);
    check(
        "batchnorm eval dx",
        &dx,
        &fd_gradient(&x, H, |x| f(x, &gamma, &beta)),
    );
    check(
        "batchnorm eval dgamma",
        &dgamma,
        &fd_gradient(&gamma, H, |g| f(&x, g, &beta)),
    );
    check(
        "batchnorm eval dbeta",
        &dbeta,
        &fd_gradient(&beta, H, |b| f(&x, &gamma, b)),
    );
}

#[test]
fn relu_backward_matches_finite_differences_away_from_the_kink() {
    let mut rng = Rng::new(14);
    // every entry at least 0.1 away from 0
    let x = randn(&mut rng, 6, 5).mapv(|v| v + 0.1 * v.signum());
    let r = randn(&mut rng, 6, 5);
    let y = relu_forward(x.view());
    let dx = relu_backward(y.view(), r.view());
    check(
        "relu dx",
        &dx,
        &fd_gradient(&x, H, |x| (relu_forward(x.view()) * &r).sum()),
    );
}

#[test]
fn l2_normalize_backward_matches_finite_differences() {
    let mut rng = Rng::new(15);
    // rows with norms spread over two decades
    let mut u = randn(&mut rng, 5, 4);
    for (i, mut row) in u.rows_mut().into_iter().enumerate() {
        row *= [0.1, 0.5, 1.0, 3.0, 10.0][i];
    }
    let r = randn(&mut rng, 5, 4);
    let z = l2_normalize_forward(u.view(), NORMALIZE_EPS);
    let du = l2_normalize_backward(u.view(), z.view(), r.view(), NORMALIZE_EPS);
    let fd = fd_gradient(&u, H, |u| {
        (l2_normalize_forward(u.view(), NORMALIZE_EPS) * &r).sum()
    });
    check("l2 normalize du", &du, &fd);
}

#[test]
fn l2_normalize_backward_below_the_clamp_matches_finite_differences() {
    // Rows with ‖u‖ < 1e-12: z = u / 1e-12 is linear there. Checked as its
    // own tensor (its gradient is ~1e12, it would hide the other rows').
    let mut rng = Rng::new(16);
    let u = randn(&mut rng, 3, 4).mapv(|v| v * 1e-13);
    for row in u.rows() {
        assert!(row.dot(&row).sqrt() < NORMALIZE_EPS);
    }
    let r = randn(&mut rng, 3, 4);
    let z = l2_normalize_forward(u.view(), NORMALIZE_EPS);
    let du = l2_normalize_backward(u.view(), z.view(), r.view(), NORMALIZE_EPS);
    let fd = fd_gradient(&u, H * 1e-13, |u| {
        (l2_normalize_forward(u.view(), NORMALIZE_EPS) * &r).sum()
    });
    check("l2 normalize du, rows below the 1e-12 clamp", &du, &fd);
    // and it is dz / eps exactly
    assert_eq!(du, r.mapv(|v| v / NORMALIZE_EPS));
}
