//! The tree ensemble layer: old (v1, pre-tree) artifacts still decode and run bit for bit,
//! tree models round-trip through the artifact, and hostile trees are load errors, never
//! panics or endless walks.

use perch::engine::Engine;
use perch::graph::{
    DType, Graph, Layer, Metadata, Model, Node, Output, SplitMode, TensorSpec, Tree, TreeAggregate,
    TreePostTransform,
};
use proptest::prelude::*;
use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn a_v1_artifact_written_before_trees_decodes_and_runs_identically() {
    let bytes = std::fs::read(fixture("artifact_v1_dense.perch")).expect("fixture");
    let model = perch::artifact::decode(&bytes).expect("decodes").model;
    // The encoding of the layers it uses did not move: re-encoding gives the same bytes.
    assert_eq!(perch::artifact::encode(&model).expect("encodes"), bytes);
    let input = perch::io::read_input(&fixture("artifact_v1_dense.input.npy")).expect("input");
    let batch = input.shape[0];
    let mut engine = Engine::new(&model.graph, batch).expect("plans");
    engine.run(&[&input.data], batch).expect("runs");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("artifact_v1_dense.expected.json")).expect("expected"),
    )
    .expect("json");
    let labels: Vec<i64> = expected["outputs"]["label"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|v| v.as_i64().expect("int"))
        .collect();
    let probs: Vec<f32> = expected["outputs"]["probabilities"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r.as_array().expect("row").clone())
        .map(|v| v.as_f64().expect("float") as f32)
        .collect();
    assert_eq!(engine.output_i64(0), Some(&labels[..]));
    // The JSON holds each f32 in its shortest round-tripping form, as the engine of the day
    // computed it; the dense layers now run on packed GEMM kernels (issue 12) that sum in
    // another order, so the last bits may move: within 1e-6, labels identical.
    let got = engine.output_f32(1).expect("probabilities");
    assert_eq!(got.len(), probs.len());
    for (g, w) in got.iter().zip(&probs) {
        assert!((g - w).abs() <= 1e-6, "{g} vs {w}");
    }
}

/// `x[1] <= 0.5 ? (x[0] <= 2 ? [1, 0] : [0, 1]) : [0.25, 0.75]`.
fn small_tree() -> Tree {
    Tree {
        feature: vec![1, 0, 0, 0, 0],
        threshold: vec![0.5, 2.0, 0.0, 0.0, 0.0],
        left: vec![1, 3, 0, 0, 0],
        right: vec![2, 4, 0, 0, 0],
        leaf_values: vec![0.25, 0.75, 1.0, 0.0, 0.0, 1.0],
        mode: SplitMode::Leq,
    }
}

fn forest_model(trees: Vec<Tree>, width: u32) -> Model {
    Model {
        metadata: Metadata::default(),
        graph: Graph {
            inputs: vec![TensorSpec {
                name: "X".into(),
                dtype: DType::F32,
                shape: vec![width],
            }],
            nodes: vec![
                Node {
                    name: "forest".into(),
                    layer: Layer::TreeEnsemble {
                        trees,
                        n_outputs: 2,
                        aggregate: TreeAggregate::Average,
                        base_values: vec![],
                        post_transform: TreePostTransform::None,
                    },
                    inputs: vec![0],
                },
                Node {
                    name: "label".into(),
                    layer: Layer::ArgMax {
                        labels: Some(vec![7, 9]),
                    },
                    inputs: vec![1],
                },
            ],
            outputs: vec![
                Output {
                    name: "label".into(),
                    value: 2,
                },
                Output {
                    name: "probabilities".into(),
                    value: 1,
                },
            ],
        },
    }
}

#[test]
fn a_tree_model_round_trips_and_runs() {
    let model = forest_model(vec![small_tree(), small_tree()], 2);
    let bytes = perch::artifact::encode(&model).expect("encodes");
    let back = perch::artifact::decode(&bytes).expect("decodes").model;
    assert_eq!(back, model);
    let mut e = Engine::new(&back.graph, 3).expect("plans");
    e.run(&[&[2.0, 0.5, 2.5, 0.0, 0.0, 1.0]], 3).expect("runs");
    assert_eq!(e.output_i64(0), Some(&[7, 9, 9][..]));
    assert_eq!(e.output_f32(1), Some(&[1.0, 0.0, 0.0, 1.0, 0.25, 0.75][..]));
}

#[test]
fn hostile_trees_are_load_errors() {
    type Edit = Box<dyn Fn(&mut Tree)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("cycle", Box::new(|t| t.left[1] = 1)),
        ("back edge", Box::new(|t| t.right[1] = 0)),
        ("child out of range", Box::new(|t| t.right[0] = 5)),
        ("feature out of range", Box::new(|t| t.feature[0] = 2)),
        (
            "short leaf values",
            Box::new(|t| {
                t.leaf_values.pop();
            }),
        ),
        (
            "short threshold",
            Box::new(|t| {
                t.threshold.pop();
            }),
        ),
        ("leaf with a right child", Box::new(|t| t.right[2] = 3)),
        ("NaN threshold", Box::new(|t| t.threshold[0] = f32::NAN)),
        ("empty", Box::new(|t| *t = Tree::default())),
    ];
    for (what, edit) in cases {
        let mut t = small_tree();
        edit(&mut t);
        let model = forest_model(vec![t], 2);
        let err = Engine::new(&model.graph, 1).expect_err(what);
        assert!(err.to_string().contains("forest"), "{what}: {err}");
        assert!(perch::artifact::encode(&model).is_err(), "{what}");
    }
    let model = forest_model(vec![], 2);
    assert!(Engine::new(&model.graph, 1).is_err());
}

proptest! {
    /// Whatever the arrays hold, loading either fails or gives an engine whose runs end.
    #[test]
    fn arbitrary_trees_never_panic(
        feature in proptest::collection::vec(0u32..4, 1..8),
        left in proptest::collection::vec(0u32..9, 1..8),
        right in proptest::collection::vec(0u32..9, 1..8),
        leaf_values in proptest::collection::vec(-2.0f32..2.0, 0..16),
        x in proptest::collection::vec(-3.0f32..3.0, 3),
    ) {
        let n = left.len();
        let tree = Tree {
            threshold: vec![0.0; feature.len().min(n)],
            feature,
            left,
            right,
            leaf_values,
            mode: SplitMode::Lt,
        };
        let model = forest_model(vec![tree], 3);
        if let Ok(mut e) = Engine::new(&model.graph, 1) {
            e.run(&[&x], 1).expect("runs");
        }
    }
}
