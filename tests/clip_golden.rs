//! diffuq's CLIP image tower and preprocessing (GU's semantic features) against OpenAI's CLIP,
//! open_clip and transformers.
//!
//! Expected numbers: golden/clip/, written by golden/clip_reference.py (torch 2.15.0 CPU, one
//! thread; openai/CLIP at d05afc436d78f1c48dc0dbf8e5980a9d471f35f6 imported unchanged; open_clip
//! 3.3.0; transformers 5.24.0; torchvision 0.29.2; Pillow 13.0.0):
//! * `openai_tiny/model.pt`: OpenAI's `clip.model.CLIP` (vision width 128, 2 layers, 2 heads,
//!   patch 8, image 32, embed 16, QuickGELU) after `convert_weights` (float16), traced and
//!   `torch.jit.save`d like the released `ViT-B-32.pt`; reference `clip.load(model.pt,
//!   device="cpu")`'s `preprocess` and `encode_image`.
//! * `open_clip_tiny/`: open_clip `CLIP` (width 64, head_width 32, 2 layers, nn.GELU, embed 16),
//!   the full state dict as `open_clip_pytorch_model.bin` and `open_clip_model.safetensors`,
//!   `open_clip_config.json` from open_clip's `save_config_for_hf`; reference
//!   `create_model("local-dir:…").encode_image`.
//! * `hf_vision_tiny/`, `hf_clip_tiny/`: transformers `CLIPVisionModelWithProjection` (quick_gelu,
//!   4 heads, MLP 96) and `CLIPModel` (gelu, ε 1e-6, projection 12) `save_pretrained` directories;
//!   reference `image_embeds` / `get_image_features`.
//! * each case's `io.safetensors`: uint8 images (3, 3, 40, 48), their OpenAI `_transform(32)` and
//!   embeddings; samples in [−1.2, 1.2] (2, 3, 24, 24), GU's uint8 truncation of them, and theirs.
//! * `preprocess.safetensors`: OpenAI's `_transform(224)` (GU's preprocess) of random RGB images
//!   32×32, 64×64, 40×48, 48×40 and a grayscale 28×28 ('L') image: the PIL uint8 output of
//!   Resize + CenterCrop + RGB (which the script checked reproduces the float output bit for bit)
//!   and one full float32 output.
//! * `vit_b32_shapes.json`: open_clip's `ViT-B-32` `visual.*` and transformers'
//!   `CLIPVisionModelWithProjection(CLIPVisionConfig())` names and shapes (meta device).
//!
//! Tolerances: embeddings at rtol 1e-4 (max |a − b| / max |b|; measured ≤ 8.6e-7); preprocessing
//! exact (max |Δ| = 0 in uint8 and in float32; the brief allowed 1/255).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use diffuq::features::clip::{
    gu_uint8, pil_resize_bicubic, Activation, ClipConfig, ClipFeatures, ClipPreprocess, ClipVision,
    Naming,
};
use diffuq::features::FeatureExtractor;

fn golden(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/clip")
        .join(p)
}

fn load_io(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden(case).join("io.safetensors"), &Device::Cpu).unwrap()
}

/// (max |a − b|, max |a − b| / max |b|).
fn errs(a: &Tensor, b: &Tensor) -> (f64, f64) {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
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

/// The reference embeddings from the reference's preprocessed inputs (the tower alone) and from
/// the raw images and samples (preprocessing + tower, as a FeatureExtractor); the preprocessing
/// itself compared exactly.
fn check(case: &str, net: ClipVision, out_dim: usize) {
    let io = load_io(case);
    assert_eq!(net.config().output_dim, out_dim);
    let (a, r) = errs(&net.embed(&io["pre"]).unwrap(), &io["embed"]);
    let feats = ClipFeatures::new(net, 2);
    let pre = feats.preprocess();
    let mut worst = r;
    for (x, want_pre, want) in [
        ("u8", "pre", "embed"),
        ("samples", "samples_pre", "samples_embed"),
    ] {
        let (pa, _) = errs(&pre.apply(&io[x], &Device::Cpu).unwrap(), &io[want_pre]);
        assert_eq!(pa, 0.0, "{case}: preprocessing of `{x}` differs by {pa:e}");
        let got = feats.features(&io[x]).unwrap();
        let (fa, fr) = errs(&got, &io[want]);
        eprintln!("{case}: {x} → features max abs {fa:.2e} rel {fr:.2e}");
        worst = worst.max(fr);
    }
    eprintln!("{case}: embed(pre) max abs {a:.2e} rel {r:.2e}");
    assert!(worst < 1e-4, "{case}: relative error {worst:e}");
    // GU's uint8 truncation of the samples.
    let (u8s, _) = pre.to_uint8(&io["samples"]).unwrap();
    assert_eq!(
        u8s,
        io["samples_u8"]
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap()
    );
}

#[test]
fn openai_torchscript_fp16_archive_matches_clip_load() {
    // No config: the shape comes from the tensors by OpenAI's build_model rule (heads = W/64).
    let net = ClipVision::load(&golden("openai_tiny/model.pt"), &Device::Cpu).unwrap();
    assert_eq!(net.naming(), Naming::OpenClip);
    let c = net.config();
    assert_eq!(
        (
            c.image_size,
            c.patch_size,
            c.width,
            c.layers,
            c.heads,
            c.mlp_width
        ),
        (32, 8, 128, 2, 2, 512)
    );
    assert_eq!(c.activation, Activation::QuickGelu);
    check("openai_tiny", net, 16);
}

#[test]
fn open_clip_state_dicts_match_open_clip() {
    // The directory (open_clip_model.safetensors first, as open_clip looks) and the .bin file
    // with open_clip_config.json beside it.
    let dir = ClipVision::load(&golden("open_clip_tiny"), &Device::Cpu).unwrap();
    assert_eq!(dir.config().activation, Activation::Gelu);
    assert_eq!((dir.config().heads, dir.config().mlp_width), (2, 256));
    check("open_clip_tiny", dir, 16);
    let bin = ClipVision::load(
        &golden("open_clip_tiny/open_clip_pytorch_model.bin"),
        &Device::Cpu,
    )
    .unwrap();
    check("open_clip_tiny", bin, 16);
}

#[test]
fn transformers_vision_model_with_projection_matches() {
    let net = ClipVision::load(&golden("hf_vision_tiny"), &Device::Cpu).unwrap();
    assert_eq!(net.naming(), Naming::Transformers);
    assert_eq!((net.config().heads, net.config().mlp_width), (4, 96));
    check("hf_vision_tiny", net, 16);
}

#[test]
fn transformers_clip_model_nested_config_matches() {
    let net = ClipVision::load(&golden("hf_clip_tiny"), &Device::Cpu).unwrap();
    let c = net.config();
    assert_eq!(c.activation, Activation::Gelu);
    assert_eq!(c.layer_norm_eps, 1e-6);
    // The top-level projection_dim (12), not vision_config's (512).
    check("hf_clip_tiny", net, 12);
}

#[test]
fn preprocessing_at_224_equals_pil_exactly() {
    let t = candle_core::safetensors::load(golden("preprocess.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(t["open_clip_equal"].to_vec1::<i64>().unwrap(), [1]);
    let pre = ClipPreprocess::VIT_B_32;
    for name in ["rgb32", "rgb64", "rgb40x48", "rgb48x40", "gray28"] {
        let u8s = &t[&format!("{name}.u8")];
        let (n, c, h, w) = u8s.dims4().unwrap();
        let want = t[&format!("{name}.resized_u8")]
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap();
        let (pixels, _) = pre.to_uint8(u8s).unwrap();
        let mut got = Vec::new();
        for image in pixels.chunks_exact(c * h * w) {
            got.extend(pre.resize_crop(image, (c, h, w)).unwrap());
        }
        assert_eq!(got.len(), n * 3 * 224 * 224);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        let count = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!("{name} ({h}×{w}, C = {c}): uint8 max |Δ| {diff}, {count} pixels differ");
        assert_eq!(diff, 0, "{name}");
    }
    // The full float pipeline on one image: ToTensor + Normalize in float32 as torchvision.
    let x = t["rgb40x48.u8"].narrow(0, 0, 1).unwrap();
    let got = pre.apply(&x, &Device::Cpu).unwrap();
    let (a, _) = errs(&got, &t["rgb40x48.pre"]);
    eprintln!("rgb40x48: float32 preprocess max |Δ| {a:e}");
    assert_eq!(a, 0.0);
}

#[test]
fn vit_b32_layouts_have_open_clip_and_transformers_names() {
    // Expected: golden/clip/vit_b32_shapes.json (open_clip create_model("ViT-B-32") visual.*;
    // transformers CLIPVisionModelWithProjection(CLIPVisionConfig())), 87,849,216 parameters.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("vit_b32_shapes.json")).unwrap())
            .unwrap();
    let list = |key: &str| -> Vec<(String, Vec<usize>)> {
        let mut l: Vec<(String, Vec<usize>)> = v[key]
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
        l.sort();
        l
    };
    let n = v["num_parameters"].as_u64().unwrap();
    assert_eq!(n, 87_849_216);
    let cfg = ClipConfig::vit_b_32();
    for (key, naming, tensors) in [
        ("open_clip", Naming::OpenClip, 152),
        ("transformers", Naming::Transformers, 200),
    ] {
        let got = ClipVision::parameter_shapes(&cfg, naming).unwrap();
        assert_eq!(got.len(), tensors, "{key}");
        assert_eq!(got, list(key), "{key}");
        let total: usize = got.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(total as u64, n, "{key}");
    }
}

fn open_clip_tensors() -> Vec<(String, Tensor)> {
    diffuq::checkpoint::read_tensors(&golden("open_clip_tiny/open_clip_model.safetensors")).unwrap()
}

fn open_clip_config() -> ClipConfig {
    ClipConfig::from_open_clip_json(&golden("open_clip_tiny/open_clip_config.json")).unwrap()
}

/// The error of building the open_clip tiny tower from `tensors` (asserted to be one line), or
/// "ok".
fn build(tensors: Vec<(String, Tensor)>, config: Option<&ClipConfig>) -> String {
    match ClipVision::from_tensors(
        tensors,
        config,
        "CLIP weights x/w.safetensors",
        &Device::Cpu,
    ) {
        Ok(_) => "ok".into(),
        Err(e) => {
            let e = e.to_string();
            assert!(!e.contains('\n'), "not one line: {e}");
            e
        }
    }
}

#[test]
fn missing_misshaped_and_unused_tensors_are_named() {
    let cfg = open_clip_config();
    let base = open_clip_tensors();
    assert_eq!(build(base.clone(), Some(&cfg)), "ok");
    // A prefix (a DataParallel wrapper's) is allowed.
    let prefixed: Vec<_> = base
        .iter()
        .map(|(k, v)| (format!("module.{k}"), v.clone()))
        .collect();
    assert_eq!(build(prefixed, Some(&cfg)), "ok");
    let missing: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "visual.proj")
        .cloned()
        .collect();
    let e = build(missing, Some(&cfg));
    assert!(
        e.contains("x/w.safetensors") && e.contains("`visual.proj`") && e.contains("missing"),
        "{e}"
    );
    let mut wrong = base.clone();
    for (k, v) in wrong.iter_mut() {
        if k == "visual.positional_embedding" {
            *v = Tensor::zeros((50, 64), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = build(wrong, Some(&cfg));
    assert!(
        e.contains("`visual.positional_embedding`")
            && e.contains("[50, 64]")
            && e.contains("[17, 64]"),
        "{e}"
    );
    let mut extra = base.clone();
    extra.push((
        "visual.attn_pool.query".into(),
        Tensor::zeros((4, 16), DType::F32, &Device::Cpu).unwrap(),
    ));
    let e = build(extra, Some(&cfg));
    assert!(
        e.contains("`visual.attn_pool.query`") && e.contains("does not use"),
        "{e}"
    );
    let ints: Vec<_> = base
        .iter()
        .map(|(k, v)| {
            let v = if k == "visual.proj" {
                v.to_dtype(DType::I64).unwrap()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    let e = build(ints, Some(&cfg));
    assert!(e.contains("`visual.proj`") && e.contains("I64"), "{e}");
    let text_only: Vec<_> = base
        .into_iter()
        .filter(|(k, _)| !k.starts_with("visual."))
        .collect();
    let e = build(text_only, Some(&cfg));
    assert!(e.contains("not a CLIP ViT state dict"), "{e}");
}

#[test]
fn bad_configs_name_the_key() {
    let what = "CLIP config x/open_clip_config.json";
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("open_clip_tiny/open_clip_config.json")).unwrap(),
    )
    .unwrap();
    let err = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        edit(&mut v);
        ClipConfig::from_open_clip_value(&v, what)
            .unwrap_err()
            .to_string()
    };
    let e = err(&|v| v["model_cfg"]["vision_cfg"]["widht"] = 64.into());
    assert!(
        e.contains("x/open_clip_config.json")
            && e.contains("`model_cfg.vision_cfg.widht`")
            && e.contains("unknown key"),
        "{e}"
    );
    let e = err(&|v| v["model_cfg"]["vision_cfg"]["pool_type"] = "avg".into());
    assert!(e.contains("`model_cfg.vision_cfg.pool_type`"), "{e}");
    let e = err(&|v| v["model_cfg"]["vision_cfg"]["layers"] = serde_json::json!([3, 4, 6, 3]));
    assert!(e.contains("ModifiedResNet"), "{e}");
    let e = err(&|v| v["model_cfg"]["vision_cfg"]["head_width"] = 48.into());
    assert!(e.contains("`model_cfg.vision_cfg.head_width`"), "{e}");
    let e = err(&|v| v["model_cfg"]["embedding_dim"] = 16.into());
    assert!(e.contains("`model_cfg.embedding_dim`"), "{e}");
    let e = err(&|v| v["preprocess_cfg"]["interpolation"] = "bilinear".into());
    assert!(e.contains("`preprocess_cfg.interpolation`"), "{e}");

    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("hf_clip_tiny/config.json")).unwrap())
            .unwrap();
    let herr = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = hf.clone();
        edit(&mut v);
        ClipConfig::from_transformers_value(&v, "CLIP config y/config.json")
            .unwrap_err()
            .to_string()
    };
    let e = herr(&|v| v["vision_config"]["hidden_act"] = "gelu_new".into());
    assert!(
        e.contains("y/config.json") && e.contains("`vision_config.hidden_act`"),
        "{e}"
    );
    let e = herr(&|v| v["vision_config"]["num_attention_heads"] = 3.into());
    assert!(e.contains("`heads`") && e.contains("64"), "{e}");
    let e = herr(&|v| v["model_type"] = "siglip".into());
    assert!(e.contains("`model_type`"), "{e}");
    let e = herr(&|v| v["projection_dim"] = "12".into());
    assert!(e.contains("`projection_dim`"), "{e}");
    let e = herr(&|v| v["vision_config"]["num_channels"] = 1.into());
    assert!(e.contains("`vision_config.num_channels`"), "{e}");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let net = ClipVision::load(&golden("hf_vision_tiny"), &Device::Cpu).unwrap();
    let e = net
        .embed(&Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected (N, 3, 32, 32)"), "{e}");
    let feats = ClipFeatures::new(net, 4);
    let e = feats
        .features(&Tensor::zeros((1, 2, 8, 8), DType::U8, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected (N, 1 or 3, H, W)"), "{e}");
    let nan = Tensor::from_vec(vec![f32::NAN; 3 * 4], (1, 3, 2, 2), &Device::Cpu).unwrap();
    let e = feats.features(&nan).unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
    // An empty batch gives (0, D); a grayscale batch is embedded as RGB copies.
    let empty = feats
        .features(&Tensor::zeros((0, 3, 8, 8), DType::U8, &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(empty.dims(), &[0, 16]);
    let gray = Tensor::full(100u8, (1, 1, 9, 7), &Device::Cpu).unwrap();
    let rgb = gray.repeat((1, 3, 1, 1)).unwrap();
    let (d, _) = errs(
        &feats.features(&gray).unwrap(),
        &feats.features(&rgb).unwrap(),
    );
    assert_eq!(d, 0.0);
    assert_eq!(feats.id(), "clip-vit-s32-p8-w64-l2-h4-m96-o16-quickgelu");
    assert!(pil_resize_bicubic(&[0u8; 5], (2, 3), (4, 4)).is_err());
    assert_eq!(gu_uint8(0.5), 191);
    // Not a CLIP checkpoint, and a directory without a config.
    let e = ClipVision::load(&golden("../adm/legacy_tiny/model.pt"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.pt") && e.contains("not a CLIP ViT state dict"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let e = ClipVision::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("open_clip_config.json"), "{e}");
}
