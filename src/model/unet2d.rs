//! diffusers' `UNet2DModel` (the DDPM UNet of Ho et al. 2020 as diffusers builds it; the AU paper's
//! CIFAR-10 model google/ddpm-cifar10-32 is one), built from its `config.json` and loaded from
//! `diffusion_pytorch_model.safetensors` / `.bin`, or freshly initialised for training.
//!
//! Forward, as diffusers 0.31 `UNet2DModel.forward` (positional time embedding):
//!
//!   e = Linear₂(SiLU(Linear₁(sinusoid(t))))  [+ Embedding(y)]
//!   h = conv_in(x); skips = [h]
//!   down blocks: per layer ResnetBlock2D(h, e) [→ Attention]; push h; Downsample2D; push h
//!   mid: ResnetBlock2D → Attention → ResnetBlock2D
//!   up blocks: per layer h = ResnetBlock2D(cat(h, skips.pop()), e) [→ Attention]; Upsample2D
//!   out = conv_out(SiLU(GroupNorm(h)))
//!
//! with ResnetBlock2D(x, e) = (shortcut(x) + conv₂(drop(SiLU(N₂(conv₁(SiLU(N₁ x)) + W SiLU(e))))))
//! / output_scale_factor ("default"), or N₂(·)(1 + scale) + shift ("scale_shift", ADM's
//! AdaGN); and Attention(h) = (h + to_out(softmax(QKᵀ/√d)V)) / rescale_output_factor over the
//! H·W tokens of GroupNorm(h).
//!
//! The last layer for Laplace methods is `conv_out`, a 3×3 convolution: a linear map of the
//! 9·C im2col patch at each of the H·W output positions.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::conv::Conv2d;
use super::norm::GroupNorm;

use super::network::{LastLayerNetwork, Mode, Network, Prediction};
use super::params::ParamSource;
use crate::error::{Error, Result};

/// The fields of a diffusers `UNet2DModel` config.json (all of diffusers 0.31's). Its metadata
/// keys (`_class_name`, `_diffusers_version`, …) are ignored; any other unknown key, and a value
/// diffuq does not implement, is an error naming the key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNet2DConfig {
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: String,
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    pub dropout: f64,
    pub act_fn: String,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: Option<usize>,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: String,
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    pub num_train_timesteps: Option<usize>,
}

impl Default for UNet2DConfig {
    /// diffusers' defaults for `UNet2DModel.__init__`.
    fn default() -> Self {
        Self {
            sample_size: 32,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            up_block_types: [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
        }
    }
}

fn unsupported(key: &str, value: impl std::fmt::Debug, expected: &str) -> Error {
    Error::invalid(
        format!("unet2d config `{key}`"),
        format!("{value:?} is not implemented (expected {expected})"),
    )
}

impl UNet2DConfig {
    /// Read a diffusers `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                format!("UNet2DModel config {}", path.display()),
                format!("not JSON ({e})"),
            )
        })?;
        Self::from_json(v, &format!("UNet2DModel config {}", path.display()))
    }

    /// A config from diffusers' JSON object (`what` names its source in errors).
    pub fn from_json(mut v: serde_json::Value, what: &str) -> Result<Self> {
        let class = v
            .get("_class_name")
            .and_then(|c| c.as_str())
            .map(String::from);
        if let Some(c) = class {
            if c != "UNet2DModel" {
                return Err(Error::invalid(
                    what.to_string(),
                    format!("`_class_name` is {c:?}; diffuq reads UNet2DModel here"),
                ));
            }
        }
        if let Some(map) = v.as_object_mut() {
            map.retain(|k, _| !k.starts_with('_'));
        }
        let cfg: Self = serde_json::from_value(v).map_err(|e| {
            Error::invalid(
                what.to_string(),
                format!("not a diffusers UNet2DModel config ({e})"),
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Everything this implementation does not cover is an error naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.time_embedding_type != "positional" {
            return Err(unsupported(
                "time_embedding_type",
                &self.time_embedding_type,
                "\"positional\"",
            ));
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(unsupported("act_fn", &self.act_fn, "\"silu\""));
        }
        if !["default", "scale_shift"].contains(&self.resnet_time_scale_shift.as_str()) {
            return Err(unsupported(
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                "\"default\" or \"scale_shift\"",
            ));
        }
        if self.downsample_type != "conv" {
            return Err(unsupported(
                "downsample_type",
                &self.downsample_type,
                "\"conv\"",
            ));
        }
        if self.upsample_type != "conv" {
            return Err(unsupported(
                "upsample_type",
                &self.upsample_type,
                "\"conv\"",
            ));
        }
        if self.class_embed_type.is_some() {
            return Err(unsupported(
                "class_embed_type",
                &self.class_embed_type,
                "null (with num_class_embeds)",
            ));
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::invalid(
                "unet2d config `block_out_channels`",
                format!(
                    "{} channels for {} down and {} up blocks: they must be equal and ≥ 1",
                    n,
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            ));
        }
        for b in &self.down_block_types {
            if b != "DownBlock2D" && b != "AttnDownBlock2D" {
                return Err(unsupported(
                    "down_block_types",
                    b,
                    "DownBlock2D or AttnDownBlock2D",
                ));
            }
        }
        for b in &self.up_block_types {
            if b != "UpBlock2D" && b != "AttnUpBlock2D" {
                return Err(unsupported(
                    "up_block_types",
                    b,
                    "UpBlock2D or AttnUpBlock2D",
                ));
            }
        }
        let groups = self.groups();
        for &c in &self.block_out_channels {
            if groups == 0 || c % groups != 0 {
                return Err(Error::invalid(
                    "unet2d config `norm_num_groups`",
                    format!("{groups} groups do not divide {c} channels"),
                ));
            }
            if let Some(d) = self.attention_head_dim {
                if d == 0 || c % d != 0 {
                    return Err(Error::invalid(
                        "unet2d config `attention_head_dim`",
                        format!("{d} does not divide {c} channels"),
                    ));
                }
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                "unet2d config `dropout`",
                format!("must lie in [0, 1), got {}", self.dropout),
            ));
        }
        if self.layers_per_block == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return Err(Error::invalid(
                "unet2d config",
                "layers_per_block, in_channels and out_channels must be ≥ 1",
            ));
        }
        Ok(())
    }

    fn groups(&self) -> usize {
        self.norm_num_groups
            .unwrap_or((self.block_out_channels[0] / 4).min(32))
    }
}

fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    super::act::silu(x)
}

fn conv(
    vb: &VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    name: &str,
) -> candle_core::Result<Conv2d> {
    let vb = vb.pp(name);
    let w = vb.get((cout, cin, k, k), "weight")?;
    let b = vb.get(cout, "bias")?;
    Ok(Conv2d::new(w, Some(b), stride, padding))
}

fn linear(vb: &VarBuilder, cin: usize, cout: usize, name: &str) -> candle_core::Result<Linear> {
    let vb = vb.pp(name);
    Ok(Linear::new(
        vb.get((cout, cin), "weight")?,
        Some(vb.get(cout, "bias")?),
    ))
}

fn group_norm(
    vb: &VarBuilder,
    groups: usize,
    c: usize,
    eps: f64,
    name: &str,
) -> candle_core::Result<GroupNorm> {
    let vb = vb.pp(name);
    GroupNorm::new(vb.get(c, "weight")?, vb.get(c, "bias")?, c, groups, eps)
}

/// diffusers' ResnetBlock2D.
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    scale_shift: bool,
    dropout: f64,
    output_scale_factor: f64,
}

impl Resnet {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        temb: usize,
        cfg: &UNet2DConfig,
        output_scale_factor: f64,
    ) -> candle_core::Result<Self> {
        let g = cfg.groups();
        let scale_shift = cfg.resnet_time_scale_shift == "scale_shift";
        Ok(Self {
            norm1: group_norm(vb, g, cin, cfg.norm_eps, "norm1")?,
            conv1: conv(vb, cin, cout, 3, 1, 1, "conv1")?,
            time_emb_proj: linear(
                vb,
                temb,
                if scale_shift { 2 * cout } else { cout },
                "time_emb_proj",
            )?,
            norm2: group_norm(vb, g, cout, cfg.norm_eps, "norm2")?,
            conv2: conv(vb, cout, cout, 3, 1, 1, "conv2")?,
            shortcut: if cin != cout {
                Some(conv(vb, cin, cout, 1, 1, 0, "conv_shortcut")?)
            } else {
                None
            },
            scale_shift,
            dropout: cfg.dropout,
            output_scale_factor,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let h = self
            .conv1
            .forward(&self.norm1.forward_silu(x, None, &mut Mode::Eval, 0.0)?)?;
        let e = self.time_emb_proj.forward(&silu(emb)?)?; // (N, C) or (N, 2C)
        let h = if self.scale_shift {
            let e = e.unsqueeze(2)?.unsqueeze(3)?;
            let c = e.dim(1)? / 2;
            let scale = e.narrow(1, 0, c)?;
            let shift = e.narrow(1, c, c)?;
            let h = self
                .norm2
                .forward(&h)?
                .broadcast_mul(&(scale + 1.0)?)?
                .broadcast_add(&shift)?;
            mode.dropout(&silu(&h)?, self.dropout)?
        } else {
            self.norm2.forward_silu(&h, Some(&e), mode, self.dropout)?
        };
        let h = self.conv2.forward(&h)?;
        let skip = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers' Attention with a group norm, residual connection and one output projection, over
/// the H·W positions (the AttnDownBlock2D / mid-block attention).
struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale_output_factor: f64,
}

impl Attention {
    fn new(
        vb: &VarBuilder,
        c: usize,
        head_dim: usize,
        groups: Option<usize>,
        eps: f64,
        rescale: f64,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            group_norm: groups
                .map(|g| group_norm(vb, g, c, eps, "group_norm"))
                .transpose()?,
            to_q: linear(vb, c, c, "to_q")?,
            to_k: linear(vb, c, c, "to_k")?,
            to_v: linear(vb, c, c, "to_v")?,
            to_out: linear(vb, c, c, "to_out.0")?,
            heads: c / head_dim,
            rescale_output_factor: rescale,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let l = h * w;
        let mut t = x.reshape((b, c, l))?;
        if let Some(n) = &self.group_norm {
            t = n.forward(&t)?;
        }
        let t = t.transpose(1, 2)?.contiguous()?; // (B, L, C)
        let d = c / self.heads;
        let split = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, l, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.to_q.forward(&t)?)?;
        let k = split(self.to_k.forward(&t)?)?;
        let v = split(self.to_v.forward(&t)?)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = p.matmul(&v)?.transpose(1, 2)?.reshape((b, l, c))?;
        let o = self
            .to_out
            .forward(&o)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        let out = (o + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out / self.rescale_output_factor
        }
    }
}

struct DownBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<Attention>,
    downsample: Option<(Conv2d, bool)>,
}

struct UpBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<Attention>,
    upsample: Option<Conv2d>,
}

/// A diffusers UNet2DModel.
pub struct UNet2D {
    config: UNet2DConfig,
    dtype: DType,
    device: Device,
    time_linear_1: Linear,
    time_linear_2: Linear,
    class_embedding: Option<candle_nn::Embedding>,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid_resnets: Vec<Resnet>,
    mid_attention: Option<Attention>,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    name: String,
    prediction: Prediction,
    /// Network time = time_scale · t (1000 for a flow model whose t lies in [0, 1]).
    time_scale: f64,
}

impl UNet2D {
    /// Declare what the output means (a diffusers UNet2DModel checkpoint is an ε-model; diffuq's
    /// flow-matching models predict a velocity).
    pub fn with_prediction(mut self, prediction: Prediction) -> Self {
        self.prediction = prediction;
        self
    }

    /// Feed the sinusoid time_scale · t (flow models take t ∈ [0, 1]; the embedding's
    /// frequencies are made for DDPM's 0..1000).
    pub fn with_time_scale(mut self, scale: f64) -> Self {
        self.time_scale = scale;
        self
    }

    /// Build the network from `config` with parameters from `vb` (a checkpoint or a fresh,
    /// seeded initialisation: see [`ParamSource`]).
    pub fn new(config: &UNet2DConfig, vb: VarBuilder, name: impl Into<String>) -> Result<Self> {
        config.validate()?;
        Self::build(config, vb, name.into())
            .map_err(|e| Error::invalid("UNet2DModel weights", e.to_string()))
    }

    fn build(cfg: &UNet2DConfig, vb: VarBuilder, name: String) -> candle_core::Result<Self> {
        let boc = &cfg.block_out_channels;
        let c0 = boc[0];
        let temb = 4 * c0;
        let eps = cfg.norm_eps;
        let groups = cfg.groups();
        let head_dim = |c: usize| cfg.attention_head_dim.unwrap_or(c);
        let vt = vb.pp("time_embedding");
        let time_linear_1 = linear(&vt, c0, temb, "linear_1")?;
        let time_linear_2 = linear(&vt, temb, temb, "linear_2")?;
        let class_embedding = match cfg.num_class_embeds {
            Some(k) => Some(candle_nn::Embedding::new(
                vb.pp("class_embedding").get((k, temb), "weight")?,
                temb,
            )),
            None => None,
        };
        let conv_in = conv(&vb, cfg.in_channels, c0, 3, 1, 1, "conv_in")?;
        // Layer j of a down or up block: a resnet (cin → cout) and, in attention blocks, an
        // attention over its output.
        let layer = |vbb: &VarBuilder,
                     j: usize,
                     cin: usize,
                     cout: usize,
                     attn: bool|
         -> candle_core::Result<(Resnet, Option<Attention>)> {
            let r = Resnet::new(&vbb.pp(format!("resnets.{j}")), cin, cout, temb, cfg, 1.0)?;
            let a = if attn {
                Some(Attention::new(
                    &vbb.pp(format!("attentions.{j}")),
                    cout,
                    head_dim(cout),
                    Some(groups),
                    eps,
                    1.0,
                )?)
            } else {
                None
            };
            Ok((r, a))
        };
        let n = boc.len();
        let mut down = vec![];
        let mut out_c = c0;
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = boc[i];
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let attn = kind == "AttnDownBlock2D";
            let mut resnets = vec![];
            let mut attentions = vec![];
            for j in 0..cfg.layers_per_block {
                let cin = if j == 0 { in_c } else { out_c };
                let (r, a) = layer(&vbb, j, cin, out_c, attn)?;
                resnets.push(r);
                attentions.extend(a);
            }
            let downsample = if i + 1 < n {
                let pad = cfg.downsample_padding;
                Some((
                    conv(&vbb.pp("downsamplers.0"), out_c, out_c, 3, 2, pad, "conv")?,
                    pad == 0,
                ))
            } else {
                None
            };
            down.push(DownBlock {
                resnets,
                attentions,
                downsample,
            });
        }
        let cm = boc[n - 1];
        let vm = vb.pp("mid_block");
        let msf = cfg.mid_block_scale_factor;
        let mut mid_resnets = vec![Resnet::new(&vm.pp("resnets.0"), cm, cm, temb, cfg, msf)?];
        // diffusers' UNetMidBlock2D: the attention's group norm defaults to the resnets' groups
        // only with the "default" time embedding norm; with "scale_shift" it has none.
        let attn_groups =
            cfg.attn_norm_num_groups
                .or(if cfg.resnet_time_scale_shift == "default" {
                    Some(groups)
                } else {
                    None
                });
        let mid_attention = if cfg.add_attention {
            Some(Attention::new(
                &vm.pp("attentions.0"),
                cm,
                head_dim(cm),
                attn_groups,
                eps,
                msf,
            )?)
        } else {
            None
        };
        mid_resnets.push(Resnet::new(&vm.pp("resnets.1"), cm, cm, temb, cfg, msf)?);
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut up = vec![];
        let mut out_c = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev_c = out_c;
            out_c = rev[i];
            let in_c = rev[(i + 1).min(n - 1)];
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let attn = kind == "AttnUpBlock2D";
            let layers = cfg.layers_per_block + 1;
            let mut resnets = vec![];
            let mut attentions = vec![];
            for j in 0..layers {
                let skip_c = if j == layers - 1 { in_c } else { out_c };
                let cin = if j == 0 { prev_c } else { out_c };
                let (r, a) = layer(&vbb, j, cin + skip_c, out_c, attn)?;
                resnets.push(r);
                attentions.extend(a);
            }
            let upsample = if i + 1 < n {
                Some(conv(
                    &vbb.pp("upsamplers.0"),
                    out_c,
                    out_c,
                    3,
                    1,
                    1,
                    "conv",
                )?)
            } else {
                None
            };
            up.push(UpBlock {
                resnets,
                attentions,
                upsample,
            });
        }
        let conv_norm_out = group_norm(&vb, groups, c0, eps, "conv_norm_out")?;
        let conv_out = conv(&vb, c0, cfg.out_channels, 3, 1, 1, "conv_out")?;
        Ok(Self {
            config: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            time_linear_1,
            time_linear_2,
            class_embedding,
            conv_in,
            down,
            mid_resnets,
            mid_attention,
            up,
            conv_norm_out,
            conv_out,
            name,
            prediction: Prediction::Epsilon,
            time_scale: 1.0,
        })
    }

    /// Load a diffusers checkpoint: a directory holding `config.json` and
    /// `diffusion_pytorch_model.safetensors` (or `.bin`), or such a weight file with its
    /// `config.json` beside it. Missing, mis-shaped or unused tensors are errors naming them.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (dir, weights) = if path.is_dir() {
            let st = path.join("diffusion_pytorch_model.safetensors");
            let bin = path.join("diffusion_pytorch_model.bin");
            let w = if st.exists() {
                st
            } else if bin.exists() {
                bin
            } else {
                return Err(Error::invalid(
                    format!("checkpoint directory {}", path.display()),
                    "holds neither diffusion_pytorch_model.safetensors nor diffusion_pytorch_model.bin",
                ));
            };
            (path.to_path_buf(), w)
        } else {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (dir, path.to_path_buf())
        };
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::invalid(
                format!("checkpoint {}", path.display()),
                format!(
                    "no config.json beside the weights (looked for {})",
                    cfg_path.display()
                ),
            ));
        }
        let config = UNet2DConfig::from_json_file(&cfg_path)?;
        let tensors = crate::checkpoint::read_tensors(&weights)?;
        let what = format!("weights {}", weights.display());
        let (vb, src) = ParamSource::load(tensors, what.clone()).var_builder(dtype, device);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unet2d".into());
        let net =
            Self::build(&config, vb, name).map_err(|e| Error::invalid(what, e.to_string()))?;
        src.finish()?;
        Ok(net)
    }

    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The sinusoidal embedding of diffusers' `get_timestep_embedding`, in float32 as diffusers
    /// computes it (the phase t·f is rounded to f32 before sin/cos; at t ≈ 1000 that moves the
    /// embedding by ~1e-4, which a float64 phase would not reproduce).
    fn time_features(&self, t: &[f64], n: usize) -> candle_core::Result<Tensor> {
        let dim = self.config.block_out_channels[0];
        let half = dim / 2;
        let shift = self.config.freq_shift as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|k| (-(10000f32.ln()) * k as f32 / (half as f32 - shift)).exp())
            .collect();
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let ti = (self.time_scale * if t.len() == 1 { t[0] } else { t[i] }) as f32;
            let phase: Vec<f32> = freqs.iter().map(|f| ti * f).collect();
            let sin = phase.iter().map(|&p| (f64::from(p)).sin() as f32);
            let cos = phase.iter().map(|&p| (f64::from(p)).cos() as f32);
            if self.config.flip_sin_to_cos {
                out.extend(cos.chain(sin));
            } else {
                out.extend(sin.chain(cos));
            }
            if dim % 2 == 1 {
                out.push(0.0);
            }
        }
        Tensor::from_vec(out, (n, dim), &self.device)?.to_dtype(self.dtype)
    }

    /// Everything up to (and including) the activation before `conv_out`.
    fn trunk(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        if t.len() != 1 && t.len() != n {
            candle_core::bail!("{} timesteps for a batch of {n}", t.len());
        }
        let x = x.to_dtype(self.dtype)?;
        let x = if self.config.center_input_sample {
            ((x * 2.0)? - 1.0)?
        } else {
            x
        };
        let mut emb = self.time_linear_2.forward(&silu(
            &self.time_linear_1.forward(&self.time_features(t, n)?)?,
        )?)?;
        match (&self.class_embedding, labels) {
            (Some(e), Some(y)) => emb = (emb + e.forward(y)?)?,
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
        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for (j, r) in block.resnets.iter().enumerate() {
                h = r.forward(&h, &emb, mode)?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h)?;
                }
                skips.push(h.clone());
            }
            if let Some((c, pad_right)) = &block.downsample {
                if *pad_right {
                    h = h
                        .pad_with_zeros(D::Minus1, 0, 1)?
                        .pad_with_zeros(D::Minus2, 0, 1)?;
                }
                h = c.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid_resnets[0].forward(&h, &emb, mode)?;
        if let Some(a) = &self.mid_attention {
            h = a.forward(&h)?;
        }
        h = self.mid_resnets[1].forward(&h, &emb, mode)?;
        for block in &self.up {
            for (j, r) in block.resnets.iter().enumerate() {
                let s = skips.pop().expect("one skip per up-block resnet");
                h = r.forward(&Tensor::cat(&[&h, &s], 1)?, &emb, mode)?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(c) = &block.upsample {
                // candle's own upsample on the trained models' kernels (their bits); the fused
                // op with a one-pass backward on the AVX-512 kernels.
                let up = if diffuq_linalg::conv::avx512_active() {
                    super::upsample::nearest2x(&h)?
                } else {
                    let (_, _, hh, ww) = h.dims4()?;
                    h.upsample_nearest2d(2 * hh, 2 * ww)?
                };
                h = c.forward(&up)?;
            }
        }
        self.conv_norm_out
            .forward_silu(&h, None, &mut Mode::Eval, 0.0)
    }
}

impl Network for UNet2D {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let h = self.trunk(x, t, labels, mode)?;
        self.conv_out.forward(&h)?.to_dtype(x.dtype())
    }

    fn num_classes(&self) -> Option<usize> {
        self.config.num_class_embeds
    }

    fn last_layer(&self) -> Result<&dyn LastLayerNetwork> {
        Ok(self)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// `conv_out` as a linear map: φ_{n,p} is the 3×3×C patch (zero-padded) around output position
/// p, in the (c, ky, kx) order of the weight's flattening, so W = conv_out.weight as (O, 9C).
impl LastLayerNetwork for UNet2D {
    fn features(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let h = self.trunk(x, t, labels, mode)?;
        self.conv_out.patches(&h)
    }

    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        self.conv_out.as_linear()
    }

    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        super::conv::positions_to_image(out)
    }

    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        super::conv::image_to_positions(target)
    }
}
