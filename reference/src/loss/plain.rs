//! docs/SPEC.md §3.1 — Plain: the batch cross-entropy of the paper.
//!
//! ```text
//! S[i,k] = ⟨Z_P[i], Z_Q[k]⟩ / tau                                  N x N
//! L_ce   = −(1/N) Σ_i ( S[i,i] − logsumexp_k S[i,k] )
//! A = rowsoftmax(S):   dL/dZ_P = (A − I) Z_Q / (N tau),   dL/dZ_Q = (A − I)ᵀ Z_P / (N tau)
//! ```

use super::{softmax_row, LossOutput};
use crate::error::Result;
use crate::gemm::matmul;
use crate::real::Real;
use ndarray::{Array1, ArrayView2, Zip};

/// Value of `L_ce`. Shapes: `z_p, z_q: N x d`.
///
/// ```
/// use ndarray::array;
/// use clae_reference::loss::plain::plain_loss;
/// // identical orthonormal views: every row has logits (1/tau, 0)
/// let z = array![[1.0, 0.0], [0.0, 1.0]];
/// let l = plain_loss(z.view(), z.view(), 0.5).unwrap();
/// assert!((l - (1.0 + (-2f64).exp()).ln()).abs() < 1e-15);
/// ```
pub fn plain_loss<F: Real>(z_p: ArrayView2<'_, F>, z_q: ArrayView2<'_, F>, tau: f64) -> Result<F> {
    super::loss_value(super::LossKind::Plain, z_p, z_q, tau)
}

/// Value and both gradients, on validated input (see [`super::loss_forward_backward`]).
pub(crate) fn plain_loss_forward_backward<F: Real>(
    z_p: ArrayView2<'_, F>,
    z_q: ArrayView2<'_, F>,
    tau: F,
) -> LossOutput<F> {
    let n = z_p.nrows();
    let nf = F::c(n as f64);
    // S, turned row by row into A = rowsoftmax(S), then A − I; rows in
    // parallel, their losses summed in row order
    let mut a = matmul(z_p, z_q.t()) / tau;
    let mut losses = Array1::zeros(n);
    Zip::indexed(a.rows_mut())
        .and(&mut losses)
        .par_for_each(|i, mut row, l| {
            let (nll, rest) = softmax_row(row.view_mut(), i);
            *l = nll;
            // A[i,i] − 1 = −Σ_{k≠i} A[i,k] (no cancellation)
            row[i] = -rest;
        });
    let value = losses.iter().fold(F::zero(), |v, &l| v + l) / nf;
    let scale = F::one() / (nf * tau);
    let grad_z_p = matmul(a.view(), z_q) * scale;
    let grad_z_q = matmul(a.t(), z_p) * scale;
    LossOutput {
        value,
        grad_z_p,
        grad_z_q,
    }
}
