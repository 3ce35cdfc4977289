//! Every uncertainty method runs on a class-conditional network through the one network layer:
//! AU (Alg. 1), AU guidance (Alg. 2), MC-Dropout, the last-layer Laplace fit, GU's generation
//! with posterior draws, and BayesDiff's variance propagation — all on diffusers' tiny
//! class-conditional UNet2DModel (golden/unet2d/tiny_class, written by diffusers 0.31.0 via
//! golden/unet2d_reference.py) bound to labels with `Bound`.
//!
//! Expected values are properties that hold whatever the weights: a label change changes ε (the
//! labels reach the network inside every method's batched calls); dropout off gives zero
//! MC-Dropout variance and dropout on a positive one; a posterior draw equal to the MAP reproduces
//! the network's own ε; GU with identical members has zero spread.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use diffuq::model::unet2d::UNet2D;
use diffuq::model::{Bound, Denoiser};
use diffuq::sampler::spec::SamplerSpec;
use diffuq::sampler::StreamNoise;
use diffuq::schedule::{NoiseSchedule, ScheduleKind};
use diffuq::seed::SeedStreams;
use diffuq::uq::au::{self, AuCompat, AuSpec, StepWindow};
use diffuq::uq::guidance::{self, BatchReduction, GuidanceSpec, Sign};
use diffuq::uq::laplace::{FisherAccumulator, LaplaceSpec, LastLayerDraw, WithLastLayer};

fn net() -> UNet2D {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/unet2d/tiny_class");
    UNet2D::load(&dir, DType::F32, &Device::Cpu).unwrap()
}

fn labels(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

fn x(n: usize, seed: u64) -> Tensor {
    let s = SeedStreams::new(seed);
    let idx: Vec<u64> = (0..n as u64).collect();
    Tensor::from_vec(
        s.purpose("x").normals(&idx, None, 256),
        (n, 1, 16, 16),
        &Device::Cpu,
    )
    .unwrap()
}

fn max_abs(a: &Tensor) -> f64 {
    a.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn schedule() -> NoiseSchedule {
    NoiseSchedule::new(ScheduleKind::Linear, 1e-4, 0.02, 1000)
}

fn au_spec() -> AuSpec {
    AuSpec {
        m: 3,
        ddof: diffuq::uq::au::Ddof::Minus(1),
        compat: AuCompat::Paper,
        clip_sample: None,
    }
}

#[test]
fn au_and_guidance_see_the_labels() {
    let net = net();
    let s = schedule();
    let x = x(2, 1);
    let idx = [0u64, 1];
    let purpose = SeedStreams::new(0).purpose("au");
    let u_of = |y: &[u32]| {
        let b = Bound::new(&net).with_labels(labels(y));
        let eps = b.eps(&x, 300.0).unwrap();
        au::uncertainty(&b, &s, &x, &eps, 300.0, 2, &idx, &purpose, &au_spec()).unwrap()
    };
    let (u1, u2) = (u_of(&[1, 2]), u_of(&[7, 2]));
    assert_eq!(u1.dims(), &[2, 1, 16, 16]);
    assert!(max_abs(&u1) > 0.0);
    // Row 0's label changed, row 1's did not: only row 0's uncertainty moves.
    let d = (&u1 - &u2).unwrap();
    assert!(max_abs(&d.get(0).unwrap()) > 0.0);
    assert_eq!(max_abs(&d.get(1).unwrap()), 0.0);

    let b = Bound::new(&net).with_labels(labels(&[1, 2]));
    let eps = b.eps(&x, 300.0).unwrap();
    let spec = GuidanceSpec {
        au: au_spec(),
        percentile: 0.9,
        threshold: guidance::Threshold::PerImage,
        strength: 0.5,
        sign: Sign::Descent,
        batch: BatchReduction::PerImage,
        window: StepWindow::all(5),
    };
    let g = guidance::guide(&b, &s, &x, &eps, 300.0, 2, &idx, &purpose, &spec, None).unwrap();
    assert!(
        max_abs(&g.grad) > 0.0,
        "autograd reaches ε through the UNet"
    );
    let guided = max_abs(&(&g.eps_hat - &eps).unwrap());
    assert!(guided > 0.0);
}

#[test]
fn mc_dropout_uses_the_networks_dropout() {
    // tiny_class has dropout 0.1 in every resnet: active masks give a positive variance.
    let net = net();
    let b = Bound::new(&net).with_labels(labels(&[3, 4]));
    let x = x(2, 2);
    let purpose = SeedStreams::new(0).purpose("mc-dropout");
    let u = diffuq::uq::mc_dropout::uncertainty(&b, &x, 500.0, 0, &[0, 1], &purpose, 4, 1).unwrap();
    assert_eq!(u.dims(), &[2, 1, 16, 16]);
    assert!(max_abs(&u) > 0.0);
}

#[test]
fn laplace_gu_and_bayesdiff_run_on_the_conv_last_layer() {
    let net = net();
    let s = schedule();
    let y = labels(&[0, 5, 9]);
    let b = Bound::new(&net).with_labels(y.clone());
    assert!(b.as_last_layer().is_some());
    // Laplace fit on a batch with its own t and ε per item.
    let x0 = x(3, 3);
    let eps = x(3, 4);
    let t = [10.0, 400.0, 900.0];
    let mut acc = FisherAccumulator::new(&b, LaplaceSpec::GU).unwrap();
    let ab: Vec<f64> = t.iter().map(|&t| s.alpha_bar_at(t)).collect();
    let rows: Vec<Tensor> = (0..3)
        .map(|i| {
            let xi = x0.get(i).unwrap();
            let ei = eps.get(i).unwrap();
            ((xi * ab[i].sqrt()).unwrap() + (ei * (1.0 - ab[i]).sqrt()).unwrap()).unwrap()
        })
        .collect();
    let x_t = Tensor::stack(&rows, 0).unwrap();
    acc.add(&x_t, &t, &eps).unwrap();
    let post = acc.finish();
    assert_eq!(post.h_w.dims(), &[1, 16 * 9]);
    assert!(max_abs(&post.h_w) > 0.0);

    // The MAP draw through WithLastLayer is the network's own ε.
    let map = LastLayerDraw {
        w: post.w_map.clone(),
        b: post.b_map.clone(),
    };
    let with = WithLastLayer {
        model: &b,
        draw: &map,
    };
    let direct = b.eps(&x_t, 250.0).unwrap();
    let via = with.eps(&x_t, 250.0).unwrap().to_dtype(DType::F32).unwrap();
    assert!(max_abs(&(&via - &direct).unwrap()) < 1e-4 * max_abs(&direct));

    // GU Alg. 1: MAP sample plus M posterior-draw samples from the same x_T.
    let sampler: SamplerSpec = toml::from_str(
        r#"name = "ddim"
steps = 3
eta = 0.0
spacing = "leading"
steps_offset = 0
continuous_spacing = "time-uniform"
r1 = 0.5
final_step = "alpha-one"
clip_sample = true
clip_range = 1.0"#,
    )
    .unwrap();
    let gu = diffuq::uq::gu::GuSpec {
        m: 2,
        include_map: true,
        gamma2: 1e-3,
        compat: diffuq::uq::gu::GuCompat::Paper,
        sampler: sampler.clone(),
        rerun_map: false,
    };
    let streams = SeedStreams::new(5);
    let idx = [0u64, 1, 2];
    let noise = StreamNoise {
        purpose: streams.purpose("noise"),
        indices: &idx,
        dim: 256,
        device: &Device::Cpu,
    };
    let out = diffuq::uq::gu::generate(
        &b,
        &post,
        &s,
        &sampler,
        &gu,
        &x(3, 6),
        &noise,
        &diffuq::features::Identity,
        &streams.purpose("draws"),
    )
    .unwrap();
    assert_eq!(out.entropy.len(), 3);
    assert!(out.entropy.iter().all(|h| h.is_finite()));
    assert_eq!(out.nfe, 3 * 3);

    // BayesDiff: propagated variance through DDIM is positive and finite.
    let llla = diffuq::uq::bayesdiff::Llla {
        model: &b,
        posterior: &post,
    };
    let bd = diffuq::uq::bayesdiff::ddim(
        &llla,
        &s,
        &[600, 300, 0],
        &x(3, 7),
        &diffuq::uq::bayesdiff::BayesDiffSpec {
            mc: 2,
            every: 1,
            variance: diffuq::uq::bayesdiff::VarianceRule::Total,
        },
        &streams.purpose("bd"),
        &idx,
    )
    .unwrap();
    assert_eq!(bd.score.len(), 3);
    assert!(
        bd.score.iter().all(|v| v.is_finite() && *v > 0.0),
        "{:?}",
        bd.score
    );
}
