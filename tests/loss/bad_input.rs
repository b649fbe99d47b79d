//! Bad input to the losses, their configurations and helpers: each case returns the typed
//! error naming the offending argument, never a panic. Values the batch builders do not read
//! (NaN scores, soft labels outside [0, 1], bad lengths, labels other than 0/1, non-finite
//! log-probs) are refused by the loss's `forward` while its `value_checks` is on.

use std::str::FromStr;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_preference::logps::SequenceLogpsOutput;
use burn_preference::loss::{
    BcoConfig, BcoState, BetaDpoConfig, BetaDpoState, CpoConfig, CpoLossType, DpoConfig,
    DpoLossType, DpopConfig, FDivergence, KtoConfig, KtoLossType, LipoConfig, OdpoConfig,
    OrpoConfig, PlackettLuceConfig, PreferenceLoss, Psi, PsiPoConfig, RdpoConfig, RrhfConfig,
    SimperConfig, kl_pairs, odpo_offsets, token_mean_nll,
};
use burn_preference::prelude::{
    BatchLayout, LogpReduction, PairedBatch, SequenceLogpsConfig, UnpairedBatch,
};

use crate::common::cases::{
    Case, INPUT_VARIANTS, assert_covers, case, check_cases, device_pairs, f1, f2, zeros3,
};
use crate::common::{devices, ints};

/// Configurations: every hyper-parameter outside its range, non-finite values, and values
/// `f32` cannot hold (`1e39` overflows it; `1e20` and `1e-20` leave `β·h` or `1/τ` no
/// precision).
fn config_cases() -> Vec<Case> {
    let dpo = |beta: f64| DpoConfig::new().with_beta(beta).init();
    // IPO is ΨPO with the identity; its β is IPO's τ.
    let ipo = |tau: f64| PsiPoConfig::new(Psi::Identity).with_beta(tau).init();
    let smoothing = |eps: f64| {
        PsiPoConfig::new(Psi::Logit)
            .with_label_smoothing(eps)
            .init()
    };
    let rrhf = RrhfConfig::new;
    vec![
        case("DPO beta = 0", dpo(0.0), "OutOfRange", "beta"),
        case("DPO beta < 0", dpo(-0.1), "OutOfRange", "beta"),
        case("DPO beta NaN", dpo(f64::NAN), "OutOfRange", "beta"),
        case("DPO beta inf", dpo(f64::INFINITY), "OutOfRange", "beta"),
        case("DPO beta above f32::MAX", dpo(1e39), "OutOfRange", "beta"),
        case("DPO beta 1e20", dpo(1e20), "OutOfRange", "beta"),
        case("DPO beta 1e-20", dpo(1e-20), "OutOfRange", "beta"),
        case("IPO tau = 0", ipo(0.0), "OutOfRange", "tau"),
        case("IPO tau NaN", ipo(f64::NAN), "OutOfRange", "tau"),
        case("IPO tau 1e-20", ipo(1e-20), "OutOfRange", "tau"),
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
            "RRHF length_penalty 1e19",
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

/// The options of the TRL loss zoo and the reference-free losses: every one validated where
/// it enters.
fn option_cases() -> Vec<Case> {
    let dpo = DpoConfig::new;
    let types = |t: &[DpoLossType]| DpoConfig::new().with_loss_types(t.to_vec());
    vec![
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

/// The configurations of DPOP, R-DPO, ODPO, Plackett–Luce, LiPO and β-DPO (SimPER has no
/// hyperparameter): every key outside its range names itself.
fn listwise_config_cases() -> Vec<Case> {
    let beta_dpo = BetaDpoConfig::new;
    vec![
        case(
            "DPOP: beta 0",
            DpopConfig::new().with_beta(0.0).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "DPOP: lambda < 0",
            DpopConfig::new().with_lambda(-1.0).init(),
            "OutOfRange",
            "lambda",
        ),
        case(
            "DPOP: lambda NaN",
            DpopConfig::new().with_lambda(f64::NAN).init(),
            "OutOfRange",
            "lambda",
        ),
        case(
            "DPOP: lambda 1e9",
            DpopConfig::new().with_lambda(1e9).init(),
            "OutOfRange",
            "lambda",
        ),
        case(
            "R-DPO: beta NaN",
            RdpoConfig::new().with_beta(f64::NAN).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "R-DPO: alpha < 0",
            RdpoConfig::new().with_alpha(-0.01).init(),
            "OutOfRange",
            "alpha",
        ),
        case(
            "R-DPO: alpha inf",
            RdpoConfig::new().with_alpha(f64::INFINITY).init(),
            "OutOfRange",
            "alpha",
        ),
        case(
            "ODPO: beta 1e39",
            OdpoConfig::new().with_beta(1e39).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "ODPO: alpha NaN",
            OdpoConfig::new().with_alpha(f64::NAN).init(),
            "OutOfRange",
            "alpha",
        ),
        case(
            "ODPO: alpha < 0",
            OdpoConfig::new().with_alpha(-1.0).init(),
            "OutOfRange",
            "alpha",
        ),
        case(
            "Plackett-Luce: beta 0",
            PlackettLuceConfig::new().with_beta(0.0).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "Plackett-Luce: beta 1e-20",
            PlackettLuceConfig::new().with_beta(1e-20).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "LiPO: beta inf",
            LipoConfig::new().with_beta(f64::INFINITY).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "β-DPO: beta < 0",
            beta_dpo().with_beta(-0.1).init(),
            "OutOfRange",
            "beta",
        ),
        case(
            "β-DPO: alpha < 0",
            beta_dpo().with_alpha(-0.6).init(),
            "OutOfRange",
            "alpha",
        ),
        case(
            "β-DPO: filter_ratio 1",
            beta_dpo().with_filter_ratio(1.0).init(),
            "OutOfRange",
            "filter_ratio",
        ),
        case(
            "β-DPO: filter_ratio < 0",
            beta_dpo().with_filter_ratio(-0.1).init(),
            "OutOfRange",
            "filter_ratio",
        ),
        case(
            "β-DPO: filter_ratio NaN",
            beta_dpo().with_filter_ratio(f64::NAN).init(),
            "OutOfRange",
            "filter_ratio",
        ),
        case(
            "β-DPO: momentum 1",
            beta_dpo().with_momentum(1.0).init(),
            "OutOfRange",
            "momentum",
        ),
        case(
            "β-DPO: momentum < 0",
            beta_dpo().with_momentum(-0.5).init(),
            "OutOfRange",
            "momentum",
        ),
    ]
}

/// A gatherer's output over `2B` rows of uniform logits over V = 5 (labels 1..4 after the
/// shift), as sums only or with per-token log-probs.
fn gathered(device: &Device, tokens: bool) -> SequenceLogpsOutput {
    SequenceLogpsConfig::new()
        .with_return_token_logps(tokens)
        .init()
        .expect("config")
        .forward(
            zeros3([2, 4, 5], device),
            ints(vec![-100, 1, 2, 3, -100, 4, 3, 2], [2, 4], device),
            None,
        )
        .expect("valid input")
}

fn bools(values: Vec<bool>, dims: [usize; 2], device: &Device) -> Tensor<2, Bool> {
    Tensor::<2, Bool>::from_data(TensorData::new(values, dims), device)
}

/// Losses missing an input they need or given values they refuse, and the loss helpers.
fn loss_cases(device: &Device) -> Vec<Case> {
    let v = |values: &[f32]| f1(values, device);
    let m = |values: &[f32], dims: [usize; 2]| f2(values, dims, device);
    let one_pair = BatchLayout::ChosenFirst { pairs: 1 };
    let pair = || PairedBatch::new(m(&[-1.0, -3.0, -2.0, -4.0], [2, 2])).expect("a valid pair");
    let free = || {
        DpoConfig::new()
            .with_reference_free(true)
            .init()
            .expect("config")
    };
    let unpaired = |desirable: Vec<i64>, reference: &[f32]| {
        UnpairedBatch::from_output(
            gathered(device, true),
            Tensor::<1, Int>::from_data(TensorData::new(desirable, [2]), device),
        )
        .and_then(|b| b.with_reference(v(reference)))
    };
    let kto = || KtoConfig::new().init().expect("config");
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    vec![
        case(
            "DPO without a reference",
            DpoConfig::new().init().and_then(|l| l.forward(pair())),
            "MissingInput",
            "reference",
        ),
        case(
            "IPO without a reference",
            PsiPoConfig::new(Psi::Identity)
                .init()
                .and_then(|l| l.forward(pair())),
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
            "DPO sft without per-token log-probs",
            PairedBatch::from_output(gathered(device, false), one_pair).and_then(|b| {
                DpoConfig::new()
                    .with_loss_types(vec![DpoLossType::Sft])
                    .with_reference_free(true)
                    .init()?
                    .forward(b)
            }),
            "MissingInput",
            "policy.token_logps",
        ),
        case(
            "DPO WPO without log Σ p²",
            PairedBatch::from_output(gathered(device, true), one_pair).and_then(|b| {
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
            PairedBatch::new(m(&[-1.0, -2.0], [1, 2])).and_then(|b| {
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
            PairedBatch::from_output(gathered(device, false), one_pair)
                .and_then(|b| CpoConfig::new().init()?.forward(b)),
            "MissingInput",
            "policy.token_logps",
        ),
        case(
            "DPO: a NaN score",
            pair()
                .with_scores(m(&[0.0, nan, 1.0, 2.0], [2, 2]))
                .and_then(|b| free().forward(b)),
            "InvalidValue",
            "scores",
        ),
        case(
            "DPO: NaN lengths",
            pair()
                .with_lengths(m(&[1.0, nan, 2.0, 3.0], [2, 2]))
                .and_then(|b| free().forward(b)),
            "NonFinite",
            "lengths",
        ),
        case(
            "DPO: +inf lengths",
            pair()
                .with_lengths(m(&[1.0, 2.0, inf, 3.0], [2, 2]))
                .and_then(|b| free().forward(b)),
            "NonFinite",
            "lengths",
        ),
        case(
            "DPO: negative lengths",
            pair()
                .with_lengths(m(&[1.0, -2.0, 2.0, 3.0], [2, 2]))
                .and_then(|b| free().forward(b)),
            "InvalidValue",
            "lengths",
        ),
        case(
            "DPO: soft label q > 1",
            pair()
                .with_soft_labels(v(&[0.5, 1.5]))
                .and_then(|b| free().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "DPO: soft label q < 0",
            pair()
                .with_soft_labels(v(&[-0.1, 0.5]))
                .and_then(|b| free().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "DPO: soft label NaN",
            pair()
                .with_soft_labels(v(&[nan, 0.5]))
                .and_then(|b| free().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "KTO: a label of 2",
            unpaired(vec![1, 2], &[0.0, 0.0]).and_then(|b| kto().forward(b)),
            "InvalidValue",
            "desirable",
        ),
        case(
            "KTO: a -inf reference",
            unpaired(vec![1, 0], &[0.0, f32::NEG_INFINITY]).and_then(|b| kto().forward(b)),
            "NonFinite",
            "reference",
        ),
        case(
            "token_mean_nll: a mask of another shape",
            token_mean_nll(m(&[-1.0, -2.0], [1, 2]), bools(vec![true], [1, 1], device)),
            "Shape",
            "mask",
        ),
        case(
            "token_mean_nll: no rows",
            token_mean_nll(m(&[], [0, 2]), bools(vec![], [0, 2], device)),
            "Empty",
            "token_logps",
        ),
        case(
            "BCO: a state update from no rewards",
            BcoState::new().update(v(&[])),
            "Empty",
            "rewards",
        ),
    ]
}

/// DPOP, R-DPO, ODPO, Plackett–Luce, LiPO, SimPER and β-DPO missing an input they need or
/// given values they refuse, and example weights the value checks refuse.
fn listwise_loss_cases(device: &Device) -> Vec<Case> {
    let v = |values: &[f32]| f1(values, device);
    let m = |values: &[f32], dims: [usize; 2]| f2(values, dims, device);
    let pair = || PairedBatch::new(m(&[-1.0, -3.0, -2.0, -4.0], [2, 2])).expect("a valid pair");
    let referenced = || {
        pair()
            .with_reference(m(&[-2.0; 4], [2, 2]))
            .expect("a reference [B, K]")
    };
    let soft = || referenced().with_soft_labels(v(&[0.5, 1.0]));
    let lengths = |b: PairedBatch| b.with_lengths(m(&[3.0, 4.0, 5.0, 6.0], [2, 2]));
    let list = || PairedBatch::new(m(&[-1.0, -2.0, -3.0], [1, 3])).expect("a valid list");
    let graded = |grades: &[f32]| {
        list()
            .with_reference(m(&[-2.0; 3], [1, 3]))
            .and_then(|b| b.with_scores(m(grades, [1, 3])))
    };
    let weighted = |weights: &[f32]| referenced().with_weights(v(weights));
    let unpaired_weighted = |weights: &[f32]| {
        UnpairedBatch::new(
            v(&[-1.0, -2.0]),
            Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), device),
        )
        .and_then(|b| b.with_reference(v(&[-1.5, -1.5])))
        .and_then(|b| b.with_weights(v(weights)))
    };
    let mean_logps = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Mean)
        .init()
        .expect("config")
        .forward(
            zeros3([2, 4, 5], device),
            ints(vec![-100, 1, 2, 3, -100, 4, 3, 2], [2, 4], device),
            None,
        )
        .expect("valid input");
    let dpop = || DpopConfig::new().init().expect("config");
    let rdpo = || RdpoConfig::new().init().expect("config");
    let odpo = || OdpoConfig::new().init().expect("config");
    let pl = || PlackettLuceConfig::new().init().expect("config");
    let lipo = || LipoConfig::new().init().expect("config");
    let simper = || SimperConfig::new().init().expect("config");
    let beta_dpo = || BetaDpoConfig::new().init().expect("config");
    let train = |b: PairedBatch| beta_dpo().forward_train(b, &mut BetaDpoState::new());
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    vec![
        case(
            "DPOP without a reference",
            dpop().forward(pair()),
            "MissingInput",
            "reference",
        ),
        case(
            "R-DPO without lengths",
            rdpo().forward(referenced()),
            "MissingInput",
            "lengths",
        ),
        case(
            "SimPER without lengths",
            simper().forward(pair()),
            "MissingInput",
            "lengths",
        ),
        case(
            "SimPER on mean log-probs",
            PairedBatch::from_output(mean_logps, BatchLayout::ChosenFirst { pairs: 1 })
                .and_then(|b| simper().forward(b)),
            "InvalidValue",
            "policy",
        ),
        case(
            "ODPO without offsets or scores",
            odpo().forward(referenced()),
            "MissingInput",
            "offsets",
        ),
        case(
            "ODPO: offsets on a ranked list",
            list().with_offsets(v(&[0.5])),
            "Shape",
            "policy",
        ),
        case(
            "ODPO: offsets of another length",
            pair().with_offsets(v(&[0.5])),
            "BatchMismatch",
            "offsets",
        ),
        case(
            "ODPO: a NaN offset",
            referenced()
                .with_offsets(v(&[0.5, nan]))
                .and_then(|b| odpo().forward(b)),
            "NonFinite",
            "offsets",
        ),
        case(
            "odpo_offsets: alpha < 0",
            odpo_offsets(v(&[2.0]), v(&[1.0]), -1.0),
            "OutOfRange",
            "alpha",
        ),
        case(
            "odpo_offsets: scores of two lengths",
            odpo_offsets(v(&[2.0, 3.0]), v(&[1.0]), 1.0),
            "BatchMismatch",
            "rejected_scores",
        ),
        case(
            "LiPO without scores",
            lipo().forward(referenced()),
            "MissingInput",
            "scores",
        ),
        case(
            "LiPO: a grade above 64",
            graded(&[65.0, 1.0, 0.0]).and_then(|b| lipo().forward(b)),
            "InvalidValue",
            "scores",
        ),
        case(
            "LiPO: an infinite grade",
            graded(&[inf, 1.0, 0.0]).and_then(|b| lipo().forward(b)),
            "NonFinite",
            "scores",
        ),
        case(
            "LiPO: a NaN grade",
            graded(&[nan, 1.0, 0.0]).and_then(|b| lipo().forward(b)),
            "InvalidValue",
            "scores",
        ),
        case(
            "DPOP with soft labels",
            soft().and_then(|b| dpop().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "R-DPO with soft labels",
            soft().and_then(lengths).and_then(|b| rdpo().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "ODPO with soft labels",
            soft()
                .and_then(|b| b.with_offsets(v(&[0.0, 0.0])))
                .and_then(|b| odpo().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "Plackett-Luce with soft labels",
            soft().and_then(|b| pl().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "LiPO with soft labels",
            soft()
                .and_then(|b| b.with_scores(m(&[1.0, 0.0, 1.0, 0.0], [2, 2])))
                .and_then(|b| lipo().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "SimPER with soft labels",
            soft().and_then(lengths).and_then(|b| simper().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "β-DPO with soft labels",
            soft().and_then(|b| beta_dpo().forward(b)),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "β-DPO forward_train with soft labels",
            soft().and_then(train),
            "InvalidValue",
            "soft_labels",
        ),
        case(
            "β-DPO on a ranked list",
            list().with_reference(m(&[-2.0; 3], [1, 3])).and_then(train),
            "Shape",
            "policy",
        ),
        case(
            "β-DPO on a scored pair",
            referenced()
                .with_scores(m(&[0.0, 1.0, 1.0, 0.0], [2, 2]))
                .and_then(|b| beta_dpo().forward(b)),
            "Shape",
            "policy",
        ),
        case(
            "β-DPO forward_train without a reference",
            train(pair()),
            "MissingInput",
            "reference",
        ),
        case(
            "β-DPO state: no gaps",
            BetaDpoState::new().update(v(&[]), 0.9),
            "Empty",
            "gaps",
        ),
        case(
            "β-DPO state: momentum 1",
            BetaDpoState::new().update(v(&[1.0]), 1.0),
            "OutOfRange",
            "momentum",
        ),
        case(
            "weights of another length",
            weighted(&[1.0, 1.0, 1.0]),
            "BatchMismatch",
            "weights",
        ),
        case(
            "DPO: a negative weight",
            weighted(&[1.0, -0.5]).and_then(|b| DpoConfig::new().init()?.forward(b)),
            "InvalidValue",
            "weights",
        ),
        case(
            "DPOP: a NaN weight",
            weighted(&[nan, 1.0]).and_then(|b| dpop().forward(b)),
            "NonFinite",
            "weights",
        ),
        case(
            "Plackett-Luce: an infinite weight",
            weighted(&[1.0, inf]).and_then(|b| pl().forward(b)),
            "NonFinite",
            "weights",
        ),
        case(
            "SimPER: all weights 0",
            weighted(&[0.0, 0.0])
                .and_then(lengths)
                .and_then(|b| simper().forward(b)),
            "InvalidValue",
            "weights",
        ),
        case(
            "β-DPO forward_train: a negative weight",
            weighted(&[-1.0, 1.0]).and_then(train),
            "InvalidValue",
            "weights",
        ),
        case(
            "β-DPO forward_train: all weights 0",
            weighted(&[0.0, 0.0]).and_then(train),
            "InvalidValue",
            "weights",
        ),
        case(
            "unpaired weights of another length",
            unpaired_weighted(&[1.0]),
            "BatchMismatch",
            "weights",
        ),
        case(
            "KTO: a negative weight",
            unpaired_weighted(&[1.0, -1.0]).and_then(|b| {
                KtoConfig::new()
                    .with_loss_type(KtoLossType::ApoZeroUnpaired)
                    .init()?
                    .forward(b)
            }),
            "InvalidValue",
            "weights",
        ),
        case(
            "BCO: a NaN weight",
            unpaired_weighted(&[nan, 1.0]).and_then(|b| {
                BcoConfig::new()
                    .init()?
                    .forward_train(b, &mut BcoState::new())
            }),
            "NonFinite",
            "weights",
        ),
        case(
            "BCO: all weights 0",
            unpaired_weighted(&[0.0, 0.0])
                .and_then(|b| b.with_reward_shift(v(&[0.0])))
                .and_then(|b| BcoConfig::new().init()?.forward(b)),
            "InvalidValue",
            "weights",
        ),
    ]
}

/// Tensors of one call on two devices (`a` fixes the device).
fn device_cases(a: &Device, b: &Device) -> Vec<Case> {
    let pair = || PairedBatch::new(f2(&[-1.0, -2.0], [1, 2], a)).expect("a valid pair");
    vec![
        case(
            "token_mean_nll: mask elsewhere",
            token_mean_nll(
                f2(&[-1.0, -2.0], [1, 2], a),
                bools(vec![true, true], [1, 2], b),
            ),
            "DeviceMismatch",
            "mask",
        ),
        case(
            "weights elsewhere",
            pair().with_weights(f1(&[1.0], b)),
            "DeviceMismatch",
            "weights",
        ),
        case(
            "offsets elsewhere",
            pair().with_offsets(f1(&[1.0], b)),
            "DeviceMismatch",
            "offsets",
        ),
        case(
            "odpo_offsets: scores on two devices",
            odpo_offsets(f1(&[2.0], a), f1(&[1.0], b), 1.0),
            "DeviceMismatch",
            "rejected_scores",
        ),
    ]
}

/// Every case, with unique names, returns its typed error naming the argument, on every device
/// and every pair of devices; together they produce every variant bad input can give (all
/// but `Read`, which only a failing device read gives).
#[test]
fn bad_inputs_get_the_typed_error_naming_the_argument() {
    let mut host = config_cases();
    host.extend(option_cases());
    host.extend(listwise_config_cases());
    let mut checked = check_cases("config", host);
    for (name, device) in devices() {
        let mut cases = loss_cases(&device);
        cases.extend(listwise_loss_cases(&device));
        checked.extend(check_cases(name, cases));
    }
    for (name, a, b) in device_pairs() {
        checked.extend(check_cases(&name, device_cases(&a, &b)));
    }
    assert_covers("loss", &checked, &INPUT_VARIANTS);
}
