//! The ONNX ops perch adds to tract (`src/onnx/ops`), checked against onnxruntime.
//!
//! Each model runs its whole input as one batch and each output is compared with
//! onnxruntime's (single thread) reference:
//! - float outputs of float models: within `1e-4 * |reference| + 1e-5`;
//! - float outputs of quantized models: within one quantization step of the output (the
//!   scale of the graph's final DequantizeLinear), plus float rounding;
//! - integer labels: equal; for quantized models a label may differ only on rows where the
//!   reference's two highest probabilities are within one step of each other, since a one
//!   step difference in the scores may then flip the arg max.
//!
//! Models come from the corpus copy in `tests/data/corpus/models` and from `tests/fixtures/onnx` (made by `tests/fixtures/make_onnx_fixtures.py`;
//! its `manifest.json` records, per fixture, the op types and the output step).
use perch::onnx::{OnnxModel, OnnxValue};
use std::path::{Path, PathBuf};

/// How an output is compared with its reference.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Float output of a float model.
    Float,
    /// Float output of a quantized model with this output step.
    Quantized(f32),
    /// Integer labels, equal.
    Labels,
    /// Integer labels of a quantized model: may differ where the reference top-2 scores of
    /// output `.0` are within one step `.1`.
    QuantizedLabels(usize, f32),
}

fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = perch::io::read_input(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (a.shape, a.data)
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(name)
}

/// A reference output; `*.steps.npy` files hold quantized outputs as step counts.
fn load_reference(dir: &Path, file: &str, check: Check) -> Vec<f32> {
    let (_, values) = npy(&dir.join(file));
    match check {
        Check::Quantized(step) | Check::QuantizedLabels(_, step)
            if file.ends_with(".steps.npy") =>
        {
            values.iter().map(|v| v * step).collect()
        }
        _ => values,
    }
}

/// Runs `dir/model.onnx` on `dir/input.npy` and compares output `i` with `refs[i]`.
/// Returns the largest absolute difference per output.
fn check_model(dir: &Path, refs: &[(&str, Check)]) -> Vec<f32> {
    check_model_with(dir, dir, refs)
}

/// As [`check_model`], with the references in `ref_dir`.
fn check_model_with(dir: &Path, ref_dir: &Path, refs: &[(&str, Check)]) -> Vec<f32> {
    let model = OnnxModel::load(&dir.join("model.onnx"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let (shape, data) = npy(&dir.join("input.npy"));
    let input = ndarray::ArrayD::from_shape_vec(shape, data).expect("input shape");
    let outputs = model
        .run(vec![input.into()])
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert_eq!(outputs.len(), refs.len(), "{}: output count", dir.display());
    let values: Vec<Vec<f32>> = outputs
        .iter()
        .map(|o| match o {
            OnnxValue::F32(a) => a.iter().copied().collect(),
            OnnxValue::I64(a) => a.iter().map(|&v| v as f32).collect(),
        })
        .collect();
    let mut max_diffs = vec![];
    for (i, (file, check)) in refs.iter().enumerate() {
        let reference = load_reference(ref_dir, file, *check);
        let got = &values[i];
        assert_eq!(got.len(), reference.len(), "{}: {file}", dir.display());
        let mut max_diff = 0f32;
        for (k, (&g, &r)) in got.iter().zip(&reference).enumerate() {
            let diff = (g - r).abs();
            max_diff = max_diff.max(diff);
            let ok = match *check {
                Check::Float => diff <= 1e-4 * r.abs() + 1e-5,
                Check::Quantized(step) => diff <= step * 1.001 + 1e-6,
                Check::Labels => g == r,
                Check::QuantizedLabels(scores, step) => {
                    g == r || {
                        let probs = load_reference(ref_dir, refs[scores].0, refs[scores].1);
                        let width = probs.len() / reference.len();
                        let mut row: Vec<f32> = probs[k * width..(k + 1) * width].to_vec();
                        row.sort_by(|a, b| b.total_cmp(a));
                        row[0] - row[1] <= step * 1.001
                    }
                }
            };
            assert!(
                ok,
                "{}: {file}[{k}] = {g}, reference {r} ({check:?})",
                dir.display()
            );
        }
        max_diffs.push(max_diff);
    }
    eprintln!("{}: max abs diff per output {max_diffs:?}", dir.display());
    max_diffs
}

/// A corpus model's folder (the harness's corpus, `models/NAME`).
fn corpus_model(name: &str) -> PathBuf {
    crate::harness::corpus_dir().join("models").join(name)
}

fn corpus(name: &str, refs: &[(&str, Check)]) {
    let dir = corpus_model(name);
    assert!(
        dir.exists(),
        "{name}: {} not found (the repository carries the corpus in tests/data/corpus)",
        dir.display()
    );
    check_model(&dir, refs);
}

fn fixture(name: &str, refs: &[(&str, Check)]) {
    check_model(&fixture_dir(name), refs);
}

const LABEL_PROBS: [(&str, Check); 2] = [
    ("output_label.npy", Check::Labels),
    ("output_probabilities.npy", Check::Float),
];
const FIXTURE_LABEL_SCORES: [(&str, Check); 2] = [
    ("output_0.npy", Check::Labels),
    ("output_1.npy", Check::Float),
];

#[test]
fn scaler_logreg_breast_cancer() {
    corpus("sk_scaler_logreg_breast_cancer", &LABEL_PROBS);
}

#[test]
fn scaler_logreg_wine() {
    corpus("sk_scaler_logreg_wine", &LABEL_PROBS);
}

/// tract's own TreeEnsembleClassifier is replaced: the random forests and trees it handled
/// must still work.
#[test]
fn tree_classifier_random_forest_and_decision_tree() {
    for name in ["sk_rf_iris", "sk_rf_wine", "sk_dtree_iris", "sk_dtree_wine"] {
        corpus(name, &LABEL_PROBS);
    }
}

#[test]
fn zipmap() {
    fixture("zipmap_logreg_iris", &FIXTURE_LABEL_SCORES);
}

#[test]
fn svm_linear() {
    fixture("svm_linear_iris", &FIXTURE_LABEL_SCORES);
}

/// onnx.reference's SVMClassifier computes the pairwise-coupling probabilities differently
/// from onnxruntime (up to 0.065 here, see manifest.json and reference_1.npy); perch follows
/// onnxruntime, the runtime the corpus references come from.
#[test]
fn svm_rbf_probabilities() {
    fixture("svm_rbf_proba_iris", &FIXTURE_LABEL_SCORES);
}

#[test]
fn svm_rbf_binary() {
    fixture("svm_rbf_binary", &FIXTURE_LABEL_SCORES);
}

#[test]
fn tree_regressor_random_forest() {
    fixture(
        "tree_rf_regressor_diabetes",
        &[("output_0.npy", Check::Float)],
    );
}

#[test]
fn tree_regressor_gradient_boosting() {
    fixture(
        "tree_gb_regressor_diabetes",
        &[("output_0.npy", Check::Float)],
    );
}

#[test]
fn tree_classifier_gradient_boosting_binary() {
    fixture("tree_gb_binary_breast_cancer", &FIXTURE_LABEL_SCORES);
}

#[test]
fn tree_classifier_gradient_boosting_multiclass() {
    fixture("tree_gb_multiclass_iris", &FIXTURE_LABEL_SCORES);
}

/// Loads `tests/fixtures/onnx/malformed/<name>.onnx`, which must fail with an error (not a
/// panic) whose message contains each of `words`.
fn malformed(name: &str, words: &[&str]) {
    let path = fixture_dir("malformed").join(format!("{name}.onnx"));
    let err = match OnnxModel::load(&path) {
        Ok(_) => panic!("{name}: loaded a malformed model"),
        Err(e) => format!("{e:#}"),
    };
    for w in words {
        assert!(
            err.contains(w),
            "{name}: error {err:?} does not mention {w:?}"
        );
    }
}

#[test]
fn scaler_with_mismatched_offset_and_scale_is_an_error() {
    malformed(
        "scaler_lengths",
        &["bad_scaler", "offset has 2 values and scale 3"],
    );
}

#[test]
fn tree_with_missing_child_is_an_error() {
    malformed("tree_missing_child", &["bad_tree", "false node 7"]);
}

#[test]
fn tree_with_class_id_out_of_range_is_an_error() {
    malformed(
        "tree_class_out_of_range",
        &["bad_classes", "class_ids value 5"],
    );
}

#[test]
fn svm_with_wrong_coefficient_count_is_an_error() {
    malformed(
        "svm_coefficients",
        &["bad_svm", "coefficients has 2 values"],
    );
}

/// The output step of the corpus QOperator models: their probabilities come out of
/// QLinearSoftmax (y_scale 1/256) through a final DequantizeLinear of that scale.
const CORPUS_QOP_STEP: f32 = 1.0 / 256.0;

/// The corpus QOperator models are compared with onnx.reference, not with the corpus'
/// onnxruntime outputs: those differ from an exact computation by up to 0.38 (98 steps) on
/// three of the four models (onnxruntime's u8s8 matmul kernel on the machine that made them
/// saturates int16 intermediates; onnxruntime 1.32 on this machine agrees with the exact
/// result). `make_onnx_fixtures.py` runs onnx.reference with the contrib ops written from
/// onnxruntime's spec and saves the outputs under `tests/fixtures/onnx/corpus_reference`;
/// `manifest.json` records the differences with the corpus outputs.
fn corpus_quantized(name: &str, refs: &[(&str, Check)]) {
    let dir = corpus_model(name);
    assert!(
        dir.exists(),
        "{name}: {} not found (the repository carries the corpus in tests/data/corpus)",
        dir.display()
    );
    check_model_with(&dir, &fixture_dir("corpus_reference").join(name), refs);
}

#[test]
fn qlinear_add_softmax_sklearn_mlp() {
    let q = [
        (
            "output_label.npy",
            Check::QuantizedLabels(1, CORPUS_QOP_STEP),
        ),
        (
            "output_probabilities.steps.npy",
            Check::Quantized(CORPUS_QOP_STEP),
        ),
    ];
    corpus_quantized("sk_mlp_digits_qop_u8s8_pc", &q);
    corpus_quantized("sk_mlp_digits_qop_u8s8_pt", &q);
}

#[test]
fn qlinear_add_mul_softmax_keras_mlp() {
    let q = [("output_probs.steps.npy", Check::Quantized(CORPUS_QOP_STEP))];
    corpus_quantized("tf_mlp_digits_qop_u8s8_pc", &q);
    corpus_quantized("tf_mlp_digits_qop_u8s8_pt", &q);
}

/// The output step of a fixture, from `manifest.json`.
fn fixture_step(name: &str) -> f32 {
    let path = fixture_dir("manifest.json");
    let text = std::fs::read_to_string(&path).expect("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest.json");
    manifest["fixtures"][name]["output_quant_step"][0]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: no output_quant_step in manifest.json")) as f32
}

#[test]
fn qgemm_sigmoid_leaky_relu_per_tensor() {
    let step = fixture_step("qop_mlp_pt");
    fixture("qop_mlp_pt", &[("output_0.npy", Check::Quantized(step))]);
}

#[test]
fn qgemm_sigmoid_leaky_relu_per_channel() {
    let step = fixture_step("qop_mlp_pc");
    fixture("qop_mlp_pc", &[("output_0.npy", Check::Quantized(step))]);
}

#[test]
fn qlinear_pools_concat_add_mul_softmax_qgemm_cnn() {
    let step = fixture_step("qop_cnn");
    fixture("qop_cnn", &[("output_0.npy", Check::Quantized(step))]);
}
