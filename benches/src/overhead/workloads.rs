//! The measured workloads, one type per (implementation, task) pair, and
//! [`build`], which makes the right one for a plan [`Member`].
//!
//! Inputs are fixed pseudo-random data from the reference's [`Rng`]: images
//! `P` with standard-normal pixels and `Q = 0.9 P + 0.1 noise`, and for the
//! losses unit-norm embeddings. Every step workload owns its encoder and
//! optimizer and keeps training them, so a run is a real step on a real
//! state (the cost does not depend on the values).

use crate::flops::StepKind;
use crate::overhead::measure::Workload;
use crate::overhead::plan::{Member, Model, Task};
use crate::overhead::{Backend, BenchError, Impl, Precision, Result};
use clae_reference::adversarial::Recipe;
use clae_reference::encoder::{Mlp, MlpConfig};
use clae_reference::loss::{loss_forward_backward, LossKind};
use clae_reference::optim::{Optimizer, OptimizerConfig};
use clae_reference::peers::{peer_step, PeerConfig};
use clae_reference::rng::Rng;
use clae_reference::step::{clae_step, plain_step, ClaeConfig};
use clae_reference::Real;
use ndarray::Array2;
use std::hint::black_box;

/// A workload, or why this member cannot run here.
pub enum Built {
    /// Ready to time.
    Ready(Box<dyn Workload>),
    /// Not runnable on this machine or with this build (e.g. no CUDA);
    /// the reason is printed and written into the report.
    Skipped(String),
}

/// `n x cols` standard-normal values.
pub fn normal_matrix<F: Real>(n: usize, cols: usize, rng: &mut Rng) -> Array2<F> {
    Array2::from_shape_simple_fn((n, cols), || F::c(rng.normal()))
}

/// The two views of a batch: `P` standard normal, `Q = 0.9 P + 0.1 noise`.
pub fn views<F: Real>(n: usize, d_in: usize, seed: u64) -> (Array2<F>, Array2<F>) {
    let mut rng = Rng::new(seed);
    let p: Array2<F> = normal_matrix(n, d_in, &mut rng);
    let noise: Array2<F> = normal_matrix(n, d_in, &mut rng);
    let q = &p * F::c(0.9) + &noise * F::c(0.1);
    (p, q)
}

/// Two batches of unit-norm `n x d` embeddings, the second close to the first.
pub fn embeddings<F: Real>(n: usize, d: usize, seed: u64) -> (Array2<F>, Array2<F>) {
    let (mut z_p, mut z_q) = views::<F>(n, d, seed);
    for z in [&mut z_p, &mut z_q] {
        for mut row in z.rows_mut() {
            let norm = row.dot(&row).sqrt();
            row.mapv_inplace(|v| v / norm);
        }
    }
    (z_p, z_q)
}

/// The authors' optimizer for `loss` (Adam for SimCLR, SGD otherwise).
pub fn optimizer_for(loss: LossKind) -> OptimizerConfig {
    match loss {
        LossKind::SimClr => OptimizerConfig::authors_adam(),
        LossKind::Plain | LossKind::Uel => OptimizerConfig::authors_sgd(),
    }
}

/// The CLAE configuration of a step kind: the paper's for `loss`, with the
/// authors' recipe for [`StepKind::Authors`] and the lean one otherwise.
pub fn clae_config(loss: LossKind, kind: StepKind) -> ClaeConfig {
    let mut cfg = ClaeConfig::paper(loss);
    cfg.recipe = match kind {
        StepKind::Authors => Recipe::Authors,
        _ => Recipe::Lean,
    };
    cfg
}

/// A reference training step ([`plain_step`], [`clae_step`] with a recipe,
/// or a peer's [`peer_step`]).
pub struct RefStep<F: Real> {
    mlp: Mlp<F>,
    opt: Optimizer<F>,
    p: Array2<F>,
    q: Array2<F>,
    kind: StepKind,
    cfg: ClaeConfig,
    peer: Option<PeerConfig>,
}

impl<F: Real> RefStep<F> {
    /// A fresh encoder (seed 0) and optimizer, and a fixed batch of `n`.
    pub fn new(config: MlpConfig, n: usize, loss: LossKind, kind: StepKind) -> Result<Self> {
        let mlp = Mlp::new(config, 0)?;
        let opt = Optimizer::new(optimizer_for(loss), &mlp)?;
        let (p, q) = views(n, config.d_in, 1);
        Ok(RefStep {
            mlp,
            opt,
            p,
            q,
            kind,
            cfg: clae_config(loss, kind),
            peer: kind.peer_config(loss),
        })
    }

    /// The encoder, for inspection.
    pub fn mlp(&self) -> &Mlp<F> {
        &self.mlp
    }
}

impl<F: Real> Workload for RefStep<F> {
    fn run(&mut self) -> Result<()> {
        let (p, q) = (self.p.view(), self.q.view());
        let report = match self.kind {
            StepKind::Plain => plain_step(
                &mut self.mlp,
                &mut self.opt,
                p,
                q,
                self.cfg.loss,
                self.cfg.tau,
            )?,
            StepKind::Lean | StepKind::Authors => {
                clae_step(&mut self.mlp, &mut self.opt, p, q, &self.cfg)?
            }
            StepKind::Acl(_) | StepKind::Rocl(_) => {
                let cfg = self
                    .peer
                    .as_ref()
                    .expect("a peer step has its configuration");
                peer_step(&mut self.mlp, &mut self.opt, p, q, cfg)?
            }
        };
        if !report.total.is_finite() {
            return Err(BenchError::NonFinite {
                what: format!("reference {} step", self.kind),
            });
        }
        black_box(report);
        Ok(())
    }
}

/// A reference loss value and both gradients.
pub struct RefLoss<F: Real> {
    kind: LossKind,
    z_p: Array2<F>,
    z_q: Array2<F>,
    tau: f64,
}

impl<F: Real> RefLoss<F> {
    /// Fixed unit-norm embeddings of `n x d`, the loss's default `tau`.
    pub fn new(kind: LossKind, n: usize, d: usize) -> Self {
        let (z_p, z_q) = embeddings(n, d, 2);
        RefLoss {
            kind,
            z_p,
            z_q,
            tau: kind.default_tau(),
        }
    }
}

impl<F: Real> Workload for RefLoss<F> {
    fn run(&mut self) -> Result<()> {
        let out = loss_forward_backward(self.kind, self.z_p.view(), self.z_q.view(), self.tau)?;
        black_box(out);
        Ok(())
    }
}

/// The reference's GEMM path, [`Real::matmul`] (see `clae_reference::gemm`:
/// OpenBLAS `sgemm` for `f32` on AVX-512 CPUs, matrixmultiply otherwise),
/// called as the reference's `linear_forward` calls it (`x · Wᵀ`).
pub struct RefGemm<F: Real> {
    a: Array2<F>,
    b: Array2<F>,
}

impl<F: Real> RefGemm<F> {
    /// Two `size x size` normal matrices.
    pub fn new(size: usize) -> Self {
        let mut rng = Rng::new(3);
        RefGemm {
            a: normal_matrix(size, size, &mut rng),
            b: normal_matrix(size, size, &mut rng),
        }
    }
}

impl<F: Real> Workload for RefGemm<F> {
    fn run(&mut self) -> Result<()> {
        black_box(F::matmul(self.a.view(), self.b.t()));
        Ok(())
    }
}

/// libtorch's GEMM (`matmul`) on the CPU or a CUDA device.
pub struct TchGemm {
    a: tch::Tensor,
    b: tch::Tensor,
    device: tch::Device,
}

impl TchGemm {
    /// Two `size x size` normal matrices on `device`.
    pub fn new(size: usize, precision: Precision, device: tch::Device) -> Result<Self> {
        let kind = tch_kind(precision);
        tch::manual_seed(3);
        let a = tch::Tensor::f_randn([size as i64, size as i64], (kind, device))?;
        let b = tch::Tensor::f_randn([size as i64, size as i64], (kind, device))?;
        Ok(TchGemm { a, b, device })
    }
}

impl Workload for TchGemm {
    fn run(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let c = self.a.f_matmul(&self.b.tr())?;
        sync(self.device);
        let _ = black_box(c);
        Ok(())
    }
}

/// libtorch's element kind for a precision.
pub fn tch_kind(p: Precision) -> tch::Kind {
    match p {
        Precision::F32 => tch::Kind::Float,
        Precision::F64 => tch::Kind::Double,
    }
}

/// Waits for a CUDA device (no-op on the CPU).
pub fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Whether a CUDA device is usable (loads libtorch's CUDA backend first).
pub fn cuda_available() -> bool {
    clae_accelerated::device::cuda_available()
}

/// The libtorch device of a backend, or why it is unavailable.
pub fn device_of(backend: Backend) -> std::result::Result<tch::Device, String> {
    match backend {
        Backend::Reference | Backend::TchCpu | Backend::EagerCpu => Ok(tch::Device::Cpu),
        Backend::TchCuda | Backend::EagerCuda => {
            if cuda_available() {
                Ok(tch::Device::Cuda(0))
            } else {
                Err("no CUDA device available (libtorch reports none); CUDA members skipped".into())
            }
        }
    }
}

/// Makes the workload of `member`, or says why it cannot run here.
pub fn build(member: &Member) -> Result<Built> {
    let Impl { backend, precision } = member.imp;
    if backend == Backend::Reference {
        let w: Box<dyn Workload> = match (member.task, precision) {
            (Task::Gemm { size }, Precision::F32) => Box::new(RefGemm::<f32>::new(size)),
            (Task::Gemm { size }, Precision::F64) => Box::new(RefGemm::<f64>::new(size)),
            (Task::Loss { kind, n, d }, Precision::F32) => {
                Box::new(RefLoss::<f32>::new(kind, n, d))
            }
            (Task::Loss { kind, n, d }, Precision::F64) => {
                Box::new(RefLoss::<f64>::new(kind, n, d))
            }
            (Task::Step { config, kind }, p) => match config.model {
                Model::Mlp(c) => match p {
                    Precision::F32 => {
                        Box::new(RefStep::<f32>::new(c, config.n, config.loss, kind)?)
                    }
                    Precision::F64 => {
                        Box::new(RefStep::<f64>::new(c, config.n, config.loss, kind)?)
                    }
                },
                Model::ResNet18 { .. } => {
                    return Ok(Built::Skipped("the reference has no ResNet".into()))
                }
            },
        };
        return Ok(Built::Ready(w));
    }
    let device = match device_of(backend) {
        Ok(d) => d,
        Err(why) => return Ok(Built::Skipped(why)),
    };
    if matches!(backend, Backend::EagerCpu | Backend::EagerCuda) {
        let Task::Step { config, kind } = member.task else {
            return Ok(Built::Skipped(
                "the PyTorch eager baseline times training steps only".into(),
            ));
        };
        if let Err(why) = crate::overhead::eager::locate() {
            return Ok(Built::Skipped(format!("PyTorch eager: {why}")));
        }
        let dev = if backend == Backend::EagerCuda {
            "cuda"
        } else {
            "cpu"
        };
        let step = crate::overhead::eager::EagerStep::new(
            &config,
            kind,
            dev,
            tch::get_num_threads().max(1) as usize,
        )?;
        return Ok(Built::Ready(Box::new(step)));
    }
    match member.task {
        Task::Gemm { size } => Ok(Built::Ready(Box::new(TchGemm::new(
            size, precision, device,
        )?))),
        Task::Loss { kind, n, d } => {
            crate::overhead::workloads::tch_side::loss(kind, n, d, precision, device)
        }
        Task::Step { config, kind } => {
            crate::overhead::workloads::tch_side::step(config, kind, precision, device)
        }
    }
}

/// The libtorch side through `clae-accelerated`: its MLP and ResNet-18,
/// its steps and losses, with the same data as the reference's workloads.
pub mod tch_side {
    use super::{embeddings, sync, views, Built};
    use crate::flops::StepKind;
    use crate::overhead::measure::Workload;
    use crate::overhead::plan::{Model, StepConfig};
    use crate::overhead::{BenchError, Precision, Result};
    use clae_accelerated::convert::tensor_from_array;
    use clae_accelerated::encoder::Encoder;
    use clae_accelerated::loss::loss_forward_backward;
    use clae_accelerated::mlp::Mlp;
    use clae_accelerated::optim::{Optimizer, OptimizerConfig};
    use clae_accelerated::resnet::{ResNet18, ResNetConfig};
    use clae_accelerated::step::{clae_step, peer_step, plain_step, ClaeConfig};
    use clae_reference::loss::LossKind;
    use clae_reference::peers::PeerConfig;
    use ndarray::Array2;
    use std::hint::black_box;
    use tch::{Device, Tensor};

    fn tensor<F: clae_accelerated::device::TchReal>(
        a: &Array2<F>,
        device: Device,
    ) -> Result<Tensor> {
        Ok(tensor_from_array(a.view(), device)?)
    }

    /// A `clae-accelerated` loss value and both gradients (autograd).
    pub struct TchLoss {
        kind: LossKind,
        z_p: Tensor,
        z_q: Tensor,
        tau: f64,
        device: Device,
    }

    impl Workload for TchLoss {
        fn run(&mut self) -> Result<()> {
            let out = loss_forward_backward(self.kind, &self.z_p, &self.z_q, self.tau)?;
            sync(self.device);
            black_box(out);
            Ok(())
        }
    }

    /// The same unit-norm embeddings as [`super::RefLoss`], on `device`.
    pub fn loss(kind: LossKind, n: usize, d: usize, p: Precision, device: Device) -> Result<Built> {
        let (z_p, z_q) = match p {
            Precision::F32 => {
                let (a, b) = embeddings::<f32>(n, d, 2);
                (tensor(&a, device)?, tensor(&b, device)?)
            }
            Precision::F64 => {
                let (a, b) = embeddings::<f64>(n, d, 2);
                (tensor(&a, device)?, tensor(&b, device)?)
            }
        };
        Ok(Built::Ready(Box::new(TchLoss {
            kind,
            z_p,
            z_q,
            tau: kind.default_tau(),
            device,
        })))
    }

    /// A `clae-accelerated` training step on its MLP or ResNet-18.
    pub struct TchStep<E: Encoder> {
        enc: E,
        opt: Optimizer,
        p: Tensor,
        q: Tensor,
        kind: StepKind,
        cfg: ClaeConfig,
        peer: Option<PeerConfig>,
        device: Device,
    }

    impl<E: Encoder> Workload for TchStep<E> {
        fn run(&mut self) -> Result<()> {
            let enc = &mut self.enc;
            let report = match self.kind {
                StepKind::Plain => plain_step(
                    enc,
                    &mut self.opt,
                    &self.p,
                    &self.q,
                    self.cfg.loss,
                    self.cfg.tau,
                )?,
                StepKind::Lean | StepKind::Authors => {
                    clae_step(enc, &mut self.opt, &self.p, &self.q, &self.cfg)?
                }
                StepKind::Acl(_) | StepKind::Rocl(_) => {
                    let cfg = self
                        .peer
                        .as_ref()
                        .expect("a peer step has its configuration");
                    peer_step(enc, &mut self.opt, &self.p, &self.q, cfg)?
                }
            };
            sync(self.device);
            if !report.total.is_finite() {
                return Err(BenchError::NonFinite {
                    what: format!("tch {} step", self.kind),
                });
            }
            black_box(report);
            Ok(())
        }
    }

    /// An encoder (seed 0), the authors' optimizer, and the reference
    /// workloads' batch (`P` normal, `Q = 0.9 P + 0.1 noise`; images of
    /// `3 x 32 x 32` for the ResNet).
    pub fn step(config: StepConfig, kind: StepKind, p: Precision, device: Device) -> Result<Built> {
        match config.model {
            Model::Mlp(c) => make_step(Mlp::new(c, 0, device, p)?, config, kind, p, device),
            Model::ResNet18 { d } => {
                let rc = ResNetConfig {
                    d,
                    ..ResNetConfig::cifar()
                };
                make_step(ResNet18::new(rc, 0, device, p)?, config, kind, p, device)
            }
        }
    }

    fn make_step<E: Encoder + 'static>(
        enc: E,
        config: StepConfig,
        kind: StepKind,
        p: Precision,
        device: Device,
    ) -> Result<Built> {
        let n = config.n;
        let d_in = config.model.d_in();
        let (pv, qv) = match p {
            Precision::F32 => {
                let (a, b) = views::<f32>(n, d_in, 1);
                (tensor(&a, device)?, tensor(&b, device)?)
            }
            Precision::F64 => {
                let (a, b) = views::<f64>(n, d_in, 1);
                (tensor(&a, device)?, tensor(&b, device)?)
            }
        };
        let mut shape = vec![n as i64];
        shape.extend(enc.input_shape());
        let (pv, qv) = (pv.f_reshape(&shape)?, qv.f_reshape(&shape)?);
        let opt_cfg: OptimizerConfig = super::optimizer_for(config.loss);
        let opt = Optimizer::new(opt_cfg, &enc)?;
        let cfg: ClaeConfig = super::clae_config(config.loss, kind);
        Ok(Built::Ready(Box::new(TchStep {
            enc,
            opt,
            p: pv,
            q: qv,
            kind,
            cfg,
            peer: kind.peer_config(config.loss),
            device,
        })))
    }
}
