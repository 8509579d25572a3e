//! The device agent, `perch agent --config FILE`: keeps a link to the host, installs the
//! models it pushes, reports metrics, and answers local programs over HTTP on 127.0.0.1.
//!
//! - [`config`]: the configuration file.
//! - [`store`]: models on disk, installed and rolled back by atomic renames.
//! - `serving`: the active model, its metrics window, recent predictions, the rollback watch.
//! - `link`: the session with the host (reconnecting with backoff), downloads, reports.
//! - `http`: `POST /predict`, `POST /feedback`, `GET /health`, `GET /metrics`.
//! - `daemon`: [`Agent`], which starts and stops the threads below.
//!
//! Three threads share one state: the link, the HTTP server, and a clock that
//! closes a metrics window every `report_interval` into the persisted report queue. The
//! agent works offline indefinitely: reports wait in the queue (oldest dropped beyond its
//! capacity) and are sent again until the host acknowledges them.

pub mod config;
#[cfg(feature = "device")]
mod daemon;
#[cfg(feature = "device")]
mod http;
#[cfg(feature = "device")]
mod link;
#[cfg(feature = "device")]
mod serving;
pub mod store;

pub use config::Config;
#[cfg(feature = "device")]
pub use daemon::{Agent, AgentError, check_canary};
