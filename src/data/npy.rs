//! Guarded reading of NumPy `.npy` and `.npz` files.
//!
//! candle's reader trusts the header: it allocates the product of the claimed shape before reading
//! a byte of data, so a 100-byte file claiming 10¹² elements aborts the process ("memory allocation
//! of 8000000000000 bytes failed"), and a shape whose product overflows `usize` panics. Every
//! `.npy`/`.npz` diffuq reads (image sets, metric inputs, FID statistics, `model eval` inputs)
//! therefore goes through this module first: the header is parsed here, the size it claims is
//! computed with checked arithmetic and compared with the bytes the file (or the archive entry)
//! actually holds, and only a file that passes is handed to candle. An archive entry's
//! uncompressed size is bounded by its compressed size (deflate cannot expand data more than
//! 1032-fold), so a lying zip directory cannot force a large allocation either.
//!
//! The format is NumPy's (`numpy.lib.format`): the magic `\x93NUMPY`, a version byte pair, a
//! little-endian header length (2 bytes in version 1, 4 in versions 2 and 3), a Python dict
//! literal with `descr`, `fortran_order` and `shape`, then exactly ∏shape · itemsize bytes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::npy::NpzTensors;
use candle_core::Tensor;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The largest expansion ratio of deflate (RFC 1951: 258 bytes from 2 bits, ≈ 1032:1).
const DEFLATE_MAX_RATIO: u64 = 1032;

/// What an `.npy` header claims, checked against the bytes that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NpyLayout {
    /// The dtype as NumPy writes it, e.g. `<f4`, `|u1`.
    pub descr: String,
    pub shape: Vec<usize>,
    /// Bytes of data the header claims (= the bytes present, once checked).
    pub data_bytes: u64,
}

/// Bytes per element of a dtype candle can read (the same set as its reader), or why not.
fn itemsize(descr: &str) -> std::result::Result<u64, String> {
    if descr.starts_with('>') {
        return Err(format!(
            "big-endian dtype `{descr}` is not supported (expected little-endian)"
        ));
    }
    Ok(match descr.trim_start_matches(['<', '=', '|']) {
        "B" | "u1" | "?" | "b1" => 1,
        "e" | "f2" | "h" | "i2" => 2,
        "f" | "f4" | "i" | "i4" | "I" | "u4" => 4,
        "d" | "f8" | "q" | "i8" => 8,
        other => {
            return Err(format!(
                "dtype `{other}` is not supported (expected float16/32/64, int16/32/64, \
                     uint8/32 or bool)"
            ))
        }
    })
}

/// The value of `key` in a NumPy header dict literal (the text after `'key':`, up to the next
/// top-level comma), or None.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// Parses an `.npy` header from `r`, which holds `total` bytes in all, and checks that exactly
/// the claimed data follow. Reads only the header (at most `total` bytes are ever allocated).
pub(crate) fn read_layout(r: &mut impl Read, total: u64) -> std::result::Result<NpyLayout, String> {
    let mut fixed = [0u8; 8];
    if total < 10 {
        return Err(format!(
            "{total} bytes: too short for an .npy header (expected the magic \\x93NUMPY)"
        ));
    }
    r.read_exact(&mut fixed)
        .map_err(|e| format!("header unreadable ({e})"))?;
    if &fixed[..6] != MAGIC {
        return Err("no .npy magic string (expected the bytes \\x93NUMPY)".into());
    }
    let len_bytes = match fixed[6] {
        1 => 2usize,
        2 | 3 => 4,
        v => {
            return Err(format!(
                "unsupported .npy format version {v} (expected 1, 2 or 3)"
            ))
        }
    };
    let mut len = [0u8; 4];
    r.read_exact(&mut len[..len_bytes])
        .map_err(|e| format!("header unreadable ({e})"))?;
    let header_len = u32::from_le_bytes(len) as u64;
    let data_start = 8 + len_bytes as u64 + header_len;
    if data_start > total {
        return Err(format!(
            "header claims {header_len} bytes of header, the file has {total} bytes in all"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header)
        .map_err(|e| format!("header unreadable ({e})"))?;
    let header = String::from_utf8(header).map_err(|_| "header is not text".to_string())?;
    let descr = dict_value(&header, "descr")
        .map(|v| v.trim_matches(|c: char| c == '\'' || c == '"'))
        .ok_or_else(|| "header has no `descr`".to_string())?
        .to_string();
    let size = itemsize(&descr)?;
    match dict_value(&header, "fortran_order") {
        Some("False") | None => {}
        Some("True") => {
            return Err("Fortran-order array (expected C order, NumPy's default)".into());
        }
        Some(v) => return Err(format!("header `fortran_order` is `{v}`")),
    }
    let shape_text =
        dict_value(&header, "shape").ok_or_else(|| "header has no `shape`".to_string())?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("header `shape` is `{shape_text}` (expected a tuple)"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("header `shape` is `{shape_text}` (expected integers ≥ 0)"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let claimed = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("shape {shape:?} of `{descr}` overflows any possible file size"))?;
    let present = total - data_start;
    if claimed != present {
        return Err(format!(
            "header claims shape {shape:?} of `{descr}` ({claimed} bytes of data), the file has \
             {present}"
        ));
    }
    Ok(NpyLayout {
        descr,
        shape,
        data_bytes: claimed,
    })
}

/// The layout of the `.npy` at `path`, checked against the file's size.
pub(crate) fn npy_layout(path: &Path) -> std::result::Result<NpyLayout, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let total = file.metadata().map_err(|e| e.to_string())?.len();
    read_layout(&mut BufReader::new(file), total)
}

/// Reads an `.npy` after checking its header against the file: the error (the reason only; the
/// caller names the file) never follows an allocation the file cannot back.
pub fn read_npy(path: &Path) -> std::result::Result<Tensor, String> {
    npy_layout(path)?;
    Tensor::read_npy(path).map_err(|e| e.to_string())
}

/// Opens an `.npz` after checking every array in it as [`read_npy`] does (each entry's size
/// bounded by its compressed size), so that later `get`s cannot over-allocate.
pub fn open_npz(path: &Path) -> std::result::Result<NpzTensors, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| format!("not a zip archive ({e})"))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| format!("archive entry {i} unreadable ({e})"))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("#{i}"));
        let (size, packed) = (entry.size(), entry.compressed_size());
        let bound = match entry.compression() {
            zip::CompressionMethod::Stored => packed,
            _ => packed
                .saturating_mul(DEFLATE_MAX_RATIO)
                .saturating_add(1024),
        };
        if size > bound {
            return Err(format!(
                "entry `{name}` claims {size} bytes from {packed} compressed (at most {bound} \
                 possible)"
            ));
        }
        read_layout(&mut entry, size).map_err(|e| format!("entry `{name}`: {e}"))?;
    }
    NpzTensors::new(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An .npy as NumPy 1.26's `np.save` writes it (format 1.0, header padded to a multiple of
    /// 64 bytes, ending in a newline).
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    fn layout(bytes: &[u8]) -> std::result::Result<NpyLayout, String> {
        read_layout(&mut &bytes[..], bytes.len() as u64)
    }

    #[test]
    fn accepts_what_candle_writes_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let t = Tensor::arange(0f32, 12.0, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        t.write_npy(&p).unwrap();
        let l = npy_layout(&p).unwrap();
        assert_eq!((l.shape.clone(), l.data_bytes), (vec![3, 4], 48));
        let back = read_npy(&p).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn scalars_and_empty_arrays_have_their_exact_sizes() {
        assert_eq!(
            layout(&npy("<f8", "()", &[0; 8])).unwrap().shape,
            Vec::<usize>::new()
        );
        assert_eq!(
            layout(&npy("|u1", "(4, 0, 0, 3)", &[])).unwrap().data_bytes,
            0
        );
        assert_eq!(
            layout(&npy("<i8", "(3,)", &[0; 24])).unwrap().shape,
            vec![3]
        );
    }

    #[test]
    fn claims_the_file_cannot_back_are_errors_before_any_allocation() {
        // The two headers found aborting / panicking the binary (issue: bad input).
        let e = layout(&npy("<f8", "(1000000000000,)", &[0; 16])).unwrap_err();
        assert!(
            e.contains("(8000000000000 bytes of data), the file has 16"),
            "{e}"
        );
        let big = 1usize << 62;
        let e = layout(&npy("<f4", &format!("({big}, {big})"), &[])).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        // Truncated data, trailing bytes, a header longer than the file.
        assert!(layout(&npy("<f4", "(3,)", &[0; 8])).is_err());
        assert!(layout(&npy("<f4", "(3,)", &[0; 16])).is_err());
        let mut b = npy("<f4", "(1,)", &[0; 4]);
        b[8] = 0xff;
        b[9] = 0xff;
        assert!(layout(&b).unwrap_err().contains("bytes of header"));
    }

    #[test]
    fn unsupported_headers_name_what_was_expected() {
        assert!(layout(&npy(">f4", "(1,)", &[0; 4]))
            .unwrap_err()
            .contains("big-endian"));
        assert!(layout(&npy("<c8", "(1,)", &[0; 8]))
            .unwrap_err()
            .contains("not supported"));
        let mut f = npy("<f4", "(1,)", &[0; 4]);
        let at = f.windows(5).position(|w| w == b"False").unwrap();
        f[at..at + 5].copy_from_slice(b"True ");
        assert!(layout(&f).unwrap_err().contains("Fortran"));
        assert!(layout(b"not an npy file at all")
            .unwrap_err()
            .contains("magic"));
        assert!(layout(b"\x93NUMPY").unwrap_err().contains("too short"));
    }

    #[test]
    fn npz_entries_are_checked_and_a_good_archive_opens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("good.npz");
        let a = Tensor::ones((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        Tensor::write_npz(&[("mu", &a)], &p).unwrap();
        let npz = open_npz(&p).unwrap();
        assert_eq!(npz.get("mu").unwrap().unwrap().dims(), &[2, 3]);

        // A stored entry whose header claims more than the entry holds.
        let bad = dir.path().join("bad.npz");
        let mut w = zip::ZipWriter::new(File::create(&bad).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("arr_0.npy", opts).unwrap();
        std::io::Write::write_all(&mut w, &npy("<f8", "(1000000000000,)", &[0; 8])).unwrap();
        w.finish().unwrap();
        let e = open_npz(&bad).err().expect("the lying entry was accepted");
        assert!(
            e.contains("entry `arr_0.npy`") && e.contains("bytes of data"),
            "{e}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Random bytes and single-byte mutations of a valid file never panic, and whatever is
        /// accepted has exactly the bytes it claims (so reading it allocates at most the file).
        #[test]
        fn mutated_headers_never_panic(pos in 0usize..80, byte in any::<u8>(),
                                       junk in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut good = npy("<f4", "(2, 3)", &[0; 24]);
            let i = pos % good.len();
            good[i] = byte;
            for bytes in [good, junk] {
                if let Ok(l) = layout(&bytes) {
                    prop_assert!(l.data_bytes <= bytes.len() as u64);
                }
            }
        }
    }
}
