//! The artifact kit: what every artifact needs besides its own algorithm, written once.
//!
//! - [`streams`]: the one table of seed-stream names. A stream's numbers are a function of the
//!   run seed, this name and the sample index (see `seed`), so two artifacts that draw the same
//!   role from the same name see the same numbers, and a sample's numbers do not depend on batch
//!   size, order or shard.
//! - [`PartRunner`]: independent parts of a run (seeds: the papers' independent replicates) run
//!   on `--jobs` workers, each part skipped when its resume marker exists, wall times recorded
//!   in the manifest, the per-part frames stacked in part order.
//! - [`initial_noise`] / [`cycled_labels`] / [`stream_labels`]: x_T and class labels of the
//!   generated samples, per sample index.
//! - [`bar`]: one progress-bar style; [`column_f64`] / [`column_u64`]: Polars columns as vectors.

use candle_core::{Device, Tensor};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use polars::prelude::{DataFrame, DataType};

use crate::error::{Result, TensorContext};
use crate::seed::SeedStreams;
use crate::tracking::{Manifest, RunDir};

/// Seed-stream names by role. Every artifact draws each role from the name listed here.
pub mod streams {
    /// Initial noise x_T of generated samples (per sample index).
    pub const X_T: &str = "x_T";
    /// Fresh noise a stochastic sampler (DDPM, DDIM with η > 0) adds at each step.
    pub const SAMPLER_NOISE: &str = "sampler-noise";
    /// Class labels drawn at random (when they do not simply cycle through the classes).
    pub const LABELS: &str = "labels";
    /// AU's M re-noisings of x̂₀ at each observed step (Alg. 1).
    pub const AU_RENOISE: &str = "au-renoise";
    /// Random filtering: the score of the random baseline.
    pub const RANDOM_KEEP: &str = "random-keep";
    /// Training data drawn from a toy distribution.
    pub const TRAIN_DATA: &str = "train-data";
    /// Noise and timesteps of the training images a last-layer Laplace is fitted on.
    pub const LAPLACE_FIT: &str = "laplace-fit";
    /// The VAE posterior noise of a latent model's Laplace-fit images (per image index).
    pub const VAE_ENCODE: &str = "vae-encode";
    /// Which test images a reconstruction run draws (a uniform key per test image).
    pub const RECON_IMAGES: &str = "recon-images";
    /// The noise a test image is noised with before its reconstruction (per test image index).
    pub const RECON_NOISE: &str = "recon-noise";
}

/// Seeds as independent parts of one run, each written under `seeds/seed-<s>/`.
pub struct PartRunner<'a> {
    run: &'a RunDir,
    seeds: &'a [u64],
    /// Frames every part writes (`seeds/seed-<s>/<frame>.parquet`), stacked in seed order into
    /// `<frame>.parquet` once all parts are done.
    frames: &'a [&'a str],
}

/// What a part reports back: named phase wall times in seconds (`"<phase>/seed-<s>"`).
pub type PartTimes = Vec<(String, f64)>;

impl<'a> PartRunner<'a> {
    pub fn new(run: &'a RunDir, seeds: &'a [u64], frames: &'a [&'a str]) -> Self {
        Self { run, seeds, frames }
    }

    /// The directory of one part, relative to the run.
    pub fn part_dir(seed: u64) -> String {
        format!("seeds/seed-{seed}")
    }

    /// A part is finished when its marker exists; the marker is written (atomically) only after
    /// the part's function returned, so a part killed half-way is recomputed from the start.
    fn marker(seed: u64) -> String {
        format!("{}/done", Self::part_dir(seed))
    }

    /// Whether a part is finished. Parts from before markers existed count as finished when
    /// every one of their frames is present (all were written as the part's last act).
    pub fn is_done(&self, seed: u64) -> bool {
        self.run.has(&Self::marker(seed))
            || (!self.frames.is_empty()
                && self.frames.iter().all(|f| {
                    self.run
                        .has(&format!("{}/{f}.parquet", Self::part_dir(seed)))
                }))
    }

    /// Run every pending part with `part(seed, progress)` on up to `jobs` workers (parts are
    /// independent replicates with their own streams, so concurrency changes wall time only),
    /// record their wall times in `manifest` as each finishes, then stack the frames.
    pub fn run<F>(&self, manifest: &mut Manifest, jobs: usize, part: F) -> Result<()>
    where
        F: Fn(u64, &MultiProgress) -> Result<PartTimes> + Sync,
    {
        let pending: Vec<u64> = self
            .seeds
            .iter()
            .copied()
            .filter(|&s| self.run.computes(self.seeds, s) && !self.is_done(s))
            .collect();
        for &seed in self.seeds.iter().filter(|&&s| self.is_done(s)) {
            self.run
                .log(&format!("seed {seed}: reusing finished part"))?;
        }
        let progress = MultiProgress::new();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let manifest_lock = std::sync::Mutex::new(manifest);
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..jobs.clamp(1, pending.len().max(1)))
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        while let Some(&seed) =
                            pending.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                        {
                            let t0 = std::time::Instant::now();
                            let times = part(seed, &progress)?;
                            let secs = t0.elapsed().as_secs_f64();
                            self.run.write(&Self::marker(seed), b"")?;
                            let mut m = manifest_lock.lock().unwrap_or_else(|e| e.into_inner());
                            m.wall_seconds.extend(times);
                            m.wall_seconds.insert(format!("seed-{seed}"), secs);
                            self.run.write_manifest(&m)?;
                            self.run.log(&format!("seed {seed}: done in {secs:.1}s"))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(crate::error::Error::invalid(
                            "seed worker",
                            "panicked (a bug: please report it)",
                        ))
                    })
                })
                .collect()
        });
        for r in results {
            r?;
        }
        self.stack()
    }

    /// Stack every frame over all parts — not in a shard, whose parts `diffuq merge` joins.
    fn stack(&self) -> Result<()> {
        if self.run.shard().is_some() {
            return Ok(());
        }
        for frame in self.frames {
            stack_parts(self.run, self.seeds, frame)?;
        }
        Ok(())
    }
}

impl PartRunner<'_> {
    /// [`PartRunner::run`] one part after another on this thread, for parts that hold state a
    /// thread cannot share (a lazily loaded feature network) and already use every core.
    pub fn run_each<F>(&self, manifest: &mut Manifest, mut part: F) -> Result<()>
    where
        F: FnMut(u64, &MultiProgress) -> Result<PartTimes>,
    {
        let progress = MultiProgress::new();
        for &seed in self.seeds {
            if !self.run.computes(self.seeds, seed) {
                continue;
            }
            if self.is_done(seed) {
                self.run
                    .log(&format!("seed {seed}: reusing finished part"))?;
                continue;
            }
            let t0 = std::time::Instant::now();
            let times = part(seed, &progress)?;
            let secs = t0.elapsed().as_secs_f64();
            self.run.write(&Self::marker(seed), b"")?;
            manifest.wall_seconds.extend(times);
            manifest.wall_seconds.insert(format!("seed-{seed}"), secs);
            self.run.write_manifest(manifest)?;
            self.run.log(&format!("seed {seed}: done in {secs:.1}s"))?;
        }
        self.stack()
    }
}

/// Stack the per-seed parts `seeds/seed-<s>/<frame>.parquet` in seed order into
/// `<frame>.parquet` (nothing in a shard: `diffuq merge` stacks the joined parts).
pub fn stack_parts(run: &RunDir, seeds: &[u64], frame: &str) -> Result<()> {
    if run.shard().is_some() {
        return Ok(());
    }
    let mut stacked = DataFrame::empty();
    for &seed in seeds {
        let part = run.read_parquet(&format!("{}/{frame}.parquet", PartRunner::part_dir(seed)))?;
        stacked = if stacked.width() == 0 {
            part
        } else {
            stacked.vstack(&part).ctx(&format!("stacking {frame}"))?
        };
    }
    run.write_parquet(&format!("{frame}.parquet"), &mut stacked)
}

/// A progress bar in the kit's one style, added to `progress`.
pub fn bar(progress: &MultiProgress, len: usize, what: &str) -> ProgressBar {
    let pb = progress.add(ProgressBar::new(len as u64));
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>18} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// x_T of the samples `indices`, shape (len, item_shape…), f32, from the [`streams::X_T`]
/// stream: sample i's noise is the same whatever batch it is drawn in.
pub fn initial_noise(
    streams: &SeedStreams,
    indices: &[u64],
    item_shape: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let dim: usize = item_shape.iter().product();
    let mut shape = vec![indices.len()];
    shape.extend_from_slice(item_shape);
    Tensor::from_vec(
        streams.purpose(streams::X_T).normals(indices, None, dim),
        shape,
        device,
    )
    .ctx("x_T")
}

/// Labels cycling through the classes by sample index (i mod classes): every class equally
/// often in any prefix of whole cycles, as the papers' class-balanced sample sets.
pub fn cycled_labels(indices: &[u64], classes: usize) -> Vec<u32> {
    indices
        .iter()
        .map(|&i| (i % classes.max(1) as u64) as u32)
        .collect()
}

/// Labels drawn uniformly per sample index from the [`streams::LABELS`] stream.
pub fn stream_labels(streams: &SeedStreams, indices: &[u64], classes: usize) -> Vec<u32> {
    use rand::Rng;
    let p = streams.purpose(streams::LABELS);
    indices
        .iter()
        .map(|&i| p.rng(i).random_range(0..classes.max(1) as u32))
        .collect()
}

/// A column of `frame` as f64 values (any numeric type), with its name in the error.
pub fn column_f64(frame: &DataFrame, name: &str) -> Result<Vec<f64>> {
    Ok(frame
        .column(name)
        .ctx(name)?
        .cast(&DataType::Float64)
        .ctx(name)?
        .f64()
        .ctx(name)?
        .into_no_null_iter()
        .collect())
}

/// A column of `frame` as u64 values (any integer type), with its name in the error.
pub fn column_u64(frame: &DataFrame, name: &str) -> Result<Vec<u64>> {
    Ok(frame
        .column(name)
        .ctx(name)?
        .cast(&DataType::UInt64)
        .ctx(name)?
        .u64()
        .ctx(name)?
        .into_no_null_iter()
        .collect())
}

/// The experiments directory an experiment file lies in (`<dir>/<artifact>/experiment.toml`).
pub fn experiments_dir(file: &std::path::Path) -> std::path::PathBuf {
    file.parent()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("experiments"))
}

/// The training recipe of the image-model experiment `from` at `scale` — one of `allowed`, else a
/// one-line error naming `key`.
pub fn image_recipe(
    key: &str,
    from: &str,
    allowed: &[&str],
    experiments_dir: &std::path::Path,
    scale: &str,
) -> Result<crate::model::recipe::ImageModelRecipe> {
    if !allowed.contains(&from) {
        return Err(crate::error::Error::invalid(
            key,
            format!(
                "`{from}`: only {} hold trainable recipes (paper-scale checkpoints come with the loaders)",
                allowed.join(", ")
            ),
        ));
    }
    let r = crate::config::resolve::<super::mini_model::Config>(
        experiments_dir,
        from,
        scale,
        &[],
        &[],
    )?;
    Ok(r.config.model)
}

/// The image model an image artifact samples from, whichever way it came: a recipe diffuq
/// trains (mini scale; the model cache trains it once or finds it committed) or one of the
/// papers' checkpoints ([`crate::model::catalog`], paper scale).
pub struct ImageModel {
    pub net: Box<dyn crate::model::Network>,
    /// The training noise schedule (also what x₀-/v-predictions are converted with).
    pub schedule: crate::schedule::NoiseSchedule,
    /// A flow-matching model (velocity field) rather than a diffusion model.
    pub flow: bool,
    /// The seed of model-level streams (the Laplace fit's noise and timesteps).
    pub seed: u64,
    /// The shape (C, H, W) the network samples in.
    pub shape: [usize; 3],
    /// How many class labels samples draw from (1 for an unconditional network).
    pub classes: usize,
    /// The model's identity, keying caches of its samples and scores: the recipe's cache key,
    /// or the checkpoint name with the SHA-256 of its weight file.
    pub key: String,
    /// For logs: where it came from.
    pub origin: String,
    /// The recipe of a model diffuq trains (its data set and image size).
    pub recipe: Option<crate::model::recipe::ImageModelRecipe>,
    /// A latent model's KL-f8 autoencoder (`weights.vae`): samples are latents, images are its
    /// decodings, training images are encoded for the Laplace fit.
    pub decoder: Option<crate::model::vae::VaeDecoder>,
    /// The shape (C, H, W) of the images: [`Self::shape`] for a pixel model, the decoder's
    /// output for a latent one.
    pub image_shape: [usize; 3],
}

impl ImageModel {
    /// Whether the network takes class labels.
    pub fn conditional(&self) -> bool {
        self.net.num_classes().is_some()
    }

    /// Samples (N, …) as images in [−1, 1]-range: themselves for a pixel model, decoded (in
    /// batches of [`DECODE_BATCH`]) for a latent one.
    pub fn to_images(&self, x: &Tensor) -> Result<Tensor> {
        let Some(vae) = &self.decoder else {
            return Ok(x.clone());
        };
        let n = x.dim(0).ctx("latents")?;
        let mut out = vec![];
        let mut i = 0;
        while i < n {
            let b = DECODE_BATCH.min(n - i);
            let z = x.narrow(0, i, b).ctx("latents")?;
            out.push(vae.decode(&z).ctx("VAE decode")?);
            i += b;
        }
        Tensor::cat(&out, 0).ctx("decoded images")
    }
}

impl ImageModel {
    /// Training images (N, C, H, W) in [−1, 1] as the network's inputs: themselves for a pixel
    /// model; for a latent model the scaled VAE posterior sample z = 0.18215·(μ + σ ε) with ε from
    /// `purpose` per image index (GU's release encodes its Laplace-fit crops so).
    pub fn to_inputs(
        &self,
        x: &Tensor,
        indices: &[u64],
        purpose: &crate::seed::Purpose,
    ) -> Result<Tensor> {
        let Some(vae) = &self.decoder else {
            return Ok(x.clone());
        };
        let [c, h, w] = self.shape;
        let n = indices.len();
        let eps = Tensor::from_vec(
            purpose.normals(indices, None, c * h * w),
            (n, c, h, w),
            x.device(),
        )
        .ctx("VAE posterior noise")?;
        vae.encode_sample(x, &eps).ctx("VAE encode")
    }
}

/// Latents decoded per VAE call: the mid-block attention holds an (h·w)² score matrix per image.
pub const DECODE_BATCH: usize = 16;

/// The model `from` names (`key` is its configuration key, `weights` the `[weights]` table,
/// `dtype` a checkpoint's precision):
/// one of `recipes` (trained or taken from the model cache) or `checkpoint:<name>` (the file
/// `weights.model`).
#[allow(clippy::too_many_arguments)]
pub fn image_model(
    key: &str,
    from: &str,
    use_ema: bool,
    dtype: candle_core::DType,
    weights: &super::inputs::FileKeys,
    recipes: &[&str],
    experiments_dir: &std::path::Path,
    scale: &str,
    dev: &Device,
) -> Result<ImageModel> {
    use crate::model::Network as _;
    if dtype == candle_core::DType::BF16 && dev.is_cpu() {
        return Err(crate::error::Error::invalid(
            "model.precision",
            "\"bf16\" needs --device cuda (candle's CPU matmul has no bfloat16 kernel); \"f16\" runs on the CPU",
        ));
    }
    if let Some(name) = from.strip_prefix("checkpoint:") {
        let cp = crate::model::catalog::find(name)?;
        let path = super::inputs::path_of("weights", weights, "model")?;
        let (net, shape, schedule) = cp.load(&path, dtype, dev)?;
        let mut digest = crate::tracking::sha256_path(&path)?;
        let decoder = match cp.latent {
            Some(_) => {
                let vae = super::inputs::path_of("weights", weights, "vae")?;
                digest.push_str(&crate::tracking::sha256_path(&vae)?[..16]);
                Some(crate::model::vae::VaeDecoder::load(&vae, dtype, dev)?)
            }
            None => None,
        };
        // Labels are drawn from the catalogued classes (not a null class), or from fewer when the
        // network has fewer (a reduced checkpoint with its own config).
        let classes = match (cp.classes, net.num_classes()) {
            (Some(a), Some(b)) => a.min(b),
            (_, Some(b)) => b,
            _ => 1,
        };
        let image_shape = match &decoder {
            Some(vae) => {
                let f = vae.config().downsampling_factor();
                [vae.config().out_ch, shape[1] * f, shape[2] * f]
            }
            None => shape,
        };
        return Ok(ImageModel {
            schedule,
            flow: cp.is_flow(),
            seed: 0,
            shape,
            image_shape,
            decoder,
            classes,
            key: format!("{name}-{}", &digest[..16]),
            origin: format!("checkpoint:{name} from {}", path.display()),
            recipe: None,
            net,
        });
    }
    let recipe = image_recipe(key, from, recipes, experiments_dir, scale)?;
    let cache = crate::model::recipe::model_cache(None);
    let model = crate::model::recipe::train_with_progress(&recipe, &cache, dev, false)?;
    let net = crate::model::recipe::load_network(&recipe, &model, use_ema, dev)?;
    let s = recipe.data.image_size;
    Ok(ImageModel {
        classes: net.num_classes().unwrap_or(1),
        net: Box::new(net),
        schedule: recipe.schedule.build(),
        flow: recipe.objective == crate::model::recipe::Objective::FlowMatching,
        seed: recipe.seed,
        shape: [1, s, s],
        origin: format!("model {} from {}", model.key, model.dir.display()),
        key: model.key,
        recipe: Some(recipe),
        decoder: None,
        image_shape: [1, s, s],
    })
}

/// Ok when every value of a batch `x` (N, …) is finite; otherwise an error naming `what`, the
/// first sample index (of `indices`) holding a NaN or ±∞ and the value — a network, solver or
/// checkpoint that diverged stops the run there instead of reaching the metrics.
pub fn check_finite(x: &Tensor, indices: &[u64], what: &str) -> Result<()> {
    let n = x.dim(0).ctx(what)?;
    let v: Vec<f64> = x
        .to_dtype(candle_core::DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .ctx(what)?;
    let per = v.len() / n.max(1);
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(e) => Err(crate::error::Error::invalid(
            what,
            format!(
                "{} at sample {} (element {} of it): the network or solver diverged",
                v[e],
                indices.get(e / per.max(1)).copied().unwrap_or(0),
                e % per.max(1)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_and_labels_do_not_depend_on_the_batch() {
        // Expected values: the same function called on the whole index range; each sample's
        // draws must equal its draws in any sub-batch (the seed module's per-index streams).
        let s = SeedStreams::new(7);
        let all: Vec<u64> = (0..10).collect();
        let whole = initial_noise(&s, &all, &[1, 2, 2], &Device::Cpu).unwrap();
        let part = initial_noise(&s, &all[3..6], &[1, 2, 2], &Device::Cpu).unwrap();
        let a: Vec<f32> = whole
            .narrow(0, 3, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = part.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
        assert_eq!(
            stream_labels(&s, &all, 10)[3..6].to_vec(),
            stream_labels(&s, &all[3..6], 10)
        );
        assert_eq!(cycled_labels(&[0, 9, 10, 23], 10), vec![0, 9, 0, 3]);
        let l = stream_labels(&s, &(0..1000).collect::<Vec<_>>(), 10);
        assert!(l.iter().all(|&c| c < 10));
        assert!(
            (0..10).all(|c| l.contains(&c)),
            "every class drawn in 1000 labels"
        );
    }
}
