//! au-fig3 — AU (De Vita & Belagiannis, WACV 2025) Fig. 3: step-wise uncertainty U_t (Alg. 1),
//! mean ± std over samples, along the whole sampling trajectory.
//!
//! Per seed: an analytic Gaussian-mixture "image" distribution ([`GaussianMixture`]: K prototype
//! images with per-pixel noise) stands in for ADM's ImageNet-64 model — its ε is exact, so the
//! curve shows what Alg. 1 measures on a perfect denoiser. For every sample index i, x_T comes
//! from the seed streams; the configured sampler runs with an [`AuObserver`] that applies Alg. 1
//! at *every* step (M re-noisings, one batched call). Per image and step we keep the mean over
//! pixels of U_t; per image the filtering score (Σ over the `au.window_*` steps and pixels) too.
//!
//! With a `[trained]` table, each seed also runs the same sampler and Alg. 1 at every step on a
//! **trained** network — diffuq's mini model on Fashion-MNIST (its own linear schedule; labels
//! cycle through the classes) — whose ε has the errors of a real network: the paper's "late steps
//! vary most" is a statement about such errors, which an exact denoiser does not make
//! (`seeds/seed-<s>/stepwise_trained.parquet`).
//!
//! The report aggregates over all samples: per step the mean and std of the per-image U_t, and
//! compares where the spread peaks with the paper's statement (see `paper/au-fig3.toml`), for each
//! panel; the verdict is the trained panel's when there is one (the paper's curve is a trained
//! model's), and the analytic panel's otherwise.

use crate::experiments::inputs::{self, FileKeys, InputFile, Tables};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use polars::df;
use serde::{Deserialize, Serialize};

use super::{kit, Experiment, Outcome, RunOptions, Verdict};
use crate::config::{check, Resolved, Validate, Violation};
use crate::error::{Error, Result, TensorContext};
use crate::model::gmm::{Component, GaussianMixture};
use crate::report::band::{write_band, BandSeries, BandSpec};
use crate::report::compare::{Comparison, Reproduced};
use crate::report::paper::PaperFile;
use crate::report::table::Table;
use crate::sampler::spec::SamplerSpec;
use crate::sampler::StreamNoise;
use crate::schedule::{NoiseSchedule, ScheduleKind};
use crate::seed::SeedStreams;
use crate::tracking::{Manifest, RunDir};
use crate::uq::au::{AuCompat, AuObserver, AuSpec, StepWindow};

pub struct AuFig3;

/// `experiments/au-fig3/experiment.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    pub seeds: Vec<u64>,
    pub data: DataConfig,
    pub diffusion: DiffusionConfig,
    pub sampler: SamplerSpec,
    pub au: AuConfig,
    pub run: RunConfig,
    pub eval: EvalConfig,
    /// The trained-network panel (absent: the analytic panel alone). Left out of the resolved
    /// configuration when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained: Option<TrainedConfig>,
    /// `[weights]`: the paper checkpoint of the trained panel
    /// ([`crate::experiments::inputs`]; `[data]` is the analytic mixture here). Left out of the
    /// resolved configuration when empty.
    #[serde(default, skip_serializing_if = "FileKeys::is_empty")]
    pub weights: FileKeys,
}

/// `[trained]`: the trained-network panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainedConfig {
    /// `mini-model` (the recipe diffuq trains; the model cache trains it once or finds it
    /// committed) or `checkpoint:<name>` (paper scale).
    pub from: String,
    pub use_ema: bool,
    pub samples: usize,
    pub batch_size: usize,
}

/// `[data]`: the analytic mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Images are `channels × side × side`.
    pub side: usize,
    pub channels: usize,
    /// Number of prototype images (mixture components, equal weights).
    pub components: usize,
    /// A base image shared by all prototypes: pixels uniform in [−base_range, base_range].
    pub base_range: f64,
    /// Each prototype adds its own detail: pixels uniform in [−detail_range, detail_range]. Small
    /// details relative to the base make the modes separate late in the trajectory, as the
    /// foreground details of natural images do.
    pub detail_range: f64,
    /// Per-pixel std of each component.
    pub component_std: f64,
}

/// `[diffusion]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    pub schedule: ScheduleKind,
    pub beta_start: f64,
    pub beta_end: f64,
    pub timesteps: usize,
}

/// `[au]`: Alg. 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuConfig {
    pub m: usize,
    /// Eq. 8's divisor: "none" (the paper) or d (÷ (M − d)).
    pub ddof: crate::uq::au::Ddof,
    pub compat: AuCompat,
    /// First sampler step (0-based) of the filtering-score window.
    pub window_start: usize,
    pub window_len: usize,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub samples: usize,
    pub batch_size: usize,
}

/// `[eval]`: how the paper's qualitative statement is checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The "final stages" band, as fractions of the trajectory (paper: 0.75 → 0.90).
    pub late_from: f64,
    pub late_to: f64,
    /// The "rest of the process" used for comparison: progress below this fraction.
    pub early_to: f64,
    /// Required ratio of the largest std in the late band to the largest std before `early_to`.
    pub min_ratio: f64,
}

impl Validate for Config {
    fn validate(&self) -> Vec<Violation> {
        let mut v = vec![];
        crate::config::check_seeds(&mut v, &self.seeds);
        check(&mut v, self.data.side >= 1, "data.side", "must be ≥ 1");
        check(
            &mut v,
            self.data.channels >= 1,
            "data.channels",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.data.components >= 1,
            "data.components",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.data.base_range >= 0.0 && self.data.detail_range >= 0.0,
            "data.detail_range",
            "ranges must be ≥ 0",
        );
        check(
            &mut v,
            self.data.component_std > 0.0,
            "data.component_std",
            "must be > 0",
        );
        check(
            &mut v,
            self.diffusion.timesteps >= 2,
            "diffusion.timesteps",
            "must be ≥ 2",
        );
        v.extend(self.sampler.violations(self.diffusion.timesteps));
        check(
            &mut v,
            !self.sampler.name.is_flow(),
            "sampler.name",
            "euler and dopri5 integrate a flow velocity; AU's Alg. 1 needs an ε-model's sampler (ddim, ddpm, dpm-solver-2, dpm-solver-pp2m)",
        );
        check(
            &mut v,
            self.au.m >= 2,
            "au.m",
            "must be ≥ 2 (a variance needs two draws)",
        );
        check(
            &mut v,
            self.au.ddof.check("au.ddof", self.au.m).is_ok(),
            "au.ddof",
            "must be \"none\" or < au.m",
        );
        let steps = self.sampler.observed_steps();
        let w = self.window();
        check(
            &mut v,
            w.len >= 1 && w.start + w.len <= steps,
            if w.len == 0 {
                "au.window_len"
            } else {
                "au.window_start"
            },
            &format!(
                "steps {}..{} lie outside the sampler's {steps} steps (valid: 0..{steps}, non-empty)",
                w.start,
                w.start + w.len
            ),
        );
        check(
            &mut v,
            self.run.samples >= 2,
            "run.samples",
            "must be ≥ 2 (a std needs two)",
        );
        check(
            &mut v,
            self.run.batch_size >= 1,
            "run.batch_size",
            "must be ≥ 1",
        );
        let e = &self.eval;
        check(
            &mut v,
            0.0 < e.early_to
                && e.early_to <= e.late_from
                && e.late_from < e.late_to
                && e.late_to <= 1.0,
            "eval.late_from",
            "need 0 < early_to ≤ late_from < late_to ≤ 1",
        );
        v
    }
}

impl Config {
    fn window(&self) -> StepWindow {
        StepWindow {
            start: self.au.window_start,
            len: self.au.window_len,
        }
    }

    fn au_spec(&self) -> AuSpec {
        AuSpec {
            m: self.au.m,
            ddof: self.au.ddof,
            compat: self.au.compat,
            clip_sample: self.sampler.clip_sample.then_some(self.sampler.clip_range),
        }
    }

    fn schedule(&self) -> NoiseSchedule {
        let d = &self.diffusion;
        NoiseSchedule::new(d.schedule, d.beta_start, d.beta_end, d.timesteps)
    }

    fn dim(&self) -> usize {
        self.data.channels * self.data.side * self.data.side
    }

    /// The seed's mixture: base + per-prototype detail, from the `data/*` streams.
    fn mixture(&self, streams: &SeedStreams) -> Result<GaussianMixture> {
        let d = self.dim();
        let (b, r) = (self.data.base_range as f32, self.data.detail_range as f32);
        let base = streams.purpose("data/base").uniforms(&[0], None, d, -b, b);
        let idx: Vec<u64> = (0..self.data.components as u64).collect();
        let detail = streams
            .purpose("data/prototypes")
            .uniforms(&idx, None, d, -r, r);
        let components = detail
            .chunks(d)
            .map(|m| Component {
                weight: 1.0,
                mean: m
                    .iter()
                    .zip(&base)
                    .map(|(&v, &c)| f64::from(v + c))
                    .collect(),
                std: self.data.component_std,
            })
            .collect();
        GaussianMixture::new(components, self.schedule())
    }
}

/// Run one seed: `seeds/seed-<s>/{stepwise,samples}.parquet`.
fn run_seed(c: &Config, seed: u64, run: &RunDir) -> Result<f64> {
    let t0 = Instant::now();
    let streams = SeedStreams::new(seed);
    let g = c.mixture(&streams)?;
    let schedule = c.schedule();
    let dev = Device::Cpu;
    let d = c.dim();
    let steps = c.sampler.observed_steps();
    let times = c.sampler.model_times(&schedule);
    let (mut s_sample, mut s_step, mut s_t, mut s_u) = (vec![], vec![], vec![], vec![]);
    let (mut p_sample, mut p_score, mut p_nfe) = (vec![], vec![], vec![]);
    let all: Vec<u64> = (0..c.run.samples as u64).collect();
    for idx in all.chunks(c.run.batch_size) {
        let x_t = Tensor::from_vec(
            streams.purpose(kit::streams::X_T).normals(idx, None, d),
            (idx.len(), d),
            &dev,
        )
        .and_then(|x| x.to_dtype(DType::F64))
        .ctx("x_T")?;
        let noise = StreamNoise {
            purpose: streams.purpose(kit::streams::SAMPLER_NOISE),
            indices: idx,
            dim: d,
            device: &dev,
        };
        let mut obs = AuObserver::new(
            &g,
            &schedule,
            c.au_spec(),
            streams.purpose(kit::streams::AU_RENOISE),
            idx,
            StepWindow::all(steps),
        );
        let out = c
            .sampler
            .sample(&g, &schedule, x_t, &noise, &mut obs)
            .ctx("sampling with AU")?;
        for r in &obs.records {
            for (i, u) in idx.iter().zip(&r.per_image) {
                s_sample.push(*i);
                s_step.push(r.step as u32);
                s_t.push(times.get(r.step).copied().unwrap_or(r.t));
                s_u.push(u / d as f64);
            }
        }
        let score = obs.score(c.window());
        for (i, s) in idx.iter().zip(score) {
            p_sample.push(*i);
            p_score.push(s);
            p_nfe.push((out.nfe + c.window().len * c.au.m) as u32);
        }
    }
    let n = s_sample.len();
    let mut stepwise = df!(
        "seed" => vec![seed; n],
        "sample" => s_sample,
        "step" => s_step,
        "t" => s_t,
        "u_mean_pixel" => s_u,
    )
    .ctx("stepwise frame")?;
    let n = p_sample.len();
    let mut samples = df!(
        "seed" => vec![seed; n],
        "sample" => p_sample,
        "score" => p_score,
        "nfe_filtering" => p_nfe,
    )
    .ctx("samples frame")?;
    let dir = format!("seeds/seed-{seed}");
    run.write_parquet(&format!("{dir}/stepwise.parquet"), &mut stepwise)?;
    run.write_parquet(&format!("{dir}/samples.parquet"), &mut samples)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// The trained panel of one seed: `seeds/seed-<s>/stepwise_trained.parquet`.
fn run_seed_trained(
    c: &Config,
    tr: &TrainedConfig,
    model: &kit::ImageModel,
    seed: u64,
    run: &RunDir,
    dev: &Device,
) -> Result<()> {
    let streams = SeedStreams::new(seed);
    let schedule = model.schedule.clone();
    let [ch, h, w] = model.shape;
    let d = ch * h * w;
    let steps = c.sampler.observed_steps();
    let times = c.sampler.model_times(&schedule);
    let (mut s_sample, mut s_step, mut s_t, mut s_u) = (vec![], vec![], vec![], vec![]);
    let all: Vec<u64> = (0..tr.samples as u64).collect();
    for idx in all.chunks(tr.batch_size) {
        let x_t = kit::initial_noise(&streams, idx, &model.shape, dev)?;
        let mut bound = crate::model::Bound::new(model.net.as_ref()).with_schedule(&schedule);
        if model.conditional() {
            let y = kit::cycled_labels(idx, model.classes);
            bound = bound.with_labels(Tensor::from_vec(y, idx.len(), dev).ctx("labels")?);
        }
        let noise = crate::sampler::ImageNoise {
            inner: StreamNoise {
                purpose: streams.purpose(kit::streams::SAMPLER_NOISE),
                indices: idx,
                dim: d,
                device: dev,
            },
            shape: (ch, h, w),
        };
        let mut obs = AuObserver::new(
            &bound,
            &schedule,
            c.au_spec(),
            streams.purpose(kit::streams::AU_RENOISE),
            idx,
            StepWindow::all(steps),
        );
        let out = c
            .sampler
            .sample(&bound, &schedule, x_t, &noise, &mut obs)
            .ctx("sampling the trained model with AU")?;
        kit::check_finite(&out.x0, idx, &format!("seed {seed}: trained-model samples"))?;
        for r in &obs.records {
            for (i, u) in idx.iter().zip(&r.per_image) {
                s_sample.push(*i);
                s_step.push(r.step as u32);
                s_t.push(times.get(r.step).copied().unwrap_or(r.t));
                s_u.push(u / d as f64);
            }
        }
    }
    let n = s_sample.len();
    let mut stepwise = df!(
        "seed" => vec![seed; n],
        "sample" => s_sample,
        "step" => s_step,
        "t" => s_t,
        "u_mean_pixel" => s_u,
    )
    .ctx("stepwise frame (trained)")?;
    run.write_parquet(
        &format!("seeds/seed-{seed}/stepwise_trained.parquet"),
        &mut stepwise,
    )
}

impl Config {
    /// The trained panel's recipe (`trained.from = "mini-model"`) at `scale`.
    fn trained_recipe(
        &self,
        experiments_dir: &std::path::Path,
        scale: &str,
    ) -> Result<Option<crate::model::recipe::ImageModelRecipe>> {
        let Some(tr) = &self.trained else {
            return Ok(None);
        };
        if let Some(name) = tr.from.strip_prefix("checkpoint:") {
            // A paper checkpoint: no recipe to train; the name must be catalogued.
            crate::model::catalog::find(name)?;
            return Ok(None);
        }
        kit::image_recipe(
            "trained.from",
            &tr.from,
            &[super::mini_model::MiniModel::NAME],
            experiments_dir,
            scale,
        )
        .map(Some)
    }
}

impl Experiment for AuFig3 {
    const NAME: &'static str = "au-fig3";
    const DESCRIPTION: &'static str =
        "AU Fig. 3: step-wise pixel uncertainty (Alg. 1) along the trajectory, mean ± std";
    type Config = Config;

    fn inputs(cfg: &Config) -> Result<Vec<InputFile>> {
        let none = FileKeys::new();
        inputs::list(Tables {
            weights: &cfg.weights,
            data: &none,
            reference: &none,
        })
    }

    fn run(
        cfg: &Resolved<Config>,
        run: &RunDir,
        manifest: &mut Manifest,
        opts: &RunOptions,
    ) -> Result<()> {
        let c = &cfg.config;
        kit::PartRunner::new(run, &c.seeds, &["stepwise", "samples"]).run(
            manifest,
            opts.jobs,
            |seed, _progress| run_seed(c, seed, run).map(|_| vec![]),
        )?;
        let Some(tr) = &c.trained else {
            return Ok(());
        };
        let dev = opts.device.open()?;
        let t = Instant::now();
        let model = kit::image_model(
            "trained.from",
            &tr.from,
            tr.use_ema,
            candle_core::DType::F32,
            &c.weights,
            &[super::mini_model::MiniModel::NAME],
            &kit::experiments_dir(&cfg.file),
            &cfg.scale,
            &dev,
        )?;
        manifest
            .wall_seconds
            .insert("train-or-load".into(), t.elapsed().as_secs_f64());
        run.log(&model.origin)?;
        for &seed in c.seeds.iter().filter(|&&s| run.computes(&c.seeds, s)) {
            let rel = format!("seeds/seed-{seed}/stepwise_trained.parquet");
            if run.has(&rel) {
                run.log(&format!("seed {seed}: reusing the trained panel"))?;
                continue;
            }
            let t = Instant::now();
            run_seed_trained(c, tr, &model, seed, run, &dev)?;
            let secs = t.elapsed().as_secs_f64();
            manifest
                .wall_seconds
                .insert(format!("trained/seed-{seed}"), secs);
            run.write_manifest(manifest)?;
            run.log(&format!("seed {seed}: trained panel in {secs:.1}s"))?;
        }
        kit::stack_parts(run, &c.seeds, "stepwise_trained")
    }

    fn recipes_at(
        cfg: &Config,
        experiments_dir: &std::path::Path,
        scale: &str,
    ) -> Result<Vec<crate::model::recipe::ImageModelRecipe>> {
        Ok(cfg
            .trained_recipe(experiments_dir, scale)?
            .into_iter()
            .collect())
    }

    fn linked_hash(
        cfg: &Config,
        experiments_dir: &std::path::Path,
        scale: &str,
    ) -> Result<Option<String>> {
        match cfg.trained_recipe(experiments_dir, scale)? {
            Some(r) => Ok(Some(crate::model::cache::recipe_key(&r.cache_identity())?)),
            None => Ok(None),
        }
    }

    fn report(cfg: &Config, run: &RunDir) -> Result<Verdict> {
        let e = &cfg.eval;
        let n_steps = cfg.sampler.observed_steps();
        let analytic = Panel::of(&run.read_parquet("stepwise.parquet")?, n_steps, e)?;
        let trained = match &cfg.trained {
            Some(_) => Some(Panel::of(
                &run.read_parquet("stepwise_trained.parquet")?,
                n_steps,
                e,
            )?),
            None => None,
        };
        // The paper's curve is a trained network's: its panel carries the verdict when present.
        let main = trained.as_ref().unwrap_or(&analytic);
        let outcome = main.outcome(e);
        let verdict = if e.min_ratio <= 0.0 {
            format!("{} at this setting (eval.min_ratio = 0)", outcome.label())
        } else if !main.spread() {
            format!(
                "{}: U_t has no spread across samples before {:.0}%",
                outcome.label(),
                e.early_to * 100.0
            )
        } else {
            format!(
                "(late-band std ≥ {}× early) {}",
                e.min_ratio,
                outcome.label()
            )
        };
        let describe = |p: &Panel, what: &str| {
            format!(
                "{what}: std of U_t peaks at step {} of {n_steps} ({:.0}% of the trajectory); max std in {:.0}–{:.0}% is {:.1}× the max before {:.0}%",
                p.peak,
                p.progress[p.peak] * 100.0,
                e.late_from * 100.0,
                e.late_to * 100.0,
                p.ratio,
                e.early_to * 100.0,
            )
        };
        let mut summary = describe(
            main,
            if trained.is_some() {
                "trained mini model"
            } else {
                "analytic denoiser"
            },
        );
        summary.push_str(&format!("; paper claim {verdict}"));
        if trained.is_some() {
            summary.push_str(&format!(" ({})", describe(&analytic, "exact denoiser")));
        }
        let paper = paper_file()?;
        let claim = paper.claim.trim();
        let mut md = format!(
            "# au-fig3 — AU Fig. 3 (step-wise uncertainty)\n\nPaper: {claim}\n\n{} sampler with {} steps, AU with M = {} (compat {}, divisor {}); U_t is the per-image mean over pixels.\n\n",
            key_name(&cfg.sampler.name),
            cfg.sampler.steps,
            cfg.au.m,
            key_name(&cfg.au.compat),
            cfg.au.ddof,
        );
        if let (Some(p), Some(tr)) = (&trained, &cfg.trained) {
            md.push_str(&format!(
                "## Trained network: diffuq's {} (Fashion-MNIST 16×16, its own linear schedule)\n\n{} samples over {} seed(s), labels cycling through the classes.\n\n{}\n",
                tr.from,
                p.n_samples,
                cfg.seeds.len(),
                p.table().to_markdown()
            ));
        }
        md.push_str(&format!(
            "## Analytic Gaussian-mixture denoiser (exact ε)\n\n{} prototypes, {}×{}×{} images, {} schedule; {} samples over {} seed(s).\n\n{}\n{summary}\n",
            cfg.data.components,
            cfg.data.channels,
            cfg.data.side,
            cfg.data.side,
            key_name(&cfg.diffusion.schedule),
            analytic.n_samples,
            cfg.seeds.len(),
            analytic.table().to_markdown()
        ));
        run.write("table.md", md.as_bytes())?;
        analytic.write(run, "per_step.parquet")?;
        if let Some(p) = &trained {
            p.write(run, "per_step_trained.parquet")?;
        }
        // Paper vs reproduced, keyed like paper/au-fig3.toml: where the spread across samples
        // peaks, and the ratio the verdict tests (the paper prints no number for it).
        let mut reproduced = vec![];
        let mut panels = vec![];
        if let Some(p) = &trained {
            panels.push(("std of U_t across samples".to_string(), p));
            panels.push((
                "std of U_t across samples (exact denoiser)".to_string(),
                &analytic,
            ));
        } else {
            panels.push(("std of U_t across samples".to_string(), &analytic));
        }
        for (row, p) in &panels {
            reproduced.push(Reproduced::new(
                row.clone(),
                "peak (% of denoising)",
                p.progress[p.peak] * 100.0,
            ));
            reproduced.push(Reproduced::new(
                row.clone(),
                format!(
                    "max in {:.0}–{:.0}% ÷ max before {:.0}%",
                    e.late_from * 100.0,
                    e.late_to * 100.0,
                    e.early_to * 100.0
                ),
                p.ratio,
            ));
        }
        let scale = super::run_scale(run)?;
        super::write_comparison(
            run,
            &Comparison::new(AuFig3::NAME, Some(&paper), &reproduced, &scale),
        )?;
        let w = cfg.window();
        // Every artifact writes its figures under `figures/`.
        let figures = run.file("figures");
        std::fs::create_dir_all(&figures).map_err(|e| Error::io(&figures, e))?;
        for (stem, p, label) in [
            ("fig3", Some(&analytic), "exact denoiser (analytic mixture)"),
            (
                "fig3-trained",
                trained.as_ref(),
                "trained mini model (Fashion-MNIST)",
            ),
        ] {
            let Some(p) = p else { continue };
            let x: Vec<f64> = p.progress.iter().map(|v| v * 100.0).collect();
            let caption = format!(
                "shaded: the filtering-score window, steps {}..{}; band: ± 1 std over {} samples",
                w.start,
                w.start + w.len - 1,
                p.n_samples
            );
            write_band(
                &figures,
                stem,
                &[BandSeries {
                    label: format!("U_t (mean over pixels), {label}"),
                    x: &x,
                    mean: &p.mean,
                    std: &p.std,
                    color: plotters::style::RGBColor(31, 119, 180),
                }],
                &BandSpec {
                    title: format!("au-fig3: step-wise uncertainty, {label}"),
                    x_label: "denoising progress (%)".into(),
                    y_label: "U_t".into(),
                    highlight: Some((x[w.start], x[w.start + w.len - 1])),
                    caption: &caption,
                },
            )?;
        }
        Ok(Verdict {
            table: md,
            outcome,
            summary,
        })
    }
}

/// Per-step statistics of one panel (a `stepwise` frame).
struct Panel {
    mean: Vec<f64>,
    std: Vec<f64>,
    tt: Vec<f64>,
    progress: Vec<f64>,
    peak: usize,
    early: f64,
    ratio: f64,
    n_samples: usize,
}

impl Panel {
    fn of(frame: &polars::prelude::DataFrame, n_steps: usize, e: &EvalConfig) -> Result<Self> {
        let steps_col: Vec<u32> = frame
            .column("step")
            .ctx("step")?
            .u32()
            .ctx("step")?
            .into_no_null_iter()
            .collect();
        let u = kit::column_f64(frame, "u_mean_pixel")?;
        let t_col = kit::column_f64(frame, "t")?;
        let mut sum = vec![0.0; n_steps];
        let mut sq = vec![0.0; n_steps];
        let mut cnt = vec![0usize; n_steps];
        let mut tt = vec![0.0; n_steps];
        for ((&s, &v), &t) in steps_col.iter().zip(&u).zip(&t_col) {
            let s = s as usize;
            if s >= n_steps {
                return Err(Error::invalid(
                    "stepwise.parquet",
                    format!("step {s} outside the configured {n_steps} steps"),
                ));
            }
            sum[s] += v;
            sq[s] += v * v;
            cnt[s] += 1;
            tt[s] = t;
        }
        let mean: Vec<f64> = sum.iter().zip(&cnt).map(|(s, &n)| s / n as f64).collect();
        let std: Vec<f64> = (0..n_steps)
            .map(|i| {
                let n = cnt[i] as f64;
                ((sq[i] - n * mean[i] * mean[i]) / (n - 1.0))
                    .max(0.0)
                    .sqrt()
            })
            .collect();
        // Progress of step i: the fraction of the trajectory done when it is evaluated.
        let progress: Vec<f64> = (0..n_steps)
            .map(|i| (i + 1) as f64 / n_steps as f64)
            .collect();
        let band_max = |lo: f64, hi: f64| {
            progress
                .iter()
                .zip(&std)
                .filter(|(p, _)| **p > lo && **p <= hi)
                .map(|(_, s)| *s)
                .fold(0.0, f64::max)
        };
        let late = band_max(e.late_from, e.late_to);
        let early = band_max(0.0, e.early_to);
        let peak = (0..n_steps)
            .max_by(|&a, &b| std[a].total_cmp(&std[b]))
            .unwrap_or(0);
        Ok(Self {
            ratio: late / early.max(f64::MIN_POSITIVE),
            mean,
            std,
            tt,
            progress,
            peak,
            early,
            n_samples: cnt.first().copied().unwrap_or(0),
        })
    }

    /// A ratio needs a spread to compare with (no spread before `early_to`: nothing to test).
    fn spread(&self) -> bool {
        self.early > 0.0 && self.ratio.is_finite()
    }

    /// `eval.min_ratio = 0` (the smoke profile) checks the pipeline, not the claim.
    fn outcome(&self, e: &EvalConfig) -> Outcome {
        if e.min_ratio <= 0.0 || !self.spread() {
            Outcome::NotChecked
        } else {
            Outcome::of_check(true, self.ratio >= e.min_ratio)
        }
    }

    fn table(&self) -> Table {
        let n_steps = self.mean.len();
        let mut table = Table::new(["progress", "steps", "timesteps", "mean U_t", "max std U_t"]);
        for (lo, hi) in [
            (0.0, 0.25),
            (0.25, 0.5),
            (0.5, 0.75),
            (0.75, 0.9),
            (0.9, 1.0),
        ] {
            let ids: Vec<usize> = (0..n_steps)
                .filter(|&i| self.progress[i] > lo && self.progress[i] <= hi)
                .collect();
            let (Some(&a), Some(&b)) = (ids.first(), ids.last()) else {
                continue;
            };
            let m = ids.iter().map(|&i| self.mean[i]).sum::<f64>() / ids.len() as f64;
            let s = ids.iter().map(|&i| self.std[i]).fold(0.0, f64::max);
            table.row([
                format!("{:.0}–{:.0}%", lo * 100.0, hi * 100.0),
                format!("{a}–{b}"),
                format!("{:.0}–{:.0}", self.tt[a], self.tt[b]),
                format!("{m:.3e}"),
                format!("{s:.3e}"),
            ]);
        }
        table
    }

    fn write(&self, run: &RunDir, name: &str) -> Result<()> {
        let n = self.mean.len();
        let mut f = df!(
            "step" => (0..n as u32).collect::<Vec<_>>(),
            "t" => self.tt.clone(),
            "progress" => self.progress.clone(),
            "u_mean" => self.mean.clone(),
            "u_std" => self.std.clone(),
        )
        .ctx("per-step summary")?;
        run.write_parquet(name, &mut f)
    }
}

/// A config enum as it is spelled in the TOML (`dpm-solver-2`, `au-release`).
fn key_name(v: &impl Serialize) -> String {
    serde_json::to_string(v)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// The paper's claim and number, from `paper/au-fig3.toml` (compiled in, so reports never depend
/// on the working directory).
fn paper_file() -> Result<PaperFile> {
    crate::report::paper::parse(
        include_str!("../../paper/au-fig3.toml"),
        "paper/au-fig3.toml",
    )
}
