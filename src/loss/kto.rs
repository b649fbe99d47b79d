//! KTO (Ethayarajh et al. 2024) and APO-zero's unpaired form (D'Oosterlinck et al. 2024):
//! losses on *unpaired* examples, each a prompt with one completion labelled desirable or
//! undesirable, as TRL's `KTOTrainer`.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{LossOutput, PreferenceLoss};
use crate::batch::{StepTotals, UnpairedBatch};
use crate::check;
use crate::error::{self, PreferenceError};
use crate::metrics::{Metric, Metrics, trl};
use crate::numerics::sigmoid;

/// TRL's `KTOConfig.loss_type`; (de)serialises as TRL's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KtoLossType {
    /// `"kto"`: the prospect-theoretic loss against the reference point `z` (the batch's KL).
    Kto,
    /// `"apo_zero_unpaired"`: APO-zero without pairs: raise desirable, lower undesirable
    /// log-ratios, no reference point (no KL pairs needed).
    ApoZeroUnpaired,
}

impl KtoLossType {
    /// TRL's string for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            KtoLossType::Kto => "kto",
            KtoLossType::ApoZeroUnpaired => "apo_zero_unpaired",
        }
    }
}

impl fmt::Display for KtoLossType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KtoLossType {
    type Err = PreferenceError;

    fn from_str(s: &str) -> error::Result<Self> {
        match s {
            "kto" => Ok(KtoLossType::Kto),
            "apo_zero_unpaired" => Ok(KtoLossType::ApoZeroUnpaired),
            other => Err(PreferenceError::InvalidValue {
                arg: "loss_type",
                expected: "\"kto\" or \"apo_zero_unpaired\"",
                found: format!("{other:?}"),
            }),
        }
    }
}

trl_config! {
    /// Configuration of [`KtoLoss`], with TRL's `KTOConfig` key names and defaults.
    pub struct KtoConfig {
    /// β, in `[1e-8, 1e8]`. Default: `0.1`.
        beta / with_beta: f64 = 0.1,
    /// λ_D, the weight of desirable examples, finite and `≥ 0`. Default: `1.0`.
        desirable_weight / with_desirable_weight: f64 = 1.0,
    /// λ_U, the weight of undesirable examples, finite and `≥ 0`. Default: `1.0`.
        undesirable_weight / with_undesirable_weight: f64 = 1.0,
    /// The loss type. Default: [`KtoLossType::Kto`].
        loss_type / with_loss_type: KtoLossType = KtoLossType::Kto,
    /// Check the batch's values, reading them back to the host: labels 0 or 1, finite
    /// log-probs. `false` never reads a tensor back. Not a TRL key. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl KtoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] for `β ∉ [1e-8, 1e8]` or a negative or non-finite
    /// weight.
    pub fn init(&self) -> error::Result<KtoLoss> {
        check::kl_coefficient("beta", self.beta)?;
        check::param(
            "desirable_weight",
            self.desirable_weight,
            ">= 0 and finite",
            |w| w >= 0.0,
        )?;
        check::param(
            "undesirable_weight",
            self.undesirable_weight,
            ">= 0 and finite",
            |w| w >= 0.0,
        )?;
        Ok(KtoLoss {
            beta: self.beta,
            desirable_weight: self.desirable_weight,
            undesirable_weight: self.undesirable_weight,
            loss_type: self.loss_type,
            value_checks: self.value_checks,
        })
    }
}

/// KTO and `apo_zero_unpaired` on an [`UnpairedBatch`].
///
/// With `ℓ = log π(y|x) − log π_ref(y|x)` (summed log-probs) of each example:
///
/// ```text
/// z = max(0, mean_KL(log π(y'|x) − log π_ref(y'|x)))      detached; y' a mismatched completion
/// kto:                desirable λ_D·(1 − σ(β(ℓ − z))),  undesirable λ_U·(1 − σ(β(z − ℓ)))
/// apo_zero_unpaired:  desirable λ_D·(1 − σ(βℓ)),        undesirable λ_U·σ(βℓ)
/// loss = mean over the N examples of the weighted losses
/// ```
///
/// The mean is over examples, as TRL's `nanmean` of the concatenated weighted losses (the
/// weights scale, they do not renormalise). A batch of only desirable or only undesirable
/// examples, or a single example, is fine. `kto` needs the KL pairs
/// ([`UnpairedBatch::with_kl`]); `apo_zero_unpaired` ignores them and reports `kl = 0`.
///
/// Metrics: TRL's KTO names: `kl`; `rewards/chosen`, `logps/chosen` (desirable examples),
/// `rewards/rejected`, `logps/rejected` (undesirable ones), `rewards/margins` (when a step has
/// both); `entropy` and `logits/chosen|rejected` when the policy's gather carried per-token
/// `entropy` / `mean_logits`. TRL's `num_tokens` is a running count of the trainer's, not a
/// loss metric.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let labels = Tensor::<2, Int>::from_ints([[-100, 3, 4, 5], [-100, -100, 7, 8]], &device);
/// let logits = Tensor::<3>::random([2, 4, 16], Distribution::Default, &device);
/// let policy = SequenceLogpsConfig::new().init()?.forward(logits, labels, None)?;
/// let desirable = Tensor::<1, Int>::from_ints([1, 0], &device);
/// let batch = UnpairedBatch::from_output(policy, desirable)?
///     .with_reference(Tensor::from_floats([-8.0, -5.5], &device))?
///     .with_kl(Tensor::from_floats([-9.0, -6.0], &device), Tensor::from_floats([-9.5, -6.1], &device))?;
/// let out = KtoConfig::new().init()?.forward(batch)?;
/// assert!(out.loss.into_scalar::<f32>().is_finite());
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: an [`UnpairedBatch`] of `N` examples with a reference
/// - output: `loss [1]`, `losses [N]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoLoss {
    beta: f64,
    desirable_weight: f64,
    undesirable_weight: f64,
    loss_type: KtoLossType,
    value_checks: bool,
}

impl KtoLoss {
    /// The KL log-ratios `log π − log π_ref` of the batch's KL pairs as a sum and a count
    /// (detached): merge them across the micro-batches and devices of a step (add the sums and
    /// the counts, or all-reduce them), then give every micro-batch
    /// [`kto_reference_point`] of the merged statistic with
    /// [`UnpairedBatch::with_reference_point`], so that `z` is the step's, not each
    /// micro-batch's.
    ///
    /// # Errors
    /// [`PreferenceError::MissingInput`] without KL pairs.
    pub fn kl_statistic(&self, batch: &UnpairedBatch) -> error::Result<Metric> {
        let (policy, reference) = batch.kl.clone().ok_or(PreferenceError::MissingInput {
            loss: "KTO",
            arg: "KL pairs (UnpairedBatch::with_kl)",
            why: "the reference point z is the KL estimated on mismatched pairs",
        })?;
        Ok(Metric::mean(policy.sub(reference)))
    }
}

/// KTO's reference point `z = max(0, KL)` `[1]` from a (merged) [`KtoLoss::kl_statistic`].
pub fn kto_reference_point(kl: &Metric) -> Tensor<1> {
    kl.value().clamp_min(0.0).detach()
}

impl PreferenceLoss for KtoLoss {
    type Batch = UnpairedBatch;

    /// # Errors
    /// [`PreferenceError::MissingInput`] without a reference, or for `kto` without KL pairs;
    /// [`PreferenceError::InvalidValue`] for log-probs not gathered as sums; with
    /// `value_checks`, [`PreferenceError::InvalidValue`] for a label other than 0 or 1 and
    /// [`PreferenceError::NonFinite`] for a NaN/infinite log-prob.
    fn forward(&self, batch: UnpairedBatch) -> error::Result<LossOutput> {
        let ratios = batch.log_ratios("KTO")?;
        if self.value_checks {
            batch.check_values()?;
        }
        let device = ratios.device();
        let kl = match (self.loss_type, &batch.reference_point) {
            (KtoLossType::ApoZeroUnpaired, _) => Tensor::<1>::zeros([1], &device),
            (KtoLossType::Kto, Some(z)) => z.clone(),
            (KtoLossType::Kto, None) if batch.step.is_some() => {
                return Err(StepTotals::refuse(
                    "KTO",
                    "with step totals, the step's reference point: merge every micro-batch's \
                     `KtoLoss::kl_statistic` and give each `with_reference_point`",
                ));
            }
            (KtoLossType::Kto, None) => kto_reference_point(&self.kl_statistic(&batch)?),
        };
        let [n] = ratios.dims();
        let shifted = ratios
            .clone()
            .sub(kl.clone().expand([n]))
            .mul_scalar(self.beta);
        // Both branches are 1 − σ(±β(ℓ − z)): desirable wants ℓ above z, undesirable below.
        let desirable = sigmoid(shifted.clone().neg()).mul_scalar(self.desirable_weight);
        let undesirable = sigmoid(shifted).mul_scalar(self.undesirable_weight);
        let mask = batch.desirable_mask();
        let losses = undesirable.mask_where(mask.clone(), desirable);
        let rewards = ratios.detach().mul_scalar(self.beta);
        let metrics = Metrics::new()
            .with("kl", Metric::mean(kl))
            .merge(trl::unpaired(
                rewards,
                batch.policy.clone(),
                mask,
                batch.tokens.as_deref(),
            ));
        Ok(LossOutput::new(losses, None, batch.reduction(), metrics))
    }
}

/// One KL pair: a prompt followed by another example's completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlSequence {
    /// The prompt's tokens, then the mismatched completion's.
    pub input_ids: Vec<u32>,
    /// How many leading tokens are the prompt's; the rest are the completion (the tokens whose
    /// log-probs the KL estimate sums).
    pub prompt_len: usize,
}

impl KlSequence {
    /// `0` on the prompt, `1` on the completion, one per token (TRL's `KL_completion_mask`).
    pub fn completion_mask(&self) -> Vec<u8> {
        (0..self.input_ids.len())
            .map(|i| u8::from(i >= self.prompt_len))
            .collect()
    }
}

/// The mismatched (prompt, completion) pairs KTO estimates its reference point on, built as TRL
/// does: the completions are rotated by one within the batch, so example `i` gets the
/// completion of example `i − 1` and example 0 that of the last,
/// `(x₁, y_N), (x₂, y₁), …, (x_N, y_{N−1})`. The mismatched completions are then the same
/// set as the batch's own, just paired with other prompts. A batch of one pairs the prompt with
/// its own completion.
///
/// TRL rotates within each batch of `per_device_train_batch_size` examples of the dataset;
/// call this once per training batch, with that batch's examples.
///
/// ```
/// use burn_preference::loss::kl_pairs;
///
/// let prompts = vec![vec![1, 2], vec![3]];
/// let completions = vec![vec![10, 11], vec![12]];
/// let pairs = kl_pairs(&prompts, &completions)?;
/// assert_eq!(pairs[0].input_ids, vec![1, 2, 12]);
/// assert_eq!(pairs[1].input_ids, vec![3, 10, 11]);
/// assert_eq!(pairs[1].completion_mask(), vec![0, 1, 1]);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Errors
/// [`PreferenceError::Empty`] for no examples, [`PreferenceError::BatchMismatch`] when the
/// numbers of prompts and completions differ.
pub fn kl_pairs(prompts: &[Vec<u32>], completions: &[Vec<u32>]) -> error::Result<Vec<KlSequence>> {
    check::non_empty("prompts", prompts.len())?;
    check::batch("completions", completions.len(), "prompts", prompts.len())?;
    let n = prompts.len();
    Ok(prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let completion = &completions[(i + n - 1) % n];
            KlSequence {
                input_ids: prompt.iter().chain(completion).copied().collect(),
                prompt_len: prompt.len(),
            }
        })
        .collect())
}
