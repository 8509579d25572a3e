//! Alert rules over the devices' latest reports, and their evaluation into the `alerts`
//! table.
//!
//! [`Rules`] come from a TOML file (`docs/alerts.md` lists every key); [`evaluate`] looks at
//! the latest [`Rules::window_reports`] reports of every device and opens, updates and
//! resolves one alert per (rule, device, subject), where the subject is the input feature
//! index for drift and empty otherwise. It returns what opened and resolved so the caller
//! (the monitor loop of `perch-host serve`) can react, and logs each change as an event.
//!
//! # How each rule aggregates
//! A device's *current model* is the model of its latest report. The report rules look only
//! at those of the device's latest `window_reports` reports that the current model served,
//! so windows of a previous model never count; every comparison is strict (a value exactly
//! at its threshold does not fire).
//! - **drift**: the latest of those windows with at least `drift.min_requests` requests;
//!   fires for each input feature whose PSI is above `drift.psi` (one alert per feature).
//! - **accuracy**: labelled feedback summed over those windows; once there are at least
//!   `accuracy.min_feedback` labels, fires when `correct / labels` is below `accuracy.min`.
//! - **latency**: the latest of those windows with at least `latency.min_requests` requests;
//!   fires when its p95 is above `latency.p95_us`.
//! - **errors**: requests and errors summed over those windows; once there are at least
//!   `errors.min_requests` requests, fires when `errors / requests` is above `errors.rate`.
//! - **silence**: devices seen at least once (a heartbeat, a connection or a report); fires
//!   when the last contact is more than `silence.after_s` seconds old.
//!
//! A rule without the data to decide (too few requests or labels, no PSI for a feature)
//! leaves its alert as it is. An open alert of a report rule resolves when the device no
//! longer runs the model it was about, and any open alert resolves when its rule is
//! disabled.
//!
//! # Layout
//! - [`rules`]: the TOML rules, their defaults and ranges.
//! - `eval`: what the rules decide for one device, on plain values (no database).
//! - `store`: the `alerts` table, the reads evaluation needs and the transaction that
//!   applies its decisions.

mod eval;
pub mod rules;
mod store;

pub use rules::{
    AccuracyRule, DriftRule, ErrorRule, LatencyRule, MAX_WINDOW_REPORTS, RetrainRule, Rule, Rules,
    SilenceRule, load_rules,
};
pub use store::Alert;

use super::{Fleet, FleetError};
use serde::Serialize;
use std::collections::HashMap;

/// Whether an alert opened or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// A rule's condition started to hold.
    Opened,
    /// It no longer holds (or its model no longer runs, or the rule was disabled).
    Resolved,
}

/// An alert that [`evaluate`] opened or resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertChange {
    /// Opened or resolved.
    pub change: Change,
    /// The alert's id in the `alerts` table.
    pub id: i64,
    /// The rule.
    pub rule: Rule,
    /// Device name.
    pub device: String,
    /// The device's group.
    pub group: String,
    /// Input feature index for drift, else empty.
    pub subject: String,
    /// The model the alert is about: its name, or the first 8 bytes of its SHA-256 in hex
    /// when the host knows no push with that digest; `None` when the device has none.
    pub model: Option<String>,
    /// Its version, when known.
    pub version: Option<String>,
    /// The measurement: PSI (drift), accuracy 0..=1, p95 microseconds, error rate 0..=1,
    /// seconds since the last contact (silence). For a resolution, the measurement that
    /// cleared it, or the alert's last one when it resolved for another reason.
    pub value: f64,
    /// The rule's threshold, in the unit of `value`.
    pub threshold: f64,
    /// What was measured, e.g. `feature 12 PSI 0.41 > 0.20 over 230 requests`; for a
    /// resolution, why it resolved.
    pub detail: String,
}

/// Evaluates `rules` over every device at time `now_unix_s`: opens an alert for each
/// (rule, device, subject) whose condition holds and has none open, updates the value and
/// `updated_unix_s` of an open one that still holds, and resolves one that no longer holds
/// (see the [module documentation](self) for how each rule aggregates). Each opened and
/// resolved alert is also recorded as an event (`alert` / `alert-resolved`). All writes
/// are one transaction.
///
/// Reads each device's latest [`Rules::window_reports`] reports through the
/// `(device_id, run, seq)` index, so its cost grows with devices, not with stored history.
/// Reports that no longer decode are skipped (and logged at most once a minute).
///
/// # Errors
/// Database failures (nothing is written then).
pub fn evaluate(
    fleet: &mut Fleet,
    rules: &Rules,
    now_unix_s: i64,
) -> Result<Vec<AlertChange>, FleetError> {
    let devices = fleet.alert_devices()?;
    let mut open = fleet.open_alerts()?;
    let mut pushes = HashMap::new();
    let mut actions = Vec::new();
    for (index, device) in devices.iter().enumerate() {
        let mine = open.remove(&device.id).unwrap_or_default();
        let (reports, received) = fleet.latest_reports(device.id, rules.window_reports)?;
        let current = match reports.first() {
            Some(latest) => fleet.model_name(device, &latest.model, &mut pushes)?,
            None => eval::ModelName::NONE,
        };
        eval::device_actions(
            rules,
            index,
            device,
            &reports,
            received,
            &current,
            mine,
            now_unix_s,
            &mut actions,
        );
    }
    store::apply(fleet, &devices, actions, now_unix_s)
}

#[cfg(test)]
mod tests;
