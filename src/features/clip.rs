//! CLIP's ViT image tower with its projection (Radford et al. 2021), and OpenAI CLIP's image
//! preprocessing: the feature space of GU's semantic likelihood.
//!
//! GU (Jazbec et al. 2025, Eq. 7) measures generative uncertainty as the entropy of the
//! moment-matched Gaussian of a sample's embeddings under the M posterior parameter sets. Its
//! release (`semantic_likelihood.py`, docs/released-code.md §2.5) embeds each generated PNG with
//! OpenAI's `clip.load("ViT-B/32")`: `preprocess` (below), then `model.encode_image`, and keeps the
//! raw, un-normalised 512-d embeddings. [`ClipFeatures`] is that map as a diffuq
//! [`super::FeatureExtractor`]; [`ClipVision`] is the tower.
//!
//! Forward (OpenAI's `VisionTransformer.forward`, open_clip's with `pool_type = "tok"`,
//! transformers' `CLIPVisionModelWithProjection`), for an input x of (N, 3, S, S), S = image size,
//! P = patch size, G = S/P, width W, h heads of W/h channels:
//!
//!   t = [cls ; conv_P×P/P(x) flattened to G² tokens] + pos          (G² + 1 tokens of W)
//!   t = LN_pre(t)
//!   per layer: t = t + out(MHA(LN₁ t));  t = t + fc₂(act(fc₁(LN₂ t)))
//!   embedding = LN_post(t₀) · proj                                  (N, output_dim)
//!
//! MHA is softmax(q kᵀ/√(W/h)) v per head with q, k, v = the three W-row blocks of one (3W, W)
//! in-projection; every LayerNorm has ε = 1e-5 (transformers: `layer_norm_eps`) and is computed in
//! two passes (mean, then the mean square of the centred values) as torch does, not with candle's
//! fused one-pass kernel. act is QuickGELU x·σ(1.702x) for OpenAI's weights (their
//! `hidden_act: quick_gelu`, open_clip's `quick_gelu: true`) or the erf GELU (`"gelu"`, open_clip's
//! default `nn.GELU`). The patch conv has no bias and is computed as a matmul of the flattened
//! patches. ViT-B/32: S = 224, P = 32, W = 768, 12 layers, 12 heads, MLP 3072, output 512
//! ([`ClipConfig::vit_b_32`]; 87,849,216 parameters).
//!
//! Checkpoint namings accepted ([`Naming`], detected from the tensors; a common prefix such as
//! `module.` or `state_dict.` is allowed):
//! * OpenAI / open_clip: `visual.conv1.weight`, `visual.class_embedding`,
//!   `visual.positional_embedding`, `visual.ln_pre.*`, `visual.transformer.resblocks.{i}.{ln_1,
//!   attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`,
//!   `visual.ln_post.*`, `visual.proj` (W, output) — in open_clip's `open_clip_pytorch_model.bin`
//!   / `open_clip_model.safetensors` (with `open_clip_config.json` beside it), any torch state dict
//!   or `.safetensors` with these names, or OpenAI's TorchScript `ViT-B-32.pt`, whose module tree
//!   [`crate::checkpoint::read_tensors`] names the same way. Text-tower tensors and
//!   `logit_scale` are not read.
//! * transformers (`CLIPVisionModelWithProjection`, `CLIPModel`; a `save_pretrained` directory with
//!   `config.json` and `model.safetensors`): `vision_model.embeddings.{class_embedding,
//!   patch_embedding.weight, position_embedding.weight}`, `vision_model.pre_layrnorm`,
//!   `vision_model.encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2,
//!   mlp.fc1, mlp.fc2}`, `vision_model.post_layernorm`, `visual_projection.weight` (output, W).
//!   `vision_model.embeddings.position_ids` (a buffer older files hold) and `text_model.*` are not
//!   read.
//!
//! The tower's shape comes from `config.json` (transformers), `open_clip_config.json` (open_clip)
//! or, for a bare file such as OpenAI's `ViT-B-32.pt`, from the tensor shapes by OpenAI's own
//! `build_model` rule (W from `conv1`, P from its kernel, G from `positional_embedding`, layers from
//! the count of in-projections, output from `proj`, heads = W/64, QuickGELU).
//!
//! Preprocessing ([`ClipPreprocess`]): GU's images pass through uint8 PNGs and PIL, and diffuq
//! reproduces that path exactly, so that an image gives bit-identical CLIP inputs:
//! 1. float samples x in [−1, 1] → uint8 by GU's truncation, `(clamp((x + 1)/2, 0, 1)·255)` cast
//!    to uint8 (toward zero), in float32 ([`gu_uint8`]); uint8 images are taken as they are;
//! 2. OpenAI's `_transform(S)`: torchvision `Resize(S, BICUBIC)` of the shorter side (the longer
//!    side becomes ⌊S·long/short⌋) on the PIL image, which is Pillow's `Image.resize` with its
//!    bicubic filter (a = −0.5, support 2 widened by the scale factor when downsampling, i.e.
//!    antialiased), separable — a horizontal then a vertical pass, each with 22-bit fixed-point
//!    coefficients and each rounded and clamped to uint8 ([`pil_resize_bicubic`]); then
//!    `CenterCrop(S)` at offsets round((size − S)/2) with Python's half-to-even rounding; a
//!    one-channel image is repeated to RGB (`convert("RGB")`);
//! 3. `ToTensor` (v/255 in float32) and `Normalize` with OpenAI's mean and std (float32).
//!
//! Pillow's resizer is matched rather than torch's tensor bicubic (`F.interpolate`, a = −0.75, no
//! antialiasing, no uint8 rounding between the passes) because it is what `clip.load`'s
//! `preprocess` runs on the PIL images GU opens; golden/clip/preprocess.safetensors holds
//! Pillow 13's results, which diffuq reproduces bit for bit.
//!
//! Precision: the release runs CLIP in float16 on CUDA (`clip.load` converts the convs, linears,
//! attention and projections to fp16; its LayerNorms compute in float32). diffuq computes in
//! float32 throughout, from weights of any float dtype (OpenAI's archive stores float16); its
//! embeddings therefore differ from the release's fp16 ones by fp16 round-off (~1e-3 relative),
//! not by method.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::error::{Error, Result, TensorContext};
use crate::model::params::ParamSource;

/// OpenAI CLIP's normalisation mean (R, G, B), as `clip.load`'s `preprocess` uses it.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation (R, G, B). The digits are OpenAI's
/// (`clip.py`); the float32 they round to is what torchvision's `Normalize` holds.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// The most pixels the resized (pre-crop) image may have: a guard against extreme aspect ratios
/// (a 1×10⁴ image would become 224 × 2.24·10⁶).
const MAX_RESIZED_PIXELS: usize = 1 << 26;

// ---------------------------------------------------------------------------------------------
// Configuration.

/// The MLP non-linearity of the transformer blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x·σ(1.702x): OpenAI's CLIP (`hidden_act: quick_gelu`, open_clip `quick_gelu: true`).
    QuickGelu,
    /// The erf GELU: open_clip's default `nn.GELU`, transformers' `"gelu"`.
    Gelu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Gelu => x.gelu_erf(),
        }
    }
}

/// The shape of a CLIP ViT image tower.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipConfig {
    /// Input side S (square inputs).
    pub image_size: usize,
    /// Patch side P; S must be a multiple of it.
    pub patch_size: usize,
    /// Token width W.
    pub width: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads (dividing W).
    pub heads: usize,
    /// Hidden width of the MLPs (4W in every released CLIP).
    pub mlp_width: usize,
    /// Embedding dimension (the projection's output).
    pub output_dim: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self::vit_b_32()
    }
}

impl ClipConfig {
    /// OpenAI's ViT-B/32 (`clip.load("ViT-B/32")`, GU's model): 224², patch 32, width 768, 12
    /// layers of 12 heads, MLP 3072, 512-d output, QuickGELU.
    pub fn vit_b_32() -> Self {
        Self {
            image_size: 224,
            patch_size: 32,
            width: 768,
            layers: 12,
            heads: 12,
            mlp_width: 3072,
            output_dim: 512,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// open_clip's built-in model configs that are this architecture: `ViT-B-32` (nn.GELU, as
    /// open_clip's own config says) and `ViT-B-32-quickgelu` (OpenAI's weights).
    pub fn open_clip_model(name: &str) -> Result<Self> {
        match name {
            "ViT-B-32-quickgelu" => Ok(Self::vit_b_32()),
            "ViT-B-32" => Ok(Self {
                activation: Activation::Gelu,
                ..Self::vit_b_32()
            }),
            other => Err(Error::invalid(
                "open_clip model name",
                format!("`{other}` is not covered (known: ViT-B-32, ViT-B-32-quickgelu)"),
            )),
        }
    }

    /// Number of patch tokens G² (the class token adds one).
    pub fn grid(&self) -> usize {
        let g = self.image_size / self.patch_size.max(1);
        g * g
    }

    /// Everything the forward needs to hold; `what` names the config's origin.
    pub fn validate_in(&self, what: &str) -> Result<()> {
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        for (key, v) in [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("width", self.width),
            ("layers", self.layers),
            ("heads", self.heads),
            ("mlp_width", self.mlp_width),
            ("output_dim", self.output_dim),
        ] {
            if v == 0 {
                return Err(bad(key, "must be ≥ 1".into()));
            }
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(bad(
                "patch_size",
                format!(
                    "{} does not divide image_size {}",
                    self.patch_size, self.image_size
                ),
            ));
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(bad(
                "heads",
                format!("{} does not divide the width {}", self.heads, self.width),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(bad(
                "layer_norm_eps",
                format!("{} (expected a positive number)", self.layer_norm_eps),
            ));
        }
        Ok(())
    }

    /// An `open_clip_config.json` (open_clip's hub format: `{"model_cfg": {...},
    /// "preprocess_cfg": {...}}`) or a bare model config (`{"embed_dim", "vision_cfg", ...}`).
    pub fn from_open_clip_json(path: &Path) -> Result<Self> {
        let what = format!("CLIP config {}", path.display());
        Self::from_open_clip_value(&read_json(path, &what)?, &what)
    }

    /// [`Self::from_open_clip_json`] of a parsed value. Vision keys that change the architecture
    /// away from CLIP's ViT (attentional pooling, average pooling, layer scale, a timm or ResNet
    /// tower, …) and keys open_clip's `CLIPVisionCfg` does not know are errors naming the key;
    /// the text tower is not read. A `preprocess_cfg` other than OpenAI's (mean, std, bicubic,
    /// shortest-side resize) is an error: diffuq implements that preprocessing only.
    pub fn from_open_clip_value(v: &serde_json::Value, what: &str) -> Result<Self> {
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid(what.to_string(), "not a JSON object".to_string()))?;
        let (model, prefix) = match obj.get("model_cfg") {
            Some(m) => {
                if let Some(pp) = obj.get("preprocess_cfg") {
                    check_open_clip_preprocess(pp, what)?;
                }
                (m, "model_cfg.")
            }
            None => (v, ""),
        };
        let model = model
            .as_object()
            .ok_or_else(|| bad(prefix.trim_end_matches('.'), "not a JSON object".into()))?;
        const MODEL_KEYS: [&str; 9] = [
            "embed_dim",
            "vision_cfg",
            "text_cfg",
            "quick_gelu",
            "cast_dtype",
            "custom_text",
            "init_logit_scale",
            "init_logit_bias",
            "nonscalar_logit_scale",
        ];
        for k in model.keys() {
            if !MODEL_KEYS.contains(&k.as_str()) {
                return Err(bad(
                    &format!("{prefix}{k}"),
                    "unknown key (not an open_clip CLIP model config key, or not covered)".into(),
                ));
            }
        }
        let output_dim = match model.get("embed_dim") {
            Some(x) => json_usize(x).ok_or_else(|| {
                bad(
                    &format!("{prefix}embed_dim"),
                    format!("{x} (expected a positive integer)"),
                )
            })?,
            None => {
                return Err(bad(
                    &format!("{prefix}embed_dim"),
                    "missing (open_clip's CLIP requires it)".into(),
                ))
            }
        };
        let quick = match model.get("quick_gelu") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(x) => {
                return Err(bad(
                    &format!("{prefix}quick_gelu"),
                    format!("{x} (expected true or false)"),
                ))
            }
        };
        let vp = format!("{prefix}vision_cfg.");
        let empty = serde_json::Map::new();
        let vision = match model.get("vision_cfg") {
            None => &empty,
            Some(x) => x
                .as_object()
                .ok_or_else(|| bad(&format!("{prefix}vision_cfg"), "not a JSON object".into()))?,
        };
        // CLIPVisionCfg defaults (open_clip 3.3 model.py).
        let mut cfg = Self {
            image_size: 224,
            patch_size: 16,
            width: 768,
            layers: 12,
            heads: 12,
            mlp_width: 3072,
            output_dim,
            activation: if quick {
                Activation::QuickGelu
            } else {
                Activation::Gelu
            },
            layer_norm_eps: 1e-5,
        };
        let mut head_width = 64usize;
        let mut mlp_ratio = 4.0f64;
        for (k, x) in vision {
            let key = format!("{vp}{k}");
            let must_be = |ok: bool, expected: &str| -> Result<()> {
                if ok {
                    Ok(())
                } else {
                    Err(bad(
                        &key,
                        format!("{x} is not covered (expected {expected}: CLIP's ViT)"),
                    ))
                }
            };
            let uint = || {
                json_usize(x).ok_or_else(|| bad(&key, format!("{x} (expected a positive integer)")))
            };
            let falsy = x.is_null() || x == &serde_json::Value::Bool(false);
            match k.as_str() {
                "image_size" => {
                    cfg.image_size = square(x).ok_or_else(|| {
                        bad(
                            &key,
                            format!("{x} (expected an integer or a square [h, w])"),
                        )
                    })?
                }
                "patch_size" => {
                    cfg.patch_size = square(x).ok_or_else(|| {
                        bad(
                            &key,
                            format!("{x} (expected an integer or a square [h, w])"),
                        )
                    })?
                }
                "layers" => {
                    if x.is_array() {
                        return Err(bad(
                            &key,
                            format!("{x}: a ModifiedResNet tower is not covered (CLIP's ViT only)"),
                        ));
                    }
                    cfg.layers = uint()?
                }
                "width" => cfg.width = uint()?,
                "head_width" => head_width = uint()?,
                "mlp_ratio" => {
                    mlp_ratio = x
                        .as_f64()
                        .filter(|r| r.is_finite() && *r > 0.0)
                        .ok_or_else(|| bad(&key, format!("{x} (expected a positive number)")))?
                }
                "ls_init_value"
                | "attentional_pool"
                | "final_ln_after_pool"
                | "no_ln_pre"
                | "qk_norm"
                | "scaled_cosine_attn"
                | "scale_heads"
                | "scale_attn_inner"
                | "scale_attn"
                | "scale_fc"
                | "timm_model_name"
                | "act_kwargs" => must_be(falsy, "null or false")?,
                "pool_type" => must_be(x == "tok", "\"tok\"")?,
                "pos_embed_type" => must_be(x == "learnable", "\"learnable\"")?,
                "block_type" => must_be(x.is_null() || x == "default", "null or \"default\"")?,
                "norm_kwargs" => match x {
                    serde_json::Value::Null => {}
                    serde_json::Value::Object(m) if m.keys().all(|k| k == "eps") => {
                        if let Some(e) = m.get("eps") {
                            cfg.layer_norm_eps = e.as_f64().ok_or_else(|| {
                                bad(&format!("{key}.eps"), format!("{e} (expected a number)"))
                            })?;
                        }
                    }
                    _ => must_be(false, "null or {\"eps\": ε}")?,
                },
                // Training-only or inert without the keys above.
                "patch_dropout"
                | "output_tokens"
                | "attn_pooler_queries"
                | "attn_pooler_heads"
                | "timm_model_pretrained"
                | "timm_pool"
                | "timm_proj"
                | "timm_proj_bias"
                | "timm_drop"
                | "timm_drop_path" => {}
                _ => {
                    return Err(bad(
                        &key,
                        "unknown key (not a field of open_clip's CLIPVisionCfg)".into(),
                    ))
                }
            }
        }
        if head_width == 0 || !cfg.width.is_multiple_of(head_width) {
            return Err(bad(
                &format!("{vp}head_width"),
                format!("{head_width} does not divide the width {}", cfg.width),
            ));
        }
        cfg.heads = cfg.width / head_width;
        // open_clip: int(d_model * mlp_ratio).
        cfg.mlp_width = (cfg.width as f64 * mlp_ratio) as usize;
        cfg.validate_in(what)?;
        Ok(cfg)
    }

    /// A transformers `config.json`: `model_type` `"clip_vision_model"`
    /// (`CLIPVisionModelWithProjection`) or `"clip"` (`CLIPModel`: the `vision_config` object and
    /// the top-level `projection_dim`). Missing keys take `CLIPVisionConfig`'s defaults (those of
    /// openai/clip-vit-base-patch32). Other keys are not read: transformers writes every generic
    /// `PretrainedConfig` attribute (ids, dtypes, versions, …) into these files, so rejecting
    /// unknown ones would reject real files. The keys read must have the right type, and
    /// `hidden_act` must be `quick_gelu` or `gelu`.
    pub fn from_transformers_json(path: &Path) -> Result<Self> {
        let what = format!("CLIP config {}", path.display());
        Self::from_transformers_value(&read_json(path, &what)?, &what)
    }

    /// [`Self::from_transformers_json`] of a parsed value.
    pub fn from_transformers_value(v: &serde_json::Value, what: &str) -> Result<Self> {
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        let model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        let (vision, prefix, projection) = match model_type {
            "clip_vision_model" => (v, "", v.get("projection_dim")),
            "clip" => (
                v.get("vision_config").unwrap_or(&serde_json::Value::Null),
                "vision_config.",
                v.get("projection_dim"),
            ),
            other => {
                return Err(bad(
                    "model_type",
                    format!("{other:?} (expected \"clip\" or \"clip_vision_model\")"),
                ))
            }
        };
        if !(vision.is_object() || vision.is_null()) {
            return Err(bad("vision_config", "not a JSON object".into()));
        }
        let get_usize =
            |key: &str, default: usize, src: &serde_json::Value, prefix: &str| match src.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => square(x).ok_or_else(|| {
                    bad(
                        &format!("{prefix}{key}"),
                        format!("{x} (expected a positive integer)"),
                    )
                }),
            };
        let d = Self::vit_b_32();
        let channels = get_usize("num_channels", 3, vision, prefix)?;
        if channels != 3 {
            return Err(bad(
                &format!("{prefix}num_channels"),
                format!("{channels} (expected 3: RGB)"),
            ));
        }
        let activation = match vision.get("hidden_act") {
            None | Some(serde_json::Value::Null) => Activation::QuickGelu,
            Some(x) if x == "quick_gelu" => Activation::QuickGelu,
            Some(x) if x == "gelu" => Activation::Gelu,
            Some(x) => {
                return Err(bad(
                    &format!("{prefix}hidden_act"),
                    format!("{x} is not covered (expected \"quick_gelu\" or \"gelu\")"),
                ))
            }
        };
        let layer_norm_eps = match vision.get("layer_norm_eps") {
            None | Some(serde_json::Value::Null) => d.layer_norm_eps,
            Some(x) => x.as_f64().ok_or_else(|| {
                bad(
                    &format!("{prefix}layer_norm_eps"),
                    format!("{x} (expected a number)"),
                )
            })?,
        };
        let top_prefix = if model_type == "clip" { "" } else { prefix };
        let output_dim = match projection {
            None | Some(serde_json::Value::Null) => d.output_dim,
            Some(x) => json_usize(x).ok_or_else(|| {
                bad(
                    &format!("{top_prefix}projection_dim"),
                    format!("{x} (expected a positive integer)"),
                )
            })?,
        };
        let cfg = Self {
            image_size: get_usize("image_size", d.image_size, vision, prefix)?,
            patch_size: get_usize("patch_size", d.patch_size, vision, prefix)?,
            width: get_usize("hidden_size", d.width, vision, prefix)?,
            layers: get_usize("num_hidden_layers", d.layers, vision, prefix)?,
            heads: get_usize("num_attention_heads", d.heads, vision, prefix)?,
            mlp_width: get_usize("intermediate_size", d.mlp_width, vision, prefix)?,
            output_dim,
            activation,
            layer_norm_eps,
        };
        cfg.validate_in(what)?;
        Ok(cfg)
    }

    /// The tower a state dict holds, by OpenAI's `build_model` rule (used for files without a
    /// config, like `ViT-B-32.pt`): W and P from the patch conv, G from the positional embedding,
    /// the layer count from the blocks present, the MLP width from the first block, the output
    /// from the projection; heads = W/64, QuickGELU, ε = 1e-5.
    fn infer(tensors: &HashMap<String, Tensor>, naming: Naming, what: &str) -> Result<Self> {
        let n = naming.names();
        let dims = |name: &str, rank: usize| -> Result<Vec<usize>> {
            let t = tensors.get(name).ok_or_else(|| {
                Error::invalid(
                    what.to_string(),
                    format!(
                        "tensor `{name}` is missing (needed to infer the tower's shape without a config)"
                    ),
                )
            })?;
            if t.rank() != rank {
                return Err(Error::invalid(
                    what.to_string(),
                    format!(
                        "tensor `{name}` has shape {:?}, expected {rank} dimensions",
                        t.dims()
                    ),
                ));
            }
            Ok(t.dims().to_vec())
        };
        let conv = dims(&n.patch, 4)?;
        let pos = dims(&n.pos, 2)?;
        let proj = dims(&n.proj, 2)?;
        let fc1 = dims(&n.block(0, BlockTensor::Fc1W), 2)?;
        let (width, patch) = (conv[0], conv[3]);
        let grid = ((pos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
        let layers = (0..)
            .take_while(|&i| tensors.contains_key(&n.block(i, BlockTensor::Ln1W)))
            .count();
        let output_dim = match naming {
            Naming::OpenClip => proj[1],
            Naming::Transformers => proj[0],
        };
        let cfg = Self {
            image_size: patch * grid,
            patch_size: patch,
            width,
            layers,
            heads: (width / 64).max(1),
            mlp_width: fc1[0],
            output_dim,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        };
        cfg.validate_in(&format!(
            "{what} (shape inferred as OpenAI's build_model does)"
        ))?;
        Ok(cfg)
    }
}

fn read_json(path: &Path, what: &str) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(what.to_string(), format!("not JSON ({e})")))
}

fn json_usize(x: &serde_json::Value) -> Option<usize> {
    x.as_u64().filter(|&v| v > 0).map(|v| v as usize)
}

/// An integer, or a list [a, a] of two equal ones (open_clip's and transformers' tuple sizes).
fn square(x: &serde_json::Value) -> Option<usize> {
    match x {
        serde_json::Value::Array(v) if v.len() == 2 && v[0] == v[1] => json_usize(&v[0]),
        other => json_usize(other),
    }
}

fn check_open_clip_preprocess(pp: &serde_json::Value, what: &str) -> Result<()> {
    let bad = |key: &str, reason: String| {
        Error::invalid(
            format!("{what} `preprocess_cfg.{key}`"),
            format!("{reason}; diffuq implements OpenAI CLIP's preprocessing only"),
        )
    };
    let Some(obj) = pp.as_object() else {
        return Err(bad("", "not a JSON object".into()));
    };
    for (k, x) in obj {
        let close = |want: &[f32; 3]| {
            x.as_array().is_some_and(|a| {
                a.len() == 3
                    && a.iter()
                        .zip(want)
                        .all(|(v, w)| v.as_f64().is_some_and(|v| (v - f64::from(*w)).abs() < 1e-7))
            })
        };
        let ok = match k.as_str() {
            "mean" => close(&CLIP_MEAN),
            "std" => close(&CLIP_STD),
            "interpolation" => x == "bicubic",
            "resize_mode" => x == "shortest",
            "size" => true, // checked against the model's image_size by open_clip itself
            "fill_color" => true,
            _ => false,
        };
        if !ok {
            return Err(bad(k, format!("{x} is not covered")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checkpoint names.

/// Which library's names a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// OpenAI's CLIP and open_clip: `visual.…`.
    OpenClip,
    /// transformers: `vision_model.…` and `visual_projection.weight`.
    Transformers,
}

#[derive(Clone, Copy)]
enum BlockTensor {
    Ln1W,
    Fc1W,
}

/// The tensor names of one naming.
struct Names {
    naming: Naming,
    patch: String,
    pos: String,
    proj: String,
}

impl Naming {
    fn anchor(self) -> &'static str {
        match self {
            Naming::OpenClip => "visual.conv1.weight",
            Naming::Transformers => "vision_model.embeddings.patch_embedding.weight",
        }
    }

    fn names(self) -> Names {
        match self {
            Naming::OpenClip => Names {
                naming: self,
                patch: "visual.conv1.weight".into(),
                pos: "visual.positional_embedding".into(),
                proj: "visual.proj".into(),
            },
            Naming::Transformers => Names {
                naming: self,
                patch: "vision_model.embeddings.patch_embedding.weight".into(),
                pos: "vision_model.embeddings.position_embedding.weight".into(),
                proj: "visual_projection.weight".into(),
            },
        }
    }

    /// Is `name` (prefix removed) part of the image tower in this naming?
    fn is_vision(self, name: &str) -> bool {
        match self {
            Naming::OpenClip => name.starts_with("visual."),
            Naming::Transformers => {
                (name.starts_with("vision_model.") || name.starts_with("visual_projection."))
                    && name != "vision_model.embeddings.position_ids"
            }
        }
    }
}

impl Names {
    fn block(&self, i: usize, t: BlockTensor) -> String {
        match (self.naming, t) {
            (Naming::OpenClip, BlockTensor::Ln1W) => {
                format!("visual.transformer.resblocks.{i}.ln_1.weight")
            }
            (Naming::OpenClip, BlockTensor::Fc1W) => {
                format!("visual.transformer.resblocks.{i}.mlp.c_fc.weight")
            }
            (Naming::Transformers, BlockTensor::Ln1W) => {
                format!("vision_model.encoder.layers.{i}.layer_norm1.weight")
            }
            (Naming::Transformers, BlockTensor::Fc1W) => {
                format!("vision_model.encoder.layers.{i}.mlp.fc1.weight")
            }
        }
    }
}

/// The naming and the prefix every tower name carries, from the patch conv's name.
fn detect(tensors: &[(String, Tensor)]) -> Option<(Naming, String)> {
    for naming in [Naming::OpenClip, Naming::Transformers] {
        let anchor = naming.anchor();
        let mut prefixes: Vec<&str> = tensors
            .iter()
            .filter_map(|(k, _)| k.strip_suffix(anchor))
            .filter(|p| p.is_empty() || p.ends_with('.'))
            .collect();
        prefixes.sort_by_key(|p| p.len());
        if let Some(p) = prefixes.first() {
            return Some((naming, p.to_string()));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The network.

/// LayerNorm over the last axis in two passes (mean, then the mean square of the centred values),
/// as torch computes it.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(vb: &VarBuilder, c: usize, name: &str, eps: f64) -> candle_core::Result<Self> {
        let vb = vb.pp(name);
        Ok(Self {
            weight: vb.get(c, "weight")?,
            bias: vb.get(c, "bias")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

fn linear(vb: &VarBuilder, cin: usize, cout: usize, name: &str) -> candle_core::Result<Linear> {
    let vb = vb.pp(name);
    Ok(Linear::new(
        vb.get((cout, cin), "weight")?,
        Some(vb.get(cout, "bias")?),
    ))
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    /// (3W, W): q, k, v row blocks.
    qkv: Linear,
    out: Linear,
    ln_2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(vb: &VarBuilder, cfg: &ClipConfig, naming: Naming) -> candle_core::Result<Self> {
        let (w, m, eps) = (cfg.width, cfg.mlp_width, cfg.layer_norm_eps);
        Ok(match naming {
            Naming::OpenClip => Self {
                ln_1: LayerNorm::new(vb, w, "ln_1", eps)?,
                qkv: Linear::new(
                    vb.pp("attn").get((3 * w, w), "in_proj_weight")?,
                    Some(vb.pp("attn").get(3 * w, "in_proj_bias")?),
                ),
                out: linear(&vb.pp("attn"), w, w, "out_proj")?,
                ln_2: LayerNorm::new(vb, w, "ln_2", eps)?,
                fc1: linear(vb, w, m, "mlp.c_fc")?,
                fc2: linear(vb, m, w, "mlp.c_proj")?,
            },
            Naming::Transformers => {
                let a = vb.pp("self_attn");
                let mut ws = Vec::with_capacity(3);
                let mut bs = Vec::with_capacity(3);
                for name in ["q_proj", "k_proj", "v_proj"] {
                    ws.push(a.pp(name).get((w, w), "weight")?);
                    bs.push(a.pp(name).get(w, "bias")?);
                }
                Self {
                    ln_1: LayerNorm::new(vb, w, "layer_norm1", eps)?,
                    qkv: Linear::new(Tensor::cat(&ws, 0)?, Some(Tensor::cat(&bs, 0)?)),
                    out: linear(&a, w, w, "out_proj")?,
                    ln_2: LayerNorm::new(vb, w, "layer_norm2", eps)?,
                    fc1: linear(vb, w, m, "mlp.fc1")?,
                    fc2: linear(vb, m, w, "mlp.fc2")?,
                }
            }
        })
    }

    fn forward(&self, x: &Tensor, heads: usize, act: Activation) -> candle_core::Result<Tensor> {
        let (n, l, w) = x.dims3()?;
        let hd = w / heads;
        let qkv = self.qkv.forward(&self.ln_1.forward(x)?)?; // (N, L, 3W)
        let part = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i * w, w)?
                .reshape((n, l, heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q * (1.0 / (hd as f64).sqrt()))?.matmul(&k.t()?.contiguous()?)?;
        let a = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?; // (N, h, L, hd)
        let a = a.transpose(1, 2)?.contiguous()?.reshape((n, l, w))?;
        let x = (x + self.out.forward(&a)?)?;
        let h = act.apply(&self.fc1.forward(&self.ln_2.forward(&x)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

/// A CLIP ViT image tower with its projection.
#[derive(Debug, Clone)]
pub struct ClipVision {
    config: ClipConfig,
    naming: Naming,
    /// Patch conv as a matrix (W, 3·P·P).
    patch: Tensor,
    /// Class token (1, 1, W).
    cls: Tensor,
    /// Positional embedding (1, G² + 1, W).
    pos: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    /// (W, output): embedding = LN_post(t₀) · proj.
    proj: Tensor,
    device: Device,
    id: String,
}

/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// The raw tensors a tower of `cfg` asks `vb` for (names recorded by the parameter source).
struct Raw {
    patch: Tensor,
    cls: Tensor,
    pos: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    proj: Tensor,
}

fn gather(cfg: &ClipConfig, naming: Naming, vb: &VarBuilder) -> candle_core::Result<Raw> {
    let (w, p, eps) = (cfg.width, cfg.patch_size, cfg.layer_norm_eps);
    let tokens = cfg.grid() + 1;
    Ok(match naming {
        Naming::OpenClip => {
            let v = vb.pp("visual");
            let blocks = (0..cfg.layers)
                .map(|i| Block::new(&v.pp(format!("transformer.resblocks.{i}")), cfg, naming))
                .collect::<candle_core::Result<_>>()?;
            Raw {
                patch: v.get((w, 3, p, p), "conv1.weight")?,
                cls: v.get(w, "class_embedding")?,
                pos: v.get((tokens, w), "positional_embedding")?,
                ln_pre: LayerNorm::new(&v, w, "ln_pre", eps)?,
                blocks,
                ln_post: LayerNorm::new(&v, w, "ln_post", eps)?,
                proj: v.get((w, cfg.output_dim), "proj")?,
            }
        }
        Naming::Transformers => {
            let v = vb.pp("vision_model");
            let e = v.pp("embeddings");
            let blocks = (0..cfg.layers)
                .map(|i| Block::new(&v.pp(format!("encoder.layers.{i}")), cfg, naming))
                .collect::<candle_core::Result<_>>()?;
            Raw {
                patch: e.get((w, 3, p, p), "patch_embedding.weight")?,
                cls: e.get(w, "class_embedding")?,
                pos: e.get((tokens, w), "position_embedding.weight")?,
                ln_pre: LayerNorm::new(&v, w, "pre_layrnorm", eps)?,
                blocks,
                ln_post: LayerNorm::new(&v, w, "post_layernorm", eps)?,
                proj: vb
                    .pp("visual_projection")
                    .get((cfg.output_dim, w), "weight")?
                    .t()?,
            }
        }
    })
}

impl ClipVision {
    /// The state-dict tensors (name, shape) a tower of `config` has in `naming`, in name order;
    /// computed by building the tower without values (no allocation), so it is exactly what
    /// loading asks for.
    pub fn parameter_shapes(
        config: &ClipConfig,
        naming: Naming,
    ) -> Result<Vec<(String, Vec<usize>)>> {
        config.validate_in("CLIP config")?;
        let (vb, src) = ParamSource::shapes_only().var_builder(DType::F32, &Device::Cpu);
        gather_shapes(config, naming, &vb)
            .map_err(|e| Error::invalid("CLIP parameter listing", first_line(&e)))?;
        Ok(src.asked())
    }

    /// Load a CLIP image tower:
    /// * a directory with `config.json` (transformers; weights `model.safetensors` or
    ///   `pytorch_model.bin`) or `open_clip_config.json` (open_clip; weights
    ///   `open_clip_model.safetensors`, `open_clip_pytorch_model.safetensors`,
    ///   `open_clip_pytorch_model.bin` or `.pth`, open_clip's order);
    /// * a weight file (`.safetensors`, a torch state dict, OpenAI's TorchScript `ViT-B-32.pt`),
    ///   configured by `open_clip_config.json` or a CLIP `config.json` beside it, else by the
    ///   tensor shapes ([`ClipConfig`]'s OpenAI rule).
    ///
    /// Weights of any float dtype are converted to f32 on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (weights, config) = Self::locate(path)?;
        let config = match config {
            Some(ConfigFile::OpenClip(p)) => Some(ClipConfig::from_open_clip_json(&p)?),
            Some(ConfigFile::Transformers(p)) => Some(ClipConfig::from_transformers_json(&p)?),
            None => None,
        };
        Self::load_weights(&weights, config.as_ref(), device)
    }

    /// Load the tensors of `weights` with `config` (None: inferred from the shapes).
    pub fn load_weights(
        weights: &Path,
        config: Option<&ClipConfig>,
        device: &Device,
    ) -> Result<Self> {
        let tensors = crate::checkpoint::read_tensors(weights)?;
        Self::from_tensors(
            tensors,
            config,
            &format!("CLIP weights {}", weights.display()),
            device,
        )
    }

    fn locate(path: &Path) -> Result<(PathBuf, Option<ConfigFile>)> {
        let what = || format!("CLIP checkpoint {}", path.display());
        if path.is_dir() {
            let find = |names: &[&str]| names.iter().map(|n| path.join(n)).find(|p| p.is_file());
            if path.join("config.json").is_file() {
                let w = find(&["model.safetensors", "pytorch_model.bin"]).ok_or_else(|| {
                    Error::invalid(
                        what(),
                        "has config.json but no model.safetensors or pytorch_model.bin",
                    )
                })?;
                return Ok((w, Some(ConfigFile::Transformers(path.join("config.json")))));
            }
            if path.join("open_clip_config.json").is_file() {
                let w = find(&[
                    "open_clip_model.safetensors",
                    "open_clip_pytorch_model.safetensors",
                    "open_clip_pytorch_model.bin",
                    "open_clip_pytorch_model.pth",
                ])
                .ok_or_else(|| {
                    Error::invalid(
                        what(),
                        "has open_clip_config.json but no open_clip_model.safetensors or \
                         open_clip_pytorch_model.{safetensors,bin,pth}",
                    )
                })?;
                return Ok((
                    w,
                    Some(ConfigFile::OpenClip(path.join("open_clip_config.json"))),
                ));
            }
            return Err(Error::invalid(
                what(),
                "a directory without config.json (transformers) or open_clip_config.json (open_clip)",
            ));
        }
        if !path.is_file() {
            return Err(Error::invalid(what(), "not found"));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let oc = dir.join("open_clip_config.json");
        if oc.is_file() {
            return Ok((path.to_path_buf(), Some(ConfigFile::OpenClip(oc))));
        }
        let hf = dir.join("config.json");
        if let Ok(text) = std::fs::read_to_string(&hf) {
            let is_clip = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("model_type")?.as_str().map(|s| s.starts_with("clip")))
                .unwrap_or(false);
            if is_clip {
                return Ok((path.to_path_buf(), Some(ConfigFile::Transformers(hf))));
            }
        }
        Ok((path.to_path_buf(), None))
    }

    /// Build from named tensors (any float dtype): the naming and a common prefix are detected,
    /// tensors outside the image tower (text tower, `logit_scale`, buffers) are not read, and
    /// with `config` None the shape is inferred. `source` names the origin in errors; a missing,
    /// mis-shaped or unused tower tensor is a one-line error naming it.
    pub fn from_tensors(
        tensors: Vec<(String, Tensor)>,
        config: Option<&ClipConfig>,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        let (naming, prefix) = detect(&tensors).ok_or_else(|| {
            let mut some: Vec<&String> = tensors.iter().map(|(k, _)| k).collect();
            some.sort();
            Error::invalid(
                source.to_string(),
                format!(
                    "no `visual.conv1.weight` (OpenAI/open_clip) or \
                     `vision_model.embeddings.patch_embedding.weight` (transformers): not a CLIP \
                     ViT state dict; found {} tensors{}",
                    tensors.len(),
                    some.first()
                        .map(|k| format!(", e.g. `{k}`"))
                        .unwrap_or_default()
                ),
            )
        })?;
        let vision: Vec<(String, Tensor)> = tensors
            .into_iter()
            .filter_map(|(k, v)| {
                let k = k.strip_prefix(&prefix)?.to_string();
                naming.is_vision(&k).then_some((k, v))
            })
            .collect();
        for (k, v) in &vision {
            if !v.dtype().is_float() {
                return Err(Error::invalid(
                    source.to_string(),
                    format!(
                        "tensor `{k}` has dtype {:?}, expected a float type",
                        v.dtype()
                    ),
                ));
            }
        }
        let config = match config {
            Some(c) => {
                c.validate_in(&format!("CLIP config for {source}"))?;
                c.clone()
            }
            None => {
                let map: HashMap<String, Tensor> = vision.iter().cloned().collect();
                ClipConfig::infer(&map, naming, source)?
            }
        };
        let (vb, src) =
            ParamSource::load(vision, source.to_string()).var_builder(DType::F32, device);
        let raw = gather(&config, naming, &vb).map_err(|e| {
            let msg = first_line(&e);
            match msg.strip_prefix(&format!("{source}: ")) {
                Some(rest) => Error::invalid(source.to_string(), rest.to_string()),
                None => Error::invalid(source.to_string(), msg),
            }
        })?;
        src.finish()?;
        let ctx = format!("{source}: assembling the tower");
        let (w, p) = (config.width, config.patch_size);
        let id = if config == ClipConfig::vit_b_32() {
            "clip-vit-b-32".to_string()
        } else {
            format!(
                "clip-vit-s{}-p{p}-w{w}-l{}-h{}-m{}-o{}-{}",
                config.image_size,
                config.layers,
                config.heads,
                config.mlp_width,
                config.output_dim,
                match config.activation {
                    Activation::QuickGelu => "quickgelu",
                    Activation::Gelu => "gelu",
                }
            )
        };
        Ok(Self {
            patch: raw.patch.reshape((w, 3 * p * p)).ctx(&ctx)?,
            cls: raw.cls.reshape((1, 1, w)).ctx(&ctx)?,
            pos: raw.pos.unsqueeze(0).ctx(&ctx)?,
            ln_pre: raw.ln_pre,
            blocks: raw.blocks,
            ln_post: raw.ln_post,
            proj: raw.proj.contiguous().ctx(&ctx)?,
            config,
            naming,
            device: device.clone(),
            id,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The naming the weights came in.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `clip-vit-b-32` for the ViT-B/32 shape, else a name spelling out the shape. It names the
    /// architecture, not the weights: give [`ClipFeatures::with_id`] a weight identity when
    /// features of different weights share a cache.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Embeddings (N, output_dim) of preprocessed inputs (N, 3, S, S) (see [`ClipPreprocess`]),
    /// f32, raw (not L2-normalised), as `encode_image` returns them.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.config.image_size;
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] != s || dims[3] != s {
            return Err(Error::invalid(
                "CLIP input",
                format!(
                    "shape {dims:?}, expected (N, 3, {s}, {s}); preprocess images with `ClipPreprocess`"
                ),
            ));
        }
        if !x.dtype().is_float() {
            return Err(Error::invalid(
                "CLIP input",
                format!(
                    "dtype {:?}, expected floats (the normalised network input)",
                    x.dtype()
                ),
            ));
        }
        let x = x
            .to_device(&self.device)
            .and_then(|x| x.to_dtype(DType::F32))
            .ctx("CLIP input")?;
        self.forward(&x).ctx("CLIP image tower forward")
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let n = x.dim(0)?;
        let (p, g, w) = (c.patch_size, c.image_size / c.patch_size, c.width);
        // (N, 3, G, P, G, P) → (N, G, G, 3, P, P): row-major patches, channel-major inside, as
        // conv1's weight (W, 3, P, P) flattens.
        let patches = x
            .reshape(vec![n, 3, g, p, g, p])?
            .permute(vec![0, 2, 4, 1, 3, 5])?
            .contiguous()?
            .reshape((n, g * g, 3 * p * p))?;
        let tokens = patches.broadcast_matmul(&self.patch.t()?)?;
        let cls = self.cls.broadcast_as((n, 1, w))?;
        let mut t = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos)?;
        t = self.ln_pre.forward(&t)?;
        for b in &self.blocks {
            t = b.forward(&t, c.heads, c.activation)?;
        }
        let pooled = self.ln_post.forward(&t.narrow(1, 0, 1)?.squeeze(1)?)?;
        pooled.matmul(&self.proj)
    }
}

/// [`gather`] without the transformers q/k/v concatenation and projection transpose, which would
/// copy the broadcast zeros of a shapes-only source.
fn gather_shapes(cfg: &ClipConfig, naming: Naming, vb: &VarBuilder) -> candle_core::Result<()> {
    let (w, p, m) = (cfg.width, cfg.patch_size, cfg.mlp_width);
    let tokens = cfg.grid() + 1;
    let ln = |v: &VarBuilder, name: &str| -> candle_core::Result<()> {
        v.pp(name).get(w, "weight")?;
        v.pp(name).get(w, "bias")?;
        Ok(())
    };
    let lin = |v: &VarBuilder, name: &str, cin: usize, cout: usize| -> candle_core::Result<()> {
        v.pp(name).get((cout, cin), "weight")?;
        v.pp(name).get(cout, "bias")?;
        Ok(())
    };
    match naming {
        Naming::OpenClip => {
            let v = vb.pp("visual");
            v.get((w, 3, p, p), "conv1.weight")?;
            v.get(w, "class_embedding")?;
            v.get((tokens, w), "positional_embedding")?;
            ln(&v, "ln_pre")?;
            for i in 0..cfg.layers {
                let b = v.pp(format!("transformer.resblocks.{i}"));
                ln(&b, "ln_1")?;
                b.pp("attn").get((3 * w, w), "in_proj_weight")?;
                b.pp("attn").get(3 * w, "in_proj_bias")?;
                lin(&b, "attn.out_proj", w, w)?;
                ln(&b, "ln_2")?;
                lin(&b, "mlp.c_fc", w, m)?;
                lin(&b, "mlp.c_proj", m, w)?;
            }
            ln(&v, "ln_post")?;
            v.get((w, cfg.output_dim), "proj")?;
        }
        Naming::Transformers => {
            let v = vb.pp("vision_model");
            let e = v.pp("embeddings");
            e.get(w, "class_embedding")?;
            e.get((w, 3, p, p), "patch_embedding.weight")?;
            e.get((tokens, w), "position_embedding.weight")?;
            ln(&v, "pre_layrnorm")?;
            for i in 0..cfg.layers {
                let b = v.pp(format!("encoder.layers.{i}"));
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    lin(&b.pp("self_attn"), proj, w, w)?;
                }
                ln(&b, "layer_norm1")?;
                lin(&b, "mlp.fc1", w, m)?;
                lin(&b, "mlp.fc2", m, w)?;
                ln(&b, "layer_norm2")?;
            }
            ln(&v, "post_layernorm")?;
            vb.pp("visual_projection")
                .get((cfg.output_dim, w), "weight")?;
        }
    }
    Ok(())
}

enum ConfigFile {
    OpenClip(PathBuf),
    Transformers(PathBuf),
}

// ---------------------------------------------------------------------------------------------
// Preprocessing: GU's uint8 PNGs through OpenAI's `preprocess`.

/// GU's conversion of a sample value in [−1, 1] to a PNG pixel: (clamp((x + 1)/2, 0, 1)·255)
/// truncated toward zero, in float32 (`inverse_data_transform` in torch, then numpy's
/// `(img * 255).astype(np.uint8)`). Non-finite values are the caller's to reject.
pub fn gu_uint8(x: f32) -> u8 {
    let v = ((x + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0;
    v as u8
}

/// Pillow's bicubic kernel (a = −0.5, support 2).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's fixed-point coefficient precision for 8-bit images (32 − 8 − 2 bits).
const PRECISION_BITS: u32 = 22;

/// The taps of a one-axis resize from `inp` to `out` samples: per output sample the first input
/// index and its integer weights (sum ≈ 2²²). Pillow's `precompute_coeffs` +
/// `normalize_coeffs_8bpc`: the kernel is stretched by the scale factor when downsampling (its
/// antialiasing), centred at (i + ½)·in/out, truncated to the image, normalised to sum 1, then
/// rounded half away from zero to 22 fractional bits.
fn taps(inp: usize, out: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = inp as f64 / out as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let inv = 1.0 / filterscale;
    (0..out)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // C's (int) conversion truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(inp as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let w: Vec<f64> = (0..n)
                .map(|x| bicubic(((x + xmin) as f64 - center + 0.5) * inv))
                .collect();
            let mut ww = 0.0;
            for v in &w {
                ww += v;
            }
            let one = f64::from(1u32 << PRECISION_BITS);
            let k = w
                .iter()
                .map(|&v| {
                    let v = if ww != 0.0 { v / ww } else { v };
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// One 8-bit convolution tap set applied to `get(j)`: Pillow's rounding (+2²¹) and its clip of
/// the floor-shifted sum to [0, 255].
fn apply_taps(xmin: usize, k: &[i32], get: impl Fn(usize) -> u8) -> u8 {
    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
    for (x, &kx) in k.iter().enumerate() {
        ss += i32::from(get(xmin + x)) * kx;
    }
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((ow, oh), Image.BICUBIC)` of one 8-bit plane (h, w) row-major: a
/// horizontal pass to width `ow` (skipped when the width is unchanged), rounded to uint8, then a
/// vertical pass to height `oh` (skipped likewise), rounded to uint8.
/// A plane whose length is not h·w, or an empty target, is an error.
pub fn pil_resize_bicubic(
    src: &[u8],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Result<Vec<u8>> {
    if src.len() != h * w || h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(Error::invalid(
            "bicubic resize",
            format!(
                "a plane of {} values for {h}×{w} → {oh}×{ow} (expected h·w values, all sizes ≥ 1)",
                src.len()
            ),
        ));
    }
    let horizontal = if ow != w {
        let t = taps(w, ow);
        let mut out = Vec::with_capacity(h * ow);
        for row in src.chunks_exact(w) {
            out.extend(t.iter().map(|(xmin, k)| apply_taps(*xmin, k, |j| row[j])));
        }
        out
    } else {
        src.to_vec()
    };
    if oh == h {
        return Ok(horizontal);
    }
    let t = taps(h, oh);
    let mut out = Vec::with_capacity(oh * ow);
    for (ymin, k) in &t {
        out.extend((0..ow).map(|x| apply_taps(*ymin, k, |j| horizontal[j * ow + x])));
    }
    Ok(out)
}

/// torchvision's `Resize(size)` output (h, w) for an int size: the shorter side becomes `size`,
/// the longer ⌊size·long/short⌋ (`_compute_resized_output_size`).
pub fn resized_size((h, w): (usize, usize), size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// torchvision's `CenterCrop` offset: int(round((n − crop)/2)), Python's half-to-even rounding.
pub fn crop_offset(n: usize, crop: usize) -> usize {
    (n.saturating_sub(crop) as f64 / 2.0).round_ties_even() as usize
}

/// OpenAI CLIP's `preprocess` (`clip.clip._transform(S)`) on uint8 images, with GU's uint8
/// conversion in front for float samples; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipPreprocess {
    /// S: the shorter side is resized to it, then the centre S×S is cropped.
    pub size: usize,
}

impl ClipPreprocess {
    /// GU's preprocess for ViT-B/32 (S = 224).
    pub const VIT_B_32: ClipPreprocess = ClipPreprocess { size: 224 };

    pub fn new(size: usize) -> Self {
        Self { size }
    }

    /// Images (N, C, H, W), C = 1 or 3: uint8 pixels, or float samples in [−1, 1] (any float
    /// dtype, taken as float32 and converted by [`gu_uint8`]; non-finite values are an error) →
    /// (N, C, H, W) uint8 on the CPU.
    pub fn to_uint8(&self, images: &Tensor) -> Result<(Vec<u8>, [usize; 4])> {
        let what = "CLIP images";
        let dims = images.dims();
        if dims.len() != 4 || !(dims[1] == 1 || dims[1] == 3) || dims[2] == 0 || dims[3] == 0 {
            return Err(Error::invalid(
                what,
                format!("shape {dims:?}, expected (N, 1 or 3, H, W) with H, W ≥ 1"),
            ));
        }
        let shape = [dims[0], dims[1], dims[2], dims[3]];
        let flat = images
            .flatten_all()
            .and_then(|t| t.to_device(&Device::Cpu))
            .ctx(what)?;
        let pixels = match images.dtype() {
            DType::U8 => flat.to_vec1::<u8>().ctx(what)?,
            d if d.is_float() => {
                let v = flat
                    .to_dtype(DType::F32)
                    .and_then(|t| t.to_vec1::<f32>())
                    .ctx(what)?;
                if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                    return Err(Error::invalid(what, format!("non-finite value {bad}")));
                }
                v.into_iter().map(gu_uint8).collect()
            }
            d => {
                return Err(Error::invalid(
                    what,
                    format!("dtype {d:?}, expected uint8 pixels or float samples in [−1, 1]"),
                ))
            }
        };
        Ok((pixels, shape))
    }

    /// One uint8 image (C, H, W) → the resized, centre-cropped RGB uint8 image (3, S, S): what
    /// `Resize` + `CenterCrop` + `convert("RGB")` leave before `ToTensor`.
    pub fn resize_crop(&self, image: &[u8], (c, h, w): (usize, usize, usize)) -> Result<Vec<u8>> {
        let s = self.size;
        if s == 0 || image.len() != c * h * w || !(c == 1 || c == 3) {
            return Err(Error::invalid(
                "CLIP preprocess",
                format!(
                    "an image of {} values for (C, H, W) = ({c}, {h}, {w}) with size {s}",
                    image.len()
                ),
            ));
        }
        let (nh, nw) = resized_size((h, w), s);
        if nh.saturating_mul(nw) > MAX_RESIZED_PIXELS {
            return Err(Error::invalid(
                "CLIP preprocess",
                format!(
                    "a {h}×{w} image would be resized to {nh}×{nw} before cropping (more than \
                     {MAX_RESIZED_PIXELS} pixels)"
                ),
            ));
        }
        let (top, left) = (crop_offset(nh, s), crop_offset(nw, s));
        let mut out = Vec::with_capacity(3 * s * s);
        let planes: Vec<Vec<u8>> = image
            .chunks_exact(h * w)
            .map(|p| pil_resize_bicubic(p, (h, w), (nh, nw)))
            .collect::<Result<_>>()?;
        for ch in 0..3 {
            let plane = &planes[if c == 1 { 0 } else { ch }];
            for y in top..top + s {
                out.extend_from_slice(&plane[y * nw + left..y * nw + left + s]);
            }
        }
        Ok(out)
    }

    /// `ToTensor` + `Normalize`: (v/255 − mean)/std in float32, per channel of (3, S, S).
    pub fn normalize(&self, rgb: &[u8], out: &mut Vec<f32>) {
        let plane = rgb.len() / 3;
        for (ch, p) in rgb.chunks_exact(plane.max(1)).enumerate().take(3) {
            let (m, s) = (CLIP_MEAN[ch], CLIP_STD[ch]);
            out.extend(p.iter().map(|&v| (f32::from(v) / 255.0 - m) / s));
        }
    }

    /// Images (see [`Self::to_uint8`]) → network input (N, 3, S, S) f32 on `device`.
    pub fn apply(&self, images: &Tensor, device: &Device) -> Result<Tensor> {
        let (pixels, [n, c, h, w]) = self.to_uint8(images)?;
        let s = self.size;
        let mut out = Vec::with_capacity(n * 3 * s * s);
        for image in pixels.chunks_exact(c * h * w) {
            let rgb = self.resize_crop(image, (c, h, w))?;
            self.normalize(&rgb, &mut out);
        }
        Tensor::from_vec(out, (n, 3, s, s), device).ctx("CLIP input")
    }
}

// ---------------------------------------------------------------------------------------------
// As a feature extractor.

/// φ for GU's semantic likelihood (Eq. 7): images (uint8) or samples in [−1, 1] (float) of
/// (N, 1 or 3, H, W) → CLIP embeddings (N, output_dim), through [`ClipPreprocess`] at the tower's
/// image size and [`ClipVision::embed`], in batches of `batch_size`.
#[derive(Debug, Clone)]
pub struct ClipFeatures {
    net: ClipVision,
    pre: ClipPreprocess,
    batch_size: usize,
    id: String,
}

impl ClipFeatures {
    pub fn new(net: ClipVision, batch_size: usize) -> Self {
        let pre = ClipPreprocess::new(net.config().image_size);
        let id = net.id().to_string();
        Self {
            net,
            pre,
            batch_size: batch_size.max(1),
            id,
        }
    }

    /// Replace the id (e.g. with one naming the weight file's digest, for feature caches).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn net(&self) -> &ClipVision {
        &self.net
    }

    pub fn preprocess(&self) -> ClipPreprocess {
        self.pre
    }

    /// Embeddings (N, output_dim) of `images`.
    pub fn embed_images(&self, images: &Tensor) -> Result<Tensor> {
        let n = images.dim(0).ctx("CLIP images")?;
        let mut out = Vec::with_capacity(n.div_ceil(self.batch_size));
        for start in (0..n).step_by(self.batch_size) {
            let len = self.batch_size.min(n - start);
            let chunk = images.narrow(0, start, len).ctx("CLIP images")?;
            out.push(
                self.net
                    .embed(&self.pre.apply(&chunk, self.net.device())?)?,
            );
        }
        if out.is_empty() {
            // Still check the shape of an empty batch.
            self.pre.to_uint8(images)?;
            return Tensor::zeros(
                (0, self.net.config().output_dim),
                DType::F32,
                self.net.device(),
            )
            .ctx("CLIP features");
        }
        Tensor::cat(&out, 0).ctx("CLIP features")
    }
}

impl super::FeatureExtractor for ClipFeatures {
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.embed_images(x).map_err(candle_core::Error::msg)
    }
    fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected numbers: Pillow's bicubic kernel at a = −0.5 (K(0) = 1, K(±1) = K(±2) = 0,
    // K(0.5) = 0.5625, K(1.5) = −0.0625) and the identity it gives at scale 1.
    #[test]
    fn bicubic_kernel_and_identity_resize() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(-2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
        let img: Vec<u8> = (0..=255).collect();
        for (xmin, k) in taps(16, 16).iter() {
            // One non-zero tap of exactly 2²² (the neighbours' weights are 0).
            assert_eq!(k.iter().filter(|&&v| v != 0).count(), 1, "{xmin}");
            assert!(k.contains(&(1 << 22)));
        }
        assert_eq!(pil_resize_bicubic(&img, (16, 16), (16, 16)).unwrap(), img);
        assert!(pil_resize_bicubic(&img, (16, 15), (4, 4)).is_err());
    }

    // Expected numbers: torchvision's `_compute_resized_output_size` (int size: shorter side to
    // it, longer int(size·long/short)) and `center_crop` (int(round((n − c)/2)), Python rounding).
    #[test]
    fn resize_and_crop_geometry_follow_torchvision() {
        assert_eq!(resized_size((32, 32), 224), (224, 224));
        assert_eq!(resized_size((40, 48), 224), (224, 268));
        assert_eq!(resized_size((48, 40), 224), (268, 224));
        assert_eq!(resized_size((40, 48), 32), (32, 38));
        assert_eq!(crop_offset(268, 224), 22);
        assert_eq!(crop_offset(38, 32), 3);
        // (225 − 224)/2 = 0.5 → 0, (227 − 224)/2 = 1.5 → 2: half to even.
        assert_eq!(crop_offset(225, 224), 0);
        assert_eq!(crop_offset(227, 224), 2);
    }

    // Expected: GU's (clamp((x + 1)/2)·255).astype(uint8): −1 → 0, 1 → 255, 0 → 127 (127.5
    // truncated), out-of-range values clamp.
    #[test]
    fn gu_uint8_truncates() {
        assert_eq!(gu_uint8(-1.0), 0);
        assert_eq!(gu_uint8(1.0), 255);
        assert_eq!(gu_uint8(0.0), 127);
        assert_eq!(gu_uint8(-3.0), 0);
        assert_eq!(gu_uint8(1.5), 255);
        assert_eq!(gu_uint8(0.999), 254);
    }

    #[test]
    fn vit_b_32_config_validates() {
        let c = ClipConfig::vit_b_32();
        c.validate_in("t").unwrap();
        assert_eq!(c.grid(), 49);
        let bad = ClipConfig {
            heads: 5,
            ..ClipConfig::vit_b_32()
        };
        let e = bad.validate_in("t").unwrap_err().to_string();
        assert!(e.contains("`heads`"), "{e}");
        assert_eq!(
            ClipConfig::open_clip_model("ViT-B-32").unwrap().activation,
            Activation::Gelu
        );
        assert!(ClipConfig::open_clip_model("RN50").is_err());
    }
}
