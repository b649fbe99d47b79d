//! Sequence log-probabilities from language-model logits.
//!
//! Every preference loss starts here: the policy's (and reference's) log-probability of each
//! response, `log π(y|x) = Σ_t log softmax(z_t)[y_t]` over the response's valid tokens.

use burn::config::Config;
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor};

use crate::check;
use crate::error::{self, PreferenceError};
use crate::fused::{self, Extras, LinearSpec, Spec, Transform};

pub use crate::fused::HeadLayout;

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
    /// Label value that marks a position as ignored (prompt, padding); within the `i32` range.
    /// Default: `-100`, as in PyTorch and TRL. Other labels outside `[0, V)` are an error, or
    /// ignored as well with [`strict_labels`](Self::strict_labels) off; never used as indices.
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
    /// Divide the logits by this temperature before the softmax (after scale and softcap, as
    /// TRL's sampling and fused head do). Default: `1.0`.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply the logits by this factor first (e.g. Cohere's `logit_scale`). Default: `1.0`.
    #[config(default = 1.0)]
    pub logit_scale: f64,
    /// Final-logit softcap `c` (Gemma 2's `final_logit_softcapping`): the scaled logits become
    /// `c·tanh(z / c)` before the temperature. Default: `None` (no softcap).
    #[config(default = "None")]
    pub final_logit_softcapping: Option<f64>,
    /// Report a label that is neither `ignore_index` nor in `[0, V)` (at a position the mask,
    /// if any, keeps) as [`PreferenceError::InvalidValue`] instead of silently not counting it:
    /// such a label almost always means the tokenizer and the model disagree on the vocabulary.
    /// The check costs one comparison over the `[B, T]` labels and one flag read.
    /// `false` keeps the lenient rule: such positions are invalid, contribute 0 and get 0
    /// gradient. Default: `true`.
    #[config(default = true)]
    pub strict_labels: bool,
    /// Rows of hidden states per chunk in [`SequenceLogps::forward_linear`]: the `[chunk, V]`
    /// logits block (and its gradient) is the only vocabulary-sized buffer its forward holds;
    /// the backward's tiles (up to 4096 rows × a block of the vocabulary) hold at most as many
    /// logits. Larger chunks make bigger, faster matrix products; 256 rows at `V = 128 256`
    /// are 131 MB. Default: `256`.
    #[config(default = 256)]
    pub chunk_rows: usize,
    /// In [`SequenceLogps::forward_linear`], leave the rows without a counted label (prompt,
    /// padding; often most of a preference batch) out of the head's matrix products. Choosing
    /// them reads the `[B, T]` row-targets back to the host once per call, which on a GPU waits
    /// for the queued work; `false` computes every row (their outputs are 0 either way) and
    /// never reads back. Default: `true`.
    #[config(default = true)]
    pub select_labelled_rows: bool,
}

impl SequenceLogpsConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] when `LengthPower(α)` has `α` outside `[0, 1e6]` or a
    /// non-finite `α`, `chunk_rows` is 0, `ignore_index` is outside the `i32` range (GPU
    /// backends store labels as `i32`), or `temperature`, `logit_scale` or
    /// `final_logit_softcapping` is not a positive number that `f32` holds with its inverse.
    pub fn init(&self) -> error::Result<SequenceLogps> {
        if let LogpReduction::LengthPower(alpha) = self.reduction {
            // Above ~128, n^α overflows f32 for every n ≥ 2 already (those rows reduce to 0),
            // so the bound loses nothing; it keeps α far below 2^63, where burn's `powf_scalar`
            // takes an integral exponent for an `i64` and panics.
            check::param("alpha", alpha, ">= 0 and <= 1e6", |a| {
                (0.0..=1e6).contains(&a)
            })?;
        }
        check::param("chunk_rows", self.chunk_rows as f64, ">= 1", |c| c >= 1.0)?;
        check::param(
            "ignore_index",
            self.ignore_index as f64,
            "within the i32 range",
            |i| (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&i),
        )?;
        let positive = |x: f64| x > 0.0 && (x as f32).is_normal() && ((1.0 / x) as f32).is_normal();
        let expected = "> 0, with it and its inverse finite in f32";
        check::param("temperature", self.temperature, expected, positive)?;
        check::param("logit_scale", self.logit_scale, expected, positive)?;
        if let Some(cap) = self.final_logit_softcapping {
            check::param("final_logit_softcapping", cap, expected, positive)?;
        }
        let transform = Transform {
            scale: self.logit_scale as f32,
            softcap: self.final_logit_softcapping.map(|c| c as f32),
            inv_temperature: (1.0 / self.temperature) as f32,
        };
        let extras = Extras {
            entropy: self.return_entropy,
            log_sum_sq: self.return_log_sum_sq_probs,
            mean: self.return_mean_logits,
            top1: self.return_is_top1,
        };
        Ok(SequenceLogps {
            shift: self.shift,
            ignore_index: self.ignore_index,
            reduction: self.reduction,
            return_token_logps: self.return_token_logps,
            strict_labels: self.strict_labels,
            chunk_rows: self.chunk_rows,
            select_labelled_rows: self.select_labelled_rows,
            spec: Spec { transform, extras },
        })
    }
}

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
/// ([`strict_labels`](SequenceLogpsConfig::strict_labels), the default) or, leniently, an
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
/// use burn_preference::{SequenceLogpsConfig, LogpReduction};
///
/// let device = Device::default();
/// let logits = Tensor::<3>::zeros([1, 4, 10], &device); // uniform over V = 10
/// let labels = Tensor::<2, Int>::from_ints([[-100, 3, 7, -100]], &device);
/// let out = SequenceLogpsConfig::new()
///     .with_return_entropy(true)
///     .init()?
///     .forward(logits, labels)?;
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
    shift: bool,
    ignore_index: i64,
    reduction: LogpReduction,
    return_token_logps: bool,
    strict_labels: bool,
    chunk_rows: usize,
    select_labelled_rows: bool,
    spec: Spec,
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

/// A linear LM head for [`SequenceLogps::forward_linear`]: the weight in either layout and an
/// optional bias. A plain `Tensor<2>` converts into a bias-free `[V, H]` head.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::logps::{HeadLayout, LmHead};
///
/// let device = Device::default();
/// // burn-nn `Linear::weight` is `[H, V]`: taken as it is, no transposed copy.
/// let weight = Tensor::<2>::zeros([16, 100], &device);
/// let head = LmHead::new(weight, HeadLayout::HiddenVocab).with_bias(Tensor::zeros([100], &device));
/// assert_eq!(head.vocab_size(), 100);
/// ```
#[derive(Debug, Clone)]
pub struct LmHead {
    weight: Tensor<2>,
    layout: HeadLayout,
    bias: Option<Tensor<1>>,
}

impl LmHead {
    /// A head with `weight` laid out as `layout` says (`[V, H]` or `[H, V]`), without a bias.
    pub fn new(weight: Tensor<2>, layout: HeadLayout) -> Self {
        Self {
            weight,
            layout,
            bias: None,
        }
    }

    /// The same head with a bias `[V]` added to its logits.
    pub fn with_bias(self, bias: Tensor<1>) -> Self {
        Self {
            bias: Some(bias),
            ..self
        }
    }

    /// `V`, from the weight's shape and layout.
    pub fn vocab_size(&self) -> usize {
        let [rows, columns] = self.weight.dims();
        match self.layout {
            HeadLayout::VocabHidden => rows,
            HeadLayout::HiddenVocab => columns,
        }
    }

    /// `H`, from the weight's shape and layout.
    fn width(&self) -> usize {
        let [rows, columns] = self.weight.dims();
        match self.layout {
            HeadLayout::VocabHidden => columns,
            HeadLayout::HiddenVocab => rows,
        }
    }

    /// The materialised logits `hidden · head + bias` `[B, T, V]`, for the tensor-op path.
    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let head = match self.layout {
            HeadLayout::VocabHidden => self.weight.clone().transpose(),
            HeadLayout::HiddenVocab => self.weight.clone(),
        };
        let logits = hidden.matmul(head.unsqueeze_dim::<3>(0));
        match &self.bias {
            Some(bias) => logits.add(bias.clone().unsqueeze_dims::<3>(&[0, 1])),
            None => logits,
        }
    }
}

impl From<Tensor<2>> for LmHead {
    /// A bias-free head `[V, H]`.
    fn from(weight: Tensor<2>) -> Self {
        Self::new(weight, HeadLayout::VocabHidden)
    }
}

/// The one form in which validated labels reach the fused op and its oracle: one row-target per
/// row of the `[B·T, V]` logits (the label, or [`fused::INVALID`] where no valid label is
/// predicted: ignored, masked, and the last position under the shift), and the valid positions
/// `[B, T']`. The unshifted rows stay contiguous, so `[B·T, ·]` views of the inputs are free.
pub(crate) struct RowTargets {
    /// `[B·T]`.
    pub(crate) targets: Tensor<1, Int>,
    /// `[B, T']`.
    pub(crate) valid: Tensor<2, Bool>,
    batch: usize,
    time: usize,
    shift: bool,
}

impl RowTargets {
    /// `[B·T, K]` row outputs back to `[B, T']` per column.
    fn unflatten(&self, rows: Tensor<2>, column: usize) -> Tensor<2> {
        let (batch, time) = (self.batch, self.time);
        let per_token = rows.narrow(1, column, 1).reshape([batch, time]);
        if self.shift {
            per_token.narrow(1, 0, time - 1)
        } else {
            per_token
        }
    }
}

/// Logits after the causal shift, with the valid positions marked.
pub(crate) struct Aligned {
    /// `[B, T', V]`.
    pub(crate) logits: Tensor<3>,
    /// `[B, T']`.
    pub(crate) valid: Tensor<2, Bool>,
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
    /// - [`PreferenceError::InvalidValue`] when the mask holds a value other than 0 or 1, or,
    ///   with [`strict_labels`](SequenceLogpsConfig::strict_labels), a counted label is outside
    ///   `[0, V)`.
    /// - [`PreferenceError::DeviceMismatch`] when the tensors live on different devices.
    pub fn forward_masked(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Tensor<2, Int>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.run(logits, labels, Some(mask))
    }

    /// The straightforward tensor-op path (transform, max, gather, `exp(z − m)`, sum, log, the
    /// extras from the full softmax, and burn's autodiff of those), kept as the test oracle for
    /// the fused path that [`forward_masked`](Self::forward_masked) takes. Same contract and
    /// results.
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
        self.same_devices("logits", logits.device(), &labels, mask.as_ref(), &[])?;
        let targets = self.row_targets("logits", logits.dims(), labels, mask)?;
        let [batch, time, vocab] = logits.dims();
        let rows = widen(logits).reshape([batch * time, vocab]);
        let out = oracle_rows(rows, targets.targets.clone(), &self.spec);
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
    /// [`chunk_rows`]: SequenceLogpsConfig::chunk_rows
    ///
    /// # Example
    /// ```
    /// use burn::tensor::{Device, Distribution, Int, Tensor};
    /// use burn_preference::SequenceLogpsConfig;
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
    /// let logps = gatherer.forward_linear(hidden.clone(), lm_head, labels.clone())?.logps;
    /// // Shifted: 4 valid tokens in each row, each −ln 100.
    /// let expected = -4.0 * 100f32.ln();
    /// assert!(logps.to_data().iter::<f32>().all(|x| (x - expected).abs() < 1e-4));
    ///
    /// // burn-nn `Linear`'s layout [H, V] with a bias, read as it is.
    /// let head = LmHead::new(Tensor::zeros([16, 100], &device), HeadLayout::HiddenVocab)
    ///     .with_bias(Tensor::zeros([100], &device));
    /// let logps = gatherer.forward_linear(hidden, head, labels)?.logps;
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
    /// As [`forward_masked`](Self::forward_masked) (with `hidden` for `logits`), and
    /// [`PreferenceError::Shape`] when the weight's `H` is not the hidden states' or the bias
    /// is not `[V]`.
    pub fn forward_linear(
        &self,
        hidden: Tensor<3>,
        head: impl Into<LmHead>,
        labels: Tensor<2, Int>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.run_linear(hidden, head.into(), labels, None)
    }

    /// [`forward_linear`](Self::forward_linear) with an explicit 0/1 mask `[B, T]`.
    ///
    /// # Errors
    /// As [`forward_linear`](Self::forward_linear).
    pub fn forward_linear_masked(
        &self,
        hidden: Tensor<3>,
        head: impl Into<LmHead>,
        labels: Tensor<2, Int>,
        mask: Tensor<2, Int>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.run_linear(hidden, head.into(), labels, Some(mask))
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
        self.same_devices("logits", logits.device(), &labels, mask.as_ref(), &[])?;
        let targets = self.row_targets("logits", logits.dims(), labels, mask)?;
        let [batch, time, vocab] = logits.dims();
        // Not widened: the fused op reads f16/bf16 as they are and returns f32.
        let rows = logits.reshape([batch * time, vocab]);
        let out = fused::token_logps(rows, targets.targets.clone(), self.spec);
        Ok(self.finish(out, targets))
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
    fn same_devices(
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
    fn finish(&self, rows: Tensor<2>, targets: RowTargets) -> SequenceLogpsOutput {
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

    /// [`row_targets_of`](Self::row_targets_of) for an argument of shape `dims`.
    fn row_targets(
        &self,
        arg: &'static str,
        dims: [usize; 3],
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<RowTargets> {
        self.row_targets_of(arg, dims, dims.to_vec(), labels, mask)
    }

    /// Validates the inputs for logits of shape `[B, T, V]` (`arg`'s own shape is `shape`, for
    /// messages) and builds the one row-target form.
    fn row_targets_of(
        &self,
        arg: &'static str,
        [batch, time, vocab]: [usize; 3],
        shape: Vec<usize>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<RowTargets> {
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
                actual: shape,
            });
        }
        if let Some(mask) = &mask {
            check::batch("mask", mask.dims()[0], arg, batch)?;
            check::shape("mask", mask.dims(), [Some(batch), Some(time)], "[B, T]")?;
            if check::value_checks() {
                check_binary_mask(mask.clone())?;
            }
        }
        let offset = usize::from(self.shift);
        let (labels, mask) = if self.shift {
            (
                labels.narrow(1, 1, time - 1),
                mask.map(|m| m.narrow(1, 1, time - 1)),
            )
        } else {
            (labels, mask)
        };
        let mut counted = labels.clone().not_equal_elem(self.ignore_index);
        if let Some(mask) = mask {
            counted = counted.bool_and(mask.equal_elem(1));
        }
        let in_vocab = labels
            .clone()
            .greater_equal_elem(0)
            .bool_and(labels.clone().lower_elem(vocab as i64));
        if self.strict_labels && check::value_checks() {
            let bad = counted.clone().bool_and(in_vocab.clone().bool_not());
            if check::read_flag("labels", bad.clone().any())? {
                return Err(self.bad_label(labels, bad, vocab, offset));
            }
        }
        let valid = counted.bool_and(in_vocab);
        let mut targets = labels.mask_fill(valid.clone().bool_not(), fused::INVALID);
        if self.shift {
            let last = Tensor::<2, Int>::full([batch, 1], fused::INVALID, &targets.device());
            targets = Tensor::cat(vec![targets, last], 1);
        }
        Ok(RowTargets {
            targets: targets.reshape([batch * time]),
            valid,
            batch,
            time,
            shift: self.shift,
        })
    }

    /// The error for the first counted label outside `[0, V)` (`bad` marks them).
    fn bad_label(
        &self,
        labels: Tensor<2, Int>,
        bad: Tensor<2, Bool>,
        vocab: usize,
        offset: usize,
    ) -> PreferenceError {
        let [_, steps] = labels.dims();
        let first = check::read_ints("labels", bad.int())
            .ok()
            .and_then(|flags| flags.iter().position(|&f| f != 0));
        let values = check::read_ints("labels", labels).unwrap_or_default();
        let found = match first.and_then(|i| values.get(i).map(|v| (i, v))) {
            Some((i, value)) => format!(
                "{value} at [{}, {}] (V = {vocab}, ignore_index = {})",
                i / steps,
                i % steps + offset,
                self.ignore_index
            ),
            None => format!("a label outside [0, {vocab})"),
        };
        PreferenceError::InvalidValue {
            arg: "labels",
            expected: "labels in [0, V) or ignore_index (strict_labels)",
            found,
        }
    }
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

/// The oracle for the fused op on `[N, V]` rows at row-targets `[N]`, written the textbook way
/// with tensor ops (burn's autodiff differentiates it): transform, `log_softmax` from a
/// detached max (the gradient through `m` cancels exactly), gather, and the extras from the full
/// softmax `p`. Builds several `[N, V]` temporaries. Returns `[N, K]`, 0 on invalid rows.
fn oracle_rows(logits: Tensor<2>, targets: Tensor<1, Int>, spec: &Spec) -> Tensor<2> {
    let [n, v] = logits.dims();
    let t = spec.transform;
    let mut z = logits.mul_scalar(t.scale);
    if let Some(cap) = t.softcap {
        z = z.div_scalar(cap).tanh().mul_scalar(cap);
    }
    let z = z.mul_scalar(t.inv_temperature);
    let invalid = targets
        .clone()
        .lower_elem(0)
        .bool_or(targets.clone().greater_equal_elem(v as i64));
    let safe = targets.mask_fill(invalid.clone(), 0).reshape([n, 1]);
    let max = z.clone().max_dim(1).detach();
    let shifted = z.clone().sub(max.clone());
    let log_p = shifted.clone().sub(shifted.exp().sum_dim(1).log());
    let mut columns = vec![log_p.clone().gather(1, safe.clone())];
    let p = log_p.clone().exp();
    if spec.extras.entropy {
        // 0 · log 0 = 0
        let terms = p
            .clone()
            .mul(log_p)
            .mask_fill(p.clone().equal_elem(0.0), 0.0);
        columns.push(terms.sum_dim(1).neg());
    }
    if spec.extras.log_sum_sq {
        columns.push(p.clone().mul(p).sum_dim(1).log());
    }
    if spec.extras.mean {
        columns.push(z.clone().mean_dim(1));
    }
    if spec.extras.top1 {
        let index = Tensor::<1, Int>::arange(0..v as i64, &z.device())
            .reshape([1, v])
            .expand([n, v]);
        let not_before = index.greater_equal(safe.clone().expand([n, v]));
        let before = z
            .clone()
            .mask_fill(not_before, f32::NEG_INFINITY)
            .max_dim(1);
        let picked = z.gather(1, safe);
        let top = picked
            .clone()
            .greater_equal(max)
            .bool_and(picked.greater(before));
        columns.push(top.float());
    }
    let k = columns.len();
    Tensor::cat(columns, 1).mask_fill(invalid.reshape([n, 1]).expand([n, k]), 0.0)
}

/// Half-precision logits as `f32`, for the tensor-op paths (the oracle, unsupported devices,
/// the exact token KL, mixed LM-head dtypes); the fused op reads half precision itself.
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
