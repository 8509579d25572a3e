//! The alert rules: what `--rules FILE` may say (`docs/alerts.md` lists every key), their
//! defaults and ranges, and the [`Rule`] names stored in the `alerts` table.

use crate::fleet::FleetError;
use serde::{Deserialize, Serialize};
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
    pub rollout: crate::fleet::rollout::Gates,
    /// How long `perch-host serve` keeps reports, labelled samples and events.
    pub retention: crate::fleet::Retention,
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
            rollout: crate::fleet::rollout::Gates::default(),
            retention: crate::fleet::Retention::default(),
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
            after_s: crate::fleet::SILENT_AFTER_S as u32,
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

    pub(super) fn enabled(&self, rule: Rule) -> bool {
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

#[cfg(test)]
impl Rules {
    /// The defaults with only `rule` enabled, so a test sees one rule's alerts.
    pub(super) fn only(rule: Rule) -> Rules {
        let mut r = Rules::default();
        r.drift.enabled = rule == Rule::Drift;
        r.accuracy.enabled = rule == Rule::Accuracy;
        r.latency.enabled = rule == Rule::Latency;
        r.errors.enabled = rule == Rule::Errors;
        r.silence.enabled = rule == Rule::Silence;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetError;

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
        let doc = include_str!("../../../docs/alerts.md");
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
}
