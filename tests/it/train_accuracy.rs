//! Training accuracy against scikit-learn 1.9 on the corpus datasets, and agreement of
//! every exported model with the training code's own forward pass when the engine runs it.
//!
//! The corpus is the repository's copy in `tests/data/corpus` (`PERCH_CORPUS` overrides);
//! a missing corpus fails the tests rather than skipping them.
use perch::engine::Engine;
use perch::train::data::{Dataset, Target, Task};
use perch::train::optim::{GradientConfig, OptimizerKind, Schedule};
use perch::train::scale::Scaling;
use perch::train::select::{Grid, cv, grid_search};
use perch::train::{Activation, Fitted, ModelKind, ModelSpec, Penalty, Solver, fit};
use std::path::PathBuf;

fn corpus() -> PathBuf {
    let dir = std::env::var_os("PERCH_CORPUS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus"),
        PathBuf::from,
    );
    assert!(
        dir.join("datasets").is_dir(),
        "corpus not found at {dir:?}; the repository carries it in tests/data/corpus (PERCH_CORPUS overrides)"
    );
    dir
}

fn load(name: &str, task: Task) -> (Dataset, Dataset) {
    let dir = corpus().join("datasets").join(name);
    let train = Dataset::load(dir.join(format!("{name}_train.csv")), "target", task).unwrap();
    let test =
        Dataset::load_with_schema(dir.join(format!("{name}_test.csv")), &train.schema).unwrap();
    (train, test)
}

/// Runs the exported graph on `data` and checks it predicts what the training code does.
fn engine_agrees(model: &Fitted, data: &Dataset) {
    let exported = model.to_model("test");
    let bytes = perch::artifact::encode(&exported).unwrap();
    let graph = perch::artifact::decode(&bytes).unwrap().model.graph;
    let n = data.n_rows();
    let mut engine = Engine::new(&graph, n).unwrap();
    let x = data.features_f32();
    let flat: Vec<f32> = x.iter().copied().collect();
    engine.run(&[&flat], n).unwrap();
    if model.is_classifier() {
        let ours = model.predict_proba(data.features.view()).unwrap();
        let probs = engine.output_f32(0).unwrap();
        let labels = engine.output_i64(1).unwrap();
        let k = ours.ncols();
        let ints: Option<Vec<i64>> = match &data.schema.target_encoding {
            perch::train::data::TargetEncoding::Classes { numeric, .. } => numeric.clone(),
            perch::train::data::TargetEncoding::Values => None,
        };
        let predicted = model.predict_classes(data.features.view()).unwrap();
        for i in 0..n {
            for c in 0..k {
                let (a, b) = (ours[[i, c]], f64::from(probs[i * k + c]));
                assert!((a - b).abs() < 1e-3, "row {i} class {c}: {a} vs engine {b}");
            }
            let want = ints
                .as_ref()
                .map_or(predicted[i] as i64, |l| l[predicted[i]]);
            let mut sorted: Vec<f64> = ours.row(i).to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 1e-4 {
                assert_eq!(labels[i], want, "row {i}");
            }
        }
    } else {
        let ours = model.predict_values(data.features.view()).unwrap();
        let got = engine.output_f32(0).unwrap();
        for (i, (a, b)) in ours.iter().zip(got).enumerate() {
            let b = f64::from(*b);
            assert!(
                (a - b).abs() <= 1e-3 * a.abs().max(1.0),
                "row {i}: {a} vs engine {b}"
            );
        }
    }
}

/// Fits, scores on test, checks the engine, and compares with scikit-learn's figure.
fn check(name: &str, task: Task, spec: ModelSpec, sklearn: f64) -> f64 {
    let (train, test) = load(name, task);
    let model = fit(&spec, &train, None).unwrap();
    let score = model.evaluate(&test).unwrap().primary();
    eprintln!(
        "{name:<14} {:<10} {:<9?} ours {score:.3}  scikit-learn {sklearn:.3}  fit {} ms, {} iterations",
        spec.kind.name(),
        spec.scaling,
        model.fit_time_ms,
        model.summary.epochs
    );
    engine_agrees(&model, &test);
    assert!(
        score >= sklearn - 0.01 - 1e-9,
        "{name} {}: {score:.4} is more than 1 point below scikit-learn's {sklearn:.3}",
        spec.kind.name()
    );
    score
}

fn spec(kind: ModelKind, scaling: Scaling) -> ModelSpec {
    ModelSpec { kind, scaling }
}

#[test]
fn iris_logistic() {
    check(
        "iris",
        Task::Classification,
        spec(ModelKind::logistic(), Scaling::None),
        0.947,
    );
}

#[test]
fn breast_cancer_standardized_logistic() {
    let s = spec(ModelKind::logistic(), Scaling::Standard);
    check("breast_cancer", Task::Classification, s, 0.986);
}

#[test]
fn wine_standardized_logistic() {
    let s = spec(ModelKind::logistic(), Scaling::Standard);
    check("wine", Task::Classification, s, 1.000);
}

#[test]
fn digits_logistic() {
    check(
        "digits",
        Task::Classification,
        spec(ModelKind::logistic(), Scaling::None),
        0.960,
    );
}

#[test]
fn digits_standardized_logistic() {
    let s = spec(ModelKind::logistic(), Scaling::Standard);
    check("digits", Task::Classification, s, 0.978);
}

#[test]
fn digits_mlp() {
    check(
        "digits",
        Task::Classification,
        spec(ModelKind::mlp(vec![64]), Scaling::None),
        0.962,
    );
}

#[test]
fn digits_standardized_mlp() {
    let s = spec(ModelKind::mlp(vec![64]), Scaling::Standard);
    check("digits", Task::Classification, s, 0.980);
}

#[test]
fn diabetes_linear_regression() {
    check(
        "diabetes",
        Task::Regression,
        spec(ModelKind::linear(), Scaling::None),
        0.485,
    );
}

/// The remaining model kinds and solvers: trained briefly, and the engine must agree.
#[test]
fn every_model_kind_runs_in_the_engine() {
    let (iris, iris_test) = load("iris", Task::Classification);
    let (bc, bc_test) = load("breast_cancer", Task::Classification);
    let (diabetes, diabetes_test) = load("diabetes", Task::Regression);
    let adam = |lr: f64, epochs: usize| GradientConfig {
        learning_rate: lr,
        epochs,
        batch_size: 32,
        early_stopping: None,
        ..GradientConfig::default()
    };
    let cases: Vec<(&Dataset, &Dataset, ModelSpec, f64)> = vec![
        (
            &iris,
            &iris_test,
            spec(
                ModelKind::Softmax {
                    c: 1.0,
                    solver: Solver::Gradient(GradientConfig {
                        optimizer: OptimizerKind::Nesterov { momentum: 0.9 },
                        schedule: Schedule::Cosine { min_lr: 0.0 },
                        ..adam(0.05, 100)
                    }),
                },
                Scaling::MinMax,
            ),
            0.8,
        ),
        // scikit-learn 1.9.1 `LinearSVC(loss="hinge")` after `StandardScaler` scores 0.789
        // on this split too: one-vs-rest cannot separate versicolor linearly.
        (
            &iris,
            &iris_test,
            spec(ModelKind::linear_svm(), Scaling::Standard),
            0.78,
        ),
        (
            &bc,
            &bc_test,
            spec(ModelKind::linear_svm(), Scaling::Standard),
            0.93,
        ),
        (
            &bc,
            &bc_test,
            spec(
                ModelKind::Mlp {
                    hidden: vec![8, 4],
                    activation: Activation::Tanh,
                    alpha: 1e-4,
                    config: adam(0.01, 50),
                },
                Scaling::Standard,
            ),
            0.93,
        ),
        (
            &iris,
            &iris_test,
            spec(
                ModelKind::Mlp {
                    hidden: vec![8],
                    activation: Activation::Sigmoid,
                    alpha: 1e-4,
                    config: adam(0.05, 100),
                },
                Scaling::Standard,
            ),
            0.85,
        ),
        (
            &diabetes,
            &diabetes_test,
            spec(
                ModelKind::Mlp {
                    hidden: vec![16],
                    activation: Activation::Relu,
                    alpha: 1e-4,
                    config: adam(0.05, 200),
                },
                Scaling::Standard,
            ),
            0.3,
        ),
        (
            &diabetes,
            &diabetes_test,
            spec(
                ModelKind::LinearRegression {
                    penalty: Penalty::Ridge { alpha: 1.0 },
                    solver: Solver::Exact,
                },
                Scaling::Standard,
            ),
            0.45,
        ),
        (
            &diabetes,
            &diabetes_test,
            spec(
                ModelKind::LinearRegression {
                    penalty: Penalty::Lasso { alpha: 0.1 },
                    solver: Solver::Exact,
                },
                Scaling::Standard,
            ),
            0.45,
        ),
        (
            &diabetes,
            &diabetes_test,
            spec(
                ModelKind::LinearRegression {
                    penalty: Penalty::None,
                    solver: Solver::Gradient(adam(0.1, 300)),
                },
                Scaling::Standard,
            ),
            0.45,
        ),
    ];
    for (train, test, spec, floor) in cases {
        let model = fit(&spec, train, None).unwrap();
        let score = model.evaluate(test).unwrap().primary();
        eprintln!(
            "{:<12} {:<9?} score {score:.3} (floor {floor}), fit {} ms",
            spec.kind.name(),
            spec.scaling,
            model.fit_time_ms
        );
        assert!(score >= floor, "{spec:?}: {score}");
        engine_agrees(&model, test);
    }
}

#[test]
fn cross_validation_and_grid_search() {
    let (iris, _) = load("iris", Task::Classification);
    let base = spec(ModelKind::logistic(), Scaling::Standard);
    let scores = cv(&base, &iris, 5, 1).unwrap();
    assert_eq!(scores.folds.len(), 5);
    assert!(scores.mean() > 0.9, "{scores:?}");
    let grid = Grid::parse("c=0.01,1;scaling=none,standard").unwrap();
    let result = grid_search(&base, &grid, &iris, 3, 1).unwrap();
    assert_eq!(result.table.len(), 4);
    let best = &result.table[result.best];
    assert!(
        result
            .table
            .iter()
            .all(|r| r.scores.mean() <= best.scores.mean())
    );
    assert!(matches!(iris.target, Target::Classes(_)));
    assert!(result.model.evaluate(&iris).unwrap().primary() > 0.9);
}

#[test]
fn trees_and_forests_train_through_fit_and_export() {
    let mut spec = ModelSpec {
        kind: ModelKind::random_forest(),
        scaling: Scaling::None,
    };
    spec.set("n_estimators", "50").unwrap();
    spec.set("seed", "7").unwrap();
    // `check`'s last argument is a floor here (these are not scikit-learn's figures).
    check("wine", Task::Classification, spec, 0.96);
    let tree = ModelSpec {
        kind: ModelKind::decision_tree(),
        scaling: Scaling::None,
    };
    check("iris", Task::Classification, tree.clone(), 0.86);
    check("diabetes", Task::Regression, tree, -1.0);
    let mut bad = ModelSpec {
        kind: ModelKind::decision_tree(),
        scaling: Scaling::None,
    };
    assert!(bad.set("criterion", "chaos").is_err());
    assert!(bad.set("lr", "0.1").is_err());
}
