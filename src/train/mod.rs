//! Training (feature `host`). This file only declares the tree modules for now; the
//! data loading, metrics and other models come from the `train` branch.

pub mod forest;
pub mod tree;
