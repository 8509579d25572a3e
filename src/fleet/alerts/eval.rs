//! Evaluation: what the rules say about one device, on plain values. Nothing here reads or
//! writes the database ([`super::store`] does both), so every rule's arithmetic and every
//! open / update / resolve decision is tested without SQLite.

use super::rules::{Rule, Rules};
use crate::metrics::Report;
use std::collections::HashMap;

/// A device as evaluation sees it: its row in `devices`.
pub(super) struct DeviceRow {
    pub(super) id: i64,
    pub(super) name: String,
    pub(super) group: String,
    /// The model the device last said it runs.
    pub(super) model_name: Option<String>,
    pub(super) model_version: Option<String>,
    /// Hex SHA-256 of that model.
    pub(super) model_sha256: Option<String>,
    /// Its last heartbeat or connection, seconds since the Unix epoch.
    pub(super) last_seen_unix_s: Option<i64>,
}

/// Open alerts by device id, then by (rule, subject).
pub(super) type OpenAlerts = HashMap<i64, HashMap<(Rule, String), OpenAlert>>;

/// An open alert as evaluation needs it.
pub(super) struct OpenAlert {
    pub(super) id: i64,
    /// The model it is about.
    pub(super) model: Option<String>,
    pub(super) version: Option<String>,
    /// Its latest measurement.
    pub(super) value: f64,
    pub(super) threshold: f64,
}

/// A rule's verdict on one (device, subject) with the data to decide.
pub(super) struct Finding {
    pub(super) rule: Rule,
    pub(super) subject: String,
    pub(super) holds: bool,
    pub(super) value: f64,
    pub(super) threshold: f64,
    pub(super) detail: String,
}

/// The model a device's windows were served by, as alerts name it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ModelName {
    pub(super) model: Option<String>,
    pub(super) version: Option<String>,
}

impl ModelName {
    /// No model (a device that runs none, or whose windows no model served).
    pub(super) const NONE: ModelName = ModelName {
        model: None,
        version: None,
    };

    /// `name@version`, the name alone, or `no model`.
    pub(super) fn shown(&self) -> String {
        match (&self.model, &self.version) {
            (Some(m), Some(v)) => format!("{m}@{v}"),
            (Some(m), None) => m.clone(),
            _ => "no model".into(),
        }
    }
}

/// What evaluation decided for one alert; [`super::store`] writes it.
pub(super) enum Action {
    Open {
        /// Index into the evaluated devices.
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
pub(super) fn psi_text(v: f64) -> String {
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
pub(super) fn report_findings(rules: &Rules, windows: &[&Report]) -> Vec<Finding> {
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

/// Decides, for the device at `index` in the evaluated list, what happens to each of its
/// alerts at `now_unix_s`: `reports` are its latest reports (newest first), `received_unix_s`
/// when the latest of them arrived, `current` the model that served the newest one (as
/// alerts name it) and `open` its open alerts by (rule, subject). Appends to `actions`.
#[allow(clippy::too_many_arguments)]
pub(super) fn device_actions(
    rules: &Rules,
    index: usize,
    device: &DeviceRow,
    reports: &[Report],
    received_unix_s: Option<i64>,
    current: &ModelName,
    mut open: HashMap<(Rule, String), OpenAlert>,
    now_unix_s: i64,
    actions: &mut Vec<Action>,
) {
    let mut findings = Vec::new();
    if let Some(latest) = reports.first() {
        let windows: Vec<&Report> = reports.iter().filter(|r| r.model == latest.model).collect();
        if latest.model != [0; 8] {
            findings = report_findings(rules, &windows);
        }
        let stale: Vec<(Rule, String)> = open
            .iter()
            .filter(|((rule, _), a)| {
                is_report_rule(*rule) && (a.model != current.model || a.version != current.version)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for (rule, subject) in stale {
            if let Some(alert) = open.remove(&(rule, subject.clone())) {
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
    let contact = match (device.last_seen_unix_s, received_unix_s) {
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
        match (finding.holds, open.remove(&key)) {
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
    for ((rule, subject), alert) in open {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL_A: [u8; 8] = [0xa1; 8];
    const NOW: i64 = 1_800_000_000;

    fn window(requests: u32) -> Report {
        Report {
            model: MODEL_A,
            requests,
            ..Report::default()
        }
    }

    fn device(last_seen_unix_s: Option<i64>) -> DeviceRow {
        DeviceRow {
            id: 7,
            name: "pi-1".into(),
            group: "lab".into(),
            model_name: Some("iris".into()),
            model_version: Some("2".into()),
            model_sha256: None,
            last_seen_unix_s,
        }
    }

    fn named(model: &str, version: &str) -> ModelName {
        ModelName {
            model: Some(model.into()),
            version: Some(version.into()),
        }
    }

    fn open_alert(id: i64, model: &ModelName) -> OpenAlert {
        OpenAlert {
            id,
            model: model.model.clone(),
            version: model.version.clone(),
            value: 0.5,
            threshold: 0.2,
        }
    }

    /// `(kind, rule, subject)` of each action, kind being `open`, `update` or `resolve`.
    fn decided(actions: &[Action]) -> Vec<(&'static str, Rule, String)> {
        actions
            .iter()
            .map(|a| match a {
                Action::Open { finding, .. } => ("open", finding.rule, finding.subject.clone()),
                Action::Update { detail, .. } => ("update", Rule::Drift, detail.clone()),
                Action::Resolve { rule, subject, .. } => ("resolve", *rule, subject.clone()),
            })
            .collect()
    }

    #[test]
    fn psi_is_shown_with_two_or_three_decimals() {
        assert_eq!(psi_text(0.2), "0.20");
        assert_eq!(psi_text(0.41), "0.41");
        assert_eq!(psi_text(0.125), "0.125");
    }

    #[test]
    fn drift_is_strict_per_feature_on_the_latest_window_with_enough_requests() {
        let rules = Rules::only(Rule::Drift);
        let latest = Report {
            psi_milli: vec![900, 900],
            ..window(99)
        };
        let counted = Report {
            psi_milli: vec![200, 201],
            ..window(100)
        };
        let found = report_findings(&rules, &[&latest, &counted]);
        let verdicts: Vec<(&str, bool)> = found
            .iter()
            .map(|f| (f.subject.as_str(), f.holds))
            .collect();
        assert_eq!(verdicts, [("0", false), ("1", true)]);
        assert_eq!(found[1].value, 0.201);
        assert_eq!(
            found[1].detail,
            "feature 1 PSI 0.201 > 0.20 over 100 requests"
        );
        assert!(report_findings(&rules, &[&latest]).is_empty());
    }

    #[test]
    fn accuracy_and_errors_sum_the_windows_and_wait_for_enough_data() {
        let mut rules = Rules::only(Rule::Accuracy);
        rules.errors.enabled = true;
        let a = Report {
            feedback: 10,
            feedback_correct: 7,
            errors: 3,
            ..window(60)
        };
        let b = Report {
            feedback: 10,
            feedback_correct: 9,
            errors: 500,
            ..window(40)
        };
        let found = report_findings(&rules, &[&a, &b]);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].rule, found[0].holds), (Rule::Accuracy, false));
        assert_eq!(found[0].value, 0.8);
        assert_eq!(
            found[0].detail,
            "accuracy 80.0% >= 80.0% (16 of 20 labels correct)"
        );
        // Errors count at most the window's requests: (3 + 40) of 100.
        assert_eq!((found[1].rule, found[1].holds), (Rule::Errors, true));
        assert_eq!(found[1].value, 0.43);
        assert!(
            report_findings(&rules, &[&a]).is_empty(),
            "19 labels, 60 requests"
        );
    }

    #[test]
    fn latency_uses_the_p95_of_the_latest_window_with_requests() {
        let rules = Rules::only(Rule::Latency);
        let mut idle = window(0);
        idle.latency_us.p95 = 900_000;
        let mut busy = window(5);
        busy.latency_us.p95 = 250_001;
        let found = report_findings(&rules, &[&idle, &busy]);
        assert_eq!(found.len(), 1);
        assert!(found[0].holds);
        assert_eq!(found[0].value, 250_001.0);
        busy.latency_us.p95 = 250_000;
        assert!(!report_findings(&rules, &[&idle, &busy])[0].holds);
    }

    #[test]
    fn a_holding_finding_opens_once_then_updates_then_resolves() {
        let rules = Rules::only(Rule::Errors);
        let current = named("iris", "2");
        let failing = [Report {
            errors: 20,
            ..window(100)
        }];
        let mut actions = Vec::new();
        let d = device(None);
        device_actions(
            &rules,
            0,
            &d,
            &failing,
            None,
            &current,
            HashMap::new(),
            NOW,
            &mut actions,
        );
        assert_eq!(decided(&actions), [("open", Rule::Errors, String::new())]);
        let open = || HashMap::from([((Rule::Errors, String::new()), open_alert(3, &current))]);
        actions.clear();
        device_actions(
            &rules,
            0,
            &d,
            &failing,
            None,
            &current,
            open(),
            NOW,
            &mut actions,
        );
        assert!(matches!(actions[..], [Action::Update { id: 3, value, .. }] if value == 0.2));
        actions.clear();
        let healthy = [window(100)];
        device_actions(
            &rules,
            0,
            &d,
            &healthy,
            None,
            &current,
            open(),
            NOW,
            &mut actions,
        );
        assert_eq!(
            decided(&actions),
            [("resolve", Rule::Errors, String::new())]
        );
    }

    #[test]
    fn a_new_model_resolves_the_old_ones_report_alerts_and_a_disabled_rule_resolves() {
        let old = named("iris", "1");
        let current = named("iris", "2");
        let open = HashMap::from([
            ((Rule::Drift, "4".to_string()), open_alert(1, &old)),
            ((Rule::Latency, String::new()), open_alert(2, &current)),
        ]);
        let rules = Rules::only(Rule::Drift);
        let mut actions = Vec::new();
        device_actions(
            &rules,
            0,
            &device(None),
            &[window(1)],
            None,
            &current,
            open,
            NOW,
            &mut actions,
        );
        let mut got = decided(&actions);
        got.sort_by_key(|d| d.1.as_str());
        assert_eq!(
            got,
            [
                ("resolve", Rule::Drift, "4".to_string()),
                ("resolve", Rule::Latency, String::new())
            ]
        );
        let details: Vec<&str> = actions
            .iter()
            .map(|a| match a {
                Action::Resolve { detail, .. } => detail.as_str(),
                _ => "",
            })
            .collect();
        assert!(
            details.contains(&"the device runs iris@2 now, not iris@1"),
            "{details:?}"
        );
        assert!(details.contains(&"rule latency is disabled"), "{details:?}");
    }

    #[test]
    fn silence_counts_the_latest_contact_and_names_the_devices_model() {
        let rules = Rules::only(Rule::Silence);
        let mut actions = Vec::new();
        let never_seen = device(None);
        device_actions(
            &rules,
            0,
            &never_seen,
            &[],
            None,
            &ModelName::NONE,
            HashMap::new(),
            NOW,
            &mut actions,
        );
        assert!(actions.is_empty(), "a device never seen is not silent");
        let seen = device(Some(NOW - 1000));
        device_actions(
            &rules,
            0,
            &seen,
            &[],
            Some(NOW - 90),
            &ModelName::NONE,
            HashMap::new(),
            NOW,
            &mut actions,
        );
        assert!(actions.is_empty(), "a report 90 s ago is contact");
        device_actions(
            &rules,
            0,
            &seen,
            &[],
            Some(NOW - 91),
            &ModelName::NONE,
            HashMap::new(),
            NOW,
            &mut actions,
        );
        match &actions[..] {
            [Action::Open { model, finding, .. }] => {
                assert_eq!(model, &named("iris", "2"));
                assert_eq!(finding.value, 91.0);
                assert_eq!(finding.detail, "no contact for 91 s (> 90 s)");
            }
            _ => panic!("expected one open"),
        }
    }
}
