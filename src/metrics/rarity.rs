//! Rarity score (Han et al., "Rarity Score: A New Metric to Evaluate the Uncommonness of
//! Synthesized Images", ICLR 2023).
//!
//! Every real feature φ_r,i carries a k-NN ball of radius r_i (its distance to the k-th nearest
//! other real feature: the same convention as realism and prdc, see [`super::realism`]). A
//! generated feature φ_g is scored by the smallest ball that contains it:
//!
//!   Rarity(φ_g) = min { r_i : ‖φ_g − φ_r,i‖ < r_i },
//!
//! so a sample in a dense region (small balls) is common and one reachable only through a large
//! ball is rare. Conventions, as the authors' public code (`hichoe95/Rarity-Score`,
//! `MANIFOLD.rarity`) computes them — learnt from that code, not copied: Euclidean distances (not
//! squared), k = 3 by default, containment strict (d < r_i), radius = the (k+1)-th smallest entry of
//! the real–real distance row including the self-distance, and no pruning of real balls.
//!
//! A sample outside every ball has no rarity (the paper excludes it: its fidelity cannot be
//! vouched for). The authors' code stores 0 for it and leaves it out of the ranking it returns; GU
//! (App. D, "Baselines") sets it to **+∞**, which is what this module returns, so that a filter
//! keeping the lowest rarity drops those samples first ([`super::rank`] ranks +∞ last).
//!
//! Cost: O(N²·D) for the radii, O(M·N·D) for the scores, O(N + M) memory (see
//! [`super::realism`]).

use super::realism::{fold_distances, RealManifold, Rows};
use crate::error::Result;

/// Default neighbourhood size (Han et al. 2023, and GU's default settings).
pub const DEFAULT_K: usize = 3;

impl RealManifold<'_> {
    /// Rarity of every generated row; +∞ where no real k-NN ball contains it.
    pub fn rarity(&self, fake: Rows) -> Result<Vec<f64>> {
        self.check_fake(&fake)?;
        let radii = self.radii();
        fold_distances(
            fake,
            self.real(),
            || f64::INFINITY,
            |best, _, r, d2| {
                if d2.sqrt() < radii[r] && radii[r] < *best {
                    *best = radii[r];
                }
            },
            |best| best,
        )
    }
}

/// Rarity score of every generated feature (rows of `fake`) against the real set `real`, with
/// k-NN radius `k`. Errors name the array: non-finite values, a dimension mismatch, fewer than
/// k + 1 real rows.
pub fn rarity(real: Rows, fake: Rows, k: usize) -> Result<Vec<f64>> {
    RealManifold::new(real, k)?.rarity(fake)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarity_by_hand() {
        // Real 1-D points 0, 1, 3, 7 with k = 1: radii [1, 1, 2, 4]. Generated points:
        // 0.5 is inside the balls of 0 and 1 (radius 1 each) → 1; 4.5 inside those of 3 (1.5 < 2)
        // and 7 (2.5 < 4) → 2; 6 inside 7's only (3's: 3 > 2) → 4; 12 inside none → +∞;
        // 2 is on the rim of 1's ball (distance 1 = radius: outside) and inside 3's → 2.
        let real = [0.0, 1.0, 3.0, 7.0];
        let fake = [0.5, 4.5, 6.0, 12.0, 2.0];
        let s = rarity(Rows::new(&real, 1), Rows::new(&fake, 1), 1).unwrap();
        assert_eq!(s, vec![1.0, 2.0, 4.0, f64::INFINITY, 2.0]);
    }

    #[test]
    fn boundary_is_outside() {
        // Real 0, 2 with k = 1: radii [2, 2]; the point 4 is at distance exactly 2 from 2 → out.
        let s = rarity(Rows::new(&[0.0, 2.0], 1), Rows::new(&[4.0], 1), 1).unwrap();
        assert_eq!(s, vec![f64::INFINITY]);
    }

    #[test]
    fn one_manifold_serves_both_scores() {
        let real = [0.0, 1.0, 3.0, 7.0];
        let m = RealManifold::new(Rows::new(&real, 1), 1).unwrap();
        assert_eq!(m.radii(), vec![1.0, 1.0, 2.0, 4.0]);
        let e = m
            .realism(
                Rows::new(&[2.0], 1),
                &crate::metrics::realism::RealismOptions::paper(),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "realism k: 3 differs from the k = 1 the real radii were computed with"
        );
        let e = rarity(Rows::new(&real, 1), Rows::new(&[1.0], 1), 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "real features: 4 rows; k-NN radii with k = 4 need at least k + 1 = 5"
        );
    }
}
