//! gu-fig2 — GU (Jazbec et al. 2025) Sec. 4.1, Fig. 2: a deep ensemble of small diffusion models on
//! the 25-mode toy grid; 50 % of the samples with the highest generative uncertainty are dropped.
//!
//! Per seed (each seed is a full replicate: data, ensemble training, sampling, baseline):
//! 1. draw the training set from the 5×5 grid ([`ToyGrid`]);
//! 2. train M ε-MLPs with the DDPM loss (linear β, T = 1000) — [`train_ensemble`];
//! 3. for each sample index i: x_T and the per-step DDPM noise come from the seed streams, shared
//!    by all members (GU Alg. 1: same x_T; here also the same sampler randomness);
//! 4. the *sample* is member 0's output (member 0 plays the "pretrained model" of Alg. 1); its
//!    generative uncertainty is the entropy of the moment-matched Gaussian over all M members'
//!    outputs with pixel likelihood γ² (GU Eq. 8, [`moment_matched_entropy`]);
//! 5. keep the `keep_fraction` least uncertain, and as a baseline a uniformly random subset of the
//!    same size; count "between-mode" samples (farther than k·mode_std from every centre).
//!
//! [`moment_matched_entropy`]: crate::uq::gu::moment_matched_entropy

use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::MultiProgress;
use polars::df;
use polars::prelude::DataFrame;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{kit, Experiment, Outcome, RunOptions, Verdict};
use crate::config::{check, Resolved, Validate, Violation};
use crate::data::toy_grid::ToyGrid;
use crate::error::{Error, Result, TensorContext};
use crate::metrics::stats::mean_std;
use crate::model::toy_mlp::{EnsembleMlp, MlpSpec};
use crate::model::train::{train_ensemble, LrDecay, TrainSpec};
use crate::report::compare::{Comparison, Reproduced};
use crate::report::paper::PaperFile;
use crate::report::scatter::{write_scatter, Panel, ScatterSpec};
use crate::report::table::{pm, Table};
use crate::sampler::{ddpm, NoObserver, StreamNoise};
use crate::schedule::{leading_grid, NoiseSchedule, ScheduleKind};
use crate::seed::SeedStreams;
use crate::tracking::{Manifest, RunDir};
use crate::uq::gu::entropies_mnd;

pub struct GuFig2;

/// `experiments/gu-fig2/experiment.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bumped whenever the expected numbers can move.
    pub version: u32,
    /// One full replicate per seed; the table reports mean ± std over them.
    pub seeds: Vec<u64>,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
    pub ensemble: EnsembleConfig,
    pub sampling: SamplingConfig,
    pub uq: UqConfig,
    pub eval: EvalConfig,
    pub plot: PlotConfig,
    pub laplace: LaplaceConfig,
}

/// `[laplace]`: the single-model variant — member `member` alone with a last-layer diagonal
/// empirical-Fisher Laplace posterior (GU App. B) instead of the ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaplaceConfig {
    pub enabled: bool,
    /// Which trained member plays the MAP model.
    pub member: usize,
    /// Training items in the Fisher (each with its own t and ε from the seed streams).
    pub fit_items: usize,
    pub fit_batch_size: usize,
    /// Observation noise σ and prior precision λ (GU: 1 and 1).
    pub sigma: f64,
    pub prior_precision: f64,
    /// H = ef_scale · Σ g² (laplace-torch, GU: 2).
    pub ef_scale: f64,
    /// Posterior draws M; the MAP sample is a mixture member too (GU's 1 + M).
    pub draws: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Modes per side of the square grid.
    pub side: usize,
    /// Distance between neighbouring mode centres.
    pub spacing: f64,
    /// Standard deviation of each isotropic mode.
    pub mode_std: f64,
    /// Training-set size.
    pub n_train: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub hidden: usize,
    pub layers: usize,
    pub time_dim: usize,
    /// Gaussian Fourier features of x (0 = plain MLP on raw coordinates).
    pub fourier_features: usize,
    /// Std of the Fourier frequencies (cycles per data unit).
    pub fourier_scale: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    pub schedule: ScheduleKind,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Training timesteps T.
    pub timesteps: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// `constant` or `cosine` (annealed to 0 over `steps`).
    pub lr_decay: LrDecay,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// Ensemble size M.
    pub members: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Generated samples per seed.
    pub samples: usize,
    /// DDPM sampling steps on the "leading" grid (= timesteps for the full ancestral chain).
    pub steps: usize,
    /// Samples per batched call (all members at once).
    pub batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UqConfig {
    /// Observation variance γ² of the pixel likelihood N(x_m, γ² I) (GU Eq. 6).
    pub gamma2: f64,
    /// Fraction of samples kept (lowest uncertainty first).
    pub keep_fraction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// A sample is between modes when farther than `between_k · mode_std` from every centre.
    pub between_k: f64,
    /// The paper's claim holds when uncertainty filtering removes at least this share of the
    /// between-mode samples ("removes all poor generations", GU Sec. 4.1).
    pub min_removed: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotConfig {
    /// Points drawn per panel (the first N samples; they are i.i.d., so a uniform subsample).
    pub max_points: usize,
}

impl Validate for Config {
    fn validate(&self) -> Vec<Violation> {
        let mut v = vec![];
        crate::config::check_seeds(&mut v, &self.seeds);
        check(&mut v, self.data.side >= 2, "data.side", "must be ≥ 2");
        check(
            &mut v,
            self.data.spacing > 0.0,
            "data.spacing",
            "must be > 0",
        );
        check(
            &mut v,
            self.data.mode_std > 0.0,
            "data.mode_std",
            "must be > 0",
        );
        check(
            &mut v,
            self.data.n_train >= 1,
            "data.n_train",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.model.hidden >= 1,
            "model.hidden",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.model.layers >= 1,
            "model.layers",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.model.time_dim >= 2 && self.model.time_dim.is_multiple_of(2),
            "model.time_dim",
            "must be even and ≥ 2",
        );
        check(
            &mut v,
            self.model.fourier_features.is_multiple_of(2),
            "model.fourier_features",
            "must be even (sin and cos pairs)",
        );
        check(
            &mut v,
            self.model.fourier_scale > 0.0 && self.model.fourier_scale.is_finite(),
            "model.fourier_scale",
            "must be finite and > 0",
        );
        let d = &self.diffusion;
        // Each bound is blamed on its own key (`beta_end = 2` was reported as `beta_start`).
        check(
            &mut v,
            d.beta_end > 0.0 && d.beta_end < 1.0,
            "diffusion.beta_end",
            "must be in (0, 1)",
        );
        check(
            &mut v,
            d.beta_start > 0.0 && d.beta_start <= d.beta_end.clamp(0.0, 1.0),
            "diffusion.beta_start",
            "must be > 0 and ≤ diffusion.beta_end",
        );
        check(
            &mut v,
            d.timesteps >= 2,
            "diffusion.timesteps",
            "must be ≥ 2",
        );
        check(&mut v, self.train.steps >= 1, "train.steps", "must be ≥ 1");
        check(
            &mut v,
            self.train.batch_size >= 1,
            "train.batch_size",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.train.lr > 0.0 && self.train.lr.is_finite(),
            "train.lr",
            "must be finite and > 0",
        );
        check(
            &mut v,
            self.ensemble.members >= 2,
            "ensemble.members",
            "must be ≥ 2 (uncertainty needs disagreement)",
        );
        check(
            &mut v,
            self.sampling.samples >= 2,
            "sampling.samples",
            "must be ≥ 2",
        );
        check(
            &mut v,
            (1..=d.timesteps).contains(&self.sampling.steps),
            "sampling.steps",
            "must be in 1..=diffusion.timesteps",
        );
        check(
            &mut v,
            self.sampling.batch_size >= 1,
            "sampling.batch_size",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.uq.gamma2 > 0.0 && self.uq.gamma2.is_finite(),
            "uq.gamma2",
            "must be finite and > 0",
        );
        check(
            &mut v,
            self.uq.keep_fraction > 0.0 && self.uq.keep_fraction < 1.0,
            "uq.keep_fraction",
            "must be in (0, 1)",
        );
        // The kept count is ⌊samples · keep_fraction⌋: a fraction that keeps nothing would give a
        // table of NaNs (found: 1e-9 did, with exit 0).
        let kept = (self.sampling.samples as f64 * self.uq.keep_fraction).floor();
        check(
            &mut v,
            !(self.uq.keep_fraction > 0.0 && self.uq.keep_fraction < 1.0) || kept >= 1.0,
            "uq.keep_fraction",
            &format!(
                "keeps ⌊{} · {}⌋ = 0 of sampling.samples; must keep at least one sample",
                self.sampling.samples, self.uq.keep_fraction
            ),
        );
        check(
            &mut v,
            self.eval.between_k > 0.0,
            "eval.between_k",
            "must be > 0",
        );
        check(
            &mut v,
            (0.0..=1.0).contains(&self.eval.min_removed),
            "eval.min_removed",
            "must be in [0, 1]",
        );
        check(
            &mut v,
            self.plot.max_points >= 1,
            "plot.max_points",
            "must be ≥ 1",
        );
        let l = &self.laplace;
        check(
            &mut v,
            l.member < self.ensemble.members,
            "laplace.member",
            "must name a trained member (< ensemble.members)",
        );
        check(&mut v, l.fit_items >= 1, "laplace.fit_items", "must be ≥ 1");
        check(
            &mut v,
            l.fit_batch_size >= 1,
            "laplace.fit_batch_size",
            "must be ≥ 1",
        );
        check(
            &mut v,
            l.sigma > 0.0,
            "laplace.sigma",
            "observation noise must be > 0",
        );
        check(
            &mut v,
            l.prior_precision > 0.0,
            "laplace.prior_precision",
            "must be > 0",
        );
        check(&mut v, l.ef_scale > 0.0, "laplace.ef_scale", "must be > 0");
        check(
            &mut v,
            l.draws >= 1,
            "laplace.draws",
            "posterior draws M must be ≥ 1",
        );
        v
    }
}

impl Config {
    fn grid(&self) -> ToyGrid {
        ToyGrid {
            side: self.data.side,
            spacing: self.data.spacing,
            mode_std: self.data.mode_std,
        }
    }
}

/// Subsets reported in the table, in order.
const SETS: [&str; 6] = [
    "training data",
    "all samples",
    "kept: uncertainty",
    "kept: random",
    "laplace: all samples",
    "laplace: kept",
];

/// The `keep` lowest values (ties by index), as a mask.
fn keep_lowest(h: &[f64], keep: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..h.len()).collect();
    order.sort_by(|&a, &b| h[a].total_cmp(&h[b]).then(a.cmp(&b)));
    let mut kept = vec![false; h.len()];
    order[..keep].iter().for_each(|&i| kept[i] = true);
    kept
}

/// The Laplace variant of one seed: fit the last-layer posterior of one member on the training
/// data (one t and ε per item from the seed streams), then GU Alg. 1 with that member as the MAP
/// model and `laplace.draws` posterior draws, same x_T and DDPM noise as the ensemble. Returns the
/// MAP samples and their entropies.
fn laplace_variant(
    cfg: &Config,
    model: &EnsembleMlp,
    data: &[f32],
    schedule: &NoiseSchedule,
    streams: &SeedStreams,
    n: usize,
) -> Result<(Vec<[f64; 2]>, Vec<f64>)> {
    use crate::features::Identity;
    use crate::model::toy_mlp::Member;
    use crate::sampler::spec::{SamplerKind, SamplerSpec};
    use crate::sampler::FinalStep;
    use crate::schedule::{ContinuousSpacing, Spacing};
    use crate::uq::gu::{generate, GuCompat, GuSpec};
    use crate::uq::laplace::{FisherAccumulator, LaplaceSpec};
    let l = &cfg.laplace;
    let device = &Device::Cpu;
    let member = Member {
        net: model,
        index: l.member,
    };
    let spec = LaplaceSpec {
        sigma: l.sigma,
        prior_precision: l.prior_precision,
        ef_scale: l.ef_scale,
        channels: None,
    };
    let mut acc = FisherAccumulator::new(&member, spec)?;
    let n_data = data.len() / 2;
    let t_max = schedule.len();
    for start in (0..l.fit_items).step_by(l.fit_batch_size) {
        let idx: Vec<u64> =
            (start as u64..(start + l.fit_batch_size).min(l.fit_items) as u64).collect();
        let ts: Vec<usize> = idx
            .iter()
            .map(|&i| {
                streams
                    .purpose("laplace-fit/t")
                    .rng(i)
                    .random_range(0..t_max)
            })
            .collect();
        let eps = streams.purpose("laplace-fit/eps").normals(&idx, None, 2);
        let mut x_t = Vec::with_capacity(idx.len() * 2);
        for (k, &i) in idx.iter().enumerate() {
            let row = (i as usize) % n_data;
            let ab = schedule.alpha_bar(Some(ts[k]));
            for d in 0..2 {
                x_t.push(
                    ab.sqrt() as f32 * data[row * 2 + d]
                        + (1.0 - ab).sqrt() as f32 * eps[k * 2 + d],
                );
            }
        }
        let b = idx.len();
        let x_t = Tensor::from_vec(x_t, (b, 2), device).ctx("Laplace fit inputs")?;
        let target = Tensor::from_vec(eps, (b, 2), device).ctx("Laplace fit targets")?;
        let tf: Vec<f64> = ts.iter().map(|&t| t as f64).collect();
        acc.add(&x_t, &tf, &target)?;
    }
    let posterior = acc.finish();
    let sampler = SamplerSpec {
        name: SamplerKind::Ddpm,
        steps: cfg.sampling.steps,
        eta: 1.0,
        spacing: Spacing::Leading,
        steps_offset: 0,
        continuous_spacing: ContinuousSpacing::TimeUniform,
        r1: 0.5,
        final_step: FinalStep::AlphaOne,
        clip_sample: false,
        clip_range: 1.0,
        rtol: None,
        atol: None,
    };
    let gu = GuSpec {
        m: l.draws,
        include_map: true,
        gamma2: cfg.uq.gamma2,
        compat: GuCompat::Paper,
        sampler: sampler.clone(),
        rerun_map: false,
    };
    let mut samples = Vec::with_capacity(n);
    let mut entropy = Vec::with_capacity(n);
    for start in (0..n).step_by(cfg.sampling.batch_size) {
        let idx: Vec<u64> =
            (start as u64..(start + cfg.sampling.batch_size).min(n) as u64).collect();
        let b = idx.len();
        let x_t = Tensor::from_vec(
            streams.purpose(kit::streams::X_T).normals(&idx, None, 2),
            (b, 2),
            device,
        )
        .ctx("x_T")?;
        let noise = StreamNoise {
            purpose: streams.purpose(kit::streams::SAMPLER_NOISE),
            indices: &idx,
            dim: 2,
            device,
        };
        let out = generate(
            &member,
            &posterior,
            schedule,
            &sampler,
            &gu,
            &x_t,
            &noise,
            &Identity,
            &streams.purpose("laplace-draws"),
        )?;
        let xs = out
            .samples
            .to_dtype(candle_core::DType::F64)
            .and_then(|t| t.to_vec2::<f64>())
            .ctx("Laplace MAP samples")?;
        samples.extend(xs.into_iter().map(|r| [r[0], r[1]]));
        entropy.extend(out.entropy);
    }
    Ok((samples, entropy))
}

/// Run one seed and write its parts (`seeds/seed-<s>/{samples,metrics}.parquet`, and for the first
/// seed `train_data.parquet`); returns the phase wall times.
fn run_seed(
    cfg: &Config,
    seed: u64,
    run: &RunDir,
    progress: &MultiProgress,
) -> Result<Vec<(String, f64)>> {
    let device = &Device::Cpu;
    let mut times = vec![];
    let grid = cfg.grid();
    let streams = SeedStreams::new(seed);
    let data = grid.sample(cfg.data.n_train, &streams.purpose(kit::streams::TRAIN_DATA));
    let schedule = NoiseSchedule::new(
        cfg.diffusion.schedule,
        cfg.diffusion.beta_start,
        cfg.diffusion.beta_end,
        cfg.diffusion.timesteps,
    );
    let spec = MlpSpec {
        data_dim: 2,
        hidden: cfg.model.hidden,
        layers: cfg.model.layers,
        time_dim: cfg.model.time_dim,
        members: cfg.ensemble.members,
        fourier_features: cfg.model.fourier_features,
        fourier_scale: cfg.model.fourier_scale,
    };
    let model = EnsembleMlp::init(spec, cfg.diffusion.timesteps, &streams, device)
        .ctx("initialising the ensemble")?;

    let t = Instant::now();
    let pb = kit::bar(progress, cfg.train.steps, &format!("train seed {seed}"));
    let tspec = TrainSpec {
        steps: cfg.train.steps,
        batch_size: cfg.train.batch_size,
        lr: cfg.train.lr,
        lr_decay: cfg.train.lr_decay,
    };
    let losses = train_ensemble(
        &model,
        &data,
        &schedule,
        tspec,
        &streams,
        device,
        |step, loss| {
            pb.set_position(step as u64);
            if step % 50 == 0 {
                pb.set_message(format!("loss {loss:.4}"));
            }
        },
    )?;
    pb.finish_and_clear();
    times.push((format!("train/seed-{seed}"), t.elapsed().as_secs_f64()));
    // Inference from here on: no op graph kept alive across sampling steps (see `frozen`).
    let model = model.frozen();
    run.log(&format!(
        "seed {seed}: trained {} members, final losses {losses:.4?}",
        spec.members
    ))?;
    if losses.iter().any(|l| !l.is_finite()) {
        return Err(Error::invalid(
            format!("training seed {seed}"),
            format!("loss diverged ({losses:?}); lower train.lr"),
        ));
    }

    // Sampling: all members at once, per batch of sample indices.
    let t = Instant::now();
    let (n, m) = (cfg.sampling.samples, spec.members);
    let steps = leading_grid(cfg.diffusion.timesteps, cfg.sampling.steps);
    let x_t_purpose = streams.purpose(kit::streams::X_T);
    let noise_purpose = streams.purpose(kit::streams::SAMPLER_NOISE);
    let mut outputs = vec![0f32; m * n * 2]; // (M, N, 2)
    let pb = kit::bar(progress, n, &format!("sample seed {seed}"));
    let mut nfe = 0;
    for start in (0..n).step_by(cfg.sampling.batch_size) {
        let idx: Vec<u64> =
            (start as u64..(start + cfg.sampling.batch_size).min(n) as u64).collect();
        let b = idx.len();
        let x0 = (|| -> candle_core::Result<Vec<f32>> {
            let x_t = Tensor::from_vec(x_t_purpose.normals(&idx, None, 2), (1, b, 2), device)?
                .broadcast_as((m, b, 2))?
                .contiguous()?;
            let noise = StreamNoise {
                purpose: noise_purpose,
                indices: &idx,
                dim: 2,
                device,
            };
            let out = ddpm::sample(
                &model,
                &schedule,
                &steps,
                &crate::sampler::StepRules::default(),
                x_t,
                &noise,
                &mut NoObserver,
            )?;
            nfe = out.nfe * m;
            out.x0.flatten_all()?.to_vec1::<f32>()
        })()
        .ctx("sampling the ensemble")?;
        for member in 0..m {
            let dst = (member * n + start) * 2;
            outputs[dst..dst + 2 * b].copy_from_slice(&x0[member * b * 2..(member + 1) * b * 2]);
        }
        pb.inc(b as u64);
    }
    pb.finish_and_clear();
    times.push((format!("sample/seed-{seed}"), t.elapsed().as_secs_f64()));

    let h = entropies_mnd(&outputs, m, n, 2, cfg.uq.gamma2);
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            format!("seed {seed} sample {i}"),
            "non-finite ensemble output; the model diverged",
        ));
    }
    let keep = ((n as f64) * cfg.uq.keep_fraction).floor() as usize;
    let kept_gu = keep_lowest(&h, keep);
    // Random baseline: partial Fisher–Yates from its own stream.
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = streams.purpose(kit::streams::RANDOM_KEEP).rng(0);
    for i in 0..keep {
        let j = rng.random_range(i..n);
        perm.swap(i, j);
    }
    let mut kept_random = vec![false; n];
    perm[..keep].iter().for_each(|&i| kept_random[i] = true);

    let sample_xy: Vec<[f64; 2]> = (0..n)
        .map(|i| [f64::from(outputs[i * 2]), f64::from(outputs[i * 2 + 1])])
        .collect();
    let dist: Vec<f64> = sample_xy
        .iter()
        .map(|p| grid.nearest_distance(*p))
        .collect();
    let radius = cfg.eval.between_k * cfg.data.mode_std;
    let between: Vec<bool> = dist.iter().map(|&d| d > radius).collect();
    let data_between = data
        .chunks(2)
        .filter(|r| grid.is_between_modes([f64::from(r[0]), f64::from(r[1])], cfg.eval.between_k))
        .count();

    let count = |mask: &dyn Fn(usize) -> bool| -> (u64, u64) {
        let total = (0..n).filter(|&i| mask(i)).count() as u64;
        let bad = (0..n).filter(|&i| mask(i) && between[i]).count() as u64;
        (total, bad)
    };
    let mut rows = vec![
        (cfg.data.n_train as u64, data_between as u64),
        count(&|_| true),
        count(&|i| kept_gu[i]),
        count(&|i| kept_random[i]),
    ];
    let mut laplace_h = vec![f64::NAN; n];
    if cfg.laplace.enabled {
        let t = Instant::now();
        let (lap_samples, h) = laplace_variant(cfg, &model, &data, &schedule, &streams, n)?;
        times.push((format!("laplace/seed-{seed}"), t.elapsed().as_secs_f64()));
        let lap_between: Vec<bool> = lap_samples
            .iter()
            .map(|p| grid.nearest_distance(*p) > radius)
            .collect();
        let kept = keep_lowest(&h, keep);
        let lap_count = |mask: &dyn Fn(usize) -> bool| -> (u64, u64) {
            let total = (0..n).filter(|&i| mask(i)).count() as u64;
            let bad = (0..n).filter(|&i| mask(i) && lap_between[i]).count() as u64;
            (total, bad)
        };
        rows.push(lap_count(&|_| true));
        rows.push(lap_count(&|i| kept[i]));
        laplace_h = h;
    }
    let sets = &SETS[..rows.len()];
    let mut metrics = df!(
        "seed" => vec![seed; sets.len()],
        "set" => sets.to_vec(),
        "n" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        "n_between" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        "share_between" => rows.iter().map(|r| r.1 as f64 / r.0 as f64).collect::<Vec<_>>(),
        "final_loss" => vec![losses.iter().sum::<f64>() / m as f64; sets.len()],
    )
    .ctx("building metrics frame")?;
    let mut samples = df!(
        "seed" => vec![seed; n],
        "index" => (0..n as u64).collect::<Vec<_>>(),
        "x" => sample_xy.iter().map(|p| p[0]).collect::<Vec<_>>(),
        "y" => sample_xy.iter().map(|p| p[1]).collect::<Vec<_>>(),
        "uncertainty" => h,
        "uncertainty_laplace" => laplace_h,
        "nearest_mode_distance" => dist,
        "between_mode" => between,
        "kept_uncertainty" => kept_gu,
        "kept_random" => kept_random,
        "nfe" => vec![nfe as u64; n],
    )
    .ctx("building samples frame")?;
    let shown = cfg.plot.max_points.min(cfg.data.n_train);
    let mut train = df!(
        "x" => data[..2 * shown].iter().step_by(2).map(|&v| f64::from(v)).collect::<Vec<_>>(),
        "y" => data[1..2 * shown].iter().step_by(2).map(|&v| f64::from(v)).collect::<Vec<_>>(),
    )
    .ctx("building training-data frame")?;
    let part = format!("seeds/seed-{seed}");
    run.write_parquet(&format!("{part}/samples.parquet"), &mut samples)?;
    if seed == cfg.seeds[0] {
        run.write_parquet("train_data.parquet", &mut train)?;
    }
    // Written last: its presence marks the seed as finished (see `GuFig2::run`).
    run.write_parquet(&format!("{part}/metrics.parquet"), &mut metrics)?;
    Ok(times)
}

impl Experiment for GuFig2 {
    const NAME: &'static str = "gu-fig2";
    const DESCRIPTION: &'static str =
        "GU Fig. 2: toy 25-mode grid, ensemble generative uncertainty drops between-mode samples";
    type Config = Config;

    fn run(
        cfg: &Resolved<Config>,
        run: &RunDir,
        manifest: &mut Manifest,
        opts: &RunOptions,
    ) -> Result<()> {
        let c = &cfg.config;
        // Seeds are independent replicates with their own streams: computing them concurrently
        // changes wall time only.
        kit::PartRunner::new(run, &c.seeds, &["samples", "metrics"]).run(
            manifest,
            opts.jobs,
            |seed, progress| run_seed(c, seed, run, progress),
        )?;
        Ok(())
    }

    fn report(cfg: &Config, run: &RunDir) -> Result<Verdict> {
        let metrics = run.read_parquet("metrics.parquet")?;
        let col = |name: &str| -> Result<Vec<f64>> {
            Ok(metrics
                .column(name)
                .ctx(name)?
                .cast(&polars::prelude::DataType::Float64)
                .ctx(name)?
                .f64()
                .ctx(name)?
                .into_no_null_iter()
                .collect())
        };
        let sets: Vec<String> = metrics
            .column("set")
            .ctx("set")?
            .str()
            .ctx("set")?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect();
        let (share, n_between, seeds) = (col("share_between")?, col("n_between")?, col("seed")?);
        let per_set = |set: &str, values: &[f64]| -> Vec<f64> {
            sets.iter()
                .zip(values)
                .filter(|(s, _)| *s == set)
                .map(|(_, v)| *v)
                .collect()
        };
        let n_seeds = per_set(SETS[0], &seeds).len();

        // Share of the between-mode samples that a filter removed, per seed, relative to the
        // sample set it filtered (the ensemble's, or the Laplace MAP model's).
        let removed = |set: &str| -> Vec<f64> {
            let base = if set.starts_with("laplace") {
                SETS[4]
            } else {
                SETS[1]
            };
            let all_bad = per_set(base, &n_between);
            per_set(set, &n_between)
                .iter()
                .zip(&all_bad)
                .map(|(k, a)| if *a > 0.0 { 1.0 - k / a } else { 1.0 })
                .collect()
        };
        let mut table = Table::new([
            "set",
            "between-mode share (%)",
            "between-mode samples removed (%)",
        ]);
        for set in SETS.iter().filter(|s| sets.iter().any(|x| x == *s)) {
            let (m, s) = mean_std(
                &per_set(set, &share)
                    .iter()
                    .map(|v| v * 100.0)
                    .collect::<Vec<_>>(),
            );
            let removed_cell = if set.contains("kept") {
                let (rm, rs) =
                    mean_std(&removed(set).iter().map(|v| v * 100.0).collect::<Vec<_>>());
                pm(rm, rs, 1)
            } else {
                "—".into()
            };
            table.row([set.to_string(), pm(m, s, 2), removed_cell]);
        }
        let (gu_removed, gu_std) = mean_std(&removed(SETS[2]));
        let (rand_removed, rand_std) = mean_std(&removed(SETS[3]));
        // The claim is tested only with a positive threshold (`eval.min_removed = 0`, the smoke
        // profile, checks the pipeline) and only if some sample fell between modes: with none,
        // "removed" is 100% by definition and says nothing about the uncertainty.
        let any_between = per_set(SETS[1], &n_between).iter().sum::<f64>() > 0.0;
        let outcome = if cfg.eval.min_removed <= 0.0 || !any_between {
            Outcome::NotChecked
        } else {
            Outcome::of_check(
                true,
                gu_removed >= cfg.eval.min_removed && gu_removed > rand_removed,
            )
        };
        let verdict = if cfg.eval.min_removed <= 0.0 {
            format!("{} at this setting (eval.min_removed = 0)", outcome.label())
        } else if !any_between {
            format!(
                "{}: no sample fell between modes, so filtering had nothing to remove",
                outcome.label()
            )
        } else {
            format!(
                "(≥ {:.0}% removed, and more than random) {}",
                cfg.eval.min_removed * 100.0,
                outcome.label()
            )
        };
        let laplace = if sets.iter().any(|s| s == SETS[5]) {
            let (l, _) = mean_std(&removed(SETS[5]));
            format!(" (last-layer Laplace, one model: {:.1}%)", l * 100.0)
        } else {
            String::new()
        };
        let summary = format!(
            "uncertainty filtering removed {:.1}% of between-mode samples{laplace} (random: {:.1}%); paper claim {verdict}",
            gu_removed * 100.0,
            rand_removed * 100.0,
        );
        let paper = paper_file()?;
        let md = format!(
            "# gu-fig2 — GU Fig. 2 (toy 25-mode grid)\n\nPaper: {}\n\nMean ± std over {n_seeds} seeds; {} samples per seed, {} ensemble members, keep {:.0}%; between-mode = farther than {}·σ_mode = {} from every centre.\n\n{}\n{summary}\n",
            paper.claim.trim(),
            cfg.sampling.samples,
            cfg.ensemble.members,
            cfg.uq.keep_fraction * 100.0,
            cfg.eval.between_k,
            cfg.eval.between_k * cfg.data.mode_std,
            table.to_markdown()
        );
        run.write("table.md", md.as_bytes())?;
        // Paper vs reproduced, keyed like paper/gu-fig2.toml; the random baseline has no paper
        // value but shows the ordering the claim is about.
        let column = "between-mode samples removed (%)";
        let reproduced = [
            Reproduced::new(SETS[2], column, gu_removed * 100.0).with_std(gu_std * 100.0),
            Reproduced::new(SETS[3], column, rand_removed * 100.0).with_std(rand_std * 100.0),
        ];
        let scale = super::run_scale(run)?;
        super::write_comparison(
            run,
            &Comparison::new(GuFig2::NAME, Some(&paper), &reproduced, &scale),
        )?;
        write_figure(cfg, run)?;
        Ok(Verdict {
            table: md,
            outcome,
            summary,
        })
    }
}

/// The paper's claim and number, from `paper/gu-fig2.toml` (compiled in, so reports never depend
/// on the working directory).
fn paper_file() -> Result<PaperFile> {
    crate::report::paper::parse(
        include_str!("../../paper/gu-fig2.toml"),
        "paper/gu-fig2.toml",
    )
}

fn write_figure(cfg: &Config, run: &RunDir) -> Result<()> {
    let xy = |df: &DataFrame| -> Result<Vec<[f64; 2]>> {
        let x = df.column("x").ctx("x")?.f64().ctx("x")?;
        let y = df.column("y").ctx("y")?.f64().ctx("y")?;
        Ok(x.into_no_null_iter()
            .zip(y.into_no_null_iter())
            .map(|(a, b)| [a, b])
            .collect())
    };
    let train = xy(&run.read_parquet("train_data.parquet")?)?;
    let first = cfg.seeds[0];
    let samples = run.read_parquet(&format!("seeds/seed-{first}/samples.parquet"))?;
    let all = xy(&samples)?;
    let kept_mask: Vec<bool> = samples
        .column("kept_uncertainty")
        .ctx("kept_uncertainty")?
        .bool()
        .ctx("kept_uncertainty")?
        .iter()
        .map(|v| v.unwrap_or(false))
        .collect();
    let shown = cfg.plot.max_points.min(all.len());
    let kept: Vec<[f64; 2]> = all[..shown]
        .iter()
        .zip(&kept_mask)
        .filter(|(_, k)| **k)
        .map(|(p, _)| *p)
        .collect();
    let grid = cfg.grid();
    let extent = grid.spacing * (grid.side as f64 - 1.0) / 2.0 + 2.0 * grid.spacing;
    let panels = [
        Panel {
            title: "training data".into(),
            points: &train,
            color: plotters::style::RGBColor(90, 90, 90),
        },
        Panel {
            title: format!("all samples ({shown} shown)"),
            points: &all[..shown],
            color: plotters::style::RGBColor(31, 119, 180),
        },
        Panel {
            title: format!("kept: {:.0}% least uncertain", cfg.uq.keep_fraction * 100.0),
            points: &kept,
            color: plotters::style::RGBColor(44, 160, 44),
        },
    ];
    let spec = ScatterSpec {
        extent,
        markers: &grid.centres(),
        caption: format!(
            "gu-fig2 seed {first}: {}-member ensemble, {} DDPM steps; crosses = mode centres",
            cfg.ensemble.members, cfg.sampling.steps
        ),
    };
    write_scatter(&run.file("figures"), "gu-fig2", &panels, &spec)
}
