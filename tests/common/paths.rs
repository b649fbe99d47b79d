//! Which implementation of the fused log-prob op ran, from the calling thread's path counters.

use burn::tensor::Device;
use burn_preference::diagnostics::{FusedPathCounters, fused_path_counters};

/// The calling thread's counter increments while `f` runs. The device is synchronised before
/// and after: under burn's `fusion` the kernels run (and count) when the stream executes, not
/// when called.
pub fn counted<R>(device: &Device, f: impl FnOnce() -> R) -> (R, FusedPathCounters) {
    device.sync().expect("device sync");
    let before = fused_path_counters();
    let out = f();
    device.sync().expect("device sync");
    let after = fused_path_counters();
    let delta = FusedPathCounters {
        kernel_forward: after.kernel_forward - before.kernel_forward,
        composed_forward: after.composed_forward - before.composed_forward,
        in_place_backward: after.in_place_backward - before.in_place_backward,
        copying_backward: after.copying_backward - before.copying_backward,
        composed_backward: after.composed_backward - before.composed_backward,
        cube_forward: after.cube_forward - before.cube_forward,
    };
    (out, delta)
}
