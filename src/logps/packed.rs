//! Sequence log-probs over packed rows: the same pass as the padded layout, with a label mask
//! that stops the causal shift at segment boundaries, then each segment's per-token values
//! gathered into a padded `[S, W]` layout and reduced as usual.

use burn::tensor::{Bool, Int, Tensor};

use super::{LmHead, LogpReduction, SequenceLogps, SequenceLogpsOutput};
use crate::data::Segments;
use crate::error::{self, PreferenceError};

impl SequenceLogps {
    /// Sequence log-probs of packed rows: `logits [R, T, V]` and `labels [R, T]` hold several
    /// sequences per row, with the boundaries in `segments`. Returns one entry per segment,
    /// in segment order, exactly as [`forward`](Self::forward) returns them for the same
    /// sequences padded one per row: `logps [S]`, `counts [S]`, and the per-token outputs
    /// `[S, W]` (`W` = the longest segment's predicted tokens) where requested.
    ///
    /// The causal shift never crosses a boundary: a segment's first token is not predicted
    /// from the previous segment's last one. Labels are masked as usual (`ignore_index`), so
    /// a collator's prompt and padding labels need no extra mask.
    ///
    /// ```
    /// use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
    /// use burn_preference::data::Segments;
    /// use burn_preference::prelude::*;
    ///
    /// let device = Device::default();
    /// let logits = Tensor::<3>::random([1, 8, 11], Distribution::Default, &device);
    /// // Two sequences in one row: [prompt, 4, 7] and [prompt, prompt, 2, 9, 9], then padding.
    /// let labels = Tensor::<2, Int>::from_data(
    ///     TensorData::new(vec![-100i64, 4, 7, -100, -100, 2, 9, 9], [1, 8]),
    ///     &device,
    /// );
    /// let segments = Segments::from_cu_seqlens(&[0, 3, 8], 1, 8)?;
    /// let out = SequenceLogpsConfig::new().init()?.forward_packed(logits, labels, &segments)?;
    /// assert_eq!(out.logps.dims(), [2]);
    /// assert_eq!(out.counts.to_data().iter::<f32>().collect::<Vec<_>>(), vec![2.0, 3.0]);
    /// # Ok::<(), burn_preference::PreferenceError>(())
    /// ```
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and [`PreferenceError::Shape`] when the logits' `[R, T]`
    /// is not the segments'.
    ///
    /// # Shapes
    /// - logits: `[R, T, V]`; labels: `[R, T]` (Int)
    /// - output: `logps [S]`, `counts [S]`, per-token outputs `[S, W]`
    pub fn forward_packed(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        segments: &Segments,
    ) -> error::Result<SequenceLogpsOutput> {
        segments.check_dims("logits", logits.dims())?;
        let mask = segments.label_mask(self.shift, &logits.device());
        let rows = self.per_token().forward(logits, labels, Some(mask))?;
        self.unpack(rows, segments)
    }

    /// [`forward_packed`](Self::forward_packed) from hidden states and an LM head, as
    /// [`forward_linear`](Self::forward_linear): the `[R, T, V]` logits are never held.
    ///
    /// # Errors
    /// As [`forward_linear`](Self::forward_linear), and [`PreferenceError::Shape`] when the
    /// hidden states' `[R, T]` is not the segments'.
    ///
    /// # Shapes
    /// - hidden: `[R, T, H]`; head: as [`forward_linear`](Self::forward_linear); labels:
    ///   `[R, T]` (Int)
    /// - output: as [`forward_packed`](Self::forward_packed)
    pub fn forward_linear_packed(
        &self,
        hidden: Tensor<3>,
        head: impl Into<LmHead>,
        labels: Tensor<2, Int>,
        segments: &Segments,
    ) -> error::Result<SequenceLogpsOutput> {
        segments.check_dims("hidden", hidden.dims())?;
        let mask = segments.label_mask(self.shift, &hidden.device());
        let rows = self
            .per_token()
            .forward_linear(hidden, head, labels, Some(mask))?;
        self.unpack(rows, segments)
    }

    /// This gatherer with per-token outputs on and no reduction of its own: the per-segment
    /// reduction happens after unpacking.
    fn per_token(&self) -> SequenceLogps {
        SequenceLogps {
            reduction: LogpReduction::Sum,
            return_token_logps: true,
            ..*self
        }
    }

    /// Row-layout per-token outputs `[R, T']` → segment layout `[S, W]`, then reduced.
    fn unpack(
        &self,
        rows: SequenceLogpsOutput,
        segments: &Segments,
    ) -> error::Result<SequenceLogpsOutput> {
        let token_logps = rows.token_logps.ok_or(PreferenceError::MissingInput {
            loss: "packed log-probs",
            arg: "token_logps",
            why: "the row pass must return per-token log-probs to unpack them",
        })?;
        let device = token_logps.device();
        let (index, width) = segments.token_index(self.shift, &device);
        let gather = |values: Tensor<2>| -> Tensor<2> {
            let flat = values.flatten::<1>(0, 1);
            let padded = Tensor::cat(vec![flat, Tensor::<1>::zeros([1], &device)], 0);
            padded
                .select(0, index.clone())
                .reshape([segments.len(), width])
        };
        let gather_mask = |values: Tensor<2, Bool>| -> Tensor<2, Bool> {
            gather(values.float()).greater_elem(0.5)
        };
        let mut out = self.reduce(gather(token_logps), gather_mask(rows.valid));
        out.entropy = rows.entropy.map(gather);
        out.log_sum_sq_probs = rows.log_sum_sq_probs.map(gather);
        out.mean_logits = rows.mean_logits.map(gather);
        out.is_top1 = rows.is_top1.map(gather_mask);
        Ok(out)
    }
}
