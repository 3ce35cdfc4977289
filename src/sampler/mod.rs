//! Samplers: one contract for all of them — (denoiser, x_T, timestep grid, injected noise source,
//! observer) → x₀ together with the number of network evaluations (NFE). A sampler knows nothing of
//! uncertainty; uncertainty methods observe steps or wrap denoisers.

pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod dpm_solver_2;
pub mod flow;
pub mod spec;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::schedule::NoiseSchedule;
use crate::seed::Purpose;

/// Where a discrete sampler ends (config key `sampler.final_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinalStep {
    /// One more update from the last grid point to ᾱ = 1 (diffusers' `set_alpha_to_one = true`;
    /// AU's pixel models).
    #[default]
    AlphaOne,
    /// One more update to ᾱ_0 = 1 − β_0 (diffusers' `set_alpha_to_one = false`; AU's U-ViT).
    AlphaFirst,
    /// No update after the last grid point: the output is x at that timestep (GU's and BayesDiff's
    /// samplers save x at t = 0). Saves one network evaluation.
    Stop,
}

/// Conventions shared by the discrete DDPM/DDIM samplers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepRules {
    /// Clip x̂₀ to [−c, c] before the update (diffusers' `clip_sample` with
    /// `clip_sample_range = c`); ε itself is left unclipped, as diffusers does.
    pub clip_sample: Option<f64>,
    pub final_step: FinalStep,
}

impl StepRules {
    /// ᾱ of the point after grid index `step`; `None` when the sampler stops at `step` instead.
    pub(crate) fn next_alpha_bar(
        &self,
        schedule: &NoiseSchedule,
        grid: &[usize],
        step: usize,
    ) -> Option<f64> {
        match (grid.get(step + 1), self.final_step) {
            (Some(&t), _) => Some(schedule.alpha_bar(Some(t))),
            (None, FinalStep::AlphaOne) => Some(1.0),
            (None, FinalStep::AlphaFirst) => Some(schedule.alpha_bar(Some(0))),
            (None, FinalStep::Stop) => None,
        }
    }

    /// How many grid points get an update (all, or all but the last under `Stop`).
    pub(crate) fn updates(&self, grid: &[usize]) -> usize {
        match self.final_step {
            FinalStep::Stop => grid.len().saturating_sub(1),
            _ => grid.len(),
        }
    }

    pub(crate) fn clip(&self, x0: Tensor) -> candle_core::Result<Tensor> {
        match self.clip_sample {
            Some(c) => x0.clamp(-c, c),
            None => Ok(x0),
        }
    }
}

/// Noise injected at a sampling step, shaped (B, D) for the B samples of the batch; samplers
/// broadcast it over any leading axes of x (so every ensemble member sees the same noise).
pub trait NoiseSource {
    fn noise(&self, step: u32) -> candle_core::Result<Tensor>;
}

/// Per-sample noise from the seed streams: sample `indices[b]` at step s gets
/// `purpose.normals([indices[b]], Some(s), dim)` whatever batch it is computed in.
pub struct StreamNoise<'a> {
    pub purpose: Purpose,
    pub indices: &'a [u64],
    pub dim: usize,
    pub device: &'a Device,
}

impl NoiseSource for StreamNoise<'_> {
    fn noise(&self, step: u32) -> candle_core::Result<Tensor> {
        let v = self.purpose.normals(self.indices, Some(step), self.dim);
        Tensor::from_vec(v, (self.indices.len(), self.dim), self.device)
    }
}

/// [`StreamNoise`] in the shape of an image batch (B, C, H, W): the same numbers, reshaped.
pub struct ImageNoise<'a> {
    pub inner: StreamNoise<'a>,
    /// (C, H, W) of one sample; C·H·W = `inner.dim`.
    pub shape: (usize, usize, usize),
}

impl NoiseSource for ImageNoise<'_> {
    fn noise(&self, step: u32) -> candle_core::Result<Tensor> {
        let (c, h, w) = self.shape;
        self.inner
            .noise(step)?
            .reshape((self.inner.indices.len(), c, h, w))
    }
}

/// What an observer sees at every step: the state x_t, the timestep, the model's ε and the
/// implied x̂₀ = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t.
pub struct StepView<'a> {
    pub step: usize,
    /// Model time (integer for discrete samplers).
    pub t: f64,
    pub x_t: &'a Tensor,
    pub eps: &'a Tensor,
    pub x0_hat: &'a Tensor,
}

/// Receives every step of a sampling trajectory.
pub trait Observer {
    fn on_step(&mut self, view: &StepView<'_>) -> candle_core::Result<()>;
}

/// An observer that ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {
    fn on_step(&mut self, _: &StepView<'_>) -> candle_core::Result<()> {
        Ok(())
    }
}

/// The sampler's result.
pub struct SampleOutput {
    pub x0: Tensor,
    /// Network function evaluations per sample (one batched call counts once per sample).
    pub nfe: usize,
}

/// The prologue every ε-parameterised step shares: ε = ε_θ(x_t, t), x̂₀ = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t
/// (Ho et al. 2020, Eq. 15), both shown to the observer. Returns (ε, x̂₀).
pub(crate) fn eps_and_x0(
    denoiser: &dyn crate::model::Denoiser,
    x: &Tensor,
    t: usize,
    alpha_bar: f64,
    step: usize,
    observer: &mut dyn Observer,
) -> candle_core::Result<(Tensor, Tensor)> {
    let eps = denoiser.eps(x, t as f64)?;
    let x0 = ((x - (&eps * (1.0 - alpha_bar).sqrt())?)? / alpha_bar.sqrt())?;
    observer.on_step(&StepView {
        step,
        t: t as f64,
        x_t: x,
        eps: &eps,
        x0_hat: &x0,
    })?;
    Ok((eps, x0))
}
