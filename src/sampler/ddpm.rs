//! DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on a strided grid, as diffusers'
//! `DDPMScheduler` does it (variance "fixed_small", ε-prediction, no clipping):
//!
//! for consecutive grid points t → t' (t' = none after the last, where ᾱ_{t'} = 1):
//!   x̂₀   = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t
//!   β̂_t  = 1 − ᾱ_t/ᾱ_{t'}
//!   μ     = √ᾱ_{t'} β̂_t /(1−ᾱ_t) · x̂₀ + √(1−β̂_t) (1−ᾱ_{t'})/(1−ᾱ_t) · x_t     (Ho Eq. 7)
//!   σ²    = (1−ᾱ_{t'})/(1−ᾱ_t) · β̂_t                                            (β̃_t)
//!   x_{t'} = μ + σ z,  z from the injected noise source (no noise when t = 0).
//!
//! With the full grid (S = T) this is exactly Alg. 2 of Ho et al.

use candle_core::Tensor;

use super::{eps_and_x0, NoiseSource, Observer, SampleOutput, StepRules};
use crate::model::Denoiser;
use crate::schedule::NoiseSchedule;

/// Run DDPM from `x_t` (any leading axes, last two (B, D)) down the decreasing `grid`.
pub fn sample(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    grid: &[usize],
    rules: &StepRules,
    x_t: Tensor,
    noise: &dyn NoiseSource,
    observer: &mut dyn Observer,
) -> candle_core::Result<SampleOutput> {
    let mut x = x_t;
    let updates = rules.updates(grid);
    for (step, &t) in grid.iter().enumerate().take(updates) {
        let ab_t = schedule.alpha_bar(Some(t));
        let Some(ab_prev) = rules.next_alpha_bar(schedule, grid, step) else {
            break;
        };
        let beta_hat = 1.0 - ab_t / ab_prev;
        let (_eps, x0) = eps_and_x0(denoiser, &x, t, ab_t, step, observer)?;
        let x0 = rules.clip(x0)?;
        let c0 = ab_prev.sqrt() * beta_hat / (1.0 - ab_t);
        let ct = (1.0 - beta_hat).sqrt() * (1.0 - ab_prev) / (1.0 - ab_t);
        let mean = ((x0 * c0)? + (&x * ct)?)?;
        x = if t > 0 {
            let var = ((1.0 - ab_prev) / (1.0 - ab_t) * beta_hat).max(1e-20);
            let z = noise.noise(step as u32)?.to_dtype(mean.dtype())?;
            mean.broadcast_add(&(z * var.sqrt())?)?
        } else {
            mean
        };
    }
    Ok(SampleOutput {
        x0: x,
        nfe: updates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{NoObserver, StreamNoise};
    use crate::schedule::{leading_grid, ScheduleKind};
    use crate::seed::SeedStreams;
    use candle_core::Device;

    /// The exact ε of a point mass at c: x_t = √ᾱ c + √(1−ᾱ) ε ⇒ ε = (x_t − √ᾱ c)/√(1−ᾱ).
    struct PointMass {
        c: f32,
        schedule: NoiseSchedule,
    }
    impl Denoiser for PointMass {
        fn eps(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
            let ab = self.schedule.alpha_bar_at(t);
            (x - (self.c as f64) * ab.sqrt())? / (1.0 - ab).sqrt()
        }
    }

    #[test]
    fn exact_denoiser_of_a_point_mass_lands_on_it() {
        // Expected: with the exact ε of a point mass, x̂₀ = c at every step and the posterior mean
        // collapses onto c; at the last step (t = 0, no noise) x₀ = c up to f32 rounding.
        let schedule = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        let den = PointMass {
            c: 0.75,
            schedule: schedule.clone(),
        };
        let dev = Device::Cpu;
        let idx: Vec<u64> = (0..16).collect();
        let s = SeedStreams::new(1);
        let x_t = Tensor::from_vec(s.purpose("x_T").normals(&idx, None, 2), (16, 2), &dev).unwrap();
        let noise = StreamNoise {
            purpose: s.purpose("noise"),
            indices: &idx,
            dim: 2,
            device: &dev,
        };
        let out = sample(
            &den,
            &schedule,
            &leading_grid(1000, 50),
            &StepRules::default(),
            x_t,
            &noise,
            &mut NoObserver,
        )
        .unwrap();
        assert_eq!(out.nfe, 50);
        for v in out.x0.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            approx::assert_abs_diff_eq!(v, 0.75, epsilon = 1e-4);
        }
    }

    #[test]
    fn samples_do_not_depend_on_batching() {
        // Same streams, batch of 16 vs two batches of 8: identical x₀ for each sample index.
        let schedule = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        let den = PointMass {
            c: 0.0,
            schedule: schedule.clone(),
        };
        let dev = Device::Cpu;
        let s = SeedStreams::new(2);
        let run = |idx: &[u64]| {
            let x_t =
                Tensor::from_vec(s.purpose("x_T").normals(idx, None, 2), (idx.len(), 2), &dev)
                    .unwrap();
            let noise = StreamNoise {
                purpose: s.purpose("noise"),
                indices: idx,
                dim: 2,
                device: &dev,
            };
            // Stop early (grid ends at t = 500) so the result still carries injected noise.
            let grid: Vec<usize> = leading_grid(1000, 20)
                .into_iter()
                .filter(|&t| t >= 500)
                .collect();
            sample(
                &den,
                &schedule,
                &grid,
                &StepRules::default(),
                x_t,
                &noise,
                &mut NoObserver,
            )
            .unwrap()
            .x0
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        };
        let all: Vec<u64> = (0..16).collect();
        let whole = run(&all);
        let parts = [run(&all[..8]), run(&all[8..])].concat();
        assert_eq!(whole, parts);
    }
}
