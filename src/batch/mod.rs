//! The input of every loss, by the shape of the data: [`PairedBatch`] (pairs, or ranked lists
//! of `K` candidates per prompt) and [`UnpairedBatch`] (single completions labelled desirable
//! or undesirable). Each is built from plain tensors (`new`) or from the gatherer's output
//! (`from_output`), then given the optional inputs its losses read (`with_*`).

mod completions;
mod from_output;
mod paired;
pub(crate) mod ranking;
mod step;
pub(crate) mod tokens;
mod unpaired;

pub use completions::CompletionBatch;
pub use paired::PairedBatch;
pub(crate) use paired::pairs_of;
pub(crate) use step::Reduction;
pub use step::StepTotals;
pub use unpaired::UnpairedBatch;
