//! DPO and the DPO-family losses of TRL's `DPOTrainer`, configured by TRL's `DPOConfig` keys.

use serde::{Deserialize, Deserializer, Serialize};

use super::{DpoLoss, DpoLossType};
use crate::check;
use crate::error::{self, PreferenceError};
use crate::loss::FDivergence;

/// The loss keys of TRL's `DPOConfig` (same names, same string values, same defaults), plus
/// this crate's `reference_free` and `value_checks`. [`init`](Self::init) validates them and
/// builds a [`DpoLoss`].
///
/// A JSON written for TRL (or TRL's `DPOConfig.to_dict()`) deserialises directly: missing keys
/// take their defaults, keys that are not loss keys (learning rate, …) are ignored, and
/// `loss_type` may be a string or a list.
///
/// ```
/// use burn_preference::loss::{DpoConfig, DpoLossType};
///
/// let config: DpoConfig = serde_json::from_str(
///     r#"{"beta": 0.1, "loss_type": ["sigmoid", "sft"], "loss_weights": [0.8, 0.2]}"#,
/// )?;
/// assert_eq!(config.loss_type, vec![DpoLossType::Sigmoid, DpoLossType::Sft]);
/// let loss = config.init()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// **Label smoothing.** As in TRL 1.16, `label_smoothing` is read only by `robust`,
/// `exo_pair`, `aot` and `aot_unpaired`; `sigmoid` ignores it. Rather than silently ignore a
/// value that was set, `init` refuses `label_smoothing > 0` when no chosen loss type reads it.
/// Conservative DPO (`(1 − ε)·softplus(−βh) + ε·softplus(βh)`) is
/// [`PsiPoConfig::new(Psi::Logit).with_label_smoothing(ε)`](crate::loss::PsiPoConfig), or soft labels
/// `q = 1 − ε` on the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpoConfig {
    /// β, the KL coefficient (IPO's τ for `ipo`): higher keeps the policy closer to the
    /// reference. Must be finite and within f32's normal range. Default: `0.1`.
    pub beta: f64,
    /// The loss types, summed with `loss_weights`; a single string deserialises as a
    /// one-element list. Default: `["sigmoid"]`.
    #[serde(deserialize_with = "one_or_many")]
    pub loss_type: Vec<DpoLossType>,
    /// One weight per loss type; `None` is all 1. Default: `None`.
    pub loss_weights: Option<Vec<f64>>,
    /// ε: the flip rate of `robust` (`[0, ½)`), EXO's target (`exo_pair`, `> 0`; the paper
    /// suggests 1e-3) and the smoothing of `aot` / `aot_unpaired`. Default: `0.0`.
    pub label_smoothing: f64,
    /// The f-divergence whose scores replace the log-ratios in the margin losses.
    /// Default: [`FDivergence::ReverseKl`] (`"reverse_kl"`, standard DPO).
    pub f_divergence_type: FDivergence,
    /// `a` of `alpha_divergence`. Default: `0.5`.
    pub f_alpha_divergence_coef: f64,
    /// WPO weighting (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
    /// Optimization"): each pair's loss times the policy's length-normalised probabilities of
    /// both responses. Needs per-token log-probs and `log Σ_v p_v²` in the batch.
    /// Default: `false`.
    pub use_weighting: bool,
    /// LD-DPO's α (Liu et al. 2024, "Length Desensitization in Direct Preference
    /// Optimization"), in `[0, 1]`: tokens past the shorter response's length count `α` times.
    /// Needs per-token log-probs. Default: `None` (plain sums).
    pub ld_alpha: Option<f64>,
    /// DiscoPOP's temperature τ (`discopop`). Default: `0.05`.
    pub discopop_tau: f64,
    /// Train without a reference model (`log π_ref = 0`); any reference in the batch is
    /// ignored. Not a TRL `DPOConfig` key. Default: `false`.
    pub reference_free: bool,
    /// Check the values of the batch's scores, soft labels and lengths, reading them back to
    /// the host (a GPU step then waits for its queued work). With `false` the forward never
    /// reads a tensor back, and bad values go into the loss as they are. Not a TRL key.
    /// Default: `true`.
    pub value_checks: bool,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: vec![DpoLossType::Sigmoid],
            loss_weights: None,
            label_smoothing: 0.0,
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: 0.5,
            use_weighting: false,
            ld_alpha: None,
            discopop_tau: 0.05,
            reference_free: false,
            value_checks: true,
        }
    }
}

impl burn::config::Config for DpoConfig {}

/// `"ipo"` or `["sigmoid", "sft"]`: TRL accepts both.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<DpoLossType>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(DpoLossType),
        Many(Vec<DpoLossType>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl DpoConfig {
    /// The defaults: DPO (`sigmoid`) with β = 0.1, as TRL's `DPOConfig()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `beta`.
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets a single loss type.
    pub fn with_loss_type(mut self, loss_type: DpoLossType) -> Self {
        self.loss_type = vec![loss_type];
        self
    }

    /// Sets several loss types (summed with `loss_weights`).
    pub fn with_loss_types(mut self, loss_types: Vec<DpoLossType>) -> Self {
        self.loss_type = loss_types;
        self
    }

    /// Sets `loss_weights`.
    pub fn with_loss_weights(mut self, loss_weights: Option<Vec<f64>>) -> Self {
        self.loss_weights = loss_weights;
        self
    }

    /// Sets `label_smoothing`.
    pub fn with_label_smoothing(mut self, label_smoothing: f64) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }

    /// Sets `f_divergence_type`.
    pub fn with_f_divergence_type(mut self, divergence: FDivergence) -> Self {
        self.f_divergence_type = divergence;
        self
    }

    /// Sets `f_alpha_divergence_coef`.
    pub fn with_f_alpha_divergence_coef(mut self, coef: f64) -> Self {
        self.f_alpha_divergence_coef = coef;
        self
    }

    /// Sets `use_weighting` (WPO).
    pub fn with_use_weighting(mut self, use_weighting: bool) -> Self {
        self.use_weighting = use_weighting;
        self
    }

    /// Sets `ld_alpha` (LD-DPO).
    pub fn with_ld_alpha(mut self, ld_alpha: Option<f64>) -> Self {
        self.ld_alpha = ld_alpha;
        self
    }

    /// Sets `discopop_tau`.
    pub fn with_discopop_tau(mut self, tau: f64) -> Self {
        self.discopop_tau = tau;
        self
    }

    /// Sets `reference_free`.
    pub fn with_reference_free(mut self, reference_free: bool) -> Self {
        self.reference_free = reference_free;
        self
    }

    /// Sets `value_checks`.
    pub fn with_value_checks(mut self, value_checks: bool) -> Self {
        self.value_checks = value_checks;
        self
    }

    /// Validates the configuration and builds the loss.
    ///
    /// # Errors
    /// - [`PreferenceError::Empty`] for an empty `loss_type` list.
    /// - [`PreferenceError::Shape`] when `loss_weights` has not one weight per loss type.
    /// - [`PreferenceError::OutOfRange`] for β outside `[1e-8, 1e8]` (beyond it `β·Δ` or
    ///   the target `1/(2β)` squared leave what `f32` holds), a non-finite weight, `label_smoothing` outside `[0, 1]`,
    ///   `label_smoothing > 0` that no chosen loss type reads, `exo_pair` with ε = 0 (or
    ///   ε = 1), `robust` with ε ∉ `[0, ½)`, `ld_alpha ∉ [0, 1]`, `discopop_tau ≤ 0`, or a
    ///   non-finite `f_alpha_divergence_coef`.
    /// - [`PreferenceError::InvalidValue`] for a non-default `f_divergence_type` with a loss
    ///   type that does not read the scores, or `use_weighting` with `aot` / `aot_unpaired`.
    pub fn init(&self) -> error::Result<DpoLoss> {
        let types = &self.loss_type;
        if types.is_empty() {
            return Err(PreferenceError::Empty {
                arg: "loss_type",
                detail: "at least one loss type is needed".to_string(),
            });
        }
        let weights = match &self.loss_weights {
            None => vec![1.0; types.len()],
            Some(w) if w.len() != types.len() => {
                return Err(PreferenceError::Shape {
                    arg: "loss_weights",
                    expected: format!("one weight per loss type ({} of them)", types.len()),
                    actual: vec![w.len()],
                });
            }
            Some(w) => w.clone(),
        };
        for w in &weights {
            check::param("loss_weights", *w, "finite", |_| true)?;
        }
        // β scales f32 margins and 1/(2β) is IPO's f32 target: the one range every loss uses.
        check::kl_coefficient("beta", self.beta)?;
        let eps = self.label_smoothing;
        check::param("label_smoothing", eps, "in [0, 1]", |e| {
            (0.0..=1.0).contains(&e)
        })?;
        if eps > 0.0 && !types.iter().any(|t| t.reads_label_smoothing()) {
            return Err(PreferenceError::OutOfRange {
                name: "label_smoothing",
                expected: "0 for these loss types: TRL 1.16 reads it only in robust, exo_pair, \
                           aot and aot_unpaired (for conservative DPO use \
                           `PsiPoConfig::new(Psi::Logit).with_label_smoothing(ε)` or soft labels)",
                actual: eps,
            });
        }
        if types.contains(&DpoLossType::ExoPair) {
            check::param(
                "label_smoothing",
                eps,
                "in (0, 1) for exo_pair (the EXO paper suggests 1e-3)",
                |e| e > 0.0 && e < 1.0,
            )?;
        }
        if types.contains(&DpoLossType::Robust) {
            check::param("label_smoothing", eps, "in [0, 0.5) for robust", |e| {
                (0.0..0.5).contains(&e)
            })?;
        }
        check::param(
            "f_alpha_divergence_coef",
            self.f_alpha_divergence_coef,
            "finite",
            |_| true,
        )?;
        if self.f_divergence_type != FDivergence::ReverseKl
            && let Some(bad) = types.iter().find(|t| !t.supports_f_divergence())
        {
            return Err(PreferenceError::InvalidValue {
                arg: "f_divergence_type",
                expected: "reverse_kl unless every loss type is one of sigmoid, sigmoid_norm, \
                           hinge, ipo, exo_pair, robust, discopop, sft (the others have no \
                           f-divergence form)",
                found: format!("{} with {bad}", self.f_divergence_type),
            });
        }
        if self.use_weighting
            && let Some(bad) = types
                .iter()
                .find(|t| matches!(t, DpoLossType::Aot | DpoLossType::AotUnpaired))
        {
            return Err(PreferenceError::InvalidValue {
                arg: "use_weighting",
                expected: "false with aot and aot_unpaired (they sort the batch, which would \
                           misalign the per-pair weights)",
                found: format!("true with {bad}"),
            });
        }
        if let Some(alpha) = self.ld_alpha {
            check::param("ld_alpha", alpha, "in [0, 1]", |a| (0.0..=1.0).contains(&a))?;
        }
        check::param(
            "discopop_tau",
            self.discopop_tau,
            "> 0 and within f32's normal range",
            |t| (f64::from(f32::MIN_POSITIVE)..=f64::from(f32::MAX)).contains(&t),
        )?;
        Ok(DpoLoss::new(self.clone(), weights))
    }
}
