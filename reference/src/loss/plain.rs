//! docs/SPEC.md §3.1 — Plain: the batch cross-entropy of the paper.
//!
//! ```text
//! S[i,k] = ⟨Z_P[i], Z_Q[k]⟩ / tau                                  N x N
//! L_ce   = −(1/N) Σ_i ( S[i,i] − logsumexp_k S[i,k] )
//! A = rowsoftmax(S):   dL/dZ_P = (A − I) Z_Q / (N tau),   dL/dZ_Q = (A − I)ᵀ Z_P / (N tau)
//! ```

use super::{neg_log_softmax, softmax_complement, softmax_rows, LossOutput};
use crate::error::Result;
use crate::real::Real;
use ndarray::ArrayView2;

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
    let s = z_p.dot(&z_q.t()) / tau;
    let (mut a, lse) = softmax_rows(s.view());
    let value = (0..n)
        .map(|i| neg_log_softmax(s.row(i), lse[i], i))
        .sum::<F>()
        / nf;
    // A − I, then the two products; A[i,i] − 1 = −Σ_{k≠i} A[i,k] (no cancellation).
    for i in 0..n {
        a[[i, i]] = -softmax_complement(a.row(i), i);
    }
    let scale = F::one() / (nf * tau);
    let grad_z_p = a.dot(&z_q) * scale;
    let grad_z_q = a.t().dot(&z_p) * scale;
    LossOutput {
        value,
        grad_z_p,
        grad_z_q,
    }
}
