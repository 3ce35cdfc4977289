//! Paper scale through the binary: the `[weights]`/`[data]`/`[reference]` files of every paper
//! profile are listed by `diffuq validate`, a missing one stops `validate` and `run` with exit 2
//! before any compute, and the filtering and reconstruction kinds run on a paper checkpoint
//! (`model.from = "checkpoint:…"`) end to end.
//!
//! The checkpoint is golden/adm/imagenet64_tiny: a random-init guided-diffusion `UNetModel` written
//! by guided-diffusion's own code (commit 22e0df81, golden/adm_reference.py) with its flags in
//! config.json, which take precedence over the catalogued ImageNet-64 flags. The reference and
//! training images are random uint8 arrays written here in ADM's reference-batch layout (`arr_0`
//! NHWC, `arr_1` labels); nothing here compares numbers with a paper — these runs check the
//! plumbing (files found, shapes, classes, every score computed and reported), not a claim.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn diffuq(args: &[&str], cache: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuq"));
    cmd.current_dir(ROOT).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DIFFUQ_")) {
        cmd.env_remove(k);
    }
    // The paper-files directory (and every other cache) under a fresh root.
    cmd.env("XDG_CACHE_HOME", cache);
    cmd.output().expect("spawn diffuq")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn artifacts() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("experiments"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("experiment.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn validate_lists_every_paper_file_and_missing_ones_are_exit_2() {
    let cache = tempfile::tempdir().unwrap();
    let paper_dir = cache.path().join("diffuq/paper");
    let mut with_files = 0;
    for a in artifacts() {
        let out = diffuq(&["validate", &a, "--scale", "paper"], cache.path());
        let (so, se) = (text(&out.stdout), text(&out.stderr));
        // The configuration itself is valid at paper scale for every artifact.
        assert!(so.contains("# config hash "), "{a}: {so}{se}");
        if !so.contains("# input files") {
            assert_eq!(out.status.code(), Some(0), "{a}: {se}");
            continue;
        }
        with_files += 1;
        assert_eq!(out.status.code(), Some(2), "{a}: {se}");
        assert!(so.contains("weights.model"), "{a}: {so}");
        assert!(so.contains(&paper_dir.display().to_string()), "{a}: {so}");
        let listed = so.lines().filter(|l| l.starts_with("#   MISSING")).count();
        assert!(listed > 0);
        assert!(
            so.lines()
                .filter(|l| l.starts_with("#   MISSING"))
                .all(|l| l.contains("http")),
            "{a}: every file says where it is published: {so}"
        );
        assert_eq!(se.trim_end().lines().count(), 1, "{a}: {se}");
        assert!(
            se.starts_with("error: ") && se.contains(&format!("{listed} missing input file(s)")),
            "{a}: {se}"
        );
        // `run` stops before any compute and writes no run directory.
        let runs = cache.path().join("runs");
        let out = diffuq(
            &[
                "run",
                &a,
                "--scale",
                "paper",
                "--runs-dir",
                runs.to_str().unwrap(),
            ],
            cache.path(),
        );
        assert_eq!(out.status.code(), Some(2), "{a}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("missing input file(s), nothing computed"));
        assert!(!runs.join(&a).exists(), "{a}: a run directory was created");
    }
    // Every image artifact of the papers names its checkpoint (au-table1..3, the gu-* filtering
    // family, gu-c7, au-fig3's trained panel).
    assert!(with_files >= 11, "{with_files}");

    // With the files in place (any file: validate checks presence), validate passes.
    std::fs::create_dir_all(&paper_dir).unwrap();
    for f in ["64x64_diffusion.pt", "VIRTUAL_imagenet64_labeled.npz"] {
        std::fs::write(paper_dir.join(f), b"x").unwrap();
    }
    let out = diffuq(&["validate", "au-table3", "--scale", "paper"], cache.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("#   found   weights.model"));
    // An absolute override replaces the published name.
    let out = diffuq(
        &[
            "validate",
            "au-table3",
            "--scale",
            "paper",
            "weights.model=/nonexistent/adm.pt",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("weights.model = /nonexistent/adm.pt"));
}

/// `diffuq --experiments <exp> run <artifact> --scale smoke --runs-dir <runs> [extra…]`.
fn run_smoke(exp: &Path, artifact: &str, runs: &Path, extra: &[&str], cache: &Path) -> Output {
    let mut args = vec![
        "--experiments",
        exp.to_str().unwrap(),
        "run",
        artifact,
        "--scale",
        "smoke",
        "--runs-dir",
        runs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    diffuq(&args, cache)
}

/// The one run directory under `runs/<artifact>/smoke/`.
fn the_run_dir(runs: &Path, artifact: &str) -> PathBuf {
    std::fs::read_dir(runs.join(artifact).join("smoke"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("a run directory")
}

/// Random uint8 images (N, 16, 16, 3) with labels < 10 in ADM's reference-batch layout.
fn write_batch(path: &Path, n: usize, seed: u8) {
    let px: Vec<u8> = (0..n * 16 * 16 * 3)
        .map(|i| ((i as u64 * 2654435761 + seed as u64 * 97) >> 7) as u8)
        .collect();
    let x = Tensor::from_vec(px, (n, 16, 16, 3), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(
        (0..n as i64).map(|i| i % 10).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(x.dtype(), DType::U8);
    Tensor::write_npz(&[("arr_0", &x), ("arr_1", &y)], path).unwrap();
}

/// An experiments directory holding `artifact`'s file with its smoke profile pointed at the tiny
/// ADM checkpoint and the two image batches.
fn experiments_with_checkpoint(tmp: &Path, artifact: &str, extra: &str) -> PathBuf {
    let ckpt = Path::new(ROOT).join("golden/adm/imagenet64_tiny/model.pt");
    experiments_with(tmp, artifact, "adm-imagenet64", &ckpt, "", extra)
}

/// As [`experiments_with_checkpoint`], with more `[smoke.weights]` lines.
fn experiments_with(
    tmp: &Path,
    artifact: &str,
    name: &str,
    ckpt: &Path,
    weights: &str,
    extra: &str,
) -> PathBuf {
    let exp = tmp.join("experiments");
    std::fs::create_dir_all(exp.join(artifact)).unwrap();
    let text = std::fs::read_to_string(
        Path::new(ROOT)
            .join("experiments")
            .join(artifact)
            .join("experiment.toml"),
    )
    .unwrap();
    let text = format!(
        "{text}\n[smoke.model]\nfrom = \"checkpoint:{name}\"\nuse_ema = true\nprecision = \"f32\"\n[smoke.weights]\nmodel = \"{}\"\n{weights}{extra}",
        ckpt.display()
    );
    std::fs::write(exp.join(artifact).join("experiment.toml"), text).unwrap();
    write_batch(&tmp.join("ref.npz"), 24, 1);
    write_batch(&tmp.join("train.npz"), 16, 2);
    exp
}

#[test]
fn filtering_runs_on_a_paper_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let extra = format!(
        "[smoke.data]\nlaplace = \"{}\"\n[smoke.reference]\nfid = \"{}\"\n",
        t.join("train.npz").display(),
        t.join("ref.npz").display()
    );
    let exp = experiments_with_checkpoint(t, "au-table1", &extra);
    let runs = t.join("runs");
    let out = run_smoke(&exp, "au-table1", &runs, &[], t);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}\n{se}");
    let dir = the_run_dir(&runs, "au-table1");
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    // Every score of AU Table 1 was computed on the 3-channel 16² class-conditional network.
    for s in ["| au ", "| bayesdiff ", "| mc-dropout ", "| random "] {
        assert!(table.contains(s), "{s} missing from {table}");
    }
    assert!(table.contains("`reference.fid` images"), "{table}");
    assert!(
        table.contains("not tabulated") || table.contains("class"),
        "{table}"
    );
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap_or_default();
    assert!(log.contains("checkpoint:adm-imagenet64"), "{log}");
    let samples =
        candle_core::safetensors::load(dir.join("seeds/seed-0/samples.safetensors"), &Device::Cpu)
            .unwrap();
    let dims: Vec<Vec<usize>> = samples.values().map(|t| t.dims().to_vec()).collect();
    assert!(
        dims.iter().any(|d| d[1..] == [3, 16, 16]),
        "samples are 3×16×16: {dims:?}"
    );
    // The manifest records the sha256 of every input file; a changed reference batch is not
    // silently reused.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    for k in ["weights.model", "data.laplace", "reference.fid"] {
        assert_eq!(
            manifest["inputs"][k].as_str().map(str::len),
            Some(64),
            "{k}: {manifest}"
        );
    }
    write_batch(&t.join("ref.npz"), 24, 9);
    let again = run_smoke(&exp, "au-table1", &runs, &[], t);
    let se = text(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{se}");
    assert!(
        se.contains("reference.fid") && se.contains("--force"),
        "{se}"
    );
}

#[test]
fn a_class_conditional_checkpoint_needs_labelled_training_images() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let unlabelled = t.join("unlabelled.npz");
    let x = Tensor::zeros((4, 16, 16, 3), DType::U8, &Device::Cpu).unwrap();
    Tensor::write_npz(&[("arr_0", &x)], &unlabelled).unwrap();
    let extra = format!(
        "[smoke.data]\nlaplace = \"{}\"\n[smoke.reference]\nfid = \"{}\"\n",
        unlabelled.display(),
        t.join("ref.npz").display()
    );
    let exp = experiments_with_checkpoint(t, "au-table1", &extra);
    let out = run_smoke(&exp, "au-table1", &t.join("runs"), &[], t);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{se}");
    assert!(
        se.contains("data.laplace") && se.contains("arr_1") && se.contains("class-conditional"),
        "{se}"
    );
}

#[test]
fn gu_scores_run_on_a_paper_checkpoint_with_clip_features() {
    // GU's semantic φ at paper scale is CLIP (`eval.semantic_features = "clip"`, weights.clip):
    // here the tiny transformers CLIP of golden/clip (written by transformers 5.24.0,
    // golden/clip_reference.py), 32² input.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let clip = Path::new(ROOT).join("golden/clip/hf_vision_tiny");
    let weights = format!("clip = \"{}\"\n", clip.display());
    let extra = format!(
        "[smoke.data]\nlaplace = \"{}\"\n[smoke.reference]\nfid = \"{}\"\n",
        t.join("train.npz").display(),
        t.join("ref.npz").display()
    );
    let ckpt = Path::new(ROOT).join("golden/adm/imagenet64_tiny/model.pt");
    let exp = experiments_with(t, "gu-fig3", "adm-imagenet64", &ckpt, &weights, &extra);
    let runs = t.join("runs");
    let out = run_smoke(&exp, "gu-fig3", &runs, &["eval.semantic_features=clip"], t);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}\n{se}");
    let dir = the_run_dir(&runs, "gu-fig3");
    let cfg = std::fs::read_to_string(dir.join("config.resolved.toml")).unwrap();
    assert!(cfg.contains("semantic_features = \"clip\""), "{cfg}");
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(table.contains("| gu-semantic"), "{table}");
}

#[test]
fn a_latent_checkpoint_samples_latents_and_is_scored_on_decoded_images() {
    // U-ViT (golden/uvit/class_tiny: 4×8×8 latents, 11 labels, written by U-ViT's own code at
    // ce551708) with the LDM-naming KL-f8 autoencoder of golden/vae/ldm_tiny (decoder and encoder
    // written by U-ViT's libs/autoencoder.py; factor 2: 16² RGB images): GU's scores and
    // BayesDiff fit the last-layer Laplace on VAE-encoded training images and score latents;
    // the metrics see decoded images.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let vae = Path::new(ROOT).join("golden/vae/ldm_tiny/autoencoder_kl.pth");
    let weights = format!("vae = \"{}\"\n", vae.display());
    let extra = format!(
        "[smoke.data]\nlaplace = \"{}\"\n[smoke.reference]\nfid = \"{}\"\n",
        t.join("train.npz").display(),
        t.join("ref.npz").display()
    );
    let ckpt = Path::new(ROOT).join("golden/uvit/class_tiny/model.pth");
    let exp = experiments_with(t, "gu-fig3", "uvit-imagenet256", &ckpt, &weights, &extra);
    let runs = t.join("runs");
    let out = run_smoke(&exp, "gu-fig3", &runs, &[], t);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}\n{se}");
    let dir = the_run_dir(&runs, "gu-fig3");
    let samples =
        candle_core::safetensors::load(dir.join("seeds/seed-0/samples.safetensors"), &Device::Cpu)
            .unwrap();
    // What is stored are the decoded images' uint8 pixels: 3×16×16, not the 4×8×8 latents.
    let plain = &samples["plain"];
    assert_eq!(plain.dims()[1..], [3, 16, 16], "{:?}", plain.dims());
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(
        table.contains("| gu-semantic") && table.contains("| bayesdiff-release"),
        "{table}"
    );
}

#[test]
fn a_checkpoint_runs_in_half_precision_and_the_mini_model_refuses_it() {
    // `model.precision = "f16"` (or "bf16" on a GPU): the network's weights and activations in
    // half precision (the releases sample under autocast/fp16), samples and metrics f32. On the
    // CPU this checks the plumbing with f16 (candle's CPU matmul has no bf16 kernel, which is a
    // one-line error); the numbers move by half-precision round-off, which a smoke table does
    // not test.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let extra = format!(
        "[smoke.data]\nlaplace = \"{}\"\n[smoke.reference]\nfid = \"{}\"\n",
        t.join("train.npz").display(),
        t.join("ref.npz").display()
    );
    let exp = experiments_with_checkpoint(t, "au-table1", &extra);
    let runs = t.join("runs");
    let out = run_smoke(&exp, "au-table1", &runs, &["model.precision=\"f16\""], t);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run_smoke(&exp, "au-table1", &runs, &["model.precision=\"bf16\""], t);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{se}");
    assert!(
        se.contains("model.precision") && se.contains("--device cuda"),
        "{se}"
    );
    // The mini model is trained in f32: half precision there is a config error naming the key.
    let out = diffuq(
        &[
            "--experiments",
            exp.to_str().unwrap(),
            "validate",
            "au-table1",
            "--scale",
            "smoke",
            "model.from=\"mini-model\"",
            "model.precision=\"bf16\"",
        ],
        t,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("model.precision"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_network_that_returns_nan_stops_the_run_naming_the_sample_and_marks_it_failed() {
    // The tiny ADM checkpoint with one NaN in `out.2.bias` (every output position of channel 0):
    // the plain samples are NaN from the first step.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = Path::new(ROOT).join("golden/adm/imagenet64_tiny");
    let mut tensors = diffuq::checkpoint::read_tensors(&src.join("model.pt")).unwrap();
    for (name, v) in tensors.iter_mut() {
        if name == "out.2.bias" {
            let mut b: Vec<f32> = v.to_vec1().unwrap();
            b[0] = f32::NAN;
            *v = Tensor::from_vec(b, v.dims(), &Device::Cpu).unwrap();
        }
    }
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let ckpt = t.join("nan.safetensors");
    candle_core::safetensors::save(&map, &ckpt).unwrap();
    std::fs::copy(src.join("config.json"), t.join("nan.json")).unwrap();
    let extra = format!(
        "[smoke.data]\nlaplace = \"{}\"\n[smoke.reference]\nfid = \"{}\"\n",
        t.join("train.npz").display(),
        t.join("ref.npz").display()
    );
    let exp = experiments_with(t, "au-table1", "adm-imagenet64", &ckpt, "", &extra);
    let runs = t.join("runs");
    let out = run_smoke(&exp, "au-table1", &runs, &[], t);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{se}");
    assert_eq!(se.trim_end().lines().count(), 1, "{se}");
    assert!(
        se.contains("seed 0") && se.contains("at sample 0") && se.contains("NaN"),
        "{se}"
    );
    let dir = the_run_dir(&runs, "au-table1");
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"status\": \"failed\""), "{manifest}");
    assert!(manifest.contains("at sample 0"), "{manifest}");
}
