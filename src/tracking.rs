//! Run directories: `runs/<artifact>/<scale>/<config-hash>/` with `config.resolved.toml`,
//! `manifest.json`, Polars frames as parquet, `figures/`, `table.md` and `log.txt`.
//!
//! Every result file is written atomically (temporary file in the same directory, fsync, rename),
//! so an interrupted run never leaves a half-written result that a later run would trust. A run
//! whose manifest says `finished` is reused; an unfinished one resumes from the per-part files it
//! already wrote (see [`RunDir::has`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use polars::prelude::{DataFrame, ParquetReader, ParquetWriter, SerReader};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, TensorContext};

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Finished,
    /// Stopped by an error (recorded as `error`); its finished parts are kept and a rerun
    /// resumes from them.
    Failed,
}

/// What a report concluded about the paper's claim.
///
/// Three outcomes, not a bool: a run that cannot test the claim (a smoke profile, pixel features
/// instead of Inception ones, a zero threshold, no between-mode sample to remove) must neither pass
/// as a reproduction nor fail as a refutation. The manifest records it as `outcome` (these
/// lower-kebab names) and as `reproduced: true | false | null`; the CLI exits 0 for reproduced and
/// not checked, 1 for not reproduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The claim was tested and holds within the tolerance.
    Reproduced,
    /// The claim was tested and does not hold.
    NotReproduced,
    /// The run cannot test the claim (says why in the verdict's summary).
    NotChecked,
}

impl Outcome {
    /// `NotChecked` unless `checked`; then whether the claim `holds`.
    pub fn of_check(checked: bool, holds: bool) -> Self {
        match (checked, holds) {
            (false, _) => Self::NotChecked,
            (true, true) => Self::Reproduced,
            (true, false) => Self::NotReproduced,
        }
    }

    /// The manifest's `reproduced` field: `None` (JSON null) when the claim was not checked.
    pub fn reproduced(self) -> Option<bool> {
        match self {
            Self::Reproduced => Some(true),
            Self::NotReproduced => Some(false),
            Self::NotChecked => None,
        }
    }

    /// The serialised name: `reproduced`, `not-reproduced`, `not-checked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reproduced => "reproduced",
            Self::NotReproduced => "not-reproduced",
            Self::NotChecked => "not-checked",
        }
    }

    /// The word verdict lines use: `REPRODUCED`, `NOT REPRODUCED`, `NOT CHECKED`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Reproduced => "REPRODUCED",
            Self::NotReproduced => "NOT REPRODUCED",
            Self::NotChecked => "NOT CHECKED",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `manifest.json`: what ran, from which code, where, and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub artifact: String,
    pub scale: String,
    pub config_hash: String,
    pub status: Status,
    pub crate_version: String,
    pub git_sha: String,
    pub git_dirty: Option<bool>,
    pub device: String,
    pub threads: usize,
    /// Independent parts computed concurrently (`--jobs`).
    pub jobs: usize,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    /// Wall-clock seconds per phase (e.g. `train/seed-0`, `sample/seed-0`, `report`, `total`).
    pub wall_seconds: BTreeMap<String, f64>,
    /// Verdict against the paper, once reported: `true` reproduced, `false` not reproduced,
    /// `null` not checked (or not reported yet; `outcome` tells the two apart).
    pub reproduced: Option<bool>,
    /// The report's [`Outcome`]; absent in manifests written before it existed.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// The error that stopped a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// SHA-256 of every external input file (paper checkpoints, data, reference batches) by its
    /// configuration key (`weights.model`): a finished run is reused only with the same files.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// SHA-256 of every result file the report reads (frames, tensors, the resolved config), by
    /// path relative to the run directory, recorded when the run finished: `report` and the reuse
    /// of a finished run verify them ([`RunDir::verify`]) instead of trusting the directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Peak resident memory of the process that computed (or last resumed) the run, MiB
    /// (Linux `VmHWM`; absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// f32 CPU kernels of the image networks (`avx512` or `im2col+gemm`, `--conv-kernels`;
    /// `diffuq_linalg::conv::ConvKernels`): convolution, SiLU and group norm round differently
    /// on the two, so results agree to f32 rounding, not in every bit. Absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_kernels: Option<String>,
}

impl Manifest {
    pub fn new(artifact: &str, scale: &str, config_hash: &str, device: &str) -> Self {
        let (git_sha, git_dirty) = git_state();
        Self {
            artifact: artifact.into(),
            scale: scale.into(),
            config_hash: config_hash.into(),
            status: Status::Running,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            git_sha,
            git_dirty,
            device: device.into(),
            threads: candle_core::utils::get_num_threads(),
            jobs: 1,
            started_unix: unix_now(),
            finished_unix: None,
            wall_seconds: BTreeMap::new(),
            reproduced: None,
            outcome: None,
            error: None,
            files: BTreeMap::new(),
            inputs: BTreeMap::new(),
            peak_rss_mib: None,
            conv_kernels: Some(diffuq_linalg::conv::active_conv_kernels().into()),
        }
    }

    /// Record a report's outcome in both fields.
    pub fn record(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.reproduced = outcome.reproduced();
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The commit and dirty flag of the code this binary was built from, embedded at build time by
/// `build.rs` (`unknown` / None outside git).
pub(crate) fn git_state() -> (String, Option<bool>) {
    let dirty = match env!("DIFFUQ_GIT_DIRTY") {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    (env!("DIFFUQ_GIT_COMMIT").to_string(), dirty)
}

/// An exclusive claim on one run directory: `<run-dir>.lock` beside it holds the pid of the
/// process computing it. A second `diffuq run` of the same configuration (with or without
/// `--force`) finds the lock and stops with an error naming that pid; a lock whose process is gone
/// (killed, crashed) is stale and taken over. Released (the file removed) on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// The lock file of run directory `dir`.
    pub fn path_of(dir: &Path) -> PathBuf {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        dir.with_file_name(name)
    }

    /// Claims `dir` for this process.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = Self::path_of(dir);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::RunDir {
                path: dir.to_path_buf(),
                reason: format!("cannot create {}: {e}", parent.display()),
            })?;
        }
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id()).map_err(|e| Error::io(&path, e))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Ok(pid) if pid_alive(pid) => {
                            return Err(Error::RunDir {
                                path: dir.to_path_buf(),
                                reason: format!(
                                    "in use by process {pid} (lock {}); wait for it to finish, or remove the lock if that process is not diffuq",
                                    path.display()
                                ),
                            })
                        }
                        // A dead owner or an unreadable lock: stale, taken over.
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::RunDir {
            path: dir.to_path_buf(),
            reason: format!("cannot take the lock {}", path.display()),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether process `pid` exists (Linux: `/proc/<pid>`; elsewhere assumed alive, so a lock is never
/// taken from a live process).
fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Whether a run-directory file is a result the report reads (and so is digested): frames,
/// tensors and the resolved config. Figures, tables, logs and the manifest are derived or
/// bookkeeping.
fn is_result_file(rel: &str) -> bool {
    rel == "config.resolved.toml" || rel.ends_with(".parquet") || rel.ends_with(".safetensors")
}

impl RunDir {
    /// SHA-256 of every result file under the run directory ([`Manifest::files`]).
    pub fn result_digests(&self) -> Result<BTreeMap<String, String>> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
            for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
                let p = e.map_err(|e| Error::io(dir, e))?.path();
                if p.is_dir() {
                    walk(&p, out)?;
                } else {
                    out.push(p);
                }
            }
            Ok(())
        }
        let mut files = vec![];
        walk(self.path(), &mut files)?;
        let mut out = BTreeMap::new();
        for f in files {
            let rel = f
                .strip_prefix(self.path())
                .unwrap_or(&f)
                .to_string_lossy()
                .replace('\\', "/");
            if is_result_file(&rel) {
                out.insert(rel, sha256_path(&f)?);
            }
        }
        Ok(out)
    }

    /// Checks the finished run's result files against the digests its manifest recorded, and the
    /// manifest's configuration hash against the directory name: any difference is an error
    /// naming the file (never a table computed from it). A run finished before digests existed has
    /// none to check.
    pub fn verify(&self, m: &Manifest) -> Result<()> {
        // A shard (`<run>/shards/<i>-of-<n>`) carries its run's hash.
        let p = self.path();
        let named = match p.parent() {
            Some(parent) if parent.file_name().is_some_and(|n| n == "shards") => {
                parent.parent().unwrap_or(p)
            }
            _ => p,
        };
        let name = named
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.is_empty() && !m.config_hash.starts_with(&name) {
            return Err(Error::RunDir {
                path: self.path().to_path_buf(),
                reason: format!(
                    "manifest.json's config hash {} does not match the directory name",
                    m.config_hash
                ),
            });
        }
        if m.files.is_empty() {
            return Ok(());
        }
        let now = self.result_digests()?;
        // What recomputes it: the shard (`shards/<i>-of-<n>`) or the whole run.
        let redo = match self
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split_once("-of-"))
        {
            Some((i, n))
                if self.path().parent().and_then(|p| p.file_name()) == Some("shards".as_ref()) =>
            {
                format!("`diffuq run … --shard {i}/{n} --force` recomputes the shard")
            }
            _ => "`diffuq run … --force` recomputes the run".to_string(),
        };
        for (rel, want) in &m.files {
            match now.get(rel) {
                Some(got) if got == want => {}
                Some(_) => {
                    return Err(Error::RunDir {
                        path: self.path().to_path_buf(),
                        reason: format!(
                            "{rel} changed since the run finished (its sha256 no longer matches manifest.json); {redo}"
                        ),
                    })
                }
                None => {
                    return Err(Error::RunDir {
                        path: self.path().to_path_buf(),
                        reason: format!(
                            "{rel} is missing (manifest.json lists it); {redo}"
                        ),
                    })
                }
            }
        }
        if let Some(extra) = now.keys().find(|k| !m.files.contains_key(*k)) {
            return Err(Error::RunDir {
                path: self.path().to_path_buf(),
                reason: format!(
                    "{extra} was added after the run finished (manifest.json does not list it); {redo}"
                ),
            });
        }
        Ok(())
    }
}

/// This process's peak resident set size in MiB (`VmHWM` of /proc/self/status), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Creates or replaces `path` atomically: `write` fills a fresh temporary sibling
/// ([`temp_path`]), which is renamed over `path` only if `write` succeeded. On any failure the
/// temporary file is removed, so an interrupted or failed write never leaves a file that looks
/// finished, and never a stray temporary.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write `bytes` to `path` atomically: temp file beside it, fsync, rename over.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        let mut f = File::create(tmp).map_err(|e| Error::io(path, e))?;
        f.write_all(bytes).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))
    })
}

/// A temporary sibling of `path` that keeps its extension (plotters picks formats by extension),
/// unique per process and call: concurrent writers of one path never share a temporary file.
pub fn temp_path(path: &Path) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".tmp-{}-{call}-{name}", std::process::id()))
}

/// One run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
    /// Set for one shard of a run (`diffuq run --shard i/n`): its parts only.
    shard: Option<Shard>,
}

/// Shard `index` of `count` (0-based): the parts (seeds) at positions p with p mod count = index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `i/n` with 0 ≤ i < n.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::invalid("--shard", format!("{s:?}: expected i/n with 0 ≤ i < n"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// The shard's directory inside its run directory: `shards/<i>-of-<n>`.
    pub fn dir_name(&self) -> String {
        format!("shards/{}-of-{}", self.index, self.count)
    }

    /// Whether the part at position `pos` of the run's part list is this shard's.
    pub fn owns(&self, pos: usize) -> bool {
        pos % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s).map_err(|e| e.to_string())
    }
}

impl RunDir {
    /// Create (or open) `root/<artifact>/<scale>/<hash>/`, checking it is writable.
    pub fn create(root: &Path, artifact: &str, scale: &str, hash: &str) -> Result<Self> {
        Self::create_at(root.join(artifact).join(scale).join(hash))
    }

    pub fn create_at(path: PathBuf) -> Result<Self> {
        fs::create_dir_all(path.join("figures")).map_err(|e| Error::RunDir {
            path: path.clone(),
            reason: format!("cannot create: {e}"),
        })?;
        let probe = path.join(".write-probe");
        atomic_write(&probe, b"ok")
            .and_then(|_| fs::remove_file(&probe).map_err(|e| Error::io(&probe, e)))
            .map_err(|e| Error::RunDir {
                path: path.clone(),
                reason: format!("not writable: {e}"),
            })?;
        Ok(Self { path, shard: None })
    }

    /// Remove the temporary files ([`temp_path`]: `.tmp-<pid>-…`) a killed process left in the
    /// run directory: called once the run's lock is held, when no live writer can own one.
    pub fn remove_stale_temp_files(&self) -> Result<usize> {
        fn sweep(dir: &Path, removed: &mut usize) -> Result<()> {
            for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if p.is_dir() {
                    // A shard has its own lock and sweeps itself.
                    if name != "shards" {
                        sweep(&p, removed)?;
                    }
                } else if name.starts_with(".tmp-") {
                    fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                    *removed += 1;
                }
            }
            Ok(())
        }
        let mut removed = 0;
        sweep(self.path(), &mut removed)?;
        Ok(removed)
    }

    /// This directory as shard `shard` of a run.
    pub fn with_shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    /// The shard this directory computes, if it is one.
    pub fn shard(&self) -> Option<Shard> {
        self.shard
    }

    /// Whether `part` (one of `parts`, in order) is computed here: every part of a whole run,
    /// a shard's own parts otherwise.
    pub fn computes(&self, parts: &[u64], part: u64) -> bool {
        match self.shard {
            None => true,
            Some(s) => parts
                .iter()
                .position(|&p| p == part)
                .is_some_and(|i| s.owns(i)),
        }
    }

    /// Open an existing run directory (for `diffuq report`).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("manifest.json").is_file() {
            return Err(Error::RunDir {
                path: path.to_path_buf(),
                reason: "no manifest.json: not a diffuq run directory".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            shard: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn has(&self, rel: &str) -> bool {
        self.file(rel).is_file()
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let p = self.file(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        atomic_write(&p, bytes)
    }

    pub fn read_to_string(&self, rel: &str) -> Result<String> {
        let p = self.file(rel);
        fs::read_to_string(&p).map_err(|e| Error::io(p, e))
    }

    /// Write a frame as parquet, atomically.
    pub fn write_parquet(&self, rel: &str, df: &mut DataFrame) -> Result<()> {
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf)
            .finish(df)
            .ctx(&format!("encoding {rel}"))?;
        self.write(rel, &buf)
    }

    pub fn read_parquet(&self, rel: &str) -> Result<DataFrame> {
        let p = self.file(rel);
        let f = File::open(&p).map_err(|e| Error::io(&p, e))?;
        crate::contain_panic(|| ParquetReader::new(f).finish())
            .map_err(|msg| {
                Error::invalid(
                    p.display().to_string(),
                    format!(
                        "not a readable parquet file ({})",
                        crate::config::one_line(&msg)
                    ),
                )
            })?
            .ctx(&format!("reading {}", p.display()))
    }

    pub fn manifest(&self) -> Result<Manifest> {
        let text = self.read_to_string("manifest.json")?;
        serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                self.file("manifest.json").display().to_string(),
                e.to_string(),
            )
        })
    }

    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let text = serde_json::to_string_pretty(m)
            .map_err(|e| Error::invalid("manifest.json", e.to_string()))?;
        self.write("manifest.json", text.as_bytes())
    }

    /// Append a line to `log.txt` (the log is a diary, not a result: plain append is enough).
    pub fn log(&self, line: &str) -> Result<()> {
        let p = self.file("log.txt");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        writeln!(f, "[{}] {line}", unix_now()).map_err(|e| Error::io(&p, e))
    }
}

/// SHA-256 (hex) of a file's bytes, streamed; of a directory, of its files' names and bytes in
/// name order (a diffusers model directory). Identifies an input file (a checkpoint) without
/// trusting its name.
pub fn sha256_path(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    fn feed(h: &mut Sha256, path: &Path) -> Result<()> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                return Ok(());
            }
            h.update(&buf[..n]);
        }
    }
    let mut h = Sha256::new();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
            h.update([0u8]);
            feed(&mut h, &f)?;
        }
    } else {
        feed(&mut h, path)?;
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::df;

    #[test]
    fn parquet_round_trip_and_atomic_writes_leave_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::create(d.path(), "a", "smoke", "h").unwrap();
        let mut df = df!("x" => [1.0f64, 2.0], "k" => [true, false]).unwrap();
        run.write_parquet("sub/x.parquet", &mut df).unwrap();
        assert_eq!(run.read_parquet("sub/x.parquet").unwrap(), df);
        run.write("t.md", b"one").unwrap();
        run.write("t.md", b"two").unwrap();
        assert_eq!(run.read_to_string("t.md").unwrap(), "two");
        let leftovers: Vec<_> = walk(run.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                out.extend(walk(&e));
            } else {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn manifest_records_three_outcomes() {
        // Expected values: the manifest contract of `Outcome` (null for not checked) and the
        // field layout of manifests written before `outcome` existed (a bool `reproduced` only).
        let mut m = Manifest::new("a", "smoke", "h", "cpu");
        let json = |m: &Manifest| serde_json::to_value(m).unwrap();
        assert!(json(&m)["reproduced"].is_null() && json(&m)["outcome"].is_null());
        for (o, reproduced, name) in [
            (Outcome::Reproduced, serde_json::json!(true), "reproduced"),
            (
                Outcome::NotReproduced,
                serde_json::json!(false),
                "not-reproduced",
            ),
            (Outcome::NotChecked, serde_json::Value::Null, "not-checked"),
        ] {
            m.record(o);
            assert_eq!(json(&m)["reproduced"], reproduced);
            assert_eq!(json(&m)["outcome"], name);
            assert_eq!(o.to_string(), name);
            let back: Manifest = serde_json::from_value(json(&m)).unwrap();
            assert_eq!(back.outcome, Some(o));
        }
        let mut old = json(&m);
        old.as_object_mut().unwrap().remove("outcome");
        old["reproduced"] = serde_json::json!(true);
        let old: Manifest = serde_json::from_value(old).unwrap();
        assert_eq!((old.reproduced, old.outcome), (Some(true), None));
    }

    #[test]
    fn unwritable_root_is_a_one_line_error() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let e = RunDir::create(&file, "a", "smoke", "h")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("run directory") && e.contains("plain-file") && !e.contains('\n'),
            "{e}"
        );
    }
}
