//! Configuration: raw layers → one typed, validated experiment.
//!
//! Layers, later wins: `experiments/<artifact>/experiment.toml` `[default]` table → its scale
//! profile (`[smoke]`, `[mini]`, `[paper]`) → `DIFFUQ_*` environment variables (`__` separates
//! nesting: `DIFFUQ_TRAIN__STEPS=10` sets `train.steps`) → `key=value` command-line overrides.
//! Every value keeps its origin so that an error names the key, the value and where it came from.
//! Override values are parsed as TOML (`3`, `1e-3`, `true`, `[1, 2]`, `"text"`); anything that is
//! not valid TOML is taken as a bare string, and the typed extraction then rejects it if the key
//! is not a string. An experiment file must spell out every key, so an override or environment
//! variable naming a key absent from the file is rejected before extraction.
//!
//! The resolved configuration is the typed struct serialised back to TOML; its SHA-256 names the
//! run directory, so two invocations that resolve to the same experiment share a run.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The scales every experiment file defines as profiles.
pub const SCALES: [&str; 3] = ["smoke", "mini", "paper"];
/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "DIFFUQ_";

/// One violated constraint found by [`Validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub key: String,
    pub reason: String,
}

impl Violation {
    pub fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Range and consistency checks beyond what the types express.
pub trait Validate {
    fn validate(&self) -> Vec<Violation>;
}

/// Helper for validators: push a violation unless `ok`.
pub fn check(out: &mut Vec<Violation>, ok: bool, key: &str, reason: &str) {
    if !ok {
        out.push(Violation::new(key, reason));
    }
}

/// `seeds`: at least one, none repeated (a repeated seed is the same replicate twice, which would
/// narrow every ± it reports).
pub fn check_seeds(out: &mut Vec<Violation>, seeds: &[u64]) {
    check(
        out,
        !seeds.is_empty(),
        "seeds",
        "must list at least one seed",
    );
    let mut uniq = seeds.to_vec();
    uniq.sort_unstable();
    uniq.dedup();
    check(
        out,
        uniq.len() == seeds.len(),
        "seeds",
        "must not repeat a seed",
    );
}

/// A parsed `key=value` override.
#[derive(Debug, Clone)]
pub struct Override {
    pub raw: String,
    pub key: String,
    pub value: toml::Value,
}

impl Override {
    pub fn parse(raw: &str) -> Result<Self> {
        let (key, value) = raw.split_once('=').ok_or_else(|| Error::Override {
            raw: raw.to_string(),
            reason: "expected key=value".into(),
        })?;
        let key = key.trim();
        let valid_key = !key.is_empty()
            && key.split('.').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !valid_key {
            return Err(Error::Override {
                raw: raw.to_string(),
                reason: format!("`{key}` is not a dotted key such as train.steps"),
            });
        }
        Ok(Self {
            raw: raw.to_string(),
            key: key.to_string(),
            value: parse_value(value.trim()),
        })
    }
}

/// TOML scalar/array/inline-table if it parses as one, else the raw text as a string.
fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// A figment provider for one layer of values with a human-readable origin.
struct Layer {
    origin: String,
    key: String,
    value: toml::Value,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.origin.clone())
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Serialized::global(&self.key, &self.value).data()
    }
}

/// A fully resolved experiment.
#[derive(Debug, Clone)]
pub struct Resolved<T> {
    pub artifact: String,
    pub scale: String,
    pub file: PathBuf,
    pub config: T,
    /// The typed configuration serialised back to TOML (what `config.resolved.toml` holds).
    pub toml: String,
    /// Hex SHA-256 of artifact name + resolved TOML.
    pub hash: String,
}

impl<T> Resolved<T> {
    /// Short hash used as the run-directory name.
    pub fn short_hash(&self) -> &str {
        &self.hash[..16]
    }
}

/// Where the experiment file of `artifact` lives under `experiments_dir`.
pub fn experiment_file(experiments_dir: &Path, artifact: &str) -> PathBuf {
    experiments_dir.join(artifact).join("experiment.toml")
}

/// Resolve `artifact` at `scale` from its experiment file, the given environment variables
/// (name, value) and overrides.
pub fn resolve<T>(
    experiments_dir: &Path,
    artifact: &str,
    scale: &str,
    env: &[(String, String)],
    overrides: &[String],
) -> Result<Resolved<T>>
where
    T: DeserializeOwned + Serialize + Validate,
{
    let file = experiment_file(experiments_dir, artifact);
    let text = std::fs::read_to_string(&file).map_err(|e| Error::ExperimentFile {
        path: file.clone(),
        reason: format!("cannot read: {e}"),
    })?;
    let raw: toml::Table = toml::from_str(&text).map_err(|e| Error::ExperimentFile {
        path: file.clone(),
        reason: format!(
            "malformed TOML{}: {}",
            toml_location(&text, e.span()),
            e.message()
        ),
    })?;
    let profiles: Vec<&str> = SCALES
        .iter()
        .copied()
        .filter(|s| raw.get(*s).is_some_and(|v| v.is_table()))
        .collect();
    if !profiles.contains(&scale) {
        return Err(Error::UnknownScale {
            artifact: artifact.to_string(),
            scale: scale.to_string(),
            expected: profiles.join(", "),
        });
    }
    for key in raw.keys() {
        if key != "default" && !SCALES.contains(&key.as_str()) {
            return Err(Error::ExperimentFile {
                path: file.clone(),
                reason: format!(
                    "top-level table `{key}` is not a profile (expected default, {})",
                    SCALES.join(", ")
                ),
            });
        }
    }

    let origin_file = |profile: &str| format!("{} [{profile}]", file.display());
    let base = Figment::from(Toml::file_exact(&file).nested()).select(scale);

    // Environment and override layers, each checked to name a key the file defines.
    let mut layers = Vec::new();
    for (name, value) in env.iter().filter(|(n, _)| n.starts_with(ENV_PREFIX)) {
        let key = name[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        layers.push(Layer {
            origin: format!("environment variable {name}"),
            key,
            value: parse_value(value),
        });
    }
    for raw_override in overrides {
        let o = Override::parse(raw_override)?;
        layers.push(Layer {
            origin: format!("override `{}`", o.raw),
            key: o.key,
            value: o.value,
        });
    }
    let mut figment = base.clone();
    // A key may be overridden at any scale if the file defines it in some profile: optional keys
    // (`model.precision`, set only in [paper]) are documented there, and still type-checked below.
    let profiles_of_file: Vec<Figment> = SCALES
        .iter()
        .map(|s| Figment::from(Toml::file_exact(&file).nested()).select(s))
        .collect();
    for layer in layers {
        if !base.contains(&layer.key) && !profiles_of_file.iter().any(|f| f.contains(&layer.key)) {
            return Err(Error::Config {
                key: layer.key.clone(),
                value: Some(layer.value.to_string()),
                reason: format!("unknown key: {} defines no such key", file.display()),
                origin: layer.origin,
            });
        }
        figment = figment.merge(layer);
    }

    // The layer that set `key`. An error inside a value (an element of an array: `seeds.1`) has
    // a key no layer defines by itself, so the nearest enclosing key that one does is asked
    // (`seeds=[0,-1]` was blamed on the experiment file, not on the override).
    let set_by_layer = |key: &str| -> Option<String> {
        let mut k = key;
        loop {
            if let Some(md) = figment.find_metadata(k) {
                return md.source.is_none().then(|| md.name.to_string());
            }
            k = &k[..k.rfind('.')?];
        }
    };
    let describe = |key: &str| -> String {
        match set_by_layer(key) {
            Some(name) => name,
            None => {
                let in_table = |p: &str| lookup(&raw, p, key).is_some();
                if in_table(scale) {
                    origin_file(scale)
                } else if in_table("default") {
                    origin_file("default")
                } else {
                    file.display().to_string()
                }
            }
        }
    };

    let config: T = figment.extract().map_err(|e| {
        let key = e.path.join(".");
        let shown = if key.is_empty() {
            "<root>".to_string()
        } else {
            key.clone()
        };
        // An array element's key (`seeds.1`) has no value of its own: show the array's.
        let value = figment
            .find_value(&key)
            .ok()
            .or_else(|| {
                figment
                    .find_value(key.rsplit_once('.').map_or("", |(k, _)| k))
                    .ok()
            })
            .filter(|_| !key.is_empty())
            .map(|v| render_value(&v));
        Error::Config {
            key: shown,
            value,
            reason: e.kind.to_string(),
            origin: describe(&key),
        }
    })?;
    if let Some(v) = config.validate().into_iter().next() {
        let value = figment
            .find_value(&v.key)
            .ok()
            .map(|val| render_value(&val));
        return Err(Error::Config {
            origin: describe(&v.key),
            key: v.key,
            value,
            reason: v.reason,
        });
    }

    let toml = toml::to_string_pretty(&config)
        .map_err(|e| Error::invalid(format!("resolved config of {artifact}"), e.to_string()))?;
    let mut h = Sha256::new();
    h.update(artifact.as_bytes());
    h.update(b"\n");
    h.update(toml.as_bytes());
    let hash = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Resolved {
        artifact: artifact.to_string(),
        scale: scale.to_string(),
        file,
        config,
        toml,
        hash,
    })
}

/// Collapse a multi-line message into one line ("a\nb" → "a; b").
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn lookup<'a>(raw: &'a toml::Table, profile: &str, key: &str) -> Option<&'a toml::Value> {
    let mut cur = raw.get(profile)?;
    for part in key.split('.') {
        cur = cur.as_table()?.get(part)?;
    }
    Some(cur)
}

fn render_value(v: &figment::value::Value) -> String {
    use figment::value::Value as V;
    match v {
        V::String(_, s) => format!("{s:?}"),
        V::Char(_, c) => format!("{c:?}"),
        V::Bool(_, b) => b.to_string(),
        V::Num(_, n) => match n.to_f64() {
            Some(f) if n.to_i128().is_none() => f.to_string(),
            _ => n.to_i128().map(|i| i.to_string()).unwrap_or_default(),
        },
        V::Empty(_, _) => "<empty>".into(),
        V::Dict(_, _) => "{…}".into(),
        V::Array(_, a) => format!("[{} items]", a.len()),
    }
}

fn toml_location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let before = &text[..s.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!(" at line {line}, column {col}")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Tiny {
        version: u32,
        steps: u64,
        lr: f64,
        seeds: Vec<u64>,
        train: Inner,
    }
    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        batch: u64,
    }
    impl Validate for Tiny {
        fn validate(&self) -> Vec<Violation> {
            let mut v = vec![];
            check(&mut v, self.lr > 0.0, "lr", "must be > 0");
            v
        }
    }

    fn dir(text: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tiny")).unwrap();
        std::fs::write(d.path().join("tiny/experiment.toml"), text).unwrap();
        d
    }

    const FILE: &str = "[default]\nversion = 1\nsteps = 10\nlr = 0.1\nseeds = [0, 1]\n[default.train]\nbatch = 4\n[smoke]\nsteps = 2\n[mini]\n[paper]\nsteps = 1000\n";

    fn go(text: &str, scale: &str, env: &[(&str, &str)], o: &[&str]) -> Result<Resolved<Tiny>> {
        let d = dir(text);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        resolve::<Tiny>(d.path(), "tiny", scale, &env, &o)
    }

    #[test]
    fn layers_apply_in_order() {
        assert_eq!(go(FILE, "smoke", &[], &[]).unwrap().config.steps, 2);
        assert_eq!(go(FILE, "mini", &[], &[]).unwrap().config.steps, 10);
        assert_eq!(
            go(FILE, "paper", &[("DIFFUQ_STEPS", "5")], &[])
                .unwrap()
                .config
                .steps,
            5
        );
        let r = go(
            FILE,
            "paper",
            &[("DIFFUQ_STEPS", "5"), ("DIFFUQ_TRAIN__BATCH", "9")],
            &["steps=7"],
        )
        .unwrap();
        assert_eq!((r.config.steps, r.config.train.batch), (7, 9));
    }

    #[test]
    fn hash_follows_resolved_values_only() {
        let a = go(FILE, "mini", &[], &[]).unwrap();
        let b = go(FILE, "mini", &[], &["steps=10"]).unwrap();
        let c = go(FILE, "mini", &[], &["steps=11"]).unwrap();
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn errors_name_key_value_and_origin() {
        let e = go(FILE, "mini", &[], &["steps=abc"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`steps`") && e.contains("\"abc\"") && e.contains("override `steps=abc`"),
            "{e}"
        );
        // An element of an array set by an override is blamed on the override.
        let e = go(FILE, "mini", &[], &["seeds=[0,-1]"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("seeds") && e.contains("override `seeds=[0,-1]`") && !e.contains(".toml"),
            "{e}"
        );
        let e = go(FILE, "mini", &[], &["stpes=3"]).unwrap_err().to_string();
        assert!(e.contains("`stpes`") && e.contains("unknown key"), "{e}");
        let e = go(FILE, "mini", &[("DIFFUQ_LR", "-1")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`lr` = -1")
                && e.contains("environment variable DIFFUQ_LR")
                && e.contains("> 0"),
            "{e}"
        );
        let e = go(&FILE.replace("lr = 0.1", "lr = -0.1"), "mini", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[default]") && e.contains("`lr`"), "{e}");
        let e = go(
            &FILE.replace("[mini]", "[mini]\nbogus = 1"),
            "mini",
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus") && e.contains("[mini]"), "{e}");
        let e = go("[default\nx=1", "mini", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed TOML at line 1"), "{e}");
        let e = go(FILE, "huge", &[], &[]).unwrap_err().to_string();
        assert!(e.contains("unknown scale `huge`"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn override_values_parse_as_toml() {
        assert_eq!(
            Override::parse("a.b=3").unwrap().value,
            toml::Value::Integer(3)
        );
        assert_eq!(
            Override::parse("a=1e-3").unwrap().value,
            toml::Value::Float(1e-3)
        );
        assert_eq!(
            Override::parse("a=ddpm").unwrap().value,
            toml::Value::String("ddpm".into())
        );
        assert!(Override::parse("novalue").is_err());
        assert!(Override::parse("=3").is_err());
    }
}
