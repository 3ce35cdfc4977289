//! Feature extractors mapping images to the feature spaces that metrics are computed in.

pub mod inception;
