//! The addition task of the `grpo` example: prompts `a+b=` with operands 0–99 (one token per
//! digit), answered by the digits of the sum and an end token; rows of prompt + completion as
//! the transformer's inputs; and autoregressive sampling (at a temperature, or greedy).
//!
//! A row is laid out as the policy losses read it: the prompt left-padded to `PROMPT_LEN`
//! tokens, then the completion right-padded to `COMPLETION_LEN`, so every completion sits in
//! the row's last `COMPLETION_LEN` positions (`CompletionBatch::from_output`). A completion's
//! tokens are real up to and including its end token (or all `COMPLETION_LEN` of them when it
//! has none: truncated); what follows is padding, which no token attends to and no label
//! counts.

use std::error::Error;

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::rng::SplitMix64;
use super::transformer::{END, EQUALS, Inputs, PAD, PLUS, Transformer, VOCAB, attention_mask};

/// The longest prompt, `99+99=`.
pub const PROMPT_LEN: usize = 6;
/// The longest answer, `198` and the end token: the sampling length limit.
pub const COMPLETION_LEN: usize = 4;
/// Operands are drawn from `0..OPERANDS`.
const OPERANDS: u32 = 100;

type Res<T> = Result<T, Box<dyn Error>>;

fn digits(n: u32) -> Vec<u32> {
    n.to_string().bytes().map(|b| u32::from(b - b'0')).collect()
}

/// One sum `a + b`.
#[derive(Debug, Clone, Copy)]
pub struct Problem {
    pub a: u32,
    pub b: u32,
}

impl Problem {
    /// `a+b=`, one token per digit.
    pub fn prompt(self) -> Vec<u32> {
        let mut prompt = digits(self.a);
        prompt.push(PLUS);
        prompt.extend(digits(self.b));
        prompt.push(EQUALS);
        prompt
    }

    /// The digits of the sum and the end token.
    pub fn answer(self) -> Vec<u32> {
        let mut answer = digits(self.a + self.b);
        answer.push(END);
        answer
    }

    /// The reward: 1 for exactly the answer followed by the end token, else 0.
    pub fn reward(self, completion: &[u32]) -> f32 {
        f32::from(u8::from(completion == self.answer().as_slice()))
    }
}

/// All `100 × 100` sums shuffled, split into training and `held_out` held-out problems.
pub fn split(held_out: usize, seed: u64) -> (Vec<Problem>, Vec<Problem>) {
    let mut all: Vec<Problem> = (0..OPERANDS)
        .flat_map(|a| (0..OPERANDS).map(move |b| Problem { a, b }))
        .collect();
    let mut rng = SplitMix64(seed);
    for i in (1..all.len()).rev() {
        all.swap(i, rng.below(i + 1));
    }
    let train = all.split_off(held_out);
    (train, all)
}

/// The inputs of rows `prompt + completion`: each prompt left-padded to `PROMPT_LEN`, each
/// completion (its real tokens only) right-padded to `width`; positions counted from each
/// prompt's first token; labels the completion tokens (−100 elsewhere).
pub fn inputs(rows: &[(Vec<u32>, &[u32])], width: usize, device: &Device) -> Inputs {
    let time = PROMPT_LEN + width;
    let n = rows.len();
    let (mut ids, mut positions) = (vec![i64::from(PAD); n * time], vec![0i64; n * time]);
    let (mut labels, mut sequences) = (vec![-100i64; n * time], vec![-1i64; n * time]);
    for (r, (prompt, completion)) in rows.iter().enumerate() {
        let start = PROMPT_LEN - prompt.len();
        for (i, &token) in prompt.iter().chain(completion.iter()).enumerate() {
            let at = r * time + start + i;
            ids[at] = i64::from(token);
            positions[at] = i as i64;
            sequences[at] = r as i64;
            if i >= prompt.len() {
                labels[at] = i64::from(token);
            }
        }
    }
    let tensor = |values: Vec<i64>| -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(values, [n, time]), device)
    };
    let mask = attention_mask(&sequences, n, time);
    Inputs {
        input_ids: tensor(ids),
        position_ids: tensor(positions),
        labels: tensor(labels),
        mask: Tensor::from_data(TensorData::new(mask, [n, time, time]), device),
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy)]
pub enum Decoding {
    /// Drawn from `softmax(logits / temperature)`.
    Sample { temperature: f64 },
    /// The most likely token.
    Greedy,
}

/// One completion per prompt, up to `COMPLETION_LEN` tokens, stopping at the end token; no
/// cache: every step runs the model over the rows so far and reads the last position's logits.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    decoding: Decoding,
    rng: &mut SplitMix64,
    device: &Device,
) -> Res<Vec<Vec<u32>>> {
    let n = prompts.len();
    let mut completions: Vec<Vec<u32>> = vec![Vec::new(); n];
    for step in 0..COMPLETION_LEN {
        let rows: Vec<(Vec<u32>, &[u32])> = prompts
            .iter()
            .zip(&completions)
            .map(|(p, c)| (p.clone(), c.as_slice()))
            .collect();
        let inputs = inputs(&rows, step, device);
        let time = PROMPT_LEN + step;
        // Every unfinished row's last real token is at `time − 1`.
        let last = model
            .logits(&inputs)
            .slice([0..n, time - 1..time, 0..VOCAB])
            .reshape([n, VOCAB]);
        let logits: Vec<f32> = last
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        for (completion, row) in completions.iter_mut().zip(logits.chunks(VOCAB)) {
            if completion.last() == Some(&END) {
                continue;
            }
            completion.push(next_token(row, decoding, rng) as u32);
        }
    }
    Ok(completions)
}

fn next_token(logits: &[f32], decoding: Decoding, rng: &mut SplitMix64) -> usize {
    let argmax = |values: &[f64]| {
        (0..values.len()).fold(0, |best, v| if values[v] > values[best] { v } else { best })
    };
    let scaled: Vec<f64> = match decoding {
        Decoding::Greedy => logits.iter().map(|&z| f64::from(z)).collect(),
        Decoding::Sample { temperature } => {
            logits.iter().map(|&z| f64::from(z) / temperature).collect()
        }
    };
    let top = argmax(&scaled);
    if let Decoding::Greedy = decoding {
        return top;
    }
    let weights: Vec<f64> = scaled.iter().map(|z| (z - scaled[top]).exp()).collect();
    let mut u = rng.unit() * weights.iter().sum::<f64>();
    for (v, w) in weights.iter().enumerate() {
        if u < *w {
            return v;
        }
        u -= w;
    }
    top
}

/// The share of `problems` the model answers exactly, greedily.
pub fn accuracy(model: &Transformer, problems: &[Problem], device: &Device) -> Res<f64> {
    let prompts: Vec<Vec<u32>> = problems.iter().map(|p| p.prompt()).collect();
    // Greedy decoding draws nothing.
    let completions = generate(
        model,
        &prompts,
        Decoding::Greedy,
        &mut SplitMix64(0),
        device,
    )?;
    let right: f32 = problems
        .iter()
        .zip(&completions)
        .map(|(p, c)| p.reward(c))
        .sum();
    Ok(f64::from(right) / problems.len() as f64)
}
