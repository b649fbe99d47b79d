//! Numerical limits of the losses: infinite log-ratios give the mathematical limit, not NaN.
//! (The losses' values and gradients at ±1e4 are checked in each loss's own file.)

use burn::tensor::Tensor;
use burn_preference::prelude::*;

use crate::common::cases::{f1, f2};
use crate::common::reference::{sigmoid, softplus};
use crate::common::{assert_close, autodiff_devices, floats, to_vec};

/// A log-ratio of +inf on the chosen side (a reference that gives the chosen completion
/// probability 0) must not compute `softplus(−inf)` as `−inf·0 = NaN`: its true loss is 0 with
/// zero gradient; −inf on the chosen side is a loss of +inf, and the other pairs of the batch
/// keep finite gradients.
#[test]
fn infinite_log_ratios_give_the_limit_not_nan() {
    let inf = f32::INFINITY;
    for (name, device) in autodiff_devices() {
        let policy_chosen = f1(&[-1.0, -1.0, -2.0], &device).require_grad();
        let policy_rejected = f1(&[-1.5, -1.5, -1.0], &device).require_grad();
        let reference = Tensor::stack(
            vec![f1(&[-inf, -1.0, -1.0], &device), f1(&[-1.0; 3], &device)],
            1,
        );
        let batch = PairedBatch::new(Tensor::stack(
            vec![policy_chosen.clone(), policy_rejected.clone()],
            1,
        ))
        .and_then(|b| b.with_reference(reference))
        .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let out = DpoConfig::new()
            .init()
            .and_then(|l| l.forward(batch))
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let beta = 0.1;
        // h = ρ_w − ρ_l: +inf, 0 − (−0.5) = 0.5, −1 − 0 = −1.
        let expected = [0.0, softplus(-beta * 0.5), softplus(beta)];
        assert_close(
            name,
            "losses",
            &to_vec(out.losses.clone()),
            &expected,
            1e-6,
            1e-7,
        );
        let grads = out.loss.backward();
        let chosen_grad = to_vec(policy_chosen.grad(&grads).expect("chosen gradient"));
        let slope = |h: f64| -beta * sigmoid(-beta * h) / 3.0;
        assert_close(
            name,
            "∂L/∂chosen",
            &chosen_grad,
            &[0.0, slope(0.5), slope(-1.0)],
            1e-5,
            1e-8,
        );
        let rejected_grad = to_vec(policy_rejected.grad(&grads).expect("rejected gradient"));
        assert_close(
            name,
            "∂L/∂rejected",
            &rejected_grad,
            &[0.0, -slope(0.5), -slope(-1.0)],
            1e-5,
            1e-8,
        );

        // The same through a ranked list, whose diagonal `ρ_i − ρ_i` is `inf − inf`.
        let policy = f2(&[-1.0, -1.5, -2.0, -1.0], [2, 2], &device).require_grad();
        let batch = PairedBatch::new(policy.clone())
            .and_then(|b| b.with_scores(f2(&[1.0, 0.0, 1.0, 0.0], [2, 2], &device)))
            .and_then(|b| b.with_reference(f2(&[-inf, -1.0, -1.0, -1.0], [2, 2], &device)))
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        let out = DpoConfig::new()
            .init()
            .and_then(|l| l.forward(batch))
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        assert_close(
            name,
            "ranked losses",
            &to_vec(out.losses.clone()),
            &[0.0, softplus(beta)],
            1e-6,
            1e-7,
        );
        let grad = to_vec(policy.grad(&out.loss.backward()).expect("policy gradient"));
        let s = -beta * sigmoid(beta) / 2.0;
        assert_close(
            name,
            "ranked ∂L/∂policy",
            &grad,
            &[0.0, 0.0, s, -s],
            1e-5,
            1e-8,
        );
    }
}

/// DPOP's penalty of a −inf log-ratio (a response the policy gives probability 0) is inf: on
/// the chosen side the loss is +inf with the finite limit gradient `−β(1 + λ)` on it, on the
/// rejected side the loss is 0 with zero gradient, as DPO's; never a NaN gradient (an inf
/// penalty times 0 off the pairs).
#[test]
fn dpop_infinite_log_ratios_give_the_limit_not_nan() {
    let (beta, lambda) = (0.3, 50.0);
    let ninf = f32::NEG_INFINITY;
    // The second pair in both batches: ρ_w = −1, ρ_l = −0.5, z = β(−0.5 − λ) = −15.15.
    let z = -beta * (0.5 + lambda);
    let second = [
        -sigmoid(-z) * beta * (1.0 + lambda) / 2.0,
        sigmoid(-z) * beta / 2.0,
    ];
    for (name, device) in autodiff_devices() {
        for (policy, first_loss, first_grad) in [
            ([-1.0, ninf], 0.0, [0.0, 0.0]),
            (
                [ninf, -1.0],
                f64::INFINITY,
                [-beta * (1.0 + lambda) / 2.0, beta / 2.0],
            ),
        ] {
            let policy =
                floats(vec![policy[0], policy[1], -2.0, -1.5], [2, 2], &device).require_grad();
            let out = PairedBatch::new(policy.clone())
                .and_then(|b| b.with_reference(floats(vec![-1.0; 4], [2, 2], &device)))
                .and_then(|b| {
                    DpopConfig::new()
                        .with_beta(beta)
                        .with_lambda(lambda)
                        .init()?
                        .forward(b)
                })
                .unwrap_or_else(|e| panic!("[{name}] {e}"));
            let losses = to_vec(out.losses.clone());
            assert_eq!(f64::from(losses[0]), first_loss, "[{name}] DPOP losses[0]");
            assert_close(
                name,
                "DPOP losses",
                &losses[1..],
                &[softplus(-z)],
                1e-6,
                1e-7,
            );
            let grad = to_vec(policy.grad(&out.loss.backward()).expect("policy gradient"));
            let expected = [first_grad[0], first_grad[1], second[0], second[1]];
            assert_close(name, "DPOP ∂L/∂policy", &grad, &expected, 1e-5, 1e-8);
        }
    }
}
