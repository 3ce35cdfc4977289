//! Noise schedules and timestep grids (DDPM discrete time).
//!
//! β schedule → α_t = 1 − β_t → ᾱ_t = ∏_{s≤t} α_s (Ho et al. 2020, Eq. 4: q(x_t|x_0) =
//! N(√ᾱ_t x_0, (1 − ᾱ_t) I)). Only what the toy artifact needs lives here so far: the linear
//! schedule and diffusers' "leading" grid; the remaining schedules and grids arrive with the
//! sampler work (issue 3) behind the same types.

use serde::{Deserialize, Serialize};

/// Which β schedule (config key `diffusion.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// β_t linear in t from `beta_start` to `beta_end` (Ho et al. 2020: 1e-4 → 0.02, T = 1000).
    Linear,
}

/// A discrete-time variance-preserving schedule, kept in f64 (ᾱ near 0 loses digits in f32).
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(kind: ScheduleKind, beta_start: f64, beta_end: f64, timesteps: usize) -> Self {
        let betas: Vec<f64> = match kind {
            ScheduleKind::Linear => (0..timesteps)
                .map(|i| {
                    let frac = if timesteps > 1 {
                        i as f64 / (timesteps - 1) as f64
                    } else {
                        0.0
                    };
                    beta_start + frac * (beta_end - beta_start)
                })
                .collect(),
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
    let stride = timesteps / steps.max(1);
    (0..steps).rev().map(|i| i * stride).collect()
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
    fn leading_grid_matches_diffusers() {
        // diffusers DDPMScheduler.set_timesteps(50) with 1000 train steps: 980, 960, ..., 20, 0.
        let g = leading_grid(1000, 50);
        assert_eq!((g.len(), g[0], g[1], g[49]), (50, 980, 960, 0));
        assert_eq!(leading_grid(1000, 1000)[0], 999);
    }
}
