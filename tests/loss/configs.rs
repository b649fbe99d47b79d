//! The reference-free and unpaired losses' configs (CPO, ORPO, KTO, BCO): TRL's strings and
//! keys, and the values `init` refuses.

use burn_preference::loss::KtoLossType;
use burn_preference::prelude::*;
use serde_json::Value;

use crate::common::trl_fixture::from_trl;

#[test]
fn loss_types_round_trip_trl_strings() {
    for s in ["sigmoid", "hinge", "ipo", "simpo", "alphapo"] {
        let t: CpoLossType = s.parse().unwrap();
        assert_eq!(t.to_string(), s);
        assert_eq!(serde_json::to_value(t).unwrap(), Value::String(s.into()));
    }
    for s in ["kto", "apo_zero_unpaired"] {
        let t: KtoLossType = s.parse().unwrap();
        assert_eq!(t.to_string(), s);
    }
    assert!(matches!(
        "kto_pair".parse::<CpoLossType>(),
        Err(PreferenceError::InvalidValue { .. })
    ));
    assert!(matches!(
        "bco".parse::<KtoLossType>(),
        Err(PreferenceError::InvalidValue { .. })
    ));
}

/// TRL's config dicts load as they are: missing keys (and this crate's own `value_checks`,
/// which TRL does not have) take their defaults, unknown keys are ignored.
#[test]
fn configs_deserialise_from_trl_keys_with_defaults() {
    let cpo: CpoConfig =
        serde_json::from_str(r#"{"loss_type": "alphapo", "alpha": 0.25}"#).unwrap();
    assert_eq!((cpo.beta, cpo.cpo_alpha, cpo.simpo_gamma), (0.1, 1.0, 0.5));
    assert!(cpo.value_checks, "value checks default on");
    let loss = cpo.init().unwrap();
    assert_eq!(
        (loss.loss_type(), loss.cpo_alpha()),
        (CpoLossType::Simpo, 0.0)
    );
    let kto: KtoConfig = serde_json::from_str(r#"{"loss_type": "apo_zero_unpaired"}"#).unwrap();
    assert_eq!(
        (kto.beta, kto.desirable_weight, kto.undesirable_weight),
        (0.1, 1.0, 1.0)
    );
    assert_eq!(kto.loss_type, KtoLossType::ApoZeroUnpaired);
    let orpo: OrpoConfig = serde_json::from_str(r#"{"beta": 0.25, "max_length": 1024}"#).unwrap();
    assert_eq!(orpo.beta, 0.25);
    assert!(orpo.value_checks, "value checks default on");
    let bco: BcoConfig =
        serde_json::from_str(r#"{"beta": 0.5, "prompt_sample_size": 1024}"#).unwrap();
    assert_eq!((bco.beta, bco.value_checks), (0.5, true));
    // A full TRL dict, and a setting of ours next to TRL's keys.
    let full = r#"{"beta": 0.1, "label_smoothing": 0.0, "loss_type": "ipo", "cpo_alpha": 1.0,
                   "simpo_gamma": 0.5, "alpha": 0.0, "learning_rate": 1e-6,
                   "value_checks": false}"#;
    let cpo: CpoConfig = serde_json::from_str(full).unwrap();
    assert_eq!(cpo.loss_type, CpoLossType::Ipo);
    assert!(!cpo.value_checks);
    // The TRL keys laid over the defaults give the same config.
    let keys: Value = serde_json::from_str(full).unwrap();
    assert_eq!(from_trl(CpoConfig::new(), &keys), cpo);
}

#[test]
fn configs_refuse_bad_values() {
    let out_of_range = |r: Result<()>, name: &str| match r {
        Err(PreferenceError::OutOfRange { name: n, .. }) => assert_eq!(n, name),
        other => panic!("{name}: {other:?}"),
    };
    out_of_range(CpoConfig::new().with_beta(0.0).init().map(|_| ()), "beta");
    out_of_range(
        CpoConfig::new()
            .with_label_smoothing(0.5)
            .init()
            .map(|_| ()),
        "label_smoothing",
    );
    out_of_range(
        CpoConfig::new().with_cpo_alpha(-1.0).init().map(|_| ()),
        "cpo_alpha",
    );
    out_of_range(
        CpoConfig::new().with_alpha(f64::NAN).init().map(|_| ()),
        "alpha",
    );
    out_of_range(
        CpoConfig::new()
            .with_simpo_gamma(f64::INFINITY)
            .init()
            .map(|_| ()),
        "simpo_gamma",
    );
    out_of_range(OrpoConfig::new().with_beta(1e9).init().map(|_| ()), "beta");
    out_of_range(
        KtoConfig::new()
            .with_desirable_weight(-0.1)
            .init()
            .map(|_| ()),
        "desirable_weight",
    );
    out_of_range(
        KtoConfig::new()
            .with_undesirable_weight(f64::NAN)
            .init()
            .map(|_| ()),
        "undesirable_weight",
    );
    out_of_range(BcoConfig::new().with_beta(-1.0).init().map(|_| ()), "beta");
}
