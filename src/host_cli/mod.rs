//! The `perch-host train / eval / models / import` commands as library functions (feature
//! `host`): training into the [`registry`](crate::registry), evaluating a registered version on a CSV file,
//! and the registry's listing, comparison, tagging, aliasing, deletion and export.
//!
//! Every command returns a JSON document (the machine-readable contract: `train` and `eval`
//! give at least `name`, `version`, `metrics` and, for `train`, `fit_seconds`); the binary
//! prints it with `--json` or renders it as text.

pub mod demo;
pub mod fleet;
pub mod lifecycle;
pub mod optimize;

use crate::registry::{
    ArtifactFormat, DatasetInfo, ModelRef, Payload, Registry, Version, VersionInfo,
};
use crate::runtime::{self, EngineChoice, OutputValues};

use crate::train::data::{Column, ColumnEncoding, Dataset, Schema, TargetEncoding, Task};
use crate::train::metrics::{self, Average};
use crate::train::optim::{GradientConfig, OptimizerKind, Schedule};
use crate::train::scale::Scaling;
use crate::train::select::{self, Grid};
use crate::train::{self, Evaluation, ModelKind, ModelSpec, Penalty, Solver};
use anyhow::{Context, Result, anyhow, bail};
use ndarray::Array2;
use serde_json::{Map, Value, json};
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

/// Metrics as a JSON map with lower snake case names.
pub fn metrics_json(e: &Evaluation) -> Value {
    match e {
        Evaluation::Classification {
            accuracy,
            f1_macro,
            f1_weighted,
            log_loss,
            roc_auc,
        } => {
            let mut m = json!({
                "accuracy": accuracy,
                "f1_macro": f1_macro,
                "f1_weighted": f1_weighted,
                "log_loss": log_loss,
            });
            if let Some(a) = roc_auc {
                m["roc_auc"] = json!(a);
            }
            m
        }
        Evaluation::Regression { r2, mse, mae } => json!({ "r2": r2, "mse": mse, "mae": mae }),
    }
}

/// Classifier metrics from class probabilities `[n, k]`: `accuracy`, `precision_*`,
/// `recall_*` and `f1_*` (`macro` and `weighted`), `log_loss`, `roc_auc` (when every class
/// occurs), and the confusion matrix (rows: truth, columns: prediction).
pub fn classification_metrics(truth: &[usize], p: ndarray::ArrayView2<'_, f64>) -> (Value, Value) {
    let k = p.ncols();
    let predicted = metrics::argmax_rows(p);
    let scores = metrics::ClassScores::new(truth, &predicted, k);
    let mut m = json!({
        "accuracy": metrics::accuracy(truth, &predicted),
        "precision_macro": scores.precision(Average::Macro),
        "precision_weighted": scores.precision(Average::Weighted),
        "recall_macro": scores.recall(Average::Macro),
        "recall_weighted": scores.recall(Average::Weighted),
        "f1_macro": scores.f1(Average::Macro),
        "f1_weighted": scores.f1(Average::Weighted),
        "log_loss": metrics::log_loss(truth, p),
    });
    if let Some(a) = metrics::roc_auc(truth, p) {
        m["roc_auc"] = json!(a);
    }
    let cm = metrics::confusion_matrix(truth, &predicted, k);
    let cm: Vec<Vec<u64>> = cm.rows().into_iter().map(|r| r.to_vec()).collect();
    (m, json!(cm))
}

/// Scores a trained model on labelled data: metrics and, for classifiers, the confusion
/// matrix.
fn score(fitted: &train::Fitted, data: &Dataset) -> Result<(Value, Option<Value>)> {
    Ok(match &data.target {
        train::data::Target::Classes(y) => {
            let p = fitted.predict_proba(data.features.view())?;
            let (m, cm) = classification_metrics(y, p.view());
            (m, Some(cm))
        }
        train::data::Target::Values(_) => (metrics_json(&fitted.evaluate(data)?), None),
    })
}

/// The training data's encoding as JSON, stored with each version so `eval` encodes new
/// data the same way.
pub fn schema_to_json(schema: &Schema) -> Value {
    let columns: Vec<Value> = schema
        .columns
        .iter()
        .map(|c| match &c.encoding {
            ColumnEncoding::Numeric { fill } => {
                json!({"name": c.name, "kind": "numeric", "fill": fill})
            }
            ColumnEncoding::Categorical { categories, fill } => json!({
                "name": c.name, "kind": "categorical", "categories": categories, "fill": fill
            }),
        })
        .collect();
    let target = match &schema.target_encoding {
        TargetEncoding::Classes { labels, numeric } => {
            json!({"kind": "classes", "labels": labels, "numeric": numeric})
        }
        TargetEncoding::Values => json!({"kind": "values"}),
    };
    json!({"columns": columns, "target": schema.target, "target_encoding": target})
}

/// Reads what [`schema_to_json`] wrote.
///
/// # Errors
/// A document of another shape.
pub fn schema_from_json(v: &Value) -> Result<Schema> {
    let bad = || anyhow!("the registry's data schema is damaged: {v}");
    let text = |v: &Value| v.as_str().map(str::to_string).ok_or_else(bad);
    let strings = |v: &Value| -> Result<Vec<String>> {
        v.as_array().ok_or_else(bad)?.iter().map(text).collect()
    };
    let mut columns = Vec::new();
    for c in v["columns"].as_array().ok_or_else(bad)? {
        let encoding = match c["kind"].as_str() {
            Some("numeric") => ColumnEncoding::Numeric {
                fill: c["fill"].as_f64().unwrap_or(f64::NAN),
            },
            Some("categorical") => ColumnEncoding::Categorical {
                categories: strings(&c["categories"])?,
                fill: text(&c["fill"])?,
            },
            _ => return Err(bad()),
        };
        columns.push(Column {
            name: text(&c["name"])?,
            encoding,
            missing: 0,
        });
    }
    let t = &v["target_encoding"];
    let target_encoding = match t["kind"].as_str() {
        Some("classes") => TargetEncoding::Classes {
            labels: strings(&t["labels"])?,
            numeric: match &t["numeric"] {
                Value::Null => None,
                n => Some(
                    n.as_array()
                        .ok_or_else(bad)?
                        .iter()
                        .map(|x| x.as_i64().ok_or_else(bad))
                        .collect::<Result<_>>()?,
                ),
            },
        },
        Some("values") => TargetEncoding::Values,
        _ => return Err(bad()),
    };
    Ok(Schema {
        columns,
        target: text(&v["target"])?,
        target_encoding,
    })
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

/// `text` with every character a registry name does not allow replaced by `_`.
fn name_chars(text: &str) -> String {
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

/// Trains the model `opts` describe, scores it (on `--test` when given, else on the
/// training data), and registers it as the next version of its name. Returns the report:
/// `name`, `version`, `ref`, `metrics`, `evaluated_on`, `fit_seconds`, and `cv` / `grid`
/// when asked.
///
/// # Errors
/// Bad options (checked before any data is read), unreadable or bad data (naming file, row
/// and column), training failures, registry failures. Nothing is registered on error.
pub fn train(registry: &mut Registry, opts: &TrainOptions) -> Result<Value> {
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
    let mut report = Map::new();
    let k = opts.cv.unwrap_or(5);
    let started = std::time::Instant::now();
    let fitted = if let Some(g) = &opts.grid {
        let grid = Grid::parse(g)?;
        let result = select::grid_search(&spec, &grid, &data, k, opts.seed)
            .with_context(|| format!("grid search {g:?}"))?;
        let table: Vec<Value> = result
            .table
            .iter()
            .map(|row| {
                let params: Map<String, Value> = row
                    .params
                    .iter()
                    .map(|(n, v)| (n.clone(), json!(v)))
                    .collect();
                json!({"params": params, "mean": row.scores.mean(), "std": row.scores.std(),
                       "folds": row.scores.folds})
            })
            .collect();
        report.insert(
            "grid".into(),
            json!({"k": k, "table": table, "best": result.best}),
        );
        result.model
    } else {
        if let Some(k) = opts.cv {
            let scores = select::cv(&spec, &data, k, opts.seed)
                .with_context(|| format!("{k}-fold cross-validation"))?;
            report.insert(
                "cv".into(),
                json!({"k": k, "folds": scores.folds, "mean": scores.mean(), "std": scores.std()}),
            );
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
    if let Some(cm) = confusion {
        report.insert("confusion_matrix".into(), cm);
    }
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
    let mut stored_metrics = metrics.clone();
    if let (Some(m), Value::Object(t)) = (stored_metrics.as_object_mut(), &train_metrics) {
        for (k, v) in t {
            m.insert(format!("train_{k}"), v.clone());
        }
        m.insert("evaluated_on".into(), json!(evaluated_on));
    }
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
            metrics: stored_metrics,
            fit_seconds: Some(fit_seconds),
            dataset,
            data_schema: Some(schema_to_json(&data.schema)),
            parent,
            data_files: Some(data_files_json(&opts.data, opts.test.as_deref())?),
        },
    )?;
    report.insert("name".into(), json!(version.name));
    report.insert("version".into(), json!(version.number));
    report.insert(
        "ref".into(),
        json!(format!("{}@{}", version.name, version.number)),
    );
    report.insert("model".into(), json!(fitted.spec.kind.name()));
    report.insert("metrics".into(), metrics);
    report.insert("evaluated_on".into(), json!(evaluated_on));
    report.insert("train_metrics".into(), train_metrics);
    report.insert("fit_seconds".into(), json!(fit_seconds));
    report.insert("total_seconds".into(), json!(search_seconds));
    report.insert("epochs".into(), json!(fitted.summary.epochs));
    report.insert("params".into(), params);
    report.insert("artifact_sha256".into(), json!(version.artifact_sha256));
    report.insert("size_bytes".into(), json!(version.size_bytes));
    Ok(Value::Object(report))
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

/// `{"train": {"path", "sha256"}, "test": {...}}` with absolute paths, so that later
/// commands (`optimize`) can find the data again and tell whether it changed.
fn data_files_json(train: &Path, test: Option<&Path>) -> Result<Value> {
    let entry = |p: &Path| -> Result<Value> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let path = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        Ok(json!({"path": path.display().to_string(), "sha256": sha256_hex(&bytes)}))
    };
    let mut files = Map::new();
    files.insert("train".into(), entry(train)?);
    if let Some(t) = test {
        files.insert("test".into(), entry(t)?);
    }
    Ok(Value::Object(files))
}

/// The data file a version recorded under `which` (`train` or `test`), checked to be
/// unchanged since.
///
/// # Errors
/// No record, a missing file, or a file whose SHA-256 differs from the recorded one.
pub fn recorded_data(version: &Version, which: &str) -> Result<PathBuf> {
    let entry = version
        .data_files
        .as_ref()
        .and_then(|f| f.get(which))
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
    let path = PathBuf::from(entry["path"].as_str().unwrap_or_default());
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading the {which} data {}@{} recorded ({})",
            version.name,
            version.number,
            path.display()
        )
    })?;
    if entry["sha256"].as_str() != Some(sha256_hex(&bytes).as_str()) {
        bail!(
            "the {which} data of {}@{} ({}) changed since it was trained",
            version.name,
            version.number,
            path.display()
        );
    }
    Ok(path)
}

fn load_runtime(registry: &Registry, version: &Version) -> Result<runtime::Model> {
    let bytes = registry.artifact_bytes(version)?;
    Ok(match version.format {
        ArtifactFormat::Perch => runtime::Model::from_artifact_bytes(&bytes)?,
        ArtifactFormat::Onnx => runtime::Model::from_onnx_bytes(&bytes, EngineChoice::Auto)?,
    })
}

/// Scores the version `r` names on the labelled CSV `data`, encoded with the version's
/// training schema, running the stored artifact itself. Returns `name`, `version`,
/// `metrics`, `rows`, `predictions` (the model's labels or values per row) and, for
/// classifiers, `confusion_matrix`.
///
/// A version without a recorded schema (an imported model) needs `target`: the other
/// columns are its inputs in file order, a model with a `probabilities` output is scored as
/// a classifier over the sorted class labels, any other as a regressor on `variable`.
///
/// # Errors
/// An unknown reference, an imported version without `target`, bad data, or a model whose
/// outputs are not `probabilities` / `variable`.
pub fn eval(registry: &Registry, r: &ModelRef, data: &Path, target: Option<&str>) -> Result<Value> {
    let version = registry.resolve(r)?;
    let mut model = load_runtime(registry, &version)?;
    let load = |schema: &Schema| Dataset::load_with_schema(data, schema).context("evaluation data");
    let (dataset, schema) = match (&version.data_schema, target) {
        (Some(schema), _) => {
            let schema = schema_from_json(schema)?;
            (load(&schema)?, schema)
        }
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
    let mut report = Map::new();
    report.insert("name".into(), json!(version.name));
    report.insert("version".into(), json!(version.number));
    report.insert(
        "ref".into(),
        json!(format!("{}@{}", version.name, version.number)),
    );
    report.insert("data".into(), json!(data.display().to_string()));
    score_runtime(&mut model, &dataset, &schema, &mut report)
        .with_context(|| format!("scoring {}@{}", version.name, version.number))?;
    Ok(Value::Object(report))
}

/// Runs `model` on `dataset` (encoded with `schema`) and adds `rows`, `metrics`,
/// `predictions` and, for classifiers, `classes` and `confusion_matrix` to `report`.
///
/// # Errors
/// A model whose outputs are not `probabilities` / `variable` of the schema's shape.
pub fn score_runtime(
    model: &mut runtime::Model,
    dataset: &Dataset,
    schema: &Schema,
    report: &mut Map<String, Value>,
) -> Result<()> {
    let n = dataset.n_rows();
    let x: Vec<f32> = dataset.features_f32().iter().copied().collect();
    let outputs = model.run(&x, n).context("running the model")?;
    let find = |name: &str| outputs.iter().find(|o| o.name == name);
    report.insert("rows".into(), json!(n));
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
            let (scores, confusion) = classification_metrics(truth, p.view());
            report.insert("metrics".into(), scores);
            report.insert("confusion_matrix".into(), confusion);
            let predicted = metrics::argmax_rows(p.view());
            report.insert("classes".into(), json!(labels));
            let predictions: Vec<Value> = predicted
                .iter()
                .map(|&i| match numeric.as_ref().and_then(|nums| nums.get(i)) {
                    Some(n) => json!(n),
                    None => json!(labels.get(i)),
                })
                .collect();
            report.insert("predictions".into(), Value::Array(predictions));
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
            report.insert("metrics".into(), metrics_json(&evaluation));
            report.insert("predictions".into(), json!(predicted));
        }
        _ => bail!("the data's target does not match the model's schema"),
    }
    Ok(())
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

/// A version as JSON (everything the registry keeps but the data schema).
pub fn version_json(v: &Version) -> Value {
    json!({
        "name": v.name,
        "version": v.number,
        "ref": format!("{}@{}", v.name, v.number),
        "format": v.format.name(),
        "artifact_sha256": v.artifact_sha256,
        "size_bytes": v.size_bytes,
        "params": v.params,
        "metrics": metrics_with_origin(v),
        "fit_seconds": v.fit_seconds,
        "created_unix_s": v.created_unix_s,
        "created": crate::cli::utc_time(v.created_unix_s),
        "dataset": v.dataset.as_ref().map(|d| json!({
            "sha256": d.sha256, "rows": d.rows, "columns": d.columns,
            "feature_stats": d.feature_stats,
        })),
        "parent": v.parent,
        "tags": v.tags,
        "aliases": v.aliases,
    })
}

/// Every version as a JSON array.
///
/// # Errors
/// Registry failures.
pub fn list(registry: &Registry) -> Result<Value> {
    Ok(Value::Array(
        registry.list()?.iter().map(version_json).collect(),
    ))
}

/// What differs between two versions: parameters, metrics (with `b - a`), dataset and
/// artifact.
///
/// # Errors
/// Unknown references.
pub fn diff(registry: &Registry, a: &ModelRef, b: &ModelRef) -> Result<Value> {
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
    let mut params = Map::new();
    for k in keys(&va.params, &vb.params) {
        if va.params[&k] != vb.params[&k] {
            params.insert(k.clone(), json!({"a": va.params[&k], "b": vb.params[&k]}));
        }
    }
    let mut metrics = Map::new();
    for k in keys(&va.metrics, &vb.metrics) {
        let (x, y) = (&va.metrics[&k], &vb.metrics[&k]);
        let delta = match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => json!(y - x),
            _ => Value::Null,
        };
        metrics.insert(k, json!({"a": x, "b": y, "delta": delta}));
    }
    let same_data = match (&va.dataset, &vb.dataset) {
        (Some(x), Some(y)) => Some(x.sha256 == y.sha256),
        _ => None,
    };
    Ok(json!({
        "a": format!("{}@{}", va.name, va.number),
        "b": format!("{}@{}", vb.name, vb.number),
        "params": params,
        "metrics": metrics,
        "same_dataset": same_data,
        "same_artifact": va.artifact_sha256 == vb.artifact_sha256,
        "size_bytes": {"a": va.size_bytes, "b": vb.size_bytes},
        "fit_seconds": {"a": va.fit_seconds, "b": vb.fit_seconds},
    }))
}

/// Writes the artifact of the version `r` names to `output` in `format`: `perch` (native
/// versions as stored) or `onnx` (native versions through [`crate::export`], ONNX versions as
/// stored). An ONNX version has no native form to export.
///
/// # Errors
/// Unknown references, an unsupported format, a graph the exporter cannot write, I/O
/// failures.
pub fn export(registry: &Registry, r: &ModelRef, format: &str, output: &Path) -> Result<Value> {
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
    Ok(json!({
        "name": version.name,
        "version": version.number,
        "format": wanted.name(),
        "output": output.display().to_string(),
        "size_bytes": bytes.len(),
        "sha256": sha256_hex(&bytes),
    }))
}

/// Registers an external ONNX model: converted to a native artifact when every op
/// translates, else kept as ONNX bytes (format `onnx`) when perch's ONNX path loads it.
///
/// # Errors
/// Unreadable files, models neither path can load, registry failures.
pub fn import(registry: &mut Registry, model: &Path, name: Option<&str>) -> Result<Value> {
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
    let mut v = version_json(&version);
    v["note"] = json!(note);
    Ok(v)
}

/// Metrics as `name=value` pairs, then `(on the training data)` when they were measured
/// there: a training-set figure must never pass for a test one.
fn fmt_metrics(m: &Value) -> String {
    let Some(map) = m.as_object() else {
        return String::new();
    };
    let mut text = map
        .iter()
        .filter(|(k, _)| !k.starts_with("train_") && k.as_str() != "evaluated_on")
        .map(|(k, v)| match v.as_f64() {
            Some(x) => format!("{k}={x:.4}"),
            None => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ");
    if map.get("evaluated_on").and_then(Value::as_str) == Some("train") && !text.is_empty() {
        text.push_str(" (on the training data)");
    }
    text
}

/// Human-readable text for a `train` or `eval` report.
pub fn render_report(r: &Value) -> String {
    let mut s = format!(
        "{}@{}: {}",
        r["name"].as_str().unwrap_or("?"),
        r["version"],
        fmt_metrics(&r["metrics"])
    );
    match r["evaluated_on"].as_str() {
        Some("train") => {
            s.push_str(" (on the training data: give --test FILE for held-out figures)")
        }
        Some(on) => s.push_str(&format!(" (on the {on} data)")),
        None => {}
    }
    if let Some(f) = r["fit_seconds"].as_f64() {
        s.push_str(&format!(", fit {f:.3} s"));
    }
    if let Some(cv) = r.get("cv") {
        s.push_str(&format!(
            "\n{}-fold CV: {:.4} ± {:.4}",
            cv["k"],
            cv["mean"].as_f64().unwrap_or(f64::NAN),
            cv["std"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    if let Some(g) = r.get("grid") {
        s.push_str(&format!("\ngrid ({}-fold CV):", g["k"]));
        for (i, row) in g["table"].as_array().into_iter().flatten().enumerate() {
            let best = if g["best"].as_u64() == Some(i as u64) {
                " ← best"
            } else {
                ""
            };
            s.push_str(&format!(
                "\n  {} {:.4} ± {:.4}{best}",
                row["params"],
                row["mean"].as_f64().unwrap_or(f64::NAN),
                row["std"].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    s
}

/// Human-readable text for one version.
pub fn render_version(v: &Value) -> String {
    let mut s = format!(
        "{}  ({} artifact, {} bytes, sha256 {})\n  metrics: {}\n  params:  {}\n",
        v["ref"].as_str().unwrap_or("?"),
        v["format"].as_str().unwrap_or("?"),
        v["size_bytes"],
        v["artifact_sha256"].as_str().unwrap_or("?"),
        fmt_metrics(&v["metrics"]),
        v["params"]
    );
    if let Some(c) = v["created"].as_str() {
        s.push_str(&format!("  created: {c} UTC\n"));
    }
    if let Some(f) = v["fit_seconds"].as_f64() {
        s.push_str(&format!("  fit:     {f:.3} s\n"));
    }
    if let Some(d) = v["dataset"].as_object() {
        s.push_str(&format!(
            "  data:    sha256 {} ({} rows, {} columns)\n",
            d["sha256"].as_str().unwrap_or("?"),
            d["rows"],
            d["columns"]
        ));
    }
    if let Some(p) = v["parent"].as_str() {
        s.push_str(&format!("  parent:  {p}\n"));
    }
    for (key, label) in [("aliases", "aliases"), ("tags", "tags")] {
        let items: Vec<&str> = v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
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

/// Human-readable table of versions.
pub fn render_list(list: &Value) -> String {
    let mut s = String::from("VERSION                  FORMAT  ALIASES             METRICS\n");
    for v in list.as_array().into_iter().flatten() {
        let aliases: Vec<&str> = v["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        s.push_str(&format!(
            "{:<24} {:<7} {:<19} {}\n",
            v["ref"].as_str().unwrap_or("?"),
            v["format"].as_str().unwrap_or("?"),
            aliases.join(","),
            fmt_metrics(&v["metrics"])
        ));
    }
    s
}

/// Human-readable text for a diff.
pub fn render_diff(d: &Value) -> String {
    let mut s = format!(
        "{} → {}\n",
        d["a"].as_str().unwrap_or("?"),
        d["b"].as_str().unwrap_or("?")
    );
    for (k, v) in d["params"].as_object().into_iter().flatten() {
        s.push_str(&format!("  param  {k}: {} → {}\n", v["a"], v["b"]));
    }
    for (k, v) in d["metrics"].as_object().into_iter().flatten() {
        match v["delta"].as_f64() {
            Some(delta) => s.push_str(&format!(
                "  metric {k}: {} → {} ({delta:+.4})\n",
                v["a"], v["b"]
            )),
            None => s.push_str(&format!("  metric {k}: {} → {}\n", v["a"], v["b"])),
        }
    }
    s.push_str(&format!(
        "  same dataset: {}, same artifact: {}\n",
        d["same_dataset"], d["same_artifact"]
    ));
    s
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::util::to_hex(&sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        bytes,
    )))
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

    #[test]
    fn schema_json_round_trips() {
        let schema = Schema {
            columns: vec![
                Column {
                    name: "size".into(),
                    encoding: ColumnEncoding::Numeric { fill: 2.5 },
                    missing: 0,
                },
                Column {
                    name: "color".into(),
                    encoding: ColumnEncoding::Categorical {
                        categories: vec!["blue".into(), "red".into()],
                        fill: "red".into(),
                    },
                    missing: 0,
                },
            ],
            target: "kind".into(),
            target_encoding: TargetEncoding::Classes {
                labels: vec!["3".into(), "7".into()],
                numeric: Some(vec![3, 7]),
            },
        };
        assert_eq!(schema_from_json(&schema_to_json(&schema)).unwrap(), schema);
        let values = Schema {
            target_encoding: TargetEncoding::Values,
            ..schema
        };
        assert_eq!(schema_from_json(&schema_to_json(&values)).unwrap(), values);
        assert!(schema_from_json(&json!({"columns": 3})).is_err());
    }
}
