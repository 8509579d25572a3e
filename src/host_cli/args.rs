//! `perch-host`'s raw command-line flags (clap derive), as ripgrep keeps its flags apart
//! from the code that acts on them: each default is written here once, and the binary only
//! parses these and calls the command functions of [`host_cli`](super).

use super::TrainOptions;
use super::optimize::OptimizeOptions;
use crate::fleet::gates::Gates;
use crate::registry::ModelRef;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// `perch-host` and its global flags.
#[derive(Debug, Parser)]
#[command(
    name = "perch-host",
    version,
    about = "perch host companion: prepare models for perch devices",
    after_help = "Exit status: 0 done, 1 failed (the error says why), 2 usage error (unknown \
                  command or flag, a missing or bad argument), 3 push --wait / rollout --wait \
                  ended with a device pending or refusing, or the rollout not complete."
)]
pub struct Cli {
    /// Registry database (default: $PERCH_REGISTRY, else perch-registry.db here).
    #[arg(long, global = true)]
    pub registry: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `perch-host`'s commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Translate an ONNX model into a native .perch artifact with identical outputs.
    Convert {
        /// The ONNX model.
        model: PathBuf,
        /// Where to write the artifact (default: MODEL with the .perch extension).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Model name stored in the artifact (default: the folder's name for a file called
        /// model.onnx, else the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Version string stored in the artifact.
        #[arg(long, default_value = "1")]
        version: String,
        /// Free-text description stored in the artifact.
        #[arg(long)]
        description: Option<String>,
        /// Print one JSON object (output, size_bytes, layers) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Train a model on a CSV file and register it as a new version.
    Train {
        /// The training flags.
        #[command(flatten)]
        options: Box<TrainOptions>,
        /// Print one JSON object (name, version, metrics, fit_seconds…) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Score a registered version on labelled CSV data.
    Eval {
        /// NAME, NAME@VERSION or NAME@ALIAS.
        model: ModelRef,
        /// Labelled data with the training columns.
        #[arg(long)]
        data: PathBuf,
        /// Target column, for imported versions (trained ones know theirs).
        #[arg(long)]
        target: Option<String>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List, inspect, compare, tag, alias, delete and export registered versions.
    Models {
        /// What to do with them.
        #[command(subcommand)]
        command: Models,
    },
    /// Quantize and/or prune a model into a new version, with a before/after table.
    Optimize {
        /// The optimization flags.
        #[command(flatten)]
        options: OptimizeOptions,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Register devices and see the fleet: model, version, last contact, health.
    Devices {
        /// What to do (default: list them).
        #[command(subcommand)]
        command: Option<Devices>,
        /// Print JSON (for the listing).
        #[arg(long)]
        json: bool,
    },
    /// Sign a version and send it to devices; they install it on their next contact.
    Push {
        /// NAME@VERSION or NAME@ALIAS (NAME alone: the latest version).
        model: ModelRef,
        /// A device (repeat for several).
        #[arg(long)]
        to: Vec<String>,
        /// Every device of a group.
        #[arg(long)]
        group: Option<String>,
        /// Wait up to SECONDS for every device to install or refuse it, and say how it went.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
        /// Go back to a version older than a device runs, on purpose (the host signs it as a
        /// rollback; without this flag such a push is refused).
        #[arg(long)]
        rollback: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the sync server devices connect to (metrics in, models out), with the web
    /// dashboard and Prometheus endpoint beside it.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7470")]
        listen: String,
        /// Seconds between the heartbeats devices are asked for.
        #[arg(long, default_value_t = 15)]
        heartbeat: u32,
        /// Devices connected at once, at most.
        #[arg(long, default_value_t = 4096)]
        max_connections: usize,
        /// Alert rules, TOML (docs/alerts.md; default: the built-in rules).
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// Address of the web dashboard and Prometheus endpoint (`/metrics`), or `off`.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7480")]
        http: String,
    },
    /// Alerts raised by the fleet's reports: drift, accuracy, latency, errors, silence.
    Alerts {
        /// Resolved alerts too, not only open ones.
        #[arg(long)]
        all: bool,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Roll a version out to a group through a canary gate: canary devices run it in shadow
    /// beside the current model; `perch-host serve` promotes it only if the gates pass, and
    /// rolls the group back if its quality drops afterwards.
    Rollout {
        /// NAME@VERSION (or NAME@ALIAS).
        model: ModelRef,
        /// The group.
        #[arg(long)]
        group: String,
        /// Canary devices.
        #[arg(long, default_value_t = 1)]
        canary: u32,
        /// Wait up to SECONDS for the rollout to finish (the server drives it).
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The gates: the keys of the rules file's `[rollout]` table, as flags.
        #[command(flatten)]
        gates: Gates,
    },
    /// Rollouts under way (every rollout with --all).
    Rollouts {
        /// Also the finished ones.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The whole lifecycle on this machine, with bundled data: train, quantize, a host and
    /// simulated devices on loopback, push, traffic, drift on one group, the alert, automatic
    /// retraining, a canary-gated rollout to that group only, and a summary.
    Demo {
        /// Devices in each of the two groups.
        #[arg(long, default_value_t = 2)]
        devices: usize,
        /// The dashboard's address while the demo runs, or `off`.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7480")]
        http: String,
        /// Keep the registry, devices and data in DIR (default: a temporary directory,
        /// removed at the end).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register an external ONNX model (converted to native when every op translates).
    Import {
        /// The ONNX model.
        model: PathBuf,
        /// Registry name (default: the folder's name for a file called model.onnx, else the
        /// file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `perch-host models` subcommands.
#[derive(Debug, Subcommand)]
pub enum Models {
    /// Every version.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One version's metadata.
    Show {
        /// NAME, NAME@VERSION or NAME@ALIAS.
        model: ModelRef,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What differs between two versions.
    Diff {
        /// First version.
        a: ModelRef,
        /// Second version.
        b: ModelRef,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a tag to a version.
    Tag {
        /// The version.
        model: ModelRef,
        /// The tag.
        tag: String,
    },
    /// Point an alias (production, staging…) at a version.
    Alias {
        /// The version.
        model: ModelRef,
        /// The alias.
        alias: String,
    },
    /// Delete a version (NAME@N or NAME@ALIAS), or every version of NAME with --all.
    Delete {
        /// The version or model.
        model: ModelRef,
        /// Delete every version of a bare NAME.
        #[arg(long)]
        all: bool,
    },
    /// Write a version's artifact to a file.
    Export {
        /// The version.
        model: ModelRef,
        /// perch or onnx (opset 17; trees as ai.onnx.ml tree ensembles).
        #[arg(long, default_value = "perch")]
        format: String,
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
        /// Print one JSON object (output, size_bytes, sha256) on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `perch-host devices` subcommands.
#[derive(Debug, Subcommand)]
pub enum Devices {
    /// Register a device and write its agent configuration (key, host address, host key).
    Add {
        /// Device name (letters, digits, '-', '_', '.').
        name: String,
        /// Group, for pushes and rollouts to many devices.
        #[arg(long, default_value = "default")]
        group: String,
        /// HOST:PORT the device reaches `perch-host serve` at (default: this machine's
        /// hostname, port 7470).
        #[arg(long)]
        host: Option<String>,
        /// Where to write the agent configuration (default: NAME.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every device (the default).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One device: status, events (refusals with reasons, installs, rollbacks), reports.
    Show {
        /// Device name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a device (its metrics and events too).
    Remove {
        /// Device name.
        name: String,
    },
}
