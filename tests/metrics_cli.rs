//! `diffuq fid` and `diffuq prdc` end to end: the inputs pytorch-fid and prdc users have
//! (statistics .npz, feature .npy) give the reference libraries' numbers, and bad inputs give one
//! line on stderr with exit code 2.
//!
//! Expected numbers: golden/metrics_fid_prdc.py (pytorch-fid 0.3.0 `calculate_frechet_distance`,
//! prdc 0.2 `compute_prdc`), fixtures golden/metrics/{fid_64,prdc}.npz.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Tensor;
use diffuq::metrics::fid::GaussianStats;

fn diffuq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuq"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("spawn diffuq")
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/metrics")
        .join(name)
}

fn array(npz: &str, name: &str) -> Tensor {
    Tensor::read_npz(golden(npz))
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
}

fn scalar(npz: &str, name: &str) -> f64 {
    array(npz, name).to_vec1::<f64>().unwrap()[0]
}

fn value(stdout: &[u8], label: &str) -> f64 {
    let s = String::from_utf8_lossy(stdout);
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no `{label}:` line in {s}"))
        .parse()
        .unwrap()
}

fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

#[test]
fn fid_from_stats_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stats = |mu: &str, sigma: &str| {
        GaussianStats::new(
            array("fid_64.npz", mu).to_vec1::<f64>().unwrap(),
            array("fid_64.npz", sigma)
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            mu,
        )
        .unwrap()
    };
    stats("mu_a", "sigma_a")
        .write_npz(&d.join("a.npz"))
        .unwrap();
    stats("mu_b", "sigma_b")
        .write_npz(&d.join("b.npz"))
        .unwrap();
    array("fid_64.npz", "a")
        .write_npy(d.join("a_feats.npy"))
        .unwrap();
    let want = scalar("fid_64.npz", "fd");

    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let fid = |args: &[&str]| {
        let out = diffuq(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        value(&out.stdout, "FID")
    };
    approx::assert_relative_eq!(
        fid(&["fid", &p("a.npz"), &p("b.npz")]),
        want,
        max_relative = 1e-6
    );
    // Features on one side; their statistics saved in pytorch-fid's layout.
    let with_features = fid(&[
        "fid",
        &p("a_feats.npy"),
        &p("b.npz"),
        "--save-stats",
        &p("stats"),
    ]);
    approx::assert_relative_eq!(with_features, want, max_relative = 1e-6);
    let saved = GaussianStats::read_npz(&d.join("stats/a_feats.stats.npz")).unwrap();
    approx::assert_relative_eq!(
        saved.mu[5],
        array("fid_64.npz", "mu_a").to_vec1::<f64>().unwrap()[5],
        max_relative = 1e-12
    );
    // Two inputs of the same stem keep both statistics (the second overwrote the first before).
    std::fs::create_dir_all(d.join("other")).unwrap();
    std::fs::copy(d.join("b.npz"), d.join("other/a_feats.npz")).unwrap();
    let same_stem = fid(&[
        "fid",
        &p("a_feats.npy"),
        &p("other/a_feats.npz"),
        "--save-stats",
        &p("both"),
    ]);
    approx::assert_relative_eq!(same_stem, want, max_relative = 1e-6);
    let a = GaussianStats::read_npz(&d.join("both/a.a_feats.stats.npz")).unwrap();
    let b = GaussianStats::read_npz(&d.join("both/b.a_feats.stats.npz")).unwrap();
    approx::assert_relative_eq!(a.mu[5], saved.mu[5], max_relative = 1e-12);
    assert!(
        (a.mu[5] - b.mu[5]).abs() > 0.0,
        "the second input's statistics overwrote the first"
    );
}

#[test]
fn prdc_from_features() {
    let dir = tempfile::tempdir().unwrap();
    let (real, fake) = (dir.path().join("real.npy"), dir.path().join("fake.npy"));
    array("prdc.npz", "real").write_npy(&real).unwrap();
    array("prdc.npz", "fake").write_npy(&fake).unwrap();
    let out = diffuq(&[
        "prdc",
        real.to_str().unwrap(),
        fake.to_str().unwrap(),
        "--k",
        "5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in ["precision", "recall", "coverage"] {
        assert_eq!(
            value(&out.stdout, m),
            scalar("prdc.npz", &format!("{m}_k5")),
            "{m}"
        );
    }
    approx::assert_relative_eq!(
        value(&out.stdout, "density"),
        scalar("prdc.npz", "density_k5"),
        max_relative = 1e-12
    );
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let stats = golden("adm_reference_tiny.npz");
    let stats = stats.to_str().unwrap();

    // Statistics where features are needed.
    let out = diffuq(&["prdc", stats, stats]);
    assert_one_line_error(&out, &["adm_reference_tiny.npz", "holds statistics"]);

    // Images without Inception weights: the fix is named.
    Tensor::zeros(
        (2, 8, 8, 3),
        candle_core::DType::U8,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .write_npy(d.join("imgs.npy"))
    .unwrap();
    let out = diffuq(&[
        "fid",
        &p("imgs.npy"),
        stats,
        "--inception-path",
        &p("missing.pt"),
    ]);
    assert_one_line_error(
        &out,
        &[
            "missing.pt",
            "diffuq fetch inception",
            "features.inception_path",
        ],
    );

    // Images of the wrong layout.
    Tensor::zeros((2, 8, 8), candle_core::DType::U8, &candle_core::Device::Cpu)
        .unwrap()
        .write_npy(d.join("flat.npy"))
        .unwrap();
    let out = diffuq(&["fid", &p("flat.npy"), stats]);
    assert_one_line_error(&out, &["flat.npy", "expected uint8 images (N, H, W, 3)"]);

    // Statistics of different dimensions (64 vs 16).
    let feats = d.join("f.npy");
    array("fid_64.npz", "a").write_npy(&feats).unwrap();
    let out = diffuq(&["fid", feats.to_str().unwrap(), stats]);
    assert_one_line_error(&out, &["feature dimensions differ (64 vs 16)"]);

    // Too few samples for k.
    array("fid_64.npz", "a")
        .narrow(0, 0, 3)
        .unwrap()
        .write_npy(d.join("three.npy"))
        .unwrap();
    let out = diffuq(&["prdc", feats.to_str().unwrap(), &p("three.npy")]);
    assert_one_line_error(&out, &["three.npy", "3 rows", "k + 1 = 4"]);

    // Not a metric input.
    std::fs::write(d.join("x.txt"), "hi").unwrap();
    let out = diffuq(&["fid", &p("x.txt"), stats]);
    assert_one_line_error(&out, &["x.txt", "unknown extension"]);
}
