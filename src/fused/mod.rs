//! Fused token log-probs: `ℓ_n = z_{n,y_n} − logsumexp_v z_{n,v}` over rows of `[N, V]` logits,
//! with a hand-written backward `∂ℓ_n/∂z_{n,v} = 1[v = y_n] − softmax(z_n)_v`.
//!
//! The straightforward tensor-op path (max, gather, `exp(z − m)`, sum, log) makes several passes
//! over `[N, V]`, builds `[N, V]` temporaries, and its autodiff backward builds more. Here:
//!
//! - [`TokenLogpOps`] is a burn *backend extension* (`#[backend_extension]`, burn feature
//!   `extension`): `Dispatch` routes the call to the tensor's backend at run time.
//! - `Autodiff<B, C>` implements it with a custom backward step ([`autodiff`]) that saves only
//!   the row max and row log-sum `[N]` (the logits are kept alive by reference, not copied).
//! - Flex and NdArray run the fused slice kernels of [`kernel`]: one read pass per row forward,
//!   one read + one write pass backward, vectorised `exp`, all cores. On flex the backward
//!   writes over the logits when nothing else holds them.
//! - CubeCL backends (wgpu) use the composed tensor-op bodies of [`composed`].
//! - [`linear`] runs the same kernels on row chunks of `hidden · weightᵀ`, so an LM head's
//!   logits are never stored whole.
//!
//! A row whose label is outside `[0, V)` is invalid: its log-prob and gradient are exactly 0 and
//! its logits are never read by the CPU kernels.
// burn 0.22 deprecates NdArray in favour of Flex; we still support it, and the dispatch code
// that `#[backend_extension]` generates names it outside any item we could annotate.
#![allow(deprecated)]
// Without autodiff nothing calls the backward kernels; without a backend of ours, callers
// always take the tensor-op path.
#![cfg_attr(not(feature = "autodiff"), allow(dead_code))]
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray", feature = "wgpu")),
    allow(unused)
)]

#[cfg(feature = "autodiff")]
mod autodiff;
mod composed;
#[cfg(feature = "wgpu")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod host;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod kernel;
mod linear;
#[cfg(feature = "ndarray")]
mod ndarray;

use burn::backend::{
    Backend, Dispatch, DispatchDevice, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{Device, Int, Tensor};

/// Token log-probs of `[N, V]` logits at `[N]` labels, routed to the tensor's backend.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff: cfg(feature = "autodiff"),
)]
pub(crate) trait TokenLogpOps: Backend {
    /// `logits: [N, V]` float, `labels: [N]` int → `[N]`, `z_{n,y_n} − logsumexp(z_n)`, or 0
    /// where `labels[n] ∉ [0, V)`.
    fn token_logps(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self>;

    /// `hidden: [N, H]`, `weight: [V, H]`, `labels: [N]` → `[N]`, the token log-probs of the
    /// logits `hidden · weightᵀ`, computed `chunk_rows` rows at a time ([`linear`]).
    fn linear_token_logps(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        chunk_rows: usize,
    ) -> FloatTensor<Self>;
}

/// [`TokenLogpOps`] of a backend without autodiff: the forward halves of its kernels.
macro_rules! plain_token_logp_ops {
    ($backend:ty) => {
        impl $crate::fused::TokenLogpOps for $backend {
            fn token_logps(
                logits: burn::backend::tensor::FloatTensor<Self>,
                labels: burn::backend::tensor::IntTensor<Self>,
            ) -> burn::backend::tensor::FloatTensor<Self> {
                <Self as $crate::fused::TokenLogpKernels>::token_logps_forward(logits, labels).0
            }

            fn linear_token_logps(
                hidden: burn::backend::tensor::FloatTensor<Self>,
                weight: burn::backend::tensor::FloatTensor<Self>,
                labels: burn::backend::tensor::IntTensor<Self>,
                chunk_rows: usize,
            ) -> burn::backend::tensor::FloatTensor<Self> {
                $crate::fused::linear::forward::<Self>(hidden, weight, labels, chunk_rows).0
            }
        }
    };
}
pub(crate) use plain_token_logp_ops;

/// What the forward saves for the backward, per row `[N]`: the max `m` and `log Σ_v e^{z_v − m}`.
///
/// Kept apart rather than summed into one log-sum-exp: at `|z| ~ 1e4` an `f32` sum `m + log s`
/// loses ~5e-4 absolute, which `exp(z − lse)` would turn into a 5e-4 relative gradient error.
pub(crate) struct RowStats<B: Backend> {
    /// Row max `[N]` (0 on invalid rows).
    pub(crate) max: FloatTensor<B>,
    /// `log Σ_v e^{z_v − max}` `[N]` (0 on invalid rows).
    pub(crate) log_sum: FloatTensor<B>,
}

/// Raw forward/backward of the fused op on a concrete (non-autodiff) backend; the autodiff
/// implementation of [`TokenLogpOps`] registers them as one differentiable step. The default
/// bodies are the composed tensor-op versions.
pub(crate) trait TokenLogpKernels: Backend {
    /// `(logp [N], stats)`, `logp = 0` on invalid rows.
    fn token_logps_forward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
    ) -> (FloatTensor<Self>, RowStats<Self>) {
        composed::forward::<Self>(logits, labels)
    }

    /// `dz [N, V] = g_n · (1[v = y_n] − e^{z_{n,v} − m_n − log s_n})`, zero rows where invalid.
    fn token_logps_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        stats: RowStats<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::backward::<Self>(logits, labels, stats, grad)
    }
}

/// Whether the fused op can run on `device`: a backend this crate was built for (flex,
/// ndarray, wgpu/CubeCL), plain or, with the `autodiff` feature, under autodiff. Callers fall
/// back to the tensor-op path elsewhere (e.g. LibTorch, or a backend enabled in burn only).
pub(crate) fn supported(device: &Device) -> bool {
    if device.is_autodiff() && !cfg!(feature = "autodiff") {
        return false;
    }
    let plain = device.clone().without_autodiff();
    #[allow(unreachable_patterns)] // exhaustive when only this crate's backends are compiled in
    match plain.as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        #[cfg(feature = "wgpu")]
        DispatchDevice::Cube(_) => true,
        _ => false,
    }
}

/// Token log-probs `[N]` of `logits [N, V]` at `labels [N]`; labels outside `[0, V)` give 0
/// and zero gradient. Differentiable on autodiff devices. Only for [`supported`] devices.
pub(crate) fn token_logps(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let out =
        <Dispatch as TokenLogpOps>::token_logps(logits.into_dispatch(), labels.into_dispatch());
    Tensor::from_dispatch(out)
}

/// Token log-probs `[N]` of the logits `hidden [N, H] · weightᵀ` (`weight [V, H]`) at
/// `labels [N]`, never holding more than `chunk_rows × V` logits; differentiable in `hidden`
/// and `weight` on autodiff devices. Only for [`supported`] devices.
pub(crate) fn linear_token_logps(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    labels: Tensor<1, Int>,
    chunk_rows: usize,
) -> Tensor<1> {
    let out = <Dispatch as TokenLogpOps>::linear_token_logps(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        labels.into_dispatch(),
        chunk_rows,
    );
    Tensor::from_dispatch(out)
}
