//! diffuq's DiT against facebookresearch/DiT's own `DiT` forward and diffusers'
//! `DiTTransformer2DModel`.
//!
//! Expected numbers: golden/dit/<case>/io.safetensors and golden/dit/xl2_{256,512}_shapes.json,
//! written by golden/dit_reference.py, which imports facebookresearch/DiT's models.py unchanged at
//! commit ed81ce2229091fd4ecc9a223645f95cf379d582b (with timm 1.0.31's PatchEmbed, Attention and
//! Mlp) and diffusers 0.31.0 (torch 2.15.0 CPU): a random-init DiT (input 8, patch 2, 4 channels,
//! hidden 64, depth 2, 2 heads, 10 classes + the null row, learn_sigma; zero-initialised adaLN,
//! final-layer and bias tensors perturbed) saved with `torch.save` (tiny/model.pt), the same
//! weights renamed into a `DiTTransformer2DModel` with block 1's embedding copy perturbed and
//! written by `save_pretrained` (diffusers_tiny/), inputs x, t = [0, 17.5, 500.25, 999],
//! labels [7, 10 (null), 0, 9], and each library's forward in f32 and, for a `.double()` twin,
//! f64. f32 is compared at rtol 1e-4 (max |a − b| / max |b|; measured ~3e-7). Both f64 twins keep
//! the references' float32 sinusoid, whose frequencies torch's vectorised expf rounds differently
//! from a correctly rounded one by an ulp at a few k: at t = 999 that moves the output by ~1e-8
//! (facebook) / ~7e-8 (diffusers) relative, so f64 is compared at 1e-6 overall and at 1e-12 on the
//! t = 0 row, where the sinusoid is exact (measured ~4e-16).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use diffuq::model::dit::{timestep_embedding, DiT, DiTConfig, Naming};
use diffuq::model::params::ParamSource;
use diffuq::model::{Bound, Denoiser, LastLayerModel, Mode, Network, Prediction};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/dit")
        .join(case)
}

fn io(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden(case).join("io.safetensors"), &Device::Cpu).unwrap()
}

/// (max |a − b|, max |a − b| / max |b|).
fn errs(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    assert_eq!(a.dims(), b.dims());
    let d = (a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let m = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    (d, d / m)
}

fn times(io: &HashMap<String, Tensor>) -> Vec<f64> {
    io["t"].to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn labels(io: &HashMap<String, Tensor>) -> Tensor {
    io["labels"].to_dtype(DType::U32).unwrap()
}

fn run(net: &dyn Network, io: &HashMap<String, Tensor>, dtype: DType) -> Tensor {
    let x = io["x"].to_dtype(dtype).unwrap();
    net.forward(&x, &times(io), Some(&labels(io)), &mut Mode::Eval)
        .unwrap()
}

/// The reference forward in f32 and f64.
fn check(case: &str, naming: Naming) {
    let io = io(case);
    let net = DiT::load(&golden(case), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(net.naming(), naming);
    assert_eq!(net.prediction(), Prediction::EpsilonLearnedVariance);
    assert_eq!(net.num_classes(), Some(10));
    let out = run(&net, &io, DType::F32);
    assert_eq!(out.dims(), &[4, 8, 8, 8]);
    let (a32, r32) = errs(&out, &io["out"]);
    let net = DiT::load(&golden(case), DType::F64, &Device::Cpu).unwrap();
    let out64 = run(&net, &io, DType::F64);
    let (a64, r64) = errs(&out64, &io["out_f64"]);
    // Row 0 has t = 0, where the f32 sinusoid is exact in both (cos 0, sin 0): there the f64
    // forward is compared at f64 round-off.
    let row0 = |t: &Tensor| t.narrow(0, 0, 1).unwrap();
    let (_, r0) = errs(&row0(&out64), &row0(&io["out_f64"]));
    eprintln!(
        "{case}: f32 max abs {a32:.2e} rel {r32:.2e}; f64 max abs {a64:.2e} rel {r64:.2e} (t = 0 row: rel {r0:.2e})"
    );
    assert!(r32 < 1e-4, "{case}: f32 relative error {r32:e}");
    assert!(r64 < 1e-6, "{case}: f64 relative error {r64:e}");
    assert!(r0 < 1e-12, "{case}: f64 relative error at t = 0 {r0:e}");
}

#[test]
fn facebook_naming_matches_facebookresearch_dit() {
    check("tiny", Naming::Facebook);
}

#[test]
fn diffusers_naming_matches_diffusers_dit_transformer() {
    // Per-block embeddings (block 1's copy differs), downscale_freq_shift 1, norm3 ε 1e-5.
    check("diffusers_tiny", Naming::Diffusers);
}

#[test]
fn the_two_namings_are_different_networks_on_the_same_weights() {
    // The fixtures share every weight but block 1's embedding copy; the references' outputs
    // differ by more than round-off, and so do diffuq's (each matches its own library above).
    let (_, rel) = errs(&io("tiny")["out"], &io("diffusers_tiny")["out"]);
    assert!(rel > 1e-3, "{rel:e}");
}

#[test]
fn timestep_sinusoids_match_the_references() {
    // t_freq: DiT's TimestepEmbedder.timestep_embedding(t, 256) and diffusers' Timesteps(256,
    // flip_sin_to_cos=True, downscale_freq_shift=1), as the reference forwards made them.
    for (case, shift) in [("tiny", 0.0f32), ("diffusers_tiny", 1.0)] {
        let io = io(case);
        let ours = Tensor::from_vec(
            timestep_embedding(&times(&io), 256, shift),
            (4, 256),
            &Device::Cpu,
        )
        .unwrap();
        let (abs, _) = errs(&ours, &io["t_freq"]);
        // torch's vectorised (SLEEF) expf differs from the correctly rounded one by an ulp at a
        // few of the 128 frequencies (2 for shift 0), which at t = 999 moves the f32 phase by up
        // to ~3e-5; everything else agrees to an ulp of sin/cos.
        eprintln!("{case}: sinusoid max abs {abs:.2e}");
        assert!(abs <= 1e-4, "{case}: {abs:e}");
        // The other shift is another sinusoid.
        let other = Tensor::from_vec(
            timestep_embedding(&times(&io), 256, 1.0 - shift),
            (4, 256),
            &Device::Cpu,
        )
        .unwrap();
        assert!(errs(&other, &io["t_freq"]).0 > 1e-2, "{case}");
    }
}

#[test]
fn last_layer_features_are_the_reference_input_of_final_layer_linear_and_reassemble() {
    for case in ["tiny", "diffusers_tiny"] {
        let io = io(case);
        let net = DiT::load(&golden(case), DType::F32, &Device::Cpu).unwrap();
        let bound = Bound::new(&net).with_labels(labels(&io));
        let x = &io["x"];
        let t = times(&io);
        // φ: the modulated, normalised tokens entering final_layer.linear (proj_out_2).
        let phi = bound.features(x, &t).unwrap();
        assert_eq!(phi.dims(), &[4, 16, 64]);
        let (_, rel) = errs(&phi, &io["feat"]);
        eprintln!("{case}: features max rel {rel:.2e}");
        assert!(rel < 1e-4, "{case}: features vs the reference's {rel:e}");
        let (w, b) = bound.last_layer().unwrap();
        assert_eq!(w.dims(), &[2 * 2 * 8, 64]);
        // W φ + b unpatchified is the forward output.
        let out = phi
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b.unwrap())
            .unwrap();
        let via_ll = bound.assemble(&out).unwrap();
        let direct = run(&net, &io, DType::F32);
        assert!(errs(&via_ll, &direct).1 < 1e-6, "{case}");
        assert!(errs(&via_ll, &io["out"]).1 < 1e-4, "{case}");
        assert_eq!(errs(&bound.disassemble(&via_ll).unwrap(), &out).0, 0.0);
        // ε is the first 4 of 8 channels.
        let eps = bound.output_to_eps(x, t[1], via_ll.clone()).unwrap();
        assert_eq!(errs(&eps, &via_ll.narrow(1, 0, 4).unwrap()).0, 0.0);
        let e = bound.eps(x, 999.0).unwrap();
        assert_eq!(e.dims(), &[4, 4, 8, 8]);
        assert!(bound.as_last_layer().is_some());
    }
}

/// (config, num_parameters, sorted [(name, shape)]) of a shapes file.
fn shapes_file(name: &str) -> (serde_json::Value, u64, Vec<(String, Vec<usize>)>) {
    let text = std::fs::read_to_string(golden(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_string(),
                e[1].as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect();
    tensors.sort();
    (
        v["config"].clone(),
        v["num_parameters"].as_u64().unwrap(),
        tensors,
    )
}

#[test]
fn released_xl2_layouts_have_the_reference_names_and_shapes() {
    // Expected: the state dicts of DiT_models['DiT-XL/2'](input_size=32 / 64) built on the meta
    // device (675,129,632 / 676,014,368 parameters; pos_embed included).
    for (file, cfg, params) in [
        ("xl2_256_shapes.json", DiTConfig::xl2_256(), 675_129_632u64),
        ("xl2_512_shapes.json", DiTConfig::xl2_512(), 676_014_368),
    ] {
        let (c, n, expected) = shapes_file(file);
        assert_eq!(n, params, "{file}");
        assert_eq!(DiTConfig::from_json(c, file).unwrap(), cfg, "{file}");
        let got = DiT::parameter_shapes(&cfg).unwrap();
        assert_eq!(got, expected, "{file}");
        let total: usize = got.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(total as u64, n, "{file}");
        // The label table holds the 1000 classes and the null row.
        assert!(got.contains(&("y_embedder.embedding_table.weight".into(), vec![1001, 1152])));
    }
    // GU's last layer: final_layer.linear, 2·2·8 outputs of 1152 features: 36,896 parameters.
    let (_, _, t) = shapes_file("xl2_256_shapes.json");
    let ll: usize = t
        .iter()
        .filter(|(k, _)| k.starts_with("final_layer.linear."))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(ll, 36_896);
}

#[test]
fn weight_file_with_stem_config_and_train_checkpoint_ema_load_the_same_network() {
    let io_fb = io("tiny");
    let io_d = io("diffusers_tiny");
    let io = io_fb;
    let reference = run(
        &DiT::load(&golden("tiny"), DType::F32, &Device::Cpu).unwrap(),
        &io,
        DType::F32,
    );
    // The released layout: DiT-XL-2-256x256.pt with its config as <stem>.json.
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("DiT-tiny.pt");
    std::fs::copy(golden("tiny").join("model.pt"), &pt).unwrap();
    std::fs::copy(
        golden("tiny").join("config.json"),
        dir.path().join("DiT-tiny.json"),
    )
    .unwrap();
    assert!(DiT::config_for(&pt).is_some());
    let net = DiT::load(&pt, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(net.name(), "DiT-tiny");
    assert_eq!(errs(&run(&net, &io, DType::F32), &reference).0, 0.0);
    // A train.py checkpoint {"model", "ema", ...}: the ema weights are used.
    let tensors = diffuq::checkpoint::read_tensors(&golden("tiny").join("model.pt")).unwrap();
    let mut both = HashMap::new();
    for (k, v) in &tensors {
        both.insert(format!("ema.{k}"), v.clone());
        both.insert(format!("model.{k}"), (v * 0.5).unwrap());
    }
    let st = dir.path().join("0400000.safetensors");
    candle_core::safetensors::save(&both, &st).unwrap();
    std::fs::copy(
        golden("tiny").join("config.json"),
        dir.path().join("0400000.json"),
    )
    .unwrap();
    let net = DiT::load(&st, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(errs(&run(&net, &io, DType::F32), &reference).0, 0.0);
    // The diffusers weight file itself, config.json beside it.
    let w = golden("diffusers_tiny").join("diffusion_pytorch_model.safetensors");
    assert!(DiT::config_for(&w).is_some());
    let net = DiT::load(&w, DType::F32, &Device::Cpu).unwrap();
    assert!(errs(&run(&net, &io, DType::F32), &io_d["out"]).1 < 1e-4);
    // Not a DiT: no config, or another architecture's.
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(golden("tiny").join("model.pt"), bare.path().join("w.pt")).unwrap();
    assert!(DiT::config_for(&bare.path().join("w.pt")).is_none());
    let e = DiT::load(&bare.path().join("w.pt"), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("w.pt") && e.contains("no config"), "{e}");
    let adm = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/adm/legacy_tiny");
    assert!(DiT::config_for(&adm).is_none());
}

fn tensors(case: &str, file: &str) -> Vec<(String, Tensor)> {
    diffuq::checkpoint::read_tensors(&golden(case).join(file)).unwrap()
}

/// Build the tiny facebook case from `tensors` as the loader does; the error line, or "ok".
fn build(tensors: Vec<(String, Tensor)>) -> String {
    let cfg = DiTConfig::from_json_file(&golden("tiny").join("config.json")).unwrap();
    let (vb, src) =
        ParamSource::load(tensors, "weights x/model.pt").var_builder(DType::F32, &Device::Cpu);
    match DiT::new(&cfg, vb, "t").and_then(|_| src.finish()) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_misshaped_and_unused_tensors_are_named() {
    let base = tensors("tiny", "model.pt");
    assert_eq!(build(base.clone()), "ok");
    let missing: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "final_layer.linear.weight")
        .cloned()
        .collect();
    let e = build(missing);
    assert!(
        e.contains("x/model.pt")
            && e.contains("`final_layer.linear.weight`")
            && e.contains("missing"),
        "{e}"
    );
    let mut wrong = base.clone();
    for (k, v) in wrong.iter_mut() {
        if k == "y_embedder.embedding_table.weight" {
            *v = Tensor::zeros((10, 64), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = build(wrong);
    assert!(
        e.contains("`y_embedder.embedding_table.weight`")
            && e.contains("[10, 64]")
            && e.contains("[11, 64]"),
        "{e}"
    );
    let mut extra = base;
    extra.push((
        "blocks.2.attn.qkv.weight".into(),
        Tensor::zeros((192, 64), DType::F32, &Device::Cpu).unwrap(),
    ));
    let e = build(extra);
    assert!(
        e.contains("`blocks.2.attn.qkv.weight`") && e.contains("config"),
        "{e}"
    );
}

/// A copy of a case directory in a temp dir, with `edit` applied to its config.
fn edited(case: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(golden(case)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let text = std::fs::read_to_string(golden(case).join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let e = DiT::load(dir, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn configs_that_do_not_match_the_weights_are_one_line_errors() {
    // facebook: a config with another depth names the first block the weights lack.
    let d = edited("tiny", |v| v["depth"] = 3.into());
    let e = load_err(d.path());
    assert!(
        e.contains("model.pt") && e.contains("`blocks.2.") && e.contains("missing"),
        "{e}"
    );
    // An unknown key names the key and the config file.
    let d = edited("tiny", |v| v["hidden"] = 64.into());
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("`hidden`"), "{e}");
    // diffusers: another width (heads × head_dim) names the file and the first tensor it misfits.
    let d = edited("diffusers_tiny", |v| v["attention_head_dim"] = 16.into());
    let e = load_err(d.path());
    assert!(
        e.contains("diffusion_pytorch_model.safetensors")
            && e.contains("`transformer_blocks.0.norm1.emb.timestep_embedder.linear_1.bias`")
            && e.contains("shape [64], the architecture expects [32]"),
        "{e}"
    );
    let d = edited("diffusers_tiny", |v| v["num_embeds_ada_norm"] = 1000.into());
    let e = load_err(d.path());
    assert!(
        e.contains("embedding_table.weight") && e.contains("[1001, 64]"),
        "{e}"
    );
    let d = edited("diffusers_tiny", |v| v["norm_typ"] = "x".into());
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("`norm_typ`"), "{e}");
    let d = edited("diffusers_tiny", |v| v["activation_fn"] = "geglu".into());
    let e = load_err(d.path());
    assert!(e.contains("`activation_fn`") && e.contains("geglu"), "{e}");
    // Weights of the other naming under a config.
    let d = edited("diffusers_tiny", |v| {
        *v = serde_json::from_str(
            &std::fs::read_to_string(golden("tiny").join("config.json")).unwrap(),
        )
        .unwrap()
    });
    std::fs::rename(
        d.path().join("diffusion_pytorch_model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::remove_file(d.path().join("io.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors")
            && e.contains("diffusers")
            && e.contains("`pos_embed.proj.weight`"),
        "{e}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let io = io("tiny");
    let net = DiT::load(&golden("tiny"), DType::F32, &Device::Cpu).unwrap();
    let x = &io["x"];
    let t = times(&io);
    let fwd = |x: &Tensor, t: &[f64], y: Option<&Tensor>| {
        net.forward(x, t, y, &mut Mode::Eval)
            .unwrap_err()
            .to_string()
    };
    let y = Tensor::new(&[1u32, 11, 0, 0], &Device::Cpu).unwrap();
    let e = fwd(x, &t, Some(&y));
    assert!(e.contains("label 11") && e.contains("null class"), "{e}");
    assert!(fwd(x, &t, None).contains("labels are required"));
    let e = fwd(x, &t[..2], Some(&labels(&io)));
    assert!(e.contains("2 timesteps"), "{e}");
    let small = x.narrow(2, 0, 4).unwrap().narrow(3, 0, 4).unwrap();
    let e = fwd(&small, &t, Some(&labels(&io)));
    assert!(e.contains("(N, 4, 8, 8)"), "{e}");
    // Label 10 (the null class) and one shared time are fine.
    let null = Tensor::new(&[10u32; 4], &Device::Cpu).unwrap();
    let out = net
        .forward(x, &[250.0], Some(&null), &mut Mode::Eval)
        .unwrap();
    assert_eq!(out.dims(), &[4, 8, 8, 8]);
}
