//! AU Eq. 9 ("Fisher–variance relation") and what Alg. 1's U_t is with an exact denoiser.
//!
//! Stated precisely, with q_t the noised mixture, s = ∇ log q_t = −ε*/σ_t (σ_t² = 1 − ᾱ_t) and, for
//! p_data = Σ_k w_k N(μ_k, s_k² I): v_k = ᾱ_t s_k² + σ_t², g_k(x) = −(x − √ᾱ_t μ_k)/v_k, r_k(x) the
//! responsibilities, the closed-form Hessian ∇² log q_t = Σ_k r_k (g_k g_kᵀ − I/v_k) − s sᵀ.
//!
//! 1. Eq. 9's identity E_q[s sᵀ] = −E_q[∇² log q_t] (the information identity): for random 1-D and
//!    2-D mixtures and timesteps (proptest), the Monte-Carlo mean over x ~ q_t of
//!    Σ_k r_k (g_k g_kᵀ − I/v_k) — the difference of the two sides — is zero within 5 standard
//!    errors, entry by entry. The Hessian itself is checked against central differences of the
//!    exact score (`GaussianMixture::eps_at`). This part checks this file's own score and Fisher
//!    information, which the next part then uses as the independent reference.
//! 2. What U_t is: Alg. 1 re-noises x̂₀ at the same t, so with ε* exact and M → ∞,
//!    U_t(x̂₀) = σ_t² Var_{x ~ N(√ᾱ x̂₀, σ_t² I)}[s(x)] per coordinate. For one Gaussian
//!    (s linear) this is U_t = σ_t⁴/v², independent of x̂₀, while the Fisher information is
//!    F_t = E[s²] = −E[∇² log q_t] = 1/v. Hence **U_t = σ_t² · (σ_t²/v) · F_t**: Eq. 9's "≈" (in ε
//!    units, U ≈ σ² F) holds up to the factor σ_t²/v ∈ (0, 1], which tends to 1 as t → T and to 0
//!    as t → 0. Property tests run diffuq's Alg. 1 (`uq::au::uncertainty`, the exact mixture ε as
//!    the network, M = 2..8) on random Gaussians (D = 1..3, any x̂₀, random t), against F_t from a
//!    Monte-Carlo over q_t with this file's score, and on random 1-D/2-D mixtures against this
//!    file's Monte-Carlo of σ_t² Var_kernel[s]; tolerance 5 combined standard errors, measured
//!    (stated at each test). Each of these changes to `uq::au` makes both fail (checked by hand):
//!    the divisor M instead of M − ddof, ᾱ taken at t − 20, the network evaluated at t + 20, the
//!    variance centred on the sampler's ε instead of the mean of the ε_m. Also at fixed
//!    t = 999 (factor > 0.99), t = 500 and t = 10 (factor < 0.1) against the closed form.
//! 3. For a two-mode 1-D mixture at a moderate t, U_t at x̂₀ midway between the modes is more than
//!    5× (measured ≈ 9×) U_t at a mode centre: the variance of the score is large where q_t's
//!    curvature changes sign (AU Sec. 3.5's reading of U_t as curvature).
//!
//! Expected numbers come from these closed forms and this file's own Monte-Carlo; the tolerances
//! are stated inline.

use candle_core::{DType, Device, Tensor};
use diffuq::model::gmm::{Component, GaussianMixture};
use diffuq::schedule::{NoiseSchedule, ScheduleKind};
use diffuq::seed::SeedStreams;
use diffuq::uq::au::{uncertainty, AuCompat, AuSpec};
use proptest::prelude::*;
use rand::Rng;

fn sched() -> NoiseSchedule {
    NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000)
}

/// Score, and Σ_k r_k (g_k g_kᵀ − I/v_k) (row-major D×D), at x.
fn score_and_curvature_term(g: &GaussianMixture, ab: f64, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let d = x.len();
    let comps = g.components();
    let logs: Vec<f64> = comps
        .iter()
        .map(|c| {
            let v = ab * c.std * c.std + 1.0 - ab;
            let d2: f64 = x
                .iter()
                .zip(&c.mean)
                .map(|(xi, mi)| (xi - ab.sqrt() * mi).powi(2))
                .sum();
            c.weight.ln() - 0.5 * d as f64 * v.ln() - 0.5 * d2 / v
        })
        .collect();
    let mx = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logs.iter().map(|l| (l - mx).exp()).sum();
    let mut s = vec![0.0; d];
    let mut term = vec![0.0; d * d];
    for (c, l) in comps.iter().zip(&logs) {
        let r = (l - mx).exp() / z;
        let v = ab * c.std * c.std + 1.0 - ab;
        let gk: Vec<f64> = x
            .iter()
            .zip(&c.mean)
            .map(|(xi, mi)| -(xi - ab.sqrt() * mi) / v)
            .collect();
        for i in 0..d {
            s[i] += r * gk[i];
            for j in 0..d {
                term[i * d + j] += r * (gk[i] * gk[j] - if i == j { 1.0 / v } else { 0.0 });
            }
        }
    }
    (s, term)
}

fn mixture(dim: usize, params: &[(f64, f64, f64, f64)]) -> GaussianMixture {
    GaussianMixture::new(
        params
            .iter()
            .map(|&(w, m0, m1, s)| Component {
                weight: w,
                mean: if dim == 1 { vec![m0] } else { vec![m0, m1] },
                std: s,
            })
            .collect(),
        sched(),
    )
    .unwrap()
}

/// x ~ q_t: pick a component by weight, x₀ from it, then x_t = √ᾱ x₀ + σ z.
fn sample_qt(g: &GaussianMixture, ab: f64, n: usize, seed: u64) -> Vec<Vec<f64>> {
    let d = g.dim();
    let p = SeedStreams::new(seed).purpose("q_t");
    let idx: Vec<u64> = (0..n as u64).collect();
    let z = p.normals(&idx, None, 2 * d);
    (0..n)
        .map(|i| {
            let u: f64 = p.rng(i as u64 + 1_000_000).random();
            let mut acc = 0.0;
            let comp = g
                .components()
                .iter()
                .find(|c| {
                    acc += c.weight;
                    u < acc
                })
                .unwrap_or_else(|| g.components().last().unwrap());
            (0..d)
                .map(|k| {
                    let x0 = comp.mean[k] + comp.std * f64::from(z[i * 2 * d + k]);
                    ab.sqrt() * x0 + (1.0 - ab).sqrt() * f64::from(z[i * 2 * d + d + k])
                })
                .collect()
        })
        .collect()
}

/// (weight, mean₀, mean₁, std) of each component.
type Comps = Vec<(f64, f64, f64, f64)>;

fn params() -> impl Strategy<Value = (usize, Comps, usize, u64)> {
    (
        1usize..=2,
        proptest::collection::vec(
            (0.1f64..1.0, -2.0f64..2.0, -2.0f64..2.0, 0.05f64..0.8),
            1..4,
        ),
        50usize..950,
        0u64..1000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn information_identity_holds_for_random_mixtures((dim, comps, t, seed) in params()) {
        let g = mixture(dim, &comps);
        let ab = sched().alpha_bar(Some(t));
        let xs = sample_qt(&g, ab, 20_000, seed);
        let n = xs.len() as f64;
        let mut sum = vec![0.0; dim * dim];
        let mut sq = vec![0.0; dim * dim];
        let mut fisher = vec![0.0; dim * dim];
        for x in &xs {
            let (s, term) = score_and_curvature_term(&g, ab, x);
            for k in 0..dim * dim {
                sum[k] += term[k];
                sq[k] += term[k] * term[k];
                fisher[k] += s[k / dim] * s[k % dim];
            }
        }
        for k in 0..dim * dim {
            let mean = sum[k] / n;
            let se = ((sq[k] / n - mean * mean).max(0.0) / n).sqrt();
            // E[s sᵀ] + E[∇² log q] = E[Σ r (g gᵀ − I/v)] must vanish.
            prop_assert!(mean.abs() <= 5.0 * se + 1e-9 * (fisher[k] / n).abs(),
                "entry {k}: E[s sᵀ] = {}, E[s sᵀ] + E[∇² log q] = {mean} ± {se}", fisher[k] / n);
        }
    }
}

/// One isotropic Gaussian N(μ, s² I) in D dimensions.
fn gaussian(mean: &[f64], std: f64) -> GaussianMixture {
    GaussianMixture::new(
        vec![Component {
            weight: 1.0,
            mean: mean.to_vec(),
            std,
        }],
        sched(),
    )
    .unwrap()
}

/// Mean and standard error of the mean of each column of `rows`.
fn column_mean_se(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let d = rows[0].len();
    let mean: Vec<f64> = (0..d)
        .map(|i| rows.iter().map(|r| r[i]).sum::<f64>() / n)
        .collect();
    let se = (0..d)
        .map(|i| {
            let ss: f64 = rows.iter().map(|r| (r[i] - mean[i]).powi(2)).sum();
            (ss / (n - 1.0) / n).sqrt()
        })
        .collect();
    (mean, se)
}

/// diffuq's Alg. 1 (`uq::au::uncertainty`, paper variance, ddof 1, M re-noisings, the exact
/// mixture ε as the network) on B images that all have x̂₀ = `x0`: image b gets its own sampler
/// ε_b ~ N(0, I) and x_t = √ᾱ x̂₀ + σ_t ε_b, from which Alg. 1 line 2 recovers x̂₀. Per
/// coordinate: the mean of U_t over the B images and its standard error (the images' re-noising
/// streams are independent, so the spread of the B values measures it, whatever U's law).
fn au_on_copies(
    g: &GaussianMixture,
    x0: &[f64],
    t: f64,
    m: usize,
    b: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let dev = Device::Cpu;
    let d = g.dim();
    let ab = sched().alpha_bar_at(t);
    let streams = SeedStreams::new(seed);
    let idx: Vec<u64> = (0..b as u64).collect();
    let eps: Vec<f64> = streams
        .purpose("sampler-eps")
        .normals(&idx, None, d)
        .into_iter()
        .map(f64::from)
        .collect();
    let x_t: Vec<f64> = (0..b * d)
        .map(|k| ab.sqrt() * x0[k % d] + (1.0 - ab).sqrt() * eps[k])
        .collect();
    let x_t = Tensor::from_vec(x_t, (b, d), &dev).unwrap();
    let eps = Tensor::from_vec(eps, (b, d), &dev).unwrap();
    let spec = AuSpec {
        m,
        ddof: diffuq::uq::au::Ddof::Minus(1),
        compat: AuCompat::Paper,
        clip_sample: None,
    };
    let u = uncertainty(
        g,
        &sched(),
        &x_t,
        &eps,
        t,
        0,
        &idx,
        &streams.purpose("au"),
        &spec,
    )
    .unwrap()
    .to_vec2::<f64>()
    .unwrap();
    column_mean_se(&u)
}

/// σ_t² Var_{x ~ N(√ᾱ x̂₀, σ_t² I)}[s_i(x)] per coordinate by Monte-Carlo over n draws of the
/// re-noising kernel, with this file's own score and streams (not diffuq's ε or AU code), and
/// its standard error (from the spread of the squared deviations).
fn kernel_score_variance(
    g: &GaussianMixture,
    ab: f64,
    x0: &[f64],
    n: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let d = x0.len();
    let sig2 = 1.0 - ab;
    let idx: Vec<u64> = (0..n as u64).collect();
    let z = SeedStreams::new(seed)
        .purpose("kernel")
        .normals(&idx, None, d);
    let scores: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            let x: Vec<f64> = (0..d)
                .map(|i| ab.sqrt() * x0[i] + sig2.sqrt() * f64::from(z[j * d + i]))
                .collect();
            score_and_curvature_term(g, ab, &x).0
        })
        .collect();
    let (mean, _) = column_mean_se(&scores);
    let dev2: Vec<Vec<f64>> = scores
        .iter()
        .map(|s| s.iter().zip(&mean).map(|(a, m)| (a - m).powi(2)).collect())
        .collect();
    let (var, se) = column_mean_se(&dev2);
    let bessel = n as f64 / (n as f64 - 1.0);
    (
        var.iter().map(|v| sig2 * v * bessel).collect(),
        se.iter().map(|e| sig2 * e * bessel).collect(),
    )
}

/// The Fisher information of q_t per coordinate, F_i = E_{x ~ q_t}[s_i(x)²], by Monte-Carlo over
/// n draws of q_t with this file's sampler and score, and its standard error.
fn fisher_mc(g: &GaussianMixture, ab: f64, n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let sq: Vec<Vec<f64>> = sample_qt(g, ab, n, seed)
        .iter()
        .map(|x| {
            score_and_curvature_term(g, ab, x)
                .0
                .iter()
                .map(|s| s * s)
                .collect()
        })
        .collect();
    column_mean_se(&sq)
}

/// A random Gaussian (D = 1..3), timestep, M, x̂₀ anywhere, seed.
#[allow(clippy::type_complexity)]
fn gaussian_params() -> impl Strategy<Value = (Vec<(f64, f64)>, f64, usize, usize, u64)> {
    (
        proptest::collection::vec((-2.0f64..2.0, -2.5f64..2.5), 1..4),
        0.05f64..0.8,
        1usize..1000,
        2usize..=8,
        0u64..1000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Eq. 9 as it holds for diffuq's Alg. 1 on a Gaussian: U_t = σ_t² · (σ_t²/v) · F_t per
    /// coordinate, with U_t from `uq::au::uncertainty` (B = 2000 images, M = 2..8 re-noisings,
    /// ddof 1) and F_t = E_{q_t}[s_i²] by Monte-Carlo (n = 40 000 draws of q_t, this file's score).
    /// Tolerance: 5 combined standard errors, √(SE_U² + (σ²·σ²/v)² SE_F²), both measured from the
    /// draws; SE_U ≈ U √(2/(B(M − 1))) (3.2% at M = 2 … 1.2% at M = 8), SE_F ≈ F √(2/n) ≈ 0.7%:
    /// 5 SE is 16% … 7% relative, under the 100% … 12.5% that a divisor of M instead of M − 1
    /// would move U.
    #[test]
    fn au_on_a_gaussian_is_sigma2_times_sigma2_over_v_times_fisher(
        (coords, std, t, m, seed) in gaussian_params()
    ) {
        let mean: Vec<f64> = coords.iter().map(|c| c.0).collect();
        let x0: Vec<f64> = coords.iter().map(|c| c.1).collect();
        let g = gaussian(&mean, std);
        let t = t as f64;
        let ab = sched().alpha_bar_at(t);
        let sig2 = 1.0 - ab;
        let v = ab * std * std + sig2;
        let (u, se_u) = au_on_copies(&g, &x0, t, m, 2000, seed);
        let (f, se_f) = fisher_mc(&g, ab, 40_000, seed + 1);
        let factor = sig2 * (sig2 / v);
        for i in 0..mean.len() {
            // The independent Fisher information is the closed form 1/v.
            prop_assert!((f[i] - 1.0 / v).abs() <= 5.0 * se_f[i],
                "coordinate {i}: F (MC) = {} ± {}, 1/v = {}", f[i], se_f[i], 1.0 / v);
            let want = factor * f[i];
            let tol = 5.0 * (se_u[i].powi(2) + (factor * se_f[i]).powi(2)).sqrt();
            prop_assert!((u[i] - want).abs() <= tol,
                "t = {t}, M = {m}, coordinate {i}: U = {} ± {}, σ²(σ²/v)F = {want} (tolerance {tol})",
                u[i], se_u[i]);
        }
    }

    /// For a mixture the pointwise relation is U_t(x̂₀) = σ_t² Var_{x ~ N(√ᾱ x̂₀, σ_t² I)}[s_i(x)]
    /// (Alg. 1 re-noises x̂₀ at the same t and ε* = −σ_t s): the score's variance over the
    /// re-noising kernel, which for one Gaussian is σ_t²/v² = (σ_t²/v)·F_t (above). U_t from
    /// diffuq's Alg. 1 (B = 1000 images, M = 2..8), the kernel variance by this file's
    /// Monte-Carlo (n = 40 000); tolerance 5 combined standard errors, both measured.
    #[test]
    fn au_on_a_mixture_is_sigma2_times_the_kernel_score_variance(
        (dim, comps, t, seed) in params(),
        m in 2usize..=8,
        x0 in proptest::collection::vec(-2.5f64..2.5, 2),
    ) {
        let g = mixture(dim, &comps);
        let t = t as f64;
        let ab = sched().alpha_bar_at(t);
        let x0 = &x0[..dim];
        let (u, se_u) = au_on_copies(&g, x0, t, m, 1000, seed);
        let (want, se_w) = kernel_score_variance(&g, ab, x0, 40_000, seed + 1);
        for i in 0..dim {
            let tol = 5.0 * (se_u[i].powi(2) + se_w[i].powi(2)).sqrt();
            prop_assert!((u[i] - want[i]).abs() <= tol,
                "t = {t}, M = {m}, coordinate {i}: U = {} ± {}, σ² Var_k[s] = {} ± {} (tolerance {tol})",
                u[i], se_u[i], want[i], se_w[i]);
        }
    }
}

#[test]
fn hessian_matches_finite_differences_of_the_exact_score() {
    // ∇² log q = Σ r (g gᵀ − I/v) − s sᵀ against central differences (h = 1e-5) of
    // s = −ε*/σ from `eps_at`; agreement to 1e-6 relative.
    let g = mixture(2, &[(0.3, -1.0, 0.5, 0.3), (0.7, 1.0, -0.2, 0.5)]);
    let t = 300.0;
    let ab = sched().alpha_bar_at(t);
    let score = |x: &[f64]| -> Vec<f64> {
        g.eps_at(x, t)
            .iter()
            .map(|e| -e / (1.0 - ab).sqrt())
            .collect()
    };
    for x in [[0.1, 0.2], [-0.7, 0.4], [0.9, -0.9]] {
        let (s, term) = score_and_curvature_term(&g, ab, &x);
        let h = 1e-5;
        for j in 0..2 {
            let (mut a, mut b) = (x, x);
            a[j] += h;
            b[j] -= h;
            let (sa, sb) = (score(&a), score(&b));
            for i in 0..2 {
                let fd = (sa[i] - sb[i]) / (2.0 * h);
                let exact = term[i * 2 + j] - s[i] * s[j];
                approx::assert_relative_eq!(exact, fd, max_relative = 1e-6, epsilon = 1e-8);
            }
        }
    }
}

/// Mean over pixels and samples of AU's U_t (paper variance, M draws) at x̂₀ = `x0`.
fn mean_u(g: &GaussianMixture, x0: &[f64], t: f64, m: usize, n: usize) -> f64 {
    let dev = Device::Cpu;
    let d = g.dim();
    let ab = sched().alpha_bar_at(t);
    // Choose x_t and ε so that Alg. 1's x̂₀ = x0 exactly: x_t = √ᾱ x0 + σ ε with ε = ε*(x_t) is
    // circular, so pass a consistent pair: ε = 0 and x_t = √ᾱ x0.
    let x_t: Vec<f64> = (0..n)
        .flat_map(|_| x0.iter().map(|v| ab.sqrt() * v))
        .collect();
    let x_t = Tensor::from_vec(x_t, (n, d), &dev).unwrap();
    let eps = Tensor::zeros((n, d), DType::F64, &dev).unwrap();
    let idx: Vec<u64> = (0..n as u64).collect();
    let spec = AuSpec {
        m,
        ddof: diffuq::uq::au::Ddof::Minus(1),
        compat: AuCompat::Paper,
        clip_sample: None,
    };
    let u = uncertainty(
        g,
        &sched(),
        &x_t,
        &eps,
        t,
        0,
        &idx,
        &SeedStreams::new(7).purpose("au"),
        &spec,
    )
    .unwrap();
    u.mean_all().unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn for_one_gaussian_u_is_sigma_squared_times_fisher_times_sigma2_over_v() {
    // Closed form U_t = σ⁴/v² = σ² · (σ²/v) · F_t with F_t = 1/v. 200 images × 2 pixels × M = 50:
    // relative standard error of the pooled unbiased variance ≈ √(2/(400·49)) ≈ 1%; tolerance 5%.
    let s = 0.4;
    let g = mixture(2, &[(1.0, 0.3, -0.5, s)]);
    for (t, factor_bound) in [
        (999.0, (0.99, 1.0)),
        (500.0, (0.0, 1.0)),
        (10.0, (0.0, 0.1)),
    ] {
        let ab = sched().alpha_bar_at(t);
        let sig2 = 1.0 - ab;
        let v = ab * s * s + sig2;
        let u = mean_u(&g, &[0.3, -0.5], t, 50, 200);
        approx::assert_relative_eq!(u, sig2 * sig2 / (v * v), max_relative = 0.05);
        // The measured ratio U/(σ²F) is the factor σ²/v, which lies in the stated band.
        approx::assert_relative_eq!(u / (sig2 / v), sig2 / v, max_relative = 0.05);
        assert!(
            (factor_bound.0..=factor_bound.1).contains(&(sig2 / v)),
            "t = {t}: σ²/v = {}",
            sig2 / v
        );
    }
    // And U does not depend on where x̂₀ is (the score of a Gaussian is linear).
    let far = mean_u(&g, &[2.0, 1.0], 500.0, 50, 200);
    let near = mean_u(&g, &[0.3, -0.5], 500.0, 50, 200);
    approx::assert_relative_eq!(far, near, max_relative = 0.05);
}

#[test]
fn u_is_large_between_modes_and_small_at_a_mode() {
    // Two modes at ±1.5 (std 0.2), t = 100 (σ² ≈ 0.10): at x̂₀ = 0 the re-noised points straddle
    // the boundary where the score flips sign, at x̂₀ = 1.5 they stay in one mode's linear regime.
    let g = mixture(1, &[(0.5, -1.5, 0.0, 0.2), (0.5, 1.5, 0.0, 0.2)]);
    let mid = mean_u(&g, &[0.0], 100.0, 50, 200);
    let mode = mean_u(&g, &[1.5], 100.0, 50, 200);
    // Measured ≈ 9×; required 5×.
    assert!(
        mid > 5.0 * mode,
        "U between modes {mid} vs at a mode {mode}"
    );
}
