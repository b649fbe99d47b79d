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
//! - `exp` is a branch-free polynomial ([`exp_nonpos`]) of plain float and integer ops, so the
//!   loops vectorise; they are compiled three times, for the baseline target, with `avx2,fma`
//!   and with AVX-512 (picked at run time, [`cpu_kernel_isa`]), because x86-64's baseline is
//!   SSE2 only.
//! - Rows are split into one contiguous range per core with `std::thread::scope`.
//! - The row source is generic ([`Elem`]): `f32` rows are read as they are; `f16`/`bf16` rows
//!   are converted one block at a time into an L1 scratch buffer and everything is accumulated
//!   in `f32`. Outputs and row stats are `f32`; the gradient has the logits' element type, each
//!   block computed in `f32` and rounded once when stored.

use std::sync::OnceLock;

use burn::tensor::{bf16, f16};
use half::slice::HalfFloatSliceExt;

use super::{Extras, Spec, Transform};

/// Values per block of the online log-sum-exp (8 KiB of `f32`, L1-resident).
const BLOCK: usize = 2048;
/// Independent accumulators per reduction, so that the loops vectorise.
const LANES: usize = 16;
/// Below this many logits, threads cost more than they save.
const PARALLEL_THRESHOLD: usize = 1 << 16;
/// Below this, `e^x` is 0 in `f32`; clamping `x` there keeps `e^x · x` at 0 where `x = −∞`.
const LOG_FLOOR: f32 = -200.0;

/// An element type of the logits the kernels read. Every formula is written once, on `f32`
/// blocks: `f32` rows are those blocks already, half-precision rows are converted one block
/// (at most [`BLOCK`] values) at a time into a scratch buffer, so no `f32` copy of a row, let
/// alone of the `[N, V]` logits, ever exists.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// Whether the rows are `f32` already (no scratch buffer needed).
    const NATIVE: bool;
    const ZERO: Self;

    fn to_f32(self) -> f32;

    /// `src` as `f32`: `src` itself when [`NATIVE`](Self::NATIVE), else converted into
    /// `buf[..src.len()]` (`buf` at least as long as `src`).
    fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];

    /// Runs `f(source, work)`, after which `work` is stored as `dst`'s new contents. Native:
    /// `work` is `dst` itself and `source` is `src` (`None`: `dst` holds the inputs, in place).
    /// Otherwise `work` is `buf`, holding `src` (or `dst`'s own values) widened, `source` is
    /// `None`, and `work` is rounded into `dst` afterwards: one rounding per value.
    fn update(dst: &mut [Self], src: Option<&[Self]>, buf: &mut [f32], f: impl BlockOp);

    /// A zeroed buffer of `len` values (see [`zeroed_f32`]).
    fn zeroed(len: usize) -> Vec<Self>;
}

impl Elem for f32 {
    const NATIVE: bool = true;
    const ZERO: Self = 0.0;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn widen<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }

    #[inline(always)]
    fn update(dst: &mut [f32], src: Option<&[f32]>, _buf: &mut [f32], f: impl BlockOp) {
        f.run(src, dst)
    }

    fn zeroed(len: usize) -> Vec<f32> {
        zeroed_f32(len)
    }
}

/// `run(source, work)` on one `f32` block, for [`Elem::update`]: `work` is computed from
/// `source`, or from its own contents without one. A trait with an `#[inline(always)]` method
/// rather than a closure, so that the body is inlined into the AVX2 copies of the callers.
pub(crate) trait BlockOp {
    fn run(self, source: Option<&[f32]>, work: &mut [f32]);
}

/// `f16` and `bf16`: `half`'s slice conversions (F16C on x86-64 where the CPU has it).
macro_rules! half_elem {
    ($half:ty) => {
        impl Elem for $half {
            const NATIVE: bool = false;
            const ZERO: Self = <$half>::ZERO;

            #[inline(always)]
            fn to_f32(self) -> f32 {
                <$half>::to_f32(self)
            }

            #[inline(always)]
            fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
                let wide = &mut buf[..src.len()];
                src.convert_to_f32_slice(wide);
                wide
            }

            #[inline(always)]
            fn update(dst: &mut [Self], src: Option<&[Self]>, buf: &mut [f32], f: impl BlockOp) {
                let work = &mut buf[..dst.len()];
                src.unwrap_or(&*dst).convert_to_f32_slice(work);
                f.run(None, work);
                dst.convert_from_f32_slice(work);
            }

            fn zeroed(len: usize) -> Vec<Self> {
                // No calloc for these types: reserve, ask for huge pages, then zero.
                let mut out = Vec::with_capacity(len);
                #[cfg(target_os = "linux")]
                advise_huge_pages(
                    out.spare_capacity_mut().as_ptr() as usize,
                    len * std::mem::size_of::<Self>(),
                );
                out.resize(len, Self::ZERO);
                out
            }
        }
    };
}
half_elem!(f16);
half_elem!(bf16);

/// `a·b + c`, fused into one instruction in the copies compiled with FMA.
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x` in `f32` for `x ≤ 0` (every exponent here is `z − m` or `z − m − log s`), within
/// ~2 ulp; 0 below −87.3, where `e^x` leaves the normal range.
///
/// Cody–Waite reduction `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, Cephes' degree-6 polynomial for
/// `e^r`, and `2^n` written straight into the exponent bits. Rounding uses the `1.5·2^23` trick,
/// which needs no SSE4.1 `roundps`. Only selects and arithmetic, so loops over it vectorise;
/// restricting to `x ≤ 0` drops the overflow handling of a general `exp`.
#[inline(always)]
pub(crate) fn exp_nonpos<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    const LO: f32 = -87.336_55;

    // NaN fails the comparison, so it propagates through `xc`.
    let xc = if x < LO { LO } else { x };
    let shifted = mul_add::<FMA>(xc, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = mul_add::<FMA>(n, -LN2_HI, xc);
    let r = mul_add::<FMA>(n, -LN2_LO, r);

    let mut p = 1.987_569_1e-4_f32;
    p = mul_add::<FMA>(p, r, 1.398_199_9e-3);
    p = mul_add::<FMA>(p, r, 8.333_452e-3);
    p = mul_add::<FMA>(p, r, 4.166_579_6e-2);
    p = mul_add::<FMA>(p, r, 1.666_666_5e-1);
    p = mul_add::<FMA>(p, r, 0.5);
    let er = mul_add::<FMA>(p, r * r, r + 1.0);

    // The low mantissa bits of `shifted` hold n ∈ [−126, 0] above 0x4B40_0000.
    let ni = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let y = er * f32::from_bits(((ni + 127) << 23) as u32);
    if x < LO { 0.0 } else { y }
}

#[inline(always)]
fn max_slice(xs: &[f32]) -> f32 {
    let (chunks, rest) = xs.as_chunks::<LANES>();
    let mut acc = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    rest.iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `Σ e^{x − m}`.
#[inline(always)]
fn sum_exp_shifted<const FMA: bool>(xs: &[f32], m: f32) -> f32 {
    let (chunks, rest) = xs.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp_nonpos::<FMA>(c[i] - m);
        }
    }
    let tail: f32 = rest.iter().map(|&x| exp_nonpos::<FMA>(x - m)).sum();
    tail + acc.iter().sum::<f32>()
}

/// `Σ x`.
#[inline(always)]
fn sum_slice(xs: &[f32]) -> f32 {
    let (chunks, rest) = xs.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    rest.iter().sum::<f32>() + acc.iter().sum::<f32>()
}

#[inline(always)]
fn floor_log(x: f32) -> f32 {
    if x < LOG_FLOOR { LOG_FLOOR } else { x }
}

/// `(Σ e^{x − m}, Σ e^{x − m}(x − m), Σ e^{2(x − m)})`, for the entropy and `log Σ p²`.
#[inline(always)]
fn sum_exp_extra<const FMA: bool>(xs: &[f32], m: f32) -> (f32, f32, f32) {
    let (chunks, rest) = xs.as_chunks::<LANES>();
    let (mut s, mut w, mut q) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - m;
            let e = exp_nonpos::<FMA>(d);
            s[i] += e;
            w[i] = mul_add::<FMA>(e, floor_log(d), w[i]);
            q[i] = mul_add::<FMA>(e, e, q[i]);
        }
    }
    let (mut ts, mut tw, mut tq) = (0.0f32, 0.0f32, 0.0f32);
    for &x in rest {
        let d = x - m;
        let e = exp_nonpos::<FMA>(d);
        ts += e;
        tw += e * floor_log(d);
        tq += e * e;
    }
    (
        ts + s.iter().sum::<f32>(),
        tw + w.iter().sum::<f32>(),
        tq + q.iter().sum::<f32>(),
    )
}

/// `tanh x` in `f32` within a few ulp, branch-free so that loops over it vectorise: Cephes'
/// odd polynomial for `|x| < 0.625`, `(1 − e^{−2|x|}) / (1 + e^{−2|x|})` above (no cancellation
/// there), the sign copied back.
#[inline(always)]
pub(crate) fn tanh<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let e = exp_nonpos::<FMA>(-2.0 * a);
    let large = (1.0 - e) / (1.0 + e);
    let z = x * x;
    let mut p = -5.704_988_7e-3_f32;
    p = mul_add::<FMA>(p, z, 2.063_909e-2);
    p = mul_add::<FMA>(p, z, -5.373_971_6e-2);
    p = mul_add::<FMA>(p, z, 1.333_144_2e-1);
    p = mul_add::<FMA>(p, z, -3.333_328e-1);
    let small = mul_add::<FMA>(p * z, a, a);
    let t = if a < 0.625 { small } else { large };
    t.copysign(x)
}

/// The transform's constants: `z' = tanh(pre·z)·post` with a softcap, `z' = (z·pre)·post`
/// without; `∂z'/∂z = chain·(1 − tanh²)` or `chain`.
#[derive(Clone, Copy)]
struct Affine {
    softcap: bool,
    pre: f32,
    post: f32,
    chain: f32,
}

impl Affine {
    fn new(t: &Transform) -> Self {
        match t.softcap {
            Some(cap) => Self {
                softcap: true,
                pre: t.scale / cap,
                post: cap * t.inv_temperature,
                chain: t.scale * t.inv_temperature,
            },
            None => Self {
                softcap: false,
                pre: t.scale,
                post: t.inv_temperature,
                chain: t.scale * t.inv_temperature,
            },
        }
    }

    /// `(z', ∂z'/∂z)`.
    #[inline(always)]
    fn apply<const FMA: bool>(&self, z: f32) -> (f32, f32) {
        if self.softcap {
            let t = tanh::<FMA>(z * self.pre);
            (t * self.post, self.chain * (1.0 - t * t))
        } else {
            ((z * self.pre) * self.post, self.chain)
        }
    }
}

/// `dst = T(src)`; the branch on the softcap sits outside the loops.
#[inline(always)]
fn transform_block<const FMA: bool>(src: &[f32], dst: &mut [f32], a: &Affine) {
    if a.softcap {
        for (d, &z) in dst.iter_mut().zip(src) {
            *d = tanh::<FMA>(z * a.pre) * a.post;
        }
    } else {
        for (d, &z) in dst.iter_mut().zip(src) {
            *d = (z * a.pre) * a.post;
        }
    }
}

/// Forward of one valid row: writes `out[K]` (log-prob, then the requested extras) and returns
/// `(m, log s)`. `buf` is a `BLOCK`-long scratch buffer when `TR`, `wide` one when the rows are
/// not `f32`.
#[inline(always)]
fn row_forward<E: Elem, const FMA: bool, const TR: bool, const EX: bool>(
    row: &[E],
    y: usize,
    (affine, extras): (&Affine, &Extras),
    (buf, wide): (&mut [f32], &mut [f32]),
    out: &mut [f32],
) -> (f32, f32) {
    let (mut m, mut s, mut w, mut q) = (f32::NEG_INFINITY, 0.0f32, 0.0f32, 0.0f32);
    let (mut z_sum, mut before, mut z_y) = (0.0f32, f32::NEG_INFINITY, 0.0f32);
    for (i, raw) in row.chunks(BLOCK).enumerate() {
        let raw = E::widen(raw, wide);
        let block: &[f32] = if TR {
            let b = &mut buf[..raw.len()];
            transform_block::<FMA>(raw, b, affine);
            b
        } else {
            raw
        };
        let start = i * BLOCK;
        if let Some(&z) = y.checked_sub(start).and_then(|local| block.get(local)) {
            z_y = z;
        }
        if extras.mean {
            z_sum += sum_slice(block);
        }
        if extras.top1 && start < y {
            let end = (y - start).min(block.len());
            before = before.max(max_slice(&block[..end]));
        }
        let bm = max_slice(block);
        if bm > m {
            // e^{−inf} = 0 takes care of the first block.
            let r = (m - bm).exp();
            if EX && s > 0.0 {
                // Σ e^{z−m'}(z − m') = r·(Σ e^{z−m}(z − m) + (m − m')·Σ e^{z−m})
                w = r * mul_add::<FMA>(m - bm, s, w);
                q *= r * r;
            }
            s *= r;
            m = bm;
        }
        if m > f32::NEG_INFINITY {
            if EX {
                let (bs, bw, bq) = sum_exp_extra::<FMA>(block, m);
                s += bs;
                w += bw;
                q += bq;
            } else {
                s += sum_exp_shifted::<FMA>(block, m);
            }
        }
    }
    let log_s = s.ln();
    let mut put = {
        let mut column = 0;
        move |out: &mut [f32], value: f32| {
            if let Some(slot) = out.get_mut(column) {
                *slot = value;
            }
            column += 1;
        }
    };
    put(out, (z_y - m) - log_s);
    if extras.entropy {
        put(out, log_s - w / s);
    }
    if extras.log_sum_sq {
        put(out, q.ln() - 2.0 * log_s);
    }
    if extras.mean {
        put(out, z_sum / row.len() as f32);
    }
    if extras.top1 {
        put(out, f32::from(u8::from(z_y >= m && z_y > before)));
    }
    (m, log_s)
}

/// Per-row upstream values of the backward.
#[derive(Clone, Copy)]
struct RowGrad {
    max: f32,
    log_sum: f32,
    g: f32,
    g_entropy: f32,
    entropy: f32,
}

/// `dz'_v` without the one-hot term: `−g p_v − g_H p_v (log p_v + H)`.
#[inline(always)]
fn grad_elem<const FMA: bool, const ENT: bool>(z: f32, r: &RowGrad) -> f32 {
    let log_p = (z - r.max) - r.log_sum;
    let p = exp_nonpos::<FMA>(log_p);
    let o = -r.g * p;
    if ENT {
        mul_add::<FMA>(-r.g_entropy * p, floor_log(log_p) + r.entropy, o)
    } else {
        o
    }
}

/// `w_v = dz_v` without the one-hot term for one block, where `z` is `source` or, without one,
/// `w` itself (in place). The loops run `LANES` at a time so they vectorise; with a transform,
/// through two L1 buffers (`z'` and `∂z'/∂z`), which also frees the in-place case from aliasing.
#[inline(always)]
fn grad_block<const FMA: bool, const TR: bool, const ENT: bool>(
    source: Option<&[f32]>,
    w: &mut [f32],
    r: &RowGrad,
    (affine, buf): (&Affine, &mut [f32]),
) {
    if TR {
        let (zs, chains) = buf.split_at_mut(BLOCK);
        let src: &[f32] = source.unwrap_or(&*w);
        for ((z, c), &x) in zs.iter_mut().zip(chains.iter_mut()).zip(src) {
            (*z, *c) = affine.apply::<FMA>(x);
        }
        for ((o, &z), &c) in w.iter_mut().zip(zs.iter()).zip(chains.iter()) {
            *o = grad_elem::<FMA, ENT>(z, r) * c;
        }
    } else {
        let (os, o_rest) = w.as_chunks_mut::<LANES>();
        match source {
            Some(row) => {
                let (zs, z_rest) = row.as_chunks::<LANES>();
                for (z, o) in zs.iter().zip(os) {
                    for i in 0..LANES {
                        o[i] = grad_elem::<FMA, ENT>(z[i], r);
                    }
                }
                for (z, o) in z_rest.iter().zip(o_rest) {
                    *o = grad_elem::<FMA, ENT>(*z, r);
                }
            }
            None => {
                for o in os {
                    for x in o.iter_mut() {
                        *x = grad_elem::<FMA, ENT>(*x, r);
                    }
                }
                for x in o_rest {
                    *x = grad_elem::<FMA, ENT>(*x, r);
                }
            }
        }
    }
}

/// `out_v = dz_v` for one row, where `z` is `source` or, without one, `out` itself (in place),
/// block by block ([`grad_block`]); the one-hot term `g·∂z'_y/∂z_y` is added in `f32` before
/// the block is stored. `buf` is `2·BLOCK` long when `TR`, `wide` `BLOCK` long when the rows
/// are not `f32`.
#[inline(always)]
fn row_backward<E: Elem, const FMA: bool, const TR: bool, const ENT: bool>(
    source: Option<&[E]>,
    out: &mut [E],
    y: usize,
    r: &RowGrad,
    (affine, buf, wide): (&Affine, &mut [f32], &mut [f32]),
) {
    // Read before `out` is overwritten (in place, it holds the logits).
    let raw_y = source.map_or_else(|| out.get(y).copied(), |row| row.get(y).copied());
    let chain_y = match raw_y {
        Some(z) if TR => affine.apply::<FMA>(z.to_f32()).1,
        _ => 1.0,
    };
    for (i, o) in out.chunks_mut(BLOCK).enumerate() {
        let len = o.len();
        let src = source.map(|row| row.get(i * BLOCK..i * BLOCK + len).unwrap_or(&[]));
        let step = GradStep::<FMA, TR, ENT> {
            r,
            affine,
            buf: &mut *buf,
            label: y.checked_sub(i * BLOCK).filter(|&local| local < len),
            chain_y,
        };
        E::update(o, src, wide, step);
    }
}

/// One block of [`row_backward`]: [`grad_block`], then the one-hot term at `label` (the
/// label's index within the block, if there).
struct GradStep<'a, const FMA: bool, const TR: bool, const ENT: bool> {
    r: &'a RowGrad,
    affine: &'a Affine,
    buf: &'a mut [f32],
    label: Option<usize>,
    chain_y: f32,
}

impl<const FMA: bool, const TR: bool, const ENT: bool> BlockOp for GradStep<'_, FMA, TR, ENT> {
    #[inline(always)]
    fn run(self, source: Option<&[f32]>, w: &mut [f32]) {
        grad_block::<FMA, TR, ENT>(source, w, self.r, (self.affine, self.buf));
        if let Some(x) = self.label.and_then(|local| w.get_mut(local)) {
            *x = mul_add::<FMA>(self.r.g, self.chain_y, *x);
        }
    }
}

#[inline(always)]
fn label_index(label: i64, vocab: usize) -> Option<usize> {
    usize::try_from(label).ok().filter(|&y| y < vocab)
}

/// Outputs of the forward: `out [N, K]` row-major, and the per-row stats `[N]`.
pub(crate) struct Forward {
    pub(crate) out: Vec<f32>,
    pub(crate) max: Vec<f32>,
    pub(crate) log_sum: Vec<f32>,
}

/// Per-row inputs of the backward, each `[N]`; `grad_entropy` and `entropy` are empty when
/// the entropy carries no gradient.
pub(crate) struct Rows {
    pub(crate) targets: Vec<i64>,
    pub(crate) max: Vec<f32>,
    pub(crate) log_sum: Vec<f32>,
    pub(crate) grad: Vec<f32>,
    pub(crate) grad_entropy: Vec<f32>,
    pub(crate) entropy: Vec<f32>,
}

impl Rows {
    pub(crate) fn has_len(&self, n: usize) -> bool {
        let extra = [self.grad_entropy.len(), self.entropy.len()];
        [
            self.targets.len(),
            self.max.len(),
            self.log_sum.len(),
            self.grad.len(),
        ]
        .iter()
        .all(|&len| len == n)
            && (extra == [0, 0] || extra == [n, n])
    }
}

/// One thread's share of the forward.
struct ForwardPart<'a, E> {
    logits: &'a [E],
    targets: &'a [i64],
    out: &'a mut [f32],
    max: &'a mut [f32],
    log_sum: &'a mut [f32],
}

// Row-range drivers, compiled generically and with AVX2 + FMA.

#[inline(always)]
fn forward_rows_generic<E: Elem, const FMA: bool, const TR: bool, const EX: bool>(
    part: ForwardPart<'_, E>,
    vocab: usize,
    spec: &Spec,
) {
    let affine = Affine::new(&spec.transform);
    let k = spec.extras.columns();
    let mut buf = if TR { vec![0.0f32; BLOCK] } else { Vec::new() };
    let mut wide = scratch::<E>();
    let rows = part.logits.chunks_exact(vocab).zip(part.targets);
    for (((row, &target), out), (mx, ls)) in rows
        .zip(part.out.chunks_exact_mut(k))
        .zip(part.max.iter_mut().zip(part.log_sum.iter_mut()))
    {
        let Some(y) = label_index(target, vocab) else {
            continue; // outputs stay 0
        };
        let scratch = (buf.as_mut_slice(), wide.as_mut_slice());
        let (m, l) = row_forward::<E, FMA, TR, EX>(row, y, (&affine, &spec.extras), scratch, out);
        *mx = m;
        *ls = l;
    }
}

/// Borrowed `[N]` slices of a row range.
#[derive(Clone, Copy)]
struct RowsRef<'a> {
    targets: &'a [i64],
    max: &'a [f32],
    log_sum: &'a [f32],
    grad: &'a [f32],
    grad_entropy: &'a [f32],
    entropy: &'a [f32],
}

/// `out` holds the logits already (`logits = None`, in place) or gets each row computed from
/// `logits` while the row is in cache.
#[inline(always)]
fn backward_rows_generic<E: Elem, const FMA: bool, const TR: bool, const ENT: bool>(
    logits: Option<&[E]>,
    vocab: usize,
    (rows, transform): (RowsRef<'_>, &Transform),
    out: &mut [E],
) {
    let affine = Affine::new(transform);
    let mut buf = if TR {
        vec![0.0f32; 2 * BLOCK]
    } else {
        Vec::new()
    };
    let mut wide = scratch::<E>();
    for (n, o) in out.chunks_exact_mut(vocab).enumerate() {
        // Backward only: a target at or past `vocab` is a valid row whose target column lies
        // outside these logits (a block of the vocabulary); negative ones are invalid.
        let y = rows.targets.get(n).and_then(|&l| usize::try_from(l).ok());
        let (Some(y), Some(&max), Some(&log_sum), Some(&g)) =
            (y, rows.max.get(n), rows.log_sum.get(n), rows.grad.get(n))
        else {
            o.fill(E::ZERO);
            continue;
        };
        let (g_entropy, entropy) = if ENT {
            let pick = |xs: &[f32]| xs.get(n).copied().unwrap_or(0.0);
            (pick(rows.grad_entropy), pick(rows.entropy))
        } else {
            (0.0, 0.0)
        };
        // `None`: in place, `o` holds the row's logits.
        let source = match logits.map(|z| z.get(n * vocab..(n + 1) * vocab)) {
            Some(None) => {
                o.fill(E::ZERO); // logits shorter than their rows: never from this crate
                continue;
            }
            source => source.flatten(),
        };
        let r = RowGrad {
            max,
            log_sum,
            g,
            g_entropy,
            entropy,
        };
        row_backward::<E, FMA, TR, ENT>(source, o, y, &r, (&affine, &mut buf, &mut wide));
    }
}

/// The instruction set the CPU kernels run with, picked once per process from what the CPU
/// has (at most the level `BURN_PREFERENCE_CPU_ISA` names: `baseline`, `avx2` or `avx512`).
///
/// The kernels are the same source compiled three times: for x86-64's baseline (SSE2), with
/// AVX2 + FMA (8 lanes), and with AVX-512 (16 lanes). Other architectures run the baseline
/// copy, which the compiler vectorises for their own baseline (NEON on aarch64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuKernelIsa {
    /// The target's baseline instructions only.
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 F, BW, DQ and VL (with AVX2 and FMA).
    Avx512,
}

impl CpuKernelIsa {
    /// The best level this CPU supports, ignoring any cap.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Self::Avx512;
            }
            if avx2 {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }

    fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "baseline" => Some(Self::Baseline),
            "avx2" => Some(Self::Avx2),
            "avx512" => Some(Self::Avx512),
            _ => None,
        }
    }
}

/// The instruction set the CPU kernels use in this process: [`CpuKernelIsa::detected`], capped
/// by the environment variable `BURN_PREFERENCE_CPU_ISA` when it is set (read once; a value
/// other than `baseline`, `avx2` or `avx512` is ignored). Benchmarks use the cap to compare
/// levels on one machine.
pub fn cpu_kernel_isa() -> CpuKernelIsa {
    static ISA: OnceLock<CpuKernelIsa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = CpuKernelIsa::detected();
        std::env::var("BURN_PREFERENCE_CPU_ISA")
            .ok()
            .and_then(|name| CpuKernelIsa::parse(&name))
            .map_or(detected, |cap| cap.min(detected))
    })
}

/// One `#[target_feature]` copy of a row loop per instruction set, and the run-time choice
/// among them (the copies differ only in what the compiler may emit).
macro_rules! isa_dispatch {
    (
        fn $name:ident<E, $c1:ident, $c2:ident>($($arg:ident: $ty:ty),* $(,)?) => $generic:ident
    ) => {
        fn $name<E: Elem, const $c1: bool, const $c2: bool>(
            isa: CpuKernelIsa,
            $($arg: $ty),*
        ) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2<E: Elem, const $c1: bool, const $c2: bool>($($arg: $ty),*) {
                    $generic::<E, true, $c1, $c2>($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512<E: Elem, const $c1: bool, const $c2: bool>($($arg: $ty),*) {
                    $generic::<E, true, $c1, $c2>($($arg),*)
                }
                // Capped by what this CPU has, so the features each copy enables are present.
                match isa.min(CpuKernelIsa::detected()) {
                    // SAFETY: AVX-512 F/BW/DQ/VL, AVX2 and FMA were detected at run time.
                    CpuKernelIsa::Avx512 => return unsafe { avx512::<E, $c1, $c2>($($arg),*) },
                    // SAFETY: AVX2 and FMA were detected at run time.
                    CpuKernelIsa::Avx2 => return unsafe { avx2::<E, $c1, $c2>($($arg),*) },
                    CpuKernelIsa::Baseline => {}
                }
            }
            let _ = isa;
            $generic::<E, false, $c1, $c2>($($arg),*)
        }
    };
}

isa_dispatch!(fn forward_rows_for<E, TR, EX>(
    part: ForwardPart<'_, E>,
    vocab: usize,
    spec: &Spec,
) => forward_rows_generic);
isa_dispatch!(fn backward_rows_for<E, TR, ENT>(
    logits: Option<&[E]>,
    vocab: usize,
    rows: (RowsRef<'_>, &Transform),
    out: &mut [E],
) => backward_rows_generic);

fn forward_rows<E: Elem>(isa: CpuKernelIsa, part: ForwardPart<'_, E>, vocab: usize, spec: &Spec) {
    let tr = !spec.transform.is_identity();
    let ex = spec.extras.entropy || spec.extras.log_sum_sq;
    match (tr, ex) {
        (false, false) => forward_rows_for::<E, false, false>(isa, part, vocab, spec),
        (false, true) => forward_rows_for::<E, false, true>(isa, part, vocab, spec),
        (true, false) => forward_rows_for::<E, true, false>(isa, part, vocab, spec),
        (true, true) => forward_rows_for::<E, true, true>(isa, part, vocab, spec),
    }
}

fn backward_rows<E: Elem>(
    isa: CpuKernelIsa,
    logits: Option<&[E]>,
    vocab: usize,
    rows: (RowsRef<'_>, &Transform),
    out: &mut [E],
) {
    let tr = !rows.1.is_identity();
    let ent = !rows.0.grad_entropy.is_empty();
    match (tr, ent) {
        (false, false) => backward_rows_for::<E, false, false>(isa, logits, vocab, rows, out),
        (false, true) => backward_rows_for::<E, false, true>(isa, logits, vocab, rows, out),
        (true, false) => backward_rows_for::<E, true, false>(isa, logits, vocab, rows, out),
        (true, true) => backward_rows_for::<E, true, true>(isa, logits, vocab, rows, out),
    }
}

/// Rows per thread for `rows × vocab` logits.
fn rows_per_thread(rows: usize, vocab: usize) -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    if rows * vocab < PARALLEL_THRESHOLD {
        return rows.max(1);
    }
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rows.div_ceil(cores.clamp(1, rows.max(1)))
}

/// Forward over `targets.len()` rows of `logits` (`[N, V]`, row-major, any [`Elem`]) with the
/// kernels compiled for `isa` (at most what the CPU has); the outputs are `f32`.
pub(crate) fn forward<E: Elem>(
    isa: CpuKernelIsa,
    logits: &[E],
    vocab: usize,
    targets: &[i64],
    spec: &Spec,
) -> Forward {
    let rows = targets.len();
    let k = spec.extras.columns();
    let mut out = Forward {
        out: vec![0.0; rows * k],
        max: vec![0.0; rows],
        log_sum: vec![0.0; rows],
    };
    if rows == 0 || vocab == 0 {
        return out;
    }
    let per = rows_per_thread(rows, vocab);
    std::thread::scope(|s| {
        let parts = logits
            .chunks(per * vocab)
            .zip(targets.chunks(per))
            .zip(out.out.chunks_mut(per * k))
            .zip(out.max.chunks_mut(per).zip(out.log_sum.chunks_mut(per)));
        for (((logits, targets), out), (max, log_sum)) in parts {
            let part = ForwardPart {
                logits,
                targets,
                out,
                max,
                log_sum,
            };
            if per == rows {
                forward_rows(isa, part, vocab, spec); // one range: stay on this thread
            } else {
                s.spawn(move || forward_rows(isa, part, vocab, spec));
            }
        }
    });
    out
}

/// The scratch buffer that half-precision blocks are widened into (none for `f32`).
fn scratch<E: Elem>() -> Vec<f32> {
    if E::NATIVE {
        Vec::new()
    } else {
        vec![0.0; BLOCK]
    }
}

/// A zeroed buffer. `vec![0.0; len]` is a calloc: fresh zero pages, no pass of ours. Those
/// pages are faulted in on first write, and at `[B·T, V]` sizes 4 KiB faults cost more than
/// the kernel itself; on Linux, large buffers ask for transparent huge pages (512× fewer faults).
fn zeroed_f32(len: usize) -> Vec<f32> {
    let out = vec![0.0f32; len];
    #[cfg(target_os = "linux")]
    advise_huge_pages(out.as_ptr() as usize, std::mem::size_of_val(out.as_slice()));
    out
}

/// `madvise(MADV_HUGEPAGE)` over the whole huge pages inside `bytes` bytes from `start`, an
/// allocation of ours.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, bytes: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    let end = start + bytes;
    let (first, last) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if last >= first + 4 * HUGE_PAGE {
        // SAFETY: `[first, last)` lies inside the caller's allocation, and MADV_HUGEPAGE only changes
        // how the kernel backs those pages, never their contents. A failure is harmless.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            )
        };
    }
}

/// Backward: `dlogits [N·V]` of the logits' element type for the per-row inputs `rows`, in a
/// new buffer.
pub(crate) fn backward<E: Elem>(
    isa: CpuKernelIsa,
    logits: &[E],
    vocab: usize,
    rows: &Rows,
    transform: &Transform,
) -> Vec<E> {
    let mut out = E::zeroed(rows.targets.len() * vocab);
    backward_into(isa, Some(logits), vocab, (rows, transform), &mut out);
    out
}

/// Backward written over the logits themselves: no `[N, V]` allocation, for logits that
/// nothing else holds.
pub(crate) fn backward_in_place<E: Elem>(
    isa: CpuKernelIsa,
    logits: &mut [E],
    vocab: usize,
    rows: &Rows,
    transform: &Transform,
) {
    backward_into(isa, None, vocab, (rows, transform), logits);
}

fn backward_into<E: Elem>(
    isa: CpuKernelIsa,
    logits: Option<&[E]>,
    vocab: usize,
    (rows, transform): (&Rows, &Transform),
    out: &mut [E],
) {
    let n = rows.targets.len();
    if n == 0 || vocab == 0 {
        return;
    }
    let per = rows_per_thread(n, vocab);
    // `None` splits into `None`s: the in-place case has no separate source.
    let sources: Vec<Option<&[E]>> = match logits {
        Some(z) => z.chunks(per * vocab).map(Some).collect(),
        None => vec![None; n.div_ceil(per)],
    };
    // Empty entropy slices stay empty in every part.
    fn split(xs: &[f32], i: usize, per: usize) -> &[f32] {
        xs.get(i * per..((i + 1) * per).min(xs.len()))
            .unwrap_or(&[])
    }
    std::thread::scope(|s| {
        let parts = sources
            .into_iter()
            .zip(out.chunks_mut(per * vocab))
            .enumerate();
        for (i, (z, o)) in parts {
            let part = RowsRef {
                targets: rows
                    .targets
                    .get(i * per..((i + 1) * per).min(n))
                    .unwrap_or(&[]),
                max: split(&rows.max, i, per),
                log_sum: split(&rows.log_sum, i, per),
                grad: split(&rows.grad, i, per),
                grad_entropy: split(&rows.grad_entropy, i, per),
                entropy: split(&rows.entropy, i, per),
            };
            if per == n {
                backward_rows(isa, z, vocab, (part, transform), o);
            } else {
                s.spawn(move || backward_rows(isa, z, vocab, (part, transform), o));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_exp<const FMA: bool>() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let got = f64::from(exp_nonpos::<FMA>(x));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst} (fma {FMA})");
        assert_eq!(exp_nonpos::<FMA>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos::<FMA>(-100.0), 0.0);
        assert!(exp_nonpos::<FMA>(f32::NAN).is_nan());
        assert_eq!(exp_nonpos::<FMA>(0.0), 1.0);
    }

    #[test]
    fn exp_matches_std() {
        check_exp::<false>();
        check_exp::<true>(); // software `mul_add` where the CPU lacks FMA: slow but exact
    }

    fn check_tanh<const FMA: bool>() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x <= 12.0 {
            let got = f64::from(tanh::<FMA>(x));
            let want = f64::from(x).tanh();
            worst = worst.max(((got - want) / want.abs().max(1e-30)).abs());
            x += 0.000_71;
        }
        assert!(worst < 1e-6, "worst relative error {worst} (fma {FMA})");
        assert_eq!(tanh::<FMA>(f32::INFINITY), 1.0);
        assert_eq!(tanh::<FMA>(f32::NEG_INFINITY), -1.0);
        assert!(tanh::<FMA>(f32::NAN).is_nan());
        assert_eq!(tanh::<FMA>(0.0), 0.0);
    }

    #[test]
    fn tanh_matches_std() {
        check_tanh::<false>();
        check_tanh::<true>();
    }

    /// Half-precision rows widen to exactly the `f32` values the `f32` kernels would read, in
    /// the same order: outputs and stats bit-identical to the `f32` kernels on the widened
    /// values, and the gradient their `f32` gradient rounded once, in place or copying.
    fn check_half_rows<E: Elem + PartialEq + std::fmt::Debug>(
        narrow: impl Fn(f32) -> E,
        spec: &Spec,
    ) {
        // Several blocks per row, a tail, and enough logits for the multi-threaded split.
        let (n, v) = (40, 2 * BLOCK + 37);
        let raw: Vec<E> = (0..n * v)
            .map(|i| narrow(((i * 7919) % 1013) as f32 / 97.0 - 5.0))
            .collect();
        let wide: Vec<f32> = raw.iter().map(|&x| x.to_f32()).collect();
        let targets: Vec<i64> = (0..n as i64)
            .map(|i| if i % 7 == 3 { -1 } else { i * 613 % v as i64 })
            .collect();
        let (half, full) = (
            forward(cpu_kernel_isa(), &raw, v, &targets, spec),
            forward(cpu_kernel_isa(), &wide, v, &targets, spec),
        );
        assert_eq!(half.out, full.out);
        assert_eq!(half.max, full.max);
        assert_eq!(half.log_sum, full.log_sum);
        let entropy = spec.extras.column_of().entropy;
        let k = spec.extras.columns();
        let rows = Rows {
            targets: targets.clone(),
            max: full.max.clone(),
            log_sum: full.log_sum.clone(),
            grad: (0..n).map(|i| 1.0 - i as f32 / 17.0).collect(),
            grad_entropy: entropy.map_or(Vec::new(), |_| vec![0.4; n]),
            entropy: entropy.map_or(Vec::new(), |c| {
                full.out.iter().skip(c).step_by(k).copied().collect()
            }),
        };
        let expected: Vec<E> = backward(cpu_kernel_isa(), &wide, v, &rows, &spec.transform)
            .into_iter()
            .map(&narrow)
            .collect();
        assert_eq!(
            backward(cpu_kernel_isa(), &raw, v, &rows, &spec.transform),
            expected
        );
        let mut in_place = raw.clone();
        backward_in_place(cpu_kernel_isa(), &mut in_place, v, &rows, &spec.transform);
        assert_eq!(in_place, expected);
    }

    #[test]
    fn half_rows_read_as_their_widened_values() {
        let all = Extras {
            entropy: true,
            log_sum_sq: true,
            mean: true,
            top1: true,
        };
        let softcap = Transform {
            scale: 1.3,
            softcap: Some(4.0),
            inv_temperature: 1.0 / 0.7,
        };
        for spec in [
            Spec {
                transform: Transform::IDENTITY,
                extras: Extras::default(),
            },
            Spec {
                transform: Transform::IDENTITY,
                extras: all,
            },
            Spec {
                transform: softcap,
                extras: all,
            },
        ] {
            check_half_rows(f16::from_f32, &spec);
            check_half_rows(bf16::from_f32, &spec);
        }
    }

    #[test]
    fn online_stats_match_two_pass_across_blocks() {
        // The max sits in a late block, which forces the rescale.
        let v = 3 * BLOCK + 17;
        let row: Vec<f32> = (0..v)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 + if i == v - 5 { 30.0 } else { 0.0 })
            .collect();
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f64 = row.iter().map(|&x| f64::from(x - m).exp()).sum();
        let spec = Spec {
            transform: Transform::IDENTITY,
            extras: Extras::default(),
        };
        let f = forward(cpu_kernel_isa(), &row, v, &[0], &spec);
        let (got_m, got_ls) = (f.max[0], f.log_sum[0]);
        assert_eq!(got_m, m);
        assert!(
            (f64::from(got_ls) - s.ln()).abs() < 1e-6,
            "{got_ls} vs {}",
            s.ln()
        );
    }

    /// Each instruction-set copy of the kernels this CPU can run, called directly, against an
    /// f64 reference: log-prob, entropy, `log Σ p²`, mean and top-1 in the forward, the
    /// gradient of `Σ g·ℓ + g_H·H` in the backward, with a softcapped, scaled, tempered row.
    #[test]
    fn every_instruction_set_matches_an_f64_reference() {
        let (n, v) = (5, 3 * BLOCK + 37);
        let transform = Transform {
            scale: 1.3,
            softcap: Some(6.0),
            inv_temperature: 1.0 / 0.7,
        };
        let spec = Spec {
            transform,
            extras: Extras {
                entropy: true,
                log_sum_sq: true,
                mean: true,
                top1: true,
            },
        };
        let logits: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7919 + 13) % 2003) as f32 / 150.0 - 6.5)
            .collect();
        // Row 1's target is its first maximum (top-1 = 1); row 3 is ignored.
        let argmax_1 = (0..v).fold(0, |best, c| {
            if logits[v + c] > logits[v + best] {
                c
            } else {
                best
            }
        });
        let targets = [
            7,
            argmax_1 as i64,
            (v - 1) as i64,
            -100,
            2 * BLOCK as i64 + 1,
        ];
        let (g, g_h) = ([1.0f32, -0.5, 0.25, 0.0, 2.0], 0.3f32);

        // f64 reference of T(z) = softcap · tanh(scale · z / softcap) / temperature.
        let (scale, cap, inv_t) = (1.3f64, 6.0f64, 1.0f64 / 0.7);
        let tz = |z: f32| cap * (scale * f64::from(z) / cap).tanh() * inv_t;
        let dtz = |z: f32| scale * inv_t * (1.0 - (scale * f64::from(z) / cap).tanh().powi(2));
        struct Want {
            out: [f64; 5],
            grad: Vec<f64>,
        }
        let want: Vec<Option<Want>> = (0..n)
            .map(|r| {
                let y = usize::try_from(targets[r]).ok()?;
                let zr: Vec<f64> = logits[r * v..(r + 1) * v].iter().map(|&z| tz(z)).collect();
                let m = zr.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + zr.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
                let logp: Vec<f64> = zr.iter().map(|z| z - lse).collect();
                let h = -logp.iter().map(|l| l.exp() * l).sum::<f64>();
                let lss = logp.iter().map(|l| (2.0 * l).exp()).sum::<f64>().ln();
                let mean = zr.iter().sum::<f64>() / v as f64;
                let top1 = f64::from(u8::from(zr[y] >= m && zr[..y].iter().all(|&z| z < zr[y])));
                let grad = (0..v)
                    .map(|c| {
                        let p = logp[c].exp();
                        let onehot = f64::from(u8::from(c == y));
                        let dz =
                            f64::from(g[r]) * (onehot - p) - f64::from(g_h) * p * (logp[c] + h);
                        dz * dtz(logits[r * v + c])
                    })
                    .collect();
                Some(Want {
                    out: [logp[y], h, lss, mean, top1],
                    grad,
                })
            })
            .collect();

        let levels = [
            CpuKernelIsa::Baseline,
            CpuKernelIsa::Avx2,
            CpuKernelIsa::Avx512,
        ];
        let runnable: Vec<_> = levels
            .into_iter()
            .filter(|&l| l <= CpuKernelIsa::detected())
            .collect();
        for isa in runnable {
            let f = forward(isa, &logits, v, &targets, &spec);
            let k = spec.extras.columns();
            assert_eq!(k, 5);
            for (r, w) in want.iter().enumerate() {
                let got = &f.out[r * k..(r + 1) * k];
                let Some(w) = w else {
                    assert_eq!(got, &[0.0; 5], "{isa:?} ignored row {r}");
                    continue;
                };
                for (c, (&got, &want)) in got.iter().zip(&w.out).enumerate() {
                    let err = (f64::from(got) - want).abs() / want.abs().max(1.0);
                    assert!(err < 2e-5, "{isa:?} row {r} column {c}: {got} vs {want}");
                }
            }
            let rows = Rows {
                targets: targets.to_vec(),
                max: f.max.clone(),
                log_sum: f.log_sum.clone(),
                grad: g.to_vec(),
                grad_entropy: vec![g_h; n],
                entropy: f.out.iter().skip(1).step_by(k).copied().collect(),
            };
            let copied = backward(isa, &logits, v, &rows, &transform);
            let mut in_place = logits.clone();
            backward_in_place(isa, &mut in_place, v, &rows, &transform);
            assert_eq!(copied, in_place, "{isa:?}");
            for (r, w) in want.iter().enumerate() {
                let got = &copied[r * v..(r + 1) * v];
                let Some(w) = w else {
                    assert!(got.iter().all(|&d| d == 0.0), "{isa:?} ignored row {r}");
                    continue;
                };
                let worst = got
                    .iter()
                    .zip(&w.grad)
                    .map(|(&d, &want)| (f64::from(d) - want).abs())
                    .fold(0.0f64, f64::max);
                assert!(
                    worst < 1e-6,
                    "{isa:?} row {r}: worst gradient error {worst}"
                );
            }
        }
    }

    #[test]
    fn the_detected_instruction_set_is_what_the_cpu_has() {
        let detected = CpuKernelIsa::detected();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            assert_eq!(
                detected >= CpuKernelIsa::Avx512,
                has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512dq")
                    && has!("avx512vl")
                    && has!("avx2")
                    && has!("fma")
            );
            assert_eq!(detected >= CpuKernelIsa::Avx2, has!("avx2") && has!("fma"));
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(detected, CpuKernelIsa::Baseline);
        assert!(cpu_kernel_isa() <= detected);
        assert_eq!(CpuKernelIsa::parse(" AVX512 "), Some(CpuKernelIsa::Avx512));
        assert_eq!(CpuKernelIsa::parse("sse9"), None);
    }
}
