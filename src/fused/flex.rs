//! Flex, burn's pure-Rust CPU backend: the fused slice kernels.

use burn::backend::{Flex, tensor::FloatTensor};

use super::host::HostF32;

impl HostF32 for Flex {
    fn with_f32<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        // `as_slice` is zero-copy for contiguous tensors and `None` for strided views.
        match tensor.as_slice::<f32>() {
            Some(z) => Some(f(z)),
            None => tensor.to_contiguous().as_slice::<f32>().map(f),
        }
    }
}

super::plain_token_logp_ops!(Flex);
