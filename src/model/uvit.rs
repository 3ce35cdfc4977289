//! U-ViT (Bao et al., "All are Worth Words: A ViT Backbone for Diffusion Models", CVPR 2023): the
//! `UViT` class of baofff/U-ViT `libs/uvit.py`, built from its constructor arguments and loaded
//! from the released `.pth` state dicts.
//!
//! AU (De Vita & Belagiannis 2025) runs the ImageNet 256² and 512² latent models
//! (`imagenet256_uvit_huge.pth`, `imagenet512_uvit_huge.pth`); GU (Jazbec et al. 2025, Fig. 3) the
//! 256² one, with a last-layer Laplace over `decoder_pred` (Linear 1152 → 16, 18,448 parameters).
//! Both releases: embed_dim 1152, depth 28, 16 heads, mlp_ratio 4, no qkv bias, no time MLP, 1001
//! classes (label 1000 is the null class of classifier-free guidance), conv False, 4 latent
//! channels (Stable Diffusion's autoencoder; encoding and its scale factor are not this module's
//! business); 32² latents in patches of 2 (256 tokens) and 64² in patches of 4 (256 tokens). The
//! output is ε ([`Prediction::Epsilon`]; the configs' `pred = 'noise_pred'`).
//!
//! Forward, as `UViT.forward` at baofff/U-ViT ce551708 (tokens are rows of D = embed_dim):
//!
//!   patches = patch_embed.proj(x) (a p×p conv of stride p), flattened to L = (S/p)² tokens
//!   time    = time_embed(sinusoid(t))  (time_embed: Identity, or Linear–SiLU–Linear with
//!             `mlp_time_embed`)
//!   h       = [label_emb(y),] time, patches  (+ pos_embed; 2 extra tokens when class-conditional,
//!             else 1)
//!   in_blocks (depth // 2), each output kept as a skip; mid_block; out_blocks (depth // 2), each
//!   first h = skip_linear(cat(h, skip)) over the last skip kept (with `skip`; without, the skips
//!   are dropped)
//!   Block(h) = h' + MLP(LN₂ h') with h' = h + Attn(LN₁ h), MLP = fc2(GELU(fc1)) (exact erf GELU,
//!   hidden int(D·mlp_ratio)), Attn = proj(softmax(q kᵀ · scale) v) per head, q, k, v split from
//!   qkv(h) as (3, heads, D/heads), scale = qk_scale or (D/heads)^(−1/2)
//!   out = final_layer(unpatchify(decoder_pred(norm(h))[extra tokens dropped]))
//!   with final_layer Identity (conv False) or a 3×3 conv (conv True); every LayerNorm has eps 1e-5.
//!
//! The sinusoid is [`timestep_embedding`] (guided-diffusion's: [cos(t·f_k) | sin(t·f_k)], f_k =
//! 10000^(−k/half), in float32, a zero column for odd D), the same function U-ViT defines.
//!
//! Time convention: the network is called with the model time as given. U-ViT's discrete latent
//! scripts (`train_ldm_discrete.py`, `eval_ldm_discrete.py`) train it on n ∈ {1, …, N}, N = 1000,
//! with ᾱ_n = ∏_{i ≤ n} (1 − β_i) (β of Stable Diffusion's scaled-linear schedule, 0.00085 to
//! 0.012), i.e. the 0-based ᾱ[n − 1]; at sampling they feed t_continuous · N to DPM-Solver's
//! discrete schedule (so model time n at ᾱ[n − 1]). That shift by one is the experiment's key to
//! set, not the network's.
//!
//! Attention: `libs/uvit.py` picks its kernel at import time — torch's
//! `scaled_dot_product_attention` ("flash") under torch ≥ 2.0, xformers, else the plain "math"
//! branch. All compute softmax(q kᵀ · scale) v, but only the math branch reads `qk_scale` (flash
//! always scales by (D/heads)^(−1/2)); diffuq follows the math branch. The releases leave
//! qk_scale None, where the branches agree. As the reference, a qk_scale of 0 means the default.
//!
//! Precision: the reference samples under fp16 autocast (accelerate `--mixed_precision fp16`, the
//! flash branch casting q, k, v to float32); diffuq runs in the dtype asked for (f32 or f64), with
//! the sinusoid in float32 as the reference. U-ViT has no dropout (MC-Dropout does not apply:
//! [`Mode`] is ignored).
//!
//! The last layer for Laplace methods is `decoder_pred`, one linear map per output token: features
//! are the final norm's tokens with the extra tokens dropped, (N, L, D), and the output assembles
//! by unpatchify. With `conv` True a 3×3 conv follows it, so it is not the last op: no last layer.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::adm::timestep_embedding;
use super::conv::Conv2d;
use super::network::{LastLayerNetwork, Mode, Network, Prediction};
use super::params::ParamSource;
use crate::error::{Error, Result};

/// `nn.LayerNorm`'s default eps (the `norm_layer` of every U-ViT config).
const NORM_EPS: f64 = 1e-5;

/// The constructor arguments of `UViT(...)` under their names, with the constructor's defaults
/// (what a key left out means in Python too); [`UViTConfig::imagenet256_huge`] and
/// [`UViTConfig::imagenet512_huge`] are the releases. `use_checkpoint` (activation
/// checkpointing) is accepted and ignored; `norm_layer` is always `nn.LayerNorm`. Two keys are
/// not constructor arguments: `architecture` (`"uvit"`, marks a config as this one) and `name`
/// (`"uvit"`, as in the U-ViT configs' `config.nnet`, so that dict can be written out as is). Any
/// other key is an error naming it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UViTConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// None (or 0, Python's `or`): (embed_dim / num_heads)^(−1/2).
    pub qk_scale: Option<f64>,
    pub mlp_time_embed: bool,
    /// ≤ 0: unconditional (the constructor's `if num_classes > 0`).
    pub num_classes: i64,
    pub use_checkpoint: bool,
    pub conv: bool,
    pub skip: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Default for UViTConfig {
    /// `UViT.__init__`'s defaults at baofff/U-ViT ce551708.
    fn default() -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: false,
            qk_scale: None,
            mlp_time_embed: false,
            num_classes: -1,
            use_checkpoint: false,
            conv: true,
            skip: true,
            architecture: None,
            name: None,
        }
    }
}

/// Does this JSON object describe a U-ViT (`"architecture": "uvit"`, or `"name": "uvit"` and no
/// `architecture`)?
pub fn is_uvit_json(v: &serde_json::Value) -> bool {
    match v.get("architecture").and_then(|a| a.as_str()) {
        Some(a) => a == "uvit",
        None => v.get("name").and_then(|n| n.as_str()) == Some("uvit"),
    }
}

impl UViTConfig {
    /// `config.nnet` of configs/imagenet256_uvit_huge.py: 32² latents, patches of 2.
    pub fn imagenet256_huge() -> Self {
        Self {
            img_size: 32,
            patch_size: 2,
            in_chans: 4,
            embed_dim: 1152,
            depth: 28,
            num_heads: 16,
            mlp_ratio: 4.0,
            qkv_bias: false,
            mlp_time_embed: false,
            num_classes: 1001,
            use_checkpoint: true,
            conv: false,
            ..Self::default()
        }
    }

    /// `config.nnet` of configs/imagenet512_uvit_huge.py: 64² latents, patches of 4.
    pub fn imagenet512_huge() -> Self {
        Self {
            img_size: 64,
            patch_size: 4,
            ..Self::imagenet256_huge()
        }
    }

    /// Read a config JSON (constructor argument names).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let what = format!("U-ViT config {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(what.clone(), format!("not JSON ({e})")))?;
        Self::from_json(v, &what)
    }

    /// A config from a JSON object (`what` names its source in errors).
    pub fn from_json(v: serde_json::Value, what: &str) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::invalid(
                what.to_string(),
                "not a U-ViT constructor config (expected a JSON object of UViT's arguments)",
            ));
        }
        let cfg: Self = match serde_json::from_value(v.clone()) {
            Ok(cfg) => cfg,
            Err(e) => {
                // serde_json names an unknown key but not the key of a mistyped value: find the
                // first key that fails on its own.
                let key = v.as_object().and_then(|o| {
                    o.iter().find_map(|(k, x)| {
                        let one = serde_json::json!({ k.as_str(): x.clone() });
                        serde_json::from_value::<Self>(one).is_err().then_some(k)
                    })
                });
                let what = match key {
                    Some(k) => format!("{what} `{k}`"),
                    None => what.to_string(),
                };
                return Err(Error::invalid(
                    what,
                    format!("not a U-ViT constructor config ({e})"),
                ));
            }
        };
        cfg.validate_in(what)?;
        Ok(cfg)
    }

    /// Everything the reference could not build or run is an error naming the key.
    pub fn validate(&self) -> Result<()> {
        self.validate_in("U-ViT config")
    }

    fn validate_in(&self, what: &str) -> Result<()> {
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        for (key, v) in [("architecture", &self.architecture), ("name", &self.name)] {
            if let Some(a) = v {
                if a != "uvit" {
                    return Err(bad(key, format!("{a:?} (expected \"uvit\")")));
                }
            }
        }
        for (key, v) in [
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("num_heads", self.num_heads),
        ] {
            if v == 0 {
                return Err(bad(key, "must be ≥ 1".into()));
            }
        }
        if self.img_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            return Err(bad(
                "img_size",
                format!(
                    "{} is not a positive multiple of patch_size {}",
                    self.img_size, self.patch_size
                ),
            ));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(bad(
                "num_heads",
                format!(
                    "{} does not divide embed_dim {}",
                    self.num_heads, self.embed_dim
                ),
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_hidden() >= 1) {
            return Err(bad(
                "mlp_ratio",
                format!(
                    "{} gives no MLP hidden units (int(embed_dim · mlp_ratio) must be ≥ 1)",
                    self.mlp_ratio
                ),
            ));
        }
        if let Some(s) = self.qk_scale {
            if !s.is_finite() {
                return Err(bad("qk_scale", format!("{s} is not finite")));
            }
        }
        Ok(())
    }

    /// Number of patch tokens L = (img_size / patch_size)².
    pub fn num_patches(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }

    /// Tokens before the patches: label (class-conditional) and time.
    pub fn extras(&self) -> usize {
        if self.num_classes > 0 {
            2
        } else {
            1
        }
    }

    /// Classes of a class-conditional model (the null class included), None if unconditional.
    pub fn classes(&self) -> Option<usize> {
        (self.num_classes > 0).then_some(self.num_classes as usize)
    }

    /// `int(dim * mlp_ratio)`: Python's int() truncates.
    pub fn mlp_hidden(&self) -> usize {
        let h = self.embed_dim as f64 * self.mlp_ratio;
        if h >= 1.0 {
            h.trunc() as usize
        } else {
            0
        }
    }

    /// Features per output token, patch_size² · in_chans (`decoder_pred`'s output width).
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    /// The attention logit scale: `qk_scale or head_dim ** -0.5`.
    pub fn attention_scale(&self) -> f64 {
        match self.qk_scale {
            Some(s) if s != 0.0 => s,
            _ => ((self.embed_dim / self.num_heads) as f64).powf(-0.5),
        }
    }
}

/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn linear(vb: &VarBuilder, cin: usize, cout: usize, bias: bool) -> candle_core::Result<Linear> {
    let b = if bias {
        Some(vb.get(cout, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(vb.get((cout, cin), "weight")?, b))
}

/// `nn.LayerNorm` over the last axis (biased variance, eps inside the root), from plain tensor
/// ops so that AU guidance can differentiate through it.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(vb: &VarBuilder, d: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(d, "weight")?,
            bias: vb.get(d, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// U-ViT's multi-head self-attention over the tokens.
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let h = self.heads;
        let dh = c / h;
        // 'B L (K H D) -> K B H L D'
        let qkv = self
            .qkv
            .forward(x)?
            .reshape(vec![b, l, 3, h, dh])?
            .permute([2usize, 0, 3, 1, 4])?;
        let part = |i: usize| qkv.get(i)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        // candle_nn's softmax (not softmax_last_dim, which has no backward): AU guidance
        // differentiates through the scores.
        let w = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let o = w.matmul(&v)?.transpose(1, 2)?.reshape((b, l, c))?;
        self.proj.forward(&o)
    }
}

/// `Block`: [skip_linear(cat(h, skip)) →] pre-norm attention and MLP, each residual.
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    skip_linear: Option<Linear>,
}

impl Block {
    fn new(vb: &VarBuilder, cfg: &UViTConfig, skip: bool) -> candle_core::Result<Self> {
        let d = cfg.embed_dim;
        let va = vb.pp("attn");
        let vm = vb.pp("mlp");
        let hidden = cfg.mlp_hidden();
        Ok(Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), d)?,
            attn: Attention {
                qkv: linear(&va.pp("qkv"), d, 3 * d, cfg.qkv_bias)?,
                proj: linear(&va.pp("proj"), d, d, true)?,
                heads: cfg.num_heads,
                scale: cfg.attention_scale(),
            },
            norm2: LayerNorm::new(&vb.pp("norm2"), d)?,
            fc1: linear(&vm.pp("fc1"), d, hidden, true)?,
            fc2: linear(&vm.pp("fc2"), hidden, d, true)?,
            skip_linear: if skip {
                Some(linear(&vb.pp("skip_linear"), 2 * d, d, true)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, skip: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = match (&self.skip_linear, skip) {
            (Some(l), Some(s)) => l.forward(&Tensor::cat(&[x, s], D::Minus1)?)?,
            (Some(_), None) => candle_core::bail!("U-ViT out block without its long skip"),
            (None, _) => x.clone(),
        };
        let x = (&x + self.attn.forward(&self.norm1.forward(&x)?)?)?;
        let m = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        x + m
    }
}

/// `'B (h w) (p1 p2 C) -> B C (h p1) (w p2)'` for a square grid of tokens.
fn unpatchify(x: &Tensor, p: usize, c: usize) -> candle_core::Result<Tensor> {
    let (n, l, f) = x.dims3()?;
    let g = (l as f64).sqrt().round() as usize;
    if g * g != l || f != p * p * c {
        candle_core::bail!(
            "unpatchify: {l} tokens of {f} features are not a square grid of {p}×{p}×{c} patches"
        );
    }
    x.reshape(vec![n, g, g, p, p, c])?
        .permute([0usize, 5, 1, 3, 2, 4])?
        .reshape((n, c, g * p, g * p))
}

/// `'B C (h p1) (w p2) -> B (h w) (p1 p2 C)'` (U-ViT's `patchify`), the inverse of [`unpatchify`].
fn patchify(x: &Tensor, p: usize) -> candle_core::Result<Tensor> {
    let (n, c, hh, ww) = x.dims4()?;
    if hh % p != 0 || ww % p != 0 {
        candle_core::bail!("patchify: a {hh}×{ww} image is not a grid of {p}×{p} patches");
    }
    let (h, w) = (hh / p, ww / p);
    x.reshape(vec![n, c, h, p, w, p])?
        .permute([0usize, 2, 4, 3, 5, 1])?
        .reshape((n, h * w, p * p * c))
}

/// baofff/U-ViT's `UViT`.
pub struct UViT {
    config: UViTConfig,
    dtype: DType,
    device: Device,
    patch_embed: Conv2d,
    time_embed: Option<(Linear, Linear)>,
    label_emb: Option<candle_nn::Embedding>,
    pos_embed: Tensor,
    in_blocks: Vec<Block>,
    mid_block: Block,
    out_blocks: Vec<Block>,
    norm: LayerNorm,
    decoder_pred: Linear,
    final_layer: Option<Conv2d>,
    name: String,
}

impl UViT {
    /// Build the network from `config` with parameters from `vb` (a checkpoint, a seeded
    /// initialisation, or [`ParamSource::shapes_only`]).
    pub fn new(config: &UViTConfig, vb: VarBuilder, name: impl Into<String>) -> Result<Self> {
        config.validate()?;
        Self::build(config, vb, name.into())
            .map_err(|e| Error::invalid("U-ViT weights", first_line(&e)))
    }

    /// The state-dict tensors (name, shape) a checkpoint for `config` must hold, in name order;
    /// computed by building the network without values, so it is exactly what loading asks for.
    pub fn parameter_shapes(config: &UViTConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let (vb, src) = ParamSource::shapes_only().var_builder(DType::F32, &Device::Cpu);
        Self::new(config, vb, "shapes")?;
        Ok(src.asked())
    }

    fn build(cfg: &UViTConfig, vb: VarBuilder, name: String) -> candle_core::Result<Self> {
        let d = cfg.embed_dim;
        let p = cfg.patch_size;
        let c = cfg.in_chans;
        let vp = vb.pp("patch_embed").pp("proj");
        let patch_embed = Conv2d::new(
            vp.get((d, c, p, p), "weight")?,
            Some(vp.get(d, "bias")?),
            p,
            0,
        );
        let time_embed = if cfg.mlp_time_embed {
            let vt = vb.pp("time_embed");
            Some((
                linear(&vt.pp("0"), d, 4 * d, true)?,
                linear(&vt.pp("2"), 4 * d, d, true)?,
            ))
        } else {
            None
        };
        let label_emb = match cfg.classes() {
            Some(k) => Some(candle_nn::Embedding::new(
                vb.pp("label_emb").get((k, d), "weight")?,
                d,
            )),
            None => None,
        };
        let pos_embed = vb.get((1, cfg.extras() + cfg.num_patches(), d), "pos_embed")?;
        let half = cfg.depth / 2;
        let in_blocks = (0..half)
            .map(|i| Block::new(&vb.pp("in_blocks").pp(i.to_string()), cfg, false))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mid_block = Block::new(&vb.pp("mid_block"), cfg, false)?;
        let out_blocks = (0..half)
            .map(|i| Block::new(&vb.pp("out_blocks").pp(i.to_string()), cfg, cfg.skip))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = LayerNorm::new(&vb.pp("norm"), d)?;
        let decoder_pred = linear(&vb.pp("decoder_pred"), d, cfg.patch_dim(), true)?;
        let final_layer = if cfg.conv {
            let vf = vb.pp("final_layer");
            Some(Conv2d::new(
                vf.get((c, c, 3, 3), "weight")?,
                Some(vf.get(c, "bias")?),
                1,
                1,
            ))
        } else {
            None
        };
        Ok(Self {
            config: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            patch_embed,
            time_embed,
            label_emb,
            pos_embed,
            in_blocks,
            mid_block,
            out_blocks,
            norm,
            decoder_pred,
            final_layer,
            name,
        })
    }

    /// The config file of the checkpoint at `path`: `config.json` in a directory; beside a file,
    /// `<stem>.json` if it exists (`imagenet256_uvit_huge.pth` + `imagenet256_uvit_huge.json`),
    /// else `config.json`.
    pub fn config_path(path: &Path) -> PathBuf {
        crate::checkpoint::config_beside(path)
    }

    /// The config and weight file of the checkpoint at `path`: a directory holding `config.json`
    /// and `model.pth` (or a single `.pt`/`.pth` file), or a weight file with its config beside it
    /// ([`Self::config_path`]).
    pub fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
        let cfg = Self::config_path(path);
        if !path.is_dir() {
            return Ok((cfg, path.to_path_buf()));
        }
        let model = path.join("model.pth");
        if model.exists() {
            return Ok((cfg, model));
        }
        let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        let mut pts: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pt" || e == "pth"))
            .collect();
        pts.sort();
        match pts.len() {
            1 => Ok((cfg, pts.remove(0))),
            n => Err(Error::invalid(
                format!("U-ViT checkpoint directory {}", path.display()),
                format!("holds no model.pth and {n} .pt/.pth files (expected exactly one)"),
            )),
        }
    }

    /// The U-ViT config for the checkpoint at `path`, if there is one: [`Self::config_path`]
    /// exists and is a U-ViT config by [`is_uvit_json`].
    pub fn config_for(path: &Path) -> Option<PathBuf> {
        crate::checkpoint::config_if(path, is_uvit_json)
    }

    /// Load a U-ViT checkpoint (see [`Self::locate`]): a `torch.save`d state dict (zip or legacy
    /// format; float32 or float16 tensors, converted to `dtype`). Missing, mis-shaped or unused
    /// tensors are errors naming them and the file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg_path, weights) = Self::locate(path)?;
        if !cfg_path.exists() {
            return Err(Error::invalid(
                format!("U-ViT checkpoint {}", path.display()),
                format!(
                    "no config beside the weights (looked for {})",
                    cfg_path.display()
                ),
            ));
        }
        let config = UViTConfig::from_json_file(&cfg_path)?;
        let name = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        }
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "uvit".into());
        Self::load_with_config(&config, &weights, name, dtype, device)
    }

    /// Load the state dict `weights` for a known `config` (a released checkpoint whose
    /// constructor arguments diffuq's checkpoint catalog holds needs no config file beside it).
    pub fn load_with_config(
        config: &UViTConfig,
        weights: &Path,
        name: String,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let tensors = crate::checkpoint::read_tensors(weights)?;
        let what = format!("weights {}", weights.display());
        let (vb, src) = ParamSource::load(tensors, what.clone()).var_builder(dtype, device);
        // The parameter source's messages already name the file.
        let net =
            Self::build(config, vb, name).map_err(|e| super::params::build_error(&what, &e))?;
        src.finish()?;
        Ok(net)
    }

    pub fn config(&self) -> &UViTConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The patch tokens after the final norm, (N, L, D): everything before `decoder_pred`.
    fn tokens(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let (s, c) = (cfg.img_size, cfg.in_chans);
        let n = match x.dims() {
            &[n, ci, h, w] if ci == c && h == s && w == s => n,
            dims => candle_core::bail!(
                "network `{}` takes (N, {c}, {s}, {s}) inputs, got {dims:?}",
                self.name
            ),
        };
        if t.len() != 1 && t.len() != n {
            candle_core::bail!("{} timesteps for a batch of {n}", t.len());
        }
        let d = cfg.embed_dim;
        let patches = self
            .patch_embed
            .forward(&x.to_dtype(self.dtype)?)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let times: Vec<f64> = (0..n)
            .map(|i| if t.len() == 1 { t[0] } else { t[i] })
            .collect();
        let mut time = Tensor::from_vec(timestep_embedding(&times, d), (n, d), &self.device)?
            .to_dtype(self.dtype)?;
        if let Some((l0, l2)) = &self.time_embed {
            time = l2.forward(&candle_nn::ops::silu(&l0.forward(&time)?)?)?;
        }
        let mut parts = vec![time.unsqueeze(1)?];
        match (&self.label_emb, labels) {
            (Some(e), Some(y)) => {
                let k = cfg.classes().unwrap_or(0);
                let y = y.to_dtype(DType::U32)?;
                let ys = y.to_vec1::<u32>()?;
                if ys.len() != n {
                    candle_core::bail!("{} labels for a batch of {n}", ys.len());
                }
                if let Some(bad) = ys.iter().find(|&&c| c as usize >= k) {
                    candle_core::bail!(
                        "label {bad} is out of range for network `{}` ({k} classes)",
                        self.name
                    );
                }
                parts.insert(0, e.forward(&y.to_device(&self.device)?)?.unsqueeze(1)?);
            }
            (Some(_), None) => candle_core::bail!(
                "network `{}` is class-conditional: labels are required",
                self.name
            ),
            (None, Some(_)) => candle_core::bail!(
                "network `{}` is unconditional but labels were given",
                self.name
            ),
            (None, None) => {}
        }
        parts.push(patches);
        let mut h = Tensor::cat(&parts, 1)?.broadcast_add(&self.pos_embed)?;
        let mut skips = Vec::with_capacity(self.in_blocks.len());
        for blk in &self.in_blocks {
            h = blk.forward(&h, None)?;
            skips.push(h.clone());
        }
        h = self.mid_block.forward(&h, None)?;
        for blk in &self.out_blocks {
            let s = skips.pop().expect("one skip per out block");
            h = blk.forward(&h, Some(&s))?;
        }
        let extras = cfg.extras();
        self.norm
            .forward(&h)?
            .narrow(1, extras, cfg.num_patches())?
            .contiguous()
    }
}

impl Network for UViT {
    fn prediction(&self) -> Prediction {
        Prediction::Epsilon
    }

    fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        _mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let h = self.tokens(x, t, labels)?;
        let img = unpatchify(
            &self.decoder_pred.forward(&h)?,
            self.config.patch_size,
            self.config.in_chans,
        )?;
        match &self.final_layer {
            Some(conv) => conv.forward(&img)?,
            None => img,
        }
        .to_dtype(x.dtype())
    }

    fn num_classes(&self) -> Option<usize> {
        self.config.classes()
    }

    fn last_layer(&self) -> Result<&dyn LastLayerNetwork> {
        if self.config.conv {
            return Err(Error::invalid(
                "laplace",
                format!(
                    "network `{}` (U-ViT, conv True) applies a 3×3 final_layer after decoder_pred: the Laplace layer must be the last op",
                    self.name
                ),
            ));
        }
        Ok(self)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// `decoder_pred` as the last layer (GU's): φ_{n,p} is token p of the final norm's output (the
/// extra tokens dropped), W = decoder_pred.weight (p²·C, D); the P = L token outputs unpatchify to
/// the image. Only for conv False ([`Network::last_layer`] refuses otherwise).
impl LastLayerNetwork for UViT {
    fn features(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        _mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        self.tokens(x, t, labels)
    }

    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        Ok((
            self.decoder_pred.weight().clone(),
            self.decoder_pred.bias().cloned(),
        ))
    }

    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        unpatchify(out, self.config.patch_size, self.config.in_chans)
    }

    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        patchify(target, self.config.patch_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::SeedStreams;

    #[test]
    fn release_configs_and_derived_sizes() {
        // Expected values: configs/imagenet{256,512}_uvit_huge.py and UViT.__init__ at
        // baofff/U-ViT ce551708 (read from the source).
        let c = UViTConfig::imagenet256_huge();
        assert_eq!((c.num_patches(), c.extras(), c.patch_dim()), (256, 2, 16));
        assert_eq!(c.classes(), Some(1001));
        assert_eq!(c.mlp_hidden(), 4608);
        assert!((c.attention_scale() - 1.0 / 72f64.sqrt()).abs() < 1e-15);
        let c = UViTConfig::imagenet512_huge();
        assert_eq!((c.num_patches(), c.patch_dim()), (256, 64));
        // config.nnet as written in the U-ViT config files parses (name kept, use_checkpoint
        // ignored), and equals the constructor.
        let v = serde_json::json!({"name": "uvit", "img_size": 32, "patch_size": 2, "in_chans": 4,
            "embed_dim": 1152, "depth": 28, "num_heads": 16, "mlp_ratio": 4, "qkv_bias": false,
            "mlp_time_embed": false, "num_classes": 1001, "use_checkpoint": true, "conv": false});
        assert!(is_uvit_json(&v));
        let mut parsed = UViTConfig::from_json(v, "t").unwrap();
        parsed.name = None;
        assert_eq!(parsed, UViTConfig::imagenet256_huge());
        // Constructor defaults; int(D · mlp_ratio) truncates; qk_scale 0 is Python-falsy.
        let d = UViTConfig::default();
        assert_eq!(
            (d.img_size, d.patch_size, d.embed_dim, d.depth),
            (224, 16, 768, 12)
        );
        assert!(d.conv && d.skip && d.classes().is_none() && d.extras() == 1);
        let c = UViTConfig::from_json(
            serde_json::json!({"embed_dim": 48, "num_heads": 3, "mlp_ratio": 2.5, "qk_scale": 0}),
            "t",
        )
        .unwrap();
        assert_eq!(c.mlp_hidden(), 120);
        assert_eq!(c.attention_scale(), 0.25);
        assert!(!is_uvit_json(
            &serde_json::json!({"architecture": "adm", "name": "uvit"})
        ));
        assert!(!is_uvit_json(&serde_json::json!({"name": "uvit_t2i"})));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = |v: serde_json::Value| {
            UViTConfig::from_json(v, "U-ViT config x/config.json")
                .unwrap_err()
                .to_string()
        };
        let e = err(serde_json::json!({"embed_dims": 64}));
        assert!(
            e.contains("x/config.json") && e.contains("`embed_dims`"),
            "{e}"
        );
        let e = err(serde_json::json!({"img_size": 30, "patch_size": 4}));
        assert!(
            e.contains("`img_size`") && e.contains("patch_size 4"),
            "{e}"
        );
        let e = err(serde_json::json!({"embed_dim": 64, "num_heads": 3}));
        assert!(e.contains("`num_heads`") && e.contains("64"), "{e}");
        let e = err(serde_json::json!({"mlp_ratio": 0.0}));
        assert!(e.contains("`mlp_ratio`"), "{e}");
        let e = err(serde_json::json!({"patch_size": 0}));
        assert!(e.contains("`patch_size`"), "{e}");
        let e = err(serde_json::json!({"architecture": "adm"}));
        assert!(e.contains("`architecture`"), "{e}");
        let e = err(serde_json::json!({"name": "uvit_t2i"}));
        assert!(e.contains("`name`"), "{e}");
        let e = err(serde_json::json!({"depth": "28"}));
        assert!(e.contains("x/config.json") && e.contains("`depth`"), "{e}");
        let e = err(serde_json::json!([1, 2]));
        assert!(
            e.contains("x/config.json") && e.contains("not a U-ViT"),
            "{e}"
        );
    }

    /// A small U-ViT in f64 with seeded parameters.
    fn tiny(extra: serde_json::Value) -> UViT {
        let mut v = serde_json::json!({
            "img_size": 8, "patch_size": 2, "in_chans": 3, "embed_dim": 16, "depth": 3,
            "num_heads": 2, "num_classes": 4, "conv": false, "qkv_bias": true
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let cfg = UViTConfig::from_json(v, "tiny").unwrap();
        let src = ParamSource::init(
            SeedStreams::new(5).purpose("uvit-test"),
            candle_nn::VarMap::new(),
        );
        let (vb, _) = src.var_builder(DType::F64, &Device::Cpu);
        UViT::new(&cfg, vb, "tiny").unwrap()
    }

    fn input(n: usize, seed: u64) -> Tensor {
        let idx: Vec<u64> = (0..n as u64).collect();
        let v = SeedStreams::new(seed)
            .purpose("x")
            .normals(&idx, None, 3 * 64);
        Tensor::from_vec(v, (n, 3, 8, 8), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }

    #[test]
    fn patchify_inverts_unpatchify_in_einops_order() {
        // 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)': token (h, w) feature (p1, p2, c) lands at
        // pixel (c, h·p + p1, w·p + p2). Checked on one element, then the round trip.
        let (p, c, g) = (2usize, 3usize, 4usize);
        let n = g * g * p * p * c;
        let tok = Tensor::arange(0u32, n as u32, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .reshape((1, g * g, p * p * c))
            .unwrap();
        let img = unpatchify(&tok, p, c).unwrap();
        assert_eq!(img.dims(), &[1, 3, 8, 8]);
        let (h, w, p1, p2, ch) = (1usize, 2usize, 1usize, 0usize, 2usize);
        let want = ((h * g + w) * p * p * c + (p1 * p + p2) * c + ch) as f64;
        let got = img
            .get(0)
            .unwrap()
            .get(ch)
            .unwrap()
            .get(h * p + p1)
            .unwrap()
            .get(w * p + p2)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(got, want);
        let back = patchify(&img, p).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            tok.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
    }

    #[test]
    fn the_output_is_differentiable_in_x_through_attention() {
        // AU guidance back-propagates through ε: the autograd directional derivative must equal
        // a central finite difference (f64), with and without the time MLP, skips and final conv.
        for extra in [
            serde_json::json!({}),
            serde_json::json!({"mlp_time_embed": true, "conv": true, "skip": false,
                               "num_classes": -1, "depth": 4}),
        ] {
            let net = tiny(extra);
            let x = candle_core::Var::from_tensor(&input(2, 1)).unwrap();
            let y = net
                .num_classes()
                .map(|_| Tensor::new(&[3u32, 0], &Device::Cpu).unwrap());
            let g = input(2, 2);
            let dir = input(2, 3);
            let f = |x: &Tensor| -> f64 {
                let o = net
                    .forward(x, &[10.0, 500.5], y.as_ref(), &mut Mode::Eval)
                    .unwrap();
                (o * &g)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let o = net
                .forward(x.as_tensor(), &[10.0, 500.5], y.as_ref(), &mut Mode::Eval)
                .unwrap();
            let grads = (o * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let auto = (grads.get(&x).unwrap() * &dir)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let h = 1e-5;
            let xp = (x.as_tensor() + (&dir * h).unwrap()).unwrap();
            let xm = (x.as_tensor() - (&dir * h).unwrap()).unwrap();
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            assert!(
                (auto - fd).abs() < 1e-6 * fd.abs().max(1.0),
                "autograd {auto} vs finite difference {fd}"
            );
        }
    }

    #[test]
    fn inputs_labels_and_conv_last_layer_are_checked() {
        let net = tiny(serde_json::json!({}));
        let x = input(2, 1);
        let err = |x: &Tensor, y: Option<&Tensor>| {
            net.forward(x, &[5.0], y, &mut Mode::Eval)
                .unwrap_err()
                .to_string()
        };
        let y = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        let e = err(&x, Some(&y));
        assert!(e.contains("label 4") && e.contains("4 classes"), "{e}");
        assert!(err(&x, None).contains("labels are required"));
        let e = err(&x.narrow(2, 0, 4).unwrap(), None);
        assert!(
            e.contains("(N, 3, 8, 8)") && e.contains("[2, 3, 4, 8]"),
            "{e}"
        );
        let e = net
            .forward(&x, &[1.0, 2.0, 3.0], Some(&y), &mut Mode::Eval)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 timesteps"), "{e}");
        let conv = tiny(serde_json::json!({"conv": true, "num_classes": -1}));
        let e = Network::last_layer(&conv).err().unwrap().to_string();
        assert!(
            e.contains("final_layer") && e.contains("last op") && !e.contains('\n'),
            "{e}"
        );
        let e = conv
            .forward(&x, &[5.0], Some(&y), &mut Mode::Eval)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unconditional"), "{e}");
    }
}
