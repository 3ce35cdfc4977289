//! The **reconstruction** experiment kind (AU Table 2): pixel-wise uncertainty judged against the
//! error of a reconstruction, with AUSE and AURG of the RMSE sparsification curve.
//!
//! AU Sec. 4.1, "Evaluation Protocol" (AnoDDPM's protocol): "We sample ground-truth test images and
//! we inject noise as defined in Sec. 3.2 until half of the noising process (i.e. T/2). Then, we
//! denoise the images using the diffusion model and compute the reconstruction error using the
//! Root Mean Squared Error (RMSE). Finally, we compute the sparsification error curve, and
//! consequently AUSE and AURG metrics, using the uncertainty computed during the sampling process."
//!
//! Per seed, `images` test images are drawn (a uniform key per test image from the seed's
//! `recon-images` stream, the `images` smallest kept — a seeded random subset, as the release's
//! `randperm`), noised to the noise level t₀ with noise from the `recon-noise` stream (keyed by the
//! test image's index):
//!
//!   x_{t₀} = √ᾱ_{t₀} x₀ + √(1 − ᾱ_{t₀}) ξ,
//!
//! and denoised by the configured sampler from the first grid step at or below t₀ (`noise.t_start`,
//! T/2 = 500 by default; [`SamplerSpec::sample_from`]), conditioned on the image's true class. Each
//! method's per-pixel uncertainty is summed over every step the reconstruction ran (the release
//! sums over all steps it ran): AU's U_t (Alg. 1, Eq. 8), MC-Dropout's variance of M dropout
//! passes, and BayesDiff's propagated Var[x₀] (its own trajectory). The per-pixel error is the
//! method's reconstruction minus the ground truth, both in [0, 1]; all pixels of all images of a
//! seed are pooled into one sparsification curve (the release pools; `metric.pooling =
//! "per-image"` averages per-image AUSE/AURG instead) ([`crate::metrics::sparsification`]).
//!
//! **Released-code compatibility** (docs/released-code.md §1.6), every item a key:
//! - `noise.compat = "au-release"`: the image is noised at the *raw training index* steps/2 (25
//!   for 50 steps) but denoised from grid step steps/2 (t = 480 on the leading 50-step grid) — a
//!   noise level that does not match the conditioning time;
//! - `metric.error_scale = "au-release"` (bug a): the error is the uint8 reconstruction in
//!   [0, 255] minus the ground truth in [0, 1];
//! - `metric.zero_rows` (bug b): that many all-zero images (u = 0, e = 0) join the pooled curve
//!   (the release allocates rows for the whole data set and fills `num_samples`).
//!
//! Claims (`[[claims]]`): "method a's AUSE is lower / AURG is higher than method b's", judged as
//! the filtering kind judges them: the mean paired difference over seeds must exceed twice its
//! standard error.

use crate::experiments::inputs::{self, FileKeys, InputFile, Tables};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use polars::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::filtering::{fit_posterior, BayesDiffConfig, LaplaceConfig, ModelRef};
use super::kit::{self, PartRunner};
use super::mini_model;
use super::{Experiment, Outcome, RunOptions, Verdict};
use crate::config::{check, Resolved, Validate, Violation};
use crate::data::fashion_mnist::{FashionMnist, Split};
use crate::error::{Error, Result, TensorContext};
use crate::metrics::sparsification::{
    sparsification, sparsification_per_image, Compat, SparsificationOptions,
};
use crate::metrics::stats::mean_std;
use crate::model::recipe::{self, ImageModelRecipe};
use crate::model::Bound;
use crate::report::band::{write_band, BandSeries, BandSpec};
use crate::report::compare::{Comparison, Reproduced};
use crate::report::table::{pm, Table};
use crate::sampler::spec::{SamplerKind, SamplerSpec};
use crate::sampler::{NoiseSource, Observer, StepView};
use crate::seed::SeedStreams;
use crate::tracking::{Manifest, RunDir};
use crate::uq::au::{AuCompat, AuObserver, AuSpec, Ddof, StepWindow};
use crate::uq::bayesdiff::{self, BayesDiffSpec, Llla, VarianceRule};
use crate::uq::scores::{AU_RENOISE, BAYESDIFF, MC_DROPOUT};

/// The kind's name in experiment files.
pub const KIND: &str = "reconstruction";

/// Frames each seed writes.
const FRAMES: &[&str] = &["aucs", "curves"];

/// Methods this kind knows.
const METHODS: &[&str] = &["au", "mc-dropout", "bayesdiff"];

/// The reconstruction driver (module doc).
pub struct Reconstruction;

/// An experiment file of kind `reconstruction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// Always `reconstruction`.
    pub kind: String,
    pub title: String,
    pub seeds: Vec<u64>,
    /// Test images reconstructed per seed.
    pub images: usize,
    pub batch_size: usize,
    /// Uncertainty methods: `au`, `mc-dropout`, `bayesdiff`.
    pub methods: Vec<String>,
    pub model: ModelRef,
    pub sampler: SamplerSpec,
    pub noise: NoiseConfig,
    pub au: AuKeys,
    pub mc_dropout: McKeys,
    pub bayesdiff: BayesDiffConfig,
    pub laplace: LaplaceConfig,
    pub metric: MetricConfig,
    /// Whether the run's numbers can test the claims: false for the smoke profile, whose model
    /// trained for a few steps (its numbers check the plumbing only).
    pub check_claims: bool,
    #[serde(default)]
    pub claims: Vec<Claim>,
    /// `[weights]`, `[data]`, `[reference]`: the external files of a paper profile (checkpoints,
    /// images, FID reference batches; [`crate::experiments::inputs`]). Left out of the resolved
    /// configuration when empty.
    #[serde(default, skip_serializing_if = "FileKeys::is_empty")]
    pub weights: FileKeys,
    #[serde(default, skip_serializing_if = "FileKeys::is_empty")]
    pub data: FileKeys,
    #[serde(default, skip_serializing_if = "FileKeys::is_empty")]
    pub reference: FileKeys,
}

/// `[noise]`: where the reconstruction starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseConfig {
    /// Noise level t₀ (training timesteps; AU: T/2).
    pub t_start: f64,
    /// `paper`: noise to t₀ and denoise from the first grid step ≤ t₀; `au-release`: noise at
    /// raw index steps/2, denoise from grid step steps/2 (module doc).
    pub compat: String,
}

/// `[au]` of this kind (Alg. 1 at every step run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuKeys {
    pub m: usize,
    pub ddof: Ddof,
}

/// `[mc_dropout]` of this kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McKeys {
    pub m: usize,
    pub ddof: usize,
}

/// `[metric]`: the sparsification analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Removal steps I (the release: 50).
    pub intervals: usize,
    /// `pooled` (the release: all pixels of all images) or `per-image` (mean of per-image areas).
    pub pooling: String,
    /// `unit` (reconstruction and ground truth in [0, 1]) or `au-release` (bug a).
    pub error_scale: String,
    /// All-zero images joining the pooled curve (bug b; 0 = none).
    pub zero_rows: usize,
}

/// One checkable statement of the paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub text: String,
    /// `lower` or `higher`: `metric` (ause | aurg) of method `a` vs method `b`.
    pub test: String,
    pub metric: String,
    pub a: String,
    pub b: String,
}

impl Validate for Config {
    fn validate(&self) -> Vec<Violation> {
        let mut v = vec![];
        check(
            &mut v,
            self.kind == KIND,
            "kind",
            "must be \"reconstruction\" for this driver",
        );
        crate::config::check_seeds(&mut v, &self.seeds);
        check(&mut v, self.images >= 1, "images", "must be ≥ 1");
        check(&mut v, self.batch_size >= 1, "batch_size", "must be ≥ 1");
        check(
            &mut v,
            !self.methods.is_empty() && self.methods.iter().all(|m| METHODS.contains(&m.as_str())),
            "methods",
            "must list some of \"au\", \"mc-dropout\", \"bayesdiff\"",
        );
        for viol in self.sampler.violations(1000) {
            v.push(viol);
        }
        check(
            &mut v,
            !self.sampler.name.is_flow(),
            "sampler.name",
            "euler and dopri5 integrate a flow velocity; the uncertainty methods here need an ε-model's sampler (ddim, dpm-solver-2, dpm-solver-pp2m)",
        );
        check(
            &mut v,
            matches!(self.noise.compat.as_str(), "paper" | "au-release"),
            "noise.compat",
            "must be \"paper\" or \"au-release\"",
        );
        check(
            &mut v,
            self.noise.t_start > 0.0 && self.noise.t_start.is_finite(),
            "noise.t_start",
            "must be a positive timestep",
        );
        check(&mut v, self.au.m >= 2, "au.m", "must be ≥ 2");
        check(
            &mut v,
            self.au.ddof.check("au.ddof", self.au.m).is_ok(),
            "au.ddof",
            "must be \"none\" or < au.m",
        );
        check(
            &mut v,
            self.mc_dropout.m >= 2,
            "mc_dropout.m",
            "must be ≥ 2",
        );
        check(
            &mut v,
            self.model.dtype().is_ok(),
            "model.precision",
            "must be \"f32\", or \"bf16\"/\"f16\" with a paper checkpoint",
        );
        check(
            &mut v,
            self.mc_dropout.ddof < self.mc_dropout.m,
            "mc_dropout.ddof",
            "must be < mc_dropout.m",
        );
        check(
            &mut v,
            !self.methods.iter().any(|m| m == "bayesdiff")
                || self.sampler.name == SamplerKind::Ddim,
            "sampler.name",
            "BayesDiff's reconstruction propagates through \"ddim\"",
        );
        check(
            &mut v,
            self.sampler.name != SamplerKind::Ddpm
                && !(self.sampler.name == SamplerKind::Ddim && self.sampler.eta != 0.0),
            "sampler.name",
            "a reconstruction runs a deterministic sampler (ddim with eta = 0, dpm-solver-2, dpm-solver-pp2m)",
        );
        check(
            &mut v,
            self.metric.intervals >= 1,
            "metric.intervals",
            "must be ≥ 1",
        );
        check(
            &mut v,
            matches!(self.metric.pooling.as_str(), "pooled" | "per-image"),
            "metric.pooling",
            "must be \"pooled\" or \"per-image\"",
        );
        check(
            &mut v,
            matches!(self.metric.error_scale.as_str(), "unit" | "au-release"),
            "metric.error_scale",
            "must be \"unit\" or \"au-release\"",
        );
        check(
            &mut v,
            self.metric.zero_rows == 0 || self.metric.pooling == "pooled",
            "metric.zero_rows",
            "the release's zero rows join a pooled curve only",
        );
        for (i, c) in self.claims.iter().enumerate() {
            let ok = matches!(c.test.as_str(), "lower" | "higher")
                && matches!(c.metric.as_str(), "ause" | "aurg")
                && self.methods.contains(&c.a)
                && self.methods.contains(&c.b);
            check(
                &mut v,
                ok,
                &format!("claims[{i}]"),
                "test must be lower/higher, metric ause/aurg, a and b in `methods`",
            );
        }
        v
    }
}

impl Config {
    /// The recipe of `model.from` at `scale` (the diffusion mini model: the methods here need ε).
    fn recipe(&self, experiments_dir: &Path, scale: &str) -> Result<ImageModelRecipe> {
        kit::image_recipe(
            "model.from",
            &self.model.from,
            &[mini_model::MiniModel::NAME],
            experiments_dir,
            scale,
        )
    }

    /// (noise level of x, index of the first grid step run).
    fn start(&self, schedule: &crate::schedule::NoiseSchedule) -> Result<(f64, usize)> {
        if self.noise.compat == "au-release" {
            let half = self.sampler.steps / 2;
            return Ok((half as f64, half));
        }
        let start = self
            .sampler
            .start_index(schedule, self.noise.t_start)
            .ok_or_else(|| {
                Error::invalid(
                    "noise.t_start",
                    format!(
                        "{}: no sampler step lies at or below it",
                        self.noise.t_start
                    ),
                )
            })?;
        let t = self.sampler.model_times(schedule)[start];
        Ok((t, start))
    }

    fn checks_claims(&self) -> bool {
        self.check_claims
    }
}

impl Experiment for Reconstruction {
    const NAME: &'static str = KIND;
    const DESCRIPTION: &'static str =
        "reconstruction: noise test images to T/2, denoise, AUSE/AURG of pixel uncertainty vs error";
    type Config = Config;

    fn inputs(cfg: &Config) -> Result<Vec<InputFile>> {
        inputs::list(Tables {
            weights: &cfg.weights,
            data: &cfg.data,
            reference: &cfg.reference,
        })
    }

    fn run(
        cfg: &Resolved<Config>,
        run: &RunDir,
        manifest: &mut Manifest,
        opts: &RunOptions,
    ) -> Result<()> {
        run_impl(cfg, run, manifest, opts)
    }

    fn report(cfg: &Config, run: &RunDir) -> Result<Verdict> {
        report_impl(cfg, run)
    }

    fn recipes_at(
        cfg: &Config,
        experiments_dir: &Path,
        scale: &str,
    ) -> Result<Vec<ImageModelRecipe>> {
        if cfg.model.checkpoint().is_some() {
            return Ok(vec![]);
        }
        Ok(vec![cfg.recipe(experiments_dir, scale)?])
    }

    fn linked_hash(cfg: &Config, experiments_dir: &Path, scale: &str) -> Result<Option<String>> {
        if cfg.model.checkpoint().is_some() {
            return Ok(None);
        }
        let r = cfg.recipe(experiments_dir, scale)?;
        Ok(Some(crate::model::cache::recipe_key(&r.cache_identity())?))
    }
}

/// Per-pixel uncertainty of AU and MC-Dropout along the plain reconstruction, summed over steps.
struct Sums<'a> {
    au: Option<AuObserver<'a>>,
    mc: Option<(&'a Bound<'a>, McKeys)>,
    indices: &'a [u64],
    streams: SeedStreams,
    mc_sum: Option<Tensor>,
    mc_nfe: usize,
}

impl Observer for Sums<'_> {
    fn on_step(&mut self, view: &StepView<'_>) -> candle_core::Result<()> {
        if let Some(au) = &mut self.au {
            au.on_step(view)?;
        }
        if let Some((net, k)) = self.mc {
            let u = crate::uq::mc_dropout::uncertainty(
                net,
                view.x_t,
                view.t,
                view.step as u32,
                self.indices,
                &self.streams.purpose(MC_DROPOUT),
                k.m,
                k.ddof,
            )
            .map_err(candle_core::Error::wrap)?;
            self.mc_sum = Some(match self.mc_sum.take() {
                Some(s) => (s + u)?,
                None => u,
            });
            self.mc_nfe += k.m;
        }
        Ok(())
    }
}

/// The noise source of a deterministic sampler (validation admits no other).
struct NoNoise;
impl NoiseSource for NoNoise {
    fn noise(&self, _: u32) -> candle_core::Result<Tensor> {
        candle_core::bail!("reconstruction: a deterministic sampler draws no noise")
    }
}

fn run_impl(
    cfg: &Resolved<Config>,
    run: &RunDir,
    manifest: &mut Manifest,
    opts: &RunOptions,
) -> Result<()> {
    let c = &cfg.config;
    let dev = opts.device.open()?;
    let t = Instant::now();
    let model = kit::image_model(
        "model.from",
        &c.model.from,
        c.model.use_ema,
        c.model.dtype()?,
        &c.weights,
        &[mini_model::MiniModel::NAME],
        &kit::experiments_dir(&cfg.file),
        &cfg.scale,
        &dev,
    )?;
    if model.decoder.is_some() {
        return Err(Error::invalid(
            "model.from",
            format!(
                "`{}` is a latent model; reconstruction runs on pixel models (AU Table 2's CIFAR-10 and ImageNet-64 models)",
                c.model.from
            ),
        ));
    }
    let net: &dyn crate::model::Network = model.net.as_ref();
    manifest
        .wall_seconds
        .insert("train-or-load".into(), t.elapsed().as_secs_f64());
    run.log(&model.origin)?;
    // Test images: Fashion-MNIST's test set for a recipe model, `data.images` at paper scale.
    let fashion = match model.recipe {
        Some(_) => Some(recipe::fashion_mnist_or_fetch(None)?),
        None => None,
    };
    let s = model.shape[1];
    let (test, what) = match &fashion {
        Some(dir) => (
            FashionMnist::load(dir, Split::Test)?,
            "model.data.image_size".to_string(),
        ),
        None => {
            let f = inputs::path_of("data", &c.data, "images")?;
            (
                crate::data::images::read_image_set(&f)?,
                format!("data.images {}", f.display()),
            )
        }
    };
    if test.channels != model.shape[0] {
        return Err(Error::invalid(
            &what,
            format!(
                "{}-channel images; the model takes {}",
                test.channels, model.shape[0]
            ),
        ));
    }
    let images = test.to_tensor(s, &what, &dev)?;
    let labels = match (&test.labels, model.conditional()) {
        (Some(l), _) => l.clone(),
        (None, false) => vec![0; test.len()],
        (None, true) => {
            return Err(Error::invalid(
                &what,
                "has no labels (`arr_1`); the model is class-conditional",
            ))
        }
    };
    if c.images > test.len() {
        return Err(Error::invalid(
            "images",
            format!("{} exceeds the {} test images", c.images, test.len()),
        ));
    }
    let t = Instant::now();
    let posterior = if c.methods.iter().any(|m| m == "bayesdiff") {
        let train = match (&fashion, &model.recipe) {
            (Some(dir), Some(r)) => recipe::training_data(&r.data, dir, &dev)?,
            _ => {
                let f = inputs::path_of("data", &c.data, "laplace")?;
                let what = format!("data.laplace {}", f.display());
                let set = crate::data::images::read_image_set(&f)?;
                let y = match (&set.labels, model.conditional()) {
                    (Some(l), _) => l.clone(),
                    (None, false) => vec![0; set.len()],
                    (None, true) => {
                        return Err(Error::invalid(
                            what,
                            "has no labels (`arr_1`); the model is class-conditional",
                        ))
                    }
                };
                (set.to_tensor(s, &what, &dev)?, y)
            }
        };
        Some(fit_posterior(&c.laplace, &model, net, &train, &dev)?)
    } else {
        None
    };
    manifest
        .wall_seconds
        .insert("laplace-fit".into(), t.elapsed().as_secs_f64());
    run.write_manifest(manifest)?;
    let parts = PartRunner::new(run, &c.seeds, FRAMES);
    parts.run_each(manifest, |seed, progress| {
        run_seed(
            c,
            &model,
            net,
            posterior.as_ref(),
            &images,
            &labels,
            seed,
            &dev,
            run,
            progress,
        )
    })
}

/// Images (in [0, 1]) of a batch, as f64 rows.
fn unit_rows(x: &Tensor) -> Result<Vec<f64>> {
    x.to_dtype(DType::F64)
        .and_then(|t| ((t + 1.0)? / 2.0)?.clamp(0.0, 1.0))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .ctx("reconstruction pixels")
}

fn f64_rows(x: &Tensor, what: &str) -> Result<Vec<f64>> {
    x.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .ctx(what)
}

#[allow(clippy::too_many_arguments)]
fn run_seed(
    c: &Config,
    model: &kit::ImageModel,
    net: &dyn crate::model::Network,
    posterior: Option<&crate::uq::laplace::DiagPosterior>,
    images: &Tensor,
    labels: &[u32],
    seed: u64,
    dev: &Device,
    run: &RunDir,
    progress: &indicatif::MultiProgress,
) -> Result<kit::PartTimes> {
    let t0 = Instant::now();
    let schedule = model.schedule.clone();
    let streams = SeedStreams::new(seed);
    // A seeded random subset of the test set.
    let keys = streams.purpose(kit::streams::RECON_IMAGES);
    let n_test = images.dim(0).ctx("test images")?;
    let mut order: Vec<(f64, u64)> = (0..n_test as u64)
        .map(|i| (keys.rng(i).random::<f64>(), i))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let chosen: Vec<u64> = order[..c.images].iter().map(|&(_, i)| i).collect();
    let (t_noise, start) = c.start(&schedule)?;
    let ab = schedule.alpha_bar_at(t_noise);
    let noise = streams.purpose(kit::streams::RECON_NOISE);
    let grid = c.sampler.integer_grid(&schedule);
    let grid_run: Vec<usize> = grid[start..].to_vec();
    let f = images.elem_count() / n_test;
    let dims = images.dims()[1..].to_vec();

    let mut u: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut e: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut nfe: BTreeMap<&str, usize> = BTreeMap::new();
    let wants = |m: &str| c.methods.iter().any(|x| x == m);
    let pb = kit::bar(progress, c.images, &format!("seed {seed}: reconstructions"));
    for idx in chosen.chunks(c.batch_size) {
        let b = idx.len();
        let sel = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect(), b, dev)
            .ctx("test indices")?;
        let x0 = images.index_select(&sel, 0).ctx("test images")?;
        let y: Vec<u32> = idx.iter().map(|&i| labels[i as usize]).collect();
        let mut shape = vec![b];
        shape.extend_from_slice(&dims);
        let xi = Tensor::from_vec(noise.normals(idx, None, f), shape, dev).ctx("noise")?;
        let x_t = ((&x0 * ab.sqrt()).and_then(|a| a + (xi * (1.0 - ab).sqrt())?))
            .ctx("noised test images")?;
        let mut bound = Bound::new(net).with_schedule(&schedule);
        if model.conditional() {
            bound = bound.with_labels(Tensor::from_vec(y, b, dev).ctx("labels")?);
        }
        let gt = unit_rows(&x0)?;
        let au_spec = AuSpec {
            m: c.au.m,
            ddof: c.au.ddof,
            compat: AuCompat::Paper,
            clip_sample: None,
        };
        let steps_run = c.sampler.observed_steps() - start;
        let mut obs = Sums {
            au: wants("au").then(|| {
                let mut o = AuObserver::new(
                    &bound,
                    &schedule,
                    au_spec,
                    streams.purpose(AU_RENOISE),
                    idx,
                    StepWindow::all(steps_run),
                );
                o.sum_maps = true;
                o
            }),
            mc: wants("mc-dropout").then_some((&bound, c.mc_dropout)),
            indices: idx,
            streams,
            mc_sum: None,
            mc_nfe: 0,
        };
        let out = c
            .sampler
            .sample_from(&bound, &schedule, start, x_t.clone(), &NoNoise, &mut obs)
            .ctx("reconstruction")?;
        kit::check_finite(&out.x0, idx, &format!("seed {seed}: reconstructions"))?;
        let recon = unit_rows(&out.x0)?;
        let err = |pred: &[f64]| -> Vec<f64> {
            pred.iter()
                .zip(&gt)
                .map(|(p, g)| match c.metric.error_scale.as_str() {
                    "au-release" => (p * 255.0).round() - g,
                    _ => p - g,
                })
                .collect()
        };
        if let Some(au) = &obs.au {
            let map = au
                .map_sum
                .as_ref()
                .ok_or_else(|| Error::invalid("au", "no uncertainty step ran (a bug)"))?;
            u.entry("au").or_default().extend(f64_rows(map, "AU map")?);
            e.entry("au").or_default().extend(err(&recon));
            nfe.insert("au", out.nfe + au.extra_nfe);
        }
        if let Some(map) = &obs.mc_sum {
            u.entry("mc-dropout")
                .or_default()
                .extend(f64_rows(map, "MC-Dropout map")?);
            e.entry("mc-dropout").or_default().extend(err(&recon));
            nfe.insert("mc-dropout", out.nfe + obs.mc_nfe);
        }
        if let (true, Some(post)) = (wants("bayesdiff"), posterior) {
            let llla = Llla {
                model: &bound,
                posterior: post,
            };
            let spec = BayesDiffSpec {
                mc: c.bayesdiff.mc,
                every: c.bayesdiff.every,
                variance: VarianceRule::Total,
            };
            let purpose = streams.purpose(BAYESDIFF);
            let bd = bayesdiff::ddim(&llla, &schedule, &grid_run, &x_t, &spec, &purpose, idx)?;
            u.entry("bayesdiff")
                .or_default()
                .extend(f64_rows(&bd.var, "BayesDiff Var[x₀]")?);
            e.entry("bayesdiff")
                .or_default()
                .extend(err(&unit_rows(&bd.x0)?));
            nfe.insert("bayesdiff", bd.nfe);
        }
        pb.inc(b as u64);
    }
    pb.finish_and_clear();
    let sample_s = t0.elapsed().as_secs_f64();

    let opts = SparsificationOptions {
        intervals: c.metric.intervals,
        compat: if c.metric.zero_rows > 0 {
            Compat::AuZeroRows(c.metric.zero_rows * f)
        } else {
            Compat::Exact
        },
    };
    let (mut a_m, mut a_ause, mut a_aurg, mut a_rmse, mut a_nfe) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut c_m, mut c_x, mut c_y, mut c_o) = (vec![], vec![], vec![], vec![]);
    for m in &c.methods {
        let (uu, ee) = (&u[m.as_str()], &e[m.as_str()]);
        let pooled = sparsification(uu, ee, &opts)?;
        let (ause, aurg) = if c.metric.pooling == "per-image" {
            let p = sparsification_per_image(uu, ee, f, &opts)?;
            (p.mean_ause, p.mean_aurg)
        } else {
            (pooled.ause, pooled.aurg)
        };
        a_m.push(m.clone());
        a_ause.push(ause);
        a_aurg.push(aurg);
        a_rmse.push(pooled.rmse_all);
        a_nfe.push(nfe[m.as_str()] as u64);
        for i in 0..pooled.fractions.len() {
            c_m.push(m.clone());
            c_x.push(pooled.fractions[i]);
            c_y.push(pooled.method[i]);
            c_o.push(pooled.oracle[i]);
        }
        run.log(&format!(
            "seed {seed}: {m}: AUSE {ause:.5}, AURG {aurg:.5}, RMSE {:.5} ({} NFE/image)",
            pooled.rmse_all,
            nfe[m.as_str()]
        ))?;
    }
    let dir = PartRunner::part_dir(seed);
    std::fs::create_dir_all(run.file(&dir)).map_err(|e| Error::io(run.path(), e))?;
    let n = a_m.len();
    let mut aucs = df!(
        "seed" => vec![seed; n],
        "method" => a_m,
        "ause" => a_ause,
        "aurg" => a_aurg,
        "rmse" => a_rmse,
        "nfe" => a_nfe,
    )
    .ctx("aucs frame")?;
    run.write_parquet(&format!("{dir}/aucs.parquet"), &mut aucs)?;
    let n = c_m.len();
    let mut curves = df!(
        "seed" => vec![seed; n],
        "method" => c_m,
        "fraction" => c_x,
        "rmse" => c_y,
        "oracle" => c_o,
    )
    .ctx("curves frame")?;
    run.write_parquet(&format!("{dir}/curves.parquet"), &mut curves)?;
    run.log(&format!(
        "seed {seed}: {} reconstructions from t = {t_noise} (grid step {start}) in {sample_s:.1}s",
        c.images
    ))?;
    Ok(vec![(format!("reconstruct/seed-{seed}"), sample_s)])
}

fn strings(f: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(f.column(name)
        .ctx(name)?
        .str()
        .ctx(name)?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

fn paper_file(artifact: &str) -> Result<Option<crate::report::paper::PaperFile>> {
    let text = match artifact {
        "au-table2" => include_str!("../../paper/au-table2.toml"),
        _ => return Ok(None),
    };
    crate::report::paper::parse(text, &format!("paper/{artifact}.toml")).map(Some)
}

fn paper_name(m: &str) -> &str {
    match m {
        "au" => "Ours (AU)",
        "mc-dropout" => "MC-Dropout",
        "bayesdiff" => "BayesDiff",
        o => o,
    }
}

fn report_impl(c: &Config, run: &RunDir) -> Result<Verdict> {
    let aucs = run.read_parquet("aucs.parquet")?;
    let seed = kit::column_u64(&aucs, "seed")?;
    let method = strings(&aucs, "method")?;
    let cols: BTreeMap<&str, Vec<f64>> = ["ause", "aurg", "rmse"]
        .iter()
        .map(|&k| Ok((k, kit::column_f64(&aucs, k)?)))
        .collect::<Result<_>>()?;
    let nfe = kit::column_u64(&aucs, "nfe")?;
    let per_seed = |m: &str, k: &str| -> Vec<f64> {
        c.seeds
            .iter()
            .filter_map(|s| {
                (0..seed.len())
                    .find(|&i| seed[i] == *s && method[i] == m)
                    .map(|i| cols[k][i])
            })
            .collect()
    };
    let mut table = Table::new([
        "method",
        "NFE / image",
        "AUSE ↓",
        "AURG ↑",
        "RMSE of its reconstruction",
    ]);
    let mut reproduced = vec![];
    let row = match c.model.checkpoint() {
        Some(n) => n.to_string(),
        None => format!("diffuq {} model, Fashion-MNIST", c.model.from),
    };
    for m in &c.methods {
        let (ause, aurg, rmse) = (
            per_seed(m, "ause"),
            per_seed(m, "aurg"),
            per_seed(m, "rmse"),
        );
        let (am, asd) = mean_std(&ause);
        let (gm, gsd) = mean_std(&aurg);
        let (rm, rsd) = mean_std(&rmse);
        let n = (0..method.len())
            .find(|&i| &method[i] == m)
            .map(|i| nfe[i])
            .unwrap_or(0);
        table.row([
            m.clone(),
            n.to_string(),
            pm(am, asd, 5),
            pm(gm, gsd, 5),
            pm(rm, rsd, 5),
        ]);
        reproduced.push(
            Reproduced::new(row.clone(), format!("{}: AUSE", paper_name(m)), am).with_std(asd),
        );
        reproduced.push(
            Reproduced::new(row.clone(), format!("{}: AURG", paper_name(m)), gm).with_std(gsd),
        );
    }

    // Claims.
    let checked = c.checks_claims();
    let mut lines = vec![];
    let mut all_hold = true;
    for cl in &c.claims {
        let (a, b) = (per_seed(&cl.a, &cl.metric), per_seed(&cl.b, &cl.metric));
        let sign = if cl.test == "lower" { 1.0 } else { -1.0 };
        let diff: Vec<f64> = a.iter().zip(&b).map(|(x, y)| sign * (y - x)).collect();
        let (m, s) = mean_std(&diff);
        let se = if diff.len() > 1 {
            s / (diff.len() as f64).sqrt()
        } else {
            f64::INFINITY
        };
        let holds = m > 2.0 * se;
        all_hold &= holds;
        let verdict = if !checked {
            "not checked (smoke scale)"
        } else if holds {
            "holds"
        } else if m < -2.0 * se {
            "contradicted beyond the seed noise"
        } else {
            "within the seed noise"
        };
        lines.push(format!(
            "- {} — {} {} {} than {}: margin {m:.5} (2·SE {:.5}, {} seeds) → {verdict}",
            cl.text,
            cl.a,
            cl.metric.to_uppercase(),
            cl.test,
            cl.b,
            2.0 * se,
            diff.len()
        ));
    }
    let (outcome, summary) = if !checked || c.claims.is_empty() {
        (
            Outcome::NotChecked,
            if c.claims.is_empty() {
                "no numeric claim to check".to_string()
            } else {
                "smoke scale: the plumbing runs, the claims are not checked".to_string()
            },
        )
    } else if all_hold {
        (
            Outcome::Reproduced,
            "every claim holds beyond the seed noise".to_string(),
        )
    } else {
        (
            Outcome::NotReproduced,
            format!(
                "{} of {} claim(s) do not hold beyond the seed noise",
                lines.iter().filter(|l| !l.ends_with("holds")).count(),
                c.claims.len()
            ),
        )
    };

    // Figure: the sparsification curves (mean ± std over seeds) and the oracle of the first
    // method.
    let curves = run.read_parquet("curves.parquet")?;
    let (cs, cm) = (
        kit::column_u64(&curves, "seed")?,
        strings(&curves, "method")?,
    );
    let (cx, cy, co) = (
        kit::column_f64(&curves, "fraction")?,
        kit::column_f64(&curves, "rmse")?,
        kit::column_f64(&curves, "oracle")?,
    );
    let figures = run.file("figures");
    std::fs::create_dir_all(&figures).map_err(|e| Error::io(&figures, e))?;
    /// (label, x, mean, std) of one curve.
    type Curve = (String, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut series_data: Vec<Curve> = vec![];
    for m in &c.methods {
        for (label, ys) in [
            (paper_name(m).to_string(), &cy),
            (format!("oracle ({m})"), &co),
        ] {
            let mut by_x: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            for i in (0..cs.len()).filter(|&i| &cm[i] == m && c.seeds.contains(&cs[i])) {
                by_x.entry((cx[i] * 1e6).round() as u64)
                    .or_default()
                    .push(ys[i]);
            }
            let x: Vec<f64> = by_x.keys().map(|&k| k as f64 / 1e6).collect();
            let (mean, std): (Vec<f64>, Vec<f64>) = by_x.values().map(|v| mean_std(v)).unzip();
            series_data.push((label, x, mean, std));
        }
    }
    const COLORS: &[(u8, u8, u8)] = &[
        (31, 119, 180),
        (174, 199, 232),
        (255, 127, 14),
        (255, 187, 120),
        (44, 160, 44),
        (152, 223, 138),
    ];
    let series: Vec<BandSeries<'_>> = series_data
        .iter()
        .enumerate()
        .map(|(i, (label, x, mean, std))| {
            let (r, g, b) = COLORS[i % COLORS.len()];
            BandSeries {
                label: label.clone(),
                x,
                mean,
                std,
                color: plotters::style::RGBColor(r, g, b),
            }
        })
        .collect();
    let caption = format!(
        "{} test images per seed, {} seeds; pooled pixels",
        c.images,
        c.seeds.len()
    );
    write_band(
        &figures,
        "sparsification",
        &series,
        &BandSpec {
            title: "Sparsification: RMSE of the pixels kept".into(),
            x_label: "fraction of pixels removed (most uncertain first)".into(),
            y_label: "RMSE".into(),
            highlight: None,
            caption: &caption,
        },
    )?;

    let text = format!(
        "{title}\n\n{n} Fashion-MNIST test images per seed ({seeds} seeds, mean ± std), noised to {start} and reconstructed with {sampler:?} ({steps} steps); per-pixel uncertainty summed over the steps run; {pool} sparsification over {iv} intervals, error scale {scale}{zero}.\n\n{table}\nClaims:\n{claims}\n\n{summary}\n",
        title = c.title,
        n = c.images,
        seeds = c.seeds.len(),
        start = if c.noise.compat == "au-release" {
            "the release's mismatched level (noise at index steps/2, denoising from grid step steps/2)".to_string()
        } else {
            format!("t = {}", c.noise.t_start)
        },
        sampler = c.sampler.name,
        steps = c.sampler.steps,
        pool = c.metric.pooling,
        iv = c.metric.intervals,
        scale = c.metric.error_scale,
        zero = if c.metric.zero_rows > 0 {
            format!(", {} zero images pooled (the release's bug b)", c.metric.zero_rows)
        } else {
            String::new()
        },
        table = table.to_markdown(),
        claims = if lines.is_empty() { "- none".to_string() } else { lines.join("\n") },
    );
    run.write("table.md", text.as_bytes())?;
    let scale = super::run_scale(run)?;
    let artifact = run.manifest()?.artifact;
    let paper = paper_file(&artifact)?;
    super::write_comparison(
        run,
        &Comparison::new(&artifact, paper.as_ref(), &reproduced, &scale),
    )?;
    Ok(Verdict {
        table: text,
        outcome,
        summary,
    })
}
