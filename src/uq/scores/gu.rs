//! GU's generative uncertainty (Jazbec et al. 2025, Alg. 1) as a filtering score: the MAP model
//! (the pretrained network) samples x₀ from x_T; each of M last-layer Laplace posterior draws
//! θ_m samples from the **same** x_T with the same injected noise; the outputs go through φ and
//! the score is the entropy of the moment-matched diagonal Gaussian of the mixture
//! (1/M) Σ_m N(φ(x_m), γ I) — [`crate::uq::gu::generate`]. Lower = keep (GU Sec. 4.2 keeps the
//! lowest uncertainty).
//!
//! - **pixel** ([`GuScore::pixel`]): φ = identity, the pixel likelihood of Eq. 6;
//! - **semantic** ([`GuScore::semantic`]): φ a pretrained feature extractor passed in as a trait
//!   object (GU uses CLIP; Inception now, MobileNetV2 later), the semantic likelihood of Eq. 7
//!   and the predictive of Eq. 8.
//!
//! The M parameter sets are shared by every sample of the run, as in GU's release (App. D: "the
//! same set of model weights is used for all 12K samples"): streams 0..M of purpose
//! [`GU_DRAWS`](super::GU_DRAWS). With `gu.include_map` the MAP sample is one of the mixture's
//! members (the release's 1 + M). NFE per sample: the sampler's for the MAP sample, plus M times
//! the extra-sample sampler's (`gu.sampler`, which GU Fig. 6 shortens), plus one more run of it
//! when `gu.rerun_map` re-samples the MAP member with a different `gu.sampler` (the paper reuses
//! the MAP sample: M·T′ extra NFE). Feature extraction is not
//! counted.
//!
//! The returned samples are the MAP model's, computed (as in [`crate::uq::gu::generate`]) with the
//! MAP last layer applied as a matrix product over the network's last-layer features: the plain
//! sampler's images up to f32 rounding (≈ 1e-6 relative on the test UNet), not bit for bit.

use super::{sampler_nfe, SampleScore, ScoreBatch, Scored, GU_DRAWS};
use crate::error::Result;
use crate::features::{FeatureExtractor, Identity};
use crate::sampler::spec::SamplerSpec;
use crate::uq::gu::{self, GuSpec};
use crate::uq::laplace::DiagPosterior;

/// GU Alg. 1 with a pixel or semantic likelihood (module doc).
pub struct GuScore<'a> {
    pub posterior: &'a DiagPosterior,
    pub spec: GuSpec,
    pub features: &'a dyn FeatureExtractor,
    name: String,
}

impl<'a> GuScore<'a> {
    /// Pixel likelihood (Eq. 6): `spec.gamma2` is γ² per pixel.
    pub fn pixel(posterior: &'a DiagPosterior, spec: GuSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            posterior,
            spec,
            features: &Identity,
            name: "gu-pixel".into(),
        })
    }

    /// Semantic likelihood (Eq. 7) over `features`' outputs; `spec.gamma2` is GU's γ (1e-3).
    pub fn semantic(
        posterior: &'a DiagPosterior,
        spec: GuSpec,
        features: &'a dyn FeatureExtractor,
    ) -> Result<Self> {
        spec.validate()?;
        let name = format!("gu-semantic({})", features.id());
        Ok(Self {
            posterior,
            spec,
            features,
            name,
        })
    }
}

impl SampleScore for GuScore<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        let extra = sampler_nfe(&self.spec.sampler);
        let map_rerun =
            self.spec.include_map && self.spec.rerun_map && self.spec.sampler != *sampler;
        Ok(sampler_nfe(sampler) + (self.spec.m + usize::from(map_rerun)) * extra)
    }

    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        batch.validate()?;
        let out = gu::generate(
            batch.net,
            self.posterior,
            batch.schedule,
            batch.sampler,
            &self.spec,
            batch.x_t,
            &batch.noise(),
            self.features,
            &batch.purpose(GU_DRAWS),
        )?;
        Ok(Scored::single(out.samples, out.entropy, out.nfe))
    }
}
