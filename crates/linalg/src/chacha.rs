//! ChaCha20 keystream (Bernstein 2008, "ChaCha, a variant of Salsa20"; 20 rounds, a 64-bit block
//! counter in state words 12–13 and a 64-bit stream id in words 14–15) with sixteen blocks made
//! at once on AVX-512: one 512-bit register per state word, one lane per block, so the rounds
//! need no shuffles and every rotation is one `vprold`.
//!
//! Why: diffuq's seed streams are `rand_chacha` 0.9's `ChaCha20Rng` (key = the purpose's 32
//! bytes, stream = the sample's index, word position = the step), and AU's re-noising draws
//! (M·F normals per sample and uncertainty step) spent more than half their time in its
//! four-block AVX2 refill. [`Wide`] yields exactly the same 32-bit words in the same order —
//! `next_u64` joins two consecutive words low word first, as `rand_core`'s `BlockRng` does, also
//! across a refill — so `rand_distr`'s samplers draw the same numbers from it. Tests below compare
//! it with `ChaCha20Rng` word for word at several positions, streams and counter carries. Without
//! AVX-512 the blocks are read from `rand_chacha` itself.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Blocks made per refill.
const BLOCKS: usize = 16;
/// 32-bit words per ChaCha block.
const BLOCK_WORDS: usize = 16;
/// "expand 32-byte k".
#[cfg(target_arch = "x86_64")]
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// A ChaCha20 stream positioned like `ChaCha20Rng::from_seed(key)` followed by
/// `set_stream(stream)` and `set_word_pos(word_pos)`.
pub struct Wide {
    key: [u8; 32],
    stream: u64,
    /// Counter of the first block of the next refill.
    next_block: u64,
    buf: [u32; BLOCKS * BLOCK_WORDS],
    /// Next unread word of `buf`.
    idx: usize,
    /// Whether the AVX-512 refill can run (checked once per stream); elsewhere `rand_chacha`
    /// makes the blocks.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    wide: bool,
}

impl Wide {
    /// The stream `stream` of `key` from word `word_pos` (taken modulo 2⁶⁸, as `rand_chacha`
    /// does: the block counter is 64 bits).
    pub fn new(key: [u8; 32], stream: u64, word_pos: u128) -> Self {
        let mut s = Self {
            key,
            stream,
            next_block: (word_pos / BLOCK_WORDS as u128) as u64,
            buf: [0; BLOCKS * BLOCK_WORDS],
            idx: 0,
            wide: crate::kernels::available(),
        };
        s.refill();
        s.idx = (word_pos % BLOCK_WORDS as u128) as usize;
        s
    }

    fn refill(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.wide {
            // SAFETY: `wide` is set only where AVX-512F was detected.
            unsafe { refill_avx512(self.key, self.stream, self.next_block, &mut self.buf) };
        } else {
            refill_rand_chacha(self.key, self.stream, self.next_block, &mut self.buf);
        }
        #[cfg(not(target_arch = "x86_64"))]
        refill_rand_chacha(self.key, self.stream, self.next_block, &mut self.buf);
        self.next_block = self.next_block.wrapping_add(BLOCKS as u64);
        self.idx = 0;
    }
}

impl RngCore for Wide {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        if self.idx == self.buf.len() {
            self.refill();
        }
        let w = self.buf[self.idx];
        self.idx += 1;
        w
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        if self.idx + 2 <= self.buf.len() {
            let (lo, hi) = (self.buf[self.idx], self.buf[self.idx + 1]);
            self.idx += 2;
            return (u64::from(hi) << 32) | u64::from(lo);
        }
        let lo = self.next_u32();
        let hi = self.next_u32();
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Whole words, little-endian; the unused bytes of a last partial word are dropped (as
    /// `BlockRng::fill_bytes` does).
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(4) {
            let w = self.next_u32().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

/// The 16 input words of block `block` (the key's 32 bytes as 8 little-endian words).
#[cfg(target_arch = "x86_64")]
fn input(key: [u8; 32], stream: u64, block: u64) -> [u32; 16] {
    let mut s = [0u32; 16];
    s[..4].copy_from_slice(&SIGMA);
    for (w, c) in s[4..12].iter_mut().zip(key.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    s[12] = block as u32;
    s[13] = (block >> 32) as u32;
    s[14] = stream as u32;
    s[15] = (stream >> 32) as u32;
    s
}

/// The quarter-round's index quadruples: four columns, then four diagonals.
#[cfg(target_arch = "x86_64")]
const ROUNDS: [[usize; 4]; 8] = [
    [0, 4, 8, 12],
    [1, 5, 9, 13],
    [2, 6, 10, 14],
    [3, 7, 11, 15],
    [0, 5, 10, 15],
    [1, 6, 11, 12],
    [2, 7, 8, 13],
    [3, 4, 9, 14],
];

/// Refill without AVX-512: the same sixteen blocks read from `rand_chacha` itself.
fn refill_rand_chacha(
    key: [u8; 32],
    stream: u64,
    block: u64,
    out: &mut [u32; BLOCKS * BLOCK_WORDS],
) {
    let mut r = ChaCha20Rng::from_seed(key);
    r.set_stream(stream);
    r.set_word_pos(u128::from(block) * BLOCK_WORDS as u128);
    out.iter_mut().for_each(|w| *w = r.next_u32());
}

/// Sixteen consecutive blocks from `block`, lane j of every register holding block `block + j`
/// (the 64-bit counter carried per lane), transposed so that each block's words are contiguous.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn refill_avx512(
    key: [u8; 32],
    stream: u64,
    block: u64,
    out: &mut [u32; BLOCKS * BLOCK_WORDS],
) {
    let base = input(key, stream, block);
    let mut init = [_mm512_setzero_si512(); 16];
    for (v, &w) in init.iter_mut().zip(&base) {
        *v = _mm512_set1_epi32(w as i32);
    }
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let lo = _mm512_add_epi32(init[12], lanes);
    // Lanes whose low word wrapped carry into the high word.
    let carry = _mm512_cmplt_epu32_mask(lo, init[12]);
    init[13] = _mm512_mask_add_epi32(init[13], carry, init[13], _mm512_set1_epi32(1));
    init[12] = lo;
    let mut x = init;
    for _ in 0..10 {
        for &[a, b, c, d] in &ROUNDS {
            x[a] = _mm512_add_epi32(x[a], x[b]);
            x[d] = _mm512_rol_epi32::<16>(_mm512_xor_si512(x[d], x[a]));
            x[c] = _mm512_add_epi32(x[c], x[d]);
            x[b] = _mm512_rol_epi32::<12>(_mm512_xor_si512(x[b], x[c]));
            x[a] = _mm512_add_epi32(x[a], x[b]);
            x[d] = _mm512_rol_epi32::<8>(_mm512_xor_si512(x[d], x[a]));
            x[c] = _mm512_add_epi32(x[c], x[d]);
            x[b] = _mm512_rol_epi32::<7>(_mm512_xor_si512(x[b], x[c]));
        }
    }
    // Word-major [w][lane] → block-major [lane][w]: the f32 transpose moves bits only.
    let mut words = [0u32; BLOCKS * BLOCK_WORDS];
    for (w, (x, i)) in x.iter().zip(&init).enumerate() {
        _mm512_storeu_si512(
            words.as_mut_ptr().add(w * BLOCKS).cast(),
            _mm512_add_epi32(*x, *i),
        );
    }
    crate::kernels::transpose_block(
        words.as_ptr().cast(),
        BLOCKS,
        (BLOCK_WORDS, BLOCK_WORDS),
        BLOCKS,
        out.as_mut_ptr().cast(),
        BLOCK_WORDS,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(key: [u8; 32], stream: u64, pos: u128) -> ChaCha20Rng {
        let mut r = ChaCha20Rng::from_seed(key);
        r.set_stream(stream);
        r.set_word_pos(pos);
        r
    }

    #[test]
    fn words_match_rand_chacha() {
        // Expected: rand_chacha 0.9's ChaCha20Rng, word for word, over three refills, from
        // block-aligned and mid-block positions, at a low-word counter carry (block 2³² − 5: the
        // 16 lanes straddle it) and at the 2⁶⁸ wrap; with the AVX-512 refill where the CPU has it
        // and with the rand_chacha refill (which checks the buffer positioning).
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let positions = [
            0u128,
            7,
            16 * 3 + 5,
            46u128 << 36,
            ((1u128 << 32) - 5) * 16 + 3,
            (1u128 << 68) - 16 * 4 - 1,
        ];
        for &wide in &[true, false] {
            if wide && !crate::kernels::available() {
                continue;
            }
            for &stream in &[0u64, 1, 999, u64::MAX - 2] {
                for &pos in &positions {
                    let mut r = reference(key, stream, pos);
                    let mut w = Wide::new(key, stream, pos);
                    if w.wide != wide {
                        w.wide = wide;
                        w.next_block = (pos / 16) as u64;
                        w.refill();
                        w.idx = (pos % 16) as usize;
                    }
                    for n in 0..3 * 256 + 9 {
                        assert_eq!(
                            w.next_u32(),
                            r.next_u32(),
                            "wide {wide} stream {stream} pos {pos} word {n}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn u64_and_bytes_follow_block_rng() {
        // Expected: rand_chacha 0.9 / rand_core 0.9's BlockRng: next_u64 = two words low first,
        // also when the pair straddles a refill (odd start: word 255 and word 0 of the next
        // buffer), and fill_bytes consumes whole words.
        let key = [5u8; 32];
        for &start in &[0u128, 1, 255, 511] {
            let mut r = reference(key, 3, start);
            let mut w = Wide::new(key, 3, start);
            for _ in 0..300 {
                assert_eq!(w.next_u64(), r.next_u64());
            }
            assert_eq!(w.next_u32(), r.next_u32());
            let (mut a, mut b) = ([0u8; 23], [0u8; 23]);
            w.fill_bytes(&mut a);
            r.fill_bytes(&mut b);
            assert_eq!(a, b);
            for _ in 0..300 {
                assert_eq!(w.next_u64(), r.next_u64());
            }
        }
    }
}
