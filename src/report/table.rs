//! Markdown tables.

/// A Markdown table with a header row.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: vec![],
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// Render with columns padded to equal width (readable as plain text too).
    pub fn to_markdown(&self) -> String {
        let n = self.headers.len();
        let width = |c: usize| {
            std::iter::once(&self.headers[c])
                .chain(self.rows.iter().filter_map(|r| r.get(c)))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        };
        let widths: Vec<usize> = (0..n).map(width).collect();
        let line = |cells: &[String]| {
            let body: Vec<String> = (0..n)
                .map(|c| {
                    format!(
                        "{:<w$}",
                        cells.get(c).map(String::as_str).unwrap_or(""),
                        w = widths[c]
                    )
                })
                .collect();
            format!("| {} |\n", body.join(" | "))
        };
        let mut out = line(&self.headers);
        out.push_str(&format!(
            "|{}|\n",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("|")
        ));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// "mean ± std" with `decimals` digits.
pub fn pm(mean: f64, std: f64, decimals: usize) -> String {
    format!("{mean:.decimals$} ± {std:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_markdown() {
        let mut t = Table::new(["set", "share"]);
        t.row(["all", "1.0"]).row(["kept (GU)", "0.25"]);
        insta::assert_snapshot!(t.to_markdown(), @r"
        | set       | share |
        |-----------|-------|
        | all       | 1.0   |
        | kept (GU) | 0.25  |
        ");
        assert_eq!(pm(1.23456, 0.1, 2), "1.23 ± 0.10");
    }
}
