//! The corner suite: the cases the main suite does not draw
//! ([`super::cases::corner_case`]: `N = 2` BatchNorm, `d = 1`, width-1
//! layers, coinciding features, ReLU kinks, zero rows, `1e3` magnitudes,
//! identical embeddings), checked only for what holds there:
//!
//! * both sides return finite results, or the same error kind;
//! * `Q_adv` of the two sides within `2 eps` of each other, entry by entry;
//! * loss values within the pair's tolerance, or where the forward pass is
//!   ill-conditioned within [`bound`] (`kappa = kappa_s kappa_f`);
//! * gradients within [`bound`], derived from the case's condition numbers.
//!
//! Every comparison is recorded as its error divided by its bound (so `<= 1`
//! passes), per pair, property and corner.

use super::cases::Case;
use super::conditioning::{conditioning, relu_flip_risk, unit_roundoff};
use super::pair::{Outcome, Pair};
use crate::backend::{Backend, Precision, Result as BackendResult};
use crate::metrics::record;
use clae_reference::adversarial::{QStart, Recipe};
use clae_reference::encoder::{Branch, Mlp, Mode};
use clae_reference::loss::LossKind;
use ndarray::Array2;
use proptest::test_runner::TestCaseError;

/// How many roundings of the condition-scaled terms a gradient may be off
/// by ([`bound`]): the inner products and sums behind one entry
/// have up to `max(D_in, hidden, d, 2N) <= 128` terms, whose rounding errors
/// accumulate to about `sqrt(128) ≈ 11` roundings in practice (`128` in the
/// worst case); a hundred.
pub const C: f64 = 100.0;

/// Both outcomes of one call: `Some` when both succeeded, `None` when both
/// failed with the same error kind (recorded), a failure otherwise.
fn outcomes<T>(
    pair: &Pair,
    property: &str,
    case: &Case,
    f: impl Fn(&dyn Backend) -> BackendResult<T>,
) -> Result<Option<(T, T)>, TestCaseError> {
    match (f(pair.test.as_ref()), f(pair.reference.as_ref())) {
        (Ok(a), Ok(b)) => Ok(Some((a, b))),
        (Err(a), Err(b)) if a.kind.is_some() && a.kind == b.kind => {
            record_case(pair, property, "same error kind", case, 0.0);
            Ok(None)
        }
        (a, b) => Err(TestCaseError::fail(format!(
            "{property}: outcomes differ: {} gave {:?}, {} gave {:?}",
            pair.test.name(),
            a.err(),
            pair.reference.name(),
            b.err()
        ))),
    }
}

/// Records `ratio` under the pair and under each of the case's corners
/// (rows `corner: <corner>`, all pairs together).
fn record_case(pair: &Pair, property: &str, quantity: &str, case: &Case, ratio: f64) {
    let row = format!("{property}: {quantity}");
    record(&pair.label(), &row, ratio);
    for corner in case.corners() {
        record(&format!("corner: {corner}"), &row, ratio);
    }
}

/// Records `ratio = error / bound` and fails when it exceeds 1 or is not a
/// number.
fn within(pair: &Pair, property: &str, quantity: &str, case: &Case, ratio: f64) -> Outcome {
    record_case(pair, property, quantity, case, ratio);
    if ratio <= 1.0 {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{property}: {quantity}: error {ratio:e} times its bound"
        )))
    }
}

/// Every value finite.
fn finite<'a>(property: &str, what: &str, values: impl IntoIterator<Item = &'a f64>) -> Outcome {
    if values.into_iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{property}: {what} not finite"
        )))
    }
}

/// `diff / bound`, `0` where both are `0` (infinite where only the bound is).
fn ratio(diff: f64, bound: f64) -> f64 {
    crate::metrics::err_over([&diff], [&0.0], bound)
}

fn max_abs<'a>(v: impl IntoIterator<Item = &'a f64>) -> f64 {
    v.into_iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

fn max_diff<'a>(a: impl IntoIterator<Item = &'a f64>, b: impl IntoIterator<Item = &'a f64>) -> f64 {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f64, crate::metrics::nan_max)
}

fn row_norms(z: &Array2<f64>) -> impl Iterator<Item = f64> + '_ {
    z.rows().into_iter().map(|r| r.dot(&r).sqrt())
}

/// The two factors of a loss gradient's bound, `(kappa_s, S)`, for loss
/// inputs `z_p`, `z_q`:
///
/// * `S`, the size of the terms each gradient entry sums: every loss's
///   gradient row is `(1/(M tau)) sum_c w_c Z_c` over rows `Z_c` of the
///   inputs (`M = N` or `2N`) with `sum |w_c| <= 2M` (a row of
///   softmax-minus-one-hot has `|.|_1 <= 2`, a column gathers at most `M`
///   rows), so `S = 2 max|Z| / tau`; SimCLR's own normalisation multiplies
///   by `2 / max(min ||u||, 1e-8)` (its projection's two terms, over the
///   norm it divides by).
/// * `kappa_s = 1 + max|s|`: a logit `s = <a, b> / tau` is computed with an
///   absolute error of about `u |s|`, which the softmax turns into a
///   relative error of its weights of the same size.
pub fn loss_factors(kind: LossKind, z_p: &Array2<f64>, z_q: &Array2<f64>, tau: f64) -> (f64, f64) {
    let big = max_abs(z_p.iter().chain(z_q.iter()));
    let norms: Vec<f64> = row_norms(z_p).chain(row_norms(z_q)).collect();
    let top = norms.iter().fold(0.0f64, |m, v| m.max(*v));
    let low = norms.iter().fold(f64::INFINITY, |m, v| m.min(*v));
    match kind {
        LossKind::SimClr => (1.0 + 1.0 / tau, 2.0 * big / tau * 2.0 / low.max(1e-8)),
        _ => (1.0 + top * top / tau, 2.0 * big / tau),
    }
}

/// The corner suite's bound on a value or gradient `b` (the reference
/// side),
///
/// ```text
/// |a − b| <= C · u · kappa · S
/// ```
///
/// `u` the unit roundoff of the pair's coarser precision and `S` the size
/// of the terms whose sum (or cancellation) `b` is, so that `kappa · S`
/// stands for docs/SPEC.md §8.1's `kappa · max|b|` also where `b` is itself
/// a cancellation residue (analytically zero at `d = 1` or with identical
/// embeddings, where `max|b|` is noise).
///
/// Derivation, to first order in `u`: every stage of the computation adds
/// a few roundings of its own and passes on the relative error it received,
/// multiplied by its condition number. The forward pass's embeddings are
/// accurate to `u kappa_f` (each BatchNorm's centring multiplies the error
/// of its input by its layer's `kappa_bn`,
/// [`super::conditioning::Conditioning::forward`]); the logits multiply the
/// error of the embeddings (and their own) by `kappa_s` ([`loss_factors`]);
/// BatchNorm's backward at `N = 2` returns `(1 − s²)(dy_1 − dy_2) γ / (2σ)`,
/// a product that passes the error of `dy` on unamplified, but computes
/// `1 − s² = 1 / kappa_2` from `s ≈ ±1`, adding `u kappa_2` of its own. So
///
/// * a loss function on given embeddings: `kappa = kappa_s`;
/// * a loss value after the encoder: `kappa = kappa_s kappa_f`;
/// * `g`: `kappa = kappa_s kappa_f + kappa_2`.
///
/// (Measured at `N = 2` in `f32`: errors of `g` between 0.01 and 0.1 times
/// `u kappa_2 max|g|`.) No bound holds at a ReLU kink, where the gradient
/// jumps: its condition number is infinite. `C` counts the roundings
/// ([`C`]).
pub fn bound(u: f64, kappa: f64, scale: f64) -> f64 {
    C * u * kappa * scale
}

/// The loss value within the pair's tolerance or [`bound`] with `kappa =
/// kappa_s`, `S = 1` (a loss is a mean of `lse(s) − s_t`, off by at most
/// twice its logits' errors); `dL/dZ_P` and `dL/dZ_Q` within [`bound`] with
/// `kappa = kappa_s` and `S` from [`loss_factors`].
pub fn losses(pair: &Pair, case: &Case) -> Outcome {
    let (z_p, z_q) = case.embeddings();
    let Some((a, b)) = outcomes(pair, "losses", case, |be| {
        be.loss(case.loss, &z_p, &z_q, case.tau)
    })?
    else {
        return Ok(());
    };
    for out in [&a, &b] {
        let all = out.grad_z_p.iter().chain(&out.grad_z_q).chain([&out.value]);
        finite("losses", "a loss or its gradient", all)?;
    }
    let u = unit_roundoff(pair.coarser());
    let (kappa, scale) = loss_factors(case.loss, &z_p, &z_q, case.tau);
    let value_bound = (pair.tol.one_step * b.value.abs()).max(bound(u, kappa, 1.0));
    within(
        pair,
        "losses",
        "value",
        case,
        ratio((a.value - b.value).abs(), value_bound),
    )?;
    let grads = max_abs(b.grad_z_p.iter().chain(&b.grad_z_q));
    let grad_bound = bound(u, kappa, scale.max(grads));
    for (name, x, y) in [
        ("dL/dZ_P", &a.grad_z_p, &b.grad_z_p),
        ("dL/dZ_Q", &a.grad_z_q, &b.grad_z_q),
    ] {
        within(
            pair,
            "losses",
            name,
            case,
            ratio(max_diff(x, y), grad_bound),
        )?;
    }
    Ok(())
}

/// `kappa` and `S` of [`bound`] for `g` at `x` (anchors `f_adv(p)`),
/// from the reference in `f64`; `None` where the gradient has no condition
/// number: some ReLU input of `x`'s pass is within rounding of its kink at
/// `precision`, where the gradient jumps ([`relu_flip_risk`]).
///
/// `S = max(max|b|, max|J_u^T (r ⊙ S_loss)|)`: `J_u^T` the encoder's
/// backward from the pre-normalisation output `u` (the reference's backward
/// with the normalisation's radial term left out, so that it is not
/// cancelled away at `d = 1`), applied to `S_loss` ([`loss_factors`]) with
/// pseudo-random signs `r` — a statistical estimate of the size of the terms
/// that reach `g`.
fn g_factors(
    case: &Case,
    p: &Array2<f64>,
    x: &Array2<f64>,
    b: &Array2<f64>,
    precision: Precision,
) -> Option<(f64, f64)> {
    let model = case.model();
    let adv = Mode::Train(Branch::Adv);
    if relu_flip_risk(&model, x, adv, precision) {
        return None;
    }
    let mlp = Mlp::<f64>::from_state_dict(model.config, &model.state).ok()?;
    let w = mlp.forward(p.view(), adv).ok()?.z;
    let mut fwd = mlp.forward(x.view(), adv).ok()?;
    let (kappa_s, s_loss) = loss_factors(case.loss, &w, &fwd.z, case.tau);
    fwd.z.fill(0.0);
    let mut state = case.seed | 1;
    let probe = Array2::from_shape_simple_fn(fwd.u.dim(), || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state & 1 == 0 {
            s_loss
        } else {
            -s_loss
        }
    });
    let terms = mlp.backward_input(&fwd, probe.view()).ok()?;
    let c = [p, x].map(|v| conditioning(&model, v, adv));
    let kappa_f = c.iter().fold(1.0f64, |m, c| m.max(c.forward));
    let kappa_2 = c.iter().fold(0.0f64, |m, c| m.max(c.pair_backward));
    let kappa = kappa_s * kappa_f + kappa_2;
    Some((kappa, max_abs(b.iter()).max(max_abs(terms.iter()))))
}

/// `g` at `Q_start`: finite (or the same error kind) and within
/// [`bound`]; at a ReLU kink only finite (recorded as such).
pub fn input_gradient(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let x = if case.q_start == QStart::P { &p } else { &q };
    let Some((a, b)) = outcomes(pair, "input_gradient", case, |be| {
        be.input_gradient(&model, &p, x, case.loss, case.tau)
    })?
    else {
        return Ok(());
    };
    finite("input_gradient", "g", a.iter().chain(b.iter()))?;
    match g_factors(case, &p, x, &b, pair.coarser()) {
        Some((kappa, scale)) => {
            let bound = bound(unit_roundoff(pair.coarser()), kappa, scale);
            within(
                pair,
                "input_gradient",
                "g",
                case,
                ratio(max_diff(&a, &b), bound),
            )
        }
        None => {
            let quantity = "g finite (ReLU kink: no condition number)";
            record_case(pair, "input_gradient", quantity, case, 0.0);
            Ok(())
        }
    }
}

/// The largest `|a − b| / (2 eps + 4 u (|b| + eps))` over two views.
fn views_ratio(a: &Array2<f64>, b: &Array2<f64>, eps: f64, u: f64) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ratio((x - y).abs(), 2.0 * eps + 4.0 * u * (y.abs() + eps)))
        .fold(0.0f64, crate::metrics::nan_max)
}

/// `Q_adv` by both recipes: finite (or the same error kind), and the two
/// sides within `2 eps` entry by entry — each lies in `[Q_start − eps,
/// Q_start + eps]` (clamped alike) — plus the rounding of each side's
/// `Q_start ± eps`, `2 u (|Q_adv| + eps)`.
pub fn adversarial_view(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let adv = case.adv();
    let u = unit_roundoff(pair.coarser());
    for recipe in [Recipe::Lean, Recipe::Authors] {
        let Some(((qa, _), (qb, _))) = outcomes(pair, "adversarial_view", case, |be| {
            be.adversarial_view(&model, &p, &q, case.loss, case.tau, &adv, recipe)
        })?
        else {
            continue;
        };
        finite("adversarial_view", "Q_adv", qa.iter().chain(qb.iter()))?;
        let quantity = format!("Q_adv ({recipe:?})");
        within(
            pair,
            "adversarial_view",
            &quantity,
            case,
            views_ratio(&qa, &qb, adv.eps, u),
        )?;
    }
    Ok(())
}

/// One CLAE step (lean recipe, the case's optimizer): finite report, state
/// and optimizer state (or the same error kind), the clean loss within the
/// pair's tolerance or [`bound`] with `kappa = kappa_s kappa_f` over the
/// clean passes of `P` and `Q` and `S = 1`, `Q_adv` within `2 eps` as in
/// [`adversarial_view`].
pub fn step(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let batches = case.batches(case.d_in, 1);
    let cfg = case.clae(Recipe::Lean);
    let Some((a, b)) = outcomes(pair, "step", case, |be| {
        be.train(
            &model,
            case.optimizer(),
            crate::backend::StepKind::Clae(cfg),
            &batches,
        )
    })?
    else {
        return Ok(());
    };
    for t in [&a, &b] {
        let r = &t.reports[0];
        let state = t
            .state
            .entries
            .iter()
            .chain(&t.optimizer.entries)
            .flat_map(|e| e.value.iter());
        finite("step", "the state after the step", state)?;
        finite(
            "step",
            "the losses",
            [r.loss_clean, r.total].iter().chain(r.loss_adv.as_ref()),
        )?;
    }
    let (ra, rb) = (&a.reports[0], &b.reports[0]);
    let u = unit_roundoff(pair.coarser());
    let clean = Mode::Train(Branch::Clean);
    let (p, q) = &batches[0];
    let kappa_f = [p, q]
        .iter()
        .map(|x| conditioning(&model, x, clean).forward)
        .fold(1.0f64, f64::max);
    // unit embeddings: |s| <= 1 / tau
    let kappa = (1.0 + 1.0 / case.tau) * kappa_f;
    let loss_bound = (pair.tol.one_step * rb.loss_clean.abs()).max(bound(u, kappa, 1.0));
    let loss = ratio((ra.loss_clean - rb.loss_clean).abs(), loss_bound);
    within(pair, "step", "loss", case, loss)?;
    let (Some(qa), Some(qb)) = (&ra.q_adv, &rb.q_adv) else {
        return Err(TestCaseError::fail("step: a CLAE step returned no Q_adv"));
    };
    within(
        pair,
        "step",
        "Q_adv",
        case,
        views_ratio(qa, qb, case.eps, u),
    )
}
