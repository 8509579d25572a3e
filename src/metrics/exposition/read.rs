//! The strict reader of both text formats ([`parse`]), for the tests of every `/metrics`:
//! well-formed lines, declared types, cumulative histograms whose `+Inf` bucket equals
//! `_count`, counters ending in `_total`.

use super::Format;

/// One sample line of a parsed exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// The sample's name (`perch_requests_total`, `perch_latency_seconds_bucket`).
    pub name: String,
    /// Its labels in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl ParsedSample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A scrape read by [`parse`]: each family's type, and the samples in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// Family name (as its `# TYPE` line names it) → type (`counter`, `gauge`, …).
    pub types: std::collections::BTreeMap<String, String>,
    /// Every sample line.
    pub samples: Vec<ParsedSample>,
}

impl Parsed {
    /// The type of the family sample `name` belongs to.
    pub fn type_of(&self, name: &str) -> Option<&str> {
        family_of(name, &self.types).and_then(|f| self.types.get(f).map(String::as_str))
    }
}

/// Why [`parse`] refused a text: the line (1-based; 0 for the text as a whole) and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// The line, from 1; 0 when the fault is not on one line.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Reads a scrape in `format` strictly, as a check of what an endpoint serves: `# HELP`
/// and `# TYPE` once per family and before its samples; each family's samples together;
/// valid metric and label names; quoted label values with only `\\`, `\"` and `\n`
/// escapes; numeric values; no series twice; a known type; counters whose samples end in
/// `_total` (and, in OpenMetrics, a family name without it); histograms whose buckets are
/// cumulative in `le` order and end with `+Inf` equal to `_count`; OpenMetrics text ending
/// in `# EOF`.
///
/// # Errors
/// The first line that breaks one of those rules, as a [`ParseError`].
pub fn parse(text: &str, format: Format) -> Result<Parsed, ParseError> {
    let whole = |reason: String| ParseError { line: 0, reason };
    if !text.ends_with('\n') {
        return Err(whole("the text does not end with a line feed".into()));
    }
    let body = match format {
        Format::Prometheus => text,
        Format::OpenMetrics => text
            .strip_suffix("# EOF\n")
            .ok_or_else(|| whole("OpenMetrics text must end with # EOF".into()))?,
    };
    let mut parsed = Parsed::default();
    let mut helped = std::collections::HashSet::new();
    let mut finished = std::collections::HashSet::new();
    let mut current: Option<String> = None;
    let mut series = std::collections::HashSet::new();
    for (n, line) in body.lines().enumerate() {
        let fail = |reason: String| ParseError {
            line: n + 1,
            reason,
        };
        if line.is_empty() {
            return Err(fail("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !metric_name(name) {
                return Err(fail(format!("bad metric name {name:?}")));
            }
            if !helped.insert(name.to_string()) {
                return Err(fail(format!("second HELP for {name}")));
            }
            check_escapes(rest, format == Format::OpenMetrics).map_err(fail)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| fail("TYPE without a type".into()))?;
            if !metric_name(name) {
                return Err(fail(format!("bad metric name {name:?}")));
            }
            let kinds: &[&str] = match format {
                Format::Prometheus => &["counter", "gauge", "histogram", "summary", "untyped"],
                Format::OpenMetrics => &[
                    "counter",
                    "gauge",
                    "histogram",
                    "gaugehistogram",
                    "stateset",
                    "info",
                    "summary",
                    "unknown",
                ],
            };
            if !kinds.contains(&kind) {
                return Err(fail(format!("unknown type {kind:?}")));
            }
            match (format, kind, name.ends_with("_total")) {
                (Format::Prometheus, "counter", false) => {
                    return Err(fail(format!("counter {name} does not end in _total")));
                }
                (Format::OpenMetrics, "counter", true) => {
                    return Err(fail(format!("counter family {name} ends in _total")));
                }
                _ => {}
            }
            if finished.contains(name) || current.as_deref() == Some(name) {
                return Err(fail(format!("TYPE for {name} after its samples")));
            }
            if parsed.types.insert(name.into(), kind.into()).is_some() {
                return Err(fail(format!("second TYPE for {name}")));
            }
            if let Some(c) = current.take() {
                finished.insert(c);
            }
            current = Some(name.into());
            continue;
        }
        if line.starts_with('#') {
            return Err(fail("a comment other than HELP or TYPE".into()));
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !metric_name(name) {
            return Err(fail(format!("bad metric name {name:?}")));
        }
        let family = family_of(name, &parsed.types);
        if family.is_none() || family != current.as_deref() {
            return Err(fail(format!("{name} outside its family's block")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(fail)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(fail("a label given twice".into()));
        }
        let v = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no value".into()))?;
        let v = v.split(' ').next().unwrap_or("");
        let value = parse_value(v).ok_or_else(|| fail(format!("bad value {v:?}")))?;
        let kind = family
            .and_then(|f| parsed.types.get(f))
            .map_or("", String::as_str);
        if kind == "counter" && !name.ends_with("_total") && !name.ends_with("_created") {
            return Err(fail(format!(
                "counter sample {name} does not end in _total"
            )));
        }
        let mut key_labels = labels.clone();
        key_labels.sort();
        if !series.insert(format!("{name}{key_labels:?}")) {
            return Err(fail("the same series twice".into()));
        }
        parsed.samples.push(ParsedSample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    if let Some(t) = parsed.types.keys().find(|t| !helped.contains(*t)) {
        return Err(whole(format!("{t}: TYPE without HELP")));
    }
    check_histograms(&parsed).map_err(whole)?;
    Ok(parsed)
}

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

/// Only `\\` and `\n` (and in OpenMetrics `\"`) after a backslash.
fn check_escapes(help: &str, quote: bool) -> Result<(), String> {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\' | 'n') => {}
                Some('"') if quote => {}
                other => return Err(format!("bad escape in HELP: {other:?}")),
            }
        }
    }
    Ok(())
}

/// `{a="x",b="y\"z"}` from the start of `s`: the labels (unescaped) and the rest.
#[allow(clippy::type_complexity)]
fn parse_labels(s: &str) -> Result<(Vec<(String, String)>, &str), String> {
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
            return Err(format!("label {name}: value not quoted"));
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

pub(super) fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

/// The family a sample name belongs to: its own name when typed, else the name without a
/// suffix its family's type writes (`_total`, `_info`, `_bucket`, `_sum`, `_count`,
/// `_created`).
fn family_of<'a>(
    name: &'a str,
    types: &std::collections::BTreeMap<String, String>,
) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    let fits = |suffix: &str, kind: &str| match suffix {
        "_total" => kind == "counter",
        "_info" => kind == "info",
        "_bucket" => matches!(kind, "histogram" | "gaugehistogram"),
        "_sum" | "_count" => matches!(kind, "histogram" | "summary"),
        "_created" => matches!(kind, "counter" | "histogram" | "summary"),
        _ => false,
    };
    ["_total", "_info", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .find_map(|suffix| {
            let family = name.strip_suffix(suffix)?;
            types
                .get(family)
                .filter(|kind| fits(suffix, kind))
                .map(|_| family)
        })
}

/// Each histogram's buckets: ascending `le`, cumulative counts, a last `+Inf` bucket equal
/// to its `_count`.
fn check_histograms(parsed: &Parsed) -> Result<(), String> {
    use std::collections::BTreeMap;
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for s in &parsed.samples {
        if parsed.type_of(&s.name) != Some("histogram") {
            continue;
        }
        let mut rest: Vec<_> = s.labels.iter().filter(|(k, _)| k != "le").collect();
        rest.sort();
        if let Some(f) = s.name.strip_suffix("_bucket") {
            let le = s
                .label("le")
                .and_then(parse_value)
                .ok_or_else(|| format!("{}: a bucket without a numeric le", s.name))?;
            buckets
                .entry(format!("{f}{rest:?}"))
                .or_default()
                .push((le, s.value));
        } else if let Some(f) = s.name.strip_suffix("_count") {
            counts.insert(format!("{f}{rest:?}"), s.value);
        }
    }
    for (key, b) in &buckets {
        if !b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("{key}: buckets not cumulative in le order: {b:?}"));
        }
        match b.last() {
            Some(&(le, n)) if le == f64::INFINITY => {
                if counts.get(key) != Some(&n) {
                    return Err(format!("{key}: +Inf bucket {n} is not _count"));
                }
            }
            _ => return Err(format!("{key}: no +Inf bucket")),
        }
    }
    Ok(())
}
