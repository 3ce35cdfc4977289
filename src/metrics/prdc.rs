//! Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) and density and coverage
//! (Naeem et al., ICML 2020), computed as `prdc` 0.2 (`clovaai/generative-evaluation-prdc`)
//! does and checked against it (tests/metrics_fid_prdc.rs).
//!
//! With real features X (N rows), generated features Y (M rows), k-NN radii r(xᵢ), r(yⱼ) (the
//! distance to the k-th nearest *other* point of the same set — prdc's `(k+1)`-th smallest entry
//! of the self-distance row, whose smallest is the self-distance 0):
//!
//!   precision = (1/M) Σⱼ 1[∃ i: ‖xᵢ − yⱼ‖ < r(xᵢ)]
//!   recall    = (1/N) Σᵢ 1[∃ j: ‖xᵢ − yⱼ‖ < r(yⱼ)]
//!   density   = (1/(kM)) Σⱼ Σᵢ 1[‖xᵢ − yⱼ‖ < r(xᵢ)]
//!   coverage  = (1/N) Σᵢ 1[minⱼ ‖xᵢ − yⱼ‖ < r(xᵢ)]
//!
//! The comparisons are strict, as in prdc (open balls); in the [`PrdcDistance::Squared`] mode they
//! are `≤` (closed balls), as in Kynkäänniemi et al.'s release (see below). **Identical sets** (prdc's documented edge case,
//! `compute_prdc(X, X)`): every point lies at distance 0 inside its own ball, so precision =
//! recall = coverage = 1, and each ball holds exactly k points strictly inside it (itself and the
//! k − 1 nearer neighbours; the k-th sits on the boundary), so density = 1 exactly — provided all
//! radii are positive. A point with k or more exact duplicates has radius 0 and its ball is
//! empty under the strict '<', so identical sets with duplicated rows score below 1. diffuq
//! computes duplicated rows at distance exactly 0; prdc's sklearn distances (‖x‖² + ‖y‖² − 2x·y)
//! put some exact duplicates at ≈ 1e-7 instead, which changes prdc's answer in that case
//! (golden fixture: precision 0.643 exact vs 0.679 from prdc). The test shows both.
//!
//! **The two releases** ([`PrdcDistance`]). prdc 0.2 compares Euclidean distances with a strict
//! `‖xᵢ − yⱼ‖ < r(xᵢ)`. Kynkäänniemi et al.'s release (`precision_recall.py`,
//! `ManifoldEstimator.evaluate`, and GU's torch port of it) compares **squared** distances with
//! `‖xᵢ − yⱼ‖² ≤ r(xᵢ)²` — a closed ball, as the paper's f(φ, Φ) defines it. Squaring is monotone,
//! so the two differ exactly where a point lies on a radius: on data with ties (integer or
//! quantised features, duplicated images) `Squared` counts it inside and `Euclidean` outside
//! (tests/realism_rarity_reference.rs checks both against their releases on such data).
//! Kynkäänniemi's release computes only precision and recall; under `Squared`, density and
//! coverage use the same closed ball so that one mode has one notion of "inside" (with it, an
//! identical set has density (k + 1)/k: the k-th neighbour on the rim counts).
//!
//! **Cost.** Three blocked passes of [`fold_distances`](super::realism) (X–X and Y–Y for the radii,
//! one X–Y pass feeding all four metrics): O((N² + M² + NM)·D) time, O(N + M) memory plus one
//! 8 MiB block, so 50k × 50k fits memory.

use crate::error::{Error, Result};
use crate::metrics::realism::{check_k, fold_distances, knn_sq_radii, Rows};

/// Which release's ball test (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrdcDistance {
    /// ‖·‖₂ < r, as prdc 0.2 (default).
    #[default]
    Euclidean,
    /// ‖·‖₂² ≤ r², as Kynkäänniemi et al.'s release (and GU's evaluation).
    Squared,
}

/// Settings: k (prdc's `nearest_k`; 3 in Kynkäänniemi et al.'s FFHQ experiments and GU, 5 in
/// Naeem et al.) and the distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrdcOptions {
    pub k: usize,
    pub distance: PrdcDistance,
}

impl Default for PrdcOptions {
    fn default() -> Self {
        Self {
            k: 3,
            distance: PrdcDistance::Euclidean,
        }
    }
}

/// The four scores, each in [0, 1] except density (≥ 0, 1 in expectation when the sets share a
/// law).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prdc {
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

impl Prdc {
    /// The four scores with their names, in prdc's order (as `diffuq prdc` prints them).
    pub fn fields(&self) -> [(&'static str, f64); 4] {
        [
            ("precision", self.precision),
            ("recall", self.recall),
            ("density", self.density),
            ("coverage", self.coverage),
        ]
    }
}

fn check(real: (&str, &Rows), fake: (&str, &Rows), k: usize) -> Result<()> {
    real.1.validate(real.0)?;
    fake.1.validate(fake.0)?;
    if real.1.dim() != fake.1.dim() {
        return Err(Error::invalid(
            fake.0,
            format!(
                "dimension {}; expected {} (the dimension of {})",
                fake.1.dim(),
                real.1.dim(),
                real.0
            ),
        ));
    }
    for (what, rows) in [real, fake] {
        check_k(what, rows, k, "prdc k")?;
    }
    Ok(())
}

/// Precision, recall, density and coverage of `fake` against `real` (module doc).
pub fn prdc(real: Rows, fake: Rows, opts: &PrdcOptions) -> Result<Prdc> {
    prdc_named(("real features", real), ("generated features", fake), opts)
}

/// [`prdc`] with the names errors give the two arrays (e.g. their files).
pub fn prdc_named(real: (&str, Rows), fake: (&str, Rows), opts: &PrdcOptions) -> Result<Prdc> {
    check((real.0, &real.1), (fake.0, &fake.1), opts.k)?;
    let real_r2 = knn_sq_radii(real.1, opts.k)?;
    prdc_with_real_radii(real.1, &real_r2, fake.1, opts)
}

/// [`prdc`] with the real set's squared k-NN radii given (`knn_sq_radii(real, opts.k)`): when many
/// generated sets are measured against one reference (a filtering curve), the reference's
/// N² distances are computed once.
pub fn prdc_with_real_radii(
    real: Rows,
    real_r2: &[f64],
    fake: Rows,
    opts: &PrdcOptions,
) -> Result<Prdc> {
    let k = opts.k;
    check(("real features", &real), ("generated features", &fake), k)?;
    if real_r2.len() != real.len() {
        return Err(Error::invalid(
            "prdc real radii",
            format!("{} radii for {} real rows", real_r2.len(), real.len()),
        ));
    }
    let fake_r2 = knn_sq_radii(fake, k)?;
    let squared = opts.distance == PrdcDistance::Squared;
    // Compare in the chosen metric: squared distances as computed, or their square roots; the
    // ball is closed (≤) for Kynkäänniemi's squared release, open (<) for prdc.
    let metric = |d2: f64| if squared { d2 } else { d2.sqrt() };
    let inside = |d: f64, r: f64| if squared { d <= r } else { d < r };
    let real_r: Vec<f64> = real_r2.iter().map(|&r| metric(r)).collect();
    let fake_r: Vec<f64> = fake_r2.iter().map(|&r| metric(r)).collect();

    let n = real.len();
    let mut recalled = vec![false; n];
    let mut nearest = vec![f64::INFINITY; n];
    // One pass with the generated rows as queries: per-query state = number of real balls that
    // contain the query; per-real state (recall, coverage) lives in the captured vectors.
    let counts = fold_distances(
        fake,
        real,
        || 0usize,
        |count, j, i, d2| {
            let d = metric(d2);
            if inside(d, real_r[i]) {
                *count += 1;
            }
            if inside(d, fake_r[j]) {
                recalled[i] = true;
            }
            if d < nearest[i] {
                nearest[i] = d;
            }
        },
        |count| count as f64,
    )?;
    let m = fake.len() as f64;
    let precision = counts.iter().filter(|&&c| c > 0.0).count() as f64 / m;
    let density = counts.iter().sum::<f64>() / (k as f64 * m);
    let recall = recalled.iter().filter(|&&r| r).count() as f64 / n as f64;
    let coverage = nearest
        .iter()
        .zip(&real_r)
        .filter(|(&d, &r)| inside(d, r))
        .count() as f64
        / n as f64;
    Ok(Prdc {
        precision,
        recall,
        density,
        coverage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-checked 1-D case, k = 1. Real {0, 1, 3}: radii (distance to the nearest other real)
    /// 1, 1, 2. Fake {0.5, 10, 2.5, 2.6}: radii 2, 7.4, 0.1, 0.1.
    /// precision: 0.5 ∈ ball(0) → yes; 10 → no; 2.5 ∈ ball(3, r 2) → yes; 2.6 → yes ⇒ 3/4.
    /// density: 0.5 in balls of 0 and 1 (|0.5−1| = 0.5 < 1) and 3 (2.5 < 2? no) → 2; 2.5: ball
    /// of 3 only (|2.5 − 1| = 1.5 ≮ 1) → 1; 2.6 → 1; total 4 / (1·4) = 1.
    /// recall: real 0: |0 − 0.5| = 0.5 < 2 → yes; 1: 0.5 < 2 → yes; 3: |3 − 2.5| = 0.5 ≮ 0.1,
    /// |3 − 2.6| = 0.4 ≮ 0.1, |3 − 0.5| = 2.5 ≮ 2, |3 − 10| = 7 < 7.4 → yes ⇒ 1.
    /// coverage: nearest fake of 0 is 0.5 (< 1 ✓), of 1 is 0.5 (< 1 ✓), of 3 is 2.6 (0.4 < 2 ✓) ⇒ 1.
    #[test]
    fn hand_checked_1d() {
        let real = [0.0, 1.0, 3.0];
        let fake = [0.5, 10.0, 2.5, 2.6];
        let opts = PrdcOptions {
            k: 1,
            distance: PrdcDistance::Euclidean,
        };
        let p = prdc(Rows::new(&real, 1), Rows::new(&fake, 1), &opts).unwrap();
        let radii = knn_sq_radii(Rows::new(&real, 1), 1).unwrap();
        let given =
            prdc_with_real_radii(Rows::new(&real, 1), &radii, Rows::new(&fake, 1), &opts).unwrap();
        assert_eq!(p, given);
        assert!(
            prdc_with_real_radii(Rows::new(&real, 1), &radii[..2], Rows::new(&fake, 1), &opts)
                .is_err()
        );
        assert_eq!(p.precision, 0.75);
        assert_eq!(p.density, 1.0);
        assert_eq!(p.recall, 1.0);
        assert_eq!(p.coverage, 1.0);
        let sq = prdc(
            Rows::new(&real, 1),
            Rows::new(&fake, 1),
            &PrdcOptions {
                distance: PrdcDistance::Squared,
                ..opts
            },
        )
        .unwrap();
        assert_eq!(sq, p);
    }

    /// Ties, k = 1. Real {0, 1, 3}: radii 1, 1, 2. Fake {2, 5}: radii 3, 3. The fake point 2 lies
    /// exactly on the balls of 1 (|2 − 1| = 1) and 3 (|2 − 3| = 1 < 2, inside anyway).
    /// prdc (open balls): precision: 2 ∈ ball(3) → yes; 5: |5 − 3| = 2 = r(3) → on the rim, no
    /// ⇒ 1/2; density: 2 is strictly inside ball(3) only → 1 / (1·2) = 1/2; recall: reals within 3
    /// of fake 2 (0: 2 < 3, 1, 3 yes) ⇒ 1; coverage: nearest fake of 0 is 2 (2 ≮ 1), of 1 is 2
    /// (1 ≮ 1, on the rim), of 3 is 2 (1 < 2) ⇒ 1/3.
    /// Kynkäänniemi (closed balls, squared): precision 2/2 (5 is on ball(3)'s rim: 4 ≤ 4);
    /// density: 2 in balls of 1 and 3, 5 in ball of 3 → 3/2; recall 1; coverage: 1 (1 ≤ 1) and
    /// 3 ⇒ 2/3.
    #[test]
    fn points_on_a_radius_follow_each_release() {
        let real = [0.0, 1.0, 3.0];
        let fake = [2.0, 5.0];
        let run = |distance| {
            prdc(
                Rows::new(&real, 1),
                Rows::new(&fake, 1),
                &PrdcOptions { k: 1, distance },
            )
            .unwrap()
        };
        let open = run(PrdcDistance::Euclidean);
        assert_eq!(
            (open.precision, open.recall, open.density, open.coverage),
            (0.5, 1.0, 0.5, 1.0 / 3.0)
        );
        let closed = run(PrdcDistance::Squared);
        assert_eq!(
            (
                closed.precision,
                closed.recall,
                closed.density,
                closed.coverage
            ),
            (1.0, 1.0, 1.5, 2.0 / 3.0)
        );
    }

    #[test]
    fn needs_k_plus_one_rows() {
        let e = prdc(
            Rows::new(&[0.0, 1.0, 2.0], 1),
            Rows::new(&[0.0, 1.0, 2.0, 3.0], 1),
            &PrdcOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("real features: 3 rows"), "{e}");
    }
}
