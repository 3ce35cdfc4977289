//! Fréchet Inception Distance (Heusel et al. 2017), computed as pytorch-fid 0.3.0 does and
//! checked against its `calculate_frechet_distance` (tests/metrics_fid_prdc.rs).
//!
//! For Gaussians fitted to two feature sets, N(μ₁, Σ₁) and N(μ₂, Σ₂),
//!
//!   FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}.
//!
//! **Statistics** ([`FeatureStats`]) are accumulated in f64 over batches with Chan et al.'s
//! pairwise update (batch mean, batch-centred scatter matrix from one gemm, then the merge
//! M₂ ← M₂ + M₂,b + δδᵀ·n·n_b/(n + n_b)), so no feature matrix is ever held whole and no
//! catastrophic E[xxᵀ] − μμᵀ cancellation occurs. Σ = M₂/(n − 1): unbiased, as `np.cov` (what
//! pytorch-fid and the ADM evaluator call) computes it.
//!
//! **Trace of the square root.** pytorch-fid calls `scipy.linalg.sqrtm(Σ₁Σ₂)` (a Schur
//! decomposition of a non-symmetric matrix, ≈ 12 s for 2048-d here) and takes the real part. Only
//! the trace is needed, and Σ₁Σ₂ is similar to a symmetric positive semi-definite matrix. With a
//! Cholesky factor Σ₁ = L Lᵀ, Σ₁Σ₂ = L (Lᵀ Σ₂ L) L⁻¹, so
//!
//!   tr (Σ₁Σ₂)^{1/2} = Σᵢ √μᵢ,   μᵢ the eigenvalues of the symmetric PSD matrix Lᵀ Σ₂ L:
//!
//! one Cholesky factorisation, two matrix products and one eigenvalues-only decomposition (faer,
//! in `diffuq-linalg`), all backward stable. When Σ₁ is singular (fewer samples than dimensions)
//! Cholesky breaks down and Σ₁ = V Λ Vᵀ, W = V Λ^{1/2} take its place: Σ₁Σ₂ = V Λ^{1/2}
//! (Wᵀ Σ₂ W) Λ^{-1/2} Vᵀ on the range of Σ₁, and the zero eigenvalues contribute 0. Neither path
//! needs pytorch-fid's ε·I retry. Eigenvalues that rounding pushes below zero are clamped to 0
//! (they are at the level of 1e-16·‖Σ‖); a covariance with a clearly negative eigenvalue is not a
//! covariance and is rejected.
//!
//! **Files.** [`GaussianStats::read_npz`] reads pytorch-fid's `.npz` (`mu`, `sigma`, written by
//! `np.savez`) and the ADM evaluator's reference batches (`VIRTUAL_*.npz`: `arr_0` images, `mu`,
//! `sigma` of pool_3, `mu_s`, `sigma_s` of the spatial features; [`ReferenceBatch::read`] reads
//! both pairs without loading the images). [`GaussianStats::write_npz`] writes pytorch-fid's
//! layout atomically. Features for a set of images are cached by content hash in
//! [`crate::features::cache`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result, TensorContext};
use crate::metrics::realism::Rows;

/// Tolerance of the symmetry check, relative to the largest |Σᵢⱼ|: `np.cov` output is symmetric
/// to rounding (≈ 1e-16); anything above this is not a covariance matrix.
const SYMMETRY_TOL: f64 = 1e-8;
/// A covariance eigenvalue below −this·λ_max is rejected as "not positive semi-definite";
/// rounding alone gives ≈ d·1e-16.
const PSD_TOL: f64 = 1e-6;

/// Mean and covariance of a feature set: the (μ, Σ) pytorch-fid stores.
#[derive(Debug, Clone)]
pub struct GaussianStats {
    /// Feature dimension d.
    pub dim: usize,
    /// μ, length d.
    pub mu: Vec<f64>,
    /// Σ, d × d row-major (symmetric).
    pub sigma: Vec<f64>,
    /// Number of samples the statistics came from, when known (files do not record it).
    pub n: Option<usize>,
    /// Where the statistics came from (a file and its arrays, or "features"); named in errors.
    pub source: String,
}

impl GaussianStats {
    /// Wraps μ and Σ after checking shapes, finiteness and symmetry; `source` names them in errors.
    pub fn new(mu: Vec<f64>, sigma: Vec<f64>, source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let dim = mu.len();
        if dim == 0 {
            return Err(Error::invalid(
                format!("{source}: mu"),
                "is empty; expected a feature mean",
            ));
        }
        if sigma.len() != dim * dim {
            return Err(Error::invalid(
                format!("{source}: sigma"),
                format!(
                    "{} values; expected {dim} × {dim} to match mu of length {dim}",
                    sigma.len()
                ),
            ));
        }
        Rows::new(&mu, dim).validate(&format!("{source}: mu"))?;
        Rows::new(&sigma, dim).validate(&format!("{source}: sigma"))?;
        let scale = sigma.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for i in 0..dim {
            for j in 0..i {
                let (a, b) = (sigma[i * dim + j], sigma[j * dim + i]);
                if (a - b).abs() > SYMMETRY_TOL * scale {
                    return Err(Error::invalid(
                        format!("{source}: sigma"),
                        format!(
                            "is not symmetric: [{i}, {j}] = {a} but [{j}, {i}] = {b}; expected a \
                             covariance matrix"
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            dim,
            mu,
            sigma,
            n: None,
            source,
        })
    }

    /// Statistics of one in-memory feature matrix (rows = samples); see [`FeatureStats`].
    pub fn from_features(features: Rows, what: &str) -> Result<Self> {
        let mut acc = FeatureStats::new(features.dim());
        acc.update(features, what)?;
        acc.finish(what)
    }

    /// Reads `mu` and `sigma` from an `.npz` (pytorch-fid's `np.savez(path, mu=mu, sigma=sigma)`,
    /// or an ADM reference batch, whose `arr_0` images are not read). Any float dtype.
    pub fn read_npz(path: &Path) -> Result<Self> {
        read_pair(&open_npz(path)?, path, "mu", "sigma")
    }

    /// [`GaussianStats::read_npz`] from an archive the caller already opened.
    pub(crate) fn from_npz(npz: &candle_core::npy::NpzTensors, path: &Path) -> Result<Self> {
        read_pair(npz, path, "mu", "sigma")
    }

    /// Writes pytorch-fid's layout (`mu` (d,), `sigma` (d, d), float64) atomically: a temporary
    /// file in the same directory, renamed into place.
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        let d = self.dim;
        let mu = Tensor::from_slice(&self.mu, d, &Device::Cpu).ctx("stats: mu")?;
        let sigma = Tensor::from_slice(&self.sigma, (d, d), &Device::Cpu).ctx("stats: sigma")?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        crate::tracking::write_atomically(path, |tmp| {
            Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], tmp).map_err(|e| {
                Error::invalid(format!("{}", path.display()), format!("writing npz: {e}"))
            })
        })
    }
}

/// The statistics stored in an ADM evaluator reference batch (`openai/guided-diffusion`
/// `evaluations/evaluator.py`): pool_3 (2048-d, FID) and the first 7 channels of mixed_6/conv
/// (spatial, sFID).
#[derive(Debug, Clone)]
pub struct ReferenceBatch {
    pub pool: GaussianStats,
    /// `mu_s`, `sigma_s`, when the file has them.
    pub spatial: Option<GaussianStats>,
    /// Shape of `arr_0` (the reference images), when present; the images are not loaded.
    pub images_shape: Option<Vec<usize>>,
}

impl ReferenceBatch {
    pub fn read(path: &Path) -> Result<Self> {
        let npz = open_npz(path)?;
        let pool = read_pair(&npz, path, "mu", "sigma")?;
        let has = |n: &str| npz.names().iter().any(|m| m.as_str() == n);
        let spatial = if has("mu_s") && has("sigma_s") {
            Some(read_pair(&npz, path, "mu_s", "sigma_s")?)
        } else {
            None
        };
        let images_shape = if has("arr_0") {
            let (shape, _) = npz
                .get_shape_and_dtype("arr_0")
                .map_err(|e| npz_err(path, "arr_0", e))?;
            Some(shape.dims().to_vec())
        } else {
            None
        };
        Ok(Self {
            pool,
            spatial,
            images_shape,
        })
    }
}

fn npz_err(path: &Path, array: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{} array `{array}`", path.display()), e.to_string())
}

fn open_npz(path: &Path) -> Result<candle_core::npy::NpzTensors> {
    if !path.exists() {
        return Err(Error::invalid(
            format!("{}", path.display()),
            "no such statistics file; expected an .npz with arrays `mu` and `sigma`",
        ));
    }
    crate::data::npy::open_npz(path).map_err(|e| {
        Error::invalid(
            format!("{}", path.display()),
            format!("not a readable .npz ({e}); expected arrays `mu` and `sigma`"),
        )
    })
}

fn read_pair(
    npz: &candle_core::npy::NpzTensors,
    path: &Path,
    mu_name: &str,
    sigma_name: &str,
) -> Result<GaussianStats> {
    let get = |name: &str| -> Result<Tensor> {
        let t = npz
            .get(name)
            .map_err(|e| npz_err(path, name, e))?
            .ok_or_else(|| {
                let mut names: Vec<&str> = npz.names().iter().map(|s| s.as_str()).collect();
                names.sort_unstable();
                npz_err(
                    path,
                    name,
                    format!("is missing (the file has: {})", names.join(", ")),
                )
            })?;
        if !t.dtype().is_float() {
            return Err(npz_err(
                path,
                name,
                format!("has dtype {:?}; expected a float array", t.dtype()),
            ));
        }
        Ok(t)
    };
    let (mu, sigma) = (get(mu_name)?, get(sigma_name)?);
    let d = match mu.dims() {
        [d] => *d,
        s => {
            return Err(npz_err(
                path,
                mu_name,
                format!("has shape {s:?}; expected (d,)"),
            ))
        }
    };
    if sigma.dims() != [d, d] {
        return Err(npz_err(
            path,
            sigma_name,
            format!(
                "has shape {:?}; expected ({d}, {d}) to match `{mu_name}` of shape ({d},)",
                sigma.dims()
            ),
        ));
    }
    let to_vec = |t: &Tensor, name: &str| {
        t.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(|e| npz_err(path, name, e))
    };
    GaussianStats::new(
        to_vec(&mu, mu_name)?,
        to_vec(&sigma, sigma_name)?,
        format!("{} (`{mu_name}`, `{sigma_name}`)", path.display()),
    )
}

/// Streaming mean and covariance of feature batches (f64, Chan et al.'s pairwise merge; see the
/// module doc). Memory O(d²), independent of the number of samples.
#[derive(Debug, Clone)]
pub struct FeatureStats {
    dim: usize,
    n: usize,
    mean: Vec<f64>,
    /// Σ (x − mean)(x − mean)ᵀ over the samples so far, d × d row-major.
    m2: Vec<f64>,
}

impl FeatureStats {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            n: 0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim * dim],
        }
    }

    /// Samples accumulated so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Adds a batch of feature rows; `what` names the batch in errors (wrong dimension,
    /// non-finite values).
    pub fn update(&mut self, batch: Rows, what: &str) -> Result<()> {
        batch.validate(what)?;
        if batch.dim() != self.dim {
            return Err(Error::invalid(
                what,
                format!(
                    "feature dimension {}; expected {} (the statistics' dimension)",
                    batch.dim(),
                    self.dim
                ),
            ));
        }
        let (nb, d) = (batch.len(), self.dim);
        if nb == 0 {
            return Ok(());
        }
        let mut bmean = vec![0.0; d];
        for i in 0..nb {
            for (m, x) in bmean.iter_mut().zip(batch.row(i)) {
                *m += x;
            }
        }
        bmean.iter_mut().for_each(|m| *m /= nb as f64);
        let mut centred = Vec::with_capacity(nb * d);
        for i in 0..nb {
            centred.extend(batch.row(i).iter().zip(&bmean).map(|(x, m)| x - m));
        }
        let total = self.n + nb;
        // δ = batch mean − running mean; M₂ += Bcᵀ Bc + δδᵀ·n·n_b/(n + n_b).
        let delta: Vec<f64> = bmean.iter().zip(&self.mean).map(|(b, m)| b - m).collect();
        let linalg = |e: diffuq_linalg::LinalgError| Error::invalid(what, e.to_string());
        diffuq_linalg::add_gram(&mut self.m2, &centred, nb, d, 1.0).map_err(linalg)?;
        if self.n > 0 {
            let w = (self.n as f64) * (nb as f64) / (total as f64);
            diffuq_linalg::add_gram(&mut self.m2, &delta, 1, d, w).map_err(linalg)?;
        }
        let frac = nb as f64 / total as f64;
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * frac;
        }
        self.n = total;
        Ok(())
    }

    /// Adds a (samples, features) tensor of any float dtype.
    pub fn update_tensor(&mut self, batch: &Tensor, what: &str) -> Result<()> {
        let (v, d) = crate::metrics::realism::rows_from_tensor(what, batch)?;
        self.update(Rows::new(&v, d), what)
    }

    /// μ and the unbiased Σ = M₂/(n − 1) (symmetrised). Needs at least two samples.
    pub fn finish(&self, what: &str) -> Result<GaussianStats> {
        if self.n < 2 {
            return Err(Error::invalid(
                what,
                format!("{} samples; a covariance needs at least 2", self.n),
            ));
        }
        let d = self.dim;
        let s = 1.0 / (self.n as f64 - 1.0);
        let mut sigma = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                sigma[i * d + j] = 0.5 * (self.m2[i * d + j] + self.m2[j * d + i]) * s;
            }
        }
        Ok(GaussianStats {
            dim: d,
            mu: self.mean.clone(),
            sigma,
            n: Some(self.n),
            source: what.to_string(),
        })
    }
}

/// The three terms of the Fréchet distance, for reports and diagnosis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrechetTerms {
    /// ‖μ₁ − μ₂‖².
    pub mean: f64,
    /// tr Σ₁ + tr Σ₂.
    pub trace: f64,
    /// tr (Σ₁Σ₂)^{1/2}.
    pub trace_sqrt: f64,
    /// Whether Σ₁ was factored by Cholesky (positive definite) or, singular, by its
    /// eigendecomposition (module doc).
    pub path: SqrtPath,
}

/// Which factorisation of Σ₁ [`frechet_terms`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqrtPath {
    Cholesky,
    Eigen,
}

impl FrechetTerms {
    /// FD = mean + trace − 2·trace_sqrt.
    pub fn distance(&self) -> f64 {
        self.mean + self.trace - 2.0 * self.trace_sqrt
    }
}

/// Fréchet distance between two Gaussians (module doc): pytorch-fid's value, computed through
/// a Cholesky factor (or an eigendecomposition, for singular Σ₁) and symmetric eigenvalues.
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64> {
    Ok(frechet_terms(a, b)?.distance())
}

/// The terms of [`frechet_distance`].
pub fn frechet_terms(a: &GaussianStats, b: &GaussianStats) -> Result<FrechetTerms> {
    if a.dim != b.dim {
        return Err(Error::invalid(
            format!("{} vs {}", a.source, b.source),
            format!(
                "feature dimensions differ ({} vs {}); FID needs statistics of the same features",
                a.dim, b.dim
            ),
        ));
    }
    let d = a.dim;
    let mean = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y).powi(2)).sum();
    let trace = (0..d)
        .map(|i| a.sigma[i * d + i] + b.sigma[i * d + i])
        .sum();
    let (trace_sqrt, path) = trace_sqrt_product(a, b, false)?;
    Ok(FrechetTerms {
        mean,
        trace,
        trace_sqrt,
        path,
    })
}

/// tr (Σ_a Σ_b)^{1/2} = Σ √eig(Wᵀ Σ_b W), W the Cholesky factor of Σ_a, or V Λ^{1/2} from
/// Σ_a = V Λ Vᵀ when Σ_a is singular or `force_eigen` (which tests use to compare the paths).
pub fn trace_sqrt_product(
    a: &GaussianStats,
    b: &GaussianStats,
    force_eigen: bool,
) -> Result<(f64, SqrtPath)> {
    let solve = if force_eigen {
        diffuq_linalg::whitened_product_eigenvalues_eigen
    } else {
        diffuq_linalg::whitened_product_eigenvalues
    };
    let (factor, mu) = solve(&a.sigma, &b.sigma, a.dim)
        .map_err(|e| Error::invalid(format!("{} vs {}", a.source, b.source), e.to_string()))?;
    let path = match &factor {
        diffuq_linalg::Factor::Cholesky => SqrtPath::Cholesky,
        diffuq_linalg::Factor::Eigen(lambda) => {
            check_psd(&a.source, lambda)?;
            SqrtPath::Eigen
        }
    };
    // Σ_b's own PSD-ness shows in μ: Wᵀ Σ_b W is PSD whenever Σ_b is (on Σ_a's range).
    check_psd(&format!("{} (through {})", b.source, a.source), &mu)?;
    Ok((mu.iter().map(|v| v.max(0.0).sqrt()).sum(), path))
}

fn check_psd(what: &str, eigenvalues: &[f64]) -> Result<()> {
    let max = eigenvalues.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if let Some(min) = eigenvalues.iter().copied().reduce(f64::min) {
        if min < -PSD_TOL * max {
            return Err(Error::invalid(
                format!("{what}: sigma"),
                format!(
                    "has eigenvalue {min:.3e} (largest {max:.3e}); expected a positive \
                     semi-definite covariance"
                ),
            ));
        }
    }
    Ok(())
}

/// Where [`GaussianStats::write_npz`]-style statistics for a named feature set live in a cache
/// directory: `<dir>/<name>.npz`.
pub fn stats_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.npz"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed form: for commuting (diagonal) covariances tr (Σ₁Σ₂)^{1/2} = Σ √(aᵢ bᵢ), so
    /// FD = Σ (μ₁ − μ₂)² + Σ (√aᵢ − √bᵢ)².
    #[test]
    fn diagonal_closed_form() {
        let d = 5;
        let diag = |v: &[f64]| {
            let mut s = vec![0.0; d * d];
            for i in 0..d {
                s[i * d + i] = v[i];
            }
            s
        };
        let (a, b) = ([1.0, 4.0, 0.25, 9.0, 0.0], [4.0, 1.0, 1.0, 1.0, 2.0]);
        let s1 = GaussianStats::new(vec![0.0; d], diag(&a), "a").unwrap();
        let s2 = GaussianStats::new(vec![1.0, 0.0, 0.0, 0.0, 2.0], diag(&b), "b").unwrap();
        let want: f64 = 5.0
            + a.iter()
                .zip(&b)
                .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        approx::assert_relative_eq!(
            frechet_distance(&s1, &s2).unwrap(),
            want,
            max_relative = 1e-12
        );
        approx::assert_abs_diff_eq!(frechet_distance(&s1, &s1).unwrap(), 0.0, epsilon = 1e-12);
    }

    #[test]
    fn streaming_equals_one_batch() {
        let (n, d) = (37, 4);
        let x: Vec<f64> = (0..n * d)
            .map(|i| ((i * 7919) % 101) as f64 / 10.0 + 1e3)
            .collect();
        let whole = GaussianStats::from_features(Rows::new(&x, d), "x").unwrap();
        let mut acc = FeatureStats::new(d);
        for chunk in [0..5, 5..6, 6..30, 30..37] {
            acc.update(Rows::new(&x[chunk.start * d..chunk.end * d], d), "x")
                .unwrap();
        }
        let parts = acc.finish("x").unwrap();
        for (p, w) in parts.sigma.iter().zip(&whole.sigma) {
            approx::assert_relative_eq!(p, w, max_relative = 1e-11, epsilon = 1e-11);
        }
        // Direct two-pass formula.
        for j in 0..d {
            let m: f64 = (0..n).map(|i| x[i * d + j]).sum::<f64>() / n as f64;
            let v: f64 = (0..n).map(|i| (x[i * d + j] - m).powi(2)).sum::<f64>() / (n as f64 - 1.0);
            approx::assert_relative_eq!(parts.mu[j], m, max_relative = 1e-14);
            approx::assert_relative_eq!(parts.sigma[j * d + j], v, max_relative = 1e-11);
        }
    }

    #[test]
    fn rejects_bad_stats() {
        let e = GaussianStats::new(vec![0.0; 2], vec![1.0, 0.5, 0.0, 1.0], "s").unwrap_err();
        assert!(e.to_string().contains("not symmetric"), "{e}");
        let e = GaussianStats::new(vec![0.0; 2], vec![1.0; 3], "s").unwrap_err();
        assert!(e.to_string().contains("expected 2 × 2"), "{e}");
        let neg = GaussianStats::new(vec![0.0; 2], vec![1.0, 0.0, 0.0, -1.0], "neg").unwrap();
        let ok = GaussianStats::new(vec![0.0; 2], vec![1.0, 0.0, 0.0, 1.0], "ok").unwrap();
        let e = frechet_distance(&neg, &ok).unwrap_err();
        assert!(e.to_string().contains("positive semi-definite"), "{e}");
        let e = FeatureStats::new(3).finish("one").unwrap_err();
        assert!(e.to_string().contains("at least 2"), "{e}");
    }
}
