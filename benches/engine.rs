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
    let keras = root.join("../shared/corpus/models/tf_mlp_digits/model.onnx");
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

criterion_group!(benches, bench, bench_int8);
criterion_main!(benches);
