//! CubeCL backends (wgpu, and any other CubeCL runtime): the composed tensor-op bodies.
//! A CubeCL kernel (one workgroup per row) would remove the `[N, V]` temporaries.

use burn::backend::{
    Cube,
    tensor::{FloatTensor, IntTensor},
};

use super::{TokenLogpKernels, TokenLogpOps};

impl TokenLogpKernels for Cube {}

impl TokenLogpOps for Cube {
    fn token_logps(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self> {
        Self::token_logps_forward(logits, labels).0
    }
}
