//! How a host command's result reaches the user: as text ([`Render::text`]) or, with
//! `--json`, as the result's serde form (one JSON document per line). Every command of
//! `perch-host` returns a typed result that implements both, so a renamed field fails to
//! compile instead of printing a placeholder.

use serde::Serialize;
use serde_json::Value;

/// A command result's text form, as `perch-host` prints it without `--json`.
pub trait Render {
    /// The text for stdout, each line ending in `\n`; empty when the command prints its
    /// result on stdout only with `--json` (it tells stderr what it did).
    fn text(&self) -> String;
}

/// What `perch-host` writes on stdout for `result`: its JSON form on one line with `json`,
/// else its text.
///
/// # Errors
/// A result serde cannot write as JSON (a map with non-string keys).
pub fn output<T: Serialize + Render>(result: &T, json: bool) -> serde_json::Result<String> {
    Ok(if json {
        let mut line = serde_json::to_string(result)?;
        line.push('\n');
        line
    } else {
        result.text()
    })
}

/// Where a column's cells sit in their width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Padded on the right.
    Left,
    /// Padded on the left.
    Right,
}

/// A text table: columns as wide as their widest cell (or a fixed minimum), separated by a
/// gap. The one table renderer of the host's text output.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<(Align, usize)>,
    fit: bool,
    gap: &'static str,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Left-aligned columns as wide as their widest cell, two spaces apart, with `header` as
    /// the first row; trailing blanks are trimmed from each line.
    pub fn fitted<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        let header: Vec<String> = header.into_iter().map(Into::into).collect();
        Table {
            columns: vec![(Align::Left, 0); header.len()],
            fit: true,
            gap: "  ",
            rows: vec![header],
        }
    }

    /// Columns of the given alignment and minimum width (a longer cell overflows it, as
    /// `format!("{:<24}")` does), one space apart, without a header row.
    pub fn fixed(columns: &[(Align, usize)]) -> Self {
        Table {
            columns: columns.to_vec(),
            fit: false,
            gap: " ",
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra ones ignored).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The table, one line per row.
    pub fn text(&self) -> String {
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, &(_, min))| {
                let widest = self
                    .rows
                    .iter()
                    .filter(|_| self.fit)
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0);
                widest.max(min)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let cells: Vec<String> = self
                .columns
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (&(align, _), &w))| {
                    let cell = row.get(c).map_or("", String::as_str);
                    match align {
                        Align::Left => format!("{cell:<w$}"),
                        Align::Right => format!("{cell:>w$}"),
                    }
                })
                .collect();
            let line = cells.join(self.gap);
            out.push_str(if self.fit { line.trim_end() } else { &line });
            out.push('\n');
        }
        out
    }
}

/// One metric as `name=value` (four decimals for numbers; `null` for a figure JSON could not
/// hold, such as a NaN log loss).
pub fn metric(name: &str, value: &Value) -> String {
    match value.as_f64() {
        Some(x) => format!("{name}={x:.4}"),
        None => format!("{name}={value}"),
    }
}

/// A stored metrics document (a version's) as `name=value` pairs, then `(on the training
/// data)` when they were measured there: a training-set figure must never pass for a test
/// one. Training-set copies (`train_*`) are left out.
pub fn stored_metrics(m: &Value) -> String {
    let Some(map) = m.as_object() else {
        return String::new();
    };
    let mut text = map
        .iter()
        .filter(|(k, _)| !k.starts_with("train_") && k.as_str() != "evaluated_on")
        .map(|(k, v)| metric(k, v))
        .collect::<Vec<_>>()
        .join(" ");
    if map.get("evaluated_on").and_then(Value::as_str) == Some("train") && !text.is_empty() {
        text.push_str(" (on the training data)");
    }
    text
}

/// A time as a UTC date with how long before `now` it was: `2026-12-06 09:14:02 UTC (5m
/// ago)`.
pub fn when(now: i64, t: i64) -> String {
    format!("{} UTC ({})", crate::cli::utc_time(t), ago(now, t))
}

fn ago(now: i64, t: i64) -> String {
    let s = (now - t).max(0);
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        7200..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `: REASON` when there is a reason, else nothing.
pub fn reason_suffix(reason: Option<&str>) -> String {
    reason.map(|r| format!(": {r}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitted_tables_size_columns_to_their_cells() {
        let mut t = Table::fitted(["DEVICE", "GROUP"]);
        t.row(["pi-kitchen-01", "north"]);
        t.row(["b", ""]);
        assert_eq!(t.text(), "DEVICE         GROUP\npi-kitchen-01  north\nb\n");
    }

    #[test]
    fn fixed_tables_pad_to_a_minimum_and_overflow_it() {
        let mut t = Table::fixed(&[(Align::Left, 4), (Align::Right, 5), (Align::Left, 0)]);
        t.row(["ab", "1", "x"]);
        t.row(["abcdef", "123456", ""]);
        assert_eq!(t.text(), "ab       1 x\nabcdef 123456 \n");
    }

    #[test]
    fn stored_metrics_say_when_they_are_training_figures() {
        let m = serde_json::json!({"accuracy": 0.5, "train_accuracy": 0.9, "evaluated_on": "train", "log_loss": null});
        assert_eq!(
            stored_metrics(&m),
            "accuracy=0.5000 log_loss=null (on the training data)"
        );
        assert_eq!(stored_metrics(&serde_json::json!({})), "");
    }

    #[test]
    fn output_is_json_or_text() {
        #[derive(Serialize)]
        struct R {
            a: u32,
        }
        impl Render for R {
            fn text(&self) -> String {
                format!("a is {}\n", self.a)
            }
        }
        assert_eq!(output(&R { a: 1 }, true).unwrap(), "{\"a\":1}\n");
        assert_eq!(output(&R { a: 1 }, false).unwrap(), "a is 1\n");
    }
}
