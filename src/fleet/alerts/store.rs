//! Storage: the `alerts` table and the reads evaluation needs (devices, their latest
//! reports, open alerts, which model a digest names), and [`apply`], which writes what
//! [`super::eval`] decided in one transaction.

use super::eval::{Action, DeviceRow, ModelName, OpenAlert, OpenAlerts};
use super::rules::Rule;
use super::{AlertChange, Change};
use crate::fleet::{Fleet, FleetError, decode_report};
use crate::metrics::Report;
use crate::util::write_transaction;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::collections::HashMap;

/// An alert as the `alerts` table keeps it (for listings and the dashboard).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Id.
    pub id: i64,
    /// The rule's name ([`Rule::as_str`]; kept as text so rows of rules this build does not
    /// know still list).
    pub rule: String,
    /// Device name.
    pub device: Option<String>,
    /// The device's group.
    pub group: Option<String>,
    /// Input feature index for drift, else empty.
    pub subject: String,
    /// The model it is about (see [`AlertChange::model`]).
    pub model: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// The latest measurement while it held (see [`AlertChange::value`]).
    pub value: Option<f64>,
    /// The threshold.
    pub threshold: Option<f64>,
    /// `open` or `resolved`.
    pub state: String,
    /// When it opened, seconds since the Unix epoch.
    pub opened_unix_s: i64,
    /// When it was last evaluated as holding (or resolved).
    pub updated_unix_s: i64,
    /// When it resolved.
    pub resolved_unix_s: Option<i64>,
    /// The latest measurement while it held, in words.
    pub detail: String,
}

impl Fleet {
    /// The latest `limit` alerts, newest first: the open ones, or all with `open_only` false.
    ///
    /// # Errors
    /// Database failures.
    pub fn alerts(&self, open_only: bool, limit: usize) -> Result<Vec<Alert>, FleetError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT a.id, a.rule, d.name, d.grp, a.subject, a.model, a.version, a.value,
                        a.threshold, a.state, a.opened_unix_s, a.updated_unix_s,
                        a.resolved_unix_s, a.detail
                 FROM alerts a LEFT JOIN devices d ON d.id = a.device_id
                 WHERE ?1 = 0 OR a.state = 'open' ORDER BY a.id DESC LIMIT ?2",
            )
            .map_err(self.sql())?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![open_only, limit], |r| {
                Ok(Alert {
                    id: r.get(0)?,
                    rule: r.get(1)?,
                    device: r.get(2)?,
                    group: r.get(3)?,
                    subject: r.get(4)?,
                    model: r.get(5)?,
                    version: r.get(6)?,
                    value: r.get(7)?,
                    threshold: r.get(8)?,
                    state: r.get(9)?,
                    opened_unix_s: r.get(10)?,
                    updated_unix_s: r.get(11)?,
                    resolved_unix_s: r.get(12)?,
                    detail: r.get(13)?,
                })
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(rows)
    }
}

/// Logs damaged reports at most once a minute: evaluation runs every second and skips them.
fn warn_damaged(e: &FleetError) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST_WARNED_S: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = crate::fleet::now_unix_s();
    let last = LAST_WARNED_S.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60
        && LAST_WARNED_S
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log::warn!("alerts: skipping a report: {e}");
    }
}

impl Fleet {
    /// Every device, in id order.
    pub(super) fn alert_devices(&self) -> Result<Vec<DeviceRow>, FleetError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, name, grp, model_name, model_version, model_sha256, last_seen_unix_s
                 FROM devices ORDER BY id",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeviceRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    group: r.get(2)?,
                    model_name: r.get(3)?,
                    model_version: r.get(4)?,
                    model_sha256: r.get(5)?,
                    last_seen_unix_s: r.get(6)?,
                })
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// The device's latest `n` reports, newest first, with the latest arrival time;
    /// undecodable reports are skipped.
    pub(super) fn latest_reports(
        &self,
        device: i64,
        n: u32,
    ) -> Result<(Vec<Report>, Option<i64>), FleetError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, received_unix_s, report, report_form FROM metrics WHERE device_id = ?1
                 ORDER BY run DESC, seq DESC LIMIT ?2",
            )
            .map_err(self.sql())?;
        let mut rows = stmt.query(params![device, n]).map_err(self.sql())?;
        let (mut reports, mut received) = (Vec::new(), None);
        while let Some(r) = rows.next().map_err(self.sql())? {
            let seq: i64 = r.get(0).map_err(self.sql())?;
            let at: i64 = r.get(1).map_err(self.sql())?;
            received = Some(received.map_or(at, |t: i64| t.max(at)));
            let blob = r.get_ref(2).map_err(self.sql())?;
            let blob = blob.as_blob().map_err(|e| self.sql()(e.into()))?;
            let form: i64 = r.get(3).map_err(self.sql())?;
            match decode_report(device, seq, form, blob) {
                Ok(report) => reports.push(report),
                Err(e) => warn_damaged(&e),
            }
        }
        Ok((reports, received))
    }

    /// Open alerts by device, then by (rule, subject).
    pub(super) fn open_alerts(&self) -> Result<OpenAlerts, FleetError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, rule, device_id, subject, model, version, value, threshold
                 FROM alerts WHERE state = 'open'",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, String>(3)?,
                    OpenAlert {
                        id: r.get(0)?,
                        model: r.get(4)?,
                        version: r.get(5)?,
                        value: r.get::<_, Option<f64>>(6)?.unwrap_or(0.0),
                        threshold: r.get::<_, Option<f64>>(7)?.unwrap_or(0.0),
                    },
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        let mut out = OpenAlerts::new();
        for (rule, device, subject, alert) in rows {
            // Rows of rules this build does not know, or of no device, belong to someone else.
            if let (Some(rule), Some(device)) = (Rule::from_name(&rule), device) {
                out.entry(device)
                    .or_default()
                    .insert((rule, subject), alert);
            }
        }
        Ok(out)
    }

    /// Name and version of the model whose digest starts with `hash`: the device's own
    /// when it matches, else the latest push with that digest.
    pub(super) fn model_name(
        &self,
        device: &DeviceRow,
        hash: &[u8; 8],
        pushes: &mut HashMap<[u8; 8], Option<(String, String)>>,
    ) -> Result<ModelName, FleetError> {
        if hash == &[0; 8] {
            return Ok(ModelName::NONE);
        }
        let hex = crate::util::to_hex(hash);
        if device
            .model_sha256
            .as_deref()
            .is_some_and(|s| s.starts_with(&hex))
            && let Some(name) = &device.model_name
        {
            return Ok(ModelName {
                model: Some(name.clone()),
                version: device.model_version.clone(),
            });
        }
        if !pushes.contains_key(hash) {
            let found = self
                .conn
                .query_row(
                    "SELECT name, version FROM pushes WHERE substr(sha256, 1, 16) = ?1
                     ORDER BY id DESC LIMIT 1",
                    [&hex],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(self.sql())?;
            pushes.insert(*hash, found);
        }
        Ok(match pushes.get(hash).cloned().flatten() {
            Some((name, version)) => ModelName {
                model: Some(name),
                version: Some(version),
            },
            None => ModelName {
                model: Some(hex),
                version: None,
            },
        })
    }
}
/// Writes `actions` (decided over `devices`) at `now` in one transaction, recording each
/// opened and resolved alert as an event; returns those changes.
pub(super) fn apply(
    fleet: &mut Fleet,
    devices: &[DeviceRow],
    actions: Vec<Action>,
    now: i64,
) -> Result<Vec<AlertChange>, FleetError> {
    let sql = crate::util::sqlite_error::<FleetError>(&fleet.path);
    write_transaction(&mut fleet.conn, &fleet.path, |tx| {
        let mut changes = Vec::new();
        {
            let mut event = tx
                .prepare_cached(
                    "INSERT INTO events (unix_s, device_id, device_name, kind, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql)?;
            for action in actions {
                match action {
                    Action::Update { id, value, detail } => {
                        tx.prepare_cached(
                            "UPDATE alerts SET value = ?1, detail = ?2, updated_unix_s = ?3
                         WHERE id = ?4",
                        )
                        .and_then(|mut s| s.execute(params![value, detail, now, id]))
                        .map_err(sql)?;
                    }
                    Action::Open {
                        device,
                        model,
                        finding,
                    } => {
                        let d = &devices[device];
                        tx.prepare_cached(
                            "INSERT INTO alerts (rule, device_id, subject, model, version, value,
                           threshold, state, opened_unix_s, updated_unix_s, detail)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8, ?8, ?9)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                finding.rule.as_str(),
                                d.id,
                                finding.subject,
                                model.model,
                                model.version,
                                finding.value,
                                finding.threshold,
                                now,
                                finding.detail
                            ])
                        })
                        .map_err(sql)?;
                        let id = tx.last_insert_rowid();
                        event
                            .execute(params![
                                now,
                                d.id,
                                d.name,
                                "alert",
                                format!(
                                    "{} on {}: {}",
                                    finding.rule,
                                    model.shown(),
                                    finding.detail
                                )
                            ])
                            .map_err(sql)?;
                        changes.push(AlertChange {
                            change: Change::Opened,
                            id,
                            rule: finding.rule,
                            device: d.name.clone(),
                            group: d.group.clone(),
                            subject: finding.subject,
                            model: model.model,
                            version: model.version,
                            value: finding.value,
                            threshold: finding.threshold,
                            detail: finding.detail,
                        });
                    }
                    Action::Resolve {
                        device,
                        rule,
                        subject,
                        alert,
                        value,
                        detail,
                    } => {
                        let d = &devices[device];
                        tx.prepare_cached(
                            "UPDATE alerts SET state = 'resolved', resolved_unix_s = ?1,
                           updated_unix_s = ?1 WHERE id = ?2",
                        )
                        .and_then(|mut s| s.execute(params![now, alert.id]))
                        .map_err(sql)?;
                        event
                            .execute(params![
                                now,
                                d.id,
                                d.name,
                                "alert-resolved",
                                format!("{rule}: {detail}")
                            ])
                            .map_err(sql)?;
                        changes.push(AlertChange {
                            change: Change::Resolved,
                            id: alert.id,
                            rule,
                            device: d.name.clone(),
                            group: d.group.clone(),
                            subject,
                            model: alert.model,
                            version: alert.version,
                            value,
                            threshold: alert.threshold,
                            detail,
                        });
                    }
                }
            }
        }
        Ok(changes)
    })
}
