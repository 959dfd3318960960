//! SGD and Adam with `torch.optim`'s exact update rules (SPEC 5).
//!
//! A parameter whose gradient is `None` (it took no part in the loss, e.g.
//! the adversarial BatchNorm affine parameters in a plain step) is skipped
//! entirely — no weight decay, no state change — as `torch.optim` skips
//! parameters whose `.grad` is `None`. Hyper-parameters are kept in `f64`
//! and rounded to the element type where they multiply a tensor, as
//! PyTorch does with Python floats.

use crate::check;
use crate::encoder::{Mlp, MlpGrads};
use crate::error::{ClaeError, Result};
use crate::real::Real;
use crate::state::{Role, StateDict, StateEntry};
use ndarray::{ArrayD, Zip};

/// Optimizer and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD(lr, momentum, weight_decay)` (no dampening, no Nesterov).
    Sgd {
        /// Learning rate, finite and `>= 0`.
        lr: f64,
        /// Momentum `mu` in `[0, 1)`.
        momentum: f64,
        /// L2 weight decay `wd`, finite and `>= 0`.
        weight_decay: f64,
    },
    /// `torch.optim.Adam(lr, betas, eps, weight_decay)` (L2 decay added to
    /// the gradient; not AdamW; no amsgrad).
    Adam {
        /// Learning rate, finite and `>= 0`.
        lr: f64,
        /// `beta1` in `[0, 1)`.
        beta1: f64,
        /// `beta2` in `[0, 1)`.
        beta2: f64,
        /// Denominator term, finite and `> 0`.
        eps: f64,
        /// L2 weight decay, finite and `>= 0`.
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// The authors' Plain/UEL optimizer: SGD `lr 0.03, mu 0.9, wd 5e-4`.
    pub fn authors_sgd() -> Self {
        OptimizerConfig::Sgd {
            lr: 0.03,
            momentum: 0.9,
            weight_decay: 5e-4,
        }
    }

    /// The authors' SimCLR optimizer: Adam `lr 3e-4, wd 1e-6`, default betas and eps.
    pub fn authors_adam() -> Self {
        OptimizerConfig::Adam {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-6,
        }
    }

    /// Checks every hyper-parameter's domain.
    ///
    /// ```
    /// use clae_reference::optim::OptimizerConfig;
    /// assert!(OptimizerConfig::authors_sgd().validate().is_ok());
    /// let bad = OptimizerConfig::Sgd { lr: -0.1, momentum: 0.9, weight_decay: 0.0 };
    /// assert!(bad.validate().unwrap_err().to_string().contains("lr"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        match *self {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                check::non_negative("lr", lr)?;
                check::unit_interval("momentum", momentum)?;
                check::non_negative("weight_decay", weight_decay)
            }
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                check::non_negative("lr", lr)?;
                check::unit_interval("beta1", beta1)?;
                check::unit_interval("beta2", beta2)?;
                check::positive("Adam eps", eps)?;
                check::non_negative("weight_decay", weight_decay)
            }
        }
    }

    /// `sgd` or `adam`.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd { .. } => "sgd",
            OptimizerConfig::Adam { .. } => "adam",
        }
    }
}

/// Per-parameter optimizer state; `None` until the parameter's first update.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamState<F> {
    /// SGD's `momentum_buffer` (absent when `momentum = 0`).
    Sgd {
        /// `b`.
        momentum_buffer: Option<ArrayD<F>>,
    },
    /// Adam's moments and step count.
    Adam {
        /// Number of updates this parameter received.
        step: u64,
        /// First moment `m`.
        exp_avg: ArrayD<F>,
        /// Second moment `v`.
        exp_avg_sq: ArrayD<F>,
    },
}

impl<F> ParamState<F> {
    /// Whether every tensor of this state has `shape` (and the state is of
    /// a kind the step can use).
    fn fits(&self, shape: &[usize]) -> bool {
        match self {
            ParamState::Sgd { momentum_buffer } => {
                momentum_buffer.as_ref().is_none_or(|b| b.shape() == shape)
            }
            ParamState::Adam {
                exp_avg,
                exp_avg_sq,
                ..
            } => exp_avg.shape() == shape && exp_avg_sq.shape() == shape,
        }
    }
}

/// An optimizer bound to one encoder's parameter list.
///
/// ```
/// use ndarray::Array2;
/// use clae_reference::{encoder::{Mlp, MlpConfig}, optim::{Optimizer, OptimizerConfig}};
/// use clae_reference::{step::plain_step, loss::LossKind};
/// let mut mlp = Mlp::<f64>::new(MlpConfig::new(4, 8, 1, 3), 0).unwrap();
/// let mut opt = Optimizer::new(OptimizerConfig::authors_sgd(), &mlp).unwrap();
/// let p = Array2::from_shape_fn((6, 4), |(i, j)| ((i + 2 * j) as f64).cos());
/// let q = p.mapv(|v| 0.9 * v);
/// let before = mlp.clone();
/// plain_step(&mut mlp, &mut opt, p.view(), q.view(), LossKind::Plain, 0.1).unwrap();
/// assert_ne!(before.head[1].weight, mlp.head[1].weight);
/// // the adv BatchNorm took no part in a plain step: untouched
/// assert_eq!(before.backbone[0].bn.adv, mlp.backbone[0].bn.adv);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer<F> {
    config: OptimizerConfig,
    state: Vec<Option<ParamState<F>>>,
}

impl<F: Real> Optimizer<F> {
    /// A fresh optimizer (empty state) for `mlp`'s parameters.
    pub fn new(config: OptimizerConfig, mlp: &Mlp<F>) -> Result<Self> {
        config.validate()?;
        Ok(Optimizer {
            config,
            state: vec![None; mlp.parameter_names().len()],
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Per-parameter state in [`Mlp::parameter_names`] order.
    pub fn state(&self) -> &[Option<ParamState<F>>] {
        &self.state
    }

    /// One update of every parameter that has a gradient.
    ///
    /// SGD (`torch.optim.SGD`, first step `b = g`):
    /// ```text
    /// g <- g + wd p;   b <- mu b + g;   p <- p − lr b
    /// ```
    /// Adam (`torch.optim.Adam`, `t` counted per parameter):
    /// ```text
    /// g <- g + wd p;   m <- m + (1 − β1)(g − m)   (lerp);   v <- β2 v + (1 − β2) g²
    /// p <- p − (lr / (1 − β1^t)) m / ( √v / √(1 − β2^t) + eps )
    /// ```
    pub fn step(&mut self, mlp: &mut Mlp<F>, grads: &MlpGrads<F>) -> Result<()> {
        if grads.tensors.len() != self.state.len() {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "{} gradients for an optimizer of {} parameters",
                    grads.tensors.len(),
                    self.state.len()
                ),
            });
        }
        // Everything is checked before the first parameter moves, so a failed
        // step leaves the encoder and the optimizer state as they were.
        mlp.validate()?;
        self.check_fits(mlp)?;
        let names = mlp.parameter_names();
        let params = mlp.parameters();
        for (i, g) in grads.present() {
            let shape = params[i].shape();
            if g.shape() != shape {
                return Err(ClaeError::ShapeMismatch {
                    what: format!("gradient of {}", names[i]),
                    expected: format!("{shape:?}"),
                    actual: format!("{:?}", g.shape()),
                });
            }
            check::finite(&format!("gradient of {}", names[i]), g.view())?;
        }
        let config = self.config;
        for ((mut p, g), state) in mlp
            .parameters_mut()
            .into_iter()
            .zip(&grads.tensors)
            .zip(&mut self.state)
        {
            let Some(g) = g else { continue };
            match config {
                OptimizerConfig::Sgd {
                    lr,
                    momentum,
                    weight_decay,
                } => {
                    let mut d_p = g.clone();
                    if weight_decay != 0.0 {
                        let wd = F::c(weight_decay);
                        Zip::from(&mut d_p).and(&p).for_each(|d, &p| *d += wd * p);
                    }
                    if momentum != 0.0 {
                        let mu = F::c(momentum);
                        let buf = match state {
                            Some(ParamState::Sgd {
                                momentum_buffer: Some(b),
                            }) => {
                                Zip::from(&mut *b)
                                    .and(&d_p)
                                    .for_each(|b, &d| *b = *b * mu + d);
                                b.clone()
                            }
                            _ => {
                                *state = Some(ParamState::Sgd {
                                    momentum_buffer: Some(d_p.clone()),
                                });
                                d_p
                            }
                        };
                        d_p = buf;
                    }
                    let lr = F::c(lr);
                    Zip::from(&mut p).and(&d_p).for_each(|p, &d| *p -= lr * d);
                }
                OptimizerConfig::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let mut grad = g.clone();
                    if weight_decay != 0.0 {
                        let wd = F::c(weight_decay);
                        Zip::from(&mut grad).and(&p).for_each(|d, &p| *d += wd * p);
                    }
                    if state.is_none() {
                        *state = Some(ParamState::Adam {
                            step: 0,
                            exp_avg: ArrayD::zeros(p.raw_dim()),
                            exp_avg_sq: ArrayD::zeros(p.raw_dim()),
                        });
                    }
                    let Some(ParamState::Adam {
                        step,
                        exp_avg,
                        exp_avg_sq,
                    }) = state
                    else {
                        return Err(ClaeError::InvalidState {
                            message: "SGD state found in an Adam optimizer".into(),
                        });
                    };
                    *step += 1;
                    let w1 = F::c(1.0 - beta1);
                    let b2 = F::c(beta2);
                    let w2 = F::c(1.0 - beta2);
                    // torch: exp_avg.lerp_(grad, 1 − β1); ATen's lerp for weight < 0.5 is m + w (g − m)
                    Zip::from(&mut *exp_avg).and(&grad).for_each(|m, &g| {
                        *m = if 1.0 - beta1 < 0.5 {
                            *m + w1 * (g - *m)
                        } else {
                            g - (g - *m) * (F::one() - w1)
                        }
                    });
                    Zip::from(&mut *exp_avg_sq)
                        .and(&grad)
                        .for_each(|v, &g| *v = *v * b2 + g * g * w2);
                    let t = *step as i32;
                    let bias_correction1 = 1.0 - beta1.powi(t);
                    let bias_correction2 = 1.0 - beta2.powi(t);
                    let step_size = F::c(lr / bias_correction1);
                    let bc2_sqrt = F::c(bias_correction2.sqrt());
                    let eps = F::c(eps);
                    Zip::from(&mut p)
                        .and(&*exp_avg)
                        .and(&*exp_avg_sq)
                        .for_each(|p, &m, &v| *p -= step_size * (m / (v.sqrt() / bc2_sqrt + eps)));
                }
            }
        }
        Ok(())
    }

    /// Checks that this optimizer can update `mlp`: one state slot per
    /// parameter, and every existing state shaped like its parameter (an
    /// optimizer made for another encoder fails here). The steps call it
    /// before they touch anything.
    pub(crate) fn check_fits(&self, mlp: &Mlp<F>) -> Result<()> {
        let names = mlp.parameter_names();
        if names.len() != self.state.len() {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "an optimizer of {} parameters cannot update an encoder of {}",
                    self.state.len(),
                    names.len()
                ),
            });
        }
        for ((p, name), state) in mlp.parameters().iter().zip(&names).zip(&self.state) {
            if !state.as_ref().is_none_or(|st| st.fits(p.shape())) {
                return Err(ClaeError::InvalidState {
                    message: format!(
                        "optimizer state of {name} does not have the parameter's shape {:?}",
                        p.shape()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The optimizer state as named tensors (buffers): for parameter `name`,
    /// SGD exports `name.momentum_buffer`; Adam exports `name.step` (0-d),
    /// `name.exp_avg`, `name.exp_avg_sq`. Parameters never updated export
    /// nothing (PyTorch's state is empty for them too).
    pub fn state_dict(&self, mlp: &Mlp<F>) -> StateDict<F> {
        let mut entries = Vec::new();
        let buffer = |name: String, value: ArrayD<F>| StateEntry {
            name,
            role: Role::Buffer,
            value,
        };
        for (name, state) in mlp.parameter_names().into_iter().zip(&self.state) {
            match state {
                Some(ParamState::Sgd {
                    momentum_buffer: Some(b),
                }) => entries.push(buffer(format!("{name}.momentum_buffer"), b.clone())),
                Some(ParamState::Adam {
                    step,
                    exp_avg,
                    exp_avg_sq,
                }) => {
                    entries.push(buffer(
                        format!("{name}.step"),
                        ArrayD::from_elem(vec![], F::c(*step as f64)),
                    ));
                    entries.push(buffer(format!("{name}.exp_avg"), exp_avg.clone()));
                    entries.push(buffer(format!("{name}.exp_avg_sq"), exp_avg_sq.clone()));
                }
                _ => {}
            }
        }
        StateDict { entries }
    }
}
