//! The MC-Dropout baseline of AU's filtering tables (AU Table 1; the released
//! `scheduling_ddim_mc_dropout.py`, docs/released-code.md §1.3): at each sampler step of a window
//! the same x_t is evaluated M times with dropout on, U_t = Var_m[ε_θ^{(m)}(x_t, t)]
//! ([`crate::uq::mc_dropout`], unbiased by default as `torch.var`); the per-image score is Σ over
//! the window's steps and pixels of U_t, lower = keep, as AU's own score. The trajectory uses the
//! network without dropout, as the release does (dropout is switched on only for the M passes).
//!
//! Keep-masks come from purpose [`MC_DROPOUT`](super::MC_DROPOUT): one derived family per
//! (pass, layer), stream = sample index, position = sampler step. NFE per sample: the sampler's
//! + M per window step.

use candle_core::Tensor;

use super::{per_sample_sums, SampleScore, ScoreBatch, Scored, MC_DROPOUT};
use crate::error::{Error, Result};
use crate::model::DropoutDenoiser;
use crate::sampler::spec::SamplerSpec;
use crate::sampler::{Observer, StepView};
use crate::seed::Purpose;
use crate::uq::au::StepWindow;
use crate::uq::mc_dropout;

/// MC-Dropout variance summed over a window of sampler steps (module doc).
#[derive(Debug, Clone, Copy)]
pub struct McDropoutScore {
    /// Dropout passes M per step (≥ 2).
    pub m: usize,
    /// Delta degrees of freedom of the variance (1 = the release's unbiased `torch.var`).
    pub ddof: usize,
    pub window: StepWindow,
}

impl McDropoutScore {
    pub fn new(m: usize, ddof: usize, window: StepWindow) -> Result<Self> {
        if m < 2 {
            return Err(Error::invalid(
                "mc_dropout.m",
                format!("must be ≥ 2 (a variance needs two passes), got {m}"),
            ));
        }
        if ddof >= m {
            return Err(Error::invalid(
                "mc_dropout.ddof",
                format!("must be < mc_dropout.m = {m}, got {ddof}"),
            ));
        }
        Ok(Self { m, ddof, window })
    }
}

/// Sums U_t^drop per image over the window's steps.
struct DropoutObserver<'a> {
    net: &'a dyn DropoutDenoiser,
    purpose: Purpose,
    indices: &'a [u64],
    score: &'a McDropoutScore,
    sums: Vec<f64>,
    extra_nfe: usize,
}

impl Observer for DropoutObserver<'_> {
    fn on_step(&mut self, view: &StepView<'_>) -> candle_core::Result<()> {
        if !self.score.window.contains(view.step) {
            return Ok(());
        }
        let u: Tensor = mc_dropout::uncertainty(
            self.net,
            view.x_t,
            view.t,
            view.step as u32,
            self.indices,
            &self.purpose,
            self.score.m,
            self.score.ddof,
        )
        .map_err(candle_core::Error::wrap)?;
        for (s, v) in self.sums.iter_mut().zip(per_sample_sums(&u)?) {
            *s += v;
        }
        self.extra_nfe += self.score.m;
        Ok(())
    }
}

impl SampleScore for McDropoutScore {
    fn name(&self) -> &str {
        "mc-dropout"
    }

    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        self.window
            .validate("mc_dropout.window", sampler.observed_steps())?;
        Ok(super::sampler_nfe(sampler) + self.m * self.window.len)
    }

    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        batch.validate()?;
        self.window
            .validate("mc_dropout.window", batch.sampler.observed_steps())?;
        let mut obs = DropoutObserver {
            net: batch.net,
            purpose: batch.purpose(MC_DROPOUT),
            indices: batch.indices,
            score: self,
            sums: vec![0.0; batch.len()],
            extra_nfe: 0,
        };
        let out = batch.sample(&mut obs, "MC-Dropout score: sampling")?;
        let nfe = out.nfe + obs.extra_nfe;
        Ok(Scored::single(out.x0, obs.sums, nfe))
    }
}
