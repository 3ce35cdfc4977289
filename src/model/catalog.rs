//! The papers' checkpoints by name: what an experiment's `model.from = "checkpoint:<name>"`
//! means — the architecture and its hyper-parameters, the noise schedule the model was trained
//! with, the sample shape, the class count and the published weight file.
//!
//! The released ADM state dicts carry no configuration; their flags are those of
//! guided-diffusion's README (the command lines the checkpoints were trained and sampled with),
//! which AU (De Vita & Belagiannis 2025) and GU (Jazbec et al. 2025) both use unchanged. A config
//! file beside the weights (`<stem>.json` or `config.json`, as [`super::loader::load_network`]
//! reads) takes precedence, so a checkpoint of another size runs under the same name.

use std::path::Path;

use candle_core::{DType, Device};

use super::adm::{AdmConfig, AdmUNet};
use super::network::Network;
use crate::error::{Error, Result};
use crate::schedule::{NoiseSchedule, ScheduleKind};

/// How a catalogued checkpoint is built.
#[derive(Debug, Clone, Copy)]
pub enum Arch {
    /// guided-diffusion `UNetModel` with these README flags (JSON, the flags' own names).
    Adm(&'static str),
    /// A diffusers `UNet2DModel` directory (config.json + weights) with a linear β schedule
    /// from `beta_start` to `beta_end` over 1000 steps.
    DiffusersUNet { beta_start: f64, beta_end: f64 },
}

/// One of the papers' checkpoints.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint {
    /// The name after `checkpoint:`.
    pub name: &'static str,
    /// The published file (or directory) name; the `weights.model` key names it.
    pub file: &'static str,
    pub arch: Arch,
    /// The shape (C, H, W) the network samples in.
    pub shape: [usize; 3],
    /// Class count of a class-conditional model.
    pub classes: Option<usize>,
}

/// guided-diffusion README, "ImageNet 64x64" (MODEL_FLAGS of the class-conditional model).
const ADM_64: &str = r#"{"attention_resolutions": "32,16,8", "class_cond": true, "diffusion_steps": 1000,
  "dropout": 0.1, "image_size": 64, "learn_sigma": true, "noise_schedule": "cosine",
  "num_channels": 192, "num_head_channels": 64, "num_res_blocks": 3, "resblock_updown": true,
  "use_new_attention_order": true, "use_fp16": true, "use_scale_shift_norm": true}"#;

/// guided-diffusion README, "ImageNet 128x128".
const ADM_128: &str = r#"{"attention_resolutions": "32,16,8", "class_cond": true, "diffusion_steps": 1000,
  "image_size": 128, "learn_sigma": true, "noise_schedule": "linear", "num_channels": 256,
  "num_heads": 4, "num_res_blocks": 2, "resblock_updown": true, "use_fp16": true,
  "use_scale_shift_norm": true}"#;

/// Every checkpoint diffuq's paper profiles name.
pub const CATALOG: &[Checkpoint] = &[
    Checkpoint {
        name: "adm-imagenet64",
        file: "64x64_diffusion.pt",
        arch: Arch::Adm(ADM_64),
        shape: [3, 64, 64],
        classes: Some(1000),
    },
    Checkpoint {
        name: "adm-imagenet128",
        file: "128x128_diffusion.pt",
        arch: Arch::Adm(ADM_128),
        shape: [3, 128, 128],
        classes: Some(1000),
    },
    Checkpoint {
        name: "ddpm-cifar10",
        file: "ddpm-cifar10-32",
        arch: Arch::DiffusersUNet {
            beta_start: 1e-4,
            beta_end: 0.02,
        },
        shape: [3, 32, 32],
        classes: None,
    },
];

/// Every catalogued name.
pub fn names() -> Vec<&'static str> {
    CATALOG.iter().map(|c| c.name).collect()
}

/// The catalogued checkpoint `name`; an error listing the known names otherwise.
pub fn find(name: &str) -> Result<&'static Checkpoint> {
    CATALOG.iter().find(|c| c.name == name).ok_or_else(|| {
        let known: Vec<&str> = CATALOG.iter().map(|c| c.name).collect();
        Error::invalid(
            format!("checkpoint:{name}"),
            format!(
                "is not a checkpoint diffuq knows (known: {})",
                known.join(", ")
            ),
        )
    })
}

impl Checkpoint {
    /// The ADM flags of an ADM entry.
    pub fn adm_config(&self) -> Result<Option<AdmConfig>> {
        match self.arch {
            Arch::Adm(json) => {
                let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                    Error::invalid(format!("checkpoint:{}", self.name), e.to_string())
                })?;
                Ok(Some(AdmConfig::from_json(
                    v,
                    &format!("checkpoint:{}", self.name),
                )?))
            }
            _ => Ok(None),
        }
    }

    /// The training noise schedule.
    pub fn schedule(&self) -> Result<NoiseSchedule> {
        match self.arch {
            Arch::Adm(_) => self
                .adm_config()?
                .expect("an ADM entry has ADM flags")
                .noise_schedule(),
            Arch::DiffusersUNet {
                beta_start,
                beta_end,
            } => Ok(NoiseSchedule::new(
                ScheduleKind::Linear,
                beta_start,
                beta_end,
                1000,
            )),
        }
    }

    /// The network from the weights at `path`, with the shape (C, H, W) it samples in and its noise schedule: a config
    /// beside the weights wins (see the module doc; shape and schedule then follow it), otherwise the
    /// catalogued hyper-parameters.
    pub fn load(
        &self,
        path: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<(Box<dyn Network>, [usize; 3], NoiseSchedule)> {
        Ok(match self.arch {
            Arch::Adm(_) => {
                let net = if AdmUNet::config_for(path).is_some() {
                    AdmUNet::load(path, dtype, device)?
                } else {
                    let cfg = self.adm_config()?.expect("an ADM entry has ADM flags");
                    let (_, weights) = AdmUNet::locate(path)?;
                    AdmUNet::load_with_config(&cfg, &weights, self.name.to_string(), dtype, device)?
                };
                let s = net.config().image_size;
                let schedule = net.config().noise_schedule()?;
                (Box::new(net), [3, s, s], schedule)
            }
            Arch::DiffusersUNet { .. } => {
                let net = super::unet2d::UNet2D::load(path, dtype, device)?;
                let c = net.config();
                let shape = [c.in_channels, c.sample_size, c.sample_size];
                (Box::new(net), shape, self.schedule()?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_unknown_names_list_the_known_ones() {
        let names: std::collections::BTreeSet<_> = CATALOG.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CATALOG.len());
        let e = find("adm-imagenet1024").unwrap_err().to_string();
        assert!(
            e.contains("adm-imagenet64") && e.contains("adm-imagenet128"),
            "{e}"
        );
    }

    #[test]
    fn adm_entries_match_their_image_size_and_schedule() {
        for c in CATALOG {
            if let Some(cfg) = c.adm_config().unwrap() {
                cfg.validate().unwrap();
                assert_eq!(cfg.image_size, c.shape[1], "{}", c.name);
                assert_eq!(cfg.classes(), c.classes, "{}", c.name);
                assert_eq!(c.schedule().unwrap().len(), 1000);
            }
        }
        // guided-diffusion: cosine for 64² (ᾱ at the midpoint ≈ cos²(π/4·(0.5+s)/(1+s)) ≈ 0.49),
        // linear for 128² (β₀ = 1e-4).
        let cos = find("adm-imagenet64").unwrap().schedule().unwrap();
        let lin = find("adm-imagenet128").unwrap().schedule().unwrap();
        assert!((lin.beta(0) - 1e-4).abs() < 1e-12, "{}", lin.beta(0));
        assert!(
            (cos.alpha_bar(Some(499)) - 0.49).abs() < 0.02,
            "{}",
            cos.alpha_bar(Some(499))
        );
    }
}
