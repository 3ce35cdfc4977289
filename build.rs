//! Embeds the commit this binary is built from, and whether its code differed from that commit,
//! so a run's manifest names the code that produced it (not whatever the build directory holds
//! when the binary later runs). Outside git (a source tarball) both are "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Rebuild the stamp when the commit moves or the code changes.
    for p in ["src", "crates", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Dirty = the code (not run outputs or notes) differs from the commit.
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "crates",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
    ])
    .map(|s| if s.is_empty() { "false" } else { "true" })
    .unwrap_or("unknown");
    println!("cargo:rustc-env=DIFFUQ_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=DIFFUQ_GIT_DIRTY={dirty}");
}
