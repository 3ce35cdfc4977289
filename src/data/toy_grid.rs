//! The 2-D grid of Gaussian modes used by Aithal et al. (2024) to study mode interpolation and by
//! GU (Fig. 2): `side × side` isotropic Gaussians of std `mode_std`, centres `spacing` apart on a
//! square grid centred at the origin, equal weights.
//!
//! A sample is "between modes" when it lies farther than `k · mode_std` from every centre: for a
//! true sample the distance to its own centre is Rayleigh(mode_std), so P(r > k·std) = exp(−k²/2)
//! (k = 4: 3.4e-4), while a mode-interpolating model puts mass on the segments between centres.

use rand::Rng;
use rand_distr::StandardNormal;

use crate::seed::Purpose;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToyGrid {
    pub side: usize,
    pub spacing: f64,
    pub mode_std: f64,
}

impl ToyGrid {
    /// Mode centres, row-major.
    pub fn centres(&self) -> Vec<[f64; 2]> {
        let off = (self.side as f64 - 1.0) / 2.0;
        let mut c = Vec::with_capacity(self.side * self.side);
        for i in 0..self.side {
            for j in 0..self.side {
                c.push([
                    (i as f64 - off) * self.spacing,
                    (j as f64 - off) * self.spacing,
                ]);
            }
        }
        c
    }

    /// `n` samples (n × 2 row-major); sample i uses stream i of `purpose` (mode, then offsets).
    pub fn sample(&self, n: usize, purpose: &Purpose) -> Vec<f32> {
        let centres = self.centres();
        let mut out = Vec::with_capacity(2 * n);
        for i in 0..n as u64 {
            let mut rng = purpose.rng(i);
            let c = centres[rng.random_range(0..centres.len())];
            for cd in c {
                let z: f64 = rng.sample(StandardNormal);
                out.push((cd + self.mode_std * z) as f32);
            }
        }
        out
    }

    /// Distance from `p` to the nearest centre.
    pub fn nearest_distance(&self, p: [f64; 2]) -> f64 {
        // The grid is axis-aligned and regular: clamp each coordinate to the nearest centre index.
        let off = (self.side as f64 - 1.0) / 2.0;
        let near = |v: f64| {
            ((v / self.spacing + off)
                .round()
                .clamp(0.0, self.side as f64 - 1.0)
                - off)
                * self.spacing
        };
        ((p[0] - near(p[0])).powi(2) + (p[1] - near(p[1])).powi(2)).sqrt()
    }

    /// True when `p` is farther than `k · mode_std` from every centre.
    pub fn is_between_modes(&self, p: [f64; 2], k: f64) -> bool {
        self.nearest_distance(p) > k * self.mode_std
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::SeedStreams;
    use proptest::prelude::*;

    const G: ToyGrid = ToyGrid {
        side: 5,
        spacing: 1.0,
        mode_std: 0.05,
    };

    proptest! {
        #[test]
        fn nearest_distance_equals_brute_force(x in -4.0f64..4.0, y in -4.0f64..4.0) {
            let brute = G.centres().iter().map(|c| ((x - c[0]).powi(2) + (y - c[1]).powi(2)).sqrt()).fold(f64::INFINITY, f64::min);
            prop_assert!((G.nearest_distance([x, y]) - brute).abs() < 1e-12);
        }
    }

    #[test]
    fn samples_follow_the_mixture() {
        // Expected: 25 equally likely modes → each holds 4% ± 0.3% of 20k samples; the share beyond
        // 4σ of every centre is exp(−8) ≈ 3.4e-4 (Rayleigh tail).
        let p = SeedStreams::new(0).purpose("data");
        let x = G.sample(20_000, &p);
        let mut counts = [0usize; 25];
        let mut between = 0;
        for r in x.chunks(2) {
            let p = [f64::from(r[0]), f64::from(r[1])];
            let i = G
                .centres()
                .iter()
                .position(|c| (p[0] - c[0]).abs() < 0.5 && (p[1] - c[1]).abs() < 0.5)
                .unwrap();
            counts[i] += 1;
            between += usize::from(G.is_between_modes(p, 4.0));
        }
        assert!(
            counts.iter().all(|&c| (680..=920).contains(&c)),
            "{counts:?}"
        );
        assert!(between <= 25, "{between}");
        assert_eq!(G.centres()[0], [-2.0, -2.0]);
        assert_eq!(G.centres()[24], [2.0, 2.0]);
    }
}
