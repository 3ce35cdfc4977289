//! Load any network diffuq can read from a path, by what the path holds:
//!
//! - a diffusers model directory (`config.json` with `_class_name = "UNet2DModel"` beside
//!   `diffusion_pytorch_model.safetensors` or `.bin`), or such a weight file;
//! - a guided-diffusion ADM checkpoint: a `.pt` state dict with its model flags in `<stem>.json`
//!   or `config.json` beside it, or a directory holding `config.json` and `model.pt` (an ADM
//!   config is one with `"architecture": "adm"`, or with `num_res_blocks` /
//!   `attention_resolutions` and no diffusers `_class_name`);
//! - a U-ViT checkpoint (baofff/U-ViT `UViT`): a `.pth` state dict with its constructor arguments
//!   in `<stem>.json` or `config.json` beside it (`"architecture": "uvit"`), or a directory
//!   holding `config.json` and `model.pth`;
//! - a DiT checkpoint: a facebookresearch/DiT state dict (`.pt`) with its constructor arguments
//!   and `"architecture": "dit"` in `<stem>.json` or `config.json`, or a diffusers
//!   `DiTTransformer2DModel` directory;
//! - a diffuq model-cache entry (`recipe.json`, `manifest.json`, `ema.safetensors`,
//!   `model.safetensors`), EMA weights unless `model.safetensors` itself is named.
//!
//! Anything else is a one-line error naming the path and what was looked for.

use std::path::Path;

use candle_core::{DType, Device};

use super::adm::AdmUNet;
use super::cache::ModelCache;
use super::dit::DiT;
use super::network::Network;
use super::recipe::{self, ImageModelRecipe};
use super::unet2d::UNet2D;
use super::uvit::UViT;
use crate::error::{Error, Result};

/// The network at `path` on `device`.
pub fn load_network(path: &Path, device: &Device) -> Result<Box<dyn Network>> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    if !path.exists() {
        return Err(Error::invalid(
            format!("checkpoint {}", path.display()),
            "does not exist",
        ));
    }
    if dir.join("recipe.json").exists() {
        let text = std::fs::read_to_string(dir.join("recipe.json"))
            .map_err(|e| Error::io(dir.join("recipe.json"), e))?;
        let recipe: ImageModelRecipe = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                format!("{}", dir.join("recipe.json").display()),
                format!("not a diffuq image-model recipe ({e})"),
            )
        })?;
        let parent = dir.parent().unwrap_or(Path::new("."));
        let cache = ModelCache::new(parent);
        let model = cache.lookup(&recipe.cache_identity())?.ok_or_else(|| {
            Error::invalid(
                format!("model directory {}", dir.display()),
                "is not a finished diffuq model (its manifest or key does not match recipe.json)",
            )
        })?;
        let ema = !path.ends_with("model.safetensors");
        return Ok(Box::new(recipe::load_network(
            &recipe, &model, ema, device,
        )?));
    }
    // DiT and U-ViT directories also hold a config.json: recognised before the UNet2D fallback.
    if DiT::config_for(path).is_some() {
        return Ok(Box::new(DiT::load(path, DType::F32, device)?));
    }
    if AdmUNet::config_for(path).is_some() {
        return Ok(Box::new(AdmUNet::load(path, DType::F32, device)?));
    }
    if UViT::config_for(path).is_some() {
        return Ok(Box::new(UViT::load(path, DType::F32, device)?));
    }
    let cfg = dir.join("config.json");
    if cfg.exists() {
        return Ok(Box::new(UNet2D::load(path, DType::F32, device)?));
    }
    Err(Error::invalid(
        format!("checkpoint {}", path.display()),
        "unknown architecture: expected a diffusers UNet2DModel directory (config.json + diffusion_pytorch_model.safetensors/.bin), a guided-diffusion ADM checkpoint (model.pt + config.json with its model flags), a U-ViT checkpoint (model.pth + config.json with architecture uvit), a DiT checkpoint (model.pt + config.json with architecture dit, or a diffusers DiTTransformer2DModel directory) or a diffuq model directory (recipe.json + ema.safetensors)",
    ))
}
