//! Feature extractors mapping images to the feature spaces that metrics and GU's semantic
//! likelihood (GU Eq. 7) are computed in.

pub mod inception;

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
