//! CSV datasets: loading with a header, column encoding (numeric, one-hot categorical),
//! imputation of missing cells, class-label mapping, a fingerprint and per-feature baseline
//! statistics, and seeded shuffles and splits.
//!
//! A [`Dataset`] loaded from training data records its [`Schema`]: how each column was
//! encoded, what a missing cell becomes and how class labels map to indices. Test data is
//! loaded with [`Dataset::load_with_schema`] so it is encoded exactly like the training data.

use ndarray::{Array2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a dataset cannot be loaded or split. Rows are 1-based line numbers in the file (the
/// header is line 1); columns are header names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file cannot be read.
    #[error("reading {path:?}: {error}")]
    Io {
        /// The CSV file as given.
        path: PathBuf,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// The CSV is malformed (bad quoting, invalid UTF-8).
    #[error("{path:?} line {row}: {message}")]
    Csv {
        /// The CSV file as given.
        path: PathBuf,
        /// 1-based line of the offending record (the header is line 1).
        row: u64,
        /// What the CSV reader said.
        message: String,
    },
    /// No header, or a header and no data rows.
    #[error("{path:?} is empty: a header line and at least one data row are needed")]
    Empty {
        /// The CSV file as given.
        path: PathBuf,
    },
    /// A row with a different number of cells than the header.
    #[error("{path:?} line {row}: {got} cells, but the header has {expected} columns")]
    Ragged {
        /// The CSV file as given.
        path: PathBuf,
        /// 1-based line of the row (the header is line 1).
        row: u64,
        /// Columns in the header.
        expected: usize,
        /// Cells in the row.
        got: usize,
    },
    /// A cell in a numeric column that is not a number.
    #[error(
        "{path:?} line {row}, column {column:?}: {value:?} is not a number (the column is numeric; leave the cell empty or write NA for a missing value)"
    )]
    NonNumeric {
        /// The CSV file as given.
        path: PathBuf,
        /// 1-based line of the row (the header is line 1).
        row: u64,
        /// The column's header name.
        column: String,
        /// The cell's text as written.
        value: String,
    },
    /// The target column is not in the header.
    #[error("{path:?}: no target column {target:?}; the columns are {columns:?}")]
    TargetMissing {
        /// The CSV file as given.
        path: PathBuf,
        /// The target column that was asked for.
        target: String,
        /// The columns the header does have, in file order.
        columns: Vec<String>,
    },
    /// A target cell is empty or NA.
    #[error("{path:?} line {row}: the target column {column:?} is empty; every row needs a target")]
    MissingTarget {
        /// The CSV file as given.
        path: PathBuf,
        /// 1-based line of the row (the header is line 1).
        row: u64,
        /// The target column's header name.
        column: String,
    },
    /// A classification target with fewer than two classes.
    #[error(
        "{path:?}: the target column {column:?} has a single class {class:?}; classification needs at least two"
    )]
    SingleClass {
        /// The CSV file as given.
        path: PathBuf,
        /// The target column's header name.
        column: String,
        /// The only class.
        class: String,
    },
    /// A class label in test data that the training data did not have.
    #[error("{path:?} line {row}: class {class:?} was not in the training data (known: {known:?})")]
    UnknownClass {
        /// The test CSV file as given.
        path: PathBuf,
        /// 1-based line of the row (the header is line 1).
        row: u64,
        /// The label as written in the file.
        class: String,
        /// The labels the training data had, in class-index order.
        known: Vec<String>,
    },
    /// Test data whose columns differ from the schema's.
    #[error("{path:?}: column {column:?} of the training data is missing from this file")]
    ColumnMissing {
        /// The CSV file as given.
        path: PathBuf,
        /// The missing column.
        column: String,
    },
    /// A column in which every cell is missing, so nothing can be imputed.
    #[error("{path:?}: column {column:?} has no values at all")]
    AllMissing {
        /// The CSV file as given.
        path: PathBuf,
        /// The column's header name.
        column: String,
    },
    /// A split or fold request that leaves a part empty.
    #[error("cannot split {rows} rows {what}")]
    BadSplit {
        /// Rows in the dataset.
        rows: usize,
        /// What was asked, e.g. `into 5 folds` or `with test fraction 1`.
        what: String,
    },
}

/// What the target column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Class labels (integers or strings), mapped to `0..k`.
    Classification,
    /// Real values (any finite number).
    Regression,
}

/// How a feature column is turned into model inputs.
///
/// Stored in the registry as `{"kind": "numeric", "fill": …}` or `{"kind": "categorical",
/// "categories": […], "fill": …}`, inside the column's object.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ColumnEncoding {
    /// One input; a missing cell becomes `fill` (the training mean).
    Numeric {
        /// Imputed value. A non-finite fill is stored as `null` (JSON has no NaN) and reads
        /// back as NaN, as does a missing one.
        #[serde(default = "nan", deserialize_with = "fill_or_nan")]
        fill: f64,
    },
    /// One input per category (one-hot, in `categories` order); a missing cell becomes
    /// `fill` (the training mode). A category unseen in training encodes as all zeros.
    Categorical {
        /// Categories in the order of their inputs.
        categories: Vec<String>,
        /// Imputed for a missing cell: the training data's most frequent category.
        fill: String,
    },
}

fn nan() -> f64 {
    f64::NAN
}

fn fill_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One feature column of the source file and its encoding.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    /// The column's name in the CSV header.
    pub name: String,
    /// Encoding chosen on the training data.
    #[serde(flatten)]
    pub encoding: ColumnEncoding,
    /// Cells that were missing (empty or `NA`) in the file it was built from (not stored:
    /// it describes that file, not the encoding).
    #[serde(skip)]
    pub missing: usize,
}

/// How the target was read. Stored as `{"kind": "classes", "labels": […], "numeric": […|null]}`
/// or `{"kind": "values"}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetEncoding {
    /// Class labels in index order. `numeric` holds the labels as integers when every label
    /// is one (then they are sorted numerically), for an `ArgMax { labels }` layer.
    Classes {
        /// Label text per class index.
        labels: Vec<String>,
        /// The same labels as integers, when they all are.
        numeric: Option<Vec<i64>>,
    },
    /// A real-valued target, as read.
    Values,
}

/// Everything needed to encode another file the way the training file was encoded. The
/// registry keeps it with each trained version as JSON (`columns`, `target`,
/// `target_encoding`), written and read by this derive.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schema {
    /// Feature columns in file order (the target excluded).
    pub columns: Vec<Column>,
    /// Target column name.
    pub target: String,
    /// How the target is encoded: class labels by index, or real values.
    pub target_encoding: TargetEncoding,
}

impl Schema {
    /// Names of the encoded features, one per model input (`color=red` for one-hot inputs).
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for c in &self.columns {
            match &c.encoding {
                ColumnEncoding::Numeric { .. } => names.push(c.name.clone()),
                ColumnEncoding::Categorical { categories, .. } => {
                    names.extend(categories.iter().map(|k| format!("{}={k}", c.name)));
                }
            }
        }
        names
    }

    /// Number of classes for a classification target, else none.
    pub fn n_classes(&self) -> Option<usize> {
        match &self.target_encoding {
            TargetEncoding::Classes { labels, .. } => Some(labels.len()),
            TargetEncoding::Values => None,
        }
    }
}

/// Identity of the data a model was trained on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// SHA-256 of the file's bytes, lower-case hex.
    pub sha256: String,
    /// Data rows (header excluded).
    pub rows: usize,
    /// Columns in the header (target included).
    pub columns: usize,
}

/// Baseline statistics of one encoded feature, for drift detection.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    /// Encoded feature name, as [`Schema::feature_names`] gives it.
    pub name: String,
    /// Mean over the training rows.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Edges of 10 equal-frequency bins: the minimum, the 10%..90% quantiles, the maximum
    /// (11 values, linear interpolation between order statistics).
    pub bin_edges: Vec<f64>,
}

/// The target values of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Class indices in `0..k`.
    Classes(Vec<usize>),
    /// Real values, one per row.
    Values(Vec<f64>),
}

impl Target {
    fn select(&self, rows: &[usize]) -> Target {
        match self {
            Target::Classes(y) => Target::Classes(rows.iter().map(|&i| y[i]).collect()),
            Target::Values(y) => Target::Values(rows.iter().map(|&i| y[i]).collect()),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Target::Classes(y) => y.len(),
            Target::Values(y) => y.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The class indices, if this is a classification target.
    pub fn classes(&self) -> Option<&[usize]> {
        match self {
            Target::Classes(y) => Some(y),
            Target::Values(_) => None,
        }
    }

    /// The values, if this is a regression target.
    pub fn values(&self) -> Option<&[f64]> {
        match self {
            Target::Values(y) => Some(y),
            Target::Classes(_) => None,
        }
    }
}

/// Encoded features (rows × features, f64) and target, with the schema that produced them.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Encoded features, one row per sample.
    pub features: Array2<f64>,
    /// Target per row.
    pub target: Target,
    /// How the columns were encoded.
    pub schema: Schema,
    /// Fingerprint of the source file; `None` for derived subsets.
    pub fingerprint: Option<Fingerprint>,
}

fn is_missing(cell: &str) -> bool {
    let c = cell.trim();
    c.is_empty() || c.eq_ignore_ascii_case("na") || c.eq_ignore_ascii_case("nan")
}

struct RawCsv {
    header: Vec<String>,
    rows: Vec<(u64, Vec<String>)>,
    fingerprint: Fingerprint,
}

fn read_raw(path: &Path) -> Result<RawCsv, DataError> {
    let bytes = std::fs::read(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let sha256 = crate::util::to_hex(&Sha256::digest(&bytes));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let csv_err = |e: csv::Error| DataError::Csv {
        path: path.to_path_buf(),
        row: e.position().map_or(0, |p| p.line()),
        message: e.to_string(),
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if header.is_empty() || header.iter().all(String::is_empty) {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(|c| c.trim().is_empty()) {
            continue;
        }
        if record.len() != header.len() {
            return Err(DataError::Ragged {
                path: path.to_path_buf(),
                row: line,
                expected: header.len(),
                got: record.len(),
            });
        }
        rows.push((line, record.iter().map(|c| c.trim().to_string()).collect()));
    }
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let fingerprint = Fingerprint {
        sha256,
        rows: rows.len(),
        columns: header.len(),
    };
    Ok(RawCsv {
        header,
        rows,
        fingerprint,
    })
}

fn parse_number(path: &Path, row: u64, column: &str, cell: &str) -> Result<f64, DataError> {
    cell.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| DataError::NonNumeric {
            path: path.to_path_buf(),
            row,
            column: column.to_string(),
            value: cell.to_string(),
        })
}

fn most_frequent(counts: &BTreeMap<String, usize>) -> Option<String> {
    let mut best: Option<(&String, usize)> = None;
    for (k, &n) in counts {
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((k, n));
        }
    }
    best.map(|(k, _)| k.clone())
}

impl Dataset {
    /// Loads a CSV file with a header line, learning the schema from it: a column whose
    /// first present cell parses as a number is numeric (and every other present cell must
    /// too), any other column is categorical and one-hot encoded. Missing cells (empty,
    /// `NA`, `NaN`) take the column mean or most frequent category. Classification labels
    /// are sorted (numerically when all are integers) and numbered `0..k`.
    ///
    /// # Errors
    /// A [`DataError`] naming the file, line and column for unreadable files, ragged rows,
    /// non-numeric cells in numeric columns, a missing target column, empty target cells,
    /// empty files, and classification targets with a single class.
    pub fn load(path: impl AsRef<Path>, target: &str, task: Task) -> Result<Dataset, DataError> {
        let path = path.as_ref();
        let raw = read_raw(path)?;
        let t = target_index(path, &raw.header, target)?;
        let mut columns = Vec::new();
        for (j, name) in raw.header.iter().enumerate() {
            if j == t {
                continue;
            }
            let present = raw.rows.iter().filter(|(_, r)| !is_missing(&r[j]));
            let first = present.clone().next();
            let missing = raw.rows.len() - present.clone().count();
            let Some((_, first)) = first else {
                return Err(DataError::AllMissing {
                    path: path.to_path_buf(),
                    column: name.clone(),
                });
            };
            let encoding = if first[j].parse::<f64>().is_ok() {
                let mut sum = 0.0;
                let mut n = 0usize;
                for (line, r) in present {
                    sum += parse_number(path, *line, name, &r[j])?;
                    n += 1;
                }
                ColumnEncoding::Numeric {
                    fill: sum / n as f64,
                }
            } else {
                let mut counts = BTreeMap::new();
                for (_, r) in present {
                    *counts.entry(r[j].clone()).or_insert(0usize) += 1;
                }
                let fill = most_frequent(&counts).unwrap_or_default();
                ColumnEncoding::Categorical {
                    categories: counts.into_keys().collect(),
                    fill,
                }
            };
            columns.push(Column {
                name: name.clone(),
                encoding,
                missing,
            });
        }
        let target_encoding = match task {
            Task::Regression => TargetEncoding::Values,
            Task::Classification => {
                let mut labels: Vec<String> = Vec::new();
                for (line, r) in &raw.rows {
                    if is_missing(&r[t]) {
                        return Err(DataError::MissingTarget {
                            path: path.to_path_buf(),
                            row: *line,
                            column: target.to_string(),
                        });
                    }
                    labels.push(r[t].clone());
                }
                labels.sort();
                labels.dedup();
                let numeric: Option<Vec<i64>> =
                    labels.iter().map(|l| l.parse::<i64>().ok()).collect();
                let (labels, numeric) = match numeric {
                    Some(mut ints) => {
                        ints.sort_unstable();
                        ints.dedup();
                        (ints.iter().map(i64::to_string).collect(), Some(ints))
                    }
                    None => (labels, None),
                };
                if labels.len() < 2 {
                    return Err(DataError::SingleClass {
                        path: path.to_path_buf(),
                        column: target.to_string(),
                        class: labels.first().cloned().unwrap_or_default(),
                    });
                }
                TargetEncoding::Classes { labels, numeric }
            }
        };
        let schema = Schema {
            columns,
            target: target.to_string(),
            target_encoding,
        };
        encode(path, &raw, t, schema)
    }

    /// Loads a CSV file encoding it with a schema learned on training data (columns are
    /// matched by name, so their order may differ). Missing cells take the training fill
    /// values; the recorded `missing` counts are this file's.
    ///
    /// # Errors
    /// As [`Dataset::load`], plus [`DataError::ColumnMissing`] and
    /// [`DataError::UnknownClass`].
    pub fn load_with_schema(path: impl AsRef<Path>, schema: &Schema) -> Result<Dataset, DataError> {
        let path = path.as_ref();
        let raw = read_raw(path)?;
        let t = target_index(path, &raw.header, &schema.target)?;
        encode(path, &raw, t, schema.clone())
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.features.nrows()
    }

    /// Number of encoded features.
    pub fn n_features(&self) -> usize {
        self.features.ncols()
    }

    /// The features as f32 (what the engine takes).
    pub fn features_f32(&self) -> Array2<f32> {
        self.features.mapv(|v| v as f32)
    }

    /// Baseline statistics of every encoded feature.
    pub fn feature_stats(&self) -> Vec<FeatureStats> {
        let names = self.schema.feature_names();
        self.features
            .axis_iter(Axis(1))
            .zip(names)
            .map(|(col, name)| {
                let n = col.len().max(1) as f64;
                let mean = col.sum() / n;
                let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                let mut sorted: Vec<f64> = col.to_vec();
                sorted.sort_by(f64::total_cmp);
                let bin_edges = (0..=10)
                    .map(|q| quantile(&sorted, q as f64 / 10.0))
                    .collect();
                FeatureStats {
                    name,
                    mean,
                    std: var.sqrt(),
                    bin_edges,
                }
            })
            .collect()
    }

    /// The rows at `indices`, in that order (indices may repeat).
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            features: self.features.select(Axis(0), indices),
            target: self.target.select(indices),
            schema: self.schema.clone(),
            fingerprint: None,
        }
    }

    /// A seeded permutation of `0..n_rows()`; the same seed always gives the same order.
    pub fn permutation(&self, seed: u64) -> Vec<usize> {
        permutation(self.n_rows(), seed)
    }

    /// The rows in a seeded random order.
    pub fn shuffled(&self, seed: u64) -> Dataset {
        self.select(&self.permutation(seed))
    }

    /// Splits off `test_fraction` of the rows (rounded up) as a second dataset after a
    /// seeded shuffle: `(train, test)`.
    ///
    /// # Errors
    /// [`DataError::BadSplit`] when either part would be empty.
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        let n = self.n_rows();
        let n_test = (n as f64 * test_fraction).ceil() as usize;
        if !(0.0..1.0).contains(&test_fraction) || n_test == 0 || n_test >= n {
            return Err(DataError::BadSplit {
                rows: n,
                what: format!("with test fraction {test_fraction}"),
            });
        }
        let order = self.permutation(seed);
        Ok((self.select(&order[n_test..]), self.select(&order[..n_test])))
    }
}

/// A seeded permutation of `0..n` (ChaCha8, so stable across platforms and releases).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn target_index(path: &Path, header: &[String], target: &str) -> Result<usize, DataError> {
    header
        .iter()
        .position(|h| h == target)
        .ok_or_else(|| DataError::TargetMissing {
            path: path.to_path_buf(),
            target: target.to_string(),
            columns: header.to_vec(),
        })
}

fn encode(path: &Path, raw: &RawCsv, t: usize, mut schema: Schema) -> Result<Dataset, DataError> {
    let mut col_index = Vec::with_capacity(schema.columns.len());
    for c in &schema.columns {
        let j = raw
            .header
            .iter()
            .position(|h| *h == c.name)
            .ok_or_else(|| DataError::ColumnMissing {
                path: path.to_path_buf(),
                column: c.name.clone(),
            })?;
        col_index.push(j);
    }
    let width: usize = schema
        .columns
        .iter()
        .map(|c| match &c.encoding {
            ColumnEncoding::Numeric { .. } => 1,
            ColumnEncoding::Categorical { categories, .. } => categories.len(),
        })
        .sum();
    let n = raw.rows.len();
    let mut features = Array2::<f64>::zeros((n, width));
    let mut missing = vec![0usize; schema.columns.len()];
    for (i, (line, r)) in raw.rows.iter().enumerate() {
        let mut k = 0;
        for (ci, (c, &j)) in schema.columns.iter().zip(&col_index).enumerate() {
            let cell = r[j].as_str();
            let absent = is_missing(cell);
            missing[ci] += usize::from(absent);
            match &c.encoding {
                ColumnEncoding::Numeric { fill } => {
                    features[[i, k]] = if absent {
                        *fill
                    } else {
                        parse_number(path, *line, &c.name, cell)?
                    };
                    k += 1;
                }
                ColumnEncoding::Categorical { categories, fill } => {
                    let value = if absent { fill.as_str() } else { cell };
                    if let Some(p) = categories.iter().position(|x| x == value) {
                        features[[i, k + p]] = 1.0;
                    }
                    k += categories.len();
                }
            }
        }
    }
    for (c, m) in schema.columns.iter_mut().zip(missing) {
        c.missing = m;
    }
    let target = match &schema.target_encoding {
        TargetEncoding::Values => {
            let mut y = Vec::with_capacity(n);
            for (line, r) in &raw.rows {
                if is_missing(&r[t]) {
                    return Err(DataError::MissingTarget {
                        path: path.to_path_buf(),
                        row: *line,
                        column: schema.target.clone(),
                    });
                }
                y.push(parse_number(path, *line, &schema.target, &r[t])?);
            }
            Target::Values(y)
        }
        TargetEncoding::Classes { labels, numeric } => {
            let mut y = Vec::with_capacity(n);
            for (line, r) in &raw.rows {
                let cell = r[t].as_str();
                if is_missing(cell) {
                    return Err(DataError::MissingTarget {
                        path: path.to_path_buf(),
                        row: *line,
                        column: schema.target.clone(),
                    });
                }
                let index = match numeric {
                    Some(ints) => cell
                        .parse::<i64>()
                        .ok()
                        .and_then(|v| ints.iter().position(|&x| x == v)),
                    None => labels.iter().position(|l| l == cell),
                };
                y.push(index.ok_or_else(|| DataError::UnknownClass {
                    path: path.to_path_buf(),
                    row: *line,
                    class: cell.to_string(),
                    known: labels.clone(),
                })?);
            }
            Target::Classes(y)
        }
    };
    Ok(Dataset {
        features,
        target,
        schema,
        fingerprint: Some(raw.fingerprint.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn csv(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn one_hot_imputation_and_labels() {
        let f = csv("a,color,target\n1,red,yes\n,blue,no\n3,,yes\nNA,red,no\n");
        let d = Dataset::load(f.path(), "target", Task::Classification).unwrap();
        assert_eq!(d.schema.feature_names(), ["a", "color=blue", "color=red"]);
        assert_eq!(
            d.schema.columns[0].encoding,
            ColumnEncoding::Numeric { fill: 2.0 }
        );
        assert_eq!(d.schema.columns[0].missing, 2);
        assert_eq!(
            d.features,
            ndarray::array![
                [1.0, 0.0, 1.0],
                [2.0, 1.0, 0.0],
                [3.0, 0.0, 1.0],
                [2.0, 0.0, 1.0]
            ]
        );
        assert_eq!(d.target, Target::Classes(vec![1, 0, 1, 0]));
        let fp = d.fingerprint.as_ref().unwrap();
        assert_eq!((fp.rows, fp.columns, fp.sha256.len()), (4, 3, 64));

        let test = csv("color,a,target\ngreen,5,no\n");
        let t = Dataset::load_with_schema(test.path(), &d.schema).unwrap();
        assert_eq!(t.features, ndarray::array![[5.0, 0.0, 0.0]]);
        assert_eq!(t.target, Target::Classes(vec![0]));
    }

    #[test]
    fn integer_labels_sort_numerically() {
        let f = csv("x,target\n1,10\n2,9\n3,10\n");
        let d = Dataset::load(f.path(), "target", Task::Classification).unwrap();
        assert_eq!(
            d.schema.target_encoding,
            TargetEncoding::Classes {
                labels: vec!["9".into(), "10".into()],
                numeric: Some(vec![9, 10])
            }
        );
        assert_eq!(d.target, Target::Classes(vec![1, 0, 1]));
    }

    #[test]
    fn errors_name_file_row_and_column() {
        let f = csv("x,y,target\n1,2,0\n1,oops,1\n");
        let e = Dataset::load(f.path(), "target", Task::Classification).unwrap_err();
        assert!(
            matches!(&e, DataError::NonNumeric { row: 3, column, value, .. } if column == "y" && value == "oops"),
            "{e}"
        );
        let f = csv("x,y,target\n1,2,0\n1,2\n");
        let e = Dataset::load(f.path(), "target", Task::Classification).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Ragged {
                    row: 3,
                    expected: 3,
                    got: 2,
                    ..
                }
            ),
            "{e}"
        );
        let f = csv("");
        let e = Dataset::load(f.path(), "target", Task::Regression).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        let f = csv("x,y\n1,2\n");
        let e = Dataset::load(f.path(), "target", Task::Regression).unwrap_err();
        assert!(matches!(e, DataError::TargetMissing { .. }), "{e}");
        let f = csv("x,target\n1,a\n2,a\n");
        let e = Dataset::load(f.path(), "target", Task::Classification).unwrap_err();
        assert!(
            matches!(&e, DataError::SingleClass { class, .. } if class == "a"),
            "{e}"
        );
        assert!(e.to_string().contains("single class"));
    }

    #[test]
    fn stats_and_seeded_split() {
        let text: String = std::iter::once("x,target\n".to_string())
            .chain((0..=100).map(|i| format!("{i},{}\n", i % 2)))
            .collect();
        let f = csv(&text);
        let d = Dataset::load(f.path(), "target", Task::Regression).unwrap();
        let s = &d.feature_stats()[0];
        assert_eq!(s.mean, 50.0);
        assert_eq!(
            s.bin_edges,
            (0..=10).map(|q| q as f64 * 10.0).collect::<Vec<_>>()
        );
        let (a, b) = d.split(0.25, 7).unwrap();
        let (a2, b2) = d.split(0.25, 7).unwrap();
        assert_eq!((a.n_rows(), b.n_rows()), (75, 26));
        assert_eq!(a.features, a2.features);
        assert_eq!(b.target, b2.target);
        assert_ne!(d.permutation(1), d.permutation(2));
        assert!(d.split(1.0, 0).is_err());
    }
}
