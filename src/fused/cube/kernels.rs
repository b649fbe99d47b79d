//! The CubeCL kernels of the fused op: one source for every CubeCL runtime (wgpu, CUDA, …).
//!
//! Forward, in two launches:
//! 1. [`forward_partial`]: one cube per `(row, split)`; each unit walks its columns once with an
//!    online max / sum-exp (and the extras' sums) in `f32`, then the cube combines its units
//!    through shared memory. Long rows are split over several cubes so that a few rows with a
//!    huge vocabulary still fill the GPU.
//! 2. [`forward_finish`]: one unit per row combines its splits and writes the outputs.
//!
//! Backward: [`backward`] is elementwise given the row stats, one read and one write per logit.
//!
//! Reductions go through shared memory, not plane (subgroup) operations: lavapipe, which CI
//! runs on, has none, and 8 steps over 256 values per row cost little next to reading the row.
//! `-3.0e38` stands for `−∞` (WGSL cannot spell an infinite literal).

use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// Units per cube.
pub(crate) const CUBE_UNITS: usize = 256;
/// `f32` values per `(row, split)` partial: max, Σe, Σe·d, Σe², Σz, violations of top-1.
pub(crate) const PARTIAL: usize = 6;

/// Below this, `e^x` is 0 in `f32`; clamping keeps `0 · (−∞)` out of the entropy sums.
const LOG_FLOOR: f32 = -200.0;
const NEG_BIG: f32 = -3.0e38;

/// `z' = softcap·tanh(scale·z / softcap) · inv_temperature` (softcap when `cap > 0`).
#[cube]
fn transformed(
    z: f32,
    scale: f32,
    cap: f32,
    inv_t: f32,
    #[comptime] transform: bool,
    #[comptime] softcap: bool,
) -> f32 {
    let mut x = z;
    if comptime!(transform) {
        x *= scale;
        if comptime!(softcap) {
            x = cap * (x / cap).tanh();
        }
        x *= inv_t;
    }
    x
}

/// The valid row-target of `row`, or −1.
#[cube]
fn row_target<I: Int>(targets: &Tensor<I>, row: usize, vocab: u32) -> i32 {
    let t = i32::cast_from(targets[row]);
    let mut out = i32::new(-1);
    if t >= 0 && t < vocab as i32 {
        out = t;
    }
    out
}

/// Partial row sums over the columns `[split·span, min((split+1)·span, V))` of each row.
#[cube(launch, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_partial<F: Float, I: Int>(
    logits: &Tensor<F>,
    targets: &Tensor<I>,
    partials: &mut Tensor<f32>,
    rows: u32,
    vocab: u32,
    splits: u32,
    span: u32,
    scale: f32,
    cap: f32,
    inv_t: f32,
    #[comptime] transform: bool,
    #[comptime] softcap: bool,
    #[comptime] top1: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let cube = CUBE_POS;
    if cube >= rows as usize * splits as usize {
        terminate!();
    }
    let row = cube / splits as usize;
    let split = cube % splits as usize;
    let t = row_target::<I>(targets, row, vocab);
    if t < 0 {
        terminate!();
    }
    let base = row * vocab as usize;
    let start = split * span as usize;
    let end = min(start + span as usize, vocab as usize);
    let label = t as usize;
    let mut z_label = f32::new(0.0);
    if comptime!(top1) {
        z_label = transformed(
            f32::cast_from(logits[base + label]),
            scale,
            cap,
            inv_t,
            transform,
            softcap,
        );
    }

    let mut m = f32::new(NEG_BIG);
    let mut s = f32::new(0.0);
    let mut w = f32::new(0.0);
    let mut q = f32::new(0.0);
    let mut total = f32::new(0.0);
    let mut bad = f32::new(0.0);
    let mut c = start + UNIT_POS_X as usize;
    while c < end {
        let x = transformed(
            f32::cast_from(logits[base + c]),
            scale,
            cap,
            inv_t,
            transform,
            softcap,
        );
        if x > m {
            // New running max: rescale what was summed against the old one.
            let d = max(m - x, LOG_FLOOR);
            let r = (m - x).exp();
            w = (w + s * d) * r;
            s = s * r + 1.0;
            q = q * r * r + 1.0;
            m = x;
        } else {
            let d = x - m;
            let e = d.exp();
            s += e;
            w += e * max(d, LOG_FLOOR);
            q += e * e;
        }
        total += x;
        // The label is the first maximum unless an earlier logit reaches it or a later one
        // passes it.
        let beaten = (c < label && x >= z_label) || (c > label && x > z_label);
        if comptime!(top1) && beaten {
            bad = 1.0;
        }
        c += CUBE_DIM_X as usize;
    }

    let mut sh_m = Shared::<[f32]>::new_slice(CUBE_UNITS);
    let mut sh_s = Shared::<[f32]>::new_slice(CUBE_UNITS);
    let mut sh_w = Shared::<[f32]>::new_slice(CUBE_UNITS);
    let mut sh_q = Shared::<[f32]>::new_slice(CUBE_UNITS);
    let mut sh_total = Shared::<[f32]>::new_slice(CUBE_UNITS);
    let mut sh_bad = Shared::<[f32]>::new_slice(CUBE_UNITS);
    let unit = UNIT_POS_X as usize;
    sh_m[unit] = m;
    sh_s[unit] = s;
    sh_w[unit] = w;
    sh_q[unit] = q;
    sh_total[unit] = total;
    sh_bad[unit] = bad;
    sync_cube();

    let mut stride = usize::new((CUBE_UNITS / 2) as i64);
    while stride > 0 {
        if unit < stride {
            let other = unit + stride;
            let (m1, m2) = (sh_m[unit], sh_m[other]);
            let mm = max(m1, m2);
            let (d1, d2) = (m1 - mm, m2 - mm);
            let (r1, r2) = (d1.exp(), d2.exp());
            let (s1, s2) = (sh_s[unit], sh_s[other]);
            sh_w[unit] = (sh_w[unit] + s1 * max(d1, LOG_FLOOR)) * r1
                + (sh_w[other] + s2 * max(d2, LOG_FLOOR)) * r2;
            sh_s[unit] = s1 * r1 + s2 * r2;
            sh_q[unit] = sh_q[unit] * r1 * r1 + sh_q[other] * r2 * r2;
            sh_m[unit] = mm;
            sh_total[unit] += sh_total[other];
            sh_bad[unit] = max(sh_bad[unit], sh_bad[other]);
        }
        sync_cube();
        stride /= 2;
    }

    if unit == 0 {
        let at = cube * PARTIAL;
        partials[at] = sh_m[0];
        partials[at + 1] = sh_s[0];
        partials[at + 2] = sh_w[0];
        partials[at + 3] = sh_q[0];
        partials[at + 4] = sh_total[0];
        partials[at + 5] = sh_bad[0];
    }
}

/// One unit per row: combines the row's splits into `out [N, K]` (`f32`) and the row stats.
#[cube(launch, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_finish<F: Float, I: Int>(
    logits: &Tensor<F>,
    targets: &Tensor<I>,
    partials: &Tensor<f32>,
    out: &mut Tensor<f32>,
    row_max: &mut Tensor<f32>,
    row_log_sum: &mut Tensor<f32>,
    row_entropy: &mut Tensor<f32>,
    rows: u32,
    vocab: u32,
    splits: u32,
    scale: f32,
    cap: f32,
    inv_t: f32,
    #[comptime] transform: bool,
    #[comptime] softcap: bool,
    #[comptime] entropy: bool,
    #[comptime] log_sum_sq: bool,
    #[comptime] mean: bool,
    #[comptime] top1: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let row = ABSOLUTE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let k = comptime!(1 + entropy as usize + log_sum_sq as usize + mean as usize + top1 as usize);
    let at = row * k;
    let t = row_target::<I>(targets, row, vocab);
    if t < 0 {
        #[unroll]
        for j in 0..k {
            out[at + j] = 0.0;
        }
        row_max[row] = 0.0;
        row_log_sum[row] = 0.0;
        if comptime!(entropy) {
            row_entropy[row] = 0.0;
        }
        terminate!();
    }

    let first = row * splits as usize * PARTIAL;
    let mut m = f32::new(NEG_BIG);
    for i in 0..splits as usize {
        m = max(m, partials[first + i * PARTIAL]);
    }
    let mut s = f32::new(0.0);
    let mut w = f32::new(0.0);
    let mut q = f32::new(0.0);
    let mut total = f32::new(0.0);
    let mut bad = f32::new(0.0);
    for i in 0..splits as usize {
        let p = first + i * PARTIAL;
        let d = partials[p] - m;
        let r = d.exp();
        let si = partials[p + 1];
        s += si * r;
        w += (partials[p + 2] + si * max(d, LOG_FLOOR)) * r;
        q += partials[p + 3] * r * r;
        total += partials[p + 4];
        bad = max(bad, partials[p + 5]);
    }
    let log_s = s.ln();
    let z = transformed(
        f32::cast_from(logits[row * vocab as usize + t as usize]),
        scale,
        cap,
        inv_t,
        transform,
        softcap,
    );
    out[at] = z - m - log_s;
    let mut col = usize::new(1);
    if comptime!(entropy) {
        // H = log s − Σ e^{z'−m} (z' − m) / s
        let h = log_s - w / s;
        out[at + col] = h;
        row_entropy[row] = h;
        col += 1;
    }
    if comptime!(log_sum_sq) {
        out[at + col] = q.ln() - 2.0 * log_s;
        col += 1;
    }
    if comptime!(mean) {
        out[at + col] = total / f32::cast_from(vocab);
        col += 1;
    }
    if comptime!(top1) {
        let mut top = f32::new(1.0);
        if bad > 0.0 {
            top = 0.0;
        }
        out[at + col] = top;
    }
    row_max[row] = m;
    row_log_sum[row] = log_s;
}

/// `dz [N, V]` in the logits' dtype, `block` columns of one row per cube:
/// `dz'_v = g (1[v = y] − p_v) − g_H p_v (log p_v + H)`, times `∂z'_v/∂z_v`; 0 on rows with a
/// negative target; `y ≥ V` has no one-hot term (its column is outside these logits).
///
/// `dz` may be the logits' own buffer (the in-place backward, `as_tensor_alias` in
/// `launch.rs`). That is sound because the kernel is strictly elementwise: the unit that
/// handles column `c` of a row reads `logits[base + c]` and then writes `dz[base + c]`, the same
/// index and no other, and no unit reads a logit at any other index (the label's one-hot term
/// is a comparison of indices, not a read of `z_y`). Every row-wide quantity (max, log-sum,
/// entropy) was computed by the forward and comes in through `row_max`, `row_log_sum` and
/// `row_entropy`, separate buffers, so no invocation reads a logit that another invocation has
/// already overwritten. Each `(row, column)` belongs to exactly one cube (disjoint column
/// blocks) and one unit of it (stride `CUBE_DIM_X`). A change that reads a neighbouring logit
/// or a row reduction over `logits` here must drop the in-place path.
#[cube(launch, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<F: Float, I: Int>(
    logits: &Tensor<F>,
    targets: &Tensor<I>,
    row_max: &Tensor<f32>,
    row_log_sum: &Tensor<f32>,
    row_entropy: &Tensor<f32>,
    grad: &Tensor<f32>,
    dz: &mut Tensor<F>,
    rows: u32,
    vocab: u32,
    blocks: u32,
    grad_columns: u32,
    entropy_column: u32,
    scale: f32,
    cap: f32,
    inv_t: f32,
    #[comptime] transform: bool,
    #[comptime] softcap: bool,
    #[comptime] entropy: bool,
    #[comptime] block: usize,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let cube = CUBE_POS;
    if cube >= rows as usize * blocks as usize {
        terminate!();
    }
    let row = cube / blocks as usize;
    let first = (cube % blocks as usize) * block;
    let end = min(first + block, vocab as usize);
    let base = row * vocab as usize;
    // Negative: an invalid row. At or past `vocab`: a valid row whose target column lies
    // outside this block of the vocabulary (no one-hot term).
    let t = i32::cast_from(targets[row]);
    let mut c = first + UNIT_POS_X as usize;
    if t < 0 {
        while c < end {
            dz[base + c] = F::cast_from(0.0f32);
            c += CUBE_DIM_X as usize;
        }
        terminate!();
    }
    let label = t as usize;
    let g = grad[row * grad_columns as usize];
    let mut g_h = f32::new(0.0);
    let mut h = f32::new(0.0);
    if comptime!(entropy) {
        g_h = grad[row * grad_columns as usize + entropy_column as usize];
        h = row_entropy[row];
    }
    let (m, log_s) = (row_max[row], row_log_sum[row]);
    while c < end {
        let z = f32::cast_from(logits[base + c]);
        let x = transformed(z, scale, cap, inv_t, transform, softcap);
        // Subtract m and log s separately: their f32 sum loses precision at |z| ~ 1e4.
        let log_p = x - m - log_s;
        let p = log_p.exp();
        let mut d = -g * p;
        if comptime!(entropy) {
            d -= g_h * p * (max(log_p, LOG_FLOOR) + h);
        }
        if c == label {
            d += g;
        }
        if comptime!(transform) {
            d = d * scale * inv_t;
            if comptime!(softcap) {
                let th = (scale * z / cap).tanh();
                d *= 1.0 - th * th;
            }
        }
        dz[base + c] = F::cast_from(d);
        c += CUBE_DIM_X as usize;
    }
}
