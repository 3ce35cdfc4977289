//! One score interface for filtering generated samples (generate N samples from fixed x_T and
//! labels, score each, keep the K with the lowest score).
//!
//! A [`SampleScore`] is given one batch — the network bound to the batch's labels ([`Bound`]),
//! the noise schedule, the sampler spec, the initial noise x_T, the samples' global indices and
//! the run's [`SeedStreams`] ([`ScoreBatch`]) — and returns the generated samples **and** one raw
//! value per sample ([`Scored`]), with the network evaluations it spent. After every batch of a
//! set has been scored, [`SampleScore::finish`] turns the set's raw values into the final scores:
//! **lower = keep** for every score (realism, whose higher values are better, is negated). For
//! every score but a rank combination `finish` is the identity; a rank combination (GU Table 1)
//! ranks the whole set, so it alone needs the set.
//!
//! | score | type | what the raw value is | NFE per sample |
//! |---|---|---|---|
//! | random | [`RandomScore`] | a uniform draw from the sample's own stream | sampler |
//! | AU (Alg. 1, Eq. 8) | [`AuScore`] | Σ over window steps and pixels of U_t | sampler + M·window |
//! | MC-Dropout | [`McDropoutScore`] | Σ over window steps and pixels of Var_m ε | sampler + M·window |
//! | BayesDiff | [`BayesDiffScore`] | Σ_pixels Var[x₀] propagated | see [`BayesDiffScore`] |
//! | GU pixel / semantic (Alg. 1, Eq. 6–8) | [`GuScore`] | entropy of the moment-matched Gaussian | sampler + M · extra-sample sampler |
//! | realism | [`RealismScore`] | −R(φ(x₀)) against a reference set | sampler |
//! | rarity | [`RarityScore`] | rarity of φ(x₀) (+∞ outside every ball) | sampler |
//! | rank combination (GU Table 1) | [`RankCombination`] | both parts; finish = combined rank | the first part's |
//! | AU-guided samples (Alg. 2, Table 3) | [`AuGuidedScore`] | Σ over guided steps and pixels of U_t (its own, guided samples) | sampler + M·window |
//!
//! This module is glue: every number comes from [`crate::uq`] and [`crate::metrics`]; the
//! feature extractors (Inception, later MobileNetV2) are passed in as
//! [`FeatureExtractor`](crate::features::FeatureExtractor) trait objects, and their cost is not
//! counted in NFE (which counts diffusion-network evaluations only).
//!
//! **Randomness.** Every random number a score draws comes from a named purpose of the run's
//! [`SeedStreams`] (the constants below), positioned by the sample's global index and the sampler
//! step, so a sample's raw value and its generated image do not depend on the batch it is scored
//! in, its position there, or the other samples (tests/scores.rs checks this for every score) —
//! exactly, as far as the network computes each row independently of the others. (A network's
//! own floating-point results may depend on how many rows one call holds: the tiny diffusers UNet
//! of the tests moves a row by ~1e-6 once a call exceeds 4 rows, which AU's and BayesDiff's M·B-row
//! calls then show at that level.)
//! GU's posterior draws are the exception by design: M parameter sets shared by every sample of
//! the run (GU App. D), drawn from streams 0..M of [`GU_DRAWS`] — also batch-independent. The
//! sampler's own injected noise (DDPM, DDIM with η > 0) comes from [`SAMPLER_NOISE`] for every
//! score, so scores that leave the trajectory alone generate the same images from one x_T.

mod au;
mod bayesdiff;
mod fidelity;
mod gu;
mod guided;
mod mc_dropout;
mod random;
mod rank;

pub use au::AuScore;
pub use bayesdiff::BayesDiffScore;
pub use fidelity::{RarityScore, RealismScore};
pub use gu::GuScore;
pub use guided::AuGuidedScore;
pub use mc_dropout::McDropoutScore;
pub use random::RandomScore;
pub use rank::RankCombination;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result, TensorContext};
use crate::model::Bound;
use crate::sampler::spec::{SamplerKind, SamplerSpec};
use crate::sampler::{FinalStep, NoiseSource, Observer, SampleOutput};
use crate::schedule::NoiseSchedule;
use crate::seed::{Purpose, SeedStreams};

/// Purpose of the sampler's injected noise (shared by every score).
pub const SAMPLER_NOISE: &str = "sampler-noise";
/// Purpose of [`RandomScore`]'s draws.
pub const RANDOM: &str = "score/random";
/// Purpose of AU's re-noisings ξ_m.
pub const AU_RENOISE: &str = "score/au-renoise";
/// Purpose of MC-Dropout's keep-masks.
pub const MC_DROPOUT: &str = "score/mc-dropout";
/// Purpose of BayesDiff's Monte-Carlo draws.
pub const BAYESDIFF: &str = "score/bayesdiff";
/// Purpose of GU's M last-layer posterior draws (streams 0..M, shared by all samples).
pub const GU_DRAWS: &str = "score/gu-draws";

/// One batch to generate and score.
pub struct ScoreBatch<'a> {
    /// The network with this batch's labels bound (and the schedule, for x₀/v-prediction).
    pub net: &'a Bound<'a>,
    pub schedule: &'a NoiseSchedule,
    pub sampler: &'a SamplerSpec,
    /// Initial noise x_T, (B, …).
    pub x_t: &'a Tensor,
    /// The B samples' global indices: they key every per-sample stream.
    pub indices: &'a [u64],
    pub streams: SeedStreams,
}

impl ScoreBatch<'_> {
    /// Shapes agree (x_T, indices, labels) and the sampler spec is valid for the schedule.
    pub fn validate(&self) -> Result<()> {
        let dims = self.x_t.dims();
        if dims.len() < 2 || dims[0] == 0 {
            return Err(Error::invalid(
                "x_T",
                format!("shape {dims:?}; expected (batch ≥ 1, …) with at least 2 axes"),
            ));
        }
        let b = dims[0];
        if self.indices.len() != b {
            return Err(Error::invalid(
                "sample indices",
                format!("{} indices for x_T's batch of {b}", self.indices.len()),
            ));
        }
        if let Some(y) = &self.net.labels {
            if y.dims() != [b] {
                return Err(Error::invalid(
                    "labels",
                    format!(
                        "shape {:?}; expected ({b},), one class per sample",
                        y.dims()
                    ),
                ));
            }
        }
        if let Some(v) = self.sampler.violations(self.schedule.len()).first() {
            return Err(Error::invalid(&v.key, &v.reason));
        }
        Ok(())
    }

    /// The batch size B.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The sampler's injected noise for this batch: stream `indices[b]` of [`SAMPLER_NOISE`],
    /// shaped like x_T.
    pub fn noise(&self) -> BatchNoise<'_> {
        BatchNoise {
            purpose: self.streams.purpose(SAMPLER_NOISE),
            indices: self.indices,
            dims: self.x_t.dims()[1..].to_vec(),
            device: self.x_t.device(),
        }
    }

    /// The plain sampler from x_T with `observer` (what every score that leaves the trajectory
    /// alone generates).
    pub fn sample(&self, observer: &mut dyn Observer, what: &str) -> Result<SampleOutput> {
        self.sampler
            .sample(
                self.net,
                self.schedule,
                self.x_t.clone(),
                &self.noise(),
                observer,
            )
            .ctx(what)
    }

    /// The run's stream family `name`.
    pub fn purpose(&self, name: &str) -> Purpose {
        self.streams.purpose(name)
    }
}

/// Per-sample sampler noise shaped like one sample of x_T (the numbers of
/// [`crate::sampler::StreamNoise`], reshaped as [`crate::sampler::ImageNoise`] does).
pub struct BatchNoise<'a> {
    purpose: Purpose,
    indices: &'a [u64],
    dims: Vec<usize>,
    device: &'a Device,
}

impl NoiseSource for BatchNoise<'_> {
    fn noise(&self, step: u32) -> candle_core::Result<Tensor> {
        let f: usize = self.dims.iter().product();
        let mut shape = vec![self.indices.len()];
        shape.extend_from_slice(&self.dims);
        Tensor::from_vec(
            self.purpose.normals(self.indices, Some(step), f),
            shape,
            self.device,
        )
    }
}

/// What a score returns for one batch.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The generated samples x₀ (B, …): what a filter keeps or drops.
    pub samples: Tensor,
    /// Raw per-sample values: one column per component of the score (one, except for a rank
    /// combination), each of length B.
    pub raw: Vec<Vec<f64>>,
    /// Diffusion-network evaluations per sample.
    pub nfe: usize,
}

impl Scored {
    /// A one-component result.
    pub fn single(samples: Tensor, scores: Vec<f64>, nfe: usize) -> Self {
        Self {
            samples,
            raw: vec![scores],
            nfe,
        }
    }
}

/// A set's raw values, gathered batch after batch in the set's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawScores(pub Vec<Vec<f64>>);

impl RawScores {
    /// Append one batch's values.
    pub fn push(&mut self, scored: &Scored) -> Result<()> {
        if self.0.is_empty() {
            self.0 = vec![vec![]; scored.raw.len()];
        }
        if self.0.len() != scored.raw.len() {
            return Err(Error::invalid(
                "raw scores",
                format!(
                    "a batch with {} components after batches with {}",
                    scored.raw.len(),
                    self.0.len()
                ),
            ));
        }
        for (all, part) in self.0.iter_mut().zip(&scored.raw) {
            all.extend_from_slice(part);
        }
        Ok(())
    }
}

/// A per-sample score for filtering (module doc).
pub trait SampleScore {
    /// A short name for tables and messages (`au`, `gu-semantic(inception)`, …).
    fn name(&self) -> &str;

    /// Diffusion-network evaluations per sample when generating with `sampler` — what
    /// [`SampleScore::score`] will report as [`Scored::nfe`]; an error naming the key when the
    /// score cannot run with that sampler.
    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize>;

    /// Generate the batch and its raw per-sample values.
    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored>;

    /// Number of raw components per sample.
    fn components(&self) -> usize {
        1
    }

    /// The final scores (lower = keep) of a whole set from its raw values (one column per
    /// component, each with one value per sample of the set). The identity by default.
    fn finish(&self, raw: &[Vec<f64>]) -> Result<Vec<f64>> {
        match raw {
            [one] => Ok(one.clone()),
            _ => Err(Error::invalid(
                self.name(),
                format!("{} raw components; expected 1", raw.len()),
            )),
        }
    }

    /// The score as a function of finished samples alone (realism, rarity), for combining it
    /// with a score that generates; `None` for scores that need the sampling process.
    fn post_hoc(&self) -> Option<&dyn PostHocScore> {
        None
    }

    /// A pass over every batch of the set that must precede scoring (AU guidance's population
    /// thresholds τ_t); `None` for scores that need none.
    fn calibration(&self) -> Option<&dyn Calibration> {
        None
    }
}

/// A pass over a whole set before a score can generate any of it (module doc of
/// [`AuGuidedScore`]): the driver calls [`Calibration::observe`] on every batch in order, then
/// [`Calibration::finish`]; a driver that kept the result may [`Calibration::restore`] it instead.
pub trait Calibration {
    /// Observe one batch (the plain sampler from the batch's x_T).
    fn observe(&self, batch: &ScoreBatch<'_>) -> Result<()>;
    /// The calibrated values by sampler step (`steps` observed steps), now in force.
    fn finish(&self, steps: usize) -> Result<Vec<Option<f64>>>;
    /// Put values from an earlier calibration in force.
    fn restore(&self, values: Vec<Option<f64>>);
}

/// A score computed from finished samples alone.
pub trait PostHocScore {
    /// Raw values (lower = keep) of `samples` (B, …).
    fn score_samples(&self, samples: &Tensor) -> Result<Vec<f64>>;
}

/// Network evaluations per sample of one run of `spec`: DDPM/DDIM one per grid point (one fewer
/// with `final_step = "stop"`), DPM-Solver-2 two per step, DPM-Solver++(2M) one per step.
pub fn sampler_nfe(spec: &SamplerSpec) -> usize {
    match spec.name {
        SamplerKind::Ddpm | SamplerKind::Ddim => match spec.final_step {
            FinalStep::Stop => spec.steps.saturating_sub(1),
            _ => spec.steps,
        },
        SamplerKind::DpmSolver2 => 2 * spec.steps,
        SamplerKind::DpmSolverPp2m | SamplerKind::Euler => spec.steps,
        // Adaptive: known only after it ran (generating scores report what they spent).
        SamplerKind::Dopri5 => 0,
    }
}

/// Σ over all but the first axis of `u` (B, …), per sample, in f64.
pub(crate) fn per_sample_sums(u: &Tensor) -> candle_core::Result<Vec<f64>> {
    let b = u.dim(0)?;
    u.reshape((b, ()))?
        .to_dtype(candle_core::DType::F64)?
        .sum(1)?
        .to_vec1::<f64>()
}
