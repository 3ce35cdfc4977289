//! Stable Diffusion's KL-f8 autoencoder (LDM's `AutoencoderKL`, Rombach et al. 2022): the decoder
//! that turns the 4-channel latents of a latent diffusion model into images, and the encoder that
//! maps images to those latents.
//!
//! Both papers run latent diffusion models whose samples are latents: U-ViT on ImageNet 256² and
//! 512² (AU, De Vita & Belagiannis 2025, and GU, Jazbec et al. 2025, Fig. 3) and DiT (GU C.7).
//! Their images are `decode(z / 0.18215)` with this VAE (ImageNet 256² → latents 4×32×32, 512² →
//! 4×64×64), which [`VaeDecoder::decode`] computes from the *scaled* latent z the sampler returns.
//! GU fits its last-layer Laplace on U-ViT with *training images encoded* by this VAE: z = 0.18215
//! · (a posterior sample), as the release's `UViT/utils.py::preprocess_la_uvit` does; that is
//! [`VaeDecoder::encode_sample`] with the caller's standard normals (diffuq draws them from its
//! own seed streams), and [`VaeDecoder::encode_mean`] is the deterministic posterior mean.
//!
//! Encode, as U-ViT's `FrozenAutoencoderKL.encode_moments`/`sample` (`Encoder.forward`) and
//! diffusers' `AutoencoderKL.encode(x).latent_dist`, for images x ∈ [−1, 1]:
//!
//!   h = conv_in(x)                                           (3×3 to ch, diffusers: ch·ch_mult[0])
//!   down, level 0 to L−1: num_res_blocks × ResnetBlock [→ AttnBlock where the level's nominal
//!       resolution is in `attn_resolutions`], then, except at the last level, zero-pad one row
//!       at the bottom and one column at the right (`F.pad(x, (0, 1, 0, 1))`) and a 3×3 conv of
//!       stride 2 without padding
//!   mid: ResnetBlock → AttnBlock → ResnetBlock
//!   (mean, logvar) = split(quant_conv(conv_out(swish(norm_out(h)))))   (2·z_ch → 2·embed_dim)
//!   logvar ← clamp(logvar, −30, 20);  z = scale_factor · (mean + exp(logvar / 2) · ε)
//!
//! The two namings differ in one place besides the names: LDM's `conv_in` has `ch` outputs and
//! level 0 maps ch → ch·ch_mult[0], diffusers' has block_out_channels[0] outputs (the same when
//! ch_mult[0] = 1, as in SD's KL-f8).
//!
//! Decode, as U-ViT's `libs/autoencoder.py` (`FrozenAutoencoderKL.decode`, `Decoder.forward`; a
//! copy of LDM's) and diffusers' `AutoencoderKL.decode` after a pipeline's `z / scaling_factor`:
//!
//!   h = conv_in(post_quant_conv(z / scale_factor))          (1×1, then 3×3 to ch·ch_mult[-1])
//!   mid: ResnetBlock → AttnBlock → ResnetBlock
//!   up, from the last level to level 0: (num_res_blocks + 1) × ResnetBlock [→ AttnBlock where
//!       the level's nominal resolution is in `attn_resolutions`], then, except at level 0,
//!       nearest ×2 and a 3×3 conv
//!   image = conv_out(swish(norm_out(h)))
//!
//! ResnetBlock(x) = shortcut(x) + conv2(swish(N₂(conv1(swish(N₁ x))))) (no time embedding; the
//! shortcut is a 1×1 conv when the channel count changes), AttnBlock(x) = x + proj_out(softmax(QKᵀ
//! /√C) V) with Q, K, V 1×1 projections of N(x) over the H·W positions (one head of all C
//! channels); every norm is a 32-group GroupNorm with eps 1e-6, swish is SiLU.
//!
//! Output: the decoder's native range, ≈ [−1, 1] for a trained VAE, *not clamped*; samplers'
//! image code maps it to pixels with clamp((x + 1) / 2, 0, 1) as U-ViT and diffusers do.
//!
//! Checkpoints (the naming is detected from the tensor names):
//! - LDM/CompVis naming, as U-ViT's `autoencoder_kl_ema.pth` (a `torch.save`d state dict):
//!   `encoder.conv_in`, `encoder.down.{i}.block.{j}`, `encoder.down.{i}.attn.{j}`,
//!   `encoder.down.{i}.downsample.conv`, `encoder.mid.*`, `encoder.norm_out`, `encoder.conv_out`,
//!   `quant_conv`, `decoder.conv_in`, `decoder.mid.block_{1,2}.{norm1,conv1,norm2,conv2}`,
//!   `decoder.mid.attn_1.{norm,q,k,v,proj_out}` (1×1 convs), `decoder.up.{i}.block.{j}.{…,
//!   nin_shortcut}`, `decoder.up.{i}.attn.{j}`, `decoder.up.{i}.upsample.conv`,
//!   `decoder.norm_out`, `decoder.conv_out`, `post_quant_conv`, with `up.0` the full-resolution
//!   level; the same under `first_stage_model.` (a Stable Diffusion `.ckpt`, whose
//!   `state_dict.` wrapper is removed first; everything outside the prefix is skipped);
//! - diffusers' `AutoencoderKL` naming, a directory with `config.json` and
//!   `diffusion_pytorch_model.safetensors` (or `.bin`): `encoder.down_blocks.{i}.resnets.{j}`,
//!   `encoder.down_blocks.{i}.downsamplers.0.conv`, `encoder.mid_block.*`,
//!   `encoder.conv_norm_out`, `encoder.conv_out` (level i = LDM's `down.{i}`), `quant_conv`,
//!   `decoder.mid_block.resnets.{0,1}`,
//!   `decoder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` (Linear; the pre-0.14
//!   `query/key/value/proj_attn` names are renamed), `decoder.up_blocks.{i}.resnets.{j}.{…,
//!   conv_shortcut}`, `decoder.up_blocks.{i}.upsamplers.0.conv`, `decoder.conv_norm_out`, with
//!   the block order reversed: `up_blocks.0` is LDM's last level `up.{L−1}`.
//!
//! The encoder (`encoder.*` and `quant_conv.*`) is loaded when the checkpoint has any of its
//! tensors, and must then be complete; a checkpoint without them loads as a decoder only, and
//! encoding with it is an error naming the file and the missing tensors. LDM's `loss.*` is
//! skipped; any other tensor, or one the config does not ask for, is an error naming it.
//!
//! Precision: computed in the dtype of [`VaeDecoder::load`] (f32 or f64 on the CPU), encoder
//! included. In f64 the attention softmax is f64 here; U-ViT's own `.double()` model agrees. float16 is known to
//! overflow in this VAE at high resolution (diffusers' `force_upcast`), so f32 is the default.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::conv::Conv2d;
use super::norm::GroupNorm;
use super::params::ParamSource;
use crate::error::{Error, Result};

/// Stable Diffusion's latent scale (LDM `scale_factor`, diffusers `scaling_factor`): the latents a
/// diffusion model samples are z = 0.18215 · (VAE latent).
pub const SD_SCALE_FACTOR: f64 = 0.18215;
/// LDM's `Normalize`: GroupNorm with 32 groups and eps 1e-6.
const GROUPS: usize = 32;
const NORM_EPS: f64 = 1e-6;

/// An LDM autoencoder config: the `ddconfig` keys of LDM's `AutoencoderKL` (what U-ViT's
/// `get_model` and SD's `first_stage_config.params.ddconfig` set), plus `embed_dim` (the latent
/// channels `post_quant_conv` reads) and `scale_factor`. The default is Stable Diffusion's KL-f8
/// (U-ViT's `get_model`): ch 128, ch_mult [1, 2, 4, 4], 2 ResnetBlocks per level, no attention
/// in the down or up levels, 4 latent channels, scale 0.18215. `double_z` and `in_channels`
/// concern the encoder only (which needs `double_z`: its output is the posterior's mean and
/// log-variance), `dropout` training only (read, not used). Any other key is an error naming it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeConfig {
    pub double_z: bool,
    pub z_channels: usize,
    /// The nominal image size; only `attn_resolutions` refers to it.
    pub resolution: usize,
    pub in_channels: usize,
    pub out_ch: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Nominal resolutions (from `resolution`, halved per level) whose down and up levels have
    /// an AttnBlock after each ResnetBlock (SD: none).
    pub attn_resolutions: Vec<usize>,
    pub dropout: f64,
    pub embed_dim: usize,
    pub scale_factor: f64,
}

impl Default for VaeConfig {
    /// U-ViT's `libs/autoencoder.get_model` (Stable Diffusion's KL-f8 VAE) with LDM's default
    /// scale factor.
    fn default() -> Self {
        Self {
            double_z: true,
            z_channels: 4,
            resolution: 256,
            in_channels: 3,
            out_ch: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_resolutions: vec![],
            dropout: 0.0,
            embed_dim: 4,
            scale_factor: SD_SCALE_FACTOR,
        }
    }
}

/// diffusers' `AutoencoderKL` config.json (all of diffusers 0.31's keys, with its defaults).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DiffusersVaeConfig {
    in_channels: usize,
    out_channels: usize,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    act_fn: String,
    latent_channels: usize,
    norm_num_groups: usize,
    sample_size: serde_json::Value,
    scaling_factor: f64,
    shift_factor: Option<f64>,
    latents_mean: Option<Vec<f64>>,
    latents_std: Option<Vec<f64>>,
    force_upcast: serde_json::Value,
    use_quant_conv: bool,
    use_post_quant_conv: bool,
    mid_block_add_attention: bool,
}

impl Default for DiffusersVaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32.into(),
            scaling_factor: SD_SCALE_FACTOR,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true.into(),
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl DiffusersVaeConfig {
    /// The same network as an LDM config: ch = gcd(block_out_channels), ch_mult = channels / ch,
    /// num_res_blocks = layers_per_block, z_channels = embed_dim = latent_channels.
    /// `force_upcast` (a precision hint) is not used; what diffuq does not implement is an error
    /// naming the key.
    fn to_ldm(&self, what: &str) -> Result<VaeConfig> {
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        if self.block_out_channels.is_empty() || self.block_out_channels.contains(&0) {
            return Err(bad(
                "block_out_channels",
                format!(
                    "{:?} (expected positive channel counts)",
                    self.block_out_channels
                ),
            ));
        }
        if self.up_block_types.len() != self.block_out_channels.len()
            || self.up_block_types.iter().any(|t| t != "UpDecoderBlock2D")
        {
            return Err(bad(
                "up_block_types",
                format!(
                    "{:?} is not implemented (expected one \"UpDecoderBlock2D\" per block_out_channels entry)",
                    self.up_block_types
                ),
            ));
        }
        // diffuq's encoder has one level per block_out_channels entry, as every config that
        // save_pretrained writes has one down block type per entry; a config that omits the key
        // (diffusers' default, one entry) is accepted for the decoder's sake.
        if self
            .down_block_types
            .iter()
            .any(|t| t != "DownEncoderBlock2D")
        {
            return Err(bad(
                "down_block_types",
                format!(
                    "{:?} is not implemented (expected \"DownEncoderBlock2D\" entries)",
                    self.down_block_types
                ),
            ));
        }
        if !self.use_quant_conv {
            return Err(bad(
                "use_quant_conv",
                "false is not implemented (expected true)".into(),
            ));
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(bad(
                "act_fn",
                format!("{:?} is not implemented (expected \"silu\")", self.act_fn),
            ));
        }
        if self.norm_num_groups != GROUPS {
            return Err(bad(
                "norm_num_groups",
                format!(
                    "{} is not implemented (expected {GROUPS}, LDM's)",
                    self.norm_num_groups
                ),
            ));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(bad(
                "shift_factor",
                format!(
                    "{:?} is not implemented (expected null: the KL-f8 VAE has none)",
                    self.shift_factor
                ),
            ));
        }
        if self.latents_mean.is_some() || self.latents_std.is_some() {
            return Err(bad(
                if self.latents_mean.is_some() {
                    "latents_mean"
                } else {
                    "latents_std"
                },
                "per-channel latent statistics are not implemented (expected null)".into(),
            ));
        }
        if !self.use_post_quant_conv {
            return Err(bad(
                "use_post_quant_conv",
                "false is not implemented (expected true)".into(),
            ));
        }
        if !self.mid_block_add_attention {
            return Err(bad(
                "mid_block_add_attention",
                "false is not implemented (expected true)".into(),
            ));
        }
        let resolution = match &self.sample_size {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::Array(a) => a.first().and_then(|n| n.as_u64()),
            _ => None,
        }
        .ok_or_else(|| {
            bad(
                "sample_size",
                format!(
                    "{} (expected an integer or a list of integers)",
                    self.sample_size
                ),
            )
        })? as usize;
        let ch = self.block_out_channels.iter().fold(0, |g, &c| gcd(g, c));
        Ok(VaeConfig {
            double_z: true,
            z_channels: self.latent_channels,
            resolution,
            in_channels: self.in_channels,
            out_ch: self.out_channels,
            ch,
            ch_mult: self.block_out_channels.iter().map(|c| c / ch).collect(),
            num_res_blocks: self.layers_per_block,
            attn_resolutions: vec![],
            dropout: 0.0,
            embed_dim: self.latent_channels,
            scale_factor: self.scaling_factor,
        })
    }
}

impl VaeConfig {
    /// Read a config JSON: LDM's keys ([`VaeConfig`]) or a diffusers `AutoencoderKL`
    /// `config.json` (recognised by `_class_name`).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let what = format!("VAE config {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(what.clone(), format!("not JSON ({e})")))?;
        Self::from_json(v, &what)
    }

    /// A config from a JSON object (`what` names its source in errors).
    pub fn from_json(mut v: serde_json::Value, what: &str) -> Result<Self> {
        let class = v
            .get("_class_name")
            .and_then(|c| c.as_str())
            .map(String::from);
        let cfg = match class {
            Some(c) if c != "AutoencoderKL" => {
                return Err(Error::invalid(
                    what.to_string(),
                    format!("`_class_name` is {c:?}; expected \"AutoencoderKL\""),
                ))
            }
            Some(_) => {
                if let Some(map) = v.as_object_mut() {
                    map.retain(|k, _| !k.starts_with('_'));
                }
                let d: DiffusersVaeConfig = serde_json::from_value(v).map_err(|e| {
                    Error::invalid(
                        what.to_string(),
                        format!("not a diffusers AutoencoderKL config ({e})"),
                    )
                })?;
                d.to_ldm(what)?
            }
            None => serde_json::from_value(v).map_err(|e| {
                Error::invalid(
                    what.to_string(),
                    format!("not an LDM autoencoder config ({e})"),
                )
            })?,
        };
        cfg.validate_in(what)?;
        Ok(cfg)
    }

    /// Everything this implementation does not cover is an error naming the key.
    pub fn validate(&self) -> Result<()> {
        self.validate_in("VAE config")
    }

    fn validate_in(&self, what: &str) -> Result<()> {
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        for (key, v) in [
            ("z_channels", self.z_channels),
            ("in_channels", self.in_channels),
            ("out_ch", self.out_ch),
            ("ch", self.ch),
            ("embed_dim", self.embed_dim),
        ] {
            if v == 0 {
                return Err(bad(key, "must be ≥ 1".into()));
            }
        }
        if self.ch_mult.is_empty() {
            return Err(bad("ch_mult", "must list at least one level".into()));
        }
        for c in self.level_channels() {
            if c == 0 || c % GROUPS != 0 {
                return Err(bad(
                    "ch_mult",
                    format!(
                        "a level of {c} channels: every GroupNorm has {GROUPS} groups, so ch · ch_mult must be positive multiples of {GROUPS}"
                    ),
                ));
            }
        }
        if !(self.scale_factor.is_finite() && self.scale_factor > 0.0) {
            return Err(bad(
                "scale_factor",
                format!("must be finite and > 0, got {}", self.scale_factor),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad(
                "dropout",
                format!("must lie in [0, 1), got {}", self.dropout),
            ));
        }
        Ok(())
    }

    /// Channels of each level, ch · ch_mult (level 0 the full resolution).
    pub fn level_channels(&self) -> Vec<usize> {
        self.ch_mult.iter().map(|m| self.ch * m).collect()
    }

    /// Spatial upsampling factor latent → image, 2^(levels − 1) (8 for KL-f8).
    pub fn downsampling_factor(&self) -> usize {
        1 << self.ch_mult.len().saturating_sub(1)
    }
}

/// Which state-dict naming a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeNaming {
    /// LDM/CompVis (`decoder.mid.block_1`, `decoder.up.{i}` with i = 0 the full resolution).
    Ldm,
    /// diffusers `AutoencoderKL` (`decoder.mid_block.resnets.0`, `decoder.up_blocks.{i}` with i =
    /// 0 the lowest resolution).
    Diffusers,
}

impl VaeNaming {
    /// The middle ResnetBlock `j` of `side` (`"encoder"` or `"decoder"`).
    fn mid_block(self, side: &str, j: usize) -> String {
        match self {
            VaeNaming::Ldm => format!("{side}.mid.block_{}", j + 1),
            VaeNaming::Diffusers => format!("{side}.mid_block.resnets.{j}"),
        }
    }

    fn mid_attn(self, side: &str) -> String {
        match self {
            VaeNaming::Ldm => format!("{side}.mid.attn_1"),
            VaeNaming::Diffusers => format!("{side}.mid_block.attentions.0"),
        }
    }

    /// ResnetBlock `j` of the encoder's level `level` (the same order in both namings).
    fn down_block(self, level: usize, j: usize) -> String {
        match self {
            VaeNaming::Ldm => format!("encoder.down.{level}.block.{j}"),
            VaeNaming::Diffusers => format!("encoder.down_blocks.{level}.resnets.{j}"),
        }
    }

    fn down_attn(self, level: usize, j: usize) -> String {
        // diffusers' DownEncoderBlock2D has no attention; configs from diffusers never ask for it.
        format!("encoder.down.{level}.attn.{j}")
    }

    fn downsample(self, level: usize) -> String {
        match self {
            VaeNaming::Ldm => format!("encoder.down.{level}.downsample.conv"),
            VaeNaming::Diffusers => format!("encoder.down_blocks.{level}.downsamplers.0.conv"),
        }
    }

    /// ResnetBlock `j` of LDM level `level` (of `levels`).
    fn up_block(self, level: usize, levels: usize, j: usize) -> String {
        match self {
            VaeNaming::Ldm => format!("decoder.up.{level}.block.{j}"),
            VaeNaming::Diffusers => {
                format!("decoder.up_blocks.{}.resnets.{j}", levels - 1 - level)
            }
        }
    }

    fn up_attn(self, level: usize, j: usize) -> String {
        // diffusers' UpDecoderBlock2D has no attention; configs from diffusers never ask for it.
        format!("decoder.up.{level}.attn.{j}")
    }

    fn upsample(self, level: usize, levels: usize) -> String {
        match self {
            VaeNaming::Ldm => format!("decoder.up.{level}.upsample.conv"),
            VaeNaming::Diffusers => {
                format!("decoder.up_blocks.{}.upsamplers.0.conv", levels - 1 - level)
            }
        }
    }

    fn norm_out(self, side: &str) -> String {
        match self {
            VaeNaming::Ldm => format!("{side}.norm_out"),
            VaeNaming::Diffusers => format!("{side}.conv_norm_out"),
        }
    }

    fn shortcut(self) -> &'static str {
        match self {
            VaeNaming::Ldm => "nin_shortcut",
            VaeNaming::Diffusers => "conv_shortcut",
        }
    }
}

/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::silu(x)
}

fn conv(
    vb: &VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    name: &str,
) -> candle_core::Result<Conv2d> {
    let vb = vb.pp(name);
    let w = vb.get((cout, cin, k, k), "weight")?;
    let b = vb.get(cout, "bias")?;
    Ok(Conv2d::new(w, Some(b), 1, k / 2))
}

fn group_norm(vb: &VarBuilder, c: usize, name: &str) -> candle_core::Result<GroupNorm> {
    let vb = vb.pp(name);
    GroupNorm::new(
        vb.get(c, "weight")?,
        vb.get(c, "bias")?,
        c,
        GROUPS,
        NORM_EPS,
    )
}

/// LDM's `ResnetBlock` without time embedding (diffusers' `ResnetBlock2D` with temb None).
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        naming: VaeNaming,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: group_norm(vb, cin, "norm1")?,
            conv1: conv(vb, cin, cout, 3, "conv1")?,
            norm2: group_norm(vb, cout, "norm2")?,
            conv2: conv(vb, cout, cout, 3, "conv2")?,
            shortcut: if cin != cout {
                Some(conv(vb, cin, cout, 1, naming.shortcut())?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        let h = self.conv2.forward(&silu(&self.norm2.forward(&h)?)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// LDM's `AttnBlock` (diffusers' single-head `Attention` of the mid block): one head over all C
/// channels and the H·W positions, scores scaled by C^(−1/2).
struct AttnBlock {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    proj: Linear,
    scale: f64,
}

impl AttnBlock {
    fn new(vb: &VarBuilder, c: usize, naming: VaeNaming) -> candle_core::Result<Self> {
        // LDM: 1×1 convs (C, C, 1, 1); diffusers: Linear (C, C). Both act on each position.
        let proj = |name: &str| -> candle_core::Result<Linear> {
            let vb = vb.pp(name);
            let w = match naming {
                VaeNaming::Ldm => vb.get((c, c, 1, 1), "weight")?.reshape((c, c))?,
                VaeNaming::Diffusers => vb.get((c, c), "weight")?,
            };
            Ok(Linear::new(w, Some(vb.get(c, "bias")?)))
        };
        let (norm, q, k, v, out) = match naming {
            VaeNaming::Ldm => ("norm", "q", "k", "v", "proj_out"),
            VaeNaming::Diffusers => ("group_norm", "to_q", "to_k", "to_v", "to_out.0"),
        };
        Ok(Self {
            norm: group_norm(vb, c, norm)?,
            q: proj(q)?,
            k: proj(k)?,
            v: proj(v)?,
            proj: proj(out)?,
            scale: 1.0 / (c as f64).sqrt(),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let l = hh * ww;
        // (B, L, C): one token per position.
        let h = self
            .norm
            .forward(x)?
            .reshape((b, c, l))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.q.forward(&h)?;
        let k = self.k.forward(&h)?;
        let v = self.v.forward(&h)?;
        let w = (q.matmul(&k.t()?.contiguous()?)? * self.scale)?; // (B, L_q, L_k)
                                                                  // candle_nn's softmax (not softmax_last_dim, which has no backward): the decoder stays
                                                                  // differentiable in z.
        let w = candle_nn::ops::softmax(&w, D::Minus1)?;
        let a = self.proj.forward(&w.matmul(&v)?)?; // (B, L, C)
        x + a.transpose(1, 2)?.reshape((b, c, hh, ww))?
    }
}

/// One up level of the decoder, as LDM's `up[i]`.
struct UpLevel {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    upsample: Option<Conv2d>,
}

/// One down level of the encoder, as LDM's `down[i]`.
struct DownLevel {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    /// Stride-2 3×3 conv without padding, after zero-padding bottom and right by one.
    downsample: Option<Conv2d>,
}

impl DownLevel {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (j, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h)?;
            if let Some(a) = self.attns.get(j) {
                h = a.forward(&h)?;
            }
        }
        match &self.downsample {
            // LDM's Downsample and diffusers' Downsample2D(padding=0): F.pad(x, (0, 1, 0, 1)),
            // i.e. one zero column on the right (dim 3) and one zero row at the bottom (dim 2).
            Some(c) => c.forward(&h.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?),
            None => Ok(h),
        }
    }
}

/// The encoder with `quant_conv`: images → posterior moments (mean and log-variance).
struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownLevel>,
    mid: (ResnetBlock, AttnBlock, ResnetBlock),
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Conv2d,
}

impl Encoder {
    fn build(cfg: &VaeConfig, naming: VaeNaming, vb: &VarBuilder) -> candle_core::Result<Self> {
        if !cfg.double_z {
            candle_core::bail!(
                "config `double_z` false: the KL encoder's output is the posterior's mean and log-variance, expected true"
            );
        }
        let levels = cfg.level_channels();
        let n_levels = levels.len();
        if naming == VaeNaming::Diffusers && !cfg.attn_resolutions.is_empty() {
            candle_core::bail!(
                "attn_resolutions {:?}: the diffusers naming has no attention in the down blocks",
                cfg.attn_resolutions
            );
        }
        // LDM: conv_in → ch, level 0 maps ch → ch·ch_mult[0]; diffusers: conv_in →
        // block_out_channels[0].
        let mut block_in = match naming {
            VaeNaming::Ldm => cfg.ch,
            VaeNaming::Diffusers => levels[0],
        };
        let conv_in = conv(vb, cfg.in_channels, block_in, 3, "encoder.conv_in")?;
        let mut curr_res = cfg.resolution;
        let mut down = Vec::with_capacity(n_levels);
        for (level, &block_out) in levels.iter().enumerate() {
            let mut blocks = vec![];
            let mut attns = vec![];
            for j in 0..cfg.num_res_blocks {
                let name = naming.down_block(level, j);
                blocks.push(ResnetBlock::new(&vb.pp(name), block_in, block_out, naming)?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&curr_res) {
                    attns.push(AttnBlock::new(
                        &vb.pp(naming.down_attn(level, j)),
                        block_in,
                        naming,
                    )?);
                }
            }
            let downsample = if level + 1 != n_levels {
                curr_res /= 2;
                let c = vb.pp(naming.downsample(level));
                let w = c.get((block_in, block_in, 3, 3), "weight")?;
                Some(Conv2d::new(w, Some(c.get(block_in, "bias")?), 2, 0))
            } else {
                None
            };
            down.push(DownLevel {
                blocks,
                attns,
                downsample,
            });
        }
        let mid = (
            ResnetBlock::new(
                &vb.pp(naming.mid_block("encoder", 0)),
                block_in,
                block_in,
                naming,
            )?,
            AttnBlock::new(&vb.pp(naming.mid_attn("encoder")), block_in, naming)?,
            ResnetBlock::new(
                &vb.pp(naming.mid_block("encoder", 1)),
                block_in,
                block_in,
                naming,
            )?,
        );
        let norm_out = group_norm(vb, block_in, &naming.norm_out("encoder"))?;
        let moments = 2 * cfg.z_channels;
        let conv_out = conv(vb, block_in, moments, 3, "encoder.conv_out")?;
        let quant_conv = conv(vb, moments, 2 * cfg.embed_dim, 1, "quant_conv")?;
        Ok(Self {
            conv_in,
            down,
            mid,
            norm_out,
            conv_out,
            quant_conv,
        })
    }

    /// quant_conv(encoder(x)): (N, 2·embed_dim, H/f, W/f), the mean's channels first.
    fn moments(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            h = level.forward(&h)?;
        }
        let (b1, attn, b2) = &self.mid;
        let h = b2.forward(&attn.forward(&b1.forward(&h)?)?)?;
        let h = silu(&self.norm_out.forward(&h)?)?;
        self.quant_conv.forward(&self.conv_out.forward(&h)?)
    }
}

/// The KL-f8 autoencoder: the decoder with `post_quant_conv` and, when the checkpoint has it, the
/// encoder with `quant_conv` (see the module doc). The name is the decoder's because that is
/// what every checkpoint carries and what sampling needs.
pub struct VaeDecoder {
    config: VaeConfig,
    naming: VaeNaming,
    dtype: DType,
    device: Device,
    post_quant_conv: Conv2d,
    conv_in: Conv2d,
    mid: (ResnetBlock, AttnBlock, ResnetBlock),
    /// In execution order: the lowest resolution (LDM `up[L−1]`) first.
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    /// The encoder, or None for a decoder-only checkpoint.
    encoder: Option<Encoder>,
    /// The checkpoint, for the error that encoding without an encoder gives.
    source: String,
}

impl VaeDecoder {
    /// Build the decoder from `config` with parameters from `vb` named as `naming` (a
    /// checkpoint's tensors or [`ParamSource::shapes_only`]).
    pub fn new(config: &VaeConfig, naming: VaeNaming, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Self::build(config, naming, vb)
            .map_err(|e| Error::invalid("VAE decoder weights", first_line(&e)))
    }

    /// The tensors (name, shape) the decoder of `config` reads in the LDM naming (`decoder.*`
    /// and `post_quant_conv.*`), in name order; computed by building the decoder without values,
    /// so it is exactly what loading asks for.
    pub fn parameter_shapes(config: &VaeConfig) -> Result<Vec<(String, Vec<usize>)>> {
        Self::parameter_shapes_named(config, VaeNaming::Ldm)
    }

    /// [`Self::parameter_shapes`] in either naming.
    pub fn parameter_shapes_named(
        config: &VaeConfig,
        naming: VaeNaming,
    ) -> Result<Vec<(String, Vec<usize>)>> {
        let (vb, src) = ParamSource::shapes_only().var_builder(DType::F32, &Device::Cpu);
        Self::new(config, naming, vb)?;
        Ok(src.asked())
    }

    /// The tensors (name, shape) the encoder of `config` reads in `naming` (`encoder.*` and
    /// `quant_conv.*`), in name order, computed as [`Self::parameter_shapes`] is.
    pub fn encoder_parameter_shapes(
        config: &VaeConfig,
        naming: VaeNaming,
    ) -> Result<Vec<(String, Vec<usize>)>> {
        config.validate()?;
        let (vb, src) = ParamSource::shapes_only().var_builder(DType::F32, &Device::Cpu);
        Encoder::build(config, naming, &vb)
            .map_err(|e| Error::invalid("VAE encoder weights", first_line(&e)))?;
        Ok(src.asked())
    }

    fn build(cfg: &VaeConfig, naming: VaeNaming, vb: VarBuilder) -> candle_core::Result<Self> {
        let levels = cfg.level_channels();
        let n_levels = levels.len();
        if naming == VaeNaming::Diffusers && !cfg.attn_resolutions.is_empty() {
            candle_core::bail!(
                "attn_resolutions {:?}: the diffusers naming has no attention in the up blocks",
                cfg.attn_resolutions
            );
        }
        let post_quant_conv = conv(&vb, cfg.embed_dim, cfg.z_channels, 1, "post_quant_conv")?;
        let mut block_in = levels[n_levels - 1];
        let mut curr_res = cfg.resolution >> (n_levels - 1);
        let conv_in = conv(&vb, cfg.z_channels, block_in, 3, "decoder.conv_in")?;
        let mid = (
            ResnetBlock::new(
                &vb.pp(naming.mid_block("decoder", 0)),
                block_in,
                block_in,
                naming,
            )?,
            AttnBlock::new(&vb.pp(naming.mid_attn("decoder")), block_in, naming)?,
            ResnetBlock::new(
                &vb.pp(naming.mid_block("decoder", 1)),
                block_in,
                block_in,
                naming,
            )?,
        );
        let mut up = Vec::with_capacity(n_levels);
        for level in (0..n_levels).rev() {
            let block_out = levels[level];
            let mut blocks = vec![];
            let mut attns = vec![];
            for j in 0..=cfg.num_res_blocks {
                let name = naming.up_block(level, n_levels, j);
                blocks.push(ResnetBlock::new(&vb.pp(name), block_in, block_out, naming)?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&curr_res) {
                    attns.push(AttnBlock::new(
                        &vb.pp(naming.up_attn(level, j)),
                        block_in,
                        naming,
                    )?);
                }
            }
            let upsample = if level != 0 {
                curr_res *= 2;
                Some(conv(
                    &vb,
                    block_in,
                    block_in,
                    3,
                    &naming.upsample(level, n_levels),
                )?)
            } else {
                None
            };
            up.push(UpLevel {
                blocks,
                attns,
                upsample,
            });
        }
        let norm_out = group_norm(&vb, block_in, &naming.norm_out("decoder"))?;
        let conv_out = conv(&vb, block_in, cfg.out_ch, 3, "decoder.conv_out")?;
        Ok(Self {
            config: cfg.clone(),
            naming,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            post_quant_conv,
            conv_in,
            mid,
            up,
            norm_out,
            conv_out,
            encoder: None,
            source: "VAE decoder weights".into(),
        })
    }

    /// The config file for the checkpoint at `path` and the weight file: a directory holds
    /// `config.json` and `diffusion_pytorch_model.safetensors` (or `.bin`, or exactly one
    /// `.safetensors`/`.pth`/`.pt`/`.ckpt`); beside a weight file, `<stem>.json` if it exists,
    /// else `config.json` if it exists, else none (Stable Diffusion's config, [`VaeConfig`]'s
    /// default, as U-ViT's `get_model` hard-codes it for `autoencoder_kl_ema.pth`).
    pub fn locate(path: &Path) -> Result<(Option<PathBuf>, PathBuf)> {
        if !path.exists() {
            return Err(Error::invalid(
                format!("VAE checkpoint {}", path.display()),
                "does not exist",
            ));
        }
        if !path.is_dir() {
            let own = path.with_extension("json");
            let beside = path.parent().unwrap_or(Path::new(".")).join("config.json");
            let cfg = [own, beside].into_iter().find(|p| p.exists() && p != path);
            return Ok((cfg, path.to_path_buf()));
        }
        let cfg = path.join("config.json");
        if !cfg.exists() {
            return Err(Error::invalid(
                format!("VAE checkpoint directory {}", path.display()),
                "holds no config.json",
            ));
        }
        for name in [
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.bin",
        ] {
            if path.join(name).exists() {
                return Ok((Some(cfg), path.join(name)));
            }
        }
        let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| {
                    ["safetensors", "pth", "pt", "ckpt"].contains(&e.to_string_lossy().as_ref())
                })
            })
            .collect();
        found.sort();
        match found.len() {
            1 => Ok((Some(cfg), found.remove(0))),
            n => Err(Error::invalid(
                format!("VAE checkpoint directory {}", path.display()),
                format!(
                    "holds no diffusion_pytorch_model.safetensors/.bin and {n} .safetensors/.pth/.pt/.ckpt files (expected exactly one)"
                ),
            )),
        }
    }

    /// Load the autoencoder of the checkpoint at `path` (see [`Self::locate`] and the module doc
    /// for the formats; the naming is detected from the tensor names): the decoder, and the
    /// encoder when the checkpoint has any `encoder.*`/`quant_conv.*` tensor. Tensors of any
    /// float dtype are converted to `dtype`. A missing or mis-shaped tensor, or one the config
    /// does not use, is an error naming it and the file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg_path, weights) = Self::locate(path)?;
        let config = match &cfg_path {
            Some(p) => VaeConfig::from_json_file(p)?,
            None => VaeConfig::default(),
        };
        let tensors = crate::checkpoint::read_tensors(&weights)?;
        let what = format!("weights {}", weights.display());
        Self::from_tensors(&config, tensors, &what, dtype, device)
    }

    /// The autoencoder from a checkpoint's named tensors (`what` names them in errors): the
    /// `state_dict.` and `first_stage_model.` wrappers are removed, the naming detected, the
    /// encoder built if any of its tensors is there, and every remaining tensor must be used.
    pub fn from_tensors(
        config: &VaeConfig,
        tensors: Vec<(String, Tensor)>,
        what: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let (naming, tensors) = select_tensors(tensors, what)?;
        let has_encoder = tensors
            .iter()
            .any(|(k, _)| k.starts_with("encoder.") || k.starts_with("quant_conv."));
        let (vb, src) = ParamSource::load(tensors, what.to_string()).var_builder(dtype, device);
        // The parameter source's messages already name the file.
        let named = |e: candle_core::Error| super::params::build_error(what, &e);
        let mut net = Self::build(config, naming, vb.clone()).map_err(named)?;
        if has_encoder {
            net.encoder = Some(Encoder::build(config, naming, &vb).map_err(named)?);
        }
        net.source = what.to_string();
        src.finish()?;
        Ok(net)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    pub fn naming(&self) -> VaeNaming {
        self.naming
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Images from *scaled* latents z (N, embed_dim, h, w), as a latent diffusion model samples
    /// them: this divides by `scale_factor` itself (U-ViT's `FrozenAutoencoderKL.decode`;
    /// diffusers pipelines' `vae.decode(z / scaling_factor)`). Returns (N, out_ch, f·h, f·w), f =
    /// [`VaeConfig::downsampling_factor`], in z's dtype, in the decoder's native range (≈ [−1,
    /// 1]) and not clamped. Computed in the load dtype on the load device; differentiable in z.
    /// Memory: the middle attention holds an (h·w)² score matrix per latent (1024² for ImageNet
    /// 256², 4096² for 512²), so large batches are best decoded in chunks.
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let dims = z.dims();
        if dims.len() != 4 || dims[1] != self.config.embed_dim {
            candle_core::bail!(
                "VAE decoder: latents of shape {dims:?}, expected (N, {}, h, w)",
                self.config.embed_dim
            );
        }
        let out_dtype = z.dtype();
        let z = (z.to_device(&self.device)?.to_dtype(self.dtype)? / self.config.scale_factor)?;
        let h = self.conv_in.forward(&self.post_quant_conv.forward(&z)?)?;
        let (b1, attn, b2) = &self.mid;
        let mut h = b2.forward(&attn.forward(&b1.forward(&h)?)?)?;
        for level in &self.up {
            for (j, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(a) = level.attns.get(j) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(c) = &level.upsample {
                h = c.forward(&super::upsample::nearest2x(&h)?)?;
            }
        }
        let h = silu(&self.norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)?.to_dtype(out_dtype)
    }

    /// Whether the checkpoint had the encoder (else the `encode_*` methods are errors).
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// The encoder, or the one-line error naming the checkpoint and what it lacks. Built without
    /// `bail!`, whose backtrace (RUST_BACKTRACE) would add lines.
    fn encoder(&self) -> candle_core::Result<&Encoder> {
        self.encoder.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: holds no VAE encoder (the `encoder.*` and `quant_conv.*` tensors, e.g. `encoder.conv_in.weight`, are missing); it was loaded as a decoder only and cannot encode",
                self.source
            ))
        })
    }

    /// The posterior's (mean, log-variance) for images x (N, in_channels, H, W), H and W
    /// multiples of [`VaeConfig::downsampling_factor`]: each (N, embed_dim, H/f, W/f), *not*
    /// scaled, the log-variance clamped to [−30, 20] as LDM's `DiagonalGaussianDistribution` and
    /// U-ViT's `FrozenAutoencoderKL.sample` do. In x's dtype; computed in the load dtype on the
    /// load device; differentiable in x.
    pub fn encode_moments(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (mean, logvar) = self.moments(x)?;
        Ok((mean.to_dtype(x.dtype())?, logvar.to_dtype(x.dtype())?))
    }

    /// [`Self::encode_moments`] in the load dtype.
    fn moments(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let enc = self.encoder()?;
        let dims = x.dims();
        let f = self.config.downsampling_factor();
        if dims.len() != 4
            || dims[1] != self.config.in_channels
            || !dims[2].is_multiple_of(f)
            || !dims[3].is_multiple_of(f)
            || dims[2] == 0
            || dims[3] == 0
        {
            candle_core::bail!(
                "VAE encoder: images of shape {dims:?}, expected (N, {}, H, W) with H and W positive multiples of {f}",
                self.config.in_channels
            );
        }
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let m = enc.moments(&x)?;
        let e = self.config.embed_dim;
        let mean = m.narrow(1, 0, e)?;
        let logvar = m.narrow(1, e, e)?.clamp(-30.0, 20.0)?;
        Ok((mean, logvar))
    }

    /// The *scaled* posterior mean, scale_factor · mean(x): the deterministic latent of images x
    /// ∈ [−1, 1] (N, in_channels, H, W), on the scale a latent diffusion model samples (and
    /// [`Self::decode`] reads). Shapes, dtype and device as [`Self::encode_moments`].
    pub fn encode_mean(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (mean, _) = self.moments(x)?;
        (mean * self.config.scale_factor)?.to_dtype(x.dtype())
    }

    /// A *scaled* posterior sample, scale_factor · (mean + exp(logvar / 2) · eps), with the
    /// standard normals `eps` (N, embed_dim, H/f, W/f) drawn by the caller: U-ViT's
    /// `FrozenAutoencoderKL.encode` (`z = scale_factor · posterior sample`, which GU's
    /// `preprocess_la_uvit` encodes its Laplace training images with) and diffusers'
    /// `latent_dist.sample() · scaling_factor`, with ε made explicit so that diffuq's seed
    /// streams decide it. In x's dtype.
    pub fn encode_sample(&self, x: &Tensor, eps: &Tensor) -> candle_core::Result<Tensor> {
        let (mean, logvar) = self.moments(x)?;
        if eps.dims() != mean.dims() {
            candle_core::bail!(
                "VAE encoder: eps of shape {:?}, expected the latent shape {:?}",
                eps.dims(),
                mean.dims()
            );
        }
        let eps = eps.to_device(mean.device())?.to_dtype(mean.dtype())?;
        let std = (logvar * 0.5)?.exp()?;
        ((mean + (std * eps)?)? * self.config.scale_factor)?.to_dtype(x.dtype())
    }
}

/// Strip the `state_dict.` and `first_stage_model.` wrappers, skip LDM's `loss.*`, detect the
/// naming from the decoder's names.
fn select_tensors(
    tensors: Vec<(String, Tensor)>,
    what: &str,
) -> Result<(VaeNaming, Vec<(String, Tensor)>)> {
    fn strip(tensors: Vec<(String, Tensor)>, prefix: &str) -> Vec<(String, Tensor)> {
        if !tensors.iter().any(|(k, _)| k.starts_with(prefix)) {
            return tensors;
        }
        tensors
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
            .collect()
    }
    let tensors = strip(strip(tensors, "state_dict."), "first_stage_model.");
    let mut kept = Vec::new();
    for (k, v) in tensors {
        let top = k.split('.').next().unwrap_or("");
        match top {
            "decoder" | "post_quant_conv" | "encoder" | "quant_conv" => kept.push((k, v)),
            "loss" => {}
            _ => {
                return Err(Error::invalid(
                    what.to_string(),
                    format!(
                        "tensor `{k}` is not part of a KL autoencoder (expected encoder.*, decoder.*, quant_conv.*, post_quant_conv.*, optionally under first_stage_model.)"
                    ),
                ))
            }
        }
    }
    let has = |p: &str| kept.iter().any(|(k, _)| k.starts_with(p));
    let ldm = has("decoder.mid.") || has("decoder.up.");
    let diffusers = has("decoder.mid_block.") || has("decoder.up_blocks.");
    let naming = match (ldm, diffusers) {
        (true, false) => VaeNaming::Ldm,
        (false, true) => VaeNaming::Diffusers,
        (true, true) => {
            return Err(Error::invalid(
                what.to_string(),
                "mixes LDM (`decoder.mid.`/`decoder.up.`) and diffusers (`decoder.mid_block.`/`decoder.up_blocks.`) tensor names",
            ))
        }
        (false, false) => {
            return Err(Error::invalid(
                what.to_string(),
                "holds no autoencoder decoder (no `decoder.mid.*` or `decoder.mid_block.*` tensors)",
            ))
        }
    };
    let other_encoder = match naming {
        VaeNaming::Ldm => has("encoder.mid_block.") || has("encoder.down_blocks."),
        VaeNaming::Diffusers => has("encoder.mid.") || has("encoder.down."),
    };
    if other_encoder {
        return Err(Error::invalid(
            what.to_string(),
            format!("mixes naming: the decoder is in the {naming:?} naming, the encoder is not"),
        ));
    }
    Ok((naming, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_stable_diffusions_kl_f8() {
        // U-ViT libs/autoencoder.py get_model(): ch 128, ch_mult [1, 2, 4, 4], 2 blocks, no up
        // attention, z_channels = embed_dim = 4, scale 0.18215.
        let d = VaeConfig::default();
        assert_eq!(d.level_channels(), vec![128, 256, 512, 512]);
        assert_eq!(d.downsampling_factor(), 8);
        assert_eq!((d.z_channels, d.embed_dim, d.num_res_blocks), (4, 4, 2));
        assert_eq!(d.scale_factor, 0.18215);
        assert!(d.attn_resolutions.is_empty());
        d.validate().unwrap();
    }

    #[test]
    fn diffusers_configs_convert_to_the_same_network() {
        let c = VaeConfig::from_json(
            serde_json::json!({
                "_class_name": "AutoencoderKL", "_diffusers_version": "0.31.0",
                "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                                   "UpDecoderBlock2D"],
                "sample_size": 512,
                "force_upcast": false
            }),
            "x",
        )
        .unwrap();
        let d = VaeConfig::default();
        assert_eq!((c.ch, &c.ch_mult), (d.ch, &d.ch_mult));
        assert_eq!((c.num_res_blocks, c.embed_dim, c.resolution), (2, 4, 512));
        // Decreasing channels: the gcd is the base.
        let c = VaeConfig::from_json(
            serde_json::json!({"_class_name": "AutoencoderKL", "block_out_channels": [64, 32],
                               "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
                               "sample_size": [16, 16], "scaling_factor": 0.13025}),
            "x",
        )
        .unwrap();
        assert_eq!(
            (c.ch, c.ch_mult.clone(), c.scale_factor),
            (32, vec![2, 1], 0.13025)
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = |v: serde_json::Value| {
            VaeConfig::from_json(v, "VAE config x/config.json")
                .unwrap_err()
                .to_string()
        };
        let e = err(serde_json::json!({"ch_mul": [1, 2]}));
        assert!(e.contains("x/config.json") && e.contains("`ch_mul`"), "{e}");
        let e = err(serde_json::json!({"ch": 48}));
        assert!(e.contains("`ch_mult`") && e.contains("48 channels"), "{e}");
        let e = err(serde_json::json!({"scale_factor": 0.0}));
        assert!(e.contains("`scale_factor`"), "{e}");
        let e = err(serde_json::json!({"_class_name": "AutoencoderKL", "shift_factor": 0.1159}));
        assert!(e.contains("`shift_factor`"), "{e}");
        let e = err(serde_json::json!({"_class_name": "AutoencoderKL", "norm_num_groups": 16}));
        assert!(e.contains("`norm_num_groups`"), "{e}");
        let e = err(serde_json::json!({"_class_name": "AutoencoderKL", "up_block_types": ["X"]}));
        assert!(e.contains("`up_block_types`"), "{e}");
        let e =
            err(serde_json::json!({"_class_name": "AutoencoderKL", "use_post_quant_conv": false}));
        assert!(e.contains("`use_post_quant_conv`"), "{e}");
        let e = err(serde_json::json!({"_class_name": "AutoencoderKL",
                                       "down_block_types": ["DownBlock2D"]}));
        assert!(e.contains("`down_block_types`"), "{e}");
        let e = err(serde_json::json!({"_class_name": "AutoencoderKL", "use_quant_conv": false}));
        assert!(e.contains("`use_quant_conv`"), "{e}");
        let e = err(serde_json::json!({"in_channels": 0}));
        assert!(e.contains("`in_channels`"), "{e}");
        let e = err(serde_json::json!({"_class_name": "AutoencoderKL", "latent_chanels": 4}));
        assert!(e.contains("`latent_chanels`"), "{e}");
        let e = err(serde_json::json!({"_class_name": "AutoencoderTiny"}));
        assert!(e.contains("AutoencoderTiny"), "{e}");
    }

    #[test]
    fn the_two_namings_differ_only_by_the_name_map() {
        // Same shapes, names mapped: up.{i} ↔ up_blocks.{L−1−i}, mid.block_{1,2} ↔
        // mid_block.resnets.{0,1}, 1×1 conv attention ↔ Linear, norm_out ↔ conv_norm_out.
        let cfg = VaeConfig::default();
        let ldm = VaeDecoder::parameter_shapes(&cfg).unwrap();
        let dif = VaeDecoder::parameter_shapes_named(&cfg, VaeNaming::Diffusers).unwrap();
        assert_eq!(ldm.len(), dif.len());
        let find = |v: &[(String, Vec<usize>)], k: &str| {
            v.iter().find(|(n, _)| n == k).map(|(_, s)| s.clone())
        };
        assert_eq!(
            find(&ldm, "decoder.up.0.block.0.nin_shortcut.weight"),
            find(&dif, "decoder.up_blocks.3.resnets.0.conv_shortcut.weight")
        );
        assert_eq!(
            find(&ldm, "decoder.up.0.block.0.nin_shortcut.weight"),
            Some(vec![128, 256, 1, 1])
        );
        assert_eq!(
            find(&ldm, "decoder.mid.attn_1.q.weight"),
            Some(vec![512, 512, 1, 1])
        );
        assert_eq!(
            find(&dif, "decoder.mid_block.attentions.0.to_q.weight"),
            Some(vec![512, 512])
        );
        assert!(find(&ldm, "decoder.up.3.upsample.conv.weight").is_some());
        assert!(find(&ldm, "decoder.up.0.upsample.conv.weight").is_none());
        assert!(find(&dif, "decoder.up_blocks.0.upsamplers.0.conv.weight").is_some());
        assert!(find(&dif, "decoder.up_blocks.3.upsamplers.0.conv.weight").is_none());
    }

    #[test]
    fn the_encoders_differ_by_names_and_the_conv_in_width() {
        // down.{i} ↔ down_blocks.{i} (same order), downsample.conv ↔ downsamplers.0.conv; LDM's
        // conv_in has ch outputs, diffusers' ch·ch_mult[0] (equal for SD's KL-f8).
        let cfg = VaeConfig::default();
        let ldm = VaeDecoder::encoder_parameter_shapes(&cfg, VaeNaming::Ldm).unwrap();
        let dif = VaeDecoder::encoder_parameter_shapes(&cfg, VaeNaming::Diffusers).unwrap();
        assert_eq!(ldm.len(), dif.len());
        let find = |v: &[(String, Vec<usize>)], k: &str| {
            v.iter().find(|(n, _)| n == k).map(|(_, s)| s.clone())
        };
        assert_eq!(
            find(&ldm, "encoder.down.1.block.0.nin_shortcut.weight"),
            find(&dif, "encoder.down_blocks.1.resnets.0.conv_shortcut.weight")
        );
        assert_eq!(
            find(&ldm, "encoder.down.2.downsample.conv.weight"),
            Some(vec![512, 512, 3, 3])
        );
        assert!(find(&ldm, "encoder.down.3.downsample.conv.weight").is_none());
        assert_eq!(find(&ldm, "quant_conv.weight"), Some(vec![8, 8, 1, 1]));
        let cfg = VaeConfig {
            ch: 32,
            ch_mult: vec![2, 1],
            ..VaeConfig::default()
        };
        let ldm = VaeDecoder::encoder_parameter_shapes(&cfg, VaeNaming::Ldm).unwrap();
        let dif = VaeDecoder::encoder_parameter_shapes(&cfg, VaeNaming::Diffusers).unwrap();
        assert_eq!(
            find(&ldm, "encoder.conv_in.weight"),
            Some(vec![32, 3, 3, 3])
        );
        assert_eq!(
            find(&dif, "encoder.conv_in.weight"),
            Some(vec![64, 3, 3, 3])
        );
        // double_z false has no posterior: an error naming the key.
        let cfg = VaeConfig {
            double_z: false,
            ..VaeConfig::default()
        };
        let e = VaeDecoder::encoder_parameter_shapes(&cfg, VaeNaming::Ldm)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`double_z`"), "{e}");
    }
}
