//! The FID Inception's 3×3 pooling layers (pytorch-fid's FIDInceptionA/C/E and the stem), f32,
//! parallel over the (image, channel) planes.
//!
//! Each computes exactly what the candle 0.11 CPU expression it replaces computes — the same
//! window order, comparisons and roundings — so the features' bits do not change; candle's
//! pooling runs on one thread with strided indexing, ≈ 8% of an Inception batch here.

/// Which pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool3 {
    /// Max over 3×3 windows at stride 2, no padding (candle `max_pool2d_with_stride(3, 2)`).
    MaxValidStride2,
    /// Max over 3×3 windows at stride 1 of the edge-replicated image (same size out; equal to
    /// −∞ padding).
    MaxSame,
    /// Mean over the in-image taps of 3×3 windows at stride 1 (`count_include_pad=False`):
    /// the zero-padded window sum times 1/9, times 9 / (number of in-image taps), as the
    /// candle expression does.
    AvgSameExcludePad,
}

/// Output side of `kind` on an input side `n`.
pub fn out_len(kind: Pool3, n: usize) -> usize {
    match kind {
        Pool3::MaxValidStride2 => (n - 3) / 2 + 1,
        _ => n,
    }
}

/// 9 / (number of in-image taps) of the 3×3 window centred on (i, j) of an h × w plane, in f32:
/// the factor that turns a zero-padded 3×3 average (sum / 9) into one over the in-image taps.
pub fn exclude_pad_factor(i: usize, j: usize, h: usize, w: usize) -> f32 {
    let taps = |i: usize, n: usize| 3 - usize::from(i == 0) - usize::from(i + 1 == n);
    9.0 / (taps(i, h.max(1)) * taps(j, w.max(1))) as f32
}

fn plane(kind: Pool3, x: &[f32], h: usize, w: usize, y: &mut [f32]) {
    match kind {
        Pool3::MaxValidStride2 => {
            let (ho, wo) = (out_len(kind, h), out_len(kind, w));
            for i in 0..ho {
                for j in 0..wo {
                    let mut best = x[2 * i * w + 2 * j];
                    for m in 0..3 {
                        for n in 0..3 {
                            let v = x[(2 * i + m) * w + 2 * j + n];
                            if best < v {
                                best = v;
                            }
                        }
                    }
                    y[i * wo + j] = best;
                }
            }
        }
        Pool3::MaxSame => {
            let at = |r: isize, c: isize| {
                let r = r.clamp(0, h as isize - 1) as usize;
                let c = c.clamp(0, w as isize - 1) as usize;
                x[r * w + c]
            };
            for i in 0..h as isize {
                for j in 0..w as isize {
                    let mut best = at(i - 1, j - 1);
                    for m in -1..=1 {
                        for n in -1..=1 {
                            let v = at(i + m, j + n);
                            if best < v {
                                best = v;
                            }
                        }
                    }
                    y[i as usize * w + j as usize] = best;
                }
            }
        }
        Pool3::AvgSameExcludePad => {
            let scale = (1f64 / 9.0) as f32;
            for i in 0..h {
                for j in 0..w {
                    let mut sum = 0f32;
                    for m in 0..3 {
                        for n in 0..3 {
                            let (r, c) = ((i + m) as isize - 1, (j + n) as isize - 1);
                            let v = if r < 0 || c < 0 || r >= h as isize || c >= w as isize {
                                0.0
                            } else {
                                x[r as usize * w + c as usize]
                            };
                            sum += v;
                        }
                    }
                    y[i * w + j] = (sum * scale) * exclude_pad_factor(i, j, h, w);
                }
            }
        }
    }
}

/// [`plane`] 16 output columns at a time: every lane performs the scalar code's operations in
/// the same order (the same window order, `max_ps(v, best)` = `if best < v { v } else { best }`
/// lane by lane, NaN and signed zeros included; zero taps added as +0.0), so the bits agree.
#[cfg(target_arch = "x86_64")]
mod fast {
    use super::*;
    use crate::kernels::tail_mask;
    use std::arch::x86_64::*;

    /// Lanes lo..hi of 16.
    fn lanes(lo: usize, hi: usize) -> __mmask16 {
        tail_mask(hi.min(16)) & !tail_mask(lo.min(16))
    }

    /// Tap n of a stride-1 window over output columns j0..j0+len reads columns c0 + lane,
    /// c0 = j0 + n − 1: (c0, the in-row lanes lo..hi).
    fn in_row(j0: usize, n: usize, w: usize, len: usize) -> (isize, usize, usize) {
        let c0 = (j0 + n) as isize - 1;
        let lo = (-c0).max(0) as usize;
        let hi = (w as isize - c0).clamp(0, len as isize) as usize;
        (c0, lo, hi)
    }

    /// # Safety
    /// AVX-512F must be available; `x` is one h × w plane, `y` its output, `fac` the h × w
    /// factors of [`exclude_pad_factor`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn plane(
        kind: Pool3,
        x: &[f32],
        h: usize,
        w: usize,
        fac: &[f32],
        y: &mut [f32],
    ) {
        let (ho, wo) = (out_len(kind, h), out_len(kind, w));
        assert!(x.len() == h * w && y.len() == ho * wo);
        let xp = x.as_ptr();
        for i in 0..ho {
            for j0 in (0..wo).step_by(16) {
                let len = 16.min(wo - j0);
                let out = match kind {
                    Pool3::MaxValidStride2 => {
                        // Columns 2j + n, j in j0..j0+len: the even lanes of 32 loaded values.
                        let even = _mm512_setr_epi32(
                            0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                        );
                        let need = 2 * len - 1;
                        let (ma, mb) =
                            (tail_mask(need.min(16)), tail_mask(need.saturating_sub(16)));
                        let mut best = _mm512_setzero_ps();
                        for m in 0..3 {
                            let row = xp.add((2 * i + m) * w);
                            for n in 0..3 {
                                // SAFETY: the last column read, 2(j0 + len − 1) + n ≤ 2·wo ≤
                                // w − 1, is inside the row; masked lanes are not read.
                                let p = row.add(2 * j0 + n);
                                let lo = _mm512_maskz_loadu_ps(ma, p);
                                let hi = _mm512_maskz_loadu_ps(mb, p.wrapping_add(16));
                                let v = _mm512_permutex2var_ps(lo, even, hi);
                                best = if m == 0 && n == 0 {
                                    v
                                } else {
                                    _mm512_max_ps(v, best)
                                };
                            }
                        }
                        best
                    }
                    Pool3::MaxSame => {
                        let mut best = _mm512_setzero_ps();
                        for m in 0..3 {
                            let r = (i + m).saturating_sub(1).min(h - 1);
                            let row = xp.add(r * w);
                            for n in 0..3 {
                                // Column j + n − 1 clamped to the row: in-row lanes loaded,
                                // then the (at most one) clamped lane at each edge.
                                let (c0, lo, hi) = in_row(j0, n, w, len);
                                let mut v =
                                    _mm512_maskz_loadu_ps(lanes(lo, hi), row.wrapping_offset(c0));
                                if lo > 0 {
                                    v = _mm512_mask_loadu_ps(v, 1, row);
                                }
                                if hi < len {
                                    // Only lane len − 1 (column w, n = 2) is past the edge.
                                    debug_assert_eq!(hi + 1, len);
                                    let e = row.add(w - 1).wrapping_sub(hi);
                                    v = _mm512_mask_loadu_ps(v, 1 << hi, e);
                                }
                                best = if m == 0 && n == 0 {
                                    v
                                } else {
                                    _mm512_max_ps(v, best)
                                };
                            }
                        }
                        best
                    }
                    Pool3::AvgSameExcludePad => {
                        let mut sum = _mm512_setzero_ps();
                        for m in 0..3 {
                            let r = (i + m) as isize - 1;
                            for n in 0..3 {
                                let v = if r < 0 || r >= h as isize {
                                    _mm512_setzero_ps()
                                } else {
                                    let (c0, lo, hi) = in_row(j0, n, w, len);
                                    let row = xp.add(r as usize * w);
                                    _mm512_maskz_loadu_ps(lanes(lo, hi), row.wrapping_offset(c0))
                                };
                                sum = _mm512_add_ps(sum, v);
                            }
                        }
                        let scale = _mm512_set1_ps((1f64 / 9.0) as f32);
                        let f = _mm512_maskz_loadu_ps(tail_mask(len), fac.as_ptr().add(i * w + j0));
                        _mm512_mul_ps(_mm512_mul_ps(sum, scale), f)
                    }
                };
                _mm512_mask_storeu_ps(y.as_mut_ptr().add(i * wo + j0), tail_mask(len), out);
            }
        }
    }
}

/// y (planes, out_len(h), out_len(w)) = `kind` of x (planes, h, w).
pub fn pool3_f32(kind: Pool3, x: &[f32], planes: usize, h: usize, w: usize, y: &mut [f32]) {
    assert!(
        h >= 3 || kind != Pool3::MaxValidStride2,
        "pool: {h}×{w} smaller than the window"
    );
    assert!(
        w >= 3 || kind != Pool3::MaxValidStride2,
        "pool: {h}×{w} smaller than the window"
    );
    assert!(h >= 1 && w >= 1, "pool: empty plane");
    let (ho, wo) = (out_len(kind, h), out_len(kind, w));
    assert_eq!(x.len(), planes * h * w, "pool input size");
    assert_eq!(y.len(), planes * ho * wo, "pool output size");
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::available() {
        let fac: Vec<f32> = (0..h * w)
            .map(|k| exclude_pad_factor(k / w, k % w, h, w))
            .collect();
        crate::par::for_chunks_mut(y, ho * wo, |p, yo| {
            // SAFETY: AVX-512F checked; plane p of x, its output and the factors' plane.
            unsafe { fast::plane(kind, &x[p * h * w..(p + 1) * h * w], h, w, &fac, yo) }
        });
        return;
    }
    crate::par::for_chunks_mut(y, ho * wo, |p, yo| {
        plane(kind, &x[p * h * w..(p + 1) * h * w], h, w, yo)
    });
}
