//! The `data` module: the collator's padded and packed batches, and packed segments.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod collate;
mod segments;
