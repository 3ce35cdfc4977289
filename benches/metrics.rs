//! Metric speed (issue 5): the Fréchet distance between 2048-d statistics, and improved
//! precision/recall (with density/coverage, computed in the same passes) for 10k real × 10k
//! generated 2048-d features — the sizes of an FID-10k evaluation.
//!
//! The reference time is pytorch-fid 0.3.0's `calculate_frechet_distance` (scipy 1.17.1
//! `linalg.sqrtm` of Σ₁Σ₂) on 2048-d statistics, measured on the same machine by
//! golden/metrics_fid_prdc.py (best of 3). The README quotes both.
//!
//! Measured here (2 cores, dev profile, quiet machine): Fréchet distance 1.45 s (pytorch-fid
//! 11.6–12.5 s, so 8×; the eigendecomposition path for singular Σ₁ measured 2.66 s); precision/recall/density/coverage 10k × 10k 12.9 s (prdc 0.2: 20.6 s,
//! golden/bench_reference.py).
//!
//! `DIFFUQ_BENCH_PRDC_N` (default 10000) scales the precision/recall case for quick runs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use diffuq::metrics::fid::{frechet_distance, FeatureStats, GaussianStats};
use diffuq::metrics::prdc::{prdc, PrdcOptions};
use diffuq::metrics::realism::Rows;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const D: usize = 2048;

/// Features with a decaying spectrum (as Inception pool3 features have): x = z ⊙ s + shift,
/// s_j = 1/√(1 + j/64), from a seeded ChaCha8 stream.
fn features(seed: u64, n: usize, scale: f64, shift: f64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s: Vec<f64> = (0..D).map(|j| (1.0 + j as f64 / 64.0).powf(-0.5)).collect();
    (0..n * D)
        .map(|i| {
            let z: f64 = rng.sample(StandardNormal);
            z * s[i % D] * scale + shift
        })
        .collect()
}

fn stats(seed: u64, scale: f64, shift: f64) -> GaussianStats {
    // 3000 samples (> D, so Σ is full rank), in batches as an evaluation would add them.
    let mut acc = FeatureStats::new(D);
    for b in 0..6 {
        let x = features(seed * 100 + b, 500, scale, shift);
        acc.update(Rows::new(&x, D), "bench features").unwrap();
    }
    acc.finish("bench features").unwrap()
}

fn bench_fid(c: &mut Criterion) {
    let (a, b) = (stats(1, 1.0, 0.0), stats(2, 1.1, 0.05));
    let mut g = c.benchmark_group("fid");
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    g.bench_function("frechet_distance_2048d", |bench| {
        bench.iter(|| black_box(frechet_distance(black_box(&a), black_box(&b)).unwrap()))
    });
    g.finish();
}

fn bench_prdc(c: &mut Criterion) {
    let n: usize = std::env::var("DIFFUQ_BENCH_PRDC_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let real = features(11, n, 1.0, 0.0);
    let fake = features(12, n, 1.05, 0.02);
    let mut g = c.benchmark_group("prdc");
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    g.bench_function(format!("precision_recall_{n}x{n}_2048d"), |bench| {
        bench.iter(|| {
            black_box(
                prdc(
                    Rows::new(&real, D),
                    Rows::new(&fake, D),
                    &PrdcOptions::default(),
                )
                .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench_fid, bench_prdc);
criterion_main!(benches);
