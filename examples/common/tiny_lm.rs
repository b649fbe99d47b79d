//! The tiny causal LM of the `dpo_vs_ipo_tiny_lm` and `reference_free` examples: token and
//! position embeddings, an MLP over the current and previous position's state `[h_t, h_{t−1}]`
//! with a residual, and an LM head (burn-nn layers).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Int, Tensor};

/// Digits 0–9.
pub const VOCAB: usize = 10;
pub const D_MODEL: usize = 32;
pub const D_HIDDEN: usize = 64;

#[derive(Module, Debug)]
pub struct TinyLm {
    tokens: Embedding,
    positions: Embedding,
    mix: Linear,
    out: Linear,
    head: Linear,
}

impl TinyLm {
    /// A model for sequences of up to `max_len` tokens; `head_bias: false` for the fused head
    /// of `SequenceLogps::forward_linear`, which here takes the weight alone.
    pub fn new(max_len: usize, head_bias: bool, device: &Device) -> Self {
        Self {
            tokens: EmbeddingConfig::new(VOCAB, D_MODEL).init(device),
            positions: EmbeddingConfig::new(max_len, D_MODEL).init(device),
            mix: LinearConfig::new(2 * D_MODEL, D_HIDDEN).init(device),
            out: LinearConfig::new(D_HIDDEN, D_MODEL).init(device),
            head: LinearConfig::new(D_MODEL, VOCAB)
                .with_bias(head_bias)
                .init(device),
        }
    }

    /// `tokens [B, T]` → last hidden states `[B, T, D]`.
    pub fn hidden(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, time] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..time as i64, &device)
            .unsqueeze_dim::<2>(0)
            .expand([batch, time]);
        let h = self.tokens.forward(tokens) + self.positions.forward(positions);
        // The previous position's state (zeros before the first): a causal context of two.
        let previous = Tensor::cat(
            vec![
                Tensor::zeros([batch, 1, D_MODEL], &device),
                h.clone().narrow(1, 0, time - 1),
            ],
            1,
        );
        let mixed = self.out.forward(gelu(
            self.mix.forward(Tensor::cat(vec![h.clone(), previous], 2)),
        ));
        h + mixed
    }

    /// `tokens [B, T]` → next-token logits `[B, T, V]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.head.forward(self.hidden(tokens))
    }

    /// The head's weight as `[V, H]` (burn-nn's `Linear` stores `[H, V]`).
    pub fn head_weight(&self) -> Tensor<2> {
        self.head.weight.val().transpose()
    }
}
