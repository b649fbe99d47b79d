//! Buffers of the kernels: the `f32` scratch that half-precision blocks are widened into, and
//! zeroed output buffers backed by transparent huge pages on Linux.

use super::BLOCK;
use super::element::Elem;

/// The scratch buffer that half-precision blocks are widened into (none for `f32`).
pub(super) fn scratch<E: Elem>() -> Vec<f32> {
    if E::NATIVE {
        Vec::new()
    } else {
        vec![0.0; BLOCK]
    }
}

/// A zeroed buffer. `vec![0.0; len]` is a calloc: fresh zero pages, no pass of ours. Those
/// pages are faulted in on first write, and at `[B·T, V]` sizes 4 KiB faults cost more than
/// the kernel itself; on Linux, large buffers ask for transparent huge pages (512× fewer faults).
pub(super) fn zeroed_f32(len: usize) -> Vec<f32> {
    let out = vec![0.0f32; len];
    #[cfg(target_os = "linux")]
    advise_huge_pages(out.as_ptr() as usize, std::mem::size_of_val(out.as_slice()));
    out
}

/// `madvise(MADV_HUGEPAGE)` over the whole huge pages inside `bytes` bytes from `start`, an
/// allocation of ours.
#[cfg(target_os = "linux")]
pub(super) fn advise_huge_pages(start: usize, bytes: usize) {
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
