//! Training an ε-model ensemble with the DDPM simple objective (Ho et al. 2020, Eq. 14):
//!
//!   L_simple(θ) = E_{t ~ U{0..T−1}, x₀ ~ data, ε ~ N(0, I)} ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖².
//!
//! Members are trained jointly on the *sum* of their per-member mean losses. The gradient of that
//! sum with respect to member m's parameters is exactly the gradient of m's own loss, and Adam is
//! per-parameter, so this is M independent trainings computed in one batched pass. Each member draws
//! its own minibatches (purpose `train-batch`, index = member, step = optimiser step), which is what
//! makes the members a deep ensemble (Lakshminarayanan et al. 2017) rather than copies.

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::Rng;
use rand_distr::StandardNormal;

use super::toy_mlp::EnsembleMlp;
use crate::error::{Result, TensorContext};
use crate::schedule::NoiseSchedule;
use crate::seed::SeedStreams;

/// Learning-rate schedule over the optimiser steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrDecay {
    /// lr throughout.
    Constant,
    /// lr · ½(1 + cos(π s/S)): anneals to 0, so the final weights are not one noisy Adam step.
    Cosine,
}

impl LrDecay {
    /// Multiplier of the base learning rate at optimiser step `step` (0-based) of `total`, after
    /// `warmup` steps of linear warmup: s/W while s < W, then 1 ([`LrDecay::Constant`]) or
    /// ½(1 + cos(π p)) with p = (s − W)/(S − W) ([`LrDecay::Cosine`]).
    ///
    /// These are diffusers' `get_constant_schedule_with_warmup` and
    /// `get_cosine_schedule_with_warmup` (num_cycles = ½) as `torch.optim.lr_scheduler.LambdaLR`
    /// lambdas (up to the last bit of π·s/S), so a recipe written for a diffusers training script
    /// means the same here. As there (and in Ho et al. 2020's warmup, lr·min(s/W, 1)), the first
    /// warmup step has lr = 0: it only fills Adam's moments. With `warmup = 0` this is the toy
    /// ensemble's schedule, bit for bit.
    pub fn factor(self, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        match self {
            LrDecay::Constant => 1.0,
            LrDecay::Cosine => {
                // π·s/S in this order (not π·(s/S) as diffusers): the toy ensemble's bits.
                let (s, span) = (step - warmup, total.saturating_sub(warmup).max(1));
                (0.5 * (1.0 + (std::f64::consts::PI * s as f64 / span as f64).cos())).max(0.0)
            }
        }
    }
}

/// Optimisation settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainSpec {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub lr_decay: LrDecay,
}

impl TrainSpec {
    /// Learning rate at optimiser step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr * self.lr_decay.factor(step, self.steps, 0)
    }
}

/// Train `model` in place on `data` (N × D, row-major). Calls `progress` after every step with the
/// step number and the mean per-member loss; returns the final per-member losses averaged over the
/// last 10% of steps (a smoothed view of where training ended).
pub fn train_ensemble(
    model: &EnsembleMlp,
    data: &[f32],
    schedule: &NoiseSchedule,
    spec: TrainSpec,
    streams: &SeedStreams,
    device: &Device,
    mut progress: impl FnMut(usize, f64),
) -> Result<Vec<f64>> {
    let ms = model.spec();
    let (m, d, b) = (ms.members, ms.data_dim, spec.batch_size);
    let n = data.len() / d;
    let t_max = schedule.len();
    let sqrt_ab: Vec<f32> = (0..t_max)
        .map(|t| schedule.alpha_bar(Some(t)).sqrt() as f32)
        .collect();
    let sqrt_1mab: Vec<f32> = (0..t_max)
        .map(|t| (1.0 - schedule.alpha_bar(Some(t))).sqrt() as f32)
        .collect();
    let mut opt = AdamW::new(
        model.vars(),
        ParamsAdamW {
            lr: spec.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .ctx("creating the Adam optimiser")?;
    let purpose = streams.purpose("train-batch");
    let tail_from = spec.steps - (spec.steps / 10).max(1);
    let mut tail = vec![0f64; m];
    let mut tail_count = 0usize;

    let mut x_t = vec![0f32; m * b * d];
    let mut eps = vec![0f32; m * b * d];
    let mut ts = vec![0u32; m * b];
    for step in 0..spec.steps {
        opt.set_learning_rate(spec.lr_at(step));
        for member in 0..m {
            let mut rng = purpose.rng_at(member as u64, step as u32);
            for row in 0..b {
                let i = rng.random_range(0..n);
                let t = rng.random_range(0..t_max);
                let r = member * b + row;
                ts[r] = t as u32;
                for k in 0..d {
                    let e: f32 = rng.sample(StandardNormal);
                    eps[r * d + k] = e;
                    x_t[r * d + k] = sqrt_ab[t] * data[i * d + k] + sqrt_1mab[t] * e;
                }
            }
        }
        let losses = (|| -> candle_core::Result<Tensor> {
            let xt = Tensor::from_slice(&x_t, (m, b, d), device)?;
            let target = Tensor::from_slice(&eps, (m, b, d), device)?;
            let t = Tensor::from_slice(&ts, m * b, device)?;
            let temb = model.embed(&t)?.reshape((m, b, ms.time_dim))?;
            let pred = model.forward(&xt, &temb)?;
            // Per-member mean squared error, shape (M).
            (pred - target)?
                .sqr()?
                .mean_keepdim(2)?
                .mean_keepdim(1)?
                .flatten_all()
        })()
        .ctx("ensemble training forward pass")?;
        let total = losses.sum_all().ctx("summing member losses")?;
        opt.backward_step(&total)
            .ctx("ensemble training backward pass")?;
        let per_member: Vec<f32> = losses.to_vec1().ctx("reading losses")?;
        if step >= tail_from {
            for (acc, l) in tail.iter_mut().zip(&per_member) {
                *acc += f64::from(*l);
            }
            tail_count += 1;
        }
        progress(
            step + 1,
            per_member.iter().map(|&l| f64::from(l)).sum::<f64>() / m as f64,
        );
    }
    Ok(tail
        .into_iter()
        .map(|s| s / tail_count.max(1) as f64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::toy_mlp::MlpSpec;
    use crate::schedule::ScheduleKind;

    #[test]
    fn training_reduces_the_loss_below_the_untrained_level() {
        // Expected: an ε-model that predicts 0 has loss E‖ε‖²/D = 1; training on a single point
        // mass at (1, -1) must get clearly below that (the optimum is far below 1 for large t).
        let device = Device::Cpu;
        let s = SeedStreams::new(0);
        let spec = MlpSpec {
            data_dim: 2,
            hidden: 32,
            layers: 2,
            time_dim: 8,
            members: 2,
            fourier_features: 0,
            fourier_scale: 1.0,
        };
        let sched = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 100);
        let model = EnsembleMlp::init(spec, 100, &s, &device).unwrap();
        let data: Vec<f32> = (0..64).flat_map(|_| [1.0f32, -1.0]).collect();
        let mut first = None;
        let end = train_ensemble(
            &model,
            &data,
            &sched,
            TrainSpec {
                steps: 300,
                batch_size: 64,
                lr: 3e-3,
                lr_decay: LrDecay::Cosine,
            },
            &s,
            &device,
            |step, l| {
                if step == 1 {
                    first = Some(l)
                }
            },
        )
        .unwrap();
        assert_eq!(end.len(), 2);
        assert!(
            end.iter().all(|&l| l < 0.5 && l < first.unwrap()),
            "first {first:?}, end {end:?}"
        );
    }
}

#[cfg(test)]
mod lr_tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_from_zero_then_hands_over_to_the_decay() {
        // Expected: diffusers 0.31.0's get_constant_schedule_with_warmup and
        // get_cosine_schedule_with_warmup lambdas: s/W for s < W, then 1 or ½(1 + cos(π(s−W)/(S−W))).
        assert_eq!(LrDecay::Constant.factor(0, 100, 10), 0.0);
        assert_eq!(LrDecay::Constant.factor(5, 100, 10), 0.5);
        assert_eq!(LrDecay::Constant.factor(10, 100, 10), 1.0);
        assert_eq!(LrDecay::Constant.factor(99, 100, 10), 1.0);
        assert_eq!(LrDecay::Cosine.factor(10, 100, 10), 1.0);
        approx::assert_abs_diff_eq!(LrDecay::Cosine.factor(55, 100, 10), 0.5, epsilon = 1e-12);
    }

    #[test]
    fn cosine_decay_starts_at_lr_and_halves_midway() {
        let s = TrainSpec {
            steps: 100,
            batch_size: 1,
            lr: 2.0,
            lr_decay: LrDecay::Cosine,
        };
        assert_eq!(s.lr_at(0), 2.0);
        approx::assert_abs_diff_eq!(s.lr_at(50), 1.0, epsilon = 1e-12);
        assert!(s.lr_at(99) < 0.01);
        assert_eq!(
            TrainSpec {
                lr_decay: LrDecay::Constant,
                ..s
            }
            .lr_at(99),
            2.0
        );
    }
}
