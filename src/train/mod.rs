//! Training on the host (feature `host`): CSV datasets, preprocessing baked into the model,
//! linear and neural models, optimizers, metrics, cross-validation and grid search. Every
//! trained model becomes a native [`graph::Model`](crate::graph::Model) that the
//! [`engine`](crate::engine) runs unchanged.
//!
//! # Layout
//! - [`data`]: CSV → [`Dataset`](data::Dataset) (encoding, imputation, labels, fingerprint, statistics,
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
//! - `spec` (private, re-exported): what to train, [`ModelKind`] and [`ModelSpec`] with
//!   the hyper-parameters a grid names.
//! - `fit` (private, re-exported): [`fit`] a spec to a dataset; the [`Fitted`] model
//!   predicts, evaluates and becomes a graph.
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

mod fit;
mod spec;

use data::DataError;

pub use fit::{Evaluation, Fitted, fit};
pub use net::Activation;
pub use spec::{ModelKind, ModelSpec, Penalty, Solver};

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
        /// The family's short name, as [`ModelKind::name`] gives it (`logistic`, `mlp`, …).
        model: &'static str,
        /// `classification` or `regression`.
        needs: &'static str,
        /// The dataset's target column.
        target: String,
    },
    /// Features of a different width than the model was trained on.
    #[error("the model takes {expected} features, the data has {got}")]
    FeatureCount {
        /// Features the model was trained on.
        expected: usize,
        /// Features per row in the data given.
        got: usize,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training {model} diverged (loss {loss} after {epochs} epochs); lower the learning rate or scale the features"
    )]
    Diverged {
        /// The family's short name, as [`ModelKind::name`] gives it.
        model: &'static str,
        /// The final loss: NaN or ±infinity, or finite when only the parameters diverged.
        loss: f64,
        /// Epochs completed before it diverged.
        epochs: usize,
    },
    /// A hyper-parameter value that cannot be used.
    #[error("bad hyper-parameter {name}={value:?}: {reason}")]
    BadParam {
        /// The parameter's name as the spec or search grid spells it (`c`, `hidden`, …).
        name: String,
        /// The value as given.
        value: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// Growing a tree or forest failed.
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
}
