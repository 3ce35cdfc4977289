//! What `diffuq fid` and `diffuq prdc` read: precomputed statistics, feature matrices, or images
//! to embed with the FID Inception-v3 — the inputs pytorch-fid, prdc and the ADM evaluator take.
//!
//! | file | read as |
//! |---|---|
//! | `.npz` with `mu`, `sigma` | statistics (pytorch-fid `--save-stats`, ADM reference batch) |
//! | `.npz` with `arr_0` only | images: an ADM sample batch, uint8 (N, H, W, 3) |
//! | `.npy` float (N, D) | features |
//! | `.npy` uint8 (N, H, W, 3) or (N, 3, H, W) | images |
//!
//! Images are embedded with pytorch-fid's preprocessing ([`Preprocess::PYTORCH_FID`]) and the
//! features cached by content ([`crate::features::cache`]), so a reference set is embedded once.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result, TensorContext};
use crate::features::inception::{InceptionV3, Preprocess};
use crate::features::FeaturesConfig;
use crate::metrics::fid::GaussianStats;

/// One metric input, as read from a file.
#[derive(Debug)]
pub enum MetricInput {
    Stats(GaussianStats),
    /// Row-major (N, D) features.
    Features {
        values: Vec<f64>,
        dim: usize,
    },
    /// uint8 images (N, 3, H, W).
    Images(Tensor),
}

const EXPECTED: &str = "expected an .npz with `mu` and `sigma` (statistics) or `arr_0` (uint8 \
                        images), or an .npy of float features (N, D) or uint8 images (N, H, W, 3)";

fn what(path: &Path) -> String {
    path.display().to_string()
}

/// Reads `path` as one of the layouts in the module doc.
pub fn read_input(path: &Path) -> Result<MetricInput> {
    if !path.is_file() {
        return Err(Error::invalid(
            what(path),
            format!("no such file; {EXPECTED}"),
        ));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => {
            let npz = crate::data::npy::open_npz(path).map_err(|e| {
                Error::invalid(what(path), format!("not a readable .npz ({e}); {EXPECTED}"))
            })?;
            let names: Vec<&str> = npz.names().iter().map(|s| s.as_str()).collect();
            if names.contains(&"mu") && names.contains(&"sigma") {
                return Ok(MetricInput::Stats(GaussianStats::from_npz(&npz, path)?));
            }
            if names.contains(&"arr_0") {
                let t = crate::data::images::npz_array(&npz, path, "arr_0")?;
                return images(path, "array `arr_0`", t);
            }
            let mut names = names;
            names.sort_unstable();
            Err(Error::invalid(
                what(path),
                format!("has arrays {}; {EXPECTED}", names.join(", ")),
            ))
        }
        Some("npy") => {
            let t = crate::data::npy::read_npy(path).map_err(|e| {
                Error::invalid(what(path), format!("not a readable .npy ({e}); {EXPECTED}"))
            })?;
            if t.dtype() == DType::U8 {
                return images(path, "array", t);
            }
            if !t.dtype().is_float() || t.rank() != 2 {
                return Err(Error::invalid(
                    what(path),
                    format!("{:?} array of shape {:?}; {EXPECTED}", t.dtype(), t.dims()),
                ));
            }
            let (values, dim) = crate::metrics::realism::rows_from_tensor(&what(path), &t)?;
            Ok(MetricInput::Features { values, dim })
        }
        _ => Err(Error::invalid(
            what(path),
            format!("unknown extension; {EXPECTED}"),
        )),
    }
}

/// uint8 RGB images in either layout, as NCHW (the layout rules are the data loader's,
/// [`crate::data::images`]; the Inception network takes three channels only).
fn images(path: &Path, array: &str, t: Tensor) -> Result<MetricInput> {
    let what = format!("{} {array}", what(path));
    crate::data::images::uint8_images_nchw(t, &what, &[3]).map(MetricInput::Images)
}

/// Turns metric inputs into features for one command: images are embedded with the Inception
/// network that `cfg` locates, cached by content in `cfg.cache()`. The weights file is located
/// and hashed (for the cache key), and the network loaded, at most once however many inputs are
/// images — and not at all when none is, or when every image set is already cached.
pub struct Embedder {
    cfg: FeaturesConfig,
    batch_size: usize,
    /// (weights path, cache identity `inception-v3-fid:<sha256>`).
    weights: OnceCell<(PathBuf, String)>,
    net: OnceCell<InceptionV3>,
}

impl Embedder {
    pub fn new(cfg: FeaturesConfig, batch_size: usize) -> Self {
        Self {
            cfg,
            batch_size,
            weights: OnceCell::new(),
            net: OnceCell::new(),
        }
    }

    fn weights(&self) -> Result<&(PathBuf, String)> {
        if let Some(w) = self.weights.get() {
            return Ok(w);
        }
        let path = self.cfg.inception()?;
        let sha = crate::fetch::sha256_file(&path)?;
        Ok(self
            .weights
            .get_or_init(|| (path, format!("inception-v3-fid:{sha}"))))
    }

    fn net(&self) -> Result<&InceptionV3> {
        if let Some(n) = self.net.get() {
            return Ok(n);
        }
        let net = InceptionV3::load(&self.weights()?.0, &Device::Cpu)?;
        Ok(self.net.get_or_init(|| net))
    }

    /// Features of an input that is not statistics: features as they are, images embedded.
    pub fn features_of(&self, input: MetricInput, source: &Path) -> Result<(Vec<f64>, usize)> {
        match input {
            MetricInput::Features { values, dim } => Ok((values, dim)),
            MetricInput::Stats(_) => Err(Error::invalid(
                what(source),
                "holds statistics (mu, sigma); this metric needs features or images",
            )),
            MetricInput::Images(images) => {
                let pre = Preprocess::PYTORCH_FID;
                let key = crate::features::cache::FeatureCache::key(
                    &self.weights()?.1,
                    &format!("{pre:?}"),
                    &images,
                )?;
                let n = images.dim(0).ctx("images")?;
                let t = self.cfg.cache().get_or_compute(&key, n, || {
                    self.net()?.extract(&images, &pre, self.batch_size)
                })?;
                crate::metrics::realism::rows_from_tensor(&what(source), &t)
            }
        }
    }

    /// Statistics of any input: read as they are, or computed from features/embedded images.
    pub fn stats_of(&self, input: MetricInput, source: &Path) -> Result<GaussianStats> {
        match input {
            MetricInput::Stats(s) => Ok(s),
            other => {
                let (v, d) = self.features_of(other, source)?;
                GaussianStats::from_features(
                    crate::metrics::realism::Rows::new(&v, d),
                    &what(source),
                )
            }
        }
    }
}
