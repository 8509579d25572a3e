//! Training on the host (feature `host`): CSV datasets, preprocessing baked into the model,
//! linear and neural models, optimizers, metrics, cross-validation and grid search. Every
//! trained model becomes a native [`graph::Model`](crate::graph::Model) that the
//! [`engine`](crate::engine) runs unchanged.
//!
//! # Layout
//! - [`data`]: CSV → [`Dataset`] (encoding, imputation, labels, fingerprint, statistics,
//!   seeded splits).
//! - [`scale`]: standard / min-max scaling, exported as the model's first layer.
//! - [`optim`]: optimizers over flat parameter slices, schedules, the mini-batch loop with
//!   early stopping and a progress callback, and full-batch L-BFGS.
//! - `net` (private): the dense-layer stack all linear models and the MLP share, its
//!   losses and gradients, and its graph.
//! - `linear` (private): normal equations (Cholesky) and lasso coordinate descent.
//! - [`metrics`]: accuracy, precision / recall / F1, ROC-AUC, log-loss, confusion matrix,
//!   MSE, MAE, R².
//! - [`select`]: k-fold cross-validation and grid search.
//! - [`tree`]: CART decision trees (gini / entropy / MSE); [`forest`]: random forests
//!   (bootstrap, feature subsampling, trees trained in parallel). Both export to the native
//!   tree-ensemble layer.
//!
//! # Example
//! ```no_run
//! use perch::train::{self, data::{Dataset, Task}, ModelKind, ModelSpec, scale::Scaling};
//!
//! let data = Dataset::load("iris_train.csv", "target", Task::Classification)?;
//! let spec = ModelSpec { kind: ModelKind::logistic(), scaling: Scaling::Standard };
//! let fitted = train::fit(&spec, &data, None)?;
//! let test = Dataset::load_with_schema("iris_test.csv", &data.schema)?;
//! println!("accuracy {:.3}", fitted.evaluate(&test)?.primary());
//! let model = fitted.to_model("iris-logistic");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod data;
pub mod forest;
mod linear;
pub mod metrics;
pub(crate) mod net;
pub mod optim;
pub mod scale;
pub mod select;
pub mod tree;

use crate::graph::{Metadata, Model};
use data::{DataError, Dataset, Schema, Target, TargetEncoding};
use metrics::Average;
use ndarray::{Array2, ArrayView2};
use net::{Head, Labels, NetObjective, Network};
use optim::{FitSummary, GradientConfig, LbfgsConfig, Progress};
use scale::{Scaler, Scaling};
use std::time::Instant;

pub use net::Activation;

/// Why training, evaluation or a search spec failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Loading or splitting data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A model used on the wrong kind of target.
    #[error("{model} needs a {needs} target, but the dataset's target {target:?} is not one")]
    TaskMismatch {
        /// Model name.
        model: &'static str,
        /// `classification` or `regression`.
        needs: &'static str,
        /// Target column.
        target: String,
    },
    /// Features of a different width than the model was trained on.
    #[error("the model takes {expected} features, the data has {got}")]
    FeatureCount {
        /// Trained width.
        expected: usize,
        /// Given width.
        got: usize,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training {model} diverged (loss {loss} after {epochs} epochs); lower the learning rate or scale the features"
    )]
    Diverged {
        /// Model name.
        model: &'static str,
        /// Last loss.
        loss: f64,
        /// Epochs run.
        epochs: usize,
    },
    /// A hyper-parameter value that cannot be used.
    #[error("bad hyper-parameter {name}={value:?}: {reason}")]
    BadParam {
        /// Parameter name.
        name: String,
        /// The value.
        value: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// Growing a tree or forest failed.
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
}

/// Regularization of linear regression, in scikit-learn's terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Penalty {
    /// Ordinary least squares.
    None,
    /// `‖y - Xw‖² + alpha·‖w‖²` (scikit-learn `Ridge`).
    Ridge {
        /// Strength.
        alpha: f64,
    },
    /// `1/(2n)·‖y - Xw‖² + alpha·‖w‖₁` (scikit-learn `Lasso`), always solved by coordinate
    /// descent.
    Lasso {
        /// Strength.
        alpha: f64,
    },
}

/// How a smooth model is optimized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Solver {
    /// Closed form (linear regression only): normal equations with Cholesky.
    Exact,
    /// Full-batch L-BFGS to convergence.
    Lbfgs(LbfgsConfig),
    /// Mini-batch first-order optimization.
    Gradient(GradientConfig),
}

/// A model family and its hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelKind {
    /// Least squares with an optional ridge or lasso penalty; output `variable`.
    LinearRegression {
        /// Penalty.
        penalty: Penalty,
        /// [`Solver::Exact`] (default) or an iterative one; lasso ignores it.
        solver: Solver,
    },
    /// Logistic regression with an L2 penalty `1/(2C)·‖w‖²` on the summed loss
    /// (scikit-learn's `LogisticRegression`): binary with a sigmoid, multinomial (softmax)
    /// for more than two classes.
    Logistic {
        /// Inverse penalty strength (scikit-learn's default 1.0).
        c: f64,
        /// Optimizer (L-BFGS by default).
        solver: Solver,
    },
    /// Softmax (multinomial) regression, also for two classes.
    Softmax {
        /// Inverse penalty strength.
        c: f64,
        /// Optimizer.
        solver: Solver,
    },
    /// Multi-layer perceptron: softmax + cross-entropy for classification, squared error
    /// for regression (scikit-learn's `MLPClassifier` / `MLPRegressor` defaults).
    Mlp {
        /// Hidden layer widths.
        hidden: Vec<usize>,
        /// Hidden activation.
        activation: Activation,
        /// L2 strength as scikit-learn's `alpha`: `alpha/(2·batch)·‖W‖²` per batch.
        alpha: f64,
        /// Training loop.
        config: GradientConfig,
    },
    /// Linear SVM: hinge loss, one-vs-rest for more than two classes, L2 penalty
    /// `1/(2C)·‖w‖²` on the summed loss. Its `probabilities` output is the softmax of the
    /// margins, a ranking score rather than a calibrated probability.
    LinearSvm {
        /// Inverse penalty strength.
        c: f64,
        /// Training loop.
        config: GradientConfig,
    },
    /// CART decision tree (gini / entropy for classes, squared error for values). Trees
    /// split on raw feature values, so scaling is not applied.
    DecisionTree {
        /// Tree hyper-parameters.
        params: tree::TreeParams,
    },
    /// Random forest of CART trees (bootstrap, feature subsampling, parallel training).
    RandomForest {
        /// Forest hyper-parameters.
        params: forest::ForestParams,
    },
}

impl ModelKind {
    /// Ordinary least squares, closed form.
    pub fn linear() -> ModelKind {
        ModelKind::LinearRegression {
            penalty: Penalty::None,
            solver: Solver::Exact,
        }
    }

    /// scikit-learn's default `LogisticRegression()`.
    pub fn logistic() -> ModelKind {
        ModelKind::Logistic {
            c: 1.0,
            solver: Solver::Lbfgs(LbfgsConfig::default()),
        }
    }

    /// scikit-learn's default `MLPClassifier(hidden_layer_sizes=hidden)`.
    pub fn mlp(hidden: Vec<usize>) -> ModelKind {
        ModelKind::Mlp {
            hidden,
            activation: Activation::Relu,
            alpha: 1e-4,
            config: GradientConfig::default(),
        }
    }

    /// A linear SVM with C = 1 trained by Adam.
    pub fn decision_tree() -> ModelKind {
        ModelKind::DecisionTree {
            params: tree::TreeParams::default(),
        }
    }

    /// scikit-learn's `RandomForestClassifier` defaults (100 trees, √features per split).
    pub fn random_forest() -> ModelKind {
        ModelKind::RandomForest {
            params: forest::ForestParams::classifier(),
        }
    }

    /// A linear SVM with perch's defaults.
    pub fn linear_svm() -> ModelKind {
        ModelKind::LinearSvm {
            c: 1.0,
            config: GradientConfig {
                learning_rate: 0.01,
                batch_size: 32,
                ..GradientConfig::default()
            },
        }
    }

    /// Short name (`logistic`, `mlp`…).
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::LinearRegression { .. } => "linear",
            ModelKind::Logistic { .. } => "logistic",
            ModelKind::Softmax { .. } => "softmax",
            ModelKind::Mlp { .. } => "mlp",
            ModelKind::LinearSvm { .. } => "linear_svm",
            ModelKind::DecisionTree { .. } => "decision_tree",
            ModelKind::RandomForest { .. } => "random_forest",
        }
    }
}

/// What to train: a model and the scaling learned in front of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Family and hyper-parameters.
    pub kind: ModelKind,
    /// Preprocessing, exported as the first layer.
    pub scaling: Scaling,
}

impl ModelSpec {
    /// Sets one hyper-parameter by name, as a grid spec names it: `lr`, `epochs`, `batch`,
    /// `seed`, `optimizer`, `schedule` (`constant`, `step:EVERY[:GAMMA]`, `cosine[:MIN]`),
    /// `weight_decay`, `solver` (`exact`, `lbfgs`, `gd`), `hidden` (`64` or `64x32`),
    /// `activation`, `alpha`, `c`, `scaling`; trees: `max_depth`, `min_samples_split`,
    /// `min_samples_leaf`, `max_features` (`all`, `sqrt`, `log2`, a count or a fraction),
    /// `criterion`, and for forests `trees` and `bootstrap`.
    ///
    /// # Errors
    /// [`TrainError::BadParam`] for an unknown name, an unparsable value or a parameter
    /// the model does not have.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), TrainError> {
        let bad = |reason: &str| TrainError::BadParam {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let num = || value.parse::<f64>().map_err(|_| bad("expected a number"));
        let int = || {
            value
                .parse::<usize>()
                .map_err(|_| bad("expected a whole number"))
        };
        if name == "scaling" {
            self.scaling = Scaling::from_name(value)
                .ok_or_else(|| bad("expected none, standard or minmax"))?;
            return Ok(());
        }
        if let Some(tree) = match &mut self.kind {
            ModelKind::DecisionTree { params } => Some(params),
            ModelKind::RandomForest { params } => {
                match name {
                    "n_estimators" | "trees" => {
                        params.n_estimators = int()?.max(1);
                        return Ok(());
                    }
                    "bootstrap" => {
                        params.bootstrap =
                            value.parse().map_err(|_| bad("expected true or false"))?;
                        return Ok(());
                    }
                    "seed" => {
                        params.seed = value.parse().map_err(|_| bad("expected a whole number"))?;
                        return Ok(());
                    }
                    _ => {}
                }
                Some(&mut params.tree)
            }
            _ => None,
        } {
            match name {
                "max_depth" | "depth" => tree.max_depth = Some(int()?),
                "min_samples_split" => tree.min_samples_split = int()?.max(2),
                "min_samples_leaf" => tree.min_samples_leaf = int()?.max(1),
                "seed" => tree.seed = value.parse().map_err(|_| bad("expected a whole number"))?,
                "max_features" => {
                    tree.max_features = match value {
                        "all" => tree::MaxFeatures::All,
                        "sqrt" => tree::MaxFeatures::Sqrt,
                        "log2" => tree::MaxFeatures::Log2,
                        v if v.contains('.') => tree::MaxFeatures::Fraction(
                            num()
                                .ok()
                                .filter(|f| *f > 0.0 && *f <= 1.0)
                                .ok_or_else(|| {
                                    bad("expected all, sqrt, log2, a count or a fraction in (0, 1]")
                                })?,
                        ),
                        _ => tree::MaxFeatures::Count(int().ok().filter(|&n| n > 0).ok_or_else(
                            || bad("expected all, sqrt, log2, a count or a fraction in (0, 1]"),
                        )?),
                    }
                }
                "criterion" => {
                    tree.criterion = match value {
                        "gini" => tree::Criterion::Gini,
                        "entropy" => tree::Criterion::Entropy,
                        "mse" | "squared_error" => tree::Criterion::SquaredError,
                        _ => return Err(bad("expected gini, entropy or mse")),
                    }
                }
                _ => return Err(bad(&format!("not a parameter of {}", self.kind.name()))),
            }
            return Ok(());
        }
        if name == "solver" {
            let linear = matches!(self.kind, ModelKind::LinearRegression { .. });
            let solver = match &mut self.kind {
                ModelKind::LinearRegression {
                    penalty: Penalty::Lasso { .. },
                    ..
                } => return Err(bad("lasso is solved by coordinate descent")),
                ModelKind::LinearRegression { solver, .. }
                | ModelKind::Logistic { solver, .. }
                | ModelKind::Softmax { solver, .. } => solver,
                _ => return Err(bad(&format!("{} has no solver choice", self.kind.name()))),
            };
            *solver = match value {
                "exact" if linear => Solver::Exact,
                "exact" => return Err(bad("only linear regression has a closed form")),
                "lbfgs" => Solver::Lbfgs(LbfgsConfig::default()),
                "gd" | "gradient" | "sgd" => match solver {
                    Solver::Gradient(c) => Solver::Gradient(*c),
                    _ => Solver::Gradient(GradientConfig::default()),
                },
                _ => return Err(bad("expected exact, lbfgs or gd")),
            };
            return Ok(());
        }
        let config = match &mut self.kind {
            ModelKind::Mlp { config, .. } | ModelKind::LinearSvm { config, .. } => Some(config),
            ModelKind::Logistic { solver, .. }
            | ModelKind::Softmax { solver, .. }
            | ModelKind::LinearRegression { solver, .. } => match solver {
                Solver::Gradient(config) => Some(config),
                _ => None,
            },
            ModelKind::DecisionTree { .. } | ModelKind::RandomForest { .. } => None,
        };

        match (name, config) {
            ("lr" | "learning_rate", Some(c)) => c.learning_rate = num()?,
            ("epochs", Some(c)) => c.epochs = int()?,
            ("batch" | "batch_size", Some(c)) => c.batch_size = int()?.max(1),
            ("seed", Some(c)) => {
                c.seed = value.parse().map_err(|_| bad("expected a whole number"))?
            }
            ("optimizer", Some(c)) => {
                c.optimizer = optim::OptimizerKind::from_name(value)
                    .ok_or_else(|| bad("expected sgd, momentum, nesterov, rmsprop, adagrad, adadelta, adam or adamw"))?;
                // AdamW applies weight decay itself: hand it a decay set before it.
                if let optim::OptimizerKind::AdamW { weight_decay, .. } = &mut c.optimizer
                    && c.weight_decay > 0.0
                {
                    *weight_decay = std::mem::take(&mut c.weight_decay);
                }
            }
            ("schedule", Some(c)) => {
                c.schedule = optim::Schedule::from_spec(value).ok_or_else(|| {
                    bad("expected constant, step:EVERY[:GAMMA] or cosine[:MIN_LR]")
                })?;
            }
            ("weight_decay", Some(c)) => {
                let w = num()?;
                if !(w >= 0.0 && w.is_finite()) {
                    return Err(bad("weight decay must be zero or positive"));
                }
                match &mut c.optimizer {
                    optim::OptimizerKind::AdamW { weight_decay, .. } => *weight_decay = w,
                    _ => c.weight_decay = w,
                }
            }
            (
                "lr" | "learning_rate" | "epochs" | "batch" | "batch_size" | "seed" | "optimizer"
                | "schedule" | "weight_decay",
                None,
            ) => {
                return Err(bad(
                    "this model has no gradient solver settings (see --solver)",
                ));
            }
            _ => match (&mut self.kind, name) {
                (ModelKind::Mlp { hidden, .. }, "hidden") => {
                    *hidden = value
                        .split('x')
                        .map(|w| w.trim().parse::<usize>().ok().filter(|&w| w > 0))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| bad("expected widths such as 64 or 64x32"))?;
                }
                (ModelKind::Mlp { activation, .. }, "activation") => {
                    *activation = Activation::from_name(value)
                        .ok_or_else(|| bad("expected relu, tanh or sigmoid"))?;
                }
                (ModelKind::Mlp { alpha, .. }, "alpha") => *alpha = num()?,
                (ModelKind::LinearRegression { penalty, .. }, "alpha") => match penalty {
                    Penalty::Ridge { alpha } | Penalty::Lasso { alpha } => *alpha = num()?,
                    Penalty::None => return Err(bad("ordinary least squares has no alpha")),
                },
                (
                    ModelKind::Logistic { c, .. }
                    | ModelKind::Softmax { c, .. }
                    | ModelKind::LinearSvm { c, .. },
                    "c" | "C",
                ) => {
                    *c = num()?;
                    if *c <= 0.0 {
                        return Err(bad("C must be positive"));
                    }
                }
                _ => return Err(bad(&format!("not a parameter of {}", self.kind.name()))),
            },
        }
        Ok(())
    }
}

/// A trained model: the learned scaling and network, the schema of its training data and
/// what the run did.
#[derive(Clone, Debug)]
pub struct Fitted {
    /// What was trained.
    pub spec: ModelSpec,
    /// Encoding of the training data (feature names, class labels).
    pub schema: Schema,
    /// Iterations, final loss, convergence.
    pub summary: FitSummary,
    /// Wall time of the fit.
    pub fit_time_ms: u64,
    scaler: Option<Scaler>,
    learned: Learned,
    fingerprint: Option<data::Fingerprint>,
}

#[derive(Clone, Debug)]
enum Learned {
    Net(Network),
    Tree(tree::DecisionTree),
    Forest(forest::RandomForest),
}

/// Test-set figures of a model.
#[derive(Clone, Debug, PartialEq)]
pub enum Evaluation {
    /// Classifier figures.
    Classification {
        /// Accuracy.
        accuracy: f64,
        /// Macro F1.
        f1_macro: f64,
        /// Weighted F1.
        f1_weighted: f64,
        /// Log-loss of the predicted probabilities.
        log_loss: f64,
        /// ROC-AUC (one-vs-rest macro beyond two classes), when every class occurs.
        roc_auc: Option<f64>,
    },
    /// Regressor figures.
    Regression {
        /// R².
        r2: f64,
        /// Mean squared error.
        mse: f64,
        /// Mean absolute error.
        mae: f64,
    },
}

impl Evaluation {
    /// The figure model selection maximizes: accuracy or R².
    pub fn primary(&self) -> f64 {
        match self {
            Evaluation::Classification { accuracy, .. } => *accuracy,
            Evaluation::Regression { r2, .. } => *r2,
        }
    }
}

fn classes<'a>(model: &'static str, data: &'a Dataset) -> Result<(&'a [usize], usize), TrainError> {
    match (&data.target, data.schema.n_classes()) {
        (Target::Classes(y), Some(k)) => Ok((y, k)),
        _ => Err(TrainError::TaskMismatch {
            model,
            needs: "classification",
            target: data.schema.target.clone(),
        }),
    }
}

fn values<'a>(model: &'static str, data: &'a Dataset) -> Result<&'a [f64], TrainError> {
    data.target
        .values()
        .ok_or_else(|| TrainError::TaskMismatch {
            model,
            needs: "regression",
            target: data.schema.target.clone(),
        })
}

fn optimize(
    model: &'static str,
    net: &mut Network,
    objective_x: ArrayView2<'_, f64>,
    labels: Labels<'_>,
    l2: f64,
    solver: &Solver,
    progress: Option<Progress<'_>>,
) -> Result<FitSummary, TrainError> {
    let mut params = std::mem::take(&mut net.params);
    let summary = {
        let objective = NetObjective {
            net,
            x: objective_x,
            y: labels,
            l2,
        };
        match solver {
            Solver::Gradient(config) => optim::fit(
                &objective,
                &mut params,
                objective_x.nrows(),
                config,
                progress,
            ),
            Solver::Lbfgs(config) => {
                optim::lbfgs(|p, g| objective.full(p, g), &mut params, config, progress)
            }
            Solver::Exact => optim::lbfgs(
                |p, g| objective.full(p, g),
                &mut params,
                &LbfgsConfig::default(),
                progress,
            ),
        }
    };
    net.params = params;
    if !summary.loss.is_finite() || net.params.iter().any(|p| !p.is_finite()) {
        return Err(TrainError::Diverged {
            model,
            loss: summary.loss,
            epochs: summary.epochs,
        });
    }
    Ok(summary)
}

/// Trains `spec` on every row of `data`, calling `progress` once per epoch (L-BFGS:
/// per iteration).
///
/// # Errors
/// [`TrainError::TaskMismatch`] when the model does not fit the target,
/// [`TrainError::Diverged`] when the loss becomes non-finite, [`TrainError::BadParam`]
/// for unusable settings.
pub fn fit(
    spec: &ModelSpec,
    data: &Dataset,
    progress: Option<Progress<'_>>,
) -> Result<Fitted, TrainError> {
    let start = Instant::now();
    if let Some(learned) = fit_trees(spec, data)? {
        return Ok(Fitted {
            // Trees split on raw values: no scaling is applied or recorded.
            spec: ModelSpec {
                kind: spec.kind.clone(),
                scaling: Scaling::None,
            },
            schema: data.schema.clone(),
            summary: FitSummary {
                epochs: 1,
                loss: f64::NAN,
                validation: None,
                converged: true,
            },
            fit_time_ms: start.elapsed().as_millis() as u64,
            scaler: None,
            learned,
            fingerprint: data.fingerprint.clone(),
        });
    }
    let scaler = Scaler::fit(spec.scaling, data.features.view());
    let scaled;
    let x = match &scaler {
        Some(s) => {
            scaled = s.transform(data.features.view());
            scaled.view()
        }
        None => data.features.view(),
    };
    let (n, d) = x.dim();
    let nf = n.max(1) as f64;
    let name = spec.kind.name();
    let (net, summary) = match &spec.kind {
        ModelKind::LinearRegression { penalty, solver } => {
            let y = values(name, data)?;
            let mut net = Network::new(vec![d, 1], Activation::Relu, Head::Regression);
            let exact = |w: Vec<f64>, b: f64, epochs: usize, net: &mut Network| {
                net.params[..d].copy_from_slice(&w);
                net.params[d] = b;
                FitSummary {
                    epochs,
                    loss: f64::NAN,
                    validation: None,
                    converged: true,
                }
            };
            let summary = match (penalty, solver) {
                (Penalty::Lasso { alpha }, _) => {
                    let (w, b, sweeps) = linear::lasso(x, y, *alpha, 10_000, 1e-8);
                    exact(w, b, sweeps, &mut net)
                }
                (_, Solver::Exact) => {
                    let alpha = match penalty {
                        Penalty::Ridge { alpha } => *alpha,
                        _ => 0.0,
                    };
                    let (w, b) = linear::normal_equations(x, y, alpha);
                    exact(w, b, 1, &mut net)
                }
                (_, solver) => {
                    let l2 = match penalty {
                        Penalty::Ridge { alpha } => alpha / nf,
                        _ => 0.0,
                    };
                    optimize(name, &mut net, x, Labels::Values(y), l2, solver, progress)?
                }
            };
            (net, summary)
        }
        ModelKind::Logistic { c, solver } | ModelKind::Softmax { c, solver } => {
            let (y, k) = classes(name, data)?;
            if *c <= 0.0 {
                return Err(TrainError::BadParam {
                    name: "c".into(),
                    value: c.to_string(),
                    reason: "C must be positive".into(),
                });
            }
            let binary = k == 2 && matches!(spec.kind, ModelKind::Logistic { .. });
            let (out, head) = if binary {
                (1, Head::Binary)
            } else {
                (k, Head::Softmax)
            };
            let mut net = Network::new(vec![d, out], Activation::Relu, head);
            let solver = match solver {
                Solver::Exact => Solver::Lbfgs(LbfgsConfig::default()),
                s => *s,
            };
            let summary = optimize(
                name,
                &mut net,
                x,
                Labels::Classes(y),
                1.0 / (c * nf),
                &solver,
                progress,
            )?;
            (net, summary)
        }
        ModelKind::Mlp {
            hidden,
            activation,
            alpha,
            config,
        } => {
            let mut sizes = vec![d];
            sizes.extend(hidden.iter().copied());
            let labels = match &data.target {
                Target::Classes(y) => {
                    let (_, k) = classes(name, data)?;
                    let (out, head) = if k == 2 {
                        (1, Head::Binary)
                    } else {
                        (k, Head::Softmax)
                    };
                    sizes.push(out);
                    (Labels::Classes(y), head)
                }
                Target::Values(y) => {
                    sizes.push(1);
                    (Labels::Values(y), Head::Regression)
                }
            };
            let mut net = Network::new(sizes, *activation, labels.1);
            net.init_glorot(config.seed);
            let batch = config.batch_size.clamp(1, n.max(1)) as f64;
            let summary = optimize(
                name,
                &mut net,
                x,
                labels.0,
                alpha / batch,
                &Solver::Gradient(*config),
                progress,
            )?;
            (net, summary)
        }
        ModelKind::DecisionTree { .. } | ModelKind::RandomForest { .. } => {
            unreachable!("fit_trees handles tree models")
        }
        ModelKind::LinearSvm { c, config } => {
            let (y, k) = classes(name, data)?;
            let out = if k == 2 { 1 } else { k };
            let mut net = Network::new(vec![d, out], Activation::Relu, Head::Hinge);
            let summary = optimize(
                name,
                &mut net,
                x,
                Labels::Classes(y),
                1.0 / (c * nf),
                &Solver::Gradient(*config),
                progress,
            )?;
            (net, summary)
        }
    };
    Ok(Fitted {
        spec: spec.clone(),
        schema: data.schema.clone(),
        summary,
        fit_time_ms: start.elapsed().as_millis() as u64,
        scaler,
        learned: Learned::Net(net),
        fingerprint: data.fingerprint.clone(),
    })
}

/// Trains the tree models of `spec` on raw features; `None` for every other kind.
fn fit_trees(spec: &ModelSpec, data: &Dataset) -> Result<Option<Learned>, TrainError> {
    let x = data.features.view();
    let learned = match (&spec.kind, &data.target) {
        (ModelKind::DecisionTree { params }, Target::Classes(y)) => {
            Learned::Tree(tree::DecisionTree::fit_classifier(x, y, params)?)
        }
        (ModelKind::DecisionTree { params }, Target::Values(y)) => {
            let mut params = params.clone();
            if matches!(
                params.criterion,
                tree::Criterion::Gini | tree::Criterion::Entropy
            ) {
                params.criterion = tree::Criterion::SquaredError;
            }
            Learned::Tree(tree::DecisionTree::fit_regressor(x, y, &params)?)
        }
        (ModelKind::RandomForest { params }, Target::Classes(y)) => {
            Learned::Forest(forest::RandomForest::fit_classifier(x, y, params)?)
        }
        (ModelKind::RandomForest { params }, Target::Values(y)) => {
            let mut params = params.clone();
            if matches!(
                params.tree.criterion,
                tree::Criterion::Gini | tree::Criterion::Entropy
            ) {
                params.tree.criterion = tree::Criterion::SquaredError;
                params.tree.max_features = tree::MaxFeatures::All;
            }
            Learned::Forest(forest::RandomForest::fit_regressor(x, y, &params)?)
        }
        _ => return Ok(None),
    };
    Ok(Some(learned))
}

impl Learned {
    fn n_features(&self) -> usize {
        match self {
            Learned::Net(net) => net.sizes[0],
            Learned::Tree(t) => t.n_features(),
            Learned::Forest(f) => f.n_features(),
        }
    }

    fn classifier(&self) -> bool {
        match self {
            Learned::Net(net) => net.head != Head::Regression,
            Learned::Tree(t) => t.is_classifier(),
            Learned::Forest(f) => f.is_classifier(),
        }
    }

    /// Class probabilities (classifiers) or the single value column (regressors).
    fn scores(&self, x: ArrayView2<'_, f64>) -> Result<Array2<f64>, TrainError> {
        let (flat, n) = match self {
            Learned::Net(net) => {
                return Ok(if net.head == Head::Regression {
                    net.decision(x)
                } else {
                    net.probabilities(x)
                });
            }
            Learned::Tree(t) => (t.predict_scores(x)?, x.nrows()),
            Learned::Forest(f) => (f.predict_scores(x)?, x.nrows()),
        };
        let k = flat.len() / n.max(1);
        Array2::from_shape_vec((n, k), flat.into_iter().map(f64::from).collect())
            .map_err(|e| TrainError::Tree(tree::TreeError::Data(e.to_string())))
    }
}

impl Fitted {
    fn prepare(&self, x: ArrayView2<'_, f64>) -> Result<Array2<f64>, TrainError> {
        let expected = self.learned.n_features();
        if x.ncols() != expected {
            return Err(TrainError::FeatureCount {
                expected,
                got: x.ncols(),
            });
        }
        Ok(match &self.scaler {
            Some(s) => s.transform(x),
            None => x.to_owned(),
        })
    }

    /// Whether the model is a classifier.
    pub fn is_classifier(&self) -> bool {
        self.learned.classifier()
    }

    /// Class probabilities `[n, k]` for raw (unscaled) feature rows.
    ///
    /// # Errors
    /// [`TrainError::FeatureCount`] for rows of the wrong width,
    /// [`TrainError::TaskMismatch`] for a regressor.
    pub fn predict_proba(&self, x: ArrayView2<'_, f64>) -> Result<Array2<f64>, TrainError> {
        if !self.learned.classifier() {
            return Err(TrainError::TaskMismatch {
                model: self.spec.kind.name(),
                needs: "classification",
                target: self.schema.target.clone(),
            });
        }
        self.learned.scores(self.prepare(x)?.view())
    }

    /// Predicted class indices for raw feature rows.
    ///
    /// # Errors
    /// As [`Fitted::predict_proba`].
    pub fn predict_classes(&self, x: ArrayView2<'_, f64>) -> Result<Vec<usize>, TrainError> {
        Ok(metrics::argmax_rows(self.predict_proba(x)?.view()))
    }

    /// Predicted values for raw feature rows.
    ///
    /// # Errors
    /// [`TrainError::FeatureCount`], or [`TrainError::TaskMismatch`] for a classifier.
    pub fn predict_values(&self, x: ArrayView2<'_, f64>) -> Result<Vec<f64>, TrainError> {
        if self.learned.classifier() {
            return Err(TrainError::TaskMismatch {
                model: self.spec.kind.name(),
                needs: "regression",
                target: self.schema.target.clone(),
            });
        }
        Ok(self
            .learned
            .scores(self.prepare(x)?.view())?
            .column(0)
            .to_vec())
    }

    /// Scores the model on labelled data encoded with the training schema.
    ///
    /// # Errors
    /// [`TrainError::FeatureCount`] or [`TrainError::TaskMismatch`].
    pub fn evaluate(&self, data: &Dataset) -> Result<Evaluation, TrainError> {
        let x = data.features.view();
        Ok(match &data.target {
            Target::Classes(y) => {
                let p = self.predict_proba(x)?;
                let predicted = metrics::argmax_rows(p.view());
                let scores = metrics::ClassScores::new(y, &predicted, p.ncols());
                Evaluation::Classification {
                    accuracy: metrics::accuracy(y, &predicted),
                    f1_macro: scores.f1(Average::Macro),
                    f1_weighted: scores.f1(Average::Weighted),
                    log_loss: metrics::log_loss(y, p.view()),
                    roc_auc: metrics::roc_auc(y, p.view()),
                }
            }
            Target::Values(y) => {
                let p = self.predict_values(x)?;
                Evaluation::Regression {
                    r2: metrics::r2(y, &p),
                    mse: metrics::mse(y, &p),
                    mae: metrics::mae(y, &p),
                }
            }
        })
    }

    /// The native model: input `input` (`[features]`, raw values), the scaling layer, the
    /// network, and outputs `probabilities` + `label` (classifiers) or `variable`
    /// (regressors). Integer class labels become the `label` values; string labels are
    /// listed in `metadata.class_labels` and `label` is their index.
    pub fn to_model(&self, name: &str) -> Model {
        let (labels, class_labels) = match &self.schema.target_encoding {
            TargetEncoding::Classes { labels, numeric } => (numeric.clone(), labels.clone()),
            TargetEncoding::Values => (None, Vec::new()),
        };
        let mut metadata = Metadata {
            name: name.to_string(),
            version: "1".into(),
            created_unix_s: crate::util::now_unix_s() as u64,
            producer: format!("perch-host {} train", env!("CARGO_PKG_VERSION")),
            description: format!(
                "{} trained on {:?}",
                self.spec.kind.name(),
                self.schema.target
            ),
            class_labels,
            ..Metadata::default()
        };
        metadata.set_feature_names(&self.schema.feature_names(), &self.schema.target);
        let props = &mut metadata.properties;
        props.insert("train.model".into(), self.spec.kind.name().into());
        props.insert(
            "train.scaling".into(),
            format!("{:?}", self.spec.scaling).to_lowercase(),
        );
        props.insert("train.epochs".into(), self.summary.epochs.to_string());
        if let Some(fp) = &self.fingerprint {
            props.insert("dataset.sha256".into(), fp.sha256.clone());
            props.insert("dataset.rows".into(), fp.rows.to_string());
            props.insert("dataset.columns".into(), fp.columns.to_string());
        }
        let graph = match &self.learned {
            Learned::Net(net) => net.graph(self.scaler.as_ref(), labels),
            Learned::Tree(t) => with_labels(t.to_model(name).graph, labels),
            Learned::Forest(f) => with_labels(f.to_model(name).graph, labels),
        };
        Model { metadata, graph }
    }
}

/// Maps a tree model's argmax (class ids) through the dataset's numeric class labels, and
/// orders its outputs as every trained classifier's: `probabilities`, then `label`.
fn with_labels(mut graph: crate::graph::Graph, labels: Option<Vec<i64>>) -> crate::graph::Graph {
    graph.outputs.sort_by_key(|o| o.name == "label");
    if let Some(labels) = labels {
        for node in &mut graph.nodes {
            if let crate::graph::Layer::ArgMax { labels: l } = &mut node.layer
                && l.as_ref().is_none_or(|l| l.len() == labels.len())
            {
                *l = Some(labels.clone());
            }
        }
    }
    graph
}
