//! The `loss` module: every loss, its configuration, its inputs and its numerical limits, one
//! file per loss or concern, on every device.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod bco;
mod beta_dpo;
mod configs;
mod cpo;
mod dpo;
mod dpo_config;
mod dpop;
mod fuzz;
mod grpo;
mod inputs;
mod kto;
mod lipo;
mod mean_logps;
mod odpo;
mod orpo;
mod plackett_luce;
mod psipo;
mod rdpo;
mod rrhf;
mod simper;
mod stability;
mod step;
mod trl_dpo;
mod trl_grpo;
mod value_checks;
mod weights;
mod zoo;
