//! End-to-end tests of the `diffuq` binary: the smoke-scale gu-fig2 run, run-directory reuse and
//! resume, `report`, the three outcomes (a smoke run is "not checked" and exits 0 with
//! `reproduced: null`; a checked claim that fails exits 1), and the one-line errors with exit
//! code 2 for bad input.
//!
//! Expected numbers: the smoke table is an insta snapshot of diffuq's own deterministic CPU output
//! (seed streams + fixed configuration); it guards against unintended changes, and any intended
//! change must bump `version` in experiments/gu-fig2/experiment.toml. The outcomes are diffuq's
//! contract (src/tracking.rs `Outcome`, src/cli.rs exit codes).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn diffuq(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuq"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DIFFUQ_")) {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn diffuq")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Asserts exit code 2 and a single `error: …` line on stderr containing every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

fn run_dir_of(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("run directory: "))
        .expect("run directory line");
    PathBuf::from(line.trim_start_matches("run directory: "))
}

fn smoke(runs: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "gu-fig2",
        "--scale",
        "smoke",
        "--runs-dir",
        runs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    diffuq(&args, &[])
}

#[test]
fn smoke_run_writes_every_output_reuses_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = smoke(tmp.path(), &[]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let dir = run_dir_of(&stdout);
    for f in [
        "config.resolved.toml",
        "manifest.json",
        "samples.parquet",
        "metrics.parquet",
        "train_data.parquet",
        "table.md",
        "log.txt",
        "figures/gu-fig2.png",
        "figures/gu-fig2.svg",
    ] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    insta::assert_snapshot!("gu_fig2_smoke_table", table);

    // The smoke profile (eval.min_removed = 0) cannot test the claim: it says so, exits 0, and
    // the manifest records null, not true.
    assert!(
        stdout.contains("\noutcome: not-checked\nrun directory: "),
        "{stdout}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["reproduced"].is_null(), "{manifest}");
    assert_eq!(manifest["outcome"], "not-checked");
    // The paper comparison beside the table, in both formats, saying it compares directions.
    for f in ["compare.md", "table.tex"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(
            text.contains("kept: uncertainty") && text.contains("direction and ordering"),
            "{f}: {text}"
        );
    }
    assert_eq!(manifest["status"], "finished");
    assert_eq!(manifest["scale"], "smoke");
    // Peak resident memory of the computing process (Linux VmHWM), MiB: a positive number.
    let rss = manifest["peak_rss_mib"].as_f64().expect("peak_rss_mib");
    assert!(rss > 1.0 && rss < 64.0 * 1024.0, "{rss}");
    // The commit is the one the binary was built from (build.rs), a 40-hex sha inside git.
    let sha = manifest["git_sha"].as_str().unwrap();
    assert!(
        sha == "unknown" || (sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit())),
        "{sha}"
    );
    assert!(manifest["config_hash"]
        .as_str()
        .unwrap()
        .starts_with(dir.file_name().unwrap().to_str().unwrap()));
    for key in [
        "git_sha",
        "crate_version",
        "device",
        "threads",
        "wall_seconds",
    ] {
        assert!(!manifest[key].is_null(), "manifest lacks {key}");
    }

    // Same resolved config (an override equal to the file's value) → the finished run is reused.
    let again = smoke(tmp.path(), &["uq.keep_fraction=0.5"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        text(&again.stdout).starts_with("reusing finished run"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(run_dir_of(&text(&again.stdout)), dir);

    // --force recomputes everything (identical numbers) and keeps the old run beside the new one.
    let forced = smoke(tmp.path(), &["--force"]);
    assert_eq!(forced.status.code(), Some(0));
    assert!(!text(&forced.stdout).starts_with("reusing"));
    assert_eq!(
        std::fs::read_to_string(dir.join("table.md")).unwrap(),
        table
    );
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(!log.contains("reusing finished part"), "{log}");
    let siblings = std::fs::read_dir(dir.parent().unwrap()).unwrap().count();
    assert_eq!(siblings, 2, "old run not kept aside");

    // `report` re-renders the same table from the frames, and the same outcome.
    let report = diffuq(&["report", dir.to_str().unwrap()], &[]);
    assert_eq!(report.status.code(), Some(0));
    assert_eq!(
        text(&report.stdout),
        format!("{table}\noutcome: not-checked\n")
    );

    // Resume: an interrupted run (manifest still "running", last seed's part missing) recomputes
    // only that seed and ends with the identical table.
    let m = std::fs::read_to_string(dir.join("manifest.json"))
        .unwrap()
        .replace("\"finished\"", "\"running\"");
    std::fs::write(dir.join("manifest.json"), m).unwrap();
    std::fs::remove_dir_all(dir.join("seeds/seed-2")).unwrap();
    let resumed = smoke(tmp.path(), &[]);
    assert_eq!(resumed.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.join("table.md")).unwrap(),
        table
    );
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(
        log.contains("seed 0: reusing finished part")
            && log.contains("seed 1: reusing finished part"),
        "{log}"
    );
    assert!(!log.contains("seed 2: reusing"), "{log}");
}

#[test]
fn a_checked_claim_that_fails_exits_1() {
    // The smoke snapshot (tests/snapshots/cli__gu_fig2_smoke_table.snap) shows that the smoke
    // ensemble's filtering removes about half of the between-mode samples, like random filtering;
    // requiring all of them (eval.min_removed = 1) checks the claim and must fail. One seed and no
    // Laplace variant keep the test short; the outcome does not depend on them.
    let tmp = tempfile::tempdir().unwrap();
    let out = smoke(
        tmp.path(),
        &["eval.min_removed=1.0", "seeds=[0]", "laplace.enabled=false"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("\noutcome: not-reproduced\n"), "{stdout}");
    assert!(
        stdout.contains("(≥ 100% removed, and more than random) NOT REPRODUCED"),
        "{stdout}"
    );
    let dir = run_dir_of(&stdout);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["reproduced"], false);
    assert_eq!(manifest["outcome"], "not-reproduced");
    let report = diffuq(&["report", dir.to_str().unwrap()], &[]);
    assert_eq!(report.status.code(), Some(1));
    assert!(text(&report.stdout).ends_with("\noutcome: not-reproduced\n"));
}

#[test]
fn ls_and_validate() {
    let out = diffuq(&["ls"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("gu-fig2"));
    let out = diffuq(
        &["validate", "gu-fig2", "--scale", "smoke", "train.steps=7"],
        &[],
    );
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        s.contains("# config hash ") && s.contains("steps = 7"),
        "{s}"
    );
}

#[test]
fn unknown_artifact_is_an_error() {
    assert_one_line_error(
        &diffuq(&["run", "gu-fig99"], &[]),
        &["unknown artifact `gu-fig99`", "gu-fig2"],
    );
}

#[test]
fn missing_experiment_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = diffuq(
        &[
            "validate",
            "gu-fig2",
            "--experiments",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_one_line_error(&out, &["experiment.toml", "cannot read"]);
}

#[test]
fn unknown_key_is_an_error() {
    let out = diffuq(&["validate", "gu-fig2", "trian.steps=5"], &[]);
    assert_one_line_error(
        &out,
        &["`trian.steps`", "unknown key", "override `trian.steps=5`"],
    );
}

#[test]
fn wrong_typed_override_is_an_error() {
    let out = diffuq(&["validate", "gu-fig2", "train.steps=many"], &[]);
    assert_one_line_error(
        &out,
        &["`train.steps`", "\"many\"", "override `train.steps=many`"],
    );
    let out = diffuq(&["validate", "gu-fig2"], &[("DIFFUQ_UQ__GAMMA2", "-1.0")]);
    assert_one_line_error(
        &out,
        &[
            "`uq.gamma2`",
            "-1",
            "environment variable DIFFUQ_UQ__GAMMA2",
            "> 0",
        ],
    );
}

#[test]
fn config_errors_name_key_and_layer_for_every_artifact() {
    // diffuq's contract (src/config/mod.rs): a bad value names the key, the value and the layer
    // that set it — override or environment variable — for every artifact, not only gu-fig2.
    for artifact in [
        "au-fig3",
        "gu-fig2",
        "mini-model",
        "mini-flow",
        "au-table1",
        "au-table2",
        "au-table3",
        "gu-c7",
        "gu-fig16",
        "gu-fig3",
        "gu-fig4",
        "gu-fig6",
        "gu-table1",
        "gu-table4",
    ] {
        let out = diffuq(
            &["validate", artifact, "--scale", "smoke", "seeds=[3,3]"],
            &[],
        );
        assert_one_line_error(
            &out,
            &[
                "`seeds`",
                "must not repeat a seed",
                "override `seeds=[3,3]`",
            ],
        );
        let out = diffuq(
            &["validate", artifact, "--scale", "smoke"],
            &[("DIFFUQ_SEEDS", "[]")],
        );
        assert_one_line_error(
            &out,
            &[
                "`seeds`",
                "at least one seed",
                "environment variable DIFFUQ_SEEDS",
            ],
        );
    }
    // A key the file sets only in another profile ([paper.model] precision) can be overridden at
    // any scale, and is checked there.
    let out = diffuq(
        &[
            "validate",
            "au-table1",
            "--scale",
            "smoke",
            "model.precision=f64",
        ],
        &[],
    );
    assert_one_line_error(
        &out,
        &[
            "`model.precision`",
            "\"f64\"",
            "override `model.precision=f64`",
        ],
    );
    let out = diffuq(
        &[
            "validate",
            "au-table1",
            "--scale",
            "smoke",
            "model.precision=f32",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn malformed_toml_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("gu-fig2")).unwrap();
    std::fs::write(
        tmp.path().join("gu-fig2/experiment.toml"),
        "[default]\nversion = \n",
    )
    .unwrap();
    let out = diffuq(
        &[
            "run",
            "gu-fig2",
            "--experiments",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_one_line_error(&out, &["experiment.toml", "malformed TOML at line 2"]);
}

#[test]
fn unwritable_run_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file where the runs root should be").unwrap();
    let out = smoke(&blocker, &[]);
    assert_one_line_error(&out, &["run directory", "not-a-dir", "cannot create"]);
}

#[test]
fn bad_command_line_exits_2() {
    let out = diffuq(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = diffuq(&["run", "gu-fig2", "--scale", "huge"], &[]);
    assert_one_line_error(&out, &["unknown scale `huge`", "smoke, mini, paper"]);
}

#[test]
fn a_run_in_progress_locks_its_directory_and_a_stale_lock_is_taken_over() {
    // diffuq's contract (src/tracking.rs `RunLock`): `<run-dir>.lock` holds the owner's pid.
    let runs = tempfile::tempdir().unwrap();
    let first = smoke(runs.path(), &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let dir = run_dir_of(&text(&first.stdout));
    let dir = if dir.is_absolute() {
        dir
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
    };
    let lock = dir.with_file_name(format!(
        "{}.lock",
        dir.file_name().unwrap().to_string_lossy()
    ));
    assert!(!lock.exists(), "the lock is released when the run ends");
    // A live owner (this test process): the second run, with or without --force, stops.
    std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let out = smoke(runs.path(), extra);
        assert_one_line_error(
            &out,
            &["in use by process", &std::process::id().to_string()],
        );
    }
    assert!(
        dir.join("manifest.json").exists(),
        "--force did not move the locked run"
    );
    // A dead owner: the lock is stale and taken over.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(&lock, format!("{dead}\n")).unwrap();
    let out = smoke(runs.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!lock.exists());
}

/// `diffuq report <dir>` through the binary.
fn report(dir: &Path) -> Output {
    diffuq(&["report", dir.to_str().unwrap()], &[])
}

#[test]
fn damaged_or_edited_results_are_refused_not_reported() {
    // diffuq's contract (src/tracking.rs `Manifest::files`, `RunDir::verify`): the manifest
    // records the sha256 of every result file; `report` and the reuse of a finished run check
    // them and name the file that differs, exit 2, without writing a table.
    let runs = tempfile::tempdir().unwrap();
    let first = smoke(runs.path(), &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let dir = run_dir_of(&text(&first.stdout));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    for f in ["config.resolved.toml", "metrics.parquet", "samples.parquet"] {
        assert!(
            manifest["files"][f].is_string(),
            "{f} not digested: {manifest}"
        );
    }
    let good_table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    let ok = report(&dir);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));

    // 64 garbled bytes in the middle of a frame.
    let metrics = dir.join("metrics.parquet");
    let original = std::fs::read(&metrics).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    for (i, b) in bad[mid..mid + 64].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0xA5;
    }
    std::fs::write(&metrics, &bad).unwrap();
    assert_one_line_error(
        &report(&dir),
        &["metrics.parquet", "changed since the run finished"],
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("table.md")).unwrap(),
        good_table
    );
    // One flipped bit.
    let mut flip = original.clone();
    flip[mid] ^= 0x10;
    std::fs::write(&metrics, &flip).unwrap();
    assert_one_line_error(&report(&dir), &["metrics.parquet"]);
    // A rerun does not reuse the damaged run; --force recomputes it (the damaged one kept aside).
    assert_one_line_error(&smoke(runs.path(), &[]), &["metrics.parquet", "--force"]);
    let forced = smoke(runs.path(), &["--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert_eq!(
        std::fs::read(&metrics).unwrap(),
        original,
        "recomputed bit for bit"
    );

    // A hand-edited (valid) resolved config does not relabel the run.
    let cfg = dir.join("config.resolved.toml");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text_cfg}\n# edited\n")).unwrap();
    assert_one_line_error(&report(&dir), &["config.resolved.toml"]);
    std::fs::write(&cfg, &text_cfg).unwrap();
    // A removed frame is named too.
    std::fs::remove_file(dir.join("samples.parquet")).unwrap();
    assert_one_line_error(&report(&dir), &["samples.parquet", "missing"]);
}
