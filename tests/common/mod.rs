//! Helpers shared by the integration tests that drive the `diffuq` binary on image data.

use std::path::PathBuf;
use std::process::Command;

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Names of the files directly in `dir` ending in `ext`, sorted.
#[allow(dead_code)] // used by some test crates only
pub fn files_with(dir: &std::path::Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .collect();
    v.sort();
    v
}

/// A private cache root holding Fashion-MNIST, copied from the user's data cache (fetched there
/// first if absent: CI machines reach Debian's mirrors).
pub fn cache_with_data() -> tempfile::TempDir {
    let fetch = Command::new(env!("CARGO_BIN_EXE_diffuq"))
        .args(["fetch", "fashion-mnist"])
        .output()
        .unwrap();
    assert_eq!(fetch.status.code(), Some(0), "{}", text(&fetch.stderr));
    let src = PathBuf::from(text(&fetch.stdout).trim());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("diffuq/data");
    let out = Command::new(env!("CARGO_BIN_EXE_diffuq"))
        .args(["fetch", "fashion-mnist", "--from"])
        .arg(&src)
        .arg("--cache-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    tmp
}

/// The run directory a `diffuq run` printed (`run directory: …`).
#[allow(dead_code)] // not every test file that includes this module runs artifacts
pub fn run_dir(out: &std::process::Output) -> PathBuf {
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("run directory: "))
        .unwrap_or_else(|| panic!("no run directory in {stdout}"));
    PathBuf::from(line.trim_start_matches("run directory: "))
}
