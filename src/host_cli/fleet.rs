//! `perch-host devices | push | alerts | serve`: the fleet commands as library functions.

use crate::artifact;
use crate::fleet::alerts::Rules;
use crate::fleet::{self, Fleet, FleetStore};
use crate::graph::sections::DriftBaseline;
use crate::registry::{ArtifactFormat, ModelRef, Registry, Version};
use crate::sync::Role;
use crate::sync::server::{self, ServerConfig, Shutdown};
use crate::train::data::Dataset;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn open_fleet(db: &Path) -> Result<Fleet> {
    Fleet::open(db).with_context(|| format!("opening the fleet database {}", db.display()))
}

/// Registers device `name` in `group` with a fresh key and writes its agent configuration
/// (which points at `host`, `ADDR:PORT` of `perch-host serve`) to `config_out`, readable
/// by its owner only.
///
/// # Errors
/// A taken or bad name, an existing `config_out`, database or key failures.
pub fn devices_add(
    db: &Path,
    name: &str,
    group: &str,
    host: &str,
    config_out: &Path,
) -> Result<Value> {
    if config_out.exists() {
        bail!(
            "{} exists already; choose another --config path (it would hold the new key)",
            config_out.display()
        );
    }
    // The fleet first: opening it makes the registry's directory, where the key goes.
    let mut f = open_fleet(db)?;
    let key = fleet::keys::load_or_create(db)?;
    let device = f.add_device(name, group)?;
    let text = crate::agent::config::render(
        &device.name,
        &device.key,
        host,
        &key.verifying_key().to_bytes(),
    );
    if let Err(e) = fleet::keys::write_private(config_out, text.as_bytes()) {
        return Err(anyhow!(e)).with_context(|| {
            format!(
                "writing {} (device {name} is registered; `perch-host devices remove {name}` and add it again)",
                config_out.display()
            )
        });
    }
    Ok(json!({
        "name": device.name,
        "group": device.group,
        "config": config_out.display().to_string(),
        "host": host,
    }))
}

/// Removes a device (its metrics and events go with it).
///
/// # Errors
/// An unknown device, database failures.
pub fn devices_remove(db: &Path, name: &str) -> Result<()> {
    let mut f = open_fleet(db)?;
    f.remove_device(name)?;
    Ok(())
}

/// Every device with model, version, last contact and health.
///
/// # Errors
/// Database failures.
pub fn devices_list(db: &Path) -> Result<Value> {
    Ok(serde_json::to_value(open_fleet(db)?.devices()?)?)
}

/// The table `perch-host devices` prints.
pub fn render_devices(v: &Value) -> String {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return "no devices (add one with `perch-host devices add NAME`)\n".into();
    }
    let now = fleet::now_unix_s();
    let mut table = vec![[
        "DEVICE".to_string(),
        "GROUP".into(),
        "MODEL".into(),
        "LAST SEEN".into(),
        "HEALTH".into(),
        "PUSH".into(),
    ]];
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let model = match (r["model"].as_str(), r["version"].as_str()) {
            (Some(m), Some(v)) => format!("{m}@{v}"),
            _ => "-".into(),
        };
        let seen = r["last_seen_unix_s"]
            .as_i64()
            .map_or("never".into(), |t| when(now, t));
        table.push([
            s("name"),
            s("group"),
            model,
            seen,
            s("health"),
            s("assignment"),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &table {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One device: its status, its latest events (refused connections, installs, rollbacks,
/// with reasons) and its latest reports.
///
/// # Errors
/// An unknown device, database failures.
pub fn device_show(db: &Path, name: &str) -> Result<Value> {
    let f = open_fleet(db)?;
    let status = f
        .devices()?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| fleet::FleetError::UnknownDevice {
            name: name.to_string(),
            known: f.device_names().unwrap_or_default(),
        })?;
    let device = f
        .device(name)?
        .ok_or_else(|| anyhow!("device {name} vanished"))?;
    let events = f.events(Some(name), 50)?;
    let reports = f.reports(&device)?;
    let latest: Vec<Value> = reports
        .iter()
        .rev()
        .take(10)
        .map(|r| {
            json!({
                "seq": r.seq,
                "window_start_ms": r.report.window_start_ms,
                "window_ms": r.report.window_ms,
                "requests": r.report.requests,
                "errors": r.report.errors,
                "latency_us": {"p50": r.report.latency_us.p50, "p95": r.report.latency_us.p95, "p99": r.report.latency_us.p99},
                "feedback": r.report.feedback,
                "feedback_correct": r.report.feedback_correct,
                "psi_milli": r.report.psi_milli,
                "dropped": r.report.dropped,
            })
        })
        .collect();
    Ok(json!({
        "device": serde_json::to_value(&status)?,
        "reports_stored": reports.len(),
        "latest_reports": latest,
        "events": serde_json::to_value(&events)?,
    }))
}

/// Text of `perch-host devices show`.
pub fn render_device(v: &Value) -> String {
    let d = &v["device"];
    let mut out = format!(
        "device {}  group {}  model {}@{}  health {}\n",
        d["name"].as_str().unwrap_or("?"),
        d["group"].as_str().unwrap_or("?"),
        d["model"].as_str().unwrap_or("-"),
        d["version"].as_str().unwrap_or("-"),
        d["health"].as_str().unwrap_or("?"),
    );
    out.push_str(&format!(
        "reports stored: {}\n",
        v["reports_stored"].as_u64().unwrap_or(0)
    ));
    out.push_str("events (UTC):\n");
    for e in v["events"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}  {:<16} {}\n",
            crate::cli::utc_time(e["unix_s"].as_i64().unwrap_or(0)),
            e["kind"].as_str().unwrap_or(""),
            e["detail"].as_str().unwrap_or("")
        ));
    }
    out
}

/// The training rows of a version, encoded as it was trained, when they were recorded and
/// are still the same file.
fn training_data(version: &Version) -> Option<Dataset> {
    let schema = super::schema_from_json(version.data_schema.as_ref()?).ok()?;
    let path = super::recorded_data(version, "train").ok()?;
    Dataset::load_with_schema(&path, &schema).ok()
}

/// Gives a native model what a push needs and it lacks: a canary (the first training row,
/// else the training means, else zeros) and a drift baseline (from the training data).
fn complete_sections(model: &mut crate::graph::Model, version: &Version) -> Result<Vec<String>> {
    let sample_len = model
        .graph
        .inputs
        .first()
        .map_or(0, crate::graph::TensorSpec::sample_len);
    let mut added = Vec::new();
    let has_canary = model.metadata.canary(sample_len)?.is_some();
    let has_baseline = model.metadata.drift_baseline(sample_len)?.is_some();
    if has_canary && has_baseline {
        return Ok(added);
    }
    let data = training_data(version).filter(|d| d.n_features() == sample_len);
    if !has_baseline && let Some(d) = &data {
        let cols: Vec<Vec<f64>> = (0..d.n_features())
            .map(|j| d.features.column(j).to_vec())
            .collect();
        let baseline = DriftBaseline::from_columns(cols.iter().map(Vec::as_slice));
        model
            .metadata
            .set_section(crate::graph::sections::DRIFT_BASELINE, &baseline)?;
        added.push("drift baseline".to_string());
    }
    if !has_canary {
        let input: Vec<f32> = match &data {
            Some(d) if d.n_rows() > 0 => d.features.row(0).iter().map(|&v| v as f32).collect(),
            _ => match model.metadata.drift_baseline(sample_len)? {
                Some(b) => b.features.iter().map(|f| f.mean).collect(),
                None => vec![0.0; sample_len],
            },
        };
        let mut runnable = crate::runtime::Model::from_native(model)?;
        let canary = crate::runtime::record_canary(&mut runnable, &input, super::CANARY_TOLERANCE)?;
        model
            .metadata
            .set_section(crate::graph::sections::CANARY, &canary)?;
        added.push("canary".to_string());
    }
    Ok(added)
}

/// Signs version `r` with the host key and assigns it to the devices named in `to` and/or
/// every device of `group`; the server offers it on their next contact. A version older
/// than one a device runs is pushed only with `rollback` (a deliberate step back).
///
/// # Errors
/// An unknown version or device, an ONNX version (devices install native artifacts), an
/// older version without `rollback`, key or database failures.
pub fn push(
    registry: &Registry,
    r: &ModelRef,
    to: &[String],
    group: Option<&str>,
    rollback: bool,
) -> Result<Value> {
    if to.is_empty() && group.is_none() {
        return Err(crate::cli::UsageError(
            "say where to push: --to DEVICE (repeatable) or --group GROUP".into(),
        )
        .into());
    }
    let devices = open_fleet(registry.path())?.select(to, group)?;
    push_with(registry, r, &devices, Role::Active, rollback)
}

/// Signs version `r` and assigns it to `devices` in `role` (not older than what they run).
///
/// # Errors
/// As [`push`].
pub fn push_to(
    registry: &Registry,
    r: &ModelRef,
    devices: &[fleet::Device],
    role: Role,
) -> Result<Value> {
    push_with(registry, r, devices, role, false)
}

/// Signs version `r` as a deliberate step back and assigns it to `devices` as their active
/// model (the rollout gates restoring a group's previous version).
///
/// # Errors
/// As [`push`].
pub fn push_back_to(registry: &Registry, r: &ModelRef, devices: &[fleet::Device]) -> Result<Value> {
    push_with(registry, r, devices, Role::Active, true)
}

/// Devices that run a newer version of `name` than `number`, with that version.
fn running_newer(
    f: &Fleet,
    devices: &[fleet::Device],
    name: &str,
    number: u32,
) -> Result<Vec<String>> {
    let status = f.devices()?;
    Ok(devices
        .iter()
        .filter_map(|d| {
            let s = status.iter().find(|s| s.name == d.name)?;
            let running: u32 = s.version.as_deref()?.parse().ok()?;
            (s.model.as_deref() == Some(name) && running > number)
                .then(|| format!("{} runs {name}@{running}", d.name))
        })
        .collect())
}

/// Signs version `r` and assigns it to `devices` in `role`; `rollback` marks (and allows)
/// a version older than a device runs.
///
/// # Errors
/// As [`push`].
pub fn push_with(
    registry: &Registry,
    r: &ModelRef,
    devices: &[fleet::Device],
    role: Role,
    rollback: bool,
) -> Result<Value> {
    let db = registry.path().to_path_buf();
    let version = registry.resolve(r)?;
    let shown = format!("{}@{}", version.name, version.number);
    if version.format == ArtifactFormat::Onnx {
        return Err(fleet::FleetError::NotPushable {
            model: shown,
            reason: "it is stored as ONNX with ops the native engine lacks; devices install native .perch artifacts".into(),
        }
        .into());
    }
    let mut f = open_fleet(&db)?;
    if role == Role::Active && !rollback {
        let newer = running_newer(&f, devices, &version.name, version.number)?;
        if !newer.is_empty() {
            bail!(
                "{shown} is older than what {} ({}): add --rollback to go back to it on purpose",
                if newer.len() == 1 {
                    "a device runs"
                } else {
                    "devices run"
                },
                newer.join(", ")
            );
        }
    }
    let bytes = registry.artifact_bytes(&version)?;
    let mut model = artifact::decode(&bytes)
        .with_context(|| format!("reading the artifact of {shown}"))?
        .model;
    let added = complete_sections(&mut model, &version)?;
    // What the device checks against its budget before it installs (recomputed: the
    // stored artifact may predate the section).
    model.stamp_requirements()?;
    let key = fleet::keys::load_or_create(&db)?;
    let signed = artifact::sign(&artifact::encode(&model)?, &key)?;
    let p = f.sign_push(
        &version.name,
        &version.number.to_string(),
        &signed,
        None,
        &key,
        rollback,
    )?;
    f.assign_role(p.id, devices, role)?;
    Ok(json!({
        "push": p.id,
        "model": shown,
        "role": fleet::role_name(role),
        "release": p.release,
        "rollback": rollback,
        "size_bytes": p.size,
        "sha256": crate::util::to_hex(&p.model.sha256),
        "devices": devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "added_sections": added,
    }))
}

/// Waits until every device of push `push` installed or refused it for good, or `timeout`
/// passes.
/// Returns the assignments' states.
///
/// # Errors
/// Database failures; a timeout is not an error (the states say who is still pending).
pub fn wait_for_push(db: &Path, push: u64, timeout: Duration) -> Result<Value> {
    let f = open_fleet(db)?;
    let deadline = Instant::now() + timeout;
    loop {
        let states = f.push_states(push)?;
        let settled = states
            .iter()
            .all(|(_, s, _)| s != "pending" && s != "retrying");
        if settled || Instant::now() >= deadline {
            return Ok(json!(
                states
                    .into_iter()
                    .map(|(d, s, r)| json!({"device": d, "state": s, "reason": r}))
                    .collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The devices of a waited push that did not install it, as `NAME (STATE[: REASON])`:
/// empty when every device installed it.
pub fn push_not_installed(states: &Value) -> Vec<String> {
    states
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] != "installed")
        .map(|s| {
            format!(
                "{} ({}{})",
                s["device"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                s["reason"]
                    .as_str()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

/// Text of `perch-host push`.
pub fn render_push(v: &Value) -> String {
    let mut out = format!(
        "push {}: {} ({} bytes, sha256 {}) to {}\n",
        v["push"],
        v["model"].as_str().unwrap_or("?"),
        v["size_bytes"],
        v["sha256"].as_str().unwrap_or("?").get(..16).unwrap_or(""),
        v["devices"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    if let Some(a) = v["added_sections"].as_array().filter(|a| !a.is_empty()) {
        let names: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!("added to the artifact: {}\n", names.join(", ")));
    }
    match v["states"].as_array() {
        Some(states) => {
            for s in states {
                out.push_str(&format!(
                    "  {:<20} {}{}\n",
                    s["device"].as_str().unwrap_or("?"),
                    s["state"].as_str().unwrap_or("?"),
                    s["reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ));
            }
        }
        None => out.push_str(
            "devices install it on their next contact with `perch-host serve` (see `perch-host devices`)\n",
        ),
    }
    out
}

/// The alerts `perch-host alerts` lists: the open ones, or the latest `limit` of all with
/// `all`, newest first.
///
/// # Errors
/// Database failures.
pub fn alerts_list(db: &Path, all: bool, limit: usize) -> Result<Value> {
    Ok(serde_json::to_value(open_fleet(db)?.alerts(!all, limit)?)?)
}

/// `value` against `threshold` in the unit of `rule`, e.g. `PSI 0.41 > 0.20`.
fn compared(rule: &str, subject: &str, value: Option<f64>, threshold: Option<f64>) -> String {
    let (Some(v), Some(t)) = (value, threshold) else {
        return "-".into();
    };
    match rule {
        "drift" => format!("feature {subject} PSI {v} > {t}"),
        "accuracy" => format!("{:.1}% < {:.1}%", v * 100.0, t * 100.0),
        "latency" => format!("p95 {} ms > {} ms", v / 1000.0, t / 1000.0),
        "errors" => format!("{:.2}% > {:.2}%", v * 100.0, t * 100.0),
        "silence" => format!("{v:.0} s > {t:.0} s"),
        _ => format!("{v} vs {t}"),
    }
}

/// A time as a UTC date with how long ago it was: `2026-12-06 09:14:02 UTC (5m ago)`.
fn when(now: i64, t: i64) -> String {
    format!("{} UTC ({})", crate::cli::utc_time(t), ago(now, t))
}

fn ago(now: i64, t: i64) -> String {
    let s = (now - t).max(0);
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        7200..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// The table `perch-host alerts` prints; `all` adds the state and when it resolved.
pub fn render_alerts(v: &Value, all: bool) -> String {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return if all {
            "no alerts\n".into()
        } else {
            "no open alerts (`perch-host alerts --all` lists resolved ones too)\n".into()
        };
    }
    let now = fleet::now_unix_s();
    let mut header = vec!["RULE", "DEVICE", "MODEL", "VALUE VS THRESHOLD", "SINCE"];
    if all {
        header.push("STATE");
    }
    let mut table = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let model = match (r["model"].as_str(), r["version"].as_str()) {
            (Some(m), Some(v)) => format!("{m}@{v}"),
            (Some(m), None) => m.to_string(),
            _ => "-".into(),
        };
        let rule = s("rule");
        let mut row = vec![
            rule.clone(),
            s("device"),
            model,
            compared(
                &rule,
                r["subject"].as_str().unwrap_or(""),
                r["value"].as_f64(),
                r["threshold"].as_f64(),
            ),
            r["opened_unix_s"]
                .as_i64()
                .map_or("-".into(), |t| when(now, t)),
        ];
        if all {
            row.push(match r["resolved_unix_s"].as_i64() {
                Some(t) => format!("resolved {}", when(now, t)),
                None => s("state"),
            });
        }
        table.push(row);
    }
    let columns = table[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &table {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// What `perch-host serve` runs with.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// The sync server's settings.
    pub server: ServerConfig,
    /// Alert rules (checked when loaded, see [`fleet::alerts::load_rules`]).
    pub rules: Rules,
    /// What the monitor does by itself (rollouts, retraining); `None`: no monitor.
    pub automation: Option<super::lifecycle::Automation>,
}

/// Runs the sync server on `listen` and, unless `http` is `None`, the dashboard and
/// Prometheus endpoint on `http` beside it, until `shutdown` is triggered (which stops
/// both). `dashboard_ready` is told the dashboard's bound address before the sync server
/// starts, `ready` the sync server's.
///
/// # Errors
/// The database cannot be opened, an address cannot be bound, the dashboard failed.
pub fn serve_with_dashboard(
    db: &Path,
    listen: &str,
    http: Option<&str>,
    config: ServeConfig,
    shutdown: Shutdown,
    ready: impl FnOnce(SocketAddr),
    dashboard_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let Some(http) = http else {
        return serve(db, listen, config, shutdown, ready);
    };
    let dashboard = fleet::web::Dashboard::open(db.to_path_buf())
        .with_context(|| format!("opening {} for the dashboard", db.display()))?;
    let listener = TcpListener::bind(http)
        .with_context(|| format!("dashboard: listening on {http} (--http off disables it)"))?;
    dashboard_ready(listener.local_addr()?);
    let web = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("dashboard".into())
            .spawn(move || dashboard.serve(listener, &shutdown))
            .context("starting the dashboard thread")?
    };
    let result = serve(db, listen, config, shutdown.clone(), ready);
    shutdown.trigger();
    let web = match web.join() {
        Ok(r) => r.context("dashboard"),
        Err(_) => Err(anyhow!("the dashboard thread panicked")),
    };
    result.and(web)
}

/// Runs the sync server on `listen` until `shutdown` is triggered; `ready` is told the
/// bound address (useful with port 0).
///
/// # Errors
/// The database cannot be opened, the address cannot be bound.
pub fn serve(
    db: &Path,
    listen: &str,
    config: ServeConfig,
    shutdown: Shutdown,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let store = Arc::new(FleetStore::open_with(db, config.rules.retention)?);
    fleet::keys::load_or_create(db)?;
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let monitor = match config.automation {
        Some(a) => {
            let mut m = super::lifecycle::Monitor::open(db, a)?;
            let mut f = Fleet::open(db)?;
            let (stop, rules) = (shutdown.clone(), config.rules.clone());
            Some(
                std::thread::Builder::new()
                    .name("monitor".into())
                    .spawn(move || {
                        while !stop.is_triggered() {
                            let opened = match fleet::alerts::evaluate(
                                &mut f,
                                &rules,
                                fleet::now_unix_s(),
                            ) {
                                Ok(changes) => {
                                    for c in &changes {
                                        log::info!(
                                            "alert {:?}: {} on {}: {}",
                                            c.change,
                                            c.rule,
                                            c.device,
                                            c.detail
                                        );
                                    }
                                    super::lifecycle::opened(&changes)
                                }
                                Err(e) => {
                                    log::error!("alerts: {e}");
                                    Vec::new()
                                }
                            };
                            match m.step(&opened) {
                                Ok(lines) => lines.iter().for_each(|l| log::info!("{l}")),
                                Err(e) => log::error!("monitor: {e:#}"),
                            }
                            std::thread::sleep(MONITOR_PERIOD);
                        }
                    })
                    .context("starting the monitor thread")?,
            )
        }
        None => None,
    };
    ready(listener.local_addr()?);
    let served = server::serve(listener, store.clone(), config.server, shutdown.clone());
    shutdown.trigger();
    if let Some(m) = monitor {
        let _ = m.join();
    }
    store.close();
    served?;
    Ok(())
}

/// How often the monitor steps rollouts and evaluates alerts.
pub const MONITOR_PERIOD: Duration = Duration::from_millis(500);
