//! Token ids → model-ready preference batches, padded or packed (as TRL's
//! `DataCollatorForPreference`, plus packing and ranked lists).
//!
//! Pure Rust over token-id vectors: no tokenizer. A batch keeps its layout with it
//! ([`BatchLayout`]), so the sequence log-probs computed from it go into
//! [`PairedBatch::from_output`](crate::batch::PairedBatch::from_output) without a
//! hand-written reshape:
//!
//! | collated as | log-probs with | then |
//! |---|---|---|
//! | [`pad`](PreferenceCollator::pad) | `SequenceLogps::forward` | `PairedBatch::from_output(out, collated.layout())` |
//! | [`pack`](PreferenceCollator::pack) | `SequenceLogps::forward_packed` | the same |
//! | [`pad_ranked`](PreferenceCollator::pad_ranked) / [`pack_ranked`](PreferenceCollator::pack_ranked) | as above | the same, `.with_scores(collated.scores(&device)?)` |

use burn::config::Config;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::Segments;
use crate::check;
use crate::error::{self, PreferenceError};

/// One pairwise preference example, tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceExample {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Token ids of the preferred completion.
    pub chosen: Vec<u32>,
    /// Token ids of the dispreferred completion.
    pub rejected: Vec<u32>,
}

/// One prompt with `K ≥ 2` scored completions, tokenized (higher score is better).
#[derive(Debug, Clone, PartialEq)]
pub struct RankedExample {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Token ids of each completion.
    pub completions: Vec<Vec<u32>>,
    /// One score per completion.
    pub scores: Vec<f32>,
}

/// Configuration of [`PreferenceCollator`]; [`init`](Self::init) validates it.
#[derive(Config, Debug)]
pub struct PreferenceCollatorConfig {
    /// Token id written into padding positions. Default: `0`.
    #[config(default = 0)]
    pub pad_token_id: u32,
    /// Label of prompt and padding positions. Default: `-100` (PyTorch's and TRL's).
    #[config(default = -100)]
    pub ignore_index: i64,
    /// Keep at most this many prompt tokens, the *last* ones (the end of a prompt is what the
    /// completion follows). Default: `None` (no limit).
    #[config(default = "None")]
    pub max_prompt_length: Option<usize>,
    /// Keep at most this many completion tokens, the *first* ones. Default: `None`.
    #[config(default = "None")]
    pub max_completion_length: Option<usize>,
    /// Pad the padded layout's `T` up to a multiple of this (e.g. 8 for tensor cores).
    /// Default: `None`.
    #[config(default = "None")]
    pub pad_to_multiple_of: Option<usize>,
}

impl PreferenceCollatorConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] for a maximum length or multiple of 0, or an
    /// `ignore_index` that is a token id (`≥ 0`) or outside `i32` (GPU backends' int type).
    pub fn init(&self) -> error::Result<PreferenceCollator> {
        let at_least_one = |name: &'static str, value: Option<usize>| match value {
            Some(0) => Err(PreferenceError::OutOfRange {
                name,
                expected: ">= 1",
                actual: 0.0,
            }),
            _ => Ok(()),
        };
        at_least_one("max_prompt_length", self.max_prompt_length)?;
        at_least_one("max_completion_length", self.max_completion_length)?;
        at_least_one("pad_to_multiple_of", self.pad_to_multiple_of)?;
        check::param(
            "ignore_index",
            self.ignore_index as f64,
            "negative and within i32",
            |i| i < 0.0 && i >= f64::from(i32::MIN),
        )?;
        Ok(PreferenceCollator {
            pad_token_id: i64::from(self.pad_token_id),
            ignore_index: self.ignore_index,
            max_prompt_length: self.max_prompt_length,
            max_completion_length: self.max_completion_length,
            pad_to_multiple_of: self.pad_to_multiple_of,
        })
    }
}

/// Builds padded or packed batches from tokenized preference examples.
///
/// Every sequence is `prompt ++ completion`; its labels are the token ids on the completion
/// and `ignore_index` on the prompt and on padding, so the gatherer's causal shift scores
/// exactly the completion tokens (the last prompt position predicts the first completion
/// token).
///
/// ```
/// use burn_preference::data::{BatchLayout, PreferenceCollatorConfig, PreferenceExample};
///
/// let collator = PreferenceCollatorConfig::new().init()?;
/// let examples = vec![
///     PreferenceExample { prompt: vec![1, 2, 3], chosen: vec![4, 5], rejected: vec![6] },
///     PreferenceExample { prompt: vec![7, 8], chosen: vec![9], rejected: vec![10, 11] },
/// ];
/// let batch = collator.pad(&examples)?;
/// assert_eq!(batch.layout(), BatchLayout::ChosenFirst { pairs: 2 });
/// assert_eq!(batch.dims(), [4, 5]);
/// // Chosen rows first, right padding (as TRL's DataCollatorForPreference).
/// assert_eq!(&batch.host_input_ids()[..5], &[1, 2, 3, 4, 5]);
/// assert_eq!(&batch.host_labels()[..5], &[-100, -100, -100, 4, 5]);
/// assert_eq!(&batch.host_input_ids()[15..], &[7, 8, 10, 11, 0]);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreferenceCollator {
    pad_token_id: i64,
    ignore_index: i64,
    max_prompt_length: Option<usize>,
    max_completion_length: Option<usize>,
    pad_to_multiple_of: Option<usize>,
}

/// How the sequences of a collated batch map to preference candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchLayout {
    /// `2B` sequences: the chosen completions of pairs `0..B`, then their rejected ones
    /// (one forward pass over both, as trainers run it).
    ChosenFirst {
        /// `B`.
        pairs: usize,
    },
    /// `B·K` sequences, prompt-major: sequence `b·K + k` is prompt `b`'s completion `k`
    /// (reshape the log-probs to `[B, K]`).
    PromptMajor {
        /// `B`.
        prompts: usize,
        /// `K`.
        candidates: usize,
    },
}

/// A collated batch on the host: row-major `[R, T]` token ids, labels, attention mask and
/// positions, and for packed batches the segments. Only the collator builds one, so its parts
/// always agree; turn them into tensors with the methods of the same names.
///
/// Its parts cannot be set by hand (they could then disagree):
///
/// ```compile_fail
/// use burn_preference::data::{BatchLayout, Collated};
///
/// let inconsistent = Collated {
///     dims: [2, 3],
///     input_ids: vec![1],
///     labels: vec![],
///     attention_mask: vec![],
///     position_ids: vec![],
///     segments: None,
///     layout: BatchLayout::ChosenFirst { pairs: 1 },
///     scores: None,
/// };
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Collated {
    dims: [usize; 2],
    input_ids: Vec<i64>,
    labels: Vec<i64>,
    attention_mask: Vec<i64>,
    position_ids: Vec<i64>,
    segments: Option<Segments>,
    layout: BatchLayout,
    scores: Option<Vec<f32>>,
}

impl Collated {
    /// `[R, T]`: one row per sequence when padded, several sequences per row when packed.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// How the sequences map to candidates.
    pub fn layout(&self) -> BatchLayout {
        self.layout
    }

    /// The packed sequences' boundaries; `None` for a padded batch.
    pub fn segments(&self) -> Option<&Segments> {
        self.segments.as_ref()
    }

    /// Token ids `[R·T]`, row-major, `pad_token_id` on padding.
    pub fn host_input_ids(&self) -> &[i64] {
        &self.input_ids
    }

    /// Labels `[R·T]`: token ids on completions, `ignore_index` on prompts and padding.
    pub fn host_labels(&self) -> &[i64] {
        &self.labels
    }

    /// 1 on tokens, 0 on padding `[R·T]`.
    pub fn host_attention_mask(&self) -> &[i64] {
        &self.attention_mask
    }

    /// Position of each token inside its sequence `[R·T]` (0 on padding).
    pub fn host_position_ids(&self) -> &[i64] {
        &self.position_ids
    }

    /// Scores `[B·K]` of ranked batches, prompt-major; `None` for pairs.
    pub fn host_scores(&self) -> Option<&[f32]> {
        self.scores.as_deref()
    }

    /// The number of sequences (rows when padded, segments when packed).
    pub fn sequences(&self) -> usize {
        match self.layout {
            BatchLayout::ChosenFirst { pairs } => 2 * pairs,
            BatchLayout::PromptMajor {
                prompts,
                candidates,
            } => prompts * candidates,
        }
    }

    /// `input_ids` as an Int tensor `[R, T]`.
    pub fn input_ids(&self, device: &Device) -> Tensor<2, Int> {
        self.tensor(&self.input_ids, device)
    }

    /// `labels` as an Int tensor `[R, T]`.
    pub fn labels(&self, device: &Device) -> Tensor<2, Int> {
        self.tensor(&self.labels, device)
    }

    /// `attention_mask` as an Int tensor `[R, T]`.
    pub fn attention_mask(&self, device: &Device) -> Tensor<2, Int> {
        self.tensor(&self.attention_mask, device)
    }

    /// `position_ids` as an Int tensor `[R, T]`.
    pub fn position_ids(&self, device: &Device) -> Tensor<2, Int> {
        self.tensor(&self.position_ids, device)
    }

    /// The scores as a `[B, K]` tensor, for
    /// [`PairedBatch::with_scores`](crate::batch::PairedBatch::with_scores); `None` for pairs.
    pub fn scores(&self, device: &Device) -> Option<Tensor<2>> {
        let (
            BatchLayout::PromptMajor {
                prompts,
                candidates,
            },
            Some(scores),
        ) = (self.layout, &self.scores)
        else {
            return None;
        };
        Some(Tensor::from_data(
            TensorData::new(scores.clone(), [prompts, candidates]),
            device,
        ))
    }

    /// Each sequence's tokens, in sequence order: what was collated, back out (prompt and
    /// completion after truncation, without padding).
    pub fn unpack(&self) -> Vec<Vec<i64>> {
        let [rows, time] = self.dims;
        match &self.segments {
            None => (0..rows)
                .map(|r| {
                    let row = r * time..(r + 1) * time;
                    self.input_ids[row.clone()]
                        .iter()
                        .zip(&self.attention_mask[row])
                        .filter(|(_, m)| **m == 1)
                        .map(|(id, _)| *id)
                        .collect()
                })
                .collect(),
            Some(segments) => {
                let ids = segments.segment_ids();
                let mut out = vec![Vec::new(); segments.len()];
                for (token, s) in self.input_ids.iter().zip(ids) {
                    if let Ok(s) = usize::try_from(s) {
                        out[s].push(*token);
                    }
                }
                out
            }
        }
    }

    fn tensor(&self, values: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), self.dims), device)
    }
}

/// One sequence before padding or packing: tokens and labels.
struct Sequence {
    ids: Vec<i64>,
    labels: Vec<i64>,
}

impl PreferenceCollator {
    /// Pairs → `[2B, T]`, chosen rows first then rejected, right-padded to the longest
    /// sequence (at least 2, then up to `pad_to_multiple_of`). With an empty prompt the first
    /// completion token is not scored: nothing precedes it to predict it (as in TRL).
    ///
    /// # Errors
    /// [`PreferenceError::Empty`] for no examples or an empty completion (an empty prompt is
    /// fine).
    pub fn pad(&self, examples: &[PreferenceExample]) -> error::Result<Collated> {
        let sequences = self.pairwise_sequences(examples)?;
        let layout = BatchLayout::ChosenFirst {
            pairs: examples.len(),
        };
        Ok(self.padded(&sequences, layout, None))
    }

    /// Pairs → packed rows of `row_len` tokens: the sequences in the order of
    /// [`pad`](Self::pad) (chosen of every pair, then rejected), placed one after another,
    /// a new row whenever the next does not fit; the rest of a row is padding.
    ///
    /// # Errors
    /// As [`pad`](Self::pad), and [`PreferenceError::OutOfRange`] when a sequence is longer
    /// than `row_len` (after truncation).
    pub fn pack(&self, examples: &[PreferenceExample], row_len: usize) -> error::Result<Collated> {
        let sequences = self.pairwise_sequences(examples)?;
        let layout = BatchLayout::ChosenFirst {
            pairs: examples.len(),
        };
        self.packed(&sequences, row_len, layout, None)
    }

    /// Ranked examples → `[B·K, T]`, prompt-major, right-padded; all examples must have the
    /// same `K ≥ 2`.
    ///
    /// # Errors
    /// As [`pad`](Self::pad), and [`PreferenceError::Shape`] when `K < 2`, the examples'
    /// `K` differ, or the scores do not match the completions; [`PreferenceError::InvalidValue`]
    /// for a NaN score.
    pub fn pad_ranked(&self, examples: &[RankedExample]) -> error::Result<Collated> {
        let (sequences, layout, scores) = self.ranked_sequences(examples)?;
        Ok(self.padded(&sequences, layout, Some(scores)))
    }

    /// Ranked examples → packed rows of `row_len`, in the order of
    /// [`pad_ranked`](Self::pad_ranked).
    ///
    /// # Errors
    /// As [`pad_ranked`](Self::pad_ranked) and [`pack`](Self::pack).
    pub fn pack_ranked(
        &self,
        examples: &[RankedExample],
        row_len: usize,
    ) -> error::Result<Collated> {
        let (sequences, layout, scores) = self.ranked_sequences(examples)?;
        self.packed(&sequences, row_len, layout, Some(scores))
    }

    fn pairwise_sequences(&self, examples: &[PreferenceExample]) -> error::Result<Vec<Sequence>> {
        non_empty(examples.len())?;
        let chosen = examples
            .iter()
            .map(|e| self.sequence(&e.prompt, &e.chosen, "chosen"));
        let rejected = examples
            .iter()
            .map(|e| self.sequence(&e.prompt, &e.rejected, "rejected"));
        chosen.chain(rejected).collect()
    }

    fn ranked_sequences(
        &self,
        examples: &[RankedExample],
    ) -> error::Result<(Vec<Sequence>, BatchLayout, Vec<f32>)> {
        non_empty(examples.len())?;
        let candidates = examples[0].completions.len();
        let mut sequences = Vec::with_capacity(examples.len() * candidates);
        let mut scores = Vec::with_capacity(examples.len() * candidates);
        for example in examples {
            let k = example.completions.len();
            if k < 2 || k != candidates || example.scores.len() != k {
                return Err(PreferenceError::Shape {
                    arg: "examples",
                    expected: format!(
                        "every example with the same K >= 2 completions and one score each \
                         (the first has K = {candidates})"
                    ),
                    actual: vec![k, example.scores.len()],
                });
            }
            if let Some(bad) = example.scores.iter().find(|s| s.is_nan()) {
                return Err(PreferenceError::InvalidValue {
                    arg: "scores",
                    expected: "numbers (no NaN)",
                    found: bad.to_string(),
                });
            }
            for completion in &example.completions {
                sequences.push(self.sequence(&example.prompt, completion, "completions")?);
            }
            scores.extend_from_slice(&example.scores);
        }
        let layout = BatchLayout::PromptMajor {
            prompts: examples.len(),
            candidates,
        };
        Ok((sequences, layout, scores))
    }

    /// `prompt ++ completion` after truncation, with its labels.
    fn sequence(
        &self,
        prompt: &[u32],
        completion: &[u32],
        arg: &'static str,
    ) -> error::Result<Sequence> {
        if completion.is_empty() {
            return Err(PreferenceError::Empty {
                arg,
                detail: "a completion has no tokens: there is nothing to score".to_string(),
            });
        }
        let prompt = match self.max_prompt_length {
            Some(max) if prompt.len() > max => &prompt[prompt.len() - max..],
            _ => prompt,
        };
        let completion = match self.max_completion_length {
            Some(max) if completion.len() > max => &completion[..max],
            _ => completion,
        };
        let ids: Vec<i64> = prompt
            .iter()
            .chain(completion)
            .map(|&t| i64::from(t))
            .collect();
        let labels = std::iter::repeat_n(self.ignore_index, prompt.len())
            .chain(completion.iter().map(|&t| i64::from(t)))
            .collect();
        Ok(Sequence { ids, labels })
    }

    fn padded(
        &self,
        sequences: &[Sequence],
        layout: BatchLayout,
        scores: Option<Vec<f32>>,
    ) -> Collated {
        // At least 2 positions: the causal shift pairs position t with label t + 1.
        let longest = sequences
            .iter()
            .map(|s| s.ids.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let time = match self.pad_to_multiple_of {
            Some(m) => longest.next_multiple_of(m),
            None => longest,
        };
        let mut out = self.empty([sequences.len(), time], layout, scores);
        for (r, sequence) in sequences.iter().enumerate() {
            self.place(&mut out, sequence, r * time);
        }
        out
    }

    fn packed(
        &self,
        sequences: &[Sequence],
        row_len: usize,
        layout: BatchLayout,
        scores: Option<Vec<f32>>,
    ) -> error::Result<Collated> {
        if row_len < 2 {
            return Err(PreferenceError::OutOfRange {
                name: "row_len",
                expected: ">= 2 (the causal shift pairs position t with label t + 1)",
                actual: row_len as f64,
            });
        }
        if let Some(long) = sequences.iter().map(|s| s.ids.len()).find(|&n| n > row_len) {
            return Err(PreferenceError::OutOfRange {
                name: "row_len",
                expected: "at least the longest sequence's length",
                actual: long as f64,
            });
        }
        // Next-fit keeps the sequence order, so segment s is sequence s.
        let mut starts = Vec::with_capacity(sequences.len());
        let (mut row, mut used) = (0usize, 0usize);
        for sequence in sequences {
            if used + sequence.ids.len() > row_len {
                row += 1;
                used = 0;
            }
            starts.push(row * row_len + used);
            used += sequence.ids.len();
        }
        let rows = row + 1;
        let mut out = self.empty([rows, row_len], layout, scores);
        for (sequence, &start) in sequences.iter().zip(&starts) {
            self.place(&mut out, sequence, start);
        }
        // Segments by ids, not cumulative lengths: padding may end a row before the next.
        let mut ids = vec![-1i64; rows * row_len];
        for (s, (sequence, &start)) in sequences.iter().zip(&starts).enumerate() {
            ids[start..start + sequence.ids.len()].fill(s as i64);
        }
        out.segments = Some(Segments::from_segment_ids(&ids, rows, row_len)?);
        Ok(out)
    }

    fn empty(&self, dims: [usize; 2], layout: BatchLayout, scores: Option<Vec<f32>>) -> Collated {
        let len = dims[0] * dims[1];
        Collated {
            dims,
            input_ids: vec![self.pad_token_id; len],
            labels: vec![self.ignore_index; len],
            attention_mask: vec![0; len],
            position_ids: vec![0; len],
            segments: None,
            layout,
            scores,
        }
    }

    /// Writes one sequence's tokens from flat position `start` on.
    fn place(&self, out: &mut Collated, sequence: &Sequence, start: usize) {
        let span = start..start + sequence.ids.len();
        out.input_ids[span.clone()].copy_from_slice(&sequence.ids);
        out.labels[span.clone()].copy_from_slice(&sequence.labels);
        out.attention_mask[span.clone()].fill(1);
        for (p, slot) in out.position_ids[span].iter_mut().enumerate() {
            *slot = p as i64;
        }
    }
}

fn non_empty(count: usize) -> error::Result<()> {
    check::non_empty("examples", count)
}
