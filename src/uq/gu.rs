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

use half::f16;
use serde::{Deserialize, Serialize};

/// Which arithmetic computes the entropy (config key `gu.compat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuCompat {
    /// Exact f64, two-pass variance ([`moment_matched_entropy`]).
    Paper,
    /// The released `semantic_likelihood.py`: float16 features, E[c²] − E[c]² in float16 (with
    /// its cancellation, clipped at 0), log and sum in float16 — H lands on a grid of ≈ 1 and
    /// ties are frequent (docs/released-code.md §2.5). [`release_entropy_f16`].
    GuRelease,
}

/// numpy's float16 arithmetic: compute in f32, round to f16.
fn h(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// numpy's pairwise summation (`pairwise_sum` in its loops) of f32 values, as used for float16
/// reductions with a float32 accumulator: sequential below 8 elements, 8 interleaved partial sums
/// up to 128, halving (at a multiple of 8) above.
fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0f32, |s, v| s + v)
    } else if n <= 128 {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i + 8 <= n {
            for k in 0..8 {
                r[k] += a[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &a[i..] {
            res += v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.add.reduce` of a float16 vector: the first element seeds a float32 accumulator, the rest
/// is summed pairwise, and the result is rounded to float16.
fn sum_f16(a: &[f32]) -> f32 {
    match a.split_first() {
        None => 0.0,
        Some((first, rest)) => h(first + pairwise_sum(rest)),
    }
}

/// `np.mean(axis=0)` of a float16 column: float32 intermediates, result rounded to float16.
fn mean_f16(col: &[f32]) -> f32 {
    h(pairwise_sum(col) / col.len() as f32)
}

/// GU's released entropy of one sample's M × D features (row-major), reproducing its float16
/// arithmetic (docs/released-code.md §2.5) with γ added in float16:
/// v = clip(mean(c²) − mean(c)², 0); H = ½ Σ_d log(v + γ) + ½ D (log 2π + 1).
pub fn release_entropy_f16(features: &[f32], members: usize, dim: usize, gamma: f64) -> f64 {
    let c: Vec<f32> = features.iter().map(|&v| h(v)).collect();
    let g = h(gamma as f32);
    let logs: Vec<f32> = (0..dim)
        .map(|d| {
            let col: Vec<f32> = (0..members).map(|m| c[m * dim + d]).collect();
            let sq: Vec<f32> = col.iter().map(|v| h(v * v)).collect();
            let m2 = mean_f16(&sq);
            let m1 = mean_f16(&col);
            let v = h(m2 - h(m1 * m1)).max(0.0);
            h(h(v + g).ln())
        })
        .collect();
    let total = f64::from(sum_f16(&logs));
    0.5 * total + 0.5 * dim as f64 * ((2.0 * PI).ln() + 1.0)
}

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

/// Settings of GU's generation (Alg. 1) with a Laplace posterior (config table `[gu]`).
#[derive(Debug, Clone, PartialEq)]
pub struct GuSpec {
    /// Posterior draws M (GU: 5).
    pub m: usize,
    /// Count the MAP model's sample as a member of the mixture (GU's release: yes, 1 + M sets).
    pub include_map: bool,
    /// Likelihood variance γ² (pixel) or γ (semantic; GU: 1e-3).
    pub gamma2: f64,
    pub compat: GuCompat,
    /// Sampler for the posterior draws' extra samples (GU Fig. 6 reduces its steps).
    pub sampler: crate::sampler::spec::SamplerSpec,
    /// With `include_map` and a shorter extra-sample sampler: re-run the MAP member with that
    /// sampler, so that all members share one discretisation (`true`), or reuse the MAP sample
    /// itself (`false`, the paper: GU Sec. 4.3 lowers T′ "only for the additional samples …
    /// keeping the default T for the original sample" and counts M·T′ extra NFE).
    pub rerun_map: bool,
}

impl GuSpec {
    pub fn validate(&self) -> crate::error::Result<()> {
        use crate::error::Error;
        if self.m == 0 {
            return Err(Error::invalid(
                "gu.m",
                "the number of posterior draws M must be ≥ 1, got 0",
            ));
        }
        if !(self.gamma2 > 0.0 && self.gamma2.is_finite()) {
            return Err(Error::invalid(
                "gu.gamma2",
                format!("must be > 0, got {}", self.gamma2),
            ));
        }
        if self.m + usize::from(self.include_map) < 2 {
            return Err(Error::invalid(
                "gu.m",
                "the mixture needs at least 2 members (M ≥ 2, or M = 1 with the MAP)",
            ));
        }
        Ok(())
    }
}

/// What [`generate`] returns.
pub struct GuOutput {
    /// The MAP model's samples (what GU keeps and filters).
    pub samples: candle_core::Tensor,
    /// Generative uncertainty per sample.
    pub entropy: Vec<f64>,
    /// Network evaluations per sample, all parameter sets included.
    pub nfe: usize,
}

/// GU Alg. 1 with a last-layer Laplace posterior: the MAP model samples from x_T with `main`; each
/// of M posterior draws samples from the *same* x_T (and the same injected noise) with
/// `spec.sampler`; the outputs go through φ and the entropy of their moment-matched Gaussian is
/// the uncertainty (Eq. 8). Draws come from stream m of `draws_purpose`.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &dyn crate::uq::laplace::LastLayerModel,
    posterior: &crate::uq::laplace::DiagPosterior,
    schedule: &crate::schedule::NoiseSchedule,
    main: &crate::sampler::spec::SamplerSpec,
    spec: &GuSpec,
    x_t: &candle_core::Tensor,
    noise: &dyn crate::sampler::NoiseSource,
    extractor: &dyn crate::features::FeatureExtractor,
    draws_purpose: &crate::seed::Purpose,
) -> crate::error::Result<GuOutput> {
    use crate::error::TensorContext;
    use crate::sampler::NoObserver;
    use crate::uq::laplace::{LastLayerDraw, WithLastLayer};
    spec.validate()?;
    let map = LastLayerDraw {
        w: posterior.w_map.clone(),
        b: posterior.b_map.clone(),
    };
    let main_out = main
        .sample(
            &WithLastLayer { model, draw: &map },
            schedule,
            x_t.clone(),
            noise,
            &mut NoObserver,
        )
        .ctx("GU: MAP sample")?;
    let mut nfe = main_out.nfe;
    let mut feats = vec![];
    if spec.include_map {
        // With a different extra-sample sampler and `rerun_map`, the MAP member is re-run with it,
        // so that all members of the mixture share one discretisation; otherwise (the paper) the
        // MAP sample itself is the member.
        let x = if &spec.sampler == main || !spec.rerun_map {
            main_out.x0.clone()
        } else {
            let o = spec
                .sampler
                .sample(
                    &WithLastLayer { model, draw: &map },
                    schedule,
                    x_t.clone(),
                    noise,
                    &mut NoObserver,
                )
                .ctx("GU: MAP member sample")?;
            nfe += o.nfe;
            o.x0
        };
        feats.push(extractor.features(&x).ctx("GU: features")?);
    }
    for draw in posterior.draws(spec.m, false, draws_purpose)? {
        let o = spec
            .sampler
            .sample(
                &WithLastLayer { model, draw: &draw },
                schedule,
                x_t.clone(),
                noise,
                &mut NoObserver,
            )
            .ctx("GU: posterior-draw sample")?;
        nfe += o.nfe;
        feats.push(extractor.features(&o.x0).ctx("GU: features")?);
    }
    let stacked = candle_core::Tensor::stack(&feats, 0)
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .ctx("GU: stacking member features")?;
    let (members, n, dim) = stacked.dims3().ctx("GU: member features")?;
    let flat: Vec<f32> = stacked
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .ctx("GU: features")?;
    let entropy = match spec.compat {
        GuCompat::Paper => entropies_mnd(&flat, members, n, dim, spec.gamma2),
        GuCompat::GuRelease => (0..n)
            .map(|i| {
                let mut buf = Vec::with_capacity(members * dim);
                for m in 0..members {
                    buf.extend_from_slice(&flat[(m * n + i) * dim..(m * n + i + 1) * dim]);
                }
                release_entropy_f16(&buf, members, dim, spec.gamma2)
            })
            .collect(),
    };
    Ok(GuOutput {
        samples: main_out.x0,
        entropy,
        nfe,
    })
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
    fn release_arithmetic_matches_numpy_float16() {
        // Expected: golden/gu/release_entropy.npz, written by golden/gu_release_entropy.py with
        // numpy 1.26.4 (24 samples × 6 members × 512 float16 features, γ = 1e-3). The release
        // arithmetic must match it exactly (it is quantised), and differ from the exact f64 entropy
        // (also in the fixture) by up to ≈ 1 nat per sample.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/gu/release_entropy.npz");
        let arrays: std::collections::HashMap<String, candle_core::Tensor> =
            candle_core::Tensor::read_npz(path)
                .unwrap()
                .into_iter()
                .collect();
        let feats = arrays["features"]
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let (n, m, d) = feats.dims3().unwrap();
        let feats = feats.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = arrays["entropy"].to_vec1::<f64>().unwrap();
        let exact = arrays["entropy_f64"].to_vec1::<f64>().unwrap();
        let mut max_gap = 0.0f64;
        for i in 0..n {
            let x = &feats[i * m * d..(i + 1) * m * d];
            let got = release_entropy_f16(x, m, d, 1e-3);
            assert_eq!(got, want[i], "sample {i}");
            let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let e = moment_matched_entropy(&x64, m, d, 1e-3);
            assert_relative_eq!(e, exact[i], max_relative = 1e-9);
            max_gap = max_gap.max((got - e).abs());
        }
        assert!(
            max_gap > 0.01,
            "the release arithmetic should quantise ({max_gap})"
        );
    }

    mod generation {
        use super::super::*;
        use crate::features::Identity;
        use crate::sampler::spec::{SamplerKind, SamplerSpec};
        use crate::sampler::{FinalStep, StreamNoise};
        use crate::schedule::{ContinuousSpacing, NoiseSchedule, ScheduleKind, Spacing};
        use crate::seed::SeedStreams;
        use crate::uq::laplace::{DiagPosterior, LaplaceSpec, LastLayerModel};
        use candle_core::{DType, Device, Tensor};

        /// φ(x, t) = [x, tanh(x), t/1000] at one position; D = 2 outputs.
        struct Toy {
            w: Tensor,
            b: Tensor,
        }
        impl LastLayerModel for Toy {
            fn features(&self, x: &Tensor, t: &[f64]) -> candle_core::Result<Tensor> {
                let tt = Tensor::from_vec(
                    t.iter().map(|t| t / 1000.0).collect::<Vec<_>>(),
                    (t.len(), 1),
                    x.device(),
                )?
                .to_dtype(x.dtype())?;
                Tensor::cat(&[x, &x.tanh()?, &tt], 1)?.unsqueeze(1)
            }
            fn last_layer(&self) -> candle_core::Result<(Tensor, Option<Tensor>)> {
                Ok((self.w.clone(), Some(self.b.clone())))
            }
            fn assemble(&self, out: &Tensor) -> candle_core::Result<Tensor> {
                out.squeeze(1)
            }
            fn disassemble(&self, target: &Tensor) -> candle_core::Result<Tensor> {
                target.unsqueeze(1)
            }
        }

        fn ddim(steps: usize) -> SamplerSpec {
            SamplerSpec {
                name: SamplerKind::Ddim,
                steps,
                eta: 0.0,
                spacing: Spacing::Leading,
                steps_offset: 0,
                continuous_spacing: ContinuousSpacing::TimeUniform,
                r1: 0.5,
                final_step: FinalStep::AlphaOne,
                clip_sample: false,
                clip_range: 1.0,
                rtol: None,
                atol: None,
            }
        }

        fn run(h_scale: f64, m: usize, extra_steps: usize) -> crate::error::Result<GuOutput> {
            let dev = Device::Cpu;
            let toy = Toy {
                w: Tensor::new(
                    &[[0.8f64, 0.1, 0.3, -0.2, 0.05], [-0.1, 0.9, 0.0, 0.4, -0.05]],
                    &dev,
                )
                .unwrap(),
                b: Tensor::new(&[0.01f64, -0.02], &dev).unwrap(),
            };
            // H = h_scale everywhere: precision h_scale + 1, so h_scale → ∞ collapses the posterior.
            let post = DiagPosterior {
                w_map: toy.w.clone(),
                b_map: Some(toy.b.clone()),
                h_w: (toy.w.ones_like().unwrap() * h_scale).unwrap(),
                h_b: Some((toy.b.ones_like().unwrap() * h_scale).unwrap()),
                spec: LaplaceSpec::GU,
                n_items: 0,
            };
            let s = SeedStreams::new(2);
            let idx: Vec<u64> = (0..16).collect();
            let x_t = Tensor::from_vec(s.purpose("x_T").normals(&idx, None, 2), (16, 2), &dev)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let noise = StreamNoise {
                purpose: s.purpose("noise"),
                indices: &idx,
                dim: 2,
                device: &dev,
            };
            let schedule = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000);
            let spec = GuSpec {
                m,
                include_map: true,
                gamma2: 1e-3,
                compat: GuCompat::Paper,
                sampler: ddim(extra_steps),
                rerun_map: true,
            };
            generate(
                &toy,
                &post,
                &schedule,
                &ddim(10),
                &spec,
                &x_t,
                &noise,
                &Identity,
                &s.purpose("draws"),
            )
        }

        #[test]
        fn a_collapsed_posterior_gives_the_likelihood_entropy_and_spread_raises_it() {
            // Precision → ∞: every draw is the MAP, so v_d = γ² and H = ln(2πe γ²) for D = 2.
            let tight = run(1e14, 5, 10).unwrap();
            let floor = (2.0 * PI * E * 1e-3).ln();
            for h in &tight.entropy {
                approx::assert_abs_diff_eq!(*h, floor, epsilon = 1e-4);
            }
            // Precision 1 (prior only): the draws disagree, every entropy is above the floor.
            let wide = run(0.0, 5, 10).unwrap();
            assert!(
                wide.entropy.iter().all(|h| *h > floor + 0.5),
                "{:?}",
                wide.entropy
            );
            // Same x_T ⇒ the MAP samples do not depend on the posterior.
            assert_eq!(
                tight
                    .samples
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                wide.samples
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            );
            // NFE: MAP 10 (reused as a member) + 5 draws × 10.
            assert_eq!(wide.nfe, 60);
            // Fewer steps for the extra samples (GU Fig. 6): MAP member re-run with 4 steps.
            assert_eq!(run(0.0, 5, 4).unwrap().nfe, 10 + 4 + 5 * 4);
        }

        #[test]
        fn zero_draws_name_the_key() {
            let e = run(1.0, 0, 10).err().unwrap().to_string();
            assert!(e.starts_with("gu.m"), "{e}");
        }
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
