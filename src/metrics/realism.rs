//! metrics::realism (placeholder, being written).
