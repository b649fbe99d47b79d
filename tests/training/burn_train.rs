//! burn-train's `Learner` with `grads_accumulation(4)` and micro-batches of a quarter step
//! (`StepLoader::with_micro_batches(4)`) trains the same model as without accumulation: the
//! same loss at every step, the same final parameters (examples/common/train_burn.rs).

use std::sync::atomic::Ordering;

use burn::tensor::Device;
use burn::train::metric::store::Split;

use crate::train_burn_example::{Run, fit, iterations, step_losses};
use crate::transformer_example::{Size, Transformer, make_data};

#[test]
fn accumulation_gives_the_loss_curve_of_whole_steps() {
    // 20 steps of 16 pairs; the accumulated run takes each as 4 micro-batches of 4 pairs.
    let (steps, batch) = (20, 16);
    let data = make_data(steps * batch, 8, 3);
    let device = Device::flex().autodiff();
    device.seed(3);
    let reference = Transformer::new(Size::TINY, &device);
    let run = |accumulation: usize| {
        let run = Run {
            batch,
            steps,
            accumulation,
            devices: vec![Device::flex()],
            learning_rate: 3e-3,
            seed: 5,
            directory: std::env::temp_dir().join(format!("burn-preference-test-acc{accumulation}")),
            record: Default::default(),
            optimizer_steps: Default::default(),
        };
        let result = fit(&reference, &data.train, &data.held_out, &run).unwrap();
        assert!(result.error.is_none(), "{:?}", result.error);
        (run, result.model)
    };
    let (whole, whole_model) = run(1);
    let (accumulated, accumulated_model) = run(4);

    // Accumulation happened: 4 iterations (micro-batches) per optimiser step.
    let iterations = |run: &Run| iterations(&run.record, Split::Train, "Loss").len();
    assert_eq!(iterations(&whole), steps);
    assert_eq!(iterations(&accumulated), 4 * steps);
    assert_eq!(whole.optimizer_steps.load(Ordering::SeqCst), steps);
    assert_eq!(accumulated.optimizer_steps.load(Ordering::SeqCst), steps);

    // The same loss at every step, to 1e-5 relative (f32 rounding through 20 Adam steps).
    let (a, b) = (
        step_losses(&whole.record, 1),
        step_losses(&accumulated.record, 4),
    );
    assert_eq!(a.len(), steps);
    let relative = a
        .iter()
        .zip(&b)
        .map(|(a, b)| (a - b).abs() / a.abs())
        .fold(0.0, f64::max);
    assert!(relative <= 1e-5, "{a:?}\n{b:?}");
    // The loss moved: the steps trained something.
    assert!((a[0] - a[steps - 1]).abs() > 1e-3, "{a:?}");

    // And the same final policy.
    let params = |model: &crate::train_burn_example::DpoModel| {
        model
            .policy
            .head_weight()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (p, q) = (params(&whole_model), params(&accumulated_model));
    let worst = p
        .iter()
        .zip(&q)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(worst <= 1e-5, "largest parameter difference {worst}");
}

#[test]
fn the_loader_shares_every_step_among_devices_with_the_step_totals() {
    use std::sync::Arc;

    use burn::data::dataloader::split::split_dataloader;
    use burn::data::dataset::InMemDataset;
    use burn_preference::train::StepLoader;

    // 23 pairs, steps of 10 (the last of 3), 2 devices × 2 micro-batches per step.
    let data = make_data(23, 1, 9).train;
    let collator = crate::transformer_example::collator().unwrap();
    let loader = StepLoader::new(Arc::new(InMemDataset::new(data.clone())), 10, move |e| {
        collator.pad(e)
    })
    .unwrap()
    .with_micro_batches(2)
    .unwrap()
    .with_devices(2)
    .unwrap()
    .with_shuffle(1);
    let shards = split_dataloader(Arc::new(loader), &[Device::flex(), Device::flex()]);
    let micro: Vec<Vec<_>> = shards
        .iter()
        .map(|s| s.iter().map(|m| m.unwrap()).collect())
        .collect();
    // Steps of 10, 10, 3 pairs: 2 + 2 + 2 micro-batches on device 0, 2 + 2 + 1 on device 1.
    assert_eq!((micro[0].len(), micro[1].len()), (6, 5));
    let pairs =
        |d: usize| -> Vec<usize> { micro[d].iter().map(|m| m.batch.dims()[0] / 2).collect() };
    assert_eq!(pairs(0), [3, 2, 3, 2, 1, 1]);
    assert_eq!(pairs(1), [3, 2, 3, 2, 1]);
    // Every micro-batch of a step carries the whole step's totals, on both devices.
    let steps = |d: usize| -> Vec<f64> { micro[d].iter().map(|m| m.step.examples).collect() };
    assert_eq!(steps(0), [10.0, 10.0, 10.0, 10.0, 3.0, 3.0]);
    assert_eq!(steps(1), [10.0, 10.0, 10.0, 10.0, 3.0]);
    assert_eq!(micro[0][0].step, micro[1][1].step);
    assert_eq!(shards.iter().map(|s| s.num_items()).sum::<usize>(), 23);
}
