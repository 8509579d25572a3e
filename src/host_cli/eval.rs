//! `perch-host eval`: scores a registered version on labelled CSV data by running its stored
//! artifact, and the metrics every host command reports (train, eval, optimize).

use super::recorded_schema;
use super::render::{self, Render};
use crate::registry::{ArtifactFormat, ModelRef, Registry, Version};
use crate::runtime::{self, EngineChoice, OutputValues};
use crate::train::data::{Dataset, Schema, TargetEncoding, Task};
use crate::train::metrics::{self, Average};
use crate::train::{self, Evaluation};
use anyhow::{Context, Result, anyhow, bail};
use ndarray::Array2;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Metrics by lower snake case name (`accuracy`, `f1_macro`, `r2`, …).
pub type Metrics = BTreeMap<String, f64>;

/// A confusion matrix: rows are the truth, columns the prediction.
pub type Confusion = Vec<Vec<u64>>;

/// The metrics as `name=value` pairs.
pub fn metrics_text(m: &Metrics) -> String {
    m.iter()
        .map(|(k, &v)| render::metric(k, &serde_json::json!(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The metrics of an [`Evaluation`].
pub fn metrics_of(e: &Evaluation) -> Metrics {
    let mut m = Metrics::new();
    match e {
        Evaluation::Classification {
            accuracy,
            f1_macro,
            f1_weighted,
            log_loss,
            roc_auc,
        } => {
            m.insert("accuracy".into(), *accuracy);
            m.insert("f1_macro".into(), *f1_macro);
            m.insert("f1_weighted".into(), *f1_weighted);
            m.insert("log_loss".into(), *log_loss);
            if let Some(a) = roc_auc {
                m.insert("roc_auc".into(), *a);
            }
        }
        Evaluation::Regression { r2, mse, mae } => {
            m.insert("r2".into(), *r2);
            m.insert("mse".into(), *mse);
            m.insert("mae".into(), *mae);
        }
    }
    m
}

/// Classifier metrics from class probabilities `[n, k]`: `accuracy`, `precision_*`,
/// `recall_*` and `f1_*` (`macro` and `weighted`), `log_loss`, `roc_auc` (when every class
/// occurs), and the confusion matrix.
pub fn classification_metrics(
    truth: &[usize],
    p: ndarray::ArrayView2<'_, f64>,
) -> (Metrics, Confusion) {
    let k = p.ncols();
    let predicted = metrics::argmax_rows(p);
    let scores = metrics::ClassScores::new(truth, &predicted, k);
    let mut m = Metrics::new();
    m.insert("accuracy".into(), metrics::accuracy(truth, &predicted));
    for (average, suffix) in [(Average::Macro, "macro"), (Average::Weighted, "weighted")] {
        m.insert(format!("precision_{suffix}"), scores.precision(average));
        m.insert(format!("recall_{suffix}"), scores.recall(average));
        m.insert(format!("f1_{suffix}"), scores.f1(average));
    }
    m.insert("log_loss".into(), metrics::log_loss(truth, p));
    if let Some(a) = metrics::roc_auc(truth, p) {
        m.insert("roc_auc".into(), a);
    }
    let cm = metrics::confusion_matrix(truth, &predicted, k);
    let cm = cm.rows().into_iter().map(|r| r.to_vec()).collect();
    (m, cm)
}

/// Scores a trained model on labelled data: metrics and, for classifiers, the confusion
/// matrix.
pub(crate) fn score(
    fitted: &train::Fitted,
    data: &Dataset,
) -> Result<(Metrics, Option<Confusion>)> {
    Ok(match &data.target {
        train::data::Target::Classes(y) => {
            let p = fitted.predict_proba(data.features.view())?;
            let (m, cm) = classification_metrics(y, p.view());
            (m, Some(cm))
        }
        train::data::Target::Values(_) => (metrics_of(&fitted.evaluate(data)?), None),
    })
}

/// A class label as the data wrote it: an integer when every label is one.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Label {
    /// An integer label.
    Number(i64),
    /// A text label.
    Text(String),
}

/// A model's prediction per row.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Predictions {
    /// A classifier's labels.
    Labels(Vec<Label>),
    /// A regressor's values.
    Values(Vec<f64>),
}

/// A model run on labelled data (see [`score_runtime`]).
#[derive(Clone, Debug, Serialize)]
pub struct Scored {
    /// Rows scored.
    pub rows: usize,
    /// Metrics on them.
    pub metrics: Metrics,
    /// A classifier's confusion matrix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion_matrix: Option<Confusion>,
    /// A classifier's labels, in class index order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// The prediction per row.
    pub predictions: Predictions,
}

/// `perch-host eval`'s result.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u32,
    /// `NAME@VERSION`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The data file scored.
    pub data: String,
    /// What the run gave.
    #[serde(flatten)]
    pub scored: Scored,
}

impl Render for EvalReport {
    fn text(&self) -> String {
        format!(
            "{}@{}: {}\n",
            self.name,
            self.version,
            metrics_text(&self.scored.metrics)
        )
    }
}

fn load_runtime(registry: &Registry, version: &Version) -> Result<runtime::Model> {
    let bytes = registry.artifact_bytes(version)?;
    Ok(match version.format {
        ArtifactFormat::Perch => runtime::Model::from_artifact_bytes(&bytes)?,
        ArtifactFormat::Onnx => runtime::Model::from_onnx_bytes(&bytes, EngineChoice::Auto)?,
    })
}

/// Scores the version `r` names on the labelled CSV `data`, encoded with the version's
/// training schema, running the stored artifact itself.
///
/// A version without a recorded schema (an imported model) needs `target`: the other
/// columns are its inputs in file order, a model with a `probabilities` output is scored as
/// a classifier over the sorted class labels, any other as a regressor on `variable`.
///
/// # Errors
/// An unknown reference, an imported version without `target`, bad data, or a model whose
/// outputs are not `probabilities` / `variable`.
pub fn eval(
    registry: &Registry,
    r: &ModelRef,
    data: &Path,
    target: Option<&str>,
) -> Result<EvalReport> {
    let version = registry.resolve(r)?;
    let mut model = load_runtime(registry, &version)?;
    let load = |schema: &Schema| Dataset::load_with_schema(data, schema).context("evaluation data");
    let (dataset, schema) = match (recorded_schema(&version)?, target) {
        (Some(schema), _) => (load(&schema)?, schema),
        (None, Some(target)) => {
            let outputs = &model.info().outputs;
            let task = if outputs.iter().any(|o| o.name == "probabilities") {
                Task::Classification
            } else {
                Task::Regression
            };
            let dataset = Dataset::load(data, target, task).context("evaluation data")?;
            let schema = dataset.schema.clone();
            (dataset, schema)
        }
        (None, None) => bail!(
            "{}@{} has no recorded training schema (it was imported, not trained here); pass --target COL to score it on a CSV whose other columns are its inputs",
            version.name,
            version.number
        ),
    };
    let scored = score_runtime(&mut model, &dataset, &schema)
        .with_context(|| format!("scoring {}@{}", version.name, version.number))?;
    Ok(EvalReport {
        reference: format!("{}@{}", version.name, version.number),
        name: version.name,
        version: version.number,
        data: data.display().to_string(),
        scored,
    })
}

/// Runs `model` on `dataset` (encoded with `schema`) and scores it.
///
/// # Errors
/// A model whose outputs are not `probabilities` / `variable` of the schema's shape.
pub fn score_runtime(
    model: &mut runtime::Model,
    dataset: &Dataset,
    schema: &Schema,
) -> Result<Scored> {
    let n = dataset.n_rows();
    let x: Vec<f32> = dataset.features_f32().iter().copied().collect();
    let outputs = model.run(&x, n).context("running the model")?;
    let find = |name: &str| outputs.iter().find(|o| o.name == name);
    match (&dataset.target, &schema.target_encoding) {
        (train::data::Target::Classes(truth), TargetEncoding::Classes { labels, numeric }) => {
            let probs = find("probabilities")
                .ok_or_else(|| anyhow!("the model has no `probabilities` output"))?;
            let OutputValues::F32(p) = &probs.values else {
                bail!("the model's `probabilities` output is not float");
            };
            let k = probs.shape.get(1).copied().unwrap_or(0);
            if k != labels.len() || p.len() != n * k {
                bail!(
                    "the model gives {k} probabilities per row, its schema has {} classes",
                    labels.len()
                );
            }
            let p = Array2::from_shape_vec((n, k), p.iter().map(|&v| v as f64).collect())?;
            let (metrics, confusion) = classification_metrics(truth, p.view());
            // Every index is below k == labels.len(): argmax over k columns.
            let predictions = metrics::argmax_rows(p.view())
                .iter()
                .map(|&i| match numeric.as_ref().and_then(|nums| nums.get(i)) {
                    Some(&n) => Label::Number(n),
                    None => Label::Text(labels[i].clone()),
                })
                .collect();
            Ok(Scored {
                rows: n,
                metrics,
                confusion_matrix: Some(confusion),
                classes: Some(labels.clone()),
                predictions: Predictions::Labels(predictions),
            })
        }
        (train::data::Target::Values(truth), _) => {
            let out =
                find("variable").ok_or_else(|| anyhow!("the model has no `variable` output"))?;
            let OutputValues::F32(v) = &out.values else {
                bail!("the model's `variable` output is not float");
            };
            if v.len() != n {
                bail!("the model gives {} values for {n} rows", v.len());
            }
            let predicted: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            let evaluation = Evaluation::Regression {
                r2: metrics::r2(truth, &predicted),
                mse: metrics::mse(truth, &predicted),
                mae: metrics::mae(truth, &predicted),
            };
            Ok(Scored {
                rows: n,
                metrics: metrics_of(&evaluation),
                confusion_matrix: None,
                classes: None,
                predictions: Predictions::Values(predicted),
            })
        }
        _ => bail!("the data's target does not match the model's schema"),
    }
}
