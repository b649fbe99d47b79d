//! [`SequenceLogpsConfig`]: how token log-probs are gathered and reduced.

use burn::config::Config;

use super::SequenceLogps;
use crate::check;
use crate::error;
use crate::fused::{Extras, Spec, Transform};

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
    /// ignored as well with [`value_checks`](Self::value_checks) off; never used as indices.
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
    /// Check the values of the labels and the mask, reading a flag back to the host (a GPU
    /// step then waits for its queued work): a label that is neither `ignore_index` nor in
    /// `[0, V)` (at a position the mask, if any, keeps) is [`PreferenceError::InvalidValue`](crate::PreferenceError::InvalidValue)
    /// instead of silently not counting — such a label almost always means the tokenizer and
    /// the model disagree on the vocabulary — and so is a mask value other than 0 or 1.
    /// `false` reads nothing back and takes the lenient rule: such labels are invalid
    /// positions (they contribute 0 and get 0 gradient), a mask value other than 1 masks its
    /// position out. Default: `true`.
    #[config(default = true)]
    pub value_checks: bool,
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
    /// [`PreferenceError::OutOfRange`](crate::PreferenceError::OutOfRange) when `LengthPower(α)` has `α` outside `[0, 1e6]` or a
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
            value_checks: self.value_checks,
            chunk_rows: self.chunk_rows,
            select_labelled_rows: self.select_labelled_rows,
            spec: Spec { transform, extras },
        })
    }
}
