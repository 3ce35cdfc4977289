//! Reading checkpoints into named tensors: the one place diffuq parses weight files, used by the
//! FID Inception extractor and every network loader.
//!
//! Formats: `.safetensors`; PyTorch zip archives (`torch.save` since 1.6: `.pt`, `.pth`, `.bin`,
//! and TorchScript archives, whose `data.pkl` holds the module tree), read with candle's pickle
//! parser by walking nested dicts and modules; and the legacy (torch < 1.6) `.pth` layout, a run
//! of pickles followed by raw storages. Tensors are named by their dotted path from the file's
//! root object (a state dict's keys; TorchScript: `net.layers.conv.weight`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result, TensorContext};

/// The JSON config of the checkpoint at `path`, as the network loaders read it: `config.json` in a
/// directory; beside a weight file, `<stem>.json` if it exists (`128x128_diffusion.pt` +
/// `128x128_diffusion.json`), else `config.json`.
pub fn config_beside(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.join("config.json");
    }
    let own = path.with_extension("json");
    if own.exists() && own != path {
        own
    } else {
        path.parent().unwrap_or(Path::new(".")).join("config.json")
    }
}

/// [`config_beside`] when it exists, parses as JSON and `is` accepts it (which architecture a
/// checkpoint is).
pub fn config_if(path: &Path, is: impl Fn(&serde_json::Value) -> bool) -> Option<PathBuf> {
    let cfg = config_beside(path);
    let text = std::fs::read_to_string(&cfg).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    is(&v).then_some(cfg)
}

/// All tensors of a TorchScript archive, a `.pth` (zip or legacy format) or a `.safetensors`
/// file, on the CPU, named by their dotted path from the file's root object (TorchScript:
/// `net.layers.conv.weight`).
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let what = format!("weight file {}", path.display());
    let mut head = [0u8; 4];
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    if n == 4 && head == *b"PK\x03\x04" {
        read_zip_tensors(path, &what)
    } else if n >= 1 && head[0] == 0x80 {
        read_legacy_tensors(path, &what)
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        let map = candle_core::safetensors::load(path, &Device::Cpu).ctx(&what)?;
        Ok(map.into_iter().collect())
    } else {
        Err(Error::invalid(
            what,
            "not a TorchScript/.pth zip archive, a legacy .pth or a .safetensors file",
        ))
    }
}

fn pickle_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(what.to_string(), format!("unreadable pickle ({e})"))
}

/// candle's pickle decoder panics on some corrupt inputs (an integer opcode whose shift
/// overflows, found by tests/reader_fuzz.rs), so it runs inside [`crate::contain_panic`].
fn read_pickle<R: BufRead>(r: &mut R, what: &str) -> Result<Object> {
    crate::contain_panic(|| {
        let mut stack = Stack::empty();
        stack.read_loop(r).map_err(|e| pickle_error(what, e))?;
        stack.finalize().map_err(|e| pickle_error(what, e))
    })
    .map_err(|e| pickle_error(what, e))?
}

/// Collect every tensor reachable from `obj` through dicts (state dicts, module attributes) and
/// `BUILD`s (modules, `OrderedDict`s with `_metadata`), naming it by the dotted key path.
/// `storage_dir` is what candle prefixes storage keys with.
fn collect_tensors(obj: Object, prefix: &str, storage_dir: &Path, out: &mut Vec<TensorInfo>) {
    match obj {
        Object::Dict(entries) => {
            for (k, v) in entries {
                let key = match k {
                    Object::Unicode(s) => s,
                    Object::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                match v {
                    Object::Reduce { .. } => {
                        if let Ok(Some(info)) =
                            v.into_tensor_info(Object::Unicode(name), storage_dir)
                        {
                            out.push(info);
                        }
                    }
                    other => collect_tensors(other, &name, storage_dir, out),
                }
            }
        }
        Object::Build { callable, args } => {
            collect_tensors(*callable, prefix, storage_dir, out);
            collect_tensors(*args, prefix, storage_dir, out);
        }
        _ => {}
    }
}

/// Cut a tensor out of its storage's bytes (contiguous tensors only, as `torch.save` writes them).
fn tensor_from_storage(info: &TensorInfo, storage: &[u8], what: &str) -> Result<Tensor> {
    let name = &info.name;
    if !info.layout.is_contiguous() {
        return Err(Error::invalid(
            what.to_string(),
            format!(
                "tensor `{name}` is not contiguous (stride {:?})",
                info.layout.stride()
            ),
        ));
    }
    // candle records the storage offset in bytes.
    let start = info.layout.start_offset();
    let len = info.layout.shape().elem_count() * info.dtype.size_in_bytes();
    let bytes = storage.get(start..start + len).ok_or_else(|| {
        Error::invalid(
            what.to_string(),
            format!(
                "tensor `{name}` needs bytes {start}..{} of its storage, which has {}",
                start + len,
                storage.len()
            ),
        )
    })?;
    Tensor::from_raw_buffer(bytes, info.dtype, info.layout.dims(), &Device::Cpu)
        .ctx(&format!("{what}: tensor `{name}`"))
}

/// TorchScript archives and zip-format `.pth`: `<dir>/data.pkl` + `<dir>/data/<key>` storages.
fn read_zip_tensors(path: &Path, what: &str) -> Result<Vec<(String, Tensor)>> {
    let bad = |reason: String| Error::invalid(what.to_string(), reason);
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| bad(format!("unreadable zip ({e})")))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.into_owned())
        .ok_or_else(|| bad("zip file without `<name>/data.pkl`: not a torch archive".into()))?;
    let storage_dir = Path::new(pkl.strip_suffix(".pkl").expect("ends with .pkl")).to_path_buf();
    let root = {
        let entry = zip
            .by_name(&pkl)
            .map_err(|e| bad(format!("`{pkl}`: {e}")))?;
        read_pickle(&mut BufReader::new(entry), &format!("{what}: `{pkl}`"))?
    };
    let mut infos = Vec::new();
    collect_tensors(root, "", &storage_dir, &mut infos);
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        if !storages.contains_key(&info.path) {
            let mut entry = zip.by_name(&info.path).map_err(|e| {
                bad(format!(
                    "storage `{}` of tensor `{}`: {e}",
                    info.path, info.name
                ))
            })?;
            // The entry's declared size is a header field: reserve no more than the archive
            // holds (a corrupt 2⁶¹ aborted the process in tests/reader_fuzz.rs); read_to_end
            // grows the buffer for what is really there.
            let mut buf = Vec::with_capacity(entry.size().min(file_len) as usize);
            entry
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("reading `{}`: {e}", info.path)))?;
            storages.insert(info.path.clone(), buf);
        }
        let t = tensor_from_storage(&info, &storages[&info.path], what)?;
        out.push((info.name, t));
    }
    Ok(out)
}

/// The legacy (torch < 1.6) `.pth` layout: pickles of the magic number, the protocol version
/// (1001), system info and the object, then a pickled list of storage keys, then per key an
/// 8-byte little-endian element count followed by the raw little-endian elements.
fn read_legacy_tensors(path: &Path, what: &str) -> Result<Vec<(String, Tensor)>> {
    // pickle protocol 2 of the int 0x1950a86a20f9469cfc6c (torch.serialization's MAGIC_NUMBER).
    const MAGIC: [u8; 15] = [
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
    ];
    let bad = |reason: String| Error::invalid(what.to_string(), reason);
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = BufReader::new(file);
    let mut head = [0u8; 15];
    r.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
    if head != MAGIC {
        return Err(bad(
            "a pickle, but not a torch.save file (no legacy magic number)".into(),
        ));
    }
    match read_pickle(&mut r, what)? {
        Object::Int(1001) => {}
        other => {
            return Err(bad(format!(
                "legacy protocol version {other:?}, expected 1001"
            )))
        }
    }
    if let Object::Dict(info) = read_pickle(&mut r, what)? {
        let little = info
            .iter()
            .find(|(k, _)| *k == Object::Unicode("little_endian".into()));
        if let Some((_, Object::Bool(false))) = little {
            return Err(bad("saved on a big-endian machine; not supported".into()));
        }
    }
    let root = read_pickle(&mut r, what)?;
    let storage_dir = Path::new("legacy");
    let mut infos = Vec::new();
    collect_tensors(root, "", storage_dir, &mut infos);
    let keys = match read_pickle(&mut r, what)? {
        Object::List(keys) => keys,
        other => return Err(bad(format!("storage key list expected, found {other:?}"))),
    };
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, info) in infos.iter().enumerate() {
        by_key
            .entry(info.path.trim_start_matches("legacy/").to_string())
            .or_default()
            .push(i);
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for key in keys {
        let key = match key {
            Object::Unicode(k) => k,
            other => return Err(bad(format!("storage key {other:?} is not a string"))),
        };
        let elem = match by_key.get(&key) {
            Some(ix) => infos[ix[0]].dtype.size_in_bytes(),
            None => return Err(bad(format!("storage `{key}` is used by no tensor"))),
        };
        let mut count = [0u8; 8];
        r.read_exact(&mut count).map_err(|e| Error::io(path, e))?;
        let bytes = (u64::from_le_bytes(count) as usize)
            .checked_mul(elem)
            .ok_or_else(|| bad(format!("storage `{key}` size overflows")))?;
        let mut buf = Vec::new();
        (&mut r)
            .take(bytes as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        if buf.len() != bytes {
            return Err(bad(format!(
                "truncated: storage `{key}` has {} of {bytes} bytes",
                buf.len()
            )));
        }
        storages.insert(key, buf);
    }
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let key = info.path.trim_start_matches("legacy/").to_string();
        let storage = storages.get(&key).ok_or_else(|| {
            bad(format!(
                "storage `{key}` of tensor `{}` is missing",
                info.name
            ))
        })?;
        let t = tensor_from_storage(&info, storage, what)?;
        out.push((info.name, t));
    }
    Ok(out)
}
