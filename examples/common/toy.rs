//! The IPO paper's toy problem (Azar et al. 2023, Fig. 1), shared by the
//! `toy_ipo_vs_dpo` example and the test that checks it.
//!
//! Three actions a, b, c; the policy is `softmax(θ)` from θ = 0; the reference is uniform; the
//! data is the total order D1 = {(a, b), (b, c), (a, c)}; Adam trains θ on batches of 9 pairs
//! from D1.

use std::error::Error;

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_preference::prelude::*;

use super::rng::SplitMix64;

/// The preference pairs of D1 as `(winner, loser)` action indices.
pub const D1: [(usize, usize); 3] = [(0, 1), (1, 2), (0, 2)];

/// Which loss trains the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToyLoss {
    Ipo,
    Dpo,
}

impl ToyLoss {
    pub fn name(self) -> &'static str {
        match self {
            ToyLoss::Ipo => "ipo",
            ToyLoss::Dpo => "dpo",
        }
    }
}

/// One training run; the paper's set-up is [`ToySetup::paper`].
#[derive(Debug, Clone, Copy)]
pub struct ToySetup {
    pub loss: ToyLoss,
    /// IPO's τ, or DPO's β.
    pub tau: f64,
    pub steps: usize,
    pub learning_rate: f64,
    pub batch_size: usize,
    pub seed: u64,
    /// `true` (the default): each batch holds every pair of D1 equally often, so each step
    /// follows the gradient of the equally weighted objective whose optimum has the closed form below.
    /// `false`: every pair of a batch is drawn independently and uniformly from D1; the same
    /// objective in expectation, but Adam at learning rate 0.01 then jitters around the optimum
    /// by up to about ±0.015 in probability, so the last step misses the closed form by more
    /// than 0.01 for some seeds.
    pub balanced: bool,
    /// Record the probabilities every this many steps (and at the end).
    pub record_every: usize,
}

impl ToySetup {
    /// Adam with learning rate 0.01, balanced batches of 9 pairs (each pair of D1 three times),
    /// 18 000 steps.
    pub fn paper(loss: ToyLoss, tau: f64) -> Self {
        Self {
            loss,
            tau,
            steps: 18_000,
            learning_rate: 0.01,
            batch_size: 9,
            seed: 0,
            balanced: true,
            record_every: 50,
        }
    }
}

/// The final action probabilities and their history `(step, [π(a), π(b), π(c)])`.
pub struct ToyRun {
    pub probs: [f64; 3],
    pub history: Vec<(usize, [f64; 3])>,
}

#[derive(Module, Debug)]
struct Policy {
    theta: Param<Tensor<1>>,
}

/// IPO's optimum on D1 with the three pairs weighted equally:
/// `θ_a − θ_b = θ_b − θ_c = 1/(3τ)`.
pub fn ipo_optimum(tau: f64) -> [f64; 3] {
    let gap = 1.0 / (3.0 * tau);
    let weights = [(2.0 * gap).exp(), gap.exp(), 1.0];
    let total: f64 = weights.iter().sum();
    weights.map(|w| w / total)
}

/// Trains `softmax(θ)` on D1 and returns where it ends.
///
/// `device` must have autodiff enabled.
pub fn train(setup: &ToySetup, device: &Device) -> Result<ToyRun, Box<dyn Error>> {
    // IPO as the paper writes it (ΨPO with identity Ψ, β is IPO's τ); both take pairs.
    let loss: Box<dyn PreferenceLoss<Batch = PairedBatch>> = match setup.loss {
        ToyLoss::Ipo => Box::new(
            PsiPoConfig::new(Psi::Identity)
                .with_beta(setup.tau)
                .init()?,
        ),
        ToyLoss::Dpo => Box::new(DpoConfig::new().with_beta(setup.tau).init()?),
    };
    let mut policy = Policy {
        theta: Param::from_tensor(Tensor::zeros([3], device)),
    };
    let mut optimizer = AdamConfig::new().init();
    let mut rng = SplitMix64(setup.seed);
    let n = setup.batch_size;
    // A uniform reference: log π_ref = −ln 3 for every action, [pairs, 2] like the policy.
    let reference = Tensor::<2>::full([n, 2], -(3f64.ln()), device);
    let mut history = Vec::new();

    for step in 0..setup.steps {
        if step % setup.record_every == 0 {
            history.push((step, probabilities(&policy)?));
        }
        let pairs: Vec<(usize, usize)> = (0..n)
            .map(|i| {
                D1[if setup.balanced {
                    i % D1.len()
                } else {
                    rng.below(D1.len())
                }]
            })
            .collect();
        let index = |pick: fn(&(usize, usize)) -> usize| {
            let ids: Vec<i64> = pairs.iter().map(|p| pick(p) as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), device)
        };
        let log_probs = log_softmax(policy.theta.val(), 0);
        let chosen = log_probs.clone().select(0, index(|p| p.0));
        let rejected = log_probs.select(0, index(|p| p.1));
        // [pairs, 2], the chosen action in column 0.
        let batch = PairedBatch::new(Tensor::stack(vec![chosen, rejected], 1))?
            .with_reference(reference.clone())?;
        let grads = loss.forward(batch)?.loss.backward();
        let grads = GradientsParams::from_grads(grads, &policy);
        policy = optimizer.step(setup.learning_rate, policy, grads);
    }
    let probs = probabilities(&policy)?;
    history.push((setup.steps, probs));
    Ok(ToyRun { probs, history })
}

fn probabilities(policy: &Policy) -> Result<[f64; 3], Box<dyn Error>> {
    let values = softmax(policy.theta.val().detach(), 0)
        .try_into_vec_as::<f32>()
        .map_err(|e| format!("reading the policy: {e:?}"))?;
    Ok([0, 1, 2].map(|i| f64::from(values[i])))
}
