//! GroupNorm (Wu & He 2018) as one fused CPU kernel with an analytic backward.
//!
//! candle_nn's GroupNorm is a chain of ~10 elementwise tensor ops, each allocating a full-size
//! tensor, and its autograd doubles that; in a small UNet those passes cost more than the
//! convolutions. Here forward and backward are one pass each over the data (kernels in
//! `diffuq-linalg`, opt-level 3), with the same result as torch.nn.GroupNorm (biased variance,
//! ε inside the square root). On other devices candle_nn's GroupNorm is used.
//!
//! [`GroupNorm::forward_silu`] is the norm as a UNet residual block uses it, followed by its SiLU
//! and, for the second norm, preceded by the time-embedding add and followed by dropout:
//! y = dropout(SiLU(GroupNorm(x + e))). Where the AVX-512 kernels run it is one op with one
//! backward (same forward bits as the separate ops); elsewhere it is those separate ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Shape, Tensor};

use super::network::Mode;
use diffuq_linalg::norm::{
    group_norm_backward_f32, group_norm_backward_f64, group_norm_f32_uninit, group_norm_f64,
    group_norm_silu_backward_f32, group_norm_silu_f32_uninit, GroupNormDims, NormSiluExtras,
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

/// dropout(SiLU(GroupNorm(x [+ e]))), f32 on AVX-512: (x, γβ) or (x, e, γβ) → y, with γβ the
/// concatenation of γ and β (a custom op takes at most three tensors) and e (N, C).
#[derive(Clone)]
struct NormSilu {
    groups: usize,
    eps: f64,
    /// Dropout keep-mask (shape of x, 0 and 1, contiguous) and the scale of kept units.
    keep: Option<(Tensor, f32)>,
}

/// (x, γβ, dy) → [dx (N·C·L), dγ (C), dβ (C), de (N·C, with a shift)] packed in one vector; the
/// shift e and the keep-mask ride along in the op (no gradient flows into them from here).
struct NormSiluBackward {
    forward: NormSilu,
    shift: Option<Tensor>,
}

/// The f32 values of a tensor captured by an op (not one of its inputs).
fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(f32s(s, layout, what)?),
        _ => candle_core::bail!("group norm + SiLU: {what} must be an f32 CPU tensor"),
    }
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    super::contiguous_f32(s, l, "group norm + SiLU", what)
}

impl NormSilu {
    fn dims(&self, l: &Layout, gb: &[f32]) -> candle_core::Result<GroupNormDims> {
        let mut d = dims_of(l, self.groups, self.eps)?;
        d.lanes = true;
        if gb.len() != 2 * d.c {
            candle_core::bail!(
                "group norm + SiLU: γβ has {} values, want 2 × {}",
                gb.len(),
                d.c
            );
        }
        Ok(d)
    }

    fn run(
        &self,
        x: &[f32],
        l: &Layout,
        shift: Option<&[f32]>,
        gb: &[f32],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(l, gb)?;
        let (gamma, beta) = gb.split_at(d.c);
        let go = |keep: Option<(&[f32], f32)>| {
            let ex = NormSiluExtras { shift, keep };
            // SAFETY: the `_uninit` kernel writes every output value.
            unsafe {
                diffuq_linalg::written_vec(x.len(), |y| {
                    group_norm_silu_f32_uninit(x, gamma, beta, ex, d, y)
                })
            }
        };
        let y = match &self.keep {
            Some((mask, scale)) => with_f32(mask, "dropout mask", |m| Ok(go(Some((m, *scale)))))?,
            None => go(None),
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn backward(
        &self,
        x: &Tensor,
        shift: Option<&Tensor>,
        gb: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Option<Tensor>, Tensor)> {
        let op = NormSiluBackward {
            forward: self.clone(),
            shift: shift.cloned(),
        };
        let packed = x.apply_op3_no_bwd(gb, &dy.contiguous()?, &op)?;
        let (nx, c2) = (x.elem_count(), gb.elem_count());
        let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dgb = packed.narrow(0, nx, c2)?;
        let de = match shift {
            Some(e) => Some(
                packed
                    .narrow(0, nx + c2, e.elem_count())?
                    .reshape(e.shape())?,
            ),
            None => None,
        };
        Ok((dx, de, dgb))
    }
}

impl CustomOp2 for NormSilu {
    fn name(&self) -> &'static str {
        "diffuq-group-norm-silu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(f32s(s1, l1, "x")?, l1, None, f32s(s2, l2, "γβ")?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, _, dgb) = self.backward(x, None, gb, dy)?;
        Ok((Some(dx), Some(dgb)))
    }
}

impl CustomOp3 for NormSilu {
    fn name(&self) -> &'static str {
        "diffuq-group-norm-silu"
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
        let e = f32s(s2, l2, "shift")?;
        self.run(f32s(s1, l1, "x")?, l1, Some(e), f32s(s3, l3, "γβ")?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        e: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, de, dgb) = self.backward(x, Some(e), gb, dy)?;
        Ok((Some(dx), de, Some(dgb)))
    }
}

impl CustomOp3 for NormSiluBackward {
    fn name(&self) -> &'static str {
        "diffuq-group-norm-silu-backward"
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
        let (x, gb, dy) = (f32s(s1, l1, "x")?, f32s(s2, l2, "γβ")?, f32s(s3, l3, "dy")?);
        let d = self.forward.dims(l1, gb)?;
        let (gamma, beta) = gb.split_at(d.c);
        let ne = if self.shift.is_some() { d.n * d.c } else { 0 };
        let nx = x.len();
        let mut o = vec![0f32; nx + 2 * d.c + ne];
        let go = |shift: Option<&[f32]>, keep: Option<(&[f32], f32)>, o: &mut [f32]| {
            let (dx, rest) = o.split_at_mut(nx);
            let (dg, rest) = rest.split_at_mut(d.c);
            let (db, de) = rest.split_at_mut(d.c);
            let ex = NormSiluExtras { shift, keep };
            group_norm_silu_backward_f32(x, gamma, beta, ex, dy, d, dx, de, dg, db);
            Ok(())
        };
        let with_keep = |shift: Option<&[f32]>, o: &mut [f32]| match &self.forward.keep {
            Some((mask, scale)) => {
                with_f32(mask, "dropout mask", |m| go(shift, Some((m, *scale)), o))
            }
            None => go(shift, None, o),
        };
        match &self.shift {
            Some(e) => with_f32(e, "shift", |e| with_keep(Some(e), &mut o))?,
            None => with_keep(None, &mut o)?,
        }
        let len = o.len();
        Ok((CpuStorage::F32(o), Shape::from(len)))
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

impl GroupNorm {
    /// dropout(SiLU(GroupNorm(x + e))) as diffusers' ResnetBlock2D applies it: `shift` e (N, C)
    /// is the projected time embedding added before its second norm (None for the first), and
    /// dropout with probability `p` follows when `mode` asks for it. One fused op on the AVX-512
    /// kernels, with the same forward values as the separate ops it replaces there.
    pub fn forward_silu(
        &self,
        x: &Tensor,
        shift: Option<&Tensor>,
        mode: &mut Mode<'_>,
        p: f64,
    ) -> candle_core::Result<Tensor> {
        let fused = x.device().is_cpu()
            && x.dtype() == DType::F32
            && shift.is_none_or(|e| e.dtype() == DType::F32 && e.device().is_cpu())
            && diffuq_linalg::conv::avx512_active()
            && diffuq_linalg::act::available();
        if !fused {
            let h = match shift {
                Some(e) => {
                    let mut dims = e.dims().to_vec();
                    dims.resize(x.rank(), 1);
                    x.broadcast_add(&e.reshape(dims)?)?
                }
                None => x.clone(),
            };
            return mode.dropout(&super::act::silu(&self.forward(&h)?)?, p);
        }
        let keep = match mode {
            Mode::Dropout(masks) if p > 0.0 => Some((
                masks.keep_mask(x, p)?.contiguous()?,
                (1.0 / (1.0 - p)) as f32,
            )),
            _ => None,
        };
        let op = NormSilu {
            groups: self.groups,
            eps: self.eps,
            keep,
        };
        let gb = Tensor::cat(&[&self.weight, &self.bias], 0)?;
        let x = x.contiguous()?;
        match shift {
            Some(e) => {
                let (n, c) = (x.dim(0)?, x.dim(1)?);
                if e.elem_count() != n * c {
                    candle_core::bail!(
                        "group norm + SiLU: shift of shape {:?} for input {:?}, want (N, C)",
                        e.dims(),
                        x.dims()
                    );
                }
                x.apply_op3(&e.contiguous()?, &gb, op)
            }
            None => x.apply_op2(&gb, op),
        }
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
    use crate::model::network::MaskSource;
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

    /// A fixed keep-mask: every third unit dropped.
    struct EveryThird;

    impl crate::model::network::MaskSource for EveryThird {
        fn keep_mask(&mut self, like: &Tensor, _p: f64) -> candle_core::Result<Tensor> {
            let v: Vec<f32> = (0..like.elem_count())
                .map(|i| if i % 3 == 2 { 0.0 } else { 1.0 })
                .collect();
            Tensor::from_vec(v, like.dims(), like.device())
        }
    }

    #[test]
    fn fused_norm_silu_dropout_equals_candle_nn_ops() {
        // Reference: candle_nn 0.11's GroupNorm and silu, candle's broadcast add and mask
        // product, and candle's autograd through them, in f32. Where the fused op runs (AVX-512
        // kernels) the forward must agree to f32 rounding of the normalisation (the fused
        // kernel accumulates statistics in f64 like the plain one) and the gradients to 1e-5
        // relative to their scale.
        if !(diffuq_linalg::conv::avx512_active() && diffuq_linalg::act::available()) {
            eprintln!("AVX-512 kernels not active: fused op not exercised");
            return;
        }
        let f32t = |t: Tensor| t.to_dtype(DType::F32).unwrap();
        for (shape, groups, shift, p) in [
            (&[3usize, 8, 5, 4][..], 4usize, true, 0.25),
            (&[2, 6, 7][..], 3, false, 0.0),
            (&[2, 4, 3, 3][..], 2, true, 0.0),
            (&[1, 8, 4, 4][..], 8, false, 0.5),
        ] {
            let (n, c) = (shape[0], shape[1]);
            let x = Var::from_tensor(&f32t(data(shape, 1))).unwrap();
            let g = Var::from_tensor(&f32t(data(&[c], 2))).unwrap();
            let b = Var::from_tensor(&f32t(data(&[c], 3))).unwrap();
            let e = Var::from_tensor(&f32t(data(&[n, c], 5))).unwrap();
            let w = f32t(data(shape, 4));
            let norm = GroupNorm::new(
                g.as_tensor().clone(),
                b.as_tensor().clone(),
                c,
                groups,
                1e-5,
            )
            .unwrap();
            let ours = norm
                .forward_silu(
                    x.as_tensor(),
                    shift.then_some(e.as_tensor()),
                    &mut Mode::Dropout(&mut EveryThird),
                    p,
                )
                .unwrap();
            let reference = {
                let nn = candle_nn::GroupNorm::new(
                    g.as_tensor().clone(),
                    b.as_tensor().clone(),
                    c,
                    groups,
                    1e-5,
                )
                .unwrap();
                let mut dims = vec![n, c];
                dims.resize(shape.len(), 1);
                let h = if shift {
                    x.as_tensor()
                        .broadcast_add(&e.as_tensor().reshape(dims).unwrap())
                        .unwrap()
                } else {
                    x.as_tensor().clone()
                };
                let y = candle_nn::ops::silu(&nn.forward(&h).unwrap()).unwrap();
                if p > 0.0 {
                    let keep = EveryThird.keep_mask(&y, p).unwrap();
                    ((y * keep).unwrap() / (1.0 - p)).unwrap()
                } else {
                    y
                }
            };
            let f64t = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let err = max_abs(&f64t(&ours), &f64t(&reference));
            assert!(err < 2e-6, "forward {shape:?}: {err:e}");
            let go = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (&reference * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut vars = vec![("x", &x), ("gamma", &g), ("beta", &b)];
            if shift {
                vars.push(("e", &e));
            } else {
                assert!(go.get(&e).is_none(), "no shift, no gradient for e");
            }
            for (name, v) in vars {
                let (a, r) = (f64t(go.get(v).unwrap()), f64t(gr.get(v).unwrap()));
                let scale = r
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                let err = max_abs(&a, &r);
                assert!(
                    err <= 1e-5 * scale.max(1.0),
                    "grad {name} {shape:?}: {err:e} (scale {scale})"
                );
            }
        }
    }
}
