//! Nearest-neighbour ×2 upsampling (`F.interpolate(scale_factor=2, mode="nearest")`), the
//! upsampler of every UNet here: y[n, c, 2i + a, 2j + b] = x[n, c, i, j], whose gradient is
//! dx[n, c, i, j] = Σ_{a, b ∈ {0, 1}} dy[n, c, 2i + a, 2j + b].
//!
//! On the CPU it is one op with that backward, one pass each way; on other devices a broadcast
//! (reshape, broadcast, reshape), whose autograd gives the same sums. Not candle 0.11's
//! `upsample_nearest2d`: its backward runs a grouped convolution with a ones kernel on candle's
//! own (slow) convolution, and it overwrites the gradient already accumulated for its input
//! instead of adding to it, which loses a branch when the input feeds two paths (an ADM up
//! ResBlock's x goes through both its norm and its skip resampling). UNet2DModel keeps candle's
//! op on the im2col + gemm kernels only, where the committed mini models replay their training
//! to the bit (its input feeds nothing else there).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use diffuq_linalg::resample::{upsample_nearest2x, upsample_nearest2x_backward};

/// x (N, C, H, W) → (N, C, 2H, 2W).
pub fn nearest2x(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
    {
        return x.contiguous()?.apply_op1(Up);
    }
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .reshape((n, c, 2 * h, 2 * w))
}

fn slice<'a, T>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    super::contiguous_slice(s, l, "upsample", "input")
}

struct Up;

/// The gradient op: (N, C, 2H, 2W) → (N, C, H, W).
struct Down;

impl CustomOp1 for Up {
    fn name(&self) -> &'static str {
        "diffuq-upsample-nearest2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out = match s {
            CpuStorage::F32(v) => {
                let x = slice(v, l)?;
                let mut y = vec![0f32; 4 * x.len()];
                upsample_nearest2x(x, h, w, &mut y);
                CpuStorage::F32(y)
            }
            CpuStorage::F64(v) => {
                let x = slice(v, l)?;
                let mut y = vec![0f64; 4 * x.len()];
                upsample_nearest2x(x, h, w, &mut y);
                CpuStorage::F64(y)
            }
            _ => candle_core::bail!("upsample: input must be f32 or f64"),
        };
        Ok((out, Shape::from((n, c, 2 * h, 2 * w))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Down)?))
    }
}

impl CustomOp1 for Down {
    fn name(&self) -> &'static str {
        "diffuq-upsample-nearest2x-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h2, w2) = l.shape().dims4()?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            candle_core::bail!(
                "upsample backward: gradient of shape {:?} is not 2H × 2W",
                l.dims()
            );
        }
        let (h, w) = (h2 / 2, w2 / 2);
        let out = match s {
            CpuStorage::F32(v) => {
                let dy = slice(v, l)?;
                let mut dx = vec![0f32; dy.len() / 4];
                upsample_nearest2x_backward(dy, h, w, &mut dx);
                CpuStorage::F32(dx)
            }
            CpuStorage::F64(v) => {
                let dy = slice(v, l)?;
                let mut dx = vec![0f64; dy.len() / 4];
                upsample_nearest2x_backward(dy, h, w, &mut dx);
                CpuStorage::F64(dx)
            }
            _ => candle_core::bail!("upsample backward: gradient must be f32 or f64"),
        };
        Ok((out, Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn values_and_gradient_equal_the_broadcast_form() {
        // Reference: candle 0.11's broadcast (reshape → broadcast_as → reshape) and its autograd,
        // in f64; and candle's own upsample_nearest2d forward. The input also feeds a second
        // path, so the gradient must add both branches.
        let x = Var::from_tensor(
            &Tensor::arange(0f64, 2.0 * 3.0 * 4.0 * 5.0, &Device::Cpu)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((2, 3, 4, 5))
                .unwrap(),
        )
        .unwrap();
        let w = Tensor::arange(0f64, 2.0 * 3.0 * 8.0 * 10.0, &Device::Cpu)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((2, 3, 8, 10))
            .unwrap();
        let x2 = (x.as_tensor() * 3.0).unwrap();
        let ours = nearest2x(x.as_tensor()).unwrap();
        let candle = x.as_tensor().upsample_nearest2d(8, 10).unwrap();
        let broadcast = x
            .as_tensor()
            .reshape((2, 3, 4, 1, 5, 1))
            .unwrap()
            .broadcast_as((2, 3, 4, 2, 5, 2))
            .unwrap()
            .reshape((2, 3, 8, 10))
            .unwrap();
        let vals = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(vals(&ours), vals(&candle));
        let loss = |u: &Tensor| {
            ((u * &w).unwrap().sum_all().unwrap() + x2.sqr().unwrap().sum_all().unwrap()).unwrap()
        };
        let g_ours = loss(&ours).backward().unwrap();
        let g_ref = loss(&broadcast).backward().unwrap();
        let (a, b) = (vals(g_ours.get(&x).unwrap()), vals(g_ref.get(&x).unwrap()));
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() < 1e-12, "{u} vs {v}");
        }
        // f32 takes the same path.
        let x32 = x.as_tensor().to_dtype(candle_core::DType::F32).unwrap();
        assert_eq!(
            nearest2x(&x32)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            vals(
                &candle
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
            )
        );
    }
}
