//! [`DpoLoss`]: TRL's `DPOTrainer` loss — weighted loss types, f-divergence scores, WPO
//! weighting and LD-DPO — over a [`PairedBatch`].

use burn::tensor::{Bool, Tensor};

use super::{DpoConfig, DpoLossType};
use crate::batch::ranking::Ranking;
use crate::batch::{PairedBatch, StepTotals, pairs_of};
use crate::error::{self, PreferenceError};
use crate::loss::formulas::{anchored, aot, margin, nll, squared};
use crate::loss::{LossOutput, PreferenceLoss, TokenTerm};
use crate::metrics::trl;

/// TRL 1.16's `DPOTrainer` loss, built by [`DpoConfig::init`].
///
/// With `ℓ = log π − log π_ref` per response (sequence sums of token log-probs, LD-weighted
/// when `ld_alpha` is set), `s` the [f-divergence score](crate::loss::FDivergence) and `W_b` the WPO
/// weight of pair `b` (1 without `use_weighting`):
///
/// ```text
/// L_b = Σ_k w_k · L_k(b) · W_b          w_k = loss_weights (default 1)
/// L   = mean_b L_b                        (TRL's Σ_k w_k mean_b(L_k · W))
/// W_b = exp(mean_t[ℓ_t − log Σ_v p_v²])_chosen · exp(…)_rejected    (detached)
/// LD:   log π(y) = Σ_{t ≤ min(|yc|, |yr|)} ℓ_t + α·Σ_{t > min(|yc|, |yr|)} ℓ_t
/// ```
///
/// with the per-pair `L_k` of each [`DpoLossType`]. Metrics are TRL's: rewards `β·ℓ`,
/// sequence log-probs, and, when the batch carries them, the token-level `logits/*`, `entropy`
/// and `mean_token_accuracy`.
///
/// **Inputs.** `sft`, WPO and LD-DPO need per-token log-probs (build the batch with
/// [`PairedBatch::from_output`] from a gatherer with `return_token_logps`), WPO also
/// `log Σ_v p_v²` (`return_log_sum_sq_probs`), LD-DPO with a reference the reference's per-token
/// log-probs ([`PairedBatch::with_reference_output`]); `ipo` and `sigmoid_norm` need lengths
/// (there, or [`PairedBatch::with_lengths`]) and summed log-probs, which they divide by the
/// lengths themselves. A missing input is [`PreferenceError::MissingInput`]; log-probs gathered
/// as token means are [`PreferenceError::InvalidValue`] for them, never a second division.
///
/// **Beyond TRL.** The margin losses (`sigmoid`, `sigmoid_norm`, `hinge`, `ipo`, `exo_pair`,
/// `robust`, `discopop`) are functions of a pair's margin, so they also take ranked lists of
/// `K > 2` candidates (mean over ordered pairs, ties skipped) and soft labels `q`
/// (`q·L(z) + (1 − q)·L(−z)`; for `ipo` the target `(2q − 1)/(2β)`, as in ΨPO). The other
/// loss types read each response on its own or the whole batch, and refuse both.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::prelude::*;
///
/// let device = Device::default();
/// let policy = Tensor::<2>::from_floats([[-12.0, -14.0], [-30.5, -29.0]], &device);
/// let reference = Tensor::<2>::from_floats([[-13.0, -13.5], [-30.0, -29.5]], &device);
/// let batch = PairedBatch::new(policy)?.with_reference(reference)?;
/// let loss = DpoConfig::new().with_loss_type(DpoLossType::Hinge).init()?;
/// let out = loss.forward(batch)?;
/// // hinge: relu(1 − βΔ) with Δ = ℓc − ℓr = (1.5, −1) → mean(0.85, 1.1) = 0.975.
/// assert!((out.loss.into_scalar::<f32>() - 0.975).abs() < 1e-5);
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
///
/// # Shapes
/// - input: a [`PairedBatch`] of `B` prompts × `K` candidates (`K = 2` for the non-margin
///   loss types, WPO, LD-DPO and `sft`)
/// - output: `loss [1]`, `losses [B]`
#[derive(Debug, Clone, PartialEq)]
pub struct DpoLoss {
    config: DpoConfig,
    weights: Vec<f64>,
}

const NAME: &str = "DPO";

impl DpoLoss {
    pub(crate) fn new(config: DpoConfig, weights: Vec<f64>) -> Self {
        Self { config, weights }
    }

    /// The validated configuration.
    pub fn config(&self) -> &DpoConfig {
        &self.config
    }

    /// The weight of each loss type (`loss_weights`, or all 1).
    pub fn loss_weights(&self) -> &[f64] {
        &self.weights
    }

    /// Refuses ranked lists and soft labels for the loss types that are not margin losses.
    fn check_plain_pairs(&self, batch: &PairedBatch) -> error::Result<()> {
        let needs_pairs = self.config.loss_type.iter().find(|t| !t.is_margin_loss());
        let weighted = self.config.use_weighting || self.config.ld_alpha.is_some();
        let Some(reason) = needs_pairs
            .map(|t| t.as_str())
            .or(weighted.then_some("WPO / LD-DPO"))
        else {
            return Ok(());
        };
        batch.require_pairs(reason)?;
        if needs_pairs.is_some() && batch.soft_labels.is_some() {
            return Err(PreferenceError::InvalidValue {
                arg: "soft_labels",
                expected: "no soft labels with loss types that are not functions of the margin",
                found: format!("soft labels with {reason}"),
            });
        }
        Ok(())
    }

    /// Policy and reference sequence log-probs `[B, K]` as the losses see them (LD-weighted
    /// when `ld_alpha` is set); the reference is `None` when reference-free.
    fn policy_and_reference(
        &self,
        batch: &PairedBatch,
    ) -> error::Result<(Tensor<2>, Option<Tensor<2>>)> {
        let reference_free = self.config.reference_free;
        let Some(alpha) = self.config.ld_alpha else {
            let reference = batch.reference(NAME, reference_free)?;
            return Ok((batch.policy.clone(), reference));
        };
        let why = "LD-DPO (`ld_alpha`) splits each response's per-token log-probs: build the \
                   batch with `PairedBatch::from_output` from a gatherer with \
                   `return_token_logps`";
        let side = batch.policy_tokens("LD-DPO", why)?;
        let policy_tokens = side.token_logps("LD-DPO", why)?;
        let weights = ld_weights(&side.valid, alpha);
        let policy = pairs_of("policy", weighted_sum(policy_tokens, weights.clone()))?;
        if reference_free {
            return Ok((policy, None));
        }
        let reference_tokens = batch
            .reference_tokens
            .as_ref()
            .and_then(|r| r.token_logps.clone())
            .ok_or(PreferenceError::MissingInput {
                loss: "LD-DPO",
                arg: "reference token_logps",
                why: "LD-DPO splits the reference's per-token log-probs too: add them with \
                      `with_reference_output` (gathered with `return_token_logps`), or set \
                      `reference_free = true`",
            })?;
        crate::check::shape(
            "reference.token_logps",
            reference_tokens.dims(),
            side.valid.dims().map(Some),
            "the policy's [2B, T']",
        )?;
        let reference = pairs_of(
            "reference",
            weighted_sum(reference_tokens.detach(), weights),
        )?;
        Ok((policy, Some(reference)))
    }

    /// WPO's detached per-pair weights `[B]`.
    fn wpo_weights(&self, batch: &PairedBatch) -> error::Result<Tensor<1>> {
        let why = "WPO (`use_weighting`) weighs each pair by its per-token probabilities: build \
                   the batch with `PairedBatch::from_output` from a gatherer with \
                   `return_token_logps` and `return_log_sum_sq_probs`";
        let side = batch.policy_tokens("WPO", why)?;
        let missing = |arg| PreferenceError::MissingInput {
            loss: "WPO",
            arg,
            why,
        };
        let token_logps = side.token_logps.clone().ok_or(missing("token_logps"))?;
        let log_sum_sq = side
            .log_sum_sq_probs
            .clone()
            .ok_or(missing("log_sum_sq_probs"))?;
        let valid = side.valid.clone().float();
        let count = valid.clone().sum_dim(1).clamp_min(1.0);
        let aligned = token_logps.detach().sub(log_sum_sq.detach()).mul(valid);
        let [rows, _] = aligned.dims();
        let weights = aligned.sum_dim(1).div(count).exp().reshape([rows]);
        let (chosen, rejected) = columns(pairs_of("policy", weights)?);
        Ok(chosen.mul(rejected))
    }

    /// One loss type's per-prompt losses `[B]`.
    fn per_prompt(&self, loss_type: DpoLossType, inputs: &Inputs) -> error::Result<Tensor<1>> {
        let beta = self.config.beta;
        let eps = self.config.label_smoothing;
        let tau = self.config.discopop_tau;
        let margin_loss =
            |f: &dyn Fn(Tensor<3>) -> Tensor<3>| inputs.over_pairs(inputs.scores.clone(), beta, f);
        Ok(match loss_type {
            DpoLossType::Sigmoid => match &inputs.labels {
                Some(q) => {
                    let z = inputs
                        .ranking
                        .margins(inputs.scores.clone())
                        .mul_scalar(beta);
                    inputs
                        .ranking
                        .mean_over_pairs(margin::sigmoid_soft(z, q.clone()))
                }
                None => margin_loss(&|z| margin::sigmoid(z, 0.0)),
            },
            DpoLossType::Hinge => margin_loss(&margin::hinge),
            DpoLossType::Robust => margin_loss(&|z| margin::robust(z, eps)),
            DpoLossType::ExoPair => margin_loss(&|z| margin::exo_pair(z, eps)),
            DpoLossType::Discopop => margin_loss(&|z| margin::discopop(z, tau)),
            DpoLossType::SigmoidNorm => {
                let normalised = inputs.normalised(loss_type)?;
                match &inputs.labels {
                    Some(q) => {
                        let z = inputs.ranking.margins(normalised).mul_scalar(beta);
                        inputs
                            .ranking
                            .mean_over_pairs(margin::sigmoid_soft(z, q.clone()))
                    }
                    None => inputs.over_pairs(normalised, beta, &|z| margin::sigmoid(z, 0.0)),
                }
            }
            DpoLossType::Ipo => {
                let h = inputs.ranking.margins(inputs.normalised(loss_type)?);
                let pair = match &inputs.labels {
                    Some(q) => {
                        let target = q
                            .clone()
                            .mul_scalar(2.0)
                            .sub_scalar(1.0)
                            .div_scalar(2.0 * beta);
                        squared::ipo_soft(h, target)
                    }
                    None => squared::ipo(h, 0.5 / beta),
                };
                inputs.ranking.mean_over_pairs(pair)
            }
            DpoLossType::NcaPair => {
                let (zc, zr) = inputs.scaled_ratios(beta);
                anchored::nca_pair(zc, zr)
            }
            DpoLossType::BcoPair => {
                let (zc, zr) = inputs.scaled_ratios(beta);
                anchored::bco_pair(zc, zr)
            }
            DpoLossType::ApoZero => {
                let (zc, zr) = inputs.scaled_ratios(beta);
                anchored::apo_zero(zc, zr)
            }
            DpoLossType::ApoDown => {
                let (zc, zr) = inputs.scaled_ratios(beta);
                anchored::apo_down(zc, zr)
            }
            DpoLossType::SppoHard => {
                let (c, r) = columns(inputs.ratios.clone());
                squared::sppo_hard(c, r, beta)
            }
            DpoLossType::Aot => {
                let (c, r) = columns(inputs.policy.clone());
                let reference = inputs.reference.clone().map(columns);
                aot::aot(c, r, reference, beta, eps)
            }
            DpoLossType::AotUnpaired => {
                let (c, r) = columns(inputs.ratios.clone());
                aot::aot_unpaired(c, r, beta, eps)
            }
            DpoLossType::Sft => {
                // With WPO weights TRL weighs the batch's NLL, expanded to every pair.
                let term = sft_term(inputs.batch, 1.0)?;
                let nll = term.sum.div(term.count.clamp_min(1.0));
                Tensor::ones([inputs.batch.prompts()], &nll.device()).mul(nll)
            }
        })
    }
}

/// What every loss type reads, computed once per batch.
struct Inputs<'a> {
    batch: &'a PairedBatch,
    policy: Tensor<2>,
    reference: Option<Tensor<2>>,
    ratios: Tensor<2>,
    scores: Tensor<2>,
    ranking: Ranking,
    labels: Option<Tensor<3>>,
}

impl Inputs<'_> {
    /// The mean over each prompt's ordered pairs of `pair(β·(x_i − x_j))`, with soft labels
    /// as the expectation `q·L(z) + (1 − q)·L(−z)`.
    fn over_pairs(
        &self,
        values: Tensor<2>,
        beta: f64,
        pair: &dyn Fn(Tensor<3>) -> Tensor<3>,
    ) -> Tensor<1> {
        let z = self.ranking.margins(values).mul_scalar(beta);
        let per_pair = match &self.labels {
            None => pair(z),
            Some(q) => {
                let flipped = q.clone().neg().add_scalar(1.0);
                pair(z.clone())
                    .mul(q.clone())
                    .add(pair(z.neg()).mul(flipped))
            }
        };
        self.ranking.mean_over_pairs(per_pair)
    }

    /// TRL's length normalisation of `ipo` and `sigmoid_norm`: scores over token counts.
    fn normalised(&self, loss_type: DpoLossType) -> error::Result<Tensor<2>> {
        let name = loss_type.as_str();
        self.batch.require_sums(name)?;
        let lengths = self.batch.lengths(
            name,
            "TRL divides each response's score by its completion length: build the batch with \
             `PairedBatch::from_output` or add `with_lengths`",
        )?;
        Ok(self.scores.clone().div(lengths.clamp_min(1.0)))
    }

    /// `(β·ℓc, β·ℓr)` `[B]` each.
    fn scaled_ratios(&self, beta: f64) -> (Tensor<1>, Tensor<1>) {
        columns(self.ratios.clone().mul_scalar(beta))
    }
}

impl PreferenceLoss for DpoLoss {
    type Batch = PairedBatch;

    fn forward(&self, batch: PairedBatch) -> error::Result<LossOutput> {
        self.check_plain_pairs(&batch)?;
        if self.config.value_checks {
            batch.check_values()?;
        }
        let (policy, reference) = self.policy_and_reference(&batch)?;
        let ratios = match reference.clone() {
            Some(reference) => policy.clone().sub(reference),
            None => policy.clone(),
        };
        let scores = self
            .config
            .f_divergence_type
            .score(ratios.clone(), self.config.f_alpha_divergence_coef);
        let labels = batch.soft_labels.as_ref().map(|q| {
            let [prompts] = q.dims();
            q.clone().reshape([prompts, 1, 1])
        });
        let inputs = Inputs {
            batch: &batch,
            policy: policy.clone(),
            reference,
            ratios: ratios.clone(),
            scores,
            ranking: batch.ranking(),
            labels,
        };
        let wpo = if self.config.use_weighting {
            Some(self.wpo_weights(&batch)?)
        } else {
            None
        };
        let mut losses = Tensor::<1>::zeros([batch.prompts()], &batch.policy.device());
        let mut term = None;
        for (loss_type, weight) in self.config.loss_type.iter().zip(&self.weights) {
            if *loss_type == DpoLossType::Sft && wpo.is_none() {
                // A token mean of the whole batch, not a per-pair loss: kept apart so that a
                // step's micro-batches divide it by the step's tokens.
                term = Some(sft_term(&batch, *weight)?);
                continue;
            }
            if *loss_type == DpoLossType::Sft && batch.step.is_some() {
                return Err(StepTotals::refuse(
                    "`sft` with WPO",
                    "no step totals: WPO's weights times `sft`'s token mean is a product of two \
                     batch means, which no step total splits",
                ));
            }
            let sorts = matches!(loss_type, DpoLossType::Aot | DpoLossType::AotUnpaired);
            if sorts && batch.step.is_some() {
                return Err(StepTotals::refuse(
                    "`aot` / `aot_unpaired`",
                    "no step totals: AOT sorts the margins of the whole batch, which no step \
                     total splits; run each step as one batch",
                ));
            }
            let mut part = self.per_prompt(*loss_type, &inputs)?;
            if let Some(w) = &wpo {
                part = part.mul(w.clone());
            }
            losses = losses.add(part.mul_scalar(*weight));
        }
        let rewards = ratios.detach().mul_scalar(self.config.beta);
        let metrics = trl::paired_batch(&batch, rewards, policy, &inputs.ranking);
        Ok(LossOutput::new(losses, term, batch.reduction(), metrics))
    }
}

/// `sft`: the NLL of the chosen completions' tokens, weighted by `weight`.
fn sft_term(batch: &PairedBatch, weight: f64) -> error::Result<TokenTerm> {
    let why = "`sft` is the NLL of the chosen completions' tokens: build the batch with \
               `PairedBatch::from_output` from a gatherer with `return_token_logps`";
    let side = batch.policy_tokens("sft", why)?;
    let tokens = side.token_logps("sft", why)?;
    let rows = batch.prompts();
    let (term, _) = nll::term(
        tokens.narrow(0, 0, rows),
        side.valid.clone().narrow(0, 0, rows),
        weight,
    )?;
    Ok(term)
}

/// `[B, 2]` → the chosen and rejected columns `[B]`.
fn columns(values: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
    let [batch, _] = values.dims();
    (
        values.clone().narrow(1, 0, 1).reshape([batch]),
        values.narrow(1, 1, 1).reshape([batch]),
    )
}

/// LD-DPO's token weights `[2B, T']`: 1 on a response's first `min(|yc|, |yr|)` valid tokens
/// (the length it shares with its pair), `α` on the rest, 0 on invalid positions.
fn ld_weights(valid: &Tensor<2, Bool>, alpha: f64) -> Tensor<2> {
    let valid = valid.clone().float();
    let position = valid.clone().cumsum(1);
    let half = valid.dims()[0] / 2;
    let lengths = valid.clone().sum_dim(1);
    let shared = lengths
        .clone()
        .narrow(0, 0, half)
        .min_pair(lengths.narrow(0, half, half));
    let shared = Tensor::cat(vec![shared.clone(), shared], 0);
    // Positions are whole numbers: "past the shared length" is position − shared ≥ 1.
    let tail = position
        .sub(shared)
        .greater_elem(0.5)
        .float()
        .mul(valid.clone());
    valid.sub(tail.mul_scalar(1.0 - alpha))
}

/// `Σ_t weights · token_logps` per row `[2B]`.
fn weighted_sum(token_logps: Tensor<2>, weights: Tensor<2>) -> Tensor<1> {
    let [rows, _] = token_logps.dims();
    token_logps.mul(weights).sum_dim(1).reshape([rows])
}
