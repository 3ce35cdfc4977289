//! The real Fashion-MNIST, end to end: `diffuq fetch fashion-mnist` fills the data cache from
//! Debian's dataset-fashion-mnist package (≈ 31 MB, once per machine; later runs find the cache),
//! the pinned files load, and the CLI's `--from` path and its errors behave.
//!
//! This test does not skip when the cache is empty: it fetches, so it needs Debian's `apt-get`
//! and a mirror (CI machines have both).
//!
//! Expected numbers:
//! - sha256 pins: the decompressed files of dataset-fashion-mnist 0.0~git20200523.55506a9-1
//!   (`zcat … | sha256sum`), identical to zalandoresearch/fashion-mnist's data/fashion;
//! - 60,000 training and 10,000 test images of 28×28: the Fashion-MNIST README;
//! - 6,000 training and 1,000 test images per class: Xiao et al. 2017 (7,000 per class, split as
//!   MNIST), and counted in the pinned label files with Python's `collections.Counter`;
//! - the first training label, 9 ("Ankle boot" in the README's label table): the first byte after
//!   the 8-byte header of the pinned train-labels file (`xxd`: `00000801 0000ea60 09`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::Device;
use diffuq::data::fashion_mnist::{
    fetch_fashion_mnist, locate_fashion_mnist, FashionMnist, Split, CLASS_NAMES, FILES,
};
use diffuq::fetch::{default_data_dir, sha256_file};

/// The data cache's Fashion-MNIST directory, fetched once per test process.
fn real_data() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let start = Instant::now();
        let dir = fetch_fashion_mnist(&default_data_dir(), None)
            .unwrap_or_else(|e| panic!("fetching Fashion-MNIST: {e}"));
        eprintln!(
            "fetch (or cache check): {:.2} s",
            start.elapsed().as_secs_f64()
        );
        dir
    })
}

fn diffuq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffuq"))
        .args(args)
        .output()
        .expect("spawn diffuq")
}

#[test]
fn real_files_match_the_pins_and_the_readme() {
    let dir = real_data();
    assert_eq!(
        locate_fashion_mnist(None, &default_data_dir()).unwrap(),
        dir
    );
    for f in FILES {
        assert_eq!(
            sha256_file(&dir.join(f.name)).unwrap(),
            f.sha256,
            "{}",
            f.name
        );
    }
    for (split, per_class) in [(Split::Train, 6_000), (Split::Test, 1_000)] {
        let start = Instant::now();
        let set = FashionMnist::load(dir, split).unwrap();
        eprintln!("load {split:?}: {:.2} s", start.elapsed().as_secs_f64());
        assert_eq!(set.n, split.count());
        assert_eq!(
            (set.channels, set.height, set.width),
            (1, FashionMnist::IMAGE_SIZE, FashionMnist::IMAGE_SIZE)
        );
        assert_eq!(set.images.len(), set.n * 28 * 28);
        let labels = set.labels.as_ref().unwrap();
        let mut counts = [0usize; 10];
        for &l in labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [per_class; 10], "{split:?}");
        if split == Split::Train {
            assert_eq!(labels[0], 9);
            assert_eq!(CLASS_NAMES[labels[0] as usize], "Ankle boot");
        }
    }
}

// Expected numbers: x/127.5 − 1 of the pinned test images; padding 28 → 32 adds 2 black (-1)
// pixels on each side by construction.
#[test]
fn test_split_as_a_padded_tensor() {
    let set = FashionMnist::load(real_data(), Split::Test).unwrap();
    let t = set.to_tensor(32, "data.image_size", &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[10_000, 1, 32, 32]);
    let first: Vec<Vec<f32>> = t.get(0).unwrap().get(0).unwrap().to_vec2().unwrap();
    for (y, row) in first.iter().enumerate() {
        for (x, &v) in row.iter().enumerate() {
            if !(2..30).contains(&y) || !(2..30).contains(&x) {
                assert_eq!(v, -1.0, "border ({y}, {x})");
            } else {
                let raw = set.images[(y - 2) * 28 + (x - 2)];
                assert!((v - (raw as f32 / 127.5 - 1.0)).abs() < 1e-6);
            }
        }
    }
    let all: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let (lo, hi) = all
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert_eq!((lo, hi), (-1.0, 1.0));
}

#[test]
fn cli_fetch_from_a_directory_then_from_its_cache() {
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().to_str().unwrap();
    let from = real_data().to_str().unwrap();
    let want = format!("{}\n", cache.path().join("fashion-mnist").display());

    let out = diffuq(&[
        "fetch",
        "fashion-mnist",
        "--cache-dir",
        cache_arg,
        "--from",
        from,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let mtime = |f: &str| {
        std::fs::metadata(cache.path().join("fashion-mnist").join(f))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = FILES.iter().map(|f| mtime(f.name)).collect();

    // A second fetch finds the cache valid, reads nothing from --from (here: an empty
    // directory), rewrites nothing, and prints the same path.
    let empty = tempfile::tempdir().unwrap();
    let out = diffuq(&[
        "fetch",
        "fashion-mnist",
        "--cache-dir",
        cache_arg,
        "--from",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let after: Vec<_> = FILES.iter().map(|f| mtime(f.name)).collect();
    assert_eq!(before, after);
}

#[test]
fn cli_fetch_errors_are_one_line_with_exit_code_2() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let check = |args: &[&str], needles: &[&str]| {
        let out = diffuq(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        for n in needles {
            assert!(err.contains(n), "`{n}` missing from: {err}");
        }
    };
    let (c, e) = (
        cache.path().to_str().unwrap(),
        empty.path().to_str().unwrap(),
    );
    check(
        &["fetch", "fashion-mnist", "--cache-dir", c, "--from", e],
        &[e, "train-images-idx3-ubyte", "diffuq fetch fashion-mnist"],
    );
    check(
        &["fetch", "inception", "--cache-dir", c, "--from", e],
        &["--from", "fashion-mnist"],
    );
}
