//! The test oracle of the fused op: the textbook tensor-op path, also taken where no fused
//! kernel serves the device.

use burn::tensor::{Int, Tensor};

use super::{SequenceLogps, SequenceLogpsOutput, widen};
use crate::error;
use crate::fused::Spec;

impl SequenceLogps {
    /// The straightforward tensor-op path (transform, max, gather, `exp(z − m)`, sum, log, the
    /// extras from the full softmax, and burn's autodiff of those), kept as the test oracle for
    /// the fused path that [`forward`](Self::forward) takes. Same contract and results.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    #[doc(hidden)]
    pub fn forward_unfused(
        &self,
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        mask: Option<Tensor<2, Int>>,
    ) -> error::Result<SequenceLogpsOutput> {
        self.same_devices("logits", logits.device(), &labels, mask.as_ref(), &[])?;
        let targets = self.row_targets("logits", logits.dims(), labels, mask)?;
        let [batch, time, vocab] = logits.dims();
        let rows = widen(logits).reshape([batch * time, vocab]);
        let out = oracle_rows(rows, targets.targets.clone(), &self.spec);
        Ok(self.finish(out, targets))
    }
}

/// The oracle for the fused op on `[N, V]` rows at row-targets `[N]`, written the textbook way
/// with tensor ops (burn's autodiff differentiates it): transform, `log_softmax` from a
/// detached max (the gradient through `m` cancels exactly), gather, and the extras from the full
/// softmax `p`. Builds several `[N, V]` temporaries. Returns `[N, K]`, 0 on invalid rows.
pub(crate) fn oracle_rows(logits: Tensor<2>, targets: Tensor<1, Int>, spec: &Spec) -> Tensor<2> {
    let [n, v] = logits.dims();
    let t = spec.transform;
    let mut z = logits.mul_scalar(t.scale);
    if let Some(cap) = t.softcap {
        z = z.div_scalar(cap).tanh().mul_scalar(cap);
    }
    let z = z.mul_scalar(t.inv_temperature);
    let invalid = targets
        .clone()
        .lower_elem(0)
        .bool_or(targets.clone().greater_equal_elem(v as i64));
    let safe = targets.mask_fill(invalid.clone(), 0).reshape([n, 1]);
    let max = z.clone().max_dim(1).detach();
    let shifted = z.clone().sub(max.clone());
    let log_p = shifted.clone().sub(shifted.exp().sum_dim(1).log());
    let mut columns = vec![log_p.clone().gather(1, safe.clone())];
    let p = log_p.clone().exp();
    if spec.extras.entropy {
        // 0 · log 0 = 0
        let terms = p
            .clone()
            .mul(log_p)
            .mask_fill(p.clone().equal_elem(0.0), 0.0);
        columns.push(terms.sum_dim(1).neg());
    }
    if spec.extras.log_sum_sq {
        columns.push(p.clone().mul(p).sum_dim(1).log());
    }
    if spec.extras.mean {
        columns.push(z.clone().mean_dim(1));
    }
    if spec.extras.top1 {
        let index = Tensor::<1, Int>::arange(0..v as i64, &z.device())
            .reshape([1, v])
            .expand([n, v]);
        let not_before = index.greater_equal(safe.clone().expand([n, v]));
        let before = z
            .clone()
            .mask_fill(not_before, f32::NEG_INFINITY)
            .max_dim(1);
        let picked = z.gather(1, safe);
        let top = picked
            .clone()
            .greater_equal(max)
            .bool_and(picked.greater(before));
        columns.push(top.float());
    }
    let k = columns.len();
    Tensor::cat(columns, 1).mask_fill(invalid.reshape([n, 1]).expand([n, k]), 0.0)
}
