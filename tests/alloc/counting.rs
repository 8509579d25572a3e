//! The native engine performs no heap allocation per inference once planned: a counting
//! global allocator watches 1,000 runs of real models.

use crate::{ALLOCATIONS, COUNTING, alone};
use perch::engine::Engine;
use perch::graph::{DType, Graph, Layer, Node, Output, Tensor, TensorSpec};
use std::sync::atomic::Ordering;

fn allocations_during(engine: &mut Engine, input: &[f32], batch: usize, runs: usize) -> usize {
    engine.run(&[input], batch).expect("warm-up run");
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..runs {
        engine.run(&[input], batch).expect("run");
        std::hint::black_box(engine.output_f32(0));
    }
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

fn cnn() -> Graph {
    let t = |shape: Vec<u32>| {
        let n: u32 = shape.iter().product();
        Tensor::f32(shape, (0..n).map(|i| (i % 7) as f32 / 7.0 - 0.4).collect())
    };
    let layers = vec![
        Layer::Standardize {
            offset: vec![0.5],
            scale: vec![2.0],
        },
        Layer::Conv2d {
            weight: t(vec![4, 1, 3, 3]),
            bias: Some(t(vec![4])),
            stride: [1, 1],
            padding: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
        },
        Layer::Relu,
        Layer::MaxPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0; 4],
        },
        Layer::AvgPool2d {
            kernel: [2, 2],
            stride: [1, 1],
            padding: [0; 4],
            count_include_pad: false,
        },
        Layer::GlobalAvgPool,
        Layer::Flatten,
        Layer::Dense {
            weight: t(vec![3, 4]),
            bias: None,
        },
        Layer::Tanh,
        Layer::Softmax,
        Layer::ArgMax { labels: None },
    ];
    let n = layers.len() as u32;
    Graph {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![1, 8, 8],
        }],
        nodes: layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| Node {
                name: format!("n{i}"),
                layer,
                inputs: vec![i as u32],
            })
            .collect(),
        outputs: vec![
            Output {
                name: "probs".into(),
                value: n - 1,
            },
            Output {
                name: "label".into(),
                value: n,
            },
        ],
    }
}

#[test]
fn no_allocation_per_inference() {
    let _alone = alone();
    COUNTING.with(|c| c.set(true));
    // A CNN using every layer kind, at batch 1 and 4.
    let g = cnn();
    let mut engine = Engine::new(&g, 4).expect("plans");
    let x: Vec<f32> = (0..4 * 64).map(|i| (i % 13) as f32 / 13.0).collect();
    assert_eq!(allocations_during(&mut engine, &x[..64], 1, 1000), 0);
    assert_eq!(allocations_during(&mut engine, &x, 4, 1000), 0);

    // The digits MLP from the corpus, converted to the native IR.
    #[cfg(feature = "onnx")]
    {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits-mlp/model.onnx");
        let bytes = std::fs::read(&path).expect("sample model");
        let model = perch::convert::onnx_bytes_to_native(&bytes).expect("converts");
        let mut engine = Engine::new(&model.graph, 1).expect("plans");
        let x = vec![3.0f32; 64];
        assert_eq!(allocations_during(&mut engine, &x, 1, 1000), 0);
    }

    // Edge CNNs of every kind of export, converted: float NHWC with free transposes, NCHW
    // with a transpose on entry, residual adds, QDQ and QOperator int8, int8 graph inputs.
    #[cfg(feature = "onnx")]
    for name in [
        "kws_dscnn_float",
        "kws_dscnn_nchw",
        "kws_dscnn_qop_u8s8",
        "ic_resnet8_qdq_s8s8_pc",
        "ic_resnet8_tflite_int8",
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/edge");
        let bytes = std::fs::read(dir.join(name).join("model.onnx")).expect("edge model");
        let model = perch::convert::onnx_bytes_to_native(&bytes).expect("converts");
        let mut engine = Engine::new(&model.graph, 2).expect("plans");
        let spec = &model.graph.inputs[0];
        let n = spec.sample_len() * 2;
        let codes: Vec<i8> = (0..n).map(|i| (i % 37) as i8 - 18).collect();
        let floats: Vec<f32> = codes.iter().map(|&c| f32::from(c) / 20.0).collect();
        let input = match spec.dtype {
            DType::I8 => perch::engine::InputData::I8(&codes),
            _ => perch::engine::InputData::F32(&floats),
        };
        for batch in [1, 2] {
            let x = match input {
                perch::engine::InputData::I8(c) => {
                    perch::engine::InputData::I8(&c[..batch * n / 2])
                }
                perch::engine::InputData::F32(f) => {
                    perch::engine::InputData::F32(&f[..batch * n / 2])
                }
                other => other,
            };
            engine.run_inputs(&[x], batch).expect("warm-up run");
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            for _ in 0..20 {
                engine.run_inputs(&[x], batch).expect("run");
            }
            assert_eq!(
                ALLOCATIONS.load(Ordering::SeqCst) - before,
                0,
                "{name} at batch {batch}"
            );
        }
    }

    // The int8 digits MLP (static: quantize, two quantized dense layers) at batch 1 and 4.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/digits-mlp-trained/model-int8.perch");
    let model = perch::artifact::read(&path).expect("int8 sample").model;
    let mut int8 = Engine::new(&model.graph, 4).expect("plans");
    assert_eq!(allocations_during(&mut int8, &x[..64], 1, 1000), 0);
    assert_eq!(allocations_during(&mut int8, &x, 4, 1000), 0);

    // A dense layer stored sparsely (CSR), through the single-sample and batched kernels.
    let w: Vec<f32> = (0..64 * 64)
        .map(|i| {
            if i % 5 == 0 {
                (i % 11) as f32 / 11.0 - 0.5
            } else {
                0.0
            }
        })
        .collect();
    let sparse = Graph {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![64],
        }],
        nodes: vec![Node {
            name: "fc".into(),
            layer: Layer::Dense {
                weight: Tensor::csr_from_dense(64, 64, &w).unwrap(),
                bias: Some(Tensor::f32(vec![64], vec![0.1; 64])),
            },
            inputs: vec![0],
        }],
        outputs: vec![Output {
            name: "y".into(),
            value: 1,
        }],
    };
    let mut sparse_engine = Engine::new(&sparse, 32).expect("plans");
    let xs: Vec<f32> = (0..32 * 64).map(|i| (i % 13) as f32 / 13.0).collect();
    assert_eq!(
        allocations_during(&mut sparse_engine, &xs[..64], 1, 1000),
        0
    );
    assert_eq!(allocations_during(&mut sparse_engine, &xs, 32, 1000), 0);

    // The counter does count: growing the batch allocates.
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let big = vec![0.5f32; 16 * 64];
    engine.run(&[&big], 16).expect("runs");
    assert!(ALLOCATIONS.load(Ordering::SeqCst) > before);
}
