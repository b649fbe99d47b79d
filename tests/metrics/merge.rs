//! Metrics aggregate exactly: the `Metrics::merge` of two micro-batches' metrics logs what the
//! whole batch's metrics log (sums and counts add; means of means would not), and `log()`
//! reads the device once.

use burn::tensor::{Device, Int, Tensor};
use burn_preference::diagnostics::host_reads;
use burn_preference::prelude::*;

use crate::common::gathered::{gatherer, labels, logits};
use crate::common::{floats, ints};

const TIME: usize = 5;

/// Logs `metrics`, asserting the one host read.
fn log_once(device: &str, what: &str, metrics: &Metrics) -> Vec<(&'static str, f64)> {
    let before = host_reads();
    let logged = metrics.log().unwrap();
    assert_eq!(
        host_reads() - before,
        1,
        "[{device}] {what}: log() reads once"
    );
    logged
}

fn assert_same(device: &str, what: &str, merged: &Metrics, whole: &Metrics) {
    let merged = log_once(device, what, merged);
    let whole = log_once(device, what, whole);
    let names = |v: &[(&'static str, f64)]| {
        let mut names: Vec<&str> = v.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names
    };
    assert_eq!(names(&merged), names(&whole), "[{device}] {what}: names");
    for (name, value) in &whole {
        let got = crate::common::logged(&merged, name).unwrap();
        // f32 sums of the same values in another order.
        let tol = 2e-6 * value.abs().max(1.0);
        assert!(
            (got - value).abs() <= tol,
            "[{device}] {what} {name}: merged {got}, whole {value}"
        );
    }
}

/// `rows` of the deterministic sequences (rows of `all_rows`), with `seed`'s logits.
fn gathered(
    rows: &[usize],
    all_rows: usize,
    seed: f32,
    extras: bool,
    device: &Device,
) -> burn_preference::logps::SequenceLogpsOutput {
    let index = ints(
        rows.iter().map(|&r| r as i64).collect(),
        [rows.len()],
        device,
    );
    let logits = logits(all_rows, TIME, seed, device).select(0, index.clone());
    let labels: Tensor<2, Int> =
        ints(labels(all_rows, TIME), [all_rows, TIME], device).select(0, index);
    gatherer(LogpReduction::Sum, extras)
        .forward(logits, labels, None)
        .unwrap()
}

#[test]
fn merged_micro_batches_log_the_whole_batch() {
    for (name, device) in crate::common::devices() {
        // DPO: 4 pairs with every per-token extra; micro-batches are pairs {0, 1} and {2, 3}.
        // Rows are chosen 0..4 then rejected 4..8.
        let dpo = DpoConfig::new().init().unwrap();
        let paired = |rows: &[usize]| {
            let pairs = rows.len() / 2;
            PairedBatch::from_output(
                gathered(rows, 8, 0.0, true, &device),
                BatchLayout::ChosenFirst { pairs },
            )
            .unwrap()
            .with_reference_output(gathered(rows, 8, 1.5, false, &device))
            .unwrap()
        };
        let whole = dpo
            .forward(paired(&[0, 1, 2, 3, 4, 5, 6, 7]))
            .unwrap()
            .metrics;
        assert!(
            whole.names().contains(&"entropy") && whole.names().contains(&"mean_token_accuracy"),
            "token metrics present: {:?}",
            whole.names()
        );
        let first = dpo.forward(paired(&[0, 1, 4, 5])).unwrap().metrics;
        let second = dpo.forward(paired(&[2, 3, 6, 7])).unwrap().metrics;
        assert_same(name, "DPO", &first.merge(second), &whole);

        // RRHF, K = 3: prompts {0, 1} and {2, 3} of 4 (rows prompt-major).
        let rrhf = RrhfConfig::new().init().unwrap();
        let scores = [0.5, 2.0, 1.0, 3.0, 3.0, 0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 4.0];
        let ranked = |prompts: std::ops::Range<usize>| {
            let rows: Vec<usize> = (prompts.start * 3..prompts.end * 3).collect();
            let layout = BatchLayout::PromptMajor {
                prompts: prompts.len(),
                candidates: 3,
            };
            let s = scores[prompts.start * 3..prompts.end * 3].to_vec();
            PairedBatch::from_output(gathered(&rows, 12, 0.0, false, &device), layout)
                .unwrap()
                .with_scores(floats(s, [prompts.len(), 3], &device))
                .unwrap()
        };
        let whole = rrhf.forward(ranked(0..4)).unwrap().metrics;
        assert!(whole.names().contains(&"rewards/ranking_accuracy"));
        let first = rrhf.forward(ranked(0..2)).unwrap().metrics;
        let second = rrhf.forward(ranked(2..4)).unwrap().metrics;
        assert_same(name, "RRHF", &first.merge(second), &whole);

        // KTO: micro-batch one has only desirable examples, micro-batch two is mixed. Each
        // half's KL pairs have the same mean log-ratio, so z (logged as `kl`) is the whole's.
        let kto = KtoConfig::new().init().unwrap();
        let desirable = [1, 1, 0, 1, 0, 0];
        let unpaired = |rows: std::ops::Range<usize>| {
            let idx: Vec<usize> = rows.clone().collect();
            let n = idx.len();
            let kl_policy: Vec<f32> = idx.iter().map(|&r| -2.0 - r as f32 * 0.5).collect();
            let kl_reference: Vec<f32> = kl_policy.iter().map(|p| p - 0.4).collect();
            UnpairedBatch::from_output(
                gathered(&idx, 6, 0.0, true, &device),
                ints(desirable[rows].to_vec(), [n], &device),
            )
            .unwrap()
            .with_reference_output(gathered(&idx, 6, 1.5, false, &device))
            .unwrap()
            .with_kl(
                floats(kl_policy, [n], &device),
                floats(kl_reference, [n], &device),
            )
            .unwrap()
        };
        let whole = kto.forward(unpaired(0..6)).unwrap().metrics;
        let first = kto.forward(unpaired(0..2)).unwrap().metrics;
        let first_logged = log_once(name, "KTO desirable only", &first);
        assert!(
            crate::common::logged(&first_logged, "rewards/rejected").is_none(),
            "a side without examples is not logged: {first_logged:?}"
        );
        let second = kto.forward(unpaired(2..6)).unwrap().metrics;
        assert_same(name, "KTO", &first.merge(second), &whole);
    }
}
