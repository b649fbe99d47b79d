//! [`SequenceLogps`]: per-sequence log-probs from logits, or from hidden states and an LM
//! head, through the fused op.

use burn::tensor::{Bool, Int, Tensor};

use super::oracle::oracle_rows;
use super::targets::{Aligned, RowTargets};
use super::{LmHead, LogpReduction, widen};
use crate::check;
use crate::error;
use crate::fused::{self, HeadLayout, LinearSpec, Spec};

/// Gathers per-sequence log-probs from logits and labels.
///
/// ```text
/// z'_t = softcap·tanh(scale·z_t / softcap) / temperature     (identity by default)
/// ℓ_t  = z'_{t,y_t} − logsumexp_v z'_{t,v}                    (max-shifted, no [B,T,V] built)
/// S    = Σ_{t valid} ℓ_t,   reduced by Sum | Mean (S/n) | LengthPower(α) (S/n^α)
/// ```
///
/// A token is valid when its label is not `ignore_index` and, if a mask is given, the mask is
/// 1 there. A label outside `[0, V)` at such a position is an error
/// ([`value_checks`](super::SequenceLogpsConfig::value_checks), the default) or, leniently, an
/// invalid token too. Invalid tokens contribute exactly 0 and get exactly 0 gradient; a row
/// without valid tokens gives 0 (never NaN) and count 0. The gradient is
/// `∂ℓ_t/∂z'_{t,v} = 1[v = y_t] − softmax(z'_t)_v`, chained through the transform.
///
/// On request, the same read of each logits row also gives, per token, the entropy
/// `H = −Σ_v p_v log p_v` (differentiable: `∂H/∂z'_v = −p_v (log p_v + H)`), `log Σ_v p_v²`,
/// the mean logit `Σ_v z'_v / V` and whether the label is the first argmax — see
/// [`SequenceLogpsOutput`].
///
/// `f16` and `bf16` logits (or hidden states and head) are reduced in `f32` and the outputs
/// are `f32`; their gradient has their own dtype. On flex the fused kernels read half
/// precision as it is, block by block, with no `f32` copy of the logits; on wgpu the fallback
/// first casts them to an `f32` copy (NdArray cannot hold half tensors at all). On the
/// LM-head path the chunk products run in the inputs' dtype when hidden states, weight and
/// bias share one (mixed dtypes are widened to `f32` first).
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let logits = Tensor::<3>::zeros([1, 4, 10], &device); // uniform over V = 10
/// let labels = Tensor::<2, Int>::from_ints([[-100, 3, 7, -100]], &device);
/// let out = SequenceLogpsConfig::new()
///     .with_return_entropy(true)
///     .init()?
///     .forward(logits, labels, None)?;
/// // Shifted: labels [3, 7, -100] → two valid tokens, each −ln 10, each of entropy ln 10.
/// let logp: f32 = out.logps.into_scalar();
/// assert!((logp + 2.0 * 10f32.ln()).abs() < 1e-5);
/// let entropy = out.entropy.ok_or("entropy was requested")?.into_data();
/// let expected = [10f32.ln(), 10f32.ln(), 0.0];
/// assert!(entropy.iter::<f32>().zip(expected).all(|(h, e)| (h - e).abs() < 1e-5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Shapes
/// - logits: `[B, T, V]`
/// - labels: `[B, T]` (Int)
/// - mask (optional): `[B, T]` (Int, 0 or 1)
/// - output: `logps [B]`, `counts [B]`, per-token outputs `[B, T']` (`T' = T − 1` with shift)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequenceLogps {
    pub(crate) shift: bool,
    pub(crate) ignore_index: i64,
    pub(crate) reduction: LogpReduction,
    pub(crate) return_token_logps: bool,
    pub(crate) value_checks: bool,
    pub(crate) chunk_rows: usize,
    pub(crate) select_labelled_rows: bool,
    pub(crate) spec: Spec,
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
    /// Per-token entropy `[B, T']`, 0 at invalid positions, differentiable; only when
    /// requested.
    pub entropy: Option<Tensor<2>>,
    /// Per-token `log Σ_v p_v²` `[B, T']`, 0 at invalid positions, detached; only when requested.
    pub log_sum_sq_probs: Option<Tensor<2>>,
    /// Per-token mean logit `[B, T']` (of the transformed logits), 0 at invalid positions,
    /// detached; only when requested.
    pub mean_logits: Option<Tensor<2>>,
    /// Per-token "the label is the argmax" `[B, T']` (a tie with an earlier token does not
    /// count), false at invalid positions; only when requested.
    pub is_top1: Option<Tensor<2, Bool>>,
    /// The reduction `logps` were computed with (a batch built from this output knows whether
    /// its log-probs are sums, e.g. for RRHF, which applies its own length penalty).
    pub reduction: LogpReduction,
}

impl SequenceLogps {
    /// Sequence log-probs of `labels` under `logits`; with a 0/1 `mask` `[B, T]` (e.g. a loss
    /// mask) a position counts only where the mask is 1 and the label is not ignored.
    ///
    /// # Errors
    /// - [`PreferenceError::Shape`](crate::PreferenceError::Shape) when a tensor has the wrong shape, incl. `T < 2` with shift.
    /// - [`PreferenceError::BatchMismatch`](crate::PreferenceError::BatchMismatch) when labels or mask disagree with the logits' `B`.
    /// - [`PreferenceError::Empty`](crate::PreferenceError::Empty) for `B = 0`, `T = 0` or `V = 0`.
    /// - [`PreferenceError::InvalidValue`](crate::PreferenceError::InvalidValue), with
    ///   [`value_checks`](super::SequenceLogpsConfig::value_checks), when the mask holds a value other
    ///   than 0 or 1 or a counted label is outside `[0, V)`.
    /// - [`PreferenceError::DeviceMismatch`](crate::PreferenceError::DeviceMismatch) when the tensors live on different devices.
    ///
    pub fn forward(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<SequenceLogpsOutput> {
        if !fused::supported(&logits.device()) {
            return self.forward_unfused(logits, labels, mask);
        }
        self.same_devices("logits", logits.device(), &labels, mask.as_ref(), &[])?;
        let targets = self.row_targets("logits", logits.dims(), labels, mask)?;
        let [batch, time, vocab] = logits.dims();
        // Not widened: the fused op reads f16/bf16 as they are and returns f32.
        let rows = logits.reshape([batch * time, vocab]);
        let out = fused::token_logps(rows, targets.targets.clone(), self.spec);
        Ok(self.finish(out, targets))
    }

    /// Sequence log-probs of `labels` under the logits `hidden · head (+ bias)` of a linear LM
    /// head, without ever holding the `[B, T, V]` logits: they are computed [`chunk_rows`] rows
    /// at a time, and the backward recomputes them (in tiles of tokens × vocabulary of the
    /// same size) instead of storing them. Same results as
    /// [`forward`](Self::forward) on the materialised logits, gradients for `hidden`, the
    /// weight and the bias included; at `B·T = 2048`, `V = 128 256` this saves the 1 GB of
    /// logits and the 1 GB of their gradient for one extra `hidden · head` product in the
    /// backward. Rows without a valid label (prompt, padding) are left out of the products.
    ///
    /// `head` is an [`LmHead`] (either weight layout, optional bias), or a plain `[V, H]`
    /// weight tensor. The temperature, logit scale, softcap and extras of the configuration
    /// apply as on the logits path.
    ///
    /// [`chunk_rows`]: super::SequenceLogpsConfig::chunk_rows
    ///
    /// # Example
    /// ```
    /// use burn::tensor::{Device, Distribution, Int, Tensor};
    /// use burn_preference::logps::SequenceLogpsConfig;
    /// use burn_preference::logps::{HeadLayout, LmHead};
    ///
    /// let device = Device::default();
    /// let hidden = Tensor::<3>::random([2, 6, 16], Distribution::Normal(0.0, 1.0), &device);
    /// let lm_head = Tensor::<2>::zeros([100, 16], &device); // [V, H]: uniform over V = 100
    /// let labels = Tensor::<2, Int>::from_ints(
    ///     [[-100, -100, 5, 9, 2, 7], [-100, 1, 2, 3, 4, -100]],
    ///     &device,
    /// );
    /// let gatherer = SequenceLogpsConfig::new().with_chunk_rows(4).init()?;
    /// let logps = gatherer.forward_linear(hidden.clone(), lm_head, labels.clone(), None)?.logps;
    /// // Shifted: 4 valid tokens in each row, each −ln 100.
    /// let expected = -4.0 * 100f32.ln();
    /// assert!(logps.to_data().iter::<f32>().all(|x| (x - expected).abs() < 1e-4));
    ///
    /// // burn-nn `Linear`'s layout [H, V] with a bias, read as it is.
    /// let head = LmHead::new(Tensor::zeros([16, 100], &device), HeadLayout::HiddenVocab)
    ///     .with_bias(Tensor::zeros([100], &device));
    /// let logps = gatherer.forward_linear(hidden, head, labels, None)?.logps;
    /// assert!(logps.to_data().iter::<f32>().all(|x| (x - expected).abs() < 1e-4));
    /// # Ok::<(), burn_preference::PreferenceError>(())
    /// ```
    ///
    /// # Shapes
    /// - hidden: `[B, T, H]`, the last hidden states
    /// - head: weight `[V, H]` ([`HeadLayout::VocabHidden`]) or `[H, V]`
    ///   ([`HeadLayout::HiddenVocab`]), bias `[V]`
    /// - labels: `[B, T]` (Int)
    ///
    /// # Errors
    /// As [`forward`](Self::forward) (with `hidden` for `logits`), and
    /// [`PreferenceError::Shape`](crate::PreferenceError::Shape) when the weight's `H` is not the hidden states' or the bias
    /// is not `[V]`.
    pub fn forward_linear(
        &self,
        hidden: Tensor<3>,
        head: impl Into<LmHead>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.run_linear(hidden, head.into(), labels, mask)
    }

    fn run_linear(
        &self,
        hidden: Tensor<3>,
        head: LmHead,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<SequenceLogpsOutput> {
        let mut others = vec![("weight", head.weight.device())];
        others.extend(head.bias.as_ref().map(|b| ("bias", b.device())));
        self.same_devices("hidden", hidden.device(), &labels, mask.as_ref(), &others)?;
        let [batch, time, width] = hidden.dims();
        let (expected, layout) = match head.layout {
            HeadLayout::VocabHidden => ([None, Some(width)], "[V, H]"),
            HeadLayout::HiddenVocab => ([Some(width), None], "[H, V]"),
        };
        check::shape("weight", head.weight.dims(), expected, layout)?;
        let vocab = head.vocab_size();
        if let Some(bias) = &head.bias {
            check::shape("bias", bias.dims(), [Some(vocab)], "[V]")?;
        }
        let dims = [batch, time, vocab];
        let targets = self.row_targets_of("hidden", dims, hidden.dims().to_vec(), labels, mask)?;
        // One dtype for the products (half inputs stay half: the head is never copied to
        // f32); mixed dtypes are all widened to f32 first.
        let dtype = hidden.dtype();
        let (hidden, head) = if head.weight.dtype() == dtype
            && head.bias.as_ref().is_none_or(|b| b.dtype() == dtype)
        {
            (hidden, head)
        } else {
            let weight = widen(head.weight);
            let bias = head.bias.map(widen);
            (
                widen(hidden),
                LmHead {
                    weight,
                    bias,
                    ..head
                },
            )
        };
        if !fused::supported(&hidden.device()) {
            let logits = head.logits(hidden);
            let rows = widen(logits).reshape([batch * time, vocab]);
            let out = oracle_rows(rows, targets.targets.clone(), &self.spec);
            return Ok(self.finish(out, targets));
        }
        debug_assert_eq!(head.width(), width);
        let spec = LinearSpec {
            spec: self.spec,
            layout: head.layout,
            has_bias: head.bias.is_some(),
            chunk_rows: self.chunk_rows,
        };
        let out = fused::linear_token_logps(
            hidden.reshape([batch * time, width]),
            head.weight,
            head.bias,
            targets.targets.clone(),
            spec,
            self.select_labelled_rows,
        )?;
        Ok(self.finish(out, targets))
    }

    /// Every tensor of one call on the device of the first (`reference`).
    pub(crate) fn same_devices(
        &self,
        reference: &'static str,
        device: burn::tensor::Device,
        labels: &Tensor<2, Int>,
        mask: Option<&Tensor<2, Int>>,
        others: &[(&'static str, burn::tensor::Device)],
    ) -> error::Result<()> {
        let mut args = vec![(reference, device)];
        args.extend_from_slice(others);
        args.push(("labels", labels.device()));
        args.extend(mask.map(|m| ("mask", m.device())));
        check::same_device(&args)
    }

    /// The `[B·T, K]` row outputs as the per-sequence results and per-token extras.
    pub(crate) fn finish(&self, rows: Tensor<2>, targets: RowTargets) -> SequenceLogpsOutput {
        let columns = self.spec.extras.column_of();
        let column = |c: Option<usize>| c.map(|c| targets.unflatten(rows.clone(), c));
        let entropy = column(columns.entropy);
        let log_sum_sq_probs = column(columns.log_sum_sq).map(Tensor::detach);
        let mean_logits = column(columns.mean).map(Tensor::detach);
        let is_top1 = column(columns.top1).map(|t| t.greater_elem(0.5));
        let token_logps = targets.unflatten(rows.clone(), 0);
        SequenceLogpsOutput {
            entropy,
            log_sum_sq_probs,
            mean_logits,
            is_top1,
            ..self.reduce(token_logps, targets.valid)
        }
    }

    /// Per-sequence reduction of token log-probs that are already 0 at invalid positions.
    pub(crate) fn reduce(
        &self,
        token_logps: Tensor<2>,
        valid: Tensor<2, Bool>,
    ) -> SequenceLogpsOutput {
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
            reduction: self.reduction,
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

    /// Validates the inputs, applies the causal shift and marks the valid positions (for
    /// callers that need the shifted logits themselves, e.g. the exact token KL).
    pub(crate) fn align(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<Aligned> {
        let targets = self.row_targets("logits", logits.dims(), labels, mask)?;
        Ok(Aligned {
            logits: self.shift_logits(logits),
            valid: targets.valid,
        })
    }
}
