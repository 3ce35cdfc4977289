//! metrics::sparsification (placeholder, being written).
