//! Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, zalandoresearch/fashion-mnist): 70,000 28×28
//! grayscale images of 10 clothing classes, in MNIST's IDX files.
//!
//! **Format.** An IDX file is a big-endian header — a magic number whose low byte is the number
//! of dimensions (`0x00000803`: unsigned bytes, 3 dimensions, for images; `0x00000801`, one
//! dimension, for labels), then one u32 per dimension — followed by the unsigned bytes, row-major.
//! The files are distributed gzip-compressed; [`read_idx_images`] and [`read_idx_labels`] read
//! either form, recognising gzip by its magic bytes rather than by the name. Every size a header
//! claims is checked against the bytes actually there before anything of that size is allocated,
//! so a damaged or hostile header is an error, not an out-of-memory abort.
//!
//! **Pins.** The SHA-256 of each file's *decompressed* contents is pinned ([`FILES`]): Debian
//! recompressed the `.gz` files of its `dataset-fashion-mnist` package (their MD5s differ from
//! the upstream README's), but what is inside is byte-identical, so only the contents identify
//! the data set. [`FashionMnist::load`] checks the pins; [`FashionMnist::load_unpinned`] and the
//! `read_idx_*` functions do not (test fixtures, other IDX data).
//!
//! **Obtaining it.** [`fetch_fashion_mnist`] (`diffuq fetch fashion-mnist`) takes the files from
//! Debian's `dataset-fashion-mnist` package — `apt-get download` needs no root, and the package
//! is an ordinary registry artifact, unlike the upstream S3 bucket — or from a directory the user
//! names (`--from DIR`), verifies them, and leaves them decompressed in the data cache
//! (`~/.cache/diffuq/data/fashion-mnist`), where [`locate_fashion_mnist`] finds them.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::read::MultiGzDecoder;

use crate::data::images::ImageSet;
use crate::error::{Error, Result};
use crate::fetch::{sha256_bytes, sha256_file, sha_mismatch, stamp_matches, write_stamp};

/// Class names by label, from the Fashion-MNIST README's label table.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The command line that fills the data cache (for error messages).
pub const FETCH_COMMAND: &str = "diffuq fetch fashion-mnist";
/// The configuration key that points diffuq at a Fashion-MNIST directory elsewhere.
pub const DATA_PATH_KEY: &str = "data.path";
/// The Debian package [`fetch_fashion_mnist`] downloads.
pub const DEBIAN_PACKAGE: &str = "dataset-fashion-mnist";
/// Where the package keeps the four `.gz` files (`dpkg-deb -c`).
pub const DEBIAN_PACKAGE_DIR: &str = "usr/share/datasets/fashion-mnist";
/// The data cache's subdirectory for Fashion-MNIST.
pub const CACHE_SUBDIR: &str = "fashion-mnist";

/// IDX magic of images: unsigned-byte data (0x08), 3 dimensions (count, rows, columns).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of labels: unsigned-byte data (0x08), 1 dimension (count).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// DEFLATE cannot expand data by more than 1032:1 (zlib's technical details), so a gzip file of
/// L bytes decompresses to at most 1032·L: the bound a header's claims are checked against before
/// anything is allocated.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// One of the four original files: its name (without `.gz`) and the SHA-256 of its decompressed
/// contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxFile {
    pub name: &'static str,
    pub sha256: &'static str,
}

pub const TRAIN_IMAGES: IdxFile = IdxFile {
    name: "train-images-idx3-ubyte",
    sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
};
pub const TRAIN_LABELS: IdxFile = IdxFile {
    name: "train-labels-idx1-ubyte",
    sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
};
pub const TEST_IMAGES: IdxFile = IdxFile {
    name: "t10k-images-idx3-ubyte",
    sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
};
pub const TEST_LABELS: IdxFile = IdxFile {
    name: "t10k-labels-idx1-ubyte",
    sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
};
/// The four files of the data set.
pub const FILES: [IdxFile; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// The two splits of the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn images(self) -> IdxFile {
        match self {
            Split::Train => TRAIN_IMAGES,
            Split::Test => TEST_IMAGES,
        }
    }

    pub fn labels(self) -> IdxFile {
        match self {
            Split::Train => TRAIN_LABELS,
            Split::Test => TEST_LABELS,
        }
    }

    /// Images in the split, per the README (60,000 and 10,000; 6,000 and 1,000 per class).
    pub fn count(self) -> usize {
        match self {
            Split::Train => 60_000,
            Split::Test => 10_000,
        }
    }
}

/// The data set in a directory holding the four files (plain or `.gz`).
pub struct FashionMnist;

impl FashionMnist {
    /// Side of the images.
    pub const IMAGE_SIZE: usize = 28;

    /// One split, images and labels, with the decompressed contents of both files checked
    /// against the pins ([`FILES`]). A file the data cache stamped as verified (same size and
    /// mtime as when [`fetch_fashion_mnist`] hashed it) is not hashed again.
    pub fn load(dir: &Path, split: Split) -> Result<ImageSet> {
        Self::read(dir, split, true)
    }

    /// [`FashionMnist::load`] without the pin check, for IDX fixtures in Fashion-MNIST's layout.
    pub fn load_unpinned(dir: &Path, split: Split) -> Result<ImageSet> {
        Self::read(dir, split, false)
    }

    fn read(dir: &Path, split: Split, verify: bool) -> Result<ImageSet> {
        let (images, labels) = (split.images(), split.labels());
        let missing: Vec<&str> = [images, labels]
            .iter()
            .filter(|f| find_in(dir, f.name).is_none())
            .map(|f| f.name)
            .collect();
        if !missing.is_empty() {
            return Err(missing_files(dir, &missing, "the directory read"));
        }
        let pin = |f: IdxFile, path: &Path| {
            (verify && !stamp_matches(path, f.sha256)).then_some(f.sha256)
        };
        let ipath = find_in(dir, images.name).expect("checked above");
        let lpath = find_in(dir, labels.name).expect("checked above");
        let set = read_images(&ipath, pin(images, &ipath))?;
        let labels = read_labels(&lpath, pin(labels, &lpath))?;
        set.with_labels(
            labels,
            &format!("{} (labels of {})", lpath.display(), ipath.display()),
        )
    }
}

/// Images of an IDX file (magic `0x00000803`), plain or gzip-compressed, as an N×1×H×W
/// [`ImageSet`] without labels; no pin is checked.
pub fn read_idx_images(path: &Path) -> Result<ImageSet> {
    read_images(path, None)
}

/// Labels of an IDX file (magic `0x00000801`), plain or gzip-compressed; no pin is checked, but
/// every label must be a Fashion-MNIST class (0–9).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u32>> {
    read_labels(path, None)
}

fn read_images(path: &Path, pin: Option<&str>) -> Result<ImageSet> {
    let (dims, images) = read_idx(path, IMAGES_MAGIC, pin)?;
    Ok(ImageSet {
        images,
        labels: None,
        n: dims[0],
        channels: 1,
        height: dims[1],
        width: dims[2],
    })
}

fn read_labels(path: &Path, pin: Option<&str>) -> Result<Vec<u32>> {
    let (_, labels) = read_idx(path, LABELS_MAGIC, pin)?;
    if let Some(i) = labels
        .iter()
        .position(|&l| usize::from(l) >= CLASS_NAMES.len())
    {
        return Err(Error::invalid(
            path.display().to_string(),
            format!(
                "label {} at index {i}; Fashion-MNIST labels are 0–9",
                labels[i]
            ),
        ));
    }
    Ok(labels.into_iter().map(u32::from).collect())
}

/// Reads as much as `buf` holds, stopping early only at the end of the stream; returns the count.
fn read_up_to(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The dimensions and data of an IDX file with `magic`, checked against `pin` (the SHA-256 of
/// header and data) when given.
fn read_idx(path: &Path, magic: u32, pin: Option<&str>) -> Result<(Vec<usize>, Vec<u8>)> {
    let name = path.display().to_string();
    let bad = |reason: String| Error::invalid(&name, reason);
    let kind = |m: u32| match m {
        IMAGES_MAGIC => "IDX images, unsigned bytes, 3 dimensions",
        LABELS_MAGIC => "IDX labels, unsigned bytes, 1 dimension",
        _ => "not an IDX file of unsigned bytes",
    };

    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let gzip = reader
        .fill_buf()
        .map_err(|e| Error::io(path, e))?
        .starts_with(&GZIP_MAGIC);
    // Bytes the (decompressed) stream can hold at most: exact for a plain file.
    let (mut src, capacity): (Box<dyn Read>, u64) = if gzip {
        (
            Box::new(MultiGzDecoder::new(reader)),
            file_len.saturating_mul(MAX_DEFLATE_RATIO),
        )
    } else {
        (Box::new(reader), file_len)
    };
    let stream = |e: std::io::Error| {
        if gzip {
            let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "truncated"
            } else {
                "corrupt"
            };
            bad(format!("gzip stream is {why} ({e})"))
        } else {
            Error::io(path, e)
        }
    };
    let contents = if gzip { "decompressed stream" } else { "file" };

    let mut head = [0u8; 4];
    let got = read_up_to(&mut src, &mut head).map_err(stream)?;
    if got < 4 {
        return Err(bad(format!(
            "truncated: the {contents} has {got} bytes, expected an IDX header ({})",
            kind(magic)
        )));
    }
    let found = u32::from_be_bytes(head);
    if found != magic {
        return Err(bad(format!(
            "magic 0x{found:08x} ({}), expected 0x{magic:08x} ({})",
            kind(found),
            kind(magic)
        )));
    }
    let rank = (magic & 0xff) as usize;
    let header_len = 4 + 4 * rank;
    let mut header = vec![0u8; header_len];
    header[..4].copy_from_slice(&head);
    let got = 4 + read_up_to(&mut src, &mut header[4..]).map_err(stream)?;
    if got < header_len {
        return Err(bad(format!(
            "truncated: the {contents} has {got} bytes, shorter than the {header_len}-byte \
             header of {}",
            kind(magic)
        )));
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let shape = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×");
    let claimed = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| {
            bad(format!(
                "header claims {shape} bytes of data, which overflows"
            ))
        })?;

    // The header's claim against the bytes actually there, before allocating for it.
    let room = capacity.saturating_sub(header_len as u64);
    if claimed > room {
        return Err(bad(if gzip {
            format!(
                "truncated: the header claims {shape} = {claimed} bytes of data, more than \
                 {file_len} compressed bytes can hold"
            )
        } else {
            format!(
                "truncated: the header claims {shape} = {claimed} bytes of data, the file has \
                 {room} after the header"
            )
        }));
    }
    if !gzip && claimed < room {
        return Err(bad(format!(
            "{} bytes after the {shape} = {claimed} bytes of data the header claims; expected \
             the file to end there",
            room - claimed
        )));
    }
    let mut data = Vec::with_capacity(claimed as usize);
    (&mut src)
        .take(claimed)
        .read_to_end(&mut data)
        .map_err(stream)?;
    if (data.len() as u64) < claimed {
        return Err(bad(format!(
            "truncated: the header claims {shape} = {claimed} bytes of data, the {contents} has \
             {} after the header",
            data.len()
        )));
    }
    let extra = std::io::copy(&mut src, &mut std::io::sink()).map_err(stream)?;
    if extra > 0 {
        return Err(bad(format!(
            "{extra} bytes after the {shape} = {claimed} bytes of data the header claims; \
             expected the {contents} to end there"
        )));
    }
    if let Some(pin) = pin {
        let got = sha256_bytes(&[&header, &data]);
        if got != pin {
            return Err(sha_mismatch(
                &format!("{name} ({contents})"),
                &got,
                pin,
                &format!(
                    "not the Fashion-MNIST release diffuq pins; run `{FETCH_COMMAND}`, or set \
                     `{DATA_PATH_KEY}` to a directory of the original files"
                ),
            ));
        }
    }
    Ok((dims, data))
}

/// `dir/name`, else `dir/name.gz`, whichever is a file.
fn find_in(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

fn missing_files(dir: &Path, names: &[&str], origin: &str) -> Error {
    Error::invalid(
        format!("Fashion-MNIST directory {}", dir.display()),
        format!(
            "no {} (plain or .gz; {origin}); run `{FETCH_COMMAND}` to download Debian's \
             {DEBIAN_PACKAGE}, or set `{DATA_PATH_KEY}` to a directory of the four original files",
            names.join(", ")
        ),
    )
}

/// Where [`fetch_fashion_mnist`] puts the files inside the data cache `cache_dir`
/// ([`crate::fetch::default_data_dir`] unless `--cache-dir` says otherwise).
pub fn fashion_mnist_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join(CACHE_SUBDIR)
}

/// The Fashion-MNIST directory to use, without downloading anything: `configured` (the value of
/// [`DATA_PATH_KEY`]) if given, else the data cache's. A directory lacking any of the four files
/// (plain or `.gz`) is an error naming the files, [`FETCH_COMMAND`] and [`DATA_PATH_KEY`].
pub fn locate_fashion_mnist(configured: Option<&Path>, cache_dir: &Path) -> Result<PathBuf> {
    let (dir, origin) = match configured {
        Some(p) => (p.to_path_buf(), format!("set by `{DATA_PATH_KEY}`")),
        None => (fashion_mnist_dir(cache_dir), "the data cache".to_string()),
    };
    let missing: Vec<&str> = FILES
        .iter()
        .filter(|f| find_in(&dir, f.name).is_none())
        .map(|f| f.name)
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(missing_files(&dir, &missing, &origin))
    }
}

/// Make sure the four files are in the data cache `cache_dir`, decompressed and verified, and
/// return their directory ([`fashion_mnist_dir`]).
///
/// A cache that already holds the four files with the pinned digests is used as is (stamps spare
/// re-hashing, as for the Inception archive). Otherwise the files are taken from `from` (a
/// directory of the original files, plain or `.gz`), or, without it, from Debian's package:
/// `apt-get download dataset-fashion-mnist` into a scratch directory beside the cache, then
/// `dpkg-deb -x` and [`DEBIAN_PACKAGE_DIR`] inside. Each file is decompressed into a temporary
/// sibling, hashed on the way, and renamed into place only if its digest is the pin, so the cache
/// never holds a file that looks finished but is not.
pub fn fetch_fashion_mnist(cache_dir: &Path, from: Option<&Path>) -> Result<PathBuf> {
    let target = fashion_mnist_dir(cache_dir);
    if cache_is_complete(&target)? {
        return Ok(target);
    }
    match from {
        Some(source) => install(source, &target, &FILES)?,
        None => {
            std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
            let scratch = Scratch::new(&target)?;
            let source = debian_package(&scratch.0)?;
            install(&source, &target, &FILES)?;
        }
    }
    Ok(target)
}

/// Whether `dir` holds the four decompressed files with the pinned digests (stamping each).
fn cache_is_complete(dir: &Path) -> Result<bool> {
    for f in FILES {
        let path = dir.join(f.name);
        if !path.is_file() {
            return Ok(false);
        }
        if !stamp_matches(&path, f.sha256) {
            if sha256_file(&path)? != f.sha256 {
                return Ok(false);
            }
            write_stamp(&path, f.sha256);
        }
    }
    Ok(true)
}

/// Decompress `files` from `source` into `target`, each checked against its pin.
fn install(source: &Path, target: &Path, files: &[IdxFile]) -> Result<()> {
    let missing: Vec<&str> = files
        .iter()
        .filter(|f| find_in(source, f.name).is_none())
        .map(|f| f.name)
        .collect();
    if !missing.is_empty() {
        return Err(missing_files(
            source,
            &missing,
            "the directory to fetch from",
        ));
    }
    std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    for f in files {
        let src = find_in(source, f.name).expect("checked above");
        let dest = target.join(f.name);
        crate::tracking::write_atomically(&dest, |tmp| {
            let digest = decompress_into(&src, tmp)?;
            if digest == f.sha256 {
                Ok(())
            } else {
                Err(sha_mismatch(
                    &format!("{} (decompressed)", src.display()),
                    &digest,
                    f.sha256,
                    "not the Fashion-MNIST release diffuq pins (zalandoresearch/fashion-mnist, \
                     Debian's dataset-fashion-mnist)",
                ))
            }
        })?;
        write_stamp(&dest, f.sha256);
    }
    Ok(())
}

/// Copy `src` into `dest`, decompressing it if it is gzip; returns the SHA-256 of what was written.
fn decompress_into(src: &Path, dest: &Path) -> Result<String> {
    let file = File::open(src).map_err(|e| Error::io(src, e))?;
    let mut reader = BufReader::new(file);
    let gzip = reader
        .fill_buf()
        .map_err(|e| Error::io(src, e))?
        .starts_with(&GZIP_MAGIC);
    if gzip {
        crate::fetch::copy_hashing(MultiGzDecoder::new(reader), dest, |e| {
            Error::invalid(
                src.display().to_string(),
                format!("gzip stream is truncated or corrupt ({e})"),
            )
        })
    } else {
        crate::fetch::copy_hashing(reader, dest, |e| Error::io(src, e))
    }
}

/// A scratch directory beside the cache entry, removed when dropped (also on error).
struct Scratch(PathBuf);

impl Scratch {
    fn new(beside: &Path) -> Result<Self> {
        let path = crate::tracking::temp_path(beside);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What to do where Debian's tools are missing or fail.
const BY_HAND: &str = "or download the four files of https://github.com/zalandoresearch/\
                       fashion-mnist (data/fashion) and run `diffuq fetch fashion-mnist --from \
                       DIR`";

/// Download and unpack [`DEBIAN_PACKAGE`] inside `scratch`; returns the directory holding its
/// four `.gz` files.
fn debian_package(scratch: &Path) -> Result<PathBuf> {
    run_tool(
        "apt-get",
        &[OsStr::new("download"), OsStr::new(DEBIAN_PACKAGE)],
        scratch,
    )?;
    let prefix = format!("{DEBIAN_PACKAGE}_");
    let deb = std::fs::read_dir(scratch)
        .map_err(|e| Error::io(scratch, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .ok_or_else(|| {
            Error::invalid(
                format!(
                    "`apt-get download {DEBIAN_PACKAGE}` in {}",
                    scratch.display()
                ),
                format!("succeeded but left no {prefix}*.deb; {BY_HAND}"),
            )
        })?;
    let root = scratch.join("root");
    run_tool(
        "dpkg-deb",
        &[OsStr::new("-x"), deb.as_os_str(), root.as_os_str()],
        scratch,
    )?;
    let dir = root.join(DEBIAN_PACKAGE_DIR);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(Error::invalid(
            deb.display().to_string(),
            format!("has no /{DEBIAN_PACKAGE_DIR} (the package changed?); {BY_HAND}"),
        ))
    }
}

/// Run a Debian tool in `cwd`; failure is one line with the command and its last stderr line.
fn run_tool(program: &str, args: &[&OsStr], cwd: &Path) -> Result<()> {
    let cmdline = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    match Command::new(program).args(args).current_dir(cwd).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(Error::invalid(
            format!("`{cmdline}`"),
            format!(
                "failed ({}: {}); if apt cannot locate the package, run `apt-get update` first, \
                 {BY_HAND}",
                out.status,
                crate::fetch::last_line(&out.stderr)
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::invalid(
            format!("`{cmdline}`"),
            format!("`{program}` not found (diffuq fetches Fashion-MNIST from Debian's archive); {BY_HAND}"),
        )),
        Err(e) => Err(Error::io(program, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// An IDX file: big-endian magic and dimensions, then `data`.
    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(data);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn pixels(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 256) as u8).collect()
    }

    /// A Fashion-MNIST-shaped directory: `n` 3×2 images (train and test alike), labels 0, 1, ….
    fn fixture_dir(dir: &Path, n: u32, compress: bool) -> (Vec<u8>, Vec<u8>) {
        let images = idx(IMAGES_MAGIC, &[n, 3, 2], &pixels(6 * n as usize));
        let labels = idx(
            LABELS_MAGIC,
            &[n],
            &(0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>(),
        );
        for (f, bytes) in [
            (TRAIN_IMAGES, &images),
            (TRAIN_LABELS, &labels),
            (TEST_IMAGES, &images),
            (TEST_LABELS, &labels),
        ] {
            if compress {
                std::fs::write(dir.join(format!("{}.gz", f.name)), gz(bytes)).unwrap();
            } else {
                std::fs::write(dir.join(f.name), bytes).unwrap();
            }
        }
        (images, labels)
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        let msg = r.unwrap_err().to_string();
        assert_eq!(msg.lines().count(), 1, "not one line: {msg}");
        msg
    }

    // Expected numbers: the fixture's own pixels and labels (written above), and its shape.
    #[test]
    fn plain_and_gzip_idx_read_alike() {
        for compress in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            fixture_dir(dir.path(), 4, compress);
            let set = FashionMnist::load_unpinned(dir.path(), Split::Train).unwrap();
            assert_eq!(
                (set.n, set.channels, set.height, set.width),
                (4, 1, 3, 2),
                "compress={compress}"
            );
            assert_eq!(set.images, pixels(24));
            assert_eq!(set.labels, Some(vec![0, 1, 2, 3]));
            // The low-level readers take either file directly.
            let images = find_in(dir.path(), TEST_IMAGES.name).unwrap();
            assert_eq!(read_idx_images(&images).unwrap().images, pixels(24));
            let labels = find_in(dir.path(), TEST_LABELS.name).unwrap();
            assert_eq!(read_idx_labels(&labels).unwrap(), vec![0, 1, 2, 3]);
        }
    }

    // Expected numbers: the SHA-256 of the fixture's bytes, computed here, against the real pins.
    #[test]
    fn pins_are_checked_on_the_decompressed_contents() {
        let dir = tempfile::tempdir().unwrap();
        let (images, _) = fixture_dir(dir.path(), 2, true);
        let msg = err(FashionMnist::load(dir.path(), Split::Test));
        for needle in [
            "t10k-images-idx3-ubyte.gz (decompressed stream)",
            &sha256_bytes(&[&images]),
            TEST_IMAGES.sha256,
            FETCH_COMMAND,
            DATA_PATH_KEY,
        ] {
            assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
        }
        // The pin that matches passes (the label file checked against its own digest).
        let labels = find_in(dir.path(), TEST_LABELS.name).unwrap();
        let own = sha256_bytes(&[&idx(LABELS_MAGIC, &[2], &[0, 1])]);
        assert_eq!(read_labels(&labels, Some(&own)).unwrap(), vec![0, 1]);
    }

    #[test]
    fn wrong_magic_names_both_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swapped");
        std::fs::write(&path, idx(LABELS_MAGIC, &[2], &[0, 1])).unwrap();
        let msg = err(read_idx_images(&path));
        assert!(
            msg.contains("swapped")
                && msg.contains("magic 0x00000801 (IDX labels")
                && msg.contains("expected 0x00000803 (IDX images"),
            "{msg}"
        );
        std::fs::write(&path, b"PK\x03\x04 not idx").unwrap();
        assert!(err(read_idx_labels(&path)).contains("not an IDX file"));
    }

    #[test]
    fn truncated_and_overlong_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images");
        let good = idx(IMAGES_MAGIC, &[2, 3, 2], &pixels(12));
        // Header cut short, data cut short, two bytes too many: plain and gzip.
        for (bytes, needle) in [
            (&good[..2], "truncated: the"),
            (&good[..10], "shorter than the 16-byte header"),
            (
                &good[..good.len() - 1],
                "truncated: the header claims 2×3×2 = 12",
            ),
            (
                &[&good[..], &[0, 0]].concat()[..],
                "2 bytes after the 2×3×2 = 12",
            ),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let msg = err(read_idx_images(&path));
            assert!(msg.contains(needle) && msg.contains("images"), "{msg}");
            std::fs::write(&path, gz(bytes)).unwrap();
            let msg = err(read_idx_images(&path));
            assert!(msg.contains(needle), "gzip: {msg}");
        }
        // A gzip stream cut in the middle.
        let long = idx(IMAGES_MAGIC, &[50, 28, 28], &pixels(50 * 784));
        let z = gz(&long);
        std::fs::write(&path, &z[..z.len() / 2]).unwrap();
        assert!(err(read_idx_images(&path)).contains("gzip stream is truncated"));
    }

    // Expected numbers: none; a header claiming 10^9 28×28 images (784 GB) in a 100-byte file
    // (and in a small gzip file) must be refused by the size check, before any allocation; an
    // attempt to allocate would abort the test process.
    #[test]
    fn huge_claims_fail_without_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge");
        let mut bytes = idx(IMAGES_MAGIC, &[1_000_000_000, 28, 28], &[]);
        bytes.resize(100, 0);
        std::fs::write(&path, &bytes).unwrap();
        let msg = err(read_idx_images(&path));
        assert!(
            msg.contains("1000000000×28×28 = 784000000000 bytes")
                && msg.contains("the file has 84 after the header"),
            "{msg}"
        );
        std::fs::write(&path, gz(&bytes)).unwrap();
        assert!(err(read_idx_images(&path)).contains("compressed bytes can hold"));
        // Dimensions whose product overflows u64.
        std::fs::write(&path, idx(IMAGES_MAGIC, &[u32::MAX; 3], &[0; 84])).unwrap();
        assert!(err(read_idx_images(&path)).contains("overflows"));
    }

    #[test]
    fn label_count_and_range_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        fixture_dir(dir.path(), 3, false);
        std::fs::write(
            dir.path().join(TRAIN_LABELS.name),
            idx(LABELS_MAGIC, &[2], &[1, 2]),
        )
        .unwrap();
        let msg = err(FashionMnist::load_unpinned(dir.path(), Split::Train));
        assert!(
            msg.contains("train-labels-idx1-ubyte") && msg.contains("2 labels for 3 images"),
            "{msg}"
        );
        std::fs::write(
            dir.path().join(TRAIN_LABELS.name),
            idx(LABELS_MAGIC, &[3], &[1, 10, 2]),
        )
        .unwrap();
        let msg = err(FashionMnist::load_unpinned(dir.path(), Split::Train));
        assert!(msg.contains("label 10 at index 1"), "{msg}");
    }

    #[test]
    fn missing_files_name_the_command_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let msg = err(locate_fashion_mnist(None, dir.path()));
        for needle in [
            FETCH_COMMAND,
            DATA_PATH_KEY,
            "train-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
            "fashion-mnist",
        ] {
            assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
        }
        let own = dir.path().join("mine");
        std::fs::create_dir(&own).unwrap();
        fixture_dir(&own, 1, true);
        assert_eq!(locate_fashion_mnist(Some(&own), dir.path()).unwrap(), own);
        std::fs::remove_file(own.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let msg = err(locate_fashion_mnist(Some(&own), dir.path()));
        assert!(
            msg.contains("no t10k-labels-idx1-ubyte (") && msg.contains("set by `data.path`"),
            "{msg}"
        );
        let msg = err(FashionMnist::load(&own, Split::Test));
        assert!(msg.contains("t10k-labels-idx1-ubyte"), "{msg}");
    }

    // Expected numbers: the fixture files' SHA-256, computed here, as stand-in pins.
    #[test]
    fn install_decompresses_verifies_and_stamps() {
        let src = tempfile::tempdir().unwrap();
        let (images, labels) = fixture_dir(src.path(), 2, true);
        let pins: Vec<IdxFile> = [TRAIN_IMAGES, TRAIN_LABELS]
            .iter()
            .zip([&images, &labels])
            .map(|(f, bytes)| IdxFile {
                name: f.name,
                sha256: sha256_bytes(&[bytes]).leak(),
            })
            .collect();
        let cache = tempfile::tempdir().unwrap();
        let target = cache.path().join("fm");
        install(src.path(), &target, &pins).unwrap();
        assert_eq!(
            std::fs::read(target.join(TRAIN_IMAGES.name)).unwrap(),
            images
        );
        for p in &pins {
            assert!(stamp_matches(&target.join(p.name), p.sha256));
        }
        // A wrong pin leaves no file behind, not even a temporary one.
        let wrong = [IdxFile {
            name: TEST_IMAGES.name,
            sha256: TEST_IMAGES.sha256,
        }];
        let msg = err(install(src.path(), &target, &wrong));
        assert!(
            msg.contains("t10k-images-idx3-ubyte.gz (decompressed)")
                && msg.contains(TEST_IMAGES.sha256),
            "{msg}"
        );
        let names: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("t10k")),
            "left behind: {names:?}"
        );
        // A source directory lacking files names them before anything is copied.
        let empty = tempfile::tempdir().unwrap();
        let msg = err(fetch_fashion_mnist(cache.path(), Some(empty.path())));
        assert!(
            msg.contains("no train-images-idx3-ubyte, train-labels-idx1-ubyte")
                && msg.contains("the directory to fetch from"),
            "{msg}"
        );
        assert!(!fashion_mnist_dir(cache.path()).exists());
    }
}
