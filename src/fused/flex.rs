//! Flex, burn's pure-Rust CPU backend: the fused slice kernels.

use burn::backend::{DType, Flex, tensor::FloatTensor};

use super::host::HostF32;

impl HostF32 for Flex {
    fn with_f32<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        // `as_slice` is zero-copy for contiguous tensors and `None` for strided views.
        match tensor.as_slice::<f32>() {
            Some(z) => Some(f(z)),
            None => tensor.to_contiguous().as_slice::<f32>().map(f),
        }
    }

    fn with_f32_mut<R>(
        tensor: &mut FloatTensor<Self>,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> Option<R> {
        let layout = tensor.layout();
        let len = layout.num_elements();
        if tensor.dtype() != DType::F32 || !layout.is_contiguous() || layout.start_offset() != 0 {
            return None;
        }
        // `Some` only when the buffer is uniquely owned; it may be longer than the tensor.
        tensor
            .try_storage_mut::<f32>()
            .and_then(|z| z.get_mut(..len))
            .map(f)
    }
}

super::plain_token_logp_ops!(Flex);
