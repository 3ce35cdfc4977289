//! BayesDiff's filtering score (Kou et al., ICLR 2024; GU's baseline, docs/released-code.md §3.3):
//! the last-layer Laplace posterior's ε variance propagated through the sampler
//! ([`crate::uq::bayesdiff`]: E[x_s] = √a E[x_t] + c E[ε_t], Var[x_s] = a Var[x_t] + 2√a c
//! Cov[x_t, ε_t] + c² Var[ε_t] for DDIM; the DPM-Solver-2 and DDPM analogues there), scored by the
//! per-image Σ_pixels Var[x₀] (BayesDiff's `var_sum`); lower = keep, as GU's comparison filters.
//! `bayesdiff.variance = "release"` ([`VarianceRule::Release`]) is the released estimator; the
//! default `total` is never negative.
//!
//! The samples are BayesDiff's own trajectory, which draws ε ~ N(μ, v) at uncertainty steps, so
//! they differ from the plain sampler's even with η = 0. Sampler conditions (the recursions'
//! own): DDIM with η = 0, or DDPM, ending at the last grid point (`sampler.final_step = "stop"`,
//! as BayesDiff and GU save x at t = 0) without x̂₀ clipping; or DPM-Solver-2 with r₁ = ½.
//! Monte-Carlo draws come from purpose [`BAYESDIFF`](super::BAYESDIFF), stream = sample index,
//! position = sampler step.
//!
//! NFE per sample, with S the propagation steps (DDIM/DDPM: grid points − 1; DPM-Solver-2:
//! `steps`), M = `bayesdiff.mc`, U = ⌊(S − 1)/every⌋ uncertainty steps after the first:
//! DDIM/DDPM 1 + (S − 1) + M·U; DPM-Solver-2 1 + S + (S − 1) + 2M·U, plus, for the first step, M
//! under `total` (its midpoint draws) or 1 under `release` (the released midpoint with the mean ε).
//! 139 and 131 for BayesDiff's defaults under `release`.

use super::{SampleScore, ScoreBatch, Scored, BAYESDIFF};
use crate::error::{Error, Result, TensorContext};
use crate::sampler::spec::{SamplerKind, SamplerSpec};
use crate::sampler::FinalStep;
use crate::schedule::{continuous_grid, grid, NoiseSchedule};
use crate::uq::bayesdiff::{self, BayesDiffSpec, Llla, VarianceRule};
use crate::uq::laplace::DiagPosterior;

/// BayesDiff's Σ Var[x₀] (module doc).
pub struct BayesDiffScore<'a> {
    pub posterior: &'a DiagPosterior,
    pub spec: BayesDiffSpec,
    name: String,
}

enum Plan {
    Ddim(Vec<usize>),
    Ddpm(Vec<usize>),
    Dpm2(Vec<f64>),
}

impl<'a> BayesDiffScore<'a> {
    pub fn new(posterior: &'a DiagPosterior, spec: BayesDiffSpec) -> Result<Self> {
        spec.validate()?;
        let name = match spec.variance {
            VarianceRule::Total => "bayesdiff",
            VarianceRule::Release => "bayesdiff-release",
        };
        Ok(Self {
            posterior,
            spec,
            name: name.into(),
        })
    }

    /// The recursion and grid for `sampler`, or the key that rules it out.
    fn check(sampler: &SamplerSpec) -> Result<()> {
        let bad = |key: &str, reason: String| Err(Error::invalid(key, reason));
        match sampler.name {
            SamplerKind::Ddim | SamplerKind::Ddpm => {
                if sampler.name == SamplerKind::Ddim && sampler.eta != 0.0 {
                    return bad(
                        "sampler.eta",
                        format!(
                            "BayesDiff propagates deterministic DDIM: expected 0, got {}",
                            sampler.eta
                        ),
                    );
                }
                if sampler.final_step != FinalStep::Stop {
                    return bad(
                        "sampler.final_step",
                        "BayesDiff's recursion ends at the last grid point: expected \"stop\""
                            .into(),
                    );
                }
                if sampler.clip_sample {
                    return bad(
                        "sampler.clip_sample",
                        "BayesDiff's recursion is affine in x and ε: expected false (no x̂₀ clipping)"
                            .into(),
                    );
                }
                Ok(())
            }
            SamplerKind::DpmSolver2 if sampler.r1 != 0.5 => bad(
                "sampler.r1",
                format!(
                    "BayesDiff's DPM-Solver-2 recursion needs r1 = 0.5, got {}",
                    sampler.r1
                ),
            ),
            SamplerKind::DpmSolver2 => Ok(()),
            SamplerKind::DpmSolverPp2m | SamplerKind::Euler | SamplerKind::Dopri5 => bad(
                "sampler.name",
                format!(
                    "BayesDiff has recursions for ddim, ddpm and dpm-solver-2, not {}",
                    serde_json::to_string(&sampler.name)
                        .unwrap_or_default()
                        .trim_matches('"')
                ),
            ),
        }
    }

    fn plan(sampler: &SamplerSpec, schedule: &NoiseSchedule) -> Result<Plan> {
        Self::check(sampler)?;
        let discrete = || {
            grid(
                sampler.spacing,
                schedule.len(),
                sampler.steps,
                sampler.steps_offset,
            )
        };
        Ok(match sampler.name {
            SamplerKind::Ddim => Plan::Ddim(discrete()),
            SamplerKind::Ddpm => Plan::Ddpm(discrete()),
            _ => Plan::Dpm2(continuous_grid(
                sampler.continuous_spacing,
                schedule,
                sampler.steps,
            )),
        })
    }
}

impl SampleScore for BayesDiffScore<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn nfe(&self, sampler: &SamplerSpec) -> Result<usize> {
        Self::check(sampler)?;
        let (m, every) = (self.spec.mc, self.spec.every);
        Ok(match sampler.name {
            SamplerKind::DpmSolver2 => {
                let s = sampler.steps.max(1);
                // The first step: M midpoint draws (`total`) or the release's one evaluation at
                // the mean-ε midpoint (`release`).
                let first = match self.spec.variance {
                    VarianceRule::Total => m,
                    VarianceRule::Release => 1,
                };
                1 + s + (s - 1) + first + 2 * m * ((s - 1) / every)
            }
            _ => {
                let s = sampler.steps.saturating_sub(1);
                1 + s.saturating_sub(1) + m * (s.saturating_sub(1) / every)
            }
        })
    }

    fn score(&self, batch: &ScoreBatch<'_>) -> Result<Scored> {
        batch.validate()?;
        let plan = Self::plan(batch.sampler, batch.schedule)?;
        let llla = Llla {
            model: batch.net,
            posterior: self.posterior,
        };
        let purpose = batch.purpose(BAYESDIFF);
        let (spec, s, x, idx) = (&self.spec, batch.schedule, batch.x_t, batch.indices);
        let out = match plan {
            Plan::Ddim(g) => bayesdiff::ddim(&llla, s, &g, x, spec, &purpose, idx)?,
            Plan::Ddpm(g) => bayesdiff::ddpm(&llla, s, &g, x, spec, &purpose, idx)?,
            Plan::Dpm2(g) => bayesdiff::dpm_solver_2(&llla, s, &g, x, spec, &purpose, idx)?,
        };
        let samples = out
            .x0
            .to_dtype(batch.x_t.dtype())
            .ctx("BayesDiff samples")?;
        Ok(Scored::single(samples, out.score, out.nfe))
    }
}
