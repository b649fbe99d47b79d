//! Quickstart: sequence log-probs, log-ratios, the pairwise and ranked losses and GRPO on a
//! tiny batch.
//!
//! ```sh
//! cargo run --example quickstart                                   # CPU (flex)
//! cargo run --example quickstart --features wgpu -- --device wgpu  # GPU
//! ```

#[allow(dead_code)] // shared by the examples; this one reads only `--device`
#[path = "common/args.rs"]
mod args;

use burn::tensor::{Distribution, Tensor};
use burn_preference::data::PreferenceExample;
use burn_preference::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device =
        args::Flags::parse("quickstart [--device flex|ndarray|wgpu]", &["device"])?.device()?;
    device.seed(7);
    println!("device: {device:?}\n");

    // Two prompts, each with a chosen and a rejected response, as token ids. The collator
    // pads them into one batch the way trainers run it (one forward pass over both): rows
    // 0..2 are the chosen responses, rows 2..4 the rejected ones, and the labels are −100 on
    // the prompts and the padding, so only response tokens count.
    let examples = vec![
        PreferenceExample {
            prompt: vec![1, 2],
            chosen: vec![5, 9, 2, 1],
            rejected: vec![7, 7, 1, 0],
        },
        PreferenceExample {
            prompt: vec![6],
            chosen: vec![3, 3, 8],
            rejected: vec![3, 4, 4, 4],
        },
    ];
    let collated = PreferenceCollatorConfig::new().init()?.pad(&examples)?;
    let [batch, time] = collated.dims();
    let labels = collated.labels(&device);
    let vocab = 32;
    // Stand-ins for the policy's and the frozen reference model's logits over those rows.
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

    // Summed token log-probs per sequence (the DPO and IPO papers' ρ); no mask beyond the
    // labels' −100.
    let gatherer = SequenceLogpsConfig::new()
        .with_reduction(LogpReduction::Sum)
        .init()?;
    let policy = gatherer.forward(policy_logits, labels.clone(), None)?;
    let reference = gatherer.forward(reference_logits, labels.clone(), None)?;
    println!("sequence log-probs (policy):    {}", show(&policy.logps));
    println!("sequence log-probs (reference): {}", show(&reference.logps));
    println!("valid tokens per sequence:      {}", show(&policy.counts));

    // The log-ratios ρ = log π − log π_ref the losses compare, chosen rows first; the
    // losses compute them themselves, shown here to read the numbers below.
    let ratios = policy.logps.clone().sub(reference.logps.clone());
    let pairs = batch / 2;
    let chosen = ratios.clone().narrow(0, 0, pairs);
    let rejected = ratios.narrow(0, pairs, pairs);
    println!("log-ratios chosen:   {}", show(&chosen));
    println!("log-ratios rejected: {}", show(&rejected));
    println!("margins h:           {}\n", show(&chosen.sub(rejected)));

    // The collated batch knows its layout (chosen first), so the gatherer's outputs become a
    // [2 prompts, 2 candidates] batch without a hand-written reshape.
    let pairs = PairedBatch::from_output(policy.clone(), collated.layout())?
        .with_reference_output(reference.clone())?;
    report(
        "DPO (β = 0.1)",
        DpoConfig::new().init()?.forward(pairs.clone())?,
    )?;
    report(
        "cDPO (β = 0.1, ε = 0.1)",
        PsiPoConfig::new(Psi::Logit)
            .with_label_smoothing(0.1)
            .init()?
            .forward(pairs.clone())?,
    )?;
    // IPO on summed log-probs, as the paper writes it: ΨPO with identity Ψ, β is IPO's τ.
    report(
        "IPO (τ = 0.1)",
        PsiPoConfig::new(Psi::Identity)
            .with_beta(0.1)
            .init()?
            .forward(pairs.clone())?,
    )?;
    report(
        "ΨPO (identity Ψ, β = 0.5)",
        PsiPoConfig::new(Psi::Identity)
            .with_beta(0.5)
            .init()?
            .forward(pairs.clone())?,
    )?;

    // DPO's variants: a penalty, a length term or an offset inside the sigmoid; the listwise
    // Plackett–Luce loss (DPO at K = 2); SimPER without a reference or a hyperparameter.
    report(
        "DPOP (β = 0.3, λ = 50)",
        DpopConfig::new().init()?.forward(pairs.clone())?,
    )?;
    report(
        "R-DPO (β = 0.1, α = 0.01)",
        RdpoConfig::new().init()?.forward(pairs.clone())?,
    )?;
    let offsets = Tensor::<1>::from_floats([0.5, 0.1], &device);
    report(
        "ODPO (β = 0.1, offsets 0.5, 0.1)",
        OdpoConfig::new()
            .init()?
            .forward(pairs.clone().with_offsets(offsets)?)?,
    )?;
    report(
        "Plackett–Luce (β = 0.1)",
        PlackettLuceConfig::new().init()?.forward(pairs.clone())?,
    )?;
    report(
        "SimPER",
        SimperConfig::new().init()?.forward(pairs.clone())?,
    )?;
    // β-DPO trains with a running state the trainer carries from step to step.
    let mut state = BetaDpoState::new();
    report(
        "β-DPO (β₀ = 0.1, first step, no filter)",
        BetaDpoConfig::new()
            .with_filter_ratio(0.0)
            .init()?
            .forward_train(pairs.clone(), &mut state)?,
    )?;
    // Any loss takes a weight per prompt: the loss is their weighted mean.
    let weights = Tensor::<1>::from_floats([1.0, 3.0], &device);
    report(
        "DPO, prompts weighted 1 and 3",
        DpoConfig::new()
            .init()?
            .forward(pairs.with_weights(weights)?)?,
    )?;

    // RRHF ranks K candidates by score: here the two responses of each prompt, K = 2, with
    // the summed log-probs, their token counts (the batch takes them from the gatherer's
    // output) and reward-model scores [prompts, candidates].
    let scores = Tensor::<2>::from_floats([[0.9, 0.2], [0.4, 0.7]], &device);
    let ranked = PairedBatch::from_output(policy, collated.layout())?.with_scores(scores)?;
    report(
        "RRHF (hinge, α = 1)",
        RrhfConfig::new().init()?.forward(ranked.clone())?,
    )?;
    // LiPO-λ reads the scores as graded labels.
    report(
        "LiPO-λ (β = 0.1)",
        LipoConfig::new()
            .init()?
            .forward(ranked.with_reference_output(reference)?)?,
    )?;

    // At real vocabularies, go from the last hidden states and the LM head's weight [V, H]
    // straight to the log-probs: the [B, T, V] logits are never stored, chunk by chunk.
    let width = 16;
    let hidden = Tensor::<3>::random(
        [batch, time, width],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let lm_head = Tensor::<2>::random([vocab, width], Distribution::Normal(0.0, 0.5), &device);
    let fused = gatherer.forward_linear(hidden.clone(), lm_head.clone(), labels.clone(), None)?;
    let logits = hidden
        .clone()
        .matmul(lm_head.clone().transpose().unsqueeze_dim(0));
    let materialised = gatherer.forward(logits, labels.clone(), None)?;
    println!("\nLM head, fused:        {}", show(&fused.logps));
    println!("LM head, materialised: {}\n", show(&materialised.logps));

    // GRPO learns from completions the policy sampled and a reward scored. Read the four rows
    // as 2 prompts × K = 2 samples (prompt-major), rewarded 1 (right) or 0 (wrong): each
    // sample's advantage is its reward against its group's. The per-token log-probs and
    // entropies come from the same pass over the LM head.
    let rewards = Tensor::<2>::from_floats([[1.0], [0.0], [0.0], [1.0]], &device);
    let advantages = GrpoAdvantagesConfig::new()
        .with_num_generations(2)
        .init()?
        .forward(rewards)?;
    println!("GRPO advantages: {}", show(&advantages.advantages));
    let sampled = SequenceLogpsConfig::new()
        .with_return_token_logps(true)
        .with_return_entropy(true)
        .init()?
        .forward_linear(hidden, lm_head, labels, None)?;
    // Every predicted position; the labels' −100 leave the prompts and the padding out.
    let completions = CompletionBatch::from_output(sampled, time - 1, advantages.advantages)?;
    report(
        "GRPO (loss_type dapo, TRL's default)",
        GrpoConfig::new().init()?.forward(completions)?,
    )?;
    Ok(())
}

/// The loss, each example's share of it (a prompt's; a completion's for GRPO), and the
/// metrics under TRL's names (batch means, read back in one go).
fn report(name: &str, out: LossOutput) -> Result<()> {
    println!("{name}");
    println!(
        "  loss {:.6}   per example {}",
        out.loss.into_scalar::<f32>(),
        show(&out.losses)
    );
    let metrics: Vec<String> = out
        .metrics
        .log()?
        .into_iter()
        .map(|(metric, value)| format!("{metric} {value:.4}"))
        .collect();
    for line in metrics.chunks(4) {
        println!("  {}", line.join("  "));
    }
    Ok(())
}

fn show(tensor: &Tensor<1>) -> String {
    let values: Vec<f32> = tensor.clone().try_into_vec_as().unwrap_or_default();
    let items: Vec<String> = values.iter().map(|v| format!("{v:.4}")).collect();
    format!("[{}]", items.join(", "))
}
