//! CubeCL backends (wgpu, and any other CubeCL runtime): the composed tensor-op bodies.
//! A CubeCL kernel (one workgroup per row) would remove the `[N, V]` temporaries.

use burn::backend::Cube;

use super::TokenLogpKernels;

impl TokenLogpKernels for Cube {}

super::plain_token_logp_ops!(Cube);
