//! The reference model at scale: precomputed reference log-probs give the loss and gradients of
//! the live reference, and TR-DPO's update mixes the policy into the reference as
//! `α·π + (1 − α)·π_ref`, checked against the mix computed by hand, on every device.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::Gradients;
use burn::tensor::{Device, Tensor};
use burn_preference::data::Collated;
use burn_preference::logps::{SequenceLogps, SequenceLogpsOutput};
use burn_preference::prelude::*;
use burn_preference::reference::{PrecomputedReference, ReferenceSyncConfig, mix_reference};

use crate::assert_error;
use crate::common::{self, assert_close, autodiff_devices, devices};
use crate::transformer_example::{VOCAB, collator, make_data};

/// A bigram language model: token embedding, then the LM head. Small enough for every device
/// in a debug build; the store's round trip does not depend on the model.
type Bigram = (Embedding, Linear);

fn bigram(device: &Device) -> Bigram {
    (
        EmbeddingConfig::new(VOCAB, 8).init(device),
        LinearConfig::new(8, VOCAB).init(device),
    )
}

fn sequence_logps(
    model: &Bigram,
    gatherer: &SequenceLogps,
    batch: &Collated,
    device: &Device,
) -> SequenceLogpsOutput {
    let logits = model.1.forward(model.0.forward(batch.input_ids(device)));
    gatherer
        .forward(logits, batch.labels(device), None)
        .unwrap()
}

/// Every float parameter's values, in visiting order.
#[derive(Default)]
struct Values(Vec<Vec<f32>>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(common::to_vec(param.val()));
    }
}

fn values<M: Module>(module: &M) -> Vec<Vec<f32>> {
    let mut values = Values::default();
    module.visit(&mut values);
    values.0
}

/// Every float parameter's gradient, flattened into one vector in visiting order.
struct GradValues<'a>(&'a Gradients, Vec<f32>);

impl ModuleVisitor for GradValues<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = param
            .val()
            .grad(self.0)
            .expect("every parameter has a gradient");
        self.1.extend(common::to_vec(grad));
    }
}

#[test]
fn precomputed_references_give_the_live_loss_and_gradients() {
    for (name, device) in autodiff_devices() {
        let plain = device.clone().inner();
        let reference = bigram(&plain);
        let policy = bigram(&device);
        let data = make_data(8, 0, 17);
        let collator = collator().unwrap();
        let gatherer = SequenceLogpsConfig::new().init().unwrap();
        let batches: Vec<(Vec<u64>, _)> = data
            .train
            .chunks(4)
            .enumerate()
            .map(|(i, chunk)| {
                let ids = (0..chunk.len() as u64).map(|k| 4 * i as u64 + k).collect();
                (ids, collator.pad(chunk).unwrap())
            })
            .collect();

        // The precompute pass, once, in reverse order: the store is keyed, not positional.
        let mut store = PrecomputedReference::new();
        for (ids, batch) in batches.iter().rev() {
            let out = sequence_logps(&reference, &gatherer, batch, &plain);
            store.insert_output(ids, &out, batch.layout()).unwrap();
        }
        assert_eq!((store.len(), store.candidates()), (8, Some(2)), "[{name}]");
        // Through serde, as a run that loads it from disk sees it.
        let store: PrecomputedReference =
            serde_json::from_str(&serde_json::to_string(&store).unwrap()).unwrap();

        let loss = DpoConfig::new().init().unwrap();
        for (ids, batch) in &batches {
            let run = |reference_of: &dyn Fn(&SequenceLogpsOutput) -> PairedBatch| {
                let out = sequence_logps(&policy, &gatherer, batch, &device);
                let loss = loss.forward(reference_of(&out)).unwrap().loss;
                let grads = loss.backward();
                let mut gradients = GradValues(&grads, Vec::new());
                policy.visit(&mut gradients);
                (common::to_vec(loss), gradients.1)
            };
            let live = run(&|out| {
                let reference_out = sequence_logps(&reference, &gatherer, batch, &plain);
                PairedBatch::from_output(out.clone(), batch.layout())
                    .unwrap()
                    .with_reference_output(reference_out)
                    .unwrap()
            });
            let stored = run(&|out| {
                PairedBatch::from_output(out.clone(), batch.layout())
                    .unwrap()
                    .with_reference(store.get(ids, &device).unwrap())
                    .unwrap()
            });
            let expected = |v: &[f32]| v.iter().map(|x| f64::from(*x)).collect::<Vec<_>>();
            assert_close(name, "loss", &stored.0, &expected(&live.0), 1e-6, 1e-7);
            assert_close(
                name,
                "parameter gradients",
                &stored.1,
                &expected(&live.1),
                1e-5,
                1e-8,
            );
        }
    }
}

#[test]
fn the_store_refuses_what_it_cannot_hold() {
    let (name, device) = devices().remove(0);
    let mut store = PrecomputedReference::new();
    let pairs = |v: [[f32; 2]; 1]| Tensor::<2>::from_floats(v, &device);
    store.insert(&[1], pairs([[-1.0, -2.0]])).unwrap();
    let three = Tensor::<2>::from_floats([[-1.0, -2.0, -3.0]], &device);
    assert_error!(
        store.insert(&[2], three),
        PreferenceError::Shape { arg: "logps", .. }
    );
    assert_error!(
        store.insert(&[2, 3], pairs([[-1.0, -2.0]])),
        PreferenceError::BatchMismatch { .. }
    );
    assert_error!(
        store.insert(&[2], pairs([[f32::NAN, -2.0]])),
        PreferenceError::NonFinite { arg: "logps", .. }
    );
    assert_error!(
        store.get(&[1, 9], &device),
        PreferenceError::InvalidValue { arg: "ids", .. }
    );
    assert!(
        !store.contains(2),
        "[{name}] a refused insert stores nothing"
    );
    // A later insert of a stored id overwrites it.
    store.insert(&[1], pairs([[-5.0, -6.0]])).unwrap();
    assert_eq!(
        common::to_vec(store.get(&[1], &device).unwrap()),
        [-5.0, -6.0]
    );
}

#[test]
fn tr_dpo_mixes_the_policy_into_the_reference_every_tau_steps() {
    for (name, device) in devices() {
        let policy = LinearConfig::new(3, 2).init(&device);
        let start = LinearConfig::new(3, 2).init(&device);
        let alpha = 0.6;
        let sync = ReferenceSyncConfig::new()
            .with_ref_model_mixup_alpha(alpha)
            .with_ref_model_sync_steps(3)
            .init()
            .unwrap();
        let mut reference = start.clone();
        let mut expected: Vec<Vec<f64>> = values(&start)
            .iter()
            .map(|p| p.iter().map(|x| f64::from(*x)).collect())
            .collect();
        for step in 1..=7u64 {
            let synced = sync.after_step(step, &mut reference, &policy).unwrap();
            assert_eq!(synced, step % 3 == 0, "[{name}] step {step}");
            if synced {
                for (e, p) in expected.iter_mut().zip(values(&policy)) {
                    for (e, p) in e.iter_mut().zip(p) {
                        *e = alpha * f64::from(p) + (1.0 - alpha) * *e;
                    }
                }
            }
        }
        for (actual, expected) in values(&reference).iter().zip(&expected) {
            assert_close(name, "mixed parameter", actual, expected, 1e-6, 1e-7);
        }
        // The policy is untouched.
        assert_eq!(values(&policy), values(&policy.clone()));
    }
}

#[test]
fn tr_dpo_refuses_another_architecture_and_bad_settings() {
    let (_, device) = devices().remove(0);
    let reference = LinearConfig::new(3, 2).init(&device);
    let other = LinearConfig::new(3, 4).init(&device);
    assert_error!(
        mix_reference(&reference, &other, 0.5),
        PreferenceError::Shape { arg: "policy", .. }
    );
    assert_error!(
        ReferenceSyncConfig::new()
            .with_ref_model_mixup_alpha(0.0)
            .init(),
        PreferenceError::OutOfRange {
            name: "ref_model_mixup_alpha",
            ..
        }
    );
    assert_error!(
        ReferenceSyncConfig::new()
            .with_ref_model_sync_steps(0)
            .init(),
        PreferenceError::OutOfRange {
            name: "ref_model_sync_steps",
            ..
        }
    );
    // TRL's keys load directly; the others are ignored.
    let config: ReferenceSyncConfig = serde_json::from_str(
        r#"{"ref_model_mixup_alpha": 0.9, "ref_model_sync_steps": 64, "beta": 0.1}"#,
    )
    .unwrap();
    assert_eq!(
        config,
        ReferenceSyncConfig::new()
            .with_ref_model_mixup_alpha(0.9)
            .with_ref_model_sync_steps(64)
    );
}
