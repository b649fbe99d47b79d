//! Token ids → model-ready batches: the collator (padded or packed, pairs or ranked lists, as
//! TRL's `DataCollatorForPreference`) and the [`Segments`] of packed rows.

mod collate;
mod packing;

pub use collate::{
    BatchLayout, Collated, PreferenceCollator, PreferenceCollatorConfig, PreferenceExample,
    RankedExample,
};
pub use packing::Segments;
