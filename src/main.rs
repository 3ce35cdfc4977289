//! `diffuq` binary: parses the command line and maps outcomes to exit codes (see [`diffuq::cli`]).

use clap::Parser;

fn main() {
    diffuq::keep_freed_memory();
    // clap itself exits with 2 on usage errors and 0 for --help/--version.
    let cli = diffuq::cli::Cli::parse();
    // Last line of defence: a panic anywhere below (a bug, or input a reader failed to check) is
    // one line on stderr and exit 2, like every other error — not a backtrace and exit 101.
    // RUST_BACKTRACE=1 keeps the standard report for debugging.
    if std::env::var_os("RUST_BACKTRACE").is_none_or(|v| v == "0") {
        std::panic::set_hook(Box::new(|info| {
            if diffuq::panic_is_contained() {
                // A reader's caller turns this into a one-line error naming the file.
                return;
            }
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!(
                "error: internal error (a bug in diffuq; please report it): {}{at}",
                diffuq::config::one_line(&msg)
            );
        }));
    }
    let code =
        std::panic::catch_unwind(|| diffuq::cli::run(cli)).unwrap_or(diffuq::cli::EXIT_ERROR);
    std::process::exit(code);
}
