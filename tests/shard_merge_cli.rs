//! Shards and merge through the binary: a smoke artifact computed as 3 shards (`run --shard i/3`)
//! and joined (`merge`) writes exactly what the unsharded run writes — the frames byte for byte
//! and the same table — and missing, unfinished or mismatched shards are one-line errors.
//!
//! Expected values: diffuq's own unsharded run of the same configuration (seed streams make each
//! seed's numbers independent of which process computes it; src/seed.rs, property-tested).

#[allow(dead_code)]
mod common;
use common::{files_with, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn diffuq(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuq"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DIFFUQ_")) {
        cmd.env_remove(k);
    }
    cmd.output().expect("spawn diffuq")
}

fn run_dir_of(stdout: &str) -> PathBuf {
    PathBuf::from(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("run directory: "))
            .expect("run directory line"),
    )
}

/// gu-fig2 at smoke scale with three seeds (three parts to shard).
fn gu_fig2(runs: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "gu-fig2",
        "--scale",
        "smoke",
        "--runs-dir",
        runs.to_str().unwrap(),
        "seeds=[0,1,2]",
    ];
    args.extend_from_slice(extra);
    diffuq(&args)
}

#[test]
fn three_shards_merged_equal_the_unsharded_run() {
    let whole = tempfile::tempdir().unwrap();
    let out = gu_fig2(whole.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let whole_dir = run_dir_of(&text(&out.stdout));

    let sharded = tempfile::tempdir().unwrap();
    let mut shard_dirs = vec![];
    for i in 0..3 {
        let s = format!("{i}/3");
        let out = gu_fig2(sharded.path(), &["--shard", &s]);
        let so = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{so}{}", text(&out.stderr));
        assert!(so.contains("diffuq merge"), "{so}");
        shard_dirs.push(run_dir_of(&so));
    }
    let run_dir = shard_dirs[0]
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    assert_eq!(
        run_dir.file_name(),
        whole_dir.file_name(),
        "same configuration hash"
    );
    // Each shard computed its own seed only, and wrote no table.
    for (i, d) in shard_dirs.iter().enumerate() {
        for s in 0..3 {
            assert_eq!(
                d.join(format!("seeds/seed-{s}/done")).exists(),
                s == i,
                "shard {i}, seed {s}"
            );
        }
        assert!(!d.join("table.md").exists());
    }
    // A merge before all shards exist names the missing one.
    let moved = run_dir.join("shards/2-of-3.moved");
    std::fs::rename(run_dir.join("shards/2-of-3"), &moved).unwrap();
    let out = diffuq(&["merge", run_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("shard(s) 2/3 missing"),
        "{}",
        text(&out.stderr)
    );
    std::fs::rename(&moved, run_dir.join("shards/2-of-3")).unwrap();

    let out = diffuq(&["merge", run_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let merged_table = std::fs::read_to_string(run_dir.join("table.md")).unwrap();
    assert_eq!(
        merged_table,
        std::fs::read_to_string(whole_dir.join("table.md")).unwrap()
    );
    let frames = files_with(&whole_dir, ".parquet");
    assert!(!frames.is_empty());
    assert_eq!(frames, files_with(&run_dir, ".parquet"));
    for f in &frames {
        assert_eq!(
            std::fs::read(whole_dir.join(f)).unwrap(),
            std::fs::read(run_dir.join(f)).unwrap(),
            "{f} differs"
        );
    }
    // Merging twice is harmless: the merged run is reused.
    let again = diffuq(&["merge", run_dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("reusing"),
        "{}",
        text(&again.stdout)
    );
}

#[test]
fn an_unfinished_shard_and_a_bad_shard_spec_are_named() {
    let runs = tempfile::tempdir().unwrap();
    let out = gu_fig2(runs.path(), &["--shard", "0/2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run_dir = run_dir_of(&text(&out.stdout))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    // Shard 1/2 started but did not finish: its manifest says running.
    let s1 = run_dir.join("shards/1-of-2");
    std::fs::create_dir_all(&s1).unwrap();
    let m = std::fs::read_to_string(run_dir.join("shards/0-of-2/manifest.json"))
        .unwrap()
        .replace("\"finished\"", "\"running\"");
    std::fs::write(s1.join("manifest.json"), m).unwrap();
    let out = diffuq(&["merge", run_dir.to_str().unwrap()]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{se}");
    assert!(se.contains("shard 1/2 is not finished"), "{se}");
    for bad in ["3/3", "1/0", "x"] {
        let out = gu_fig2(runs.path(), &["--shard", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            text(&out.stderr).contains("--shard"),
            "{bad}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_damaged_shard_is_named_not_merged() {
    // A shard whose frame changed after it finished (garbled bytes), then one whose manifest is
    // not JSON: merge exits 2 naming the shard and the file, and writes no merged result.
    let runs = tempfile::tempdir().unwrap();
    let mut run_dir = PathBuf::new();
    for i in 0..3 {
        let s = format!("{i}/3");
        let out = gu_fig2(runs.path(), &["--shard", &s]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        run_dir = run_dir_of(&text(&out.stdout))
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
    }
    let frame = run_dir.join("shards/1-of-3/seeds/seed-1/metrics.parquet");
    let mut bytes = std::fs::read(&frame).unwrap();
    bytes[20..34].copy_from_slice(b"garbagegarbage");
    std::fs::write(&frame, bytes).unwrap();
    let out = diffuq(&["merge", run_dir.to_str().unwrap()]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{se}");
    assert!(
        se.contains("shards/1-of-3") && se.contains("seeds/seed-1/metrics.parquet changed"),
        "{se}"
    );
    assert!(se.contains("--shard 1/3 --force"), "{se}");
    assert_eq!(se.trim().lines().count(), 1, "{se}");
    assert!(!run_dir.join("table.md").exists());

    std::fs::write(
        run_dir.join("shards/2-of-3/manifest.json"),
        "{\"status\": 3",
    )
    .unwrap();
    std::fs::remove_file(&frame).unwrap();
    let out = diffuq(&["merge", run_dir.to_str().unwrap()]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{se}");
    assert_eq!(se.trim().lines().count(), 1, "{se}");
    assert!(se.contains("shards/"), "{se}");
    assert!(!run_dir.join("table.md").exists());
}
