//! Batch-pinned tract plans against the symbolic-batch plan perch built before (issue 12),
//! batch 1, one thread, in one run: for every model of the edge corpus
//! (`tests/data/edge/manifest.json`) and the tract-path fixtures
//! (`tests/fixtures/tract/manifest.json`), the median per-call latency of
//! - `symbolic`: the plan perch built until 2026-12 (the file's element types, batch axis a
//!   symbol `N`, typed, perch's fixups, optimized), run through tract directly;
//! - `pinned`: the same with the batch axis pinned (as perch builds it now), through tract
//!   directly;
//! - `perch`: perch's `OnnxModel` (that pinned plan), through its `run`, so perch's input
//!   checks and output conversion are included;
//!
//! and the ratio symbolic / perch (each the fastest round's per-call mean), and the time
//! each took to load (parse, type, optimize: `perch run` on a
//! file of more than one row pays the pinned one again for each batch size it uses). Rounds
//! alternate between the two so that load on this shared machine
//! falls on both alike.
//!
//!     cargo bench --bench tract_plans [-- NAME_FILTER] [--rounds R] [--batch B]
//!
//! A model the symbolic plan cannot load (a Keras Flatten exported with a dynamic batch)
//! shows why instead of a time.

use anyhow::Context;
use perch::onnx::OnnxModel;
use serde_json::Value;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

struct Case {
    name: String,
    model: PathBuf,
    input: PathBuf,
}

fn cases(root: &Path) -> Vec<Case> {
    let mut v = Vec::new();
    let edge = root.join("tests/data/edge");
    if let Ok(text) = std::fs::read_to_string(edge.join("manifest.json")) {
        let m: Value = serde_json::from_str(&text).expect("edge manifest");
        for model in m["models"].as_array().into_iter().flatten() {
            v.push(Case {
                name: model["name"].as_str().unwrap_or("?").to_string(),
                model: edge.join(model["onnx"].as_str().unwrap_or("")),
                input: edge.join(model["input"]["npy"].as_str().unwrap_or("")),
            });
        }
    }
    let fixtures = root.join("tests/fixtures/tract");
    let text = std::fs::read_to_string(fixtures.join("manifest.json")).expect("fixture manifest");
    let m: Value = serde_json::from_str(&text).expect("fixture manifest");
    for name in m["fixtures"].as_object().expect("fixtures").keys() {
        v.push(Case {
            name: format!("fixture/{name}"),
            model: fixtures.join(name).join("model.onnx"),
            input: fixtures.join(name).join("input.npy"),
        });
    }
    v
}

/// The first `batch` rows of the case's input (cycled), as a tensor of the model's input type.
fn input_tensor(model: &OnnxModel, case: &Case, batch: usize) -> Tensor {
    let a = perch::io::read_input(&case.input).expect("input");
    let spec = &model.inputs()[0];
    let per = spec.sample_len();
    let values: Vec<f32> = a.data.iter().copied().cycle().take(batch * per).collect();
    let values = perch::runtime::InputValues::from_f32(spec, &values, 0).expect("input fits");
    let shape: Vec<usize> = std::iter::once(batch)
        .chain(spec.shape.iter().map(|&d| d as usize))
        .collect();
    fn t<T: Datum>(shape: &[usize], v: Vec<T>) -> Tensor {
        tract_ndarray::ArrayD::from_shape_vec(shape, v)
            .expect("shape")
            .into()
    }
    match values {
        perch::runtime::InputValues::F32(v) => t(&shape, v),
        perch::runtime::InputValues::I8(v) => t(&shape, v),
        perch::runtime::InputValues::U8(v) => t(&shape, v),
        perch::runtime::InputValues::I64(v) => t(&shape, v),
        _ => unreachable!("every element type perch feeds is handled above"),
    }
}

/// The plan perch builds, made here with tract alone: the inputs' element types, the batch
/// axis pinned to `batch`, or a symbol `N` when `None` (perch's loader before per-batch
/// plans, with the element types fixed so int8 models load too).
fn plan(path: &Path, batch: Option<usize>) -> TractResult<Arc<TypedRunnableModel>> {
    let mut model = perch::onnx::parser().model_for_path(path)?;
    let n: TDim = match batch {
        Some(b) => b.into(),
        None => model.symbols.sym("N").into(),
    };
    for ix in 0..model.inputs.len() {
        let fact = model.input_fact(ix)?.clone();
        let dt = fact.datum_type.concretize().context("input type")?;
        let mut dims: TVec<TDim> = tvec![n.clone()];
        for d in fact.shape.dims().skip(1) {
            dims.push(d.concretize().context("fixed dims")?);
        }
        model.set_input_fact(ix, InferenceFact::dt_shape(dt, dims))?;
    }
    let mut typed = model.into_typed()?;
    perch::onnx::fixups::guard_quantized_softmax(&mut typed)?;
    typed.into_optimized()?.into_runnable()
}

/// The fastest round's per-call mean: on a shared machine the other rounds carry other
/// processes' time slices.
fn fastest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut filter = None;
    let mut rounds = 60usize;
    let mut batch = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--batch" => batch = args.next().and_then(|v| v.parse().ok()).expect("--batch N"),
            "--bench" => {}
            other if !other.starts_with('-') => filter = Some(other.to_string()),
            _ => {}
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!(
        "{:<34} {:>5} {:>12} {:>12} {:>10} {:>16} {:>12} {:>12}",
        "model",
        "batch",
        "symbolic_us",
        "pinned_us",
        "perch_us",
        "symbolic/perch",
        "sym_load_ms",
        "pin_load_ms"
    );
    for case in cases(root) {
        if filter
            .as_ref()
            .is_some_and(|f| !case.name.contains(f.as_str()))
        {
            continue;
        }
        let t = Instant::now();
        let pinned = match OnnxModel::load(&case.model) {
            Ok(m) => m,
            Err(e) => {
                println!("{:<34} perch does not load it: {e}", case.name);
                continue;
            }
        };
        let mut pin_load_ms = t.elapsed().as_secs_f64() * 1e3;
        if batch != 1 {
            let t = Instant::now();
            pinned
                .run(vec![input_tensor(&pinned, &case, batch)])
                .expect("runs");
            pin_load_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        let input = input_tensor(&pinned, &case, batch);
        let t = Instant::now();
        let symbolic = plan(&case.model, None);
        let sym_load_ms = t.elapsed().as_secs_f64() * 1e3;
        // Calls per round: about 3 ms of the pinned plan (short rounds: some of them run
        // without another process' time slice in the middle).
        let t = Instant::now();
        let mut warm = 0;
        while t.elapsed() < Duration::from_millis(50) || warm < 3 {
            black_box(pinned.run(vec![input.clone()]).expect("runs"));
            warm += 1;
        }
        let per_call = t.elapsed().as_secs_f64() / warm as f64;
        let calls = ((0.003 / per_call) as usize).clamp(1, 20_000);
        let raw = plan(&case.model, Some(batch)).expect("perch loaded it");
        let (mut s_times, mut p_times, mut r_times) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..calls {
                black_box(raw.run(tvec![input.clone().into_tvalue()]).expect("runs"));
            }
            r_times.push(t.elapsed().as_secs_f64() * 1e6 / calls as f64);
            if let Ok(plan) = &symbolic {
                let t = Instant::now();
                for _ in 0..calls {
                    black_box(plan.run(tvec![input.clone().into_tvalue()]).expect("runs"));
                }
                s_times.push(t.elapsed().as_secs_f64() * 1e6 / calls as f64);
            }
            let t = Instant::now();
            for _ in 0..calls {
                black_box(pinned.run(vec![input.clone()]).expect("runs"));
            }
            p_times.push(t.elapsed().as_secs_f64() * 1e6 / calls as f64);
        }
        let p = fastest(p_times);
        let r = fastest(r_times);
        match &symbolic {
            Ok(_) => {
                let s = fastest(s_times);
                println!(
                    "{:<34} {batch:>5} {s:>12.1} {r:>12.1} {p:>10.1} {:>15.2}x {sym_load_ms:>12.1} {pin_load_ms:>12.1}",
                    case.name,
                    s / p
                );
            }
            Err(e) => {
                let why = format!("{e:#}");
                let why: String = why.chars().take(70).collect();
                println!(
                    "{:<34} {batch:>5} {:>12} {r:>12.1} {p:>10.1} {:>16} {:>12} {pin_load_ms:>12.1}   symbolic does not load: {why}",
                    case.name, "-", "-", "-"
                );
            }
        }
    }
}
