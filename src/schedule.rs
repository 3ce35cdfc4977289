//! Noise schedules and timestep grids (DDPM discrete time).
//!
//! β schedule → α_t = 1 − β_t → ᾱ_t = ∏_{s≤t} α_s (Ho et al. 2020, Eq. 4: q(x_t|x_0) =
//! N(√ᾱ_t x_0, (1 − ᾱ_t) I)). Schedules and timestep spacings follow diffusers' definitions, with
//! the cosine schedule computed in real arithmetic: candle-transformers 0.11's `SquaredcosCapV2`
//! (`betas_for_alpha_bar` in its stable-diffusion schedulers) forms the times i/T and (i+1)/T by
//! integer division, so every β but the last is 0 and ᾱ stays 1 until the last step.

use serde::{Deserialize, Serialize};

/// Which β schedule (config key `diffusion.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// β_t linear in t from `beta_start` to `beta_end` (Ho et al. 2020: 1e-4 → 0.02, T = 1000).
    Linear,
    /// √β_t linear in t (Stable Diffusion's "scaled_linear": 0.00085 → 0.012).
    ScaledLinear,
    /// Nichol & Dhariwal (2021) Eq. 17: ᾱ(τ) = cos²((τ + 0.008)/1.008 · π/2), β_i =
    /// min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999) (diffusers' `squaredcos_cap_v2`); ignores beta_start/end.
    Cosine,
}

/// A discrete-time variance-preserving schedule, kept in f64 (ᾱ near 0 loses digits in f32).
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(kind: ScheduleKind, beta_start: f64, beta_end: f64, timesteps: usize) -> Self {
        let frac = |i: usize| {
            if timesteps > 1 {
                i as f64 / (timesteps - 1) as f64
            } else {
                0.0
            }
        };
        let betas: Vec<f64> = match kind {
            ScheduleKind::Linear => (0..timesteps)
                .map(|i| beta_start + frac(i) * (beta_end - beta_start))
                .collect(),
            ScheduleKind::ScaledLinear => {
                let (a, b) = (beta_start.sqrt(), beta_end.sqrt());
                (0..timesteps)
                    .map(|i| (a + frac(i) * (b - a)).powi(2))
                    .collect()
            }
            ScheduleKind::Cosine => {
                let ab = |tau: f64| {
                    ((tau + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                let n = timesteps as f64;
                (0..timesteps)
                    .map(|i| (1.0 - ab((i + 1) as f64 / n) / ab(i as f64 / n)).min(0.999))
                    .collect()
            }
        };
        Self::from_betas(betas)
    }

    /// A schedule from given β_t (diffusers' `trained_betas`; AU wraps ADM's cosine β this way).
    /// ᾱ is their running product in f64.
    pub fn from_betas(betas: Vec<f64>) -> Self {
        let mut acc = 1.0;
        let alpha_bars = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Self { betas, alpha_bars }
    }

    /// A schedule from given ᾱ_t, e.g. a reference library's own float32 `alphas_cumprod`, so that
    /// a sampler can be compared with it free of the schedule's rounding; β_t = 1 − ᾱ_t/ᾱ_{t−1}.
    pub fn from_alpha_bars(alpha_bars: Vec<f64>) -> Self {
        let betas = alpha_bars
            .iter()
            .enumerate()
            .map(|(i, a)| 1.0 - a / if i == 0 { 1.0 } else { alpha_bars[i - 1] })
            .collect();
        Self { betas, alpha_bars }
    }

    /// Number of training timesteps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    /// ᾱ_t for t in 0..T; `None` means "before step 0", where ᾱ = 1 (diffusers' `one`).
    pub fn alpha_bar(&self, t: Option<usize>) -> f64 {
        t.map_or(1.0, |t| self.alpha_bars[t])
    }

    /// ᾱ at a real-valued model time τ (in training-step units, τ = i gives ᾱ_i exactly).
    ///
    /// Between integers log α = ½ ln ᾱ is interpolated linearly, and extrapolated linearly
    /// beyond [0, T−1]: DPM-Solver's `NoiseScheduleVP("discrete")` (Lu et al. 2022, App. D.1),
    /// whose continuous time t ∈ [1/T, 1] maps to τ = tT − 1 (its `get_model_input_time`).
    pub fn alpha_bar_at(&self, tau: f64) -> f64 {
        (2.0 * self.log_alpha_at(tau)).exp()
    }

    /// log α(τ) = ½ ln ᾱ(τ), piecewise linear in τ (see [`Self::alpha_bar_at`]).
    pub fn log_alpha_at(&self, tau: f64) -> f64 {
        let n = self.alpha_bars.len();
        let la = |i: usize| 0.5 * self.alpha_bars[i].ln();
        if n == 1 {
            return la(0);
        }
        let i = (tau.floor().max(0.0) as usize).min(n - 2);
        let w = tau - i as f64;
        la(i) + w * (la(i + 1) - la(i))
    }

    /// Half log-SNR λ(τ) = log α − log σ (DPM-Solver's λ_t).
    pub fn lambda_at(&self, tau: f64) -> f64 {
        let la = self.log_alpha_at(tau);
        la - 0.5 * (-(2.0 * la).exp_m1()).ln()
    }

    /// The model time τ with λ(τ) = `lambda` (DPM-Solver's `inverse_lambda`): log α =
    /// −½ log(1 + e^{−2λ}), then τ by inverting the piecewise-linear log α(τ) (log α decreases).
    pub fn tau_from_lambda(&self, lambda: f64) -> f64 {
        let target = -0.5 * (-2.0 * lambda).exp().ln_1p();
        let n = self.alpha_bars.len();
        let la = |i: usize| 0.5 * self.alpha_bars[i].ln();
        if n == 1 {
            return 0.0;
        }
        // First segment [i, i+1] whose lower end is already at or below the target.
        let i = (0..n - 1).find(|&i| la(i + 1) <= target).unwrap_or(n - 2);
        let (a, b) = (la(i), la(i + 1));
        i as f64 + (target - a) / (b - a)
    }
}

/// DPM-Solver's continuous-time grids (`get_time_steps`), returned as model times τ = tT − 1 from
/// t_T = 1 down to t_0 = 1/T (τ from T − 1 to 0), with `steps` intervals (steps + 1 points).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContinuousSpacing {
    /// t uniform in [1/T, 1] (GU's U-ViT sampler, `skip_type = "time_uniform"`).
    TimeUniform,
    /// λ(t) uniform (BayesDiff's DPM sampler, `skip_type = "logSNR"`).
    LogSnr,
}

/// The decreasing model-time grid of `steps` DPM-Solver intervals on `schedule` (see
/// [`ContinuousSpacing`]).
pub fn continuous_grid(
    spacing: ContinuousSpacing,
    schedule: &NoiseSchedule,
    steps: usize,
) -> Vec<f64> {
    let n = schedule.len() as f64;
    let (t_hi, t_lo) = (1.0, 1.0 / n);
    let k = steps.max(1) as f64;
    (0..=steps.max(1))
        .map(|i| {
            let f = i as f64 / k;
            match spacing {
                ContinuousSpacing::TimeUniform => (t_hi + f * (t_lo - t_hi)) * n - 1.0,
                ContinuousSpacing::LogSnr => {
                    let (l_hi, l_lo) = (
                        schedule.lambda_at(t_hi * n - 1.0),
                        schedule.lambda_at(t_lo * n - 1.0),
                    );
                    schedule.tau_from_lambda(l_hi + f * (l_lo - l_hi))
                }
            }
        })
        .collect()
}

/// diffusers' "leading" spacing: t_i = i·⌊T/S⌋ for i = S−1 … 0 (50 of 1000 → 980, 960, …, 0).
pub fn leading_grid(timesteps: usize, steps: usize) -> Vec<usize> {
    grid(Spacing::Leading, timesteps, steps, 0)
}

/// How S sampling steps are placed among T training timesteps (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spacing {
    /// i·⌊T/S⌋ + offset, i = S−1 … 0 (DDPM/DDIM default; offset = `steps_offset`).
    Leading,
    /// round(T − i·T/S) − 1, i = 0 … S−1: starts at T−1 (Lin et al. 2024, Table 2).
    Trailing,
    /// round(linspace(0, T−1, S)), reversed.
    Linspace,
}

/// A decreasing grid of S timesteps in 0..T. `steps_offset` applies to `Leading` only.
pub fn grid(spacing: Spacing, timesteps: usize, steps: usize, steps_offset: usize) -> Vec<usize> {
    let (t, s) = (timesteps as f64, steps.max(1) as f64);
    match spacing {
        Spacing::Leading => {
            let stride = timesteps / steps.max(1);
            (0..steps)
                .rev()
                .map(|i| (i * stride + steps_offset).min(timesteps - 1))
                .collect()
        }
        Spacing::Trailing => (0..steps)
            .map(|i| ((t - i as f64 * t / s).round() as usize).saturating_sub(1))
            .collect(),
        Spacing::Linspace => (0..steps)
            .rev()
            .map(|i| {
                let v = if steps > 1 {
                    i as f64 * (t - 1.0) / (s - 1.0)
                } else {
                    0.0
                };
                // numpy.round rounds half to even.
                v.round_ties_even() as usize
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn linear_schedule_matches_ho_et_al() {
        // Expected values: torch.linspace(1e-4, 0.02, 1000) and torch.cumprod(1 - betas) as in
        // diffusers 0.31 DDPMScheduler(beta_schedule="linear"); ᾱ_999 ≈ 4.036e-5 (f64).
        let s = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        assert_relative_eq!(s.beta(0), 1e-4);
        assert_relative_eq!(s.beta(999), 0.02);
        assert_relative_eq!(s.alpha_bar(Some(0)), 1.0 - 1e-4);
        assert_relative_eq!(s.alpha_bar(Some(999)), 4.0358e-5, max_relative = 1e-3);
        assert_eq!(s.alpha_bar(None), 1.0);
    }

    #[test]
    fn scaled_linear_and_cosine_match_diffusers() {
        // Expected: computed from diffusers' definitions (scheduling_ddpm.py, v0.31) with Python
        // floats: scaled_linear 0.00085 → 0.012, β_500 = 0.00481495414171188; cosine
        // (squaredcos_cap_v2) β_0 = 4.128422482196914e-05, β_500 = 0.003155691441585007,
        // β_998 = 0.7499993929011166, β_999 = 0.999 (capped), ᾱ_499 = 0.4938435904406382.
        let s = NoiseSchedule::new(ScheduleKind::ScaledLinear, 0.00085, 0.012, 1000);
        assert_relative_eq!(s.beta(0), 0.00085, max_relative = 1e-12);
        assert_relative_eq!(s.beta(500), 0.00481495414171188, max_relative = 1e-12);
        let c = NoiseSchedule::new(ScheduleKind::Cosine, 0.0, 0.0, 1000);
        assert_relative_eq!(c.beta(0), 4.128422482196914e-05, max_relative = 1e-9);
        assert_relative_eq!(c.beta(500), 0.003155691441585007, max_relative = 1e-9);
        assert_relative_eq!(c.beta(998), 0.7499993929011166, max_relative = 1e-9);
        assert_eq!(c.beta(999), 0.999);
        assert_relative_eq!(
            c.alpha_bar(Some(499)),
            0.4938435904406382,
            max_relative = 1e-9
        );
    }

    #[test]
    fn spacings_match_diffusers() {
        // diffusers DDIMScheduler.set_timesteps(50), T = 1000: leading + steps_offset 1 → 981…1;
        // trailing → 999, 979, …, 19; linspace → 999, 979, 958, 938, …, 20, 0.
        let l = grid(Spacing::Leading, 1000, 50, 1);
        assert_eq!((l[0], l[49]), (981, 1));
        let t = grid(Spacing::Trailing, 1000, 50, 0);
        assert_eq!((t.len(), t[0], t[1], t[49]), (50, 999, 979, 19));
        let s = grid(Spacing::Linspace, 1000, 50, 0);
        assert_eq!(&s[..4], &[999, 979, 958, 938]);
        assert_eq!(&s[48..], &[20, 0]);
    }

    #[test]
    fn continuous_time_interpolates_log_alpha() {
        // NoiseScheduleVP("discrete") (dpm_solver_pytorch.py): log α is piecewise linear between
        // the integer steps, so at τ = i it is ½ ln ᾱ_i exactly and at i + ½ the mean of the two.
        let s = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        for i in [0usize, 17, 500, 999] {
            assert_relative_eq!(
                s.alpha_bar_at(i as f64),
                s.alpha_bar(Some(i)),
                max_relative = 1e-12
            );
        }
        let mid = 0.25 * (s.alpha_bar(Some(17)).ln() + s.alpha_bar(Some(18)).ln());
        assert_relative_eq!(s.log_alpha_at(17.5), mid, max_relative = 1e-12);
        for tau in [0.0, 3.3, 250.75, 998.5] {
            assert_relative_eq!(s.tau_from_lambda(s.lambda_at(tau)), tau, epsilon = 1e-9);
        }
    }

    #[test]
    fn continuous_grids_span_one_to_one_over_t() {
        // get_time_steps: time_uniform = linspace(1, 1/N, K+1); logSNR = λ-uniform between the same
        // end points. Model time τ = tN − 1, so both run from 999 to 0.
        let s = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
        let g = continuous_grid(ContinuousSpacing::TimeUniform, &s, 25);
        assert_eq!(g.len(), 26);
        assert_relative_eq!(g[0], 999.0, epsilon = 1e-9);
        assert_relative_eq!(g[25], 0.0, epsilon = 1e-9);
        assert_relative_eq!(g[1] - g[2], 999.0 / 25.0, epsilon = 1e-9);
        let l = continuous_grid(ContinuousSpacing::LogSnr, &s, 25);
        assert_relative_eq!(l[0], 999.0, epsilon = 1e-6);
        assert_relative_eq!(l[25], 0.0, epsilon = 1e-6);
        let lam: Vec<f64> = l.iter().map(|&t| s.lambda_at(t)).collect();
        for w in lam.windows(3) {
            assert_relative_eq!(w[1] - w[0], w[2] - w[1], max_relative = 1e-6);
        }
    }

    #[test]
    fn leading_grid_matches_diffusers() {
        // diffusers DDPMScheduler.set_timesteps(50) with 1000 train steps: 980, 960, ..., 20, 0.
        let g = leading_grid(1000, 50);
        assert_eq!((g.len(), g[0], g[1], g[49]), (50, 980, 960, 0));
        assert_eq!(leading_grid(1000, 1000)[0], 999);
    }
}
