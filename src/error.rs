//! Library error type. Every variant renders as one line that names the file, key, tensor or
//! directory at fault and what was expected, so the CLI can print it verbatim and exit with code 2.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The artifact name is not registered.
    #[error("unknown artifact `{name}` (known: {known}); `diffuq ls` lists them")]
    UnknownArtifact { name: String, known: String },

    /// The experiment file of a known artifact is missing or unreadable.
    #[error("experiment file {}: {reason}", path.display())]
    ExperimentFile { path: PathBuf, reason: String },

    /// A `key=value` override could not be parsed at all.
    #[error("override `{raw}`: {reason}")]
    Override { raw: String, reason: String },

    /// A configuration value is missing, unknown, of the wrong type or out of range.
    /// `origin` says where the offending value came from (file, profile, env or override).
    #[error("config key `{key}`{value}: {reason} (from {origin})", value = value.as_ref().map(|v| format!(" = {v}")).unwrap_or_default())]
    Config {
        key: String,
        value: Option<String>,
        reason: String,
        origin: String,
    },

    /// The requested scale is not a profile of the experiment.
    #[error("unknown scale `{scale}` for {artifact} (expected one of: {expected})")]
    UnknownScale {
        artifact: String,
        scale: String,
        expected: String,
    },

    /// Run directory or output file problems.
    #[error("run directory {}: {reason}", path.display())]
    RunDir { path: PathBuf, reason: String },

    /// Any other I/O failure, with the path it concerned.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Tensor computation failures (candle), with what was being computed.
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        source: candle_core::Error,
    },

    /// Table / parquet failures.
    #[error("{context}: {source}")]
    Frame {
        context: String,
        source: polars::error::PolarsError,
    },

    /// Plotting failures.
    #[error("figure {}: {reason}", path.display())]
    Plot { path: PathBuf, reason: String },

    /// A checkpoint, optimiser state or saved model lacks a tensor, or holds one of the wrong shape
    /// or dtype.
    #[error("{}: tensor `{tensor}` {reason}", path.display())]
    Checkpoint {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// A trained-model cache entry that exists but cannot be trusted (corrupt file, bad manifest).
    #[error("model cache entry {}: {reason}", path.display())]
    ModelCache { path: PathBuf, reason: String },

    /// A `paper/<artifact>.toml` file that is malformed or breaks the schema: `at` names the key
    /// (`values[2].tolerance`) or, for TOML syntax, the line.
    #[error("paper file {file}: {at}: {reason}")]
    Paper {
        file: String,
        at: String,
        reason: String,
    },

    /// A numeric input that violates a documented precondition (non-finite values, bad shapes).
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },

    /// Files a paper profile names (`weights.*`, `data.*`, `reference.*`) are not there.
    #[error("{count} missing input file(s), nothing computed: {list}; `diffuq validate <artifact> --scale <scale>` lists every file and where it is published")]
    MissingInputs { count: usize, list: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Attach context to candle errors.
pub trait TensorContext<T> {
    fn ctx(self, context: &str) -> Result<T>;
}

impl<T> TensorContext<T> for candle_core::Result<T> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| Error::Tensor {
            context: context.to_string(),
            source,
        })
    }
}

impl<T> TensorContext<T> for polars::error::PolarsResult<T> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| Error::Frame {
            context: context.to_string(),
            source,
        })
    }
}
