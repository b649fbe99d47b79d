//! The losses (`burn_preference::loss`), one file per loss or concern, on every device.

#[path = "../common/mod.rs"]
mod common;

mod bco;
mod configs;
mod cpo;
mod dpo;
mod dpo_config;
mod inputs;
mod kl;
mod kto;
mod mean_logps;
mod metrics_merge;
mod orpo;
mod psipo;
mod rrhf;
mod trl_dpo;
mod value_checks;
mod zoo;
