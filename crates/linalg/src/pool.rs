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
    crate::par::for_chunks_mut(y, ho * wo, |p, yo| {
        plane(kind, &x[p * h * w..(p + 1) * h * w], h, w, yo)
    });
}
