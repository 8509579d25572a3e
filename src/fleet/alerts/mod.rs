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

use super::{Fleet, FleetError, decode_report};
use crate::metrics::Report;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Most reports per device a rule may look at (`window_reports`).
pub const MAX_WINDOW_REPORTS: u32 = 100;

/// The alert rules, as read from TOML; every key has a default ([`Rules::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// How many of a device's latest reports the report rules look at (1..=100).
    pub window_reports: u32,
    /// Input drift.
    pub drift: DriftRule,
    /// Accuracy from labelled feedback.
    pub accuracy: AccuracyRule,
    /// Latency.
    pub latency: LatencyRule,
    /// Error rate.
    pub errors: ErrorRule,
    /// Devices that stopped calling in.
    pub silence: SilenceRule,
    /// What the host does when an alert opens: retrain, and how to roll the result out.
    pub retrain: RetrainRule,
    /// The gates of the rollouts the host starts (`perch-host rollout` takes its own flags).
    pub rollout: super::rollout::Gates,
    /// How long `perch-host serve` keeps reports, labelled samples and events.
    pub retention: super::Retention,
}

/// `[retrain]`: automatic retraining when an alert opens for a model whose training recipe
/// is in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainRule {
    /// Whether the host retrains by itself.
    pub enabled: bool,
    /// The alert rules that start a retraining (`drift`, `accuracy`).
    pub on: Vec<String>,
    /// Canary devices of the rollout that follows.
    pub canary: u32,
    /// Labelled feedback samples the group must have sent before the host retrains.
    pub min_samples: u32,
}

impl Default for RetrainRule {
    fn default() -> Self {
        RetrainRule {
            enabled: true,
            on: vec!["drift".into(), "accuracy".into()],
            canary: 1,
            min_samples: 200,
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            window_reports: 3,
            drift: DriftRule::default(),
            accuracy: AccuracyRule::default(),
            latency: LatencyRule::default(),
            errors: ErrorRule::default(),
            silence: SilenceRule::default(),
            retrain: RetrainRule::default(),
            rollout: super::rollout::Gates::default(),
            retention: super::Retention::default(),
        }
    }
}

/// `[drift]`: PSI of an input feature against the artifact's training baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftRule {
    /// Whether the rule runs.
    pub enabled: bool,
    /// PSI above which a feature drifted (finite, > 0).
    pub psi: f64,
    /// Requests a window needs before its PSI counts (PSI of few samples is noise).
    pub min_requests: u32,
}

impl Default for DriftRule {
    fn default() -> Self {
        DriftRule {
            enabled: true,
            psi: 0.2,
            min_requests: 100,
        }
    }
}

/// `[accuracy]`: share of labelled feedback the model got right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccuracyRule {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Accuracy below which the rule fires (0..=1).
    pub min: f64,
    /// Labels needed before accuracy counts.
    pub min_feedback: u32,
}

impl Default for AccuracyRule {
    fn default() -> Self {
        AccuracyRule {
            enabled: true,
            min: 0.8,
            min_feedback: 20,
        }
    }
}

/// `[latency]`: the p95 latency of a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyRule {
    /// Whether the rule runs.
    pub enabled: bool,
    /// p95 latency above which the rule fires, microseconds.
    pub p95_us: u32,
    /// Requests a window needs before its p95 counts.
    pub min_requests: u32,
}

impl Default for LatencyRule {
    fn default() -> Self {
        LatencyRule {
            enabled: true,
            p95_us: 250_000,
            min_requests: 1,
        }
    }
}

/// `[errors]`: failed requests over all requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorRule {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Error rate above which the rule fires (0 up to, not including, 1).
    pub rate: f64,
    /// Requests (summed over the windows looked at) needed before the rate counts.
    pub min_requests: u32,
}

impl Default for ErrorRule {
    fn default() -> Self {
        ErrorRule {
            enabled: true,
            rate: 0.05,
            min_requests: 100,
        }
    }
}

/// `[silence]`: time since a device's last contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SilenceRule {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Seconds without contact after which a device seen before is silent.
    pub after_s: u32,
}

impl Default for SilenceRule {
    fn default() -> Self {
        SilenceRule {
            enabled: true,
            after_s: super::SILENT_AFTER_S as u32,
        }
    }
}

impl Rules {
    /// Parses and checks rules from TOML text; `origin` names the text in errors.
    ///
    /// # Errors
    /// [`FleetError::RulesSyntax`] for text that is not TOML, a key perch does not know or a
    /// value of the wrong type (the message names the key and its line);
    /// [`FleetError::BadRule`] naming the key of a value out of its range.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Rules, FleetError> {
        let rules: Rules = toml::from_str(text).map_err(|e| FleetError::RulesSyntax {
            path: origin.to_path_buf(),
            reason: e.to_string(),
        })?;
        rules.check(origin)?;
        Ok(rules)
    }

    /// Checks every value against its range.
    ///
    /// # Errors
    /// [`FleetError::BadRule`] naming the first key out of range (`origin` is its file).
    pub fn check(&self, origin: &Path) -> Result<(), FleetError> {
        let bad = |key: &str, value: String, reason: &str| {
            Err(FleetError::BadRule {
                path: origin.to_path_buf(),
                key: key.to_string(),
                value,
                reason: reason.to_string(),
            })
        };
        for rule in &self.retrain.on {
            if Rule::from_name(rule).is_none() {
                return bad(
                    "retrain.on",
                    rule.clone(),
                    "each entry is an alert rule: drift, accuracy, latency, errors or silence",
                );
            }
        }
        if let Err((key, value, reason)) = self.rollout.check() {
            return bad(&format!("rollout.{key}"), value, reason);
        }
        if let Err((key, value, reason)) = self.retention.check() {
            return bad(&format!("retention.{key}"), value, &reason);
        }
        if !(1..=MAX_WINDOW_REPORTS).contains(&self.window_reports) {
            return bad(
                "window_reports",
                self.window_reports.to_string(),
                "must be 1..=100",
            );
        }
        if !(self.drift.psi.is_finite() && self.drift.psi > 0.0) {
            return bad(
                "drift.psi",
                self.drift.psi.to_string(),
                "must be a finite number above 0 (0.1-0.25 is a moderate shift, above 0.25 a large one)",
            );
        }
        if self.drift.min_requests == 0 {
            return bad("drift.min_requests", "0".into(), "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.accuracy.min) {
            return bad(
                "accuracy.min",
                self.accuracy.min.to_string(),
                "must be within 0..=1 (0.8 is 80%)",
            );
        }
        if self.accuracy.min_feedback == 0 {
            return bad("accuracy.min_feedback", "0".into(), "must be at least 1");
        }
        if self.latency.p95_us == 0 {
            return bad("latency.p95_us", "0".into(), "must be at least 1");
        }
        if self.latency.min_requests == 0 {
            return bad("latency.min_requests", "0".into(), "must be at least 1");
        }
        if !(self.errors.rate >= 0.0 && self.errors.rate < 1.0) {
            return bad(
                "errors.rate",
                self.errors.rate.to_string(),
                "must be at least 0 and below 1 (0.05 is 5%)",
            );
        }
        if self.errors.min_requests == 0 {
            return bad("errors.min_requests", "0".into(), "must be at least 1");
        }
        if self.silence.after_s == 0 {
            return bad("silence.after_s", "0".into(), "must be at least 1");
        }
        Ok(())
    }

    fn enabled(&self, rule: Rule) -> bool {
        match rule {
            Rule::Drift => self.drift.enabled,
            Rule::Accuracy => self.accuracy.enabled,
            Rule::Latency => self.latency.enabled,
            Rule::Errors => self.errors.enabled,
            Rule::Silence => self.silence.enabled,
        }
    }
}

/// The rules in the TOML file at `path`, or the defaults when there is none.
///
/// # Errors
/// [`FleetError::RulesUnreadable`] when the file cannot be read, else as
/// [`Rules::from_toml`].
pub fn load_rules(path: Option<&Path>) -> Result<Rules, FleetError> {
    let Some(path) = path else {
        return Ok(Rules::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| FleetError::RulesUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    Rules::from_toml(&text, path)
}

/// An alert rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Rule {
    /// An input feature's PSI is above `drift.psi`; the subject is the feature index.
    Drift,
    /// Accuracy from labelled feedback is below `accuracy.min`.
    Accuracy,
    /// p95 latency is above `latency.p95_us`.
    Latency,
    /// The error rate is above `errors.rate`.
    Errors,
    /// A device seen before has not called in for more than `silence.after_s`.
    Silence,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 5] = [
        Rule::Drift,
        Rule::Accuracy,
        Rule::Latency,
        Rule::Errors,
        Rule::Silence,
    ];

    /// The name stored in the `alerts` table and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Drift => "drift",
            Rule::Accuracy => "accuracy",
            Rule::Latency => "latency",
            Rule::Errors => "errors",
            Rule::Silence => "silence",
        }
    }

    /// The rule named `name` (as [`Rule::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

struct DeviceRow {
    id: i64,
    name: String,
    group: String,
    model_name: Option<String>,
    model_version: Option<String>,
    model_sha256: Option<String>,
    last_seen_unix_s: Option<i64>,
}

type OpenAlerts = HashMap<i64, HashMap<(Rule, String), OpenAlert>>;

struct OpenAlert {
    id: i64,
    model: Option<String>,
    version: Option<String>,
    value: f64,
    threshold: f64,
}

/// A rule's verdict on one (device, subject) with the data to decide.
struct Finding {
    rule: Rule,
    subject: String,
    holds: bool,
    value: f64,
    threshold: f64,
    detail: String,
}

/// The model a device's windows were served by, as alerts name it.
#[derive(Clone, PartialEq)]
struct ModelName {
    model: Option<String>,
    version: Option<String>,
}

impl ModelName {
    fn shown(&self) -> String {
        match (&self.model, &self.version) {
            (Some(m), Some(v)) => format!("{m}@{v}"),
            (Some(m), None) => m.clone(),
            _ => "no model".into(),
        }
    }
}

enum Action {
    Open {
        device: usize,
        model: ModelName,
        finding: Finding,
    },
    Update {
        id: i64,
        value: f64,
        detail: String,
    },
    Resolve {
        device: usize,
        rule: Rule,
        subject: String,
        alert: OpenAlert,
        value: f64,
        detail: String,
    },
}

/// PSI with two decimals, or three when the third is not zero (PSI is reported in
/// thousandths, so this is exact).
fn psi_text(v: f64) -> String {
    let three = format!("{v:.3}");
    match three.strip_suffix('0') {
        Some(two) => two.to_string(),
        None => three,
    }
}

fn is_report_rule(rule: Rule) -> bool {
    rule != Rule::Silence
}

/// The findings of the report rules over `windows` (latest first, one model).
fn report_findings(rules: &Rules, windows: &[&Report]) -> Vec<Finding> {
    let mut out = Vec::new();
    if rules.drift.enabled
        && let Some(w) = windows
            .iter()
            .find(|w| w.requests >= rules.drift.min_requests)
    {
        let t = rules.drift.psi;
        for (feature, &milli) in w.psi_milli.iter().enumerate() {
            let v = f64::from(milli) / 1000.0;
            let holds = v > t;
            out.push(Finding {
                rule: Rule::Drift,
                subject: feature.to_string(),
                holds,
                value: v,
                threshold: t,
                detail: format!(
                    "feature {feature} PSI {} {} {} over {} requests",
                    psi_text(v),
                    if holds { ">" } else { "<=" },
                    psi_text(t),
                    w.requests
                ),
            });
        }
    }
    if rules.accuracy.enabled {
        let labels: u64 = windows.iter().map(|w| u64::from(w.feedback)).sum();
        let correct: u64 = windows
            .iter()
            .map(|w| u64::from(w.feedback_correct.min(w.feedback)))
            .sum();
        if labels >= u64::from(rules.accuracy.min_feedback) {
            let v = correct as f64 / labels as f64;
            let t = rules.accuracy.min;
            let holds = v < t;
            out.push(Finding {
                rule: Rule::Accuracy,
                subject: String::new(),
                holds,
                value: v,
                threshold: t,
                detail: format!(
                    "accuracy {:.1}% {} {:.1}% ({correct} of {labels} labels correct)",
                    v * 100.0,
                    if holds { "<" } else { ">=" },
                    t * 100.0
                ),
            });
        }
    }
    if rules.latency.enabled
        && let Some(w) = windows
            .iter()
            .find(|w| w.requests >= rules.latency.min_requests)
    {
        let (v, t) = (w.latency_us.p95, rules.latency.p95_us);
        let holds = v > t;
        out.push(Finding {
            rule: Rule::Latency,
            subject: String::new(),
            holds,
            value: f64::from(v),
            threshold: f64::from(t),
            detail: format!(
                "p95 latency {v} µs {} {t} µs over {} requests",
                if holds { ">" } else { "<=" },
                w.requests
            ),
        });
    }
    if rules.errors.enabled {
        let requests: u64 = windows.iter().map(|w| u64::from(w.requests)).sum();
        let errors: u64 = windows
            .iter()
            .map(|w| u64::from(w.errors.min(w.requests)))
            .sum();
        if requests >= u64::from(rules.errors.min_requests) {
            let v = errors as f64 / requests as f64;
            let t = rules.errors.rate;
            let holds = v > t;
            out.push(Finding {
                rule: Rule::Errors,
                subject: String::new(),
                holds,
                value: v,
                threshold: t,
                detail: format!(
                    "error rate {:.2}% {} {:.2}% ({errors} of {requests} requests failed)",
                    v * 100.0,
                    if holds { ">" } else { "<=" },
                    t * 100.0
                ),
            });
        }
    }
    out
}

/// Logs damaged reports at most once a minute: evaluation runs every second and skips them.
fn warn_damaged(e: &FleetError) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST_WARNED_S: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = super::now_unix_s();
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
    fn alert_devices(&self) -> Result<Vec<DeviceRow>, FleetError> {
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
    fn latest_reports(
        &self,
        device: i64,
        n: u32,
    ) -> Result<(Vec<Report>, Option<i64>), FleetError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, received_unix_s, report FROM metrics WHERE device_id = ?1
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
            match decode_report(device, seq, blob) {
                Ok(report) => reports.push(report),
                Err(e) => warn_damaged(&e),
            }
        }
        Ok((reports, received))
    }

    /// Open alerts by device, then by (rule, subject).
    fn open_alerts(&self) -> Result<OpenAlerts, FleetError> {
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
    fn model_name(
        &self,
        device: &DeviceRow,
        hash: &[u8; 8],
        pushes: &mut HashMap<[u8; 8], Option<(String, String)>>,
    ) -> Result<ModelName, FleetError> {
        if hash == &[0; 8] {
            return Ok(ModelName {
                model: None,
                version: None,
            });
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
        let mut mine = open.remove(&device.id).unwrap_or_default();
        let (reports, received) = fleet.latest_reports(device.id, rules.window_reports)?;
        let mut findings = Vec::new();
        let mut current = ModelName {
            model: None,
            version: None,
        };
        if let Some(latest) = reports.first() {
            current = fleet.model_name(device, &latest.model, &mut pushes)?;
            let windows: Vec<&Report> =
                reports.iter().filter(|r| r.model == latest.model).collect();
            if latest.model != [0; 8] {
                findings = report_findings(rules, &windows);
            }
            let stale: Vec<(Rule, String)> = mine
                .iter()
                .filter(|((rule, _), a)| {
                    is_report_rule(*rule)
                        && (a.model != current.model || a.version != current.version)
                })
                .map(|(key, _)| key.clone())
                .collect();
            for (rule, subject) in stale {
                if let Some(alert) = mine.remove(&(rule, subject.clone())) {
                    let was = ModelName {
                        model: alert.model.clone(),
                        version: alert.version.clone(),
                    };
                    actions.push(Action::Resolve {
                        device: index,
                        rule,
                        subject,
                        value: alert.value,
                        detail: format!(
                            "the device runs {} now, not {}",
                            current.shown(),
                            was.shown()
                        ),
                        alert,
                    });
                }
            }
        }
        let contact = match (device.last_seen_unix_s, received) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if rules.silence.enabled
            && let Some(t) = contact
        {
            let silent_s = now_unix_s.saturating_sub(t);
            let after_s = i64::from(rules.silence.after_s);
            let holds = silent_s > after_s;
            findings.push(Finding {
                rule: Rule::Silence,
                subject: String::new(),
                holds,
                value: silent_s as f64,
                threshold: after_s as f64,
                detail: if holds {
                    format!("no contact for {silent_s} s (> {after_s} s)")
                } else {
                    format!("seen {} s ago", silent_s.max(0))
                },
            });
        }
        for finding in findings {
            let key = (finding.rule, finding.subject.clone());
            match (finding.holds, mine.remove(&key)) {
                (true, Some(alert)) => actions.push(Action::Update {
                    id: alert.id,
                    value: finding.value,
                    detail: finding.detail,
                }),
                (true, None) => actions.push(Action::Open {
                    device: index,
                    model: if finding.rule == Rule::Silence {
                        ModelName {
                            model: device.model_name.clone(),
                            version: device.model_version.clone(),
                        }
                    } else {
                        current.clone()
                    },
                    finding,
                }),
                (false, Some(alert)) => actions.push(Action::Resolve {
                    device: index,
                    rule: finding.rule,
                    subject: finding.subject,
                    alert,
                    value: finding.value,
                    detail: finding.detail,
                }),
                (false, None) => {}
            }
        }
        for ((rule, subject), alert) in mine {
            if !rules.enabled(rule) {
                actions.push(Action::Resolve {
                    device: index,
                    rule,
                    subject,
                    value: alert.value,
                    detail: format!("rule {rule} is disabled"),
                    alert,
                });
            }
        }
    }
    apply(fleet, &devices, actions, now_unix_s)
}

fn apply(
    fleet: &mut Fleet,
    devices: &[DeviceRow],
    actions: Vec<Action>,
    now: i64,
) -> Result<Vec<AlertChange>, FleetError> {
    let sql = crate::util::sqlite_error::<FleetError>(&fleet.path);
    let tx = fleet.conn.transaction().map_err(sql)?;
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
                            format!("{} on {}: {}", finding.rule, model.shown(), finding.detail)
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
    tx.commit().map_err(sql)?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Device;

    const MODEL_A: [u8; 8] = [0xa1; 8];
    const MODEL_B: [u8; 8] = [0xb2; 8];

    struct Bench {
        _dir: tempfile::TempDir,
        fleet: Fleet,
        seq: HashMap<i64, u64>,
    }

    impl Bench {
        fn new() -> Bench {
            let dir = tempfile::tempdir().expect("temp dir");
            let fleet = Fleet::open(dir.path().join("reg.db")).expect("fleet");
            Bench {
                _dir: dir,
                fleet,
                seq: HashMap::new(),
            }
        }

        fn device(&mut self, name: &str) -> Device {
            self.fleet.add_device(name, "lab").expect("device")
        }

        fn store(&mut self, device: &Device, report: Report) {
            let seq = self.seq.entry(device.id).or_insert(0);
            *seq += 1;
            let n = self
                .fleet
                .store_reports(&[(device.id, *seq, &report)])
                .expect("store");
            assert_eq!(n, 1);
        }

        fn eval(&mut self, rules: &Rules) -> Vec<AlertChange> {
            evaluate(&mut self.fleet, rules, super::super::now_unix_s()).expect("evaluate")
        }

        fn open(&self) -> Vec<Alert> {
            self.fleet.alerts(true, 100).expect("alerts")
        }
    }

    fn window(requests: u32) -> Report {
        Report {
            window_start_ms: 1_700_000_000_000,
            window_ms: 60_000,
            model: MODEL_A,
            requests,
            ..Report::default()
        }
    }

    fn drifting(requests: u32, psi_milli: Vec<u16>) -> Report {
        Report {
            psi_milli,
            ..window(requests)
        }
    }

    /// Only `rule` enabled, so each test sees one rule's alerts.
    fn only(rule: Rule) -> Rules {
        let mut r = Rules::default();
        r.drift.enabled = rule == Rule::Drift;
        r.accuracy.enabled = rule == Rule::Accuracy;
        r.latency.enabled = rule == Rule::Latency;
        r.errors.enabled = rule == Rule::Errors;
        r.silence.enabled = rule == Rule::Silence;
        r
    }

    fn kinds(changes: &[AlertChange]) -> Vec<(Change, Rule, String)> {
        changes
            .iter()
            .map(|c| (c.change, c.rule, c.subject.clone()))
            .collect()
    }

    #[test]
    fn defaults_without_a_file_are_the_documented_ones() {
        let r = load_rules(None).unwrap();
        assert_eq!(r, Rules::default());
        assert_eq!(r.window_reports, 3);
        assert_eq!((r.drift.psi, r.drift.min_requests), (0.2, 100));
        assert_eq!((r.accuracy.min, r.accuracy.min_feedback), (0.8, 20));
        assert_eq!((r.latency.p95_us, r.latency.min_requests), (250_000, 1));
        assert_eq!((r.errors.rate, r.errors.min_requests), (0.05, 100));
        assert_eq!(r.silence.after_s, 90);
        assert!(Rule::ALL.iter().all(|&rule| r.enabled(rule)));
        assert_eq!(Rules::from_toml("", Path::new("empty.toml")).unwrap(), r);
    }

    #[test]
    fn a_file_overrides_only_the_keys_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            "window_reports = 5\n[drift]\npsi = 0.3\n[silence]\nenabled = false\n",
        )
        .unwrap();
        let r = load_rules(Some(&path)).unwrap();
        assert_eq!(r.window_reports, 5);
        assert_eq!(r.drift.psi, 0.3);
        assert_eq!(r.drift.min_requests, 100);
        assert!(!r.silence.enabled);
        assert_eq!(r.silence.after_s, 90);
        assert_eq!(r.errors, ErrorRule::default());
        std::fs::write(&path, "[retention]\nevents_days = 7\n").unwrap();
        let r = load_rules(Some(&path)).unwrap();
        assert_eq!(r.retention.events_days, 7);
        assert_eq!(r.retention.metrics_days, 90);
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../docs/alerts.md");
        let start = doc.find("```toml\n").expect("an example in docs/alerts.md") + 8;
        let end = start + doc[start..].find("```").expect("closed example");
        let r = Rules::from_toml(&doc[start..end], Path::new("docs/alerts.md")).unwrap();
        assert_ne!(r, Rules::default());
        assert_eq!(r.retrain.on, ["drift"]);
        assert_eq!(r.retrain.min_samples, 500);
        assert_eq!(r.rollout.min_shadow_requests, 1000);
        assert_eq!(r.rollout.max_latency_ratio, 1.5);
        assert_eq!(r.retention.metrics_days, 365);
        assert_eq!(r.retention.events_days, 30);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        for (text, key) in [
            ("windows = 3\n", "windows"),
            ("[drift]\nthreshold = 0.3\n", "threshold"),
            ("[latency]\np99_us = 1000\n", "p99_us"),
            ("[paging]\nurl = \"x\"\n", "paging"),
        ] {
            let e = Rules::from_toml(text, Path::new("r.toml")).unwrap_err();
            assert!(matches!(e, FleetError::RulesSyntax { .. }), "{text}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(key), "{text}: {msg}");
            assert!(msg.contains("r.toml"), "{msg}");
        }
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for (text, key) in [
            ("window_reports = 0\n", "window_reports"),
            ("window_reports = 101\n", "window_reports"),
            ("[drift]\npsi = 0.0\n", "drift.psi"),
            ("[drift]\npsi = nan\n", "drift.psi"),
            ("[drift]\nmin_requests = 0\n", "drift.min_requests"),
            ("[accuracy]\nmin = 1.5\n", "accuracy.min"),
            ("[accuracy]\nmin_feedback = 0\n", "accuracy.min_feedback"),
            ("[latency]\np95_us = 0\n", "latency.p95_us"),
            ("[errors]\nrate = 1.0\n", "errors.rate"),
            ("[errors]\nrate = -0.1\n", "errors.rate"),
            ("[silence]\nafter_s = 0\n", "silence.after_s"),
            ("[retention]\nmetrics_days = 0\n", "retention.metrics_days"),
            ("[retention]\nmax_events = 10\n", "retention.max_events"),
        ] {
            match Rules::from_toml(text, Path::new("r.toml")) {
                Err(FleetError::BadRule { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        for (text, key) in [
            ("[drift]\npsi = \"high\"\n", "psi"),
            ("[silence]\nafter_s = -5\n", "after_s"),
            ("window_reports = 2.5\n", "window_reports"),
        ] {
            let e = Rules::from_toml(text, Path::new("r.toml")).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        let e = load_rules(Some(Path::new("/nonexistent/rules.toml"))).unwrap_err();
        assert!(matches!(e, FleetError::RulesUnreadable { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/rules.toml"), "{e}");
    }

    #[test]
    fn drift_opens_stays_open_once_and_resolves() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        let rules = only(Rule::Drift);
        b.store(&d, drifting(230, vec![50, 410, 90]));
        let changes = b.eval(&rules);
        assert_eq!(kinds(&changes), [(Change::Opened, Rule::Drift, "1".into())]);
        let c = &changes[0];
        assert_eq!((c.device.as_str(), c.group.as_str()), ("pi-1", "lab"));
        assert_eq!(c.value, 0.41);
        assert_eq!(c.threshold, 0.2);
        assert_eq!(c.detail, "feature 1 PSI 0.41 > 0.20 over 230 requests");

        b.store(&d, drifting(300, vec![60, 520, 80]));
        assert!(b.eval(&rules).is_empty());
        assert!(b.eval(&rules).is_empty());
        let open = b.open();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, c.id);
        assert_eq!(open[0].value, Some(0.52));
        assert_eq!(open[0].state, "open");

        b.store(&d, drifting(300, vec![60, 120, 80]));
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Resolved, Rule::Drift, "1".into())]
        );
        assert_eq!(changes[0].id, c.id);
        assert_eq!(changes[0].value, 0.12);
        assert!(b.open().is_empty());
        let all = b.fleet.alerts(false, 10).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, "resolved");
        assert!(all[0].resolved_unix_s.is_some());
        assert_eq!(all[0].value, Some(0.52), "keeps the last value that held");

        let events: Vec<(String, String)> = b
            .fleet
            .events(Some("pi-1"), 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.detail))
            .collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].0, "alert");
        assert!(events[0].1.contains("PSI 0.41 > 0.20"), "{events:?}");
        assert_eq!(events[1].0, "alert-resolved");
        assert!(events[1].1.contains("PSI 0.12 <= 0.20"), "{events:?}");

        b.store(&d, drifting(300, vec![60, 700, 80]));
        let changes = b.eval(&rules);
        assert_eq!(kinds(&changes), [(Change::Opened, Rule::Drift, "1".into())]);
        assert_ne!(changes[0].id, c.id, "a new alert after a resolved one");
    }

    #[test]
    fn drift_threshold_is_strict_and_per_feature() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        let rules = only(Rule::Drift);
        b.store(&d, drifting(100, vec![200, 200]));
        assert!(b.eval(&rules).is_empty(), "PSI exactly at the threshold");
        b.store(&d, drifting(100, vec![201, 200]));
        let changes = b.eval(&rules);
        assert_eq!(kinds(&changes), [(Change::Opened, Rule::Drift, "0".into())]);
        assert_eq!(
            changes[0].detail,
            "feature 0 PSI 0.201 > 0.20 over 100 requests"
        );
        b.store(&d, drifting(100, vec![201, 250]));
        assert_eq!(
            kinds(&b.eval(&rules)),
            [(Change::Opened, Rule::Drift, "1".into())]
        );
        assert_eq!(b.open().len(), 2);
    }

    #[test]
    fn drift_ignores_windows_with_too_few_requests() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        let rules = only(Rule::Drift);
        b.store(&d, drifting(99, vec![900]));
        assert!(b.eval(&rules).is_empty(), "99 requests < min_requests 100");
        b.store(&d, drifting(100, vec![300]));
        b.store(&d, drifting(5, vec![0]));
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Opened, Rule::Drift, "0".into())],
            "the latest eligible window decides, not the small latest one"
        );
        b.store(&d, drifting(5, vec![0]));
        b.store(&d, drifting(5, vec![0]));
        assert!(
            b.eval(&rules).is_empty(),
            "no eligible window among the latest 3: no evidence, the alert stays"
        );
        assert_eq!(b.open().len(), 1);
    }

    #[test]
    fn accuracy_sums_the_latest_windows_of_the_current_model() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        let rules = only(Rule::Accuracy);
        let fb = |feedback, correct, model| Report {
            feedback,
            feedback_correct: correct,
            model,
            ..window(50)
        };
        b.store(&d, fb(19, 0, MODEL_A));
        assert!(b.eval(&rules).is_empty(), "19 labels < min_feedback 20");
        b.store(&d, fb(1, 1, MODEL_A));
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Opened, Rule::Accuracy, String::new())]
        );
        assert_eq!(changes[0].value, 0.05);
        assert_eq!(
            changes[0].detail,
            "accuracy 5.0% < 80.0% (1 of 20 labels correct)"
        );
        b.store(&d, fb(10, 10, MODEL_A));
        assert!(b.eval(&rules).is_empty(), "11 of 30 still below");
        b.store(&d, fb(10, 10, MODEL_A));
        b.store(&d, fb(10, 10, MODEL_A));
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Resolved, Rule::Accuracy, String::new())],
            "only the latest 3 windows count: 30 of 30"
        );
    }

    #[test]
    fn accuracy_boundary_and_a_new_model_starts_afresh() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        let rules = only(Rule::Accuracy);
        let fb = |feedback, correct, model| Report {
            feedback,
            feedback_correct: correct,
            model,
            ..window(50)
        };
        b.store(&d, fb(20, 16, MODEL_A));
        assert!(b.eval(&rules).is_empty(), "0.8 exactly is not below 0.8");
        b.store(&d, fb(20, 15, MODEL_A));
        assert_eq!(
            kinds(&b.eval(&rules)),
            [(Change::Opened, Rule::Accuracy, String::new())],
            "31 of 40"
        );
        b.store(&d, fb(10, 0, MODEL_B));
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Resolved, Rule::Accuracy, String::new())],
            "the alert was about model A; B has 10 labels, too few to judge"
        );
        assert!(
            changes[0].detail.contains("runs b2b2b2b2b2b2b2b2 now"),
            "{}",
            changes[0].detail
        );
        b.store(&d, fb(10, 0, MODEL_B));
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Opened, Rule::Accuracy, String::new())]
        );
        assert_eq!(
            changes[0].value, 0.0,
            "A's 35 right answers are not counted for B"
        );
        assert_eq!(changes[0].model.as_deref(), Some("b2b2b2b2b2b2b2b2"));
    }

    #[test]
    fn latency_uses_the_latest_window_with_requests() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        let rules = only(Rule::Latency);
        let slow = |requests, p95| {
            let mut r = window(requests);
            r.latency_us.p95 = p95;
            r
        };
        b.store(&d, slow(10, 250_000));
        assert!(b.eval(&rules).is_empty(), "at the threshold");
        b.store(&d, slow(10, 250_001));
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Opened, Rule::Latency, String::new())]
        );
        assert_eq!(changes[0].value, 250_001.0);
        assert_eq!(changes[0].threshold, 250_000.0);
        b.store(&d, slow(0, 0));
        assert!(b.eval(&rules).is_empty(), "an idle window says nothing");
        b.store(&d, slow(10, 300_000));
        assert!(b.eval(&rules).is_empty());
        assert_eq!(b.open()[0].value, Some(300_000.0), "updated while it holds");
        b.store(&d, slow(10, 100_000));
        assert_eq!(
            kinds(&b.eval(&rules)),
            [(Change::Resolved, Rule::Latency, String::new())]
        );
    }

    #[test]
    fn error_rate_sums_requests_over_the_latest_windows() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        let rules = only(Rule::Errors);
        let failing = |requests, errors| Report {
            errors,
            ..window(requests)
        };
        b.store(&d, failing(99, 50));
        assert!(b.eval(&rules).is_empty(), "99 requests < min_requests 100");
        b.store(&d, failing(1, 0));
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Opened, Rule::Errors, String::new())]
        );
        assert_eq!(changes[0].value, 0.5);
        assert_eq!(
            changes[0].detail,
            "error rate 50.00% > 5.00% (50 of 100 requests failed)"
        );
        b.store(&d, failing(1000, 0));
        b.store(&d, failing(1000, 0));
        assert_eq!(
            kinds(&b.eval(&rules)),
            [(Change::Resolved, Rule::Errors, String::new())],
            "1 + 1000 + 1000 requests, 0 errors"
        );

        let d2 = b.device("pi-2");
        b.store(&d2, failing(100, 5));
        assert!(b.eval(&rules).is_empty(), "5% exactly is not above 5%");
        b.store(&d2, failing(100, 6));
        assert_eq!(
            kinds(&b.eval(&rules)),
            [(Change::Opened, Rule::Errors, String::new())],
            "11 of 200"
        );
    }

    #[test]
    fn silence_only_for_devices_seen_before() {
        let mut b = Bench::new();
        let never = b.device("never");
        let d = b.device("pi-1");
        let rules = only(Rule::Silence);
        let t0 = 1_800_000_000;
        let seen_at = |b: &mut Bench, t: i64| {
            b.fleet
                .conn
                .execute(
                    "UPDATE devices SET last_seen_unix_s = ?1 WHERE id = ?2",
                    params![t, d.id],
                )
                .unwrap();
        };
        seen_at(&mut b, t0);
        let eval = |b: &mut Bench, now| evaluate(&mut b.fleet, &rules, now).unwrap();
        assert!(
            eval(&mut b, t0 + 90).is_empty(),
            "90 s is not more than 90 s"
        );
        let changes = eval(&mut b, t0 + 91);
        assert_eq!(
            kinds(&changes),
            [(Change::Opened, Rule::Silence, String::new())]
        );
        assert_eq!(changes[0].device, "pi-1");
        assert_eq!(changes[0].value, 91.0);
        assert!(eval(&mut b, t0 + 10_000).is_empty());
        assert_eq!(b.open()[0].value, Some(10_000.0));
        seen_at(&mut b, t0 + 10_001);
        let changes = eval(&mut b, t0 + 10_002);
        assert_eq!(
            kinds(&changes),
            [(Change::Resolved, Rule::Silence, String::new())]
        );
        assert_eq!(changes[0].detail, "seen 1 s ago");
        assert!(b.open().is_empty());
        assert!(
            b.fleet
                .alerts(false, 10)
                .unwrap()
                .iter()
                .all(|a| a.device.as_deref() != Some(never.name.as_str()))
        );
    }

    #[test]
    fn a_report_counts_as_contact() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        b.store(&d, window(10));
        let now = super::super::now_unix_s();
        let rules = only(Rule::Silence);
        assert!(evaluate(&mut b.fleet, &rules, now + 5).unwrap().is_empty());
        assert_eq!(
            kinds(&evaluate(&mut b.fleet, &rules, now + 1000).unwrap()),
            [(Change::Opened, Rule::Silence, String::new())]
        );
    }

    #[test]
    fn disabling_a_rule_resolves_its_alerts() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        b.store(
            &d,
            Report {
                errors: 50,
                ..drifting(100, vec![900])
            },
        );
        let mut rules = Rules::default();
        rules.silence.enabled = false;
        let mut opened = kinds(&b.eval(&rules));
        opened.sort_by_key(|k| k.1.as_str());
        assert_eq!(
            opened,
            [
                (Change::Opened, Rule::Drift, "0".into()),
                (Change::Opened, Rule::Errors, String::new()),
            ]
        );
        rules.errors.enabled = false;
        let changes = b.eval(&rules);
        assert_eq!(
            kinds(&changes),
            [(Change::Resolved, Rule::Errors, String::new())]
        );
        assert_eq!(changes[0].detail, "rule errors is disabled");
        assert_eq!(b.open().len(), 1);
    }

    #[test]
    fn alerts_name_the_model_by_device_or_push() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        let p = b
            .fleet
            .create_push("iris", "3", b"signed bytes", None)
            .unwrap();
        let mut hash = [0u8; 8];
        hash.copy_from_slice(&p.model.sha256[..8]);
        b.store(
            &d,
            Report {
                model: hash,
                ..drifting(100, vec![900])
            },
        );
        let rules = only(Rule::Drift);
        let changes = b.eval(&rules);
        assert_eq!(changes[0].model.as_deref(), Some("iris"));
        assert_eq!(changes[0].version.as_deref(), Some("3"));
        b.fleet.seen(&d, None, None, Some(Some(&p.model))).unwrap();
        assert!(b.eval(&rules).is_empty(), "same model either way");
        let a = &b.open()[0];
        assert_eq!(
            (a.model.as_deref(), a.version.as_deref()),
            (Some("iris"), Some("3"))
        );
    }

    #[test]
    fn a_device_without_a_model_raises_no_report_alerts() {
        let mut b = Bench::new();
        let d = b.device("pi-1");
        b.store(
            &d,
            Report {
                model: [0; 8],
                errors: 100,
                ..drifting(100, vec![900])
            },
        );
        let mut rules = Rules::default();
        rules.silence.enabled = false;
        assert!(b.eval(&rules).is_empty());
    }

    #[test]
    fn latest_reports_are_read_through_the_device_seq_index() {
        let b = Bench::new();
        let plan: Vec<String> = b
            .fleet
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT seq, received_unix_s, report FROM metrics
                 WHERE device_id = ?1 ORDER BY run DESC, seq DESC LIMIT ?2",
            )
            .unwrap()
            .query_map(params![1, 3], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX metrics_by_device_run_seq")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }

    /// Prints the cost of one evaluation on 1,000 devices with 10 reports each (no timing
    /// assertion; `cargo test --release -- --nocapture evaluation_time` for real figures).
    #[test]
    fn evaluation_time_on_a_thousand_devices() {
        let mut b = Bench::new();
        let mut batch = Vec::new();
        for i in 0..1000 {
            let d = b.device(&format!("pi-{i:04}"));
            for seq in 1..=10u64 {
                let mut r = drifting(200, vec![(i % 300) as u16; 16]);
                r.errors = if i % 10 == 0 { 40 } else { 1 };
                r.latency_us.p95 = 1000 * (i as u32 % 400);
                r.feedback = 10;
                r.feedback_correct = if i % 7 == 0 { 5 } else { 10 };
                batch.push((d.id, seq, r));
            }
        }
        let refs: Vec<(i64, u64, &Report)> = batch.iter().map(|(d, s, r)| (*d, *s, r)).collect();
        assert_eq!(b.fleet.store_reports(&refs).unwrap(), 10_000);
        let rules = Rules::default();
        let now = super::super::now_unix_s();
        let t = std::time::Instant::now();
        let opened = evaluate(&mut b.fleet, &rules, now).unwrap();
        let first = t.elapsed();
        let t = std::time::Instant::now();
        let again = evaluate(&mut b.fleet, &rules, now + 1).unwrap();
        let steady = t.elapsed();
        assert!(again.is_empty());
        let open = b.fleet.alerts(true, usize::MAX).unwrap().len();
        assert_eq!(open, opened.len());
        println!(
            "alerts::evaluate on 1,000 devices x 10 reports: {first:?} opening {} alerts, \
             then {steady:?} with them open ({} build)",
            opened.len(),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
    }
}
