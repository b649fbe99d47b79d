//! The kernels' entry points: the rows split into one contiguous range per thread, each range
//! run by the instruction-set copy [`super::isa`] picks.

use std::sync::OnceLock;

use super::element::Elem;
use super::isa::{CpuKernelIsa, backward_rows, forward_rows};
use super::rows::{Forward, ForwardPart, Rows, RowsRef};
use crate::fused::{Spec, Transform};

/// Below this many logits, threads cost more than they save.
const PARALLEL_THRESHOLD: usize = 1 << 16;

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
