//! SGD and Adam (docs/SPEC.md §5) on libtorch tensors, with `torch.optim`'s update
//! rules and exportable state.
//!
//! Two backends:
//!
//! * [`Backend::TensorOps`] (the default, [`Optimizer::new`]): the updates
//!   of `torch.optim.SGD` / `torch.optim.Adam` (their single-tensor code
//!   path) written with libtorch tensor ops under `no_grad`, so that the
//!   state — `momentum_buffer`, `exp_avg`, `exp_avg_sq`, `step` — can be
//!   exported with [`Optimizer::state_dict`] and compared with the
//!   reference. tch's optimizer wrapper does not expose its state, which is
//!   why this backend exists.
//! * [`Backend::Libtorch`] ([`Optimizer::libtorch`]): tch's own
//!   `nn::Optimizer`, i.e. libtorch's C++ `torch::optim::{SGD, Adam}`.
//!   Its SGD has exactly torch.optim's rule. **Its Adam differs from
//!   `torch.optim.Adam` in rounding only**: the C++ code updates the first
//!   moment with `exp_avg.mul_(β1).add_(g, 1 − β1)` where Python uses
//!   `exp_avg.lerp_(g, 1 − β1)`, so results agree to a few ulps, not
//!   bitwise. Its state cannot be exported.
//!
//! Both skip a parameter whose gradient is `None` (no weight decay, no state
//! change), as torch.optim skips `.grad is None`.
//!
//! Rounding notes for the tensor-ops backend (formulas identical to
//! torch.optim): where torch writes `a.add(b, alpha=c)` — weight decay
//! `g + wd·p` and the SGD update `p − lr·b` — this computes `c·b` and then
//! the sum, which torch's CPU kernels may fuse into one FMA; elsewhere the
//! same ATen kernels run in the same order (`lerp_`, `mul_`/`addcmul_`,
//! `sqrt`, `addcdiv_`, Python-float `pow` for the bias corrections).

use crate::check::{for_precision, Health};
use crate::device::{Precision, TchReal};
use crate::encoder::{Encoder, Gradients};
use crate::error::{Error, Result};
use clae_reference::optim::{safe_limit, Magnitudes, StateBound, UpdateBound};
use clae_reference::state::{Role, StateDict, StateEntry};
use clae_reference::ClaeError;
use tch::nn::OptimizerConfig as _;
use tch::Tensor;

pub use clae_reference::optim::OptimizerConfig;

/// Which implementation performs the updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// torch.optim's rules with tensor ops; state exportable.
    TensorOps,
    /// tch's `nn::Optimizer` (libtorch C++ `torch::optim`); state not exportable.
    Libtorch,
}

/// Per-parameter state of the tensor-ops backend; `None` until the
/// parameter's first update.
#[derive(Debug)]
pub enum ParamState {
    /// SGD's momentum buffer `b` (absent when `momentum = 0`).
    Sgd {
        /// `b`.
        momentum_buffer: Option<Tensor>,
    },
    /// Adam's moments and step count.
    Adam {
        /// Number of updates this parameter received.
        step: u64,
        /// First moment `m`.
        exp_avg: Tensor,
        /// Second moment `v`.
        exp_avg_sq: Tensor,
    },
}

#[derive(Debug)]
enum Inner {
    TensorOps(Vec<Option<ParamState>>),
    Libtorch(tch::nn::Optimizer),
}

/// An optimizer bound to one encoder's parameter list.
///
/// ```
/// use clae_accelerated::{device::Precision, encoder::Encoder, mlp::Mlp};
/// use clae_accelerated::optim::{Optimizer, OptimizerConfig};
/// use clae_accelerated::step::plain_step;
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let mut mlp = Mlp::new(MlpConfig::new(4, 8, 1, 3), 0, tch::Device::Cpu, Precision::F64).unwrap();
/// let mut opt = Optimizer::new(OptimizerConfig::authors_sgd(), &mlp).unwrap();
/// let p = tch::Tensor::randn([6, 4], (tch::Kind::Double, tch::Device::Cpu));
/// plain_step(&mut mlp, &mut opt, &p, &(&p * 0.9), LossKind::Plain, 0.1).unwrap();
/// let state = opt.state_dict::<f64>().unwrap();
/// assert!(state.get("head.2.weight.momentum_buffer").is_some());
/// // the adv BatchNorm took no part in a plain step: no state for it
/// assert!(state.get("backbone.0.bn.adv.weight.momentum_buffer").is_none());
/// ```
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    precision: Precision,
    names: Vec<String>,
    inner: Inner,
    /// Per parameter: the reference's state bound (see
    /// [`clae_reference::optim::OptimizerConfig::update_bound`]).
    bounds: Vec<Option<StateBound>>,
    /// Per parameter: how many updates it received (Adam's `t`; tracked here
    /// too for the libtorch backend, whose state is not accessible).
    steps: Vec<u64>,
    /// Per parameter: an upper bound on `max |p|` and the tensor's version
    /// counter when it was valid. While the version is unchanged (nothing
    /// wrote to the parameter since this optimizer's last update) the bound
    /// stands and the parameter is not read; any write bumps the version and
    /// the next step measures `max |p|` again.
    param_bounds: Vec<Option<(i64, f64)>>,
}

/// Where one parameter's `max |p|` comes from in a step: a bound this
/// optimizer carried, or a value being read with the step's other checks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ParamMagnitude {
    /// Carried from the last update (the version counter is unchanged).
    Carried(f64),
    /// Index of the value in the step's [`crate::check::Reading`].
    Read(usize),
}

impl Optimizer {
    /// A fresh tensor-ops optimizer (empty state) for `enc`'s parameters.
    pub fn new<E: Encoder + ?Sized>(config: OptimizerConfig, enc: &E) -> Result<Self> {
        for_precision!(enc.precision(), F => config.validate_for::<F>())?;
        let names = enc.parameter_names();
        Ok(Optimizer {
            config,
            precision: enc.precision(),
            inner: Inner::TensorOps((0..names.len()).map(|_| None).collect()),
            bounds: vec![None; names.len()],
            steps: vec![0; names.len()],
            param_bounds: vec![None; names.len()],
            names,
        })
    }

    /// A fresh optimizer backed by tch's `nn::Optimizer` (libtorch C++
    /// `torch::optim`) over `enc`'s var store. See the module docs for how its
    /// Adam differs from torch.optim's.
    pub fn libtorch<E: Encoder + ?Sized>(config: OptimizerConfig, enc: &E) -> Result<Self> {
        for_precision!(enc.precision(), F => config.validate_for::<F>())?;
        let vs = enc.tensors().var_store();
        let opt = match config {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => tch::nn::Sgd {
                momentum,
                dampening: 0.0,
                wd: weight_decay,
                nesterov: false,
            }
            .build(vs, lr)?,
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => tch::nn::Adam {
                beta1,
                beta2,
                wd: weight_decay,
                eps,
                amsgrad: false,
            }
            .build(vs, lr)?,
        };
        let names = enc.parameter_names();
        Ok(Optimizer {
            config,
            precision: enc.precision(),
            inner: Inner::Libtorch(opt),
            bounds: vec![None; names.len()],
            steps: vec![0; names.len()],
            param_bounds: vec![None; names.len()],
            names,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Which implementation performs the updates.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::TensorOps(_) => Backend::TensorOps,
            Inner::Libtorch(_) => Backend::Libtorch,
        }
    }

    /// Per-parameter state (tensor-ops backend), in parameter order.
    pub fn state(&self) -> Option<&[Option<ParamState>]> {
        match &self.inner {
            Inner::TensorOps(s) => Some(s),
            Inner::Libtorch(_) => None,
        }
    }

    /// One update of every parameter of `enc` that has a gradient.
    ///
    /// SGD (first step `b = g`):
    /// ```text
    /// g <- g + wd p;   b <- mu b + g;   p <- p − lr b
    /// ```
    /// Adam (`t` counted per parameter):
    /// ```text
    /// g <- g + wd p;   m.lerp_(g, 1 − β1);   v <- β2 v + (1 − β2) g²
    /// p <- p − (lr / (1 − β1^t)) m / ( √v / √(1 − β2^t) + eps )
    /// ```
    ///
    /// All or nothing: everything is checked, and the update bounded with
    /// the reference's [`OptimizerConfig::update_bound`] from exact
    /// magnitudes (read with one synchronisation), before the first
    /// parameter moves. An update that might overflow is made on copies and
    /// committed only if finite (the libtorch backend, whose state cannot be
    /// copied, refuses it instead).
    ///
    /// Errors (nothing is changed then): an optimizer made for another
    /// encoder or gradients for another parameter list (`InvalidState`), a
    /// non-finite parameter or buffer, a gradient of the wrong shape or with
    /// a non-finite value, and `Overflow` when the update is not
    /// representable.
    pub fn step<E: Encoder + ?Sized>(&mut self, enc: &mut E, grads: &Gradients) -> Result<()> {
        // as the reference: the encoder's own validity first when anything
        // else is wrong
        if let Err(e) = self
            .check_fits(enc)
            .and_then(|()| self.check_gradient_list(enc, grads))
        {
            enc.validate()?;
            return Err(e);
        }
        // The reference's order: the encoder, then gradient by gradient its
        // shape and its values. The magnitudes of every parameter and of the
        // gradients before the first misshapen one come in one transfer.
        let params = enc.parameters();
        let mut health = Health::new(self.precision);
        let mut misshapen = None;
        let mut grad_at = vec![None; params.len()];
        for (i, ((name, p), g)) in self
            .names
            .iter()
            .zip(&params)
            .zip(&grads.tensors)
            .enumerate()
        {
            if let Some(g) = g {
                if g.size() != p.size() {
                    misshapen = Some(ClaeError::ShapeMismatch {
                        what: format!("gradient of {name}"),
                        expected: format!("{:?}", p.size()),
                        actual: format!("{:?}", g.size()),
                    });
                    break;
                }
                grad_at[i] = Some(health.push_finite(format!("gradient of {name}"), g)?);
            }
        }
        let param_at = self.push_param_magnitudes(enc, &mut health)?;
        let reading = health.read()?;
        if reading.failure.is_some() {
            enc.validate()?; // a non-finite parameter, located
            for ((name, g), at) in self.names.iter().zip(&grads.tensors).zip(&grad_at) {
                if let (Some(g), Some(_)) = (g, at) {
                    crate::check::finite(&format!("gradient of {name}"), g)?;
                }
            }
        }
        enc.validate_buffers()?;
        if let Some(e) = misshapen {
            return Err(e.into());
        }
        let grad_mags: Vec<Option<f64>> = grad_at
            .iter()
            .map(|a| a.map(|i| reading.values[i]))
            .collect();
        self.step_measured(enc, grads, &param_at, &reading, &grad_mags)
    }

    /// The gradients are for this optimizer's parameter list, each (where
    /// present) of the encoder's element kind and on its device (a
    /// hand-made [`Gradients`] may not be).
    pub(crate) fn check_gradient_list<E: Encoder + ?Sized>(
        &self,
        enc: &E,
        grads: &Gradients,
    ) -> Result<()> {
        if grads.names != self.names || grads.tensors.len() != self.names.len() {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "{} gradients for an optimizer of {} parameters (or names differ)",
                    grads.tensors.len(),
                    self.names.len()
                ),
            }
            .into());
        }
        for (name, g) in grads.names.iter().zip(&grads.tensors) {
            if let Some(g) = g {
                if g.kind() != enc.precision().kind() || g.device() != enc.device() {
                    return Err(ClaeError::InvalidState {
                        message: format!(
                            "the gradient of {name} is {:?} on {:?}; the encoder's tensors are {:?} on {:?}",
                            g.kind(),
                            g.device(),
                            enc.precision().kind(),
                            enc.device()
                        ),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    /// `max |p|` of every parameter: carried where its version counter is
    /// unchanged since this optimizer last bounded it, otherwise pushed into
    /// `health` to be read with the step's other checks.
    pub(crate) fn push_param_magnitudes<E: Encoder + ?Sized>(
        &self,
        enc: &E,
        health: &mut Health,
    ) -> Result<Vec<ParamMagnitude>> {
        enc.parameters()
            .iter()
            .zip(&self.names)
            .zip(&self.param_bounds)
            .map(|((p, name), carried)| match carried {
                Some((version, bound)) if *version == p.f_internal_version()? => {
                    Ok(ParamMagnitude::Carried(*bound))
                }
                _ => Ok(ParamMagnitude::Read(health.push_finite(name.as_str(), p)?)),
            })
            .collect()
    }

    /// The update, from magnitudes already read and checked finite (all or
    /// nothing: an update that might overflow is made on copies first).
    pub(crate) fn step_measured<E: Encoder + ?Sized>(
        &mut self,
        enc: &mut E,
        grads: &Gradients,
        param_at: &[ParamMagnitude],
        reading: &crate::check::Reading,
        grad_mags: &[Option<f64>],
    ) -> Result<()> {
        let params = enc.parameters();
        let param_mags: Vec<f64> = param_at
            .iter()
            .map(|m| match *m {
                ParamMagnitude::Carried(b) => b,
                ParamMagnitude::Read(i) => reading.values[i],
            })
            .collect();
        let limit = for_precision!(self.precision, F => safe_limit::<F>());
        let config = self.config;
        let plan: Vec<(usize, &Tensor, UpdateBound)> = grads
            .tensors
            .iter()
            .zip(grad_mags)
            .enumerate()
            .filter_map(|(i, (g, m))| Some((i, g.as_ref()?, (*m)?)))
            .map(|(i, g, grad)| {
                let mag = Magnitudes {
                    param: param_mags[i],
                    grad,
                };
                (
                    i,
                    g,
                    config.update_bound(mag, self.bounds[i], self.steps[i] + 1),
                )
            })
            .collect();
        match &mut self.inner {
            Inner::TensorOps(state) => tch::no_grad(|| -> Result<()> {
                // updates that might overflow: on copies first
                let mut copies = Vec::new();
                for &(i, g, bound) in &plan {
                    if bound.largest <= limit {
                        continue;
                    }
                    let p_copy = params[i].f_detach_copy()?;
                    let mut s_copy = deep_copy(&state[i])?;
                    update(config, &p_copy, g, &mut s_copy)?;
                    let mut outputs = vec![&p_copy];
                    outputs.extend(state_tensors(&s_copy));
                    let mags = crate::check::magnitudes(&outputs)?;
                    if mags.iter().any(|m| !m.is_finite()) {
                        return Err(ClaeError::Overflow {
                            cause: "the learning rate and weight decay with these parameter and gradient magnitudes"
                                .into(),
                            quantity: format!("the {} update of {}", config.name(), self.names[i]),
                            precision: self.precision.name().to_string(),
                        }
                        .into());
                    }
                    copies.push((i, p_copy, s_copy, mags[0]));
                }
                let mut copied = vec![false; params.len()];
                for (i, p_copy, s_copy, p_mag) in copies {
                    params[i].shallow_clone().f_copy_(&p_copy)?;
                    self.bounds[i] = Some(exact_bound(&s_copy)?);
                    self.param_bounds[i] = Some((params[i].f_internal_version()?, p_mag));
                    state[i] = s_copy;
                    copied[i] = true;
                }
                for &(i, g, bound) in &plan {
                    if !copied[i] {
                        update(config, &params[i], g, &mut state[i])?;
                        self.bounds[i] = Some(bound.state);
                        self.param_bounds[i] = Some((params[i].f_internal_version()?, bound.param));
                    }
                    self.steps[i] += 1;
                }
                Ok(())
            }),
            Inner::Libtorch(opt) => {
                if let Some(&(i, _, _)) = plan.iter().find(|(_, _, b)| b.largest > limit) {
                    return Err(ClaeError::Overflow {
                        cause: "the learning rate and weight decay with these parameter and gradient magnitudes (the libtorch backend cannot check an update before making it)"
                            .into(),
                        quantity: format!("the {} update of {}", config.name(), self.names[i]),
                        precision: self.precision.name().to_string(),
                    }
                    .into());
                }
                // libtorch's zero_grad sets every `.grad` to None; then
                // `Σ_i <p_i, g_i>` back-propagated writes exactly `g_i`
                // (1 · g_i) into `p_i.grad`, and only for present gradients.
                opt.zero_grad();
                let mut terms = Vec::new();
                for &(i, g, _) in &plan {
                    terms.push(params[i].f_mul(&g.f_detach()?)?.f_sum(None::<tch::Kind>)?);
                }
                if !terms.is_empty() {
                    tch::with_grad(|| -> Result<()> {
                        Tensor::f_stack(&terms, 0)?
                            .f_sum(None::<tch::Kind>)?
                            .f_backward()?;
                        Ok(())
                    })?;
                    opt.step();
                }
                for &(i, _, bound) in &plan {
                    self.bounds[i] = Some(bound.state);
                    self.param_bounds[i] = Some((params[i].f_internal_version()?, bound.param));
                    self.steps[i] += 1;
                }
                Ok(())
            }
        }
    }

    /// Checks that this optimizer can update `enc`: the same parameter
    /// names, and every existing state shaped like its parameter (an
    /// optimizer made for another encoder fails here). The steps call it
    /// before they touch anything.
    pub(crate) fn check_fits<E: Encoder + ?Sized>(&self, enc: &E) -> Result<()> {
        let names = enc.parameter_names();
        if names != self.names {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "an optimizer of {} parameters cannot update an encoder of {} (or the names differ)",
                    self.names.len(),
                    names.len()
                ),
            }
            .into());
        }
        if let Inner::TensorOps(state) = &self.inner {
            for ((p, name), s) in enc.parameters().iter().zip(&names).zip(state) {
                if let Some(s) = s {
                    if tensors_of(s).iter().any(|t| t.size() != p.size()) {
                        return Err(ClaeError::InvalidState {
                            message: format!(
                                "optimizer state of {name} does not have the parameter's shape {:?}",
                                p.size()
                            ),
                        }
                        .into());
                    }
                }
            }
        }
        Ok(())
    }

    /// The optimizer state as named arrays (role [`Role::Buffer`]), as the
    /// reference exports it: for parameter `name`, SGD gives
    /// `name.momentum_buffer`; Adam gives `name.step` (0-d), `name.exp_avg`,
    /// `name.exp_avg_sq`. Parameters never updated export nothing.
    ///
    /// Errors with `InvalidState` for the libtorch backend, whose state is
    /// not accessible.
    pub fn state_dict<F: TchReal>(&self) -> Result<StateDict<F>> {
        let Inner::TensorOps(state) = &self.inner else {
            return Err(ClaeError::InvalidState {
                message: "the libtorch optimizer backend does not expose its state".into(),
            }
            .into());
        };
        let mut entries = Vec::new();
        let mut push = |name: String, t: &Tensor| -> Result<()> {
            entries.push(StateEntry {
                name,
                role: Role::Buffer,
                value: crate::convert::array_from_tensor::<F>(t)?,
            });
            Ok(())
        };
        for (name, s) in self.names.iter().zip(state) {
            match s {
                Some(ParamState::Sgd {
                    momentum_buffer: Some(b),
                }) => push(format!("{name}.momentum_buffer"), b)?,
                Some(ParamState::Adam {
                    step,
                    exp_avg,
                    exp_avg_sq,
                }) => {
                    let step_t = Tensor::f_scalar_tensor(
                        *step as f64,
                        (tch::Kind::Double, tch::Device::Cpu),
                    )?;
                    push(format!("{name}.step"), &step_t)?;
                    push(format!("{name}.exp_avg"), exp_avg)?;
                    push(format!("{name}.exp_avg_sq"), exp_avg_sq)?;
                }
                _ => {}
            }
        }
        Ok(StateDict { entries })
    }
}

/// One parameter's update (under `no_grad`), torch.optim's single-tensor code.
fn update(
    config: OptimizerConfig,
    p: &Tensor,
    g: &Tensor,
    state: &mut Option<ParamState>,
) -> Result<()> {
    let mut p = p.shallow_clone();
    // `a.add_(b, alpha=c)` is `a.addcmul_(b, c)` with `c` a 0-d tensor: one
    // pass, no temporary (tch has no `alpha` argument)
    let scalar = |v: f64| Tensor::f_scalar_tensor(v, (p.kind(), p.device()));
    match config {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        } => {
            // d_p = grad.add(param, alpha=weight_decay): a new tensor
            let fresh = weight_decay != 0.0;
            let d_p = if fresh {
                g.f_addcmul(&p, &scalar(weight_decay)?)?
            } else {
                g.shallow_clone()
            };
            let d_p = if momentum != 0.0 {
                match state {
                    Some(ParamState::Sgd {
                        momentum_buffer: Some(b),
                    }) => {
                        // buf.mul_(momentum).add_(d_p)
                        let _ = b.f_mul_scalar_(momentum)?.f_add_(&d_p)?;
                        b.shallow_clone()
                    }
                    _ => {
                        // buf = torch.clone(d_p).detach() (d_p itself when it
                        // is already a tensor of its own)
                        let b = if fresh { d_p } else { d_p.f_detach_copy()? };
                        *state = Some(ParamState::Sgd {
                            momentum_buffer: Some(b.shallow_clone()),
                        });
                        b
                    }
                }
            } else {
                d_p
            };
            // param.add_(d_p, alpha=-lr)
            let _ = p.f_addcmul_(&d_p, &scalar(-lr)?)?;
        }
        OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let grad = if weight_decay != 0.0 {
                g.f_addcmul(&p, &scalar(weight_decay)?)?
            } else {
                g.shallow_clone()
            };
            if state.is_none() {
                *state = Some(ParamState::Adam {
                    step: 0,
                    exp_avg: p.f_zeros_like()?,
                    exp_avg_sq: p.f_zeros_like()?,
                });
            }
            let Some(ParamState::Adam {
                step,
                exp_avg,
                exp_avg_sq,
            }) = state
            else {
                return Err(Error::from(ClaeError::InvalidState {
                    message: "SGD state found in an Adam optimizer".into(),
                }));
            };
            *step += 1;
            // exp_avg.lerp_(grad, 1 - beta1)
            let _ = exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2),
            // as one lerp towards grad²
            let _ = exp_avg_sq.f_lerp_(&grad.f_square()?, 1.0 - beta2)?;
            let t = *step as f64;
            let bias_correction1 = 1.0 - beta1.powf(t);
            let bias_correction2_sqrt = (1.0 - beta2.powf(t)).powf(0.5);
            let step_size = lr / bias_correction1;
            // param -= step_size * exp_avg / (sqrt(exp_avg_sq) / b + eps),
            // b = sqrt(bias_correction2), written as
            // param += exp_avg / ((sqrt(exp_avg_sq) + b eps) / (-step_size b)):
            // the same formula in four passes, in place on one temporary
            let mut denom = exp_avg_sq.f_sqrt()?;
            let _ = denom.f_add_scalar_(eps * bias_correction2_sqrt)?;
            let _ = denom.f_div_scalar_(-step_size * bias_correction2_sqrt)?;
            let _ = p.f_addcdiv_(exp_avg, &denom)?;
        }
    }
    Ok(())
}

/// The tensors of one parameter's state.
fn tensors_of(state: &ParamState) -> Vec<&Tensor> {
    match state {
        ParamState::Sgd {
            momentum_buffer: Some(b),
        } => vec![b],
        ParamState::Adam {
            exp_avg,
            exp_avg_sq,
            ..
        } => vec![exp_avg, exp_avg_sq],
        ParamState::Sgd {
            momentum_buffer: None,
        } => Vec::new(),
    }
}

fn state_tensors(state: &Option<ParamState>) -> Vec<&Tensor> {
    state.as_ref().map_or_else(Vec::new, tensors_of)
}

/// An independent copy of one parameter's state.
fn deep_copy(state: &Option<ParamState>) -> Result<Option<ParamState>> {
    Ok(match state {
        None => None,
        Some(ParamState::Sgd { momentum_buffer }) => Some(ParamState::Sgd {
            momentum_buffer: momentum_buffer
                .as_ref()
                .map(|b| b.f_detach_copy())
                .transpose()?,
        }),
        Some(ParamState::Adam {
            step,
            exp_avg,
            exp_avg_sq,
        }) => Some(ParamState::Adam {
            step: *step,
            exp_avg: exp_avg.f_detach_copy()?,
            exp_avg_sq: exp_avg_sq.f_detach_copy()?,
        }),
    })
}

/// The exact state bound of a state (after an update made on copies).
fn exact_bound(state: &Option<ParamState>) -> Result<StateBound> {
    let m = crate::check::magnitudes(&state_tensors(state))?;
    Ok(match state {
        Some(ParamState::Adam { .. }) => StateBound {
            first: m[0],
            second: m[1],
        },
        Some(ParamState::Sgd {
            momentum_buffer: Some(_),
        }) => StateBound {
            first: m[0],
            second: 0.0,
        },
        _ => StateBound::default(),
    })
}
