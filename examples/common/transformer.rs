//! A small causal transformer trained on arithmetic preferences, padded or packed: the model,
//! the data and the training loop shared by the `packed_transformer` example and its test.
//!
//! Prompts are sums such as `17+25=` (one token per digit); the chosen completion is the right
//! answer and an end token, the rejected one a plausible wrong answer (a forgotten carry, one
//! digit off by one, or two digits swapped). Operands have 1 to 3 digits, so sequences are 6 to
//! 13 tokens long: a padded batch wastes a good part of its tokens, a packed one very little.
//!
//! One code path serves both layouts: the collator builds the batch (`pad` or `pack`), the
//! model gets the matching attention mask (causal within a row's tokens, or block-diagonal
//! causal within each packed sequence) and positions that restart at every sequence, and the
//! log-probs come back chosen-first `[2B]` either way, ready for
//! `PairedBatch::from_output(out, batch.layout())`.

use std::error::Error;
use std::time::Instant;

use burn::module::Module;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::gelu;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_preference::data::{Collated, PreferenceCollator, PreferenceExample};
use burn_preference::logps::{SequenceLogps, SequenceLogpsOutput};
use burn_preference::prelude::*;

use super::rng::SplitMix64;

/// Token ids: the digits 0–9 are themselves.
pub const PLUS: u32 = 10;
pub const EQUALS: u32 = 11;
pub const END: u32 = 12;
pub const PAD: u32 = 13;
pub const VOCAB: usize = 14;
/// The longest sequence: `999+999=1998` and the end token.
pub const MAX_LEN: usize = 13;

type Res<T> = Result<T, Box<dyn Error>>;

/// The model's size.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    pub d_ff: usize,
}

impl Size {
    /// The example's model (~100k parameters).
    pub const EXAMPLE: Size = Size {
        d_model: 64,
        heads: 4,
        layers: 2,
        d_ff: 128,
    };
    /// A model small enough for a debug-build test on every device.
    pub const TINY: Size = Size {
        d_model: 16,
        heads: 2,
        layers: 2,
        d_ff: 32,
    };
}

/// Pre-norm block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct Block {
    attn_norm: LayerNorm,
    attn: MultiHeadAttention,
    mlp_norm: LayerNorm,
    up: Linear,
    down: Linear,
}

/// Token and position embeddings, `layers` blocks, a final norm and an LM head without bias
/// (its weight is what the fused `forward_linear` paths take).
#[derive(Module, Debug)]
pub struct Transformer {
    tokens: Embedding,
    positions: Embedding,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
}

impl Transformer {
    pub fn new(size: Size, device: &Device) -> Self {
        let block = || Block {
            attn_norm: LayerNormConfig::new(size.d_model).init(device),
            // No dropout: the padded and packed runs must see the same function.
            attn: MultiHeadAttentionConfig::new(size.d_model, size.heads)
                .with_dropout(0.0)
                .init(device),
            mlp_norm: LayerNormConfig::new(size.d_model).init(device),
            up: LinearConfig::new(size.d_model, size.d_ff).init(device),
            down: LinearConfig::new(size.d_ff, size.d_model).init(device),
        };
        Self {
            tokens: EmbeddingConfig::new(VOCAB, size.d_model).init(device),
            positions: EmbeddingConfig::new(MAX_LEN, size.d_model).init(device),
            blocks: (0..size.layers).map(|_| block()).collect(),
            norm: LayerNormConfig::new(size.d_model).init(device),
            head: LinearConfig::new(size.d_model, VOCAB)
                .with_bias(false)
                .init(device),
        }
    }

    /// The last hidden states `[R, T, H]` of a collated batch (padded or packed).
    pub fn hidden(&self, inputs: &Inputs) -> Tensor<3> {
        let mut x = self.tokens.forward(inputs.input_ids.clone())
            + self.positions.forward(inputs.position_ids.clone());
        for block in &self.blocks {
            let normed = block.attn_norm.forward(x.clone());
            let attended = block
                .attn
                .forward(MhaInput::self_attn(normed).mask_attn(inputs.mask.clone()))
                .context;
            x = x + attended;
            let normed = block.mlp_norm.forward(x.clone());
            x = x.clone() + block.down.forward(gelu(block.up.forward(normed)));
        }
        self.norm.forward(x)
    }

    /// Next-token logits `[R, T, V]`.
    pub fn logits(&self, inputs: &Inputs) -> Tensor<3> {
        self.head.forward(self.hidden(inputs))
    }

    /// The LM head's weight as `[V, H]` (burn's `Linear` stores `[H, V]`).
    pub fn head_weight(&self) -> Tensor<2> {
        self.head.weight.val().transpose()
    }
}

/// A collated batch on a device: what the model and the gatherer take.
pub struct Inputs {
    pub input_ids: Tensor<2, Int>,
    pub position_ids: Tensor<2, Int>,
    pub labels: Tensor<2, Int>,
    /// `[R, T, T]`, `true` where query `q` may *not* attend to key `k` (burn's convention).
    pub mask: Tensor<3, Bool>,
}

impl Inputs {
    pub fn new(batch: &Collated, device: &Device) -> Self {
        let [rows, time] = batch.dims();
        let mask = attention_mask(&sequence_ids(batch), rows, time);
        Self {
            input_ids: batch.input_ids(device),
            position_ids: batch.position_ids(device),
            labels: batch.labels(device),
            mask: Tensor::from_data(TensorData::new(mask, [rows, time, time]), device),
        }
    }
}

/// Which sequence every token `[R·T]` belongs to, −1 on padding: a packed batch's segment
/// ids, or for a padded batch the row of every unpadded token.
pub fn sequence_ids(batch: &Collated) -> Vec<i64> {
    match batch.segments() {
        Some(segments) => segments.segment_ids(),
        None => {
            let time = batch.dims()[1];
            batch
                .host_attention_mask()
                .iter()
                .enumerate()
                .map(|(i, &m)| if m == 1 { (i / time) as i64 } else { -1 })
                .collect()
        }
    }
}

/// The block-diagonal causal mask `[R·T·T]` (`true` = masked): query `q` sees key `k ≤ q` of
/// its own sequence only. For a padded batch (one sequence per row) this is the causal mask
/// plus the padding; for a packed one it keeps every sequence from seeing its neighbours, so
/// each sequence's hidden states are what they would be alone. A padding query sees nothing:
/// its scores are all the same fill value, a uniform softmax, and no real token reads it.
pub fn attention_mask(ids: &[i64], rows: usize, time: usize) -> Vec<bool> {
    let mut mask = vec![true; rows * time * time];
    for r in 0..rows {
        let row = &ids[r * time..(r + 1) * time];
        for q in 0..time {
            for k in 0..=q {
                if row[q] >= 0 && row[k] == row[q] {
                    mask[(r * time + q) * time + k] = false;
                }
            }
        }
    }
    mask
}

/// How a batch is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One sequence per row, right-padded; log-probs from the `[R, T, V]` logits
    /// (`SequenceLogps::forward`).
    Padded,
    /// Sequences packed into rows of `row_len` tokens; log-probs through the fused LM head
    /// (`SequenceLogps::forward_linear_packed`): no `[R, T, V]` logits are held.
    Packed { row_len: usize },
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Padded => "padded",
            Layout::Packed { .. } => "packed",
        }
    }

    pub fn collate(
        self,
        collator: &PreferenceCollator,
        examples: &[PreferenceExample],
    ) -> Res<Collated> {
        Ok(match self {
            Layout::Padded => collator.pad(examples)?,
            Layout::Packed { row_len } => collator.pack(examples, row_len)?,
        })
    }
}

/// The collator of the example: the pad token id is `PAD`, labels −100 on prompts and padding.
pub fn collator() -> Res<PreferenceCollator> {
    Ok(PreferenceCollatorConfig::new()
        .with_pad_token_id(PAD)
        .init()?)
}

/// Sequence log-probs of every sequence of `batch`, in its order (chosen first for pairs).
pub fn sequence_logps(
    model: &Transformer,
    gatherer: &SequenceLogps,
    batch: &Collated,
    device: &Device,
) -> Res<SequenceLogpsOutput> {
    let inputs = Inputs::new(batch, device);
    Ok(match batch.segments() {
        None => gatherer.forward(model.logits(&inputs), inputs.labels, None)?,
        Some(segments) => gatherer.forward_linear_packed(
            model.hidden(&inputs),
            model.head_weight(),
            inputs.labels,
            segments,
        )?,
    })
}

/// Real (unpadded) tokens and all tokens of a batch.
pub fn token_counts(batch: &Collated) -> (usize, usize) {
    let mask = batch.host_attention_mask();
    let real = mask.iter().filter(|&&m| m == 1).count();
    (real, mask.len())
}

// ---------------------------------------------------------------------------------------------
// Data

fn digits(n: u32) -> Vec<u32> {
    n.to_string().bytes().map(|b| u32::from(b - b'0')).collect()
}

/// An operand of 1, 2 or 3 digits with probabilities 1/2, 1/3, 1/6: short sums are common,
/// long ones rare, as lengths in real preference data have a long tail.
fn operand(rng: &mut SplitMix64) -> u32 {
    let width = [1, 1, 1, 2, 2, 3][rng.below(6)];
    let low = if width == 1 { 0 } else { 10u32.pow(width - 1) };
    low + rng.below((10u32.pow(width) - low) as usize) as u32
}

/// A plausible wrong answer to `a + b`, different from the right one.
fn wrong_answer(a: u32, b: u32, rng: &mut SplitMix64) -> Vec<u32> {
    let right = digits(a + b);
    loop {
        let mut wrong = right.clone();
        match rng.below(3) {
            // Forgotten carry: each column's digit sum mod 10.
            0 => {
                let (mut x, mut y, mut place, mut sum) = (a, b, 1, 0);
                while x > 0 || y > 0 {
                    sum += (x % 10 + y % 10) % 10 * place;
                    (x, y, place) = (x / 10, y / 10, place * 10);
                }
                wrong = digits(sum);
            }
            // One digit off by one (no leading zero).
            1 => {
                let i = rng.below(wrong.len());
                wrong[i] = if rng.below(2) == 0 {
                    (wrong[i] + 1) % 10
                } else {
                    (wrong[i] + 9) % 10
                };
                if wrong.len() > 1 && wrong[0] == 0 {
                    continue;
                }
            }
            // Two neighbouring digits swapped.
            _ => {
                if wrong.len() < 2 {
                    continue;
                }
                let i = rng.below(wrong.len() - 1);
                wrong.swap(i, i + 1);
                if wrong[0] == 0 {
                    continue;
                }
            }
        }
        if wrong != right {
            return wrong;
        }
    }
}

fn example(a: u32, b: u32, rng: &mut SplitMix64) -> PreferenceExample {
    let mut prompt = digits(a);
    prompt.push(PLUS);
    prompt.extend(digits(b));
    prompt.push(EQUALS);
    let mut chosen = digits(a + b);
    chosen.push(END);
    let mut rejected = wrong_answer(a, b, rng);
    rejected.push(END);
    PreferenceExample {
        prompt,
        chosen,
        rejected,
    }
}

/// Training and held-out pairs; no sum of the held-out set is in the training set.
pub struct Data {
    pub train: Vec<PreferenceExample>,
    pub held_out: Vec<PreferenceExample>,
}

pub fn make_data(train: usize, held_out: usize, seed: u64) -> Data {
    let mut rng = SplitMix64(seed);
    let mut seen = std::collections::HashSet::new();
    // Every sum at most once, so the held-out sums are new to the policy.
    let mut draw = |n: usize, rng: &mut SplitMix64| {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let (a, b) = (operand(rng), operand(rng));
            if seen.insert((a, b)) {
                out.push(example(a, b, rng));
            }
        }
        out
    };
    let held_out = draw(held_out, &mut rng);
    let train = draw(train, &mut rng);
    Data { train, held_out }
}

// ---------------------------------------------------------------------------------------------
// Training

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub size: Size,
    pub sft_steps: usize,
    pub sft_learning_rate: f64,
    pub steps: usize,
    pub learning_rate: f64,
    /// Pairs per batch.
    pub batch: usize,
    pub eval_every: usize,
    pub seed: u64,
}

/// Which preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Dpo,
    Ipo,
    /// Reference-free DPO (ΨPO with Ψ = logit and no reference).
    ReferenceFreeDpo,
}

pub const METHODS: [Method; 3] = [Method::Dpo, Method::Ipo, Method::ReferenceFreeDpo];

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Dpo => "DPO (β = 0.1)",
            Method::Ipo => "IPO (τ = 0.1)",
            Method::ReferenceFreeDpo => "ref-free DPO (β = 0.1)",
        }
    }

    fn loss(self) -> Res<Box<dyn PreferenceLoss<Batch = PairedBatch>>> {
        Ok(match self {
            Method::Dpo => Box::new(DpoConfig::new().with_beta(0.1).init()?),
            // IPO on summed log-probs, as the paper writes it (β is IPO's τ).
            Method::Ipo => Box::new(PsiPoConfig::new(Psi::Identity).with_beta(0.1).init()?),
            Method::ReferenceFreeDpo => Box::new(
                PsiPoConfig::new(Psi::Logit)
                    .with_beta(0.1)
                    .with_reference_free(true)
                    .init()?,
            ),
        })
    }

    fn uses_reference(self) -> bool {
        self != Method::ReferenceFreeDpo
    }
}

/// Batches of `batch` pairs: a fresh shuffle of the training set every epoch, the same
/// sequence of batches for every run with the same seed.
struct Batches {
    order: Vec<usize>,
    next: usize,
    rng: SplitMix64,
}

impl Batches {
    fn new(len: usize, seed: u64) -> Self {
        Self {
            order: (0..len).collect(),
            next: len,
            rng: SplitMix64(seed),
        }
    }

    fn take(&mut self, batch: usize, data: &[PreferenceExample]) -> Vec<PreferenceExample> {
        (0..batch)
            .map(|_| {
                if self.next == self.order.len() {
                    for i in (1..self.order.len()).rev() {
                        self.order.swap(i, self.rng.below(i + 1));
                    }
                    self.next = 0;
                }
                self.next += 1;
                data[self.order[self.next - 1]].clone()
            })
            .collect()
    }
}

/// The reference: the model fitted for `sft_steps` on the chosen completions (token-mean NLL
/// of the completion), in packed batches. Returns it and its NLL after every step.
pub fn sft(
    data: &Data,
    setup: &Setup,
    row_len: usize,
    device: &Device,
    mut on_step: impl FnMut(),
) -> Res<(Transformer, Vec<f32>)> {
    device.seed(setup.seed);
    let mut model = Transformer::new(setup.size, device);
    let mut optimizer = AdamConfig::new().init();
    let collator = collator()?;
    let gatherer = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Mean)
        .init()?;
    let mut batches = Batches::new(data.train.len(), setup.seed ^ 0x5F7);
    let mut losses = Vec::with_capacity(setup.sft_steps);
    for _ in 0..setup.sft_steps {
        let examples = batches.take(setup.batch, &data.train);
        let batch = collator.pack(&examples, row_len)?;
        // Chosen first: the first B sequences are the completions to imitate.
        let logps = sequence_logps(&model, &gatherer, &batch, device)?.logps;
        let nll = logps.narrow(0, 0, examples.len()).mean().neg();
        losses.push(nll.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(nll.backward(), &model);
        model = optimizer.step(setup.sft_learning_rate, model, grads);
        on_step();
    }
    Ok((model, losses))
}

/// Held-out metrics at one step.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub step: usize,
    pub loss: f32,
    /// Share of pairs whose implicit reward prefers the chosen answer (`rewards/accuracies`).
    pub reward_accuracy: f32,
    /// Mean implicit-reward margin (`rewards/margins`).
    pub margin: f32,
    /// Share of pairs with log π(chosen) > log π(rejected): does the policy prefer the
    /// correct answer?
    pub policy_accuracy: f32,
}

/// One policy's training.
pub struct Run {
    pub method: Method,
    pub layout: Layout,
    /// The loss of every training step's batch, before the step's update.
    pub train_losses: Vec<f32>,
    pub held_out: Vec<Point>,
    /// Real tokens and all tokens (with padding) of the training batches.
    pub real_tokens: usize,
    pub all_tokens: usize,
    /// Wall time of the training steps (reference and policy passes, backward, Adam; not the
    /// held-out evaluations).
    pub seconds: f64,
}

/// The held-out set collated once in a run's layout, with the reference's log-probs.
struct HeldOut {
    batch: Collated,
    reference: SequenceLogpsOutput,
}

fn evaluate(
    step: usize,
    model: &Transformer,
    loss: &dyn PreferenceLoss<Batch = PairedBatch>,
    held_out: &HeldOut,
    gatherer: &SequenceLogps,
    device: &Device,
) -> Res<Point> {
    let plain = device.clone().inner();
    let policy = sequence_logps(&model.valid(), gatherer, &held_out.batch, &plain)?;
    let pairs = policy.logps.dims()[0] / 2;
    let chosen = policy.logps.clone().narrow(0, 0, pairs);
    let rejected = policy.logps.clone().narrow(0, pairs, pairs);
    let policy_accuracy = chosen.greater(rejected).float().mean().into_scalar::<f32>();
    let batch = PairedBatch::from_output(policy, held_out.batch.layout())?
        .with_reference_output(held_out.reference.clone())?;
    let out = loss.forward(batch)?;
    let metrics = out.metrics.log()?;
    let metric = |name: &str| {
        metrics
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| *value as f32)
            .ok_or(format!("{name} not logged"))
    };
    Ok(Point {
        step,
        loss: out.loss.into_scalar::<f32>(),
        reward_accuracy: metric("rewards/accuracies")?,
        margin: metric("rewards/margins")?,
        policy_accuracy,
    })
}

/// Trains one policy from `reference` with `method` on batches in `layout`.
pub fn train(
    method: Method,
    layout: Layout,
    reference: &Transformer,
    data: &Data,
    setup: &Setup,
    device: &Device,
    mut on_step: impl FnMut(),
) -> Res<Run> {
    let plain = device.clone().inner();
    let frozen = reference.valid();
    let collator = collator()?;
    let gatherer = SequenceLogpsConfig::new().init()?;
    let loss = method.loss()?;
    let held_out_batch = layout.collate(&collator, &data.held_out)?;
    let held_out = HeldOut {
        reference: sequence_logps(&frozen, &gatherer, &held_out_batch, &plain)?,
        batch: held_out_batch,
    };
    let mut model = reference.clone();
    let mut optimizer = AdamConfig::new().init();
    let mut batches = Batches::new(data.train.len(), setup.seed ^ 0xD90);
    let mut run = Run {
        method,
        layout,
        train_losses: Vec::with_capacity(setup.steps),
        held_out: Vec::new(),
        real_tokens: 0,
        all_tokens: 0,
        seconds: 0.0,
    };
    for step in 0..=setup.steps {
        if step % setup.eval_every == 0 || step == setup.steps {
            let point = evaluate(step, &model, loss.as_ref(), &held_out, &gatherer, device)?;
            run.held_out.push(point);
        }
        if step == setup.steps {
            break;
        }
        let started = Instant::now();
        let examples = batches.take(setup.batch, &data.train);
        let batch = layout.collate(&collator, &examples)?;
        let (real, all) = token_counts(&batch);
        run.real_tokens += real;
        run.all_tokens += all;
        // Chosen-first [2B] in both layouts: the batch's layout says so, no reshape by hand.
        let policy = sequence_logps(&model, &gatherer, &batch, device)?;
        let mut pairs = PairedBatch::from_output(policy, batch.layout())?;
        if method.uses_reference() {
            // The frozen reference runs without autodiff; its [2B] log-probs, chosen first,
            // become [B, 2] on the policy's device.
            let reference = sequence_logps(&frozen, &gatherer, &batch, &plain)?.logps;
            let reference = reference
                .autodiff()
                .reshape([2, examples.len()])
                .transpose();
            pairs = pairs.with_reference(reference)?;
        }
        let out = loss.forward(pairs)?;
        run.train_losses.push(out.loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optimizer.step(setup.learning_rate, model, grads);
        run.seconds += started.elapsed().as_secs_f64();
        on_step();
    }
    Ok(run)
}
