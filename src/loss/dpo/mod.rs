//! The DPO family of TRL's `DPOTrainer`: [`DpoConfig`] (TRL's `DPOConfig` loss keys) builds a
//! [`DpoLoss`] over any mixture of [`DpoLossType`]s.

mod config;
mod loss;
mod loss_type;

pub use config::DpoConfig;
pub use loss::DpoLoss;
pub use loss_type::DpoLossType;
