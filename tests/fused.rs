//! The fused log-prob path (what `SequenceLogps` runs) against the straightforward tensor-op
//! path kept as the oracle (`forward_unfused`): values and gradients to 1e-5 relative, on every
//! device, with ignored and out-of-range labels, masks, both shifts and extreme logits.

mod common;

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_preference::{LogpReduction, SequenceLogps, SequenceLogpsConfig, SequenceLogpsOutput};
use common::{assert_close, autodiff_devices, devices, floats, ints, to_vec};

const REL: f64 = 1e-5;

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
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as f64 / f64::from(1u32 << 31)
        };
        // A sum of uniforms: cheap, roughly normal, and all tail values still finite.
        let logits = (0..b * t * v)
            .map(|_| (next() + next() + next() - 1.5) as f32 * 2.0 * scale)
            .collect();
        let mut labels: Vec<i64> = (0..b * t)
            .map(|i| match i % 5 {
                3 => -100,
                _ => (next() * v as f64) as i64,
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
    let out = match (fused, mask) {
        (true, Some(mask)) => gatherer.forward_masked(logits.clone(), labels, mask),
        (true, None) => gatherer.forward(logits.clone(), labels),
        (false, mask) => gatherer.forward_unfused(logits.clone(), labels, mask),
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

fn as_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&x| f64::from(x)).collect()
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
        let fused = g.forward(logits.clone(), labels.clone()).expect("valid");
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
