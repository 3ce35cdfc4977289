//! 2-D convolution as im2col + one batched gemm, with its own backward, for the CPU.
//!
//! candle 0.11's CPU conv2d backward (a conv for the weight gradient, a transposed conv for the
//! input gradient) made a training step of a 0.26M-parameter UNet take ~10 s here, 30× torch.
//! Written as cols = im2col(x) (a custom op whose backward is col2im, and vice versa) followed by
//! out_n = W · cols_n (candle's matmul, whose backward is two more gemms), every part of forward
//! and backward is either a gemm or a memory copy (the kernels live in `diffuq-linalg`, built at
//! opt-level 3). On other devices candle's own conv2d is used.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use diffuq_linalg::conv::{col2im_f32, col2im_f64, conv_out_len, im2col_f32, im2col_f64};

/// x (N, C, H, W) → cols (N, C·k·k, Ho·Wo).
struct Im2Col {
    k: usize,
    stride: usize,
    pad: usize,
}

/// cols (N, C·k·k, Ho·Wo) → x (N, C, H, W), summing overlapping taps (the adjoint of Im2Col).
struct Col2Im {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

fn contiguous_slice<'a, T>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("conv kernels need a contiguous input"),
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "diffuq-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let ho = conv_out_len(h, self.k, self.stride, self.pad);
        let wo = conv_out_len(w, self.k, self.stride, self.pad);
        let len = n * c * self.k * self.k * ho * wo;
        let ksp = (self.k, self.stride, self.pad);
        let out = match s {
            CpuStorage::F32(v) => {
                let mut o = vec![0f32; len];
                im2col_f32(contiguous_slice(v, l)?, (n, c, h, w), ksp, &mut o);
                CpuStorage::F32(o)
            }
            CpuStorage::F64(v) => {
                let mut o = vec![0f64; len];
                im2col_f64(contiguous_slice(v, l)?, (n, c, h, w), ksp, &mut o);
                CpuStorage::F64(o)
            }
            _ => candle_core::bail!("im2col: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from((n, c * self.k * self.k, ho * wo))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, c, h, w) = arg.dims4()?;
        let op = Col2Im {
            c,
            h,
            w,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
        };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "diffuq-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, _, _) = l.shape().dims3()?;
        let dims = (n, self.c, self.h, self.w);
        let ksp = (self.k, self.stride, self.pad);
        let len = n * self.c * self.h * self.w;
        let out = match s {
            CpuStorage::F32(v) => {
                let mut o = vec![0f32; len];
                col2im_f32(contiguous_slice(v, l)?, dims, ksp, &mut o);
                CpuStorage::F32(o)
            }
            CpuStorage::F64(v) => {
                let mut o = vec![0f64; len];
                col2im_f64(contiguous_slice(v, l)?, dims, ksp, &mut o);
                CpuStorage::F64(o)
            }
            _ => candle_core::bail!("col2im: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = Im2Col {
            k: self.k,
            stride: self.stride,
            pad: self.pad,
        };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// im2col of x (N, C, H, W) for a k×k kernel: (N, C·k·k, Ho·Wo), differentiable.
pub fn im2col(x: &Tensor, k: usize, stride: usize, pad: usize) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Im2Col { k, stride, pad })
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
        let (o, c, k, _) = self.weight.dims4()?;
        let (n, _, h, w) = x.dims4()?;
        let out = if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
            x.conv2d(&self.weight, self.pad, self.stride, 1, 1)?
        } else {
            let ho = conv_out_len(h, k, self.stride, self.pad);
            let wo = conv_out_len(w, k, self.stride, self.pad);
            let cols = if k == 1 && self.stride == 1 && self.pad == 0 {
                x.reshape((n, c, h * w))?
            } else {
                im2col(x, k, self.stride, self.pad)?
            };
            self.weight
                .reshape((o, c * k * k))?
                .broadcast_matmul(&cols)?
                .reshape((n, o, ho, wo))?
        };
        match &self.bias {
            Some(b) => out.broadcast_add(&b.reshape((1, o, 1, 1))?),
            None => Ok(out),
        }
    }
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
}
