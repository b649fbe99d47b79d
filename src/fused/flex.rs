//! Flex, burn's pure-Rust CPU backend: the fused slice kernels.

use burn::backend::{
    Flex,
    tensor::{FloatTensor, IntTensor},
};

use super::host::{self, HostF32};
use super::{RowStats, TokenLogpKernels, TokenLogpOps};

impl HostF32 for Flex {
    fn with_f32<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        // `as_slice` is zero-copy for contiguous tensors and `None` for strided views.
        match tensor.as_slice::<f32>() {
            Some(z) => Some(f(z)),
            None => tensor.to_contiguous().as_slice::<f32>().map(f),
        }
    }
}

impl TokenLogpKernels for Flex {
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

impl TokenLogpOps for Flex {
    fn token_logps(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self> {
        Self::token_logps_forward(logits, labels).0
    }
}
