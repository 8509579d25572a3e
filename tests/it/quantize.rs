//! Post-training int8 quantization on the trained digits MLP (models/digits-mlp-trained):
//! accuracy on the corpus test split against the float model, and size.
use crate::harness;

use perch::engine::Engine;
use perch::graph::Model;
use perch::optimize::{Calibration, QuantizeMode, QuantizeOptions, quantize};
use std::path::Path;

/// Features (row-major) and integer targets of a corpus CSV whose last column is `target`.
fn load(path: &Path) -> (Vec<f32>, Vec<i64>) {
    let mut r = csv::Reader::from_path(path).expect("corpus csv");
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for rec in r.records() {
        let rec = rec.expect("csv row");
        let n = rec.len();
        for v in rec.iter().take(n - 1) {
            x.push(v.parse::<f32>().expect("feature"));
        }
        y.push(rec[n - 1].parse::<f64>().expect("target") as i64);
    }
    (x, y)
}

fn accuracy(model: &Model, x: &[f32], y: &[i64]) -> f64 {
    let label = model
        .graph
        .outputs
        .iter()
        .position(|o| o.name == "label")
        .expect("label output");
    let mut e = Engine::new(&model.graph, y.len()).expect("plans");
    e.run(&[x], y.len()).expect("runs");
    let got = e.output_i64(label).expect("labels");
    got.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
}

fn digits() -> (Model, Vec<f32>, (Vec<f32>, Vec<i64>)) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits-mlp-trained");
    let model = perch::artifact::read(&dir.join("model.perch"))
        .expect("trained digits artifact")
        .model;
    let data = harness::corpus_dir().join("datasets/digits");
    let (train, _) = load(&data.join("digits_train.csv"));
    (model, train, load(&data.join("digits_test.csv")))
}

#[test]
fn int8_digits_mlp_is_within_one_point_of_float() {
    let (model, train, (x, y)) = digits();
    let f32_acc = accuracy(&model, &x, &y);
    for (name, mode, rows) in [
        (
            "static min-max",
            QuantizeMode::Static {
                calibration: Calibration::MinMax,
            },
            Some(&train[..]),
        ),
        (
            "static percentile 99.99",
            QuantizeMode::Static {
                calibration: Calibration::Percentile(99.99),
            },
            Some(&train[..]),
        ),
        ("dynamic", QuantizeMode::Dynamic, None),
    ] {
        let q = quantize(&model, &QuantizeOptions { mode }, rows).expect("quantizes");
        let q_acc = accuracy(&q, &x, &y);
        eprintln!("digits MLP: f32 {f32_acc:.4}, int8 {name} {q_acc:.4}");
        assert!(
            q_acc >= f32_acc - 0.01,
            "{name}: int8 accuracy {q_acc} is more than 1 point below f32 {f32_acc}"
        );
    }
}

#[test]
fn int8_parameters_are_at_most_30_percent_of_float() {
    let (model, train, _) = digits();
    let q = quantize(
        &model,
        &QuantizeOptions {
            mode: QuantizeMode::Static {
                calibration: Calibration::MinMax,
            },
        },
        Some(&train),
    )
    .expect("quantizes");
    let f = perch::artifact::encode(&model).expect("encodes").len();
    let i = perch::artifact::encode(&q).expect("encodes").len();
    let params = |m: &Model| -> usize { m.graph.nodes.iter().map(|n| n.layer.param_bytes()).sum() };
    let (pf, pi) = (params(&model), params(&q));
    eprintln!(
        "digits MLP artifact: f32 {f} bytes, int8 {i} bytes ({:.1} %); parameters {pf} → {pi} bytes ({:.1} %)",
        100.0 * i as f64 / f as f64,
        100.0 * pi as f64 / pf as f64
    );
    // The file also carries ~1.2 KB of training metadata both versions share (feature
    // names, dataset hash), which the quantizer keeps; the parameters are what shrinks.
    assert!(
        pi * 10 <= pf * 3,
        "int8 parameters {pi} bytes > 30 % of {pf}"
    );
    assert!(i * 100 <= f * 35, "int8 artifact {i} bytes > 35 % of {f}");
}
