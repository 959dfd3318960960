//! ndarray ⇄ libtorch tensors, through flat slices.
//!
//! (tch 0.24 has its own ndarray conversions, but for ndarray 0.16; the
//! workspace uses 0.17, so values go through a contiguous slice.)

use crate::device::{ensure_device, Precision, TchReal};
use crate::error::{Error, Result};
use ndarray::{Array2, ArrayD, ArrayView, Dimension, IxDyn};
use tch::{Device, Tensor};

/// A tensor on `device` with the shape and values of `a` (exact: the element
/// type is kept).
///
/// ```
/// use ndarray::array;
/// use clae_accelerated::convert::{array_from_tensor, tensor_from_array};
/// let a = array![[1.0f64, 2.0], [3.0, 4.0]];
/// let t = tensor_from_array(a.view(), tch::Device::Cpu).unwrap();
/// assert_eq!(t.size(), vec![2, 2]);
/// assert_eq!(array_from_tensor::<f64>(&t).unwrap(), a.into_dyn());
/// ```
pub fn tensor_from_array<F: TchReal, D: Dimension>(
    a: ArrayView<'_, F, D>,
    device: Device,
) -> Result<Tensor> {
    ensure_device(device)?;
    let shape: Vec<i64> = a.shape().iter().map(|&s| s as i64).collect();
    let standard = a.as_standard_layout();
    let values: Vec<F> = match standard.as_slice() {
        Some(s) => s.to_vec(),
        None => standard.iter().copied().collect(),
    };
    let flat = Tensor::f_from_slice(&values)?;
    Ok(flat.f_reshape(&shape)?.f_to_device(device)?)
}

/// The values of `t` as an `F` array (moved to the CPU; cast to `F` if the
/// tensor holds another kind). Detached from any autograd graph.
///
/// ```
/// use clae_accelerated::convert::array_from_tensor;
/// let t = tch::Tensor::from_slice(&[1.5f32, -2.0]);
/// assert_eq!(array_from_tensor::<f64>(&t).unwrap().as_slice().unwrap(), &[1.5, -2.0]);
/// ```
pub fn array_from_tensor<F: TchReal>(t: &Tensor) -> Result<ArrayD<F>> {
    let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
    let flat = t
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(F::PRECISION.kind())?
        .f_contiguous()?
        .f_reshape([-1])?;
    let values = Vec::<F>::try_from(&flat)?;
    if values.iter().any(|v| !v.is_finite()) && crate::check::finite("the tensor", t).is_ok() {
        // finite in the tensor's kind, not in F (e.g. 1e300 into f32)
        return Err(clae_reference::ClaeError::Overflow {
            cause: "the tensor's values".into(),
            quantity: format!("the array in {}", F::NAME),
            precision: F::NAME.to_string(),
        }
        .into());
    }
    ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|e| Error::Torch(format!("tensor to array: {e}")))
}

/// [`array_from_tensor`] for a 2-D tensor.
///
/// ```
/// use clae_accelerated::convert::array2_from_tensor;
/// let t = tch::Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0]).reshape([2, 2]);
/// assert_eq!(array2_from_tensor::<f64>(&t).unwrap()[[1, 0]], 3.0);
/// assert!(array2_from_tensor::<f64>(&t.reshape([4])).is_err());
/// ```
pub fn array2_from_tensor<F: TchReal>(t: &Tensor) -> Result<Array2<F>> {
    if t.dim() != 2 {
        return Err(clae_reference::ClaeError::ShapeMismatch {
            what: "the tensor".into(),
            expected: "a 2-D tensor".into(),
            actual: crate::check::shape_string(&t.size()),
        }
        .into());
    }
    array_from_tensor::<F>(t)?
        .into_dimensionality()
        .map_err(|e| Error::Torch(format!("expected a 2-D tensor: {e}")))
}

/// A scalar tensor's value as `f64` (exact for `f32` and `f64` tensors).
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.f_double_value(&[])?)
}

/// `t` converted to `precision` on `device` (a no-op when it already is).
pub(crate) fn placed(t: &Tensor, device: Device, precision: Precision) -> Result<Tensor> {
    Ok(t.f_to_device(device)?.f_to_kind(precision.kind())?)
}
