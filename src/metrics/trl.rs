//! The metrics TRL's trainers log, built from what a loss computed: rewards and log-probs per
//! candidate, the per-token extras of the gatherer, the desirable mask of unpaired data.

use burn::tensor::{Bool, Tensor};

use super::{Metric, Metrics};
use crate::batch::PairedBatch;
use crate::batch::ranking::Ranking;
use crate::batch::tokens::TokenSide;

/// `rewards/*` and `logps/*` of a paired or ranked batch, as TRL's `DPOTrainer` logs them:
/// the best- and worst-ranked candidate's reward and log-prob, the strict accuracy
/// `1[r_chosen > r_rejected]` and the margin, as batch means. Ranked lists (`K > 2`) add
/// `rewards/ranking_accuracy`: the fraction of ordered pairs the rewards order the same way.
pub(crate) fn paired(rewards: Tensor<2>, logps: Tensor<2>, ranking: &Ranking) -> Metrics {
    let rewards = rewards.detach();
    let logps = logps.detach();
    let chosen = ranking.at_best(rewards.clone());
    let rejected = ranking.at_worst(rewards.clone());
    let margins = chosen.clone().sub(rejected.clone());
    let wins = chosen.clone().greater(rejected.clone()).float();
    let mut metrics = Metrics::new()
        .with("rewards/chosen", Metric::mean(chosen))
        .with("rewards/rejected", Metric::mean(rejected))
        .with("rewards/accuracies", Metric::mean(wins))
        .with("rewards/margins", Metric::mean(margins))
        .with("logps/chosen", Metric::mean(ranking.at_best(logps.clone())))
        .with("logps/rejected", Metric::mean(ranking.at_worst(logps)));
    if rewards.dims()[1] > 2 {
        let agreed = Ranking::differences(rewards).greater_elem(0.0).float();
        let agreed = ranking.sum_over_pairs(agreed).sum();
        let ranked = Metric::new(agreed, ranking.pairs.clone().sum());
        metrics = metrics.with("rewards/ranking_accuracy", ranked);
    }
    metrics
}

/// The metrics of a paired or ranked batch: its token metrics (when the gather carried them)
/// and [`paired`]'s rewards and log-probs.
pub(crate) fn paired_batch(
    batch: &PairedBatch,
    rewards: Tensor<2>,
    logps: Tensor<2>,
    ranking: &Ranking,
) -> Metrics {
    let tokens = batch.tokens.as_deref().map(pair_tokens);
    tokens
        .unwrap_or_default()
        .merge(paired(rewards, logps, ranking))
}

/// TRL's token metrics of the `2B` concatenated rows (chosen first), those the gather
/// carried: `entropy` (every completion token), `logits/chosen`, `logits/rejected` (the
/// vocabulary-mean logit over each side's tokens), `mean_token_accuracy` (the chosen tokens
/// whose label is the argmax).
pub(crate) fn pair_tokens(side: &TokenSide) -> Metrics {
    let rows = side.valid.dims()[0] / 2;
    let valid = side.valid.clone();
    let chosen = valid.clone().narrow(0, 0, rows);
    let rejected = valid.clone().narrow(0, rows, rows);
    let mut metrics = Metrics::new();
    if let Some(entropy) = &side.entropy {
        metrics = metrics.with("entropy", Metric::masked_mean(entropy.clone(), valid));
    }
    if let Some(mean) = &side.mean_logits {
        let half = |start| mean.clone().narrow(0, start, rows);
        metrics = metrics
            .with(
                "logits/chosen",
                Metric::masked_mean(half(0), chosen.clone()),
            )
            .with("logits/rejected", Metric::masked_mean(half(rows), rejected));
    }
    if let Some(top1) = &side.is_top1 {
        let top1 = top1.clone().narrow(0, 0, rows).float();
        metrics = metrics.with("mean_token_accuracy", Metric::masked_mean(top1, chosen));
    }
    metrics
}

/// The metrics TRL's KTO logs for unpaired examples: `entropy` and `logits/chosen|rejected`
/// (when the gather carried them), `rewards/*` and `logps/*` of the desirable ("chosen") and
/// undesirable ("rejected") examples, and `rewards/margins`, their difference, when the step
/// has both. A side without examples counts nothing and is not logged.
pub(crate) fn unpaired(
    rewards: Tensor<1>,
    logps: Tensor<1>,
    desirable: Tensor<1, Bool>,
    tokens: Option<&TokenSide>,
) -> Metrics {
    let undesirable = desirable.clone().bool_not();
    let mut metrics = Metrics::new();
    if let Some(side) = tokens {
        let [rows, time] = side.valid.dims();
        let rows_of = |mask: Tensor<1, Bool>| {
            side.valid
                .clone()
                .bool_and(mask.reshape([rows, 1]).expand([rows, time]))
        };
        if let Some(entropy) = &side.entropy {
            let valid = side.valid.clone();
            metrics = metrics.with("entropy", Metric::masked_mean(entropy.clone(), valid));
        }
        if let Some(mean) = &side.mean_logits {
            let chosen = Metric::masked_mean(mean.clone(), rows_of(desirable.clone()));
            let rejected = Metric::masked_mean(mean.clone(), rows_of(undesirable.clone()));
            metrics = metrics
                .with("logits/chosen", chosen)
                .with("logits/rejected", rejected);
        }
    }
    let logps = logps.detach();
    metrics
        .with(
            "rewards/chosen",
            Metric::masked_mean(rewards.clone(), desirable.clone()),
        )
        .with(
            "logps/chosen",
            Metric::masked_mean(logps.clone(), desirable),
        )
        .with(
            "rewards/rejected",
            Metric::masked_mean(rewards, undesirable.clone()),
        )
        .with("logps/rejected", Metric::masked_mean(logps, undesirable))
        .with_difference("rewards/margins", "rewards/chosen", "rewards/rejected")
}
