//! The properties, each written once against [`Backend`] and checked for a
//! pair of backends (`test` against `reference`) with SPEC 8's tolerances.
//! Every comparison is recorded in the run's table ([`crate::metrics`]).

use super::cases::Case;
use crate::backend::{Backend, Precision, StepKind, Trained};
use crate::metrics::{
    below_threshold, compare_signs, compare_views, record, record_signs, rel_err, rel_err2,
    SignReport, Tolerance,
};
use clae_reference::adversarial::{QStart, Recipe};
use clae_reference::encoder::{Branch, Mode};
use clae_reference::state::StateDict;
use ndarray::{Array2, Zip};
use proptest::test_runner::TestCaseError;

/// Outcome of one property on one case.
pub type Outcome = Result<(), TestCaseError>;

/// Two backends and the tolerance between them.
pub struct Pair {
    /// The implementation under test.
    pub test: Box<dyn Backend>,
    /// The side errors are measured relative to (SPEC 8's `b`).
    pub reference: Box<dyn Backend>,
    /// SPEC 8's tolerance for these precisions.
    pub tol: Tolerance,
}

impl Pair {
    /// Pairs `test` with `reference` at SPEC 8's tolerance for their precisions.
    pub fn new(test: Box<dyn Backend>, reference: Box<dyn Backend>) -> Self {
        let tol = Tolerance::between(test.precision(), reference.precision());
        Pair {
            test,
            reference,
            tol,
        }
    }

    /// `"<test> vs <reference>"`.
    pub fn label(&self) -> String {
        format!("{} vs {}", self.test.name(), self.reference.name())
    }

    fn close(&self, quantity: &str, err: f64, tol: f64) -> Outcome {
        record(&self.label(), quantity, err);
        if err <= tol {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!(
                "{quantity}: relative error {err:e} > {tol:e}"
            )))
        }
    }

    fn close2(&self, quantity: &str, a: &Array2<f64>, b: &Array2<f64>, tol: f64) -> Outcome {
        self.close(quantity, rel_err2(a, b), tol)
    }

    fn close_scalar(&self, quantity: &str, a: f64, b: f64, tol: f64) -> Outcome {
        record(
            &self.label(),
            quantity,
            rel_err(&[a], &[b]).unwrap_or(f64::INFINITY),
        );
        if approx::relative_eq!(a, b, epsilon = 0.0, max_relative = tol) {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!(
                "{quantity}: {a} vs {b} (relative tolerance {tol:e})"
            )))
        }
    }

    /// Every named tensor of `b` present in `a` with the same shape, close.
    fn close_state(
        &self,
        quantity: &str,
        a: &StateDict<f64>,
        b: &StateDict<f64>,
        tol: f64,
    ) -> Outcome {
        if a.names() != b.names() {
            return Err(TestCaseError::fail(format!(
                "{quantity}: tensor names differ: {:?} vs {:?}",
                a.names(),
                b.names()
            )));
        }
        let mut worst = (0.0f64, String::new());
        for (ea, eb) in a.entries.iter().zip(&b.entries) {
            if ea.value.shape() != eb.value.shape() {
                return Err(TestCaseError::fail(format!(
                    "{quantity}: shape of {}",
                    ea.name
                )));
            }
            let x: Vec<f64> = ea.value.iter().copied().collect();
            let y: Vec<f64> = eb.value.iter().copied().collect();
            let e = rel_err(&x, &y).unwrap_or(f64::INFINITY);
            if e > worst.0 || e.is_nan() {
                worst = (e, ea.name.clone());
            }
        }
        self.close(quantity, worst.0, tol)
            .map_err(|e| TestCaseError::fail(format!("{e} (worst tensor {})", worst.1)))
    }
}

fn both<T>(
    pair: &Pair,
    f: impl Fn(&dyn Backend) -> crate::backend::Result<T>,
) -> Result<(T, T), TestCaseError> {
    let a = f(pair.test.as_ref())
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", pair.test.name())))?;
    let b = f(pair.reference.as_ref())
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", pair.reference.name())))?;
    Ok((a, b))
}

/// Embeddings in the three modes: training clean, training adv, evaluation.
pub fn embeddings(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, _) = case.batches(case.d_in, 1).remove(0);
    for (mode, name) in [
        (Mode::Train(Branch::Clean), "Z (train, clean)"),
        (Mode::Train(Branch::Adv), "Z (train, adv)"),
        (Mode::Eval, "Z (eval)"),
    ] {
        let (a, b) = both(pair, |be| be.embed(&model, &p, mode))?;
        pair.close2(name, &a, &b, pair.tol.one_step)?;
    }
    Ok(())
}

/// Each loss: value, `dL/dZ_P`, `dL/dZ_Q`.
pub fn losses(pair: &Pair, case: &Case) -> Outcome {
    let (z_p, z_q) = case.embeddings();
    let (a, b) = both(pair, |be| be.loss(case.loss, &z_p, &z_q, case.tau))?;
    let name = case.loss.name();
    pair.close_scalar(&format!("loss {name}"), a.value, b.value, pair.tol.one_step)?;
    pair.close2(
        &format!("dL/dZ_P {name}"),
        &a.grad_z_p,
        &b.grad_z_p,
        pair.tol.one_step,
    )?;
    pair.close2(
        &format!("dL/dZ_Q {name}"),
        &a.grad_z_q,
        &b.grad_z_q,
        pair.tol.one_step,
    )
}

/// Checks a sign pattern under SPEC 8's rule and records it.
fn signs(
    pair: &Pair,
    quantity: &str,
    g_test: &Array2<f64>,
    g_ref: &Array2<f64>,
) -> Result<SignReport, TestCaseError> {
    let r = compare_signs(g_test, g_ref, pair.tol.sign_threshold);
    record_signs(&pair.label(), quantity, r);
    if r.mismatched > 0 {
        return Err(TestCaseError::fail(format!(
            "{quantity}: {} signs differ where |g| is above the threshold",
            r.mismatched
        )));
    }
    if r.excused_fraction() > 0.01 {
        return Err(TestCaseError::fail(format!(
            "{quantity}: {} of {} signs excused (> 1%): a bug, says SPEC 8",
            r.excused, r.total
        )));
    }
    Ok(r)
}

/// The input gradient `g` at `Q_start`, and the sign rule on it.
pub fn input_gradient(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let x = if case.q_start == QStart::P { &p } else { &q };
    let (a, b) = both(pair, |be| {
        be.input_gradient(&model, &p, x, case.loss, case.tau)
    })?;
    pair.close2("g", &a, &b, pair.tol.one_step)?;
    signs(pair, "sign(g)", &a, &b).map(|_| ())
}

/// Where the sign of some step's gradient may legitimately differ.
fn excused_mask(pair: &Pair, grads: &[Array2<f64>]) -> Option<Array2<bool>> {
    let mut mask = below_threshold(grads.first()?, pair.tol.sign_threshold);
    for g in &grads[1..] {
        Zip::from(&mut mask)
            .and(&below_threshold(g, pair.tol.sign_threshold))
            .for_each(|m, &b| *m |= b);
    }
    Some(mask)
}

/// `Q_adv` by both recipes (FGSM or PGD as the case says), compared under
/// the sign rule: equal where every step's sign is above the threshold,
/// within `2 eps` elsewhere.
pub fn adversarial_views(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let adv = case.adv();
    let attack = if case.pgd_steps == 0 { "FGSM" } else { "PGD" };
    'recipes: for recipe in [Recipe::Lean, Recipe::Authors] {
        let ((qa, ga), (qb, gb)) = both(pair, |be| {
            be.adversarial_view(&model, &p, &q, case.loss, case.tau, &adv, recipe)
        })?;
        if ga.len() != gb.len() || gb.is_empty() {
            return Err(TestCaseError::fail("different numbers of sign steps"));
        }
        // Step t's gradients are taken at the same point as long as every
        // earlier sign agreed; after an excused sign difference the two
        // iterates part (by 2 eta in one pixel) and later steps are not
        // comparable.
        for (t, (a, b)) in ga.iter().zip(&gb).enumerate() {
            pair.close2(
                &format!("g ({attack} step {})", t + 1),
                a,
                b,
                pair.tol.one_step,
            )?;
            let r = signs(pair, &format!("sign(g) ({attack} step {})", t + 1), a, b)?;
            if r.excused > 0 && t + 1 < gb.len() {
                record(
                    &pair.label(),
                    &format!("Q_adv {attack}: not compared after an excused sign"),
                    0.0,
                );
                continue 'recipes;
            }
        }
        let mask =
            excused_mask(pair, &gb).ok_or_else(|| TestCaseError::fail("no sign step was taken"))?;
        let (err, bad) = compare_views(&qa, &qb, &mask, adv.eps, pair.tol.one_step);
        pair.close(
            &format!("Q_adv {attack} ({recipe:?})"),
            err,
            pair.tol.one_step,
        )?;
        if bad > 0 {
            return Err(TestCaseError::fail(format!(
                "Q_adv {attack}: {bad} entries out of bounds"
            )));
        }
    }
    Ok(())
}

/// Whether two views differ anywhere beyond rounding: then a sign was
/// excused and the steps that used them are not comparable.
fn views_diverged(pair: &Pair, a: &Trained, b: &Trained) -> bool {
    a.reports
        .iter()
        .zip(&b.reports)
        .any(|(ra, rb)| match (&ra.q_adv, &rb.q_adv) {
            (Some(x), Some(y)) => rel_err2(x, y) > pair.tol.one_step,
            _ => false,
        })
}

/// Whether parameters after an update can be compared at `precision`: not
/// after Adam in `f32`, whose first updates divide rounding noise in
/// near-zero gradients (e.g. of a bias feeding BatchNorm, zero analytically)
/// by `sqrt(v) + 1e-8` and so turn it into `O(lr)` moves (SPEC 8 asks `f32`
/// for values and gradients of one step, not for Adam-updated parameters).
fn updates_comparable(pair: &Pair, case: &Case) -> bool {
    case.sgd
        || (pair.test.precision() == Precision::F64 && pair.reference.precision() == Precision::F64)
}

fn compare_trained(
    pair: &Pair,
    what: &str,
    a: &Trained,
    b: &Trained,
    tol: f64,
    params: bool,
) -> Outcome {
    for (ra, rb) in a.reports.iter().zip(&b.reports) {
        pair.close_scalar(&format!("L_total ({what})"), ra.total, rb.total, tol)?;
        if let (Some(x), Some(y)) = (ra.loss_adv, rb.loss_adv) {
            pair.close_scalar(&format!("loss_adv ({what})"), x, y, tol)?;
        }
    }
    let (params_a, buffers_a) = split(&a.state);
    let (params_b, buffers_b) = split(&b.state);
    if params {
        pair.close_state(&format!("parameters ({what})"), &params_a, &params_b, tol)?;
    } else {
        record(
            &pair.label(),
            &format!("parameters ({what}): not compared, f32 Adam"),
            0.0,
        );
    }
    pair.close_state(
        &format!("BN running stats ({what})"),
        &buffers_a,
        &buffers_b,
        tol,
    )?;
    pair.close_state(
        &format!("optimizer state ({what})"),
        &a.optimizer,
        &b.optimizer,
        tol,
    )
}

fn split(sd: &StateDict<f64>) -> (StateDict<f64>, StateDict<f64>) {
    use clae_reference::state::Role;
    let (p, b): (Vec<_>, Vec<_>) = sd
        .entries
        .iter()
        .cloned()
        .partition(|e| e.role == Role::Parameter);
    (StateDict { entries: p }, StateDict { entries: b })
}

/// One plain step and one CLAE step (both recipes) with the case's
/// optimizer: losses, `L_total`, every parameter, BatchNorm running
/// statistics and optimizer state.
pub fn one_step(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let batches = case.batches(case.d_in, 1);
    let opt = case.optimizer();
    let opt_name = opt.name();
    for (step, what) in [
        (case.plain(), format!("plain, 1 step, {opt_name}")),
        (
            StepKind::Clae(case.clae(Recipe::Lean)),
            format!("CLAE lean, 1 step, {opt_name}"),
        ),
        (
            StepKind::Clae(case.clae(Recipe::Authors)),
            format!("CLAE authors, 1 step, {opt_name}"),
        ),
    ] {
        let (a, b) = both(pair, |be| be.train(&model, opt, step, &batches))?;
        pair.close_scalar(
            &format!("loss ({what})"),
            a.reports[0].loss_clean,
            b.reports[0].loss_clean,
            pair.tol.one_step,
        )?;
        if views_diverged(pair, &a, &b) {
            // An excused sign made the two Q_adv differ: the rest of the step
            // is not comparable (input_gradient / adversarial_views check it).
            record(
                &pair.label(),
                &format!("skipped: excused sign ({what})"),
                0.0,
            );
            continue;
        }
        compare_trained(
            pair,
            &what,
            &a,
            &b,
            pair.tol.one_step,
            updates_comparable(pair, case),
        )?;
    }
    Ok(())
}

/// Twenty steps, plain and CLAE: parameters, running statistics and
/// optimizer state at the end (only between `f64` backends, SPEC 8).
pub fn trajectory(pair: &Pair, case: &Case) -> Outcome {
    let Some(tol) = pair.tol.trajectory else {
        return Ok(());
    };
    let model = case.model();
    let batches = case.batches(case.d_in, 20);
    let opt = case.optimizer();
    for (step, what) in [
        (case.plain(), format!("plain, 20 steps, {}", opt.name())),
        (
            StepKind::Clae(case.clae(Recipe::Lean)),
            format!("CLAE, 20 steps, {}", opt.name()),
        ),
    ] {
        let (a, b) = both(pair, |be| be.train(&model, opt, step, &batches))?;
        if views_diverged(pair, &a, &b) {
            record(
                &pair.label(),
                &format!("skipped: excused sign ({what})"),
                0.0,
            );
            continue;
        }
        compare_trained(pair, &what, &a, &b, tol, true)?;
    }
    Ok(())
}

/// Within each backend, the authors' recipe and the lean one give the same
/// `Q_adv` (sign rule against itself), `L_total` and parameters after a step.
pub fn recipes_agree(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let batches = case.batches(case.d_in, 1);
    let opt = case.optimizer();
    for be in [pair.test.as_ref(), pair.reference.as_ref()] {
        let run = |recipe| {
            be.train(&model, opt, StepKind::Clae(case.clae(recipe)), &batches)
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", be.name())))
        };
        let (lean, authors) = (run(Recipe::Lean)?, run(Recipe::Authors)?);
        let label = format!("{}: authors vs lean", be.name());
        let tol = Tolerance::between(be.precision(), be.precision()).one_step;
        let (qa, ql) = (&authors.reports[0].q_adv, &lean.reports[0].q_adv);
        let (Some(qa), Some(ql)) = (qa, ql) else {
            return Err(TestCaseError::fail("a CLAE step returned no Q_adv"));
        };
        let err = rel_err2(qa, ql);
        record(&label, "Q_adv", err);
        if err > tol {
            // Only an excused sign may separate them; then the step differs too.
            record(&label, "skipped: excused sign", 0.0);
            continue;
        }
        let e =
            rel_err(&[authors.reports[0].total], &[lean.reports[0].total]).unwrap_or(f64::INFINITY);
        record(&label, "L_total", e);
        let (pa, _) = split(&authors.state);
        let (pl, _) = split(&lean.state);
        let worst = pa
            .entries
            .iter()
            .zip(&pl.entries)
            .map(|(x, y)| {
                rel_err(
                    &x.value.iter().copied().collect::<Vec<_>>(),
                    &y.value.iter().copied().collect::<Vec<_>>(),
                )
                .unwrap_or(f64::INFINITY)
            })
            .fold(0.0f64, f64::max);
        let worst = if case.sgd || be.precision() == Precision::F64 {
            record(&label, "parameters after 1 step", worst);
            worst
        } else {
            record(
                &label,
                "parameters after 1 step: not compared, f32 Adam",
                0.0,
            );
            0.0
        };
        if e > tol || worst > tol {
            return Err(TestCaseError::fail(format!(
                "{label}: L_total rel err {e:e}, parameters {worst:e} (tolerance {tol:e})"
            )));
        }
    }
    Ok(())
}
