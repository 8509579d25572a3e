//! `perch-host`: the host companion. Thin: clap, then one call into the library per command,
//! its typed result printed as text or `--json` by [`perch::host_cli::render`].

use anyhow::{Context, Result};
use clap::Parser;
use perch::cli::{UsageError, exit};
use perch::host_cli::args::{Cli, Command, Devices, Models};
use perch::host_cli::render::{Render, output};
use perch::host_cli::{self, fleet, lifecycle, models, serve};
use perch::registry::Registry;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Tracks heap use so `optimize` can report each version's peak memory.
#[global_allocator]
static ALLOCATOR: perch::memory::Tracking = perch::memory::Tracking;

/// Prints a command's result; a reader that closed the pipe early (`| head`) ends the
/// program quietly instead of a panic.
fn print<T: Serialize + Render>(result: &T, json: bool) -> Result<()> {
    use std::io::Write;
    let body = output(result, json).context("writing the result as JSON")?;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(body.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        return Err(e).context("writing the output");
    }
    Ok(())
}

fn open_registry(path: Option<&std::path::Path>) -> Result<Registry> {
    let path = perch::registry::resolve_path(path);
    Registry::open(&path).with_context(|| format!("opening the registry {}", path.display()))
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Runs one command; the exit status when it did not fail.
fn run(cli: Cli) -> Result<u8> {
    let registry = cli.registry.as_deref();
    match cli.command {
        Command::Train { options, json } => {
            host_cli::spec_from_options(&options).map_err(|e| UsageError(format!("{e:#}")))?;
            let mut reg = open_registry(registry)?;
            print(&host_cli::train(&mut reg, &options)?, json)?;
        }
        Command::Eval {
            model,
            data,
            target,
            json,
        } => {
            let reg = open_registry(registry)?;
            print(
                &host_cli::eval(&reg, &model, &data, target.as_deref())?,
                json,
            )?;
        }
        Command::Optimize { options, json } => {
            let mut reg = open_registry(registry)?;
            print(&host_cli::optimize::optimize(&mut reg, &options)?, json)?;
        }
        Command::Devices { command, json } => {
            let db = perch::registry::resolve_path(registry);
            match command.unwrap_or(Devices::List { json }) {
                Devices::List { json } => print(&fleet::devices_list(&db)?, json)?,
                Devices::Add {
                    name,
                    group,
                    host,
                    config,
                    json: add_json,
                } => {
                    let config = config.unwrap_or_else(|| PathBuf::from(format!("{name}.toml")));
                    let host = host.unwrap_or_else(fleet::default_host);
                    let added = fleet::devices_add(&db, &name, &group, &host, &config)?;
                    eprintln!(
                        "added device {name} (group {group}); its agent configuration is {} \
                         (copy it to the device: perch agent --config {})",
                        config.display(),
                        config
                            .file_name()
                            .map_or(String::new(), |f| f.to_string_lossy().into_owned())
                    );
                    print(&added, json || add_json)?;
                }
                Devices::Show { name, json } => print(&fleet::device_show(&db, &name)?, json)?,
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
            let mut pushed = fleet::push(&reg, &model, &to, group.as_deref(), rollback)?;
            if let Some(secs) = wait {
                pushed.wait(reg.path(), seconds(secs))?;
            }
            print(&pushed, json)?;
            let missing = pushed.not_installed();
            if let (Some(secs), false) = (wait, missing.is_empty()) {
                eprintln!(
                    "perch-host: push {} is not installed everywhere after {secs} s: {}",
                    pushed.push,
                    missing.join(", ")
                );
                return Ok(exit::INCOMPLETE);
            }
        }
        Command::Alerts { all, limit, json } => {
            let db = perch::registry::resolve_path(registry);
            print(&fleet::alerts_list(&db, all, limit)?, json)?;
        }
        Command::Serve {
            listen,
            heartbeat,
            max_connections,
            rules,
            http,
        } => {
            let db = perch::registry::resolve_path(registry);
            let rules = perch::fleet::alerts::load_rules(rules.as_deref())?;
            let config = serve::ServeConfig::with_monitor(heartbeat, max_connections, rules);
            let shutdown = perch::sync::server::Shutdown::new();
            perch::signals::stop_on_termination(shutdown.clone())
                .context("installing the SIGTERM/SIGINT handlers")?;
            serve::serve_with_dashboard(
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
            let outcome =
                lifecycle::rollout(&reg, &model, &group, canary, &gates, wait.map(seconds))?;
            print(&outcome, json)?;
            if let lifecycle::RolloutOutcome::Waited(r) = &outcome
                && !outcome.is_complete()
            {
                eprintln!(
                    "perch-host: rollout {} is {}, not complete, after the wait{}",
                    r.id,
                    r.state,
                    host_cli::render::reason_suffix(r.reason.as_deref())
                );
                return Ok(exit::INCOMPLETE);
            }
        }
        Command::Rollouts { all, json } => {
            let reg = open_registry(registry)?;
            print(&lifecycle::rollouts(reg.path(), all)?, json)?;
        }
        Command::Demo {
            devices,
            http,
            dir,
            json,
        } => {
            let opts = host_cli::demo::DemoOptions {
                devices_per_group: devices.max(1),
                http: (http != "off").then_some(http),
                dir,
                ..Default::default()
            };
            let summary = host_cli::demo::demo(&opts, &mut |line| eprintln!("{line}"))?;
            print(&summary, json)?;
            if !summary.ok {
                anyhow::bail!("the demo did not end as expected (see the summary)");
            }
        }
        Command::Import { model, name, json } => {
            let imported =
                host_cli::import(&mut open_registry(registry)?, &model, name.as_deref())?;
            if let Some(note) = &imported.note {
                eprintln!("{note}");
            }
            print(&imported, json)?;
        }
        Command::Models { command } => {
            let mut reg = open_registry(registry)?;
            match command {
                Models::List { json } => print(&host_cli::list(&reg)?, json)?,
                Models::Show { model, json } => {
                    print(&models::VersionView::of(&reg.resolve(&model)?), json)?
                }
                Models::Diff { a, b, json } => print(&host_cli::diff(&reg, &a, &b)?, json)?,
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
                    let exported = host_cli::export(&reg, &model, &format, &output)?;
                    if !json {
                        eprintln!("wrote {} ({} bytes)", output.display(), exported.size_bytes);
                    }
                    print(&exported, json)?;
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
            let opts = models::ConvertOptions {
                name,
                version,
                description,
            };
            let converted = host_cli::convert(&model, &output, &opts)?;
            if !json {
                eprintln!(
                    "wrote {} ({} bytes, {} layers: {})",
                    converted.output,
                    converted.size_bytes,
                    converted.layers.len(),
                    converted.layers.join(" → ")
                );
            }
            print(&converted, json)?;
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
