//! DiT, the diffusion transformer of Peebles & Xie (ICCV 2023): facebookresearch/DiT's `DiT`
//! (`models.py`, `DiT_models['DiT-XL/2']`) and diffusers' `DiTTransformer2DModel`, loaded from
//! either naming.
//!
//! GU (Jazbec et al. 2025, App. C.7) runs a DiT-XL/2 latent backbone (256²: 4 × 32 × 32 SD-VAE
//! latents; 512²: 4 × 64 × 64) with a last-layer Laplace over `final_layer.linear`, the per-token
//! map from the modulated, normalised hidden state to a p × p patch of the 2C output channels (ε,
//! then the learned-variance interpolation; [`Prediction::EpsilonLearnedVariance`]).
//!
//! Forward, as `DiT.forward` (patch p, hidden D, G = input_size / p, T = G² tokens):
//!
//!   h = x_embedder.proj(x) (a p × p stride-p conv, flattened to (N, T, D)) + pos_embed
//!   c = t_embedder.mlp.2(SiLU(t_embedder.mlp.0(sinusoid(t)))) + y_embedder.embedding_table[y]
//!   per block (adaLN-Zero): (α₁, β₁, γ₁, α₂, β₂, γ₂) = adaLN_modulation.1(SiLU(c)) as
//!     (shift, scale, gate) twice;
//!     h ← h + γ₁ · attn(LN(h) · (1 + β₁) + α₁),  h ← h + γ₂ · mlp(LN(h) · (1 + β₂) + α₂)
//!   φ = LN(h) · (1 + scale) + shift, (shift, scale) = final_layer.adaLN_modulation.1(SiLU(c))
//!   out = unpatchify(final_layer.linear(φ)): (N, T, p·p·C_out) → (N, C_out, G·p, G·p)
//!
//! with LN a LayerNorm without affine (ε 1e-6), attn timm's `Attention` (one fused `qkv` linear,
//! q/k/v the three D-blocks split into heads, softmax(q kᵀ/√d_h) v, `proj`), mlp timm's `Mlp`
//! (fc1, tanh-GELU, fc2; hidden int(D · mlp_ratio)), and sinusoid(t) = [cos(t f_k) | sin(t f_k)],
//! f_k = 10000^(−k/128), k < 128 (the 256-wide `TimestepEmbedder.timestep_embedding`). The model
//! time is passed as given, in training steps (0…999). The label table has num_classes + 1 rows
//! when class_dropout_prob > 0: label num_classes is the classifier-free-guidance null class.
//!
//! Checkpoints:
//! - facebook naming: a `torch.save`d state dict (the released `DiT-XL-2-256x256.pt` /
//!   `DiT-XL-2-512x512.pt`, or a `train.py` checkpoint, of which the `ema` weights are read as
//!   DiT's `find_model` does) with a JSON config of the constructor's arguments and
//!   `"architecture": "dit"` beside it (`<stem>.json` or `config.json`); `pos_embed` (the fixed
//!   2-D sin-cos table) is a state-dict entry and is read from it.
//! - diffusers naming: a `DiTTransformer2DModel` directory (`config.json` +
//!   `diffusion_pytorch_model.safetensors` or `.bin`; a legacy `Transformer2DModel` config with
//!   `norm_type` `"ada_norm_zero"` is read as diffusers remaps it). diffusers recomputes the
//!   time/label embedding in every block from that block's own `norm1.emb` copy (block 0's feeds
//!   the final layer `proj_out_1`/`proj_out_2`), builds `pos_embed` itself (not in the file), and
//!   is not numerically facebook's DiT: its `Timesteps` use `downscale_freq_shift = 1`
//!   (f_k = 10000^(−k/127)) and the LayerNorm before the feed-forward (`norm3`) takes `norm_eps`
//!   (1e-5 by default; facebook 1e-6). Both are reproduced here, so each naming computes what its
//!   own library computes (on the same weights the two differ by ~6e-3 relative).
//!
//! Precision: the sinusoid is made in float32 whatever the model dtype, as both references do
//! (phase t·f_k rounded to f32); the sin-cos position table is made in float64 and rounded to f32
//! (diffusers) or read (facebook). The references run attention through
//! `scaled_dot_product_attention`; here it is an explicit softmax (differentiable, for AU's
//! guidance), in the model dtype.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::network::{LastLayerNetwork, Mode, Network, Prediction};
use super::params::ParamSource;
use crate::error::{Error, Result};

/// `TimestepEmbedder`'s `frequency_embedding_size` (diffusers: `Timesteps(num_channels=256)`).
pub const FREQUENCY_EMBEDDING_SIZE: usize = 256;
/// The adaLN LayerNorms' ε (`nn.LayerNorm(..., eps=1e-6)` in every DiT norm; diffusers'
/// `AdaLayerNormZero` and `norm_out` too).
const LN_EPS: f64 = 1e-6;
/// diffusers' `CombinedTimestepLabelEmbeddings` fixes the label dropout at 0.1: the table always
/// has the null row.
const DIFFUSERS_CLASS_DROPOUT: f64 = 0.1;

/// facebookresearch/DiT's `DiT(...)` constructor arguments under their names, with its defaults
/// (which are DiT-XL/2 at 256²), plus `architecture` (`"dit"`, which marks a config as this one).
/// Any other key is an error naming it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiTConfig {
    /// Latent side (256² images: 32; 512²: 64).
    pub input_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// > 0: the label table has the classifier-free-guidance null row (label `num_classes`).
    pub class_dropout_prob: f64,
    pub num_classes: usize,
    /// 2C output channels (ε, then the variance interpolation) rather than C.
    pub learn_sigma: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

impl Default for DiTConfig {
    /// `DiT.__init__`'s defaults at facebookresearch/DiT ed81ce22.
    fn default() -> Self {
        Self {
            input_size: 32,
            patch_size: 2,
            in_channels: 4,
            hidden_size: 1152,
            depth: 28,
            num_heads: 16,
            mlp_ratio: 4.0,
            class_dropout_prob: 0.1,
            num_classes: 1000,
            learn_sigma: true,
            architecture: None,
        }
    }
}

impl DiTConfig {
    /// `DiT_models['DiT-XL/2']()` for the released 256×256 model (latent 32²).
    pub fn xl2_256() -> Self {
        Self {
            architecture: Some("dit".into()),
            ..Self::default()
        }
    }

    /// `DiT_models['DiT-XL/2'](input_size=64)`, the released 512×512 model.
    pub fn xl2_512() -> Self {
        Self {
            input_size: 64,
            ..Self::xl2_256()
        }
    }

    /// Read a config JSON (constructor argument names).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let what = format!("DiT config {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(what.clone(), format!("not JSON ({e})")))?;
        Self::from_json(v, &what)
    }

    /// A config from a JSON object (`what` names its source in errors).
    pub fn from_json(v: serde_json::Value, what: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_value(v).map_err(|e| {
            Error::invalid(
                what.to_string(),
                format!("not a facebookresearch/DiT model config ({e})"),
            )
        })?;
        cfg.validate_in(what)?;
        Ok(cfg)
    }

    /// Everything the architecture cannot build is an error naming the key.
    pub fn validate(&self) -> Result<()> {
        self.validate_in("DiT config")
    }

    fn validate_in(&self, what: &str) -> Result<()> {
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        if let Some(a) = &self.architecture {
            if a != "dit" {
                return Err(bad("architecture", format!("{a:?} (expected \"dit\")")));
            }
        }
        for (key, v) in [
            ("input_size", self.input_size),
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("num_classes", self.num_classes),
        ] {
            if v == 0 {
                return Err(bad(key, "must be ≥ 1".into()));
            }
        }
        if !self.input_size.is_multiple_of(self.patch_size) {
            return Err(bad(
                "patch_size",
                format!(
                    "{} does not divide input_size {}",
                    self.patch_size, self.input_size
                ),
            ));
        }
        // get_2d_sincos_pos_embed splits D in two halves of sin|cos pairs.
        if self.hidden_size == 0 || !self.hidden_size.is_multiple_of(4) {
            return Err(bad(
                "hidden_size",
                format!(
                    "{} (the 2-D sin-cos position table needs a positive multiple of 4)",
                    self.hidden_size
                ),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(bad(
                "num_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_heads, self.hidden_size
                ),
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_hidden() >= 1) {
            return Err(bad(
                "mlp_ratio",
                format!(
                    "{} gives no MLP hidden units (int(hidden_size · mlp_ratio) must be ≥ 1)",
                    self.mlp_ratio
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return Err(bad(
                "class_dropout_prob",
                format!("must lie in [0, 1), got {}", self.class_dropout_prob),
            ));
        }
        Ok(())
    }

    /// Output channels: 2C with `learn_sigma`, else C.
    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Tokens per side, input_size / patch_size.
    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }

    /// `int(hidden_size * mlp_ratio)`, the MLP's hidden width.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio).max(0.0) as usize
    }

    /// Rows of the label table: num_classes, plus the null class when class_dropout_prob > 0.
    pub fn label_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }

    /// What the output means.
    pub fn prediction(&self) -> Prediction {
        if self.learn_sigma {
            Prediction::EpsilonLearnedVariance
        } else {
            Prediction::Epsilon
        }
    }
}

/// diffusers' `DiTTransformer2DModel` config (`config.json`): its constructor arguments with its
/// defaults, diffusers' bookkeeping keys, and the keys of a legacy `Transformer2DModel` config,
/// which diffusers ignores when it remaps such a config to `DiTTransformer2DModel` (and so does
/// diffuq). Any other key is an error naming it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusersDiTConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(rename = "_diffusers_version")]
    pub diffusers_version: Option<String>,
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub dropout: f64,
    pub norm_num_groups: usize,
    pub attention_bias: bool,
    pub sample_size: usize,
    pub patch_size: usize,
    pub activation_fn: String,
    pub num_embeds_ada_norm: Option<usize>,
    pub upcast_attention: bool,
    pub norm_type: String,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    // Legacy `Transformer2DModel` keys, ignored as diffusers ignores them.
    pub cross_attention_dim: serde_json::Value,
    pub num_vector_embeds: serde_json::Value,
    pub use_linear_projection: serde_json::Value,
    pub only_cross_attention: serde_json::Value,
    pub double_self_attention: serde_json::Value,
    pub attention_type: serde_json::Value,
    pub caption_channels: serde_json::Value,
    pub interpolation_scale: serde_json::Value,
    pub use_additional_conditions: serde_json::Value,
}

impl Default for DiffusersDiTConfig {
    /// `DiTTransformer2DModel.__init__`'s defaults in diffusers 0.31.
    fn default() -> Self {
        Self {
            class_name: String::new(),
            diffusers_version: None,
            name_or_path: None,
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: 4,
            out_channels: None,
            num_layers: 28,
            dropout: 0.0,
            norm_num_groups: 32,
            attention_bias: true,
            sample_size: 32,
            patch_size: 2,
            activation_fn: "gelu-approximate".into(),
            num_embeds_ada_norm: Some(1000),
            upcast_attention: false,
            norm_type: "ada_norm_zero".into(),
            norm_elementwise_affine: false,
            norm_eps: 1e-5,
            cross_attention_dim: serde_json::Value::Null,
            num_vector_embeds: serde_json::Value::Null,
            use_linear_projection: serde_json::Value::Null,
            only_cross_attention: serde_json::Value::Null,
            double_self_attention: serde_json::Value::Null,
            attention_type: serde_json::Value::Null,
            caption_channels: serde_json::Value::Null,
            interpolation_scale: serde_json::Value::Null,
            use_additional_conditions: serde_json::Value::Null,
        }
    }
}

/// Is this JSON object a diffusers DiT config (`DiTTransformer2DModel`, or a legacy
/// `Transformer2DModel` with `norm_type` `"ada_norm_zero"`, which diffusers remaps to it)?
pub fn is_diffusers_dit_json(v: &serde_json::Value) -> bool {
    match v.get("_class_name").and_then(|c| c.as_str()) {
        Some("DiTTransformer2DModel") => true,
        Some("Transformer2DModel") => {
            v.get("norm_type").and_then(|n| n.as_str()) == Some("ada_norm_zero")
        }
        _ => false,
    }
}

/// Is this JSON object a facebookresearch/DiT config (`"architecture": "dit"`)?
pub fn is_dit_json(v: &serde_json::Value) -> bool {
    v.get("architecture").and_then(|a| a.as_str()) == Some("dit")
}

impl DiffusersDiTConfig {
    /// The config from a JSON object (`what` names its source in errors), checked, with the
    /// equivalent facebook config and the diffusers-only numerics.
    fn parse(v: serde_json::Value, what: &str) -> Result<(DiTConfig, Variant)> {
        let c: Self = serde_json::from_value(v).map_err(|e| {
            Error::invalid(
                what.to_string(),
                format!("not a diffusers DiTTransformer2DModel config ({e})"),
            )
        })?;
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        match c.class_name.as_str() {
            "DiTTransformer2DModel" | "Transformer2DModel" => {}
            other => {
                return Err(bad(
                    "_class_name",
                    format!("{other:?} (expected \"DiTTransformer2DModel\")"),
                ))
            }
        }
        if c.norm_type != "ada_norm_zero" {
            return Err(bad(
                "norm_type",
                format!("{:?} (DiT is \"ada_norm_zero\")", c.norm_type),
            ));
        }
        let gelu_exact = match c.activation_fn.as_str() {
            "gelu-approximate" => false,
            "gelu" => true,
            other => {
                return Err(bad(
                    "activation_fn",
                    format!("{other:?} (expected \"gelu-approximate\" or \"gelu\")"),
                ))
            }
        };
        if c.norm_elementwise_affine {
            return Err(bad(
                "norm_elementwise_affine",
                "true (an affine feed-forward LayerNorm) is not implemented (expected false, as DiT)"
                    .into(),
            ));
        }
        let num_classes = match c.num_embeds_ada_norm {
            Some(k) if k > 0 => k,
            _ => {
                return Err(bad(
                    "num_embeds_ada_norm",
                    "must be ≥ 1 (the number of classes)".into(),
                ))
            }
        };
        if !(0.0..1.0).contains(&c.dropout) {
            return Err(bad(
                "dropout",
                format!("must lie in [0, 1), got {}", c.dropout),
            ));
        }
        if !(c.norm_eps.is_finite() && c.norm_eps > 0.0) {
            return Err(bad("norm_eps", format!("must be > 0, got {}", c.norm_eps)));
        }
        let out = c.out_channels.unwrap_or(c.in_channels);
        let learn_sigma = if out == 2 * c.in_channels {
            true
        } else if out == c.in_channels {
            false
        } else {
            return Err(bad(
                "out_channels",
                format!(
                    "{out} (expected in_channels {} (ε) or twice it (ε and the learned variance))",
                    c.in_channels
                ),
            ));
        };
        let cfg = DiTConfig {
            input_size: c.sample_size,
            patch_size: c.patch_size,
            in_channels: c.in_channels,
            hidden_size: c.num_attention_heads * c.attention_head_dim,
            depth: c.num_layers,
            num_heads: c.num_attention_heads,
            mlp_ratio: 4.0,
            class_dropout_prob: DIFFUSERS_CLASS_DROPOUT,
            num_classes,
            learn_sigma,
            architecture: None,
        };
        // The same checks under diffusers' key names.
        cfg.validate_in(what).map_err(|e| match e {
            Error::Invalid { what: w, reason } => {
                let w = [
                    ("`input_size`", "`sample_size`"),
                    ("`depth`", "`num_layers`"),
                    ("`num_heads`", "`num_attention_heads`"),
                    ("`hidden_size`", "`attention_head_dim`"),
                    ("`num_classes`", "`num_embeds_ada_norm`"),
                ]
                .iter()
                .fold(w, |w, (a, b)| w.replace(a, b));
                Error::Invalid { what: w, reason }
            }
            other => other,
        })?;
        let variant = Variant {
            naming: Naming::Diffusers,
            freq_shift: 1.0,
            ff_norm_eps: c.norm_eps,
            gelu_exact,
            dropout: c.dropout,
            attention_bias: c.attention_bias,
        };
        Ok((cfg, variant))
    }
}

/// Which library's parameter names (and numerics) a checkpoint follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// facebookresearch/DiT's `DiT` state dict.
    Facebook,
    /// diffusers' `DiTTransformer2DModel`.
    Diffusers,
}

/// What differs between the two implementations beyond names.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Variant {
    naming: Naming,
    /// `downscale_freq_shift` of the sinusoid: f_k = 10000^(−k/(128 − shift)).
    freq_shift: f32,
    /// ε of the LayerNorm before the MLP.
    ff_norm_eps: f64,
    gelu_exact: bool,
    /// diffusers' `dropout` (after the attention output projection and after the GELU).
    dropout: f64,
    /// Biases on q, k, v (facebook: always).
    attention_bias: bool,
}

impl Variant {
    fn facebook() -> Self {
        Self {
            naming: Naming::Facebook,
            freq_shift: 0.0,
            ff_norm_eps: LN_EPS,
            gelu_exact: false,
            dropout: 0.0,
            attention_bias: true,
        }
    }
}

/// The 256-wide sinusoid of DiT's `TimestepEmbedder.timestep_embedding` (shift 0) or diffusers'
/// `get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=shift)`, row-major
/// (t.len(), dim): [cos(t·f_k) | sin(t·f_k)], f_k = exp(−ln(10000)·k/(half − shift)), k < half =
/// dim/2, a zero column when dim is odd. In float32 as both references: −ln 10000 is rounded to
/// f32, k·(−ln 10000), the division, exp, t and t·f_k are f32 operations; sin and cos of the f32
/// phase are rounded from f64.
pub fn timestep_embedding(t: &[f64], dim: usize, shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let neg_ln = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((neg_ln * k as f32) / (half as f32 - shift)).exp())
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        let ti = ti as f32;
        let phase: Vec<f64> = freqs.iter().map(|f| f64::from(ti * f)).collect();
        out.extend(phase.iter().map(|p| p.cos() as f32));
        out.extend(phase.iter().map(|p| p.sin() as f32));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

/// MAE's `get_2d_sincos_pos_embed(dim, grid)` as DiT and diffusers use it, row-major
/// (grid², dim): token m = i·grid + j (row i, column j) gets [sin(j ω) | cos(j ω) | sin(i ω) |
/// cos(i ω)], ω_k = 10000^(−k/(dim/4)), k < dim/4 (the first half encodes the column: the
/// reference's meshgrid puts w first). Computed in f64 and rounded to f32, as the reference's
/// numpy table is.
pub fn sincos_pos_embed(dim: usize, grid: usize) -> Vec<f32> {
    let q = dim / 4;
    let omega: Vec<f64> = (0..q)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / q as f64))
        .collect();
    let mut out = Vec::with_capacity(grid * grid * dim);
    for i in 0..grid {
        for j in 0..grid {
            for pos in [j as f64, i as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn linear(vb: &VarBuilder, cin: usize, cout: usize, name: &str) -> candle_core::Result<Linear> {
    linear_b(vb, cin, cout, name, true)
}

fn linear_b(
    vb: &VarBuilder,
    cin: usize,
    cout: usize,
    name: &str,
    bias: bool,
) -> candle_core::Result<Linear> {
    let vb = vb.pp(name);
    let b = if bias {
        Some(vb.get(cout, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(vb.get((cout, cin), "weight")?, b))
}

/// LayerNorm over the last axis without affine (biased variance, ε inside the root).
fn layer_norm(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// x · (1 + scale) + shift, with (N, D) scale and shift applied to every token of (N, T, D).
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?.unsqueeze(1)?)?
        .broadcast_add(&shift.unsqueeze(1)?)
}

/// The time MLP and label table that make the conditioning c = t_emb + y_emb.
struct CondEmbedder {
    lin1: Linear,
    lin2: Linear,
    table: Embedding,
}

impl CondEmbedder {
    fn new(vb: &VarBuilder, cfg: &DiTConfig, naming: Naming) -> candle_core::Result<Self> {
        let d = cfg.hidden_size;
        let f = FREQUENCY_EMBEDDING_SIZE;
        let (t, y, l1, l2) = match naming {
            Naming::Facebook => ("t_embedder.mlp", "y_embedder", "0", "2"),
            Naming::Diffusers => (
                "timestep_embedder",
                "class_embedder",
                "linear_1",
                "linear_2",
            ),
        };
        let vt = vb.pp(t);
        Ok(Self {
            lin1: linear(&vt, f, d, l1)?,
            lin2: linear(&vt, d, d, l2)?,
            table: Embedding::new(
                vb.pp(y)
                    .pp("embedding_table")
                    .get((cfg.label_rows(), d), "weight")?,
                d,
            ),
        })
    }

    fn forward(&self, t_freq: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let t = self
            .lin2
            .forward(&candle_nn::ops::silu(&self.lin1.forward(t_freq)?)?)?;
        t + self.table.forward(y)?
    }
}

/// q, k, v: timm's one fused linear, or diffusers' three.
enum Qkv {
    Fused(Linear),
    Split(Linear, Linear, Linear),
}

/// One adaLN-Zero transformer block.
struct Block {
    ada: Linear,
    qkv: Qkv,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    variant: Variant,
}

impl Block {
    fn new(vb: &VarBuilder, cfg: &DiTConfig, v: Variant) -> candle_core::Result<Self> {
        let d = cfg.hidden_size;
        let m = cfg.mlp_hidden();
        Ok(match v.naming {
            Naming::Facebook => Self {
                ada: linear(vb, d, 6 * d, "adaLN_modulation.1")?,
                qkv: Qkv::Fused(linear(vb, d, 3 * d, "attn.qkv")?),
                proj: linear(vb, d, d, "attn.proj")?,
                fc1: linear(vb, d, m, "mlp.fc1")?,
                fc2: linear(vb, m, d, "mlp.fc2")?,
                heads: cfg.num_heads,
                variant: v,
            },
            Naming::Diffusers => {
                let a = vb.pp("attn1");
                let b = v.attention_bias;
                Self {
                    ada: linear(vb, d, 6 * d, "norm1.linear")?,
                    qkv: Qkv::Split(
                        linear_b(&a, d, d, "to_q", b)?,
                        linear_b(&a, d, d, "to_k", b)?,
                        linear_b(&a, d, d, "to_v", b)?,
                    ),
                    proj: linear(&a, d, d, "to_out.0")?,
                    fc1: linear(vb, d, m, "ff.net.0.proj")?,
                    fc2: linear(vb, m, d, "ff.net.2")?,
                    heads: cfg.num_heads,
                    variant: v,
                }
            }
        })
    }

    fn attention(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let (q, k, v) = match &self.qkv {
            Qkv::Fused(l) => {
                let y = l.forward(x)?;
                (
                    y.narrow(2, 0, d)?,
                    y.narrow(2, d, d)?,
                    y.narrow(2, 2 * d, d)?,
                )
            }
            Qkv::Split(q, k, v) => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
        };
        let hd = d / self.heads;
        let split = |z: Tensor| -> candle_core::Result<Tensor> {
            z.reshape((n, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let q = (q * (1.0 / (hd as f64).sqrt()))?;
        // Scores (N, H, T, T). candle_nn's softmax (not softmax_last_dim, which has no
        // backward): AU guidance differentiates through the scores.
        let w = q.matmul(&k.t()?.contiguous()?)?;
        let w = candle_nn::ops::softmax(&w, D::Minus1)?;
        let a = w.matmul(&v)?.transpose(1, 2)?.reshape((n, t, d))?;
        self.proj.forward(&a)
    }

    fn forward(&self, h: &Tensor, c: &Tensor, mode: &mut Mode<'_>) -> candle_core::Result<Tensor> {
        let d = h.dim(2)?;
        let m = self.ada.forward(&candle_nn::ops::silu(c)?)?;
        let part = |i: usize| m.narrow(1, i * d, d);
        let (shift1, scale1, gate1) = (part(0)?, part(1)?, part(2)?);
        let (shift2, scale2, gate2) = (part(3)?, part(4)?, part(5)?);
        let p = self.variant.dropout;
        let a = self.attention(&modulate(&layer_norm(h, LN_EPS)?, &shift1, &scale1)?)?;
        let a = mode.dropout(&a, p)?;
        let h = (h + a.broadcast_mul(&gate1.unsqueeze(1)?)?)?;
        let x = modulate(&layer_norm(&h, self.variant.ff_norm_eps)?, &shift2, &scale2)?;
        let x = self.fc1.forward(&x)?;
        let x = if self.variant.gelu_exact {
            x.gelu_erf()?
        } else {
            x.gelu()?
        };
        let x = self.fc2.forward(&mode.dropout(&x, p)?)?;
        h + x.broadcast_mul(&gate2.unsqueeze(1)?)?
    }
}

/// DiT: facebookresearch/DiT's `DiT` or diffusers' `DiTTransformer2DModel`.
pub struct DiT {
    config: DiTConfig,
    variant: Variant,
    dtype: DType,
    device: Device,
    /// x_embedder.proj as a linear map of the flattened (c, ky, kx) patch: (D, C·p·p), (D,).
    patch: Linear,
    /// (1, T, D).
    pos_embed: Tensor,
    /// One (facebook) or one per block (diffusers; block 0's also feeds the final layer).
    cond: Vec<CondEmbedder>,
    blocks: Vec<Block>,
    final_mod: Linear,
    final_linear: Linear,
    name: String,
}

impl DiT {
    /// Build the network (facebook naming) from `config` with parameters from `vb` (a checkpoint,
    /// a seeded initialisation, or [`ParamSource::shapes_only`]).
    pub fn new(config: &DiTConfig, vb: VarBuilder, name: impl Into<String>) -> Result<Self> {
        config.validate()?;
        Self::build(config, Variant::facebook(), vb, name.into())
            .map_err(|e| Error::invalid("DiT weights", first_line(&e)))
    }

    /// The state-dict tensors (name, shape) of a facebook-naming checkpoint for `config`, in name
    /// order; computed by building the network without values, so it is exactly what loading
    /// asks for.
    pub fn parameter_shapes(config: &DiTConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let (vb, src) = ParamSource::shapes_only().var_builder(DType::F32, &Device::Cpu);
        Self::new(config, vb, "shapes")?;
        Ok(src.asked())
    }

    fn build(
        cfg: &DiTConfig,
        variant: Variant,
        vb: VarBuilder,
        name: String,
    ) -> candle_core::Result<Self> {
        let d = cfg.hidden_size;
        let (c, p) = (cfg.in_channels, cfg.patch_size);
        let g = cfg.grid();
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let (embed, pos_embed, cond, blocks, final_mod, final_linear) = match variant.naming {
            Naming::Facebook => {
                let ve = vb.pp("x_embedder.proj");
                let pos = vb.get((1, g * g, d), "pos_embed")?;
                let blocks = (0..cfg.depth)
                    .map(|i| Block::new(&vb.pp(format!("blocks.{i}")), cfg, variant))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let vf = vb.pp("final_layer");
                (
                    ve,
                    pos,
                    vec![CondEmbedder::new(&vb, cfg, variant.naming)?],
                    blocks,
                    linear(&vf, d, 2 * d, "adaLN_modulation.1")?,
                    linear(&vf, d, p * p * cfg.out_channels(), "linear")?,
                )
            }
            Naming::Diffusers => {
                let ve = vb.pp("pos_embed.proj");
                // A non-persistent buffer in diffusers: made, not read.
                let pos = Tensor::from_vec(sincos_pos_embed(d, g), (1, g * g, d), &device)?
                    .to_dtype(dtype)?;
                let mut cond = Vec::with_capacity(cfg.depth);
                let mut blocks = Vec::with_capacity(cfg.depth);
                for i in 0..cfg.depth {
                    let vbb = vb.pp(format!("transformer_blocks.{i}"));
                    cond.push(CondEmbedder::new(
                        &vbb.pp("norm1.emb"),
                        cfg,
                        variant.naming,
                    )?);
                    blocks.push(Block::new(&vbb, cfg, variant)?);
                }
                (
                    ve,
                    pos,
                    cond,
                    blocks,
                    linear(&vb, d, 2 * d, "proj_out_1")?,
                    linear(&vb, d, p * p * cfg.out_channels(), "proj_out_2")?,
                )
            }
        };
        let patch = Linear::new(
            embed.get((d, c, p, p), "weight")?.reshape((d, c * p * p))?,
            Some(embed.get(d, "bias")?),
        );
        Ok(Self {
            config: cfg.clone(),
            variant,
            dtype,
            device,
            patch,
            pos_embed,
            cond,
            blocks,
            final_mod,
            final_linear,
            name,
        })
    }

    /// The config file of the checkpoint at `path`: `config.json` in a directory; beside a file,
    /// `<stem>.json` if it exists (`DiT-XL-2-256x256.pt` + `DiT-XL-2-256x256.json`), else
    /// `config.json`.
    pub fn config_path(path: &Path) -> PathBuf {
        crate::checkpoint::config_beside(path)
    }

    /// The DiT config for the checkpoint at `path`, if there is one: [`Self::config_path`] exists
    /// and is a facebook DiT config ([`is_dit_json`]) or a diffusers one
    /// ([`is_diffusers_dit_json`]).
    pub fn config_for(path: &Path) -> Option<PathBuf> {
        crate::checkpoint::config_if(path, |v| is_dit_json(v) || is_diffusers_dit_json(v))
    }

    /// The weight file of a checkpoint directory: diffusers' `diffusion_pytorch_model.safetensors`
    /// (or `.bin`); facebook's `model.pt`, or its only `.pt`/`.pth`/`.safetensors` file.
    fn weights_in(dir: &Path, naming: Naming) -> Result<PathBuf> {
        let what = || format!("DiT checkpoint directory {}", dir.display());
        if naming == Naming::Diffusers {
            for f in [
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.bin",
            ] {
                if dir.join(f).exists() {
                    return Ok(dir.join(f));
                }
            }
            return Err(Error::invalid(
                what(),
                "holds neither diffusion_pytorch_model.safetensors nor diffusion_pytorch_model.bin",
            ));
        }
        if dir.join("model.pt").exists() {
            return Ok(dir.join("model.pt"));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "pt" || e == "pth" || e == "safetensors")
            })
            .collect();
        found.sort();
        match found.len() {
            1 => Ok(found.remove(0)),
            n => Err(Error::invalid(
                what(),
                format!(
                    "holds no model.pt and {n} .pt/.pth/.safetensors files (expected exactly one)"
                ),
            )),
        }
    }

    /// Load a DiT checkpoint in either naming, told apart by its config: `"architecture": "dit"`
    /// (facebook: a state dict, `.pt` or `.safetensors`, float32 or float16) or a diffusers
    /// `_class_name` (see the module doc). A directory, or a weight file with its config beside it
    /// ([`Self::config_path`]). Missing, mis-shaped or unused tensors, and weights in the other
    /// naming, are errors naming them and the file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg_path = Self::config_path(path);
        if !cfg_path.exists() {
            return Err(Error::invalid(
                format!("DiT checkpoint {}", path.display()),
                format!(
                    "no config beside the weights (looked for {})",
                    cfg_path.display()
                ),
            ));
        }
        let cfg_what = format!("DiT config {}", cfg_path.display());
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(cfg_what.clone(), format!("not JSON ({e})")))?;
        let (config, variant) = if v.get("_class_name").is_some() {
            DiffusersDiTConfig::parse(v, &cfg_what)?
        } else if is_dit_json(&v) {
            (DiTConfig::from_json(v, &cfg_what)?, Variant::facebook())
        } else {
            return Err(Error::invalid(
                cfg_what,
                "is neither a facebookresearch/DiT config (\"architecture\": \"dit\") nor a diffusers DiTTransformer2DModel config (\"_class_name\")",
            ));
        };
        let weights = if path.is_dir() {
            Self::weights_in(path, variant.naming)?
        } else {
            path.to_path_buf()
        };
        let name = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        }
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dit".into());
        Self::load_weights(&config, variant, &weights, &cfg_path, name, dtype, device)
    }

    /// Load a facebookresearch/DiT state dict (or `train.py` checkpoint) for a known `config`
    /// (a released checkpoint whose constructor arguments diffuq's checkpoint catalog holds
    /// needs no config file beside it).
    pub fn load_with_config(
        config: &DiTConfig,
        weights: &Path,
        name: String,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_weights(
            config,
            Variant::facebook(),
            weights,
            Path::new("(catalog)"),
            name,
            dtype,
            device,
        )
    }

    fn load_weights(
        config: &DiTConfig,
        variant: Variant,
        weights: &Path,
        cfg_path: &Path,
        name: String,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let what = format!("weights {}", weights.display());
        let mut tensors = crate::checkpoint::read_tensors(weights)?;
        // A train.py checkpoint ({"model", "ema", "opt", "args"}): the EMA weights, as DiT's
        // `find_model` takes them.
        if tensors
            .iter()
            .any(|(k, _)| k == "ema.x_embedder.proj.weight")
        {
            tensors = tensors
                .into_iter()
                .filter_map(|(k, t)| k.strip_prefix("ema.").map(|k| (k.to_string(), t)))
                .collect();
        }
        let (marker, other, this) = match variant.naming {
            Naming::Facebook => (
                "pos_embed.proj.weight",
                "diffusers DiTTransformer2DModel",
                "facebookresearch/DiT",
            ),
            Naming::Diffusers => (
                "x_embedder.proj.weight",
                "facebookresearch/DiT",
                "diffusers DiTTransformer2DModel",
            ),
        };
        if tensors.iter().any(|(k, _)| k == marker) {
            return Err(Error::invalid(
                what,
                format!(
                    "holds {other} tensor names (`{marker}`) but its config {} is a {this} config",
                    cfg_path.display()
                ),
            ));
        }
        let (vb, src) = ParamSource::load(tensors, what.clone()).var_builder(dtype, device);
        // The parameter source's messages already name the file.
        let net = Self::build(config, variant, vb, name)
            .map_err(|e| super::params::build_error(&what, &e))?;
        src.finish()?;
        Ok(net)
    }

    /// The facebook-naming config (for a diffusers checkpoint: its equivalent).
    pub fn config(&self) -> &DiTConfig {
        &self.config
    }

    pub fn naming(&self) -> Naming {
        self.variant.naming
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// (N, C, S, S) → (N, T, C·p·p), token m = i·G + j holding the (c, ky, kx)-ordered patch.
    fn patchify(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let (p, g) = (self.config.patch_size, self.config.grid());
        x.reshape((n, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n, g * g, c * p * p))
    }

    /// The labels as U32 (N,), checked against the table (label num_classes: the null class).
    fn check_labels(&self, labels: Option<&Tensor>, n: usize) -> candle_core::Result<Tensor> {
        let Some(y) = labels else {
            candle_core::bail!(
                "network `{}` is class-conditional: labels are required",
                self.name
            )
        };
        let y = y.to_dtype(DType::U32)?;
        let ys = y.to_vec1::<u32>()?;
        if ys.len() != n {
            candle_core::bail!("{} labels for a batch of {n}", ys.len());
        }
        let rows = self.config.label_rows();
        if let Some(bad) = ys.iter().find(|&&c| c as usize >= rows) {
            let k = self.config.num_classes;
            let null = if rows > k {
                format!("; label {k} is the classifier-free-guidance null class")
            } else {
                String::new()
            };
            candle_core::bail!(
                "label {bad} is out of range for network `{}` ({k} classes{null})",
                self.name
            );
        }
        y.to_device(&self.device)
    }

    /// Everything up to the input of the last linear: φ = modulate(LN(h), shift, scale), (N, T, D).
    fn trunk(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let (n, c, hh, ww) = x.dims4()?;
        let s = cfg.input_size;
        if c != cfg.in_channels || hh != s || ww != s {
            candle_core::bail!(
                "network `{}` takes (N, {}, {s}, {s}) inputs, got {:?}",
                self.name,
                cfg.in_channels,
                x.dims()
            );
        }
        if t.len() != 1 && t.len() != n {
            candle_core::bail!("{} timesteps for a batch of {n}", t.len());
        }
        let times: Vec<f64> = (0..n)
            .map(|i| if t.len() == 1 { t[0] } else { t[i] })
            .collect();
        let y = self.check_labels(labels, n)?;
        let f = FREQUENCY_EMBEDDING_SIZE;
        let t_freq = Tensor::from_vec(
            timestep_embedding(&times, f, self.variant.freq_shift),
            (n, f),
            &self.device,
        )?
        .to_dtype(self.dtype)?;
        let conds = self
            .cond
            .iter()
            .map(|e| e.forward(&t_freq, &y))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let x = x.to_dtype(self.dtype)?;
        let mut h = self
            .patch
            .forward(&self.patchify(&x)?)?
            .broadcast_add(&self.pos_embed)?;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, &conds[i.min(conds.len() - 1)], mode)?;
        }
        let d = cfg.hidden_size;
        let m = self.final_mod.forward(&candle_nn::ops::silu(&conds[0])?)?;
        modulate(
            &layer_norm(&h, LN_EPS)?,
            &m.narrow(1, 0, d)?,
            &m.narrow(1, d, d)?,
        )
    }

    /// (N, T, p·p·C) → (N, C, G·p, G·p), the reference's `unpatchify` (einsum nhwpqc → nchpwq).
    fn unpatchify(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        let (n, t, o) = out.dims3()?;
        let (p, g, c) = (
            self.config.patch_size,
            self.config.grid(),
            self.config.out_channels(),
        );
        if t != g * g || o != p * p * c {
            candle_core::bail!(
                "network `{}`: last-layer outputs {:?}, expected (N, {}, {})",
                self.name,
                out.dims(),
                g * g,
                p * p * c
            );
        }
        out.reshape((n, g, g, p, p, c))?
            .permute((0, 5, 1, 3, 2, 4))?
            .reshape((n, c, g * p, g * p))
    }
}

impl Network for DiT {
    fn prediction(&self) -> Prediction {
        self.config.prediction()
    }

    fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let phi = self.trunk(x, t, labels, mode)?;
        self.unpatchify(&self.final_linear.forward(&phi)?)?
            .to_dtype(x.dtype())
    }

    fn num_classes(&self) -> Option<usize> {
        Some(self.config.num_classes)
    }

    fn last_layer(&self) -> Result<&dyn LastLayerNetwork> {
        Ok(self)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// `final_layer.linear` (diffusers: `proj_out_2`) as GU's last layer: φ_{n,m} the modulated,
/// normalised hidden state of token m, W (p·p·C_out, D); its outputs are a p × p patch of all
/// C_out channels, (ky, kx, c)-ordered, which `assemble` unpatchifies. With a learned variance GU
/// uses the ε channels (`LastLayerModel::output_to_eps` takes them).
impl LastLayerNetwork for DiT {
    fn features(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        self.trunk(x, t, labels, mode)
    }

    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        Ok((
            self.final_linear.weight().clone(),
            self.final_linear.bias().cloned(),
        ))
    }

    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        self.unpatchify(out)
    }

    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, hh, ww) = target.dims4()?;
        let (p, g) = (self.config.patch_size, self.config.grid());
        if c != self.config.out_channels() || hh != g * p || ww != g * p {
            candle_core::bail!(
                "network `{}`: target {:?}, expected (N, {}, {}, {})",
                self.name,
                target.dims(),
                self.config.out_channels(),
                g * p,
                g * p
            );
        }
        target
            .reshape((n, c, g, p, g, p))?
            .permute((0, 2, 4, 3, 5, 1))?
            .reshape((n, g * g, p * p * c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::SeedStreams;

    #[test]
    fn xl2_configs_are_the_released_models() {
        // DiT_models['DiT-XL/2'] at facebookresearch/DiT ed81ce22: depth 28, hidden 1152,
        // patch 2, 16 heads; DiT defaults in_channels 4, learn_sigma, 1000 classes, dropout 0.1.
        let c = DiTConfig::xl2_256();
        assert_eq!((c.input_size, c.patch_size, c.hidden_size), (32, 2, 1152));
        assert_eq!((c.depth, c.num_heads, c.mlp_hidden()), (28, 16, 4608));
        assert_eq!((c.out_channels(), c.grid(), c.label_rows()), (8, 16, 1001));
        assert_eq!(c.prediction(), Prediction::EpsilonLearnedVariance);
        assert_eq!(DiTConfig::xl2_512().grid(), 32);
        c.validate().unwrap();
        let e = DiTConfig {
            class_dropout_prob: 0.0,
            learn_sigma: false,
            ..c
        };
        assert_eq!((e.label_rows(), e.out_channels()), (1000, 4));
        assert_eq!(e.prediction(), Prediction::Epsilon);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = |v: serde_json::Value| {
            DiTConfig::from_json(v, "DiT config x/config.json")
                .unwrap_err()
                .to_string()
        };
        let e = err(serde_json::json!({"hiden_size": 64}));
        assert!(
            e.contains("x/config.json") && e.contains("`hiden_size`"),
            "{e}"
        );
        let e = err(serde_json::json!({"input_size": 9}));
        assert!(e.contains("`patch_size`") && e.contains("9"), "{e}");
        let e = err(serde_json::json!({"hidden_size": 66, "num_heads": 2}));
        assert!(e.contains("`hidden_size`"), "{e}");
        let e = err(serde_json::json!({"hidden_size": 64, "num_heads": 3}));
        assert!(e.contains("`num_heads`"), "{e}");
        let e = err(serde_json::json!({"class_dropout_prob": 1.0}));
        assert!(e.contains("`class_dropout_prob`"), "{e}");
        let e = err(serde_json::json!({"architecture": "adm"}));
        assert!(e.contains("`architecture`"), "{e}");
        let d = |v: serde_json::Value| {
            DiffusersDiTConfig::parse(v, "DiT config y/config.json")
                .unwrap_err()
                .to_string()
        };
        let base = serde_json::json!({"_class_name": "DiTTransformer2DModel"});
        let with = |k: &str, x: serde_json::Value| {
            let mut v = base.clone();
            v[k] = x;
            v
        };
        let e = d(with("num_layer", 2.into()));
        assert!(
            e.contains("y/config.json") && e.contains("`num_layer`"),
            "{e}"
        );
        let e = d(with("norm_type", "ada_norm".into()));
        assert!(e.contains("`norm_type`"), "{e}");
        let e = d(with("out_channels", 5.into()));
        assert!(e.contains("`out_channels`"), "{e}");
        let e = d(with("sample_size", 31.into()));
        assert!(e.contains("`patch_size`") && e.contains("31"), "{e}");
        let e = d(with("num_attention_heads", 0.into()));
        assert!(e.contains("`num_attention_heads`"), "{e}");
        // The hub's legacy Transformer2DModel config for DiT-XL/2 is read (diffusers remaps it).
        let (cfg, v) = DiffusersDiTConfig::parse(
            serde_json::json!({"_class_name": "Transformer2DModel", "norm_type": "ada_norm_zero",
                "cross_attention_dim": null, "use_linear_projection": false,
                "num_vector_embeds": null, "out_channels": 8, "_diffusers_version": "0.12.0"}),
            "hub",
        )
        .unwrap();
        assert_eq!(
            cfg,
            DiTConfig {
                architecture: None,
                ..DiTConfig::xl2_256()
            }
        );
        assert_eq!((v.freq_shift, v.ff_norm_eps), (1.0, 1e-5));
        assert!(is_diffusers_dit_json(
            &serde_json::json!({"_class_name": "Transformer2DModel", "norm_type": "ada_norm_zero"})
        ));
        assert!(!is_diffusers_dit_json(
            &serde_json::json!({"_class_name": "Transformer2DModel", "norm_type": "layer_norm"})
        ));
    }

    #[test]
    fn sinusoids_follow_their_formulas() {
        // From the formulas: at t = 0 the cos half is 1 and the sin half 0; frequency k is
        // 10000^(−k/(half − shift)).
        for shift in [0.0f32, 1.0] {
            let e = timestep_embedding(&[0.0, 999.0], 8, shift);
            assert_eq!(&e[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
            for k in 0..4 {
                let f = 10000f64.powf(-(k as f64) / (4.0 - f64::from(shift)));
                assert!((f64::from(e[8 + k]) - (999.0 * f).cos()).abs() < 2e-4);
                assert!((f64::from(e[12 + k]) - (999.0 * f).sin()).abs() < 2e-4);
            }
        }
        // Position table: token (i, j) = (1, 2) of a 3×3 grid, D = 8 (ω = 1, 1/100).
        let p = sincos_pos_embed(8, 3);
        let row = &p[5 * 8..6 * 8];
        let expect = [
            2f64.sin(),
            0.02f64.sin(),
            2f64.cos(),
            0.02f64.cos(),
            1f64.sin(),
            0.01f64.sin(),
            1f64.cos(),
            0.01f64.cos(),
        ];
        for (a, b) in row.iter().zip(expect) {
            assert_eq!(*a, b as f32);
        }
    }

    /// A seeded tiny DiT in f64 (facebook naming).
    fn tiny() -> DiT {
        let cfg = DiTConfig {
            input_size: 4,
            patch_size: 2,
            in_channels: 2,
            hidden_size: 16,
            depth: 2,
            num_heads: 2,
            num_classes: 3,
            ..DiTConfig::default()
        };
        let src = ParamSource::init(
            SeedStreams::new(5).purpose("dit-test"),
            candle_nn::VarMap::new(),
        );
        let (vb, _) = src.var_builder(DType::F64, &Device::Cpu);
        DiT::new(&cfg, vb, "tiny").unwrap()
    }

    fn input(n: usize, seed: u64, c: usize) -> Tensor {
        let idx: Vec<u64> = (0..n as u64).collect();
        let v = SeedStreams::new(seed)
            .purpose("x")
            .normals(&idx, None, c * 16);
        Tensor::from_vec(v, (n, c, 4, 4), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }

    #[test]
    fn unpatchify_inverts_disassemble_and_the_output_is_differentiable_in_x() {
        let net = tiny();
        let target = input(2, 7, 4);
        let back = net
            .assemble(&net.disassemble(&target).unwrap())
            .unwrap()
            .sub(&target)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(back, 0.0);
        // AU guidance back-propagates through ε: autograd vs a central finite difference (f64).
        let x = candle_core::Var::from_tensor(&input(2, 1, 2)).unwrap();
        let y = Tensor::new(&[2u32, 3], &Device::Cpu).unwrap(); // 3: the null class
        let g = input(2, 2, 4);
        let d = input(2, 3, 2);
        let f = |x: &Tensor| -> f64 {
            let o = net
                .forward(x, &[10.0, 500.5], Some(&y), &mut Mode::Eval)
                .unwrap();
            (o * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let o = net
            .forward(x.as_tensor(), &[10.0, 500.5], Some(&y), &mut Mode::Eval)
            .unwrap();
        let grads = (o * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let auto = (grads.get(&x).unwrap() * &d)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let h = 1e-5;
        let fd = (f(&(x.as_tensor() + (&d * h).unwrap()).unwrap())
            - f(&(x.as_tensor() - (&d * h).unwrap()).unwrap()))
            / (2.0 * h);
        assert!(
            (auto - fd).abs() < 1e-6 * fd.abs().max(1.0),
            "autograd {auto} vs finite difference {fd}"
        );
    }

    #[test]
    fn labels_and_inputs_are_checked() {
        let net = tiny();
        let x = input(2, 1, 2);
        let fwd = |x: &Tensor, y: Option<&Tensor>| {
            net.forward(x, &[5.0], y, &mut Mode::Eval)
                .unwrap_err()
                .to_string()
        };
        let y = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        let e = fwd(&x, Some(&y));
        assert!(
            e.contains("label 4") && e.contains("3 classes") && e.contains("null class"),
            "{e}"
        );
        assert!(fwd(&x, None).contains("labels are required"));
        let e = fwd(&input(2, 1, 4), Some(&y));
        assert!(e.contains("(N, 2, 4, 4)"), "{e}");
    }
}
