//! Named tensors: how parameters, buffers and optimizer state are exported
//! and imported (PyTorch `state_dict` style), so another implementation can
//! be loaded with exactly the same numbers.

use crate::error::{ClaeError, Result};
use crate::real::Real;
use ndarray::ArrayD;

/// Whether a tensor is trained by the optimizer or is a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A trainable parameter (gets a gradient).
    Parameter,
    /// A buffer (BatchNorm running statistics; optimizer state).
    Buffer,
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct StateEntry<F> {
    /// Dotted name, e.g. `backbone.0.bn.adv.running_var`.
    pub name: String,
    /// Parameter or buffer.
    pub role: Role,
    /// The values (row-major, any rank).
    pub value: ArrayD<F>,
}

/// An ordered list of named tensors.
///
/// ```
/// use clae_reference::{encoder::{Mlp, MlpConfig}, state::Role};
/// let mlp = Mlp::<f64>::new(MlpConfig::new(4, 8, 1, 3), 0).unwrap();
/// let sd = mlp.state_dict();
/// assert_eq!(sd.entries[0].name, "backbone.0.linear.weight");
/// assert_eq!(sd.get("head.2.weight").unwrap().shape(), &[3, 8]);
/// let as_f32 = sd.cast::<f32>().unwrap();
/// assert_eq!(as_f32.entries.len(), sd.entries.len());
/// assert!(sd.entries.iter().any(|e| e.role == Role::Buffer));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateDict<F> {
    /// Entries in the canonical order of their owner.
    pub entries: Vec<StateEntry<F>>,
}

impl<F: Real> StateDict<F> {
    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&ArrayD<F>> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.value)
    }

    /// The same entries in another precision (`f64 → f32` rounds to
    /// nearest). Errors: [`ClaeError::Overflow`] naming the entry when a
    /// finite value is beyond `G`'s range (`1e300` in `f32`); nothing is
    /// returned then.
    pub fn cast<G: Real>(&self) -> Result<StateDict<G>> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let value = e.value.mapv(|v| G::c(v.as_f64()));
            let overflowed = e
                .value
                .iter()
                .zip(value.iter())
                .any(|(a, b)| a.is_finite() && !b.is_finite());
            if overflowed {
                return Err(ClaeError::Overflow {
                    cause: format!("the state entry `{}`", e.name),
                    quantity: "its values".into(),
                    precision: G::NAME.to_string(),
                });
            }
            entries.push(StateEntry {
                name: e.name.clone(),
                role: e.role,
                value,
            });
        }
        Ok(StateDict { entries })
    }

    /// Names in order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// Takes the entry `name` out, checking its shape and finiteness.
    pub(crate) fn take(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<F>> {
        let pos = self
            .entries
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| ClaeError::InvalidState {
                message: format!("missing tensor `{name}`"),
            })?;
        let entry = self.entries.remove(pos);
        if entry.value.shape() != shape {
            return Err(ClaeError::ShapeMismatch {
                what: name.to_string(),
                expected: format!("{shape:?}"),
                actual: format!("{:?}", entry.value.shape()),
            });
        }
        crate::check::finite(name, entry.value.view())?;
        Ok(entry.value)
    }

    /// Fails if entries are left after every expected one was taken.
    pub(crate) fn expect_empty(&self) -> Result<()> {
        match self.entries.first() {
            None => Ok(()),
            Some(e) => Err(ClaeError::InvalidState {
                message: format!("unexpected tensor `{}`", e.name),
            }),
        }
    }
}
