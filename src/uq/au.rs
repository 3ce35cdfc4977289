//! AU — pixel-wise aleatoric uncertainty (De Vita & Belagiannis, WACV 2025, Alg. 1, Eq. 8).
//!
//! At sampling step t, given x_t and the sampler's own ε = ε_θ(x_t, t):
//!
//!   x̂₀     = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t                                    (Alg. 1, line 2)
//!   x̂_t^m  = √ᾱ_t x̂₀ + √(1−ᾱ_t) ξ_m,   ξ_m ~ N(0, I) fresh, m = 1…M     (line 4, Eq. 2)
//!   ε_m    = ε_θ(x̂_t^m, t)                                                 (line 5)
//!   U_t    = Var_m[ε_m]   per pixel                                          (line 7, Eq. 8)
//!
//! The M perturbed inputs go through the denoiser as **one batched call** (M·B rows), so an
//! uncertainty step costs 1 + M network evaluations per sample, counted in one extra call.
//! The ξ_m come from the seed streams (purpose `au-renoise`, index = sample, step = sampler step),
//! M·D numbers per sample, so U does not depend on batching.
//!
//! Conventions (config keys): `ddof` of the variance about the sample mean (the paper's Var; 1 =
//! unbiased). `compat = "au-release"` reproduces the released code (seed-repos.md §1.3): x̂₀ is
//! clipped to [−c, c] when `clip_sample` is set, and U = (1/M) Σ_m (ε_m − ε)², centred on the
//! original prediction ε rather than on the mean of the ε_m, divided by M.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, TensorContext};
use crate::model::Denoiser;
use crate::schedule::NoiseSchedule;
use crate::seed::Purpose;

/// Which definition of U_t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuCompat {
    /// Alg. 1 as printed: variance about the mean of the ε_m, divisor M − ddof, no clipping.
    Paper,
    /// The authors' released `uncertainty_centered` scheduler.
    AuRelease,
}

/// Settings of Alg. 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuSpec {
    /// Number of re-noisings M (≥ 2).
    pub m: usize,
    /// Delta degrees of freedom of the paper's variance (0 or 1).
    pub ddof: usize,
    pub compat: AuCompat,
    /// Clip x̂₀ to [−c, c] before re-noising (only under `AuRelease`, as the released code does
    /// when the scheduler has `clip_sample = True`).
    pub clip_sample: Option<f64>,
}

impl AuSpec {
    pub fn validate(&self) -> Result<()> {
        if self.m < 2 {
            return Err(Error::invalid(
                "au.m",
                format!("must be ≥ 2 (a variance needs two draws), got {}", self.m),
            ));
        }
        if self.ddof >= self.m {
            return Err(Error::invalid(
                "au.ddof",
                format!("must be < au.m = {}, got {}", self.m, self.ddof),
            ));
        }
        Ok(())
    }
}

/// U_t for the batch `x_t` (B, …) with the sampler's ε at timestep `t` and sampler step `step`;
/// `indices` are the B samples' indices (they key the re-noising streams). Returns U with the
/// shape of `x_t`.
#[allow(clippy::too_many_arguments)]
pub fn uncertainty(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    eps: &Tensor,
    t: f64,
    step: u32,
    indices: &[u64],
    purpose: &Purpose,
    spec: &AuSpec,
) -> Result<Tensor> {
    spec.validate()?;
    let dims = x_t.dims().to_vec();
    let b = dims[0];
    if indices.len() != b {
        return Err(Error::invalid(
            "au indices",
            format!("{} indices for a batch of {b}", indices.len()),
        ));
    }
    let f: usize = dims[1..].iter().product();
    let m = spec.m;
    let ab = schedule.alpha_bar_at(t);
    let device: &Device = x_t.device();
    (|| -> candle_core::Result<Tensor> {
        let mut x0 = ((x_t - (eps * (1.0 - ab).sqrt())?)? / ab.sqrt())?;
        if let (AuCompat::AuRelease, Some(c)) = (spec.compat, spec.clip_sample) {
            x0 = x0.clamp(-c, c)?;
        }
        // ξ: (B, M, F) from each sample's own stream, then (M, B, F).
        let xi = Tensor::from_vec(
            purpose.normals(indices, Some(step), m * f),
            (b, m, f),
            device,
        )?
        .to_dtype(x_t.dtype())?
        .transpose(0, 1)?
        .contiguous()?;
        let x0 = x0.reshape((1, b, f))?;
        let perturbed = (x0 * ab.sqrt())?.broadcast_add(&(xi * (1.0 - ab).sqrt())?)?;
        let mut batch_dims = vec![m * b];
        batch_dims.extend_from_slice(&dims[1..]);
        let eps_m = denoiser
            .eps(&perturbed.reshape(batch_dims)?, t)?
            .reshape((m, b, f))?;
        let u = match spec.compat {
            AuCompat::Paper => {
                let mean = eps_m.mean_keepdim(0)?;
                (eps_m.broadcast_sub(&mean)?.sqr()?.sum(0)? / (m - spec.ddof) as f64)?
            }
            AuCompat::AuRelease => {
                (eps_m
                    .broadcast_sub(&eps.reshape((1, b, f))?)?
                    .sqr()?
                    .sum(0)?
                    / m as f64)?
            }
        };
        u.reshape(dims.clone())
    })()
    .ctx("AU uncertainty (Alg. 1)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gmm::{Component, GaussianMixture};
    use crate::schedule::ScheduleKind;
    use crate::seed::SeedStreams;
    use std::cell::Cell;

    fn sched() -> NoiseSchedule {
        NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000)
    }

    struct Counting<'a>(&'a dyn Denoiser, Cell<usize>);
    impl Denoiser for Counting<'_> {
        fn eps(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
            self.1.set(self.1.get() + 1);
            self.0.eps(x, t)
        }
    }

    /// Returns (U, denoiser calls, ((1−ᾱ)/v)², the original ε per pixel).
    fn setup(m: usize, compat: AuCompat) -> (Vec<f64>, usize, f64, Vec<f64>) {
        // Single Gaussian data N(μ, s²I): ε*(x) = √(1−ᾱ)(x − √ᾱ μ)/v with v = ᾱ s² + 1 − ᾱ is
        // linear in x, so ε_m − mean_m = (1−ᾱ)/v · (ξ_m − ξ̄) and E[U] = ((1−ᾱ)/v)² exactly.
        let g = GaussianMixture::new(
            vec![Component {
                weight: 1.0,
                mean: vec![0.3, -0.2, 0.5],
                std: 0.4,
            }],
            sched(),
        )
        .unwrap();
        let counting = Counting(&g, Cell::new(0));
        let (b, t) = (64usize, 300.0);
        let dev = Device::Cpu;
        let idx: Vec<u64> = (0..b as u64).collect();
        let s = SeedStreams::new(5);
        let x_t = Tensor::from_vec(s.purpose("x").normals(&idx, None, 3), (b, 3), &dev)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let eps = g.eps(&x_t, t).unwrap();
        let spec = AuSpec {
            m,
            ddof: 1,
            compat,
            clip_sample: None,
        };
        let u = uncertainty(
            &counting,
            &sched(),
            &x_t,
            &eps,
            t,
            7,
            &idx,
            &s.purpose("au-renoise"),
            &spec,
        )
        .unwrap();
        let ab = sched().alpha_bar_at(t);
        let v = ab * 0.16 + 1.0 - ab;
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        (
            flat(&u),
            counting.1.get(),
            ((1.0 - ab) / v).powi(2),
            flat(&eps),
        )
    }

    #[test]
    fn paper_variance_matches_the_closed_form_and_costs_one_call() {
        let (u, calls, expected, _) = setup(400, AuCompat::Paper);
        assert_eq!(
            calls, 1,
            "the M perturbations must be one batched denoiser call"
        );
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        // 192 pixels × 400 draws: the relative standard error of the pooled variance is ≈ 0.5%.
        approx::assert_relative_eq!(mean, expected, max_relative = 0.03);
    }

    #[test]
    fn release_convention_centres_on_the_original_eps() {
        // Released code: U = (1/M) Σ (ε_m − ε)². For this linear ε*, ε_m − ε = (1−ᾱ)/v · (ξ_m − ε),
        // so E[U_release] = ((1−ᾱ)/v)² (1 + ε²) per pixel: the release inflates U by the squared
        // prediction itself, which the paper's variance about the mean does not.
        let (paper, _, _, _) = setup(8, AuCompat::Paper);
        let (release, _, k, eps) = setup(8, AuCompat::AuRelease);
        assert!(paper
            .iter()
            .zip(&release)
            .any(|(a, b)| (a - b).abs() > 1e-6));
        let ratio: f64 = release
            .iter()
            .zip(&eps)
            .map(|(u, e)| u / (k * (1.0 + e * e)))
            .sum::<f64>()
            / release.len() as f64;
        // 192 pixels × 8 draws: the pooled ratio has a standard error of about 4%.
        approx::assert_relative_eq!(ratio, 1.0, max_relative = 0.12);
    }

    #[test]
    fn bad_settings_name_the_key() {
        let e = AuSpec {
            m: 1,
            ddof: 0,
            compat: AuCompat::Paper,
            clip_sample: None,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("au.m"), "{e}");
        let e = AuSpec {
            m: 2,
            ddof: 2,
            compat: AuCompat::Paper,
            clip_sample: None,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("au.ddof"), "{e}");
    }
}
