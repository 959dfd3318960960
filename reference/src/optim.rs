//! SGD and Adam with `torch.optim`'s exact update rules (docs/SPEC.md §5).
//!
//! A parameter whose gradient is `None` (it took no part in the loss, e.g.
//! the adversarial BatchNorm affine parameters in a plain step) is skipped
//! entirely — no weight decay, no state change — as `torch.optim` skips
//! parameters whose `.grad` is `None`. Hyper-parameters are `f64` and are
//! rounded to the element type where they multiply a tensor, as PyTorch
//! does with Python floats; they are checked in that type
//! ([`OptimizerConfig::validate_for`]).
//!
//! A step either updates every parameter or, when its result would not be
//! representable, none: see [`UpdateBound`] for how that is decided without
//! a copy of the parameters on every step.

use crate::check::{self, Domain};
use crate::encoder::{Mlp, MlpGrads};
use crate::error::{ClaeError, Result};
use crate::real::Real;
use crate::state::{Role, StateDict, StateEntry};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};

// ------------------------------------------------------- the update rules --

/// One parameter's update in place: `torch.optim`'s single-tensor code.
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
fn update<F: Real>(
    config: OptimizerConfig,
    p: ArrayViewMutD<'_, F>,
    g: &ArrayViewD<'_, F>,
    state: &mut Option<ParamState<F>>,
) {
    // Each rule is one pass over the parameter, element by element (in
    // parallel: the elements are independent), with the equations above in
    // order — the same arithmetic as torch.optim's sequence of whole-tensor
    // operations, without its temporaries.
    match config {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        } => {
            let (lr, mu, wd) = (F::c(lr), F::c(momentum), F::c(weight_decay));
            let decayed = |g: F, p: F| if weight_decay != 0.0 { g + wd * p } else { g };
            if momentum == 0.0 {
                Zip::from(p).and(g).par_for_each(|p, &g| {
                    let d = decayed(g, *p);
                    *p -= lr * d;
                });
                return;
            }
            match state {
                Some(ParamState::Sgd {
                    momentum_buffer: Some(b),
                }) => Zip::from(p).and(g).and(b).par_for_each(|p, &g, b| {
                    let d = decayed(g, *p);
                    *b = *b * mu + d;
                    *p -= lr * *b;
                }),
                _ => {
                    // first step: b = g (+ wd p)
                    let mut b = ArrayD::zeros(p.raw_dim());
                    Zip::from(p).and(g).and(&mut b).par_for_each(|p, &g, b| {
                        *b = decayed(g, *p);
                        *p -= lr * *b;
                    });
                    *state = Some(ParamState::Sgd {
                        momentum_buffer: Some(b),
                    });
                }
            }
        }
        OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            if !matches!(state, Some(ParamState::Adam { .. })) {
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
                unreachable!("set to Adam state just above")
            };
            *step += 1;
            let t = *step as i32;
            let bias_correction1 = 1.0 - beta1.powi(t);
            let bias_correction2 = 1.0 - beta2.powi(t);
            let step_size = F::c(lr / bias_correction1);
            let bc2_sqrt = F::c(bias_correction2.sqrt());
            let (wd, w1, b2, w2, eps) = (
                F::c(weight_decay),
                F::c(1.0 - beta1),
                F::c(beta2),
                F::c(1.0 - beta2),
                F::c(eps),
            );
            // torch: exp_avg.lerp_(grad, 1 − β1); ATen's lerp for weight < 0.5 is m + w (g − m)
            let lerp_low = 1.0 - beta1 < 0.5;
            Zip::from(p)
                .and(g)
                .and(&mut *exp_avg)
                .and(&mut *exp_avg_sq)
                .par_for_each(|p, &g, m, v| {
                    let grad = if weight_decay != 0.0 { g + wd * *p } else { g };
                    *m = if lerp_low {
                        *m + w1 * (grad - *m)
                    } else {
                        grad - (grad - *m) * (F::one() - w1)
                    };
                    *v = *v * b2 + grad * grad * w2;
                    *p -= step_size * (*m / (v.sqrt() / bc2_sqrt + eps));
                });
        }
    }
}

// ----------------------------------------------------------- the guard --

/// Exact magnitudes of one parameter and its gradient: `max |p|`, `max |g|`
/// (a maximum of absolute values is exact in any precision, so every
/// implementation computes the same numbers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Magnitudes {
    /// `max |p|`.
    pub param: f64,
    /// `max |g|`.
    pub grad: f64,
}

/// Upper bounds on the magnitude of one parameter's optimizer state,
/// carried from step to step by the same recursions as the state itself
/// (so they cost no pass over the state): `max |b|` for SGD, `max |m|` and
/// `max v` for Adam.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StateBound {
    /// `max |b|` (SGD momentum buffer) or `max |m|` (Adam first moment).
    pub first: f64,
    /// `max v` (Adam second moment); 0 for SGD.
    pub second: f64,
}

/// What [`OptimizerConfig::update_bound`] found for one parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateBound {
    /// An upper bound on every value the update computes (intermediates,
    /// new state, new parameter), in exact arithmetic and with rounding
    /// slack.
    pub largest: f64,
    /// An upper bound on `max |p|` after the update.
    pub param: f64,
    /// The state bound after the update.
    pub state: StateBound,
}

impl OptimizerConfig {
    /// Bounds, from exact magnitudes, on what one parameter's update can
    /// produce: its `t`-th update (`t >= 1`), with `prev` the state bound
    /// before it (`None` for no state yet).
    ///
    /// An update whose `largest` is below `max(F) / 4` cannot overflow, and
    /// is made in place. Otherwise (absurd learning rates, gradients near the
    /// range's end, a tiny Adam `eps` with large gradients) the step computes
    /// the update on copies and commits it only if it is finite — exact, but
    /// paid only in those cases. For Adam the bound uses
    /// `|m / (√v̂ + eps)| <= |m| / eps`.
    ///
    /// ```
    /// use clae_reference::optim::{Magnitudes, OptimizerConfig};
    /// let sgd = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
    /// let b = sgd.update_bound(Magnitudes { param: 1.0, grad: 2.0 }, None, 1);
    /// // b = g; p' = p − lr b: |p'| <= 1 + 0.1 · 2
    /// assert!((b.state.first - 2.0).abs() < 1e-5 && b.largest >= 1.2);
    /// ```
    pub fn update_bound(&self, mag: Magnitudes, prev: Option<StateBound>, t: u64) -> UpdateBound {
        // relative slack for the rounding of each recursion step
        const SLACK: f64 = 1.0 + 1e-6;
        let (p, g) = (mag.param, mag.grad);
        match *self {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let d = g + weight_decay * p;
                let b = match prev {
                    Some(s) if momentum != 0.0 => momentum * s.first + d,
                    _ => d,
                } * SLACK;
                let delta = lr * b;
                let largest = [weight_decay * p, d, b, delta, p + delta]
                    .into_iter()
                    .fold(0.0, f64::max);
                UpdateBound {
                    largest: largest * SLACK,
                    param: (p + delta) * SLACK,
                    state: StateBound {
                        first: if momentum != 0.0 { b } else { 0.0 },
                        second: 0.0,
                    },
                }
            }
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let prev = prev.unwrap_or_default();
                let g = g + weight_decay * p;
                let m = (beta1 * prev.first + (1.0 - beta1) * g) * SLACK;
                let v = (beta2 * prev.second + (1.0 - beta2) * g * g) * SLACK;
                let t = t.min(i32::MAX as u64) as i32;
                let step_size = lr / (1.0 - beta1.powi(t));
                let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
                let delta = step_size * m / eps;
                let largest = [
                    // the scalar the update multiplies by, in F
                    step_size,
                    weight_decay * p,
                    g,
                    g + prev.first,
                    m,
                    g * g,
                    v,
                    v.sqrt() / bc2_sqrt + eps,
                    step_size * m,
                    delta,
                    p + delta,
                ]
                .into_iter()
                .fold(0.0, f64::max);
                UpdateBound {
                    largest: largest * SLACK,
                    param: (p + delta) * SLACK,
                    state: StateBound {
                        first: m,
                        second: v,
                    },
                }
            }
        }
    }

    /// The exact bound of an existing state (after an update made on copies).
    fn exact_bound<F: Real>(state: &Option<ParamState<F>>) -> StateBound {
        let max_abs = |a: &ArrayD<F>| a.iter().fold(0.0f64, |m, v| m.max(v.abs().as_f64()));
        match state {
            Some(ParamState::Sgd {
                momentum_buffer: Some(b),
            }) => StateBound {
                first: max_abs(b),
                second: 0.0,
            },
            Some(ParamState::Adam {
                exp_avg,
                exp_avg_sq,
                ..
            }) => StateBound {
                first: max_abs(exp_avg),
                second: max_abs(exp_avg_sq),
            },
            _ => StateBound::default(),
        }
    }
}

/// `max(F) / 4`: an update bounded below this cannot overflow.
pub fn safe_limit<F: Real>() -> f64 {
    F::max_value().as_f64() / 4.0
}

// ------------------------------------------------------------ the config --

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

    /// Checks every hyper-parameter's domain (in `f64`).
    ///
    /// ```
    /// use clae_reference::optim::OptimizerConfig;
    /// assert!(OptimizerConfig::authors_sgd().validate().is_ok());
    /// let bad = OptimizerConfig::Sgd { lr: -0.1, momentum: 0.9, weight_decay: 0.0 };
    /// assert!(bad.validate().unwrap_err().to_string().contains("lr"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.validate_for::<f64>()
    }

    /// [`OptimizerConfig::validate`] in the element type `F`: each
    /// hyper-parameter as the update uses it ([`check::hyper`]). An Adam
    /// `eps` of `1e-50` is fine in `f64` and `0` in `f32`.
    ///
    /// ```
    /// use clae_reference::optim::OptimizerConfig;
    /// let tiny_eps = OptimizerConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-50, weight_decay: 0.0 };
    /// assert!(tiny_eps.validate_for::<f64>().is_ok());
    /// assert!(tiny_eps.validate_for::<f32>().is_err());
    /// ```
    pub fn validate_for<F: Real>(&self) -> Result<()> {
        match *self {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                check::hyper::<F>("lr", lr, Domain::NonNegative)?;
                check::hyper::<F>("momentum", momentum, Domain::UnitInterval)?;
                check::hyper::<F>("weight_decay", weight_decay, Domain::NonNegative)?;
            }
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                check::hyper::<F>("lr", lr, Domain::NonNegative)?;
                check::hyper::<F>("beta1", beta1, Domain::UnitInterval)?;
                check::hyper::<F>("beta2", beta2, Domain::UnitInterval)?;
                check::hyper::<F>("1 - beta1", 1.0 - beta1, Domain::Positive)?;
                check::hyper::<F>("1 - beta2", 1.0 - beta2, Domain::Positive)?;
                check::hyper::<F>("Adam eps", eps, Domain::Positive)?;
                check::hyper::<F>("weight_decay", weight_decay, Domain::NonNegative)?;
            }
        }
        Ok(())
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
    /// Per parameter: the state bound (see [`OptimizerConfig::update_bound`]).
    bounds: Vec<Option<StateBound>>,
}

impl<F: Real> Optimizer<F> {
    /// A fresh optimizer (empty state) for `mlp`'s parameters; the
    /// hyper-parameters are checked in `F`.
    pub fn new(config: OptimizerConfig, mlp: &Mlp<F>) -> Result<Self> {
        config.validate_for::<F>()?;
        let n = mlp.parameter_names().len();
        Ok(Optimizer {
            config,
            state: vec![None; n],
            bounds: vec![None; n],
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

    /// One update of every parameter that has a gradient (the rules are at
    /// the top of this module), all or nothing.
    ///
    /// Errors (nothing is changed then): an optimizer made for another
    /// encoder or gradients for another parameter list (`InvalidState`), a
    /// non-finite parameter or buffer, a misshapen or non-finite gradient,
    /// and [`ClaeError::Overflow`] when the updated parameters or state would
    /// not be representable in `F`.
    pub fn step(&mut self, mlp: &mut Mlp<F>, grads: &MlpGrads<F>) -> Result<()> {
        self.check_fits(mlp)?;
        let param_mags = mlp.parameter_magnitudes()?;
        let names = mlp.parameter_names();
        let tensors = grads.tensors();
        if tensors.len() != self.state.len() {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "{} gradients for an optimizer of {} parameters",
                    tensors.len(),
                    self.state.len()
                ),
            });
        }
        let mut grad_mags = Vec::with_capacity(tensors.len());
        for (i, (p, g)) in mlp.parameters().iter().zip(&tensors).enumerate() {
            grad_mags.push(match g {
                None => None,
                Some(g) => {
                    if g.shape() != p.shape() {
                        return Err(ClaeError::ShapeMismatch {
                            what: format!("gradient of {}", names[i]),
                            expected: format!("{:?}", p.shape()),
                            actual: format!("{:?}", g.shape()),
                        });
                    }
                    Some(check::max_abs(
                        &format!("gradient of {}", names[i]),
                        g.view(),
                    )?)
                }
            });
        }
        self.step_measured(mlp, grads, &param_mags, &grad_mags)
    }

    /// The update from magnitudes already measured (`max |p|` of every
    /// parameter, `max |g|` of every present gradient: finite, and the
    /// gradients shaped like their parameters), all or nothing. The steps
    /// call it with the magnitudes of their own single pass.
    pub(crate) fn step_measured(
        &mut self,
        mlp: &mut Mlp<F>,
        grads: &MlpGrads<F>,
        param_mags: &[f64],
        grad_mags: &[Option<f64>],
    ) -> Result<()> {
        let names = mlp.parameter_names();
        let tensors = grads.tensors();
        // Everything is bounded before the first parameter moves.
        let plan: Vec<Option<UpdateBound>> = grad_mags
            .iter()
            .enumerate()
            .map(|(i, g)| {
                g.map(|grad| {
                    let t = match &self.state[i] {
                        Some(ParamState::Adam { step, .. }) => step + 1,
                        _ => 1,
                    };
                    let mag = Magnitudes {
                        param: param_mags[i],
                        grad,
                    };
                    self.config.update_bound(mag, self.bounds[i], t)
                })
            })
            .collect();
        let limit = safe_limit::<F>();
        let config = self.config;
        // Updates that might overflow are made on copies first; if any is not
        // finite, nothing is committed.
        let mut copies = Vec::new();
        for (i, bound) in plan.iter().enumerate() {
            let (Some(bound), Some(g)) = (bound, &tensors[i]) else {
                continue;
            };
            if bound.largest <= limit {
                continue;
            }
            let mut p = mlp.parameters()[i].to_owned();
            let mut state = self.state[i].clone();
            update(config, p.view_mut(), g, &mut state);
            let finite = check::all_finite(p.view())
                && OptimizerConfig::exact_bound(&state).first.is_finite()
                && OptimizerConfig::exact_bound(&state).second.is_finite();
            if !finite {
                return Err(ClaeError::Overflow {
                    cause: "the learning rate and weight decay with these parameter and gradient magnitudes"
                        .into(),
                    quantity: format!("the {} update of {}", config.name(), names[i]),
                    precision: F::NAME.to_string(),
                });
            }
            copies.push((i, p, state));
        }
        // Commit: the safe updates in place, then the checked copies.
        let mut copied = vec![false; tensors.len()];
        for (i, p, state) in copies {
            mlp.parameters_mut()[i].assign(&p);
            self.bounds[i] = Some(OptimizerConfig::exact_bound(&state));
            self.state[i] = state;
            copied[i] = true;
        }
        for ((i, mut p), bound) in mlp.parameters_mut().into_iter().enumerate().zip(&plan) {
            let (Some(bound), Some(g)) = (bound, &tensors[i]) else {
                continue;
            };
            if copied[i] {
                continue;
            }
            update(config, p.view_mut(), g, &mut self.state[i]);
            self.bounds[i] = Some(bound.state);
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
