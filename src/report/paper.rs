//! `paper/<artifact>.toml`: the published numbers of one paper artifact, machine-readable.
//!
//! Every file names its `artifact`, the `source` (paper, section, table or figure) and the `claim`
//! in the paper's words, and lists the published numbers as `[[values]]`, each keyed by the
//! paper table's `row` and `column` with diffuq's tolerance for a paper-scale reproduction
//! (`tolerance`, absolute, or `rel_tolerance`, relative to the published value). Numbers read off
//! a plot, or a qualitative statement turned into a number, are marked `approximate = true`.
//! A number the paper prints but that cannot be read is left out and the file's `note` says so:
//! a missing value is honest, an invented one is not. `paper/README.md` explains the tolerances.
//!
//! The schema is strict (`deny_unknown_fields`): a misspelt key is an error naming the file and
//! the line, and every semantic problem (no tolerance, a repeated cell, a non-finite value) is a
//! one-line error naming the file and the key.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One `paper/<artifact>.toml` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperFile {
    /// The artifact's name; must equal the file's stem.
    pub artifact: String,
    /// Paper, section and table or figure the numbers come from.
    pub source: String,
    /// The claim the artifact checks, in the paper's words.
    pub claim: String,
    /// What the file leaves out and why (numbers that cannot be read, qualitative figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The published numbers, in the paper table's reading order.
    #[serde(default)]
    pub values: Vec<PaperValue>,
}

/// One published number: a cell of a paper table (or a point read off a figure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperValue {
    /// The paper table's row (model and dataset, method, setting).
    pub row: String,
    /// The paper table's column (method, metric).
    pub column: String,
    pub value: f64,
    /// Unit of `value` where the column name does not say it (`%`, `NFE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Absolute tolerance: a reproduction within `value ± tolerance` matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// Relative tolerance: a reproduction within `value · (1 ± rel_tolerance)` matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rel_tolerance: Option<f64>,
    /// Read off a plot, or a qualitative statement turned into a number.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approximate: bool,
    /// Where exactly the number comes from, or how it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A value's tolerance, as its file states it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    Absolute(f64),
    Relative(f64),
}

impl PaperValue {
    /// The tolerance; [`parse`] guarantees exactly one of the two keys is present.
    pub fn tolerance(&self) -> Tolerance {
        match (self.tolerance, self.rel_tolerance) {
            (Some(a), _) => Tolerance::Absolute(a),
            (None, Some(r)) => Tolerance::Relative(r),
            (None, None) => Tolerance::Absolute(0.0),
        }
    }

    /// Half-width of the accepted band around `value`, in the value's unit.
    pub fn allowed(&self) -> f64 {
        match self.tolerance() {
            Tolerance::Absolute(a) => a,
            Tolerance::Relative(r) => r * self.value.abs(),
        }
    }

    /// Whether `reproduced` lies within the tolerance (a non-finite one never does).
    pub fn within(&self, reproduced: f64) -> bool {
        // Compared with a hair of slack for the decimal round-off of the TOML numbers.
        reproduced.is_finite() && (reproduced - self.value).abs() <= self.allowed() * (1.0 + 1e-12)
    }
}

impl PaperFile {
    /// The value of a (row, column) cell, if the paper prints one.
    pub fn get(&self, row: &str, column: &str) -> Option<&PaperValue> {
        self.values
            .iter()
            .find(|v| v.row == row && v.column == column)
    }

    /// Distinct rows, in file order.
    pub fn rows(&self) -> Vec<&str> {
        distinct(self.values.iter().map(|v| v.row.as_str()))
    }

    /// Distinct columns, in file order.
    pub fn columns(&self) -> Vec<&str> {
        distinct(self.values.iter().map(|v| v.column.as_str()))
    }
}

fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items.filter(|s| seen.insert(*s)).collect()
}

/// Parse and check the text of a paper file; `file` names it in errors (`paper/au-table1.toml`)
/// and its stem must equal the `artifact` key.
pub fn parse(text: &str, file: &str) -> Result<PaperFile> {
    let err = |at: String, reason: String| Error::Paper {
        file: file.to_string(),
        at,
        reason: crate::config::one_line(&reason),
    };
    let paper: PaperFile = toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let start = span.start.min(text.len());
                let line = text[..start].matches('\n').count();
                let content = text.lines().nth(line).unwrap_or("").trim();
                format!("line {} `{content}`", line + 1)
            }
            None => "document".to_string(),
        };
        err(at, e.message().to_string())
    })?;
    let key = |k: &str| format!("key `{k}`");
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    if paper.artifact != stem {
        return Err(err(
            key("artifact"),
            format!(
                "`{}` must name the file's artifact `{stem}`",
                paper.artifact
            ),
        ));
    }
    for (name, text) in [
        ("artifact", &paper.artifact),
        ("source", &paper.source),
        ("claim", &paper.claim),
    ] {
        if text.trim().is_empty() {
            return Err(err(key(name), "must not be empty".into()));
        }
    }
    let mut cells = HashSet::new();
    for (i, v) in paper.values.iter().enumerate() {
        let at = |field: &str| {
            format!(
                "key `values[{i}].{field}` (row `{}`, column `{}`)",
                v.row, v.column
            )
        };
        if v.row.trim().is_empty() {
            return Err(err(at("row"), "must not be empty".into()));
        }
        if v.column.trim().is_empty() {
            return Err(err(at("column"), "must not be empty".into()));
        }
        if !v.value.is_finite() {
            return Err(err(at("value"), format!("{} is not finite", v.value)));
        }
        match (v.tolerance, v.rel_tolerance) {
            (Some(_), Some(_)) => {
                return Err(err(
                    at("tolerance"),
                    "give `tolerance` (absolute) or `rel_tolerance`, not both".into(),
                ))
            }
            (None, None) => return Err(err(
                at("tolerance"),
                "missing: every published number needs `tolerance` (absolute) or `rel_tolerance`"
                    .into(),
            )),
            (Some(t), None) | (None, Some(t)) => {
                if !(t.is_finite() && t >= 0.0) {
                    let field = if v.tolerance.is_some() {
                        "tolerance"
                    } else {
                        "rel_tolerance"
                    };
                    return Err(err(at(field), format!("{t} must be finite and ≥ 0")));
                }
            }
        }
        if !cells.insert((v.row.as_str(), v.column.as_str())) {
            return Err(err(
                at("row"),
                "the same (row, column) cell is listed twice".into(),
            ));
        }
    }
    Ok(paper)
}

/// Read and [`parse`] a paper file from disk.
pub fn load(path: &Path) -> Result<PaperFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The inputs are small hand-written paper files; the expected outcomes are the schema's rules
    // documented above (no reference numbers are involved).
    const GOOD: &str = r#"
artifact = "x"
source = "a paper, Table 9"
claim = "ours is lower"
[[values]]
row = "model A"
column = "FID"
value = 3.25
rel_tolerance = 0.1
[[values]]
row = "model A"
column = "precision"
value = 0.5
tolerance = 0.02
approximate = true
"#;

    fn error_of(text: &str) -> String {
        let e = parse(text, "paper/x.toml").unwrap_err().to_string();
        assert!(!e.contains('\n'), "not one line: {e}");
        assert!(e.starts_with("paper file paper/x.toml: "), "{e}");
        e
    }

    #[test]
    fn parses_values_and_tolerances() {
        let p = parse(GOOD, "paper/x.toml").unwrap();
        assert_eq!(p.rows(), ["model A"]);
        assert_eq!(p.columns(), ["FID", "precision"]);
        let fid = p.get("model A", "FID").unwrap();
        assert_eq!(fid.tolerance(), Tolerance::Relative(0.1));
        assert!(fid.within(3.5) && !fid.within(3.6) && !fid.within(f64::NAN));
        let prec = p.get("model A", "precision").unwrap();
        assert!(prec.approximate && prec.within(0.48) && !prec.within(0.47));
        assert!(p.get("model B", "FID").is_none());
    }

    #[test]
    fn schema_errors_name_file_and_key() {
        let e = error_of(&GOOD.replace("approximate = true", "aproximate = true"));
        assert!(
            e.contains("line 15") && e.contains("unknown field `aproximate`"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("value = 3.25", "value = \"3.25\""));
        assert!(e.contains("`value = \"3.25\"`"), "{e}");
        let e = error_of(&GOOD.replace("rel_tolerance = 0.1\n", ""));
        assert!(
            e.contains("values[0].tolerance") && e.contains("model A") && e.contains("missing"),
            "{e}"
        );
        let e =
            error_of(&GOOD.replace("tolerance = 0.02", "tolerance = 0.02\nrel_tolerance = 0.1"));
        assert!(
            e.contains("values[1].tolerance") && e.contains("not both"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("tolerance = 0.02", "tolerance = -1.0"));
        assert!(
            e.contains("values[1].tolerance") && e.contains("≥ 0"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("\"precision\"", "\"FID\""));
        assert!(e.contains("values[1].row") && e.contains("twice"), "{e}");
        let e = error_of(&GOOD.replace("artifact = \"x\"", "artifact = \"y\""));
        assert!(e.contains("key `artifact`") && e.contains("`x`"), "{e}");
        let e = error_of(&GOOD.replace("claim = \"ours is lower\"\n", ""));
        assert!(e.contains("missing field `claim`"), "{e}");
        let e = error_of("artifact = ");
        assert!(e.contains("line 1"), "{e}");
    }
}
