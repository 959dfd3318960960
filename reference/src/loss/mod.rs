//! The three contrastive losses of docs/SPEC.md §3, each a value
//! and its analytic gradients with respect to both embedding sets.
//!
//! All three read the loss as a cross-entropy whose "classifier weights" are
//! the other view's embeddings. All are computed with the row maximum
//! subtracted before exponentiating (log-sum-exp), `log1p` for
//! `log(1 − x)` and the softmax-complement forms of docs/SPEC.md §3.4, so
//! they stay finite and accurate in `f32` for `tau` down to `0.01`. Where the
//! result itself is not representable (logits `<z_p, z_q> / tau` beyond the
//! element type's range) the result is [`ClaeError::Overflow`].

pub mod plain;
pub mod simclr;
pub mod uel;

use crate::check;
use crate::error::{ClaeError, Result};
use crate::real::Real;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis};

/// Which loss a model is trained with (the three variants of the authors' code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossKind {
    /// docs/SPEC.md §3.1: `N`-way batch cross-entropy `L_ce` (the paper's formulation).
    Plain,
    /// docs/SPEC.md §3.2: SimCLR's symmetric `2N`-way NT-Xent.
    SimClr,
    /// docs/SPEC.md §3.3: the invariant-and-spreading batch criterion (Ye et al. 2019).
    Uel,
}

impl LossKind {
    /// All three, in docs/SPEC.md order.
    pub const ALL: [LossKind; 3] = [LossKind::Plain, LossKind::SimClr, LossKind::Uel];

    /// Default temperature: 0.1 (Plain, UEL) or 0.5 (SimCLR).
    ///
    /// ```
    /// use clae_reference::loss::LossKind;
    /// assert_eq!(LossKind::SimClr.default_tau(), 0.5);
    /// assert_eq!(LossKind::SimClr.default_eps(), 0.03);
    /// ```
    pub fn default_tau(self) -> f64 {
        match self {
            LossKind::SimClr => 0.5,
            LossKind::Plain | LossKind::Uel => 0.1,
        }
    }

    /// Default FGSM step: 0.03 for all three — every run script of the
    /// authors passes `--eps 0.03` (their SimCLR argparse default of 0.01 is
    /// never used; docs/SPEC.md §5).
    pub fn default_eps(self) -> f64 {
        0.03
    }

    /// Short lower-case name (`plain`, `simclr`, `uel`).
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Plain => "plain",
            LossKind::SimClr => "simclr",
            LossKind::Uel => "uel",
        }
    }
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LossKind {
    type Err = ClaeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "plain" => Ok(LossKind::Plain),
            "simclr" => Ok(LossKind::SimClr),
            "uel" => Ok(LossKind::Uel),
            _ => Err(ClaeError::InvalidHyperParameter {
                name: "loss kind".into(),
                expected: "one of plain, simclr, uel".into(),
                value: f64::NAN,
            }),
        }
    }
}

/// A loss value with its gradients.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOutput<F> {
    /// The scalar loss.
    pub value: F,
    /// `dL/dZ_P`, `N x d`.
    pub grad_z_p: Array2<F>,
    /// `dL/dZ_Q`, `N x d`.
    pub grad_z_q: Array2<F>,
}

/// Validates a pair of embedding batches and `tau`; returns `tau` in `F`.
/// The `2N x 2N` similarity matrix must be addressable.
pub(crate) fn check_inputs<F: Real>(
    z_p: ArrayView2<'_, F>,
    z_q: ArrayView2<'_, F>,
    tau: f64,
) -> Result<F> {
    let tau = check::tau::<F>(tau)?;
    check::pair_shapes(("Z_P", z_p), ("Z_Q", z_q), None)?;
    let two_n = z_p.nrows().saturating_mul(2);
    let len = check::elements("the similarity matrix", &[two_n, two_n])?;
    let rows = check::elements("the embeddings", &[two_n, z_p.ncols()])?;
    // the losses hold a few 2N x 2N arrays and 2N x d ones at once: refused
    // before starting
    check::allocatable::<F>(
        "the similarity matrices",
        len.saturating_mul(4).saturating_add(rows.saturating_mul(4)),
    )?;
    check::finite("Z_P", z_p)?;
    check::finite("Z_Q", z_q)?;
    Ok(tau)
}

/// The loss value only.
///
/// ```
/// use ndarray::array;
/// use clae_reference::loss::{loss_value, LossKind};
/// let z = array![[1.0, 0.0], [0.0, 1.0]];
/// let l = loss_value(LossKind::Plain, z.view(), z.view(), 1.0).unwrap();
/// assert!((l - (1.0 + 1f64.exp()).ln() + 1.0).abs() < 1e-15);
/// ```
pub fn loss_value<F: Real>(
    kind: LossKind,
    z_p: ArrayView2<'_, F>,
    z_q: ArrayView2<'_, F>,
    tau: f64,
) -> Result<F> {
    Ok(loss_forward_backward(kind, z_p, z_q, tau)?.value)
}

/// Value and gradients w.r.t. both embedding sets for `kind`.
/// For UEL the "gradient" is the stop-gradient one of docs/SPEC.md §3.3.
///
/// Errors: shape mismatch, `N < 2`, `d = 0`, bad `tau` (checked in `F`),
/// non-finite entries, and [`ClaeError::Overflow`] when the value or a
/// gradient is not representable in `F` (huge embeddings, tiny `tau`).
///
/// ```
/// use ndarray::array;
/// use clae_reference::loss::{loss_forward_backward, LossKind};
/// let z_p = array![[1.0f64, 0.0], [0.0, 1.0]];
/// let out = loss_forward_backward(LossKind::SimClr, z_p.view(), z_p.view(), 0.5).unwrap();
/// assert!(out.value.is_finite());
/// assert_eq!(out.grad_z_q.dim(), (2, 2));
/// assert!(loss_forward_backward(LossKind::Uel, z_p.view(), z_p.view(), 0.0).is_err());
/// let huge = array![[1e20f32, 0.0], [0.0, 1e20]];
/// assert!(loss_forward_backward(LossKind::Plain, huge.view(), huge.view(), 0.1).is_err());
/// ```
pub fn loss_forward_backward<F: Real>(
    kind: LossKind,
    z_p: ArrayView2<'_, F>,
    z_q: ArrayView2<'_, F>,
    tau: f64,
) -> Result<LossOutput<F>> {
    let tau_f = check_inputs(z_p, z_q, tau)?;
    checked_loss(kind, z_p, z_q, tau_f, "Z_P, Z_Q and tau")
}

/// The loss on validated input, then the overflow check ([`ClaeError::Overflow`]
/// blaming `cause` unless the value and both gradients are finite).
pub(crate) fn checked_loss<F: Real>(
    kind: LossKind,
    z_p: ArrayView2<'_, F>,
    z_q: ArrayView2<'_, F>,
    tau: F,
    cause: &str,
) -> Result<LossOutput<F>> {
    let out = match kind {
        LossKind::Plain => plain::plain_loss_forward_backward(z_p, z_q, tau),
        LossKind::SimClr => simclr::simclr_loss_forward_backward(z_p, z_q, tau),
        LossKind::Uel => uel::uel_loss_forward_backward(z_p, z_q, tau),
    };
    let finite = out.value.is_finite()
        && crate::check::all_finite(out.grad_z_p.view())
        && crate::check::all_finite(out.grad_z_q.view());
    if finite {
        Ok(out)
    } else {
        Err(ClaeError::Overflow {
            cause: format!("{cause} (tau = {tau})"),
            quantity: format!("the {kind} loss or its gradient"),
            precision: F::NAME.to_string(),
        })
    }
}

/// `logsumexp` of one row with the maximum subtracted: `m + ln Σ exp(s − m)`.
/// Entries equal to `-inf` contribute nothing (used to mask the diagonal).
pub(crate) fn logsumexp<F: Real>(row: ArrayView1<'_, F>) -> F {
    let m = row.fold(F::neg_infinity(), |m, &v| if v > m { v } else { m });
    if m == F::neg_infinity() {
        return m;
    }
    m + row.iter().map(|&v| (v - m).exp()).sum::<F>().ln()
}

/// `−log softmax(row)[t] = logsumexp(row) − row[t]`, given `lse = logsumexp(row)`.
///
/// When `row[t]` is the row maximum (the target dominates — an aligned pair,
/// small `tau`) that difference cancels catastrophically: at `tau = 0.01`
/// in `f32` it rounds a loss of `1e-10` to exactly 0. It is then computed as
/// `log1p(Σ_{c≠t} exp(row[c] − row[t]))`, every exponent `<= 0`.
/// Otherwise `p[t] <= 1/2`, the value is `>= ln 2` and the difference is
/// accurate.
pub(crate) fn neg_log_softmax<F: Real>(row: ArrayView1<'_, F>, lse: F, t: usize) -> F {
    let target = row[t];
    if row.iter().all(|&v| v <= target) {
        row.iter()
            .enumerate()
            .filter(|&(c, _)| c != t)
            .map(|(_, &v)| (v - target).exp())
            .sum::<F>()
            .ln_1p()
    } else {
        lse - target
    }
}

/// `1 − p[t]` for one row of softmax probabilities `p` (masked entries 0),
/// written as `Σ_{c≠t} p[c]`: the same number, without the cancellation
/// of `1 − p[t]` when `p[t]` is close to 1 (the gradient of an aligned
/// pair would otherwise be rounding noise).
pub(crate) fn softmax_complement<F: Real>(p: ArrayView1<'_, F>, t: usize) -> F {
    p.iter()
        .enumerate()
        .filter(|&(c, _)| c != t)
        .map(|(_, &v)| v)
        .sum()
}

/// One row of logits `s` with target column `t`, turned into its softmax in
/// place (entries `-inf` are masked and get probability 0); returns
/// `(−log p[t], 1 − p[t])`:
///
/// ```text
/// m = max_c s[c],   e[c] = exp(s[c] − m),   Σ = Σ_c e[c],   p = e / Σ
/// −log p[t] = m + ln Σ − s[t]     (= ln1p(Σ_{c≠t} e[c]) when s[t] = m)
/// 1 − p[t]  = Σ_{c≠t} p[c]
/// ```
///
/// One `exp` per entry. The two alternative forms avoid cancellation: when
/// `s[t]` is the row maximum (the target dominates — an aligned pair, small
/// `tau`) `m + ln Σ − s[t]` rounds a loss of `1e-10` to 0 in `f32` at
/// `tau = 0.01`, and `1 − p[t]` would be rounding noise when `p[t] ≈ 1`.
/// (Otherwise `p[t] <= 1/2` and the difference is accurate.)
pub(crate) fn softmax_row<F: Real>(mut row: ArrayViewMut1<'_, F>, t: usize) -> (F, F) {
    let target = row[t];
    let m = row.fold(F::neg_infinity(), |m, &v| if v > m { v } else { m });
    row.mapv_inplace(|v| (v - m).exp());
    let total = row.sum();
    let others = row
        .iter()
        .enumerate()
        .filter(|&(c, _)| c != t)
        .fold(F::zero(), |acc, (_, &e)| acc + e);
    let nll = if target >= m {
        others.ln_1p()
    } else {
        m + total.ln() - target
    };
    row.mapv_inplace(|e| e / total);
    (nll, others / total)
}

/// `G + Gᵀ` of a square matrix, tile by tile (64 x 64, row tiles in
/// parallel) so that the transposed reads stay in cache.
pub(crate) fn plus_transpose<F: Real>(g: ArrayView2<'_, F>) -> Array2<F> {
    use ndarray::parallel::prelude::*;
    const TILE: usize = 64;
    let m = g.nrows();
    let mut out = Array2::zeros((m, m));
    out.axis_chunks_iter_mut(Axis(0), TILE)
        .into_par_iter()
        .enumerate()
        .for_each(|(tile, mut rows)| {
            let i0 = tile * TILE;
            for j0 in (0..m).step_by(TILE) {
                for (r, mut out_row) in rows.rows_mut().into_iter().enumerate() {
                    let i = i0 + r;
                    for j in j0..(j0 + TILE).min(m) {
                        out_row[j] = g[[i, j]] + g[[j, i]];
                    }
                }
            }
        });
    out
}

/// `[A; B]`, stacked rows (`2N x d`).
pub(crate) fn stack_rows<F: Real>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Array2<F> {
    ndarray::concatenate(Axis(0), &[a, b]).expect("callers pass equal widths")
}

/// Index of the positive of row `a` among `2N` stacked rows: `(a + N) mod 2N`.
pub(crate) fn pos(a: usize, n: usize) -> usize {
    (a + n) % (2 * n)
}
