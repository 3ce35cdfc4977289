//! Single-step DPM-Solver-2 (Lu et al. 2022a, Alg. 1 "DPM-Solver-2", noise prediction,
//! `solver_type = "dpmsolver"`) in continuous time on a discrete VP schedule — the sampler of GU's
//! U-ViT runs (time-uniform grid, 25 steps) and of BayesDiff's DPM runs (logSNR grid).
//!
//! With log α(τ) interpolated as in DPM-Solver's `NoiseScheduleVP("discrete")`
//! ([`NoiseSchedule::log_alpha_at`]), σ = √(1 − α²), λ = log α − log σ, a step s → t over
//! h = λ_t − λ_s with the intermediate point s₁ = λ⁻¹(λ_s + r₁h) is
//!
//!   x_{s₁} = (α_{s₁}/α_s) x_s − σ_{s₁} (e^{r₁h} − 1) ε_θ(x_s, s)
//!   x_t    = (α_t/α_s) x_s − σ_t (e^h − 1) ε_θ(x_s, s)
//!            − σ_t/(2r₁) (e^h − 1) (ε_θ(x_{s₁}, s₁) − ε_θ(x_s, s))          (Lu et al., Eq. 3.7)
//!
//! which for r₁ = ½ reduces to x_t = (α_t/α_s) x_s − σ_t (e^h − 1) ε_θ(x_{s₁}, s₁), the form
//! GU's `conditioned_update` and BayesDiff's variance propagation use. Two network evaluations per
//! step; the model sees the real model time τ (DPM-Solver's `get_model_input_time`, (t − 1/N)·N).
//! The output is x at the grid's last point (τ = 0, i.e. t = 1/N) without a final denoising step,
//! as DPM-Solver's `denoise_to_zero = False`.

use candle_core::Tensor;

use super::{Observer, SampleOutput, StepView};
use crate::model::Denoiser;
use crate::schedule::NoiseSchedule;

/// Run single-step DPM-Solver-2 with intermediate ratio `r1` ∈ (0, 1] down the decreasing
/// model-time `grid` (e.g. [`crate::schedule::continuous_grid`]); deterministic.
pub fn sample(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    grid: &[f64],
    r1: f64,
    x_t: Tensor,
    observer: &mut dyn Observer,
) -> candle_core::Result<SampleOutput> {
    let coef = |tau: f64| {
        let la = schedule.log_alpha_at(tau);
        let sigma = (-(2.0 * la).exp_m1()).sqrt();
        (la, sigma, la - sigma.ln())
    };
    let mut x = x_t;
    let mut nfe = 0;
    for (step, w) in grid.windows(2).enumerate() {
        let (s, t) = (w[0], w[1]);
        let (la_s, sig_s, lam_s) = coef(s);
        let (la_t, sig_t, lam_t) = coef(t);
        let h = lam_t - lam_s;
        let s1 = schedule.tau_from_lambda(lam_s + r1 * h);
        let (la_s1, sig_s1, _) = coef(s1);
        let eps_s = denoiser.eps(&x, s)?;
        let x0 = ((&x - (&eps_s * sig_s)?)? / la_s.exp())?;
        observer.on_step(&StepView {
            step,
            t: s,
            x_t: &x,
            eps: &eps_s,
            x0_hat: &x0,
        })?;
        let x_s1 = ((&x * (la_s1 - la_s).exp())? - (&eps_s * (sig_s1 * (r1 * h).exp_m1()))?)?;
        let eps_s1 = denoiser.eps(&x_s1, s1)?;
        nfe += 2;
        let phi = sig_t * h.exp_m1();
        let first = ((&x * (la_t - la_s).exp())? - (&eps_s * phi)?)?;
        x = (first - ((eps_s1 - &eps_s)? * (phi * 0.5 / r1))?)?;
    }
    Ok(SampleOutput { x0: x, nfe })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gmm::{Component, GaussianMixture};
    use crate::sampler::{ddim, FinalStep, NoObserver, StepRules, StreamNoise};
    use crate::schedule::{continuous_grid, ContinuousSpacing, ScheduleKind};
    use crate::seed::SeedStreams;
    use candle_core::{DType, Device};

    struct Setup {
        schedule: NoiseSchedule,
        g: GaussianMixture,
        x_t: Tensor,
    }

    fn setup(std: f64) -> Setup {
        let schedule = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        let g = GaussianMixture::new(
            vec![
                Component {
                    weight: 0.4,
                    mean: vec![-1.0, 0.5],
                    std,
                },
                Component {
                    weight: 0.6,
                    mean: vec![1.2, -0.3],
                    std: std * 1.2,
                },
            ],
            schedule.clone(),
        )
        .unwrap();
        let n = 256;
        let idx: Vec<u64> = (0..n as u64).collect();
        let x_t = Tensor::from_vec(
            SeedStreams::new(21).purpose("x_T").normals(&idx, None, 2),
            (n, 2),
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
        Setup { schedule, g, x_t }
    }

    fn flat(t: Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    fn dpm2(s: &Setup, steps: usize, spacing: ContinuousSpacing) -> (Vec<f64>, usize) {
        let grid = continuous_grid(spacing, &s.schedule, steps);
        let out = sample(
            &s.g,
            &s.schedule,
            &grid,
            0.5,
            s.x_t.clone(),
            &mut NoObserver,
        )
        .unwrap();
        (flat(out.x0), out.nfe)
    }

    /// Deterministic DDIM on the time-uniform grid rounded to integer steps (999 … 0), stopping at
    /// τ = 0 like DPM-Solver, so both integrate the same ODE between the same end points.
    fn ddim(s: &Setup, steps: usize) -> (Vec<f64>, usize) {
        let grid: Vec<usize> = continuous_grid(ContinuousSpacing::TimeUniform, &s.schedule, steps)
            .iter()
            .map(|t| t.round() as usize)
            .collect();
        let idx: Vec<u64> = (0..256).collect();
        let noise = StreamNoise {
            purpose: SeedStreams::new(0).purpose("unused"),
            indices: &idx,
            dim: 2,
            device: &Device::Cpu,
        };
        let rules = StepRules {
            clip_sample: None,
            final_step: FinalStep::Stop,
        };
        let out = ddim::sample(
            &s.g,
            &s.schedule,
            &grid,
            0.0,
            &rules,
            s.x_t.clone(),
            &noise,
            &mut NoObserver,
        )
        .unwrap();
        (flat(out.x0), out.nfe)
    }

    fn mean_abs(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
    }

    #[test]
    fn beats_ddim_with_25_steps_and_converges_at_second_order() {
        // Reference: DPM-Solver-2 with 500 steps (1000 NFE); DDIM with 999 steps must agree with
        // it (both solve the probability-flow ODE from τ = 999 to 0). Against DDIM with 25 steps
        // (25 NFE), on a sharp mixture (component std 0.15) and a smooth one (0.5):
        // - DPM-Solver-2 with 25 steps (50 NFE, BayesDiff's "50 steps") on the time-uniform grid
        //   is closer (measured 2.5e-2 vs 3.4e-2 and 1.1e-2 vs 5.2e-2);
        // - at equal cost, 12 steps (24 NFE) on the logSNR grid is closer too (1.4e-2 and
        //   3.4e-2). On the time-uniform grid it is not for the sharp mixture (8.5e-2): its last
        //   steps are too long in λ. Recorded here, not asserted.
        // - halving the step 20 → 40 (time-uniform) cuts the error ≥ 3× (second order; first
        //   order would give 2×): measured 3.5× and 3.8×.
        for std in [0.15, 0.5] {
            let s = setup(std);
            let (reference, nfe) = dpm2(&s, 500, ContinuousSpacing::TimeUniform);
            assert_eq!(nfe, 1000);
            let (ddim_ref, _) = ddim(&s, 999);
            assert!(mean_abs(&ddim_ref, &reference) < 5e-3);
            let (d25, ddim_nfe) = ddim(&s, 25);
            assert_eq!(ddim_nfe, 25);
            let e_ddim = mean_abs(&d25, &reference);
            let err = |steps, sp| mean_abs(&dpm2(&s, steps, sp).0, &reference);
            let e25 = err(25, ContinuousSpacing::TimeUniform);
            assert!(
                e25 < e_ddim,
                "std {std}: DPM-2×25 {e25} vs DDIM×25 {e_ddim}"
            );
            let l12 = err(12, ContinuousSpacing::LogSnr);
            assert!(
                l12 < e_ddim,
                "std {std}: DPM-2×12 logSNR {l12} vs DDIM×25 {e_ddim}"
            );
            let (e20, e40) = (
                err(20, ContinuousSpacing::TimeUniform),
                err(40, ContinuousSpacing::TimeUniform),
            );
            assert!(e20 / e40 > 3.0, "std {std}: order {e20} → {e40}");
        }
    }

    #[test]
    fn logsnr_grid_lands_on_the_mixture() {
        // BayesDiff's logSNR-uniform grid, 25 steps: the sample moments are the mixture's (data
        // mean (0.4·(−1) + 0.6·1.2, 0.4·0.5 − 0.6·0.3) = (0.32, 0.02)); 256 samples give a
        // standard error ≈ 0.07 on the first coordinate's mean, tolerance 3 of them.
        let s = setup(0.3);
        let (x, nfe) = dpm2(&s, 25, ContinuousSpacing::LogSnr);
        assert_eq!(nfe, 50);
        let n = x.len() as f64 / 2.0;
        let m0 = x.iter().step_by(2).sum::<f64>() / n;
        let m1 = x.iter().skip(1).step_by(2).sum::<f64>() / n;
        approx::assert_abs_diff_eq!(m0, 0.32, epsilon = 0.2);
        approx::assert_abs_diff_eq!(m1, 0.02, epsilon = 0.1);
    }
}
