//! The filtering score interface (`uq::scores`) on diffusers' tiny class-conditional
//! UNet2DModel (golden/unet2d/tiny_class, random init, written by diffusers 0.31.0 via
//! golden/unet2d_reference.py) bound to labels with `Bound`, and on small networks defined here
//! whose ε has a known structure.
//!
//! Expected values are properties that hold whatever the weights, each tied to its paper's
//! formula: AU's variance (Alg. 1, Eq. 8) is exactly 0 when ε ignores x; MC-Dropout's is exactly 0
//! for a network without dropout; BayesDiff's propagated variance and GU's entropy (Alg. 1,
//! Eqs. 6–8) collapse to their floors (0; ½D ln 2πeγ) as the Laplace posterior collapses and grow
//! with its variance; realism and rarity equal crate::metrics on the samples' features, with
//! realism negated (lower = keep); the rank combination equals crate::metrics::rank on the raw
//! parts (GU App. C.5). NFE counts are the samplers' (DDIM: one per grid point) plus each
//! method's documented extra evaluations. Per-sample numbers must not depend on batching or
//! order: each score runs on samples {0, 1, 2, 3} in one batch and again as batches {3, 1} and
//! {2, 0}, and must give the same samples and values per sample index: bit for bit on networks
//! that compute rows independently, to the UNet's own batch-size rounding otherwise (`UNET_TOL`).

use std::collections::HashMap;
use std::f64::consts::{E, PI};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use diffuq::features::{FeatureExtractor, Identity};
use diffuq::metrics::rank::{combined_ranks, Score};
use diffuq::metrics::realism::{realism, rows_from_tensor, RealManifold, RealismVariant, Rows};
use diffuq::model::unet2d::UNet2D;
use diffuq::model::{Bound, LastLayerModel, Mode, Network, Prediction};
use diffuq::sampler::spec::{SamplerKind, SamplerSpec};
use diffuq::sampler::FinalStep;
use diffuq::schedule::{ContinuousSpacing, NoiseSchedule, ScheduleKind, Spacing};
use diffuq::seed::SeedStreams;
use diffuq::uq::au::{AuCompat, AuSpec, StepWindow};
use diffuq::uq::bayesdiff::{BayesDiffSpec, VarianceRule};
use diffuq::uq::gu::{GuCompat, GuSpec};
use diffuq::uq::laplace::{DiagPosterior, LaplaceSpec};
use diffuq::uq::scores::{
    sampler_nfe, AuScore, BayesDiffScore, GuScore, McDropoutScore, RandomScore, RankCombination,
    RarityScore, RawScores, RealismScore, SampleScore, ScoreBatch, Scored,
};

const RUN_SEED: u64 = 11;

/// Batch-size tolerance on the UNet. Its ε for one row changes by ~1e-6 (f32 rounding inside
/// the network) once a forward call has more than 4 rows (measured here: a row of a 5- to 16-row
/// call differs from the same row alone by up to 1.2e-6; 1 to 4 rows agree bit for bit), so
/// methods that evaluate M·B rows in one call (AU, BayesDiff) see it: measured 1.4e-7 (AU) and
/// 2.7e-9 (BayesDiff) relative on raw values, samples bit for bit. A per-sample stream error moves
/// values by O(1). On a network whose rows are computed independently ([`Affine`]) the comparison
/// is bit for bit.
const UNET_TOL: f64 = 1e-5;

fn unet() -> UNet2D {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/unet2d/tiny_class");
    UNet2D::load(&dir, DType::F32, &Device::Cpu).unwrap()
}

fn schedule() -> NoiseSchedule {
    NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000)
}

fn ddim(steps: usize, final_step: FinalStep) -> SamplerSpec {
    SamplerSpec {
        name: SamplerKind::Ddim,
        steps,
        eta: 0.0,
        spacing: Spacing::Leading,
        steps_offset: 0,
        continuous_spacing: ContinuousSpacing::TimeUniform,
        r1: 0.5,
        final_step,
        clip_sample: false,
        clip_range: 1.0,
        rtol: None,
        atol: None,
    }
}

fn dpm2(steps: usize) -> SamplerSpec {
    SamplerSpec {
        name: SamplerKind::DpmSolver2,
        continuous_spacing: ContinuousSpacing::LogSnr,
        ..ddim(steps, FinalStep::AlphaOne)
    }
}

/// x_T of sample i depends on i alone; shape (B, C, H, W) with `chw` = (C, H, W).
fn x_t(idx: &[u64], chw: (usize, usize, usize)) -> Tensor {
    let (c, h, w) = chw;
    Tensor::from_vec(
        SeedStreams::new(3)
            .purpose("x_T")
            .normals(idx, None, c * h * w),
        (idx.len(), c, h, w),
        &Device::Cpu,
    )
    .unwrap()
}

/// Sample i's class is i mod 10.
fn labels(idx: &[u64]) -> Tensor {
    let y: Vec<u32> = idx.iter().map(|&i| (i % 10) as u32).collect();
    Tensor::new(y.as_slice(), &Device::Cpu).unwrap()
}

fn run(score: &dyn SampleScore, net: &dyn Network, sampler: &SamplerSpec, idx: &[u64]) -> Scored {
    let s = schedule();
    let mut bound = Bound::new(net);
    if net.num_classes().is_some() {
        bound = bound.with_labels(labels(idx));
    }
    let chw = if net.num_classes().is_some() {
        (1, 16, 16)
    } else {
        (1, 4, 4)
    };
    let x = x_t(idx, chw);
    let batch = ScoreBatch {
        net: &bound,
        schedule: &s,
        sampler,
        x_t: &x,
        indices: idx,
        streams: SeedStreams::new(RUN_SEED),
    };
    score.score(&batch).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let b = t.dim(0).unwrap();
    t.to_dtype(DType::F32)
        .unwrap()
        .reshape((b, ()))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

/// Per sample index: (sample values, raw values).
type PerSample = HashMap<u64, (Vec<f32>, Vec<f64>)>;

fn per_sample(idx: &[u64], s: &Scored) -> PerSample {
    let x = rows(&s.samples);
    idx.iter()
        .enumerate()
        .map(|(k, &i)| (i, (x[k].clone(), s.raw.iter().map(|c| c[k]).collect())))
        .collect()
}

/// Largest relative difference of two per-sample tables, for samples (relative to the sample's
/// largest |value|) and raw values (relative to |value|; equal infinities count as equal).
fn max_rel(a: &PerSample, b: &PerSample) -> (f64, f64) {
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect::<std::collections::BTreeSet<_>>()
    );
    let (mut xs, mut rs) = (0.0f64, 0.0f64);
    for (i, (xa, ra)) in a {
        let (xb, rb) = &b[i];
        let scale = xa.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30) as f64;
        for (u, v) in xa.iter().zip(xb) {
            xs = xs.max(f64::from((u - v).abs()) / scale);
        }
        for (u, v) in ra.iter().zip(rb) {
            if u != v {
                rs = rs.max((u - v).abs() / u.abs().max(v.abs()));
            }
        }
    }
    (xs, rs)
}

/// Runs `score` on {0, 1, 2, 3} and on {3, 1} + {2, 0}: shapes, NFE (as `score.nfe` predicts),
/// bitwise determinism, and the same samples and raw values per sample index up to relative
/// `tol` (0: bit for bit). Returns the full batch.
fn check_batching(
    score: &dyn SampleScore,
    net: &dyn Network,
    sampler: &SamplerSpec,
    tol: f64,
) -> Scored {
    let all = [0u64, 1, 2, 3];
    let full = run(score, net, sampler, &all);
    assert_eq!(full.samples.dim(0).unwrap(), 4, "{}", score.name());
    assert_eq!(full.raw.len(), score.components(), "{}", score.name());
    assert!(full.raw.iter().all(|c| c.len() == 4), "{}", score.name());
    assert_eq!(
        full.nfe,
        score.nfe(sampler).unwrap(),
        "{} NFE",
        score.name()
    );
    let again = run(score, net, sampler, &all);
    assert_eq!(
        max_rel(&per_sample(&all, &full), &per_sample(&all, &again)),
        (0.0, 0.0),
        "{} is not deterministic",
        score.name()
    );
    let mut split = per_sample(&[3, 1], &run(score, net, sampler, &[3, 1]));
    split.extend(per_sample(&[2, 0], &run(score, net, sampler, &[2, 0])));
    let (xs, rs) = max_rel(&per_sample(&all, &full), &split);
    eprintln!(
        "{} on {}: batching changes samples by {xs:e}, raw by {rs:e}",
        score.name(),
        net.name()
    );
    assert!(
        xs <= tol && rs <= tol,
        "{} depends on batching: samples {xs:e}, raw {rs:e} (tolerance {tol:e})",
        score.name()
    );
    full
}

/// ε(x, t) = a·x + t/1024, no dropout: its own test network (unconditional, 1×4×4 images).
struct Affine {
    a: f64,
}

impl Network for Affine {
    fn prediction(&self) -> Prediction {
        Prediction::Epsilon
    }
    fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        _labels: Option<&Tensor>,
        _mode: &mut Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        // t/1024 is exact in binary, so M equal outputs average to themselves exactly.
        (x * self.a)? + t[0] / 1024.0
    }
    fn name(&self) -> &str {
        "affine"
    }
}

fn au(compat: AuCompat) -> AuScore {
    AuScore::new(
        AuSpec {
            m: 3,
            ddof: diffuq::uq::au::Ddof::Minus(1),
            compat,
            clip_sample: None,
        },
        StepWindow { start: 1, len: 2 },
    )
    .unwrap()
}

/// AU (Alg. 1, Eq. 8): batch-independent on the UNet with positive scores; exactly 0 for every
/// sample when ε ignores x (a = 0: all M re-noised inputs give the same ε), positive for ε = 0.5x.
/// NFE = 4 DDIM steps + M = 3 per window step × 2.
#[test]
fn au_score_vanishes_when_eps_ignores_x() {
    let net = unet();
    let sampler = ddim(4, FinalStep::AlphaOne);
    for compat in [AuCompat::Paper, AuCompat::AuRelease] {
        let score = au(compat);
        let s = check_batching(&score, &net, &sampler, UNET_TOL);
        assert_eq!(s.nfe, 4 + 3 * 2);
        assert!(s.raw[0].iter().all(|&v| v > 0.0), "{:?}", s.raw);
        check_batching(&score, &Affine { a: 0.5 }, &sampler, 0.0);
        let flat = run(&score, &Affine { a: 0.0 }, &sampler, &[0, 1, 2]);
        assert_eq!(flat.raw[0], vec![0.0; 3], "{}", score.name());
        let linear = run(&score, &Affine { a: 0.5 }, &sampler, &[0, 1, 2]);
        assert!(linear.raw[0].iter().all(|&v| v > 0.0));
    }
    assert_eq!(au(AuCompat::AuRelease).name(), "au-release");
    let e = au(AuCompat::Paper)
        .nfe(&ddim(2, FinalStep::AlphaOne))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("au.window"), "{e}");
}

/// MC-Dropout: the UNet's dropout (p = 0.1 in every resnet) gives positive scores, batch-
/// independent; a network without dropout gives exactly 0 even where AU's score is positive.
#[test]
fn mc_dropout_score_needs_dropout() {
    let net = unet();
    let sampler = ddim(4, FinalStep::AlphaOne);
    // M = 2: two equal passes average to themselves exactly, so "no dropout" gives exactly 0.
    let score = McDropoutScore::new(2, 1, StepWindow { start: 2, len: 2 }).unwrap();
    let s = check_batching(&score, &net, &sampler, UNET_TOL);
    assert_eq!(s.nfe, 4 + 2 * 2);
    assert!(s.raw[0].iter().all(|&v| v > 0.0), "{:?}", s.raw);
    let plain = check_batching(&score, &Affine { a: 0.5 }, &sampler, 0.0);
    assert_eq!(plain.raw[0], vec![0.0; 4]);
    let e = McDropoutScore::new(1, 0, StepWindow { start: 0, len: 1 })
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("mc_dropout.m"), "{e}");
}

/// The UNet's last-layer posterior with every Fisher entry equal to `h`: variance 1/(h + 1)
/// (σ = λ = 1), so h → ∞ collapses it onto the MAP.
fn posterior(net: &UNet2D, h: f64) -> DiagPosterior {
    let bound = Bound::new(net).with_labels(labels(&[0]));
    let (w, b) = LastLayerModel::last_layer(&bound).unwrap();
    let w = w.to_dtype(DType::F64).unwrap();
    let b = b.unwrap().to_dtype(DType::F64).unwrap();
    DiagPosterior {
        h_w: (w.ones_like().unwrap() * h).unwrap(),
        h_b: Some((b.ones_like().unwrap() * h).unwrap()),
        w_map: w,
        b_map: Some(b),
        spec: LaplaceSpec::GU,
        n_items: 0,
    }
}

/// BayesDiff: NFE as predicted for DDIM (stop) and DPM-Solver-2 under both variance rules;
/// batch-independent; Σ Var[x₀] grows with the posterior variance and is ≈ 0 (< 1e-12 of the
/// prior-only value) when the posterior collapses; samplers its recursions do not cover are
/// refused with the key.
#[test]
fn bayesdiff_score_follows_the_posterior_variance() {
    let net = unet();
    let spec = |variance| BayesDiffSpec {
        mc: 3,
        every: 2,
        variance,
    };
    let wide = posterior(&net, 0.0);
    let ddim5 = ddim(5, FinalStep::Stop);
    for (sampler, rule) in [
        (ddim5.clone(), VarianceRule::Total),
        (ddim5.clone(), VarianceRule::Release),
        (dpm2(3), VarianceRule::Total),
        (dpm2(3), VarianceRule::Release),
    ] {
        let score = BayesDiffScore::new(&wide, spec(rule)).unwrap();
        check_batching(&score, &net, &sampler, UNET_TOL);
    }
    // DDIM, 5 grid points: 4 propagation steps, uncertainty at k = 0, 2: 1 + 3 + 3·1 = 7.
    let s = BayesDiffScore::new(&wide, spec(VarianceRule::Total)).unwrap();
    assert_eq!(s.nfe(&ddim5).unwrap(), 7);
    let idx = [0u64, 1, 2];
    let by_h: Vec<Vec<f64>> = [1e14, 1e4, 0.0]
        .iter()
        .map(|&h| {
            let post = posterior(&net, h);
            let score = BayesDiffScore::new(&post, spec(VarianceRule::Total)).unwrap();
            run(&score, &net, &ddim5, &idx).raw[0].clone()
        })
        .collect();
    for i in 0..idx.len() {
        assert!(by_h[2][i] > 0.0);
        assert!(by_h[0][i] < 1e-12 * by_h[2][i], "{by_h:?}");
        assert!(
            by_h[0][i] < by_h[1][i] && by_h[1][i] < by_h[2][i],
            "{by_h:?}"
        );
    }
    let e = s
        .nfe(&ddim(5, FinalStep::AlphaOne))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("sampler.final_step"), "{e}");
    let e = s
        .nfe(&SamplerSpec {
            name: SamplerKind::DpmSolverPp2m,
            ..ddim5.clone()
        })
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("sampler.name"), "{e}");
}

fn gu_spec(m: usize, sampler: SamplerSpec) -> GuSpec {
    GuSpec {
        m,
        include_map: true,
        gamma2: 1e-3,
        compat: GuCompat::Paper,
        sampler,
        rerun_map: true,
    }
}

/// GU pixel (Alg. 1, Eq. 6): entropy of the moment-matched Gaussian over 256 pixels. A collapsed
/// posterior gives the floor ½·256·ln(2πeγ²) (all members equal the MAP sample); every sample's
/// entropy increases with the posterior variance (h = 1e6, 1e4, 1e2: weight std 1e-3, 1e-2, 0.1).
/// NFE: MAP 4 + M = 2 draws × 4, or with a 2-step extra sampler 4 + (2 + 1 MAP re-run) × 2
/// (`rerun_map`), or 4 + 2 × 2 with the MAP sample reused (the paper's count).
#[test]
fn gu_pixel_entropy_increases_with_posterior_variance() {
    let net = unet();
    let sampler = ddim(4, FinalStep::AlphaOne);
    let post = posterior(&net, 1e2);
    let score = GuScore::pixel(&post, gu_spec(2, sampler.clone())).unwrap();
    let s = check_batching(&score, &net, &sampler, UNET_TOL);
    assert_eq!(s.nfe, 4 + 2 * 4);
    // The MAP samples are the plain sampler's (same x_T, same network), up to f32 rounding: GU
    // evaluates the MAP's last layer as a matmul over the features, the UNet as its own conv.
    let plain = run(&RandomScore, &net, &sampler, &[0, 1, 2, 3]);
    let (xs, _) = max_rel(
        &per_sample(&[0, 1, 2, 3], &s),
        &per_sample(&[0, 1, 2, 3], &plain),
    );
    assert!(
        xs < 1e-4,
        "GU's MAP samples differ from the plain sampler's by {xs:e}"
    );
    let idx = [0u64, 1, 2];
    let floor = 0.5 * 256.0 * (2.0 * PI * E * 1e-3).ln();
    let collapsed = run(
        &GuScore::pixel(&posterior(&net, 1e14), gu_spec(2, sampler.clone())).unwrap(),
        &net,
        &sampler,
        &idx,
    );
    for h in &collapsed.raw[0] {
        approx::assert_relative_eq!(*h, floor, max_relative = 1e-6);
    }
    let by_h: Vec<Vec<f64>> = [1e6, 1e4, 1e2]
        .iter()
        .map(|&h| {
            let post = posterior(&net, h);
            let score = GuScore::pixel(&post, gu_spec(2, sampler.clone())).unwrap();
            run(&score, &net, &sampler, &idx).raw[0].clone()
        })
        .collect();
    for i in 0..idx.len() {
        assert!(
            floor < by_h[0][i] && by_h[0][i] < by_h[1][i] && by_h[1][i] < by_h[2][i],
            "{by_h:?}"
        );
    }
    let short = GuScore::pixel(&post, gu_spec(2, ddim(2, FinalStep::AlphaOne))).unwrap();
    assert_eq!(short.nfe(&sampler).unwrap(), 4 + 3 * 2);
    assert_eq!(run(&short, &net, &sampler, &[5]).nfe, 4 + 3 * 2);
    // The paper's count (GU Sec. 4.3: the MAP sample reused, M·T′ extra NFE), and the MAP member
    // is then the full-T sample: a different mixture, hence a different entropy.
    let mut reuse_spec = gu_spec(2, ddim(2, FinalStep::AlphaOne));
    reuse_spec.rerun_map = false;
    let reuse = GuScore::pixel(&post, reuse_spec).unwrap();
    assert_eq!(reuse.nfe(&sampler).unwrap(), 4 + 2 * 2);
    let (a, b) = (
        run(&reuse, &net, &sampler, &[5]),
        run(&short, &net, &sampler, &[5]),
    );
    assert_eq!(a.nfe, 4 + 2 * 2);
    assert_ne!(a.raw[0][0], b.raw[0][0]);
}

/// A feature extractor defined here: 2×2 average pooling of a 1×16×16 image to 64 features, or
/// (`constant`) 8 zeros whatever the image.
struct Pool {
    constant: bool,
}

impl FeatureExtractor for Pool {
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        if self.constant {
            return Tensor::zeros((b, 8), DType::F32, x.device());
        }
        x.reshape((b, 8, 2, 8, 2))?
            .mean(4)?
            .mean(2)?
            .reshape((b, 64))
    }
    fn id(&self) -> &str {
        if self.constant {
            "constant"
        } else {
            "pool"
        }
    }
}

/// GU semantic (Eqs. 7–8) takes its features from the extractor passed in: with the identity it
/// is the pixel score exactly; with a constant extractor every member agrees and the entropy is
/// the floor ½·8·ln(2πeγ) whatever the posterior; with pooling, batch-independent and above its
/// floor.
#[test]
fn gu_semantic_uses_the_extractor() {
    let net = unet();
    let sampler = ddim(4, FinalStep::AlphaOne);
    let post = posterior(&net, 1e2);
    let spec = gu_spec(2, sampler.clone());
    let pool = Pool { constant: false };
    let semantic = GuScore::semantic(&post, spec.clone(), &pool).unwrap();
    assert_eq!(semantic.name(), "gu-semantic(pool)");
    let s = check_batching(&semantic, &net, &sampler, UNET_TOL);
    let floor64 = 0.5 * 64.0 * (2.0 * PI * E * 1e-3).ln();
    assert!(s.raw[0].iter().all(|&h| h > floor64 + 1e-3), "{:?}", s.raw);
    let idx = [0u64, 1];
    let ident = run(
        &GuScore::semantic(&post, spec.clone(), &Identity).unwrap(),
        &net,
        &sampler,
        &idx,
    );
    let pixel = run(
        &GuScore::pixel(&post, spec.clone()).unwrap(),
        &net,
        &sampler,
        &idx,
    );
    assert_eq!(ident.raw, pixel.raw);
    let constant = Pool { constant: true };
    let c = run(
        &GuScore::semantic(&post, spec, &constant).unwrap(),
        &net,
        &sampler,
        &idx,
    );
    let floor8 = 0.5 * 8.0 * (2.0 * PI * E * 1e-3).ln();
    for h in &c.raw[0] {
        approx::assert_relative_eq!(*h, floor8, max_relative = 1e-12);
    }
}

/// Random: one uniform per sample from its own stream. The same index gets the same value in any
/// batch, order, x_T or network; over 4000 indices the values have mean ½ and variance 1/12
/// (standard errors 0.0046 and 0.0014; tolerance 4 of them) and a Kolmogorov–Smirnov distance
/// below 1.63/√n (the 1% critical value). Its samples are the plain sampler's.
#[test]
fn random_is_a_permutation_invariant_uniform_draw() {
    let sampler = ddim(1, FinalStep::AlphaOne);
    let net = Affine { a: 0.5 };
    let idx: Vec<u64> = (0..4000).collect();
    let u = run(&RandomScore, &net, &sampler, &idx).raw[0].clone();
    let n = u.len() as f64;
    let mean = u.iter().sum::<f64>() / n;
    let var = u.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    approx::assert_abs_diff_eq!(mean, 0.5, epsilon = 4.0 * 0.0046);
    approx::assert_abs_diff_eq!(var, 1.0 / 12.0, epsilon = 4.0 * 0.0014);
    let mut sorted = u.clone();
    sorted.sort_by(f64::total_cmp);
    let ks = sorted
        .iter()
        .enumerate()
        .map(|(i, &v)| (v - i as f64 / n).abs().max(((i + 1) as f64 / n - v).abs()))
        .fold(0.0, f64::max);
    assert!(ks < 1.63 / n.sqrt(), "KS distance {ks}");
    assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
    // Permuted order, another network: same value per index.
    let unet = unet();
    let s = check_batching(&RandomScore, &unet, &ddim(3, FinalStep::AlphaOne), UNET_TOL);
    let picked = run(&RandomScore, &net, &sampler, &[3, 0, 2, 1]).raw[0].clone();
    assert_eq!(picked, vec![u[3], u[0], u[2], u[1]]);
    assert_eq!(s.raw[0], u[..4].to_vec());
}

/// Realism and rarity against a reference set of 40 generated images (indices 100..140) in the
/// pooled feature space: each equals crate::metrics on the samples' features, realism negated;
/// putting the scored samples themselves into the reference set lowers every realism score below
/// −r²/eps (a sample at distance 0 of its own ball of squared radius r²) and bounds its rarity by
/// r.
#[test]
fn realism_and_rarity_score_features_against_the_reference() {
    let net = unet();
    let sampler = ddim(3, FinalStep::AlphaOne);
    let pool = Pool { constant: false };
    let features =
        |s: &Scored| rows_from_tensor("features", &pool.features(&s.samples).unwrap()).unwrap();
    let reference: Vec<u64> = (100..140).collect();
    let (refs, d) = features(&run(&RandomScore, &net, &sampler, &reference));
    let manifold = RealManifold::new(Rows::new(&refs, d), 3).unwrap();
    let opts = RealismVariant::GuRelease.options(3);
    let real_score = RealismScore::new(&manifold, &pool, opts).unwrap();
    let rare_score = RarityScore::new(&manifold, &pool);
    let r = check_batching(&real_score, &net, &sampler, UNET_TOL);
    let q = check_batching(&rare_score, &net, &sampler, UNET_TOL);
    assert_eq!(rows(&r.samples), rows(&q.samples));
    let (own, _) = features(&r);
    let want = realism(Rows::new(&refs, d), Rows::new(&own, d), &opts).unwrap();
    let negated: Vec<f64> = want.iter().map(|v| -v).collect();
    assert_eq!(r.raw[0], negated);
    assert!(r.raw[0].iter().all(|&v| v < 0.0));
    assert_eq!(q.raw[0], manifold.rarity(Rows::new(&own, d)).unwrap());

    let with_own: Vec<f64> = [refs.clone(), own.clone()].concat();
    let bigger = RealManifold::new(Rows::new(&with_own, d), 3).unwrap();
    let radii = bigger.radii();
    let r2 = RealismScore::new(&bigger, &pool, opts).unwrap();
    let q2 = RarityScore::new(&bigger, &pool);
    let r_own = run(&r2, &net, &sampler, &[0, 1, 2, 3]);
    let q_own = run(&q2, &net, &sampler, &[0, 1, 2, 3]);
    for i in 0..4 {
        // Sample i sits at the centre of its own ball (radius r = radii[40 + i] > 0).
        let r = radii[40 + i];
        assert!(r > 0.0);
        assert!(r_own.raw[0][i] <= -r * r / 1e-5 * (1.0 - 1e-9), "{i}");
        assert!(q_own.raw[0][i] <= r, "{i}");
    }
    let e = RealismScore::new(&manifold, &pool, RealismVariant::Paper.options(5))
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("realism k"), "{e}");
}

/// GU Table 1's rank combination: GU (semantic) + realism ranks GU's own samples (same images,
/// same NFE, realism computed on them); the final scores are crate::metrics::rank's combined
/// ranks of the two parts, and permuting the set permutes them. A generating second score is
/// refused.
#[test]
fn rank_combination_ranks_one_sample_set() {
    let net = unet();
    let sampler = ddim(3, FinalStep::AlphaOne);
    let pool = Pool { constant: false };
    let reference: Vec<u64> = (100..130).collect();
    let (refs, d) = rows_from_tensor(
        "reference",
        &pool
            .features(&run(&RandomScore, &net, &sampler, &reference).samples)
            .unwrap(),
    )
    .unwrap();
    let manifold = RealManifold::new(Rows::new(&refs, d), 3).unwrap();
    let post = posterior(&net, 1e2);
    let gu = || GuScore::semantic(&post, gu_spec(2, sampler.clone()), &pool).unwrap();
    let real =
        || RealismScore::new(&manifold, &pool, RealismVariant::GuRelease.options(3)).unwrap();
    let combo = RankCombination::new(Box::new(gu()), Box::new(real())).unwrap();
    assert_eq!(combo.name(), "gu-semantic(pool)+realism(pool)");
    let s = check_batching(&combo, &net, &sampler, UNET_TOL);
    let alone = run(&gu(), &net, &sampler, &[0, 1, 2, 3]);
    assert_eq!(rows(&s.samples), rows(&alone.samples));
    assert_eq!(s.nfe, alone.nfe);
    assert_eq!(s.raw[0], alone.raw[0]);
    let on_gu = real()
        .post_hoc()
        .unwrap()
        .score_samples(&s.samples)
        .unwrap();
    assert_eq!(s.raw[1], on_gu);

    // A set of 8 in two batches.
    let mut raw = RawScores::default();
    for part in [[0u64, 1, 2, 3], [4, 5, 6, 7]] {
        raw.push(&run(&combo, &net, &sampler, &part)).unwrap();
    }
    let fin = combo.finish(&raw.0).unwrap();
    let want = combined_ranks(
        &Score::lowest("gu", &raw.0[0]),
        &Score::lowest("realism", &raw.0[1]),
    )
    .unwrap();
    assert_eq!(fin, want);
    let mut sorted = fin.clone();
    sorted.sort_by(f64::total_cmp);
    assert!(sorted[0] >= 1.0 && sorted[7] <= 8.0);
    let perm = [5usize, 2, 7, 0, 3, 6, 1, 4];
    let permuted: Vec<Vec<f64>> = raw
        .0
        .iter()
        .map(|c| perm.iter().map(|&p| c[p]).collect())
        .collect();
    let fin_p = combo.finish(&permuted).unwrap();
    assert_eq!(fin_p, perm.iter().map(|&p| fin[p]).collect::<Vec<_>>());

    let e = RankCombination::new(Box::new(real()), Box::new(au(AuCompat::Paper)))
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("rank combination: `au`"), "{e}");
    assert!(combo.finish(&raw.0[..1]).is_err());
}

/// One-line errors naming what is wrong with a batch.
#[test]
fn bad_batches_name_the_input() {
    let net = unet();
    let s = schedule();
    let sampler = ddim(2, FinalStep::AlphaOne);
    let bound = Bound::new(&net).with_labels(labels(&[0, 1]));
    let x = x_t(&[0, 1], (1, 16, 16));
    let batch = |idx: &'static [u64], sampler: &SamplerSpec| {
        ScoreBatch {
            net: &bound,
            schedule: &s,
            sampler,
            x_t: &x,
            indices: idx,
            streams: SeedStreams::new(1),
        }
        .validate()
        .err()
        .map(|e| e.to_string())
    };
    assert_eq!(batch(&[0, 1], &sampler), None);
    assert_eq!(
        batch(&[0, 1, 2], &sampler).unwrap(),
        "sample indices: 3 indices for x_T's batch of 2"
    );
    let bad = SamplerSpec {
        steps: 0,
        ..sampler.clone()
    };
    assert!(batch(&[0, 1], &bad).unwrap().starts_with("sampler.steps"));
    let three = Bound::new(&net).with_labels(labels(&[0, 1, 2]));
    let e = RandomScore
        .score(&ScoreBatch {
            net: &three,
            schedule: &s,
            sampler: &sampler,
            x_t: &x,
            indices: &[0, 1],
            streams: SeedStreams::new(1),
        })
        .unwrap_err()
        .to_string();
    assert_eq!(e, "labels: shape [3]; expected (2,), one class per sample");
    assert_eq!(sampler_nfe(&ddim(7, FinalStep::Stop)), 6);
    assert_eq!(sampler_nfe(&dpm2(7)), 14);
}
