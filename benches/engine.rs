//! Native engine vs tract on the corpus MLPs, batch 1 and 32, one thread; and the native
//! engine's float32 vs int8 paths on the trained digits MLP (`digits_mlp_trained_int8`
//! group: models/digits-mlp-trained/model.perch and model-int8.perch).
//!
//! `cargo bench --bench engine` (criterion). For the three-way comparison with onnxruntime
//! and printed ratios, run `benches/compare.sh`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use perch::engine::Engine;
use perch::runtime::{EngineChoice, Model};
use std::hint::black_box;
use std::path::{Path, PathBuf};

fn models() -> Vec<(&'static str, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = vec![("digits_mlp_64", root.join("models/digits-mlp/model.onnx"))];
    let keras = root.join("tests/data/corpus/models/tf_mlp_digits/model.onnx");
    if keras.exists() {
        v.push(("keras_mlp_64_64_32", keras));
    }
    v
}

fn bench(c: &mut Criterion) {
    for (name, path) in models() {
        let bytes = std::fs::read(&path).expect("model file");
        let native = perch::convert::onnx_bytes_to_native(&bytes).expect("converts");
        let mut tract = Model::load(&path, EngineChoice::Tract).expect("tract loads");
        let mut group = c.benchmark_group(name);
        for batch in [1usize, 32] {
            let x: Vec<f32> = (0..batch * 64).map(|i| ((i * 7) % 17) as f32).collect();
            let mut engine = Engine::new(&native.graph, batch).expect("plans");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("perch_native", batch), &x, |b, x| {
                b.iter(|| {
                    engine.run(&[black_box(x)], batch).expect("runs");
                    black_box(engine.output_f32(1));
                })
            });
            group.bench_with_input(BenchmarkId::new("tract", batch), &x, |b, x| {
                b.iter(|| black_box(tract.run(black_box(x), batch).expect("runs")))
            });
        }
        group.finish();
    }
}

fn bench_int8(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits-mlp-trained");
    let mut group = c.benchmark_group("digits_mlp_trained_int8");
    for (label, file) in [("f32", "model.perch"), ("int8", "model-int8.perch")] {
        let model = perch::artifact::read(&dir.join(file))
            .expect("sample artifact")
            .model;
        for batch in [1usize, 32] {
            let x: Vec<f32> = (0..batch * 64).map(|i| ((i * 7) % 17) as f32).collect();
            let mut engine = Engine::new(&model.graph, batch).expect("plans");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(label, batch), &x, |b, x| {
                b.iter(|| {
                    engine.run(&[black_box(x)], batch).expect("runs");
                    black_box(engine.output_f32(0));
                })
            });
        }
    }
    group.finish();
}

/// A wider synthetic MLP (256-256-256-10, ReLU, softmax) where the matrix products, not the
/// per-call fixed costs, dominate: f32 vs int8 (static min-max, calibrated on 64 rows).
#[cfg(feature = "host")]
fn bench_int8_wide(c: &mut Criterion) {
    use perch::graph::{DType, Graph, Layer, Metadata, Model, Node, Output, Tensor, TensorSpec};
    use perch::optimize::{Calibration, QuantizeMode, QuantizeOptions, quantize};
    let widths = [256u32, 256, 256, 10];
    let value = |i: usize, k: usize| {
        ((i.wrapping_mul(2654435761).wrapping_add(k * 97)) % 2001) as f32 / 1000.0 - 1.0
    };
    let mut nodes = Vec::new();
    for (l, w) in widths.windows(2).enumerate() {
        let (inp, out) = (w[0] as usize, w[1] as usize);
        let scale = 1.0 / (inp as f32).sqrt();
        nodes.push(Layer::Dense {
            weight: Tensor::f32(
                vec![w[1], w[0]],
                (0..inp * out).map(|i| value(i, l) * scale).collect(),
            ),
            bias: Some(Tensor::f32(
                vec![w[1]],
                (0..out).map(|i| value(i, l + 7) * 0.1).collect(),
            )),
        });
        nodes.push(if l + 2 < widths.len() {
            Layer::Relu
        } else {
            Layer::Softmax
        });
    }
    let n = nodes.len() as u32;
    let graph = Graph {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![widths[0]],
        }],
        nodes: nodes
            .into_iter()
            .enumerate()
            .map(|(i, layer)| Node {
                name: format!("n{i}"),
                layer,
                inputs: vec![i as u32],
            })
            .collect(),
        outputs: vec![Output {
            name: "p".into(),
            value: n,
        }],
    };
    let model = Model {
        metadata: Metadata::default(),
        graph,
    };
    let rows: Vec<f32> = (0..64 * widths[0] as usize).map(|i| value(i, 3)).collect();
    let q = quantize(
        &model,
        &QuantizeOptions {
            mode: QuantizeMode::Static {
                calibration: Calibration::MinMax,
            },
        },
        Some(&rows),
    )
    .expect("quantizes");
    let mut group = c.benchmark_group("mlp_256x3_int8");
    for (label, m) in [("f32", &model), ("int8", &q)] {
        let x = &rows[..widths[0] as usize];
        let mut engine = Engine::new(&m.graph, 1).expect("plans");
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new(label, 1), x, |b, x| {
            b.iter(|| {
                engine.run(&[black_box(x)], 1).expect("runs");
                black_box(engine.output_f32(0));
            })
        });
    }
    group.finish();
}

#[cfg(not(feature = "host"))]
fn bench_int8_wide(_: &mut Criterion) {}

criterion_group!(benches, bench, bench_int8, bench_int8_wide);
criterion_main!(benches);
