//! What the adversarial pass, the losses' callers and the training steps need
//! from an encoder `f`: the [`Encoder`] trait, implemented by the dual-BN
//! [`Mlp`](crate::mlp::Mlp) and [`ResNet18`](crate::resnet::ResNet18), and
//! the ordered list of named tensors ([`NamedTensors`]) that both keep,
//! PyTorch `state_dict` style.

use crate::check::{self, Health};
use crate::convert::{array_from_tensor, tensor_from_array};
use crate::device::{Precision, TchReal};
use crate::error::{Error, Result};
use clae_reference::state::{Role, StateDict, StateEntry};
use clae_reference::ClaeError;
use tch::nn::VarStore;
use tch::{Device, Tensor};

pub use clae_reference::encoder::{Branch, Mode};

/// One named tensor of an encoder.
#[derive(Debug)]
pub struct NamedTensor {
    /// Dotted name, e.g. `backbone.0.bn.adv.running_var`.
    pub name: String,
    /// Parameter (trained) or buffer (running statistics).
    pub role: Role,
    /// The tensor (a shallow handle: the layers share its storage).
    pub tensor: Tensor,
}

/// Every parameter and buffer of an encoder, in state-dict order, also
/// registered in a [`VarStore`] (parameters as trainable variables) so that
/// tch's own optimizers can drive them.
#[derive(Debug)]
pub struct NamedTensors {
    vs: VarStore,
    entries: Vec<NamedTensor>,
    precision: Precision,
}

impl NamedTensors {
    pub(crate) fn new(device: Device, precision: Precision) -> Self {
        NamedTensors {
            vs: VarStore::new(device),
            entries: Vec::new(),
            precision,
        }
    }

    /// Registers `value` (already on the device, in the precision) under the
    /// dotted `name`; returns the shared handle the layers keep.
    pub(crate) fn add(&mut self, name: &str, role: Role, value: Tensor) -> Tensor {
        let mut parts: Vec<&str> = name.split('.').collect();
        let leaf = parts.pop().unwrap_or(name);
        let mut path = self.vs.root();
        for part in parts {
            path = path / part;
        }
        let handle = path.add(leaf, value, role == Role::Parameter);
        self.entries.push(NamedTensor {
            name: name.to_string(),
            role,
            tensor: handle.shallow_clone(),
        });
        handle
    }

    /// The tensors in state-dict order.
    pub fn entries(&self) -> &[NamedTensor] {
        &self.entries
    }

    /// The var store holding the same tensors (for `tch::nn` optimizers).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Device of every tensor.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Precision of every tensor.
    pub fn precision(&self) -> Precision {
        self.precision
    }
}

/// A dual-BN encoder `f` (docs/SPEC.md §2), ending in the L2-normalised embedding.
///
/// Implementors provide the tensors, the per-image input shape and the
/// unchecked forward pass; everything else — validation, state-dict export
/// and import, parameter lists — is provided here, once for both encoders.
///
/// ```
/// use clae_accelerated::{encoder::{Branch, Encoder, Mode}, mlp::Mlp};
/// use clae_accelerated::device::Precision;
/// use clae_reference::encoder::MlpConfig;
/// let mut mlp = Mlp::new(MlpConfig::new(4, 8, 1, 3), 0, tch::Device::Cpu, Precision::F64).unwrap();
/// let x = tch::Tensor::from_slice(&[0.1f64, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]).reshape([2, 4]);
/// let z = mlp.forward_train(&x, Branch::Clean).unwrap();   // updates clean running stats
/// assert_eq!(z.size(), vec![2, 3]);
/// let sd = mlp.state_dict::<f64>().unwrap();
/// assert_eq!(sd.get("backbone.0.bn.clean.running_mean").unwrap().shape(), &[8]);
/// assert!(mlp.forward(&x.reshape([8, 1]), Mode::Eval).is_err());    // wrong width
/// ```
pub trait Encoder {
    /// All parameters and buffers.
    fn tensors(&self) -> &NamedTensors;

    /// Shape of one image: `[D_in]` (MLP) or `[C, H, W]` (ResNet).
    fn input_shape(&self) -> Vec<i64>;

    /// `z = f(x)`, `N x d`, on input the caller validated, in `mode`. In
    /// training mode `track` folds the batch statistics into the running
    /// statistics of the branch (what `model(x)` does in PyTorch); without it
    /// nothing is updated. Ignored in evaluation mode. Every BatchNorm and the
    /// output normalisation push their representability flags into
    /// `health`; the caller checks them (and, if they fail, undoes what
    /// `track` changed).
    fn forward_unchecked(
        &self,
        x: &Tensor,
        mode: Mode,
        track: bool,
        health: &mut Health,
    ) -> Result<Tensor>;

    /// The number of activations one image produces in the widest layer
    /// (`max(h, d)` for the MLP, `w · H · W` for the ResNet's first stage):
    /// a batch whose activations cannot be addressed is rejected before the
    /// pass.
    fn activations_per_image(&self) -> usize;

    /// Device of the encoder's tensors.
    fn device(&self) -> Device {
        self.tensors().device()
    }

    /// Precision of the encoder's tensors.
    fn precision(&self) -> Precision {
        self.tensors().precision()
    }

    /// Every parameter and buffer is finite (docs/SPEC.md §7).
    fn validate(&self) -> Result<()> {
        let named: Vec<(&str, &Tensor)> = self
            .tensors()
            .entries()
            .iter()
            .map(|e| (e.name.as_str(), &e.tensor))
            .collect();
        check::all_finite(&named)?;
        self.validate_running_var()
    }

    /// Every running variance is `>= 0` ([`ClaeError::InvalidState`] at the
    /// first negative entry, as the reference).
    fn validate_running_var(&self) -> Result<()> {
        for e in self
            .tensors()
            .entries()
            .iter()
            .filter(|e| e.name.ends_with("running_var"))
        {
            if e.tensor.numel() > 0 && e.tensor.f_min()?.f_double_value(&[])? < 0.0 {
                let a = crate::convert::array_from_tensor::<f64>(&e.tensor)?;
                clae_reference::check::non_negative_entries(&e.name, a.view())?;
            }
        }
        Ok(())
    }

    /// The activations of a pass over the batch `x` can be addressed and
    /// allocated (the reference's rule, [`clae_reference::check::elements`]
    /// and [`clae_reference::check::allocatable`]); the MLP applies exactly
    /// [`clae_reference::encoder::MlpConfig::check_batch_size`].
    fn check_activations(&self, what: &str, x: &Tensor) -> Result<()> {
        if let Some(&n) = x.size().first() {
            let what = format!("activations of {what}");
            let acts = clae_reference::check::elements(
                &what,
                &[n.max(0) as usize, self.activations_per_image()],
            )?;
            check::for_precision!(self.precision(), F => clae_reference::check::allocatable::<F>(&what, acts))?;
        }
        Ok(())
    }

    /// The small tensors — BatchNorm affine parameters and running
    /// statistics, which a pass may not read (the other branch, or running
    /// statistics in training mode) — as one "every entry finite" check in
    /// `health`. The large ones (weights) are read by every pass, so a
    /// non-finite entry there shows in its loss.
    fn push_small_tensors(&self, health: &mut Health) -> Result<()> {
        let small: Vec<Tensor> = self
            .tensors()
            .entries()
            .iter()
            .filter(|e| e.role == Role::Buffer || e.name.contains(".bn"))
            .map(|e| e.tensor.f_detach()?.f_reshape([-1]))
            .collect::<std::result::Result<_, _>>()?;
        if !small.is_empty() {
            health.blame("the encoder");
            health.push_small_finite(
                "BatchNorm parameters and running statistics",
                &Tensor::f_cat(&small, 0)?,
            )?;
        }
        let vars: Vec<Tensor> = self
            .tensors()
            .entries()
            .iter()
            .filter(|e| e.name.ends_with("running_var"))
            .map(|e| e.tensor.f_detach()?.f_reshape([-1]))
            .collect::<std::result::Result<_, _>>()?;
        if !vars.is_empty() {
            // ">= 0" as "> 0" of the variances plus one
            health.push_small_positive(
                "the running variances",
                &Tensor::f_cat(&vars, 0)?.f_add_scalar(1.0)?,
            )?;
        }
        Ok(())
    }

    /// Every buffer (the BatchNorm running statistics) is finite.
    fn validate_buffers(&self) -> Result<()> {
        let named: Vec<(&str, &Tensor)> = self
            .tensors()
            .entries()
            .iter()
            .filter(|e| e.role == Role::Buffer)
            .map(|e| (e.name.as_str(), &e.tensor))
            .collect();
        check::all_finite(&named)?;
        self.validate_running_var()
    }

    /// `x` as an input batch: moved to the encoder's device and precision
    /// (a no-op when it is there already), shape and values checked. Training
    /// mode needs `N >= 2`.
    fn prepare_input(&self, what: &str, x: &Tensor, mode: Mode) -> Result<Tensor> {
        // docs/SPEC.md §7.1's order: shape (and N >= 2 in training mode),
        // size, values
        let x = crate::convert::placed(x, self.device(), self.precision())?;
        let shape = self.input_shape();
        match mode {
            Mode::Train(_) => check::batch_shape_only(what, &x, Some(&shape))?,
            Mode::Eval | Mode::EvalAdv => {
                let size = x.size();
                if size.len() != shape.len() + 1 || size[1..] != shape[..] {
                    return Err(ClaeError::ShapeMismatch {
                        what: what.to_string(),
                        expected: format!("N x {}", check::shape_string(&shape)),
                        actual: check::shape_string(&size),
                    }
                    .into());
                }
            }
        }
        self.check_activations(what, &x)?;
        check::finite(what, &x)?;
        Ok(x)
    }

    /// Validated forward pass with no side effects (training mode uses batch
    /// statistics but does not update running statistics). The result is
    /// part of the autograd graph of the parameters.
    ///
    /// Errors: the encoder's and the input's (docs/SPEC.md §7), and
    /// [`ClaeError::Overflow`] when finite input is too large for the
    /// precision (a batch statistic or the embedding overflowed).
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.validate()?;
        let x = self.prepare_input("encoder input", x, mode)?;
        let mut health = Health::new(self.precision());
        health.blame("encoder input");
        let z = self.forward_unchecked(&x, mode, false, &mut health)?;
        health.check()?;
        Ok(z)
    }

    /// Validated training-mode forward that also updates the branch's
    /// running statistics (PyTorch's `model.train(); model(x)`). On an error
    /// the running statistics are as they were.
    fn forward_train(&mut self, x: &Tensor, branch: Branch) -> Result<Tensor> {
        self.validate()?;
        let mode = Mode::Train(branch);
        let x = self.prepare_input("encoder input", x, mode)?;
        let saved = BufferSnapshot::take(self)?;
        let mut health = Health::new(self.precision());
        health.blame("encoder input");
        let z = self
            .forward_unchecked(&x, mode, true, &mut health)
            .and_then(|z| {
                saved.push_running_flag(self, &mut health)?;
                health.check()?;
                Ok(z)
            });
        saved.restore_on_error(self, z)
    }

    /// Embeddings in evaluation mode (clean running statistics), without
    /// autograd, `N x d`.
    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.forward(x, Mode::Eval))
    }

    /// Names of the trainable parameters, in state-dict order (the order of
    /// [`Encoder::parameters`], of gradients and of optimizer state).
    fn parameter_names(&self) -> Vec<String> {
        self.tensors()
            .entries()
            .iter()
            .filter(|e| e.role == Role::Parameter)
            .map(|e| e.name.clone())
            .collect()
    }

    /// The trainable parameters (shared handles), in state-dict order.
    fn parameters(&self) -> Vec<Tensor> {
        self.tensors()
            .entries()
            .iter()
            .filter(|e| e.role == Role::Parameter)
            .map(|e| e.tensor.shallow_clone())
            .collect()
    }

    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.numel()).sum()
    }

    /// `(name, role, shape)` of every tensor, in state-dict order.
    fn layout(&self) -> Vec<(String, Role, Vec<usize>)> {
        self.tensors()
            .entries()
            .iter()
            .map(|e| {
                let shape = e.tensor.size().iter().map(|&s| s as usize).collect();
                (e.name.clone(), e.role, shape)
            })
            .collect()
    }

    /// Every parameter and buffer as named arrays, in state-dict order
    /// (exact when `F` is the encoder's precision).
    fn state_dict<F: TchReal>(&self) -> Result<StateDict<F>> {
        let entries = self
            .tensors()
            .entries()
            .iter()
            .map(|e| {
                Ok(StateEntry {
                    name: e.name.clone(),
                    role: e.role,
                    value: array_from_tensor::<F>(&e.tensor)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StateDict { entries })
    }

    /// Overwrites every parameter and buffer from `state` (e.g. exported by
    /// the reference). As the reference's `from_state_dict`: every tensor of
    /// [`Encoder::layout`] must be present with its shape and finite values,
    /// and nothing else; on error nothing is changed. Values are rounded to
    /// the encoder's precision.
    fn load_state_dict<F: TchReal>(&mut self, state: &StateDict<F>) -> Result<()> {
        let mut rest: Vec<&StateEntry<F>> = state.entries.iter().collect();
        let mut values = Vec::new();
        for e in self.tensors().entries() {
            let shape: Vec<usize> = e.tensor.size().iter().map(|&s| s as usize).collect();
            let pos = rest.iter().position(|s| s.name == e.name).ok_or_else(|| {
                Error::from(ClaeError::InvalidState {
                    message: format!("missing tensor `{}`", e.name),
                })
            })?;
            let entry = rest.remove(pos);
            if entry.value.shape() != shape.as_slice() {
                return Err(ClaeError::ShapeMismatch {
                    what: e.name.clone(),
                    expected: format!("{shape:?}"),
                    actual: format!("{:?}", entry.value.shape()),
                }
                .into());
            }
            clae_reference::check::finite(&e.name, entry.value.view())?;
            if e.name.ends_with("running_var") {
                clae_reference::check::non_negative_entries(&e.name, entry.value.view())?;
            }
            let t = tensor_from_array(entry.value.view(), self.device())?
                .f_to_kind(self.precision().kind())?;
            if check::finite(&e.name, &t).is_err() {
                // finite as given, not in this precision
                return Err(ClaeError::Overflow {
                    cause: format!("the state entry `{}`", e.name),
                    quantity: "its values".into(),
                    precision: self.precision().name().to_string(),
                }
                .into());
            }
            values.push(t);
        }
        if let Some(extra) = rest.first() {
            return Err(ClaeError::InvalidState {
                message: format!("unexpected tensor `{}`", extra.name),
            }
            .into());
        }
        tch::no_grad(|| -> Result<()> {
            for (e, v) in self.tensors().entries().iter().zip(&values) {
                let mut dst = e.tensor.shallow_clone();
                dst.f_copy_(v)?;
            }
            Ok(())
        })
    }
}

/// `torch.autograd.grad(output, inputs, allow_unused=True)`: the gradient of
/// the scalar `output` w.r.t. each input, `None` for inputs it does not
/// depend on. Nothing is accumulated into `.grad`.
pub(crate) fn gradients_of(output: &Tensor, inputs: &[&Tensor]) -> Result<Vec<Option<Tensor>>> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let grads = Tensor::f_run_backward(&[output], inputs, false, false)?;
    Ok(grads
        .into_iter()
        .map(|g| if g.defined() { Some(g) } else { None })
        .collect())
}

/// Gradients of the trainable parameters of an encoder, in
/// [`Encoder::parameter_names`] order. `None` means the parameter took no
/// part in the loss (e.g. the adv BatchNorm affine parameters in a plain
/// step); optimizers then skip it, as `torch.optim` skips `.grad is None`.
#[derive(Debug)]
pub struct Gradients {
    /// Parameter names.
    pub names: Vec<String>,
    /// One optional gradient per parameter.
    pub tensors: Vec<Option<Tensor>>,
}

impl Gradients {
    /// `d output / d theta` for every parameter of `enc`.
    pub(crate) fn of<E: Encoder + ?Sized>(enc: &E, output: &Tensor) -> Result<Self> {
        let params = enc.parameters();
        let refs: Vec<&Tensor> = params.iter().collect();
        Ok(Gradients {
            names: enc.parameter_names(),
            tensors: gradients_of(output, &refs)?,
        })
    }

    /// The gradient of the parameter `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.tensors[i].as_ref())
    }

    /// The gradients that are present, as named arrays (role
    /// [`Role::Parameter`], named after their parameter).
    pub fn state_dict<F: TchReal>(&self) -> Result<StateDict<F>> {
        let mut entries = Vec::new();
        for (name, g) in self.names.iter().zip(&self.tensors) {
            if let Some(g) = g {
                entries.push(StateEntry {
                    name: name.clone(),
                    role: Role::Parameter,
                    value: array_from_tensor::<F>(g)?,
                });
            }
        }
        Ok(StateDict { entries })
    }
}

/// Turns `requires_grad` off on every parameter for as long as it lives
/// (the lean recipe's generation pass: autograd then builds the graph of the
/// input only), restoring each parameter's previous flag when dropped.
pub(crate) struct FrozenParameters {
    saved: Vec<(Tensor, bool)>,
}

impl FrozenParameters {
    pub(crate) fn new<E: Encoder + ?Sized>(enc: &E) -> Result<Self> {
        let mut saved = Vec::new();
        for p in enc.parameters() {
            let was = p.requires_grad();
            let _ = p.f_set_requires_grad(false)?;
            saved.push((p, was));
        }
        Ok(FrozenParameters { saved })
    }
}

impl Drop for FrozenParameters {
    fn drop(&mut self) {
        for (p, was) in &self.saved {
            // Parameters are leaves, for which setting the flag cannot fail;
            // a failure here would leave them frozen, so it is not ignored
            // silently in debug builds.
            let restored = p.f_set_requires_grad(*was);
            debug_assert!(restored.is_ok(), "restoring requires_grad failed");
        }
    }
}

/// A copy of every buffer of an encoder (the BatchNorm running statistics:
/// small), taken before a computation that updates them in place, so that a
/// failed computation can put them back bit for bit.
pub(crate) struct BufferSnapshot {
    copies: Vec<Tensor>,
}

impl BufferSnapshot {
    pub(crate) fn take<E: Encoder + ?Sized>(enc: &E) -> Result<Self> {
        let copies = tch::no_grad(|| {
            enc.tensors()
                .entries()
                .iter()
                .filter(|e| e.role == Role::Buffer)
                .map(|e| e.tensor.f_detach_copy())
                .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        Ok(BufferSnapshot { copies })
    }

    /// `health` gets the flag "every running statistic is finite" (an update
    /// `(1 − m) r + m σ²` can overflow even when `σ²` did not).
    pub(crate) fn push_running_flag<E: Encoder + ?Sized>(
        &self,
        enc: &E,
        health: &mut Health,
    ) -> Result<()> {
        let buffers: Vec<Tensor> = enc
            .tensors()
            .entries()
            .iter()
            .filter(|e| e.role == Role::Buffer)
            .map(|e| e.tensor.f_reshape([-1]))
            .collect::<std::result::Result<_, _>>()?;
        if !buffers.is_empty() {
            health.push_finite(
                "the updated BatchNorm running statistics",
                &Tensor::f_cat(&buffers, 0)?,
            )?;
        }
        Ok(())
    }

    /// Puts the buffers back.
    pub(crate) fn restore<E: Encoder + ?Sized>(&self, enc: &E) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let buffers = enc
                .tensors()
                .entries()
                .iter()
                .filter(|e| e.role == Role::Buffer);
            for (e, saved) in buffers.zip(&self.copies) {
                let mut dst = e.tensor.shallow_clone();
                dst.f_copy_(saved)?;
            }
            Ok(())
        })
    }

    /// `result`, after putting the buffers back if it is an error.
    pub(crate) fn restore_on_error<E: Encoder + ?Sized, T>(
        &self,
        enc: &E,
        result: Result<T>,
    ) -> Result<T> {
        if result.is_err() {
            self.restore(enc)?;
        }
        result
    }
}
