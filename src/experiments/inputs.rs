//! The files a run reads from outside the repository: the papers' checkpoints, data sets and
//! FID reference batches that no package registry ships (paper scale).
//!
//! An experiment file names them in three tables of its `paper` profile, one key per file:
//!
//! ```toml
//! [paper.weights]
//! model = "128x128_diffusion.pt"           # guided-diffusion ADM ImageNet-128
//! clip = "clip-vit-base-patch32"           # GU's semantic φ
//! [paper.data]
//! laplace = "VIRTUAL_imagenet128_labeled.npz"
//! [paper.reference]
//! fid = "VIRTUAL_imagenet128_labeled.npz"
//! ```
//!
//! A relative value is a path under the paper-files directory, `<cache>/diffuq/paper`
//! ([`paper_dir`]: `$XDG_CACHE_HOME/diffuq/paper`, else `~/.cache/diffuq/paper`), so that a reviewer
//! downloads each file once under its published name; an absolute value (or a `key=value`
//! override such as `weights.model=/data/ckpt/128x128_diffusion.pt`) is used as it is.
//! `diffuq validate <artifact> --scale paper` lists every file with whether it is there and where
//! it is published; `diffuq run` refuses to start (exit 2, one line naming each missing key and
//! file) before any compute.
//!
//! The keys are left out of resolved configurations when empty, so artifacts and scales without
//! external files kept their configuration hashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `[weights]`, `[data]` or `[reference]`: key → file name (under [`paper_dir`]) or path.
pub type FileKeys = BTreeMap<String, String>;

/// The three tables of files, as every experiment kind's configuration holds them.
#[derive(Debug, Clone, Copy)]
pub struct Tables<'a> {
    pub weights: &'a FileKeys,
    pub data: &'a FileKeys,
    pub reference: &'a FileKeys,
}

/// One external file of a resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct InputFile {
    /// The configuration key (`weights.model`).
    pub key: String,
    /// The path it resolves to.
    pub path: PathBuf,
    /// Whether that path exists.
    pub found: bool,
    /// Where the file is published and what it is, when diffuq knows it.
    pub published: Option<&'static Published>,
}

/// A file the papers use, by its published name.
#[derive(Debug, PartialEq)]
pub struct Published {
    /// The file (or directory) name as published.
    pub name: &'static str,
    /// What it is.
    pub what: &'static str,
    /// Where to get it.
    pub source: &'static str,
}

/// The papers' external files diffuq's paper profiles name. Sources were checked against the
/// releasing repositories' READMEs; the Google-Drive-only U-ViT files are named by their README.
pub const PUBLISHED: &[Published] = &[
    Published {
        name: "64x64_diffusion.pt",
        what: "guided-diffusion ADM ImageNet-64, class-conditional (AU Tables 1-3)",
        source: "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt",
    },
    Published {
        name: "128x128_diffusion.pt",
        what: "guided-diffusion ADM ImageNet-128, class-conditional (AU Table 1, GU Figs. 3/4/6/16, Table 1)",
        source: "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/128x128_diffusion.pt",
    },
    Published {
        name: "VIRTUAL_imagenet64_labeled.npz",
        what: "ADM's ImageNet-64 reference batch: 10,000 training images, uint8 (N, 64, 64, 3) in arr_0",
        source: "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz",
    },
    Published {
        name: "VIRTUAL_imagenet128_labeled.npz",
        what: "ADM's ImageNet-128 reference batch: 10,000 training images, uint8 (N, 128, 128, 3) in arr_0",
        source: "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/128/VIRTUAL_imagenet128_labeled.npz",
    },
    Published {
        name: "VIRTUAL_imagenet256_labeled.npz",
        what: "ADM's ImageNet-256 reference batch: 10,000 training images, uint8 (N, 256, 256, 3) in arr_0",
        source: "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz",
    },
    Published {
        name: "imagenet64_val.npz",
        what: "ImageNet-64 validation images as uint8 (N, 64, 64, 3) in arr_0 (labels in arr_1): AU Table 2's test images; convert the downsampled-ImageNet release (Imagenet64_val) to this layout",
        source: "https://image-net.org/download-images (Downsampled ImageNet 64x64, registration required)",
    },
    Published {
        name: "imagenet256_uvit_huge.pth",
        what: "U-ViT-H/2 ImageNet-256 latent model (AU, GU Fig. 3)",
        source: "https://github.com/baofff/U-ViT (README, 'Pretrained Models': Google Drive)",
    },
    Published {
        name: "imagenet512_uvit_huge.pth",
        what: "U-ViT-H/4 ImageNet-512 latent model (AU)",
        source: "https://github.com/baofff/U-ViT (README, 'Pretrained Models': Google Drive)",
    },
    Published {
        name: "autoencoder_kl_ema.pth",
        what: "Stable Diffusion KL-f8 autoencoder as U-ViT ships it (latent scale 0.18215)",
        source: "https://github.com/baofff/U-ViT (README, 'Preparation Before Training and Evaluation': Google Drive)",
    },
    Published {
        name: "sd-vae-ft-ema",
        what: "Stable Diffusion KL-f8 autoencoder, diffusers layout (DiT's decoder)",
        source: "https://huggingface.co/stabilityai/sd-vae-ft-ema",
    },
    Published {
        name: "DiT-XL-2-256x256.pt",
        what: "DiT-XL/2 ImageNet-256 latent model",
        source: "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
    },
    Published {
        name: "lfm-imagenet256-dit",
        what: "Flow Matching in Latent Space (Dao et al. 2023) class-conditional ImageNet-256 DiT (GU App. C.7); diffuq's name for it: save the checkpoint its README's table lists under this name",
        source: "https://github.com/VinAIResearch/LFM (README, 'Testing': checkpoint table)",
    },
    Published {
        name: "ddpm-cifar10-32",
        what: "DDPM CIFAR-10 (diffusers UNet2DModel directory; AU's CIFAR-10 rows)",
        source: "https://huggingface.co/google/ddpm-cifar10-32",
    },
    Published {
        name: "clip-vit-base-patch32",
        what: "CLIP ViT-B/32 (transformers layout; GU's semantic features, as clip.load(\"ViT-B/32\"))",
        source: "https://huggingface.co/openai/clip-vit-base-patch32",
    },
];

/// Where relative file names of `[weights]`, `[data]` and `[reference]` are looked up:
/// `paper` beside diffuq's weights cache (`~/.cache/diffuq/paper`).
pub fn paper_dir() -> PathBuf {
    let weights = crate::fetch::default_cache_dir();
    weights
        .parent()
        .map(|p| p.join("paper"))
        .unwrap_or_else(|| PathBuf::from("paper"))
}

/// `value` as a path: absolute as given, relative under `dir`.
pub fn resolve_in(dir: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// The published entry whose name is the last component of `value`.
pub fn published(value: &str) -> Option<&'static Published> {
    let name = Path::new(value).file_name()?.to_str()?;
    PUBLISHED.iter().find(|p| p.name == name)
}

/// Every file the tables name, in key order (`data.*`, `reference.*`, `weights.*`), resolved
/// under `dir`. An empty value is a configuration error naming the key.
pub fn list_in(dir: &Path, t: Tables<'_>) -> Result<Vec<InputFile>> {
    let mut out = vec![];
    for (table, keys) in [
        ("data", t.data),
        ("reference", t.reference),
        ("weights", t.weights),
    ] {
        for (k, v) in keys {
            let key = format!("{table}.{k}");
            if v.trim().is_empty() {
                return Err(Error::invalid(
                    key,
                    "is empty: expected a file name under the paper-files directory or a path",
                ));
            }
            let path = resolve_in(dir, v);
            out.push(InputFile {
                found: path.exists(),
                published: published(v),
                key,
                path,
            });
        }
    }
    Ok(out)
}

/// [`list_in`] under [`paper_dir`].
pub fn list(t: Tables<'_>) -> Result<Vec<InputFile>> {
    list_in(&paper_dir(), t)
}

/// One line per file, as `validate` prints them.
pub fn describe(f: &InputFile) -> String {
    let state = if f.found { "found  " } else { "MISSING" };
    let from = f
        .published
        .map(|p| format!(" — {}; {}", p.what, p.source))
        .unwrap_or_default();
    format!("{state} {} = {}{from}", f.key, f.path.display())
}

/// Ok when every file exists; otherwise one error line naming each missing key, its path and
/// where it is published.
pub fn require(files: &[InputFile]) -> Result<()> {
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !f.found)
        .map(|f| {
            let from = f
                .published
                .map(|p| format!(" (published at {})", p.source))
                .unwrap_or_default();
            format!("{} = {}{from}", f.key, f.path.display())
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingInputs {
            count: missing.len(),
            list: missing.join("; "),
        })
    }
}

/// The single file a key names, resolved under [`paper_dir`]; an error naming the key when the
/// table lacks it.
pub fn path_of(table: &str, keys: &FileKeys, key: &str) -> Result<PathBuf> {
    let v = keys.get(key).ok_or_else(|| {
        Error::invalid(
            format!("{table}.{key}"),
            "is not set: this profile needs it (a file name under the paper-files directory or a path)",
        )
    })?;
    Ok(resolve_in(&paper_dir(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> FileKeys {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const OPENAI_DIFFUSION: &str = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021";

    #[test]
    fn published_names_are_unique_and_end_their_urls() {
        for p in PUBLISHED {
            if p.source.starts_with(OPENAI_DIFFUSION) {
                let tail = &p.source[OPENAI_DIFFUSION.len()..];
                assert!(tail.ends_with(p.name), "{}: {}", p.name, p.source);
            }
        }
        let names: std::collections::BTreeSet<_> = PUBLISHED.iter().map(|p| p.name).collect();
        assert_eq!(names.len(), PUBLISHED.len(), "duplicate published names");
    }

    #[test]
    fn lists_resolves_and_requires_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("128x128_diffusion.pt"), b"x").unwrap();
        let w = keys(&[
            ("model", "128x128_diffusion.pt"),
            ("clip", "/nonexistent/clip-vit-base-patch32"),
        ]);
        let r = keys(&[("fid", "VIRTUAL_imagenet128_labeled.npz")]);
        let d = FileKeys::new();
        let files = list_in(
            dir.path(),
            Tables {
                weights: &w,
                data: &d,
                reference: &r,
            },
        )
        .unwrap();
        let ks: Vec<&str> = files.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(ks, ["reference.fid", "weights.clip", "weights.model"]);
        assert!(!files[0].found && !files[1].found && files[2].found);
        assert_eq!(
            files[1].path,
            Path::new("/nonexistent/clip-vit-base-patch32")
        );
        assert_eq!(files[2].path, dir.path().join("128x128_diffusion.pt"));
        assert_eq!(
            files[0].published.unwrap().name,
            "VIRTUAL_imagenet128_labeled.npz"
        );
        assert!(describe(&files[2]).starts_with("found"));
        let e = require(&files).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.contains("2 missing")
                && e.contains("reference.fid")
                && e.contains("weights.clip")
                && e.contains("ref_batches/imagenet/128")
                && !e.contains("weights.model"),
            "{e}"
        );
        assert!(require(&files[2..]).is_ok());
    }

    #[test]
    fn an_empty_value_names_its_key() {
        let w = keys(&[("model", " ")]);
        let e = FileKeys::new();
        let err = list_in(
            Path::new("/"),
            Tables {
                weights: &w,
                data: &e,
                reference: &e,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("weights.model") && err.contains("empty"),
            "{err}"
        );
    }
}
