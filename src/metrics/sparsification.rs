//! Sparsification curves, AUSE and AURG (Ilg et al. 2018 for AUSE; Poggi et al., CVPR 2020, for
//! AURG), as AU (De Vita & Belagiannis, WACV 2025, Sec. 4 and Table 2) uses them for pixel-wise
//! uncertainty on the "noise to T/2, then reconstruct" task.
//!
//! Given per-value uncertainties u and errors e (one per pixel and channel; only e² is used):
//!
//! - **Method curve.** For fractions t/I, t = 0 … I − 1 (I = 50 intervals: 0, 2, …, 98 %), remove
//!   the values with the highest uncertainty and take the RMSE √mean(e²) over the rest; the curve
//!   ends with 0 at fraction 1 (I + 1 = 51 points on x = 0, 0.02, …, 1).
//! - **Oracle curve.** The same, removing the values with the largest true e² first.
//! - **AUSE** = area(method) − area(oracle), trapezoid rule on x (lower is better; ≥ 0 when the
//!   errors are distinct, see below).
//! - **AURG** = RMSE_all − area(method): the random-removal curve is taken as the constant RMSE_all
//!   (what a random subset's RMSE concentrates at), including at fraction 1, as in the released
//!   code (higher is better).
//!
//! **Threshold convention** (matched exactly): as `mattpoggi/mono-uncertainty`'s `compute_aucs`,
//! which AU's `diffusion_uncertainty/metrics/ause.py` copies (docs/released-code.md §1.6), the
//! values kept at percentage p = 100·t/I are those with −u ≥ `numpy.percentile(−u, p)` (linear
//! interpolation), **ties included**: a tie group at the threshold is kept whole, so with tied
//! uncertainties more than the nominal share can remain (a constant u keeps everything: a flat
//! curve at RMSE_all).
//! The oracle uses the same rule on −e². [`rank::percentile_sorted`](super::rank::percentile_sorted)
//! reproduces NumPy's arithmetic, so the kept sets are NumPy's. Consequence: if the errors are
//! pairwise distinct, the oracle keeps at most as many values as the method at every fraction and
//! those are the smallest errors, so the oracle curve is nowhere above the method's and
//! AURG(oracle) ≥ AURG(method) (property-tested); with tied errors the oracle can keep a larger tie
//! group and the inequality can fail by a little — a property of the released convention.
//!
//! **Pooled vs per image.** [`sparsification`] pools every value it is given (the released code
//! pools all pixels of all images); [`sparsification_per_image`] computes the curves of each image
//! separately and averages AUSE and AURG over images.
//!
//! **Released-code bugs** (docs/released-code.md §1.6), not reproduced by default:
//! - (a) scale mismatch — gt in [0, 1] against the uint8 reconstruction in [0, 255]. This is a
//!   property of the error the caller passes (e = x̂·255 − x in the release), not of the metric;
//!   not built in.
//! - (b) zero rows — arrays allocated for the whole dataset but filled for `num_samples` images, so
//!   the unfilled rows enter the pooled curve as values with u = 0 and e = 0 (kept until the very
//!   end, since they have the lowest uncertainty). Cheap and exact: [`Compat::AuZeroRows`] adds
//!   them without allocating.
//! - (c) float16 storage and arithmetic — not implemented: emulating NumPy's float16 percentile
//!   and float32-accumulated means would reproduce rounding noise, not a meaningful quantity.
//!
//! Cost: O(n log n) for n values (two sorts), O(n) memory; every curve point is read from prefix
//! sums (compensated, so long curves keep ~1e-15 relative accuracy).

use crate::error::{Error, Result};
use crate::metrics::rank::percentile_sorted;

/// Which computation; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// The metric as defined, on exactly the values given, in f64.
    #[default]
    Exact,
    /// AU release bug (b): this many extra values with u = 0 and e = 0 (unfilled rows × values
    /// per image) join the pooled curve. Pooled only.
    AuZeroRows(usize),
}

/// Settings of the sparsification curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparsificationOptions {
    /// Number of removal steps I: fractions 0, 1/I, …, (I−1)/I, then 1 (released code: 50).
    pub intervals: usize,
    pub compat: Compat,
}

impl Default for SparsificationOptions {
    fn default() -> Self {
        Self {
            intervals: 50,
            compat: Compat::Exact,
        }
    }
}

/// Curves and areas of one sparsification analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct Sparsification {
    /// x = 0, 1/I, …, 1 (I + 1 points).
    pub fractions: Vec<f64>,
    /// RMSE of the values kept after removing the most uncertain fraction (last point 0).
    pub method: Vec<f64>,
    /// The same, removing the largest true errors first.
    pub oracle: Vec<f64>,
    /// RMSE over all values: the (constant) random-removal curve.
    pub rmse_all: f64,
    /// Trapezoid areas under the method and oracle curves.
    pub area_method: f64,
    pub area_oracle: f64,
    /// area_method − area_oracle.
    pub ause: f64,
    /// rmse_all − area_method.
    pub aurg: f64,
}

/// Per-image analyses and their means.
#[derive(Debug, Clone, PartialEq)]
pub struct PerImageSparsification {
    pub images: Vec<Sparsification>,
    pub mean_ause: f64,
    pub mean_aurg: f64,
}

fn check_inputs(uncertainty: &[f64], error: &[f64], opts: &SparsificationOptions) -> Result<()> {
    if opts.intervals == 0 {
        return Err(Error::invalid(
            "sparsification intervals",
            "is 0; expected ≥ 1 (the released code uses 50)",
        ));
    }
    if uncertainty.len() != error.len() {
        return Err(Error::invalid(
            "error",
            format!(
                "{} values, but the uncertainty has {}; expected one error per uncertainty value",
                error.len(),
                uncertainty.len()
            ),
        ));
    }
    if uncertainty.is_empty() {
        return Err(Error::invalid(
            "uncertainty",
            "is empty; a sparsification curve needs at least one value",
        ));
    }
    for (what, x) in [("uncertainty", uncertainty), ("error", error)] {
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                what,
                format!("value {i} is {}; expected finite values", x[i]),
            ));
        }
    }
    Ok(())
}

/// Pooled sparsification analysis of all values given (the released code's variant).
/// `uncertainty` and `error` are flat, same length, finite; only e² enters.
pub fn sparsification(
    uncertainty: &[f64],
    error: &[f64],
    opts: &SparsificationOptions,
) -> Result<Sparsification> {
    check_inputs(uncertainty, error, opts)?;
    let zeros = match opts.compat {
        Compat::Exact => 0,
        Compat::AuZeroRows(n) => n,
    };
    Ok(analyse(uncertainty, error, zeros, opts.intervals))
}

/// Per-image sparsification: the values are consecutive images of `values_per_image` each (e.g.
/// C·H·W); each image gets its own curves, and AUSE/AURG are averaged over images.
pub fn sparsification_per_image(
    uncertainty: &[f64],
    error: &[f64],
    values_per_image: usize,
    opts: &SparsificationOptions,
) -> Result<PerImageSparsification> {
    check_inputs(uncertainty, error, opts)?;
    if opts.compat != Compat::Exact {
        return Err(Error::invalid(
            "sparsification compat",
            format!(
                "{:?} applies to the pooled curve only; use Compat::Exact per image",
                opts.compat
            ),
        ));
    }
    if values_per_image == 0 || !uncertainty.len().is_multiple_of(values_per_image) {
        return Err(Error::invalid(
            "uncertainty",
            format!(
                "{} values are not a whole number of images of {values_per_image} values",
                uncertainty.len()
            ),
        ));
    }
    let images: Vec<Sparsification> = uncertainty
        .chunks(values_per_image)
        .zip(error.chunks(values_per_image))
        .map(|(u, e)| analyse(u, e, 0, opts.intervals))
        .collect();
    let n = images.len() as f64;
    let mean_ause = images.iter().map(|s| s.ause).sum::<f64>() / n;
    let mean_aurg = images.iter().map(|s| s.aurg).sum::<f64>() / n;
    Ok(PerImageSparsification {
        images,
        mean_ause,
        mean_aurg,
    })
}

/// Curves for validated inputs, with `zeros` extra (u = 0, e = 0) values.
fn analyse(uncertainty: &[f64], error: &[f64], zeros: usize, intervals: usize) -> Sparsification {
    let sq: Vec<f64> = error.iter().map(|e| e * e).collect();
    let n = sq.len() + zeros;
    let total = compensated_sum(sq.iter().copied());
    let rmse_all = (total / n as f64).sqrt();
    let method = curve(uncertainty, &sq, zeros, intervals);
    let oracle = curve(&sq, &sq, zeros, intervals);
    let fractions: Vec<f64> = (0..=intervals)
        .map(|t| 1.0 / intervals as f64 * t as f64)
        .collect();
    let area_method = trapezoid(&method, &fractions);
    let area_oracle = trapezoid(&oracle, &fractions);
    Sparsification {
        fractions,
        method,
        oracle,
        rmse_all,
        area_method,
        area_oracle,
        ause: area_method - area_oracle,
        aurg: rmse_all - area_method,
    }
}

/// RMSE of the values kept at each removal percentage, ranking by `score` (highest removed
/// first), plus the final 0. Keeps −score ≥ numpy.percentile(−score, p), ties included.
fn curve(score: &[f64], sq: &[f64], zeros: usize, intervals: usize) -> Vec<f64> {
    // Keys −score; the `zeros` extra values have key −0 = 0 and e² = 0.
    let mut keys: Vec<f64> = score.iter().map(|s| -s).collect();
    keys.extend(std::iter::repeat_n(0.0, zeros));
    let n = keys.len();
    // Values in the order they are kept: largest key (lowest score) first.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]));
    let sq_at = |i: usize| if i < sq.len() { sq[i] } else { 0.0 };
    // prefix[c] = Σ e² of the first c values kept (Neumaier-compensated running sum).
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    let (mut s, mut comp) = (0.0f64, 0.0f64);
    for &i in &order {
        neumaier_add(&mut s, &mut comp, sq_at(i));
        prefix.push(s + comp);
    }
    let mut ascending = keys;
    ascending.sort_by(f64::total_cmp);
    let mut out = Vec::with_capacity(intervals + 1);
    for t in 0..intervals {
        // The released code's percentages: 100/I·t (0, 2, …, 98 for I = 50).
        let p = 100.0 / intervals as f64 * t as f64;
        let threshold = percentile_sorted(&ascending, p);
        // Values with key ≥ threshold: a suffix of the ascending keys, a prefix of `order`.
        let kept = n - ascending.partition_point(|&k| k < threshold);
        out.push((prefix[kept] / kept as f64).sqrt());
    }
    out.push(0.0);
    out
}

fn neumaier_add(sum: &mut f64, comp: &mut f64, x: f64) {
    let t = *sum + x;
    if sum.abs() >= x.abs() {
        *comp += (*sum - t) + x;
    } else {
        *comp += (x - t) + *sum;
    }
    *sum = t;
}

fn compensated_sum(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0, 0.0);
    for x in xs {
        neumaier_add(&mut s, &mut c, x);
    }
    s + c
}

/// `numpy.trapz(y, x)`: Σ (x_{i+1} − x_i)·(y_i + y_{i+1})/2.
fn trapezoid(y: &[f64], x: &[f64]) -> f64 {
    compensated_sum(
        x.windows(2)
            .zip(y.windows(2))
            .map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_intervals_by_hand() {
        // I = 2: fractions 0, ½, 1; percentages 0 and 50. Errors e² = [1, 4, 9, 16], u ranks them
        // in reverse (u = [4, 3, 2, 1]) — the worst possible ordering.
        // −u = [−4, −3, −2, −1]; np.percentile(−u, 50) = −2.5 → keeps u ∈ {2, 1} → e² {9, 16}.
        // Method: [√7.5, √12.5, 0]; oracle (−e² percentile 50 = −6.5 keeps e² {1, 4}):
        // [√7.5, √2.5, 0]. Areas: ½(√7.5 + √12.5)/2 + ½·√12.5/2, etc.
        let e = [1.0, 2.0, 3.0, 4.0];
        let u = [4.0, 3.0, 2.0, 1.0];
        let opts = SparsificationOptions {
            intervals: 2,
            ..Default::default()
        };
        let s = sparsification(&u, &e, &opts).unwrap();
        let (a, b, c) = (7.5f64.sqrt(), 12.5f64.sqrt(), 2.5f64.sqrt());
        assert_eq!(s.fractions, vec![0.0, 0.5, 1.0]);
        assert_eq!(s.method, vec![a, b, 0.0]);
        assert_eq!(s.oracle, vec![a, c, 0.0]);
        let am = 0.25 * (a + b) + 0.25 * b;
        let ao = 0.25 * (a + c) + 0.25 * c;
        approx::assert_relative_eq!(s.area_method, am, max_relative = 1e-15);
        approx::assert_relative_eq!(s.ause, am - ao, max_relative = 1e-14);
        approx::assert_relative_eq!(s.aurg, a - am, max_relative = 1e-14);
    }

    #[test]
    fn tied_uncertainty_keeps_the_whole_tie_group() {
        // Constant u: every threshold equals the common value, so nothing is ever removed and the
        // method curve is RMSE_all until the final 0: area = RMSE_all·(1 − 1/(2I)), so
        // AURG = RMSE_all/(2I) = RMSE_all/100 for I = 50.
        let e = [1.0, 2.0, 3.0, 4.0, 5.0];
        let s = sparsification(&[0.3; 5], &e, &SparsificationOptions::default()).unwrap();
        assert!(s.method[..50].iter().all(|&r| r == s.rmse_all));
        approx::assert_relative_eq!(s.aurg, s.rmse_all / 100.0, max_relative = 1e-12);
    }

    #[test]
    fn zero_rows_compat_pools_zero_values() {
        // AuZeroRows(n) is the same as appending n values with u = 0, e = 0.
        let u = [0.5, 0.1, 0.9, 0.3];
        let e = [0.2, -0.4, 1.0, 0.1];
        let with = sparsification(
            &u,
            &e,
            &SparsificationOptions {
                compat: Compat::AuZeroRows(3),
                ..Default::default()
            },
        )
        .unwrap();
        let mut u2 = u.to_vec();
        let mut e2 = e.to_vec();
        u2.extend([0.0; 3]);
        e2.extend([0.0; 3]);
        let appended = sparsification(&u2, &e2, &SparsificationOptions::default()).unwrap();
        assert_eq!(with, appended);
        assert_ne!(
            with,
            sparsification(&u, &e, &SparsificationOptions::default()).unwrap()
        );
    }

    #[test]
    fn bad_inputs_name_the_array() {
        let o = SparsificationOptions::default();
        let e = sparsification(&[1.0, 2.0], &[1.0], &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error: 1 values, but the uncertainty has 2; expected one error per uncertainty value"
        );
        let e = sparsification(&[1.0, f64::INFINITY], &[1.0, 2.0], &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "uncertainty: value 1 is inf; expected finite values"
        );
        let e = sparsification_per_image(&[1.0; 6], &[1.0; 6], 4, &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "uncertainty: 6 values are not a whole number of images of 4 values"
        );
        let e = sparsification(&[], &[], &o).unwrap_err();
        assert!(e.to_string().starts_with("uncertainty: is empty"), "{e}");
    }
}
