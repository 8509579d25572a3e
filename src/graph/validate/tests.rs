use super::*;
use crate::graph::{Output, TensorSpec};
use crate::test_fixtures::dag;

fn dense_graph(weight: Tensor) -> Graph {
    let cols = weight.shape.get(1).copied().unwrap_or(1);
    Graph {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![cols],
        }],
        nodes: vec![Node {
            name: "fc".into(),
            layer: Layer::Dense { weight, bias: None },
            inputs: vec![0],
        }],
        outputs: vec![Output {
            name: "y".into(),
            value: 1,
        }],
    }
}

fn csr(shape: Vec<u32>, row_ptr: Vec<u32>, col_idx: Vec<u32>, values: Vec<f32>) -> Tensor {
    Tensor {
        shape,
        data: TensorData::Csr {
            row_ptr,
            col_idx,
            values,
        },
    }
}

#[test]
fn every_csr_invariant_is_checked() {
    let good = csr(
        vec![2, 3],
        vec![0, 1, 3],
        vec![2, 0, 1],
        vec![1.0, 2.0, 3.0],
    );
    assert!(dense_graph(good).infer_shapes().is_ok());
    let cases = [
        (csr(vec![2, 3], vec![0, 1], vec![2], vec![1.0]), "rows + 1"),
        (
            csr(
                vec![2, 3],
                vec![1, 1, 3],
                vec![2, 0, 1],
                vec![1.0, 2.0, 3.0],
            ),
            "starts at",
        ),
        (
            csr(
                vec![2, 3],
                vec![0, 1, 2],
                vec![2, 0, 1],
                vec![1.0, 2.0, 3.0],
            ),
            "ends at",
        ),
        (
            csr(
                vec![2, 3],
                vec![0, 3, 3],
                vec![2, 0, 1],
                vec![1.0, 2.0, 3.0],
            ),
            "strictly increase",
        ),
        (
            csr(
                vec![2, 3],
                vec![0, 2, 1, 3],
                vec![2, 0, 1],
                vec![1.0, 2.0, 3.0],
            ),
            "rows + 1",
        ),
        (
            csr(
                vec![3, 3],
                vec![0, 2, 1, 3],
                vec![0, 2, 0],
                vec![1.0, 2.0, 3.0],
            ),
            "decreases",
        ),
        (
            csr(
                vec![2, 3],
                vec![0, 1, 3],
                vec![3, 0, 1],
                vec![1.0, 2.0, 3.0],
            ),
            "column 3",
        ),
        (
            csr(
                vec![2, 3],
                vec![0, 1, 3],
                vec![2, 1, 1],
                vec![1.0, 2.0, 3.0],
            ),
            "strictly increase",
        ),
        (
            csr(vec![2, 3], vec![0, 1, 3], vec![2, 0], vec![1.0, 2.0, 3.0]),
            "column indices",
        ),
        (csr(vec![6], vec![0, 0], vec![], vec![]), "2-D"),
        (
            csr(vec![u32::MAX, u32::MAX], vec![0], vec![], vec![]),
            "limit",
        ),
    ];
    for (t, want) in cases {
        let err = dense_graph(t.clone())
            .infer_shapes()
            .expect_err("invalid CSR");
        assert!(err.to_string().contains(want), "{t:?}: {err}");
        let _ = t.to_f32_vec();
    }
}

#[test]
fn cnn_layers_infer_their_shapes() {
    let q = QuantParams {
        scale: 0.1,
        zero_point: 3,
    };
    let g = dag(
        (DType::I8, vec![4, 5, 2]),
        vec![
            (Layer::ToU8, vec![0]),
            (
                Layer::Transpose {
                    perm: vec![2, 0, 1],
                },
                vec![1],
            ),
            (
                Layer::QAdd {
                    a: q,
                    b: q,
                    output: q,
                },
                vec![2, 2],
            ),
            (Layer::QClamp { min: 3, max: 60 }, vec![3]),
            (
                Layer::QLookup {
                    table: (0..=255).collect(),
                },
                vec![4],
            ),
            (Layer::Concat { axis: 0 }, vec![5, 2, 5]),
            (
                Layer::Pad {
                    begin: vec![0, 1, 0],
                    end: vec![0, 1, 2],
                    value: 3.0,
                },
                vec![6],
            ),
            (
                Layer::QGlobalAvgPool {
                    input: q,
                    output: q,
                },
                vec![7],
            ),
            (Layer::ToI8, vec![8]),
        ],
    );
    let shapes = g.infer_shapes().expect("valid");
    assert_eq!(shapes.values[2], (DType::U8, vec![2, 4, 5]));
    assert_eq!(shapes.values[6], (DType::U8, vec![6, 4, 5]));
    assert_eq!(shapes.values[7], (DType::U8, vec![6, 6, 7]));
    assert_eq!(shapes.values[9], (DType::I8, vec![6, 1, 1]));

    let f = dag(
        (DType::F32, vec![3, 2, 2]),
        vec![
            (Layer::Add, vec![0, 0]),
            (Layer::Clip { min: 0.0, max: 6.0 }, vec![1]),
            (Layer::HardSwish, vec![2]),
            (
                Layer::HardSigmoid {
                    alpha: 0.2,
                    beta: 0.5,
                },
                vec![3],
            ),
            (
                Layer::ChannelAffine {
                    scale: vec![1.0; 3],
                    offset: vec![0.0; 3],
                },
                vec![4],
            ),
        ],
    );
    assert_eq!(
        f.infer_shapes().expect("valid").values[5],
        (DType::F32, vec![3, 2, 2])
    );
}

#[test]
fn damaged_cnn_layers_are_refused_with_the_reason() {
    let q = QuantParams {
        scale: 0.1,
        zero_point: 3,
    };
    let f32_in = (DType::F32, vec![3, 2, 2]);
    let cases: Vec<(Graph, &str)> = vec![
        (dag(f32_in.clone(), vec![(Layer::Add, vec![0])]), "takes 2"),
        (
            dag(
                f32_in.clone(),
                vec![(Layer::Flatten, vec![0]), (Layer::Add, vec![0, 1])],
            ),
            "must be equal",
        ),
        (
            dag(
                f32_in.clone(),
                vec![(Layer::Concat { axis: 3 }, vec![0, 0])],
            ),
            "out of range",
        ),
        (
            dag(
                f32_in.clone(),
                vec![
                    (
                        Layer::Transpose {
                            perm: vec![1, 2, 0],
                        },
                        vec![0],
                    ),
                    (Layer::Concat { axis: 0 }, vec![0, 1]),
                ],
            ),
            "does not join",
        ),
        (
            dag(f32_in.clone(), vec![(Layer::Concat { axis: 0 }, vec![])]),
            "inputs, got 0",
        ),
        (
            dag(
                f32_in.clone(),
                vec![(
                    Layer::Transpose {
                        perm: vec![0, 0, 1],
                    },
                    vec![0],
                )],
            ),
            "not a permutation",
        ),
        (
            dag(
                f32_in.clone(),
                vec![(
                    Layer::Transpose {
                        perm: vec![0, 1, 7],
                    },
                    vec![0],
                )],
            ),
            "not a permutation",
        ),
        (
            dag(
                f32_in.clone(),
                vec![(
                    Layer::Pad {
                        begin: vec![0, 1],
                        end: vec![0, 1, 0],
                        value: 0.0,
                    },
                    vec![0],
                )],
            ),
            "begin and",
        ),
        (
            dag(
                f32_in.clone(),
                vec![(
                    Layer::Pad {
                        begin: vec![0, u32::MAX, 0],
                        end: vec![0, u32::MAX, 0],
                        value: 0.0,
                    },
                    vec![0],
                )],
            ),
            "too large",
        ),
        (
            dag(
                f32_in.clone(),
                vec![(
                    Layer::Clip {
                        min: 1.0,
                        max: f32::NAN,
                    },
                    vec![0],
                )],
            ),
            "not ordered",
        ),
        (
            dag(
                f32_in.clone(),
                vec![(
                    Layer::ChannelAffine {
                        scale: vec![1.0; 2],
                        offset: vec![0.0; 3],
                    },
                    vec![0],
                )],
            ),
            "2 scales",
        ),
        (dag(f32_in.clone(), vec![(Layer::ToU8, vec![0])]), "int8"),
        (
            dag(
                (DType::U8, vec![4]),
                vec![(
                    Layer::QLookup {
                        table: vec![0; 255],
                    },
                    vec![0],
                )],
            ),
            "255 entries",
        ),
        (
            dag(
                (DType::U8, vec![4]),
                vec![(Layer::QClamp { min: 9, max: 3 }, vec![0])],
            ),
            "empty",
        ),
        (
            dag(
                (DType::U8, vec![4]),
                vec![(
                    Layer::QAdd {
                        a: q,
                        b: QuantParams {
                            scale: 0.0,
                            zero_point: 0,
                        },
                        output: q,
                    },
                    vec![0, 0],
                )],
            ),
            "second input scale",
        ),
        (
            dag((DType::U8, vec![4]), vec![(Layer::Add, vec![0, 0])]),
            "float32",
        ),
        (
            dag(
                (DType::U8, vec![1, 300, 300]),
                vec![(
                    Layer::QGlobalAvgPool {
                        input: q,
                        output: q,
                    },
                    vec![0],
                )],
            ),
            "sums more than",
        ),
        (
            dag((DType::I64, vec![4]), vec![(Layer::Relu, vec![0])]),
            "inputs must be",
        ),
    ];
    for (g, want) in cases {
        let err = g.infer_shapes().expect_err(want);
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

#[test]
fn the_graph_as_a_whole_is_bounded() {
    // Each value is within the per-value limit; together they are not.
    let big = (MAX_VALUE_ELEMENTS / 4) as u32;
    let g = dag(
        (DType::F32, vec![big]),
        (0..5).map(|i| (Layer::Relu, vec![i])).collect(),
    );
    let err = g.infer_shapes().expect_err("too large");
    assert!(
        matches!(err, GraphError::GraphTooLarge { ref node, .. } if node == "n3"),
        "{err}"
    );
}

#[test]
fn shapes_whose_element_count_overflows_are_refused() {
    // Five dimensions of 2^32 - 1 hold about 2^160 elements, more than even a u128 counts
    // (a fuzzed artifact found that the count overflowed in check_size).
    let huge = vec![u32::MAX; 5];
    let err = dag((DType::F32, huge.clone()), vec![(Layer::Relu, vec![0])])
        .infer_shapes()
        .expect_err("input too large");
    assert!(matches!(err, GraphError::TooLarge { .. }), "{err}");
    let reshape = Layer::Reshape {
        shape: huge.clone(),
    };
    let err = dag((DType::F32, vec![4]), vec![(reshape, vec![0])])
        .infer_shapes()
        .expect_err("reshape to an impossible shape");
    assert!(matches!(err, GraphError::Shape { .. }), "{err}");
    let weight = Tensor::f32(huge, vec![1.0]);
    assert_eq!(weight.numel(), usize::MAX);
    let mut g = dense_graph(weight);
    g.inputs[0].shape = vec![4];
    let err = g.infer_shapes().expect_err("weight too large");
    assert!(matches!(err, GraphError::Shape { .. }), "{err}");
}

#[test]
fn csr_is_only_accepted_for_dense_weights() {
    let mut g = dense_graph(Tensor::f32(vec![1, 2], vec![1.0, 2.0]));
    if let Layer::Dense { bias, .. } = &mut g.nodes[0].layer {
        *bias = Some(csr(vec![1, 1], vec![0, 1], vec![0], vec![1.0]));
    }
    let err = g.infer_shapes().expect_err("sparse bias");
    assert!(
        err.to_string().contains("only dense-layer weights"),
        "{err}"
    );
}

#[test]
fn csr_densifies_to_the_matrix_it_encodes() {
    let dense = vec![0.0, 0.0, 1.0, 2.0, 3.0, 0.0];
    let t = Tensor::csr_from_dense(2, 3, &dense).unwrap();
    assert_eq!(
        t.data,
        TensorData::Csr {
            row_ptr: vec![0, 1, 3],
            col_idx: vec![2, 0, 1],
            values: vec![1.0, 2.0, 3.0]
        }
    );
    assert_eq!(t.to_f32_vec(), Some(dense));
    assert_eq!(t.nonzeros(), 3);
    assert!(dense_graph(t).infer_shapes().is_ok());
}
