//! Step totals: a batch split into micro-batches of unequal sizes (or shards), each given the
//! whole step's totals, gives the whole batch's loss (the micro-batches' losses summed), its
//! gradients with respect to the logits, and its metrics (merged), for every loss, with and
//! without example weights, on every device. The step's totals come from the labels here, on
//! the host; `StepTotals::of` is checked against the same count from a collator.

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_preference::data::PreferenceExample;
use burn_preference::loss::{BcoLoss, CpoLoss, KtoLoss, OrpoLoss, kto_reference_point};
use burn_preference::metrics::Metrics;
use burn_preference::prelude::*;

use crate::assert_error;
use crate::common::gathered;
use crate::common::reference::as_f64;
use crate::common::{assert_close, autodiff_devices, floats, ints, to_vec};

const PROMPTS: usize = 5;
const TIME: usize = 6;
/// Two ways to split the five prompts: uneven micro-batches, and a shard of one.
const SPLITS: [&[&[usize]]; 2] = [&[&[0, 1], &[2, 3, 4]], &[&[3], &[0, 1, 2, 4]]];
const WEIGHTS: [f32; PROMPTS] = [1.0, 0.5, 2.0, 0.0, 1.5];

/// The `2B` rows (chosen first) of prompts `prompts` of the whole batch.
fn rows(prompts: &[usize]) -> Vec<i64> {
    let chosen = prompts.iter().map(|&p| p as i64);
    let rejected = prompts.iter().map(|&p| (PROMPTS + p) as i64);
    chosen.chain(rejected).collect()
}

/// The chosen completions' tokens the gatherer counts, over all prompts: labels ≥ 0 after a
/// row's first position.
fn tokens(labels: &[i64]) -> f64 {
    (0..PROMPTS)
        .flat_map(|r| (1..TIME).map(move |t| labels[r * TIME + t]))
        .filter(|l| *l >= 0)
        .count() as f64
}

/// The whole batch's inputs on one device: the policy's logits (the leaf the gradients are
/// taken of), the reference's, the labels.
struct Whole {
    logits: Tensor<3>,
    reference: Tensor<3>,
    labels: Tensor<2, Int>,
    host_labels: Vec<i64>,
}

impl Whole {
    fn new(device: &Device) -> Self {
        let host_labels = gathered::labels(2 * PROMPTS, TIME);
        Self {
            logits: gathered::logits(2 * PROMPTS, TIME, 0.3, device).require_grad(),
            reference: gathered::logits(2 * PROMPTS, TIME, 2.1, device),
            labels: ints(host_labels.clone(), [2 * PROMPTS, TIME], device),
            host_labels,
        }
    }

    /// The paired batch of `prompts` (all of them for the whole batch), with the inputs every
    /// loss below reads: reference, per-token log-probs, lengths, grades, offsets, weights.
    fn paired(
        &self,
        prompts: &[usize],
        graded: bool,
        weighted: bool,
        step: Option<StepTotals>,
    ) -> PairedBatch {
        let device = self.logits.device();
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(rows(prompts), [2 * prompts.len()]),
            &device,
        );
        let gatherer = gathered::gatherer(LogpReduction::Sum, true);
        let labels = self.labels.clone().select(0, index.clone());
        let policy = gatherer
            .forward(
                self.logits.clone().select(0, index.clone()),
                labels.clone(),
                None,
            )
            .unwrap();
        let reference = gatherer
            .forward(
                self.reference.clone().select(0, index),
                labels.clone(),
                None,
            )
            .unwrap();
        let pairs = prompts.len();
        let pick = |values: &dyn Fn(usize) -> f32| {
            floats(
                prompts.iter().map(|&p| values(p)).collect(),
                [pairs],
                &device,
            )
        };
        let grades = floats(
            prompts
                .iter()
                .flat_map(|&p| [2.0 + p as f32 * 0.5, 1.0])
                .collect(),
            [pairs, 2],
            &device,
        );
        let mut batch = PairedBatch::from_output(policy, BatchLayout::ChosenFirst { pairs })
            .unwrap()
            .with_reference_output(reference)
            .unwrap()
            .with_completion_labels(labels)
            .unwrap()
            .with_offsets(pick(&|p| 0.3 * p as f32 - 0.5))
            .unwrap();
        // Grades for LiPO (they rank the pairs as their columns already are).
        if graded {
            batch = batch.with_scores(grades).unwrap();
        }
        if weighted {
            batch = batch.with_weights(pick(&|p| WEIGHTS[p])).unwrap();
        }
        match step {
            Some(step) => batch.with_step(step).unwrap(),
            None => batch,
        }
    }

    fn step(&self, weighted: bool) -> StepTotals {
        let examples = if weighted {
            WEIGHTS.iter().map(|w| f64::from(*w)).sum()
        } else {
            PROMPTS as f64
        };
        StepTotals::new(examples, tokens(&self.host_labels))
    }
}

/// The logits' gradient of `loss`.
fn grad(loss: Tensor<1>, leaf: &Tensor<3>) -> Vec<f32> {
    let grads = loss.backward();
    to_vec(leaf.grad(&grads).expect("gradient of the logits"))
}

fn log(metrics: Metrics) -> Vec<(&'static str, f64)> {
    metrics.log().unwrap()
}

/// Asserts the step's metrics (merged) equal the whole batch's, name by name.
fn assert_same_metrics(device: &str, what: &str, step: Metrics, whole: Metrics) {
    let (step, whole) = (log(step), log(whole));
    assert_eq!(
        step.iter().map(|m| m.0).collect::<Vec<_>>(),
        whole.iter().map(|m| m.0).collect::<Vec<_>>(),
        "[{device}] {what}: metric names"
    );
    for ((name, s), (_, w)) in step.iter().zip(&whole) {
        assert_close(
            device,
            &format!("{what} {name}"),
            &[*s as f32],
            &[*w],
            1e-5,
            1e-6,
        );
    }
}

type Forward = Box<dyn Fn(PairedBatch) -> burn_preference::Result<LossOutput>>;

/// Every paired loss: its name, whether it reads grades (LiPO), its forward.
fn paired_losses() -> Vec<(&'static str, bool, Forward)> {
    fn boxed<L: PreferenceLoss<Batch = PairedBatch> + 'static>(loss: L) -> Forward {
        Box::new(move |batch| loss.forward(batch))
    }
    let dpo = |types: Vec<DpoLossType>| DpoConfig::new().with_loss_types(types);
    use DpoLossType as T;
    vec![
        (
            "sigmoid",
            false,
            boxed(dpo(vec![T::Sigmoid]).init().unwrap()),
        ),
        ("ipo", false, boxed(dpo(vec![T::Ipo]).init().unwrap())),
        (
            "sigmoid_norm",
            false,
            boxed(dpo(vec![T::SigmoidNorm]).init().unwrap()),
        ),
        ("hinge", false, boxed(dpo(vec![T::Hinge]).init().unwrap())),
        (
            "nca_pair",
            false,
            boxed(dpo(vec![T::NcaPair]).init().unwrap()),
        ),
        (
            "sppo_hard",
            false,
            boxed(dpo(vec![T::SppoHard]).init().unwrap()),
        ),
        (
            "apo_zero",
            false,
            boxed(dpo(vec![T::ApoZero]).init().unwrap()),
        ),
        (
            "MPO sigmoid + bco_pair + sft",
            false,
            boxed(
                dpo(vec![T::Sigmoid, T::BcoPair, T::Sft])
                    .with_loss_weights(Some(vec![0.8, 0.2, 1.0]))
                    .init()
                    .unwrap(),
            ),
        ),
        (
            "WPO",
            false,
            boxed(
                dpo(vec![T::Sigmoid])
                    .with_use_weighting(true)
                    .init()
                    .unwrap(),
            ),
        ),
        (
            "LD-DPO",
            false,
            boxed(
                dpo(vec![T::Sigmoid])
                    .with_ld_alpha(Some(0.5))
                    .init()
                    .unwrap(),
            ),
        ),
        (
            "ΨPO identity",
            false,
            boxed(PsiPoConfig::new(Psi::Identity).init().unwrap()),
        ),
        ("RRHF", false, boxed(RrhfConfig::new().init().unwrap())),
        (
            "CPO + NLL",
            false,
            boxed::<CpoLoss>(CpoConfig::new().with_cpo_alpha(0.7).init().unwrap()),
        ),
        (
            "SimPO",
            false,
            boxed::<CpoLoss>(
                CpoConfig::new()
                    .with_loss_type(CpoLossType::Simpo)
                    .init()
                    .unwrap(),
            ),
        ),
        (
            "ORPO",
            false,
            boxed::<OrpoLoss>(OrpoConfig::new().init().unwrap()),
        ),
        ("DPOP", false, boxed(DpopConfig::new().init().unwrap())),
        ("R-DPO", false, boxed(RdpoConfig::new().init().unwrap())),
        ("ODPO", false, boxed(OdpoConfig::new().init().unwrap())),
        (
            "Plackett-Luce",
            false,
            boxed(PlackettLuceConfig::new().init().unwrap()),
        ),
        ("LiPO", true, boxed(LipoConfig::new().init().unwrap())),
        ("SimPER", false, boxed(SimperConfig::new().init().unwrap())),
    ]
}

#[test]
fn every_paired_loss_sums_over_micro_batches_to_the_whole_step() {
    for (device_name, device) in autodiff_devices() {
        let whole = Whole::new(&device);
        // Each loss once, with or without weights and with one of the splits, alternately:
        // the combinations are covered across the losses at a third of the cost.
        for (i, (name, graded, loss)) in paired_losses().into_iter().enumerate() {
            // On a GPU device (lavapipe on CI: every new shape compiles its kernels) the losses
            // with a token term, whose split is the one that differs; every loss on the CPUs.
            let gpu = !matches!(device_name, "flex" | "ndarray");
            if gpu && !name.contains("NLL") && !name.contains("sft") && name != "ORPO" {
                continue;
            }
            let weighted = i % 2 == 1;
            let split = SPLITS[(i / 2) % 2];
            let what = format!("{name} (weighted: {weighted})");
            let all: Vec<usize> = (0..PROMPTS).collect();
            let out = loss(whole.paired(&all, graded, weighted, None)).unwrap();
            let step = whole.step(weighted);
            let outs: Vec<LossOutput> = split
                .iter()
                .map(|m| loss(whole.paired(m, graded, weighted, Some(step))).unwrap())
                .collect();
            let total = outs.iter().map(|o| o.loss.clone()).reduce(|a, b| a.add(b));
            let grad_of = |loss: Tensor<1>| grad(loss, &whole.logits);
            let whole_loss = out.loss.clone();
            assert_sum_is_whole(
                device_name,
                &what,
                total.unwrap(),
                whole_loss,
                grad_of,
                1e-4,
            );
            let merged = outs.into_iter().map(|o| o.metrics).reduce(Metrics::merge);
            assert_same_metrics(device_name, &what, merged.unwrap(), out.metrics);
        }
    }
}

/// Asserts that the micro-batches' summed loss `total` is the whole batch's, and so is its
/// gradient (`grad_of` backpropagates a loss and reads the leaf's gradient).
fn assert_sum_is_whole(
    device: &str,
    what: &str,
    total: Tensor<1>,
    whole: Tensor<1>,
    grad_of: impl Fn(Tensor<1>) -> Vec<f32>,
    grad_rel: f64,
) {
    let expected = as_f64(&to_vec(whole.clone()));
    let loss_what = format!("{what} loss");
    assert_close(
        device,
        &loss_what,
        &to_vec(total.clone()),
        &expected,
        1e-5,
        1e-6,
    );
    let expected = as_f64(&grad_of(whole));
    assert_close(
        device,
        &format!("{what} grad"),
        &grad_of(total),
        &expected,
        grad_rel,
        1e-7,
    );
}

/// Unpaired examples: the policy's and reference's log-probs, labels, KL pairs.
fn unpaired(prompts: &[usize], policy: &Tensor<1>, device: &Device) -> UnpairedBatch {
    let n = prompts.len();
    let index = Tensor::<1, Int>::from_data(
        TensorData::new(prompts.iter().map(|&p| p as i64).collect::<Vec<_>>(), [n]),
        device,
    );
    let at = |values: Vec<f32>| floats(values, [PROMPTS], device).select(0, index.clone());
    let reference = at((0..PROMPTS).map(|p| -10.0 - p as f32 * 0.7).collect());
    let desirable = ints(
        prompts.iter().map(|&p| i64::from(p % 2 == 0)).collect(),
        [n],
        device,
    );
    let kl_policy = at((0..PROMPTS)
        .map(|p| -9.0 - (p as f32 * 1.3).sin())
        .collect());
    let kl_reference = at((0..PROMPTS).map(|p| -9.5 + p as f32 * 0.1).collect());
    UnpairedBatch::new(policy.clone().select(0, index), desirable)
        .unwrap()
        .with_reference(reference)
        .unwrap()
        .with_kl(kl_policy, kl_reference)
        .unwrap()
}

#[test]
fn kto_and_bco_with_the_steps_statistics_sum_to_the_whole_step() {
    for (device_name, device) in autodiff_devices() {
        let policy = floats(
            (0..PROMPTS).map(|p| -9.0 - p as f32 * 0.9).collect(),
            [PROMPTS],
            &device,
        )
        .require_grad();
        let all: Vec<usize> = (0..PROMPTS).collect();
        let leaf_grad = |loss: Tensor<1>| {
            let grads = loss.backward();
            to_vec(policy.grad(&grads).unwrap())
        };
        let kto: KtoLoss = KtoConfig::new().init().unwrap();
        let bco: BcoLoss = BcoConfig::new().init().unwrap();
        for split in SPLITS {
            let step = StepTotals::new(PROMPTS as f64, 0.0);
            // KTO: the reference point of the whole step, from the merged statistics.
            let whole = kto.forward(unpaired(&all, &policy, &device)).unwrap();
            let stat = split
                .iter()
                .map(|m| kto.kl_statistic(&unpaired(m, &policy, &device)).unwrap())
                .reduce(|a, b| a.merge(b))
                .unwrap();
            let z = kto_reference_point(&stat);
            let total = split
                .iter()
                .map(|m| {
                    let batch = unpaired(m, &policy, &device)
                        .with_step(step)
                        .unwrap()
                        .with_reference_point(z.clone())
                        .unwrap();
                    kto.forward(batch).unwrap().loss
                })
                .reduce(|a, b| a.add(b))
                .unwrap();
            assert_sum_is_whole(device_name, "KTO", total, whole.loss, leaf_grad, 1e-5);

            // BCO: δ moved once by the step's mean reward, then the same shift everywhere.
            let mut whole_state = BcoState::new();
            let whole = bco
                .forward_train(unpaired(&all, &policy, &device), &mut whole_state)
                .unwrap();
            let stat = split
                .iter()
                .map(|m| {
                    bco.reward_statistic(&unpaired(m, &policy, &device))
                        .unwrap()
                })
                .reduce(|a, b| a.merge(b))
                .unwrap();
            let mut state = BcoState::new();
            state.update_mean(stat.value());
            let total = split
                .iter()
                .map(|m| {
                    let batch = unpaired(m, &policy, &device)
                        .with_step(step)
                        .unwrap()
                        .with_reward_shift(state.delta(&device))
                        .unwrap();
                    bco.forward(batch).unwrap().loss
                })
                .reduce(|a, b| a.add(b))
                .unwrap();
            assert_sum_is_whole(device_name, "BCO", total, whole.loss, leaf_grad, 1e-5);
        }
    }
}

#[test]
fn losses_with_batch_wide_statistics_refuse_step_totals() {
    let (_, device) = autodiff_devices().remove(0);
    let whole = Whole::new(&device);
    let step = Some(whole.step(false));
    let batch = || whole.paired(&[0, 1], false, false, step);
    let dpo = |t| DpoConfig::new().with_loss_type(t).init().unwrap();
    for t in [DpoLossType::Aot, DpoLossType::AotUnpaired] {
        assert_error!(
            dpo(t).forward(batch()),
            PreferenceError::InvalidValue { arg: "step", .. }
        );
    }
    let wpo_sft = DpoConfig::new()
        .with_loss_types(vec![DpoLossType::Sigmoid, DpoLossType::Sft])
        .with_use_weighting(true)
        .init()
        .unwrap();
    assert_error!(
        wpo_sft.forward(batch()),
        PreferenceError::InvalidValue { arg: "step", .. }
    );
    let beta_dpo = BetaDpoConfig::new().init().unwrap();
    assert_error!(
        beta_dpo.forward_train(batch(), &mut BetaDpoState::new()),
        PreferenceError::InvalidValue { arg: "step", .. }
    );
    let policy = floats(vec![-9.0; PROMPTS], [PROMPTS], &device);
    let unpaired_step = || {
        unpaired(&[0, 1], &policy, &device)
            .with_step(StepTotals::new(5.0, 0.0))
            .unwrap()
    };
    // KTO with a step needs the step's reference point; BCO's training step folds one batch.
    assert_error!(
        KtoConfig::new().init().unwrap().forward(unpaired_step()),
        PreferenceError::InvalidValue { arg: "step", .. }
    );
    assert_error!(
        BcoConfig::new()
            .init()
            .unwrap()
            .forward_train(unpaired_step(), &mut BcoState::new()),
        PreferenceError::InvalidValue { arg: "step", .. }
    );
    assert_error!(
        batch().with_step(StepTotals::new(0.0, 1.0)),
        PreferenceError::OutOfRange {
            name: "step.examples",
            ..
        }
    );
    assert_error!(
        batch().with_step(StepTotals::new(2.0, f64::NAN)),
        PreferenceError::OutOfRange {
            name: "step.tokens",
            ..
        }
    );
}

#[test]
fn step_totals_count_the_prompts_and_the_chosen_tokens_the_gatherer_counts() {
    let collator = PreferenceCollatorConfig::new().init().unwrap();
    let example = |prompt: Vec<u32>, chosen: Vec<u32>| PreferenceExample {
        prompt,
        chosen,
        rejected: vec![9, 9, 9],
    };
    let first = vec![
        example(vec![1], vec![2, 3, 4]),
        example(vec![1, 2, 3], vec![4]),
    ];
    let second = vec![example(vec![5, 6], vec![7, 8])];
    let padded = [
        collator.pad(&first).unwrap(),
        collator.pad(&second).unwrap(),
    ];
    let packed = [
        collator.pack(&first, 16).unwrap(),
        collator.pack(&second, 16).unwrap(),
    ];
    let gatherer = SequenceLogpsConfig::new().init().unwrap();
    let (_, device) = autodiff_devices().remove(0);
    for batches in [padded, packed] {
        let step = StepTotals::of(&[&batches[0], &batches[1]]);
        assert_eq!(step.examples, 3.0);
        // The gatherer's own counts of the chosen rows, summed: the independent count.
        let mut counted = 0.0;
        for batch in &batches {
            let [rows, time] = batch.dims();
            let logits = Tensor::<3>::zeros([rows, time, 16], &device);
            let out = match batch.segments() {
                None => gatherer
                    .forward(logits, batch.labels(&device), None)
                    .unwrap(),
                Some(segments) => gatherer
                    .forward_packed(logits, batch.labels(&device), segments)
                    .unwrap(),
            };
            let counts = to_vec(out.counts);
            counted += counts[..counts.len() / 2]
                .iter()
                .map(|c| f64::from(*c))
                .sum::<f64>();
        }
        assert_eq!(step.tokens, counted);
        assert_eq!(counted, 3.0 + 1.0 + 2.0);
    }
}

#[test]
fn a_step_of_one_batch_is_the_batch() {
    let (device_name, device) = autodiff_devices().remove(0);
    let whole = Whole::new(&device);
    let all: Vec<usize> = (0..PROMPTS).collect();
    for (name, graded, loss) in paired_losses() {
        let batch = |step| whole.paired(&all, graded, true, step);
        let plain = to_vec(loss(batch(None)).unwrap().loss);
        let stepped = to_vec(loss(batch(Some(whole.step(true)))).unwrap().loss);
        let expected: Vec<f64> = plain.iter().map(|v| f64::from(*v)).collect();
        assert_close(device_name, name, &stepped, &expected, 1e-6, 1e-7);
    }
}
