//! The properties, each written once against [`Backend`] and checked for a
//! pair of backends (`test` against `reference`) with docs/SPEC.md §8's tolerances.
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
    /// The side errors are measured relative to (docs/SPEC.md §8's `b`).
    pub reference: Box<dyn Backend>,
    /// docs/SPEC.md §8's tolerance for these precisions.
    pub tol: Tolerance,
}

impl Pair {
    /// Pairs `test` with `reference` at docs/SPEC.md §8's tolerance for their precisions.
    pub fn new(test: Box<dyn Backend>, reference: Box<dyn Backend>) -> Self {
        let tol = Tolerance::between(test.precision(), reference.precision());
        Pair {
            test,
            reference,
            tol,
        }
    }

    /// The case as this pair runs it: when an `f32` backend takes part,
    /// near-duplicates are wider and `tau >= 0.1` for them (see
    /// [`super::cases::DataKind::NearDuplicates`]).
    pub fn prepare(&self, case: &Case) -> Case {
        let f32_involved = self.involves_f32();
        let tau = if f32_involved && case.data == super::cases::DataKind::NearDuplicates {
            case.tau.max(0.1)
        } else {
            case.tau
        };
        Case {
            f32_involved,
            tau,
            ..case.clone()
        }
    }

    /// The coarser precision of the two sides.
    pub fn coarser(&self) -> Precision {
        if self.involves_f32() {
            Precision::F32
        } else {
            Precision::F64
        }
    }

    /// Whether either side computes in `f32`.
    pub fn involves_f32(&self) -> bool {
        self.test.precision() == Precision::F32 || self.reference.precision() == Precision::F32
    }

    /// Whether gradients through the forward passes of `inputs` cannot be
    /// held to the pair's tolerance: at `N = 2`, BatchNorm's backward is a
    /// cancellation residue too ill-conditioned for the pair's precision
    /// (any pair); some feature's batch values coincide to within what
    /// the pair's rounding resolves, so `x̂` is rounding noise relative to
    /// itself ([`super::kinks::centring_condition`], any pair); for a pair
    /// involving `f32`, a ReLU may cross its kink
    /// between precisions, or BatchNorm's centring is so ill-conditioned that
    /// `f32` cannot reach docs/SPEC.md §8's `1e-4`. Such a case's gradients are not
    /// compared, and the skip is recorded (see [`super::kinks`]).
    fn skip_near_kink(
        &self,
        what: &str,
        model: &crate::backend::Model,
        inputs: &[(&Array2<f64>, Mode)],
    ) -> bool {
        let u = match self.coarser() {
            Precision::F32 => f32::EPSILON as f64 / 2.0,
            Precision::F64 => f64::EPSILON / 2.0,
        };
        let tol = self.tol.one_step;
        let conditions: Vec<_> = inputs
            .iter()
            .map(|(x, mode)| super::kinks::conditioning(model, x, *mode))
            .collect();
        if conditions.iter().any(|c| c.pair_ill(u, tol)) {
            record(
                &self.label(),
                &format!("skipped: BatchNorm backward at N = 2 ill-conditioned ({what})"),
                0.0,
            );
            return true;
        }
        if conditions.iter().any(|c| c.coinciding(u, tol)) {
            record(
                &self.label(),
                &format!(
                    "skipped: BatchNorm feature whose batch values coincide to rounding ({what})"
                ),
                0.0,
            );
            return true;
        }
        if !self.involves_f32() {
            return false;
        }
        let kink = inputs
            .iter()
            .any(|(x, mode)| super::kinks::f32_relu_flip_risk(model, x, *mode));
        let ill = conditions.iter().any(|c| c.f32_ill());
        if kink {
            record(
                &self.label(),
                &format!("skipped: ReLU kink within f32 rounding ({what})"),
                0.0,
            );
        } else if ill {
            record(
                &self.label(),
                &format!("skipped: BatchNorm ill-conditioned for f32 ({what})"),
                0.0,
            );
        }
        kink || ill
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

    /// Compares two input gradients. docs/SPEC.md §8's bound `tol · max|b|` holds
    /// unless the reference's own rounding noise on `g` (see [`g_noise`])
    /// exceeds a [`NOISE_FACTOR`]th of it — a batch whose gradient cancels to almost
    /// nothing, like `N = 2` through BatchNorm (each feature normalised to
    /// `±1`, so `g` flows only through `eps_bn`). Then the bound is
    /// `NOISE_FACTOR · noise`, and the signs, which rounding decides, are not
    /// compared: returns whether they should be.
    fn close_g(
        &self,
        quantity: &str,
        a: &Array2<f64>,
        b: &Array2<f64>,
        noise: f64,
    ) -> Result<bool, TestCaseError> {
        let tol = self.tol.one_step;
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if NOISE_FACTOR * noise <= tol * scale {
            self.close2(quantity, a, b, tol)?;
            return Ok(true);
        }
        record(
            &self.label(),
            &format!("{quantity}: within rounding noise (signs not compared)"),
            0.0,
        );
        let diff = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f64, crate::metrics::nan_max);
        self.close(quantity, diff / (NOISE_FACTOR * noise / tol), tol)?;
        Ok(false)
    }

    /// What `f32` arithmetic costs the reference on a quantity: the largest
    /// difference between the reference in `f32` and in `f64` (`0` for
    /// pairs of `f64` backends). An input can be so ill-conditioned that
    /// no `f32` implementation reaches docs/SPEC.md §8's `1e-4` (a BatchNorm feature
    /// whose batch variance is below `eps_bn`, at `N = 2` say); there the
    /// bound becomes [`NOISE_FACTOR`] times this cost (see [`Pair::close_noisy`]).
    fn f32_cost<T>(
        &self,
        f: impl Fn(&dyn Backend) -> crate::backend::Result<T>,
        values: impl Fn(&T) -> Vec<f64>,
    ) -> f64 {
        use crate::backend::Reference;
        if !self.involves_f32() {
            return 0.0;
        }
        match (f(&Reference::<f32>::new()), f(&Reference::<f64>::new())) {
            (Ok(lo), Ok(hi)) => values(&lo)
                .iter()
                .zip(values(&hi))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f64, crate::metrics::nan_max),
            _ => 0.0,
        }
    }

    /// `a` close to `b`: within `max(tol · max|b|, NOISE_FACTOR · noise)`, the error
    /// recorded relative to that bound's scale.
    fn close_noisy(&self, quantity: &str, a: &[f64], b: &[f64], tol: f64, noise: f64) -> Outcome {
        if a.len() != b.len() {
            return Err(TestCaseError::fail(format!("{quantity}: shapes differ")));
        }
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if NOISE_FACTOR * noise > tol * scale {
            record(
                &self.label(),
                &format!("{quantity}: bound set by rounding noise"),
                0.0,
            );
        }
        let bound_scale = scale.max(NOISE_FACTOR * noise / tol);
        let err = crate::metrics::err_over(a, b, bound_scale);
        record(&self.label(), quantity, err);
        let bound = tol * bound_scale;
        if a.iter()
            .zip(b)
            .all(|(x, y)| approx::abs_diff_eq!(*x, *y, epsilon = bound))
        {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!(
                "{quantity}: relative error {err:e} > {tol:e}"
            )))
        }
    }

    /// Every named tensor of `b` present in `a` with the same shape, close.
    ///
    /// The optimizer state of the bias of a Linear layer feeding a
    /// training-mode BatchNorm (whose gradient is analytically zero, so both
    /// sides hold rounding noise) is measured against the state of the
    /// layer's weight. With a `noise` map, a tensor's bound is `max(tol · max|b|, NOISE_FACTOR · noise)`
    /// instead of `tol · max|b|` alone, `noise` being the rounding noise the
    /// reference itself shows on that tensor (see [`rounding_noise`]). A
    /// tensor whose gradient is analytically zero or cancels to nearly zero
    /// — the bias of a Linear layer feeding a training-mode BatchNorm; the
    /// sums over a batch of near-duplicates — holds rounding noise in both
    /// backends, and docs/SPEC.md §8's per-tensor scale would compare noise with
    /// noise. Everywhere else the noise is far below `tol · max|b|` and the
    /// bound is docs/SPEC.md §8's.
    fn close_state(
        &self,
        quantity: &str,
        a: &StateDict<f64>,
        b: &StateDict<f64>,
        tol: f64,
        noise: Option<&Noise>,
    ) -> Outcome {
        if a.names() != b.names() {
            return Err(TestCaseError::fail(format!(
                "{quantity}: tensor names differ: {:?} vs {:?}",
                a.names(),
                b.names()
            )));
        }
        let max_abs = |v: &ndarray::ArrayD<f64>| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let mut worst = (0.0f64, String::new());
        for (ea, eb) in a.entries.iter().zip(&b.entries) {
            if ea.value.shape() != eb.value.shape() {
                return Err(TestCaseError::fail(format!(
                    "{quantity}: shape of {}",
                    ea.name
                )));
            }
            let floor = noise
                .and_then(|n| n.get(&ea.name))
                .map_or(0.0, |n| NOISE_FACTOR * n / tol);
            let mut scale = max_abs(&eb.value).max(floor);
            // Optimizer state of a pre-BatchNorm bias (analytically zero
            // gradient): measured against its layer's weight state.
            if let Some((layer, suffix)) = ea.name.split_once(".linear.bias.") {
                if pre_bn_bias(&format!("{layer}.linear.bias")) {
                    if let Some(w) = b.get(&format!("{layer}.linear.weight.{suffix}")) {
                        scale = scale.max(max_abs(w));
                    }
                }
            }
            let e = crate::metrics::err_over(&ea.value, &eb.value, scale);
            if e > worst.0 || e.is_nan() {
                worst = (e, ea.name.clone());
            }
        }
        self.close(quantity, worst.0, tol)
            .map_err(|e| TestCaseError::fail(format!("{e} (worst tensor {})", worst.1)))
    }
}

/// Whether two runs used the same adversarial views up to rounding (`order`:
/// the row order `a`'s batches were given in, undone before comparing).
fn views_agree(a: &Trained, b: &Trained, order: Option<&[usize]>, tol: f64) -> bool {
    a.reports
        .iter()
        .zip(&b.reports)
        .all(|(r, s)| match (&r.q_adv, &s.q_adv) {
            (Some(x), Some(y)) => {
                let mut back = x.clone();
                if let Some(order) = order {
                    // row k of the reordered run belongs to image order[k]
                    for (k, &i) in order.iter().enumerate() {
                        back.row_mut(i).assign(&x.row(k));
                    }
                }
                rel_err2(&back, y) <= tol
            }
            _ => true,
        })
}

/// How far beyond the reference's own measured rounding noise the side
/// under test may lie, where that noise (not docs/SPEC.md §8's `tol · max|b|`) sets
/// the bound. The noise is sampled: the reference's error on this input in
/// `f32` against `f64`, and its change under a few row reorderings. Those
/// are samples of one algorithm's rounding; another correct algorithm
/// (libtorch's vectorised pairwise sums, its BatchNorm variance, fused
/// kernels) has rounding of its own that they do not bound — seen: libtorch
/// `f32` at 12.5 times the reference `f32`'s error on a depth-3, `N = 4`
/// encoder, and 10 to 20 times the reordering noise on sums that cancel.
/// A hundred keeps two orders of magnitude for that. It only matters where
/// the noise exceeds `tol / 100` relative: a well-conditioned input
/// (noise near the unit roundoff) is held to docs/SPEC.md §8's bound as written.
pub const NOISE_FACTOR: f64 = 100.0;

/// Rounding noise per tensor name (largest absolute difference).
pub type Noise = std::collections::HashMap<String, f64>;

/// The rounding noise of a training run at `precision`: per tensor (state
/// and optimizer state), the largest difference between the reference run
/// on `batches` and (a) the same batches with their rows in two other orders
/// (reversed; rotated by one), (b) for `f32`, the reference in `f64`.
/// Reordering the images of a batch is an exact symmetry of every quantity
/// compared, so those differences are rounding alone; (b) is what `f32`
/// arithmetic costs on this input. A run whose `Q_adv` differs beyond
/// rounding (an excused sign) is not used.
fn rounding_noise(
    precision: Precision,
    model: &crate::backend::Model,
    opt: clae_reference::optim::OptimizerConfig,
    step: StepKind,
    batches: &[(Array2<f64>, Array2<f64>)],
) -> Noise {
    use crate::backend::Reference;
    let reference: Box<dyn Backend> = match precision {
        Precision::F64 => Box::new(Reference::<f64>::new()),
        Precision::F32 => Box::new(Reference::<f32>::new()),
    };
    let tol = Tolerance::between(precision, Precision::F64).one_step;
    let mut noise = Noise::new();
    let Ok(base) = reference.train(model, opt, step, batches) else {
        return noise;
    };
    let mut accumulate = |run: &Trained| {
        for (i, (r, b)) in run.reports.iter().zip(&base.reports).enumerate() {
            let scalars = [
                ("loss_clean", Some(r.loss_clean), Some(b.loss_clean)),
                ("loss_adv", r.loss_adv, b.loss_adv),
                ("total", Some(r.total), Some(b.total)),
            ];
            for (name, x, y) in scalars {
                if let (Some(x), Some(y)) = (x, y) {
                    let e = noise.entry(format!("report.{i}.{name}")).or_insert(0.0);
                    *e = crate::metrics::nan_max(*e, (x - y).abs());
                }
            }
        }
        for (x, y) in run
            .state
            .entries
            .iter()
            .zip(&base.state.entries)
            .chain(run.optimizer.entries.iter().zip(&base.optimizer.entries))
        {
            if x.name != y.name || x.value.shape() != y.value.shape() {
                continue;
            }
            let d = x
                .value
                .iter()
                .zip(y.value.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f64, crate::metrics::nan_max);
            let e = noise.entry(x.name.clone()).or_insert(0.0);
            *e = e.max(d);
        }
    };
    if precision == Precision::F32 {
        // what f32 arithmetic itself costs the reference on this input
        if let Ok(run) = Reference::<f64>::new().train(model, opt, step, batches) {
            if views_agree(&run, &base, None, tol) {
                accumulate(&run);
            }
        }
    }
    let n = batches[0].0.nrows();
    let orders = noise_orders(n);
    let jittered: Vec<_> = batches
        .iter()
        .map(|(p, q)| (jitter(p, precision), jitter(q, precision)))
        .collect();
    if let Ok(run) = reference.train(model, opt, step, &jittered) {
        if views_agree(&run, &base, None, tol) {
            accumulate(&run);
        }
    }
    for order in &orders {
        let permuted: Vec<_> = batches
            .iter()
            .map(|(p, q)| {
                (
                    p.select(ndarray::Axis(0), order),
                    q.select(ndarray::Axis(0), order),
                )
            })
            .collect();
        let Ok(run) = reference.train(model, opt, step, &permuted) else {
            continue;
        };
        if views_agree(&run, &base, Some(order), tol) {
            accumulate(&run);
        }
    }
    noise
}

/// Whether `name` is the bias of a Linear layer feeding a BatchNorm: its
/// gradient is analytically zero in training mode.
fn pre_bn_bias(name: &str) -> bool {
    name.starts_with("backbone.") && name.ends_with(".linear.bias")
}

/// `sd` without the entries whose name `drop` selects.
fn without(sd: &StateDict<f64>, drop: fn(&str) -> bool) -> StateDict<f64> {
    StateDict {
        entries: sd
            .entries
            .iter()
            .filter(|e| !drop(&e.name))
            .cloned()
            .collect(),
    }
}

/// Whether `name` (a parameter, or optimizer state named after one) belongs
/// to a Linear layer feeding a BatchNorm.
fn pre_bn_linear(name: &str) -> bool {
    name.starts_with("backbone.") && name.contains(".linear.")
}

/// `sd` without the pre-BatchNorm Linear layers (parameters and their
/// optimizer state). At `N = 2` BatchNorm maps every feature to `±1` up to
/// `eps_bn`, so its training-mode backward is zero up to `eps_bn / σ²`: the
/// gradient of every pre-BatchNorm parameter is what is left of a
/// cancellation of `O(1)` terms, correct to `u · σ² / eps_bn` relative at
/// best, and Adam turns that into differences of its updates that grow with
/// every step (seen: `1.6e-8` after 20 `f64` steps on large inputs).
fn without_pre_bn_linear(sd: &StateDict<f64>) -> StateDict<f64> {
    without(sd, pre_bn_linear)
}

/// The parameters minus the pre-BatchNorm biases. Adam divides their
/// rounding-noise gradient by its own magnitude, so once that noise exceeds
/// Adam's `eps` (`1e-8`: near-duplicate batches in `f64`, almost anything
/// in `f32`) they move by `±lr` at random; their SGD updates (noise times
/// `lr`) are compared.
fn without_pre_bn_biases(sd: &StateDict<f64>) -> StateDict<f64> {
    without(sd, pre_bn_bias)
}

/// The entries of a matrix, row-major.
fn flat(a: &Array2<f64>) -> Vec<f64> {
    a.iter().copied().collect()
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
    let case = &pair.prepare(case);
    let model = case.model();
    let (p, _) = case.batches(case.d_in, 1).remove(0);
    for (mode, name) in [
        (Mode::Train(Branch::Clean), "Z (train, clean)"),
        (Mode::Train(Branch::Adv), "Z (train, adv)"),
        (Mode::Eval, "Z (eval)"),
    ] {
        if pair.involves_f32() && super::kinks::f32_ill_conditioned(&model, &p, mode) {
            // libtorch's f32 BatchNorm statistics lose far more here than
            // the reference's two-pass ones (seen: 1.3e-4 vs 2e-7 at N = 2,
            // depth 3), beyond any bound the reference's noise can set.
            record(
                &pair.label(),
                &format!("skipped: BatchNorm ill-conditioned for f32 ({name})"),
                0.0,
            );
            continue;
        }
        let (a, b) = both(pair, |be| be.embed(&model, &p, mode))?;
        let noise = pair.f32_cost(|be| be.embed(&model, &p, mode), flat);
        pair.close_noisy(name, &flat(&a), &flat(&b), pair.tol.one_step, noise)?;
    }
    Ok(())
}

/// Each loss: value, `dL/dZ_P`, `dL/dZ_Q` (`d >= 2` for SimCLR).
pub fn losses(pair: &Pair, case: &Case) -> Outcome {
    let mut case = pair.prepare(case);
    if case.loss == clae_reference::loss::LossKind::SimClr {
        // SimCLR normalises its own inputs; at d = 1 they become ±1 and its
        // gradient is zero analytically (see `cases::encoder_case`).
        case.d = case.d.max(2);
    }
    let case = &case;
    let (z_p, z_q) = case.embeddings();
    let (a, b) = both(pair, |be| be.loss(case.loss, &z_p, &z_q, case.tau))?;
    let name = case.loss.name();
    let tol = pair.tol.one_step;
    let cost = |pick: fn(&clae_reference::loss::LossOutput<f64>) -> Vec<f64>| {
        pair.f32_cost(|be| be.loss(case.loss, &z_p, &z_q, case.tau), pick)
    };
    let value = |o: &clae_reference::loss::LossOutput<f64>| vec![o.value];
    let grad_p = |o: &clae_reference::loss::LossOutput<f64>| flat(&o.grad_z_p);
    let grad_q = |o: &clae_reference::loss::LossOutput<f64>| flat(&o.grad_z_q);
    pair.close_noisy(
        &format!("loss {name}"),
        &value(&a),
        &value(&b),
        tol,
        cost(value),
    )?;
    pair.close_noisy(
        &format!("dL/dZ_P {name}"),
        &grad_p(&a),
        &grad_p(&b),
        tol,
        cost(grad_p),
    )?;
    pair.close_noisy(
        &format!("dL/dZ_Q {name}"),
        &grad_q(&a),
        &grad_q(&b),
        tol,
        cost(grad_q),
    )
}

/// Checks a sign pattern under docs/SPEC.md §8's rule and records it.
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
            "{quantity}: {} of {} signs excused (> 1%): a bug, says docs/SPEC.md §8",
            r.excused, r.total
        )));
    }
    Ok(r)
}

/// The input gradient `g` at `Q_start`, and the sign rule on it.
pub fn input_gradient(pair: &Pair, case: &Case) -> Outcome {
    let case = &pair.prepare(case);
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let x = if case.q_start == QStart::P { &p } else { &q };
    if collapsed(pair, "g", &model, &p, x, Mode::Train(Branch::Adv)) {
        return Ok(());
    }
    if pair.skip_near_kink("g", &model, &[(x, Mode::Train(Branch::Adv))]) {
        return Ok(());
    }
    let (a, b) = both(pair, |be| {
        be.input_gradient(&model, &p, x, case.loss, case.tau)
    })?;
    let noise = g_noise(pair.coarser(), &model, &p, x, case.loss, case.tau);
    if pair.close_g("g", &a, &b, noise)? {
        signs(pair, "sign(g)", &a, &b)?;
    }
    Ok(())
}

/// Whether every row of `f(P)` and `f(X)` in `mode` is the same vector
/// (the reference in `f64`; e.g. a width-1 hidden layer whose ReLU is off
/// for the whole batch). Every loss's gradient is then zero analytically —
/// all logits are equal, so each row's softmax-weighted mean of the other
/// embeddings is that same vector — and what both backends return for it,
/// and for everything downstream of it, is rounding noise of arbitrary
/// relative size. Such a case is skipped and the skip recorded.
fn collapsed(
    pair: &Pair,
    what: &str,
    model: &crate::backend::Model,
    p: &Array2<f64>,
    x: &Array2<f64>,
    mode: Mode,
) -> bool {
    use crate::backend::Reference;
    let reference = Reference::<f64>::new();
    let (Ok(zp), Ok(zx)) = (
        reference.embed(model, p, mode),
        reference.embed(model, x, mode),
    ) else {
        return false;
    };
    let first = zp.row(0).to_owned();
    let same = zp.rows().into_iter().chain(zx.rows()).all(|r| r == first);
    if same {
        record(
            &pair.label(),
            &format!("skipped: all embeddings identical ({what})"),
            0.0,
        );
    }
    same
}

/// Row orders under which everything compared is exactly symmetric, used
/// to sample rounding noise: reversed, rotated by one, and two fixed
/// pseudo-random shuffles (Fisher–Yates, xorshift).
fn noise_orders(n: usize) -> Vec<Vec<usize>> {
    let mut orders: Vec<Vec<usize>> = vec![
        (0..n).rev().collect(),
        (0..n).map(|i| (i + 1) % n).collect(),
    ];
    for seed in [0x9E37_79B9_7F4A_7C15u64, 0xD1B5_4A32_D192_ED03] {
        let mut state = seed ^ n as u64;
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        orders.push(order);
    }
    orders
}

/// `x` with every entry moved by one unit in the last place of `precision`
/// (relative `2u`, pseudo-random sign). A backward-stable algorithm
/// computes the exact result of inputs perturbed this much, so how far the
/// reference's result moves is rounding noise that two correct
/// implementations may differ by — and, unlike reordering, it is there at
/// `N = 2`, where a sum of two rows is the same in either order.
fn jitter(x: &Array2<f64>, precision: Precision) -> Array2<f64> {
    let ulp = match precision {
        Precision::F32 => f32::EPSILON as f64,
        Precision::F64 => f64::EPSILON,
    };
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    x.mapv(|v| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let sign = if state & 1 == 0 { 1.0 } else { -1.0 };
        v * (1.0 + sign * ulp)
    })
}

/// The reference's own rounding noise on `g` at `precision`: the largest
/// change of `g` when the rows of the batch (of `P` and `X` alike) are
/// reordered — reversed, and rotated by one — and, for `f32`, the reference
/// `f32`'s difference from the reference `f64`. Reordering the images is an
/// exact symmetry of `g` (its rows permute with them), so the change is
/// rounding alone; the `f32`-vs-`f64` difference is what `f32` arithmetic
/// costs on this very input.
fn g_noise(
    precision: Precision,
    model: &crate::backend::Model,
    p: &Array2<f64>,
    x: &Array2<f64>,
    loss: clae_reference::loss::LossKind,
    tau: f64,
) -> f64 {
    use crate::backend::Reference;
    let reference: Box<dyn Backend> = match precision {
        Precision::F64 => Box::new(Reference::<f64>::new()),
        Precision::F32 => Box::new(Reference::<f32>::new()),
    };
    let Ok(base) = reference.input_gradient(model, p, x, loss, tau) else {
        return 0.0;
    };
    let n = p.nrows();
    let orders = noise_orders(n);
    let mut noise = 0.0f64;
    if precision == Precision::F32 {
        // what f32 arithmetic itself costs the reference on this input
        if let Ok(g64) = Reference::<f64>::new().input_gradient(model, p, x, loss, tau) {
            for (a, b) in base.iter().zip(g64.iter()) {
                noise = crate::metrics::nan_max(noise, (a - b).abs());
            }
        }
    }
    if let Ok(g) = reference.input_gradient(
        model,
        &jitter(p, precision),
        &jitter(x, precision),
        loss,
        tau,
    ) {
        for (a, b) in g.iter().zip(base.iter()) {
            noise = crate::metrics::nan_max(noise, (a - b).abs());
        }
    }
    for order in &orders {
        let (pp, xp) = (
            p.select(ndarray::Axis(0), order),
            x.select(ndarray::Axis(0), order),
        );
        if let Ok(g) = reference.input_gradient(model, &pp, &xp, loss, tau) {
            // row k of the reordered run belongs to image order[k]
            for (k, &i) in order.iter().enumerate() {
                for (a, b) in g.row(k).iter().zip(base.row(i)) {
                    noise = crate::metrics::nan_max(noise, (a - b).abs());
                }
            }
        }
    }
    noise
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
    let case = &pair.prepare(case);
    let model = case.model();
    let (p, q) = case.batches(case.d_in, 1).remove(0);
    let adv = case.adv();
    let attack = if case.pgd_steps == 0 { "FGSM" } else { "PGD" };
    let start = if case.q_start == QStart::P { &p } else { &q };
    if collapsed(pair, "Q_adv", &model, &p, start, Mode::Train(Branch::Adv)) {
        return Ok(());
    }
    if pair.skip_near_kink("Q_adv", &model, &[(start, Mode::Train(Branch::Adv))]) {
        return Ok(());
    }
    // (the first step's noise stands for every step's)
    let noise = g_noise(pair.coarser(), &model, &p, start, case.loss, case.tau);
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
            if !pair.close_g(&format!("g ({attack} step {})", t + 1), a, b, noise)? {
                // Rounding decides these signs: the views are not comparable.
                continue 'recipes;
            }
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
/// by `sqrt(v) + 1e-8` and so turn it into `O(lr)` moves (docs/SPEC.md §8 asks `f32`
/// for values and gradients of one step, not for Adam-updated parameters).
fn updates_comparable(pair: &Pair, case: &Case) -> bool {
    case.sgd
        || (pair.test.precision() == Precision::F64 && pair.reference.precision() == Precision::F64)
}

/// How two training runs are compared.
struct Bounds<'a> {
    /// docs/SPEC.md §8 tolerance.
    tol: f64,
    /// Whether parameters are compared at all (see [`updates_comparable`]).
    params: bool,
    /// Adam: the pre-BatchNorm biases are left out (see [`without_pre_bn_biases`]).
    adam: bool,
    /// The reference's own rounding noise per tensor.
    noise: &'a Noise,
    /// Adam at `N = 2`: the pre-BatchNorm Linear layers and their state are
    /// left out (see [`without_pre_bn_linear`]).
    pair_of_rows: bool,
}

fn compare_trained(
    pair: &Pair,
    what: &str,
    a: &Trained,
    b: &Trained,
    bounds: Bounds<'_>,
) -> Outcome {
    let Bounds {
        tol,
        params,
        adam,
        noise,
        pair_of_rows,
    } = bounds;
    let blind = adam && pair_of_rows;
    let keep = |sd: StateDict<f64>| {
        if blind {
            without_pre_bn_linear(&sd)
        } else {
            sd
        }
    };
    if blind {
        record(
            &pair.label(),
            &format!("pre-BN Linear layers ({what}): not compared, Adam at N = 2"),
            0.0,
        );
    }
    for (i, (ra, rb)) in a.reports.iter().zip(&b.reports).enumerate() {
        let n = |name: &str| {
            noise
                .get(&format!("report.{i}.{name}"))
                .copied()
                .unwrap_or(0.0)
        };
        pair.close_noisy(
            &format!("L_total ({what})"),
            &[ra.total],
            &[rb.total],
            tol,
            n("total"),
        )?;
        if let (Some(x), Some(y)) = (ra.loss_adv, rb.loss_adv) {
            pair.close_noisy(
                &format!("loss_adv ({what})"),
                &[x],
                &[y],
                tol,
                n("loss_adv"),
            )?;
        }
    }
    let (params_a, buffers_a) = split(&a.state);
    let (params_b, buffers_b) = split(&b.state);
    if params {
        let (params_a, params_b) = if adam {
            (
                without_pre_bn_biases(&params_a),
                without_pre_bn_biases(&params_b),
            )
        } else {
            (params_a, params_b)
        };
        let (params_a, params_b) = (keep(params_a), keep(params_b));
        pair.close_state(
            &format!("parameters ({what})"),
            &params_a,
            &params_b,
            tol,
            Some(noise),
        )?;
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
        Some(noise),
    )?;
    pair.close_state(
        &format!("optimizer state ({what})"),
        &keep(a.optimizer.clone()),
        &keep(b.optimizer.clone()),
        tol,
        Some(noise),
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
    let case = &pair.prepare(case);
    let model = case.model();
    let batches = case.batches(case.d_in, 1);
    let (p, q) = &batches[0];
    if collapsed(pair, "one step", &model, p, q, Mode::Train(Branch::Clean)) {
        return Ok(());
    }
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
        let noise = rounding_noise(pair.coarser(), &model, opt, step, &batches);
        pair.close_noisy(
            &format!("loss ({what})"),
            &[a.reports[0].loss_clean],
            &[b.reports[0].loss_clean],
            pair.tol.one_step,
            noise.get("report.0.loss_clean").copied().unwrap_or(0.0),
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
        let (p, q) = &batches[0];
        let clean = Mode::Train(Branch::Clean);
        let mut forwards = vec![(p, clean), (q, clean)];
        if let Some(q_adv) = &b.reports[0].q_adv {
            forwards.push((q_adv, Mode::Train(Branch::Adv)));
        }
        if pair.skip_near_kink(&what, &model, &forwards) {
            continue;
        }
        compare_trained(
            pair,
            &what,
            &a,
            &b,
            Bounds {
                tol: pair.tol.one_step,
                params: updates_comparable(pair, case),
                adam: !case.sgd,
                noise: &noise,
                pair_of_rows: case.n == 2,
            },
        )?;
    }
    Ok(())
}

/// Twenty steps, plain and CLAE: parameters, running statistics and
/// optimizer state at the end (only between `f64` backends, docs/SPEC.md §8;
/// batches of `N >= 3`, see `suite::run_pair`).
pub fn trajectory(pair: &Pair, case: &Case) -> Outcome {
    let case = &pair.prepare(case);
    let Some(tol) = pair.tol.trajectory else {
        return Ok(());
    };
    let model = case.model();
    let batches = case.batches(case.d_in, 20);
    let (p, q) = &batches[0];
    if collapsed(pair, "trajectory", &model, p, q, Mode::Train(Branch::Clean)) {
        return Ok(());
    }
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
        let noise = rounding_noise(pair.coarser(), &model, opt, step, &batches);
        let bounds = Bounds {
            tol,
            params: true,
            adam: !case.sgd,
            noise: &noise,
            pair_of_rows: case.n == 2,
        };
        compare_trained(pair, &what, &a, &b, bounds)?;
    }
    Ok(())
}

/// Within each backend, the authors' recipe and the lean one give the same
/// `Q_adv` (sign rule against itself), `L_total` and parameters after a step.
pub fn recipes_agree(pair: &Pair, case: &Case) -> Outcome {
    let case = &pair.prepare(case);
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
        let (pa, pl) = if case.sgd {
            (pa, pl)
        } else {
            (without_pre_bn_biases(&pa), without_pre_bn_biases(&pl))
        };
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
            .fold(0.0f64, crate::metrics::nan_max);
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
