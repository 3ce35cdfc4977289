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

use candle_core::Tensor;

use super::adm::{AdmConfig, AdmUNet};
use super::dit::{DiT, DiTConfig};
use super::network::{LastLayerNetwork, Mode, Network, Prediction};
use super::uvit::{UViT, UViTConfig};
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
    /// baofff/U-ViT `UViT` with these constructor arguments, trained on Stable Diffusion's
    /// scaled-linear β (0.00085 → 0.012, 1000 steps); ᾱ index t is network time t + 1.
    UViT(fn() -> UViTConfig),
    /// facebookresearch/DiT `DiT` with these constructor arguments, trained on the linear β
    /// (1e-4 → 0.02, 1000 steps).
    DiT(fn() -> DiTConfig),
    /// A facebookresearch/DiT-layout velocity field over flow time t ∈ [0, 1] (t = 1 noise):
    /// Flow Matching in Latent Space (Dao et al. 2023), whose `models/DiT.py` keeps DiT's names
    /// with `learn_sigma` false.
    FlowDiT(fn() -> DiTConfig),
}

/// A latent model: it samples (C, h, w) latents that the KL-f8 VAE named by `weights.vae`
/// decodes into `image` (C, H, W) pixels.
#[derive(Debug, Clone, Copy)]
pub struct Latent {
    pub image: [usize; 3],
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
    /// Classes a class-conditional model's samples are drawn from (U-ViT's and DiT's extra
    /// label is their classifier-free-guidance null class, not drawn).
    pub classes: Option<usize>,
    /// Set for latent models.
    pub latent: Option<Latent>,
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
        latent: None,
    },
    Checkpoint {
        name: "adm-imagenet128",
        file: "128x128_diffusion.pt",
        arch: Arch::Adm(ADM_128),
        shape: [3, 128, 128],
        classes: Some(1000),
        latent: None,
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
        latent: None,
    },
    Checkpoint {
        name: "uvit-imagenet256",
        file: "imagenet256_uvit_huge.pth",
        arch: Arch::UViT(UViTConfig::imagenet256_huge),
        shape: [4, 32, 32],
        classes: Some(1000),
        latent: Some(Latent {
            image: [3, 256, 256],
        }),
    },
    Checkpoint {
        name: "uvit-imagenet512",
        file: "imagenet512_uvit_huge.pth",
        arch: Arch::UViT(UViTConfig::imagenet512_huge),
        shape: [4, 64, 64],
        classes: Some(1000),
        latent: Some(Latent {
            image: [3, 512, 512],
        }),
    },
    Checkpoint {
        name: "dit-xl2-imagenet256",
        file: "DiT-XL-2-256x256.pt",
        arch: Arch::DiT(DiTConfig::xl2_256),
        shape: [4, 32, 32],
        classes: Some(1000),
        latent: Some(Latent {
            image: [3, 256, 256],
        }),
    },
    Checkpoint {
        name: "lfm-dit-imagenet256",
        file: "lfm-imagenet256-dit",
        arch: Arch::FlowDiT(lfm_imagenet256),
        shape: [4, 32, 32],
        classes: Some(1000),
        latent: Some(Latent {
            image: [3, 256, 256],
        }),
    },
];

/// LFM's ImageNet-256 model (`test_args/imnet_dit.txt`: DiT-B/2, class-conditional,
/// `learn_sigma` false): hidden 768, depth 12, 12 heads.
fn lfm_imagenet256() -> DiTConfig {
    DiTConfig {
        hidden_size: 768,
        depth: 12,
        num_heads: 12,
        learn_sigma: false,
        ..DiTConfig::xl2_256()
    }
}

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
            Arch::UViT(_) => Ok(NoiseSchedule::new(
                ScheduleKind::ScaledLinear,
                0.00085,
                0.012,
                1000,
            )),
            // A flow model's sampler ignores the schedule; DiT's training schedule otherwise.
            Arch::DiT(_) | Arch::FlowDiT(_) => {
                Ok(NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000))
            }
        }
    }

    /// A flow-matching (velocity) model.
    pub fn is_flow(&self) -> bool {
        matches!(self.arch, Arch::FlowDiT(_))
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
            Arch::UViT(cfg) => {
                let net = if UViT::config_for(path).is_some() {
                    UViT::load(path, dtype, device)?
                } else {
                    let (_, weights) = UViT::locate(path)?;
                    UViT::load_with_config(&cfg(), &weights, self.name.into(), dtype, device)?
                };
                let c = net.config();
                let s = c.img_size;
                let shape = [c.in_chans, s, s];
                // U-ViT was trained with ᾱ index n − 1 at network time n (n = 1…1000).
                let net = Adapted::new(Box::new(net), 1.0, None);
                (Box::new(net), shape, self.schedule()?)
            }
            Arch::DiT(cfg) | Arch::FlowDiT(cfg) => {
                let net = if DiT::config_for(path).is_some() {
                    DiT::load(path, dtype, device)?
                } else {
                    let weights = if path.is_dir() {
                        path.join("model.pt")
                    } else {
                        path.to_path_buf()
                    };
                    DiT::load_with_config(&cfg(), &weights, self.name.into(), dtype, device)?
                };
                let c = net.config();
                let shape = [c.in_channels, c.input_size, c.input_size];
                let net: Box<dyn Network> = if self.is_flow() {
                    Box::new(Adapted::new(Box::new(net), 0.0, Some(Prediction::Velocity)))
                } else {
                    Box::new(net)
                };
                (net, shape, self.schedule()?)
            }
        })
    }
}

/// A released network under diffuq's conventions: called at network time t + `shift` for the
/// sampler's time t (U-ViT: ᾱ index t is its time t + 1), its output read as `prediction` when
/// set (LFM's DiT: a velocity). The last layer is the inner network's, at the same shifted time.
pub struct Adapted {
    inner: Box<dyn Network>,
    shift: f64,
    prediction: Option<Prediction>,
}

impl Adapted {
    pub fn new(inner: Box<dyn Network>, shift: f64, prediction: Option<Prediction>) -> Self {
        Self {
            inner,
            shift,
            prediction,
        }
    }

    fn times(&self, t: &[f64]) -> Vec<f64> {
        t.iter().map(|&t| t + self.shift).collect()
    }
}

impl Network for Adapted {
    fn prediction(&self) -> Prediction {
        self.prediction.unwrap_or(self.inner.prediction())
    }
    fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        self.inner.forward(x, &self.times(t), labels, mode)
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn last_layer(&self) -> Result<&dyn LastLayerNetwork> {
        self.inner.last_layer()?;
        Ok(self)
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

impl LastLayerNetwork for Adapted {
    fn features(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let ll = self.inner.last_layer().map_err(candle_core::Error::wrap)?;
        ll.features(x, &self.times(t), labels, mode)
    }
    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let ll = self.inner.last_layer().map_err(candle_core::Error::wrap)?;
        ll.last_layer()
    }
    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        let ll = self.inner.last_layer().map_err(candle_core::Error::wrap)?;
        ll.assemble(out)
    }
    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        let ll = self.inner.last_layer().map_err(candle_core::Error::wrap)?;
        ll.disassemble(target)
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
