//! The corpus and reference outputs: the models of `tests/data/corpus`, `perch run` under an
//! optional emulator with its JSON outputs flattened, a small `.npy` reader, and the rule
//! that compares outputs.

use super::perch_bin;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The corpus folder: `$PERCH_CORPUS`, else the copy in `tests/data/corpus`.
pub fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("PERCH_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus"));
    assert!(
        dir.join("models").is_dir(),
        "corpus not found at {} (set PERCH_CORPUS)",
        dir.display()
    );
    dir
}

/// One corpus model and what its `model.json` says.
pub struct CorpusModel {
    pub name: String,
    pub dir: PathBuf,
    /// Output names in graph order.
    pub outputs: Vec<String>,
    pub quantized: bool,
}

/// Tolerance rule for a model (see tests/it/conformance.rs).
pub struct Tolerance {
    pub quant_step: Option<f64>,
}

#[cfg(feature = "onnx")]
impl CorpusModel {
    pub fn tolerance(&self) -> Tolerance {
        Tolerance {
            quant_step: self
                .quantized
                .then(|| quant_step(&self.dir.join("model.onnx"))),
        }
    }
}

/// Every model folder of the corpus, sorted by name.
pub fn corpus_models(corpus: &Path) -> Vec<CorpusModel> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(corpus.join("models"))
        .expect("corpus models dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let Ok(text) = std::fs::read_to_string(dir.join("model.json")) else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).expect("model.json parses");
        let name = json["name"].as_str().expect("name").to_string();
        let outputs = json["graph"]["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .map(|o| o["name"].as_str().expect("output name").to_string())
            .collect();
        let quantized = json
            .get("source")
            .and_then(|s| s.get("quant_format").or(s.get("mode")))
            .is_some();
        out.push(CorpusModel {
            name,
            dir,
            outputs,
            quantized,
        });
    }
    out
}

#[cfg(feature = "onnx")]
/// The quantization step that bounds a quantized model's output error: the largest scale
/// among the constant scales that feed the graph's last quantized tensors (the inputs of
/// the final DequantizeLinear nodes and QLinear* ops' output scales). Falls back to 1/255.
pub fn quant_step(model: &Path) -> f64 {
    use tract_onnx::prelude::Framework;
    let proto = perch::onnx::parser()
        .proto_model_for_path(model)
        .expect("model parses");
    let graph = proto.graph.expect("graph");
    let consts: HashMap<String, f64> = graph
        .initializer
        .iter()
        .filter_map(|t| {
            let v = if !t.float_data.is_empty() {
                t.float_data.iter().map(|&f| f as f64).fold(0.0, f64::max)
            } else if t.data_type == 1 && t.raw_data.len() >= 4 {
                t.raw_data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                    .fold(0.0, f64::max)
            } else {
                return None;
            };
            Some((t.name.clone(), v))
        })
        .collect();
    // Scale of the tensor that reaches the outputs last: the final DequantizeLinear's x_scale.
    let mut step = None;
    for node in graph.node.iter() {
        if node.op_type == "DequantizeLinear"
            && let Some(s) = node.input.get(1).and_then(|n| consts.get(n))
        {
            step = Some(*s);
        }
    }
    step.unwrap_or(1.0 / 255.0)
}

/// Runs `bin` with `args`, under `$PERCH_TEST_RUNNER` when set (e.g. qemu-user).
pub fn run_cmd<S: AsRef<OsStr>>(bin: &str, args: &[S]) -> Output {
    let runner = std::env::var("PERCH_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut cmd = match words.next() {
        Some(r) => {
            let mut c = Command::new(r);
            c.args(words).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args).output().expect("spawn binary")
}

/// The `outputs` of `perch run --format json` output, each flattened.
pub fn outputs_from_json(stdout: &[u8]) -> Result<HashMap<String, Vec<f64>>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("perch printed invalid JSON: {e}"))?;
    let mut out = HashMap::new();
    let map = v["outputs"].as_object().ok_or("no outputs object")?;
    for (name, value) in map {
        let mut flat = Vec::new();
        fn walk(v: &serde_json::Value, flat: &mut Vec<f64>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, flat)),
                serde_json::Value::Number(n) => flat.push(n.as_f64().unwrap_or(f64::NAN)),
                _ => flat.push(f64::NAN),
            }
        }
        walk(value, &mut flat);
        out.insert(name.clone(), flat);
    }
    Ok(out)
}

/// `perch run MODEL --input INPUT --format json [extra]`, outputs flattened.
pub fn run_json(
    model: &Path,
    input: &Path,
    extra: &[String],
) -> Result<HashMap<String, Vec<f64>>, String> {
    let mut args: Vec<&OsStr> = vec![
        "run".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ];
    args.extend(extra.iter().map(|s| OsStr::new(s.as_str())));
    let out = run_cmd(perch_bin(), &args);
    if !out.status.success() {
        return Err(format!(
            "perch run failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    outputs_from_json(&out.stdout)
}

/// Like [`run_json`], one row per call (`--batch 1`).
pub fn run_rows(
    model: &Path,
    input: &Path,
    extra: &[String],
) -> Result<HashMap<String, Vec<f64>>, String> {
    let mut extra = extra.to_vec();
    extra.extend(["--batch".to_string(), "1".to_string()]);
    run_json(model, input, &extra)
}

/// Reads a `.npy` file into f64 values.
pub fn read_npy(path: &Path) -> Vec<f64> {
    let a =
        perch::io::read_input(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    a.data.iter().map(|&v| v as f64).collect()
}

/// The outputs in a file holding `perch run --format json` output, each flattened.
pub fn read_outputs_json(path: &Path) -> HashMap<String, Vec<f64>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    outputs_from_json(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `got` matches `want`, output by output: floats within `tol` (relative above 1); labels
/// equal, except on rows whose two best `probabilities` in `want` are within `tol` (there a
/// tie may break either way).
pub fn assert_outputs_match(
    what: &str,
    want: &HashMap<String, Vec<f64>>,
    got: &HashMap<String, Vec<f64>>,
    tol: f64,
) {
    for (name, w) in want {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{what}: output {name:?} missing (has {:?})", got.keys()));
        assert_eq!(g.len(), w.len(), "{what}: {name} length");
        if name == "label" {
            let probs = want.get("probabilities").map_or(&[][..], Vec::as_slice);
            let k = probs.len() / w.len().max(1);
            for (row, (a, b)) in w.iter().zip(g).enumerate() {
                let tie = k > 1 && {
                    let mut p = probs[row * k..(row + 1) * k].to_vec();
                    p.sort_by(|a, b| b.total_cmp(a));
                    p[0] - p[1] <= tol
                };
                assert!(
                    a == b || tie,
                    "{what}: label of row {row}: {b} instead of {a} (probabilities {:?})",
                    probs.get(row * k..(row + 1) * k)
                );
            }
        } else {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                assert!(
                    (a - b).abs() <= tol * a.abs().max(1.0),
                    "{what}: {name}[{i}] = {b}, expected {a}"
                );
            }
        }
    }
}
