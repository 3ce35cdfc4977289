//! Image diffusion models that diffuq trains itself: a recipe (data, architecture, schedule,
//! objective, optimiser, seed) → a trained network, cached by the recipe's hash.
//!
//! The objective is the DDPM simple loss (Ho et al. 2020, Eq. 14),
//!
//!   L(θ) = E_{t ~ U{0..T−1}, (x₀, y) ~ data, ε ~ N(0, I)} ‖ε − ε_θ(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t, y)‖²,
//!
//! or the rectified-flow / conditional flow-matching loss under [`crate::sampler::flow`]'s
//! convention, ‖(ε − x₀) − v_θ((1 − t) x₀ + t ε, t, y)‖² with t ~ U[0, 1) (Liu et al. 2023;
//! Lipman et al. 2023), whose network time input is 1000·t. With `label_dropout` p a row's label
//! is replaced by the null class `num_classes` with probability p (Ho & Salimans 2022), so the
//! network also learns the unconditional model; the UNet then has `num_classes + 1` class
//! embeddings. Dropout inside the residual blocks is on during training, its masks drawn from the
//! seed streams (purpose `train-dropout`, stream = minibatch row, step = optimiser step), so a
//! training step depends only on (recipe, step) and a killed training resumes bit for bit.
//!
//! Everything that can change the weights is in the recipe and so in the cache key; the device
//! and thread count are recorded in the entry's manifest but are not part of the key.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::cache::{CachedModel, ModelCache};
use super::network::{Mode, Prediction, StreamMasks};
use super::params::ParamSource;
use super::trainer::{self, StepContext, TimeDraw, TraceRow, TrainSpec};
use super::unet2d::{UNet2D, UNet2DConfig};
use crate::data::fashion_mnist::{locate_fashion_mnist, FashionMnist, Split};
use crate::error::{Error, Result, TensorContext};
use crate::schedule::{NoiseSchedule, ScheduleKind};
use crate::seed::SeedStreams;

/// What a model learns to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// DDPM ε-prediction.
    DdpmEps,
    /// Rectified-flow velocity.
    FlowMatching,
}

/// The noise schedule of an ε-model (`[model.schedule]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub kind: ScheduleKind,
    pub beta_start: f64,
    pub beta_end: f64,
    pub timesteps: usize,
}

impl ScheduleSpec {
    pub fn build(&self) -> NoiseSchedule {
        NoiseSchedule::new(self.kind, self.beta_start, self.beta_end, self.timesteps)
    }
}

/// The training data (`[model.data]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// `fashion-mnist` (the only data set diffuq fetches for training).
    pub dataset: String,
    /// Side length the 28×28 images are padded or resized to.
    pub image_size: usize,
    /// Train on the first `subset` training images (0 = all 60,000).
    pub subset: usize,
}

/// A recipe: everything that determines the trained weights (`[model]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageModelRecipe {
    pub data: DataSpec,
    pub unet: UNet2DConfig,
    pub objective: Objective,
    pub schedule: ScheduleSpec,
    pub train: TrainSpec,
    /// Probability of replacing a label by the null class during training (0 = none).
    pub label_dropout: f64,
    pub seed: u64,
}

impl ImageModelRecipe {
    /// One-line errors naming the `model.*` key.
    pub fn validate(&self) -> Result<()> {
        if self.data.dataset != "fashion-mnist" {
            return Err(Error::invalid(
                "model.data.dataset",
                format!(
                    "{:?}: diffuq trains on \"fashion-mnist\"",
                    self.data.dataset
                ),
            ));
        }
        if self.unet.sample_size != self.data.image_size {
            return Err(Error::invalid(
                "model.unet.sample_size",
                format!(
                    "{} differs from model.data.image_size = {}",
                    self.unet.sample_size, self.data.image_size
                ),
            ));
        }
        if self.unet.in_channels != 1 || self.unet.out_channels != 1 {
            return Err(Error::invalid(
                "model.unet.in_channels",
                "Fashion-MNIST is grayscale: in_channels and out_channels must be 1",
            ));
        }
        if let Some(k) = self.unet.num_class_embeds {
            let want = 10 + usize::from(self.label_dropout > 0.0);
            if k != want {
                return Err(Error::invalid(
                    "model.unet.num_class_embeds",
                    format!(
                        "{k}: 10 classes{} need {want}",
                        if want == 11 {
                            " plus the null class of label_dropout"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        } else if self.label_dropout > 0.0 {
            return Err(Error::invalid(
                "model.label_dropout",
                "needs a class-conditional network (model.unet.num_class_embeds)",
            ));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return Err(Error::invalid(
                "model.label_dropout",
                format!("must lie in [0, 1), got {}", self.label_dropout),
            ));
        }
        if self.objective == Objective::DdpmEps && self.schedule.timesteps < 2 {
            return Err(Error::invalid("model.schedule.timesteps", "must be ≥ 2"));
        }
        self.unet.validate()?;
        self.train.validate()
    }

    /// The recipe as the model cache keys it: everything that can change the weights. How often
    /// checkpoints are written cannot (a training resumes bit for bit with any frequency), so
    /// it is left out and a different `checkpoint_every` finds the same model.
    pub fn cache_identity(&self) -> Self {
        let mut r = self.clone();
        r.train.checkpoint_every = 0;
        r
    }

    /// What the trained network outputs.
    pub fn prediction(&self) -> Prediction {
        match self.objective {
            Objective::DdpmEps => Prediction::Epsilon,
            Objective::FlowMatching => Prediction::Velocity,
        }
    }

    /// Network time per unit of the sampler's time: flow times t ∈ [0, 1] are fed to the
    /// sinusoid as 1000·t, the range its frequencies were made for.
    pub fn time_scale(&self) -> f64 {
        match self.objective {
            Objective::DdpmEps => 1.0,
            Objective::FlowMatching => 1000.0,
        }
    }
}

/// The training images (N, 1, S, S) in [−1, 1] and their labels, on `device`.
pub fn training_data(
    spec: &DataSpec,
    data_dir: &Path,
    device: &Device,
) -> Result<(Tensor, Vec<u32>)> {
    let set = FashionMnist::load(data_dir, Split::Train)?;
    let n = if spec.subset == 0 {
        set.len()
    } else {
        spec.subset.min(set.len())
    };
    let x = set.to_tensor(spec.image_size, "model.data.image_size", device)?;
    let x = x.narrow(0, 0, n).ctx("training subset")?;
    let labels = set.labels.clone().unwrap_or_default();
    Ok((x, labels[..n].to_vec()))
}

/// A freshly initialised network for `recipe` (seeded by `recipe.seed`), its parameters in
/// `varmap`.
pub fn init_network(recipe: &ImageModelRecipe, varmap: &VarMap, device: &Device) -> Result<UNet2D> {
    let init = SeedStreams::new(recipe.seed).purpose("model-init");
    let (vb, _) = ParamSource::init(init, varmap.clone()).var_builder(DType::F32, device);
    UNet2D::new(&recipe.unet, vb, "mini").map(|n| {
        n.with_prediction(recipe.prediction())
            .with_time_scale(recipe.time_scale())
    })
}

/// The per-step loss of `recipe` on (data, labels).
pub fn step_loss(
    recipe: &ImageModelRecipe,
    net: &UNet2D,
    data: &Tensor,
    labels: &[u32],
    schedule: &NoiseSchedule,
    streams: &SeedStreams,
    ctx: &StepContext,
) -> Result<Tensor> {
    let (n, c, h, w) = data.dims4().ctx("training data")?;
    let dim = c * h * w;
    let time = match recipe.objective {
        Objective::DdpmEps => TimeDraw::Discrete {
            timesteps: schedule.len(),
        },
        Objective::FlowMatching => TimeDraw::Uniform,
    };
    let batch = ctx.draw(n, time, dim);
    let b = ctx.batch_size;
    let dev = data.device();
    let null = recipe.unet.num_class_embeds.map(|k| k as u32 - 1);
    // A stream of its own, so label dropout does not shift the batch draws.
    let label_dropout = streams.purpose("train-label-dropout");
    let y: Option<Vec<u32>> = recipe.unet.num_class_embeds.map(|_| {
        batch
            .indices
            .iter()
            .enumerate()
            .map(|(row, &i)| {
                let keep = recipe.label_dropout == 0.0 || {
                    let mut rng = label_dropout.rng_at(row as u64, ctx.step as u32);
                    rng.random::<f64>() >= recipe.label_dropout
                };
                if keep {
                    labels[i as usize]
                } else {
                    null.unwrap_or(0)
                }
            })
            .collect()
    });
    let rows: Vec<u64> = (0..b as u64).collect();
    let mut masks = StreamMasks::new(streams.purpose("train-dropout"), &rows, ctx.step as u32, 0);
    (|| -> candle_core::Result<Tensor> {
        let idx = Tensor::from_vec(batch.indices.clone(), b, dev)?;
        let x0 = data.index_select(&idx, 0)?;
        let eps = Tensor::from_vec(batch.noise.clone(), (b, c, h, w), dev)?;
        let y = y.map(|y| Tensor::from_vec(y, b, dev)).transpose()?;
        let col = |v: Vec<f32>| Tensor::from_vec(v, (b, 1, 1, 1), dev);
        let (x_t, target, t): (Tensor, Tensor, Vec<f64>) = match recipe.objective {
            Objective::DdpmEps => {
                let a: Vec<f32> = batch
                    .t
                    .iter()
                    .map(|&t| schedule.alpha_bar(Some(t as usize)).sqrt() as f32)
                    .collect();
                let s: Vec<f32> = batch
                    .t
                    .iter()
                    .map(|&t| (1.0 - schedule.alpha_bar(Some(t as usize))).sqrt() as f32)
                    .collect();
                let x_t = (x0.broadcast_mul(&col(a)?)? + eps.broadcast_mul(&col(s)?)?)?;
                (x_t, eps, batch.t.iter().map(|&t| f64::from(t)).collect())
            }
            Objective::FlowMatching => {
                let tt = col(batch.t.clone())?;
                let x_t = (x0.broadcast_mul(&(1.0 - &tt)?)? + eps.broadcast_mul(&tt)?)?;
                let target = (&eps - &x0)?;
                let t = batch.t.iter().map(|&t| f64::from(t)).collect();
                (x_t, target, t)
            }
        };
        let pred =
            super::Network::forward(net, &x_t, &t, y.as_ref(), &mut Mode::Dropout(&mut masks))?;
        (pred - target)?.sqr()?.mean_all()
    })()
    .ctx(&format!("training loss at step {}", ctx.step + 1))
}

/// Where models are cached, committed models included.
pub fn model_cache(root: Option<&Path>) -> ModelCache {
    let cache = ModelCache::new(
        root.map(Path::to_path_buf)
            .unwrap_or_else(ModelCache::default_root),
    );
    match committed_models_dir() {
        Some(d) => cache.with_committed(d),
        None => cache,
    }
}

/// The repository's `models/` directory of committed trained models: `./models`, else the source
/// tree's.
pub fn committed_models_dir() -> Option<PathBuf> {
    [
        PathBuf::from("models"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

/// The trained model of `recipe`: from the committed models or the cache, else trained now (and
/// resumed from its checkpoints if an earlier training was interrupted).
pub fn train_or_load(
    recipe: &ImageModelRecipe,
    cache: &ModelCache,
    data_dir: Option<&Path>,
    device: &Device,
    force: bool,
    mut progress: impl FnMut(&TraceRow),
) -> Result<CachedModel> {
    recipe.validate()?;
    cache.train_or_load(&recipe.cache_identity(), force, |ckpt| {
        let dir = fashion_mnist_or_fetch(data_dir)?;
        let (data, labels) = training_data(&recipe.data, &dir, device)?;
        let varmap = VarMap::new();
        let net = init_network(recipe, &varmap, device)?;
        let schedule = recipe.schedule.build();
        let streams = SeedStreams::new(recipe.seed);
        let mut objective =
            |ctx: &StepContext| step_loss(recipe, &net, &data, &labels, &schedule, &streams, ctx);
        trainer::train(
            &varmap,
            &recipe.train,
            &streams,
            ckpt,
            &mut objective,
            &mut progress,
        )
    })
}

/// The Fashion-MNIST directory: `configured` if given (it must hold the files), else the data
/// cache, fetched there first (Debian's package) when it is empty — so a fresh machine needs no
/// separate `diffuq fetch fashion-mnist`.
pub fn fashion_mnist_or_fetch(configured: Option<&Path>) -> Result<PathBuf> {
    let cache = crate::fetch::default_data_dir();
    match locate_fashion_mnist(configured, &cache) {
        Ok(dir) => Ok(dir),
        Err(_) if configured.is_none() => {
            eprintln!(
                "Fashion-MNIST is not in the data cache: fetching it (diffuq fetch fashion-mnist)"
            );
            crate::data::fashion_mnist::fetch_fashion_mnist(&cache, None)
        }
        Err(e) => Err(e),
    }
}

/// Load a cached model's network (EMA weights with `ema`).
pub fn load_network(
    recipe: &ImageModelRecipe,
    model: &CachedModel,
    ema: bool,
    device: &Device,
) -> Result<UNet2D> {
    let path = if ema {
        model.ema_path()
    } else {
        model.model_path()
    };
    let tensors = crate::checkpoint::read_tensors(&path)?;
    let what = format!("weights {}", path.display());
    let (vb, src) = ParamSource::load(tensors, what.clone()).var_builder(DType::F32, device);
    let net = UNet2D::new(&recipe.unet, vb, model.key.clone())?
        .with_prediction(recipe.prediction())
        .with_time_scale(recipe.time_scale());
    src.finish()?;
    Ok(net)
}

/// [`train_or_load`] with a progress bar (step, loss, lr) on stderr and the data from the cache
/// `diffuq fetch fashion-mnist` fills.
pub fn train_with_progress(
    recipe: &ImageModelRecipe,
    cache: &ModelCache,
    device: &Device,
    force: bool,
) -> Result<CachedModel> {
    use indicatif::{ProgressBar, ProgressStyle};
    let pb = ProgressBar::new(recipe.train.steps as u64);
    pb.set_style(
        ProgressStyle::with_template("train {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
            .expect("a valid progress template"),
    );
    let out = train_or_load(recipe, cache, None, device, force, |row| {
        pb.set_position(row.step as u64);
        pb.set_message(format!("loss {:.4} lr {:.2e}", row.loss, row.lr));
    });
    pb.finish_and_clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bound, Denoiser, Network};
    use crate::sampler::flow::VelocityField;

    /// A smoke recipe of either objective (the mini-model experiment's smoke profile's network).
    fn smoke(objective: Objective, label_dropout: f64) -> ImageModelRecipe {
        let unet: UNet2DConfig = serde_json::from_value(serde_json::json!({
            "sample_size": 8, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [8, 16],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
            "num_class_embeds": if label_dropout > 0.0 { 11 } else { 10 }, "dropout": 0.1
        }))
        .unwrap();
        ImageModelRecipe {
            data: DataSpec {
                dataset: "fashion-mnist".into(),
                image_size: 8,
                subset: 16,
            },
            unet,
            objective,
            schedule: ScheduleSpec {
                kind: ScheduleKind::Linear,
                beta_start: 1e-4,
                beta_end: 0.02,
                timesteps: 1000,
            },
            train: TrainSpec::new(3, 4, 1e-3),
            label_dropout,
            seed: 3,
        }
    }

    #[test]
    fn both_objectives_give_finite_losses_and_the_right_views() {
        // Expected: a fresh network's loss is O(1) (targets have unit scale) and finite; an
        // ε-model is a Denoiser and not a velocity field, a flow model the other way round.
        let dev = Device::Cpu;
        let data = Tensor::rand(-1f32, 1f32, (16, 1, 8, 8), &dev).unwrap();
        let labels: Vec<u32> = (0..16).map(|i| i % 10).collect();
        for (objective, p) in [(Objective::DdpmEps, 0.0), (Objective::FlowMatching, 0.5)] {
            let r = smoke(objective, p);
            r.validate().unwrap();
            let vm = VarMap::new();
            let net = init_network(&r, &vm, &dev).unwrap();
            let streams = SeedStreams::new(r.seed);
            let ctx = StepContext::new(&streams, 0, 4);
            let l = step_loss(
                &r,
                &net,
                &data,
                &labels,
                &r.schedule.build(),
                &streams,
                &ctx,
            )
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
            assert!(l.is_finite() && l > 0.05 && l < 20.0, "{objective:?}: {l}");
            assert_eq!(net.prediction(), r.prediction());
            let x = data.narrow(0, 0, 2).unwrap();
            let b = Bound::new(&net).with_labels(Tensor::new(&[1u32, 2], &dev).unwrap());
            match objective {
                Objective::DdpmEps => {
                    assert!(b.eps(&x, 10.0).is_ok());
                    assert!(VelocityField::velocity(&b, &x, 0.5).is_err());
                }
                Objective::FlowMatching => {
                    assert!(VelocityField::velocity(&b, &x, 0.5).is_ok());
                    assert!(b.eps(&x, 10.0).is_err());
                }
            }
        }
    }

    #[test]
    fn recipes_name_their_inconsistent_keys() {
        let mut r = smoke(Objective::DdpmEps, 0.0);
        r.label_dropout = 0.1;
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("model.unet.num_class_embeds"), "{e}");
        let mut r = smoke(Objective::DdpmEps, 0.0);
        r.unet.sample_size = 16;
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("model.unet.sample_size"));
        let mut r = smoke(Objective::DdpmEps, 0.0);
        r.data.dataset = "cifar10".into();
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("model.data.dataset"));
        // Checkpoint frequency is not part of the model's identity.
        let a = smoke(Objective::DdpmEps, 0.0);
        let mut b = a.clone();
        b.train.checkpoint_every = 7;
        assert_eq!(a.cache_identity(), b.cache_identity());
    }
}
