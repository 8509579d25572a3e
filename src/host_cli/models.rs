//! `perch-host models list | show | diff | export` and `perch-host import`: the registry's
//! versions as typed results.

use super::render::{self, Align, Render, Table};
use super::{model_name_of_file, sha256_hex};
use crate::registry::{ArtifactFormat, ModelRef, Payload, Registry, Version, VersionInfo};
use crate::runtime::{self, EngineChoice};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// The data a version was trained on, as `models show` gives it.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetView {
    /// SHA-256 of the training file, lower-case hex.
    pub sha256: String,
    /// Its data rows.
    pub rows: u64,
    /// Its columns, the target included.
    pub columns: u64,
    /// Per-feature mean, standard deviation and bin edges (the registry's JSON).
    pub feature_stats: Value,
}

/// One version as `models show --json` gives it: everything the registry keeps but the data
/// schema. `M` is the metrics' form (the registry's JSON document, or an optimize run's
/// figures) and `P` the parent's (its reference, or its figures).
#[derive(Clone, Debug, Serialize)]
pub struct VersionView<M = Value, P = Option<String>> {
    /// Model name.
    pub name: String,
    /// Version number, from 1 per name.
    pub version: u32,
    /// `NAME@VERSION`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// `perch` or `onnx`.
    pub format: &'static str,
    /// SHA-256 of the artifact, lower-case hex.
    pub artifact_sha256: String,
    /// Artifact size.
    pub size_bytes: u64,
    /// Hyper-parameters and recipes (the registry's JSON document).
    pub params: Value,
    /// Metrics, with `evaluated_on` saying which data they were measured on.
    pub metrics: M,
    /// Wall time of the fit, for trained versions.
    pub fit_seconds: Option<f64>,
    /// Registration time, Unix seconds.
    pub created_unix_s: i64,
    /// Registration time as a UTC date.
    pub created: String,
    /// The training data, for trained versions.
    pub dataset: Option<DatasetView>,
    /// The version this one was made from.
    pub parent: P,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Aliases pointing here, sorted.
    pub aliases: Vec<String>,
}

impl VersionView {
    /// The view of `v`.
    pub fn of(v: &Version) -> Self {
        VersionView {
            name: v.name.clone(),
            version: v.number,
            reference: format!("{}@{}", v.name, v.number),
            format: v.format.name(),
            artifact_sha256: v.artifact_sha256.clone(),
            size_bytes: v.size_bytes,
            params: v.params.clone(),
            metrics: metrics_with_origin(v),
            fit_seconds: v.fit_seconds,
            created_unix_s: v.created_unix_s,
            created: crate::cli::utc_time(v.created_unix_s),
            dataset: v.dataset.as_ref().map(|d| DatasetView {
                sha256: d.sha256.clone(),
                rows: d.rows,
                columns: d.columns,
                feature_stats: d.feature_stats.clone(),
            }),
            parent: v.parent.clone(),
            tags: v.tags.clone(),
            aliases: v.aliases.clone(),
        }
    }

    /// The same version with other metrics and parent (an optimize run's figures).
    pub fn with<M, P>(self, metrics: M, parent: P) -> VersionView<M, P> {
        VersionView {
            name: self.name,
            version: self.version,
            reference: self.reference,
            format: self.format,
            artifact_sha256: self.artifact_sha256,
            size_bytes: self.size_bytes,
            params: self.params,
            metrics,
            fit_seconds: self.fit_seconds,
            created_unix_s: self.created_unix_s,
            created: self.created,
            dataset: self.dataset,
            parent,
            tags: self.tags,
            aliases: self.aliases,
        }
    }
}

impl Render for VersionView {
    fn text(&self) -> String {
        let mut s = format!(
            "{}  ({} artifact, {} bytes, sha256 {})\n  metrics: {}\n  params:  {}\n",
            self.reference,
            self.format,
            self.size_bytes,
            self.artifact_sha256,
            render::stored_metrics(&self.metrics),
            self.params
        );
        s.push_str(&format!("  created: {} UTC\n", self.created));
        if let Some(f) = self.fit_seconds {
            s.push_str(&format!("  fit:     {f:.3} s\n"));
        }
        if let Some(d) = &self.dataset {
            s.push_str(&format!(
                "  data:    sha256 {} ({} rows, {} columns)\n",
                d.sha256, d.rows, d.columns
            ));
        }
        if let Some(p) = &self.parent {
            s.push_str(&format!("  parent:  {p}\n"));
        }
        for (label, items) in [("aliases", &self.aliases), ("tags", &self.tags)] {
            if !items.is_empty() {
                s.push_str(&format!(
                    "  {label}:{} {}\n",
                    " ".repeat(8 - label.len()),
                    items.join(", ")
                ));
            }
        }
        s
    }
}

/// A version's metrics as JSON, with `evaluated_on` (`"train"` or `"test"`) saying which data
/// they were measured on (derived for versions registered before it was stored).
pub fn metrics_with_origin(v: &Version) -> Value {
    let mut metrics = v.metrics.clone();
    if let (Some(on), Some(m)) = (v.metrics_evaluated_on(), metrics.as_object_mut()) {
        m.insert("evaluated_on".into(), json!(on));
    }
    metrics
}

/// Every version (`models list`): a JSON array, or a table.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct VersionList(pub Vec<VersionView>);

impl Render for VersionList {
    fn text(&self) -> String {
        let mut table = Table::fixed(&[
            (Align::Left, 24),
            (Align::Left, 7),
            (Align::Left, 19),
            (Align::Left, 0),
        ]);
        table.row(["VERSION", "FORMAT", "ALIASES", "METRICS"]);
        for v in &self.0 {
            table.row([
                v.reference.clone(),
                v.format.to_string(),
                v.aliases.join(","),
                render::stored_metrics(&v.metrics),
            ]);
        }
        table.text()
    }
}

/// Every version.
///
/// # Errors
/// Registry failures.
pub fn list(registry: &Registry) -> Result<VersionList> {
    Ok(VersionList(
        registry.list()?.iter().map(VersionView::of).collect(),
    ))
}

/// A value of the first and of the second version of a diff.
#[derive(Clone, Debug, Serialize)]
pub struct Change<T> {
    /// The first version's.
    pub a: T,
    /// The second version's.
    pub b: T,
}

/// A metric of both versions of a diff and how it moved.
#[derive(Clone, Debug, Serialize)]
pub struct MetricChange {
    /// The first version's (`null` when it has none).
    pub a: Value,
    /// The second version's.
    pub b: Value,
    /// `b - a`, when both are finite numbers.
    pub delta: Option<f64>,
}

/// What differs between two versions (`models diff`).
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    /// The first version, `NAME@N`.
    pub a: String,
    /// The second version.
    pub b: String,
    /// Parameters whose values differ.
    pub params: BTreeMap<String, Change<Value>>,
    /// Every metric either version has.
    pub metrics: BTreeMap<String, MetricChange>,
    /// Whether both were trained on the same file; `None` when one has no dataset record.
    pub same_dataset: Option<bool>,
    /// Whether both artifacts are the same bytes.
    pub same_artifact: bool,
    /// Artifact sizes.
    pub size_bytes: Change<u64>,
    /// Fit times.
    pub fit_seconds: Change<Option<f64>>,
}

impl Render for Diff {
    fn text(&self) -> String {
        let mut s = format!("{} → {}\n", self.a, self.b);
        for (k, v) in &self.params {
            s.push_str(&format!("  param  {k}: {} → {}\n", v.a, v.b));
        }
        for (k, v) in &self.metrics {
            match v.delta {
                Some(delta) => {
                    s.push_str(&format!("  metric {k}: {} → {} ({delta:+.4})\n", v.a, v.b))
                }
                None => s.push_str(&format!("  metric {k}: {} → {}\n", v.a, v.b)),
            }
        }
        let same_dataset = self.same_dataset.map_or("null".into(), |b| b.to_string());
        s.push_str(&format!(
            "  same dataset: {same_dataset}, same artifact: {}\n",
            self.same_artifact
        ));
        s
    }
}

/// What differs between two versions: parameters, metrics (with `b - a`), dataset and
/// artifact.
///
/// # Errors
/// Unknown references.
pub fn diff(registry: &Registry, a: &ModelRef, b: &ModelRef) -> Result<Diff> {
    let (va, vb) = (registry.resolve(a)?, registry.resolve(b)?);
    let keys = |x: &Value, y: &Value| {
        let mut k: Vec<String> = x
            .as_object()
            .into_iter()
            .chain(y.as_object())
            .flat_map(|m| m.keys().cloned())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let mut params = BTreeMap::new();
    for k in keys(&va.params, &vb.params) {
        if va.params[&k] != vb.params[&k] {
            let change = Change {
                a: va.params[&k].clone(),
                b: vb.params[&k].clone(),
            };
            params.insert(k, change);
        }
    }
    let mut metrics = BTreeMap::new();
    for k in keys(&va.metrics, &vb.metrics) {
        let (x, y) = (&va.metrics[&k], &vb.metrics[&k]);
        let delta = match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => Some(y - x).filter(|d| d.is_finite()),
            _ => None,
        };
        let change = MetricChange {
            a: x.clone(),
            b: y.clone(),
            delta,
        };
        metrics.insert(k, change);
    }
    let same_dataset = match (&va.dataset, &vb.dataset) {
        (Some(x), Some(y)) => Some(x.sha256 == y.sha256),
        _ => None,
    };
    Ok(Diff {
        a: format!("{}@{}", va.name, va.number),
        b: format!("{}@{}", vb.name, vb.number),
        params,
        metrics,
        same_dataset,
        same_artifact: va.artifact_sha256 == vb.artifact_sha256,
        size_bytes: Change {
            a: va.size_bytes,
            b: vb.size_bytes,
        },
        fit_seconds: Change {
            a: va.fit_seconds,
            b: vb.fit_seconds,
        },
    })
}

/// A written artifact (`models export`).
#[derive(Clone, Debug, Serialize)]
pub struct Exported {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u32,
    /// `perch` or `onnx`.
    pub format: &'static str,
    /// The file written.
    pub output: String,
    /// Its size.
    pub size_bytes: usize,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

impl Render for Exported {
    /// Nothing: `models export` says on stderr what it wrote.
    fn text(&self) -> String {
        String::new()
    }
}

/// Writes the artifact of the version `r` names to `output` in `format`: `perch` (native
/// versions as stored) or `onnx` (native versions through [`crate::export`], ONNX versions as
/// stored). An ONNX version has no native form to export.
///
/// # Errors
/// Unknown references, an unsupported format, a graph the exporter cannot write, I/O
/// failures.
pub fn export(registry: &Registry, r: &ModelRef, format: &str, output: &Path) -> Result<Exported> {
    let version = registry.resolve(r)?;
    let wanted = match format.to_ascii_lowercase().as_str() {
        "perch" => ArtifactFormat::Perch,
        "onnx" => ArtifactFormat::Onnx,
        other => bail!("unknown export format {other:?}: expected perch or onnx"),
    };
    let stored = registry.artifact_bytes(&version)?;
    let bytes = match (version.format, wanted) {
        (a, b) if a == b => stored,
        (ArtifactFormat::Perch, ArtifactFormat::Onnx) => {
            let model = crate::artifact::decode(&stored)
                .with_context(|| format!("decoding {}@{}", version.name, version.number))?
                .model;
            crate::export::to_onnx(&model)
                .with_context(|| format!("exporting {}@{} as ONNX", version.name, version.number))?
        }
        _ => bail!(
            "{}@{} is an imported ONNX model that perch's native engine cannot run; it exports \
             only as onnx",
            version.name,
            version.number
        ),
    };
    std::fs::write(output, &bytes).with_context(|| format!("writing {}", output.display()))?;
    Ok(Exported {
        name: version.name,
        version: version.number,
        format: wanted.name(),
        output: output.display().to_string(),
        size_bytes: bytes.len(),
        sha256: sha256_hex(&bytes),
    })
}

/// A registered external model (`import`): the new version, and why it was kept as ONNX
/// when it was.
#[derive(Clone, Debug, Serialize)]
pub struct Imported {
    /// The new version.
    #[serde(flatten)]
    pub version: VersionView,
    /// `kept as ONNX: …` when some op has no native translation; `None` when converted.
    pub note: Option<String>,
}

impl Render for Imported {
    fn text(&self) -> String {
        self.version.text()
    }
}

/// Registers an external ONNX model: converted to a native artifact when every op
/// translates, else kept as ONNX bytes (format `onnx`) when perch's ONNX path loads it.
///
/// # Errors
/// Unreadable files, models neither path can load, registry failures.
pub fn import(registry: &mut Registry, model: &Path, name: Option<&str>) -> Result<Imported> {
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| model_name_of_file(model));
    let source_sha = sha256_hex(&bytes);
    let (payload, note) = match crate::convert::onnx_bytes_to_native(&bytes) {
        Ok(mut native) => {
            native.metadata.producer = format!("perch-host {} import", env!("CARGO_PKG_VERSION"));
            native
                .metadata
                .properties
                .insert("source_sha256".into(), source_sha.clone());
            (Payload::Native(Box::new(native)), None)
        }
        Err(e) => {
            runtime::Model::from_onnx_bytes(&bytes, EngineChoice::Tract)
                .with_context(|| format!("{} is not a model perch can run", model.display()))?;
            (Payload::Onnx(bytes), Some(format!("kept as ONNX: {e}")))
        }
    };
    let version = registry.register(
        &name,
        payload,
        VersionInfo {
            params: json!({"source": model.display().to_string(), "source_sha256": source_sha}),
            metrics: json!({}),
            ..VersionInfo::default()
        },
    )?;
    Ok(Imported {
        version: VersionView::of(&version),
        note,
    })
}

/// A converted artifact (`convert`).
#[derive(Clone, Debug, Serialize)]
pub struct Converted {
    /// The model name stored in it.
    pub name: String,
    /// The file written.
    pub output: String,
    /// Its size.
    pub size_bytes: u64,
    /// Its layers' kinds, in graph order.
    pub layers: Vec<&'static str>,
}

impl Render for Converted {
    /// Nothing: `convert` says on stderr what it wrote.
    fn text(&self) -> String {
        String::new()
    }
}

/// What `convert` stores in the artifact besides the graph.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Model name (default: [`model_name_of_file`] of the ONNX file).
    pub name: Option<String>,
    /// Version string.
    pub version: String,
    /// Free-text description.
    pub description: Option<String>,
}

/// Translates the ONNX model at `model` into a native artifact at `output`, stamped with its
/// name, version, producer, creation time, the ONNX file's SHA-256 and its requirements.
///
/// # Errors
/// Unreadable files, ops without a native translation, write failures.
pub fn convert(model: &Path, output: &Path, opts: &ConvertOptions) -> Result<Converted> {
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let mut native = crate::convert::onnx_bytes_to_native(&bytes)
        .with_context(|| format!("converting {}", model.display()))?;
    native.metadata.name = opts
        .name
        .clone()
        .unwrap_or_else(|| model_name_of_file(model));
    native.metadata.version = opts.version.clone();
    if let Some(d) = &opts.description {
        native.metadata.description = d.clone();
    }
    native.metadata.producer = format!("perch-host {} convert", env!("CARGO_PKG_VERSION"));
    native.metadata.created_unix_s = crate::util::now_unix_s() as u64;
    native
        .metadata
        .properties
        .insert("source_sha256".into(), sha256_hex(&bytes));
    native
        .stamp_requirements()
        .context("computing the model's requirements")?;
    let size_bytes = crate::artifact::write(output, &native)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(Converted {
        name: native.metadata.name.clone(),
        output: output.display().to_string(),
        size_bytes: size_bytes as u64,
        layers: native.graph.nodes.iter().map(|n| n.layer.kind()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_table_keeps_its_columns() {
        let list = VersionList(Vec::new());
        assert_eq!(
            list.text(),
            "VERSION                  FORMAT  ALIASES             METRICS\n"
        );
    }
}
