//! The fused forward and backward on `f32` slices, shared by the CPU backends.
//!
//! Row `n` of `logits` (`[N, V]`, row-major) with label `y_n`, `m_n = max_v z_{n,v}`,
//! `s_n = Σ_v e^{z_{n,v} − m_n}`:
//!
//! ```text
//! forward:  ℓ_n = (z_{n,y_n} − m_n) − log s_n           saves m_n, log s_n
//! backward: dz_{n,v} = g_n · (1[v = y_n] − e^{(z_{n,v} − m_n) − log s_n})
//! ```
//!
//! A label outside `[0, V)` marks an invalid row: `ℓ = 0`, stats 0, gradient row 0, and its
//! logits are not read.
//!
//! - Forward: one streaming pass per row, block by block (L1-sized): block max, rescale the
//!   running sum when the max grows (online log-sum-exp, once per block), then add the block's
//!   `e^{z − m}`. Each logit is read from memory once.
//! - Backward: one pass reading `z` and writing `dz`; the gradient is the only `[N, V]` buffer.
//! - `exp` is a branch-free polynomial ([`exp_nonpos`]) of plain float and integer ops, so the
//!   loops vectorise; they are compiled twice, for the baseline target and with `avx2,fma`
//!   (picked at run time), because x86-64's baseline is SSE2 only.
//! - Rows are split into one contiguous range per core with `std::thread::scope`.

use std::sync::OnceLock;

/// Values per block of the online log-sum-exp (8 KiB of `f32`, L1-resident).
const BLOCK: usize = 2048;
/// Independent accumulators per reduction, so that the loops vectorise.
const LANES: usize = 16;
/// Below this many logits, threads cost more than they save.
const PARALLEL_THRESHOLD: usize = 1 << 16;

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

/// `(m, log s)` of one row in one streaming pass.
#[inline(always)]
fn row_stats<const FMA: bool>(row: &[f32]) -> (f32, f32) {
    let mut m = f32::NEG_INFINITY;
    let mut s = 0.0f32;
    for block in row.chunks(BLOCK) {
        let bm = max_slice(block);
        if bm > m {
            // e^{−inf} = 0 takes care of the first block.
            s *= (m - bm).exp();
            m = bm;
        }
        if m > f32::NEG_INFINITY {
            s += sum_exp_shifted::<FMA>(block, m);
        }
    }
    (m, s.ln())
}

/// `e^{(z − m) − log s}` times `−g`, the softmax part of the gradient.
#[inline(always)]
fn scaled_softmax<const FMA: bool>(z: f32, max: f32, log_sum: f32, neg_g: f32) -> f32 {
    neg_g * exp_nonpos::<FMA>((z - max) - log_sum)
}

/// `out_v = g · (1[v = y] − e^{(z_v − m) − log s})` for one row, where `z` is `source` or,
/// without one, `out` itself (in place). Both loops run `LANES` at a time so they vectorise.
#[inline(always)]
fn row_backward<const FMA: bool>(
    source: Option<&[f32]>,
    out: &mut [f32],
    label: usize,
    (max, log_sum, g): (f32, f32, f32),
) {
    let neg_g = -g;
    let (os, o_rest) = out.as_chunks_mut::<LANES>();
    match source {
        Some(row) => {
            let (zs, z_rest) = row.as_chunks::<LANES>();
            for (z, o) in zs.iter().zip(os) {
                for i in 0..LANES {
                    o[i] = scaled_softmax::<FMA>(z[i], max, log_sum, neg_g);
                }
            }
            for (z, o) in z_rest.iter().zip(o_rest) {
                *o = scaled_softmax::<FMA>(*z, max, log_sum, neg_g);
            }
        }
        None => {
            for o in os {
                for x in o.iter_mut() {
                    *x = scaled_softmax::<FMA>(*x, max, log_sum, neg_g);
                }
            }
            for x in o_rest {
                *x = scaled_softmax::<FMA>(*x, max, log_sum, neg_g);
            }
        }
    }
    if let Some(x) = out.get_mut(label) {
        *x += g;
    }
}

#[inline(always)]
fn label_index(label: i64, vocab: usize) -> Option<usize> {
    usize::try_from(label).ok().filter(|&y| y < vocab)
}

/// Per-row outputs of the forward, each `[N]`.
pub(crate) struct Forward {
    pub(crate) logp: Vec<f32>,
    pub(crate) max: Vec<f32>,
    pub(crate) log_sum: Vec<f32>,
}

/// Per-row inputs of the backward, each `[N]`.
pub(crate) struct Rows {
    pub(crate) labels: Vec<i64>,
    pub(crate) max: Vec<f32>,
    pub(crate) log_sum: Vec<f32>,
    pub(crate) grad: Vec<f32>,
}

impl Rows {
    pub(crate) fn has_len(&self, n: usize) -> bool {
        [
            self.labels.len(),
            self.max.len(),
            self.log_sum.len(),
            self.grad.len(),
        ]
        .iter()
        .all(|&len| len == n)
    }
}

// Row-range drivers, compiled generically and with AVX2 + FMA.

#[inline(always)]
fn forward_rows_generic<const FMA: bool>(
    logits: &[f32],
    vocab: usize,
    labels: &[i64],
    logp: &mut [f32],
    max: &mut [f32],
    log_sum: &mut [f32],
) {
    let rows = logits.chunks_exact(vocab).zip(labels);
    for (((row, &label), lp), (mx, ls)) in rows
        .zip(logp.iter_mut())
        .zip(max.iter_mut().zip(log_sum.iter_mut()))
    {
        let Some(z_y) = label_index(label, vocab).and_then(|y| row.get(y)) else {
            continue; // outputs stay 0
        };
        let (m, l) = row_stats::<FMA>(row);
        *mx = m;
        *ls = l;
        *lp = (z_y - m) - l;
    }
}

/// `out` holds the logits already (`logits = None`, in place) or gets each row copied from
/// `logits` just before it is transformed, while the row is in cache.
#[inline(always)]
fn backward_rows_generic<const FMA: bool>(
    logits: Option<&[f32]>,
    vocab: usize,
    rows: RowsRef<'_>,
    out: &mut [f32],
) {
    for (n, o) in out.chunks_exact_mut(vocab).enumerate() {
        let y = rows.labels.get(n).and_then(|&l| label_index(l, vocab));
        let (Some(y), Some(&m), Some(&ls), Some(&g)) =
            (y, rows.max.get(n), rows.log_sum.get(n), rows.grad.get(n))
        else {
            o.fill(0.0);
            continue;
        };
        // `None`: in place, `o` holds the row's logits.
        let source = match logits.map(|z| z.get(n * vocab..(n + 1) * vocab)) {
            Some(None) => {
                o.fill(0.0); // logits shorter than their rows: never from this crate
                continue;
            }
            source => source.flatten(),
        };
        row_backward::<FMA>(source, o, y, (m, ls, g));
    }
}

/// Borrowed `[N]` slices of a row range.
#[derive(Clone, Copy)]
struct RowsRef<'a> {
    labels: &'a [i64],
    max: &'a [f32],
    log_sum: &'a [f32],
    grad: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_rows_avx2(
    logits: &[f32],
    vocab: usize,
    labels: &[i64],
    logp: &mut [f32],
    max: &mut [f32],
    log_sum: &mut [f32],
) {
    forward_rows_generic::<true>(logits, vocab, labels, logp, max, log_sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_rows_avx2(logits: Option<&[f32]>, vocab: usize, rows: RowsRef<'_>, out: &mut [f32]) {
    backward_rows_generic::<true>(logits, vocab, rows, out)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn forward_rows(
    logits: &[f32],
    vocab: usize,
    labels: &[i64],
    logp: &mut [f32],
    max: &mut [f32],
    log_sum: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available (checked at run time just above).
        return unsafe { forward_rows_avx2(logits, vocab, labels, logp, max, log_sum) };
    }
    forward_rows_generic::<false>(logits, vocab, labels, logp, max, log_sum)
}

fn backward_rows(logits: Option<&[f32]>, vocab: usize, rows: RowsRef<'_>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available (checked at run time just above).
        return unsafe { backward_rows_avx2(logits, vocab, rows, out) };
    }
    backward_rows_generic::<false>(logits, vocab, rows, out)
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

/// Forward over `labels.len()` rows of `logits` (`[N, V]`, row-major).
pub(crate) fn forward(logits: &[f32], vocab: usize, labels: &[i64]) -> Forward {
    let rows = labels.len();
    let mut out = Forward {
        logp: vec![0.0; rows],
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
            .zip(labels.chunks(per))
            .zip(out.logp.chunks_mut(per))
            .zip(out.max.chunks_mut(per).zip(out.log_sum.chunks_mut(per)));
        for (((z, y), lp), (mx, ls)) in parts {
            if per == rows {
                forward_rows(z, vocab, y, lp, mx, ls); // one range: stay on this thread
            } else {
                s.spawn(move || forward_rows(z, vocab, y, lp, mx, ls));
            }
        }
    });
    out
}

/// A zeroed buffer. `vec![0.0; len]` is a calloc: fresh zero pages, no pass of ours. Those
/// pages are faulted in on first write, and at `[B·T, V]` sizes 4 KiB faults cost more than
/// the kernel itself; on Linux, large buffers ask for transparent huge pages (512× fewer faults).
fn zeroed(len: usize) -> Vec<f32> {
    let out = vec![0.0f32; len];
    #[cfg(target_os = "linux")]
    advise_huge_pages(&out);
    out
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(buf: &[f32]) {
    const HUGE_PAGE: usize = 2 << 20;
    let start = buf.as_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let (first, last) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if last >= first + 4 * HUGE_PAGE {
        // SAFETY: `[first, last)` lies inside `buf`'s allocation, and MADV_HUGEPAGE only changes
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

/// Backward: `dlogits [N·V]` for the per-row inputs `rows`, in a new buffer.
pub(crate) fn backward(logits: &[f32], vocab: usize, rows: &Rows) -> Vec<f32> {
    let mut out = zeroed(rows.labels.len() * vocab);
    backward_into(Some(logits), vocab, rows, &mut out);
    out
}

/// Backward written over the logits themselves: no `[N, V]` allocation, for logits that
/// nothing else holds.
pub(crate) fn backward_in_place(logits: &mut [f32], vocab: usize, rows: &Rows) {
    backward_into(None, vocab, rows, logits);
}

fn backward_into(logits: Option<&[f32]>, vocab: usize, rows: &Rows, out: &mut [f32]) {
    let n = rows.labels.len();
    if n == 0 || vocab == 0 {
        return;
    }
    let per = rows_per_thread(n, vocab);
    // `None` splits into `None`s: the in-place case has no separate source.
    let sources: Vec<Option<&[f32]>> = match logits {
        Some(z) => z.chunks(per * vocab).map(Some).collect(),
        None => vec![None; n.div_ceil(per)],
    };
    std::thread::scope(|s| {
        let parts = sources
            .into_iter()
            .zip(out.chunks_mut(per * vocab))
            .zip(rows.labels.chunks(per).zip(rows.grad.chunks(per)))
            .zip(rows.max.chunks(per).zip(rows.log_sum.chunks(per)));
        for (((z, o), (labels, grad)), (max, log_sum)) in parts {
            let part = RowsRef {
                labels,
                max,
                log_sum,
                grad,
            };
            if per == n {
                backward_rows(z, vocab, part, o);
            } else {
                s.spawn(move || backward_rows(z, vocab, part, o));
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

    #[test]
    fn online_stats_match_two_pass_across_blocks() {
        // The max sits in a late block, which forces the rescale.
        let v = 3 * BLOCK + 17;
        let row: Vec<f32> = (0..v)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 + if i == v - 5 { 30.0 } else { 0.0 })
            .collect();
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f64 = row.iter().map(|&x| f64::from(x - m).exp()).sum();
        let (got_m, got_ls) = row_stats::<false>(&row);
        assert_eq!(got_m, m);
        assert!(
            (f64::from(got_ls) - s.ln()).abs() < 1e-6,
            "{got_ls} vs {}",
            s.ln()
        );
    }
}
