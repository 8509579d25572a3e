//! Conformance of the edge CNN corpus (tests/data/edge, issue 12): every model runs through
//! `perch run` on the native engine (`perch info` says so), as ONNX and as the `.perch`
//! artifact `perch-host convert` makes of it, and matches the reference outputs:
//! - float outputs within 1e-4 × max(1, largest |reference|);
//! - int8 codes, and dequantized outputs, within one quantization step of onnxruntime's
//!   result, of the ONNX spec's own result where onnxruntime departs from it
//!   (`onnx.reference`, `*.spec.npy`) or of LiteRT's (`*.litert.npy`) — on at least 99 % of
//!   the values, the others within four steps (a code boundary flipped early in a deep
//!   int8 network moves a few final values further; the references disagree among
//!   themselves that way too); the models in [`ONE_STEP_GAPS`] are known to miss the 1 %
//!   and may have 5 %, with the measurement and cause said there;
//! - the top class equal on at least 99 % of rows.
//!
//! A debug build checks the first 50 rows of each model, a release build all of them;
//! `PERCH_EDGE_ROWS=N` sets the number (`cross/test.sh` runs a few under qemu).
//!
//! Across platforms: `tests/data/edge_native/<model>.json` holds what perch computed on
//! x86-64 for the first [`GOLDEN_ROWS`] rows; every run (x86 and, through `cross/test.sh`,
//! aarch64 and armv7 under qemu) must give int8 codes bit for bit and floats within 1e-5
//! (relative to the largest value). `PERCH_EDGE_BLESS=1` rewrites the files from this run. Set `PERCH_TEST_RUNNER` to run the binaries under
//! an emulator.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Models whose int8 outputs are known to miss the one-step bound on more than 1 % of the
/// values, with what was measured: they may have up to 5 % beyond one step (still within
/// four). The test fails when one of them meets the 1 % bound again over all its rows, so
/// the list stays true (a run on fewer rows, such as qemu's few, may miss the gap's rows).
const ONE_STEP_GAPS: &[(&str, &str)] = &[
    (
        "vww_mobilenet_tflite_int8",
        "2 of 64 values 4 steps from onnxruntime and LiteRT, which agree bit for bit: both requantize in f32, perch in fixed point, and over 28 layers a few codes flip",
    ),
    (
        "vww_mobilenet_qdq_s8s8_pc",
        "2 of 64 values 3-4 steps from onnxruntime and the spec (same cause)",
    ),
];

/// Rows per model kept as the cross-platform expectation.
const GOLDEN_ROWS: usize = 4;

/// Compares the first [`GOLDEN_ROWS`] rows of `got` with the recorded x86 results (or
/// records them under `PERCH_EDGE_BLESS`).
fn check_golden(
    name: &str,
    got: &std::collections::HashMap<String, Vec<f64>>,
    rows: usize,
    outputs: &[Value],
) -> Result<(), String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/edge_native")
        .join(format!("{name}.json"));
    let n = rows.min(GOLDEN_ROWS);
    let mut mine = serde_json::Map::new();
    for o in outputs {
        let oname = o["name"].as_str().unwrap_or("");
        let v = got
            .get(oname)
            .ok_or_else(|| format!("no output {oname:?}"))?;
        let per = v.len() / rows.max(1);
        mine.insert(oname.to_string(), Value::from(v[..n * per].to_vec()));
    }
    if std::env::var_os("PERCH_EDGE_BLESS").is_some() {
        if n < GOLDEN_ROWS {
            return Err(format!("blessing needs at least {GOLDEN_ROWS} rows"));
        }
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| e.to_string())?;
        let text = serde_json::to_string(&Value::Object(mine)).map_err(|e| e.to_string())?;
        return std::fs::write(&path, text).map_err(|e| e.to_string());
    }
    let want: Value = serde_json::from_slice(
        &std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    )
    .map_err(|e| e.to_string())?;
    for o in outputs {
        let oname = o["name"].as_str().unwrap_or("");
        let exact = o["tolerance"]["kind"] == "int8_codes";
        let w: Vec<f64> = want[oname]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        let per = w.len() / GOLDEN_ROWS;
        let g = &mine[oname];
        let g: Vec<f64> = g
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(&w[..n * per]).enumerate() {
            let ok = if exact {
                a == b
            } else {
                (a - b).abs() <= 1e-5 * scale
            };
            if !ok {
                return Err(format!(
                    "{oname}: value {i} is {a}, x86 gave {b} ({})",
                    if exact {
                        "int8 codes must be equal"
                    } else {
                        "float within 1e-5"
                    }
                ));
            }
        }
    }
    Ok(())
}

/// Rows per model a debug build checks.
const DEBUG_ROWS: usize = 50;

fn edge_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/edge")
}

/// Writes the first `rows` rows of `values` (shape `shape`, rows first) as a `.npy` of
/// `dtype` (`float32`, `int8` or `uint8`).
fn write_npy(path: &Path, dtype: &str, shape: &[usize], values: &[f64]) {
    let descr = match dtype {
        "int8" => "|i1",
        "uint8" => "|u1",
        _ => "<f4",
    };
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for &v in values {
        match dtype {
            "int8" => bytes.push(v as i8 as u8),
            "uint8" => bytes.push(v as u8),
            _ => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
        }
    }
    std::fs::write(path, bytes).expect("write npy");
}

/// Checks one output; `Err` says what differs.
fn check_output(
    name: &str,
    tol: &Value,
    got: &[f64],
    refs: &[Vec<f64>],
    classes: Option<usize>,
    known_gap: bool,
    every_row: bool,
) -> Result<String, String> {
    let want = &refs[0];
    if got.len() != want.len() {
        return Err(format!(
            "{name}: {} values, reference has {}",
            got.len(),
            want.len()
        ));
    }
    let kind = tol["kind"].as_str().unwrap_or("float");
    let bound = match kind {
        "float" => {
            let max_ref = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            tol["rel_to_max_abs_ref"].as_f64().unwrap_or(1e-4) * max_ref.max(1.0)
        }
        "int8_codes" => tol["max_steps"].as_f64().unwrap_or(1.0),
        // One step, with room for the f32 rounding of values exactly one step apart.
        _ => tol["max_abs"].as_f64().unwrap_or(0.0) * (1.0 + 1e-4),
    };
    // Quantized outputs: a code boundary flipped early in a deep int8 network can move a
    // few final values by more than one step (the references disagree among themselves
    // that way too); at most 1 % of the values may, by at most 4 steps.
    let quantized = kind != "float";
    let mut worst = 0.0f64;
    let mut over = 0usize;
    for (i, &g) in got.iter().enumerate() {
        let d = refs
            .iter()
            .map(|r| (g - r[i]).abs())
            .fold(f64::INFINITY, f64::min);
        let hard = if quantized { 4.0 * bound } else { bound };
        if d.is_nan() || d > hard {
            return Err(format!(
                "{name}: value {i} is {g}, reference {} (bound {hard:e})",
                want[i]
            ));
        }
        if d > bound {
            over += 1;
        }
        worst = worst.max(d);
    }
    let allowed_percent = if known_gap { 5 } else { 1 };
    if over * 100 > got.len() * allowed_percent {
        return Err(format!(
            "{name}: {over} of {} values beyond one step of every reference",
            got.len()
        ));
    }
    if known_gap && every_row && over * 100 <= got.len() {
        return Err(format!(
            "{name}: listed in ONE_STEP_GAPS but now within one step on 99 % of values ({over} of {} beyond): remove it from the list",
            got.len()
        ));
    }
    let mut top1 = String::new();
    if let Some(c) = classes.filter(|&c| c > 1 && want.len().is_multiple_of(c)) {
        let argmax = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0
        };
        let rows = want.len() / c;
        let same = (0..rows)
            .filter(|&r| argmax(&got[r * c..(r + 1) * c]) == argmax(&want[r * c..(r + 1) * c]))
            .count();
        if same * 100 < rows * 99 {
            return Err(format!("{name}: top-1 equal on {same} of {rows} rows"));
        }
        top1 = format!(", top-1 {same}/{rows}");
    }
    Ok(format!(
        "{name}: max diff {worst:.2e} (bound {bound:.2e}){top1}"
    ))
}

#[test]
fn every_edge_model_runs_natively_and_matches_its_reference() {
    let dir = edge_dir();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json")).expect("tests/data/edge/manifest.json"),
    )
    .expect("manifest JSON");
    let models = manifest["models"].as_array().expect("models");
    assert!(!models.is_empty(), "the edge corpus lists no model");
    // Unoptimized kernels are slow: debug builds (CI's `cargo test`) check the first rows,
    // `cargo test --release` all of them.
    let rows_limit: Option<usize> = std::env::var("PERCH_EDGE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(cfg!(debug_assertions).then_some(DEBUG_ROWS));
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for m in models {
        let name = m["name"].as_str().unwrap_or("?");
        let onnx = dir.join(m["onnx"].as_str().unwrap_or(""));
        let info = run_cmd(
            perch_bin(),
            &["info".as_ref(), onnx.as_os_str(), "--json".as_ref()],
        );
        let info: Value = serde_json::from_slice(&info.stdout).unwrap_or(Value::Null);
        if info["engine"] != "native" {
            failures.push(format!(
                "{name}: perch info says engine {} ({})",
                info["engine"], info["notes"]
            ));
            continue;
        }
        // Inputs (maybe fewer rows) and references.
        let input = &m["input"];
        let in_path = dir.join(input["npy"].as_str().unwrap_or(""));
        let all_rows = input["rows"].as_u64().unwrap_or(1) as usize;
        let rows = rows_limit.map_or(all_rows, |r| r.min(all_rows));
        let values = read_npy(&in_path);
        let per_row = values.len() / all_rows.max(1);
        let in_file = tmp.path().join(format!("{name}.npy"));
        let mut shape = vec![rows];
        shape.extend(
            input["shape"]
                .as_array()
                .into_iter()
                .flatten()
                .skip(1)
                .map(|d| d.as_u64().unwrap_or(1) as usize),
        );
        write_npy(
            &in_file,
            input["dtype"].as_str().unwrap_or("float32"),
            &shape,
            &values[..rows * per_row],
        );
        let artifact = tmp.path().join(format!("{name}.perch"));
        let converted = run_cmd(
            host_bin(),
            &[
                "convert".as_ref(),
                onnx.as_os_str(),
                "-o".as_ref(),
                artifact.as_os_str(),
            ],
        );
        if !converted.status.success() {
            failures.push(format!(
                "{name}: perch-host convert failed: {}",
                String::from_utf8_lossy(&converted.stderr).trim()
            ));
        }
        for (label, model) in [("onnx", &onnx), ("perch", &artifact)] {
            if label == "perch" && !converted.status.success() {
                continue;
            }
            let got = match run_json(model, &in_file, &[]) {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{name} ({label}): {e}"));
                    continue;
                }
            };
            let outs: Vec<Value> = m["outputs"].as_array().cloned().unwrap_or_default();
            if label == "onnx"
                && let Err(e) = check_golden(name, &got, rows, &outs)
            {
                failures.push(format!("{name} against the recorded x86 results: {e}"));
            }
            for o in m["outputs"].as_array().into_iter().flatten() {
                let oname = o["name"].as_str().unwrap_or("");
                let mut refs = Vec::new();
                for key in ["npy", "spec_npy", "litert_npy"] {
                    if let Some(f) = o[key].as_str() {
                        let r = read_npy(&dir.join(f));
                        let per = r.len() / all_rows.max(1);
                        refs.push(r[..rows * per].to_vec());
                    }
                }
                let classes = o["shape"]
                    .as_array()
                    .and_then(|s| s.last())
                    .and_then(Value::as_u64)
                    .map(|c| c as usize);
                let classifier = m["task"] == "classification";
                let Some(g) = got.get(oname) else {
                    failures.push(format!("{name} ({label}): no output {oname:?}"));
                    continue;
                };
                let gap = ONE_STEP_GAPS.iter().find(|(n, _)| *n == name);
                if let Some((_, why)) = gap {
                    table.push(format!("{name:<28} {label:<5} known gap: {why}"));
                }
                match check_output(
                    oname,
                    &o["tolerance"],
                    g,
                    &refs,
                    classes.filter(|_| classifier),
                    gap.is_some(),
                    rows == all_rows,
                ) {
                    Ok(s) => table.push(format!("{name:<28} {label:<5} ok   {s}")),
                    Err(e) => {
                        table.push(format!("{name:<28} {label:<5} FAIL {e}"));
                        failures.push(format!("{name} ({label}): {e}"));
                    }
                }
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
