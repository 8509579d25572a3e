//! What the registry's callers name and get back: references to a version (`NAME`,
//! `NAME@3`, `NAME@alias`) and their parsing, artifact formats, the payload a version is
//! registered with, and a stored version's record.

use super::RegistryError;

/// Which version of a name a reference means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The highest number the name has.
    Latest,
    /// A version number (`NAME@3`); numbers start at 1 per name.
    Number(u32),
    /// An alias such as `production`.
    Alias(String),
}

/// `NAME`, `NAME@3` or `NAME@ALIAS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    /// The model's name.
    pub name: String,
    /// Which of the name's versions: latest, a number or an alias.
    pub selector: Selector,
}

impl std::str::FromStr for ModelRef {
    type Err = RegistryError;

    fn from_str(text: &str) -> Result<ModelRef, RegistryError> {
        let bad = |reason: &str| RegistryError::BadReference {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let (name, selector) = match text.split_once('@') {
            None => (text, Selector::Latest),
            Some((name, "")) => {
                return Err(bad(&format!("nothing after '@' in {name:?}@")));
            }
            Some((name, sel)) => match sel.parse::<u32>() {
                Ok(0) => return Err(bad("versions are numbered from 1")),
                Ok(n) => (name, Selector::Number(n)),
                Err(_) if sel.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err(bad("version number too large"));
                }
                Err(_) => {
                    check_name("alias", sel)
                        .map_err(|_| bad("an alias is letters, digits, '-' or '_'"))?;
                    (name, Selector::Alias(sel.to_string()))
                }
            },
        };
        check_name("model name", name).map_err(|e| match e {
            RegistryError::BadName { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(ModelRef {
            name: name.to_string(),
            selector,
        })
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            Selector::Latest => write!(f, "{}", self.name),
            Selector::Number(n) => write!(f, "{}@{n}", self.name),
            Selector::Alias(a) => write!(f, "{}@{a}", self.name),
        }
    }
}

pub(super) fn check_name(what: &'static str, value: &str) -> Result<(), RegistryError> {
    let bad = |reason| RegistryError::BadName {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() || value.len() > 128 {
        return Err(bad("it must have 1 to 128 characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad("use letters, digits, '-', '_' or '.'"));
    }
    if what == "alias" && value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "an alias cannot be a number (it would read as a version)",
        ));
    }
    Ok(())
}

/// How a version's artifact is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactFormat {
    /// A native `.perch` artifact.
    Perch,
    /// ONNX bytes that could not be converted to the native IR.
    Onnx,
}

impl ArtifactFormat {
    /// `perch` or `onnx`; also the file extension in the store.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactFormat::Perch => "perch",
            ArtifactFormat::Onnx => "onnx",
        }
    }

    pub(super) fn from_name(name: &str) -> ArtifactFormat {
        if name == "onnx" {
            ArtifactFormat::Onnx
        } else {
            ArtifactFormat::Perch
        }
    }
}

/// Identity and baseline statistics of the data a version was trained on.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetInfo {
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
    /// Data rows in the file (the header not counted).
    pub rows: u64,
    /// Columns (target included).
    pub columns: u64,
    /// Per-feature statistics (mean, std, quantile bin edges) as JSON.
    pub feature_stats: serde_json::Value,
}

/// The model a new version stores.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A native model; the registry sets its metadata name and version and encodes it.
    Native(Box<crate::graph::Model>),
    /// ONNX bytes kept as they are.
    Onnx(Vec<u8>),
}

/// What [`Registry::register`](super::Registry::register) records besides the model.
#[derive(Clone, Debug, Default)]
pub struct VersionInfo {
    /// Hyper-parameters (JSON object).
    pub params: serde_json::Value,
    /// Metrics (JSON object, lower snake case names).
    pub metrics: serde_json::Value,
    /// Wall time of the fit.
    pub fit_seconds: Option<f64>,
    /// The data it was trained on (fingerprint and feature statistics), used as the drift baseline.
    pub dataset: Option<DatasetInfo>,
    /// How to encode data for this model (opaque JSON the trainer writes and reads).
    pub data_schema: Option<serde_json::Value>,
    /// The version this one was made from.
    pub parent: Option<ModelRef>,
    /// Where the training and test data came from: `{"train": {"path", "sha256"}, "test":
    /// {...}}` (opaque JSON; `perch-host optimize` reads it to score and fine-tune).
    pub data_files: Option<serde_json::Value>,
}

/// One stored version of a model, as [`Registry::resolve`](super::Registry::resolve) and [`Registry::list`](super::Registry::list) give it.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// The model's name.
    pub name: String,
    /// Number, from 1 per name.
    pub number: u32,
    /// How the artifact is stored: a native `.perch` file or ONNX bytes.
    pub format: ArtifactFormat,
    /// SHA-256 of the artifact file, lower-case hex.
    pub artifact_sha256: String,
    /// Size of the artifact file in bytes.
    pub size_bytes: u64,
    /// Hyper-parameters as given at registration (JSON object, empty if none).
    pub params: serde_json::Value,
    /// Metrics as given at registration (JSON object, lower snake case names, empty if none).
    pub metrics: serde_json::Value,
    /// Wall time of the fit in seconds; `None` for imported models.
    pub fit_seconds: Option<f64>,
    /// Registration time (Unix seconds).
    pub created_unix_s: i64,
    /// The data it was trained on; `None` for imported models.
    pub dataset: Option<DatasetInfo>,
    /// How to encode data for it, as [`VersionInfo::data_schema`] gave it (opaque JSON).
    pub data_schema: Option<serde_json::Value>,
    /// Parent version as `NAME@N`, if any and still present.
    pub parent: Option<String>,
    /// Training and test data files (see [`VersionInfo::data_files`]).
    pub data_files: Option<serde_json::Value>,
    /// Tags, sorted and unique.
    pub tags: Vec<String>,
    /// Aliases pointing here, sorted.
    pub aliases: Vec<String>,
}

impl Version {
    /// Which data the version's `metrics` were measured on: `"test"` (held-out data) or
    /// `"train"` (the training data, when it was trained without `--test`); `None` when it
    /// has no metrics. Read from `metrics.evaluated_on`; versions registered before that
    /// field existed are judged by their training-set figures (`train_*`) and recorded
    /// test file.
    pub fn metrics_evaluated_on(&self) -> Option<&str> {
        let metrics = self.metrics.as_object().filter(|m| !m.is_empty())?;
        if let Some(on) = metrics.get("evaluated_on").and_then(|v| v.as_str()) {
            return Some(on);
        }
        let has_test_file = self
            .data_files
            .as_ref()
            .is_some_and(|f| f.get("test").is_some());
        let train_figures = metrics.keys().any(|k| k.starts_with("train_"));
        Some(if train_figures && !has_test_file {
            "train"
        } else {
            "test"
        })
    }
}
