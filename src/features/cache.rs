//! Feature cache keyed by the content of an image set.
//!
//! FID, precision/recall, realism and rarity all start from the same Inception features, and a
//! reference set (50k images) costs far more to embed than any metric costs to compute. The key
//! is a SHA-256 over everything that determines the features — a format tag, the extractor's
//! identity (e.g. the weights' sha256), the preprocessing, and the images' dtype, shape and raw
//! bytes — so a changed image, resize rule or weight file can never return stale features.
//!
//! Entries are `<dir>/features-<key>.safetensors` with one f32 tensor `features` (N, F), written
//! atomically (temporary file, then rename), so an interrupted run leaves no half entry. An
//! entry that cannot be read back as such a tensor with N rows is derived data, not a result: it
//! is recomputed and overwritten.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, TensorContext};

const FORMAT: &str = "diffuq-feature-cache v1";

/// A directory of cached feature matrices.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of `images` (any dtype, any shape with samples first) embedded by
    /// `extractor` (its identity, e.g. `inception:<sha256>`) after `preprocess` (a description
    /// of the input pipeline, e.g. `format!("{:?}", Preprocess::PYTORCH_FID)`).
    pub fn key(extractor: &str, preprocess: &str, images: &Tensor) -> Result<String> {
        let mut h = Sha256::new();
        for part in [FORMAT, extractor, preprocess] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(format!("{:?}{:?}", images.dtype(), images.dims()).as_bytes());
        let flat = images
            .flatten_all()
            .and_then(|t| t.to_device(&Device::Cpu))
            .ctx("feature cache: images")?;
        match images.dtype() {
            DType::U8 => h.update(flat.to_vec1::<u8>().ctx("feature cache: images")?),
            DType::F32 => {
                for v in flat.to_vec1::<f32>().ctx("feature cache: images")? {
                    h.update(v.to_le_bytes());
                }
            }
            _ => {
                for v in flat
                    .to_dtype(DType::F64)
                    .and_then(|t| t.to_vec1::<f64>())
                    .ctx("feature cache: images")?
                {
                    h.update(v.to_le_bytes());
                }
            }
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The file of `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("features-{key}.safetensors"))
    }

    /// The cached features of `key` (expected to have `rows` rows), or `None` when absent or
    /// unreadable.
    pub fn get(&self, key: &str, rows: usize) -> Option<Tensor> {
        let path = self.path(key);
        let mut map = candle_core::safetensors::load(&path, &Device::Cpu).ok()?;
        let t = map.remove("features")?;
        match t.dims() {
            [n, _] if *n == rows && t.dtype() == DType::F32 => Some(t),
            _ => None,
        }
    }

    /// Stores `features` (N, F) under `key` atomically.
    pub fn put(&self, key: &str, features: &Tensor) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.path(key);
        let t = features
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(&Device::Cpu))
            .ctx("feature cache: features")?;
        let tensors = std::collections::HashMap::from([("features", t)]);
        crate::tracking::write_atomically(&path, |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(|e| {
                Error::invalid(format!("{}", path.display()), format!("writing cache: {e}"))
            })
        })
    }

    /// Cached features of `key`, or `compute()` stored under it. `rows` is the number of images.
    pub fn get_or_compute(
        &self,
        key: &str,
        rows: usize,
        compute: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some(t) = self.get(key, rows) {
            return Ok(t);
        }
        let t = compute()?;
        match t.dims() {
            [n, _] if *n == rows => {}
            s => {
                return Err(Error::invalid(
                    "feature cache: computed features",
                    format!("shape {s:?}; expected ({rows}, F)"),
                ))
            }
        }
        self.put(key, &t)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_content_and_pipeline_and_cache_round_trips() {
        let a = Tensor::from_vec(vec![0u8, 1, 2, 3, 4, 5], (2, 3), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![0u8, 1, 2, 3, 4, 6], (2, 3), &Device::Cpu).unwrap();
        let b_shape = Tensor::from_vec(vec![0u8, 1, 2, 3, 4, 5], (3, 2), &Device::Cpu).unwrap();
        let k = FeatureCache::key("x", "p", &a).unwrap();
        assert_eq!(k.len(), 64);
        assert_eq!(k, FeatureCache::key("x", "p", &a).unwrap());
        for other in [
            FeatureCache::key("x", "p", &b).unwrap(),
            FeatureCache::key("x", "p", &b_shape).unwrap(),
            FeatureCache::key("y", "p", &a).unwrap(),
            FeatureCache::key("x", "q", &a).unwrap(),
            // Field boundaries are length-prefixed: ("xp", "") ≠ ("x", "p").
            FeatureCache::key("xp", "", &a).unwrap(),
        ] {
            assert_ne!(k, other);
        }

        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path().join("c"));
        let feats = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &Device::Cpu).unwrap();
        let mut calls = 0;
        for _ in 0..2 {
            let got = cache
                .get_or_compute(&k, 2, || {
                    calls += 1;
                    Ok(feats.clone())
                })
                .unwrap();
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                feats.to_vec2::<f32>().unwrap()
            );
        }
        assert_eq!(calls, 1);
        // A corrupt entry is recomputed, not trusted.
        std::fs::write(cache.path(&k), b"not safetensors").unwrap();
        let got = cache.get_or_compute(&k, 2, || Ok(feats.clone())).unwrap();
        assert_eq!(got.dims(), &[2, 2]);
        assert!(cache.get(&k, 2).is_some());
        assert!(cache.get(&k, 3).is_none(), "row count is checked");
    }
}
