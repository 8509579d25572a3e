//! `perch-host train`: the training options, the model spec they describe, and training
//! into the [`registry`](crate::registry) with the sections a device needs (drift baseline,
//! canary).

use super::eval::{Confusion, Metrics, metrics_text, score};
use super::render::Render;
use super::{DataFile, DataFiles, name_chars, sha256_hex};
use crate::registry::{DatasetInfo, ModelRef, Payload, Registry, VersionInfo};
use crate::runtime;
use crate::train::data::{Dataset, Task};
use crate::train::optim::{GradientConfig, OptimizerKind, Schedule};
use crate::train::scale::Scaling;
use crate::train::select::{self, Grid};
use crate::train::{self, ModelKind, ModelSpec, Penalty, Solver};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Model kinds `--model` accepts in this build.
pub const MODEL_KINDS: &[&str] = &[
    "linear", "ridge", "lasso", "logistic", "softmax", "mlp", "svm", "tree", "forest",
];

/// `perch-host train` arguments (kept with each version as its training recipe, so the
/// host can retrain it on new data).
#[derive(Clone, Debug, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    /// Training data: CSV with a header.
    pub data: PathBuf,
    /// Target column name.
    #[arg(long)]
    pub target: String,
    /// Model kind: linear, ridge, lasso, logistic, softmax, mlp, svm, tree, forest.
    #[arg(long)]
    pub model: String,
    /// Whether the target is a class or a value (default: from the model kind; mlp:
    /// classification).
    #[arg(long, value_parser = ["classification", "regression"])]
    pub task: Option<String>,
    /// Labelled test data scored after training (its metrics are the reported ones).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Registry name (default: the data file's stem and the model kind).
    #[arg(long)]
    pub name: Option<String>,
    /// Feature scaling baked into the model: standard, minmax or none.
    #[arg(long, default_value = "none")]
    pub scale: String,
    /// MLP hidden layer widths, e.g. 64,32 (default 100).
    #[arg(long)]
    pub hidden: Option<String>,
    /// MLP hidden activation: relu, tanh or sigmoid.
    #[arg(long)]
    pub activation: Option<String>,
    /// Penalty strength: ridge / lasso alpha, MLP L2 alpha.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Inverse penalty strength C of logistic, softmax and svm.
    #[arg(long = "C", alias = "c")]
    pub c: Option<f64>,
    /// Optimizer: sgd, momentum, nesterov, rmsprop, adagrad, adadelta, adam, adamw.
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Maximum epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Mini-batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Learning-rate schedule: constant, `step:EVERY[:GAMMA]` or `cosine[:MIN_LR]`.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Decoupled L2 weight decay per step (AdamW's own decay with --optimizer adamw).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Solver of linear, logistic and softmax models: exact (linear regression's closed form),
    /// lbfgs, or gd (mini-batch gradient descent with --optimizer).
    #[arg(long)]
    pub solver: Option<String>,
    /// Trees: split criterion, gini, entropy or mse.
    #[arg(long)]
    pub criterion: Option<String>,
    /// Trees: deepest level a node may sit at (the root is 0).
    #[arg(long)]
    pub max_depth: Option<usize>,
    /// Trees: fewest samples a node needs to be split.
    #[arg(long)]
    pub min_samples_split: Option<usize>,
    /// Trees: fewest samples each leaf keeps.
    #[arg(long)]
    pub min_samples_leaf: Option<usize>,
    /// Trees: features each split considers: all, sqrt, log2, a count or a fraction.
    #[arg(long)]
    pub max_features: Option<String>,
    /// Forest: number of trees (default 100).
    #[arg(long)]
    pub trees: Option<usize>,
    /// Forest: whether each tree sees a bootstrap sample of the rows (default true).
    #[arg(long)]
    pub bootstrap: Option<bool>,
    /// Seed for shuffles, initialization and folds.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Hold out this fraction of the training rows and stop when their loss stops improving
    /// (gradient-trained models; the progress bar then shows the validation loss).
    #[arg(long)]
    pub validation_fraction: Option<f64>,
    /// k-fold cross-validation on the training data.
    #[arg(long)]
    pub cv: Option<usize>,
    /// Grid search, e.g. 'lr=0.1,0.01;hidden=32,64' (cross-validated with --cv, default 5);
    /// the best setting is refitted on all the training data.
    #[arg(long)]
    pub grid: Option<String>,
    /// The version this one derives from (lineage), e.g. iris@2.
    #[arg(long)]
    pub parent: Option<String>,
    /// Data the device's drift baseline describes, with the training data's columns (the
    /// target's values are not used); default: the training data. Retraining for a
    /// drifted group passes the inputs the group sent since the alert, the distribution
    /// the new model is to serve.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
}

fn model_kind(name: &str) -> Result<(ModelKind, Option<Task>)> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "linear" => (ModelKind::linear(), Some(Task::Regression)),
        "ridge" => (
            ModelKind::LinearRegression {
                penalty: Penalty::Ridge { alpha: 1.0 },
                solver: Solver::Exact,
            },
            Some(Task::Regression),
        ),
        "lasso" => (
            ModelKind::LinearRegression {
                penalty: Penalty::Lasso { alpha: 1.0 },
                solver: Solver::Exact,
            },
            Some(Task::Regression),
        ),
        "logistic" => (ModelKind::logistic(), Some(Task::Classification)),
        "softmax" => (
            ModelKind::Softmax {
                c: 1.0,
                solver: Solver::Lbfgs(Default::default()),
            },
            Some(Task::Classification),
        ),
        "mlp" => (ModelKind::mlp(vec![100]), None),
        "svm" | "linear_svm" => (ModelKind::linear_svm(), Some(Task::Classification)),
        "tree" | "decision_tree" => (ModelKind::decision_tree(), None),
        "forest" | "random_forest" => (ModelKind::random_forest(), None),
        _ => bail!(
            "unknown model kind {name:?}; available: {}",
            MODEL_KINDS.join(", ")
        ),
    })
}

/// Builds the model spec the options describe, without touching any file.
///
/// # Errors
/// An unknown model kind, a flag the model does not take, a bad value or grid spec.
pub fn spec_from_options(opts: &TrainOptions) -> Result<(ModelSpec, Task)> {
    let (mut kind, task) = model_kind(&opts.model)?;
    let task = match (opts.task.as_deref(), task) {
        (Some("regression"), _) => Task::Regression,
        (Some(_), _) => Task::Classification,
        (None, Some(t)) => t,
        (None, None) => Task::Classification,
    };
    let gradient_flags = opts.optimizer.is_some()
        || opts.lr.is_some()
        || opts.epochs.is_some()
        || opts.batch.is_some()
        || opts.schedule.is_some()
        || opts.weight_decay.is_some()
        || opts.validation_fraction.is_some();
    if gradient_flags && opts.solver.is_none() {
        match &mut kind {
            ModelKind::LinearRegression {
                penalty: Penalty::Lasso { .. },
                ..
            } => bail!(
                "lasso is solved by coordinate descent; --optimizer, --lr, --epochs and --batch do not apply"
            ),
            ModelKind::LinearRegression { solver, .. }
            | ModelKind::Logistic { solver, .. }
            | ModelKind::Softmax { solver, .. }
                if !matches!(solver, Solver::Gradient(_)) =>
            {
                *solver = Solver::Gradient(GradientConfig::default());
            }
            _ => {}
        }
    }
    let scaling = Scaling::from_name(&opts.scale).ok_or_else(|| {
        anyhow!(
            "bad --scale {:?}: expected standard, minmax or none",
            opts.scale
        )
    })?;
    let mut spec = ModelSpec { kind, scaling };
    if let Some(s) = &opts.solver {
        spec.set("solver", s)?;
    }
    // Models without a gradient solver take no seed; it still seeds the folds.
    let _ = spec.set("seed", &opts.seed.to_string());
    let tree_flags = [
        ("criterion", opts.criterion.clone()),
        ("max_depth", opts.max_depth.map(|v| v.to_string())),
        (
            "min_samples_split",
            opts.min_samples_split.map(|v| v.to_string()),
        ),
        (
            "min_samples_leaf",
            opts.min_samples_leaf.map(|v| v.to_string()),
        ),
        ("max_features", opts.max_features.clone()),
        ("trees", opts.trees.map(|v| v.to_string())),
        ("bootstrap", opts.bootstrap.map(|v| v.to_string())),
        ("schedule", opts.schedule.clone()),
        ("weight_decay", opts.weight_decay.map(|v| v.to_string())),
    ];
    for (name, value) in tree_flags {
        if let Some(v) = value {
            spec.set(name, &v)
                .with_context(|| format!("--{}", name.replace('_', "-")))?;
        }
    }
    if let Some(h) = &opts.hidden {
        if !matches!(spec.kind, ModelKind::Mlp { .. }) {
            bail!("--hidden applies to --model mlp only");
        }
        // Layers are comma-separated here, as --help says (`x` in --grid, where commas
        // separate the values tried); either is accepted.
        let widths = h
            .split([',', 'x'])
            .map(|w| w.trim().parse::<usize>().ok().filter(|&w| w > 0))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                anyhow!("bad --hidden {h:?}: expected layer widths such as 64 or 64,32")
            })?;
        let widths: Vec<String> = widths.iter().map(usize::to_string).collect();
        spec.set("hidden", &widths.join("x"))?;
    }
    if let Some(a) = &opts.activation {
        spec.set("activation", a)?;
    }
    if let Some(a) = opts.alpha {
        spec.set("alpha", &a.to_string())?;
    }
    if let Some(c) = opts.c {
        spec.set("c", &c.to_string())?;
    }
    if let Some(o) = &opts.optimizer {
        spec.set("optimizer", o)?;
    }
    if let Some(lr) = opts.lr {
        spec.set("lr", &lr.to_string())?;
    }
    if let Some(e) = opts.epochs {
        spec.set("epochs", &e.to_string())?;
    }
    if let Some(b) = opts.batch {
        spec.set("batch", &b.to_string())?;
    }
    if let Some(f) = opts.validation_fraction {
        if !(0.0..1.0).contains(&f) {
            bail!("bad --validation-fraction {f}: expected a fraction in [0, 1)");
        }
        let config = match &mut spec.kind {
            ModelKind::Mlp { config, .. } | ModelKind::LinearSvm { config, .. } => config,
            ModelKind::LinearRegression {
                solver: Solver::Gradient(config),
                ..
            }
            | ModelKind::Logistic {
                solver: Solver::Gradient(config),
                ..
            }
            | ModelKind::Softmax {
                solver: Solver::Gradient(config),
                ..
            } => config,
            _ => bail!("--validation-fraction applies to gradient-trained models only"),
        };
        let mut stopping = config
            .early_stopping
            .unwrap_or(train::optim::EarlyStopping {
                validation_fraction: 0.0,
                patience: 10,
                tol: 1e-4,
            });
        stopping.validation_fraction = f;
        config.early_stopping = Some(stopping);
    }
    if let Some(g) = &opts.grid {
        let grid = Grid::parse(g).with_context(|| format!("bad --grid {g:?}"))?;
        if grid.params.is_empty() {
            bail!("bad --grid {g:?}: no parameters (write e.g. 'lr=0.1,0.01;hidden=32,64')");
        }
        for combo in grid.combinations() {
            let mut trial = spec.clone();
            for (name, value) in &combo {
                trial
                    .set(name, value)
                    .with_context(|| format!("bad --grid {g:?}"))?;
            }
        }
    }
    if opts.cv == Some(0) || opts.cv == Some(1) {
        bail!("--cv needs at least 2 folds");
    }
    Ok((spec, task))
}

fn spec_params(spec: &ModelSpec, task: Task, target: &str) -> Value {
    let mut p = Map::new();
    p.insert("model".into(), json!(spec.kind.name()));
    p.insert("target".into(), json!(target));
    p.insert(
        "task".into(),
        json!(match task {
            Task::Classification => "classification",
            Task::Regression => "regression",
        }),
    );
    p.insert(
        "scaling".into(),
        json!(format!("{:?}", spec.scaling).to_lowercase()),
    );
    let gradient = |p: &mut Map<String, Value>, c: &GradientConfig| {
        p.insert("solver".into(), json!("gradient"));
        let optimizer = format!("{:?}", c.optimizer);
        let optimizer = optimizer.split([' ', '{']).next().unwrap_or_default();
        p.insert("optimizer".into(), json!(optimizer.to_lowercase()));
        p.insert("lr".into(), json!(c.learning_rate));
        p.insert("epochs".into(), json!(c.epochs));
        p.insert("batch".into(), json!(c.batch_size));
        p.insert("seed".into(), json!(c.seed));
        let schedule = match c.schedule {
            Schedule::Constant => "constant".to_string(),
            Schedule::Step { every, gamma } => format!("step:{every}:{gamma}"),
            Schedule::Cosine { min_lr } => format!("cosine:{min_lr}"),
        };
        p.insert("schedule".into(), json!(schedule));
        let weight_decay = match c.optimizer {
            OptimizerKind::AdamW { weight_decay, .. } => weight_decay,
            _ => c.weight_decay,
        };
        p.insert("weight_decay".into(), json!(weight_decay));
        if let Some(e) = c.early_stopping {
            p.insert(
                "early_stopping".into(),
                json!({"validation_fraction": e.validation_fraction, "patience": e.patience, "tol": e.tol}),
            );
        }
    };
    let solver = |p: &mut Map<String, Value>, s: &Solver| match s {
        Solver::Exact => {
            p.insert("solver".into(), json!("exact"));
        }
        Solver::Lbfgs(_) => {
            p.insert("solver".into(), json!("lbfgs"));
        }
        Solver::Gradient(c) => gradient(p, c),
    };
    match &spec.kind {
        ModelKind::LinearRegression { penalty, solver: s } => {
            match penalty {
                Penalty::None => {}
                Penalty::Ridge { alpha } => {
                    p.insert("penalty".into(), json!("ridge"));
                    p.insert("alpha".into(), json!(alpha));
                }
                Penalty::Lasso { alpha } => {
                    p.insert("penalty".into(), json!("lasso"));
                    p.insert("alpha".into(), json!(alpha));
                }
            }
            solver(&mut p, s);
        }
        ModelKind::Logistic { c, solver: s } | ModelKind::Softmax { c, solver: s } => {
            p.insert("c".into(), json!(c));
            solver(&mut p, s);
        }
        ModelKind::Mlp {
            hidden,
            activation,
            alpha,
            config,
        } => {
            p.insert("hidden".into(), json!(hidden));
            p.insert(
                "activation".into(),
                json!(format!("{activation:?}").to_lowercase()),
            );
            p.insert("alpha".into(), json!(alpha));
            gradient(&mut p, config);
        }
        ModelKind::LinearSvm { c, config } => {
            p.insert("c".into(), json!(c));
            gradient(&mut p, config);
        }
        ModelKind::DecisionTree { params } => tree_params(&mut p, params),
        ModelKind::RandomForest { params } => {
            p.insert("n_estimators".into(), json!(params.n_estimators));
            p.insert("bootstrap".into(), json!(params.bootstrap));
            p.insert("seed".into(), json!(params.seed));
            tree_params(&mut p, &params.tree);
        }
    }
    Value::Object(p)
}

fn tree_params(p: &mut Map<String, Value>, t: &crate::train::tree::TreeParams) {
    p.insert(
        "criterion".into(),
        json!(format!("{:?}", t.criterion).to_lowercase()),
    );
    p.insert("max_depth".into(), json!(t.max_depth));
    p.insert("min_samples_split".into(), json!(t.min_samples_split));
    p.insert("min_samples_leaf".into(), json!(t.min_samples_leaf));
    p.insert(
        "max_features".into(),
        json!(format!("{:?}", t.max_features).to_lowercase()),
    );
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        train: TrainOptions,
    }

    fn options(args: &[&str]) -> TrainOptions {
        let mut all = vec!["train", "data.csv", "--target", "y"];
        all.extend_from_slice(args);
        Args::try_parse_from(all).expect("arguments parse").train
    }

    fn spec_error(args: &[&str]) -> String {
        format!("{:#}", spec_from_options(&options(args)).unwrap_err())
    }

    #[test]
    fn options_become_specs() {
        let (spec, task) = spec_from_options(&options(&[
            "--model", "mlp", "--hidden", "64,32", "--lr", "0.01",
        ]))
        .unwrap();
        assert_eq!(task, Task::Classification);
        match spec.kind {
            ModelKind::Mlp { hidden, config, .. } => {
                assert_eq!(hidden, [64, 32]);
                assert_eq!(config.learning_rate, 0.01);
            }
            other => panic!("{other:?}"),
        }
        let (spec, task) = spec_from_options(&options(&[
            "--model",
            "logistic",
            "--optimizer",
            "adamw",
            "--scale",
            "minmax",
        ]))
        .unwrap();
        assert_eq!(
            (task, spec.scaling),
            (Task::Classification, Scaling::MinMax)
        );
        assert!(matches!(
            spec.kind,
            ModelKind::Logistic {
                solver: Solver::Gradient(_),
                ..
            }
        ));
        let (spec, task) =
            spec_from_options(&options(&["--model", "ridge", "--alpha", "0.5"])).unwrap();
        assert_eq!(task, Task::Regression);
        assert!(matches!(
            spec.kind,
            ModelKind::LinearRegression {
                penalty: Penalty::Ridge { alpha: 0.5 },
                ..
            }
        ));
        let (spec, _) = spec_from_options(&options(&[
            "--model",
            "mlp",
            "--activation",
            "tanh",
            "--task",
            "regression",
        ]))
        .unwrap();
        assert!(matches!(
            spec.kind,
            ModelKind::Mlp {
                activation: train::Activation::Tanh,
                ..
            }
        ));
        let (spec, _) = spec_from_options(&options(&["--model", "logistic", "--C", "10"])).unwrap();
        assert!(matches!(spec.kind, ModelKind::Logistic { c: 10.0, .. }));
    }

    #[test]
    fn bad_options_are_named() {
        assert!(spec_error(&["--model", "forest", "--hidden", "8"]).contains("--hidden"));
        // The message gives the form --help gives.
        assert_eq!(
            spec_error(&["--model", "mlp", "--hidden", "64,x"]),
            "bad --hidden \"64,x\": expected layer widths such as 64 or 64,32"
        );
        assert!(spec_error(&["--model", "knn"]).contains("unknown model kind \"knn\""));
        assert!(spec_error(&["--model", "logistic", "--hidden", "8"]).contains("--hidden"));
        assert!(spec_error(&["--model", "linear", "--alpha", "1"]).contains("alpha"));
        assert!(spec_error(&["--model", "mlp", "--activation", "gelu"]).contains("gelu"));
        assert!(spec_error(&["--model", "lasso", "--lr", "0.1"]).contains("coordinate descent"));
        assert!(spec_error(&["--model", "linear", "--scale", "log"]).contains("--scale"));
        assert!(spec_error(&["--model", "mlp", "--grid", "lr"]).contains("--grid"));
        assert!(spec_error(&["--model", "mlp", "--grid", "depth=2"]).contains("depth"));
        assert!(spec_error(&["--model", "mlp", "--cv", "1"]).contains("--cv"));
        assert!(
            spec_error(&["--model", "mlp", "--validation-fraction", "1.5"])
                .contains("--validation-fraction")
        );
        let (spec, _) = spec_from_options(&options(&[
            "--model",
            "svm",
            "--validation-fraction",
            "0.2",
        ]))
        .unwrap();
        assert!(matches!(
            spec.kind,
            ModelKind::LinearSvm { config, .. }
                if config.early_stopping.map(|e| e.validation_fraction) == Some(0.2)
        ));
    }
}
