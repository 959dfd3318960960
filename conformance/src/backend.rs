//! The small interface the suite is written against, once, and its
//! implementation for the reference. Every backend takes and returns `f64`
//! arrays and runs internally in its own precision (and device): the suite
//! compares numbers, not types.

use clae_reference::adversarial::{AdvConfig, Recipe};
use clae_reference::encoder::{Mlp, MlpConfig, Mode};
use clae_reference::loss::{LossKind, LossOutput};
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::peers::{peer_step, PeerConfig};
use clae_reference::state::StateDict;
use clae_reference::step::{clae_step, plain_step, ClaeConfig, StepReport};
use clae_reference::{ClaeError, ErrorKind, Real};
use ndarray::Array2;
use std::marker::PhantomData;

/// Why a backend call failed: the docs/SPEC.md §7 kind when the input was bad (the
/// suite requires both backends to agree on it), and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// docs/SPEC.md §7 kind; `None` for a failure that is not about the input
    /// (libtorch or device trouble), which always fails the suite.
    pub kind: Option<ErrorKind>,
    /// The error's message.
    pub message: String,
}

impl From<ClaeError> for Failure {
    fn from(e: ClaeError) -> Self {
        Failure {
            kind: Some(e.kind()),
            message: e.to_string(),
        }
    }
}

impl From<clae_accelerated::Error> for Failure {
    fn from(e: clae_accelerated::Error) -> Self {
        Failure {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// Result of a backend call.
pub type Result<T> = std::result::Result<T, Failure>;

/// Floating-point precision a backend computes in (selects docs/SPEC.md §8's
/// tolerance; CUDA `f32` with TF32 off counts as `f32`): the workspace's one
/// precision vocabulary, `clae_accelerated::device::Precision`.
pub use clae_accelerated::device::Precision;

/// An encoder to run: its shape and every parameter and buffer, in `f64`
/// (a backend in `f32` rounds on load).
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Shape and BatchNorm constants.
    pub config: MlpConfig,
    /// Parameters and buffers in the reference's layout.
    pub state: StateDict<f64>,
}

/// Which training step to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepKind {
    /// Plain contrastive step with this loss and temperature.
    Plain {
        /// The loss.
        loss: LossKind,
        /// Its temperature.
        tau: f64,
    },
    /// CLAE step.
    Clae(ClaeConfig),
    /// A peer method's step (docs/SPEC.md §6.1: ACL- or RoCL-style).
    Peer(PeerConfig),
}

/// What [`Backend::peer_attack`] returns: the views, then `[step][view]`
/// input gradients.
pub type PeerTrace = (Vec<Array2<f64>>, Vec<Vec<Array2<f64>>>);

/// The result of several training steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    /// One report per step, in order.
    pub reports: Vec<StepReport<f64>>,
    /// Parameters and buffers after the last step.
    pub state: StateDict<f64>,
    /// Optimizer state after the last step (names as in the reference:
    /// `<param>.momentum_buffer`, `<param>.step`, `<param>.exp_avg`, `<param>.exp_avg_sq`).
    pub optimizer: StateDict<f64>,
}

/// One implementation under test.
pub trait Backend {
    /// Human-readable name, e.g. `reference f64`, `tch CPU f32`.
    fn name(&self) -> String;
    /// Precision of its arithmetic.
    fn precision(&self) -> Precision;
    /// `f(x)` in the given mode, `N x d`.
    fn embed(&self, model: &Model, x: &Array2<f64>, mode: Mode) -> Result<Array2<f64>>;
    /// A loss and its gradients w.r.t. both embedding sets.
    fn loss(
        &self,
        kind: LossKind,
        z_p: &Array2<f64>,
        z_q: &Array2<f64>,
        tau: f64,
    ) -> Result<LossOutput<f64>>;
    /// docs/SPEC.md §4's `g = d/dX L(sg(f_adv(P)), f_adv(X))`.
    fn input_gradient(
        &self,
        model: &Model,
        p: &Array2<f64>,
        x: &Array2<f64>,
        kind: LossKind,
        tau: f64,
    ) -> Result<Array2<f64>>;
    /// docs/SPEC.md §4's `Q_adv` by a recipe, with the input gradient of every sign step.
    #[allow(clippy::too_many_arguments)]
    fn adversarial_view(
        &self,
        model: &Model,
        p: &Array2<f64>,
        q: &Array2<f64>,
        kind: LossKind,
        tau: f64,
        adv: &AdvConfig,
        recipe: Recipe,
    ) -> Result<(Array2<f64>, Vec<Array2<f64>>)>;
    /// A peer attack's views (ACL `[X₁, X₂]`, RoCL `[X]`) and the input
    /// gradient of every PGD step (`[step][view]`), docs/SPEC.md §6.1.
    fn peer_attack(
        &self,
        model: &Model,
        p: &Array2<f64>,
        q: &Array2<f64>,
        cfg: &PeerConfig,
    ) -> Result<PeerTrace>;
    /// `batches.len()` training steps from `model` with a fresh optimizer.
    fn train(
        &self,
        model: &Model,
        optimizer: OptimizerConfig,
        step: StepKind,
        batches: &[(Array2<f64>, Array2<f64>)],
    ) -> Result<Trained>;
}

/// The pure-ndarray reference in precision `F`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference<F>(PhantomData<F>);

impl<F: Real> Reference<F> {
    /// The reference in `F`.
    pub fn new() -> Self {
        Reference(PhantomData)
    }

    fn mlp(model: &Model) -> Result<Mlp<F>> {
        Ok(Mlp::from_state_dict(model.config, &model.state.cast()?)?)
    }
}

fn to_f<F: Real>(a: &Array2<f64>) -> Array2<F> {
    a.mapv(F::c)
}

fn to_f64<F: Real>(a: &Array2<F>) -> Array2<f64> {
    a.mapv(|v| v.as_f64())
}

impl<F: Real> Backend for Reference<F> {
    fn name(&self) -> String {
        format!("reference {}", F::NAME)
    }

    fn precision(&self) -> Precision {
        if F::NAME == "f64" {
            Precision::F64
        } else {
            Precision::F32
        }
    }

    fn embed(&self, model: &Model, x: &Array2<f64>, mode: Mode) -> Result<Array2<f64>> {
        let mlp = Self::mlp(model)?;
        Ok(to_f64(&mlp.forward(to_f::<F>(x).view(), mode)?.z))
    }

    fn loss(
        &self,
        kind: LossKind,
        z_p: &Array2<f64>,
        z_q: &Array2<f64>,
        tau: f64,
    ) -> Result<LossOutput<f64>> {
        let out = clae_reference::loss::loss_forward_backward(
            kind,
            to_f::<F>(z_p).view(),
            to_f::<F>(z_q).view(),
            tau,
        )?;
        Ok(LossOutput {
            value: out.value.as_f64(),
            grad_z_p: to_f64(&out.grad_z_p),
            grad_z_q: to_f64(&out.grad_z_q),
        })
    }

    fn input_gradient(
        &self,
        model: &Model,
        p: &Array2<f64>,
        x: &Array2<f64>,
        kind: LossKind,
        tau: f64,
    ) -> Result<Array2<f64>> {
        let mlp = Self::mlp(model)?;
        let g = clae_reference::adversarial::input_gradient(
            &mlp,
            to_f::<F>(p).view(),
            to_f::<F>(x).view(),
            kind,
            tau,
        )?;
        Ok(to_f64(&g))
    }

    fn adversarial_view(
        &self,
        model: &Model,
        p: &Array2<f64>,
        q: &Array2<f64>,
        kind: LossKind,
        tau: f64,
        adv: &AdvConfig,
        recipe: Recipe,
    ) -> Result<(Array2<f64>, Vec<Array2<f64>>)> {
        let mut mlp = Self::mlp(model)?;
        let (p, q) = (to_f::<F>(p), to_f::<F>(q));
        let view = match recipe {
            Recipe::Lean => clae_reference::adversarial::adversarial_view(
                &mlp,
                p.view(),
                q.view(),
                kind,
                tau,
                adv,
            )?,
            Recipe::Authors => clae_reference::adversarial::adversarial_view_authors(
                &mut mlp,
                p.view(),
                q.view(),
                kind,
                tau,
                adv,
            )?,
        };
        Ok((to_f64(&view.q_adv), view.grads.iter().map(to_f64).collect()))
    }

    fn peer_attack(
        &self,
        model: &Model,
        p: &Array2<f64>,
        q: &Array2<f64>,
        cfg: &PeerConfig,
    ) -> Result<PeerTrace> {
        let mlp = Self::mlp(model)?;
        let (p, q) = (to_f::<F>(p), to_f::<F>(q));
        let t = clae_reference::peers::peer_attack_trace(&mlp, p.view(), q.view(), cfg)?;
        Ok((
            t.views.iter().map(to_f64).collect(),
            t.gradients
                .iter()
                .map(|s| s.iter().map(to_f64).collect())
                .collect(),
        ))
    }

    fn train(
        &self,
        model: &Model,
        optimizer: OptimizerConfig,
        step: StepKind,
        batches: &[(Array2<f64>, Array2<f64>)],
    ) -> Result<Trained> {
        let mut mlp = Self::mlp(model)?;
        let mut opt = Optimizer::new(optimizer, &mlp)?;
        let mut reports = Vec::with_capacity(batches.len());
        for (p, q) in batches {
            let (p, q) = (to_f::<F>(p), to_f::<F>(q));
            let r = match step {
                StepKind::Plain { loss, tau } => {
                    plain_step(&mut mlp, &mut opt, p.view(), q.view(), loss, tau)?
                }
                StepKind::Clae(c) => clae_step(&mut mlp, &mut opt, p.view(), q.view(), &c)?,
                StepKind::Peer(c) => peer_step(&mut mlp, &mut opt, p.view(), q.view(), &c)?,
            };
            reports.push(StepReport {
                loss_clean: r.loss_clean.as_f64(),
                loss_adv: r.loss_adv.map(|v| v.as_f64()),
                total: r.total.as_f64(),
                q_adv: r.q_adv.as_ref().map(to_f64),
            });
        }
        Ok(Trained {
            reports,
            state: mlp.state_dict().cast()?,
            optimizer: opt.state_dict(&mlp).cast()?,
        })
    }
}

/// libtorch through `clae-accelerated`, on a device, in a precision.
/// `Mode`s, recipes and steps map one to one onto that crate's functions.
#[derive(Debug, Clone, Copy)]
pub struct Torch {
    /// Where it runs.
    pub device: tch::Device,
    /// `f32` or `f64`.
    pub precision: clae_accelerated::device::Precision,
}

impl Torch {
    /// On the CPU.
    pub fn cpu(precision: clae_accelerated::device::Precision) -> Self {
        Torch {
            device: tch::Device::Cpu,
            precision,
        }
    }

    /// On the first CUDA device, if there is one (TF32 is switched off, as
    /// docs/SPEC.md §8 requires for conformance).
    pub fn cuda(precision: clae_accelerated::device::Precision) -> Option<Self> {
        if !clae_accelerated::device::cuda_available() {
            return None;
        }
        clae_accelerated::device::set_tf32_allowed(false).ok()?;
        Some(Torch {
            device: tch::Device::Cuda(0),
            precision,
        })
    }

    fn mlp(&self, model: &Model) -> Result<clae_accelerated::mlp::Mlp> {
        Ok(clae_accelerated::mlp::Mlp::from_state_dict(
            model.config,
            &model.state,
            self.device,
            self.precision,
        )?)
    }

    fn tensor(&self, a: &Array2<f64>) -> Result<tch::Tensor> {
        let t = clae_accelerated::convert::tensor_from_array(a.view(), self.device)?;
        Ok(t.f_to_kind(self.precision.kind())
            .map_err(clae_accelerated::Error::from)?)
    }
}

fn array(t: &tch::Tensor) -> Result<Array2<f64>> {
    Ok(clae_accelerated::convert::array2_from_tensor::<f64>(t)?)
}

impl Backend for Torch {
    fn name(&self) -> String {
        let dev = match self.device {
            tch::Device::Cpu => "CPU".to_string(),
            tch::Device::Cuda(i) => format!("CUDA:{i}"),
            d => format!("{d:?}"),
        };
        format!("tch {dev} {}", self.precision.name())
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn embed(&self, model: &Model, x: &Array2<f64>, mode: Mode) -> Result<Array2<f64>> {
        use clae_accelerated::Encoder;
        let mlp = self.mlp(model)?;
        let x = self.tensor(x)?;
        let z = tch::no_grad(|| mlp.forward(&x, mode))?;
        array(&z)
    }

    fn loss(
        &self,
        kind: LossKind,
        z_p: &Array2<f64>,
        z_q: &Array2<f64>,
        tau: f64,
    ) -> Result<LossOutput<f64>> {
        let out = clae_accelerated::loss::loss_forward_backward(
            kind,
            &self.tensor(z_p)?,
            &self.tensor(z_q)?,
            tau,
        )?;
        Ok(LossOutput {
            value: out.value,
            grad_z_p: array(&out.grad_z_p)?,
            grad_z_q: array(&out.grad_z_q)?,
        })
    }

    fn input_gradient(
        &self,
        model: &Model,
        p: &Array2<f64>,
        x: &Array2<f64>,
        kind: LossKind,
        tau: f64,
    ) -> Result<Array2<f64>> {
        let mlp = self.mlp(model)?;
        let g = clae_accelerated::adversarial::input_gradient(
            &mlp,
            &self.tensor(p)?,
            &self.tensor(x)?,
            kind,
            tau,
        )?;
        array(&g)
    }

    fn adversarial_view(
        &self,
        model: &Model,
        p: &Array2<f64>,
        q: &Array2<f64>,
        kind: LossKind,
        tau: f64,
        adv: &AdvConfig,
        recipe: Recipe,
    ) -> Result<(Array2<f64>, Vec<Array2<f64>>)> {
        let mut mlp = self.mlp(model)?;
        let (p, q) = (self.tensor(p)?, self.tensor(q)?);
        let view = match recipe {
            Recipe::Lean => {
                clae_accelerated::adversarial::adversarial_view(&mlp, &p, &q, kind, tau, adv)?
            }
            Recipe::Authors => clae_accelerated::adversarial::adversarial_view_authors(
                &mut mlp, &p, &q, kind, tau, adv,
            )?,
        };
        Ok((
            array(&view.q_adv)?,
            view.grads.iter().map(array).collect::<Result<Vec<_>>>()?,
        ))
    }

    fn peer_attack(
        &self,
        model: &Model,
        p: &Array2<f64>,
        q: &Array2<f64>,
        cfg: &PeerConfig,
    ) -> Result<PeerTrace> {
        let mlp = self.mlp(model)?;
        let (views, grads) = clae_accelerated::peers::peer_attack_trace(
            &mlp,
            &self.tensor(p)?,
            &self.tensor(q)?,
            cfg,
        )?;
        Ok((
            views.iter().map(array).collect::<Result<Vec<_>>>()?,
            grads
                .iter()
                .map(|s| s.iter().map(array).collect::<Result<Vec<_>>>())
                .collect::<Result<Vec<_>>>()?,
        ))
    }

    fn train(
        &self,
        model: &Model,
        optimizer: OptimizerConfig,
        step: StepKind,
        batches: &[(Array2<f64>, Array2<f64>)],
    ) -> Result<Trained> {
        use clae_accelerated::Encoder;
        let mut mlp = self.mlp(model)?;
        let mut opt = clae_accelerated::optim::Optimizer::new(optimizer, &mlp)?;
        let mut reports = Vec::with_capacity(batches.len());
        for (p, q) in batches {
            let (p, q) = (self.tensor(p)?, self.tensor(q)?);
            let r = match step {
                StepKind::Plain { loss, tau } => {
                    clae_accelerated::step::plain_step(&mut mlp, &mut opt, &p, &q, loss, tau)?
                }
                StepKind::Clae(c) => {
                    clae_accelerated::step::clae_step(&mut mlp, &mut opt, &p, &q, &c)?
                }
                StepKind::Peer(c) => {
                    clae_accelerated::step::peer_step(&mut mlp, &mut opt, &p, &q, &c)?
                }
            };
            reports.push(StepReport {
                loss_clean: r.loss_clean,
                loss_adv: r.loss_adv,
                total: r.total,
                q_adv: r.q_adv.as_ref().map(array).transpose()?,
            });
        }
        Ok(Trained {
            reports,
            state: mlp.state_dict::<f64>()?,
            optimizer: opt.state_dict::<f64>()?,
        })
    }
}
