//! diffuq's ADM UNet against OpenAI guided-diffusion's own `UNetModel` forward.
//!
//! Expected numbers: golden/adm/<case>/io.safetensors and golden/adm/imagenet*_shapes.json,
//! written by golden/adm_reference.py, which imports guided-diffusion's unet.py, nn.py,
//! fp16_util.py and script_util.py unchanged at commit 22e0df8183507e13a7813f8d38d51b072ca1e67c
//! (torch 2.15.0 CPU): random-init models from the reference `create_model(**flags)` (zero-init
//! convs and GroupNorm affines perturbed), state dicts saved with `torch.save` (model.pt), inputs x,
//! t = [0, 17.5, 999], labels, and `model(x, t, y)` in f32 and, for a `.double()` twin, f64. The
//! f64 reference keeps the reference's float32 sinusoid (diffuq computes the same) and float32
//! attention softmax (diffuq: f64), so the f64 comparison is at 1e-7 (measured ~1e-8) rather than
//! round-off; f32 is compared at rtol 1e-4 (measured ~2e-6).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use diffuq::model::adm::{timestep_embedding, AdmConfig, AdmUNet};
use diffuq::model::conv::Conv2d;
use diffuq::model::loader::load_network;
use diffuq::model::params::ParamSource;
use diffuq::model::{Bound, Denoiser, LastLayerModel, Mode, Network, Prediction};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/adm")
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

fn labels(io: &HashMap<String, Tensor>) -> Option<Tensor> {
    io.get("labels").map(|y| y.to_dtype(DType::U32).unwrap())
}

fn run(net: &dyn Network, io: &HashMap<String, Tensor>, dtype: DType) -> Tensor {
    let x = io["x"].to_dtype(dtype).unwrap();
    net.forward(&x, &times(io), labels(io).as_ref(), &mut Mode::Eval)
        .unwrap()
}

/// The reference forward through `load_network` (f32) and `AdmUNet::load` in f64.
fn check(case: &str, expect: Prediction, channels: usize) {
    let io = io(case);
    let net = load_network(&golden(case), &Device::Cpu).unwrap();
    assert_eq!(net.prediction(), expect);
    let out = run(net.as_ref(), &io, DType::F32);
    assert_eq!(out.dims(), &[3, channels, 16, 16]);
    let (a32, r32) = errs(&out, &io["out"]);
    let net = AdmUNet::load(&golden(case), DType::F64, &Device::Cpu).unwrap();
    let (a64, r64) = errs(&run(&net, &io, DType::F64), &io["out_f64"]);
    eprintln!("{case}: f32 max abs {a32:.2e} rel {r32:.2e}; f64 max abs {a64:.2e} rel {r64:.2e}");
    assert!(r32 < 1e-4, "{case}: f32 relative error {r32:e}");
    assert!(r64 < 1e-7, "{case}: f64 relative error {r64:e}");
}

#[test]
fn imagenet64_release_layout_matches_guided_diffusion() {
    // class_cond, learn_sigma, scale-shift norm, up/down ResBlocks, new attention order,
    // num_head_channels: the released 64×64 model's flags at 16², 32 channels.
    check("imagenet64_tiny", Prediction::EpsilonLearnedVariance, 6);
}

#[test]
fn legacy_attention_conv_resampling_fp16_torso_matches_guided_diffusion() {
    // Legacy heads (num_heads 2, num_heads_upsample 4), conv Down/Upsample, additive time
    // embedding, unconditional, 3 channels; conv tensors stored as float16 (convert_to_fp16).
    check("legacy_tiny", Prediction::Epsilon, 3);
}

#[test]
fn weight_file_with_config_beside_loads_the_same_network() {
    let io = io("legacy_tiny");
    let by_dir = load_network(&golden("legacy_tiny"), &Device::Cpu).unwrap();
    let by_file = load_network(&golden("legacy_tiny").join("model.pt"), &Device::Cpu).unwrap();
    let a = run(by_dir.as_ref(), &io, DType::F32);
    let b = run(by_file.as_ref(), &io, DType::F32);
    assert_eq!(errs(&a, &b).0, 0.0);
    assert_eq!(by_file.name(), "model");
    assert_eq!(by_dir.name(), "legacy_tiny");
    assert_eq!(by_dir.num_classes(), None);
}

#[test]
fn timestep_embedding_matches_the_reference_sinusoid() {
    // t_emb: nn.timestep_embedding(t, C) as the reference forward computed it (float32).
    for case in ["imagenet64_tiny", "legacy_tiny"] {
        let io = io(case);
        let (n, c) = io["t_emb"].dims2().unwrap();
        let ours =
            Tensor::from_vec(timestep_embedding(&times(&io), c), (n, c), &Device::Cpu).unwrap();
        let (abs, _) = errs(&ours, &io["t_emb"]);
        // Both round the f32 phase's sin/cos to f32; torch's vectorised kernels may differ by
        // an ulp.
        assert!(abs <= 2.4e-7, "{case}: {abs:e}");
    }
}

#[test]
fn last_layer_features_are_the_reference_input_of_out_2_and_reassemble_the_output() {
    let io = io("imagenet64_tiny");
    let net = AdmUNet::load(&golden("imagenet64_tiny"), DType::F32, &Device::Cpu).unwrap();
    let y = labels(&io).unwrap();
    let bound = Bound::new(&net).with_labels(y);
    let x = &io["x"];
    let t = times(&io);
    // φ = im2col of out.2's input, which the reference recorded as `feat`.
    let phi = bound.features(x, &t).unwrap();
    assert_eq!(phi.dims(), &[3, 256, 32 * 9]);
    let (w, b) = bound.last_layer().unwrap();
    assert_eq!(w.dims(), &[6, 32 * 9]);
    let as_conv = Conv2d::new(w.reshape((6, 32, 3, 3)).unwrap(), b.clone(), 1, 1);
    let reference_phi = as_conv.patches(&io["feat"]).unwrap();
    let (_, rel) = errs(&phi, &reference_phi);
    assert!(
        rel < 1e-4,
        "features vs the reference's out.2 input: {rel:e}"
    );
    // W φ + b reassembled is the forward output (the reference's, within f32 round-off), and
    // its first 3 channels are ε (GU's ε rows of out.2).
    let out = phi
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b.unwrap())
        .unwrap();
    let via_ll = bound.assemble(&out).unwrap();
    let direct = net
        .forward(x, &t, labels(&io).as_ref(), &mut Mode::Eval)
        .unwrap();
    assert!(errs(&via_ll, &direct).1 < 1e-5);
    assert!(errs(&via_ll, &io["out"]).1 < 1e-4);
    let eps = bound.output_to_eps(x, t[1], via_ll.clone()).unwrap();
    assert_eq!(eps.dims(), &[3, 3, 16, 16]);
    assert_eq!(
        errs(&eps, &via_ll.narrow(1, 0, 3).unwrap()).0,
        0.0,
        "ε is the first 3 of 6 channels"
    );
    let back = bound.disassemble(&via_ll).unwrap();
    assert_eq!(errs(&back, &out).0, 0.0);
    // Denoiser view at one shared t: ε of the labelled batch.
    let e = bound.eps(x, 999.0).unwrap();
    assert_eq!(e.dims(), &[3, 3, 16, 16]);
    assert!(bound.as_last_layer().is_some());
}

/// (flags, num_parameters, sorted [(name, shape)]) of a shapes file.
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
        v["flags"].clone(),
        v["num_parameters"].as_u64().unwrap(),
        tensors,
    )
}

#[test]
fn released_checkpoint_layouts_have_guided_diffusions_names_and_shapes() {
    // Expected: the state dicts of the reference create_model(**README flags) built on the meta
    // device: 64×64 (295,904,454 parameters), 128×128 (421,529,606), 256×256 and 512×512 (the
    // 0.5 channel multiplier). The flags alone are given; the rest are defaults.
    for (file, params) in [
        ("imagenet64_shapes.json", 295_904_454u64),
        ("imagenet128_shapes.json", 421_529_606),
        ("imagenet256_shapes.json", 553_838_086),
        ("imagenet512_shapes.json", 558_997_638),
    ] {
        let (flags, n, expected) = shapes_file(file);
        assert_eq!(n, params, "{file}");
        let cfg = AdmConfig::from_json(flags, file).unwrap();
        let got = AdmUNet::parameter_shapes(&cfg).unwrap();
        assert_eq!(got, expected, "{file}");
        let total: usize = got.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(total as u64, n, "{file}");
    }
    // GU's last layer: out.2 of the 128×128 model, 6·256·9 + 6 = 13,830 parameters.
    let (_, _, t) = shapes_file("imagenet128_shapes.json");
    let out2: usize = t
        .iter()
        .filter(|(k, _)| k.starts_with("out.2."))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(out2, 13_830);
}

fn tensors(case: &str) -> Vec<(String, Tensor)> {
    diffuq::checkpoint::read_tensors(&golden(case).join("model.pt")).unwrap()
}

/// Build imagenet64_tiny from `tensors` as the loader does; the error line, or "ok".
fn build(tensors: Vec<(String, Tensor)>) -> String {
    let cfg = AdmConfig::from_json_file(&golden("imagenet64_tiny").join("config.json")).unwrap();
    let (vb, src) =
        ParamSource::load(tensors, "weights x/model.pt").var_builder(DType::F32, &Device::Cpu);
    match AdmUNet::new(&cfg, vb, "t").and_then(|_| src.finish()) {
        Ok(()) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_misshaped_and_unused_tensors_are_named() {
    let base = tensors("imagenet64_tiny");
    assert_eq!(build(base.clone()), "ok");
    let missing: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "out.2.weight")
        .cloned()
        .collect();
    let e = build(missing);
    assert!(
        e.contains("x/model.pt") && e.contains("`out.2.weight`") && e.contains("missing"),
        "{e}"
    );
    let mut wrong = base.clone();
    for (k, v) in wrong.iter_mut() {
        if k == "label_emb.weight" {
            *v = Tensor::zeros((1000, 128), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = build(wrong);
    assert!(
        e.contains("`label_emb.weight`") && e.contains("[1000, 128]") && e.contains("[10, 128]"),
        "{e}"
    );
    let mut extra = base;
    extra.push((
        "input_blocks.9.0.in_layers.0.weight".into(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    ));
    let e = build(extra);
    assert!(
        e.contains("`input_blocks.9.0.in_layers.0.weight`") && e.contains("config"),
        "{e}"
    );
}

#[test]
fn a_config_that_does_not_match_the_weights_is_an_error_naming_file_and_tensor() {
    // The loader's own path: config.json + model.pt in a directory, the config edited.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        golden("legacy_tiny").join("model.pt"),
        dir.path().join("model.pt"),
    )
    .unwrap();
    let cfg_text = std::fs::read_to_string(golden("legacy_tiny").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    v["use_scale_shift_norm"] = true.into();
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let e = load_network(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.pt") && e.contains("emb_layers.1.weight") && e.contains("[32, 128]"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    // An unknown key names the key and the config file.
    v["use_scale_shift_norm"] = false.into();
    v["num_res_block"] = 2.into();
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let e = load_network(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("`num_res_block`"),
        "{e}"
    );
    // No config beside a bare .pt: the loader says what it looked for.
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(
        golden("legacy_tiny").join("model.pt"),
        bare.path().join("w.pt"),
    )
    .unwrap();
    let e = load_network(&bare.path().join("w.pt"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("w.pt") && e.contains("unknown architecture"),
        "{e}"
    );
    // <stem>.json beside the weights is read as its config.
    std::fs::write(bare.path().join("w.json"), &cfg_text).unwrap();
    let net = load_network(&bare.path().join("w.pt"), &Device::Cpu).unwrap();
    assert_eq!(net.name(), "w");
}

#[test]
fn model_eval_cli_reads_an_adm_checkpoint() {
    // `diffuq model eval` on the weight file: the reference's f32 output at rtol 1e-4.
    let dir = tempfile::tempdir().unwrap();
    let io = io("imagenet64_tiny");
    let p = |n: &str| dir.path().join(n).display().to_string();
    io["x"].write_npy(p("x.npy")).unwrap();
    io["t"].write_npy(p("t.npy")).unwrap();
    io["labels"].write_npy(p("labels.npy")).unwrap();
    let weights = golden("imagenet64_tiny").join("model.pt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffuq"))
        .args(["model", "eval", &weights.display().to_string()])
        .args(["--input", &p("x.npy"), "--t-file", &p("t.npy")])
        .args(["--labels", &p("labels.npy"), "--out", &p("out.npy")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = Tensor::read_npy(p("out.npy")).unwrap();
    let (_, rel) = errs(&got, &io["out"]);
    assert!(rel < 1e-4, "{rel:e}");
}
