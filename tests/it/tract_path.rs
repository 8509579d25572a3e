//! perch's tract path on the edge model classes of issue 12, in the forms users export them
//! (`tests/fixtures/tract`, made by `tests/fixtures/make_tract_fixtures.py`): every fixture
//! runs through `perch run --engine tract`'s code path and matches onnxruntime:
//! - float outputs within 1e-4 × max(1, largest |reference|);
//! - int8/uint8 outputs (quantized codes) within one code;
//! - float outputs of quantized graphs within one step of the output's scale.
//!
//! Each fixture's rows are repeated past the largest plan batch, so the chunked path runs
//! too, and the first rows also run one at a time on the batch-1 plan (what the agent and
//! `perch bench` use).
use crate::harness;

use perch::cli::predict_array;
use perch::graph::DType;
use perch::io::{InputArray, read_input};
use perch::onnx::{MAX_PLAN_BATCH, MAX_PLANS, OnnxModel};
use perch::runtime::{EngineChoice, Model, OutputValues};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tract")
}

fn manifest() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest");
    let v: Value = serde_json::from_str(&text).expect("manifest json");
    v["fixtures"].as_object().expect("fixtures").clone()
}

fn values(o: &OutputValues) -> Vec<f64> {
    match o {
        OutputValues::F32(v) => v.iter().map(|&x| x as f64).collect(),
        OutputValues::I64(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

/// `rows` copies of `a`'s rows, cycled.
fn repeat_rows(a: &InputArray, rows: usize) -> InputArray {
    let per_row = a.data.len() / a.shape[0];
    let data = a.data.chunks(per_row).cycle().take(rows).flatten().copied();
    let mut shape = a.shape.clone();
    shape[0] = rows;
    InputArray {
        shape,
        data: data.collect(),
        columns: None,
    }
}

/// Largest difference, after asserting every value is within the output's tolerance.
fn compare(name: &str, spec: &Value, got: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(got.len(), reference.len(), "{name}: output length");
    let largest = reference.iter().fold(1f64, |m, v| m.max(v.abs()));
    let tolerance = match spec["kind"].as_str() {
        Some("float") => 1e-4 * largest,
        Some("codes") => 1.0,
        Some("dequantized") => spec["step"].as_f64().expect("step") * 1.001 + 1e-6,
        other => panic!("{name}: unknown kind {other:?}"),
    };
    let mut max = 0f64;
    for (k, (g, r)) in got.iter().zip(reference).enumerate() {
        let d = (g - r).abs();
        assert!(
            d <= tolerance,
            "{name}[{k}] = {g}, onnxruntime {r} (tolerance {tolerance})"
        );
        max = max.max(d);
    }
    max
}

#[test]
fn every_fixture_runs_on_tract_and_matches_onnxruntime() {
    let fixtures_seen = manifest();
    assert!(fixtures_seen.len() >= 18, "manifest lists the fixtures");
    let rows = MAX_PLAN_BATCH + 6;
    for (name, m) in &fixtures_seen {
        let dir = fixtures().join(name);
        let mut model = Model::load(&dir.join("model.onnx"), EngineChoice::Tract)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = model.info().clone();
        assert_eq!(info.engine.name(), "tract");
        assert_eq!(
            info.inputs[0].dtype.name(),
            m["input"]["dtype"].as_str().unwrap(),
            "{name}: input element type"
        );
        let outputs = m["outputs"].as_array().unwrap();
        for (spec, o) in info.outputs.iter().zip(outputs) {
            let want = match o["dtype"].as_str().unwrap() {
                "int8" => DType::I8,
                "uint8" => DType::U8,
                _ => DType::F32,
            };
            assert_eq!(
                spec.dtype, want,
                "{name}: output {} element type",
                spec.name
            );
        }
        let input = read_input(&dir.join("input.npy")).unwrap();
        let given = input.shape[0];
        let many = repeat_rows(&input, rows);
        let got =
            predict_array(&mut model, &many, None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(got.len(), outputs.len(), "{name}: output count");
        let mut diffs = Vec::new();
        for (i, (out, spec)) in got.iter().zip(outputs).enumerate() {
            assert_eq!(out.shape[0], rows, "{name}: rows of output {i}");
            let reference = harness::read_npy(&dir.join(format!("output_{i}.npy")));
            let per_row = reference.len() / given;
            let tiled: Vec<f64> = reference
                .chunks(per_row)
                .cycle()
                .take(rows)
                .flatten()
                .copied()
                .collect();
            diffs.push(compare(name, spec, &values(&out.values), &tiled));
            // The batch-1 plan, row by row.
            for r in 0..given.min(3) {
                let one = InputArray {
                    shape: [1]
                        .into_iter()
                        .chain(input.shape[1..].iter().copied())
                        .collect(),
                    data: input.data
                        [r * input.data.len() / given..(r + 1) * input.data.len() / given]
                        .to_vec(),
                    columns: None,
                };
                let single = predict_array(&mut model, &one, None).unwrap();
                compare(
                    name,
                    spec,
                    &values(&single[i].values),
                    &reference[r * per_row..(r + 1) * per_row],
                );
            }
        }
        eprintln!("{name}: largest difference per output {diffs:?}");
    }
}

#[test]
fn plans_are_built_per_batch_size_and_bounded() {
    let dir = fixtures().join("flatten_f32");
    let model = OnnxModel::load(&dir.join("model.onnx")).unwrap();
    assert_eq!(
        model.planned_batches(),
        vec![1],
        "batch 1 is planned at load"
    );
    let input = read_input(&dir.join("input.npy")).unwrap();
    let tensor = |rows: usize| {
        let a = repeat_rows(&input, rows);
        vec![
            ndarray::ArrayD::from_shape_vec(a.shape, a.data)
                .unwrap()
                .into(),
        ]
    };
    let first_row = |out: &[perch::onnx::OnnxValue]| match &out[0] {
        perch::onnx::OnnxValue::F32(a) => a.as_slice().unwrap()[..3].to_vec(),
        other => panic!("float output expected, got {other:?}"),
    };
    let reference = first_row(&model.run(tensor(1)).unwrap());
    for batch in [3, 5, 7, 9, 2] {
        let out = model.run(tensor(batch)).unwrap();
        let got = first_row(&out);
        for (g, r) in got.iter().zip(&reference) {
            assert!(
                (g - r).abs() <= 1e-5,
                "batch {batch}: {got:?} vs {reference:?}"
            );
        }
        let planned = model.planned_batches();
        assert!(planned.len() <= MAX_PLANS, "{planned:?}");
        assert_eq!(planned.last(), Some(&batch), "the plan just used is kept");
        assert!(
            planned.contains(&1),
            "the load-time plan stays: {planned:?}"
        );
    }
    // More than the largest plan: chunks of MAX_PLAN_BATCH and the remainder.
    let rows = 2 * MAX_PLAN_BATCH + 22;
    let out = model.run(tensor(rows)).unwrap();
    match &out[0] {
        perch::onnx::OnnxValue::F32(a) => assert_eq!(a.shape(), &[rows, 3]),
        other => panic!("{other:?}"),
    }
    let planned = model.planned_batches();
    assert!(
        planned.contains(&MAX_PLAN_BATCH) && planned.contains(&22),
        "{planned:?}"
    );
    assert!(!planned.contains(&rows));
    model.release_plans();
    assert_eq!(model.planned_batches(), vec![1]);
}

#[test]
fn a_file_that_fixes_the_batch_runs_one_sample_per_call() {
    let dir = fixtures().join("flatten_b1");
    let mut model = Model::load(&dir.join("model.onnx"), EngineChoice::Tract).unwrap();
    assert!(
        model
            .info()
            .notes
            .iter()
            .any(|n| n.contains("fixes the batch axis at 1")),
        "{:?}",
        model.info().notes
    );
    // The same network with a dynamic batch gives the reference for several rows.
    let input = read_input(&fixtures().join("flatten_f32/input.npy")).unwrap();
    let reference = harness::read_npy(&fixtures().join("flatten_f32/output_0.npy"));
    let got = predict_array(&mut model, &input, None).unwrap();
    let spec = &manifest()["flatten_f32"]["outputs"][0];
    compare("flatten_b1", spec, &values(&got[0].values), &reference);
}

fn temp_csv(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.csv");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn integer_inputs_refuse_values_that_do_not_fit_naming_row_and_column() {
    let dir = fixtures().join("autoencoder_int8io");
    let mut model = Model::load(&dir.join("model.onnx"), EngineChoice::Tract).unwrap();
    assert_eq!(model.info().inputs[0].dtype, DType::I8);
    let row = |bad: Option<(usize, &str)>| {
        (0..32)
            .map(|c| match bad {
                Some((at, v)) if at == c => v.to_string(),
                _ => ((c as i32 * 7) % 50 - 25).to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let text = format!("{}\n{}\n{}\n", row(None), row(None), row(Some((4, "128"))));
    let (_t, path) = temp_csv(&text);
    let array = read_input(&path).unwrap();
    let err = format!("{:#}", predict_array(&mut model, &array, None).unwrap_err());
    assert!(
        err.contains("row 3, column 5: 128 is out of range for int8 (-128 to 127)"),
        "{err}"
    );
    // With --batch 2 the rows still count from the start of the file.
    let err = format!(
        "{:#}",
        predict_array(&mut model, &array, Some(2)).unwrap_err()
    );
    assert!(err.contains("row 3, column 5"), "{err}");
    let (_t, path) = temp_csv(&format!("{}\n", row(Some((0, "0.5")))));
    let array = read_input(&path).unwrap();
    let err = format!("{:#}", predict_array(&mut model, &array, None).unwrap_err());
    assert!(
        err.contains("row 1, column 1: 0.5 is not a whole number; input") && err.contains("int8"),
        "{err}"
    );
    let (_t, path) = temp_csv(&format!("{}\n", row(None)));
    let out = predict_array(&mut model, &read_input(&path).unwrap(), None).unwrap();
    assert!(matches!(out[0].values, OutputValues::I64(_)));

    let dir = fixtures().join("image_u8");
    let mut model = Model::load(&dir.join("model.onnx"), EngineChoice::Tract).unwrap();
    assert_eq!(model.info().inputs[0].dtype, DType::U8);
    let err = model.run(&vec![-1.0; 108], 1).unwrap_err().to_string();
    assert!(
        err.contains("row 1, column 1: -1 is out of range for uint8"),
        "{err}"
    );
}

#[test]
fn perch_run_prints_int8_outputs_as_integers() {
    let dir = fixtures().join("kws_int8io");
    let model = dir.join("model.onnx");
    let input = dir.join("input.npy");
    let out = harness::run_cmd(
        harness::perch_bin(),
        &[
            "run",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--engine",
            "tract",
            "--format",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["outputs"].as_object().unwrap().values().next().unwrap();
    let got: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().expect("an integer"))
        })
        .collect();
    let reference = harness::read_npy(&dir.join("output_0.npy"));
    assert_eq!(got.len(), reference.len());
    for (g, r) in got.iter().zip(&reference) {
        assert!((*g as f64 - r).abs() <= 1.0, "{got:?} vs {reference:?}");
    }
    let out = harness::run_cmd(
        harness::perch_bin(),
        &["info", model.to_str().unwrap(), "--engine", "tract"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" int8 [N, 12, 6, 1]"), "{text}");
}

/// The largest difference a corpus manifest's `tolerance` allows from `reference`.
fn allowed(reference: &[f64], tolerance: &Value) -> f64 {
    let largest = reference.iter().fold(1f64, |m, v| m.max(v.abs()));
    match tolerance["kind"].as_str() {
        Some("float") => tolerance["rel_to_max_abs_ref"].as_f64().unwrap_or(1e-4) * largest,
        Some("int8_codes") | Some("uint8_codes") => tolerance["max_steps"].as_f64().unwrap_or(1.0),
        Some("dequantized") => tolerance["max_abs"].as_f64().expect("max_abs") * 1.001 + 1e-6,
        other => panic!("unknown tolerance kind {other:?}"),
    }
}

fn largest_difference(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// Rows of `width` values whose arg max agree, as a fraction.
fn top1_agreement(a: &[f64], b: &[f64], width: usize) -> f64 {
    let argmax = |r: &[f64]| {
        r.iter()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |(i, m), (j, &v)| if v > m { (j, v) } else { (i, m) },
            )
            .0
    };
    let rows = a.len() / width;
    let same = (0..rows)
        .filter(|&r| {
            argmax(&a[r * width..(r + 1) * width]) == argmax(&b[r * width..(r + 1) * width])
        })
        .count();
    same as f64 / rows as f64
}

/// Rows of each corpus model checked (tract in a debug build takes seconds per row on the
/// larger CNNs).
const CORPUS_ROWS: usize = 24;

/// The edge corpus (`tests/data/edge`, from the `edge-corpus` branch): every model runs on
/// tract and matches onnxruntime within the manifest's tolerance (float 1e-4 relative, one
/// step for int8), and classifiers agree on the top-1 class on >= 99% of rows. Where
/// onnxruntime's int8 result departs from the ONNX spec's (`onnx.reference`, kept as
/// `*.spec.npy`; rounding ties in an intermediate layer, amplified by the layers after it),
/// tract's result must be within the tolerance of the spec's, or within the two
/// references' spread of onnxruntime's.
#[test]
fn the_edge_corpus_runs_on_tract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/edge");
    let text = std::fs::read_to_string(root.join("manifest.json")).expect("edge manifest");
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let models = manifest["models"].as_array().unwrap();
    assert!(!models.is_empty());
    let mut failures = Vec::new();
    for m in models {
        let name = m["name"].as_str().unwrap();
        let mut model = Model::load(&root.join(m["onnx"].as_str().unwrap()), EngineChoice::Tract)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            model.info().inputs[0].dtype.name(),
            m["input"]["dtype"].as_str().unwrap(),
            "{name}"
        );
        let input = read_input(&root.join(m["input"]["npy"].as_str().unwrap())).unwrap();
        let rows = input.shape[0].min(CORPUS_ROWS);
        let per_row = input.data.len() / input.shape[0];
        let mut shape = input.shape.clone();
        shape[0] = rows;
        let input = InputArray {
            shape,
            data: input.data[..rows * per_row].to_vec(),
            columns: None,
        };
        let got =
            predict_array(&mut model, &input, None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        for (o, spec) in got.iter().zip(m["outputs"].as_array().unwrap()) {
            let got = values(&o.values);
            let rows_of = |file: &str| {
                let all = harness::read_npy(&root.join(file));
                let width = all.len() / m["input"]["rows"].as_u64().unwrap() as usize;
                all[..rows * width].to_vec()
            };
            let ort = rows_of(spec["npy"].as_str().unwrap());
            let tolerance = allowed(&ort, &spec["tolerance"]);
            assert_eq!(got.len(), ort.len(), "{name}: {}", o.name);
            let d = largest_difference(&got, &ort);
            // With a spec reference: within one tolerance of it, or within the references'
            // spread of onnxruntime's.
            let (spread, d_spec) = match spec["spec_npy"].as_str() {
                Some(file) => {
                    let reference = rows_of(file);
                    (
                        largest_difference(&ort, &reference),
                        Some(largest_difference(&got, &reference)),
                    )
                }
                None => (0.0, None),
            };
            let close =
                d <= tolerance.max(spread * 1.001) || d_spec.is_some_and(|ds| ds <= tolerance);
            let top1 = if m["task"] == "classification" {
                top1_agreement(&got, &ort, got.len() / rows)
            } else {
                1.0
            };
            eprintln!(
                "{name}: {}: largest difference {d} from onnxruntime, {d_spec:?} from the spec (tolerance {tolerance}, references' spread {spread}), top-1 agreement {top1}",
                o.name
            );
            if !close || top1 < 0.99 {
                failures.push(format!(
                    "{name}: output {}: largest difference {d} from onnxruntime, {d_spec:?} from the spec, tolerance {tolerance}, spread {spread}; top-1 agreement {top1}",
                    o.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// What `perch info MODEL --engine tract` exits with and prints on stderr.
fn info_fails(model: &Path) -> String {
    let out = harness::run_cmd(
        harness::perch_bin(),
        &["info", model.to_str().unwrap(), "--engine", "tract"],
    );
    assert_eq!(out.status.code(), Some(1), "{model:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A one-byte mutation of `flatten_f32` (byte 6426, 0 → 55, found by mutating the fixtures)
/// makes tract's Gather index past a shape tensor while typing the graph: the panic is
/// caught and reported as an error naming the file, the CLI exits 1 without the panic
/// hook's output.
#[test]
fn a_panic_inside_tract_becomes_an_error_naming_the_file() {
    let path = fixtures().join("malformed/flatten_f32_byte6426.onnx");
    let err = Model::load(&path, EngineChoice::Tract).unwrap_err();
    assert!(
        matches!(
            &err,
            perch::runtime::RuntimeError::Onnx(perch::onnx::OnnxError::Panic { stage, .. })
                if stage == "optimizing for batch 1"
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}: tract panicked while", path.display()))
            && text.contains("index out of bounds")
            && text.contains("(at tract-core-"),
        "{text}"
    );
    let stderr = info_fails(&path);
    assert!(
        stderr.contains("tract panicked while optimizing for batch 1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked at"),
        "the panic hook stays quiet: {stderr}"
    );
    assert_eq!(
        stderr.matches("flatten_f32_byte6426.onnx").count(),
        1,
        "{stderr}"
    );
}

/// One byte of the graph output's name changed (the mutation issue 13 found: tract's parser
/// panicked with `no entry found for key`): refused with a clear error before tract sees it.
#[test]
fn a_graph_output_naming_nothing_is_refused_before_tract() {
    let bytes = std::fs::read(fixtures().join("flatten_f32/model.onnx")).unwrap();
    let name = b"softmax_1";
    let at = bytes
        .windows(name.len())
        .rposition(|w| w == name)
        .expect("output name in the file");
    let mut mutated = bytes.clone();
    mutated[at + name.len() - 1] = b'7';
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutated.onnx");
    std::fs::write(&path, &mutated).unwrap();
    let stderr = info_fails(&path);
    assert!(
        stderr.contains(
            "graph output \"softmax_7\" is not produced by any node, input or initializer"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
