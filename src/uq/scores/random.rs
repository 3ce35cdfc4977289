//! The random baseline: every filtering table's "Random" row (AU Table 1, GU Figs. 3 and 7)
//! keeps a random subset of the same size. Here each sample draws one uniform number in [0, 1)
//! from its own stream (purpose [`RANDOM`](super::RANDOM), stream = the sample's global index),
//! so keeping the lowest K is a uniformly random K-subset that does not depend on batching, order
//! or the images — and is reproducible from the run seed (the released baselines are unseeded).

use rand::Rng;

use super::{SampleScore, ScoreBatch, Scored, RANDOM};
use crate::error::Result;
use crate::sampler::spec::SamplerSpec;
use crate::sampler::NoObserver;

/// Uniform draws from the seed streams (module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomScore;

impl SampleScore for RandomScore {
    fn name(&self) -> &str {
        "random"
    }

    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        Ok(super::sampler_nfe(sampler))
    }

    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        batch.validate()?;
        let out = batch.sample(&mut NoObserver, "random score: sampling")?;
        let u = Self::draws(&batch.streams, batch.indices);
        Ok(Scored::single(out.x0, u, out.nfe))
    }
}

impl RandomScore {
    /// The scores of samples `indices` without generating them (they do not depend on the
    /// images): what [`SampleScore::score`] returns beside the plain sampler's images.
    pub fn draws(streams: &crate::seed::SeedStreams, indices: &[u64]) -> Vec<f64> {
        let purpose = streams.purpose(RANDOM);
        indices
            .iter()
            .map(|&i| purpose.rng(i).random::<f64>())
            .collect()
    }
}
