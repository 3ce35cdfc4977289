//! metrics::rank (placeholder, being written).
