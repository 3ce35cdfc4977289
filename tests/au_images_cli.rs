//! AU's image tables beyond filtering, end to end at smoke scale through the binary: au-table2
//! (kind "reconstruction": AUSE/AURG of summed pixel uncertainty on T/2 reconstructions) and
//! au-table3 (the filtering kind with the `au-guided` score: FID with and without Alg. 2's
//! uncertainty guidance from the same x_T).
//!
//! Expected values are diffuq's own contract, not reference numbers (the metrics and the guidance
//! step have their own reference tests: tests/metrics_other.rs, src/uq/guidance.rs): the smoke
//! verdict is "not-checked" with exit 0; the frames hold one row per method and seed; guided
//! samples differ from the plain ones and their values do not depend on the batch size (the
//! population thresholds are over the whole set); the release compat keys run and move the
//! numbers; bad keys are one-line errors naming the key (exit 2); the paper profiles validate and
//! their runs name the missing weights.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{cache_with_data, run_dir, text};
use polars::prelude::*;

fn diffuq(args: &[&str], cache: &Path, cwd: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuq"));
    cmd.current_dir(cwd)
        .arg("--experiments")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments"))
        .args(args)
        .env("XDG_CACHE_HOME", cache);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DIFFUQ_")) {
        cmd.env_remove(k);
    }
    cmd.output().expect("spawn diffuq")
}

fn frame(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn col_f64(f: &DataFrame, c: &str) -> Vec<f64> {
    f.column(c)
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect()
}

#[test]
fn au_table2_reconstructs_and_reports_ause_aurg_per_method() {
    let cache = cache_with_data();
    let cwd = tempfile::tempdir().unwrap();
    let (c, w) = (cache.path(), cwd.path());
    let out = diffuq(&["run", "au-table2", "--scale", "smoke"], c, w);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("outcome: not-checked"), "{stdout}");
    let dir = w.join(run_dir(&out));
    for f in [
        "table.md",
        "compare.md",
        "aucs.parquet",
        "curves.parquet",
        "figures/sparsification.png",
        "figures/sparsification.svg",
    ] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let aucs = frame(&dir.join("aucs.parquet"));
    assert_eq!(aucs.height(), 3 * 2, "3 methods × 2 seeds");
    let ause = col_f64(&aucs, "ause");
    assert!(ause.iter().all(|v| v.is_finite()), "{ause:?}");
    let curves = frame(&dir.join("curves.parquet"));
    assert_eq!(
        curves.height(),
        3 * 2 * 51,
        "51 curve points per method and seed"
    );
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(table.contains("t = 500"), "{table}");

    // The release's mismatched noise level and error scale run, and the error scale moves the
    // curves' RMSE by the factor ≈ 255 it introduces (bug a).
    let rel = diffuq(
        &[
            "run",
            "au-table2",
            "--scale",
            "smoke",
            "noise.compat=\"au-release\"",
            "metric.error_scale=\"au-release\"",
            "metric.zero_rows=20",
        ],
        c,
        w,
    );
    assert_eq!(rel.status.code(), Some(0), "{}", text(&rel.stderr));
    let r = frame(&w.join(run_dir(&rel)).join("aucs.parquet"));
    let (a, b) = (col_f64(&aucs, "rmse"), col_f64(&r, "rmse"));
    assert!(b[0] > 50.0 * a[0], "release scale: {} vs {}", b[0], a[0]);

    // Bad keys: one line naming the key, exit 2.
    for (kv, key) in [
        ("metric.pooling=\"median\"", "metric.pooling"),
        ("methods=[\"au\",\"ensembles\"]", "methods"),
        ("noise.t_start=-3.0", "noise.t_start"),
    ] {
        let bad = diffuq(&["validate", "au-table2", "--scale", "smoke", kv], c, w);
        assert_eq!(bad.status.code(), Some(2), "{kv}");
        let err = text(&bad.stderr);
        assert!(err.contains(key), "{kv}: {err}");
    }
}

#[test]
fn au_table3_guides_with_population_thresholds_independent_of_batching() {
    let cache = cache_with_data();
    let cwd = tempfile::tempdir().unwrap();
    let (c, w) = (cache.path(), cwd.path());
    let out = diffuq(&["run", "au-table3", "--scale", "smoke"], c, w);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("outcome: not-checked"), "{stdout}");
    assert!(
        stdout.contains("| plain ") && stdout.contains("| au-guided "),
        "{stdout}"
    );
    let dir = w.join(run_dir(&out));
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    let tau_line = log
        .lines()
        .find(|l| l.contains("seed 0: au-guided calibration"))
        .unwrap_or_else(|| panic!("no calibration line in {log}"));
    // Smoke: 5 DDIM steps, all guided → five thresholds.
    assert_eq!(tau_line.matches(':').count() - 2, 5, "{tau_line}");
    let info = frame(&dir.join("score_info.parquet"));
    let own: Vec<bool> = info
        .column("own_samples")
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .map(|b| b.unwrap_or(false))
        .collect();
    let nfe: Vec<u64> = info
        .column("nfe")
        .unwrap()
        .u64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    // Rows: plain, au-guided per seed. Guided: 5 steps + M = 2 per guided step.
    assert_eq!((own[0], own[1]), (false, true));
    assert_eq!((nfe[0], nfe[1]), (5, 15));

    // Another batch size: the same thresholds (over the whole set) and the same guided values.
    let other = diffuq(
        &["run", "au-table3", "--scale", "smoke", "batch_size=4"],
        c,
        w,
    );
    assert_eq!(other.status.code(), Some(0), "{}", text(&other.stderr));
    let a = frame(&dir.join("scores.parquet"));
    let b = frame(&w.join(run_dir(&other)).join("scores.parquet"));
    for (x, y) in col_f64(&a, "au-guided")
        .iter()
        .zip(col_f64(&b, "au-guided"))
    {
        approx::assert_relative_eq!(*x, y, max_relative = 1e-3);
    }

    // Guidance needs its table.
    let bad = diffuq(
        &[
            "validate",
            "au-table3",
            "--scale",
            "smoke",
            "guidance.window_len=9",
        ],
        c,
        w,
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("guidance.window"));
}

#[test]
fn paper_profiles_validate_and_name_the_missing_weights() {
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let (c, w) = (cache.path(), cwd.path());
    // The configuration is valid; the checkpoint is not here, which validate lists (with where it
    // is published) and run refuses before any compute (tests/paper_scale_cli.rs covers every
    // artifact).
    for artifact in ["au-table2", "au-table3"] {
        let v = diffuq(&["validate", artifact, "--scale", "paper"], c, w);
        assert_eq!(v.status.code(), Some(2), "{artifact}: {}", text(&v.stderr));
        assert!(
            text(&v.stdout).contains("MISSING weights.model"),
            "{artifact}"
        );
        assert!(text(&v.stdout).contains("64x64_diffusion.pt"), "{artifact}");
        let r = diffuq(&["run", artifact, "--scale", "paper"], c, w);
        assert_eq!(r.status.code(), Some(2), "{artifact}");
        let err = text(&r.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("missing input file(s)") && err.contains("weights.model"),
            "{err}"
        );
    }
}
