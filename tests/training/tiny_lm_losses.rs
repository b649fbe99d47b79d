//! The `compare_losses` example's training loop (examples/common/methods.rs), shortened: a few
//! full-batch steps of each loss added in 0.3 on the tiny LM, on every device. Every step's
//! loss and gradients are finite and the loss falls; per-prompt weights change the loss and
//! still train.

use burn::tensor::Device;
use burn_preference::prelude::*;

use crate::common;
use crate::digits::{Setup, Task};
use crate::methods::{self, Method, Run, Schedule};

const LOSSES: [Method; 7] = [
    Method::Dpop,
    Method::BetaDpo,
    Method::Rdpo,
    Method::Odpo,
    Method::PlackettLuce,
    Method::Lipo,
    Method::Simper,
];

/// Eight prompts, a reference left at its random start: each step sees the whole training set.
const SETUP: Setup = Setup {
    sft_rows: 0,
    sft_steps: 0,
    train_prompts: 8,
    held_out_prompts: 8,
    flip_rate: 0.2,
};

/// Two steps: the second step's loss is after one update.
const SCHEDULE: Schedule = Schedule {
    steps: 2,
    batch: 8,
    learning_rate: 1e-2,
    eval_every: 2,
};

/// The loss also trained with per-prompt weights.
const WEIGHTED: Method = Method::PlackettLuce;

fn train(method: Method, task: &Task, weights: Option<&[f32]>, device: &Device) -> Run {
    methods::train(method, task, SCHEDULE, weights, device, || {}).unwrap()
}

/// β-DPO's evaluation loss (DPO at β₀ on every pair, no filter) on the whole training set: its
/// training loss is over a random subset at a β that changes every step.
fn beta_dpo_loss(task: &Task, model: &crate::tiny_lm::TinyLm, device: &Device) -> f32 {
    let prompts: Vec<usize> = (0..task.prompts()).collect();
    let batch = task.pair_batch(model, &prompts, device).unwrap();
    BetaDpoConfig::new()
        .init()
        .unwrap()
        .forward(batch)
        .unwrap()
        .loss
        .into_scalar()
}

fn assert_trains(name: &str, what: &str, run: &Run, falls: (f32, f32)) {
    let losses = &run.losses;
    assert_eq!(losses.len(), SCHEDULE.steps, "[{name}] {what}");
    assert_eq!(
        run.nonfinite_steps, 0,
        "[{name}] {what}: NaN or inf in the loss or gradients, losses {losses:?}"
    );
    assert!(
        run.history.iter().all(|p| p.kl.is_finite()),
        "[{name}] {what}: held-out KL not finite"
    );
    assert!(
        falls.1 < falls.0,
        "[{name}] {what}: the loss does not fall: {} → {} (losses {losses:?})",
        falls.0,
        falls.1
    );
}

#[test]
fn a_few_steps_of_every_new_loss_are_finite_and_lower_the_loss() {
    for (name, device) in common::autodiff_devices() {
        device.seed(5);
        let task = Task::new(1, SETUP, &device).unwrap();
        let mut plain_losses = Vec::new();
        for method in LOSSES {
            let run = train(method, &task, None, &device);
            let falls = if method == Method::BetaDpo {
                (
                    beta_dpo_loss(&task, &task.reference, &device),
                    beta_dpo_loss(&task, &run.model, &device),
                )
            } else {
                // Same batch every step.
                (run.losses[0], run.losses[SCHEDULE.steps - 1])
            };
            assert_trains(name, method.name(), &run, falls);
            if method == WEIGHTED {
                plain_losses = run.losses;
            }
        }

        // Weights 0, 1, 2, 0, …: a prompt of weight 0 is dropped, the loss is their weighted
        // mean, so it differs from the plain mean once the prompts' losses differ (at the start
        // every ρ is 0 and every prompt's loss is log 4!).
        let weights: Vec<f32> = (0..SETUP.train_prompts).map(|p| (p % 3) as f32).collect();
        let weighted = train(WEIGHTED, &task, Some(&weights), &device);
        let what = format!("{} with weights", WEIGHTED.name());
        assert_trains(
            name,
            &what,
            &weighted,
            (weighted.losses[0], weighted.losses[SCHEDULE.steps - 1]),
        );
        let last = SCHEDULE.steps - 1;
        assert!(
            (weighted.losses[last] - plain_losses[last]).abs() > 1e-4,
            "[{name}] {what}: the weights do not change the loss ({:?} and {plain_losses:?})",
            weighted.losses,
        );
    }
}
