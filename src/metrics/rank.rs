//! Rank statistics for sample-level scores: average ranks (`scipy.stats.rankdata`), Spearman's ρ
//! (`scipy.stats.spearmanr`), GU's rank combination of two scores (Jazbec et al. 2025, App. C.5,
//! Table 1) and NumPy's default percentile, which realism pruning and the sparsification curves
//! use as their thresholds.
//!
//! **Rank combination (GU App. C.5).** "When combining two scores, we first rank the 12K images
//! based on each score individually, then compute the combined ranking by summing the two rankings
//! and re-ranking accordingly." Each score is ranked in its own *keep-first* direction, so rank 1 is
//! the image a filter keeps first; GU (Sec. 4.2 and App. C.5) keeps the **lowest** generative
//! uncertainty, the **highest** realism and the **lowest** rarity. The combined rank is the rank
//! of r_a + r_b, and a filter keeps the images with the smallest combined rank. GU's code does not
//! contain this step (docs/released-code.md §2.6), so the tie rule is ours: **average ranks** at
//! both stages (scipy's default), which makes the result independent of sample order. Ties matter
//! for rarity, whose undefined values (+∞, outside every real k-NN ball, as GU sets them) all
//! share the worst rank. [`best_indices`] breaks remaining ties of the combined rank by sample
//! index.
//!
//! Every function here depends on the scores only through their order, so a strictly increasing
//! transform of either score leaves its output unchanged (property-tested).

use crate::error::{Error, Result};

/// Which end of a score a filter keeps first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Small values are good (generative uncertainty, rarity).
    Lowest,
    /// Large values are good (realism).
    Highest,
}

/// A per-sample score with its name (used in error messages) and direction.
#[derive(Debug, Clone, Copy)]
pub struct Score<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
    pub keep: Keep,
}

impl<'a> Score<'a> {
    /// A score whose smallest values are kept first.
    pub fn lowest(name: &'a str, values: &'a [f64]) -> Self {
        Self {
            name,
            values,
            keep: Keep::Lowest,
        }
    }
    /// A score whose largest values are kept first.
    pub fn highest(name: &'a str, values: &'a [f64]) -> Self {
        Self {
            name,
            values,
            keep: Keep::Highest,
        }
    }
}

fn reject_nan(what: &str, x: &[f64]) -> Result<()> {
    if let Some(i) = x.iter().position(|v| v.is_nan()) {
        return Err(Error::invalid(
            what,
            format!("value {i} is NaN; expected numbers (±∞ is allowed and ranks at the ends)"),
        ));
    }
    Ok(())
}

/// 1-based average ranks, as `scipy.stats.rankdata(x)` (method "average"): tied values share the
/// mean of the ranks they span. ±∞ are ordinary values here (they rank first or last); NaN is an
/// error naming `what`. O(n log n).
pub fn average_ranks(what: &str, x: &[f64]) -> Result<Vec<f64>> {
    reject_nan(what, x)?;
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        // `==` (not total_cmp) so that −0.0 and +0.0 tie, as in scipy.
        while end < order.len() && x[order[end]] == x[order[start]] {
            end += 1;
        }
        // Ranks start+1 ..= end share their mean.
        let r = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = r;
        }
        start = end;
    }
    Ok(ranks)
}

/// Ranks in the keep-first direction: rank 1 (or the average rank of a tie at the top) is the
/// sample a filter keeps first.
pub fn keep_ranks(score: &Score) -> Result<Vec<f64>> {
    match score.keep {
        Keep::Lowest => average_ranks(score.name, score.values),
        Keep::Highest => {
            reject_nan(score.name, score.values)?;
            let neg: Vec<f64> = score.values.iter().map(|v| -v).collect();
            average_ranks(score.name, &neg)
        }
    }
}

/// GU App. C.5's combination of two scores: average ranks of (keep-rank of `a` + keep-rank of
/// `b`). Smaller is better; keep the samples with the smallest combined rank ([`best_indices`]).
pub fn combined_ranks(a: &Score, b: &Score) -> Result<Vec<f64>> {
    if a.values.len() != b.values.len() {
        return Err(Error::invalid(
            format!("{} and {}", a.name, b.name),
            format!(
                "lengths differ ({} vs {}); expected one score per sample for both",
                a.values.len(),
                b.values.len()
            ),
        ));
    }
    let ra = keep_ranks(a)?;
    let rb = keep_ranks(b)?;
    let sum: Vec<f64> = ra.iter().zip(&rb).map(|(x, y)| x + y).collect();
    average_ranks("combined rank", &sum)
}

/// Indices of the `n_keep` samples with the smallest `ranks` (ties by index), in that order.
pub fn best_indices(ranks: &[f64], n_keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ranks.len()).collect();
    order.sort_by(|&a, &b| ranks[a].total_cmp(&ranks[b]).then(a.cmp(&b)));
    order.truncate(n_keep);
    order
}

/// Spearman's rank correlation, as `scipy.stats.spearmanr(x, y).statistic`: the Pearson
/// correlation of the average ranks, computed like `numpy.corrcoef` (covariance over the product
/// of the two standard deviations, clipped to [−1, 1]). Inputs are `(name, values)`; ±∞ are
/// allowed (rarity's undefined scores). Errors: NaN, different lengths, fewer than two samples, or
/// a constant input (scipy returns NaN there: the correlation is undefined).
pub fn spearman(x: (&str, &[f64]), y: (&str, &[f64])) -> Result<f64> {
    let ((nx, x), (ny, y)) = (x, y);
    if x.len() != y.len() {
        return Err(Error::invalid(
            format!("{nx} and {ny}"),
            format!(
                "lengths differ ({} vs {}); Spearman's ρ needs paired samples",
                x.len(),
                y.len()
            ),
        ));
    }
    if x.len() < 2 {
        return Err(Error::invalid(
            nx,
            format!("{} samples; Spearman's ρ needs at least 2", x.len()),
        ));
    }
    for (name, v) in [(nx, x), (ny, y)] {
        reject_nan(name, v)?;
        if v.iter().all(|a| *a == v[0]) {
            return Err(Error::invalid(
                name,
                "all values are equal; Spearman's ρ is undefined for a constant input",
            ));
        }
    }
    let rx = average_ranks(nx, x)?;
    let ry = average_ranks(ny, y)?;
    Ok(pearson(&rx, &ry))
}

/// Pearson correlation of two finite, non-constant vectors of equal length (≥ 2).
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// `numpy.percentile(x, p)` with NumPy's default "linear" method (Hyndman & Fan type 7; NumPy
/// ≥ 1.22 arithmetic, checked against 1.26.4) on an **ascending-sorted**, finite, non-empty slice:
/// virtual index h = (n − 1)·(p/100), then NumPy's two-sided lerp between the neighbours
/// (a + (b − a)·γ for γ < ½, b − (b − a)·(1 − γ) otherwise). Reproducing the arithmetic, not
/// just the definition, keeps thresholds bit-identical to NumPy, so "value ≥ threshold" selects the
/// same elements as the reference code.
///
/// # Panics
/// On an empty slice (callers validate their inputs first).
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    assert!(n > 0, "percentile of an empty slice");
    let q = p / 100.0;
    let h = (n - 1) as f64 * q;
    if h >= (n - 1) as f64 {
        return sorted[n - 1];
    }
    if h < 0.0 {
        return sorted[0];
    }
    let lo = h.floor();
    let gamma = h - lo;
    let i = lo as usize;
    let (a, b) = (sorted[i], sorted[i + 1]);
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_ranks_match_scipy() {
        // scipy.stats.rankdata([3, 1, 4, 1, 5, inf, -inf]) = [4, 2.5, 5, 2.5, 6, 7, 1] (scipy 1.17.1)
        let r = average_ranks(
            "x",
            &[3.0, 1.0, 4.0, 1.0, 5.0, f64::INFINITY, f64::NEG_INFINITY],
        )
        .unwrap();
        assert_eq!(r, vec![4.0, 2.5, 5.0, 2.5, 6.0, 7.0, 1.0]);
        let e = average_ranks("realism", &[1.0, f64::NAN]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "realism: value 1 is NaN; expected numbers (±∞ is allowed and ranks at the ends)"
        );
    }

    #[test]
    fn percentile_matches_numpy() {
        // numpy 1.26.4: np.percentile([1, 2, 4, 8, 16], [0, 2, 30, 50, 62.5, 98, 100])
        //   = [1.0, 1.08, 2.4, 4.0, 6.0, 15.36, 16.0]
        let s = [1.0, 2.0, 4.0, 8.0, 16.0];
        let want = [1.0, 1.08, 2.4, 4.0, 6.0, 15.36, 16.0];
        for (p, w) in [0.0, 2.0, 30.0, 50.0, 62.5, 98.0, 100.0].iter().zip(want) {
            approx::assert_relative_eq!(percentile_sorted(&s, *p), w, max_relative = 1e-15);
        }
        assert_eq!(percentile_sorted(&[7.0], 50.0), 7.0);
    }

    #[test]
    fn spearman_small_case_and_errors() {
        // scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]).statistic = 0.8207826816681233
        let r = spearman(
            ("x", &[1.0, 2.0, 3.0, 4.0, 5.0]),
            ("y", &[5.0, 6.0, 7.0, 8.0, 7.0]),
        )
        .unwrap();
        approx::assert_relative_eq!(r, 0.8207826816681233, max_relative = 1e-14);
        let e = spearman(("x", &[1.0, 2.0]), ("y", &[3.0])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x and y: lengths differ (2 vs 1); Spearman's ρ needs paired samples"
        );
        let e = spearman(("x", &[1.0, 2.0]), ("rarity", &[3.0, 3.0])).unwrap_err();
        assert!(
            e.to_string().starts_with("rarity: all values are equal"),
            "{e}"
        );
    }

    #[test]
    fn combination_follows_gu_directions() {
        // uncertainty (keep lowest) and realism (keep highest). Keep-ranks: u → [1, 2, 3],
        // realism [0.5, 2, 1] → [3, 1, 2]; sums [4, 3, 5] → combined [2, 1, 3].
        let u = [0.1, 0.2, 0.3];
        let real = [0.5, 2.0, 1.0];
        let c = combined_ranks(&Score::lowest("u", &u), &Score::highest("realism", &real)).unwrap();
        assert_eq!(c, vec![2.0, 1.0, 3.0]);
        assert_eq!(best_indices(&c, 2), vec![1, 0]);
        let e = combined_ranks(&Score::lowest("u", &u), &Score::highest("realism", &[1.0]))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("u and realism: lengths differ"),
            "{e}"
        );
    }
}
