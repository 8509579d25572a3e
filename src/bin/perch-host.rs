//! `perch-host`: the host companion. Thin: clap, then one call into the library per command.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use perch::cli::{UsageError, exit};
use perch::host_cli::{self, TrainOptions, fleet};
use perch::registry::{ModelRef, Registry};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "perch-host",
    version,
    about = "perch host companion: prepare models for perch devices",
    after_help = "Exit status: 0 done, 1 failed (the error says why), 2 usage error (unknown \
                  command or flag, a missing or bad argument), 3 push --wait / rollout --wait \
                  ended with a device pending or refusing, or the rollout not complete."
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
    /// Register devices and see the fleet: model, version, last contact, health.
    Devices {
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
        /// The gates: the keys of the rules file's [rollout] table, as flags.
        #[command(flatten)]
        gates: perch::fleet::gates::Gates,
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
        /// Print one JSON object (output, size_bytes, sha256) on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Devices {
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

fn default_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("{name}:{}", perch::agent::config::DEFAULT_HOST_PORT)
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

/// Runs one command; the exit status when it did not fail.
fn run(cli: Cli) -> Result<u8> {
    let registry = cli.registry.as_deref();
    match cli.command {
        Command::Train { options, json } => {
            host_cli::spec_from_options(&options).map_err(|e| UsageError(format!("{e:#}")))?;
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
        Command::Devices { command, json } => {
            let db = perch::registry::resolve_path(registry);
            match command.unwrap_or(Devices::List { json }) {
                Devices::List { json } => {
                    print(&fleet::devices_list(&db)?, json, fleet::render_devices)
                }
                Devices::Add {
                    name,
                    group,
                    host,
                    config,
                    json: add_json,
                } => {
                    let config = config.unwrap_or_else(|| PathBuf::from(format!("{name}.toml")));
                    let host = host.unwrap_or_else(default_host);
                    let v = fleet::devices_add(&db, &name, &group, &host, &config)?;
                    eprintln!(
                        "added device {name} (group {group}); its agent configuration is {} \
                         (copy it to the device: perch agent --config {})",
                        config.display(),
                        config
                            .file_name()
                            .map_or(String::new(), |f| f.to_string_lossy().into_owned())
                    );
                    print(&v, json || add_json, |_| String::new());
                }
                Devices::Show { name, json } => {
                    print(&fleet::device_show(&db, &name)?, json, fleet::render_device)
                }
                Devices::Remove { name } => {
                    fleet::devices_remove(&db, &name)?;
                    eprintln!("removed device {name}");
                }
            }
        }
        Command::Push {
            model,
            to,
            group,
            wait,
            rollback,
            json,
        } => {
            let reg = open_registry(registry)?;
            let mut v = fleet::push(&reg, &model, &to, group.as_deref(), rollback)?;
            if let Some(secs) = wait {
                let push = v["push"].as_u64().unwrap_or(0);
                v["states"] = fleet::wait_for_push(
                    reg.path(),
                    push,
                    std::time::Duration::from_secs_f64(secs.max(0.0)),
                )?;
                let missing = fleet::push_not_installed(&v["states"]);
                v["complete"] = serde_json::json!(missing.is_empty());
                print(&v, json, fleet::render_push);
                if !missing.is_empty() {
                    eprintln!(
                        "perch-host: push {push} is not installed everywhere after {secs} s: {}",
                        missing.join(", ")
                    );
                    return Ok(exit::INCOMPLETE);
                }
            } else {
                print(&v, json, fleet::render_push);
            }
        }
        Command::Alerts { all, limit, json } => {
            let db = perch::registry::resolve_path(registry);
            print(&fleet::alerts_list(&db, all, limit)?, json, |v| {
                fleet::render_alerts(v, all)
            });
        }
        Command::Serve {
            listen,
            heartbeat,
            max_connections,
            rules,
            http,
        } => {
            let db = perch::registry::resolve_path(registry);
            let config = fleet::ServeConfig {
                server: perch::sync::server::ServerConfig {
                    heartbeat_s: heartbeat.max(1),
                    idle_timeout: std::time::Duration::from_secs(u64::from(heartbeat.max(1)) * 4),
                    max_connections: max_connections.max(1),
                    ..Default::default()
                },
                rules: perch::fleet::alerts::load_rules(rules.as_deref())?,
                automation: None,
            };
            let config = fleet::ServeConfig {
                automation: Some(perch::host_cli::lifecycle::Automation::from_rules(
                    &config.rules,
                )),
                ..config
            };
            let shutdown = perch::sync::server::Shutdown::new();
            perch::signals::stop_on_termination(shutdown.clone())
                .context("installing the SIGTERM/SIGINT handlers")?;
            fleet::serve_with_dashboard(
                &db,
                &listen,
                (http != "off").then_some(http.as_str()),
                config,
                shutdown,
                |addr| {
                    eprintln!(
                        "perch-host: listening on {addr} (registry {})",
                        db.display()
                    )
                },
                |addr| {
                    eprintln!(
                        "perch-host: dashboard on http://{}/",
                        perch::fleet::web::display_addr(addr)
                    )
                },
            )?;
            eprintln!("perch-host: stopped");
        }
        Command::Rollout {
            model,
            group,
            canary,
            gates,
            wait,
            json,
        } => {
            let reg = open_registry(registry)?;
            let mut v = perch::host_cli::lifecycle::start_rollout(
                &reg, &model, &group, canary, &gates, "operator",
            )?;
            let mut status = exit::SUCCESS;
            if let Some(secs) = wait {
                let id = v["rollout"].as_i64().unwrap_or(0);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
                let fleet_db = perch::fleet::Fleet::open(reg.path())?;
                loop {
                    let r = fleet_db.rollout(id)?.context("the rollout vanished")?;
                    if !matches!(r.state.as_str(), "canary" | "promoted")
                        || std::time::Instant::now() >= deadline
                    {
                        if r.state != "complete" {
                            status = exit::INCOMPLETE;
                        }
                        v = serde_json::to_value(&r)?;
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
            print(&v, json, |v| {
                format!(
                    "rollout {}: {} to group {} ({})\n",
                    v.get("rollout")
                        .or(v.get("id"))
                        .cloned()
                        .unwrap_or_default(),
                    v.get("model")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                        .unwrap_or_else(|| format!(
                            "{}@{}",
                            v["name"].as_str().unwrap_or("?"),
                            v["version"].as_str().unwrap_or("?")
                        )),
                    v["group"].as_str().unwrap_or("?"),
                    match v["reason"].as_str() {
                        Some(r) => format!("{}: {r}", v["state"].as_str().unwrap_or("?")),
                        None => v["state"].as_str().unwrap_or("?").to_string(),
                    }
                )
            });
            if status != exit::SUCCESS {
                eprintln!(
                    "perch-host: rollout {} is {}, not complete, after the wait{}",
                    v["id"],
                    v["state"].as_str().unwrap_or("?"),
                    v["reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                return Ok(status);
            }
        }
        Command::Rollouts { all, json } => {
            let reg = open_registry(registry)?;
            let f = perch::fleet::Fleet::open(reg.path())?;
            let v = serde_json::to_value(f.rollouts(!all, 100)?)?;
            print(&v, json, perch::host_cli::lifecycle::render_rollouts);
        }
        Command::Demo {
            devices,
            http,
            dir,
            json,
        } => {
            let opts = perch::host_cli::demo::DemoOptions {
                devices_per_group: devices.max(1),
                http: (http != "off").then_some(http),
                dir,
                ..Default::default()
            };
            let summary = perch::host_cli::demo::demo(&opts, &mut |line| eprintln!("{line}"))?;
            print(&summary, json, perch::host_cli::demo::render_summary);
            if summary["ok"] != true {
                anyhow::bail!("the demo did not end as expected (see the summary)");
            }
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
                        return Err(UsageError(format!(
                            "`models delete {model}` names no version: write {model}@N or {model}@ALIAS, or add --all to delete every version of {model}"
                        ))
                        .into());
                    }
                    for v in reg.delete(&model)? {
                        eprintln!("deleted {}@{}", v.name, v.number);
                    }
                }
                Models::Export {
                    model,
                    format,
                    output,
                    json,
                } => {
                    let r = host_cli::export(&reg, &model, &format, &output)?;
                    if json {
                        print(&r, true, |_| String::new());
                    } else {
                        eprintln!("wrote {} ({} bytes)", output.display(), r["size_bytes"]);
                    }
                }
            }
        }
        Command::Convert {
            model,
            output,
            name,
            version,
            description,
            json,
        } => {
            let output = output.unwrap_or_else(|| model.with_extension("perch"));
            let bytes =
                std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
            let mut native = perch::convert::onnx_bytes_to_native(&bytes)
                .with_context(|| format!("converting {}", model.display()))?;
            native.metadata.name = name.unwrap_or_else(|| host_cli::model_name_of_file(&model));
            native.metadata.version = version;
            if let Some(d) = description {
                native.metadata.description = d;
            }
            native.metadata.producer = format!("perch-host {} convert", env!("CARGO_PKG_VERSION"));
            native.metadata.created_unix_s = perch::util::now_unix_s() as u64;
            native.metadata.properties.insert(
                "source_sha256".into(),
                perch::util::to_hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            );
            native
                .stamp_requirements()
                .context("computing the model's requirements")?;
            let size = perch::artifact::write(&output, &native)
                .with_context(|| format!("writing {}", output.display()))?;
            let layers: Vec<&str> = native.graph.nodes.iter().map(|n| n.layer.kind()).collect();
            if json {
                let v = serde_json::json!({
                    "name": native.metadata.name,
                    "output": output.display().to_string(),
                    "size_bytes": size,
                    "layers": layers,
                });
                print(&v, true, |_| String::new());
            } else {
                eprintln!(
                    "wrote {} ({} bytes, {} layers: {})",
                    output.display(),
                    size,
                    layers.len(),
                    layers.join(" → ")
                );
            }
        }
    }
    Ok(exit::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo tells its story in its own lines; the host's and agents' logs (all in this
    // process) only when RUST_LOG asks for them.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "warn,perch=info"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .init();
    match run(cli) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("perch-host: error: {e:#}");
            ExitCode::from(if UsageError::is_in(&e) {
                exit::USAGE
            } else {
                exit::FAILURE
            })
        }
    }
}
