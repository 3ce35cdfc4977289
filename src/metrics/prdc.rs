//! metrics::prdc (placeholder, being written).
