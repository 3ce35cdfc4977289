//! Trained models cached by the hash of their training recipe.
//!
//! A recipe is any `serde::Serialize` value that determines a training run (architecture, data,
//! [`super::trainer::TrainSpec`], seed, …). Its key is the SHA-256 of its canonical JSON (object
//! keys sorted at every level, no whitespace) cut to 16 hex digits, so field order and formatting
//! do not matter and any changed value gives another model. The device is deliberately not part of
//! the key: a model trained on a GPU is reused on a CPU (the manifest records where it was
//! trained).
//!
//! Entry `<root>/<key>/`:
//!
//! * `recipe.json` — the canonical JSON the key hashes (so `sha256(recipe.json)[..16] == key`);
//! * `manifest.json` — [`ModelManifest`]: status, created/finished times, steps, final loss,
//!   device, diffuq version, git commit, and the SHA-256 of each model file;
//! * `model.safetensors`, `ema.safetensors` — final and EMA weights, both under the plain
//!   parameter names, so either loads into the network's `VarMap`
//!   ([`super::trainer::load_weights`]);
//! * `checkpoint/` — the trainer's checkpoint directory, only while training is unfinished (an
//!   interrupted training resumes from it).
//!
//! Committed models (e.g. the repository's `models/` folder) are read-only search directories with
//! the same layout, consulted before the cache root. A finished entry is only trusted after its
//! files match the digests in its manifest; a mismatch is a one-line error suggesting `--force`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::trainer::TrainOutcome;
use crate::error::{Error, Result};
use crate::fetch::sha256_file;
use crate::tracking::{atomic_write, git_state, unix_now, Status};

/// File names inside an entry.
pub const RECIPE_FILE: &str = "recipe.json";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// `manifest.json` of a cache entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub key: String,
    pub status: Status,
    pub created_unix: u64,
    pub finished_unix: Option<u64>,
    pub steps: Option<usize>,
    /// The trainer's final loss ([`TrainOutcome::final_loss`]).
    pub final_loss: Option<f64>,
    /// Where the model was trained (`cpu`, `cuda:0`); not part of the key.
    pub device: Option<String>,
    pub crate_version: String,
    pub git_sha: String,
    pub git_dirty: Option<bool>,
    /// SHA-256 of each model file, by file name.
    pub sha256: BTreeMap<String, String>,
}

/// A finished, verified entry.
#[derive(Debug, Clone)]
pub struct CachedModel {
    pub key: String,
    pub dir: PathBuf,
    /// Found in a committed (read-only) directory rather than the cache root.
    pub committed: bool,
    pub manifest: ModelManifest,
}

impl CachedModel {
    /// The final weights (plain parameter names).
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    /// The EMA weights (plain parameter names).
    pub fn ema_path(&self) -> PathBuf {
        self.dir.join(EMA_FILE)
    }
}

/// The trained-model cache: a writable root and read-only committed directories.
#[derive(Debug, Clone)]
pub struct ModelCache {
    root: PathBuf,
    committed: Vec<PathBuf>,
}

impl ModelCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            committed: vec![],
        }
    }

    /// `<cache root>/diffuq/models`, beside the weights [`crate::fetch::default_cache_dir`]
    /// downloads (`$XDG_CACHE_HOME`, else `~/.cache`, else `./.cache`).
    pub fn default_root() -> PathBuf {
        let weights = crate::fetch::default_cache_dir();
        weights
            .parent()
            .map(|diffuq| diffuq.join("models"))
            .unwrap_or_else(|| PathBuf::from(".cache/diffuq/models"))
    }

    /// Also look for entries in `dir` (read-only). Committed directories are searched in the
    /// order they were added, all before the cache root.
    pub fn with_committed(mut self, dir: impl Into<PathBuf>) -> Self {
        self.committed.push(dir.into());
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entry directory of `key` in the cache root.
    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The finished entry of `recipe`: committed directories first, then the root. `None` if there
    /// is none (or only an unfinished one); an error if one exists but fails its integrity check.
    pub fn lookup<R: Serialize>(&self, recipe: &R) -> Result<Option<CachedModel>> {
        let canonical = canonical_json(recipe)?;
        let key = key_of(&canonical);
        for dir in &self.committed {
            if let Some(found) = open_entry(&dir.join(&key), &key, &canonical, true)? {
                return Ok(Some(found));
            }
        }
        open_entry(&self.entry_dir(&key), &key, &canonical, false)
    }

    /// The cached model of `recipe`, training it first if there is none: `train` gets the entry's
    /// checkpoint directory (pass it to [`super::trainer::train`], which resumes there after an
    /// interruption) and returns the outcome, whose final and EMA weights become the entry's
    /// files. `force` ignores (and replaces) an existing root entry and skips committed ones.
    pub fn train_or_load<R: Serialize>(
        &self,
        recipe: &R,
        force: bool,
        train: impl FnOnce(&Path) -> Result<TrainOutcome>,
    ) -> Result<CachedModel> {
        if !force {
            if let Some(found) = self.lookup(recipe)? {
                return Ok(found);
            }
        }
        let canonical = canonical_json(recipe)?;
        let key = key_of(&canonical);
        let dir = self.entry_dir(&key);
        if force && dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // An unfinished entry keeps its creation time; anything else starts over.
        let created_unix = read_manifest(&dir)
            .ok()
            .filter(|m| m.status == Status::Running && m.key == key)
            .map_or_else(unix_now, |m| m.created_unix);
        let (git_sha, git_dirty) = git_state();
        let mut manifest = ModelManifest {
            key: key.clone(),
            status: Status::Running,
            created_unix,
            finished_unix: None,
            steps: None,
            final_loss: None,
            device: None,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            git_sha,
            git_dirty,
            sha256: BTreeMap::new(),
        };
        atomic_write(&dir.join(RECIPE_FILE), canonical.as_bytes())?;
        write_manifest(&dir, &manifest)?;

        let checkpoint = dir.join(CHECKPOINT_DIR);
        let outcome = train(&checkpoint)?;
        for (file, tensors) in [(MODEL_FILE, &outcome.weights), (EMA_FILE, &outcome.ema)] {
            let path = dir.join(file);
            super::trainer::save_tensors(&path, tensors, None)?;
            manifest
                .sha256
                .insert(file.to_string(), sha256_file(&path)?);
        }
        // The loss trace outlives the checkpoints: reports plot it, and a test replays the
        // recipe's first steps against it.
        let trace = checkpoint.join(super::trainer::TRACE_FILE);
        if trace.exists() {
            let kept = dir.join(super::trainer::TRACE_FILE);
            fs::rename(&trace, &kept).map_err(|e| Error::io(&kept, e))?;
            manifest
                .sha256
                .insert(super::trainer::TRACE_FILE.to_string(), sha256_file(&kept)?);
        }
        manifest.status = Status::Finished;
        manifest.finished_unix = Some(unix_now());
        manifest.steps = Some(outcome.steps);
        manifest.final_loss = Some(outcome.final_loss);
        manifest.device = Some(outcome.device.clone());
        write_manifest(&dir, &manifest)?;
        if checkpoint.exists() {
            fs::remove_dir_all(&checkpoint).map_err(|e| Error::io(&checkpoint, e))?;
        }
        Ok(CachedModel {
            key,
            dir,
            committed: false,
            manifest,
        })
    }
}

/// The cache key of `recipe`: SHA-256 of its canonical JSON, first 16 hex digits.
pub fn recipe_key<R: Serialize>(recipe: &R) -> Result<String> {
    Ok(key_of(&canonical_json(recipe)?))
}

fn key_of(canonical: &str) -> String {
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `recipe` as JSON with every object's keys sorted and no whitespace.
pub fn canonical_json<R: Serialize>(recipe: &R) -> Result<String> {
    let value = serde_json::to_value(recipe)
        .map_err(|e| Error::invalid("model recipe", format!("cannot be written as JSON: {e}")))?;
    let mut out = String::new();
    write_canonical(&value, &mut out);
    Ok(out)
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn read_manifest(dir: &Path) -> Result<ModelManifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))
}

fn write_manifest(dir: &Path, m: &ModelManifest) -> Result<()> {
    let text = serde_json::to_string_pretty(m)
        .map_err(|e| Error::invalid(MANIFEST_FILE, e.to_string()))?;
    atomic_write(&dir.join(MANIFEST_FILE), text.as_bytes())
}

/// The entry in `dir` if it is finished and intact; `None` if absent or unfinished.
fn open_entry(
    dir: &Path,
    key: &str,
    canonical: &str,
    committed: bool,
) -> Result<Option<CachedModel>> {
    if !dir.join(MANIFEST_FILE).is_file() {
        return Ok(None);
    }
    let fix = if committed {
        "restore the committed model from git, or rerun with --force to retrain it into the cache"
    } else {
        "rerun with --force to retrain it"
    };
    let corrupt = |reason: String| Error::ModelCache {
        path: dir.to_path_buf(),
        reason: format!("{reason} ({fix})"),
    };
    let manifest = read_manifest(dir).map_err(|e| corrupt(format!("unreadable manifest: {e}")))?;
    if manifest.status != Status::Finished {
        return Ok(None);
    }
    if manifest.key != key {
        return Err(corrupt(format!(
            "{MANIFEST_FILE} is for key {}, not {key}",
            manifest.key
        )));
    }
    let recipe = fs::read_to_string(dir.join(RECIPE_FILE)).unwrap_or_default();
    if recipe != canonical {
        return Err(corrupt(format!(
            "{RECIPE_FILE} differs from the recipe that hashes to {key}"
        )));
    }
    for file in [MODEL_FILE, EMA_FILE] {
        let Some(expected) = manifest.sha256.get(file) else {
            return Err(corrupt(format!(
                "{MANIFEST_FILE} records no sha256 for {file}"
            )));
        };
        let path = dir.join(file);
        if !path.is_file() {
            return Err(corrupt(format!("{file} is missing")));
        }
        let got = sha256_file(&path)?;
        if &got != expected {
            return Err(corrupt(format!(
                "{file} has sha256 {got}, the manifest recorded {expected}"
            )));
        }
    }
    Ok(Some(CachedModel {
        key: key.to_string(),
        dir: dir.to_path_buf(),
        committed,
        manifest,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[derive(Serialize)]
    struct Recipe {
        arch: &'static str,
        steps: usize,
        lr: f64,
        nested: Nested,
    }

    #[derive(Serialize)]
    struct Nested {
        a: u32,
        b: Vec<f32>,
    }

    // The same fields, declared (and so serialised) in another order.
    #[derive(Serialize)]
    struct Reordered {
        nested: NestedReordered,
        lr: f64,
        steps: usize,
        arch: &'static str,
    }

    #[derive(Serialize)]
    struct NestedReordered {
        b: Vec<f32>,
        a: u32,
    }

    fn recipe() -> Recipe {
        Recipe {
            arch: "mlp",
            steps: 100,
            lr: 1e-3,
            nested: Nested {
                a: 1,
                b: vec![0.5, 2.0],
            },
        }
    }

    #[test]
    fn key_is_stable_order_free_and_changes_with_any_value() {
        // Expected: canonical JSON sorts keys at every level, so the key ignores declaration
        // order; its digest is sha256 of that JSON (computed here by hand from the string).
        let k = recipe_key(&recipe()).unwrap();
        assert_eq!(k.len(), 16);
        assert_eq!(k, recipe_key(&recipe()).unwrap());
        let canonical = canonical_json(&recipe()).unwrap();
        assert_eq!(
            canonical,
            r#"{"arch":"mlp","lr":0.001,"nested":{"a":1,"b":[0.5,2.0]},"steps":100}"#
        );
        let reordered = Reordered {
            nested: NestedReordered {
                b: vec![0.5, 2.0],
                a: 1,
            },
            lr: 1e-3,
            steps: 100,
            arch: "mlp",
        };
        assert_eq!(recipe_key(&reordered).unwrap(), k);
        let changed = [
            Recipe {
                steps: 101,
                ..recipe()
            },
            Recipe {
                lr: 2e-3,
                ..recipe()
            },
            Recipe {
                nested: Nested {
                    a: 1,
                    b: vec![0.5, 2.5],
                },
                ..recipe()
            },
        ];
        for c in &changed {
            assert_ne!(recipe_key(c).unwrap(), k);
        }
    }

    fn outcome(value: f32) -> TrainOutcome {
        let t = Tensor::new(&[value, 2.0 * value], &Device::Cpu).unwrap();
        TrainOutcome {
            steps: 3,
            final_loss: 0.25,
            resumed_from: None,
            weights: vec![("w".into(), t.clone())],
            ema: vec![("w".into(), t)],
            device: "cpu".into(),
        }
    }

    #[test]
    fn train_or_load_trains_once_then_loads_and_detects_corruption() {
        // Expected: the second call finds the finished entry (no training); flipping one byte of
        // model.safetensors breaks its recorded sha256 → one-line error suggesting --force, and
        // --force retrains.
        let root = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(root.path());
        let mut trained = 0;
        let m = cache
            .train_or_load(&recipe(), false, |ckpt| {
                trained += 1;
                assert!(ckpt.ends_with(CHECKPOINT_DIR));
                fs::create_dir_all(ckpt).unwrap();
                Ok(outcome(1.0))
            })
            .unwrap();
        assert_eq!(m.manifest.status, Status::Finished);
        assert_eq!(m.manifest.steps, Some(3));
        assert_eq!(m.manifest.device.as_deref(), Some("cpu"));
        assert!(!m.dir.join(CHECKPOINT_DIR).exists());
        let recipe_bytes = fs::read(m.dir.join(RECIPE_FILE)).unwrap();
        assert_eq!(key_of(std::str::from_utf8(&recipe_bytes).unwrap()), m.key);
        let again = cache
            .train_or_load(&recipe(), false, |_| -> Result<TrainOutcome> {
                unreachable!("a finished entry must not be retrained")
            })
            .unwrap();
        assert_eq!(again.manifest, m.manifest);
        assert_eq!(trained, 1);

        let model = m.model_path();
        let mut bytes = fs::read(&model).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&model, bytes).unwrap();
        let e = cache.lookup(&recipe()).unwrap_err().to_string();
        assert!(
            e.starts_with("model cache entry")
                && e.contains("model.safetensors has sha256")
                && e.contains("--force")
                && !e.contains('\n'),
            "{e}"
        );
        assert!(cache
            .train_or_load(&recipe(), false, |_| Ok(outcome(1.0)))
            .is_err());
        let fixed = cache
            .train_or_load(&recipe(), true, |_| Ok(outcome(3.0)))
            .unwrap();
        assert!(cache.lookup(&recipe()).unwrap().is_some());
        assert_ne!(fixed.manifest.sha256, m.manifest.sha256);
    }

    #[test]
    fn committed_models_are_found_first_and_unfinished_entries_are_not() {
        // Expected: an entry copied into a committed directory is returned from there even with
        // an empty cache root; a running entry is invisible to lookup.
        let root = tempfile::tempdir().unwrap();
        let committed = tempfile::tempdir().unwrap();
        let writer = ModelCache::new(committed.path());
        writer
            .train_or_load(&recipe(), false, |_| Ok(outcome(1.0)))
            .unwrap();
        let cache = ModelCache::new(root.path()).with_committed(committed.path());
        let found = cache.lookup(&recipe()).unwrap().unwrap();
        assert!(found.committed && found.dir.starts_with(committed.path()));
        assert!(ModelCache::new(root.path())
            .lookup(&recipe())
            .unwrap()
            .is_none());

        let key = recipe_key(&recipe()).unwrap();
        let dir = root.path().join(&key);
        fs::create_dir_all(&dir).unwrap();
        let mut m = found.manifest.clone();
        m.status = Status::Running;
        write_manifest(&dir, &m).unwrap();
        assert!(ModelCache::new(root.path())
            .lookup(&recipe())
            .unwrap()
            .is_none());
    }

    #[test]
    fn default_root_sits_beside_the_weights_cache() {
        // Expected: fetch's convention, `<cache root>/diffuq/weights` → `<cache root>/diffuq/models`.
        let weights = crate::fetch::default_cache_dir();
        assert_eq!(
            ModelCache::default_root(),
            weights.parent().unwrap().join("models")
        );
    }
}
