//! Uncertainty methods. Each file is one paper algorithm.

pub mod au;
pub mod bayesdiff;
pub mod gu;
pub mod guidance;
pub mod laplace;
pub mod mc_dropout;
pub mod scores;
