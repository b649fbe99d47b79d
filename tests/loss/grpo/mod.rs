//! The GRPO family and RLOO: advantages from rewards, every GRPO `loss_type` and RLOO's loss
//! against `f64` references written from TRL 1.16's trainers, their edge cases, step totals,
//! bad input and `CompletionBatch::from_output`. Mostly on the CPU backends (each case runs
//! the reference's finite differences too); a few small cases on every device.

mod advantages;
mod bad_input;
mod edge;
mod from_output;
mod loss;
mod reference;
mod rloo;
mod step;
