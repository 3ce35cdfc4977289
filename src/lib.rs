//! diffuq — a reproducibility harness for uncertainty estimation in diffusion models.
//!
//! Layers, lowest first (dependencies only point downward):
//! `seed`, `schedule` → `model`, `sampler` → `uq`, `metrics`, `data` → `tracking`, `report` →
//! `experiments` → `cli`. Nothing past [`config`]'s resolver sees raw strings: every experiment
//! receives a typed, validated configuration.

pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod experiments;
pub mod metrics;
pub mod model;
pub mod report;
pub mod sampler;
pub mod schedule;
pub mod seed;
pub mod tracking;
pub mod uq;

pub use error::{Error, Result};
