//! ONNX tree ensembles (scikit-learn gradient boosting and random forest regressors, made
//! by tests/fixtures/make_onnx_fixtures.py) converted to the native layer match
//! onnxruntime's outputs; branch modes other than `<=` convert to the same trees; modes and
//! labels with no native form are errors that say so.

use crate::harness;

use perch::convert::onnx_to_native;
use perch::engine::Engine;
use std::path::{Path, PathBuf};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(name)
}

fn proto(name: &str) -> pb::ModelProto {
    let bytes = std::fs::read(fixture(name).join("model.onnx")).expect("model");
    perch::onnx::parser()
        .proto_model_for_read(&mut &bytes[..])
        .expect("parses")
}

/// Converts `model`, runs the fixture's input and compares every output with its
/// `output_<i>.npy` (labels exactly, scores within 1e-4 relative + 1e-6).
fn check(name: &str, model: &pb::ModelProto) {
    let native = onnx_to_native(model).unwrap_or_else(|e| panic!("{name}: {e}"));
    let input = perch::io::read_input(&fixture(name).join("input.npy")).expect("input");
    let rows = input.shape[0];
    let mut engine = Engine::new(&native.graph, rows).expect("plans");
    engine.run(&[&input.data], rows).expect("runs");
    for i in 0..native.graph.outputs.len() {
        let want = harness::read_npy(&fixture(name).join(format!("output_{i}.npy")));
        let got: Vec<f64> = match engine.output_i64(i) {
            Some(v) => v.iter().map(|&l| l as f64).collect(),
            None => engine
                .output_f32(i)
                .expect("output")
                .iter()
                .map(|&v| v as f64)
                .collect(),
        };
        assert_eq!(got.len(), want.len(), "{name} output {i}");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs() + 1e-6,
                "{name} output {i}[{k}]: {g} vs onnxruntime {w}"
            );
        }
    }
}

const FIXTURES: [&str; 4] = [
    "tree_gb_binary_breast_cancer",
    "tree_gb_multiclass_iris",
    "tree_gb_regressor_diabetes",
    "tree_rf_regressor_diabetes",
];

#[test]
fn converted_tree_ensembles_match_onnxruntime() {
    for name in FIXTURES {
        check(name, &proto(name));
    }
}

fn tree_node(model: &mut pb::ModelProto) -> &mut pb::NodeProto {
    model
        .graph
        .as_mut()
        .expect("graph")
        .node
        .iter_mut()
        .find(|n| n.op_type.starts_with("TreeEnsemble"))
        .expect("tree node")
}

fn attr<'a>(node: &'a mut pb::NodeProto, name: &str) -> &'a mut pb::AttributeProto {
    node.attribute
        .iter_mut()
        .find(|a| a.name == name)
        .expect("attribute")
}

/// Rewrites every `x <= t` branch as `mode` with an equivalent threshold and children.
fn rewrite_modes(model: &mut pb::ModelProto, mode: &str) {
    let node = tree_node(model);
    let modes = attr(node, "nodes_modes").strings.clone();
    let branch: Vec<bool> = modes.iter().map(|m| m == b"BRANCH_LEQ").collect();
    let (threshold_up, swap) = match mode {
        "BRANCH_LT" => (true, false),
        "BRANCH_GT" => (false, true),
        "BRANCH_GTE" => (true, true),
        _ => unreachable!(),
    };
    if threshold_up {
        // x <= t  ⇔  x < next_up(t) for finite x.
        for (v, &b) in attr(node, "nodes_values").floats.iter_mut().zip(&branch) {
            if b {
                *v = v.next_up();
            }
        }
    }
    if swap {
        let t = attr(node, "nodes_truenodeids").ints.clone();
        let f = attr(node, "nodes_falsenodeids").ints.clone();
        attr(node, "nodes_truenodeids").ints = f;
        attr(node, "nodes_falsenodeids").ints = t;
    }
    for (m, &b) in attr(node, "nodes_modes").strings.iter_mut().zip(&branch) {
        if b {
            *m = mode.as_bytes().to_vec();
        }
    }
}

#[test]
fn lt_gt_and_gte_branches_convert_to_the_same_trees() {
    for mode in ["BRANCH_LT", "BRANCH_GT", "BRANCH_GTE"] {
        for name in ["tree_gb_multiclass_iris", "tree_rf_regressor_diabetes"] {
            let mut model = proto(name);
            rewrite_modes(&mut model, mode);
            check(name, &model);
        }
    }
}

#[test]
fn unsupported_forms_are_clear_errors() {
    let mut model = proto("tree_gb_multiclass_iris");
    let node = tree_node(&mut model);
    if let Some(m) = attr(node, "nodes_modes")
        .strings
        .iter_mut()
        .find(|m| m.starts_with(b"BRANCH"))
    {
        *m = b"BRANCH_EQ".to_vec();
    }
    let err = onnx_to_native(&model).expect_err("BRANCH_EQ").to_string();
    assert!(err.contains("BRANCH_EQ is not native"), "{err}");

    let mut model = proto("tree_gb_multiclass_iris");
    let node = tree_node(&mut model);
    attr(node, "post_transform").s = b"PROBIT".to_vec();
    let err = onnx_to_native(&model).expect_err("PROBIT").to_string();
    assert!(err.contains("PROBIT"), "{err}");

    let mut model = proto("tree_rf_regressor_diabetes");
    let node = tree_node(&mut model);
    let n = attr(node, "nodes_truenodeids").ints.len();
    // Point the root's true child back to the root: a cycle.
    let root = (0..n)
        .find(|&i| attr(node, "nodes_nodeids").ints[i] == 0)
        .expect("root");
    attr(node, "nodes_truenodeids").ints[root] = 0;
    let err = onnx_to_native(&model).expect_err("cycle").to_string();
    assert!(err.contains("not reachable"), "{err}");
}
