//! `f16` and `bf16` inputs on the fused path, against an `f32` reference computed on the *same*
//! half-precision values widened to `f32` (so accumulation order is the only difference on the
//! logits path), with the path that ran observed through `fused_path_counters`.
//!
//! Tolerances:
//! - values (log-probs and every extra): `1e-5` relative + `1e-6` absolute, as the `f32`
//!   fused-vs-oracle tests; `is_top1` exactly;
//! - logits gradients, which have the logits' dtype: half a unit in the last place of that
//!   dtype at the reference value (the one rounding of an `f32` gradient), plus `1e-5`
//!   relative and `1e-7` absolute, the `f32` fused-vs-oracle tolerance of the extras tests
//!   (the entropy gradient of probabilities ~1e-8 differs by ~1e-10 between the two in `f32`
//!   already);
//! - LM-head path (the chunk products run in half precision, so the logits themselves carry a
//!   rounding of relative size `u`, `u = 2⁻¹¹` for `f16`, `2⁻⁸` for `bf16`): token log-probs
//!   within `4u·max|z|` (both `z_y` and the log-sum-exp move by at most `u·max|z|`, doubled for
//!   the products' own rounding), sums within that times the tokens counted, and gradients
//!   within `16u` of the largest reference entry, norm-wise.
//!
//! NdArray has no half storage (`supports_dtype` is false there, and it cannot hold such a
//! tensor), so its half inputs are not run: a test asserts that it reports so.

use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData, bf16, f16};
use burn_preference::data::Segments;
use burn_preference::diagnostics::FusedPathCounters;
use burn_preference::logps::{HeadLayout, LmHead, SequenceLogpsConfig, SequenceLogpsOutput};
use burn_preference::prelude::{DpoConfig, PairedBatch, PreferenceLoss};

use crate::common::gatherer::{Options, gatherer, objective};
use crate::common::inputs::values;
use crate::common::paths::counted;
use crate::common::reference::as_f64;
use crate::common::{assert_close, autodiff_devices, devices, floats, ints, to_vec};

const REL: f64 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Half {
    F16,
    BF16,
}

const HALVES: [Half; 2] = [Half::F16, Half::BF16];

impl Half {
    fn dtype(self) -> DType {
        match self {
            Half::F16 => DType::F16,
            Half::BF16 => DType::BF16,
        }
    }

    /// Explicit mantissa bits and the smallest normal exponent.
    fn format(self) -> (i32, i32) {
        match self {
            Half::F16 => (10, -14),
            Half::BF16 => (7, -126),
        }
    }

    /// The unit roundoff `2^-(mantissa + 1)`.
    fn unit_roundoff(self) -> f64 {
        2f64.powi(-(self.format().0 + 1))
    }

    /// The spacing of this dtype's values at `|x|` (subnormals included).
    fn ulp(self, x: f64) -> f64 {
        let (mantissa, min_exponent) = self.format();
        let exponent = if x == 0.0 {
            min_exponent
        } else {
            (x.abs().log2().floor() as i32).max(min_exponent)
        };
        2f64.powi(exponent - mantissa)
    }

    /// `values` rounded to this dtype, as a tensor of this dtype, and the rounded values
    /// widened back to `f32` (exactly).
    fn tensor<const D: usize>(
        self,
        values: &[f32],
        shape: [usize; D],
        device: &Device,
    ) -> (Tensor<D>, Vec<f32>) {
        let options = TensorCreationOptions::new(device.clone()).with_dtype(self.dtype());
        let (data, widened) = match self {
            Half::F16 => {
                let h: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                let w = h.iter().map(|x| x.to_f32()).collect();
                (TensorData::new(h, shape), w)
            }
            Half::BF16 => {
                let h: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                let w = h.iter().map(|x| x.to_f32()).collect();
                (TensorData::new(h, shape), w)
            }
        };
        let tensor = Tensor::<D>::from_data(data, options);
        assert_eq!(tensor.dtype(), self.dtype(), "input dtype");
        (tensor, widened)
    }
}

/// Whether `device` stores `half`; NdArray must say no (it has no half storage at all).
fn stores(name: &str, device: &Device, half: Half) -> bool {
    let yes = device.supports_dtype(half.dtype());
    if !yes {
        eprintln!("[{name}] no {half:?} storage, skipped");
    }
    yes
}

/// Labels for `[B, T]` rows of `logits` (`[B, T, V]`): every fourth ignored, every third the
/// row's argmax (so that `is_top1` is 1 somewhere, ties with earlier equal values included),
/// the rest spread over the vocabulary.
fn labels_for(logits: &[f32], [b, t, v]: [usize; 3]) -> Vec<i64> {
    (0..b * t)
        .map(|i| match i % 4 {
            1 => -100,
            _ if i % 3 == 0 => {
                let row = &logits[i * v..(i + 1) * v];
                let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.iter().rposition(|&z| z == top).unwrap_or(0) as i64
            }
            _ => (i * 7919 % v) as i64,
        })
        .collect()
}

const OPTIONS: &[Options] = &[
    Options {
        temperature: 1.0,
        scale: 1.0,
        softcap: None,
        shift: true,
    },
    Options {
        temperature: 0.7,
        scale: 1.3,
        softcap: Some(4.0),
        shift: false,
    },
];

/// Every output as floats, in a fixed order, each checked to be `f32`.
fn outputs(name: &str, out: &SequenceLogpsOutput) -> Vec<(&'static str, Vec<f32>)> {
    let mut all = vec![("logps", out.logps.clone().float_values(name, "logps"))];
    let mut push = |key, t: &Option<Tensor<2>>| {
        let t = t
            .as_ref()
            .unwrap_or_else(|| panic!("[{name}] {key} requested"));
        all.push((key, t.clone().float_values(name, key)));
    };
    push("token_logps", &out.token_logps);
    push("entropy", &out.entropy);
    push("log_sum_sq_probs", &out.log_sum_sq_probs);
    push("mean_logits", &out.mean_logits);
    let top1 = out.is_top1.as_ref().expect("is_top1 requested");
    all.push(("is_top1", to_vec(top1.clone().float())));
    all
}

/// The values of an output that must be `f32` whatever the inputs' dtype.
trait F32Values {
    fn float_values(self, name: &str, key: &str) -> Vec<f32>;
}

impl<const D: usize> F32Values for Tensor<D> {
    fn float_values(self, name: &str, key: &str) -> Vec<f32> {
        assert_eq!(self.dtype(), DType::F32, "[{name}] {key} dtype");
        to_vec(self)
    }
}

fn compare_outputs(name: &str, what: &str, got: &SequenceLogpsOutput, want: &SequenceLogpsOutput) {
    for ((key, x), (_, y)) in outputs(name, got).iter().zip(&outputs(name, want)) {
        if *key == "is_top1" {
            assert_eq!(x, y, "[{name}] {key} {what}");
        } else {
            assert_close(name, &format!("{key} {what}"), x, &as_f64(y), REL, 1e-6);
        }
    }
    let valid = |o: &SequenceLogpsOutput| to_vec(o.valid.clone().float());
    assert_eq!(valid(got), valid(want), "[{name}] valid {what}");
}

/// A gradient of dtype `half` against the `f32` reference: one rounding to `half` (half an
/// ulp) plus the `f32` accumulation order.
fn assert_half_grad(name: &str, what: &str, half: Half, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "[{name}] {what}: length");
    for (i, (&a, &e)) in got.iter().zip(want).enumerate() {
        let (a, e) = (f64::from(a), f64::from(e));
        let tol = 0.5 * half.ulp(a.abs().max(e.abs())) + REL * e.abs() + 1e-7;
        assert!(
            (a - e).abs() <= tol,
            "[{name}] {what}[{i}]: got {a}, expected {e} (tolerance {tol})"
        );
    }
}

/// The gradient of a half-precision tensor: of its dtype, as `f32` values (exact).
fn half_grad<const D: usize>(
    name: &str,
    half: Half,
    tensor: &Tensor<D>,
    grads: &burn::tensor::Gradients,
) -> Vec<f32> {
    let grad = tensor
        .grad(grads)
        .unwrap_or_else(|| panic!("[{name}] gradient"));
    assert_eq!(grad.dtype(), half.dtype(), "[{name}] gradient dtype");
    to_vec(grad)
}

fn f32_grad<const D: usize>(tensor: &Tensor<D>, grads: &burn::tensor::Gradients) -> Vec<f32> {
    to_vec(tensor.grad(grads).expect("reference gradient"))
}

/// `forwards` kernel forward passes on the device's own kernels (the CPU slice kernels on
/// flex, the CubeCL kernels on wgpu and CUDA), nothing else.
fn kernels(name: &str, forwards: u64) -> FusedPathCounters {
    match name {
        "wgpu" | "cuda" => FusedPathCounters {
            cube_forward: forwards,
            ..FusedPathCounters::default()
        },
        _ => FusedPathCounters {
            kernel_forward: forwards,
            ..FusedPathCounters::default()
        },
    }
}

/// Forward passes by the device's own kernels.
fn own_forwards(name: &str, paths: &FusedPathCounters) -> u64 {
    match name {
        "wgpu" | "cuda" => paths.cube_forward,
        _ => paths.kernel_forward,
    }
}

#[test]
fn ndarray_has_no_half_storage() {
    // The reason NdArray's half inputs are not run here: such a tensor cannot exist there.
    for (name, device) in devices() {
        if name == "ndarray" {
            for half in HALVES {
                assert!(!device.supports_dtype(half.dtype()), "[{name}] {half:?}");
            }
        }
    }
}

#[test]
fn half_logits_match_f32_on_the_same_values() {
    // V > 2048: several blocks of the online log-sum-exp, and a tail that is not a multiple of
    // the vector width.
    let dims @ [b, t, v] = [2, 5, 2100];
    for (name, device) in autodiff_devices() {
        for half in HALVES {
            if !stores(name, &device, half) {
                continue;
            }
            for (k, &o) in OPTIONS.iter().enumerate() {
                let raw = values(b * t * v, 2.0, 11 + k as u64);
                let (logits, widened) = half.tensor(&raw, dims, &device);
                let labels = labels_for(&widened, dims);
                let labels = ints(labels, [b, t], &device);
                let g = gatherer(o, true);
                let what = format!("{half:?} {o:?}");

                // The test keeps `logits`: the backward cannot overwrite them.
                let logits = logits.require_grad();
                let ((out, grads), paths) = counted(&device, || {
                    let out = g
                        .forward(logits.clone(), labels.clone(), None)
                        .expect("valid");
                    let grads = objective(&out, &device).backward();
                    (out, grads)
                });
                let got = half_grad(name, half, &logits, &grads);

                let reference = floats(widened, dims, &device).require_grad();
                let want_out = g
                    .forward_unfused(reference.clone(), labels.clone(), None)
                    .expect("valid");
                let want = f32_grad(&reference, &objective(&want_out, &device).backward());

                compare_outputs(name, &what, &out, &want_out);
                assert_half_grad(name, &format!("grad {what}"), half, &got, &want);
                let expected = FusedPathCounters {
                    copying_backward: 1,
                    ..kernels(name, 1)
                };
                assert_eq!(paths, expected, "[{name}] {what}");
            }
        }
    }
}

#[test]
fn half_logits_nobody_else_holds_get_the_gradient_in_place() {
    let dims @ [b, t, v] = [3, 4, 2500];
    for (name, device) in autodiff_devices() {
        for half in HALVES {
            if !stores(name, &device, half) {
                continue;
            }
            let raw = values(b * t * v, 3.0, 5);
            let (leaf, widened) = half.tensor(&raw, dims, &device);
            let labels = ints(labels_for(&widened, dims), [b, t], &device);
            let g = gatherer(OPTIONS[1], true);
            let leaf = leaf.require_grad();
            // `× 1` is exact in every dtype; its output is moved into `forward`.
            let (grads, paths) = counted(&device, || {
                let logits = leaf.clone().mul_scalar(1.0);
                let out = g.forward(logits, labels.clone(), None).expect("valid");
                objective(&out, &device).backward()
            });
            let got = half_grad(name, half, &leaf, &grads);
            let reference = floats(widened, dims, &device).require_grad();
            let want_out = g
                .forward_unfused(reference.clone(), labels, None)
                .expect("valid");
            let want = f32_grad(&reference, &objective(&want_out, &device).backward());
            assert_half_grad(name, &format!("in-place grad {half:?}"), half, &got, &want);
            let expected = FusedPathCounters {
                in_place_backward: 1,
                ..kernels(name, 1)
            };
            assert_eq!(paths, expected, "[{name}] {half:?}");
        }
    }
}

#[test]
fn half_logits_without_autodiff_and_packed() {
    let dims @ [b, t, v] = [2, 8, 300];
    for (name, device) in devices() {
        for half in HALVES {
            if !stores(name, &device, half) {
                continue;
            }
            let raw = values(b * t * v, 2.0, 23);
            let (logits, widened) = half.tensor(&raw, dims, &device);
            let labels = labels_for(&widened, dims);
            let g = gatherer(OPTIONS[0], true);
            let reference = floats(widened, dims, &device);
            let labels_t = ints(labels.clone(), [b, t], &device);
            let (out, paths) = counted(&device, || {
                g.forward(logits.clone(), labels_t.clone(), None)
            });
            let want = g
                .forward_unfused(reference.clone(), labels_t, None)
                .expect("valid");
            compare_outputs(
                name,
                &format!("{half:?} plain"),
                &out.expect("valid"),
                &want,
            );
            assert_eq!(paths, kernels(name, 1), "[{name}] {paths:?}");

            // Two sequences per row: the packed pass over the same half logits.
            let segments = Segments::from_cu_seqlens(&[0, 3, 8, 11, 16], b, t).expect("valid");
            let labels_t = ints(labels, [b, t], &device);
            let (packed, paths) = counted(&device, || {
                g.forward_packed(logits.clone(), labels_t.clone(), &segments)
            });
            let packed_want = g
                .forward_packed(reference, labels_t, &segments)
                .expect("valid");
            compare_outputs(
                name,
                &format!("{half:?} packed"),
                &packed.expect("valid"),
                &packed_want,
            );
            assert_eq!(paths, kernels(name, 1), "[{name}] {paths:?}");
        }
    }
}

#[test]
fn dpo_on_half_logits_trains_the_half_logits() {
    // Downstream of `SequenceLogpsOutput` everything is f32: the loss of half logits equals
    // the loss of their widened values, and the gradient reaches the logits in their dtype.
    let dims @ [b, t, v] = [4, 6, 257];
    for (name, device) in autodiff_devices() {
        for half in HALVES {
            if !stores(name, &device, half) {
                continue;
            }
            let raw = values(b * t * v, 1.5, 31);
            let (logits, widened) = half.tensor(&raw, dims, &device);
            let labels = ints(labels_for(&widened, dims), [b, t], &device);
            // Four rows, chosen first: two pairs.
            let reference_logps = floats(vec![-30.0, -31.0, -29.5, -32.0], [b], &device);
            let pairs = |rows: Tensor<1>| rows.reshape([2, b / 2]).transpose();
            let gatherer = SequenceLogpsConfig::new().init().expect("valid");
            let dpo = DpoConfig::new().with_beta(0.1).init().expect("valid");
            let loss_of = |logits: Tensor<3>| {
                let policy = gatherer
                    .forward(logits, labels.clone(), None)
                    .expect("valid")
                    .logps;
                assert_eq!(policy.dtype(), DType::F32, "[{name}] policy logps dtype");
                let batch = PairedBatch::new(pairs(policy))
                    .and_then(|b| b.with_reference(pairs(reference_logps.clone())))
                    .expect("valid batch");
                dpo.forward(batch).expect("valid loss").loss
            };
            let logits = logits.require_grad();
            let loss = loss_of(logits.clone());
            let got_loss = loss.clone().float_values(name, "loss");
            let got = half_grad(name, half, &logits, &loss.backward());
            let reference = floats(widened, dims, &device).require_grad();
            let want_loss = loss_of(reference.clone());
            let want = f32_grad(&reference, &want_loss.clone().backward());
            assert_close(
                name,
                &format!("{half:?} loss"),
                &got_loss,
                &as_f64(&to_vec(want_loss)),
                REL,
                1e-6,
            );
            assert_half_grad(name, &format!("{half:?} dpo grad"), half, &got, &want);
        }
    }
}

/// `‖got − want‖∞ ≤ rel · ‖want‖∞`.
fn assert_close_normwise(name: &str, what: &str, got: &[f32], want: &[f32], rel: f64) {
    assert_eq!(got.len(), want.len(), "[{name}] {what}: length");
    let scale = want.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    let worst = got.iter().zip(want).fold(0f64, |m, (&a, &e)| {
        m.max((f64::from(a) - f64::from(e)).abs())
    });
    assert!(
        worst <= rel * scale && got.iter().all(|x| x.is_finite()),
        "[{name}] {what}: worst difference {worst}, allowed {} (largest entry {scale})",
        rel * scale
    );
}

#[test]
fn half_lm_head_matches_f32_on_the_same_values() {
    let ([b, t], width, vocab) = ([2, 7], 24, 2300);
    for (name, device) in autodiff_devices() {
        for half in HALVES {
            if !stores(name, &device, half) {
                continue;
            }
            for layout in [HeadLayout::VocabHidden, HeadLayout::HiddenVocab] {
                let what = format!("{half:?} {layout:?}");
                let weight_dims = match layout {
                    HeadLayout::VocabHidden => [vocab, width],
                    HeadLayout::HiddenVocab => [width, vocab],
                };
                let (hidden, hidden_w) =
                    half.tensor(&values(b * t * width, 0.6, 3), [b, t, width], &device);
                let (weight, weight_w) =
                    half.tensor(&values(vocab * width, 0.6, 4), weight_dims, &device);
                let (bias, bias_w) = half.tensor(&values(vocab, 0.5, 5), [vocab], &device);
                let labels: Vec<i64> = (0..b * t)
                    .map(|i| {
                        if i % 5 == 2 {
                            -100
                        } else {
                            (i * 131 % vocab) as i64
                        }
                    })
                    .collect();
                let labels = ints(labels, [b, t], &device);
                let g = gatherer(OPTIONS[(layout == HeadLayout::HiddenVocab) as usize], true);

                let (hidden, weight, bias) = (
                    hidden.require_grad(),
                    weight.require_grad(),
                    bias.require_grad(),
                );
                let head = LmHead::new(weight.clone(), layout).with_bias(bias.clone());
                let ((out, grads), paths) = counted(&device, || {
                    let out = g
                        .forward_linear(hidden.clone(), head, labels.clone(), None)
                        .expect("valid");
                    let grads = objective(&out, &device).backward();
                    (out, grads)
                });
                let dh = half_grad(name, half, &hidden, &grads);
                let dw = half_grad(name, half, &weight, &grads);
                let db = half_grad(name, half, &bias, &grads);

                let hidden_r = floats(hidden_w, [b, t, width], &device).require_grad();
                let weight_r = floats(weight_w, weight_dims, &device).require_grad();
                let bias_r = floats(bias_w, [vocab], &device).require_grad();
                let head_r = LmHead::new(weight_r.clone(), layout).with_bias(bias_r.clone());
                let want_out = g
                    .forward_linear(hidden_r.clone(), head_r, labels.clone(), None)
                    .expect("valid");
                let grads_r = objective(&want_out, &device).backward();

                // The f32 logits of the same values bound how far one rounding of them moves
                // each output.
                let logits_r = hidden_r
                    .clone()
                    .detach()
                    .matmul(
                        match layout {
                            HeadLayout::VocabHidden => weight_r.clone().detach().transpose(),
                            HeadLayout::HiddenVocab => weight_r.clone().detach(),
                        }
                        .unsqueeze_dim::<3>(0),
                    )
                    .add(bias_r.clone().detach().unsqueeze_dims::<3>(&[0, 1]));
                let max_z = to_vec(logits_r)
                    .iter()
                    .fold(0f64, |m, &x| m.max(f64::from(x).abs()));
                let u = half.unit_roundoff();
                let token_tol = 4.0 * u * max_z;
                let tokens = |o: &SequenceLogpsOutput| to_vec(o.token_logps.clone().expect("on"));
                assert_close(
                    name,
                    &format!("token_logps {what}"),
                    &tokens(&out),
                    &as_f64(&tokens(&want_out)),
                    REL,
                    token_tol,
                );
                let counted_tokens = to_vec(want_out.counts.clone())
                    .iter()
                    .fold(0f64, |m, &c| m.max(f64::from(c)));
                assert_close(
                    name,
                    &format!("logps {what}"),
                    &to_vec(out.logps.clone()),
                    &as_f64(&to_vec(want_out.logps.clone())),
                    REL,
                    token_tol * counted_tokens,
                );
                for (key, got, want) in [
                    ("dh", dh, f32_grad(&hidden_r, &grads_r)),
                    ("dw", dw, f32_grad(&weight_r, &grads_r)),
                    ("db", db, f32_grad(&bias_r, &grads_r)),
                ] {
                    assert_close_normwise(name, &format!("{key} {what}"), &got, &want, 16.0 * u);
                }
                // Chunks of 3 rows: one kernel forward per chunk; the backward's tiles (each
                // one's half logits fresh) all in place; nothing composed.
                let forwards = own_forwards(name, &paths);
                assert!(forwards >= 2, "[{name}] {what} {paths:?}");
                assert!(paths.in_place_backward >= 1, "[{name}] {what} {paths:?}");
                let expected = FusedPathCounters {
                    in_place_backward: paths.in_place_backward,
                    ..kernels(name, forwards)
                };
                assert_eq!(paths, expected, "[{name}] {what} {paths:?}");
            }
        }
    }
}

#[test]
fn mixed_lm_head_dtypes_are_widened() {
    // f16 hidden states with an f32 head: no dtype clash in the products; the same results as
    // all-f32 on the same values.
    let ([b, t], width, vocab) = ([2, 4], 8, 50);
    for (name, device) in autodiff_devices() {
        if !stores(name, &device, Half::F16) {
            continue;
        }
        let (hidden, hidden_w) =
            Half::F16.tensor(&values(b * t * width, 0.8, 7), [b, t, width], &device);
        let weight = floats(values(vocab * width, 0.8, 8), [vocab, width], &device);
        let labels = ints(
            (0..(b * t) as i64).map(|i| i * 3 % 50).collect(),
            [b, t],
            &device,
        );
        let g = gatherer(OPTIONS[0], true);
        let hidden = hidden.require_grad();
        let out = g
            .forward_linear(hidden.clone(), weight.clone(), labels.clone(), None)
            .expect("valid");
        let got = half_grad(
            name,
            Half::F16,
            &hidden,
            &objective(&out, &device).backward(),
        );
        let hidden_r = floats(hidden_w, [b, t, width], &device).require_grad();
        let want_out = g
            .forward_linear(hidden_r.clone(), weight, labels, None)
            .expect("valid");
        let want = f32_grad(&hidden_r, &objective(&want_out, &device).backward());
        compare_outputs(name, "mixed", &out, &want_out);
        assert_half_grad(name, "mixed dh", Half::F16, &got, &want);
    }
}
