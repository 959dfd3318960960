//! Executing one [`Call`] on each implementation and judging it against the
//! contract.

use super::{Batch, Call, EncoderSpec, PeerCall, StepSpec};
use clae_accelerated::device::Precision as TorchPrecision;
use clae_accelerated::Encoder as _;
use clae_reference::adversarial::Recipe;
use clae_reference::encoder::Mlp;
use clae_reference::loss::LossKind;
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::state::StateDict;
use clae_reference::{ErrorKind, Real};
use ndarray::Array2;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What one implementation made of one call.
#[derive(Debug, Clone, PartialEq)]
struct Judged {
    /// `Ok` or the error's kind.
    outcome: Result<(), ErrorKind>,
    /// Contract violations seen (a panic, a non-finite result, an untyped
    /// error, a failed call that changed state, no recovery).
    violations: Vec<String>,
    /// Whether a normal step after the error was tried and trained.
    recovered: bool,
}

/// What happened to one call name, summed over the implementations.
#[derive(Debug, Default, Clone)]
pub struct Row {
    /// Runs (calls times implementations).
    pub runs: u64,
    /// Successful runs (all-finite results).
    pub ok: u64,
    /// Runs that returned a typed error.
    pub errors: u64,
    /// Errors after which a normal batch was trained (and trained).
    pub recovered: u64,
    /// Calls where one implementation overflowed and the other succeeded.
    pub overflow_one_side: u64,
    /// Error kinds and how often each was seen.
    pub kinds: BTreeMap<String, u64>,
}

/// Counts per call, for the closing table.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// One row per call name.
    pub rows: BTreeMap<&'static str, Row>,
}

impl Tally {
    fn add(&mut self, name: &'static str, j: &Judged) {
        let row = self.rows.entry(name).or_default();
        row.runs += 1;
        match j.outcome {
            Ok(()) => row.ok += 1,
            Err(k) => {
                row.errors += 1;
                *row.kinds.entry(format!("{k:?}")).or_default() += 1;
            }
        }
        if j.recovered {
            row.recovered += 1;
        }
    }

    /// The table, one row per call.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| call | runs | ok | typed errors | recovered after error | overflow on one side only | error kinds |\n|---|---:|---:|---:|---:|---:|---|\n",
        );
        let mut total = Row::default();
        for (name, r) in &self.rows {
            let kinds: Vec<String> = r.kinds.iter().map(|(k, c)| format!("{k} {c}")).collect();
            s.push_str(&format!(
                "| {name} | {} | {} | {} | {} | {} | {} |\n",
                r.runs,
                r.ok,
                r.errors,
                r.recovered,
                r.overflow_one_side,
                kinds.join(", ")
            ));
            total.runs += r.runs;
            total.ok += r.ok;
            total.errors += r.errors;
            total.recovered += r.recovered;
            total.overflow_one_side += r.overflow_one_side;
        }
        s.push_str(&format!(
            "| all | {} | {} | {} | {} | {} | |\n",
            total.runs, total.ok, total.errors, total.recovered, total.overflow_one_side
        ));
        s
    }
}

/// Runs `call` on the reference (f32, f64) and libtorch CPU (f32, f64),
/// judges each, and compares the two implementations in each precision.
/// Returns the violations (empty when the contract held).
pub fn run(call: &Call, tally: &mut Tally) -> Vec<String> {
    let mut violations = Vec::new();
    let r32 = reference::<f32>(call);
    let r64 = reference::<f64>(call);
    let torch_too = !matches!(call, Call::Diagnostics(..) | Call::Backward(..));
    let (t32, t64) = if torch_too {
        (
            Some(torch(call, TorchPrecision::F32)),
            Some(torch(call, TorchPrecision::F64)),
        )
    } else {
        (None, None)
    };
    for (label, j) in [
        ("reference f32", Some(&r32)),
        ("reference f64", Some(&r64)),
        ("tch f32", t32.as_ref()),
        ("tch f64", t64.as_ref()),
    ] {
        let Some(j) = j else { continue };
        tally.add(call.name(), j);
        violations.extend(j.violations.iter().map(|v| format!("{label}: {v}")));
    }
    for (precision, r, t) in [("f32", &r32, t32.as_ref()), ("f64", &r64, t64.as_ref())] {
        let Some(t) = t else { continue };
        match (r.outcome, t.outcome) {
            (a, b) if a == b => {}
            (Ok(()), Err(ErrorKind::Overflow)) | (Err(ErrorKind::Overflow), Ok(())) => {
                tally.rows.entry(call.name()).or_default().overflow_one_side += 1;
            }
            (a, b) => violations.push(format!(
                "{precision}: the reference gave {a:?}, libtorch {b:?} (the same input must give the same kind)"
            )),
        }
    }
    violations
}

/// `f(x)` with a panic turned into a violation.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{what} panicked: {msg}")
    })
}

fn finite<'a>(values: impl IntoIterator<Item = &'a f64>) -> bool {
    values.into_iter().all(|v| v.is_finite())
}

fn bits(state: &StateDict<f64>) -> Vec<u64> {
    state
        .entries
        .iter()
        .flat_map(|e| e.value.iter().map(|v| v.to_bits()))
        .collect()
}

fn state_finite(state: &StateDict<f64>) -> bool {
    state.entries.iter().all(|e| finite(e.value.iter()))
}

/// The normal batch recovery trains on: `4 x d_in`.
fn normal_views(d_in: usize) -> (Array2<f64>, Array2<f64>) {
    (
        Batch::normal(4, d_in, 1).array(),
        Batch::normal(4, d_in, 2).array(),
    )
}

// ------------------------------------------------------------- reference --

fn f_of<F: Real>(a: &Array2<f64>) -> Array2<F> {
    a.mapv(F::c)
}

fn ref_state<F: Real>(mlp: &Mlp<F>, opt: Option<&Optimizer<F>>) -> StateDict<f64> {
    let mut s = mlp
        .state_dict()
        .cast::<f64>()
        .expect("f32 and f64 widen to f64");
    if let Some(o) = opt {
        s.entries
            .extend(o.state_dict(mlp).cast::<f64>().expect("widening").entries);
    }
    s
}

fn ref_encoder<F: Real>(spec: &EncoderSpec) -> clae_reference::Result<Mlp<F>> {
    let mut mlp = Mlp::<F>::new(spec.config, spec.seed)?;
    if let Some((i, j, v)) = spec.corrupt {
        let v = F::c(v);
        if i % 2 == 0 || mlp.backbone.is_empty() {
            let mut params = mlp.parameters_mut();
            let k = i / 2 % params.len();
            let t = &mut params[k];
            let len = t.len();
            *t.iter_mut().nth(j % len).expect("in range") = v;
        } else {
            let depth = mlp.config().depth;
            let layer = &mut mlp.backbone[i / 2 % depth];
            let buffers = [
                &mut layer.bn.clean.running_mean,
                &mut layer.bn.clean.running_var,
                &mut layer.bn.adv.running_mean,
                &mut layer.bn.adv.running_var,
            ];
            let n = buffers.len();
            let b = buffers.into_iter().nth(j % n).expect("in range");
            let len = b.len();
            b[j % len] = v;
        }
    }
    Ok(mlp)
}

/// The `f64` state of the encoder `spec` with entry `i` (mod the number of
/// entries) changed at position `j` to `v`, or dropped when `v` is `None`.
fn hostile_state(
    spec: &EncoderSpec,
    i: usize,
    j: usize,
    v: Option<f64>,
) -> clae_reference::Result<StateDict<f64>> {
    let mut sd = Mlp::<f64>::new(spec.config, spec.seed)?.state_dict();
    let k = i % sd.entries.len();
    match v {
        None => {
            sd.entries.remove(k);
        }
        Some(v) => {
            let e = &mut sd.entries[k];
            let len = e.value.len();
            if let Some(x) = e.value.iter_mut().nth(j % len.max(1)) {
                *x = v;
            }
        }
    }
    Ok(sd)
}

/// One call on the reference in `F`.
fn reference<F: Real>(call: &Call) -> Judged {
    let mut violations = Vec::new();
    let mut recovered = false;
    let bad = |why: &str| -> clae_reference::Result<()> {
        Err(clae_reference::ClaeError::InvalidState {
            message: format!("CONTRACT: {why}"),
        })
    };
    let spec = match call {
        Call::Forward(s, ..)
        | Call::ForwardTrain(s, ..)
        | Call::Embed(s, ..)
        | Call::InputGradient(s, ..)
        | Call::View(s, ..)
        | Call::Step(s, ..)
        | Call::Peer(s, ..) => Some(s),
        _ => None,
    };
    let result = match (call, spec) {
        (Call::NewEncoder(cfg), _) => guarded(call.name(), || {
            let mlp = Mlp::<F>::new(*cfg, 0)?;
            if !state_finite(&ref_state(&mlp, None)) {
                return bad("a new encoder has a non-finite tensor");
            }
            Ok(())
        }),
        (Call::Diagnostics(a, b, t), _) => guarded(call.name(), || {
            use clae_reference::diagnostics::{alignment, uniformity};
            let (a, b) = (f_of::<F>(&a.array()), f_of::<F>(&b.array()));
            let u = uniformity(a.view(), *t)?;
            let al = alignment(a.view(), b.view(), *t)?;
            if !(u.is_finite() && al.is_finite()) {
                return bad("a diagnostic is not finite");
            }
            Ok(())
        }),
        (Call::Loss(kind, z_p, z_q, tau), _) => guarded(call.name(), || {
            let out = clae_reference::loss::loss_forward_backward(
                *kind,
                f_of::<F>(&z_p.array()).view(),
                f_of::<F>(&z_q.array()).view(),
                *tau,
            )?;
            let grads = out.grad_z_p.iter().chain(out.grad_z_q.iter());
            if !(out.value.is_finite() && grads.into_iter().all(|v| v.is_finite())) {
                return bad("the loss or a gradient is not finite");
            }
            Ok(())
        }),
        (Call::LoadState(spec, i, j, v), _) => guarded(call.name(), || {
            let sd = hostile_state(spec, *i, *j, *v)?;
            let mlp = Mlp::<F>::from_state_dict(spec.config, &sd.cast::<F>()?)?;
            if !state_finite(&ref_state(&mlp, None)) {
                return bad("a loaded encoder has a non-finite tensor");
            }
            Ok(())
        }),
        (Call::Backward(spec, x, scale), _) => guarded(call.name(), || {
            let mlp = ref_encoder::<F>(spec)?;
            let fwd = mlp.forward(
                f_of::<F>(&x.array()).view(),
                clae_reference::encoder::Mode::Train(clae_reference::encoder::Branch::Clean),
            )?;
            let dz = fwd.z.mapv(|v| v + F::c(*scale));
            let all_finite = |a: &ndarray::Array2<F>| a.iter().all(|v| v.is_finite());
            let grads_finite = |g: &clae_reference::encoder::MlpGrads<F>| {
                g.tensors()
                    .iter()
                    .flatten()
                    .all(|t| t.iter().all(|v| v.is_finite()))
            };
            let mut first_err = None;
            match mlp.backward(&fwd, dz.view()) {
                Ok(g) if !grads_finite(&g) => return bad("backward gave a non-finite gradient"),
                Ok(_) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
            match mlp.backward_input(&fwd, dz.view()) {
                Ok(dx) if !all_finite(&dx) => {
                    return bad("backward_input gave a non-finite gradient")
                }
                Ok(_) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
            match mlp.backward_with_input(&fwd, dz.view()) {
                Ok((g, dx)) if !grads_finite(&g) || !all_finite(&dx) => {
                    return bad("backward_with_input gave a non-finite gradient")
                }
                Ok(_) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }),
        (_, Some(spec)) => match guarded("building the encoder", || ref_encoder::<F>(spec)) {
            Err(panic) => Err(panic),
            Ok(Err(e)) => Ok(Err(e)),
            Ok(Ok(mut mlp)) => {
                let before = ref_state(&mlp, None);
                let mut opt = None;
                let r = guarded(call.name(), || ref_call(call, &mut mlp, &mut opt));
                if let Ok(Err(e)) = &r {
                    // a failed call leaves the encoder as it was, and a fresh
                    // optimizer's state empty
                    let mut want = before;
                    if let Some(o) = &opt {
                        let fresh = Optimizer::new(*o.config(), &mlp).expect("it was made once");
                        want.entries.extend(
                            fresh
                                .state_dict(&mlp)
                                .cast::<f64>()
                                .expect("widening")
                                .entries,
                        );
                    }
                    if bits(&want) != bits(&ref_state(&mlp, opt.as_ref())) {
                        violations.push(format!(
                            "{}: failed with {e} but changed the state",
                            call.name()
                        ));
                    }
                    if spec.corrupt.is_none() {
                        recovered = true;
                        let (p, q) = normal_views(spec.config.d_in);
                        let mut fresh =
                            Optimizer::new(OptimizerConfig::authors_sgd(), &mlp).expect("valid");
                        let trained = clae_reference::step::plain_step(
                            &mut mlp,
                            &mut fresh,
                            f_of::<F>(&p).view(),
                            f_of::<F>(&q).view(),
                            LossKind::Plain,
                            0.1,
                        );
                        match trained {
                            Ok(r)
                                if r.total.is_finite()
                                    && state_finite(&ref_state(&mlp, Some(&fresh))) => {}
                            other => violations.push(format!(
                                "{}: after the error {e}, a normal batch did not train: {other:?}",
                                call.name()
                            )),
                        }
                    }
                }
                r
            }
        },
        _ => Ok(Ok(())),
    };
    judge(call, result, violations, recovered)
}

fn ref_call<F: Real>(
    call: &Call,
    mlp: &mut Mlp<F>,
    opt_slot: &mut Option<Optimizer<F>>,
) -> clae_reference::Result<()> {
    use clae_reference::adversarial::{adversarial_view, adversarial_view_authors, input_gradient};
    let bad = |why: String| -> clae_reference::Result<()> {
        Err(clae_reference::ClaeError::InvalidState {
            message: format!("CONTRACT: {why}"),
        })
    };
    match call {
        Call::Forward(_, x, mode) => {
            let fwd = mlp.forward(f_of::<F>(&x.array()).view(), *mode)?;
            if !fwd.z.iter().all(|v| v.is_finite()) {
                return bad("forward gave a non-finite embedding".into());
            }
        }
        Call::ForwardTrain(_, x, branch) => {
            let fwd = mlp.forward_train(f_of::<F>(&x.array()).view(), *branch)?;
            if !fwd.z.iter().all(|v| v.is_finite()) || !state_finite(&ref_state(mlp, None)) {
                return bad("forward_train gave a non-finite embedding or statistic".into());
            }
        }
        Call::Embed(_, x) => {
            let z = mlp.embed(f_of::<F>(&x.array()).view())?;
            if !z.iter().all(|v| v.is_finite()) {
                return bad("embed gave a non-finite embedding".into());
            }
        }
        Call::InputGradient(_, p, x, kind, tau) => {
            let g = input_gradient(
                mlp,
                f_of::<F>(&p.array()).view(),
                f_of::<F>(&x.array()).view(),
                *kind,
                *tau,
            )?;
            if !g.iter().all(|v| v.is_finite()) {
                return bad("input_gradient gave a non-finite g".into());
            }
        }
        Call::View(_, p, q, kind, tau, adv, recipe) => {
            let (p, q) = (f_of::<F>(&p.array()), f_of::<F>(&q.array()));
            let view = match recipe {
                Recipe::Lean => adversarial_view(mlp, p.view(), q.view(), *kind, *tau, adv)?,
                Recipe::Authors => {
                    adversarial_view_authors(mlp, p.view(), q.view(), *kind, *tau, adv)?
                }
            };
            if !view
                .q_adv
                .iter()
                .chain(view.grads.iter().flatten())
                .all(|v| v.is_finite())
                || !state_finite(&ref_state(mlp, None))
            {
                return bad("a view or the state is not finite".into());
            }
        }
        Call::Step(_, p, q, cfg, spec) => {
            let opt = opt_slot.insert(Optimizer::new(*cfg, mlp)?);
            let (p, q) = (f_of::<F>(&p.array()), f_of::<F>(&q.array()));
            let r = match spec {
                StepSpec::Plain(kind, tau) => {
                    clae_reference::step::plain_step(mlp, opt, p.view(), q.view(), *kind, *tau)?
                }
                StepSpec::Clae(c) => {
                    clae_reference::step::clae_step(mlp, opt, p.view(), q.view(), c)?
                }
            };
            let report_finite = r.loss_clean.is_finite()
                && r.total.is_finite()
                && r.loss_adv.is_none_or(|v| v.is_finite())
                && r.q_adv.iter().flatten().all(|v| v.is_finite());
            if !report_finite || !state_finite(&ref_state(mlp, Some(opt))) {
                return bad("a step's report, encoder or optimizer state is not finite".into());
            }
        }
        Call::Peer(_, p, q, cfg, which) => {
            use clae_reference::peers::{peer_attack_trace, peer_step, peer_views};
            let (p, q) = (f_of::<F>(&p.array()), f_of::<F>(&q.array()));
            let all_finite = |a: &Array2<F>| a.iter().all(|v| v.is_finite());
            match which {
                PeerCall::Views => {
                    if !peer_views(mlp, p.view(), q.view(), cfg)?
                        .iter()
                        .all(all_finite)
                    {
                        return bad("peer_views gave a non-finite view".into());
                    }
                }
                PeerCall::Trace => {
                    let t = peer_attack_trace(mlp, p.view(), q.view(), cfg)?;
                    let mut arrays = t
                        .views
                        .iter()
                        .chain(t.iterates.iter().flatten())
                        .chain(t.gradients.iter().flatten());
                    if !arrays.all(all_finite) {
                        return bad(
                            "peer_attack_trace gave a non-finite view, iterate or gradient".into(),
                        );
                    }
                }
                PeerCall::Step(opt_cfg) => {
                    let opt = opt_slot.insert(Optimizer::new(*opt_cfg, mlp)?);
                    let r = peer_step(mlp, opt, p.view(), q.view(), cfg)?;
                    let report_finite = r.loss_clean.is_finite()
                        && r.total.is_finite()
                        && r.loss_adv.is_none_or(|v| v.is_finite())
                        && r.q_adv.iter().flatten().all(|v| v.is_finite());
                    if !report_finite || !state_finite(&ref_state(mlp, Some(opt))) {
                        return bad(
                            "a peer step's report, encoder or optimizer state is not finite".into(),
                        );
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------- libtorch --

type TorchResult<T> = clae_accelerated::Result<T>;

fn t_of(a: &Array2<f64>, precision: TorchPrecision) -> tch::Tensor {
    // the same values as the reference sees in F: rounded once from f64
    let t = tch::Tensor::from_slice(a.as_slice().expect("standard layout"))
        .reshape([a.nrows() as i64, a.ncols() as i64]);
    t.to_kind(precision.kind())
}

fn t_finite(t: &tch::Tensor) -> bool {
    t.numel() == 0 || t.isfinite().all().int64_value(&[]) != 0
}

fn torch_state(
    mlp: &clae_accelerated::mlp::Mlp,
    opt: Option<&clae_accelerated::optim::Optimizer>,
) -> TorchResult<StateDict<f64>> {
    let mut s = mlp.state_dict::<f64>()?;
    if let Some(o) = opt {
        s.entries.extend(o.state_dict::<f64>()?.entries);
    }
    Ok(s)
}

fn torch_encoder(
    spec: &EncoderSpec,
    precision: TorchPrecision,
) -> TorchResult<clae_accelerated::mlp::Mlp> {
    let mlp = clae_accelerated::mlp::Mlp::new(spec.config, spec.seed, tch::Device::Cpu, precision)?;
    if let Some((i, j, v)) = spec.corrupt {
        // the tensor the reference corrupts: the same parameter, or the same buffer
        let entries = mlp.tensors().entries();
        let params: Vec<_> = entries
            .iter()
            .filter(|e| e.role == clae_reference::state::Role::Parameter)
            .collect();
        let target = if i % 2 == 0 || spec.config.depth == 0 {
            &params[i / 2 % params.len()].tensor
        } else {
            let l = i / 2 % spec.config.depth;
            let names = [
                "bn.clean.running_mean",
                "bn.clean.running_var",
                "bn.adv.running_mean",
                "bn.adv.running_var",
            ];
            let name = format!("backbone.{l}.{}", names[j % 4]);
            &entries
                .iter()
                .find(|e| e.name == name)
                .expect("a buffer of the layout")
                .tensor
        };
        let len = target.numel();
        let rounded = match precision {
            TorchPrecision::F32 => v as f32 as f64,
            TorchPrecision::F64 => v,
        };
        tch::no_grad(|| {
            let _ = target
                .view([-1])
                .narrow(0, (j % len) as i64, 1)
                .fill_(rounded);
        });
    }
    Ok(mlp)
}

fn torch(call: &Call, precision: TorchPrecision) -> Judged {
    let mut violations = Vec::new();
    let mut recovered = false;
    let result: Result<TorchResult<()>, String> = guarded(call.name(), || -> TorchResult<()> {
        let bad = |why: &str| -> TorchResult<()> {
            Err(clae_reference::ClaeError::InvalidState {
                message: format!("CONTRACT: {why}"),
            }
            .into())
        };
        match call {
            Call::NewEncoder(cfg) => {
                let mlp = clae_accelerated::mlp::Mlp::new(*cfg, 0, tch::Device::Cpu, precision)?;
                if !state_finite(&torch_state(&mlp, None)?) {
                    return bad("a new encoder has a non-finite tensor");
                }
                Ok(())
            }
            Call::LoadState(spec, i, j, v) => {
                let sd = hostile_state(spec, *i, *j, *v)?;
                let mlp = clae_accelerated::mlp::Mlp::from_state_dict(
                    spec.config,
                    &sd,
                    tch::Device::Cpu,
                    precision,
                )?;
                if !state_finite(&torch_state(&mlp, None)?) {
                    return bad("a loaded encoder has a non-finite tensor");
                }
                Ok(())
            }
            Call::Loss(kind, z_p, z_q, tau) => {
                let out = clae_accelerated::loss::loss_forward_backward(
                    *kind,
                    &t_of(&z_p.array(), precision),
                    &t_of(&z_q.array(), precision),
                    *tau,
                )?;
                if !(out.value.is_finite() && t_finite(&out.grad_z_p) && t_finite(&out.grad_z_q)) {
                    return bad("the loss or a gradient is not finite");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    });
    let spec = match call {
        Call::Forward(s, ..)
        | Call::ForwardTrain(s, ..)
        | Call::Embed(s, ..)
        | Call::InputGradient(s, ..)
        | Call::View(s, ..)
        | Call::Step(s, ..)
        | Call::Peer(s, ..) => Some(s),
        _ => None,
    };
    let result = match (result, spec) {
        (Ok(Ok(())), Some(spec)) => match torch_encoder(spec, precision) {
            Err(e) => Ok(Err(e)),
            Ok(mut mlp) => {
                let before = torch_state(&mlp, None).ok();
                let mut opt = None;
                let r = guarded(call.name(), || {
                    torch_call(call, &mut mlp, &mut opt, precision)
                });
                if let Ok(Err(e)) = &r {
                    // a failed call leaves the encoder as it was, and a fresh
                    // optimizer's state empty (which is what it exports)
                    let after = torch_state(&mlp, opt.as_ref()).ok();
                    if let (Some(b), Some(a)) = (before, after) {
                        if bits(&b) != bits(&a) {
                            violations.push(format!(
                                "{}: failed with {e} but changed the state",
                                call.name()
                            ));
                        }
                    }
                    if spec.corrupt.is_none() {
                        recovered = true;
                        let (p, q) = normal_views(spec.config.d_in);
                        let trained = clae_accelerated::optim::Optimizer::new(
                            OptimizerConfig::authors_sgd(),
                            &mlp,
                        )
                        .and_then(|mut o| {
                            let r = clae_accelerated::step::plain_step(
                                &mut mlp,
                                &mut o,
                                &t_of(&p, precision),
                                &t_of(&q, precision),
                                LossKind::Plain,
                                0.1,
                            )?;
                            Ok((r, torch_state(&mlp, Some(&o))?))
                        });
                        match trained {
                            Ok((r, s)) if r.total.is_finite() && state_finite(&s) => {}
                            other => violations.push(format!(
                                "{}: after the error {e}, a normal batch did not train: {:?}",
                                call.name(),
                                other.map(|(r, _)| r.total)
                            )),
                        }
                    }
                }
                r
            }
        },
        (r, _) => r,
    };
    // untyped libtorch errors break the contract (every failure must say
    // what was wrong with the input)
    let result = result.map(|r| match r {
        Ok(()) => Ok(()),
        Err(e) => match e.spec() {
            Some(s) => Err(s.clone()),
            None => Err(clae_reference::ClaeError::InvalidState {
                message: format!("CONTRACT: an untyped error: {e}"),
            }),
        },
    });
    judge(call, result, violations, recovered)
}

fn torch_call(
    call: &Call,
    mlp: &mut clae_accelerated::mlp::Mlp,
    opt_slot: &mut Option<clae_accelerated::optim::Optimizer>,
    precision: TorchPrecision,
) -> TorchResult<()> {
    use clae_accelerated::adversarial::{
        adversarial_view, adversarial_view_authors, input_gradient,
    };
    let bad = |why: &str| -> TorchResult<()> {
        Err(clae_reference::ClaeError::InvalidState {
            message: format!("CONTRACT: {why}"),
        }
        .into())
    };
    match call {
        Call::Forward(_, x, mode) => {
            let z = tch::no_grad(|| mlp.forward(&t_of(&x.array(), precision), *mode))?;
            if !t_finite(&z) {
                return bad("forward gave a non-finite embedding");
            }
        }
        Call::ForwardTrain(_, x, branch) => {
            let z = tch::no_grad(|| mlp.forward_train(&t_of(&x.array(), precision), *branch))?;
            if !t_finite(&z) || !state_finite(&torch_state(mlp, None)?) {
                return bad("forward_train gave a non-finite embedding or statistic");
            }
        }
        Call::Embed(_, x) => {
            let z = mlp.embed(&t_of(&x.array(), precision))?;
            if !t_finite(&z) {
                return bad("embed gave a non-finite embedding");
            }
        }
        Call::InputGradient(_, p, x, kind, tau) => {
            let g = input_gradient(
                mlp,
                &t_of(&p.array(), precision),
                &t_of(&x.array(), precision),
                *kind,
                *tau,
            )?;
            if !t_finite(&g) {
                return bad("input_gradient gave a non-finite g");
            }
        }
        Call::View(_, p, q, kind, tau, adv, recipe) => {
            let (p, q) = (t_of(&p.array(), precision), t_of(&q.array(), precision));
            let view = match recipe {
                Recipe::Lean => adversarial_view(mlp, &p, &q, *kind, *tau, adv)?,
                Recipe::Authors => adversarial_view_authors(mlp, &p, &q, *kind, *tau, adv)?,
            };
            if !t_finite(&view.q_adv)
                || !view.grads.iter().all(t_finite)
                || !state_finite(&torch_state(mlp, None)?)
            {
                return bad("a view or the state is not finite");
            }
        }
        Call::Step(_, p, q, cfg, spec) => {
            let opt = opt_slot.insert(clae_accelerated::optim::Optimizer::new(*cfg, mlp)?);
            let (p, q) = (t_of(&p.array(), precision), t_of(&q.array(), precision));
            let r = match spec {
                StepSpec::Plain(kind, tau) => {
                    clae_accelerated::step::plain_step(mlp, opt, &p, &q, *kind, *tau)?
                }
                StepSpec::Clae(c) => clae_accelerated::step::clae_step(mlp, opt, &p, &q, c)?,
            };
            let report_finite = r.loss_clean.is_finite()
                && r.total.is_finite()
                && r.loss_adv.is_none_or(|v| v.is_finite())
                && r.q_adv.as_ref().is_none_or(t_finite);
            if !report_finite || !state_finite(&torch_state(mlp, Some(opt))?) {
                return bad("a step's report, encoder or optimizer state is not finite");
            }
        }
        Call::Peer(_, p, q, cfg, which) => {
            use clae_accelerated::peers::{peer_attack_trace, peer_views};
            let (p, q) = (t_of(&p.array(), precision), t_of(&q.array(), precision));
            match which {
                PeerCall::Views => {
                    if !peer_views(mlp, &p, &q, cfg)?.iter().all(t_finite) {
                        return bad("peer_views gave a non-finite view");
                    }
                }
                PeerCall::Trace => {
                    let (views, gradients) = peer_attack_trace(mlp, &p, &q, cfg)?;
                    if !views.iter().chain(gradients.iter().flatten()).all(t_finite) {
                        return bad("peer_attack_trace gave a non-finite view or gradient");
                    }
                }
                PeerCall::Step(opt_cfg) => {
                    let opt =
                        opt_slot.insert(clae_accelerated::optim::Optimizer::new(*opt_cfg, mlp)?);
                    let r = clae_accelerated::step::peer_step(mlp, opt, &p, &q, cfg)?;
                    let report_finite = r.loss_clean.is_finite()
                        && r.total.is_finite()
                        && r.loss_adv.is_none_or(|v| v.is_finite())
                        && r.q_adv.as_ref().is_none_or(t_finite);
                    if !report_finite || !state_finite(&torch_state(mlp, Some(opt))?) {
                        return bad(
                            "a peer step's report, encoder or optimizer state is not finite",
                        );
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

// ------------------------------------------------------------------ judge --

fn judge(
    call: &Call,
    result: Result<clae_reference::Result<()>, String>,
    mut violations: Vec<String>,
    recovered: bool,
) -> Judged {
    let outcome = match result {
        Err(panic) => {
            violations.push(panic);
            Err(ErrorKind::InvalidState)
        }
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let msg = e.to_string();
            if msg.contains("CONTRACT: ") {
                violations.push(format!("{}: {msg}", call.name()));
            }
            Err(e.kind())
        }
    };
    Judged {
        outcome,
        violations,
        recovered,
    }
}
