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
    /// The input holds more numbers than allowed.
    #[error("{file}: more than {max_values} values")]
    TooLarge {
        /// File name.
        file: String,
        /// The limit.
        max_values: usize,
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
    let mut nested = NestedNumbers::new(file, usize::MAX);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed =
        serde::de::DeserializeSeed::deserialize(nested.seed(), &mut de).and_then(|()| de.end());
    nested.finish(parsed)
}

/// Nesting deeper than this is refused (a sample is at most a few axes).
const MAX_JSON_DEPTH: usize = 16;

/// Streams nested JSON arrays of numbers (`[[…], …]`, or one flat array for a single
/// sample) into a row-major array as they are parsed: no JSON tree is built, so memory is
/// four bytes a number, and parsing stops at the first number beyond `max_values`. Every
/// array at one depth must have the length of the first (a rectangular array).
pub(crate) struct NestedNumbers {
    file: String,
    max_values: usize,
    /// Length of the arrays at each depth, once the first of them ended.
    shape: Vec<Option<usize>>,
    /// Depth of the numbers, once the first was seen.
    leaf_depth: Option<usize>,
    data: Vec<f32>,
    /// Index of the current element of the outermost array.
    row: usize,
    failure: Option<InputError>,
    /// Whether any value was read (something other than a top-level array is "no data").
    started: bool,
    /// Column names, when the rows are objects of named values (the first row's keys).
    names: Option<Vec<String>>,
    /// Which columns the current object row has given (reused from row to row).
    seen: Vec<bool>,
}

impl NestedNumbers {
    pub(crate) fn new(file: &str, max_values: usize) -> NestedNumbers {
        NestedNumbers {
            file: file.to_string(),
            max_values,
            shape: Vec::new(),
            leaf_depth: None,
            data: Vec::new(),
            row: 0,
            failure: None,
            started: false,
            names: None,
            seen: Vec::new(),
        }
    }

    /// The seed that reads one value (the outermost array) into `self`.
    pub(crate) fn seed(&mut self) -> NestedLevel<'_> {
        NestedLevel {
            state: self,
            depth: 0,
        }
    }

    /// The array read, or why not: the first [`InputError`] met, else the parser's error
    /// (`parsed`) as malformed JSON.
    pub(crate) fn finish(
        self,
        parsed: Result<(), serde_json::Error>,
    ) -> Result<InputArray, InputError> {
        self.finish_as(parsed, false)
    }

    /// As [`NestedNumbers::finish`], for one sample: the shape read gets a batch axis of 1.
    #[cfg(feature = "device")]
    pub(crate) fn finish_one(
        self,
        parsed: Result<(), serde_json::Error>,
    ) -> Result<InputArray, InputError> {
        self.finish_as(parsed, true)
    }

    fn finish_as(
        self,
        parsed: Result<(), serde_json::Error>,
        one_sample: bool,
    ) -> Result<InputArray, InputError> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        if let Err(e) = parsed {
            return Err(InputError::Malformed {
                file: self.file,
                reason: format!("invalid JSON: {e}"),
            });
        }
        let mut shape: Vec<usize> = match self.shape.iter().copied().collect::<Option<_>>() {
            Some(s) => s,
            None => return Err(InputError::Empty { file: self.file }),
        };
        if shape.is_empty() || shape.contains(&0) || self.data.is_empty() {
            return Err(InputError::Empty { file: self.file });
        }
        if shape.len() == 1 || one_sample {
            shape.insert(0, 1);
        }
        Ok(InputArray {
            shape,
            data: self.data,
            columns: self.names.map(|names| Columns {
                names,
                ordered: false,
            }),
        })
    }

    fn fail<E: serde::de::Error>(&mut self, e: InputError) -> E {
        let text = e.to_string();
        self.failure.get_or_insert(e);
        E::custom(text)
    }

    fn column(&self) -> usize {
        let width: usize = self
            .shape
            .iter()
            .skip(1)
            .map(|d| d.unwrap_or(usize::MAX))
            .fold(1usize, usize::saturating_mul);
        self.data.len() % width.max(1) + 1
    }

    fn number<E: serde::de::Error>(
        &mut self,
        depth: usize,
        value: f64,
        text: &str,
    ) -> Result<(), E> {
        if depth == 0 {
            return Err(self.fail(InputError::Empty {
                file: self.file.clone(),
            }));
        }
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(self.fail(InputError::Malformed {
                    file: self.file.clone(),
                    reason: format!(
                        "row {}: a number {text} where the first row has {}",
                        self.row + 1,
                        if d > depth { "an array" } else { "a number" }
                    ),
                }));
            }
            Some(_) => {}
        }
        let v = value as f32;
        if !v.is_finite() {
            let column = self.column();
            return Err(self.fail(InputError::NonFinite {
                file: self.file.clone(),
                row: self.row + 1,
                column,
                value: text.to_string(),
            }));
        }
        if self.data.len() >= self.max_values {
            return Err(self.fail(InputError::TooLarge {
                file: self.file.clone(),
                max_values: self.max_values,
            }));
        }
        self.data.push(v);
        Ok(())
    }
}

/// One depth of [`NestedNumbers`].
pub(crate) struct NestedLevel<'a> {
    state: &'a mut NestedNumbers,
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for NestedLevel<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NestedLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number or an array of numbers")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.state.number(self.depth, v, &v.to_string())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.state.number(self.depth, v as f64, &v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.state.number(self.depth, v as f64, &v.to_string())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let state = self.state;
        state.started = true;
        let objects = state.names.is_some() && depth >= 1;
        if depth >= MAX_JSON_DEPTH || objects || state.leaf_depth.is_some_and(|l| depth >= l) {
            let reason = if depth >= MAX_JSON_DEPTH {
                format!("arrays nested deeper than {MAX_JSON_DEPTH}")
            } else if objects {
                format!(
                    "row {}: an array where the first row is an object of named values",
                    state.row + 1
                )
            } else {
                format!(
                    "row {}: an array where the first row has a number",
                    state.row + 1
                )
            };
            return Err(state.fail(InputError::Malformed {
                file: state.file.clone(),
                reason,
            }));
        }
        let mut n = 0usize;
        loop {
            if depth == 0 {
                state.row = n;
            }
            let level = NestedLevel {
                state: &mut *state,
                depth: depth + 1,
            };
            if seq.next_element_seed(level)?.is_none() {
                break;
            }
            n += 1;
        }
        if state.shape.len() <= depth {
            state.shape.resize(depth + 1, None);
        }
        match state.shape[depth] {
            None => state.shape[depth] = Some(n),
            Some(expected) if expected != n => {
                return Err(state.fail(InputError::Ragged {
                    file: state.file.clone(),
                    row: state.row + 1,
                    expected,
                    got: n,
                }));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// An object is one row of named values (`{"name": value, ...}`): the sample itself at
    /// depth 0, or a row of the outer array at depth 1. Every row has the first row's keys,
    /// in any order; each value is a finite number.
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let state = self.state;
        state.started = true;
        let rows_are_objects = state.names.is_some() || state.leaf_depth.is_none();
        if depth > 1 || !rows_are_objects || state.leaf_depth.is_some_and(|l| l != depth + 1) {
            let reason = format!(
                "row {}: an object of named values where the first row has {}",
                state.row + 1,
                if depth > 1 {
                    "numbers (objects are rows, not values)"
                } else {
                    "an array of numbers"
                }
            );
            return Err(state.fail(InputError::Malformed {
                file: state.file.clone(),
                reason,
            }));
        }
        state.leaf_depth = Some(depth + 1);
        let first = state.names.is_none();
        let mut names = state.names.take().unwrap_or_default();
        let start = state.data.len();
        if !first {
            if state.max_values - start.min(state.max_values) < names.len() {
                state.names = Some(names);
                return Err(state.fail(InputError::TooLarge {
                    file: state.file.clone(),
                    max_values: state.max_values,
                }));
            }
            state.data.resize(start + names.len(), 0.0);
            state.seen.clear();
            state.seen.resize(names.len(), false);
        }
        let row = state.row + 1;
        let result = (|| {
            while let Some(key) = map.next_key::<std::borrow::Cow<'_, str>>()? {
                let value: serde_json::Value = map.next_value()?;
                let column = if first {
                    if names.iter().any(|n| n == key.as_ref()) {
                        return Err(state.fail(InputError::Columns {
                            file: state.file.clone(),
                            reason: format!("row {row} names {key:?} twice"),
                        }));
                    }
                    names.push(key.into_owned());
                    names.len() - 1
                } else {
                    match names.iter().position(|n| n == key.as_ref()) {
                        Some(c) if !state.seen[c] => c,
                        Some(_) => {
                            return Err(state.fail(InputError::Columns {
                                file: state.file.clone(),
                                reason: format!("row {row} names {key:?} twice"),
                            }));
                        }
                        None => {
                            return Err(state.fail(InputError::Columns {
                                file: state.file.clone(),
                                reason: format!(
                                    "row {row} has {key:?}, which the first row has not"
                                ),
                            }));
                        }
                    }
                };
                let name = &names[column];
                let serde_json::Value::Number(n) = &value else {
                    return Err(state.fail(InputError::NotANumber {
                        file: state.file.clone(),
                        row,
                        column: column + 1,
                        value: format!("{name}: {value}"),
                    }));
                };
                let v = n.as_f64().unwrap_or(f64::NAN) as f32;
                if !v.is_finite() {
                    return Err(state.fail(InputError::NonFinite {
                        file: state.file.clone(),
                        row,
                        column: column + 1,
                        value: format!("{name}: {n}"),
                    }));
                }
                if first {
                    if state.data.len() >= state.max_values {
                        return Err(state.fail(InputError::TooLarge {
                            file: state.file.clone(),
                            max_values: state.max_values,
                        }));
                    }
                    state.data.push(v);
                } else {
                    state.data[start + column] = v;
                    state.seen[column] = true;
                }
            }
            if first && names.is_empty() {
                return Err(state.fail(InputError::Empty {
                    file: state.file.clone(),
                }));
            }
            if let Some(missing) = (!first)
                .then(|| state.seen.iter().position(|s| !s))
                .flatten()
            {
                return Err(state.fail(InputError::Columns {
                    file: state.file.clone(),
                    reason: format!("row {row} has no {:?}", names[missing]),
                }));
            }
            Ok(())
        })();
        if state.shape.len() <= depth {
            state.shape.resize(depth + 1, None);
        }
        state.shape[depth] = Some(names.len());
        state.names = Some(names);
        result
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        Err(self.not_a_number(&format!("{v:?}")))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        Err(self.not_a_number(&v.to_string()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(self.not_a_number("null"))
    }
}

impl NestedLevel<'_> {
    fn not_a_number<E: serde::de::Error>(self, what: &str) -> E {
        let state = self.state;
        if self.depth == 0 {
            return state.fail(InputError::Empty {
                file: state.file.clone(),
            });
        }
        let column = state.column();
        state.fail(InputError::NotANumber {
            file: state.file.clone(),
            row: state.row + 1,
            column,
            value: what.to_string(),
        })
    }
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

/// One output's values as nested JSON arrays of its shape.
fn nested(shape: &[usize], values: &crate::runtime::OutputValues) -> serde_json::Value {
    use crate::runtime::OutputValues;
    use serde_json::{Value, json};
    fn build<T: Copy>(shape: &[usize], data: &[T], f: &dyn Fn(T) -> Value) -> Value {
        match shape.split_first() {
            None => data.first().map_or(Value::Null, |&v| f(v)),
            Some((&n, rest)) => {
                let stride: usize = rest.iter().product();
                Value::Array(
                    (0..n)
                        .map(|i| build(rest, &data[i * stride..(i + 1) * stride], f))
                        .collect(),
                )
            }
        }
    }
    match values {
        // Through f32's shortest decimal form, so JSON shows 0.1 rather than 0.10000000149011612.
        OutputValues::F32(v) => build(shape, v, &|x: f32| {
            json!(x.to_string().parse::<f64>().unwrap_or(f64::NAN))
        }),
        OutputValues::I64(v) => build(shape, v, &|x: i64| json!(x)),
    }
}

/// Outputs as JSON, by name: nested arrays of the outputs' shapes (what `perch run
/// --format json` prints under `outputs`, and the agent's `POST /predict` answers).
pub fn outputs_json(
    outputs: &[crate::runtime::Output],
) -> serde_json::Map<String, serde_json::Value> {
    outputs
        .iter()
        .map(|o| (o.name.clone(), nested(&o.shape, &o.values)))
        .collect()
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
        // Each row's values are in the order of `names`, whatever order its keys came in.
        let rows: Vec<Vec<(String, f32)>> = a
            .data
            .chunks(2)
            .map(|row| {
                let mut r: Vec<_> = cols.names.iter().cloned().zip(row.to_vec()).collect();
                r.sort_by(|x, y| x.0.cmp(&y.0));
                r
            })
            .collect();
        assert_eq!(rows[0], [("a".into(), 1.0), ("b".into(), 2.0)]);
        assert_eq!(rows[1], [("a".into(), 3.0), ("b".into(), 4.0)]);
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
