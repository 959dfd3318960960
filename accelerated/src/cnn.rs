//! A small dual-BN convolutional encoder for small grey images (Fashion-MNIST
//! 28x28): conv-BN-ReLU blocks, global average pooling, and the MLP's
//! projection head and L2 normalisation (docs/SPEC.md §2).
//!
//! ```text
//! block k = 0..B:  conv3x3(c_{k-1} -> c_k, stride s_k, pad 1, no bias) -> DualBN2d -> ReLU
//!                  c_k = w 2^k,  s_0 = 1, s_k = 2 (k >= 1),  c_{-1} = C
//! pool:   global average -> N x c_{B-1}
//! head:   Linear(c -> c) -> ReLU -> Linear(c -> d)
//! output: z = F.normalize(u, dim=1, eps=1e-12)
//! ```
//!
//! Initialisation as PyTorch's defaults (`U(-k, k)`, `k = 1/sqrt(fan_in)`,
//! for conv weights and the head's weights and biases), drawn from one
//! [`Rng`](clae_reference::rng::Rng) seeded with `seed` in layer order; BatchNorm `γ = 1, β = 0`,
//! running mean 0, variance 1 in both branches; momenta clean 0.1, adv 0.01.

use crate::check::{for_precision, Health};
use crate::device::{ensure_device, Precision};
use crate::encoder::{Encoder, NamedTensors};
use crate::error::Result;
use crate::layers::{embed_normalize, Builder, DualBatchNorm, Linear};
use clae_reference::encoder::Mode;
use clae_reference::{check, ClaeError};
use tch::{Device, Tensor};

/// Shape and BatchNorm settings of a [`Cnn`].
///
/// ```
/// use clae_accelerated::cnn::CnnConfig;
/// let c = CnnConfig::fashion();
/// assert_eq!((c.in_channels, c.image_size, c.width, c.blocks, c.d), (1, 28, 16, 3, 128));
/// assert_eq!(c.feature_dim(), 64);
/// assert!(CnnConfig { blocks: 0, ..c }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CnnConfig {
    /// Image channels `C`.
    pub in_channels: usize,
    /// Image side (square images).
    pub image_size: usize,
    /// Channels of the first block, `w`.
    pub width: usize,
    /// Number of conv blocks `B >= 1`.
    pub blocks: usize,
    /// Embedding dimension `d`.
    pub d: usize,
    /// Momentum of the clean BatchNorm branch.
    pub bn_momentum_clean: f64,
    /// Momentum of the adv BatchNorm branch.
    pub bn_momentum_adv: f64,
    /// BatchNorm `eps`.
    pub bn_eps: f64,
}

impl CnnConfig {
    /// 28x28 grey images, `w = 16`, three blocks (28, 14, 7 pixels; 16, 32,
    /// 64 channels), `d = 128`, docs/SPEC.md's BatchNorm settings.
    pub fn fashion() -> Self {
        CnnConfig {
            in_channels: 1,
            image_size: 28,
            width: 16,
            blocks: 3,
            d: 128,
            bn_momentum_clean: 0.1,
            bn_momentum_adv: 0.01,
            bn_eps: 1e-5,
        }
    }

    /// Channels of the last block, the pooled feature size `w 2^(B-1)`
    /// (saturating; [`CnnConfig::validate`] rejects an overflow).
    pub fn feature_dim(&self) -> usize {
        let shift = self.blocks.saturating_sub(1).min(63) as u32;
        self.width.saturating_mul(1usize << shift)
    }

    /// Checks sizes and BatchNorm settings (in `f64`).
    pub fn validate(&self) -> clae_reference::Result<()> {
        self.validate_for::<f64>()
    }

    /// [`CnnConfig::validate`] in the element type `F`.
    pub fn validate_for<F: clae_reference::Real>(&self) -> clae_reference::Result<()> {
        use clae_reference::check::Domain;
        for (what, v) in [
            ("image channels C", self.in_channels),
            ("image size", self.image_size),
            ("CNN width", self.width),
            ("CNN blocks", self.blocks),
            ("embedding dimension d", self.d),
        ] {
            if v == 0 {
                return Err(ClaeError::ZeroDimension { what: what.into() });
            }
        }
        check::hyper::<F>(
            "bn_momentum_clean",
            self.bn_momentum_clean,
            Domain::ClosedUnit,
        )?;
        check::hyper::<F>("bn_momentum_adv", self.bn_momentum_adv, Domain::ClosedUnit)?;
        check::hyper::<F>("bn_eps", self.bn_eps, Domain::Positive)?;
        check::elements(
            "input image",
            &[self.in_channels, self.image_size, self.image_size],
        )?;
        self.num_parameters().map(|_| ())
    }

    /// Trainable parameters (both BatchNorm branches' affine parameters
    /// counted), with checked arithmetic.
    ///
    /// ```
    /// use clae_accelerated::cnn::CnnConfig;
    /// let c = CnnConfig { width: 2, blocks: 2, d: 3, ..CnnConfig::fashion() };
    /// // conv 1->2, BN 2 (x4), conv 2->4, BN 4 (x4), head 4x4+4, 3x4+3
    /// assert_eq!(c.num_parameters().unwrap(), 18 + 8 + 72 + 16 + 20 + 15);
    /// ```
    pub fn num_parameters(&self) -> clae_reference::Result<usize> {
        let too_large = || ClaeError::TooLarge {
            what: "CNN".into(),
            detail: format!(
                "width {}, {} blocks: the parameter count overflows",
                self.width, self.blocks
            ),
        };
        if self.blocks > 32 {
            return Err(too_large());
        }
        let mut total = 0usize;
        let mut add = |dims: &[usize]| -> clae_reference::Result<()> {
            total = total
                .checked_add(check::elements("CNN tensor", dims)?)
                .ok_or_else(too_large)?;
            Ok(())
        };
        let mut cin = self.in_channels;
        for k in 0..self.blocks {
            let cout = self.width.checked_mul(1usize << k).ok_or_else(too_large)?;
            add(&[cout, cin, 3, 3])?;
            add(&[4, cout])?;
            cin = cout;
        }
        add(&[cin, cin])?;
        add(&[cin])?;
        add(&[self.d, cin])?;
        add(&[self.d])?;
        Ok(total)
    }
}

#[derive(Debug)]
struct Block {
    weight: Tensor,
    stride: i64,
    bn: DualBatchNorm,
}

/// The dual-BN CNN encoder (see the module docs).
#[derive(Debug)]
pub struct Cnn {
    config: CnnConfig,
    tensors: NamedTensors,
    blocks: Vec<Block>,
    head: [Linear; 2],
}

impl Cnn {
    /// A freshly initialised encoder on `device` in `precision`.
    ///
    /// Errors: the config's ([`CnnConfig::validate_for`]), an unavailable
    /// device, a refused allocation, libtorch's.
    ///
    /// ```
    /// use clae_accelerated::{cnn::{Cnn, CnnConfig}, device::Precision, Encoder};
    /// let cfg = CnnConfig { width: 4, blocks: 2, d: 8, ..CnnConfig::fashion() };
    /// let cnn = Cnn::new(cfg, 0, tch::Device::Cpu, Precision::F32).unwrap();
    /// let x = tch::Tensor::zeros([3, 1, 28, 28], (tch::Kind::Float, tch::Device::Cpu));
    /// assert_eq!(cnn.embed(&x).unwrap().size(), vec![3, 8]);
    /// assert_eq!(cnn.num_parameters(), cfg.num_parameters().unwrap());
    /// ```
    pub fn new(config: CnnConfig, seed: u64, device: Device, precision: Precision) -> Result<Self> {
        for_precision!(precision, F => {
            config.validate_for::<F>()?;
            clae_reference::check::allocatable::<F>("CNN parameters", config.num_parameters()?)?;
        });
        ensure_device(device)?;
        let mut b = Builder::new(
            device,
            precision,
            seed,
            config.bn_eps,
            (config.bn_momentum_clean, config.bn_momentum_adv),
        );
        let mut blocks = Vec::with_capacity(config.blocks);
        let mut cin = config.in_channels as i64;
        for k in 0..config.blocks {
            let cout = (config.width << k) as i64;
            let name = format!("blocks.{k}");
            let weight = b.uniform(&format!("{name}.conv.weight"), &[cout, cin, 3, 3], cin * 9)?;
            let bn = b.bn(&format!("{name}.bn"), cout)?;
            blocks.push(Block {
                weight,
                stride: if k == 0 { 1 } else { 2 },
                bn,
            });
            cin = cout;
        }
        let head0 = b.linear("head.0", cin, cin)?;
        let head2 = b.linear("head.2", cin, config.d as i64)?;
        Ok(Cnn {
            config,
            tensors: b.tensors,
            blocks,
            head: [head0, head2],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CnnConfig {
        &self.config
    }
}

impl Encoder for Cnn {
    fn tensors(&self) -> &NamedTensors {
        &self.tensors
    }

    fn input_shape(&self) -> Vec<i64> {
        let s = self.config.image_size as i64;
        vec![self.config.in_channels as i64, s, s]
    }

    fn activations_per_image(&self) -> usize {
        let c = &self.config;
        c.width
            .saturating_mul(c.image_size)
            .saturating_mul(c.image_size)
            .max(c.d)
    }

    fn forward_unchecked(
        &self,
        x: &Tensor,
        mode: Mode,
        track: bool,
        health: &mut Health,
    ) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for b in &self.blocks {
            let y =
                h.f_conv2d::<Tensor>(&b.weight, None, [b.stride, b.stride], [1, 1], [1, 1], 1)?;
            h = b.bn.forward(&y, mode, track, health)?.f_relu()?;
        }
        let features = h.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?;
        let hidden = self.head[0].forward(&features)?.f_relu()?;
        let u = self.head[1].forward(&hidden)?;
        embed_normalize(&u, health)
    }
}
