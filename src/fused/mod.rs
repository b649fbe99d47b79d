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
//! - Flex and NdArray run the fused slice kernels of [`cpu`]: one read pass per row forward,
//!   one read + one write pass backward, vectorised `exp`, all cores. On flex the backward
//!   writes over the logits when nothing else holds them. Flex's `f16`/`bf16` logits are read
//!   as they are (NdArray has no half storage).
//! - For every logits dtype the output `[N, K]` and the [`RowStats`] are `f32`, and the
//!   backward's `dz [N, V]` has the logits' dtype.
//! - CubeCL backends (wgpu, CUDA) run the kernels of `cube` (one CubeCL source for every
//!   runtime, also under burn's `Fusion`, as lazy custom operations): one read of each row
//!   forward, one read and one write backward, in place when the logits are not held.
//! - [`composed`] writes the op with ordinary tensor ops: the fallback for what a device's
//!   kernels do not read (e.g. `f64`, or bf16 on an adapter without it).
//! - [`linear`] runs the same kernels on row chunks of `hidden · weightᵀ`, so an LM head's
//!   logits are never stored whole.
//!
//! Every entry point takes one row-target per logits row ([`crate::logps`] builds them): a
//! label in `[0, V)`, or [`INVALID`] for a row that predicts nothing (prompt, padding, the last
//! position under the causal shift). An invalid row's outputs and gradient are exactly 0, and
//! the CPU kernels never read its logits.
//!
//! Options ([`Spec`]): a logits transform `z' = softcap·tanh(scale·z / softcap) / temperature`
//! and extra per-row outputs (entropy, `log Σ p²`, mean logit, is-argmax), computed in the same
//! read of each row and only when requested. The op returns `[N, K]`: column 0 the log-prob,
//! then one column per requested extra in [`Extras`] order.
// burn 0.22 deprecates NdArray in favour of Flex; we still support it, and the dispatch code
// that `#[backend_extension]` generates names it outside any item we could annotate.
#![allow(deprecated)]
// Without autodiff nothing calls the backward kernels; without a backend of ours, callers
// always take the tensor-op path.
#![cfg_attr(not(feature = "autodiff"), allow(dead_code))]
#![cfg_attr(
    not(any(
        feature = "flex",
        feature = "ndarray",
        feature = "wgpu",
        feature = "cuda"
    )),
    allow(unused)
)]

#[cfg(feature = "autodiff")]
mod autodiff;
mod composed;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
mod linear;

use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::backend::{
    Backend, Dispatch, DispatchDevice, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{Device, Int, StreamId, Tensor};

#[cfg(any(feature = "flex", feature = "ndarray"))]
pub use cpu::{CpuKernelIsa, cpu_kernel_isa};
pub use linear::HeadLayout;
pub(crate) use linear::token_logps as linear_token_logps;

/// The row-target of a row that predicts no label. Any value outside `[0, V)` reads the same to
/// the kernels; the crate only ever produces this one.
pub(crate) const INVALID: i64 = -1;

/// `z' = softcap·tanh(scale·z / softcap) · inv_temperature` (softcap optional), TRL's order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Transform {
    pub(crate) scale: f32,
    pub(crate) softcap: Option<f32>,
    pub(crate) inv_temperature: f32,
}

impl Transform {
    /// No transform: `z' = z`.
    pub(crate) const IDENTITY: Self = Self {
        scale: 1.0,
        softcap: None,
        inv_temperature: 1.0,
    };

    pub(crate) fn is_identity(&self) -> bool {
        *self == Self::IDENTITY
    }
}

/// Which extra per-row outputs to compute, in their column order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    /// `H = −Σ p log p`, differentiable.
    pub(crate) entropy: bool,
    /// `log Σ p²`.
    pub(crate) log_sum_sq: bool,
    /// `Σ z' / V`.
    pub(crate) mean: bool,
    /// 1 when `z'_y` is the first maximum of the row, else 0.
    pub(crate) top1: bool,
}

impl Extras {
    /// Columns of the op's output: the log-prob and each requested extra.
    pub(crate) fn columns(&self) -> usize {
        1 + [self.entropy, self.log_sum_sq, self.mean, self.top1]
            .iter()
            .filter(|&&on| on)
            .count()
    }

    /// Column of each extra, `None` when not requested.
    pub(crate) fn column_of(&self) -> ExtraColumns {
        let mut next = 1;
        let mut take = |on: bool| {
            on.then(|| {
                next += 1;
                next - 1
            })
        };
        ExtraColumns {
            entropy: take(self.entropy),
            log_sum_sq: take(self.log_sum_sq),
            mean: take(self.mean),
            top1: take(self.top1),
        }
    }
}

/// Output columns of the extras ([`Extras::column_of`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExtraColumns {
    pub(crate) entropy: Option<usize>,
    pub(crate) log_sum_sq: Option<usize>,
    pub(crate) mean: Option<usize>,
    pub(crate) top1: Option<usize>,
}

/// Everything the fused op is asked to do besides the log-prob.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spec {
    pub(crate) transform: Transform,
    pub(crate) extras: Extras,
}

/// Token log-probs of `[N, V]` logits at `[N]` row-targets, routed to the tensor's backend.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff: cfg(feature = "autodiff"),
)]
pub(crate) trait TokenLogpOps: Backend {
    /// `logits: [N, V]` float, `targets: [N]` int → `[N, K]`: `z'_{n,y_n} − logsumexp(z'_n)` and
    /// the extras of `spec`, all 0 where `targets[n] ∉ [0, V)`.
    fn token_logps(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self>;

    /// `hidden: [N, H]`, the head `weight` (`[V, H]` or `[H, V]` as `layout` says) and
    /// `bias: [V]` (a placeholder, unread, unless `head.has_bias`), `targets: [N]` → `[N, K]`,
    /// as [`token_logps`](Self::token_logps) on the logits `hidden · head + bias`, computed
    /// `chunk_rows` rows at a time ([`linear`]). (The bias is not an `Option`: the extension
    /// macro does not route optional tensors through `Dispatch`.)
    fn linear_token_logps(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
        head: LinearSpec,
    ) -> FloatTensor<Self>;
}

/// The LM-head path's options: the per-row [`Spec`], the head's layout and the chunk size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LinearSpec {
    pub(crate) spec: Spec,
    pub(crate) layout: HeadLayout,
    pub(crate) has_bias: bool,
    pub(crate) chunk_rows: usize,
}

/// [`TokenLogpOps`] of a backend without autodiff: the forward halves of its kernels.
macro_rules! plain_token_logp_ops {
    ($backend:ty) => {
        impl $crate::fused::TokenLogpOps for $backend {
            fn token_logps(
                logits: burn::backend::tensor::FloatTensor<Self>,
                targets: burn::backend::tensor::IntTensor<Self>,
                spec: $crate::fused::Spec,
            ) -> burn::backend::tensor::FloatTensor<Self> {
                <Self as $crate::fused::TokenLogpKernels>::token_logps_forward(
                    logits, targets, spec,
                )
                .0
            }

            fn linear_token_logps(
                hidden: burn::backend::tensor::FloatTensor<Self>,
                weight: burn::backend::tensor::FloatTensor<Self>,
                bias: burn::backend::tensor::FloatTensor<Self>,
                targets: burn::backend::tensor::IntTensor<Self>,
                head: $crate::fused::LinearSpec,
            ) -> burn::backend::tensor::FloatTensor<Self> {
                let bias = head.has_bias.then_some(bias);
                $crate::fused::linear::forward::<Self>(hidden, weight, bias, targets, head).0
            }
        }
    };
}
pub(crate) use plain_token_logp_ops;

/// What the forward saves for the backward, per row `[N]`: the max `m` and `log Σ_v e^{z'_v − m}`
/// (and the entropy when it was requested, for its gradient).
///
/// Kept apart rather than summed into one log-sum-exp: at `|z| ~ 1e4` an `f32` sum `m + log s`
/// loses ~5e-4 absolute, which `exp(z − lse)` would turn into a 5e-4 relative gradient error.
#[derive(Debug, Clone)]
pub(crate) struct RowStats<B: Backend> {
    /// Row max `[N]` (0 on invalid rows).
    pub(crate) max: FloatTensor<B>,
    /// `log Σ_v e^{z'_v − max}` `[N]` (0 on invalid rows).
    pub(crate) log_sum: FloatTensor<B>,
    /// Entropy `[N]` when requested (0 on invalid rows).
    pub(crate) entropy: Option<FloatTensor<B>>,
}

/// Raw forward/backward of the fused op on a concrete (non-autodiff) backend; the autodiff
/// implementation of [`TokenLogpOps`] registers them as one differentiable step. The default
/// bodies are the composed tensor-op versions.
pub(crate) trait TokenLogpKernels: Backend {
    /// `(out [N, K], stats)`, all 0 on invalid rows.
    fn token_logps_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        spec: Spec,
    ) -> (FloatTensor<Self>, RowStats<Self>) {
        composed::forward::<Self>(logits, targets, spec)
    }

    /// `dz [N, V]` for the upstream gradient `grad [N, K]` (only the log-prob and entropy
    /// columns carry one), chained through the transform; zero rows where the target is
    /// negative ([`INVALID`]):
    ///
    /// ```text
    /// dz'_v = g (1[v = y] − p_v) − g_H p_v (log p_v + H),   dz_v = dz'_v · ∂z'_v/∂z_v
    /// ```
    ///
    /// The backward is elementwise given the row stats, so `logits` may be a block of columns
    /// of the rows the stats came from: a target `y ≥ V` (of the block) marks a valid row
    /// whose target column lies outside it (no one-hot term). The LM head's backward tiles
    /// the vocabulary this way.
    fn token_logps_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        stats: RowStats<Self>,
        grad: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        composed::backward::<Self>(logits, targets, stats, grad, spec)
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
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        DispatchDevice::Cube(_) => true,
        _ => false,
    }
}

/// Token log-probs and extras `[N, K]` of `logits [N, V]` at `targets [N]` (row-targets:
/// [`INVALID`] rows give 0 and zero gradient). Differentiable on autodiff devices. Only for
/// [`supported`] devices.
pub(crate) fn token_logps(logits: Tensor<2>, targets: Tensor<1, Int>, spec: Spec) -> Tensor<2> {
    let out = <Dispatch as TokenLogpOps>::token_logps(
        logits.into_dispatch(),
        targets.into_dispatch(),
        spec,
    );
    Tensor::from_dispatch(out)
}

/// Which implementation of the fused op ran.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Path {
    KernelForward = 0,
    ComposedForward = 1,
    InPlaceBackward = 2,
    CopyingBackward = 3,
    ComposedBackward = 4,
    CubeForward = 5,
}

/// How often each implementation ran, per burn stream ([`StreamId`]), for tests that must
/// observe the path they claim. Per stream rather than process wide, so that tests running in
/// parallel in one process never see each other's calls; per stream rather than per thread,
/// because burn's fusion runs a stream's queued operations on a worker thread, under the
/// stream's id.
static COUNTERS: Mutex<BTreeMap<u64, [u64; 6]>> = Mutex::new(BTreeMap::new());

pub(crate) fn count(path: Path) {
    let stream = StreamId::current().value;
    // A poisoned lock only means a test panicked while counting: the counts are still whole.
    let mut counters = COUNTERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    counters.entry(stream).or_default()[path as usize] += 1;
}

/// Calls of each implementation of the fused log-prob op made on the calling thread's burn
/// stream ([`StreamId::current`]: one per thread by default). Under burn's fusion the op runs
/// on a worker thread under the id of the stream that queued it, so the calls still count
/// here. A probe for tests that must observe which path ran; not a stable API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FusedPathCounters {
    /// Forward passes over a logits block by the CPU slice kernels (one per call, or per chunk
    /// on the LM-head path).
    pub kernel_forward: u64,
    /// Forward passes by the composed tensor-op fallback (`f64` logits; half logits a device's
    /// kernels do not read).
    pub composed_forward: u64,
    /// Backward passes that wrote the gradient over the logits' own buffer.
    pub in_place_backward: u64,
    /// Backward passes by the CPU kernels into a new buffer.
    pub copying_backward: u64,
    /// Backward passes by the composed tensor-op fallback.
    pub composed_backward: u64,
    /// Forward passes by the CubeCL kernels (wgpu, CUDA). Their backward passes count as
    /// `in_place_backward` or `copying_backward`, as the CPU kernels'.
    pub cube_forward: u64,
}

/// The current [`FusedPathCounters`].
#[doc(hidden)]
pub fn fused_path_counters() -> FusedPathCounters {
    let stream = StreamId::current().value;
    let counters = COUNTERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let counts = counters.get(&stream).copied().unwrap_or_default();
    FusedPathCounters::from_fn(|path| counts[path as usize])
}

impl FusedPathCounters {
    fn from_fn(read: impl Fn(Path) -> u64) -> Self {
        Self {
            kernel_forward: read(Path::KernelForward),
            composed_forward: read(Path::ComposedForward),
            in_place_backward: read(Path::InPlaceBackward),
            copying_backward: read(Path::CopyingBackward),
            composed_backward: read(Path::ComposedBackward),
            cube_forward: read(Path::CubeForward),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Path, count, fused_path_counters};

    /// What made the CubeCL unit test flaky: another test of the same binary, running the CPU
    /// kernels in parallel, bumped process-wide counts between its two reads. Each thread's
    /// stream sees only its own calls.
    #[test]
    fn another_threads_calls_leave_this_threads_counts_alone() {
        let mine = fused_path_counters();
        let theirs = std::thread::spawn(|| {
            count(Path::CopyingBackward);
            fused_path_counters()
        })
        .join()
        .map_err(|_| "the counting thread panicked")
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(theirs.copying_backward, 1);
        assert_eq!(fused_path_counters(), mine);
        count(Path::InPlaceBackward);
        assert_eq!(
            fused_path_counters().in_place_backward,
            mine.in_place_backward + 1
        );
    }
}
