//! Advantages from rewards, for the group-relative policy losses
//! ([`GrpoConfig`](crate::loss::GrpoConfig), [`RlooConfig`](crate::loss::RlooConfig)): each
//! prompt's `K` sampled completions are scored by one or more reward functions, and a
//! completion's advantage is its reward against its group's baseline.
//!
//! - [`GrpoAdvantagesConfig`]: the group mean as baseline, scaled by the group's or the
//!   batch's standard deviation (`scale_rewards`), TRL 1.16's `GRPOTrainer`.
//! - [`RlooAdvantagesConfig`]: the leave-one-out mean of the other `K − 1` rewards, with the
//!   KL penalty in the reward, TRL 1.16's `RLOOTrainer`.
//!
//! Rewards come as `[N, F]`: `N = P·K` completions in prompt-major order (prompt 0's `K`
//! completions, then prompt 1's, …, the layout the collator calls
//! [`BatchLayout::PromptMajor`](crate::data::BatchLayout::PromptMajor)), one column per reward
//! function. A NaN reward means "this function does not score this completion" (TRL's
//! `None`); a completion no function scores is unscorable: it stays out of every baseline and
//! statistic and its advantage is 0. As in TRL, a group whose rewards are all equal gets
//! advantage 0 everywhere (its standard deviation is 0), and so does a group with one
//! scorable completion (its standard deviation is undefined). Everything stays on the device:
//! nothing is read back.

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::check;
use crate::error::{PreferenceError, Result};
use crate::metrics::{Metric, Metrics};

/// TRL's `1e-4` added to a standard deviation before dividing by it.
const STD_EPSILON: f64 = 1e-4;

/// How GRPO scales `reward − group mean` (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's standard deviation (GRPO's paper). TRL's default; `true` in a
    /// TRL config.
    Group,
    /// Divide by the standard deviation of the whole batch's rewards.
    Batch,
    /// Do not scale (Dr. GRPO's recommendation); `false` in a TRL config.
    None,
}

impl<'de> Deserialize<'de> for ScaleRewards {
    /// `"group"`, `"batch"`, `"none"`, or TRL's older booleans (`true` = group, `false` = none).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Name(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Flag(true) => Ok(Self::Group),
            Raw::Flag(false) => Ok(Self::None),
            Raw::Name(name) => match name.as_str() {
                "group" => Ok(Self::Group),
                "batch" => Ok(Self::Batch),
                "none" => Ok(Self::None),
                other => Err(serde::de::Error::custom(format!(
                    "scale_rewards must be \"group\", \"batch\" or \"none\", found {other:?}"
                ))),
            },
        }
    }
}

/// How GRPO combines several reward functions (TRL's `multi_objective_aggregation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultiObjectiveAggregation {
    /// Weighted sum of the rewards, then the group baseline and `scale_rewards`. TRL's default.
    SumThenNormalize,
    /// Each function's rewards normalised within their group first (`(r − mean)/(std + 1e-4)`),
    /// then the weighted sum normalised over the batch (GDPO); `scale_rewards` is not used.
    NormalizeThenSum,
}

trl_config! {
    /// Configuration of [`GrpoAdvantages`], keyed as TRL 1.16's `GRPOConfig`.
    pub struct GrpoAdvantagesConfig {
    /// `K`, the completions sampled per prompt. Default: `8`.
        num_generations / with_num_generations: usize = 8,
    /// How `reward − group mean` is scaled. Default: [`ScaleRewards::Group`].
        scale_rewards / with_scale_rewards: ScaleRewards = ScaleRewards::Group,
    /// One weight per reward function; `None` weighs each 1. Default: `None`.
        reward_weights / with_reward_weights: Option<Vec<f64>> = None,
    /// How several reward functions combine. Default:
    /// [`MultiObjectiveAggregation::SumThenNormalize`].
        multi_objective_aggregation / with_multi_objective_aggregation: MultiObjectiveAggregation =
            MultiObjectiveAggregation::SumThenNormalize,
    }
}

impl GrpoAdvantagesConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] when `num_generations` is 0 or a reward weight is not
    /// finite.
    pub fn init(&self) -> Result<GrpoAdvantages> {
        check_group(self.num_generations, &self.reward_weights)?;
        Ok(GrpoAdvantages {
            config: self.clone(),
        })
    }
}

/// GRPO's advantages: `A = (r − mean_group(r)) / (std + 1e-4)`, `r` the weighted sum of the
/// reward functions (see [`MultiObjectiveAggregation`] for the other order), `std` the
/// group's or the batch's (Bessel-corrected) standard deviation, or no scaling.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::advantages::GrpoAdvantagesConfig;
///
/// let device = Device::default();
/// // 2 prompts × K = 2 completions, one reward function.
/// let rewards = Tensor::<2>::from_floats([[1.0], [0.0], [0.5], [0.5]], &device);
/// let out = GrpoAdvantagesConfig::new().with_num_generations(2).init()?.forward(rewards)?;
/// let a: Vec<f32> = out.advantages.into_data().to_vec()?;
/// // Group 0: ±0.5 / (std 0.7071 + 1e-4); group 1: all equal, 0.
/// assert!((a[0] - 0.5 / (0.5f32.sqrt() + 1e-4)).abs() < 1e-5);
/// assert_eq!(a[2..], [0.0, 0.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Shapes
/// - input: rewards `[N, F]`, `N = P·K` prompt-major, `F` reward functions (NaN: not scored)
/// - output: advantages `[N]`, rewards `[N]`
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoAdvantages {
    config: GrpoAdvantagesConfig,
}

/// What [`GrpoAdvantages`] and [`RlooAdvantages`] return.
#[derive(Debug, Clone)]
pub struct AdvantagesOutput {
    /// Each completion's advantage `[N]` (0 for an unscorable one), detached.
    pub advantages: Tensor<1>,
    /// Each completion's weighted reward `[N]` (RLOO: after the KL penalty), NaN when
    /// unscorable.
    pub rewards: Tensor<1>,
    /// TRL's `reward` (the mean weighted reward of the scorable completions; RLOO's before its
    /// clip and KL penalty, as TRL logs it) and
    /// `frac_reward_zero_std` (the share of completions whose scaling deviation is 0); RLOO
    /// adds `kl` when it has a KL penalty.
    pub metrics: Metrics,
}

impl GrpoAdvantages {
    /// The advantages of `rewards [N, F]`.
    ///
    /// # Errors
    /// [`PreferenceError::Empty`] for `N = 0` or `F = 0`, [`PreferenceError::Shape`] when `N`
    /// is not a multiple of `num_generations` or `F` differs from the number of
    /// `reward_weights`.
    pub fn forward(&self, rewards: Tensor<2>) -> Result<AdvantagesOutput> {
        let k = self.config.num_generations;
        let weights = reward_weights(&rewards, k, &self.config.reward_weights)?;
        let [n, f] = rewards.dims();
        let unscorable = rewards.clone().is_nan().all_dim(1).reshape([n]);
        let (total, advantages, std) = match self.config.multi_objective_aggregation {
            MultiObjectiveAggregation::SumThenNormalize => {
                let total = weighted_sum(rewards.clone(), weights.clone(), unscorable.clone());
                let grouped = total.clone().reshape([n / k, k]);
                let mean = nan_mean(grouped.clone(), 1).expand([n / k, k]).reshape([n]);
                let std = match self.config.scale_rewards {
                    ScaleRewards::Batch if n > 1 => nan_std(total.clone().reshape([1, n]), 1)
                        .expand([1, n])
                        .reshape([n]),
                    ScaleRewards::Group | ScaleRewards::None if k > 1 => {
                        nan_std(grouped, 1).expand([n / k, k]).reshape([n])
                    }
                    _ => total.zeros_like(),
                };
                let centred = total.clone().sub(mean);
                let advantages = match self.config.scale_rewards {
                    ScaleRewards::None => centred,
                    _ => centred.div(std.clone().add_scalar(STD_EPSILON)),
                };
                (total, advantages, std)
            }
            MultiObjectiveAggregation::NormalizeThenSum => {
                // Each function normalised within its groups: [P, K, F] over K.
                let grouped = rewards.clone().reshape([n / k, k, f]);
                let mean = nan_mean(grouped.clone(), 1).expand([n / k, k, f]);
                let std = if k > 1 {
                    nan_std(grouped.clone(), 1).expand([n / k, k, f])
                } else {
                    grouped.zeros_like()
                };
                let normalised = grouped
                    .sub(mean)
                    .div(std.add_scalar(STD_EPSILON))
                    .reshape([n, f]);
                let total = weighted_sum(normalised, weights.clone(), unscorable.clone());
                let row = total.clone().reshape([1, n]);
                let std = if n > 1 {
                    nan_std(row.clone(), 1).expand([1, n]).reshape([n])
                } else {
                    total.zeros_like()
                };
                let mean = nan_mean(row, 1).expand([1, n]).reshape([n]);
                let advantages = total.sub(mean).div(std.clone().add_scalar(STD_EPSILON));
                // The logged reward is the weighted sum of the raw rewards, as TRL logs it.
                let raw = weighted_sum(rewards, weights, unscorable);
                (raw, advantages, std)
            }
        };
        Ok(output(total.clone(), total, advantages, std, None))
    }
}

trl_config! {
    /// Configuration of [`RlooAdvantages`], keyed as TRL 1.16's `RLOOConfig`.
    pub struct RlooAdvantagesConfig {
    /// `K`, the completions sampled per prompt. Default: `2` (TRL's).
        num_generations / with_num_generations: usize = 2,
    /// The KL coefficient: each reward becomes `r − β·Σ_t (log π_old − log π_ref)` over the
    /// completion's tokens. Default: `0.05`.
        beta / with_beta: f64 = 0.05,
    /// Standardise the advantages over the batch (`(A − mean)/(std + 1e-4)`). Default: `false`.
        normalize_advantages / with_normalize_advantages: bool = false,
    /// One weight per reward function; `None` weighs each 1. Default: `None`.
        reward_weights / with_reward_weights: Option<Vec<f64>> = None,
    /// Clamp the weighted reward to `[min, max]` before the KL penalty. Default: `None`.
        reward_clip_range / with_reward_clip_range: Option<(f64, f64)> = None,
    }
}

impl RlooAdvantagesConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] when `num_generations` is 0, `beta` is negative or not
    /// finite, a reward weight is not finite, or `reward_clip_range` is not an ordered pair
    /// of numbers.
    pub fn init(&self) -> Result<RlooAdvantages> {
        check_group(self.num_generations, &self.reward_weights)?;
        check::param("beta", self.beta, ">= 0", |b| b >= 0.0)?;
        if let Some((low, high)) = self.reward_clip_range {
            check::param("reward_clip_range.0", low, "a number", |_| true)?;
            check::param("reward_clip_range.1", high, ">= reward_clip_range.0", |h| {
                h >= low
            })?;
        }
        Ok(RlooAdvantages {
            config: self.clone(),
        })
    }
}

/// The KL penalty of RLOO's rewards: per completion, `Σ_t (log π_old − log π_ref)` over its
/// tokens, and how many tokens that is (for the logged `kl`, a token mean).
#[derive(Debug, Clone)]
pub struct RlooKl {
    /// `Σ_t (log π_old − log π_ref)` per completion `[N]`.
    pub sums: Tensor<1>,
    /// The completion's tokens `[N]`.
    pub tokens: Tensor<1>,
}

impl RlooKl {
    /// From per-token log-probs of the sampling policy and the reference `[N, C]` and the
    /// completion mask `[N, C]` (the first-order estimate `log π_old − log π_ref` of the
    /// RLOO paper; it can be negative).
    ///
    /// # Errors
    /// [`PreferenceError::Shape`] when the three shapes differ, [`PreferenceError::DeviceMismatch`].
    pub fn from_token_logps(
        old: Tensor<2>,
        reference: Tensor<2>,
        mask: Tensor<2, Bool>,
    ) -> Result<Self> {
        let dims = old.dims();
        check::same_device(&[
            ("old", old.device()),
            ("reference", reference.device()),
            ("mask", mask.device()),
        ])?;
        let expected = [Some(dims[0]), Some(dims[1])];
        check::shape("reference", reference.dims(), expected, "[N, C]")?;
        check::shape("mask", mask.dims(), expected, "[N, C]")?;
        let per_token = old
            .sub(reference)
            .detach()
            .mask_fill(mask.clone().bool_not(), 0.0);
        Ok(Self {
            sums: per_token.sum_dim(1).reshape([dims[0]]),
            tokens: mask.float().sum_dim(1).reshape([dims[0]]),
        })
    }
}

/// RLOO's advantages: `A_i = r_i − mean_{j ≠ i} r_j` over the scorable completions of the
/// group, `r` the weighted (and clipped) reward minus `β·KL`; optionally standardised over
/// the batch.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::advantages::RlooAdvantagesConfig;
///
/// let device = Device::default();
/// let rewards = Tensor::<2>::from_floats([[1.0], [0.0], [0.5]], &device);
/// let rloo = RlooAdvantagesConfig::new().with_num_generations(3).with_beta(0.0).init()?;
/// let a: Vec<f32> = rloo.forward(rewards, None)?.advantages.into_data().to_vec()?;
/// // 1 − (0 + 0.5)/2, 0 − (1 + 0.5)/2, 0.5 − (1 + 0)/2
/// assert_eq!(a, [0.75, -0.75, 0.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Shapes
/// - input: rewards `[N, F]` (`N = P·K` prompt-major), the KL penalty's `[N]` sums and tokens
/// - output: advantages `[N]`, rewards `[N]`
#[derive(Debug, Clone, PartialEq)]
pub struct RlooAdvantages {
    config: RlooAdvantagesConfig,
}

impl RlooAdvantages {
    /// The advantages of `rewards [N, F]`, with the KL penalty `kl` (needed when `beta > 0`;
    /// ignored when `beta = 0`).
    ///
    /// # Errors
    /// [`PreferenceError::Empty`], [`PreferenceError::Shape`] as
    /// [`GrpoAdvantages::forward`]; [`PreferenceError::MissingInput`] when `beta > 0` and `kl`
    /// is `None`; [`PreferenceError::BatchMismatch`] or [`PreferenceError::DeviceMismatch`]
    /// for a `kl` of another batch.
    pub fn forward(&self, rewards: Tensor<2>, kl: Option<RlooKl>) -> Result<AdvantagesOutput> {
        let k = self.config.num_generations;
        let weights = reward_weights(&rewards, k, &self.config.reward_weights)?;
        let [n, _] = rewards.dims();
        let unscorable = rewards.clone().is_nan().all_dim(1).reshape([n]);
        // TRL logs the weighted reward before the clip and the KL penalty.
        let raw = weighted_sum(rewards.clone(), weights, unscorable);
        let mut total = raw.clone();
        if let Some((low, high)) = self.config.reward_clip_range {
            // An unscorable reward stays NaN, whatever the backend's clamp does with NaN.
            let missing = total.clone().is_nan();
            total = total.clamp(low, high).mask_fill(missing, f32::NAN);
        }
        let mut kl_metric = None;
        if self.config.beta != 0.0 {
            let kl = kl.ok_or(PreferenceError::MissingInput {
                loss: "RLOO",
                arg: "kl",
                why: "beta > 0 subtracts beta times each completion's KL from its reward: pass \
                      `RlooKl::from_token_logps(old, reference, mask)`, or set beta to 0",
            })?;
            check::same_device(&[
                ("rewards", rewards.device()),
                ("kl.sums", kl.sums.device()),
                ("kl.tokens", kl.tokens.device()),
            ])?;
            check::batch("kl.sums", kl.sums.dims()[0], "rewards", n)?;
            check::batch("kl.tokens", kl.tokens.dims()[0], "rewards", n)?;
            total = total.sub(kl.sums.clone().mul_scalar(self.config.beta));
            kl_metric = Some(Metric::new(kl.sums.sum(), kl.tokens.sum()));
        }
        let grouped = total.clone().reshape([n / k, k]);
        let std = if k > 1 {
            nan_std(grouped.clone(), 1).expand([n / k, k]).reshape([n])
        } else {
            total.zeros_like()
        };
        let mut advantages = if k > 1 {
            // Leave one out among the scorable: (Σ_scorable − r_i) / (count − 1); a group
            // with one scorable completion gives 0/0, zeroed below with the unscorable.
            let missing = grouped.clone().is_nan();
            let counts = missing
                .clone()
                .bool_not()
                .float()
                .sum_dim(1)
                .expand([n / k, k]);
            let sums = grouped
                .clone()
                .mask_fill(missing, 0.0)
                .sum_dim(1)
                .expand([n / k, k]);
            let baseline = sums.sub(grouped.clone()).div(counts.sub_scalar(1.0));
            grouped.sub(baseline).reshape([n])
        } else {
            total.zeros_like()
        };
        if self.config.normalize_advantages {
            let row = advantages.clone().reshape([1, n]);
            let mean = nan_mean(row.clone(), 1).expand([1, n]).reshape([n]);
            let spread = nan_std(row, 1).expand([1, n]).reshape([n]);
            advantages = advantages.sub(mean).div(spread.add_scalar(STD_EPSILON));
        }
        Ok(output(total, raw, advantages, std, kl_metric))
    }
}

/// Refuses `num_generations = 0` and non-finite reward weights.
fn check_group(num_generations: usize, weights: &Option<Vec<f64>>) -> Result<()> {
    check::param("num_generations", num_generations as f64, ">= 1", |k| {
        k >= 1.0
    })?;
    for &w in weights.iter().flatten() {
        check::param("reward_weights", w, "finite", |_| true)?;
    }
    Ok(())
}

/// Checks `rewards [N, F]` against `K` and the weights, and returns the weights `[F]`.
fn reward_weights(rewards: &Tensor<2>, k: usize, weights: &Option<Vec<f64>>) -> Result<Tensor<1>> {
    let [n, f] = rewards.dims();
    check::non_empty("rewards", n)?;
    if f == 0 {
        return Err(PreferenceError::Empty {
            arg: "rewards",
            detail: "no reward function (F = 0 columns)".to_string(),
        });
    }
    if n % k != 0 {
        return Err(PreferenceError::Shape {
            arg: "rewards",
            expected: format!("[P·K, F] with K = num_generations = {k}"),
            actual: rewards.dims().to_vec(),
        });
    }
    if let Some(w) = weights {
        check::shape(
            "rewards",
            rewards.dims(),
            [None, Some(w.len())],
            "[N, F = reward_weights.len()]",
        )?;
    }
    let values: Vec<f32> = match weights {
        Some(w) => w.iter().map(|&x| x as f32).collect(),
        None => vec![1.0; f],
    };
    Ok(Tensor::from_floats(values.as_slice(), &rewards.device()))
}

/// `Σ_f w_f·r_f` over the scored functions (NaN counts 0), NaN where no function scores.
fn weighted_sum(rewards: Tensor<2>, weights: Tensor<1>, unscorable: Tensor<1, Bool>) -> Tensor<1> {
    let [n, f] = rewards.dims();
    let nan = rewards.clone().is_nan();
    let weighted = rewards
        .mask_fill(nan, 0.0)
        .mul(weights.reshape([1, f]).expand([n, f]));
    weighted
        .sum_dim(1)
        .reshape([n])
        .mask_fill(unscorable, f32::NAN)
}

/// The mean over `dim` of the non-NaN entries (NaN when there are none), keeping the dim.
fn nan_mean<const D: usize>(values: Tensor<D>, dim: usize) -> Tensor<D> {
    let nan = values.clone().is_nan();
    let count = nan.clone().bool_not().float().sum_dim(dim);
    values.mask_fill(nan, 0.0).sum_dim(dim).div(count)
}

/// The Bessel-corrected standard deviation over `dim` of the non-NaN entries (NaN with fewer
/// than two), keeping the dim: TRL's `nanstd`.
fn nan_std<const D: usize>(values: Tensor<D>, dim: usize) -> Tensor<D> {
    let nan = values.clone().is_nan();
    let count = nan.clone().bool_not().float().sum_dim(dim);
    let mean = nan_mean(values.clone(), dim);
    let dims = values.dims();
    let squares = values
        .sub(mean.expand(dims))
        .powi_scalar(2)
        .mask_fill(nan, 0.0)
        .sum_dim(dim);
    // count − 1 ≤ 0 gives inf or NaN; TRL's NaN there.
    let too_few = count.clone().lower_equal_elem(1.0);
    squares
        .div(count.sub_scalar(1.0))
        .sqrt()
        .mask_fill(too_few, f32::NAN)
}

/// The output: NaN advantages (unscorable, undefined deviations) zeroed, TRL's metrics, the
/// `reward` metric the mean of `logged` (the weighted rewards as TRL logs them: RLOO's before
/// its clip and KL penalty) over the scorable completions.
fn output(
    rewards: Tensor<1>,
    logged: Tensor<1>,
    advantages: Tensor<1>,
    std: Tensor<1>,
    kl: Option<Metric>,
) -> AdvantagesOutput {
    let [n] = rewards.dims();
    let nan = advantages.clone().is_nan();
    let advantages = advantages.mask_fill(nan, 0.0).detach();
    let scored = logged.clone().is_nan().bool_not();
    let reward = Metric::new(
        logged.mask_fill(scored.clone().bool_not(), 0.0).sum(),
        scored.float().sum(),
    );
    // torch.isclose(std, 0): |std| ≤ 1e-8 (NaN is not close).
    let zero_std = std.abs().lower_equal_elem(1e-8).float().sum();
    let mut metrics = Metrics::new().with("reward", reward).with(
        "frac_reward_zero_std",
        Metric::new(zero_std, Tensor::full([1], n as f64, &rewards.device())),
    );
    if let Some(kl) = kl {
        metrics = metrics.with("kl", kl);
    }
    AdvantagesOutput {
        advantages,
        rewards: rewards.detach(),
        metrics,
    }
}
