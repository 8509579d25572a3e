//! `perch-host devices | push | alerts | serve`: the fleet commands as library functions.

use super::render::{Render, Table, reason_suffix, when};
use crate::artifact;
use crate::fleet::alerts::Alert;
use crate::fleet::{self, Fleet};
use crate::fleet::{DeviceStatus, Event};
use crate::graph::sections::DriftBaseline;
use crate::metrics::Percentiles;
use crate::registry::{ArtifactFormat, ModelRef, Registry, Version};
use crate::sync::Role;
use crate::train::data::Dataset;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

fn open_fleet(db: &Path) -> Result<Fleet> {
    Fleet::open(db).with_context(|| format!("opening the fleet database {}", db.display()))
}

/// A registered device (`devices add`).
#[derive(Clone, Debug, Serialize)]
pub struct DeviceAdded {
    /// Device name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Where its agent configuration was written.
    pub config: String,
    /// `HOST:PORT` the configuration points the agent at.
    pub host: String,
}

impl Render for DeviceAdded {
    /// Nothing: `devices add` tells stderr where the configuration went.
    fn text(&self) -> String {
        String::new()
    }
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
) -> Result<DeviceAdded> {
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
    Ok(DeviceAdded {
        name: device.name,
        group: device.group,
        config: config_out.display().to_string(),
        host: host.to_string(),
    })
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

/// Every device (`devices list`).
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct DeviceList(pub Vec<DeviceStatus>);

/// Every device with model, version, last contact and health.
///
/// # Errors
/// Database failures.
pub fn devices_list(db: &Path) -> Result<DeviceList> {
    Ok(DeviceList(open_fleet(db)?.devices()?))
}

/// `NAME@VERSION` of what a device runs or an alert is about, `-` when unknown.
fn model_version(model: Option<&str>, version: Option<&str>) -> String {
    match (model, version) {
        (Some(m), Some(v)) => format!("{m}@{v}"),
        _ => "-".into(),
    }
}

impl Render for DeviceList {
    /// The table `perch-host devices` prints.
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no devices (add one with `perch-host devices add NAME`)\n".into();
        }
        let now = fleet::now_unix_s();
        let mut table = Table::fitted(["DEVICE", "GROUP", "MODEL", "LAST SEEN", "HEALTH", "PUSH"]);
        for d in &self.0 {
            table.row([
                d.name.clone(),
                d.group.clone(),
                model_version(d.model.as_deref(), d.version.as_deref()),
                d.last_seen_unix_s.map_or("never".into(), |t| when(now, t)),
                d.health.clone(),
                d.assignment.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        table.text()
    }
}

/// One device: its status, its latest events (refused connections, installs, rollbacks,
/// with reasons) and its latest reports.
///
/// # Errors
/// An unknown device, database failures.
pub fn device_show(db: &Path, name: &str) -> Result<DeviceReport> {
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
    let latest_reports = reports
        .iter()
        .rev()
        .take(10)
        .map(|r| ReportSummary {
            seq: r.seq,
            window_start_ms: r.report.window_start_ms,
            window_ms: r.report.window_ms,
            requests: r.report.requests,
            errors: r.report.errors,
            latency_us: r.report.latency_us,
            feedback: r.report.feedback,
            feedback_correct: r.report.feedback_correct,
            psi_milli: r.report.psi_milli.clone(),
            dropped: r.report.dropped,
        })
        .collect();
    Ok(DeviceReport {
        device: status,
        reports_stored: reports.len(),
        latest_reports,
        events,
    })
}

/// One metrics report of a device, as `devices show` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct ReportSummary {
    /// The report's sequence number.
    pub seq: u64,
    /// Start of its window, Unix milliseconds.
    pub window_start_ms: u64,
    /// Length of its window.
    pub window_ms: u32,
    /// Predictions served in the window.
    pub requests: u32,
    /// Failed predictions.
    pub errors: u32,
    /// Latency percentiles, microseconds.
    pub latency_us: Percentiles,
    /// Labelled feedback received.
    pub feedback: u32,
    /// Feedback that matched the prediction.
    pub feedback_correct: u32,
    /// PSI per feature, thousandths.
    pub psi_milli: Vec<u16>,
    /// Reports the device dropped before this one (its queue was full).
    pub dropped: u32,
}

/// One device, its events and its latest reports (`devices show`).
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// Its status.
    pub device: DeviceStatus,
    /// Reports the host keeps of it.
    pub reports_stored: usize,
    /// The latest ten, newest first.
    pub latest_reports: Vec<ReportSummary>,
    /// Its latest events (refusals with reasons, installs, rollbacks), newest first.
    pub events: Vec<Event>,
}

impl Render for DeviceReport {
    fn text(&self) -> String {
        let d = &self.device;
        let mut out = format!(
            "device {}  group {}  model {}@{}  health {}\n",
            d.name,
            d.group,
            d.model.as_deref().unwrap_or("-"),
            d.version.as_deref().unwrap_or("-"),
            d.health,
        );
        out.push_str(&format!("reports stored: {}\n", self.reports_stored));
        out.push_str("events (UTC):\n");
        for e in &self.events {
            out.push_str(&format!(
                "  {}  {:<16} {}\n",
                crate::cli::utc_time(e.unix_s),
                e.kind,
                e.detail
            ));
        }
        out
    }
}

/// The training rows of a version, encoded as it was trained, when they were recorded and
/// are still the same file.
fn training_data(version: &Version) -> Option<Dataset> {
    let schema = super::recorded_schema(version).ok()??;
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
) -> Result<PushReport> {
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
) -> Result<PushReport> {
    push_with(registry, r, devices, role, false)
}

/// Signs version `r` as a deliberate step back and assigns it to `devices` as their active
/// model (the rollout gates restoring a group's previous version).
///
/// # Errors
/// As [`push`].
pub fn push_back_to(
    registry: &Registry,
    r: &ModelRef,
    devices: &[fleet::Device],
) -> Result<PushReport> {
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
) -> Result<PushReport> {
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
    Ok(PushReport {
        push: p.id,
        model: shown,
        role: fleet::role_name(role),
        release: p.release,
        rollback,
        size_bytes: p.size,
        sha256: crate::util::to_hex(&p.model.sha256),
        devices: devices.iter().map(|d| d.name.clone()).collect(),
        added_sections: added,
        states: None,
        complete: None,
    })
}

/// Where one device of a push stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PushState {
    /// The device.
    pub device: String,
    /// `pending`, `retrying`, `installed`, `refused`, `replaced`, …
    pub state: String,
    /// Why, for a refusal.
    pub reason: Option<String>,
}

/// A signed and assigned version (`push`), with where its devices stand after `--wait`.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// The push's id.
    pub push: u64,
    /// `NAME@VERSION`.
    pub model: String,
    /// `active` or `shadow`.
    pub role: &'static str,
    /// The release counter signed with it.
    pub release: u64,
    /// Whether it was signed as a deliberate step back.
    pub rollback: bool,
    /// Signed artifact size.
    pub size_bytes: u64,
    /// SHA-256 of the signed artifact, lower-case hex.
    pub sha256: String,
    /// The devices it was assigned to.
    pub devices: Vec<String>,
    /// Sections the host added to the artifact (canary, drift baseline).
    pub added_sections: Vec<String>,
    /// Each device's state, after [`PushReport::wait`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub states: Option<Vec<PushState>>,
    /// Whether every device installed it, after [`PushReport::wait`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
}

impl PushReport {
    /// Waits until every device of the push installed or refused it for good, or `timeout`
    /// passes, and records where each stands.
    ///
    /// # Errors
    /// Database failures; a timeout is not an error (the states say who is still pending).
    pub fn wait(&mut self, db: &Path, timeout: Duration) -> Result<()> {
        let states = wait_for_push(db, self.push, timeout)?;
        self.complete = Some(states.iter().all(|s| s.state == "installed"));
        self.states = Some(states);
        Ok(())
    }

    /// The devices of a waited push that did not install it, as `NAME (STATE[: REASON])`:
    /// empty when every device installed it (or the push was not waited for).
    pub fn not_installed(&self) -> Vec<String> {
        self.states
            .iter()
            .flatten()
            .filter(|s| s.state != "installed")
            .map(|s| {
                format!(
                    "{} ({}{})",
                    s.device,
                    s.state,
                    reason_suffix(s.reason.as_deref())
                )
            })
            .collect()
    }
}

/// Waits until every device of push `push` installed or refused it for good, or `timeout`
/// passes. Returns the assignments' states.
///
/// # Errors
/// Database failures; a timeout is not an error (the states say who is still pending).
pub fn wait_for_push(db: &Path, push: u64, timeout: Duration) -> Result<Vec<PushState>> {
    let f = open_fleet(db)?;
    let deadline = Instant::now() + timeout;
    loop {
        let states = f.push_states(push)?;
        let settled = states
            .iter()
            .all(|(_, s, _)| s != "pending" && s != "retrying");
        if settled || Instant::now() >= deadline {
            return Ok(states
                .into_iter()
                .map(|(device, state, reason)| PushState {
                    device,
                    state,
                    reason,
                })
                .collect());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Render for PushReport {
    fn text(&self) -> String {
        let mut out = format!(
            "push {}: {} ({} bytes, sha256 {}) to {}\n",
            self.push,
            self.model,
            self.size_bytes,
            self.sha256.get(..16).unwrap_or(""),
            self.devices.join(", ")
        );
        if !self.added_sections.is_empty() {
            out.push_str(&format!(
                "added to the artifact: {}\n",
                self.added_sections.join(", ")
            ));
        }
        match &self.states {
            Some(states) => {
                for s in states {
                    out.push_str(&format!(
                        "  {:<20} {}{}\n",
                        s.device,
                        s.state,
                        reason_suffix(s.reason.as_deref())
                    ));
                }
            }
            None => out.push_str(
                "devices install it on their next contact with `perch-host serve` (see `perch-host devices`)\n",
            ),
        }
        out
    }
}

/// The alerts `perch-host alerts` lists; its JSON form is the array of alerts.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct AlertList {
    /// The alerts, newest first.
    pub alerts: Vec<Alert>,
    /// Whether resolved alerts were asked for too (the table then shows each one's state).
    #[serde(skip)]
    pub all: bool,
}

/// The alerts `perch-host alerts` lists: the open ones, or the latest `limit` of all with
/// `all`, newest first.
///
/// # Errors
/// Database failures.
pub fn alerts_list(db: &Path, all: bool, limit: usize) -> Result<AlertList> {
    Ok(AlertList {
        alerts: open_fleet(db)?.alerts(!all, limit)?,
        all,
    })
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

impl Render for AlertList {
    /// The table `perch-host alerts` prints; with `all`, the state and when it resolved.
    fn text(&self) -> String {
        if self.alerts.is_empty() {
            return if self.all {
                "no alerts\n".into()
            } else {
                "no open alerts (`perch-host alerts --all` lists resolved ones too)\n".into()
            };
        }
        let now = fleet::now_unix_s();
        let mut header = vec!["RULE", "DEVICE", "MODEL", "VALUE VS THRESHOLD", "SINCE"];
        if self.all {
            header.push("STATE");
        }
        let mut table = Table::fitted(header);
        for a in &self.alerts {
            let model = match (&a.model, &a.version) {
                (Some(m), None) => m.clone(),
                (m, v) => model_version(m.as_deref(), v.as_deref()),
            };
            let mut row = vec![
                a.rule.clone(),
                a.device.clone().unwrap_or_else(|| "-".into()),
                model,
                compared(&a.rule, &a.subject, a.value, a.threshold),
                when(now, a.opened_unix_s),
            ];
            if self.all {
                row.push(match a.resolved_unix_s {
                    Some(t) => format!("resolved {}", when(now, t)),
                    None => a.state.clone(),
                });
            }
            table.row(row);
        }
        table.text()
    }
}

/// `HOST:PORT` a new device's configuration points at when `devices add` is given no
/// `--host`: this machine's hostname (127.0.0.1 when it has none) and the sync port.
pub fn default_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("{name}:{}", crate::agent::config::DEFAULT_HOST_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, model: Option<(&str, &str)>, last_seen: Option<i64>) -> DeviceStatus {
        DeviceStatus {
            name: name.into(),
            group: "north".into(),
            model: model.map(|(m, _)| m.to_string()),
            version: model.map(|(_, v)| v.to_string()),
            last_seen_unix_s: last_seen,
            health: "ok".into(),
            assignment: None,
        }
    }

    #[test]
    fn the_device_table_aligns_its_columns() {
        let list = DeviceList(vec![
            status("pi-kitchen-01", Some(("wine", "2")), None),
            status("b", None, None),
        ]);
        assert_eq!(
            list.text(),
            "DEVICE         GROUP  MODEL   LAST SEEN  HEALTH  PUSH\n\
             pi-kitchen-01  north  wine@2  never      ok      -\n\
             b              north  -       never      ok      -\n"
        );
        assert!(DeviceList(Vec::new()).text().starts_with("no devices"));
    }

    #[test]
    fn a_waited_push_names_the_devices_without_it() {
        let mut push = PushReport {
            push: 7,
            model: "wine@2".into(),
            role: "active",
            release: 3,
            rollback: false,
            size_bytes: 1000,
            sha256: "ab".repeat(32),
            devices: vec!["a".into(), "b".into()],
            added_sections: Vec::new(),
            states: None,
            complete: None,
        };
        assert!(push.not_installed().is_empty());
        assert!(push.text().contains("on their next contact"));
        push.states = Some(vec![
            PushState {
                device: "a".into(),
                state: "installed".into(),
                reason: None,
            },
            PushState {
                device: "b".into(),
                state: "refused".into(),
                reason: Some("too big".into()),
            },
        ]);
        assert_eq!(push.not_installed(), ["b (refused: too big)"]);
        let json = serde_json::to_value(&push).unwrap();
        assert_eq!(json["states"][1]["reason"], "too big");
        assert_eq!(json["push"], 7);
    }
}
