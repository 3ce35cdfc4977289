//! The run's device (`--device cpu|cuda[:N]`): a run option, never part of a configuration hash,
//! recorded in manifests. Every tensor of a run is created on it; CPU always builds and runs,
//! CUDA needs the `cuda` cargo feature.

use candle_core::Device;

use crate::error::{Error, Result};

/// A device as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::invalid("--device", format!("{s:?}: expected cpu, cuda or cuda:N"));
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(bad),
        }
    }

    /// The candle device; CUDA without the `cuda` feature (or without a GPU) is a one-line error.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                Error::invalid(
                    "--device",
                    format!(
                        "cuda:{n} is not available ({e}); CUDA needs a build with `--features cuda` and a GPU"
                    ),
                )
            }),
        }
    }

    /// As recorded in manifests.
    pub fn label(self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// The spelling [`DeviceChoice::parse`] reads back (`cpu`, `cuda:N`).
impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda_names_and_rejects_others() {
        assert_eq!(DeviceChoice::parse("cpu").unwrap(), DeviceChoice::Cpu);
        assert_eq!(DeviceChoice::parse("cuda").unwrap(), DeviceChoice::Cuda(0));
        assert_eq!(
            DeviceChoice::parse("cuda:3").unwrap(),
            DeviceChoice::Cuda(3)
        );
        let e = DeviceChoice::parse("gpu").unwrap_err().to_string();
        assert!(e.contains("--device") && e.contains("cuda:N"), "{e}");
        assert_eq!(DeviceChoice::Cuda(1).label(), "cuda:1");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_one_line_error() {
        let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("--features cuda") && !e.contains('\n'), "{e}");
    }
}
