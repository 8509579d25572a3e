//! The NHWC kernels on the layer shapes of the four edge classes (keyword spotting DS-CNN,
//! MobileNetV1 0.25 person detection, ResNet-8, the dense autoencoder), f32 and int8, one
//! sample, one thread; throughput in multiply-accumulates. The `whole` group runs every
//! layer of a class in order, as a model would (kernels only: no engine around them).
//!
//! `cargo bench --bench kernels [-- FILTER]`; `PERCH_KERNELS=portable` (or another
//! family's name, such as `avx2`) for that family's kernels. The layers are listed in benches/kernel_layers.json, which
//! benches/kernel_peers.py reads to time the same layers on onnxruntime.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use perch::engine::kernels::{
    Activation, AddU8, ConvF32, ConvGeometry, ConvU8, DenseF32, DenseU8, GlobalAvgPoolU8,
    OutputQuant, U8Quant, add_f32, global_avg_pool_f32,
};
use serde_json::Value;
use std::hint::black_box;
use std::time::Duration;

/// A layer's run over its own buffers.
type Run = Box<dyn FnMut()>;

/// One layer, built for both precisions, with its buffers.
struct Layer {
    class: String,
    name: String,
    macs: u64,
    f32_run: Run,
    u8_run: Run,
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 2654435761) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn codes(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (((i + seed) * 2654435761) >> 7) as u8)
        .collect()
}

fn act(name: &str) -> Activation {
    match name {
        "relu" => Activation::Relu,
        "relu6" => Activation::Clip { min: 0.0, max: 6.0 },
        _ => Activation::Identity,
    }
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("size") as usize)
        .collect()
}

fn layer(l: &Value) -> Layer {
    let s = |k: &str| l[k].as_str().expect("string").to_string();
    let n = |k: &str| l[k].as_u64().expect("number") as usize;
    let q_in = U8Quant {
        scale: 0.05,
        zero_point: 10,
    };
    let (kind, a) = (s("kind"), act(l["act"].as_str().unwrap_or("identity")));
    let out_q = OutputQuant::u8_with(
        U8Quant {
            scale: 0.1,
            zero_point: 20,
        },
        a,
    )
    .expect("clamp");
    let (macs, f32_run, u8_run): (u64, Run, Run) = match kind.as_str() {
        "conv" => {
            let i = usizes(&l["input"]);
            let (k, st, p, d) = (
                usizes(&l["k"]),
                usizes(&l["stride"]),
                usizes(&l["pad"]),
                usizes(&l["dilation"]),
            );
            let g = ConvGeometry::new(
                [i[0], i[1], i[2]],
                n("out_c"),
                [k[0], k[1]],
                [st[0], st[1]],
                [p[0], p[1], p[2], p[3]],
                [d[0], d[1]],
                n("groups"),
            )
            .expect("geometry");
            let w = values(g.weight_len(), 1);
            let b = values(g.out_c, 2);
            let conv = ConvF32::new(g, &w, &b, a).expect("conv");
            let x = values(g.input_len(), 3);
            let mut y = vec![0.0; g.output_len()];
            let mut scratch = vec![0.0; conv.scratch_len()];
            let wq: Vec<i8> = codes(g.weight_len(), 4).iter().map(|&c| c as i8).collect();
            let qconv =
                ConvU8::new(g, &wq, &[0.01], &vec![100; g.out_c], q_in, out_q).expect("qconv");
            let xq = codes(g.input_len(), 5);
            let mut yq = vec![0u8; g.output_len()];
            let mut qscratch = vec![0u8; qconv.scratch_len()];
            (
                g.macs(),
                Box::new(move || conv.run(black_box(&x), black_box(&mut y), &mut scratch)),
                Box::new(move || qconv.run_u8(black_box(&xq), black_box(&mut yq), &mut qscratch)),
            )
        }
        "dense" => {
            let (ni, no) = (n("inputs"), n("outputs"));
            let d = DenseF32::new(ni, no, &values(ni * no, 1), &values(no, 2), a).expect("dense");
            let x = values(ni, 3);
            let mut y = vec![0.0; no];
            let wq: Vec<i8> = codes(ni * no, 4).iter().map(|&c| c as i8).collect();
            let dq =
                DenseU8::new(ni, no, &wq, &[0.01], &vec![100; no], q_in, out_q).expect("qdense");
            let xq = codes(ni, 5);
            let mut yq = vec![0u8; no];
            let mut scratch = vec![0u8; dq.scratch_len()];
            (
                (ni * no) as u64,
                Box::new(move || d.run(black_box(&x), black_box(&mut y))),
                Box::new(move || dq.run_u8(black_box(&xq), black_box(&mut yq), &mut scratch)),
            )
        }
        "add" => {
            let len = n("len");
            let (xa, xb) = (values(len, 1), values(len, 2));
            let mut y = vec![0.0; len];
            let (qa, qb) = (codes(len, 3), codes(len, 4));
            let mut yq = vec![0u8; len];
            let add = AddU8::new(
                q_in,
                U8Quant {
                    scale: 0.07,
                    zero_point: 100,
                },
                out_q,
            )
            .expect("qadd");
            (
                len as u64,
                Box::new(move || add_f32(black_box(&xa), black_box(&xb), a, black_box(&mut y))),
                Box::new(move || add.run(black_box(&qa), black_box(&qb), black_box(&mut yq))),
            )
        }
        "gap" => {
            let (pixels, c) = (n("pixels"), n("c"));
            let x = values(pixels * c, 1);
            let mut y = vec![0.0; c];
            let xq = codes(pixels * c, 2);
            let mut yq = vec![0u8; c];
            let pool = GlobalAvgPoolU8::new(pixels, c, q_in, out_q).expect("qgap");
            (
                (pixels * c) as u64,
                Box::new(move || global_avg_pool_f32(black_box(&x), c, black_box(&mut y))),
                Box::new(move || pool.run(black_box(&xq), black_box(&mut yq))),
            )
        }
        other => panic!("unknown layer kind {other}"),
    };
    Layer {
        class: s("cls"),
        name: s("name"),
        macs,
        f32_run,
        u8_run,
    }
}

fn layers() -> Vec<Layer> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/kernel_layers.json");
    let text = std::fs::read_to_string(path).expect("benches/kernel_layers.json");
    let list: Value = serde_json::from_str(&text).expect("layer list");
    list.as_array().expect("array").iter().map(layer).collect()
}

fn bench(c: &mut Criterion) {
    let mut all = layers();
    let mut classes: Vec<String> = all.iter().map(|l| l.class.clone()).collect();
    classes.dedup();
    for class in &classes {
        let mut group = c.benchmark_group(format!("layer/{class}"));
        for l in all.iter_mut().filter(|l| &l.class == class) {
            group.throughput(Throughput::Elements(l.macs));
            group.bench_function(format!("{}/f32", l.name), |b| b.iter(&mut l.f32_run));
            group.bench_function(format!("{}/int8", l.name), |b| b.iter(&mut l.u8_run));
        }
        group.finish();
    }
    let mut group = c.benchmark_group("whole");
    for class in &classes {
        let mut members: Vec<&mut Layer> = all.iter_mut().filter(|l| &l.class == class).collect();
        let macs: u64 = members.iter().map(|l| l.macs).sum();
        group.throughput(Throughput::Elements(macs));
        group.bench_function(format!("{class}/f32"), |b| {
            b.iter(|| members.iter_mut().for_each(|l| (l.f32_run)()))
        });
        group.bench_function(format!("{class}/int8"), |b| {
            b.iter(|| members.iter_mut().for_each(|l| (l.u8_run)()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
