//! metrics::rarity (placeholder, being written).
