//! The exact ε of a Gaussian-mixture data distribution at any DDPM timestep — an oracle denoiser
//! for tests and for the `smoke` scale of image artifacts.
//!
//! Data p(x₀) = Σ_k w_k N(μ_k, s_k² I). Under q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I) the marginal is
//! again a mixture, p_t(x) = Σ_k w_k N(x; √ᾱ_t μ_k, v_k I) with v_k = ᾱ_t s_k² + 1 − ᾱ_t, whose score
//! is ∇ log p_t(x) = −Σ_k r_k(x) (x − √ᾱ_t μ_k)/v_k with responsibilities
//! r_k ∝ w_k N(x; √ᾱ_t μ_k, v_k I). The optimal ε-predictor is ε*(x, t) = −√(1 − ᾱ_t) ∇ log p_t(x)
//! (Ho et al. 2020; Song et al. 2021, Eq. 3 with the VP parameterisation).
//!
//! Two implementations of the same formula: [`GaussianMixture::eps_at`] (one point, f64 loops,
//! the reference) and the [`Denoiser`] impl, built from candle ops in the input's dtype so that
//! autograd can differentiate through it (AU guidance, Alg. 2). A test holds them together.

use candle_core::Tensor;

use super::Denoiser;
use crate::error::{Error, Result};
use crate::schedule::NoiseSchedule;

/// One isotropic component.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub weight: f64,
    pub mean: Vec<f64>,
    pub std: f64,
}

/// A Gaussian mixture with its exact ε under a given schedule.
#[derive(Debug, Clone)]
pub struct GaussianMixture {
    components: Vec<Component>,
    dim: usize,
    schedule: NoiseSchedule,
}

impl GaussianMixture {
    /// Weights are normalised; every mean must have the same dimension and every std be > 0.
    pub fn new(components: Vec<Component>, schedule: NoiseSchedule) -> Result<Self> {
        let dim = components
            .first()
            .map(|c| c.mean.len())
            .ok_or_else(|| Error::invalid("gaussian mixture", "needs at least one component"))?;
        if components
            .iter()
            .any(|c| c.mean.len() != dim || c.std <= 0.0 || c.weight <= 0.0)
        {
            return Err(Error::invalid(
                "gaussian mixture",
                "components need equal dimensions, std > 0 and weight > 0",
            ));
        }
        let total: f64 = components.iter().map(|c| c.weight).sum();
        let components = components
            .into_iter()
            .map(|c| Component {
                weight: c.weight / total,
                ..c
            })
            .collect();
        Ok(Self {
            components,
            dim,
            schedule,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Exact ε*(x, t) for one point.
    pub fn eps_at(&self, x: &[f64], t: f64) -> Vec<f64> {
        let ab = self.schedule.alpha_bar_at(t);
        let sab = ab.sqrt();
        // Log responsibilities, stabilised by their maximum.
        let logs: Vec<f64> = self
            .components
            .iter()
            .map(|c| {
                let v = ab * c.std * c.std + 1.0 - ab;
                let d2: f64 = x
                    .iter()
                    .zip(&c.mean)
                    .map(|(xi, mi)| (xi - sab * mi).powi(2))
                    .sum();
                c.weight.ln() - 0.5 * self.dim as f64 * v.ln() - 0.5 * d2 / v
            })
            .collect();
        let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let r: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
        let z: f64 = r.iter().sum();
        let mut score = vec![0.0; self.dim];
        for (c, rk) in self.components.iter().zip(&r) {
            let v = ab * c.std * c.std + 1.0 - ab;
            for (s, (xi, mi)) in score.iter_mut().zip(x.iter().zip(&c.mean)) {
                *s -= rk / z * (xi - sab * mi) / v;
            }
        }
        score.iter().map(|s| -(1.0 - ab).sqrt() * s).collect()
    }

    /// Mean and per-dimension variance of the data distribution.
    pub fn moments(&self) -> (Vec<f64>, Vec<f64>) {
        let mut mean = vec![0.0; self.dim];
        let mut second = vec![0.0; self.dim];
        for c in &self.components {
            for d in 0..self.dim {
                mean[d] += c.weight * c.mean[d];
                second[d] += c.weight * (c.mean[d] * c.mean[d] + c.std * c.std);
            }
        }
        let var = second.iter().zip(&mean).map(|(s, m)| s - m * m).collect();
        (mean, var)
    }
}

impl Denoiser for GaussianMixture {
    /// `x_t` of shape (…, D); rows are independent. Candle ops only (differentiable).
    fn eps(&self, x_t: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let dims = x_t.dims().to_vec();
        let (d, k) = (self.dim, self.components.len());
        let (dtype, dev) = (x_t.dtype(), x_t.device());
        let ab = self.schedule.alpha_bar_at(t);
        let sab = ab.sqrt();
        let v: Vec<f64> = self
            .components
            .iter()
            .map(|c| ab * c.std * c.std + 1.0 - ab)
            .collect();
        let centers: Vec<f64> = self
            .components
            .iter()
            .flat_map(|c| c.mean.iter().map(|m| sab * m))
            .collect();
        let bias: Vec<f64> = self
            .components
            .iter()
            .zip(&v)
            .map(|(c, v)| c.weight.ln() - 0.5 * d as f64 * v.ln())
            .collect();
        let inv_v: Vec<f64> = v.iter().map(|v| 1.0 / v).collect();
        let to = |data: Vec<f64>, shape: (usize, usize)| {
            Tensor::from_vec(data, shape, dev).and_then(|t| t.to_dtype(dtype))
        };
        let centers = to(centers, (k, d))?.unsqueeze(0)?; // (1, K, D)
        let bias = to(bias, (1, k))?;
        let inv_v = to(inv_v, (1, k))?;
        let n = x_t.elem_count() / d;
        let diff = x_t.reshape((n, 1, d))?.broadcast_sub(&centers)?; // (N, K, D)
        let d2 = diff.sqr()?.sum(2)?; // (N, K)
        let logits = bias.broadcast_sub(&(d2.broadcast_mul(&inv_v)? * 0.5)?)?;
        let r = candle_nn::ops::softmax(&logits, 1)?;
        let w = r.broadcast_mul(&inv_v)?.unsqueeze(2)?; // r_k / v_k, (N, K, 1)
        let eps = (diff.broadcast_mul(&w)?.sum(1)? * (1.0 - ab).sqrt())?;
        eps.reshape(dims)
    }
}

/// The analytic oracle as a [`super::Network`]: an unconditional ε-model whose forward is its
/// exact ε (rows with different times are evaluated row by row).
impl super::Network for GaussianMixture {
    fn prediction(&self) -> super::Prediction {
        super::Prediction::Epsilon
    }

    fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        labels: Option<&Tensor>,
        _mode: &mut super::Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        if labels.is_some() {
            candle_core::bail!("the Gaussian-mixture oracle is unconditional; labels were given");
        }
        match t {
            [t] => self.eps(x, *t),
            ts if ts.windows(2).all(|w| w[0] == w[1]) && !ts.is_empty() => self.eps(x, ts[0]),
            ts => {
                let n = x.dim(0)?;
                if ts.len() != n {
                    candle_core::bail!("{} times for a batch of {n}", ts.len());
                }
                let rows = (0..n)
                    .map(|i| self.eps(&x.narrow(0, i, 1)?, ts[i]))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)
            }
        }
    }

    fn name(&self) -> &str {
        "gaussian-mixture"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleKind;

    fn sched() -> NoiseSchedule {
        NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000)
    }

    #[test]
    fn single_gaussian_has_the_closed_form_eps() {
        // One component N(μ, s²): ε* = √(1−ᾱ)(x − √ᾱ μ)/(ᾱ s² + 1 − ᾱ).
        let g = GaussianMixture::new(
            vec![Component {
                weight: 1.0,
                mean: vec![0.5, -1.0],
                std: 0.3,
            }],
            sched(),
        )
        .unwrap();
        let ab = sched().alpha_bar(Some(400));
        let v = ab * 0.09 + 1.0 - ab;
        let x = [0.2, 0.7];
        let e = g.eps_at(&x, 400.0);
        approx::assert_relative_eq!(
            e[0],
            (1.0 - ab).sqrt() * (0.2 - ab.sqrt() * 0.5) / v,
            max_relative = 1e-12
        );
        approx::assert_relative_eq!(
            e[1],
            (1.0 - ab).sqrt() * (0.7 + ab.sqrt()) / v,
            max_relative = 1e-12
        );
    }

    #[test]
    fn eps_matches_finite_differences_of_the_log_density() {
        // ε* = −√(1−ᾱ) ∇ log p_t: compare with central differences of log p_t computed directly.
        let g = GaussianMixture::new(
            vec![
                Component {
                    weight: 0.3,
                    mean: vec![-1.0, 0.0],
                    std: 0.2,
                },
                Component {
                    weight: 0.7,
                    mean: vec![1.0, 0.5],
                    std: 0.4,
                },
            ],
            sched(),
        )
        .unwrap();
        let t = 250;
        let ab = sched().alpha_bar(Some(t));
        let log_p = |x: &[f64]| -> f64 {
            g.components()
                .iter()
                .map(|c| {
                    let v = ab * c.std * c.std + 1.0 - ab;
                    let d2: f64 = x
                        .iter()
                        .zip(&c.mean)
                        .map(|(xi, mi)| (xi - ab.sqrt() * mi).powi(2))
                        .sum();
                    c.weight * (2.0 * std::f64::consts::PI * v).powf(-1.0) * (-0.5 * d2 / v).exp()
                })
                .sum::<f64>()
                .ln()
        };
        let x = [0.1, 0.3];
        let e = g.eps_at(&x, t as f64);
        let h = 1e-5;
        for d in 0..2 {
            let (mut a, mut b) = (x, x);
            a[d] += h;
            b[d] -= h;
            let grad = (log_p(&a) - log_p(&b)) / (2.0 * h);
            approx::assert_relative_eq!(e[d], -(1.0 - ab).sqrt() * grad, max_relative = 1e-6);
        }
    }

    #[test]
    fn graph_eps_equals_the_pointwise_reference() {
        // The candle-op Denoiser impl and eps_at compute one formula two ways; f64 agreement to
        // rounding, at an integer and at a real (interpolated) model time.
        let g = GaussianMixture::new(
            vec![
                Component {
                    weight: 0.2,
                    mean: vec![-1.0, 0.5, 0.0],
                    std: 0.1,
                },
                Component {
                    weight: 0.8,
                    mean: vec![1.0, -0.5, 2.0],
                    std: 0.6,
                },
            ],
            sched(),
        )
        .unwrap();
        let pts = [0.3, -0.2, 1.1, -2.0, 0.4, 0.0, 0.9, 0.9, -0.7];
        let x = Tensor::from_vec(pts.to_vec(), (3, 3), &candle_core::Device::Cpu).unwrap();
        for t in [0.0, 137.0, 611.5] {
            let got = g.eps(&x, t).unwrap().to_vec2::<f64>().unwrap();
            for (row, p) in got.iter().zip(pts.chunks(3)) {
                for (a, b) in row.iter().zip(g.eps_at(p, t)) {
                    approx::assert_relative_eq!(*a, b, max_relative = 1e-12, epsilon = 1e-14);
                }
            }
        }
    }

    #[test]
    fn bad_components_are_rejected() {
        assert!(GaussianMixture::new(vec![], sched()).is_err());
        let bad = Component {
            weight: 1.0,
            mean: vec![0.0],
            std: 0.0,
        };
        assert!(GaussianMixture::new(vec![bad], sched()).is_err());
    }
}
