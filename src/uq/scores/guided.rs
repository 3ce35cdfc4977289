//! AU's uncertainty-guided sampling as a generator of samples (De Vita & Belagiannis, WACV 2025,
//! Alg. 2, Eq. 10; Table 3 compares the FID of N such samples with N plain ones from the same x_T).
//!
//! At every step of `guidance.window` the sampler's ε is replaced by
//! ε̂ = ε + λ · 1[U_t > τ_t] · ∂U/∂ε ([`crate::uq::guidance`]). With the paper's population
//! thresholds (Sec. 4.1: τ_t is the 95th percentile of the uncertainty over the whole generated
//! population) the score first needs a **calibration pass** over the whole set: the plain sampler
//! with Alg. 1 at the window's steps, every pixel's U_t of every sample gathered per step, τ_t their
//! p-quantile ([`population_threshold`]). The guided pass then reads τ_t by step. The re-noisings
//! come from purpose [`AU_RENOISE`](super::AU_RENOISE) in both passes, so the calibration's U_t
//! are exactly AU's filtering U_t on the plain trajectory.
//!
//! The raw value of a sample is Σ over guided steps and pixels of U_t on its guided trajectory
//! (reported, not used to filter: Table 3 keeps every sample). NFE per sample: the sampler's + M
//! per guided step (the paper's count; the calibration pass and the backward passes through the
//! network are not network evaluations of the generated sample and are timed, not counted).

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{Calibration, SampleScore, ScoreBatch, Scored, AU_RENOISE};
use crate::error::{Error, Result, TensorContext};
use crate::sampler::spec::SamplerSpec;
use crate::uq::au::AuObserver;
use crate::uq::guidance::{population_threshold, GuidanceSpec, Guided, Threshold};

/// Alg. 2 (module doc).
pub struct AuGuidedScore {
    pub spec: GuidanceSpec,
    /// U_t of every pixel of every calibration sample, by step (f32: half the memory; the
    /// quantile's interpolation runs in f64).
    gathered: RefCell<BTreeMap<usize, Vec<f32>>>,
    /// τ_t by step once calibrated.
    tau: RefCell<Option<Vec<Option<f64>>>>,
}

impl AuGuidedScore {
    pub fn new(spec: GuidanceSpec) -> Result<Self> {
        spec.au.validate()?;
        Ok(Self {
            spec,
            gathered: RefCell::default(),
            tau: RefCell::default(),
        })
    }

    /// τ_t by sampler step after calibration (`None` before, or under the per-image rule).
    pub fn thresholds(&self) -> Option<Vec<Option<f64>>> {
        self.tau.borrow().clone()
    }
}

impl SampleScore for AuGuidedScore {
    fn name(&self) -> &str {
        "au-guided"
    }

    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        self.spec.validate(sampler.observed_steps())?;
        Ok(super::sampler_nfe(sampler) + self.spec.au.m * self.spec.window.len)
    }

    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        batch.validate()?;
        self.spec.validate(batch.sampler.observed_steps())?;
        let tau = match self.spec.threshold {
            Threshold::PerImage => vec![],
            Threshold::Population => self.tau.borrow().clone().ok_or_else(|| {
                Error::invalid(
                    "guidance.threshold",
                    "\"population\": the calibration pass must run before guided sampling (a driver bug)",
                )
            })?,
        };
        let grid = batch.sampler.model_times(batch.schedule);
        let guided = Guided {
            inner: batch.net,
            schedule: batch.schedule,
            grid: &grid,
            spec: self.spec,
            purpose: batch.purpose(AU_RENOISE),
            indices: batch.indices,
            tau: &tau,
            extra_nfe: Default::default(),
            guided_pixels: Default::default(),
            u_sums: Default::default(),
        };
        let out = batch
            .sampler
            .sample(
                &guided,
                batch.schedule,
                batch.x_t.clone(),
                &batch.noise(),
                &mut crate::sampler::NoObserver,
            )
            .ctx("AU guidance: guided sampling (Alg. 2)")?;
        let mut values = guided.u_sums.into_inner();
        values.resize(batch.len(), 0.0);
        Ok(Scored::single(
            out.x0,
            values,
            out.nfe + guided.extra_nfe.get(),
        ))
    }

    fn calibration(&self) -> Option<&dyn Calibration> {
        (self.spec.threshold == Threshold::Population).then_some(self as &dyn Calibration)
    }
}

impl Calibration for AuGuidedScore {
    fn observe(&self, batch: &ScoreBatch<'_>) -> Result<()> {
        batch.validate()?;
        let mut obs = AuObserver::new(
            batch.net,
            batch.schedule,
            self.spec.au,
            batch.purpose(AU_RENOISE),
            batch.indices,
            self.spec.window,
        );
        obs.keep_step_maps = true;
        batch.sample(&mut obs, "AU guidance: calibration pass (τ_t)")?;
        let mut g = self.gathered.borrow_mut();
        for (step, u) in obs.step_maps {
            let v: Vec<f32> = u
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .ctx("AU guidance: calibration U_t")?;
            g.entry(step).or_default().extend(v);
        }
        Ok(())
    }

    fn finish(&self, steps: usize) -> Result<Vec<Option<f64>>> {
        let g = std::mem::take(&mut *self.gathered.borrow_mut());
        let mut tau = vec![None; steps];
        for (step, v) in g {
            let v: Vec<f64> = v.into_iter().map(f64::from).collect();
            if step < steps {
                tau[step] = population_threshold(&v, self.spec.percentile);
            }
        }
        *self.tau.borrow_mut() = Some(tau.clone());
        Ok(tau)
    }

    fn restore(&self, tau: Vec<Option<f64>>) {
        *self.tau.borrow_mut() = Some(tau);
    }
}
