//! Nearest-neighbour ×2 upsampling of (planes, H, W) data and its gradient:
//! y[p, 2i + a, 2j + b] = x[p, i, j] and dx[p, i, j] = Σ_{a, b ∈ {0, 1}} dy[p, 2i + a, 2j + b],
//! one pass each, planes in parallel on [`crate::par`]'s executor.

/// y (planes × 2h × 2w) from x (planes × h × w); every value of y is written.
pub fn upsample_nearest2x<T: Copy + Send + Sync>(x: &[T], h: usize, w: usize, y: &mut [T]) {
    assert!(
        h > 0 && w > 0 && x.len().is_multiple_of(h * w),
        "upsample input size"
    );
    assert_eq!(y.len(), 4 * x.len(), "upsample output size");
    crate::par::for_chunks_mut(y, 4 * h * w, |p, yp| {
        let xp = &x[p * h * w..(p + 1) * h * w];
        for (xr, yr) in xp.chunks(w).zip(yp.chunks_mut(4 * w)) {
            let (top, bottom) = yr.split_at_mut(2 * w);
            for (v, pair) in xr.iter().zip(top.chunks_mut(2)) {
                pair[0] = *v;
                pair[1] = *v;
            }
            bottom.copy_from_slice(top);
        }
    });
}

/// dx (planes × h × w) from dy (planes × 2h × 2w), each sum's four terms in row-major order.
pub fn upsample_nearest2x_backward<T>(dy: &[T], h: usize, w: usize, dx: &mut [T])
where
    T: Copy + Send + Sync + std::ops::Add<Output = T>,
{
    assert!(
        h > 0 && w > 0 && dx.len().is_multiple_of(h * w),
        "upsample gradient size"
    );
    assert_eq!(dy.len(), 4 * dx.len(), "upsample output-gradient size");
    crate::par::for_chunks_mut(dx, h * w, |p, dxp| {
        let dyp = &dy[4 * p * h * w..4 * (p + 1) * h * w];
        for (dr, yr) in dxp.chunks_mut(w).zip(dyp.chunks(4 * w)) {
            let (top, bottom) = yr.split_at(2 * w);
            for (j, d) in dr.iter_mut().enumerate() {
                *d = ((top[2 * j] + top[2 * j + 1]) + bottom[2 * j]) + bottom[2 * j + 1];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_sums_the_2x2_blocks() {
        // Expected numbers: the definition, written out for 2 planes of 2 × 3.
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        let mut y = vec![0f64; 48];
        upsample_nearest2x(&x, 2, 3, &mut y);
        for p in 0..2 {
            for i in 0..4 {
                for j in 0..6 {
                    assert_eq!(y[p * 24 + i * 6 + j], x[p * 6 + (i / 2) * 3 + j / 2]);
                }
            }
        }
        let dy: Vec<f64> = (0..48).map(|v| f64::from(v) * 0.5).collect();
        let mut dx = vec![0f64; 12];
        upsample_nearest2x_backward(&dy, 2, 3, &mut dx);
        for p in 0..2 {
            for i in 0..2 {
                for j in 0..3 {
                    let at = |a: usize, b: usize| dy[p * 24 + (2 * i + a) * 6 + 2 * j + b];
                    let want = at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1);
                    assert_eq!(dx[p * 6 + i * 3 + j], want);
                }
            }
        }
    }
}
