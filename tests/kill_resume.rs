//! SIGKILL at several points of a run, then a rerun: the result equals an uninterrupted run's
//! (frames byte for byte, the same table), parts finished before the kill are reused rather than
//! recomputed, the dead run's lock is taken over, and no temporary file is left behind.
//!
//! Expected values: diffuq's own uninterrupted run of the same configuration — gu-fig2 at smoke
//! scale with three seeds (training, sampling, scoring, metrics and writing of three parts, then
//! stacking, report and figures), and au-table1 at smoke scale, an image artifact (the trained
//! image model loaded, then per seed: plain sampling, AU, BayesDiff and MC-Dropout scoring, the
//! kept sets' metrics, then stacking and the report). Kill points are fractions of the
//! uninterrupted run's wall time, so they land in different phases whatever the machine's speed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cmd(artifact: &str, runs: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffuq"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "run",
        artifact,
        "--scale",
        "smoke",
        "--runs-dir",
        runs.to_str().unwrap(),
        "seeds=[0,1,2]",
    ]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DIFFUQ_")) {
        c.env_remove(k);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn the_run_dir(artifact: &str, runs: &Path) -> PathBuf {
    let smoke = runs.join(artifact).join("smoke");
    std::fs::read_dir(&smoke)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("run directory")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Byte-identical, or (for a frame that records wall-clock times, like score_info.parquet's
/// `wall_s`) equal in every other column.
fn same_frame(a: &Path, b: &Path) -> bool {
    let (ba, bb) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    if ba == bb {
        return true;
    }
    use polars::prelude::*;
    let read = |bytes: Vec<u8>| {
        let df = ParquetReader::new(std::io::Cursor::new(bytes))
            .finish()
            .unwrap();
        let keep: Vec<PlSmallStr> = df
            .get_column_names()
            .into_iter()
            .filter(|c| c.as_str() != "wall_s")
            .cloned()
            .collect();
        df.select(keep).unwrap()
    };
    read(ba).equals_missing(&read(bb))
}

fn done_seeds(dir: &Path) -> BTreeSet<u64> {
    (0..3)
        .filter(|s| dir.join(format!("seeds/seed-{s}/done")).exists())
        .collect()
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    killed_and_resumed("gu-fig2", &[0.15, 0.35, 0.55, 0.75, 0.95]);
}

#[test]
fn a_killed_image_artifact_resumes_to_the_uninterrupted_result() {
    killed_and_resumed("au-table1", &[0.2, 0.45, 0.7, 0.9]);
}

fn killed_and_resumed(artifact: &str, fractions: &[f64]) {
    let reference = tempfile::tempdir().unwrap();
    // Once untimed: the image artifact's first run may train its smoke model into the model cache.
    if artifact != "gu-fig2" {
        let warm = tempfile::tempdir().unwrap();
        let out = cmd(artifact, warm.path()).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let t0 = Instant::now();
    let out = cmd(artifact, reference.path()).output().unwrap();
    let wall = t0.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ref_dir = the_run_dir(artifact, reference.path());
    let frames: Vec<String> = std::fs::read_dir(&ref_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    assert!(frames.len() >= 2, "{frames:?}");

    let mut resumed_some = false;
    for &frac in fractions {
        let runs = tempfile::tempdir().unwrap();
        let mut child = cmd(artifact, runs.path()).spawn().unwrap();
        std::thread::sleep(wall.mul_f64(frac).max(Duration::from_millis(50)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let dir = runs
            .path()
            .join(artifact)
            .join("smoke")
            .exists()
            .then(|| the_run_dir(artifact, runs.path()));
        let before = dir.as_deref().map(done_seeds).unwrap_or_default();
        // The kill may also come after the run finished: then the rerun reuses the whole run.
        let finished_before = dir.as_deref().is_some_and(|d| {
            std::fs::read_to_string(d.join("manifest.json"))
                .is_ok_and(|m| m.contains("\"status\": \"finished\""))
        });

        let out = cmd(artifact, runs.path()).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "kill at {frac}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = the_run_dir(artifact, runs.path());
        for f in &frames {
            assert!(
                same_frame(&dir.join(f), &ref_dir.join(f)),
                "kill at {frac}: {f} differs from the uninterrupted run"
            );
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("table.md")).unwrap(),
            std::fs::read_to_string(ref_dir.join("table.md")).unwrap(),
            "kill at {frac}"
        );
        let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
        if finished_before {
            assert!(log.contains("finished run reused"), "kill at {frac}: {log}");
            resumed_some = true;
        }
        for s in before.iter().filter(|_| !finished_before) {
            assert!(
                log.contains(&format!("seed {s}: reusing finished part")),
                "kill at {frac}: seed {s} was finished before the kill but recomputed:\n{log}"
            );
            resumed_some = true;
        }
        let stray: Vec<PathBuf> = files(runs.path())
            .into_iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.contains(".tmp") || n.ends_with(".lock")
            })
            .collect();
        assert!(stray.is_empty(), "kill at {frac}: left behind {stray:?}");
        let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        assert!(manifest.contains("\"status\": \"finished\""), "{manifest}");
    }
    // At least one kill landed after a part had finished (the later fractions do on any machine
    // where the three parts take most of the run).
    assert!(resumed_some, "no kill point fell after a finished part");
}
