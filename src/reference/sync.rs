//! TR-DPO's reference update (Gorbatovski et al. 2024, "Learn Your Reference Model for Real
//! Good Alignment"): the reference follows the policy slowly, `π_ref ← α·π + (1 − α)·π_ref`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::check;
use crate::error::{PreferenceError, Result};

/// Configuration of [`ReferenceSync`], under TRL's `DPOConfig` keys (`sync_ref_model = true`
/// in TRL is using it at all). `serde(default)`: a TRL config dict loads with its other keys
/// ignored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ReferenceSyncConfig {
    /// α ∈ (0, 1], the policy's share in each update. Default: `0.6`, TRL's.
    pub ref_model_mixup_alpha: f64,
    /// τ ≥ 1: update after every τ-th optimiser step. Default: `512`, TRL's.
    pub ref_model_sync_steps: u64,
}

impl Default for ReferenceSyncConfig {
    fn default() -> Self {
        Self {
            ref_model_mixup_alpha: 0.6,
            ref_model_sync_steps: 512,
        }
    }
}

impl burn::config::Config for ReferenceSyncConfig {}

impl ReferenceSyncConfig {
    /// TRL's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `ref_model_mixup_alpha`.
    pub fn with_ref_model_mixup_alpha(mut self, alpha: f64) -> Self {
        self.ref_model_mixup_alpha = alpha;
        self
    }

    /// Sets `ref_model_sync_steps`.
    pub fn with_ref_model_sync_steps(mut self, steps: u64) -> Self {
        self.ref_model_sync_steps = steps;
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    /// [`PreferenceError::OutOfRange`] for `α ∉ (0, 1]` or `τ = 0`.
    pub fn init(&self) -> Result<ReferenceSync> {
        check::param(
            "ref_model_mixup_alpha",
            self.ref_model_mixup_alpha,
            "in (0, 1]",
            |a| a > 0.0 && a <= 1.0,
        )?;
        check::param(
            "ref_model_sync_steps",
            self.ref_model_sync_steps as f64,
            ">= 1",
            |s| s >= 1.0,
        )?;
        Ok(ReferenceSync {
            alpha: self.ref_model_mixup_alpha,
            every: self.ref_model_sync_steps,
        })
    }
}

/// TR-DPO's schedule: after optimiser step `t` (counted from 1), when `t` is a multiple of τ,
/// the reference becomes `α·π + (1 − α)·π_ref`, parameter by parameter (TRL's
/// `SyncRefModelCallback`).
///
/// ```
/// use burn::module::Module;
/// use burn::nn::LinearConfig;
/// use burn::tensor::Device;
/// use burn_preference::reference::ReferenceSyncConfig;
///
/// let device = Device::default();
/// let policy = LinearConfig::new(4, 2).init(&device);
/// let mut reference = policy.clone();
/// let sync = ReferenceSyncConfig::new().with_ref_model_sync_steps(2).init()?;
/// for step in 1..=4 {
///     // ... the optimiser step on `policy` ...
///     let synced = sync.after_step(step, &mut reference, &policy)?;
///     assert_eq!(synced, step % 2 == 0);
/// }
/// # Ok::<(), burn_preference::PreferenceError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceSync {
    alpha: f64,
    every: u64,
}

impl ReferenceSync {
    /// Whether the reference is updated after optimiser step `step` (counted from 1).
    pub fn is_due(&self, step: u64) -> bool {
        step > 0 && step.is_multiple_of(self.every)
    }

    /// After optimiser step `step`: when it is due, replaces `reference` by its mix with
    /// `policy` and returns `true`; otherwise leaves it and returns `false`.
    ///
    /// # Errors
    /// As [`mix_reference`] (the reference is then left as it was).
    pub fn after_step<M: Module>(&self, step: u64, reference: &mut M, policy: &M) -> Result<bool> {
        if !self.is_due(step) {
            return Ok(false);
        }
        *reference = mix_reference(reference, policy, self.alpha)?;
        Ok(true)
    }
}

/// `α·policy + (1 − α)·reference`, float parameter by float parameter, as a new module on the
/// reference's devices (the policy's values are detached and moved there; cloning a burn
/// module shares its tensors, so `reference` is not copied). Keep the reference out of
/// training (e.g. built with `valid()` on an autodiff device). The two modules must have the
/// same architecture: their float parameters are paired in visiting order and must have equal
/// shapes. Integer and boolean parameters are left as the reference has them.
///
/// # Errors
/// [`PreferenceError::OutOfRange`] for `α ∉ [0, 1]`; [`PreferenceError::Shape`] naming
/// `policy` when the modules' parameters differ in number or shape (checked before anything is
/// changed).
pub fn mix_reference<M: Module>(reference: &M, policy: &M, alpha: f64) -> Result<M> {
    check::param("alpha", alpha, "in [0, 1]", |a| (0.0..=1.0).contains(&a))?;
    let mut collected = Collect::default();
    policy.visit(&mut collected);
    let mut shapes = Shapes::default();
    reference.visit(&mut shapes);
    let policy_shapes: Vec<&Vec<usize>> = collected.params.iter().map(|(shape, _)| shape).collect();
    let reference_shapes: Vec<&Vec<usize>> = shapes.0.iter().collect();
    if policy_shapes != reference_shapes {
        let first = policy_shapes
            .iter()
            .zip(&reference_shapes)
            .find(|(p, r)| p != r)
            .map(|(p, _)| (*p).clone())
            .unwrap_or_default();
        return Err(PreferenceError::Shape {
            arg: "policy",
            expected: format!(
                "the reference's architecture: {} float parameters of shapes {:?}",
                reference_shapes.len(),
                reference_shapes
            ),
            actual: first,
        });
    }
    let mut mixer = Mix {
        alpha,
        policy: collected.params.into_iter().map(|(_, values)| values),
    };
    Ok(reference.clone().map(&mut mixer))
}

/// The float parameters of a module, flattened, in visiting order.
#[derive(Default)]
struct Collect {
    params: Vec<(Vec<usize>, Tensor<1>)>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().detach();
        let shape = value.dims().to_vec();
        let numel: usize = shape.iter().product();
        self.params.push((shape, value.reshape([numel])));
    }
}

/// The shapes of a module's float parameters, in visiting order.
#[derive(Default)]
struct Shapes(Vec<Vec<usize>>);

impl ModuleVisitor for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().dims().to_vec());
    }
}

struct Mix<I> {
    alpha: f64,
    policy: I,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for Mix<I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(policy) = self.policy.next() else {
            return param;
        };
        let alpha = self.alpha;
        param.map(|reference| {
            let policy = policy
                .to_device(&reference.device())
                .reshape(reference.dims());
            reference
                .mul_scalar(1.0 - alpha)
                .add(policy.mul_scalar(alpha))
        })
    }
}
