//! im2col and its adjoint col2im for 2-D convolutions in NCHW layout, the data movement around
//! the one gemm a convolution becomes (Chellapilla et al. 2006): with cols = im2col(x) of shape
//! (N, C·k·k, Ho·Wo), row (c·k + ky)·k + kx, a convolution is out_n = W (O, C·k·k) · cols_n, its
//! weight gradient Σ_n g_n colsₙᵀ, and its input gradient col2im(Wᵀ g). Compiled here at
//! opt-level 3 in every profile; parallel over (image, channel) with rayon.

use rayon::prelude::*;

/// Output side length of a convolution.
pub fn conv_out_len(len: usize, k: usize, stride: usize, pad: usize) -> usize {
    (len + 2 * pad - k) / stride + 1
}

fn im2col<T: Copy + Default + Send + Sync>(
    src: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    (k, stride, pad): (usize, usize, usize),
    out: &mut [T],
) {
    let ho = conv_out_len(h, k, stride, pad);
    let wo = conv_out_len(w, k, stride, pad);
    let l = ho * wo;
    assert_eq!(src.len(), n * c * h * w, "im2col input size");
    assert_eq!(out.len(), n * c * k * k * l, "im2col output size");
    out.par_chunks_mut(k * k * l)
        .enumerate()
        .for_each(|(bc, o)| {
            let x = &src[bc * h * w..(bc + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut o[(ky * k + kx) * l..(ky * k + kx + 1) * l];
                    for oy in 0..ho {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let seg = &mut row[oy * wo..(oy + 1) * wo];
                        if iy < 0 || iy >= h as isize {
                            seg.fill(T::default());
                            continue;
                        }
                        let xr = &x[iy as usize * w..(iy as usize + 1) * w];
                        if stride == 1 {
                            // ix = ox + kx − pad: a shifted copy with zero margins.
                            let shift = kx as isize - pad as isize;
                            for (ox, v) in seg.iter_mut().enumerate() {
                                let ix = ox as isize + shift;
                                *v = if ix >= 0 && ix < w as isize {
                                    xr[ix as usize]
                                } else {
                                    T::default()
                                };
                            }
                        } else {
                            for (ox, v) in seg.iter_mut().enumerate() {
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                *v = if ix >= 0 && ix < w as isize {
                                    xr[ix as usize]
                                } else {
                                    T::default()
                                };
                            }
                        }
                    }
                }
            }
        });
}

fn col2im<T: Copy + Default + Send + Sync + std::ops::AddAssign>(
    cols: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    (k, stride, pad): (usize, usize, usize),
    out: &mut [T],
) {
    let ho = conv_out_len(h, k, stride, pad);
    let wo = conv_out_len(w, k, stride, pad);
    let l = ho * wo;
    assert_eq!(cols.len(), n * c * k * k * l, "col2im input size");
    assert_eq!(out.len(), n * c * h * w, "col2im output size");
    out.par_chunks_mut(h * w).enumerate().for_each(|(bc, x)| {
        x.fill(T::default());
        let o = &cols[bc * k * k * l..(bc + 1) * k * k * l];
        for ky in 0..k {
            for kx in 0..k {
                let row = &o[(ky * k + kx) * l..(ky * k + kx + 1) * l];
                for oy in 0..ho {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let xr = &mut x[iy as usize * w..(iy as usize + 1) * w];
                    for (ox, &v) in row[oy * wo..(oy + 1) * wo].iter().enumerate() {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix >= 0 && ix < w as isize {
                            xr[ix as usize] += v;
                        }
                    }
                }
            }
        }
    });
}

/// cols (N, C·k·k, Ho·Wo) of x (N, C, H, W), zero padding `pad`.
pub fn im2col_f32(
    src: &[f32],
    nchw: (usize, usize, usize, usize),
    ksp: (usize, usize, usize),
    out: &mut [f32],
) {
    im2col(src, nchw, ksp, out)
}

/// f64 version of [`im2col_f32`].
pub fn im2col_f64(
    src: &[f64],
    nchw: (usize, usize, usize, usize),
    ksp: (usize, usize, usize),
    out: &mut [f64],
) {
    im2col(src, nchw, ksp, out)
}

/// The adjoint of [`im2col_f32`]: sums every column entry back onto the pixel it was read from.
pub fn col2im_f32(
    cols: &[f32],
    nchw: (usize, usize, usize, usize),
    ksp: (usize, usize, usize),
    out: &mut [f32],
) {
    col2im(cols, nchw, ksp, out)
}

/// f64 version of [`col2im_f32`].
pub fn col2im_f64(
    cols: &[f64],
    nchw: (usize, usize, usize, usize),
    ksp: (usize, usize, usize),
    out: &mut [f64],
) {
    col2im(cols, nchw, ksp, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), y> = <x, col2im(y)> for any x, y: the defining property of the adjoint,
        // checked for padding 0/1 and strides 1/2 on deterministic non-symmetric data.
        for &(k, s, p) in &[(3, 1, 1), (3, 2, 0), (3, 2, 1), (1, 1, 0)] {
            let dims = (2, 3, 5, 6);
            let nx = 2 * 3 * 5 * 6;
            let ho = conv_out_len(5, k, s, p);
            let wo = conv_out_len(6, k, s, p);
            let ny = 2 * 3 * k * k * ho * wo;
            let x: Vec<f64> = (0..nx).map(|i| ((i * 37 % 11) as f64) - 4.5).collect();
            let y: Vec<f64> = (0..ny).map(|i| ((i * 13 % 7) as f64) * 0.5 - 1.0).collect();
            let mut cx = vec![0.0; ny];
            im2col_f64(&x, dims, (k, s, p), &mut cx);
            let mut ty = vec![0.0; nx];
            col2im_f64(&y, dims, (k, s, p), &mut ty);
            let a: f64 = cx.iter().zip(&y).map(|(a, b)| a * b).sum();
            let b: f64 = x.iter().zip(&ty).map(|(a, b)| a * b).sum();
            assert!((a - b).abs() < 1e-9, "k{k} s{s} p{p}: {a} vs {b}");
        }
    }
}
