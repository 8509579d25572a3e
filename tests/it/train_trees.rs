//! Decision trees and random forests trained by perch on the corpus datasets: accuracy
//! against scikit-learn's figures, and exported models that the engine runs with the same
//! predictions as the training code. Fit times are printed (`--nocapture`), not asserted;
//! measure them with `cargo test --release --test it train_trees:: -- --nocapture`.

use crate::harness;

use ndarray::Array2;
use perch::engine::Engine;
use perch::graph::Model;
use perch::train::forest::{ForestParams, RandomForest};
use perch::train::tree::{Criterion, DecisionTree, TreeParams};
use std::time::Instant;

/// Features and the `target` column (last) of a corpus CSV with a header row.
fn read_csv(dataset: &str, split: &str) -> (Array2<f64>, Vec<f64>) {
    let path = harness::corpus_dir()
        .join("datasets")
        .join(dataset)
        .join(format!("{dataset}_{split}.csv"));
    let mut reader =
        csv::Reader::from_path(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader.headers().expect("header").clone();
    assert_eq!(
        header.iter().next_back(),
        Some("target"),
        "{}",
        path.display()
    );
    let width = header.len() - 1;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.expect("row");
        let values: Vec<f64> = record.iter().map(|v| v.parse().expect("number")).collect();
        x.extend_from_slice(&values[..width]);
        y.push(values[width]);
    }
    let rows = y.len();
    (Array2::from_shape_vec((rows, width), x).expect("shape"), y)
}

fn classes(y: &[f64]) -> Vec<usize> {
    y.iter().map(|&v| v as usize).collect()
}

fn accuracy(pred: &[f64], want: &[f64]) -> f64 {
    pred.iter().zip(want).filter(|(p, w)| p == w).count() as f64 / want.len() as f64
}

/// Runs `model` on `x` through an artifact round trip; `(output 0 as f64, output 1)`.
fn run_native(model: &Model, x: &Array2<f64>) -> (Vec<f64>, Vec<f32>) {
    let bytes = perch::artifact::encode(model).expect("encodes");
    let model = perch::artifact::decode(&bytes).expect("decodes").model;
    let rows = x.nrows();
    let mut engine = Engine::new(&model.graph, rows).expect("plans");
    let input: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    engine.run(&[&input], rows).expect("runs");
    match engine.output_i64(0) {
        Some(labels) => (
            labels.iter().map(|&l| l as f64).collect(),
            engine.output_f32(1).expect("probabilities").to_vec(),
        ),
        None => {
            let v = engine.output_f32(0).expect("values").to_vec();
            (v.iter().map(|&v| v as f64).collect(), v)
        }
    }
}

#[test]
fn decision_tree_on_digits() {
    let (x, y) = read_csv("digits", "train");
    let (xt, yt) = read_csv("digits", "test");
    let start = Instant::now();
    let tree =
        DecisionTree::fit_classifier(x.view(), &classes(&y), &TreeParams::default()).expect("fits");
    let fit_s = start.elapsed().as_secs_f64();
    let pred = tree.predict(xt.view()).expect("predicts");
    let acc = accuracy(&pred, &yt);
    println!(
        "digits decision tree: accuracy {acc:.4} (scikit-learn 0.824), fit {fit_s:.3} s, {} leaves, depth {}",
        tree.n_leaves(),
        tree.depth()
    );
    assert!(acc >= 0.80, "accuracy {acc}");
    let (labels, probs) = run_native(&tree.to_model("digits-tree"), &xt);
    assert_eq!(labels, pred);
    assert_eq!(probs, tree.predict_scores(xt.view()).expect("scores"));

    let entropy = TreeParams {
        criterion: Criterion::Entropy,
        ..TreeParams::default()
    };
    let tree = DecisionTree::fit_classifier(x.view(), &classes(&y), &entropy).expect("fits");
    let acc = accuracy(&tree.predict(xt.view()).expect("predicts"), &yt);
    println!("digits decision tree (entropy): accuracy {acc:.4}");
    assert!(acc >= 0.75, "accuracy {acc}");
}

#[test]
fn random_forest_on_digits() {
    let (x, y) = read_csv("digits", "train");
    let (xt, yt) = read_csv("digits", "test");
    let params = ForestParams {
        n_estimators: 50,
        seed: 42,
        ..ForestParams::classifier()
    };
    let start = Instant::now();
    let forest = RandomForest::fit_classifier(x.view(), &classes(&y), &params).expect("fits");
    let fit_s = start.elapsed().as_secs_f64();
    let pred = forest.predict(xt.view()).expect("predicts");
    let acc = accuracy(&pred, &yt);
    println!(
        "digits random forest (50 trees): accuracy {acc:.4} (scikit-learn 0.960), fit {fit_s:.3} s"
    );
    assert!(acc >= 0.95, "accuracy {acc}");
    let (labels, probs) = run_native(&forest.to_model("digits-forest"), &xt);
    assert_eq!(labels, pred);
    assert_eq!(probs, forest.predict_scores(xt.view()).expect("scores"));

    // Reproducible whatever the thread count.
    let one_thread = ForestParams {
        n_threads: Some(1),
        n_estimators: 5,
        ..params.clone()
    };
    let two_threads = ForestParams {
        n_threads: Some(2),
        ..one_thread.clone()
    };
    assert_eq!(
        RandomForest::fit_classifier(x.view(), &classes(&y), &one_thread).expect("fits"),
        RandomForest::fit_classifier(x.view(), &classes(&y), &two_threads).expect("fits"),
    );
}

#[test]
fn random_forests_on_iris_and_wine() {
    for dataset in ["iris", "wine"] {
        let (x, y) = read_csv(dataset, "train");
        let (xt, yt) = read_csv(dataset, "test");
        let params = ForestParams {
            n_estimators: 50,
            seed: 7,
            ..ForestParams::classifier()
        };
        let forest = RandomForest::fit_classifier(x.view(), &classes(&y), &params).expect("fits");
        let pred = forest.predict(xt.view()).expect("predicts");
        let acc = accuracy(&pred, &yt);
        println!("{dataset} random forest (50 trees): accuracy {acc:.4}");
        assert!(acc >= 0.9, "{dataset}: accuracy {acc}");
        let (labels, _) = run_native(&forest.to_model(dataset), &xt);
        assert_eq!(labels, pred, "{dataset}");
    }
}

#[test]
fn regression_forest_on_diabetes() {
    let (x, y) = read_csv("diabetes", "train");
    let (xt, yt) = read_csv("diabetes", "test");
    let params = ForestParams {
        n_estimators: 50,
        seed: 3,
        ..ForestParams::regressor()
    };
    let start = Instant::now();
    let forest = RandomForest::fit_regressor(x.view(), &y, &params).expect("fits");
    let fit_s = start.elapsed().as_secs_f64();
    let pred = forest.predict(xt.view()).expect("predicts");
    let mean = yt.iter().sum::<f64>() / yt.len() as f64;
    let ss_res: f64 = pred.iter().zip(&yt).map(|(p, w)| (p - w).powi(2)).sum();
    let ss_tot: f64 = yt.iter().map(|w| (w - mean).powi(2)).sum();
    let r2 = 1.0 - ss_res / ss_tot;
    println!("diabetes random forest regressor (50 trees): R² {r2:.4}, fit {fit_s:.3} s");
    assert!(r2 >= 0.3, "R² {r2}");
    let (values, _) = run_native(&forest.to_model("diabetes"), &xt);
    assert_eq!(values, pred);
}
