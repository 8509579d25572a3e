//! `perch-host optimize` end to end: a trained digits MLP pruned (with fine-tuning on the
//! training data the registry recorded) and quantized into new versions whose parent is the
//! input, the before/after figures in the JSON contract, the artifacts the device runs, and
//! clear errors.
use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn digits(file: &str) -> PathBuf {
    corpus_dir().join("datasets/digits").join(file)
}

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let db = self.dir.path().join("reg.db");
        let mut all: Vec<&str> = vec!["--registry", db.to_str().expect("utf-8 temp path")];
        all.extend_from_slice(args);
        run_cmd(host_bin(), &all)
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "perch-host {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    }

    fn err(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "perch-host {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The standardized digits MLP of models/train.sh, as `digits@1`.
    fn train_digits(&self) -> Value {
        let (train, test) = (digits("digits_train.csv"), digits("digits_test.csv"));
        self.json(&[
            "train",
            train.to_str().unwrap(),
            "--target",
            "target",
            "--model",
            "mlp",
            "--scale",
            "standard",
            "--hidden",
            "64",
            "--seed",
            "1",
            "--test",
            test.to_str().unwrap(),
            "--name",
            "digits",
            "--json",
        ])
    }

    fn export(&self, r: &str) -> PathBuf {
        let out = self
            .dir
            .path()
            .join(format!("{}.perch", r.replace('@', "-")));
        let done = self.run(&["models", "export", r, "-o", out.to_str().unwrap()]);
        assert!(done.status.success(), "export {r} failed");
        out
    }
}

fn accuracy(v: &Value) -> f64 {
    v["metrics"]["accuracy"]
        .as_f64()
        .unwrap_or_else(|| panic!("no accuracy in {v}"))
}

/// The report's figures are present and the parent's are the input's.
fn check_contract(report: &Value, parent: &str) {
    for key in [
        "metrics",
        "size_bytes",
        "latency_us_p50",
        "peak_memory_bytes",
    ] {
        assert!(!report[key].is_null(), "{key} missing: {report}");
        assert!(!report["parent"][key].is_null(), "parent {key} missing");
    }
    assert_eq!(report["parent"]["ref"], parent);
    assert!(report["latency_us_p50"].as_f64().unwrap() > 0.0);
}

#[test]
fn pruning_with_fine_tuning_keeps_accuracy_and_records_lineage() {
    let host = Host::new();
    let trained = host.train_digits();
    let dense = accuracy(&trained);
    let report = host.json(&[
        "optimize",
        "digits@1",
        "--prune",
        "0.8",
        "--finetune-epochs",
        "30",
        "--json",
    ]);
    check_contract(&report, "digits@1");
    assert_eq!(report["ref"], "digits@2");
    assert_eq!(report["parent"]["metrics"]["accuracy"], dense);
    let pruned = accuracy(&report);
    eprintln!("digits MLP: dense {dense:.4}, 80% pruned + 30 epochs {pruned:.4}");
    assert!(pruned >= dense - 0.02, "pruned {pruned} vs dense {dense}");
    let achieved = report["optimizations"]["prune"]["achieved"]
        .as_f64()
        .unwrap();
    assert!((0.78..=0.82).contains(&achieved), "sparsity {achieved}");
    assert!(
        report["size_bytes"].as_u64() < report["parent"]["size_bytes"].as_u64(),
        "{report}"
    );
    // Lineage and the recorded step.
    let shown = host.json(&["models", "show", "digits@2", "--json"]);
    assert_eq!(shown["parent"], "digits@1");
    assert_eq!(shown["params"]["optimize"]["prune"]["sparsity"], 0.8);
    // The device runs the pruned artifact with the accuracy optimize measured.
    let artifact = host.export("digits@2");
    let x = host.dir.path().join("x.csv");
    features_only(&digits("digits_test.csv"), &x);
    let out = run_json(&artifact, &x, &[]).expect("perch run");
    let truth = labels(&digits("digits_test.csv"));
    let hits = out["label"]
        .iter()
        .zip(&truth)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        (hits as f64 / truth.len() as f64 - pruned).abs() < 1e-9,
        "device accuracy {} vs reported {pruned}",
        hits as f64 / truth.len() as f64
    );

    // Structured pruning shrinks the hidden layer.
    let report = host.json(&[
        "optimize",
        "digits@1",
        "--prune",
        "0.5",
        "--structured",
        "--json",
    ]);
    check_contract(&report, "digits@1");
    let bytes = std::fs::read(host.export("digits@3")).expect("read artifact");
    let model = perch::artifact::decode(&bytes).expect("decode").model;
    let dense: Vec<Vec<u32>> = model
        .graph
        .nodes
        .iter()
        .filter_map(|n| match &n.layer {
            perch::graph::Layer::Dense { weight, .. } => Some(weight.shape.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        dense,
        vec![vec![32, 64], vec![10, 32]],
        "structured pruning shapes"
    );
}

#[test]
fn optimize_errors_name_what_is_wrong_and_register_nothing() {
    let host = Host::new();
    host.train_digits();
    for (args, needle) in [
        (vec!["optimize", "digits@1"], "nothing to do"),
        (vec!["optimize", "nope@1", "--prune", "0.5"], "nope"),
        (vec!["optimize", "digits@1", "--prune", "1.5"], "--prune"),
        (
            vec!["optimize", "digits@1", "--finetune-epochs", "3"],
            "--prune",
        ),
    ] {
        let err = host.err(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let list = host.json(&["models", "list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

/// The last column of a labelled CSV, as numbers.
fn labels(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .expect("read csv")
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect()
}

fn features_only(labelled: &Path, out: &Path) {
    let text = std::fs::read_to_string(labelled).expect("read csv");
    let rows: Vec<String> = text
        .lines()
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            cells[..cells.len() - 1].join(",")
        })
        .collect();
    std::fs::write(out, rows.join("\n") + "\n").expect("write csv");
}

#[test]
fn int8_quantization_keeps_accuracy_and_shrinks_the_artifact() {
    let host = Host::new();
    let trained = host.train_digits();
    let f32_accuracy = accuracy(&trained);
    // Static int8, calibrated on the recorded training data (the default).
    let report = host.json(&["optimize", "digits@1", "--quantize", "int8", "--json"]);
    check_contract(&report, "digits@1");
    let int8 = accuracy(&report);
    let ratio =
        report["size_bytes"].as_f64().unwrap() / report["parent"]["size_bytes"].as_f64().unwrap();
    // Quantization shrinks the graph; the metadata sections (drift baseline, canary: about
    // 4 KB for 64 features) are the same size in both, so the bound is on the rest.
    let without_sections = |r: &str| {
        let mut model = perch::artifact::decode(&std::fs::read(host.export(r)).unwrap())
            .unwrap()
            .model;
        model.metadata.sections.clear();
        perch::artifact::encode(&model).unwrap().len() as f64
    };
    let graph_ratio = without_sections("digits@2") / without_sections("digits@1");
    eprintln!(
        "digits MLP: f32 {f32_accuracy:.4}, int8 {int8:.4}, size ratio {ratio:.3} ({graph_ratio:.3} without metadata sections)"
    );
    assert!(
        (int8 - f32_accuracy).abs() <= 0.01,
        "int8 {int8} vs {f32_accuracy}"
    );
    assert!(
        graph_ratio < 0.36,
        "size ratio without sections {graph_ratio}"
    );
    assert!(ratio < 0.5, "size ratio {ratio}");
    assert_eq!(report["optimizations"]["quantize"]["calibration"], "minmax");
    // Dynamic, and percentile calibration.
    let dynamic = host.json(&["optimize", "digits@1", "--quantize", "dynamic", "--json"]);
    assert!((accuracy(&dynamic) - f32_accuracy).abs() <= 0.01);
    let pct = host.json(&[
        "optimize",
        "digits@1",
        "--quantize",
        "int8",
        "--calibration",
        "percentile:99.9",
        "--json",
    ]);
    assert!((accuracy(&pct) - f32_accuracy).abs() <= 0.01);
    // The device runs the int8 artifact and gets the accuracy optimize measured.
    let artifact = host.export("digits@2");
    let x = host.dir.path().join("x.csv");
    features_only(&digits("digits_test.csv"), &x);
    let out = run_json(&artifact, &x, &[]).expect("perch run int8");
    let truth = labels(&digits("digits_test.csv"));
    let hits = out["label"]
        .iter()
        .zip(&truth)
        .filter(|(a, b)| a == b)
        .count();
    assert!((hits as f64 / truth.len() as f64 - int8).abs() < 1e-9);
    // The canary was recorded again for the int8 model, from the same input: the int8
    // model passes it, and its probabilities differ from the float canary's.
    let parent = host.export("digits@1");
    let canary = |path: &std::path::Path| {
        perch::artifact::decode(&std::fs::read(path).unwrap())
            .unwrap()
            .model
            .metadata
            .canary(64)
            .unwrap()
            .expect("a canary")
    };
    let (float_canary, int8_canary) = (canary(&parent), canary(&artifact));
    assert_eq!(float_canary.input, int8_canary.input);
    assert_ne!(float_canary.outputs, int8_canary.outputs);
    let mut device = perch::runtime::Model::load(&artifact, Default::default()).unwrap();
    assert_eq!(
        perch::runtime::check_canary(&mut device, &int8_canary),
        Ok(())
    );
    // Pruned, then quantized.
    let both = host.json(&[
        "optimize",
        "digits@1",
        "--prune",
        "0.8",
        "--finetune-epochs",
        "30",
        "--quantize",
        "int8",
        "--json",
    ]);
    assert!(accuracy(&both) >= f32_accuracy - 0.02, "{both}");
}

#[test]
fn an_external_onnx_model_becomes_a_native_int8_version_of_itself() {
    let host = Host::new();
    let onnx = corpus_dir().join("models/sk_mlp_digits/model.onnx");
    let (train, test) = (digits("digits_train.csv"), digits("digits_test.csv"));
    let args = [
        "optimize",
        onnx.to_str().unwrap(),
        "--name",
        "sk",
        "--quantize",
        "int8",
        "--calibrate",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--target",
        "target",
        "--json",
    ];
    // Without --target the labelled calibration file is refused, and nothing is registered.
    let err = host.err(&args[..8]);
    assert!(err.contains("--target"), "{err}");
    assert_eq!(
        host.json(&["models", "list", "--json"]),
        serde_json::json!([])
    );
    let report = host.json(&args);
    check_contract(&report, "sk@1");
    assert_eq!(report["ref"], "sk@2");
    let (a, b) = (accuracy(&report["parent"]), accuracy(&report));
    eprintln!("sk_mlp_digits: f32 {a:.4}, int8 {b:.4}");
    assert!((a - 0.962).abs() < 0.005, "the corpus model scores {a}");
    assert!((a - b).abs() <= 0.01, "int8 {b} vs f32 {a}");
    // A model the native IR cannot hold is refused by name.
    let qdq = corpus_dir().join("models/sk_mlp_digits_dyn_u8s8_pc/model.onnx");
    let err = host.err(&["optimize", qdq.to_str().unwrap(), "--quantize", "dynamic"]);
    assert!(err.contains("DynamicQuantizeLinear"), "{err}");
}
