//! Flex, burn's pure-Rust CPU backend: the fused slice kernels, on `f32`, `f16` and `bf16`
//! storage.

use burn::backend::{DType, Flex, tensor::FloatTensor};
use burn::tensor::{bf16, f16};

use super::host::HostSlices;

/// `with_*` (a slice of the tensor, zero-copy when contiguous) and `with_*_mut` (the tensor's
/// own buffer, when uniquely owned and contiguous) for one element type.
macro_rules! flex_slices {
    ($elem:ty, $dtype:expr, $with:ident, $with_mut:ident) => {
        fn $with<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[$elem]) -> R) -> Option<R> {
            // `as_slice` is zero-copy for contiguous tensors and `None` for strided views (and
            // for another dtype).
            match tensor.as_slice::<$elem>() {
                Some(z) => Some(f(z)),
                None => tensor.to_contiguous().as_slice::<$elem>().map(f),
            }
        }

        fn $with_mut<R>(
            tensor: &mut FloatTensor<Self>,
            f: impl FnOnce(&mut [$elem]) -> R,
        ) -> Option<R> {
            let layout = tensor.layout();
            let len = layout.num_elements();
            if tensor.dtype() != $dtype || !layout.is_contiguous() || layout.start_offset() != 0 {
                return None;
            }
            // `Some` only when the buffer is uniquely owned; it may be longer than the tensor.
            tensor
                .try_storage_mut::<$elem>()
                .and_then(|z| z.get_mut(..len))
                .map(f)
        }
    };
}

impl HostSlices for Flex {
    flex_slices!(f32, DType::F32, with_f32, with_f32_mut);
    flex_slices!(f16, DType::F16, with_f16, with_f16_mut);
    flex_slices!(bf16, DType::BF16, with_bf16, with_bf16_mut);
}

crate::fused::plain_token_logp_ops!(Flex);
