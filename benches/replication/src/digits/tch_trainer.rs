//! [`Trainer`] for the libtorch backend (`clae-accelerated`): the same
//! dual-BN MLP, losses, FGSM view and optimizers, with gradients from
//! autograd. [`clae_accelerated::mlp::Mlp::new`] draws exactly the
//! reference's initial values for a seed, so a tch run starts from the same
//! encoder as the reference run of that seed and sees the same batches; the
//! trajectories then differ only by floating-point rounding.

use super::data::PIXELS;
use super::train::{StepLoss, TrainConfig, Trainer};
use super::{DigitsError, Result};
use clae_accelerated::convert::{array2_from_tensor, tensor_from_array};
use clae_accelerated::device::Precision;
use clae_accelerated::mlp::Mlp;
use clae_accelerated::optim::Optimizer;
use clae_accelerated::step::{self, ClaeConfig, StepReport};
use clae_accelerated::Encoder;
use clae_reference::encoder::MlpConfig;
use ndarray::{Array2, ArrayView2};
use tch::Device;

impl From<clae_accelerated::Error> for DigitsError {
    fn from(e: clae_accelerated::Error) -> Self {
        DigitsError::Backend {
            message: e.to_string(),
        }
    }
}

/// The libtorch trainer, in `f32`, on one device.
#[derive(Debug)]
pub struct TchTrainer {
    mlp: Mlp,
    opt: Optimizer,
    step: ClaeConfig,
    device: Device,
}

impl TchTrainer {
    /// A fresh encoder (the reference's initial values for `seed`) and its
    /// optimizer (tensor-ops implementation of `torch.optim`'s rules) on
    /// `device`. CUDA must be available when asked for (a typed error
    /// otherwise).
    pub fn new(cfg: &TrainConfig, seed: u64, device: Device) -> Result<Self> {
        cfg.validate()?;
        if device.is_cuda() {
            clae_accelerated::device::load_cuda_backend().map_err(|message| {
                DigitsError::Backend {
                    message: format!("cannot load libtorch's CUDA backend: {message}"),
                }
            })?;
        }
        clae_accelerated::device::ensure_device(device)?;
        let m = cfg.model;
        let config = MlpConfig::new(PIXELS, m.hidden, m.depth, m.d);
        let mlp = Mlp::new(config, seed, device, Precision::F32)?;
        let opt = Optimizer::new(cfg.optimizer, &mlp)?;
        Ok(TchTrainer {
            mlp,
            opt,
            step: cfg.clae_config(),
            device,
        })
    }

    fn tensor(&self, x: ArrayView2<'_, f32>) -> Result<tch::Tensor> {
        Ok(tensor_from_array(x, self.device)?)
    }
}

fn step_loss(r: &StepReport) -> StepLoss {
    StepLoss {
        total: r.total,
        clean: r.loss_clean,
        adv: r.loss_adv,
    }
}

impl Trainer for TchTrainer {
    fn backend(&self) -> String {
        match self.device {
            Device::Cpu => "tch-cpu-f32".into(),
            _ => "tch-cuda-f32".into(),
        }
    }

    fn plain_step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss> {
        let (p, q) = (self.tensor(p)?, self.tensor(q)?);
        let (loss, tau) = (self.step.loss, self.step.tau);
        let r = step::plain_step(&mut self.mlp, &mut self.opt, &p, &q, loss, tau)?;
        Ok(step_loss(&r))
    }

    fn clae_step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss> {
        let (p, q) = (self.tensor(p)?, self.tensor(q)?);
        let r = step::clae_step(&mut self.mlp, &mut self.opt, &p, &q, &self.step)?;
        Ok(step_loss(&r))
    }

    fn embed_eval(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let z = self.mlp.embed(&self.tensor(x)?)?;
        Ok(array2_from_tensor::<f32>(&z)?)
    }
}
