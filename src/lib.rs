//! diffuq — a reproducibility harness for uncertainty estimation in diffusion models.
//!
//! Layers, lowest first (dependencies only point downward):
//! `seed`, `schedule` → `model`, `sampler` → `uq`, `metrics`, `data` → `tracking`, `report` →
//! `experiments` → `cli`. Nothing past [`config`]'s resolver sees raw strings: every experiment
//! receives a typed, validated configuration.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod experiments;
pub mod features;
pub mod fetch;
pub mod metrics;
pub mod model;
pub mod report;
pub mod sampler;
pub mod schedule;
pub mod seed;
pub mod slurm;
pub mod tracking;
pub mod uq;

pub use error::{Error, Result};

thread_local! {
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run a third-party decoder that may panic on corrupt input (polars' parquet metadata reader
/// and candle's pickle decoder do, on mutated bytes: tests/reader_fuzz.rs), turning its panic into `Err(message)` so the
/// caller can name the file. A process-wide panic hook should stay quiet while
/// [`panic_is_contained`] is true (the binary's does).
pub fn contain_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let was = CONTAINED.with(|c| c.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    out.map_err(|e| {
        e.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "decoder panicked".into())
    })
}

/// Whether the current thread is inside [`contain_panic`].
pub fn panic_is_contained() -> bool {
    CONTAINED.with(|c| c.get())
}

/// Process-wide allocator and thread-count tuning for programs built on diffuq (the binary and the benches call it
/// first thing; a library must not, so nothing else does).
///
/// Also: a closed stdout ends the process quietly, as for any Unix tool (`diffuq validate … |
/// head`). Rust ignores SIGPIPE, so without this every `println!` after the reader left panics
/// with "failed printing to stdout".
///
/// candle allocates a fresh buffer for every tensor op. With glibc's defaults, buffers above the
/// dynamic mmap threshold are returned to the kernel on free and faulted in again by the next op,
/// which cost a quarter of the CPU time of toy-model training (perf: clear_page, page faults).
/// Raising the trim threshold and serving every allocation from the heap (no mmap: glibc caps
/// `M_MMAP_THRESHOLD` at 32 MiB on 64-bit, so a larger threshold is refused and buffers above
/// 32 MiB — an image batch's activations — were mmapped and page-faulted afresh by every op: 38%
/// of a UNet forward's time) lets freed buffers be reused from the heap instead.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tunables; it is meant to be called before the
    // program's worker threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // candle 0.11 asks for its thread count on every matmul, and on Linux that count comes from
    // `num_cpus::get_physical`, which opens and parses /proc/cpuinfo each time: 42,000 opens and
    // 17% of a UNet training step here (strace, perf). Answering once through the variable both
    // candle and rayon read first keeps the count candle would choose and removes the cost.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // candle's barrier-pool workers spin 25,000 times after each element-wise op before they
    // park; on 2 cores that spinning preempted the rayon threads of the next matmul (perf: 27% of
    // 50-step DDIM on the toy MLP in the spin loop). 1,000 spins keep back-to-back element-wise
    // ops on a warm worker and made that sampling loop 1.45× faster (139–167 → 95–102 ms);
    // UNet steps did not move. A value the user set is kept.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
    // The AVX-512 convolution's loops run on the pool candle's element-wise ops use (its barrier
    // pool: the calling thread plus n − 1 workers that spin for a while after each op) rather
    // than on rayon's: with both pools on 2 cores, the idle one's spinning took the cores from
    // the busy one (perf: 17% of a UNet training step in candle's spin loop).
    diffuq_linalg::par::set_executor(
        |n, f| candle_core::utils::barrier_pool().execute_chunked(n, f),
        candle_core::utils::get_num_threads(),
    );
}
