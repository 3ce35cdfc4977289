//! AU uncertainty-guided sampling (De Vita & Belagiannis, WACV 2025, Alg. 2, Eq. 10).
//!
//! At a guided step t, with ε = ε_θ(x_t, t) and U_t(ε) from Alg. 1 (see [`super::au`]):
//!
//!   mask = 1[U_t > τ_t]                                                    (Alg. 2, line 4)
//!   ε̂    = ε + λ · mask · ∂U/∂ε                                             (Eq. 10)
//!
//! Alg. 2 takes "step-wise thresholds τ_{1:T}" as input, and Sec. 4.1 says how they were set: the
//! 95th percentile of the uncertainty computed over the 10,000 samples generated from the model.
//! So by default ([`Threshold::Population`]) τ_t is one number per step — the p-quantile of U_t
//! over every pixel of every sample of an unguided calibration pass from the same x_T
//! ([`population_threshold`]) — and a pixel is guided when its U_t exceeds it (some images then
//! have many guided pixels, some none). [`Threshold::PerImage`] is the released code's rule (the
//! p-quantile of each image's own U_t, so every image has the same share of guided pixels).
//!
//! and the sampler continues with ε̂ (line 6). U depends on ε through x̂₀ = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t,
//! so ∂x̂_t^m/∂ε = −√(1−ᾱ_t) and ∂U/∂ε = −√(1−ᾱ_t) Σ_m ∂U/∂x̂_t^m: a vector-Jacobian product
//! through the denoiser, computed here by candle's autograd (ε is the leaf; the denoiser must be
//! built from candle ops). U is the per-image sum of the pixel-wise U_t, so the gradient for image
//! b depends on image b only.
//!
//! # Paper vs released code (every choice is a config key)
//!
//! | choice | paper (default) | released code (docs/released-code.md §1.5) |
//! |---|---|---|
//! | `sign` | `ascent`: ε + λ·∂U/∂ε ("gradient ascent", Sec. 3.6) | SD path: ascent as well; the class-conditional path parses a direction flag and ignores it |
//! | `batch` | `per-image`: U_b = Σ_pixels U_t of image b | `batch-mean`: U = mean over the batch, so the gradient shrinks as 1/B |
//! | variance | `au.compat = "paper"`: unbiased variance about the mean | SD path: `torch.var` (same); class-conditional path: centred on ε, ÷M |
//! | gradient w.r.t. | ε (Eq. 10) | SD path: ε; class-conditional path: x_t plus a spurious Σε Jacobian term (not reproduced) |
//! | threshold | `population`: τ_t = p-quantile of U_t over all samples and pixels (Sec. 4.1) | `per-image`: p-quantile of each image's U_t |
//! | p, λ, steps | `percentile` 0.95, `strength` 1.0 (Sec. 4.1), `window`: every step (Alg. 2's loop) | p = 0.9–0.95, λ = 0.99–1.0, steps [0, 2) of 20 PNDM steps |
//!
//! Guidance is a [`Denoiser`] wrapper ([`Guided`]): any sampler runs guided without knowing it.

use std::cell::Cell;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::au::{renoising, uncertainty_with, AuSpec, StepWindow};
use crate::error::{Error, Result, TensorContext};
use crate::model::Denoiser;
use crate::schedule::NoiseSchedule;
use crate::seed::Purpose;

/// Direction of the update (config key `guidance.sign`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sign {
    /// ε + λ·mask·∂U/∂ε (the paper: gradient ascent on U).
    Ascent,
    /// ε − λ·mask·∂U/∂ε.
    Descent,
}

/// What U is before differentiation (config key `guidance.batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchReduction {
    /// Each image's own U (the paper's per-image reading; batch-independent).
    PerImage,
    /// Mean of the per-image U over the batch (the released SD pipeline): gradients ÷ B.
    BatchMean,
}

/// How τ_t is set (config key `guidance.threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Threshold {
    /// τ_t = the p-quantile of U_t over every pixel of every sample of an unguided pass (AU
    /// Sec. 4.1; Alg. 2's "step-wise thresholds").
    Population,
    /// τ = the p-quantile of each image's own U_t (the released pipelines).
    PerImage,
}

/// Settings of Alg. 2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuidanceSpec {
    pub au: AuSpec,
    /// p ∈ (0, 1): the quantile τ_t is taken at.
    pub percentile: f64,
    pub threshold: Threshold,
    /// λ ≥ 0.
    pub strength: f64,
    pub sign: Sign,
    pub batch: BatchReduction,
    /// Sampler steps that are guided.
    pub window: StepWindow,
}

impl GuidanceSpec {
    /// Checks every key against a grid of `steps` sampler steps.
    pub fn validate(&self, steps: usize) -> Result<()> {
        self.au.validate()?;
        if !(self.percentile > 0.0 && self.percentile < 1.0) {
            return Err(Error::invalid(
                "guidance.percentile",
                format!("must lie in (0, 1), got {}", self.percentile),
            ));
        }
        if !(self.strength.is_finite() && self.strength >= 0.0) {
            return Err(Error::invalid(
                "guidance.strength",
                format!("must be finite and ≥ 0, got {}", self.strength),
            ));
        }
        self.window.validate("guidance.window", steps)
    }
}

/// One guided step's results.
pub struct GuidedStep {
    pub eps_hat: Tensor,
    /// 1 where a pixel was guided, 0 elsewhere (x_t's shape, x_t's dtype).
    pub mask: Tensor,
    /// U_t per pixel (x_t's shape).
    pub u: Tensor,
    /// ∂U/∂ε (x_t's shape).
    pub grad: Tensor,
}

/// U_t and ∂U/∂ε by autograd, for the batch `x_t` with the sampler's `eps`.
#[allow(clippy::too_many_arguments)]
pub fn uncertainty_grad(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    eps: &Tensor,
    t: f64,
    xi: &Tensor,
    spec: &AuSpec,
    batch: BatchReduction,
) -> Result<(Tensor, Tensor)> {
    let ab = schedule.alpha_bar_at(t);
    (|| -> candle_core::Result<(Tensor, Tensor)> {
        let leaf = Var::from_tensor(&eps.detach())?;
        let u = uncertainty_with(denoiser, ab, &x_t.detach(), leaf.as_tensor(), t, xi, spec)?;
        let total = match batch {
            BatchReduction::PerImage => u.sum_all()?,
            BatchReduction::BatchMean => (u.sum_all()? / u.dim(0)? as f64)?,
        };
        let grads = total.backward()?;
        let grad = grads
            .get(leaf.as_tensor())
            .cloned()
            .unwrap_or(leaf.as_tensor().zeros_like()?);
        Ok((u.detach(), grad))
    })()
    .ctx("AU guidance gradient (Alg. 2)")
}

/// The p-quantile of each row of `u` (B, F), with torch.quantile's default linear interpolation
/// between order statistics: position p·(F − 1).
pub fn row_quantiles(u: &[f64], f: usize, p: f64) -> Vec<f64> {
    u.chunks(f)
        .map(|row| {
            let mut v = row.to_vec();
            v.sort_by(f64::total_cmp);
            let pos = p * (f - 1) as f64;
            let (lo, w) = (pos.floor() as usize, pos.fract());
            let hi = (lo + 1).min(f - 1);
            v[lo] + w * (v[hi] - v[lo])
        })
        .collect()
}

/// τ_t under [`Threshold::Population`]: the p-quantile of `values` (U_t of every pixel of every
/// sample at one step), interpolated linearly between order statistics as `numpy.percentile`'s
/// default (position p·(n − 1)). `None` for no values.
pub fn population_threshold(values: &[f64], p: f64) -> Option<f64> {
    (!values.is_empty()).then(|| row_quantiles(values, values.len(), p)[0])
}

/// Alg. 2 lines 3–5 at one step; `tau` is the step's population threshold τ_t (`None`: each
/// image's own p-quantile, [`Threshold::PerImage`]).
#[allow(clippy::too_many_arguments)]
pub fn guide(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    eps: &Tensor,
    t: f64,
    step: u32,
    indices: &[u64],
    purpose: &Purpose,
    spec: &GuidanceSpec,
    tau: Option<f64>,
) -> Result<GuidedStep> {
    if spec.threshold == Threshold::Population && tau.is_none() {
        return Err(Error::invalid(
            "guidance.threshold",
            format!(
                "\"population\" needs τ_t of step {step} from a calibration pass; none was given"
            ),
        ));
    }
    let xi = renoising(x_t, step, indices, purpose, spec.au.m)?;
    let (u, grad) = uncertainty_grad(denoiser, schedule, x_t, eps, t, &xi, &spec.au, spec.batch)?;
    (|| -> candle_core::Result<GuidedStep> {
        let dims = x_t.dims().to_vec();
        let b = dims[0];
        let f = x_t.elem_count() / b;
        let flat: Vec<f64> = u
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let q = match (spec.threshold, tau) {
            (Threshold::Population, Some(t)) => vec![t; b],
            _ => row_quantiles(&flat, f, spec.percentile),
        };
        let mask: Vec<f64> = flat
            .chunks(f)
            .zip(&q)
            .flat_map(|(row, q)| row.iter().map(move |v| f64::from(u8::from(v > q))))
            .collect();
        let mask = Tensor::from_vec(mask, dims, x_t.device())?.to_dtype(x_t.dtype())?;
        let signed = match spec.sign {
            Sign::Ascent => spec.strength,
            Sign::Descent => -spec.strength,
        };
        let eps_hat = (eps + ((&mask * &grad)? * signed)?)?;
        Ok(GuidedStep {
            eps_hat,
            mask,
            u,
            grad,
        })
    })()
    .ctx("AU guidance update (Eq. 10)")
}

/// A denoiser that returns the guided ε̂ at the steps of `spec.window` of `grid` and the plain ε
/// elsewhere (including any off-grid evaluation, e.g. DPM-Solver-2 midpoints).
pub struct Guided<'a> {
    pub inner: &'a dyn Denoiser,
    pub schedule: &'a NoiseSchedule,
    /// The sampler's grid, to map a model time back to its step index.
    pub grid: &'a [f64],
    pub spec: GuidanceSpec,
    pub purpose: Purpose,
    pub indices: &'a [u64],
    /// τ_t per sampler step (population thresholds; empty under [`Threshold::PerImage`]).
    pub tau: &'a [Option<f64>],
    /// Network evaluations per sample spent on guidance (M per guided step).
    pub extra_nfe: Cell<usize>,
    /// Guided pixels per step (summed over the batch), for reports.
    pub guided_pixels: std::cell::RefCell<Vec<(usize, f64)>>,
    /// Per image: Σ over guided steps and pixels of U_t on the guided trajectory.
    pub u_sums: std::cell::RefCell<Vec<f64>>,
}

impl Denoiser for Guided<'_> {
    fn eps(&self, x_t: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let eps = self.inner.eps(x_t, t)?;
        let Some(step) = self.grid.iter().position(|&g| g == t) else {
            return Ok(eps);
        };
        if !self.spec.window.contains(step) {
            return Ok(eps);
        }
        let g = guide(
            self.inner,
            self.schedule,
            x_t,
            &eps,
            t,
            step as u32,
            self.indices,
            &self.purpose,
            &self.spec,
            self.tau.get(step).copied().flatten(),
        )
        .map_err(candle_core::Error::wrap)?;
        let sums = crate::uq::scores::per_sample_sums(&g.u)?;
        {
            let mut acc = self.u_sums.borrow_mut();
            if acc.is_empty() {
                acc.resize(sums.len(), 0.0);
            }
            for (a, v) in acc.iter_mut().zip(&sums) {
                *a += v;
            }
        }
        self.extra_nfe.set(self.extra_nfe.get() + self.spec.au.m);
        let n = g
            .mask
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        self.guided_pixels.borrow_mut().push((step, n));
        Ok(g.eps_hat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gmm::{Component, GaussianMixture};
    use crate::sampler::{ddim, NoiseSource, Observer, StepRules, StepView};
    use crate::schedule::{leading_grid, ScheduleKind};
    use crate::seed::SeedStreams;
    use crate::uq::au::{uncertainty, AuCompat};
    use candle_core::{DType, Device};

    fn sched() -> NoiseSchedule {
        NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000)
    }

    /// A 4-"pixel" two-mode mixture: sharp enough that U_t varies across pixels.
    fn mixture() -> GaussianMixture {
        GaussianMixture::new(
            vec![
                Component {
                    weight: 0.5,
                    mean: vec![-1.0, 0.5, 0.0, 1.0],
                    std: 0.2,
                },
                Component {
                    weight: 0.5,
                    mean: vec![1.0, -0.5, 0.3, 1.0],
                    std: 0.3,
                },
            ],
            sched(),
        )
        .unwrap()
    }

    fn batch(b: usize, seed: u64) -> (Tensor, Vec<u64>) {
        let idx: Vec<u64> = (0..b as u64).collect();
        let x = Tensor::from_vec(
            SeedStreams::new(seed).purpose("x").normals(&idx, None, 4),
            (b, 4),
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
        (x, idx)
    }

    fn spec(m: usize) -> AuSpec {
        AuSpec {
            m,
            ddof: crate::uq::au::Ddof::Minus(1),
            compat: AuCompat::Paper,
            clip_sample: None,
        }
    }

    #[test]
    fn autograd_matches_central_finite_differences() {
        // Expected: central differences (U(ε + h e_j) − U(ε − h e_j))/2h of the same U_t (same
        // draws ξ, f64), h = 1e-5, for every element of ε; truncation error O(h²) ≈ 1e-10.
        let g = mixture();
        let s = sched();
        let (x, idx) = batch(3, 1);
        let t = 300.0;
        let eps = g.eps(&x, t).unwrap();
        let xi = renoising(&x, 5, &idx, &SeedStreams::new(2).purpose("au"), 6).unwrap();
        let sp = spec(6);
        let (_, grad) =
            uncertainty_grad(&g, &s, &x, &eps, t, &xi, &sp, BatchReduction::PerImage).unwrap();
        let grad = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = eps.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let ab = s.alpha_bar_at(t);
        let total = |e: &[f64]| {
            let e = Tensor::from_vec(e.to_vec(), (3, 4), &Device::Cpu).unwrap();
            uncertainty_with(&g, ab, &x, &e, t, &xi, &sp)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let h = 1e-5;
        for j in 0..base.len() {
            let (mut up, mut dn) = (base.clone(), base.clone());
            up[j] += h;
            dn[j] -= h;
            let fd = (total(&up) - total(&dn)) / (2.0 * h);
            approx::assert_relative_eq!(grad[j], fd, max_relative = 1e-5, epsilon = 1e-9);
        }
        assert!(
            grad.iter().any(|v| v.abs() > 1e-3),
            "gradient should not vanish"
        );
    }

    #[test]
    fn batch_mean_divides_the_gradient_by_the_batch_size() {
        let g = mixture();
        let (x, idx) = batch(4, 3);
        let eps = g.eps(&x, 500.0).unwrap();
        let xi = renoising(&x, 0, &idx, &SeedStreams::new(4).purpose("au"), 5).unwrap();
        let grad = |b| {
            let (_, gr) =
                uncertainty_grad(&g, &sched(), &x, &eps, 500.0, &xi, &spec(5), b).unwrap();
            gr.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        };
        let (per, mean) = (
            grad(BatchReduction::PerImage),
            grad(BatchReduction::BatchMean),
        );
        for (a, b) in per.iter().zip(&mean) {
            approx::assert_relative_eq!(a / 4.0, *b, max_relative = 1e-12, epsilon = 1e-15);
        }
    }

    #[test]
    fn quantiles_interpolate_like_torch() {
        // torch.quantile(torch.tensor([4., 1., 3., 2.]), 0.9) = 3.7 (position 0.9·3 = 2.7).
        let q = row_quantiles(&[4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 1.0], 4, 0.9);
        approx::assert_relative_eq!(q[0], 3.7, max_relative = 1e-12);
        approx::assert_relative_eq!(q[1], 0.7, max_relative = 1e-12);
    }

    struct Record(Vec<Vec<f64>>);
    impl Observer for Record {
        fn on_step(&mut self, v: &StepView<'_>) -> candle_core::Result<()> {
            self.0.push(v.x_t.flatten_all()?.to_vec1::<f64>()?);
            Ok(())
        }
    }
    struct NoNoise;
    impl NoiseSource for NoNoise {
        fn noise(&self, _: u32) -> candle_core::Result<Tensor> {
            unreachable!("η = 0 draws no noise")
        }
    }

    #[test]
    fn guided_ddim_changes_only_masked_pixels_at_guided_steps() {
        // Same x_T, DDIM η = 0, 50 steps; guidance at step 30 only. The trajectories must agree
        // exactly up to x at step 30, and x at step 31 may differ only where the mask of step 30
        // is 1 (the DDIM update is elementwise in ε), and must differ somewhere.
        let g = mixture();
        let s = sched();
        let grid = leading_grid(1000, 50);
        let grid_f: Vec<f64> = grid.iter().map(|&t| t as f64).collect();
        let (x_t, idx) = batch(8, 9);
        let gspec = GuidanceSpec {
            au: spec(5),
            percentile: 0.5,
            threshold: Threshold::PerImage,
            strength: 1.0,
            sign: Sign::Ascent,
            batch: BatchReduction::PerImage,
            window: StepWindow { start: 30, len: 1 },
        };
        gspec.validate(50).unwrap();
        let purpose = SeedStreams::new(7).purpose("au-guidance");
        let guided = Guided {
            inner: &g,
            schedule: &s,
            grid: &grid_f,
            spec: gspec,
            purpose,
            indices: &idx,
            tau: &[],
            extra_nfe: Cell::new(0),
            guided_pixels: Default::default(),
            u_sums: Default::default(),
        };
        let run = |d: &dyn Denoiser| {
            let mut rec = Record(vec![]);
            ddim::sample(
                d,
                &s,
                &grid,
                0.0,
                &StepRules::default(),
                x_t.clone(),
                &NoNoise,
                &mut rec,
            )
            .unwrap();
            rec.0
        };
        let (plain, steered) = (run(&g), run(&guided));
        assert_eq!(guided.extra_nfe.get(), 5);
        for step in 0..=30 {
            assert_eq!(plain[step], steered[step], "step {step} must be unguided");
        }
        let x30 = Tensor::from_vec(plain[30].clone(), (8, 4), &Device::Cpu).unwrap();
        let eps30 = g.eps(&x30, grid_f[30]).unwrap();
        let mask = guide(
            &g, &s, &x30, &eps30, grid_f[30], 30, &idx, &purpose, &gspec, None,
        )
        .unwrap()
        .mask
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
        let mut changed = 0;
        for ((a, b), m) in plain[31].iter().zip(&steered[31]).zip(&mask) {
            if *m == 0.0 {
                assert_eq!(a, b, "an unmasked pixel changed");
            } else if a != b {
                changed += 1;
            }
        }
        assert!(changed > 0, "guidance changed nothing");
        assert_eq!(
            mask.iter().sum::<f64>(),
            16.0,
            "p = 0.5 of 4 pixels → 2 per image"
        );
    }

    /// Alg. 2 at one step of the mixture with strength λ and `sign`, per-image threshold p = 0.5:
    /// (U_t summed over the batch at ε, at the guided ε̂ with the same draws ξ, the mask).
    fn one_step(sign: Sign, strength: f64) -> (f64, f64, Vec<f64>) {
        let g = mixture();
        let s = sched();
        let (x, idx) = batch(6, 11);
        let t = 400.0;
        let eps = g.eps(&x, t).unwrap();
        let purpose = SeedStreams::new(3).purpose("au-guidance");
        let gspec = GuidanceSpec {
            au: spec(5),
            percentile: 0.5,
            threshold: Threshold::PerImage,
            strength,
            sign,
            batch: BatchReduction::PerImage,
            window: StepWindow { start: 0, len: 1 },
        };
        let step = guide(&g, &s, &x, &eps, t, 7, &idx, &purpose, &gspec, None).unwrap();
        let xi = renoising(&x, 7, &idx, &purpose, 5).unwrap();
        let ab = s.alpha_bar_at(t);
        let total = |e: &Tensor| {
            uncertainty_with(&g, ab, &x, e, t, &xi, &gspec.au)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let mask = step.mask.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        (total(&eps), total(&step.eps_hat), mask)
    }

    #[test]
    fn ascent_raises_the_uncertainty_and_descent_lowers_it() {
        // Eq. 10 is gradient *ascent* on U ("by maximising the uncertainty", AU Sec. 3.6): for a
        // small step λ the first-order change of U is +λ Σ mask·(∂U/∂ε)² > 0. The expected signs
        // follow from that expansion (no reference library); a flipped sign in `guide` fails here.
        let (u0, up, mask) = one_step(Sign::Ascent, 1e-3);
        let (u0d, down, _) = one_step(Sign::Descent, 1e-3);
        assert_eq!(u0, u0d);
        assert!(mask.contains(&1.0));
        assert!(up > u0, "ascent must raise U: {u0} → {up}");
        assert!(down < u0, "descent must lower U: {u0} → {down}");
        // Symmetric to first order: the two changes agree in size within 5 %.
        approx::assert_relative_eq!(up - u0, u0 - down, max_relative = 0.05);
    }

    #[test]
    fn population_thresholds_mask_pixels_above_one_number_per_step() {
        // numpy.percentile([0, 1, …, 19], 95) = 18.05 (position 0.95·19 = 18.05).
        let v: Vec<f64> = (0..20).rev().map(f64::from).collect();
        approx::assert_relative_eq!(
            population_threshold(&v, 0.95).unwrap(),
            18.05,
            max_relative = 1e-12
        );
        assert_eq!(population_threshold(&[], 0.95), None);
        // With τ_t given, the mask is 1[U_t > τ_t] pixel by pixel, whatever the image's own
        // quantile: τ = median of all U → exactly the pixels above it, unevenly per image.
        let g = mixture();
        let s = sched();
        let (x, idx) = batch(6, 11);
        let t = 400.0;
        let eps = g.eps(&x, t).unwrap();
        let purpose = SeedStreams::new(3).purpose("au-guidance");
        let mut gspec = GuidanceSpec {
            au: spec(5),
            percentile: 0.5,
            threshold: Threshold::Population,
            strength: 1.0,
            sign: Sign::Ascent,
            batch: BatchReduction::PerImage,
            window: StepWindow { start: 0, len: 1 },
        };
        let e = guide(&g, &s, &x, &eps, t, 7, &idx, &purpose, &gspec, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("guidance.threshold"), "{e}");
        let u = uncertainty(&g, &s, &x, &eps, t, 7, &idx, &purpose, &gspec.au).unwrap();
        let u: Vec<f64> = u.flatten_all().unwrap().to_vec1().unwrap();
        let tau = population_threshold(&u, 0.5).unwrap();
        let step = guide(&g, &s, &x, &eps, t, 7, &idx, &purpose, &gspec, Some(tau)).unwrap();
        let mask: Vec<f64> = step.mask.flatten_all().unwrap().to_vec1().unwrap();
        for (m, v) in mask.iter().zip(&u) {
            assert_eq!(*m, f64::from(u8::from(*v > tau)));
        }
        let per_image: Vec<f64> = mask.chunks(4).map(|r| r.iter().sum()).collect();
        assert!(
            per_image.iter().any(|&n| n != 2.0),
            "a population threshold is not a per-image quantile: {per_image:?}"
        );
        gspec.threshold = Threshold::PerImage;
        let step = guide(&g, &s, &x, &eps, t, 7, &idx, &purpose, &gspec, None).unwrap();
        let mask: Vec<f64> = step.mask.flatten_all().unwrap().to_vec1().unwrap();
        assert!(mask.chunks(4).all(|r| r.iter().sum::<f64>() == 2.0));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let mut sp = GuidanceSpec {
            au: spec(5),
            percentile: 1.0,
            threshold: Threshold::PerImage,
            strength: 1.0,
            sign: Sign::Ascent,
            batch: BatchReduction::PerImage,
            window: StepWindow { start: 0, len: 2 },
        };
        let e = sp.validate(20).unwrap_err().to_string();
        assert!(e.starts_with("guidance.percentile"), "{e}");
        sp.percentile = 0.95;
        sp.window = StepWindow { start: 19, len: 2 };
        let e = sp.validate(20).unwrap_err().to_string();
        assert!(e.starts_with("guidance.window"), "{e}");
        sp.window.start = 0;
        sp.au.m = 1;
        let e = sp.validate(20).unwrap_err().to_string();
        assert!(e.starts_with("au.m"), "{e}");
    }
}
