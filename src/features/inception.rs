//! The FID Inception-v3 (placeholder, being written).
