//! Counter-based random streams.
//!
//! Every random number in diffuq comes from a ChaCha20 stream keyed by
//! `(run seed, purpose)` and positioned by `(sample index[, step])`:
//!
//! * key      = SHA-256("diffuq-seed-v1" ‖ run_seed (LE u64) ‖ purpose)
//! * stream   = sample index (ChaCha's 64-bit stream id)
//! * position = (step + 1) · 2³⁶ words, or 0 when there is no step
//!
//! So the noise a sample sees depends only on *its own* coordinates, never on the batch it was
//! computed in, the order of samples, a shard or the device. This is what lets a run be split,
//! resumed, or re-batched and still give bit-identical numbers — and what makes "every ensemble
//! member sees the same randomness" (GU Fig. 2) a property of the key rather than of the code path.
//! There is no global RNG, and `Tensor::randn` is never used (candle's CPU RNG cannot be seeded).

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

/// Words reserved per step inside one (purpose, index) stream: 2³⁶ 32-bit words (256 GiB of
/// randomness), far above any per-sample draw. ChaCha20 positions are 68-bit, leaving 2³² steps.
const STEP_STRIDE_LOG2: u32 = 36;

/// The root of all streams of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedStreams {
    run_seed: u64,
}

impl SeedStreams {
    pub fn new(run_seed: u64) -> Self {
        Self { run_seed }
    }

    pub fn run_seed(&self) -> u64 {
        self.run_seed
    }

    /// The family of streams for one purpose (e.g. `"x_T"`, `"ddpm-noise"`, `"init/member-3"`).
    pub fn purpose(&self, purpose: &str) -> Purpose {
        let mut h = Sha256::new();
        h.update(b"diffuq-seed-v1");
        h.update(self.run_seed.to_le_bytes());
        h.update(purpose.as_bytes());
        Purpose {
            key: h.finalize().into(),
        }
    }
}

/// All streams for one purpose of one run; cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Purpose {
    key: [u8; 32],
}

impl Purpose {
    /// A derived family, independent of this one and of every other name (e.g. one per MC-dropout
    /// pass and layer): the key is hashed again with `name`.
    pub fn sub(&self, name: &str) -> Purpose {
        let mut h = Sha256::new();
        h.update(b"diffuq-seed-v1/sub");
        h.update(self.key);
        h.update(name.as_bytes());
        Purpose {
            key: h.finalize().into(),
        }
    }

    /// The stream of sample `index` (no step).
    pub fn rng(&self, index: u64) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::from_seed(self.key);
        rng.set_stream(index);
        rng
    }

    /// The stream of sample `index` at sampling/training step `step`.
    pub fn rng_at(&self, index: u64, step: u32) -> ChaCha20Rng {
        let mut rng = self.rng(index);
        rng.set_word_pos(word_pos(step));
        rng
    }

    /// `dim` standard normals for each of `indices` (row-major, one row per index). Rows are
    /// drawn in `diffuq_linalg::streams` (opt-level 3, several threads; bits independent of both).
    pub fn normals(&self, indices: &[u64], step: Option<u32>, dim: usize) -> Vec<f32> {
        diffuq_linalg::streams::normal_rows(self.key, indices, step.map(word_pos), dim)
    }

    /// `dim` uniforms in [lo, hi) for each of `indices`.
    pub fn uniforms(
        &self,
        indices: &[u64],
        step: Option<u32>,
        dim: usize,
        lo: f32,
        hi: f32,
    ) -> Vec<f32> {
        diffuq_linalg::streams::uniform_rows(self.key, indices, step.map(word_pos), dim, lo, hi)
    }

    /// Dropout keep-masks: for each of `indices`, `dim` values that are 1.0 where
    /// [`Self::uniforms`] in [0, 1) would be ≥ `p`, else 0.0 (the same draws, thresholded where
    /// they are made).
    pub fn keep_masks(&self, indices: &[u64], step: Option<u32>, dim: usize, p: f64) -> Vec<f32> {
        diffuq_linalg::streams::keep_rows(self.key, indices, step.map(word_pos), dim, p)
    }
}

/// The word position of step `step` inside a (purpose, index) stream.
fn word_pos(step: u32) -> u128 {
    (u128::from(step) + 1) << STEP_STRIDE_LOG2
}

#[cfg(test)]
mod tests {
    use super::{Purpose, SeedStreams};
    use proptest::prelude::{any, prop_assert_eq, proptest};
    use rand::Rng;

    fn batched(
        p: &Purpose,
        order: &[u64],
        batch: usize,
        step: Option<u32>,
        dim: usize,
    ) -> Vec<(u64, Vec<f32>)> {
        let mut rows = Vec::new();
        for chunk in order.chunks(batch) {
            let flat = p.normals(chunk, step, dim);
            for (k, &i) in chunk.iter().enumerate() {
                rows.push((i, flat[k * dim..(k + 1) * dim].to_vec()));
            }
        }
        rows.sort_by_key(|r| r.0);
        rows
    }

    proptest! {
        // Expected: identical bits for every batch size and order, because each sample's stream is
        // addressed by its own (seed, purpose, index, step) — the property this module exists for.
        #[test]
        fn streams_do_not_depend_on_batch_size_or_order(
            seed in any::<u64>(), n in 1usize..150, step in proptest::option::of(0u32..1000),
            dim in 1usize..5, perm_seed in any::<u64>(),
        ) {
            let p = SeedStreams::new(seed).purpose("ddpm-noise");
            let ordered: Vec<u64> = (0..n as u64).collect();
            let reference = batched(&p, &ordered, 1, step, dim);
            for batch in [7usize, 64, n] {
                prop_assert_eq!(&batched(&p, &ordered, batch, step, dim), &reference);
            }
            // A shuffled order (Fisher–Yates driven by another stream) gives the same rows.
            let mut shuffled = ordered.clone();
            let mut rng = SeedStreams::new(perm_seed).purpose("perm").rng(0);
            for i in (1..shuffled.len()).rev() {
                let j = rng.random_range(0..=i);
                shuffled.swap(i, j);
            }
            let got = batched(&p, &shuffled, 7, step, dim);
            let bits = |rows: &[(u64, Vec<f32>)]| rows.iter().flat_map(|r| r.1.iter().map(|v| v.to_bits())).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&reference));
        }
    }

    #[test]
    fn purposes_steps_and_seeds_are_distinct_streams() {
        let s = SeedStreams::new(7);
        let a = s.purpose("a").normals(&[0], None, 8);
        assert_ne!(a, s.purpose("b").normals(&[0], None, 8));
        assert_ne!(a, s.purpose("a").normals(&[1], None, 8));
        assert_ne!(a, s.purpose("a").normals(&[0], Some(0), 8));
        assert_ne!(
            s.purpose("a").normals(&[0], Some(0), 8),
            s.purpose("a").normals(&[0], Some(1), 8)
        );
        assert_ne!(a, SeedStreams::new(8).purpose("a").normals(&[0], None, 8));
        assert_eq!(a, SeedStreams::new(7).purpose("a").normals(&[0], None, 8));
    }

    #[test]
    fn threaded_rows_equal_each_index_drawn_alone() {
        // Expected: a draw large enough to be filled on several threads (5,000 × 64 > 2^14) is,
        // row for row and bit for bit, what each index's stream gives alone (one-row draws never
        // take the threaded path).
        let p = SeedStreams::new(11).purpose("au-renoise");
        let idx: Vec<u64> = (0..5_000).map(|i| i * 7 + 3).collect();
        let dim = 64;
        let all = p.normals(&idx, Some(45), dim);
        let uni = p.uniforms(&idx, None, dim, -0.5, 0.5);
        for (k, &i) in idx.iter().enumerate().step_by(97) {
            assert_eq!(
                &all[k * dim..(k + 1) * dim],
                &p.normals(&[i], Some(45), dim)[..]
            );
            assert_eq!(
                &uni[k * dim..(k + 1) * dim],
                &p.uniforms(&[i], None, dim, -0.5, 0.5)[..]
            );
        }
        assert!(p.normals(&idx, Some(1), 0).is_empty());
    }

    #[test]
    fn normals_have_unit_moments() {
        // Expected: mean 0, variance 1 of a standard normal; 4e4 draws → std error ≈ 0.005.
        let v =
            SeedStreams::new(1)
                .purpose("m")
                .normals(&(0..10_000).collect::<Vec<_>>(), Some(3), 4);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        approx::assert_abs_diff_eq!(mean, 0.0, epsilon = 0.03);
        approx::assert_abs_diff_eq!(var, 1.0, epsilon = 0.03);
    }
}
