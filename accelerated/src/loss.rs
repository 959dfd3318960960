//! The three contrastive losses of docs/SPEC.md §3 with libtorch tensor ops; autograd
//! differentiates them (nothing here is a hand-written gradient).
//!
//! Each loss takes `z_p, z_q: N x d` and `tau`, and returns a 0-d tensor in
//! the autograd graph of its inputs. Row `k` of the other view plays the role
//! of a classifier weight, so Plain and SimCLR are `F.cross_entropy` over
//! similarity logits — its value computed by `target_nll`, which avoids
//! the cancellation of `logsumexp − s[t]` when the target dominates.

use crate::check::{self, Health};
use crate::device::Precision;
use crate::error::Result;
use clae_reference::ClaeError;
use tch::{Device, Kind, Tensor};

pub use clae_reference::loss::LossKind;

/// `nn.CosineSimilarity`'s clamp in the SimCLR loss, `1e-8`.
pub const COSINE_EPS: f64 = 1e-8;

/// docs/SPEC.md §3.1, Plain:
///
/// ```text
/// S    = Z_P Z_Qᵀ / tau                          N x N logits
/// L_ce = F.cross_entropy(S, [0, 1, …, N−1])      (mean over rows)
/// ```
///
/// (The per-row cross-entropy is `target_nll`, `F.cross_entropy`'s value
/// computed without cancellation when the target dominates.)
pub(crate) fn plain_loss_unchecked(z_p: &Tensor, z_q: &Tensor, tau: f64) -> Result<Tensor> {
    let n = z_p.size()[0];
    let logits = z_p.f_matmul(&z_q.f_tr()?)?.f_div_scalar(tau)?;
    let targets = Tensor::f_arange(n, (Kind::Int64, z_p.device()))?.f_unsqueeze(1)?;
    Ok(target_nll(&logits, &targets)?.f_mean(None::<Kind>)?)
}

/// `[N, …, 2N−1, 0, …, N−1]`: the positive of each of the `2N` stacked rows.
fn positives(n: i64, device: Device) -> Result<Tensor> {
    let idx = Tensor::f_arange(2 * n, (Kind::Int64, device))?;
    Ok(idx.f_add_scalar(n)?.f_remainder(2 * n)?)
}

/// `2N x 2N` boolean identity, the entries `b = a` every row excludes.
fn diagonal(two_n: i64, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_eye(two_n, (Kind::Bool, device))?)
}

/// `−log softmax(s[r])[t_r]` for every row `r` (`t: R x 1`, int64), masked
/// entries `−inf`: `F.cross_entropy(s, t, reduction='none')`, except where
/// the target dominates its row — an aligned pair at small `tau`, the usual
/// case late in training — where `−log_softmax(s)[t]` would be rounding
/// noise (at `tau = 0.01` in `f32` a loss of `1e-10` comes out as 0, and its
/// gradient `p_t − 1` as noise).
///
/// ```text
/// ls = log_softmax(s)                    q = Σ_{c≠t} exp(ls[c])  (= 1 − p_t, summed without p_t)
/// nll = −log1p(−q)    where p_t > 1/2    (q < 1/2: no cancellation in 1 − q)
/// nll = −ls[t]        elsewhere          (p_t <= 1/2: ls[t] <= −ln 2, accurate)
/// ```
///
/// Both branches go through `log_softmax`, whose backward keeps each row of
/// `softmax − onehot` summing to zero (which the gradient of a batch of
/// near-duplicate embeddings, a difference of nearly equal vectors, needs),
/// and the unused one is kept finite (`q` clamped to `<= 1/2`) so no
/// `inf · 0` reaches the gradient through the `where`. Five passes over the
/// logits, against `F.cross_entropy`'s three.
pub(crate) fn target_nll(s: &Tensor, t: &Tensor) -> Result<Tensor> {
    let ls = s.f_log_softmax(1, None::<Kind>)?;
    let general = ls.f_gather(1, t, false)?.f_squeeze_dim(1)?.f_neg()?;
    let q = ls.f_exp()?.f_scatter_value(1, t, 0.0)?.f_sum_dim_intlist(
        [1i64].as_slice(),
        false,
        None::<Kind>,
    )?;
    let dominant = q.f_clamp_max(0.5)?.f_neg()?.f_log1p()?.f_neg()?;
    Ok(dominant.f_where_self(&q.f_lt(0.5)?, &general)?)
}

/// docs/SPEC.md §3.2, SimCLR's NT-Xent, as the authors' `NT_Xent` computes it:
///
/// ```text
/// U = [Z_P; Z_Q]                                        2N x d
/// s = cos(U[a], U[b]) / tau,  s[a,a] = −inf             nn.CosineSimilarity, eps 1e-8
/// L_nt = F.cross_entropy(s, pos)                         (mean over 2N rows)
/// ```
///
/// The cosine of every pair is taken as `n(U) n(U)ᵀ` with
/// `n = F.normalize(·, eps=1e-8)`: the same numbers as
/// `nn.CosineSimilarity(dim=2)(U[:,None], U[None])` (which divides each
/// factor by its clamped norm, then sums the products) without its
/// `2N x 2N x d` intermediate; a test checks the two agree. Gradients flow
/// through both factors and through `n`.
pub(crate) fn simclr_loss_unchecked(z_p: &Tensor, z_q: &Tensor, tau: f64) -> Result<Tensor> {
    let n = z_p.size()[0];
    let device = z_p.device();
    let u = Tensor::f_cat(&[z_p, z_q], 0)?;
    let (un, _) = crate::layers::l2_normalize(&u, COSINE_EPS)?;
    let sim = un.f_matmul(&un.f_tr()?)?.f_div_scalar(tau)?;
    let logits = sim.f_masked_fill(&diagonal(2 * n, device)?, f64::NEG_INFINITY)?;
    let targets = positives(n, device)?.f_unsqueeze(1)?;
    Ok(target_nll(&logits, &targets)?.f_mean(None::<Kind>)?)
}

/// docs/SPEC.md §3.3, UEL (Ye et al.'s batch criterion, `negM = 1`):
///
/// ```text
/// X = [Z_P; Z_Q],   s = X · X.detach()ᵀ / tau,   s[a,a] = −inf      (right factor constant)
/// log p = s − logsumexp_b s                                         (row-wise log-softmax)
/// L_uel = −mean_a ( log p[a,pos(a)] + Σ_{b ∉ {a,pos(a)}} log(1 − p[a,b]) )
/// ```
///
/// `log(1 − p)` is `log1p(−p)` when `p <= 1/2`. Above 1/2 (only the row
/// maximum can be there) it is `logsumexp` of the row without that entry
/// minus `logsumexp` of the row — never `log` of a difference that rounds to
/// zero, so the loss stays finite in `f32` at `tau = 0.01`. The `where`
/// selects between the two with the unused branch clamped to finite values,
/// so no `inf · 0` reaches the gradient.
pub(crate) fn uel_loss_unchecked(z_p: &Tensor, z_q: &Tensor, tau: f64) -> Result<Tensor> {
    let n = z_p.size()[0];
    let device = z_p.device();
    let x = Tensor::f_cat(&[z_p, z_q], 0)?;
    let diag = diagonal(2 * n, device)?;
    let s = x
        .f_matmul(&x.f_detach()?.f_tr()?)?
        .f_div_scalar(tau)?
        .f_masked_fill(&diag, f64::NEG_INFINITY)?;
    let lse = s.f_logsumexp([1], true)?;
    // log_softmax rather than s − lse (see `target_nll`)
    let log_p = s.f_log_softmax(1, None::<Kind>)?;
    let pos = positives(n, device)?.f_unsqueeze(1)?;
    // log p[a,pos(a)] without cancellation when the positive dominates.
    let log_p_pos = target_nll(&s, &pos)?.f_neg()?;
    // log(1 − p) for every entry, stably.
    let p = log_p.f_exp()?;
    let small = p.f_clamp_max(0.5)?.f_neg()?.f_log1p()?;
    let row_max = s.f_argmax(1, true)?;
    let lse_without_max = s
        .f_scatter_value(1, &row_max, f64::NEG_INFINITY)?
        .f_logsumexp([1], true)?;
    let large = lse_without_max.f_sub(&lse)?.f_expand_as(&s)?;
    let log_one_minus_p = large.f_where_self(&p.f_gt(0.5)?, &small)?;
    // Negatives: neither the diagonal nor the positive.
    let is_pos =
        Tensor::f_zeros([2 * n, 2 * n], (Kind::Bool, device))?.f_scatter_value(1, &pos, 1)?;
    let is_neg = diag.f_logical_or(&is_pos)?.f_logical_not()?;
    let neg_sum = log_one_minus_p
        .f_where_scalarother(&is_neg, 0.0)?
        .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?;
    Ok(log_p_pos.f_add(&neg_sum)?.f_mean(None::<Kind>)?.f_neg()?)
}

/// Validates a pair of embedding batches and `tau` as the reference does:
/// `tau` first (in the embeddings' precision), then `N x d` shapes,
/// `N >= 2`, `d >= 1`, finite values, an addressable similarity matrix.
/// Returns the precision.
pub(crate) fn check_inputs(z_p: &Tensor, z_q: &Tensor, tau: f64) -> Result<Precision> {
    let precision = Precision::of_kind(z_p.kind()).ok_or_else(|| ClaeError::ShapeMismatch {
        what: "Z_P element type".into(),
        expected: "f32 or f64".into(),
        actual: format!("{:?}", z_p.kind()),
    })?;
    check::tau(precision, tau)?;
    for (what, z) in [("Z_P", z_p), ("Z_Q", z_q)] {
        if z.dim() != 2 {
            return Err(ClaeError::ShapeMismatch {
                what: what.into(),
                expected: "N x d".into(),
                actual: check::shape_string(&z.size()),
            }
            .into());
        }
    }
    check::pair_shapes(("Z_P", z_p), ("Z_Q", z_q), None)?;
    let two_n = (z_p.size()[0].max(0) as usize).saturating_mul(2);
    let len = clae_reference::check::elements("the similarity matrix", &[two_n, two_n])?;
    let rows =
        clae_reference::check::elements("the embeddings", &[two_n, z_p.size()[1].max(0) as usize])?;
    // the reference's rule: a few 2N x 2N and 2N x d arrays must be allocatable
    check::for_precision!(precision, F => {
        clae_reference::check::allocatable::<F>(
            "the similarity matrices",
            len.saturating_mul(4).saturating_add(rows.saturating_mul(4)),
        )
    })?;
    check::finite("Z_P", z_p)?;
    check::finite("Z_Q", z_q)?;
    Ok(precision)
}

/// The loss on checked input, with its representability flag in `health`
/// (the value is finite, which it is not when the logits `<z_p, z_q> / tau`
/// overflow).
pub(crate) fn checked_loss(
    kind: LossKind,
    z_p: &Tensor,
    z_q: &Tensor,
    tau: f64,
    health: &mut Health,
) -> Result<(Tensor, usize)> {
    let l = loss_unchecked(kind, z_p, z_q, tau)?;
    let at = health.push(format!("the {kind} loss (tau = {tau})"), l.f_detach()?);
    Ok((l, at))
}

pub(crate) fn loss_unchecked(
    kind: LossKind,
    z_p: &Tensor,
    z_q: &Tensor,
    tau: f64,
) -> Result<Tensor> {
    match kind {
        LossKind::Plain => plain_loss_unchecked(z_p, z_q, tau),
        LossKind::SimClr => simclr_loss_unchecked(z_p, z_q, tau),
        LossKind::Uel => uel_loss_unchecked(z_p, z_q, tau),
    }
}

/// The loss `kind` as a differentiable 0-d tensor. `z_q` is moved to
/// `z_p`'s device and kind if needed.
///
/// Errors (docs/SPEC.md §7): bad `tau`, shape mismatch, `N < 2`, `d = 0`, NaN/inf.
///
/// ```
/// use clae_accelerated::loss::{loss, LossKind};
/// let z = tch::Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0]).reshape([2, 2]);
/// // identical orthonormal views, tau = 1: each row's logits are (1, 0)
/// let l = loss(LossKind::Plain, &z, &z, 1.0).unwrap().double_value(&[]);
/// assert!((l - ((1.0 + 1f64.exp()).ln() - 1.0)).abs() < 1e-15);
/// assert!(loss(LossKind::Plain, &z, &z, 0.0).is_err());
/// ```
pub fn loss(kind: LossKind, z_p: &Tensor, z_q: &Tensor, tau: f64) -> Result<Tensor> {
    let z_q = z_q.f_to_device(z_p.device())?.f_to_kind(z_p.kind())?;
    let precision = check_inputs(z_p, &z_q, tau)?;
    let mut health = Health::new(precision);
    health.blame("Z_P, Z_Q and tau");
    let (l, _) = checked_loss(kind, z_p, &z_q, tau, &mut health)?;
    health.check()?;
    Ok(l)
}

/// A loss value with autograd's gradients w.r.t. both embedding sets.
#[derive(Debug)]
pub struct LossOutput {
    /// The scalar loss.
    pub value: f64,
    /// `dL/dZ_P`, `N x d`.
    pub grad_z_p: Tensor,
    /// `dL/dZ_Q`, `N x d` (for UEL the stop-gradient "gradient" of docs/SPEC.md §3.3).
    pub grad_z_q: Tensor,
}

/// Value and gradients of `kind` at `(z_p, z_q)`: both are copied into fresh
/// leaves, the loss is built, and `torch.autograd.grad` returns
/// `(dL/dZ_P, dL/dZ_Q)`.
///
/// ```
/// use clae_accelerated::loss::{loss_forward_backward, LossKind};
/// let z = tch::Tensor::from_slice(&[0.6f64, 0.8, -0.8, 0.6]).reshape([2, 2]);
/// let out = loss_forward_backward(LossKind::SimClr, &z, &z, 0.5).unwrap();
/// // on unit-norm rows the SimCLR gradient is tangential: ⟨g_i, z_i⟩ = 0
/// let radial = (&out.grad_z_p * &z).sum_dim_intlist([1i64].as_slice(), false, None::<tch::Kind>);
/// assert!(radial.abs().max().double_value(&[]) < 1e-15);
/// ```
pub fn loss_forward_backward(
    kind: LossKind,
    z_p: &Tensor,
    z_q: &Tensor,
    tau: f64,
) -> Result<LossOutput> {
    let z_q = z_q.f_to_device(z_p.device())?.f_to_kind(z_p.kind())?;
    let precision = check_inputs(z_p, &z_q, tau)?;
    let mut health = Health::new(precision);
    health.blame("Z_P, Z_Q and tau");
    let leaf_p = z_p.f_detach()?.f_set_requires_grad(true)?;
    let leaf_q = z_q.f_detach()?.f_set_requires_grad(true)?;
    let value = tch::with_grad(|| loss_unchecked(kind, &leaf_p, &leaf_q, tau))?;
    let [grad_z_p, grad_z_q]: [Tensor; 2] =
        crate::encoder::gradients_of(&value, &[&leaf_p, &leaf_q])?
            .into_iter()
            .map(|g| {
                g.ok_or_else(|| {
                    crate::Error::Torch("the loss does not depend on its inputs".into())
                })
            })
            .collect::<Result<Vec<_>>>()?
            .try_into()
            .map_err(|_| {
                crate::Error::Torch("autograd returned the wrong number of gradients".into())
            })?;
    health.push_finite(format!("the {kind} loss (tau = {tau})"), &value)?;
    health.push_finite("dL/dZ_P", &grad_z_p)?;
    health.push_finite("dL/dZ_Q", &grad_z_q)?;
    health.check()?;
    Ok(LossOutput {
        value: value.f_double_value(&[])?,
        grad_z_p,
        grad_z_q,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(v: &[f64], shape: [i64; 2]) -> Tensor {
        Tensor::from_slice(v).reshape(shape).set_requires_grad(true)
    }

    #[test]
    fn target_nll_is_cross_entropy_in_general() {
        let s = Tensor::randn([7, 5], (Kind::Double, Device::Cpu)) * 3.0;
        // mask the diagonal of the first five rows, as the losses mask b = a
        let mask: Vec<bool> = (0..35).map(|k| k / 5 < 5 && k / 5 == k % 5).collect();
        let s = s.masked_fill(
            &Tensor::from_slice(&mask).reshape([7, 5]),
            f64::NEG_INFINITY,
        );
        let t = Tensor::from_slice(&[1i64, 2, 3, 4, 0, 0, 1]).unsqueeze(1);
        let ours = target_nll(&s, &t).unwrap();
        let torch = s.cross_entropy_loss::<Tensor>(
            &t.squeeze_dim(1),
            None,
            tch::Reduction::None,
            -100,
            0.0,
        );
        let diff = (&ours - &torch).abs().max().double_value(&[]);
        assert!(diff < 1e-13, "max difference {diff}");
    }

    #[test]
    fn target_nll_is_accurate_when_the_target_dominates() {
        // logits (0, -50): nll = ln(1 + e^-50), gradient (−q, q) with q = e^-50 / (1 + e^-50).
        let s = leaf(&[0.0, -50.0], [1, 2]);
        let t = Tensor::from_slice(&[0i64]).unsqueeze(1);
        let nll = target_nll(&s, &t).unwrap().sum(Kind::Double);
        let e = (-50f64).exp();
        let want = e.ln_1p();
        let got = nll.double_value(&[]);
        assert!((got - want).abs() <= 1e-15 * want, "{got} vs {want}");
        // F.cross_entropy itself rounds this loss to 0:
        let ce =
            s.cross_entropy_loss::<Tensor>(&t.squeeze_dim(1), None, tch::Reduction::Sum, -100, 0.0);
        assert_eq!(ce.double_value(&[]), 0.0);
        nll.backward();
        let g = Vec::<f64>::try_from(&s.grad().reshape([-1])).unwrap();
        let q = e / (1.0 + e);
        assert!(
            (g[0] + q).abs() <= 1e-15 * q && (g[1] - q).abs() <= 1e-15 * q,
            "{g:?}"
        );
    }
}
