//! `perch-host`: the host companion. Thin: clap, then one call into the library per command.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "perch-host",
    version,
    about = "perch host companion: prepare models for perch devices"
)]
struct Cli {
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
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
                perch::artifact::hex(&sha2::Digest::finalize(sha2::Digest::chain_update(
                    sha2::Sha256::default(),
                    &bytes,
                ))),
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
