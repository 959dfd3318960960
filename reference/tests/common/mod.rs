//! Helpers shared by the reference crate's integration tests: random data,
//! the docs/SPEC.md §8 error measure, a central-difference gradient checker, and
//! naive, independent re-implementations of the three losses (plain loops,
//! no log-sum-exp tricks) to check values against.

#![allow(dead_code)]

use clae_reference::encoder::{Branch, Forward, Mlp, MlpConfig, MlpGrads, Mode};
use clae_reference::rng::Rng;
use ndarray::{Array, Array1, Array2, ArrayView2, Dimension};

/// `N x m` matrix of standard normals.
pub fn randn(rng: &mut Rng, n: usize, m: usize) -> Array2<f64> {
    Array2::from_shape_simple_fn((n, m), || rng.normal())
}

/// `N x m` matrix whose rows are uniformly random unit vectors.
pub fn unit_rows(rng: &mut Rng, n: usize, m: usize) -> Array2<f64> {
    let mut z = randn(rng, n, m);
    for mut row in z.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row /= norm;
    }
    z
}

/// docs/SPEC.md §8: `max|a − b| / max|b|`, `b` the reference side. Where `max|b| = 0`
/// it returns `max|a|` (which must then be exactly zero to pass a relative
/// test).
pub fn rel_err<D: Dimension>(a: &Array<f64, D>, b: &Array<f64, D>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "rel_err: shapes differ");
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, nan_max);
    let scale = max_abs(b);
    if scale == 0.0 {
        max_abs(a)
    } else {
        diff / scale
    }
}

/// `max |x|` over all entries (NaN if any entry is NaN).
pub fn max_abs<D: Dimension>(x: &Array<f64, D>) -> f64 {
    x.iter().map(|v| v.abs()).fold(0.0, nan_max)
}

/// `max(m, d)` that keeps a NaN (`f64::max` would swallow it, and a test
/// comparing the result with a tolerance would then pass).
pub fn nan_max(m: f64, d: f64) -> f64 {
    if d.is_nan() || d > m {
        d
    } else {
        m
    }
}

/// Relative error of two scalars, `|a − b| / |b|`.
pub fn rel_err_scalar(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        a.abs()
    } else {
        (a - b).abs() / b.abs()
    }
}

/// Prints one line the lead can quote (`cargo test -- --nocapture`) and
/// asserts the docs/SPEC.md finite-difference tolerance.
pub fn report_fd(name: &str, err: f64) {
    println!("FD-CHECK {name:<58} max rel err = {err:.3e}");
    assert!(
        err < FD_TOL,
        "{name}: finite-difference relative error {err:.3e} >= {FD_TOL:e}"
    );
}

/// The tolerance for f64 finite-difference checks.
pub const FD_TOL: f64 = 1e-6;

/// Central differences of a scalar function of one array. `h` is the
/// absolute step; the divisor is the actual distance between the two
/// perturbed points, so the rounding of `x ± h` does not bias the slope.
pub fn fd_gradient<D: Dimension>(
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

/// Central differences of a scalar function of an encoder's parameters, one
/// array per tensor in [`Mlp::parameter_names`] order. The step for tensor
/// `t` is `h_rel * max(1, max|θ_t|)`.
pub fn fd_param_gradients(
    mlp: &Mlp<f64>,
    h_rel: f64,
    mut f: impl FnMut(&Mlp<f64>) -> f64,
) -> Vec<ndarray::ArrayD<f64>> {
    let mut m = mlp.clone();
    let shapes: Vec<Vec<usize>> = mlp
        .parameters()
        .iter()
        .map(|p| p.shape().to_vec())
        .collect();
    let mut out = Vec::new();
    for (t, shape) in shapes.iter().enumerate() {
        let len: usize = shape.iter().product();
        let scale = mlp.parameters()[t]
            .iter()
            .fold(1.0f64, |s, v| s.max(v.abs()));
        let h = h_rel * scale;
        let mut g = Vec::with_capacity(len);
        for j in 0..len {
            let orig = *m.parameters()[t].iter().nth(j).expect("in range");
            let (plus, minus) = (orig + h, orig - h);
            *m.parameters_mut()[t].iter_mut().nth(j).expect("in range") = plus;
            let fp = f(&m);
            *m.parameters_mut()[t].iter_mut().nth(j).expect("in range") = minus;
            let fm = f(&m);
            *m.parameters_mut()[t].iter_mut().nth(j).expect("in range") = orig;
            g.push((fp - fm) / (plus - minus));
        }
        out.push(ndarray::ArrayD::from_shape_vec(shape.clone(), g).expect("same length"));
    }
    out
}

/// Compares analytic parameter gradients with finite differences tensor by
/// tensor and returns the largest relative error. A tensor whose gradient is
/// structurally zero (the linear bias in front of a training-mode BatchNorm:
/// the mean subtraction annihilates it) has no meaningful relative error;
/// for it both sides must be below `1e-8` of the largest gradient entry of
/// the whole encoder, and it is listed as such.
pub fn compare_param_grads(
    name: &str,
    names: &[String],
    analytic: &[Option<ndarray::ArrayD<f64>>],
    fd: &[ndarray::ArrayD<f64>],
) -> f64 {
    let global = fd.iter().map(max_abs).fold(0.0, nan_max);
    assert!(global > 0.0, "{name}: all finite differences are zero");
    let mut worst = 0.0f64;
    for ((pname, a), b) in names.iter().zip(analytic).zip(fd) {
        let Some(a) = a.as_ref() else {
            // `None`: the tensor took no part in the loss; then moving it
            // must not change the loss at all.
            assert_eq!(
                max_abs(b),
                0.0,
                "{name}: {pname} has no gradient but moves the loss"
            );
            println!("FD-CHECK   {name}: {pname} has no gradient (None) and fd = 0");
            continue;
        };
        if max_abs(b) < 1e-8 * global {
            assert!(
                max_abs(a) < 1e-8 * global,
                "{name}: {pname} should be (structurally) zero, analytic max {:.3e}",
                max_abs(a)
            );
            println!("FD-CHECK   {name}: {pname} is structurally zero (|analytic| <= {:.1e}, |fd| <= {:.1e})", max_abs(a), max_abs(b));
            continue;
        }
        let e = rel_err(a, b);
        worst = worst.max(e);
        assert!(e < FD_TOL, "{name}: {pname} rel err {e:.3e}");
    }
    worst
}

/// The smallest `|pre-activation|` of every ReLU in a forward pass, so a
/// finite-difference test can make sure it stays away from the kinks.
pub fn relu_margin(mlp: &Mlp<f64>, fwd: &Forward<f64>) -> f64 {
    let mut margin = f64::INFINITY;
    for (l, layer) in mlp.backbone.iter().enumerate() {
        let bn = layer.bn.branch(fwd.mode.branch());
        let pre = &fwd.bn[l].x_hat * &bn.gamma + &bn.beta;
        margin = margin.min(pre.iter().fold(f64::INFINITY, |m, v| m.min(v.abs())));
    }
    let last = fwd.acts.last().expect("input is acts[0]");
    let pre = last.dot(&mlp.head[0].weight.t()) + &mlp.head[0].bias;
    margin.min(pre.iter().fold(f64::INFINITY, |m, v| m.min(v.abs())))
}

/// An encoder whose two BatchNorm branches differ (random `γ, β`, running
/// statistics), so that a test notices if the wrong branch is used.
pub fn distinct_branch_mlp(config: MlpConfig, seed: u64) -> Mlp<f64> {
    let mut mlp = Mlp::<f64>::new(config, seed).expect("valid config");
    let mut rng = Rng::new(seed ^ 0xB4);
    for layer in &mut mlp.backbone {
        for (bn, shift) in [(&mut layer.bn.clean, 0.0), (&mut layer.bn.adv, 0.3)] {
            bn.gamma.mapv_inplace(|_| 1.0 + shift + 0.2 * rng.normal());
            bn.beta.mapv_inplace(|_| shift + 0.2 * rng.normal());
            bn.running_mean.mapv_inplace(|_| 0.3 * rng.normal());
            bn.running_var.mapv_inplace(|_| 0.5 + rng.uniform());
        }
    }
    mlp
}

/// `(mlp, x)` with every ReLU pre-activation at least `margin` away from 0
/// in the given training-mode passes: tries seeds in order from `seed`.
pub fn kink_free_setup(
    config: MlpConfig,
    n: usize,
    seed: u64,
    margin: f64,
    branches: &[Branch],
    inputs: usize,
) -> (Mlp<f64>, Vec<Array2<f64>>) {
    for s in seed..seed + 1000 {
        let mlp = distinct_branch_mlp(config, s);
        let mut rng = Rng::new(s.wrapping_mul(7919));
        let xs: Vec<Array2<f64>> = (0..inputs)
            .map(|_| randn(&mut rng, n, config.d_in))
            .collect();
        let ok = xs.iter().all(|x| {
            branches.iter().all(|&b| {
                let fwd = mlp.forward(x.view(), Mode::Train(b)).expect("valid");
                relu_margin(&mlp, &fwd) > margin
            })
        });
        if ok {
            return (mlp, xs);
        }
    }
    panic!("no kink-free seed found");
}

/// Index of the positive of stacked row `a` (docs/SPEC.md §3.2, 3.3).
pub fn pos(a: usize, n: usize) -> usize {
    (a + n) % (2 * n)
}

/// Naive docs/SPEC.md §3.1, straight from the formula (no max subtraction).
pub fn naive_plain(z_p: ArrayView2<f64>, z_q: ArrayView2<f64>, tau: f64) -> f64 {
    let n = z_p.nrows();
    let mut total = 0.0;
    for i in 0..n {
        let s = |k: usize| z_p.row(i).dot(&z_q.row(k)) / tau;
        let denom: f64 = (0..n).map(|k| s(k).exp()).sum();
        total += s(i) - denom.ln();
    }
    -total / n as f64
}

/// Naive docs/SPEC.md §3.2, with its own normalisation `u / max(‖u‖, 1e-8)`.
pub fn naive_simclr(z_p: ArrayView2<f64>, z_q: ArrayView2<f64>, tau: f64) -> f64 {
    let n = z_p.nrows();
    let u: Vec<Array1<f64>> = z_p
        .rows()
        .into_iter()
        .chain(z_q.rows())
        .map(|r| {
            let norm = r.dot(&r).sqrt().max(1e-8);
            r.mapv(|v| v / norm)
        })
        .collect();
    let mut total = 0.0;
    for a in 0..2 * n {
        let s = |b: usize| u[a].dot(&u[b]) / tau;
        let denom: f64 = (0..2 * n).filter(|&b| b != a).map(|b| s(b).exp()).sum();
        total += -s(pos(a, n)) + denom.ln();
    }
    total / (2 * n) as f64
}

/// Naive docs/SPEC.md §3.3 with separate left and right factors:
/// `e[a,b] = exp(⟨left[a], right[b]⟩ / tau)`. With `right` held constant
/// this is the scalar whose gradient w.r.t. `left` is UEL's stop-gradient
/// "gradient"; with `right = left` it is `L_uel` itself.
pub fn naive_uel_frozen(left: ArrayView2<f64>, right: ArrayView2<f64>, tau: f64) -> f64 {
    let m = left.nrows();
    let n = m / 2;
    let mut total = 0.0;
    for a in 0..m {
        let e: Vec<f64> = (0..m)
            .map(|b| {
                if b == a {
                    0.0
                } else {
                    (left.row(a).dot(&right.row(b)) / tau).exp()
                }
            })
            .collect();
        let d: f64 = e.iter().sum();
        total += (e[pos(a, n)] / d).ln();
        for b in (0..m).filter(|&b| b != a && b != pos(a, n)) {
            total += (1.0 - e[b] / d).ln();
        }
    }
    -total / m as f64
}

/// `[A; B]`.
pub fn stack(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    ndarray::concatenate(ndarray::Axis(0), &[a, b]).expect("same width")
}

/// Rows of `x` in the order `perm` (`out[i] = x[perm[i]]`).
pub fn permute_rows(x: ArrayView2<f64>, perm: &[usize]) -> Array2<f64> {
    x.select(ndarray::Axis(0), perm)
}

/// The gradients of `g` as owned tensors, in parameter order.
pub fn owned<F: clae_reference::Real>(g: &MlpGrads<F>) -> Vec<Option<ndarray::ArrayD<F>>> {
    g.tensors()
        .into_iter()
        .map(|t| t.map(|t| t.to_owned()))
        .collect()
}

/// docs/SPEC.md §8 error between two sets of parameter gradients, tensor by tensor,
/// the largest over tensors. `None` must match `None`. A tensor of `b` that is
/// structurally zero (below `1e-12` of the largest entry of the whole set —
/// the linear bias in front of a training-mode BatchNorm) is measured
/// against that global scale instead, since its own entries are rounding
/// noise.
pub fn grad_set_err(a: &[Option<ndarray::ArrayD<f64>>], b: &[Option<ndarray::ArrayD<f64>>]) -> f64 {
    assert_eq!(a.len(), b.len());
    let global = b.iter().flatten().map(max_abs).fold(0.0, nan_max);
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        match (x, y) {
            (None, None) => {}
            (Some(x), Some(y)) => {
                let e = if max_abs(y) < 1e-12 * global {
                    max_abs(&(x - y)) / global
                } else {
                    rel_err(x, y)
                };
                worst = nan_max(worst, e);
            }
            _ => panic!("one gradient is None and the other is not"),
        }
    }
    worst
}

/// The scalar whose input gradient is `g` and which FGSM ascends (docs/SPEC.md §4):
/// `L(W, f_adv(X))` with `W = f_adv(P)` held constant; for UEL also the
/// right factors frozen at `right` (docs/SPEC.md §3.3).
pub fn adv_scalar(
    mlp: &Mlp<f64>,
    w: &Array2<f64>,
    x: &Array2<f64>,
    right: &Array2<f64>,
    kind: clae_reference::loss::LossKind,
    tau: f64,
) -> f64 {
    use clae_reference::loss::{loss_value, LossKind};
    let z = mlp.forward(x.view(), Mode::Train(Branch::Adv)).unwrap().z;
    match kind {
        LossKind::Uel => naive_uel_frozen(stack(w.view(), z.view()).view(), right.view(), tau),
        _ => loss_value(kind, w.view(), z.view(), tau).unwrap(),
    }
}
