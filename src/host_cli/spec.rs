//! The `perch-host train` flags ([`TrainOptions`], also kept with each version as its
//! training recipe) and the model spec they describe, checked before any data is read.

use crate::train::data::Task;
use crate::train::optim::{GradientConfig, OptimizerKind, Schedule};
use crate::train::scale::Scaling;
use crate::train::select::Grid;
use crate::train::{self, ModelKind, ModelSpec, Penalty, Solver};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use std::path::PathBuf;

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

pub(crate) fn spec_params(spec: &ModelSpec, task: Task, target: &str) -> Value {
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
