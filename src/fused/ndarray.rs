//! NdArray (deprecated in burn 0.22, still supported): the fused slice kernels.
#![allow(deprecated)]

use burn::backend::{
    NdArray,
    ndarray::NdArrayTensor,
    tensor::{FloatTensor, IntTensor},
};

use super::host::{self, HostF32};
use super::{RowStats, TokenLogpKernels, TokenLogpOps};

impl HostF32 for NdArray {
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

impl TokenLogpKernels for NdArray {
    fn token_logps_forward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
    ) -> (FloatTensor<Self>, RowStats<Self>) {
        host::forward::<Self>(logits, labels)
    }

    fn token_logps_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        stats: RowStats<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        host::backward::<Self>(logits, labels, stats, grad)
    }
}

impl TokenLogpOps for NdArray {
    fn token_logps(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self> {
        Self::token_logps_forward(logits, labels).0
    }
}
