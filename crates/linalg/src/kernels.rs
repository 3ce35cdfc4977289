//! AVX-512 f32 micro-kernels for the convolution (x86-64 only, chosen at run time).
//!
//! Two shapes of product, both with one fused multiply-add chain per output value (so the
//! result's bits do not depend on threads, batch split or scheduling):
//!
//! * [`tile_8x32`] — an 8 × 32 block of `C = A·B` with A packed as `[k][8]` (broadcast, one
//!   output channel per lane of the 8) and B as rows of 32 consecutive output positions (two
//!   512-bit vectors). 16 accumulators, 2 vector loads and 8 broadcasts per 16 FMAs: the
//!   register-blocked outer-product loop of Goto & van de Geijn (2008), used for the forward
//!   convolution, with flipped weights for its input gradient, and with dy as A and a
//!   channels-last image as B for its weight gradient.
//! * [`dot_4x6`] — a 4 × 6 block of `C += A·Bᵀ` where both A's and B's rows are contiguous in the
//!   summed index (the weight gradient Σ_l dy[o, l] · cols[k, l]): 24 accumulators of 16 lanes,
//!   10 loads per 24 FMAs, reduced across lanes once at the end (the weight gradient of
//!   convolutions with fewer than 16 input channels).
//! * [`tile_8x32_runs`] — the same tile reading B in place from a padded image (runs of output
//!   rows), and [`tile_32x8`] — its transpose (32 output channels × 8 positions, the image's
//!   values broadcast), for stride-1 forward convolutions without packing.
//! * [`transpose_block`], [`row_channels_last`] and [`lane_sum`]: the layout changes and bias
//!   sums around them (also used by the Winograd convolution of `crate::winograd`).
//!
//! The machine this was written on (2-core AMD Zen 4) executes a 512-bit FMA as two 256-bit
//! halves, so the peak is that of AVX2; the gain over the generic gemm comes from the 32 vector
//! registers (fewer loads per FMA) and from packing straight out of the image (no im2col pass).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows (output channels) of one [`tile_8x32`] block.
pub const MR: usize = 8;
/// Columns (output positions) of one [`tile_8x32`] block.
pub const NR: usize = 32;

/// Whether the AVX-512 kernels can run on this CPU (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The mask of the first `len` of 16 lanes (`len` ≤ 16; 0 gives no lane).
#[cfg(target_arch = "x86_64")]
pub fn tail_mask(len: usize) -> __mmask16 {
    debug_assert!(len <= 16);
    ((1u32 << len) - 1) as __mmask16
}

/// One step of the register tiles: `acc[r] += splat(a[r]) · (v0, v1)` for every row r of `acc`
/// (8 rows; `a` points at the step's 8 broadcast values). A macro, not a function, so that the
/// step is always expanded inside the calling kernel's loop (and its target features).
#[cfg(target_arch = "x86_64")]
macro_rules! fma_rows {
    ($acc:expr, $a:expr, $v0:expr, $v1:expr) => {{
        let (a, v0, v1) = ($a, $v0, $v1);
        for (r, row) in $acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r));
            row[0] = _mm512_fmadd_ps(av, v0, row[0]);
            row[1] = _mm512_fmadd_ps(av, v1, row[1]);
        }
    }};
}

/// How a [`tile_8x32`] block starts: from zero, from the values already in C (a later slice of
/// the summed index), or from a per-row bias.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    Zero,
    Load,
    Bias(&'a [f32]),
}

/// The two 16-lane masks of a tile row's first `cols` ≤ 32 values.
#[cfg(target_arch = "x86_64")]
fn col_masks(cols: usize) -> (__mmask16, __mmask16) {
    (
        tail_mask(cols.min(16)),
        tail_mask(cols.saturating_sub(16).min(16)),
    )
}

/// A tile's accumulators at the start of its sum (see [`Start`]).
///
/// # Safety
/// AVX-512F must be available; for `Start::Load`, `rows` rows of C at stride `ldc` are readable
/// in the lanes of the masks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn start_tile(
    start: Start<'_>,
    c: *const f32,
    ldc: usize,
    rows: usize,
    (m0, m1): (__mmask16, __mmask16),
) -> [[__m512; 2]; MR] {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    match start {
        Start::Zero => {}
        Start::Bias(bias) => {
            for (r, row) in acc.iter_mut().enumerate().take(rows) {
                let v = _mm512_set1_ps(bias[r]);
                *row = [v, v];
            }
        }
        Start::Load => {
            for (r, row) in acc.iter_mut().enumerate().take(rows) {
                let p = c.add(r * ldc);
                *row = [
                    _mm512_maskz_loadu_ps(m0, p),
                    _mm512_maskz_loadu_ps(m1, p.add(16)),
                ];
            }
        }
    }
    acc
}

/// A tile's first `rows` rows stored to C in the lanes of the masks.
///
/// # Safety
/// AVX-512F must be available; those values of C are writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile(
    acc: &[[__m512; 2]; MR],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    (m0, m1): (__mmask16, __mmask16),
) {
    for (r, row) in acc.iter().enumerate().take(rows) {
        let p = c.add(r * ldc);
        _mm512_mask_storeu_ps(p, m0, row[0]);
        _mm512_mask_storeu_ps(p.add(16), m1, row[1]);
    }
}

/// `C[r, j] = start[r, j] + Σ_{k < kc} a[k·8 + r] · b[k·ldb + j]` for r < rows ≤ 8, j < cols ≤ 32,
/// C row-major with row stride `ldc`.
///
/// # Safety
/// AVX-512F must be available ([`available`]); `a` holds `kc·8` values; for every k < kc,
/// `b[k·ldb .. k·ldb + cols]` is readable (lanes past `cols` are not read); `c` has `rows` rows of
/// `cols` writable values at stride `ldc`; a `Bias` slice has at least `rows` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_8x32(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    start: Start<'_>,
) {
    let (m0, m1) = col_masks(cols);
    let mut acc = start_tile(start, c, ldc, rows, (m0, m1));
    if cols == NR {
        for k in 0..kc {
            let bp = b.add(k * ldb);
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            fma_rows!(acc, a.add(k * MR), b0, b1);
        }
    } else {
        for k in 0..kc {
            let bp = b.add(k * ldb);
            let b0 = _mm512_maskz_loadu_ps(m0, bp);
            let b1 = _mm512_maskz_loadu_ps(m1, bp.add(16));
            fma_rows!(acc, a.add(k * MR), b0, b1);
        }
    }
    store_tile(&acc, c, ldc, rows, (m0, m1));
}

/// Where [`tile_8x32_runs`] reads the 32 B values of a summed index: half h (lanes 16h..16h+16)
/// is one or two runs of consecutive values, run r covering the lanes of mask `m[h][r]`, lane i
/// read at `row + d[h][r] + i` (a run of values starting at offset o in lane s has d = o − s).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Runs {
    pub m: [[__mmask16; 2]; 2],
    pub d: [[isize; 2]; 2],
}

/// [`tile_8x32`] with B read in place instead of from a packed panel: B's row k is gathered by
/// `runs` from `base + koff[k]` (masked loads, two per half at most), e.g. the output positions
/// of a stride-1 convolution read straight from the zero-padded image, whose rows of the column
/// matrix are shifted copies of it. `TWO`: some half has a second run.
///
/// # Safety
/// AVX-512F must be available; `a` holds `kc·8` values; `koff` has `kc` entries and every lane
/// that `runs` selects, `base + koff[k] + d + lane`, is readable; `c` and `start` as for
/// [`tile_8x32`], with `cols` the lanes `runs` selects.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_8x32_runs<const TWO: bool>(
    kc: usize,
    a: *const f32,
    base: *const f32,
    koff: &[usize],
    runs: &Runs,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    start: Start<'_>,
) {
    assert!(koff.len() >= kc);
    let (m0, m1) = col_masks(cols);
    let mut acc = start_tile(start, c, ldc, rows, (m0, m1));
    let Runs { m, d } = *runs;
    for (k, &off) in koff.iter().enumerate().take(kc) {
        let p = base.wrapping_add(off);
        let mut b0 = _mm512_maskz_loadu_ps(m[0][0], p.wrapping_offset(d[0][0]));
        let mut b1 = _mm512_maskz_loadu_ps(m[1][0], p.wrapping_offset(d[1][0]));
        if TWO {
            b0 = _mm512_mask_loadu_ps(b0, m[0][1], p.wrapping_offset(d[0][1]));
            b1 = _mm512_mask_loadu_ps(b1, m[1][1], p.wrapping_offset(d[1][1]));
        }
        fma_rows!(acc, a.add(k * MR), b0, b1);
    }
    store_tile(&acc, c, ldc, rows, (m0, m1));
}

/// Output channels of one [`tile_32x8`] block.
pub const OB: usize = 32;
/// Output positions of one [`tile_32x8`] block.
pub const PB: usize = 8;

/// The transposed product for short output rows: 32 output channels (two vectors) × 8
/// consecutive output positions, `out[p][o] = bias[o] + Σ_{k < kc} w[k·32 + o] · x[koff[k] + p]`,
/// the weight packed `[k][32]` as the vector operand and the 8 input values of each summed index
/// broadcast straight from the image (consecutive values: no packing and no masks), as oneDNN's
/// direct convolutions do. Used where an output row is too short for [`tile_8x32_runs`]'s
/// halves to be single runs (8-wide images). `out` is position-major (8 × 32); the caller
/// transposes it into place.
///
/// # Safety
/// AVX-512F must be available; `w` holds `kc·32` values; for every k < kc, `x + koff[k] ..+ 8`
/// is readable; `bias` (when given) has 32 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn tile_32x8(
    kc: usize,
    w: *const f32,
    x: *const f32,
    koff: &[usize],
    bias: Option<&[f32; OB]>,
    out: &mut [[f32; OB]; PB],
) {
    assert!(koff.len() >= kc);
    let init = match bias {
        Some(b) => [
            _mm512_loadu_ps(b.as_ptr()),
            _mm512_loadu_ps(b.as_ptr().add(16)),
        ],
        None => [_mm512_setzero_ps(); 2],
    };
    let mut acc = [init; PB];
    for (k, &off) in koff.iter().enumerate().take(kc) {
        let wp = w.add(k * OB);
        let (w0, w1) = (_mm512_loadu_ps(wp), _mm512_loadu_ps(wp.add(16)));
        fma_rows!(acc, x.add(off), w0, w1);
    }
    for (row, o) in acc.iter().zip(out.iter_mut()) {
        _mm512_storeu_ps(o.as_mut_ptr(), row[0]);
        _mm512_storeu_ps(o.as_mut_ptr().add(16), row[1]);
    }
}

/// Rows of A in one [`dot_4x6`] block.
pub const DA: usize = 4;
/// Rows of B in one [`dot_4x6`] block.
pub const DB: usize = 6;

/// `acc[i][j] += Σ_{t < len} a[i][t] · b[j][t]` for 4 rows `a[i]` and 6 rows `b[j]`, kept as
/// 16-lane partial sums (`acc` is 24 vectors, 4 × 6); reduce them with [`reduce_4x6`] once every
/// slice of the summed index has been added. Rows may repeat (a ragged block's padding).
///
/// # Safety
/// AVX-512F must be available; every row has `len` readable values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_4x6(
    len: usize,
    a: [*const f32; DA],
    b: [*const f32; DB],
    acc: &mut [[__m512; DB]; DA],
) {
    // Written out row by row (not as nested array loops) so that the 24 accumulators, 4 rows
    // of A and 1 row of B stay in the 32 vector registers.
    macro_rules! step {
        ($load:ident $(, $m:ident)?; $s:ident, $t:expr) => {{
            let a0 = $load($($m,)? a[0].add($t));
            let a1 = $load($($m,)? a[1].add($t));
            let a2 = $load($($m,)? a[2].add($t));
            let a3 = $load($($m,)? a[3].add($t));
            macro_rules! col {
                ($j:expr) => {{
                    let bv = $load($($m,)? b[$j].add($t));
                    $s[0][$j] = _mm512_fmadd_ps(a0, bv, $s[0][$j]);
                    $s[1][$j] = _mm512_fmadd_ps(a1, bv, $s[1][$j]);
                    $s[2][$j] = _mm512_fmadd_ps(a2, bv, $s[2][$j]);
                    $s[3][$j] = _mm512_fmadd_ps(a3, bv, $s[3][$j]);
                }};
            }
            col!(0);
            col!(1);
            col!(2);
            col!(3);
            col!(4);
            col!(5);
        }};
    }
    let mut s = *acc;
    let full = len / 16 * 16;
    let mut t = 0;
    while t < full {
        step!(_mm512_loadu_ps; s, t);
        t += 16;
    }
    if t < len {
        let m = tail_mask(len - t);
        step!(_mm512_maskz_loadu_ps, m; s, t);
    }
    *acc = s;
}

/// Zeroed accumulators for [`dot_4x6`].
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn zero_4x6() -> [[__m512; DB]; DA] {
    [[_mm512_setzero_ps(); DB]; DA]
}

/// The 4 × 6 sums of [`dot_4x6`]'s accumulators (lanes added in a fixed order).
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn reduce_4x6(acc: &[[__m512; DB]; DA]) -> [[f32; DB]; DA] {
    let mut out = [[0f32; DB]; DA];
    for i in 0..DA {
        for j in 0..DB {
            out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
        }
    }
    out
}

/// `dst[j·ldd + i] = src[i·lds + j]` for i < rows ≤ 16, j < cols ≤ 16, and 0 for
/// rows ≤ i < `out_rows` ≤ 16 (`(rows, out_rows)`: a block padded with zero rows): a block
/// transposed in registers (the 4-stage unpack/shuffle network: 64 shuffles per 256 values);
/// nothing outside the block is read or written.
///
/// # Safety
/// AVX-512F must be available; the `rows × cols` block is readable at `src` (row stride `lds`)
/// and the `cols × out_rows` block writable at `dst` (row stride `ldd`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn transpose_block(
    src: *const f32,
    lds: usize,
    (rows, out_rows): (usize, usize),
    cols: usize,
    dst: *mut f32,
    ldd: usize,
) {
    debug_assert!(rows <= out_rows && out_rows <= 16 && cols <= 16);
    if out_rows == 8 {
        return transpose_8(src, lds, rows, cols, dst, ldd);
    }
    let mr = tail_mask(out_rows);
    let u = quads::<16>(src, lds, rows, cols);
    // 128-bit lanes gathered: column 4q + m = lane q of u[m], u[4 + m], u[8 + m], u[12 + m].
    for m in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[m], u[4 + m]);
        let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + m], u[12 + m]);
        let v1 = _mm512_shuffle_f32x4::<0xdd>(u[m], u[4 + m]);
        let w1 = _mm512_shuffle_f32x4::<0xdd>(u[8 + m], u[12 + m]);
        let out = [
            (m, _mm512_shuffle_f32x4::<0x88>(v0, w0)),
            (8 + m, _mm512_shuffle_f32x4::<0xdd>(v0, w0)),
            (4 + m, _mm512_shuffle_f32x4::<0x88>(v1, w1)),
            (12 + m, _mm512_shuffle_f32x4::<0xdd>(v1, w1)),
        ];
        for (j, v) in out {
            if j < cols {
                // Unmasked where the row is 16 wide (8 wide: transpose_8): masked stores into
                // memory not yet in cache run at about half speed on Zen 5.
                match out_rows {
                    16 => _mm512_storeu_ps(dst.add(j * ldd), v),
                    _ => _mm512_mask_storeu_ps(dst.add(j * ldd), mr, v),
                }
            }
        }
    }
}

/// Row `y` of a (C, H, W) image, channels-last: `dst[x·C + c] = img[(c·H + y)·W + x]` for all
/// x < W, c < C (16 × 16 register transposes; C a multiple of 16 or a last partial block).
///
/// # Safety
/// AVX-512F must be available; `dst` has W·C writable values; y < H and `img` holds C·H·W.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn row_channels_last(
    img: &[f32],
    c: usize,
    (h, w): (usize, usize),
    y: usize,
    dst: *mut f32,
) {
    assert!(img.len() == c * h * w && y < h);
    for x0 in (0..w).step_by(16) {
        for c0 in (0..c).step_by(16) {
            let rows = 16.min(c - c0);
            transpose_block(
                img.as_ptr().add(c0 * h * w + y * w + x0),
                h * w,
                (rows, rows),
                16.min(w - x0),
                dst.add(x0 * c + c0),
                c,
            );
        }
    }
}

/// The first two stages of the register transposes: `N` rows (8 or 16; rows past `rows` are
/// zero) of `cols` ≤ 16 columns loaded, pairs of rows interleaved, then pairs of pairs, so that
/// u[4k + m] holds, in 128-bit lane q, rows 4k..4k + 3 at column 4q + m.
///
/// # Safety
/// AVX-512F must be available; the `rows × cols` block is readable at `src` (row stride `lds`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn quads<const N: usize>(
    src: *const f32,
    lds: usize,
    rows: usize,
    cols: usize,
) -> [__m512; N] {
    let mc = tail_mask(cols);
    let mut r = [_mm512_setzero_ps(); N];
    for (i, v) in r.iter_mut().enumerate().take(rows) {
        *v = _mm512_maskz_loadu_ps(mc, src.add(i * lds));
    }
    // Pairs of rows interleaved: t[2k] lane group q = (r2k[4q], r2k+1[4q], r2k[4q+1], ...),
    // t[2k + 1] the same for columns 4q + 2, 4q + 3.
    let mut t = [_mm512_setzero_ps(); N];
    for k in 0..N / 2 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    let mut u = [_mm512_setzero_ps(); N];
    for k in 0..N / 4 {
        let (a, b) = (_mm512_castps_pd(t[4 * k]), _mm512_castps_pd(t[4 * k + 2]));
        let (c, d) = (
            _mm512_castps_pd(t[4 * k + 1]),
            _mm512_castps_pd(t[4 * k + 3]),
        );
        u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    u
}

/// [`transpose_block`] for blocks of 8 output columns (the 32 × 8 tile's 8 positions): only the
/// two 8 × 8 halves are transposed (40 shuffles instead of 64), and each output row is one
/// unmasked 8-lane store.
///
/// # Safety
/// As [`transpose_block`] with `out_rows` = 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_8(
    src: *const f32,
    lds: usize,
    rows: usize,
    cols: usize,
    dst: *mut f32,
    ldd: usize,
) {
    let u = quads::<8>(src, lds, rows, cols);
    // Column 4q + m = lane q of u[m] (rows 0..3) then lane q of u[4 + m] (rows 4..7): pairs of
    // such columns in the two halves of one register.
    for m in 0..4 {
        let lo = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]); // u[m].0, u[m].1, u[4+m].0, u[4+m].1
        let hi = _mm512_shuffle_f32x4::<0xee>(u[m], u[4 + m]); // lanes 2, 3 likewise
        let pairs = [
            (m, 4 + m, _mm512_shuffle_f32x4::<0xd8>(lo, lo)),
            (8 + m, 12 + m, _mm512_shuffle_f32x4::<0xd8>(hi, hi)),
        ];
        for (j0, j1, v) in pairs {
            if j0 < cols {
                _mm256_storeu_ps(dst.add(j0 * ldd), _mm512_castps512_ps256(v));
            }
            if j1 < cols {
                let upper = _mm512_shuffle_f32x4::<0xee>(v, v);
                _mm256_storeu_ps(dst.add(j1 * ldd), _mm512_castps512_ps256(upper));
            }
        }
    }
}

/// Copies `n` floats from `src` to `dst` (not overlapping) with unmasked vector moves: full
/// 16-lane vectors, then one 16-, 8- or 4-lane move ending at the last value (overlapping values
/// already copied, with the same values). Masked loads and stores of data streaming through
/// memory run at about half the speed of plain ones on AMD Zen 5 (measured: 16 MB in rows of
/// 16, 8 and 4 floats, 1.3/1.9/3.1 ms masked against 0.6/0.9/1.0 ms this way), and a padding copy
/// is nothing but such rows.
///
/// # Safety
/// AVX-512F must be available; `n` values are readable at `src` and writable at `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn copy_row(src: *const f32, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(dst.add(i), _mm512_loadu_ps(src.add(i)));
        i += 16;
    }
    if i == n {
        return;
    }
    if n >= 16 {
        _mm512_storeu_ps(dst.add(n - 16), _mm512_loadu_ps(src.add(n - 16)));
    } else if n >= 8 {
        _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
        _mm256_storeu_ps(dst.add(n - 8), _mm256_loadu_ps(src.add(n - 8)));
    } else if n >= 4 {
        _mm_storeu_ps(dst, _mm_loadu_ps(src));
        _mm_storeu_ps(dst.add(n - 4), _mm_loadu_ps(src.add(n - 4)));
    } else {
        for k in 0..n {
            *dst.add(k) = *src.add(k);
        }
    }
}

/// Σ `row[t]` in 16 lanes (lane i: the values at t ≡ i mod 16, in order), then the lanes added in
/// a fixed order: the bias gradient's row sums without a 4-cycle add chain per value.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn lane_sum(row: &[f32]) -> f32 {
    let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let p = row.as_ptr();
    let full = row.len() / 32 * 32;
    let mut t = 0;
    while t < full {
        a = _mm512_add_ps(a, _mm512_loadu_ps(p.add(t)));
        b = _mm512_add_ps(b, _mm512_loadu_ps(p.add(t + 16)));
        t += 32;
    }
    if t < row.len() {
        let n = row.len() - t;
        a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(tail_mask(n.min(16)), p.add(t)));
        let m1 = tail_mask(n.saturating_sub(16));
        b = _mm512_add_ps(b, _mm512_maskz_loadu_ps(m1, p.add(t + 16)));
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a, b))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn copy_row_copies_exactly_the_row() {
        // Expected: by definition, dst[..n] = src[..n] and nothing around it written, for every
        // length across the 4/8/16-lane cases and unaligned starts.
        if !available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        let src: Vec<f32> = (0..80).map(|i| i as f32 + 0.5).collect();
        for n in 0..=40 {
            for off in [0usize, 1, 3] {
                let mut dst = vec![-1f32; 100];
                // SAFETY: AVX-512F checked; n values inside both buffers.
                unsafe { copy_row(src.as_ptr().add(off), dst.as_mut_ptr().add(7), n) };
                assert!(
                    dst[..7].iter().all(|&v| v == -1.0),
                    "n {n} off {off}: before"
                );
                assert_eq!(&dst[7..7 + n], &src[off..off + n], "n {n} off {off}");
                assert!(
                    dst[7 + n..].iter().all(|&v| v == -1.0),
                    "n {n} off {off}: after"
                );
            }
        }
    }

    #[test]
    fn tile_matches_a_plain_sum_for_every_partial_shape() {
        // Expected numbers: the same products summed in f64 here; the kernel's f32 FMA chain
        // must agree to f32 rounding (1e-5 relative on O(1) sums of 37 terms).
        if !available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        let kc = 37;
        let ldb = 40;
        let a: Vec<f32> = (0..kc * MR)
            .map(|i| ((i * 7 % 13) as f32) / 6.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..kc * ldb)
            .map(|i| ((i * 5 % 11) as f32) / 5.0 - 1.0)
            .collect();
        let bias: Vec<f32> = (0..MR).map(|r| r as f32 * 0.25).collect();
        for rows in [1, 5, 8] {
            for cols in [1, 15, 16, 17, 31, 32] {
                for mode in 0..3 {
                    let ldc = 35;
                    let mut c = vec![0.5f32; MR * ldc];
                    let before = c.clone();
                    let start = match mode {
                        0 => Start::Zero,
                        1 => Start::Load,
                        _ => Start::Bias(&bias),
                    };
                    unsafe {
                        tile_8x32(
                            kc,
                            a.as_ptr(),
                            b.as_ptr(),
                            ldb,
                            c.as_mut_ptr(),
                            ldc,
                            rows,
                            cols,
                            start,
                        )
                    };
                    for r in 0..MR {
                        for j in 0..ldc {
                            let got = c[r * ldc + j];
                            if r >= rows || j >= cols {
                                assert_eq!(got, before[r * ldc + j], "outside the block");
                                continue;
                            }
                            let s: f64 = (0..kc)
                                .map(|k| a[k * MR + r] as f64 * b[k * ldb + j] as f64)
                                .sum();
                            let init = [0.0, 0.5, bias[r] as f64][mode];
                            let want = init + s;
                            assert!(
                                (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "rows {rows} cols {cols} mode {mode} ({r},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn runs_tile_reads_what_the_packed_tile_reads() {
        // Expected numbers: tile_8x32 (checked against plain sums above) on B packed by hand
        // from the same runs; the same FMA chain, so the bits must agree.
        if !available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        let kc = 23;
        let src: Vec<f32> = (0..600)
            .map(|i| ((i * 11 % 29) as f32) / 7.0 - 2.0)
            .collect();
        let koff: Vec<usize> = (0..kc).map(|k| (k * 17) % 97).collect();
        let a: Vec<f32> = (0..kc * MR)
            .map(|i| ((i * 5 % 13) as f32) / 4.0 - 1.5)
            .collect();
        // Half 0: lanes 0..5 from offset 3, lanes 5..16 from offset 40; half 1: lanes 0..9
        // from offset 100 (a ragged panel of 25 columns); then one run per half.
        let cases = [
            (
                Runs {
                    m: [[0x001f, 0xffe0], [0x01ff, 0]],
                    d: [[3, 35], [100, 0]],
                },
                25,
                true,
            ),
            (
                Runs {
                    m: [[0xffff, 0], [0xffff, 0]],
                    d: [[7, 0], [60, 0]],
                },
                32,
                false,
            ),
        ];
        for (runs, cols, two) in cases {
            let mut b = vec![0f32; kc * NR];
            for (k, &off) in koff.iter().enumerate() {
                for j in 0..cols {
                    let (h, lane) = (j / 16, j % 16);
                    let r = usize::from(runs.m[h][0] & (1 << lane) == 0);
                    b[k * NR + j] = src[(off as isize + runs.d[h][r] + lane as isize) as usize];
                }
            }
            let (mut c1, mut c2) = (vec![0f32; MR * NR], vec![0f32; MR * NR]);
            unsafe {
                tile_8x32(
                    kc,
                    a.as_ptr(),
                    b.as_ptr(),
                    NR,
                    c1.as_mut_ptr(),
                    NR,
                    7,
                    cols,
                    Start::Zero,
                );
                let p = (a.as_ptr(), src.as_ptr(), c2.as_mut_ptr());
                if two {
                    tile_8x32_runs::<true>(
                        kc,
                        p.0,
                        p.1,
                        &koff,
                        &runs,
                        p.2,
                        NR,
                        7,
                        cols,
                        Start::Zero,
                    );
                } else {
                    tile_8x32_runs::<false>(
                        kc,
                        p.0,
                        p.1,
                        &koff,
                        &runs,
                        p.2,
                        NR,
                        7,
                        cols,
                        Start::Zero,
                    );
                }
            }
            assert_eq!(c1, c2, "cols {cols}");
        }
    }

    #[test]
    fn transposed_tile_matches_a_plain_sum() {
        // Expected numbers: the definition out[p][o] = bias[o] + Σ_k w[k][o]·x[koff[k] + p],
        // summed in f64 here; the f32 FMA chain agrees to 1e-5 relative (sums of 29 O(1) terms).
        if !available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        let kc = 29;
        let w: Vec<f32> = (0..kc * OB)
            .map(|i| ((i * 7 % 19) as f32) / 9.0 - 1.0)
            .collect();
        let x: Vec<f32> = (0..400)
            .map(|i| ((i * 5 % 23) as f32) / 11.0 - 1.0)
            .collect();
        let koff: Vec<usize> = (0..kc).map(|k| (k * 37) % 380).collect();
        let bias: [f32; OB] = std::array::from_fn(|o| o as f32 * 0.125 - 2.0);
        for b in [None, Some(&bias)] {
            let mut out = [[0f32; OB]; PB];
            unsafe { tile_32x8(kc, w.as_ptr(), x.as_ptr(), &koff, b, &mut out) };
            for (p, row) in out.iter().enumerate() {
                for (o, &got) in row.iter().enumerate() {
                    let s: f64 = (0..kc)
                        .map(|k| w[k * OB + o] as f64 * x[koff[k] + p] as f64)
                        .sum();
                    let want = s + b.map_or(0.0, |b| b[o] as f64);
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "({p},{o}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn transpose_block_moves_each_value_and_nothing_else() {
        // Expected values: the definition dst[j][i] = src[i][j], index by index; cells outside
        // the block keep their sentinel.
        if !available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        let (lds, ldd) = (19, 21);
        let src: Vec<f32> = (0..16 * lds).map(|i| i as f32 + 1.0).collect();
        for (rows, out_rows) in [
            (1, 1),
            (7, 7),
            (5, 8),
            (8, 8),
            (15, 15),
            (16, 16),
            (0, 3),
            (0, 8),
        ] {
            for cols in [1, 3, 4, 5, 8, 9, 12, 13, 16] {
                let mut dst = vec![-1f32; 16 * ldd];
                let ptr = dst.as_mut_ptr();
                unsafe { transpose_block(src.as_ptr(), lds, (rows, out_rows), cols, ptr, ldd) };
                for j in 0..16 {
                    for i in 0..ldd {
                        let want = if j < cols && i < rows {
                            src[i * lds + j]
                        } else if j < cols && i < out_rows {
                            0.0
                        } else {
                            -1.0
                        };
                        assert_eq!(
                            dst[j * ldd + i],
                            want,
                            "rows {rows}/{out_rows} cols {cols} ({j},{i})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn lane_sum_matches_a_plain_sum() {
        // Expected numbers: f64 sums computed here; small integers, so exact in f32 too.
        if !available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 100] {
            let v: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 3.0).collect();
            let want: f64 = v.iter().map(|&x| x as f64).sum();
            assert_eq!(unsafe { lane_sum(&v) } as f64, want, "len {len}");
        }
    }

    #[test]
    fn dot_block_matches_a_plain_sum_for_every_tail() {
        // Expected numbers: f64 sums computed here; f32 partial sums agree to 1e-5 relative.
        if !available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        for len in [1usize, 15, 16, 17, 40, 64] {
            let (lda, ldb) = (len + 3, len + 1);
            let a: Vec<f32> = (0..DA * lda)
                .map(|i| ((i * 7 % 13) as f32) / 6.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..DB * ldb)
                .map(|i| ((i * 5 % 11) as f32) / 5.0 - 1.0)
                .collect();
            let out = unsafe {
                let mut acc = zero_4x6();
                let ar = [0, 1, 2, 3].map(|i| a.as_ptr().add(i * lda));
                let br = [0, 1, 2, 3, 4, 5].map(|j| b.as_ptr().add(j * ldb));
                dot_4x6(len, ar, br, &mut acc);
                dot_4x6(len, ar, br, &mut acc);
                reduce_4x6(&acc)
            };
            for i in 0..DA {
                for j in 0..DB {
                    let want: f64 = 2.0
                        * (0..len)
                            .map(|t| a[i * lda + t] as f64 * b[j * ldb + t] as f64)
                            .sum::<f64>();
                    let got = out[i][j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "len {len} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
