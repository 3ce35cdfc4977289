//! `diffuq` binary: parses the command line and maps outcomes to exit codes (see [`diffuq::cli`]).

use clap::Parser;

fn main() {
    diffuq::keep_freed_memory();
    // clap itself exits with 2 on usage errors and 0 for --help/--version.
    let cli = diffuq::cli::Cli::parse();
    std::process::exit(diffuq::cli::run(cli));
}
