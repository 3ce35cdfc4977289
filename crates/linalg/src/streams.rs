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

/// Dropout keep-masks: `dim` values per index, 1.0 where the stream's uniform in [0, 1) is
/// ≥ `p` and 0.0 where it is below. The same uniforms, bit for bit, as [`uniform_rows`] with
/// [0, 1) (rand 0.9's float sampling from one 32-bit word: its top 23 bits as the mantissa of a
/// number in [1, 2), minus 1, times the width 1, plus the low 0), compared as f64 as the model
/// layer compared them, without the intermediate uniforms or rand's generic range code.
pub fn keep_rows(
    key: [u8; 32],
    indices: &[u64],
    word_pos: Option<u128>,
    dim: usize,
    p: f64,
) -> Vec<f32> {
    rows(key, indices, word_pos, dim, |rng, row| {
        row.iter_mut().for_each(|v| {
            let u = f32::from_bits((rand::RngCore::next_u32(rng) >> 9) | 0x3f80_0000) - 1.0;
            *v = f32::from(u8::from(f64::from(u * 1.0 + 0.0) >= p));
        })
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

    #[test]
    fn keep_masks_threshold_the_uniforms() {
        // Expected: rand 0.9's uniforms in [0, 1) from the same streams (uniform_rows, checked
        // above against rand_chacha drawn one number at a time), thresholded at p.
        let key = [3u8; 32];
        let idx: Vec<u64> = (0..600).map(|i| i * 7 + 2).collect();
        for (dim, pos, p) in [
            (40usize, None, 0.1),
            (37, Some(9u128 << 36), 0.5),
            (3, None, 0.0),
        ] {
            let u = uniform_rows(key, &idx, pos, dim, 0.0, 1.0);
            let keep = keep_rows(key, &idx, pos, dim, p);
            let want: Vec<f32> = u
                .iter()
                .map(|&v| f32::from(u8::from(f64::from(v) >= p)))
                .collect();
            assert_eq!(keep, want, "dim {dim} p {p}");
        }
        let keep = keep_rows(key, &idx, None, 40, 0.1);
        let kept = keep.iter().filter(|&&v| v == 1.0).count() as f64 / keep.len() as f64;
        assert!((kept - 0.9).abs() < 0.01, "kept fraction {kept}");
    }
}
