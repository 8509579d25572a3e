//! Exit statuses scripts rely on (README lists them): 0 done, 1 failed, 2 usage error, 3 a
//! `push --wait` / `rollout --wait` that ended with a device pending or refusing or the
//! rollout unfinished; each verb of `perch` takes only its own flags; `--json` prints JSON on
//! every verb; an error names its file and its cause once.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Output;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn model() -> String {
    repo("models/digits-mlp/model.perch").display().to_string()
}

fn sample() -> String {
    repo("models/digits-mlp/sample.csv").display().to_string()
}

fn status(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `bin args` and checks its exit status; returns the output.
fn expect(bin: &str, args: &[&str], code: i32) -> Output {
    let out = run_cmd(bin, args);
    assert_eq!(
        status(&out),
        Some(code),
        "{bin} {args:?}: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

#[test]
fn perch_exits_0_1_and_2() {
    let (m, s) = (model(), sample());
    expect(perch_bin(), &["run", &m, "--input", &s], 0);
    expect(perch_bin(), &["--version"], 0);
    let e = stderr(&expect(
        perch_bin(),
        &["run", "/nonexistent/m.perch", "--input", &s],
        1,
    ));
    assert!(e.contains("/nonexistent/m.perch"), "{e}");
    // Usage errors: nothing was tried.
    for args in [
        vec!["frobnicate"],
        vec!["run", &m],
        vec!["run", "--input", &s],
        vec!["run", &m, "--input", &s, "--batch", "0"],
        vec!["run", &m, "--input", &s, "--batch", "x"],
        vec!["run", &m, "--input", &s, "--format", "yaml"],
        vec!["run", &m, "--input", &s, "--json", "--format", "csv"],
        vec!["info", &m, &m],
        vec!["agent"],
        vec!["--bogus"],
    ] {
        let e = stderr(&expect(perch_bin(), &args, 2));
        assert!(e.starts_with("perch: error: "), "{args:?}: {e}");
    }
}

#[test]
fn each_perch_verb_takes_only_its_own_flags() {
    let (m, s) = (model(), sample());
    for (args, flag) in [
        (vec!["info", &m, "--iterations", "5"], "--iterations"),
        (vec!["info", &m, "--input", &s], "--input"),
        (vec!["run", &m, "--input", &s, "--warmup", "3"], "--warmup"),
        (vec!["run", &m, "--input", &s, "--config", "x"], "--config"),
        (vec!["bench", &m, "--output", "x.csv"], "--output"),
        (vec!["bench", &m, "--format", "json"], "--format"),
        (vec!["agent", "--config", "x.toml", "--json"], "--json"),
        (vec!["agent", "--config", "x.toml", &m], "MODEL"),
    ] {
        let e = stderr(&expect(perch_bin(), &args, 2));
        assert!(
            e.contains(flag) && e.contains(&format!("perch {}", args[0])),
            "{args:?}: {e}"
        );
    }
    // The same flags where they belong.
    expect(
        perch_bin(),
        &["bench", &m, "--iterations", "5", "--warmup", "1"],
        0,
    );
}

#[test]
fn json_means_json_on_every_perch_verb() {
    let (m, s) = (model(), sample());
    for args in [
        vec!["run", &m, "--input", &s, "--json"],
        vec!["info", &m, "--json"],
        vec!["bench", &m, "--iterations", "5", "--warmup", "1", "--json"],
    ] {
        let out = expect(perch_bin(), &args, 0);
        let text = String::from_utf8(out.stdout).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{args:?}: one JSON line: {text}");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"));
        assert!(v.is_object(), "{args:?}: {v}");
    }
    // `run --json` is `run --format json`.
    let a = expect(perch_bin(), &["run", &m, "--input", &s, "--json"], 0);
    let b = expect(
        perch_bin(),
        &["run", &m, "--input", &s, "--format", "json"],
        0,
    );
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn errors_name_the_file_and_the_cause_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("iris_trian.csv");
    let missing = missing.to_str().expect("utf-8 path");
    let config = dir.path().join("agent.toml");
    let config = config.to_str().expect("utf-8 path");
    let once = |e: &str, what: &str| {
        assert_eq!(e.matches(what).count(), 1, "{what:?} once in: {e}");
    };
    let cause = "No such file or directory";

    let e = stderr(&expect(
        perch_bin(),
        &["run", missing, "--input", &sample()],
        1,
    ));
    once(&e, missing);
    once(&e, cause);
    let e = stderr(&expect(
        perch_bin(),
        &["run", &model(), "--input", missing],
        1,
    ));
    once(&e, missing);
    once(&e, cause);
    let e = stderr(&expect(perch_bin(), &["agent", "--config", config], 1));
    once(&e, config);
    once(&e, cause);
    assert!(e.contains("configuration"), "{e}");

    #[cfg(feature = "host")]
    {
        let db = dir.path().join("reg.db");
        let db = db.to_str().expect("utf-8 path");
        let train = |data: &str, extra: &[&str]| {
            let mut args = vec![
                "--registry",
                db,
                "train",
                data,
                "--target",
                "target",
                "--model",
                "softmax",
            ];
            args.extend_from_slice(extra);
            run_cmd(host_bin(), &args)
        };
        let out = train(missing, &[]);
        assert_eq!(status(&out), Some(1));
        let e = stderr(&out);
        once(&e, missing);
        once(&e, cause);
        assert!(e.contains("training data"), "{e}");
        let iris = corpus_dir().join("datasets/iris/iris_train.csv");
        let out = train(iris.to_str().expect("utf-8"), &["--test", missing]);
        let e = stderr(&out);
        once(&e, missing);
        once(&e, cause);
        assert!(e.contains("test data"), "{e}");
        let out = run_cmd(
            host_bin(),
            &[
                "--registry",
                db,
                "serve",
                "--rules",
                missing,
                "--http",
                "off",
            ],
        );
        assert_eq!(status(&out), Some(1));
        let e = stderr(&out);
        once(&e, missing);
        once(&e, cause);
    }
}

#[cfg(feature = "host")]
mod host {
    use super::*;
    use crate::harness;

    /// A registry in a temp dir with one trained iris model and one device that never
    /// connects.
    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Host {
            let h = Host {
                dir: tempfile::tempdir().expect("temp dir"),
            };
            let iris = corpus_dir().join("datasets/iris/iris_train.csv");
            h.expect(
                &[
                    "train",
                    iris.to_str().expect("utf-8"),
                    "--target",
                    "target",
                    "--model",
                    "softmax",
                    "--name",
                    "iris",
                ],
                0,
            );
            let config = h.dir.path().join("offline.toml");
            h.expect(
                &[
                    "devices",
                    "add",
                    "offline",
                    "--group",
                    "g",
                    "--host",
                    "127.0.0.1:9",
                    "--config",
                    config.to_str().expect("utf-8"),
                ],
                0,
            );
            h
        }

        fn expect(&self, args: &[&str], code: i32) -> Output {
            let db = self.dir.path().join("reg.db");
            let mut all = vec!["--registry", db.to_str().expect("utf-8 temp path")];
            all.extend_from_slice(args);
            super::expect(host_bin(), &all, code)
        }
    }

    #[test]
    fn perch_host_usage_errors_exit_2() {
        let h = Host::new();
        for (args, says) in [
            (vec!["frobnicate"], "frobnicate"),
            (vec!["models", "list", "--target", "x"], "--target"),
            (vec!["models", "tag", "iris@1", "t", "--json"], "--json"),
            (vec!["push", "iris@1"], "--to DEVICE"),
            (vec!["models", "delete", "iris"], "--all"),
            (
                vec![
                    "train", "x.csv", "--target", "t", "--model", "mlp", "--hidden", "64,x",
                ],
                "bad --hidden \"64,x\": expected layer widths such as 64 or 64,32",
            ),
            (
                vec!["train", "x.csv", "--target", "t", "--model", "knn"],
                "knn",
            ),
        ] {
            let e = stderr(&h.expect(&args, 2));
            assert!(e.contains(says), "{args:?}: {e}");
        }
        // Nothing was done by the refused commands.
        let list = String::from_utf8(h.expect(&["models", "list"], 0).stdout).expect("utf-8");
        assert!(list.contains("iris@1"), "{list}");
    }

    #[test]
    fn push_wait_exits_3_and_names_the_device_still_pending() {
        let h = Host::new();
        let out = h.expect(
            &[
                "push", "iris@1", "--to", "offline", "--wait", "0.5", "--json",
            ],
            3,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(v["complete"], false, "{v}");
        assert_eq!(v["states"][0]["device"], "offline", "{v}");
        assert_eq!(v["states"][0]["state"], "pending", "{v}");
        let e = stderr(&out);
        assert!(e.contains("offline (pending)"), "{e}");
        // Without --wait nothing is awaited: the push is made, exit 0.
        h.expect(&["push", "iris@1", "--to", "offline"], 0);
    }

    /// `perch-host --registry DB ARGS…` with its exit status checked.
    fn host_cli(host: &harness::Host, args: &[&str], code: i32) -> Output {
        let mut all = vec!["--registry", host.db.to_str().expect("utf-8 temp path")];
        all.extend_from_slice(args);
        super::expect(host_bin(), &all, code)
    }

    #[test]
    fn waits_exit_3_on_a_refusal_or_an_unfinished_rollout_and_0_when_done() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut host = harness::Host::new(dir.path());
        host.train_wine("wine", "softmax", 0);
        let addr = host.serve(0).to_string();
        let ok = host.add_device("ok", "g", &addr, "");
        // An agent that accepts no model of this size refuses the push.
        let small = host.add_device("small", "h", &addr, "max_model_bytes = 100\n");
        let _ok = harness::Agent::start("ok", &ok, None);
        let _small = harness::Agent::start("small", &small, None);

        let out = host_cli(
            &host,
            &[
                "push", "wine@1", "--to", "ok", "--to", "small", "--wait", "60", "--json",
            ],
            3,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        let state = |d: &str| {
            v["states"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["device"] == d)
                .map(|s| s["state"].clone())
        };
        assert_eq!(state("ok"), Some("installed".into()), "{v}");
        assert_eq!(state("small"), Some("rejected".into()), "{v}");
        let e = stderr(&out);
        assert!(e.contains("small (rejected: "), "{e}");
        assert!(
            !e.contains("ok ("),
            "only the devices that did not install: {e}"
        );

        // Installed everywhere asked: 0.
        host_cli(&host, &["push", "wine@1", "--to", "ok", "--wait", "60"], 0);

        // A rollout whose canary sees no traffic does not finish within the wait.
        host.train_wine("wine", "softmax", 1);
        let out = host_cli(
            &host,
            &["rollout", "wine@2", "--group", "g", "--wait", "1", "--json"],
            3,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(v["state"], "canary", "{v}");
        let e = stderr(&out);
        assert!(e.contains("is canary, not complete"), "{e}");
    }

    #[test]
    fn json_means_json_on_every_perch_host_verb_that_prints_results() {
        let h = Host::new();
        let out_file = h.dir.path().join("iris.perch");
        let out_file = out_file.to_str().expect("utf-8");
        let onnx = corpus_dir().join("models/sk_logreg_iris/model.onnx");
        let converted = h.dir.path().join("logreg.perch");
        for args in [
            vec!["models", "list", "--json"],
            vec!["models", "show", "iris", "--json"],
            vec!["models", "diff", "iris@1", "iris@1", "--json"],
            vec!["models", "export", "iris@1", "-o", out_file, "--json"],
            vec!["devices", "--json"],
            vec!["devices", "list", "--json"],
            vec!["devices", "show", "offline", "--json"],
            vec!["alerts", "--json"],
            vec!["rollouts", "--json"],
            vec![
                "convert",
                onnx.to_str().expect("utf-8"),
                "-o",
                converted.to_str().expect("utf-8"),
                "--json",
            ],
        ] {
            let out = h.expect(&args, 0);
            let text = String::from_utf8(out.stdout).expect("utf-8");
            assert_eq!(text.lines().count(), 1, "{args:?}: one JSON line: {text}");
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"));
        }
        let config = h.dir.path().join("second.toml");
        let out = h.expect(
            &[
                "devices",
                "add",
                "second",
                "--config",
                config.to_str().expect("utf-8"),
                "--json",
            ],
            0,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["name"], "second");
    }
}
