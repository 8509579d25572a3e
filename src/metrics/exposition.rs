//! The one Prometheus writer of perch, used by the agent's and the host's `GET /metrics`.
//!
//! Families are declared with their type and help, filled with samples, then rendered in
//! either text format a scraper asks for ([`Format::from_accept`]):
//! - the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), the default;
//! - OpenMetrics 1.0.0 (`application/openmetrics-text; version=1.0.0`): counter families
//!   are named without their `_total` suffix in `# TYPE` / `# HELP`, info families without
//!   `_info`, help text escapes `"`, and the text ends with `# EOF`.
//!
//! A counter is declared by its family name (`perch_requests`); its samples are written as
//! `perch_requests_total`. An info family (`perch_model`) has one sample `perch_model_info`
//! of value 1 whose labels carry the facts (in 0.0.4 it is typed `gauge`). A histogram's
//! buckets are given as cumulative counts at fixed upper bounds; the writer adds the `+Inf`
//! bucket (equal to `_count`), `_sum` and `_count`.
//!
//! Hand-written rather than the `prometheus-client` crate: the device binary has a size
//! budget (1.5 MiB for the native-only aarch64 build) and this writer is a few hundred
//! lines with no dependency, while the crate brings its own registry, encoders and their
//! dependencies (`dtoa`, `itoa`, `parking_lot`) for what is here a string builder.

use std::fmt::Write;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts from 0 when its source does); samples get `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets `_bucket{le}`, `_sum` and `_count` (see [`Exposition::histogram`]).
    Histogram,
    /// Facts as labels on one sample `NAME_info` of value 1 (see [`Exposition::info`]).
    Info,
}

/// Which text format to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text exposition format, version 0.0.4.
    Prometheus,
    /// OpenMetrics text, version 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (version 1.x or none) with a quality at least that of
    /// `text/plain` (or `*/*`) and above 0; else the 0.0.4 text.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let (mut open, mut text) = (0.0f64, 0.0f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0f64, None);
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "q" => q = v.trim().parse().unwrap_or(0.0),
                        "version" => version = Some(v.trim().to_string()),
                        _ => {}
                    }
                }
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v.starts_with("1.")) =>
                {
                    open = open.max(q);
                }
                "text/plain" | "*/*" | "text/*" => text = text.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One line's worth of a family: the suffix after the family name, the labels, the value.
#[derive(Debug)]
struct Sample {
    suffix: &'static str,
    labels: Vec<(&'static str, String)>,
    value: f64,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

/// A set of metric families being filled, rendered in the order they were declared with
/// each family's samples together under its `# HELP` and `# TYPE` lines.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Declares the family `name` (matching `[a-zA-Z_:][a-zA-Z0-9_:]*`; a counter's without
    /// `_total`, an info family's without `_info`). Declaring a name again is a no-op.
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

    fn push(&mut self, name: &str, suffix: &'static str, labels: &[(&'static str, &str)], v: f64) {
        if let Some(f) = self.families.iter_mut().find(|f| f.name == name) {
            f.samples.push(Sample {
                suffix,
                labels: labels.iter().map(|&(k, v)| (k, v.to_string())).collect(),
                value: v,
            });
        }
    }

    /// Adds a sample to the counter or gauge family `name` (declared first with
    /// [`Exposition::family`]; samples of undeclared families are dropped). Label names
    /// must match `[a-zA-Z_][a-zA-Z0-9_]*`; values may hold any text.
    pub fn sample(&mut self, name: &str, labels: &[(&'static str, &str)], value: f64) {
        let suffix = match self.kind_of(name) {
            Some(Kind::Counter) => "_total",
            Some(Kind::Gauge) => "",
            _ => return,
        };
        self.push(name, suffix, labels, value);
    }

    /// Adds the sample `NAME_info{labels} 1` to the info family `name`.
    pub fn info(&mut self, name: &str, labels: &[(&'static str, &str)]) {
        if self.kind_of(name) == Some(Kind::Info) {
            self.push(name, "_info", labels, 1.0);
        }
    }

    /// Adds one histogram to the histogram family `name`: `cumulative[i]` values at most
    /// `bounds[i]` (both ascending, same length), `count` values in all (the `+Inf`
    /// bucket) summing to `sum`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&'static str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
        count: u64,
    ) {
        if self.kind_of(name) != Some(Kind::Histogram) {
            return;
        }
        let bucket = |le: String| {
            let mut all: Vec<(&'static str, String)> =
                labels.iter().map(|&(k, v)| (k, v.to_string())).collect();
            all.push(("le", le));
            all
        };
        let Some(f) = self.families.iter_mut().find(|f| f.name == name) else {
            return;
        };
        for (&b, &c) in bounds.iter().zip(cumulative) {
            f.samples.push(Sample {
                suffix: "_bucket",
                labels: bucket(format_value(b)),
                value: c as f64,
            });
        }
        f.samples.push(Sample {
            suffix: "_bucket",
            labels: bucket("+Inf".into()),
            value: count as f64,
        });
        self.push(name, "_sum", labels, sum);
        self.push(name, "_count", labels, count as f64);
    }

    fn kind_of(&self, name: &str) -> Option<Kind> {
        self.families
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.kind)
    }

    /// The text in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        for f in &self.families {
            let (meta, kind) = match (format, f.kind) {
                (Format::Prometheus, Kind::Counter) => (Meta::Suffixed("_total"), "counter"),
                (Format::Prometheus, Kind::Info) => (Meta::Suffixed("_info"), "gauge"),
                (Format::Prometheus, Kind::Gauge) => (Meta::Bare, "gauge"),
                (Format::Prometheus, Kind::Histogram) => (Meta::Bare, "histogram"),
                (Format::OpenMetrics, Kind::Counter) => (Meta::Bare, "counter"),
                (Format::OpenMetrics, Kind::Info) => (Meta::Bare, "info"),
                (Format::OpenMetrics, Kind::Gauge) => (Meta::Bare, "gauge"),
                (Format::OpenMetrics, Kind::Histogram) => (Meta::Bare, "histogram"),
            };
            let suffix = match meta {
                Meta::Bare => "",
                Meta::Suffixed(s) => s,
            };
            let help = escape_help(f.help, format);
            let _ = writeln!(out, "# HELP {}{suffix} {help}", f.name);
            let _ = writeln!(out, "# TYPE {}{suffix} {kind}", f.name);
            for s in &f.samples {
                out.push_str(f.name);
                out.push_str(s.suffix);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(s.value));
            }
        }
        if format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

/// How a family's `# HELP` / `# TYPE` lines name it.
enum Meta {
    Bare,
    Suffixed(&'static str),
}

/// A label value as both formats want it: backslash, double quote and line feed escaped.
fn escape_label(v: &str) -> String {
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

/// HELP text: backslash and line feed escaped, and in OpenMetrics the double quote too.
fn escape_help(v: &str, format: Format) -> String {
    match format {
        Format::Prometheus => v.replace('\\', "\\\\").replace('\n', "\\n"),
        Format::OpenMetrics => escape_label(v),
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

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

    /// The family a sample name belongs to, given the declared families and their types.
    fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
        if types.contains_key(name) {
            return Some(name);
        }
        ["_total", "_info", "_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| types.contains_key(*f))
    }

    /// Every sample of 0.0.4 `text` as (name, labels, value), after checking each line
    /// against the text format: HELP then TYPE once per family before its samples,
    /// families not interleaved, valid names, label syntax and escapes, numeric values, no
    /// duplicate series; counters end in `_total`; histograms have cumulative buckets
    /// ending in `+Inf` equal to `_count`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn check_exposition(text: &str) -> Vec<(String, Vec<(String, String)>, f64)> {
        check(text, Format::Prometheus)
    }

    /// [`check_exposition`] for either format.
    #[allow(clippy::type_complexity)]
    pub(crate) fn check(text: &str, format: Format) -> Vec<(String, Vec<(String, String)>, f64)> {
        assert!(text.ends_with('\n'), "the text must end with a line feed");
        let body = match format {
            Format::Prometheus => text,
            Format::OpenMetrics => text
                .strip_suffix("# EOF\n")
                .expect("OpenMetrics text ends with # EOF"),
        };
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut finished: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut series: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for (n, line) in body.lines().enumerate() {
            let at = || format!("line {}: {line:?}", n + 1);
            assert!(!line.is_empty(), "{}: empty line", at());
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(metric_name(name), "{}: bad name", at());
                assert!(helped.insert(name.into()), "{}: second HELP", at());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(metric_name(name), "{}: bad name", at());
                let kinds: &[&str] = match format {
                    Format::Prometheus => &["counter", "gauge", "histogram", "summary", "untyped"],
                    Format::OpenMetrics => &["counter", "gauge", "histogram", "info", "unknown"],
                };
                assert!(kinds.contains(&kind), "{}: bad type", at());
                if format == Format::OpenMetrics && kind == "counter" {
                    assert!(!name.ends_with("_total"), "{}: counter family _total", at());
                }
                if format == Format::Prometheus && kind == "counter" {
                    assert!(name.ends_with("_total"), "{}: counter without _total", at());
                }
                assert!(
                    types.insert(name.into(), kind.into()).is_none(),
                    "{}: second TYPE",
                    at()
                );
                assert!(!finished.contains(name), "{}: TYPE after samples", at());
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
            let family = family_of(name, &types);
            assert_eq!(
                current.as_deref(),
                family,
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
        for t in types.keys() {
            assert!(helped.contains(t), "{t}: TYPE without HELP");
        }
        check_histograms(&out, &types);
        out
    }

    /// Buckets cumulative in `le` order, the last `+Inf` and equal to `_count`.
    #[allow(clippy::type_complexity)]
    fn check_histograms(
        samples: &[(String, Vec<(String, String)>, f64)],
        types: &HashMap<String, String>,
    ) {
        let mut buckets: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        let mut counts: HashMap<String, f64> = HashMap::new();
        for (name, labels, v) in samples {
            let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").collect();
            if let Some(f) = name
                .strip_suffix("_bucket")
                .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| {
                        if v == "+Inf" {
                            f64::INFINITY
                        } else {
                            v.parse().expect("le")
                        }
                    })
                    .expect("a bucket has le");
                buckets
                    .entry(format!("{f}{rest:?}"))
                    .or_default()
                    .push((le, *v));
            } else if let Some(f) = name
                .strip_suffix("_count")
                .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            {
                counts.insert(format!("{f}{rest:?}"), *v);
            }
        }
        for (key, b) in &buckets {
            assert!(
                b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{key}: {b:?}"
            );
            assert_eq!(b.last().map(|l| l.0), Some(f64::INFINITY), "{key}: no +Inf");
            assert_eq!(
                b.last().map(|l| l.1),
                counts.get(key).copied(),
                "{key}: +Inf != _count"
            );
        }
    }

    fn sample() -> Exposition {
        let mut e = Exposition::new();
        e.family(
            "perch_x",
            Kind::Counter,
            "A help text with \\ and\nline and \"q\".",
        );
        e.family("perch_y", Kind::Gauge, "Y.");
        e.family("perch_empty", Kind::Gauge, "Nothing yet.");
        e.family("perch_model", Kind::Info, "The model.");
        e.family("perch_latency_seconds", Kind::Histogram, "Latency.");
        e.sample(
            "perch_x",
            &[("device", "pi-1"), ("rule", "a\"b\\c\nd")],
            3.0,
        );
        e.sample("perch_y", &[], 0.25);
        e.sample("perch_y", &[("k", "")], f64::NAN);
        e.sample("perch_y", &[("k", "inf")], f64::INFINITY);
        e.sample("perch_unknown", &[], 1.0);
        e.sample("perch_model", &[], 1.0);
        e.info("perch_model", &[("name", "iris"), ("version", "3")]);
        e.histogram(
            "perch_latency_seconds",
            &[("device", "pi-1")],
            &[0.001, 0.01],
            &[2, 5],
            0.04,
            6,
        );
        e
    }

    #[test]
    fn prometheus_text_follows_the_format() {
        let text = sample().render(Format::Prometheus);
        let samples = check_exposition(&text);
        assert_eq!(samples.len(), 10, "{text}");
        assert_eq!(samples[0].1[1].1, "a\"b\\c\nd");
        assert!(text.contains("perch_x_total{device=\"pi-1\",rule=\"a\\\"b\\\\c\\nd\"} 3\n"));
        assert!(text.contains("# TYPE perch_x_total counter\n"), "{text}");
        assert!(
            text.contains("# HELP perch_x_total A help text with \\\\ and\\nline and \"q\".\n")
        );
        assert!(text.contains("perch_y 0.25\n"));
        assert!(text.contains("perch_y{k=\"inf\"} +Inf\n"));
        assert!(text.contains("# TYPE perch_empty gauge\n"));
        assert!(text.contains(
            "# TYPE perch_model_info gauge\nperch_model_info{name=\"iris\",version=\"3\"} 1\n"
        ));
        assert!(
            text.contains(
                "perch_latency_seconds_bucket{device=\"pi-1\",le=\"0.001\"} 2\n\
             perch_latency_seconds_bucket{device=\"pi-1\",le=\"0.01\"} 5\n\
             perch_latency_seconds_bucket{device=\"pi-1\",le=\"+Inf\"} 6\n\
             perch_latency_seconds_sum{device=\"pi-1\"} 0.04\n\
             perch_latency_seconds_count{device=\"pi-1\"} 6\n"
            ),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_names_families_without_suffixes_and_ends_with_eof() {
        let text = sample().render(Format::OpenMetrics);
        check(&text, Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"));
        assert!(
            text.contains("# TYPE perch_x counter\nperch_x_total{"),
            "{text}"
        );
        assert!(text.contains("# HELP perch_x A help text with \\\\ and\\nline and \\\"q\\\".\n"));
        assert!(
            text.contains("# TYPE perch_model info\nperch_model_info{"),
            "{text}"
        );
    }

    #[test]
    fn the_checker_rejects_non_cumulative_histograms() {
        let bad = "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n";
        assert!(std::panic::catch_unwind(|| check_exposition(bad)).is_err());
        let short = "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n";
        assert!(std::panic::catch_unwind(|| check_exposition(short)).is_err());
        let counter = "# HELP c C.\n# TYPE c counter\nc 1\n";
        assert!(std::panic::catch_unwind(|| check_exposition(counter)).is_err());
    }

    #[test]
    fn accept_headers_choose_the_format() {
        use Format::{OpenMetrics, Prometheus};
        for (accept, want) in [
            (None, Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("*/*"), Prometheus),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4,application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("application/openmetrics-text; q=0"), Prometheus),
            (
                Some("application/openmetrics-text; version=2.0.0"),
                Prometheus,
            ),
            (
                Some("Application/OpenMetrics-Text; Version=1.0.0"),
                OpenMetrics,
            ),
        ] {
            assert_eq!(Format::from_accept(accept), want, "{accept:?}");
        }
        assert!(
            OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text; version=1.0.0")
        );
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
