//! Artifacts: one module per paper table or figure. Each implements [`Experiment`] — a typed
//! configuration, a resumable computation that writes frames into a run directory, and a report
//! that turns those frames into figures, a table and a verdict against the paper.

pub mod au_fig3;
pub mod filtering;
pub mod gu_fig2;
pub mod inputs;
pub mod kit;
pub mod mini_model;
pub mod reconstruction;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{self, Resolved, Validate};
use crate::error::{Error, Result};
use crate::tracking::{unix_now, Manifest, RunDir, Status};

pub use crate::tracking::Outcome;

/// The verdict a report reaches.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Markdown table (also written to `table.md`).
    pub table: String,
    /// Reproduced, not reproduced, or not checked: a run that cannot test the claim says so
    /// instead of passing.
    pub outcome: Outcome,
    /// One line saying why.
    pub summary: String,
}

/// One paper artifact.
pub trait Experiment {
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    type Config: DeserializeOwned + Serialize + Validate;

    /// Compute into `run`, skipping parts already present (resume). Wall times go into `manifest`.
    fn run(
        cfg: &Resolved<Self::Config>,
        run: &RunDir,
        manifest: &mut Manifest,
        opts: &RunOptions,
    ) -> Result<()>;

    /// Render figures, `table.md` and the paper comparison (`compare.md`, `table.tex`) from the
    /// frames in `run`; compare with the paper. Returns [`Outcome::NotChecked`] wherever the run
    /// cannot test the claim.
    fn report(cfg: &Self::Config, run: &RunDir) -> Result<Verdict>;

    /// The image models this artifact trains (or takes from the model cache): what
    /// `diffuq train <artifact>` trains ahead of time.
    fn recipes(_cfg: &Self::Config) -> Vec<crate::model::recipe::ImageModelRecipe> {
        vec![]
    }

    /// The image models, when finding them needs the experiments directory and scale (a kind
    /// whose `[model]` names another artifact's recipe). Defaults to [`Experiment::recipes`].
    fn recipes_at(
        cfg: &Self::Config,
        _experiments_dir: &Path,
        _scale: &str,
    ) -> Result<Vec<crate::model::recipe::ImageModelRecipe>> {
        Ok(Self::recipes(cfg))
    }

    /// What else the run's numbers depend on beyond its own resolved file (e.g. the model-cache
    /// key of a recipe another experiment file holds): mixed into the configuration hash, so a
    /// changed recipe never reuses a finished run.
    fn linked_hash(
        _cfg: &Self::Config,
        _experiments_dir: &Path,
        _scale: &str,
    ) -> Result<Option<String>> {
        Ok(None)
    }

    /// Whether the run's parts (seeds) can be computed as shards and merged; an artifact whose
    /// parts depend on each other runs whole.
    const SHARDABLE: bool = true;

    /// The external files the configuration names (`[weights]`, `[data]`, `[reference]`, see
    /// [`inputs`]): listed by `validate`, required before `run` computes anything.
    fn inputs(_cfg: &Self::Config) -> Result<Vec<inputs::InputFile>> {
        Ok(vec![])
    }
}

/// Where experiment files are read from, and where runs go.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub artifact: String,
    pub scale: String,
    pub overrides: Vec<String>,
    pub env: Vec<(String, String)>,
    pub experiments_dir: PathBuf,
}

/// How to run, beyond the configuration: nothing here may change the numbers, so none of it is
/// part of the configuration hash.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Recompute even if a finished run with this configuration exists.
    pub force: bool,
    /// Independent parts (e.g. seeds) computed concurrently.
    pub jobs: usize,
    /// Where tensors live (`--device`).
    pub device: crate::device::DeviceChoice,
    /// Compute one shard of the run's parts (`--shard i/n`) into `shards/<i>-of-<n>/`.
    pub shard: Option<crate::tracking::Shard>,
}

/// What `run` did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub reused: bool,
    pub verdict: Verdict,
}

/// What `validate` found.
#[derive(Debug, Clone)]
pub struct Validated {
    pub file: PathBuf,
    /// External files the configuration names, with whether each is there.
    pub inputs: Vec<inputs::InputFile>,
    pub toml: String,
    pub hash: String,
    pub run_dir: PathBuf,
    /// Whether `run --shard` splits this artifact (see [`Experiment::SHARDABLE`]).
    pub shardable: bool,
}

/// Type-erased registry entry.
#[derive(Clone, Copy)]
pub struct Artifact {
    pub name: &'static str,
    pub description: &'static str,
    validate: fn(&Invocation, &Path) -> Result<Validated>,
    run: fn(&Invocation, &Path, &RunOptions) -> Result<RunOutcome>,
    report: fn(&RunDir) -> Result<Verdict>,
    recipes: fn(&Invocation) -> Result<Vec<crate::model::recipe::ImageModelRecipe>>,
    merge: fn(&Path, &Path, &RunOptions) -> Result<RunOutcome>,
}

impl Artifact {
    const fn of<E: Experiment>() -> Self {
        Self {
            name: E::NAME,
            description: E::DESCRIPTION,
            validate: validate::<E>,
            run: run::<E>,
            report: report::<E>,
            merge: merge::<E>,
            recipes: |inv| {
                let r = resolve::<E>(inv)?;
                E::recipes_at(&r.config, &inv.experiments_dir, &inv.scale)
            },
        }
    }

    /// An artifact run by a shared driver (an experiment *kind*), named by its directory.
    const fn kind<E: Experiment>(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            ..Self::of::<E>()
        }
    }

    /// The image models the artifact's resolved configuration trains.
    pub fn recipes(&self, inv: &Invocation) -> Result<Vec<crate::model::recipe::ImageModelRecipe>> {
        (self.recipes)(inv)
    }

    pub fn validate(&self, inv: &Invocation, runs_root: &Path) -> Result<Validated> {
        (self.validate)(inv, runs_root)
    }

    pub fn run(&self, inv: &Invocation, runs_root: &Path, opts: &RunOptions) -> Result<RunOutcome> {
        (self.run)(inv, runs_root, opts)
    }

    pub fn report(&self, run: &RunDir) -> Result<Verdict> {
        (self.report)(run)
    }

    /// Join the finished shards under `run_dir` into what one run writes (`diffuq merge`).
    pub fn merge(
        &self,
        run_dir: &Path,
        experiments_dir: &Path,
        opts: &RunOptions,
    ) -> Result<RunOutcome> {
        (self.merge)(run_dir, experiments_dir, opts)
    }
}

/// Every artifact diffuq can run, in `diffuq ls` order.
pub const ARTIFACTS: &[Artifact] = &[
    Artifact::of::<au_fig3::AuFig3>(),
    Artifact::of::<gu_fig2::GuFig2>(),
    Artifact::of::<mini_model::MiniModel>(),
];

/// Makes the registry entry of an artifact (name, title) run by a kind's driver.
pub type KindEntry = fn(&'static str, &'static str) -> Artifact;

/// Experiment kinds: drivers an experiment file selects with `kind = "…"` in `[default]`.
pub const KINDS: &[(&str, KindEntry)] = &[
    (filtering::KIND, |n, d| {
        Artifact::kind::<filtering::Filtering>(n, d)
    }),
    (reconstruction::KIND, |n, d| {
        Artifact::kind::<reconstruction::Reconstruction>(n, d)
    }),
    (mini_model::KIND, |n, d| {
        Artifact::kind::<mini_model::MiniModel>(n, d)
    }),
];

/// The `kind` and `title` an experiment file declares in `[default]`, if any.
fn declared_kind(experiments_dir: &Path, name: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(config::experiment_file(experiments_dir, name)).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let default = table.get("default")?.as_table()?;
    let kind = default.get("kind")?.as_str()?.to_string();
    let title = default
        .get("title")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string();
    Some((kind, title))
}

/// Every artifact: the built-in ones, then every experiment directory whose file selects a kind
/// (in name order).
pub fn all(experiments_dir: &Path) -> Vec<Artifact> {
    let mut out: Vec<Artifact> = ARTIFACTS.to_vec();
    let mut names: Vec<String> = std::fs::read_dir(experiments_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for n in names {
        if out.iter().any(|a| a.name == n) {
            continue;
        }
        if let Ok(a) = find_in(experiments_dir, &n) {
            out.push(a);
        }
    }
    out
}

/// The artifact `name`: built in, or an experiment file under `experiments_dir` that selects a
/// kind.
pub fn find_in(experiments_dir: &Path, name: &str) -> Result<Artifact> {
    if let Some(a) = ARTIFACTS.iter().find(|a| a.name == name) {
        return Ok(*a);
    }
    if let Some((kind, title)) = declared_kind(experiments_dir, name) {
        let Some((_, make)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            return Err(Error::ExperimentFile {
                path: config::experiment_file(experiments_dir, name),
                reason: format!(
                    "[default] kind = \"{kind}\" is not a kind diffuq knows (known: {})",
                    KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                ),
            });
        };
        // Names and titles live as long as the process (a handful of short strings).
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        let title: &'static str = Box::leak(title.into_boxed_str());
        return Ok(make(name, title));
    }
    Err(Error::UnknownArtifact {
        name: name.to_string(),
        known: all(experiments_dir)
            .iter()
            .map(|a| a.name)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A built-in artifact by name (kinds need [`find_in`]).
pub fn find(name: &str) -> Result<&'static Artifact> {
    ARTIFACTS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| Error::UnknownArtifact {
            name: name.to_string(),
            known: ARTIFACTS
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn resolve<E: Experiment>(inv: &Invocation) -> Result<Resolved<E::Config>> {
    let mut r = config::resolve::<E::Config>(
        &inv.experiments_dir,
        &inv.artifact,
        &inv.scale,
        &inv.env,
        &inv.overrides,
    )?;
    if let Some(linked) = E::linked_hash(&r.config, &inv.experiments_dir, &inv.scale)? {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(r.hash.as_bytes());
        h.update(b"\nlinked ");
        h.update(linked.as_bytes());
        r.hash = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    }
    Ok(r)
}

fn run_path(root: &Path, r: &Resolved<impl Sized>) -> PathBuf {
    root.join(&r.artifact).join(&r.scale).join(r.short_hash())
}

fn validate<E: Experiment>(inv: &Invocation, runs_root: &Path) -> Result<Validated> {
    let r = resolve::<E>(inv)?;
    Ok(Validated {
        inputs: E::inputs(&r.config)?,
        run_dir: run_path(runs_root, &r),
        file: r.file.clone(),
        toml: r.toml.clone(),
        hash: r.hash.clone(),
        shardable: E::SHARDABLE,
    })
}

fn run<E: Experiment>(inv: &Invocation, runs_root: &Path, opts: &RunOptions) -> Result<RunOutcome> {
    let r = resolve::<E>(inv)?;
    // Missing checkpoints or data stop the run before any compute or run directory.
    inputs::require(&E::inputs(&r.config)?)?;
    if opts.shard.is_some() && !E::SHARDABLE {
        return Err(Error::invalid(
            "--shard",
            format!(
                "{} runs whole (its parts share per-run state); run it without --shard",
                r.artifact
            ),
        ));
    }
    let base = run_path(runs_root, &r);
    run_resolved::<E>(r, base, opts)
}

/// Compute (or reuse) the resolved configuration `r` in run directory `base` (one shard of it
/// with `opts.shard`).
fn run_resolved<E: Experiment>(
    r: Resolved<E::Config>,
    base: PathBuf,
    opts: &RunOptions,
) -> Result<RunOutcome> {
    let path = match opts.shard {
        Some(s) => base.join(s.dir_name()),
        None => base,
    };
    // One process per run directory; held until this function returns (also across --force).
    let _lock = crate::tracking::RunLock::acquire(&path)?;
    if opts.force && path.exists() {
        // Recompute from scratch, but never destroy results: the old run is kept beside it.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.short_hash().to_string());
        let aside = path.with_file_name(format!("{name}.replaced-{}", unix_now()));
        std::fs::rename(&path, &aside).map_err(|e| Error::RunDir {
            path: path.clone(),
            reason: format!("cannot move aside for --force: {e}"),
        })?;
    }
    let dir = RunDir::create_at(path)?.with_shard(opts.shard);
    // With the lock held, any temporary file in the directory is a killed writer's.
    let stale = dir.remove_stale_temp_files()?;
    if stale > 0 {
        dir.log(&format!(
            "removed {stale} temporary file(s) of an interrupted run"
        ))?;
    }
    // What the run reads from outside (paper checkpoints, data, reference batches), by sha256.
    let input_digests = input_digests::<E>(&r.config)?;
    if !opts.force && dir.has("manifest.json") && dir.manifest()?.status == Status::Finished {
        // Reuse only what is verifiably the finished run's output, from the same inputs.
        let m = dir.manifest()?;
        dir.verify(&m)?;
        if !m.inputs.is_empty() && m.inputs != input_digests {
            let key = input_digests
                .iter()
                .find(|(k, v)| m.inputs.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| "an input".into());
            return Err(Error::RunDir {
                path: dir.path().to_path_buf(),
                reason: format!(
                    "{key} is not the file this run was computed from (its sha256 differs from manifest.json); `diffuq run … --force` recomputes"
                ),
            });
        }
        dir.log("finished run reused")?;
        if let Some(s) = opts.shard {
            return Ok(shard_outcome(&dir, s, true));
        }
        let verdict = E::report(&r.config, &dir)?;
        // A manifest written by an older diffuq (a bool verdict) is brought up to date.
        let mut manifest = dir.manifest()?;
        if manifest.outcome != Some(verdict.outcome) {
            manifest.record(verdict.outcome);
            dir.write_manifest(&manifest)?;
        }
        return Ok(RunOutcome {
            dir: dir.path().to_path_buf(),
            reused: true,
            verdict,
        });
    }
    let t0 = Instant::now();
    dir.write("config.resolved.toml", r.toml.as_bytes())?;
    // A resumed (interrupted or failed) run keeps its start time and earlier phases' wall times.
    let mut manifest = match dir.has("manifest.json").then(|| dir.manifest()) {
        Some(Ok(m)) if m.config_hash == r.hash && m.status != Status::Finished => {
            let mut m = m;
            m.status = Status::Running;
            m.error = None;
            m.device = opts.device.label();
            m
        }
        _ => Manifest::new(&r.artifact, &r.scale, &r.hash, &opts.device.label()),
    };
    manifest.jobs = opts.jobs;
    manifest.inputs = input_digests;
    dir.write_manifest(&manifest)?;
    dir.log(&format!(
        "run {} at scale {} (config {})",
        r.artifact,
        r.scale,
        r.short_hash()
    ))?;
    if let Err(e) = E::run(&r, &dir, &mut manifest, opts) {
        // Marked failed with the reason; finished parts stay for the rerun to resume from.
        manifest.status = Status::Failed;
        manifest.error = Some(e.to_string());
        manifest.peak_rss_mib = crate::tracking::peak_rss_mib();
        let _ = dir.write_manifest(&manifest);
        let _ = dir.log(&format!("failed: {e}"));
        return Err(e);
    }
    manifest.error = None;
    if let Some(s) = opts.shard {
        // A shard's parts are done; `diffuq merge` stacks, reports and compares.
        manifest.status = Status::Finished;
        manifest.finished_unix = Some(unix_now());
        manifest.files = dir.result_digests()?;
        manifest.peak_rss_mib = crate::tracking::peak_rss_mib();
        manifest
            .wall_seconds
            .insert("total".into(), t0.elapsed().as_secs_f64());
        dir.write_manifest(&manifest)?;
        dir.log("shard finished")?;
        return Ok(shard_outcome(&dir, s, false));
    }
    let t_report = Instant::now();
    let verdict = E::report(&r.config, &dir)?;
    manifest
        .wall_seconds
        .insert("report".into(), t_report.elapsed().as_secs_f64());
    manifest
        .wall_seconds
        .insert("total".into(), t0.elapsed().as_secs_f64());
    manifest.status = Status::Finished;
    manifest.finished_unix = Some(unix_now());
    manifest.files = dir.result_digests()?;
    manifest.peak_rss_mib = crate::tracking::peak_rss_mib();
    manifest.record(verdict.outcome);
    dir.write_manifest(&manifest)?;
    dir.log(&format!(
        "finished ({}): {}",
        verdict.outcome, verdict.summary
    ))?;
    Ok(RunOutcome {
        dir: dir.path().to_path_buf(),
        reused: false,
        verdict,
    })
}

/// sha256 of every external file the configuration names (`[weights]`, `[data]`,
/// `[reference]`), by key.
fn input_digests<E: Experiment>(
    cfg: &E::Config,
) -> Result<std::collections::BTreeMap<String, String>> {
    E::inputs(cfg)?
        .into_iter()
        .map(|f| Ok((f.key, crate::tracking::sha256_path(&f.path)?)))
        .collect()
}

/// What a finished shard reports: no table (its parts are a fraction of the run), and the
/// command that joins the shards.
fn shard_outcome(dir: &RunDir, s: crate::tracking::Shard, reused: bool) -> RunOutcome {
    let run_dir = dir
        .path()
        .parent()
        .and_then(|p| p.parent())
        .unwrap_or(dir.path());
    RunOutcome {
        dir: dir.path().to_path_buf(),
        reused,
        verdict: Verdict {
            table: String::new(),
            outcome: Outcome::NotChecked,
            summary: format!(
                "shard {}/{} finished; when all {} are, `diffuq merge {}` joins them",
                s.index,
                s.count,
                s.count,
                run_dir.display()
            ),
        },
    }
}

/// `diffuq merge <run-dir>`: checks that every shard under `run_dir/shards/` finished with the
/// same configuration and code, copies their parts into `run_dir`, and completes the run there —
/// stacking, report, manifest — exactly as an unsharded run does (its finished parts skipped).
/// Missing, unfinished or mismatched shards are an error naming them; merging again reuses the
/// merged run.
fn merge<E: Experiment>(
    run_dir: &Path,
    experiments_dir: &Path,
    opts: &RunOptions,
) -> Result<RunOutcome> {
    let err = |reason: String| Error::RunDir {
        path: run_dir.to_path_buf(),
        reason,
    };
    let shards_dir = run_dir.join("shards");
    let mut found: Vec<(crate::tracking::Shard, PathBuf)> = vec![];
    if let Ok(entries) = std::fs::read_dir(&shards_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((i, n)) = name.split_once("-of-") else {
                continue;
            };
            if let Ok(s) = crate::tracking::Shard::parse(&format!("{i}/{n}")) {
                if e.path().is_dir() {
                    found.push((s, e.path()));
                }
            }
        }
    }
    found.sort_by_key(|(s, _)| (s.count, s.index));
    let Some(&(first, _)) = found.first() else {
        return Err(err("no shards/<i>-of-<n>/ directories to merge".into()));
    };
    let n = first.count;
    if let Some((s, _)) = found.iter().find(|(s, _)| s.count != n) {
        return Err(err(format!(
            "shards of different counts ({n} and {}): remove the stale ones",
            s.count
        )));
    }
    let missing: Vec<String> = (0..n)
        .filter(|i| !found.iter().any(|(s, _)| s.index == *i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(err(format!("shard(s) {} missing", missing.join(", "))));
    }
    let mut manifests = vec![];
    for (s, p) in &found {
        let d = RunDir::open(p).map_err(|_| {
            err(format!(
                "shard {}/{n} has not started (no manifest.json)",
                s.index
            ))
        })?;
        let m = d.manifest()?;
        if m.status != Status::Finished {
            let why = m
                .error
                .clone()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(err(format!(
                "shard {}/{n} is not finished (status {:?}{why})",
                s.index, m.status
            )));
        }
        d.verify(&m)?;
        manifests.push((s.index, d, m));
    }
    let (_, d0, m0) = &manifests[0];
    let dir_name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (i, _, m) in &manifests {
        if m.config_hash != m0.config_hash || !m.config_hash.starts_with(&dir_name) {
            return Err(err(format!(
                "shard {i}/{n} has config hash {} (the run directory is {dir_name})",
                m.config_hash
            )));
        }
        if m.git_sha != m0.git_sha || m.git_dirty != m0.git_dirty {
            return Err(err(format!(
                "shard {i}/{n} was computed by code {} (dirty {:?}), shard 0/{n} by {} (dirty {:?})",
                m.git_sha, m.git_dirty, m0.git_sha, m0.git_dirty
            )));
        }
    }
    // The run's resolved configuration, as the shards resolved it.
    let toml_text = d0.read_to_string("config.resolved.toml")?;
    let config: E::Config = toml::from_str(&toml_text).map_err(|e| Error::ExperimentFile {
        path: d0.file("config.resolved.toml"),
        reason: format!(
            "does not match this diffuq's {} config: {}",
            E::NAME,
            e.message()
        ),
    })?;
    let r = Resolved {
        artifact: m0.artifact.clone(),
        scale: m0.scale.clone(),
        file: config::experiment_file(experiments_dir, &m0.artifact),
        config,
        toml: toml_text,
        hash: m0.config_hash.clone(),
    };
    // Join the parts: every file a shard computed (its `seeds/` parts and any per-run file a
    // part writes), not its bookkeeping.
    for (i, d, _) in &manifests {
        copy_parts(d.path(), run_dir, true)
            .map_err(|e| err(format!("joining shard {i}/{n}: {e}")))?;
    }
    let opts = RunOptions {
        force: false,
        shard: None,
        ..*opts
    };
    run_resolved::<E>(r, run_dir.to_path_buf(), &opts)
}

/// Copy the files under `from` into `to` (same relative paths; at the top level not a shard's
/// manifest, log, config, figures); an existing file must hold the same bytes (two shards never
/// compute the same part).
fn copy_parts(from: &Path, to: &Path, top: bool) -> std::result::Result<(), String> {
    if !from.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for e in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let p = e.map_err(|e| format!("{}: {e}", from.display()))?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // A shard's own bookkeeping stays with it.
        if top
            && matches!(
                name.as_str(),
                "manifest.json" | "log.txt" | "config.resolved.toml" | "figures" | "shards"
            )
        {
            continue;
        }
        let target = to.join(&name);
        if p.is_dir() {
            copy_parts(&p, &target, false)?;
        } else if target.exists() {
            let (a, b) = (std::fs::read(&p), std::fs::read(&target));
            if a.ok() != b.ok() {
                return Err(format!("{} differs from {}", p.display(), target.display()));
            }
        } else {
            let tmp = crate::tracking::temp_path(&target);
            std::fs::copy(&p, &tmp)
                .and_then(|_| std::fs::rename(&tmp, &target))
                .map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

/// The scale a run directory was computed at (its manifest's), which decides whether the paper
/// comparison is of values (paper scale) or of direction and ordering only.
pub(crate) fn run_scale(run: &RunDir) -> Result<String> {
    Ok(run.manifest()?.scale)
}

/// Write the paper-vs-reproduced comparison beside `table.md`: `compare.md` and `table.tex`.
pub(crate) fn write_comparison(
    run: &RunDir,
    cmp: &crate::report::compare::Comparison,
) -> Result<()> {
    run.write("compare.md", cmp.to_markdown().as_bytes())?;
    run.write("table.tex", cmp.to_latex().as_bytes())
}

fn report<E: Experiment>(dir: &RunDir) -> Result<Verdict> {
    let manifest = dir.manifest()?;
    if manifest.status == Status::Finished {
        dir.verify(&manifest)?;
    }
    let path = dir.file("config.resolved.toml");
    let text = dir.read_to_string("config.resolved.toml")?;
    let cfg: E::Config = toml::from_str(&text).map_err(|e| Error::ExperimentFile {
        path,
        reason: format!(
            "does not match this diffuq's {} config: {}",
            E::NAME,
            e.message()
        ),
    })?;
    E::report(&cfg, dir)
}
