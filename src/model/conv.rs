//! 2-D convolution for the CPU as one fused custom op with its own backward.
//!
//! candle 0.11's CPU conv2d backward (a conv for the weight gradient, a transposed conv for the
//! input gradient) made a training step of a 0.26M-parameter UNet take ~10 s here, 30× torch. A
//! first rewrite as im2col (a custom op) + candle's batched matmul + a broadcast bias still spent
//! most of its backward outside gemm: the weight gradient came out per image and was reduced by
//! candle's strided sum, as was the bias gradient. Here forward and backward are each one op
//! (kernels in `diffuq-linalg`, opt-level 3): per image, im2col into a per-thread buffer and one
//! gemm; the backward accumulates dW inside the gemm, sums db in the same pass and writes dx by
//! col2im, in a fixed image grouping so the bits do not depend on the thread count. No
//! batch-sized column buffer is ever allocated. Where the CPU has AVX-512F, f32 convolutions run
//! on hand-blocked kernels instead (`diffuq_linalg::conv`: packed panels straight from the padded
//! image, the stride-1 input gradient as a forward convolution with the flipped kernel) — at or
//! past torch's speed on the networks' shapes; `--conv-kernels gemm` selects the first kernels (the
//! arithmetic that trained the committed mini models). On other devices, and for other dtypes,
//! candle's own conv2d is used.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use diffuq_linalg::conv::{
    conv2d_backward_f32_uninit, conv2d_backward_f64_uninit, conv2d_forward_f32_uninit,
    conv2d_forward_f64_uninit, ConvGeom, GradsUninit,
};

/// The forward op over (x, weight, bias); stride and padding per axis.
#[derive(Clone, Copy, Debug)]
struct ConvOp {
    stride: (usize, usize),
    pad: (usize, usize),
}

/// The backward op over (x, weight, dy): one flat output [dx | dW | db].
#[derive(Clone, Copy, Debug)]
struct ConvGradOp {
    stride: (usize, usize),
    pad: (usize, usize),
}

fn contiguous_slice<'a, T>(s: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    super::contiguous_slice(s, l, "conv", what)
}

fn geometry(
    x: &Shape,
    w: &Shape,
    stride: (usize, usize),
    pad: (usize, usize),
) -> candle_core::Result<ConvGeom> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    if ci != c {
        candle_core::bail!("conv: input has {c} channels, weight {w:?} expects {ci}");
    }
    let g = ConvGeom {
        n,
        c,
        h,
        w: wd,
        o,
        kh,
        kw,
        sh: stride.0,
        sw: stride.1,
        ph: pad.0,
        pw: pad.1,
    };
    if !g.is_valid() {
        candle_core::bail!(
            "conv: kernel {kh}×{kw} (stride {stride:?}, padding {pad:?}) does not fit a {h}×{wd} input"
        );
    }
    Ok(g)
}

type Fwd<T> = fn(&ConvGeom, &[T], &[T], Option<&[T]>, &mut [std::mem::MaybeUninit<T>]);
type Bwd<T> = fn(&ConvGeom, &[T], &[T], &[T], GradsUninit<'_, T>);

fn forward_typed<T: Copy + Default>(
    kernel: Fwd<T>,
    g: &ConvGeom,
    (x, xl): (&[T], &Layout),
    (w, wl): (&[T], &Layout),
    (b, bl): (&[T], &Layout),
) -> candle_core::Result<Vec<T>> {
    let x = contiguous_slice(x, xl, "input")?;
    let w = contiguous_slice(w, wl, "weight")?;
    let b = contiguous_slice(b, bl, "bias")?;
    if b.len() != g.o {
        candle_core::bail!("conv: bias has {} entries, expected {}", b.len(), g.o);
    }
    // SAFETY: the `*_uninit` kernels write every output value.
    let y = unsafe {
        diffuq_linalg::written_vec(g.n * g.o * g.ho() * g.wo(), |y| kernel(g, x, w, Some(b), y))
    };
    Ok(y)
}

fn backward_typed<T: Copy + Default>(
    kernel: Bwd<T>,
    g: &ConvGeom,
    (x, xl): (&[T], &Layout),
    (w, wl): (&[T], &Layout),
    (dy, dyl): (&[T], &Layout),
) -> candle_core::Result<Vec<T>> {
    let x = contiguous_slice(x, xl, "input")?;
    let w = contiguous_slice(w, wl, "weight")?;
    let dy = contiguous_slice(dy, dyl, "output gradient")?;
    // SAFETY: the `*_uninit` kernels write every value of dx, dW and db.
    let out = unsafe {
        diffuq_linalg::written_vec(x.len() + w.len() + g.o, |out| {
            let (dx, rest) = out.split_at_mut(x.len());
            let (dw, db) = rest.split_at_mut(w.len());
            kernel(g, x, w, dy, (dx, dw, db))
        })
    };
    Ok(out)
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "diffuq-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geometry(l1.shape(), l2.shape(), self.stride, self.pad)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => CpuStorage::F32(
                forward_typed(conv2d_forward_f32_uninit, &g, (x, l1), (w, l2), (b, l3))?,
            ),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => CpuStorage::F64(
                forward_typed(conv2d_forward_f64_uninit, &g, (x, l1), (w, l2), (b, l3))?,
            ),
            _ => candle_core::bail!("conv: input, weight and bias must all be f32 or all f64"),
        };
        Ok((out, Shape::from((g.n, g.o, g.ho(), g.wo()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = ConvGradOp {
            stride: self.stride,
            pad: self.pad,
        };
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let (nx, nw) = (x.elem_count(), w.elem_count());
        let o = w.dim(0)?;
        let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dw = packed.narrow(0, nx, nw)?.reshape(w.shape())?;
        let db = packed.narrow(0, nx + nw, o)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp3 for ConvGradOp {
    fn name(&self) -> &'static str {
        "diffuq-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geometry(l1.shape(), l2.shape(), self.stride, self.pad)?;
        if l3.shape().dims() != [g.n, g.o, g.ho(), g.wo()] {
            candle_core::bail!(
                "conv backward: output gradient {:?}, expected {:?}",
                l3.shape(),
                (g.n, g.o, g.ho(), g.wo())
            );
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(dy)) => CpuStorage::F32(
                backward_typed(conv2d_backward_f32_uninit, &g, (x, l1), (w, l2), (dy, l3))?,
            ),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(dy)) => CpuStorage::F64(
                backward_typed(conv2d_backward_f64_uninit, &g, (x, l1), (w, l2), (dy, l3))?,
            ),
            _ => candle_core::bail!("conv backward: tensors must all be f32 or all f64"),
        };
        let len = l1.shape().elem_count() + l2.shape().elem_count() + g.o;
        Ok((out, Shape::from(len)))
    }
}

/// conv(x, weight) + bias with per-axis stride and zero padding (dilation 1, one group),
/// differentiable in all three. On the CPU in f32/f64 the fused op of this module; elsewhere
/// candle's conv2d (which pads both axes alike, so unequal padding is applied first).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: (usize, usize),
    pad: (usize, usize),
) -> candle_core::Result<Tensor> {
    let o = weight.dim(0)?;
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        let zero;
        let b = match bias {
            Some(b) => b,
            None => {
                zero = Tensor::zeros(o, x.dtype(), x.device())?;
                &zero
            }
        };
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &b.contiguous()?,
            ConvOp { stride, pad },
        );
    }
    if stride.0 != stride.1 {
        candle_core::bail!("conv: candle's conv2d needs equal strides, got {stride:?}");
    }
    let y = if pad.0 == pad.1 {
        x.conv2d(weight, pad.0, stride.0, 1, 1)?
    } else {
        x.pad_with_zeros(2, pad.0, pad.0)?
            .pad_with_zeros(3, pad.1, pad.1)?
            .conv2d(weight, 0, stride.0, 1, 1)?
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, o, 1, 1))?),
        None => Ok(y),
    }
}

/// A square-kernel convolution with bias, stride and zero padding (dilation 1, one group).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, pad: usize) -> Self {
        Self {
            weight,
            bias,
            stride,
            pad,
        }
    }

    /// Weight (O, C, k, k).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        conv2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            (self.stride, self.stride),
            (self.pad, self.pad),
        )
    }

    /// The convolution as a linear map of [`Conv2d::patches`]: weight (O, C·k·k) in the (c, ky,
    /// kx) order of the weight's own flattening, and the bias (O,).
    pub fn as_linear(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let o = self.weight.dim(0)?;
        Ok((
            self.weight.reshape((o, self.weight.elem_count() / o))?,
            self.bias.clone(),
        ))
    }

    /// The input `x` (N, C, H, W) of this stride-1 convolution as one feature vector per output
    /// position: (N, H'·W', C·k·k), φ_{n,p} the zero-padded k×k patch feeding output position p
    /// (row-major), in [`Conv2d::as_linear`]'s order, so that `forward(x)` equals
    /// [`positions_to_image`]`(φ Wᵀ + b)`. This is how a last conv layer (diffusers' `conv_out`,
    /// ADM's `out.2`) becomes the linear last layer of last-layer Laplace methods.
    pub fn patches(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, kh, kw) = self.weight.dims4()?;
        if self.stride != 1 {
            candle_core::bail!(
                "conv patches: stride {} (only stride-1 convolutions are a per-position linear map here)",
                self.stride
            );
        }
        let (n, c, h, w) = x.dims4()?;
        let p = self.pad;
        let (ho, wo) = (
            (h + 2 * p + 1).saturating_sub(kh),
            (w + 2 * p + 1).saturating_sub(kw),
        );
        if ho == 0 || wo == 0 {
            candle_core::bail!("conv patches: kernel {kh}×{kw} does not fit a {h}×{w} input");
        }
        let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        let mut cols = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                cols.push(padded.narrow(2, ky, ho)?.narrow(3, kx, wo)?);
            }
        }
        // (N, C, k·k, H', W') → (N, H'·W', C·k·k)
        Tensor::stack(&cols, 2)?
            .reshape((n, c * kh * kw, ho * wo))?
            .transpose(1, 2)?
            .contiguous()
    }
}

/// Per-position outputs (N, P, O) of a conv's linear map → the image layout (N, O, s, s), P = s².
pub fn positions_to_image(out: &Tensor) -> candle_core::Result<Tensor> {
    let (n, p, o) = out.dims3()?;
    let s = (p as f64).sqrt().round() as usize;
    if s * s != p {
        candle_core::bail!("{p} output positions do not form a square image");
    }
    out.transpose(1, 2)?.reshape((n, o, s, s))
}

/// An image-layout tensor (N, O, H, W) → per-position rows (N, H·W, O); the inverse of
/// [`positions_to_image`].
pub fn image_to_positions(target: &Tensor) -> candle_core::Result<Tensor> {
    let (n, o, h, w) = target.dims4()?;
    target.reshape((n, o, h * w))?.transpose(1, 2)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Deterministic test data in [-1, 1).
    fn data(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n as u64)
            .map(|i| (((i + 1) * (seed * 2 + 7919) % 1009) as f64) / 504.5 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let m = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        d.to_scalar::<f64>().unwrap() / m.to_scalar::<f64>().unwrap()
    }

    #[test]
    fn forward_and_gradients_equal_candles_conv2d() {
        // Reference: candle 0.11's own conv2d and its autograd, in f64 (so the comparison is
        // of the algorithm, not of summation order), for the kernel/stride/padding combinations
        // the UNet uses. (candle's conv backward needs (H + 2p − k) divisible by the stride:
        // 7×9 inputs satisfy that for every case here.)
        for &(k, s, p) in &[(3, 1, 1), (3, 2, 1), (3, 2, 0), (1, 1, 0)] {
            let x = Var::from_tensor(&data(&[2, 3, 7, 9], 1, DType::F64)).unwrap();
            let w = Var::from_tensor(&data(&[4, 3, k, k], 2, DType::F64)).unwrap();
            let b = Var::from_tensor(&data(&[4], 3, DType::F64)).unwrap();
            let ours = Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), s, p)
                .forward(x.as_tensor())
                .unwrap();
            let theirs = x
                .conv2d(w.as_tensor(), p, s, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            assert!(max_rel(&ours, &theirs) < 1e-12, "forward k{k} s{s} p{p}");
            let g = data(ours.dims(), 4, DType::F64);
            let go = (&ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (&theirs * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                let a = go.get(v).unwrap();
                let e = gt.get(v).unwrap();
                assert!(max_rel(a, e) < 1e-12, "grad {name} k{k} s{s} p{p}");
            }
        }
    }

    #[test]
    fn rectangular_kernels_unequal_padding_and_batch_paths_equal_candle() {
        // Reference: candle 0.11's conv2d on explicitly zero-padded input (it pads both axes
        // alike), in f64, for Inception's 1×7 / 7×1 kernels and a stride-2 rectangular case; the
        // batch sizes take the one-image (threads inside gemm) and the grouped (37 > 16 groups)
        // paths of the backward.
        for &(n, kh, kw, s, ph, pw) in &[
            (1, 1, 7, 1, 0, 3),
            (37, 7, 1, 1, 3, 0),
            (3, 3, 2, 2, 1, 0),
            (37, 3, 3, 1, 1, 1),
        ] {
            let x = Var::from_tensor(&data(&[n, 3, 9, 8], 5, DType::F64)).unwrap();
            let w = Var::from_tensor(&data(&[4, 3, kh, kw], 6, DType::F64)).unwrap();
            let b = Var::from_tensor(&data(&[4], 7, DType::F64)).unwrap();
            let ours = conv2d(x.as_tensor(), &w, Some(&b), (s, s), (ph, pw)).unwrap();
            let theirs = x
                .pad_with_zeros(2, ph, ph)
                .unwrap()
                .pad_with_zeros(3, pw, pw)
                .unwrap()
                .conv2d(w.as_tensor(), 0, s, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            let case = format!("n{n} {kh}x{kw} s{s} p({ph},{pw})");
            assert_eq!(ours.dims(), theirs.dims(), "{case}");
            assert!(max_rel(&ours, &theirs) < 1e-12, "forward {case}");
            let g = data(ours.dims(), 8, DType::F64);
            let go = (&ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
            // candle's conv backward needs (H + 2p − k) divisible by the stride; the f64 input
            // gradient of the stride-2 case is checked by the adjoint test in diffuq-linalg.
            let gt = (&theirs * &g).unwrap().sum_all().unwrap().backward();
            if let Ok(gt) = gt {
                for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                    let a = go.get(v).unwrap();
                    let e = gt.get(v).unwrap();
                    assert!(max_rel(a, e) < 1e-12, "grad {name} {case}");
                }
            } else {
                assert!(s > 1, "candle's backward failed for {case}");
            }
        }
    }

    #[test]
    fn f32_matches_f64_and_bad_shapes_are_errors() {
        // Reference: the same op in f64 (checked against candle above); f32 within 1e-5.
        let x64 = data(&[5, 3, 8, 8], 9, DType::F64);
        let w64 = data(&[6, 3, 3, 3], 10, DType::F64);
        let b64 = data(&[6], 11, DType::F64);
        let y64 = conv2d(&x64, &w64, Some(&b64), (1, 1), (1, 1)).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let y32 = conv2d(&f(&x64), &f(&w64), Some(&f(&b64)), (1, 1), (1, 1)).unwrap();
        assert!(max_rel(&y32.to_dtype(DType::F64).unwrap(), &y64) < 1e-5);
        let err = conv2d(
            &x64,
            &data(&[6, 4, 3, 3], 1, DType::F64),
            None,
            (1, 1),
            (1, 1),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("3 channels"), "{err}");
        let err = conv2d(
            &x64,
            &data(&[6, 3, 11, 11], 1, DType::F64),
            None,
            (1, 1),
            (1, 1),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn patches_times_the_flattened_weight_is_the_convolution() {
        // Reference: the convolution itself (checked against candle above), in f64; 3×3 with
        // padding 1 (diffusers' conv_out, ADM's out.2) and 1×1 without padding.
        for &(k, p) in &[(3usize, 1usize), (1, 0)] {
            let x = data(&[2, 3, 5, 5], 12, DType::F64);
            let conv = Conv2d::new(
                data(&[4, 3, k, k], 13, DType::F64),
                Some(data(&[4], 14, DType::F64)),
                1,
                p,
            );
            let phi = conv.patches(&x).unwrap();
            assert_eq!(phi.dims(), &[2, 25, 3 * k * k]);
            let (w, b) = conv.as_linear().unwrap();
            let lin = phi
                .broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b.unwrap())
                .unwrap();
            let img = positions_to_image(&lin).unwrap();
            let direct = conv.forward(&x).unwrap();
            assert!(max_rel(&img, &direct) < 1e-14, "k{k} p{p}");
            let back = image_to_positions(&direct).unwrap();
            assert!(max_rel(&back, &lin) < 1e-14, "k{k} p{p}");
        }
        let strided = Conv2d::new(data(&[4, 3, 3, 3], 1, DType::F64), None, 2, 1);
        let e = strided
            .patches(&data(&[1, 3, 4, 4], 2, DType::F64))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stride 2"), "{e}");
        let e = positions_to_image(&data(&[1, 5, 2], 3, DType::F64))
            .unwrap_err()
            .to_string();
        assert!(e.contains("square"), "{e}");
    }
}
