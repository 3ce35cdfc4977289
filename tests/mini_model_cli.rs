//! The mini-model artifact and the model cache end to end, at smoke scale: `diffuq train` trains a
//! recipe once and finds it again, a changed key retrains, `diffuq run mini-model` writes its
//! figures and table and says that its quality bar was not checked at smoke scale.
//!
//! Expected values are diffuq's own contract (no reference numbers): cache keys are stable, the
//! smoke verdict is "NOT CHECKED" (exit 0, `reproduced: null` and `outcome: not-checked` in the
//! manifest: pixel features cannot test the FID bar), the run directory holds the files the
//! README lists.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{cache_with_data, text};

fn diffuq(args: &[&str], cache: &Path, cwd: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuq"));
    cmd.current_dir(cwd)
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .arg("--experiments")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DIFFUQ_")) {
        cmd.env_remove(k);
    }
    cmd.output().expect("spawn diffuq")
}

fn model_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .find(|l| l.starts_with("model "))
        .unwrap_or_else(|| panic!("no model line in {}", text(&out.stdout)))
        .to_string()
}

#[test]
fn train_caches_by_recipe_and_run_reports_not_checked() {
    let cache = cache_with_data();
    let cwd = tempfile::tempdir().unwrap();
    let (c, w) = (cache.path(), cwd.path());

    let first = model_line(&diffuq(&["train", "mini-model", "--scale", "smoke"], c, w));
    let key = first.split_whitespace().nth(1).unwrap().to_string();
    let entry = c.join("diffuq/models").join(&key);
    for f in [
        "recipe.json",
        "manifest.json",
        "model.safetensors",
        "ema.safetensors",
        "trace.tsv",
    ] {
        assert!(
            entry.join(f).is_file(),
            "{f} missing in {}",
            entry.display()
        );
    }
    assert!(
        !entry.join("checkpoint").exists(),
        "checkpoints are removed once finished"
    );
    let trace = std::fs::read_to_string(entry.join("trace.tsv")).unwrap();
    assert_eq!(trace.lines().count(), 1 + 6, "header + 6 smoke steps");
    let stamp = std::fs::metadata(entry.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();

    // Same recipe: found in the cache, not retrained.
    let again = model_line(&diffuq(&["train", "mini-model", "--scale", "smoke"], c, w));
    assert_eq!(again, first);
    let stamp2 = std::fs::metadata(entry.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, stamp2);

    // A changed training key is another model.
    let other = model_line(&diffuq(
        &[
            "train",
            "mini-model",
            "--scale",
            "smoke",
            "model.train.lr=5e-4",
        ],
        c,
        w,
    ));
    assert_ne!(other.split_whitespace().nth(1).unwrap(), key);

    // The artifact uses the cached model, writes figures and table, and does not overstate.
    let run = diffuq(&["run", "mini-model", "--scale", "smoke"], c, w);
    assert_eq!(run.status.code(), Some(0), "stderr: {}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("NOT CHECKED"), "{stdout}");
    assert!(stdout.contains("\noutcome: not-checked\n"), "{stdout}");
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run directory: "))
        .map(|d| w.join(d.trim()))
        .unwrap();
    for f in [
        "figures/samples.png",
        "figures/samples.svg",
        "figures/loss.png",
        "figures/loss.svg",
        "metrics.parquet",
        "loss.parquet",
        "table.md",
        "compare.md",
        "table.tex",
        "seeds/seed-0/samples.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["reproduced"].is_null(), "{manifest}");
    assert_eq!(manifest["outcome"], "not-checked");
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(log.contains(&key), "the run names the model it used: {log}");
    let rerun = diffuq(&["run", "mini-model", "--scale", "smoke"], c, w);
    assert!(text(&rerun.stdout).contains("reusing finished run"));
}

#[test]
fn bad_recipe_keys_are_named() {
    let cwd = tempfile::tempdir().unwrap();
    let out = diffuq(
        &[
            "validate",
            "mini-model",
            "--scale",
            "smoke",
            "model.unet.sample_size=9",
        ],
        cwd.path(),
        cwd.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("model.unet.sample_size"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
