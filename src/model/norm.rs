//! GroupNorm (Wu & He 2018) as one fused CPU kernel with an analytic backward.
//!
//! candle_nn's GroupNorm is a chain of ~10 elementwise tensor ops, each allocating a full-size
//! tensor, and its autograd doubles that; in a small UNet those passes cost more than the
//! convolutions. Here forward and backward are one pass each over the data (kernels in
//! `diffuq-linalg`, opt-level 3), with the same result as torch.nn.GroupNorm (biased variance,
//! ε inside the square root). On other devices candle_nn's GroupNorm is used.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Shape, Tensor};

use diffuq_linalg::norm::{
    group_norm_backward_f32, group_norm_backward_f64, group_norm_f32_uninit, group_norm_f64,
    GroupNormDims,
};

fn slice<'a, T>(s: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    super::contiguous_slice(s, l, "group norm", what)
}

fn dims_of(l: &Layout, groups: usize, eps: f64) -> candle_core::Result<GroupNormDims> {
    let d = l.shape().dims();
    if d.len() < 2 {
        candle_core::bail!("group norm needs (N, C, …), got {d:?}");
    }
    Ok(GroupNormDims {
        n: d[0],
        c: d[1],
        l: d[2..].iter().product(),
        groups,
        eps,
        lanes: false,
    })
}

/// (x, γ, β) → y.
struct Forward {
    groups: usize,
    eps: f64,
}

/// (x, γ, dy) → [dx (N·C·L), dγ (C), dβ (C)] packed in one vector.
struct Backward {
    groups: usize,
    eps: f64,
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "diffuq-group-norm"
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
        let mut d = dims_of(l1, self.groups, self.eps)?;
        // f32 statistics in lanes where the other bit-changing f32 kernels run.
        d.lanes = matches!(s1, CpuStorage::F32(_)) && diffuq_linalg::conv::avx512_active();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                let (x, g, b) = (slice(x, l1, "x")?, slice(g, l2, "γ")?, slice(b, l3, "β")?);
                // SAFETY: the `_uninit` kernel writes every output value.
                let y = unsafe {
                    diffuq_linalg::written_vec(d.n * d.c * d.l, |y| {
                        group_norm_f32_uninit(x, g, b, d, y)
                    })
                };
                CpuStorage::F32(y)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                let mut y = vec![0f64; d.n * d.c * d.l];
                group_norm_f64(
                    slice(x, l1, "x")?,
                    slice(g, l2, "γ")?,
                    slice(b, l3, "β")?,
                    d,
                    &mut y,
                );
                CpuStorage::F64(y)
            }
            _ => candle_core::bail!("group norm: x, γ and β must all be f32 or all f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Backward {
            groups: self.groups,
            eps: self.eps,
        };
        let packed = x.apply_op3_no_bwd(gamma, &dy.contiguous()?, &op)?;
        let nx = x.elem_count();
        let c = gamma.elem_count();
        let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dg = packed.narrow(0, nx, c)?.reshape(gamma.shape())?;
        let db = packed.narrow(0, nx + c, c)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "diffuq-group-norm-backward"
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
        let mut d = dims_of(l1, self.groups, self.eps)?;
        // f32 statistics in lanes where the other bit-changing f32 kernels run.
        d.lanes = matches!(s1, CpuStorage::F32(_)) && diffuq_linalg::conv::avx512_active();
        let nx = d.n * d.c * d.l;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(dy)) => {
                let mut o = vec![0f32; nx + 2 * d.c];
                let (dx, rest) = o.split_at_mut(nx);
                let (dg, db) = rest.split_at_mut(d.c);
                group_norm_backward_f32(
                    slice(x, l1, "x")?,
                    slice(g, l2, "γ")?,
                    slice(dy, l3, "dy")?,
                    d,
                    dx,
                    dg,
                    db,
                );
                CpuStorage::F32(o)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(dy)) => {
                let mut o = vec![0f64; nx + 2 * d.c];
                let (dx, rest) = o.split_at_mut(nx);
                let (dg, db) = rest.split_at_mut(d.c);
                group_norm_backward_f64(
                    slice(x, l1, "x")?,
                    slice(g, l2, "γ")?,
                    slice(dy, l3, "dy")?,
                    d,
                    dx,
                    dg,
                    db,
                );
                CpuStorage::F64(o)
            }
            _ => candle_core::bail!("group norm backward: mixed dtypes"),
        };
        Ok((out, Shape::from(nx + 2 * d.c)))
    }
}

/// torch.nn.GroupNorm with affine parameters.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    fallback: candle_nn::GroupNorm,
}

impl GroupNorm {
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        channels: usize,
        groups: usize,
        eps: f64,
    ) -> candle_core::Result<Self> {
        let fallback =
            candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
            fallback,
        })
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
            return self.fallback.forward(x);
        }
        x.contiguous()?.apply_op3(
            &self.weight,
            &self.bias,
            Forward {
                groups: self.groups,
                eps: self.eps,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn data(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n as u64)
            .map(|i| {
                (((i + 1) * (seed * 2 + 7919) % 1013) as f64) / 506.5 - 1.0 + seed as f64 * 0.1
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn forward_and_gradients_equal_candle_nn_group_norm() {
        // Reference: candle_nn 0.11's GroupNorm (torch.nn.GroupNorm's formula) and candle's
        // autograd through it, in f64.
        for &(shape, groups) in &[
            (&[2usize, 6, 5, 4][..], 3usize),
            (&[3, 4, 7][..], 2),
            (&[1, 8, 3, 3][..], 8),
        ] {
            let c = shape[1];
            let x = Var::from_tensor(&data(shape, 1)).unwrap();
            let g = Var::from_tensor(&data(&[c], 2)).unwrap();
            let b = Var::from_tensor(&data(&[c], 3)).unwrap();
            let ours = GroupNorm::new(
                g.as_tensor().clone(),
                b.as_tensor().clone(),
                c,
                groups,
                1e-5,
            )
            .unwrap()
            .forward(x.as_tensor())
            .unwrap();
            let theirs = candle_nn::GroupNorm::new(
                g.as_tensor().clone(),
                b.as_tensor().clone(),
                c,
                groups,
                1e-5,
            )
            .unwrap()
            .forward(x.as_tensor())
            .unwrap();
            assert!(max_abs(&ours, &theirs) < 1e-12, "forward {shape:?}");
            let w = data(shape, 4);
            let go = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (&theirs * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("x", &x), ("gamma", &g), ("beta", &b)] {
                let e = max_abs(go.get(v).unwrap(), gt.get(v).unwrap());
                assert!(e < 1e-10, "grad {name} {shape:?}: {e:e}");
            }
        }
    }
}
