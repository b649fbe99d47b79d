//! End-to-end training: the examples' training loops (their shared code in examples/common/),
//! shortened, on every device.

#[path = "../common/mod.rs"]
mod common;
// The examples' shared code, included as the examples include it (each example uses a part).
#[allow(dead_code)]
#[path = "../../examples/common/digits.rs"]
mod digits;
#[allow(dead_code)]
#[path = "../../examples/common/methods.rs"]
mod methods;
#[allow(dead_code)]
#[path = "../../examples/common/rng.rs"]
mod rng;
#[allow(dead_code)]
#[path = "../../examples/common/tiny_lm.rs"]
mod tiny_lm;
#[allow(dead_code)]
#[path = "../../examples/common/toy.rs"]
mod toy_example;
#[cfg(feature = "train")]
#[allow(dead_code)]
#[path = "../../examples/common/train_burn.rs"]
mod train_burn_example;
#[allow(dead_code)]
#[path = "../../examples/common/transformer.rs"]
mod transformer_example;

#[cfg(feature = "train")]
mod burn_train;

mod reference;
mod tiny_lm_losses;
mod toy;
mod transformer;
