//! Samplers: one contract for all of them — (denoiser, x_T, timestep grid, injected noise source,
//! observer) → x₀ together with the number of network evaluations (NFE). A sampler knows nothing of
//! uncertainty; uncertainty methods observe steps or wrap denoisers.

pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;

use candle_core::{Device, Tensor};

use crate::seed::Purpose;

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
