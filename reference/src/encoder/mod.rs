//! The encoder `f` of docs/SPEC.md §2: a dual-BatchNorm MLP with a
//! projection head and L2 normalisation.
//!
//! ```text
//! backbone: repeat L times:  Linear(in -> h) -> DualBatchNorm1d(h) -> ReLU
//! head:     Linear(h -> h) -> ReLU -> Linear(h -> d)      (in = D_in when L = 0)
//! output:   z = u / max(‖u‖₂, 1e-12)
//! ```
//!
//! The forward and backward passes come first, as plain functions over the
//! layers. The forward pass is pure: it returns the embeddings, a cache for
//! the backward pass and (in training mode) the batch statistics of every
//! BatchNorm layer. Folding those into the running averages is a separate,
//! explicit step ([`Mlp::update_running_stats`]) — so the pass that
//! generates the adversarial view can simply not make it, and a training
//! step can make it last, after everything else succeeded.
//!
//! The validated, public entry points ([`Mlp::forward`], [`Mlp::backward`],
//! …) follow; the state dict and tensor layout live in [`layout`].

mod grads;
pub mod layout;

pub use grads::{BlockGrads, BnGrads, DualBnGrads, LinearGrads, MlpGrads};

use crate::check::{self, Domain};
use crate::error::{ClaeError, Result};
use crate::layers::{
    batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train, l2_normalize_backward,
    l2_normalize_forward, linear_backward_input, linear_backward_params, linear_forward,
    relu_backward, relu_forward, BatchNorm1d, BnCache, BnStats, DualBatchNorm1d, Linear,
    NORMALIZE_EPS,
};
use crate::real::Real;
use crate::rng::Rng;
use ndarray::{Array1, Array2, ArrayView2};

// ------------------------------------------------------------ forward pass --

/// `z = f(x)` in `mode` (docs/SPEC.md §2), on input the caller validated.
/// Shapes: `x: N x D_in` → `fwd.z: N x d`.
///
/// ```text
/// a₀ = x
/// for l in 0..L:   a_{l+1} = ReLU( BN_mode( a_l W_lᵀ + b_l ) )
/// h = ReLU( a_L W_h0ᵀ + b_h0 );   u = h W_h1ᵀ + b_h1;   z = u / max(‖u‖, 1e-12)
/// ```
pub(crate) fn forward_pass<F: Real>(mlp: &Mlp<F>, x: ArrayView2<'_, F>, mode: Mode) -> Forward<F> {
    let eps_bn = mlp.config.bn_eps;
    let mut acts = vec![x.to_owned()];
    let mut bn_caches = Vec::with_capacity(mlp.backbone.len());
    let mut stats = Vec::new();
    for layer in &mlp.backbone {
        let a = acts.last().expect("acts starts with the input");
        let pre = linear_forward(
            a.view(),
            layer.linear.weight.view(),
            layer.linear.bias.view(),
        );
        let normed = match mode {
            Mode::Train(branch) => {
                let bn = layer.bn.branch(branch);
                let (y, cache, s) =
                    batchnorm_forward_train(pre.view(), bn.gamma.view(), bn.beta.view(), eps_bn);
                bn_caches.push(cache);
                stats.push(s);
                y
            }
            Mode::Eval | Mode::EvalAdv => {
                let bn = layer.bn.branch(mode.branch());
                let (y, cache) = batchnorm_forward_eval(
                    pre.view(),
                    bn.gamma.view(),
                    bn.beta.view(),
                    bn.running_mean.view(),
                    bn.running_var.view(),
                    eps_bn,
                );
                bn_caches.push(cache);
                y
            }
        };
        acts.push(relu_forward(normed.view()));
    }
    let a = acts.last().expect("acts starts with the input");
    let [h0, h1] = &mlp.head;
    let head_hidden =
        relu_forward(linear_forward(a.view(), h0.weight.view(), h0.bias.view()).view());
    let u = linear_forward(head_hidden.view(), h1.weight.view(), h1.bias.view());
    let z = l2_normalize_forward(u.view(), NORMALIZE_EPS);
    Forward {
        mode,
        acts,
        bn: bn_caches,
        stats,
        head_hidden,
        u,
        z,
    }
}

// ----------------------------------------------------------- backward pass --

/// `dL/dθ` from `dz = dL/dz` through the cached forward pass, including
/// BatchNorm's batch-statistics path (docs/SPEC.md §2). Every linear layer
/// and the BatchNorm branch the pass went through get a gradient; the other
/// branch gets `None`.
///
/// Also returns `δ = dL/d(a₀ W₀ᵀ + b₀)`, the gradient at the output of the
/// first linear layer: the input gradient is then one product away,
/// `dL/dx = δ W₀` ([`input_gradient_from`]), which the authors' recipe
/// needs and a training step does not.
///
/// ```text
/// du = (dz − ⟨dz, z⟩ z) / ‖u‖                    (l2 normalisation)
/// dW_h1 = duᵀ h,  db_h1 = Σ du,  dh = (du W_h1) ⊙ [h > 0]
/// dW_h0 = dhᵀ a_L, db_h0 = Σ dh, da_L = dh W_h0
/// for l in L−1..0:  dy = da_{l+1} ⊙ [a_{l+1} > 0];  (dpre, dγ, dβ) = BN backward(dy)
///                   dW_l = dpreᵀ a_l,  db_l = Σ dpre,  da_l = dpre W_l   (not at l = 0)
/// ```
pub(crate) fn backward_pass<F: Real>(
    mlp: &Mlp<F>,
    fwd: &Forward<F>,
    dz: ArrayView2<'_, F>,
) -> (MlpGrads<F>, Array2<F>) {
    let mut grads = MlpGrads::none(mlp);
    let depth = mlp.backbone.len();
    let [h0, h1] = &mlp.head;
    let du = l2_normalize_backward(fwd.u.view(), fwd.z.view(), dz, NORMALIZE_EPS);
    let (dw, db) = linear_backward_params(fwd.head_hidden.view(), du.view());
    grads.head[1] = LinearGrads {
        weight: Some(dw),
        bias: Some(db),
    };
    let dh = relu_backward(
        fwd.head_hidden.view(),
        linear_backward_input(h1.weight.view(), du.view()).view(),
    );
    let (dw, db) = linear_backward_params(fwd.acts[depth].view(), dh.view());
    grads.head[0] = LinearGrads {
        weight: Some(dw),
        bias: Some(db),
    };
    // δ: the gradient at the output of the linear layer being walked through
    let mut delta = dh;
    for l in (0..depth).rev() {
        let layer = &mlp.backbone[l];
        let weight_above = match mlp.backbone.get(l + 1) {
            Some(above) => &above.linear.weight,
            None => &h0.weight,
        };
        let da = linear_backward_input(weight_above.view(), delta.view());
        let dy = relu_backward(fwd.acts[l + 1].view(), da.view());
        let branch = fwd.mode.branch();
        let gamma = &layer.bn.branch(branch).gamma;
        let (dpre, dgamma, dbeta) = batchnorm_backward(dy.view(), gamma.view(), &fwd.bn[l]);
        let (dw, db) = linear_backward_params(fwd.acts[l].view(), dpre.view());
        let block = &mut grads.backbone[l];
        block.linear = LinearGrads {
            weight: Some(dw),
            bias: Some(db),
        };
        *block.bn.branch_mut(branch) = BnGrads {
            gamma: Some(dgamma),
            beta: Some(dbeta),
        };
        delta = dpre;
    }
    (grads, delta)
}

/// `dL/dx = δ W₀` from the `δ` of [`backward_pass`] (`W₀` the first linear
/// layer: `backbone[0]`, or `head[0]` when `L = 0`). Shapes: `δ: N x h` →
/// `N x D_in`.
pub(crate) fn input_gradient_from<F: Real>(mlp: &Mlp<F>, delta: ArrayView2<'_, F>) -> Array2<F> {
    let w0 = match mlp.backbone.first() {
        Some(layer) => &layer.linear.weight,
        None => &mlp.head[0].weight,
    };
    linear_backward_input(w0.view(), delta)
}

/// `dL/dx` only, no parameter gradient (the lean recipe's `B_x`): the
/// equations of [`backward_pass`] without the `dW`, `db` products.
pub(crate) fn backward_input_pass<F: Real>(
    mlp: &Mlp<F>,
    fwd: &Forward<F>,
    dz: ArrayView2<'_, F>,
) -> Array2<F> {
    let [h0, h1] = &mlp.head;
    let du = l2_normalize_backward(fwd.u.view(), fwd.z.view(), dz, NORMALIZE_EPS);
    let dh = relu_backward(
        fwd.head_hidden.view(),
        linear_backward_input(h1.weight.view(), du.view()).view(),
    );
    let mut da = linear_backward_input(h0.weight.view(), dh.view());
    for l in (0..mlp.backbone.len()).rev() {
        let layer = &mlp.backbone[l];
        let dy = relu_backward(fwd.acts[l + 1].view(), da.view());
        let gamma = &layer.bn.branch(fwd.mode.branch()).gamma;
        let (dpre, _, _) = batchnorm_backward(dy.view(), gamma.view(), &fwd.bn[l]);
        da = linear_backward_input(layer.linear.weight.view(), dpre.view());
    }
    da
}

// ------------------------------------------------------------------ types --

/// Shape and BatchNorm constants of an [`Mlp`].
///
/// ```
/// use clae_reference::encoder::MlpConfig;
/// let c = MlpConfig::new(64, 128, 2, 16);
/// assert_eq!((c.bn_momentum_clean, c.bn_momentum_adv, c.bn_eps), (0.1, 0.01, 1e-5));
/// assert!(c.validate().is_ok());
/// assert!(MlpConfig::new(64, 128, 2, 0).validate().is_err()); // d = 0
/// assert!(MlpConfig::new(usize::MAX, 128, 2, 16).validate().is_err()); // too large
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlpConfig {
    /// `D_in`, width of a flattened image.
    pub d_in: usize,
    /// `h`, width of every hidden layer.
    pub hidden: usize,
    /// `L`, number of backbone blocks (0 allowed: then the encoder has no BatchNorm).
    pub depth: usize,
    /// `d`, embedding dimension.
    pub d: usize,
    /// Momentum of the clean BatchNorm branch (PyTorch default 0.1).
    pub bn_momentum_clean: f64,
    /// Momentum of the adversarial branch (the paper's `bn_adv_momentum`, 0.01).
    pub bn_momentum_adv: f64,
    /// `eps_bn` added to the variance (1e-5).
    pub bn_eps: f64,
}

impl MlpConfig {
    /// A config with docs/SPEC.md §2's BatchNorm constants.
    pub fn new(d_in: usize, hidden: usize, depth: usize, d: usize) -> Self {
        MlpConfig {
            d_in,
            hidden,
            depth,
            d,
            bn_momentum_clean: 0.1,
            bn_momentum_adv: 0.01,
            bn_eps: 1e-5,
        }
    }

    /// Input width of the head's first linear layer (`D_in` if `L = 0`, else `h`).
    pub fn head_in(&self) -> usize {
        if self.depth == 0 {
            self.d_in
        } else {
            self.hidden
        }
    }

    /// Checks every field in `f64`: widths `>= 1`, momenta in `[0, 1]`,
    /// `eps_bn > 0`, and sizes that can be addressed (the total number of
    /// parameters, with checked arithmetic). See [`MlpConfig::validate_for`]
    /// for an element type.
    pub fn validate(&self) -> Result<()> {
        self.validate_for::<f64>()
    }

    /// [`MlpConfig::validate`] with the BatchNorm constants checked in the
    /// element type `F` (an `eps_bn` of `1e-50` is `0` in `f32`).
    pub fn validate_for<F: Real>(&self) -> Result<()> {
        for (what, v) in [
            ("D_in", self.d_in),
            ("hidden width h", self.hidden),
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
        self.num_parameters().map(|_| ())
    }

    /// Whether a pass over a batch of `n` rows can be made: its `n x D_in`
    /// input copy and `n x h` activations addressable ([`check::elements`])
    /// and what a pass keeps (the input copy, about three `n x h` arrays per
    /// block and four for the head) allocatable ([`check::allocatable`]);
    /// [`ClaeError::TooLarge`] naming `what` otherwise.
    pub fn check_batch_size<F: Real>(&self, what: &str, n: usize) -> Result<()> {
        let what = format!("activations of {what}");
        let input = check::elements(&what, &[n, self.d_in])?;
        let acts = check::elements(&what, &[n, self.hidden.max(self.d)])?;
        // the pass copies its input and keeps about three N x h arrays per
        // block and four for the head
        let kept = acts
            .saturating_mul(self.depth.saturating_mul(3).saturating_add(4))
            .saturating_add(input);
        check::allocatable::<F>(&what, kept)
    }

    /// Number of trainable scalars, with checked arithmetic
    /// ([`ClaeError::TooLarge`] when it cannot be addressed).
    ///
    /// ```text
    /// block 0:    h·D_in + 5h        (W, b, and γ, β of both BatchNorm branches)
    /// blocks ≥ 1: h·h + 5h
    /// head:       h·in + h + d·h + d
    /// ```
    pub fn num_parameters(&self) -> Result<usize> {
        let too_large = || ClaeError::TooLarge {
            what: "encoder".into(),
            detail: format!(
                "D_in = {}, h = {}, L = {}, d = {}: the parameter count overflows",
                self.d_in, self.hidden, self.depth, self.d
            ),
        };
        let (h, d) = (self.hidden, self.d);
        let sum = |parts: &[usize]| parts.iter().try_fold(0usize, |a, &b| a.checked_add(b));
        let five_h = h.checked_mul(5).ok_or_else(too_large)?;
        let first = sum(&[
            check::elements("backbone.0.linear.weight", &[h, self.d_in])?,
            five_h,
        ]);
        let later = sum(&[
            check::elements("backbone.1.linear.weight", &[h, h])?,
            five_h,
        ]);
        let head = sum(&[
            check::elements("head.0.weight", &[h, self.head_in()])?,
            h,
            check::elements("head.2.weight", &[d, h])?,
            d,
        ]);
        let blocks = match self.depth {
            0 => Some(0),
            depth => later
                .and_then(|b| b.checked_mul(depth - 1))
                .and_then(|rest| rest.checked_add(first?)),
        };
        let total = blocks
            .and_then(|b| b.checked_add(head?))
            .ok_or_else(too_large)?;
        check::elements("encoder parameters", &[total])
    }
}

/// Which BatchNorm branch a training-mode pass goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Branch {
    /// Clean views `P`, `Q` (and evaluation).
    Clean,
    /// Adversarial views: the generation pass and `f_adv(Q_adv)`.
    Adv,
}

/// How a forward pass normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Batch statistics through one branch (PyTorch `model.train()`).
    Train(Branch),
    /// The clean branch's running statistics (PyTorch `model.eval()`).
    Eval,
    /// The adversarial branch's running statistics: `model.eval()` with the
    /// adversarial BatchNorm selected, as the peers' attacks run
    /// (docs/SPEC.md §6.1).
    EvalAdv,
}

impl Mode {
    /// The branch whose parameters (and, in evaluation, running statistics) the pass reads.
    pub fn branch(self) -> Branch {
        match self {
            Mode::Train(b) => b,
            Mode::Eval => Branch::Clean,
            Mode::EvalAdv => Branch::Adv,
        }
    }
}

/// One backbone block: `Linear -> DualBatchNorm1d -> ReLU`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneLayer<F> {
    /// The linear map.
    pub linear: Linear<F>,
    /// Clean and adversarial BatchNorm.
    pub bn: DualBatchNorm1d<F>,
}

/// The dual-BN MLP encoder of docs/SPEC.md §2.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp<F> {
    config: MlpConfig,
    /// `L` backbone blocks.
    pub backbone: Vec<BackboneLayer<F>>,
    /// `head[0]: Linear(in -> h)`, `head[1]: Linear(h -> d)` (ReLU between).
    pub head: [Linear<F>; 2],
}

/// Everything a forward pass computed that its backward pass needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward<F> {
    /// The mode the pass ran in.
    pub mode: Mode,
    /// `acts[0]` is the input, `acts[l + 1]` the output of backbone block `l`.
    pub acts: Vec<Array2<F>>,
    /// BatchNorm caches, one per block.
    pub bn: Vec<BnCache<F>>,
    /// Batch statistics per block (training mode only).
    pub stats: Vec<BnStats<F>>,
    /// `ReLU(head[0](acts[L]))`, `N x h`.
    pub head_hidden: Array2<F>,
    /// `u = head[1](head_hidden)`, the pre-normalisation output, `N x d`.
    pub u: Array2<F>,
    /// `z = u / max(‖u‖, 1e-12)`, the embeddings, `N x d`.
    pub z: Array2<F>,
}

impl<F> Forward<F> {
    /// `(mode, batch statistics)`: what folding this pass into the running
    /// statistics needs.
    pub(crate) fn stats_of(&self) -> (Mode, &[BnStats<F>]) {
        (self.mode, &self.stats)
    }
}

/// The batch statistics of several passes, in order, with the mode of each:
/// what a step folds into the running statistics once it has succeeded.
pub(crate) type StatsLog<F> = Vec<(Mode, Vec<BnStats<F>>)>;

/// The running statistics of every BatchNorm, as values: what a step
/// computes before it commits anything. `[clean, adv]` per block, each
/// `(running_mean, running_var)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Running<F>(Vec<[(Array1<F>, Array1<F>); 2]>);

// -------------------------------------------------------- the public API --

impl<F: Real> Mlp<F> {
    /// A freshly initialised encoder: every `Linear` as PyTorch's default
    /// (`U(-k, k)`, `k = 1/√in`, for weight and bias), drawn in the order
    /// backbone 0..L, head 0, head 1 from one [`Rng`] seeded with `seed`;
    /// BatchNorm `γ = 1, β = 0`, running mean 0 and variance 1 in both
    /// branches.
    ///
    /// Errors: the config's ([`MlpConfig::validate_for`]), and
    /// [`ClaeError::TooLarge`] if the system refuses the allocation.
    ///
    /// ```
    /// use clae_reference::encoder::{Mlp, MlpConfig};
    /// let a = Mlp::<f32>::new(MlpConfig::new(6, 5, 2, 3), 42).unwrap();
    /// let b = Mlp::<f32>::new(MlpConfig::new(6, 5, 2, 3), 42).unwrap();
    /// assert_eq!(a, b);
    /// assert_eq!(a.num_parameters(), (6*5+5 + 4*5) + (5*5+5 + 4*5) + (5*5+5) + (5*3+3));
    /// ```
    pub fn new(config: MlpConfig, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        Self::build(config, |fan_in, fan_out| {
            Linear::init(fan_in, fan_out, &mut rng)
        })
    }

    /// An encoder of `config` with every linear weight and bias 0 and
    /// BatchNorm at PyTorch's initial state: what a state dict is loaded into.
    pub(crate) fn zeros(config: MlpConfig) -> Result<Self> {
        Self::build(config, Linear::zeros)
    }

    /// The encoder's structure, with each linear layer from `linear(in, out)`
    /// in the order backbone 0..L, head 0, head 1.
    fn build(
        config: MlpConfig,
        mut linear: impl FnMut(usize, usize) -> Result<Linear<F>>,
    ) -> Result<Self> {
        config.validate_for::<F>()?;
        check::allocatable::<F>("encoder parameters", config.num_parameters()?)?;
        let mut backbone = Vec::with_capacity(config.depth);
        let mut fan_in = config.d_in;
        for _ in 0..config.depth {
            backbone.push(BackboneLayer {
                linear: linear(fan_in, config.hidden)?,
                bn: DualBatchNorm1d {
                    clean: BatchNorm1d::new(config.hidden),
                    adv: BatchNorm1d::new(config.hidden),
                },
            });
            fan_in = config.hidden;
        }
        let head0 = linear(fan_in, config.hidden)?;
        let head1 = linear(config.hidden, config.d)?;
        Ok(Mlp {
            config,
            backbone,
            head: [head0, head1],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.len()).sum()
    }

    /// Checks the config (in `F`), that every tensor has the shape the
    /// config implies, that every parameter and buffer is finite, and that
    /// every running variance is `>= 0`.
    pub fn validate(&self) -> Result<()> {
        self.parameter_magnitudes().map(|_| ())
    }

    /// [`Mlp::validate`], returning `max |p|` of every parameter (in
    /// [`Mlp::parameter_names`] order): one pass over every tensor checks it
    /// and measures what the optimizer's overflow guard needs.
    pub(crate) fn parameter_magnitudes(&self) -> Result<Vec<f64>> {
        self.validate_shapes()?;
        let mut mags = Vec::new();
        for ((name, role, _), view) in self.layout().iter().zip(self.views()) {
            let m = check::max_abs(name, view.view())?;
            if name.ends_with("running_var") {
                check::non_negative_entries(name, view)?;
            }
            if *role == crate::state::Role::Parameter {
                mags.push(m);
            }
        }
        Ok(mags)
    }

    /// Validated forward pass with no side effects. `x: N x D_in` →
    /// `z: N x d` plus the cache. Training mode needs `N >= 2` (batch
    /// statistics, and docs/SPEC.md §1).
    ///
    /// Errors: the encoder's ([`Mlp::validate`]), the input's (shape,
    /// `N < 2` in training mode, NaN/inf), and [`ClaeError::Overflow`] when
    /// finite input is too large for `F` (a batch statistic or the
    /// embedding overflowed).
    ///
    /// ```
    /// use ndarray::Array2;
    /// use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
    /// let mlp = Mlp::<f64>::new(MlpConfig::new(3, 8, 1, 4), 0).unwrap();
    /// let x = Array2::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f64 / 7.0);
    /// let fwd = mlp.forward(x.view(), Mode::Train(Branch::Clean)).unwrap();
    /// for row in fwd.z.rows() {
    ///     assert!((row.dot(&row) - 1.0).abs() < 1e-12);
    /// }
    /// let huge = Array2::from_elem((5, 3), 1e30f32);
    /// let mlp32 = Mlp::<f32>::new(MlpConfig::new(3, 8, 1, 4), 0).unwrap();
    /// assert!(mlp32.forward(huge.view(), Mode::Train(Branch::Clean)).is_err());
    /// ```
    pub fn forward(&self, x: ArrayView2<'_, F>, mode: Mode) -> Result<Forward<F>> {
        self.validate()?;
        self.check_input("encoder input", x, mode)?;
        self.forward_checked("encoder input", x, mode)
    }

    /// A training-mode forward pass that also updates the running statistics
    /// (what `model(x)` does in PyTorch's training mode). On an error nothing
    /// is updated.
    pub fn forward_train(&mut self, x: ArrayView2<'_, F>, branch: Branch) -> Result<Forward<F>> {
        let fwd = self.forward(x, Mode::Train(branch))?;
        let running = self.running_after([fwd.stats_of()], "encoder input")?;
        self.commit_running(running);
        Ok(fwd)
    }

    /// Embeddings in evaluation mode (clean running statistics), `N x d`.
    pub fn embed(&self, x: ArrayView2<'_, F>) -> Result<Array2<F>> {
        Ok(self.forward(x, Mode::Eval)?.z)
    }

    /// Folds the batch statistics of a training-mode forward pass into the
    /// running statistics of the branch it went through (PyTorch's rule,
    /// `running = (1 − m) running + m stat`, unbiased variance). A no-op for
    /// evaluation passes.
    ///
    /// Errors (nothing is updated then): [`ClaeError::InvalidState`] if `fwd`
    /// was not produced by an encoder of this shape, [`ClaeError::NonFinite`]
    /// if its statistics are not finite, [`ClaeError::Overflow`] if an
    /// updated statistic would be.
    ///
    /// ```
    /// use ndarray::Array2;
    /// use clae_reference::encoder::{Branch, Mlp, MlpConfig, Mode};
    /// let mut mlp = Mlp::<f64>::new(MlpConfig::new(3, 4, 1, 2), 0).unwrap();
    /// let x = Array2::from_shape_fn((5, 3), |(i, j)| (i + 2 * j) as f64);
    /// let fwd = mlp.forward(x.view(), Mode::Train(Branch::Adv)).unwrap();
    /// mlp.update_running_stats(&fwd).unwrap();
    /// assert_ne!(mlp.backbone[0].bn.adv.running_mean[0], 0.0);
    /// assert_eq!(mlp.backbone[0].bn.clean.running_mean[0], 0.0);
    /// ```
    pub fn update_running_stats(&mut self, fwd: &Forward<F>) -> Result<()> {
        self.validate()?;
        self.check_forward(fwd)?;
        for (l, s) in fwd.stats.iter().enumerate() {
            check::finite(&format!("batch mean of block {l}"), s.mean.view())?;
            check::finite(
                &format!("batch variance of block {l}"),
                s.var_unbiased.view(),
            )?;
        }
        let running = self.running_after([fwd.stats_of()], "the forward cache")?;
        self.commit_running(running);
        Ok(())
    }

    /// Validated backward pass: `dL/dθ` from `dz = dL/dz` (`N x d`) through
    /// the cached forward pass, including the BatchNorm batch-statistics
    /// path. The BatchNorm branch the pass did not use gets `None`.
    ///
    /// Errors: `dz` not shaped like `fwd.z` or not finite, a cache `fwd`
    /// that a pass of this encoder did not produce, non-finite parameters,
    /// [`ClaeError::Overflow`] if a gradient is not representable.
    pub fn backward(&self, fwd: &Forward<F>, dz: ArrayView2<'_, F>) -> Result<MlpGrads<F>> {
        self.check_backward(fwd, dz)?;
        let (grads, _) = backward_pass(self, fwd, dz);
        check_grads(self, &grads, "dL/dz and the forward cache")?;
        Ok(grads)
    }

    /// [`Mlp::backward`] that also returns `dL/dx` (`N x D_in`): the full
    /// backward of the authors' recipe.
    pub fn backward_with_input(
        &self,
        fwd: &Forward<F>,
        dz: ArrayView2<'_, F>,
    ) -> Result<(MlpGrads<F>, Array2<F>)> {
        self.check_backward(fwd, dz)?;
        let (grads, delta) = backward_pass(self, fwd, dz);
        let dx = input_gradient_from(self, delta.view());
        check_grads(self, &grads, "dL/dz and the forward cache")?;
        check_finite_result("dL/dz and the forward cache", "input gradient dL/dx", &dx)?;
        Ok((grads, dx))
    }

    /// `dL/dx` only (`N x D_in`), without parameter gradients: the lean
    /// recipe's backward to the input.
    pub fn backward_input(&self, fwd: &Forward<F>, dz: ArrayView2<'_, F>) -> Result<Array2<F>> {
        self.check_backward(fwd, dz)?;
        let dx = backward_input_pass(self, fwd, dz);
        check_finite_result("dL/dz and the forward cache", "input gradient dL/dx", &dx)?;
        Ok(dx)
    }

    // ------------------------------------------------ crate-internal checks --

    /// The input of a pass in `mode`, in docs/SPEC.md §7.1's order: `N x D_in`
    /// (and `N >= 2` in training mode), small enough for the pass
    /// ([`MlpConfig::check_batch_size`]), finite.
    pub(crate) fn check_input(&self, what: &str, x: ArrayView2<'_, F>, mode: Mode) -> Result<()> {
        let c = &self.config;
        if x.ncols() != c.d_in {
            return Err(ClaeError::ShapeMismatch {
                what: what.into(),
                expected: format!("N x {}", c.d_in),
                actual: format!("{} x {}", x.nrows(), x.ncols()),
            });
        }
        if matches!(mode, Mode::Train(_)) {
            check::batch_shape(what, x, Some(c.d_in))?;
        }
        c.check_batch_size::<F>(what, x.nrows())?;
        check::finite(what, x)
    }

    /// [`forward_pass`] on checked input, then the overflow check: every
    /// batch statistic finite, every embedding finite, and no row of `z`
    /// zero unless its `u` is (`‖u‖²` overflowing makes `z = u / inf = 0`).
    /// `what` names the input in the error.
    pub(crate) fn forward_checked(
        &self,
        what: &str,
        x: ArrayView2<'_, F>,
        mode: Mode,
    ) -> Result<Forward<F>> {
        let fwd = forward_pass(self, x, mode);
        let overflow = |quantity: String| ClaeError::Overflow {
            cause: what.to_string(),
            quantity,
            precision: F::NAME.to_string(),
        };
        for (l, s) in fwd.stats.iter().enumerate() {
            if !s
                .mean
                .iter()
                .chain(s.var_unbiased.iter())
                .all(|v| v.is_finite())
            {
                return Err(overflow(format!(
                    "the batch statistics of backbone block {l}"
                )));
            }
        }
        let collapsed =
            fwd.z.rows().into_iter().zip(fwd.u.rows()).any(|(z, u)| {
                z.iter().all(|v| *v == F::zero()) && u.iter().any(|v| *v != F::zero())
            });
        if collapsed || !check::all_finite(fwd.z.view()) {
            return Err(overflow(
                "the embedding z (or an activation before it)".into(),
            ));
        }
        Ok(fwd)
    }

    fn check_backward(&self, fwd: &Forward<F>, dz: ArrayView2<'_, F>) -> Result<()> {
        if dz.dim() != fwd.z.dim() {
            return Err(ClaeError::ShapeMismatch {
                what: "dL/dz".into(),
                expected: format!("{} x {}", fwd.z.nrows(), fwd.z.ncols()),
                actual: format!("{} x {}", dz.nrows(), dz.ncols()),
            });
        }
        self.validate()?;
        self.check_forward(fwd)?;
        check::finite("dL/dz", dz)?;
        // the cache is the caller's to keep: it may have been edited
        for (l, a) in fwd.acts.iter().enumerate() {
            check::finite(&format!("forward cache acts[{l}]"), a.view())?;
        }
        for (l, b) in fwd.bn.iter().enumerate() {
            check::finite(&format!("forward cache bn[{l}].x_hat"), b.x_hat.view())?;
            check::finite(&format!("forward cache bn[{l}].inv_std"), b.inv_std.view())?;
        }
        check::finite("forward cache head_hidden", fwd.head_hidden.view())?;
        check::finite("forward cache u", fwd.u.view())?;
        check::finite("forward cache z", fwd.z.view())
    }

    /// Checks that every array of a forward cache has the shape a pass of
    /// this encoder gives it, so that a cache from another encoder is an
    /// error rather than a panic inside a matrix product.
    fn check_forward(&self, fwd: &Forward<F>) -> Result<()> {
        let c = &self.config;
        let depth = self.backbone.len();
        let n = fwd.z.nrows();
        let train = matches!(fwd.mode, Mode::Train(_));
        let rows_ok = |a: &Array2<F>, cols: usize| a.dim() == (n, cols);
        let ok = fwd.acts.len() == depth + 1
            && fwd.bn.len() == depth
            && fwd.stats.len() == if train { depth } else { 0 }
            && rows_ok(&fwd.acts[0], c.d_in)
            && fwd.acts[1..].iter().all(|a| rows_ok(a, c.hidden))
            && fwd.bn.iter().all(|b| {
                rows_ok(&b.x_hat, c.hidden) && b.inv_std.len() == c.hidden && b.batch_stats == train
            })
            && fwd
                .stats
                .iter()
                .all(|s| s.mean.len() == c.hidden && s.var_unbiased.len() == c.hidden)
            && rows_ok(&fwd.head_hidden, c.hidden)
            && rows_ok(&fwd.u, c.d)
            && rows_ok(&fwd.z, c.d);
        if ok {
            Ok(())
        } else {
            Err(ClaeError::InvalidState {
                message: "the forward cache was not produced by this encoder".into(),
            })
        }
    }

    /// The running statistics after folding in the batch statistics of
    /// `passes`, in order, computed on copies and checked finite
    /// ([`ClaeError::Overflow`] blaming `cause`). Nothing is changed.
    pub(crate) fn running_after<'a>(
        &self,
        passes: impl IntoIterator<Item = (Mode, &'a [BnStats<F>])>,
        cause: &str,
    ) -> Result<Running<F>> {
        let mut bns: Vec<DualBatchNorm1d<F>> = self.backbone.iter().map(|l| l.bn.clone()).collect();
        for (mode, stats) in passes {
            let Mode::Train(branch) = mode else { continue };
            let momentum = match branch {
                Branch::Clean => self.config.bn_momentum_clean,
                Branch::Adv => self.config.bn_momentum_adv,
            };
            for (bn, s) in bns.iter_mut().zip(stats) {
                let bn = bn.branch_mut(branch);
                let (mean, var) = bn.running_after(s, momentum);
                bn.running_mean = mean;
                bn.running_var = var;
            }
        }
        let finite = bns.iter().all(|bn| {
            [&bn.clean, &bn.adv].iter().all(|b| {
                b.running_mean
                    .iter()
                    .chain(b.running_var.iter())
                    .all(|v| v.is_finite())
            })
        });
        if !finite {
            return Err(ClaeError::Overflow {
                cause: cause.to_string(),
                quantity: "the updated BatchNorm running statistics".into(),
                precision: F::NAME.to_string(),
            });
        }
        Ok(Running(
            bns.into_iter()
                .map(|bn| {
                    [
                        (bn.clean.running_mean, bn.clean.running_var),
                        (bn.adv.running_mean, bn.adv.running_var),
                    ]
                })
                .collect(),
        ))
    }

    /// Installs running statistics computed by [`Mlp::running_after`].
    pub(crate) fn commit_running(&mut self, running: Running<F>) {
        for (layer, [clean, adv]) in self.backbone.iter_mut().zip(running.0) {
            (layer.bn.clean.running_mean, layer.bn.clean.running_var) = clean;
            (layer.bn.adv.running_mean, layer.bn.adv.running_var) = adv;
        }
    }
}

/// [`ClaeError::Overflow`] unless every entry of `a` is finite.
pub(crate) fn check_finite_result<F: Real, D: ndarray::Dimension>(
    cause: &str,
    quantity: &str,
    a: &ndarray::Array<F, D>,
) -> Result<()> {
    if check::all_finite(a.view()) {
        Ok(())
    } else {
        Err(ClaeError::Overflow {
            cause: cause.to_string(),
            quantity: quantity.to_string(),
            precision: F::NAME.to_string(),
        })
    }
}

/// `max |g|` of every present gradient, or [`ClaeError::Overflow`] (blaming
/// `cause`) at the first that is not finite: one pass over the gradients.
pub(crate) fn check_grads<F: Real>(
    mlp: &Mlp<F>,
    grads: &MlpGrads<F>,
    cause: &str,
) -> Result<Vec<Option<f64>>> {
    let overflow = |name: &str| ClaeError::Overflow {
        cause: cause.to_string(),
        quantity: format!("the gradient of {name}"),
        precision: F::NAME.to_string(),
    };
    mlp.parameter_names()
        .iter()
        .zip(grads.tensors())
        .map(|(name, g)| match g {
            None => Ok(None),
            Some(g) => check::max_abs(name, g)
                .map(Some)
                .map_err(|_| overflow(name)),
        })
        .collect()
}
