//! AU's filtering score (De Vita & Belagiannis, WACV 2025): Alg. 1 runs at the sampler steps of a
//! window, giving the pixel-wise uncertainty U_t = Var_m[ε_θ(x̂_t^m, t)] of Eq. 8 (or the
//! released `uncertainty_centered` rule, `AuCompat::AuRelease`: (1/M) Σ_m (ε_m − ε)² with x̂₀
//! clipped — [`crate::uq::au`]); the per-image score is Σ over the window's steps and all pixels
//! of U_t (Sec. 4: "summing the pixel-wise uncertainty from denoising timestep 45 until 48",
//! [`StepWindow::PAPER`]). Lower = keep: the released filter sorts the sums ascending and keeps
//! the lowest (docs/released-code.md §1.4; the paper's text says the retained set is the one
//! "having the highest uncertainty", which the released code does not do).
//!
//! The trajectory is the plain sampler's (AU observes it); the M re-noisings of each window step
//! are one batched call, from purpose [`AU_RENOISE`](super::AU_RENOISE), stream = sample index,
//! position = sampler step. NFE per sample: the sampler's + M per window step.

use super::{SampleScore, ScoreBatch, Scored, AU_RENOISE};
use crate::error::Result;
use crate::sampler::spec::SamplerSpec;
use crate::uq::au::{AuCompat, AuObserver, AuSpec, StepWindow};

/// AU Alg. 1 summed over a window of sampler steps (module doc).
#[derive(Debug, Clone)]
pub struct AuScore {
    pub spec: AuSpec,
    pub window: StepWindow,
    name: String,
}

impl AuScore {
    /// Validates `spec` (M ≥ 2, ddof < M); the window is checked against the sampler when
    /// scoring. For the release's numbers use `AuCompat::AuRelease` with `clip_sample` set to the
    /// sampler's clip range when the sampler clips.
    pub fn new(spec: AuSpec, window: StepWindow) -> Result<Self> {
        spec.validate()?;
        let name = match spec.compat {
            AuCompat::Paper => "au",
            AuCompat::AuRelease => "au-release",
        };
        Ok(Self {
            spec,
            window,
            name: name.into(),
        })
    }
}

impl SampleScore for AuScore {
    fn name(&self) -> &str {
        &self.name
    }

    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        self.window
            .validate("au.window", sampler.observed_steps())?;
        Ok(super::sampler_nfe(sampler) + self.spec.m * self.window.len)
    }

    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        batch.validate()?;
        self.window
            .validate("au.window", batch.sampler.observed_steps())?;
        let mut obs = AuObserver::new(
            batch.net,
            batch.schedule,
            self.spec,
            batch.purpose(AU_RENOISE),
            batch.indices,
            self.window,
        );
        let out = batch.sample(&mut obs, "AU score: sampling with Alg. 1")?;
        Ok(Scored::single(
            out.x0,
            obs.score(self.window),
            out.nfe + obs.extra_nfe,
        ))
    }
}
