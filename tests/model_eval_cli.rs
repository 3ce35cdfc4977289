//! `diffuq model eval` end to end: a diffusers checkpoint evaluated through the binary matches
//! diffusers' own forward, and bad checkpoints or inputs are one-line errors with exit code 2.
//!
//! Expected numbers: golden/unet2d/tiny_class/io.safetensors, written by
//! golden/unet2d_reference.py (diffusers 0.31.0, torch 2.15.0): `out` is diffusers'
//! `UNet2DModel(x, t, class_labels).sample` in f32; compared at rtol 1e-4.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/unet2d")
        .join(case)
}

fn diffuq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuq"))
        .args(args)
        .output()
        .expect("spawn diffuq")
}

fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

/// x.npy, t.npy and labels.npy of the tiny_class fixture in `dir`.
fn inputs(dir: &Path) -> Tensor {
    let io =
        candle_core::safetensors::load(golden("tiny_class").join("io.safetensors"), &Device::Cpu)
            .unwrap();
    io["x"].write_npy(dir.join("x.npy")).unwrap();
    io["t"].write_npy(dir.join("t.npy")).unwrap();
    io["labels"].write_npy(dir.join("labels.npy")).unwrap();
    io["out"].clone()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn eval_writes_diffusers_output() {
    let dir = tempfile::tempdir().unwrap();
    let expected = inputs(dir.path());
    let out_path = dir.path().join("out.npy");
    let out = diffuq(&[
        "model",
        "eval",
        &s(&golden("tiny_class")),
        "--input",
        &s(&dir.path().join("x.npy")),
        "--t-file",
        &s(&dir.path().join("t.npy")),
        "--labels",
        &s(&dir.path().join("labels.npy")),
        "--out",
        &s(&out_path),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = Tensor::read_npy(&out_path).unwrap();
    assert_eq!(got.dims(), expected.dims());
    let diff = (got.to_dtype(DType::F64).unwrap() - expected.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = expected
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!(diff / scale < 1e-4, "relative error {:e}", diff / scale);
}

#[test]
fn bad_checkpoints_and_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    inputs(dir.path());
    let x = s(&dir.path().join("x.npy"));
    let labels = s(&dir.path().join("labels.npy"));
    let out = s(&dir.path().join("out.npy"));
    let eval = |ckpt: &Path, extra: &[&str]| {
        let mut a = vec!["model", "eval"];
        let c = s(ckpt);
        a.push(&c);
        a.extend_from_slice(&["--input", &x, "--out", &out]);
        a.extend_from_slice(extra);
        diffuq(&a.iter().map(|s| s.as_ref()).collect::<Vec<&str>>())
    };
    // Unknown architecture.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_one_line_error(&eval(&empty, &["--t", "3"]), &["unknown architecture"]);
    // A config that does not match the weights: the tensor is named.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let cfg = std::fs::read_to_string(golden("tiny_class").join("config.json")).unwrap();
    std::fs::write(
        wrong.join("config.json"),
        cfg.replace("\"num_class_embeds\": 10", "\"num_class_embeds\": 12"),
    )
    .unwrap();
    std::fs::copy(
        golden("tiny_class").join("diffusion_pytorch_model.bin"),
        wrong.join("diffusion_pytorch_model.bin"),
    )
    .unwrap();
    assert_one_line_error(
        &eval(&wrong, &["--t", "3", "--labels", &labels]),
        &["class_embedding.weight"],
    );
    // Truncated weights.
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::copy(golden("tiny").join("config.json"), cut.join("config.json")).unwrap();
    let bytes = std::fs::read(golden("tiny").join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        cut.join("diffusion_pytorch_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    assert_one_line_error(
        &eval(&cut, &["--t", "3"]),
        &["diffusion_pytorch_model.safetensors"],
    );
    // Labels out of range, and a class-conditional network without labels.
    let bad = dir.path().join("bad_labels.npy");
    Tensor::new(&[0i64, 10, 3], &Device::Cpu)
        .unwrap()
        .write_npy(&bad)
        .unwrap();
    assert_one_line_error(
        &eval(&golden("tiny_class"), &["--t", "3", "--labels", &s(&bad)]),
        &["--labels", "0..10"],
    );
    assert_one_line_error(&eval(&golden("tiny_class"), &["--t", "3"]), &["labels"]);
    // Neither --t nor --t-file; a missing input file.
    assert_one_line_error(&eval(&golden("tiny"), &[]), &["--t"]);
    let missing = diffuq(&[
        "model",
        "eval",
        &s(&golden("tiny")),
        "--input",
        "nope.npy",
        "--t",
        "1",
        "--out",
        &out,
    ]);
    assert_one_line_error(&missing, &["nope.npy"]);
}
