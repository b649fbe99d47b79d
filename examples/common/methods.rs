//! The losses the tiny-LM examples (`dpo_vs_ipo_tiny_lm`, `compare_losses`) train with, and
//! their training loop: a copy of the reference per loss, Adam, the held-out evaluation every
//! few steps, and a check of every step's loss and gradients for NaN or ±inf.

use std::error::Error;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use burn_preference::loss::BetaDpoLoss;
use burn_preference::prelude::*;

use super::digits::{Point, Task};
use super::rng::SplitMix64;
use super::tiny_lm::TinyLm;

type Res<T> = Result<T, Box<dyn Error>>;

/// A loss with its settings (β = 0.1, DPO's, wherever the loss has a β).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Dpo,
    Ipo,
    Rrhf,
    Dpop,
    BetaDpo,
    Rdpo,
    Odpo,
    PlackettLuce,
    Lipo,
    Simper,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Dpo => "DPO (β = 0.1)",
            Method::Ipo => "IPO (τ = 0.1)",
            Method::Rrhf => "RRHF (K = 4, α = 1)",
            Method::Dpop => "DPOP (β = 0.1, λ = 50)",
            Method::BetaDpo => "β-DPO (β₀ = 0.1)",
            Method::Rdpo => "R-DPO (β = 0.1, α = 0.01)",
            Method::Odpo => "ODPO (K = 4, β = 0.1, α = 1)",
            Method::PlackettLuce => "Plackett–Luce (K = 4, β = 0.1)",
            Method::Lipo => "LiPO-λ (K = 4, β = 0.1)",
            Method::Simper => "SimPER",
        }
    }

    /// Trains on the K = 4 graded candidates rather than the pairs.
    pub fn ranked(self) -> bool {
        matches!(
            self,
            Method::Rrhf | Method::Odpo | Method::PlackettLuce | Method::Lipo
        )
    }

    fn objective(self) -> Res<Objective> {
        let loss: Box<dyn PreferenceLoss<Batch = PairedBatch>> = match self {
            Method::Dpo => Box::new(DpoConfig::new().with_beta(0.1).init()?),
            // IPO on summed log-probs as the paper writes it: ΨPO with identity Ψ, β is τ.
            Method::Ipo => Box::new(PsiPoConfig::new(Psi::Identity).with_beta(0.1).init()?),
            Method::Rrhf => Box::new(RrhfConfig::new().init()?),
            Method::Dpop => Box::new(DpopConfig::new().with_beta(0.1).init()?),
            Method::BetaDpo => {
                return Ok(Objective::BetaDpo(
                    BetaDpoConfig::new().init()?,
                    Box::new(BetaDpoState::new()),
                ));
            }
            Method::Rdpo => Box::new(RdpoConfig::new().init()?),
            // The offsets of every ordered pair from the grades: α·log(s_i − s_j).
            Method::Odpo => Box::new(OdpoConfig::new().init()?),
            Method::PlackettLuce => Box::new(PlackettLuceConfig::new().init()?),
            Method::Lipo => Box::new(LipoConfig::new().init()?),
            Method::Simper => Box::new(SimperConfig::new().init()?),
        };
        Ok(Objective::Loss(loss))
    }
}

enum Objective {
    Loss(Box<dyn PreferenceLoss<Batch = PairedBatch>>),
    /// β-DPO trains through `forward_train`, carrying its running gap statistics (boxed: two
    /// tensors).
    BetaDpo(BetaDpoLoss, Box<BetaDpoState>),
}

impl Objective {
    fn forward(&mut self, batch: PairedBatch) -> Res<LossOutput> {
        Ok(match self {
            Objective::Loss(loss) => loss.forward(batch)?,
            Objective::BetaDpo(loss, state) => loss.forward_train(batch, state)?,
        })
    }
}

/// Steps, batch size and optimizer of a run.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub steps: usize,
    /// Prompts a step, drawn with replacement; as many as the training set: all of them, in
    /// order, every step.
    pub batch: usize,
    /// Adam's.
    pub learning_rate: f64,
    /// Held-out evaluation every this many steps (and after the last).
    pub eval_every: usize,
}

/// What a run logged.
pub struct Run {
    pub history: Vec<Point>,
    /// The training loss of every step.
    pub losses: Vec<f32>,
    /// Steps whose loss or gradients held a NaN or ±inf.
    pub nonfinite_steps: usize,
    pub seconds: f64,
    pub model: TinyLm,
}

/// Σ|g| over every parameter's gradient: NaN or ±inf when any gradient entry is.
struct GradientSum<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for GradientSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let sum = grad.abs().sum();
            self.sum = Some(match self.sum.take() {
                Some(total) => total.add(sum),
                None => sum,
            });
        }
    }
}

/// Trains a copy of the task's reference with `method`; `weights` (one per training prompt)
/// weigh each prompt of a batch. `on_step` runs after every optimizer step.
pub fn train(
    method: Method,
    task: &Task,
    schedule: Schedule,
    weights: Option<&[f32]>,
    device: &Device,
    mut on_step: impl FnMut(),
) -> Res<Run> {
    let started = Instant::now();
    let mut model = task.reference.clone();
    let mut optimizer = AdamConfig::new().init();
    let mut objective = method.objective()?;
    let mut rng = SplitMix64(11);
    let pairs = task.prompts();
    let (mut history, mut losses, mut nonfinite_steps) = (Vec::new(), Vec::new(), 0);
    for step in 0..=schedule.steps {
        if step % schedule.eval_every == 0 || step == schedule.steps {
            history.push(task.evaluator.evaluate(step, &model, device)?);
        }
        if step == schedule.steps {
            break;
        }
        let prompts: Vec<usize> = if schedule.batch == pairs {
            (0..pairs).collect()
        } else {
            (0..schedule.batch).map(|_| rng.below(pairs)).collect()
        };
        let mut batch = if method.ranked() {
            task.ranked_batch(&model, &prompts, device)?
        } else {
            task.pair_batch(&model, &prompts, device)?
        };
        if let Some(weights) = weights {
            let weights: Vec<f32> = prompts.iter().map(|&p| weights[p]).collect();
            batch = batch.with_weights(Tensor::from_data(
                TensorData::new(weights, [prompts.len()]),
                device,
            ))?;
        }
        let loss = objective.forward(batch)?.loss;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut gradient_sum = GradientSum {
            grads: &grads,
            sum: None,
        };
        model.visit(&mut gradient_sum);
        let loss = loss.into_scalar::<f32>();
        let gradient_sum = gradient_sum
            .sum
            .map_or(f32::NAN, |s| s.into_scalar::<f32>());
        if !(loss.is_finite() && gradient_sum.is_finite()) {
            nonfinite_steps += 1;
        }
        losses.push(loss);
        model = optimizer.step(schedule.learning_rate, model, grads);
        on_step();
    }
    Ok(Run {
        history,
        losses,
        nonfinite_steps,
        seconds: started.elapsed().as_secs_f64(),
        model,
    })
}
