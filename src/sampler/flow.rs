//! Flow-matching samplers (GU App. C.7): Euler and adaptive Dormand–Prince 5(4).
//!
//! **Convention.** The rectified-flow / conditional-flow-matching linear path (Liu et al. 2023;
//! Lipman et al. 2023 with σ_min = 0) with t = 1 noise and t = 0 data:
//!
//!   x_t = (1 − t)·x₀ + t·ε,   ε ~ N(0, I),   t ∈ [0, 1],
//!
//! so the conditional velocity is dx_t/dt = ε − x₀ and the network is trained to regress
//! v_θ(x, t) ≈ E[ε − x₀ | x_t = x] (the marginal velocity). This is the direction SD3 / Flux use
//! (their σ = t). Sampling integrates the ODE dx/dt = v_θ(x, t) **backwards**, from t = 1
//! (x₁ = x_T ~ N(0, I)) to t = 0, so every step has dt < 0. Codebases with the opposite
//! direction (noise at s = 0, data at s = 1: x_s = s·data + (1 − s)·noise, e.g. torchcfm and
//! Lipman et al.) learn v'(x, s) = −v(x, 1 − s); wrap such a model accordingly.
//!
//! **What the observer sees.** Both x₀ and ε are linear in (x_t, v) along the path, so a
//! velocity prediction implies the two predictions the ε-samplers show their observers
//! ([`StepView`]):
//!
//!   x̂₀ = x − t·v,         ε̂ = x + (1 − t)·v,
//!
//! (substitute x = (1 − t)x₀ + tε, v = ε − x₀). These are what [`StepView::eps`] and
//! [`StepView::x0_hat`] carry for the samplers here; [`StepView::t`] is the flow time in [0, 1].
//!
//! **NFE** counts every call of [`VelocityField::velocity`]; a batched call counts once per
//! sample (so NFE is per sample, as everywhere in [`super`]).

use candle_core::{DType, Tensor};

use super::{Observer, SampleOutput, StepView};
use crate::error::{Error, Result, TensorContext};

/// A flow-matching model v_θ(x, t) under the module's convention (t = 1 noise, t = 0 data,
/// x_t = (1 − t)x₀ + tε, target ε − x₀).
///
/// `x` may carry leading batch axes (e.g. ensemble members × samples × dim); the output has the
/// shape of `x`. `t` is shared by the whole batch.
pub trait VelocityField {
    fn velocity(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor>;
}

/// `steps + 1` equally spaced flow times from 1 down to 0 (both included): the grid of
/// [`euler`] with `steps` velocity evaluations. `steps = 0` is treated as 1.
pub fn uniform_grid(steps: usize) -> Vec<f64> {
    let n = steps.max(1);
    (0..=n).map(|i| 1.0 - i as f64 / n as f64).collect()
}

/// Show the observer the point (x, t) with its velocity v, as ε̂ = x + (1 − t)v and x̂₀ = x − t·v.
fn observe(
    observer: &mut dyn Observer,
    step: usize,
    t: f64,
    x: &Tensor,
    v: &Tensor,
) -> candle_core::Result<()> {
    let eps = (x + (v * (1.0 - t))?)?;
    let x0 = (x - (v * t)?)?;
    observer.on_step(&StepView {
        step,
        t,
        x_t: x,
        eps: &eps,
        x0_hat: &x0,
    })
}

/// Explicit Euler on the given time grid (usually decreasing from 1 to 0, e.g.
/// [`uniform_grid`]): x_{t'} = x_t + (t' − t)·v_θ(x_t, t) for consecutive grid points t → t'.
///
/// One evaluation per interval, NFE = `grid.len() − 1`; the field is never evaluated at the last
/// grid point (t = 0 on the uniform grid, where a model trained on (0, 1] may be ill-defined).
/// Step i of the observer sees grid point i before its update. First-order accurate: the global
/// error is O(max |t' − t|). For an exactly straight flow (a point mass as data) it is exact.
pub fn euler(
    field: &dyn VelocityField,
    x_t: Tensor,
    grid: &[f64],
    observer: &mut dyn Observer,
) -> candle_core::Result<SampleOutput> {
    let mut x = x_t;
    for (step, w) in grid.windows(2).enumerate() {
        let (t, t_next) = (w[0], w[1]);
        let v = field.velocity(&x, t)?;
        observe(observer, step, t, &x, &v)?;
        x = (&x + (v * (t_next - t))?)?;
    }
    Ok(SampleOutput {
        x0: x,
        nfe: grid.len().saturating_sub(1),
    })
}

/// The embedded lower-order solution that estimates the local error of [`dopri5`]; the
/// fifth-order solution that is propagated is the same for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbeddedPair {
    /// Dormand & Prince (1980)'s fourth-order weights b̂ (Hairer, Nørsett & Wanner, *Solving
    /// ODEs I*, Table II.5.2; also scipy's `RK45`, MATLAB's `ode45`). The paper-faithful default:
    /// GU App. C.7 names "dopri5" and its released code has no flow-matching sampler.
    #[default]
    DormandPrince,
    /// Shampine (1986)'s alternative fourth-order weights, used by torchdiffeq's `dopri5` (and
    /// TensorFlow's former `contrib.integrate`). Accepts/rejects steps as torchdiffeq does (given
    /// its tolerances); the steps still end exactly at `t_end` (see [`dopri5`]).
    Shampine,
}

/// Options of [`dopri5`]. `Default` gives torchdiffeq's `odeint` defaults (rtol = 1e-7,
/// atol = 1e-9, safety 0.9, step factor in [0.2, 10]), integrating from t = 1 to t = 0.
/// (torchcfm's flow-matching examples instead pass rtol = atol = 1e-4.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dopri5Options {
    /// Relative tolerance, per element.
    pub rtol: f64,
    /// Absolute tolerance, per element.
    pub atol: f64,
    /// Safety factor on the optimal step size.
    pub safety: f64,
    /// Smallest factor by which a rejected step shrinks.
    pub min_factor: f64,
    /// Largest factor by which the step grows.
    pub max_factor: f64,
    /// Attempted steps (accepted + rejected) after which [`dopri5`] gives up with an error
    /// instead of looping. torchdiffeq's bound is 2³¹ − 1, i.e. none; ours is finite so a
    /// diverging model cannot hang a run.
    pub max_steps: usize,
    /// The size of the first attempted step; `None` selects it automatically (Hairer's algorithm,
    /// one extra evaluation).
    pub first_step: Option<f64>,
    pub embedded: EmbeddedPair,
    /// Flow time where integration starts (x_T is given there).
    pub t_start: f64,
    /// Flow time where the returned state lies.
    pub t_end: f64,
}

impl Default for Dopri5Options {
    fn default() -> Self {
        Self {
            rtol: 1e-7,
            atol: 1e-9,
            safety: 0.9,
            min_factor: 0.2,
            max_factor: 10.0,
            max_steps: 10_000,
            first_step: None,
            embedded: EmbeddedPair::DormandPrince,
            t_start: 1.0,
            t_end: 0.0,
        }
    }
}

impl Dopri5Options {
    fn validate(&self) -> Result<()> {
        let bad = |reason: &str| Err(Error::invalid("dopri5 options", reason));
        if !(self.rtol >= 0.0 && self.atol >= 0.0 && self.rtol + self.atol > 0.0) {
            return bad("rtol and atol must be ≥ 0 and not both 0");
        }
        if !(self.safety > 0.0 && self.safety <= 1.0) {
            return bad("safety must lie in (0, 1]");
        }
        if !(self.min_factor > 0.0 && self.min_factor <= 1.0 && self.max_factor >= 1.0) {
            return bad("need 0 < min_factor ≤ 1 ≤ max_factor");
        }
        if self.max_steps == 0 {
            return bad("max_steps must be ≥ 1");
        }
        if !(self.t_start.is_finite() && self.t_end.is_finite() && self.t_start != self.t_end) {
            return bad("t_start and t_end must be finite and distinct");
        }
        if let Some(h) = self.first_step {
            if !(h.is_finite() && h > 0.0) {
                return bad("first_step must be finite and > 0 (its sign follows t_end − t_start)");
            }
        }
        Ok(())
    }
}

/// Dormand–Prince 5(4) nodes c_i (Dormand & Prince 1980; Hairer et al., Table II.5.2).
const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];

/// Coupling coefficients a_ij, row i for stage i + 2 (stage 1 uses none). The last row equals the
/// fifth-order weights, so the seventh stage is f at the new point: first same as last (FSAL).
const A: [&[f64]; 6] = [
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ],
    &[
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
    &B,
];

/// Fifth-order weights b_i (the propagated solution).
const B: [f64; 7] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
    0.0,
];

/// Dormand & Prince's fourth-order embedded weights b̂_i.
const B_HAT_DP: [f64; 7] = [
    5179.0 / 57600.0,
    0.0,
    7571.0 / 16695.0,
    393.0 / 640.0,
    -92097.0 / 339200.0,
    187.0 / 2100.0,
    1.0 / 40.0,
];

/// Shampine (1986)'s fourth-order embedded weights b̂_i (torchdiffeq's `dopri5`).
const B_HAT_SHAMPINE: [f64; 7] = [
    1951.0 / 21600.0,
    0.0,
    22642.0 / 50085.0,
    451.0 / 720.0,
    -12231.0 / 42400.0,
    649.0 / 6300.0,
    1.0 / 60.0,
];

impl EmbeddedPair {
    fn weights(self) -> &'static [f64; 7] {
        match self {
            EmbeddedPair::DormandPrince => &B_HAT_DP,
            EmbeddedPair::Shampine => &B_HAT_SHAMPINE,
        }
    }
}

/// y + h·Σ_j w_j k_j (zero weights skipped).
fn combine(y: &Tensor, h: f64, w: &[f64], k: &[Tensor]) -> candle_core::Result<Tensor> {
    let mut acc = y.clone();
    for (&wj, kj) in w.iter().zip(k) {
        if wj != 0.0 {
            acc = (acc + (kj * (h * wj))?)?;
        }
    }
    Ok(acc)
}

/// Root mean square over all elements, in f64.
fn rms(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f64>()
}

/// Hairer's starting step size (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4, "Starting
/// step size"; the variant torchdiffeq uses), with sc = atol + rtol·|x₀| and the RMS norm:
///
///   d₀ = ‖x₀/sc‖, d₁ = ‖f₀/sc‖, h₀ = 0.01·d₀/d₁ (10⁻⁶ if d₀ or d₁ < 10⁻⁵),
///   f₁ = f(t₀ + h₀, x₀ + h₀f₀), d₂ = ‖(f₁ − f₀)/sc‖ / h₀,
///   h₁ = (0.01 / max(d₁, d₂))^{1/5}  (max(10⁻⁶, 10⁻³h₀) if both ≤ 10⁻¹⁵),
///   h  = min(100·h₀, h₁),
///
/// with all steps taken in the direction `dir` = ±1 of integration. Costs one evaluation.
fn initial_step(
    field: &dyn VelocityField,
    t0: f64,
    x0: &Tensor,
    f0: &Tensor,
    dir: f64,
    o: &Dopri5Options,
) -> candle_core::Result<f64> {
    let scale = x0.abs()?.affine(o.rtol, o.atol)?;
    let d0 = rms(&x0.div(&scale)?)?;
    let d1 = rms(&f0.div(&scale)?)?;
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    };
    let x1 = (x0 + (f0 * (dir * h0))?)?;
    let f1 = field.velocity(&x1, t0 + dir * h0)?;
    let d2 = rms(&(&f1 - f0)?.div(&scale)?)? / h0;
    let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(1.0 / 5.0)
    };
    Ok((100.0 * h0).min(h1))
}

/// Adaptive Dormand–Prince 5(4) (Dormand & Prince 1980; Hairer et al., *Solving ODEs I*, §II.4–5)
/// from x_T at `opts.t_start` (1) to `opts.t_end` (0). Returns x at `t_end` and the NFE.
///
/// * **Step.** Seven stages k₁…k₇ of the Dormand–Prince tableau; the fifth-order solution is
///   propagated (local extrapolation) and the last stage is f at the new point, reused as k₁ of the
///   next step (FSAL): six evaluations per attempted step, accepted or rejected.
/// * **Error.** e = h·Σ(b_i − b̂_i)k_i with b̂ from `opts.embedded`, scaled element-wise by
///   atol + rtol·max(|x_n|, |x_{n+1}|), and reduced to one number by the **RMS over all elements
///   of the batch** (torchdiffeq's norm for a single tensor state). The step is accepted when this
///   ratio r ≤ 1. One step size is therefore shared by the batch, and a sample's result depends
///   (within tolerance) on the batch it is integrated in, as with torchdiffeq.
/// * **Step-size control** (elementary, no PI controller; torchdiffeq's rule): h ← h·fac with
///   fac = min(max_factor, max(lo, safety·r^{−1/5})), lo = 1 after an accepted step (accepted steps
///   never shrink the next one) and `min_factor` after a rejection; fac = max_factor when r = 0.
/// * **Start.** h from `opts.first_step`, or Hairer's starting-step algorithm (Hairer, Nørsett
///   & Wanner, §II.4; as torchdiffeq), which costs one evaluation.
/// * **End.** The last step is shortened to land exactly on `t_end`, so the field is never
///   evaluated beyond it (torchdiffeq instead steps past t = 0 — where a flow model is not
///   trained — and interpolates back with dense output).
///
/// NFE = 1 (f at x_T) + 1 (automatic first step) + 6 × attempted steps. The observer sees each
/// accepted point before the step from it, with its velocity k₁ (step = index of the accepted
/// point, starting at 0 for x_T); not the stages, the rejected attempts or the final point.
///
/// Errors ([`Error::Invalid`]): invalid options; more than `opts.max_steps` attempted steps; a
/// non-finite error estimate (the field returned NaN/∞) or a step size that underflows.
pub fn dopri5(
    field: &dyn VelocityField,
    x_t: Tensor,
    opts: &Dopri5Options,
    observer: &mut dyn Observer,
) -> Result<SampleOutput> {
    opts.validate()?;
    const CTX: &str = "dopri5 sampler";
    let (t_end, dir) = (opts.t_end, (opts.t_end - opts.t_start).signum());
    let span = (opts.t_end - opts.t_start).abs();
    let e: Vec<f64> = B
        .iter()
        .zip(opts.embedded.weights())
        .map(|(b, bh)| b - bh)
        .collect();

    let mut t = opts.t_start;
    let mut x = x_t;
    let mut k1 = field.velocity(&x, t).ctx(CTX)?;
    let mut nfe = 1;
    let mut h = match opts.first_step {
        Some(h) => h,
        None => {
            nfe += 1;
            initial_step(field, t, &x, &k1, dir, opts).ctx(CTX)?
        }
    }
    .min(span);
    let mut accepted = 0;
    observe(observer, accepted, t, &x, &k1).ctx(CTX)?;

    for attempt in 0.. {
        if attempt >= opts.max_steps {
            return Err(Error::invalid(
                "dopri5 sampler",
                format!(
                    "max_steps = {} attempted steps exceeded at t = {t:.6} ({accepted} accepted, \
                     last step size {h:.3e}); loosen rtol/atol or raise max_steps",
                    opts.max_steps
                ),
            ));
        }
        // Shorten the step to land exactly on t_end.
        let last = h >= (t_end - t).abs();
        let dt = if last { t_end - t } else { dir * h };
        if t + dt == t {
            return Err(Error::invalid(
                "dopri5 sampler",
                format!("step size underflow at t = {t:.6} (h = {h:.3e})"),
            ));
        }

        let mut k = Vec::with_capacity(7);
        k.push(k1.clone());
        // The last row of A is B, so the input of the seventh stage is the new (fifth-order) state.
        let mut x_new = x.clone();
        for (i, a) in A.iter().enumerate() {
            x_new = combine(&x, dt, a, &k).ctx(CTX)?;
            k.push(field.velocity(&x_new, t + C[i + 1] * dt).ctx(CTX)?);
        }
        nfe += 6;
        let err = combine(&x.zeros_like().ctx(CTX)?, dt, &e, &k).ctx(CTX)?;
        let tol = x
            .abs()
            .and_then(|a| a.maximum(&x_new.abs()?))
            .and_then(|m| m.affine(opts.rtol, opts.atol))
            .ctx(CTX)?;
        let ratio = rms(&err.div(&tol).ctx(CTX)?).ctx(CTX)?;
        if !ratio.is_finite() {
            return Err(Error::invalid(
                "dopri5 sampler",
                format!(
                    "non-finite error estimate at t = {t:.6} (step {dt:.3e}): the velocity field \
                     returned NaN or ∞"
                ),
            ));
        }
        let accept = ratio <= 1.0;
        let factor = if ratio == 0.0 {
            opts.max_factor
        } else {
            let lo = if accept { 1.0 } else { opts.min_factor };
            (opts.safety * ratio.powf(-1.0 / 5.0)).clamp(lo, opts.max_factor)
        };
        if accept {
            t = if last { t_end } else { t + dt };
            x = x_new;
            k1 = k.pop().expect("seven stages");
            accepted += 1;
            if last {
                break;
            }
            observe(observer, accepted, t, &x, &k1).ctx(CTX)?;
        }
        h = dt.abs() * factor;
    }
    Ok(SampleOutput { x0: x, nfe })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::NoObserver;
    use crate::seed::SeedStreams;
    use candle_core::Device;
    use std::cell::Cell;

    /// Gaussian data x₀ ~ N(μ, diag s²) under the linear path x_t = (1 − t)x₀ + tε: x_t is
    /// Gaussian with mean m_t = (1 − t)μ and variance σ_t² = (1 − t)²s² + t² (per dim), and
    /// Cov(ε − x₀, x_t) = t − (1 − t)s². The marginal velocity E[ε − x₀ | x_t = x] is therefore the
    /// Gaussian regression
    ///
    ///   v(x, t) = −μ + (t − (1 − t)s²)/σ_t² · (x − m_t).
    ///
    /// Its ODE solution from x₁ = x_T is x_t = m_t + σ_t·x_T (check: d/dt of it is −μ + σ_t'x_T
    /// with σ_t' = (t − (1 − t)s²)/σ_t, which is v(m_t + σ_t x_T, t)), so the exact sample is
    /// x₀ = μ + s·x_T. With s = 0 (a point mass) the paths are straight lines and
    /// v = (x − μ)/t, undefined only at t = 0.
    struct GaussianFlow {
        mu: Vec<f64>,
        s: Vec<f64>,
        calls: Cell<usize>,
    }

    impl GaussianFlow {
        fn new(mu: &[f64], s: &[f64]) -> Self {
            Self {
                mu: mu.to_vec(),
                s: s.to_vec(),
                calls: Cell::new(0),
            }
        }
        fn row(&self, v: &[f64], like: &Tensor) -> candle_core::Result<Tensor> {
            Tensor::from_vec(v.to_vec(), (1, v.len()), like.device())?.to_dtype(like.dtype())
        }
        /// The exact solution x_t = (1 − t)μ + σ_t·x_T, per sample row.
        fn exact(&self, x_t: &Tensor, t: f64) -> Vec<f64> {
            let d = self.mu.len();
            flat(x_t)
                .iter()
                .enumerate()
                .map(|(i, &z)| {
                    let (m, s) = (self.mu[i % d], self.s[i % d]);
                    let sigma = ((1.0 - t).powi(2) * s * s + t * t).sqrt();
                    (1.0 - t) * m + sigma * z
                })
                .collect()
        }
    }

    impl VelocityField for GaussianFlow {
        fn velocity(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
            self.calls.set(self.calls.get() + 1);
            let mu = self.row(&self.mu, x)?;
            let s2 = self.row(&self.s, x)?.sqr()?;
            let coef = (s2.affine(-(1.0 - t), t)? / s2.affine((1.0 - t).powi(2), t * t)?)?;
            x.broadcast_sub(&(&mu * (1.0 - t))?)?
                .broadcast_mul(&coef)?
                .broadcast_sub(&mu)
        }
    }

    const MU: [f64; 2] = [1.5, -0.5];
    const S: [f64; 2] = [0.3, 0.8];

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    fn max_abs_err(got: &Tensor, want: &[f64]) -> f64 {
        flat(got)
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }

    /// n samples of x_T ~ N(0, I₂) from the seed streams, as f64.
    fn x_t(n: usize, seed: u64) -> Tensor {
        let idx: Vec<u64> = (0..n as u64).collect();
        let v = SeedStreams::new(seed).purpose("x_T").normals(&idx, None, 2);
        Tensor::from_vec(v, (n, 2), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }

    fn tol(rtol: f64, atol: f64) -> Dopri5Options {
        Dopri5Options {
            rtol,
            atol,
            ..Default::default()
        }
    }

    #[test]
    fn tableau_satisfies_its_order_conditions() {
        // Expected: Σ_j a_ij = c_i (row sums), and the quadrature conditions Σ b_i c_i^{q−1} = 1/q
        // for q ≤ 5 (fifth-order weights) and q ≤ 4 (both embedded fourth-order weight sets),
        // plus Σ b_i a_ij c_j = 1/6 — necessary conditions that catch a mistyped coefficient.
        for (i, a) in A.iter().enumerate() {
            approx::assert_abs_diff_eq!(a.iter().sum::<f64>(), C[i + 1], epsilon = 1e-14);
        }
        let quad =
            |w: &[f64; 7], q: i32| w.iter().zip(C).map(|(b, c)| b * c.powi(q - 1)).sum::<f64>();
        for q in 1..=5 {
            approx::assert_abs_diff_eq!(quad(&B, q), 1.0 / q as f64, epsilon = 1e-14);
        }
        for w in [&B_HAT_DP, &B_HAT_SHAMPINE] {
            for q in 1..=4 {
                approx::assert_abs_diff_eq!(quad(w, q), 1.0 / q as f64, epsilon = 1e-14);
            }
            let bac: f64 = (1..7)
                .map(|i| w[i] * A[i - 1].iter().zip(C).map(|(a, c)| a * c).sum::<f64>())
                .sum();
            approx::assert_abs_diff_eq!(bac, 1.0 / 6.0, epsilon = 1e-14);
            // A fourth-order pair must differ from the fifth-order weights (else no estimate).
            assert!(quad(w, 5) != 0.2);
        }
    }

    #[test]
    fn uniform_grid_runs_from_one_to_zero() {
        // Expected: steps + 1 points 1, 1 − 1/steps, …, 0 (by construction).
        assert_eq!(uniform_grid(4), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(uniform_grid(0), vec![1.0, 0.0]);
    }

    #[test]
    fn euler_is_exact_on_straight_paths_and_observes_implied_predictions() {
        // Expected (closed form, see GaussianFlow): for a point mass at μ (s = 0) the flow lines are
        // straight, x_t = (1 − t)μ + t·x_T, so 5 Euler steps land exactly on μ, and at every step
        // x̂₀ = x − t·v = μ and ε̂ = x + (1 − t)·v = x_T, up to f64 rounding.
        let field = GaussianFlow::new(&MU, &[0.0, 0.0]);
        let x_t = x_t(8, 3);
        struct Check {
            x_t: Vec<f64>,
            ts: Vec<f64>,
        }
        impl Observer for Check {
            fn on_step(&mut self, v: &StepView<'_>) -> candle_core::Result<()> {
                assert_eq!(v.step, self.ts.len());
                self.ts.push(v.t);
                for (a, b) in flat(v.eps).iter().zip(&self.x_t) {
                    approx::assert_abs_diff_eq!(a, b, epsilon = 1e-12);
                }
                for (i, a) in flat(v.x0_hat).iter().enumerate() {
                    approx::assert_abs_diff_eq!(*a, MU[i % 2], epsilon = 1e-12);
                }
                Ok(())
            }
        }
        let mut obs = Check {
            x_t: flat(&x_t),
            ts: vec![],
        };
        let grid = uniform_grid(5);
        let out = euler(&field, x_t, &grid, &mut obs).unwrap();
        assert_eq!(out.nfe, 5);
        assert_eq!(field.calls.get(), 5);
        assert_eq!(obs.ts, grid[..5].to_vec());
        for (i, v) in flat(&out.x0).iter().enumerate() {
            approx::assert_abs_diff_eq!(*v, MU[i % 2], epsilon = 1e-12);
        }
    }

    #[test]
    fn euler_converges_at_first_order() {
        // Reference: the closed-form solution x₀ = μ + s·x_T (GaussianFlow). Doubling the number of
        // steps must halve the max error (first order): measured errors 0.123, 0.0623, 0.0313,
        // 0.0157, 7.9e-3 for 25, 50, 100, 200, 400 steps (≈ 3.1/steps), ratios 1.975, 1.987, 1.994,
        // 1.997.
        let field = GaussianFlow::new(&MU, &S);
        let x_t = x_t(64, 5);
        let want = field.exact(&x_t, 0.0);
        let errs: Vec<f64> = [25, 50, 100, 200, 400]
            .iter()
            .map(|&n| {
                let out = euler(&field, x_t.clone(), &uniform_grid(n), &mut NoObserver).unwrap();
                assert_eq!(out.nfe, n);
                max_abs_err(&out.x0, &want)
            })
            .collect();
        eprintln!("euler errors {errs:?}");
        for w in errs.windows(2) {
            let ratio = w[0] / w[1];
            assert!((1.9..2.1).contains(&ratio), "ratio {ratio} ({errs:?})");
        }
    }

    #[test]
    fn dopri5_is_accurate_with_far_fewer_evaluations_than_euler() {
        // Reference: the closed-form solution x₀ = μ + s·x_T (GaussianFlow), 64 samples × 2 dims.
        // Measured (NFE, max |error|, RMS error):
        //   rtol = atol = 1e-5, Dormand–Prince b̂:  68, 8.5e-5, 2.5e-5
        //   rtol = atol = 1e-5, Shampine b̂:        68, 7.8e-5, 2.5e-5
        //   torchdiffeq defaults (1e-7 / 1e-9):    188, 9.1e-8, 2.7e-8
        // The global error is a few × the tolerance, not below it: the tolerances bound the
        // *estimated local* error, and the last, long step (t ≈ 0.25 → 0, after the step grew 10×)
        // lies outside the asymptotic regime, where the 4th- and 5th-order solutions err alike
        // (checked by hand: both ≈ 8e-5 there, their difference ≈ 7e-6). Euler converges at first
        // order with error ≈ 3.1/steps here (euler_converges_at_first_order), so matching 8.5e-5
        // would take ≈ 36,000 evaluations, ≈ 500× dopri5's 68. Checked directly: Euler with 10×
        // dopri5's NFE is still ≥ 10× less accurate (measured 3.4e-3 at 680 NFE, 40×).
        let field = GaussianFlow::new(&MU, &S);
        let x_t = x_t(64, 7);
        let want = field.exact(&x_t, 0.0);
        let mut results = vec![];
        for (embedded, opts) in [
            (EmbeddedPair::DormandPrince, tol(1e-5, 1e-5)),
            (EmbeddedPair::Shampine, tol(1e-5, 1e-5)),
            (EmbeddedPair::DormandPrince, Dopri5Options::default()),
        ] {
            let opts = Dopri5Options { embedded, ..opts };
            field.calls.set(0);
            let out = dopri5(&field, x_t.clone(), &opts, &mut NoObserver).unwrap();
            // NFE is every evaluation: f(x_T), the first-step probe, six per attempted step.
            assert_eq!(out.nfe, field.calls.get());
            assert_eq!((out.nfe - 2) % 6, 0);
            let d: Vec<f64> = flat(&out.x0)
                .iter()
                .zip(&want)
                .map(|(a, b)| a - b)
                .collect();
            let rms = (d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64).sqrt();
            results.push((out.nfe, max_abs_err(&out.x0, &want), rms));
        }
        eprintln!("dopri5 (nfe, max error, rms error): {results:?}");
        for &(nfe, max, rms) in &results[..2] {
            assert!(nfe <= 100 && max < 2e-4 && rms < 5e-5, "{results:?}");
        }
        assert!(results[2].1 < 1e-6 && results[2].0 <= 250, "{results:?}");

        let (nfe, err, _) = results[0];
        let out = euler(&field, x_t, &uniform_grid(10 * nfe), &mut NoObserver).unwrap();
        let euler_err = max_abs_err(&out.x0, &want);
        eprintln!("euler with {} NFE: max error {euler_err:.2e}", 10 * nfe);
        assert!(euler_err > 10.0 * err, "euler {euler_err} vs dopri5 {err}");
    }

    #[test]
    fn dopri5_reaches_intermediate_times_and_observes_accepted_points() {
        // Expected: integrating only to t_end = 0.5 gives the closed form x_t = (1 − t)μ + σ_t x_T
        // (GaussianFlow) at t = 0.5; the observer sees accepted points from t = 1 strictly
        // decreasing and above 0.5, numbered 0, 1, …, with x̂₀ = x − t·v consistent with ε̂ (both
        // reconstruct x = (1 − t)x̂₀ + t·ε̂, the linear path).
        let field = GaussianFlow::new(&MU, &S);
        let x_t = x_t(16, 9);
        struct Check(Vec<f64>);
        impl Observer for Check {
            fn on_step(&mut self, v: &StepView<'_>) -> candle_core::Result<()> {
                assert_eq!(v.step, self.0.len());
                self.0.push(v.t);
                let back = ((v.x0_hat * (1.0 - v.t))? + (v.eps * v.t)?)?;
                for (a, b) in flat(&back).iter().zip(flat(v.x_t)) {
                    approx::assert_abs_diff_eq!(*a, b, epsilon = 1e-12);
                }
                Ok(())
            }
        }
        let mut obs = Check(vec![]);
        let opts = Dopri5Options {
            t_end: 0.5,
            ..tol(1e-8, 1e-8)
        };
        let out = dopri5(&field, x_t.clone(), &opts, &mut obs).unwrap();
        let err = max_abs_err(&out.x0, &field.exact(&x_t, 0.5));
        assert!(err < 1e-7, "error {err}");
        assert_eq!(obs.0[0], 1.0);
        assert!(obs.0.windows(2).all(|w| w[1] < w[0]));
        assert!(*obs.0.last().unwrap() > 0.5);
    }

    #[test]
    fn samples_land_on_the_data_distribution() {
        // Expected: x_T ~ N(0, I) pushed through the exact Gaussian flow is N(μ, s²) per dim
        // (GaussianFlow). With n = 4000 samples the standard errors are s/√n for the mean and
        // ≈ s/√(2n) for the std; we allow 4 standard errors (+1e-4 for the solver). Measured:
        // mean 1.4970 / −0.5089, std 0.3064 / 0.8105 (≤ 1.9 standard errors off).
        let field = GaussianFlow::new(&MU, &S);
        let n = 4000;
        let out = dopri5(&field, x_t(n, 11), &tol(1e-5, 1e-5), &mut NoObserver).unwrap();
        let v = flat(&out.x0);
        for d in 0..2 {
            let col: Vec<f64> = v.iter().skip(d).step_by(2).copied().collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            let std = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            let se = S[d] / (n as f64).sqrt();
            eprintln!(
                "dim {d}: mean {mean:.4} (μ {}), std {std:.4} (s {})",
                MU[d], S[d]
            );
            approx::assert_abs_diff_eq!(mean, MU[d], epsilon = 4.0 * se + 1e-4);
            approx::assert_abs_diff_eq!(std, S[d], epsilon = 4.0 * se / 2f64.sqrt() + 1e-4);
        }
    }

    #[test]
    fn dopri5_errors_instead_of_looping() {
        // Expected: the guard fires (an Error, not a hang or panic) when the tolerance needs more
        // attempted steps than max_steps allows, and when the field returns NaN.
        let field = GaussianFlow::new(&MU, &S);
        let opts = Dopri5Options {
            max_steps: 3,
            ..tol(1e-12, 1e-12)
        };
        let err = dopri5(&field, x_t(4, 1), &opts, &mut NoObserver)
            .err()
            .expect("max_steps must stop the integration");
        assert!(matches!(err, Error::Invalid { .. }));
        assert!(err.to_string().contains("max_steps = 3"), "{err}");
        assert_eq!(field.calls.get(), 2 + 6 * 3);

        struct NanField;
        impl VelocityField for NanField {
            fn velocity(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
                if t < 0.9 {
                    x.affine(0.0, f64::NAN)
                } else {
                    x.affine(-1.0, 0.0)
                }
            }
        }
        let err = dopri5(&NanField, x_t(4, 1), &tol(1e-5, 1e-5), &mut NoObserver)
            .err()
            .expect("NaN velocities must stop the integration");
        assert!(err.to_string().contains("non-finite"), "{err}");

        let bad = Dopri5Options {
            rtol: 0.0,
            atol: 0.0,
            ..Default::default()
        };
        assert!(dopri5(&field, x_t(4, 1), &bad, &mut NoObserver).is_err());
    }
}
