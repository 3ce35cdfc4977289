//! Obtaining reference weights from package registries (placeholder, being written).
