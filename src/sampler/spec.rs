//! The `[sampler]` table of an experiment: which sampler, on which grid, with which conventions —
//! every convention that moves numbers is a key (see docs/released-code.md §4).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{ddim, ddpm, dpm_solver, dpm_solver_2, flow, FinalStep, NoiseSource, Observer};
use super::{SampleOutput, StepRules};
use crate::config::{check, Violation};
use crate::model::Denoiser;
use crate::schedule::{continuous_grid, grid, ContinuousSpacing, NoiseSchedule, Spacing};

/// Sampler names (config key `sampler.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Ancestral DDPM ([`ddpm`]).
    Ddpm,
    /// DDIM with `eta` ([`ddim`]).
    Ddim,
    /// Single-step DPM-Solver-2 in continuous time ([`dpm_solver_2`]); `steps` counts its
    /// two-evaluation steps.
    #[serde(rename = "dpm-solver-2")]
    DpmSolver2,
    /// DPM-Solver++(2M) multistep, as diffusers ([`dpm_solver`]).
    DpmSolverPp2m,
    /// Flow matching: explicit Euler on `steps` uniform flow-time steps from 1 to 0
    /// ([`flow::euler`]); velocity models only.
    Euler,
    /// Flow matching: adaptive Dormand–Prince 5(4) from t = 1 to 0 ([`flow::dopri5`], torchdiffeq's
    /// defaults unless `rtol`/`atol` are set; GU App. C.7's solver); `steps` is unused.
    Dopri5,
}

impl SamplerKind {
    /// Whether this sampler integrates a flow velocity (Euler, dopri5) rather than an ε.
    pub fn is_flow(self) -> bool {
        matches!(self, SamplerKind::Euler | SamplerKind::Dopri5)
    }
}

/// `[sampler]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    pub name: SamplerKind,
    pub steps: usize,
    /// DDIM stochasticity η (0 = deterministic; 1 = DDPM's posterior variance).
    pub eta: f64,
    /// Discrete grid spacing (DDPM, DDIM, DPM++): leading | trailing | linspace.
    pub spacing: Spacing,
    pub steps_offset: usize,
    /// DPM-Solver-2's grid: time-uniform | log-snr.
    pub continuous_spacing: ContinuousSpacing,
    /// DPM-Solver-2's intermediate ratio r₁ (½ in GU and BayesDiff).
    pub r1: f64,
    pub final_step: FinalStep,
    /// Clip x̂₀ to [−clip_range, clip_range] (diffusers' `clip_sample`).
    pub clip_sample: bool,
    pub clip_range: f64,
    /// dopri5's relative / absolute tolerances (absent: torchdiffeq's 1e-7 / 1e-9). Left out of
    /// the resolved configuration when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atol: Option<f64>,
}

/// A [`Denoiser`]'s velocity as the flow samplers' [`flow::VelocityField`].
struct AsVelocity<'a>(&'a dyn Denoiser);

impl flow::VelocityField for AsVelocity<'_> {
    fn velocity(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        self.0.velocity(x, t)
    }
}

impl SamplerSpec {
    /// Violations of this table's keys, prefixed with `sampler.`; `timesteps` is T.
    pub fn violations(&self, timesteps: usize) -> Vec<Violation> {
        let mut v = vec![];
        check(&mut v, self.steps >= 1, "sampler.steps", "must be ≥ 1");
        check(
            &mut v,
            self.steps <= timesteps,
            "sampler.steps",
            "must not exceed diffusion.timesteps",
        );
        check(
            &mut v,
            self.eta.is_finite() && self.eta >= 0.0,
            "sampler.eta",
            "must be finite and ≥ 0",
        );
        check(
            &mut v,
            self.r1 > 0.0 && self.r1 <= 1.0,
            "sampler.r1",
            "must lie in (0, 1]",
        );
        check(
            &mut v,
            self.clip_range > 0.0,
            "sampler.clip_range",
            "must be > 0",
        );
        check(
            &mut v,
            self.name != SamplerKind::DpmSolverPp2m || self.final_step == FinalStep::AlphaOne,
            "sampler.final_step",
            "DPM-Solver++(2M) ends at σ = 0 (alpha-one) as diffusers does",
        );
        v
    }

    fn rules(&self) -> StepRules {
        StepRules {
            clip_sample: self.clip_sample.then_some(self.clip_range),
            final_step: self.final_step,
        }
    }

    /// The model times at which the sampler's observed steps evaluate the denoiser, in order
    /// (step i of an observer is entry i).
    pub fn model_times(&self, schedule: &NoiseSchedule) -> Vec<f64> {
        match self.name {
            SamplerKind::Euler => {
                let mut g = flow::uniform_grid(self.steps);
                g.pop();
                g
            }
            // Adaptive: its steps are not known before it runs.
            SamplerKind::Dopri5 => vec![],
            SamplerKind::DpmSolver2 => {
                let mut g = continuous_grid(self.continuous_spacing, schedule, self.steps);
                g.pop();
                g
            }
            _ => self
                .discrete_grid(schedule)
                .iter()
                .map(|&t| t as f64)
                .collect(),
        }
    }

    fn discrete_grid(&self, schedule: &NoiseSchedule) -> Vec<usize> {
        grid(self.spacing, schedule.len(), self.steps, self.steps_offset)
    }

    /// Number of observed steps (observer step indices run over 0..this).
    pub fn observed_steps(&self) -> usize {
        match (self.name, self.final_step) {
            (SamplerKind::Dopri5, _) => 0,
            (SamplerKind::Euler, _) => self.steps,
            (SamplerKind::Ddpm | SamplerKind::Ddim, FinalStep::Stop) => self.steps - 1,
            _ => self.steps,
        }
    }

    /// The index of the first observed step whose model time is ≤ `t` (where a trajectory that
    /// starts at noise level t joins the grid); `None` when every step lies above t.
    pub fn start_index(&self, schedule: &NoiseSchedule, t: f64) -> Option<usize> {
        self.model_times(schedule).iter().position(|&g| g <= t)
    }

    /// Run the grid from its observed step `start` on, from `x` at that step's time (AU Table 2's
    /// "noise to T/2, then denoise"); the observer sees steps 0, 1, … of the shortened grid.
    /// `start = 0` is [`SamplerSpec::sample`].
    pub fn sample_from(
        &self,
        denoiser: &dyn Denoiser,
        schedule: &NoiseSchedule,
        start: usize,
        x: Tensor,
        noise: &dyn NoiseSource,
        observer: &mut dyn Observer,
    ) -> candle_core::Result<SampleOutput> {
        let rules = self.rules();
        let cut = |n: usize| -> candle_core::Result<usize> {
            if start + 1 >= n {
                candle_core::bail!(
                    "sampler: start step {start} leaves no step of the {n}-point grid to run"
                )
            }
            Ok(start)
        };
        match self.name {
            SamplerKind::Ddpm | SamplerKind::Ddim | SamplerKind::DpmSolverPp2m => {
                let g = self.discrete_grid(schedule);
                let g = &g[cut(g.len())?..];
                match self.name {
                    SamplerKind::Ddpm => {
                        ddpm::sample(denoiser, schedule, g, &rules, x, noise, observer)
                    }
                    SamplerKind::Ddim => {
                        ddim::sample(denoiser, schedule, g, self.eta, &rules, x, noise, observer)
                    }
                    _ => dpm_solver::sample_2m(denoiser, schedule, g, x, observer),
                }
            }
            SamplerKind::DpmSolver2 => {
                let g = continuous_grid(self.continuous_spacing, schedule, self.steps);
                let g = &g[cut(g.len())?..];
                dpm_solver_2::sample(denoiser, schedule, g, self.r1, x, observer)
            }
            SamplerKind::Euler => {
                let g = flow::uniform_grid(self.steps);
                let g = &g[cut(g.len())?..];
                flow::euler(&AsVelocity(denoiser), x, g, observer)
            }
            SamplerKind::Dopri5 => {
                candle_core::bail!("sampler: dopri5 is adaptive and has no grid step to start from")
            }
        }
    }

    /// The decreasing integer grid of a discrete sampler (DDPM, DDIM, DPM++).
    pub fn integer_grid(&self, schedule: &NoiseSchedule) -> Vec<usize> {
        self.discrete_grid(schedule)
    }

    /// Run from `x_t`.
    pub fn sample(
        &self,
        denoiser: &dyn Denoiser,
        schedule: &NoiseSchedule,
        x_t: Tensor,
        noise: &dyn NoiseSource,
        observer: &mut dyn Observer,
    ) -> candle_core::Result<SampleOutput> {
        let rules = self.rules();
        match self.name {
            SamplerKind::Ddpm => ddpm::sample(
                denoiser,
                schedule,
                &self.discrete_grid(schedule),
                &rules,
                x_t,
                noise,
                observer,
            ),
            SamplerKind::Ddim => ddim::sample(
                denoiser,
                schedule,
                &self.discrete_grid(schedule),
                self.eta,
                &rules,
                x_t,
                noise,
                observer,
            ),
            SamplerKind::DpmSolver2 => dpm_solver_2::sample(
                denoiser,
                schedule,
                &continuous_grid(self.continuous_spacing, schedule, self.steps),
                self.r1,
                x_t,
                observer,
            ),
            SamplerKind::DpmSolverPp2m => dpm_solver::sample_2m(
                denoiser,
                schedule,
                &self.discrete_grid(schedule),
                x_t,
                observer,
            ),
            SamplerKind::Euler => flow::euler(
                &AsVelocity(denoiser),
                x_t,
                &flow::uniform_grid(self.steps),
                observer,
            ),
            SamplerKind::Dopri5 => {
                flow::dopri5(&AsVelocity(denoiser), x_t, &self.dopri5_options(), observer)
                    .map_err(candle_core::Error::wrap)
            }
        }
    }

    /// dopri5's options: torchdiffeq's defaults with the configured tolerances.
    pub fn dopri5_options(&self) -> flow::Dopri5Options {
        let d = flow::Dopri5Options::default();
        flow::Dopri5Options {
            rtol: self.rtol.unwrap_or(d.rtol),
            atol: self.atol.unwrap_or(d.atol),
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gmm::{Component, GaussianMixture};
    use crate::sampler::{NoObserver, StepView};
    use crate::schedule::ScheduleKind;
    use candle_core::Device;

    fn ddim(steps: usize) -> SamplerSpec {
        SamplerSpec {
            name: SamplerKind::Ddim,
            steps,
            eta: 0.0,
            spacing: Spacing::Leading,
            steps_offset: 0,
            continuous_spacing: ContinuousSpacing::TimeUniform,
            r1: 0.5,
            final_step: FinalStep::AlphaOne,
            clip_sample: true,
            clip_range: 1.0,
            rtol: None,
            atol: None,
        }
    }

    struct Keep(usize, Option<Tensor>);
    impl Observer for Keep {
        fn on_step(&mut self, v: &StepView<'_>) -> candle_core::Result<()> {
            if v.step == self.0 {
                self.1 = Some(v.x_t.clone());
            }
            Ok(())
        }
    }
    struct NoNoise;
    impl NoiseSource for NoNoise {
        fn noise(&self, _: u32) -> candle_core::Result<Tensor> {
            candle_core::bail!("deterministic")
        }
    }

    #[test]
    fn sample_from_continues_the_full_trajectory_exactly() {
        // Expected values: diffuq's own full-grid DDIM run (no reference library): starting the
        // shortened grid from the full run's x at step k must reproduce its x₀ bit for bit, and
        // the leading 50-step grid (980, 960, …, 0) reaches t = T/2 = 500 at step 24.
        let s = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        let g = GaussianMixture::new(
            vec![Component {
                weight: 1.0,
                mean: vec![0.3, -0.4, 0.1],
                std: 0.3,
            }],
            s.clone(),
        )
        .unwrap();
        let spec = ddim(50);
        assert_eq!(spec.start_index(&s, 500.0), Some(24));
        assert_eq!(spec.start_index(&s, 510.0), Some(24));
        assert_eq!(spec.start_index(&s, -1.0), None);
        let x = Tensor::from_vec(
            vec![0.5f64, -1.2, 0.8, 1.1, 0.0, -0.3],
            (2, 3),
            &Device::Cpu,
        )
        .unwrap();
        let mut keep = Keep(24, None);
        let full = spec.sample(&g, &s, x, &NoNoise, &mut keep).unwrap();
        let mid = keep.1.unwrap();
        let part = spec
            .sample_from(&g, &s, 24, mid, &NoNoise, &mut NoObserver)
            .unwrap();
        let a: Vec<f64> = full.x0.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f64> = part.x0.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
        assert_eq!(part.nfe, full.nfe - 24);
        let e = spec
            .sample_from(&g, &s, 50, part.x0, &NoNoise, &mut NoObserver)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("start step 50"), "{e}");
    }
}
