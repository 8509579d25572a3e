//! Fitting a spec to a dataset, and the fitted model: prediction, evaluation, export.

use super::data::{self, Dataset, Schema, Target, TargetEncoding};
use super::metrics::{self, Average};
use super::net::{Activation, Head, Labels, NetObjective, Network};
use super::optim::{self, FitSummary, LbfgsConfig, Progress};
use super::scale::{Scaler, Scaling};
use super::{ModelKind, ModelSpec, Penalty, Solver, TrainError, forest, linear, tree};
use crate::graph::{Metadata, Model};
use ndarray::{Array2, ArrayView2};
use std::time::Instant;

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
    /// Figures of a classifier, each in `[0, 1]` but the log-loss.
    Classification {
        /// Fraction of rows whose predicted class is the true one.
        accuracy: f64,
        /// Unweighted mean of the per-class F1 scores.
        f1_macro: f64,
        /// Mean of the per-class F1 scores weighted by each class's row count.
        f1_weighted: f64,
        /// Log-loss of the predicted probabilities.
        log_loss: f64,
        /// ROC-AUC (one-vs-rest macro beyond two classes), when every class occurs.
        roc_auc: Option<f64>,
    },
    /// Figures of a regressor.
    Regression {
        /// Coefficient of determination R² (1 is perfect, 0 predicts the mean; may be negative).
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
