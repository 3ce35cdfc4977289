//! metrics::fid (placeholder, being written).
