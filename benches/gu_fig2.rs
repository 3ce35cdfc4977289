//! Benchmarks for the gu-fig2 hot paths, at the mini scale's shapes:
//! - GU moment-matched entropy (Eq. 8) for 50k samples × 5 members × 2 dims;
//! - one batched ε evaluation of the 5-member ensemble on 1,000 samples (one DDPM step);
//! - the seed-stream noise for 1,000 samples at one step.
//!
//! Run with `just bench`.

use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diffuq::model::toy_mlp::{EnsembleMlp, MlpSpec};
use diffuq::model::Denoiser;
use diffuq::seed::SeedStreams;
use diffuq::uq::gu::entropies_mnd;

fn benches(c: &mut Criterion) {
    diffuq::keep_freed_memory();
    let s = SeedStreams::new(0);
    let (m, n) = (5usize, 50_000usize);
    let outputs = s
        .purpose("bench")
        .normals(&(0..(m * n) as u64).collect::<Vec<_>>(), None, 2);
    let mut g = c.benchmark_group("gu_entropy");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("50k_samples_5_members", |b| {
        b.iter(|| entropies_mnd(black_box(&outputs), m, n, 2, 1e-4))
    });
    g.finish();

    let spec = MlpSpec {
        data_dim: 2,
        hidden: 64,
        layers: 3,
        time_dim: 32,
        members: m,
        fourier_features: 32,
        fourier_scale: 1.0,
    };
    let net = EnsembleMlp::init(spec, 1000, &s, &Device::Cpu)
        .unwrap()
        .frozen();
    let b = 1000usize;
    let x = Tensor::from_vec(
        s.purpose("x")
            .normals(&(0..(m * b) as u64).collect::<Vec<_>>(), None, 2),
        (m, b, 2),
        &Device::Cpu,
    )
    .unwrap();
    let mut g = c.benchmark_group("ensemble_eps");
    g.throughput(Throughput::Elements((m * b) as u64));
    g.bench_function("5_members_1000_samples", |bch| {
        bch.iter(|| net.eps(black_box(&x), 500.0).unwrap())
    });
    g.finish();

    let idx: Vec<u64> = (0..b as u64).collect();
    let noise = s.purpose("noise");
    let mut g = c.benchmark_group("seed_streams");
    g.throughput(Throughput::Elements(b as u64));
    g.bench_function("noise_1000_samples_one_step", |bch| {
        bch.iter(|| noise.normals(black_box(&idx), Some(17), 2))
    });
    g.finish();
}

criterion_group!(gu_fig2, benches);
criterion_main!(gu_fig2);
