//! A 2-D convolution in NCHW layout as im2col + one gemm per image (Chellapilla et al. 2006):
//! with cols_n = im2col(x_n) of shape (C·kh·kw, Ho·Wo), row (c·kh + ky)·kw + kx, the convolution
//! is y_n = W (O, C·kh·kw) · cols_n + b, its weight gradient Σ_n dy_n colsₙᵀ, its bias gradient
//! Σ dy, and its input gradient col2im(Wᵀ dy_n). Columns are built one image at a time into a
//! per-thread buffer (never a batch-sized one), parallel over images with rayon.
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

/// y (N, O, Ho, Wo) = conv(x, weight) + bias, one image at a time: im2col of one image into a
/// per-thread buffer, one gemm W (O, C·kh·kw) · cols. Parallel over images when there are at
/// least as many images as threads, else inside each gemm.
fn forward<T: ConvElem>(g: &ConvGeom, x: &[T], weight: &[T], bias: Option<&[T]>, y: &mut [T]) {
    assert!(g.is_valid(), "conv geometry {g:?}");
    let (l, ckk, chw) = (g.l(), g.ckk(), g.c * g.h * g.w);
    assert_eq!(x.len(), g.n * chw, "conv input size");
    assert_eq!(weight.len(), g.o * ckk, "conv weight size");
    assert_eq!(y.len(), g.n * g.o * l, "conv output size");
    if let Some(b) = bias {
        assert_eq!(b.len(), g.o, "conv bias size");
    }
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
    assert!(g.is_valid(), "conv geometry {g:?}");
    let (l, ckk, chw) = (g.l(), g.ckk(), g.c * g.h * g.w);
    assert_eq!(x.len(), g.n * chw, "conv input size");
    assert_eq!(weight.len(), g.o * ckk, "conv weight size");
    assert_eq!(dy.len(), g.n * g.o * l, "conv output-gradient size");
    assert_eq!(dx.len(), x.len(), "conv input-gradient size");
    assert_eq!(dw.len(), weight.len(), "conv weight-gradient size");
    assert_eq!(db.len(), g.o, "conv bias-gradient size");
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
                        &mut dcols,
                        l,
                        false,
                        (weight, 1, ckk),
                        (dyi, l, 1),
                        par,
                    );
                    col2im_one(&dcols, g, dxi);
                }
            }
            (gw, gb)
        })
        .collect();
    dw.fill(T::default());
    db.fill(T::default());
    for (gw, gb) in &partials {
        for (a, &b) in dw.iter_mut().zip(gw) {
            *a += b;
        }
        for (a, &b) in db.iter_mut().zip(gb) {
            *a += b;
        }
    }
}

/// y (N, O, Ho, Wo) = conv(x, weight) + bias in f32; see the module docs.
pub fn conv2d_forward_f32(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
    forward(g, x, w, b, y)
}

/// f64 version of [`conv2d_forward_f32`].
pub fn conv2d_forward_f64(g: &ConvGeom, x: &[f64], w: &[f64], b: Option<&[f64]>, y: &mut [f64]) {
    forward(g, x, w, b, y)
}

/// dx, dW, db of [`conv2d_forward_f32`] given dy; deterministic whatever the thread count.
pub fn conv2d_backward_f32(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (dx, dw, db): (&mut [f32], &mut [f32], &mut [f32]),
) {
    backward(g, x, w, dy, dx, dw, db)
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
        // the same bits under 1, 2 and 3 threads (and the forward too).
        let g = ConvGeom {
            n: 23,
            c: 4,
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
