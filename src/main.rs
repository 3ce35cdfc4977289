//! `diffuq` binary: parses the command line and maps outcomes to exit codes (see [`diffuq::cli`]).

use clap::Parser;

fn main() {
    keep_freed_memory();
    // clap itself exits with 2 on usage errors and 0 for --help/--version.
    let cli = diffuq::cli::Cli::parse();
    std::process::exit(diffuq::cli::run(cli));
}

/// candle allocates a fresh buffer for every tensor op. With glibc's defaults, buffers above the
/// dynamic mmap threshold are returned to the kernel on free and faulted in again on the next
/// op, which cost a quarter of the CPU time of toy-model training (perf: clear_page, page faults).
/// Raising the mmap and trim thresholds lets freed buffers be reused from the heap instead.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
