//! What to train: the model families and their hyper-parameters.

use super::TrainError;
use super::net::Activation;
use super::optim::{self, GradientConfig, LbfgsConfig};
use super::scale::Scaling;
use super::{forest, tree};

/// Regularization of linear regression, in scikit-learn's terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Penalty {
    /// Ordinary least squares.
    None,
    /// `‖y - Xw‖² + alpha·‖w‖²` (scikit-learn `Ridge`).
    Ridge {
        /// Penalty strength `alpha`, `>= 0` (0 is ordinary least squares).
        alpha: f64,
    },
    /// `1/(2n)·‖y - Xw‖² + alpha·‖w‖₁` (scikit-learn `Lasso`), always solved by coordinate
    /// descent.
    Lasso {
        /// Penalty strength `alpha`, `>= 0` (0 is ordinary least squares).
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
        /// None, ridge or lasso (default none).
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
        /// Inverse penalty strength C, `> 0` (default 1.0).
        c: f64,
        /// Optimizer (L-BFGS by default).
        solver: Solver,
    },
    /// Multi-layer perceptron: softmax + cross-entropy for classification, squared error
    /// for regression (scikit-learn's `MLPClassifier` / `MLPRegressor` defaults).
    Mlp {
        /// Width of each hidden layer, input side first; each `>= 1`.
        hidden: Vec<usize>,
        /// Activation of every hidden layer (default ReLU); the output layer has none.
        activation: Activation,
        /// L2 strength as scikit-learn's `alpha`: `alpha/(2·batch)·‖W‖²` per batch.
        alpha: f64,
        /// Optimizer, batch size, epochs, early stopping.
        config: GradientConfig,
    },
    /// Linear SVM: hinge loss, one-vs-rest for more than two classes, L2 penalty
    /// `1/(2C)·‖w‖²` on the summed loss. Its `probabilities` output is the softmax of the
    /// margins, a ranking score rather than a calibrated probability.
    LinearSvm {
        /// Inverse penalty strength C, `> 0` (default 1.0).
        c: f64,
        /// Optimizer, batch size, epochs, early stopping.
        config: GradientConfig,
    },
    /// CART decision tree (gini / entropy for classes, squared error for values). Trees
    /// split on raw feature values, so scaling is not applied.
    DecisionTree {
        /// Depth, split and leaf limits, feature subsampling, seed.
        params: tree::TreeParams,
    },
    /// Random forest of CART trees (bootstrap, feature subsampling, parallel training).
    RandomForest {
        /// Tree count, bootstrap and the per-tree parameters.
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
