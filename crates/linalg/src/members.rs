//! Element-wise passes of AU's uncertainty step (De Vita & Belagiannis 2025, Alg. 1 lines 4 and
//! 7, Eq. 8) over the M members × n values of a batch, fused and parallel.
//!
//! They compute exactly what the chain of candle 0.11 CPU ops they replace computes, in the same
//! f32/f64 operation order, so the bits do not change: `affine(s, 0)` is `v·s + 0`,
//! `broadcast_add` adds, a sum over the first axis accumulates members in order from zero, and
//! `mean` is that sum times `1/M` (converted to the element type first) plus zero. Only the
//! passes are fewer: candle's reduction over a leading axis pays an integer division per
//! element on one thread.

use rayon::prelude::*;

/// Positions per parallel task.
const CHUNK: usize = 4096;

trait Elem: Copy + Send + Sync + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    const ZERO: Self;
    fn sub(self, o: Self) -> Self;
}
impl Elem for f32 {
    const ZERO: Self = 0.0;
    fn sub(self, o: Self) -> Self {
        self - o
    }
}
impl Elem for f64 {
    const ZERO: Self = 0.0;
    fn sub(self, o: Self) -> Self {
        self - o
    }
}

fn renoise<T: Elem>(a: &[T], xi: &[T], s: T, out: &mut [T]) {
    let n = a.len();
    assert!(
        n > 0 && xi.len().is_multiple_of(n) && out.len() == xi.len(),
        "renoise sizes"
    );
    out.par_chunks_mut(n)
        .zip(xi.par_chunks(n))
        .for_each(|(om, xm)| {
            om.par_chunks_mut(CHUNK)
                .zip(xm.par_chunks(CHUNK))
                .zip(a.par_chunks(CHUNK))
                .for_each(|((o, x), ac)| {
                    for ((ov, &xv), &av) in o.iter_mut().zip(x).zip(ac) {
                        *ov = av + (xv * s + T::ZERO);
                    }
                });
        });
}

fn sq_dev<T: Elem>(e: &[T], m: usize, center: Option<&[T]>, inv_m: T, inv_div: T, out: &mut [T]) {
    let n = out.len();
    assert!(m > 0 && e.len() == m * n, "member variance sizes");
    if let Some(c) = center {
        assert_eq!(c.len(), n, "member variance centre size");
    }
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, o)| {
        let p0 = ci * CHUNK;
        let len = o.len();
        let mut mean = vec![T::ZERO; len];
        match center {
            Some(c) => mean.copy_from_slice(&c[p0..p0 + len]),
            None => {
                for i in 0..m {
                    for (s, &v) in mean.iter_mut().zip(&e[i * n + p0..i * n + p0 + len]) {
                        *s = *s + v;
                    }
                }
                for s in mean.iter_mut() {
                    *s = *s * inv_m + T::ZERO;
                }
            }
        }
        o.fill(T::ZERO);
        for i in 0..m {
            for ((acc, &v), &mu) in o
                .iter_mut()
                .zip(&e[i * n + p0..i * n + p0 + len])
                .zip(&mean)
            {
                let d = v.sub(mu);
                *acc = *acc + d * d;
            }
        }
        for acc in o.iter_mut() {
            *acc = *acc * inv_div + T::ZERO;
        }
    });
}

/// `out[i·n + p] = a[p] + (xi[i·n + p]·s + 0)` for every member i: the re-noised inputs
/// √ᾱ x̂₀ + √(1−ᾱ) ξ_i of Alg. 1 line 4, with `a` = √ᾱ x̂₀ (n values) and s = √(1−ᾱ).
pub fn renoise_f32(a: &[f32], xi: &[f32], s: f32, out: &mut [f32]) {
    renoise(a, xi, s, out)
}

/// f64 version of [`renoise_f32`].
pub fn renoise_f64(a: &[f64], xi: &[f64], s: f64, out: &mut [f64]) {
    renoise(a, xi, s, out)
}

/// `out[p] = (Σ_i (e[i·n + p] − c[p])²)·inv_div + 0` over the m members, with c the given centre
/// or the members' mean (Σ_i e[i·n + p])·inv_m + 0: Eq. 8's sum of squared deviations (and the
/// released code's, centred on ε).
pub fn member_sq_dev_f32(
    e: &[f32],
    m: usize,
    center: Option<&[f32]>,
    inv_m: f32,
    inv_div: f32,
    out: &mut [f32],
) {
    sq_dev(e, m, center, inv_m, inv_div, out)
}

/// f64 version of [`member_sq_dev_f32`].
pub fn member_sq_dev_f64(
    e: &[f64],
    m: usize,
    center: Option<&[f64]>,
    inv_m: f64,
    inv_div: f64,
    out: &mut [f64],
) {
    sq_dev(e, m, center, inv_m, inv_div, out)
}
