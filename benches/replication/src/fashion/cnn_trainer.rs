//! [`Trainer`] for the small dual-BN CNN ([`clae_accelerated::cnn::Cnn`]) on
//! the libtorch CPU backend in `f32`: the same losses, CLAE step (lean
//! recipe), control and peer steps as the reference MLP, with gradients from
//! autograd; images are normalised and reshaped to `N x 1 x 28 x 28`.

use super::data::{normalise, PIXELS, SIDE, STD};
use super::train::{StepLoss, TrainConfig, Trainer};
use super::{FashionError, Result};
use clae_accelerated::cnn::{Cnn, CnnConfig};
use clae_accelerated::convert::{array2_from_tensor, tensor_from_array};
use clae_accelerated::device::Precision;
use clae_accelerated::encoder::Mode;
use clae_accelerated::optim::Optimizer;
use clae_accelerated::step::{self, StepReport};
use clae_accelerated::Encoder;
use ndarray::{Array2, ArrayView2, Axis};
use tch::{Device, Tensor};

impl From<clae_accelerated::Error> for FashionError {
    fn from(e: clae_accelerated::Error) -> Self {
        FashionError::Backend {
            message: e.to_string(),
        }
    }
}

impl From<tch::TchError> for FashionError {
    fn from(e: tch::TchError) -> Self {
        FashionError::Backend {
            message: e.to_string(),
        }
    }
}

/// Rows embedded per forward pass by [`Trainer::embed_eval`] of
/// [`CnnTrainer`].
pub const EMBED_CHUNK: usize = 2048;

/// The CNN trainer (CPU, `f32`).
#[derive(Debug)]
pub struct CnnTrainer {
    cnn: Cnn,
    opt: Optimizer,
    cfg: TrainConfig,
    seed: u64,
    steps: u64,
}

impl CnnTrainer {
    /// A fresh CNN of `cnn` (initialised from `seed`) and its optimizer.
    pub fn new(cfg: &TrainConfig, cnn: CnnConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let model = Cnn::new(cnn, seed, Device::Cpu, Precision::F32)?;
        let opt = Optimizer::new(cfg.optimizer, &model)?;
        Ok(CnnTrainer {
            cnn: model,
            opt,
            cfg: *cfg,
            seed,
            steps: 0,
        })
    }

    /// The encoder.
    pub fn cnn(&self) -> &Cnn {
        &self.cnn
    }
}

/// `n x 784` pixels → normalised `n x 1 x 28 x 28` tensor.
fn image_tensor(x: ArrayView2<'_, f32>) -> Result<Tensor> {
    if x.ncols() != PIXELS {
        return Err(FashionError::config(
            "images",
            format!("expected n x {PIXELS}, got {:?}", x.dim()),
        ));
    }
    let t = tensor_from_array(normalise(x).view(), Device::Cpu)?;
    Ok(t.f_reshape([x.nrows() as i64, 1, SIDE as i64, SIDE as i64])?)
}

fn step_loss(r: &StepReport) -> StepLoss {
    StepLoss {
        total: r.total,
        clean: r.loss_clean,
        adv: r.loss_adv,
    }
}

impl Trainer for CnnTrainer {
    fn backend(&self) -> String {
        let c = self.cnn.config();
        format!("tch-cpu-f32 CNN w{} x{} blocks-{}", c.width, c.blocks, c.d)
    }

    fn step(&mut self, p: ArrayView2<'_, f32>, q: ArrayView2<'_, f32>) -> Result<StepLoss> {
        let (p, q) = (image_tensor(p)?, image_tensor(q)?);
        let cfg = self.cfg;
        let r = match cfg.method {
            super::train::Method::Plain | super::train::Method::PlainLong => {
                step::plain_step(&mut self.cnn, &mut self.opt, &p, &q, cfg.loss, cfg.tau)?
            }
            super::train::Method::Clae | super::train::Method::ClaeEps0 => {
                step::clae_step(&mut self.cnn, &mut self.opt, &p, &q, &cfg.clae_config())?
            }
            super::train::Method::Acl | super::train::Method::Rocl => {
                let mut peer = cfg.peer_config().ok_or_else(|| {
                    FashionError::config("method", "a peer method without a peer config")
                })?;
                peer.pgd.random_start = Some(super::train::pgd_seed(self.seed, self.steps));
                step::peer_step(&mut self.cnn, &mut self.opt, &p, &q, &peer)?
            }
        };
        self.steps += 1;
        Ok(step_loss(&r))
    }

    /// Embeds in chunks of [`EMBED_CHUNK`] rows, so a 55 000-image bank
    /// never sits in one tensor (with its activations) at once.
    fn embed_eval(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        if x.nrows() <= EMBED_CHUNK {
            let z = self.cnn.embed(&image_tensor(x)?)?;
            return Ok(array2_from_tensor::<f32>(&z)?);
        }
        let mut parts = Vec::with_capacity(x.nrows().div_ceil(EMBED_CHUNK));
        for start in (0..x.nrows()).step_by(EMBED_CHUNK) {
            let end = (start + EMBED_CHUNK).min(x.nrows());
            let z = self
                .cnn
                .embed(&image_tensor(x.slice(ndarray::s![start..end, ..]))?)?;
            parts.push(array2_from_tensor::<f32>(&z)?);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| FashionError::Backend {
            message: format!("concatenating embedding chunks: {e}"),
        })
    }

    fn embed_eval_vjp(
        &self,
        x: ArrayView2<'_, f32>,
        dz: &mut dyn FnMut(ArrayView2<'_, f32>) -> Result<Array2<f32>>,
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        let n = x.nrows() as i64;
        let xt = image_tensor(x)?.f_detach()?.set_requires_grad(true);
        let z = self.cnn.forward(&xt, Mode::Eval)?;
        let z_arr = array2_from_tensor::<f32>(&z.f_detach()?)?;
        let g = dz(z_arr.view())?;
        let gt = tensor_from_array(g.view(), Device::Cpu)?;
        let s = z.f_mul(&gt)?.f_sum(tch::Kind::Float)?;
        let grads = Tensor::f_run_backward(&[&s], &[&xt], false, false)?;
        let dx = grads
            .first()
            .ok_or_else(|| FashionError::Backend {
                message: "autograd returned no input gradient".into(),
            })?
            .f_reshape([n, PIXELS as i64])?;
        // x_norm = (x − MEAN) / STD, so dL/dx = dL/dx_norm / STD.
        let inv = (1.0 / STD) as f32;
        Ok((z_arr, array2_from_tensor::<f32>(&dx)?.mapv(|v| v * inv)))
    }
}
