//! Generative uncertainty (Jazbec et al. 2025, Alg. 1 and Eq. 8).
//!
//! For one initial noise x_T, M models θ₁…θ_M (posterior draws or ensemble members) each produce a
//! sample x_m (same x_T, same sampler randomness). Under the likelihood p(x | θ_m) = N(x_m, γ² I)
//! (pixel likelihood, GU Eq. 6; or over features φ(x_m) for the semantic likelihood, Eq. 7) the
//! posterior predictive is the equal-weight mixture (1/M) Σ_m N(x_m, γ² I). Moment matching it with
//! a diagonal Gaussian (App. B.1) gives per-dimension variance
//!
//!   v_d = γ² + (1/M) Σ_m (x_{m,d} − x̄_d)²,     x̄ = (1/M) Σ_m x_m,
//!
//! and the generative uncertainty is that Gaussian's entropy
//!
//!   H = ½ Σ_d ln(2πe · v_d).
//!
//! The 1/M (not 1/(M−1)) is what moment matching the mixture gives: it is the mixture's exact
//! second central moment minus γ². Computed in f64 with a two-pass variance.

use std::f64::consts::{E, PI};

/// Entropy of the moment-matched diagonal Gaussian of M outputs of dimension D
/// (`outputs` row-major M × D), observation variance `gamma2` = γ² > 0.
pub fn moment_matched_entropy(outputs: &[f64], members: usize, dim: usize, gamma2: f64) -> f64 {
    debug_assert_eq!(outputs.len(), members * dim);
    let mut h = 0.0;
    for d in 0..dim {
        let mean = (0..members).map(|m| outputs[m * dim + d]).sum::<f64>() / members as f64;
        let var = (0..members)
            .map(|m| (outputs[m * dim + d] - mean).powi(2))
            .sum::<f64>()
            / members as f64;
        h += 0.5 * (2.0 * PI * E * (gamma2 + var)).ln();
    }
    h
}

/// Entropies of N samples given ensemble outputs laid out (M, N, D) row-major, as a sampler
/// returns them for a batched ensemble.
pub fn entropies_mnd(
    outputs: &[f32],
    members: usize,
    n: usize,
    dim: usize,
    gamma2: f64,
) -> Vec<f64> {
    let mut buf = vec![0f64; members * dim];
    (0..n)
        .map(|i| {
            for m in 0..members {
                for d in 0..dim {
                    buf[m * dim + d] = f64::from(outputs[(m * n + i) * dim + d]);
                }
            }
            moment_matched_entropy(&buf, members, dim, gamma2)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use proptest::prelude::*;

    fn outputs() -> impl Strategy<Value = (usize, usize, Vec<f64>)> {
        (2usize..8, 1usize..6).prop_flat_map(|(m, d)| {
            (
                Just(m),
                Just(d),
                proptest::collection::vec(-5.0f64..5.0, m * d),
            )
        })
    }

    proptest! {
        // Expected: the closed form ½ Σ_d ln(2πe(γ² + s²_d)) where s²_d is the mixture's own
        // per-dimension variance E[x²] − E[x]² (computed here the one-pass way, independently).
        #[test]
        fn equals_closed_form_of_the_mixture_variance((m, d, x) in outputs(), g in 1e-4f64..2.0) {
            let mut expected = 0.0;
            for k in 0..d {
                let col: Vec<f64> = (0..m).map(|i| x[i * d + k]).collect();
                let ex2 = col.iter().map(|v| v * v).sum::<f64>() / m as f64;
                let ex = col.iter().sum::<f64>() / m as f64;
                expected += 0.5 * (2.0 * PI * E * (g + ex2 - ex * ex)).ln();
            }
            prop_assert!((moment_matched_entropy(&x, m, d, g) - expected).abs() < 1e-9 * (1.0 + expected.abs()));
        }

        #[test]
        fn invariant_to_member_order_and_shared_translation((m, d, x) in outputs(), shift in proptest::collection::vec(-100.0f64..100.0, 6), rot in 0usize..8) {
            let h = moment_matched_entropy(&x, m, d, 0.1);
            let mut rows: Vec<&[f64]> = x.chunks(d).collect();
            rows.rotate_left(rot % m);
            rows.swap(0, m - 1);
            let permuted: Vec<f64> = rows.concat();
            prop_assert!((moment_matched_entropy(&permuted, m, d, 0.1) - h).abs() < 1e-9);
            let moved: Vec<f64> = x.iter().enumerate().map(|(i, v)| v + shift[i % d]).collect();
            prop_assert!((moment_matched_entropy(&moved, m, d, 0.1) - h).abs() < 1e-7);
        }

        #[test]
        fn never_decreases_when_a_member_moves_away_from_the_mean((m, d, x) in outputs(), who in 0usize..8, step in 0.0f64..3.0) {
            let who = who % m;
            let mean: Vec<f64> = (0..d).map(|k| (0..m).map(|i| x[i * d + k]).sum::<f64>() / m as f64).collect();
            let mut moved = x.clone();
            for k in 0..d {
                moved[who * d + k] += step * (x[who * d + k] - mean[k]);
            }
            prop_assert!(moment_matched_entropy(&moved, m, d, 0.05) >= moment_matched_entropy(&x, m, d, 0.05) - 1e-12);
        }
    }

    #[test]
    fn identical_members_give_the_likelihood_entropy() {
        // All members agree ⇒ v_d = γ² ⇒ H = (D/2) ln(2πe γ²).
        let x = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0];
        assert_relative_eq!(
            moment_matched_entropy(&x, 3, 2, 0.5),
            (2.0 * PI * E * 0.5).ln(),
            max_relative = 1e-12
        );
    }

    #[test]
    fn mnd_layout_is_read_per_sample() {
        // Two members, two samples, D = 1: sample 0 sees {0, 2} (var 1), sample 1 sees {5, 5}.
        let out = [0.0f32, 5.0, 2.0, 5.0];
        let h = entropies_mnd(&out, 2, 2, 1, 1.0);
        assert_relative_eq!(h[0], 0.5 * (2.0 * PI * E * 2.0).ln(), max_relative = 1e-12);
        assert_relative_eq!(h[1], 0.5 * (2.0 * PI * E).ln(), max_relative = 1e-12);
    }
}
