//! SGD and Adam (SPEC 5) on libtorch tensors, with `torch.optim`'s update
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

use crate::device::TchReal;
use crate::encoder::{Encoder, Gradients};
use crate::error::{Error, Result};
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
    names: Vec<String>,
    inner: Inner,
}

impl Optimizer {
    /// A fresh tensor-ops optimizer (empty state) for `enc`'s parameters.
    pub fn new<E: Encoder + ?Sized>(config: OptimizerConfig, enc: &E) -> Result<Self> {
        config.validate()?;
        let names = enc.parameter_names();
        Ok(Optimizer {
            config,
            inner: Inner::TensorOps((0..names.len()).map(|_| None).collect()),
            names,
        })
    }

    /// A fresh optimizer backed by tch's `nn::Optimizer` (libtorch C++
    /// `torch::optim`) over `enc`'s var store. See the module docs for how its
    /// Adam differs from torch.optim's.
    pub fn libtorch<E: Encoder + ?Sized>(config: OptimizerConfig, enc: &E) -> Result<Self> {
        config.validate()?;
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
        Ok(Optimizer {
            config,
            names: enc.parameter_names(),
            inner: Inner::Libtorch(opt),
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
    /// Errors (nothing is changed then): gradients for another parameter
    /// list (`InvalidState`), a non-finite parameter or buffer, a gradient of
    /// the wrong shape or with a non-finite value.
    pub fn step<E: Encoder + ?Sized>(&mut self, enc: &mut E, grads: &Gradients) -> Result<()> {
        let params = enc.parameters();
        if grads.names != self.names || grads.tensors.len() != params.len() {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "{} gradients for an optimizer of {} parameters (or names differ)",
                    grads.tensors.len(),
                    self.names.len()
                ),
            }
            .into());
        }
        // Everything is checked before the first parameter moves, in the
        // reference's order: the encoder, then gradient by gradient its shape
        // and its values. (The values are checked with one device
        // synchronisation: all gradients before the first misshapen one.)
        enc.validate()?;
        let mut present = Vec::new();
        let mut misshapen = None;
        for ((name, p), g) in self.names.iter().zip(&params).zip(&grads.tensors) {
            if let Some(g) = g {
                if g.size() != p.size() {
                    misshapen = Some(ClaeError::ShapeMismatch {
                        what: format!("gradient of {name}"),
                        expected: format!("{:?}", p.size()),
                        actual: format!("{:?}", g.size()),
                    });
                    break;
                }
                present.push((format!("gradient of {name}"), g));
            }
        }
        let named: Vec<(&str, &Tensor)> = present.iter().map(|(n, g)| (n.as_str(), *g)).collect();
        crate::check::all_finite(&named)?;
        if let Some(e) = misshapen {
            return Err(e.into());
        }
        let config = self.config;
        match &mut self.inner {
            Inner::TensorOps(state) => tch::no_grad(|| -> Result<()> {
                for ((p, g), s) in params.iter().zip(&grads.tensors).zip(state.iter_mut()) {
                    if let Some(g) = g {
                        update(config, p, g, s)?;
                    }
                }
                Ok(())
            }),
            Inner::Libtorch(opt) => {
                // libtorch's zero_grad sets every `.grad` to None; then
                // `Σ_i <p_i, g_i>` back-propagated writes exactly `g_i`
                // (1 · g_i) into `p_i.grad`, and only for present gradients.
                opt.zero_grad();
                let mut terms = Vec::new();
                for (p, g) in params.iter().zip(&grads.tensors) {
                    if let Some(g) = g {
                        terms.push(p.f_mul(&g.f_detach()?)?.f_sum(None::<tch::Kind>)?);
                    }
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
                Ok(())
            }
        }
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
    match config {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        } => {
            let mut d_p = g.shallow_clone();
            if weight_decay != 0.0 {
                d_p = d_p.f_add(&p.f_mul_scalar(weight_decay)?)?;
            }
            if momentum != 0.0 {
                d_p = match state {
                    Some(ParamState::Sgd {
                        momentum_buffer: Some(b),
                    }) => {
                        // buf.mul_(momentum).add_(d_p)
                        let _ = b.f_mul_scalar_(momentum)?.f_add_(&d_p)?;
                        b.shallow_clone()
                    }
                    _ => {
                        // buf = torch.clone(d_p).detach()
                        let mut b = d_p.f_zeros_like()?;
                        b.f_copy_(&d_p)?;
                        *state = Some(ParamState::Sgd {
                            momentum_buffer: Some(b.shallow_clone()),
                        });
                        b
                    }
                };
            }
            // param.add_(d_p, alpha=-lr)
            let _ = p.f_sub_(&d_p.f_mul_scalar(lr)?)?;
        }
        OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let grad = if weight_decay != 0.0 {
                g.f_add(&p.f_mul_scalar(weight_decay)?)?
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
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            let _ = exp_avg_sq
                .f_mul_scalar_(beta2)?
                .f_addcmul_(&grad.f_mul_scalar(1.0 - beta2)?, &grad)?;
            let t = *step as f64;
            let bias_correction1 = 1.0 - beta1.powf(t);
            let bias_correction2 = 1.0 - beta2.powf(t);
            let step_size = lr / bias_correction1;
            let bias_correction2_sqrt = bias_correction2.powf(0.5);
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            let denom = exp_avg_sq
                .f_sqrt()?
                .f_div_scalar(bias_correction2_sqrt)?
                .f_add_scalar(eps)?;
            // param.addcdiv_(exp_avg, denom, value=-step_size)
            let _ = p.f_addcdiv_(&exp_avg.f_mul_scalar(-step_size)?, &denom)?;
        }
    }
    Ok(())
}
