//! perch's integration tests, one binary with a module per area (one binary links tract
//! once: twenty did, and their links and disk filled CI's machine). Each area starts what it
//! needs (the binaries, a host and agents on port 0) and reads `tests/data` and
//! `tests/fixtures`; `cargo test --test it AREA::` runs one area.
//!
//! The allocation-counting tests install their own global allocator and live in
//! `tests/alloc/`, a binary of their own.

mod harness;

#[cfg(feature = "host")]
mod canary_sim;

#[cfg(feature = "host")]
mod canary_gates;
mod cli;
#[cfg(feature = "onnx")]
mod conformance;
#[cfg(feature = "onnx")]
mod convert_trees;
#[cfg(all(feature = "host", feature = "device"))]
mod demo;
#[cfg(feature = "onnx")]
mod edge_conformance;
#[cfg(feature = "host")]
mod edge_quantize;
mod exit_codes;
#[cfg(feature = "host")]
mod export_onnx;
#[cfg(all(feature = "device", feature = "host"))]
mod hardening;
#[cfg(feature = "host")]
mod host_cli;
#[cfg(feature = "host")]
mod inputs_by_name;
#[cfg(all(feature = "host", feature = "device"))]
mod lifecycle;
#[cfg(feature = "host")]
mod metrics_exposition;
#[cfg(feature = "onnx")]
mod onnx_ops;
#[cfg(feature = "host")]
mod optimize;
#[cfg(all(feature = "host", target_os = "linux"))]
mod pi_path;
#[cfg(feature = "host")]
mod prune;
#[cfg(feature = "host")]
mod quantize;
mod source_rules;
#[cfg(all(feature = "host", feature = "device"))]
mod sync;
#[cfg(feature = "host")]
mod sync_faults;
#[cfg(feature = "onnx")]
mod tract_path;
#[cfg(feature = "host")]
mod train_accuracy;
#[cfg(feature = "host")]
mod train_trees;
mod tree_ensemble;
