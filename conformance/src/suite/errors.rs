//! Bad input (docs/SPEC.md §7): every case, generated, gets the same error kind from
//! both backends; and arbitrary garbage never panics either of them.

use super::cases::Case;
use super::pair::{Outcome, Pair};
use crate::backend::{Backend, Model, Precision, StepKind};
use crate::metrics::record;
use clae_reference::adversarial::Recipe;
use clae_reference::encoder::{Branch, Mode};
use clae_reference::optim::OptimizerConfig;
use clae_reference::ErrorKind;
use ndarray::Array2;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// One way to break an otherwise valid call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Corruption {
    /// `Q` has one row more than `P`.
    ViewRows,
    /// `Q` has one column more than `P` (and than the encoder expects).
    ViewCols,
    /// Both views one column wider than the encoder's `D_in`.
    EncoderWidth,
    /// `N = 1`.
    SingleImage,
    /// `N = 0`.
    NoImage,
    /// Loss inputs with `d = 0` columns.
    ZeroDim,
    /// An encoder configured with `d = 0`.
    ZeroDimEncoder,
    /// `tau` set to this bad value.
    Tau(f64),
    /// `eps` set to this bad value.
    Eps(f64),
    /// `alpha` set to this bad value.
    Alpha(f64),
    /// The learning rate set to this bad value.
    Lr(f64),
    /// A pixel clamp with `lo > hi`.
    EmptyRange,
    /// This value written into `P`.
    BadInput(f64),
    /// This value written into a parameter.
    BadParameter(f64),
}

impl Corruption {
    /// The docs/SPEC.md §7 kind this corruption must produce.
    pub fn expected(&self) -> ErrorKind {
        match self {
            Corruption::ViewRows | Corruption::ViewCols | Corruption::EncoderWidth => {
                ErrorKind::ShapeMismatch
            }
            Corruption::SingleImage | Corruption::NoImage => ErrorKind::BatchTooSmall,
            Corruption::ZeroDim | Corruption::ZeroDimEncoder => ErrorKind::ZeroDimension,
            Corruption::Tau(_) => ErrorKind::InvalidTemperature,
            Corruption::Eps(_) | Corruption::Alpha(_) | Corruption::Lr(_) => {
                ErrorKind::InvalidHyperParameter
            }
            Corruption::EmptyRange => ErrorKind::InvalidRange,
            Corruption::BadInput(_) | Corruption::BadParameter(_) => ErrorKind::NonFinite,
        }
    }
}

fn bad_value() -> impl Strategy<Value = f64> {
    prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
}

fn negative_or_bad() -> impl Strategy<Value = f64> {
    prop_oneof![bad_value(), -10.0f64..-1e-6]
}

/// Every docs/SPEC.md §7 case.
pub fn any_corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        Just(Corruption::ViewRows),
        Just(Corruption::ViewCols),
        Just(Corruption::EncoderWidth),
        Just(Corruption::SingleImage),
        Just(Corruption::NoImage),
        Just(Corruption::ZeroDim),
        Just(Corruption::ZeroDimEncoder),
        prop_oneof![bad_value(), Just(0.0), -5.0f64..0.0].prop_map(Corruption::Tau),
        negative_or_bad().prop_map(Corruption::Eps),
        negative_or_bad().prop_map(Corruption::Alpha),
        negative_or_bad().prop_map(Corruption::Lr),
        Just(Corruption::EmptyRange),
        bad_value().prop_map(Corruption::BadInput),
        bad_value().prop_map(Corruption::BadParameter),
    ]
}

type Call = Box<dyn Fn(&dyn Backend) -> Option<ErrorKind>>;

/// The calls a corruption is tried on, each returning the error kind
/// (`None` when the call succeeded or failed without a kind).
fn calls(case: &Case, c: Corruption) -> Vec<(&'static str, Call)> {
    let mut model = case.model();
    let (mut p, mut q) = case.batches(case.d_in, 1).remove(0);
    let (mut z_p, mut z_q) = case.embeddings();
    let mut cfg = case.clae(Recipe::Lean);
    let mut opt = case.optimizer();
    match c {
        Corruption::ViewRows => {
            q = Array2::zeros((case.n + 1, case.d_in));
            z_q = Array2::zeros((case.n + 1, case.d));
        }
        Corruption::ViewCols => {
            q = Array2::zeros((case.n, case.d_in + 1));
            z_q = Array2::zeros((case.n, case.d + 1));
        }
        Corruption::EncoderWidth => {
            p = Array2::zeros((case.n, case.d_in + 1));
            q = p.clone();
        }
        Corruption::SingleImage | Corruption::NoImage => {
            let n = if c == Corruption::SingleImage { 1 } else { 0 };
            p = p.slice(ndarray::s![..n, ..]).to_owned();
            q = q.slice(ndarray::s![..n, ..]).to_owned();
            z_p = z_p.slice(ndarray::s![..n, ..]).to_owned();
            z_q = z_q.slice(ndarray::s![..n, ..]).to_owned();
        }
        Corruption::ZeroDim => {
            z_p = Array2::zeros((case.n, 0));
            z_q = Array2::zeros((case.n, 0));
        }
        Corruption::ZeroDimEncoder => model.config.d = 0,
        Corruption::Tau(t) => cfg.tau = t,
        Corruption::Eps(e) => cfg.adv.eps = e,
        Corruption::Alpha(a) => cfg.alpha = a,
        Corruption::Lr(lr) => {
            opt = match opt {
                OptimizerConfig::Sgd {
                    momentum,
                    weight_decay,
                    ..
                } => OptimizerConfig::Sgd {
                    lr,
                    momentum,
                    weight_decay,
                },
                OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => OptimizerConfig::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                },
            }
        }
        Corruption::EmptyRange => cfg.adv.clamp = Some((1.0, -1.0)),
        Corruption::BadInput(v) => {
            p[[case.n - 1, case.d_in - 1]] = v;
            z_p[[case.n - 1, case.d - 1]] = v;
        }
        Corruption::BadParameter(v) => {
            let last = model.state.entries.len() - 1;
            if let Some(x) = model.state.entries[last].value.iter_mut().next() {
                *x = v;
            }
        }
    }
    let batches = vec![(p.clone(), q.clone())];
    let kind = |r: Result<(), crate::backend::Failure>| r.err().and_then(|f| f.kind);
    let m = model.clone();
    let mut out: Vec<(&'static str, Call)> = Vec::new();
    let (m1, p1) = (m.clone(), p.clone());
    out.push((
        "embed",
        Box::new(move |be| kind(be.embed(&m1, &p1, Mode::Train(Branch::Clean)).map(|_| ()))),
    ));
    let (zp, zq, loss, tau) = (z_p, z_q, cfg.loss, cfg.tau);
    out.push((
        "loss",
        Box::new(move |be| kind(be.loss(loss, &zp, &zq, tau).map(|_| ()))),
    ));
    let (m2, p2, q2, c2) = (m.clone(), p.clone(), q.clone(), cfg);
    out.push((
        "adversarial_view",
        Box::new(move |be| {
            kind(
                be.adversarial_view(&m2, &p2, &q2, c2.loss, c2.tau, &c2.adv, Recipe::Lean)
                    .map(|_| ()),
            )
        }),
    ));
    let (m3, b3, c3) = (m, batches, cfg);
    out.push((
        "clae_step",
        Box::new(move |be| kind(be.train(&m3, opt, StepKind::Clae(c3), &b3).map(|_| ()))),
    ));
    out
}

/// Which calls a corruption concerns (a bad `eps` cannot break `embed`).
fn concerns(c: Corruption, call: &str) -> bool {
    match c {
        Corruption::ViewRows | Corruption::ViewCols => call != "embed",
        Corruption::EncoderWidth | Corruption::ZeroDimEncoder | Corruption::BadParameter(_) => {
            call != "loss"
        }
        Corruption::SingleImage | Corruption::NoImage | Corruption::BadInput(_) => true,
        Corruption::ZeroDim => call == "loss",
        Corruption::Tau(_) => call != "embed",
        Corruption::Eps(_) | Corruption::EmptyRange => {
            call == "adversarial_view" || call == "clae_step"
        }
        Corruption::Alpha(_) | Corruption::Lr(_) => call == "clae_step",
    }
}

/// Every docs/SPEC.md §7 case, generated, returns the expected kind from both backends.
pub fn bad_input(pair: &Pair, case: &Case, corruption: Corruption) -> Outcome {
    let want = corruption.expected();
    for (name, call) in calls(case, corruption) {
        if !concerns(corruption, name) {
            continue;
        }
        for be in [pair.test.as_ref(), pair.reference.as_ref()] {
            let got = catch_unwind(AssertUnwindSafe(|| call(be))).map_err(|_| {
                TestCaseError::fail(format!("{}: {name} panicked on {corruption:?}", be.name()))
            })?;
            record(
                &pair.label(),
                "docs/SPEC.md §7 error kinds",
                (got != Some(want)) as u8 as f64,
            );
            if got != Some(want) {
                return Err(TestCaseError::fail(format!(
                    "{}: {name} with {corruption:?} gave {got:?}, expected {want:?}",
                    be.name()
                )));
            }
        }
    }
    Ok(())
}

/// Arbitrary shapes and hyper-parameters: never a panic, and both backends
/// agree on success or on the error kind.
pub fn garbage(pair: &Pair, g: &Garbage) -> Outcome {
    let model = Model {
        config: clae_reference::encoder::MlpConfig::new(g.d_in, g.hidden, g.depth, g.d),
        state: g.state(),
    };
    let p = Array2::from_elem((g.rows_p, g.cols), g.value);
    let q = Array2::from_elem((g.rows_q, g.cols), 0.5);
    let cfg = clae_reference::step::ClaeConfig {
        loss: g.loss,
        tau: g.tau,
        alpha: g.alpha,
        adv: clae_reference::adversarial::AdvConfig::fgsm(g.eps),
        recipe: Recipe::Lean,
    };
    let opt = OptimizerConfig::authors_sgd();
    let kinds = |be: &dyn Backend| -> Result<Vec<Option<Option<ErrorKind>>>, TestCaseError> {
        let call = |f: &dyn Fn() -> Result<(), crate::backend::Failure>| {
            catch_unwind(AssertUnwindSafe(f))
                .map_err(|_| TestCaseError::fail(format!("{} panicked on {g:?}", be.name())))
                .map(|r| r.err().map(|f| f.kind))
        };
        Ok(vec![
            call(&|| be.embed(&model, &p, Mode::Eval).map(|_| ()))?,
            call(&|| be.loss(g.loss, &p, &q, g.tau).map(|_| ()))?,
            call(&|| be.input_gradient(&model, &p, &q, g.loss, g.tau).map(|_| ()))?,
            call(&|| {
                be.train(&model, opt, StepKind::Clae(cfg), &[(p.clone(), q.clone())])
                    .map(|_| ())
            })?,
        ])
    };
    let (a, b) = (kinds(pair.test.as_ref())?, kinds(pair.reference.as_ref())?);
    // docs/SPEC.md 7.1: where the sides compute in different precisions, a
    // value representable only in the finer one is an Overflow in the
    // coarser one and a result in the other
    let coarser_overflows =
        |x: &Option<Option<ErrorKind>>, y: &Option<Option<ErrorKind>>, side: Precision| {
            side == Precision::F32 && *x == Some(Some(ErrorKind::Overflow)) && y.is_none()
        };
    // and (7.1) at the edge of the range, where the input's squares leave
    // f32's range (|value| >= 1e15), whether an Overflow starts can differ
    // between implementations by how they accumulate (libtorch sums some
    // f32 norms in a wider type, the reference rescales a row whose sum of
    // squares overflows): one side Overflow, the other a finite result
    let edge = g.value.abs() >= 1e15;
    let one_overflows = |x: &Option<Option<ErrorKind>>, y: &Option<Option<ErrorKind>>| {
        (*x == Some(Some(ErrorKind::Overflow)) && y.is_none())
            || (*y == Some(Some(ErrorKind::Overflow)) && x.is_none())
    };
    let (pa, pb) = (pair.test.precision(), pair.reference.precision());
    let agree = a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            x == y
                || (pa != pb && (coarser_overflows(x, y, pa) || coarser_overflows(y, x, pb)))
                || (edge && one_overflows(x, y))
        });
    record(
        &pair.label(),
        "garbage: outcomes agree",
        (!agree) as u8 as f64,
    );
    if !agree {
        return Err(TestCaseError::fail(format!(
            "outcomes differ: {a:?} vs {b:?} on {g:?}"
        )));
    }
    Ok(())
}

/// Random shapes and values for [`garbage`] (all representable in `f32`,
/// so an `f32` backend sees the same numbers as an `f64` one).
#[derive(Debug, Clone)]
pub struct Garbage {
    rows_p: usize,
    rows_q: usize,
    cols: usize,
    d_in: usize,
    hidden: usize,
    depth: usize,
    d: usize,
    state_cols_off_by: usize,
    value: f64,
    tau: f64,
    eps: f64,
    alpha: f64,
    loss: clae_reference::loss::LossKind,
}

impl Garbage {
    fn state(&self) -> clae_reference::state::StateDict<f64> {
        use clae_reference::encoder::{Mlp, MlpConfig};
        // A valid state for a possibly different shape: the backends must
        // reject the mismatch, not index out of bounds.
        let cfg = MlpConfig::new(
            (self.d_in + self.state_cols_off_by).max(1),
            self.hidden.max(1),
            self.depth,
            self.d.max(1),
        );
        Mlp::<f64>::new(cfg, 1)
            .map(|m| m.state_dict())
            .unwrap_or_default()
    }
}

/// Strategy for [`Garbage`].
pub fn any_garbage() -> impl Strategy<Value = Garbage> {
    let weird = prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(0.0),
        Just(-1.0),
        Just(1e30),
        Just(1e-30),
        -3.0f64..3.0
    ];
    (
        (
            0usize..4,
            0usize..4,
            0usize..4,
            0usize..4,
            0usize..3,
            0usize..3,
            0usize..3,
            0usize..2,
        ),
        (weird.clone(), weird.clone(), weird.clone(), weird),
        prop_oneof![
            Just(clae_reference::loss::LossKind::Plain),
            Just(clae_reference::loss::LossKind::SimClr),
            Just(clae_reference::loss::LossKind::Uel)
        ],
    )
        .prop_map(
            |(
                (rows_p, rows_q, cols, d_in, hidden, depth, d, off),
                (value, tau, eps, alpha),
                loss,
            )| Garbage {
                rows_p,
                rows_q,
                cols,
                d_in,
                hidden,
                depth,
                d,
                state_cols_off_by: off,
                value,
                tau,
                eps,
                alpha,
                loss,
            },
        )
}
