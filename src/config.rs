//! `trl_config!`: the one way a config keyed as TRL's is declared (losses, advantages).

/// A loss config keyed as a TRL config: `serde(default)`, so TRL's config dict (or a JSON
/// written for TRL) loads with its missing keys — and this crate's own, such as
/// `value_checks` — at their defaults and its unknown keys ignored; plus `new()`, one
/// `with_*` setter per field and burn's `Config`. (burn's `#[derive(Config)]` wants every key.)
macro_rules! trl_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident / $setter:ident : $ty:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl burn::config::Config for $name {}

        impl $name {
            /// The defaults (TRL's, for TRL's keys).
            pub fn new() -> Self {
                Self::default()
            }

            $(
                #[doc = concat!("Sets `", stringify!($field), "`.")]
                pub fn $setter(mut self, $field: $ty) -> Self {
                    self.$field = $field;
                    self
                }
            )*
        }
    };
}
