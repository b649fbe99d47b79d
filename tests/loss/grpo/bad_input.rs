//! Bad input to the GRPO family, RLOO, their advantages and `CompletionBatch`: each config key
//! out of range names itself; a missing input names the argument; shapes, batch sizes and
//! devices the builders refuse; value checks catch non-finite advantages and counted
//! log-probs (and nothing at masked positions), and with them off nothing is read back.

use burn::tensor::{Bool, Device, Tensor};
use burn_preference::advantages::{GrpoAdvantagesConfig, RlooAdvantagesConfig, RlooKl};
use burn_preference::batch::{CompletionBatch, StepTotals};
use burn_preference::diagnostics::host_reads;
use burn_preference::loss::{GrpoConfig, GrpoLossType, RlooConfig};
use burn_preference::prelude::*;

use crate::common::cases::{Case, assert_covers, case, check_cases, device_pairs, f1, f2};
use crate::common::{autodiff_devices, devices, to_vec};

fn mask(rows: usize, columns: usize, device: &Device) -> Tensor<2, Bool> {
    Tensor::<2>::ones([rows, columns], device).greater_elem(0.0)
}

/// A valid batch of 2 completions × 3 positions.
fn valid(device: &Device) -> CompletionBatch {
    CompletionBatch::new(
        f2(&[-0.5, -1.0, -0.2, -2.0, -0.1, -0.3], [2, 3], device),
        mask(2, 3, device),
        f1(&[1.0, -1.0], device),
    )
    .unwrap()
}

#[test]
fn config_keys_out_of_range_name_themselves() {
    let grpo = |name: &'static str, cfg: GrpoConfig| case(name, cfg.init(), "OutOfRange", name);
    let g = GrpoConfig::new;
    let cases: Vec<Case> = vec![
        grpo("beta", g().with_beta(-0.1)),
        case(
            "beta inf",
            g().with_beta(f64::INFINITY).init(),
            "OutOfRange",
            "beta",
        ),
        grpo("epsilon", g().with_epsilon(1.0)),
        case(
            "epsilon < 0",
            g().with_epsilon(-0.1).init(),
            "OutOfRange",
            "epsilon",
        ),
        case(
            "epsilon NaN",
            g().with_epsilon(f64::NAN).init(),
            "OutOfRange",
            "epsilon",
        ),
        grpo("epsilon_high", g().with_epsilon_high(Some(-0.5))),
        grpo("delta", g().with_delta(Some(1.0))),
        grpo("sapo_temperature_neg", g().with_sapo_temperature_neg(0.0)),
        grpo("sapo_temperature_pos", g().with_sapo_temperature_pos(-1.0)),
        grpo("vespo_k_pos", g().with_vespo_k_pos(f64::NAN)),
        grpo("vespo_lambda_pos", g().with_vespo_lambda_pos(f64::INFINITY)),
        grpo("vespo_k_neg", g().with_vespo_k_neg(f64::NEG_INFINITY)),
        grpo("vespo_lambda_neg", g().with_vespo_lambda_neg(f64::NAN)),
        grpo("max_completion_length", g().with_max_completion_length(0)),
        grpo("top_entropy_quantile", g().with_top_entropy_quantile(1.5)),
        case(
            "top_entropy_quantile < 0",
            g().with_top_entropy_quantile(-0.1).init(),
            "OutOfRange",
            "top_entropy_quantile",
        ),
        grpo(
            "off_policy_mask_threshold",
            g().with_off_policy_mask_threshold(Some(f64::NAN)),
        ),
        grpo("entropy_coef", g().with_entropy_coef(f64::INFINITY)),
        case(
            "RLOO epsilon",
            RlooConfig::new().with_epsilon(1.2).init(),
            "OutOfRange",
            "epsilon",
        ),
        case(
            "RLOO epsilon_high",
            RlooConfig::new().with_epsilon_high(Some(-0.1)).init(),
            "OutOfRange",
            "epsilon_high",
        ),
        case(
            "GRPO num_generations",
            GrpoAdvantagesConfig::new().with_num_generations(0).init(),
            "OutOfRange",
            "num_generations",
        ),
        case(
            "GRPO reward_weights",
            GrpoAdvantagesConfig::new()
                .with_reward_weights(Some(vec![1.0, f64::NAN]))
                .init(),
            "OutOfRange",
            "reward_weights",
        ),
        case(
            "RLOO num_generations",
            RlooAdvantagesConfig::new().with_num_generations(0).init(),
            "OutOfRange",
            "num_generations",
        ),
        case(
            "RLOO beta",
            RlooAdvantagesConfig::new().with_beta(-0.01).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "RLOO reward_weights",
            RlooAdvantagesConfig::new()
                .with_reward_weights(Some(vec![f64::INFINITY]))
                .init(),
            "OutOfRange",
            "reward_weights",
        ),
        case(
            "RLOO reward_clip_range order",
            RlooAdvantagesConfig::new()
                .with_reward_clip_range(Some((1.0, -1.0)))
                .init(),
            "OutOfRange",
            "reward_clip_range.1",
        ),
        case(
            "RLOO reward_clip_range NaN",
            RlooAdvantagesConfig::new()
                .with_reward_clip_range(Some((f64::NAN, 1.0)))
                .init(),
            "OutOfRange",
            "reward_clip_range.0",
        ),
    ];
    check_cases("config", cases);
}

#[test]
fn missing_inputs_and_bad_shapes_name_the_argument() {
    for (name, device) in devices() {
        let d = &device;
        let forward = |cfg: GrpoConfig, batch: burn_preference::Result<CompletionBatch>| {
            batch.and_then(|b| cfg.init().unwrap().forward(b))
        };
        let kl = || {
            RlooKl::from_token_logps(
                f2(&[0.0; 6], [2, 3], d),
                f2(&[0.0; 6], [2, 3], d),
                mask(2, 3, d),
            )
        };
        let mut cases: Vec<Case> = vec![
            // Missing inputs.
            case(
                "beta without reference",
                forward(GrpoConfig::new().with_beta(0.1), Ok(valid(d))),
                "MissingInput",
                "reference",
            ),
            case(
                "entropy quantile without entropies",
                forward(
                    GrpoConfig::new().with_top_entropy_quantile(0.2),
                    Ok(valid(d)),
                ),
                "MissingInput",
                "entropy",
            ),
            case(
                "entropy bonus without entropies",
                forward(GrpoConfig::new().with_entropy_coef(0.1), Ok(valid(d))),
                "MissingInput",
                "entropy",
            ),
            case(
                "mask_truncated without flags",
                forward(
                    GrpoConfig::new().with_mask_truncated_completions(true),
                    Ok(valid(d)),
                ),
                "MissingInput",
                "truncated",
            ),
            case(
                "RLOO token advantages",
                valid(d)
                    .with_token_advantages(f2(&[0.5; 6], [2, 3], d))
                    .and_then(|b| RlooConfig::new().init().unwrap().forward(b)),
                "Shape",
                "advantages",
            ),
            case(
                "RLOO beta without kl",
                RlooAdvantagesConfig::new()
                    .with_num_generations(2)
                    .init()
                    .unwrap()
                    .forward(f2(&[1.0, 0.0], [2, 1], d), None),
                "MissingInput",
                "kl",
            ),
            // CompletionBatch's builders.
            case(
                "no completions",
                CompletionBatch::new(f2(&[], [0, 3], d), mask(0, 3, d), f1(&[], d)),
                "Empty",
                "policy",
            ),
            case(
                "no positions",
                CompletionBatch::new(f2(&[], [2, 0], d), mask(2, 0, d), f1(&[1.0, 0.0], d)),
                "Empty",
                "policy",
            ),
            case(
                "mask shape",
                CompletionBatch::new(f2(&[0.0; 6], [2, 3], d), mask(2, 2, d), f1(&[1.0, 0.0], d)),
                "Shape",
                "mask",
            ),
            case(
                "advantages rows",
                CompletionBatch::new(f2(&[0.0; 6], [2, 3], d), mask(2, 3, d), f1(&[1.0], d)),
                "BatchMismatch",
                "advantages",
            ),
            case(
                "token advantages shape",
                valid(d).with_token_advantages(f2(&[0.0; 4], [2, 2], d)),
                "Shape",
                "advantages",
            ),
            case(
                "old shape",
                valid(d).with_old_logps(f2(&[0.0; 3], [1, 3], d)),
                "Shape",
                "old",
            ),
            case(
                "reference shape",
                valid(d).with_reference(f2(&[0.0; 8], [2, 4], d)),
                "Shape",
                "reference",
            ),
            case(
                "entropy shape",
                valid(d).with_entropy(f2(&[0.0; 2], [2, 1], d)),
                "Shape",
                "entropy",
            ),
            case(
                "IS ratio shape",
                valid(d).with_importance_sampling_ratio(f2(&[1.0; 4], [2, 2], d)),
                "Shape",
                "importance_sampling_ratio",
            ),
            case(
                "IS ratio rows",
                valid(d).with_importance_sampling_ratio(f2(&[1.0; 3], [3, 1], d)),
                "BatchMismatch",
                "importance_sampling_ratio",
            ),
            case(
                "sampling shape",
                valid(d).with_sampling_logps(f2(&[0.0; 9], [3, 3], d)),
                "Shape",
                "sampling",
            ),
            case(
                "truncated rows",
                valid(d).with_truncated(Tensor::<1>::zeros([3], d).greater_elem(0.0)),
                "BatchMismatch",
                "truncated",
            ),
            case(
                "step examples",
                valid(d).with_step(StepTotals::new(0.0, 5.0)),
                "OutOfRange",
                "step.examples",
            ),
            case(
                "step tokens",
                valid(d).with_step(StepTotals::new(2.0, f64::NAN)),
                "OutOfRange",
                "step.tokens",
            ),
            // Rewards.
            case(
                "rewards not divisible by K",
                GrpoAdvantagesConfig::new()
                    .with_num_generations(4)
                    .init()
                    .unwrap()
                    .forward(f2(&[0.0; 6], [6, 1], d)),
                "Shape",
                "rewards",
            ),
            case(
                "RLOO rewards not divisible by K",
                RlooAdvantagesConfig::new()
                    .with_num_generations(4)
                    .with_beta(0.0)
                    .init()
                    .unwrap()
                    .forward(f2(&[0.0; 6], [6, 1], d), None),
                "Shape",
                "rewards",
            ),
            case(
                "rewards vs weights",
                GrpoAdvantagesConfig::new()
                    .with_num_generations(2)
                    .with_reward_weights(Some(vec![1.0, 2.0, 3.0]))
                    .init()
                    .unwrap()
                    .forward(f2(&[0.0; 4], [2, 2], d)),
                "Shape",
                "rewards",
            ),
            case(
                "no rewards",
                GrpoAdvantagesConfig::new()
                    .init()
                    .unwrap()
                    .forward(f2(&[], [0, 1], d)),
                "Empty",
                "rewards",
            ),
            case(
                "no reward functions",
                GrpoAdvantagesConfig::new()
                    .with_num_generations(2)
                    .init()
                    .unwrap()
                    .forward(f2(&[], [2, 0], d)),
                "Empty",
                "rewards",
            ),
            case(
                "kl reference shape",
                RlooKl::from_token_logps(
                    f2(&[0.0; 6], [2, 3], d),
                    f2(&[0.0; 4], [2, 2], d),
                    mask(2, 3, d),
                ),
                "Shape",
                "reference",
            ),
            case(
                "kl mask shape",
                RlooKl::from_token_logps(
                    f2(&[0.0; 6], [2, 3], d),
                    f2(&[0.0; 6], [2, 3], d),
                    mask(3, 3, d),
                ),
                "Shape",
                "mask",
            ),
            case(
                "kl of another batch",
                RlooAdvantagesConfig::new()
                    .with_num_generations(3)
                    .init()
                    .unwrap()
                    .forward(f2(&[0.0; 3], [3, 1], d), Some(kl().unwrap())),
                "BatchMismatch",
                "kl.sums",
            ),
        ];
        // One pair of devices is enough (wgpu's buffers are slow to create).
        if let Some((_, a, b)) = device_pairs().into_iter().next() {
            cases.push(case(
                "policy and mask on two devices",
                CompletionBatch::new(
                    f2(&[0.0; 6], [2, 3], &a),
                    mask(2, 3, &b),
                    f1(&[1.0, 0.0], &a),
                ),
                "DeviceMismatch",
                "mask",
            ));
            cases.push(case(
                "old on another device",
                valid(&a).with_old_logps(f2(&[0.0; 6], [2, 3], &b)),
                "DeviceMismatch",
                "old",
            ));
            cases.push(case(
                "truncated on another device",
                valid(&a).with_truncated(Tensor::<1>::zeros([2], &b).greater_elem(0.0)),
                "DeviceMismatch",
                "truncated",
            ));
        }
        let checked = check_cases(name, cases);
        assert_covers(
            "grpo",
            &checked,
            &[
                "Shape",
                "BatchMismatch",
                "Empty",
                "OutOfRange",
                "MissingInput",
                "DeviceMismatch",
            ],
        );
    }
}

/// Value checks (on by default): NaN advantages and non-finite counted log-probs are refused,
/// naming them; non-finite values at masked positions are not.
#[test]
fn value_checks_refuse_non_finite_values() {
    for (name, device) in devices() {
        let d = &device;
        let nan_advantages = || {
            CompletionBatch::new(
                f2(&[-0.5; 6], [2, 3], d),
                mask(2, 3, d),
                f1(&[f32::NAN, 1.0], d),
            )
        };
        let inf_policy = || {
            CompletionBatch::new(
                f2(
                    &[-0.5, f32::NEG_INFINITY, -0.2, -2.0, -0.1, -0.3],
                    [2, 3],
                    d,
                ),
                mask(2, 3, d),
                f1(&[1.0, -1.0], d),
            )
        };
        let mut cases = Vec::new();
        for loss_type in [GrpoLossType::Grpo, GrpoLossType::Dapo, GrpoLossType::Cispo] {
            let grpo = GrpoConfig::new().with_loss_type(loss_type).init().unwrap();
            cases.push(case(
                "GRPO NaN advantage",
                nan_advantages().and_then(|b| grpo.forward(b)),
                "NonFinite",
                "advantages",
            ));
            cases.push(case(
                "GRPO −inf counted log-prob",
                inf_policy().and_then(|b| grpo.forward(b)),
                "NonFinite",
                "policy",
            ));
            check_cases(name, std::mem::take(&mut cases));
        }
        let token_nan = valid(d)
            .with_token_advantages(f2(&[0.0, 1.0, f32::NAN, 0.0, 0.0, 0.0], [2, 3], d))
            .unwrap();
        let rloo = RlooConfig::new().init().unwrap();
        let cases = vec![
            case(
                "GRPO NaN token advantage",
                GrpoConfig::new().init().unwrap().forward(token_nan),
                "NonFinite",
                "advantages",
            ),
            case(
                "RLOO NaN advantage",
                nan_advantages().and_then(|b| rloo.forward(b)),
                "NonFinite",
                "advantages",
            ),
            case(
                "RLOO −inf counted log-prob",
                inf_policy().and_then(|b| rloo.forward(b)),
                "NonFinite",
                "policy",
            ),
        ];
        check_cases(name, cases);
        // At a masked position the same −inf is padding: accepted, and the loss is finite.
        let masked = Tensor::<2, Bool>::from_bool(
            burn::tensor::TensorData::new(vec![true, false, true, true, true, true], [2, 3]),
            d,
        );
        let batch = CompletionBatch::new(
            f2(
                &[-0.5, f32::NEG_INFINITY, -0.2, -2.0, -0.1, -0.3],
                [2, 3],
                d,
            ),
            masked,
            f1(&[1.0, -1.0], d),
        )
        .unwrap();
        for loss_type in super::loss::LOSS_TYPES {
            let out = GrpoConfig::new()
                .with_loss_type(loss_type)
                .init()
                .unwrap()
                .forward(batch.clone())
                .unwrap_or_else(|e| panic!("[{name}] {loss_type:?}: {e}"));
            let loss = to_vec(out.loss)[0];
            assert!(
                loss.is_finite(),
                "[{name}] {loss_type:?}: −inf padding gives {loss}"
            );
        }
        let loss = to_vec(rloo.forward(batch).unwrap().loss)[0];
        assert!(loss.is_finite(), "[{name}] RLOO: −inf padding gives {loss}");
    }
}

/// With value checks off, building the batches, the advantages and every loss's forward read
/// nothing back (the thread's `host_reads` does not move), even with every option on.
#[test]
fn without_value_checks_nothing_is_read_back() {
    let case = super::reference::Case::base();
    for (name, device) in autodiff_devices() {
        let before = host_reads();
        let rewards = f2(&[1.0, f32::NAN, 0.5, 2.0, -1.0, 0.0], [6, 1], &device);
        let grpo_advantages = GrpoAdvantagesConfig::new()
            .with_num_generations(3)
            .init()
            .unwrap()
            .forward(rewards.clone())
            .unwrap();
        let kl = RlooKl::from_token_logps(
            f2(case.old.as_ref().unwrap(), [6, 5], &device),
            f2(case.reference.as_ref().unwrap(), [6, 5], &device),
            super::reference::bools(&case.mask, [6, 5], &device),
        )
        .unwrap();
        let rloo_advantages = RlooAdvantagesConfig::new()
            .with_num_generations(3)
            .with_normalize_advantages(true)
            .with_reward_clip_range(Some((-1.0, 1.0)))
            .init()
            .unwrap()
            .forward(rewards, Some(kl))
            .unwrap();
        let mut truncated = case.clone();
        truncated.truncated = Some(vec![false, true, false, false, false, true]);
        for loss_type in super::loss::LOSS_TYPES {
            let (batch, _, _) =
                super::reference::batch(&truncated, &device, Some(StepTotals::new(6.0, 12.0)));
            GrpoConfig::new()
                .with_loss_type(loss_type)
                .with_beta(0.1)
                .with_top_entropy_quantile(0.5)
                .with_off_policy_mask_threshold(Some(0.0))
                .with_entropy_coef(0.01)
                .with_mask_truncated_completions(true)
                .with_value_checks(false)
                .init()
                .unwrap()
                .forward(batch)
                .unwrap();
        }
        let (batch, _, _) = super::reference::batch(&case, &device, None);
        RlooConfig::new()
            .with_value_checks(false)
            .init()
            .unwrap()
            .forward(batch)
            .unwrap();
        assert_eq!(host_reads(), before, "[{name}] reads without value checks");
        // With them on, the losses read (and only then).
        let (batch, _, _) = super::reference::batch(&case, &device, None);
        GrpoConfig::new().init().unwrap().forward(batch).unwrap();
        assert!(host_reads() > before, "[{name}] value checks read");
        drop((grpo_advantages, rloo_advantages));
    }
}
