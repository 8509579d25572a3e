//! The command-line contracts scripts rely on: `perch run | info | bench`,
//! `perch-host convert`, and clear errors with a non-zero exit on bad input.

use crate::harness::*;
use std::path::{Path, PathBuf};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

fn run_ok(bin: &str, args: &[&str]) -> String {
    let out = run_cmd(bin, args);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn run_err(bin: &str, args: &[&str]) -> String {
    let out = run_cmd(bin, args);
    assert!(
        !out.status.success(),
        "{bin} {args:?} should fail but printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp file");
    p.to_string_lossy().into_owned()
}

#[test]
fn run_prints_json_with_model_name_and_named_outputs() {
    let model = sample("digits-mlp/model.perch");
    let input = sample("digits-mlp/sample.csv");
    let text = run_ok(
        perch_bin(),
        &[
            "run",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["model"], "digits-mlp");
    let labels = v["outputs"]["label"].as_array().expect("label array");
    let probs = v["outputs"]["probabilities"]
        .as_array()
        .expect("probabilities array");
    assert_eq!(labels.len(), 5);
    assert_eq!(probs.len(), 5);
    assert_eq!(probs[0].as_array().map(Vec::len), Some(10));
    // Same first label as onnxruntime's reference for the corpus model.
    let want = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/corpus/models/sk_mlp_digits/output_label.csv"),
    )
    .expect("the corpus copy in tests/data");
    if let Some(first) = want.lines().next() {
        assert_eq!(
            labels[0].as_i64().map(|v| v.to_string()),
            Some(first.trim().to_string())
        );
    }
}

#[cfg(feature = "onnx")]
#[test]
fn run_csv_output_to_file_and_every_input_format() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = sample("digits-mlp/model.onnx");
    let csv = sample("digits-mlp/sample.csv");
    let out = dir.path().join("out.csv");
    run_ok(
        perch_bin(),
        &[
            "run",
            model.to_str().unwrap(),
            "--input",
            csv.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&out).expect("output written");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "label,probabilities_0,probabilities_1,probabilities_2,probabilities_3,probabilities_4,probabilities_5,probabilities_6,probabilities_7,probabilities_8,probabilities_9"
        )
    );
    assert_eq!(lines.count(), 5);

    // The same rows as JSON and as .npy give the same answer.
    let rows: Vec<Vec<f32>> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    let json = write(
        dir.path(),
        "in.json",
        &serde_json::to_string(&rows).unwrap(),
    );
    let from_json = run_ok(
        perch_bin(),
        &["run", model.to_str().unwrap(), "--input", &json],
    );
    let from_csv = run_ok(
        perch_bin(),
        &[
            "run",
            model.to_str().unwrap(),
            "--input",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(from_json, from_csv);
    let npy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/corpus/models/sk_mlp_digits/input.npy");
    let from_npy = run_ok(
        perch_bin(),
        &[
            "run",
            model.to_str().unwrap(),
            "--input",
            npy.to_str().unwrap(),
        ],
    );
    assert_eq!(from_npy.lines().count(), 451);
    assert_eq!(from_npy.lines().nth(1), from_csv.lines().nth(1));
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = sample("digits-mlp/model.perch");
    let m = model.to_str().unwrap();
    let row = vec!["1"; 64].join(",");

    let narrow = write(dir.path(), "narrow.csv", "1,2,3\n");
    let e = run_err(perch_bin(), &["run", m, "--input", &narrow]);
    assert!(
        e.contains("64 values per row") && e.contains("[1, 3]"),
        "{e}"
    );

    let text = format!("{row}\n{},x\n", vec!["1"; 63].join(","));
    let bad = write(dir.path(), "bad.csv", &text);
    let e = run_err(perch_bin(), &["run", m, "--input", &bad]);
    assert!(
        e.contains("row 2, column 64") && e.contains("\"x\" is not a number"),
        "{e}"
    );

    let nan = write(
        dir.path(),
        "nan.csv",
        &format!("{},NaN\n", vec!["1"; 63].join(",")),
    );
    let e = run_err(perch_bin(), &["run", m, "--input", &nan]);
    assert!(e.contains("row 1, column 64") && e.contains("NaN"), "{e}");

    let ragged = write(dir.path(), "ragged.csv", &format!("{row}\n1,2\n"));
    let e = run_err(perch_bin(), &["run", m, "--input", &ragged]);
    assert!(e.contains("row 2 has 2 values"), "{e}");

    let empty = write(dir.path(), "empty.csv", "");
    let e = run_err(perch_bin(), &["run", m, "--input", &empty]);
    assert!(e.contains("no data rows"), "{e}");

    let json = write(dir.path(), "bad.json", "[[1, 2], [3");
    let e = run_err(perch_bin(), &["run", m, "--input", &json]);
    assert!(e.contains("invalid JSON"), "{e}");

    let e = run_err(
        perch_bin(),
        &["run", m, "--input", "/nonexistent/input.csv"],
    );
    assert!(e.contains("/nonexistent/input.csv"), "{e}");
}

#[test]
fn bad_models_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = sample("digits-mlp/sample.csv");
    let i = input.to_str().unwrap();
    let garbage = dir.path().join("garbage.perch");
    std::fs::write(&garbage, b"\x89PERCH\r\n and then nonsense").unwrap();
    let garbage = garbage.to_string_lossy().into_owned();
    let e = run_err(perch_bin(), &["run", &garbage, "--input", i]);
    assert!(e.contains("format version 24864 is not supported"), "{e}");
    let truncated = dir.path().join("truncated.perch");
    std::fs::write(
        &truncated,
        b"\x89PERCH\r\n\x01\x00\x00\x00\xff\x00\x00\x00\x00\x00\x00\x00 and then nonsense",
    )
    .unwrap();
    let e = run_err(
        perch_bin(),
        &["run", truncated.to_str().unwrap(), "--input", i],
    );
    assert!(e.contains("truncated: header says 371 bytes"), "{e}");

    let mut bytes = std::fs::read(sample("digits-mlp/model.perch")).expect("sample artifact");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let corrupt = dir.path().join("corrupt.perch");
    std::fs::write(&corrupt, &bytes).unwrap();
    let e = run_err(
        perch_bin(),
        &["run", corrupt.to_str().unwrap(), "--input", i],
    );
    assert!(e.contains("checksum mismatch"), "{e}");

    let text = write(dir.path(), "notes.txt", "hello, this is not a model");
    let e = run_err(perch_bin(), &["info", &text]);
    assert!(e.contains("unknown model format"), "{e}");

    let e = run_err(perch_bin(), &["run"]);
    assert!(e.contains("MODEL"), "{e}");
    let e = run_err(perch_bin(), &["frobnicate"]);
    assert!(e.contains("unknown command"), "{e}");
}

#[cfg(feature = "onnx")]
#[test]
fn info_reports_engine_schema_and_ops() {
    let text = run_ok(
        perch_bin(),
        &[
            "info",
            sample("digits-mlp/model.onnx").to_str().unwrap(),
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["format"], "onnx");
    assert_eq!(v["engine"], "native");
    assert_eq!(v["inputs"][0]["shape"], "[N, 64]");
    assert_eq!(v["outputs"][0]["name"], "label");
    assert_eq!(v["ops"]["MatMul"], 2);

    // A QDQ int8 model runs natively now (issue 12); a dynamically quantized one, whose
    // DynamicQuantizeLinear has no native equivalent, runs on tract and says why.
    let text = run_ok(
        perch_bin(),
        &[
            "info",
            sample("digits-mlp/model-int8.onnx").to_str().unwrap(),
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["engine"], "native");
    let dynamic = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/corpus/models/sk_mlp_digits_dyn_u8s8_pc/model.onnx");
    let text = run_ok(perch_bin(), &["info", dynamic.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["engine"], "tract");
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap_or("")
            .contains("DynamicQuantizeLinear"),
        "{v}"
    );

    let text = run_ok(
        perch_bin(),
        &["info", sample("digits-mlp/model.perch").to_str().unwrap()],
    );
    assert!(
        text.contains("format:  perch artifact")
            && text.contains("dense")
            && text.contains("sha256:"),
        "{text}"
    );

    let e = run_err(
        perch_bin(),
        &["info", dynamic.to_str().unwrap(), "--engine", "native"],
    );
    assert!(e.contains("native engine cannot run this model"), "{e}");
}

#[test]
fn bench_reports_percentiles_throughput_and_memory() {
    let text = run_ok(
        perch_bin(),
        &[
            "bench",
            sample("digits-mlp/model.perch").to_str().unwrap(),
            "--iterations",
            "50",
            "--batch",
            "4",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["batch"], 4);
    let p50 = v["latency_us_p50"].as_f64().expect("p50");
    let p99 = v["latency_us_p99"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p99 >= p50, "{v}");
    assert!(v["throughput_per_s"].as_f64().expect("throughput") > 0.0);
    assert_eq!(v["engine"], "native");
}

#[cfg(feature = "host")]
#[test]
fn convert_writes_an_artifact_and_names_unsupported_nodes() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("m.perch");
    let onnx = sample("digits-mlp/model.onnx");
    let o = run_cmd(
        host_bin(),
        &[
            "convert",
            onnx.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--name",
            "digits",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let art = perch::artifact::read(&out).expect("valid artifact");
    assert_eq!(art.model.metadata.name, "digits");
    assert_eq!(art.model.metadata.class_labels.len(), 10);

    let qdq = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/corpus/models/sk_mlp_digits_dyn_u8s8_pc/model.onnx");
    let e = run_err(
        host_bin(),
        &[
            "convert",
            qdq.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("DynamicQuantizeLinear") && e.contains("no native equivalent"),
        "{e}"
    );
    // The failed conversion left the earlier artifact intact.
    assert!(perch::artifact::read(&out).is_ok());
}

#[cfg(feature = "onnx")]
#[test]
fn info_says_when_zipmap_is_replaced() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx/zipmap_logreg_iris/model.onnx");
    let text = run_ok(perch_bin(), &["info", model.to_str().unwrap()]);
    assert!(
        text.contains("ZipMap") && text.contains("replaced by its tensor input"),
        "{text}"
    );
}

/// The models perch-host trained (models/train.sh) predict on this machine what they
/// predicted on the x86 machine that trained them; cross/test.sh runs this under qemu on
/// aarch64 and armv7.
#[test]
fn trained_models_predict_what_they_predicted_on_x86() {
    for name in ["wine-forest", "digits-mlp-trained"] {
        let dir = sample(name);
        let want = read_outputs_json(&dir.join("expected.json"));
        let got = run_json(&dir.join("model.perch"), &dir.join("sample.csv"), &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_outputs_match(name, &want, &got, 1e-5);
        assert!(
            want["label"].len() >= 45,
            "{name}: expected.json is too small"
        );
    }
}

/// The int8 digits MLP (models/quantize.sh) gives exactly the outputs it gave on x86 —
/// every probability bit for bit, tolerance 0 — here and, through cross/test.sh, under
/// qemu on aarch64 and armv7: the integer kernels are exact and the float steps around
/// them (quantize, dequantize, softmax's exp) are the same IEEE operations everywhere.
#[test]
fn int8_model_predicts_exactly_what_it_predicted_on_x86() {
    let dir = sample("digits-mlp-trained");
    let want = read_outputs_json(&dir.join("expected-int8.json"));
    let got = run_json(&dir.join("model-int8.perch"), &dir.join("sample.csv"), &[])
        .unwrap_or_else(|e| panic!("int8 digits: {e}"));
    assert_outputs_match("int8 digits", &want, &got, 0.0);
    assert_eq!(
        want["label"].len(),
        450,
        "expected-int8.json holds the test split"
    );
    // And the same samples through the single-row path (batch 1 per call is the latency
    // case; rows must not influence each other).
    let first_rows: Vec<String> = std::fs::read_to_string(dir.join("sample.csv"))
        .expect("sample.csv")
        .lines()
        .take(4)
        .map(str::to_string)
        .collect();
    let tmp = tempfile::tempdir().expect("temp dir");
    let small = write(tmp.path(), "three.csv", &(first_rows.join("\n") + "\n"));
    let got = run_json(&dir.join("model-int8.perch"), Path::new(&small), &[])
        .unwrap_or_else(|e| panic!("int8 digits: {e}"));
    let k = 10;
    assert_eq!(got["probabilities"][..], want["probabilities"][..3 * k]);
}
