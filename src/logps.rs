//! Sequence log-probabilities from language-model logits.
//!
//! Every preference loss starts here: the policy's (and reference's) log-probability of each
//! response, `log π(y|x) = Σ_t log softmax(z_t)[y_t]` over the response's valid tokens.

use burn::config::Config;
use burn::tensor::{Bool, DType, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::check;
use crate::error::{self, PreferenceError};
use crate::fused;

mod packed;

/// How the token log-probs of one sequence are reduced to one number, `n` valid tokens.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum LogpReduction {
    /// `S = Σ_t ℓ_t`: the DPO and IPO papers, OpenRLHF.
    Sum,
    /// `S / n`: TRL's IPO, SimPO-style length normalisation.
    Mean,
    /// `S / n^α`: RRHF's length penalty (`α = 1` is `Mean`, `α = 0` is `Sum`).
    LengthPower(f64),
}

/// Configuration of [`SequenceLogps`]; [`init`](Self::init) validates it.
#[derive(Config, Debug)]
pub struct SequenceLogpsConfig {
    /// Causal shift: logits at position `t` predict the label at `t + 1`, so
    /// `logits[:, :T-1]` is paired with `labels[:, 1:]`, as in TRL and Hugging Face models.
    /// Default: `true`.
    #[config(default = true)]
    pub shift: bool,
    /// Label value that marks a position as ignored (prompt, padding). Default: `-100`, as in
    /// PyTorch and TRL. Labels outside `[0, V)` are ignored as well and never used as indices.
    #[config(default = -100)]
    pub ignore_index: i64,
    /// Reduction over the valid tokens of each sequence. Default: [`LogpReduction::Sum`].
    #[config(default = "LogpReduction::Sum")]
    pub reduction: LogpReduction,
    /// Also return the per-token log-probs `[B, T']` (`T' = T − 1` with shift). Default: `false`.
    #[config(default = false)]
    pub return_token_logps: bool,
    /// Also return the entropy of each predicted token's distribution `[B, T']`,
    /// `H = −Σ_v p_v log p_v` (differentiable), from the same pass over the logits.
    /// Default: `false`.
    #[config(default = false)]
    pub return_entropy: bool,
    /// Also return `log Σ_v p_v²` per token `[B, T']` (WPO's weights), detached, from the same
    /// pass. Default: `false`.
    #[config(default = false)]
    pub return_log_sum_sq_probs: bool,
    /// Also return the mean logit over the vocabulary per token `[B, T']` (TRL's
    /// `logits/chosen`), detached, from the same pass. Default: `false`.
    #[config(default = false)]
    pub return_mean_logits: bool,
    /// Also return whether each label is the argmax of its logits `[B, T']` (TRL's
    /// `mean_token_accuracy`; a tie with an earlier token does not count), from the same pass.
    /// Default: `false`.
    #[config(default = false)]
    pub return_is_top1: bool,
    /// Rows of hidden states per chunk in [`SequenceLogps::forward_linear`]: the `[chunk, V]`
    /// logits block (and its gradient) is the only vocabulary-sized buffer it holds. Larger
    /// chunks make bigger, faster matrix products; 256 rows at `V = 128 256` are 131 MB.
    /// Default: `256`.
    #[config(default = 256)]
    pub chunk_rows: usize,
}

impl SequenceLogpsConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] when `LengthPower(α)` has `α < 0` or a non-finite `α`,
    /// or when `chunk_rows` is 0.
    pub fn init(&self) -> error::Result<SequenceLogps> {
        if let LogpReduction::LengthPower(alpha) = self.reduction {
            check::param("alpha", alpha, ">= 0 and finite", |a| a >= 0.0)?;
        }
        check::param("chunk_rows", self.chunk_rows as f64, ">= 1", |c| c >= 1.0)?;
        Ok(SequenceLogps {
            shift: self.shift,
            ignore_index: self.ignore_index,
            reduction: self.reduction,
            return_token_logps: self.return_token_logps,
            chunk_rows: self.chunk_rows,
        })
    }
}

/// Gathers per-sequence log-probs from logits and labels.
///
/// ```text
/// ℓ_t = z_{t,y_t} − logsumexp_v z_{t,v}      (max-shifted, no log_softmax [B,T,V] built)
/// S   = Σ_{t valid} ℓ_t,   reduced by Sum | Mean (S/n) | LengthPower(α) (S/n^α)
/// ```
///
/// A token is valid when its label is neither `ignore_index` nor outside `[0, V)` and, if a
/// mask is given, the mask is 1 there. Invalid tokens contribute exactly 0 and get exactly 0
/// gradient; a row without valid tokens gives 0 (never NaN) and count 0. The gradient is
/// `∂ℓ_t/∂z_{t,v} = 1[v = y_t] − softmax(z_t)_v`.
///
/// Half-precision logits are cast to `f32` before reducing.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_preference::{SequenceLogpsConfig, LogpReduction};
///
/// let device = Device::default();
/// let logits = Tensor::<3>::zeros([1, 4, 10], &device); // uniform over V = 10
/// let labels = Tensor::<2, Int>::from_ints([[-100, 3, 7, -100]], &device);
/// let out = SequenceLogpsConfig::new().init()?.forward(logits, labels)?;
/// // Shifted: labels [3, 7, -100] → two valid tokens, each −ln 10.
/// let logp: f32 = out.logps.into_scalar();
/// assert!((logp + 2.0 * 10f32.ln()).abs() < 1e-5);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - logits: `[B, T, V]`
/// - labels: `[B, T]` (Int)
/// - mask (optional): `[B, T]` (Int, 0 or 1)
/// - output: `logps [B]`, `counts [B]`, `token_logps [B, T']` (`T' = T − 1` with shift)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequenceLogps {
    shift: bool,
    ignore_index: i64,
    reduction: LogpReduction,
    return_token_logps: bool,
    chunk_rows: usize,
}

/// What [`SequenceLogps`] returns.
#[derive(Debug, Clone)]
pub struct SequenceLogpsOutput {
    /// Reduced log-prob of each sequence `[B]`.
    pub logps: Tensor<1>,
    /// Number of valid tokens per sequence `[B]` (exact integers stored as floats).
    pub counts: Tensor<1>,
    /// Per-token log-probs `[B, T']`, 0 at invalid positions; only when requested.
    pub token_logps: Option<Tensor<2>>,
    /// The valid (counted) positions `[B, T']`.
    pub valid: Tensor<2, Bool>,
    /// Per-token entropy `[B, T']`, 0 at invalid positions; only when requested.
    pub entropy: Option<Tensor<2>>,
    /// Per-token `log Σ_v p_v²` `[B, T']`, 0 at invalid positions, detached; only when requested.
    pub log_sum_sq_probs: Option<Tensor<2>>,
    /// Per-token mean logit `[B, T']`, 0 at invalid positions, detached; only when requested.
    pub mean_logits: Option<Tensor<2>>,
    /// Per-token "the label is the argmax" `[B, T']`, false at invalid positions; only when
    /// requested.
    pub is_top1: Option<Tensor<2, Bool>>,
}

impl SequenceLogps {
    /// Sequence log-probs of `labels` under `logits`.
    ///
    /// # Errors
    /// See [`forward_masked`](Self::forward_masked).
    pub fn forward(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.run(logits, labels, None)
    }

    /// Sequence log-probs with an explicit 0/1 mask `[B, T]` (e.g. a loss mask); a position is
    /// valid only where the mask is 1 and the label is not ignored.
    ///
    /// # Errors
    /// - [`PreferenceError::Shape`] when a tensor has the wrong shape, incl. `T < 2` with shift.
    /// - [`PreferenceError::BatchMismatch`] when labels or mask disagree with the logits' `B`.
    /// - [`PreferenceError::Empty`] for `B = 0`, `T = 0` or `V = 0`.
    /// - [`PreferenceError::InvalidValue`] when the mask holds a value other than 0 or 1.
    pub fn forward_masked(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Tensor<2, Int>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.run(logits, labels, Some(mask))
    }

    /// The straightforward tensor-op path (max, gather, `exp(z − m)`, sum, log, and burn's
    /// autodiff of those), kept as the test oracle for the fused path that
    /// [`forward_masked`](Self::forward_masked) takes. Same contract and results.
    ///
    /// # Errors
    /// As [`forward_masked`](Self::forward_masked).
    #[doc(hidden)]
    pub fn forward_unfused(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<SequenceLogpsOutput> {
        let aligned = self.align(logits, labels, mask)?;
        let invalid = aligned.valid.clone().bool_not();
        let token_logps =
            token_logps_unfused(aligned.logits, aligned.safe_labels).mask_fill(invalid, 0.0);
        Ok(self.reduce(token_logps, aligned.valid))
    }

    /// Sequence log-probs of `labels` under the logits `hidden · weightᵀ` of a linear LM head,
    /// without ever holding the `[B, T, V]` logits: they are computed [`chunk_rows`] rows at a
    /// time, and the backward recomputes each chunk instead of storing it. Same results as
    /// [`forward`](Self::forward) on `hidden.matmul(weightᵀ)`, gradients for `hidden` and
    /// `weight` included; at `B·T = 2048`, `V = 128 256` this saves the 1 GB of logits and the
    /// 1 GB of their gradient for one extra `hidden · weightᵀ` product in the backward.
    ///
    /// [`chunk_rows`]: SequenceLogpsConfig::chunk_rows
    ///
    /// # Example
    /// ```
    /// use burn::tensor::{Device, Distribution, Int, Tensor};
    /// use burn_preference::SequenceLogpsConfig;
    ///
    /// let device = Device::default();
    /// let hidden = Tensor::<3>::random([2, 6, 16], Distribution::Normal(0.0, 1.0), &device);
    /// let lm_head = Tensor::<2>::zeros([100, 16], &device); // [V, H]: uniform over V = 100
    /// let labels = Tensor::<2, Int>::from_ints(
    ///     [[-100, -100, 5, 9, 2, 7], [-100, 1, 2, 3, 4, -100]],
    ///     &device,
    /// );
    /// let gatherer = SequenceLogpsConfig::new().with_chunk_rows(4).init()?;
    /// let logps = gatherer.forward_linear(hidden, lm_head, labels)?.logps;
    /// // Shifted: 4 valid tokens in each row, each −ln 100.
    /// let expected = -4.0 * 100f32.ln();
    /// assert!(logps.to_data().iter::<f32>().all(|x| (x - expected).abs() < 1e-4));
    /// # Ok::<(), burn_preference::PreferenceError>(())
    /// ```
    ///
    /// # Shapes
    /// - hidden: `[B, T, H]`, the last hidden states
    /// - weight: `[V, H]`, the LM head (e.g. burn-nn `Linear`'s weight `[H, V]` transposed);
    ///   a head with a bias is not covered
    /// - labels: `[B, T]` (Int)
    ///
    /// # Errors
    /// As [`forward_masked`](Self::forward_masked) (with `hidden` for `logits`), and
    /// [`PreferenceError::Shape`] when `weight` is not `[V, H]`.
    pub fn forward_linear(
        &self,
        hidden: Tensor<3>,
        weight: Tensor<2>,
        labels: Tensor<2, Int>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.run_linear(hidden, weight, labels, None)
    }

    /// [`forward_linear`](Self::forward_linear) with an explicit 0/1 mask `[B, T]`.
    ///
    /// # Errors
    /// As [`forward_linear`](Self::forward_linear).
    pub fn forward_linear_masked(
        &self,
        hidden: Tensor<3>,
        weight: Tensor<2>,
        labels: Tensor<2, Int>,
        mask: Tensor<2, Int>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.run_linear(hidden, weight, labels, Some(mask))
    }

    fn run(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<SequenceLogpsOutput> {
        if !fused::supported(&logits.device()) {
            return self.forward_unfused(logits, labels, mask);
        }
        let [batch, time, vocab] = logits.dims();
        let (targets, valid) = self.row_targets("logits", logits.dims(), labels, mask)?;
        let rows = fused::token_logps(widen(logits).reshape([batch * time, vocab]), targets);
        Ok(self.reduce(self.unflatten(rows, batch, time), valid))
    }

    fn run_linear(
        &self,
        hidden: Tensor<3>,
        weight: Tensor<2>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<SequenceLogpsOutput> {
        let [batch, time, width] = hidden.dims();
        let [vocab, _] = weight.dims();
        check::shape("weight", weight.dims(), [None, Some(width)], "[V, H]")?;
        if !fused::supported(&hidden.device()) {
            let logits = hidden.matmul(weight.transpose().unsqueeze_dim::<3>(0));
            return self.forward_unfused(logits, labels, mask);
        }
        let dims = [batch, time, vocab];
        let (targets, valid) = self.row_targets("hidden", dims, labels, mask)?;
        let hidden = widen(hidden).reshape([batch * time, width]);
        let weight = widen(weight);
        // Only rows with a label need their logits: prompt and padding rows, often most of a
        // preference batch, are left out of the products (their log-prob is 0 either way).
        let kept: Vec<i64> = check::read_ints("labels", targets.clone())?
            .iter()
            .enumerate()
            .filter(|(_, label)| **label >= 0)
            .map(|(row, _)| row as i64)
            .collect();
        let rows = if kept.is_empty() || kept.len() == batch * time {
            fused::linear_token_logps(hidden, weight, targets, self.chunk_rows)
        } else {
            let device = hidden.device();
            let count = kept.len();
            let kept = Tensor::<1, Int>::from_data(TensorData::new(kept, [count]), &device);
            let logps = fused::linear_token_logps(
                hidden.select(0, kept.clone()),
                weight,
                targets.select(0, kept.clone()),
                self.chunk_rows,
            );
            Tensor::<1>::zeros([batch * time], &device).select_assign(
                0,
                kept,
                logps,
                IndexingUpdateOp::Add,
            )
        };
        Ok(self.reduce(self.unflatten(rows, batch, time), valid))
    }

    /// Validates the inputs and returns one label per row of the `[B·T, V]` logits, −1
    /// (outside `[0, V)`, which the fused ops skip) where no valid label is predicted, and
    /// the valid positions `[B, T']`. With the shift the last position predicts nothing; the
    /// unshifted rows stay contiguous, so the `[B·T, ·]` views of the inputs are free.
    fn row_targets(
        &self,
        arg: &'static str,
        [batch, time, vocab]: [usize; 3],
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<(Tensor<1, Int>, Tensor<2, Bool>)> {
        let (safe_labels, valid) = self.align_labels(arg, [batch, time, vocab], labels, mask)?;
        let mut targets = safe_labels.mask_fill(valid.clone().bool_not(), -1);
        if self.shift {
            let last = Tensor::<2, Int>::full([batch, 1], -1, &targets.device());
            targets = Tensor::cat(vec![targets, last], 1);
        }
        Ok((targets.reshape([batch * time]), valid))
    }

    /// `[B·T]` row log-probs back to `[B, T']`.
    fn unflatten(&self, rows: Tensor<1>, batch: usize, time: usize) -> Tensor<2> {
        let token_logps = rows.reshape([batch, time]);
        if self.shift {
            token_logps.slice([0..batch, 0..time - 1])
        } else {
            token_logps
        }
    }

    /// Per-sequence reduction of token log-probs that are already 0 at invalid positions.
    fn reduce(&self, token_logps: Tensor<2>, valid: Tensor<2, Bool>) -> SequenceLogpsOutput {
        let counts = valid.clone().float().sum_dim(1).squeeze_dim::<1>(1);
        let sums = token_logps.clone().sum_dim(1).squeeze_dim::<1>(1);
        let logps = match self.reduction {
            LogpReduction::Sum => sums,
            LogpReduction::Mean => sums.div(counts.clone().clamp_min(1.0)),
            LogpReduction::LengthPower(alpha) => {
                sums.div(counts.clone().clamp_min(1.0).powf_scalar(alpha))
            }
        };
        SequenceLogpsOutput {
            logps,
            counts,
            token_logps: self.return_token_logps.then_some(token_logps),
            valid,
            entropy: None,
            log_sum_sq_probs: None,
            mean_logits: None,
            is_top1: None,
        }
    }

    /// Drops the last position's logits when shifting (it predicts no label).
    pub(crate) fn shift_logits(&self, logits: Tensor<3>) -> Tensor<3> {
        let [batch, time, vocab] = logits.dims();
        if self.shift && time > 0 {
            logits.slice([0..batch, 0..time - 1, 0..vocab])
        } else {
            logits
        }
    }

    /// Validates the inputs, applies the causal shift and marks the valid positions.
    pub(crate) fn align(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<Aligned> {
        let (safe_labels, valid) = self.align_labels("logits", logits.dims(), labels, mask)?;
        Ok(Aligned {
            logits: self.shift_logits(logits),
            safe_labels,
            valid,
        })
    }

    /// Validates the inputs for logits of shape `dims` and returns the shifted labels with
    /// invalid entries set to 0 (a safe gather index), and the valid positions, both `[B, T']`.
    fn align_labels(
        &self,
        arg: &'static str,
        [batch, time, vocab]: [usize; 3],
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<(Tensor<2, Int>, Tensor<2, Bool>)> {
        check::non_empty(arg, batch)?;
        check::batch("labels", labels.dims()[0], arg, batch)?;
        check::shape("labels", labels.dims(), [Some(batch), Some(time)], "[B, T]")?;
        if time == 0 || vocab == 0 {
            return Err(PreferenceError::Empty {
                arg,
                detail: format!("need T >= 1 and V >= 1, got T = {time}, V = {vocab}"),
            });
        }
        if self.shift && time < 2 {
            return Err(PreferenceError::Shape {
                arg,
                expected: "T >= 2 when shift is on".to_string(),
                actual: vec![batch, time, vocab],
            });
        }
        if let Some(mask) = &mask {
            check::batch("mask", mask.dims()[0], arg, batch)?;
            check::shape("mask", mask.dims(), [Some(batch), Some(time)], "[B, T]")?;
            check_binary_mask(mask.clone())?;
        }

        let (labels, mask) = if self.shift {
            (
                labels.slice([0..batch, 1..time]),
                mask.map(|m| m.slice([0..batch, 1..time])),
            )
        } else {
            (labels, mask)
        };

        let mut valid = labels
            .clone()
            .not_equal_elem(self.ignore_index)
            .bool_and(labels.clone().greater_equal_elem(0))
            .bool_and(labels.clone().lower_elem(vocab as i64));
        if let Some(mask) = mask {
            valid = valid.bool_and(mask.equal_elem(1));
        }
        // Ignored labels are swapped for index 0 so that no gather reads out of bounds.
        let safe_labels = labels.mask_fill(valid.clone().bool_not(), 0);
        Ok((safe_labels, valid))
    }
}

/// Logits and labels after the causal shift, with the valid positions marked.
pub(crate) struct Aligned {
    /// `[B, T', V]`.
    pub(crate) logits: Tensor<3>,
    /// `[B, T']`, every entry a valid index into `V`.
    pub(crate) safe_labels: Tensor<2, Int>,
    /// `[B, T']`.
    pub(crate) valid: Tensor<2, Bool>,
}

/// Sequence log-probs with the defaults of [`SequenceLogpsConfig`] (shift on, `ignore_index`
/// −100) and the given reduction: `logits [B, T, V]`, `labels [B, T]` → `[B]`.
///
/// # Errors
/// As [`SequenceLogps::forward_masked`], and [`PreferenceError::OutOfRange`] for `α < 0`.
pub fn sequence_logps(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    reduction: LogpReduction,
) -> error::Result<Tensor<1>> {
    let out = SequenceLogpsConfig::new()
        .with_reduction(reduction)
        .init()?
        .forward(logits, labels)?;
    Ok(out.logps)
}

/// `ℓ = z_y − m − log Σ_v e^{z_v − m}` per position, `m = max_v z` (detached: the gradient
/// through `m` cancels exactly, so skipping it saves a pass and keeps `softmax` exact).
/// Builds a single `[B, T, V]` temporary, `e^{z − m}`. The oracle for [`fused::token_logps`].
fn token_logps_unfused(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<2> {
    let logits = widen(logits);
    let max = logits.clone().max_dim(2).detach();
    let picked = logits.clone().gather(2, labels.unsqueeze_dim::<3>(2));
    let log_sum_exp = logits.sub(max.clone()).exp().sum_dim(2).log();
    picked.sub(max).sub(log_sum_exp).squeeze_dim::<2>(2)
}

/// Half-precision logits are reduced in `f32`.
pub(crate) fn widen<const D: usize>(logits: Tensor<D>) -> Tensor<D> {
    match logits.dtype() {
        DType::F16 | DType::BF16 => logits.cast(FloatDType::F32),
        _ => logits,
    }
}

fn check_binary_mask(mask: Tensor<2, Int>) -> error::Result<()> {
    let off = mask
        .clone()
        .not_equal_elem(0)
        .bool_and(mask.clone().not_equal_elem(1))
        .any();
    if !check::read_flag("mask", off)? {
        return Ok(());
    }
    let values = check::read_ints("mask", mask)?;
    let found = values
        .iter()
        .find(|v| **v != 0 && **v != 1)
        .map_or_else(|| "a value other than 0 or 1".to_string(), i64::to_string);
    Err(PreferenceError::InvalidValue {
        arg: "mask",
        expected: "0 or 1",
        found,
    })
}
