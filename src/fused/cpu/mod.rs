//! The fused forward and backward on `f32`, `f16` and `bf16` slices, shared by the CPU backends.
//!
//! Row `n` of `logits` (`[N, V]`, row-major) with row-target `y_n`, transformed logits
//! `z' = T(z)` (the identity unless a temperature, scale or softcap is set), `m_n = max_v z'`,
//! `s_n = Σ_v e^{z'_{n,v} − m_n}`, `p = e^{z' − m − log s}`:
//!
//! ```text
//! forward:  ℓ_n = (z'_{n,y_n} − m_n) − log s_n             saves m_n, log s_n
//!           H_n = log s_n − Σ_v e^{z'−m} (z' − m) / s_n       (entropy)
//!           log Σ p² = log Σ_v e^{2(z'−m)} − 2 log s_n,  mean = Σ_v z' / V,
//!           top1 = z'_y ≥ m_n ∧ z'_y > max_{v<y} z'_v
//! backward: dz'_{n,v} = g_n (1[v = y_n] − p_v) − g_H p_v (log p_v + H_n),  dz = dz' · T'(z)
//! ```
//!
//! A row-target outside `[0, V)` marks an invalid row: outputs 0, stats 0, gradient row 0,
//! and its logits are not read. In the backward only negative targets are invalid: `y ≥ V`
//! is a valid row whose target column lies outside the logits given (a block of the
//! vocabulary), so it gets no one-hot term.
//!
//! - Forward: one streaming pass per row, block by block (L1-sized): block max, rescale the
//!   running sums when the max grows (online log-sum-exp, once per block), then add the block's
//!   `e^{z − m}` (and, for the extras, `e·(z − m)`, `e²`). With a transform, each block is
//!   transformed into an L1 buffer first. Each logit is read from memory once.
//! - Backward: one pass reading `z` and writing `dz`; the gradient is the only `[N, V]` buffer.
//! - The plain path, the transform and the extras are separate monomorphisations (const
//!   generics), so what is not requested costs nothing.
//! - `exp` is a branch-free polynomial ([`exp_nonpos`](maths::exp_nonpos)) of plain float and integer ops, so the
//!   loops vectorise; they are compiled three times, for the baseline target, with `avx2,fma`
//!   and with AVX-512 (picked at run time, [`cpu_kernel_isa`]), because x86-64's baseline is
//!   SSE2 only.
//! - Rows are split into one contiguous range per thread of the rayon pool the call runs in
//!   (burn's, or the caller's), run as tasks of that pool ([`threads`]).
//! - The row source is generic ([`Elem`](element::Elem)): `f32` rows are read as they are; `f16`/`bf16` rows
//!   are converted one block at a time into an L1 scratch buffer and everything is accumulated
//!   in `f32`. Outputs and row stats are `f32`; the gradient has the logits' element type, each
//!   block computed in `f32` and rounded once when stored.
//!
//! The files, one concern each:
//!
//! - [`element`]: the element types the kernels read ([`Elem`](element::Elem): `f32`, `f16`, `bf16`).
//! - [`maths`]: the branch-free `exp`/`tanh` polynomials, the vectorised reductions, the
//!   logits transform.
//! - [`rows`]: the forward and backward of one row, and the loops over a range of rows.
//! - [`isa`]: the instruction-set copies of those loops and the run-time choice among them
//!   ([`CpuKernelIsa`], [`cpu_kernel_isa`]).
//! - [`threads`]: the entry points ([`forward`](threads::forward),
//!   [`backward`](threads::backward), [`backward_in_place`](threads::backward_in_place)),
//!   which split the rows into one contiguous range per thread.
//! - [`buffers`]: scratch and output buffers (transparent huge pages on Linux).
//! - [`host`]: the glue between a CPU backend's tensors and the kernels ([`host::HostSlices`]),
//!   and `flex.rs` / `ndarray.rs` its implementations.

mod buffers;
mod element;
#[cfg(feature = "flex")]
mod flex;
mod host;
mod isa;
mod maths;
#[cfg(feature = "ndarray")]
mod ndarray;
mod rows;
mod threads;

pub use isa::{CpuKernelIsa, cpu_kernel_isa};

/// Values per block of the online log-sum-exp (8 KiB of `f32`, L1-resident).
const BLOCK: usize = 2048;
