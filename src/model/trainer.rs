//! A model-agnostic training loop for networks whose parameters live in a [`VarMap`]: AdamW with
//! warmup and decay, gradient clipping, an EMA of the weights, checkpoints that a killed run
//! resumes from bit for bit, and a loss trace.
//!
//! **Data order.** The only randomness of a step (its minibatch rows, their diffusion times and
//! noise) comes from [`StepContext`], which addresses the ChaCha streams of purpose `train-batch`
//! by (row, step) — see [`crate::seed`]. A step's minibatch therefore depends on its step number
//! alone: this is the "data-order position" a checkpoint needs to record, and it is just the step.
//! Rows are drawn uniformly with replacement (the toy ensemble's trainer does the same), not in
//! shuffled epochs, so no permutation state has to be carried across a resume.
//!
//! **Objectives.** [`DdpmEpsLoss`] is the DDPM simple objective (Ho et al. 2020, Eq. 14, mean over
//! elements as their code and diffusers' training scripts take it); [`FlowMatchingLoss`] the
//! velocity regression under [`crate::sampler::flow`]'s convention. Any closure
//! `FnMut(&StepContext) -> Result<Tensor>` returning a scalar loss is an [`Objective`] too.
//!
//! **Checkpoint directory.** `step-NNNNNNNN.safetensors` holds the weights (`model/<name>`), the
//! EMA ([`Ema::state`]), the optimiser ([`AdamW::state`]) and the step (`trainer-step`), with the
//! [`TrainSpec`] and run seed in its header; each is written atomically
//! ([`crate::tracking::write_atomically`]) and replaces the previous one. `trace.tsv` has one row
//! per step (`step loss grad_norm lr`, the norm before clipping); on resume it is cut back to the
//! checkpoint's step, so the trace of an interrupted run equals that of an uninterrupted one.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, DeviceLocation, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::optim::{clip_grad_norm, expect_like, grad_norm, named_vars, AdamW, AdamWConfig, Ema};
use super::train::LrDecay;
use crate::error::{Error, Result, TensorContext};
use crate::schedule::NoiseSchedule;
use crate::seed::{Purpose, SeedStreams};
use crate::tracking::write_atomically;

/// The seed purpose of the minibatch streams.
pub const BATCH_PURPOSE: &str = "train-batch";
/// The loss trace's file name inside the checkpoint directory.
pub const TRACE_FILE: &str = "trace.tsv";
const TRACE_HEADER: &str = "step\tloss\tgrad_norm\tlr";
const CHECKPOINT_FORMAT: &str = "diffuq-train-checkpoint-v1";

/// Optimisation settings of one training run.
///
/// (The toy ensemble's `model::train::TrainSpec` is an older subset of this, kept for gu-fig2.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Optimiser steps.
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps before `lr_decay` takes over ([`LrDecay::factor`]).
    pub warmup_steps: usize,
    pub lr_decay: LrDecay,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (Loshchilov & Hutter 2019).
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (`None`: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// EMA decay d (Ho et al. 2020: 0.9999).
    pub ema_decay: f64,
    /// The EMA copies the weights for this many steps before averaging ([`Ema`]).
    pub ema_start: usize,
    /// Write a checkpoint every this many steps (0: only at the end); the last step always
    /// checkpoints. Not part of the training's identity: a run may resume with another value.
    pub checkpoint_every: usize,
}

impl TrainSpec {
    /// torch's AdamW defaults (β = (0.9, 0.999), ε = 1e-8, λ = 0.01), constant lr, no warmup,
    /// clipping at 1 and EMA decay 0.9999 (Ho et al. 2020's), a checkpoint every 1000 steps.
    pub fn new(steps: usize, batch_size: usize, lr: f64) -> Self {
        let adamw = AdamWConfig::default();
        Self {
            steps,
            batch_size,
            lr,
            warmup_steps: 0,
            lr_decay: LrDecay::Constant,
            beta1: adamw.beta1,
            beta2: adamw.beta2,
            eps: adamw.eps,
            weight_decay: adamw.weight_decay,
            clip_grad_norm: Some(1.0),
            ema_decay: 0.9999,
            ema_start: 0,
            checkpoint_every: 1000,
        }
    }

    /// The optimiser's hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Learning rate of optimiser step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr * self.lr_decay.factor(step, self.steps, self.warmup_steps)
    }

    /// One-line errors naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, value: String, expected: &str| {
            Err(Error::invalid(
                format!("train spec `{key}` = {value}"),
                expected.to_string(),
            ))
        };
        if self.steps == 0 || self.steps > u32::MAX as usize {
            return bad("steps", self.steps.to_string(), "expected 1 ≤ steps < 2³²");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "expected at least 1");
        }
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr.to_string(), "expected a finite lr ≥ 0");
        }
        if self.warmup_steps > self.steps {
            return bad(
                "warmup_steps",
                self.warmup_steps.to_string(),
                &format!("expected at most steps = {}", self.steps),
            );
        }
        if let Some(c) = self.clip_grad_norm {
            if c.is_nan() || c <= 0.0 {
                return bad("clip_grad_norm", c.to_string(), "expected a norm > 0");
            }
        }
        if !(0.0..=1.0).contains(&self.ema_decay) {
            return bad(
                "ema_decay",
                self.ema_decay.to_string(),
                "expected 0 ≤ d ≤ 1",
            );
        }
        self.adamw().validate()
    }

    /// The fields that define the training (all but `checkpoint_every`), for comparing a
    /// checkpoint with the run that wants to resume from it.
    fn identity(&self) -> BTreeMap<String, serde_json::Value> {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut map: BTreeMap<String, serde_json::Value> = match value {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        map.remove("checkpoint_every");
        map
    }
}

/// How the diffusion time of a training row is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeDraw {
    /// t ~ U{0, …, T − 1} (DDPM's discrete steps).
    Discrete { timesteps: usize },
    /// t ~ U[0, 1) (flow matching).
    Uniform,
}

/// The draws of one step: for each row of the minibatch a data index, a time and `dim` normals.
#[derive(Debug, Clone, PartialEq)]
pub struct StepBatch {
    pub indices: Vec<u32>,
    /// Per-row time (an integer for [`TimeDraw::Discrete`]), f32 as the networks take it.
    pub t: Vec<f32>,
    /// Row-major (batch_size × dim) standard normals.
    pub noise: Vec<f32>,
}

/// What an [`Objective`] knows about its step: the step number, the batch size, and the only
/// randomness it may use, addressed by (row, step).
pub struct StepContext {
    pub step: usize,
    pub batch_size: usize,
    purpose: Purpose,
}

impl StepContext {
    /// A context for `step` of a run seeded by `streams` (what [`train`] passes its objective).
    pub fn new(streams: &SeedStreams, step: usize, batch_size: usize) -> Self {
        Self {
            step,
            batch_size,
            purpose: streams.purpose(BATCH_PURPOSE),
        }
    }

    /// The random stream of minibatch row `row` at this step (purpose `train-batch`).
    pub fn row_rng(&self, row: usize) -> rand_chacha::ChaCha20Rng {
        self.purpose.rng_at(row as u64, self.step as u32)
    }

    /// Per row, in this order from the row's stream: a data index in 0..`n_data`, a time, and
    /// `dim` standard normals (the toy ensemble trainer's order).
    pub fn draw(&self, n_data: usize, time: TimeDraw, dim: usize) -> StepBatch {
        let b = self.batch_size;
        let mut out = StepBatch {
            indices: Vec::with_capacity(b),
            t: Vec::with_capacity(b),
            noise: Vec::with_capacity(b * dim),
        };
        for row in 0..b {
            let mut rng = self.row_rng(row);
            out.indices.push(rng.random_range(0..n_data as u32));
            out.t.push(match time {
                TimeDraw::Discrete { timesteps } => rng.random_range(0..timesteps) as f32,
                TimeDraw::Uniform => rng.random::<f32>(),
            });
            out.noise
                .extend((0..dim).map(|_| rng.sample::<f32, _>(StandardNormal)));
        }
        out
    }
}

/// The minibatch loss of a step, a scalar tensor that back-propagates to the network's `Var`s.
pub trait Objective {
    fn loss(&mut self, ctx: &StepContext) -> Result<Tensor>;
}

impl<F: FnMut(&StepContext) -> Result<Tensor>> Objective for F {
    fn loss(&mut self, ctx: &StepContext) -> Result<Tensor> {
        self(ctx)
    }
}

/// The training rows of `data` (N × …) chosen by `batch`, with the batch's noise in their shape
/// and per-row coefficients shaped (B, 1, …, 1) for broadcasting.
fn rows_and_noise(data: &Tensor, batch: &StepBatch) -> candle_core::Result<(Tensor, Tensor)> {
    let dev = data.device();
    let idx = Tensor::new(batch.indices.as_slice(), dev)?;
    let x0 = data.index_select(&idx, 0)?;
    let noise = Tensor::from_slice(&batch.noise, x0.shape(), dev)?.to_dtype(data.dtype())?;
    Ok((x0, noise))
}

fn per_row(values: Vec<f32>, like: &Tensor) -> candle_core::Result<Tensor> {
    let mut shape = vec![values.len()];
    shape.resize(like.rank(), 1);
    Tensor::from_vec(values, shape, like.device())?.to_dtype(like.dtype())
}

fn sample_dim(data: &Tensor) -> Result<(usize, usize)> {
    let dims = data.dims();
    match dims.split_first() {
        Some((&n, rest)) if n > 0 => Ok((n, rest.iter().product())),
        _ => Err(Error::invalid(
            format!("training data of shape {dims:?}"),
            "expected (N, …) with N ≥ 1",
        )),
    }
}

/// The DDPM simple objective (Ho et al. 2020, Eq. 14):
/// mean ‖ε − ε_θ(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t)‖² over the minibatch and elements, with x₀ a data
/// row, t ~ U{0..T−1} and ε ~ N(0, I) drawn by [`StepContext::draw`].
///
/// `model(x_t, t)` gets x_t (B, …) and t (B,) in training-step units, f32, and returns ε̂ (B, …).
pub struct DdpmEpsLoss<F> {
    data: Tensor,
    sqrt_ab: Vec<f32>,
    sqrt_1mab: Vec<f32>,
    model: F,
}

impl<F: FnMut(&Tensor, &Tensor) -> candle_core::Result<Tensor>> DdpmEpsLoss<F> {
    /// `data`: the training set (N, …), on the network's device.
    pub fn new(data: Tensor, schedule: &NoiseSchedule, model: F) -> Result<Self> {
        sample_dim(&data)?;
        let t_max = schedule.len();
        Ok(Self {
            data,
            sqrt_ab: (0..t_max)
                .map(|t| schedule.alpha_bar(Some(t)).sqrt() as f32)
                .collect(),
            sqrt_1mab: (0..t_max)
                .map(|t| (1.0 - schedule.alpha_bar(Some(t))).sqrt() as f32)
                .collect(),
            model,
        })
    }
}

impl<F: FnMut(&Tensor, &Tensor) -> candle_core::Result<Tensor>> Objective for DdpmEpsLoss<F> {
    fn loss(&mut self, ctx: &StepContext) -> Result<Tensor> {
        let (n, dim) = sample_dim(&self.data)?;
        let timesteps = self.sqrt_ab.len();
        let batch = ctx.draw(n, TimeDraw::Discrete { timesteps }, dim);
        (|| {
            let (x0, eps) = rows_and_noise(&self.data, &batch)?;
            let ts = batch.t.iter().map(|&t| t as usize);
            let a = per_row(ts.clone().map(|t| self.sqrt_ab[t]).collect(), &x0)?;
            let s = per_row(ts.map(|t| self.sqrt_1mab[t]).collect(), &x0)?;
            let x_t = (x0.broadcast_mul(&a)? + eps.broadcast_mul(&s)?)?;
            let t = Tensor::new(batch.t.as_slice(), x0.device())?;
            let pred = (self.model)(&x_t, &t)?;
            (pred - eps)?.sqr()?.mean_all()
        })()
        .ctx(&format!("DDPM ε-loss at training step {}", ctx.step + 1))
    }
}

/// Flow-matching velocity regression under [`crate::sampler::flow`]'s convention (t = 1 noise,
/// t = 0 data; Liu et al. 2023, Lipman et al. 2023 with σ_min = 0):
/// mean ‖(ε − x₀) − v_θ((1 − t)x₀ + tε, t)‖² with t ~ U[0, 1).
///
/// `model(x_t, t)` gets x_t (B, …) and t (B,) in [0, 1), f32, and returns v̂ (B, …).
pub struct FlowMatchingLoss<F> {
    data: Tensor,
    model: F,
}

impl<F: FnMut(&Tensor, &Tensor) -> candle_core::Result<Tensor>> FlowMatchingLoss<F> {
    /// `data`: the training set (N, …), on the network's device.
    pub fn new(data: Tensor, model: F) -> Result<Self> {
        sample_dim(&data)?;
        Ok(Self { data, model })
    }
}

impl<F: FnMut(&Tensor, &Tensor) -> candle_core::Result<Tensor>> Objective for FlowMatchingLoss<F> {
    fn loss(&mut self, ctx: &StepContext) -> Result<Tensor> {
        let (n, dim) = sample_dim(&self.data)?;
        let batch = ctx.draw(n, TimeDraw::Uniform, dim);
        (|| {
            let (x0, eps) = rows_and_noise(&self.data, &batch)?;
            let t_row = per_row(batch.t.clone(), &x0)?;
            let x_t =
                (x0.broadcast_mul(&t_row.affine(-1.0, 1.0)?)? + eps.broadcast_mul(&t_row)?)?;
            let target = (&eps - &x0)?;
            let t = Tensor::new(batch.t.as_slice(), x0.device())?;
            let pred = (self.model)(&x_t, &t)?;
            (pred - target)?.sqr()?.mean_all()
        })()
        .ctx(&format!(
            "flow-matching loss at training step {}",
            ctx.step + 1
        ))
    }
}

/// One row of the loss trace: after optimiser step `step` (1-based), the minibatch loss it
/// descended, the gradient norm before clipping and the learning rate it used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRow {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

impl TraceRow {
    /// Shortest round-trip decimal forms, so equal numbers give equal bytes.
    fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\n",
            self.step, self.loss, self.grad_norm, self.lr
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut f = line.split('\t');
        let row = TraceRow {
            step: f.next()?.parse().ok()?,
            loss: f.next()?.parse().ok()?,
            grad_norm: f.next()?.parse().ok()?,
            lr: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(row)
    }
}

/// The loss trace of a checkpoint directory (`trace.tsv`).
pub fn read_trace(dir: &Path) -> Result<Vec<TraceRow>> {
    let path = dir.join(TRACE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(&path, e)),
    };
    // Only complete lines: a process killed mid-write leaves at most a partial last line.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    Ok(complete
        .lines()
        .skip(1)
        .filter_map(TraceRow::parse)
        .collect())
}

/// The trace cut back to rows 1..=`keep` (which must all be there), rewritten atomically, then
/// opened for appending.
fn open_trace(dir: &Path, keep: usize) -> Result<File> {
    let path = dir.join(TRACE_FILE);
    let rows: Vec<TraceRow> = read_trace(dir)?
        .into_iter()
        .take_while(|r| r.step <= keep)
        .collect();
    if rows.len() != keep || rows.iter().enumerate().any(|(i, r)| r.step != i + 1) {
        return Err(Error::invalid(
            path.display().to_string(),
            format!(
                "has {} of the rows 1..={keep} that its checkpoint at step {keep} needs; delete \
                 the checkpoint directory {} to retrain from scratch",
                rows.len(),
                dir.display()
            ),
        ));
    }
    let mut text = format!("{TRACE_HEADER}\n");
    rows.iter().for_each(|r| text.push_str(&r.line()));
    crate::tracking::atomic_write(&path, text.as_bytes())?;
    OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))
}

/// The result of [`train`].
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Optimiser steps taken in all (including those before a resume).
    pub steps: usize,
    /// Mean minibatch loss over the last 10% of steps (at least one), from the trace.
    pub final_loss: f64,
    /// The checkpoint step this run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// Copies of the final weights, (name, tensor) sorted by name (the `VarMap` holds them too).
    pub weights: Vec<(String, Tensor)>,
    /// The EMA weights, (name, tensor) sorted by name.
    pub ema: Vec<(String, Tensor)>,
    /// The device training ran on ([`device_label`]).
    pub device: String,
}

/// `cpu`, `cuda:0`, `metal:0`.
pub fn device_label(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The checkpoint file of `step` in `dir`.
pub fn checkpoint_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:08}.safetensors"))
}

/// The checkpoints in `dir` as (step, path), oldest first.
pub fn checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = vec![];
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let step = name
            .strip_prefix("step-")
            .and_then(|s| s.strip_suffix(".safetensors"))
            .and_then(|s| s.parse::<usize>().ok());
        if let Some(step) = step {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Write `tensors` (with optional header metadata) to `path` atomically and durably.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomically(path, |tmp| {
        let named = tensors.iter().map(|(n, t)| (n.as_str(), t));
        safetensors::serialize_to_file(named, metadata, tmp)
            .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
        File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(path, e))
    })
}

/// Every tensor of a safetensors file and its header metadata.
pub fn load_tensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: String| Error::invalid(path.display().to_string(), e);
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

/// Set `vars` from the tensors `<prefix><name>` of `tensors` (read from `source`): every
/// parameter must be there with its shape and dtype, and no other `<prefix>` tensor may be.
pub fn set_vars(
    vars: &[(String, Var)],
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    source: &Path,
) -> Result<()> {
    let mut values = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let key = format!("{prefix}{name}");
        let t = expect_like(tensors, &key, var.as_tensor(), source)?;
        values.push(t.to_device(var.device()).ctx(&key)?);
    }
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| {
            k.strip_prefix(prefix)
                .is_some_and(|n| vars.binary_search_by(|(v, _)| v.as_str().cmp(n)).is_err())
        })
        .collect();
    extra.sort();
    if let Some(k) = extra.first() {
        return Err(Error::Checkpoint {
            path: source.to_path_buf(),
            tensor: k.to_string(),
            reason: format!(
                "is not a parameter of the network ({} unexpected tensors)",
                extra.len()
            ),
        });
    }
    for ((name, var), t) in vars.iter().zip(values) {
        var.set(&t).ctx(&format!("restoring `{name}`"))?;
    }
    Ok(())
}

/// Load a weights file written by [`save_tensors`] (plain parameter names, as
/// `model.safetensors` of [`super::cache`]) into `varmap`, checking names, shapes and dtypes.
pub fn load_weights(varmap: &VarMap, path: &Path) -> Result<()> {
    let vars = named_vars(varmap);
    let device = vars
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let (tensors, _) = load_tensors(path, &device)?;
    set_vars(&vars, &tensors, "", path)
}

/// Train the parameters of `varmap` on `objective` for `spec.steps` AdamW steps, checkpointing
/// into `dir` (created if needed), or resume from the newest checkpoint there.
///
/// `streams` seeds the minibatches (only through [`StepContext`]); the network's initial weights
/// are the caller's (ignored when resuming). `progress` sees every trace row as it is written.
///
/// A resumed run takes the same steps, on the same minibatches, from the same state, as the
/// uninterrupted one, so on the same device and thread count its weights, EMA and trace are
/// identical to the bit (`tests/train_resume.rs` kills a training process to check this).
pub fn train(
    varmap: &VarMap,
    spec: &TrainSpec,
    streams: &SeedStreams,
    dir: &Path,
    objective: &mut dyn Objective,
    mut progress: impl FnMut(&TraceRow),
) -> Result<TrainOutcome> {
    spec.validate()?;
    let vars = named_vars(varmap);
    let Some((_, first)) = vars.first() else {
        return Err(Error::invalid(
            "training",
            "the VarMap has no parameters to train",
        ));
    };
    let device = first.device().clone();
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_stale_temporaries(dir)?;

    let mut opt = AdamW::new(vars.clone(), spec.adamw())?;
    let mut ema = Ema::new(vars.clone(), spec.ema_decay, spec.ema_start as u64)?;
    let resumed_from = match checkpoints(dir)?.pop() {
        Some((step, path)) => {
            restore(
                &path, step, spec, streams, &vars, &mut opt, &mut ema, &device,
            )?;
            Some(step)
        }
        None => None,
    };
    let start = resumed_from.unwrap_or(0);
    let mut trace = open_trace(dir, start)?;
    let trace_path = dir.join(TRACE_FILE);

    for step in start..spec.steps {
        let ctx = StepContext::new(streams, step, spec.batch_size);
        let loss = objective.loss(&ctx)?;
        let at = |what: &str| format!("training step {}: {what}", step + 1);
        let loss_value = (|| loss.to_dtype(DType::F64)?.to_scalar::<f64>())()
            .ctx(&at("the loss must be a scalar"))?;
        if !loss_value.is_finite() {
            return Err(Error::invalid(
                at("loss"),
                format!("is {loss_value}; lower the learning rate or check the data"),
            ));
        }
        let mut grads = loss.backward().ctx(&at("backward pass"))?;
        let norm = match spec.clip_grad_norm {
            Some(max) => clip_grad_norm(&vars, &mut grads, max)?,
            None => grad_norm(&vars, &grads)?,
        };
        let lr = spec.lr_at(step);
        opt.step(&grads, lr)?;
        ema.update()?;
        let row = TraceRow {
            step: step + 1,
            loss: loss_value,
            grad_norm: norm,
            lr,
        };
        // One write per row, so a kill leaves at most a partial last line (dropped on resume).
        trace
            .write_all(row.line().as_bytes())
            .map_err(|e| Error::io(&trace_path, e))?;
        progress(&row);
        let done = step + 1;
        if done == spec.steps || (spec.checkpoint_every > 0 && done % spec.checkpoint_every == 0) {
            trace.sync_data().map_err(|e| Error::io(&trace_path, e))?;
            write_checkpoint(dir, done, spec, streams, &vars, &opt, &ema)?;
        }
    }

    let rows = read_trace(dir)?;
    let tail = (spec.steps / 10).max(1).min(rows.len().max(1));
    let final_loss = rows.iter().rev().take(tail).map(|r| r.loss).sum::<f64>() / tail as f64;
    let weights = vars
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy().ctx("copying weights")?)))
        .collect::<Result<_>>()?;
    Ok(TrainOutcome {
        steps: spec.steps,
        final_loss,
        resumed_from,
        weights,
        ema: ema.weights(),
        device: device_label(&device),
    })
}

fn checkpoint_metadata(
    step: usize,
    spec: &TrainSpec,
    streams: &SeedStreams,
) -> HashMap<String, String> {
    let identity = serde_json::to_string(&spec.identity()).unwrap_or_default();
    HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("step".to_string(), step.to_string()),
        ("seed".to_string(), streams.run_seed().to_string()),
        ("train_spec".to_string(), identity),
    ])
}

fn write_checkpoint(
    dir: &Path,
    step: usize,
    spec: &TrainSpec,
    streams: &SeedStreams,
    vars: &[(String, Var)],
    opt: &AdamW,
    ema: &Ema,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (format!("model/{n}"), v.as_tensor().clone()))
        .collect();
    tensors.extend(ema.state()?);
    tensors.extend(opt.state()?);
    tensors.push((
        "trainer-step".into(),
        Tensor::new(step as i64, &Device::Cpu).ctx("checkpoint step")?,
    ));
    let path = checkpoint_path(dir, step);
    save_tensors(
        &path,
        &tensors,
        Some(checkpoint_metadata(step, spec, streams)),
    )?;
    for (old, old_path) in checkpoints(dir)? {
        if old < step {
            fs::remove_file(&old_path).map_err(|e| Error::io(&old_path, e))?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn restore(
    path: &Path,
    step: usize,
    spec: &TrainSpec,
    streams: &SeedStreams,
    vars: &[(String, Var)],
    opt: &mut AdamW,
    ema: &mut Ema,
    device: &Device,
) -> Result<()> {
    let (tensors, meta) = load_tensors(path, device)?;
    let bad = |reason: String| Error::invalid(path.display().to_string(), reason);
    if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(bad(format!(
            "not a diffuq training checkpoint (header `format` is not {CHECKPOINT_FORMAT})"
        )));
    }
    let seed = streams.run_seed().to_string();
    if meta.get("seed") != Some(&seed) {
        return Err(bad(format!(
            "was written with seed {}, this run has seed {seed}; use the original seed or \
             delete the checkpoint directory",
            meta.get("seed").map_or("?", String::as_str)
        )));
    }
    let theirs: BTreeMap<String, serde_json::Value> = meta
        .get("train_spec")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let ours = spec.identity();
    if let Some(key) = ours
        .keys()
        .chain(theirs.keys())
        .find(|k| ours.get(*k) != theirs.get(*k))
    {
        let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".into(), |v| v.to_string());
        return Err(bad(format!(
            "was written with train spec `{key}` = {}, this run has {}; use the original spec \
             or delete the checkpoint directory",
            show(theirs.get(key)),
            show(ours.get(key))
        )));
    }
    let stored = super::optim::expect_tensor(&tensors, "trainer-step", path, "an i64 scalar")?;
    let stored = stored.to_scalar::<i64>().ok();
    if stored != Some(step as i64) {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            tensor: "trainer-step".into(),
            reason: format!("is {stored:?}, expected {step} (the file name's step)"),
        });
    }
    set_vars(vars, &tensors, "model/", path)?;
    ema.load_state(&tensors, path)?;
    opt.load_state(&tensors, path)
}

/// Temporary files of writes a killed process did not finish ([`crate::tracking::temp_path`]).
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleKind;
    use candle_nn::Init;

    /// y = x·w + b with w (2 × 2), b (2), zero-initialised except w = I.
    fn linear() -> VarMap {
        let vm = VarMap::new();
        let dev = Device::Cpu;
        vm.get((2, 2), "w", Init::Const(0.0), DType::F32, &dev)
            .unwrap();
        vm.get(2, "b", Init::Const(0.0), DType::F32, &dev).unwrap();
        let eye = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        vm.data().lock().unwrap()["w"].set(&eye).unwrap();
        vm
    }

    fn net(vm: &VarMap) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> {
        let data = vm.data().lock().unwrap();
        let (w, b) = (data["w"].as_tensor().clone(), data["b"].as_tensor().clone());
        move |x, _t| x.matmul(&w)?.broadcast_add(&b)
    }

    fn spec(steps: usize) -> TrainSpec {
        TrainSpec {
            ema_decay: 0.9,
            checkpoint_every: 4,
            ..TrainSpec::new(steps, 8, 1e-2)
        }
    }

    #[test]
    fn step_draws_depend_on_row_and_step_only() {
        // Expected: row r of step s is the same for every batch size (its stream is (r, s)), and
        // steps differ; indices and discrete times stay in range.
        let s = SeedStreams::new(3);
        let time = TimeDraw::Discrete { timesteps: 10 };
        let small = StepContext::new(&s, 5, 2).draw(7, time, 3);
        let large = StepContext::new(&s, 5, 6).draw(7, time, 3);
        assert_eq!(small.indices, large.indices[..2]);
        assert_eq!(small.t, large.t[..2]);
        assert_eq!(small.noise, large.noise[..6]);
        assert_ne!(StepContext::new(&s, 6, 2).draw(7, time, 3), small);
        assert!(large.indices.iter().all(|&i| i < 7));
        assert!(large
            .t
            .iter()
            .all(|&t| (0.0..10.0).contains(&t) && t.fract() == 0.0));
        let u = StepContext::new(&s, 5, 64).draw(7, TimeDraw::Uniform, 1);
        assert!(u.t.iter().all(|&t| (0.0..1.0).contains(&t)));
    }

    #[test]
    fn ddpm_loss_of_a_zero_predictor_is_the_noise_energy() {
        // Expected: with ε̂ = 0 the loss is mean(ε²) over the drawn noise (Ho et al. 2020, Eq. 14).
        let data = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let sched = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 50);
        let mut obj =
            DdpmEpsLoss::new(data, &sched, |x: &Tensor, _t: &Tensor| x.zeros_like()).unwrap();
        let ctx = StepContext::new(&SeedStreams::new(0), 2, 4);
        let loss: f32 = obj.loss(&ctx).unwrap().to_scalar().unwrap();
        let noise = ctx.draw(2, TimeDraw::Discrete { timesteps: 50 }, 2).noise;
        let expected = noise.iter().map(|e| e * e).sum::<f32>() / noise.len() as f32;
        approx::assert_relative_eq!(loss, expected, max_relative = 1e-6);
    }

    #[test]
    fn flow_matching_loss_is_zero_for_the_exact_velocity_of_one_point() {
        // Expected: for a single data point x₀, x_t = (1 − t)x₀ + tε gives the target
        // ε − x₀ = (x_t − x₀)/t exactly; a model computing that has loss 0 up to f32 round-off.
        let x0 = [0.5f32, -1.5];
        let data = Tensor::new(&[x0], &Device::Cpu).unwrap();
        let x0t = data.clone();
        let mut obj = FlowMatchingLoss::new(data, move |x: &Tensor, t: &Tensor| {
            let t = t.unsqueeze(1)?;
            x.broadcast_sub(&x0t)?.broadcast_div(&t)
        })
        .unwrap();
        let loss: f32 = obj
            .loss(&StepContext::new(&SeedStreams::new(1), 0, 16))
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(loss < 1e-8, "{loss}");
    }

    #[test]
    fn training_descends_checkpoints_and_a_finished_run_is_not_retrained() {
        // Expected: the identity map is far from the ε-optimum, so the DDPM loss falls; the
        // directory keeps one checkpoint (the last step's) and a trace of `steps` rows; calling
        // again resumes at the end and takes no step.
        let dir = tempfile::tempdir().unwrap();
        let vm = linear();
        let data = Tensor::new(&[[1f32, -1.0], [2.0, 0.5]], &Device::Cpu).unwrap();
        let sched = NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 20);
        let mut obj = DdpmEpsLoss::new(data, &sched, net(&vm)).unwrap();
        let s = SeedStreams::new(0);
        let out = train(&vm, &spec(40), &s, dir.path(), &mut obj, |_| {}).unwrap();
        let rows = read_trace(dir.path()).unwrap();
        assert_eq!(rows.len(), 40);
        assert!(
            out.final_loss < rows[0].loss,
            "{} vs {}",
            out.final_loss,
            rows[0].loss
        );
        let ckpts = checkpoints(dir.path()).unwrap();
        assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), [40]);
        let mut calls = 0;
        let again = train(&vm, &spec(40), &s, dir.path(), &mut obj, |_| calls += 1).unwrap();
        assert_eq!((calls, again.resumed_from), (0, Some(40)));
        assert_eq!(again.final_loss, out.final_loss);
    }

    #[test]
    fn resuming_with_another_spec_or_seed_is_a_one_line_error() {
        // Expected: the checkpoint header records the spec and seed; a mismatch names the field.
        let dir = tempfile::tempdir().unwrap();
        let vm = linear();
        let data = Tensor::new(&[[1f32, -1.0]], &Device::Cpu).unwrap();
        let mut obj = FlowMatchingLoss::new(data, net(&vm)).unwrap();
        let s = SeedStreams::new(0);
        train(&vm, &spec(4), &s, dir.path(), &mut obj, |_| {}).unwrap();
        let other = TrainSpec {
            lr: 5e-3,
            ..spec(4)
        };
        let e = train(&vm, &other, &s, dir.path(), &mut obj, |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("step-00000004.safetensors")
                && e.contains("`lr` = 0.01")
                && !e.contains('\n'),
            "{e}"
        );
        let e = train(
            &vm,
            &spec(4),
            &SeedStreams::new(9),
            dir.path(),
            &mut obj,
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("seed 0, this run has seed 9"), "{e}");
        // checkpoint_every is not part of the training's identity.
        let every = TrainSpec {
            checkpoint_every: 1,
            ..spec(4)
        };
        train(&vm, &every, &s, dir.path(), &mut obj, |_| {}).unwrap();
    }

    #[test]
    fn weights_round_trip_and_a_foreign_file_names_the_tensor() {
        // Expected: save_tensors → load_weights restores the values; a file lacking a parameter
        // is a one-line error naming it.
        let dir = tempfile::tempdir().unwrap();
        let vm = linear();
        let path = dir.path().join("w.safetensors");
        let named: Vec<(String, Tensor)> = named_vars(&vm)
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().affine(2.0, 1.0).unwrap()))
            .collect();
        save_tensors(&path, &named, None).unwrap();
        load_weights(&vm, &path).unwrap();
        let w: Vec<Vec<f32>> = vm.data().lock().unwrap()["w"]
            .as_tensor()
            .to_vec2()
            .unwrap();
        assert_eq!(w, [[3.0, 1.0], [1.0, 3.0]]);
        save_tensors(&path, &named[..1], None).unwrap();
        let e = load_weights(&vm, &path).unwrap_err().to_string();
        assert!(
            e.ends_with("tensor `w` missing (expected shape [2, 2] F32)"),
            "{e}"
        );
    }
}
