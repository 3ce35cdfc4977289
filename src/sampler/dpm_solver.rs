//! DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2; diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type = "dpmsolver++"`, `solver_order = 2`, `solver_type = "midpoint"`,
//! `final_sigmas_type = "zero"`) on a discrete DDPM schedule.
//!
//! With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = ln(α_t/σ_t) and the data prediction
//! D_s = (x_s − σ_s ε_θ(x_s, s))/α_s, a step s → t with h = λ_t − λ_s is
//!
//!   first order:   x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D_s
//!   second order:  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) (D_s + ½ (D_s − D_{s'}) / r),
//!                  r = (λ_s − λ_{s'}) / h, s' the previous grid point (midpoint form).
//!
//! The first step (no history) and the final step to σ = 0 (where the update is x₀ = D_s) are first
//! order, as in diffusers with `final_sigmas_type = "zero"`. One network evaluation per step.

use candle_core::Tensor;

use super::{Observer, SampleOutput, StepView};
use crate::model::Denoiser;
use crate::schedule::NoiseSchedule;

/// How the step coefficients α_t, σ_t, λ_t are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coefficients {
    /// In f64 from ᾱ_t.
    #[default]
    Exact,
    /// As diffusers does: σ = √((1−ᾱ)/ᾱ) rounded to float32, then α_t = 1/√(σ²+1), σ_t = σ α_t and
    /// λ_t = ln α_t − ln σ_t in float32. It matters where α_t is tiny (the cosine schedule's
    /// t = 999, α ≈ 8e-5): the first step's two O(300) terms cancel, amplifying the float32
    /// coefficient rounding ~300× (2.6e-5 relative on the golden trajectory).
    DiffusersF32,
}

/// Run DPM-Solver++(2M) from `x_t` down the decreasing `grid` (deterministic: no noise source).
pub fn sample_2m(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    grid: &[usize],
    x_t: Tensor,
    observer: &mut dyn Observer,
) -> candle_core::Result<SampleOutput> {
    sample_2m_with(denoiser, schedule, grid, Coefficients::Exact, x_t, observer)
}

/// [`sample_2m`] with a choice of coefficient arithmetic.
pub fn sample_2m_with(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    grid: &[usize],
    coefficients: Coefficients,
    x_t: Tensor,
    observer: &mut dyn Observer,
) -> candle_core::Result<SampleOutput> {
    let coef = |t: usize| {
        let ab = schedule.alpha_bar(Some(t));
        match coefficients {
            Coefficients::Exact => {
                let (a, s) = (ab.sqrt(), (1.0 - ab).sqrt());
                (a, s, (a / s).ln())
            }
            Coefficients::DiffusersF32 => {
                let sig = ((1.0 - ab) / ab).sqrt() as f32;
                let a = 1.0f32 / (sig * sig + 1.0).sqrt();
                let s = sig * a;
                (f64::from(a), f64::from(s), f64::from(a.ln() - s.ln()))
            }
        }
    };
    let mut x = x_t;
    let mut prev: Option<(f64, Tensor)> = None; // (λ, D) of the previous grid point
    for (step, &s_t) in grid.iter().enumerate() {
        let (a_s, sig_s, lam_s) = coef(s_t);
        let eps = denoiser.eps(&x, s_t as f64)?;
        let d = ((&x - (&eps * sig_s)?)? / a_s)?;
        observer.on_step(&StepView {
            step,
            t: s_t as f64,
            x_t: &x,
            eps: &eps,
            x0_hat: &d,
        })?;
        x = match grid.get(step + 1) {
            None => d.clone(),
            Some(&t) => {
                let (a_t, sig_t, lam_t) = coef(t);
                let h = lam_t - lam_s;
                let phi = (-h).exp_m1(); // e^{−h} − 1
                let d_eff = match &prev {
                    Some((lam_p, d_p)) => {
                        let r = (lam_s - lam_p) / h;
                        (&d + ((&d - d_p)? * (0.5 / r))?)?
                    }
                    None => d.clone(),
                };
                ((&x * (sig_t / sig_s))? - (d_eff * (a_t * phi))?)?
            }
        };
        prev = Some((lam_s, d));
    }
    Ok(SampleOutput {
        x0: x,
        nfe: grid.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gmm::{Component, GaussianMixture};
    use crate::sampler::{ddim, NoObserver, StreamNoise};
    use crate::schedule::{grid, leading_grid, ScheduleKind, Spacing};
    use crate::seed::SeedStreams;
    use candle_core::{DType, Device};

    #[test]
    fn converges_at_second_order() {
        // Reference: deterministic DDIM with all 1000 steps from the same x_T (the probability-flow
        // ODE solution up to an error ≈ 1e-3 here). Doubling the steps from 40 to 80 must cut the
        // DPM-Solver++(2M) error about 4× (second order) and DDIM's about 2× (first order), and
        // at 80 steps DPM++(2M) must be the more accurate. Measured: 3.6× vs 2.2×.
        // On sharp mixtures (component std 0.15) and coarse leading grids (≤ 40 steps), DPM++(2M)
        // was *not* more accurate than DDIM here: multistep extrapolation of a stiff x̂₀ overshoots.
        let schedule = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        let g = GaussianMixture::new(
            vec![
                Component {
                    weight: 0.4,
                    mean: vec![-1.0, 0.5],
                    std: 0.5,
                },
                Component {
                    weight: 0.6,
                    mean: vec![1.2, -0.3],
                    std: 0.6,
                },
            ],
            schedule.clone(),
        )
        .unwrap();
        let dev = Device::Cpu;
        let n = 256;
        let idx: Vec<u64> = (0..n as u64).collect();
        let s = SeedStreams::new(21);
        let x_t = Tensor::from_vec(s.purpose("x_T").normals(&idx, None, 2), (n, 2), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let noise = StreamNoise {
            purpose: s.purpose("unused"),
            indices: &idx,
            dim: 2,
            device: &dev,
        };
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let ddim = |steps: usize| {
            flat(
                ddim::sample(
                    &g,
                    &schedule,
                    &leading_grid(1000, steps),
                    0.0,
                    &crate::sampler::StepRules::default(),
                    x_t.clone(),
                    &noise,
                    &mut NoObserver,
                )
                .unwrap()
                .x0,
            )
        };
        let reference = ddim(1000);
        let err = |v: &[f64]| {
            v.iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / v.len() as f64
        };
        let dpm = |steps: usize| {
            let out = sample_2m(
                &g,
                &schedule,
                &grid(Spacing::Leading, 1000, steps, 0),
                x_t.clone(),
                &mut NoObserver,
            )
            .unwrap();
            assert_eq!(out.nfe, steps);
            err(&flat(out.x0))
        };
        let (dpm40, dpm80, ddim40, ddim80) = (dpm(40), dpm(80), err(&ddim(40)), err(&ddim(80)));
        assert!(dpm40 / dpm80 > 3.0, "DPM++(2M) order: {dpm40} → {dpm80}");
        assert!(
            (1.5..2.7).contains(&(ddim40 / ddim80)),
            "DDIM order: {ddim40} → {ddim80}"
        );
        assert!(
            dpm80 < ddim80,
            "DPM++(2M) {dpm80} vs DDIM {ddim80} at 80 steps"
        );
    }
}
