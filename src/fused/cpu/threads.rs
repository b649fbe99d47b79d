//! The kernels' entry points: the rows split into one contiguous range per thread, each range
//! run by the instruction-set copy [`super::isa`] picks.
//!
//! The ranges run as tasks of the rayon pool the call is made in: burn's global pool (the
//! same `rayon`, so the same pool its ops run on), or the pool of the caller's task when the
//! caller runs the op from inside one. No thread is started beside that pool, so calls made
//! from rayon tasks (or alongside burn's ops) do not oversubscribe the cores. The split
//! depends only on the row count and the pool's thread count, and each row is computed the
//! same whichever thread runs it, so the results do not depend on the schedule.

use super::element::Elem;
use super::isa::{CpuKernelIsa, backward_rows, forward_rows};
use super::rows::{Forward, ForwardPart, Rows, RowsRef};
use crate::fused::{Spec, Transform};

/// Below this many logits, threads cost more than they save.
const PARALLEL_THRESHOLD: usize = 1 << 16;

/// Rows per part for `rows × vocab` logits: all of them below [`PARALLEL_THRESHOLD`], else one
/// contiguous range per thread of the current rayon pool.
fn rows_per_thread(rows: usize, vocab: usize) -> usize {
    if rows * vocab < PARALLEL_THRESHOLD {
        return rows.max(1);
    }
    let threads = rayon::current_num_threads();
    rows.div_ceil(threads.clamp(1, rows.max(1)))
}

/// Runs `run` on every part: a lone part on this thread, several as tasks of the current rayon
/// pool (burn's, or the caller's), returning when all are done.
fn run_parts<P: Send>(parts: impl Iterator<Item = P> + Send, split: bool, run: impl Fn(P) + Sync) {
    if !split {
        parts.for_each(run);
        return;
    }
    let run = &run;
    rayon::scope(|s| {
        for part in parts {
            s.spawn(move |_| run(part));
        }
    });
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
    let parts = logits
        .chunks(per * vocab)
        .zip(targets.chunks(per))
        .zip(out.out.chunks_mut(per * k))
        .zip(out.max.chunks_mut(per).zip(out.log_sum.chunks_mut(per)))
        .map(|(((logits, targets), out), (max, log_sum))| ForwardPart {
            logits,
            targets,
            out,
            max,
            log_sum,
        });
    run_parts(parts, per < rows, |part| {
        #[cfg(test)]
        tests::note_part(part.logits.as_ptr().addr());
        forward_rows(isa, part, vocab, spec);
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
    let parts = sources
        .into_iter()
        .zip(out.chunks_mut(per * vocab))
        .enumerate()
        .map(|(i, (z, o))| {
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
            (z, o, part)
        });
    run_parts(parts, per < n, |(z, o, part)| {
        #[cfg(test)]
        tests::note_part(z.map_or(o.as_ptr(), <[E]>::as_ptr).addr());
        backward_rows(isa, z, vocab, (part, transform), o);
    });
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, PoisonError};

    use rayon::prelude::*;

    use super::{PARALLEL_THRESHOLD, backward, backward_in_place, forward};
    use crate::fused::cpu::isa::cpu_kernel_isa;
    use crate::fused::cpu::rows::Rows;
    use crate::fused::{Extras, Spec, Transform};

    /// Every part run so far, by any test: the address of its first logit (the gradient's first
    /// value in place), and the index of the rayon worker that ran it (`None`: a
    /// thread of no rayon pool).
    static PARTS: Mutex<Vec<(usize, Option<usize>)>> = Mutex::new(Vec::new());

    pub(super) fn note_part(first: usize) {
        let index = rayon::current_thread_index();
        PARTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((first, index));
    }

    /// Kernel calls made from the tasks of a 2-thread rayon pool (as from burn's ops, or a
    /// caller's `par_iter`) split their rows into 2 parts, each run by a worker of that pool:
    /// no thread of their own beside it (which std::thread::scope would start).
    #[test]
    fn parts_run_on_the_callers_rayon_pool() {
        let threads = 2;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (n, v, calls) = (40, 2053, 4);
        assert!(n * v >= PARALLEL_THRESHOLD, "large enough to split");
        let inputs: Vec<Vec<f32>> = (0..calls)
            .map(|c| {
                (0..n * v)
                    .map(|i| ((i * 7919 + c * 13) % 1013) as f32 / 97.0 - 5.0)
                    .collect()
            })
            .collect();
        let mut in_place = inputs.clone();
        let targets: Vec<i64> = (0..n as i64)
            .map(|i| if i % 9 == 4 { -1 } else { i * 31 % v as i64 })
            .collect();
        let spec = Spec {
            transform: Transform::IDENTITY,
            extras: Extras::default(),
        };
        // Parts noted before now ran on buffers freed already: not these, which stay alive.
        let first_new = PARTS.lock().unwrap_or_else(PoisonError::into_inner).len();
        pool.install(|| {
            inputs
                .par_iter()
                .zip(in_place.par_iter_mut())
                .for_each(|(z, dz)| {
                    let isa = cpu_kernel_isa();
                    let f = forward(isa, z, v, &targets, &spec);
                    let rows = Rows {
                        targets: targets.clone(),
                        max: f.max,
                        log_sum: f.log_sum,
                        grad: vec![1.0; n],
                        grad_entropy: Vec::new(),
                        entropy: Vec::new(),
                    };
                    let copied = backward(isa, z, v, &rows, &spec.transform);
                    backward_in_place(isa, dz, v, &rows, &spec.transform);
                    assert_eq!(copied, *dz);
                });
        });
        let ours: Vec<_> = inputs
            .iter()
            .chain(&in_place)
            .map(|b| b.as_ptr_range())
            .map(|r| r.start.addr()..r.end.addr())
            .collect();
        let parts: Vec<Option<usize>> = PARTS.lock().unwrap_or_else(PoisonError::into_inner)
            [first_new..]
            .iter()
            .filter(|(first, _)| ours.iter().any(|r| r.contains(first)))
            .map(|&(_, worker)| worker)
            .collect();
        // Forward, backward and in-place backward of each call, `threads` parts each.
        assert_eq!(parts.len(), 3 * calls * threads, "{parts:?}");
        assert!(
            parts.iter().all(|w| w.is_some_and(|i| i < threads)),
            "every part on a worker of the caller's pool: {parts:?}"
        );
    }
}
