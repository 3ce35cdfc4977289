//! Rank combination of two scores (GU App. C.5, Table 1: "we first rank the 12K images based on
//! each score individually, then compute the combined ranking by summing the two rankings and
//! re-ranking accordingly"), [`crate::metrics::rank::combined_ranks`] with average ranks at both
//! stages. Both parts are already lower = keep here, so each is ranked ascending; the combined
//! rank is lower = keep.
//!
//! The first score generates the samples; the second scores **those samples** (it must be a
//! [`super::PostHocScore`]: realism or rarity), so "GU + realism" ranks GU's own MAP samples, as
//! Table 1 does. The raw values carry both parts per sample; the ranks need the whole set, so
//! they are formed in [`SampleScore::finish`]. They depend on the set, not on its batching or
//! order (permuting the set permutes the ranks). NFE: the first score's.

use super::{SampleScore, ScoreBatch, Scored};
use crate::error::{Error, Result};
use crate::metrics::rank::{combined_ranks, Score};
use crate::sampler::spec::SamplerSpec;

/// GU Table 1's combination of a generating score and a post-hoc one (module doc).
pub struct RankCombination<'a> {
    first: Box<dyn SampleScore + 'a>,
    second: Box<dyn SampleScore + 'a>,
    name: String,
}

impl<'a> RankCombination<'a> {
    /// `second` must score finished samples ([`SampleScore::post_hoc`]).
    pub fn new(
        first: Box<dyn SampleScore + 'a>,
        second: Box<dyn SampleScore + 'a>,
    ) -> Result<Self> {
        let name = format!("{}+{}", first.name(), second.name());
        if second.post_hoc().is_none() {
            return Err(Error::invalid(
                "rank combination",
                format!(
                    "`{}` cannot score the samples `{}` generates: the second score must depend on finished samples only (realism, rarity)",
                    second.name(),
                    first.name()
                ),
            ));
        }
        Ok(Self {
            first,
            second,
            name,
        })
    }
}

impl SampleScore for RankCombination<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        self.first.nfe(sampler)
    }

    fn components(&self) -> usize {
        self.first.components() + self.second.components()
    }

    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        let mut scored = self.first.score(batch)?;
        let post = self
            .second
            .post_hoc()
            .ok_or_else(|| Error::invalid(&self.name, "second score is not post-hoc"))?;
        let second = post.score_samples(&scored.samples)?;
        scored.raw.push(second);
        Ok(scored)
    }

    fn finish(&self, raw: &[Vec<f64>]) -> Result<Vec<f64>> {
        if raw.len() != self.components() {
            return Err(Error::invalid(
                &self.name,
                format!(
                    "{} raw components; expected {}",
                    raw.len(),
                    self.components()
                ),
            ));
        }
        let split = self.first.components();
        let a = self.first.finish(&raw[..split])?;
        let b = self.second.finish(&raw[split..])?;
        combined_ranks(
            &Score::lowest(self.first.name(), &a),
            &Score::lowest(self.second.name(), &b),
        )
    }
}
