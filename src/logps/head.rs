//! [`LmHead`]: the linear LM head the gatherer reads without materialising its logits.

use burn::tensor::Tensor;

pub use crate::fused::HeadLayout;

/// A linear LM head for [`SequenceLogps::forward_linear`](super::SequenceLogps::forward_linear): the weight in either layout and an
/// optional bias. A plain `Tensor<2>` converts into a bias-free `[V, H]` head.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_preference::logps::{HeadLayout, LmHead};
///
/// let device = Device::default();
/// // burn-nn `Linear::weight` is `[H, V]`: taken as it is, no transposed copy.
/// let weight = Tensor::<2>::zeros([16, 100], &device);
/// let head = LmHead::new(weight, HeadLayout::HiddenVocab).with_bias(Tensor::zeros([100], &device));
/// assert_eq!(head.vocab_size(), 100);
/// ```
#[derive(Debug, Clone)]
pub struct LmHead {
    pub(crate) weight: Tensor<2>,
    pub(crate) layout: HeadLayout,
    pub(crate) bias: Option<Tensor<1>>,
}

impl LmHead {
    /// A head with `weight` laid out as `layout` says (`[V, H]` or `[H, V]`), without a bias.
    pub fn new(weight: Tensor<2>, layout: HeadLayout) -> Self {
        Self {
            weight,
            layout,
            bias: None,
        }
    }

    /// The same head with a bias `[V]` added to its logits.
    pub fn with_bias(self, bias: Tensor<1>) -> Self {
        Self {
            bias: Some(bias),
            ..self
        }
    }

    /// `V`, from the weight's shape and layout.
    pub fn vocab_size(&self) -> usize {
        let [rows, columns] = self.weight.dims();
        match self.layout {
            HeadLayout::VocabHidden => rows,
            HeadLayout::HiddenVocab => columns,
        }
    }

    /// `H`, from the weight's shape and layout.
    pub(crate) fn width(&self) -> usize {
        let [rows, columns] = self.weight.dims();
        match self.layout {
            HeadLayout::VocabHidden => columns,
            HeadLayout::HiddenVocab => rows,
        }
    }

    /// The materialised logits `hidden · head + bias` `[B, T, V]`, for the tensor-op path.
    pub(crate) fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let head = match self.layout {
            HeadLayout::VocabHidden => self.weight.clone().transpose(),
            HeadLayout::HiddenVocab => self.weight.clone(),
        };
        let logits = hidden.matmul(head.unsqueeze_dim::<3>(0));
        match &self.bias {
            Some(bias) => logits.add(bias.clone().unsqueeze_dims::<3>(&[0, 1])),
            None => logits,
        }
    }
}

impl From<Tensor<2>> for LmHead {
    /// A bias-free head `[V, H]`.
    fn from(weight: Tensor<2>) -> Self {
        Self::new(weight, HeadLayout::VocabHidden)
    }
}
