//! Reading model inputs from files (CSV, JSON, `.npy`) and writing outputs.
//!
//! Every reader returns a row-major `f32` array with its shape; rows are samples. Bad input
//! is an [`InputError`] naming the file position at fault, never a panic.
//!
//! A CSV header or the keys of JSON objects name the columns; [`arrange`] matches them to
//! the feature names a model records ([`InputNames`]), in any order.
//!
//! # Layout
//! - this file: the error, the array read, the formats, and the CSV reader;
//! - `columns.rs`: matching named columns to a model's features ([`arrange`]);
//! - `json.rs`: nested JSON arrays streamed into an array (also the agent's request bodies);
//! - `npy.rs`: NumPy's `.npy`;
//! - `output.rs`: outputs as JSON ([`outputs_json`]).

use std::path::Path;

mod columns;
mod json;
mod npy;
mod output;

pub use columns::{Arranged, InputNames, arrange};
#[cfg(feature = "device")]
pub(crate) use json::NestedNumbers;
use json::parse_json;
use npy::parse_npy;
pub use output::outputs_json;

/// Why an input file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum InputError {
    /// The file holds no data rows.
    #[error("{file}: no data rows")]
    Empty {
        /// The source: the path as given, or the name passed to [`parse_input`].
        file: String,
    },
    /// A CSV cell or JSON element is not a number.
    #[error("{file}: row {row}, column {column}: {value:?} is not a number")]
    NotANumber {
        /// The source: the path as given, or the name passed to [`parse_input`].
        file: String,
        /// 1-based line / row number in the file.
        row: usize,
        /// 1-based column (the value's position within its row).
        column: usize,
        /// The offending text.
        value: String,
    },
    /// A value is NaN or infinite.
    #[error("{file}: row {row}, column {column}: value is {value}; inputs must be finite numbers")]
    NonFinite {
        /// The source: the path as given, or the name passed to [`parse_input`].
        file: String,
        /// 1-based line / row number in the file.
        row: usize,
        /// 1-based column (the value's position within its row).
        column: usize,
        /// The value as read.
        value: String,
    },
    /// Rows of different lengths.
    #[error("{file}: row {row} has {got} values, earlier rows have {expected}")]
    Ragged {
        /// The source: the path as given, or the name passed to [`parse_input`].
        file: String,
        /// 1-based row of the first row of another width.
        row: usize,
        /// Width of the first row.
        expected: usize,
        /// Width of this row.
        got: usize,
    },
    /// The input holds more numbers than allowed.
    #[error("{file}: more than {max_values} values")]
    TooLarge {
        /// The source: the path as given, or the name passed to [`parse_input`].
        file: String,
        /// The most values the reader accepts (the agent's request limit).
        max_values: usize,
    },
    /// The file is malformed in its own format.
    #[error("{file}: {reason}")]
    Malformed {
        /// The source: the path as given, or the name passed to [`parse_input`].
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("{file}: {reason}")]
    Io {
        /// The source: the path as given, or the name passed to [`parse_input`].
        file: String,
        /// The I/O error text.
        reason: String,
    },
    /// Named columns that do not match the model's features.
    #[error("{file}: {reason}")]
    Columns {
        /// The source: the path as given, or the name passed to [`parse_input`].
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
    /// Row-major values, `shape`'s product of them.
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

/// The formats [`read_input`] and [`parse_input`] read.
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
/// [`InputError::Io`] when the file cannot be read; otherwise as [`parse_input`].
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
/// [`InputError::Malformed`] for bytes that are not the format, and the variants naming
/// the row and column at fault (not a number, not finite, ragged rows, no rows).
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

#[cfg(test)]
mod tests;
