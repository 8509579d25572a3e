//! The monitoring loop end to end, host and agents as processes on loopback: quality-gated
//! rollouts (a candidate that disagrees with the current model is stopped at the canary
//! gate, so is one many times slower, while two threads keep this machine's cores busy; a
//! promoted model whose feedback accuracy drops is rolled back).
use crate::harness;

use harness::{Agent, Host, feature_rows};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn wine_test() -> std::path::PathBuf {
    harness::corpus_dir().join("datasets/wine/wine_test.csv")
}

fn wine_labels() -> Vec<f64> {
    let mut r = csv::Reader::from_path(wine_test()).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            rec[rec.len() - 1].parse().unwrap()
        })
        .collect()
}

/// Sends the wine test rows to `agent` and, when `label` says so, feedback for each.
fn traffic(agent: &Agent, label: Option<&dyn Fn(usize, i64) -> f64>) {
    let body = json!({ "inputs": feature_rows(&wine_test()) }).to_string();
    let (status, text) = agent.post("/predict", &body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    if let Some(label) = label {
        let ids = v["ids"].as_array().unwrap();
        let predicted = v["outputs"]["label"].as_array().unwrap();
        let items: Vec<Value> = ids
            .iter()
            .zip(predicted)
            .enumerate()
            .map(|(i, (id, p))| json!({"id": id, "label": label(i, p.as_i64().unwrap())}))
            .collect();
        let (status, text) = agent.post("/feedback", &json!({ "feedback": items }).to_string());
        assert_eq!(status, 200, "{text}");
    }
}

fn rollout_state(host: &Host, id: i64) -> perch::fleet::rollout::Rollout {
    host.fleet().rollout(id).unwrap().expect("rollout exists")
}

/// Keeps traffic flowing to `agents` until rollout `id` leaves `state`.
fn drive_until_not(
    host: &Host,
    agents: &[Agent],
    id: i64,
    state: &str,
    label: Option<&dyn Fn(usize, i64) -> f64>,
) -> perch::fleet::rollout::Rollout {
    let deadline = Instant::now() + T;
    loop {
        for a in agents {
            traffic(a, label);
        }
        let r = rollout_state(host, id);
        if r.state != state {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} still {state}: {r:?}\nhost log:\n{}",
            host.proc
                .as_ref()
                .map(harness::Proc::log)
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A copy of the wine training CSV with the labels shuffled (a model trained on it
/// disagrees with a real one).
fn shuffled_wine(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(harness::corpus_dir().join("datasets/wine/wine_train.csv"))
        .unwrap();
    let mut lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let n = lines.len();
    let labels: Vec<String> = (1..n)
        .map(|i| lines[1 + (i * 37) % (n - 1)].last().unwrap().clone())
        .collect();
    for (i, l) in labels.into_iter().enumerate() {
        *lines[i + 1].last_mut().unwrap() = l;
    }
    let out = dir.join("wine_shuffled.csv");
    let body: String = lines.iter().map(|l| l.join(",") + "\n").collect();
    std::fs::write(&out, body).unwrap();
    out
}

fn start_fleet(host: &mut Host, n: usize) -> Vec<Agent> {
    let addr = host.serve(0).to_string();
    let agents: Vec<Agent> = (1..=n)
        .map(|i| {
            let name = format!("pi-{i}");
            let config = host.add_device(&name, "lab", &addr, "");
            Agent::start(&name, &config, None)
        })
        .collect();
    let id = host.cli_json(&["push", "wine@1", "--group", "lab"])["push"]
        .as_u64()
        .unwrap();
    let states = host.wait_push(id, T);
    assert!(
        states.iter().all(|(_, s, _)| s == "installed"),
        "{states:?}"
    );
    agents
}

#[test]
fn a_candidate_that_disagrees_is_stopped_at_the_canary_gate() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let shuffled = shuffled_wine(dir.path());
    host.cli(&[
        "train",
        shuffled.to_str().unwrap(),
        "--target",
        "target",
        "--model",
        "logistic",
        "--name",
        "wine",
    ]);
    let agents = start_fleet(&mut host, 2);
    let v = host.cli_json(&[
        "rollout",
        "wine@2",
        "--group",
        "lab",
        "--canary",
        "1",
        "--min-shadow-requests",
        "90",
    ]);
    let id = v["rollout"].as_i64().unwrap();
    assert_eq!(v["previous"], "wine@1");
    let canary = v["canaries"][0].as_str().unwrap().to_string();
    let ca = agents.iter().find(|a| a.proc.name == canary).unwrap();
    ca.wait_health("the shadow", T, |h| h["shadow"]["version"] == "2");
    // The app keeps getting wine@1's answers while the shadow runs.
    let (_, body) = ca.post(
        "/predict",
        &json!({"input": feature_rows(&wine_test())[0]}).to_string(),
    );
    assert!(body.contains("\"version\":\"1\""), "{body}");
    let r = drive_until_not(&host, &agents, id, "canary", None);
    assert_eq!(r.state, "aborted", "{r:?}");
    let reason = r.reason.unwrap_or_default();
    assert!(reason.contains("agreement"), "{reason}");
    let agreement = r.results["shadow"]["agreed"].as_f64().unwrap()
        / r.results["shadow"]["requests"].as_f64().unwrap();
    assert!(agreement < 0.9, "{agreement}");
    // Nobody runs the candidate; the canary drops its shadow.
    ca.wait_health("no shadow", T, |h| h["shadow"].is_null());
    for a in &agents {
        assert_eq!(a.health()["model"]["version"], "1");
    }
    let listed = host.cli_json(&["rollouts", "--all"]);
    assert_eq!(listed[0]["state"], "aborted", "{listed}");
}

#[test]
fn a_promoted_model_whose_feedback_accuracy_drops_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    // A sibling of the same size and speed, regularized differently: it passes the gate.
    let data = harness::corpus_dir().join("datasets/wine/wine_train.csv");
    host.cli(&[
        "train",
        data.to_str().unwrap(),
        "--target",
        "target",
        "--model",
        "logistic",
        "--C",
        "0.3",
        "--name",
        "wine",
    ]);
    let agents = start_fleet(&mut host, 2);
    let truth = wine_labels();
    let honest = |i: usize, _p: i64| truth[i];
    // Feedback on the current model first: its accuracy is the baseline.
    for _ in 0..2 {
        for a in &agents {
            traffic(a, Some(&honest));
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    let v = host.cli_json(&[
        "rollout",
        "wine@2",
        "--group",
        "lab",
        "--min-shadow-requests",
        "90",
        "--watch",
        "600",
    ]);
    let id = v["rollout"].as_i64().unwrap();
    let base = v["baseline_accuracy"].as_f64().unwrap();
    assert!(base > 0.9, "baseline {base}");
    let r = drive_until_not(&host, &agents, id, "canary", None);
    assert_eq!(r.state, "promoted", "{r:?}");
    for a in &agents {
        a.wait_health("the candidate", T, |h| h["model"]["version"] == "2");
    }
    // The world changed: every label now says the model is wrong.
    let wrong = |_i: usize, p: i64| ((p + 1) % 3) as f64;
    let r = drive_until_not(&host, &agents, id, "promoted", Some(&wrong));
    assert_eq!(r.state, "rolled-back", "{r:?}");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or("")
            .contains("feedback accuracy"),
        "{r:?}"
    );
    for a in &agents {
        a.wait_health("back on v1", T, |h| h["model"]["version"] == "1");
    }
    let events = host.fleet().events(None, 100).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "rollout" && e.detail.contains("rolled-back")),
        "{events:?}"
    );
}

/// Two threads spinning until dropped: a busy machine.
struct Hogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start() -> Hogs {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..2u64)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut v = i;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        v = std::hint::black_box(v.wrapping_mul(6_364_136_223_846_793_005) + 1);
                    }
                })
            })
            .collect();
        Hogs { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn on_a_busy_machine_a_sibling_is_promoted_and_a_much_slower_candidate_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let data = harness::corpus_dir().join("datasets/wine/wine_train.csv");
    let data = data.to_str().unwrap();
    // wine@2: a sibling of the same size and speed. wine@3: an MLP with 2,048 hidden units,
    // hundreds of times the work per sample of a 13-feature logistic regression.
    host.cli(&[
        "train", data, "--target", "target", "--model", "logistic", "--C", "0.3", "--name", "wine",
    ]);
    host.cli(&[
        "train", data, "--target", "target", "--model", "mlp", "--hidden", "2048", "--scale",
        "standard", "--epochs", "5", "--name", "wine",
    ]);
    let agents = start_fleet(&mut host, 1);
    let _hogs = Hogs::start();
    let v = host.cli_json(&["rollout", "wine@2", "--group", "lab", "--watch", "1"]);
    let id = v["rollout"].as_i64().unwrap();
    let r = drive_until_not(&host, &agents, id, "canary", None);
    assert_eq!(r.state, "promoted", "{r:?}");
    let detail = r.reason.unwrap_or_default();
    eprintln!("sibling: {detail}");
    assert!(detail.contains("median latency"), "{detail}");
    let r = drive_until_not(&host, &agents, id, "promoted", None);
    assert_eq!(r.state, "complete", "{r:?}");

    // The MLP: judged on latency only (its answers may differ from a logistic model's, and
    // its heap is 30 times larger).
    let v = host.cli_json(&[
        "rollout",
        "wine@3",
        "--group",
        "lab",
        "--min-agreement",
        "0",
        "--max-memory-ratio",
        "1000",
    ]);
    let id = v["rollout"].as_i64().unwrap();
    let r = drive_until_not(&host, &agents, id, "canary", None);
    assert_eq!(r.state, "aborted", "{r:?}");
    let reason = r.reason.unwrap_or_default();
    eprintln!("MLP: {reason}");
    assert!(
        reason.contains("median latency") && reason.contains("windows more than 3.00x"),
        "{reason}"
    );
    assert_eq!(agents[0].health()["model"]["version"], "2");
}
