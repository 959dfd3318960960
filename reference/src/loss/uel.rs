//! docs/SPEC.md §3.3 — UEL: the invariant-and-spreading batch criterion (Ye et al. 2019).
//!
//! ```text
//! X = [Z_P; Z_Q]  (2N x d),   pos(a) = (a + N) mod 2N,   sg = stop-gradient
//! s[a,b] = ⟨X[a], sg(X[b])⟩ / tau,   p[a,b] = exp s[a,b] / Σ_{c≠a} exp s[a,c]
//! L_uel  = −(1/2N) Σ_a ( log p[a,pos(a)] + Σ_{b∉{a,pos(a)}} log(1 − p[a,b]) )
//! ```
//!
//! The right factor of every inner product is a constant, so the "gradient"
//! w.r.t. `X[a]` comes from row `a` only (it is *not* the gradient of the
//! scalar). With `r[a,b] = p[a,b] / (1 − p[a,b])` and `R_a = Σ_{b neg} r[a,b]`:
//!
//! ```text
//! ∂l_a/∂s[a,c] = −[c = pos(a)] + p[a,c] (1 − R_a) + [c neg] r[a,c]
//! dL/dX[a]     = (1/(2N tau)) Σ_c ∂l_a/∂s[a,c] X[c]
//! ```
//!
//! Stability: `p` comes from a max-subtracted softmax and `−log p[a,pos]`
//! from `neg_log_softmax` (in `loss/mod.rs`); `log(1 − p)` is `log1p(−p)` when
//! `p <= 1/2`, and otherwise (at most one such negative `b*` per row)
//! `logsumexp_{c∉{a,b*}} s[a,c] − logsumexp_{c≠a} s[a,c]`, which never rounds
//! `1 − p` to zero.
//!
//! The gradient needs the same care. When a negative `b*` dominates the row
//! (a hard negative at small `tau`), its odds `r[a,b*]` are huge (`e^{199}`
//! for a duplicate row at `tau = 0.01`: `inf` in `f32`) and the formula above
//! subtracts two such numbers. With `R' = Σ_{b neg, b≠b*} r[a,b]` (each term
//! `<= 1`) and `q[c] = exp s[a,c] / Σ_{c'∉{a,b*}} exp s[a,c']` the softmax
//! without `b*`, using `p[a,c] r[a,b*] = p[a,b*] q[c]` it is rewritten with
//! bounded terms only:
//!
//! ```text
//! ∂l_a/∂s[a,b*] = p[a,b*] (2 − R')
//! ∂l_a/∂s[a,c]  = −[c = pos(a)] + p[a,c] (1 − R') − p[a,b*] q[c] + [c neg] r[a,c]   (c ≠ b*)
//! ```
//!
//! Without a dominant negative, `∂l_a/∂s[a,pos] = −(1 − p[a,pos]) − p[a,pos] R_a`
//! with `1 − p[a,pos] = Σ_{c∉{a,pos}} p[a,c]`, which does not cancel when the
//! positive dominates.

use super::{logsumexp, neg_log_softmax, pos, softmax_complement, stack_rows, LossOutput};
use crate::error::Result;
use crate::gemm::matmul;
use crate::real::Real;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Zip};

/// Value of `L_uel` (`negM = 1`). Shapes: `z_p, z_q: N x d`.
///
/// ```
/// use ndarray::array;
/// use clae_reference::loss::uel::uel_loss;
/// // N = 2, identical orthonormal views, tau = 1: for every row the positive
/// // has logit 1 and the two negatives logit 0, so p_pos = e/(e+2), p_neg = 1/(e+2).
/// let z = array![[1.0, 0.0], [0.0, 1.0]];
/// let e = 1f64.exp();
/// let expected = -((e / (e + 2.0)).ln() + 2.0 * (1.0 - 1.0 / (e + 2.0)).ln());
/// assert!((uel_loss(z.view(), z.view(), 1.0).unwrap() - expected).abs() < 1e-14);
/// ```
pub fn uel_loss<F: Real>(z_p: ArrayView2<'_, F>, z_q: ArrayView2<'_, F>, tau: f64) -> Result<F> {
    super::loss_value(super::LossKind::Uel, z_p, z_q, tau)
}

/// `logsumexp` of `row` over all entries except `skip` (the diagonal is
/// already `-inf`).
fn logsumexp_without<F: Real>(row: ArrayView1<'_, F>, skip: usize) -> F {
    let mut r = row.to_owned();
    r[skip] = F::neg_infinity();
    logsumexp(r.view())
}

/// `exp(s[c] − lse)` for a row `s` with `lse = logsumexp(s)`: its softmax.
/// Where the row maximum `m` is so large that `lse = m + ln Σ` keeps too
/// little of `ln Σ` (`u |m| > 1e-3`, `u` the unit roundoff: tiny `tau` or
/// huge embeddings — e.g. `m + ln 2` rounds to `m` beyond `2^53`, and two
/// tied logits would each get probability 1), the same softmax as
/// `exp(s − m) / Σ exp(s − m)` instead. Below that bound the first form is
/// kept (it is what the conformance vectors were generated with).
fn softmax_from<F: Real>(row: ArrayView1<'_, F>, lse: F) -> Array1<F> {
    let m = row.fold(F::neg_infinity(), |m, &v| if v > m { v } else { m });
    if m.is_finite() && m.abs() * F::epsilon() > F::c(2e-3) {
        let e = row.mapv(|v| (v - m).exp());
        let total = e.sum();
        e / total
    } else {
        row.mapv(|v| (v - lse).exp())
    }
}

/// One row `a` of the criterion: `l_a` and `∂l_a/∂s[a,·]` into `grad`
/// (the equations of the module docs), from the row `row = s[a,·]` of the
/// `2N x 2N` logits (diagonal masked).
fn uel_row<F: Real>(
    a: usize,
    n: usize,
    row: ArrayView1<'_, F>,
    mut grad: ArrayViewMut1<'_, F>,
) -> F {
    let two_n = 2 * n;
    let half = F::c(0.5);
    let lse = logsumexp(row);
    let pa = pos(a, n);
    // p[c] = softmax over c ≠ a (the masked diagonal gives exp(−inf) = 0)
    let p = softmax_from(row, lse);
    let is_neg = |b: usize| b != a && b != pa;
    // the negative with p > 1/2, if there is one (there is at most one)
    let dominant = (0..two_n).find(|&b| is_neg(b) && p[b] > half);
    let mut row_loss = neg_log_softmax(row, lse, pa); // −log p[a,pos]
                                                      // R (or R' when a negative dominates): odds of the other negatives
    let mut odds_rest = F::zero();
    for b in (0..two_n).filter(|&b| is_neg(b) && Some(b) != dominant) {
        row_loss -= (-p[b]).ln_1p();
        let odds = p[b] / (F::one() - p[b]);
        odds_rest += odds;
        grad[b] = odds;
    }
    match dominant {
        None => {
            for c in (0..two_n).filter(|&c| is_neg(c)) {
                grad[c] += p[c] * (F::one() - odds_rest);
            }
            grad[pa] = -softmax_complement(p.view(), pa) - p[pa] * odds_rest;
        }
        Some(b) => {
            let lse_excl = logsumexp_without(row, b);
            let mut masked = row.to_owned();
            masked[b] = F::neg_infinity();
            let q_all = softmax_from(masked.view(), lse_excl);
            row_loss -= lse_excl - lse; // −log(1 − p[a,b*])
            for c in (0..two_n).filter(|&c| c != a && c != b) {
                let q = q_all[c];
                grad[c] += p[c] * (F::one() - odds_rest) - p[b] * q;
            }
            grad[b] = p[b] * (F::c(2.0) - odds_rest);
            grad[pa] -= F::one();
        }
    }
    row_loss
}

/// Value and both stop-gradient "gradients", on validated input
/// (see [`super::loss_forward_backward`]).
pub(crate) fn uel_loss_forward_backward<F: Real>(
    z_p: ArrayView2<'_, F>,
    z_q: ArrayView2<'_, F>,
    tau: F,
) -> LossOutput<F> {
    let n = z_p.nrows();
    let two_n = 2 * n;
    let x = stack_rows(z_p, z_q);
    let mut sim = matmul(x.view(), x.t()) / tau;
    for a in 0..two_n {
        sim[[a, a]] = F::neg_infinity();
    }
    // ∂l_a/∂s[a,c] and the loss l_a, row by row (rows in parallel: each
    // reads only its own row of s; the losses are summed in row order).
    let mut g = Array2::zeros((two_n, two_n));
    let mut losses = Array1::zeros(two_n);
    Zip::indexed(g.rows_mut())
        .and(sim.rows())
        .and(&mut losses)
        .par_for_each(|a, grad_row, row, loss| *loss = uel_row(a, n, row, grad_row));
    let mut value = losses.iter().fold(F::zero(), |v, &l| v + l);
    let inv_2n = F::one() / F::c(two_n as f64);
    value *= inv_2n;
    let d_x = matmul(g.view(), x.view()) * (inv_2n / tau);
    LossOutput {
        value,
        grad_z_p: d_x.slice(s![..n, ..]).to_owned(),
        grad_z_q: d_x.slice(s![n.., ..]).to_owned(),
    }
}
