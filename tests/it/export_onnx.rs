//! ONNX export (`perch::export`, `perch-host models export --format onnx`): every layer kind
//! exports to ONNX that perch's ONNX path (tract, and the converter back to native) runs
//! with the native engine's outputs, and trained models export to ONNX that onnxruntime
//! runs with the native outputs too.
//!
//! The onnxruntime check needs Python: `python3` (or `$PERCH_PYTHON`) with onnx, onnxruntime
//! and numpy, else a virtual environment the test makes under the target directory and fills
//! from PyPI. Where no Python exists at all the test prints why and skips that check.
use crate::harness::*;
use perch::graph::{
    DType, Graph, Layer, Metadata, Model, Node, Output, SplitMode, Tensor, TensorSpec, Tree,
    TreeAggregate, TreePostTransform,
};
use perch::runtime::{EngineChoice, Model as Runtime, OutputValues};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Deterministic values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }

    fn tensor(&mut self, shape: &[u32]) -> Tensor {
        let n = shape.iter().product::<u32>() as usize;
        Tensor::f32(shape.to_vec(), self.vec(n))
    }
}

fn node(name: &str, layer: Layer, input: u32) -> Node {
    Node {
        name: name.into(),
        layer,
        inputs: vec![input],
    }
}

fn model(name: &str, input: Vec<u32>, nodes: Vec<Node>, outputs: &[(&str, u32)]) -> Model {
    Model {
        metadata: Metadata {
            name: name.into(),
            version: "3".into(),
            ..Metadata::default()
        },
        graph: Graph {
            inputs: vec![TensorSpec {
                name: "input".into(),
                dtype: DType::F32,
                shape: input,
            }],
            nodes,
            outputs: outputs
                .iter()
                .map(|&(n, v)| Output {
                    name: n.into(),
                    value: v,
                })
                .collect(),
        },
    }
}

/// Every non-tree layer kind in one network over `[2, 6, 6]` samples.
fn conv_net(r: &mut Lcg) -> Model {
    let nodes = vec![
        node(
            "scale",
            Layer::Standardize {
                offset: r.vec(6),
                scale: r.vec(6).iter().map(|v| 1.0 + v.abs()).collect(),
            },
            0,
        ),
        node(
            "conv",
            Layer::Conv2d {
                weight: r.tensor(&[4, 2, 3, 3]),
                bias: Some(r.tensor(&[4])),
                stride: [1, 1],
                padding: [1, 1, 1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            1,
        ),
        node("relu", Layer::Relu, 2),
        node(
            "max_pool",
            Layer::MaxPool2d {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0, 0, 0],
            },
            3,
        ),
        node(
            "depthwise",
            Layer::Conv2d {
                weight: r.tensor(&[4, 1, 2, 2]),
                bias: None,
                stride: [1, 1],
                padding: [1, 1, 0, 0],
                dilation: [1, 1],
                groups: 4,
            },
            4,
        ),
        node(
            "avg_pool",
            Layer::AvgPool2d {
                kernel: [2, 2],
                stride: [1, 1],
                padding: [1, 1, 1, 1],
                count_include_pad: false,
            },
            5,
        ),
        node("leaky", Layer::LeakyRelu { alpha: 0.1 }, 6),
        node("gap", Layer::GlobalAvgPool, 7),
        node("reshape", Layer::Reshape { shape: vec![2, 2] }, 8),
        node(
            "dense_rank2",
            Layer::Dense {
                weight: r.tensor(&[3, 2]),
                bias: Some(r.tensor(&[3])),
            },
            9,
        ),
        node("tanh", Layer::Tanh, 10),
        node("flatten", Layer::Flatten, 11),
        node(
            "dense",
            Layer::Dense {
                weight: r.tensor(&[5, 6]),
                bias: Some(r.tensor(&[5])),
            },
            12,
        ),
        node("sigmoid", Layer::Sigmoid, 13),
        node(
            "logits",
            Layer::Dense {
                weight: r.tensor(&[3, 5]),
                bias: None,
            },
            14,
        ),
        node("softmax", Layer::Softmax, 15),
        node(
            "argmax",
            Layer::ArgMax {
                labels: Some(vec![10, 20, 30]),
            },
            16,
        ),
    ];
    model(
        "conv net",
        vec![2, 6, 6],
        nodes,
        &[("probabilities", 16), ("label", 17), ("hidden", 14)],
    )
}

/// A random depth-2 tree over `features` inputs with `n_out` values per leaf.
fn tree(r: &mut Lcg, features: u32, n_out: usize, mode: SplitMode) -> Tree {
    let f = |r: &mut Lcg| ((r.next() + 1.0) * 0.5 * features as f32) as u32 % features;
    Tree {
        feature: vec![f(r), f(r), 0, 0, 0],
        threshold: vec![r.next() * 0.5, r.next() * 0.5, 0.0, 0.0, 0.0],
        left: vec![1, 3, 0, 0, 0],
        right: vec![2, 4, 0, 0, 0],
        leaf_values: (0..3 * n_out).map(|_| r.next().abs()).collect(),
        mode,
    }
}

fn ensemble(
    r: &mut Lcg,
    n_out: u32,
    aggregate: TreeAggregate,
    post_transform: TreePostTransform,
    base_values: Vec<f32>,
) -> Layer {
    Layer::TreeEnsemble {
        trees: (0..5)
            .map(|i| {
                let mode = if i % 2 == 0 {
                    SplitMode::Leq
                } else {
                    SplitMode::Lt
                };
                tree(r, 4, n_out as usize, mode)
            })
            .collect(),
        n_outputs: n_out,
        aggregate,
        base_values,
        post_transform,
    }
}

/// Tree ensembles: a 3-class classifier (ONNX TreeEnsembleClassifier), a binary one and a
/// 2-target regressor (TreeEnsembleRegressor).
fn tree_models(r: &mut Lcg) -> Vec<Model> {
    let multi = ensemble(
        r,
        3,
        TreeAggregate::Sum,
        TreePostTransform::Softmax,
        vec![0.1, 0.2, 0.3],
    );
    let binary = ensemble(
        r,
        2,
        TreeAggregate::Average,
        TreePostTransform::None,
        vec![],
    );
    let regressor = ensemble(
        r,
        2,
        TreeAggregate::Average,
        TreePostTransform::None,
        vec![1.5, -2.0],
    );
    let labelled = |name: &str, layer: Layer, labels: Option<Vec<i64>>| {
        model(
            name,
            vec![4],
            vec![
                node("trees", layer, 0),
                node("argmax", Layer::ArgMax { labels }, 1),
            ],
            &[("probabilities", 1), ("label", 2)],
        )
    };
    vec![
        labelled("forest 3 classes", multi, Some(vec![7, 8, 9])),
        labelled("forest binary", binary, Some(vec![0, 1])),
        model(
            "forest regressor",
            vec![4],
            vec![node("trees", regressor, 0)],
            &[("variable", 1)],
        ),
    ]
}

/// Outputs by name, as f64.
fn run(rt: &mut Runtime, x: &[f32], batch: usize) -> HashMap<String, Vec<f64>> {
    rt.run(x, batch)
        .expect("run")
        .into_iter()
        .map(|o| {
            let v = match o.values {
                OutputValues::F32(v) => v.into_iter().map(f64::from).collect(),
                OutputValues::I64(v) => v.into_iter().map(|x| x as f64).collect(),
            };
            (o.name, v)
        })
        .collect()
}

fn synthetic_models() -> Vec<Model> {
    let mut r = Lcg(42);
    let mut models = vec![conv_net(&mut r)];
    models.extend(tree_models(&mut r));
    models
}

/// Int8 models: the committed static digits MLP (u8 chain, fused ReLU), the float one
/// quantized dynamically, and the conv net (QConv2d, a rank-2 QDense) both ways, with the rows each is checked on (the dynamic model one row at a
/// time: ONNX's DynamicQuantizeLinear takes one range per tensor, perch one per sample).
fn quantized_models() -> Vec<(Model, usize)> {
    use perch::optimize::quantize::{QuantizeMode, QuantizeOptions, quantize};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits-mlp-trained");
    let load = |file: &str| {
        let bytes = std::fs::read(dir.join(file)).expect("model fixture");
        perch::artifact::decode(&bytes).expect("decode").model
    };
    let mut stat = load("model-int8.perch");
    stat.metadata.name = "digits int8".into();
    let options = QuantizeOptions {
        mode: QuantizeMode::Dynamic,
    };
    let mut dynamic = quantize(&load("model.perch"), &options, None).expect("dynamic");
    dynamic.metadata.name = "digits dynamic".into();
    use perch::optimize::quantize::Calibration;
    let mut r = Lcg(5);
    let net = conv_net(&mut r);
    let rows = r.vec(64 * net.graph.inputs[0].sample_len());
    let calibrated = QuantizeOptions {
        mode: QuantizeMode::Static {
            calibration: Calibration::MinMax,
        },
    };
    let mut conv = quantize(&net, &calibrated, Some(&rows)).expect("static conv net");
    conv.metadata.name = "conv net int8".into();
    let mut conv_dynamic = quantize(&net, &options, None).expect("dynamic conv net");
    conv_dynamic.metadata.name = "conv net dynamic".into();
    vec![(stat, 9), (dynamic, 1), (conv, 9), (conv_dynamic, 1)]
}

/// Pixel-like inputs for the digits models: 0..16.
fn pixels(r: &mut Lcg, n: usize) -> Vec<f32> {
    r.vec(n).iter().map(|v| ((v + 1.0) * 8.0).round()).collect()
}

#[test]
fn int8_models_export_as_qdq_onnx_that_tract_runs_alike() {
    let mut r = Lcg(3);
    // tract 0.23.9 takes DequantizeLinear's scale as a constant only, so the dynamic model's
    // DynamicQuantizeLinear → DequantizeLinear runs on onnxruntime (the test below), not here.
    for (m, batch) in quantized_models().into_iter().step_by(2) {
        let what = m.metadata.name.clone();
        let onnx = perch::export::to_onnx(&m).unwrap_or_else(|e| panic!("{what}: export: {e}"));
        let ops = perch::onnx::op_counts(&perch::onnx::parse(&onnx).expect("parse"));
        assert!(ops.contains_key("DequantizeLinear"), "{what}: {ops:?}");
        let mut native =
            Runtime::from_artifact_bytes(&perch::artifact::encode(&m).expect("encode"))
                .expect("native");
        let mut tract = Runtime::from_onnx_bytes(&onnx, EngineChoice::Tract)
            .unwrap_or_else(|e| panic!("{what}: tract refuses the QDQ export: {e}"));
        let x = pixels(&mut r, batch * m.graph.inputs[0].sample_len());
        let want = run(&mut native, &x, batch);
        assert_outputs_match(
            &format!("{what} (tract)"),
            &want,
            &run(&mut tract, &x, batch),
            1e-3,
        );
    }
}

#[test]
fn every_layer_kind_exports_to_onnx_that_tract_and_the_converter_run_alike() {
    let mut r = Lcg(7);
    for m in synthetic_models() {
        let what = m.metadata.name.clone();
        let onnx = perch::export::to_onnx(&m).unwrap_or_else(|e| panic!("{what}: export: {e}"));
        let artifact = perch::artifact::encode(&m).expect("encode");
        let mut native = Runtime::from_artifact_bytes(&artifact).expect("native load");
        let mut tract = Runtime::from_onnx_bytes(&onnx, EngineChoice::Tract)
            .unwrap_or_else(|e| panic!("{what}: tract refuses the export: {e}"));
        // The converter must take every exported graph back to the native IR.
        let mut back = Runtime::from_onnx_bytes(&onnx, EngineChoice::Native)
            .unwrap_or_else(|e| panic!("{what}: converting the export back: {e}"));
        let batch = 7;
        let len: usize = m.graph.inputs[0].sample_len();
        let x = r.vec(batch * len);
        let want = run(&mut native, &x, batch);
        assert_outputs_match(
            &format!("{what} (tract)"),
            &want,
            &run(&mut tract, &x, batch),
            1e-5,
        );
        assert_outputs_match(
            &format!("{what} (back)"),
            &want,
            &run(&mut back, &x, batch),
            1e-5,
        );
        // Names, dtypes and per-sample shapes survive.
        assert_eq!(tract.info().inputs, m.graph.inputs, "{what}: inputs");
        let names: Vec<_> = tract.info().outputs.iter().map(|o| &o.name).collect();
        let expected: Vec<_> = m.graph.outputs.iter().map(|o| &o.name).collect();
        assert_eq!(names, expected, "{what}: outputs");
    }
}

#[test]
fn tree_classifiers_use_the_ml_classifier_op_except_for_two_classes() {
    let ops = |m: &Model| {
        let bytes = perch::export::to_onnx(m).expect("export");
        perch::onnx::op_counts(&perch::onnx::parse(&bytes).expect("parse"))
    };
    let models = synthetic_models();
    let multi = ops(&models[1]);
    assert_eq!(
        multi.get("ai.onnx.ml::TreeEnsembleClassifier"),
        Some(&1),
        "{multi:?}"
    );
    assert!(!multi.contains_key("ArgMax"), "{multi:?}");
    let binary = ops(&models[2]);
    assert_eq!(
        binary.get("ai.onnx.ml::TreeEnsembleRegressor"),
        Some(&1),
        "{binary:?}"
    );
    assert_eq!(binary.get("ArgMax"), Some(&1), "{binary:?}");
    let regressor = ops(&models[3]);
    assert_eq!(regressor.get("ai.onnx.ml::TreeEnsembleRegressor"), Some(&1));
    // Metadata travels in metadata_props.
    let bytes = perch::export::to_onnx(&models[0]).expect("export");
    let proto = perch::onnx::parse(&bytes).expect("parse");
    let props: HashMap<_, _> = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(props.get("perch.name"), Some(&"conv net"));
    assert_eq!(proto.model_version, 3);
}

#[test]
fn an_invalid_graph_is_refused_with_the_reason() {
    let mut m = synthetic_models().remove(0);
    if let Layer::Dense { weight, .. } = &mut m.graph.nodes[12].layer {
        weight.shape = vec![5, 7];
    }
    let err = perch::export::to_onnx(&m).expect_err("inconsistent weight accepted");
    assert!(
        matches!(err, perch::export::ExportError::Graph(_)),
        "unexpected error {err}"
    );
    assert!(err.to_string().contains("dense"), "{err}");
}

// ---- trained models through perch-host, checked with onnxruntime ----

/// A Python with onnx, onnxruntime and numpy: `$PERCH_PYTHON` or `python3` when it has them,
/// else a virtual environment under the target directory filled from PyPI. `None` when no
/// Python exists.
fn python_with_onnxruntime() -> Option<PathBuf> {
    let system = std::env::var_os("PERCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let has_modules = |py: &Path| {
        Command::new(py)
            .args(["-c", "import onnx, onnxruntime, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if Command::new(&system).arg("--version").output().is_err() {
        return None;
    }
    if has_modules(&system) {
        return Some(system);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnxruntime-venv");
    let py = venv.join("bin/python");
    if !has_modules(&py) {
        eprintln!(
            "export_onnx: installing onnx, onnxruntime and numpy into {}",
            venv.display()
        );
        let status = Command::new(&system)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python -m venv");
        assert!(
            status.success(),
            "python3 -m venv {} failed",
            venv.display()
        );
        let out = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "onnx==1.23.2",
                "onnxruntime==1.32.0",
                "numpy==2.4.6",
            ])
            .output()
            .expect("pip");
        assert!(
            out.status.success(),
            "pip install onnx onnxruntime numpy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(py)
}

fn host(db: &Path, args: &[&str]) -> String {
    let mut all = vec!["--registry", db.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = run_cmd(host_bin(), &all);
    assert!(
        out.status.success(),
        "perch-host {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The CSV without its last (target) column.
fn features_only(labelled: &Path, out: &Path) {
    let text = std::fs::read_to_string(labelled).expect("read csv");
    let rows: Vec<String> = text
        .lines()
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            cells[..cells.len() - 1].join(",")
        })
        .collect();
    std::fs::write(out, rows.join("\n") + "\n").expect("write csv");
}

#[test]
fn trained_models_export_to_onnx_that_onnxruntime_and_perch_run_with_the_native_outputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("reg.db");
    let data = corpus_dir().join("datasets");
    // (name, dataset, extra train flags)
    let cases: &[(&str, &str, &[&str])] = &[
        ("iris-softmax", "iris", &["--model", "softmax"]),
        (
            "iris-svm",
            "iris",
            &["--model", "svm", "--scale", "standard"],
        ),
        ("iris-forest", "iris", &["--model", "forest"]),
        (
            "bc-logistic",
            "breast_cancer",
            &["--model", "logistic", "--scale", "standard"],
        ),
        ("bc-forest", "breast_cancer", &["--model", "forest"]),
        (
            "wine-mlp",
            "wine",
            &["--model", "mlp", "--scale", "minmax", "--hidden", "16"],
        ),
        ("wine-tree", "wine", &["--model", "tree"]),
        ("diabetes-linear", "diabetes", &["--model", "linear"]),
        (
            "diabetes-tree",
            "diabetes",
            &["--model", "tree", "--task", "regression"],
        ),
    ];
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for &(name, set, flags) in cases {
        let train = data.join(set).join(format!("{set}_train.csv"));
        let test = data.join(set).join(format!("{set}_test.csv"));
        let mut args = vec![
            "train",
            train.to_str().expect("path"),
            "--target",
            "target",
            "--name",
            name,
            "--json",
        ];
        args.extend_from_slice(flags);
        host(&db, &args);
        let input = dir.path().join(format!("{set}_x.csv"));
        features_only(&test, &input);
        let perch_file = dir.path().join(format!("{name}.perch"));
        let onnx_file = dir.path().join(format!("{name}.onnx"));
        for (format, file) in [("perch", &perch_file), ("onnx", &onnx_file)] {
            host(
                &db,
                &[
                    "models",
                    "export",
                    name,
                    "--format",
                    format,
                    "-o",
                    file.to_str().expect("path"),
                ],
            );
        }
        // The device binary on the native artifact is the reference.
        let want = run_json(&perch_file, &input, &[]).expect("perch run .perch");
        for engine in ["tract", "auto"] {
            let got = run_json(&onnx_file, &input, &["--engine".into(), engine.into()])
                .unwrap_or_else(|e| panic!("{name}: perch run .onnx --engine {engine}: {e}"));
            assert_outputs_match(&format!("{name} (perch, {engine})"), &want, &got, 1e-5);
        }
        let ort_out = dir.path().join(format!("{name}.ort.json"));
        jobs.push(serde_json::json!({"model": onnx_file, "input": input, "output": ort_out}));
        expected.push((name.to_string(), want, ort_out));
    }
    // The synthetic models of the other tests too: conv, pooling and the tree op forms.
    let mut r = Lcg(11);
    for m in synthetic_models() {
        let name = m.metadata.name.replace(' ', "-");
        let onnx_file = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&onnx_file, perch::export::to_onnx(&m).expect("export")).expect("write");
        let len = m.graph.inputs[0].sample_len();
        let batch = 9;
        let x = r.vec(batch * len);
        let input = dir.path().join(format!("{name}_x.csv"));
        let mut csv: Vec<String> = vec![
            (0..len)
                .map(|i| format!("f{i}"))
                .collect::<Vec<_>>()
                .join(","),
        ];
        csv.extend(x.chunks(len).map(|row| {
            row.iter()
                .map(|v| format!("{v:e}"))
                .collect::<Vec<_>>()
                .join(",")
        }));
        std::fs::write(&input, csv.join("\n") + "\n").expect("write input");
        let mut native =
            Runtime::from_artifact_bytes(&perch::artifact::encode(&m).expect("encode"))
                .expect("load");
        let ort_out = dir.path().join(format!("{name}.ort.json"));
        jobs.push(serde_json::json!({"model": onnx_file, "input": input, "output": ort_out}));
        expected.push((name, run(&mut native, &x, batch), ort_out));
    }

    // Int8 models as QDQ ONNX.
    let mut quantized = Vec::new();
    // Not the dynamic conv net: its rank-2 dense layer quantizes each row on its own in
    // perch, the whole tensor at once in ONNX's DynamicQuantizeLinear.
    for (m, batch) in quantized_models().into_iter().take(3) {
        let name = m.metadata.name.replace(' ', "-");
        let onnx_file = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&onnx_file, perch::export::to_onnx(&m).expect("export")).expect("write");
        let len = m.graph.inputs[0].sample_len();
        let x = pixels(&mut r, batch * len);
        let input = dir.path().join(format!("{name}_x.csv"));
        let header = (0..len)
            .map(|i| format!("f{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let body: Vec<String> = x
            .chunks(len)
            .map(|row| {
                row.iter()
                    .map(|v| format!("{v:e}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        std::fs::write(&input, format!("{header}\n{}\n", body.join("\n"))).expect("write");
        let mut native =
            Runtime::from_artifact_bytes(&perch::artifact::encode(&m).expect("encode"))
                .expect("load");
        let ort_out = dir.path().join(format!("{name}.ort.json"));
        let ref_out = dir.path().join(format!("{name}.ref.json"));
        jobs.push(serde_json::json!({
            "model": onnx_file, "input": input, "output": ort_out, "reference_output": ref_out
        }));
        quantized.push((name, run(&mut native, &x, batch), ort_out, ref_out));
    }

    let Some(python) = python_with_onnxruntime() else {
        eprintln!(
            "SKIPPED the onnxruntime half of this test: no Python found (python3 or $PERCH_PYTHON); \
             perch's own ONNX path was checked above"
        );
        return;
    };
    let jobs_file = dir.path().join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_string(&jobs).expect("json")).expect("write jobs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ort_run.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&jobs_file)
        .output()
        .expect("run ort_run.py");
    assert!(
        out.status.success(),
        "onnxruntime refused an export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    for (name, want, ort_out) in expected {
        assert_outputs_match(
            &format!("{name} (onnxruntime)"),
            &want,
            &read_outputs_json(&ort_out),
            1e-5,
        );
    }
    // The ONNX spec's evaluator and onnxruntime requantize in float where perch uses fixed
    // point: within 1e-3. onnxruntime's u8s8 kernels on x86 without VNNI add pairs of products
    // in saturating 16-bit lanes (its documented "saturation issue"), so there its int8
    // results are not the spec's: they are compared, and the difference printed, only.
    let ort_exact = ort_int8_is_exact();
    for (name, want, ort_out, ref_out) in quantized {
        assert_outputs_match(
            &format!("{name} (onnx.reference)"),
            &want,
            &read_outputs_json(&ref_out),
            1e-3,
        );
        let ort = read_outputs_json(&ort_out);
        if ort_exact {
            assert_outputs_match(&format!("{name} (onnxruntime)"), &want, &ort, 1e-3);
        } else {
            eprintln!(
                "{name}: onnxruntime (u8s8 without VNNI, saturating) differs from perch by at most {:.2e}; not asserted",
                largest_difference(&want, &ort)
            );
        }
    }
}

/// Whether onnxruntime's int8 GEMM is exact on this CPU: everywhere but x86 without VNNI.
// clippy lints the macro's expansion, where "avx512vnni" is already two checks.
#[allow(clippy::nonminimal_bool)]
fn ort_int8_is_exact() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// The largest absolute difference between two sets of outputs, over the names both have.
fn largest_difference(
    a: &std::collections::HashMap<String, Vec<f64>>,
    b: &std::collections::HashMap<String, Vec<f64>>,
) -> f64 {
    a.iter()
        .filter_map(|(name, x)| b.get(name).map(|y| (x, y)))
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}

/// Every quantized layer gives each sample of a batch what it gives that sample alone (a
/// dense layer whose samples hold several rows once ran only `batch` rows).
#[test]
fn int8_conv_net_gives_each_sample_of_a_batch_what_it_gives_alone() {
    let mut r = Lcg(9);
    for (m, _) in quantized_models().into_iter().skip(2) {
        let what = m.metadata.name.clone();
        let bytes = perch::artifact::encode(&m).expect("encode");
        let len = m.graph.inputs[0].sample_len();
        let x = r.vec(9 * len);
        let mut engine = Runtime::from_artifact_bytes(&bytes).expect("load");
        let all = run(&mut engine, &x, 9);
        for s in 0..9 {
            let one = run(&mut engine, &x[s * len..(s + 1) * len], 1);
            for (name, v) in &one {
                let per = v.len();
                assert_eq!(
                    &all[name][s * per..(s + 1) * per],
                    &v[..],
                    "{what}: {name} of sample {s} in a batch of 9 differs from alone"
                );
            }
        }
    }
}
