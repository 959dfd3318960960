//! The encoder's tensors by name, PyTorch `state_dict` style: their order
//! and shapes ([`Mlp::layout`]), views of them, and export and import of a
//! [`StateDict`] — so another implementation can be loaded with exactly the
//! same numbers.

use super::{Mlp, MlpConfig};
use crate::error::{ClaeError, Result};
use crate::real::Real;
use crate::state::{Role, StateDict, StateEntry};
use ndarray::{ArrayViewD, ArrayViewMutD};

impl<F: Real> Mlp<F> {
    /// `(name, role, shape)` of every tensor, in state-dict order:
    /// per block `linear.{weight,bias}`, `bn.clean.{weight,bias,running_mean,running_var}`,
    /// `bn.adv.{…}`; then `head.0.{weight,bias}`, `head.2.{weight,bias}`
    /// (PyTorch's `nn.Sequential` indices: `head.1` is the ReLU).
    pub fn layout(&self) -> Vec<(String, Role, Vec<usize>)> {
        let c = &self.config;
        let mut out = Vec::new();
        let mut push = |name: String, role: Role, shape: Vec<usize>| out.push((name, role, shape));
        let mut fan_in = c.d_in;
        for l in 0..c.depth {
            push(
                format!("backbone.{l}.linear.weight"),
                Role::Parameter,
                vec![c.hidden, fan_in],
            );
            push(
                format!("backbone.{l}.linear.bias"),
                Role::Parameter,
                vec![c.hidden],
            );
            for branch in ["clean", "adv"] {
                let p = format!("backbone.{l}.bn.{branch}");
                push(format!("{p}.weight"), Role::Parameter, vec![c.hidden]);
                push(format!("{p}.bias"), Role::Parameter, vec![c.hidden]);
                push(format!("{p}.running_mean"), Role::Buffer, vec![c.hidden]);
                push(format!("{p}.running_var"), Role::Buffer, vec![c.hidden]);
            }
            fan_in = c.hidden;
        }
        push(
            "head.0.weight".into(),
            Role::Parameter,
            vec![c.hidden, fan_in],
        );
        push("head.0.bias".into(), Role::Parameter, vec![c.hidden]);
        push("head.2.weight".into(), Role::Parameter, vec![c.d, c.hidden]);
        push("head.2.bias".into(), Role::Parameter, vec![c.d]);
        out
    }

    /// Views of every tensor in [`Mlp::layout`] order.
    pub(crate) fn views(&self) -> Vec<ArrayViewD<'_, F>> {
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

    /// The config (in `F`) is valid and every tensor has the shape it
    /// implies (the fields are public, so they may not).
    pub(crate) fn validate_shapes(&self) -> Result<()> {
        self.config.validate_for::<F>()?;
        if self.backbone.len() != self.config.depth {
            return Err(ClaeError::InvalidState {
                message: format!(
                    "encoder has {} backbone blocks, config says {}",
                    self.backbone.len(),
                    self.config.depth
                ),
            });
        }
        for ((name, _, shape), view) in self.layout().iter().zip(self.views()) {
            if view.shape() != shape.as_slice() {
                return Err(ClaeError::ShapeMismatch {
                    what: name.clone(),
                    expected: format!("{shape:?}"),
                    actual: format!("{:?}", view.shape()),
                });
            }
        }
        Ok(())
    }

    /// Names of the trainable parameters, in the order of [`Mlp::parameters`],
    /// [`super::MlpGrads::tensors`] and the optimizer state.
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
        let mut mlp = Mlp::zeros(config)?;
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
        mlp.validate()?; // e.g. a negative running variance
        Ok(mlp)
    }
}
