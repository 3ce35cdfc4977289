//! Group normalisation (Wu & He 2018) forward and backward in one pass each, for NCHW-like
//! layouts (N, C, L): y = γ_c (x − μ_{n,g}) / √(σ²_{n,g} + ε) + β_c, with μ and the biased σ²
//! over the C/G channels of group g and all L positions, as torch.nn.GroupNorm. Statistics are
//! accumulated in f64. Backward with x̂ = (x − μ)/s, s = √(σ² + ε), over the M = (C/G)·L
//! elements of a group:
//!
//!   dβ_c = Σ_{n,l} dy,   dγ_c = Σ_{n,l} dy·x̂,   dx = (g − mean(g) − x̂·mean(g·x̂)) / s,  g = γ_c dy.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Layout of one call: N items, C channels, L positions per channel, G groups.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormDims {
    pub n: usize,
    pub c: usize,
    pub l: usize,
    pub groups: usize,
    pub eps: f64,
    /// Sum the statistics in 8 interleaved f64 lanes (vectorised; ≈ 8× shorter dependency
    /// chains) instead of one running sum: a different rounding of the same f64 sums, so
    /// callers choose it together with the other kernels that change low bits.
    pub lanes: bool,
}

trait Float: Copy + Send + Sync + Default {
    fn f(self) -> f64;
    fn from_f(v: f64) -> Self;
}
impl Float for f32 {
    fn f(self) -> f64 {
        f64::from(self)
    }
    fn from_f(v: f64) -> Self {
        v as f32
    }
}
impl Float for f64 {
    fn f(self) -> f64 {
        self
    }
    fn from_f(v: f64) -> Self {
        v
    }
}

/// Σ f(x) in 8 interleaved lanes, combined pairwise, then the tail.
#[inline(always)]
fn sum8<T: Float>(x: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in tail {
        s += f(v);
    }
    s
}

/// Mean and 1/s of one group's elements.
fn stats<T: Float>(x: &[T], eps: f64, lanes: bool) -> (f64, f64) {
    let m = x.len() as f64;
    if lanes {
        let mean = sum8(x, |v| v.f()) / m;
        let var = sum8(x, |v| (v.f() - mean) * (v.f() - mean)) / m;
        return (mean, 1.0 / (var + eps).sqrt());
    }
    let mean = x.iter().map(|v| v.f()).sum::<f64>() / m;
    let var = x.iter().map(|v| (v.f() - mean).powi(2)).sum::<f64>() / m;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Writes every value of y (which may be uninitialised).
fn forward<T: Float>(x: &[T], gamma: &[T], beta: &[T], d: GroupNormDims, y: &mut [MaybeUninit<T>]) {
    let cg = d.c / d.groups;
    let gl = cg * d.l;
    assert_eq!(x.len(), d.n * d.c * d.l, "group norm input size");
    assert_eq!(y.len(), x.len(), "group norm output size");
    y.par_chunks_mut(gl).enumerate().for_each(|(ng, yg)| {
        let xg = &x[ng * gl..(ng + 1) * gl];
        let (mean, inv) = stats(xg, d.eps, d.lanes);
        let g0 = (ng % d.groups) * cg;
        // Channel by channel (no per-element index division), same expression per element.
        for (c, (yc, xc)) in yg.chunks_mut(d.l).zip(xg.chunks(d.l)).enumerate() {
            let (gm, bt) = (gamma[g0 + c].f(), beta[g0 + c].f());
            for (yv, xv) in yc.iter_mut().zip(xc) {
                *yv = MaybeUninit::new(T::from_f((xv.f() - mean) * inv * gm + bt));
            }
        }
    });
}

fn backward<T: Float>(
    x: &[T],
    gamma: &[T],
    dy: &[T],
    d: GroupNormDims,
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let cg = d.c / d.groups;
    let gl = cg * d.l;
    // Per (n, c) partial sums of dy and dy·x̂, computed with dx; reduced over n after.
    let mut partial = vec![(0f64, 0f64); d.n * d.c];
    dx.par_chunks_mut(gl)
        .zip(partial.par_chunks_mut(cg))
        .enumerate()
        .for_each(|(ng, (dxg, part))| {
            let xg = &x[ng * gl..(ng + 1) * gl];
            let dyg = &dy[ng * gl..(ng + 1) * gl];
            let (mean, inv) = stats(xg, d.eps, d.lanes);
            let g0 = (ng % d.groups) * cg;
            let (mut sg, mut sgx) = (0f64, 0f64);
            // Channel by channel (no per-element index division), same sums in the same order.
            for (c, (xc, dc)) in xg.chunks(d.l).zip(dyg.chunks(d.l)).enumerate() {
                let gm = gamma[g0 + c].f();
                let (mut p0, mut p1) = (part[c].0, part[c].1);
                for (xv, dv) in xc.iter().zip(dc) {
                    let xh = (xv.f() - mean) * inv;
                    let g = gm * dv.f();
                    sg += g;
                    sgx += g * xh;
                    p0 += dv.f();
                    p1 += dv.f() * xh;
                }
                part[c] = (p0, p1);
            }
            let m = gl as f64;
            let (mg, mgx) = (sg / m, sgx / m);
            for (c, (oc, (xc, dc))) in dxg
                .chunks_mut(d.l)
                .zip(xg.chunks(d.l).zip(dyg.chunks(d.l)))
                .enumerate()
            {
                let gm = gamma[g0 + c].f();
                for (o, (xv, dv)) in oc.iter_mut().zip(xc.iter().zip(dc)) {
                    let xh = (xv.f() - mean) * inv;
                    let g = gm * dv.f();
                    *o = T::from_f((g - mg - xh * mgx) * inv);
                }
            }
        });
    for c in 0..d.c {
        let (mut b, mut g) = (0f64, 0f64);
        for n in 0..d.n {
            b += partial[n * d.c + c].0;
            g += partial[n * d.c + c].1;
        }
        dbeta[c] = T::from_f(b);
        dgamma[c] = T::from_f(g);
    }
}

pub fn group_norm_f32(x: &[f32], gamma: &[f32], beta: &[f32], d: GroupNormDims, y: &mut [f32]) {
    forward(x, gamma, beta, d, crate::as_uninit(y))
}

/// [`group_norm_f32`] into uninitialised storage: every value of `y` is written.
pub fn group_norm_f32_uninit(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    d: GroupNormDims,
    y: &mut [MaybeUninit<f32>],
) {
    forward(x, gamma, beta, d, y)
}

pub fn group_norm_f64(x: &[f64], gamma: &[f64], beta: &[f64], d: GroupNormDims, y: &mut [f64]) {
    forward(x, gamma, beta, d, crate::as_uninit(y))
}

pub fn group_norm_backward_f32(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    d: GroupNormDims,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    backward(x, gamma, dy, d, dx, dgamma, dbeta)
}

pub fn group_norm_backward_f64(
    x: &[f64],
    gamma: &[f64],
    dy: &[f64],
    d: GroupNormDims,
    dx: &mut [f64],
    dgamma: &mut [f64],
    dbeta: &mut [f64],
) {
    backward(x, gamma, dy, d, dx, dgamma, dbeta)
}
