//! `--name value` flags and the `--device` choice shared by the examples.

use std::str::FromStr;

use burn::tensor::Device;

/// Parsed `--name value` pairs, checked against the flags an example accepts.
pub struct Flags {
    pairs: Vec<(String, String)>,
    usage: &'static str,
}

impl Flags {
    /// Parses the process arguments; `allowed` lists the flag names without `--`.
    pub fn parse(usage: &'static str, allowed: &[&str]) -> Result<Self, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Self::parse_from(usage, allowed, &args)
    }

    /// Parses `args` (flags only, no positional arguments).
    pub fn parse_from(
        usage: &'static str,
        allowed: &[&str],
        args: &[String],
    ) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for chunk in args.chunks(2) {
            match chunk {
                [flag, value] if flag.starts_with("--") && allowed.contains(&&flag[2..]) => {
                    pairs.push((flag[2..].to_string(), value.clone()));
                }
                _ => return Err(format!("usage: {usage}")),
            }
        }
        Ok(Self { pairs, usage })
    }

    /// The raw value of `--name`, if given.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(flag, _)| flag == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of `--name` parsed as `T`, if given.
    pub fn value<T: FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.text(name)
            .map(|text| {
                text.parse().map_err(|_| {
                    format!("--{name} {text}: not a valid value\nusage: {}", self.usage)
                })
            })
            .transpose()
    }

    /// The device named by `--device` (flex by default).
    #[allow(deprecated)] // burn 0.22 marks NdArray deprecated in favour of Flex.
    pub fn device(&self) -> Result<Device, String> {
        match self.text("device").unwrap_or("flex") {
            #[cfg(feature = "flex")]
            "flex" => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            "ndarray" => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            "wgpu" => Ok(Device::wgpu(Default::default())),
            #[cfg(feature = "cuda")]
            "cuda" => Ok(Device::cuda(0)),
            other => Err(format!(
                "device `{other}` is not available: build with `--features {other}`"
            )),
        }
    }
}
