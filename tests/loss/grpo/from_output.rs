//! `CompletionBatch::from_output`: the gatherer's output over prompt + completion rows (prompt
//! left-padded, completion right-padded) becomes a batch of its last `C` positions — its
//! per-token log-probs, valid mask and entropies — read back through a loss that weighs every
//! position differently, and through the gradient with respect to the logits; the errors.

use burn::tensor::{Device, Tensor};
use burn_preference::batch::CompletionBatch;
use burn_preference::logps::SequenceLogpsOutput;
use burn_preference::loss::{GrpoConfig, GrpoLossType};
use burn_preference::prelude::*;

use crate::common::cases::{case, check_cases};
use crate::common::gathered::logits;
use crate::common::{assert_close, autodiff_devices, floats, ints, to_vec};

const ROWS: usize = 3;
const TIME: usize = 7;
const COMPLETION: usize = 4;
const COMPLETION_LENGTHS: [usize; ROWS] = [4, 2, 3];

/// Labels of prompt + completion rows: the prompt (left-padded) and padding ignored, the
/// completion in the last `COMPLETION` positions, right-padded.
fn labels() -> Vec<i64> {
    (0..ROWS)
        .flat_map(|r| {
            (0..TIME).map(move |t| {
                let start = TIME - COMPLETION;
                if t >= start && t - start < COMPLETION_LENGTHS[r] {
                    ((r * 5 + t * 3) % 6) as i64
                } else {
                    // The prompt's positions (its tokens are no target) and padding.
                    -100
                }
            })
        })
        .collect()
}

fn gather(device: &Device, leaf: &Tensor<3>, token_logps: bool) -> SequenceLogpsOutput {
    SequenceLogpsConfig::new()
        .with_return_token_logps(token_logps)
        .with_return_entropy(true)
        .init()
        .unwrap()
        .forward(leaf.clone(), ints(labels(), [ROWS, TIME], device), None)
        .unwrap()
}

/// Per-token advantages that differ at every position, so a shifted column changes the loss.
fn token_advantages(device: &Device) -> Tensor<2> {
    floats(
        (0..ROWS * COMPLETION)
            .map(|j| 1.0 - 0.37 * j as f32)
            .collect(),
        [ROWS, COMPLETION],
        device,
    )
}

/// CISPO on-policy (`−min(1, ε_h)·A·log π`, the token mean) with an entropy bonus: linear in
/// each position's log-prob and entropy.
fn loss_of(batch: CompletionBatch) -> LossOutput {
    GrpoConfig::new()
        .with_loss_type(GrpoLossType::Cispo)
        .with_entropy_coef(0.1)
        .init()
        .unwrap()
        .forward(batch)
        .unwrap()
}

#[test]
fn from_output_takes_the_last_positions() {
    for (name, device) in autodiff_devices() {
        let leaf = logits(ROWS, TIME, 0.4, &device).require_grad();
        let out = gather(&device, &leaf, true);
        let positions = TIME - 1;
        let token_logps = to_vec(out.token_logps.clone().unwrap());
        let entropy = to_vec(out.entropy.clone().unwrap());
        // Bool storage differs by backend (u32 on wgpu): read it as floats.
        let valid: Vec<bool> = to_vec(out.valid.clone().float())
            .iter()
            .map(|&v| v > 0.5)
            .collect();
        // The f64 loss over the last COMPLETION positions of the output.
        let a: Vec<f32> = to_vec(token_advantages(&device));
        let (mut policy_sum, mut entropy_sum, mut count) = (0.0, 0.0, 0.0);
        for r in 0..ROWS {
            for t in 0..COMPLETION {
                let j = r * positions + positions - COMPLETION + t;
                if valid[j] {
                    policy_sum +=
                        -0.2 * f64::from(a[r * COMPLETION + t]) * f64::from(token_logps[j]);
                    entropy_sum += f64::from(entropy[j]);
                    count += 1.0;
                }
            }
        }
        // The gatherer counted exactly the completions' tokens.
        assert_eq!(count, COMPLETION_LENGTHS.iter().sum::<usize>() as f64);
        let expected = policy_sum / count - 0.1 * entropy_sum / count;
        let batch = CompletionBatch::from_output(out, COMPLETION, Tensor::zeros([ROWS], &device))
            .unwrap()
            .with_token_advantages(token_advantages(&device))
            .unwrap();
        assert_eq!((batch.len(), batch.completion_len()), (ROWS, COMPLETION));
        let got = loss_of(batch);
        let metrics = got.metrics.log().unwrap();
        let loss = to_vec(got.loss.clone())[0];
        assert_close(name, "from_output loss", &[loss], &[expected], 1e-5, 1e-6);
        let logged = crate::common::logged(&metrics, "entropy").unwrap();
        assert_close(
            name,
            "entropy metric",
            &[logged as f32],
            &[entropy_sum / count],
            1e-5,
            1e-6,
        );
        let grad = to_vec(leaf.grad(&got.loss.backward()).unwrap());

        // The same batch built by hand from the output's slices: the same gradient.
        let leaf2 = logits(ROWS, TIME, 0.4, &device).require_grad();
        let out = gather(&device, &leaf2, true);
        let tail = positions - COMPLETION..positions;
        let batch = CompletionBatch::new(
            out.token_logps.unwrap().slice([0..ROWS, tail.clone()]),
            out.valid.slice([0..ROWS, tail.clone()]),
            Tensor::zeros([ROWS], &device),
        )
        .unwrap()
        .with_entropy(out.entropy.unwrap().slice([0..ROWS, tail]))
        .unwrap()
        .with_token_advantages(token_advantages(&device))
        .unwrap();
        let by_hand = loss_of(batch).loss;
        let grad2 = to_vec(leaf2.grad(&by_hand.backward()).unwrap());
        let grad2: Vec<f64> = grad2.iter().map(|&g| g.into()).collect();
        assert_close(name, "∂/∂logits", &grad, &grad2, 1e-6, 1e-9);
        assert!(grad.iter().any(|g| *g != 0.0));
    }
}

#[test]
fn from_output_errors() {
    for (name, device) in autodiff_devices() {
        let leaf = logits(ROWS, TIME, 0.4, &device);
        let zeros = || Tensor::<1>::zeros([ROWS], &device);
        let cases = vec![
            case(
                "no token log-probs",
                CompletionBatch::from_output(gather(&device, &leaf, false), COMPLETION, zeros()),
                "MissingInput",
                "token_logps",
            ),
            case(
                "completion_len 0",
                CompletionBatch::from_output(gather(&device, &leaf, true), 0, zeros()),
                "Shape",
                "policy.token_logps",
            ),
            case(
                "completion_len too long",
                CompletionBatch::from_output(gather(&device, &leaf, true), TIME, zeros()),
                "Shape",
                "policy.token_logps",
            ),
            case(
                "advantages rows",
                CompletionBatch::from_output(
                    gather(&device, &leaf, true),
                    COMPLETION,
                    Tensor::zeros([ROWS + 1], &device),
                ),
                "BatchMismatch",
                "advantages",
            ),
        ];
        check_cases(name, cases);
    }
}

#[test]
fn old_and_reference_outputs_take_the_completion_positions() {
    for (name, device) in autodiff_devices() {
        let policy = gather(&device, &logits(ROWS, TIME, 0.4, &device), true);
        let old = gather(&device, &logits(ROWS, TIME, 0.7, &device), true);
        let reference = gather(&device, &logits(ROWS, TIME, 0.2, &device), true);
        let tail = |out: &SequenceLogpsOutput| {
            let positions = TIME - 1;
            out.token_logps
                .clone()
                .unwrap()
                .slice([0..ROWS, positions - COMPLETION..positions])
        };
        let advantages = floats(vec![1.0, -0.5, 0.25], [ROWS], &device);
        // GRPO with β and sequence-free token ratios: both inputs change the loss.
        let loss = GrpoConfig::new().with_beta(0.1).init().unwrap();
        let by_output =
            CompletionBatch::from_output(policy.clone(), COMPLETION, advantages.clone())
                .unwrap()
                .with_old_output(old.clone())
                .unwrap()
                .with_reference_output(reference.clone())
                .unwrap();
        let by_hand = CompletionBatch::from_output(policy, COMPLETION, advantages)
            .unwrap()
            .with_old_logps(tail(&old))
            .unwrap()
            .with_reference(tail(&reference))
            .unwrap();
        let expected = loss.forward(by_hand).unwrap().loss.into_scalar::<f32>();
        let got = loss.forward(by_output).unwrap().loss.into_scalar::<f32>();
        assert_eq!(got, expected, "[{name}]");
        assert_ne!(expected, 0.0, "[{name}] the inputs must matter");
        // An output without per-token log-probs names the argument.
        let bare = gather(&device, &logits(ROWS, TIME, 0.7, &device), false);
        let batch = CompletionBatch::from_output(
            gather(&device, &logits(ROWS, TIME, 0.4, &device), true),
            COMPLETION,
            floats(vec![1.0, -0.5, 0.25], [ROWS], &device),
        )
        .unwrap();
        let err = batch
            .with_old_output(bare)
            .map(|_| ())
            .expect_err("an error");
        assert!(
            matches!(err, PreferenceError::MissingInput { arg: "old", .. }),
            "[{name}] {err}"
        );
    }
}

#[test]
fn loss_types_parse_from_trl_names() {
    for loss_type in GrpoLossType::ALL {
        let name = loss_type.to_string();
        assert_eq!(name.parse::<GrpoLossType>().unwrap(), loss_type);
        // The serde name is TRL's string too.
        assert_eq!(serde_json::to_value(loss_type).unwrap(), name.as_str());
    }
    let err = "ppo".parse::<GrpoLossType>().unwrap_err();
    assert!(
        matches!(
            err,
            PreferenceError::InvalidValue {
                arg: "loss_type",
                ..
            }
        ),
        "{err}"
    );
}

/// Packed rows through the LM head: two prompt + completion sequences in one row, gathered
/// with `forward_linear_packed` (one row per segment, `[S, W]`) and taken whole
/// (`completion_len = W`), give the loss, entropy and gradients of the same sequences padded one
/// per row (prompt left-padded, completion right-padded, the last `C` positions).
#[test]
fn packed_rows_give_the_padded_loss() {
    use burn_preference::data::Segments;
    const H: usize = 6;
    const V: usize = 11;
    // Sequence 0: prompt [1, 2], completion [3, 4, 5]; sequence 1: prompt [6], completion
    // [7, 8]. Padded: the prompts left-padded to 2, the completions right-padded to C = 3.
    let padded_labels = vec![-100, -100, 3, 4, 5, -100, -100, 7, 8, -100];
    let packed_labels = vec![-100, -100, 3, 4, 5, -100, 7, 8];
    // Hidden states per token of each sequence; padding positions get values of their own,
    // which must not matter.
    let token_hidden = |seq: usize, pos: usize| -> Vec<f32> {
        (0..H)
            .map(|h| ((seq * 7 + pos * 3 + h) as f32 * 0.37).sin())
            .collect()
    };
    // Padded [2, 5, H]: row 0 = sequence 0; row 1 = a pad, sequence 1, a pad.
    let mut padded = Vec::new();
    for pos in 0..5 {
        padded.extend(token_hidden(0, pos));
    }
    padded.extend(vec![-0.5; H]);
    for pos in 0..3 {
        padded.extend(token_hidden(1, pos));
    }
    padded.extend(vec![0.25; H]);
    let mut packed = Vec::new();
    for pos in 0..5 {
        packed.extend(token_hidden(0, pos));
    }
    for pos in 0..3 {
        packed.extend(token_hidden(1, pos));
    }
    let weight: Vec<f32> = (0..V * H).map(|i| ((i * 13) as f32 * 0.11).cos()).collect();
    for (name, device) in autodiff_devices() {
        let gatherer = SequenceLogpsConfig::new()
            .with_return_token_logps(true)
            .with_return_entropy(true)
            .with_chunk_rows(4)
            .init()
            .unwrap();
        let config = GrpoConfig::new().with_entropy_coef(0.1).init().unwrap();
        let advantages = || floats(vec![1.0, -0.5], [2], &device);
        let run = |hidden: Vec<f32>, dims: [usize; 3], labels: Vec<i64>, packed: bool| {
            let hidden = floats(hidden, dims, &device).require_grad();
            let head = floats(weight.clone(), [V, H], &device).require_grad();
            let labels = ints(labels, [dims[0], dims[1]], &device);
            let (out, width) = if packed {
                let segments = Segments::from_cu_seqlens(&[0, 5, 8], 1, 8).unwrap();
                let out = gatherer
                    .forward_linear_packed(hidden.clone(), head.clone(), labels, &segments)
                    .unwrap();
                let width = out.token_logps.as_ref().unwrap().dims()[1];
                (out, width)
            } else {
                let out = gatherer
                    .forward_linear(hidden.clone(), head.clone(), labels, None)
                    .unwrap();
                (out, 3)
            };
            let batch = CompletionBatch::from_output(out, width, advantages()).unwrap();
            let result = config.forward(batch).unwrap();
            let logged = result.metrics.log().unwrap();
            let grads = result.loss.clone().backward();
            (
                result.loss.into_scalar::<f32>(),
                logged,
                to_vec(head.grad(&grads).unwrap()),
            )
        };
        let (padded_loss, padded_metrics, padded_grad) =
            run(padded.clone(), [2, 5, H], padded_labels.clone(), false);
        let (packed_loss, packed_metrics, packed_grad) =
            run(packed.clone(), [1, 8, H], packed_labels.clone(), true);
        let expected: Vec<f64> = padded_grad.iter().map(|&g| f64::from(g)).collect();
        assert_close(
            name,
            "loss",
            &[packed_loss],
            &[f64::from(padded_loss)],
            1e-5,
            1e-7,
        );
        assert_close(name, "d/dhead", &packed_grad, &expected, 1e-4, 1e-6);
        assert_eq!(
            packed_metrics.iter().map(|m| m.0).collect::<Vec<_>>(),
            padded_metrics.iter().map(|m| m.0).collect::<Vec<_>>()
        );
        for ((metric, got), (_, want)) in packed_metrics.iter().zip(&padded_metrics) {
            assert_close(name, metric, &[*got as f32], &[*want], 1e-5, 1e-7);
        }
    }
}
