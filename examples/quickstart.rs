//! Quickstart: sequence log-probs, log-ratios and every loss on a tiny batch.
//!
//! ```sh
//! cargo run --example quickstart                                   # CPU (flex)
//! cargo run --example quickstart --features wgpu -- --device wgpu  # GPU
//! ```

#[allow(dead_code)] // shared by the examples; this one reads only `--device`
#[path = "common/args.rs"]
mod args;

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use burn_preference::{
    DpoConfig, IpoConfig, LogpReduction, PreferenceBatch, PreferenceLoss, PreferenceOutput, Psi,
    PsiPoConfig, RrhfConfig, SequenceLogpsConfig, concatenated_log_ratios,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device =
        args::Flags::parse("quickstart [--device flex|ndarray|wgpu]", &["device"])?.device()?;
    device.seed(7);
    println!("device: {device:?}\n");

    // Two prompts, each with a chosen and a rejected response of up to 6 tokens over a
    // 32-token vocabulary. Trainers run chosen and rejected in one forward pass: rows 0..2 are
    // chosen, rows 2..4 rejected. -100 marks prompt and padding positions.
    let (batch, time, vocab) = (4, 6, 32);
    let labels = Tensor::<2, Int>::from_data(
        TensorData::new(
            vec![
                -100i64, -100, 5, 9, 2, 1, // prompt 0, chosen
                -100, 3, 3, 8, -100, -100, // prompt 1, chosen
                -100, -100, 7, 7, 1, 0, // prompt 0, rejected
                -100, 3, 4, 4, 4, -100, // prompt 1, rejected
            ],
            [batch, time],
        ),
        &device,
    );
    let policy_logits = Tensor::<3>::random(
        [batch, time, vocab],
        Distribution::Normal(0.0, 2.0),
        &device,
    );
    let reference_logits = policy_logits.clone().add(Tensor::random(
        [batch, time, vocab],
        Distribution::Normal(0.0, 0.5),
        &device,
    ));

    let gatherer = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Sum)
        .init()?;
    let policy = gatherer.forward(policy_logits, labels.clone())?;
    let reference = gatherer.forward(reference_logits, labels.clone())?.logps;
    println!("sequence log-probs (policy):    {}", show(&policy.logps));
    println!("sequence log-probs (reference): {}", show(&reference));
    println!("valid tokens per sequence:      {}", show(&policy.counts));

    let ratios = concatenated_log_ratios(policy.logps.clone(), Some(reference.clone()))?;
    println!("log-ratios chosen:   {}", show(&ratios.chosen));
    println!("log-ratios rejected: {}", show(&ratios.rejected));
    println!("margins h:           {}\n", show(&ratios.margin()));

    let pairs = PreferenceBatch::concatenated(policy.logps.clone())?
        .with_concatenated_reference(reference)?;
    report(
        "DPO (β = 0.1)",
        DpoConfig::new().init()?.forward(pairs.clone())?,
    );
    report(
        "cDPO (β = 0.1, ε = 0.1)",
        PsiPoConfig::new(Psi::Logit)
            .with_label_smoothing(0.1)
            .init()?
            .forward(pairs.clone())?,
    );
    report(
        "IPO (τ = 0.1)",
        IpoConfig::new().init()?.forward(pairs.clone())?,
    );
    report(
        "ΨPO (identity Ψ, β = 0.5)",
        PsiPoConfig::new(Psi::Identity)
            .with_beta(0.5)
            .init()?
            .forward(pairs)?,
    );

    // RRHF ranks K candidates by score: here the two responses of each prompt, K = 2, with
    // the summed log-probs, their token counts and reward-model scores.
    let sums = policy.logps.reshape([2, 2]).transpose();
    let lengths = policy.counts.reshape([2, 2]).transpose();
    let scores = Tensor::<2>::from_floats([[0.9, 0.2], [0.4, 0.7]], &device);
    let ranked = PreferenceBatch::ranked(sums, scores)?.with_lengths(lengths)?;
    report(
        "RRHF (hinge, α = 1)",
        RrhfConfig::new().init()?.forward(ranked)?,
    );

    // At real vocabularies, go from the last hidden states and the LM head's weight [V, H]
    // straight to the log-probs: the [B, T, V] logits are never stored, chunk by chunk.
    let width = 16;
    let hidden = Tensor::<3>::random(
        [batch, time, width],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let lm_head = Tensor::<2>::random([vocab, width], Distribution::Normal(0.0, 0.5), &device);
    let fused = gatherer.forward_linear(hidden.clone(), lm_head.clone(), labels.clone())?;
    let logits = hidden.matmul(lm_head.transpose().unsqueeze_dim(0));
    let materialised = gatherer.forward(logits, labels)?;
    println!("\nLM head, fused:        {}", show(&fused.logps));
    println!("LM head, materialised: {}", show(&materialised.logps));
    Ok(())
}

fn report(name: &str, out: PreferenceOutput) {
    let m = &out.metrics;
    println!("{name}");
    println!(
        "  loss {:.6}   per prompt {}",
        out.loss.into_scalar::<f32>(),
        show(&out.losses)
    );
    println!(
        "  rewards chosen {}  rejected {}  margins {}  accuracy {:.2}",
        show(&m.rewards_chosen),
        show(&m.rewards_rejected),
        show(&m.margins),
        m.accuracy.clone().into_scalar::<f32>()
    );
}

fn show(tensor: &Tensor<1>) -> String {
    let values: Vec<f32> = tensor.clone().try_into_vec_as().unwrap_or_default();
    let items: Vec<String> = values.iter().map(|v| format!("{v:.4}")).collect();
    format!("[{}]", items.join(", "))
}
