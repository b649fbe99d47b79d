//! GRPO and its family (Shao et al. 2024, "DeepSeekMath"; DAPO, Dr. GRPO, GSPO, CISPO, SAPO,
//! LUSPO, VESPO): a clipped policy-gradient loss over sampled completions and their
//! group-relative advantages, TRL 1.16's `GRPOTrainer` loss, every `loss_type`.

use std::fmt;
use std::str::FromStr;

use burn::tensor::activation::sigmoid;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use super::formulas::policy::{
    MAX_LOG_RATIO, broadcast, clipped, gamma_weights, high_entropy_mask, per_sequence_mean,
};
use super::{LossOutput, PreferenceLoss};
use crate::batch::CompletionBatch;
use crate::check;
use crate::error::{PreferenceError, Result};
use crate::metrics::{Metric, Metrics};

/// The per-token objective and normaliser of [`GrpoLoss`] (TRL's `loss_type`). `r` is the
/// importance ratio `π/π_old` (per token, or per sequence with
/// [`ImportanceSamplingLevel::Sequence`]), `A` the advantage, `ε_l, ε_h` the clip range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLossType {
    /// `−min(r·A, clip(r, 1−ε_l, 1+ε_h)·A)`, each completion's token mean, then the mean over
    /// completions (the GRPO paper; biased towards short completions).
    Grpo,
    /// The clipped objective, the token mean over the batch.
    Bnpo,
    /// The clipped objective summed over tokens, divided by `N·max_completion_length` (Dr.
    /// GRPO: no length bias).
    DrGrpo,
    /// The clipped objective, the token mean over the optimiser step (DAPO). TRL's default.
    Dapo,
    /// `−sg(min(r, ε_h))·A·log π`, the token mean over the step (CISPO, MiniMax-M1: the clipped
    /// ratio only weighs the gradient, no token is dropped).
    Cispo,
    /// `−σ(τ(r − 1))·4/τ·A`, τ by the sign of `A`, each completion's token mean (SAPO: a soft
    /// gate instead of the hard clip).
    Sapo,
    /// The clipped objective summed over each completion's tokens, the mean over completions
    /// (LUSPO: length-unbiased sequence policy optimisation; use with
    /// [`ImportanceSamplingLevel::Sequence`]).
    Luspo,
    /// `−φ(w)·A·log π` with the gamma weight `φ(w) = e^{λ}·w^k·e^{−λw}` of the sequence ratio
    /// `w` (detached), the token mean over the step (VESPO).
    Vespo,
}

impl GrpoLossType {
    /// Every loss type, in TRL's order.
    pub const ALL: [GrpoLossType; 8] = [
        GrpoLossType::Grpo,
        GrpoLossType::Bnpo,
        GrpoLossType::DrGrpo,
        GrpoLossType::Dapo,
        GrpoLossType::Cispo,
        GrpoLossType::Sapo,
        GrpoLossType::Luspo,
        GrpoLossType::Vespo,
    ];

    /// TRL's string for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpoLossType::Grpo => "grpo",
            GrpoLossType::Bnpo => "bnpo",
            GrpoLossType::DrGrpo => "dr_grpo",
            GrpoLossType::Dapo => "dapo",
            GrpoLossType::Cispo => "cispo",
            GrpoLossType::Sapo => "sapo",
            GrpoLossType::Luspo => "luspo",
            GrpoLossType::Vespo => "vespo",
        }
    }
}

impl fmt::Display for GrpoLossType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GrpoLossType {
    type Err = PreferenceError;

    /// TRL's name, e.g. `"dr_grpo"`.
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| PreferenceError::InvalidValue {
                arg: "loss_type",
                expected: "one of grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo",
                found: format!("{s:?}"),
            })
    }
}

/// Where the importance ratio is taken (TRL's `importance_sampling_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSamplingLevel {
    /// `r_t = π(y_t)/π_old(y_t)` per token (GRPO). TRL's default.
    Token,
    /// `r = exp(mean_t log(π/π_old))`, one per completion (GSPO).
    Sequence,
}

trl_config! {
    /// Configuration of [`GrpoLoss`], keyed as TRL 1.16's `GRPOConfig` (the loss's keys;
    /// generation and reward keys belong to the trainer and to
    /// [`GrpoAdvantagesConfig`](crate::advantages::GrpoAdvantagesConfig)).
    pub struct GrpoConfig {
    /// The objective and normaliser. Default: [`GrpoLossType::Dapo`] (TRL's).
        loss_type / with_loss_type: GrpoLossType = GrpoLossType::Dapo,
    /// The KL coefficient of the k3 estimator `π_ref/π − log(π_ref/π) − 1` added to each
    /// token's loss; 0 needs no reference model. Default: `0.0`.
        beta / with_beta: f64 = 0.0,
    /// The lower clip `ε_l` (and the upper one unless `epsilon_high` is set). Default: `0.2`.
        epsilon / with_epsilon: f64 = 0.2,
    /// The upper clip `ε_h` (DAPO's clip-higher: `0.28`); CISPO's ratio cap. Default: `None`
    /// (= `epsilon`).
        epsilon_high / with_epsilon_high: Option<f64> = None,
    /// Two-sided clipping: the unclipped ratio is capped at `delta` too (INTELLECT-2);
    /// should exceed `1 + epsilon_high`. Default: `None`.
        delta / with_delta: Option<f64> = None,
    /// Token or sequence (GSPO) importance ratios. Default: [`ImportanceSamplingLevel::Token`].
        importance_sampling_level / with_importance_sampling_level: ImportanceSamplingLevel =
            ImportanceSamplingLevel::Token,
    /// SAPO's gate temperature for negative advantages. Default: `1.05`.
        sapo_temperature_neg / with_sapo_temperature_neg: f64 = 1.05,
    /// SAPO's gate temperature for positive advantages. Default: `1.0`.
        sapo_temperature_pos / with_sapo_temperature_pos: f64 = 1.0,
    /// VESPO's `k` for non-negative advantages. Default: `2.0`.
        vespo_k_pos / with_vespo_k_pos: f64 = 2.0,
    /// VESPO's `λ` for non-negative advantages. Default: `3.0`.
        vespo_lambda_pos / with_vespo_lambda_pos: f64 = 3.0,
    /// VESPO's `k` for negative advantages. Default: `3.0`.
        vespo_k_neg / with_vespo_k_neg: f64 = 3.0,
    /// VESPO's `λ` for negative advantages. Default: `2.0`.
        vespo_lambda_neg / with_vespo_lambda_neg: f64 = 2.0,
    /// `dr_grpo`'s constant normaliser: the generation length limit. Default: `512`.
        max_completion_length / with_max_completion_length: usize = 512,
    /// Keep the policy loss only on the tokens whose entropy is in this top share of the
    /// batch's (0.2: the 20 % most uncertain tokens); `1.0` keeps all. Needs the batch's
    /// entropies. Default: `1.0`.
        top_entropy_quantile / with_top_entropy_quantile: f64 = 1.0,
    /// Drop the completions with a negative advantage whose mean KL from the sampling policy
    /// exceeds this (DeepSeek-V3.2's off-policy sequence mask). Default: `None`.
        off_policy_mask_threshold / with_off_policy_mask_threshold: Option<f64> = None,
    /// Multiply the KL term by the importance ratio (not detached): the KL gradient becomes the
    /// unbiased reverse-KL gradient under off-policy samples (DeepSeek-V3.2); it changes the
    /// gradient whenever `beta > 0`, even where the ratio is 1. Default: `true` (TRL's).
        use_bias_correction_kl / with_use_bias_correction_kl: bool = true,
    /// Subtract `entropy_coef` × the mean token entropy (an exploration bonus). Needs the
    /// batch's entropies. Default: `0.0`.
        entropy_coef / with_entropy_coef: f64 = 0.0,
    /// Leave the completions the batch marks truncated out of the loss
    /// ([`CompletionBatch::with_truncated`]). Default: `false`.
        mask_truncated_completions / with_mask_truncated_completions: bool = false,
    /// Multiply each token's loss by the batch's importance-sampling correction, when it has
    /// one ([`CompletionBatch::with_importance_sampling_ratio`]). Default: `true`.
        vllm_importance_sampling_correction / with_vllm_importance_sampling_correction: bool = true,
    /// Check the batch's values (finite log-probs and advantages), reading them back to the
    /// host; `false` never reads a tensor back. Default: `true`.
        value_checks / with_value_checks: bool = true,
    }
}

impl GrpoConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] naming the key: `beta`, `epsilon`, `epsilon_high` not
    /// finite and `≥ 0` (`epsilon < 1`); `delta` not `> 1`; SAPO's temperatures not `> 0`;
    /// VESPO's keys not finite; `max_completion_length` 0; `top_entropy_quantile` outside
    /// `[0, 1]`; `off_policy_mask_threshold` or `entropy_coef` not finite.
    pub fn init(&self) -> Result<GrpoLoss> {
        check::param("beta", self.beta, ">= 0", |b| b >= 0.0)?;
        check::param("epsilon", self.epsilon, ">= 0 and < 1", |e| {
            (0.0..1.0).contains(&e)
        })?;
        let epsilon_high = self.epsilon_high.unwrap_or(self.epsilon);
        check::param("epsilon_high", epsilon_high, ">= 0", |e| e >= 0.0)?;
        if let Some(delta) = self.delta {
            check::param("delta", delta, "> 1", |d| d > 1.0)?;
        }
        check::param(
            "sapo_temperature_neg",
            self.sapo_temperature_neg,
            "> 0",
            |t| t > 0.0,
        )?;
        check::param(
            "sapo_temperature_pos",
            self.sapo_temperature_pos,
            "> 0",
            |t| t > 0.0,
        )?;
        for (name, value) in [
            ("vespo_k_pos", self.vespo_k_pos),
            ("vespo_lambda_pos", self.vespo_lambda_pos),
            ("vespo_k_neg", self.vespo_k_neg),
            ("vespo_lambda_neg", self.vespo_lambda_neg),
        ] {
            check::param(name, value, "finite", |_| true)?;
        }
        check::param(
            "max_completion_length",
            self.max_completion_length as f64,
            ">= 1",
            |m| m >= 1.0,
        )?;
        check::param(
            "top_entropy_quantile",
            self.top_entropy_quantile,
            "in [0, 1]",
            |q| (0.0..=1.0).contains(&q),
        )?;
        if let Some(threshold) = self.off_policy_mask_threshold {
            check::param("off_policy_mask_threshold", threshold, "finite", |_| true)?;
        }
        check::param("entropy_coef", self.entropy_coef, "finite", |_| true)?;
        Ok(GrpoLoss {
            config: self.clone(),
            epsilon_high,
        })
    }
}

/// The GRPO family's loss over a [`CompletionBatch`], as TRL 1.16's
/// `GRPOTrainer._compute_loss`.
///
/// Per token (`r` the importance ratio, `A` the advantage, `ε_l, ε_h` the clip range):
///
/// ```text
/// ℓ_t = −min(r·A, clip(r, 1−ε_l, 1+ε_h)·A)     (grpo, bnpo, dr_grpo, dapo, luspo)
///     · 1[kept by the off-policy and entropy masks] · ratio_is   (when present)
///     + β·(π_ref/π − log(π_ref/π) − 1)                           (β > 0)
/// ```
///
/// with CISPO, SAPO and VESPO replacing the first line (see [`GrpoLossType`]), then
/// normalised as the loss type says: per completion then over completions (`grpo`, `sapo`,
/// `luspo` with sums), over the batch's tokens (`bnpo`, `dapo`, `cispo`, `vespo`), or by
/// `N·max_completion_length` (`dr_grpo`); minus `entropy_coef` × the mean token entropy. With
/// [`StepTotals`](crate::batch::StepTotals) the completions and tokens are the step's: the
/// micro-batches' losses add up to the step's, the token-mean types (`dapo`, `cispo`, `vespo`,
/// `bnpo`) then being the token mean of the whole step — what TRL's `dapo` approximates with
/// its `num_items_in_batch`, and what its `bnpo` does not (TRL averages `bnpo`'s per-micro-batch
/// means). A completion without a counted token adds 0.
///
/// `losses [N]` are each completion's share of the loss, scaled so that their mean is the
/// loss (`loss = Σ v_i / D`, `losses_i = N·v_i / D`), the entropy bonus spread evenly.
///
/// Metrics under TRL's names: `kl` (β > 0), `entropy` (when the batch has entropies),
/// `clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean` (the clipped
/// types), `cispo_clip_ratio`, `vespo/phi_seq_mean`, `policy_loss` (with the entropy bonus,
/// without step totals) and `entropy_coef` (with the bonus). TRL's `clip_ratio/low_min` and `clip_ratio/high_max` are a minimum
/// and a maximum over completions, which no sum and count merge exactly across micro-batches:
/// they are not logged.
///
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use burn_preference::batch::CompletionBatch;
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let logps = Tensor::<2>::from_floats([[-0.5, -1.0], [-2.0, -0.1]], &device);
/// let mask = Tensor::<2, Bool>::from_bool([[true, true], [true, false]], &device);
/// let batch = CompletionBatch::new(logps, mask, Tensor::from_floats([1.0, -1.0], &device))?;
/// // Ratio 1 (no old log-probs): −A per token; dapo: the mean over the 3 tokens.
/// let out = GrpoConfig::new().init()?.forward(batch)?;
/// assert!((out.loss.into_scalar::<f32>() - (-1.0 - 1.0 + 1.0) / 3.0).abs() < 1e-6);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`CompletionBatch`] of `N` completions × `C` positions
/// - output: `loss [1]`, `losses [N]`
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoLoss {
    config: GrpoConfig,
    epsilon_high: f64,
}

impl PreferenceLoss for GrpoLoss {
    type Batch = CompletionBatch;

    fn forward(&self, batch: CompletionBatch) -> Result<LossOutput> {
        let c = &self.config;
        let [n, width] = batch.policy.dims();
        let mask = self.mask(&batch)?;
        if c.value_checks {
            check_values(&batch, mask.clone())?;
        }
        let maskf = mask.clone().float();
        let wide = |x: Tensor<2>| x.expand([n, width]);
        // Padding may hold anything (value checks read only the counted positions): 0 there,
        // or CISPO's and VESPO's `A·log π` would carry a NaN or ±inf into the masked sums.
        let policy = batch.policy.clone().mask_fill(mask.clone().bool_not(), 0.0);
        let advantages = batch.advantages.clone();
        // Masked positions carry no ratio: 0 there keeps exp() finite whatever `old` holds.
        let old = batch.old.clone().unwrap_or_else(|| policy.clone().detach());
        let log_ratio = policy
            .clone()
            .sub(old.clone())
            .mask_fill(mask.clone().bool_not(), 0.0);
        let log_weights = match c.importance_sampling_level {
            ImportanceSamplingLevel::Token => log_ratio.clone(),
            ImportanceSamplingLevel::Sequence => {
                per_sequence_mean(log_ratio.clone(), maskf.clone())
            }
        };
        let ratio = log_weights.clamp_max(MAX_LOG_RATIO).exp();

        let kl =
            if c.beta != 0.0 {
                let reference = batch.reference.clone().ok_or(PreferenceError::MissingInput {
                loss: "GRPO",
                arg: "reference",
                why: "beta > 0 adds the KL to the reference model: add its per-token log-probs \
                      with `CompletionBatch::with_reference`, or set beta to 0",
            })?;
                let gap = reference
                    .sub(policy.clone())
                    .mask_fill(mask.clone().bool_not(), 0.0);
                let kl = gap.clone().exp().sub(gap).sub_scalar(1.0);
                Some(match c.use_bias_correction_kl {
                    true => kl.mul(wide(ratio.clone())),
                    false => kl,
                })
            } else {
                None
            };

        let mut metrics = Metrics::new();
        let mut clipped_ratio = ratio.clone();
        let per_token = match c.loss_type {
            GrpoLossType::Cispo => {
                let capped = ratio.clone().clamp_max(self.epsilon_high).detach();
                wide(capped)
                    .mul(wide(advantages.clone()))
                    .mul(policy.clone())
                    .neg()
            }
            GrpoLossType::Sapo => {
                let positive = advantages.clone().greater_elem(0.0);
                let temperature = advantages
                    .clone()
                    .full_like(c.sapo_temperature_neg)
                    .mask_fill(positive, c.sapo_temperature_pos);
                let (ratio, temperature) = broadcast(ratio.clone(), temperature);
                let gate = sigmoid(temperature.clone().mul(ratio.sub_scalar(1.0)))
                    .mul_scalar(4.0)
                    .div(temperature);
                let (gate, advantages) = broadcast(gate, advantages.clone());
                wide(gate.mul(advantages).neg())
            }
            GrpoLossType::Vespo => {
                let phi = gamma_weights(
                    advantages.clone(),
                    log_ratio.clone().detach(),
                    maskf.clone(),
                    batch.importance_sampling_ratio.clone(),
                    [
                        c.vespo_k_pos,
                        c.vespo_lambda_pos,
                        c.vespo_k_neg,
                        c.vespo_lambda_neg,
                    ],
                );
                metrics = metrics.with("vespo/phi_seq_mean", shaped_mean(phi.clone(), &mask));
                wide(phi)
                    .mul(wide(advantages.clone()))
                    .mul(policy.clone())
                    .neg()
            }
            GrpoLossType::Grpo
            | GrpoLossType::Bnpo
            | GrpoLossType::DrGrpo
            | GrpoLossType::Dapo
            | GrpoLossType::Luspo => {
                let clipped = ratio
                    .clone()
                    .clamp(1.0 - c.epsilon, 1.0 + self.epsilon_high);
                if let Some(delta) = c.delta {
                    clipped_ratio = ratio.clone().clamp_max(delta);
                }
                let (unclipped, a) = broadcast(clipped_ratio.clone(), advantages.clone());
                let (clipped, _) = broadcast(clipped, advantages.clone());
                wide(unclipped.mul(a.clone()).min_pair(clipped.mul(a)).neg())
            }
        };
        let mut per_token = per_token;

        if let Some(threshold) = c.off_policy_mask_threshold {
            let sampling = batch.sampling.clone().unwrap_or(old);
            // Tokens the engine could not score (NaN) give no evidence.
            let drift = sampling.sub(policy.clone().detach());
            let drift = drift.clone().mask_fill(drift.is_nan(), 0.0);
            let mean_drift = per_sequence_mean(drift, maskf.clone());
            let keep = advantages.clone().greater_equal_elem(0.0).bool_or(
                mean_drift
                    .lower_equal_elem(threshold)
                    .expand(advantages.dims()),
            );
            per_token = per_token.mul(wide(keep.float()));
        }

        let entropy_mask = if c.top_entropy_quantile < 1.0 {
            let entropy = self.entropy(
                &batch,
                "top_entropy_quantile < 1 keeps the tokens of highest entropy",
            )?;
            let kept = high_entropy_mask(entropy, mask.clone(), 1.0 - c.top_entropy_quantile);
            per_token = per_token.mul(kept.clone().float());
            Some(kept)
        } else {
            None
        };

        if let Some(ratio) = &batch.importance_sampling_ratio
            && c.vllm_importance_sampling_correction
            && c.loss_type != GrpoLossType::Vespo
        {
            per_token = per_token.mul(wide(ratio.clone()));
        }
        if let Some(kl) = &kl {
            per_token = per_token.add(kl.clone().mul_scalar(c.beta));
        }

        // Σ over each completion's counted tokens.
        let sums = per_token.mul(maskf.clone()).sum_dim(1).reshape([n]);
        let counts = maskf.clone().sum_dim(1).reshape([n]);
        let step = batch.step;
        let (values, denominator) = match c.loss_type {
            GrpoLossType::Grpo | GrpoLossType::Sapo => {
                (sums.div(counts.clamp_min(1.0)), Denominator::Examples)
            }
            GrpoLossType::Luspo => (sums, Denominator::Examples),
            GrpoLossType::DrGrpo => (
                sums.div_scalar(c.max_completion_length as f64),
                Denominator::Examples,
            ),
            GrpoLossType::Bnpo | GrpoLossType::Dapo | GrpoLossType::Cispo | GrpoLossType::Vespo => {
                (sums, Denominator::Tokens)
            }
        };
        let device = values.device();
        let denominator = match (denominator, step) {
            (Denominator::Examples, Some(step)) => Tensor::full([1], step.examples, &device),
            (Denominator::Examples, None) => Tensor::full([1], n as f64, &device),
            (Denominator::Tokens, Some(step)) => Tensor::full([1], step.tokens.max(1.0), &device),
            (Denominator::Tokens, None) => maskf.clone().sum().clamp_min(1.0),
        };
        let mut loss = values.clone().sum().div(denominator.clone());
        let mut losses = values.mul_scalar(n as f64).div(denominator.expand([n]));

        if c.entropy_coef != 0.0 {
            let entropy = self.entropy(&batch, "entropy_coef != 0 adds the mean token entropy")?;
            let effective = match &entropy_mask {
                Some(kept) => kept.clone(),
                None => mask.clone(),
            };
            let count = match step {
                Some(step) => Tensor::full([1], step.tokens.max(1.0), &device),
                None => effective.clone().float().sum().clamp_min(1.0),
            };
            // Filled, not multiplied: a NaN at padding would survive `· 0`.
            let bonus = entropy
                .mask_fill(effective.bool_not(), 0.0)
                .sum()
                .div(count)
                .mul_scalar(c.entropy_coef);
            let one = || Tensor::ones([1], &device);
            if step.is_none() {
                metrics = metrics.with("policy_loss", Metric::new(loss.clone(), one()));
            }
            metrics = metrics.with(
                "entropy_coef",
                Metric::new(one().mul_scalar(c.entropy_coef), one()),
            );
            loss = loss.sub(bonus.clone());
            losses = losses.sub(bonus.expand([n]));
        }

        if let Some(kl) = kl {
            metrics = metrics.with("kl", Metric::masked_mean(kl, mask.clone()));
        }
        if let Some(entropy) = &batch.entropy {
            metrics = metrics.with(
                "entropy",
                Metric::masked_mean(entropy.clone(), mask.clone()),
            );
        }
        match c.loss_type {
            GrpoLossType::Grpo
            | GrpoLossType::Bnpo
            | GrpoLossType::DrGrpo
            | GrpoLossType::Dapo
            | GrpoLossType::Luspo => {
                let (r, a) = broadcast(clipped_ratio, advantages);
                let [low, high, region] = clipped(r, a, c.epsilon, self.epsilon_high);
                metrics = metrics
                    .with("clip_ratio/low_mean", shaped_mean(low.float(), &mask))
                    .with("clip_ratio/high_mean", shaped_mean(high.float(), &mask))
                    .with("clip_ratio/region_mean", shaped_mean(region.float(), &mask));
            }
            GrpoLossType::Cispo => {
                let (r, a) = broadcast(ratio, advantages);
                let clipped = r
                    .greater_elem(self.epsilon_high)
                    .bool_and(a.greater_elem(0.0));
                metrics = metrics.with("cispo_clip_ratio", shaped_mean(clipped.float(), &mask));
            }
            GrpoLossType::Sapo | GrpoLossType::Vespo => {}
        }
        Ok(LossOutput {
            loss,
            losses,
            metrics,
        })
    }
}

/// What a loss type's sum is divided by.
enum Denominator {
    /// The completions (of the batch, or of the step).
    Examples,
    /// The counted tokens (of the batch, or of the step).
    Tokens,
}

impl GrpoLoss {
    /// The completion mask, without the truncated completions when the config says so.
    fn mask(&self, batch: &CompletionBatch) -> Result<Tensor<2, Bool>> {
        if !self.config.mask_truncated_completions {
            return Ok(batch.mask.clone());
        }
        let truncated = batch
            .truncated
            .clone()
            .ok_or(PreferenceError::MissingInput {
                loss: "GRPO",
                arg: "truncated",
                why: "mask_truncated_completions leaves the truncated completions out: mark them \
                  with `CompletionBatch::with_truncated`, or turn the option off",
            })?;
        let [n, width] = batch.mask.dims();
        let kept = truncated.bool_not().reshape([n, 1]).expand([n, width]);
        Ok(batch.mask.clone().bool_and(kept))
    }

    /// The batch's entropies, which `why` needs.
    fn entropy(&self, batch: &CompletionBatch, why: &'static str) -> Result<Tensor<2>> {
        batch.entropy.clone().ok_or(PreferenceError::MissingInput {
            loss: "GRPO",
            arg: "entropy",
            why,
        })
    }
}

/// TRL's `global_masked_mean`: the mean over the counted tokens, or over the completions for
/// a per-completion (`[N, 1]`) value.
fn shaped_mean(values: Tensor<2>, mask: &Tensor<2, Bool>) -> Metric {
    if values.dims()[1] == 1 {
        Metric::mean(values)
    } else {
        Metric::masked_mean(values, mask.clone())
    }
}

/// With value checks: the counted log-probs and every advantage finite (NaN advantages are
/// the advantage function's to zero).
fn check_values(batch: &CompletionBatch, mask: Tensor<2, Bool>) -> Result<()> {
    let dims = batch.policy.dims();
    let counted = batch.policy.clone().mask_fill(mask.bool_not(), 0.0);
    check::all_finite("policy", &check::read_floats("policy", counted)?, &dims)?;
    let advantages = batch.advantages.clone();
    let adims = advantages.dims();
    check::all_finite(
        "advantages",
        &check::read_floats("advantages", advantages)?,
        &adims,
    )
}
