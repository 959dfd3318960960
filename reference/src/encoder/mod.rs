//! The encoder `f` of SPEC 2: a dual-BatchNorm MLP with a projection head and
//! L2 normalisation.
//!
//! ```text
//! backbone: repeat L times:  Linear(in -> h) -> DualBatchNorm1d(h) -> ReLU
//! head:     Linear(h -> h) -> ReLU -> Linear(h -> d)      (in = D_in when L = 0)
//! output:   z = u / max(‖u‖₂, 1e-12)
//! ```
//!
//! The forward pass is pure: it returns the embeddings, a cache for the
//! backward pass and (in training mode) the batch statistics of every
//! BatchNorm layer. Folding those statistics into the running averages is a
//! separate, explicit call ([`Mlp::update_running_stats`]) — so the pass that
//! generates the adversarial view can simply not make it.

mod grads;

pub use grads::MlpGrads;

use crate::check;
use crate::error::{ClaeError, Result};
use crate::layers::{
    batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train, l2_normalize_backward,
    l2_normalize_forward, linear_backward, linear_forward, relu_backward, relu_forward,
    BatchNorm1d, BnCache, BnStats, DualBatchNorm1d, Linear, NORMALIZE_EPS,
};
use crate::real::Real;
use crate::rng::Rng;
use crate::state::{Role, StateDict, StateEntry};
use ndarray::{Array2, ArrayView2, ArrayViewD, ArrayViewMutD};

/// Shape and BatchNorm constants of an [`Mlp`].
///
/// ```
/// use clae_reference::encoder::MlpConfig;
/// let c = MlpConfig::new(64, 128, 2, 16);
/// assert_eq!((c.bn_momentum_clean, c.bn_momentum_adv, c.bn_eps), (0.1, 0.01, 1e-5));
/// assert!(c.validate().is_ok());
/// assert!(MlpConfig::new(64, 128, 2, 0).validate().is_err()); // d = 0
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
    /// A config with SPEC 2's BatchNorm constants.
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

    /// Checks every field: widths `>= 1`, momenta in `[0, 1]`, `eps_bn > 0`.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("D_in", self.d_in),
            ("hidden width h", self.hidden),
            ("embedding dimension d", self.d),
        ] {
            if v == 0 {
                return Err(ClaeError::ZeroDimension { what: what.into() });
            }
        }
        for (name, m) in [
            ("bn_momentum_clean", self.bn_momentum_clean),
            ("bn_momentum_adv", self.bn_momentum_adv),
        ] {
            if !(m.is_finite() && (0.0..=1.0).contains(&m)) {
                return Err(ClaeError::InvalidHyperParameter {
                    name: name.into(),
                    expected: "finite and in [0, 1]".into(),
                    value: m,
                });
            }
        }
        check::positive("bn_eps", self.bn_eps)
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
}

/// One backbone block: `Linear -> DualBatchNorm1d -> ReLU`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneLayer<F> {
    /// The linear map.
    pub linear: Linear<F>,
    /// Clean and adversarial BatchNorm.
    pub bn: DualBatchNorm1d<F>,
}

impl<F: Real> BackboneLayer<F> {
    fn bn(&self, mode: Mode) -> &BatchNorm1d<F> {
        match mode {
            Mode::Train(Branch::Adv) => &self.bn.adv,
            _ => &self.bn.clean,
        }
    }
}

/// The dual-BN MLP encoder of SPEC 2.
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

/// What a backward pass should produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Parameter gradients (`B_w` in the FLOP model).
    pub params: bool,
    /// The input gradient (`B_x`).
    pub input: bool,
}

/// Output of [`Mlp::backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct Backward<F> {
    /// Parameter gradients, if asked for.
    pub params: Option<MlpGrads<F>>,
    /// `dL/dx`, `N x D_in`, if asked for.
    pub input: Option<Array2<F>>,
}

impl<F: Real> Mlp<F> {
    /// A freshly initialised encoder: every `Linear` as PyTorch's default
    /// (see [`Linear::init`]), drawn in the order backbone 0..L, head 0, head 1
    /// from one [`Rng`] seeded with `seed`; BatchNorm `γ = 1, β = 0`,
    /// running mean 0 and variance 1 in both branches.
    ///
    /// ```
    /// use clae_reference::encoder::{Mlp, MlpConfig};
    /// let a = Mlp::<f32>::new(MlpConfig::new(6, 5, 2, 3), 42).unwrap();
    /// let b = Mlp::<f32>::new(MlpConfig::new(6, 5, 2, 3), 42).unwrap();
    /// assert_eq!(a, b);
    /// assert_eq!(a.num_parameters(), (6*5+5 + 4*5) + (5*5+5 + 4*5) + (5*5+5) + (5*3+3));
    /// ```
    pub fn new(config: MlpConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut backbone = Vec::with_capacity(config.depth);
        let mut fan_in = config.d_in;
        for _ in 0..config.depth {
            backbone.push(BackboneLayer {
                linear: Linear::init(fan_in, config.hidden, &mut rng),
                bn: DualBatchNorm1d {
                    clean: BatchNorm1d::new(config.hidden, config.bn_momentum_clean, config.bn_eps),
                    adv: BatchNorm1d::new(config.hidden, config.bn_momentum_adv, config.bn_eps),
                },
            });
            fan_in = config.hidden;
        }
        let head0 = Linear::init(fan_in, config.hidden, &mut rng);
        let head1 = Linear::init(config.hidden, config.d, &mut rng);
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

    /// Checks that every tensor has the shape the config implies and is finite.
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        let names = self.layout();
        let views = self.views();
        if views.len() != names.len() || self.backbone.len() != self.config.depth {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "encoder has {} backbone blocks, config says {}",
                    self.backbone.len(),
                    self.config.depth
                ),
            });
        }
        for ((name, _, shape), view) in names.iter().zip(views) {
            if view.shape() != shape.as_slice() {
                return Err(ClaeError::ShapeMismatch {
                    what: name.clone(),
                    expected: format!("{shape:?}"),
                    actual: format!("{:?}", view.shape()),
                });
            }
            check::finite(name, view)?;
        }
        Ok(())
    }

    /// `(name, role, shape)` of every tensor, in state-dict order:
    /// per block `linear.{weight,bias}`, `bn.clean.{weight,bias,running_mean,running_var}`,
    /// `bn.adv.{…}`; then `head.0.{weight,bias}`, `head.2.{weight,bias}`
    /// (PyTorch's `nn.Sequential` indices: `head.1` is the ReLU).
    pub fn layout(&self) -> Vec<(String, Role, Vec<usize>)> {
        let c = &self.config;
        let mut out = Vec::new();
        let mut fan_in = c.d_in;
        for l in 0..c.depth {
            out.push((
                format!("backbone.{l}.linear.weight"),
                Role::Parameter,
                vec![c.hidden, fan_in],
            ));
            out.push((
                format!("backbone.{l}.linear.bias"),
                Role::Parameter,
                vec![c.hidden],
            ));
            for branch in ["clean", "adv"] {
                out.push((
                    format!("backbone.{l}.bn.{branch}.weight"),
                    Role::Parameter,
                    vec![c.hidden],
                ));
                out.push((
                    format!("backbone.{l}.bn.{branch}.bias"),
                    Role::Parameter,
                    vec![c.hidden],
                ));
                out.push((
                    format!("backbone.{l}.bn.{branch}.running_mean"),
                    Role::Buffer,
                    vec![c.hidden],
                ));
                out.push((
                    format!("backbone.{l}.bn.{branch}.running_var"),
                    Role::Buffer,
                    vec![c.hidden],
                ));
            }
            fan_in = c.hidden;
        }
        out.push((
            "head.0.weight".into(),
            Role::Parameter,
            vec![c.hidden, fan_in],
        ));
        out.push(("head.0.bias".into(), Role::Parameter, vec![c.hidden]));
        out.push(("head.2.weight".into(), Role::Parameter, vec![c.d, c.hidden]));
        out.push(("head.2.bias".into(), Role::Parameter, vec![c.d]));
        out
    }

    /// Views of every tensor in [`Mlp::layout`] order.
    fn views(&self) -> Vec<ArrayViewD<'_, F>> {
        let mut out = Vec::new();
        for layer in &self.backbone {
            out.push(layer.linear.weight.view().into_dyn());
            out.push(layer.linear.bias.view().into_dyn());
            for bn in [&layer.bn.clean, &layer.bn.adv] {
                out.push(bn.gamma.view().into_dyn());
                out.push(bn.beta.view().into_dyn());
                out.push(bn.running_mean.view().into_dyn());
                out.push(bn.running_var.view().into_dyn());
            }
        }
        for lin in &self.head {
            out.push(lin.weight.view().into_dyn());
            out.push(lin.bias.view().into_dyn());
        }
        out
    }

    /// Mutable views of every tensor in [`Mlp::layout`] order.
    fn views_mut(&mut self) -> Vec<ArrayViewMutD<'_, F>> {
        let mut out = Vec::new();
        for layer in &mut self.backbone {
            out.push(layer.linear.weight.view_mut().into_dyn());
            out.push(layer.linear.bias.view_mut().into_dyn());
            for bn in [&mut layer.bn.clean, &mut layer.bn.adv] {
                out.push(bn.gamma.view_mut().into_dyn());
                out.push(bn.beta.view_mut().into_dyn());
                out.push(bn.running_mean.view_mut().into_dyn());
                out.push(bn.running_var.view_mut().into_dyn());
            }
        }
        for lin in &mut self.head {
            out.push(lin.weight.view_mut().into_dyn());
            out.push(lin.bias.view_mut().into_dyn());
        }
        out
    }

    /// Names of the trainable parameters, in the order of [`Mlp::parameters`],
    /// [`MlpGrads`] and the optimizer state.
    pub fn parameter_names(&self) -> Vec<String> {
        self.layout()
            .into_iter()
            .filter(|(_, role, _)| *role == Role::Parameter)
            .map(|(name, _, _)| name)
            .collect()
    }

    /// The trainable parameters, in [`Mlp::parameter_names`] order.
    pub fn parameters(&self) -> Vec<ArrayViewD<'_, F>> {
        let roles: Vec<Role> = self.layout().into_iter().map(|(_, r, _)| r).collect();
        self.views()
            .into_iter()
            .zip(roles)
            .filter(|(_, r)| *r == Role::Parameter)
            .map(|(v, _)| v)
            .collect()
    }

    /// The trainable parameters, mutably, in [`Mlp::parameter_names`] order.
    pub fn parameters_mut(&mut self) -> Vec<ArrayViewMutD<'_, F>> {
        let roles: Vec<Role> = self.layout().into_iter().map(|(_, r, _)| r).collect();
        self.views_mut()
            .into_iter()
            .zip(roles)
            .filter(|(_, r)| *r == Role::Parameter)
            .map(|(v, _)| v)
            .collect()
    }

    /// Every parameter and buffer, named, in [`Mlp::layout`] order.
    pub fn state_dict(&self) -> StateDict<F> {
        StateDict {
            entries: self
                .layout()
                .into_iter()
                .zip(self.views())
                .map(|((name, role, _), v)| StateEntry {
                    name,
                    role,
                    value: v.to_owned(),
                })
                .collect(),
        }
    }

    /// Builds an encoder from a state dict (e.g. exported by another
    /// implementation). Every tensor of [`Mlp::layout`] must be present with
    /// its shape and finite values, and nothing else.
    ///
    /// ```
    /// use clae_reference::encoder::{Mlp, MlpConfig};
    /// let a = Mlp::<f64>::new(MlpConfig::new(3, 4, 1, 2), 7).unwrap();
    /// let b = Mlp::from_state_dict(*a.config(), &a.state_dict()).unwrap();
    /// assert_eq!(a, b);
    /// ```
    pub fn from_state_dict(config: MlpConfig, state: &StateDict<F>) -> Result<Self> {
        let mut mlp = Mlp::new(config, 0)?;
        let mut rest = state.clone();
        let layout = mlp.layout();
        let mut values = Vec::with_capacity(layout.len());
        for (name, _, shape) in &layout {
            values.push(rest.take(name, shape)?);
        }
        rest.expect_empty()?;
        for (mut dst, src) in mlp.views_mut().into_iter().zip(values) {
            dst.assign(&src);
        }
        Ok(mlp)
    }

    /// Validated forward pass. `x: N x D_in` → `z: N x d` plus the cache.
    /// Training mode needs `N >= 2` (batch statistics, and SPEC 1).
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
    /// ```
    pub fn forward(&self, x: ArrayView2<'_, F>, mode: Mode) -> Result<Forward<F>> {
        self.validate()?;
        match mode {
            Mode::Train(_) => check::batch("encoder input", x, Some(self.config.d_in))?,
            Mode::Eval => {
                if x.ncols() != self.config.d_in {
                    return Err(ClaeError::ShapeMismatch {
                        what: "encoder input".into(),
                        expected: format!("N x {}", self.config.d_in),
                        actual: format!("{} x {}", x.nrows(), x.ncols()),
                    });
                }
                check::finite("encoder input", x)?;
            }
        }
        Ok(self.forward_unchecked(x, mode))
    }

    /// Forward pass on input the caller has validated.
    pub(crate) fn forward_unchecked(&self, x: ArrayView2<'_, F>, mode: Mode) -> Forward<F> {
        let eps_bn = self.config.bn_eps;
        let mut acts = Vec::with_capacity(self.backbone.len() + 1);
        let mut caches = Vec::with_capacity(self.backbone.len());
        let mut stats = Vec::new();
        acts.push(x.to_owned());
        for layer in &self.backbone {
            let input = acts.last().expect("acts starts non-empty");
            let pre = linear_forward(
                input.view(),
                layer.linear.weight.view(),
                layer.linear.bias.view(),
            );
            let bn = layer.bn(mode);
            let normed = match mode {
                Mode::Train(_) => {
                    let (y, cache, s) = batchnorm_forward_train(
                        pre.view(),
                        bn.gamma.view(),
                        bn.beta.view(),
                        eps_bn,
                    );
                    caches.push(cache);
                    stats.push(s);
                    y
                }
                Mode::Eval => {
                    let (y, cache) = batchnorm_forward_eval(
                        pre.view(),
                        bn.gamma.view(),
                        bn.beta.view(),
                        bn.running_mean.view(),
                        bn.running_var.view(),
                        eps_bn,
                    );
                    caches.push(cache);
                    y
                }
            };
            acts.push(relu_forward(normed.view()));
        }
        let last = acts.last().expect("acts starts non-empty");
        let h0 = linear_forward(
            last.view(),
            self.head[0].weight.view(),
            self.head[0].bias.view(),
        );
        let head_hidden = relu_forward(h0.view());
        let u = linear_forward(
            head_hidden.view(),
            self.head[1].weight.view(),
            self.head[1].bias.view(),
        );
        let z = l2_normalize_forward(u.view(), NORMALIZE_EPS);
        Forward {
            mode,
            acts,
            bn: caches,
            stats,
            head_hidden,
            u,
            z,
        }
    }

    /// Folds the batch statistics of a training-mode forward pass into the
    /// running statistics of the branch it went through (PyTorch's rule, see
    /// [`BatchNorm1d::update_running`]). A no-op for evaluation passes.
    ///
    /// Errors: [`ClaeError::InvalidState`] if `fwd` was not produced by an
    /// encoder of this shape (nothing is updated then), [`ClaeError::NonFinite`]
    /// if its statistics are not finite.
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
        self.check_forward(fwd)?;
        for (l, s) in fwd.stats.iter().enumerate() {
            check::finite(&format!("batch mean of block {l}"), s.mean.view())?;
            check::finite(
                &format!("batch variance of block {l}"),
                s.var_unbiased.view(),
            )?;
        }
        self.update_running_stats_unchecked(fwd);
        Ok(())
    }

    /// [`Mlp::update_running_stats`] for a pass this crate just made.
    pub(crate) fn update_running_stats_unchecked(&mut self, fwd: &Forward<F>) {
        let branch = match fwd.mode {
            Mode::Train(b) => b,
            Mode::Eval => return,
        };
        for (layer, s) in self.backbone.iter_mut().zip(&fwd.stats) {
            match branch {
                Branch::Clean => layer.bn.clean.update_running(s),
                Branch::Adv => layer.bn.adv.update_running(s),
            }
        }
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

    /// A training-mode forward pass that also updates the running statistics
    /// (what `model(x)` does in PyTorch's training mode).
    pub fn forward_train(&mut self, x: ArrayView2<'_, F>, branch: Branch) -> Result<Forward<F>> {
        let fwd = self.forward(x, Mode::Train(branch))?;
        self.update_running_stats_unchecked(&fwd);
        Ok(fwd)
    }

    /// Embeddings in evaluation mode (clean running statistics), `N x d`.
    pub fn embed(&self, x: ArrayView2<'_, F>) -> Result<Array2<F>> {
        Ok(self.forward(x, Mode::Eval)?.z)
    }

    /// Validated backward pass from `dz = dL/dz` (`N x d`) through the cached
    /// forward pass, including the BatchNorm batch-statistics path.
    ///
    /// Errors: `dz` not shaped like `fwd.z` or not finite, a cache `fwd` that
    /// a pass of this encoder did not produce (another shape of encoder),
    /// or non-finite parameters.
    pub fn backward(
        &self,
        fwd: &Forward<F>,
        dz: ArrayView2<'_, F>,
        need: Need,
    ) -> Result<Backward<F>> {
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
        Ok(self.backward_unchecked(fwd, dz, need))
    }

    /// Backward pass on validated input.
    pub(crate) fn backward_unchecked(
        &self,
        fwd: &Forward<F>,
        dz: ArrayView2<'_, F>,
        need: Need,
    ) -> Backward<F> {
        let depth = self.backbone.len();
        let mut grads = need.params.then(|| MlpGrads::empty(self));
        let du = l2_normalize_backward(fwd.u.view(), fwd.z.view(), dz, NORMALIZE_EPS);
        let g1 = linear_backward(
            fwd.head_hidden.view(),
            self.head[1].weight.view(),
            du.view(),
            true,
            need.params,
        );
        let dh = relu_backward(fwd.head_hidden.view(), g1.x.expect("asked for dx").view());
        let need_x0 = depth > 0 || need.input;
        let g0 = linear_backward(
            fwd.acts[depth].view(),
            self.head[0].weight.view(),
            dh.view(),
            need_x0,
            need.params,
        );
        if let Some(grads) = grads.as_mut() {
            grads.set_linear(grads.head_index(0), g0.weight.clone(), g0.bias.clone());
            grads.set_linear(grads.head_index(1), g1.weight, g1.bias);
        }
        let mut d_act = g0.x;
        for l in (0..depth).rev() {
            let layer = &self.backbone[l];
            let da = d_act.take().expect("needed below the head when depth > 0");
            let d_bn_out = relu_backward(fwd.acts[l + 1].view(), da.view());
            let gamma = &layer.bn(fwd.mode).gamma;
            let (d_pre, d_gamma, d_beta) =
                batchnorm_backward(d_bn_out.view(), gamma.view(), &fwd.bn[l]);
            let need_x = l > 0 || need.input;
            let gl = linear_backward(
                fwd.acts[l].view(),
                layer.linear.weight.view(),
                d_pre.view(),
                need_x,
                need.params,
            );
            if let Some(grads) = grads.as_mut() {
                let i = grads.block_index(l);
                grads.set_linear(i, gl.weight, gl.bias);
                let branch = match fwd.mode {
                    Mode::Train(Branch::Adv) => Branch::Adv,
                    _ => Branch::Clean,
                };
                grads.set_bn(l, branch, d_gamma, d_beta);
            }
            d_act = gl.x;
        }
        Backward {
            params: grads,
            input: if need.input { d_act } else { None },
        }
    }
}
