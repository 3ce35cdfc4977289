//! Where the AVX-512 convolution's parallel loops run.
//!
//! By default on rayon's global pool. A program whose other tensor operations run on another
//! pool (candle 0.11's CPU element-wise ops use its own barrier pool, whose idle workers spin
//! before they park) can hand the loops to that pool with [`set_executor`], so the two pools do
//! not take turns preempting each other on a small machine. Results never depend on it: every
//! loop item writes its own outputs, and sums over items are reduced in a fixed order.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

/// Runs `f` over ranges that together cover `0..n` exactly once, possibly in parallel.
pub type Executor = fn(usize, &(dyn Fn(Range<usize>) + Sync));

/// The executor as a function-pointer address (0: rayon), and its thread count.
static EXECUTOR: AtomicUsize = AtomicUsize::new(0);
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Run the parallel loops of this crate's AVX-512 kernels on `exec`, which uses `threads`
/// threads (the caller's included).
pub fn set_executor(exec: Executor, threads: usize) {
    THREADS.store(threads.max(1), Ordering::Relaxed);
    EXECUTOR.store(exec as usize, Ordering::Relaxed);
}

/// Threads the loops run on.
pub(crate) fn threads() -> usize {
    match EXECUTOR.load(Ordering::Relaxed) {
        0 => rayon::current_num_threads().max(1),
        _ => THREADS.load(Ordering::Relaxed).max(1),
    }
}

/// `f` over ranges covering `0..n`.
pub(crate) fn for_ranges(n: usize, f: impl Fn(Range<usize>) + Sync) {
    if n == 0 {
        return;
    }
    match EXECUTOR.load(Ordering::Relaxed) {
        0 => {
            // About four ranges per thread: balance without per-item set-up costs.
            let chunk = n.div_ceil(4 * threads()).max(1);
            (0..n.div_ceil(chunk))
                .into_par_iter()
                .for_each(|c| f(c * chunk..n.min((c + 1) * chunk)));
        }
        p => {
            // SAFETY: the only non-zero value stored is an `Executor` cast to usize.
            let exec: Executor = unsafe { std::mem::transmute::<usize, Executor>(p) };
            exec(n, &f);
        }
    }
}

/// `f(i, chunk_i)` for the consecutive `chunk`-element pieces of `out` (the last may be shorter),
/// possibly in parallel: each piece is handed to exactly one call.
pub(crate) fn for_chunks_mut<T: Send>(
    out: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "for_chunks_mut: empty chunks");
    let (len, base) = (out.len(), out.as_mut_ptr() as usize);
    for_ranges(len.div_ceil(chunk), |r| {
        for i in r {
            let (a, b) = (i * chunk, len.min((i + 1) * chunk));
            // SAFETY: pieces [a, b) of distinct i are disjoint and inside `out`, which stays
            // mutably borrowed for the whole call; each i is visited once.
            let piece = unsafe { std::slice::from_raw_parts_mut((base as *mut T).add(a), b - a) };
            f(i, piece);
        }
    });
}

/// [`for_chunks_mut`] over two slices cut into the same number of pieces: `f(i, a_i, b_i)` with
/// piece i of `a` of `a_chunk` elements and of `b` of `b_chunk` elements (both may be 0-sized
/// at the end, as may every piece of `b` when `b_chunk` is 0).
pub(crate) fn for_chunks_mut2<A: Send, B: Send>(
    a: &mut [A],
    a_chunk: usize,
    b: &mut [B],
    b_chunk: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    assert!(a_chunk > 0, "for_chunks_mut2: empty chunks");
    let pieces = a.len().div_ceil(a_chunk);
    assert!(
        b.len() <= pieces * b_chunk,
        "for_chunks_mut2: second slice longer than its pieces"
    );
    let (alen, abase) = (a.len(), a.as_mut_ptr() as usize);
    let (blen, bbase) = (b.len(), b.as_mut_ptr() as usize);
    for_ranges(pieces, |r| {
        for i in r {
            let (a0, a1) = (i * a_chunk, alen.min((i + 1) * a_chunk));
            let (b0, b1) = (blen.min(i * b_chunk), blen.min((i + 1) * b_chunk));
            // SAFETY: as in for_chunks_mut, for each slice: pieces of distinct i are disjoint
            // and inside their slice, which stays mutably borrowed; each i is visited once.
            let (pa, pb) = unsafe {
                (
                    std::slice::from_raw_parts_mut((abase as *mut A).add(a0), a1 - a0),
                    std::slice::from_raw_parts_mut((bbase as *mut B).add(b0), b1 - b0),
                )
            };
            f(i, pa, pb);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn ranges_cover_every_item_once() {
        // Expected: by definition, each of 0..n exactly once, for sizes around the chunking.
        for n in [1usize, 2, 3, 7, 8, 9, 64, 257] {
            let seen = Mutex::new(vec![0u32; n]);
            for_ranges(n, |r| {
                let mut s = seen.lock().unwrap();
                for i in r {
                    s[i] += 1;
                }
            });
            assert!(
                seen.into_inner().unwrap().iter().all(|&c| c == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn chunks_are_disjoint_and_cover_the_slice() {
        // Expected: by definition, piece i starts at i·chunk and every element is written once.
        for (n, chunk) in [(1usize, 1usize), (10, 3), (64, 16), (65, 16)] {
            let mut v = vec![0usize; n];
            for_chunks_mut(&mut v, chunk, |i, piece| {
                for (k, x) in piece.iter_mut().enumerate() {
                    *x += i * chunk + k + 1;
                }
            });
            assert_eq!(v, (1..=n).collect::<Vec<_>>(), "n = {n}, chunk = {chunk}");
        }
    }

    #[test]
    fn paired_chunks_line_up() {
        // Expected: by definition, piece i of each slice starts at i·chunk of that slice.
        for (n, ca, cb) in [(10usize, 3usize, 2usize), (64, 16, 0), (65, 16, 1)] {
            let pieces = n.div_ceil(ca);
            let (mut a, mut b) = (vec![0usize; n], vec![0usize; pieces * cb]);
            for_chunks_mut2(&mut a, ca, &mut b, cb, |i, pa, pb| {
                pa.iter_mut().for_each(|x| *x = i + 1);
                pb.iter_mut().for_each(|x| *x = i + 1);
            });
            assert_eq!(a, (0..n).map(|k| k / ca + 1).collect::<Vec<_>>());
            assert_eq!(
                b,
                (0..pieces * cb)
                    .map(|k| k / cb.max(1) + 1)
                    .collect::<Vec<_>>()
            );
        }
    }
}
