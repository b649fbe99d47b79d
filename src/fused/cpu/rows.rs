//! One row forward ([`row_forward`]) and backward ([`row_backward`]), block by block, and the
//! loops over a range of rows ([`forward_rows_generic`], [`backward_rows_generic`]) that
//! [`super::isa`] compiles once per instruction set.

use super::BLOCK;
use super::buffers::scratch;
use super::element::{BlockOp, Elem};
use super::maths::{
    Affine, LANES, exp_nonpos, floor_log, max_slice, mul_add, sum_exp_extra, sum_exp_shifted,
    sum_slice, transform_block,
};
use crate::fused::{Extras, Spec, Transform};

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
pub(super) struct ForwardPart<'a, E> {
    pub(super) logits: &'a [E],
    pub(super) targets: &'a [i64],
    pub(super) out: &'a mut [f32],
    pub(super) max: &'a mut [f32],
    pub(super) log_sum: &'a mut [f32],
}

// Row-range drivers, compiled generically and with AVX2 + FMA.

#[inline(always)]
pub(super) fn forward_rows_generic<E: Elem, const FMA: bool, const TR: bool, const EX: bool>(
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
pub(super) struct RowsRef<'a> {
    pub(super) targets: &'a [i64],
    pub(super) max: &'a [f32],
    pub(super) log_sum: &'a [f32],
    pub(super) grad: &'a [f32],
    pub(super) grad_entropy: &'a [f32],
    pub(super) entropy: &'a [f32],
}

/// `out` holds the logits already (`logits = None`, in place) or gets each row computed from
/// `logits` while the row is in cache.
#[inline(always)]
pub(super) fn backward_rows_generic<E: Elem, const FMA: bool, const TR: bool, const ENT: bool>(
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

#[cfg(test)]
mod tests {
    use crate::fused::cpu::BLOCK;
    use crate::fused::cpu::isa::cpu_kernel_isa;
    use crate::fused::cpu::threads::forward;
    use crate::fused::{Extras, Spec, Transform};

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
}
