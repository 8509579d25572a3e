//! `perch-host train`: training the model a [`TrainOptions`] describes into the
//! [`registry`](crate::registry), with the sections a device needs (drift baseline, canary).

use super::eval::{Confusion, Metrics, metrics_text, score};
use super::render::Render;
use super::spec::{TrainOptions, spec_from_options, spec_params};
use super::{DataFile, DataFiles, name_chars, sha256_hex};
use crate::registry::{DatasetInfo, ModelRef, Payload, Registry, VersionInfo};
use crate::runtime;
use crate::train::data::Dataset;
use crate::train::select::{self, Grid};
use crate::train::{self, ModelKind, ModelSpec, Solver};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;

fn feature_stats_json(data: &Dataset) -> Value {
    Value::Array(
        data.feature_stats()
            .into_iter()
            .map(
                |s| json!({"name": s.name, "mean": s.mean, "std": s.std, "bin_edges": s.bin_edges}),
            )
            .collect(),
    )
}

fn default_name(data: &Path, kind: &str) -> String {
    let stem = name_chars(
        &data
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let stem = stem.strip_suffix("_train").unwrap_or(&stem).to_string();
    if stem.is_empty() {
        kind.to_string()
    } else {
        format!("{stem}-{kind}")
    }
}

fn progress_bar(spec: &ModelSpec) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let len = match &spec.kind {
        ModelKind::Mlp { config, .. } | ModelKind::LinearSvm { config, .. } => config.epochs,
        ModelKind::LinearRegression {
            solver: Solver::Gradient(c),
            ..
        }
        | ModelKind::Logistic {
            solver: Solver::Gradient(c),
            ..
        }
        | ModelKind::Softmax {
            solver: Solver::Gradient(c),
            ..
        } => c.epochs,
        ModelKind::LinearRegression {
            solver: Solver::Lbfgs(c),
            ..
        }
        | ModelKind::Logistic {
            solver: Solver::Lbfgs(c),
            ..
        }
        | ModelKind::Softmax {
            solver: Solver::Lbfgs(c),
            ..
        } => c.max_iter,
        _ => 0,
    };
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(spec.kind.name());
    bar
}

/// A k-fold cross-validation's scores.
#[derive(Clone, Debug, Serialize)]
pub struct CvSummary {
    /// Folds.
    pub k: usize,
    /// The held-out score of each fold.
    pub folds: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Their standard deviation.
    pub std: f64,
}

/// One setting of a grid search and its cross-validated scores.
#[derive(Clone, Debug, Serialize)]
pub struct GridRow {
    /// The parameter values tried.
    pub params: BTreeMap<String, String>,
    /// Mean fold score.
    pub mean: f64,
    /// Standard deviation of the fold scores.
    pub std: f64,
    /// The held-out score of each fold.
    pub folds: Vec<f64>,
}

/// A grid search: every setting tried and the best one (refitted on all the data).
#[derive(Clone, Debug, Serialize)]
pub struct GridSummary {
    /// Folds of each setting's cross-validation.
    pub k: usize,
    /// One row per setting, in grid order.
    pub table: Vec<GridRow>,
    /// Index of the best row.
    pub best: usize,
}

/// `perch-host train`'s result: the new version and how it scored.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// Registry name.
    pub name: String,
    /// The new version's number.
    pub version: u32,
    /// `NAME@VERSION`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Model kind (`mlp`, `logistic`, …).
    pub model: &'static str,
    /// The reported metrics: on the test data when given, else on the training data.
    pub metrics: Metrics,
    /// `test` or `train`: which data `metrics` were measured on.
    pub evaluated_on: &'static str,
    /// Metrics on the training data.
    pub train_metrics: Metrics,
    /// Wall time of the final fit.
    pub fit_seconds: f64,
    /// Wall time of the whole search (cross-validation and grid included).
    pub total_seconds: f64,
    /// Epochs (or iterations) the final fit ran.
    pub epochs: usize,
    /// Hyper-parameters and the recipe, as stored in the registry.
    pub params: Value,
    /// SHA-256 of the artifact, lower-case hex.
    pub artifact_sha256: String,
    /// Artifact size.
    pub size_bytes: u64,
    /// A classifier's confusion matrix on the data `metrics` come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion_matrix: Option<Confusion>,
    /// Cross-validation, with `--cv` alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cv: Option<CvSummary>,
    /// The grid search, with `--grid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<GridSummary>,
}

impl Render for TrainReport {
    fn text(&self) -> String {
        let mut s = format!(
            "{}@{}: {}",
            self.name,
            self.version,
            metrics_text(&self.metrics)
        );
        match self.evaluated_on {
            "train" => s.push_str(" (on the training data: give --test FILE for held-out figures)"),
            on => s.push_str(&format!(" (on the {on} data)")),
        }
        s.push_str(&format!(", fit {:.3} s", self.fit_seconds));
        if let Some(cv) = &self.cv {
            s.push_str(&format!(
                "\n{}-fold CV: {:.4} ± {:.4}",
                cv.k, cv.mean, cv.std
            ));
        }
        if let Some(g) = &self.grid {
            s.push_str(&format!("\ngrid ({}-fold CV):", g.k));
            for (i, row) in g.table.iter().enumerate() {
                let best = if g.best == i { " ← best" } else { "" };
                let params = serde_json::to_string(&row.params).unwrap_or_default();
                s.push_str(&format!(
                    "\n  {params} {:.4} ± {:.4}{best}",
                    row.mean, row.std
                ));
            }
        }
        s.push('\n');
        s
    }
}

/// Trains the model `opts` describe, scores it (on `--test` when given, else on the
/// training data), and registers it as the next version of its name.
///
/// # Errors
/// Bad options (checked before any data is read), unreadable or bad data (naming file, row
/// and column), training failures, registry failures. Nothing is registered on error.
pub fn train(registry: &mut Registry, opts: &TrainOptions) -> Result<TrainReport> {
    let (spec, task) = spec_from_options(opts)?;
    let parent = opts
        .parent
        .as_deref()
        .map(str::parse::<ModelRef>)
        .transpose()?;
    if let Some(p) = &parent {
        registry.resolve(p)?;
    }
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| default_name(&opts.data, &opts.model.to_ascii_lowercase()));
    let data = Dataset::load(&opts.data, &opts.target, task).context("training data")?;
    let test = match &opts.test {
        Some(path) => Some(Dataset::load_with_schema(path, &data.schema).context("test data")?),
        None => None,
    };
    let (mut cv, mut grid_summary) = (None, None);
    let k = opts.cv.unwrap_or(5);
    let started = std::time::Instant::now();
    let fitted = if let Some(g) = &opts.grid {
        let grid = Grid::parse(g)?;
        let result = select::grid_search(&spec, &grid, &data, k, opts.seed)
            .with_context(|| format!("grid search {g:?}"))?;
        let table = result
            .table
            .iter()
            .map(|row| GridRow {
                params: row.params.iter().cloned().collect(),
                mean: row.scores.mean(),
                std: row.scores.std(),
                folds: row.scores.folds.clone(),
            })
            .collect();
        grid_summary = Some(GridSummary {
            k,
            table,
            best: result.best,
        });
        result.model
    } else {
        if let Some(k) = opts.cv {
            let scores = select::cv(&spec, &data, k, opts.seed)
                .with_context(|| format!("{k}-fold cross-validation"))?;
            cv = Some(CvSummary {
                k,
                mean: scores.mean(),
                std: scores.std(),
                folds: scores.folds,
            });
        }
        let bar = progress_bar(&spec);
        let mut on_epoch = |r: &train::optim::EpochReport| {
            bar.set_position(r.epoch as u64);
            bar.set_message(match r.validation {
                Some(v) => format!("loss {:.4} val {v:.4}", r.loss),
                None => format!("loss {:.4}", r.loss),
            });
        };
        let fitted = train::fit(&spec, &data, Some(&mut on_epoch));
        bar.finish_and_clear();
        fitted.with_context(|| format!("training {} on {}", opts.model, opts.data.display()))?
    };
    let search_seconds = started.elapsed().as_secs_f64();
    let (train_metrics, train_confusion) = score(&fitted, &data)?;
    let (metrics, confusion, evaluated_on) = match &test {
        Some(t) => {
            let (m, cm) = score(&fitted, t)?;
            (m, cm, "test")
        }
        None => (train_metrics.clone(), train_confusion, "train"),
    };
    let fit_seconds = fitted.fit_time_ms as f64 / 1000.0;
    let dataset = data.fingerprint.as_ref().map(|fp| DatasetInfo {
        sha256: fp.sha256.clone(),
        rows: fp.rows as u64,
        columns: fp.columns as u64,
        feature_stats: feature_stats_json(&data),
    });
    let mut params = spec_params(&fitted.spec, task, &opts.target);
    if let Some(p) = params.as_object_mut() {
        let mut recipe = opts.clone();
        recipe.data = std::fs::canonicalize(&opts.data).unwrap_or_else(|_| opts.data.clone());
        recipe.test = opts
            .test
            .as_ref()
            .map(|t| std::fs::canonicalize(t).unwrap_or_else(|_| t.clone()));
        p.insert("recipe".into(), serde_json::to_value(&recipe)?);
    }
    let mut stored_metrics: Map<String, Value> = metrics
        .iter()
        .map(|(k, &v)| (k.clone(), json!(v)))
        .collect();
    for (k, &v) in &train_metrics {
        stored_metrics.insert(format!("train_{k}"), json!(v));
    }
    stored_metrics.insert("evaluated_on".into(), json!(evaluated_on));
    let baseline = match &opts.baseline {
        Some(path) => {
            Some(Dataset::load_with_schema(path, &data.schema).context("drift baseline data")?)
        }
        None => None,
    };
    let mut model = fitted.to_model(&name);
    attach_sections(
        &mut model,
        &fitted,
        &data,
        baseline.as_ref().unwrap_or(&data),
    )
    .with_context(|| format!("recording the drift baseline and canary of {name}"))?;
    let version = registry.register(
        &name,
        Payload::Native(Box::new(model)),
        VersionInfo {
            params: params.clone(),
            metrics: Value::Object(stored_metrics),
            fit_seconds: Some(fit_seconds),
            dataset,
            data_schema: Some(serde_json::to_value(&data.schema)?),
            parent,
            data_files: Some(serde_json::to_value(data_files(
                &opts.data,
                opts.test.as_deref(),
            )?)?),
        },
    )?;
    Ok(TrainReport {
        reference: format!("{}@{}", version.name, version.number),
        name: version.name,
        version: version.number,
        model: fitted.spec.kind.name(),
        metrics,
        evaluated_on,
        train_metrics,
        fit_seconds,
        total_seconds: search_seconds,
        epochs: fitted.summary.epochs,
        params,
        artifact_sha256: version.artifact_sha256,
        size_bytes: version.size_bytes,
        confusion_matrix: confusion,
        cv,
        grid: grid_summary,
    })
}

/// Training rows considered for the canary: the first ones, at most this many.
const CANARY_CANDIDATES: usize = 256;

/// Largest difference allowed between a canary's recorded float outputs and a device's.
pub const CANARY_TOLERANCE: f32 = 1e-4;

/// Attaches to a trained model the sections the device uses: the drift baseline of
/// `baseline` (the training data unless `--baseline` names other data; over the encoded
/// features, the model's input) and a canary recorded with the native engine on
/// [`canary_row`] of the training data.
///
/// # Errors
/// A model whose input is not one row of the encoded features, or that fails to run.
fn attach_sections(
    model: &mut crate::graph::Model,
    fitted: &train::Fitted,
    data: &Dataset,
    baseline: &Dataset,
) -> Result<()> {
    use crate::graph::sections::{CANARY, DRIFT_BASELINE, DriftBaseline};
    let width = model.graph.inputs.first().map_or(0, |i| i.sample_len());
    if model.graph.inputs.len() != 1 || width != data.n_features() {
        bail!(
            "the model takes {} input(s) of {width} values, not one row of the {} encoded features",
            model.graph.inputs.len(),
            data.n_features()
        );
    }
    if baseline.n_rows() == 0 {
        bail!("the drift baseline data has no rows");
    }
    let columns: Vec<Vec<f64>> = baseline
        .features
        .columns()
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    let baseline = DriftBaseline::from_columns(columns.iter().map(|c| &c[..]));
    model.metadata.set_section(DRIFT_BASELINE, &baseline)?;
    if let Some(row) = canary_row(fitted, data)? {
        let input: Vec<f32> = data.features.row(row).iter().map(|&v| v as f32).collect();
        let mut runtime = runtime::Model::from_native(model)?;
        let canary = runtime::record_canary(&mut runtime, &input, CANARY_TOLERANCE)?;
        model.metadata.set_section(CANARY, &canary)?;
    }
    Ok(())
}

/// The training row whose outputs are least sensitive to small numeric differences, among
/// the first `CANARY_CANDIDATES` (256) whose features are finite as f32: for a classifier the
/// one with the largest margin between its top two class probabilities (so that a device
/// rounding differently still gives the same label), for a regressor the first. `None` when
/// no row qualifies.
///
/// # Errors
/// The model fails to score the rows.
pub fn canary_row(fitted: &train::Fitted, data: &Dataset) -> Result<Option<usize>> {
    let candidates: Vec<usize> = (0..data.n_rows().min(CANARY_CANDIDATES))
        .filter(|&r| data.features.row(r).iter().all(|&v| (v as f32).is_finite()))
        .collect();
    if !fitted.is_classifier() || candidates.len() <= 1 {
        return Ok(candidates.first().copied());
    }
    let rows = data.features.select(ndarray::Axis(0), &candidates);
    let p = fitted.predict_proba(rows.view())?;
    let margin = |r: ndarray::ArrayView1<'_, f64>| {
        let (mut top, mut second) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for &v in r {
            if v > top {
                second = top;
                top = v;
            } else if v > second {
                second = v;
            }
        }
        if second == f64::NEG_INFINITY {
            top
        } else {
            top - second
        }
    };
    let mut best: Option<(usize, f64)> = None;
    for (i, row) in p.rows().into_iter().enumerate() {
        let m = margin(row);
        if m.is_finite() && best.is_none_or(|(_, b)| m > b) {
            best = Some((i, m));
        }
    }
    Ok(Some(candidates[best.map_or(0, |(i, _)| i)]))
}

/// The training and test files with absolute paths and SHA-256, so that later commands
/// (`optimize`, retraining) can find the data again and tell whether it changed.
fn data_files(train: &Path, test: Option<&Path>) -> Result<DataFiles> {
    let entry = |p: &Path| -> Result<DataFile> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let path = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        Ok(DataFile {
            path: path.display().to_string(),
            sha256: sha256_hex(&bytes),
        })
    };
    Ok(DataFiles {
        train: Some(entry(train)?),
        test: test.map(entry).transpose()?,
    })
}
