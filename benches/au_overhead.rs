//! AU overhead (De Vita & Belagiannis, Alg. 1): 50-step DDIM with and without the uncertainty
//! observer, on a small ε-MLP (64-d data, 1,000 samples per batch). AU at the paper's window
//! (steps 45..48, M = 5) adds 4 batched calls of M·B rows: NFE 50 → 70 per sample, so the expected
//! time ratio is ≈ 1.4 when the network dominates; AU at every step (Fig. 3) costs ≈ 1 + M = 6×.
//!
//! criterion times the three variants and the parts of one uncertainty step; the ratios to plain
//! sampling are printed at the end (`just bench`). Measured here (2 cores, dev profile, quiet):
//! before the seed-stream draws moved to `diffuq_linalg::streams` (opt-level 3, two threads):
//! plain 145 ms, window 1.67×, every step 9.9×, re-noising draws 6.8 ms per uncertainty step;
//! after: plain 143 ms, window 1.35–1.52× over three runs (criterion medians 143 / 217 ms),
//! every step 6.8–7.3×, draws 1.31 ms; then ≈ 4.8 ms per uncertainty step went to candle's
//! element-wise ops (the re-noising affine and the reductions over the member axis run on one
//! thread, the latter with an integer division per element). With those passes fused
//! (`diffuq_linalg::members`, same bits) and candle's pool workers spinning 1,000 rather than
//! 25,000 times after an op (`diffuq::keep_freed_memory`): plain 101–105 ms, window 1.35–1.41×
//! (median of 5; criterion medians 106 / 144 ms = 1.35×, a noisier second run 1.58×), every
//! step 6.0–6.5×; the 5,000-row call 9.1–9.2 ms, the 1,000-row call 1.8–2.2 ms. With the
//! keystream made sixteen ChaCha20 blocks at a time (`diffuq_linalg::chacha`, same words) and the
//! ratios read from interleaved rounds (below), on a Zen 5 of the same size: draws 0.75–0.85 ms
//! (were 1.43), plain 77.7–86.4 ms, window 1.37×, 1.34×, 1.38× in three runs, every step
//! 6.7–6.8×.
//! The network is the frozen (inference) view of the MLP, as artifacts sample.

use std::hint::black_box;
use std::time::Instant;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use diffuq::model::toy_mlp::{EnsembleMlp, MlpSpec};
use diffuq::model::Denoiser;
use diffuq::sampler::{ddim, NoObserver, Observer, StepRules, StreamNoise};
use diffuq::schedule::{leading_grid, NoiseSchedule, ScheduleKind};
use diffuq::seed::SeedStreams;
use diffuq::uq::au::{AuCompat, AuObserver, AuSpec, StepWindow};

/// One ensemble member seen as an (N, D) → (N, D) denoiser.
struct Single(EnsembleMlp);
impl Denoiser for Single {
    fn eps(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let (n, d) = x.dims2()?;
        self.0.eps(&x.reshape((1, n, d))?, t)?.reshape((n, d))
    }
}

const D: usize = 64;
const B: usize = 1000;

struct Setup {
    net: Single,
    schedule: NoiseSchedule,
    grid: Vec<usize>,
    x_t: Tensor,
    idx: Vec<u64>,
    streams: SeedStreams,
}

fn setup() -> Setup {
    let streams = SeedStreams::new(0);
    let spec = MlpSpec {
        data_dim: D,
        hidden: 128,
        layers: 3,
        time_dim: 32,
        members: 1,
        fourier_features: 0,
        fourier_scale: 1.0,
    };
    let net = Single(
        EnsembleMlp::init(spec, 1000, &streams, &Device::Cpu)
            .unwrap()
            .frozen(),
    );
    let idx: Vec<u64> = (0..B as u64).collect();
    let x_t = Tensor::from_vec(
        streams.purpose("x_T").normals(&idx, None, D),
        (B, D),
        &Device::Cpu,
    )
    .unwrap();
    Setup {
        net,
        schedule: NoiseSchedule::new(ScheduleKind::Cosine, 0.0, 0.0, 1000),
        grid: leading_grid(1000, 50),
        x_t,
        idx,
        streams,
    }
}

fn sample(s: &Setup, window: Option<StepWindow>) -> usize {
    let noise = StreamNoise {
        purpose: s.streams.purpose("noise"),
        indices: &s.idx,
        dim: D,
        device: &Device::Cpu,
    };
    let spec = AuSpec {
        m: 5,
        ddof: diffuq::uq::au::Ddof::Minus(1),
        compat: AuCompat::Paper,
        clip_sample: None,
    };
    let mut au;
    let observer: &mut dyn Observer = match window {
        Some(w) => {
            au = AuObserver::new(
                &s.net,
                &s.schedule,
                spec,
                s.streams.purpose("au"),
                &s.idx,
                w,
            );
            &mut au
        }
        None => &mut NoObserver,
    };
    let out = ddim::sample(
        &s.net,
        &s.schedule,
        &s.grid,
        0.0,
        &StepRules::default(),
        black_box(s.x_t.clone()),
        &noise,
        observer,
    )
    .unwrap();
    black_box(out.x0);
    out.nfe
}

/// Wall time of one run, seconds.
fn secs(f: impl FnOnce()) -> f64 {
    let t0 = Instant::now();
    f();
    t0.elapsed().as_secs_f64()
}

/// The median of `v` (odd length).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn benches(c: &mut Criterion) {
    diffuq::keep_freed_memory();
    let s = setup();
    let mut g = c.benchmark_group("au_overhead_ddim50_1000x64");
    g.sample_size(10);
    g.bench_function("plain", |b| b.iter(|| sample(&s, None)));
    g.bench_function("au_window_45_48_m5", |b| {
        b.iter(|| sample(&s, Some(StepWindow::PAPER)))
    });
    g.bench_function("au_every_step_m5", |b| {
        b.iter(|| sample(&s, Some(StepWindow::all(50))))
    });
    g.finish();

    // The pieces of one uncertainty step: the re-noising draws (seed streams) and one batched
    // network call on M·B rows.
    let mut g = c.benchmark_group("au_step_parts_1000x64");
    let purpose = s.streams.purpose("au");
    g.bench_function("renoising_draws_m5", |b| {
        b.iter(|| diffuq::uq::au::renoising(black_box(&s.x_t), 45, &s.idx, &purpose, 5).unwrap())
    });
    let big = Tensor::cat(&[&s.x_t, &s.x_t, &s.x_t, &s.x_t, &s.x_t], 0).unwrap();
    g.bench_function("eps_5000_rows", |b| {
        b.iter(|| s.net.eps(black_box(&big), 80.0).unwrap())
    });
    g.bench_function("eps_1000_rows", |b| {
        b.iter(|| s.net.eps(black_box(&s.x_t), 80.0).unwrap())
    });
    g.finish();

    // The ratios from interleaved runs, each round's ratio taken to its own plain run: the
    // shared machine's speed drifts by ±15% over seconds and single runs vary by more, which
    // separate blocks of runs would read as overhead (or hide). 21 rounds for the window (the
    // order within a round alternating), 5 for AU at every step (6× the work per run).
    let (mut plain, mut window, mut every) = (vec![], vec![], vec![]);
    let run = |w: Option<StepWindow>| {
        secs(|| {
            sample(&s, w);
        })
    };
    for round in 0..21 {
        let (p, w) = if round % 2 == 0 {
            let p = run(None);
            (p, run(Some(StepWindow::PAPER)))
        } else {
            let w = run(Some(StepWindow::PAPER));
            (run(None), w)
        };
        window.push(w / p);
        plain.push(p);
    }
    for _ in 0..5 {
        let p = run(None);
        every.push(run(Some(StepWindow::all(50))) / p);
    }
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    println!(
        "AU overhead vs plain 50-step DDIM (median of interleaved rounds; range): window 45..48, M = 5: {:.2}× ({}; NFE 70/50 = 1.40×); every step: {:.2}× ({}; NFE 300/50 = 6.00×); plain {:.1} ms",
        median(window.clone()),
        spread(&window),
        median(every.clone()),
        spread(&every),
        median(plain) * 1e3
    );
}

criterion_group!(au_overhead, benches);
criterion_main!(au_overhead);
