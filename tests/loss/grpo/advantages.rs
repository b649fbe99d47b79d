//! GRPO's and RLOO's advantages against `f64` references written from TRL 1.16's
//! `_generate_and_score_completions` (nanmean, Bessel nanstd, `+ 1e-4`, `nan_to_num`): every
//! `scale_rewards`, both aggregations, reward weights, all-equal groups, unscorable and partly
//! scored completions, `K = 1`; RLOO's leave-one-out baseline, clip range, KL penalty and
//! normalisation; the metrics; the configs from TRL-style JSON.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use burn_preference::advantages::{
    AdvantagesOutput, GrpoAdvantagesConfig, MultiObjectiveAggregation, RlooAdvantagesConfig,
    RlooKl, ScaleRewards,
};
use burn_preference::loss::{GrpoConfig, GrpoLossType, ImportanceSamplingLevel, RlooConfig};

use crate::common::{assert_close, devices, floats, logged, to_vec};

const NAN: f64 = f64::NAN;

fn nanmean(values: &[f64]) -> f64 {
    let kept: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if kept.is_empty() {
        return NAN;
    }
    kept.iter().sum::<f64>() / kept.len() as f64
}

/// TRL's `nanstd`: Bessel-corrected over the non-NaN values, NaN with fewer than two.
fn nanstd(values: &[f64]) -> f64 {
    let kept: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if kept.len() < 2 {
        return NAN;
    }
    let mean = nanmean(&kept);
    let squares: f64 = kept.iter().map(|v| (v - mean).powi(2)).sum();
    (squares / (kept.len() - 1) as f64).sqrt()
}

fn nan_to_zero(v: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v }
}

/// `torch.isclose(std, 0)`.
fn is_zero(std: f64) -> bool {
    std.abs() <= 1e-8
}

/// `(rewards_per_func * w).nansum(1)`, NaN for the unscorable rows.
fn weighted(rewards: &[f64], f: usize, weights: &[f64]) -> Vec<f64> {
    rewards
        .chunks(f)
        .map(|row| {
            if row.iter().all(|r| r.is_nan()) {
                return NAN;
            }
            row.iter()
                .zip(weights)
                .filter(|(r, _)| !r.is_nan())
                .map(|(r, w)| r * w)
                .sum()
        })
        .collect()
}

/// What the references give: the advantages, the output rewards, the `reward` and
/// `frac_reward_zero_std` metrics.
#[derive(Debug)]
struct Expected {
    advantages: Vec<f64>,
    rewards: Vec<f64>,
    reward: f64,
    frac_zero_std: f64,
    kl: Option<f64>,
}

/// TRL's GRPO advantage block.
fn grpo_reference(
    rewards: &[f64],
    f: usize,
    k: usize,
    scale: ScaleRewards,
    weights: &[f64],
    aggregation: MultiObjectiveAggregation,
) -> Expected {
    let n = rewards.len() / f;
    let raw = weighted(rewards, f, weights);
    let (advantages, std): (Vec<f64>, Vec<f64>) = match aggregation {
        MultiObjectiveAggregation::SumThenNormalize => {
            let total = raw.clone();
            let std: Vec<f64> = match scale {
                ScaleRewards::Batch => {
                    if n > 1 {
                        vec![nanstd(&total); n]
                    } else {
                        vec![0.0; n]
                    }
                }
                _ => {
                    if k > 1 {
                        (0..n).map(|i| nanstd(&total[i / k * k..][..k])).collect()
                    } else {
                        vec![0.0; n]
                    }
                }
            };
            let advantages = (0..n)
                .map(|i| {
                    let centred = total[i] - nanmean(&total[i / k * k..][..k]);
                    match scale {
                        ScaleRewards::None => centred,
                        _ => centred / (std[i] + 1e-4),
                    }
                })
                .collect();
            (advantages, std)
        }
        MultiObjectiveAggregation::NormalizeThenSum => {
            // Each function within its group.
            let mut normalised = vec![0.0; n * f];
            for g in 0..n / k {
                for func in 0..f {
                    let column: Vec<f64> =
                        (0..k).map(|j| rewards[(g * k + j) * f + func]).collect();
                    let mean = nanmean(&column);
                    let std = if k > 1 { nanstd(&column) } else { 0.0 };
                    for j in 0..k {
                        normalised[(g * k + j) * f + func] = (column[j] - mean) / (std + 1e-4);
                    }
                }
            }
            let mut total: Vec<f64> = normalised
                .chunks(f)
                .map(|row| {
                    row.iter()
                        .zip(weights)
                        .filter(|(r, _)| !r.is_nan())
                        .map(|(r, w)| r * w)
                        .sum()
                })
                .collect();
            for i in 0..n {
                if raw[i].is_nan() {
                    total[i] = NAN;
                }
            }
            let std = if n > 1 { nanstd(&total) } else { 0.0 };
            let mean = nanmean(&total);
            (
                total.iter().map(|t| (t - mean) / (std + 1e-4)).collect(),
                vec![std; n],
            )
        }
    };
    Expected {
        advantages: advantages.into_iter().map(nan_to_zero).collect(),
        reward: nanmean(&raw),
        frac_zero_std: std.iter().filter(|s| is_zero(**s)).count() as f64 / n as f64,
        rewards: raw,
        kl: None,
    }
}

/// TRL's RLOO advantage block; `kl` the per-completion KL sums and the token counts.
#[allow(clippy::too_many_arguments)]
fn rloo_reference(
    rewards: &[f64],
    f: usize,
    k: usize,
    weights: &[f64],
    clip: Option<(f64, f64)>,
    beta: f64,
    kl: Option<(&[f64], &[f64])>,
    normalize: bool,
) -> Expected {
    let n = rewards.len() / f;
    let raw = weighted(rewards, f, weights);
    let mut total = raw.clone();
    if let Some((low, high)) = clip {
        // torch.clamp keeps NaN.
        total = total.iter().map(|r| r.clamp(low, high)).collect();
    }
    let mut kl_metric = None;
    if beta != 0.0 {
        let (sums, tokens) = kl.expect("kl");
        for i in 0..n {
            total[i] -= beta * sums[i];
        }
        kl_metric = Some(sums.iter().sum::<f64>() / tokens.iter().sum::<f64>().max(1.0));
    }
    let std: Vec<f64> = (0..n)
        .map(|i| {
            if k > 1 {
                nanstd(&total[i / k * k..][..k])
            } else {
                0.0
            }
        })
        .collect();
    let mut advantages: Vec<f64> = (0..n)
        .map(|i| {
            if k == 1 {
                return 0.0;
            }
            let group = &total[i / k * k..][..k];
            let scorable = group.iter().filter(|r| !r.is_nan()).count() as f64;
            let sum: f64 = group.iter().filter(|r| !r.is_nan()).sum();
            total[i] - (sum - total[i]) / (scorable - 1.0)
        })
        .collect();
    if normalize {
        let mean = nanmean(&advantages);
        let std = nanstd(&advantages);
        advantages = advantages
            .iter()
            .map(|a| (a - mean) / (std + 1e-4))
            .collect();
    }
    Expected {
        advantages: advantages.into_iter().map(nan_to_zero).collect(),
        rewards: total,
        reward: nanmean(&raw),
        frac_zero_std: std.iter().filter(|s| is_zero(**s)).count() as f64 / n as f64,
        kl: kl_metric,
    }
}

/// 4 prompts × K = 3 completions × F = 2 reward functions: a plain group; a group whose
/// weighted rewards are all equal; a group with an unscorable completion (both NaN) and a
/// partly scored one; a group one function does not score at all.
#[rustfmt::skip]
const REWARDS: [f64; 24] = [
    1.0, 0.5,    0.2, -1.0,   -0.3, 2.0,
    0.5, 1.0,    1.0, 0.0,    0.0, 2.0,
    0.7, NAN,    NAN, NAN,    -1.2, 0.4,
    NAN, 0.3,    NAN, -0.8,   NAN, 1.9,
];

fn rewards_tensor(rewards: &[f64], f: usize, device: &Device) -> Tensor<2> {
    floats(
        rewards.iter().map(|&r| r as f32).collect(),
        [rewards.len() / f, f],
        device,
    )
}

fn assert_output(device: &str, what: &str, out: AdvantagesOutput, want: &Expected) {
    assert_close(
        device,
        &format!("{what}: advantages"),
        &to_vec(out.advantages),
        &want.advantages,
        1e-4,
        2e-5,
    );
    // NaN (unscorable) exactly where the reference has it, the rest close.
    let rewards = to_vec(out.rewards);
    let nan: Vec<bool> = rewards.iter().map(|r| r.is_nan()).collect();
    let want_nan: Vec<bool> = want.rewards.iter().map(|r| r.is_nan()).collect();
    assert_eq!(nan, want_nan, "[{device}] {what}: unscorable rewards");
    let finite = |v: &[f64]| {
        v.iter()
            .copied()
            .filter(|r| !r.is_nan())
            .collect::<Vec<_>>()
    };
    let got: Vec<f32> = rewards.into_iter().filter(|r| !r.is_nan()).collect();
    assert_close(
        device,
        &format!("{what}: rewards"),
        &got,
        &finite(&want.rewards),
        1e-5,
        1e-6,
    );
    let metrics = out.metrics.log().expect("metrics");
    let metric = |name: &str| logged(&metrics, name);
    assert_close(
        device,
        &format!("{what}: reward"),
        &[metric("reward").unwrap() as f32],
        &[want.reward],
        1e-5,
        1e-6,
    );
    assert_close(
        device,
        &format!("{what}: frac_reward_zero_std"),
        &[metric("frac_reward_zero_std").unwrap() as f32],
        &[want.frac_zero_std],
        0.0,
        1e-6,
    );
    match want.kl {
        Some(kl) => assert_close(
            device,
            &format!("{what}: kl"),
            &[metric("kl").expect("kl logged") as f32],
            &[kl],
            1e-5,
            1e-6,
        ),
        None => assert_eq!(metric("kl"), None, "[{device}] {what}: no kl"),
    }
}

#[test]
fn grpo_advantages_match_f64_for_every_scaling_and_aggregation() {
    let weightings: [Option<Vec<f64>>; 2] = [None, Some(vec![1.0, 0.5])];
    for (name, device) in devices() {
        for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
            for aggregation in [
                MultiObjectiveAggregation::SumThenNormalize,
                MultiObjectiveAggregation::NormalizeThenSum,
            ] {
                for weights in &weightings {
                    let w = weights.clone().unwrap_or(vec![1.0, 1.0]);
                    let want = grpo_reference(&REWARDS, 2, 3, scale, &w, aggregation);
                    let out = GrpoAdvantagesConfig::new()
                        .with_num_generations(3)
                        .with_scale_rewards(scale)
                        .with_reward_weights(weights.clone())
                        .with_multi_objective_aggregation(aggregation)
                        .init()
                        .unwrap()
                        .forward(rewards_tensor(&REWARDS, 2, &device))
                        .unwrap();
                    let what = format!("GRPO {scale:?} {aggregation:?} {weights:?}");
                    assert_output(name, &what, out, &want);
                }
            }
        }
    }
}

/// The cases TRL singles out, one at a time: an all-equal group has advantage 0 (its
/// standard deviation 0 counted by `frac_reward_zero_std`), an unscorable completion has
/// advantage 0 and stays out of its group's mean (its siblings' advantages are those of the
/// group without it), a partly scored completion's reward is the weighted sum of what was
/// scored.
#[test]
fn grpo_advantages_of_equal_unscorable_and_partly_scored_completions() {
    let device = &devices()[0].1;
    let grpo = GrpoAdvantagesConfig::new()
        .with_num_generations(3)
        .with_reward_weights(Some(vec![1.0, 0.5]))
        .init()
        .unwrap();
    let out = grpo.forward(rewards_tensor(&REWARDS, 2, device)).unwrap();
    let a = to_vec(out.advantages);
    let rewards = to_vec(out.rewards);
    // Group 1: 0.5 + 0.5, 1 + 0, 0 + 1: all 1.
    assert_eq!(a[3..6], [0.0, 0.0, 0.0]);
    // Group 2: the unscorable completion.
    assert_eq!(a[7], 0.0);
    assert!(rewards[7].is_nan());
    // Its siblings: 0.7 (NaN column skipped) and −1.2 + 0.2 = −1.0, as a group of two.
    assert_eq!(rewards[6], 0.7);
    let std = nanstd(&[0.7, -1.0]);
    assert_close(
        "",
        "siblings",
        &[a[6], a[8]],
        &[0.85 / (std + 1e-4), -0.85 / (std + 1e-4)],
        1e-5,
        1e-6,
    );
    let metrics = out.metrics.log().unwrap();
    // Group 1's three completions have std 0.
    assert_close(
        "",
        "frac",
        &[logged(&metrics, "frac_reward_zero_std").unwrap() as f32],
        &[3.0 / 12.0],
        0.0,
        1e-7,
    );
}

/// K = 1: every group's mean is its only reward, so every advantage is 0, whatever the
/// scaling; the group deviation is taken as 0 (all counted by `frac_reward_zero_std`), the
/// batch's is the batch's.
#[test]
fn grpo_advantages_with_one_completion_per_prompt() {
    let rewards = [0.3, NAN, -1.0, 2.0];
    for (name, device) in devices() {
        for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
            for aggregation in [
                MultiObjectiveAggregation::SumThenNormalize,
                MultiObjectiveAggregation::NormalizeThenSum,
            ] {
                let want = grpo_reference(&rewards, 1, 1, scale, &[1.0], aggregation);
                let out = GrpoAdvantagesConfig::new()
                    .with_num_generations(1)
                    .with_scale_rewards(scale)
                    .with_multi_objective_aggregation(aggregation)
                    .init()
                    .unwrap()
                    .forward(rewards_tensor(&rewards, 1, &device))
                    .unwrap();
                if aggregation == MultiObjectiveAggregation::SumThenNormalize {
                    assert!(want.advantages.iter().all(|a| *a == 0.0));
                }
                assert_output(
                    name,
                    &format!("K = 1 {scale:?} {aggregation:?}"),
                    out,
                    &want,
                );
            }
        }
    }
}

fn mask_tensor(values: &[bool], shape: [usize; 2], device: &Device) -> Tensor<2, Bool> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

/// RLOO's leave-one-out advantages with unscorable completions, a group with one scorable
/// completion (advantage 0), weights, a clip range (NaN stays NaN), the KL penalty from
/// per-token log-probs, and batch normalisation.
#[test]
fn rloo_advantages_match_f64() {
    // 3 prompts × K = 3 × F = 2; group 2 has one scorable completion.
    #[rustfmt::skip]
    let rewards = [
        1.0, 0.5,    0.2, -1.0,   -0.3, 2.5,
        0.7, NAN,    NAN, NAN,    -1.2, 0.4,
        NAN, NAN,    3.0, 0.1,    NAN, NAN,
    ];
    let n = 9;
    let c = 4;
    let lengths = [4, 2, 0, 3, 1, 4, 2, 3, 1];
    let mask: Vec<bool> = (0..n * c).map(|j| j % c < lengths[j / c]).collect();
    let old: Vec<f32> = (0..n * c).map(|j| -1.0 - (j as f32 * 0.61).sin()).collect();
    // Padding garbage in the reference: masked out of the sums.
    let reference: Vec<f32> = (0..n * c)
        .map(|j| {
            if mask[j] {
                old[j] + 0.4 * (j as f32 * 1.37).cos()
            } else {
                f32::NAN
            }
        })
        .collect();
    let sums: Vec<f64> = (0..n)
        .map(|i| {
            (0..c)
                .filter(|t| mask[i * c + t])
                .map(|t| f64::from(old[i * c + t]) - f64::from(reference[i * c + t]))
                .sum()
        })
        .collect();
    let tokens: Vec<f64> = lengths.iter().map(|&l| l as f64).collect();
    for (name, device) in devices() {
        let kl = RlooKl::from_token_logps(
            floats(old.clone(), [n, c], &device),
            floats(reference.clone(), [n, c], &device),
            mask_tensor(&mask, [n, c], &device),
        )
        .unwrap();
        assert_close(name, "kl sums", &to_vec(kl.sums.clone()), &sums, 1e-5, 1e-6);
        assert_close(
            name,
            "kl tokens",
            &to_vec(kl.tokens.clone()),
            &tokens,
            0.0,
            0.0,
        );
        for weights in [None, Some(vec![0.5, 2.0])] {
            for clip in [None, Some((-0.5, 1.5))] {
                for beta in [0.0, 0.1] {
                    for normalize in [false, true] {
                        let w = weights.clone().unwrap_or(vec![1.0, 1.0]);
                        let want = rloo_reference(
                            &rewards,
                            2,
                            3,
                            &w,
                            clip,
                            beta,
                            Some((&sums, &tokens)),
                            normalize,
                        );
                        let out = RlooAdvantagesConfig::new()
                            .with_num_generations(3)
                            .with_beta(beta)
                            .with_reward_weights(weights.clone())
                            .with_reward_clip_range(clip)
                            .with_normalize_advantages(normalize)
                            .init()
                            .unwrap()
                            .forward(rewards_tensor(&rewards, 2, &device), Some(kl.clone()))
                            .unwrap();
                        let what = format!("RLOO {weights:?} {clip:?} β {beta} norm {normalize}");
                        assert_output(name, &what, out, &want);
                    }
                }
            }
        }
    }
}

/// RLOO's baseline in closed form: `A_i = r_i − mean_{j≠i} r_j`, 0 for the unscorable and for
/// a lone scorable completion; K = 1 gives 0.
#[test]
fn rloo_leave_one_out_in_closed_form() {
    let device = &devices()[0].1;
    let rloo = |k: usize| {
        RlooAdvantagesConfig::new()
            .with_num_generations(k)
            .with_beta(0.0)
            .init()
            .unwrap()
    };
    let rewards = [4.0, 1.0, NAN, 2.0, NAN, 5.0, NAN, NAN];
    let out = rloo(4)
        .forward(rewards_tensor(&rewards, 1, device), None)
        .unwrap();
    let a = to_vec(out.advantages);
    assert_eq!(
        a,
        [4.0 - 1.5, 1.0 - 3.0, 0.0, 2.0 - 2.5, 0.0, 0.0, 0.0, 0.0]
    );
    let out = rloo(1)
        .forward(rewards_tensor(&[1.0, 2.0], 1, device), None)
        .unwrap();
    assert_eq!(to_vec(out.advantages), [0.0, 0.0]);
}

#[test]
fn scale_rewards_and_aggregation_deserialise_from_trl_values() {
    let parse = |json: &str| serde_json::from_str::<ScaleRewards>(json);
    assert_eq!(parse("\"group\"").unwrap(), ScaleRewards::Group);
    assert_eq!(parse("\"batch\"").unwrap(), ScaleRewards::Batch);
    assert_eq!(parse("\"none\"").unwrap(), ScaleRewards::None);
    assert_eq!(parse("true").unwrap(), ScaleRewards::Group);
    assert_eq!(parse("false").unwrap(), ScaleRewards::None);
    assert!(parse("\"sequence\"").is_err());
    assert!(parse("1").is_err());
    assert_eq!(
        serde_json::from_str::<MultiObjectiveAggregation>("\"normalize_then_sum\"").unwrap(),
        MultiObjectiveAggregation::NormalizeThenSum
    );
}

/// TRL's `GRPOConfig` as a dict (trainer keys beside the loss's and the advantages'): each
/// config takes its keys and ignores the others; what the dict leaves out keeps its default.
#[test]
fn configs_deserialise_from_a_trl_dict() {
    let trl = r#"{
        "output_dir": "out", "learning_rate": 1e-6, "per_device_train_batch_size": 4,
        "num_generations": 8, "max_completion_length": 256, "temperature": 0.9,
        "loss_type": "dr_grpo", "beta": 0.04, "epsilon": 0.2, "epsilon_high": 0.28,
        "delta": null, "importance_sampling_level": "sequence", "scale_rewards": "batch",
        "reward_weights": [1.0, 0.5], "multi_objective_aggregation": "sum_then_normalize",
        "top_entropy_quantile": 0.2, "mask_truncated_completions": true,
        "off_policy_mask_threshold": 0.5, "use_vllm": true, "vllm_mode": "colocate"
    }"#;
    let loss: GrpoConfig = serde_json::from_str(trl).unwrap();
    let expected = GrpoConfig::new()
        .with_loss_type(GrpoLossType::DrGrpo)
        .with_beta(0.04)
        .with_epsilon_high(Some(0.28))
        .with_importance_sampling_level(ImportanceSamplingLevel::Sequence)
        .with_max_completion_length(256)
        .with_top_entropy_quantile(0.2)
        .with_mask_truncated_completions(true)
        .with_off_policy_mask_threshold(Some(0.5));
    assert_eq!(loss, expected);
    loss.init().unwrap();
    let advantages: GrpoAdvantagesConfig = serde_json::from_str(trl).unwrap();
    assert_eq!(
        advantages,
        GrpoAdvantagesConfig::new()
            .with_num_generations(8)
            .with_scale_rewards(ScaleRewards::Batch)
            .with_reward_weights(Some(vec![1.0, 0.5]))
    );
    // TRL's older boolean scale_rewards.
    let old: GrpoAdvantagesConfig = serde_json::from_str(r#"{"scale_rewards": false}"#).unwrap();
    assert_eq!(old.scale_rewards, ScaleRewards::None);
    assert!(serde_json::from_str::<GrpoConfig>(r#"{"loss_type": "ppo"}"#).is_err());

    let rloo = r#"{
        "num_generations": 4, "beta": 0.03, "epsilon": 0.15, "epsilon_high": 0.3,
        "normalize_advantages": true, "reward_clip_range": [-2.0, 3.0],
        "reward_weights": null, "max_completion_length": 128, "seed": 3
    }"#;
    let loss: RlooConfig = serde_json::from_str(rloo).unwrap();
    assert_eq!(
        loss,
        RlooConfig::new()
            .with_epsilon(0.15)
            .with_epsilon_high(Some(0.3))
    );
    let advantages: RlooAdvantagesConfig = serde_json::from_str(rloo).unwrap();
    assert_eq!(
        advantages,
        RlooAdvantagesConfig::new()
            .with_num_generations(4)
            .with_beta(0.03)
            .with_normalize_advantages(true)
            .with_reward_clip_range(Some((-2.0, 3.0)))
    );
}
