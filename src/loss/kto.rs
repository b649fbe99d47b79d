//! KTO (Ethayarajh et al. 2024) and APO-zero's unpaired form (D'Oosterlinck et al. 2024):
//! losses on *unpaired* examples, each a prompt with one completion labelled desirable or
//! undesirable, as TRL's `KTOTrainer`.

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::tensor::{Bool, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::cpo::mean_of;
use super::nll::token_logps_of;
use crate::check;
use crate::error::{self, PreferenceError};
use crate::logps::SequenceLogpsOutput;
use crate::numerics::sigmoid;

/// A batch of `N` unpaired examples: the policy's and the reference's summed completion
/// log-probs, a desirable (1) / undesirable (0) label per example and, for KTO, the log-probs of
/// the mismatched KL pairs (see [`kl_pairs`]).
///
/// Every log-prob here is a **sum** over completion tokens, as TRL's KTO uses: the policy's is
/// formed from its per-token log-probs (gather with `return_token_logps`), the reference's and
/// the KL pairs' are plain `[N]` tensors (e.g. precomputed), which the caller sums.
///
/// # Shapes
/// - policy: a [`SequenceLogpsOutput`] of `N` rows with `token_logps`; its optional
///   `entropy` and `mean_logits` give the `entropy` and `logits/*` metrics
/// - reference: `[N]`
/// - desirable: `[N]` (Int, 0 or 1)
/// - KL pairs (optional): policy `[M]`, reference `[M]` (usually `M = N`)
#[derive(Debug, Clone)]
pub struct UnpairedBatch {
    pub(crate) policy: Tensor<1>,
    pub(crate) reference: Tensor<1>,
    pub(crate) desirable: Vec<bool>,
    pub(crate) desirable_mask: Tensor<1, Bool>,
    pub(crate) kl: Option<(Tensor<1>, Tensor<1>)>,
    pub(crate) valid: Tensor<2, Bool>,
    pub(crate) entropy: Option<Tensor<2>>,
    pub(crate) mean_logits: Option<Tensor<2>>,
}

impl UnpairedBatch {
    /// A batch from the policy's gather, the reference's summed log-probs and the labels.
    ///
    /// # Errors
    /// - [`PreferenceError::MissingInput`] when `policy` has no `token_logps`.
    /// - [`PreferenceError::Empty`] for `N = 0`.
    /// - [`PreferenceError::BatchMismatch`] when `reference` or `desirable` has another `N`.
    /// - [`PreferenceError::DeviceMismatch`] when the tensors live on different devices.
    /// - [`PreferenceError::InvalidValue`] for a label other than 0 or 1.
    /// - [`PreferenceError::NonFinite`] for a NaN/infinite log-prob.
    pub fn new(
        policy: SequenceLogpsOutput,
        reference: Tensor<1>,
        desirable: Tensor<1, Int>,
    ) -> error::Result<Self> {
        let token = token_logps_of("KTO", "policy.token_logps", &policy)?;
        let [rows, _] = token.dims();
        check::non_empty("policy", rows)?;
        check::same_device(&[
            ("policy", token.device()),
            ("reference", reference.device()),
            ("desirable", desirable.device()),
        ])?;
        check::batch("reference", reference.dims()[0], "policy", rows)?;
        check::batch("desirable", desirable.dims()[0], "policy", rows)?;
        let labels = check::read_ints("desirable", desirable.clone())?;
        if let Some(bad) = labels.iter().find(|&&v| v != 0 && v != 1) {
            return Err(PreferenceError::InvalidValue {
                arg: "desirable",
                expected: "0 (undesirable) or 1 (desirable)",
                found: bad.to_string(),
            });
        }
        let sums = token.sum_dim(1).squeeze_dim::<1>(1);
        finite("policy logps", &sums)?;
        finite("reference", &reference)?;
        Ok(Self {
            policy: sums,
            reference: reference.detach(),
            desirable: labels.iter().map(|&v| v == 1).collect(),
            desirable_mask: desirable.equal_elem(1),
            kl: None,
            valid: policy.valid,
            entropy: policy.entropy,
            mean_logits: policy.mean_logits,
        })
    }

    /// Adds the summed log-probs of the KL pairs (each prompt with a mismatched completion,
    /// built by [`kl_pairs`]) under the policy and the reference. Both are detached: TRL
    /// computes them without gradient.
    ///
    /// # Errors
    /// [`PreferenceError::Empty`] for no pairs, [`PreferenceError::BatchMismatch`] when the
    /// two lengths differ, [`PreferenceError::DeviceMismatch`], and
    /// [`PreferenceError::NonFinite`] for a NaN/infinite log-prob.
    pub fn with_kl(self, policy_kl: Tensor<1>, reference_kl: Tensor<1>) -> error::Result<Self> {
        let [pairs] = policy_kl.dims();
        check::non_empty("policy_kl", pairs)?;
        check::same_device(&[
            ("policy", self.policy.device()),
            ("policy_kl", policy_kl.device()),
            ("reference_kl", reference_kl.device()),
        ])?;
        check::batch("reference_kl", reference_kl.dims()[0], "policy_kl", pairs)?;
        finite("policy_kl", &policy_kl)?;
        finite("reference_kl", &reference_kl)?;
        Ok(Self {
            kl: Some((policy_kl.detach(), reference_kl.detach())),
            ..self
        })
    }

    /// The number of examples `N`.
    pub fn len(&self) -> usize {
        self.desirable.len()
    }

    /// Always `false`: a batch has at least one example.
    pub fn is_empty(&self) -> bool {
        self.desirable.is_empty()
    }

    /// The policy-over-reference log-ratios `ℓ = log π − log π_ref` `[N]`.
    pub(crate) fn log_ratios(&self) -> Tensor<1> {
        self.policy.clone().sub(self.reference.clone())
    }

    /// `logps/*`, `rewards/*` (only for a side with examples), `rewards/margins` (only with
    /// both), `entropy` and `logits/*` (when the gather carried them), as TRL's KTO logs them.
    pub(crate) fn side_metrics(
        &self,
        rewards: &Tensor<1>,
    ) -> error::Result<Vec<(&'static str, f64)>> {
        let rewards = check::read_floats("rewards", rewards.clone())?;
        let logps = check::read_floats("policy logps", self.policy.clone().detach())?;
        let mut metrics = Vec::new();
        if let Some(entropy) = &self.entropy {
            metrics.push((
                "entropy",
                masked_mean(entropy, &self.valid, None)?.unwrap_or(0.0),
            ));
        }
        if let Some(mean_logits) = &self.mean_logits {
            for (name, side) in [("logits/chosen", true), ("logits/rejected", false)] {
                let rows = self.desirable_mask.clone();
                let rows = if side { rows } else { rows.bool_not() };
                if let Some(value) = masked_mean(mean_logits, &self.valid, Some(rows))? {
                    metrics.push((name, value));
                }
            }
        }
        let mut side_rewards = [None, None];
        for (slot, (side, rewards_name, logps_name)) in [
            (true, "rewards/chosen", "logps/chosen"),
            (false, "rewards/rejected", "logps/rejected"),
        ]
        .into_iter()
        .enumerate()
        {
            let pick = |values: &[f32]| -> Vec<f32> {
                values
                    .iter()
                    .zip(&self.desirable)
                    .filter(|(_, d)| **d == side)
                    .map(|(v, _)| *v)
                    .collect()
            };
            let picked = pick(&rewards);
            if picked.is_empty() {
                continue;
            }
            let mean = mean_of(picked);
            side_rewards[slot] = Some(mean);
            metrics.push((rewards_name, mean));
            metrics.push((logps_name, mean_of(pick(&logps))));
        }
        if let [Some(chosen), Some(rejected)] = side_rewards {
            metrics.push(("rewards/margins", chosen - rejected));
        }
        Ok(metrics)
    }
}

/// Rejects NaN and ±inf in a `[N]` tensor.
fn finite(arg: &'static str, values: &Tensor<1>) -> error::Result<()> {
    let read = check::read_floats(arg, values.clone())?;
    check::all_finite(arg, &read, &[read.len()])
}

/// The mean of `per_token [N, T']` over the valid positions of the selected rows, `None`
/// without any.
fn masked_mean(
    per_token: &Tensor<2>,
    valid: &Tensor<2, Bool>,
    rows: Option<Tensor<1, Bool>>,
) -> error::Result<Option<f64>> {
    check::shape(
        "policy per-token extras",
        per_token.dims(),
        valid.dims().map(Some),
        "policy.valid's shape [N, T']",
    )?;
    let mut mask = valid.clone();
    if let Some(rows) = rows {
        let [n, t] = valid.dims();
        mask = mask.bool_and(rows.reshape([n, 1]).expand([n, t]));
    }
    let count = check::read_floats("valid", mask.clone().float().sum())?;
    let count = count.first().copied().unwrap_or(0.0);
    if count < 1.0 {
        return Ok(None);
    }
    let total = per_token
        .clone()
        .detach()
        .mask_fill(mask.bool_not(), 0.0)
        .sum();
    let total = mean_of(check::read_floats("policy per-token extras", total)?);
    Ok(Some(total / f64::from(count)))
}

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

/// Configuration of [`KtoLoss`], with TRL's `KTOConfig` key names and defaults.
#[derive(Config, Debug)]
pub struct KtoConfig {
    /// β, in `[1e-8, 1e8]`. Default: `0.1`.
    #[config(default = 0.1)]
    pub beta: f64,
    /// λ_D, the weight of desirable examples, finite and `≥ 0`. Default: `1.0`.
    #[config(default = 1.0)]
    pub desirable_weight: f64,
    /// λ_U, the weight of undesirable examples, finite and `≥ 0`. Default: `1.0`.
    #[config(default = 1.0)]
    pub undesirable_weight: f64,
    /// The loss type. Default: [`KtoLossType::Kto`].
    #[config(default = "KtoLossType::Kto")]
    pub loss_type: KtoLossType,
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
/// weights scale, they do not renormalise; NaN inputs are refused when the batch is built, so
/// no NaN is averaged away). A batch of only desirable or only undesirable examples, or a
/// single example, is fine. `kto` needs the KL pairs ([`UnpairedBatch::with_kl`]);
/// `apo_zero_unpaired` ignores them and reports `kl = 0`.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_preference::{KtoConfig, SequenceLogpsConfig, UnpairedBatch};
///
/// let device = Device::default();
/// let labels = Tensor::<2, Int>::from_ints([[-100, 3, 4, 5], [-100, -100, 7, 8]], &device);
/// let gatherer = SequenceLogpsConfig::new().with_return_token_logps(true).init()?;
/// let logits = Tensor::<3>::random([2, 4, 16], Distribution::Default, &device);
/// let policy = gatherer.forward(logits, labels)?;
/// let reference = Tensor::<1>::from_floats([-8.0, -5.5], &device);
/// let desirable = Tensor::<1, Int>::from_ints([1, 0], &device);
/// let batch = UnpairedBatch::new(policy, reference, desirable)?
///     .with_kl(Tensor::from_floats([-9.0, -6.0], &device), Tensor::from_floats([-9.5, -6.1], &device))?;
/// let out = KtoConfig::new().init()?.forward(batch)?;
/// assert!(out.loss.into_scalar::<f32>().is_finite());
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: an [`UnpairedBatch`] of `N` examples
/// - output: `loss [1]`, `losses [N]`, `rewards [N]`, `kl [1]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoLoss {
    beta: f64,
    desirable_weight: f64,
    undesirable_weight: f64,
    loss_type: KtoLossType,
}

/// What [`KtoLoss::forward`] returns.
#[derive(Debug, Clone)]
pub struct KtoOutput {
    /// The mean of `losses` `[1]`. Call `backward()` on it.
    pub loss: Tensor<1>,
    /// The weighted loss of each example `[N]`, in batch order.
    pub losses: Tensor<1>,
    /// `β·ℓ` of each example `[N]`, detached.
    pub rewards: Tensor<1>,
    /// The reference point `z` `[1]` (0 for `apo_zero_unpaired`), detached.
    pub kl: Tensor<1>,
    batch: UnpairedBatch,
}

impl KtoOutput {
    /// The metrics TRL's KTO logs for this batch, under its names: `kl`; `rewards/chosen`,
    /// `logps/chosen` (with desirable examples), `rewards/rejected`, `logps/rejected` (with
    /// undesirable ones), `rewards/margins` (with both); `entropy` and `logits/chosen|rejected`
    /// when the policy's gather carried per-token `entropy` / `mean_logits`. TRL's
    /// `num_tokens` is a running count of the trainer's, not a loss metric.
    ///
    /// # Errors
    /// [`PreferenceError::Read`] when a tensor cannot be read back from the device.
    pub fn metrics(&self) -> error::Result<Vec<(&'static str, f64)>> {
        let kl = mean_of(check::read_floats("kl", self.kl.clone())?);
        let mut metrics = vec![("kl", kl)];
        metrics.extend(self.batch.side_metrics(&self.rewards)?);
        Ok(metrics)
    }
}

impl KtoLoss {
    /// Computes the loss of an unpaired batch.
    ///
    /// # Errors
    /// [`PreferenceError::MissingInput`] for `kto` without KL pairs.
    pub fn forward(&self, batch: UnpairedBatch) -> error::Result<KtoOutput> {
        let ratios = batch.log_ratios();
        let device = ratios.device();
        let kl = match (self.loss_type, &batch.kl) {
            (KtoLossType::ApoZeroUnpaired, _) => Tensor::<1>::zeros([1], &device),
            (KtoLossType::Kto, Some((policy, reference))) => policy
                .clone()
                .sub(reference.clone())
                .mean()
                .clamp_min(0.0)
                .detach(),
            (KtoLossType::Kto, None) => {
                return Err(PreferenceError::MissingInput {
                    loss: "KTO",
                    arg: "KL pairs (UnpairedBatch::with_kl)",
                    why: "the reference point z is the KL estimated on mismatched pairs",
                });
            }
        };
        let [n] = ratios.dims();
        let shifted = ratios
            .clone()
            .sub(kl.clone().expand([n]))
            .mul_scalar(self.beta);
        // Both branches are 1 − σ(±β(ℓ − z)): desirable wants ℓ above z, undesirable below.
        let desirable = sigmoid(shifted.clone().neg()).mul_scalar(self.desirable_weight);
        let undesirable = sigmoid(shifted).mul_scalar(self.undesirable_weight);
        let losses = undesirable.mask_where(batch.desirable_mask.clone(), desirable);
        Ok(KtoOutput {
            loss: losses.clone().mean(),
            losses,
            rewards: ratios.detach().mul_scalar(self.beta),
            kl,
            batch,
        })
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
