//! NdArray (deprecated in burn 0.22, still supported): the fused slice kernels on `f32`.
//!
//! NdArray has no `f16`/`bf16` storage (`supports_dtype` says no, and it cannot hold such a
//! tensor), so the half-precision slices of [`HostSlices`] keep their `None` defaults: half
//! logits would take the composed path.
#![allow(deprecated)]

use burn::backend::{NdArray, ndarray::NdArrayTensor, tensor::FloatTensor};

use super::host::HostSlices;

impl HostSlices for NdArray {
    fn with_f32<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        match tensor {
            // `to_slice` succeeds for a standard (row-major, contiguous) layout; copy otherwise.
            NdArrayTensor::F32(storage) => {
                let view = storage.view();
                Some(match view.to_slice() {
                    Some(z) => f(z),
                    None => f(&view.iter().copied().collect::<Vec<f32>>()),
                })
            }
            _ => None,
        }
    }
}

crate::fused::plain_token_logp_ops!(NdArray);
