//! Diagnostics against known answers: singular values of matrices built
//! with a chosen spectrum, effective rank from its definition, alignment and
//! uniformity (Wang & Isola 2020) by hand.

mod common;

use approx::assert_abs_diff_eq;
use clae_reference::diagnostics::{alignment, effective_rank, singular_values, uniformity};
use clae_reference::rng::Rng;
use common::*;
use ndarray::{array, Array1, Array2};

/// `n x k` matrix with orthonormal columns (Gram–Schmidt on Gaussians).
fn orthonormal_columns(rng: &mut Rng, n: usize, k: usize) -> Array2<f64> {
    let mut q = randn(rng, n, k);
    for j in 0..k {
        for i in 0..j {
            let proj = q.column(j).dot(&q.column(i));
            let qi = q.column(i).to_owned();
            q.column_mut(j).scaled_add(-proj, &qi);
        }
        let norm = q.column(j).dot(&q.column(j)).sqrt();
        q.column_mut(j).mapv_inplace(|v| v / norm);
    }
    q
}

/// `U diag(sigma) Vᵀ`, `n x d`, with random orthonormal `U, V`.
fn with_spectrum(rng: &mut Rng, n: usize, d: usize, sigma: &[f64]) -> Array2<f64> {
    let k = sigma.len();
    let u = orthonormal_columns(rng, n, k);
    let v = orthonormal_columns(rng, d, k);
    let s = Array2::from_diag(&Array1::from(sigma.to_vec()));
    u.dot(&s).dot(&v.t())
}

/// `exp(−Σ p ln p)` with `p = σ / Σσ`, from the definition.
fn erank(sigma: &[f64]) -> f64 {
    let total: f64 = sigma.iter().sum();
    let h: f64 = sigma
        .iter()
        .map(|s| s / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

#[test]
fn singular_values_and_effective_rank_of_known_spectra() {
    let mut rng = Rng::new(81);
    for (n, d, sigma) in [
        (10, 6, vec![5.0, 3.0, 2.0, 1.0, 0.5, 0.25]),
        (6, 10, vec![4.0, 4.0, 4.0, 4.0, 4.0, 4.0]),
        (8, 5, vec![7.0, 1e-3, 0.0, 0.0, 0.0]),
        (12, 4, vec![1.0, 0.0, 0.0, 0.0]),
    ] {
        let nonzero: Vec<f64> = sigma.iter().copied().filter(|&s| s > 0.0).collect();
        let z = with_spectrum(&mut rng, n, d, &nonzero);
        let s = singular_values(z.view()).unwrap();
        assert_eq!(s.len(), n.min(d));
        let want = Array1::from(sigma.clone());
        assert!(rel_err(&s, &want) < 1e-12, "{s} vs {want}");
        let er = effective_rank(z.view()).unwrap();
        // exactly-zero singular values come back as ~1e-16: compare loosely
        assert!(
            (er - erank(&sigma)).abs() < 1e-10,
            "effective rank {er} vs {}",
            erank(&sigma)
        );
        // f32 input is analysed in f64 after widening
        let s32 = singular_values(z.mapv(|v| v as f32).view()).unwrap();
        assert!(rel_err(&s32, &want) < 1e-6);
    }
    // the extremes: rank one gives 1, r equal values give r, zero gives 0
    assert_abs_diff_eq!(erank(&[3.0]), 1.0, epsilon = 1e-15);
    let eye = Array2::<f64>::eye(5);
    assert_abs_diff_eq!(effective_rank(eye.view()).unwrap(), 5.0, epsilon = 1e-12);
    let rank_one = array![[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0]];
    assert_abs_diff_eq!(
        effective_rank(rank_one.view()).unwrap(),
        1.0,
        epsilon = 1e-12
    );
    assert_eq!(
        effective_rank(Array2::<f64>::zeros((4, 3)).view()).unwrap(),
        0.0
    );
    // a worked value: σ = (3, 2, 1) → p = (1/2, 1/3, 1/6)
    let h = -(0.5f64 * 0.5f64.ln()
        + (1.0 / 3.0) * (1.0f64 / 3.0).ln()
        + (1.0 / 6.0) * (1.0f64 / 6.0).ln());
    let z = array![[3.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]];
    assert_abs_diff_eq!(effective_rank(z.view()).unwrap(), h.exp(), epsilon = 1e-13);
}

#[test]
fn alignment_by_hand() {
    // pairs at distances 0, √2, 2 (same, orthogonal, antipodal)
    let z_p = array![[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
    let z_q = array![[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]];
    let a2 = alignment(z_p.view(), z_q.view(), 2.0).unwrap();
    assert_abs_diff_eq!(a2, (0.0 + 2.0 + 4.0) / 3.0, epsilon = 1e-15);
    let a1 = alignment(z_p.view(), z_q.view(), 1.0).unwrap();
    assert_abs_diff_eq!(a1, (0.0 + 2f64.sqrt() + 2.0) / 3.0, epsilon = 1e-15);
    // f32 input
    let a32 = alignment(
        z_p.mapv(|v| v as f32).view(),
        z_q.mapv(|v| v as f32).view(),
        2.0,
    )
    .unwrap();
    assert!((a32 - 2.0).abs() < 1e-7);
}

#[test]
fn uniformity_by_hand() {
    // three points on the circle at 0, 90 and 180 degrees:
    // squared distances 2 (0-90), 4 (0-180), 2 (90-180)
    let z = array![[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]];
    for t in [1.0f64, 2.0] {
        let want = ((2.0 * (-2.0 * t).exp() + (-4.0 * t).exp()) / 3.0).ln();
        let got = uniformity(z.view(), t).unwrap();
        assert!((got - want).abs() < 1e-14, "t = {t}: {got} vs {want}");
    }
    // identical points: every distance 0, log mean exp 0 = 0
    let same = Array2::<f64>::ones((4, 3));
    assert_eq!(uniformity(same.view(), 2.0).unwrap(), 0.0);
    // far apart points do not underflow to -inf (log-sum-exp)
    let far = array![[0.0, 0.0], [30.0, 0.0]];
    assert!((uniformity(far.view(), 2.0).unwrap() + 1800.0).abs() < 1e-9);
}
