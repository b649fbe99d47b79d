//! Bad input to the collator, its configuration and packed segments: each case returns the
//! typed error naming the offending argument, never a panic.

use burn_preference::data::{PreferenceExample, RankedExample, Segments};
use burn_preference::prelude::*;

use crate::common::cases::{Case, assert_covers, case, check_cases};

/// The collator's options: every one validated where it enters.
fn config_cases() -> Vec<Case> {
    let collator = PreferenceCollatorConfig::new;
    vec![
        case(
            "collator: max_prompt_length 0",
            collator().with_max_prompt_length(Some(0)).init(),
            "OutOfRange",
            "max_prompt_length",
        ),
        case(
            "collator: max_completion_length 0",
            collator().with_max_completion_length(Some(0)).init(),
            "OutOfRange",
            "max_completion_length",
        ),
        case(
            "collator: pad_to_multiple_of 0",
            collator().with_pad_to_multiple_of(Some(0)).init(),
            "OutOfRange",
            "pad_to_multiple_of",
        ),
        case(
            "collator: a token id as ignore_index",
            collator().with_ignore_index(3).init(),
            "OutOfRange",
            "ignore_index",
        ),
    ]
}

/// Segments that do not describe a packed batch.
fn segments_cases() -> Vec<Case> {
    vec![
        case(
            "segments: ids of another length",
            Segments::from_segment_ids(&[0, 0], 1, 4),
            "Shape",
            "segment_ids",
        ),
        case(
            "segments: one segment in two runs",
            Segments::from_segment_ids(&[0, 1, 0, -1], 1, 4),
            "InvalidValue",
            "segment_ids",
        ),
        case(
            "segments: an id missing from 0..S",
            Segments::from_segment_ids(&[0, 0, 2, 2], 1, 4),
            "InvalidValue",
            "segment_ids",
        ),
        case(
            "segments: cu_seqlens without a segment",
            Segments::from_cu_seqlens(&[0], 1, 4),
            "Empty",
            "cu_seqlens",
        ),
        case(
            "segments: cu_seqlens not starting at 0",
            Segments::from_cu_seqlens(&[1, 3], 1, 4),
            "InvalidValue",
            "cu_seqlens",
        ),
        case(
            "segments: an empty segment",
            Segments::from_cu_seqlens(&[0, 2, 2], 1, 4),
            "InvalidValue",
            "cu_seqlens",
        ),
        case(
            "segments: a segment across rows",
            Segments::from_cu_seqlens(&[0, 3, 6], 2, 4),
            "InvalidValue",
            "cu_seqlens",
        ),
        case(
            "segments: past R·T",
            Segments::from_cu_seqlens(&[0, 5], 1, 4),
            "InvalidValue",
            "cu_seqlens",
        ),
        case(
            "segments: position ids not starting at 0",
            Segments::from_position_ids(&[1, 2, 3], 1, 3),
            "InvalidValue",
            "position_ids",
        ),
    ]
}

/// Collator inputs that cannot be scored.
fn collator_cases() -> Vec<Case> {
    let collator = PreferenceCollatorConfig::new()
        .init()
        .expect("default config");
    let pair = |prompt: Vec<u32>, chosen: Vec<u32>, rejected: Vec<u32>| PreferenceExample {
        prompt,
        chosen,
        rejected,
    };
    let ranked = |k: usize, score: f32| RankedExample {
        prompt: vec![1],
        completions: (0..k).map(|i| vec![2 + i as u32]).collect(),
        scores: (0..k)
            .map(|i| if i == 0 { score } else { i as f32 })
            .collect(),
    };
    vec![
        case("pad: no examples", collator.pad(&[]), "Empty", "examples"),
        case(
            "pad: an empty chosen completion",
            collator.pad(&[pair(vec![1], vec![], vec![2])]),
            "Empty",
            "chosen",
        ),
        case(
            "pad: an empty rejected completion",
            collator.pad(&[pair(vec![1], vec![2], vec![])]),
            "Empty",
            "rejected",
        ),
        case(
            "pack: a row shorter than a sequence",
            collator.pack(&[pair(vec![1, 2, 3], vec![4, 5], vec![6])], 4),
            "OutOfRange",
            "row_len",
        ),
        case(
            "pack: rows of one token",
            collator.pack(&[pair(vec![], vec![4], vec![6])], 1),
            "OutOfRange",
            "row_len",
        ),
        case(
            "pad_ranked: K differs between examples",
            collator.pad_ranked(&[ranked(2, 0.0), ranked(3, 0.0)]),
            "Shape",
            "examples",
        ),
        case(
            "pad_ranked: K = 1",
            collator.pad_ranked(&[ranked(1, 0.0)]),
            "Shape",
            "examples",
        ),
        case(
            "pad_ranked: a NaN score",
            collator.pad_ranked(&[ranked(2, f32::NAN)]),
            "InvalidValue",
            "scores",
        ),
    ]
}

/// Every case, with unique names, returns its typed error naming the argument; together they
/// produce every variant the collator, its config and `Segments` document.
#[test]
fn bad_inputs_get_the_typed_error_naming_the_argument() {
    let mut cases = config_cases();
    cases.extend(segments_cases());
    cases.extend(collator_cases());
    let checked = check_cases("data", cases);
    assert_covers(
        "data",
        &checked,
        &["Empty", "OutOfRange", "Shape", "InvalidValue"],
    );
}
