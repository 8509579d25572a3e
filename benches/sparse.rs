//! Dense vs sparse (CSR) kernel on dense layers pruned by magnitude, batch 1 and 32.
//!
//! `cargo bench --bench sparse --no-default-features --features device`. Layers: the first
//! (64→64) layer of models/digits-mlp-trained at 80% and 90% sparsity, and synthetic
//! 256×256 and 512×512 layers at 50-95%, so the crossover is visible. The numbers and
//! how they were taken are in docs/pruning.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use perch::engine::kernels::{self, CsrMatrix};
use perch::graph::Layer;
use std::hint::black_box;
use std::path::Path;

/// Zeroes the `sparsity` fraction of `w` with the smallest magnitudes.
fn prune(w: &[f32], sparsity: f32) -> Vec<f32> {
    let mut mags: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    mags.sort_by(f32::total_cmp);
    let k = ((w.len() as f32 * sparsity) as usize).min(w.len());
    let threshold = if k == 0 { -1.0 } else { mags[k - 1] };
    w.iter()
        .map(|&v| if v.abs() <= threshold { 0.0 } else { v })
        .collect()
}

fn digits_first_layer() -> (usize, usize, Vec<f32>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits-mlp-trained/model.perch");
    let model = perch::artifact::read(&path).expect("digits model").model;
    model
        .graph
        .nodes
        .iter()
        .find_map(|n| match &n.layer {
            Layer::Dense { weight, .. } => Some((
                weight.shape[0] as usize,
                weight.shape[1] as usize,
                weight.to_f32_vec().expect("dense weight"),
            )),
            _ => None,
        })
        .expect("a dense layer")
}

fn synthetic(n: usize) -> Vec<f32> {
    (0..n * n)
        .map(|i| ((i as u64).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn bench(c: &mut Criterion) {
    let (o, i, w) = digits_first_layer();
    let mut cases = vec![
        (format!("digits_{o}x{i}"), o, i, w.clone(), 0.8f32),
        (format!("digits_{o}x{i}"), o, i, w, 0.9),
    ];
    for n in [256usize, 512] {
        for s in [0.5f32, 0.8, 0.9, 0.95] {
            cases.push((format!("synthetic_{n}x{n}"), n, n, synthetic(n), s));
        }
    }
    for (name, outputs, inputs, w, sparsity) in cases {
        let pruned = prune(&w, sparsity);
        let csr = CsrMatrix::from_dense(outputs, inputs, &pruned).expect("csr");
        let bias = vec![0.1f32; outputs];
        let mut group = c.benchmark_group(format!("{name}_sparsity{:.0}", sparsity * 100.0));
        for batch in [1usize, 32] {
            let x: Vec<f32> = (0..batch * inputs)
                .map(|k| ((k * 7) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let mut y = vec![0.0f32; batch * outputs];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("dense", batch), &x, |b, x| {
                b.iter(|| {
                    kernels::dense(
                        black_box(x),
                        black_box(&pruned),
                        &bias,
                        inputs,
                        outputs,
                        black_box(&mut y),
                    )
                })
            });
            let mut scratch = vec![0.0f32; inputs * kernels::CSR_TILE];
            group.bench_with_input(BenchmarkId::new("csr_batched", batch), &x, |b, x| {
                b.iter(|| {
                    kernels::csr_dense_batched(
                        black_box(x),
                        black_box(&csr),
                        &bias,
                        black_box(&mut y),
                        &mut scratch,
                    )
                })
            });
            group.bench_with_input(BenchmarkId::new("csr", batch), &x, |b, x| {
                b.iter(|| {
                    kernels::csr_dense(black_box(x), black_box(&csr), &bias, black_box(&mut y))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
