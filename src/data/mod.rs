//! Data sources.

pub mod toy_grid;
