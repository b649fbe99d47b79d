//! The custom backward: `impl TokenLogpOps for Autodiff<B, C>`, the same pattern as burn's own
//! ops (`burn-autodiff/src/ops/tensor.rs`): a step type implementing `Backward<B, N>` whose state
//! holds what the backward needs, registered with `prepare([nodes]).compute_bound().stateful()`.
//!
//! Saved: the logits primitive (a reference-counted handle, not a copy), the row-targets `[N]`
//! and the row stats `[N]`. Extra memory is O(N).
//!
//! The op's output is `[N, K]` (log-prob and extras, one node); the upstream gradient arrives
//! `[N, K]` as well, zero in the columns nothing differentiated (the detached extras, or an
//! entropy computed for logging only).

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
use super::{LinearSpec, RowStats, Spec, TokenLogpKernels, TokenLogpOps};

/// Backward step of the fused op; one differentiable parent, the logits.
#[derive(Debug)]
struct TokenLogpsBackward;

/// What the logits step keeps: logits, row-targets, row max, row log-sum, entropy, options.
type LogitsState<B> = (
    FloatTensor<B>,
    IntTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Spec,
);

impl<B: Backend + TokenLogpKernels> Backward<B, 1> for TokenLogpsBackward {
    type State = LogitsState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (logits, targets, max, log_sum, entropy, spec) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let stats = RowStats {
                max,
                log_sum,
                entropy,
            };
            B::token_logps_backward(logits, targets, stats, grad, spec)
        });
    }
}

/// Backward step of the fused LM head: hidden states, weight and bias (a placeholder that
/// requires no gradient when the head has none).
#[derive(Debug)]
struct LinearBackward;

impl<B: Backend + TokenLogpKernels> Backward<B, 3> for LinearBackward {
    type State = Saved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let [hidden_node, weight_node, bias_node] = ops.parents;
        let want = [
            hidden_node.is_some(),
            weight_node.is_some(),
            bias_node.is_some(),
        ];
        let [dh, dw, db] = linear::backward::<B>(ops.state, grad, want);
        for (node, grad) in [(hidden_node, dh), (weight_node, dw), (bias_node, db)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The linear forward, its state when tracked.
fn linear_tracked<B: Backend + TokenLogpKernels>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    targets: IntTensor<B>,
    head: LinearSpec,
) -> (Saved<B>, FloatTensor<B>) {
    let (out, stats) = linear::forward::<B>(
        hidden.clone(),
        weight.clone(),
        bias.clone(),
        targets.clone(),
        head,
    );
    let saved = Saved {
        hidden,
        weight,
        bias,
        targets,
        stats,
        head,
    };
    (saved, out)
}

impl<B: Backend + TokenLogpKernels, C: CheckpointStrategy> TokenLogpOps for Autodiff<B, C> {
    fn token_logps(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        match TokenLogpsBackward
            .prepare::<C>([logits.node()])
            // Recomputing the forward would cost a full pass over the logits: keep the state.
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let logits = logits.into_primitive();
                let (out, stats) = B::token_logps_forward(logits.clone(), targets.clone(), spec);
                let state = (
                    logits,
                    targets,
                    stats.max,
                    stats.log_sum,
                    stats.entropy,
                    spec,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::token_logps_forward(logits.into_primitive(), targets, spec).0)
            }
        }
    }

    fn linear_token_logps(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
        head: LinearSpec,
    ) -> FloatTensor<Self> {
        match LinearBackward
            .prepare::<C>([hidden.node(), weight.node(), bias.node()])
            // Keep the O(N) row stats rather than redo the whole forward.
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (h, w) = (hidden.into_primitive(), weight.into_primitive());
                let b = head.has_bias.then(|| bias.into_primitive());
                let (saved, out) = linear_tracked::<B>(h, w, b, targets, head);
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => {
                let b = head.has_bias.then(|| bias.into_primitive());
                let (h, w) = (hidden.into_primitive(), weight.into_primitive());
                prep.finish(linear::forward::<B>(h, w, b, targets, head).0)
            }
        }
    }
}
