//! Reading model inputs from files (CSV, JSON, `.npy`) and writing outputs.
//!
//! Every reader returns a row-major `f32` array with its shape; rows are samples. Bad input
//! is an [`InputError`] naming the file position at fault, never a panic.
//!
//! A CSV header or the keys of JSON objects name the columns; [`arrange`] matches them to
//! the feature names a model records ([`InputNames`]), in any order.

use crate::graph::Metadata;
use std::path::Path;

/// Why an input file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum InputError {
    /// The file holds no data rows.
    #[error("{file}: no data rows")]
    Empty {
        /// File name.
        file: String,
    },
    /// A CSV cell or JSON element is not a number.
    #[error("{file}: row {row}, column {column}: {value:?} is not a number")]
    NotANumber {
        /// File name.
        file: String,
        /// 1-based line / row number in the file.
        row: usize,
        /// 1-based column.
        column: usize,
        /// The offending text.
        value: String,
    },
    /// A value is NaN or infinite.
    #[error("{file}: row {row}, column {column}: value is {value}; inputs must be finite numbers")]
    NonFinite {
        /// File name.
        file: String,
        /// 1-based row.
        row: usize,
        /// 1-based column.
        column: usize,
        /// The value as read.
        value: String,
    },
    /// Rows of different lengths.
    #[error("{file}: row {row} has {got} values, earlier rows have {expected}")]
    Ragged {
        /// File name.
        file: String,
        /// 1-based row.
        row: usize,
        /// Width of the first row.
        expected: usize,
        /// Width of this row.
        got: usize,
    },
    /// The file is malformed in its own format.
    #[error("{file}: {reason}")]
    Malformed {
        /// File name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("{file}: {reason}")]
    Io {
        /// File name.
        file: String,
        /// The I/O error text.
        reason: String,
    },
    /// Named columns that do not match the model's features.
    #[error("{file}: {reason}")]
    Columns {
        /// File name.
        file: String,
        /// Which columns are missing, unknown or repeated, and what to do.
        reason: String,
    },
}

/// A dense row-major array read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct InputArray {
    /// Shape; the first axis is the sample (row) axis.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
    /// The columns' names, when the file gives them (a CSV header, JSON objects' keys).
    pub columns: Option<Columns>,
}

/// Names of an input's columns, one per value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// Names in the order of the values.
    pub names: Vec<String>,
    /// Whether the order means something: true for a CSV header; false for JSON objects'
    /// keys, which can only be matched by name.
    pub ordered: bool,
}

impl InputArray {
    /// An array without column names.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> InputArray {
        InputArray {
            shape,
            data,
            columns: None,
        }
    }
}

/// The names a model gives its input columns: its feature names in input order and the
/// column it was trained to predict (which an input may still carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputNames {
    /// Feature names, one per value of a sample, in the model's input order.
    pub features: Vec<String>,
    /// The training target's column name, when recorded.
    pub target: Option<String>,
}

impl InputNames {
    /// The names `metadata` records for a model whose (first) input takes `sample_len`
    /// values; `None` when it records none, or a different number than the input takes.
    pub fn of(metadata: Option<&Metadata>, sample_len: usize) -> Option<InputNames> {
        let m = metadata?;
        let features = m.feature_names().filter(|f| f.len() == sample_len)?;
        Some(InputNames {
            features,
            target: m.target_name().map(str::to_string),
        })
    }
}

/// What [`arrange`] did besides reordering, for a one-line note to the user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Arranged {
    /// Columns dropped: the training target (recorded, or named by the caller).
    pub dropped: Vec<String>,
    /// Whether the columns were matched by name (else used in file order).
    pub by_name: bool,
}

impl Arranged {
    /// `dropped column "target" (the training target)`, or `None` when nothing was dropped.
    pub fn note(&self) -> Option<String> {
        let quoted: Vec<String> = self.dropped.iter().map(|d| format!("{d:?}")).collect();
        match quoted.len() {
            0 => None,
            1 => Some(format!(
                "dropped column {} (the training target)",
                quoted[0]
            )),
            _ => Some(format!(
                "dropped columns {} (the training target)",
                quoted.join(", ")
            )),
        }
    }
}

/// Names listed for a person: the first few, then how many more.
fn listed(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut text: Vec<String> = names.iter().take(SHOWN).map(|n| format!("{n:?}")).collect();
    if names.len() > SHOWN {
        text.push(format!("and {} more", names.len() - SHOWN));
    }
    text.join(", ")
}

/// Fits a 2-D input with named columns to a model: drops the target column (`names.target`,
/// or `target` when given), then, when the model records its feature names, reorders the
/// columns by name into the model's order. Without column names the array is used as it is
/// (positional); with a CSV header but no names in the model, in file order.
///
/// # Errors
/// [`InputError::Columns`] naming every missing feature and every column that is not one,
/// a column given twice, a `target` that is not a column, or JSON objects for a model that
/// records no feature names.
pub fn arrange(
    array: InputArray,
    names: Option<&InputNames>,
    target: Option<&str>,
    file: &str,
) -> Result<(InputArray, Arranged), InputError> {
    let error = |reason: String| InputError::Columns {
        file: file.into(),
        reason,
    };
    let Some(columns) = array.columns.as_ref() else {
        if let Some(t) = target {
            return Err(error(format!(
                "--target {t:?} names a column, but the input has no header; remove the column from the file"
            )));
        }
        return Ok((array, Arranged::default()));
    };
    let width = columns.names.len();
    if array.shape.len() != 2 || array.shape[1] != width {
        return Err(error(format!(
            "{width} column names for rows of shape {:?}",
            array.shape.get(1..).unwrap_or(&[])
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = columns.names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(error(format!("column {dup:?} appears twice")));
    }
    if let Some(t) = target
        && !columns.names.iter().any(|n| n == t)
    {
        return Err(error(format!(
            "--target {t:?} is not a column; the columns are {}",
            listed(&columns.names.iter().map(String::as_str).collect::<Vec<_>>())
        )));
    }
    let is_target =
        |n: &str| target == Some(n) || names.and_then(|m| m.target.as_deref()) == Some(n);
    let dropped: Vec<String> = columns
        .names
        .iter()
        .filter(|n| is_target(n))
        .cloned()
        .collect();
    // Source column of each output column.
    let order: Vec<usize> = match names {
        Some(model) => {
            let position: std::collections::HashMap<&str, usize> = columns
                .names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            let missing: Vec<&str> = model
                .features
                .iter()
                .map(String::as_str)
                .filter(|f| !position.contains_key(f))
                .collect();
            let extra: Vec<&str> = columns
                .names
                .iter()
                .map(String::as_str)
                .filter(|n| !is_target(n) && !model.features.iter().any(|f| f == n))
                .collect();
            if !missing.is_empty() || !extra.is_empty() {
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!(
                        "missing feature{} {}",
                        if missing.len() == 1 { "" } else { "s" },
                        listed(&missing)
                    ));
                }
                if !extra.is_empty() {
                    let hint = if model.target.is_none() && missing.is_empty() {
                        " (drop it, or name the training target with --target)"
                    } else {
                        ""
                    };
                    parts.push(format!(
                        "column{} {} {} not a feature of the model{hint}",
                        if extra.len() == 1 { "" } else { "s" },
                        listed(&extra),
                        if extra.len() == 1 { "is" } else { "are" }
                    ));
                }
                return Err(error(format!(
                    "{}; the model takes {}",
                    parts.join("; "),
                    listed(
                        &model
                            .features
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                    )
                )));
            }
            model
                .features
                .iter()
                .map(|f| position[f.as_str()])
                .collect()
        }
        None if !columns.ordered => {
            return Err(error(
                "the model does not record its feature names, so named values cannot be \
                 matched to its inputs; give each row as an array in the model's input order"
                    .into(),
            ));
        }
        None => (0..width)
            .filter(|&i| !is_target(&columns.names[i]))
            .collect(),
    };
    let rows = array.shape[0];
    let identity = order.len() == width && order.iter().enumerate().all(|(i, &j)| i == j);
    let arranged = Arranged {
        dropped,
        by_name: names.is_some(),
    };
    if identity {
        return Ok((array, arranged));
    }
    let mut data = Vec::with_capacity(rows * order.len());
    for row in array.data.chunks_exact(width) {
        data.extend(order.iter().map(|&j| row[j]));
    }
    let columns = Columns {
        names: order.iter().map(|&j| columns.names[j].clone()).collect(),
        ordered: true,
    };
    Ok((
        InputArray {
            shape: vec![rows, order.len()],
            data,
            columns: Some(columns),
        },
        arranged,
    ))
}

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Comma-separated numbers, one sample per row, optional header row.
    Csv,
    /// Nested JSON arrays (`[[...], ...]`), or one flat array for a single sample.
    Json,
    /// NumPy `.npy` (little-endian float32/float64/int, C order).
    Npy,
}

impl InputFormat {
    /// Guesses the format from the file extension (`.npy`, `.json`, anything else CSV).
    pub fn from_path(path: &Path) -> InputFormat {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("npy") => InputFormat::Npy,
            Some("json") => InputFormat::Json,
            _ => InputFormat::Csv,
        }
    }
}

/// Reads `path` in the format its extension implies.
///
/// # Errors
/// See [`InputError`].
pub fn read_input(path: &Path) -> Result<InputArray, InputError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| InputError::Io {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    parse_input(&bytes, InputFormat::from_path(path), &file)
}

/// Parses `bytes` as `format`; `file` names the source in errors.
///
/// # Errors
/// See [`InputError`].
pub fn parse_input(
    bytes: &[u8],
    format: InputFormat,
    file: &str,
) -> Result<InputArray, InputError> {
    match format {
        InputFormat::Csv => parse_csv(bytes, file),
        InputFormat::Json => parse_json(bytes, file),
        InputFormat::Npy => parse_npy(bytes, file),
    }
}

fn parse_csv(bytes: &[u8], file: &str) -> Result<InputArray, InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut data = Vec::new();
    let mut width = None;
    let mut rows = 0;
    let mut record = csv::StringRecord::new();
    let mut first = true;
    let mut header: Option<Vec<String>> = None;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(InputError::Malformed {
                    file: file.into(),
                    reason: e.to_string(),
                });
            }
        }
        let line = record.position().map_or(rows + 1, |p| p.line() as usize);
        if record.len() == 1 && record.get(0) == Some("") {
            continue;
        }
        if first {
            first = false;
            // A first row with no parsable number at all is a header.
            if record.iter().all(|c| c.parse::<f32>().is_err()) {
                header = Some(record.iter().map(str::to_string).collect());
                continue;
            }
        }
        let w = *width.get_or_insert(record.len());
        if record.len() != w {
            return Err(InputError::Ragged {
                file: file.into(),
                row: line,
                expected: w,
                got: record.len(),
            });
        }
        for (c, cell) in record.iter().enumerate() {
            let v: f32 = cell.parse().map_err(|_| InputError::NotANumber {
                file: file.into(),
                row: line,
                column: c + 1,
                value: cell.into(),
            })?;
            if !v.is_finite() {
                return Err(InputError::NonFinite {
                    file: file.into(),
                    row: line,
                    column: c + 1,
                    value: cell.into(),
                });
            }
            data.push(v);
        }
        rows += 1;
    }
    match width {
        Some(w) if rows > 0 => {
            let columns = match header {
                Some(names) if names.len() == w => Some(Columns {
                    names,
                    ordered: true,
                }),
                Some(names) => {
                    return Err(InputError::Ragged {
                        file: file.into(),
                        row: 1,
                        expected: w,
                        got: names.len(),
                    });
                }
                None => None,
            };
            Ok(InputArray {
                shape: vec![rows, w],
                data,
                columns,
            })
        }
        _ => Err(InputError::Empty { file: file.into() }),
    }
}

fn parse_json(bytes: &[u8], file: &str) -> Result<InputArray, InputError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| InputError::Malformed {
            file: file.into(),
            reason: format!("invalid JSON: {e}"),
        })?;
    match &value {
        serde_json::Value::Object(row) => return parse_json_objects(&[row], file),
        serde_json::Value::Array(items) if items.first().is_some_and(|f| f.is_object()) => {
            let mut rows = Vec::with_capacity(items.len());
            for (r, item) in items.iter().enumerate() {
                match item {
                    serde_json::Value::Object(o) => rows.push(o),
                    other => {
                        return Err(InputError::Malformed {
                            file: file.into(),
                            reason: format!(
                                "row {}: {} where the first row is an object of named values",
                                r + 1,
                                json_kind(other)
                            ),
                        });
                    }
                }
            }
            return parse_json_objects(&rows, file);
        }
        _ => {}
    }
    let mut shape = Vec::new();
    let mut probe = &value;
    while let serde_json::Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    if shape.is_empty() || shape.contains(&0) {
        return Err(InputError::Empty { file: file.into() });
    }
    if shape.len() == 1 {
        shape.insert(0, 1);
    }
    // Never trust the shape for capacity: it comes from the first element at each depth.
    let mut data = Vec::with_capacity(bytes.len() / 2);
    fn walk(
        v: &serde_json::Value,
        depth: usize,
        shape: &[usize],
        row: usize,
        file: &str,
        data: &mut Vec<f32>,
    ) -> Result<(), InputError> {
        let offset = shape.len() - depth;
        match v {
            serde_json::Value::Array(items) if depth > 0 => {
                if items.len() != shape[offset] {
                    return Err(InputError::Ragged {
                        file: file.into(),
                        row: row + 1,
                        expected: shape[offset],
                        got: items.len(),
                    });
                }
                for it in items {
                    walk(it, depth - 1, shape, row, file, data)?;
                }
                Ok(())
            }
            serde_json::Value::Number(n) if depth == 0 => {
                let f = n.as_f64().unwrap_or(f64::NAN) as f32;
                if !f.is_finite() {
                    return Err(InputError::NonFinite {
                        file: file.into(),
                        row: row + 1,
                        column: data.len() % shape.last().copied().unwrap_or(1) + 1,
                        value: n.to_string(),
                    });
                }
                data.push(f);
                Ok(())
            }
            other => Err(InputError::NotANumber {
                file: file.into(),
                row: row + 1,
                column: data.len() % shape.last().copied().unwrap_or(1) + 1,
                value: other.to_string(),
            }),
        }
    }
    let rows: Vec<&serde_json::Value> = match &value {
        serde_json::Value::Array(items)
            if shape.len() > 1 && items.first().is_some_and(|f| f.is_array()) =>
        {
            items.iter().collect()
        }
        v => vec![v],
    };
    for (r, row) in rows.iter().enumerate() {
        walk(row, shape.len() - 1, &shape, r, file, &mut data)?;
    }
    Ok(InputArray::new(shape, data))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Rows given as JSON objects (`{"name": value, ...}`): every row has the first row's keys,
/// each a finite number. Keys become the (unordered) column names.
fn parse_json_objects(
    rows: &[&serde_json::Map<String, serde_json::Value>],
    file: &str,
) -> Result<InputArray, InputError> {
    let Some(first) = rows.first().filter(|r| !r.is_empty()) else {
        return Err(InputError::Empty { file: file.into() });
    };
    let names: Vec<String> = first.keys().cloned().collect();
    let mut data = Vec::with_capacity(rows.len().saturating_mul(names.len()));
    for (r, row) in rows.iter().enumerate() {
        if let Some(extra) = row.keys().find(|k| !first.contains_key(*k)) {
            return Err(InputError::Columns {
                file: file.into(),
                reason: format!("row {} has {extra:?}, which the first row has not", r + 1),
            });
        }
        for (c, name) in names.iter().enumerate() {
            let cell = row.get(name).ok_or_else(|| InputError::Columns {
                file: file.into(),
                reason: format!("row {} has no {name:?}", r + 1),
            })?;
            let serde_json::Value::Number(n) = cell else {
                return Err(InputError::NotANumber {
                    file: file.into(),
                    row: r + 1,
                    column: c + 1,
                    value: format!("{name}: {cell}"),
                });
            };
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if !v.is_finite() {
                return Err(InputError::NonFinite {
                    file: file.into(),
                    row: r + 1,
                    column: c + 1,
                    value: format!("{name}: {n}"),
                });
            }
            data.push(v);
        }
    }
    Ok(InputArray {
        shape: vec![rows.len(), names.len()],
        data,
        columns: Some(Columns {
            names,
            ordered: false,
        }),
    })
}

/// Parses NumPy's `.npy` format (versions 1-3): little-endian `f4`, `f8`, `i1`-`i8`,
/// `u1`-`u8`, C order.
fn parse_npy(bytes: &[u8], file: &str) -> Result<InputArray, InputError> {
    let bad = |reason: String| InputError::Malformed {
        file: file.into(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (missing \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (header_len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad(format!(".npy version {major} is not supported"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or_else(|| bad("header is truncated".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        Some(rest.trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad("header has no 'descr'".into()))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad(
            "Fortran-order arrays are not supported; save with C order".into(),
        ));
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("header has no 'shape'".into()))?;
    let mut shape = Vec::new();
    for part in shape_text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        shape.push(
            part.parse::<usize>()
                .map_err(|_| bad(format!("bad shape entry {part:?}")))?,
        );
    }
    let body = &bytes[start + header_len..];
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape overflows".into()))?;
    let (size, conv): (usize, fn(&[u8]) -> f64) = match descr {
        "<f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        "<f8" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }),
        "|i1" => (1, |b| b[0] as i8 as f64),
        "|u1" => (1, |b| b[0] as f64),
        "<i2" => (2, |b| i16::from_le_bytes([b[0], b[1]]) as f64),
        "<u2" => (2, |b| u16::from_le_bytes([b[0], b[1]]) as f64),
        "<i4" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        "<u4" => (4, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        "<i8" => (8, |b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
        }),
        "<u8" => (8, |b| {
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
        }),
        other => {
            return Err(bad(format!(
                "element type {other:?} is not supported (use float32)"
            )));
        }
    };
    let needed = count
        .checked_mul(size)
        .ok_or_else(|| bad("shape overflows".into()))?;
    if body.len() < needed {
        return Err(bad(format!(
            "data is truncated: shape {shape:?} needs {needed} bytes, file has {}",
            body.len()
        )));
    }
    if count == 0 {
        return Err(InputError::Empty { file: file.into() });
    }
    let width = if shape.len() > 1 {
        shape[1..].iter().product::<usize>()
    } else {
        count
    };
    let mut data = Vec::with_capacity(count);
    for (i, chunk) in body[..needed].chunks_exact(size).enumerate() {
        let v = conv(chunk) as f32;
        if !v.is_finite() {
            return Err(InputError::NonFinite {
                file: file.into(),
                row: i / width + 1,
                column: i % width + 1,
                value: conv(chunk).to_string(),
            });
        }
        data.push(v);
    }
    if shape.len() <= 1 {
        shape = vec![1, count];
    }
    Ok(InputArray::new(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<InputArray, InputError> {
        parse_input(text.as_bytes(), InputFormat::Csv, "t.csv")
    }

    #[test]
    fn csv_with_and_without_header() {
        let a = csv("a,b\n1,2\n3,4.5\n").expect("parses");
        assert_eq!(
            a,
            InputArray {
                shape: vec![2, 2],
                data: vec![1.0, 2.0, 3.0, 4.5],
                columns: Some(Columns {
                    names: vec!["a".into(), "b".into()],
                    ordered: true
                }),
            }
        );
        assert_eq!(csv(" 1 , 2 \n\n3,4\n").expect("parses").shape, vec![2, 2]);
        assert_eq!(
            csv("x\n").unwrap_err(),
            InputError::Empty {
                file: "t.csv".into()
            }
        );
        assert!(matches!(
            csv("1,2\n3,inf\n"),
            Err(InputError::NonFinite {
                row: 2,
                column: 2,
                ..
            })
        ));
        assert!(matches!(
            csv("1,2\n3\n"),
            Err(InputError::Ragged {
                row: 2,
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            csv("1,2\n3,\"x\"\n"),
            Err(InputError::NotANumber {
                row: 2,
                column: 2,
                ..
            })
        ));
    }

    #[test]
    fn json_nesting_and_errors() {
        let j = |t: &str| parse_input(t.as_bytes(), InputFormat::Json, "t.json");
        assert_eq!(j("[[1, 2], [3, 4]]").expect("parses").shape, vec![2, 2]);
        assert_eq!(j("[1, 2, 3]").expect("parses").shape, vec![1, 3]);
        assert_eq!(
            j("[[[1], [2]], [[3], [4]]]").expect("parses").shape,
            vec![2, 2, 1]
        );
        assert!(matches!(
            j("[[1, 2], [3]]"),
            Err(InputError::Ragged { row: 2, .. })
        ));
        assert!(matches!(
            j("[[1, \"a\"]]"),
            Err(InputError::NotANumber { .. })
        ));
        assert!(matches!(j("[]"), Err(InputError::Empty { .. })));
        assert!(matches!(j("{}"), Err(InputError::Empty { .. })));
        assert!(matches!(
            j("[[1e999]]"),
            Err(InputError::NonFinite { .. }) | Err(InputError::Malformed { .. })
        ));
    }

    fn names(features: &[&str], target: Option<&str>) -> InputNames {
        InputNames {
            features: features.iter().map(|f| f.to_string()).collect(),
            target: target.map(str::to_string),
        }
    }

    fn arranged(
        array: &Result<InputArray, InputError>,
        names: Option<&InputNames>,
        target: Option<&str>,
    ) -> Result<(InputArray, Arranged), String> {
        arrange(array.as_ref().expect("parses").clone(), names, target, "f")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn json_objects_are_rows_of_named_values() {
        let j = |t: &str| parse_input(t.as_bytes(), InputFormat::Json, "t.json");
        let a = j(r#"[{"b": 2, "a": 1}, {"a": 3, "b": 4}]"#).expect("parses");
        let cols = a.columns.as_ref().expect("named");
        assert!(!cols.ordered);
        let by_name: Vec<(String, f32)> = cols.names.iter().cloned().zip(a.data).collect();
        assert_eq!(by_name[..2], [("a".into(), 1.0), ("b".into(), 2.0)]);
        assert_eq!(j(r#"{"a": 1, "b": 2}"#).expect("one row").shape, vec![1, 2]);
        let e = j(r#"[{"a": 1, "b": 2}, {"a": 3}]"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.json: row 2 has no \"b\"");
        let e = j(r#"[{"a": 1}, {"a": 3, "c": 1}]"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.json: row 2 has \"c\", which the first row has not");
        assert!(matches!(
            j(r#"[{"a": "x"}]"#),
            Err(InputError::NotANumber {
                row: 1,
                column: 1,
                ..
            })
        ));
        assert!(matches!(
            j(r#"[{"a": 1}, [2]]"#),
            Err(InputError::Malformed { .. })
        ));
    }

    #[test]
    fn named_columns_are_matched_to_the_model_in_any_order() {
        let model = names(&["x", "y", "z"], Some("label"));
        let reversed = csv("label,z,y,x\n0,3,2,1\n1,6,5,4\n");
        let (a, how) = arranged(&reversed, Some(&model), None).unwrap();
        assert_eq!(
            (a.shape.clone(), a.data.clone()),
            (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        assert_eq!(
            how.note().as_deref(),
            Some("dropped column \"label\" (the training target)")
        );
        assert!(how.by_name);
        let json = parse_input(br#"[{"z": 3, "x": 1, "y": 2}]"#, InputFormat::Json, "f");
        assert_eq!(
            arranged(&json, Some(&model), None).unwrap().0.data,
            [1.0, 2.0, 3.0]
        );

        assert_eq!(
            arranged(&csv("x,z\n1,3\n"), Some(&model), None).unwrap_err(),
            "f: missing feature \"y\"; the model takes \"x\", \"y\", \"z\""
        );
        assert_eq!(
            arranged(&csv("x,y,z,w\n1,2,3,4\n"), Some(&model), None).unwrap_err(),
            "f: column \"w\" is not a feature of the model; the model takes \"x\", \"y\", \"z\""
        );
        let no_target = names(&["x", "y", "z"], None);
        let e = arranged(&csv("x,y,z,label\n1,2,3,4\n"), Some(&no_target), None).unwrap_err();
        assert!(
            e.contains("\"label\" is not a feature") && e.contains("--target"),
            "{e}"
        );
        let (a, how) = arranged(
            &csv("x,y,z,label\n1,2,3,4\n"),
            Some(&no_target),
            Some("label"),
        )
        .unwrap();
        assert_eq!(
            (a.data, how.dropped),
            (vec![1.0, 2.0, 3.0], vec!["label".to_string()])
        );
        assert!(
            arranged(&csv("x,x,z\n1,2,3\n"), Some(&model), None)
                .unwrap_err()
                .contains("\"x\" appears twice")
        );
    }

    #[test]
    fn without_names_columns_stay_in_file_order() {
        // No header: positional, whatever the model records.
        let model = names(&["x", "y"], None);
        let (a, how) = arranged(&csv("2,1\n"), Some(&model), None).unwrap();
        assert_eq!((a.data, how), (vec![2.0, 1.0], Arranged::default()));
        // A header but a model without names: file order, the target dropped if named.
        let (a, _) = arranged(&csv("b,a,t\n2,1,0\n"), None, Some("t")).unwrap();
        assert_eq!(a.data, [2.0, 1.0]);
        assert!(
            arranged(&csv("2,1\n"), None, Some("t"))
                .unwrap_err()
                .contains("no header")
        );
        // Keys have no order: they need the model's names.
        let json = parse_input(br#"[{"a": 1}]"#, InputFormat::Json, "f");
        assert!(
            arranged(&json, None, None)
                .unwrap_err()
                .contains("does not record its feature names")
        );
    }

    #[test]
    fn feature_names_survive_commas_and_quotes() {
        let mut m = Metadata::default();
        let features: Vec<String> = ["plain", "with,comma", "with \"quote\""]
            .iter()
            .map(|f| f.to_string())
            .collect();
        m.set_feature_names(&features, "target");
        assert_eq!(m.feature_names(), Some(features.clone()));
        assert_eq!(m.target_name(), Some("target"));
        let names = InputNames::of(Some(&m), 3).expect("three names for three values");
        assert_eq!(names.features, features);
        assert_eq!(InputNames::of(Some(&m), 4), None);
        // Artifacts written before the target was recorded: names, no target.
        let mut old = Metadata::default();
        old.properties.insert("train.features".into(), "a,b".into());
        assert_eq!(InputNames::of(Some(&old), 2), Some(names_of(&["a", "b"])));
    }

    fn names_of(f: &[&str]) -> InputNames {
        names(f, None)
    }

    fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn npy_types_and_errors() {
        let p = |b: &[u8]| parse_input(b, InputFormat::Npy, "t.npy");
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            p(&npy("<f4", "(2, 2)", &f32s)).expect("parses"),
            InputArray::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
        );
        let i64s: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            p(&npy("<i8", "(2,)", &i64s)).expect("parses").data,
            vec![7.0, -1.0]
        );
        assert!(matches!(
            p(&npy("<f4", "(3, 2)", &f32s)),
            Err(InputError::Malformed { .. })
        ));
        assert!(matches!(
            p(&npy(">f4", "(1,)", &f32s)),
            Err(InputError::Malformed { .. })
        ));
        assert!(matches!(p(b"\x93NUMPY"), Err(InputError::Malformed { .. })));
        let nan: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(matches!(
            p(&npy("<f4", "(1, 2)", &nan)),
            Err(InputError::NonFinite {
                row: 1,
                column: 2,
                ..
            })
        ));
        assert!(matches!(
            p(&npy("<f4", "(99999999999, 99999999999)", &f32s)),
            Err(InputError::Malformed { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            for format in [InputFormat::Csv, InputFormat::Json, InputFormat::Npy] {
                let _ = parse_input(&bytes, format, "p");
            }
            let mut b = npy("<f4", "(2, 3)", &[]);
            b.extend_from_slice(&bytes);
            let _ = parse_input(&b, InputFormat::Npy, "p");
        }
    }
}
