//! Scores from a sample's distance to a reference set in a feature space (GU App. C.5 and D:
//! Inception features of 50K ImageNet training images), computed by [`crate::metrics`] from the
//! features φ(x₀) of the plain sampler's output:
//!
//! - [`RealismScore`]: −R(φ(x₀)), R = max_i r_i/(d(φ, φ_i) + eps) the realism of Kynkäänniemi
//!   et al. 2019, Sec. 5 ([`crate::metrics::realism`]); negated so that lower = keep (GU keeps the
//!   highest realism). The variant is an option:
//!   [`RealismVariant::GuRelease`](crate::metrics::realism::RealismVariant::GuRelease) (squared distances,
//!   eps 1e-5, no pruning) is what GU's evaluation computes, `Paper` the printed formula.
//! - [`RarityScore`]: min { r_i : d(φ, φ_i) < r_i } of Han et al. 2023 ([`crate::metrics::rarity`]),
//!   +∞ for a sample outside every real k-NN ball (GU App. D), kept last.
//!
//! Both depend on finished samples only, so they also score samples another score generated
//! ([`super::PostHocScore`], used by [`super::RankCombination`]). The reference set's k-NN radii
//! are computed once, in the [`RealManifold`] the caller builds. NFE: the sampler's.

use candle_core::Tensor;

use super::{sampler_nfe, PostHocScore, SampleScore, ScoreBatch, Scored};
use crate::error::{Error, Result, TensorContext};
use crate::features::FeatureExtractor;
use crate::metrics::realism::{rows_from_tensor, RealManifold, RealismOptions, Rows};
use crate::sampler::spec::SamplerSpec;
use crate::sampler::NoObserver;

/// φ(x₀) as f64 rows.
fn features(extractor: &dyn FeatureExtractor, samples: &Tensor) -> Result<(Vec<f64>, usize)> {
    let f = extractor
        .features(samples)
        .ctx("feature extraction of generated samples")?;
    rows_from_tensor("generated features", &f)
}

/// Negated realism against a reference manifold (module doc).
pub struct RealismScore<'a> {
    pub manifold: &'a RealManifold<'a>,
    pub features: &'a dyn FeatureExtractor,
    pub options: RealismOptions,
    name: String,
}

impl<'a> RealismScore<'a> {
    /// `options.k` must be the k the manifold's radii were computed with (e.g.
    /// `RealismVariant::GuRelease.options(manifold.k())`).
    pub fn new(
        manifold: &'a RealManifold<'a>,
        features: &'a dyn FeatureExtractor,
        options: RealismOptions,
    ) -> Result<Self> {
        if options.k != manifold.k() {
            return Err(Error::invalid(
                "realism k",
                format!(
                    "{} differs from the k = {} of the reference radii",
                    options.k,
                    manifold.k()
                ),
            ));
        }
        Ok(Self {
            manifold,
            features,
            options,
            name: format!("realism({})", features.id()),
        })
    }
}

impl PostHocScore for RealismScore<'_> {
    fn score_samples(&self, samples: &Tensor) -> Result<Vec<f64>> {
        let (v, d) = features(self.features, samples)?;
        let r = self.manifold.realism(Rows::new(&v, d), &self.options)?;
        Ok(r.into_iter().map(|r| -r).collect())
    }
}

impl SampleScore for RealismScore<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        Ok(sampler_nfe(sampler))
    }
    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        batch.validate()?;
        let out = batch.sample(&mut NoObserver, "realism score: sampling")?;
        let s = self.score_samples(&out.x0)?;
        Ok(Scored::single(out.x0, s, out.nfe))
    }
    fn post_hoc(&self) -> Option<&dyn PostHocScore> {
        Some(self)
    }
}

/// Rarity against a reference manifold (module doc).
pub struct RarityScore<'a> {
    pub manifold: &'a RealManifold<'a>,
    pub features: &'a dyn FeatureExtractor,
    name: String,
}

impl<'a> RarityScore<'a> {
    /// Rarity with the manifold's k (Han et al. and GU: 3).
    pub fn new(manifold: &'a RealManifold<'a>, features: &'a dyn FeatureExtractor) -> Self {
        Self {
            manifold,
            features,
            name: format!("rarity({})", features.id()),
        }
    }
}

impl PostHocScore for RarityScore<'_> {
    fn score_samples(&self, samples: &Tensor) -> Result<Vec<f64>> {
        let (v, d) = features(self.features, samples)?;
        self.manifold.rarity(Rows::new(&v, d))
    }
}

impl SampleScore for RarityScore<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        Ok(sampler_nfe(sampler))
    }
    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        batch.validate()?;
        let out = batch.sample(&mut NoObserver, "rarity score: sampling")?;
        let s = self.score_samples(&out.x0)?;
        Ok(Scored::single(out.x0, s, out.nfe))
    }
    fn post_hoc(&self) -> Option<&dyn PostHocScore> {
        Some(self)
    }
}
