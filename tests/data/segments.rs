//! Packed segments: the three ways of giving them agree, and the gatherer refuses logits of
//! another `[R, T]`.

use burn::tensor::{Int, Tensor};
use burn_preference::PreferenceError;
use burn_preference::data::Segments;
use burn_preference::logps::SequenceLogpsConfig;

use crate::common::devices;

#[test]
fn segments_from_ids_lengths_and_positions_agree() {
    // Row 0: segments 0 (3 tokens) and 1 (2), one pad; row 1: segment 2 (6 tokens).
    let ids = [0, 0, 0, 1, 1, -1, 2, 2, 2, 2, 2, 2];
    let by_ids = Segments::from_segment_ids(&ids, 2, 6).expect("ids");
    let by_cu = Segments::from_cu_seqlens(&[0, 3, 5], 1, 6).expect("cu");
    assert_eq!(by_ids.lengths(), vec![3, 2, 6]);
    assert_eq!(by_cu.lengths(), vec![3, 2]);
    assert_eq!(by_ids.segment_ids(), ids.to_vec());
    assert_eq!(
        by_ids.position_ids(),
        vec![0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 4, 5]
    );
    let by_positions = Segments::from_position_ids(&[0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 4, 5], 2, 6)
        .expect("positions");
    assert_eq!(by_positions.lengths(), vec![3, 2, 1, 6]);
    let cu = Segments::from_cu_seqlens(&[0, 3, 5, 12], 2, 6);
    assert!(
        matches!(
            cu,
            Err(PreferenceError::InvalidValue {
                arg: "cu_seqlens",
                ..
            })
        ),
        "a segment across rows: {cu:?}"
    );
    // The other malformed segments are cases of the bad-input matrix (`bad_input.rs`).

    let gatherer = SequenceLogpsConfig::new().init().expect("config");
    for (name, device) in devices() {
        let wrong = gatherer.forward_packed(
            Tensor::<3>::zeros([1, 5, 3], &device),
            Tensor::<2, Int>::zeros([1, 5], &device),
            &by_ids,
        );
        assert!(
            matches!(wrong, Err(PreferenceError::Shape { arg: "logits", .. })),
            "[{name}] {wrong:?}"
        );
    }
}
