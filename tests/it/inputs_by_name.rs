//! Inputs are matched to a model's features by name: a CSV header or JSON objects' keys in
//! any order give the predictions the training order gives, on `perch run` and on the
//! agent's `POST /predict`; a missing feature or an unknown column is an error naming it;
//! the training target's column is dropped with a note.
use crate::harness;

use harness::{Agent, Host, corpus_dir};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// iris_test.csv as a header and rows of text cells (the last column is `target`).
fn iris_test() -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(corpus_dir().join("datasets/iris/iris_test.csv"))
        .expect("the iris test split in tests/data");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .expect("a header")
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// Writes the columns `order` (indices into the header) of iris_test.csv.
fn write_csv(path: &Path, order: &[usize]) -> PathBuf {
    let (header, rows) = iris_test();
    let line = |cells: &[String]| {
        order
            .iter()
            .map(|&i| cells[i].as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut text = line(&header) + "\n";
    for r in &rows {
        text += &(line(r) + "\n");
    }
    std::fs::write(path, text).expect("write csv");
    path.to_path_buf()
}

/// The rows as JSON objects of the features (keys in reverse order of the header).
fn json_objects() -> Vec<Value> {
    let (header, rows) = iris_test();
    rows.iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            for i in (0..4).rev() {
                o.insert(header[i].clone(), json!(r[i].parse::<f64>().unwrap()));
            }
            Value::Object(o)
        })
        .collect()
}

/// The rows as arrays in training order.
fn json_arrays() -> Vec<Value> {
    let (_, rows) = iris_test();
    rows.iter()
        .map(|r| {
            json!(
                r[..4]
                    .iter()
                    .map(|c| c.parse::<f64>().unwrap())
                    .collect::<Vec<_>>()
            )
        })
        .collect()
}

fn perch(args: &[&str]) -> Output {
    Command::new(harness::perch_bin())
        .args(args)
        .output()
        .expect("spawn perch")
}

fn outputs(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "perch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["outputs"].clone()
}

#[test]
fn csv_and_json_columns_in_any_order_predict_what_the_training_order_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut host = Host::new(dir.path());
    let data = corpus_dir().join("datasets/iris");
    host.cli(&[
        "train",
        data.join("iris_train.csv").to_str().unwrap(),
        "--target",
        "target",
        "--model",
        "softmax",
        "--name",
        "iris",
    ]);
    let model = dir.path().join("iris.perch");
    let model_s = model.to_str().unwrap();
    host.cli(&["models", "export", "iris@1", "-o", model_s]);

    // perch info names the features and the target.
    let info: Value =
        serde_json::from_slice(&perch(&["info", model_s, "--json"]).stdout).expect("info JSON");
    assert_eq!(
        info["features"],
        json!([
            "sepal_length_cm",
            "sepal_width_cm",
            "petal_length_cm",
            "petal_width_cm"
        ])
    );
    assert_eq!(info["target"], "target");
    let text = String::from_utf8(perch(&["info", model_s]).stdout).unwrap();
    assert!(
        text.contains("sepal_length_cm, sepal_width_cm, petal_length_cm, petal_width_cm"),
        "{text}"
    );

    // The reference: features only, in training order, no header.
    let (_, rows) = iris_test();
    let plain = dir.path().join("plain.csv");
    std::fs::write(
        &plain,
        rows.iter()
            .map(|r| r[..4].join(",") + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let want = outputs(&perch(&[
        "run",
        model_s,
        "--input",
        plain.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(want["label"].as_array().map(Vec::len), Some(rows.len()));

    // The header reversed, the target column first: the same predictions, and a note.
    let reversed = write_csv(&dir.path().join("reversed.csv"), &[4, 3, 2, 1, 0]);
    let out = perch(&[
        "run",
        model_s,
        "--input",
        reversed.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(outputs(&out), want, "reordered columns");
    let note = String::from_utf8_lossy(&out.stderr);
    assert_eq!(note.lines().count(), 1, "one line: {note}");
    assert!(
        note.contains("dropped column \"target\" (the training target)"),
        "{note}"
    );
    // Without the target column: no note.
    let shuffled = write_csv(&dir.path().join("shuffled.csv"), &[2, 0, 3, 1]);
    let out = perch(&[
        "run",
        model_s,
        "--input",
        shuffled.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(outputs(&out), want);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // JSON objects, keys in another order.
    let objects = dir.path().join("objects.json");
    std::fs::write(&objects, Value::Array(json_objects()).to_string()).unwrap();
    let got = outputs(&perch(&[
        "run",
        model_s,
        "--input",
        objects.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(got, want, "JSON objects");

    // A missing feature, an unknown column: errors naming them, exit 1.
    let missing = write_csv(&dir.path().join("missing.csv"), &[0, 1, 3, 4]);
    let out = perch(&["run", model_s, "--input", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("missing feature \"petal_length_cm\""), "{e}");
    let extra = dir.path().join("extra.csv");
    let text = std::fs::read_to_string(&shuffled).unwrap();
    let text: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{l},{}\n", if i == 0 { "humidity" } else { "0.5" }))
        .collect();
    std::fs::write(&extra, text).unwrap();
    let out = perch(&["run", model_s, "--input", extra.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("column \"humidity\" is not a feature of the model"),
        "{e}"
    );
    let bad_json = dir.path().join("bad.json");
    std::fs::write(
        &bad_json,
        r#"[{"sepal_length_cm": 5.0, "petal_width_cm": 0.2}]"#,
    )
    .unwrap();
    let e = String::from_utf8_lossy(
        &perch(&["run", model_s, "--input", bad_json.to_str().unwrap()]).stderr,
    )
    .into_owned();
    assert!(
        e.contains("missing features \"sepal_width_cm\", \"petal_length_cm\""),
        "{e}"
    );

    // The agent's /predict: arrays in training order and objects in any order agree with
    // perch run; bad names are a 400 naming them.
    let addr = host.serve(0).to_string();
    let config = host.add_device("pi", "kitchen", &addr, "");
    let agent = Agent::start("pi", &config, None);
    let push = host.cli_json(&["push", "iris@1", "--to", "pi"]);
    let states = host.wait_push(push["push"].as_u64().unwrap(), Duration::from_secs(60));
    assert_eq!(states[0].1, "installed", "{states:?}");
    agent.wait_health("iris installed", Duration::from_secs(30), |h| {
        h["model"]["name"] == "iris"
    });
    let predict = |body: Value| {
        let (status, text) = agent.post("/predict", &body.to_string());
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    };
    let (status, by_position) = predict(json!({"inputs": json_arrays()}));
    assert_eq!(status, 200, "{by_position}");
    assert_eq!(by_position["outputs"]["label"], want["label"]);
    let (status, by_name) = predict(json!({"inputs": json_objects()}));
    assert_eq!(status, 200, "{by_name}");
    assert_eq!(by_name["outputs"], by_position["outputs"]);
    assert!(by_name.get("note").is_none(), "{by_name}");
    // One object, with the target still in it: dropped, and said so.
    let mut one = json_objects()[0].clone();
    one["target"] = json!(0);
    let (status, single) = predict(json!({ "input": one }));
    assert_eq!(status, 200, "{single}");
    assert_eq!(single["outputs"]["label"][0], want["label"][0]);
    assert_eq!(
        single["note"],
        "dropped column \"target\" (the training target)"
    );
    let mut wrong = json_objects()[0].clone();
    wrong.as_object_mut().unwrap().remove("petal_width_cm");
    wrong["humidity"] = json!(0.5);
    let (status, err) = predict(json!({ "input": wrong }));
    assert_eq!(status, 400, "{err}");
    let e = err["error"].as_str().unwrap();
    assert!(
        e.contains("missing feature \"petal_width_cm\"")
            && e.contains("column \"humidity\" is not a feature"),
        "{e}"
    );
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains("perch_agent_bad_requests_total 1"),
        "the refused request is counted: {metrics}"
    );
}
