//! Rows of seed-stream draws: row k holds `dim` numbers from the ChaCha20 stream `indices[k]` of
//! one key, starting at one word position. diffuq's seed layer (`src/seed.rs`) defines the keys
//! and positions; this is only the hot loop, here so that the generic ChaCha20 and normal
//! sampling code is compiled at opt-level 3 (in diffuq itself, at opt-level 1, AU's re-noising
//! draws ran 2× slower), and filled on several threads: each row depends on its own stream
//! alone, so the bits do not depend on the thread count. The keystream comes from
//! [`crate::chacha::Wide`]: the same words as `rand_chacha`, sixteen blocks at a time where the
//! CPU has AVX-512F (1,000 rows of 320 normals in 0.67–0.69 ms instead of 1.33 ms on the 2-core
//! dev machine), from `rand_chacha` itself elsewhere.

use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::chacha::Wide;

/// Below this many draws a thread hand-off costs more than it saves.
const PARALLEL_FROM: usize = 1 << 14;

/// Row k filled by `fill` from the stream `indices[k]` of `key` at `word_pos` (0 if none), on
/// several threads when there are enough draws.
fn rows(
    key: [u8; 32],
    indices: &[u64],
    word_pos: Option<u128>,
    dim: usize,
    fill: impl Fn(&mut Wide, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; indices.len() * dim];
    if dim == 0 {
        return out;
    }
    let one =
        |(&i, row): (&u64, &mut [f32])| fill(&mut Wide::new(key, i, word_pos.unwrap_or(0)), row);
    if out.len() >= PARALLEL_FROM && rayon::current_num_threads() > 1 {
        indices
            .par_iter()
            .zip(out.par_chunks_mut(dim))
            .with_min_len((PARALLEL_FROM / dim).max(1))
            .for_each(one);
    } else {
        indices.iter().zip(out.chunks_mut(dim)).for_each(one);
    }
    out
}

/// `dim` standard normals (rand_distr's ziggurat, f32) per index, row-major.
pub fn normal_rows(key: [u8; 32], indices: &[u64], word_pos: Option<u128>, dim: usize) -> Vec<f32> {
    rows(key, indices, word_pos, dim, |rng, row| {
        row.iter_mut()
            .for_each(|v| *v = rng.sample::<f32, _>(StandardNormal))
    })
}

/// `dim` uniforms in [lo, hi) per index, row-major.
pub fn uniform_rows(
    key: [u8; 32],
    indices: &[u64],
    word_pos: Option<u128>,
    dim: usize,
    lo: f32,
    hi: f32,
) -> Vec<f32> {
    rows(key, indices, word_pos, dim, |rng, row| {
        row.iter_mut().for_each(|v| *v = rng.random_range(lo..hi))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn rows_are_the_streams_drawn_one_by_one() {
        // Expected: each row is exactly what a ChaCha20 stream of that id at that position gives
        // (rand_chacha 0.9 + rand_distr 0.5, drawn here one number at a time), also when the rows
        // are filled on several threads (4,000 × 8 draws > PARALLEL_FROM).
        let key = [7u8; 32];
        let idx: Vec<u64> = (0..4_000).map(|i| i * 3 + 1).collect();
        let pos = Some(5u128 << 36);
        let got = normal_rows(key, &idx, pos, 8);
        let uni = uniform_rows(key, &idx, None, 8, -1.0, 2.0);
        for (k, &i) in idx.iter().enumerate().step_by(131) {
            let mut rng = ChaCha20Rng::from_seed(key);
            rng.set_stream(i);
            rng.set_word_pos(5u128 << 36);
            let want: Vec<f32> = (0..8).map(|_| rng.sample(StandardNormal)).collect();
            assert_eq!(&got[k * 8..(k + 1) * 8], &want[..]);
            let mut rng = ChaCha20Rng::from_seed(key);
            rng.set_stream(i);
            let want: Vec<f32> = (0..8).map(|_| rng.random_range(-1.0..2.0)).collect();
            assert_eq!(&uni[k * 8..(k + 1) * 8], &want[..]);
        }
        assert!(normal_rows(key, &idx, None, 0).is_empty());
    }
}
