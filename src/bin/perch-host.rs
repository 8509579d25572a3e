//! `perch-host`: the host companion. Thin: clap, then one call into the library per command.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use perch::host_cli::{self, TrainOptions};
use perch::registry::{ModelRef, Registry};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "perch-host",
    version,
    about = "perch host companion: prepare models for perch devices"
)]
struct Cli {
    /// Registry database (default: $PERCH_REGISTRY, else perch-registry.db here).
    #[arg(long, global = true)]
    registry: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Translate an ONNX model into a native .perch artifact with identical outputs.
    Convert {
        /// The ONNX model.
        model: PathBuf,
        /// Where to write the artifact (default: MODEL with the .perch extension).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Model name stored in the artifact (default: the file stem).
        #[arg(long)]
        name: Option<String>,
        /// Version string stored in the artifact.
        #[arg(long, default_value = "1")]
        version: String,
        /// Free-text description stored in the artifact.
        #[arg(long)]
        description: Option<String>,
    },
    /// Train a model on a CSV file and register it as a new version.
    Train {
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
        #[command(subcommand)]
        command: Models,
    },
    /// Quantize and/or prune a model into a new version, with a before/after table.
    Optimize {
        #[command(flatten)]
        options: host_cli::optimize::OptimizeOptions,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Register an external ONNX model (converted to native when every op translates).
    Import {
        /// The ONNX model.
        model: PathBuf,
        /// Registry name (default: the file stem).
        #[arg(long)]
        name: Option<String>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Models {
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
    },
}

/// Tracks heap use so `optimize` can report each version's peak memory.
#[global_allocator]
static ALLOCATOR: perch::memory::Tracking = perch::memory::Tracking;

/// Prints a command's result; a reader that closed the pipe early (`| head`) ends the
/// program quietly instead of a panic.
fn print(value: &serde_json::Value, json: bool, text: impl FnOnce(&serde_json::Value) -> String) {
    use std::io::Write;
    let body = if json {
        format!("{value}\n")
    } else {
        text(value)
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(body.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("perch-host: error: writing the output: {e}");
        std::process::exit(1);
    }
}

fn open_registry(path: Option<&std::path::Path>) -> Result<Registry> {
    let path = perch::registry::resolve_path(path);
    Registry::open(&path).with_context(|| format!("opening the registry {}", path.display()))
}

fn run(cli: Cli) -> Result<()> {
    let registry = cli.registry.as_deref();
    match cli.command {
        Command::Train { options, json } => {
            host_cli::spec_from_options(&options)?;
            let mut reg = open_registry(registry)?;
            let report = host_cli::train(&mut reg, &options)?;
            print(&report, json, |r| host_cli::render_report(r) + "\n");
        }
        Command::Eval {
            model,
            data,
            target,
            json,
        } => {
            let report =
                host_cli::eval(&open_registry(registry)?, &model, &data, target.as_deref())?;
            print(&report, json, |r| host_cli::render_report(r) + "\n");
        }
        Command::Optimize { options, json } => {
            let mut reg = open_registry(registry)?;
            let report = host_cli::optimize::optimize(&mut reg, &options)?;
            print(&report, json, host_cli::optimize::render);
        }
        Command::Import { model, name, json } => {
            let v = host_cli::import(&mut open_registry(registry)?, &model, name.as_deref())?;
            if let Some(note) = v["note"].as_str() {
                eprintln!("{note}");
            }
            print(&v, json, host_cli::render_version);
        }
        Command::Models { command } => {
            let mut reg = open_registry(registry)?;
            match command {
                Models::List { json } => print(&host_cli::list(&reg)?, json, host_cli::render_list),
                Models::Show { model, json } => print(
                    &host_cli::version_json(&reg.resolve(&model)?),
                    json,
                    host_cli::render_version,
                ),
                Models::Diff { a, b, json } => {
                    print(&host_cli::diff(&reg, &a, &b)?, json, host_cli::render_diff)
                }
                Models::Tag { model, tag } => {
                    let v = reg.tag(&model, &tag)?;
                    eprintln!("tagged {}@{} {tag}", v.name, v.number);
                }
                Models::Alias { model, alias } => {
                    let v = reg.set_alias(&model, &alias)?;
                    eprintln!("{}@{alias} → {}@{}", v.name, v.name, v.number);
                }
                Models::Delete { model, all } => {
                    if model.selector == perch::registry::Selector::Latest && !all {
                        anyhow::bail!(
                            "`models delete {model}` names no version: write {model}@N or {model}@ALIAS, or add --all to delete every version of {model}"
                        );
                    }
                    for v in reg.delete(&model)? {
                        eprintln!("deleted {}@{}", v.name, v.number);
                    }
                }
                Models::Export {
                    model,
                    format,
                    output,
                } => {
                    let r = host_cli::export(&reg, &model, &format, &output)?;
                    eprintln!("wrote {} ({} bytes)", output.display(), r["size_bytes"]);
                }
            }
        }
        Command::Convert {
            model,
            output,
            name,
            version,
            description,
        } => {
            let output = output.unwrap_or_else(|| model.with_extension("perch"));
            let bytes =
                std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
            let mut native = perch::convert::onnx_bytes_to_native(&bytes)
                .with_context(|| format!("converting {}", model.display()))?;
            let stem = model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            native.metadata.name = name.unwrap_or(stem);
            native.metadata.version = version;
            if let Some(d) = description {
                native.metadata.description = d;
            }
            native.metadata.producer = format!("perch-host {} convert", env!("CARGO_PKG_VERSION"));
            native.metadata.created_unix_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            native.metadata.properties.insert(
                "source_sha256".into(),
                perch::artifact::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            );
            let size = perch::artifact::write(&output, &native)
                .with_context(|| format!("writing {}", output.display()))?;
            let layers: Vec<&str> = native.graph.nodes.iter().map(|n| n.layer.kind()).collect();
            eprintln!(
                "wrote {} ({} bytes, {} layers: {})",
                output.display(),
                size,
                layers.len(),
                layers.join(" → ")
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("perch-host: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
