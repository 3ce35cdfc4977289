//! Group normalisation (Wu & He 2018) forward and backward in one pass each, for NCHW-like
//! layouts (N, C, L): y = γ_c (x − μ_{n,g}) / √(σ²_{n,g} + ε) + β_c, with μ and the biased σ²
//! over the C/G channels of group g and all L positions, as torch.nn.GroupNorm. Statistics are
//! accumulated in f64. Backward with x̂ = (x − μ)/s, s = √(σ² + ε), over the M = (C/G)·L
//! elements of a group:
//!
//!   dβ_c = Σ_{n,l} dy,   dγ_c = Σ_{n,l} dy·x̂,   dx = (g − mean(g) − x̂·mean(g·x̂)) / s,  g = γ_c dy.
//!
//! A UNet residual block follows each norm with a SiLU, and its second norm also adds the time
//! embedding before and applies dropout after: [`group_norm_silu_f32_uninit`] and its backward do
//! y = dropout(SiLU(GroupNorm(x + e))) in one pass over the data each (the backward recomputes
//! the statistics and the activations), where separate tensor ops would each write a full-size
//! tensor forward and accumulate a full-size gradient backward.

use std::mem::MaybeUninit;

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
#[inline(always)]
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

/// [`stats`] with lanes for f32 on AVX-512: the eight lane sums as one f64 vector (the compiler
/// vectorises [`sum8`] only two lanes wide), same operations in the same order, same bits.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stats_lanes_f32(x: &[f32], eps: f64) -> (f64, f64) {
    use std::arch::x86_64::*;
    let m = x.len() as f64;
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    let combine = |acc: __m512d| {
        let mut a = [0f64; 8];
        _mm512_storeu_pd(a.as_mut_ptr(), acc);
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
    };
    let mut acc = _mm512_setzero_pd();
    for c in chunks.clone() {
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr())));
    }
    let mut s = combine(acc);
    for &v in tail {
        s += f64::from(v);
    }
    let mean = s / m;
    let mv = _mm512_set1_pd(mean);
    let mut acc = _mm512_setzero_pd();
    for c in chunks {
        let d = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr())), mv);
        acc = _mm512_add_pd(acc, _mm512_mul_pd(d, d));
    }
    let mut s = combine(acc);
    for &v in tail {
        s += (f64::from(v) - mean) * (f64::from(v) - mean);
    }
    (mean, 1.0 / (s / m + eps).sqrt())
}

/// Writes every value of y (which may be uninitialised).
fn forward<T: Float>(x: &[T], gamma: &[T], beta: &[T], d: GroupNormDims, y: &mut [MaybeUninit<T>]) {
    let cg = d.c / d.groups;
    let gl = cg * d.l;
    assert_eq!(x.len(), d.n * d.c * d.l, "group norm input size");
    assert_eq!(y.len(), x.len(), "group norm output size");
    crate::par::for_chunks_mut(y, gl, |ng, yg| {
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
    let mut partial = vec![[0f64; 3]; d.n * d.c];
    crate::par::for_chunks_mut2(dx, gl, &mut partial, cg, |ng, dxg, part| {
        let xg = &x[ng * gl..(ng + 1) * gl];
        let dyg = &dy[ng * gl..(ng + 1) * gl];
        let st = stats(xg, d.eps, d.lanes);
        let g0 = (ng % d.groups) * cg;
        backward_group(xg, dyg, &gamma[g0..g0 + cg], d.l, st, d.lanes, dxg, part);
    });
    reduce_partials(&partial, d, dgamma, dbeta);
}

/// Backward of one (n, group) block of C/G channels × L positions with its statistics (mean, 1/s):
/// writes dx and adds the block's Σ dy and Σ dy·x̂ per channel to `part[c][0]` and `part[c][1]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_group<T: Float>(
    xg: &[T],
    dyg: &[T],
    gamma: &[T],
    l: usize,
    (mean, inv): (f64, f64),
    lanes: bool,
    dxg: &mut [T],
    part: &mut [[f64; 3]],
) {
    let (mut sg, mut sgx) = (0f64, 0f64);
    if lanes {
        // Per channel Σ dy and Σ dy·x̂ in 8 interleaved lanes (combined as `sum8` does), and
        // the group's Σ γ dy = Σ_c γ_c Σ dy, Σ γ dy·x̂ likewise: two short dependency chains
        // per lane instead of four long ones per element.
        for (c, (xc, dc)) in xg.chunks(l).zip(dyg.chunks(l)).enumerate() {
            let (mut a0, mut a1) = ([0f64; 8], [0f64; 8]);
            let (xs, ds) = (xc.chunks_exact(8), dc.chunks_exact(8));
            let (xt, dt) = (xs.remainder(), ds.remainder());
            for (x8, d8) in xs.zip(ds) {
                for k in 0..8 {
                    let xh = (x8[k].f() - mean) * inv;
                    a0[k] += d8[k].f();
                    a1[k] += d8[k].f() * xh;
                }
            }
            let comb =
                |a: [f64; 8]| ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
            let (mut p0, mut p1) = (comb(a0), comb(a1));
            for (xv, dv) in xt.iter().zip(dt) {
                let xh = (xv.f() - mean) * inv;
                p0 += dv.f();
                p1 += dv.f() * xh;
            }
            let gm = gamma[c].f();
            sg += gm * p0;
            sgx += gm * p1;
            part[c][0] += p0;
            part[c][1] += p1;
        }
    } else {
        sums_in_order(xg, dyg, gamma, l, (mean, inv), part, (&mut sg, &mut sgx));
    }
    let m = xg.len() as f64;
    let (mg, mgx) = (sg / m, sgx / m);
    for (c, (oc, (xc, dc))) in dxg
        .chunks_mut(l)
        .zip(xg.chunks(l).zip(dyg.chunks(l)))
        .enumerate()
    {
        let gm = gamma[c].f();
        for (o, (xv, dv)) in oc.iter_mut().zip(xc.iter().zip(dc)) {
            let xh = (xv.f() - mean) * inv;
            let g = gm * dv.f();
            *o = T::from_f((g - mg - xh * mgx) * inv);
        }
    }
}

/// [`backward_group`]'s sums one element at a time in order (the arithmetic of the gemm kernels'
/// path, which the committed models' replay checks to the bit).
#[inline(always)]
fn sums_in_order<T: Float>(
    xg: &[T],
    dyg: &[T],
    gamma: &[T],
    l: usize,
    (mean, inv): (f64, f64),
    part: &mut [[f64; 3]],
    (sg, sgx): (&mut f64, &mut f64),
) {
    // Channel by channel (no per-element index division), same sums in the same order.
    for (c, (xc, dc)) in xg.chunks(l).zip(dyg.chunks(l)).enumerate() {
        let gm = gamma[c].f();
        let (mut p0, mut p1) = (part[c][0], part[c][1]);
        for (xv, dv) in xc.iter().zip(dc) {
            let xh = (xv.f() - mean) * inv;
            let g = gm * dv.f();
            *sg += g;
            *sgx += g * xh;
            p0 += dv.f();
            p1 += dv.f() * xh;
        }
        part[c][0] = p0;
        part[c][1] = p1;
    }
}

/// dβ_c and dγ_c: the per-(n, c) partial sums reduced over n.
fn reduce_partials<T: Float>(
    partial: &[[f64; 3]],
    d: GroupNormDims,
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    for c in 0..d.c {
        let (mut b, mut g) = (0f64, 0f64);
        for n in 0..d.n {
            b += partial[n * d.c + c][0];
            g += partial[n * d.c + c][1];
        }
        dbeta[c] = T::from_f(b);
        dgamma[c] = T::from_f(g);
    }
}

/// The optional parts of the fused GroupNorm → SiLU (→ dropout) of a residual block,
/// [`group_norm_silu_f32_uninit`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NormSiluExtras<'a> {
    /// e (N·C): added to x per (item, channel) before normalising — the time embedding that
    /// diffusers' ResnetBlock2D adds before its second norm.
    pub shift: Option<&'a [f32]>,
    /// Dropout after the SiLU: the keep-mask (N·C·L of 0 and 1) and the scale 1/(1 − p) of the
    /// kept units (inverted dropout).
    pub keep: Option<(&'a [f32], f32)>,
}

/// One (n, group) block of x, with the block's shift added when there is one (in f32, as a
/// broadcast add would).
#[inline(always)]
fn shifted<'a>(
    xg: &'a [f32],
    shift: Option<&[f32]>,
    l: usize,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    match shift {
        None => xg,
        Some(e) => {
            scratch.clear();
            for (xc, &ev) in xg.chunks(l).zip(e) {
                scratch.extend(xc.iter().map(|&v| v + ev));
            }
            scratch
        }
    }
}

/// The normalised, affine values a = γ_c x̂ + β_c of one block (the plain forward's expression).
///
/// # Safety
/// AVX-512F must be available (8 values at a time in f64 vectors: the same operations in the
/// same order as one at a time, so the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn affine_block(
    zg: &[f32],
    gamma: &[f32],
    beta: &[f32],
    l: usize,
    (mean, inv): (f64, f64),
    a: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (mv, iv) = (_mm512_set1_pd(mean), _mm512_set1_pd(inv));
    for (c, (ac, zc)) in a.chunks_mut(l).zip(zg.chunks(l)).enumerate() {
        let (gm, bt) = (gamma[c].f(), beta[c].f());
        let (gv, bv) = (_mm512_set1_pd(gm), _mm512_set1_pd(bt));
        let mut i = 0;
        while i + 8 <= l {
            let z = _mm512_cvtps_pd(_mm256_loadu_ps(zc.as_ptr().add(i)));
            let r = _mm512_add_pd(
                _mm512_mul_pd(_mm512_mul_pd(_mm512_sub_pd(z, mv), iv), gv),
                bv,
            );
            _mm256_storeu_ps(ac.as_mut_ptr().add(i).cast::<f32>(), _mm512_cvtpd_ps(r));
            i += 8;
        }
        for (av, zv) in ac[i..].iter_mut().zip(&zc[i..]) {
            *av = MaybeUninit::new(((zv.f() - mean) * inv * gm + bt) as f32);
        }
    }
}

fn check_norm_silu(x: &[f32], gamma: &[f32], beta: &[f32], ex: &NormSiluExtras, d: GroupNormDims) {
    assert!(
        crate::act::available(),
        "fused group norm + SiLU needs AVX-512F"
    );
    assert!(
        d.groups > 0 && d.c.is_multiple_of(d.groups),
        "groups divide the channels"
    );
    assert_eq!(x.len(), d.n * d.c * d.l, "group norm input size");
    assert!(
        gamma.len() == d.c && beta.len() == d.c,
        "group norm γ, β size"
    );
    if let Some(e) = ex.shift {
        assert_eq!(e.len(), d.n * d.c, "group norm shift size");
    }
    if let Some((m, _)) = ex.keep {
        assert_eq!(m.len(), x.len(), "dropout mask size");
    }
}

/// y = dropout(SiLU(GroupNorm(x + e))) in one pass: the same values, bit for bit, as the plain
/// kernel followed by [`crate::act::silu_f32`], a multiplication by the keep-mask and one by the
/// scale (each step rounded to f32 as the separate passes round it), without writing and reading
/// back the three intermediate tensors. Every value of `y` is written. Panics without AVX-512F.
pub fn group_norm_silu_f32_uninit(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ex: NormSiluExtras,
    d: GroupNormDims,
    y: &mut [MaybeUninit<f32>],
) {
    check_norm_silu(x, gamma, beta, &ex, d);
    assert_eq!(y.len(), x.len(), "group norm output size");
    let cg = d.c / d.groups;
    let gl = cg * d.l;
    #[cfg(target_arch = "x86_64")]
    crate::par::for_chunks_mut(y, gl, |ng, yg| {
        // SAFETY: AVX-512F checked by check_norm_silu.
        unsafe { norm_silu_block(x, gamma, beta, &ex, d, ng, yg) }
    });
}

/// Block ng = (n, group) of the fused kernels' input, z = x (+ e, in `scratch`), and its
/// statistics (mean, 1/s). The fused kernels run only with AVX-512.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_input<'a>(
    x: &'a [f32],
    ex: &NormSiluExtras,
    d: GroupNormDims,
    ng: usize,
    scratch: &'a mut Vec<f32>,
) -> (&'a [f32], (f64, f64)) {
    let cg = d.c / d.groups;
    let gl = cg * d.l;
    let zg = shifted(
        &x[ng * gl..(ng + 1) * gl],
        ex.shift.map(|e| &e[ng * cg..(ng + 1) * cg]),
        d.l,
        scratch,
    );
    let st = if d.lanes {
        stats_lanes_f32(zg, d.eps)
    } else {
        stats(zg, d.eps, false)
    };
    (zg, st)
}

/// Block ng = (n, group) of [`group_norm_silu_f32_uninit`], compiled for AVX-512 so that the
/// f64 loops vectorise 8 wide (the same operations in the same order as without: same bits).
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn norm_silu_block(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ex: &NormSiluExtras,
    d: GroupNormDims,
    ng: usize,
    yg: &mut [MaybeUninit<f32>],
) {
    let cg = d.c / d.groups;
    let gl = cg * d.l;
    let g0 = (ng % d.groups) * cg;
    let mut scratch = Vec::new();
    let (zg, st) = block_input(x, ex, d, ng, &mut scratch);
    affine_block(zg, &gamma[g0..g0 + cg], &beta[g0..g0 + cg], d.l, st, yg);
    // SAFETY: affine_block wrote every value of yg.
    let yg = unsafe { &mut *(yg as *mut [MaybeUninit<f32>] as *mut [f32]) };
    crate::act::silu_in_place_f32(yg);
    if let Some((mask, scale)) = ex.keep {
        for (v, &m) in yg.iter_mut().zip(&mask[ng * gl..(ng + 1) * gl]) {
            // (h·keep) then candle's affine v·mul + add with add = 0.
            *v = (*v * m) * scale + 0.0;
        }
    }
}

/// Gradients of [`group_norm_silu_f32_uninit`] from dy: dx, dγ, dβ and (with a shift) de
/// (N·C, Σ over positions of dx). Recomputes the forward's statistics and activations. Panics
/// without AVX-512F.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_backward_f32(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ex: NormSiluExtras,
    dy: &[f32],
    d: GroupNormDims,
    dx: &mut [f32],
    dshift: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    check_norm_silu(x, gamma, beta, &ex, d);
    assert!(
        dy.len() == x.len() && dx.len() == x.len(),
        "group norm gradient sizes"
    );
    assert_eq!(
        dshift.len(),
        if ex.shift.is_some() { d.n * d.c } else { 0 },
        "group norm shift gradient size"
    );
    assert!(
        dgamma.len() == d.c && dbeta.len() == d.c,
        "group norm dγ, dβ size"
    );
    let cg = d.c / d.groups;
    let gl = cg * d.l;
    // Per (n, c): Σ da, Σ da·x̂ (for dβ, dγ) and Σ_l dx (de).
    let mut partial = vec![[0f64; 3]; d.n * d.c];
    #[cfg(target_arch = "x86_64")]
    crate::par::for_chunks_mut2(dx, gl, &mut partial, cg, |ng, dxg, part| {
        // SAFETY: AVX-512F checked by check_norm_silu.
        unsafe { norm_silu_backward_block(x, gamma, beta, &ex, dy, d, ng, dxg, part) }
    });
    for (de, p) in dshift.iter_mut().zip(&partial) {
        *de = p[2] as f32;
    }
    reduce_partials(&partial, d, dgamma, dbeta);
}

/// Block ng = (n, group) of [`group_norm_silu_backward_f32`] (dx and the per-channel sums),
/// compiled for AVX-512 like [`norm_silu_block`].
///
/// # Safety
/// AVX-512F must be available.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn norm_silu_backward_block(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    ex: &NormSiluExtras,
    dy: &[f32],
    d: GroupNormDims,
    ng: usize,
    dxg: &mut [f32],
    part: &mut [[f64; 3]],
) {
    let cg = d.c / d.groups;
    let gl = cg * d.l;
    let g0 = (ng % d.groups) * cg;
    let (gamma, beta) = (&gamma[g0..g0 + cg], &beta[g0..g0 + cg]);
    let mut scratch = Vec::new();
    let (zg, st) = block_input(x, ex, d, ng, &mut scratch);
    // da = g · silu′(a), with g the gradient behind the dropout: (dy·scale + 0)·keep, as
    // the backward of candle's affine and multiplication computes it.
    let mut a = Vec::with_capacity(gl);
    affine_block(zg, gamma, beta, d.l, st, &mut a.spare_capacity_mut()[..gl]);
    // SAFETY: affine_block wrote the first gl values.
    unsafe { a.set_len(gl) };
    let dyg = &dy[ng * gl..(ng + 1) * gl];
    let mut da: Vec<f32> = match ex.keep {
        Some((mask, scale)) => dyg
            .iter()
            .zip(&mask[ng * gl..(ng + 1) * gl])
            .map(|(&g, &m)| (g * scale + 0.0) * m)
            .collect(),
        None => dyg.to_vec(),
    };
    crate::act::silu_grad_in_place_f32(&a, &mut da);
    backward_group(zg, &da, gamma, d.l, st, d.lanes, dxg, part);
    if ex.shift.is_some() {
        for (p, dc) in part.iter_mut().zip(dxg.chunks(d.l)) {
            p[2] = dc.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Deterministic test values in about [−2, 2].
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.618 + seed as f32 * 0.37).sin() * 2.0)
            .collect()
    }

    #[test]
    fn fused_norm_silu_dropout_equals_the_separate_passes() {
        // Expected numbers: this crate's plain group norm, silu_f32 / silu_backward_f32 and the
        // mask products written out as the separate tensor ops compute them (those kernels are
        // checked against torch and candle in diffuq's model tests); the fused kernel must
        // give the same bits for y, dx, dγ, dβ, and de = Σ_l dx to f32 rounding of an f64 sum.
        if !crate::act::available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        for (n, c, l, groups, shift, keep) in [
            (3, 8, 20, 4, true, true),
            (2, 6, 7, 3, false, false),
            (2, 4, 9, 2, true, false),
            (1, 4, 16, 1, false, true),
        ] {
            let d = GroupNormDims {
                n,
                c,
                l,
                groups,
                eps: 1e-5,
                lanes: true,
            };
            let x = values(n * c * l, 1);
            let (gamma, beta) = (values(c, 2), values(c, 3));
            let e = values(n * c, 4);
            let mask: Vec<f32> = (0..n * c * l)
                .map(|i| ((i * 7) % 5 != 0) as u8 as f32)
                .collect();
            let dy = values(n * c * l, 5);
            let scale = (1.0 / (1.0 - 0.2f64)) as f32;
            let ex = NormSiluExtras {
                shift: shift.then_some(&e[..]),
                keep: keep.then_some((&mask[..], scale)),
            };

            // Separate passes.
            let z: Vec<f32> = if shift {
                x.iter().enumerate().map(|(i, v)| v + e[i / l]).collect()
            } else {
                x.clone()
            };
            let mut a = vec![0f32; z.len()];
            group_norm_f32(&z, &gamma, &beta, d, &mut a);
            let mut s = vec![0f32; z.len()];
            crate::act::silu_f32(&a, &mut s);
            let want_y: Vec<f32> = if keep {
                s.iter()
                    .zip(&mask)
                    .map(|(v, m)| (v * m) * scale + 0.0)
                    .collect()
            } else {
                s
            };
            let g: Vec<f32> = if keep {
                dy.iter()
                    .zip(&mask)
                    .map(|(v, m)| (v * scale + 0.0) * m)
                    .collect()
            } else {
                dy.clone()
            };
            let mut da = vec![0f32; z.len()];
            crate::act::silu_backward_f32(&a, &g, &mut da);
            let (mut want_dx, mut want_dg, mut want_db) =
                (vec![0f32; z.len()], vec![0f32; c], vec![0f32; c]);
            group_norm_backward_f32(&z, &gamma, &da, d, &mut want_dx, &mut want_dg, &mut want_db);

            // Fused.
            let mut y = vec![0f32; z.len()];
            group_norm_silu_f32_uninit(&x, &gamma, &beta, ex, d, crate::as_uninit(&mut y));
            let (mut dx, mut dg, mut db) = (vec![0f32; z.len()], vec![0f32; c], vec![0f32; c]);
            let mut de = vec![0f32; if shift { n * c } else { 0 }];
            group_norm_silu_backward_f32(
                &x, &gamma, &beta, ex, &dy, d, &mut dx, &mut de, &mut dg, &mut db,
            );
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let case = format!("n {n} c {c} l {l} groups {groups} shift {shift} keep {keep}");
            assert_eq!(bits(&y), bits(&want_y), "y, {case}");
            assert_eq!(bits(&dx), bits(&want_dx), "dx, {case}");
            assert_eq!(bits(&dg), bits(&want_dg), "dγ, {case}");
            assert_eq!(bits(&db), bits(&want_db), "dβ, {case}");
            for (i, v) in de.iter().enumerate() {
                let want: f64 = want_dx[i * l..(i + 1) * l].iter().map(|&v| v as f64).sum();
                assert_eq!(*v, want as f32, "de[{i}], {case}");
            }
            if keep {
                // Dropped units carry neither value nor gradient.
                assert!(y.iter().zip(&mask).all(|(v, m)| *m == 1.0 || *v == 0.0));
            }
        }
    }
}
