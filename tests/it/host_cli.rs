//! `perch-host train / eval / models / import` end to end: the JSON contract, the registry
//! commands, export to a `.perch` file the device binary runs with the same labels, and
//! errors that exit non-zero with a clear message and leave the registry as it was.
use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn iris(file: &str) -> PathBuf {
    corpus_dir().join("datasets/iris").join(file)
}

/// A registry in a fresh temp dir; `host` runs perch-host against it.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("reg.db")
    }

    fn run(&self, args: &[&str]) -> Output {
        let db = self.db();
        let mut all: Vec<&str> = vec!["--registry", db.to_str().expect("utf-8 temp path")];
        all.extend_from_slice(args);
        run_cmd(host_bin(), &all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "perch-host {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}: {text}"))
    }

    fn err(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "perch-host {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    fn train_iris(&self, model: &str) -> Value {
        let (train, test) = (iris("iris_train.csv"), iris("iris_test.csv"));
        self.json(&[
            "train",
            train.to_str().unwrap(),
            "--target",
            "target",
            "--model",
            model,
            "--test",
            test.to_str().unwrap(),
            "--name",
            "iris",
            "--json",
        ])
    }

    fn versions(&self) -> Vec<String> {
        self.json(&["models", "list", "--json"])
            .as_array()
            .expect("list is an array")
            .iter()
            .map(|v| v["ref"].as_str().expect("ref").to_string())
            .collect()
    }
}

/// The features of a labelled CSV, without the last (target) column.
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
fn train_json_contract_eval_and_export_agree_with_the_device() {
    let host = Host::new();
    let report = host.train_iris("logistic");
    assert_eq!(report["name"], "iris");
    assert_eq!(report["version"], 1);
    assert!(report["fit_seconds"].as_f64().is_some_and(|s| s >= 0.0));
    let accuracy = report["metrics"]["accuracy"].as_f64().expect("accuracy");
    assert!(accuracy >= 0.9, "iris logistic accuracy {accuracy}");
    for key in [
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "recall_macro",
        "roc_auc",
        "log_loss",
    ] {
        assert!(
            report["metrics"][key].is_number(),
            "metrics.{key}: {report}"
        );
    }

    let confusion = report["confusion_matrix"]
        .as_array()
        .expect("confusion matrix");
    assert_eq!(confusion.len(), 3);

    let test = iris("iris_test.csv");
    let eval = host.json(&["eval", "iris@1", "--data", test.to_str().unwrap(), "--json"]);
    assert_eq!(eval["name"], "iris");
    assert_eq!(eval["version"], 1);
    let eval_accuracy = eval["metrics"]["accuracy"].as_f64().expect("eval accuracy");
    assert!(
        (eval_accuracy - accuracy).abs() < 1e-9,
        "{eval_accuracy} vs {accuracy}"
    );
    assert_eq!(eval["confusion_matrix"], report["confusion_matrix"]);
    let labels: Vec<i64> = eval["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|v| v.as_i64().expect("integer label"))
        .collect();
    assert_eq!(labels.len(), 38);

    let artifact = host.dir.path().join("iris.perch");
    host.ok(&[
        "models",
        "export",
        "iris",
        "--format",
        "perch",
        "-o",
        artifact.to_str().unwrap(),
    ]);
    let x = host.dir.path().join("x.csv");
    features_only(&test, &x);
    let outputs = run_json(&artifact, &x, &[]).expect("perch run");
    let device: Vec<i64> = outputs["label"].iter().map(|&v| v as i64).collect();
    assert_eq!(
        device, labels,
        "perch run labels differ from perch-host eval"
    );
}

/// The artifact `perch-host train` makes carries the drift baseline of the training data
/// (one feature per input value) and a canary: a training row with the outputs the model
/// gives for it, which the model exported from the registry passes and another fails.
#[test]
fn trained_artifacts_carry_a_drift_baseline_and_a_canary_the_model_passes() {
    use perch::graph::sections::CanaryValues;
    let host = Host::new();
    let diabetes = corpus_dir().join("datasets/diabetes/diabetes_train.csv");
    host.train_iris("logistic");
    host.train_iris("tree");
    host.json(&[
        "train",
        diabetes.to_str().unwrap(),
        "--target",
        "target",
        "--model",
        "linear",
        "--name",
        "diabetes",
        "--json",
    ]);
    let train_rows: Vec<Vec<f32>> = std::fs::read_to_string(iris("iris_train.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            cells[..cells.len() - 1]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect()
        })
        .collect();
    let mut canaries = Vec::new();
    for (r, features) in [("iris@1", 4), ("iris@2", 4), ("diabetes@1", 10)] {
        let path = host.dir.path().join(format!("{r}.perch"));
        host.ok(&[
            "models",
            "export",
            r,
            "--format",
            "perch",
            "-o",
            path.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&path).unwrap();
        let meta = perch::artifact::decode(&bytes).unwrap().model.metadata;
        let baseline = meta
            .drift_baseline(features)
            .unwrap()
            .expect("a drift baseline");
        assert_eq!(baseline.features.len(), features);
        let canary = meta.canary(features).unwrap().expect("a canary");
        assert_eq!(canary.tolerance, 1e-4);
        let mut model = perch::runtime::Model::from_artifact_bytes(&bytes).unwrap();
        assert_eq!(perch::runtime::check_canary(&mut model, &canary), Ok(()));
        let out = run_cmd(perch_bin(), &["info", path.to_str().unwrap()]);
        assert!(out.status.success(), "perch info {r}");
        let info = String::from_utf8(out.stdout).unwrap();
        assert!(
            info.contains(&format!("drift baseline: {features} features")),
            "{info}"
        );
        assert!(info.contains("canary: yes"), "{info}");
        canaries.push((model, canary));
    }
    // Classifiers: the canary is a training row, with probabilities and a label.
    for (_, c) in &canaries[..2] {
        assert!(train_rows.contains(&c.input), "{:?}", c.input);
        assert!(
            matches!(&c.outputs[..], [CanaryValues::F32(p), CanaryValues::I64(_)] if p.len() == 3)
        );
    }
    // The logistic model fails the tree's canary (different probabilities).
    let (logistic, tree) = canaries.split_at_mut(1);
    assert!(perch::runtime::check_canary(&mut logistic[0].0, &tree[0].1).is_err());
}

#[test]
fn models_list_show_alias_tag_diff_delete() {
    let host = Host::new();
    host.train_iris("logistic");
    let second = host.train_iris("softmax");
    assert_eq!(second["version"], 2);
    assert_eq!(host.versions(), ["iris@1", "iris@2"]);

    host.ok(&["models", "alias", "iris@1", "production"]);
    host.ok(&["models", "tag", "iris@production", "baseline"]);
    let shown = host.json(&["models", "show", "iris@production", "--json"]);
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["aliases"], serde_json::json!(["production"]));
    assert_eq!(shown["tags"], serde_json::json!(["baseline"]));
    assert_eq!(shown["dataset"]["rows"], 112);
    assert_eq!(shown["dataset"]["columns"], 5);
    assert_eq!(
        shown["dataset"]["feature_stats"].as_array().unwrap().len(),
        4
    );
    assert_eq!(
        shown["dataset"]["feature_stats"][0]["bin_edges"]
            .as_array()
            .unwrap()
            .len(),
        11
    );
    assert!(host.ok(&["models", "show", "iris"]).contains("iris@2"));

    let diff = host.json(&["models", "diff", "iris@production", "iris@2", "--json"]);
    assert_eq!(diff["params"]["model"]["a"], "logistic");
    assert_eq!(diff["params"]["model"]["b"], "softmax");
    assert_eq!(diff["same_dataset"], true);
    assert!(diff["metrics"]["accuracy"]["delta"].is_number());

    let e = host.err(&["models", "delete", "iris"]);
    assert!(e.contains("--all"), "{e}");
    host.ok(&["models", "delete", "iris@2"]);
    assert_eq!(host.versions(), ["iris@1"]);
    let e = host.err(&["models", "show", "iris@2"]);
    assert!(e.contains("no version 2"), "{e}");
    let e = host.err(&["models", "show", "iris@staging"]);
    assert!(e.contains("no alias \"staging\""), "{e}");
    // Numbers are not reused after a deletion.
    assert_eq!(host.train_iris("logistic")["version"], 3);

    let train = iris("iris_train.csv");
    let child = host.json(&[
        "train",
        train.to_str().unwrap(),
        "--target",
        "target",
        "--model",
        "logistic",
        "--scale",
        "standard",
        "--name",
        "iris",
        "--parent",
        "iris@production",
        "--json",
    ]);
    let shown = host.json(&[
        "models",
        "show",
        &format!("iris@{}", child["version"]),
        "--json",
    ]);
    assert_eq!(shown["parent"], "iris@1");
    let e = host.err(&[
        "train",
        train.to_str().unwrap(),
        "--target",
        "target",
        "--model",
        "logistic",
        "--parent",
        "iris@9",
    ]);
    assert!(e.contains("no version 9"), "{e}");

    host.ok(&["models", "delete", "iris", "--all"]);
    assert!(host.versions().is_empty());
}

#[test]
fn failed_commands_exit_non_zero_and_leave_the_registry_intact() {
    let host = Host::new();
    host.train_iris("logistic");
    let before = host.json(&["models", "show", "iris@1", "--json"]);
    let train = iris("iris_train.csv");
    let train = train.to_str().unwrap();

    let e = host.err(&["eval", "nope", "--data", train]);
    assert!(e.contains("unknown model \"nope\""), "{e}");

    let e = host.err(&["train", train, "--target", "species", "--model", "logistic"]);
    assert!(
        e.contains("iris_train.csv") && e.contains("\"species\""),
        "{e}"
    );

    let e = host.err(&[
        "train", train, "--target", "target", "--model", "logistic", "--grid", "lr",
    ]);
    assert!(e.contains("--grid"), "{e}");
    let e = host.err(&[
        "train",
        train,
        "--target",
        "target",
        "--model",
        "mlp",
        "--grid",
        "depth=3,4",
    ]);
    assert!(e.contains("--grid") && e.contains("depth"), "{e}");

    let e = host.err(&["train", train, "--target", "target", "--model", "knn"]);
    assert!(e.contains("unknown model kind"), "{e}");

    let e = host.err(&[
        "train", train, "--target", "target", "--model", "linear", "--name", "a b",
    ]);
    assert!(e.contains("model name"), "{e}");

    assert_eq!(host.versions(), ["iris@1"]);
    assert_eq!(host.json(&["models", "show", "iris@1", "--json"]), before);
}

#[test]
fn registry_location_defaults_to_the_current_directory_and_follows_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let train = iris("iris_train.csv");
    let args = [
        "train",
        train.to_str().unwrap(),
        "--target",
        "target",
        "--model",
        "logistic",
        "--json",
    ];
    let status = Command::new(host_bin())
        .args(args)
        .current_dir(dir.path())
        .env_remove("PERCH_REGISTRY")
        .output()
        .expect("spawn");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(dir.path().join("perch-registry.db").is_file());
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["name"], "iris-logistic");
    let sha = report["artifact_sha256"].as_str().unwrap();
    assert!(
        dir.path()
            .join("artifacts")
            .join(format!("{sha}.perch"))
            .is_file()
    );

    let other = dir.path().join("elsewhere/models.db");
    let status = Command::new(host_bin())
        .args(args)
        .current_dir(dir.path())
        .env("PERCH_REGISTRY", &other)
        .output()
        .expect("spawn");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(other.is_file());
    assert!(dir.path().join("elsewhere/artifacts").is_dir());
}

#[test]
fn import_registers_onnx_models_native_or_as_onnx_and_eval_scores_them() {
    let models = corpus_dir().join("models");
    let test = iris("iris_test.csv");
    let test = test.to_str().unwrap();
    let host = Host::new();

    let logreg = models.join("sk_logreg_iris/model.onnx");
    let v = host.json(&[
        "import",
        logreg.to_str().unwrap(),
        "--name",
        "ext",
        "--json",
    ]);
    assert_eq!(
        (v["name"].as_str(), v["version"].as_u64()),
        (Some("ext"), Some(1))
    );
    assert_eq!(
        v["format"], "perch",
        "a linear classifier converts to native: {v}"
    );
    let e = host.err(&["eval", "ext", "--data", test]);
    assert!(e.contains("--target"), "{e}");
    let eval = host.json(&[
        "eval", "ext", "--data", test, "--target", "target", "--json",
    ]);
    let accuracy = eval["metrics"]["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - 0.947).abs() < 0.01,
        "scikit-learn's figure is 0.947, got {accuracy}"
    );

    let forest = models.join("sk_rf_iris/model.onnx");
    let v = host.json(&["import", forest.to_str().unwrap(), "--name", "rf", "--json"]);
    assert_eq!(
        v["format"], "perch",
        "tree ensembles convert to the native layer: {v}"
    );
    let eval = host.json(&["eval", "rf", "--data", test, "--target", "target", "--json"]);
    assert!(
        eval["metrics"]["accuracy"].as_f64().unwrap() >= 0.9,
        "{eval}"
    );
    // A model with ops the native engine lacks (dynamic int8: DynamicQuantizeLinear) is kept
    // as ONNX and exported as is.
    let qdq = models.join("sk_mlp_digits_dyn_u8s8_pc/model.onnx");
    let v = host.json(&["import", qdq.to_str().unwrap(), "--name", "q", "--json"]);
    assert_eq!(v["format"], "onnx", "{v}");
    let digits = models.join("../datasets/digits/digits_test.csv");
    let eval = host.json(&[
        "eval",
        "q",
        "--data",
        digits.to_str().unwrap(),
        "--target",
        "target",
        "--json",
    ]);
    assert!(
        eval["metrics"]["accuracy"].as_f64().unwrap() >= 0.9,
        "{eval}"
    );
    let out = host.dir.path().join("q.onnx");
    host.ok(&[
        "models",
        "export",
        "q",
        "--format",
        "onnx",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&qdq).unwrap());
    assert_eq!(host.versions(), ["ext@1", "q@1", "rf@1"]);
}

/// Training again here with the flags of models/train.sh (kept in `train.args`) gives the
/// predictions the committed artifacts give (`expected.json`): the models the device tests run
/// are what perch-host makes.
#[test]
fn training_again_reproduces_the_committed_trained_models() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for name in ["wine-forest", "digits-mlp-trained"] {
        let dir = models.join(name);
        let args = std::fs::read_to_string(dir.join("train.args")).expect("train.args");
        let mut lines = args.lines();
        let set = lines.next().expect("dataset line");
        let train = corpus_dir()
            .join("datasets")
            .join(set)
            .join(format!("{set}_train.csv"));
        let host = Host::new();
        let mut cmd = vec![
            "train",
            train.to_str().expect("utf-8 path"),
            "--target",
            "target",
            "--name",
            name,
            "--json",
        ];
        cmd.extend(lines);
        host.json(&cmd);
        let artifact = host.dir.path().join("model.perch");
        host.ok(&[
            "models",
            "export",
            name,
            "--format",
            "perch",
            "-o",
            artifact.to_str().expect("utf-8 path"),
        ]);
        let got = run_json(&artifact, &dir.join("sample.csv"), &[]).expect("perch run");
        let want = read_outputs_json(&dir.join("expected.json"));
        assert_outputs_match(&format!("{name} retrained"), &want, &got, 1e-4);
    }
}

/// Optimizer, schedule, weight decay, solver and tree flags reach the model and its recorded
/// hyper-parameters; flags a model does not have are refused by name.
#[test]
fn training_flags_reach_the_model_and_are_recorded() {
    let host = Host::new();
    let (train, test) = (iris("iris_train.csv"), iris("iris_test.csv"));
    let (train, test) = (train.to_str().unwrap(), test.to_str().unwrap());
    let mlp = host.json(&[
        "train",
        train,
        "--target",
        "target",
        "--model",
        "mlp",
        "--optimizer",
        "nesterov",
        "--lr",
        "0.05",
        "--schedule",
        "step:20:0.5",
        "--weight-decay",
        "0.001",
        "--scale",
        "standard",
        "--hidden",
        "16",
        "--test",
        test,
        "--json",
    ]);
    let params = &host.json(&["models", "show", "iris-mlp", "--json"])["params"];
    assert_eq!(params["optimizer"], "nesterov", "{params}");
    assert_eq!(params["schedule"], "step:20:0.5", "{params}");
    assert_eq!(params["weight_decay"], 0.001, "{params}");
    assert!(mlp["metrics"]["accuracy"].as_f64().unwrap() > 0.85, "{mlp}");

    host.json(&[
        "train",
        train,
        "--target",
        "target",
        "--model",
        "tree",
        "--max-depth",
        "1",
        "--criterion",
        "entropy",
        "--name",
        "stump",
        "--json",
    ]);
    let params = &host.json(&["models", "show", "stump", "--json"])["params"];
    assert_eq!(params["max_depth"], 1, "{params}");
    assert_eq!(params["criterion"], "entropy", "{params}");
    // A depth-1 tree has one split: at most two distinct labels on the test rows.
    let stump = host.dir.path().join("stump.perch");
    host.ok(&["models", "export", "stump", "-o", stump.to_str().unwrap()]);
    let x = host.dir.path().join("x.csv");
    features_only(&iris("iris_test.csv"), &x);
    let out = run_json(&stump, &x, &[]).expect("perch run");
    let mut labels = out["label"].clone();
    labels.sort_by(f64::total_cmp);
    labels.dedup();
    assert_eq!(labels.len(), 2, "a stump predicted {labels:?}");

    host.json(&[
        "train",
        train,
        "--target",
        "target",
        "--model",
        "forest",
        "--trees",
        "7",
        "--max-features",
        "2",
        "--bootstrap",
        "false",
        "--name",
        "small-forest",
        "--json",
    ]);
    let params = &host.json(&["models", "show", "small-forest", "--json"])["params"];
    assert_eq!(params["n_estimators"], 7, "{params}");
    assert_eq!(params["bootstrap"], false, "{params}");

    host.json(&[
        "train",
        train,
        "--target",
        "target",
        "--model",
        "softmax",
        "--solver",
        "gd",
        "--optimizer",
        "adam",
        "--lr",
        "0.05",
        "--name",
        "sm-gd",
        "--json",
    ]);
    let params = &host.json(&["models", "show", "sm-gd", "--json"])["params"];
    assert_eq!(params["solver"], "gradient", "{params}");

    for (args, needle) in [
        (
            vec!["--model", "forest", "--schedule", "cosine"],
            "not a parameter of random_forest",
        ),
        (vec!["--model", "mlp", "--schedule", "step:0"], "step:EVERY"),
        (
            vec!["--model", "logistic", "--solver", "exact"],
            "closed form",
        ),
        (vec!["--model", "tree", "--max-features", "1.5"], "fraction"),
        (vec!["--model", "mlp", "--weight-decay=-1"], "weight decay"),
    ] {
        let mut cmd = vec!["train", train, "--target", "target"];
        cmd.extend(args.iter().copied());
        let err = host.err(&cmd);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `perch-host alerts` lists what the rules raised over stored reports, and `serve` refuses
/// a rules file it cannot use before it listens.
#[test]
fn alerts_lists_open_and_resolved_alerts_and_serve_checks_its_rules() {
    use perch::fleet::{Fleet, alerts};
    use perch::metrics::Report;
    let host = Host::new();
    {
        let mut fleet = Fleet::open(host.db()).expect("fleet");
        let a = fleet.add_device("pi-a", "lab").expect("device");
        let b = fleet.add_device("pi-b", "lab").expect("device");
        let drifting = Report {
            model: [7; 8],
            requests: 230,
            psi_milli: vec![10, 410],
            ..Report::default()
        };
        let failing = Report {
            model: [7; 8],
            requests: 200,
            errors: 15,
            ..Report::default()
        };
        fleet
            .store_reports(&[(a.id, 1, &drifting), (b.id, 1, &failing)])
            .expect("store");
        let now = perch::fleet::now_unix_s();
        let opened = alerts::evaluate(&mut fleet, &alerts::Rules::default(), now).expect("eval");
        assert_eq!(opened.len(), 2, "{opened:?}");
        let fine = Report {
            requests: 500,
            ..failing
        };
        fleet.store_reports(&[(b.id, 2, &fine)]).expect("store");
        let resolved = alerts::evaluate(&mut fleet, &alerts::Rules::default(), now).expect("eval");
        assert_eq!(resolved.len(), 1, "{resolved:?}");
    }
    let text = host.ok(&["alerts"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("RULE") && lines[0].contains("SINCE"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("drift") && lines[1].contains("pi-a"),
        "{text}"
    );
    assert!(lines[1].contains("feature 1 PSI 0.41 > 0.2"), "{text}");

    let all = host.json(&["alerts", "--all", "--json"]);
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["rule"], "errors");
    assert_eq!(all[0]["state"], "resolved");
    assert_eq!(all[0]["device"], "pi-b");
    assert_eq!(all[0]["value"], 0.075);
    assert_eq!(all[1]["state"], "open");
    assert_eq!(all[1]["subject"], "1");
    let text = host.ok(&["alerts", "--all"]);
    assert!(
        text.contains("7.50% > 5.00%") && text.contains("resolved"),
        "{text}"
    );

    let rules = host.dir.path().join("rules.toml");
    for (body, needle) in [
        ("[drift]\nthreshold = 0.3\n", "threshold"),
        ("[errors]\nrate = 2\n", "errors.rate"),
        ("[latency]\np95_us = \"fast\"\n", "p95_us"),
    ] {
        std::fs::write(&rules, body).expect("write rules");
        let e = host.err(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--rules",
            rules.to_str().unwrap(),
        ]);
        assert!(
            e.contains("rules.toml") && e.contains(needle),
            "{body}: {e}"
        );
    }
}

/// An imported `…/NAME/model.onnx` is NAME; another file is its stem; `--name` wins.
#[test]
fn import_names_a_model_after_its_folder_or_its_file() {
    let host = Host::new();
    let models = corpus_dir().join("models");
    let v = host.json(&[
        "import",
        models.join("sk_dtree_iris/model.onnx").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["ref"], "sk_dtree_iris@1", "{v}");
    let renamed = host.dir.path().join("iris tree.onnx");
    std::fs::copy(models.join("sk_dtree_iris/model.onnx"), &renamed).unwrap();
    let v = host.json(&["import", renamed.to_str().unwrap(), "--json"]);
    assert_eq!(v["ref"], "iris_tree@1", "{v}");
    let v = host.json(&[
        "import",
        models.join("sk_rf_iris/model.onnx").to_str().unwrap(),
        "--name",
        "forest",
        "--json",
    ]);
    assert_eq!(v["ref"], "forest@1", "{v}");
}

/// Metrics measured on the training data (no `--test`) say so in the train output, in
/// `models list` and `models show`, and in their JSON; held-out ones say `test`.
#[test]
fn training_set_metrics_are_labelled_wherever_they_are_shown() {
    let host = Host::new();
    let train = iris("iris_train.csv");
    let args = |name: &'static str| {
        vec![
            "train".to_string(),
            train.display().to_string(),
            "--target".into(),
            "target".into(),
            "--model".into(),
            "forest".into(),
            "--trees".into(),
            "5".into(),
            "--name".into(),
            name.into(),
        ]
    };
    let a = args("on-train");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let text = host.ok(&a);
    assert!(text.contains("(on the training data"), "{text}");
    let mut b = args("on-test");
    b.extend(["--test".into(), iris("iris_test.csv").display().to_string()]);
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let text = host.ok(&b);
    assert!(text.contains("(on the test data)"), "{text}");

    let list = host.ok(&["models", "list"]);
    let line = |r: &str| {
        list.lines()
            .find(|l| l.starts_with(r))
            .unwrap_or_else(|| panic!("{r} in {list}"))
            .to_string()
    };
    assert!(
        line("on-train@1").ends_with("(on the training data)"),
        "{list}"
    );
    assert!(!line("on-test@1").contains("training data"), "{list}");
    let show = host.ok(&["models", "show", "on-train"]);
    assert!(show.contains("(on the training data)"), "{show}");
    for (name, on) in [("on-train", "train"), ("on-test", "test")] {
        let v = host.json(&["models", "show", name, "--json"]);
        assert_eq!(v["metrics"]["evaluated_on"], on, "{v}");
    }
    let list = host.json(&["models", "list", "--json"]);
    for v in list.as_array().expect("array") {
        let on = if v["name"] == "on-train" {
            "train"
        } else {
            "test"
        };
        assert_eq!(v["metrics"]["evaluated_on"], on, "{v}");
    }
    // The dates shown are UTC dates, not Unix seconds.
    let created = host.json(&["models", "show", "on-test", "--json"])["created"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        created.len() == 19 && created.as_bytes()[4] == b'-' && created.as_bytes()[10] == b' ',
        "{created}"
    );
    assert!(
        host.ok(&["models", "show", "on-test"])
            .contains(&format!("created: {created} UTC"))
    );
}

/// `devices show` prints its events with UTC dates.
#[test]
fn device_events_show_dates() {
    let host = Host::new();
    let config = host.dir.path().join("d.toml");
    host.ok(&[
        "devices",
        "add",
        "d",
        "--host",
        "127.0.0.1:9",
        "--config",
        config.to_str().unwrap(),
    ]);
    {
        let mut fleet = perch::fleet::Fleet::open(host.db()).expect("fleet");
        let device = fleet.device("d").expect("query").expect("device d");
        fleet
            .record_event(Some(&device), None, "installed", "iris@1")
            .expect("event");
    }
    let v = host.json(&["devices", "show", "d", "--json"]);
    let unix = v["events"][0]["unix_s"].as_i64().expect("an event");
    let text = host.ok(&["devices", "show", "d"]);
    assert!(text.contains("events (UTC):"), "{text}");
    assert!(!text.contains(&unix.to_string()), "raw seconds in {text}");
    let date = perch::cli::utc_time(unix);
    assert!(
        text.contains(&format!("  {date}  installed")),
        "{date} in {text}"
    );
}
