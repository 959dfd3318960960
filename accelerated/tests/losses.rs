//! Autograd versus closed forms for each loss (docs/SPEC.md §3).
//!
//! Expected numbers come from formulas derived by hand (written out below
//! from `tau`), from docs/SPEC.md §3's gradient formulas coded here with plain loops,
//! and from central finite differences — never from the code under test.

mod common;

use clae_accelerated::loss::{loss, loss_forward_backward, LossKind};
use common::*;
use ndarray::{array, Array2};
use tch::{Kind, Tensor};

fn grads(
    kind: LossKind,
    z_p: &Array2<f64>,
    z_q: &Array2<f64>,
    tau: f64,
) -> (f64, Array2<f64>, Array2<f64>) {
    let out = loss_forward_backward(kind, &t64(z_p), &t64(z_q), tau).unwrap();
    let gp = arr(&out.grad_z_p).into_dimensionality().unwrap();
    let gq = arr(&out.grad_z_q).into_dimensionality().unwrap();
    (out.value, gp, gq)
}

fn assert_close(got: &Array2<f64>, want: &Array2<f64>, tol: f64, what: &str) {
    let e = rel_err(got, want);
    assert!(
        e < tol,
        "{what}: relative error {e:e}\n got {got}\nwant {want}"
    );
}

// ---- hand-derived: N = 2, d = 2, Z_P = Z_Q = I (identical orthonormal views) ----

#[test]
fn plain_by_hand_on_identical_orthonormal_views() {
    for tau in [0.1f64, 0.5, 1.0] {
        // logits per row: (1/tau, 0) → σ = softmax of the positive
        let sigma = 1.0 / (1.0 + (-1.0 / tau).exp());
        let want_value = -sigma.ln();
        // dL/dZ_P = (A − I) Z_Q / (N tau) with A = [[σ, 1−σ], [1−σ, σ]], Z_Q = I
        let c = (1.0 - sigma) / (2.0 * tau);
        let want = array![[-c, c], [c, -c]];
        let z = array![[1.0, 0.0], [0.0, 1.0]];
        let (v, gp, gq) = grads(LossKind::Plain, &z, &z, tau);
        assert!(
            (v - want_value).abs() < 1e-15 * want_value.max(1.0),
            "tau {tau}"
        );
        // 1 − σ is small for small tau: the softmax's σ − 1 loses
        // log10(1/(1 − σ)) digits to cancellation, in any implementation.
        let tol = 1e-15 / (1.0 - sigma);
        assert_close(&gp, &want, tol, "dL/dZ_P");
        assert_close(&gq, &want, tol, "dL/dZ_Q");
    }
}

#[test]
fn simclr_by_hand_on_identical_orthonormal_views() {
    for tau in [0.5f64, 0.2] {
        // each row: positive at cosine 1, two negatives at cosine 0
        let e = (1.0 / tau).exp();
        let want_value = -1.0 / tau + (e + 2.0).ln();
        // G[0,·] = (ν/4, (π−1)/4, ν/4) with ν = 1/(e+2), π = e/(e+2); G symmetric,
        // dL/dn(U[0]) = 2/tau Σ_b G[0,b] U[b] = ((π−1) e1 + 2ν e2)/(2 tau); the
        // normalisation removes the e1 (radial) part: ν/tau e2.
        let nu = 1.0 / (e + 2.0);
        let want = array![[0.0, nu / tau], [nu / tau, 0.0]];
        let z = array![[1.0, 0.0], [0.0, 1.0]];
        let (v, gp, gq) = grads(LossKind::SimClr, &z, &z, tau);
        assert!(
            (v - want_value).abs() < 1e-14,
            "tau {tau}: {v} vs {want_value}"
        );
        assert_close(&gp, &want, 1e-14, "dL/dZ_P");
        assert_close(&gq, &want, 1e-14, "dL/dZ_Q");
    }
}

#[test]
fn uel_by_hand_on_identical_orthonormal_views() {
    for tau in [1.0f64, 0.1] {
        // row 0: s = (0, 1/tau, 0) over b = 1 (neg), 2 (pos), 3 (neg)
        let e = (1.0 / tau).exp();
        let (pi, nu) = (e / (e + 2.0), 1.0 / (e + 2.0));
        let want_value = -(pi.ln() + 2.0 * (1.0 - nu).ln());
        // ∂l/∂s_c = −[c=pos] + p_c (1 − R) + [c neg] r_c,  r = ν/(1−ν), R = 2r
        let r = nu / (1.0 - nu);
        let d_pos = -1.0 + pi * (1.0 - 2.0 * r);
        let d_neg = nu * (1.0 - 2.0 * r) + r;
        // dL/dX[0] = (1/(2N tau)) (d_pos e1 + 2 d_neg e2), and symmetrically for row 1
        let s = 1.0 / (4.0 * tau);
        let want = array![[s * d_pos, s * 2.0 * d_neg], [s * 2.0 * d_neg, s * d_pos]];
        let z = array![[1.0, 0.0], [0.0, 1.0]];
        let (v, gp, gq) = grads(LossKind::Uel, &z, &z, tau);
        assert!(
            (v - want_value).abs() < 1e-14 * want_value.max(1.0),
            "tau {tau}: {v} vs {want_value}"
        );
        // as for Plain: p_pos − 1 cancels when tau is small
        let tol = 1e-14 / (1.0 - pi);
        assert_close(&gp, &want, tol, "dL/dZ_P");
        assert_close(&gq, &want, tol, "dL/dZ_Q");
    }
}

// ---- docs/SPEC.md §3's closed forms, coded with loops, on random hand-sized inputs ----

fn softmax_row(s: &[f64]) -> Vec<f64> {
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
    let t: f64 = e.iter().sum();
    e.iter().map(|v| v / t).collect()
}

fn dot(a: ndarray::ArrayView1<f64>, b: ndarray::ArrayView1<f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

/// docs/SPEC.md §3.1: `(A − I) Z_Q / (N tau)` and `(A − I)ᵀ Z_P / (N tau)`.
fn plain_closed_form(
    z_p: &Array2<f64>,
    z_q: &Array2<f64>,
    tau: f64,
) -> (f64, Array2<f64>, Array2<f64>) {
    let n = z_p.nrows();
    let mut a = Array2::zeros((n, n));
    let mut value = 0.0;
    for i in 0..n {
        let s: Vec<f64> = (0..n).map(|k| dot(z_p.row(i), z_q.row(k)) / tau).collect();
        let p = softmax_row(&s);
        value -= p[i].ln() / n as f64;
        for k in 0..n {
            a[[i, k]] = p[k] - if i == k { 1.0 } else { 0.0 };
        }
    }
    let c = 1.0 / (n as f64 * tau);
    (value, a.dot(z_q) * c, a.t().dot(z_p) * c)
}

#[test]
fn plain_matches_spec_closed_form() {
    let z_p = unit_rows(&normal2(5, 3, 10));
    let z_q = unit_rows(&normal2(5, 3, 11));
    for tau in [0.1, 0.7] {
        let (wv, wp, wq) = plain_closed_form(&z_p, &z_q, tau);
        let (v, gp, gq) = grads(LossKind::Plain, &z_p, &z_q, tau);
        assert!(((v - wv) / wv).abs() < 1e-14);
        assert_close(&gp, &wp, 1e-13, "dL/dZ_P");
        assert_close(&gq, &wq, 1e-13, "dL/dZ_Q");
    }
}

/// docs/SPEC.md §3.2 on unit-norm rows: `(G + Gᵀ) U / tau`, then the radial part removed.
fn simclr_closed_form_unit(z_p: &Array2<f64>, z_q: &Array2<f64>, tau: f64) -> (f64, Array2<f64>) {
    let n = z_p.nrows();
    let u = ndarray::concatenate(ndarray::Axis(0), &[z_p.view(), z_q.view()]).unwrap();
    let m = 2 * n;
    let mut g = Array2::zeros((m, m));
    let mut value = 0.0;
    for a in 0..m {
        let others: Vec<usize> = (0..m).filter(|&b| b != a).collect();
        let s: Vec<f64> = others
            .iter()
            .map(|&b| dot(u.row(a), u.row(b)) / tau)
            .collect();
        let p = softmax_row(&s);
        let pos = (a + n) % m;
        for (k, &b) in others.iter().enumerate() {
            g[[a, b]] = p[k] / m as f64;
            if b == pos {
                value -= p[k].ln() / m as f64;
            }
        }
        g[[a, pos]] -= 1.0 / m as f64;
    }
    let mut d = (&g + &g.t()).dot(&u) / tau;
    for (mut row, z) in d.rows_mut().into_iter().zip(u.rows()) {
        let radial = dot(row.view(), z);
        row.zip_mut_with(&z, |r, &zv| *r -= radial * zv);
    }
    (value, d)
}

#[test]
fn simclr_matches_spec_closed_form() {
    let z_p = unit_rows(&normal2(4, 5, 12));
    let z_q = unit_rows(&normal2(4, 5, 13));
    let (wv, wd) = simclr_closed_form_unit(&z_p, &z_q, 0.5);
    let (v, gp, gq) = grads(LossKind::SimClr, &z_p, &z_q, 0.5);
    assert!(((v - wv) / wv).abs() < 1e-14);
    let got = ndarray::concatenate(ndarray::Axis(0), &[gp.view(), gq.view()]).unwrap();
    assert_close(&got, &wd, 1e-13, "dL/dU");
}

/// docs/SPEC.md §3.3's value with separate left and right factors: `s[a,b] = ⟨L[a], R[b]⟩/tau`.
/// Unstable textbook form (plain exp and log), fine for moderate tau.
fn uel_value(left: &Array2<f64>, right: &Array2<f64>, tau: f64) -> f64 {
    let m = left.nrows();
    let n = m / 2;
    let mut total = 0.0;
    for a in 0..m {
        let e: Vec<f64> = (0..m)
            .map(|b| (dot(left.row(a), right.row(b)) / tau).exp())
            .collect();
        let denom: f64 = (0..m).filter(|&b| b != a).map(|b| e[b]).sum();
        let pos = (a + n) % m;
        total += (e[pos] / denom).ln();
        for b in (0..m).filter(|&b| b != a && b != pos) {
            total += (1.0 - e[b] / denom).ln();
        }
    }
    -total / m as f64
}

#[test]
fn uel_gradient_is_the_frozen_right_factor_derivative() {
    // Finite differences of the value with the right factors frozen (docs/SPEC.md §3.3).
    let z_p = unit_rows(&normal2(3, 4, 14));
    let z_q = unit_rows(&normal2(3, 4, 15));
    let tau = 0.3;
    let x = ndarray::concatenate(ndarray::Axis(0), &[z_p.view(), z_q.view()]).unwrap();
    let (v, gp, gq) = grads(LossKind::Uel, &z_p, &z_q, tau);
    assert!(((v - uel_value(&x, &x, tau)) / v).abs() < 1e-13);
    let got = ndarray::concatenate(ndarray::Axis(0), &[gp.view(), gq.view()]).unwrap();
    let h = 1e-6;
    let mut fd = Array2::zeros(x.dim());
    for idx in ndarray::indices(x.dim()) {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[idx] += h;
        down[idx] -= h;
        fd[idx] = (uel_value(&up, &x, tau) - uel_value(&down, &x, tau)) / (2.0 * h);
    }
    assert_close(&got, &fd, 1e-8, "UEL vs finite differences");
    // and it is NOT the gradient of the scalar (both factors moving)
    let mut full = Array2::zeros(x.dim());
    for idx in ndarray::indices(x.dim()) {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[idx] += h;
        down[idx] -= h;
        full[idx] = (uel_value(&up, &up, tau) - uel_value(&down, &down, tau)) / (2.0 * h);
    }
    assert!(
        rel_err(&got, &full) > 1e-3,
        "stop-gradient must change the gradient"
    );
}

#[test]
fn plain_and_simclr_gradients_match_finite_differences_off_the_sphere() {
    // Raw (non-unit) rows exercise SimCLR's own normalisation.
    let z_p = normal2(3, 4, 16);
    let z_q = normal2(3, 4, 17);
    for (kind, tau) in [(LossKind::Plain, 0.4), (LossKind::SimClr, 0.5)] {
        let (_, gp, _) = grads(kind, &z_p, &z_q, tau);
        let value = |zp: &Array2<f64>| {
            loss(kind, &t64(zp), &t64(&z_q), tau)
                .unwrap()
                .double_value(&[])
        };
        let h = 1e-6;
        let mut fd = Array2::zeros(z_p.dim());
        for idx in ndarray::indices(z_p.dim()) {
            let (mut up, mut down) = (z_p.clone(), z_p.clone());
            up[idx] += h;
            down[idx] -= h;
            fd[idx] = (value(&up) - value(&down)) / (2.0 * h);
        }
        assert_close(&gp, &fd, 1e-8, &format!("{kind} vs finite differences"));
    }
}

#[test]
fn simclr_equals_the_literal_cosine_similarity_formulation() {
    // The authors' NT_Xent: nn.CosineSimilarity(dim=2) on all pairs, diagonal
    // removed, cross-entropy with the positive as target.
    let z_p = normal2(4, 3, 18);
    let z_q = normal2(4, 3, 19);
    let tau = 0.5;
    let (v, gp, gq) = grads(LossKind::SimClr, &z_p, &z_q, tau);
    let (lp, lq) = (
        t64(&z_p).set_requires_grad(true),
        t64(&z_q).set_requires_grad(true),
    );
    let u = Tensor::cat(&[&lp, &lq], 0);
    let sim = Tensor::cosine_similarity(&u.unsqueeze(1), &u.unsqueeze(0), 2, 1e-8) / tau;
    let mask = Tensor::eye(8, (Kind::Bool, tch::Device::Cpu));
    let logits = sim.masked_fill(&mask, f64::NEG_INFINITY);
    let target = Tensor::from_slice(&[4i64, 5, 6, 7, 0, 1, 2, 3]);
    // (F.cross_entropy; tch's `cross_entropy_for_logits` would compute in f32)
    let l = logits.cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0);
    let g = Tensor::run_backward(&[&l], &[&lp, &lq], false, false);
    let (dv, dp, dq) = (
        (l.double_value(&[]) - v).abs(),
        rel_err(&arr(&g[0]), &gp),
        rel_err(&arr(&g[1]), &gq),
    );
    println!("cosine_similarity formulation: value {dv:e}, grads {dp:e} {dq:e}");
    assert!(
        dv < 1e-14 * v && dp < 1e-13 && dq < 1e-13,
        "{dv:e} {dp:e} {dq:e}"
    );
}

// ---- stability (docs/SPEC.md §3: finite in f32 down to tau = 0.01) and zero embeddings ----

#[test]
fn f32_stays_finite_at_tau_0_01_even_when_a_negative_dominates() {
    // Rows 0 and 1 of Z_P are almost the same point, their positives far
    // away: for UEL a negative then holds nearly all of the softmax mass.
    let z_p = unit_rows(&array![[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [0.0, 0.0, 1.0]]);
    let z_q = unit_rows(&array![[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]);
    for kind in LossKind::ALL {
        let out = loss_forward_backward(kind, &t32(&z_p), &t32(&z_q), 0.01).unwrap();
        let f64_out = loss_forward_backward(kind, &t64(&z_p), &t64(&z_q), 0.01).unwrap();
        assert!(out.value.is_finite(), "{kind}: value {}", out.value);
        for g in [&out.grad_z_p, &out.grad_z_q] {
            assert!(arr(g).iter().all(|v| v.is_finite()), "{kind}: gradient");
        }
        let rel = ((out.value - f64_out.value) / f64_out.value).abs();
        assert!(
            rel < 1e-3,
            "{kind}: f32 {} vs f64 {}",
            out.value,
            f64_out.value
        );
    }
}

#[test]
fn a_zero_embedding_gives_no_nan() {
    let z_p = array![[0.0, 0.0], [0.6, 0.8]];
    let z_q = array![[1.0, 0.0], [0.0, 0.0]];
    for kind in LossKind::ALL {
        let (v, gp, gq) = grads(kind, &z_p, &z_q, kind.default_tau());
        assert!(v.is_finite(), "{kind}");
        assert!(gp.iter().chain(gq.iter()).all(|g| g.is_finite()), "{kind}");
    }
}
