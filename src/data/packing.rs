//! Packed (padding-free) layouts: several sequences share one row of a `[R, T]` batch, with
//! their boundaries given as segment ids, cumulative lengths or restarting position ids.
//!
//! [`Segments`] is the host-side description of such a batch; it is validated once when built
//! and then drives [`SequenceLogps::forward_packed`](crate::logps::SequenceLogps::forward_packed) and
//! [`SequenceLogps::forward_linear_packed`](crate::logps::SequenceLogps::forward_linear_packed), which
//! return each segment's log-prob in the order the segments were given, exactly as if the
//! sequences had been padded one per row.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::check;
use crate::error::{PreferenceError, Result};

/// Where one segment lies: row, first position and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    row: usize,
    start: usize,
    len: usize,
}

/// The sequence boundaries of a packed `[R, T]` batch.
///
/// Segments are numbered `0..S` in the order they were given; each lies inside one row, and
/// positions outside every segment are padding. Build it from whichever form the data loader
/// produces:
///
/// - [`from_segment_ids`](Self::from_segment_ids): `[R, T]` ids `0..S`, negative for padding
///   (as a block-diagonal attention mask is built from);
/// - [`from_cu_seqlens`](Self::from_cu_seqlens): cumulative lengths over the flattened
///   `R·T` tokens, as flash-attention's varlen kernels take them;
/// - [`from_position_ids`](Self::from_position_ids): position ids that restart at 0 at every
///   sequence, as transformers and OpenRLHF pass packed rows.
///
/// ```
/// use burn_preference::data::Segments;
///
/// // One row of 8 tokens holding a 3-token and a 4-token sequence, then one padding token.
/// let by_ids = Segments::from_segment_ids(&[0, 0, 0, 1, 1, 1, 1, -1], 1, 8)?;
/// let by_cu = Segments::from_cu_seqlens(&[0, 3, 7], 1, 8)?;
/// let by_positions = Segments::from_position_ids(&[0, 1, 2, 0, 1, 2, 3, 0], 1, 8)?;
/// assert_eq!(by_ids, by_cu);
/// assert_eq!(by_ids.lengths(), vec![3, 4]);
/// // Position ids cannot mark padding: the trailing token is a segment of its own.
/// assert_eq!(by_positions.lengths(), vec![3, 4, 1]);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    rows: usize,
    time: usize,
    spans: Vec<Span>,
}

impl Segments {
    /// Segments from ids `[R, T]` (row-major): `ids[r·T + t] = s ∈ 0..S` for a token of segment
    /// `s`, any negative value for padding. Each segment must be one contiguous run inside one
    /// row, and the ids must cover `0..S` without gaps.
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] when `ids.len() ≠ R·T`; [`PreferenceError::InvalidValue`]
    /// for a segment split in two, crossing a row, or an id missing from `0..S`.
    pub fn from_segment_ids(ids: &[i64], rows: usize, time: usize) -> Result<Self> {
        check_len("segment_ids", ids.len(), rows, time)?;
        let mut spans: Vec<Option<Span>> = Vec::new();
        let mut previous: Option<i64> = None;
        for (flat, &id) in ids.iter().enumerate() {
            let (row, t) = (flat / time.max(1), flat % time.max(1));
            if t == 0 {
                previous = None;
            }
            if id < 0 {
                previous = Some(id);
                continue;
            }
            let s = usize::try_from(id).map_err(|_| invalid("segment_ids", "ids >= -1", id))?;
            if s >= spans.len() {
                spans.resize(s + 1, None);
            }
            match (&mut spans[s], previous == Some(id)) {
                (Some(span), true) => span.len += 1,
                (None, _) => {
                    spans[s] = Some(Span {
                        row,
                        start: t,
                        len: 1,
                    })
                }
                (Some(_), false) => {
                    return Err(PreferenceError::InvalidValue {
                        arg: "segment_ids",
                        expected: "each segment one contiguous run inside one row",
                        found: format!("segment {s} again at row {row}, position {t}"),
                    });
                }
            }
            previous = Some(id);
        }
        let spans = spans
            .into_iter()
            .enumerate()
            .map(|(s, span)| {
                span.ok_or_else(|| PreferenceError::InvalidValue {
                    arg: "segment_ids",
                    expected: "ids covering 0..S without gaps",
                    found: format!("no token of segment {s}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { rows, time, spans })
    }

    /// Segments from cumulative lengths over the flattened `R·T` tokens (flash-attention's
    /// `cu_seqlens`): segment `s` is tokens `cu[s]..cu[s+1]`; tokens from `cu[S]` on are padding.
    /// `cu` starts at 0 and never decreases; empty segments are not allowed.
    ///
    /// # Errors
    /// [`PreferenceError::InvalidValue`] when `cu` does not start at 0, is not increasing, runs
    /// past `R·T`, or a segment crosses a row; [`PreferenceError::Empty`] for `cu` shorter than 2.
    pub fn from_cu_seqlens(cu_seqlens: &[usize], rows: usize, time: usize) -> Result<Self> {
        if cu_seqlens.len() < 2 {
            return Err(PreferenceError::Empty {
                arg: "cu_seqlens",
                detail: format!(
                    "need [0, end_0, ...] with at least one segment, got {cu_seqlens:?}"
                ),
            });
        }
        if cu_seqlens[0] != 0 {
            return Err(invalid("cu_seqlens", "a first entry of 0", cu_seqlens[0]));
        }
        let mut spans = Vec::with_capacity(cu_seqlens.len() - 1);
        for pair in cu_seqlens.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            if end <= start {
                return Err(PreferenceError::InvalidValue {
                    arg: "cu_seqlens",
                    expected: "strictly increasing entries (no empty segment)",
                    found: format!("{start} then {end}"),
                });
            }
            if end > rows * time {
                return Err(PreferenceError::InvalidValue {
                    arg: "cu_seqlens",
                    expected: "entries at most R·T",
                    found: format!("{end} > {}", rows * time),
                });
            }
            let (row, t) = (start / time, start % time);
            if (end - 1) / time != row {
                return Err(PreferenceError::InvalidValue {
                    arg: "cu_seqlens",
                    expected: "segments inside one row",
                    found: format!("tokens {start}..{end} cross from row {row} to the next"),
                });
            }
            spans.push(Span {
                row,
                start: t,
                len: end - start,
            });
        }
        Ok(Self { rows, time, spans })
    }

    /// Segments from position ids `[R, T]` (row-major) that restart at 0 at every sequence and
    /// count up by one inside it, as transformers and OpenRLHF pass packed rows. Every token
    /// belongs to a segment (position ids cannot mark padding: mask padding with
    /// `ignore_index` labels, or use [`from_segment_ids`](Self::from_segment_ids)).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] when `position_ids.len() ≠ R·T`;
    /// [`PreferenceError::InvalidValue`] when a row does not start at 0 or a position id is
    /// neither 0 nor the previous one plus 1.
    pub fn from_position_ids(position_ids: &[i64], rows: usize, time: usize) -> Result<Self> {
        check_len("position_ids", position_ids.len(), rows, time)?;
        let mut spans: Vec<Span> = Vec::new();
        for (row, ids) in position_ids.chunks(time.max(1)).enumerate() {
            for (t, &p) in ids.iter().enumerate() {
                match (p, spans.last_mut()) {
                    (0, _) => spans.push(Span {
                        row,
                        start: t,
                        len: 1,
                    }),
                    (_, Some(span)) if t > 0 && p == ids[t - 1] + 1 => span.len += 1,
                    _ => {
                        return Err(PreferenceError::InvalidValue {
                            arg: "position_ids",
                            expected: "0 at each sequence's start, then +1 per token",
                            found: format!("{p} at row {row}, position {t}"),
                        });
                    }
                }
            }
        }
        Ok(Self { rows, time, spans })
    }

    /// Segments from an Int tensor of segment ids `[R, T]` (read back to the host once); see
    /// [`from_segment_ids`](Self::from_segment_ids).
    ///
    /// # Errors
    /// As [`from_segment_ids`](Self::from_segment_ids), and [`PreferenceError::Read`].
    pub fn from_segment_id_tensor(ids: Tensor<2, Int>) -> Result<Self> {
        let [rows, time] = ids.dims();
        let values = check::read_ints("segment_ids", ids)?;
        Self::from_segment_ids(&values, rows, time)
    }

    /// The number of segments `S`.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The packed batch's `[R, T]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.time]
    }

    /// Each segment's length in tokens, in segment order.
    pub fn lengths(&self) -> Vec<usize> {
        self.spans.iter().map(|s| s.len).collect()
    }

    /// Segment id of every token `[R·T]`, row-major, −1 on padding (for a block-diagonal
    /// attention mask: two tokens attend to each other only with the same id).
    pub fn segment_ids(&self) -> Vec<i64> {
        let mut ids = vec![-1; self.rows * self.time];
        for (s, span) in self.spans.iter().enumerate() {
            let first = span.row * self.time + span.start;
            ids[first..first + span.len].fill(s as i64);
        }
        ids
    }

    /// Position of every token inside its segment `[R·T]`, row-major, restarting at 0 (0 on
    /// padding).
    pub fn position_ids(&self) -> Vec<i64> {
        let mut positions = vec![0; self.rows * self.time];
        for span in &self.spans {
            let first = span.row * self.time + span.start;
            for (p, slot) in positions[first..first + span.len].iter_mut().enumerate() {
                *slot = p as i64;
            }
        }
        positions
    }

    /// Checks that a tensor's leading `[R, T]` is this batch's.
    pub(crate) fn check_dims(&self, arg: &'static str, dims: [usize; 3]) -> Result<()> {
        check::shape(
            arg,
            dims,
            [Some(self.rows), Some(self.time), None],
            "the segments' [R, T, _]",
        )
    }

    /// The label mask `[R, T]` that keeps a label only where its prediction stays inside one
    /// segment: with the causal shift, label `t` is predicted from position `t − 1`, so it
    /// counts only when both lie in the same segment (a segment's first token is never
    /// predicted, as position 0 of a padded row is not); without it, where `t` is in a segment.
    pub(crate) fn label_mask(&self, shift: bool, device: &Device) -> Tensor<2, Int> {
        let mut mask = vec![0i64; self.rows * self.time];
        let skip = usize::from(shift);
        for span in &self.spans {
            let first = span.row * self.time + span.start;
            mask[first + skip.min(span.len)..first + span.len].fill(1);
        }
        Tensor::from_data(TensorData::new(mask, [self.rows, self.time]), device)
    }

    /// Where each segment's per-token values lie in the flattened `[R·T']` per-token output
    /// (`T' = T − 1` with the shift), padded to `[S, W]` with the index `R·T'` (one slot past
    /// the end, which the caller fills with 0). `W` is the longest segment's token count,
    /// at least 1.
    pub(crate) fn token_index(&self, shift: bool, device: &Device) -> (Tensor<1, Int>, usize) {
        let skip = usize::from(shift);
        let columns = self.time - skip;
        let pad = (self.rows * columns) as i64;
        let width = self
            .spans
            .iter()
            .map(|s| s.len.saturating_sub(skip))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut index = vec![pad; self.spans.len() * width];
        for (s, span) in self.spans.iter().enumerate() {
            let first = span.row * columns + span.start;
            for j in 0..span.len.saturating_sub(skip) {
                index[s * width + j] = (first + j) as i64;
            }
        }
        let count = index.len();
        (
            Tensor::from_data(TensorData::new(index, [count]), device),
            width,
        )
    }
}

fn check_len(arg: &'static str, len: usize, rows: usize, time: usize) -> Result<()> {
    if len == rows * time && rows > 0 && time > 0 {
        return Ok(());
    }
    Err(PreferenceError::Shape {
        arg,
        expected: format!("[R, T] = [{rows}, {time}] with R, T >= 1, row-major"),
        actual: vec![len],
    })
}

fn invalid(arg: &'static str, expected: &'static str, found: impl ToString) -> PreferenceError {
    PreferenceError::InvalidValue {
        arg,
        expected,
        found: found.to_string(),
    }
}
