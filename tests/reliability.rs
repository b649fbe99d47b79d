//! Reliability: no panic and no silent NaN.
//!
//! - A bad-input matrix over every public entry point: each case must return the typed error
//!   named in the table, and its message must name the offending argument.
//! - Regression tests for the findings of the first fuzzing campaign (numbered as in its
//!   report, `finding_N_…`).
//! - Randomized properties at extreme inputs (logits ±1e4 / ±1e30, margins ±1e6, ties, soft
//!   labels exactly 0 and 1) against f64 references written here: values and autodiff
//!   gradients finite wherever the math is finite.
//!
//! The number of randomized cases is `FUZZ_CASES` (default 2000, split over the properties):
//! `FUZZ_CASES=100000 cargo test --release --test reliability` runs the long campaign.

mod common;

use std::str::FromStr;

use burn::tensor::{Bool, Device, Int, Tensor};
use burn_preference::loss::{CpoLossType, KtoLossType, kl_pairs, token_mean_nll};
use burn_preference::{
    BcoConfig, BcoState, CpoConfig, DpoConfig, DpoLossType, FDivergence, HeadLayout, IpoConfig,
    KtoConfig, LmHead, LogpReduction, OrpoConfig, PreferenceBatch, PreferenceCollatorConfig,
    PreferenceError, PreferenceExample, PreferenceLoss, Psi, PsiPoConfig, RankedExample,
    RrhfConfig, Segments, SequenceLogpsConfig, UnpairedBatch, categorical_kl,
    concatenated_log_ratios, log_ratios, pairwise_log_ratios, ranking_accuracy, sequence_logps,
    split_concatenated, token_kl,
};
use common::{assert_close, autodiff_devices, devices, floats, fuzz_cases, ints, to_vec};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// The bad-input matrix
// ---------------------------------------------------------------------------------------------

/// The variant's name, for the table and the failure messages.
fn variant(err: &PreferenceError) -> &'static str {
    match err {
        PreferenceError::Shape { .. } => "Shape",
        PreferenceError::BatchMismatch { .. } => "BatchMismatch",
        PreferenceError::Empty { .. } => "Empty",
        PreferenceError::OutOfRange { .. } => "OutOfRange",
        PreferenceError::InvalidValue { .. } => "InvalidValue",
        PreferenceError::MissingInput { .. } => "MissingInput",
        PreferenceError::DeviceMismatch { .. } => "DeviceMismatch",
        PreferenceError::NonFinite { .. } => "NonFinite",
        PreferenceError::Read { .. } => "Read",
        _ => "another variant",
    }
}

/// One row of the matrix: what was called, what it returned, and the error it must be.
struct Case {
    name: &'static str,
    result: Result<(), PreferenceError>,
    variant: &'static str,
    arg: &'static str,
}

fn case<T>(
    name: &'static str,
    result: burn_preference::Result<T>,
    variant: &'static str,
    arg: &'static str,
) -> Case {
    Case {
        name,
        result: result.map(|_| ()),
        variant,
        arg,
    }
}

fn check_cases(device_name: &str, cases: Vec<Case>) -> usize {
    let count = cases.len();
    for Case {
        name,
        result,
        variant: want,
        arg,
    } in cases
    {
        let err = match result {
            Ok(()) => panic!("[{device_name}] {name}: expected {want} naming `{arg}`, got Ok"),
            Err(err) => err,
        };
        assert_eq!(
            variant(&err),
            want,
            "[{device_name}] {name}: wrong variant: {err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("`{arg}`")),
            "[{device_name}] {name}: the message must name `{arg}`: {message}"
        );
    }
    count
}

fn f1(values: &[f32], device: &Device) -> Tensor<1> {
    floats(values.to_vec(), [values.len()], device)
}

fn f2(values: &[f32], dims: [usize; 2], device: &Device) -> Tensor<2> {
    floats(values.to_vec(), dims, device)
}

fn zeros3(dims: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::<3>::zeros(dims, device)
}

fn izeros(dims: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::<2, Int>::zeros(dims, device)
}

/// Log-prob gathering and its configuration.
fn logps_cases(device: &Device) -> Vec<Case> {
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    let logits = || zeros3([2, 4, 5], device);
    let labels = || izeros([2, 4], device);
    let mask = |values: Vec<i64>, dims: [usize; 2]| ints(values, dims, device);
    let hidden = || zeros3([2, 4, 3], device);
    let weight = |v: usize, h: usize| Tensor::<2>::zeros([v, h], device);
    vec![
        case(
            "forward: labels with another batch size",
            gatherer.forward(logits(), izeros([3, 4], device)),
            "BatchMismatch",
            "labels",
        ),
        case(
            "forward: labels with another length",
            gatherer.forward(logits(), izeros([2, 3], device)),
            "Shape",
            "labels",
        ),
        case(
            "forward: T = 1 with the causal shift",
            gatherer.forward(zeros3([2, 1, 5], device), izeros([2, 1], device)),
            "Shape",
            "logits",
        ),
        case(
            "forward: no rows",
            gatherer.forward(zeros3([0, 4, 5], device), izeros([0, 4], device)),
            "Empty",
            "logits",
        ),
        case(
            "forward: V = 0",
            gatherer.forward(zeros3([2, 4, 0], device), labels()),
            "Empty",
            "logits",
        ),
        case(
            "forward_masked: mask with another batch size",
            gatherer.forward_masked(logits(), labels(), izeros([1, 4], device)),
            "BatchMismatch",
            "mask",
        ),
        case(
            "forward_masked: mask with another length",
            gatherer.forward_masked(logits(), labels(), izeros([2, 3], device)),
            "Shape",
            "mask",
        ),
        case(
            "forward_masked: a mask value of 2",
            gatherer.forward_masked(
                logits(),
                labels(),
                mask(vec![1, 1, 0, 2, 1, 1, 1, 1], [2, 4]),
            ),
            "InvalidValue",
            "mask",
        ),
        case(
            "forward_masked: a mask value of -1",
            gatherer.forward_masked(
                logits(),
                labels(),
                mask(vec![1, -1, 0, 1, 1, 1, 1, 1], [2, 4]),
            ),
            "InvalidValue",
            "mask",
        ),
        case(
            "forward_linear: head width differs from H",
            gatherer.forward_linear(hidden(), weight(5, 4), labels()),
            "Shape",
            "weight",
        ),
        case(
            "forward_linear: labels with another batch size",
            gatherer.forward_linear(hidden(), weight(5, 3), izeros([1, 4], device)),
            "BatchMismatch",
            "labels",
        ),
        case(
            "forward_linear: labels with another length",
            gatherer.forward_linear(hidden(), weight(5, 3), izeros([2, 5], device)),
            "Shape",
            "labels",
        ),
        case(
            "forward_linear: T = 1 with the causal shift (finding 9)",
            gatherer.forward_linear(
                zeros3([2, 1, 3], device),
                weight(5, 3),
                izeros([2, 1], device),
            ),
            "Shape",
            "hidden",
        ),
        case(
            "forward_linear: no rows",
            gatherer.forward_linear(
                zeros3([0, 4, 3], device),
                weight(5, 3),
                izeros([0, 4], device),
            ),
            "Empty",
            "hidden",
        ),
        case(
            "forward_linear_masked: a mask value of 3",
            gatherer.forward_linear_masked(
                hidden(),
                weight(5, 3),
                labels(),
                mask(vec![3, 1, 0, 1, 1, 1, 1, 1], [2, 4]),
            ),
            "InvalidValue",
            "mask",
        ),
        case(
            "sequence_logps: LengthPower(-1)",
            sequence_logps(logits(), labels(), LogpReduction::LengthPower(-1.0)),
            "OutOfRange",
            "alpha",
        ),
        case(
            "sequence_logps: labels with another batch size",
            sequence_logps(logits(), izeros([1, 4], device), LogpReduction::Sum),
            "BatchMismatch",
            "labels",
        ),
    ]
}

/// Configurations: every hyper-parameter outside its range, non-finite values, and values
/// `f32` cannot hold.
fn config_cases() -> Vec<Case> {
    let power = |alpha: f64| {
        SequenceLogpsConfig::new()
            .with_reduction(LogpReduction::LengthPower(alpha))
            .init()
    };
    let dpo = |beta: f64| DpoConfig::new().with_beta(beta).init();
    let ipo = |tau: f64| IpoConfig::new().with_tau(tau).init();
    let smoothing = |eps: f64| {
        PsiPoConfig::new(Psi::Logit)
            .with_label_smoothing(eps)
            .init()
    };
    let rrhf = RrhfConfig::new;
    vec![
        case("LengthPower(NaN)", power(f64::NAN), "OutOfRange", "alpha"),
        case(
            "LengthPower(inf)",
            power(f64::INFINITY),
            "OutOfRange",
            "alpha",
        ),
        case("LengthPower(-0.5)", power(-0.5), "OutOfRange", "alpha"),
        case(
            "LengthPower(1e19) (finding 2)",
            power(1e19),
            "OutOfRange",
            "alpha",
        ),
        case(
            "chunk_rows = 0",
            SequenceLogpsConfig::new().with_chunk_rows(0).init(),
            "OutOfRange",
            "chunk_rows",
        ),
        case(
            "ignore_index below i32 (finding 3)",
            SequenceLogpsConfig::new()
                .with_ignore_index(i64::from(i32::MIN) - 1)
                .init(),
            "OutOfRange",
            "ignore_index",
        ),
        case(
            "ignore_index above i32 (finding 3)",
            SequenceLogpsConfig::new()
                .with_ignore_index(i64::from(i32::MAX) + 1)
                .init(),
            "OutOfRange",
            "ignore_index",
        ),
        case("DPO beta = 0", dpo(0.0), "OutOfRange", "beta"),
        case("DPO beta < 0", dpo(-0.1), "OutOfRange", "beta"),
        case("DPO beta NaN", dpo(f64::NAN), "OutOfRange", "beta"),
        case("DPO beta inf", dpo(f64::INFINITY), "OutOfRange", "beta"),
        case(
            "DPO beta above f32::MAX (finding 4)",
            dpo(1e39),
            "OutOfRange",
            "beta",
        ),
        case("DPO beta 1e20", dpo(1e20), "OutOfRange", "beta"),
        case("DPO beta 1e-20", dpo(1e-20), "OutOfRange", "beta"),
        case("IPO tau = 0", ipo(0.0), "OutOfRange", "tau"),
        case("IPO tau NaN", ipo(f64::NAN), "OutOfRange", "tau"),
        case("IPO tau 1e-20 (finding 4)", ipo(1e-20), "OutOfRange", "tau"),
        case("IPO tau 1e39", ipo(1e39), "OutOfRange", "tau"),
        case(
            "ΨPO identity beta 1e-30",
            PsiPoConfig::new(Psi::Identity).with_beta(1e-30).init(),
            "OutOfRange",
            "tau",
        ),
        case(
            "label smoothing 0.5",
            smoothing(0.5),
            "OutOfRange",
            "label_smoothing",
        ),
        case(
            "label smoothing < 0",
            smoothing(-0.1),
            "OutOfRange",
            "label_smoothing",
        ),
        case(
            "label smoothing NaN",
            smoothing(f64::NAN),
            "OutOfRange",
            "label_smoothing",
        ),
        case(
            "RRHF length_penalty < 0",
            rrhf().with_length_penalty(-1.0).init(),
            "OutOfRange",
            "length_penalty",
        ),
        case(
            "RRHF length_penalty 1e19 (finding 2)",
            rrhf().with_length_penalty(1e19).init(),
            "OutOfRange",
            "length_penalty",
        ),
        case(
            "RRHF length_penalty NaN",
            rrhf().with_length_penalty(f64::NAN).init(),
            "OutOfRange",
            "length_penalty",
        ),
        case(
            "RRHF rank_weight < 0",
            rrhf().with_rank_weight(-1.0).init(),
            "OutOfRange",
            "rank_weight",
        ),
        case(
            "RRHF rank_weight inf",
            rrhf().with_rank_weight(f64::INFINITY).init(),
            "OutOfRange",
            "rank_weight",
        ),
        case(
            "RRHF ft_weight NaN",
            rrhf().with_ft_weight(f64::NAN).init(),
            "OutOfRange",
            "ft_weight",
        ),
    ]
}

/// The options added with the TRL loss zoo, the reference-free losses, the fused pass's
/// transforms, the collator and packed segments: every one validated where it enters.
fn option_cases() -> Vec<Case> {
    let logps = SequenceLogpsConfig::new;
    let dpo = DpoConfig::new;
    let types = |t: &[DpoLossType]| DpoConfig::new().with_loss_types(t.to_vec());
    let collator = PreferenceCollatorConfig::new;
    vec![
        case(
            "temperature 0",
            logps().with_temperature(0.0).init(),
            "OutOfRange",
            "temperature",
        ),
        case(
            "temperature NaN",
            logps().with_temperature(f64::NAN).init(),
            "OutOfRange",
            "temperature",
        ),
        case(
            "logit_scale < 0",
            logps().with_logit_scale(-1.0).init(),
            "OutOfRange",
            "logit_scale",
        ),
        case(
            "softcap 0",
            logps().with_final_logit_softcapping(Some(0.0)).init(),
            "OutOfRange",
            "final_logit_softcapping",
        ),
        case(
            "softcap inf",
            logps()
                .with_final_logit_softcapping(Some(f64::INFINITY))
                .init(),
            "OutOfRange",
            "final_logit_softcapping",
        ),
        case("DPO: no loss type", types(&[]).init(), "Empty", "loss_type"),
        case(
            "DPO: loss_weights of another length",
            dpo().with_loss_weights(Some(vec![1.0, 2.0])).init(),
            "Shape",
            "loss_weights",
        ),
        case(
            "DPO: a NaN loss weight",
            dpo().with_loss_weights(Some(vec![f64::NAN])).init(),
            "OutOfRange",
            "loss_weights",
        ),
        case(
            "DPO: label_smoothing that sigmoid would ignore",
            dpo().with_label_smoothing(0.1).init(),
            "OutOfRange",
            "label_smoothing",
        ),
        case(
            "DPO: exo_pair with ε = 0",
            types(&[DpoLossType::ExoPair]).init(),
            "OutOfRange",
            "label_smoothing",
        ),
        case(
            "DPO: robust with ε = 0.6",
            types(&[DpoLossType::Robust])
                .with_label_smoothing(0.6)
                .init(),
            "OutOfRange",
            "label_smoothing",
        ),
        case(
            "DPO: WPO with aot",
            types(&[DpoLossType::Aot]).with_use_weighting(true).init(),
            "InvalidValue",
            "use_weighting",
        ),
        case(
            "DPO: an f-divergence with nca_pair",
            types(&[DpoLossType::NcaPair])
                .with_f_divergence_type(FDivergence::ForwardKl)
                .init(),
            "InvalidValue",
            "f_divergence_type",
        ),
        case(
            "DPO: ld_alpha 1.5",
            dpo().with_ld_alpha(Some(1.5)).init(),
            "OutOfRange",
            "ld_alpha",
        ),
        case(
            "DPO: discopop_tau 0",
            types(&[DpoLossType::Discopop])
                .with_discopop_tau(0.0)
                .init(),
            "OutOfRange",
            "discopop_tau",
        ),
        case(
            "DPO: f_alpha_divergence_coef NaN",
            dpo().with_f_alpha_divergence_coef(f64::NAN).init(),
            "OutOfRange",
            "f_alpha_divergence_coef",
        ),
        case(
            "DPO: an unknown loss_type string",
            DpoLossType::from_str("dpo"),
            "InvalidValue",
            "loss_type",
        ),
        case(
            "CPO: beta 0",
            CpoConfig::new().with_beta(0.0).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "CPO: label_smoothing 0.5",
            CpoConfig::new().with_label_smoothing(0.5).init(),
            "OutOfRange",
            "label_smoothing",
        ),
        case(
            "CPO: cpo_alpha NaN",
            CpoConfig::new().with_cpo_alpha(f64::NAN).init(),
            "OutOfRange",
            "cpo_alpha",
        ),
        case(
            "CPO: simpo_gamma inf",
            CpoConfig::new().with_simpo_gamma(f64::INFINITY).init(),
            "OutOfRange",
            "simpo_gamma",
        ),
        case(
            "CPO: alpha NaN",
            CpoConfig::new().with_alpha(f64::NAN).init(),
            "OutOfRange",
            "alpha",
        ),
        case(
            "CPO: an unknown loss_type string",
            CpoLossType::from_str("dpo"),
            "InvalidValue",
            "loss_type",
        ),
        case(
            "ORPO: beta NaN",
            OrpoConfig::new().with_beta(f64::NAN).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "KTO: beta 0",
            KtoConfig::new().with_beta(0.0).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "KTO: desirable_weight < 0",
            KtoConfig::new().with_desirable_weight(-1.0).init(),
            "OutOfRange",
            "desirable_weight",
        ),
        case(
            "KTO: undesirable_weight NaN",
            KtoConfig::new().with_undesirable_weight(f64::NAN).init(),
            "OutOfRange",
            "undesirable_weight",
        ),
        case(
            "KTO: an unknown loss_type string",
            KtoLossType::from_str("bco"),
            "InvalidValue",
            "loss_type",
        ),
        case(
            "BCO: beta 1e39",
            BcoConfig::new().with_beta(1e39).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "collator: max_prompt_length 0",
            collator().with_max_prompt_length(Some(0)).init(),
            "OutOfRange",
            "max_prompt_length",
        ),
        case(
            "collator: max_completion_length 0",
            collator().with_max_completion_length(Some(0)).init(),
            "OutOfRange",
            "max_completion_length",
        ),
        case(
            "collator: pad_to_multiple_of 0",
            collator().with_pad_to_multiple_of(Some(0)).init(),
            "OutOfRange",
            "pad_to_multiple_of",
        ),
        case(
            "collator: a token id as ignore_index",
            collator().with_ignore_index(3).init(),
            "OutOfRange",
            "ignore_index",
        ),
        case(
            "segments: ids of another length",
            Segments::from_segment_ids(&[0, 0], 1, 4),
            "Shape",
            "segment_ids",
        ),
        case(
            "segments: one segment in two runs",
            Segments::from_segment_ids(&[0, 1, 0, -1], 1, 4),
            "InvalidValue",
            "segment_ids",
        ),
        case(
            "segments: an id missing from 0..S",
            Segments::from_segment_ids(&[0, 0, 2, 2], 1, 4),
            "InvalidValue",
            "segment_ids",
        ),
        case(
            "segments: cu_seqlens without a segment",
            Segments::from_cu_seqlens(&[0], 1, 4),
            "Empty",
            "cu_seqlens",
        ),
        case(
            "segments: cu_seqlens not starting at 0",
            Segments::from_cu_seqlens(&[1, 3], 1, 4),
            "InvalidValue",
            "cu_seqlens",
        ),
        case(
            "segments: an empty segment",
            Segments::from_cu_seqlens(&[0, 2, 2], 1, 4),
            "InvalidValue",
            "cu_seqlens",
        ),
        case(
            "segments: a segment across rows",
            Segments::from_cu_seqlens(&[0, 3, 6], 2, 4),
            "InvalidValue",
            "cu_seqlens",
        ),
        case(
            "segments: past R·T",
            Segments::from_cu_seqlens(&[0, 5], 1, 4),
            "InvalidValue",
            "cu_seqlens",
        ),
        case(
            "segments: position ids not starting at 0",
            Segments::from_position_ids(&[1, 2, 3], 1, 3),
            "InvalidValue",
            "position_ids",
        ),
        case(
            "KL pairs: no examples",
            kl_pairs(&[], &[]),
            "Empty",
            "prompts",
        ),
        case(
            "KL pairs: prompts and completions differ in number",
            kl_pairs(&[vec![1]], &[]),
            "BatchMismatch",
            "completions",
        ),
    ]
}

/// Collator inputs that cannot be scored.
fn collator_cases() -> Vec<Case> {
    let collator = PreferenceCollatorConfig::new()
        .init()
        .expect("default config");
    let pair = |prompt: Vec<u32>, chosen: Vec<u32>, rejected: Vec<u32>| PreferenceExample {
        prompt,
        chosen,
        rejected,
    };
    let ranked = |k: usize, score: f32| RankedExample {
        prompt: vec![1],
        completions: (0..k).map(|i| vec![2 + i as u32]).collect(),
        scores: (0..k)
            .map(|i| if i == 0 { score } else { i as f32 })
            .collect(),
    };
    vec![
        case("pad: no examples", collator.pad(&[]), "Empty", "examples"),
        case(
            "pad: an empty chosen completion",
            collator.pad(&[pair(vec![1], vec![], vec![2])]),
            "Empty",
            "chosen",
        ),
        case(
            "pad: an empty rejected completion",
            collator.pad(&[pair(vec![1], vec![2], vec![])]),
            "Empty",
            "rejected",
        ),
        case(
            "pack: a row shorter than a sequence",
            collator.pack(&[pair(vec![1, 2, 3], vec![4, 5], vec![6])], 4),
            "OutOfRange",
            "row_len",
        ),
        case(
            "pack: rows of one token",
            collator.pack(&[pair(vec![], vec![4], vec![6])], 1),
            "OutOfRange",
            "row_len",
        ),
        case(
            "pad_ranked: K differs between examples",
            collator.pad_ranked(&[ranked(2, 0.0), ranked(3, 0.0)]),
            "Shape",
            "examples",
        ),
        case(
            "pad_ranked: K = 1",
            collator.pad_ranked(&[ranked(1, 0.0)]),
            "Shape",
            "examples",
        ),
        case(
            "pad_ranked: a NaN score",
            collator.pad_ranked(&[ranked(2, f32::NAN)]),
            "InvalidValue",
            "scores",
        ),
    ]
}

/// Log-ratios, batches and their builders.
fn batch_cases(device: &Device) -> Vec<Case> {
    let v = |values: &[f32]| f1(values, device);
    let m = |values: &[f32], dims: [usize; 2]| f2(values, dims, device);
    let pair = || PreferenceBatch::pairwise(v(&[-1.0, -2.0]), v(&[-3.0, -4.0]));
    let ranked3 = || PreferenceBatch::ranked_by_position(m(&[-1.0; 6], [2, 3]));
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    vec![
        case(
            "log_ratios: reference with another shape",
            log_ratios(m(&[-1.0; 4], [2, 2]), Some(m(&[-1.0; 6], [2, 3]))),
            "Shape",
            "reference",
        ),
        case(
            "log_ratios: no rows",
            log_ratios(v(&[]), None),
            "Empty",
            "policy",
        ),
        case(
            "pairwise_log_ratios: rejected with another batch size",
            pairwise_log_ratios(v(&[-1.0, -2.0]), v(&[-1.0]), None),
            "BatchMismatch",
            "policy_rejected",
        ),
        case(
            "pairwise_log_ratios: reference chosen with another batch size",
            pairwise_log_ratios(v(&[-1.0]), v(&[-1.0]), Some((v(&[-1.0, -2.0]), v(&[-1.0])))),
            "BatchMismatch",
            "reference_chosen",
        ),
        case(
            "pairwise_log_ratios: reference rejected with another batch size",
            pairwise_log_ratios(v(&[-1.0]), v(&[-1.0]), Some((v(&[-1.0]), v(&[-1.0, -2.0])))),
            "BatchMismatch",
            "reference_rejected",
        ),
        case(
            "concatenated_log_ratios: odd length",
            concatenated_log_ratios(v(&[-1.0, -2.0, -3.0]), None),
            "Shape",
            "policy",
        ),
        case(
            "concatenated_log_ratios: odd reference",
            concatenated_log_ratios(v(&[-1.0, -2.0]), Some(v(&[-1.0]))),
            "Shape",
            "reference",
        ),
        case(
            "concatenated_log_ratios: no rows",
            concatenated_log_ratios(v(&[]), None),
            "Empty",
            "policy",
        ),
        case(
            "split_concatenated: odd length",
            split_concatenated("logps", v(&[-1.0])),
            "Shape",
            "logps",
        ),
        case(
            "pairwise: sides of different sizes (finding 9)",
            PreferenceBatch::pairwise(v(&[-1.0, -2.0, -3.0]), v(&[-1.0, -2.0])),
            "BatchMismatch",
            "policy_rejected",
        ),
        case(
            "pairwise: no pairs",
            PreferenceBatch::pairwise(v(&[]), v(&[])),
            "Empty",
            "policy_chosen",
        ),
        case(
            "concatenated: odd length",
            PreferenceBatch::concatenated(v(&[-1.0, -2.0, -3.0])),
            "Shape",
            "policy",
        ),
        case(
            "concatenated: no rows",
            PreferenceBatch::concatenated(v(&[])),
            "Empty",
            "policy",
        ),
        case(
            "ranked_by_position: K = 1",
            PreferenceBatch::ranked_by_position(m(&[-1.0, -2.0], [2, 1])),
            "Shape",
            "policy",
        ),
        case(
            "ranked_by_position: no prompts",
            PreferenceBatch::ranked_by_position(m(&[], [0, 2])),
            "Empty",
            "policy",
        ),
        case(
            "ranked: scores with another K",
            PreferenceBatch::ranked(m(&[-1.0; 6], [2, 3]), m(&[0.0; 4], [2, 2])),
            "Shape",
            "scores",
        ),
        case(
            "ranked: scores with another batch size",
            PreferenceBatch::ranked(m(&[-1.0; 6], [2, 3]), m(&[0.0; 3], [1, 3])),
            "BatchMismatch",
            "scores",
        ),
        case(
            "ranked: NaN score",
            PreferenceBatch::ranked(m(&[-1.0; 4], [2, 2]), m(&[0.0, nan, 1.0, 2.0], [2, 2])),
            "InvalidValue",
            "scores",
        ),
        case(
            "ranked: K = 1",
            PreferenceBatch::ranked(m(&[-1.0; 2], [2, 1]), m(&[0.0; 2], [2, 1])),
            "Shape",
            "policy",
        ),
        case(
            "with_reference: another K",
            ranked3().and_then(|b| b.with_reference(m(&[-1.0; 4], [2, 2]))),
            "Shape",
            "reference",
        ),
        case(
            "with_reference: another batch size",
            ranked3().and_then(|b| b.with_reference(m(&[-1.0; 3], [1, 3]))),
            "BatchMismatch",
            "reference",
        ),
        case(
            "with_pairwise_reference: chosen of another size",
            pair().and_then(|b| b.with_pairwise_reference(v(&[-1.0]), v(&[-1.0, -2.0]))),
            "BatchMismatch",
            "reference_rejected",
        ),
        case(
            "with_pairwise_reference: both of another size",
            pair().and_then(|b| b.with_pairwise_reference(v(&[-1.0]), v(&[-1.0]))),
            "BatchMismatch",
            "reference",
        ),
        case(
            "with_concatenated_reference: odd length",
            pair().and_then(|b| b.with_concatenated_reference(v(&[-1.0, -2.0, -3.0]))),
            "Shape",
            "reference",
        ),
        case(
            "with_lengths: another K",
            ranked3().and_then(|b| b.with_lengths(m(&[1.0; 4], [2, 2]))),
            "Shape",
            "lengths",
        ),
        case(
            "with_lengths: NaN (finding 5)",
            pair().and_then(|b| b.with_lengths(m(&[1.0, nan, 2.0, 3.0], [2, 2]))),
            "NonFinite",
            "lengths",
        ),
        case(
            "with_lengths: +inf (finding 5)",
            pair().and_then(|b| b.with_lengths(m(&[1.0, 2.0, inf, 3.0], [2, 2]))),
            "NonFinite",
            "lengths",
        ),
        case(
            "with_lengths: negative (finding 5)",
            pair().and_then(|b| b.with_lengths(m(&[1.0, -2.0, 2.0, 3.0], [2, 2]))),
            "InvalidValue",
            "lengths",
        ),
        case(
            "with_soft_labels: K = 3 names the policy's shape (finding 9)",
            ranked3().and_then(|b| b.with_soft_labels(v(&[0.5, 0.5]))),
            "Shape",
            "policy",
        ),
        case(
            "with_soft_labels: another batch size",
            pair().and_then(|b| b.with_soft_labels(v(&[0.5, 0.5, 0.5]))),
            "BatchMismatch",
            "soft_labels",
        ),
        case(
            "with_soft_labels: q > 1",
            pair().and_then(|b| b.with_soft_labels(v(&[0.5, 1.5]))),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "with_soft_labels: q < 0",
            pair().and_then(|b| b.with_soft_labels(v(&[-0.1, 0.5]))),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "with_soft_labels: NaN",
            pair().and_then(|b| b.with_soft_labels(v(&[nan, 0.5]))),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "require_finite: NaN policy",
            PreferenceBatch::pairwise(v(&[-1.0, nan]), v(&[-1.0, -2.0]))
                .and_then(PreferenceBatch::require_finite),
            "NonFinite",
            "policy",
        ),
        case(
            "require_finite: -inf policy",
            PreferenceBatch::pairwise(v(&[-1.0, -2.0]), v(&[-f32::INFINITY, -2.0]))
                .and_then(PreferenceBatch::require_finite),
            "NonFinite",
            "policy",
        ),
        case(
            "require_finite: +inf reference",
            pair()
                .and_then(|b| b.with_pairwise_reference(v(&[-1.0, inf]), v(&[-1.0, -2.0])))
                .and_then(PreferenceBatch::require_finite),
            "NonFinite",
            "reference",
        ),
    ]
}

/// The fused pass's options, packed rows, and the losses that read per-token inputs.
fn extended_cases(device: &Device) -> Vec<Case> {
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    let with_tokens = SequenceLogpsConfig::new()
        .with_return_token_logps(true)
        .init()
        .expect("config");
    // Two rows (one pair) of uniform logits over V = 5, labels 1..4 after the shift.
    let logits = || zeros3([2, 4, 5], device);
    let labels = || ints(vec![-100, 1, 2, 3, -100, 4, 3, 2], [2, 4], device);
    let sums = gatherer.forward(logits(), labels()).expect("valid input");
    let tokens = with_tokens
        .forward(logits(), labels())
        .expect("valid input");
    let v = |values: &[f32]| f1(values, device);
    let mask = |values: Vec<bool>, dims: [usize; 2]| {
        Tensor::<2, Bool>::from_data(burn::tensor::TensorData::new(values, dims), device)
    };
    let segments = Segments::from_cu_seqlens(&[0, 3], 1, 4).expect("segments");
    let unpaired = |desirable: Vec<i64>, reference: &[f32]| {
        UnpairedBatch::new(tokens.clone(), v(reference), ints(desirable, [2], device))
    };
    vec![
        case(
            "strict labels: a label outside [0, V)",
            gatherer.forward(
                logits(),
                ints(vec![-100, 1, 2, 99, -100, 4, 3, 2], [2, 4], device),
            ),
            "InvalidValue",
            "labels",
        ),
        case(
            "strict labels: a negative label other than ignore_index",
            gatherer.forward(
                logits(),
                ints(vec![-100, 1, -3, 2, -100, 4, 3, 2], [2, 4], device),
            ),
            "InvalidValue",
            "labels",
        ),
        case(
            "LM head: a bias of the wrong length",
            gatherer.forward_linear(
                zeros3([2, 4, 3], device),
                LmHead::new(Tensor::<2>::zeros([5, 3], device), HeadLayout::VocabHidden)
                    .with_bias(Tensor::<1>::zeros([4], device)),
                labels(),
            ),
            "Shape",
            "bias",
        ),
        case(
            "LM head: [H, V] of the wrong H",
            gatherer.forward_linear(
                zeros3([2, 4, 3], device),
                LmHead::new(Tensor::<2>::zeros([4, 5], device), HeadLayout::HiddenVocab),
                labels(),
            ),
            "Shape",
            "weight",
        ),
        case(
            "forward_packed: logits of another [R, T]",
            gatherer.forward_packed(logits(), labels(), &segments),
            "Shape",
            "logits",
        ),
        case(
            "forward_linear_packed: hidden states of another [R, T]",
            gatherer.forward_linear_packed(
                zeros3([2, 4, 3], device),
                Tensor::<2>::zeros([5, 3], device),
                labels(),
                &segments,
            ),
            "Shape",
            "hidden",
        ),
        case(
            "DPO sft without per-token log-probs",
            PreferenceBatch::from_concatenated(sums.clone()).and_then(|b| {
                DpoConfig::new()
                    .with_loss_types(vec![DpoLossType::Sft])
                    .with_reference_free(true)
                    .init()?
                    .forward(b)
            }),
            "MissingInput",
            "token_logps",
        ),
        case(
            "DPO WPO without log Σ p²",
            PreferenceBatch::from_concatenated(tokens.clone()).and_then(|b| {
                DpoConfig::new()
                    .with_use_weighting(true)
                    .with_reference_free(true)
                    .init()?
                    .forward(b)
            }),
            "MissingInput",
            "log_sum_sq_probs",
        ),
        case(
            "DPO ipo without lengths",
            PreferenceBatch::pairwise(v(&[-1.0]), v(&[-2.0])).and_then(|b| {
                DpoConfig::new()
                    .with_loss_types(vec![DpoLossType::Ipo])
                    .with_reference_free(true)
                    .init()?
                    .forward(b)
            }),
            "MissingInput",
            "lengths",
        ),
        case(
            "CPO without per-token log-probs",
            CpoConfig::new()
                .init()
                .and_then(|l| l.forward(sums.clone())),
            "MissingInput",
            "policy.token_logps",
        ),
        case(
            "token_mean_nll: a mask of another shape",
            token_mean_nll(f2(&[-1.0, -2.0], [1, 2], device), mask(vec![true], [1, 1])),
            "Shape",
            "mask",
        ),
        case(
            "token_mean_nll: no rows",
            token_mean_nll(f2(&[], [0, 2], device), mask(vec![], [0, 2])),
            "Empty",
            "token_logps",
        ),
        case(
            "KTO batch: a label of 2",
            unpaired(vec![1, 2], &[0.0, 0.0]),
            "InvalidValue",
            "desirable",
        ),
        case(
            "KTO batch: a reference of another size",
            unpaired(vec![1, 0], &[0.0]),
            "BatchMismatch",
            "reference",
        ),
        case(
            "KTO batch: a -inf reference",
            unpaired(vec![1, 0], &[0.0, f32::NEG_INFINITY]),
            "NonFinite",
            "reference",
        ),
        case(
            "KTO batch: KL log-probs of another size",
            unpaired(vec![1, 0], &[0.0, 0.0]).and_then(|b| b.with_kl(v(&[0.0, 0.0]), v(&[0.0]))),
            "BatchMismatch",
            "reference_kl",
        ),
        case(
            "BCO: a state update from no rewards",
            BcoState::new().update(v(&[])),
            "Empty",
            "rewards",
        ),
    ]
}

/// Losses missing an input, and the metrics.
fn loss_and_metric_cases(device: &Device) -> Vec<Case> {
    let v = |values: &[f32]| f1(values, device);
    let m = |values: &[f32], dims: [usize; 2]| f2(values, dims, device);
    let pair =
        || PreferenceBatch::pairwise(v(&[-1.0, -2.0]), v(&[-3.0, -4.0])).expect("a valid pair");
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    let logits = || zeros3([2, 4, 5], device);
    let nan = f32::NAN;
    vec![
        case(
            "DPO without a reference",
            DpoConfig::new().init().and_then(|l| l.forward(pair())),
            "MissingInput",
            "reference",
        ),
        case(
            "IPO without a reference",
            IpoConfig::new().init().and_then(|l| l.forward(pair())),
            "MissingInput",
            "reference",
        ),
        case(
            "RRHF without lengths",
            RrhfConfig::new().init().and_then(|l| l.forward(pair())),
            "MissingInput",
            "lengths",
        ),
        case(
            "ranking_accuracy: scores with another shape",
            ranking_accuracy(m(&[0.0; 6], [2, 3]), m(&[0.0; 4], [2, 2])),
            "Shape",
            "scores",
        ),
        case(
            "ranking_accuracy: K = 1 names `values` (finding 9)",
            ranking_accuracy(m(&[0.0; 2], [2, 1]), m(&[0.0; 2], [2, 1])),
            "Shape",
            "values",
        ),
        case(
            "ranking_accuracy: no prompts names `values` (finding 9)",
            ranking_accuracy(m(&[], [0, 2]), m(&[], [0, 2])),
            "Empty",
            "values",
        ),
        case(
            "ranking_accuracy: NaN score",
            ranking_accuracy(m(&[0.0; 4], [2, 2]), m(&[0.0, 1.0, nan, 0.0], [2, 2])),
            "InvalidValue",
            "scores",
        ),
        case(
            "ranking_accuracy: scores with another batch size",
            ranking_accuracy(m(&[0.0; 4], [2, 2]), m(&[0.0; 2], [1, 2])),
            "BatchMismatch",
            "scores",
        ),
        case(
            "token_kl: reference logits with another shape",
            token_kl(
                &gatherer,
                logits(),
                zeros3([2, 4, 6], device),
                izeros([2, 4], device),
                None,
            ),
            "Shape",
            "reference_logits",
        ),
        case(
            "token_kl: labels with another batch size",
            token_kl(&gatherer, logits(), logits(), izeros([1, 4], device), None),
            "BatchMismatch",
            "labels",
        ),
        case(
            "token_kl: a mask value of 2",
            token_kl(
                &gatherer,
                logits(),
                logits(),
                izeros([2, 4], device),
                Some(ints(vec![2, 1, 1, 1, 1, 1, 1, 1], [2, 4], device)),
            ),
            "InvalidValue",
            "mask",
        ),
        case(
            "categorical_kl: lengths differ",
            categorical_kl(v(&[0.5, 0.5]), v(&[0.2, 0.3, 0.5])),
            "Shape",
            "q",
        ),
        case(
            "categorical_kl: empty",
            categorical_kl(v(&[]), v(&[])),
            "Empty",
            "p",
        ),
        case(
            "categorical_kl: NaN in p (finding 6)",
            categorical_kl(v(&[nan, 0.5]), v(&[0.5, 0.5])),
            "InvalidValue",
            "p",
        ),
        case(
            "categorical_kl: p outside [0, 1] (finding 6)",
            categorical_kl(v(&[1.5, -0.5]), v(&[0.5, 0.5])),
            "InvalidValue",
            "p",
        ),
        case(
            "categorical_kl: q = [1, 1] is no distribution (finding 6)",
            categorical_kl(v(&[0.5, 0.5]), v(&[1.0, 1.0])),
            "InvalidValue",
            "q",
        ),
        case(
            "categorical_kl: p summing to 0.9",
            categorical_kl(v(&[0.4, 0.5]), v(&[0.5, 0.5])),
            "InvalidValue",
            "p",
        ),
        case(
            "categorical_kl: negative q",
            categorical_kl(v(&[0.5, 0.5]), v(&[1.2, -0.2])),
            "InvalidValue",
            "q",
        ),
    ]
}

#[test]
fn bad_inputs_get_the_typed_error_naming_the_argument() {
    let mut total = check_cases("config", config_cases())
        + check_cases("options", option_cases())
        + check_cases("collator", collator_cases());
    for (name, device) in devices() {
        total += check_cases(name, extended_cases(&device));
        total += check_cases(name, logps_cases(&device));
        total += check_cases(name, batch_cases(&device));
        total += check_cases(name, loss_and_metric_cases(&device));
    }
    let here = Device::default();
    let distinct = config_cases().len()
        + option_cases().len()
        + collator_cases().len()
        + extended_cases(&here).len()
        + logps_cases(&here).len()
        + batch_cases(&here).len()
        + loss_and_metric_cases(&here).len()
        + device_cases(&here, &here).len();
    assert!(distinct >= 100, "the matrix has {distinct} distinct cases");
    // Every case but the device pairs (run by the next test) ran at least once.
    assert!(total >= distinct - device_cases(&here, &here).len());
}

/// Finding 1: tensors on two backends in one call. Every pair of the compiled-in backends, both
/// ways round; a device with autodiff and the same device without it must keep working.
fn device_cases(a: &Device, b: &Device) -> Vec<Case> {
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    let va = |values: &[f32]| f1(values, a);
    let vb = |values: &[f32]| f1(values, b);
    let ma = |values: &[f32], dims: [usize; 2]| f2(values, dims, a);
    let mb = |values: &[f32], dims: [usize; 2]| f2(values, dims, b);
    let pair = || PreferenceBatch::pairwise(va(&[-1.0, -2.0]), va(&[-3.0, -4.0]));
    vec![
        case(
            "forward: labels elsewhere",
            gatherer.forward(zeros3([2, 4, 5], a), izeros([2, 4], b)),
            "DeviceMismatch",
            "labels",
        ),
        case(
            "forward_masked: mask elsewhere",
            gatherer.forward_masked(zeros3([2, 4, 5], a), izeros([2, 4], a), izeros([2, 4], b)),
            "DeviceMismatch",
            "mask",
        ),
        case(
            "forward_linear: weight elsewhere",
            gatherer.forward_linear(
                zeros3([2, 4, 3], a),
                Tensor::<2>::zeros([5, 3], b),
                izeros([2, 4], a),
            ),
            "DeviceMismatch",
            "weight",
        ),
        case(
            "forward_linear: labels elsewhere",
            gatherer.forward_linear(
                zeros3([2, 4, 3], a),
                Tensor::<2>::zeros([5, 3], a),
                izeros([2, 4], b),
            ),
            "DeviceMismatch",
            "labels",
        ),
        case(
            "forward_linear_masked: mask elsewhere",
            gatherer.forward_linear_masked(
                zeros3([2, 4, 3], a),
                Tensor::<2>::zeros([5, 3], a),
                izeros([2, 4], a),
                izeros([2, 4], b),
            ),
            "DeviceMismatch",
            "mask",
        ),
        case(
            "pairwise: rejected elsewhere",
            PreferenceBatch::pairwise(va(&[-1.0]), vb(&[-2.0])),
            "DeviceMismatch",
            "policy_rejected",
        ),
        case(
            "with_reference: elsewhere",
            pair().and_then(|p| p.with_reference(mb(&[-1.0; 4], [2, 2]))),
            "DeviceMismatch",
            "reference",
        ),
        case(
            "with_pairwise_reference: rejected elsewhere",
            pair().and_then(|p| p.with_pairwise_reference(va(&[-1.0, -1.0]), vb(&[-1.0, -1.0]))),
            "DeviceMismatch",
            "reference_rejected",
        ),
        case(
            "with_concatenated_reference: elsewhere",
            pair().and_then(|p| p.with_concatenated_reference(vb(&[-1.0; 4]))),
            "DeviceMismatch",
            "reference",
        ),
        case(
            "with_soft_labels: elsewhere",
            pair().and_then(|p| p.with_soft_labels(vb(&[0.5, 0.5]))),
            "DeviceMismatch",
            "soft_labels",
        ),
        case(
            "with_lengths: elsewhere",
            pair().and_then(|p| p.with_lengths(mb(&[1.0; 4], [2, 2]))),
            "DeviceMismatch",
            "lengths",
        ),
        case(
            "ranked: scores elsewhere",
            PreferenceBatch::ranked(ma(&[-1.0; 4], [2, 2]), mb(&[0.0, 1.0, 0.0, 1.0], [2, 2])),
            "DeviceMismatch",
            "scores",
        ),
        case(
            "log_ratios: reference elsewhere",
            log_ratios(va(&[-1.0]), Some(vb(&[-1.0]))),
            "DeviceMismatch",
            "reference",
        ),
        case(
            "pairwise_log_ratios: rejected elsewhere",
            pairwise_log_ratios(va(&[-1.0]), vb(&[-1.0]), None),
            "DeviceMismatch",
            "policy_rejected",
        ),
        case(
            "ranking_accuracy: scores elsewhere",
            ranking_accuracy(ma(&[0.0; 4], [2, 2]), mb(&[0.0, 1.0, 0.0, 1.0], [2, 2])),
            "DeviceMismatch",
            "scores",
        ),
        case(
            "token_kl: reference logits elsewhere",
            token_kl(
                &gatherer,
                zeros3([2, 4, 5], a),
                zeros3([2, 4, 5], b),
                izeros([2, 4], a),
                None,
            ),
            "DeviceMismatch",
            "reference_logits",
        ),
        case(
            "categorical_kl: q elsewhere",
            categorical_kl(va(&[0.5, 0.5]), vb(&[0.5, 0.5])),
            "DeviceMismatch",
            "q",
        ),
        case(
            "forward_linear: bias elsewhere",
            gatherer.forward_linear(
                zeros3([2, 4, 3], a),
                LmHead::new(Tensor::<2>::zeros([5, 3], a), HeadLayout::VocabHidden)
                    .with_bias(Tensor::<1>::zeros([5], b)),
                izeros([2, 4], a),
            ),
            "DeviceMismatch",
            "bias",
        ),
        case(
            "forward_packed: labels elsewhere",
            gatherer.forward_packed(
                zeros3([1, 4, 5], a),
                izeros([1, 4], b),
                &Segments::from_cu_seqlens(&[0, 4], 1, 4).expect("segments"),
            ),
            "DeviceMismatch",
            "labels",
        ),
        case(
            "token_mean_nll: mask elsewhere",
            token_mean_nll(
                ma(&[-1.0, -2.0], [1, 2]),
                Tensor::<2, Bool>::from_data(
                    burn::tensor::TensorData::new(vec![true, true], [1, 2]),
                    b,
                ),
            ),
            "DeviceMismatch",
            "mask",
        ),
        case(
            "KTO batch: reference elsewhere",
            SequenceLogpsConfig::new()
                .with_return_token_logps(true)
                .init()
                .and_then(|g| g.forward(zeros3([2, 3, 4], a), izeros([2, 3], a)))
                .and_then(|out| {
                    UnpairedBatch::new(out, vb(&[0.0, 0.0]), Tensor::<1, Int>::zeros([2], a))
                }),
            "DeviceMismatch",
            "reference",
        ),
    ]
}

#[test]
fn finding_1_tensors_on_two_devices_are_a_typed_error() {
    let all = devices();
    for (name_a, a) in &all {
        for (name_b, b) in &all {
            if name_a != name_b {
                check_cases(&format!("{name_a} × {name_b}"), device_cases(a, b));
            }
        }
    }
}

#[test]
fn finding_1_a_device_with_and_without_autodiff_is_one_device() {
    let gatherer = SequenceLogpsConfig::new().init().expect("default config");
    for (name, device) in devices() {
        let tracked = device.clone().autodiff();
        let logits = Tensor::<3>::zeros([2, 3, 4], &tracked).require_grad();
        let labels = ints(vec![-100, 1, 2, -100, 3, 0], [2, 3], &device);
        let out = gatherer
            .forward(logits, labels)
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let reference = f1(&[-2.0], &device);
        let batch = PreferenceBatch::concatenated(out.logps)
            .and_then(|b| {
                b.with_concatenated_reference(Tensor::cat(vec![reference.clone(), reference], 0))
            })
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let loss = DpoConfig::new()
            .init()
            .and_then(|l| l.forward(batch))
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        // Uniform logits over V = 4, two valid tokens per row: both sides log 4^-2, margin 0.
        assert_close(
            name,
            "loss",
            &to_vec(loss.loss),
            &[std::f64::consts::LN_2],
            1e-6,
            0.0,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Findings that are about values, not errors
// ---------------------------------------------------------------------------------------------

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    }
}

/// Finding 7: a log-ratio of +inf on the chosen side (a reference that gives the chosen
/// completion probability 0) made `softplus(−inf)` compute `−inf·0 = NaN`. Its true loss is 0
/// with zero gradient; −inf on the chosen side is a loss of +inf, and the other pairs of the
/// batch keep finite gradients.
#[test]
fn finding_7_infinite_log_ratios_give_the_limit_not_nan() {
    let inf = f32::INFINITY;
    for (name, device) in autodiff_devices() {
        let policy_chosen = f1(&[-1.0, -1.0, -2.0], &device).require_grad();
        let policy_rejected = f1(&[-1.5, -1.5, -1.0], &device).require_grad();
        let batch = PreferenceBatch::pairwise(policy_chosen.clone(), policy_rejected.clone())
            .and_then(|b| {
                b.with_pairwise_reference(f1(&[-inf, -1.0, -1.0], &device), f1(&[-1.0; 3], &device))
            })
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let out = DpoConfig::new()
            .init()
            .and_then(|l| l.forward(batch))
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let beta = 0.1;
        // h = ρ_w − ρ_l: +inf, 0 − (−0.5) = 0.5, −1 − 0 = −1.
        let expected = [0.0, softplus(-beta * 0.5), softplus(beta)];
        assert_close(
            name,
            "losses",
            &to_vec(out.losses.clone()),
            &expected,
            1e-6,
            1e-7,
        );
        let grads = out.loss.backward();
        let chosen_grad = to_vec(policy_chosen.grad(&grads).expect("chosen gradient"));
        let slope = |h: f64| -beta * sigmoid(-beta * h) / 3.0;
        assert_close(
            name,
            "∂L/∂chosen",
            &chosen_grad,
            &[0.0, slope(0.5), slope(-1.0)],
            1e-5,
            1e-8,
        );
        let rejected_grad = to_vec(policy_rejected.grad(&grads).expect("rejected gradient"));
        assert_close(
            name,
            "∂L/∂rejected",
            &rejected_grad,
            &[0.0, -slope(0.5), -slope(-1.0)],
            1e-5,
            1e-8,
        );

        // The same through a ranked list, whose diagonal `ρ_i − ρ_i` is `inf − inf`.
        let policy = f2(&[-1.0, -1.5, -2.0, -1.0], [2, 2], &device).require_grad();
        let batch =
            PreferenceBatch::ranked(policy.clone(), f2(&[1.0, 0.0, 1.0, 0.0], [2, 2], &device))
                .and_then(|b| b.with_reference(f2(&[-inf, -1.0, -1.0, -1.0], [2, 2], &device)))
                .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let out = DpoConfig::new()
            .init()
            .and_then(|l| l.forward(batch))
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        assert_close(
            name,
            "ranked losses",
            &to_vec(out.losses.clone()),
            &[0.0, softplus(beta)],
            1e-6,
            1e-7,
        );
        let grad = to_vec(policy.grad(&out.loss.backward()).expect("policy gradient"));
        let s = -beta * sigmoid(beta) / 2.0;
        assert_close(
            name,
            "ranked ∂L/∂policy",
            &grad,
            &[0.0, 0.0, s, -s],
            1e-5,
            1e-8,
        );
    }
}

/// Finding 8: NaN or all-−inf logits at an *ignored* position must get exactly 0 gradient on
/// every backend (the wgpu backward multiplied a NaN softmax by −0).
#[test]
fn finding_8_bad_logits_at_ignored_positions_get_zero_gradient() {
    let gatherer = SequenceLogpsConfig::new()
        .with_shift(false)
        .init()
        .expect("config");
    let v = 4;
    let mut values = vec![0.0f32; 3 * v];
    values[..v].fill(f32::NAN); // position 0: NaN, ignored
    values[v..2 * v].fill(f32::NEG_INFINITY); // position 1: all −inf, ignored
    values[2 * v..].copy_from_slice(&[1.0, 2.0, 3.0, 4.0]); // position 2: valid, label 3
    for (name, device) in autodiff_devices() {
        let logits = floats(values.clone(), [1, 3, v], &device).require_grad();
        let labels = ints(vec![-100, -100, 3], [1, 3], &device);
        let out = gatherer
            .forward(logits.clone(), labels)
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let z: Vec<f64> = (1..=4).map(f64::from).collect();
        let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
        assert_close(
            name,
            "logp",
            &to_vec(out.logps.clone()),
            &[4.0 - lse],
            1e-6,
            1e-6,
        );
        let grad = to_vec(logits.grad(&out.logps.sum().backward()).expect("gradient"));
        let mut expected = vec![0.0f64; 2 * v];
        expected.extend(z.iter().enumerate().map(|(i, x)| {
            let p = (x - lse).exp();
            if i == 3 { 1.0 - p } else { -p }
        }));
        assert_close(name, "gradient", &grad, &expected, 1e-5, 0.0);
        assert!(
            grad[..2 * v].iter().all(|g| *g == 0.0),
            "[{name}] ignored rows must get exactly 0, got {:?}",
            &grad[..2 * v]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Randomized properties against f64 references
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct LogpsCase {
    dims: [usize; 3],
    logits: Vec<f32>,
    labels: Vec<i64>,
}

/// Logits at one of three scales (1, 1e4, 1e30), sometimes rounded to a few values so that
/// the max ties; labels valid or −100.
fn logps_case() -> impl Strategy<Value = LogpsCase> {
    (1..=3usize, 1..=4usize, 1..=9usize, 0..3usize, any::<bool>())
        .prop_flat_map(|(b, t, v, scale, ties)| {
            let scale = [1.0f32, 1e4, 1e30][scale];
            let logit = (-1.0f32..1.0).prop_map(move |u| {
                let x = if ties { (u * 2.0).round() / 2.0 } else { u };
                x * scale
            });
            (
                Just([b, t, v]),
                prop::collection::vec(logit, b * t * v),
                prop::collection::vec(prop_oneof![1 => Just(-100i64), 3 => 0..v as i64], b * t),
            )
        })
        .prop_map(|(dims, logits, labels)| LogpsCase {
            dims,
            logits,
            labels,
        })
}

/// Per-sequence sums and the gradient of their total, in f64.
fn logps_reference(case: &LogpsCase) -> (Vec<f64>, Vec<f64>) {
    let [b, t, v] = case.dims;
    let mut sums = vec![0.0; b];
    let mut grad = vec![0.0; b * t * v];
    for row in 0..b * t {
        let Ok(y) = usize::try_from(case.labels[row]) else {
            continue;
        };
        let z: Vec<f64> = case.logits[row * v..(row + 1) * v]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        // `m` and `log s` kept apart: at |z| ~ 1e30 even f64 loses `log s` in `m + log s`.
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_s = z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        sums[row / t] += (z[y] - m) - log_s;
        for (i, x) in z.iter().enumerate() {
            grad[row * v + i] = f64::from(u8::from(i == y)) - ((x - m) - log_s).exp();
        }
    }
    (sums, grad)
}

#[derive(Debug, Clone)]
struct PsiCase {
    psi: Psi,
    beta: f64,
    eps: f64,
    candidates: usize,
    policy: Vec<f32>,
    scores: Option<Vec<f32>>,
    soft_labels: Option<Vec<f32>>,
}

/// Reference-free ΨPO batches whose log-probs reach ±1e6: pairs with soft labels that are
/// exactly 0 or 1 (or anything between), or ranked lists with tied scores.
fn psi_case() -> impl Strategy<Value = PsiCase> {
    let psi = prop_oneof![Just(Psi::Logit), Just(Psi::Identity)];
    let beta = (-3.0f64..1.0).prop_map(|e| 10f64.powf(e));
    let eps = prop_oneof![2 => Just(0.0), 1 => 0.0f64..0.49];
    let logp = prop_oneof![(-1e6f32..1e6), (-50.0f32..0.0)];
    (psi, beta, eps, 1..=3usize, 2..=4usize, any::<bool>())
        .prop_flat_map(move |(psi, beta, eps, b, k, pairwise)| {
            let k = if pairwise { 2 } else { k };
            let label = prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..=1.0];
            (
                Just((psi, beta, eps, k, pairwise)),
                prop::collection::vec(logp.clone(), b * k),
                prop::collection::vec((0..3i32).prop_map(|s| s as f32), b * k),
                prop::collection::vec(label, b),
            )
        })
        .prop_map(
            |((psi, beta, eps, candidates, pairwise), policy, scores, labels)| PsiCase {
                psi,
                beta,
                eps,
                candidates,
                policy,
                scores: (!pairwise).then_some(scores),
                soft_labels: pairwise.then_some(labels),
            },
        )
}

/// The per-pair loss and its slope `∂/∂h` in f64.
fn psi_pair(case: &PsiCase, q: f64, h: f64) -> (f64, f64) {
    let q = q * (1.0 - 2.0 * case.eps) + case.eps;
    let beta = case.beta;
    match case.psi {
        Psi::Logit => (
            q * softplus(-beta * h) + (1.0 - q) * softplus(beta * h),
            beta * (-q * sigmoid(-beta * h) + (1.0 - q) * sigmoid(beta * h)),
        ),
        Psi::Identity => {
            let target = (2.0 * q - 1.0) / (2.0 * beta);
            ((h - target).powi(2), 2.0 * (h - target))
        }
    }
}

/// Per-prompt losses and the gradient of their mean w.r.t. the policy, in f64.
fn psi_reference(case: &PsiCase) -> (Vec<f64>, Vec<f64>) {
    let k = case.candidates;
    let b = case.policy.len() / k;
    let (mut losses, mut grad) = (vec![0.0; b], vec![0.0; b * k]);
    for p in 0..b {
        let score = |i: usize| case.scores.as_ref().map_or(-(i as f32), |s| s[p * k + i]);
        let pairs: Vec<(usize, usize)> = (0..k)
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .filter(|&(i, j)| score(i) > score(j))
            .collect();
        let q = case.soft_labels.as_ref().map_or(1.0, |l| f64::from(l[p]));
        for &(i, j) in &pairs {
            let h = f64::from(case.policy[p * k + i]) - f64::from(case.policy[p * k + j]);
            let (loss, slope) = psi_pair(case, q, h);
            let n = pairs.len() as f64;
            losses[p] += loss / n;
            grad[p * k + i] += slope / n / b as f64;
            grad[p * k + j] -= slope / n / b as f64;
        }
    }
    (losses, grad)
}

/// `softmax(θ)` of random θ spanning up to ±40 (probabilities down to ~1e-35), in f64 and as
/// the f32 vector the crate gets.
fn distribution(theta: &[f64]) -> Vec<f32> {
    let m = theta.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = theta.iter().map(|t| (t - m).exp()).sum();
    theta
        .iter()
        .map(|t| ((t - m).exp() / total) as f32)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(3), ..ProptestConfig::default() })]

    /// Sequence log-probs and their gradients at logits up to ±1e30, with ties.
    #[test]
    fn log_probs_match_f64_at_extreme_logits(case in logps_case()) {
        let gatherer = SequenceLogpsConfig::new().with_shift(false).init().expect("config");
        let (sums, grad) = logps_reference(&case);
        let [b, t, _] = case.dims;
        for (name, device) in autodiff_devices() {
            let logits = floats(case.logits.clone(), case.dims, &device).require_grad();
            let labels = ints(case.labels.clone(), [b, t], &device);
            let out = gatherer.forward(logits.clone(), labels).expect("valid input");
            let got = to_vec(out.logps.clone());
            prop_assert!(got.iter().all(|x| x.is_finite()), "[{}] non-finite {:?}", name, got);
            assert_close(name, "logps", &got, &sums, 1e-5, 1e-5);
            let got = to_vec(logits.grad(&out.logps.sum().backward()).expect("gradient"));
            prop_assert!(got.iter().all(|x| x.is_finite()), "[{}] non-finite gradient", name);
            assert_close(name, "gradient", &got, &grad, 1e-5, 2e-6);
        }
    }

    /// ΨPO (DPO and IPO) at log-probs up to ±1e6: values and gradients finite and equal to the
    /// f64 reference; soft labels exactly 0 and 1; ranked lists with ties.
    #[test]
    fn psipo_matches_f64_at_extreme_margins(case in psi_case()) {
        let (losses, grad) = psi_reference(&case);
        let k = case.candidates;
        let b = case.policy.len() / k;
        let loss = PsiPoConfig::new(case.psi)
            .with_beta(case.beta)
            .with_label_smoothing(case.eps)
            .with_reference_free(true)
            .init()
            .expect("config in range");
        for (name, device) in autodiff_devices() {
            let policy = floats(case.policy.clone(), [b, k], &device).require_grad();
            let mut batch = match &case.scores {
                Some(scores) => PreferenceBatch::ranked(policy.clone(), floats(scores.clone(), [b, k], &device)),
                None => PreferenceBatch::ranked_by_position(policy.clone()),
            }
            .expect("valid batch");
            if let Some(q) = &case.soft_labels {
                batch = batch.with_soft_labels(floats(q.clone(), [b], &device)).expect("labels in [0, 1]");
            }
            let out = loss.forward(batch).expect("valid batch");
            let got = to_vec(out.losses.clone());
            prop_assert!(got.iter().all(|x| x.is_finite()), "[{}] non-finite {:?}", name, got);
            // The margins are f32 differences of values up to 1e6: an absolute slack of
            // 1e-6 of the largest loss covers their rounding.
            let scale = losses.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            assert_close(name, "losses", &got, &losses, 1e-4, 1e-6 * scale);
            let got = to_vec(policy.grad(&out.loss.backward()).expect("gradient"));
            prop_assert!(got.iter().all(|x| x.is_finite()), "[{}] non-finite gradient", name);
            let scale = grad.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            assert_close(name, "gradient", &got, &grad, 1e-4, 1e-6 * scale);
        }
    }

    /// The exact KL of two categorical distributions with probabilities down to ~1e-17.
    #[test]
    fn categorical_kl_matches_f64(
        theta_p in prop::collection::vec(-40.0f64..0.0, 2..6),
        shift in prop::collection::vec(-5.0f64..5.0, 6),
    ) {
        let p = distribution(&theta_p);
        let theta_q: Vec<f64> = theta_p.iter().zip(&shift).map(|(t, s)| t + s).collect();
        let q = distribution(&theta_q);
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(p, _)| **p > 0.0)
            .map(|(&p, &q)| f64::from(p) * (f64::from(p).ln() - f64::from(q).ln()))
            .sum();
        for (name, device) in devices() {
            let got = to_vec(
                categorical_kl(f1(&p, &device), f1(&q, &device)).expect("distributions"),
            );
            prop_assert!(got[0].is_finite() && got[0] >= -1e-6, "[{}] {:?}", name, got);
            assert_close(name, "KL", &got, &[kl], 1e-4, 1e-6);
        }
    }
}
