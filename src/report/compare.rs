//! Paper vs reproduced: one table per run, in Markdown (`compare.md`) and LaTeX (`table.tex`),
//! built from the published values of `paper/<artifact>.toml` and the run's own numbers, both
//! keyed by the paper table's (row, column).
//!
//! Every cell shows the published value, the reproduced one and Δ = reproduced − paper. Only at
//! `paper` scale are the values meant to agree, so only there does the table show the tolerance
//! and whether Δ lies within it; at `mini` and `smoke` scale diffuq runs smaller models on other
//! data with fewer samples, and the header says that the comparison is one of direction and
//! ordering (is the method's number below the baseline's, as in the paper?), not of values.
//! Cells the paper does not print, or the run does not compute, are shown as "—" rather than
//! dropped, so a missing number is visible.

use std::collections::HashSet;

use super::paper::{PaperFile, PaperValue, Tolerance};
use super::table::Table;

/// The scale at which values (not just directions) are expected to match the paper.
pub const PAPER_SCALE: &str = "paper";

/// One reproduced number, keyed like the paper's cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Reproduced {
    pub row: String,
    pub column: String,
    pub value: f64,
    /// Spread over seeds, when the run has several.
    pub std: Option<f64>,
}

impl Reproduced {
    pub fn new(row: impl Into<String>, column: impl Into<String>, value: f64) -> Self {
        Self {
            row: row.into(),
            column: column.into(),
            value,
            std: None,
        }
    }

    pub fn with_std(mut self, std: f64) -> Self {
        self.std = Some(std);
        self
    }
}

/// A (row, column) cell with whatever the paper and the run have for it.
#[derive(Debug, Clone, Copy)]
pub struct Cell<'a> {
    pub row: &'a str,
    pub column: &'a str,
    pub paper: Option<&'a PaperValue>,
    pub reproduced: Option<&'a Reproduced>,
}

impl Cell<'_> {
    /// reproduced − paper, when both exist.
    pub fn delta(&self) -> Option<f64> {
        Some(self.reproduced?.value - self.paper?.value)
    }

    /// Whether the reproduced value lies within the paper value's tolerance, when both exist.
    pub fn within(&self) -> Option<bool> {
        Some(self.paper?.within(self.reproduced?.value))
    }
}

/// The comparison of one run with its paper file.
#[derive(Debug, Clone)]
pub struct Comparison<'a> {
    artifact: &'a str,
    paper: Option<&'a PaperFile>,
    reproduced: &'a [Reproduced],
    scale: &'a str,
}

impl<'a> Comparison<'a> {
    /// `paper` is `None` for an artifact no paper has (mini-model): the paper column stays empty.
    pub fn new(
        artifact: &'a str,
        paper: Option<&'a PaperFile>,
        reproduced: &'a [Reproduced],
        scale: &'a str,
    ) -> Self {
        Self {
            artifact,
            paper,
            reproduced,
            scale,
        }
    }

    /// Values are compared (tolerance, within) only at paper scale.
    pub fn compares_values(&self) -> bool {
        self.scale == PAPER_SCALE
    }

    /// Every cell either side has: rows in order of first appearance (the paper's first), and
    /// within a row the paper's columns first, then the run's own.
    pub fn cells(&self) -> Vec<Cell<'a>> {
        let paper: &'a [PaperValue] = self.paper.map(|p| p.values.as_slice()).unwrap_or(&[]);
        let keys: Vec<(&'a str, &'a str)> = paper
            .iter()
            .map(|v| (v.row.as_str(), v.column.as_str()))
            .chain(
                self.reproduced
                    .iter()
                    .map(|r| (r.row.as_str(), r.column.as_str())),
            )
            .collect();
        let mut seen = HashSet::new();
        let unique: Vec<(&str, &str)> = keys.into_iter().filter(|k| seen.insert(*k)).collect();
        let mut rows: Vec<&str> = vec![];
        for (r, _) in &unique {
            if !rows.contains(r) {
                rows.push(r);
            }
        }
        rows.iter()
            .flat_map(|row| unique.iter().filter(move |(r, _)| r == row))
            .map(|&(row, column)| Cell {
                row,
                column,
                paper: paper.iter().find(|v| v.row == row && v.column == column),
                reproduced: self
                    .reproduced
                    .iter()
                    .find(|v| v.row == row && v.column == column),
            })
            .collect()
    }

    fn heading(&self) -> String {
        format!(
            "{}: paper vs reproduced ({} scale)",
            self.artifact, self.scale
        )
    }

    /// The sentences above the table: where the numbers come from and how to read them.
    pub fn preamble(&self) -> Vec<String> {
        let mut out = vec![];
        match self.paper {
            Some(p) => out.push(format!("Paper: {}.", p.source.trim_end_matches('.'))),
            None => out.push(
                "No paper prints this artifact (it is diffuq's own); the paper column is empty."
                    .into(),
            ),
        }
        if self.compares_values() {
            out.push(format!(
                "Δ = reproduced − paper; within = |Δ| ≤ the tolerance of paper/{}.toml (diffuq's choice, see paper/README.md).",
                self.artifact
            ));
        } else {
            out.push(format!(
                "At {} scale diffuq's setting is not the paper's (smaller or stand-in models, other data, fewer samples): this compares direction and ordering, not values. Δ = reproduced − paper is shown for reference only; no tolerance applies.",
                self.scale
            ));
        }
        if let Some(p) = self.paper {
            if p.values.is_empty() {
                out.push(
                    "The paper prints no number for this artifact; the verdict checks its claim."
                        .into(),
                );
            }
            if p.values.iter().any(|v| v.approximate) {
                out.push(
                    "≈: read off a plot, or a qualitative statement turned into a number (the paper file's notes say how)."
                        .into(),
                );
            }
        }
        out
    }

    /// Header and body cells (plain text; each renderer escapes them).
    fn grid(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let mut header = vec!["row", "column", "paper", "reproduced", "Δ"];
        if self.compares_values() {
            header.extend(["tolerance", "within"]);
        }
        let cells = self.cells();
        // The papers print one precision per table row (a row's numbers share their decimals),
        // and TOML keeps no trailing zeros: a row's published values are shown with the row's
        // largest number of decimals, so 8.50 stays 8.50.
        let row_decimals = |row: &str| {
            cells
                .iter()
                .filter(|c| c.row == row)
                .filter_map(|c| c.paper.map(|p| decimals_of(p.value)))
                .max()
                .unwrap_or(0)
        };
        let rows = cells
            .iter()
            .map(|c| {
                let paper_decimals = row_decimals(c.row);
                let d = c
                    .reproduced
                    .map(|r| paper_decimals.max(auto_decimals(r.value)))
                    .unwrap_or(paper_decimals);
                let column = match c.paper.and_then(|p| p.unit.as_deref()) {
                    Some(unit) => format!("{} ({unit})", c.column),
                    None => c.column.to_string(),
                };
                let mut cells = vec![
                    c.row.to_string(),
                    column,
                    c.paper
                        .map(|p| paper_text(p, paper_decimals))
                        .unwrap_or_else(|| "—".into()),
                    c.reproduced
                        .map(|r| match r.std {
                            Some(s) => format!("{:.d$} ± {:.d$}", r.value, s),
                            None => format!("{:.d$}", r.value),
                        })
                        .unwrap_or_else(|| "—".into()),
                    c.delta()
                        .map(|x| format!("{x:+.d$}"))
                        .unwrap_or_else(|| "—".into()),
                ];
                if self.compares_values() {
                    cells.push(
                        c.paper
                            .map(|p| match p.tolerance() {
                                Tolerance::Absolute(a) => format!("± {a}"),
                                Tolerance::Relative(r) => format!("± {}%", trim(r * 100.0)),
                            })
                            .unwrap_or_else(|| "—".into()),
                    );
                    cells.push(
                        match c.within() {
                            Some(true) => "yes",
                            Some(false) => "no",
                            None => "—",
                        }
                        .into(),
                    );
                }
                cells
            })
            .collect();
        (header, rows)
    }

    /// `compare.md`.
    pub fn to_markdown(&self) -> String {
        let (header, rows) = self.grid();
        let mut table = Table::new(header);
        for r in rows {
            table.row(r);
        }
        format!(
            "## {}\n\n{}\n\n{}",
            self.heading(),
            self.preamble().join("\n\n"),
            table.to_markdown()
        )
    }

    /// `table.tex`: a booktabs table, caption = the Markdown preamble.
    pub fn to_latex(&self) -> String {
        let (header, rows) = self.grid();
        let numeric = |c: usize| (2..=5).contains(&c);
        let spec: String = (0..header.len())
            .map(|c| if numeric(c) { 'r' } else { 'l' })
            .collect();
        let line = |cells: Vec<String>| format!("    {} \\\\\n", cells.join(" & "));
        let mut out = format!(
            "% {} (written by diffuq). Needs \\usepackage{{booktabs}}.\n\\begin{{table}}[ht]\n  \\centering\n  \\caption{{{}. {}}}\n  \\label{{tab:{}}}\n  \\begin{{tabular}}{{{spec}}}\n    \\toprule\n",
            self.heading(),
            latex_text(&self.heading()),
            latex_text(&self.preamble().join(" ")),
            self.artifact
        );
        out.push_str(&line(
            header
                .iter()
                .map(|h| match *h {
                    "Δ" => "$\\Delta$".to_string(),
                    h => latex_text(&capitalise(h)),
                })
                .collect(),
        ));
        out.push_str("    \\midrule\n");
        for r in rows {
            out.push_str(&line(
                r.iter()
                    .enumerate()
                    .map(|(c, s)| {
                        if numeric(c) {
                            latex_number(s)
                        } else {
                            latex_text(s)
                        }
                    })
                    .collect(),
            ));
        }
        out.push_str("    \\bottomrule\n  \\end{tabular}\n\\end{table}\n");
        out
    }
}

/// The published value with `decimals` digits (its row's printed precision), "≈ " in front when
/// approximate.
fn paper_text(v: &PaperValue, decimals: usize) -> String {
    let approx = if v.approximate { "≈ " } else { "" };
    format!("{approx}{:.decimals$}", v.value)
}

/// Digits after the decimal point in the shortest form of `x` (the paper's printed precision).
fn decimals_of(x: f64) -> usize {
    let s = format!("{x}");
    s.split_once('.').map(|(_, f)| f.len()).unwrap_or(0)
}

/// Decimals that show three significant digits of `x` (at most 4).
fn auto_decimals(x: f64) -> usize {
    if x == 0.0 || !x.is_finite() {
        return 2;
    }
    (2 - x.abs().log10().floor() as i64).clamp(0, 4) as usize
}

/// `x` without trailing zeros (5 for 5.0, 2.5 for 2.5).
fn trim(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Text for a LaTeX cell or caption: TeX's special characters escaped, the symbols diffuq's
/// tables use as math.
fn latex_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(ch);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '±' => out.push_str("$\\pm$"),
            '≈' => out.push_str("$\\approx$"),
            '×' => out.push_str("$\\times$"),
            '÷' => out.push_str("$\\div$"),
            '·' => out.push_str("$\\cdot$"),
            '−' => out.push_str("$-$"),
            '—' => out.push_str("---"),
            '–' => out.push_str("--"),
            'Δ' => out.push_str("$\\Delta$"),
            '↓' => out.push_str("$\\downarrow$"),
            '↑' => out.push_str("$\\uparrow$"),
            '≥' => out.push_str("$\\geq$"),
            '≤' => out.push_str("$\\leq$"),
            'σ' => out.push_str("$\\sigma$"),
            'λ' => out.push_str("$\\lambda$"),
            'γ' => out.push_str("$\\gamma$"),
            '²' => out.push_str("$^2$"),
            _ => out.push(ch),
        }
    }
    out
}

/// A number cell: signs as math minus/plus, the rest as text.
fn latex_number(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        match ch {
            '-' => out.push_str("$-$"),
            '+' => out.push_str("$+$"),
            _ => out.push_str(&latex_text(&ch.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUTS: &str = "Rendered by report::compare::Comparison. Inputs: paper/au-table3.toml (AU Table 3, as published) and made-up reproduced values (tests::inputs), not results.";

    /// Inputs: the published values are the committed `paper/au-table3.toml` (AU Table 3,
    /// guidance FID); the reproduced values below are made-up inputs, not results, chosen so that
    /// one cell lies within the tolerance, one outside it, one is missing from the run, and one
    /// is a number the paper does not print.
    fn inputs() -> (PaperFile, Vec<Reproduced>) {
        let paper = super::super::paper::parse(
            include_str!("../../paper/au-table3.toml"),
            "paper/au-table3.toml",
        )
        .unwrap();
        let reproduced = vec![
            Reproduced::new("ADM, ImageNet 64", "normal", 24.5).with_std(0.21),
            Reproduced::new("ADM, ImageNet 64", "uncertainty guided", 23.0).with_std(0.3),
            Reproduced::new("ADM, ImageNet 128", "normal", 52.0),
            Reproduced::new("ADM, ImageNet 64", "NFE per sample", 70.0),
        ];
        (paper, reproduced)
    }

    #[test]
    fn cells_join_paper_and_run_by_row_and_column() {
        let (paper, reproduced) = inputs();
        let cmp = Comparison::new("au-table3", Some(&paper), &reproduced, "paper");
        let cells = cmp.cells();
        // Every published cell plus the one the paper does not print.
        assert_eq!(cells.len(), paper.values.len() + 1);
        let find = |r: &str, c: &str| *cells.iter().find(|x| x.row == r && x.column == c).unwrap();
        let normal = find("ADM, ImageNet 64", "normal");
        let published = paper.get("ADM, ImageNet 64", "normal").unwrap().value;
        approx::assert_abs_diff_eq!(normal.delta().unwrap(), 24.5 - published, epsilon = 1e-12);
        assert_eq!(normal.within(), Some(true));
        assert_eq!(find("ADM, ImageNet 128", "normal").within(), Some(false));
        let missing = find("U-ViT, ImageNet 512", "normal");
        assert!(missing.reproduced.is_none() && missing.within().is_none());
        let own = find("ADM, ImageNet 64", "NFE per sample");
        assert!(own.paper.is_none() && own.delta().is_none());
        // The run's own cell sits in its row, after the paper's columns.
        let row0: Vec<&str> = cells
            .iter()
            .take_while(|c| c.row == "ADM, ImageNet 64")
            .map(|c| c.column)
            .collect();
        assert_eq!(row0, ["normal", "uncertainty guided", "NFE per sample"]);
    }

    #[test]
    fn renders_paper_scale_markdown_and_latex() {
        let (paper, reproduced) = inputs();
        let cmp = Comparison::new("au-table3", Some(&paper), &reproduced, "paper");
        insta::with_settings!({ description => INPUTS }, {
            insta::assert_snapshot!("compare_paper_scale_md", cmp.to_markdown());
            insta::assert_snapshot!("compare_paper_scale_tex", cmp.to_latex());
        });
    }

    #[test]
    fn mini_scale_compares_direction_not_values() {
        let (paper, reproduced) = inputs();
        let cmp = Comparison::new("au-table3", Some(&paper), &reproduced, "mini");
        let md = cmp.to_markdown();
        assert!(md.contains("direction and ordering, not values"), "{md}");
        assert!(!md.contains("within"), "{md}");
        insta::with_settings!({ description => INPUTS }, {
            insta::assert_snapshot!("compare_mini_scale_md", md);
        });
        let tex = cmp.to_latex();
        assert!(tex.contains("direction and ordering, not values"), "{tex}");
    }

    #[test]
    fn no_paper_leaves_the_paper_column_empty() {
        let reproduced = [Reproduced::new("generated", "FID", 65.68)];
        let md = Comparison::new("mini-model", None, &reproduced, "mini").to_markdown();
        assert!(md.contains("No paper prints this artifact"), "{md}");
        assert!(md.contains("| generated | FID    | —     | 65.7"), "{md}");
    }

    #[test]
    fn published_values_keep_their_row_precision() {
        // paper/au-table1.toml stores AU Table 1's "8.50" as 8.5; the row prints two decimals.
        let paper = super::super::paper::parse(
            include_str!("../../paper/au-table1.toml"),
            "paper/au-table1.toml",
        )
        .unwrap();
        let md = Comparison::new("au-table1", Some(&paper), &[], "paper").to_markdown();
        assert!(md.contains("| 8.50 "), "{md}");
        assert!(md.contains("| 3.289 "), "{md}");
    }

    #[test]
    fn latex_escapes_specials() {
        assert_eq!(latex_text("50% & a_b ± c"), "50\\% \\& a\\_b $\\pm$ c");
        assert_eq!(latex_number("-0.25 ± 5%"), "$-$0.25 $\\pm$ 5\\%");
    }
}
