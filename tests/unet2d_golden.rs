//! diffuq's UNet2D against diffusers' own UNet2DModel forward.
//!
//! Expected numbers: golden/unet2d/<case>/io.safetensors, written by golden/unet2d_reference.py
//! (diffusers 0.31.0, torch 2.15.0 CPU): random-init checkpoints saved with `save_pretrained`,
//! inputs x, t = [0, 17.5, 999], labels, and diffusers' `model(x, t, class_labels).sample` in f32
//! and f64. The f64 reference shares diffusers' f32 sinusoid, which diffuq reproduces, so the f64
//! comparison is tight; f32 is compared at rtol 1e-4 (torch's thread count alone moves f32 outputs
//! by ~1e-5).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use diffuq::model::params::ParamSource;
use diffuq::model::unet2d::{UNet2D, UNet2DConfig};
use diffuq::model::{Bound, Denoiser, LastLayerModel, Mode, Network};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/unet2d")
        .join(case)
}

fn io(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden(case).join("io.safetensors"), &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let d = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f64>().unwrap() / m.to_scalar::<f64>().unwrap()
}

fn run(net: &UNet2D, io: &HashMap<String, Tensor>, dtype: DType) -> Tensor {
    let x = io["x"].to_dtype(dtype).unwrap();
    let t: Vec<f64> = io["t"].to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let labels = io.get("labels").map(|y| y.to_dtype(DType::U32).unwrap());
    net.forward(&x, &t, labels.as_ref(), &mut Mode::Eval)
        .unwrap()
}

fn check(case: &str, io_case: &str) {
    let io = io(io_case);
    let dev = Device::Cpu;
    let net = UNet2D::load(&golden(case), DType::F32, &dev).unwrap();
    let e32 = rel_err(&run(&net, &io, DType::F32), &io["out"]);
    assert!(e32 < 1e-4, "{case}: f32 relative error {e32:e}");
    let net = UNet2D::load(&golden(case), DType::F64, &dev).unwrap();
    let e64 = rel_err(&run(&net, &io, DType::F64), &io["out_f64"]);
    assert!(e64 < 1e-6, "{case}: f64 relative error {e64:e}");
}

#[test]
fn tiny_matches_diffusers() {
    check("tiny", "tiny");
}

#[test]
fn class_conditional_scale_shift_bin_matches_diffusers() {
    check("tiny_class", "tiny_class");
}

#[test]
fn legacy_attention_names_load_to_the_same_network() {
    // Same weights under the hub's legacy names: diffusers' own loader gives tiny's output.
    check("tiny_legacy", "tiny");
}

#[test]
fn ddpm_cifar10_layout_at_reduced_width_matches_diffusers() {
    check("cifar10_reduced", "cifar10_reduced");
}

#[test]
fn full_ddpm_cifar10_config_has_diffusers_tensor_names_and_shapes() {
    // Expected: golden/unet2d/cifar10_full_shapes.json, the state dict of diffusers'
    // UNet2DModel(**google/ddpm-cifar10-32 config): 35,746,307 parameters.
    let text = std::fs::read_to_string(golden("cifar10_full_shapes.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg = UNet2DConfig::from_json(v["config"].clone(), "cifar10_full_shapes.json").unwrap();
    let dev = Device::Cpu;
    let varmap = candle_nn::VarMap::new();
    let src = ParamSource::init(diffuq::seed::SeedStreams::new(0).purpose("init"), varmap);
    let (vb, src) = src.var_builder(DType::F32, &dev);
    UNet2D::new(&cfg, vb, "cifar10").unwrap();
    let mut expected: Vec<(String, Vec<usize>)> = v["tensors"]
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
    expected.sort();
    let got = src.asked();
    assert_eq!(got, expected);
    let n: usize = got.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(n as u64, v["num_parameters"].as_u64().unwrap());
}

/// The tiny_class checkpoint's tensors, to be tampered with.
fn tiny_class_tensors() -> Vec<(String, Tensor)> {
    diffuq::checkpoint::read_tensors(&golden("tiny_class").join("diffusion_pytorch_model.bin"))
        .unwrap()
}

fn build(tensors: Vec<(String, Tensor)>) -> String {
    let cfg = UNet2DConfig::from_json_file(&golden("tiny_class").join("config.json")).unwrap();
    let (vb, src) =
        ParamSource::load(tensors, "weights x.bin").var_builder(DType::F32, &Device::Cpu);
    match UNet2D::new(&cfg, vb, "t").and_then(|_| src.finish()) {
        Ok(()) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_misshaped_and_unused_tensors_are_named() {
    let base = tiny_class_tensors();
    assert_eq!(build(base.clone()), "ok");
    let missing: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "conv_out.weight")
        .cloned()
        .collect();
    let e = build(missing);
    assert!(
        e.contains("`conv_out.weight`") && e.contains("missing"),
        "{e}"
    );
    let mut wrong = base.clone();
    for (k, v) in wrong.iter_mut() {
        if k == "class_embedding.weight" {
            *v = Tensor::zeros((11, 64), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = build(wrong);
    assert!(
        e.contains("`class_embedding.weight`") && e.contains("[11, 64]"),
        "{e}"
    );
    let mut extra = base;
    extra.push((
        "decoder.extra".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    ));
    let e = build(extra);
    assert!(e.contains("`decoder.extra`") && e.contains("config"), "{e}");
}

#[test]
fn unsupported_architecture_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("tiny").join("config.json")).unwrap())
            .unwrap();
    v["down_block_types"][1] = "CrossAttnDownBlock2D".into();
    let p = dir.path().join("config.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let e = UNet2DConfig::from_json_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("down_block_types") && e.contains("CrossAttnDownBlock2D"),
        "{e}"
    );
    v["down_block_types"][1] = "AttnDownBlock2D".into();
    v["cross_attention_dim"] = 512.into();
    std::fs::write(&p, v.to_string()).unwrap();
    let e = UNet2DConfig::from_json_file(&p).unwrap_err().to_string();
    assert!(e.contains("cross_attention_dim"), "{e}");
    v.as_object_mut().unwrap().remove("cross_attention_dim");
    v["_class_name"] = "UNet2DConditionModel".into();
    std::fs::write(&p, v.to_string()).unwrap();
    let e = UNet2DConfig::from_json_file(&p).unwrap_err().to_string();
    assert!(e.contains("UNet2DConditionModel"), "{e}");
}

#[test]
fn last_layer_reassembles_the_forward_output_with_labels_bound() {
    // conv_out as a linear map over im2col patches: W φ + b reassembled must equal the network's
    // own forward (up to f32 summation order), with labels passed through the Bound view.
    let io = io("tiny_class");
    let net = UNet2D::load(&golden("tiny_class"), DType::F32, &Device::Cpu).unwrap();
    let y = io["labels"].to_dtype(DType::U32).unwrap();
    let bound = Bound::new(&net).with_labels(y);
    let x = &io["x"];
    let t = 17.5;
    let phi = bound.features(x, &[t; 3]).unwrap();
    assert_eq!(phi.dims(), &[3, 256, 16 * 9]);
    let (w, b) = bound.last_layer().unwrap();
    let out = phi
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b.unwrap())
        .unwrap();
    let via_ll = bound.assemble(&out).unwrap();
    let direct = bound.eps(x, t).unwrap();
    let e = rel_err(&via_ll, &direct);
    assert!(e < 1e-5, "{e:e}");
    assert!(bound.as_last_layer().is_some());
}
