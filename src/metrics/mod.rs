//! Metrics: each file one published metric, matched to the reference implementation its users
//! trust (named in the file's doc comment and its tests).

pub mod fid;
pub mod inputs;
pub mod prdc;
pub mod rank;
pub mod rarity;
pub mod realism;
pub mod sparsification;
pub mod stats;
