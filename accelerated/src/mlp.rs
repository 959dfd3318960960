//! The dual-BN MLP encoder of docs/SPEC.md §2, built from libtorch ops:
//!
//! ```text
//! backbone: repeat L times:  Linear(in -> h) -> DualBatchNorm1d(h) -> ReLU
//! head:     Linear(h -> h) -> ReLU -> Linear(h -> d)      (in = D_in when L = 0)
//! output:   z = F.normalize(u, dim=1, eps=1e-12)
//! ```
//!
//! Tensor names, shapes and initialisation are the reference's
//! ([`clae_reference::encoder::Mlp`]), so a state dict moves between the two
//! unchanged.

use crate::check::{for_precision, Health};
use crate::device::{ensure_device, Precision, TchReal};
use crate::encoder::{Encoder, NamedTensors};
use crate::error::Result;
use crate::layers::{embed_normalize, BatchNorm, DualBatchNorm, Linear};
use clae_reference::encoder::{Mlp as ReferenceMlp, Mode};
use clae_reference::state::{Role, StateDict};
use tch::{Device, Tensor};

pub use clae_reference::encoder::MlpConfig;

/// One backbone block: `Linear -> DualBatchNorm1d -> ReLU`.
#[derive(Debug)]
struct Block {
    linear: Linear,
    bn: DualBatchNorm,
}

/// The dual-BN MLP (docs/SPEC.md §2) on a libtorch device.
///
/// ```
/// use clae_accelerated::{device::Precision, encoder::Encoder, mlp::Mlp};
/// use clae_reference::encoder::{Mlp as RefMlp, MlpConfig};
/// let config = MlpConfig::new(6, 8, 2, 4);
/// let reference = RefMlp::<f64>::new(config, 11).unwrap();
/// let mlp = Mlp::from_state_dict(config, &reference.state_dict(), tch::Device::Cpu, Precision::F64).unwrap();
/// // exported back bit for bit
/// assert_eq!(mlp.state_dict::<f64>().unwrap(), reference.state_dict());
/// assert_eq!(mlp.num_parameters(), reference.num_parameters());
/// ```
#[derive(Debug)]
pub struct Mlp {
    config: MlpConfig,
    tensors: NamedTensors,
    blocks: Vec<Block>,
    head: [Linear; 2],
}

impl Mlp {
    /// A freshly initialised encoder with exactly the reference's initial
    /// values for `(config, seed)` (drawn by
    /// [`clae_reference::encoder::Mlp::new`] in `f64`, rounded to `precision`).
    pub fn new(config: MlpConfig, seed: u64, device: Device, precision: Precision) -> Result<Self> {
        // the precision's rules first, as the reference in that precision checks them
        for_precision!(precision, F => {
            config.validate_for::<F>()?;
            clae_reference::check::allocatable::<F>("encoder parameters", config.num_parameters()?)?;
        });
        let reference = ReferenceMlp::<f64>::new(config, seed)?;
        Self::from_state_dict(config, &reference.state_dict(), device, precision)
    }

    /// An encoder holding the values of `state` (the reference's layout; see
    /// [`Encoder::load_state_dict`] for what is checked).
    pub fn from_state_dict<F: TchReal>(
        config: MlpConfig,
        state: &StateDict<F>,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        let mut mlp = Self::zeros(config, device, precision)?;
        mlp.load_state_dict(state)?;
        Ok(mlp)
    }

    /// The same values as a reference encoder.
    pub fn from_reference<F: TchReal>(
        reference: &ReferenceMlp<F>,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        Self::from_state_dict(
            *reference.config(),
            &reference.state_dict(),
            device,
            precision,
        )
    }

    /// The configuration.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// All tensors allocated in layout order (weights zero, BatchNorm at
    /// PyTorch's initial state), ready to be loaded.
    fn zeros(config: MlpConfig, device: Device, precision: Precision) -> Result<Self> {
        for_precision!(precision, F => {
            config.validate_for::<F>()?;
            clae_reference::check::allocatable::<F>("encoder parameters", config.num_parameters()?)?;
        });
        ensure_device(device)?;
        let opts = (precision.kind(), device);
        let mut t = NamedTensors::new(device, precision);
        let h = config.hidden as i64;
        let mut fan_in = config.d_in as i64;
        let mut blocks = Vec::with_capacity(config.depth);
        for l in 0..config.depth {
            let weight = t.add(
                &format!("backbone.{l}.linear.weight"),
                Role::Parameter,
                Tensor::f_zeros([h, fan_in], opts)?,
            );
            let bias = t.add(
                &format!("backbone.{l}.linear.bias"),
                Role::Parameter,
                Tensor::f_zeros([h], opts)?,
            );
            let mut branch = |name: &str, momentum: f64| -> Result<BatchNorm> {
                let p = format!("backbone.{l}.bn.{name}");
                Ok(BatchNorm {
                    weight: t.add(
                        &format!("{p}.weight"),
                        Role::Parameter,
                        Tensor::f_ones([h], opts)?,
                    ),
                    bias: t.add(
                        &format!("{p}.bias"),
                        Role::Parameter,
                        Tensor::f_zeros([h], opts)?,
                    ),
                    running_mean: t.add(
                        &format!("{p}.running_mean"),
                        Role::Buffer,
                        Tensor::f_zeros([h], opts)?,
                    ),
                    running_var: t.add(
                        &format!("{p}.running_var"),
                        Role::Buffer,
                        Tensor::f_ones([h], opts)?,
                    ),
                    momentum,
                    eps: config.bn_eps,
                })
            };
            let clean = branch("clean", config.bn_momentum_clean)?;
            let adv = branch("adv", config.bn_momentum_adv)?;
            blocks.push(Block {
                linear: Linear {
                    weight,
                    bias: Some(bias),
                },
                bn: DualBatchNorm {
                    name: format!("backbone.{l}.bn"),
                    clean,
                    adv,
                },
            });
            fan_in = h;
        }
        let d = config.d as i64;
        let mut linear = |name: &str, out: i64, inp: i64| -> Result<Linear> {
            Ok(Linear {
                weight: t.add(
                    &format!("{name}.weight"),
                    Role::Parameter,
                    Tensor::f_zeros([out, inp], opts)?,
                ),
                bias: Some(t.add(
                    &format!("{name}.bias"),
                    Role::Parameter,
                    Tensor::f_zeros([out], opts)?,
                )),
            })
        };
        let head0 = linear("head.0", h, fan_in)?;
        let head2 = linear("head.2", d, h)?;
        Ok(Mlp {
            config,
            tensors: t,
            blocks,
            head: [head0, head2],
        })
    }
}

impl Encoder for Mlp {
    fn tensors(&self) -> &NamedTensors {
        &self.tensors
    }

    fn input_shape(&self) -> Vec<i64> {
        vec![self.config.d_in as i64]
    }

    fn activations_per_image(&self) -> usize {
        self.config.hidden.max(self.config.d)
    }

    fn check_activations(&self, what: &str, x: &Tensor) -> Result<()> {
        let n = x.size().first().map_or(0, |&n| n.max(0) as usize);
        for_precision!(self.precision(), F => self.config.check_batch_size::<F>(what, n))?;
        Ok(())
    }

    fn forward_unchecked(
        &self,
        x: &Tensor,
        mode: Mode,
        track: bool,
        health: &mut Health,
    ) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for block in &self.blocks {
            let pre = block.linear.forward(&h)?;
            h = block.bn.forward(&pre, mode, track, health)?.f_relu()?;
        }
        let hidden = self.head[0].forward(&h)?.f_relu()?;
        let u = self.head[1].forward(&hidden)?;
        embed_normalize(&u, health)
    }
}
