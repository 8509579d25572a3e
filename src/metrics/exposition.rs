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

mod read;
pub use read::{ParseError, Parsed, ParsedSample, parse};

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
        // Qualities in thousandths, as RFC 9110 writes them (at most three decimals).
        let (mut open, mut text) = (0u16, 0u16);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let (mut q, mut version_1) = (1000u16, true);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim().trim_matches('"'));
                if k.eq_ignore_ascii_case("q") {
                    q = quality(v);
                } else if k.eq_ignore_ascii_case("version") {
                    version_1 = v.starts_with("1.");
                }
            }
            if media.eq_ignore_ascii_case("application/openmetrics-text") && version_1 {
                open = open.max(q);
            } else if ["text/plain", "text/*", "*/*"]
                .iter()
                .any(|m| media.eq_ignore_ascii_case(m))
            {
                text = text.max(q);
            }
        }
        if open > 0 && open >= text {
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

/// An RFC 9110 `qvalue` (`0`, `0.5`, `1.000`) in thousandths; anything else is 0, so a
/// malformed range is never preferred.
fn quality(v: &str) -> u16 {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match whole {
        "0" => thousandths,
        "1" if thousandths == 0 => 1000,
        _ => 0,
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
///
/// The methods are `#[inline(never)]`: a scrape calls them from some 40 places, and inlined
/// at each they cost the size-budgeted device binary kilobytes for no speed that matters.
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
    #[inline(never)]
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

    #[inline(never)]
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
    #[inline(never)]
    pub fn sample(&mut self, name: &str, labels: &[(&'static str, &str)], value: f64) {
        let suffix = match self.kind_of(name) {
            Some(Kind::Counter) => "_total",
            Some(Kind::Gauge) => "",
            _ => return,
        };
        self.push(name, suffix, labels, value);
    }

    /// Adds the sample `NAME_info{labels} 1` to the info family `name`.
    #[inline(never)]
    pub fn info(&mut self, name: &str, labels: &[(&'static str, &str)]) {
        if self.kind_of(name) == Some(Kind::Info) {
            self.push(name, "_info", labels, 1.0);
        }
    }

    /// Adds one histogram to the histogram family `name`: `cumulative[i]` values at most
    /// `bounds[i]` (both ascending, same length), `count` values in all (the `+Inf`
    /// bucket) summing to `sum`.
    #[inline(never)]
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
                labels: bucket(format_le(b)),
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
    #[inline(never)]
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

/// A bucket bound as both formats read it: a whole number with `.0` (OpenMetrics wants
/// `le` as a float, and Prometheus reads `1.0` and `1` alike), else as a value.
fn format_le(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}.0", v as i64)
    } else {
        format_value(v)
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
    use super::read::parse_value;
    use super::*;

    /// [`parse`]d 0.0.4 text as (name, labels, value), panicking with the text when it is
    /// not well formed.
    #[allow(clippy::type_complexity)]
    pub(crate) fn check_exposition(text: &str) -> Vec<(String, Vec<(String, String)>, f64)> {
        check(text, Format::Prometheus)
    }

    /// [`check_exposition`] for either format.
    #[allow(clippy::type_complexity)]
    pub(crate) fn check(text: &str, format: Format) -> Vec<(String, Vec<(String, String)>, f64)> {
        let parsed = parse(text, format).unwrap_or_else(|e| panic!("{e}\n{text}"));
        parsed
            .samples
            .into_iter()
            .map(|s| (s.name, s.labels, s.value))
            .collect()
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
    fn the_parser_rejects_malformed_text() {
        let bad = [
            "perch_x 1",                                                       // no newline, no TYPE
            "# HELP x X.\n# TYPE x gauge\nx{a=\"1} 1\n",                       // unterminated value
            "# HELP x X.\n# TYPE x gauge\nx{1a=\"1\"} 1\n",                    // bad label name
            "# HELP x X.\n# TYPE x gauge\nx{a=\"\\t\"} 1\n",                   // bad escape
            "# HELP x X.\n# TYPE x gauge\nx one\n",                            // bad value
            "# HELP x X.\n# TYPE x gauge\nx 1\nx 2\n",                         // same series twice
            "# HELP c C.\n# TYPE c counter\nc 1\n", // counter without _total
            "# TYPE x gauge\nx 1\n",                // TYPE without HELP
            "# HELP x X.\n# HELP y Y.\n# TYPE x gauge\n# TYPE y gauge\nx 1\n", // interleaved
            "# HELP x X.\n# TYPE x gauge\nx 1\n# TYPE x gauge\n", // second TYPE
            "# HELP x X.\n# TYPE x gauge\nx 1\n\n", // empty line
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        ];
        for text in bad {
            assert!(
                parse(text, Format::Prometheus).is_err(),
                "accepted {text:?}"
            );
        }
        let om_total = "# HELP c_total C.\n# TYPE c_total counter\nc_total 1\n# EOF\n";
        assert!(parse(om_total, Format::OpenMetrics).is_err());
        let no_eof = "# HELP c C.\n# TYPE c counter\nc_total 1\n";
        assert!(parse(no_eof, Format::OpenMetrics).is_err());
        assert!(parse(&format!("{no_eof}# EOF\n"), Format::OpenMetrics).is_ok());
        let good = "# HELP x a\n# TYPE x gauge\nx{a=\"q\\\"\\\\\\n\",b=\"2\"} -1.5e3 17\n";
        let parsed = parse(good, Format::Prometheus).expect("well formed");
        assert_eq!(parsed.samples[0].label("a"), Some("q\"\\\n"));
        assert_eq!(parsed.samples[0].value, -1500.0);
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
    fn qualities_read_as_rfc_9110_writes_them() {
        for (v, want) in [
            ("1", 1000),
            ("1.000", 1000),
            ("0", 0),
            ("0.5", 500),
            ("0.75", 750),
            ("0.001", 1),
            ("1.5", 0),
            ("0.0001", 0),
            ("", 0),
            ("abc", 0),
            ("0.-1", 0),
        ] {
            assert_eq!(quality(v), want, "{v:?}");
        }
    }

    #[test]
    fn values_format_as_the_format_reads_them() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(-2.0), "-2");
        assert_eq!(format_value(0.001), "0.001");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e20), "100000000000000000000");
        assert!(parse_value(&format_value(1e-9)).is_some());
        assert_eq!(
            (format_le(1.0), format_le(2.5), format_le(0.000025)),
            ("1.0".into(), "2.5".into(), "0.000025".into())
        );
    }
}
