//! Every file reader on random and mutated bytes: an error (exit 2 at the CLI), never a panic or
//! an unbounded allocation. Seeds of the mutations are valid files of each format: a safetensors,
//! a torch zip, a legacy (pre-1.6, raw pickle) .pth and a TorchScript archive from golden/ (written
//! by the reference libraries: diffusers, guided-diffusion, torch.save with
//! `_use_new_zipfile_serialization=False`, torch.jit via OpenAI CLIP), a gzipped IDX file written
//! here in the format's layout, an ADM-style image .npz, a pytorch-fid statistics .npz (mu, sigma),
//! a parquet frame and a run manifest written by diffuq (what `report`, reuse and `merge` read from
//! run and shard directories), and gu-fig2's experiment file (through the config resolver). What is
//! checked is diffuq's contract (src/error.rs: one-line errors), not numbers.

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Call `read` on `bytes` written to a file named `name`; it must return (Ok or Err), not panic.
fn survives(name: &str, bytes: &[u8], read: Reader) -> std::result::Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    std::panic::catch_unwind(|| read(&p))
        .map(|_| ())
        .map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("{name}: panicked: {msg}")
        })
}

fn tensors(p: &Path) -> bool {
    diffuq::checkpoint::read_tensors(p).is_ok()
}
fn idx(p: &Path) -> bool {
    diffuq::data::fashion_mnist::read_idx_images(p).is_ok()
}
fn images(p: &Path) -> bool {
    diffuq::data::images::read_image_set(p).is_ok()
}
fn metric_input(p: &Path) -> bool {
    diffuq::metrics::inputs::read_input(p).is_ok()
}
/// A frame of a run directory, as `report` and `merge` read it (`manifest.json` only has to exist).
fn run_frame(p: &Path) -> bool {
    let dir = p.parent().unwrap();
    std::fs::write(dir.join("manifest.json"), "{}").unwrap();
    diffuq::tracking::RunDir::open(dir)
        .and_then(|d| d.read_parquet("metrics.parquet"))
        .is_ok()
}
/// A run's (or shard's) manifest.
fn run_manifest(p: &Path) -> bool {
    diffuq::tracking::RunDir::open(p.parent().unwrap())
        .and_then(|d| d.manifest())
        .is_ok()
}
/// An experiment file through the resolver (`diffuq validate`): `<dir>/gu-fig2/experiment.toml`.
fn experiment_file(p: &Path) -> bool {
    let exp = p.parent().unwrap().parent().unwrap();
    let inv = diffuq::experiments::Invocation {
        artifact: "gu-fig2".into(),
        scale: "smoke".into(),
        overrides: vec![],
        env: vec![],
        experiments_dir: exp.to_path_buf(),
    };
    diffuq::experiments::find_in(exp, "gu-fig2")
        .and_then(|a| a.validate(&inv, &exp.join("runs")))
        .is_ok()
}

/// How many seed files [`seed_files`] returns.
const SEEDS: usize = 11;

/// A reader: true when the file read.
type Reader = fn(&Path) -> bool;

/// (file name, valid bytes, the reader of that format).
fn seed_files() -> Vec<(&'static str, Vec<u8>, Reader)> {
    let golden = Path::new(ROOT).join("golden");
    let mut idx_file = vec![];
    {
        let mut gz = flate2::write::GzEncoder::new(&mut idx_file, flate2::Compression::fast());
        let mut raw = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 4];
        raw.extend((0..32u8).collect::<Vec<_>>());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap();
    }
    let npz = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        let x = candle_core::Tensor::zeros(
            (2, 4, 4, 3),
            candle_core::DType::U8,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        candle_core::Tensor::write_npz(&[("arr_0", &x)], &p).unwrap();
        std::fs::read(p).unwrap()
    };
    // pytorch-fid's statistics layout: mu (D,), sigma (D, D), f64.
    let stats = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        let dev = candle_core::Device::Cpu;
        let mu = candle_core::Tensor::zeros(3, candle_core::DType::F64, &dev).unwrap();
        let sigma = candle_core::Tensor::eye(3, candle_core::DType::F64, &dev).unwrap();
        candle_core::Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], &p).unwrap();
        std::fs::read(p).unwrap()
    };
    // A frame and a manifest as a finished run writes them.
    let (frame, manifest) = {
        let dir = tempfile::tempdir().unwrap();
        let run = diffuq::tracking::RunDir::create(dir.path(), "gu-fig2", "smoke", "0123").unwrap();
        let mut df = polars::df!(
            "seed" => [0u64, 0, 1],
            "set" => ["all", "kept", "all"],
            "share_between" => [0.1f64, 0.01, f64::NAN],
        )
        .unwrap();
        run.write_parquet("metrics.parquet", &mut df).unwrap();
        let m = diffuq::tracking::Manifest::new("gu-fig2", "smoke", "0123", "cpu");
        run.write_manifest(&m).unwrap();
        (
            std::fs::read(run.path().join("metrics.parquet")).unwrap(),
            std::fs::read(run.path().join("manifest.json")).unwrap(),
        )
    };
    vec![
        (
            "model.safetensors",
            std::fs::read(golden.join("unet2d/tiny/diffusion_pytorch_model.safetensors")).unwrap(),
            tensors as Reader,
        ),
        (
            "model.pt",
            std::fs::read(golden.join("adm/legacy_tiny/model.pt")).unwrap(),
            tensors,
        ),
        (
            "legacy.pth",
            std::fs::read(golden.join("inception/tiny_legacy.pth")).unwrap(),
            tensors,
        ),
        (
            "torchscript.pt",
            std::fs::read(golden.join("clip/openai_tiny/model.pt")).unwrap(),
            tensors,
        ),
        ("train-images-idx3-ubyte.gz", idx_file, idx),
        ("images.npz", npz.clone(), images),
        ("features.npz", npz, metric_input),
        ("stats.npz", stats, metric_input),
        ("metrics.parquet", frame, run_frame),
        ("manifest.json", manifest, run_manifest),
        (
            "gu-fig2/experiment.toml",
            std::fs::read(Path::new(ROOT).join("experiments/gu-fig2/experiment.toml")).unwrap(),
            experiment_file,
        ),
    ]
}

#[test]
fn truncated_files_are_errors() {
    assert_eq!(seed_files().len(), SEEDS);
    for (name, bytes, read) in seed_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(&p), "{name}: the unmutated seed must read");
        for cut in [
            0,
            1,
            7,
            8,
            16,
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len() - 1,
        ] {
            survives(name, &bytes[..cut.min(bytes.len())], read).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, .. ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(which in 0usize..SEEDS, flips in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..16)) {
        let (name, mut bytes, read) = seed_files().swap_remove(which);
        for (pos, v) in flips {
            let i = pos as usize % bytes.len();
            bytes[i] ^= v | 1;
        }
        prop_assert!(survives(name, &bytes, read).is_ok(), "{}", survives(name, &bytes, read).unwrap_err());
    }

    #[test]
    fn random_bytes_never_panic(which in 0usize..SEEDS, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (name, _, read) = seed_files().swap_remove(which);
        prop_assert!(survives(name, &bytes, read).is_ok(), "{}", survives(name, &bytes, read).unwrap_err());
    }
}
