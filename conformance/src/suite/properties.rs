//! The main suite's properties, each written once against
//! [`crate::backend::Backend`] and checked for a pair on well-conditioned
//! cases ([`super::cases::well_conditioned_case`]) with one rule,
//! docs/SPEC.md §8's ([`Pair::close`]): `|a − b| <= max(tol · max|b|, 100 ·
//! noise(T))`, the noise from [`super::noise::sample`], and §8's sign rule.
//! A case a property would have to skip is the generator's failure
//! ([`generator_let_through`]).

use super::cases::{Case, PeerKind};
use super::noise::{sample, sample_at, Noise, Perturbation, Values};
use super::pair::{close_all, error, generator_let_through, Outcome, Pair};
use crate::backend::{Backend, Precision, StepKind, Trained};
use crate::metrics::{below_threshold, compare_signs, compare_views, record_signs, Tolerance};
use clae_reference::adversarial::{QStart, Recipe};
use clae_reference::encoder::{Branch, Mode};
use ndarray::{Array2, Zip};
use proptest::test_runner::TestCaseError;

/// The entries of a matrix, row-major.
fn flat(a: &Array2<f64>) -> Vec<f64> {
    a.iter().copied().collect()
}

/// One named quantity.
fn named(name: &str, v: Vec<f64>) -> (String, Vec<f64>) {
    (name.to_string(), v)
}

/// Both sides' values and every quantity's noise.
fn measure<E>(pair: &Pair, n: usize, eval: E) -> Result<(Values, Values, Noise), TestCaseError>
where
    E: Fn(&dyn Backend, &Perturbation) -> crate::backend::Result<Values>,
{
    let (_, noise) = sample(pair, n, &eval).map_err(TestCaseError::fail)?;
    let (a, b) = pair.both(|be| eval(be, &Perturbation::None))?;
    Ok((a, b, noise))
}

/// [`Pair::close`] on every quantity of `b`, each under its own name.
fn close_each(pair: &Pair, a: &Values, b: &Values, noise: &Noise, tol: f64) -> Outcome {
    for ((name, x), (_, y)) in a.iter().zip(b) {
        pair.close(name, x, y, tol, noise.get(name).copied().unwrap_or(0.0))?;
    }
    Ok(())
}

/// Embeddings in the three modes: training clean, training adv, evaluation.
pub fn embeddings(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, _) = case.batches(case.d_in, 1).remove(0);
    let (a, b, noise) = measure(pair, case.n, |be, s| {
        let mut out = Vec::new();
        for (mode, name) in [
            (Mode::Train(Branch::Clean), "Z (train, clean)"),
            (Mode::Train(Branch::Adv), "Z (train, adv)"),
            (Mode::Eval, "Z (eval)"),
        ] {
            out.push(named(
                name,
                flat(&s.undo(&be.embed(&model, &s.apply(&p), mode)?)),
            ));
        }
        Ok(out)
    })?;
    close_each(pair, &a, &b, &noise, pair.tol.one_step)
}

/// Each loss: value, `dL/dZ_P`, `dL/dZ_Q`.
pub fn losses(pair: &Pair, case: &Case) -> Outcome {
    let (z_p, z_q) = case.embeddings();
    let name = case.loss.name();
    let (a, b, noise) = measure(pair, case.n, |be, s| {
        let out = be.loss(case.loss, &s.apply(&z_p), &s.apply(&z_q), case.tau)?;
        Ok(vec![
            named(&format!("loss {name}"), vec![out.value]),
            named(&format!("dL/dZ_P {name}"), flat(&s.undo(&out.grad_z_p))),
            named(&format!("dL/dZ_Q {name}"), flat(&s.undo(&out.grad_z_q))),
        ])
    })?;
    close_each(pair, &a, &b, &noise, pair.tol.one_step)
}

/// Checks a sign pattern under docs/SPEC.md §8's rule and records it;
/// returns how many signs were excused.
fn signs(
    pair: &Pair,
    quantity: &str,
    g_test: &Array2<f64>,
    g_ref: &Array2<f64>,
) -> Result<usize, TestCaseError> {
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
            "{quantity}: {} of {} signs excused (> 1%): a bug, says docs/SPEC.md §8",
            r.excused, r.total
        )));
    }
    Ok(r.excused)
}

/// `g` under the one rule, then its signs (all comparable: the generator's
/// sign margin keeps every entry of `g` away from zero by a hundred times
/// its rounding noise); returns how many signs were excused.
fn close_g(
    pair: &Pair,
    quantity: &str,
    a: &Array2<f64>,
    b: &Array2<f64>,
    noise: f64,
) -> Result<usize, TestCaseError> {
    pair.close(quantity, &flat(a), &flat(b), pair.tol.one_step, noise)?;
    signs(pair, &format!("sign({quantity})"), a, b)
}

/// The input gradient `g` at `Q_start`, and the sign rule on it.
pub fn input_gradient(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let x = if case.q_start == QStart::P { &p } else { &q };
    let (a, b, noise) = measure(pair, case.n, |be, s| {
        let g = be.input_gradient(&model, &s.apply(&p), &s.apply(x), case.loss, case.tau)?;
        Ok(vec![named("g", flat(&s.undo(&g)))])
    })?;
    let shape = p.dim();
    let g = |v: &Values| Array2::from_shape_vec(shape, v[0].1.clone()).expect("N x D_in");
    close_g(pair, "g", &g(&a), &g(&b), noise["g"]).map(|_| ())
}

/// Where the sign of some step's gradient may legitimately differ.
fn excused_mask(pair: &Pair, grads: &[Array2<f64>]) -> Array2<bool> {
    let mut mask = below_threshold(&grads[0], pair.tol.sign_threshold);
    for g in &grads[1..] {
        Zip::from(&mut mask)
            .and(&below_threshold(g, pair.tol.sign_threshold))
            .for_each(|m, &b| *m |= b);
    }
    mask
}

/// `Q_adv` by both recipes (FGSM or PGD as the case says), every step's `g`
/// and its signs, and `Q_adv` under the sign rule: equal where every step's
/// sign is above the threshold, within `2 eps` elsewhere. An excused sign
/// before the last PGD step parts the two iterates: the generator's failure.
pub fn adversarial_views(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let adv = case.adv();
    let attack = if case.pgd_steps == 0 { "FGSM" } else { "PGD" };
    // the noise of every step's g, from the lean recipe (the authors' takes
    // the same steps)
    let (_, noise) = sample(pair, case.n, |be, s| {
        let (_, grads) = be.adversarial_view(
            &model,
            &s.apply(&p),
            &s.apply(&q),
            case.loss,
            case.tau,
            &adv,
            Recipe::Lean,
        )?;
        Ok(grads
            .iter()
            .enumerate()
            .map(|(t, g)| named(&format!("{t}"), flat(&s.undo(g))))
            .collect())
    })
    .map_err(TestCaseError::fail)?;
    for recipe in [Recipe::Lean, Recipe::Authors] {
        let ((qa, ga), (qb, gb)) =
            pair.both(|be| be.adversarial_view(&model, &p, &q, case.loss, case.tau, &adv, recipe))?;
        if ga.len() != gb.len() || gb.is_empty() {
            return Err(TestCaseError::fail("different numbers of sign steps"));
        }
        for (t, (a, b)) in ga.iter().zip(&gb).enumerate() {
            let quantity = format!("g ({attack} step {})", t + 1);
            let n = noise.get(&format!("{t}")).copied().unwrap_or(0.0);
            if close_g(pair, &quantity, a, b, n)? > 0 && t + 1 < gb.len() {
                return Err(generator_let_through(format!(
                    "an excused sign at {quantity} parts the iterates"
                )));
            }
        }
        let (err, bad) = compare_views(
            &qa,
            &qb,
            &excused_mask(pair, &gb),
            adv.eps,
            pair.tol.one_step,
        );
        crate::metrics::record(&pair.label(), &format!("Q_adv {attack} ({recipe:?})"), err);
        if bad > 0 {
            return Err(TestCaseError::fail(format!(
                "Q_adv {attack}: {bad} entries out of bounds"
            )));
        }
    }
    Ok(())
}

/// The step reports, parameters, BatchNorm running statistics and
/// optimizer state of a run, as named quantities (per-image `Q_adv` put
/// back in the base order by `s`).
fn trained_values(run: &Trained, s: &Perturbation) -> Values {
    let mut out = Vec::new();
    for (i, r) in run.reports.iter().enumerate() {
        out.push(named(&format!("loss@{i}"), vec![r.loss_clean]));
        out.extend(r.loss_adv.map(|v| named(&format!("loss_adv@{i}"), vec![v])));
        out.push(named(&format!("L_total@{i}"), vec![r.total]));
        out.extend(
            r.q_adv
                .as_ref()
                .map(|q| named(&format!("Q_adv@{i}"), flat(&s.undo(q)))),
        );
    }
    for e in run.state.entries.iter().chain(&run.optimizer.entries) {
        out.push(named(&e.name, e.value.iter().copied().collect()));
    }
    out
}

/// Training runs compared: every step's `Q_adv` equal to rounding (a sign
/// that rounding decides is the generator's failure), then every loss and,
/// grouped, the parameters, the running statistics and the optimizer state
/// under the one rule.
fn compare_runs(
    pair: &Pair,
    what: &str,
    model: &crate::backend::Model,
    opt: clae_reference::optim::OptimizerConfig,
    step: StepKind,
    batches: &[(Array2<f64>, Array2<f64>)],
    tol: f64,
) -> Outcome {
    let (a, b, noise) = measure(pair, batches[0].0.nrows(), |be, s| {
        let s = match step {
            StepKind::Peer(_) => without_reorder(s),
            _ => s,
        };
        let moved: Vec<_> = batches
            .iter()
            .map(|(p, q)| (s.apply(p), s.apply(q)))
            .collect();
        Ok(trained_values(&be.train(model, opt, step, &moved)?, s))
    })?;
    let value = |v: &Values, name: &str| v.iter().find(|(n, _)| n == name).map(|(_, x)| x.clone());
    for (name, y) in b.iter().filter(|(n, _)| n.starts_with("Q_adv@")) {
        let x = value(&a, name).unwrap_or_default();
        let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = |v: &[f64]| {
            v.iter()
                .zip(y)
                .map(|(s, t)| (s - t).abs())
                .fold(0.0f64, crate::metrics::nan_max)
        };
        if noise.get(name).copied().unwrap_or(0.0) > pair.tol.one_step * scale {
            return Err(generator_let_through(format!(
                "a sign that rounding decides changed a noise sample's {name} ({what})"
            )));
        }
        if x.len() != y.len() || !within(worst(&x), pair.tol.one_step * scale) {
            return Err(generator_let_through(format!(
                "an excused sign changed {name} ({what})"
            )));
        }
    }
    let reports: Values = b
        .iter()
        .filter(|(n, _)| n.contains('@') && !n.starts_with("Q_adv@"))
        .cloned()
        .collect();
    for (name, y) in &reports {
        let label = format!("{} ({what})", name.split('@').next().unwrap_or(name));
        let x = value(&a, name).unwrap_or_default();
        pair.close(&label, &x, y, tol, noise.get(name).copied().unwrap_or(0.0))?;
    }
    let group = |v: &Values, keep: &dyn Fn(&str) -> bool| -> Values {
        v.iter()
            .filter(|(n, _)| !n.contains('@') && keep(n))
            .cloned()
            .collect()
    };
    let stats = |n: &str| n.ends_with("running_mean") || n.ends_with("running_var");
    let optimizer = |n: &str| {
        [".momentum_buffer", ".step", ".exp_avg", ".exp_avg_sq"]
            .iter()
            .any(|s| n.ends_with(s))
    };
    let parameters = |n: &str| !stats(n) && !optimizer(n);
    for (label, keep) in [
        ("parameters", &parameters as &dyn Fn(&str) -> bool),
        ("BN running stats", &stats),
        ("optimizer state", &optimizer),
    ] {
        pair.close_all(
            &format!("{label} ({what})"),
            &group(&a, keep),
            &group(&b, keep),
            tol,
            &noise,
        )?;
    }
    Ok(())
}

/// One plain step and one CLAE step (both recipes) with the case's
/// optimizer: losses, `L_total`, every parameter, BatchNorm running
/// statistics and optimizer state.
pub fn one_step(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let batches = case.batches(case.d_in, 1);
    let opt = case.optimizer();
    let name = opt.name();
    for (step, what) in [
        (case.plain(), format!("plain, 1 step, {name}")),
        (
            StepKind::Clae(case.clae(Recipe::Lean)),
            format!("CLAE lean, 1 step, {name}"),
        ),
        (
            StepKind::Clae(case.clae(Recipe::Authors)),
            format!("CLAE authors, 1 step, {name}"),
        ),
    ] {
        compare_runs(pair, &what, &model, opt, step, &batches, pair.tol.one_step)?;
    }
    Ok(())
}

/// Twenty steps, plain and CLAE: every step's losses, and the parameters,
/// running statistics and optimizer state at the end (only between `f64`
/// backends, docs/SPEC.md §8).
pub fn trajectory(pair: &Pair, case: &Case) -> Outcome {
    let Some(tol) = pair.tol.trajectory else {
        return Ok(());
    };
    let model = case.model();
    let batches = case.batches(case.d_in, TRAJECTORY_STEPS);
    let opt = case.optimizer();
    for (step, what) in [
        (case.plain(), format!("plain, 20 steps, {}", opt.name())),
        (
            StepKind::Clae(case.clae(Recipe::Lean)),
            format!("CLAE, 20 steps, {}", opt.name()),
        ),
    ] {
        compare_runs(pair, &what, &model, opt, step, &batches, tol)?;
    }
    Ok(())
}

/// Steps of a [`trajectory`].
pub const TRAJECTORY_STEPS: usize = 20;

/// Within each backend, the authors' recipe and the lean one give the same
/// `Q_adv` (to rounding: an excused sign between them is the generator's
/// failure), and under the one rule at the backend's own precision (the
/// lean run standing for `b`, the noise sampled at that precision) the same
/// losses, parameters and optimizer state after a step (not the running
/// statistics: the authors' recipe runs extra training-mode passes).
pub fn recipes_agree(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let batches = case.batches(case.d_in, 1);
    let opt = case.optimizer();
    let keep = |v: Values| -> Values {
        v.into_iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .collect()
    };
    for be in [pair.test.as_ref(), pair.reference.as_ref()] {
        let run = |r: &dyn Backend, recipe, s: &Perturbation| {
            let moved: Vec<_> = batches
                .iter()
                .map(|(p, q)| (s.apply(p), s.apply(q)))
                .collect();
            let step = StepKind::Clae(case.clae(recipe));
            Ok(keep(trained_values(
                &r.train(&model, opt, step, &moved)?,
                s,
            )))
        };
        let fail = |e: crate::backend::Failure| TestCaseError::fail(format!("{}: {e}", be.name()));
        let lean = run(be, Recipe::Lean, &Perturbation::None).map_err(fail)?;
        let authors = run(be, Recipe::Authors, &Perturbation::None).map_err(fail)?;
        let precision = be.precision();
        let (_, noise) = sample_at(precision, precision == Precision::F32, case.n, |r, s| {
            run(r, Recipe::Lean, s)
        })
        .map_err(TestCaseError::fail)?;
        let tol = Tolerance::between(precision, precision).one_step;
        let label = format!("{}: authors vs lean", be.name());
        let (q_a, q_l) = (&authors[3], &lean[3]);
        if q_l.0 != "Q_adv@0" || q_a.0 != q_l.0 {
            return Err(TestCaseError::fail("a CLAE step returned no Q_adv"));
        }
        let (err, _) = error(&q_a.1, &q_l.1, tol, 0.0);
        crate::metrics::record(&label, "Q_adv", err);
        if !within(err, tol) {
            return Err(generator_let_through(format!(
                "{label}: an excused sign separated the recipes' Q_adv"
            )));
        }
        let without_q = |v: &Values| -> Values {
            v.iter()
                .filter(|(n, _)| !n.starts_with("Q_adv"))
                .cloned()
                .collect()
        };
        close_all(
            &label,
            "losses, parameters, optimizer state",
            &without_q(&authors),
            &without_q(&lean),
            tol,
            &noise,
        )?;
    }
    Ok(())
}

/// `x <= bound`, false for a NaN `x` (so `!within` fails a NaN error).
fn within(x: f64, bound: f64) -> bool {
    x <= bound
}

/// A peer attack's random start draws its noise by row position, so a row
/// reorder is not a symmetry of a peer step: such a sample is taken as the
/// base (its noise then comes from the jittered inputs and, for `f32`, the
/// `f64` reference).
fn without_reorder(s: &Perturbation) -> &Perturbation {
    static BASE: Perturbation = Perturbation::None;
    match s {
        Perturbation::Reordered(_) => &BASE,
        other => other,
    }
}

/// The peer steps (docs/SPEC.md §6.1), ACL and RoCL, on cases whose every
/// PGD gradient entry is far from zero ([`super::cases::peer_case`]): each
/// step's gradient of each view under the one rule and the sign rule, the
/// views under the sign rule (equal where every step's sign is above the
/// threshold, within `2 eps` elsewhere), then one step with the case's
/// optimizer compared as [`one_step`] compares a CLAE step.
pub fn peer_steps(pair: &Pair, case: &Case) -> Outcome {
    let model = case.model();
    let batches = case.batches(case.d_in, 1);
    let (p, q) = &batches[0];
    let opt = case.optimizer();
    for method in [PeerKind::Acl, PeerKind::Rocl] {
        let cfg = case.peer(method);
        let (_, noise) = sample(pair, case.n, |be, s| {
            let s = without_reorder(s);
            let (_, grads) = be.peer_attack(&model, &s.apply(p), &s.apply(q), &cfg)?;
            Ok(grads
                .iter()
                .enumerate()
                .flat_map(|(t, views)| {
                    views
                        .iter()
                        .enumerate()
                        .map(move |(v, g)| named(&format!("{t}/{v}"), flat(g)))
                })
                .collect())
        })
        .map_err(TestCaseError::fail)?;
        let ((xa, ga), (xb, gb)) = pair.both(|be| be.peer_attack(&model, p, q, &cfg))?;
        if ga.len() != gb.len() || gb.is_empty() || xa.len() != xb.len() {
            return Err(TestCaseError::fail(format!(
                "{method:?}: different numbers of PGD steps or views"
            )));
        }
        for (t, (sa, sb)) in ga.iter().zip(&gb).enumerate() {
            for (v, (a, b)) in sa.iter().zip(sb).enumerate() {
                let quantity = format!("g ({method:?} PGD step {}, view {})", t + 1, v + 1);
                let n = noise.get(&format!("{t}/{v}")).copied().unwrap_or(0.0);
                if close_g(pair, &quantity, a, b, n)? > 0 && t + 1 < gb.len() {
                    return Err(generator_let_through(format!(
                        "an excused sign at {quantity} parts the iterates"
                    )));
                }
            }
        }
        for (v, (a, b)) in xa.iter().zip(&xb).enumerate() {
            let grads: Vec<Array2<f64>> = gb.iter().map(|s| s[v].clone()).collect();
            let (err, bad) = compare_views(
                a,
                b,
                &excused_mask(pair, &grads),
                cfg.pgd.eps,
                pair.tol.one_step,
            );
            crate::metrics::record(
                &pair.label(),
                &format!("X_adv ({method:?}, view {})", v + 1),
                err,
            );
            if bad > 0 {
                return Err(TestCaseError::fail(format!(
                    "X_adv ({method:?}, view {}): {bad} entries out of bounds",
                    v + 1
                )));
            }
        }
        compare_runs(
            pair,
            &format!("{method:?}, 1 step, {}", opt.name()),
            &model,
            opt,
            StepKind::Peer(cfg),
            &batches,
            pair.tol.one_step,
        )?;
    }
    Ok(())
}
