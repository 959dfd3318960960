//! The encoder of the paper's CIFAR experiments: a CIFAR-style ResNet-18
//! whose every BatchNorm2d is dual (clean / adv), with SimCLR's projection
//! head and the L2 normalisation of docs/SPEC.md §2.
//!
//! ```text
//! stem:   conv3x3(C -> w, stride 1) -> DualBN2d -> ReLU            (no max-pool)
//! layer1: 2 BasicBlocks, w  channels, stride 1
//! layer2: 2 BasicBlocks, 2w channels, stride 2
//! layer3: 2 BasicBlocks, 4w channels, stride 2
//! layer4: 2 BasicBlocks, 8w channels, stride 2
//! pool:   global average -> N x 8w
//! head:   Linear(8w -> 8w) -> ReLU -> Linear(8w -> d)
//! output: z = F.normalize(u, dim=1, eps=1e-12)
//!
//! BasicBlock(in -> out, stride s):
//!   y = ReLU(DualBN(conv3x3(x, s)));  y = DualBN(conv3x3(y, 1))
//!   shortcut = DualBN(conv1x1(x, s)) if s != 1 or in != out, else x
//!   out = ReLU(y + shortcut)
//! ```
//!
//! `w = 64` is ResNet-18 (11.2M backbone parameters); the width is a
//! parameter so that tests can run a tiny one. Convolutions have no bias
//! (they are followed by BatchNorm); the head's linear layers have biases,
//! like the MLP's head. BatchNorm keeps no `num_batches_tracked` (it only
//! matters when `momentum = None`).

use crate::check::{for_precision, Health};
use crate::device::{ensure_device, Precision};
use crate::encoder::{Encoder, NamedTensors};
use crate::error::Result;
use crate::layers::{embed_normalize, Builder, DualBatchNorm, Linear};
use clae_reference::encoder::Mode;
use clae_reference::{check, ClaeError};
use tch::{Device, Tensor};

/// Shape and BatchNorm constants of a [`ResNet18`].
///
/// ```
/// use clae_accelerated::resnet::ResNetConfig;
/// let c = ResNetConfig::cifar();
/// assert_eq!((c.in_channels, c.image_size, c.width, c.d), (3, 32, 64, 128));
/// assert_eq!(c.feature_dim(), 512);
/// assert!(ResNetConfig { width: 0, ..c }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResNetConfig {
    /// Image channels `C` (3).
    pub in_channels: usize,
    /// Image height and width (32 for CIFAR).
    pub image_size: usize,
    /// Channels of the first stage `w` (64 for ResNet-18); the stages have
    /// `w, 2w, 4w, 8w`.
    pub width: usize,
    /// Embedding dimension `d` (128).
    pub d: usize,
    /// Momentum of the clean BatchNorm branch (0.1).
    pub bn_momentum_clean: f64,
    /// Momentum of the adversarial branch (0.01).
    pub bn_momentum_adv: f64,
    /// `eps_bn` (1e-5).
    pub bn_eps: f64,
}

impl ResNetConfig {
    /// ResNet-18 for CIFAR: `3 x 32 x 32` inputs, width 64, `d = 128`,
    /// docs/SPEC.md §2's BatchNorm constants.
    pub fn cifar() -> Self {
        ResNetConfig {
            in_channels: 3,
            image_size: 32,
            width: 64,
            d: 128,
            bn_momentum_clean: 0.1,
            bn_momentum_adv: 0.01,
            bn_eps: 1e-5,
        }
    }

    /// The same with first-stage width `width` (tests use 4 or 8).
    pub fn with_width(self, width: usize) -> Self {
        ResNetConfig { width, ..self }
    }

    /// Width of the pooled features and of the head's hidden layer, `8w`.
    pub fn feature_dim(&self) -> usize {
        8 * self.width
    }

    /// Checks every field in `f64`: sizes `>= 1` and addressable (checked
    /// arithmetic), momenta in `[0, 1]`, `eps_bn > 0`.
    pub fn validate(&self) -> clae_reference::Result<()> {
        self.validate_for::<f64>()
    }

    /// [`ResNetConfig::validate`] with the BatchNorm constants checked in the
    /// element type `F` (the reference's [`check::hyper`]).
    pub fn validate_for<F: clae_reference::Real>(&self) -> clae_reference::Result<()> {
        use clae_reference::check::Domain;
        for (what, v) in [
            ("image channels C", self.in_channels),
            ("image size", self.image_size),
            ("ResNet width", self.width),
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

    /// Number of trainable scalars (both BatchNorm branches' `γ, β`
    /// included), with checked arithmetic ([`ClaeError::TooLarge`] when it
    /// cannot be addressed).
    pub fn num_parameters(&self) -> clae_reference::Result<usize> {
        let too_large = || ClaeError::TooLarge {
            what: "ResNet-18".into(),
            detail: format!("width {}: the parameter count overflows", self.width),
        };
        let w = self.width;
        let mut total = check::elements("stem convolution", &[w, self.in_channels, 3, 3])?;
        let mut add = |dims: &[usize]| -> clae_reference::Result<()> {
            total = total
                .checked_add(check::elements("ResNet-18 tensor", dims)?)
                .ok_or_else(too_large)?;
            Ok(())
        };
        add(&[4, w])?; // stem BatchNorm: γ, β of both branches
        let mut cin = w;
        for (mult, stride) in [(1usize, 1usize), (2, 2), (4, 2), (8, 2)] {
            let cout = w.checked_mul(mult).ok_or_else(too_large)?;
            for i in 0..2 {
                let s = if i == 0 { stride } else { 1 };
                add(&[cout, cin, 3, 3])?;
                add(&[cout, cout, 3, 3])?;
                add(&[8, cout])?; // two BatchNorms, both branches
                if s != 1 || cin != cout {
                    add(&[cout, cin])?; // the 1 x 1 shortcut and its BatchNorm
                    add(&[4, cout])?;
                }
                cin = cout;
            }
        }
        add(&[cin, cin])?;
        add(&[cin])?;
        add(&[self.d, cin])?;
        add(&[self.d])?;
        Ok(total)
    }
}

/// A bias-free 2-D convolution.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d::<Tensor>(
            &self.weight,
            None,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

#[derive(Debug)]
struct BasicBlock {
    conv1: Conv,
    bn1: DualBatchNorm,
    conv2: Conv,
    bn2: DualBatchNorm,
    shortcut: Option<(Conv, DualBatchNorm)>,
}

impl BasicBlock {
    fn forward(&self, x: &Tensor, mode: Mode, track: bool, health: &mut Health) -> Result<Tensor> {
        let y = self
            .bn1
            .forward(&self.conv1.forward(x)?, mode, track, health)?
            .f_relu()?;
        let y = self
            .bn2
            .forward(&self.conv2.forward(&y)?, mode, track, health)?;
        let shortcut = match &self.shortcut {
            Some((conv, bn)) => bn.forward(&conv.forward(x)?, mode, track, health)?,
            None => x.shallow_clone(),
        };
        Ok(y.f_add(&shortcut)?.f_relu()?)
    }
}

impl Builder {
    fn conv(&mut self, name: &str, cin: i64, cout: i64, k: i64, stride: i64) -> Result<Conv> {
        let weight = self.uniform(&format!("{name}.weight"), &[cout, cin, k, k], cin * k * k)?;
        Ok(Conv {
            weight,
            stride,
            padding: k / 2,
        })
    }
}

/// CIFAR ResNet-18 with dual BatchNorm2d and a projection head (see the
/// module docs), for `N x C x H x W` inputs.
///
/// ```
/// use clae_accelerated::{device::Precision, encoder::{Branch, Encoder}, resnet::{ResNet18, ResNetConfig}};
/// let config = ResNetConfig::cifar().with_width(2);
/// let mut net = ResNet18::new(config, 0, tch::Device::Cpu, Precision::F32).unwrap();
/// let x = tch::Tensor::randn([2, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
/// let z = net.forward_train(&x, Branch::Adv).unwrap();
/// assert_eq!(z.size(), vec![2, 128]);
/// assert_eq!(net.input_shape(), vec![3, 32, 32]);
/// assert_eq!(config.num_parameters().unwrap(), net.num_parameters());
/// ```
#[derive(Debug)]
pub struct ResNet18 {
    config: ResNetConfig,
    tensors: NamedTensors,
    stem: (Conv, DualBatchNorm),
    blocks: Vec<BasicBlock>,
    head: [Linear; 2],
}

impl ResNet18 {
    /// A freshly initialised network, reproducible from `seed` on every
    /// device (values drawn on the CPU by the reference's [`Rng`](clae_reference::rng::Rng)).
    pub fn new(
        config: ResNetConfig,
        seed: u64,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        for_precision!(precision, F => {
            config.validate_for::<F>()?;
            clae_reference::check::allocatable::<F>("ResNet-18 parameters", config.num_parameters()?)?;
        });
        ensure_device(device)?;
        let mut b = Builder::new(
            device,
            precision,
            seed,
            config.bn_eps,
            (config.bn_momentum_clean, config.bn_momentum_adv),
        );
        let w = config.width as i64;
        let stem_conv = b.conv("stem.conv", config.in_channels as i64, w, 3, 1)?;
        let stem_bn = b.bn("stem.bn", w)?;
        let mut blocks = Vec::with_capacity(8);
        let mut cin = w;
        for (stage, (mult, stride)) in [(1, 1), (2, 2), (4, 2), (8, 2)].into_iter().enumerate() {
            let cout = w * mult;
            for i in 0..2 {
                let s = if i == 0 { stride } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                let conv1 = b.conv(&format!("{name}.conv1"), cin, cout, 3, s)?;
                let bn1 = b.bn(&format!("{name}.bn1"), cout)?;
                let conv2 = b.conv(&format!("{name}.conv2"), cout, cout, 3, 1)?;
                let bn2 = b.bn(&format!("{name}.bn2"), cout)?;
                let shortcut = if s != 1 || cin != cout {
                    let conv = b.conv(&format!("{name}.shortcut.conv"), cin, cout, 1, s)?;
                    let bn = b.bn(&format!("{name}.shortcut.bn"), cout)?;
                    Some((conv, bn))
                } else {
                    None
                };
                blocks.push(BasicBlock {
                    conv1,
                    bn1,
                    conv2,
                    bn2,
                    shortcut,
                });
                cin = cout;
            }
        }
        let f = config.feature_dim() as i64;
        let head0 = b.linear("head.0", f, f)?;
        let head2 = b.linear("head.2", f, config.d as i64)?;
        Ok(ResNet18 {
            config,
            tensors: b.tensors,
            stem: (stem_conv, stem_bn),
            blocks,
            head: [head0, head2],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }
}

impl Encoder for ResNet18 {
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
        let (conv, bn) = &self.stem;
        let mut h = bn
            .forward(&conv.forward(x)?, mode, track, health)?
            .f_relu()?;
        for block in &self.blocks {
            h = block.forward(&h, mode, track, health)?;
        }
        let features = h.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?;
        let hidden = self.head[0].forward(&features)?.f_relu()?;
        let u = self.head[1].forward(&hidden)?;
        embed_normalize(&u, health)
    }
}
