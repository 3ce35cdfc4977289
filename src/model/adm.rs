//! OpenAI guided-diffusion's ADM UNet (`UNetModel`, Dhariwal & Nichol 2021), built from the
//! model flags of its scripts and loaded from the released `.pt` state dicts.
//!
//! Both papers run ADM checkpoints: AU (De Vita & Belagiannis 2025) the ImageNet-64 and
//! ImageNet-128 models (`64x64_diffusion.pt`, `128x128_diffusion.pt`), GU (Jazbec et al. 2025)
//! the ImageNet-128 model with a last-layer Laplace over its final 3×3 convolution `out.2`, of
//! whose 6 output channels (ε, then the learned-variance interpolation) only the first 3 are used.
//! Both take ε as the first half of the output, which [`Prediction::EpsilonLearnedVariance`]
//! states.
//!
//! Forward, as guided-diffusion's `UNetModel.forward` (repository README flags; `script_util`
//! converts them to the constructor's arguments):
//!
//!   e = time_embed.2(SiLU(time_embed.0(sinusoid(t))))  [+ label_emb(y)]
//!   input_blocks: conv 3×3, then per level `num_res_blocks` × (ResBlock [→ AttentionBlock]) and,
//!                 between levels, a downsampling ResBlock (`resblock_updown`) or a stride-2 conv;
//!                 every block's output is kept as a skip
//!   middle_block: ResBlock → AttentionBlock → ResBlock
//!   output_blocks: per level (`num_res_blocks` + 1) × (ResBlock(cat(h, skip)) [→ AttentionBlock])
//!                 and, after the last one of each level but the first, an upsampling ResBlock or
//!                 nearest ×2 + conv
//!   out = out.2(SiLU(out.0(h)))
//!
//! ResBlock(x, e) = skip(x) + out_layers.3(drop(SiLU(N₂(h) · (1 + scale) + shift))) with
//! h = in_layers.2(SiLU(N₁ x)) and (scale, shift) = emb_layers.1(SiLU(e)) under
//! `use_scale_shift_norm` (AdaGN), or drop(SiLU(N₂(h + emb_layers.1(SiLU(e))))) without; an up/down
//! ResBlock resamples both SiLU(N₁ x) (before the conv) and x. AttentionBlock(x) =
//! x + proj_out(attention(qkv(N x))) over the H·W positions, the heads split from the 3C qkv
//! channels head-major ("legacy": q, k, v inside each head's 3·ch block) or, with
//! `use_new_attention_order`, qkv-major (all q first). Every norm is a 32-group GroupNorm.
//!
//! Precision: the reference computes its sinusoid in float32 whatever the model dtype, and so does
//! diffuq. The released sampling runs the torso in float16 (`use_fp16`); diffuq runs it in the
//! dtype asked for (f32 or f64). In f64 the attention softmax is f64 here, float32 in the reference.
//!
//! The last layer for Laplace methods is `out.2`, a 3×3 convolution: a linear map of the 9·C
//! im2col patch at each of the H·W output positions ([`Conv2d::patches`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::conv::{conv2d, Conv2d};
use super::network::{LastLayerNetwork, Mode, Network, Prediction};
use super::norm::GroupNorm;
use super::params::ParamSource;
use crate::error::{Error, Result};
use crate::schedule::{NoiseSchedule, ScheduleKind};

/// guided-diffusion's `NUM_CLASSES` (ImageNet), the label count of every class-conditional model.
pub const IMAGENET_CLASSES: usize = 1000;
/// guided-diffusion's `normalization()`: GroupNorm32 with 32 groups (eps 1e-5, torch's default).
const GROUPS: usize = 32;
const NORM_EPS: f64 = 1e-5;

/// A guided-diffusion model config: the flags of `script_util.model_and_diffusion_defaults()`
/// under their names (what `--attention_resolutions 32,16,8 --class_cond True …` sets), with
/// those defaults. Two keys are diffuq's: `num_classes` (`UNetModel`'s constructor argument,
/// which the scripts fix at 1000 when `class_cond`; golden fixtures shrink it) and
/// `architecture` (`"adm"`, optional, to mark a config as this one). Any other key is an error
/// naming it; values this implementation does not cover are errors naming the key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmConfig {
    pub image_size: usize,
    pub num_channels: usize,
    pub num_res_blocks: usize,
    pub num_heads: usize,
    /// −1: `num_heads`.
    pub num_heads_upsample: i64,
    /// −1: `num_heads` heads; otherwise heads of this many channels (`num_heads*` ignored).
    pub num_head_channels: i64,
    /// Resolutions (image_size / downsampling factor) with attention, comma-separated as the flag
    /// ("32,16,8"); a JSON list of numbers is accepted too.
    #[serde(deserialize_with = "comma_list")]
    pub attention_resolutions: String,
    /// Channel multipliers per level ("1,1,2,3,4"); empty: the default of `image_size`.
    #[serde(deserialize_with = "comma_list")]
    pub channel_mult: String,
    pub dropout: f64,
    pub class_cond: bool,
    pub use_checkpoint: bool,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_fp16: bool,
    pub use_new_attention_order: bool,
    pub learn_sigma: bool,
    pub diffusion_steps: usize,
    pub noise_schedule: String,
    pub timestep_respacing: String,
    pub use_kl: bool,
    pub predict_xstart: bool,
    pub rescale_timesteps: bool,
    pub rescale_learned_sigmas: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

impl Default for AdmConfig {
    /// `script_util.model_and_diffusion_defaults()` at guided-diffusion 22e0df81.
    fn default() -> Self {
        Self {
            image_size: 64,
            num_channels: 128,
            num_res_blocks: 2,
            num_heads: 4,
            num_heads_upsample: -1,
            num_head_channels: -1,
            attention_resolutions: "16,8".into(),
            channel_mult: String::new(),
            dropout: 0.0,
            class_cond: false,
            use_checkpoint: false,
            use_scale_shift_norm: true,
            resblock_updown: false,
            use_fp16: false,
            use_new_attention_order: false,
            learn_sigma: false,
            diffusion_steps: 1000,
            noise_schedule: "linear".into(),
            timestep_respacing: String::new(),
            use_kl: false,
            predict_xstart: false,
            rescale_timesteps: false,
            rescale_learned_sigmas: false,
            num_classes: None,
            architecture: None,
        }
    }
}

/// A flag that is a comma-separated list: the string itself, or a JSON list of numbers joined.
fn comma_list<'de, De: serde::Deserializer<'de>>(d: De) -> std::result::Result<String, De::Error> {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                serde_json::Value::Number(n) => Ok(n.to_string()),
                other => Err(De::Error::custom(format!(
                    "list entry {other} is not a number"
                ))),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        other => Err(De::Error::custom(format!(
            "expected a comma-separated string or a list of numbers, got {other}"
        ))),
    }
}

/// Does this JSON object describe an ADM model (rather than a diffusers config)?
pub fn is_adm_json(v: &serde_json::Value) -> bool {
    match v.get("architecture").and_then(|a| a.as_str()) {
        Some(a) => a == "adm",
        None => {
            v.get("_class_name").is_none()
                && (v.get("num_res_blocks").is_some() || v.get("attention_resolutions").is_some())
        }
    }
}

impl AdmConfig {
    /// Read a config JSON (guided-diffusion flag names).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let what = format!("ADM config {}", path.display());
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
                format!("not a guided-diffusion model config ({e})"),
            )
        })?;
        cfg.validate_in(what)?;
        Ok(cfg)
    }

    /// Everything this implementation does not cover is an error naming the key.
    pub fn validate(&self) -> Result<()> {
        self.validate_in("ADM config")
    }

    fn validate_in(&self, what: &str) -> Result<()> {
        let bad = |key: &str, reason: String| Error::invalid(format!("{what} `{key}`"), reason);
        if let Some(a) = &self.architecture {
            if a != "adm" {
                return Err(bad("architecture", format!("{a:?} (expected \"adm\")")));
            }
        }
        if self.num_channels == 0 {
            return Err(bad("num_channels", "must be ≥ 1".into()));
        }
        let levels = self.level_channels_in(what)?;
        for &c in &levels {
            if c == 0 || c % GROUPS != 0 {
                return Err(bad(
                    "channel_mult",
                    format!(
                        "a level of {c} channels: every GroupNorm32 has {GROUPS} groups, so channel counts must be positive multiples of {GROUPS}"
                    ),
                ));
            }
        }
        let attn = self.attention_ds_in(what)?;
        if self.num_head_channels != -1 && self.num_head_channels <= 0 {
            return Err(bad(
                "num_head_channels",
                format!("{} (expected -1 or ≥ 1)", self.num_head_channels),
            ));
        }
        if self.num_heads == 0 {
            return Err(bad("num_heads", "must be ≥ 1".into()));
        }
        if self.num_heads_upsample != -1 && self.num_heads_upsample <= 0 {
            return Err(bad(
                "num_heads_upsample",
                format!("{} (expected -1 or ≥ 1)", self.num_heads_upsample),
            ));
        }
        // Every place with attention: the levels whose factor is listed, and the middle block.
        let mut ds = 1;
        for (level, &c) in levels.iter().enumerate() {
            if attn.contains(&ds) {
                for up in [false, true] {
                    self.check_heads(c, up, &bad)?;
                }
            }
            if level + 1 < levels.len() {
                ds *= 2;
            }
        }
        self.check_heads(*levels.last().expect("≥ 1 level"), false, &bad)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad(
                "dropout",
                format!("must lie in [0, 1), got {}", self.dropout),
            ));
        }
        if self.diffusion_steps == 0 {
            return Err(bad("diffusion_steps", "must be ≥ 1".into()));
        }
        if !["linear", "cosine"].contains(&self.noise_schedule.as_str()) {
            return Err(bad(
                "noise_schedule",
                format!(
                    "{:?} (expected \"linear\" or \"cosine\")",
                    self.noise_schedule
                ),
            ));
        }
        if self.predict_xstart && self.learn_sigma {
            return Err(bad(
                "predict_xstart",
                "x₀-prediction with a learned variance is not implemented (expected false with learn_sigma)".into(),
            ));
        }
        match (self.class_cond, self.num_classes) {
            (_, Some(0)) => return Err(bad("num_classes", "must be ≥ 1".into())),
            (false, Some(k)) => {
                return Err(bad(
                    "num_classes",
                    format!("{k} given, but class_cond is false"),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    fn check_heads(
        &self,
        c: usize,
        upsample: bool,
        bad: &dyn Fn(&str, String) -> Error,
    ) -> Result<()> {
        let heads = self.heads(c, upsample);
        let key = if self.num_head_channels != -1 {
            "num_head_channels"
        } else if upsample && self.num_heads_upsample != -1 {
            "num_heads_upsample"
        } else {
            "num_heads"
        };
        if heads == 0
            || !c.is_multiple_of(heads)
            || (self.num_head_channels > 0 && heads * self.num_head_channels as usize != c)
        {
            return Err(bad(
                key,
                format!("does not divide the {c} channels of an attention block"),
            ));
        }
        Ok(())
    }

    /// Attention heads of a block of `c` channels (`upsample`: in the output blocks).
    fn heads(&self, c: usize, upsample: bool) -> usize {
        if self.num_head_channels > 0 {
            c / self.num_head_channels as usize
        } else if upsample && self.num_heads_upsample > 0 {
            self.num_heads_upsample as usize
        } else {
            self.num_heads
        }
    }

    /// Channels per level: int(mult · num_channels) for `channel_mult` or, when it is empty, the
    /// scripts' default for `image_size` (64: 1,2,3,4; 128: 1,1,2,3,4; 256: 1,1,2,2,4,4; 512:
    /// 0.5,1,1,2,2,4,4).
    pub fn level_channels(&self) -> Result<Vec<usize>> {
        self.level_channels_in("ADM config")
    }

    fn level_channels_in(&self, what: &str) -> Result<Vec<usize>> {
        let mults: Vec<f64> = if self.channel_mult.trim().is_empty() {
            match self.image_size {
                512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
                64 => vec![1.0, 2.0, 3.0, 4.0],
                s => {
                    return Err(Error::invalid(
                        format!("{what} `image_size`"),
                        format!("{s} has no default channel_mult (64, 128, 256, 512 do): give `channel_mult`"),
                    ))
                }
            }
        } else {
            // script_util parses the flag with int().
            self.channel_mult
                .split(',')
                .map(|m| {
                    m.trim().parse::<usize>().map(|m| m as f64).map_err(|_| {
                        Error::invalid(
                            format!("{what} `channel_mult`"),
                            format!("{:?}: entry {m:?} is not an integer", self.channel_mult),
                        )
                    })
                })
                .collect::<Result<_>>()?
        };
        Ok(mults
            .iter()
            .map(|m| (m * self.num_channels as f64) as usize)
            .collect())
    }

    /// Downsampling factors with attention: image_size // res for each listed resolution.
    pub fn attention_ds(&self) -> Result<Vec<usize>> {
        self.attention_ds_in("ADM config")
    }

    fn attention_ds_in(&self, what: &str) -> Result<Vec<usize>> {
        self.attention_resolutions
            .split(',')
            .map(|r| match r.trim().parse::<usize>() {
                Ok(r) if r > 0 => Ok(self.image_size / r),
                _ => Err(Error::invalid(
                    format!("{what} `attention_resolutions`"),
                    format!(
                        "{:?}: entry {r:?} is not a positive integer",
                        self.attention_resolutions
                    ),
                )),
            })
            .collect()
    }

    /// Output channels: 6 (ε and the variance interpolation) with `learn_sigma`, else 3.
    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            6
        } else {
            3
        }
    }

    /// Classes of a class-conditional model (`num_classes`, default 1000), None if unconditional.
    pub fn classes(&self) -> Option<usize> {
        self.class_cond
            .then(|| self.num_classes.unwrap_or(IMAGENET_CLASSES))
    }

    /// What the output means.
    pub fn prediction(&self) -> Prediction {
        match (self.learn_sigma, self.predict_xstart) {
            (true, _) => Prediction::EpsilonLearnedVariance,
            (false, true) => Prediction::Sample,
            (false, false) => Prediction::Epsilon,
        }
    }

    /// The network's time input per diffusion step: 1000 / diffusion_steps with
    /// `rescale_timesteps` (guided-diffusion's `_scale_timesteps`), else 1.
    pub fn time_scale(&self) -> f64 {
        if self.rescale_timesteps {
            1000.0 / self.diffusion_steps as f64
        } else {
            1.0
        }
    }

    /// The training noise schedule (`gaussian_diffusion.get_named_beta_schedule`): "linear" is β
    /// from 1e-4 to 0.02 scaled by 1000 / diffusion_steps, "cosine" Nichol & Dhariwal's (β capped
    /// at 0.999).
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        let n = self.diffusion_steps;
        match self.noise_schedule.as_str() {
            "linear" => {
                let s = 1000.0 / n as f64;
                Ok(NoiseSchedule::new(
                    ScheduleKind::Linear,
                    s * 1e-4,
                    s * 0.02,
                    n,
                ))
            }
            "cosine" => Ok(NoiseSchedule::new(ScheduleKind::Cosine, 0.0, 0.0, n)),
            other => Err(Error::invalid(
                "ADM config `noise_schedule`",
                format!("{other:?} (expected \"linear\" or \"cosine\")"),
            )),
        }
    }
}

/// guided-diffusion's `timestep_embedding(t, dim)` (max period 10000), row-major (t.len(), dim):
/// [cos(t·f_k) | sin(t·f_k)], f_k = exp(−ln(10000)·k/half), k < half = dim/2, and a zero column
/// when dim is odd. Like the reference it runs in float32 (t, f_k and their product rounded to
/// f32; at t ≈ 1000 a float64 phase would move the embedding by ~1e-4), with sin and cos of the
/// f32 phase rounded from f64.
pub fn timestep_embedding(t: &[f64], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f32.ln()) * k as f32 / half as f32).exp())
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

/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
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
    name: &str,
) -> candle_core::Result<Conv2d> {
    let vb = vb.pp(name);
    let w = vb.get((cout, cin, k, k), "weight")?;
    let b = vb.get(cout, "bias")?;
    Ok(Conv2d::new(w, Some(b), stride, k / 2))
}

fn linear(vb: &VarBuilder, cin: usize, cout: usize, name: &str) -> candle_core::Result<Linear> {
    let vb = vb.pp(name);
    Ok(Linear::new(
        vb.get((cout, cin), "weight")?,
        Some(vb.get(cout, "bias")?),
    ))
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

/// The resampling of an up/down ResBlock (and of nothing else: the separate Downsample and
/// Upsample layers carry convolutions).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Resample {
    None,
    /// 2×2 average pooling (guided-diffusion's `Downsample(use_conv=False)`).
    Down,
    /// Nearest-neighbour ×2 (`Upsample(use_conv=False)`).
    Up,
}

impl Resample {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Resample::None => Ok(x.clone()),
            Resample::Down => x.avg_pool2d(2),
            Resample::Up => super::upsample::nearest2x(x),
        }
    }
}

/// guided-diffusion's ResBlock.
struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    resample: Resample,
    emb: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
    scale_shift: bool,
    dropout: f64,
}

impl ResBlock {
    fn new(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        cfg: &AdmConfig,
        resample: Resample,
    ) -> candle_core::Result<Self> {
        let temb = 4 * cfg.num_channels;
        let ss = cfg.use_scale_shift_norm;
        Ok(Self {
            in_norm: group_norm(vb, cin, "in_layers.0")?,
            in_conv: conv(vb, cin, cout, 3, 1, "in_layers.2")?,
            resample,
            emb: linear(vb, temb, if ss { 2 * cout } else { cout }, "emb_layers.1")?,
            out_norm: group_norm(vb, cout, "out_layers.0")?,
            out_conv: conv(vb, cout, cout, 3, 1, "out_layers.3")?,
            // UNetModel never sets use_conv: a channel change is a 1×1 conv.
            skip: if cin != cout {
                Some(conv(vb, cin, cout, 1, 1, "skip_connection")?)
            } else {
                None
            },
            scale_shift: ss,
            dropout: cfg.dropout,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let h = silu(&self.in_norm.forward(x)?)?;
        let h = self.in_conv.forward(&self.resample.apply(&h)?)?;
        let x = self.resample.apply(x)?;
        let e = self.emb.forward(&silu(emb)?)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = if self.scale_shift {
            let c = e.dim(1)? / 2;
            let scale = e.narrow(1, 0, c)?;
            let shift = e.narrow(1, c, c)?;
            self.out_norm
                .forward(&h)?
                .broadcast_mul(&(scale + 1.0)?)?
                .broadcast_add(&shift)?
        } else {
            self.out_norm.forward(&h.broadcast_add(&e)?)?
        };
        // out_layers = [norm, SiLU, Dropout, conv]: the dropout of ADM's MC-Dropout baseline.
        let h = mode.dropout(&silu(&h)?, self.dropout)?;
        let h = self.out_conv.forward(&h)?;
        let skip = match &self.skip {
            Some(c) => c.forward(&x)?,
            None => x,
        };
        skip + h
    }
}

/// A 1-D convolution of kernel 1 (guided-diffusion's `conv_nd(1, …, 1)`), weight (O, C, 1), applied
/// to (N, C, L) as a 1×1 2-D convolution.
struct Conv1x1 {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1x1 {
    fn new(vb: &VarBuilder, cin: usize, cout: usize, name: &str) -> candle_core::Result<Self> {
        let vb = vb.pp(name);
        Ok(Self {
            weight: vb.get((cout, cin, 1), "weight")?,
            bias: vb.get(cout, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        conv2d(
            &x.unsqueeze(3)?,
            &self.weight.unsqueeze(3)?,
            Some(&self.bias),
            (1, 1),
            (0, 0),
        )?
        .squeeze(3)
    }
}

/// guided-diffusion's AttentionBlock over the H·W positions.
struct AttentionBlock {
    norm: GroupNorm,
    qkv: Conv1x1,
    proj_out: Conv1x1,
    heads: usize,
    new_order: bool,
}

impl AttentionBlock {
    fn new(vb: &VarBuilder, c: usize, heads: usize, new_order: bool) -> candle_core::Result<Self> {
        Ok(Self {
            norm: group_norm(vb, c, "norm")?,
            qkv: Conv1x1::new(vb, c, 3 * c, "qkv")?,
            proj_out: Conv1x1::new(vb, c, c, "proj_out")?,
            heads,
            new_order,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let l = hh * ww;
        let x3 = x.reshape((b, c, l))?;
        let qkv = self.qkv.forward(&self.norm.forward(&x3)?)?; // (B, 3C, L)
        let nh = self.heads;
        let ch = c / nh;
        let (q, k, v) = if self.new_order {
            // QKVAttention: q, k, v are the three C-channel thirds, each split into heads.
            let part = |i: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, i * c, c)?
                    .contiguous()?
                    .reshape((b * nh, ch, l))
            };
            (part(0)?, part(1)?, part(2)?)
        } else {
            // QKVAttentionLegacy: each head's 3·ch block holds its q, k, v.
            let r = qkv.reshape((b * nh, 3 * ch, l))?;
            let part = |i: usize| r.narrow(1, i * ch, ch)?.contiguous();
            (part(0)?, part(1)?, part(2)?)
        };
        // (q·s)ᵀ(k·s) with s = ch^(−1/4), as the reference scales (more stable in f16).
        let s = 1.0 / (ch as f64).sqrt().sqrt();
        let q = (q * s)?;
        let k = (k * s)?;
        let w = q.transpose(1, 2)?.contiguous()?.matmul(&k)?; // (B·H, L_t, L_s)
                                                              // candle_nn's softmax (not softmax_last_dim, which has no backward): AU guidance
                                                              // differentiates through the scores.
        let w = candle_nn::ops::softmax(&w, D::Minus1)?;
        let a = v.matmul(&w.t()?)?; // (B·H, ch, L_t)
        let h = self.proj_out.forward(&a.reshape((b, c, l))?)?;
        (x3 + h)?.reshape((b, c, hh, ww))
    }
}

/// One entry of a `TimestepEmbedSequential`.
enum Layer {
    /// `input_blocks.0.0`, the 3×3 input conv.
    Conv(Conv2d),
    Res(ResBlock),
    Attn(AttentionBlock),
    /// `Downsample` with `op` (stride-2 3×3 conv) or `Upsample` (nearest ×2, then `conv`).
    Resample(Conv2d, Resample),
}

impl Layer {
    fn forward(
        &self,
        h: &Tensor,
        emb: &Tensor,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        match self {
            Layer::Conv(c) => c.forward(h),
            Layer::Res(r) => r.forward(h, emb, mode),
            Layer::Attn(a) => a.forward(h),
            Layer::Resample(c, Resample::Up) => c.forward(&Resample::Up.apply(h)?),
            Layer::Resample(c, _) => c.forward(h),
        }
    }
}

type Block = Vec<Layer>;

fn run_block(
    block: &Block,
    h: Tensor,
    emb: &Tensor,
    mode: &mut Mode<'_>,
) -> candle_core::Result<Tensor> {
    block
        .iter()
        .try_fold(h, |h, layer| layer.forward(&h, emb, mode))
}

/// guided-diffusion's UNetModel.
pub struct AdmUNet {
    config: AdmConfig,
    dtype: DType,
    device: Device,
    time_embed: (Linear, Linear),
    label_emb: Option<candle_nn::Embedding>,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    name: String,
}

impl AdmUNet {
    /// Build the network from `config` with parameters from `vb` (a checkpoint, a seeded
    /// initialisation, or [`ParamSource::shapes_only`]).
    pub fn new(config: &AdmConfig, vb: VarBuilder, name: impl Into<String>) -> Result<Self> {
        config.validate()?;
        Self::build(config, vb, name.into())
            .map_err(|e| Error::invalid("ADM UNetModel weights", first_line(&e)))
    }

    /// The state-dict tensors (name, shape) a checkpoint for `config` must hold, in name order;
    /// computed by building the network without values, so it is exactly what loading asks for.
    pub fn parameter_shapes(config: &AdmConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let (vb, src) = ParamSource::shapes_only().var_builder(DType::F32, &Device::Cpu);
        Self::new(config, vb, "shapes")?;
        Ok(src.asked())
    }

    fn build(cfg: &AdmConfig, vb: VarBuilder, name: String) -> candle_core::Result<Self> {
        let err = |e: Error| candle_core::Error::Msg(e.to_string());
        let levels = cfg.level_channels().map_err(err)?;
        let attn = cfg.attention_ds().map_err(err)?;
        let mc = cfg.num_channels;
        let temb = 4 * mc;
        let new_order = cfg.use_new_attention_order;
        let vt = vb.pp("time_embed");
        let time_embed = (linear(&vt, mc, temb, "0")?, linear(&vt, temb, temb, "2")?);
        let label_emb = match cfg.classes() {
            Some(k) => Some(candle_nn::Embedding::new(
                vb.pp("label_emb").get((k, temb), "weight")?,
                temb,
            )),
            None => None,
        };
        let mut ch = levels[0];
        let input_ch = ch;
        let vi = vb.pp("input_blocks");
        let mut input_blocks: Vec<Block> =
            vec![vec![Layer::Conv(conv(&vi.pp("0"), 3, ch, 3, 1, "0")?)]];
        let mut skip_chans = vec![ch];
        let mut ds = 1;
        for (level, &c) in levels.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vbb = vi.pp(input_blocks.len().to_string());
                let mut layers = vec![Layer::Res(ResBlock::new(
                    &vbb.pp("0"),
                    ch,
                    c,
                    cfg,
                    Resample::None,
                )?)];
                ch = c;
                if attn.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(
                        &vbb.pp("1"),
                        ch,
                        cfg.heads(ch, false),
                        new_order,
                    )?));
                }
                input_blocks.push(layers);
                skip_chans.push(ch);
            }
            if level + 1 < levels.len() {
                let vbb = vi.pp(input_blocks.len().to_string());
                let layer = if cfg.resblock_updown {
                    Layer::Res(ResBlock::new(&vbb.pp("0"), ch, ch, cfg, Resample::Down)?)
                } else {
                    Layer::Resample(conv(&vbb.pp("0"), ch, ch, 3, 2, "op")?, Resample::Down)
                };
                input_blocks.push(vec![layer]);
                skip_chans.push(ch);
                ds *= 2;
            }
        }
        let vm = vb.pp("middle_block");
        let middle_block = vec![
            Layer::Res(ResBlock::new(&vm.pp("0"), ch, ch, cfg, Resample::None)?),
            Layer::Attn(AttentionBlock::new(
                &vm.pp("1"),
                ch,
                cfg.heads(ch, false),
                new_order,
            )?),
            Layer::Res(ResBlock::new(&vm.pp("2"), ch, ch, cfg, Resample::None)?),
        ];
        let vo = vb.pp("output_blocks");
        let mut output_blocks: Vec<Block> = vec![];
        for (level, &c) in levels.iter().enumerate().rev() {
            for i in 0..=cfg.num_res_blocks {
                let vbb = vo.pp(output_blocks.len().to_string());
                let skip = skip_chans.pop().expect("one skip per output block");
                let mut layers = vec![Layer::Res(ResBlock::new(
                    &vbb.pp("0"),
                    ch + skip,
                    c,
                    cfg,
                    Resample::None,
                )?)];
                ch = c;
                if attn.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(
                        &vbb.pp(layers.len().to_string()),
                        ch,
                        cfg.heads(ch, true),
                        new_order,
                    )?));
                }
                if level > 0 && i == cfg.num_res_blocks {
                    let vl = vbb.pp(layers.len().to_string());
                    layers.push(if cfg.resblock_updown {
                        Layer::Res(ResBlock::new(&vl, ch, ch, cfg, Resample::Up)?)
                    } else {
                        Layer::Resample(conv(&vl, ch, ch, 3, 1, "conv")?, Resample::Up)
                    });
                    ds /= 2;
                }
                output_blocks.push(layers);
            }
        }
        let out_norm = group_norm(&vb, ch, "out.0")?;
        let out_conv = conv(&vb, input_ch, cfg.out_channels(), 3, 1, "out.2")?;
        Ok(Self {
            config: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            time_embed,
            label_emb,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
            name,
        })
    }

    /// The config file of the checkpoint at `path`: `config.json` in a directory; beside a file,
    /// `<stem>.json` if it exists (`128x128_diffusion.pt` + `128x128_diffusion.json`), else
    /// `config.json`.
    pub fn config_path(path: &Path) -> PathBuf {
        crate::checkpoint::config_beside(path)
    }

    /// The config and weight file of the checkpoint at `path`: a directory holding `config.json`
    /// and `model.pt` (or a single `.pt`/`.pth` file), or a weight file with its config beside it
    /// ([`Self::config_path`]).
    pub fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
        let cfg = Self::config_path(path);
        if !path.is_dir() {
            return Ok((cfg, path.to_path_buf()));
        }
        let model = path.join("model.pt");
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
                format!("ADM checkpoint directory {}", path.display()),
                format!("holds no model.pt and {n} .pt/.pth files (expected exactly one)"),
            )),
        }
    }

    /// The ADM config for the checkpoint at `path`, if there is one: [`Self::config_path`] exists
    /// and is an ADM config by [`is_adm_json`].
    pub fn config_for(path: &Path) -> Option<PathBuf> {
        crate::checkpoint::config_if(path, is_adm_json)
    }

    /// Load a guided-diffusion checkpoint (see [`Self::locate`]): a `torch.save`d state dict
    /// (zip or legacy format; float32 or float16 tensors, converted to `dtype`). Missing,
    /// mis-shaped or unused tensors are errors naming them and the file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg_path, weights) = Self::locate(path)?;
        if !cfg_path.exists() {
            return Err(Error::invalid(
                format!("ADM checkpoint {}", path.display()),
                format!(
                    "no config beside the weights (looked for {})",
                    cfg_path.display()
                ),
            ));
        }
        let config = AdmConfig::from_json_file(&cfg_path)?;
        let name = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        }
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adm".into());
        Self::load_with_config(&config, &weights, name, dtype, device)
    }

    /// Load the state dict `weights` for a known `config` (the papers' checkpoints, whose flags
    /// diffuq's checkpoint catalog holds, need no config file beside them).
    pub fn load_with_config(
        config: &AdmConfig,
        weights: &Path,
        name: String,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let tensors = crate::checkpoint::read_tensors(weights)?;
        let what = format!("weights {}", weights.display());
        let (vb, src) = ParamSource::load(tensors, what.clone()).var_builder(dtype, device);
        // The parameter source's messages already name the file.
        let net =
            Self::build(config, vb, name).map_err(|e| super::params::build_error(&what, &e))?;
        src.finish()?;
        Ok(net)
    }

    pub fn config(&self) -> &AdmConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Everything up to (and including) the SiLU before `out.2`.
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
        let scale = self.config.time_scale();
        let times: Vec<f64> = (0..n)
            .map(|i| scale * if t.len() == 1 { t[0] } else { t[i] })
            .collect();
        let mc = self.config.num_channels;
        let sinusoid = Tensor::from_vec(timestep_embedding(&times, mc), (n, mc), &self.device)?
            .to_dtype(self.dtype)?;
        let (l0, l2) = &self.time_embed;
        let mut emb = l2.forward(&silu(&l0.forward(&sinusoid)?)?)?;
        match (&self.label_emb, labels) {
            (Some(e), Some(y)) => {
                let k = self.config.classes().unwrap_or(0);
                let ys = y.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                if ys.len() != n {
                    candle_core::bail!("{} labels for a batch of {n}", ys.len());
                }
                if let Some(bad) = ys.iter().find(|&&c| c as usize >= k) {
                    candle_core::bail!(
                        "label {bad} is out of range for network `{}` ({k} classes)",
                        self.name
                    );
                }
                emb = (emb + e.forward(y)?)?;
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
        let mut h = x.to_dtype(self.dtype)?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        for block in &self.input_blocks {
            h = run_block(block, h, &emb, mode)?;
            skips.push(h.clone());
        }
        h = run_block(&self.middle_block, h, &emb, mode)?;
        for block in &self.output_blocks {
            let s = skips.pop().expect("one skip per output block");
            h = run_block(block, Tensor::cat(&[&h, &s], 1)?, &emb, mode)?;
        }
        silu(&self.out_norm.forward(&h)?)
    }
}

impl Network for AdmUNet {
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
        let h = self.trunk(x, t, labels, mode)?;
        self.out_conv.forward(&h)?.to_dtype(x.dtype())
    }

    fn num_classes(&self) -> Option<usize> {
        self.config.classes()
    }

    fn last_layer(&self) -> Result<&dyn LastLayerNetwork> {
        Ok(self)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// `out.2` as a linear map (GU's last layer): φ_{n,p} is the 3×3×C patch (zero-padded) around
/// output position p, W = out.2.weight as (O, 9C), O = 6 with a learned variance (GU uses the ε
/// rows 0–2; `LastLayerModel::output_to_eps` takes them).
impl LastLayerNetwork for AdmUNet {
    fn features(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let h = self.trunk(x, t, labels, mode)?;
        self.out_conv.patches(&h)
    }

    fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        self.out_conv.as_linear()
    }

    fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
        super::conv::positions_to_image(out)
    }

    fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        super::conv::image_to_positions(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::SeedStreams;

    #[test]
    fn timestep_embedding_is_cos_then_sin_in_float32() {
        // Written from nn.timestep_embedding's formula: at t = 0 the cos half is 1 and the sin
        // half 0; frequency k is 10000^(−k/half); an odd dim gets one zero column.
        let e = timestep_embedding(&[0.0], 8);
        assert_eq!(e, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let e = timestep_embedding(&[3.0, 999.0], 9);
        assert_eq!(e.len(), 18);
        assert_eq!(e[8], 0.0);
        assert_eq!(e[17], 0.0);
        for (row, t) in [(0usize, 3.0f64), (1, 999.0)] {
            for k in 0..4 {
                let f = 10000f64.powf(-(k as f64) / 4.0);
                let c = f64::from(e[row * 9 + k]);
                let s = f64::from(e[row * 9 + 4 + k]);
                // The phase t·f is rounded to f32 (as the reference): |Δ| ≤ t·2⁻²³ ≈ 1.2e-4.
                assert!((c - (t * f).cos()).abs() < 2e-4, "cos row {row} k {k}");
                assert!((s - (t * f).sin()).abs() < 2e-4, "sin row {row} k {k}");
            }
        }
        // The f32 phase, not the f64 one: at t = 999 and k = 0 the two differ in sin.
        let p32 = f64::from(999f32);
        assert_eq!(e[9 + 4], p32.sin() as f32);
    }

    #[test]
    fn defaults_and_flag_conversions_follow_script_util() {
        // Expected values: script_util.model_and_diffusion_defaults() and create_model() at
        // guided-diffusion 22e0df81 (read from the source).
        let d = AdmConfig::default();
        assert_eq!(
            (d.image_size, d.num_channels, d.num_res_blocks, d.num_heads),
            (64, 128, 2, 4)
        );
        assert_eq!(d.attention_resolutions, "16,8");
        assert!(d.use_scale_shift_norm && !d.resblock_updown && !d.learn_sigma);
        assert_eq!(d.level_channels().unwrap(), vec![128, 256, 384, 512]);
        assert_eq!(d.attention_ds().unwrap(), vec![4, 8]);
        let cfg = |v: serde_json::Value| AdmConfig::from_json(v, "test config");
        let c128 = cfg(serde_json::json!({
            "image_size": 128, "num_channels": 256, "attention_resolutions": "32,16,8",
            "class_cond": true, "learn_sigma": true
        }))
        .unwrap();
        assert_eq!(
            c128.level_channels().unwrap(),
            vec![256, 256, 512, 768, 1024]
        );
        assert_eq!(c128.attention_ds().unwrap(), vec![4, 8, 16]);
        assert_eq!(c128.classes(), Some(1000));
        assert_eq!(c128.out_channels(), 6);
        assert_eq!(c128.prediction(), Prediction::EpsilonLearnedVariance);
        let c512 = cfg(serde_json::json!({"image_size": 512, "num_channels": 256})).unwrap();
        assert_eq!(c512.level_channels().unwrap()[0], 128);
        // A JSON list is read like the flag string.
        let list =
            cfg(serde_json::json!({"attention_resolutions": [32, 16], "channel_mult": [1, 2]}))
                .unwrap();
        assert_eq!(list.attention_resolutions, "32,16");
        assert_eq!(list.level_channels().unwrap(), vec![128, 256]);
        // rescale_timesteps feeds t·1000/T.
        let r =
            cfg(serde_json::json!({"rescale_timesteps": true, "diffusion_steps": 4000})).unwrap();
        assert_eq!(r.time_scale(), 0.25);
        // guided-diffusion's linear schedule is scaled by 1000/T.
        let s = cfg(serde_json::json!({"diffusion_steps": 500}))
            .unwrap()
            .noise_schedule()
            .unwrap();
        assert_eq!(s.len(), 500);
        assert!((s.beta(0) - 2e-4).abs() < 1e-15 && (s.beta(499) - 0.04).abs() < 1e-15);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = |v: serde_json::Value| {
            AdmConfig::from_json(v, "ADM config x/config.json")
                .unwrap_err()
                .to_string()
        };
        let e = err(serde_json::json!({"num_chanels": 64}));
        assert!(
            e.contains("x/config.json") && e.contains("`num_chanels`"),
            "{e}"
        );
        let e = err(serde_json::json!({"num_channels": 48, "channel_mult": "1,2"}));
        assert!(
            e.contains("`channel_mult`") && e.contains("48 channels"),
            "{e}"
        );
        let e = err(serde_json::json!({"image_size": 32}));
        assert!(e.contains("`image_size`") && e.contains("32"), "{e}");
        let e = err(serde_json::json!({"num_head_channels": 96}));
        assert!(e.contains("`num_head_channels`"), "{e}");
        let e = err(serde_json::json!({"num_heads": 3}));
        assert!(e.contains("`num_heads`"), "{e}");
        let e = err(serde_json::json!({"num_heads_upsample": 5}));
        assert!(e.contains("`num_heads_upsample`"), "{e}");
        let e = err(serde_json::json!({"attention_resolutions": "16,x"}));
        assert!(
            e.contains("`attention_resolutions`") && e.contains("\"x\""),
            "{e}"
        );
        let e = err(serde_json::json!({"noise_schedule": "sqrt"}));
        assert!(e.contains("`noise_schedule`"), "{e}");
        let e = err(serde_json::json!({"predict_xstart": true, "learn_sigma": true}));
        assert!(e.contains("`predict_xstart`"), "{e}");
        let e = err(serde_json::json!({"num_classes": 10}));
        assert!(
            e.contains("`num_classes`") && e.contains("class_cond"),
            "{e}"
        );
        let e = err(serde_json::json!({"architecture": "dit"}));
        assert!(e.contains("`architecture`"), "{e}");
        assert!(is_adm_json(&serde_json::json!({"num_res_blocks": 2})));
        assert!(is_adm_json(&serde_json::json!({"architecture": "adm"})));
        assert!(!is_adm_json(
            &serde_json::json!({"_class_name": "UNet2DModel", "attention_resolutions": [16]})
        ));
    }

    /// A two-level 32-channel ADM in f64 with seeded parameters.
    fn tiny(extra: serde_json::Value) -> AdmUNet {
        let mut v = serde_json::json!({
            "image_size": 8, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
            "attention_resolutions": "8,4", "num_head_channels": 16, "class_cond": true,
            "num_classes": 3, "learn_sigma": true, "resblock_updown": true,
            "use_new_attention_order": true, "dropout": 0.1
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let cfg = AdmConfig::from_json(v, "tiny").unwrap();
        let src = ParamSource::init(
            SeedStreams::new(3).purpose("adm-test"),
            candle_nn::VarMap::new(),
        );
        let (vb, _) = src.var_builder(DType::F64, &Device::Cpu);
        AdmUNet::new(&cfg, vb, "tiny").unwrap()
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
    fn the_output_is_differentiable_in_x_through_attention_scores() {
        // AU guidance back-propagates through ε: the autograd directional derivative must equal
        // a central finite difference (f64), in both attention orders and with conv resampling.
        for extra in [
            serde_json::json!({}),
            serde_json::json!({"use_new_attention_order": false, "resblock_updown": false,
                               "num_head_channels": -1, "num_heads": 2}),
        ] {
            let net = tiny(extra);
            let x = candle_core::Var::from_tensor(&input(2, 1)).unwrap();
            let y = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
            let g = input(2, 2).repeat((1, 2, 1, 1)).unwrap(); // 6 output channels
            let d = input(2, 3);
            let f = |x: &Tensor| -> f64 {
                let o = net
                    .forward(x, &[10.0, 500.0], Some(&y), &mut Mode::Eval)
                    .unwrap();
                (o * &g)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let o = net
                .forward(x.as_tensor(), &[10.0, 500.0], Some(&y), &mut Mode::Eval)
                .unwrap();
            let grads = (o * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let auto = (grads.get(&x).unwrap() * &d)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let h = 1e-5;
            let xp = (x.as_tensor() + (&d * h).unwrap()).unwrap();
            let xm = (x.as_tensor() - (&d * h).unwrap()).unwrap();
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            assert!(
                (auto - fd).abs() < 1e-6 * fd.abs().max(1.0),
                "autograd {auto} vs finite difference {fd}"
            );
        }
    }

    /// Counts dropout layers and keeps every unit.
    struct Count(Vec<Vec<usize>>);
    impl super::super::MaskSource for Count {
        fn keep_mask(&mut self, like: &Tensor, _p: f64) -> candle_core::Result<Tensor> {
            self.0.push(like.dims().to_vec());
            like.ones_like()
        }
    }

    #[test]
    fn dropout_sits_in_every_resblock_and_labels_are_checked() {
        let net = tiny(serde_json::json!({}));
        let x = input(2, 1);
        let y = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        let eval = net.forward(&x, &[5.0], Some(&y), &mut Mode::Eval).unwrap();
        let mut c = Count(vec![]);
        let kept = net
            .forward(&x, &[5.0], Some(&y), &mut Mode::Dropout(&mut c))
            .unwrap();
        // input 1 + down 1 + 1, middle 2, output 2 + up 1 + 2: ten ResBlocks, ten dropouts (each
        // on the (N, C, H, W) activation before out_layers.3).
        assert_eq!(c.0.len(), 10);
        assert_eq!(c.0[0], vec![2, 32, 8, 8]);
        assert_eq!(c.0[2], vec![2, 64, 4, 4]);
        // All kept: every unit scaled by 1/(1 − p) — a different output.
        let diff = (kept - &eval)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff > 1e-6);
        let e = net
            .forward(
                &x,
                &[5.0],
                Some(&Tensor::new(&[1u32, 3], &Device::Cpu).unwrap()),
                &mut Mode::Eval,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 3") && e.contains("3 classes"), "{e}");
        let e = net
            .forward(&x, &[5.0], None, &mut Mode::Eval)
            .unwrap_err()
            .to_string();
        assert!(e.contains("labels are required"), "{e}");
    }
}
