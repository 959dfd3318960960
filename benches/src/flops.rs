//! Exact FLOP counts of the encoders, the losses and the training steps
//! (docs/SPEC.md §6), derived from the layer shapes.
//!
//! docs/SPEC.md §6 gives the *shape* of the cost model — `F` for a forward pass of one
//! view, `B_w ≈ 2F` for a backward pass that fills parameter gradients,
//! `B_x ≈ F` for a backward pass to the input only — and the ratios it
//! implies (≈ 1.83 for the lean recipe, 2.5 and 3.0 for the authors'). This
//! module counts the real thing, layer by layer:
//!
//! * every layer has three costs ([`Cost`]): its **forward** pass, its
//!   **backward-to-input** (`dL/dx` from `dL/dy`) and its **weight gradient**
//!   (`dL/dW`, `dL/db`, `dL/dγ`, `dL/dβ`);
//! * a backward pass ([`BackwardKind`]) charges the weight gradient of every
//!   layer when parameter gradients are asked for, and the backward-to-input
//!   of every layer *except the one that reads the images* unless the input
//!   gradient itself is asked for (the adversarial view needs it; a training
//!   step does not). That first-layer input gradient is why an MLP with a wide
//!   input (`D_in = 3072`) is not at the docs/SPEC.md's limit ratios;
//! * a step ([`StepKind`]) is a list of passes ([`Passes`]) — forwards,
//!   backward passes of each kind, loss evaluations — plus one optimizer
//!   update;
//! * the peers' attacks (ACL- and RoCL-style steps, `clae_reference::peers`)
//!   run in evaluation mode: their forward passes (`F_eval`) and input
//!   gradients (`B_x,eval`) meet a BatchNorm that reads running statistics,
//!   an affine map with no batch statistics ([`batchnorm_eval`]), and are
//!   counted apart from the training passes.
//!
//! ## The peer steps
//!
//! Counted from what `clae_reference::peers` and `clae_accelerated::step`
//! run, with `k` PGD steps (ACL 5, RoCL 7 by default):
//!
//! ```text
//! ACL   k (2 F_eval + 2 B_x,eval + L)          + 4 F + 4 B_w + 2 L
//! RoCL  F_eval + k (F_eval + B_x,eval + L)     + 3 F + 3 B_w + 2 L
//! ```
//!
//! ACL's attack moves both views at every step with the gradients of one
//! loss `L(f_adv(X₁), f_adv(X₂))` (one evaluation, both gradients); RoCL's
//! computes the anchors `f_clean(Q)` once, without a backward. The training
//! passes are then the clean pair and the adversarial view(s), one `B_w`
//! each. The PGD update itself (sign, step, projection, pixel clamp: about
//! seven elementwise operations per input element and view and step) is not
//! counted, like CLAE's FGSM update: next to a forward pass (`≥ 2h` FLOPs per
//! input element) it is bookkeeping. With eval-mode passes as dear as
//! training ones the idealised ratios are ACL `(4k + 12)/6` and RoCL
//! `(2k + 10)/6`: 5.33 and 4.0 at the defaults.
//!
//! ## Counting convention
//!
//! A matrix product `(m x k)(k x n)` is `2mkn` FLOPs; a convolution is
//! `2 · N · H_out · W_out · C_out · C_in · k²`; its input and weight
//! gradients cost the same. Every elementwise add, multiply, divide,
//! compare, `exp`, `ln`, `sqrt` is one FLOP. Per layer, with `M` rows (`N`,
//! or `N·H·W` for a 2-d BatchNorm) and `C` features:
//!
//! | layer | forward | backward-to-input | weight gradient |
//! |---|---|---|---|
//! | Linear `in → out` | `2M·in·out + M·out` (bias) | `2M·in·out` | `2M·in·out + M·out` |
//! | Conv2d (no bias) | `2·N·Ho·Wo·Cout·Cin·k²` | same | same |
//! | BatchNorm, training | `7MC + 6C` | `8MC + 2C` | 0 (by-products of the input gradient) |
//! | BatchNorm, eval (running statistics) | `2MC + 5C` | `MC` | — (the attacks want none) |
//! | ReLU | `MC` | `MC` | — |
//! | residual add | `MC` | `MC` (the two branches' gradients are summed) | — |
//! | global average pool | `N·C·H·W + N·C` | `N·C·H·W` | — |
//! | L2 normalise (`N x d`) | `3Nd + 2N` | `5Nd` | — |
//!
//! BatchNorm forward: mean (`MC`), centring (`MC`), squares and their sum
//! (`2MC`), `x̂` (`MC`), `γx̂ + β` (`2MC`); per feature the two variance
//! divisions, `+eps`, `sqrt`, reciprocal and the mean's division (`6C`).
//! BatchNorm backward: `dβ = Σ g` (`MC`) and `dγ = Σ g x̂` (`2MC`) — needed by
//! the batch-statistics path of `dx` even when no parameter gradient is
//! wanted, so they are charged to the backward-to-input — then
//! `dx = γ·inv_std/N · (N g − dβ − x̂ dγ)` (`5MC + 2C`).
//!
//! The losses are counted as the reference computes them (value and both
//! gradients, see [`loss_flops`]), and the optimizers per parameter
//! ([`OptimizerKind::flops_per_parameter`]). Bookkeeping that moves memory
//! without arithmetic (copies, stacking, running-statistics updates) is not
//! counted: it is exactly what the measured time shows on top of the model.
//!
//! ```
//! use clae_benches::flops::{EncoderFlops, StepKind, OptimizerKind, step_flops};
//! use clae_reference::{encoder::MlpConfig, loss::LossKind};
//! let enc = EncoderFlops::mlp(&MlpConfig::new(3072, 2048, 2, 128), 256);
//! let plain = step_flops(&enc, StepKind::Plain, LossKind::Plain, OptimizerKind::Sgd);
//! let lean = step_flops(&enc, StepKind::Lean, LossKind::Plain, OptimizerKind::Sgd);
//! let ratio = lean.total as f64 / plain.total as f64;
//! assert!(ratio > 1.83 && ratio < 1.95, "{ratio}"); // the wide first layer pushes it up
//! ```

use clae_reference::encoder::MlpConfig;
use clae_reference::loss::LossKind;
use clae_reference::peers::{AttackBn, PeerConfig, PeerMethod, PeerPgd};
use std::fmt;

/// The three costs of one layer, in FLOPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Forward pass.
    pub forward: u64,
    /// `dL/dx` from `dL/dy`.
    pub backward_input: u64,
    /// `dL/dθ` for the layer's parameters (0 for parameter-free layers).
    pub weight_grad: u64,
}

/// What a layer is, for grouping in tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// Fully connected layer with bias.
    Linear,
    /// 2-d convolution without bias.
    Conv2d,
    /// BatchNorm (1-d or 2-d) in training mode.
    BatchNorm,
    /// ReLU.
    Relu,
    /// Residual addition.
    Add,
    /// Global average pooling.
    AvgPool,
    /// Row-wise L2 normalisation.
    Normalize,
}

impl LayerKind {
    /// Short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Linear => "linear",
            LayerKind::Conv2d => "conv2d",
            LayerKind::BatchNorm => "batchnorm",
            LayerKind::Relu => "relu",
            LayerKind::Add => "add",
            LayerKind::AvgPool => "avgpool",
            LayerKind::Normalize => "normalize",
        }
    }

    /// Whether the layer's cost is a matrix product (linear, conv) rather
    /// than elementwise work.
    pub fn is_gemm(self) -> bool {
        matches!(self, LayerKind::Linear | LayerKind::Conv2d)
    }
}

/// One layer of an encoder and its costs for a batch of `N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Name in the style of a PyTorch state dict (`backbone.0.linear`, `layer2.1.conv1`).
    pub name: String,
    /// What it is.
    pub kind: LayerKind,
    /// Its three costs.
    pub cost: Cost,
    /// Whether it reads the images: its input gradient is only computed when
    /// the input gradient of the whole encoder is asked for.
    pub reads_input: bool,
    /// Number of trainable scalars (for a dual BatchNorm: one branch's `γ, β`).
    pub params: u64,
    /// Its costs in evaluation mode, where they differ (a BatchNorm reading
    /// running statistics, [`batchnorm_eval`]); `None`: the same as `cost`.
    pub eval: Option<Cost>,
}

/// Cost of `Linear(in -> out)` on `m` rows.
///
/// ```
/// use clae_benches::flops::{linear, Cost};
/// assert_eq!(linear(5, 3, 4), Cost { forward: 140, backward_input: 120, weight_grad: 140 });
/// ```
pub fn linear(m: u64, fan_in: u64, fan_out: u64) -> Cost {
    let gemm = 2 * m * fan_in * fan_out;
    Cost {
        forward: gemm + m * fan_out,
        backward_input: gemm,
        weight_grad: gemm + m * fan_out,
    }
}

/// Shape of a 2-d convolution's input and kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size `N`.
    pub n: u64,
    /// Input channels.
    pub c_in: u64,
    /// Output channels.
    pub c_out: u64,
    /// Square kernel side `k`.
    pub kernel: u64,
    /// Stride.
    pub stride: u64,
    /// Zero padding on each side.
    pub padding: u64,
    /// Input height.
    pub h: u64,
    /// Input width.
    pub w: u64,
}

impl ConvShape {
    /// Output height and width: `(H + 2p − k) / s + 1`.
    pub fn output(&self) -> (u64, u64) {
        let out = |x: u64| (x + 2 * self.padding - self.kernel) / self.stride + 1;
        (out(self.h), out(self.w))
    }

    /// Cost of the convolution (no bias): forward, input gradient and weight
    /// gradient are each `2 · N · Ho · Wo · Cout · Cin · k²`.
    ///
    /// ```
    /// use clae_benches::flops::ConvShape;
    /// let c = ConvShape { n: 2, c_in: 2, c_out: 3, kernel: 3, stride: 1, padding: 1, h: 4, w: 4 };
    /// assert_eq!(c.output(), (4, 4));
    /// assert_eq!(c.cost().forward, 2 * 2 * 16 * 3 * 2 * 9);
    /// ```
    pub fn cost(&self) -> Cost {
        let (ho, wo) = self.output();
        let macs = self.n * ho * wo * self.c_out * self.c_in * self.kernel * self.kernel;
        Cost {
            forward: 2 * macs,
            backward_input: 2 * macs,
            weight_grad: 2 * macs,
        }
    }
}

/// Cost of a training-mode BatchNorm over `m` rows of `c` features.
pub fn batchnorm(m: u64, c: u64) -> Cost {
    Cost {
        forward: 7 * m * c + 6 * c,
        backward_input: 8 * m * c + 2 * c,
        weight_grad: 0,
    }
}

/// Cost of an evaluation-mode BatchNorm (running statistics) over `m` rows
/// of `c` features, folded into one affine map `y = s ⊙ x + t` with
/// `s = γ / √(running_var + eps)`, `t = β − running_mean ⊙ s`: forward
/// `2MC + 5C`; backward-to-input `dx = s ⊙ g`, `MC` (no batch-statistics
/// path, and the attack that runs it wants no `dγ`, `dβ`).
///
/// ```
/// use clae_benches::flops::{batchnorm_eval, Cost};
/// assert_eq!(batchnorm_eval(5, 4), Cost { forward: 60, backward_input: 20, weight_grad: 0 });
/// ```
pub fn batchnorm_eval(m: u64, c: u64) -> Cost {
    Cost {
        forward: 2 * m * c + 5 * c,
        backward_input: m * c,
        weight_grad: 0,
    }
}

/// Cost of an elementwise layer with one FLOP per element each way (ReLU, residual add).
pub fn elementwise(elements: u64) -> Cost {
    Cost {
        forward: elements,
        backward_input: elements,
        weight_grad: 0,
    }
}

/// Cost of the row-wise L2 normalisation of an `n x d` matrix.
pub fn normalize(n: u64, d: u64) -> Cost {
    Cost {
        forward: 3 * n * d + 2 * n,
        backward_input: 5 * n * d,
        weight_grad: 0,
    }
}

/// Which gradients a backward pass produces (docs/SPEC.md §6's `B_w` and `B_x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackwardKind {
    /// Parameter gradients only (`B_w`): every weight gradient, every input
    /// gradient except the first layer's.
    Weights,
    /// The input gradient only (`B_x`): every input gradient, no weight gradient.
    Input,
    /// Both (the authors' adversarial backward): `B_w` plus the first layer's
    /// input gradient.
    WeightsAndInput,
}

impl BackwardKind {
    fn params(self) -> bool {
        matches!(self, BackwardKind::Weights | BackwardKind::WeightsAndInput)
    }

    fn input(self) -> bool {
        matches!(self, BackwardKind::Input | BackwardKind::WeightsAndInput)
    }
}

/// The per-layer cost model of one encoder for a batch of `N` (one view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderFlops {
    /// Human-readable description, e.g. `MLP 3072-2048x2-128`.
    pub name: String,
    /// Batch size `N`.
    pub batch: u64,
    /// Embedding dimension `d`.
    pub d: u64,
    /// The layers in forward order.
    pub layers: Vec<Layer>,
    /// Trainable scalars of the whole encoder (both BatchNorm branches).
    pub parameters: u64,
}

impl EncoderFlops {
    /// The dual-BN MLP of docs/SPEC.md §2 for a batch of `n`:
    /// `L x (Linear → BatchNorm → ReLU)`, `Linear → ReLU → Linear`, L2 normalise.
    ///
    /// ```
    /// use clae_benches::flops::EncoderFlops;
    /// use clae_reference::encoder::MlpConfig;
    /// let enc = EncoderFlops::mlp(&MlpConfig::new(3, 4, 1, 2), 5);
    /// assert_eq!(enc.layers.len(), 7);
    /// assert_eq!(enc.forward(), 654);
    /// ```
    pub fn mlp(config: &MlpConfig, n: usize) -> Self {
        let (m, h, d) = (n as u64, config.hidden as u64, config.d as u64);
        let mut layers = Vec::new();
        let mut fan_in = config.d_in as u64;
        let mut parameters = 0;
        for l in 0..config.depth {
            layers.push(Layer {
                name: format!("backbone.{l}.linear"),
                kind: LayerKind::Linear,
                cost: linear(m, fan_in, h),
                reads_input: l == 0,
                params: fan_in * h + h,
                eval: None,
            });
            layers.push(Layer {
                name: format!("backbone.{l}.bn"),
                kind: LayerKind::BatchNorm,
                cost: batchnorm(m, h),
                reads_input: false,
                params: 2 * h,
                eval: Some(batchnorm_eval(m, h)),
            });
            layers.push(Layer {
                name: format!("backbone.{l}.relu"),
                kind: LayerKind::Relu,
                cost: elementwise(m * h),
                reads_input: false,
                params: 0,
                eval: None,
            });
            parameters += fan_in * h + h + 4 * h;
            fan_in = h;
        }
        push_head(&mut layers, m, fan_in, h, d, config.depth == 0);
        parameters += fan_in * h + h + h * d + d;
        EncoderFlops {
            name: format!(
                "MLP {}-{}x{}-{}",
                config.d_in, config.hidden, config.depth, config.d
            ),
            batch: m,
            d,
            layers,
            parameters,
        }
    }

    /// The dual-BN CIFAR ResNet-18 (see [`ResNetShape`]) for a batch of `n`.
    ///
    /// ```
    /// use clae_benches::flops::{EncoderFlops, ResNetShape};
    /// let enc = EncoderFlops::resnet(&ResNetShape::cifar_resnet18(128), 1);
    /// // the well-known ≈ 0.56 GMAC of a CIFAR ResNet-18 forward pass per image
    /// let gmac = enc.gemm_forward() as f64 / 2e9;
    /// assert!((gmac - 0.556).abs() < 0.01, "{gmac}");
    /// ```
    pub fn resnet(shape: &ResNetShape, n: usize) -> Self {
        let n = n as u64;
        let mut layers = Vec::new();
        let mut parameters = 0;
        let conv = |layers: &mut Vec<Layer>, name: String, c: ConvShape, first: bool| {
            layers.push(Layer {
                name,
                kind: LayerKind::Conv2d,
                cost: c.cost(),
                reads_input: first,
                params: c.c_out * c.c_in * c.kernel * c.kernel,
                eval: None,
            });
            c.output()
        };
        let bn = |layers: &mut Vec<Layer>, name: String, c: u64, hw: (u64, u64)| {
            layers.push(Layer {
                name,
                kind: LayerKind::BatchNorm,
                cost: batchnorm(n * hw.0 * hw.1, c),
                reads_input: false,
                params: 2 * c,
                eval: Some(batchnorm_eval(n * hw.0 * hw.1, c)),
            });
        };
        let relu = |layers: &mut Vec<Layer>, name: String, c: u64, hw: (u64, u64)| {
            layers.push(Layer {
                name,
                kind: LayerKind::Relu,
                cost: elementwise(n * c * hw.0 * hw.1),
                reads_input: false,
                params: 0,
                eval: None,
            });
        };
        let conv_shape = |c_in, c_out, kernel, stride, hw: (u64, u64)| ConvShape {
            n,
            c_in,
            c_out,
            kernel,
            stride,
            padding: kernel / 2,
            h: hw.0,
            w: hw.1,
        };
        let s = shape.stem_width as u64;
        let mut hw = (shape.image as u64, shape.image as u64);
        hw = conv(
            &mut layers,
            "conv1".into(),
            conv_shape(shape.in_channels as u64, s, 3, 1, hw),
            true,
        );
        bn(&mut layers, "bn1".into(), s, hw);
        relu(&mut layers, "relu".into(), s, hw);
        parameters += shape.in_channels as u64 * s * 9 + 4 * s;
        let mut c_in = s;
        for (stage, (&width, &blocks)) in shape.widths.iter().zip(&shape.blocks).enumerate() {
            let c_out = width as u64;
            for b in 0..blocks {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let p = format!("layer{}.{b}", stage + 1);
                let hw_in = hw;
                let hw1 = conv(
                    &mut layers,
                    format!("{p}.conv1"),
                    conv_shape(c_in, c_out, 3, stride, hw_in),
                    false,
                );
                bn(&mut layers, format!("{p}.bn1"), c_out, hw1);
                relu(&mut layers, format!("{p}.relu1"), c_out, hw1);
                let hw2 = conv(
                    &mut layers,
                    format!("{p}.conv2"),
                    conv_shape(c_out, c_out, 3, 1, hw1),
                    false,
                );
                bn(&mut layers, format!("{p}.bn2"), c_out, hw2);
                parameters += c_in * c_out * 9 + c_out * c_out * 9 + 8 * c_out;
                if stride != 1 || c_in != c_out {
                    conv(
                        &mut layers,
                        format!("{p}.shortcut.conv"),
                        conv_shape(c_in, c_out, 1, stride, hw_in),
                        false,
                    );
                    bn(&mut layers, format!("{p}.shortcut.bn"), c_out, hw2);
                    parameters += c_in * c_out + 4 * c_out;
                }
                layers.push(Layer {
                    name: format!("{p}.add"),
                    kind: LayerKind::Add,
                    cost: elementwise(n * c_out * hw2.0 * hw2.1),
                    reads_input: false,
                    params: 0,
                    eval: None,
                });
                relu(&mut layers, format!("{p}.relu2"), c_out, hw2);
                hw = hw2;
                c_in = c_out;
            }
        }
        let pooled = n * c_in * hw.0 * hw.1;
        layers.push(Layer {
            name: "avgpool".into(),
            kind: LayerKind::AvgPool,
            cost: Cost {
                forward: pooled + n * c_in,
                backward_input: pooled,
                weight_grad: 0,
            },
            reads_input: false,
            params: 0,
            eval: None,
        });
        let (h, d) = (shape.head_hidden as u64, shape.d as u64);
        push_head(&mut layers, n, c_in, h, d, false);
        parameters += c_in * h + h + h * d + d;
        EncoderFlops {
            name: format!("ResNet-18 (CIFAR, {}x{})", shape.image, shape.image),
            batch: n,
            d,
            layers,
            parameters,
        }
    }

    /// `F`: FLOPs of one forward pass.
    pub fn forward(&self) -> u64 {
        self.layers.iter().map(|l| l.cost.forward).sum()
    }

    /// `F_eval`: FLOPs of one forward pass in evaluation mode (BatchNorm on
    /// running statistics, [`batchnorm_eval`]), as the peers' attacks run it.
    ///
    /// ```
    /// use clae_benches::flops::EncoderFlops;
    /// use clae_reference::encoder::MlpConfig;
    /// let enc = EncoderFlops::mlp(&MlpConfig::new(3, 4, 1, 2), 5);
    /// assert_eq!(enc.forward_eval(), 654 - 164 + 60);
    /// ```
    pub fn forward_eval(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.eval.unwrap_or(l.cost).forward)
            .sum()
    }

    /// FLOPs of the matrix products (linear, conv) in one forward pass.
    pub fn gemm_forward(&self) -> u64 {
        self.layers
            .iter()
            .filter(|l| l.kind.is_gemm())
            .map(|l| l.cost.forward)
            .sum()
    }

    /// FLOPs of one backward pass of the given kind.
    ///
    /// ```
    /// use clae_benches::flops::{BackwardKind, EncoderFlops};
    /// use clae_reference::encoder::MlpConfig;
    /// let enc = EncoderFlops::mlp(&MlpConfig::new(3, 4, 1, 2), 5);
    /// assert_eq!(enc.backward(BackwardKind::Input), 618);
    /// assert_eq!(enc.backward(BackwardKind::Weights), 908);
    /// assert_eq!(enc.backward(BackwardKind::WeightsAndInput), 908 + 120);
    /// ```
    pub fn backward(&self, kind: BackwardKind) -> u64 {
        self.backward_with(kind, false)
    }

    /// FLOPs of one backward pass of the given kind through an
    /// evaluation-mode forward pass (the peers' attacks: [`BackwardKind::Input`]).
    ///
    /// ```
    /// use clae_benches::flops::{BackwardKind, EncoderFlops};
    /// use clae_reference::encoder::MlpConfig;
    /// let enc = EncoderFlops::mlp(&MlpConfig::new(3, 4, 1, 2), 5);
    /// assert_eq!(enc.backward_eval(BackwardKind::Input), 618 - 168 + 20);
    /// ```
    pub fn backward_eval(&self, kind: BackwardKind) -> u64 {
        self.backward_with(kind, true)
    }

    fn backward_with(&self, kind: BackwardKind, eval: bool) -> u64 {
        self.layers
            .iter()
            .map(|l| {
                let cost = if eval {
                    l.eval.unwrap_or(l.cost)
                } else {
                    l.cost
                };
                let dx = if !l.reads_input || kind.input() {
                    cost.backward_input
                } else {
                    0
                };
                let dw = if kind.params() { cost.weight_grad } else { 0 };
                dx + dw
            })
            .sum()
    }

    /// The matrix-product part of [`EncoderFlops::backward`].
    pub fn gemm_backward(&self, kind: BackwardKind) -> u64 {
        let gemm_only = EncoderFlops {
            layers: self
                .layers
                .iter()
                .filter(|l| l.kind.is_gemm())
                .cloned()
                .collect(),
            ..self.clone()
        };
        gemm_only.backward(kind)
    }

    /// Totals per layer kind: `(kind, forward, backward-to-input, weight gradient)`,
    /// in the order kinds first appear.
    pub fn by_kind(&self) -> Vec<(LayerKind, Cost)> {
        let mut out: Vec<(LayerKind, Cost)> = Vec::new();
        for l in &self.layers {
            match out.iter_mut().find(|(k, _)| *k == l.kind) {
                Some((_, c)) => {
                    c.forward += l.cost.forward;
                    c.backward_input += l.cost.backward_input;
                    c.weight_grad += l.cost.weight_grad;
                }
                None => out.push((l.kind, l.cost)),
            }
        }
        out
    }
}

/// `Linear(in -> h) → ReLU → Linear(h -> d) → L2 normalise`, appended to `layers`.
fn push_head(layers: &mut Vec<Layer>, m: u64, fan_in: u64, h: u64, d: u64, reads_input: bool) {
    layers.push(Layer {
        name: "head.0".into(),
        kind: LayerKind::Linear,
        cost: linear(m, fan_in, h),
        reads_input,
        params: fan_in * h + h,
        eval: None,
    });
    layers.push(Layer {
        name: "head.1".into(),
        kind: LayerKind::Relu,
        cost: elementwise(m * h),
        reads_input: false,
        params: 0,
        eval: None,
    });
    layers.push(Layer {
        name: "head.2".into(),
        kind: LayerKind::Linear,
        cost: linear(m, h, d),
        reads_input: false,
        params: h * d + d,
        eval: None,
    });
    layers.push(Layer {
        name: "normalize".into(),
        kind: LayerKind::Normalize,
        cost: normalize(m, d),
        reads_input: false,
        params: 0,
        eval: None,
    });
}

/// Shape of a CIFAR-style ResNet with BasicBlocks: a 3x3 stride-1 stem (no
/// max-pool), four stages whose first block strides by 2 (except the first
/// stage) with a 1x1 convolution + BatchNorm shortcut where the shape
/// changes, global average pooling, and the docs/SPEC.md §2 head
/// `Linear(512 -> h) → ReLU → Linear(h -> d)` with L2 normalisation.
/// Every BatchNorm is dual (clean/adv); a pass uses one branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetShape {
    /// Image channels (3).
    pub in_channels: usize,
    /// Image side (32).
    pub image: usize,
    /// Channels of the stem convolution (64).
    pub stem_width: usize,
    /// Channels per stage (64, 128, 256, 512).
    pub widths: [usize; 4],
    /// BasicBlocks per stage (2, 2, 2, 2 for ResNet-18).
    pub blocks: [usize; 4],
    /// Hidden width of the projection head (512).
    pub head_hidden: usize,
    /// Embedding dimension `d`.
    pub d: usize,
}

impl ResNetShape {
    /// The CIFAR ResNet-18 used by SimCLR-style code on 32x32 images.
    pub fn cifar_resnet18(d: usize) -> Self {
        ResNetShape {
            in_channels: 3,
            image: 32,
            stem_width: 64,
            widths: [64, 128, 256, 512],
            blocks: [2, 2, 2, 2],
            head_hidden: 512,
            d,
        }
    }
}

/// FLOPs of one evaluation of a loss's value and both gradients on
/// `n x d` embeddings, as the reference computes them (`M = 2N` stacked rows
/// for SimCLR and UEL):
///
/// * Plain: logits `2N²d + N²`, row log-sum-exp `4N² + 2N`, softmax `2N²`,
///   `A − I` and the value `2N`, the two gradient products `4N²d`, scaling `2Nd`;
/// * SimCLR: normalising `M` rows `3Md + 2M`, similarities `2M²d + M²`,
///   log-sum-exp `4M² + M`, the softmax-minus-target matrix `G` `3M² + M`,
///   `G + Gᵀ` `M²`, the product `2M²d`, `/tau` `Md`, back through the
///   normalisation `5Md`;
/// * UEL: similarities `2M²d + M²`, log-sum-exp `4M² + M`, per off-diagonal
///   entry `exp`, `log1p`, the odds and two sums (`8` each), then the
///   derivative `5` each, the product `2M²d` and its scale `Md`.
///
/// ```
/// use clae_benches::flops::loss_flops;
/// use clae_reference::loss::LossKind;
/// assert_eq!(loss_flops(LossKind::Plain, 2, 3), 2*4*3 + 4 + 16 + 4 + 8 + 4 + 4*4*3 + 2*2*3);
/// ```
pub fn loss_flops(kind: LossKind, n: usize, d: usize) -> u64 {
    let (n, d) = (n as u64, d as u64);
    match kind {
        LossKind::Plain => {
            let logits = 2 * n * n * d + n * n;
            let lse = 4 * n * n + 2 * n;
            let softmax = 2 * n * n;
            let value_and_eye = 2 * n;
            let grads = 4 * n * n * d + 2 * n * d;
            logits + lse + softmax + value_and_eye + grads
        }
        LossKind::SimClr => {
            let m = 2 * n;
            let norm = 3 * m * d + 2 * m;
            let sim = 2 * m * m * d + m * m;
            let lse = 4 * m * m + m;
            let g = 3 * m * m + m + m * m;
            let product = 2 * m * m * d + m * d;
            let norm_back = 5 * m * d;
            norm + sim + lse + g + product + norm_back
        }
        LossKind::Uel => {
            let m = 2 * n;
            let sim = 2 * m * m * d + m * m;
            let lse = 4 * m * m + m;
            let entries = m * (m - 1);
            let per_entry = 8 * entries + 5 * entries;
            let product = 2 * m * m * d + m * d;
            sim + lse + per_entry + product
        }
    }
}

/// Which optimizer a step ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    /// SGD with momentum and weight decay (authors' Plain and UEL).
    Sgd,
    /// Adam with L2 weight decay (authors' SimCLR).
    Adam,
}

impl OptimizerKind {
    /// The authors' optimizer for a loss: Adam for SimCLR, SGD otherwise.
    pub fn for_loss(loss: LossKind) -> Self {
        match loss {
            LossKind::SimClr => OptimizerKind::Adam,
            LossKind::Plain | LossKind::Uel => OptimizerKind::Sgd,
        }
    }

    /// FLOPs per parameter and update. SGD: `g + wd·p` (2), `mu·b + g` (2),
    /// `p − lr·b` (2). Adam: `g + wd·p` (2), the `m` lerp (3), `β2 v + (1−β2) g²`
    /// (4), `√v / √(1−β2ᵗ) + eps` (3), `p − step·m / denom` (3).
    pub fn flops_per_parameter(self) -> u64 {
        match self {
            OptimizerKind::Sgd => 6,
            OptimizerKind::Adam => 15,
        }
    }
}

/// A peer method's PGD attack as the FLOP model sees it: how many steps and
/// in which BatchNorm mode (eps, eta, the random start and the clamp cost
/// no encoder pass).
///
/// ```
/// use clae_benches::flops::Attack;
/// use clae_reference::peers::{AttackBn, PeerPgd};
/// assert_eq!(Attack::of(&PeerPgd::acl()), Attack { steps: 5, bn: AttackBn::Eval });
/// assert_eq!(Attack::of(&PeerPgd::rocl()).steps, 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attack {
    /// PGD steps `k`.
    pub steps: u32,
    /// BatchNorm during the attack: eval (running statistics, the peers'
    /// `model.eval()`) or train (batch statistics).
    pub bn: AttackBn,
}

impl Attack {
    /// The attack of a [`PeerPgd`].
    pub fn of(pgd: &PeerPgd) -> Self {
        Attack {
            steps: u32::try_from(pgd.steps).unwrap_or(u32::MAX),
            bn: pgd.bn,
        }
    }
}

/// A training step, by the passes it runs (docs/SPEC.md §5 and 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// Plain contrastive step: no adversarial view.
    Plain,
    /// CLAE step, lean recipe.
    Lean,
    /// CLAE step, authors' recipe (for the Plain loss it includes the
    /// recomputation of `f_clean(P)`).
    Authors,
    /// ACL-style step (`clae_reference::peers`, [`PeerMethod::Acl`]): PGD on
    /// both views against the loss between them, then the clean and the
    /// adversarial pair.
    Acl(Attack),
    /// RoCL-style step ([`PeerMethod::Rocl`]): PGD on `P` against the clean
    /// positive `f_clean(Q)`, then the clean pair and the adversarial term.
    Rocl(Attack),
}

impl StepKind {
    /// ACL's defaults ([`PeerPgd::acl`]): PGD-5, eval-mode attack.
    pub const ACL: StepKind = StepKind::Acl(Attack {
        steps: 5,
        bn: AttackBn::Eval,
    });
    /// RoCL's defaults ([`PeerPgd::rocl`]): PGD-7, eval-mode attack.
    pub const ROCL: StepKind = StepKind::Rocl(Attack {
        steps: 7,
        bn: AttackBn::Eval,
    });

    /// All five, in report order (the peers with their default attacks).
    pub const ALL: [StepKind; 5] = [
        StepKind::Plain,
        StepKind::Lean,
        StepKind::Authors,
        StepKind::ACL,
        StepKind::ROCL,
    ];

    /// The step of a peer configuration (its method and attack).
    ///
    /// ```
    /// use clae_benches::flops::StepKind;
    /// use clae_reference::{loss::LossKind, peers::PeerConfig};
    /// assert_eq!(StepKind::of_peer(&PeerConfig::acl(LossKind::SimClr)), StepKind::ACL);
    /// assert_eq!(StepKind::of_peer(&PeerConfig::rocl(LossKind::SimClr)), StepKind::ROCL);
    /// ```
    pub fn of_peer(cfg: &PeerConfig) -> Self {
        match cfg.method {
            PeerMethod::Acl => StepKind::Acl(Attack::of(&cfg.pgd)),
            PeerMethod::Rocl { .. } => StepKind::Rocl(Attack::of(&cfg.pgd)),
        }
    }

    /// The peer configuration a peer step runs: the method's defaults with
    /// `loss` (and its default `tau`), the attack's step count and
    /// BatchNorm mode; `None` for plain and CLAE steps.
    pub fn peer_config(self, loss: LossKind) -> Option<PeerConfig> {
        let (mut cfg, attack) = match self {
            StepKind::Acl(a) => (PeerConfig::acl(loss), a),
            StepKind::Rocl(a) => (PeerConfig::rocl(loss), a),
            StepKind::Plain | StepKind::Lean | StepKind::Authors => return None,
        };
        cfg.pgd.steps = attack.steps as usize;
        cfg.pgd.bn = attack.bn;
        Some(cfg)
    }

    /// Position in [`StepKind::ALL`] (a peer step with another attack takes
    /// its method's place).
    pub fn index(self) -> usize {
        match self {
            StepKind::Plain => 0,
            StepKind::Lean => 1,
            StepKind::Authors => 2,
            StepKind::Acl(_) => 3,
            StepKind::Rocl(_) => 4,
        }
    }

    /// Short lower-case name (`plain`, `lean`, `authors`, `acl`, `rocl`).
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Plain => "plain",
            StepKind::Lean => "lean",
            StepKind::Authors => "authors",
            StepKind::Acl(_) => "acl",
            StepKind::Rocl(_) => "rocl",
        }
    }

    /// Name for tables: `plain`, `CLAE lean`, `CLAE authors'`, `ACL (PGD-5)`, `RoCL (PGD-7)`
    /// (a train-mode attack adds `, train BN`).
    pub fn label(self) -> String {
        let peer = |name: &str, a: Attack| {
            let bn = match a.bn {
                AttackBn::Eval => "",
                AttackBn::Train => ", train BN",
            };
            format!("{name} (PGD-{}{bn})", a.steps)
        };
        match self {
            StepKind::Plain => "plain".into(),
            StepKind::Lean => "CLAE lean".into(),
            StepKind::Authors => "CLAE authors'".into(),
            StepKind::Acl(a) => peer("ACL", a),
            StepKind::Rocl(a) => peer("RoCL", a),
        }
    }

    /// The passes this step runs with `loss` (the authors' Plain variant runs
    /// one forward and one backward more than their SimCLR/UEL variants).
    ///
    /// ```
    /// use clae_benches::flops::StepKind;
    /// use clae_reference::loss::LossKind;
    /// let p = StepKind::Lean.passes(LossKind::Uel);
    /// assert_eq!((p.forward, p.backward_input, p.backward_weights), (4, 1, 3));
    /// // ACL, PGD-5: 5 × (2 F_eval + 2 B_x,eval + L), then 4 F + 4 B_w + 2 L
    /// let a = StepKind::ACL.passes(LossKind::SimClr);
    /// assert_eq!((a.forward_eval, a.backward_input_eval, a.forward, a.backward_weights, a.losses), (10, 10, 4, 4, 7));
    /// // RoCL, PGD-7: F_eval (the anchors) + 7 × (F_eval + B_x,eval + L), then 3 F + 3 B_w + 2 L
    /// let r = StepKind::ROCL.passes(LossKind::SimClr);
    /// assert_eq!((r.forward_eval, r.backward_input_eval, r.forward, r.backward_weights, r.losses), (8, 7, 3, 3, 9));
    /// ```
    pub fn passes(self, loss: LossKind) -> Passes {
        let none = Passes {
            forward: 0,
            forward_eval: 0,
            backward_weights: 0,
            backward_input: 0,
            backward_input_eval: 0,
            backward_both: 0,
            losses: 0,
        };
        match (self, loss) {
            // f(P), f(Q); backward of both into the parameters.
            (StepKind::Plain, _) => Passes {
                forward: 2,
                backward_weights: 2,
                losses: 1,
                ..none
            },
            // f_adv(P) (anchors = the same pass) + B_x; then f(P), f(Q), f_adv(Q_adv) + 3 B_w.
            (StepKind::Lean, _) => Passes {
                forward: 4,
                backward_weights: 3,
                backward_input: 1,
                losses: 3,
                ..none
            },
            // f_adv(P), f_adv(X); B_w into P's pass, B_w + dx into X's; then 3F + 3B_w.
            (StepKind::Authors, LossKind::SimClr | LossKind::Uel) => Passes {
                forward: 5,
                backward_weights: 4,
                backward_both: 1,
                losses: 3,
                ..none
            },
            // ... and f_clean(P) once more for the second loss term, with its backward.
            (StepKind::Authors, LossKind::Plain) => Passes {
                forward: 6,
                backward_weights: 5,
                backward_both: 1,
                losses: 3,
                ..none
            },
            // Each of k PGD steps: f_adv(X₁), f_adv(X₂), one L(Z₁, Z₂) with
            // both gradients, a backward to the input through each view.
            // Then f(P), f(Q), f_adv(X₁), f_adv(X₂), L(P, Q) and L(X₁, X₂),
            // one B_w through each of the four passes.
            (StepKind::Acl(a), _) => Passes {
                forward: 4,
                backward_weights: 4,
                losses: a.steps + 2,
                ..none
            }
            .with_attack(a, 2 * a.steps, 2 * a.steps),
            // The anchors f(Q) once (no backward), then each of k PGD steps:
            // f_adv(X), one L(W, Z_X), a backward to the input. Then f(P),
            // f(Q), f_adv(X), L(P, Q) and L(Q, X), one B_w through each pass
            // (Q's gets both terms' gradients).
            (StepKind::Rocl(a), _) => Passes {
                forward: 3,
                backward_weights: 3,
                losses: a.steps + 2,
                ..none
            }
            .with_attack(a, a.steps + 1, a.steps),
        }
    }

    /// docs/SPEC.md §6's idealised ratio to a plain step (`B_w = 2F`,
    /// `B_x = F`, eval-mode passes as dear as training ones, loss and
    /// optimizer free): 11/6, 15/6 or 18/6; ACL `(4k + 12)/6` (32/6 at
    /// PGD-5), RoCL `(2k + 10)/6` (24/6 at PGD-7).
    pub fn spec_ratio(self, loss: LossKind) -> f64 {
        let cost = |p: Passes| {
            f64::from(p.forward + p.forward_eval)
                + 2.0 * f64::from(p.backward_weights)
                + f64::from(p.backward_input + p.backward_input_eval)
                + 2.0 * f64::from(p.backward_both)
        };
        cost(self.passes(loss)) / cost(StepKind::Plain.passes(loss))
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many passes of each kind a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passes {
    /// Encoder forward passes in a training mode (`F`).
    pub forward: u32,
    /// Encoder forward passes in evaluation mode (`F_eval`: BatchNorm on
    /// running statistics, the peers' attacks).
    pub forward_eval: u32,
    /// Backward passes into the parameters (`B_w`).
    pub backward_weights: u32,
    /// Backward passes to the input only (`B_x`).
    pub backward_input: u32,
    /// Backward passes to the input only through an evaluation-mode forward
    /// (`B_x,eval`).
    pub backward_input_eval: u32,
    /// Backward passes into the parameters *and* the input.
    pub backward_both: u32,
    /// Loss evaluations (value and both gradients).
    pub losses: u32,
}

impl Passes {
    /// Adds an attack's `forwards` and input-only `backwards`, in
    /// evaluation or training mode as the attack runs BatchNorm.
    fn with_attack(mut self, a: Attack, forwards: u32, backwards: u32) -> Self {
        match a.bn {
            AttackBn::Eval => {
                self.forward_eval += forwards;
                self.backward_input_eval += backwards;
            }
            AttackBn::Train => {
                self.forward += forwards;
                self.backward_input += backwards;
            }
        }
        self
    }
}

impl fmt::Display for Passes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![format!("{}F", self.forward)];
        if self.forward_eval > 0 {
            parts.push(format!("{}F_eval", self.forward_eval));
        }
        if self.backward_input > 0 {
            parts.push(format!("{}B_x", self.backward_input));
        }
        if self.backward_input_eval > 0 {
            parts.push(format!("{}B_x,eval", self.backward_input_eval));
        }
        if self.backward_both > 0 {
            parts.push(format!("{}(B_w+dx)", self.backward_both));
        }
        parts.push(format!("{}B_w", self.backward_weights));
        parts.push(format!("{}L", self.losses));
        f.write_str(&parts.join(" + "))
    }
}

/// The FLOP count of one training step, split by where the FLOPs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFlops {
    /// Which step.
    pub kind: StepKind,
    /// With which loss.
    pub loss: LossKind,
    /// The passes it runs.
    pub passes: Passes,
    /// Encoder forward and backward passes.
    pub encoder: u64,
    /// The matrix-product part of `encoder`.
    pub encoder_gemm: u64,
    /// Loss evaluations.
    pub loss_flops: u64,
    /// The optimizer update.
    pub optimizer: u64,
    /// Everything.
    pub total: u64,
}

/// Exact FLOPs of one step of `kind` with `loss` on encoder `enc`.
pub fn step_flops(
    enc: &EncoderFlops,
    kind: StepKind,
    loss: LossKind,
    opt: OptimizerKind,
) -> StepFlops {
    let p = kind.passes(loss);
    let f = u64::from(p.forward);
    let (fe, bxe) = (u64::from(p.forward_eval), u64::from(p.backward_input_eval));
    let encoder = f * enc.forward()
        + fe * enc.forward_eval()
        + u64::from(p.backward_weights) * enc.backward(BackwardKind::Weights)
        + u64::from(p.backward_input) * enc.backward(BackwardKind::Input)
        + bxe * enc.backward_eval(BackwardKind::Input)
        + u64::from(p.backward_both) * enc.backward(BackwardKind::WeightsAndInput);
    // the matrix products are the same in either BatchNorm mode
    let encoder_gemm = (f + fe) * enc.gemm_forward()
        + u64::from(p.backward_weights) * enc.gemm_backward(BackwardKind::Weights)
        + (u64::from(p.backward_input) + bxe) * enc.gemm_backward(BackwardKind::Input)
        + u64::from(p.backward_both) * enc.gemm_backward(BackwardKind::WeightsAndInput);
    let loss_total = u64::from(p.losses) * loss_flops(loss, enc.batch as usize, enc.d as usize);
    let optimizer = opt.flops_per_parameter() * enc.parameters;
    StepFlops {
        kind,
        loss,
        passes: p,
        encoder,
        encoder_gemm,
        loss_flops: loss_total,
        optimizer,
        total: encoder + loss_total + optimizer,
    }
}

/// The model's ratios of a configuration: `(lean / plain, authors / plain, authors / lean)`.
pub fn model_ratios(enc: &EncoderFlops, loss: LossKind, opt: OptimizerKind) -> (f64, f64, f64) {
    let t = |k| step_flops(enc, k, loss, opt).total as f64;
    let (plain, lean, authors) = (t(StepKind::Plain), t(StepKind::Lean), t(StepKind::Authors));
    (lean / plain, authors / plain, authors / lean)
}

/// The model's ratio of one step to the plain step of the same configuration.
///
/// ```
/// use clae_benches::flops::{model_ratio, EncoderFlops, OptimizerKind, StepKind};
/// use clae_reference::{encoder::MlpConfig, loss::LossKind};
/// let enc = EncoderFlops::mlp(&MlpConfig::new(3072, 2048, 2, 128), 256);
/// let acl = model_ratio(&enc, StepKind::ACL, LossKind::SimClr, OptimizerKind::Adam);
/// // above (4k + 12)/6 = 5.33: 10 input gradients through the wide first layer
/// assert!(acl > 32.0 / 6.0 && acl < 6.0, "{acl}");
/// ```
pub fn model_ratio(enc: &EncoderFlops, kind: StepKind, loss: LossKind, opt: OptimizerKind) -> f64 {
    step_flops(enc, kind, loss, opt).total as f64
        / step_flops(enc, StepKind::Plain, loss, opt).total as f64
}

/// FLOPs of one `m x k` by `k x n` matrix product: `2mkn`.
pub fn gemm(m: usize, k: usize, n: usize) -> u64 {
    2 * m as u64 * k as u64 * n as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny MLP `D_in 3, h 4, L 1, d 2` at `N = 5`, counted by hand.
    #[test]
    fn tiny_mlp_by_hand() {
        let enc = EncoderFlops::mlp(&MlpConfig::new(3, 4, 1, 2), 5);
        let got: Vec<(&str, Cost)> = enc
            .layers
            .iter()
            .map(|l| (l.name.as_str(), l.cost))
            .collect();
        let c = |forward, backward_input, weight_grad| Cost {
            forward,
            backward_input,
            weight_grad,
        };
        let want = vec![
            // 2·5·3·4 = 120 MACs×2, bias 5·4 = 20
            ("backbone.0.linear", c(140, 120, 140)),
            // 7·(5·4) + 6·4 = 164;  8·20 + 2·4 = 168
            ("backbone.0.bn", c(164, 168, 0)),
            ("backbone.0.relu", c(20, 20, 0)),
            // 2·5·4·4 = 160, bias 20
            ("head.0", c(180, 160, 180)),
            ("head.1", c(20, 20, 0)),
            // 2·5·4·2 = 80, bias 10
            ("head.2", c(90, 80, 90)),
            // 3·5·2 + 2·5 = 40;  5·5·2 = 50
            ("normalize", c(40, 50, 0)),
        ];
        assert_eq!(got, want);
        assert_eq!(enc.forward(), 140 + 164 + 20 + 180 + 20 + 90 + 40);
        // B_x: every input gradient.
        assert_eq!(
            enc.backward(BackwardKind::Input),
            120 + 168 + 20 + 160 + 20 + 80 + 50
        );
        // B_w: every weight gradient, every input gradient except the first linear's.
        assert_eq!(
            enc.backward(BackwardKind::Weights),
            (140 + 180 + 90) + (168 + 20 + 160 + 20 + 80 + 50)
        );
        assert_eq!(
            enc.backward(BackwardKind::WeightsAndInput),
            enc.backward(BackwardKind::Weights) + 120
        );
        // Parameters as the reference counts them (its doctest formula).
        assert_eq!(
            enc.parameters,
            (3 * 4 + 4 + 4 * 4) + (4 * 4 + 4) + (4 * 2 + 2)
        );
        let gemm_fwd = 140 + 180 + 90;
        assert_eq!(enc.gemm_forward(), gemm_fwd);
    }

    /// The peer steps on the same tiny MLP, pass by pass: `F = 654`,
    /// `F_eval = 654 − 164 + 60`, `B_x,eval = 618 − 168 + 20`, `B_w = 908`.
    #[test]
    fn peer_steps_by_hand() {
        let enc = EncoderFlops::mlp(&MlpConfig::new(3, 4, 1, 2), 5);
        assert_eq!(enc.forward_eval(), 550);
        assert_eq!(enc.backward_eval(BackwardKind::Input), 470);
        let l = loss_flops(LossKind::SimClr, 5, 2);
        let opt = 15 * enc.parameters;
        // ACL, PGD-5: 5 × (2·550 + 2·470) + 4·654 + 4·908; 5 + 2 losses
        let acl = step_flops(&enc, StepKind::ACL, LossKind::SimClr, OptimizerKind::Adam);
        assert_eq!(acl.encoder, 5 * (2 * 550 + 2 * 470) + 4 * 654 + 4 * 908);
        assert_eq!(acl.encoder, 16448);
        assert_eq!(acl.loss_flops, 7 * l);
        assert_eq!(acl.total, 16448 + 7 * l + opt);
        // RoCL, PGD-7: 550 + 7 × (550 + 470) + 3·654 + 3·908; 7 + 2 losses
        let rocl = step_flops(&enc, StepKind::ROCL, LossKind::SimClr, OptimizerKind::Adam);
        assert_eq!(rocl.encoder, 550 + 7 * (550 + 470) + 3 * 654 + 3 * 908);
        assert_eq!(rocl.encoder, 12376);
        assert_eq!(rocl.loss_flops, 9 * l);
        // the GEMM part: the products are the same in eval mode
        let (gf, gx, gw) = (
            enc.gemm_forward(),
            enc.gemm_backward(BackwardKind::Input),
            enc.gemm_backward(BackwardKind::Weights),
        );
        assert_eq!((gf, gx, gw), (410, 360, 410 + 240));
        assert_eq!(acl.encoder_gemm, 5 * (2 * gf + 2 * gx) + 4 * gf + 4 * gw);
        // a train-mode attack of k = 2 moves its passes to F and B_x
        let train = StepKind::Rocl(Attack {
            steps: 2,
            bn: AttackBn::Train,
        });
        let p = train.passes(LossKind::Plain);
        assert_eq!(
            (
                p.forward,
                p.forward_eval,
                p.backward_input,
                p.backward_input_eval
            ),
            (3 + 3, 0, 2, 0)
        );
        let t = step_flops(&enc, train, LossKind::Plain, OptimizerKind::Sgd);
        assert_eq!(t.encoder, 6 * 654 + 2 * 618 + 3 * 908);
        assert_eq!(p.to_string(), "6F + 2B_x + 3B_w + 4L");
        assert_eq!(
            StepKind::ACL.passes(LossKind::Plain).to_string(),
            "4F + 10F_eval + 10B_x,eval + 4B_w + 7L"
        );
    }

    /// The model's peer steps are the reference's defaults, and back.
    #[test]
    fn peer_kinds_are_the_reference_defaults() {
        use clae_reference::peers::PeerPgd;
        assert_eq!(StepKind::ACL, StepKind::Acl(Attack::of(&PeerPgd::acl())));
        assert_eq!(StepKind::ROCL, StepKind::Rocl(Attack::of(&PeerPgd::rocl())));
        for loss in LossKind::ALL {
            assert_eq!(StepKind::ACL.peer_config(loss), Some(PeerConfig::acl(loss)));
            assert_eq!(
                StepKind::ROCL.peer_config(loss),
                Some(PeerConfig::rocl(loss))
            );
            assert_eq!(StepKind::Lean.peer_config(loss), None);
        }
        for (i, k) in StepKind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        assert_eq!(StepKind::ACL.label(), "ACL (PGD-5)");
    }

    #[test]
    fn parameters_match_the_reference() {
        let cfg = MlpConfig::new(30, 20, 3, 7);
        let mlp = clae_reference::encoder::Mlp::<f32>::new(cfg, 0).unwrap();
        assert_eq!(
            EncoderFlops::mlp(&cfg, 4).parameters,
            mlp.num_parameters() as u64
        );
    }

    /// A tiny convolution counted by hand, stride 1 and 2, and a 1x1 shortcut.
    #[test]
    fn tiny_conv_by_hand() {
        let c = ConvShape {
            n: 2,
            c_in: 2,
            c_out: 3,
            kernel: 3,
            stride: 1,
            padding: 1,
            h: 4,
            w: 4,
        };
        // 2 images × 16 outputs × 3 out-channels × (2 in-channels × 9 taps) MACs
        assert_eq!(c.cost().forward, 2 * 2 * 16 * 3 * 18);
        assert_eq!(c.cost().forward, 3456);
        assert_eq!(c.cost().backward_input, 3456);
        assert_eq!(c.cost().weight_grad, 3456);
        let strided = ConvShape { stride: 2, ..c };
        assert_eq!(strided.output(), (2, 2)); // (4 + 2 − 3) / 2 + 1
        assert_eq!(strided.cost().forward, 2 * 2 * 4 * 3 * 18);
        let shortcut = ConvShape {
            kernel: 1,
            padding: 0,
            stride: 2,
            ..c
        };
        assert_eq!(shortcut.output(), (2, 2));
        assert_eq!(shortcut.cost().forward, 2 * 2 * 4 * 3 * 2);
    }

    #[test]
    fn resnet18_shape_and_parameters() {
        let shape = ResNetShape::cifar_resnet18(128);
        let enc = EncoderFlops::resnet(&shape, 2);
        let convs = enc
            .layers
            .iter()
            .filter(|l| l.kind == LayerKind::Conv2d)
            .count();
        assert_eq!(convs, 1 + 16 + 3); // stem, 8 blocks × 2, three shortcuts
                                       // Parameters of torchvision-style CIFAR ResNet-18 trunk: 11,168,832 with
                                       // single BN (γ, β); dual BN adds one more (γ, β) per BatchNorm channel.
        let trunk_single_bn: u64 = 11_168_832;
        let bn_channels: u64 = enc
            .layers
            .iter()
            .filter(|l| l.kind == LayerKind::BatchNorm)
            .map(|l| l.params / 2)
            .sum();
        let head = 512 * 512 + 512 + 512 * 128 + 128;
        assert_eq!(enc.parameters, trunk_single_bn + 2 * bn_channels + head);
        // The stem alone reads the images.
        assert_eq!(enc.layers.iter().filter(|l| l.reads_input).count(), 1);
        // Forward FLOPs scale linearly in N.
        let enc4 = EncoderFlops::resnet(&shape, 4);
        assert_eq!(enc4.gemm_forward(), 2 * enc.gemm_forward());
    }

    /// With many equal, wide layers the first layer's input gradient, the
    /// elementwise layers, the loss and the optimizer all vanish next to the
    /// matrix products, and the exact model tends to docs/SPEC.md §6's 11/6, 15/6, 18/6.
    #[test]
    fn ratios_approach_spec_in_the_large_layer_limit() {
        let enc = EncoderFlops::mlp(&MlpConfig::new(4096, 4096, 64, 128), 4096);
        for (loss, authors) in [
            (LossKind::Uel, 2.5),
            (LossKind::SimClr, 2.5),
            (LossKind::Plain, 3.0),
        ] {
            let opt = OptimizerKind::for_loss(loss);
            let (lean, auth, auth_over_lean) = model_ratios(&enc, loss, opt);
            assert!((lean - 11.0 / 6.0).abs() < 0.01, "{loss}: lean {lean}");
            assert!((auth - authors).abs() < 0.01, "{loss}: authors {auth}");
            assert!((auth_over_lean - authors * 6.0 / 11.0).abs() < 0.01);
            assert!((StepKind::Lean.spec_ratio(loss) - 11.0 / 6.0).abs() < 1e-12);
            assert!((StepKind::Authors.spec_ratio(loss) - authors).abs() < 1e-12);
        }
        // the peers: (4k + 12)/6 and (2k + 10)/6
        for loss in LossKind::ALL {
            let opt = OptimizerKind::for_loss(loss);
            let acl = model_ratio(&enc, StepKind::ACL, loss, opt);
            let rocl = model_ratio(&enc, StepKind::ROCL, loss, opt);
            assert!((acl - 32.0 / 6.0).abs() < 0.02, "{loss}: acl {acl}");
            assert!((rocl - 24.0 / 6.0).abs() < 0.02, "{loss}: rocl {rocl}");
            assert!((StepKind::ACL.spec_ratio(loss) - 32.0 / 6.0).abs() < 1e-12);
            assert!((StepKind::ROCL.spec_ratio(loss) - 24.0 / 6.0).abs() < 1e-12);
        }
        // B_w → 2F and B_x → F.
        let f = enc.forward() as f64;
        assert!((enc.backward(BackwardKind::Weights) as f64 / f - 2.0).abs() < 0.02);
        assert!((enc.backward(BackwardKind::Input) as f64 / f - 1.0).abs() < 0.01);
    }

    /// Away from the limit the exact model departs from docs/SPEC.md's figures in the
    /// direction the first layer predicts: a wide input layer makes `B_w`
    /// cheaper than `2F`, so every CLAE step is relatively dearer.
    #[test]
    fn large_mlp_model_is_above_the_limit() {
        let enc = EncoderFlops::mlp(&MlpConfig::new(3072, 2048, 2, 128), 256);
        let (lean, authors, _) = model_ratios(&enc, LossKind::Plain, OptimizerKind::Sgd);
        assert!(lean > 11.0 / 6.0 && lean < 2.0, "{lean}");
        assert!(authors > 3.0 && authors < 3.3, "{authors}");
    }

    #[test]
    fn loss_flops_grow_quadratically() {
        for kind in LossKind::ALL {
            let a = loss_flops(kind, 256, 128) as f64;
            let b = loss_flops(kind, 512, 128) as f64;
            assert!((b / a - 4.0).abs() < 0.05, "{kind}: {}", b / a);
        }
        // SimCLR and UEL work on 2N rows: about four times the Plain logits.
        assert!(loss_flops(LossKind::SimClr, 256, 128) > 2 * loss_flops(LossKind::Plain, 256, 128));
    }
}
