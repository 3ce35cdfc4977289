//! Depthwise 2-D convolution (one filter per channel, `groups = channels`) for feature extraction.
//!
//! MobileNetV2's inverted residual blocks (Sandler et al. 2018) filter every channel with its own
//! 3×3 kernel. candle 0.11 runs a grouped convolution as one convolution per group (`chunk` +
//! `cat`), i.e. 17 layers × up to 960 tiny convolutions per forward. Measured on the 2-core dev
//! machine (busy with a training job, so in CPU time, one thread, dev build): MobileNetV2's 17
//! depthwise layers at batch 50 and 224² took 7.3 CPU-s through candle and 1.27 CPU-s here.
//! This is a direct kernel: per (image, channel) plane, the plane is copied once into a
//! zero-padded scratch buffer and every output is a kh×kw dot product over it, with bias and an
//! optional ReLU6 fused in. Planes are split over threads in fixed contiguous ranges, and every
//! output element is one independent sum in a fixed order, so the result does not depend on the
//! thread count. Forward only: the extractor is never differentiated. On other devices and dtypes
//! [`depthwise_conv2d`] uses candle's grouped convolution.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

/// Geometry of one depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
}

impl Geom {
    fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
}

#[derive(Debug, Clone, Copy)]
struct DepthwiseOp {
    stride: usize,
    pad: usize,
    relu6: bool,
}

fn contiguous<'a>(s: &'a [f32], l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    crate::model::contiguous_slice(s, l, "depthwise conv", what)
}

/// One plane: `x` (h, w) → `y` (ho, wo), using `padded` ((h + 2p) × (w + 2p)) as scratch.
fn plane(
    g: &Geom,
    x: &[f32],
    k: &[f32],
    bias: f32,
    relu6: bool,
    padded: &mut [f32],
    y: &mut [f32],
) {
    let (pw, p) = (g.w + 2 * g.pad, g.pad);
    for (r, row) in x.chunks_exact(g.w).enumerate() {
        padded[(r + p) * pw + p..(r + p) * pw + p + g.w].copy_from_slice(row);
    }
    let (wo, s) = (g.wo(), g.stride);
    let cap = |v: f32| if relu6 { v.clamp(0.0, 6.0) } else { v };
    for (oy, out) in y.chunks_exact_mut(wo).enumerate() {
        let row = |ky: usize| &padded[(oy * s + ky) * pw..(oy * s + ky + 1) * pw];
        if let (3, 3) = (g.kh, g.kw) {
            // MobileNet's case: all nine taps of an output in registers, one write. diffuq itself
            // is built at opt-level 1 in dev builds (no auto-vectorisation), where this measured
            // 2.5× faster than accumulating tap by tap over the row.
            let (r0, r1, r2) = (row(0), row(1), row(2));
            for (ox, o) in out.iter_mut().enumerate() {
                let i = ox * s;
                let a = k[0] * r0[i] + k[1] * r0[i + 1] + k[2] * r0[i + 2];
                let b = k[3] * r1[i] + k[4] * r1[i + 1] + k[5] * r1[i + 2];
                let c = k[6] * r2[i] + k[7] * r2[i + 1] + k[8] * r2[i + 2];
                *o = cap(bias + (a + b + c));
            }
        } else {
            out.fill(bias);
            for ky in 0..g.kh {
                let src = row(ky);
                for kx in 0..g.kw {
                    let wv = k[ky * g.kw + kx];
                    for (ox, o) in out.iter_mut().enumerate() {
                        *o += wv * src[ox * s + kx];
                    }
                }
            }
            for o in out.iter_mut() {
                *o = cap(*o);
            }
        }
    }
}

/// All planes of `x` (n·c planes), split over the available threads.
fn forward(g: &Geom, x: &[f32], k: &[f32], b: &[f32], relu6: bool) -> Vec<f32> {
    let (hw, ohw, kk) = (g.h * g.w, g.ho() * g.wo(), g.kh * g.kw);
    let planes = g.n * g.c;
    let mut y = vec![0f32; planes * ohw];
    if planes == 0 || ohw == 0 {
        return y;
    }
    let pad_len = (g.h + 2 * g.pad) * (g.w + 2 * g.pad);
    let threads = candle_core::utils::get_num_threads().clamp(1, planes);
    let per = planes.div_ceil(threads);
    let run = |first: usize, ys: &mut [f32]| {
        // Borders stay zero: each plane overwrites only the interior.
        let mut padded = vec![0f32; pad_len];
        for (i, yp) in ys.chunks_exact_mut(ohw).enumerate() {
            let p = first + i;
            let ch = p % g.c;
            plane(
                g,
                &x[p * hw..(p + 1) * hw],
                &k[ch * kk..(ch + 1) * kk],
                b[ch],
                relu6,
                &mut padded,
                yp,
            );
        }
    };
    if threads == 1 {
        run(0, &mut y);
    } else {
        std::thread::scope(|scope| {
            for (t, ys) in y.chunks_mut(per * ohw).enumerate() {
                let run = &run;
                scope.spawn(move || run(t * per, ys));
            }
        });
    }
    y
}

impl CustomOp3 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "diffuq-depthwise-conv2d"
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let (o, one, kh, kw) = l2.shape().dims4()?;
        if o != c || one != 1 {
            candle_core::bail!(
                "depthwise conv: weight {:?} does not fit {c} channels (expected ({c}, 1, kh, kw))",
                l2.shape()
            );
        }
        if l3.shape().elem_count() != c {
            candle_core::bail!("depthwise conv: bias {:?}, expected ({c})", l3.shape());
        }
        if self.stride == 0 || h + 2 * self.pad < kh || w + 2 * self.pad < kw {
            candle_core::bail!(
                "depthwise conv: kernel {kh}×{kw} (stride {}, padding {}) does not fit {h}×{w}",
                self.stride,
                self.pad
            );
        }
        let g = Geom {
            n,
            c,
            h,
            w,
            kh,
            kw,
            stride: self.stride,
            pad: self.pad,
        };
        let (x, k, b) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(k), CpuStorage::F32(b)) => (
                contiguous(x, l1, "input")?,
                contiguous(k, l2, "weight")?,
                contiguous(b, l3, "bias")?,
            ),
            _ => candle_core::bail!("depthwise conv: input, weight and bias must be f32"),
        };
        let y = forward(&g, x, k, b, self.relu6);
        Ok((CpuStorage::F32(y), Shape::from((n, c, g.ho(), g.wo()))))
    }
}

/// Depthwise convolution of `x` (N, C, H, W) with `weight` (C, 1, kh, kw) and `bias` (C), square
/// stride and zero padding, followed by ReLU6 (min(max(·, 0), 6)) when `relu6`. On the CPU in f32
/// the direct kernel of this module; otherwise candle's grouped conv2d (`groups = C`).
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
    relu6: bool,
) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op3_no_bwd(
            &weight.contiguous()?,
            &bias.contiguous()?,
            &DepthwiseOp { stride, pad, relu6 },
        );
    }
    candle_grouped(x, weight, bias, stride, pad, relu6)
}

/// The same through candle's grouped convolution (the fallback, and the reference in tests).
pub fn candle_grouped(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
    relu6: bool,
) -> candle_core::Result<Tensor> {
    let c = x.dim(1)?;
    let y = x
        .conv2d(weight, pad, stride, 1, c)?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    if relu6 {
        y.clamp(0f32, 6f32)
    } else {
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        // A fixed xorshift stream: the numbers only need to be varied and reproducible.
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    // Expected numbers: candle 0.11's grouped conv2d (groups = channels) on the same inputs, plus
    // its broadcast bias and clamp; the two sum the 9 products in different orders, so they agree
    // to f32 rounding (≤ 1e-5 here, values of order 10).
    #[test]
    fn matches_candle_grouped_conv() {
        for (i, &(n, c, h, w, k, stride, pad, relu6)) in [
            (2, 5, 7, 9, 3, 1, 1, false),
            (2, 5, 7, 9, 3, 2, 1, true),
            (1, 3, 8, 8, 3, 2, 1, false),
            (3, 4, 1, 1, 3, 1, 1, true),
            (1, 2, 6, 5, 3, 1, 0, false),
            (2, 3, 9, 4, 5, 2, 2, false),
        ]
        .iter()
        .enumerate()
        {
            let x = randn(&[n, c, h, w], 1 + i as u64);
            let wt = randn(&[c, 1, k, k], 100 + i as u64);
            let b = randn(&[c], 200 + i as u64);
            let ours = depthwise_conv2d(&x, &wt, &b, stride, pad, relu6).unwrap();
            let theirs = candle_grouped(&x, &wt, &b, stride, pad, relu6).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            let d = (ours - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d <= 1e-5, "case {i}: max |diff| {d}");
        }
    }

    // Expected numbers: by hand. A 3×3 all-ones kernel with padding 1 sums each pixel's
    // neighbourhood: on a 2×2 plane of 1, 2, 3, 4 every output is 10 (all four in reach); bias 1
    // adds 1 and ReLU6 caps 11 at 6. Stride 2 on a 3×3 plane of ones keeps outputs (0,0), (0,2),
    // (2,0), (2,2): corners see 4 ones.
    #[test]
    fn hand_computed_sums() {
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let k = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::ones(1, DType::F32, &Device::Cpu).unwrap();
        let y = depthwise_conv2d(&x, &k, &b, 1, 1, false).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [11.; 4]);
        let y = depthwise_conv2d(&x, &k, &b, 1, 1, true).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [6.; 4]);
        let x = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let z = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let y = depthwise_conv2d(&x, &k, &z, 2, 1, false).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [4.; 4]);
    }

    #[test]
    fn mismatched_weight_is_an_error() {
        // Expected: by definition, a depthwise weight has one (1, kh, kw) filter per channel,
        // so a (4, 1, 3, 3) weight cannot filter 3 channels.
        let x = randn(&[1, 3, 4, 4], 1);
        let k = randn(&[4, 1, 3, 3], 2);
        let b = randn(&[4], 3);
        let e = depthwise_conv2d(&x, &k, &b, 1, 1, false).unwrap_err();
        assert!(e.to_string().contains("does not fit 3 channels"), "{e}");
    }
}
