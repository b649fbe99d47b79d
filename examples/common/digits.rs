//! The digit-counting preference task of the `dpo_vs_ipo_tiny_lm` and `compare_losses`
//! examples (and their test): the data, the reference model, the batches and the held-out
//! evaluation.
//!
//! A 4-digit prompt counts in steps of k ∈ {1, 3} (mod 10) and an 8-digit response goes on
//! counting; the rule is to keep the prompt's step. The reference is the tiny LM fitted briefly
//! on sequences whose responses keep or switch the step equally often: a base model that does
//! not know the rule. Preference pairs: the chosen response keeps the step, the rejected one
//! switches it, a share of the training pairs flipped (noise). Ranked lists: K = 4 candidates
//! per prompt (keep, keep with one wrong digit, switch, switch with one wrong digit), graded 3,
//! 2, 1, 0, the best two swapped on the same noisy share. Held-out pairs are clean.

use std::error::Error;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_preference::logps::{SequenceLogps, SequenceLogpsOutput};
use burn_preference::metrics::token_kl;
use burn_preference::prelude::*;

use super::rng::SplitMix64;
use super::tiny_lm::{TinyLm, VOCAB};

pub const PROMPT_LEN: usize = 4;
pub const SEQ_LEN: usize = 12;
/// Candidates per prompt of the ranked lists.
pub const CANDIDATES: usize = 4;

type Res<T> = Result<T, Box<dyn Error>>;

/// How much data, how noisy, and how long the reference is fitted.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// Sequences the reference is fitted on.
    pub sft_rows: usize,
    /// Steps of that fit (batches of 64 sequences, Adam at 3e-3); 0 keeps the random start.
    pub sft_steps: usize,
    /// Training prompts: as many pairs, and as many ranked lists.
    pub train_prompts: usize,
    /// Clean held-out pairs.
    pub held_out_prompts: usize,
    /// The share of training pairs flipped, and of ranked lists whose best two are swapped.
    pub flip_rate: f64,
}

impl Setup {
    /// The examples' task.
    pub const EXAMPLE: Setup = Setup {
        sft_rows: 1024,
        sft_steps: 150,
        train_prompts: 512,
        held_out_prompts: 128,
        flip_rate: 0.2,
    };
}

/// Token rows `[N, T]` and the labels that score only their responses (−100 on the prompt).
pub struct Sequences {
    pub tokens: Vec<i64>,
    pub rows: usize,
}

impl Sequences {
    pub fn tokens(&self, device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(
            TensorData::new(self.tokens.clone(), [self.rows, SEQ_LEN]),
            device,
        )
    }

    pub fn response_labels(&self, device: &Device) -> Tensor<2, Int> {
        let labels = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| {
                if i % SEQ_LEN < PROMPT_LEN {
                    -100
                } else {
                    token
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(labels, [self.rows, SEQ_LEN]), device)
    }

    /// The given rows, in order.
    pub fn rows_of(&self, rows: &[usize]) -> Sequences {
        let tokens = rows
            .iter()
            .flat_map(|&r| self.tokens[r * SEQ_LEN..(r + 1) * SEQ_LEN].iter().copied())
            .collect();
        Sequences {
            tokens,
            rows: rows.len(),
        }
    }
}

/// How a response continues the prompt: with the prompt's step or the other one, and how
/// many of its digits are then replaced by wrong ones.
#[derive(Clone, Copy)]
struct Response {
    keeps_step: bool,
    breaks: usize,
}

const FOLLOWS: Response = Response {
    keeps_step: true,
    breaks: 0,
};
const SWITCHES: Response = Response {
    keeps_step: false,
    breaks: 0,
};

/// A prompt `start, start + k, …` with step k ∈ {1, 3} (mod 10), and one sequence per
/// response kind. The rule: keep the prompt's step.
fn sample(rng: &mut SplitMix64, responses: &[Response]) -> Vec<Vec<i64>> {
    let start = rng.below(VOCAB) as i64;
    let step = [1, 3][rng.below(2)];
    responses
        .iter()
        .map(|response| {
            let response_step = if response.keeps_step { step } else { 4 - step };
            let mut seq: Vec<i64> = (0..PROMPT_LEN as i64)
                .map(|t| (start + step * t) % 10)
                .collect();
            while seq.len() < SEQ_LEN {
                seq.push((seq[seq.len() - 1] + response_step) % 10);
            }
            let clean = seq.clone();
            let mut broken = 0;
            while broken < response.breaks {
                let t = PROMPT_LEN + rng.below(SEQ_LEN - PROMPT_LEN);
                if seq[t] == clean[t] {
                    seq[t] = (clean[t] + 1 + rng.below(VOCAB - 1) as i64) % 10;
                    broken += 1;
                }
            }
            seq
        })
        .collect()
}

/// The data sets: pairs as concatenated rows (chosen block, then rejected block) and the
/// K = 4 candidates (row-major `[prompts, 4]`) with their scores.
pub struct Data {
    pub sft: Sequences,
    pub train_pairs: Sequences,
    pub held_out_pairs: Sequences,
    pub ranked: Sequences,
    /// The grades 3, 2, 1, 0 of each prompt's candidates (the first two swapped on a noisy
    /// share), row-major: the ranking of RRHF and Plackett–Luce, ODPO's scores, LiPO's grades.
    pub ranked_scores: Vec<f32>,
}

pub fn make_data(seed: u64, setup: Setup) -> Data {
    let mut rng = SplitMix64(seed);
    let flat = |rows: Vec<Vec<i64>>| Sequences {
        rows: rows.len(),
        tokens: rows.concat(),
    };
    let sft = flat(
        (0..setup.sft_rows)
            // The base model sees both continuations equally often: it does not know the rule.
            .map(|_| {
                let kind = if rng.unit() < 0.5 { FOLLOWS } else { SWITCHES };
                sample(&mut rng, &[kind]).remove(0)
            })
            .collect(),
    );
    let pairs = |n: usize, flip: f64, rng: &mut SplitMix64| {
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let mut pair = sample(rng, &[FOLLOWS, SWITCHES]);
            if rng.unit() < flip {
                pair.swap(0, 1);
            }
            chosen.push(pair[0].clone());
            rejected.push(pair[1].clone());
        }
        flat([chosen, rejected].concat())
    };
    let train_pairs = pairs(setup.train_prompts, setup.flip_rate, &mut rng);
    let held_out_pairs = pairs(setup.held_out_prompts, 0.0, &mut rng);
    let (mut ranked, mut ranked_scores) = (Vec::new(), Vec::new());
    for _ in 0..setup.train_prompts {
        let broken = |kind: Response| Response { breaks: 1, ..kind };
        ranked.extend(sample(
            &mut rng,
            &[FOLLOWS, broken(FOLLOWS), SWITCHES, broken(SWITCHES)],
        ));
        let mut scores = [3.0, 2.0, 1.0, 0.0];
        if rng.unit() < setup.flip_rate {
            scores.swap(0, 1);
        }
        ranked_scores.extend(scores);
    }
    Data {
        sft,
        train_pairs,
        held_out_pairs,
        ranked: flat(ranked),
        ranked_scores,
    }
}

/// Fits the reference briefly (mean token NLL) on sequences that keep or switch the step
/// equally often, so it starts without a preference for the rule.
pub fn fit_reference(data: &Data, steps: usize, device: &Device) -> Res<TinyLm> {
    let mut model = TinyLm::new(SEQ_LEN, true, device);
    let mut optimizer = AdamConfig::new().init();
    let gatherer = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Mean)
        .init()?;
    let mut rng = SplitMix64(7);
    for _ in 0..steps {
        let rows: Vec<usize> = (0..64).map(|_| rng.below(data.sft.rows)).collect();
        let batch = data.sft.rows_of(&rows);
        let tokens = batch.tokens(device);
        let nll = gatherer
            .forward(model.forward(tokens.clone()), tokens, None)?
            .logps
            .mean()
            .neg();
        let grads = GradientsParams::from_grads(nll.backward(), &model);
        model = optimizer.step(3e-3, model, grads);
    }
    Ok(model)
}

/// Sequence log-probs `[N]` of the response tokens (summed, as in the DPO and IPO papers),
/// with their token counts.
pub fn response_logps(
    model: &TinyLm,
    gatherer: &SequenceLogps,
    rows: &Sequences,
    device: &Device,
) -> Res<SequenceLogpsOutput> {
    Ok(gatherer.forward(
        model.forward(rows.tokens(device)),
        rows.response_labels(device),
        None,
    )?)
}

/// One logged point on the held-out pairs.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub step: usize,
    /// Share of pairs with ρ(chosen) > ρ(rejected).
    pub reward_accuracy: f64,
    /// Share of pairs with log π(chosen) > log π(rejected).
    pub policy_accuracy: f64,
    /// Mean per-token KL(π ‖ π_ref) on the chosen responses.
    pub kl: f64,
    /// Mean per-token log-ratio `(log π − log π_ref)/|y|` of the chosen responses: below 0
    /// when training lowered their likelihood.
    pub chosen_logratio: f64,
}

pub struct Evaluator {
    pub gatherer: SequenceLogps,
    held_out: Sequences,
    pairs: usize,
    reference_logps: Tensor<1>,
    reference_logits: Tensor<3>,
}

impl Evaluator {
    pub fn evaluate(&self, step: usize, model: &TinyLm, device: &Device) -> Res<Point> {
        let pairs = self.pairs;
        let policy = response_logps(model, &self.gatherer, &self.held_out, device)?;
        let counts = policy.counts.narrow(0, 0, pairs);
        let policy = policy.logps.detach();
        let accuracy = |values: Tensor<1>| {
            let chosen = values.clone().narrow(0, 0, pairs);
            let rejected = values.narrow(0, pairs, pairs);
            f64::from(chosen.greater(rejected).float().mean().into_scalar::<f32>())
        };
        let policy_accuracy = accuracy(policy.clone());
        let ratios = policy - self.reference_logps.clone();
        let chosen_logratio = ratios.clone().narrow(0, 0, pairs).div(counts).mean();
        let reward_accuracy = accuracy(ratios);
        // KL on the held-out chosen responses, where a trained policy should stay close.
        let chosen_rows = self.held_out.rows_of(&(0..pairs).collect::<Vec<_>>());
        let kl = token_kl(
            &self.gatherer,
            model.forward(chosen_rows.tokens(device)).detach(),
            self.reference_logits.clone(),
            chosen_rows.response_labels(device),
            None,
        )?;
        Ok(Point {
            step,
            reward_accuracy,
            policy_accuracy,
            kl: f64::from(kl.mean.into_scalar::<f32>()),
            chosen_logratio: f64::from(chosen_logratio.into_scalar::<f32>()),
        })
    }
}

/// The data, the frozen reference with its log-probs of every training response (computed
/// once: the reference never changes), and the held-out evaluator.
pub struct Task {
    pub data: Data,
    pub reference: TinyLm,
    pub evaluator: Evaluator,
    /// `[2·prompts]`, laid out as `data.train_pairs`.
    train_reference_logps: Tensor<1>,
    /// `[4·prompts]`, laid out as `data.ranked`.
    ranked_reference_logps: Tensor<1>,
}

impl Task {
    pub fn new(seed: u64, setup: Setup, device: &Device) -> Res<Self> {
        let data = make_data(seed, setup);
        let reference = fit_reference(&data, setup.sft_steps, device)?;
        let gatherer = SequenceLogpsConfig::new().init()?;
        let logps = |rows: &Sequences| -> Res<Tensor<1>> {
            Ok(response_logps(&reference, &gatherer, rows, device)?
                .logps
                .detach())
        };
        let train_reference_logps = logps(&data.train_pairs)?;
        let ranked_reference_logps = logps(&data.ranked)?;
        let pairs = setup.held_out_prompts;
        let held_out_chosen = data.held_out_pairs.rows_of(&(0..pairs).collect::<Vec<_>>());
        let evaluator = Evaluator {
            reference_logps: logps(&data.held_out_pairs)?,
            reference_logits: reference.forward(held_out_chosen.tokens(device)).detach(),
            held_out: data
                .held_out_pairs
                .rows_of(&(0..2 * pairs).collect::<Vec<_>>()),
            pairs,
            gatherer,
        };
        Ok(Self {
            data,
            reference,
            evaluator,
            train_reference_logps,
            ranked_reference_logps,
        })
    }

    /// Training prompts (pairs, and ranked lists).
    pub fn prompts(&self) -> usize {
        self.data.train_pairs.rows / 2
    }

    /// The policy's summed log-probs and token counts of the given prompts' training pairs,
    /// with the reference's: `[B, 2]`, chosen first.
    pub fn pair_batch(
        &self,
        model: &TinyLm,
        prompts: &[usize],
        device: &Device,
    ) -> Res<PairedBatch> {
        let pairs = self.prompts();
        // Chosen rows of the batch, then their rejected rows: one forward pass.
        let rows: Vec<usize> = prompts
            .iter()
            .copied()
            .chain(prompts.iter().map(|p| p + pairs))
            .collect();
        let policy = response_logps(
            model,
            &self.evaluator.gatherer,
            &self.data.train_pairs.rows_of(&rows),
            device,
        )?;
        let reference = select(&self.train_reference_logps, &rows, device);
        // Chosen rows first: [2B] → [B, 2] as the layout says; the stored reference log-probs
        // [2B] are laid out the same way, chosen in column 0.
        let batch = prompts.len();
        Ok(
            PairedBatch::from_output(policy, BatchLayout::ChosenFirst { pairs: batch })?
                .with_reference(reference.reshape([2, batch]).transpose())?,
        )
    }

    /// The policy's summed log-probs and token counts of the given prompts' K = 4 candidates,
    /// with the reference's and the scores: `[B, 4]`.
    pub fn ranked_batch(
        &self,
        model: &TinyLm,
        prompts: &[usize],
        device: &Device,
    ) -> Res<PairedBatch> {
        let rows: Vec<usize> = prompts
            .iter()
            .flat_map(|p| (0..CANDIDATES).map(move |k| p * CANDIDATES + k))
            .collect();
        let candidates = self.data.ranked.rows_of(&rows);
        let out = response_logps(model, &self.evaluator.gatherer, &candidates, device)?;
        let scores: Vec<f32> = rows.iter().map(|&r| self.data.ranked_scores[r]).collect();
        let batch = prompts.len();
        let reference = select(&self.ranked_reference_logps, &rows, device);
        // Prompt-major rows → [B, 4] with each candidate's token count; ranked by the scores.
        let layout = BatchLayout::PromptMajor {
            prompts: batch,
            candidates: CANDIDATES,
        };
        Ok(PairedBatch::from_output(out, layout)?
            .with_reference(reference.reshape([batch, CANDIDATES]))?
            .with_scores(Tensor::from_data(
                TensorData::new(scores, [batch, CANDIDATES]),
                device,
            ))?)
    }
}

/// `values[rows]`.
fn select(values: &Tensor<1>, rows: &[usize], device: &Device) -> Tensor<1> {
    let ids = rows.iter().map(|&r| r as i64).collect::<Vec<_>>();
    values.clone().select(
        0,
        Tensor::from_data(TensorData::new(ids, [rows.len()]), device),
    )
}
