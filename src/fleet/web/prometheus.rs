//! `GET /metrics`: the fleet in the Prometheus text exposition format (version 0.0.4):
//! per-device series labelled `device`, `group`, `model` and `version`, alerts by rule and
//! rollouts by state. The series are listed in `docs/dashboard.md`.

use super::api::{self, is_up};
use super::{Dashboard, Totals};
use crate::fleet::{FleetError, now_unix_s};
use rusqlite::{OptionalExtension, params};
use std::fmt::Write;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets to 0 when its source does).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// A set of metric families being filled, rendered in the order they were declared with
/// each family's samples together under its `# HELP` and `# TYPE` lines.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("families", &self.families.len())
            .finish()
    }
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Declares a family; `name` must match `[a-zA-Z_:][a-zA-Z0-9_:]*`. Declaring a name
    /// again is a no-op.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) {
        if !self.families.iter().any(|f| f.name == name) {
            self.families.push(Family {
                name,
                help,
                kind,
                samples: Vec::new(),
            });
        }
    }

    /// Adds a sample to the family `name` (declared first with [`Exposition::family`];
    /// samples of undeclared families are dropped). Label names must match
    /// `[a-zA-Z_][a-zA-Z0-9_]*`; values may hold any text.
    pub fn sample(&mut self, name: &str, labels: &[(&'static str, &str)], value: f64) {
        if let Some(f) = self.families.iter_mut().find(|f| f.name == name) {
            f.samples.push((
                labels.iter().map(|&(k, v)| (k, v.to_string())).collect(),
                value,
            ));
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.name());
            for (labels, value) in &f.samples {
                out.push_str(f.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: integers without a fraction, `NaN`, `+Inf`, `-Inf`.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Brings the lifetime sums of device `id` up to date with the rows stored since the last
/// call. Sums restart when the device's rows went away (a device removed, its id reused).
fn update_totals(d: &mut Dashboard, id: i64, name: &str) -> Result<Totals, FleetError> {
    let fleet = &d.fleet;
    let newest: Option<(i64, i64)> = fleet
        .conn
        .query_row(
            "SELECT run, seq FROM metrics WHERE device_id = ?1 ORDER BY run DESC, seq DESC
             LIMIT 1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(fleet.sql())?;
    let key = (id, name.to_string());
    let fresh = Totals {
        last: (-1, -1),
        ..Totals::default()
    };
    let mut t = d.totals.get(&key).copied().unwrap_or(fresh);
    match newest {
        None => t = Totals::default(),
        Some(m) if m < t.last => t = fresh,
        _ => {}
    }
    if let Some(newest) = newest.filter(|m| *m > t.last) {
        let (requests, errors, feedback, correct): (i64, i64, i64, i64) = fleet
            .conn
            .query_row(
                "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(errors), 0),
                        COALESCE(SUM(feedback), 0), COALESCE(SUM(feedback_correct), 0)
                 FROM metrics WHERE device_id = ?1 AND (run, seq) > (?2, ?3)
                   AND (run, seq) <= (?4, ?5)",
                params![id, t.last.0, t.last.1, newest.0, newest.1],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(fleet.sql())?;
        let add = |a: u64, b: i64| a.saturating_add(u64::try_from(b).unwrap_or(0));
        t.requests = add(t.requests, requests);
        t.errors = add(t.errors, errors);
        t.feedback = add(t.feedback, feedback);
        t.feedback_correct = add(t.feedback_correct, correct);
        t.last = newest;
    }
    d.totals.insert(key, t);
    Ok(t)
}

/// The whole `/metrics` text.
pub(super) fn render(d: &mut Dashboard) -> Result<String, FleetError> {
    use Kind::{Counter, Gauge};
    let mut e = Exposition::new();
    e.family(
        "perch_device_up",
        Gauge,
        "1 when the device was heard from within the silence limit (90 s), else 0.",
    );
    e.family(
        "perch_device_last_seen_seconds",
        Gauge,
        "Last contact with the device, seconds since the Unix epoch.",
    );
    e.family(
        "perch_device_last_report_seconds",
        Gauge,
        "Start of the device's latest stored report window, seconds since the Unix epoch.",
    );
    e.family(
        "perch_device_requests_total",
        Counter,
        "Prediction requests in all reports stored for the device.",
    );
    e.family(
        "perch_device_errors_total",
        Counter,
        "Failed prediction requests in all reports stored for the device.",
    );
    e.family(
        "perch_device_feedback_total",
        Counter,
        "Labelled feedback in all reports stored for the device.",
    );
    e.family(
        "perch_device_feedback_correct_total",
        Counter,
        "Labelled feedback that matched the prediction, in all reports stored for the device.",
    );
    e.family(
        "perch_device_latency_seconds",
        Gauge,
        "Prediction latency percentiles of the device's latest report window.",
    );
    e.family(
        "perch_device_feature_psi",
        Gauge,
        "Population stability index per input feature in the device's latest report window.",
    );
    e.family(
        "perch_device_feature_psi_max",
        Gauge,
        "Largest population stability index of any input feature in the latest report window.",
    );
    e.family(
        "perch_device_feedback_accuracy",
        Gauge,
        "Share of labelled feedback matching the prediction in the latest report window.",
    );
    e.family(
        "perch_device_resident_memory_bytes",
        Gauge,
        "Resident memory of the device's agent in its latest report.",
    );
    e.family("perch_alerts_open", Gauge, "Open alerts per rule.");
    e.family("perch_rollouts", Gauge, "Rollouts per state.");
    e.family(
        "perch_reports_stored",
        Gauge,
        "Metrics reports stored in the fleet database.",
    );

    let now = now_unix_s();
    let statuses = d.fleet.devices()?;
    let mut live = Vec::new();
    for s in &statuses {
        let Some(dev) = d.fleet.device(&s.name)? else {
            continue;
        };
        live.push((dev.id, dev.name.clone()));
        let (model, version) = (
            s.model.as_deref().unwrap_or(""),
            s.version.as_deref().unwrap_or(""),
        );
        let labels = [
            ("device", s.name.as_str()),
            ("group", s.group.as_str()),
            ("model", model),
            ("version", version),
        ];
        e.sample(
            "perch_device_up",
            &labels,
            f64::from(u8::from(is_up(s.last_seen_unix_s, now))),
        );
        if let Some(t) = s.last_seen_unix_s {
            e.sample("perch_device_last_seen_seconds", &labels, t as f64);
        }
        let totals = update_totals(d, dev.id, &dev.name)?;
        e.sample(
            "perch_device_requests_total",
            &labels,
            totals.requests as f64,
        );
        e.sample("perch_device_errors_total", &labels, totals.errors as f64);
        e.sample(
            "perch_device_feedback_total",
            &labels,
            totals.feedback as f64,
        );
        e.sample(
            "perch_device_feedback_correct_total",
            &labels,
            totals.feedback_correct as f64,
        );
        let Some(latest) = d.fleet.recent_reports(&dev, None, 1)?.pop() else {
            continue;
        };
        let r = &latest.report;
        e.sample(
            "perch_device_last_report_seconds",
            &labels,
            r.window_start_ms as f64 / 1000.0,
        );
        if r.requests > 0 {
            for (q, us) in [
                ("0.5", r.latency_us.p50),
                ("0.95", r.latency_us.p95),
                ("0.99", r.latency_us.p99),
            ] {
                let mut with_q = labels.to_vec();
                with_q.push(("quantile", q));
                e.sample("perch_device_latency_seconds", &with_q, f64::from(us) / 1e6);
            }
        }
        for (i, &m) in r.psi_milli.iter().enumerate() {
            let feature = i.to_string();
            let mut with_f = labels.to_vec();
            with_f.push(("feature", feature.as_str()));
            e.sample("perch_device_feature_psi", &with_f, f64::from(m) / 1000.0);
        }
        if let Some(m) = api::psi_max(r) {
            e.sample("perch_device_feature_psi_max", &labels, m);
        }
        if let Some(a) = api::accuracy(r) {
            e.sample("perch_device_feedback_accuracy", &labels, a);
        }
        if r.rss_kib > 0 {
            e.sample(
                "perch_device_resident_memory_bytes",
                &labels,
                f64::from(r.rss_kib) * 1024.0,
            );
        }
    }
    d.totals.retain(|k, _| live.contains(k));
    for (rule, open) in api::open_alerts_by_rule(d)? {
        e.sample("perch_alerts_open", &[("rule", &rule)], open as f64);
    }
    let mut by_state: std::collections::BTreeMap<String, u64> = Default::default();
    for r in api::rollout_rows(d)? {
        *by_state.entry(r.state).or_default() += 1;
    }
    for (state, n) in by_state {
        e.sample("perch_rollouts", &[("state", &state)], n as f64);
    }
    e.sample("perch_reports_stored", &[], d.fleet.report_count()? as f64);
    Ok(e.render())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashSet;

    fn metric_name(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }

    fn label_name(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
    }

    /// Parses `{a="x",b="y\"z"}` from the start of `s`: the labels (unescaped) and the rest.
    #[allow(clippy::type_complexity)]
    fn labels(s: &str) -> Result<(Vec<(String, String)>, &str), String> {
        let mut out = Vec::new();
        let mut rest = s.strip_prefix('{').ok_or("no '{'")?;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                return Ok((out, r));
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let name = &rest[..eq];
            if !label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut chars = rest[eq + 1..].char_indices();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {name} value is not quoted"));
            }
            let mut value = String::new();
            let end = loop {
                match chars.next() {
                    None => return Err(format!("label {name}: unterminated value")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("label {name}: bad escape {other:?}")),
                    },
                    Some((_, '\n')) => return Err(format!("label {name}: raw line feed")),
                    Some((_, c)) => value.push(c),
                }
            };
            out.push((name.to_string(), value));
            rest = &rest[eq + 1 + end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by ','".into());
            }
        }
    }

    fn value(s: &str) -> bool {
        matches!(s, "NaN" | "+Inf" | "-Inf") || s.parse::<f64>().is_ok_and(f64::is_finite)
    }

    /// Every sample of `text` as (name, labels, value), after checking each line against
    /// the text format: HELP then TYPE once per family before its samples, families not
    /// interleaved, valid names, label syntax and escapes, numeric values, no duplicate
    /// series.
    #[allow(clippy::type_complexity)]
    pub(crate) fn check_exposition(text: &str) -> Vec<(String, Vec<(String, String)>, f64)> {
        assert!(text.ends_with('\n'), "the text must end with a line feed");
        let mut typed: HashSet<String> = HashSet::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut finished: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut series: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let at = || format!("line {}: {line:?}", n + 1);
            assert!(!line.is_empty(), "{}: empty line", at());
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(metric_name(name), "{}: bad name", at());
                assert!(helped.insert(name.into()), "{}: second HELP", at());
                assert!(!help.contains('\n'));
                let mut esc = help.chars();
                while let Some(c) = esc.next() {
                    if c == '\\' {
                        assert!(
                            matches!(esc.next(), Some('\\' | 'n')),
                            "{}: bad HELP escape",
                            at()
                        );
                    }
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(metric_name(name), "{}: bad name", at());
                assert!(
                    matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ),
                    "{}: bad type",
                    at()
                );
                assert!(typed.insert(name.into()), "{}: second TYPE", at());
                assert!(
                    !finished.contains(name) && current.as_deref() != Some(name),
                    "{}: TYPE after samples",
                    at()
                );
                if let Some(c) = current.take() {
                    finished.insert(c);
                }
                current = Some(name.into());
                continue;
            }
            assert!(!line.starts_with('#'), "{}: unknown comment", at());
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            assert!(metric_name(name), "{}: bad metric name", at());
            assert_eq!(
                current.as_deref(),
                Some(name),
                "{}: sample outside its family's block",
                at()
            );
            let (labels, rest) = if line[name_end..].starts_with('{') {
                labels(&line[name_end..]).unwrap_or_else(|e| panic!("{}: {e}", at()))
            } else {
                (Vec::new(), &line[name_end..])
            };
            let names: HashSet<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names.len(), labels.len(), "{}: repeated label", at());
            let v = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("{}: no value", at()));
            let v = v.split(' ').next().unwrap_or("");
            assert!(value(v), "{}: bad value {v:?}", at());
            assert!(
                series.insert(format!("{name}{labels:?}")),
                "{}: duplicate series",
                at()
            );
            out.push((
                name.to_string(),
                labels,
                match v {
                    "NaN" => f64::NAN,
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().unwrap_or(f64::NAN),
                },
            ));
        }
        for t in &typed {
            assert!(helped.contains(t), "{t}: TYPE without HELP");
        }
        out
    }

    #[test]
    fn rendered_text_follows_the_format() {
        let mut e = Exposition::new();
        e.family(
            "perch_x_total",
            Kind::Counter,
            "A help text with \\ and\nline.",
        );
        e.family("perch_y", Kind::Gauge, "Y.");
        e.family("perch_empty", Kind::Gauge, "Nothing yet.");
        e.sample(
            "perch_x_total",
            &[("device", "pi-1"), ("rule", "a\"b\\c\nd")],
            3.0,
        );
        e.sample("perch_y", &[], 0.25);
        e.sample("perch_y", &[("k", "")], f64::NAN);
        e.sample("perch_y", &[("k", "inf")], f64::INFINITY);
        e.sample("perch_unknown", &[], 1.0);
        let text = e.render();
        let samples = check_exposition(&text);
        assert_eq!(samples.len(), 4, "{text}");
        assert_eq!(samples[0].1[1].1, "a\"b\\c\nd");
        assert!(text.contains(r#"rule="a\"b\\c\nd""#), "{text}");
        assert!(text.contains("perch_x_total{device=\"pi-1\",rule=\"a\\\"b\\\\c\\nd\"} 3\n"));
        assert!(text.contains("perch_y 0.25\n"));
        assert!(text.contains("perch_y{k=\"inf\"} +Inf\n"));
        assert!(text.contains("# HELP perch_x_total A help text with \\\\ and\\nline.\n"));
        assert!(text.contains("# TYPE perch_empty gauge\n"));
    }

    #[test]
    fn values_format_as_the_format_reads_them() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(-2.0), "-2");
        assert_eq!(format_value(0.001), "0.001");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e20), "100000000000000000000");
        assert!(value(&format_value(1e-9)));
    }
}
