//! Properties that settle what the paper's notation leaves unclear, shown on
//! an encoder without BatchNorm so the effect is not a BatchNorm artefact,
//! and the exact degenerations of docs/SPEC.md §1 and 5. Each holds for every backend
//! of the pair on its own.

use super::cases::Case;
use super::pair::{Outcome, Pair};
use crate::backend::{Backend, StepKind};
use crate::metrics::{record, sign};
use clae_reference::adversarial::{AdvConfig, Attack, QStart, Recipe};
use ndarray::Array2;
use proptest::test_runner::TestCaseError;

fn fail(be: &dyn Backend, msg: String) -> TestCaseError {
    TestCaseError::fail(format!("{}: {msg}", be.name()))
}

fn run<T>(be: &dyn Backend, r: crate::backend::Result<T>) -> Result<T, TestCaseError> {
    r.map_err(|e| fail(be, e.to_string()))
}

/// The perturbation is per image: `Q_adv − Q_start = eps sign(g)` row by
/// row, and (for data with at least 3 images of at least 4 pixels) not every
/// image gets the same sign pattern — it is not one delta for the batch.
pub fn per_image_perturbation(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let adv = AdvConfig {
        eps: case.eps.max(1e-3),
        start: case.q_start,
        attack: Attack::Fgsm,
        clamp: None,
    };
    let start = if case.q_start == QStart::P { &p } else { &q };
    for be in [pair.test.as_ref(), pair.reference.as_ref()] {
        let (q_adv, grads) = run(
            be,
            be.adversarial_view(&model, &p, &q, case.loss, case.tau, &adv, Recipe::Lean),
        )?;
        let g = &grads[0];
        let delta = &q_adv - start;
        let unit = match be.precision() {
            crate::backend::Precision::F64 => f64::EPSILON,
            crate::backend::Precision::F32 => f32::EPSILON as f64,
        };
        // delta_i = eps sign(g_i), image by image (up to the rounding of
        // Q_start to the backend's precision and of Q_start + eps).
        for ((d, &g), &s) in delta.iter().zip(g.iter()).zip(start.iter()) {
            let want = adv.eps * sign(g);
            if (d - want).abs() > 2.0 * unit * (s.abs() + adv.eps) {
                return Err(fail(be, format!("delta {d} is not eps sign(g) = {want}")));
            }
        }
        if case.n >= 3 && case.d_in >= 4 && g.iter().all(|v| *v != 0.0) {
            let pattern = |i: usize| g.row(i).mapv(sign);
            let first = pattern(0);
            let shared = (1..case.n).all(|i| pattern(i) == first);
            record(
                &format!("{}: semantics", be.name()),
                "per-image sign patterns",
                shared as u8 as f64,
            );
            if shared {
                return Err(fail(be, "every image got the same sign pattern".into()));
            }
        }
    }
    Ok(())
}

/// On an encoder without BatchNorm, `g_i` changes when only an anchor
/// `P_k`, `k != i`, changes: the sign step is taken over all anchors of the
/// batch (they are the "classifier weights" in every softmax denominator).
///
/// Shown on the `f64` backends with `tau >= 0.2`: the dependence is exact,
/// but at `tau = 0.01` an anchor's softmax weight can be `e^-200`, below the
/// rounding of `g_i` — invisible, not absent — and `f32` hides it sooner.
pub fn anchors_couple_images(pair: &Pair, case: &Case) -> Outcome {
    debug_assert_eq!(case.depth, 0);
    let case = &Case {
        tau: case.tau.max(0.2),
        ..case.clone()
    };
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    if p.iter().chain(q.iter()).all(|v| *v == 0.0) {
        return Ok(());
    }
    let k = (case.seed as usize) % case.n;
    let mut p2 = p.clone();
    p2.row_mut(k).mapv_inplace(|v| -0.5 * v + 0.7);
    let f64_backends = [pair.test.as_ref(), pair.reference.as_ref()]
        .into_iter()
        .filter(|be| be.precision() == crate::backend::Precision::F64);
    for be in f64_backends {
        let adv = clae_reference::encoder::Mode::Train(clae_reference::encoder::Branch::Adv);
        let w1 = run(be, be.embed(&model, &p, adv))?;
        let w2 = run(be, be.embed(&model, &p2, adv))?;
        if w1.row(k) == w2.row(k) {
            // The new image has the same embedding (e.g. every hidden unit
            // dead for both): no anchor changed, nothing to show.
            record(
                &format!("{}: semantics", be.name()),
                "anchor change vacuous (same W_k)",
                0.0,
            );
            continue;
        }
        let g1 = run(be, be.input_gradient(&model, &p, &q, case.loss, case.tau))?;
        let g2 = run(be, be.input_gradient(&model, &p2, &q, case.loss, case.tau))?;
        let mut unchanged = 0;
        for i in (0..case.n).filter(|&i| i != k) {
            // An image whose own gradient vanishes (e.g. dead ReLUs, a zero row
            // through a zero path) cannot show the coupling.
            if g1.row(i).iter().all(|v| *v == 0.0) {
                continue;
            }
            if g1.row(i) == g2.row(i) {
                unchanged += 1;
            }
        }
        record(
            &format!("{}: semantics", be.name()),
            "g_i unchanged by anchor k != i",
            unchanged as f64,
        );
        if unchanged > 0 {
            return Err(fail(
                be,
                format!("{unchanged} images' gradients ignored a change of anchor {k}"),
            ));
        }
    }
    Ok(())
}

/// `eps = 0` gives `Q_adv = Q_start` exactly; `alpha = 0` makes a CLAE step
/// equal a plain step exactly on everything the plain step touches (the
/// adversarial BatchNorm then gets a zero gradient, so weight decay still
/// moves its γ/β, and its running statistics track `Q_adv`: those differ).
pub fn degenerate_cases(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let batches = case.batches(case.d_in, 1);
    let (p, q) = &batches[0];
    let zero = AdvConfig {
        eps: 0.0,
        ..case.adv()
    };
    let start = if case.q_start == QStart::P { p } else { q };
    for be in [pair.test.as_ref(), pair.reference.as_ref()] {
        for recipe in [Recipe::Lean, Recipe::Authors] {
            let (q_adv, _) = run(
                be,
                be.adversarial_view(&model, p, q, case.loss, case.tau, &zero, recipe),
            )?;
            // Q_start as the backend holds it (rounded to f32 for an f32 backend).
            let held = match be.precision() {
                crate::backend::Precision::F64 => start.clone(),
                crate::backend::Precision::F32 => start.mapv(|v| v as f32 as f64),
            };
            let clamped: Array2<f64> = match zero.clamp {
                Some((lo, hi)) => held.mapv(|v| v.clamp(lo, hi)),
                None => held,
            };
            if q_adv != clamped {
                return Err(fail(be, format!("eps = 0 changed Q_start ({recipe:?})")));
            }
        }
        let opt = case.optimizer();
        let plain = run(be, be.train(&model, opt, case.plain(), &batches))?;
        let mut cfg = case.clae(Recipe::Lean);
        cfg.alpha = 0.0;
        let clae = run(be, be.train(&model, opt, StepKind::Clae(cfg), &batches))?;
        if clae.reports[0].total != plain.reports[0].total {
            return Err(fail(
                be,
                "alpha = 0: L_total differs from the plain loss".into(),
            ));
        }
        let mut compared = 0;
        for (a, b) in clae.state.entries.iter().zip(&plain.state.entries) {
            if a.name.contains(".bn.adv.") {
                continue;
            }
            compared += 1;
            if a.value != b.value {
                return Err(fail(
                    be,
                    format!("alpha = 0: {} differs from the plain step", a.name),
                ));
            }
        }
        let shared: Vec<_> = clae
            .optimizer
            .entries
            .iter()
            .filter(|e| !e.name.contains(".bn.adv."))
            .collect();
        if shared.len() != plain.optimizer.entries.len() {
            return Err(fail(
                be,
                "alpha = 0: different optimizer state tensors".into(),
            ));
        }
        for (a, b) in shared.into_iter().zip(&plain.optimizer.entries) {
            if a.name != b.name || a.value != b.value {
                return Err(fail(
                    be,
                    format!("alpha = 0: optimizer state {} differs", a.name),
                ));
            }
        }
        if compared == 0 {
            return Err(fail(be, "alpha = 0: no tensor was compared".into()));
        }
        record(
            &format!("{}: semantics", be.name()),
            "alpha = 0: all tensors bit-identical to the plain step",
            0.0,
        );
    }
    Ok(())
}
