//! Noise schedules and timestep grids (DDPM discrete time).
//!
//! β schedule → α_t = 1 − β_t → ᾱ_t = ∏_{s≤t} α_s (Ho et al. 2020, Eq. 4: q(x_t|x_0) =
//! N(√ᾱ_t x_0, (1 − ᾱ_t) I)). Schedules and timestep spacings follow diffusers' definitions, with
//! the cosine schedule computed in real arithmetic (candle-transformers' integer-division version
//! keeps ᾱ at 1 until the last step; see ../shared/reference/rust-stack.md).

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
    fn leading_grid_matches_diffusers() {
        // diffusers DDPMScheduler.set_timesteps(50) with 1000 train steps: 980, 960, ..., 20, 0.
        let g = leading_grid(1000, 50);
        assert_eq!((g.len(), g[0], g[1], g[49]), (50, 980, 960, 0));
        assert_eq!(leading_grid(1000, 1000)[0], 999);
    }
}
