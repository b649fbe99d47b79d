//! The `batch` module: paired/ranked and unpaired batches, from plain tensors or the
//! gatherer's output.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod devices;
mod from_output;
