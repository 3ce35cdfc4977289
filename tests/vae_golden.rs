//! diffuq's KL-f8 VAE against U-ViT's `FrozenAutoencoderKL` (LDM's AutoencoderKL: `decode`,
//! `encode_moments`, `encode`) and diffusers' `AutoencoderKL` (`decode`, `encode(x).latent_dist`).
//!
//! Expected numbers: golden/vae/<case>/io.safetensors and golden/vae/sd_kl_f8*_shapes.json,
//! written by golden/vae_reference.py, which imports U-ViT's libs/autoencoder.py unchanged at
//! commit ce551708dc9cde9818d2af7d84dfadfeb7bd9034 and uses diffusers 0.31.0 (torch 2.15.0 CPU):
//! random-init decoders (GroupNorm affines perturbed) saved in the real formats (U-ViT's `.pth`
//! state dict, a Stable Diffusion `.ckpt` with `first_stage_model.`, diffusers `save_pretrained`),
//! scaled latents z (2, 4, 6, 8) and the reference images in float32 and, for a `.double()` twin,
//! float64; images x (2, 3, 12, 16) uniform in [−1, 1] with the reference's scaled posterior mean
//! (f32 and f64), the standard normals eps its sampler drew, and its scaled posterior sample.
//! f32 is compared at rtol 1e-4 (max |a − b| / max |b|; measured ~1e-6), f64 at 1e-12
//! (measured ~1e-15: the same arithmetic in both); the measured errors are printed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use diffuq::model::vae::{VaeConfig, VaeDecoder, VaeNaming};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/vae")
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

/// Decode the case's z from `path` in f32 and f64 and compare with the reference images.
fn check(case: &str, path: &Path, naming: VaeNaming, scale: f64) {
    let io = io(case);
    let vae = VaeDecoder::load(path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.naming(), naming, "{case}");
    assert_eq!(vae.config().scale_factor, scale, "{case}");
    let img = vae.decode(&io["z"]).unwrap();
    assert_eq!(img.dims(), &[2, 3, 12, 16]);
    assert_eq!(img.dtype(), DType::F32);
    let (a32, r32) = errs(&img, &io["image"]);
    let vae = VaeDecoder::load(path, DType::F64, &Device::Cpu).unwrap();
    let img64 = vae.decode(&io["z"].to_dtype(DType::F64).unwrap()).unwrap();
    assert_eq!(img64.dtype(), DType::F64);
    let (a64, r64) = errs(&img64, &io["image_f64"]);
    eprintln!("{case}: f32 max abs {a32:.2e} rel {r32:.2e}; f64 max abs {a64:.2e} rel {r64:.2e}");
    assert!(r32 < 1e-4, "{case}: f32 relative error {r32:e}");
    assert!(r64 < 1e-12, "{case}: f64 relative error {r64:e}");
}

#[test]
fn ldm_naming_uvit_pth_matches_uvit_decode() {
    // U-ViT's autoencoder_kl_ema.pth layout (encoder tensors present and loaded); ch_mult [2, 1]
    // (nin_shortcut in up.0) and an AttnBlock in up.1; config.json beside the file.
    check(
        "ldm_tiny",
        &golden("ldm_tiny").join("autoencoder_kl.pth"),
        VaeNaming::Ldm,
        0.18215,
    );
    // A directory holding config.json and one .pth loads the same decoder.
    let io = io("ldm_tiny");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "autoencoder_kl.pth"] {
        std::fs::copy(golden("ldm_tiny").join(f), dir.path().join(f)).unwrap();
    }
    let a = VaeDecoder::load(dir.path(), DType::F32, &Device::Cpu)
        .unwrap()
        .decode(&io["z"])
        .unwrap();
    assert!(errs(&a, &io["image"]).1 < 1e-4);
}

#[test]
fn stable_diffusion_ckpt_with_first_stage_model_prefix_matches() {
    // {"state_dict": {first_stage_model.*, model.diffusion_model.*, cond_stage_model.*}}: the
    // wrapper and prefix are removed, the UNet/CLIP stand-ins skipped.
    check(
        "sd_ckpt_tiny",
        &golden("sd_ckpt_tiny").join("model.ckpt"),
        VaeNaming::Ldm,
        0.18215,
    );
}

#[test]
fn diffusers_naming_save_pretrained_directory_matches_autoencoderkl() {
    // block_out_channels (64, 32): up_blocks.1 is the 64-channel level (conv_shortcut), LDM's
    // up.0; scaling_factor 0.13025 read from config.json.
    check(
        "diffusers_tiny",
        &golden("diffusers_tiny"),
        VaeNaming::Diffusers,
        0.13025,
    );
}

/// (config JSON, num_parameters, sorted [(name, shape)]) of a shapes file (the decoder's).
fn shapes_file(name: &str) -> (serde_json::Value, u64, Vec<(String, Vec<usize>)>) {
    shapes_part(name, "")
}

/// As [`shapes_file`], for the part whose keys start with `prefix` ("" or "encoder_").
fn shapes_part(name: &str, prefix: &str) -> (serde_json::Value, u64, Vec<(String, Vec<usize>)>) {
    let text = std::fs::read_to_string(golden(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> = v[format!("{prefix}tensors")]
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
        v[format!("{prefix}num_parameters")].as_u64().unwrap(),
        tensors,
    )
}

#[test]
fn stable_diffusion_kl_f8_layout_has_the_references_names_and_shapes() {
    // Expected: U-ViT's Decoder(**get_model's ddconfig) + post_quant_conv, and diffusers'
    // AutoencoderKL with SD's config, built on the meta device: 140 tensors, 49,490,199
    // parameters each.
    let (cfg, n, expected) = shapes_file("sd_kl_f8_shapes.json");
    let cfg = VaeConfig::from_json(cfg, "sd_kl_f8_shapes.json").unwrap();
    assert_eq!(cfg, VaeConfig::default());
    let got = VaeDecoder::parameter_shapes(&cfg).unwrap();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 140);
    let total: usize = got.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!((total as u64, n), (49_490_199, 49_490_199));

    let (mut dcfg, n, expected) = shapes_file("sd_kl_f8_diffusers_shapes.json");
    dcfg["_class_name"] = "AutoencoderKL".into();
    let dcfg = VaeConfig::from_json(dcfg, "sd_kl_f8_diffusers_shapes.json").unwrap();
    assert_eq!(dcfg.level_channels(), cfg.level_channels());
    assert_eq!(dcfg.downsampling_factor(), 8);
    let got = VaeDecoder::parameter_shapes_named(&dcfg, VaeNaming::Diffusers).unwrap();
    assert_eq!(got, expected);
    let total: usize = got.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(total as u64, n);
}

fn tensors(case: &str, file: &str) -> Vec<(String, Tensor)> {
    diffuq::checkpoint::read_tensors(&golden(case).join(file)).unwrap()
}

/// Build ldm_tiny from `tensors` as `load` does; the error line, or "ok".
fn build(tensors: Vec<(String, Tensor)>) -> String {
    let cfg = VaeConfig::from_json_file(&golden("ldm_tiny").join("config.json")).unwrap();
    match VaeDecoder::from_tensors(&cfg, tensors, "weights x/a.pth", DType::F32, &Device::Cpu) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_misshaped_unused_and_foreign_tensors_are_named() {
    let base = tensors("ldm_tiny", "autoencoder_kl.pth");
    assert_eq!(build(base.clone()), "ok");
    // Without the encoder it still loads: only decoder.* and post_quant_conv.* are read.
    let dec_only: Vec<_> = base
        .iter()
        .filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
        .cloned()
        .collect();
    assert_eq!(build(dec_only), "ok");

    let missing: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "decoder.up.0.block.0.nin_shortcut.weight")
        .cloned()
        .collect();
    let e = build(missing);
    assert!(
        e.contains("x/a.pth")
            && e.contains("`decoder.up.0.block.0.nin_shortcut.weight`")
            && e.contains("missing"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    let mut wrong = base.clone();
    for (k, v) in wrong.iter_mut() {
        if k == "decoder.mid.attn_1.q.weight" {
            *v = Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = build(wrong);
    assert!(
        e.contains("`decoder.mid.attn_1.q.weight`")
            && e.contains("[32, 32]")
            && e.contains("[32, 32, 1, 1]"),
        "{e}"
    );

    let mut extra = base.clone();
    extra.push((
        "decoder.up.2.block.0.norm1.weight".into(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    ));
    let e = build(extra);
    assert!(
        e.contains("`decoder.up.2.block.0.norm1.weight`") && e.contains("config"),
        "{e}"
    );

    let mut foreign = base.clone();
    foreign.push((
        "model.diffusion_model.out.2.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    ));
    let e = build(foreign);
    assert!(
        e.contains("`model.diffusion_model.out.2.weight`") && e.contains("KL autoencoder"),
        "{e}"
    );

    // LDM and diffusers names together, and no decoder at all.
    let mut mixed = base.clone();
    mixed.extend(
        tensors("diffusers_tiny", "diffusion_pytorch_model.safetensors")
            .into_iter()
            .filter(|(k, _)| k.starts_with("decoder.mid_block.")),
    );
    assert!(build(mixed).contains("mixes"));
    let enc: Vec<_> = base
        .into_iter()
        .filter(|(k, _)| k.starts_with("encoder."))
        .collect();
    assert!(build(enc).contains("no autoencoder decoder"));
}

#[test]
fn bad_configs_and_latents_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        golden("ldm_tiny").join("autoencoder_kl.pth"),
        dir.path().join("vae.pth"),
    )
    .unwrap();
    let text = std::fs::read_to_string(golden("ldm_tiny").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let load = |v: &serde_json::Value| {
        std::fs::write(dir.path().join("vae.json"), v.to_string()).unwrap();
        VaeDecoder::load(&dir.path().join("vae.pth"), DType::F32, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(load(&v), None, "<stem>.json is read as the config");
    // An unknown key names the key and the file.
    v["num_res_block"] = 2.into();
    let e = load(&v).unwrap();
    assert!(
        e.contains("vae.json") && e.contains("`num_res_block`"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    // A config that does not match the weights names the file and the tensor.
    v.as_object_mut().unwrap().remove("num_res_block");
    v["ch_mult"] = serde_json::json!([1, 1]);
    let e = load(&v).unwrap();
    assert!(e.contains("vae.pth") && e.contains("has shape"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    // Without a config the default (SD's) is assumed: the 512-channel conv_in does not fit.
    std::fs::remove_file(dir.path().join("vae.json")).unwrap();
    let e = VaeDecoder::load(&dir.path().join("vae.pth"), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("decoder.conv_in.weight") && e.contains("[512, 4, 3, 3]"),
        "{e}"
    );
    // A nonexistent path.
    let e = VaeDecoder::load(&dir.path().join("none.pth"), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("none.pth") && e.contains("does not exist"),
        "{e}"
    );

    // Latents with the wrong channel count or rank.
    let vae = VaeDecoder::load(&golden("diffusers_tiny"), DType::F32, &Device::Cpu).unwrap();
    for shape in [&[2usize, 3, 6, 8][..], &[4, 6, 8]] {
        let z = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let e = vae.decode(&z).unwrap_err().to_string();
        assert!(e.contains("expected (N, 4, h, w)"), "{e}");
    }
}

#[test]
fn the_decoder_is_differentiable_in_the_latent() {
    // Guidance or uncertainty through the decoder back-propagates to z: autograd's directional
    // derivative against a central finite difference (f64).
    let io = io("ldm_tiny");
    let vae = VaeDecoder::load(
        &golden("ldm_tiny").join("autoencoder_kl.pth"),
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    let z0 = io["z"].to_dtype(DType::F64).unwrap();
    let g = io["image_f64"].clone();
    let d = z0.cos().unwrap();
    let f = |z: &Tensor| -> f64 {
        (vae.decode(z).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let z = candle_core::Var::from_tensor(&z0).unwrap();
    let grads = (vae.decode(z.as_tensor()).unwrap() * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let auto: f64 = (grads.get(&z).unwrap() * &d)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let h = 1e-5;
    let fd = (f(&(&z0 + (&d * h).unwrap()).unwrap()) - f(&(&z0 - (&d * h).unwrap()).unwrap()))
        / (2.0 * h);
    assert!(
        (auto - fd).abs() < 1e-6 * fd.abs().max(1.0),
        "autograd {auto} vs finite difference {fd}"
    );
}

/// Encode the case's x from `path` in f32 and f64 and compare with the reference's scaled
/// posterior mean and sample; then decode the encoded mean.
fn check_encode(case: &str, path: &Path, naming: VaeNaming) {
    let io = io(case);
    let vae = VaeDecoder::load(path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.naming(), naming, "{case}");
    assert!(vae.has_encoder(), "{case}");
    let m = vae.encode_mean(&io["x"]).unwrap();
    assert_eq!(m.dims(), &[2, 4, 6, 8]);
    assert_eq!(m.dtype(), DType::F32);
    let (am, rm) = errs(&m, &io["z_mean"]);
    let s = vae.encode_sample(&io["x"], &io["eps"]).unwrap();
    let (as_, rs) = errs(&s, &io["z_sample"]);
    // decode(encode_mean(x)): the round trip the reconstruction checks use runs and has the
    // image's shape (a random-init VAE does not reconstruct, so only finiteness is checked).
    let back = vae.decode(&m).unwrap();
    assert_eq!(back.dims(), io["x"].dims());
    let sum: f32 = back.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(
        sum.is_finite() && sum > 0.0,
        "{case}: decode(encode_mean(x)) sums to {sum}"
    );

    let vae64 = VaeDecoder::load(path, DType::F64, &Device::Cpu).unwrap();
    let m64 = vae64
        .encode_mean(&io["x"].to_dtype(DType::F64).unwrap())
        .unwrap();
    assert_eq!(m64.dtype(), DType::F64);
    let (a64, r64) = errs(&m64, &io["z_mean_f64"]);
    eprintln!(
        "{case} encode: mean f32 max abs {am:.2e} rel {rm:.2e}; sample f32 max abs {as_:.2e} rel {rs:.2e}; mean f64 max abs {a64:.2e} rel {r64:.2e}"
    );
    assert!(rm < 1e-4, "{case}: encode_mean f32 relative error {rm:e}");
    assert!(rs < 1e-4, "{case}: encode_sample f32 relative error {rs:e}");
    assert!(
        r64 < 1e-12,
        "{case}: encode_mean f64 relative error {r64:e}"
    );
    // The sample is not the mean (the test of eps can fail).
    assert!(errs(&s, &m).1 > 0.1);
}

#[test]
fn ldm_naming_uvit_pth_encodes_as_frozen_autoencoder_kl() {
    // ch_mult [2, 1]: down.0.block.0 maps ch 32 → 64 (nin_shortcut); attn_resolutions [8]: an
    // AttnBlock in down.1; one asymmetric-padded stride-2 downsample.
    check_encode(
        "ldm_tiny",
        &golden("ldm_tiny").join("autoencoder_kl.pth"),
        VaeNaming::Ldm,
    );
}

#[test]
fn stable_diffusion_ckpt_encodes_as_frozen_autoencoder_kl() {
    check_encode(
        "sd_ckpt_tiny",
        &golden("sd_ckpt_tiny").join("model.ckpt"),
        VaeNaming::Ldm,
    );
}

#[test]
fn diffusers_naming_encodes_as_autoencoderkl_latent_dist() {
    // block_out_channels (64, 32): conv_in has 64 outputs (LDM's would have ch = 32), and
    // down_blocks.1 maps 64 → 32 (conv_shortcut); scaling_factor 0.13025.
    check_encode(
        "diffusers_tiny",
        &golden("diffusers_tiny"),
        VaeNaming::Diffusers,
    );
}

#[test]
fn stable_diffusion_kl_f8_encoder_layout_has_the_references_names_and_shapes() {
    // Expected: U-ViT's Encoder(**get_model's ddconfig) + quant_conv (8 → 8), and diffusers'
    // AutoencoderKL encoder.* + quant_conv.* with SD's config, on the meta device: 108 tensors,
    // 34,163,664 parameters each.
    let (cfg, n, expected) = shapes_part("sd_kl_f8_shapes.json", "encoder_");
    let cfg = VaeConfig::from_json(cfg, "sd_kl_f8_shapes.json").unwrap();
    let got = VaeDecoder::encoder_parameter_shapes(&cfg, VaeNaming::Ldm).unwrap();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 108);
    let total: usize = got.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!((total as u64, n), (34_163_664, 34_163_664));

    let (mut dcfg, n, expected) = shapes_part("sd_kl_f8_diffusers_shapes.json", "encoder_");
    dcfg["_class_name"] = "AutoencoderKL".into();
    let dcfg = VaeConfig::from_json(dcfg, "sd_kl_f8_diffusers_shapes.json").unwrap();
    let got = VaeDecoder::encoder_parameter_shapes(&dcfg, VaeNaming::Diffusers).unwrap();
    assert_eq!(got, expected);
    let total: usize = got.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(total as u64, n);
}

fn load_ldm_tiny(tensors: Vec<(String, Tensor)>) -> diffuq::Result<VaeDecoder> {
    let cfg = VaeConfig::from_json_file(&golden("ldm_tiny").join("config.json")).unwrap();
    VaeDecoder::from_tensors(&cfg, tensors, "weights x/a.pth", DType::F32, &Device::Cpu)
}

#[test]
fn a_decoder_only_checkpoint_decodes_but_encoding_names_the_file() {
    let io = io("ldm_tiny");
    let dec_only: Vec<_> = tensors("ldm_tiny", "autoencoder_kl.pth")
        .into_iter()
        .filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
        .collect();
    let vae = load_ldm_tiny(dec_only).unwrap();
    assert!(!vae.has_encoder());
    assert!(errs(&vae.decode(&io["z"]).unwrap(), &io["image"]).1 < 1e-4);
    for e in [
        vae.encode_mean(&io["x"]).unwrap_err(),
        vae.encode_sample(&io["x"], &io["eps"]).unwrap_err(),
        vae.encode_moments(&io["x"]).unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(
            e.contains("x/a.pth")
                && e.contains("`encoder.*`")
                && e.contains("`quant_conv.*`")
                && e.contains("missing"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn incomplete_or_mixed_encoders_and_bad_images_give_one_line_errors() {
    let base = tensors("ldm_tiny", "autoencoder_kl.pth");
    // An encoder tensor missing: the checkpoint has an encoder, so it must be complete.
    let missing: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "encoder.down.0.downsample.conv.weight")
        .cloned()
        .collect();
    let e = load_ldm_tiny(missing).err().unwrap().to_string();
    assert!(
        e.contains("x/a.pth")
            && e.contains("`encoder.down.0.downsample.conv.weight`")
            && e.contains("missing"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    // quant_conv alone is missing.
    let no_qc: Vec<_> = base
        .iter()
        .filter(|(k, _)| !k.starts_with("quant_conv."))
        .cloned()
        .collect();
    let e = load_ldm_tiny(no_qc).err().unwrap().to_string();
    assert!(
        e.contains("`quant_conv.weight`") && e.contains("missing"),
        "{e}"
    );
    // A mis-shaped encoder tensor.
    let mut wrong = base.clone();
    for (k, v) in wrong.iter_mut() {
        if k == "encoder.conv_in.weight" {
            *v = Tensor::zeros((64, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = load_ldm_tiny(wrong).err().unwrap().to_string();
    assert!(
        e.contains("`encoder.conv_in.weight`") && e.contains("[32, 3, 3, 3]"),
        "{e}"
    );
    // A diffusers-named encoder beside an LDM decoder.
    let mut mixed: Vec<_> = base
        .iter()
        .filter(|(k, _)| !k.starts_with("encoder."))
        .cloned()
        .collect();
    mixed.extend(
        tensors("diffusers_tiny", "diffusion_pytorch_model.safetensors")
            .into_iter()
            .filter(|(k, _)| k.starts_with("encoder.")),
    );
    let e = load_ldm_tiny(mixed).err().unwrap().to_string();
    assert!(e.contains("x/a.pth") && e.contains("mixes naming"), "{e}");

    // Images of the wrong channel count, rank or size (H, W must be multiples of f = 2 here),
    // and noise of the wrong shape.
    let vae = load_ldm_tiny(base).unwrap();
    for shape in [&[2usize, 4, 12, 16][..], &[3, 12, 16], &[2, 3, 13, 16]] {
        let x = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let e = vae.encode_mean(&x).unwrap_err().to_string();
        assert!(
            e.contains("expected (N, 3, H, W) with H and W positive multiples of 2"),
            "{e}"
        );
    }
    let io = io("ldm_tiny");
    let eps = Tensor::zeros((2, 4, 8, 6), DType::F32, &Device::Cpu).unwrap();
    let e = vae.encode_sample(&io["x"], &eps).unwrap_err().to_string();
    assert!(
        e.contains("eps of shape [2, 4, 8, 6]") && e.contains("[2, 4, 6, 8]"),
        "{e}"
    );
}

#[test]
fn the_log_variance_is_clamped_as_the_reference_does() {
    // quant_conv's log-variance biases moved to +100 and −100: logvar clamps to 20 and −30
    // (LDM's DiagonalGaussianDistribution, U-ViT's FrozenAutoencoderKL.sample), so the scaled
    // sample is scale·(mean + e^10·eps) in channels 0–1 and scale·(mean + e^−15·eps) in 2–3.
    let io = io("ldm_tiny");
    let mut t = tensors("ldm_tiny", "autoencoder_kl.pth");
    for (k, v) in t.iter_mut() {
        if k == "quant_conv.bias" {
            let b: Vec<f32> = v.to_vec1().unwrap();
            let shift = [0.0, 0.0, 0.0, 0.0, 100.0, 100.0, -100.0, -100.0];
            let b: Vec<f32> = b.iter().zip(shift).map(|(b, s)| b + s).collect();
            *v = Tensor::new(b, &Device::Cpu).unwrap();
        }
    }
    let vae = load_ldm_tiny(t).unwrap();
    let (_, logvar) = vae.encode_moments(&io["x"]).unwrap();
    let lv: Vec<f32> = logvar.flatten_all().unwrap().to_vec1().unwrap();
    let per = lv.len() / 8; // (2 images × 4 channels) blocks of 6·8
    for (i, chunk) in lv.chunks(per).enumerate() {
        let want = if i % 4 < 2 { 20.0 } else { -30.0 };
        assert!(chunk.iter().all(|&v| v == want), "channel {}", i % 4);
    }
    let eps = &io["eps"];
    let d =
        (vae.encode_sample(&io["x"], eps).unwrap() - vae.encode_mean(&io["x"]).unwrap()).unwrap();
    let std = (d / (eps * 0.18215).unwrap()).unwrap();
    let s: Vec<f32> = std.flatten_all().unwrap().to_vec1().unwrap();
    for (i, chunk) in s.chunks(per).enumerate() {
        if i % 4 < 2 {
            let want = 10f32.exp();
            assert!(
                chunk.iter().all(|&v| (v / want - 1.0).abs() < 1e-3),
                "channel {}",
                i % 4
            );
        }
    }
}
