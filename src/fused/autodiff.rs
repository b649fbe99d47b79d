//! The custom backward: `impl TokenLogpOps for Autodiff<B, C>`, the same pattern as burn's own
//! ops (`burn-autodiff/src/ops/tensor.rs`): a step type implementing `Backward<B, 1>` whose state
//! holds what the backward needs, registered with `prepare([node]).compute_bound().stateful()`.
//!
//! Saved: the logits primitive (a reference-counted handle, not a copy), the labels `[N]` and
//! the row stats `[N]`. Extra memory is O(N).

use burn::backend::{
    Autodiff, Backend,
    autodiff::{
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind, unary},
    },
    tensor::{FloatTensor, IntTensor},
};

use super::linear::{self, Saved};
use super::{RowStats, TokenLogpKernels, TokenLogpOps};

/// Backward step of the fused op; one differentiable parent, the logits.
#[derive(Debug)]
struct TokenLogpsBackward;

impl<B: Backend + TokenLogpKernels> Backward<B, 1> for TokenLogpsBackward {
    /// `(logits, labels, row max, row log-sum)`.
    type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (logits, labels, max, log_sum) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::token_logps_backward(logits, labels, RowStats { max, log_sum }, grad)
        });
    }
}

/// Backward step of the fused LM head; two differentiable parents, hidden states and weight.
#[derive(Debug)]
struct LinearTokenLogpsBackward;

impl<B: Backend + TokenLogpKernels> Backward<B, 2> for LinearTokenLogpsBackward {
    type State = Saved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let [hidden_node, weight_node] = ops.parents;
        // Both gradients come from one pass over the chunks, so `binary` (one closure per
        // parent) does not fit: register them directly.
        let want = [hidden_node.is_some(), weight_node.is_some()];
        let (hidden_grad, weight_grad) = linear::backward::<B>(ops.state, grad, want);
        for (node, grad) in [(hidden_node, hidden_grad), (weight_node, weight_grad)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: Backend + TokenLogpKernels, C: CheckpointStrategy> TokenLogpOps for Autodiff<B, C> {
    fn token_logps(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self> {
        match TokenLogpsBackward
            .prepare::<C>([logits.node()])
            // Recomputing the forward would cost a full pass over the logits: keep the state.
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let logits = logits.into_primitive();
                let (logp, stats) = B::token_logps_forward(logits.clone(), labels.clone());
                prep.finish((logits, labels, stats.max, stats.log_sum), logp)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::token_logps_forward(logits.into_primitive(), labels).0)
            }
        }
    }

    fn linear_token_logps(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        chunk_rows: usize,
    ) -> FloatTensor<Self> {
        match LinearTokenLogpsBackward
            .prepare::<C>([hidden.node(), weight.node()])
            // Keep the O(N) row stats rather than redo the whole forward.
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (hidden, weight) = (hidden.into_primitive(), weight.into_primitive());
                let (logp, stats) = linear::forward::<B>(
                    hidden.clone(),
                    weight.clone(),
                    labels.clone(),
                    chunk_rows,
                );
                let saved = Saved {
                    hidden,
                    weight,
                    labels,
                    max: stats.max,
                    log_sum: stats.log_sum,
                    chunk_rows,
                };
                prep.finish(saved, logp)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                linear::forward::<B>(
                    hidden.into_primitive(),
                    weight.into_primitive(),
                    labels,
                    chunk_rows,
                )
                .0,
            ),
        }
    }
}
