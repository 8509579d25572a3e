//! The JSON endpoints the dashboard page reads (documented in `docs/dashboard.md`).

use super::{ApiError, Dashboard};
use crate::fleet::{Device, FleetError, SILENT_AFTER_S, StoredReport, now_unix_s};
use crate::metrics::Report;
use crate::registry::Version;
use rusqlite::params;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// Points a series answer holds when the request names no `limit`.
pub(crate) const DEFAULT_POINTS: usize = 720;
/// Most points one series answer holds.
pub(crate) const MAX_POINTS: usize = 10_000;
/// Events an answer holds when the request names no `limit`, and at most.
const DEFAULT_EVENTS: usize = 50;
const MAX_EVENTS: usize = 1000;
/// Resolved alerts and finished rollouts listed beside the open / active ones.
const RECENT: i64 = 20;

/// Rollout states after which a rollout no longer changes anything; every other state
/// counts as in progress.
pub(crate) const FINISHED_ROLLOUT_STATES: &[&str] = &[
    "done",
    "complete",
    "completed",
    "promoted",
    "succeeded",
    "aborted",
    "failed",
    "rolled-back",
    "rolled_back",
    "cancelled",
    "canceled",
];

pub(crate) fn rollout_finished(state: &str) -> bool {
    FINISHED_ROLLOUT_STATES.contains(&state)
}

/// Whether a device last seen at `last_seen` counts as up at `now`.
pub(crate) fn is_up(last_seen: Option<i64>, now: i64) -> bool {
    last_seen.is_some_and(|t| now - t <= SILENT_AFTER_S)
}

/// `name@version` of the artifacts the fleet knows, by the first 8 bytes of their SHA-256
/// in hex (how reports name the model that served them): registry versions and the signed
/// artifacts pushed to devices.
pub(super) fn model_labels(d: &Dashboard) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for v in d.registry.list()? {
        if let Some(prefix) = v.artifact_sha256.get(..16) {
            out.insert(prefix.to_string(), format!("{}@{}", v.name, v.number));
        }
    }
    let fleet = &d.fleet;
    let mut stmt = fleet
        .conn
        .prepare_cached("SELECT sha256, name, version FROM pushes")
        .map_err(fleet.sql())?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(fleet.sql())?;
    for row in rows {
        let (sha, name, version) = row.map_err(fleet.sql())?;
        if let Some(prefix) = sha.get(..16) {
            out.insert(prefix.to_string(), format!("{name}@{version}"));
        }
    }
    Ok(out)
}

/// Requests per second of a window (0 for an empty window).
pub(crate) fn per_second(count: u32, window_ms: u32) -> f64 {
    if window_ms == 0 {
        0.0
    } else {
        f64::from(count) * 1000.0 / f64::from(window_ms)
    }
}

/// The largest PSI of a report, as a plain number.
pub(crate) fn psi_max(r: &Report) -> Option<f64> {
    r.psi_milli.iter().max().map(|&m| f64::from(m) / 1000.0)
}

/// Share of the window's labelled feedback that matched the prediction.
pub(crate) fn accuracy(r: &Report) -> Option<f64> {
    (r.feedback > 0).then(|| f64::from(r.feedback_correct) / f64::from(r.feedback))
}

fn point(s: &StoredReport, labels: &HashMap<String, String>) -> Value {
    let r = &s.report;
    let label = |m: &[u8; 8]| {
        let hex = crate::util::to_hex(m);
        if m.iter().all(|&b| b == 0) {
            Value::Null
        } else {
            Value::String(labels.get(&hex).cloned().unwrap_or(hex))
        }
    };
    json!({
        "seq": s.seq,
        "t_ms": r.window_start_ms,
        "window_ms": r.window_ms,
        "received_unix_s": s.received_unix_s,
        "model": label(&r.model),
        "requests": r.requests,
        "errors": r.errors,
        "rps": per_second(r.requests, r.window_ms),
        "error_rate": (r.requests > 0).then(|| f64::from(r.errors) / f64::from(r.requests)),
        "latency_us": { "p50": r.latency_us.p50, "p95": r.latency_us.p95, "p99": r.latency_us.p99 },
        "psi": r.psi_milli.iter().map(|&m| f64::from(m) / 1000.0).collect::<Vec<_>>(),
        "psi_max": psi_max(r),
        "feedback": r.feedback,
        "feedback_correct": r.feedback_correct,
        "accuracy": accuracy(r),
        "rss_kib": r.rss_kib,
        "cpu_temp_c": r.cpu_temp_milli_c.map(|t| f64::from(t) / 1000.0),
        "dropped": r.dropped,
        "shadow": r.shadow.as_ref().map(|sh| json!({
            "model": label(&sh.model),
            "requests": sh.requests,
            "errors": sh.errors,
            "agreed": sh.agreed,
            "agreement": (sh.requests > sh.errors)
                .then(|| f64::from(sh.agreed) / f64::from(sh.requests - sh.errors)),
            "latency_us": { "p50": sh.latency_us.p50, "p95": sh.latency_us.p95, "p99": sh.latency_us.p99 },
            "active_latency_us": { "p50": sh.active_latency_us.p50, "p95": sh.active_latency_us.p95,
                "p99": sh.active_latency_us.p99 },
            "memory_kib": sh.memory_kib,
            "active_memory_kib": sh.active_memory_kib,
        })),
    })
}

fn unknown_device(d: &Dashboard, name: &str) -> Result<ApiError, ApiError> {
    Ok(ApiError::NotFound(json!({
        "error": format!("unknown device {name:?}"),
        "known": d.fleet.device_names()?,
    })))
}

fn device(d: &Dashboard, name: &str) -> Result<Device, ApiError> {
    match d.fleet.device(name)? {
        Some(dev) => Ok(dev),
        None => Err(unknown_device(d, name)?),
    }
}

fn number<T: std::str::FromStr>(
    query: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, ApiError> {
    match query.get(key) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::BadRequest(format!("{key}={v:?} is not a non-negative whole number"))
        }),
    }
}

/// `GET /api/fleet`: every device with its status and a digest of its latest report.
pub(super) fn fleet(d: &mut Dashboard) -> Result<Value, ApiError> {
    let now = now_unix_s();
    let labels = model_labels(d)?;
    let mut devices = Vec::new();
    let mut up = 0;
    for s in d.fleet.devices()? {
        let latest = match d.fleet.device(&s.name)? {
            Some(dev) => d.fleet.recent_reports(&dev, None, 1)?.pop(),
            None => None,
        };
        let device_up = is_up(s.last_seen_unix_s, now);
        up += usize::from(device_up);
        let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("up".into(), device_up.into());
            m.insert(
                "model_ref".into(),
                match (&s.model, &s.version) {
                    (Some(n), Some(ver)) => format!("{n}@{ver}").into(),
                    _ => Value::Null,
                },
            );
            m.insert(
                "latest".into(),
                latest.as_ref().map_or(Value::Null, |r| point(r, &labels)),
            );
        }
        devices.push(v);
    }
    Ok(json!({
        "now_unix_s": now,
        "silent_after_s": SILENT_AFTER_S,
        "summary": {
            "devices": devices.len(),
            "up": up,
            "reports": d.fleet.report_count()?,
            "open_alerts": open_alert_count(d)?,
            "active_rollouts": rollout_rows(d)?.iter().filter(|r| !r.finished).count(),
        },
        "devices": devices,
    }))
}

fn version_json(v: &Version, running: &[String]) -> Value {
    json!({
        "number": v.number,
        "ref": format!("{}@{}", v.name, v.number),
        "format": v.format.name(),
        "size_bytes": v.size_bytes,
        "created_unix_s": v.created_unix_s,
        "parent": v.parent,
        "tags": v.tags,
        "aliases": v.aliases,
        "metrics": crate::host_cli::metrics_with_origin(v),
        "params": v.params,
        "fit_seconds": v.fit_seconds,
        "dataset": v.dataset.as_ref().map(|ds| json!({
            "sha256": ds.sha256, "rows": ds.rows, "columns": ds.columns,
        })),
        "artifact_sha256": v.artifact_sha256,
        "devices": running,
    })
}

/// `GET /api/models`: each model's versions with lineage, metrics and the devices running
/// them.
pub(super) fn models(d: &mut Dashboard) -> Result<Value, ApiError> {
    let mut running: HashMap<(String, String), Vec<String>> = HashMap::new();
    for s in d.fleet.devices()? {
        if let (Some(m), Some(v)) = (s.model, s.version) {
            running.entry((m, v)).or_default().push(s.name);
        }
    }
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for v in d.registry.list()? {
        let on = running
            .get(&(v.name.clone(), v.number.to_string()))
            .map_or(&[][..], Vec::as_slice);
        by_name
            .entry(v.name.clone())
            .or_default()
            .push(version_json(&v, on));
    }
    let models: Vec<Value> = by_name
        .into_iter()
        .map(|(name, versions)| json!({ "name": name, "versions": versions }))
        .collect();
    Ok(json!({ "models": models }))
}

/// `GET /api/devices/{name}/series?since=MS&limit=N`: the device's reports whose window
/// started after `since` (milliseconds since the Unix epoch), the latest `limit` of them,
/// oldest first.
pub(super) fn series(
    d: &mut Dashboard,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let since: Option<u64> = number(query, "since")?;
    let limit = number::<usize>(query, "limit")?
        .unwrap_or(DEFAULT_POINTS)
        .clamp(1, MAX_POINTS);
    let dev = device(d, name)?;
    let labels = model_labels(d)?;
    let reports = d.fleet.recent_reports(&dev, since, limit)?;
    let features = reports
        .iter()
        .map(|r| r.report.psi_milli.len())
        .max()
        .unwrap_or(0);
    Ok(json!({
        "device": dev.name,
        "group": dev.group,
        "since": since,
        "limit": limit,
        "features": features,
        "points": reports.iter().map(|r| point(r, &labels)).collect::<Vec<_>>(),
    }))
}

/// `GET /api/events?device=NAME&limit=N`: the latest events, newest first.
pub(super) fn events(
    d: &mut Dashboard,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let limit = number::<usize>(query, "limit")?
        .unwrap_or(DEFAULT_EVENTS)
        .clamp(1, MAX_EVENTS);
    let device = query.get("device").filter(|s| !s.is_empty());
    if let Some(name) = device {
        device_exists(d, name)?;
    }
    let mut events = d.fleet.events(device.map(String::as_str), limit)?;
    events.reverse();
    Ok(json!({ "events": events }))
}

fn device_exists(d: &Dashboard, name: &str) -> Result<(), ApiError> {
    device(d, name).map(|_| ())
}

/// One row of the `alerts` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct AlertRow {
    pub(crate) id: i64,
    pub(crate) rule: String,
    pub(crate) device: Option<String>,
    pub(crate) subject: String,
    pub(crate) model: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) value: Option<f64>,
    pub(crate) threshold: Option<f64>,
    pub(crate) state: String,
    pub(crate) opened_unix_s: i64,
    pub(crate) updated_unix_s: i64,
    pub(crate) resolved_unix_s: Option<i64>,
    pub(crate) detail: String,
}

fn alert_rows(d: &Dashboard, open: bool, limit: i64) -> Result<Vec<AlertRow>, FleetError> {
    let fleet = &d.fleet;
    let mut stmt = fleet
        .conn
        .prepare_cached(
            "SELECT a.id, a.rule, d.name, a.subject, a.model, a.version, a.value, a.threshold,
                    a.state, a.opened_unix_s, a.updated_unix_s, a.resolved_unix_s, a.detail
             FROM alerts a LEFT JOIN devices d ON d.id = a.device_id
             WHERE (a.state = 'open') = ?1 ORDER BY a.updated_unix_s DESC, a.id DESC LIMIT ?2",
        )
        .map_err(fleet.sql())?;
    let rows = stmt
        .query_map(params![open, limit], |r| {
            Ok(AlertRow {
                id: r.get(0)?,
                rule: r.get(1)?,
                device: r.get(2)?,
                subject: r.get(3)?,
                model: r.get(4)?,
                version: r.get(5)?,
                value: r.get(6)?,
                threshold: r.get(7)?,
                state: r.get(8)?,
                opened_unix_s: r.get(9)?,
                updated_unix_s: r.get(10)?,
                resolved_unix_s: r.get(11)?,
                detail: r.get(12)?,
            })
        })
        .map_err(fleet.sql())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fleet.sql())?;
    Ok(rows)
}

fn open_alert_count(d: &Dashboard) -> Result<i64, FleetError> {
    d.fleet
        .conn
        .query_row(
            "SELECT COUNT(*) FROM alerts WHERE state = 'open'",
            [],
            |r| r.get(0),
        )
        .map_err(d.fleet.sql())
}

/// Open alerts per rule, rules that only have resolved alerts included with 0.
pub(crate) fn open_alerts_by_rule(d: &Dashboard) -> Result<Vec<(String, i64)>, FleetError> {
    let fleet = &d.fleet;
    let mut stmt = fleet
        .conn
        .prepare_cached("SELECT rule, SUM(state = 'open') FROM alerts GROUP BY rule ORDER BY rule")
        .map_err(fleet.sql())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(fleet.sql())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fleet.sql())?;
    Ok(rows)
}

/// `GET /api/alerts`: every open alert, and the latest resolved ones.
pub(super) fn alerts(d: &mut Dashboard) -> Result<Value, ApiError> {
    Ok(json!({
        "open": alert_rows(d, true, i64::MAX)?,
        "resolved": alert_rows(d, false, RECENT)?,
    }))
}

/// One row of the `rollouts` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct RolloutRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) group: String,
    pub(crate) canary: i64,
    pub(crate) state: String,
    pub(crate) finished: bool,
    pub(crate) reason: Option<String>,
    pub(crate) previous: Option<String>,
    /// Parsed when the column holds JSON, else the text as it is.
    pub(crate) gates: Value,
    pub(crate) results: Value,
    pub(crate) origin: Option<String>,
    pub(crate) created_unix_s: i64,
    pub(crate) updated_unix_s: i64,
}

fn json_text(text: Option<String>) -> Value {
    match text {
        None => Value::Null,
        Some(t) => serde_json::from_str(&t).unwrap_or(Value::String(t)),
    }
}

pub(crate) fn rollout_rows(d: &Dashboard) -> Result<Vec<RolloutRow>, FleetError> {
    let fleet = &d.fleet;
    let mut stmt = fleet
        .conn
        .prepare_cached(
            "SELECT id, name, version, grp, canary, state, reason, previous, gates, results,
                    origin, created_unix_s, updated_unix_s
             FROM rollouts ORDER BY updated_unix_s DESC, id DESC",
        )
        .map_err(fleet.sql())?;
    let rows = stmt
        .query_map([], |r| {
            let state: String = r.get(5)?;
            Ok(RolloutRow {
                id: r.get(0)?,
                name: r.get(1)?,
                version: r.get(2)?,
                group: r.get(3)?,
                canary: r.get(4)?,
                finished: rollout_finished(&state),
                state,
                reason: r.get(6)?,
                previous: r.get(7)?,
                gates: json_text(r.get(8)?),
                results: json_text(r.get(9)?),
                origin: r.get(10)?,
                created_unix_s: r.get(11)?,
                updated_unix_s: r.get(12)?,
            })
        })
        .map_err(fleet.sql())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fleet.sql())?;
    Ok(rows)
}

/// `GET /api/rollouts`: rollouts in progress, and the latest finished ones.
pub(super) fn rollouts(d: &mut Dashboard) -> Result<Value, ApiError> {
    let (active, finished): (Vec<RolloutRow>, Vec<RolloutRow>) =
        rollout_rows(d)?.into_iter().partition(|r| !r.finished);
    let recent: Vec<RolloutRow> = finished.into_iter().take(RECENT as usize).collect();
    Ok(json!({ "active": active, "recent": recent }))
}
