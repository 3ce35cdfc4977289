//! A 2-D convolution in NCHW layout, f32 and f64, forward and backward.
//!
//! Two implementations of the same sums:
//!
//! * im2col + one gemm per image (Chellapilla et al. 2006), every CPU and f64: with
//!   cols_n = im2col(x_n) of shape (C·kh·kw, Ho·Wo), row (c·kh + ky)·kw + kx, the convolution is
//!   y_n = W (O, C·kh·kw) · cols_n + b, its weight gradient Σ_n dy_n colsₙᵀ, its bias gradient
//!   Σ dy, and its input gradient col2im(Wᵀ dy_n). Columns are built one image at a time into a
//!   per-thread buffer (never a batch-sized one), parallel over images with rayon.
//! * f32 on CPUs with AVX-512F (module `fast`, kernels in [`crate::kernels`]): the same products
//!   register-blocked by hand — a stride-1 forward reading the column matrix in place from a
//!   zero-padded copy of the image (other strides packing it 32 positions at a time), the input
//!   gradient of a stride-1 convolution as a forward convolution of dy with the flipped kernel,
//!   and the weight gradient on the same register tile over a channels-last copy of the padded
//!   image (no im2col anywhere). 2.3–3.5× faster than the first on the bench shapes; a
//!   different summation order, so different low bits ([`ConvKernels`] picks one).
//!
//! Both are deterministic: no result depends on the thread count or on scheduling.
//!
//! The public entry points are non-generic (f32 and f64): generic code is compiled in the crate
//! that instantiates it, and only this crate is built at opt-level 3 in every profile.

use rayon::prelude::*;

/// Output side length of a convolution.
pub fn conv_out_len(len: usize, k: usize, stride: usize, pad: usize) -> usize {
    (len + 2 * pad - k) / stride + 1
}

// ---------------------------------------------------------------------------------------------
// The fused convolution: one image at a time, no batch-sized im2col buffer.

/// Geometry of one 2-D convolution: input (N, C, H, W), weight (O, C, kh, kw), stride (sh, sw),
/// zero padding (ph, pw) on both sides of each axis, dilation 1, one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
}

impl ConvGeom {
    /// Output height.
    pub fn ho(&self) -> usize {
        conv_out_len(self.h, self.kh, self.sh, self.ph)
    }

    /// Output width.
    pub fn wo(&self) -> usize {
        conv_out_len(self.w, self.kw, self.sw, self.pw)
    }

    /// Whether the kernel fits the padded input and the strides are positive (else the caller
    /// must reject the shapes before calling the kernels, which assert it).
    pub fn is_valid(&self) -> bool {
        self.kh >= 1
            && self.kw >= 1
            && self.sh >= 1
            && self.sw >= 1
            && self.h + 2 * self.ph >= self.kh
            && self.w + 2 * self.pw >= self.kw
    }

    fn l(&self) -> usize {
        self.ho() * self.wo()
    }

    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// A 1×1, stride-1, unpadded conv reads the image itself as its column matrix.
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
}

/// The element types the fused kernels are compiled for.
trait ConvElem:
    Copy + Default + Send + Sync + std::ops::AddAssign + std::ops::Add<Output = Self> + 'static
{
    const ONE: Self;
}
impl ConvElem for f32 {
    const ONE: Self = 1.0;
}
impl ConvElem for f64 {
    const ONE: Self = 1.0;
}

/// Column matrix (C·kh·kw, Ho·Wo) of one image (C, H, W); row (c·kh + ky)·kw + kx.
fn im2col_one<T: ConvElem>(x: &[T], g: &ConvGeom, cols: &mut [T]) {
    let (ho, wo, l) = (g.ho(), g.wo(), g.l());
    for c in 0..g.c {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                let row = &mut cols[r * l..(r + 1) * l];
                for oy in 0..ho {
                    let seg = &mut row[oy * wo..(oy + 1) * wo];
                    let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        seg.fill(T::default());
                        continue;
                    }
                    let xr = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if g.sw == 1 {
                        // ix = ox + kx − pw: a shifted copy with zero margins.
                        let shift = kx as isize - g.pw as isize;
                        let lo = (-shift).clamp(0, wo as isize) as usize;
                        let hi = (g.w as isize - shift).clamp(lo as isize, wo as isize) as usize;
                        seg[..lo].fill(T::default());
                        seg[hi..].fill(T::default());
                        let start = (lo as isize + shift) as usize;
                        seg[lo..hi].copy_from_slice(&xr[start..start + (hi - lo)]);
                    } else {
                        for (ox, v) in seg.iter_mut().enumerate() {
                            let ix = (ox * g.sw + kx) as isize - g.pw as isize;
                            *v = if ix >= 0 && ix < g.w as isize {
                                xr[ix as usize]
                            } else {
                                T::default()
                            };
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_one`]: x (C, H, W) = Σ of every column entry onto the pixel it read.
fn col2im_one<T: ConvElem>(cols: &[T], g: &ConvGeom, x: &mut [T]) {
    let (ho, wo, l) = (g.ho(), g.wo(), g.l());
    x.fill(T::default());
    for c in 0..g.c {
        let xc = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                let row = &cols[r * l..(r + 1) * l];
                for oy in 0..ho {
                    let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let xr = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, &v) in row[oy * wo..(oy + 1) * wo].iter().enumerate() {
                        let ix = (ox * g.sw + kx) as isize - g.pw as isize;
                        if ix >= 0 && ix < g.w as isize {
                            xr[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Row-major dst (m × n, row stride `ldd`) = lhs · rhs (or += when `acc`), lhs (m × k) and rhs
/// (k × n) given by (row stride, column stride), so a transpose is a swap of strides.
#[allow(clippy::too_many_arguments)]
fn mm<T: ConvElem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    ldd: usize,
    acc: bool,
    (lhs, lrs, lcs): (&[T], usize, usize),
    (rhs, rrs, rcs): (&[T], usize, usize),
    par: gemm::Parallelism,
) {
    // Bounds of the strided views: the last element each reads or writes is inside its slice.
    assert!(
        m == 0 || n == 0 || (m - 1) * ldd + n <= dst.len(),
        "gemm dst bounds"
    );
    assert!(
        m == 0 || k == 0 || (m - 1) * lrs + (k - 1) * lcs < lhs.len(),
        "gemm lhs bounds"
    );
    assert!(
        k == 0 || n == 0 || (k - 1) * rrs + (n - 1) * rcs < rhs.len(),
        "gemm rhs bounds"
    );
    // SAFETY: the asserts above keep every strided access inside the three slices, `dst` is
    // borrowed mutably and does not alias `lhs`/`rhs` (distinct borrows), and T is f32 or f64,
    // both supported by gemm.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            acc,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// The sizes both forward implementations require (they assert rather than return errors: the
/// caller, `model::conv`, has checked the shapes).
fn check_forward(g: &ConvGeom, x: usize, w: usize, bias: Option<usize>, y: usize) {
    assert!(g.is_valid(), "conv geometry {g:?}");
    assert_eq!(x, g.n * g.c * g.h * g.w, "conv input size");
    assert_eq!(w, g.o * g.ckk(), "conv weight size");
    assert_eq!(y, g.n * g.o * g.l(), "conv output size");
    if let Some(b) = bias {
        assert_eq!(b, g.o, "conv bias size");
    }
}

/// The sizes both backward implementations require: inputs [x, w, dy], outputs [dx, dw, db].
fn check_backward(g: &ConvGeom, [x, w, dy]: [usize; 3], [dx, dw, db]: [usize; 3]) {
    assert!(g.is_valid(), "conv geometry {g:?}");
    assert_eq!(x, g.n * g.c * g.h * g.w, "conv input size");
    assert_eq!(w, g.o * g.ckk(), "conv weight size");
    assert_eq!(dy, g.n * g.o * g.l(), "conv output-gradient size");
    assert_eq!(dx, x, "conv input-gradient size");
    assert_eq!(dw, w, "conv weight-gradient size");
    assert_eq!(db, g.o, "conv bias-gradient size");
}

/// dW, db = the per-group partial sums added in group order (the fixed order that keeps the
/// gradients' bits independent of the thread count).
fn add_partials<T: ConvElem>(partials: &[(Vec<T>, Vec<T>)], dw: &mut [T], db: &mut [T]) {
    dw.fill(T::default());
    db.fill(T::default());
    for (gw, gb) in partials {
        for (a, &b) in dw.iter_mut().zip(gw) {
            *a += b;
        }
        for (a, &b) in db.iter_mut().zip(gb) {
            *a += b;
        }
    }
}

/// One image's input gradient dx_i = col2im(Wᵀ dy_i) (a 1×1 direct convolution writes Wᵀ dy_i
/// straight into dx_i); `dcols` is a reusable buffer.
fn input_grad_one<T: ConvElem>(
    g: &ConvGeom,
    weight: &[T],
    dyi: &[T],
    dxi: &mut [T],
    dcols: &mut Vec<T>,
    par: gemm::Parallelism,
) {
    let (l, ckk) = (g.l(), g.ckk());
    if g.direct() {
        mm(
            (ckk, l, g.o),
            dxi,
            l,
            false,
            (weight, 1, ckk),
            (dyi, l, 1),
            par,
        );
    } else {
        dcols.resize(ckk * l, T::default());
        mm(
            (ckk, l, g.o),
            dcols,
            l,
            false,
            (weight, 1, ckk),
            (dyi, l, 1),
            par,
        );
        col2im_one(dcols, g, dxi);
    }
}

/// y (N, O, Ho, Wo) = conv(x, weight) + bias, one image at a time: im2col of one image into a
/// per-thread buffer, one gemm W (O, C·kh·kw) · cols. Parallel over images when there are at
/// least as many images as threads, else inside each gemm.
fn forward<T: ConvElem>(g: &ConvGeom, x: &[T], weight: &[T], bias: Option<&[T]>, y: &mut [T]) {
    check_forward(g, x.len(), weight.len(), bias.map(<[T]>::len), y.len());
    let (l, ckk, chw) = (g.l(), g.ckk(), g.c * g.h * g.w);
    let one = |xi: &[T], yi: &mut [T], cols: &mut Vec<T>, par| {
        let src: &[T] = if g.direct() {
            xi
        } else {
            cols.resize(ckk * l, T::default());
            im2col_one(xi, g, cols);
            cols
        };
        mm(
            (g.o, l, ckk),
            yi,
            l,
            false,
            (weight, ckk, 1),
            (src, l, 1),
            par,
        );
        if let Some(b) = bias {
            for (row, &bv) in yi.chunks_mut(l).zip(b) {
                for v in row {
                    *v += bv;
                }
            }
        }
    };
    let t = threads();
    if t > 1 && g.n >= t {
        y.par_chunks_mut(g.o * l)
            .zip(x.par_chunks(chw))
            .for_each_init(Vec::new, |cols, (yi, xi)| {
                one(xi, yi, cols, gemm::Parallelism::None)
            });
    } else {
        let par = if t > 1 {
            gemm::Parallelism::Rayon(t)
        } else {
            gemm::Parallelism::None
        };
        let mut cols = Vec::new();
        for (yi, xi) in y.chunks_mut(g.o * l).zip(x.chunks(chw)) {
            one(xi, yi, &mut cols, par);
        }
    }
}

/// Most partial weight gradients the backward keeps: images are split into this many contiguous
/// groups whatever the thread count, and the groups' partial sums are added in group order, so
/// the gradient's bits do not depend on the number of threads or on scheduling.
const GRAD_GROUPS: usize = 16;

/// Gradients of [`forward`] given dy (N, O, Ho, Wo): dx (N, C, H, W) = col2im(Wᵀ dy_n),
/// dW (O, C·kh·kw) = Σ_n dy_n colsₙᵀ, db (O) = Σ_{n, positions} dy. Deterministic (see
/// `GRAD_GROUPS`); one image's columns at a time per group.
fn backward<T: ConvElem>(
    g: &ConvGeom,
    x: &[T],
    weight: &[T],
    dy: &[T],
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
) {
    check_backward(
        g,
        [x.len(), weight.len(), dy.len()],
        [dx.len(), dw.len(), db.len()],
    );
    let (l, ckk, chw) = (g.l(), g.ckk(), g.c * g.h * g.w);
    let groups = g.n.clamp(1, GRAD_GROUPS);
    let t = threads();
    let par = if t > 1 && groups < t {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    };
    // Contiguous image ranges [b_i, b_{i+1}) and the matching disjoint slices of dx.
    let bounds: Vec<usize> = (0..=groups).map(|i| i * g.n / groups).collect();
    let mut dx_parts = Vec::with_capacity(groups);
    let mut rest = dx;
    for i in 0..groups {
        let (head, tail) = rest.split_at_mut((bounds[i + 1] - bounds[i]) * chw);
        dx_parts.push((i, head));
        rest = tail;
    }
    let partials: Vec<(Vec<T>, Vec<T>)> = dx_parts
        .into_par_iter()
        .map(|(i, dxg)| {
            let mut gw = vec![T::default(); g.o * ckk];
            let mut gb = vec![T::default(); g.o];
            let mut cols = Vec::new();
            let mut dcols = Vec::new();
            for (j, img) in (bounds[i]..bounds[i + 1]).enumerate() {
                let xi = &x[img * chw..(img + 1) * chw];
                let dyi = &dy[img * g.o * l..(img + 1) * g.o * l];
                let dxi = &mut dxg[j * chw..(j + 1) * chw];
                let src: &[T] = if g.direct() {
                    xi
                } else {
                    cols.resize(ckk * l, T::default());
                    im2col_one(xi, g, &mut cols);
                    &cols
                };
                // dW += dy_i (O × L) · colsᵀ (L × C·kh·kw).
                mm(
                    (g.o, ckk, l),
                    &mut gw,
                    ckk,
                    j > 0,
                    (dyi, l, 1),
                    (src, 1, l),
                    par,
                );
                for (b, row) in gb.iter_mut().zip(dyi.chunks(l)) {
                    for &v in row {
                        *b += v;
                    }
                }
                // dcols = Wᵀ (C·kh·kw × O) · dy_i (O × L), then back onto the image.
                input_grad_one(g, weight, dyi, dxi, &mut dcols, par);
            }
            (gw, gb)
        })
        .collect();
    add_partials(&partials, dw, db);
}

/// Input gradient of [`forward`] alone, dx_n = col2im(Wᵀ dy_n), parallel over images: the
/// AVX-512 backward uses it for strided convolutions (stride 1 is a forward convolution of dy).
#[cfg(target_arch = "x86_64")]
fn input_grad_gemm<T: ConvElem>(g: &ConvGeom, weight: &[T], dy: &[T], dx: &mut [T]) {
    let chw = g.c * g.h * g.w;
    dx.par_chunks_mut(chw)
        .zip(dy.par_chunks(g.o * g.l()))
        .for_each_init(Vec::new, |dcols, (dxi, dyi)| {
            input_grad_one(g, weight, dyi, dxi, dcols, gemm::Parallelism::None)
        });
}

/// The f32 convolution on the AVX-512 micro-kernels of [`crate::kernels`].
///
/// 3 × 3 stride-1 convolutions with padding ≤ 2 and channel counts in whole vectors of 16 (the
/// UNets' and most of the Inception's) go to Winograd's F(2 × 2, 3 × 3) instead
/// ([`crate::winograd`]): forward, hence the input gradient, and weight gradient. The rest of
/// this comment describes the direct kernels every other convolution runs on.
///
/// Forward: each image's output is the weight times the column matrix, read in place from the
/// zero-padded image at stride 1 — 32 output channels × 8 positions at a time
/// ([`crate::kernels::tile_32x8`]) where that tile's lanes are ≥ 95% useful, else 8 channels ×
/// 32 positions ([`crate::kernels::tile_8x32_runs`]) — and otherwise packed 32 positions × KC
/// rows at a time straight from the image (never the whole matrix). Every path starts each
/// output from its bias and adds the summed index in the same order, so the bits agree.
/// Each output value is one FMA chain over the summed index in the same order whatever the batch
/// split or thread count. Input gradient: for stride 1, dx is the forward convolution of dy with
/// the flipped, transposed kernel and padding k − 1 − p; otherwise Wᵀ dy + col2im. Weight
/// gradient, over a fixed grouping of images: with 16 or more input channels, the same 8 × 32
/// tile summing over output positions (dy as the broadcast operand, 32 channels of the
/// channels-last padded image as the vector operand); with fewer, dot products along the output
/// positions ([`crate::kernels::dot_4x6`]) of dy's rows with the column matrix's rows.
#[cfg(target_arch = "x86_64")]
mod fast {
    use super::*;
    use crate::kernels::{self, Start, DA, DB, MR, NR};
    use std::mem::MaybeUninit;

    /// Rows of the column matrix packed per panel (256 × 32 × 4 B = 32 KiB, one L1 cache).
    const KC: usize = 256;
    /// Images whose column matrices are held at once in the weight gradient (memory bound).
    const SUB: usize = 4;

    use crate::SyncPtr;

    /// W (O, K) → `[tile][k][MR]`, rows past O zero (see [`pack_rows8`]).
    fn pack_weight(w: &[f32], o: usize, k: usize) -> Vec<f32> {
        let mut p = Vec::new();
        // SAFETY: this module runs only where AVX-512F was detected. In parallel: this runs on
        // the calling thread before the convolution's own parallel loop (≈ 3% of an 8×8 one).
        unsafe { pack_rows8(w, o, k, &mut p, o * k >= 1 << 14) };
        p
    }

    /// Rows k0..k0+kc of image `xi`'s column matrix at output positions j0..j0+cols, into
    /// `buf[kk·NR + j]`.
    #[allow(clippy::too_many_arguments)]
    fn pack_panel(
        xi: &[f32],
        g: &ConvGeom,
        k0: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        jb: usize,
        buf: &mut [f32],
    ) {
        assert!(jb + cols <= NR);
        let wo = g.wo();
        // Runs of positions on one output row: (oy, first ox, length, offset in the panel).
        let mut segs = [(0usize, 0usize, 0usize, 0usize); NR];
        let mut nseg = 0;
        let mut j = 0;
        while j < cols {
            let l = j0 + j;
            let (oy, ox) = (l / wo, l % wo);
            let len = (wo - ox).min(cols - j);
            segs[nseg] = (oy, ox, len, jb + j);
            nseg += 1;
            j += len;
        }
        let khw = g.kh * g.kw;
        let (mut c, mut ky, mut kx) = (k0 / khw, (k0 % khw) / g.kw, k0 % g.kw);
        for kk in 0..kc {
            let xc = &xi[c * g.h * g.w..(c + 1) * g.h * g.w];
            let row = &mut buf[kk * NR..kk * NR + NR];
            for &(oy, ox0, len, jp) in &segs[..nseg] {
                let seg = &mut row[jp..jp + len];
                let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                if iy < 0 || iy >= g.h as isize {
                    seg.fill(0.0);
                    continue;
                }
                let xr = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                if g.sw == 1 {
                    // ix = ox + kx − pw for ox in ox0..ox0+len: a shifted copy, zero outside.
                    let shift = (ox0 + kx) as isize - g.pw as isize;
                    let lo = (-shift).clamp(0, len as isize) as usize;
                    let hi = (g.w as isize - shift).clamp(lo as isize, len as isize) as usize;
                    seg[..lo].fill(0.0);
                    seg[hi..].fill(0.0);
                    if hi > lo {
                        let s0 = (lo as isize + shift) as usize;
                        seg[lo..hi].copy_from_slice(&xr[s0..s0 + (hi - lo)]);
                    }
                } else {
                    for (i, v) in seg.iter_mut().enumerate() {
                        let ix = ((ox0 + i) * g.sw + kx) as isize - g.pw as isize;
                        *v = if ix >= 0 && ix < g.w as isize {
                            xr[ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
            kx += 1;
            if kx == g.kw {
                kx = 0;
                ky += 1;
                if ky == g.kh {
                    ky = 0;
                    c += 1;
                }
            }
        }
    }

    /// Per-thread buffers: one packed panel, one zero-padded image.
    #[derive(Default)]
    struct Scratch {
        panel: Vec<f32>,
        padded: Vec<f32>,
    }

    /// Image (C, H, W) → (C, H + 2ph, W + 2pw) with a zero border, plus `kw` zeros of slack at the
    /// end (rows of the padded grid read up to kw − 1 values past a channel's last row).
    fn pad_image(xi: &[f32], g: &ConvGeom, xp: &mut Vec<f32>) {
        let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
        let len = g.c * hp * wp + g.kw + kernels::PB;
        // A buffer of this size last held an image of this geometry (Scratch lives for one
        // call): its border and slack are still zero, and the copies below overwrite the rest.
        if xp.len() != len {
            xp.clear();
            xp.resize(len, 0.0);
        }
        pad_into(xi, g, xp);
    }

    /// Copy image `xi` into the interior of `xp`, a padded buffer whose border is already zero
    /// (rows of a few values: masked vector moves, not a memcpy call each).
    fn pad_into(xi: &[f32], g: &ConvGeom, xp: &mut [f32]) {
        let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
        assert!(xi.len() == g.c * g.h * g.w && xp.len() >= g.c * hp * wp);
        // SAFETY: AVX-512F detected (this module's precondition); sizes asserted above.
        unsafe { pad_rows(xi, g, xp) }
    }

    /// [`pad_into`]'s copies, one [`kernels::copy_row`] per row.
    ///
    /// # Safety
    /// AVX-512F must be available; `xi` is one (C, H, W) image, `xp` holds its padded copy.
    #[target_feature(enable = "avx512f")]
    unsafe fn pad_rows(xi: &[f32], g: &ConvGeom, xp: &mut [f32]) {
        let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
        let (src, dst) = (xi.as_ptr(), xp.as_mut_ptr());
        for c in 0..g.c {
            for y in 0..g.h {
                let (s, d) = ((c * g.h + y) * g.w, c * hp * wp + (y + g.ph) * wp + g.pw);
                kernels::copy_row(src.add(s), dst.add(d), g.w);
            }
        }
    }

    /// [`pack_panel`] for stride 1 from the zero-padded image: every row of the column matrix is
    /// one or more unconditional short copies (masked vector moves).
    ///
    /// # Safety
    /// AVX-512F must be available; `xp` is `pad_image`'s output for this geometry and image.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack_panel_padded(
        xp: &[f32],
        g: &ConvGeom,
        k0: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        jb: usize,
        buf: &mut [f32],
    ) {
        assert!(jb + cols <= NR);
        use std::arch::x86_64::*;
        let (hp, wp, wo) = (g.h + 2 * g.ph, g.w + 2 * g.pw, g.wo());
        // Runs of positions on one output row: (offset in the padded channel, length, offset in
        // the panel), with their masks for the two 16-lane halves.
        let mut segs = [(0usize, 0usize, 0u16, 0u16); NR];
        let mut nseg = 0;
        let mut j = 0;
        while j < cols {
            let l = j0 + j;
            let (oy, ox) = (l / wo, l % wo);
            let len = (wo - ox).min(cols - j);
            let (m0, m1) = (
                kernels::tail_mask(len.min(16)),
                kernels::tail_mask(len.saturating_sub(16)),
            );
            segs[nseg] = (oy * wp + ox, jb + j, m0, m1);
            nseg += 1;
            j += len;
        }
        let khw = g.kh * g.kw;
        assert!(kc * NR <= buf.len());
        assert!((k0 + kc) / khw <= g.c && xp.len() >= g.c * hp * wp);
        let (mut c, mut ky, mut kx) = (k0 / khw, (k0 % khw) / g.kw, k0 % g.kw);
        for kk in 0..kc {
            // (c, ky, kx) of row k advanced without divisions (they cost as much as the copies).
            let src = xp.as_ptr().add(c * hp * wp + ky * wp + kx);
            let dst = buf.as_mut_ptr().add(kk * NR);
            for &(so, jp, m0, m1) in &segs[..nseg] {
                // SAFETY: a run stays on one output row, so it reads inside the padded channel.
                let v0 = _mm512_maskz_loadu_ps(m0, src.add(so));
                _mm512_mask_storeu_ps(dst.add(jp), m0, v0);
                if m1 != 0 {
                    let v1 = _mm512_maskz_loadu_ps(m1, src.add(so + 16));
                    _mm512_mask_storeu_ps(dst.add(jp + 16), m1, v1);
                }
            }
            kx += 1;
            if kx == g.kw {
                kx = 0;
                ky += 1;
                if ky == g.kh {
                    ky = 0;
                    c += 1;
                }
            }
        }
    }

    /// Whether the forward runs on [`kernels::tile_32x8`]: stride 1, and at least 95% of its
    /// lanes and positions useful — output channels fill blocks of 32, output rows groups of 8
    /// (8-wide rows are where the in-place 8 × 32 tile needs two masked loads per half; the
    /// 32 × 8 tile measured 4–10% faster at 8, 16 and 32 columns).
    fn short_rows(g: &ConvGeom) -> bool {
        let (ob, pb) = (kernels::OB, kernels::PB);
        let used = g.o * g.wo();
        let computed = g.o.div_ceil(ob) * ob * g.wo().div_ceil(pb) * pb;
        g.sh == 1 && g.sw == 1 && !g.direct() && used > 0 && 20 * used >= 19 * computed
    }

    /// W (O, K) → `[block][k][32]`, output channels in blocks of 32 (lanes past O zero): the
    /// vector operand of [`kernels::tile_32x8`].
    fn pack_weight32(w: &[f32], o: usize, k: usize) -> Vec<f32> {
        let blocks = o.div_ceil(kernels::OB);
        let len = blocks * k * kernels::OB;
        let mut p = Vec::with_capacity(len);
        let out = SyncPtr(p.as_mut_ptr());
        crate::par::for_ranges(blocks * 2, |r| {
            for h in r {
                // Half h of the blocks: output channels 16h.., lanes 16(h mod 2).. of block h/2.
                let (b, o0) = (h / 2, 16 * h);
                let rows = 16.min(o.saturating_sub(o0));
                for k0 in (0..k).step_by(16) {
                    // SAFETY: AVX-512F (this module's precondition); rows o0.. < O of W (none
                    // when past O: 16 zero lanes written), positions k0.. < K of block b, each
                    // (block, half) written by one call, inside the reserved capacity.
                    unsafe {
                        kernels::transpose_block(
                            w.as_ptr().add(o0.min(o.saturating_sub(1)) * k + k0),
                            k,
                            (rows, 16),
                            16.min(k - k0),
                            out.get().add((b * k + k0) * kernels::OB + 16 * (h % 2)),
                            kernels::OB,
                        )
                    };
                }
            }
        });
        // SAFETY: every (block, half, k) lane was written above.
        unsafe { p.set_len(len) };
        p
    }

    /// Image i's output on [`kernels::tile_32x8`]: for each output row (8 positions) and block of
    /// 32 output channels, the product read from the padded image, then transposed into y_i.
    ///
    /// # Safety
    /// AVX-512F must be available; `yi` points at this image's O × L outputs, written by this
    /// call alone; `wp` is [`pack_weight32`]'s, `koff` [`padded_offsets`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn image_short_rows(
        g: &ConvGeom,
        xi: &[f32],
        wp: &[f32],
        bias: Option<&[f32]>,
        koff: &[usize],
        yi: SyncPtr,
        padded: &mut Vec<f32>,
    ) {
        let (l, ckk, wpad) = (g.l(), g.ckk(), g.w + 2 * g.pw);
        let (ob, pb) = (kernels::OB, kernels::PB);
        pad_image(xi, g, padded);
        assert!(koff.len() == ckk && wp.len() == g.o.div_ceil(ob) * ckk * ob);
        let mut out = [[0f32; kernels::OB]; kernels::PB];
        for b in 0..g.o.div_ceil(ob) {
            let mut bb = [0f32; kernels::OB];
            if let Some(bias) = bias {
                let n = ob.min(g.o - b * ob);
                bb[..n].copy_from_slice(&bias[b * ob..b * ob + n]);
            }
            for (oy, ox0) in
                (0..g.ho()).flat_map(|oy| (0..g.wo()).step_by(pb).map(move |x| (oy, x)))
            {
                let (l0, npos) = (oy * g.wo() + ox0, pb.min(g.wo() - ox0));
                // SAFETY: positions (oy, ox0..ox0 + 8) read padded row oy + ky, columns
                // ox0 + kx..+ 8 of each channel; past the row's last output (npos < 8) they run
                // on into the next row or the buffer's 8 values of slack (results dropped).
                kernels::tile_32x8(
                    ckk,
                    wp.as_ptr().add(b * ckk * ob),
                    padded.as_ptr().add(oy * wpad + ox0),
                    koff,
                    bias.map(|_| &bb),
                    &mut out,
                );
                for h in 0..2 {
                    let o0 = b * ob + 16 * h;
                    if o0 >= g.o {
                        break;
                    }
                    kernels::transpose_block(
                        out.as_ptr().cast::<f32>().add(16 * h),
                        ob,
                        (npos, npos),
                        16.min(g.o - o0),
                        yi.get().add(o0 * l + l0),
                        l,
                    );
                }
            }
        }
    }

    /// Offsets in the zero-padded image (C, H + 2ph, W + 2pw) of row k = (c·kh + ky)·kw + kx of
    /// a stride-1 column matrix: row k at output position (oy, ox) is the padded image's value
    /// at offset koff[k] + oy·(W + 2pw) + ox.
    fn padded_offsets(g: &ConvGeom) -> Vec<usize> {
        let (hp, wp, khw) = (g.h + 2 * g.ph, g.w + 2 * g.pw, g.kh * g.kw);
        (0..g.ckk())
            .map(|k| (k / khw) * hp * wp + ((k % khw) / g.kw) * wp + k % g.kw)
            .collect()
    }

    /// The output positions j0..j0+cols of a stride-1 convolution as runs on the padded grid
    /// (position (oy, ox) at offset oy·(W + 2pw) + ox) for [`kernels::tile_8x32_runs`], and
    /// whether some half has two runs; `None` when a half spans three or more output rows (images
    /// narrower than 8 columns), which are packed instead.
    fn panel_runs(g: &ConvGeom, j0: usize, cols: usize) -> Option<(kernels::Runs, bool)> {
        let (wo, wp) = (g.wo(), g.w + 2 * g.pw);
        let mut runs = kernels::Runs {
            m: [[0; 2]; 2],
            d: [[0; 2]; 2],
        };
        let mut two = false;
        for h in 0..2 {
            let (s0, s1) = (16 * h, (16 * h + 16).min(cols));
            let (mut lane, mut r) = (s0, 0);
            while lane < s1 {
                if r == 2 {
                    return None;
                }
                let (oy, ox) = ((j0 + lane) / wo, (j0 + lane) % wo);
                let len = (wo - ox).min(s1 - lane);
                runs.m[h][r] = ((kernels::tail_mask(len) as u32) << (lane - s0)) as u16;
                runs.d[h][r] = (oy * wp + ox) as isize - (lane - s0) as isize;
                two |= r == 1;
                r += 1;
                lane += len;
            }
        }
        Some((runs, two))
    }

    /// Output panels `panels` of one image: y_i[:, panel] = W · cols_i[:, panel] + b. Stride 1:
    /// the tile reads the column matrix in place from the padded image (`koff`:
    /// [`padded_offsets`]) where a panel's halves are at most two runs each, else it is packed.
    ///
    /// # Safety
    /// `yi` points at this image's O × L outputs; no other thread writes these panels.
    #[allow(clippy::too_many_arguments)]
    unsafe fn image_panels(
        g: &ConvGeom,
        xi: &[f32],
        wp: &[f32],
        bias: Option<&[f32]>,
        koff: &[usize],
        yi: SyncPtr,
        panels: std::ops::Range<usize>,
        scratch: &mut Scratch,
    ) {
        let (l, ckk) = (g.l(), g.ckk());
        let tiles = g.o.div_ceil(MR);
        let Scratch { panel: buf, padded } = scratch;
        buf.resize(KC * NR, 0.0);
        let unit_stride = g.sh == 1 && g.sw == 1 && !g.direct();
        if unit_stride {
            pad_image(xi, g, padded);
            assert!(koff.len() == ckk && padded.len() >= g.c * (g.h + 2 * g.ph) * (g.w + 2 * g.pw));
        }
        let mut k0 = 0;
        while k0 < ckk {
            let kc = KC.min(ckk - k0);
            for p in panels.clone() {
                let j0 = p * NR;
                let cols = NR.min(l - j0);
                if let Some((runs, two)) = unit_stride.then(|| panel_runs(g, j0, cols)).flatten() {
                    // Nothing packed: the whole summed index at once, in the first slice's pass.
                    if k0 > 0 {
                        continue;
                    }
                    for t in 0..tiles {
                        let rows = MR.min(g.o - t * MR);
                        let start = match bias {
                            Some(b) => Start::Bias(&b[t * MR..]),
                            None => Start::Zero,
                        };
                        // SAFETY: every run lies on one output row, so it reads inside the
                        // padded channel of each row k (see `panel_runs`, `padded_offsets`).
                        let (a, cp) = (wp.as_ptr().add(t * ckk * MR), yi.0.add(t * MR * l + j0));
                        let tile = if two {
                            kernels::tile_8x32_runs::<true>
                        } else {
                            kernels::tile_8x32_runs::<false>
                        };
                        tile(
                            ckk,
                            a,
                            padded.as_ptr(),
                            koff,
                            &runs,
                            cp,
                            l,
                            rows,
                            cols,
                            start,
                        );
                    }
                    continue;
                }
                let (bp, ldb) = if g.direct() {
                    (xi.as_ptr().add(k0 * l + j0), l)
                } else {
                    if unit_stride {
                        pack_panel_padded(padded, g, k0, kc, j0, cols, 0, buf);
                    } else {
                        pack_panel(xi, g, k0, kc, j0, cols, 0, buf);
                    }
                    (buf.as_ptr(), NR)
                };
                for t in 0..tiles {
                    let rows = MR.min(g.o - t * MR);
                    let start = match (k0, bias) {
                        (0, Some(b)) => Start::Bias(&b[t * MR..]),
                        (0, None) => Start::Zero,
                        _ => Start::Load,
                    };
                    kernels::tile_8x32(
                        kc,
                        wp.as_ptr().add((t * ckk + k0) * MR),
                        bp,
                        ldb,
                        yi.0.add(t * MR * l + j0),
                        l,
                        rows,
                        cols,
                        start,
                    );
                }
            }
            k0 += kc;
        }
    }

    /// Images with fewer output positions than a panel (L < 32, e.g. the 4×4 level of a UNet):
    /// ⌊32 / L⌋ images share each panel instead of leaving most of its lanes empty. The block
    /// of all O channels × the panel's columns is accumulated in `tile` over every slice of the
    /// summed index, then scattered to the images' outputs.
    ///
    /// # Safety
    /// AVX-512F must be available; `xs` holds whole images, `ys` points at their outputs (all
    /// written, none read) and no other thread writes them.
    unsafe fn image_group(
        g: &ConvGeom,
        xs: &[f32],
        wp: &[f32],
        bias: Option<&[f32]>,
        ys: SyncPtr,
        scratch: &mut Scratch,
        tile: &mut Vec<f32>,
    ) {
        let (l, ckk, chw) = (g.l(), g.ckk(), g.c * g.h * g.w);
        let imgs = xs.len() / chw;
        let cols = imgs * l;
        assert!(cols <= NR);
        let tiles = g.o.div_ceil(MR);
        let Scratch { panel: buf, padded } = scratch;
        buf.resize(KC * NR, 0.0);
        tile.resize(tiles * MR * NR, 0.0);
        let unit_stride = g.sh == 1 && g.sw == 1;
        let plen = g.c * (g.h + 2 * g.ph) * (g.w + 2 * g.pw) + g.kw;
        if unit_stride {
            // One padded copy per image, side by side, written in place (a buffer of this size
            // last held images of this geometry, so its borders are still zero).
            if padded.len() != imgs * plen {
                padded.clear();
                padded.resize(imgs * plen, 0.0);
            }
            for (xi, xp) in xs.chunks(chw).zip(padded.chunks_mut(plen)) {
                pad_into(xi, g, xp);
            }
        }
        let mut k0 = 0;
        while k0 < ckk {
            let kc = KC.min(ckk - k0);
            for (i, xi) in xs.chunks(chw).enumerate() {
                if unit_stride {
                    let xp = &padded[i * plen..(i + 1) * plen];
                    pack_panel_padded(xp, g, k0, kc, 0, l, i * l, buf);
                } else {
                    pack_panel(xi, g, k0, kc, 0, l, i * l, buf);
                }
            }
            for t in 0..tiles {
                let start = match (k0, bias) {
                    (0, Some(b)) => Start::Bias(&b[t * MR..]),
                    (0, None) => Start::Zero,
                    _ => Start::Load,
                };
                let rows = MR.min(g.o - t * MR);
                kernels::tile_8x32(
                    kc,
                    wp.as_ptr().add((t * ckk + k0) * MR),
                    buf.as_ptr(),
                    NR,
                    tile.as_mut_ptr().add(t * MR * NR),
                    NR,
                    rows,
                    cols,
                    start,
                );
            }
            k0 += kc;
        }
        for i in 0..imgs {
            for o in 0..g.o {
                let src = &tile[o * NR + i * l..o * NR + (i + 1) * l];
                // SAFETY: the caller's contract: `ys` holds these images' O × L outputs.
                std::ptr::copy_nonoverlapping(src.as_ptr(), ys.0.add((i * g.o + o) * l), l);
            }
        }
    }

    /// Writes every value of y (which may be uninitialised) and reads none.
    pub(super) fn forward(
        g: &ConvGeom,
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        y: &mut [std::mem::MaybeUninit<f32>],
    ) {
        check_forward(g, x.len(), weight.len(), bias.map(<[f32]>::len), y.len());
        let (l, ckk, chw) = (g.l(), g.ckk(), g.c * g.h * g.w);
        if g.n == 0 || l == 0 {
            return;
        }
        if crate::winograd::applies(g) {
            // SAFETY: AVX-512F checked by the caller (fast_path); sizes checked above.
            return unsafe { crate::winograd::forward(g, x, weight, bias, y) };
        }
        if short_rows(g) {
            let (wp, koff) = (pack_weight32(weight, g.o, ckk), padded_offsets(g));
            let yp = SyncPtr(y.as_mut_ptr().cast::<f32>());
            crate::par::for_ranges(g.n, |r| {
                let mut padded = Vec::new();
                for i in r {
                    let xi = &x[i * chw..(i + 1) * chw];
                    // SAFETY: image i's output is written by this item alone; AVX-512F checked.
                    unsafe {
                        let yi = SyncPtr(yp.get().add(i * g.o * l));
                        image_short_rows(g, xi, &wp, bias, &koff, yi, &mut padded)
                    }
                }
            });
            return;
        }
        let wp = pack_weight(weight, g.o, ckk);
        let koff = padded_offsets(g);
        let panels = l.div_ceil(NR);
        let t = crate::par::threads();
        let per_panel = NR / l;
        let yp = SyncPtr(y.as_mut_ptr().cast::<f32>());
        let oln = g.o * l;
        if per_panel >= 2 {
            // Images in groups of `per_panel` sharing panels.
            crate::par::for_ranges(g.n.div_ceil(per_panel), |r| {
                let (mut scratch, mut tile) = (Scratch::default(), Vec::new());
                for gi in r {
                    let (i0, i1) = (gi * per_panel, g.n.min((gi + 1) * per_panel));
                    // SAFETY: group gi alone writes images i0..i1 of y; AVX-512F was checked.
                    unsafe {
                        image_group(
                            g,
                            &x[i0 * chw..i1 * chw],
                            &wp,
                            bias,
                            SyncPtr(yp.get().add(i0 * oln)),
                            &mut scratch,
                            &mut tile,
                        )
                    }
                }
            });
        } else if g.n >= t || panels == 1 {
            crate::par::for_ranges(g.n, |r| {
                let mut scratch = Scratch::default();
                for i in r {
                    let xi = &x[i * chw..(i + 1) * chw];
                    // SAFETY: image i's output is written by this item alone.
                    unsafe {
                        image_panels(
                            g,
                            xi,
                            &wp,
                            bias,
                            &koff,
                            SyncPtr(yp.get().add(i * oln)),
                            0..panels,
                            &mut scratch,
                        )
                    }
                }
            });
        } else {
            // Fewer images than threads: split each image's output positions instead.
            let parts = t.min(panels);
            for i in 0..g.n {
                let xi = &x[i * chw..(i + 1) * chw];
                let yi = SyncPtr(unsafe { yp.get().add(i * oln) });
                crate::par::for_ranges(parts, |r| {
                    let mut scratch = Scratch::default();
                    for p in r {
                        let pr = p * panels / parts..(p + 1) * panels / parts;
                        // SAFETY: the panel ranges are disjoint, so are the columns each writes.
                        unsafe { image_panels(g, xi, &wp, bias, &koff, yi, pr, &mut scratch) }
                    }
                });
            }
        }
    }

    /// dW[o, k] += Σ over the images i of Σ_t dy_i[o·len + t] · src_i[koff[k] + t], one 4 × 6
    /// block at a time: src is the column matrix (koff[k] = k·len) or, for stride 1, the
    /// zero-padded image read along the padded grid (dy then has zeros at the grid's extra
    /// columns).
    fn weight_grad_sub(
        len: usize,
        dys: &[&[f32]],
        srcs: &[&[f32]],
        koff: &[usize],
        gw: &mut [f32],
    ) {
        let ckk = koff.len();
        let o = gw.len() / ckk;
        for (d, x) in dys.iter().zip(srcs) {
            assert!(d.len() >= o * len);
            assert!(koff.iter().all(|&k| k + len <= x.len()));
        }
        for o0 in (0..o).step_by(DA) {
            for k0 in (0..ckk).step_by(DB) {
                let oa = (o - o0).min(DA);
                let kb = (ckk - k0).min(DB);
                // SAFETY: AVX-512F checked by the caller; the asserts above keep every row read
                // (o0 + i < O rows of dy, offsets koff[k0 + j]) inside its slice.
                unsafe {
                    let mut acc = kernels::zero_4x6();
                    for (dy, x) in dys.iter().zip(srcs) {
                        // Rows past the end repeat the last real one; their sums are dropped.
                        let a = [0, 1, 2, 3].map(|i| dy.as_ptr().add((o0 + i.min(oa - 1)) * len));
                        let b =
                            [0, 1, 2, 3, 4, 5].map(|j| x.as_ptr().add(koff[k0 + j.min(kb - 1)]));
                        kernels::dot_4x6(len, a, b, &mut acc);
                    }
                    let s = kernels::reduce_4x6(&acc);
                    for i in 0..oa {
                        for j in 0..kb {
                            gw[(o0 + i) * ckk + k0 + j] += s[i][j];
                        }
                    }
                }
            }
        }
    }

    /// Input channels from which the weight gradient runs on the register tile
    /// ([`weight_grad_tiles`]); with fewer, a 32-channel panel would be mostly empty lanes.
    const TILE_DW_MIN_C: usize = 16;
    /// Output positions per packed panel of the weight gradient (256 × 32 × 4 B = 32 KiB).
    const LC: usize = 256;

    /// Image (C, H, W) → zero-padded and channels last, (H + 2ph, W + 2pw, C), in 16 × 16 blocks
    /// transposed in registers. A buffer of this size last held an image of this geometry, so
    /// its border is still zero.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    unsafe fn pad_channels_last(xi: &[f32], g: &ConvGeom, xt: &mut Vec<f32>) {
        let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
        let len = hp * wp * g.c;
        if xt.len() != len {
            xt.clear();
            xt.resize(len, 0.0);
        }
        for y in 0..g.h {
            // SAFETY: row y + ph of the padded image, from column pw: W pixels inside it.
            let dst = xt.as_mut_ptr().add(((y + g.ph) * wp + g.pw) * g.c);
            kernels::row_channels_last(xi, g.c, (g.h, g.w), y, dst);
        }
    }

    /// A row-major (O, L) matrix → `[tile][l][MR]` (rows past O zero), the broadcast operand of
    /// the tile: the weight (O, C·kh·kw) of the forward, dy_i (O, Ho·Wo) of the weight gradient.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_rows8(dyi: &[f32], o: usize, l: usize, dp: &mut Vec<f32>, parallel: bool) {
        let tiles = o.div_ceil(MR);
        let len = tiles * l * MR;
        assert!(dyi.len() == o * l);
        dp.clear();
        dp.reserve(len);
        let out = SyncPtr(dp.as_mut_ptr());
        let tile = |t: usize| {
            for l0 in (0..l).step_by(16) {
                // SAFETY: rows t·MR.. < O, columns l0.. < L of dy; positions l0.. of tile t,
                // all MR lanes written (rows past O as zeros), inside the reserved capacity;
                // each tile's block is written by one call.
                unsafe {
                    kernels::transpose_block(
                        dyi.as_ptr().add(t * MR * l + l0),
                        l,
                        (MR.min(o - t * MR), MR),
                        16.min(l - l0),
                        out.get().add((t * l + l0) * MR),
                        MR,
                    )
                };
            }
        };
        if parallel {
            crate::par::for_ranges(tiles, |r| r.for_each(tile));
        } else {
            (0..tiles).for_each(tile);
        }
        // SAFETY: the loops above wrote every one of the `len` values.
        dp.set_len(len);
    }

    /// Rows l0..l0+lc of the channels-last column matrix at kernel offset (ky, kx), channels
    /// c0..c0+cols: `buf[(l − l0)·NR + j] = xt[((oy·sh + ky)·wp + ox·sw + kx)·C + c0 + j]` for
    /// output position l = oy·Wo + ox (lanes past `cols` zero).
    ///
    /// # Safety
    /// AVX-512F must be available; `xt` is [`pad_channels_last`]'s output for this geometry.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_rows_channels_last(
        xt: &[f32],
        g: &ConvGeom,
        (ky, kx, c0, cols): (usize, usize, usize, usize),
        (l0, lc): (usize, usize),
        buf: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let (wp, wo, ho) = (g.w + 2 * g.pw, g.wo(), g.ho());
        assert!(lc * NR <= buf.len() && l0 + lc <= ho * wo && c0 + cols <= g.c);
        assert!(ky < g.kh && kx < g.kw && xt.len() == (g.h + 2 * g.ph) * wp * g.c);
        let (m0, m1) = (
            kernels::tail_mask(cols.min(16)),
            kernels::tail_mask(cols.saturating_sub(16)),
        );
        let (mut oy, mut ox) = (l0 / wo, l0 % wo);
        for i in 0..lc {
            // SAFETY: (oy·sh + ky, ox·sw + kx) is inside the padded image for every output
            // position (the geometry is valid), and the masks keep the reads to channels < C.
            let src = xt
                .as_ptr()
                .add(((oy * g.sh + ky) * wp + ox * g.sw + kx) * g.c + c0);
            let dst = buf.as_mut_ptr().add(i * NR);
            _mm512_storeu_ps(dst, _mm512_maskz_loadu_ps(m0, src));
            _mm512_storeu_ps(dst.add(16), _mm512_maskz_loadu_ps(m1, src.add(16)));
            ox += 1;
            if ox == wo {
                ox = 0;
                oy += 1;
            }
        }
    }

    /// Per-thread buffers of [`weight_grad_tiles`].
    #[derive(Default)]
    struct GradScratch {
        xt: Vec<f32>,
        dp: Vec<f32>,
        panel: Vec<f32>,
        acc: Vec<f32>,
    }

    /// dW[o, (c, ky, kx)] = Σ over the images `imgs` of Σ_l dy_i[o, l] · x_i[c, oy·sh + ky − ph,
    /// ox·sw + kx − pw], on the 8 × 32 register tile: the summed index is the output position,
    /// dy packed as the broadcast operand (8 output channels) and 32 consecutive input channels of
    /// the channels-last padded image as the vector operand, so each block of dW stays in
    /// registers over a panel of 256 positions. One FMA chain per dW value, over the images in
    /// order, then the positions in order.
    fn weight_grad_tiles(
        g: &ConvGeom,
        x: &[f32],
        dy: &[f32],
        imgs: std::ops::Range<usize>,
        gw: &mut [f32],
        s: &mut GradScratch,
    ) {
        let (l, ckk, chw) = (g.l(), g.ckk(), g.c * g.h * g.w);
        let (tiles, khw) = (g.o.div_ceil(MR), g.kh * g.kw);
        assert!(gw.len() == g.o * ckk && imgs.end * chw <= x.len());
        s.panel.resize(LC * NR, 0.0);
        // acc[o, (ky·kw + kx)·C + c], rows padded to whole tiles.
        s.acc.clear();
        s.acc.resize(tiles * MR * ckk, 0.0);
        for (j, n) in imgs.enumerate() {
            // SAFETY: AVX-512F checked by the caller.
            unsafe {
                pad_channels_last(&x[n * chw..(n + 1) * chw], g, &mut s.xt);
                pack_rows8(
                    &dy[n * g.o * l..(n + 1) * g.o * l],
                    g.o,
                    l,
                    &mut s.dp,
                    false,
                );
            }
            for l0 in (0..l).step_by(LC) {
                let lc = LC.min(l - l0);
                for q in 0..khw {
                    for c0 in (0..g.c).step_by(NR) {
                        let cols = NR.min(g.c - c0);
                        // SAFETY: AVX-512F checked by the caller; the packed dy holds `tiles`
                        // blocks of l × MR values, the panel lc × NR, and each tile writes rows
                        // t·MR.. (< tiles·MR) and columns q·C + c0.. (< ckk) of acc.
                        unsafe {
                            pack_rows_channels_last(
                                &s.xt,
                                g,
                                (q / g.kw, q % g.kw, c0, cols),
                                (l0, lc),
                                &mut s.panel,
                            );
                            for t in 0..tiles {
                                let start = if j == 0 && l0 == 0 {
                                    Start::Zero
                                } else {
                                    Start::Load
                                };
                                kernels::tile_8x32(
                                    lc,
                                    s.dp.as_ptr().add((t * l + l0) * MR),
                                    s.panel.as_ptr(),
                                    NR,
                                    s.acc.as_mut_ptr().add(t * MR * ckk + q * g.c + c0),
                                    ckk,
                                    MR.min(g.o - t * MR),
                                    cols,
                                    start,
                                );
                            }
                        }
                    }
                }
            }
        }
        // Each row of acc, (kh·kw, C), transposed into dW's (C, kh·kw) order.
        for o in 0..g.o {
            for q0 in (0..khw).step_by(16) {
                for c0 in (0..g.c).step_by(16) {
                    // SAFETY: AVX-512F checked by the caller; the block stays inside row o of
                    // acc (q < kh·kw, c < C) and of gw.
                    unsafe {
                        let rows = 16.min(khw - q0);
                        kernels::transpose_block(
                            s.acc.as_ptr().add(o * ckk + q0 * g.c + c0),
                            g.c,
                            (rows, rows),
                            16.min(g.c - c0),
                            gw.as_mut_ptr().add(o * ckk + c0 * khw + q0),
                            khw,
                        );
                    }
                }
            }
        }
    }

    /// Writes every value of dx, dW and db (which may be uninitialised).
    pub(super) fn backward(
        g: &ConvGeom,
        x: &[f32],
        weight: &[f32],
        dy: &[f32],
        dx: &mut [MaybeUninit<f32>],
        dw: &mut [MaybeUninit<f32>],
        db: &mut [MaybeUninit<f32>],
    ) {
        check_backward(
            g,
            [x.len(), weight.len(), dy.len()],
            [dx.len(), dw.len(), db.len()],
        );
        let (l, ckk, chw) = (g.l(), g.ckk(), g.c * g.h * g.w);
        // Input gradient.
        if g.sh == 1 && g.sw == 1 && g.ph < g.kh && g.pw < g.kw {
            let gt = ConvGeom {
                n: g.n,
                c: g.o,
                h: g.ho(),
                w: g.wo(),
                o: g.c,
                kh: g.kh,
                kw: g.kw,
                sh: 1,
                sw: 1,
                ph: g.kh - 1 - g.ph,
                pw: g.kw - 1 - g.pw,
            };
            debug_assert_eq!((gt.ho(), gt.wo()), (g.h, g.w));
            // wt[c, o, ky, kx] = w[o, c, kh − 1 − ky, kw − 1 − kx].
            let khw = g.kh * g.kw;
            // One input channel's block per task (a serial loop here left a core idle).
            let mut wt = vec![0f32; weight.len()];
            crate::par::for_chunks_mut(&mut wt, (g.o * khw).max(1), |c, block| {
                for (oi, dst) in block.chunks_mut(khw).enumerate() {
                    let src = &weight[(oi * g.c + c) * khw..(oi * g.c + c + 1) * khw];
                    for (d, &v) in dst.iter_mut().zip(src.iter().rev()) {
                        *d = v;
                    }
                }
            });
            forward(&gt, dy, &wt, None, dx);
        } else {
            input_grad_gemm(g, weight, dy, crate::zeroed(dx));
        }
        // Weight and bias gradients over the same fixed image groups as the generic backward.
        // Stride 1: read the zero-padded image along the padded grid (row width wp), no im2col.
        let padded_grid = g.sh == 1 && g.sw == 1 && !g.direct();
        let (hp, gw_, wo) = (g.h + 2 * g.ph, g.w + 2 * g.pw, g.wo());
        let khw = g.kh * g.kw;
        let (glen, koff): (usize, Vec<usize>) = if padded_grid {
            let offs = (0..ckk)
                .map(|k| (k / khw) * hp * gw_ + ((k % khw) / g.kw) * gw_ + k % g.kw)
                .collect();
            (g.ho() * gw_, offs)
        } else {
            (l, (0..ckk).map(|k| k * l).collect())
        };
        // Images whose buffers are held at once: as many as fit in ≈ 512 KiB (at most SUB).
        let per_image = 4 * (g.o * glen + if padded_grid { g.c * hp * gw_ } else { ckk * l });
        let sub_len = (512 * 1024 / per_image.max(1)).clamp(1, SUB);
        let groups = g.n.clamp(1, GRAD_GROUPS);
        let bounds: Vec<usize> = (0..=groups).map(|i| i * g.n / groups).collect();
        let slots: Vec<std::sync::Mutex<(Vec<f32>, Vec<f32>)>> =
            (0..groups).map(|_| Default::default()).collect();
        let on_tiles = g.c >= TILE_DW_MIN_C;
        let winograd = crate::winograd::applies(g);
        crate::par::for_ranges(groups, |r| {
            let mut scratch = GradScratch::default();
            for i in r {
                let part = if on_tiles {
                    // Winograd: the group's bracket (16 · O · C), transformed once at the end.
                    let mut gw = vec![0f32; if winograd { 16 * g.o * g.c } else { g.o * ckk }];
                    let mut gb = vec![0f32; g.o];
                    let imgs = bounds[i]..bounds[i + 1];
                    if winograd {
                        let (xs, dys) = (
                            &x[imgs.start * chw..imgs.end * chw],
                            &dy[imgs.start * g.o * l..imgs.end * g.o * l],
                        );
                        // SAFETY: AVX-512F checked by the caller; `winograd::applies(g)`.
                        unsafe { crate::winograd::weight_grad(g, xs, dys, &mut gw) };
                    } else {
                        weight_grad_tiles(g, x, dy, imgs, &mut gw, &mut scratch);
                    }
                    for d in dy[bounds[i] * g.o * l..bounds[i + 1] * g.o * l].chunks(g.o * l) {
                        for (b, row) in gb.iter_mut().zip(d.chunks(l)) {
                            // SAFETY: AVX-512F checked by the caller.
                            *b += unsafe { kernels::lane_sum(row) };
                        }
                    }
                    (gw, gb)
                } else {
                    let mut gw = vec![0f32; g.o * ckk];
                    let mut gb = vec![0f32; g.o];
                    let mut bufs: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
                    let imgs: Vec<usize> = (bounds[i]..bounds[i + 1]).collect();
                    for sub in imgs.chunks(sub_len) {
                        bufs.resize_with(sub.len(), Default::default);
                        for ((xb, db), &n) in bufs.iter_mut().zip(sub) {
                            let xi = &x[n * chw..(n + 1) * chw];
                            let dyi = &dy[n * g.o * l..(n + 1) * g.o * l];
                            if padded_grid {
                                pad_image(xi, g, xb);
                                // dy on the padded grid: row oy of each channel, then zeros.
                                db.clear();
                                db.resize(g.o * glen, 0.0);
                                for (dst, src) in db.chunks_mut(gw_).zip(dyi.chunks(wo)) {
                                    dst[..wo].copy_from_slice(src);
                                }
                            } else if !g.direct() {
                                xb.resize(ckk * l, 0.0);
                                im2col_one(xi, g, xb);
                            }
                        }
                        let dys: Vec<&[f32]> = if padded_grid {
                            bufs.iter()
                                .take(sub.len())
                                .map(|b| b.1.as_slice())
                                .collect()
                        } else {
                            sub.iter()
                                .map(|&n| &dy[n * g.o * l..(n + 1) * g.o * l])
                                .collect()
                        };
                        let cs: Vec<&[f32]> = if g.direct() {
                            sub.iter().map(|&n| &x[n * chw..(n + 1) * chw]).collect()
                        } else {
                            bufs.iter()
                                .take(sub.len())
                                .map(|b| b.0.as_slice())
                                .collect()
                        };
                        weight_grad_sub(glen, &dys, &cs, &koff, &mut gw);
                        for &n in sub {
                            let d = &dy[n * g.o * l..(n + 1) * g.o * l];
                            for (b, row) in gb.iter_mut().zip(d.chunks(l)) {
                                for &v in row {
                                    *b += v;
                                }
                            }
                        }
                    }
                    (gw, gb)
                };
                *slots[i].lock().unwrap() = part;
            }
        });
        let partials: Vec<(Vec<f32>, Vec<f32>)> =
            slots.into_iter().map(|m| m.into_inner().unwrap()).collect();
        if winograd {
            // The brackets summed as any partial gradients are, then transformed once.
            let mut du = vec![0f32; 16 * g.o * g.c];
            add_partials_par(&partials, crate::as_uninit(&mut du), db);
            crate::winograd::weight_grad_transform(g, &du, dw);
        } else {
            add_partials_par(&partials, dw, db);
        }
    }

    /// [`add_partials`]'s sums (each value 0 + the groups' partials in group order, the same
    /// bits), written into uninitialised storage and parallel over slices of dW.
    fn add_partials_par(
        partials: &[(Vec<f32>, Vec<f32>)],
        dw: &mut [MaybeUninit<f32>],
        db: &mut [MaybeUninit<f32>],
    ) {
        const CH: usize = 1024;
        crate::par::for_chunks_mut(dw, CH, |i, out| {
            let mut acc = [0f32; CH];
            let acc = &mut acc[..out.len()];
            for (gw, _) in partials {
                for (a, &v) in acc.iter_mut().zip(&gw[i * CH..i * CH + out.len()]) {
                    *a += v;
                }
            }
            for (o, &a) in out.iter_mut().zip(acc.iter()) {
                o.write(a);
            }
        });
        for (c, o) in db.iter_mut().enumerate() {
            let mut v = 0f32;
            for (_, gb) in partials {
                v += gb[c];
            }
            o.write(v);
        }
    }
}

/// The kernels the f32 convolution runs on. The other f32 kernels that round differently from
/// candle's ops (SiLU in [`crate::act`], the lane-wise group-norm statistics of
/// [`crate::norm::GroupNormDims::lanes`]) follow the same choice through [`avx512_active`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernels {
    /// The AVX-512 micro-kernels where the CPU has AVX-512F (Winograd F(2 × 2, 3 × 3) for 3 × 3
    /// stride-1 convolutions with channels in multiples of 16, direct tiles otherwise), else
    /// im2col + gemm (the default).
    Auto,
    /// im2col + the gemm crate everywhere: the arithmetic that trained the committed mini
    /// models (a different summation order from the AVX-512 kernels, so different low bits).
    Gemm,
}

/// false: `Auto`, true: `Gemm`.
static FORCE_GEMM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Chooses the f32 convolution's kernels for the whole process (`Auto` unless set; the binary's
/// `--conv-kernels`).
pub fn set_conv_kernels(k: ConvKernels) {
    FORCE_GEMM.store(k == ConvKernels::Gemm, std::sync::atomic::Ordering::Relaxed);
}

/// The kernels the f32 convolution uses now.
pub fn conv_kernels() -> ConvKernels {
    if FORCE_GEMM.load(std::sync::atomic::Ordering::Relaxed) {
        ConvKernels::Gemm
    } else {
        ConvKernels::Auto
    }
}

/// The depth block (kc) of the gemm crate's f32 products with a long summed index on this CPU:
/// gemm sums a dot product in blocks of kc terms, so kc — and only kc of its cache blocking — sets
/// the order of the sum, hence the low bits of the gemm path (im2col convolution, its backward,
/// candle's matmul). gemm 0.19 derives it from the L1 data cache for its x86 FMA kernel (16 × 6
/// tile): 512 on a 32 KiB 8-way L1 (AMD Zen 4, the CPU that trained the committed mini models),
/// 1,024 on a 48 KiB 12-way one (Zen 5); products with both m and n ≤ 64 use 512 everywhere.
/// Two CPUs with the same value give the gemm path the same bits.
pub fn gemm_f32_depth_block() -> usize {
    gemm_common::cache::kernel_params(1 << 12, 1 << 12, 1 << 16, 16, 6, 4).kc
}

/// Whether the AVX-512 kernels are in use (the CPU has them and [`ConvKernels::Gemm`] is not
/// chosen): the other f32 kernels that change low bits (the SiLU of [`crate::act`]) follow it.
pub fn avx512_active() -> bool {
    #[cfg(target_arch = "x86_64")]
    if fast_path() {
        return true;
    }
    false
}

/// The name of the kernels an f32 convolution runs on now: `avx512` or `im2col+gemm`.
pub fn active_conv_kernels() -> &'static str {
    if avx512_active() {
        "avx512"
    } else {
        "im2col+gemm"
    }
}

/// Whether this call goes to the AVX-512 kernels.
#[cfg(target_arch = "x86_64")]
fn fast_path() -> bool {
    conv_kernels() == ConvKernels::Auto && crate::kernels::available()
}

/// y (N, O, Ho, Wo) = conv(x, weight) + bias in f32; see the module docs. Uses the AVX-512
/// kernels of [`crate::kernels`] where the CPU has them (see [`ConvKernels`]), else im2col + gemm.
pub fn conv2d_forward_f32(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if fast_path() {
        return fast::forward(g, x, w, b, crate::as_uninit(y));
    }
    forward(g, x, w, b, y)
}

/// [`conv2d_forward_f32`] into uninitialised storage: every value of `y` is written (see
/// [`crate::written_vec`]).
pub fn conv2d_forward_f32_uninit(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [std::mem::MaybeUninit<f32>],
) {
    #[cfg(target_arch = "x86_64")]
    if fast_path() {
        return fast::forward(g, x, w, b, y);
    }
    forward(g, x, w, b, crate::zeroed(y))
}

/// f64 version of [`conv2d_forward_f32`].
pub fn conv2d_forward_f64(g: &ConvGeom, x: &[f64], w: &[f64], b: Option<&[f64]>, y: &mut [f64]) {
    forward(g, x, w, b, y)
}

/// f64 version of [`conv2d_forward_f32_uninit`] (zeroes y, then the im2col + gemm path).
pub fn conv2d_forward_f64_uninit(
    g: &ConvGeom,
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    y: &mut [std::mem::MaybeUninit<f64>],
) {
    forward(g, x, w, b, crate::zeroed(y))
}

/// dx, dW, db of [`conv2d_forward_f32`] given dy; deterministic whatever the thread count.
pub fn conv2d_backward_f32(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (dx, dw, db): (&mut [f32], &mut [f32], &mut [f32]),
) {
    #[cfg(target_arch = "x86_64")]
    if fast_path() {
        let u = crate::as_uninit;
        return fast::backward(g, x, w, dy, u(dx), u(dw), u(db));
    }
    backward(g, x, w, dy, dx, dw, db)
}

/// The three outputs of a backward pass into uninitialised storage.
pub type GradsUninit<'a, T> = (
    &'a mut [std::mem::MaybeUninit<T>],
    &'a mut [std::mem::MaybeUninit<T>],
    &'a mut [std::mem::MaybeUninit<T>],
);

/// [`conv2d_backward_f32`] into uninitialised storage: every value of dx, dW and db is written.
pub fn conv2d_backward_f32_uninit(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (dx, dw, db): GradsUninit<'_, f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if fast_path() {
        return fast::backward(g, x, w, dy, dx, dw, db);
    }
    let z = crate::zeroed;
    backward(g, x, w, dy, z(dx), z(dw), z(db))
}

/// f64 version of [`conv2d_backward_f32_uninit`] (zeroes the outputs, then im2col + gemm).
pub fn conv2d_backward_f64_uninit(
    g: &ConvGeom,
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    (dx, dw, db): GradsUninit<'_, f64>,
) {
    let z = crate::zeroed;
    backward(g, x, w, dy, z(dx), z(dw), z(db))
}

/// f64 version of [`conv2d_backward_f32`].
pub fn conv2d_backward_f64(
    g: &ConvGeom,
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    (dx, dw, db): (&mut [f64], &mut [f64], &mut [f64]),
) {
    backward(g, x, w, dy, dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_sums_in_depth_blocks_of_the_stated_size() {
        // Expected: the outputs of an 80 × 6 × 4,096 f32 product (m > 64, so gemm's cache rule
        // applies; no threads) summed the way gemm 0.19 sums them: an FMA chain from 0 within each block of
        // `gemm_f32_depth_block()` terms, the blocks' partial sums added in order. Checked bit for
        // bit on every output, so a wrong block size (the values differ from 1,024-term blocks
        // in the low bits) fails here.
        let (m, n, k) = (80usize, 6usize, 4096usize);
        let val = |i: usize| ((i * 2_654_435_761usize % 1_000_003) as f32 / 1_000_003.0) - 0.5;
        let a: Vec<f32> = (0..m * k).map(val).collect();
        let b: Vec<f32> = (0..k * n).map(|i| val(i + 77)).collect();
        let mut c = vec![0f32; m * n];
        // SAFETY: row-major a (m × k), b (k × n), c (m × n), all of those sizes.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        let kc = gemm_f32_depth_block();
        let sum = |kc: usize, i: usize, j: usize| {
            let mut total = None;
            for blk in (0..k).step_by(kc) {
                let mut acc = 0f32;
                for p in blk..(blk + kc).min(k) {
                    acc = a[i * k + p].mul_add(b[p * n + j], acc);
                }
                total = Some(total.map_or(acc, |t: f32| t + acc));
            }
            total.unwrap()
        };
        let mut other_differs = false;
        for i in 0..m {
            for j in 0..n {
                assert_eq!(
                    c[i * n + j].to_bits(),
                    sum(kc, i, j).to_bits(),
                    "({i}, {j}), kc {kc}"
                );
                let other = if kc == 512 { 1024 } else { 512 };
                other_differs |= sum(other, i, j).to_bits() != c[i * n + j].to_bits();
            }
        }
        assert!(other_differs, "the product does not tell block sizes apart");
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), y> = <x, col2im(y)> for any x, y: the defining property of the adjoint,
        // checked for square and rectangular kernels, unequal padding and strides 1/2 on
        // deterministic non-symmetric data.
        for &(kh, kw, sh, sw, ph, pw) in &[
            (3, 3, 1, 1, 1, 1),
            (3, 3, 2, 2, 0, 0),
            (3, 3, 2, 2, 1, 1),
            (1, 1, 1, 1, 0, 0),
            (1, 7, 1, 1, 0, 3),
            (7, 1, 1, 1, 3, 0),
            (3, 2, 2, 1, 1, 0),
        ] {
            let g = ConvGeom {
                n: 1,
                c: 3,
                h: 7,
                w: 9,
                o: 1,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
            };
            let nx = g.c * g.h * g.w;
            let ny = g.ckk() * g.l();
            let x: Vec<f64> = (0..nx).map(|i| ((i * 37 % 11) as f64) - 4.5).collect();
            let y: Vec<f64> = (0..ny).map(|i| ((i * 13 % 7) as f64) * 0.5 - 1.0).collect();
            let mut cx = vec![0.0; ny];
            im2col_one(&x, &g, &mut cx);
            let mut ty = vec![0.0; nx];
            col2im_one(&y, &g, &mut ty);
            let a: f64 = cx.iter().zip(&y).map(|(a, b)| a * b).sum();
            let b: f64 = x.iter().zip(&ty).map(|(a, b)| a * b).sum();
            assert!((a - b).abs() < 1e-9, "{g:?}: {a} vs {b}");
        }
    }

    #[test]
    fn backward_bits_do_not_depend_on_the_thread_count() {
        // The weight and bias gradients are sums over images; the fixed image grouping must give
        // the same bits under 1, 2 and 3 threads (and the forward too). Four and twenty input
        // channels: the two weight-gradient kernels of the AVX-512 path.
        for c in [4, 20] {
            let g = ConvGeom {
                n: 23,
                c,
                h: 6,
                w: 5,
                o: 3,
                kh: 3,
                kw: 3,
                sh: 1,
                sw: 1,
                ph: 1,
                pw: 1,
            };
            let x: Vec<f32> = (0..g.n * g.c * g.h * g.w)
                .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..g.o * g.ckk())
                .map(|i| ((i * 13 % 17) as f32) / 8.0 - 1.0)
                .collect();
            let dy: Vec<f32> = (0..g.n * g.o * g.l())
                .map(|i| ((i * 7 % 23) as f32) / 11.0 - 1.0)
                .collect();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut y = vec![0f32; dy.len()];
                    conv2d_forward_f32(&g, &x, &w, None, &mut y);
                    let (mut dx, mut dw, mut db) =
                        (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; g.o]);
                    conv2d_backward_f32(&g, &x, &w, &dy, (&mut dx, &mut dw, &mut db));
                    (y, dx, dw, db)
                })
            };
            let one = run(1);
            assert_eq!(one, run(2));
            assert_eq!(one, run(3));
            assert!(one.2.iter().any(|&v| v != 0.0));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_kernels_match_im2col_gemm() {
        // Expected numbers: the generic im2col + gemm path of this file (itself checked against
        // candle's conv2d and torch in the model tests); the AVX-512 path sums in another order,
        // so agreement is to f32 rounding: 1e-5 of the largest magnitude of each output.
        if !crate::kernels::available() {
            eprintln!("no AVX-512F on this CPU: fast path not exercised");
            return;
        }
        let geoms = [
            // n, c, h, w, o, kh, kw, sh, sw, ph, pw
            (3, 5, 9, 7, 11, 3, 3, 1, 1, 1, 1),
            (1, 4, 33, 35, 9, 3, 3, 1, 1, 1, 1),
            (2, 3, 17, 17, 8, 3, 3, 2, 2, 0, 0),
            (5, 16, 8, 8, 1, 3, 3, 2, 2, 1, 1),
            (4, 20, 6, 6, 17, 1, 1, 1, 1, 0, 0),
            (2, 6, 12, 10, 7, 1, 7, 1, 1, 0, 3),
            (2, 6, 10, 12, 7, 7, 1, 1, 1, 3, 0),
            (1, 3, 40, 40, 32, 3, 3, 2, 2, 0, 0),
            (17, 300, 4, 4, 12, 3, 3, 1, 1, 1, 1),
            (7, 9, 2, 3, 10, 3, 3, 1, 1, 1, 1),
            (9, 5, 5, 5, 6, 3, 3, 2, 2, 1, 1),
            (5, 12, 3, 3, 9, 1, 1, 1, 1, 0, 0),
            // Weight gradient on the register tile (C ≥ 16): ragged channel panels, rows wider
            // than one 16-column transpose, strides, 1×1 and rectangular kernels.
            (3, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1),
            (2, 40, 19, 37, 13, 3, 3, 2, 2, 1, 1),
            (3, 33, 18, 17, 24, 1, 1, 1, 1, 0, 0),
            (2, 17, 9, 11, 5, 3, 1, 1, 2, 1, 0),
            (1, 48, 5, 5, 70, 3, 3, 1, 1, 1, 1),
            // The 32 × 8 tile: rows of 8 (no padding), a ragged last group of positions (wo 39),
            // O not a multiple of 32 (both at the 95% limit's edges).
            (2, 5, 10, 10, 64, 3, 3, 1, 1, 0, 0),
            (2, 7, 6, 39, 32, 3, 3, 1, 1, 1, 1),
            (1, 9, 9, 16, 310, 3, 3, 1, 1, 1, 1),
        ];
        for (n, c, h, w, o, kh, kw, sh, sw, ph, pw) in geoms {
            let g = ConvGeom {
                n,
                c,
                h,
                w,
                o,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
            };
            let x: Vec<f32> = (0..n * c * h * w)
                .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
                .collect();
            let wt: Vec<f32> = (0..o * g.ckk())
                .map(|i| ((i * 13 % 17) as f32) / 8.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..o).map(|i| i as f32 * 0.1 - 0.3).collect();
            let dy: Vec<f32> = (0..n * o * g.l())
                .map(|i| ((i * 7 % 23) as f32) / 11.0 - 1.0)
                .collect();
            let close = |a: &[f32], b: &[f32], what: &str| {
                let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (i, (p, q)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * scale,
                        "{g:?} {what}[{i}]: {p} vs {q}"
                    );
                }
            };
            for bias in [None, Some(b.as_slice())] {
                let (mut y1, mut y2) = (vec![0f32; dy.len()], vec![0f32; dy.len()]);
                fast::forward(&g, &x, &wt, bias, crate::as_uninit(&mut y1));
                forward(&g, &x, &wt, bias, &mut y2);
                close(&y1, &y2, "y");
            }
            let mk = || (vec![0f32; x.len()], vec![0f32; wt.len()], vec![0f32; o]);
            let (mut dx1, mut dw1, mut db1) = mk();
            let (mut dx2, mut dw2, mut db2) = mk();
            let u = crate::as_uninit;
            fast::backward(&g, &x, &wt, &dy, u(&mut dx1), u(&mut dw1), u(&mut db1));
            backward(&g, &x, &wt, &dy, &mut dx2, &mut dw2, &mut db2);
            close(&dx1, &dx2, "dx");
            close(&dw1, &dw2, "dw");
            close(&db1, &db2, "db");
        }
    }
}
