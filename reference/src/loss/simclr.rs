//! docs/SPEC.md §3.2 — SimCLR's NT-Xent (`2N`-way, symmetric).
//!
//! ```text
//! U = [Z_P; Z_Q]  (2N x d),   pos(a) = (a + N) mod 2N
//! n(u)   = u / max(‖u‖₂, 1e-8)                        (nn.CosineSimilarity)
//! s[a,b] = ⟨n(U[a]), n(U[b])⟩ / tau
//! L_nt   = (1/2N) Σ_a ( −s[a,pos(a)] + logsumexp_{b≠a} s[a,b] )
//! ```
//!
//! Gradient: with `G[a,b] = (softmax_{b≠a}(s[a,·])[b] − [b = pos(a)]) / 2N`
//! (and `G[a,a] = 0`), `dL/dn(U) = (G + Gᵀ) n(U) / tau`, then back through
//! `n`, which removes each row's radial component. On unit-norm inputs the
//! value equals the plain-dot-product value, but the gradient is tangential.

use super::{plus_transpose, pos, softmax_row, stack_rows, LossOutput};
use crate::error::Result;
use crate::gemm::matmul;
use crate::layers::{l2_normalize_backward, l2_normalize_forward};
use crate::real::Real;
use ndarray::{s, Array1, ArrayView2, Zip};

/// The loss's own normalisation clamp, `1e-8` (`nn.CosineSimilarity`'s eps).
pub const COSINE_EPS: f64 = 1e-8;

/// Value of `L_nt`. Shapes: `z_p, z_q: N x d`.
///
/// ```
/// use ndarray::array;
/// use clae_reference::loss::simclr::simclr_loss;
/// // N = 2, views identical and orthonormal: each row sees its positive at
/// // cosine 1 and two negatives at cosine 0 (one of them its twin's pair).
/// let z = array![[1.0, 0.0], [0.0, 1.0]];
/// let tau = 0.5;
/// let expected = -2.0 + (2f64.exp() + 2.0).ln();
/// assert!((simclr_loss(z.view(), z.view(), tau).unwrap() - expected).abs() < 1e-14);
/// ```
pub fn simclr_loss<F: Real>(z_p: ArrayView2<'_, F>, z_q: ArrayView2<'_, F>, tau: f64) -> Result<F> {
    super::loss_value(super::LossKind::SimClr, z_p, z_q, tau)
}

/// Value and both gradients, on validated input (see [`super::loss_forward_backward`]).
pub(crate) fn simclr_loss_forward_backward<F: Real>(
    z_p: ArrayView2<'_, F>,
    z_q: ArrayView2<'_, F>,
    tau: F,
) -> LossOutput<F> {
    let n = z_p.nrows();
    let two_n = 2 * n;
    let u = stack_rows(z_p, z_q);
    let un = l2_normalize_forward(u.view(), COSINE_EPS);
    // s, turned row by row into G (rows in parallel: each reads only its own
    // row; the losses are summed in row order)
    let mut g = matmul(un.view(), un.t()) / tau;
    for a in 0..two_n {
        g[[a, a]] = F::neg_infinity(); // softmax over b ≠ a
    }
    let inv_2n = F::one() / F::c(two_n as f64);
    let mut losses = Array1::zeros(two_n);
    Zip::indexed(g.rows_mut())
        .and(&mut losses)
        .par_for_each(|a, mut row, loss| {
            let pa = pos(a, n);
            let (nll, rest) = softmax_row(row.view_mut(), pa);
            *loss = nll;
            // p[pos] − 1 = −Σ_{b∉{a,pos}} p[b] (no cancellation when p[pos] ≈ 1)
            row[pa] = -rest;
            row.mapv_inplace(|p| p * inv_2n);
        });
    let mut value = losses.iter().fold(F::zero(), |v, &l| v + l);
    value *= inv_2n;
    let sym = plus_transpose(g.view());
    let d_un = matmul(sym.view(), un.view()) / tau;
    let d_u = l2_normalize_backward(u.view(), un.view(), d_un.view(), COSINE_EPS);
    LossOutput {
        value,
        grad_z_p: d_u.slice(s![..n, ..]).to_owned(),
        grad_z_q: d_u.slice(s![n.., ..]).to_owned(),
    }
}
