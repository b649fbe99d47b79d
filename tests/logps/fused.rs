//! The fused log-prob path (what `SequenceLogps` runs) against the straightforward tensor-op
//! path kept as the oracle (`forward_unfused`): values and gradients to 1e-5 relative, on every
//! device, with ignored and out-of-range labels, masks, both shifts and extreme logits.

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_preference::diagnostics::FusedPathCounters;
use burn_preference::logps::{
    LogpReduction, SequenceLogps, SequenceLogpsConfig, SequenceLogpsOutput,
};

use crate::common::inputs::Lcg;
use crate::common::paths::counted;
use crate::common::reference::as_f64;
use crate::common::{assert_close, autodiff_devices, devices, floats, ints, to_vec};

const REL: f64 = 1e-5;

/// `(forward passes by the device's own kernels, by the composed fallback)`: the CPU slice
/// kernels on flex and ndarray, the CubeCL kernels on wgpu and CUDA; each device must take its
/// own.
fn forwards(name: &str, paths: &FusedPathCounters) -> (u64, u64) {
    let own = match name {
        "wgpu" | "cuda" => (paths.cube_forward, paths.kernel_forward),
        _ => (paths.kernel_forward, paths.cube_forward),
    };
    assert_eq!(own.1, 0, "[{name}] another device's kernels ran: {paths:?}");
    (own.0, paths.composed_forward)
}

/// Deterministic inputs: normal-ish logits times `scale`, labels in `[0, V)` with every fifth
/// ignored (−100), one out of range (`V`) and, for `T > 2`, a masked-out position per row.
struct Inputs {
    dims: [usize; 3],
    logits: Vec<f32>,
    labels: Vec<i64>,
    mask: Vec<i64>,
}

impl Inputs {
    fn new(dims: [usize; 3], scale: f32, seed: u64) -> Self {
        let [b, t, v] = dims;
        let mut rng = Lcg::new(seed);
        let logits = (0..b * t * v).map(|_| rng.next_normalish(scale)).collect();
        let mut labels: Vec<i64> = (0..b * t)
            .map(|i| match i % 5 {
                3 => -100,
                _ => (rng.next_uniform() * v as f64) as i64,
            })
            .collect();
        if b * t > 1 {
            labels[1] = v as i64; // out of range: ignored, never used as an index
        }
        let mask = (0..b * t)
            .map(|i| i64::from(t <= 2 || i % t != 2))
            .collect();
        Self {
            dims,
            logits,
            labels,
            mask,
        }
    }
}

fn gatherer(shift: bool, reduction: LogpReduction) -> SequenceLogps {
    SequenceLogpsConfig::new()
        .with_value_checks(false) // the inputs hold an out-of-range label on purpose
        .with_shift(shift)
        .with_reduction(reduction)
        .with_return_token_logps(true)
        .init()
        .expect("valid config")
}

/// Runs the fused path (`fused = true`) or the oracle; the logits gradient comes from a
/// weighted sum of the sequence log-probs, so each row gets a different upstream gradient.
fn run(
    inputs: &Inputs,
    gatherer: &SequenceLogps,
    masked: bool,
    fused: bool,
    device: &Device,
) -> (SequenceLogpsOutput, Option<Vec<f32>>) {
    let [b, t, _] = inputs.dims;
    let logits = floats(inputs.logits.clone(), inputs.dims, device);
    let logits = if device.is_autodiff() {
        logits.require_grad()
    } else {
        logits
    };
    let labels = ints(inputs.labels.clone(), [b, t], device);
    let mask = masked.then(|| ints(inputs.mask.clone(), [b, t], device));
    let out = if fused {
        gatherer.forward(logits.clone(), labels, mask)
    } else {
        gatherer.forward_unfused(logits.clone(), labels, mask)
    }
    .expect("valid inputs");
    if !device.is_autodiff() {
        return (out, None);
    }
    let weights: Vec<f32> = (0..b).map(|i| 1.5 - i as f32 * 0.7).collect();
    let weighted = out.logps.clone() * floats(weights, [b], device);
    let grads = weighted.sum().backward();
    let grad = logits.grad(&grads).map(to_vec);
    (out, grad)
}

fn compare(name: &str, dims: [usize; 3], scale: f32, device: &Device) {
    let inputs = Inputs::new(dims, scale, dims.iter().product::<usize>() as u64);
    for (shift, masked, reduction) in [
        (true, false, LogpReduction::Sum),
        (false, true, LogpReduction::Mean),
        (true, true, LogpReduction::LengthPower(0.5)),
    ] {
        let what = format!("{dims:?}×{scale} shift {shift} mask {masked} {reduction:?}");
        let g = gatherer(shift, reduction);
        let (fused, fused_grad) = run(&inputs, &g, masked, true, device);
        let (oracle, oracle_grad) = run(&inputs, &g, masked, false, device);
        let tokens = |o: &SequenceLogpsOutput| o.token_logps.clone().map(to_vec);
        let (Some(fused_tokens), Some(oracle_tokens)) = (tokens(&fused), tokens(&oracle)) else {
            panic!("[{name}] {what}: token log-probs requested");
        };
        assert_close(
            name,
            &format!("tokens {what}"),
            &fused_tokens,
            &as_f64(&oracle_tokens),
            REL,
            0.0,
        );
        assert_close(
            name,
            &format!("logps {what}"),
            &to_vec(fused.logps),
            &as_f64(&to_vec(oracle.logps)),
            REL,
            0.0,
        );
        assert_eq!(
            to_vec(fused.counts),
            to_vec(oracle.counts),
            "[{name}] counts {what}"
        );
        if let (Some(a), Some(b)) = (&fused_grad, &oracle_grad) {
            // Entries are ~1/V; the absolute floor only absorbs exact zeros vs ~1e-45 noise.
            assert_close(name, &format!("grad {what}"), a, &as_f64(b), REL, 1e-12);
            // Ignored positions (label −100 at flat index 3) get exactly zero gradient.
            let [_, t, v] = dims;
            let ignored = if shift { 2 } else { 3 };
            if ignored < t {
                assert!(a[ignored * v..(ignored + 1) * v].iter().all(|&x| x == 0.0));
            }
        } else {
            assert!(
                fused_grad.is_none() && oracle_grad.is_none(),
                "[{name}] {what}: gradients"
            );
        }
    }
}

/// Tiny, a vocabulary that is not a multiple of the vector width, several online-max blocks
/// (V > 2048) and enough work for the multi-threaded path.
const SHAPES: &[([usize; 3], f32)] = &[
    ([1, 2, 1], 1.0),
    ([2, 3, 7], 1.0),
    ([3, 5, 33], 3.0),
    ([2, 4, 5000], 2.0),
    ([4, 9, 2100], 8.0),
];

#[test]
fn values_match_the_oracle_on_every_device() {
    for (name, device) in devices() {
        for &(dims, scale) in SHAPES {
            compare(name, dims, scale, &device);
        }
    }
}

#[test]
fn values_and_gradients_match_the_oracle_on_every_autodiff_device() {
    for (name, device) in autodiff_devices() {
        for &(dims, scale) in SHAPES {
            compare(name, dims, scale, &device);
        }
    }
}

#[test]
fn extreme_logits_match_the_oracle() {
    // ±1e4: an f32 log-sum-exp rounded to ~1e-3 would show up in the gradient.
    for (name, device) in autodiff_devices() {
        compare(name, [2, 4, 40], 1e4 / 6.0, &device);
        let dims = [1, 3, 4];
        let logits = vec![
            1e4,
            0.0,
            -1e4,
            1e4, //
            -1e4,
            -1e4,
            -1e4 + 1.0,
            -1e4, //
            3.0,
            1e4,
            1e4,
            -1e4,
        ];
        let inputs = Inputs {
            dims,
            logits,
            labels: vec![0, 2, 1],
            mask: vec![1; 3],
        };
        let g = gatherer(false, LogpReduction::Sum);
        let (fused, grad) = run(&inputs, &g, false, true, &device);
        let (oracle, oracle_grad) = run(&inputs, &g, false, false, &device);
        let values = to_vec(fused.logps);
        assert!(values.iter().all(|x| x.is_finite()), "[{name}] {values:?}");
        assert_close(
            name,
            "extreme logps",
            &values,
            &as_f64(&to_vec(oracle.logps)),
            REL,
            0.0,
        );
        let (Some(grad), Some(oracle_grad)) = (grad, oracle_grad) else {
            panic!("[{name}] no gradient");
        };
        assert_close(
            name,
            "extreme grad",
            &grad,
            &as_f64(&oracle_grad),
            REL,
            1e-12,
        );
    }
}

#[test]
fn non_contiguous_logits_are_handled() {
    // A transposed view: the CPU kernels copy it once instead of reading it in place.
    for (name, device) in autodiff_devices() {
        let logits =
            Tensor::<3>::random([3, 6, 5], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2); // [3, 5, 6], strided
        let labels = Tensor::<2, Int>::from_ints(
            [[1, 2, 3, 4, 5], [0, -100, 2, 2, 1], [5, 5, 5, 0, 0]],
            &device,
        );
        let g = gatherer(true, LogpReduction::Sum);
        let fused = g
            .forward(logits.clone(), labels.clone(), None)
            .expect("valid");
        let oracle = g.forward_unfused(logits, labels, None).expect("valid");
        assert_close(
            name,
            "strided logps",
            &to_vec(fused.logps),
            &as_f64(&to_vec(oracle.logps)),
            REL,
            0.0,
        );
    }
}

/// Fused LM head (`forward_linear`) against the oracle on the materialised logits
/// `hidden · weightᵀ`: log-probs and the gradients of `hidden` and `weight`.
fn compare_linear(name: &str, dims: [usize; 3], width: usize, chunk_rows: usize, device: &Device) {
    let [b, t, v] = dims;
    let seed = (dims.iter().product::<usize>() * width) as u64;
    let rows = Inputs::new(dims, 1.0, seed); // labels and mask
    let hidden_values = Inputs::new([b, t, width], 1.0, seed + 1).logits;
    let weight_values = Inputs::new([1, v, width], 0.5, seed + 2).logits;
    // Every row labelled (no shift, no ignored label) takes the path without row selection.
    let all_labelled: Vec<i64> = (0..b * t).map(|i| (i * 7 % v) as i64).collect();
    for (shift, masked, labelled) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
    ] {
        let labels = if labelled {
            &all_labelled
        } else {
            &rows.labels
        };
        let what =
            format!("linear {dims:?} H {width} chunk {chunk_rows} shift {shift} mask {masked}");
        let g = SequenceLogpsConfig::new()
            .with_value_checks(false) // the inputs hold an out-of-range label on purpose
            .with_shift(shift)
            .with_chunk_rows(chunk_rows)
            .init()
            .expect("valid config");
        let run = |fused: bool| {
            let hidden = floats(hidden_values.clone(), [b, t, width], device);
            let weight = floats(weight_values.clone(), [v, width], device);
            let (hidden, weight) = if device.is_autodiff() {
                (hidden.require_grad(), weight.require_grad())
            } else {
                (hidden, weight)
            };
            let labels = ints(labels.clone(), [b, t], device);
            let mask = masked.then(|| ints(rows.mask.clone(), [b, t], device));
            let out = if fused {
                g.forward_linear(hidden.clone(), weight.clone(), labels, mask)
            } else {
                let logits = hidden
                    .clone()
                    .matmul(weight.clone().transpose().unsqueeze_dim(0));
                g.forward_unfused(logits, labels, mask)
            }
            .expect("valid inputs");
            let logps = to_vec(out.logps.clone());
            if !device.is_autodiff() {
                return (logps, None);
            }
            let weights: Vec<f32> = (0..b).map(|i| 1.5 - i as f32 * 0.7).collect();
            let grads = (out.logps * floats(weights, [b], device)).sum().backward();
            let grad = |x: Option<Tensor<3>>| x.map(to_vec).expect("a gradient");
            let hidden_grad = grad(hidden.grad(&grads));
            let weight_grad = grad(weight.grad(&grads).map(|w| w.unsqueeze()));
            (logps, Some((hidden_grad, weight_grad)))
        };
        let (fused, fused_grads) = run(true);
        let (oracle, oracle_grads) = run(false);
        assert_close(
            name,
            &format!("logps {what}"),
            &fused,
            &as_f64(&oracle),
            REL,
            1e-6,
        );
        if let (Some((dh, dw)), Some((oracle_dh, oracle_dw))) = (fused_grads, oracle_grads) {
            // The chunked products sum in another order than one big product: ~1e-7 noise.
            assert_close(
                name,
                &format!("d hidden {what}"),
                &dh,
                &as_f64(&oracle_dh),
                REL,
                1e-6,
            );
            assert_close(
                name,
                &format!("d weight {what}"),
                &dw,
                &as_f64(&oracle_dw),
                REL,
                1e-6,
            );
        }
    }
}

#[test]
fn fused_lm_head_matches_the_materialised_logits() {
    let devices = devices().into_iter().chain(autodiff_devices());
    for (name, device) in devices {
        // One row per chunk, chunks that do not divide B·T, one chunk for everything, and a
        // vocabulary over several online-max blocks (2048).
        compare_linear(name, [2, 5, 37], 6, 1, &device);
        compare_linear(name, [2, 5, 37], 6, 3, &device);
        compare_linear(name, [3, 4, 2100], 16, 5, &device);
        compare_linear(name, [3, 4, 50], 8, 1000, &device);
        // More vocabulary rows than the weight gradient updates per product (8192).
        compare_linear(name, [1, 3, 8300], 4, 2, &device);
    }
}

#[test]
fn fused_lm_head_trains_only_what_requires_a_gradient() {
    // A frozen LM head (or frozen hidden states) gets no gradient; the other one is unchanged.
    for (name, device) in autodiff_devices() {
        let (b, t, h, v) = (2, 4, 5, 11);
        let rows = Inputs::new([b, t, v], 1.0, 7);
        let hidden = floats(Inputs::new([b, t, h], 1.0, 8).logits, [b, t, h], &device);
        let weight = floats(Inputs::new([1, v, h], 1.0, 9).logits, [v, h], &device);
        let labels = ints(rows.labels, [b, t], &device);
        let g = SequenceLogpsConfig::new()
            .with_value_checks(false) // the inputs hold an out-of-range label on purpose
            .with_chunk_rows(3)
            .init()
            .expect("valid");
        let both = (hidden.clone().require_grad(), weight.clone().require_grad());
        let grads = g
            .forward_linear(both.0.clone(), both.1.clone(), labels.clone(), None)
            .expect("valid")
            .logps
            .sum()
            .backward();
        let full_dh = both.0.grad(&grads).map(to_vec).expect("d hidden");
        let full_dw = both.1.grad(&grads).map(to_vec).expect("d weight");

        let frozen_head = hidden.clone().require_grad();
        let grads = g
            .forward_linear(frozen_head.clone(), weight.clone(), labels.clone(), None)
            .expect("valid")
            .logps
            .sum()
            .backward();
        let dh = frozen_head.grad(&grads).map(to_vec).expect("d hidden");
        assert_close(
            name,
            "d hidden, frozen head",
            &dh,
            &as_f64(&full_dh),
            1e-6,
            0.0,
        );
        assert!(
            weight.grad(&grads).is_none(),
            "[{name}] frozen head got a gradient"
        );

        let trained_head = weight.require_grad();
        let grads = g
            .forward_linear(hidden.clone(), trained_head.clone(), labels, None)
            .expect("valid")
            .logps
            .sum()
            .backward();
        let dw = trained_head.grad(&grads).map(to_vec).expect("d weight");
        assert_close(
            name,
            "d weight, frozen hidden",
            &dw,
            &as_f64(&full_dw),
            1e-6,
            0.0,
        );
        assert!(
            hidden.grad(&grads).is_none(),
            "[{name}] frozen hidden got a gradient"
        );
    }
}

#[test]
fn logits_held_by_nobody_else_get_the_same_gradient() {
    // When the operation holds the logits alone (an LM head's output moved into `forward`),
    // the CPU kernels write the gradient over them instead of allocating; a leaf the caller
    // keeps (the other tests) takes the copying path. Both must match the oracle.
    let dims = [2, 5, 300];
    let inputs = Inputs::new(dims, 2.0, 11);
    let g = gatherer(true, LogpReduction::Mean);
    for (name, device) in autodiff_devices() {
        let grad_of = |fused: bool, held_by_caller: bool| {
            let leaf = floats(inputs.logits.clone(), dims, &device).require_grad();
            let labels = ints(inputs.labels.clone(), [2, 5], &device);
            // A fresh buffer that only the log-prob operation will hold, or the leaf itself.
            let logits = if held_by_caller {
                leaf.clone()
            } else {
                leaf.clone().mul_scalar(1.5)
            };
            let out = if fused {
                g.forward(logits, labels, None)
            } else {
                g.forward_unfused(logits, labels, None)
            }
            .expect("valid inputs");
            let grads = out.logps.sum().backward();
            leaf.grad(&grads).map(to_vec).expect("a gradient")
        };
        let (fused, paths) = counted(&device, || grad_of(true, false));
        let oracle = grad_of(false, false);
        assert_close(
            name,
            "grad, logits held by the op alone",
            &fused,
            &as_f64(&oracle),
            REL,
            1e-12,
        );
        let (_, kept) = counted(&device, || grad_of(true, true));
        assert_eq!(
            forwards(name, &paths),
            (1, 0),
            "[{name}] the kernel ran: {paths:?}"
        );
        assert_eq!(
            paths.composed_backward, 0,
            "[{name}] no fallback: {paths:?}"
        );
        // NdArray cannot lend its buffer for writing: it always copies.
        let in_place = u64::from(name != "ndarray");
        assert_eq!(paths.in_place_backward, in_place, "[{name}] {paths:?}");
        assert_eq!(paths.copying_backward, 1 - in_place, "[{name}] {paths:?}");
        // A leaf the caller still holds must not be overwritten.
        assert_eq!(kept.in_place_backward, 0, "[{name}] {kept:?}");
        assert_eq!(kept.copying_backward, 1, "[{name}] {kept:?}");
    }
}

#[test]
fn each_device_runs_its_kernels_on_the_logits_and_lm_head_paths() {
    // What `compare` checks against the oracle is the device's kernel, not the composed fallback (which
    // the oracle's own tensor ops resemble); the LM head runs the kernel once per chunk.
    for (name, device) in devices() {
        let inputs = Inputs::new([2, 4, 50], 1.0, 5);
        let g = gatherer(true, LogpReduction::Sum);
        let (_, fused) = counted(&device, || run(&inputs, &g, false, true, &device));
        let (_, oracle) = counted(&device, || run(&inputs, &g, false, false, &device));
        assert_eq!(
            oracle,
            FusedPathCounters::default(),
            "[{name}] the oracle takes no fused path"
        );
        let hidden = floats(Inputs::new([2, 4, 3], 1.0, 6).logits, [2, 4, 3], &device);
        let weight = floats(Inputs::new([1, 50, 3], 1.0, 7).logits, [50, 3], &device);
        let labels = ints((0..8).map(|i| i % 50).collect(), [2, 4], &device);
        let chunked = SequenceLogpsConfig::new()
            .with_shift(false)
            .with_chunk_rows(3)
            .init()
            .expect("valid");
        let (_, linear) = counted(&device, || {
            chunked.forward_linear(hidden, weight, labels, None)
        });
        assert_eq!(forwards(name, &fused), (1, 0), "[{name}] {fused:?}");
        // 8 rows in chunks of 3.
        assert_eq!(forwards(name, &linear), (3, 0), "[{name}] {linear:?}");
    }
}

#[test]
fn lm_head_rows_without_a_label_are_skipped_only_when_asked() {
    // 2 × 4 positions, 3 labelled (no shift): with the selection the products cover the 3
    // labelled rows (2 chunks of 2), without it all 8 rows (4 chunks) and nothing is read
    // back; the values are the same.
    for (name, device) in devices() {
        let hidden = floats(Inputs::new([2, 4, 3], 1.0, 11).logits, [2, 4, 3], &device);
        let weight = floats(Inputs::new([1, 50, 3], 1.0, 12).logits, [50, 3], &device);
        let labels = ints(
            vec![-100, 7, -100, -100, 3, -100, -100, 49],
            [2, 4],
            &device,
        );
        let run = |select: bool| {
            let g = SequenceLogpsConfig::new()
                .with_shift(false)
                .with_chunk_rows(2)
                .with_return_token_logps(true)
                .with_select_labelled_rows(select)
                .init()
                .expect("valid");
            counted(&device, || {
                g.forward_linear(hidden.clone(), weight.clone(), labels.clone(), None)
                    .expect("valid inputs")
            })
        };
        let (selected, few) = run(true);
        let (all, every) = run(false);
        assert_eq!(forwards(name, &few), (2, 0), "[{name}] {few:?}");
        assert_eq!(forwards(name, &every), (4, 0), "[{name}] {every:?}");
        let tokens = |out: SequenceLogpsOutput| to_vec(out.token_logps.expect("requested"));
        let want: Vec<f64> = tokens(selected).iter().map(|&x| f64::from(x)).collect();
        assert_close(name, "token log-probs", &tokens(all), &want, 1e-6, 1e-7);
    }
}
