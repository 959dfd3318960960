//! The JSON shapes shared by the conformance vectors: a tensor is its shape
//! and its values in row-major order, always `f64`.

use clae_reference::state::{Role, StateDict, StateEntry};
use clae_reference::{ClaeError, Real, Result};
use ndarray::{Array2, ArrayD, ArrayView, Dimension, IxDyn};
use serde::{Deserialize, Serialize};

/// A dense `f64` tensor: `data.len()` equals the product of `shape`
/// (1 for a scalar, `shape = []`), row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f64>,
}

impl Tensor {
    /// From any ndarray view of a reference element type (widened exactly to `f64`).
    pub fn from_array<F: Real, D: Dimension>(a: ArrayView<'_, F, D>) -> Self {
        Tensor {
            shape: a.shape().to_vec(),
            data: a.iter().map(|v| v.as_f64()).collect(),
        }
    }

    /// As an `N x M` matrix; errors if the tensor is not 2-D or inconsistent.
    pub fn to_array2(&self) -> Result<Array2<f64>> {
        match self.shape.as_slice() {
            &[r, c] => Array2::from_shape_vec((r, c), self.data.clone()).map_err(|e| {
                ClaeError::ShapeMismatch {
                    what: "tensor data".into(),
                    expected: format!("{r} x {c} values"),
                    actual: format!("{} values ({e})", self.data.len()),
                }
            }),
            s => Err(ClaeError::ShapeMismatch {
                what: "tensor".into(),
                expected: "a 2-D shape".into(),
                actual: format!("{s:?}"),
            }),
        }
    }

    /// As an n-dimensional array.
    pub fn to_arrayd(&self) -> Result<ArrayD<f64>> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.data.clone()).map_err(|e| {
            ClaeError::ShapeMismatch {
                what: "tensor data".into(),
                expected: format!("{:?}", self.shape),
                actual: format!("{} values ({e})", self.data.len()),
            }
        })
    }
}

/// One named tensor of a state dict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// Dotted name, e.g. `backbone.0.bn.adv.running_var`.
    pub name: String,
    /// `"parameter"` (trained) or `"buffer"` (running statistics, optimizer state).
    pub role: String,
    /// Its dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f64>,
}

/// A state dict as JSON entries (order preserved).
pub fn state_to_json<F: Real>(sd: &StateDict<F>) -> Vec<NamedTensor> {
    sd.entries
        .iter()
        .map(|e| {
            let t = Tensor::from_array(e.value.view());
            NamedTensor {
                name: e.name.clone(),
                role: match e.role {
                    Role::Parameter => "parameter".into(),
                    Role::Buffer => "buffer".into(),
                },
                shape: t.shape,
                data: t.data,
            }
        })
        .collect()
}

/// JSON entries back into a state dict.
pub fn state_from_json(entries: &[NamedTensor]) -> Result<StateDict<f64>> {
    let entries = entries
        .iter()
        .map(|e| {
            let role = match e.role.as_str() {
                "parameter" => Role::Parameter,
                "buffer" => Role::Buffer,
                other => {
                    return Err(ClaeError::InvalidState {
                        message: format!("unknown role `{other}` for `{}`", e.name),
                    })
                }
            };
            let value = Tensor {
                shape: e.shape.clone(),
                data: e.data.clone(),
            }
            .to_arrayd()?;
            Ok(StateEntry {
                name: e.name.clone(),
                role,
                value,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StateDict { entries })
}
