//! GRPO's loss against the `f64` reference of `reference.rs` (TRL 1.16's `_compute_loss`):
//! every `loss_type` under each option — token and sequence ratios, clip-higher, `delta`, the
//! KL term with and without bias correction, the off-policy mask (with and without the
//! engine's log-probs), the entropy quantile mask, the engine's correction, the entropy
//! bonus, truncated completions, per-token advantages — loss, shares, gradients with respect
//! to the policy's log-probs and the entropies, and metrics.

use burn_preference::loss::{GrpoConfig, GrpoLossType, ImportanceSamplingLevel};

use super::reference::{Case, assert_matches, high_entropy_mask, quantile, reference, run};
use crate::common::{assert_close, autodiff_devices, cpu_autodiff_devices};

pub const LOSS_TYPES: [GrpoLossType; 8] = GrpoLossType::ALL;

/// Every loss type with `configure` applied, on the CPU autodiff devices, against the
/// reference. A small `max_completion_length` keeps `dr_grpo`'s values of the others' size.
pub fn check_every_type(what: &str, case: &Case, configure: impl Fn(GrpoConfig) -> GrpoConfig) {
    for loss_type in LOSS_TYPES {
        let cfg = configure(
            GrpoConfig::new()
                .with_loss_type(loss_type)
                .with_max_completion_length(7),
        );
        let want = reference(case, &cfg, None);
        for (name, device) in cpu_autodiff_devices() {
            let got = run(case, &cfg, &device, None);
            assert_matches(name, &format!("{what} {loss_type:?}"), &got, &want);
        }
    }
}

/// On-policy (no old log-probs, ratio 1), nothing optional: `−A` per token and each type's
/// normaliser. Also on every compiled-in device (wgpu too, when built with it).
#[test]
fn on_policy_every_type() {
    let case = Case::base().bare();
    check_every_type("on-policy", &case, |c| c);
    let cfg = GrpoConfig::new().with_loss_type(GrpoLossType::Grpo);
    let want = reference(&case, &cfg, None);
    for (name, device) in autodiff_devices() {
        assert_matches(
            name,
            "on-policy grpo",
            &run(&case, &cfg, &device, None),
            &want,
        );
    }
}

/// Old log-probs within ±0.3 of the policy's: ratios clipped on both sides, symmetric clip
/// and DAPO's clip-higher.
#[test]
fn token_ratios_with_clip_higher() {
    let mut case = Case::base();
    case.is_ratio = None;
    check_every_type("token ε 0.2", &case, |c| c);
    check_every_type("token ε 0.2/0.28", &case, |c| {
        c.with_epsilon_high(Some(0.28))
    });
    // CISPO's cap below some ratios.
    check_every_type("token ε_h 1.1", &case, |c| c.with_epsilon_high(Some(1.1)));
}

/// GSPO's sequence ratio `exp(mean_t log(π/π_old))`.
#[test]
fn sequence_ratios() {
    let mut case = Case::base();
    case.is_ratio = None;
    check_every_type("sequence", &case, |c| {
        c.with_importance_sampling_level(ImportanceSamplingLevel::Sequence)
            .with_epsilon(0.1)
            .with_epsilon_high(Some(0.12))
    });
}

/// INTELLECT-2's two-sided clip: the unclipped ratio capped at δ.
#[test]
fn delta_caps_the_unclipped_ratio() {
    let mut case = Case::base();
    case.is_ratio = None;
    // Log ratios up to ±0.9: some ratios above δ = 1.3.
    let stretched: Vec<f32> = case
        .policy
        .iter()
        .zip(case.old.as_ref().unwrap())
        .map(|(p, o)| p - 3.0 * (p - o))
        .collect();
    case.old = Some(stretched);
    check_every_type("delta", &case, |c| c.with_delta(Some(1.3)));
    // δ changes the clipped types' loss where a negative advantage meets a ratio above δ.
    let plain = reference(&case, &GrpoConfig::new(), None).loss;
    let capped = reference(&case, &GrpoConfig::new().with_delta(Some(1.3)), None).loss;
    assert!(
        (plain - capped).abs() > 1e-3,
        "δ must bite: {plain} vs {capped}"
    );
}

/// The KL term `β·(e^{ref−π} − (ref−π) − 1)`, and its bias correction by the ratio (token and
/// sequence ratios).
#[test]
fn kl_term_with_and_without_bias_correction() {
    let mut case = Case::base();
    case.is_ratio = None;
    check_every_type("β", &case, |c| c.with_beta(0.07));
    check_every_type("β corrected", &case, |c| {
        c.with_beta(0.07).with_use_bias_correction_kl(true)
    });
    check_every_type("β corrected sequence", &case, |c| {
        c.with_beta(0.07)
            .with_use_bias_correction_kl(true)
            .with_importance_sampling_level(ImportanceSamplingLevel::Sequence)
    });
    // On-policy: the KL against the reference alone.
    let bare = Case {
        reference: Case::base().reference,
        ..Case::base().bare()
    };
    check_every_type("β on-policy", &bare, |c| c.with_beta(0.5));
}

/// DeepSeek-V3.2's off-policy mask: a negative-advantage completion whose mean drift
/// `log π_sampling − log π` exceeds the threshold is dropped; the engine's log-probs when the
/// batch has them, else the old ones.
#[test]
fn off_policy_mask_with_and_without_sampling_logps() {
    let mut case = Case::base();
    case.is_ratio = None;
    let threshold = -0.02;
    check_every_type("off-policy sampling", &case, |c| {
        c.with_off_policy_mask_threshold(Some(threshold))
    });
    let mut without = case.clone();
    without.sampling = None;
    check_every_type("off-policy old", &without, |c| {
        c.with_off_policy_mask_threshold(Some(threshold))
    });
    // The mask bites in both (each drops a completion the other keeps or so): the loss moves.
    for case in [&case, &without] {
        let plain = reference(case, &GrpoConfig::new(), None).loss;
        let masked = reference(
            case,
            &GrpoConfig::new().with_off_policy_mask_threshold(Some(threshold)),
            None,
        )
        .loss;
        assert!(
            (plain - masked).abs() > 1e-4,
            "the mask must bite: {plain} vs {masked}"
        );
    }
    // Without old log-probs either: the sampling policy is the policy, drift 0 ≤ 0.1 keeps all.
    let bare = Case::base().bare();
    check_every_type("off-policy on-policy", &bare, |c| {
        c.with_off_policy_mask_threshold(Some(0.1))
    });
}

/// TRL's entropy mask keeps the tokens at or above the `1 − q` quantile of the counted
/// tokens' entropies (linear interpolation). The kept set is read off the gradients of a
/// loss that is linear in each token (CISPO, on-policy): a token the mask drops gets none.
#[test]
fn entropy_quantile_mask_keeps_the_top_tokens() {
    let case = Case::base().bare();
    let case = Case {
        entropy: Case::base().entropy,
        ..case
    };
    let entropy: Vec<f64> = case
        .entropy
        .as_ref()
        .unwrap()
        .iter()
        .map(|&e| e.into())
        .collect();
    for q in [0.2, 0.35, 0.5, 0.8, 0.0] {
        let kept = high_entropy_mask(&entropy, &case.mask, 1.0 - q);
        // The reference's own quantile against a direct count: about q of the tokens.
        let counted: Vec<f64> = entropy
            .iter()
            .zip(&case.mask)
            .filter(|(_, m)| **m)
            .map(|(e, _)| *e)
            .collect();
        let threshold = quantile(&counted, 1.0 - q);
        let above = counted.iter().filter(|&&e| e >= threshold).count();
        assert_eq!(above, kept.iter().filter(|&&k| k).count());
        let cfg = GrpoConfig::new()
            .with_loss_type(GrpoLossType::Cispo)
            .with_top_entropy_quantile(q);
        for (name, device) in cpu_autodiff_devices() {
            let got = run(&case, &cfg, &device, None);
            let nonzero: Vec<bool> = got.grad_policy.iter().map(|g| *g != 0.0).collect();
            assert_eq!(nonzero, kept, "[{name}] kept set at q = {q}");
        }
    }
    check_every_type("entropy mask", &Case::base(), |c| {
        c.with_top_entropy_quantile(0.4)
    });
    check_every_type("entropy mask sequence", &Case::base(), |c| {
        c.with_top_entropy_quantile(0.3)
            .with_importance_sampling_level(ImportanceSamplingLevel::Sequence)
    });
}

/// The engine's importance-sampling correction multiplies every type's per-token loss but
/// VESPO's, which folds it into its weight; off, it is ignored (VESPO's weight still reads
/// it, as TRL's).
#[test]
fn importance_sampling_correction() {
    let case = Case::base();
    check_every_type("IS on", &case, |c| c);
    check_every_type("IS off", &case, |c| {
        c.with_vllm_importance_sampling_correction(false)
    });
    // VESPO: not multiplied: the same loss with the correction on or off.
    let vespo = GrpoConfig::new().with_loss_type(GrpoLossType::Vespo);
    for (name, device) in cpu_autodiff_devices() {
        let on = run(&case, &vespo, &device, None).loss;
        let off = run(
            &case,
            &vespo
                .clone()
                .with_vllm_importance_sampling_correction(false),
            &device,
            None,
        )
        .loss;
        assert_eq!(
            on, off,
            "[{name}] VESPO does not multiply by the correction"
        );
        let dapo = GrpoConfig::new();
        let on = run(&case, &dapo, &device, None).loss;
        let off = run(
            &case,
            &dapo.with_vllm_importance_sampling_correction(false),
            &device,
            None,
        )
        .loss;
        assert!((on - off).abs() > 1e-4, "[{name}] DAPO does");
    }
}

/// The entropy bonus `−coef·mean(H)` over the counted tokens, or over the entropy mask's;
/// its gradient with respect to the entropies; `policy_loss` the loss before it.
#[test]
fn entropy_bonus() {
    check_every_type("bonus", &Case::base(), |c| c.with_entropy_coef(0.03));
    check_every_type("bonus masked", &Case::base(), |c| {
        c.with_entropy_coef(-0.2)
            .with_top_entropy_quantile(0.5)
            .with_beta(0.02)
    });
}

/// `mask_truncated_completions`: the truncated completions' tokens do not count anywhere.
#[test]
fn truncated_completions() {
    let mut case = Case::base();
    case.truncated = Some(vec![false, true, true, false, true, false]);
    check_every_type("truncated", &case, |c| {
        c.with_mask_truncated_completions(true)
            .with_beta(0.05)
            .with_entropy_coef(0.01)
    });
    // Off: the flags are ignored.
    check_every_type("truncated off", &case, |c| c);
}

/// One advantage per token, with every option that reads the advantage's sign.
#[test]
fn per_token_advantages() {
    let case = Case::base().per_token_advantages();
    check_every_type("token A", &case, |c| c.with_epsilon_high(Some(0.28)));
    check_every_type("token A sequence", &case, |c| {
        c.with_importance_sampling_level(ImportanceSamplingLevel::Sequence)
            .with_off_policy_mask_threshold(Some(0.0))
    });
}

/// Everything at once, non-default hyperparameters.
#[test]
fn every_option_together() {
    let mut case = Case::base();
    case.truncated = Some(vec![false, false, true, false, false, true]);
    check_every_type("all", &case, |c| {
        c.with_beta(0.03)
            .with_use_bias_correction_kl(true)
            .with_epsilon(0.15)
            .with_epsilon_high(Some(0.25))
            .with_delta(Some(1.4))
            .with_sapo_temperature_neg(2.0)
            .with_sapo_temperature_pos(0.5)
            .with_vespo_k_pos(1.5)
            .with_vespo_lambda_pos(2.0)
            .with_vespo_k_neg(2.5)
            .with_vespo_lambda_neg(1.5)
            .with_top_entropy_quantile(0.7)
            .with_off_policy_mask_threshold(Some(0.05))
            .with_entropy_coef(0.01)
            .with_mask_truncated_completions(true)
    });
}

/// The closed forms of the normalisers on a batch where every token's loss is `−A`: grpo
/// averages the completions' means, bnpo/dapo the tokens, dr_grpo divides by
/// `N·max_completion_length`, luspo averages the completions' sums.
#[test]
fn normalisers_in_closed_form() {
    let case = Case::base().bare();
    let lengths = super::reference::LENGTHS;
    let a = super::reference::ADVANTAGES.map(f64::from);
    let n = 6.0;
    let tokens: f64 = lengths.iter().sum::<usize>() as f64;
    let sum_tokens: f64 = (0..6).map(|i| -a[i] * lengths[i] as f64).sum();
    let mean_of_means: f64 = (0..6)
        .filter(|&i| lengths[i] > 0)
        .map(|i| -a[i])
        .sum::<f64>()
        / n;
    for (loss_type, expected) in [
        (GrpoLossType::Grpo, mean_of_means),
        (GrpoLossType::Bnpo, sum_tokens / tokens),
        (GrpoLossType::Dapo, sum_tokens / tokens),
        (GrpoLossType::DrGrpo, sum_tokens / (n * 20.0)),
        (GrpoLossType::Luspo, sum_tokens / n),
        // SAPO at r = 1: σ(0)·4/τ = 2/τ.
        (
            GrpoLossType::Sapo,
            (0..6)
                .filter(|&i| lengths[i] > 0)
                .map(|i| -a[i] * 2.0 / if a[i] > 0.0 { 1.0 } else { 1.05 })
                .sum::<f64>()
                / n,
        ),
    ] {
        let cfg = GrpoConfig::new()
            .with_loss_type(loss_type)
            .with_max_completion_length(20);
        for (name, device) in cpu_autodiff_devices() {
            let got = run(&case, &cfg, &device, None);
            assert_close(
                name,
                &format!("{loss_type:?} closed form"),
                &[got.loss],
                &[expected],
                1e-5,
                1e-6,
            );
        }
    }
}
