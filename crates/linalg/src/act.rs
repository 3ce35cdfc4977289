//! SiLU y = x·σ(x) = x / (1 + e^(−x)) (Elfwing et al. 2018; the activation of every UNet here) and
//! its derivative, in f32 with AVX-512.
//!
//! candle 0.11 evaluates it one element at a time through libm's `expf`; here 16 lanes at once
//! with e^z = 2ⁿ·e^r, n = round(z·log₂e), r = z − n·ln 2 (split in two constants, Cody & Waite
//! 1980) and e^r from its degree-6 Taylor polynomial (|r| ≤ ln 2 / 2, truncation < 1.1e-7
//! relative). Same formula as candle's, so results agree to a few ulp (tested to 2e-6 relative
//! plus 1e-7 absolute), not bit for bit: callers use it where the AVX-512 kernels are chosen
//! ([`crate::conv::ConvKernels`]).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// e^z for 16 lanes; z is clamped to [−103, 88.7] (the f32 range of e^z, subnormals to zero).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp16(z: __m512) -> __m512 {
    let z = _mm512_min_ps(
        _mm512_max_ps(z, _mm512_set1_ps(-103.0)),
        _mm512_set1_ps(88.72),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(z, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // ln 2 = 0.693359375 − 2.12194440e-4 (the first part exact in 9 bits).
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), z);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// y[i] = x[i] / (1 + e^(−x[i])) for i < n, 16 lanes at a time. `x` and `y` may be the same
/// memory (each block of 16 is read before it is written).
///
/// # Safety
/// AVX-512F must be available; `n` values readable at `x` and writable at `y`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_raw(x: *const f32, y: *mut f32, n: usize) {
    let one = _mm512_set1_ps(1.0);
    for i in (0..n).step_by(16) {
        let m = crate::kernels::tail_mask(16.min(n - i));
        let v = _mm512_maskz_loadu_ps(m, x.add(i));
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_mask_storeu_ps(y.add(i), m, _mm512_div_ps(v, _mm512_add_ps(one, e)));
    }
}

/// d[i] = g[i] · silu′(x[i]) for i < n, 16 lanes at a time. `g` and `d` may be the same memory.
///
/// # Safety
/// AVX-512F must be available; `n` values readable at `x` and `g`, writable at `d`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_grad_raw(x: *const f32, g: *const f32, d: *mut f32, n: usize) {
    let one = _mm512_set1_ps(1.0);
    for i in (0..n).step_by(16) {
        let m = crate::kernels::tail_mask(16.min(n - i));
        let v = _mm512_maskz_loadu_ps(m, x.add(i));
        let gv = _mm512_maskz_loadu_ps(m, g.add(i));
        let s = _mm512_div_ps(
            one,
            _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))),
        );
        // d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x))).
        let dv = _mm512_mul_ps(s, _mm512_fmadd_ps(v, _mm512_sub_ps(one, s), one));
        _mm512_mask_storeu_ps(d.add(i), m, _mm512_mul_ps(gv, dv));
    }
}

/// y ← silu(y) on one slice, single-threaded, same arithmetic as [`silu_f32`] (for fused kernels
/// that run inside a parallel task). Panics without AVX-512F.
pub fn silu_in_place_f32(y: &mut [f32]) {
    assert!(available(), "silu_in_place_f32 needs AVX-512F");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F checked above; y.len() values, read before written.
    unsafe {
        let p = y.as_mut_ptr();
        silu_raw(p, p, y.len())
    }
}

/// g ← g · silu′(x) on one slice, single-threaded, same arithmetic as [`silu_backward_f32`].
/// Panics without AVX-512F.
pub fn silu_grad_in_place_f32(x: &[f32], g: &mut [f32]) {
    assert!(available(), "silu_grad_in_place_f32 needs AVX-512F");
    assert_eq!(x.len(), g.len(), "silu gradient sizes");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F checked above; equal lengths asserted, g read before written.
    unsafe {
        let p = g.as_mut_ptr();
        silu_grad_raw(x.as_ptr(), p, p, x.len())
    }
}

/// Whether [`silu_f32`] and [`silu_backward_f32`] can run (AVX-512F on this CPU).
pub fn available() -> bool {
    crate::kernels::available()
}

/// y = x / (1 + e^(−x)). Panics when AVX-512F is not available (check [`available`]).
pub fn silu_f32(x: &[f32], y: &mut [f32]) {
    silu_f32_uninit(x, crate::as_uninit(y))
}

/// [`silu_f32`] into uninitialised storage: every value of `y` is written.
pub fn silu_f32_uninit(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    assert!(available(), "silu_f32 needs AVX-512F");
    assert_eq!(x.len(), y.len(), "silu sizes");
    #[cfg(target_arch = "x86_64")]
    crate::par::for_chunks_mut(y, CHUNK, |i, yc| {
        let a = i * CHUNK;
        // SAFETY: AVX-512F checked above; yc.len() values of x from a on (sizes asserted).
        unsafe { silu_raw(x[a..].as_ptr(), yc.as_mut_ptr().cast::<f32>(), yc.len()) }
    });
}

/// dx = g · σ(x)·(1 + x·(1 − σ(x))), the gradient of [`silu_f32`]. Panics without AVX-512F.
pub fn silu_backward_f32(x: &[f32], g: &[f32], dx: &mut [f32]) {
    assert!(available(), "silu_backward_f32 needs AVX-512F");
    assert!(
        x.len() == g.len() && x.len() == dx.len(),
        "silu gradient sizes"
    );
    #[cfg(target_arch = "x86_64")]
    crate::par::for_chunks_mut(dx, CHUNK, |i, dc| {
        let a = i * CHUNK;
        // SAFETY: AVX-512F checked above; dc.len() values of x and g from a on (sizes asserted).
        unsafe { silu_grad_raw(x[a..].as_ptr(), g[a..].as_ptr(), dc.as_mut_ptr(), dc.len()) }
    });
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn silu_and_its_gradient_match_the_f64_formula() {
        // Expected numbers: x/(1 + e^(−x)) and its derivative in f64 (std's exp), on a grid
        // across the whole f32 range that matters (tails saturate to 0 and x) plus a ragged tail.
        if !available() {
            eprintln!("no AVX-512F on this CPU: kernel not exercised");
            return;
        }
        let mut x: Vec<f32> = (0..40_001).map(|i| (i as f32 - 20_000.0) * 0.005).collect();
        x.extend([
            -200.0, -104.0, -88.0, -1e-30, 0.0, -0.0, 1e-30, 88.0, 104.0, 200.0,
        ]);
        let g: Vec<f32> = x.iter().map(|v| 0.5 + (v * 7.0).sin()).collect();
        let (mut y, mut d) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        silu_f32(&x, &mut y);
        silu_backward_f32(&x, &g, &mut d);
        for i in 0..x.len() {
            let v = x[i] as f64;
            let s = 1.0 / (1.0 + (-v).exp());
            let want_y = v * s;
            let want_d = g[i] as f64 * s * (1.0 + v * (1.0 - s));
            let tol = |w: f64| 2e-6 * w.abs() + 1e-7;
            assert!(
                (y[i] as f64 - want_y).abs() <= tol(want_y),
                "silu({v}) = {} vs {want_y}",
                y[i]
            );
            assert!(
                (d[i] as f64 - want_d).abs() <= tol(want_d),
                "silu'({v}) = {} vs {want_d}",
                d[i]
            );
        }
    }
}
