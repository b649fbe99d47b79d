//! The `loss` module: every loss, its configuration, its inputs and its numerical limits, one
//! file per loss or concern, on every device.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod bco;
mod configs;
mod cpo;
mod dpo;
mod dpo_config;
mod fuzz;
mod inputs;
mod kto;
mod mean_logps;
mod orpo;
mod psipo;
mod rrhf;
mod stability;
mod step;
mod trl_dpo;
mod value_checks;
mod zoo;
