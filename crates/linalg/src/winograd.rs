//! The 3 × 3, stride-1 f32 convolution by Winograd's minimal filtering F(2 × 2, 3 × 3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, eq. 8):
//!
//! ```text
//! Y = Aᵀ [ Σ_c (G g_{o,c} Gᵀ) ⊙ (Bᵀ d_c B) ] A
//! ```
//!
//! for every 2 × 2 output tile Y of output channel o, with d_c the 4 × 4 input tile of channel c
//! that the tile's outputs read (overlapping its neighbours by two rows and columns) and
//!
//! ```text
//!      ⎡1  0 −1  0⎤        ⎡1    0    0 ⎤        ⎡1  1  1  0⎤
//! Bᵀ = ⎢0  1  1  0⎥    G = ⎢1/2  1/2  1/2⎥   Aᵀ = ⎣0  1 −1 −1⎦
//!      ⎢0 −1  1  0⎥        ⎢1/2 −1/2  1/2⎥
//!      ⎣0  1  0 −1⎦        ⎣0    0    1 ⎦
//! ```
//!
//! Why: the 16 element-wise products per tile replace 36 multiply-adds, so the sum over input
//! channels — 16 independent products (P × C)·(C × O) over the P tiles, one per position ξ of
//! the 4 × 4 transformed tile — does 2.25× fewer FMAs than the direct convolution. The direct
//! kernels of [`crate::conv`] already run the small convolutions of the mini UNet (8 × 8 and
//! 16 × 16 images, 32–64 channels) at ≈ 90% of the machine's FMA peak, as does torch's, so only
//! fewer operations make them faster. The transforms are additions and halvings, and the result
//! differs from the direct sum by rounding alone (tested against it in f64). The input gradient
//! is this forward on dy with the flipped kernel (see `conv::fast::backward`); the weight
//! gradient is the transform's adjoint ([`weight_grad`]).
//!
//! Layout: the input is made channels-last (16 channels per vector), so both transforms are plain
//! vector additions; the products keep 16 output channels per vector. Work is split into items —
//! a group of whole images where one image's tiles fit the budget below, else one band of an
//! image's tile rows — each writing only its own outputs, and every output value is the same
//! sequence of operations whatever the grouping, batch or thread count: the bits do not depend
//! on them.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::conv::ConvGeom;
use crate::{kernels, SyncPtr};

/// Values per vector (channels per step of both transforms and of the products).
const L: usize = 16;
/// Budget of one item's transformed input (16 × tiles × C floats), in floats: 24 Ki (96 KiB;
/// 48 Ki, three 8 × 8 images per item instead of one, measured 20% slower on them).
const V_BUDGET: usize = 24 * 1024;

/// Whether [`forward`] computes this convolution: 3 × 3 kernel, stride 1, padding ≤ 2, and input
/// and output channels in whole vectors.
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.ph <= 2
        && g.pw <= 2
        && g.c.is_multiple_of(L)
        && g.o.is_multiple_of(L)
        && g.c > 0
        && g.o > 0
        && g.ho() > 0
        && g.wo() > 0
}

/// Output channels per product step (vectors of 16) and tiles per register block: 64 channels
/// × 6 tiles (24 accumulators), else 32 × 12 or 16 × 12. (Fewer tiles per block to pad a band
/// less, e.g. 4 or 8, measured slower here than the padding they save.)
fn blocking(o: usize) -> (usize, usize) {
    if o.is_multiple_of(64) {
        (4, 6)
    } else if o.is_multiple_of(32) {
        (2, 12)
    } else {
        (1, 12)
    }
}

/// The transformed weights U = G g Gᵀ laid out `[c][ξ][o]` (ξ = 4a + b the position in the
/// 4 × 4 tile): for one ξ, row c holds all output channels contiguously (the products' vector
/// operand). Parallel over input channels.
fn transform_weight(w: &[f32], c: usize, o: usize) -> Vec<f32> {
    let mut u = vec![0f32; c * 16 * o];
    crate::par::for_chunks_mut(&mut u, 16 * o, |ci, uc| {
        for oi in 0..o {
            let g = &w[(oi * c + ci) * 9..(oi * c + ci + 1) * 9];
            // t = G g (4 × 3), rows of g combined.
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            // u = t Gᵀ (4 × 4), columns combined.
            for (a, r) in t.iter().enumerate() {
                let v = [
                    r[0],
                    0.5 * (r[0] + r[1] + r[2]),
                    0.5 * (r[0] - r[1] + r[2]),
                    r[2],
                ];
                for (b, &x) in v.iter().enumerate() {
                    uc[(4 * a + b) * o + oi] = x;
                }
            }
        }
    });
    u
}

/// Per-thread buffers, kept between calls (a thread-local): allocating and zeroing them per
/// work item cost ≈ 10% of a small convolution.
#[derive(Default)]
struct Scratch {
    /// The band's input rows, zero-padded, channels-last: `[row][col][c]`.
    slab: Vec<f32>,
    /// The layout `slab` holds (rows, cols, C, pw, W): its border is zero for exactly this one.
    slab_key: [usize; 5],
    /// The band's dy rows, channels-last, zero past Ho and Wo (the weight gradient).
    dslab: Vec<f32>,
    /// The layout `dslab` holds (rows, cols, O, Wo).
    dslab_key: [usize; 4],
    /// Transformed input `[ξ][tile][c]`.
    v: Vec<f32>,
    /// Products `[ξ][tile][o]` (the forward), transformed dy (the weight gradient).
    m: Vec<f32>,
    /// The band's outputs, channels-last `[position][o]`.
    out: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// `f` with this thread's [`Scratch`] (a fresh one if it is in use further up this thread's
/// stack, e.g. when a pool runs a loop inline).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// y (N, O, Ho, Wo) = conv(x, w) + bias for a geometry where [`applies`] holds.
///
/// # Safety
/// AVX-512F must be available. Sizes are checked by the caller (`check_forward`).
pub(crate) unsafe fn forward(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
) {
    debug_assert!(applies(g));
    let (ho, wo) = (g.ho(), g.wo());
    let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
    // Items: an image's tile rows in bands of equal height, as many rows as keep a band's
    // transformed input within the budget; where a whole image fits, groups of whole images
    // (small images: 4 × 4 ones have 4 tiles, too few for one register block), about two per
    // thread.
    let per_row = 16 * tw * g.c;
    let max_rows = (V_BUDGET / per_row).clamp(1, th);
    let bands = th.div_ceil(max_rows);
    let band = th.div_ceil(bands);
    let bands = th.div_ceil(band);
    let group = if bands == 1 {
        let fit = (V_BUDGET / (per_row * th)).max(1);
        fit.min(g.n.div_ceil(2 * crate::par::threads())).max(1)
    } else {
        1
    };
    let groups = g.n.div_ceil(group);
    let u = transform_weight(w, g.c, g.o);
    let yp = SyncPtr(y.as_mut_ptr().cast::<f32>());
    let (chw, ol) = (g.c * g.h * g.w, g.o * ho * wo);
    crate::par::for_ranges(groups * bands, |r| {
        with_scratch(|s| {
            for item in r.clone() {
                let (gi, b) = (item / bands, item % bands);
                let (i0, i1) = (gi * group, g.n.min((gi + 1) * group));
                let t0 = b * band;
                let t1 = th.min(t0 + band);
                // SAFETY: item (gi, b) alone writes output rows 2·t0..2·t1 of images i0..i1.
                unsafe {
                    let ys = yp.get().add(i0 * ol);
                    band_forward(g, &x[i0 * chw..i1 * chw], &u, bias, (t0, t1), ys, s);
                }
            }
        })
    });
}

/// Tile rows t0..t1 of each image in `xs` (whole images, consecutive): pad + transpose to
/// channels-last, input transform, the 16 products with the output transform, transpose back
/// into `ys` (the same images' outputs).
///
/// # Safety
/// AVX-512F must be available; `ys` points at the images' (O, Ho, Wo) outputs.
#[target_feature(enable = "avx512f")]
unsafe fn band_forward(
    g: &ConvGeom,
    xs: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    (t0, t1): (usize, usize),
    ys: *mut f32,
    s: &mut Scratch,
) {
    let (ho, wo, c, o) = (g.ho(), g.wo(), g.c, g.o);
    let images = xs.len() / (c * g.h * g.w);
    let tw = wo.div_ceil(2);
    let (q, rb) = blocking(o);
    let (tiles, padded_tiles) = transform_input(g, xs, (t0, t1), rb, s);
    let per_image = tiles / images;
    // Per block of 16q output channels: the 16 products for all the item's tiles (each ξ's
    // slice of U, C × 16q, stays in cache across the register blocks), then the output
    // transform of every tile.
    let ldm = padded_tiles * q * L;
    s.m.resize(16 * ldm, 0.0);
    let band_len = 2 * (t1 - t0) * wo;
    s.out.resize(images * band_len * o, 0.0);
    let out_rows = (2 * t1).min(ho) - 2 * t0;
    for o0 in (0..o).step_by(q * L) {
        let mut bias_v = [_mm512_setzero_ps(); 4];
        if let Some(b) = bias {
            for (k, bv) in bias_v.iter_mut().enumerate().take(q) {
                *bv = _mm512_loadu_ps(b.as_ptr().add(o0 + k * L));
            }
        }
        for xi_ in 0..16 {
            let ub = u.as_ptr().add(xi_ * o + o0);
            for p0 in (0..tiles).step_by(rb) {
                let v = s.v.as_ptr().add((xi_ * padded_tiles + p0) * c);
                let m = s.m.as_mut_ptr().add(xi_ * ldm + p0 * q * L);
                let (ld, ldm) = ((c, 1), q * L);
                match q {
                    4 => products::<6, 4>(v, ld, ub, 16 * o, c, m, ldm, false),
                    2 => products::<12, 2>(v, ld, ub, 16 * o, c, m, ldm, false),
                    _ => products::<12, 1>(v, ld, ub, 16 * o, c, m, ldm, false),
                }
            }
        }
        for p in 0..tiles {
            let (j, t) = (p / per_image, p % per_image);
            let (oy, ox) = (2 * (t / tw), 2 * (t % tw));
            let d = s
                .out
                .as_mut_ptr()
                .add((j * band_len + oy * wo + ox) * o + o0);
            let (two_rows, two_cols) = (oy + 1 < out_rows, ox + 1 < wo);
            for (k, &bv) in bias_v.iter().enumerate().take(q) {
                let y = output_tile(s.m.as_ptr().add((p * q + k) * L), ldm, bv);
                let d = d.add(k * L);
                _mm512_storeu_ps(d, y[0][0]);
                if two_cols {
                    _mm512_storeu_ps(d.add(o), y[0][1]);
                }
                if two_rows {
                    _mm512_storeu_ps(d.add(wo * o), y[1][0]);
                    if two_cols {
                        _mm512_storeu_ps(d.add((wo + 1) * o), y[1][1]);
                    }
                }
            }
        }
    }
    // Channels-last bands → each image's (O, Ho·Wo) rows 2·t0 .. .
    let (l, l0, n) = (ho * wo, 2 * t0 * wo, out_rows * wo);
    for j in 0..images {
        let (src, yi) = (s.out.as_ptr().add(j * band_len * o), ys.add(j * o * l));
        for j0 in (0..n).step_by(L) {
            let rows_ = L.min(n - j0);
            for c0 in (0..o).step_by(L) {
                kernels::transpose_block(
                    src.add(j0 * o + c0),
                    o,
                    (rows_, rows_),
                    L,
                    yi.add(c0 * l + l0 + j0),
                    l,
                );
            }
        }
    }
}

/// Tile rows t0..t1 of each image in `xs` (whole images, consecutive): zero-padded and made
/// channels-last one image at a time (`s.slab`), then Bᵀ d B of every tile into `s.v` as
/// `[ξ][p][c]`, p = j·per_image + (ty − t0)·tw + tx for image j; the tile count is padded with
/// zero rows to a multiple of `pad_to`. Returns (tiles, padded tiles).
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn transform_input(
    g: &ConvGeom,
    xs: &[f32],
    (t0, t1): (usize, usize),
    pad_to: usize,
    s: &mut Scratch,
) -> (usize, usize) {
    let c = g.c;
    let chw = c * g.h * g.w;
    let tw = g.wo().div_ceil(2);
    let (rows, cols) = (2 * (t1 - t0) + 2, 2 * tw + 2);
    let per_image = (t1 - t0) * tw;
    let tiles = xs.len() / chw * per_image;
    let padded_tiles = tiles.div_ceil(pad_to) * pad_to;
    // Rows past the tiles enter the last register block: zero (their outputs are dropped).
    s.v.resize(16 * padded_tiles * c, 0.0);
    for xi_ in 0..16 {
        s.v[(xi_ * padded_tiles + tiles) * c..(xi_ + 1) * padded_tiles * c].fill(0.0);
    }
    // The slab: padded rows 2·t0 .. 2·t1 + 2 of one image. Its columns outside the image stay
    // zero from when it was zeroed for this layout, every row inside the image is overwritten,
    // and rows outside it are zeroed here.
    let key = [rows, cols, c, g.pw, g.w];
    if s.slab_key != key || s.slab.len() != rows * cols * c {
        s.slab.clear();
        s.slab.resize(rows * cols * c, 0.0);
        s.slab_key = key;
    }
    for (j, xi) in xs.chunks_exact(chw).enumerate() {
        for r in 0..rows {
            let iy = (2 * t0 + r) as isize - g.ph as isize;
            let dst = s.slab.as_mut_ptr().add(r * cols * c);
            if iy < 0 || iy >= g.h as isize {
                std::ptr::write_bytes(dst, 0, cols * c);
            } else {
                kernels::row_channels_last(xi, c, (g.h, g.w), iy as usize, dst.add(g.pw * c));
            }
        }
        for t in 0..per_image {
            let (ty, tx) = (t / tw, t % tw);
            let src = s.slab.as_ptr().add(((2 * ty) * cols + 2 * tx) * c);
            let dst = s.v.as_mut_ptr().add((j * per_image + t) * c);
            for c0 in (0..c).step_by(L) {
                input_tile(src.add(c0), cols * c, c, dst.add(c0), padded_tiles * c);
            }
        }
    }
    (tiles, padded_tiles)
}

/// The bracket of the weight gradient for the images `xs` (whole images, consecutive) given their
/// `dys`, added to `du` (`[ξ][o][c]`); [`weight_grad_transform`] turns the image groups' brackets,
/// summed, into dW. The adjoint of the forward's transform (Lavin & Gray 2016, §4: the gradient of
/// Y = Aᵀ[U ⊙ V]A with respect to g):
///
/// ```text
/// dW_{o,c} = Gᵀ [ Σ_tiles (A dY_o Aᵀ) ⊙ (Bᵀ d_c B) ] G
/// ```
///
/// The Σ runs as 16 products (O × tiles)·(tiles × C) over bands of tiles (several small images
/// per band), continuing one FMA chain per value of `du` over the bands in order, so the bits do
/// not depend on threads.
///
/// # Safety
/// AVX-512F must be available; [`applies`] holds for `g`.
pub(crate) unsafe fn weight_grad(g: &ConvGeom, xs: &[f32], dys: &[f32], du: &mut [f32]) {
    let (c, o, ho, wo) = (g.c, g.o, g.ho(), g.wo());
    let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
    let (chw, ol) = (c * g.h * g.w, o * ho * wo);
    let n = xs.len() / chw;
    assert!(du.len() == 16 * o * c && n * chw == xs.len() && n * ol == dys.len());
    let per_row = 16 * tw * c.max(o);
    let max_rows = (V_BUDGET / per_row).clamp(1, th);
    let band = th.div_ceil(th.div_ceil(max_rows));
    // Whole images per band where one fits.
    let group = if band == th {
        (V_BUDGET / (per_row * th)).max(1)
    } else {
        1
    };
    // SAFETY: as this function's.
    with_scratch(|s| unsafe { weight_grad_bands(g, xs, dys, du, (band, group), s) })
}

/// [`weight_grad`]'s loop over image groups and bands.
///
/// # Safety
/// As [`weight_grad`].
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_bands(
    g: &ConvGeom,
    xs: &[f32],
    dys: &[f32],
    du: &mut [f32],
    (band, group): (usize, usize),
    s: &mut Scratch,
) {
    let (c, o, ho, wo) = (g.c, g.o, g.ho(), g.wo());
    let th = ho.div_ceil(2);
    let (chw, ol) = (c * g.h * g.w, o * ho * wo);
    let n = xs.len() / chw;
    // Input channels are the vector operand here: the forward's choice of vectors per step.
    let q = blocking(c).0;
    for i0 in (0..n).step_by(group) {
        let i1 = n.min(i0 + group);
        for t0 in (0..th).step_by(band) {
            let t1 = th.min(t0 + band);
            let xb = &xs[i0 * chw..i1 * chw];
            let (tiles, _) = transform_input(g, xb, (t0, t1), 1, s);
            transform_grad(g, &dys[i0 * ol..i1 * ol], (t0, t1), s);
            for xi_ in 0..16 {
                let dm = s.m.as_ptr().add(xi_ * tiles * o);
                let v = s.v.as_ptr().add(xi_ * tiles * c);
                let dst = du.as_mut_ptr().add(xi_ * o * c);
                for c0 in (0..c).step_by(q * L) {
                    let mut o0 = 0;
                    while o0 < o {
                        let (a, m) = (dm.add(o0), dst.add(o0 * c + c0));
                        let (ld, b) = ((1, o), v.add(c0));
                        let rows = match (q, o - o0) {
                            (4, r) if r >= 6 => {
                                products::<6, 4>(a, ld, b, c, tiles, m, c, true);
                                6
                            }
                            (4, r) if r >= 4 => {
                                products::<4, 4>(a, ld, b, c, tiles, m, c, true);
                                4
                            }
                            (4, _) => {
                                products::<2, 4>(a, ld, b, c, tiles, m, c, true);
                                2
                            }
                            (2, r) if r >= 12 => {
                                products::<12, 2>(a, ld, b, c, tiles, m, c, true);
                                12
                            }
                            (2, r) if r >= 8 => {
                                products::<8, 2>(a, ld, b, c, tiles, m, c, true);
                                8
                            }
                            (2, _) => {
                                products::<4, 2>(a, ld, b, c, tiles, m, c, true);
                                4
                            }
                            (_, r) if r >= 12 => {
                                products::<12, 1>(a, ld, b, c, tiles, m, c, true);
                                12
                            }
                            (_, r) if r >= 8 => {
                                products::<8, 1>(a, ld, b, c, tiles, m, c, true);
                                8
                            }
                            _ => {
                                products::<4, 1>(a, ld, b, c, tiles, m, c, true);
                                4
                            }
                        };
                        o0 += rows;
                    }
                }
            }
        }
    }
}

/// dW = Gᵀ · du · G per (o, c), du the image groups' brackets from [`weight_grad`] summed (in
/// group order, by the caller); dW row-major (O, C·9).
#[allow(clippy::needless_range_loop)] // j indexes a column across the rows of a 3 × 4 block
pub(crate) fn weight_grad_transform(g: &ConvGeom, du: &[f32], dw: &mut [MaybeUninit<f32>]) {
    let (o, c) = (g.o, g.c);
    assert!(dw.len() == o * c * 9 && du.len() == 16 * o * c);
    crate::par::for_chunks_mut(dw, c * 9, |oi, row| {
        for ci in 0..c {
            let b = |xi_: usize| du[(xi_ * o + oi) * c + ci];
            let mut t = [[0f32; 4]; 3];
            for j in 0..4 {
                let (u0, u1, u2, u3) = (b(j), b(4 + j), b(8 + j), b(12 + j));
                t[0][j] = u0 + 0.5 * (u1 + u2);
                t[1][j] = 0.5 * (u1 - u2);
                t[2][j] = 0.5 * (u1 + u2) + u3;
            }
            let dst = &mut row[ci * 9..(ci + 1) * 9];
            for (ky, r) in t.iter().enumerate() {
                dst[3 * ky].write(r[0] + 0.5 * (r[1] + r[2]));
                dst[3 * ky + 1].write(0.5 * (r[1] - r[2]));
                dst[3 * ky + 2].write(0.5 * (r[1] + r[2]) + r[3]);
            }
        }
    });
}

/// A dY Aᵀ of output tile rows t0..t1 of each image in `dys` (whole images' dy, consecutive),
/// into `s.m` as `[ξ][tile][o]` (tiles numbered as [`transform_input`]'s): each image's band made
/// channels-last (`s.out`, outputs past Ho or Wo zero), then per tile and 16 channels the 2 × 2
/// values spread to 4 × 4.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn transform_grad(g: &ConvGeom, dys: &[f32], (t0, t1): (usize, usize), s: &mut Scratch) {
    let (o, ho, wo) = (g.o, g.ho(), g.wo());
    let tw = wo.div_ceil(2);
    let (rows, cols) = (2 * (t1 - t0), 2 * tw);
    // As the slab: columns past Wo stay zero from when it was zeroed for this layout, rows
    // past Ho are zeroed.
    let key = [rows, cols, o, wo];
    if s.dslab_key != key || s.dslab.len() != rows * cols * o {
        s.dslab.clear();
        s.dslab.resize(rows * cols * o, 0.0);
        s.dslab_key = key;
    }
    let per_image = (t1 - t0) * tw;
    let tiles = dys.len() / (o * ho * wo) * per_image;
    s.m.resize(16 * tiles * o, 0.0);
    for (j, dyi) in dys.chunks_exact(o * ho * wo).enumerate() {
        for r in 0..rows {
            let dst = s.dslab.as_mut_ptr().add(r * cols * o);
            if 2 * t0 + r >= ho {
                std::ptr::write_bytes(dst, 0, cols * o);
            } else {
                kernels::row_channels_last(dyi, o, (ho, wo), 2 * t0 + r, dst);
            }
        }
        for t in 0..per_image {
            let (ty, tx) = (t / tw, t % tw);
            let src = s.dslab.as_ptr().add((2 * ty * cols + 2 * tx) * o);
            let dst = s.m.as_mut_ptr().add((j * per_image + t) * o);
            for o0 in (0..o).step_by(L) {
                let p = src.add(o0);
                let (y00, y01) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(o)));
                let (y10, y11) = (
                    _mm512_loadu_ps(p.add(cols * o)),
                    _mm512_loadu_ps(p.add((cols + 1) * o)),
                );
                // A dY (rows), then · Aᵀ (columns).
                let e0 = spread(y00, y10);
                let e1 = spread(y01, y11);
                for a in 0..4 {
                    for (b, v) in spread(e0[a], e1[a]).into_iter().enumerate() {
                        _mm512_storeu_ps(dst.add((4 * a + b) * tiles * o + o0), v);
                    }
                }
            }
        }
    }
}

/// One column (or row) of A applied to a pair: (r0, r1) → (r0, r0 + r1, r0 − r1, −r1).
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn spread(a: __m512, b: __m512) -> [__m512; 4] {
    [
        a,
        _mm512_add_ps(a, b),
        _mm512_sub_ps(a, b),
        _mm512_sub_ps(_mm512_setzero_ps(), b),
    ]
}

/// Bᵀ d B of one 4 × 4 tile for 16 channels: d[i][j] at `src + (i·lds + j·ldc)`, the 16 results
/// at `dst + ξ·ldv`.
///
/// # Safety
/// AVX-512F; the tile and the 16 destinations are in bounds.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // j indexes a column across the rows of a register tile
unsafe fn input_tile(src: *const f32, lds: usize, ldc: usize, dst: *mut f32, ldv: usize) {
    // Rows combined (Bᵀ d), then columns (· B).
    let mut e = [[_mm512_setzero_ps(); 4]; 4];
    for j in 0..4 {
        let p = src.add(j * ldc);
        let (d0, d1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(lds)));
        let (d2, d3) = (
            _mm512_loadu_ps(p.add(2 * lds)),
            _mm512_loadu_ps(p.add(3 * lds)),
        );
        e[0][j] = _mm512_sub_ps(d0, d2);
        e[1][j] = _mm512_add_ps(d1, d2);
        e[2][j] = _mm512_sub_ps(d2, d1);
        e[3][j] = _mm512_sub_ps(d1, d3);
    }
    for (a, r) in e.iter().enumerate() {
        let v = [
            _mm512_sub_ps(r[0], r[2]),
            _mm512_add_ps(r[1], r[2]),
            _mm512_sub_ps(r[2], r[1]),
            _mm512_sub_ps(r[1], r[3]),
        ];
        for (b, x) in v.into_iter().enumerate() {
            _mm512_storeu_ps(dst.add((4 * a + b) * ldv), x);
        }
    }
}

/// Aᵀ m A + bias for 16 channels: m[ξ] at `m + ξ·ldm`; returns the 2 × 2 outputs.
///
/// # Safety
/// AVX-512F; the 16 vectors are in bounds.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // b indexes a column across the rows of a register tile
unsafe fn output_tile(m: *const f32, ldm: usize, bias: __m512) -> [[__m512; 2]; 2] {
    // Rows combined (Aᵀ m: 2 × 4), then columns (· A: 2 × 2).
    let mut t = [[_mm512_setzero_ps(); 4]; 2];
    for b in 0..4 {
        let p = m.add(b * ldm);
        let (m0, m1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(4 * ldm)));
        let (m2, m3) = (
            _mm512_loadu_ps(p.add(8 * ldm)),
            _mm512_loadu_ps(p.add(12 * ldm)),
        );
        t[0][b] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        t[1][b] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    let mut y = [[_mm512_setzero_ps(); 2]; 2];
    for (yr, r) in y.iter_mut().zip(&t) {
        yr[0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]), bias);
        yr[1] = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]), bias);
    }
    y
}

/// `m[r·ldm + j·16..] (+)= Σ_k a[r·lr + k·lk] · b[k·ldb + j·16..]` for R rows × Q vectors: one
/// FMA chain per value over k in order, from zero or (`accumulate`) from m's values — the
/// register-blocked outer product of [`crate::kernels`] with the broadcast operand `a`. The
/// forward: a = transformed input tiles (rows: tiles, k: input channels), b = U; the weight
/// gradient: a = transformed dy (rows: output channels, k: tiles), b = transformed input.
///
/// # Safety
/// AVX-512F; every a[r·lr + k·lk], b[k·ldb + 0..16Q] and m[r·ldm + 0..16Q] for r < R, k < kc is
/// in bounds.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn products<const R: usize, const Q: usize>(
    a: *const f32,
    (lr, lk): (usize, usize),
    b: *const f32,
    ldb: usize,
    kc: usize,
    m: *mut f32,
    ldm: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); Q]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(m.add(r * ldm + j * L));
            }
        }
    }
    // Row offsets of the broadcast operand, and both operands' pointers advanced per step:
    // no index arithmetic (nor its overflow checks, on in the dev profile) inside the loop.
    let mut offs = [0usize; R];
    for (r, off) in offs.iter_mut().enumerate() {
        *off = r * lr;
    }
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        let mut bv = [_mm512_setzero_ps(); Q];
        for (j, bj) in bv.iter_mut().enumerate() {
            *bj = _mm512_loadu_ps(bp.add(j * L));
        }
        for (row, &off) in acc.iter_mut().zip(&offs) {
            let s = _mm512_set1_ps(*ap.add(off));
            for (x, &bj) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(s, bj, *x);
            }
        }
        ap = ap.add(lk);
        bp = bp.add(ldb);
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            _mm512_storeu_ps(m.add(r * ldm + j * L), x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(
        n: usize,
        c: usize,
        (h, w): (usize, usize),
        o: usize,
        (ph, pw): (usize, usize),
    ) -> ConvGeom {
        ConvGeom {
            n,
            c,
            h,
            w,
            o,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            ph,
            pw,
        }
    }

    fn data(g: &ConvGeom) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = (0..g.n * g.c * g.h * g.w)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        let w = (0..g.o * g.c * 9)
            .map(|i| ((i * 13 % 17) as f32) / 8.0 - 1.0)
            .collect();
        let b = (0..g.o).map(|i| i as f32 * 0.1 - 0.3).collect();
        (x, w, b)
    }

    fn run(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let mut y = vec![f32::NAN; g.n * g.o * g.ho() * g.wo()];
        // SAFETY: the test runs only where AVX-512F is present (checked by the callers).
        unsafe { forward(g, x, w, b, crate::as_uninit(&mut y)) };
        y
    }

    /// Every term of the convolution's defining sums: `f(n, o, c, (oy, ox), (ky, kx), x value)`
    /// for each output position and kernel tap that reads inside the image (the padding's zeros
    /// add nothing). Both reference sums below — y = b + Σ x·w and dW = Σ x·dy — are built from it.
    fn for_each_term(g: &ConvGeom, x: &[f32], mut f: impl FnMut([usize; 7], f64)) {
        let (ho, wo) = (g.ho(), g.wo());
        for n in 0..g.n {
            for o in 0..g.o {
                for c in 0..g.c {
                    for (oy, ky, ox, kx) in (0..ho).flat_map(|oy| {
                        (0..3).flat_map(move |ky| {
                            (0..wo).flat_map(move |ox| (0..3).map(move |kx| (oy, ky, ox, kx)))
                        })
                    }) {
                        let iy = (oy + ky) as isize - g.ph as isize;
                        let ix = (ox + kx) as isize - g.pw as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let xv = x[((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                        f([n, o, c, oy, ox, ky, kx], xv as f64);
                    }
                }
            }
        }
    }

    /// Each `got[i]` within `tol` · Σ|terms| (at least `tol`) of its f64 sum, `want[i]` being
    /// (Σ, Σ|terms|).
    fn assert_near(g: &ConvGeom, what: &str, got: &[f32], want: &[(f64, f64)], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (i, (&got, &(sum, mag))) in got.iter().zip(want).enumerate() {
            let got = got as f64;
            assert!(
                (got - sum).abs() <= tol * mag.max(1.0),
                "{g:?} {what}[{i}] = {got}, direct sum {sum}"
            );
        }
    }

    #[test]
    fn matches_the_direct_sum() {
        // Expected numbers: the convolution's defining sum, y = b + Σ_c,ky,kx x·w, in f64 over
        // the same f32 inputs (no library); the transform reorders and rounds the sum in f32, so
        // each output agrees to 2e-6 of Σ|terms| at that output. Shapes: even and odd outputs
        // (partial last tiles), 1 × 1 and 2 × 3 images, padding 0, 1, 2 and unequal, 16–128
        // channels (all three register blocks), several bands per image (40 × 38), grouped
        // small images (4 × 4), with and without bias.
        if !kernels::available() {
            eprintln!("no AVX-512F on this CPU: Winograd path not exercised");
            return;
        }
        let cases = [
            geom(2, 16, (8, 8), 16, (1, 1)),
            geom(3, 32, (5, 7), 48, (1, 1)),
            geom(1, 16, (9, 6), 64, (0, 0)),
            geom(2, 48, (6, 5), 32, (2, 2)),
            geom(1, 32, (40, 38), 16, (1, 1)),
            geom(2, 16, (3, 4), 128, (1, 0)),
            geom(1, 128, (12, 12), 64, (1, 1)),
            geom(9, 32, (4, 4), 64, (1, 1)),
            geom(3, 16, (1, 1), 32, (1, 1)),
            geom(2, 32, (2, 3), 16, (2, 1)),
        ];
        for g in cases {
            assert!(applies(&g), "{g:?}");
            let (x, w, b) = data(&g);
            let (ho, wo) = (g.ho(), g.wo());
            for bias in [None, Some(b.as_slice())] {
                let y = run(&g, &x, &w, bias);
                // (Σ, Σ|terms|) per output, from the bias.
                let mut want: Vec<(f64, f64)> = (0..g.n * g.o * ho * wo)
                    .map(|i| {
                        let b0 = bias.map_or(0.0, |b| b[i / (ho * wo) % g.o] as f64);
                        (b0, b0.abs())
                    })
                    .collect();
                for_each_term(&g, &x, |[n, o, c, oy, ox, ky, kx], xv| {
                    let t = xv * w[((o * g.c + c) * 3 + ky) * 3 + kx] as f64;
                    let e = &mut want[((n * g.o + o) * ho + oy) * wo + ox];
                    *e = (e.0 + t, e.1 + t.abs());
                });
                assert_near(&g, "y", &y, &want, 2e-6);
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_direct_sum() {
        // Expected numbers: dW[o, c, ky, kx] = Σ_n,oy,ox dy[n, o, oy, ox] · x[n, c, oy + ky − ph,
        // ox + kx − pw] in f64 over the same f32 inputs (the definition; no library). The f32
        // result sums the transformed products over every tile of every image in one FMA chain,
        // so the bound is looser than the forward's: 1e-5 of Σ|terms|. Shapes as the forward's
        // test: odd outputs, padding 0–2, unequal padding, 16–128 channels, several bands.
        if !kernels::available() {
            return;
        }
        let cases = [
            geom(2, 16, (8, 8), 16, (1, 1)),
            geom(3, 32, (5, 7), 48, (1, 1)),
            geom(1, 16, (9, 6), 64, (0, 0)),
            geom(2, 48, (6, 5), 32, (2, 2)),
            geom(1, 32, (40, 38), 16, (1, 1)),
            geom(2, 64, (3, 4), 128, (1, 0)),
            geom(1, 128, (12, 12), 80, (1, 1)),
            geom(3, 16, (1, 1), 32, (1, 1)),
        ];
        for g in cases {
            let (x, _, _) = data(&g);
            let (ho, wo) = (g.ho(), g.wo());
            let dy: Vec<f32> = (0..g.n * g.o * ho * wo)
                .map(|i| ((i * 7 % 23) as f32) / 11.0 - 1.0)
                .collect();
            // Two calls where there are two images, the second continuing the first's sums.
            let (chw, ol) = (g.c * g.h * g.w, g.o * ho * wo);
            let split = g.n / 2;
            let mut du = vec![0f32; 16 * g.o * g.c];
            for r in [0..split, split..g.n] {
                let (xs, dys) = (
                    &x[r.start * chw..r.end * chw],
                    &dy[r.start * ol..r.end * ol],
                );
                // SAFETY: AVX-512F checked above; applies(g) holds for every case.
                unsafe { weight_grad(&g, xs, dys, &mut du) };
            }
            let mut gw = vec![f32::NAN; g.o * g.c * 9];
            weight_grad_transform(&g, &du, crate::as_uninit(&mut gw));
            // (Σ, Σ|terms|) per weight.
            let mut want = vec![(0f64, 0f64); g.o * g.c * 9];
            for_each_term(&g, &x, |[n, o, c, oy, ox, ky, kx], xv| {
                let t = xv * dy[((n * g.o + o) * ho + oy) * wo + ox] as f64;
                let e = &mut want[((o * g.c + c) * 3 + ky) * 3 + kx];
                *e = (e.0 + t, e.1 + t.abs());
            });
            assert_near(&g, "dW", &gw, &want, 1e-5);
        }
    }

    #[test]
    fn bits_do_not_depend_on_batch_or_threads() {
        // Each image's output must be the same bits whether it is computed alone or inside a
        // batch, and under 1, 2 or 3 threads (the seed streams' promise that a sample's numbers
        // do not depend on batch or shard). Two bands per image (36 × 36 at 32 channels), and
        // groups of whole small images sharing register blocks (4 × 5).
        if !kernels::available() {
            return;
        }
        for g in [
            geom(5, 32, (36, 36), 32, (1, 1)),
            geom(11, 16, (4, 5), 64, (1, 1)),
        ] {
            let (x, w, b) = data(&g);
            let batch = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| run(&g, &x, &w, Some(&b)))
            };
            let one = batch(1);
            assert_eq!(one, batch(2));
            assert_eq!(one, batch(3));
            let (chw, ol) = (g.c * g.h * g.w, g.o * g.ho() * g.wo());
            for i in 0..g.n {
                let gi = ConvGeom { n: 1, ..g };
                let alone = run(&gi, &x[i * chw..(i + 1) * chw], &w, Some(&b));
                assert_eq!(alone, one[i * ol..(i + 1) * ol], "image {i}");
            }
        }
    }

    #[test]
    fn applies_only_to_its_shapes() {
        // The direct kernels keep every other convolution: strides, other kernel sizes, padding
        // past 2, channel counts that are not whole vectors.
        let g = geom(1, 16, (8, 8), 16, (1, 1));
        assert!(applies(&g));
        assert!(!applies(&ConvGeom { sh: 2, sw: 2, ..g }));
        assert!(!applies(&ConvGeom {
            kh: 1,
            kw: 1,
            ph: 0,
            pw: 0,
            ..g
        }));
        assert!(!applies(&ConvGeom { ph: 3, ..g }));
        assert!(!applies(&ConvGeom { c: 8, ..g }));
        assert!(!applies(&ConvGeom { o: 24, ..g }));
    }
}
