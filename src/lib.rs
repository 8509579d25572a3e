//! perch: model lifecycle management for edge devices.
//!
//! # The library's API
//! The crate root re-exports what a library user needs; the modules named below hold the
//! rest of each area's types.
//! - Load a model (a native `.perch` artifact, or ONNX with feature `onnx`), run it and read
//!   its metadata: [`Model`] ([`Model::load`], [`Model::run`], [`Model::info`]), with
//!   [`EngineChoice`], [`ModelInfo`], [`Output`] and [`RuntimeError`] (module [`runtime`]).
//! - Build or inspect a native model: [`graph`] (the IR: [`Graph`], [`Metadata`],
//!   [`NativeModel`]), [`artifact`] (the `.perch` file: [`artifact::read`],
//!   [`artifact::write`], [`artifact::encode`], [`artifact::decode`]), [`engine`] (the
//!   native executor, [`Engine`], with buffers planned once at load) and [`io`] (inputs from
//!   CSV, JSON and `.npy`; outputs as JSON).
//! - On the host (feature `host`): load a CSV with [`train::data::Dataset::load`], train
//!   with [`train::fit`] from a [`train::ModelSpec`], turn the result into a native model
//!   with [`train::Fitted::to_model`], and keep numbered versions with their metadata in a
//!   [`Registry`] ([`Registry::register`], [`Registry::resolve`] with a
//!   [`registry::ModelRef`] such as `iris@production`).
//!
//! Each area reports failures with its own `#[non_exhaustive]` error enum ([`RuntimeError`],
//! [`artifact::ArtifactError`], [`engine::EngineError`], [`graph::GraphError`],
//! [`io::InputError`], [`train::TrainError`], [`registry::RegistryError`]), whose variants
//! carry the file, row, node or value at fault.
//!
//! The other modules are public only so perch's own binaries, benches and integration tests
//! reach them: they are hidden from these docs and make no stability promise.
//!
//! # Layout (every module, for contributors)
//! The modules follow the data path, bytes → artifact → graph → engine → outputs:
//! - `artifact`: the native `.perch` file: header, postcard payload, SHA-256, signature slot.
//! - `graph`: the native model IR: tensors, layers, the graph, model metadata.
//! - `engine`: executes a native graph with buffers planned once at load.
//! - `onnx` (feature `onnx`): the tract-onnx backend and the ONNX ops perch adds to it.
//! - `convert` (feature `onnx`): translates ONNX graphs into the native IR.
//! - `export` (feature `host`): writes native models as ONNX (the reverse of `convert`).
//! - `runtime`: one `runtime::Model` over both backends; what the CLI calls.
//! - `cli`: the `perch run / info / bench` commands as library functions.
//! - `host_cli` (feature `host`): the `perch-host` commands as library functions: their
//!   flags (`args`), typed results and their text or JSON rendering (`render`), train, eval,
//!   models, import, optimize over `train`, `optimize` and `registry`; devices, push, serve,
//!   alerts, rollouts over `fleet`; the monitor that retrains and rolls out; `demo`.
//! - `io`: reading inputs (CSV, JSON, `.npy`) and writing outputs.
//! - `memory`: a heap-tracking allocator for peak-memory measurements.
//! - `metrics`: on-device figures in fixed memory (latency histogram, counters, drift as
//!   PSI against the artifact's baseline, feedback accuracy, system figures), closed into
//!   per-window reports, queued on disk until the host acknowledges them, and rendered for
//!   Prometheus.
//! - `train` (feature `host`): CSV datasets, preprocessing, linear models, MLP, linear SVM,
//!   decision trees and random forests, optimizers, metrics, cross-validation and grid
//!   search; trained models become graphs.
//! - `optimize` (feature `host`): post-training int8 quantization (static with calibration,
//!   or dynamic), magnitude and structured pruning, gradual pruning with fine-tuning on the
//!   training data.
//! - `registry` (feature `host`): numbered model versions with metadata, lineage, tags and
//!   aliases in SQLite, artifacts content-addressed beside the database.
//!
//! Devices and the host, bytes → frame → message → session:
//! - `sync`: the protocol (`docs/protocol.md`): framing, sealed frames, messages, the
//!   mutually authenticated handshake, the host's server over a store, the device's client.
//! - `agent`: `perch agent`, the device daemon: model store with atomic installs and
//!   rollback, the link to the host, the metrics windows, the local HTTP API.
//! - `fleet` (feature `host`): devices, groups, pushes, stored reports and labelled
//!   samples in the registry's database; alert rules, quality-gated rollouts, the dashboard
//!   and the Prometheus endpoint.
//! - `http` (features `device` or `host`): the small HTTP/1.1 server under the agent's
//!   local API and the dashboard.
//! - `signals`: SIGTERM / SIGINT stop `perch agent` and `perch-host serve` cleanly.
//!
//! Shared by all of them:
//! - `util`: lower-case hex, the Unix clock, SQLite errors mapped to an area's error.
//!
//! # Example
//! ```
//! use perch::graph::{DType, Layer, Node, Output, Tensor, TensorSpec};
//! use perch::{Engine, Graph, Metadata, NativeModel};
//!
//! let graph = Graph {
//!     inputs: vec![TensorSpec { name: "x".into(), dtype: DType::F32, shape: vec![2] }],
//!     nodes: vec![Node {
//!         name: "dense".into(),
//!         layer: Layer::Dense {
//!             weight: Tensor::f32(vec![1, 2], vec![1.0, 2.0]),
//!             bias: Some(Tensor::f32(vec![1], vec![0.5])),
//!         },
//!         inputs: vec![0],
//!     }],
//!     outputs: vec![Output { name: "y".into(), value: 1 }],
//! };
//! let model = NativeModel { metadata: Metadata::default(), graph };
//! let bytes = perch::artifact::encode(&model)?;
//!
//! // Through the engine directly ...
//! let native = perch::artifact::decode(&bytes)?.model;
//! let mut engine = Engine::new(&native.graph, 1)?;
//! engine.run(&[&[3.0, 4.0]], 1)?;
//! assert_eq!(engine.output_f32(0), Some(&[11.5f32][..]));
//!
//! // ... or as a loaded model, the way `perch run` does.
//! let mut loaded = perch::Model::from_artifact_bytes(&bytes)?;
//! let outputs = loaded.run(&[3.0, 4.0], 1)?;
//! assert_eq!(outputs[0].name, "y");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod artifact;
pub mod engine;
pub mod graph;
pub mod io;
#[cfg(feature = "host")]
pub mod registry;
pub mod runtime;
#[cfg(feature = "host")]
pub mod train;

pub use engine::Engine;
pub use graph::{Graph, Metadata, Model as NativeModel};
#[cfg(feature = "host")]
pub use registry::Registry;
pub use runtime::{EngineChoice, Model, ModelInfo, Output, RuntimeError};

// Public for perch's binaries, benches and integration tests only (see the crate docs).
#[doc(hidden)]
pub mod agent;
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "onnx")]
#[doc(hidden)]
pub mod convert;
#[cfg(feature = "host")]
#[doc(hidden)]
pub mod export;
#[cfg(feature = "host")]
#[doc(hidden)]
pub mod fleet;
#[cfg(feature = "host")]
#[doc(hidden)]
pub mod host_cli;
#[cfg(any(feature = "device", feature = "host"))]
#[doc(hidden)]
pub mod http;
#[doc(hidden)]
pub mod memory;
#[doc(hidden)]
pub mod metrics;
#[cfg(feature = "onnx")]
#[doc(hidden)]
pub mod onnx;
#[cfg(feature = "host")]
#[doc(hidden)]
pub mod optimize;
#[doc(hidden)]
pub mod signals;
#[doc(hidden)]
pub mod sync;
#[doc(hidden)]
pub mod util;

#[cfg(test)]
pub(crate) mod test_fixtures;

/// Locks a mutex, recovering the data if a thread panicked while holding it: every shared
/// state in perch is changed by whole assignments, so it stays consistent.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
