//! The `loss` module: every loss, its configuration, and its numerical limits.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod fuzz;
mod stability;
