//! mini-model — the base every mini-scale image artifact stands on: a class-conditional
//! diffusers-style UNet2D trained by diffuq on Fashion-MNIST ([`crate::model::recipe`]), its
//! samples per class, its training loss, and the FID of its DDIM samples against the test set
//! beside the FID of real training images against the same set (the floor: what a perfect model
//! would score with that many samples).
//!
//! No paper reports this; the bar is diffuq's own: a mini model must reach FID within
//! `eval.max_fid_ratio` (3) times the floor for the filtering artifacts built on it to say
//! anything about the papers' claims. The verdict says whether it does.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use polars::df;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use super::{kit, Experiment, Outcome, RunOptions, Verdict};
use crate::config::{check, Resolved, Validate, Violation};
use crate::data::fashion_mnist::{FashionMnist, Split, CLASS_NAMES};
use crate::error::{Error, Result, TensorContext};
use crate::features::FeaturesConfig;
use crate::metrics::fid::{frechet_distance, GaussianStats};
use crate::metrics::inputs::{Embedder, MetricInput};
use crate::metrics::realism::Rows;
use crate::model::recipe::{self, ImageModelRecipe};
use crate::model::trainer::read_trace;
use crate::model::Bound;
use crate::report::compare::{Comparison, Reproduced};
use crate::report::table::{pm, Table};
use crate::sampler::spec::SamplerSpec;
use crate::sampler::{ImageNoise, NoObserver, StreamNoise};
use crate::seed::SeedStreams;
use crate::tracking::{Manifest, RunDir};

pub struct MiniModel;

/// The kind name under which other experiment files (mini-flow) use this driver.
pub const KIND: &str = "image-model";

/// `experiments/mini-model/experiment.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// `image-model` when another experiment file uses this driver (e.g. mini-flow); absent in
    /// mini-model's own file. Left out of the resolved configuration when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    pub seeds: Vec<u64>,
    pub model: ImageModelRecipe,
    pub sampler: SamplerSpec,
    pub eval: EvalConfig,
    pub features: FeaturesConfig,
}

/// What the evaluation embeds images with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalFeatures {
    /// The FID Inception-v3 (pool3), images resized to 299² as pytorch-fid does.
    Inception,
    /// Raw pixels: a plumbing check for smoke runs, not an FID anyone reports.
    Pixels,
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub samples: usize,
    pub batch_size: usize,
    /// `test`: the 10,000 Fashion-MNIST test images.
    pub reference: String,
    pub reference_subset: usize,
    pub floor_samples: usize,
    pub features: EvalFeatures,
    pub inception_batch: usize,
    pub use_ema: bool,
    pub grid_per_class: usize,
    pub max_fid_ratio: f64,
}

impl Validate for Config {
    fn validate(&self) -> Vec<Violation> {
        let mut v = vec![];
        crate::config::check_seeds(&mut v, &self.seeds);
        if let Err(e) = self.model.validate() {
            v.push(Violation::new("model", e.to_string()));
        }
        v.extend(self.sampler.violations(self.model.schedule.timesteps));
        let flow = self.model.objective == crate::model::recipe::Objective::FlowMatching;
        check(
            &mut v,
            self.sampler.name.is_flow() == flow,
            "sampler.name",
            if flow {
                "a flow-matching model (model.objective) samples with euler or dopri5"
            } else {
                "an ε-model (model.objective) samples with ddim, ddpm, dpm-solver-2 or dpm-solver-pp2m"
            },
        );
        let e = &self.eval;
        check(
            &mut v,
            e.samples >= 2,
            "eval.samples",
            "must be ≥ 2 (FID needs a covariance)",
        );
        check(
            &mut v,
            e.floor_samples >= 2,
            "eval.floor_samples",
            "must be ≥ 2",
        );
        check(&mut v, e.batch_size >= 1, "eval.batch_size", "must be ≥ 1");
        check(
            &mut v,
            e.inception_batch >= 1,
            "eval.inception_batch",
            "must be ≥ 1",
        );
        check(
            &mut v,
            e.reference == "test",
            "eval.reference",
            "must be \"test\" (the Fashion-MNIST test set)",
        );
        check(
            &mut v,
            e.reference_subset == 0 || e.reference_subset >= 2,
            "eval.reference_subset",
            "must be 0 (all) or ≥ 2",
        );
        check(
            &mut v,
            e.max_fid_ratio > 0.0,
            "eval.max_fid_ratio",
            "must be > 0",
        );
        check(
            &mut v,
            e.floor_samples <= 60_000
                && (self.model.data.subset == 0
                    || e.floor_samples <= self.model.data.subset.max(e.floor_samples)),
            "eval.floor_samples",
            "must not exceed the 60,000 training images",
        );
        v
    }
}

impl Experiment for MiniModel {
    const NAME: &'static str = "mini-model";
    const DESCRIPTION: &'static str =
        "the mini image model (UNet2D on Fashion-MNIST, trained by diffuq): samples, loss, FID vs the real-data floor";
    type Config = Config;
    /// Each seed's FID is computed as its samples are generated, in one loop.
    const SHARDABLE: bool = false;

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

    fn recipes(cfg: &Config) -> Vec<ImageModelRecipe> {
        vec![cfg.model.clone()]
    }
}

/// uint8 images (N, 1, S, S) from model outputs in [−1, 1]: round((x + 1)·127.5), clamped, as
/// image writers do.
pub(crate) fn to_u8(x: &Tensor) -> candle_core::Result<Tensor> {
    ((x.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .to_dtype(DType::U8)
}

/// Generate the `eval.samples` images of one seed (labels cycle through the classes), as uint8
/// (N, 1, S, S), with their labels.
fn generate(
    c: &Config,
    net: &crate::model::unet2d::UNet2D,
    seed: u64,
    dev: &Device,
    mut progress: impl FnMut(usize),
) -> Result<(Tensor, Vec<u32>)> {
    let s = c.model.data.image_size;
    let dim = s * s;
    let schedule = c.model.schedule.build();
    let streams = SeedStreams::new(seed);
    let all: Vec<u64> = (0..c.eval.samples as u64).collect();
    let labels = kit::cycled_labels(&all, 10);
    let mut out = vec![];
    for idx in all.chunks(c.eval.batch_size) {
        let y = kit::cycled_labels(idx, 10);
        let x_t = kit::initial_noise(&streams, idx, &[1, s, s], dev)?;
        let noise = ImageNoise {
            inner: StreamNoise {
                purpose: streams.purpose(kit::streams::SAMPLER_NOISE),
                indices: idx,
                dim,
                device: dev,
            },
            shape: (1, s, s),
        };
        let bound = Bound::new(net)
            .with_labels(Tensor::from_vec(y, idx.len(), dev).ctx("labels")?)
            .with_schedule(&schedule);
        let o = c
            .sampler
            .sample(&bound, &schedule, x_t, &noise, &mut NoObserver)
            .ctx("sampling the mini model")?;
        out.push(to_u8(&o.x0).ctx("quantising samples")?);
        progress(idx.len());
    }
    Ok((Tensor::cat(&out, 0).ctx("samples")?, labels))
}

/// The first `n` images of a split at the model's size, quantised like the samples.
fn real_images(
    c: &Config,
    dir: &Path,
    split: Split,
    n: usize,
    dev: &Device,
) -> Result<(Tensor, Vec<u32>)> {
    let set = FashionMnist::load(dir, split)?;
    let n = if n == 0 { set.len() } else { n.min(set.len()) };
    let x = set.to_tensor(c.model.data.image_size, "model.data.image_size", dev)?;
    let x = to_u8(&x.narrow(0, 0, n).ctx("real images")?).ctx("real images")?;
    Ok((x, set.labels.unwrap_or_default()[..n].to_vec()))
}

/// Statistics of uint8 images (N, 1, S, S) in the configured feature space.
fn stats(c: &Config, embedder: &Embedder, images: &Tensor, what: &str) -> Result<GaussianStats> {
    match c.eval.features {
        EvalFeatures::Pixels => {
            let v: Vec<f64> = images
                .flatten_from(1)
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t / 255.0)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .ctx(what)?;
            let d = images.elem_count() / images.dim(0).ctx(what)?;
            GaussianStats::from_features(Rows::new(&v, d), what)
        }
        EvalFeatures::Inception => {
            // Grayscale → 3 equal channels on the CPU, where the Inception runs.
            let rgb = images
                .to_device(&Device::Cpu)
                .and_then(|t| t.repeat((1, 3, 1, 1)))
                .ctx(what)?;
            embedder.stats_of(MetricInput::Images(rgb), Path::new(what))
        }
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
    let cache = recipe::model_cache(None);
    let model = recipe::train_with_progress(&c.model, &cache, &dev, false)?;
    manifest
        .wall_seconds
        .insert("train-or-load".into(), t.elapsed().as_secs_f64());
    run.log(&format!("model {} from {}", model.key, model.dir.display()))?;
    run.write_manifest(manifest)?;

    // The loss trace, for the report's curve.
    if !run.has("loss.parquet") {
        let trace = read_trace(&model.dir)?;
        let mut frame = df!(
            "step" => trace.iter().map(|r| r.step as u64).collect::<Vec<_>>(),
            "loss" => trace.iter().map(|r| r.loss).collect::<Vec<_>>(),
            "lr" => trace.iter().map(|r| r.lr).collect::<Vec<_>>(),
        )
        .ctx("loss frame")?;
        run.write_parquet("loss.parquet", &mut frame)?;
    }

    let net = recipe::load_network(&c.model, &model, c.eval.use_ema, &dev)?;
    let data_dir = recipe::fashion_mnist_or_fetch(None)?;
    if c.eval.features == EvalFeatures::Inception && c.features.inception_path.is_empty() {
        // A fresh machine: fetch (or verify the cached) FID Inception weights first.
        crate::fetch::fetch_inception(&crate::fetch::default_cache_dir())?;
    }
    let embedder = Embedder::new(c.features.clone(), c.eval.inception_batch);
    let t = Instant::now();
    let (reference, _) = real_images(c, &data_dir, Split::Test, c.eval.reference_subset, &dev)?;
    let ref_stats = stats(c, &embedder, &reference, "Fashion-MNIST test set")?;
    let (floor_imgs, _) = real_images(c, &data_dir, Split::Train, c.eval.floor_samples, &dev)?;
    let floor = frechet_distance(
        &stats(c, &embedder, &floor_imgs, "Fashion-MNIST training images")?,
        &ref_stats,
    )?;
    manifest
        .wall_seconds
        .insert("reference".into(), t.elapsed().as_secs_f64());
    run.write_manifest(manifest)?;

    let mut set = vec!["real training images (floor)".to_string()];
    let mut seed_col = vec![None::<u64>];
    let mut n_col = vec![floor_imgs.dim(0).ctx("floor")? as u64];
    let mut fid_col = vec![floor];
    for &seed in &c.seeds {
        let part = format!("seeds/seed-{seed}/samples.safetensors");
        let t = Instant::now();
        let samples = if run.has(&part) {
            let m = candle_core::safetensors::load(run.file(&part), &dev).ctx(&part)?;
            m.get("images")
                .cloned()
                .ok_or_else(|| Error::invalid(part.clone(), "no `images` tensor"))?
        } else {
            let pb = indicatif::ProgressBar::new(c.eval.samples as u64);
            let (x, labels) = generate(c, &net, seed, &dev, |k| pb.inc(k as u64))?;
            pb.finish_and_clear();
            let y = Tensor::from_vec(labels, c.eval.samples, &dev).ctx("labels")?;
            std::fs::create_dir_all(run.file(&format!("seeds/seed-{seed}")))
                .map_err(|e| Error::io(run.path(), e))?;
            let path = run.file(&part);
            crate::tracking::write_atomically(&path, |tmp| {
                candle_core::safetensors::save(
                    &std::collections::HashMap::from([
                        ("images".to_string(), x.clone()),
                        ("labels".to_string(), y.clone()),
                    ]),
                    tmp,
                )
                .ctx(&part)
            })?;
            x
        };
        manifest
            .wall_seconds
            .insert(format!("sample/seed-{seed}"), t.elapsed().as_secs_f64());
        let t = Instant::now();
        let fid = frechet_distance(
            &stats(c, &embedder, &samples, &format!("samples of seed {seed}"))?,
            &ref_stats,
        )?;
        manifest
            .wall_seconds
            .insert(format!("fid/seed-{seed}"), t.elapsed().as_secs_f64());
        run.write_manifest(manifest)?;
        set.push("generated (DDIM)".into());
        seed_col.push(Some(seed));
        n_col.push(c.eval.samples as u64);
        fid_col.push(fid);
    }
    let mut frame = df!("set" => set, "seed" => seed_col, "n" => n_col, "fid" => fid_col)
        .ctx("metrics frame")?;
    run.write_parquet("metrics.parquet", &mut frame)
}

fn column_f64(frame: &DataFrame, name: &str, what: &str) -> Result<Vec<f64>> {
    Ok(frame
        .column(name)
        .ctx(what)?
        .f64()
        .ctx(what)?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

fn report_impl(c: &Config, run: &RunDir) -> Result<Verdict> {
    let metrics = run.read_parquet("metrics.parquet")?;
    let fid = column_f64(&metrics, "fid", "metrics.parquet: fid")?;
    let floor = fid[0];
    let gen = &fid[1..];
    let n = gen.len() as f64;
    let mean = gen.iter().sum::<f64>() / n;
    let std = if gen.len() > 1 {
        (gen.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let space = match c.eval.features {
        EvalFeatures::Inception => "Inception-v3 pool3",
        EvalFeatures::Pixels => "raw pixels (smoke plumbing check, not an FID)",
    };
    let mut table = Table::new(["set", "images", "FID vs test set", "× floor"]);
    table.row([
        "real training images (floor)".to_string(),
        c.eval.floor_samples.to_string(),
        format!("{floor:.2}"),
        "1.00".into(),
    ]);
    table.row([
        format!(
            "generated: {} {} steps, {} seed(s)",
            sampler_name(&c.sampler),
            c.sampler.steps,
            gen.len()
        ),
        c.eval.samples.to_string(),
        pm(mean, std, 2),
        format!("{:.2}", mean / floor),
    ]);
    let figures = run.file("figures");
    std::fs::create_dir_all(&figures).map_err(|e| Error::io(&figures, e))?;
    write_grid(c, run, &figures)?;
    write_loss(run, &figures)?;
    let ratio = mean / floor;
    // A Fréchet distance of raw pixels (the smoke profile) is a plumbing check, not an FID: the
    // bar is stated in Inception features, so with pixels it is not checked, whatever the ratio.
    let smoke = c.eval.features == EvalFeatures::Pixels;
    let outcome = Outcome::of_check(!smoke, ratio <= c.eval.max_fid_ratio);
    let summary = if smoke {
        format!(
            "FID in {space}: {mean:.2} vs floor {floor:.2}; quality bar {} at this scale",
            outcome.label()
        )
    } else if outcome == Outcome::Reproduced {
        format!(
            "FID {mean:.2} is {ratio:.2}× the real-data floor {floor:.2} ({space}, {} samples): within diffuq's {}× bar for mini models",
            c.eval.samples, c.eval.max_fid_ratio
        )
    } else {
        format!(
            "FID {mean:.2} is {ratio:.2}× the real-data floor {floor:.2} ({space}, {} samples): NOT within diffuq's {}× bar for mini models",
            c.eval.samples, c.eval.max_fid_ratio
        )
    };
    let text =
        format!(
        "{}\n{summary}\n\nfeatures: {space}; reference: {} Fashion-MNIST test images at {}×{}\n",
        table.to_markdown(),
        if c.eval.reference_subset == 0 { 10_000 } else { c.eval.reference_subset },
        c.model.data.image_size,
        c.model.data.image_size
    );
    run.write("table.md", text.as_bytes())?;
    // No paper has this artifact: the comparison lists diffuq's own numbers (the bar is diffuq's,
    // FID ≤ eval.max_fid_ratio × the real-data floor).
    let column = if smoke {
        "Fréchet distance of pixels vs test set"
    } else {
        "FID vs test set"
    };
    let reproduced = [
        Reproduced::new("real training images (floor)", column, floor),
        Reproduced::new("generated", column, mean).with_std(std),
        Reproduced::new("generated", "× floor", ratio),
    ];
    let scale = super::run_scale(run)?;
    super::write_comparison(
        run,
        &Comparison::new(MiniModel::NAME, None, &reproduced, &scale),
    )?;
    Ok(Verdict {
        table: text,
        outcome,
        summary,
    })
}

fn sampler_name(s: &SamplerSpec) -> String {
    format!("{:?}", s.name).to_lowercase()
}

/// Samples per class (rows) from the first seed: PNG and SVG.
fn write_grid(c: &Config, run: &RunDir, figures: &Path) -> Result<()> {
    let seed = c.seeds[0];
    let part = format!("seeds/seed-{seed}/samples.safetensors");
    let m = candle_core::safetensors::load(run.file(&part), &Device::Cpu).ctx(&part)?;
    let (Some(images), Some(labels)) = (m.get("images"), m.get("labels")) else {
        return Err(Error::invalid(part, "expected `images` and `labels`"));
    };
    let labels: Vec<u32> = labels.to_vec1().ctx(&part)?;
    let (_, _, s, _) = images.dims4().ctx(&part)?;
    let pix: Vec<u8> = images.flatten_all().and_then(|t| t.to_vec1()).ctx(&part)?;
    let mut rows: Vec<Vec<&[u8]>> = vec![vec![]; 10];
    for (i, &y) in labels.iter().enumerate() {
        let r = &mut rows[y as usize];
        if r.len() < c.eval.grid_per_class {
            r.push(&pix[i * s * s..(i + 1) * s * s]);
        }
    }
    crate::report::grid::write_grid(
        figures,
        "samples",
        &rows,
        s,
        &CLASS_NAMES,
        &format!(
            "mini model samples ({} {} steps), one row per class",
            sampler_name(&c.sampler),
            c.sampler.steps
        ),
    )
}

/// The training loss per step (and its 50-step moving average): PNG and SVG.
fn write_loss(run: &RunDir, figures: &Path) -> Result<()> {
    let frame = run.read_parquet("loss.parquet")?;
    let loss = column_f64(&frame, "loss", "loss.parquet: loss")?;
    let x: Vec<f64> = (1..=loss.len()).map(|s| s as f64).collect();
    let w = 50usize.min(loss.len().max(1));
    let smooth: Vec<f64> = (0..loss.len())
        .map(|i| {
            let a = i.saturating_sub(w - 1);
            loss[a..=i].iter().sum::<f64>() / (i - a + 1) as f64
        })
        .collect();
    let zero = vec![0.0; loss.len()];
    crate::report::band::write_band(
        figures,
        "loss",
        &[
            crate::report::band::BandSeries {
                label: "loss per step".into(),
                x: &x,
                mean: &loss,
                std: &zero,
                color: plotters::style::RGBColor(180, 180, 180),
            },
            crate::report::band::BandSeries {
                label: format!("{w}-step moving average"),
                x: &x,
                mean: &smooth,
                std: &zero,
                color: plotters::style::RGBColor(31, 119, 180),
            },
        ],
        &crate::report::band::BandSpec {
            title: "mini model: training loss".into(),
            x_label: "optimiser step".into(),
            y_label: "‖ε − ε_θ‖² (per pixel)".into(),
            highlight: None,
            caption: "DDPM simple loss on the training minibatches",
        },
    )
}
