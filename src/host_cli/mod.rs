//! The `perch-host` commands as library functions (feature `host`), each returning a typed
//! result that [`render`] turns into text or `--json`:
//!
//! - [`spec`]: the training flags and the model spec they describe;
//! - [`train`](mod@train): training into the [`registry`](crate::registry);
//! - [`eval`](mod@eval): scoring a registered version on a CSV file, and the metrics every
//!   command reports;
//! - [`models`]: listing, showing, comparing, exporting, importing and converting;
//! - [`optimize`](mod@optimize): quantization and pruning into a new version;
//! - [`fleet`]: devices, pushes, alerts;
//! - [`serve`]: the sync server with the dashboard and the monitor beside it;
//! - [`lifecycle`]: gated rollouts and automatic retraining;
//! - [`demo`](mod@demo): the whole lifecycle on one machine;
//! - [`render`]: the text and JSON forms of the results;
//! - [`args`]: `perch-host`'s raw flags.
//!
//! The JSON forms are the machine-readable contract: `train` and `eval` give at least
//! `name`, `version`, `metrics` and, for `train`, `fit_seconds`.

pub mod args;
pub mod demo;
pub mod eval;
pub mod fleet;
pub mod lifecycle;
pub mod models;
pub mod optimize;
pub mod render;
pub mod serve;
pub mod spec;
pub mod train;

pub use eval::{EvalReport, eval};
pub use models::{VersionView, convert, diff, export, import, list, metrics_with_origin};
pub use spec::{MODEL_KINDS, TrainOptions, spec_from_options};
#[doc(inline)]
pub use train::train;
pub use train::{CANARY_TOLERANCE, TrainReport};

use crate::registry::Version;
use crate::train::data::Schema;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The training data's encoding `version` recorded (trained versions; imported ones have
/// none), as [`Schema`]'s serde form wrote it.
///
/// # Errors
/// A recorded schema of another shape.
pub fn recorded_schema(version: &Version) -> Result<Option<Schema>> {
    version
        .data_schema
        .as_ref()
        .map(|v| {
            Schema::deserialize(v).map_err(|e| {
                anyhow!(
                    "the data schema {}@{} recorded is damaged ({e}): {v}",
                    version.name,
                    version.number
                )
            })
        })
        .transpose()
}

/// A data file a version was trained or tested on, as the registry records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataFile {
    /// Absolute path.
    pub path: String,
    /// SHA-256 of its bytes at training, lower-case hex.
    pub sha256: String,
}

/// The data files a trained version records (`data_files` in the registry).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DataFiles {
    /// The training data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<DataFile>,
    /// The test data, when it was trained with `--test`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<DataFile>,
}

/// The data file a version recorded under `which` (`train` or `test`), checked to be
/// unchanged since.
///
/// # Errors
/// No record, a missing file, or a file whose SHA-256 differs from the recorded one.
pub fn recorded_data(version: &Version, which: &str) -> Result<PathBuf> {
    let files = match &version.data_files {
        Some(f) => DataFiles::deserialize(f).with_context(|| {
            format!(
                "the data files {}@{} recorded are damaged: {f}",
                version.name, version.number
            )
        })?,
        None => DataFiles::default(),
    };
    let entry = match which {
        "test" => files.test,
        _ => files.train,
    }
    .ok_or_else(|| {
        anyhow!(
            "{}@{} has no recorded {which} data (it was imported, or trained with {})",
            version.name,
            version.number,
            if which == "test" {
                "no --test"
            } else {
                "an older perch"
            }
        )
    })?;
    let path = PathBuf::from(entry.path);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading the {which} data {}@{} recorded ({})",
            version.name,
            version.number,
            path.display()
        )
    })?;
    if entry.sha256 != sha256_hex(&bytes) {
        bail!(
            "the {which} data of {}@{} ({}) changed since it was trained",
            version.name,
            version.number,
            path.display()
        );
    }
    Ok(path)
}

/// `text` with every character a registry name does not allow replaced by `_`.
pub(crate) fn name_chars(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The name an imported or converted model file gets without `--name`: its folder's name
/// when the file is called `model.onnx` (the usual export layout,
/// `…/sk_mlp_digits/model.onnx` → `sk_mlp_digits`), else the file's stem.
pub fn model_name_of_file(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let folder = (stem == "model")
        .then(|| {
            std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .parent()
                .and_then(Path::file_name)
                .map(|f| f.to_string_lossy().into_owned())
        })
        .flatten();
    let name = name_chars(folder.as_deref().unwrap_or(&stem));
    let name = name.trim_matches('.');
    if name.is_empty() {
        "imported".into()
    } else {
        name.to_string()
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    crate::util::to_hex(&sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        bytes,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ArtifactFormat;
    use crate::train::data::{ColumnEncoding, TargetEncoding};
    use serde_json::{Value, json};

    #[test]
    fn imported_files_are_named_after_their_folder_or_stem() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("sk_mlp_digits");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("model.onnx"), b"x").unwrap();
        assert_eq!(
            model_name_of_file(&folder.join("model.onnx")),
            "sk_mlp_digits"
        );
        assert_eq!(
            model_name_of_file(&folder.join("digits v2.onnx")),
            "digits_v2"
        );
        assert!(!model_name_of_file(Path::new("model.onnx")).is_empty());
    }

    /// A schema as registries already hold it (the text the hand-written writer of earlier
    /// versions stored): it must still read, and be written back the same.
    const STORED_SCHEMA: &str = r#"{"columns":[{"fill":2.5,"kind":"numeric","name":"size"},{"fill":null,"kind":"numeric","name":"empty"},{"categories":["blue","red"],"fill":"red","kind":"categorical","name":"color"}],"target":"kind","target_encoding":{"kind":"classes","labels":["3","7"],"numeric":[3,7]}}"#;

    #[test]
    fn stored_schemas_still_read_and_write_back_the_same() {
        let stored: Value = serde_json::from_str(STORED_SCHEMA).unwrap();
        let schema = Schema::deserialize(&stored).unwrap();
        assert_eq!(schema.columns.len(), 3);
        assert_eq!(
            schema.columns[0].encoding,
            ColumnEncoding::Numeric { fill: 2.5 }
        );
        assert!(matches!(
            schema.columns[1].encoding,
            ColumnEncoding::Numeric { fill } if fill.is_nan()
        ));
        assert_eq!(
            schema.columns[2].encoding,
            ColumnEncoding::Categorical {
                categories: vec!["blue".into(), "red".into()],
                fill: "red".into()
            }
        );
        assert_eq!(
            schema.target_encoding,
            TargetEncoding::Classes {
                labels: vec!["3".into(), "7".into()],
                numeric: Some(vec![3, 7])
            }
        );
        // The registry stores the JSON value's text: the same bytes as before.
        assert_eq!(
            serde_json::to_string(&serde_json::to_value(&schema).unwrap()).unwrap(),
            STORED_SCHEMA
        );
        let values = r#"{"columns":[],"target":"y","target_encoding":{"kind":"values"}}"#;
        let schema: Schema = serde_json::from_str(values).unwrap();
        assert_eq!(schema.target_encoding, TargetEncoding::Values);
        assert_eq!(
            serde_json::to_string(&serde_json::to_value(&schema).unwrap()).unwrap(),
            values
        );
        let old =
            r#"{"columns":[],"target":"y","target_encoding":{"kind":"classes","labels":["a"]}}"#;
        let schema: Schema = serde_json::from_str(old).unwrap();
        assert_eq!(
            schema.target_encoding,
            TargetEncoding::Classes {
                labels: vec!["a".into()],
                numeric: None
            }
        );
        assert!(Schema::deserialize(&json!({"columns": 3})).is_err());
    }

    #[test]
    fn damaged_schemas_name_the_version() {
        let mut version = Version {
            name: "iris".into(),
            number: 2,
            format: ArtifactFormat::Perch,
            artifact_sha256: String::new(),
            size_bytes: 0,
            params: json!({}),
            metrics: json!({}),
            fit_seconds: None,
            created_unix_s: 0,
            dataset: None,
            data_schema: None,
            parent: None,
            data_files: None,
            tags: Vec::new(),
            aliases: Vec::new(),
        };
        assert!(recorded_schema(&version).unwrap().is_none());
        version.data_schema = Some(json!({"columns": [{"name": "x", "kind": "ordinal"}]}));
        let e = recorded_schema(&version).unwrap_err().to_string();
        assert!(e.contains("iris@2"), "{e}");
    }
}
