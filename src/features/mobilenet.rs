//! MobileNetV2 (Sandler et al. 2018) as torchvision builds it: the feature space of GU's semantic
//! likelihood at mini scale.
//!
//! GU (Jazbec et al. 2025, Eq. 7) measures generative uncertainty as the entropy of a sample's
//! embeddings under posterior draws, in the feature space of a pretrained classifier. If that
//! classifier were the FID Inception-v3, filtering samples by their uncertainty would be tuned to
//! the very features FID scores them with; so diffuq's semantic features come from a different
//! network: torchvision's MobileNetV2 with its ImageNet-1k weights (IMAGENET1K_V1,
//! `mobilenet_v2-b0353104.pth`, [`crate::fetch::MOBILENET`] fetches it), and its 1280-d pooled
//! features — the output of `features`, globally average-pooled, which is what torchvision's
//! classifier reads (dropout + one linear layer; not used here).
//!
//! The network (torchvision's `mobilenetv2.py`): a 3×3/2 conv to 32 channels; 17 inverted residual
//! blocks in 7 stages (expansion t, output channels c, repeats n, first stride s) = (1, 16, 1, 1),
//! (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1); a
//! 1×1 conv to 1280. A block is 1×1 expansion to t·c_in channels (absent when t = 1) → 3×3
//! depthwise conv (stride s) → 1×1 linear projection, with the input added back when the stride
//! is 1 and the channel count is unchanged. Every conv is conv (no bias) → batch norm (ε = 1e-5,
//! running statistics) → ReLU6, except the projection (no activation: the "linear bottleneck");
//! batch norm is folded into the convs at load, as in [`super::inception`]. Depthwise convs run
//! on [`super::depthwise`]. `width_mult` scales the channel counts with torchvision's
//! `_make_divisible` rounding ([`make_divisible`]); the last conv keeps 1280 channels for
//! `width_mult ≤ 1`. The golden test runs a width-0.35 random network for that reason.
//!
//! Cost, measured on the 2-core dev machine while a training job ran (so in CPU time; dev build,
//! one thread, batch 50 at 224²): 82 CPU-ms per image for the 1280-d features, a third of it in
//! the depthwise convs; peak resident memory of the process 0.85 GB at batch 50. The FID
//! Inception-v3 needs ~20× the multiply-adds (5.7 G vs 0.3 G per image).
//!
//! State-dict names (torchvision's, also those of the 2018 weight file): `features.0.{0,1}` (stem
//! conv, BN); block i = 1…17 under `features.{i}.conv.`: `0.0`/`0.1` (expansion conv/BN), `1.0`/
//! `1.1` (depthwise), `2` (projection conv) and `3` (its BN), or for t = 1 `0.0`/`0.1`
//! (depthwise), `1`, `2`; `features.18.{0,1}` (last conv). `classifier.*` and
//! `*.num_batches_tracked` are not read.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::depthwise::depthwise_conv2d;
use super::inception::resize_bilinear;
use crate::error::{Error, Result, TensorContext};
use crate::model::conv::conv2d;

pub use crate::fetch::MOBILENET_PTH_SHA256;
/// Dimension of the pooled features (for `width_mult ≤ 1`).
pub const FEATURE_DIM: usize = 1280;
/// The input size the ImageNet weights were trained and evaluated at.
pub const INPUT_SIZE: usize = 224;
/// Batch-norm epsilon (torch's `BatchNorm2d` default, which torchvision keeps).
pub const BN_EPS: f64 = 1e-5;
/// ImageNet channel means of torchvision's `ImageClassification` transform.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations of torchvision's `ImageClassification` transform.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// (expansion t, output channels c, repeats n, first stride s) of torchvision's seven stages.
const STAGES: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// torchvision's `_make_divisible(v, 8)` (from TF's slim MobileNet): the multiple of 8 nearest to
/// `v` (halves rounding up), at least 8, and bumped by 8 if that rounding lost more than 10 %.
pub fn make_divisible(v: f64) -> usize {
    const D: usize = 8;
    let mut n = (((v + D as f64 / 2.0).floor() as usize) / D * D).max(D);
    if (n as f64) < 0.9 * v {
        n += D;
    }
    n
}

// ---------------------------------------------------------------------------------------------
// The graph.

/// One conv → BN layer: its names and geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConvSpec {
    /// The conv weight's name.
    weight: String,
    /// The batch norm's module name (`{bn}.weight`, `.bias`, `.running_mean`, `.running_var`).
    bn: String,
    c_out: usize,
    c_in: usize,
    k: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
}

impl ConvSpec {
    fn weight_shape(&self) -> Vec<usize> {
        let per_group = if self.depthwise { 1 } else { self.c_in };
        vec![self.c_out, per_group, self.k, self.k]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockSpec {
    expand: Option<ConvSpec>,
    depthwise: ConvSpec,
    project: ConvSpec,
    residual: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Graph {
    stem: ConvSpec,
    blocks: Vec<BlockSpec>,
    head: ConvSpec,
}

impl Graph {
    fn convs(&self) -> impl Iterator<Item = &ConvSpec> {
        std::iter::once(&self.stem)
            .chain(
                self.blocks
                    .iter()
                    .flat_map(|b| b.expand.iter().chain([&b.depthwise, &b.project])),
            )
            .chain(std::iter::once(&self.head))
    }
}

fn conv(
    weight: String,
    bn: String,
    (c_in, c_out): (usize, usize),
    k: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
) -> ConvSpec {
    ConvSpec {
        weight,
        bn,
        c_out,
        c_in,
        k,
        stride,
        depthwise,
        relu6,
    }
}

/// torchvision's `MobileNetV2(width_mult)` features.
fn graph(width_mult: f64) -> Graph {
    let mut c = make_divisible(32.0 * width_mult);
    let last = make_divisible(1280.0 * width_mult.max(1.0));
    let stem = conv(
        "features.0.0.weight".into(),
        "features.0.1".into(),
        (3, c),
        3,
        2,
        false,
        true,
    );
    let mut blocks = Vec::new();
    for &(t, ch, n, s) in &STAGES {
        let out = make_divisible(ch as f64 * width_mult);
        for i in 0..n {
            let p = format!("features.{}.conv", blocks.len() + 1);
            let stride = if i == 0 { s } else { 1 };
            let hidden = c * t;
            let (expand, j) = if t == 1 {
                (None, 0)
            } else {
                let e = conv(
                    format!("{p}.0.0.weight"),
                    format!("{p}.0.1"),
                    (c, hidden),
                    1,
                    1,
                    false,
                    true,
                );
                (Some(e), 1)
            };
            let depthwise = conv(
                format!("{p}.{j}.0.weight"),
                format!("{p}.{j}.1"),
                (hidden, hidden),
                3,
                stride,
                true,
                true,
            );
            let project = conv(
                format!("{p}.{}.weight", j + 1),
                format!("{p}.{}", j + 2),
                (hidden, out),
                1,
                1,
                false,
                false,
            );
            blocks.push(BlockSpec {
                expand,
                depthwise,
                project,
                residual: stride == 1 && c == out,
            });
            c = out;
        }
    }
    let i = blocks.len() + 1;
    let head = conv(
        format!("features.{i}.0.weight"),
        format!("features.{i}.1"),
        (c, last),
        1,
        1,
        false,
        true,
    );
    Graph { stem, blocks, head }
}

fn check_width(width_mult: f64) -> Result<()> {
    if width_mult.is_finite() && width_mult > 0.0 && width_mult <= 16.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "MobileNetV2 width_mult",
            format!(
                "{width_mult}; expected a finite value in (0, 16] (1.0 for the ImageNet weights)"
            ),
        ))
    }
}

/// The tensors a MobileNetV2 state dict of `width_mult` must hold (torchvision's names, no prefix)
/// with their shapes, in network order: per conv its weight, then its batch norm's weight, bias,
/// running mean and running variance. Other entries (`classifier.*`, `*.num_batches_tracked`) are
/// not read.
pub fn expected_tensors(width_mult: f64) -> Result<Vec<(String, Vec<usize>)>> {
    check_width(width_mult)?;
    let g = graph(width_mult);
    let mut out = Vec::new();
    for c in g.convs() {
        out.push((c.weight.clone(), c.weight_shape()));
        for s in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{}.{s}", c.bn), vec![c.c_out]));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The model.

/// A conv with batch norm folded in: conv(x, W·s) + (β − μ·s), s = γ/√(σ² + ε), then ReLU6 or not.
#[derive(Debug, Clone)]
struct FoldedConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: usize,
    depthwise: bool,
    relu6: bool,
}

impl FoldedConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.depthwise {
            return depthwise_conv2d(
                x,
                &self.weight,
                &self.bias,
                self.stride,
                self.pad,
                self.relu6,
            );
        }
        let y = conv2d(
            x,
            &self.weight,
            Some(&self.bias),
            (self.stride, self.stride),
            (self.pad, self.pad),
        )?;
        if self.relu6 {
            y.clamp(0f32, 6f32)
        } else {
            Ok(y)
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    expand: Option<FoldedConv>,
    depthwise: FoldedConv,
    project: FoldedConv,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let y = self.project.forward(&self.depthwise.forward(&h)?)?;
        if self.residual {
            y + x
        } else {
            Ok(y)
        }
    }
}

/// torchvision's MobileNetV2 up to its pooled features.
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    stem: FoldedConv,
    blocks: Vec<Block>,
    head: FoldedConv,
    width_mult: f64,
    feature_dim: usize,
    id: String,
    device: Device,
}

impl MobileNetV2 {
    /// Load torchvision's ImageNet weights (`width_mult` 1.0) from a `.pth` (legacy or zip
    /// format) or a `.safetensors` file with torchvision's names. A missing file is an error
    /// naming `diffuq fetch mobilenet` and `features.mobilenet_path`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_width(path, 1.0, device)
    }

    /// [`MobileNetV2::load`] for a network built with torchvision's `width_mult`.
    pub fn load_width(path: &Path, width_mult: f64, device: &Device) -> Result<Self> {
        check_width(width_mult)?;
        if !path.is_file() {
            return Err(Error::invalid(
                format!("MobileNetV2 weights {}", path.display()),
                format!(
                    "not found; run `{}` or set `{}` to torchvision's mobilenet_v2-b0353104.pth",
                    crate::fetch::MOBILENET_FETCH_COMMAND,
                    crate::fetch::MOBILENET_PATH_KEY
                ),
            ));
        }
        let tensors: HashMap<String, Tensor> =
            super::inception::read_tensors(path)?.into_iter().collect();
        let mut net =
            Self::from_tensors(&tensors, width_mult, &path.display().to_string(), device)?;
        // The file's digest identifies the weights in feature-cache keys; the stamp `diffuq fetch
        // mobilenet` writes spares hashing the pinned file again.
        let sha = if crate::fetch::stamp_matches(path, MOBILENET_PTH_SHA256) {
            MOBILENET_PTH_SHA256.to_string()
        } else {
            crate::fetch::sha256_file(path)?
        };
        net.id = format!("mobilenet-v2-w{width_mult}:{sha}");
        Ok(net)
    }

    /// [`MobileNetV2::load`] after checking the file's SHA-256 (e.g. [`MOBILENET_PTH_SHA256`]).
    pub fn load_verified(path: &Path, sha256: &str, device: &Device) -> Result<Self> {
        if path.is_file() && !crate::fetch::stamp_matches(path, sha256) {
            let got = crate::fetch::sha256_file(path)?;
            if !got.eq_ignore_ascii_case(sha256.trim()) {
                return Err(crate::fetch::sha_mismatch(
                    &format!("MobileNetV2 weights {}", path.display()),
                    &got,
                    sha256,
                    "delete it and run `diffuq fetch mobilenet`, or set `features.mobilenet_path`",
                ));
            }
        }
        Self::load(path, device)
    }

    /// Build from named tensors (any float dtype; converted to f32) of a network with
    /// `width_mult`. A common prefix on every name (a wrapper's `module.`) is allowed; `source`
    /// names the tensors' origin in errors. A missing tensor or a wrong shape is a one-line error
    /// naming the tensor and the expected shape.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        width_mult: f64,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        check_width(width_mult)?;
        let what = || format!("MobileNetV2 weights {source}");
        let g = graph(width_mult);
        let prefix =
            detect_prefix(tensors, &g.stem.weight).ok_or_else(|| {
                let mut some: Vec<&String> = tensors.keys().collect();
                some.sort();
                Error::invalid(
                    what(),
                    format!(
                    "tensor `{}` is missing (expected shape {:?}): not a torchvision MobileNetV2 \
                     state dict; found {} tensors{}",
                    g.stem.weight,
                    g.stem.weight_shape(),
                    tensors.len(),
                    some.first().map(|k| format!(", e.g. `{k}`")).unwrap_or_default()
                ),
                )
            })?;
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f64>> {
            let full = format!("{prefix}{name}");
            let t = tensors.get(&full).ok_or_else(|| {
                Error::invalid(
                    what(),
                    format!(
                        "tensor `{full}` is missing (expected shape {shape:?}; width_mult \
                         {width_mult})"
                    ),
                )
            })?;
            if t.dims() != shape {
                return Err(Error::invalid(
                    what(),
                    format!(
                        "tensor `{full}` has shape {:?}, expected {shape:?} (width_mult \
                         {width_mult})",
                        t.dims()
                    ),
                ));
            }
            t.flatten_all()
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.to_vec1::<f64>())
                .ctx(&format!("reading tensor `{full}`"))
        };
        let fold = |c: &ConvSpec| -> Result<FoldedConv> {
            let w = get(&c.weight, &c.weight_shape())?;
            let v = [c.c_out];
            let gamma = get(&format!("{}.weight", c.bn), &v)?;
            let beta = get(&format!("{}.bias", c.bn), &v)?;
            let mean = get(&format!("{}.running_mean", c.bn), &v)?;
            let var = get(&format!("{}.running_var", c.bn), &v)?;
            if let Some(i) = var.iter().position(|&s| !(s >= 0.0 && s.is_finite())) {
                return Err(Error::invalid(
                    what(),
                    format!(
                        "tensor `{prefix}{}.running_var` holds {} at {i}: a variance must be \
                         finite and ≥ 0",
                        c.bn, var[i]
                    ),
                ));
            }
            let per_out = w.len() / c.c_out;
            let mut wf = Vec::with_capacity(w.len());
            let mut bf = Vec::with_capacity(c.c_out);
            for o in 0..c.c_out {
                let s = gamma[o] / (var[o] + BN_EPS).sqrt();
                wf.extend(
                    w[o * per_out..(o + 1) * per_out]
                        .iter()
                        .map(|&x| (x * s) as f32),
                );
                bf.push((beta[o] - mean[o] * s) as f32);
            }
            let ctx = format!("folding batch norm into `{prefix}{}`", c.weight);
            Ok(FoldedConv {
                weight: Tensor::from_vec(wf, c.weight_shape(), device).ctx(&ctx)?,
                bias: Tensor::from_vec(bf, c.c_out, device).ctx(&ctx)?,
                stride: c.stride,
                pad: (c.k - 1) / 2,
                depthwise: c.depthwise,
                relu6: c.relu6,
            })
        };
        let stem = fold(&g.stem)?;
        let mut blocks = Vec::with_capacity(g.blocks.len());
        for b in &g.blocks {
            blocks.push(Block {
                expand: b.expand.as_ref().map(fold).transpose()?,
                depthwise: fold(&b.depthwise)?,
                project: fold(&b.project)?,
                residual: b.residual,
            });
        }
        let head = fold(&g.head)?;
        Ok(Self {
            stem,
            blocks,
            feature_dim: g.head.c_out,
            head,
            width_mult,
            id: format!("mobilenet-v2-w{width_mult}:{source}"),
            device: device.clone(),
        })
    }

    /// The width multiplier the network was built with.
    pub fn width_mult(&self) -> f64 {
        self.width_mult
    }

    /// Dimension of the pooled features ([`FEATURE_DIM`] for `width_mult ≤ 1`).
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// Identity of the weights: `mobilenet-v2-w<width>:<sha256 of the file>` (or the source name
    /// for tensors given directly); part of [`MobileNetFeatures`]' feature-cache key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pooled features (N, 1280) of network inputs (N, 3, H, W), already normalised (see
    /// [`Preprocess`]); any H, W ≥ 1 (the ImageNet weights expect 224).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] == 0 || dims[3] == 0 {
            return Err(Error::invalid(
                "MobileNetV2 input",
                format!("shape {dims:?}, expected (N, 3, H, W); preprocess with `Preprocess`"),
            ));
        }
        let x = x
            .to_device(&self.device)
            .and_then(|x| x.to_dtype(DType::F32))
            .ctx("MobileNetV2 input")?;
        let y = self.forward(&x).ctx("MobileNetV2 forward")?;
        // torchvision's adaptive_avg_pool2d(1) + flatten.
        y.mean((2, 3)).ctx("MobileNetV2 pooling")
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = self.stem.forward(x)?;
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        self.head.forward(&y)
    }

    /// Preprocess images (see [`Preprocess::apply`]) and return their features (N, 1280), in
    /// batches of `batch_size` to bound memory.
    pub fn extract(&self, images: &Tensor, pre: &Preprocess, batch_size: usize) -> Result<Tensor> {
        let n = images.dim(0).ctx("MobileNetV2 images")?;
        let batch_size = batch_size.max(1);
        let mut out = Vec::with_capacity(n.div_ceil(batch_size));
        for start in (0..n).step_by(batch_size) {
            let len = batch_size.min(n - start);
            let chunk = images.narrow(0, start, len).ctx("MobileNetV2 images")?;
            out.push(self.features(&pre.apply(&chunk, &self.device)?)?);
        }
        if out.is_empty() {
            return Tensor::zeros((0, self.feature_dim), DType::F32, &self.device)
                .ctx("MobileNetV2 features");
        }
        Tensor::cat(&out, 0).ctx("MobileNetV2 features")
    }
}

/// The prefix every name carries, found from the stem conv's name.
fn detect_prefix(tensors: &HashMap<String, Tensor>, anchor: &str) -> Option<String> {
    let mut prefixes: Vec<&str> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(anchor))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .collect();
    prefixes.sort_by_key(|p| p.len());
    prefixes.first().map(|p| p.to_string())
}

// ---------------------------------------------------------------------------------------------
// Input preprocessing.

/// What float images hold (uint8 images are always x / 255).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PixelRange {
    /// [0, 1].
    #[default]
    Unit,
    /// [−1, 1]: diffusion samples (DDPM's data scaling), mapped by (x + 1)/2.
    Symmetric,
}

/// How images reach the network's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resize {
    /// PyTorch's `F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)` on
    /// [0, 1] floats ([`resize_bilinear`]).
    #[default]
    TorchBilinear,
    /// No resize: the network sees the images at their own size.
    None,
}

/// Images → MobileNetV2 input: to [0, 1], grayscale to 3 channels, resize, ImageNet
/// normalisation.
///
/// torchvision's IMAGENET1K_V1 transform resizes the short side to 256 (antialiased), centre-crops
/// 224 and normalises with the ImageNet mean and std. diffuq's images are 28×28 (Fashion-MNIST) or
/// 32×32, with the object filling the frame, so they are resized straight to 224×224 instead: the
/// crop would cut away an eighth of every border. When upsampling, torchvision's antialiased resize
/// and plain bilinear interpolation coincide (golden/mobilenet_reference.py checks: ≤ 1.2e-7), so
/// this is the bilinear resize of [`super::inception::resize_bilinear`], on floats. Grayscale
/// images are repeated to 3 identical channels before normalisation (each channel then gets its
/// own mean and std), as torchvision's `Grayscale(num_output_channels=3)` does and as diffuq's FID
/// path feeds Fashion-MNIST to the Inception; the ImageNet weights were trained on RGB only, and
/// this is the usual way to reuse them for grayscale data. Float values outside the range are
/// clamped to it, as diffusers' pipelines clamp samples before turning them into images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Preprocess {
    pub resize: Resize,
    pub range: PixelRange,
}

impl Preprocess {
    /// Images: uint8, or floats in [0, 1].
    pub const IMAGES: Preprocess = Preprocess {
        resize: Resize::TorchBilinear,
        range: PixelRange::Unit,
    };
    /// Diffusion samples: floats in [−1, 1] (or uint8 images).
    pub const SAMPLES: Preprocess = Preprocess {
        resize: Resize::TorchBilinear,
        range: PixelRange::Symmetric,
    };

    /// Images (N, C, H, W), C = 1 or 3, uint8 or float → network input (N, 3, 224, 224) f32 on
    /// `device`. Non-finite floats are an error.
    pub fn apply(&self, images: &Tensor, device: &Device) -> Result<Tensor> {
        let what = "MobileNetV2 images";
        let (n, c, h, w) = images
            .dims4()
            .ctx("MobileNetV2 images (expected N, C, H, W)")?;
        if !(c == 1 || c == 3) || h == 0 || w == 0 {
            return Err(Error::invalid(
                what,
                format!(
                    "shape {:?}, expected (N, 1 or 3, H, W) with H, W ≥ 1",
                    images.dims()
                ),
            ));
        }
        let flat = images
            .flatten_all()
            .and_then(|t| t.to_device(&Device::Cpu))
            .ctx(what)?;
        let v: Vec<f32> = if images.dtype() == DType::U8 {
            let raw = flat.to_vec1::<u8>().ctx(what)?;
            raw.into_iter().map(|x| x as f32 / 255.0).collect()
        } else {
            let v = flat
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .ctx(what)?;
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::invalid(what, format!("non-finite value {bad}")));
            }
            match self.range {
                PixelRange::Unit => v.into_iter().map(|x| x.clamp(0.0, 1.0)).collect(),
                PixelRange::Symmetric => v
                    .into_iter()
                    .map(|x| ((x + 1.0) / 2.0).clamp(0.0, 1.0))
                    .collect(),
            }
        };
        let (oh, ow) = match self.resize {
            Resize::TorchBilinear => (INPUT_SIZE, INPUT_SIZE),
            Resize::None => (h, w),
        };
        let mut out = Vec::with_capacity(n * 3 * oh * ow);
        for image in v.chunks_exact(c * h * w) {
            let planes: Vec<Vec<f32>> = image
                .chunks_exact(h * w)
                .map(|p| {
                    if (oh, ow) == (h, w) {
                        p.to_vec()
                    } else {
                        resize_bilinear(p, (h, w), (oh, ow))
                    }
                })
                .collect();
            for ch in 0..3 {
                let plane = &planes[if c == 1 { 0 } else { ch }];
                let (m, s) = (IMAGENET_MEAN[ch], IMAGENET_STD[ch]);
                out.extend(plane.iter().map(|&x| (x - m) / s));
            }
        }
        Tensor::from_vec(out, (n, 3, oh, ow), device).ctx("MobileNetV2 input")
    }
}

// ---------------------------------------------------------------------------------------------
// As a feature extractor.

/// φ for GU's semantic likelihood (Eq. 7): images or samples → MobileNetV2 pooled features
/// (N, 1280), preprocessed by `pre`, in batches of `batch_size`.
#[derive(Debug, Clone)]
pub struct MobileNetFeatures {
    net: MobileNetV2,
    pre: Preprocess,
    batch_size: usize,
    id: String,
}

impl MobileNetFeatures {
    pub fn new(net: MobileNetV2, pre: Preprocess, batch_size: usize) -> Self {
        let id = format!("{}|{pre:?}", net.id());
        Self {
            net,
            pre,
            batch_size: batch_size.max(1),
            id,
        }
    }

    pub fn net(&self) -> &MobileNetV2 {
        &self.net
    }

    /// The feature-cache key of `images` ([`super::cache::FeatureCache::key`]).
    pub fn cache_key(&self, images: &Tensor) -> Result<String> {
        super::cache::FeatureCache::key(self.net.id(), &format!("{:?}", self.pre), images)
    }

    /// Features of `images`, from `cache` if it holds them, else computed and stored there.
    pub fn cached(&self, images: &Tensor, cache: &super::cache::FeatureCache) -> Result<Tensor> {
        let n = images.dim(0).ctx("MobileNetV2 images")?;
        cache.get_or_compute(&self.cache_key(images)?, n, || {
            self.net.extract(images, &self.pre, self.batch_size)
        })
    }
}

impl super::FeatureExtractor for MobileNetFeatures {
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.net
            .extract(x, &self.pre, self.batch_size)
            .map_err(candle_core::Error::msg)
    }
    fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected numbers: torchvision 0.29.2's `_make_divisible(v, 8)` at the values MobileNetV2
    // asks for (32·0.35 = 11.2 → 8 is more than 10 % low → 16; 16·0.35 = 5.6 → 8; 24·0.35 = 8.4
    // → 8; 320·0.35 = 112; 160·0.5 = 80; 96·0.75 = 72), and the channel counts of its
    // `mobilenet_v2()` (Sandler et al. 2018, Table 2).
    #[test]
    fn channel_counts_follow_torchvision() {
        for (v, want) in [
            (11.2, 16),
            (5.6, 8),
            (8.4, 8),
            (112.0, 112),
            (80.0, 80),
            (72.0, 72),
            (1280.0, 1280),
        ] {
            assert_eq!(make_divisible(v), want, "{v}");
        }
        let g = graph(1.0);
        assert_eq!(g.blocks.len(), 17);
        assert_eq!(g.convs().count(), 52);
        let outs: Vec<usize> = g.blocks.iter().map(|b| b.project.c_out).collect();
        assert_eq!(
            outs,
            [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
        );
        let residual = g.blocks.iter().filter(|b| b.residual).count();
        assert_eq!(residual, 10);
        assert_eq!(g.head.c_out, FEATURE_DIM);
        assert_eq!(g.blocks[16].depthwise.weight, "features.17.conv.1.0.weight");
        assert_eq!(g.blocks[0].project.bn, "features.1.conv.2");
        assert_eq!(graph(0.35).stem.c_out, 16);
        assert_eq!(graph(0.35).head.c_out, 1280);
        assert_eq!(graph(1.4).head.c_out, 1792);
    }

    // Expected numbers: torchvision's Normalize definition (x − mean)/std with its ImageNet
    // constants, and the identity resize at equal sizes: a uint8 gray pixel of 255 → 1.0 →
    // (1 − 0.485)/0.229 etc.; a sample value −1 → 0; −1.5 clamps to 0, 2 to 1.
    #[test]
    fn preprocessing_maps_ranges_and_channels() {
        let dev = Device::Cpu;
        let pre = Preprocess {
            resize: Resize::None,
            range: PixelRange::Symmetric,
        };
        let u8s = Tensor::from_vec(vec![255u8, 0], (1, 1, 1, 2), &dev).unwrap();
        let y = pre.apply(&u8s, &dev).unwrap();
        assert_eq!(y.dims(), &[1, 3, 1, 2]);
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for ch in 0..3 {
            let (m, s) = (IMAGENET_MEAN[ch], IMAGENET_STD[ch]);
            assert_eq!(y[2 * ch], (1.0 - m) / s);
            assert_eq!(y[2 * ch + 1], (0.0 - m) / s);
        }
        let f = Tensor::from_vec(vec![-1f32, -1.5, 2.0], (1, 1, 1, 3), &dev).unwrap();
        let y = pre.apply(&f, &dev).unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let m = IMAGENET_MEAN[0] / IMAGENET_STD[0];
        assert_eq!(
            &y[..3],
            &[-m, -m, (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]]
        );
        let bad = Tensor::from_vec(vec![f32::NAN], (1, 1, 1, 1), &dev).unwrap();
        assert!(pre.apply(&bad, &dev).is_err());
        let two = Tensor::zeros((1, 2, 4, 4), DType::U8, &dev).unwrap();
        let e = Preprocess::IMAGES
            .apply(&two, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected (N, 1 or 3, H, W)"), "{e}");
        let y = Preprocess::IMAGES
            .apply(&Tensor::zeros((2, 3, 5, 7), DType::U8, &dev).unwrap(), &dev)
            .unwrap();
        assert_eq!(y.dims(), &[2, 3, INPUT_SIZE, INPUT_SIZE]);
    }

    #[test]
    fn bad_width_is_an_error() {
        // Expected: torchvision builds no network for a non-positive or non-finite width.
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(expected_tensors(w).is_err(), "{w}");
        }
    }
}
