//! `DpoConfig` carries TRL's `DPOConfig` loss keys: serde from TRL-shaped JSON, TRL's strings
//! for the loss types and f-divergences, and typed errors for the combinations TRL refuses
//! (and for `label_smoothing` that no chosen loss type would read).

use burn_preference::loss::FDivergence;
use burn_preference::prelude::*;

const TRL_STRINGS: [&str; 15] = [
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
];

#[test]
fn loss_types_and_divergences_use_trls_strings() {
    for (s, t) in TRL_STRINGS.iter().zip(DpoLossType::ALL) {
        assert_eq!(s.parse::<DpoLossType>().unwrap(), t);
        assert_eq!(t.to_string(), *s);
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{s}\""));
    }
    let divergences = [
        "reverse_kl",
        "forward_kl",
        "js_divergence",
        "alpha_divergence",
    ];
    for (s, d) in divergences.iter().zip(FDivergence::ALL) {
        assert_eq!(s.parse::<FDivergence>().unwrap(), d);
        assert_eq!(d.to_string(), *s);
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{s}\""));
    }
    assert!(matches!(
        "dpo".parse::<DpoLossType>(),
        Err(PreferenceError::InvalidValue {
            arg: "loss_type",
            ..
        })
    ));
    assert!(matches!(
        "kl".parse::<FDivergence>(),
        Err(PreferenceError::InvalidValue {
            arg: "f_divergence_type",
            ..
        })
    ));
}

#[test]
fn a_trl_config_json_round_trips() {
    // As a TRL user writes it: a single loss type as a string, unrelated trainer keys around.
    let json = r#"{
        "output_dir": "out", "learning_rate": 5e-7, "per_device_train_batch_size": 8,
        "beta": 0.25, "loss_type": "ipo", "loss_weights": null, "label_smoothing": 0.0,
        "f_divergence_type": "js_divergence", "f_alpha_divergence_coef": 0.5,
        "use_weighting": true, "ld_alpha": 0.3, "discopop_tau": 0.05,
        "precompute_ref_log_probs": false
    }"#;
    let config: DpoConfig = serde_json::from_str(json).unwrap();
    assert_eq!(config.beta, 0.25);
    assert_eq!(config.loss_type, vec![DpoLossType::Ipo]);
    assert_eq!(config.f_divergence_type, FDivergence::JsDivergence);
    assert!(config.use_weighting);
    assert_eq!(config.ld_alpha, Some(0.3));
    // 0.1's `reduction` is gone (the loss is always the mean); value checks default on.
    assert!(config.value_checks);
    assert!(!config.reference_free);
    config.init().unwrap();
    let again: DpoConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(again, config);

    // A list of loss types with weights (TRL's MPO-style mixtures).
    let json = r#"{"loss_type": ["sigmoid", "sft"], "loss_weights": [0.8, 0.2]}"#;
    let config: DpoConfig = serde_json::from_str(json).unwrap();
    assert_eq!(
        config.loss_type,
        vec![DpoLossType::Sigmoid, DpoLossType::Sft]
    );
    assert_eq!(config.loss_weights, Some(vec![0.8, 0.2]));
    assert_eq!(config.beta, 0.1, "missing keys take TRL's defaults");
    let loss = config.init().unwrap();
    assert_eq!(loss.loss_weights(), &[0.8, 0.2]);
    let written = serde_json::to_value(&config).unwrap();
    assert_eq!(written["loss_type"], serde_json::json!(["sigmoid", "sft"]));
    assert_eq!(
        written["f_divergence_type"],
        serde_json::json!("reverse_kl")
    );
    let again: DpoConfig = serde_json::from_value(written).unwrap();
    assert_eq!(again, config);

    // The empty object is TRL's `DPOConfig()`.
    let config: DpoConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, DpoConfig::new());
    assert_eq!(config.loss_type, vec![DpoLossType::Sigmoid]);
    assert_eq!(config.discopop_tau, 0.05);
    assert_eq!(config.f_alpha_divergence_coef, 0.5);
    assert!(config.loss_weights.is_none() && config.ld_alpha.is_none());

    // An unknown loss type string is a deserialisation error, not a silent default.
    assert!(serde_json::from_str::<DpoConfig>(r#"{"loss_type": "dpo"}"#).is_err());

    // A 0.1 config that still names `reduction` loads: serde ignores unknown keys.
    let config: DpoConfig =
        serde_json::from_str(r#"{"beta": 0.2, "reduction": "Sum", "value_checks": false}"#)
            .unwrap();
    assert_eq!(config.beta, 0.2);
    assert!(!config.value_checks);
}

fn init_err(config: DpoConfig) -> PreferenceError {
    config.init().expect_err("expected init to fail")
}

fn out_of_range_name(config: DpoConfig) -> &'static str {
    match init_err(config) {
        PreferenceError::OutOfRange { name, .. } => name,
        other => panic!("expected OutOfRange, got {other:?}"),
    }
}

#[test]
fn init_refuses_what_trl_refuses_and_unread_smoothing() {
    use DpoLossType as T;
    let with = |t: T| DpoConfig::new().with_loss_type(t);

    // label_smoothing > 0 that no chosen loss reads (TRL 1.16's sigmoid ignores it).
    let err = init_err(DpoConfig::new().with_label_smoothing(0.1));
    let message = err.to_string();
    assert!(
        matches!(
            err,
            PreferenceError::OutOfRange {
                name: "label_smoothing",
                ..
            }
        ) && message.contains("PsiPoConfig::new(Psi::Logit).with_label_smoothing"),
        "{message}"
    );
    for t in [
        T::Hinge,
        T::Ipo,
        T::NcaPair,
        T::Discopop,
        T::Sft,
        T::SigmoidNorm,
    ] {
        assert_eq!(
            out_of_range_name(with(t).with_label_smoothing(0.1)),
            "label_smoothing"
        );
    }
    // ... but it is fine as soon as one chosen loss reads it.
    for t in [T::Robust, T::ExoPair, T::Aot, T::AotUnpaired] {
        with(t).with_label_smoothing(0.1).init().unwrap();
    }
    DpoConfig::new()
        .with_loss_types(vec![T::Sigmoid, T::Robust])
        .with_label_smoothing(0.1)
        .init()
        .unwrap();

    // exo_pair needs ε > 0; robust needs ε ∈ [0, ½).
    assert_eq!(out_of_range_name(with(T::ExoPair)), "label_smoothing");
    assert_eq!(
        out_of_range_name(with(T::ExoPair).with_label_smoothing(1.0)),
        "label_smoothing"
    );
    assert_eq!(
        out_of_range_name(with(T::Robust).with_label_smoothing(0.5)),
        "label_smoothing"
    );
    with(T::Robust).init().unwrap();
    assert_eq!(
        out_of_range_name(with(T::Aot).with_label_smoothing(-0.1)),
        "label_smoothing"
    );

    // WPO with the batch-sorted losses.
    for t in [T::Aot, T::AotUnpaired] {
        let err = init_err(with(t).with_use_weighting(true));
        assert!(
            matches!(
                err,
                PreferenceError::InvalidValue {
                    arg: "use_weighting",
                    ..
                }
            ),
            "{err}"
        );
    }
    // A non-default f-divergence with a loss that does not read the scores.
    for t in [
        T::NcaPair,
        T::BcoPair,
        T::SppoHard,
        T::Aot,
        T::AotUnpaired,
        T::ApoZero,
        T::ApoDown,
    ] {
        for d in [
            FDivergence::ForwardKl,
            FDivergence::JsDivergence,
            FDivergence::AlphaDivergence,
        ] {
            let err = init_err(with(t).with_f_divergence_type(d));
            assert!(
                matches!(
                    err,
                    PreferenceError::InvalidValue {
                        arg: "f_divergence_type",
                        ..
                    }
                ),
                "{err}"
            );
        }
        with(t).init().unwrap();
    }
    for t in [
        T::Sigmoid,
        T::SigmoidNorm,
        T::Hinge,
        T::Ipo,
        T::Robust,
        T::Discopop,
        T::Sft,
    ] {
        with(t)
            .with_f_divergence_type(FDivergence::AlphaDivergence)
            .init()
            .unwrap();
    }

    // Weights: one per loss type, finite.
    let err = init_err(
        DpoConfig::new()
            .with_loss_types(vec![T::Sigmoid, T::Sft])
            .with_loss_weights(Some(vec![1.0])),
    );
    assert!(
        matches!(&err, PreferenceError::Shape { arg: "loss_weights", actual, .. } if actual == &[1]),
        "{err}"
    );
    assert_eq!(
        out_of_range_name(DpoConfig::new().with_loss_weights(Some(vec![f64::NAN]))),
        "loss_weights"
    );
    let err = init_err(DpoConfig::new().with_loss_types(vec![]));
    assert!(
        matches!(
            err,
            PreferenceError::Empty {
                arg: "loss_type",
                ..
            }
        ),
        "{err}"
    );

    // β: the crate's one KL-coefficient range [1e-8, 1e8] (β·margin and 1/(2β)² stay
    // finite in f32).
    for beta in [
        0.0,
        -0.1,
        f64::NAN,
        f64::INFINITY,
        1e39,
        1e-40,
        1.01e8,
        0.99e-8,
    ] {
        assert_eq!(
            out_of_range_name(DpoConfig::new().with_beta(beta)),
            "beta",
            "β = {beta}"
        );
    }
    DpoConfig::new().with_beta(1e8).init().unwrap();
    DpoConfig::new().with_beta(1e-8).init().unwrap();

    // ld_alpha ∈ [0, 1], discopop_tau > 0, f_alpha_divergence_coef finite.
    for alpha in [-0.1, 1.1, f64::NAN] {
        assert_eq!(
            out_of_range_name(DpoConfig::new().with_ld_alpha(Some(alpha))),
            "ld_alpha"
        );
    }
    DpoConfig::new().with_ld_alpha(Some(0.0)).init().unwrap();
    DpoConfig::new().with_ld_alpha(Some(1.0)).init().unwrap();
    for tau in [0.0, -1.0, f64::NAN] {
        assert_eq!(
            out_of_range_name(with(T::Discopop).with_discopop_tau(tau)),
            "discopop_tau"
        );
    }
    assert_eq!(
        out_of_range_name(DpoConfig::new().with_f_alpha_divergence_coef(f64::INFINITY)),
        "f_alpha_divergence_coef"
    );
}
