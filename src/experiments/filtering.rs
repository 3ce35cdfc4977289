//! The **filtering** experiment kind: the headline protocol of both papers, shared by every
//! artifact whose experiment file says `kind = "filtering"` (au-table1, gu-fig3, gu-fig4,
//! gu-fig16, gu-table1).
//!
//! Per seed (an independent x_T draw): N samples from fixed x_T and labels (labels cycle through
//! the classes) → every configured score ([`crate::uq::scores`]) → keep the K lowest (or, with
//! `filter.keep_highest`, the K highest: AU's Sec. 4.1 text says the kept set has "the highest
//! uncertainty", its released code keeps the lowest) → FID, precision, recall, density and coverage
//! of the kept set against the reference set, and the kept set's class composition — at every
//! fraction of `filter.keep` (the x-axis of GU Figs. 3/7; AU Table 1 keeps 50,000 of 60,000 = 5/6).
//!
//! With `filter.class_balanced`, each class keeps the same fraction of its own samples (ranked
//! by the score within the class), so a reader can tell a filter that removes bad samples from
//! one that reshapes the class balance (issue 11 §5: at small scale AU rejects some classes far
//! more than others).
//!
//! Scores that leave the sampling trajectory alone (random, AU, MC-Dropout, GU's MAP sample,
//! realism, rarity) produce the same images from one x_T up to float rounding; the driver embeds
//! the plain sampler's images once and reuses those features for every score whose samples lie
//! within [`SAME_SAMPLES_TOL`] of them (the deviation is recorded per score). A score with its own
//! trajectory (BayesDiff draws ε at its uncertainty steps) has its own samples embedded.
//!
//! Post-hoc scores (realism, rarity) are evaluated on the plain samples without sampling again.
//! A rank combination (GU Table 1) ranks its two parts over the whole seed's set.
//!
//! Claims (`[[claims]]`) state what the paper says in numbers this driver measures — "score a's
//! kept set has a lower FID than score b's at keep fraction f", "|Spearman(a, b)| is below
//! |Spearman(c, d)|" — and the verdict is reproduced only when each holds **beyond the seed noise**
//! (the mean paired difference over seeds exceeds twice its standard error); a difference within
//! the noise is *not reproduced*, and a run in raw-pixel features (smoke) is *not checked*.

use crate::experiments::inputs::{self, FileKeys, InputFile, Tables};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::kit::{self, PartRunner};
use super::mini_model::to_u8;
use super::{Experiment, Outcome, RunOptions, Verdict};
use crate::config::{check, Resolved, Validate, Violation};
use crate::data::fashion_mnist::{FashionMnist, Split, CLASS_NAMES};
use crate::error::{Error, Result, TensorContext};
use crate::features::{FeatureExtractor, FeaturesConfig, Identity};
use crate::metrics::fid::{frechet_distance, GaussianStats};
use crate::metrics::inputs::{Embedder, MetricInput};
use crate::metrics::prdc::{prdc_with_real_radii, PrdcDistance, PrdcOptions};
use crate::metrics::rank::spearman;
use crate::metrics::realism::{knn_sq_radii, RealManifold, RealismVariant, Rows};
use crate::metrics::stats::mean_std;
use crate::model::recipe::{self, ImageModelRecipe};
use crate::model::Bound;
use crate::report::compare::{Comparison, Reproduced};
use crate::report::table::{pm, Table};
use crate::sampler::spec::SamplerSpec;
use crate::sampler::NoObserver;
use crate::seed::SeedStreams;
use crate::tracking::{Manifest, RunDir};
use crate::uq::au::{AuCompat, AuSpec, StepWindow};
use crate::uq::bayesdiff::{BayesDiffSpec, VarianceRule};
use crate::uq::gu::{GuCompat, GuSpec};
use crate::uq::guidance::{BatchReduction, GuidanceSpec, Sign, Threshold};
use crate::uq::laplace::{DiagPosterior, FisherAccumulator, LaplaceSpec};
use crate::uq::scores::{
    AuGuidedScore, AuScore, BayesDiffScore, GuScore, McDropoutScore, RandomScore, RankCombination,
    RarityScore, RealismScore, SampleScore, ScoreBatch,
};

/// Largest |Δ| (pixels in [−1, 1]) between a score's samples and the plain sampler's for which
/// the plain samples' features stand for the score's (GU's MAP sample is computed through the
/// last layer as a matrix product: ≈ 1e-6 apart).
pub const SAME_SAMPLES_TOL: f64 = 1e-3;

/// Suffix of the rows that keep the other end of a score (`filter.also_highest`).
pub const OTHER_END: &str = "@other-end";

/// The kind's name in experiment files.
pub const KIND: &str = "filtering";

/// The experiment files holding recipes diffuq trains (`model.from`): the diffusion mini model
/// and its flow-matching counterpart (GU App. C.7).
pub const MINI_MODELS: &[&str] = &["mini-model", "mini-flow"];

/// Scores defined for a flow-matching model (GU App. C.7): GU's Laplace on the velocity network
/// and the post-hoc ones; AU, MC-Dropout and BayesDiff are defined through ε and ᾱ_t.
fn flow_capable(base: &str) -> bool {
    matches!(
        base,
        "random" | "plain" | "gu-pixel" | "gu-semantic" | "realism" | "rarity"
    )
}

/// Frames each seed writes (stacked into the run's root when every seed is done).
const FRAMES: &[&str] = &["scores", "metrics", "score_info"];

/// The filtering driver (module doc); one Rust type for every artifact of this kind.
pub struct Filtering;

/// An experiment file of kind `filtering`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// Always `filtering`.
    pub kind: String,
    /// The paper element, for tables and figure titles.
    pub title: String,
    pub seeds: Vec<u64>,
    pub model: ModelRef,
    pub sampler: SamplerSpec,
    /// Generated samples N per seed.
    pub samples: usize,
    pub batch_size: usize,
    /// How class labels are drawn: `cycle` (0, 1, …, 9, 0, …: every class equally often, as
    /// diffuq's mini-model evaluation) or `random` (uniform per sample from the `labels` stream, as
    /// GU and BayesDiff draw "a class for each of the 12K"). Left out of the resolved
    /// configuration when `cycle`, so runs from before the key existed keep their hash.
    #[serde(default = "cycle", skip_serializing_if = "is_cycle")]
    pub labels: String,
    /// Score names (see [`Config::build_scores`]): random, au, au-release, mc-dropout, bayesdiff,
    /// bayesdiff-release, gu-pixel, gu-semantic, realism, rarity, and `a+b` rank combinations.
    pub scores: Vec<String>,
    pub au: AuConfig,
    pub mc_dropout: McDropoutConfig,
    pub bayesdiff: BayesDiffConfig,
    pub gu: GuConfig,
    pub laplace: LaplaceConfig,
    pub realism: RealismConfig,
    /// `[guidance]` (AU Alg. 2): needed by the `au-guided` score only; left out of the resolved
    /// configuration when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<GuidanceConfig>,
    pub filter: FilterConfig,
    pub eval: EvalConfig,
    pub report: ReportConfig,
    #[serde(default)]
    pub claims: Vec<Claim>,
    pub features: FeaturesConfig,
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

/// `[model]`: which trained model the samples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// An artifact whose `[model]` table is the recipe, resolved at this run's scale (`mini-model`):
    /// the model cache trains it once or finds it committed.
    pub from: String,
    /// Sample with the EMA weights.
    pub use_ema: bool,
    /// The network's precision: `f32`, or `bf16` / `f16` for a paper checkpoint (weights and
    /// activations in half precision, inputs and outputs f32: the releases sample under
    /// autocast/fp16; metrics and uncertainty stay f32/f64). Left out of the resolved
    /// configuration when `f32`, so existing hashes are unchanged.
    #[serde(default = "f32_name", skip_serializing_if = "is_f32")]
    pub precision: String,
}

fn f32_name() -> String {
    "f32".into()
}

fn is_f32(s: &str) -> bool {
    s == "f32"
}

impl ModelRef {
    /// The candle dtype of `precision`; an error naming `model.precision` otherwise (half
    /// precision only for checkpoints: the mini models are trained and sampled in f32).
    pub fn dtype(&self) -> Result<DType> {
        match (self.precision.as_str(), self.checkpoint().is_some()) {
            ("f32", _) => Ok(DType::F32),
            ("bf16", true) => Ok(DType::BF16),
            ("f16", true) => Ok(DType::F16),
            (p, _) => Err(Error::invalid(
                "model.precision",
                format!(
                    "{p:?}: expected \"f32\", or \"bf16\"/\"f16\" with a paper checkpoint (model.from = \"checkpoint:…\")"
                ),
            )),
        }
    }

    /// The paper checkpoint `checkpoint:<name>` names, if any.
    pub fn checkpoint(&self) -> Option<&str> {
        self.from.strip_prefix("checkpoint:")
    }
}

/// `[au]` (AU Alg. 1 summed over a window of sampler steps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuConfig {
    pub m: usize,
    /// Eq. 8's divisor: "none" (the paper) or d (÷ (M − d)).
    pub ddof: crate::uq::au::Ddof,
    pub window_start: usize,
    pub window_len: usize,
}

/// `[mc_dropout]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McDropoutConfig {
    pub m: usize,
    pub ddof: usize,
    pub window_start: usize,
    pub window_len: usize,
}

/// `[bayesdiff]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BayesDiffConfig {
    pub mc: usize,
    pub every: usize,
}

/// `[gu]` (GU Alg. 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuConfig {
    pub m: usize,
    pub include_map: bool,
    /// γ² of the pixel likelihood (Eq. 6).
    pub gamma2_pixel: f64,
    /// γ of the semantic likelihood (Eq. 7; GU: 1e-3).
    pub gamma_semantic: f64,
    pub compat: GuCompat,
    /// Sampler of the M extra samples (GU Fig. 6 shortens it).
    pub sampler: SamplerSpec,
    /// Re-run the MAP member with a shorter `gu.sampler` (`false`: the paper reuses the MAP
    /// sample, M·T′ extra NFE). Left out of the resolved configuration when `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rerun_map: bool,
}

/// `[laplace]`: the last-layer diagonal empirical-Fisher Laplace GU and BayesDiff share, fitted on
/// noised training images (t uniform over the schedule, ε from the `laplace-fit` stream).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaplaceConfig {
    pub fit_images: usize,
    pub batch_size: usize,
    pub sigma: f64,
    pub prior_precision: f64,
    pub ef_scale: f64,
}

/// `[guidance]`: AU's uncertainty-guided sampling (Alg. 2, Eq. 10; [`crate::uq::guidance`]), with
/// AU's M and divisor from `[au]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceConfig {
    /// p: τ_t is the p-quantile of U_t (Sec. 4.1: the 95th percentile).
    pub percentile: f64,
    /// `population` (Sec. 4.1: over all samples at step t) or `per-image` (the release).
    pub threshold: Threshold,
    /// λ of Eq. 10 (Sec. 4.1: 1.0).
    pub strength: f64,
    /// `ascent` (Sec. 3.6) or `descent`.
    pub sign: Sign,
    /// `per-image` U or the SD pipeline's `batch-mean`.
    pub batch: BatchReduction,
    /// Guided sampler steps (Alg. 2 loops over every step).
    pub window_start: usize,
    pub window_len: usize,
}

/// `[realism]`: the reference manifold realism and rarity are measured against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealismConfig {
    pub k: usize,
    pub variant: RealismVariant,
    /// Training images whose semantic features form the manifold.
    pub reference_images: usize,
}

/// `[filter]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Fractions of N kept (the curves' x-axis).
    pub keep: Vec<f64>,
    /// The fraction the table is printed at (must be one of `keep`).
    pub table_keep: f64,
    pub keep_highest: bool,
    pub class_balanced: bool,
    /// Also measure the sets that keep the other end of every score (rows `<score>@other-end`):
    /// one run answers which reading of "keep" reproduces a table (AU's text keeps the highest,
    /// its code the lowest). Left out of the resolved configuration when `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub also_highest: bool,
}

/// What samples are embedded with for the kept-set metrics, and for GU's semantic likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Space {
    /// The FID Inception-v3 (pool3), as pytorch-fid.
    Inception,
    /// torchvision's MobileNetV2 (ImageNet), 1280-d pooled: a semantic space that is not the
    /// FID's own.
    Mobilenet,
    /// Raw pixels: smoke plumbing only.
    Pixels,
    /// CLIP ViT-B/32 image embeddings (GU's semantic φ, `clip.load("ViT-B/32")`; weights from
    /// `weights.clip`, [`crate::features::clip`]).
    Clip,
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Feature space of FID and precision/recall (`inception`; `pixels` for smoke).
    pub metric_features: Space,
    /// φ of GU's semantic likelihood and the space of realism/rarity (`mobilenet`; `pixels`).
    pub semantic_features: Space,
    /// Fashion-MNIST test images the kept sets are compared with (0 = all 10,000).
    pub reference_subset: usize,
    pub inception_batch: usize,
    pub semantic_batch: usize,
    pub prdc_k: usize,
    /// `euclidean` (prdc 0.2, `<`) or `squared` (Kynkäänniemi's release, `≤`).
    pub prdc_distance: String,
}

/// `[report]`: which figures the artifact draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Curves of FID/precision/recall over the kept fraction (GU Figs. 3/7).
    pub curves: bool,
    /// The n most and least uncertain samples of the first seed per score (GU Fig. 4); 0 = none.
    pub grid: usize,
    /// Class-averaged score per class (GU Fig. 16).
    pub class_bars: bool,
    /// Spearman correlations between pairs of scores (GU Fig. 15), `"a,b"`.
    pub spearman: Vec<String>,
    /// FID of the kept set (at `filter.table_keep`) against NFE per sample, one point per score
    /// (GU Fig. 6). Left out of the resolved configuration when `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nfe_curve: bool,
}

/// One checkable statement of the paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The paper's words.
    pub text: String,
    /// `lower` / `higher`: `metric` of score `a`'s kept set at `keep` is below / above score
    /// `b`'s. `weaker-correlation`: |Spearman(a)| < |Spearman(b)|, `a`, `b` pairs `"x,y"`.
    /// `negative-correlation`: Spearman(a) < 0.
    pub test: String,
    #[serde(default)]
    pub metric: String,
    pub a: String,
    #[serde(default)]
    pub b: String,
    #[serde(default)]
    pub keep: f64,
}

const METRICS: &[&str] = &[
    "fid",
    "precision",
    "recall",
    "density",
    "coverage",
    "class_tv",
];

fn cycle() -> String {
    "cycle".into()
}

#[allow(clippy::ptr_arg)] // serde passes the field by reference
fn is_cycle(s: &String) -> bool {
    s == "cycle"
}

fn is_known_score(name: &str) -> bool {
    matches!(
        name,
        "random"
            | "plain"
            | "au"
            | "au-release"
            | "au-guided"
            | "mc-dropout"
            | "bayesdiff"
            | "bayesdiff-release"
            | "gu-pixel"
            | "gu-semantic"
            | "realism"
            | "rarity"
    )
}

/// Keys a score variant may set: the score settings (a variant is the same sampler and sample
/// set scored another way).
const VARIANT_KEYS: &[&str] = &[
    "gu.",
    "laplace.",
    "au.",
    "mc_dropout.",
    "bayesdiff.",
    "realism.",
    "guidance.",
];

/// `base[k=v,k=v]` → (base, [(k, v)]); `None` for a plain score name.
fn split_variant(name: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let (base, rest) = name.split_once('[')?;
    let inner = rest.strip_suffix(']')?;
    Some((
        base,
        inner
            .split(',')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect(),
    ))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

impl Validate for Config {
    fn validate(&self) -> Vec<Violation> {
        let mut v = vec![];
        check(
            &mut v,
            self.kind == KIND,
            "kind",
            "must be \"filtering\" for this driver",
        );
        crate::config::check_seeds(&mut v, &self.seeds);
        check(
            &mut v,
            MINI_MODELS.contains(&self.model.from.as_str())
                || self
                    .model
                    .checkpoint()
                    .is_some_and(|n| crate::model::catalog::find(n).is_ok()),
            "model.from",
            &format!(
                "must be \"mini-model\" or \"mini-flow\" (recipes diffuq trains) or \"checkpoint:<name>\", a paper checkpoint ({})",
                crate::model::catalog::names().join(", ")
            ),
        );
        check(
            &mut v,
            self.model.dtype().is_ok(),
            "model.precision",
            "must be \"f32\", or \"bf16\"/\"f16\" with a paper checkpoint",
        );
        check(&mut v, self.samples >= 4, "samples", "must be ≥ 4");
        check(&mut v, self.batch_size >= 1, "batch_size", "must be ≥ 1");
        check(
            &mut v,
            matches!(self.labels.as_str(), "cycle" | "random"),
            "labels",
            "must be \"cycle\" or \"random\"",
        );
        check(
            &mut v,
            !self.scores.is_empty(),
            "scores",
            "must name at least one score",
        );
        for s in &self.scores {
            if split_variant(s).is_some() {
                if let Err(e) = self.variant(s) {
                    v.push(match e {
                        Error::Invalid { what, reason } => Violation { key: what, reason },
                        e => Violation {
                            key: "scores".into(),
                            reason: e.to_string(),
                        },
                    });
                }
                continue;
            }
            let parts: Vec<&str> = s.split('+').collect();
            let ok = match parts.as_slice() {
                [one] => is_known_score(one),
                [a, b] => is_known_score(a) && matches!(*b, "realism" | "rarity"),
                _ => false,
            };
            check(
                &mut v,
                ok,
                "scores",
                &format!(
                    "unknown score `{s}` (expected random, au, au-release, mc-dropout, bayesdiff, bayesdiff-release, gu-pixel, gu-semantic, realism, rarity, or `a+realism` / `a+rarity`)"
                ),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.scores {
            check(
                &mut v,
                seen.insert(s),
                "scores",
                &format!("`{s}` is listed twice"),
            );
        }
        v.extend(self.sampler.violations(1000));
        v.extend(self.gu.sampler.violations(1000).into_iter().map(|mut x| {
            x.key = format!("gu.{}", x.key);
            x
        }));
        let f = &self.filter;
        check(
            &mut v,
            !f.keep.is_empty() && f.keep.iter().all(|&k| k > 0.0 && k <= 1.0),
            "filter.keep",
            "must list fractions in (0, 1]",
        );
        check(
            &mut v,
            f.keep.iter().any(|&k| close(k, f.table_keep)),
            "filter.table_keep",
            "must be one of filter.keep",
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
            self.mc_dropout.ddof < self.mc_dropout.m,
            "mc_dropout.ddof",
            "must be < mc_dropout.m",
        );
        check(&mut v, self.gu.m >= 1, "gu.m", "must be ≥ 1");
        check(
            &mut v,
            self.gu.gamma2_pixel > 0.0 && self.gu.gamma_semantic > 0.0,
            "gu.gamma2_pixel",
            "γ must be > 0 (both likelihoods)",
        );
        check(
            &mut v,
            self.laplace.fit_images >= 1,
            "laplace.fit_images",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.laplace.batch_size >= 1,
            "laplace.batch_size",
            "must be ≥ 1",
        );
        check(&mut v, self.realism.k >= 1, "realism.k", "must be ≥ 1");
        check(
            &mut v,
            self.realism.reference_images > self.realism.k,
            "realism.reference_images",
            "must exceed realism.k",
        );
        check(
            &mut v,
            !matches!(self.eval.metric_features, Space::Mobilenet | Space::Clip),
            "eval.metric_features",
            "must be \"inception\" (the FID's space) or \"pixels\" (smoke)",
        );
        check(
            &mut v,
            self.eval.semantic_features != Space::Inception,
            "eval.semantic_features",
            "must be \"clip\", \"mobilenet\" or \"pixels\": filtering in the FID's own feature space would tune the filter to the metric",
        );
        check(
            &mut v,
            matches!(self.eval.prdc_distance.as_str(), "euclidean" | "squared"),
            "eval.prdc_distance",
            "must be \"euclidean\" or \"squared\"",
        );
        check(&mut v, self.eval.prdc_k >= 1, "eval.prdc_k", "must be ≥ 1");
        check(
            &mut v,
            self.eval.inception_batch >= 1,
            "eval.inception_batch",
            "must be ≥ 1",
        );
        check(
            &mut v,
            self.eval.semantic_batch >= 1,
            "eval.semantic_batch",
            "must be ≥ 1",
        );
        if self.scores.iter().any(|s| s == "au-guided") {
            match self.guidance_spec() {
                None => v.push(Violation {
                    key: "guidance".into(),
                    reason: "the `au-guided` score needs a [guidance] table (AU Alg. 2)".into(),
                }),
                Some(g) => {
                    if let Err(e) = g.validate(self.sampler.observed_steps()) {
                        v.push(match e {
                            Error::Invalid { what, reason } => Violation { key: what, reason },
                            e => Violation {
                                key: "guidance".into(),
                                reason: e.to_string(),
                            },
                        });
                    }
                }
            }
        }
        for (i, pair) in self.report.spearman.iter().enumerate() {
            let ok = pair.split_once(',').is_some_and(|(a, b)| {
                self.scores.iter().any(|s| s == a) && self.scores.iter().any(|s| s == b)
            });
            check(
                &mut v,
                ok,
                &format!("report.spearman[{i}]"),
                "must be \"a,b\" with a and b in `scores`",
            );
        }
        for (i, c) in self.claims.iter().enumerate() {
            let key = format!("claims[{i}]");
            let has = |s: &str| {
                let base = match s.strip_suffix(OTHER_END) {
                    Some(b) if self.filter.also_highest => b,
                    _ => s,
                };
                self.scores.iter().any(|x| x == base)
            };
            let pair_ok = |p: &str| p.split_once(',').is_some_and(|(a, b)| has(a) && has(b));
            let ok = match c.test.as_str() {
                "lower" | "higher" => {
                    has(&c.a)
                        && has(&c.b)
                        && METRICS.contains(&c.metric.as_str())
                        && f.keep.iter().any(|&k| close(k, c.keep))
                }
                "weaker-correlation" => pair_ok(&c.a) && pair_ok(&c.b),
                "negative-correlation" => pair_ok(&c.a),
                _ => false,
            };
            check(
                &mut v,
                ok,
                &key,
                "test must be lower/higher (a, b in scores, metric one of fid, precision, recall, density, coverage, class_tv, keep one of filter.keep) or weaker-correlation/negative-correlation (pairs \"x,y\" of scores)",
            );
        }
        v
    }
}

impl Config {
    /// The class labels of samples `indices` (`labels`).
    fn labels_of(&self, streams: &SeedStreams, indices: &[u64], classes: usize) -> Vec<u32> {
        if self.labels == "random" {
            kit::stream_labels(streams, indices, classes)
        } else {
            kit::cycled_labels(indices, classes)
        }
    }

    fn au_window(&self) -> StepWindow {
        StepWindow {
            start: self.au.window_start,
            len: self.au.window_len,
        }
    }

    fn needs_posterior(&self) -> bool {
        self.scores
            .iter()
            .any(|s| s.contains("gu-") || s.starts_with("bayesdiff"))
    }

    fn needs_semantic(&self) -> bool {
        self.scores
            .iter()
            .any(|s| s.contains("gu-semantic") || s.contains("realism") || s.contains("rarity"))
    }

    fn needs_manifold(&self) -> bool {
        self.scores
            .iter()
            .any(|s| s.contains("realism") || s.contains("rarity"))
    }

    /// A score variant `base[k=v,…]` (GU Fig. 6's M and T′, App. D's Laplace hyper-parameters): the
    /// base score over this configuration with the keys set. Keys must exist and lie in a score
    /// table ([`VARIANT_KEYS`]); values are TOML (`gu.m=1`, `laplace.sigma=0.5`,
    /// `gu.compat="gu-release"`); the patched configuration must validate.
    pub fn variant(&self, name: &str) -> Result<(String, Config)> {
        let Some((base, sets)) = split_variant(name) else {
            return Ok((name.to_string(), self.clone()));
        };
        if !is_known_score(base) || base == "au-guided" && self.guidance.is_none() {
            return Err(Error::invalid(
                "scores",
                format!("`{name}`: unknown base score `{base}`"),
            ));
        }
        let mut json =
            serde_json::to_value(self).map_err(|e| Error::invalid("scores", e.to_string()))?;
        for (k, v) in sets {
            if !VARIANT_KEYS.iter().any(|p| k.starts_with(p)) {
                return Err(Error::invalid(
                    "scores",
                    format!(
                        "`{name}`: a variant may set keys of {} only, not `{k}`",
                        VARIANT_KEYS.join(" ")
                    ),
                ));
            }
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .ok_or_else(|| {
                    Error::invalid("scores", format!("`{name}`: `{k}={v}` is not a TOML value"))
                })?;
            let mut slot = &mut json;
            for part in k.split('.') {
                slot = slot.get_mut(part).ok_or_else(|| {
                    Error::invalid("scores", format!("`{name}`: no key `{k}` to set"))
                })?;
            }
            *slot =
                serde_json::to_value(value).map_err(|e| Error::invalid("scores", e.to_string()))?;
        }
        let mut patched: Config = serde_json::from_value(json)
            .map_err(|e| Error::invalid("scores", format!("`{name}`: {e}")))?;
        // The variant stands alone: one score, no claims or pairs naming the others.
        patched.scores = vec![base.to_string()];
        patched.claims.clear();
        patched.report.spearman.clear();
        if let Some(v) = patched.validate().first() {
            return Err(Error::invalid(
                "scores",
                format!("`{name}`: {} {}", v.key, v.reason),
            ));
        }
        Ok((base.to_string(), patched))
    }

    /// A flow-matching recipe needs flow samplers (main and GU's) and flow-capable scores; a
    /// diffusion recipe needs diffusion samplers. One-line errors naming the key.
    fn check_model_kind(&self, flow: bool) -> Result<()> {
        let name = |k: crate::sampler::spec::SamplerKind| {
            serde_json::to_string(&k)
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()
        };
        for (key, s) in [
            ("sampler.name", &self.sampler),
            ("gu.sampler.name", &self.gu.sampler),
        ] {
            if s.name.is_flow() != flow {
                return Err(Error::invalid(
                    key,
                    format!(
                        "`{}` with model `{}`, a {} model: expected {}",
                        name(s.name),
                        self.model.from,
                        if flow { "flow-matching" } else { "diffusion" },
                        if flow {
                            "a flow sampler (euler, dopri5)"
                        } else {
                            "a diffusion sampler (ddim, ddpm, dpm-solver-2, dpm-solver-pp2m)"
                        }
                    ),
                ));
            }
        }
        if flow {
            for sc in &self.scores {
                let (base, _) = self.variant(sc)?;
                if !base.split('+').all(flow_capable) {
                    return Err(Error::invalid(
                        "scores",
                        format!(
                            "`{sc}` is defined through ε and ᾱ_t; a flow-matching model supports random, plain, gu-pixel, gu-semantic, realism, rarity"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The Laplace settings every score of the run fits a posterior with (distinct).
    fn laplace_settings(&self) -> Result<Vec<LaplaceConfig>> {
        let mut out: Vec<LaplaceConfig> = vec![];
        for s in &self.scores {
            let (base, c) = self.variant(s)?;
            if (base.contains("gu-") || base.starts_with("bayesdiff")) && !out.contains(&c.laplace)
            {
                out.push(c.laplace);
            }
        }
        Ok(out)
    }

    /// AU Alg. 2's settings: `[guidance]` with `[au]`'s M and divisor (the paper's Alg. 1).
    fn guidance_spec(&self) -> Option<GuidanceSpec> {
        self.guidance.map(|g| GuidanceSpec {
            au: AuSpec {
                m: self.au.m,
                ddof: self.au.ddof,
                compat: AuCompat::Paper,
                clip_sample: None,
            },
            percentile: g.percentile,
            threshold: g.threshold,
            strength: g.strength,
            sign: g.sign,
            batch: g.batch,
            window: StepWindow {
                start: g.window_start,
                len: g.window_len,
            },
        })
    }

    fn gu_spec(&self, gamma2: f64) -> GuSpec {
        GuSpec {
            m: self.gu.m,
            include_map: self.gu.include_map,
            gamma2,
            compat: self.gu.compat,
            sampler: self.gu.sampler.clone(),
            rerun_map: self.gu.rerun_map,
        }
    }

    /// One score by name, over the run's posterior, semantic φ and reference manifold.
    fn build_score<'a>(
        &self,
        name: &str,
        ctx: &'a ScoreContext<'a>,
    ) -> Result<Box<dyn SampleScore + 'a>> {
        if split_variant(name).is_some() {
            let (base, patched) = self.variant(name)?;
            return patched.build_score(&base, ctx);
        }
        let post = || {
            ctx.posteriors
                .iter()
                .find(|(l, _)| *l == self.laplace)
                .map(|(_, p)| p)
                .ok_or_else(|| {
                    Error::invalid("scores", format!("`{name}` needs the Laplace posterior"))
                })
        };
        let manifold = || {
            ctx.manifold.ok_or_else(|| {
                Error::invalid("scores", format!("`{name}` needs the realism manifold"))
            })
        };
        Ok(match name {
            "random" | "plain" => Box::new(RandomScore),
            "au-guided" => Box::new(AuGuidedScore::new(self.guidance_spec().ok_or_else(
                || Error::invalid("guidance", "the `au-guided` score needs a [guidance] table"),
            )?)?),
            "au" | "au-release" => {
                let compat = if name == "au" {
                    AuCompat::Paper
                } else {
                    AuCompat::AuRelease
                };
                let clip = (compat == AuCompat::AuRelease && self.sampler.clip_sample)
                    .then_some(self.sampler.clip_range);
                Box::new(AuScore::new(
                    AuSpec {
                        m: self.au.m,
                        ddof: self.au.ddof,
                        compat,
                        clip_sample: clip,
                    },
                    self.au_window(),
                )?)
            }
            "mc-dropout" => Box::new(McDropoutScore::new(
                self.mc_dropout.m,
                self.mc_dropout.ddof,
                StepWindow {
                    start: self.mc_dropout.window_start,
                    len: self.mc_dropout.window_len,
                },
            )?),
            "bayesdiff" | "bayesdiff-release" => Box::new(BayesDiffScore::new(
                post()?,
                BayesDiffSpec {
                    mc: self.bayesdiff.mc,
                    every: self.bayesdiff.every,
                    variance: if name == "bayesdiff" {
                        VarianceRule::Total
                    } else {
                        VarianceRule::Release
                    },
                },
            )?),
            "gu-pixel" => Box::new(GuScore::pixel(post()?, self.gu_spec(self.gu.gamma2_pixel))?),
            "gu-semantic" => Box::new(GuScore::semantic(
                post()?,
                self.gu_spec(self.gu.gamma_semantic),
                ctx.semantic,
            )?),
            "realism" => Box::new(RealismScore::new(
                manifold()?,
                ctx.semantic,
                self.realism.variant.options(self.realism.k),
            )?),
            "rarity" => Box::new(RarityScore::new(manifold()?, ctx.semantic)),
            combo => match combo.split_once('+') {
                Some((a, b)) => Box::new(RankCombination::new(
                    self.build_score(a, ctx)?,
                    self.build_score(b, ctx)?,
                )?),
                None => return Err(Error::invalid("scores", format!("unknown score `{combo}`"))),
            },
        })
    }

    fn prdc_options(&self) -> PrdcOptions {
        PrdcOptions {
            k: self.eval.prdc_k,
            distance: if self.eval.prdc_distance == "squared" {
                PrdcDistance::Squared
            } else {
                PrdcDistance::Euclidean
            },
        }
    }

    /// Whether the run's numbers can test a claim (not in raw-pixel smoke features).
    fn checks_claims(&self) -> bool {
        self.eval.metric_features == Space::Inception
    }

    /// The recipe of `model.from` at `scale`.
    pub fn recipe(&self, experiments_dir: &Path, scale: &str) -> Result<ImageModelRecipe> {
        kit::image_recipe(
            "model.from",
            &self.model.from,
            MINI_MODELS,
            experiments_dir,
            scale,
        )
    }
}

/// What scores are built over.
struct ScoreContext<'a> {
    /// One posterior per distinct `[laplace]` of the run's scores (variants may differ).
    posteriors: &'a [(LaplaceConfig, DiagPosterior)],
    semantic: &'a dyn FeatureExtractor,
    manifold: Option<&'a RealManifold<'a>>,
}

impl Experiment for Filtering {
    const NAME: &'static str = KIND;
    const DESCRIPTION: &'static str =
        "filtering: score N samples, keep the K lowest, FID/precision/recall of the kept set";
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

/// uint8 → [−1, 1] f32 (what the semantic extractor sees for real images, as for samples).
fn from_u8(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.to_dtype(DType::F32)? / 127.5)? - 1.0
}

/// Features of uint8 images (N, 1, S, S) in the metric space, row-major.
fn metric_features(
    c: &Config,
    embedder: &Embedder,
    images: &Tensor,
    what: &str,
) -> Result<(Vec<f64>, usize)> {
    match c.eval.metric_features {
        Space::Pixels | Space::Mobilenet | Space::Clip => {
            let d = images.elem_count() / images.dim(0).ctx(what)?.max(1);
            let v: Vec<f64> = images
                .to_dtype(DType::F64)
                .and_then(|t| t / 255.0)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .ctx(what)?;
            Ok((v, d))
        }
        Space::Inception => {
            // Grayscale (Fashion-MNIST) to 3 identical channels; RGB as it is.
            let reps = if images.dim(1).ctx(what)? == 1 { 3 } else { 1 };
            let rgb = images
                .to_device(&Device::Cpu)
                .and_then(|t| t.repeat((1, reps, 1, 1)))
                .ctx(what)?;
            embedder.features_of(MetricInput::Images(rgb), Path::new(what))
        }
    }
}

/// The semantic φ of the run: MobileNetV2 (also returned concretely, for its feature cache) or
/// raw pixels.
fn semantic_extractor(
    c: &Config,
    dev: &Device,
) -> Result<(
    Box<dyn FeatureExtractor>,
    Option<crate::features::mobilenet::MobileNetFeatures>,
)> {
    Ok(match c.eval.semantic_features {
        Space::Mobilenet => {
            let path = if c.features.mobilenet_path.is_empty() {
                match c.features.mobilenet() {
                    Ok(p) => p,
                    Err(_) => {
                        crate::fetch::fetch_mobilenet(&crate::fetch::default_cache_dir())?;
                        c.features.mobilenet()?
                    }
                }
            } else {
                c.features.mobilenet()?
            };
            let net = crate::features::mobilenet::MobileNetV2::load(&path, dev)?;
            let mf = crate::features::mobilenet::MobileNetFeatures::new(
                net,
                crate::features::mobilenet::Preprocess::SAMPLES,
                c.eval.semantic_batch,
            );
            (Box::new(mf.clone()), Some(mf))
        }
        Space::Clip => {
            let path = inputs::path_of("weights", &c.weights, "clip")?;
            let net = crate::features::clip::ClipVision::load(&path, dev)?;
            (
                Box::new(crate::features::clip::ClipFeatures::new(
                    net,
                    c.eval.semantic_batch,
                )),
                None,
            )
        }
        _ => (Box::new(Identity), None),
    })
}

/// Rows of φ(images) for images in [−1, 1], in batches.
fn semantic_rows(
    phi: &dyn FeatureExtractor,
    x: &Tensor,
    batch: usize,
    what: &str,
) -> Result<(Vec<f64>, usize)> {
    let n = x.dim(0).ctx(what)?;
    let mut out = vec![];
    let mut d = 0;
    let mut i = 0;
    while i < n {
        let b = batch.min(n - i);
        let f = phi
            .features(&x.narrow(0, i, b).ctx(what)?)
            .and_then(|t| t.to_dtype(DType::F64))
            .ctx(what)?;
        d = f.dim(1).ctx(what)?;
        out.extend(f.flatten_all().and_then(|t| t.to_vec1::<f64>()).ctx(what)?);
        i += b;
    }
    Ok((out, d))
}

/// The last-layer Laplace posterior fitted on `laplace.fit_images` noised training images.
pub(crate) fn fit_posterior(
    laplace: &LaplaceConfig,
    model: &kit::ImageModel,
    net: &dyn crate::model::Network,
    train: &(Tensor, Vec<u32>),
    dev: &Device,
) -> Result<DiagPosterior> {
    let schedule = model.schedule.clone();
    let learned_variance = net.prediction() == crate::model::Prediction::EpsilonLearnedVariance;
    let spec = LaplaceSpec {
        sigma: laplace.sigma,
        prior_precision: laplace.prior_precision,
        ef_scale: laplace.ef_scale,
        // A learned-variance network (ADM: ε then the variance interpolation) is fitted on its
        // ε channels only; the variance outputs get no gradient, as in BayesDiff's and GU's fits.
        channels: learned_variance.then_some(model.shape[0]),
    };
    let purpose = SeedStreams::new(model.seed).purpose(kit::streams::LAPLACE_FIT);
    let n = laplace
        .fit_images
        .min(train.0.dim(0).ctx("training images")?);
    // The network's input space: pixels, or a latent model's VAE latents of the images.
    let [s, h, w] = model.shape;
    let f = s * h * w;
    let vae_purpose = SeedStreams::new(model.seed).purpose(kit::streams::VAE_ENCODE);
    let mut post: Option<DiagPosterior> = None;
    let idx_all: Vec<u64> = (0..n as u64).collect();
    for idx in idx_all.chunks(laplace.batch_size) {
        let b = idx.len();
        let x0 = train
            .0
            .narrow(0, idx[0] as usize, b)
            .ctx("Laplace fit images")?;
        let x0 = model.to_inputs(&x0, idx, &vae_purpose)?;
        let y: Vec<u32> = idx.iter().map(|&i| train.1[i as usize]).collect();
        let eps = Tensor::from_vec(purpose.normals(idx, Some(1), f), (b, s, h, w), dev)
            .ctx("Laplace fit noise")?;
        let flow = model.flow;
        // Per item: (coefficient of x₀, coefficient of ε, model time). A diffusion model is fitted
        // on x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε at t uniform over the schedule with target ε (its
        // training loss); a flow-matching model on x_t = (1 − t) x₀ + t ε at t ~ U[0, 1) with target
        // ε − x₀ (its velocity regression, GU App. C.7).
        let coef: Vec<(f32, f32, f64)> = idx
            .iter()
            .map(|&i| {
                use rand::Rng;
                if flow {
                    let t: f64 = purpose.rng(i).random();
                    ((1.0 - t) as f32, t as f32, t)
                } else {
                    let t = purpose.rng(i).random_range(0..schedule.len());
                    let ab = schedule.alpha_bar(Some(t));
                    (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32, t as f64)
                }
            })
            .collect();
        let a = Tensor::from_vec(coef.iter().map(|c| c.0).collect(), (b, 1, 1, 1), dev)
            .ctx("x₀ coefficients")?;
        let sg = Tensor::from_vec(coef.iter().map(|c| c.1).collect(), (b, 1, 1, 1), dev)
            .ctx("ε coefficients")?;
        let x_t =
            (x0.broadcast_mul(&a).ctx("x_t")? + eps.broadcast_mul(&sg).ctx("x_t")?).ctx("x_t")?;
        let target = if flow {
            (&eps - &x0).ctx("velocity target")?
        } else if learned_variance {
            // The raw output layout (2C channels); the variance half is masked in the fit.
            Tensor::cat(&[&eps, &eps.zeros_like().ctx("target")?], 1).ctx("target")?
        } else {
            eps.clone()
        };
        let mut bound = Bound::new(net).with_schedule(&schedule);
        if model.conditional() {
            bound = bound.with_labels(Tensor::from_vec(y, b, dev).ctx("labels")?);
        }
        let t_model: Vec<f64> = coef.iter().map(|c| c.2).collect();
        // The network is bound to each batch's labels, so each batch has its own accumulator;
        // the empirical Fisher is a sum over items, so the fits merge.
        let mut one = FisherAccumulator::new(&bound, spec)?;
        one.add(&x_t, &t_model, &target)?;
        let p = one.finish();
        post = Some(match post {
            None => p,
            Some(q) => q.merged(&p)?,
        });
    }
    post.ok_or_else(|| Error::invalid("laplace.fit_images", "no images to fit on"))
}

/// Per-seed outputs of one score.
struct ScoreResult {
    name: String,
    values: Vec<f64>,
    nfe: usize,
    max_dev: f64,
    own_samples: Option<Tensor>,
    /// Seconds it took to compute (when it was computed, for a cached result).
    wall: f64,
    /// Taken from the [`ScoreStore`].
    cached: bool,
}

/// Bump when a score's numbers can change for the same configuration (a fix in `uq::scores`), so
/// that cached scores computed before are not reused.
pub const SCORE_CACHE_VERSION: u32 = 1;

/// Scores and samples cached across runs and artifacts (`<cache root>/diffuq/scores/`).
///
/// Sampling and scoring are the expensive part of a filtering run; the kept-set metrics are cheap.
/// The paper draws all its filtering figures from one sample set (GU: the same 12K for Figs. 3, 4,
/// 15, 16 and Table 1), and so does diffuq: a score's per-sample values (and its own images, when
/// it has them) are stored under a key of everything they depend on — the model's cache key,
/// `model.use_ema`, the sampler, `labels`, `samples`, `batch_size` (the network's rows per call move
/// results at float rounding), the seed, the score's name and every score setting (`[au]`,
/// `[mc_dropout]`, `[bayesdiff]`, `[gu]`, `[laplace]`, `[realism]`, the semantic φ), the crate
/// version and [`SCORE_CACHE_VERSION`] — so another artifact, or the same one with other
/// `[filter]` settings, reuses them and only embeds and measures.
struct ScoreStore {
    dir: PathBuf,
    base: String,
    settings: String,
}

fn sha256_hex(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl ScoreStore {
    fn new(c: &Config, model_key: &str, seed: u64) -> Result<Self> {
        let weights = crate::fetch::default_cache_dir();
        let root = weights.parent().map(Path::to_path_buf).unwrap_or(weights);
        let json = |v: serde_json::Value| v.to_string();
        let base = json(serde_json::json!({
            "cache": SCORE_CACHE_VERSION,
            "diffuq": env!("CARGO_PKG_VERSION"),
            "model": model_key,
            "use_ema": c.model.use_ema,
            "sampler": &c.sampler,
            "labels": &c.labels,
            "samples": c.samples,
            "batch_size": c.batch_size,
            "seed": seed,
        }));
        let settings = json(serde_json::json!({
            "au": &c.au,
            "mc_dropout": &c.mc_dropout,
            "bayesdiff": &c.bayesdiff,
            "gu": &c.gu,
            "laplace": &c.laplace,
            "realism": &c.realism,
            "guidance": &c.guidance,
            "semantic": &c.eval.semantic_features,
            "semantic_batch": c.eval.semantic_batch,
            "mobilenet_path": &c.features.mobilenet_path,
        }));
        Ok(Self {
            dir: root.join("scores"),
            base,
            settings,
        })
    }

    fn path(&self, what: &str) -> PathBuf {
        let key = if what == "plain" {
            sha256_hex(&[&self.base, "plain"])
        } else {
            sha256_hex(&[&self.base, what, &self.settings])
        };
        // Variant names (`gu-semantic[gu.m=1,…]`) carry characters a file name should not.
        let stem = if what
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+')
        {
            what.to_string()
        } else {
            "variant".to_string()
        };
        self.dir.join(format!("{stem}-{}.safetensors", &key[..24]))
    }

    fn load_plain(&self, dev: &Device) -> Result<Option<Tensor>> {
        let path = self.path("plain");
        if !path.is_file() {
            return Ok(None);
        }
        let m = candle_core::safetensors::load(&path, dev).ctx(&path.display().to_string())?;
        Ok(m.get("samples").cloned())
    }

    fn save_plain(&self, x: &Tensor) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.path("plain");
        crate::tracking::write_atomically(&path, |tmp| {
            candle_core::safetensors::save(
                &std::collections::HashMap::from([("samples".to_string(), x.clone())]),
                tmp,
            )
            .ctx("cached plain samples")
        })
    }

    fn load(&self, name: &str, n: usize, dev: &Device) -> Result<Option<ScoreResult>> {
        let path = self.path(name);
        if !path.is_file() {
            return Ok(None);
        }
        let what = path.display().to_string();
        let m = candle_core::safetensors::load(&path, dev).ctx(&what)?;
        let (Some(values), Some(info)) = (m.get("values"), m.get("info")) else {
            return Err(Error::invalid(what, "expected `values` and `info` tensors"));
        };
        let values: Vec<f64> = values.to_vec1().ctx(&what)?;
        let info: Vec<f64> = info.to_vec1().ctx(&what)?;
        if values.len() != n || info.len() != 3 {
            return Err(Error::invalid(
                what,
                format!(
                    "{} values and {} info entries; expected {n} and 3 (delete the file to recompute)",
                    values.len(),
                    info.len()
                ),
            ));
        }
        Ok(Some(ScoreResult {
            name: name.to_string(),
            values,
            nfe: info[0] as usize,
            max_dev: info[1],
            own_samples: m.get("samples").cloned(),
            wall: info[2],
            cached: true,
        }))
    }

    fn save(&self, name: &str, r: &ScoreResult) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.path(name);
        let dev = Device::Cpu;
        let mut m = std::collections::HashMap::from([
            (
                "values".to_string(),
                Tensor::from_vec(r.values.clone(), r.values.len(), &dev).ctx("cached values")?,
            ),
            (
                "info".to_string(),
                Tensor::from_vec(vec![r.nfe as f64, r.max_dev, r.wall], 3, &dev)
                    .ctx("cached values")?,
            ),
        ]);
        if let Some(x) = &r.own_samples {
            m.insert("samples".to_string(), x.clone());
        }
        crate::tracking::write_atomically(&path, |tmp| {
            candle_core::safetensors::save(&m, tmp).ctx("cached score")
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn run_seed(
    c: &Config,
    model: &kit::ImageModel,
    net: &dyn crate::model::Network,
    ctx: &ScoreContext<'_>,
    seed: u64,
    dev: &Device,
    run: &RunDir,
    embedder: &Embedder,
    reference: &(Vec<f64>, usize, GaussianStats),
    model_key: &str,
    progress: &indicatif::MultiProgress,
) -> Result<kit::PartTimes> {
    let store = ScoreStore::new(c, model_key, seed)?;
    let schedule = model.schedule.clone();
    let streams = SeedStreams::new(seed);
    let all: Vec<u64> = (0..c.samples as u64).collect();
    let labels = c.labels_of(&streams, &all, model.classes);
    let mut times = vec![];
    let scores: Vec<Box<dyn SampleScore + '_>> = c
        .scores
        .iter()
        .map(|n| c.build_score(n, ctx))
        .collect::<Result<_>>()?;

    // 1. The plain sampler's images (the shared sample set). AU and MC-Dropout observe the plain
    // trajectory (their extra network calls are separate), so the first of them, scored first,
    // yields these images bit for bit and no separate sampling run is needed.
    let observer_first = c
        .scores
        .iter()
        .position(|s| matches!(s.as_str(), "au" | "au-release" | "mc-dropout"));
    let mut order: Vec<usize> = (0..scores.len()).collect();
    if let Some(i) = observer_first {
        order.retain(|&j| j != i);
        order.insert(0, i);
    }
    let t0 = Instant::now();
    let mut early: Option<ScoreResult> = None;
    let mut plain = vec![];
    let cached_plain = store.load_plain(dev)?;
    if let (Some(i), Some(p)) = (observer_first, &cached_plain) {
        if let Some(r) = store.load(&c.scores[i], c.samples, dev)? {
            run.log(&format!(
                "seed {seed}: {} and the plain samples from the score cache",
                c.scores[i]
            ))?;
            plain = vec![p.clone()];
            early = Some(r);
        }
    }
    if let (None, Some(p)) = (observer_first, &cached_plain) {
        run.log(&format!("seed {seed}: plain samples from the score cache"))?;
        plain = vec![p.clone()];
    }
    if let (Some(i), true) = (observer_first, early.is_none()) {
        let (r, samples) = generate_score(
            c,
            model,
            net,
            scores[i].as_ref(),
            &c.scores[i],
            &streams,
            &all,
            None,
            dev,
            run,
            seed,
            progress,
        )?;
        store.save(&c.scores[i], &r)?;
        store.save_plain(&samples)?;
        plain = vec![samples];
        early = Some(r);
    }
    let pb = kit::bar(progress, c.samples, &format!("seed {seed}: plain samples"));
    let sample_now = plain.is_empty();
    // NFE per sample of the plain sampler: fixed, except for an adaptive one (dopri5), whose
    // largest batch count is recorded when it runs here.
    let mut plain_nfe = crate::uq::scores::sampler_nfe(&c.sampler);
    for idx in all.chunks(c.batch_size).filter(|_| sample_now) {
        let out = with_batch(c, model, net, &schedule, &streams, idx, dev, |batch| {
            batch.sample(&mut NoObserver, "plain samples")
        })?;
        kit::check_finite(&out.x0, idx, &format!("seed {seed}: plain samples"))?;
        plain_nfe = plain_nfe.max(out.nfe);
        plain.push(out.x0);
        pb.inc(idx.len() as u64);
    }
    pb.finish_and_clear();
    let plain = Tensor::cat(&plain, 0).ctx("plain samples")?;
    if sample_now {
        store.save_plain(&plain)?;
    }
    times.push((format!("sample/seed-{seed}"), t0.elapsed().as_secs_f64()));
    run.log(&format!(
        "seed {seed}: {} plain samples in {:.1}s",
        c.samples,
        t0.elapsed().as_secs_f64()
    ))?;

    // 2. Every score: raw values batch by batch, then the set's final values.
    let mut slots: Vec<Option<ScoreResult>> = (0..scores.len()).map(|_| None).collect();
    if let (Some(i), Some(r)) = (observer_first, early.take()) {
        slots[i] = Some(r);
    }
    for &si in &order {
        if slots[si].is_some() {
            continue;
        }
        let score = &scores[si];
        let t0 = Instant::now();
        if c.scores[si] == "plain" {
            // The plain sampler's images as a row of their own (AU Table 3's "normal" column).
            slots[si] = Some(ScoreResult {
                name: score.name().to_string(),
                values: vec![0.0; c.samples],
                nfe: plain_nfe,
                max_dev: 0.0,
                own_samples: None,
                wall: 0.0,
                cached: false,
            });
            continue;
        }
        if c.scores[si] == "random" {
            slots[si] = Some(ScoreResult {
                name: score.name().to_string(),
                values: RandomScore::draws(&streams, &all),
                nfe: plain_nfe,
                max_dev: 0.0,
                own_samples: None,
                wall: t0.elapsed().as_secs_f64(),
                cached: false,
            });
            continue;
        }
        // A rank combination of two scores this run already computed is their combined ranks
        // (GU Table 1): no second generation.
        if let Some((a, b)) = c.scores[si].split_once('+') {
            let find = |n: &str| {
                c.scores
                    .iter()
                    .position(|x| x == n)
                    .and_then(|i| slots[i].as_ref())
            };
            if let (Some(ra), Some(rb)) = (find(a), find(b)) {
                let raw = [ra.values.clone(), rb.values.clone()];
                let values = score.finish(&raw)?;
                let r = ScoreResult {
                    name: score.name().to_string(),
                    values,
                    nfe: ra.nfe,
                    max_dev: ra.max_dev,
                    own_samples: ra.own_samples.clone(),
                    wall: t0.elapsed().as_secs_f64(),
                    cached: ra.cached && rb.cached,
                };
                slots[si] = Some(r);
                run.log(&format!(
                    "seed {seed}: {} from its parts' scores",
                    c.scores[si]
                ))?;
                continue;
            }
        }
        if let Some(r) = store.load(&c.scores[si], c.samples, dev)? {
            run.log(&format!(
                "seed {seed}: {} from the score cache (computed in {:.1}s)",
                c.scores[si], r.wall
            ))?;
            slots[si] = Some(r);
            continue;
        }
        if let Some(ph) = score.post_hoc() {
            let mut values = vec![];
            for (bi, idx) in all.chunks(c.batch_size).enumerate() {
                let plain_b = plain
                    .narrow(0, bi * c.batch_size, idx.len())
                    .ctx("plain samples")?;
                values.extend(ph.score_samples(&plain_b)?);
            }
            let values = score.finish(&[values])?;
            let wall = t0.elapsed().as_secs_f64();
            times.push((format!("score/{}/seed-{seed}", c.scores[si]), wall));
            let r = ScoreResult {
                name: score.name().to_string(),
                values,
                nfe: plain_nfe,
                max_dev: 0.0,
                own_samples: None,
                wall,
                cached: false,
            };
            store.save(&c.scores[si], &r)?;
            slots[si] = Some(r);
            continue;
        }
        if let Some(cal) = score.calibration() {
            let t1 = Instant::now();
            let pb = kit::bar(
                progress,
                c.samples,
                &format!("seed {seed}: {} calibration", c.scores[si]),
            );
            for idx in all.chunks(c.batch_size) {
                with_batch(c, model, net, &schedule, &streams, idx, dev, |batch| {
                    cal.observe(batch)
                })?;
                pb.inc(idx.len() as u64);
            }
            pb.finish_and_clear();
            let tau = cal.finish(c.sampler.observed_steps())?;
            let shown: Vec<String> = tau
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.map(|t| format!("{i}:{t:.4e}")))
                .collect();
            times.push((
                format!("calibrate/{}/seed-{seed}", c.scores[si]),
                t1.elapsed().as_secs_f64(),
            ));
            run.log(&format!(
                "seed {seed}: {} calibration pass in {:.1}s; τ_t by step: {}",
                c.scores[si],
                t1.elapsed().as_secs_f64(),
                shown.join(" ")
            ))?;
        }
        let (r, _) = generate_score(
            c,
            model,
            net,
            score.as_ref(),
            &c.scores[si],
            &streams,
            &all,
            Some(&plain),
            dev,
            run,
            seed,
            progress,
        )?;
        times.push((format!("score/{}/seed-{seed}", c.scores[si]), r.wall));
        store.save(&c.scores[si], &r)?;
        slots[si] = Some(r);
    }
    let mut results: Vec<ScoreResult> = slots
        .into_iter()
        .map(|r| r.ok_or_else(|| Error::invalid("scores", "a score was not computed (a bug)")))
        .collect::<Result<_>>()?;
    // Names in the frames are the configured ones (stable keys), not the scores' display names.
    for (r, n) in results.iter_mut().zip(&c.scores) {
        r.name = n.clone();
    }

    // 3. Features of every distinct sample set; kept-set metrics at every fraction.
    let t0 = Instant::now();
    let plain_u8 = to_u8(&model.to_images(&plain)?).ctx("quantising samples")?;
    let (pf, d) = metric_features(c, embedder, &plain_u8, &format!("samples of seed {seed}"))?;
    let mut tensors = std::collections::HashMap::from([
        ("plain".to_string(), plain_u8.clone()),
        (
            "labels".to_string(),
            Tensor::from_vec(labels.clone(), c.samples, dev).ctx("labels")?,
        ),
    ]);
    let mut own_features: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in &results {
        if let Some(x) = &r.own_samples {
            let u8s = to_u8(&model.to_images(x)?).ctx("quantising samples")?;
            let (f, _) = metric_features(
                c,
                embedder,
                &u8s,
                &format!("{} samples of seed {seed}", r.name),
            )?;
            own_features.insert(r.name.clone(), f);
            tensors.insert(r.name.clone(), u8s);
        }
    }
    times.push((format!("embed/seed-{seed}"), t0.elapsed().as_secs_f64()));

    let t0 = Instant::now();
    let opts = c.prdc_options();
    let real_r2 = knn_sq_radii(Rows::new(&reference.0, reference.1), opts.k)?;
    let mut m_score = vec![];
    let mut m_keep = vec![];
    let mut m_k = vec![];
    let mut m_vals: BTreeMap<&str, Vec<f64>> = METRICS.iter().map(|&m| (m, vec![])).collect();
    // Per-class counts of the kept sets go into the frame for up to [`MAX_CLASS_COLUMNS`] classes
    // (Fashion-MNIST's 10); ImageNet's 1000 are summarised by `class_tv` alone.
    let classes = model.classes;
    let mut m_class: Vec<Vec<u64>> = if classes <= MAX_CLASS_COLUMNS {
        vec![vec![]; classes]
    } else {
        vec![]
    };
    let all_counts = class_counts(&labels, &(0..c.samples).collect::<Vec<_>>(), classes);
    let ends: &[bool] = if c.filter.also_highest {
        &[false, true]
    } else {
        &[false]
    };
    for r in &results {
        let feats = own_features.get(&r.name).unwrap_or(&pf);
        for (&frac, &other_end) in c
            .filter
            .keep
            .iter()
            .flat_map(|f| ends.iter().map(move |e| (f, e)))
        {
            let kept = keep_indices(
                &r.values,
                &labels,
                frac,
                c.filter.keep_highest != other_end,
                c.filter.class_balanced,
            );
            let mut rows = Vec::with_capacity(kept.len() * d);
            for &i in &kept {
                rows.extend_from_slice(&feats[i * d..(i + 1) * d]);
            }
            let what = format!("kept set of {} at {frac} (seed {seed})", r.name);
            let stats = GaussianStats::from_features(Rows::new(&rows, d), &what)?;
            let fid = frechet_distance(&stats, &reference.2)?;
            let p = prdc_with_real_radii(
                Rows::new(&reference.0, reference.1),
                &real_r2,
                Rows::new(&rows, d),
                &opts,
            )?;
            let counts = class_counts(&labels, &kept, classes);
            m_score.push(if other_end {
                format!("{}{OTHER_END}", r.name)
            } else {
                r.name.clone()
            });
            m_keep.push(frac);
            m_k.push(kept.len() as u64);
            m_vals.get_mut("fid").unwrap().push(fid);
            m_vals.get_mut("precision").unwrap().push(p.precision);
            m_vals.get_mut("recall").unwrap().push(p.recall);
            m_vals.get_mut("density").unwrap().push(p.density);
            m_vals.get_mut("coverage").unwrap().push(p.coverage);
            m_vals
                .get_mut("class_tv")
                .unwrap()
                .push(total_variation(&counts, &all_counts));
            for (k, col) in m_class.iter_mut().enumerate() {
                col.push(counts[k]);
            }
        }
    }
    times.push((format!("metrics/seed-{seed}"), t0.elapsed().as_secs_f64()));

    // 4. Frames.
    let dir = PartRunner::part_dir(seed);
    std::fs::create_dir_all(run.file(&dir)).map_err(|e| Error::io(run.path(), e))?;
    let n = c.samples;
    let mut cols = vec![
        Column::new("seed".into(), vec![seed; n]),
        Column::new("index".into(), all.clone()),
        Column::new("label".into(), labels.clone()),
    ];
    for r in &results {
        cols.push(Column::new(r.name.as_str().into(), r.values.clone()));
    }
    let mut scores_df = DataFrame::new(n, cols).ctx("scores frame")?;
    run.write_parquet(&format!("{dir}/scores.parquet"), &mut scores_df)?;

    let rows = m_score.len();
    let mut cols = vec![
        Column::new("seed".into(), vec![seed; rows]),
        Column::new("score".into(), m_score),
        Column::new("keep".into(), m_keep),
        Column::new("k".into(), m_k),
    ];
    for m in METRICS {
        cols.push(Column::new(
            (*m).into(),
            m_vals.remove(m).unwrap_or_default(),
        ));
    }
    for (k, col) in m_class.into_iter().enumerate() {
        cols.push(Column::new(format!("class_{k}").into(), col));
    }
    let mut metrics_df = DataFrame::new(rows, cols).ctx("metrics frame")?;
    run.write_parquet(&format!("{dir}/metrics.parquet"), &mut metrics_df)?;

    let mut info = df!(
        "seed" => vec![seed; results.len()],
        "score" => results.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        "display" => scores.iter().map(|s| s.name().to_string()).collect::<Vec<_>>(),
        "nfe" => results.iter().map(|r| r.nfe as u64).collect::<Vec<_>>(),
        "max_dev_from_plain" => results.iter().map(|r| r.max_dev).collect::<Vec<_>>(),
        "own_samples" => results.iter().map(|r| r.own_samples.is_some()).collect::<Vec<_>>(),
        "wall_s" => results.iter().map(|r| r.wall).collect::<Vec<_>>(),
        "from_cache" => results.iter().map(|r| r.cached).collect::<Vec<_>>(),
    )
    .ctx("score info frame")?;
    run.write_parquet(&format!("{dir}/score_info.parquet"), &mut info)?;

    let path = run.file(&format!("{dir}/samples.safetensors"));
    crate::tracking::write_atomically(&path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).ctx("samples.safetensors")
    })?;
    Ok(times)
}

/// Call `f` with the batch of samples `idx` of one seed: x_T from the seed's `x_T` stream, the
/// network bound to the batch's labels (`labels`), the configured sampler.
#[allow(clippy::too_many_arguments)]
fn with_batch<R>(
    c: &Config,
    model: &kit::ImageModel,
    net: &dyn crate::model::Network,
    schedule: &crate::schedule::NoiseSchedule,
    streams: &SeedStreams,
    idx: &[u64],
    dev: &Device,
    f: impl FnOnce(&ScoreBatch<'_>) -> Result<R>,
) -> Result<R> {
    let x_t = kit::initial_noise(streams, idx, &model.shape, dev)?;
    let mut bound = Bound::new(net).with_schedule(schedule);
    if model.conditional() {
        let y = c.labels_of(streams, idx, model.classes);
        bound = bound.with_labels(Tensor::from_vec(y, idx.len(), dev).ctx("labels")?);
    }
    f(&ScoreBatch {
        net: &bound,
        schedule,
        sampler: &c.sampler,
        x_t: &x_t,
        indices: idx,
        streams: *streams,
    })
}

/// Generate and score every batch of one seed with `score`; `plain` (the plain sampler's images)
/// is compared with the score's own samples, whose features replace the plain ones when they
/// differ by more than [`SAME_SAMPLES_TOL`]. Returns the result and the score's samples.
#[allow(clippy::too_many_arguments)]
fn generate_score(
    c: &Config,
    model: &kit::ImageModel,
    net: &dyn crate::model::Network,
    score: &dyn SampleScore,
    name: &str,
    streams: &SeedStreams,
    all: &[u64],
    plain: Option<&Tensor>,
    dev: &Device,
    run: &RunDir,
    seed: u64,
    progress: &indicatif::MultiProgress,
) -> Result<(ScoreResult, Tensor)> {
    let t0 = Instant::now();
    let schedule = model.schedule.clone();
    let pb = kit::bar(progress, all.len(), &format!("seed {seed}: {name}"));
    let mut raw = crate::uq::scores::RawScores::default();
    let mut own = vec![];
    let mut max_dev = 0f64;
    let mut nfe = 0;
    for (bi, idx) in all.chunks(c.batch_size).enumerate() {
        let out = with_batch(c, model, net, &schedule, streams, idx, dev, |batch| {
            score.score(batch)
        })?;
        kit::check_finite(&out.samples, idx, &format!("seed {seed}: {name} samples"))?;
        if let Some(plain) = plain {
            let plain_b = plain
                .narrow(0, bi * c.batch_size, idx.len())
                .ctx("plain samples")?;
            let dev_b = (&out.samples - &plain_b)
                .and_then(|d| d.abs())
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.max(0))
                .and_then(|d| d.to_dtype(DType::F64))
                .and_then(|d| d.to_scalar::<f64>())
                .ctx("sample deviation")?;
            max_dev = max_dev.max(dev_b);
        }
        nfe = out.nfe;
        raw.push(&out)?;
        own.push(out.samples);
        pb.inc(idx.len() as u64);
    }
    pb.finish_and_clear();
    let values = score.finish(&raw.0)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            format!("seed {seed}: {name} scores"),
            format!(
                "{} at sample {}: the uncertainty estimate is not finite",
                values[i], all[i]
            ),
        ));
    }
    let samples = Tensor::cat(&own, 0).ctx("score samples")?;
    let own_samples = (max_dev > SAME_SAMPLES_TOL).then(|| samples.clone());
    let wall = t0.elapsed().as_secs_f64();
    run.log(&format!(
        "seed {seed}: {name} scored in {wall:.1}s ({nfe} NFE/sample, max |Δ| from the plain samples {max_dev:.2e})"
    ))?;
    Ok((
        ScoreResult {
            name: score.name().to_string(),
            values,
            nfe,
            max_dev,
            own_samples,
            wall,
            cached: false,
        },
        samples,
    ))
}

/// Class-count columns (`class_<k>`) are written for at most this many classes.
const MAX_CLASS_COLUMNS: usize = 10;

/// Per-class counts of `kept` over `classes` classes.
fn class_counts(labels: &[u32], kept: &[usize], classes: usize) -> Vec<u64> {
    let mut c = vec![0u64; classes];
    for &i in kept {
        c[labels[i] as usize] += 1;
    }
    c
}

/// Total-variation distance between two class distributions (given as counts): ½ Σ |p − q|.
pub fn total_variation(a: &[u64], b: &[u64]) -> f64 {
    let (sa, sb) = (
        a.iter().sum::<u64>().max(1) as f64,
        b.iter().sum::<u64>().max(1) as f64,
    );
    0.5 * a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 / sa - y as f64 / sb).abs())
        .sum::<f64>()
}

/// Indices kept at fraction `frac`: the ⌈frac·N⌉ lowest scores (or highest), ties broken by
/// index; with `balanced`, each class keeps ⌈frac·N_c⌉ of its own samples (round to nearest,
/// at least one).
pub fn keep_indices(
    scores: &[f64],
    labels: &[u32],
    frac: f64,
    highest: bool,
    balanced: bool,
) -> Vec<usize> {
    let order = |idx: &mut Vec<usize>| {
        idx.sort_by(|&i, &j| {
            let (a, b) = (scores[i], scores[j]);
            let o = if highest {
                b.total_cmp(&a)
            } else {
                a.total_cmp(&b)
            };
            o.then(i.cmp(&j))
        })
    };
    let count = |n: usize| ((frac * n as f64).round() as usize).clamp(1, n.max(1));
    let mut kept = if balanced {
        let mut out = vec![];
        let classes = labels.iter().max().map_or(0, |&m| m + 1);
        for class in 0..classes {
            let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| labels[i] == class).collect();
            if idx.is_empty() {
                continue;
            }
            order(&mut idx);
            let k = count(idx.len());
            out.extend_from_slice(&idx[..k]);
        }
        out
    } else {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        order(&mut idx);
        let k = count(idx.len());
        idx.truncate(k);
        idx
    };
    kept.sort_unstable();
    kept
}

/// φ of a latent model's samples: φ(decode(z)).
struct DecodedFeatures<'a> {
    model: &'a kit::ImageModel,
    inner: &'a dyn FeatureExtractor,
    id: String,
}

impl FeatureExtractor for DecodedFeatures<'_> {
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let img = self.model.to_images(x).map_err(candle_core::Error::wrap)?;
        self.inner.features(&img)
    }
    fn id(&self) -> &str {
        &self.id
    }
}

/// The real images of a filtering run: the set samples are compared with (FID reference) and the
/// training images the Laplace fit and realism's manifold use. A recipe model uses Fashion-MNIST
/// (test set, training set); a paper checkpoint the `reference.fid` and `data.laplace` files
/// (uint8 image `.npz`/`.npy`, [`crate::data::images`]).
struct ImageData<'a> {
    model: &'a kit::ImageModel,
    dev: &'a Device,
    /// Fashion-MNIST's directory (recipe models).
    fashion: Option<PathBuf>,
    reference_file: Option<PathBuf>,
    train_file: Option<PathBuf>,
    /// For messages and the report.
    reference_name: String,
}

impl<'a> ImageData<'a> {
    fn of(c: &Config, model: &'a kit::ImageModel, dev: &'a Device) -> Result<Self> {
        if model.recipe.is_some() {
            return Ok(Self {
                model,
                dev,
                fashion: Some(recipe::fashion_mnist_or_fetch(None)?),
                reference_file: None,
                train_file: None,
                reference_name: "Fashion-MNIST test set".into(),
            });
        }
        let reference_file = inputs::path_of("reference", &c.reference, "fid")?;
        let train_file = if c.needs_posterior() || c.needs_manifold() {
            Some(inputs::path_of("data", &c.data, "laplace")?)
        } else {
            None
        };
        Ok(Self {
            model,
            dev,
            fashion: None,
            reference_name: format!("reference.fid {}", reference_file.display()),
            reference_file: Some(reference_file),
            train_file,
        })
    }

    /// The first `subset` reference images (0 = all) as uint8 (N, C, H, W).
    fn reference(&self, subset: usize) -> Result<Tensor> {
        let set = match (&self.fashion, &self.reference_file) {
            (Some(dir), _) => FashionMnist::load(dir, Split::Test)?,
            (None, Some(f)) => crate::data::images::read_image_set(f)?,
            (None, None) => unreachable!("ImageData::of sets one source"),
        };
        let n = if subset == 0 {
            set.len()
        } else {
            subset.min(set.len())
        };
        let what = &self.reference_name;
        if self.fashion.is_some() {
            let s = self.model.shape[1];
            return set
                .to_tensor(s, "model.data.image_size", self.dev)?
                .narrow(0, 0, n)
                .and_then(|t| to_u8(&t))
                .ctx("reference images");
        }
        if set.channels != self.model.image_shape[0] {
            return Err(Error::invalid(
                what,
                format!(
                    "{}-channel images; the model's images have {} channels",
                    set.channels, self.model.image_shape[0]
                ),
            ));
        }
        Tensor::from_slice(
            &set.images,
            (set.n, set.channels, set.height, set.width),
            self.dev,
        )
        .and_then(|t| t.narrow(0, 0, n))
        .ctx(what)
    }

    /// Training images in [−1, 1] at the model's image size (pixels, also for a latent model:
    /// the Laplace fit encodes them), with their labels.
    fn training(&self) -> Result<(Tensor, Vec<u32>)> {
        if let (Some(dir), Some(r)) = (&self.fashion, &self.model.recipe) {
            return recipe::training_data(&r.data, dir, self.dev);
        }
        let Some(f) = &self.train_file else {
            unreachable!("ImageData::of sets the training file when a score needs it")
        };
        let set = crate::data::images::read_image_set(f)?;
        let what = format!("data.laplace {}", f.display());
        let [c, h, _] = self.model.image_shape;
        if set.channels != c {
            return Err(Error::invalid(
                what,
                format!("{}-channel images; the model takes {c}", set.channels),
            ));
        }
        let labels = match (&set.labels, self.model.conditional()) {
            (Some(l), true) => {
                if let Some(&bad) = l.iter().find(|&&y| y as usize >= self.model.classes) {
                    return Err(Error::invalid(
                        what,
                        format!(
                            "label {bad} in `arr_1`; the model has {} classes",
                            self.model.classes
                        ),
                    ));
                }
                l.clone()
            }
            (None, true) => {
                return Err(Error::invalid(
                    what,
                    "has no labels (`arr_1`); the model is class-conditional",
                ))
            }
            (_, false) => vec![0; set.len()],
        };
        let x = set.to_tensor(h, &what, self.dev)?;
        Ok((x, labels))
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
    let exp_dir = kit::experiments_dir(&cfg.file);

    let t = Instant::now();
    let model = kit::image_model(
        "model.from",
        &c.model.from,
        c.model.use_ema,
        c.model.dtype()?,
        &c.weights,
        MINI_MODELS,
        &exp_dir,
        &cfg.scale,
        &dev,
    )?;
    c.check_model_kind(model.flow)?;
    let net: &dyn crate::model::Network = model.net.as_ref();
    manifest
        .wall_seconds
        .insert("train-or-load".into(), t.elapsed().as_secs_f64());
    run.log(&model.origin)?;
    run.write_manifest(manifest)?;

    if c.eval.metric_features == Space::Inception && c.features.inception_path.is_empty() {
        crate::fetch::fetch_inception(&crate::fetch::default_cache_dir())?;
    }
    let embedder = Embedder::new(c.features.clone(), c.eval.inception_batch);

    // Reference set: real images in the metric space (features and Gaussian statistics) — the
    // Fashion-MNIST test set, or at paper scale the `reference.fid` batch.
    let t = Instant::now();
    let data = ImageData::of(c, &model, &dev)?;
    let ref_imgs = data.reference(c.eval.reference_subset)?;
    let (rf, rd) = metric_features(c, &embedder, &ref_imgs, &data.reference_name)?;
    let rstats = GaussianStats::from_features(Rows::new(&rf, rd), &data.reference_name)?;
    let reference = (rf, rd, rstats);
    manifest
        .wall_seconds
        .insert("reference".into(), t.elapsed().as_secs_f64());

    // Laplace posterior, semantic φ, realism manifold: only what the scores need.
    let t = Instant::now();
    let needs_train = c.needs_posterior() || c.needs_manifold();
    let train = if needs_train {
        Some(data.training()?)
    } else {
        None
    };
    let mut posteriors = vec![];
    if let (Some(tr), true) = (&train, c.needs_posterior()) {
        for l in c.laplace_settings()? {
            let p = fit_posterior(&l, &model, net, tr, &dev)?;
            posteriors.push((l, p));
        }
    }
    manifest
        .wall_seconds
        .insert("laplace-fit".into(), t.elapsed().as_secs_f64());
    let (semantic, mobilenet): (Box<dyn FeatureExtractor>, _) = if c.needs_semantic() {
        semantic_extractor(c, &dev)?
    } else {
        (Box::new(Identity), None)
    };
    let t = Instant::now();
    let manifold_rows = match (&train, c.needs_manifold()) {
        (Some(tr), true) => {
            let n = c
                .realism
                .reference_images
                .min(tr.0.dim(0).ctx("training images")?);
            // Quantised like the samples' images, then back to [−1, 1].
            let x =
                tr.0.narrow(0, 0, n)
                    .and_then(|t| to_u8(&t))
                    .and_then(|t| from_u8(&t))
                    .ctx("realism reference images")?;
            let what = "realism reference images";
            Some(match &mobilenet {
                // The reference manifold is the same every run: from the feature cache.
                Some(mf) => {
                    let f = mf
                        .cached(&x, &c.features.cache())?
                        .to_dtype(DType::F64)
                        .ctx(what)?;
                    let d = f.dim(1).ctx(what)?;
                    (
                        f.flatten_all().and_then(|t| t.to_vec1::<f64>()).ctx(what)?,
                        d,
                    )
                }
                None => semantic_rows(semantic.as_ref(), &x, c.eval.semantic_batch, what)?,
            })
        }
        _ => None,
    };
    let manifold = match &manifold_rows {
        Some((v, d)) => Some(RealManifold::new(Rows::new(v, *d), c.realism.k)?),
        None => None,
    };
    manifest
        .wall_seconds
        .insert("realism-manifold".into(), t.elapsed().as_secs_f64());
    run.write_manifest(manifest)?;

    // Scores see samples; a latent model's samples are decoded before φ (the manifold above was
    // built from real images, which are pixels already).
    let decoded = DecodedFeatures {
        model: &model,
        inner: semantic.as_ref(),
        id: format!("{}∘vae", semantic.id()),
    };
    let sample_phi: &dyn FeatureExtractor = if model.decoder.is_some() {
        &decoded
    } else {
        semantic.as_ref()
    };
    let ctx = ScoreContext {
        posteriors: &posteriors,
        semantic: sample_phi,
        manifold: manifold.as_ref(),
    };
    // Validate every score against the sampler before any sampling.
    for n in &c.scores {
        c.build_score(n, &ctx)?.nfe(&c.sampler)?;
    }
    let parts = PartRunner::new(run, &c.seeds, FRAMES);
    // Seeds run one after another: each already uses every core (batched convolutions), and the
    // feature networks load lazily into state a thread cannot share.
    parts.run_each(manifest, |seed, progress| {
        run_seed(
            c, &model, net, &ctx, seed, &dev, run, &embedder, &reference, &model.key, progress,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

struct MetricRow {
    score: String,
    keep: f64,
    k: u64,
    vals: BTreeMap<String, f64>,
    classes: Vec<u64>,
}

fn read_metrics(run: &RunDir) -> Result<Vec<(u64, MetricRow)>> {
    let f = run.read_parquet("metrics.parquet")?;
    let seed = kit::column_u64(&f, "seed")?;
    let keep = kit::column_f64(&f, "keep")?;
    let k = kit::column_u64(&f, "k")?;
    let score: Vec<String> = f
        .column("score")
        .ctx("metrics.parquet: score")?
        .str()
        .ctx("metrics.parquet: score")?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect();
    let mut vals: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for m in METRICS {
        vals.insert((*m).to_string(), kit::column_f64(&f, m)?);
    }
    // Class columns exist for runs of at most MAX_CLASS_COLUMNS classes (Fashion-MNIST's 10).
    let n_class = (0..MAX_CLASS_COLUMNS)
        .take_while(|c| f.column(&format!("class_{c}")).is_ok())
        .count();
    let classes: Vec<Vec<u64>> = (0..n_class)
        .map(|c| kit::column_u64(&f, &format!("class_{c}")))
        .collect::<Result<_>>()?;
    Ok((0..seed.len())
        .map(|i| {
            (
                seed[i],
                MetricRow {
                    score: score[i].clone(),
                    keep: keep[i],
                    k: k[i],
                    vals: vals.iter().map(|(m, v)| (m.clone(), v[i])).collect(),
                    classes: classes.iter().map(|c| c[i]).collect(),
                },
            )
        })
        .collect())
}

/// Values of `metric` for `score` at `keep`, one per seed in seed order.
fn per_seed(
    rows: &[(u64, MetricRow)],
    seeds: &[u64],
    score: &str,
    keep: f64,
    metric: &str,
) -> Vec<f64> {
    seeds
        .iter()
        .filter_map(|&s| {
            rows.iter()
                .find(|(rs, r)| *rs == s && r.score == score && close(r.keep, keep))
                .and_then(|(_, r)| r.vals.get(metric).copied())
        })
        .collect()
}

/// Spearman correlations per seed for pair `"a,b"`.
fn spearman_per_seed(f: &DataFrame, seeds: &[u64], pair: &str) -> Result<Vec<f64>> {
    let (a, b) = pair
        .split_once(',')
        .ok_or_else(|| Error::invalid("report.spearman", format!("`{pair}` is not \"a,b\"")))?;
    let seed = kit::column_u64(f, "seed")?;
    let va = kit::column_f64(f, a)?;
    let vb = kit::column_f64(f, b)?;
    let mut out = vec![];
    for &s in seeds {
        let (xa, xb): (Vec<f64>, Vec<f64>) = seed
            .iter()
            .zip(va.iter().zip(&vb))
            .filter(|(ss, _)| **ss == s)
            .map(|(_, (x, y))| (*x, *y))
            .unzip();
        // Scores are "lower = keep": realism is stored negated, so its correlation is reported
        // for realism itself (the paper's sign).
        let sign = |n: &str| if n == "realism" { -1.0 } else { 1.0 };
        let xa: Vec<f64> = xa.iter().map(|x| x * sign(a)).collect();
        let xb: Vec<f64> = xb.iter().map(|x| x * sign(b)).collect();
        // ρ is undefined when one score is constant over the seed's set (e.g. rarity when every
        // sample lies outside every reference ball): recorded as NaN, shown as such, and a claim
        // on it does not hold.
        out.push(spearman((a, &xa), (b, &xb)).unwrap_or(f64::NAN));
    }
    Ok(out)
}

/// Outcome of one claim: (holds beyond noise, contradicted beyond noise, text of the numbers).
fn judge(diff: &[f64]) -> (f64, f64) {
    let (m, s) = mean_std(diff);
    let se = if diff.len() > 1 {
        s / (diff.len() as f64).sqrt()
    } else {
        f64::INFINITY
    };
    (m, se)
}

fn report_impl(c: &Config, run: &RunDir) -> Result<Verdict> {
    let rows = read_metrics(run)?;
    let seeds = &c.seeds;
    let info = run.read_parquet("score_info.parquet")?;
    let info_score: Vec<String> = info
        .column("score")
        .ctx("score_info.parquet")?
        .str()
        .ctx("score_info.parquet")?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect();
    let info_nfe = kit::column_u64(&info, "nfe")?;
    let nfe_of = |s: &str| {
        info_score
            .iter()
            .position(|x| x == s)
            .map(|i| info_nfe[i])
            .unwrap_or(0)
    };
    let space = match c.eval.metric_features {
        Space::Inception => "Inception-v3 pool3",
        _ => "raw pixels (smoke plumbing check, not an FID)",
    };
    let tk = c.filter.table_keep;
    let mut table = Table::new([
        "score",
        "NFE / sample",
        "FID ↓",
        "precision ↑",
        "recall ↑",
        "density",
        "coverage",
        "class TV vs all",
    ]);
    let mut reproduced = vec![];
    let model_row = match c.model.checkpoint() {
        Some(name) => name.to_string(),
        None => format!("diffuq {} model, Fashion-MNIST", c.model.from),
    };
    let shown: Vec<String> = c
        .scores
        .iter()
        .cloned()
        .chain(
            c.scores
                .iter()
                .filter(|_| c.filter.also_highest)
                .map(|s| format!("{s}{OTHER_END}")),
        )
        .collect();
    for s in &shown {
        let base = s.strip_suffix(OTHER_END).unwrap_or(s);
        let cell = |m: &str, d: usize| {
            let (mean, std) = mean_std(&per_seed(&rows, seeds, s, tk, m));
            pm(mean, std, d)
        };
        table.row([
            s.clone(),
            nfe_of(base).to_string(),
            cell("fid", 2),
            cell("precision", 3),
            cell("recall", 3),
            cell("density", 3),
            cell("coverage", 3),
            cell("class_tv", 3),
        ]);
        for m in ["fid", "precision", "recall"] {
            let (mean, std) = mean_std(&per_seed(&rows, seeds, s, tk, m));
            let (row, column) = paper_cell(&model_row, s, m);
            reproduced.push(Reproduced::new(row, column, mean).with_std(std));
        }
    }
    let all = per_seed(&rows, seeds, &c.scores[0], 1.0, "fid");
    let full_line = if all.is_empty() {
        String::new()
    } else {
        let (m, s) = mean_std(&all);
        format!(
            "\nAll {} samples (nothing removed): FID {}\n",
            c.samples,
            pm(m, s, 2)
        )
    };

    // The curves' numbers (GU Figs. 3/7 as a table): each metric at every kept fraction.
    let mut curve_text = String::new();
    if c.report.curves {
        let mut keeps = c.filter.keep.clone();
        keeps.sort_by(f64::total_cmp);
        for (metric, label, d) in [
            ("fid", "FID ↓", 2),
            ("precision", "precision ↑", 3),
            ("recall", "recall ↑", 3),
        ] {
            let mut t = Table::new(
                std::iter::once(format!("{label} by samples kept")).chain(
                    keeps
                        .iter()
                        .map(|k| format!("{}", (k * c.samples as f64).round())),
                ),
            );
            for s in &shown {
                t.row(std::iter::once(s.clone()).chain(keeps.iter().map(|&k| {
                    let (m, sd) = mean_std(&per_seed(&rows, seeds, s, k, metric));
                    pm(m, sd, d)
                })));
            }
            curve_text.push_str(&format!("\n{}", t.to_markdown()));
        }
    }

    // Class composition of the kept sets at the table's fraction (mean over seeds).
    let n_class = rows.first().map_or(0, |(_, r)| r.classes.len());
    let names: Vec<String> = if n_class == CLASS_NAMES.len() {
        CLASS_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..n_class).map(|k| format!("class {k}")).collect()
    };
    let mut comp =
        Table::new(std::iter::once("score (kept at table fraction)".to_string()).chain(names));
    for s in shown.iter().filter(|_| n_class > 0) {
        let mut tot = vec![0f64; n_class];
        let mut n = 0f64;
        for (_, r) in rows
            .iter()
            .filter(|(_, r)| &r.score == s && close(r.keep, tk))
        {
            for (k, &v) in r.classes.iter().enumerate() {
                tot[k] += v as f64;
            }
            n += r.k as f64;
        }
        comp.row(
            std::iter::once(s.clone()).chain(
                tot.iter()
                    .map(|v| format!("{:.1}%", 100.0 * v / n.max(1.0))),
            ),
        );
    }

    // Spearman correlations.
    let mut sp_text = String::new();
    let mut sp: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut pairs: Vec<String> = c.report.spearman.clone();
    for cl in &c.claims {
        if cl.test.ends_with("correlation") {
            pairs.push(cl.a.clone());
            if !cl.b.is_empty() {
                pairs.push(cl.b.clone());
            }
        }
    }
    pairs.dedup();
    if !pairs.is_empty() {
        let scores_frame = run.read_parquet("scores.parquet")?;
        let mut t = Table::new(["pair", "Spearman ρ (mean ± std over seeds)"]);
        for p in &pairs {
            if sp.contains_key(p) {
                continue;
            }
            let v = spearman_per_seed(&scores_frame, seeds, p)?;
            let (m, s) = mean_std(&v);
            t.row([p.replace(',', " vs "), pm(m, s, 3)]);
            reproduced.push(
                Reproduced::new("Spearman correlation (Fig. 15)", spearman_column(p), m)
                    .with_std(s),
            );
            sp.insert(p.clone(), v);
        }
        sp_text = format!(
            "\nSpearman correlations of the scores (realism with its own sign):\n\n{}",
            t.to_markdown()
        );
    }

    // Claims.
    let mut claim_lines = vec![];
    let mut all_hold = true;
    for cl in &c.claims {
        let (diff, what): (Vec<f64>, String) = match cl.test.as_str() {
            "lower" | "higher" => {
                let a = per_seed(&rows, seeds, &cl.a, cl.keep, &cl.metric);
                let b = per_seed(&rows, seeds, &cl.b, cl.keep, &cl.metric);
                let sign = if cl.test == "lower" { 1.0 } else { -1.0 };
                (
                    a.iter().zip(&b).map(|(x, y)| sign * (y - x)).collect(),
                    format!(
                        "{} {} {} than {} at keep {:.3}",
                        cl.a, cl.metric, cl.test, cl.b, cl.keep
                    ),
                )
            }
            "weaker-correlation" => {
                let a = sp.get(&cl.a).cloned().unwrap_or_default();
                let b = sp.get(&cl.b).cloned().unwrap_or_default();
                (
                    a.iter().zip(&b).map(|(x, y)| y.abs() - x.abs()).collect(),
                    format!("|ρ({})| < |ρ({})|", cl.a, cl.b),
                )
            }
            _ => {
                let a = sp.get(&cl.a).cloned().unwrap_or_default();
                (a.iter().map(|x| -x).collect(), format!("ρ({}) < 0", cl.a))
            }
        };
        let (m, se) = judge(&diff);
        let holds = m > 2.0 * se;
        all_hold &= holds;
        claim_lines.push(format!(
            "- {} — {what}: margin {m:.4} (2·SE {:.4}, {} seeds) → {}",
            cl.text,
            2.0 * se,
            diff.len(),
            if !c.checks_claims() {
                "not checked (pixel features)"
            } else if holds {
                "holds"
            } else if m < -2.0 * se {
                "contradicted"
            } else {
                "within seed noise"
            }
        ));
    }
    let outcome = if c.claims.is_empty() {
        Outcome::NotChecked
    } else {
        Outcome::of_check(c.checks_claims(), all_hold)
    };
    let summary = if c.claims.is_empty() {
        "no numeric claim (qualitative figure): not checked".to_string()
    } else if !c.checks_claims() {
        format!(
            "{} claim(s) not checked: the kept sets were measured in raw pixels (smoke)",
            c.claims.len()
        )
    } else if all_hold {
        format!("all {} claim(s) hold beyond the seed noise", c.claims.len())
    } else {
        format!(
            "{} of {} claim(s) do not hold beyond the seed noise",
            claim_lines.iter().filter(|l| !l.ends_with("holds")).count(),
            c.claims.len()
        )
    };

    // Figures.
    let figures = run.file("figures");
    std::fs::create_dir_all(&figures).map_err(|e| Error::io(&figures, e))?;
    if c.report.curves {
        write_curves(c, &rows, &figures)?;
    }
    if c.report.grid > 0 {
        write_grids(c, run, &figures)?;
    }
    if c.report.class_bars {
        write_class_bars(c, run, &figures)?;
    }
    if c.report.nfe_curve {
        // GU Fig. 6: every generating score as a point (NFE per sample, FID of its kept set);
        // the random baseline as a flat line over the same range.
        let mut pts: Vec<(f64, f64, f64)> = shown
            .iter()
            .filter(|s| !matches!(s.as_str(), "random" | "plain"))
            .map(|s| {
                let (m, sd) = mean_std(&per_seed(&rows, seeds, s, tk, "fid"));
                (nfe_of(s) as f64, m, sd)
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let x: Vec<f64> = pts.iter().map(|p| p.0).collect();
        let (m, sd): (Vec<f64>, Vec<f64>) = pts.iter().map(|p| (p.1, p.2)).unzip();
        let (rm, rs) = mean_std(&per_seed(&rows, seeds, "random", tk, "fid"));
        let (rmv, rsv) = (vec![rm; x.len()], vec![rs; x.len()]);
        let mut series = vec![crate::report::band::BandSeries {
            label: "uncertainty scores (by NFE)".into(),
            x: &x,
            mean: &m,
            std: &sd,
            color: plotters::style::RGBColor(31, 119, 180),
        }];
        if c.scores.iter().any(|s| s == "random") {
            series.push(crate::report::band::BandSeries {
                label: "random".into(),
                x: &x,
                mean: &rmv,
                std: &rsv,
                color: plotters::style::RGBColor(127, 127, 127),
            });
        }
        let caption = format!(
            "kept {:.0}% of {} samples per seed; band ± 1 std over {} seeds",
            100.0 * tk,
            c.samples,
            seeds.len()
        );
        crate::report::band::write_band(
            &figures,
            "fid-vs-nfe",
            &series,
            &crate::report::band::BandSpec {
                title: c.title.clone(),
                x_label: "NFE per sample (sampler + uncertainty)".into(),
                y_label: "FID ↓".into(),
                highlight: None,
                caption: &caption,
            },
        )?;
    }

    let text = format!(
        "{title}\n\nKept {pct:.1}% of N = {n} samples per seed ({seeds} seeds, mean ± std), {which} scores{bal}; metrics in {space} against {nref}.\n\n{table}{full}{curves}\nClass composition of the kept sets:\n\n{comp}{sp}\nClaims:\n{claims}\n\n{summary}\n",
        title = c.title,
        pct = 100.0 * tk,
        n = c.samples,
        seeds = seeds.len(),
        which = if c.filter.keep_highest { "highest" } else { "lowest" },
        bal = if c.filter.class_balanced { ", the same fraction per class" } else { "" },
        nref = match (c.model.checkpoint(), c.eval.reference_subset) {
            (None, 0) => "10000 Fashion-MNIST test images".to_string(),
            (None, k) => format!("{k} Fashion-MNIST test images"),
            (Some(_), 0) => "the `reference.fid` images".to_string(),
            (Some(_), k) => format!("the first {k} `reference.fid` images"),
        },
        table = table.to_markdown(),
        full = full_line,
        curves = curve_text,
        comp = if n_class > 0 {
            comp.to_markdown()
        } else {
            "not tabulated: more classes than columns (the class shift is `class_tv`)\n".to_string()
        },
        sp = sp_text,
        claims = if claim_lines.is_empty() { "- none (qualitative)".to_string() } else { claim_lines.join("\n") },
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

/// The published numbers of the filtering artifacts (`paper/<artifact>.toml`, compiled in so
/// reports never depend on the working directory); `None` for an artifact no paper has.
fn paper_file(artifact: &str) -> Result<Option<crate::report::paper::PaperFile>> {
    let text = match artifact {
        "au-table1" => include_str!("../../paper/au-table1.toml"),
        "au-table3" => include_str!("../../paper/au-table3.toml"),
        "gu-fig3" => include_str!("../../paper/gu-fig3.toml"),
        "gu-fig4" => include_str!("../../paper/gu-fig4.toml"),
        "gu-fig16" => include_str!("../../paper/gu-fig16.toml"),
        "gu-table1" => include_str!("../../paper/gu-table1.toml"),
        _ => return Ok(None),
    };
    crate::report::paper::parse(text, &format!("paper/{artifact}.toml")).map(Some)
}

/// Where a reproduced number sits in the paper's tables: one row for diffuq's model, the score's
/// column under the paper's name (AU Table 1: Random, Ours (AU), BayesDiff, MC-Dropout), the metric
/// appended for all but FID.
fn paper_cell(row: &str, score: &str, metric: &str) -> (String, String) {
    let (base, end) = match score.strip_suffix(OTHER_END) {
        Some(b) => (b, " (other end)"),
        None => (score, ""),
    };
    let name = match base {
        "random" => "Random",
        "plain" => "normal",
        "au-guided" => "uncertainty guided",
        "au" | "au-release" => "Ours (AU)",
        "bayesdiff" | "bayesdiff-release" => "BayesDiff",
        "mc-dropout" => "MC-Dropout",
        other => other,
    };
    let label = if base == name
        || name == "Ours (AU)" && base == "au"
        || matches!(base, "plain" | "au-guided")
    {
        name.to_string()
    } else {
        format!("{name} [{base}]")
    };
    let column = match metric {
        "fid" => format!("{label}{end}"),
        m => format!("{label}{end} {m}"),
    };
    (row.to_string(), column)
}

fn spearman_column(pair: &str) -> String {
    let name = |s: &str| match s {
        "gu-semantic" | "gu-pixel" => "GU".to_string(),
        s => s.to_string(),
    };
    match pair.split_once(',') {
        Some((a, b)) => format!("{} vs {}", name(a), name(b)),
        None => pair.into(),
    }
}

const COLORS: &[(u8, u8, u8)] = &[
    (127, 127, 127),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
];

/// One band per score (label, means, stds) over the shared `x`, coloured in score order.
fn band_series<'a>(
    stats: &'a [(String, Vec<f64>, Vec<f64>)],
    x: &'a [f64],
) -> Vec<crate::report::band::BandSeries<'a>> {
    stats
        .iter()
        .enumerate()
        .map(|(i, (s, m, sd))| {
            let (r, g, b) = COLORS[i % COLORS.len()];
            crate::report::band::BandSeries {
                label: s.clone(),
                x,
                mean: m,
                std: sd,
                color: plotters::style::RGBColor(r, g, b),
            }
        })
        .collect()
}

fn write_curves(c: &Config, rows: &[(u64, MetricRow)], figures: &Path) -> Result<()> {
    let mut keeps = c.filter.keep.clone();
    keeps.sort_by(f64::total_cmp);
    let x: Vec<f64> = keeps.iter().map(|k| k * c.samples as f64).collect();
    for (metric, label) in [
        ("fid", "FID ↓"),
        ("precision", "precision ↑"),
        ("recall", "recall ↑"),
    ] {
        let stats: Vec<(String, Vec<f64>, Vec<f64>)> = c
            .scores
            .iter()
            .map(|s| {
                let (m, sd): (Vec<f64>, Vec<f64>) = keeps
                    .iter()
                    .map(|&k| mean_std(&per_seed(rows, &c.seeds, s, k, metric)))
                    .unzip();
                (s.clone(), m, sd)
            })
            .collect();
        let series = band_series(&stats, &x);
        crate::report::band::write_band(
            figures,
            metric,
            &series,
            &crate::report::band::BandSpec {
                title: format!("{}: {label} of the kept set", c.title),
                x_label: format!("samples kept (of {})", c.samples),
                y_label: label.into(),
                highlight: None,
                caption: "mean ± std over x_T seeds",
            },
        )?;
    }
    Ok(())
}

/// GU Fig. 4: the n most and least uncertain samples of the first seed per score.
fn write_grids(c: &Config, run: &RunDir, figures: &Path) -> Result<()> {
    let seed = c.seeds[0];
    let part = format!("{}/samples.safetensors", PartRunner::part_dir(seed));
    let m = candle_core::safetensors::load(run.file(&part), &Device::Cpu).ctx(&part)?;
    let scores = run.read_parquet("scores.parquet")?;
    let seed_col = kit::column_u64(&scores, "seed")?;
    for s in &c.scores {
        let images = m
            .get(s)
            .or_else(|| m.get("plain"))
            .ok_or_else(|| Error::invalid(part.clone(), "no `plain` images"))?;
        let (_, _, side, _) = images.dims4().ctx(&part)?;
        let pix: Vec<u8> = images.flatten_all().and_then(|t| t.to_vec1()).ctx(&part)?;
        let v: Vec<f64> = kit::column_f64(&scores, s)?
            .into_iter()
            .zip(&seed_col)
            .filter(|(_, &sd)| sd == seed)
            .map(|(x, _)| x)
            .collect();
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]).then(i.cmp(&j)));
        let n = c.report.grid.min(idx.len());
        let per_row = (n as f64).sqrt().ceil() as usize;
        let img = |i: usize| &pix[i * side * side..(i + 1) * side * side];
        for (stem, pick) in [
            ("least", idx[..n].to_vec()),
            (
                "most",
                idx[idx.len() - n..]
                    .iter()
                    .rev()
                    .copied()
                    .collect::<Vec<_>>(),
            ),
        ] {
            let rows: Vec<Vec<&[u8]>> = pick
                .chunks(per_row)
                .map(|ch| ch.iter().map(|&i| img(i)).collect())
                .collect();
            let labels: Vec<String> = (0..rows.len()).map(|r| format!("{}", r + 1)).collect();
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            crate::report::grid::write_grid(
                figures,
                &format!("grid-{s}-{stem}"),
                &rows,
                side,
                &labels,
                &format!("{n} {stem} uncertain by {s}, seed {seed}"),
            )?;
        }
    }
    Ok(())
}

/// GU Fig. 16: each score's mean per class, as (class mean − overall mean) / overall std, seeds
/// pooled (a standardised difference: GU's entropies can be negative, so a ratio to the mean would
/// not read as a size).
fn write_class_bars(c: &Config, run: &RunDir, figures: &Path) -> Result<()> {
    let scores = run.read_parquet("scores.parquet")?;
    let labels = kit::column_u64(&scores, "label")?;
    let n_class = labels.iter().max().map_or(0, |&m| m + 1);
    let x: Vec<f64> = (0..n_class).map(|k| k as f64).collect();
    let mut stats = vec![];
    let names: Vec<String> = if n_class as usize == CLASS_NAMES.len() {
        CLASS_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..n_class).map(|k| format!("class {k}")).collect()
    };
    let mut text =
        Table::new(std::iter::once("score: (class mean − mean) / std".to_string()).chain(names));
    for s in &c.scores {
        let v = kit::column_f64(&scores, s)?;
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let (overall, spread) = mean_std(&finite);
        let spread = if spread > 0.0 { spread } else { 1.0 };
        let mut means = vec![];
        let mut stds = vec![];
        for k in 0..n_class {
            let cls: Vec<f64> = v
                .iter()
                .zip(&labels)
                .filter(|(x, &l)| l == k && x.is_finite())
                .map(|(x, _)| *x)
                .collect();
            let (m, sd) = mean_std(&cls);
            let se = sd / (cls.len().max(1) as f64).sqrt();
            means.push((m - overall) / spread);
            stds.push(se / spread);
        }
        text.row(std::iter::once(s.clone()).chain(means.iter().map(|m| format!("{m:.3}"))));
        stats.push((s.clone(), means, stds));
    }
    let series = band_series(&stats, &x);
    crate::report::band::write_band(
        figures,
        "class-mean",
        &series,
        &crate::report::band::BandSpec {
            title: format!("{}: class-averaged score", c.title),
            x_label: if n_class as usize == CLASS_NAMES.len() {
                "class (0 T-shirt … 9 ankle boot)".into()
            } else {
                "class index".into()
            },
            y_label: "(class mean − overall mean) / overall std".into(),
            highlight: None,
            caption: "± standard error of the class mean; all seeds pooled",
        },
    )?;
    run.write("class_means.md", text.to_markdown().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Definitions: keeping the lowest K by index-broken ties; the balanced rule keeps the same
    /// fraction of every class; TV is ½ Σ|p − q|.
    #[test]
    fn keep_rules() {
        let s = [5.0, 1.0, 3.0, 1.0, 9.0, 0.0];
        let l = [0, 0, 0, 1, 1, 1];
        assert_eq!(keep_indices(&s, &l, 0.5, false, false), vec![1, 3, 5]);
        assert_eq!(keep_indices(&s, &l, 0.5, true, false), vec![0, 2, 4]);
        // Balanced at 2/3: two of each class, the lowest within it.
        assert_eq!(
            keep_indices(&s, &l, 2.0 / 3.0, false, true),
            vec![1, 2, 3, 5]
        );
        assert_eq!(total_variation(&[1, 1], &[1, 1]), 0.0);
        assert!((total_variation(&[2, 0], &[1, 1]) - 0.5).abs() < 1e-12);
    }
}
