//! Hostile input, each test with its own processes on loopback (issue 13):
//! - model files built to exhaust memory, and mutated ONNX files, end in exit 1 with a
//!   message under a 2 GiB address-space cap;
//! - slow HTTP clients in every slot of the agent's API and of the dashboard leave a real
//!   client served;
//! - the agent's API refuses foreign Host and Origin headers, POSTs that are not JSON,
//!   requests without the configured token, and batches over its limit;
//! - a local client sending inputs that no model answers cannot make the agent go back
//!   from a model;
//! - SIGTERM stops the agent with its metrics window queued, and the host cleanly.
use crate::harness;

use harness::{Agent, Host, Proc, feature_rows};
use perch::graph::{DType, Graph, Layer, Metadata, Model, Node, Output, Tensor, TensorSpec};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
/// The address-space cap the model tests run under, KiB (2 GiB).
const ADDRESS_SPACE_KIB: u64 = 2 << 20;

fn graph(input: Vec<u32>, layers: Vec<Layer>) -> Model {
    let nodes: Vec<Node> = layers
        .into_iter()
        .enumerate()
        .map(|(i, layer)| Node {
            name: format!("n{i}"),
            layer,
            inputs: vec![i as u32],
        })
        .collect();
    let last = nodes.len() as u32;
    Model {
        metadata: Metadata::default(),
        graph: Graph {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DType::F32,
                shape: input,
            }],
            nodes,
            outputs: vec![Output {
                name: "y".into(),
                value: last,
            }],
        },
    }
}

/// Writes `model` as an artifact without the checks `artifact::encode` makes (a hostile
/// file is not made by perch).
fn write_raw(path: &Path, model: &Model) -> usize {
    use sha2::{Digest, Sha256};
    let payload = postcard::to_stdvec(model).unwrap();
    let mut out = perch::artifact::MAGIC.to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&[0; 64]);
    std::fs::write(path, &out).unwrap();
    out.len()
}

/// Runs `perch ARGS` under the 2 GiB address-space cap: exit code and stderr.
fn perch_capped(args: &[&str]) -> (Option<i32>, String) {
    perch_capped_at(ADDRESS_SPACE_KIB, args)
}

/// Runs `perch ARGS` under an address-space cap of `cap_kib` KiB: exit code and stderr.
fn perch_capped_at(cap_kib: u64, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {cap_kib} && exec \"$0\" \"$@\""))
        .arg(harness::perch_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(args: &[&str], reason: &str) {
    assert_refused_at(ADDRESS_SPACE_KIB, args, reason)
}

fn assert_refused_at(cap_kib: u64, args: &[&str], reason: &str) {
    let (code, err) = perch_capped_at(cap_kib, args);
    assert_eq!(code, Some(1), "perch {args:?}: {err}");
    assert!(err.contains("perch: error:"), "{err}");
    assert!(err.contains(reason), "expected {reason:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("memory allocation of"), "{err}");
}

#[test]
fn model_bombs_exit_1_with_a_message_under_a_2_gib_cap() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.csv");
    std::fs::write(&input, "1\n").unwrap();
    let input = input.to_str().unwrap();

    // Every value at the per-value cap (2^28 floats, 1 GiB): 21 GiB in all. Refused when the
    // graph is read, before any budget: the sum of a graph's values is capped at 2^28
    // elements per sample whatever --max-memory says.
    let total = dir.path().join("total.perch");
    let size = write_raw(&total, &graph(vec![1, 16384, 16384], vec![Layer::Relu; 20]));
    assert!(size < 400, "{size} bytes");
    let total = total.to_str().unwrap();
    for verb in [
        &["run", total, "--input", input][..],
        &["info", total],
        &["run", total, "--input", input, "--max-memory", "64G"],
    ] {
        assert_refused(verb, "elements per sample (limit 268435456)");
    }

    // Padding far beyond a 1×1 kernel: a tiny input padded to 16383×16383.
    let padded = dir.path().join("padded.perch");
    let conv = Layer::Conv2d {
        weight: Tensor::f32(vec![1, 1, 1, 1], vec![1.0]),
        bias: None,
        stride: [1, 1],
        padding: [8191; 4],
        dilation: [1, 1],
        groups: 1,
    };
    let size = write_raw(&padded, &graph(vec![1, 1, 1], vec![conv; 3]));
    assert!(size < 400, "{size} bytes");
    let padded = padded.to_str().unwrap();
    assert_refused(
        &["run", padded, "--input", input, "--max-memory", "64G"],
        "reaches beyond the kernel's extent",
    );

    // One input of 268,402,689 floats (1,073,610,756 bytes), the size that aborted: over the
    // graph cap with its output.
    let wide = dir.path().join("wide.perch");
    write_raw(&wide, &graph(vec![268_402_689], vec![Layer::Sigmoid]));
    let wide = wide.to_str().unwrap();
    assert_refused(&["info", wide], "elements per sample (limit 268435456)");
    // Half of it (input and output 537 MB each) passes the graph cap and the default
    // budget's arithmetic when raised; under a 1 GiB address space its arena cannot be
    // allocated, which is an error, not an abort.
    let half = dir.path().join("half.perch");
    write_raw(&half, &graph(vec![134_000_000], vec![Layer::Sigmoid]));
    let half = half.to_str().unwrap();
    assert_refused_at(
        1 << 20,
        &["info", half, "--max-memory", "8G"],
        "out of memory: cannot allocate",
    );
}

#[test]
fn perch_run_splits_its_input_into_batches_that_fit_max_memory() {
    let dir = tempfile::tempdir().unwrap();
    let model = harness::corpus_dir().join("models/tf_mlp_digits/model.onnx");
    let input = harness::corpus_dir().join("models/tf_mlp_digits/input.npy");
    let run = |extra: &[&str]| {
        let out = Command::new(harness::perch_bin())
            .arg("run")
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .args(["--format", "json"])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (out.status.code(), out.stdout, out.stderr)
    };
    let info = Command::new(harness::perch_bin())
        .arg("info")
        .arg(&model)
        .arg("--json")
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let memory = &info["memory"];
    let (peak, per_sample) = (
        memory["peak_bytes_batch_1"].as_u64().unwrap(),
        memory["per_sample_bytes"].as_u64().unwrap(),
    );
    let (code, whole, err) = run(&[]);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&err));
    // Enough for the weights and four samples' buffers, not for the whole input at once.
    let budget = (peak + 3 * per_sample).to_string();
    let (code, split, err) = run(&["--max-memory", &budget]);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&err));
    assert_eq!(split, whole, "the same outputs, batch by batch");
    let (code, _, err) = run(&["--max-memory", &budget, "--batch", "5"]);
    let err = String::from_utf8_lossy(&err);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--batch 5"), "{err}");
    let (code, _, err) = run(&["--max-memory", "1K"]);
    let err = String::from_utf8_lossy(&err);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the limit is 1024 bytes"), "{err}");
}

/// Offsets of `sk_logreg_iris/model.onnx` where flipping every bit of one byte made
/// tract panic (`model.rs:187 no entry found for key`, exit 101) in `perch info`.
const ONNX_PANICS: [usize; 2] = [329, 451];

#[test]
fn mutated_onnx_files_exit_1_with_a_message_under_a_2_gib_cap() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read(harness::corpus_dir().join("models/sk_logreg_iris/model.onnx")).unwrap();
    // The mutations known to panic, then a sweep of every 7th byte.
    let offsets = ONNX_PANICS
        .iter()
        .copied()
        .chain((0..original.len()).step_by(7));
    for offset in offsets {
        let mut bytes = original.clone();
        bytes[offset] ^= 0xff;
        let path = dir.path().join("mutated.onnx");
        std::fs::write(&path, &bytes).unwrap();
        let (code, err) = perch_capped(&["info", path.to_str().unwrap()]);
        match code {
            Some(0) => {}
            Some(1) => assert!(err.contains("perch: error:"), "offset {offset}: {err}"),
            other => panic!("offset {offset}: exit {other:?}: {err}"),
        }
    }
}

/// An agent with no host to reach (its link retries in the background), `extra`
/// appended to its configuration.
fn lone_agent(dir: &Path, extra: &str) -> Agent {
    let config = dir.join("agent.toml");
    let base_point = format!("58{}", "66".repeat(31));
    let mut text = perch::agent::config::render("pi-test", &[7; 32], "127.0.0.1:9", &[0; 32])
        .replace(&"00".repeat(32), &base_point)
        .replace("127.0.0.1:7471", "127.0.0.1:0");
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    Agent::start("agent", &config, None)
}

/// One request with the given extra header lines; status and body.
fn request(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[test]
fn the_api_refuses_foreign_hosts_origins_non_json_posts_and_missing_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let agent = lone_agent(dir.path(), "");
    let a = agent.http;
    let get = |extra: &str| request(a, &format!("GET /metrics HTTP/1.1\r\n{extra}"), "");
    assert_eq!(get(&format!("Host: {a}")).0, 200);
    assert_eq!(get("Host: localhost:7471").0, 200);
    // A page whose name was rebound to 127.0.0.1 sends its own name.
    let (status, body) = get("Host: attacker.example:7471");
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("http_hosts"), "{body}");
    assert_eq!(get("").0, 400, "no Host");
    let (status, body) = get(&format!("Host: {a}\r\nOrigin: http://attacker.example"));
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        get(&format!("Host: {a}\r\nOrigin: http://127.0.0.1:3000")).0,
        200
    );
    // A cross-site form or fetch without preflight can only send text/plain and the like.
    let body = r#"{"input": [1, 2]}"#;
    for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let head = format!("POST /predict HTTP/1.1\r\nHost: {a}\r\nContent-Type: {ct}");
        let (status, text) = request(a, &head, body);
        assert_eq!(status, 415, "{ct}: {text}");
    }
    let head = format!("POST /predict HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json");
    assert_eq!(
        request(a, &head, body).0,
        503,
        "reaches the handler: no model"
    );
    drop(agent);

    // With a token, every request must carry it.
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token-0123456789";
    let agent = lone_agent(
        dir.path(),
        &format!("http_token = \"{token}\"\nhttp_hosts = [\"pi-kitchen.local\"]\n"),
    );
    let a = agent.http;
    let get = |extra: &str| request(a, &format!("GET /health HTTP/1.1\r\nHost: {a}{extra}"), "");
    let (status, body) = get("");
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        get("\r\nAuthorization: Bearer wrong-token-0123456789").0,
        401
    );
    assert_eq!(get(&format!("\r\nAuthorization: Basic {token}")).0, 401);
    // 503: no model yet, but past the checks.
    assert_eq!(get(&format!("\r\nAuthorization: Bearer {token}")).0, 503);
    let named = format!(
        "GET /health HTTP/1.1\r\nHost: pi-kitchen.local:7471\r\nAuthorization: Bearer {token}"
    );
    assert_eq!(request(a, &named, "").0, 503, "a name in http_hosts");
}

#[test]
fn an_api_beyond_loopback_without_a_token_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let base_point = format!("58{}", "66".repeat(31));
    let text = perch::agent::config::render("pi-test", &[7; 32], "127.0.0.1:9", &[0; 32])
        .replace(&"00".repeat(32), &base_point)
        .replace("127.0.0.1:7471", "0.0.0.0:0");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(harness::perch_bin())
        .args(["agent", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("set http_token"), "{err}");
}

/// Clients each sending a request head one byte every 200 ms, until `stop`.
fn slowloris(
    addr: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut head = b"GET / HTTP/1.1\r\nX-Slow: "
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(b'a'));
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    // Reconnect whenever the server closes the connection.
                    while !stop.load(Ordering::SeqCst) {
                        let byte = [head.next().unwrap_or(b'a')];
                        if s.write_all(&byte).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            })
        })
        .collect()
}

/// A real client's GETs of `path` while `clients` slow ones hold (and retake) every slot.
fn served_under_slowloris(addr: SocketAddr, path: &str, expect: u16) {
    let stop = Arc::new(AtomicBool::new(false));
    let slow = slowloris(addr, 100, &stop);
    std::thread::sleep(Duration::from_secs(2));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = request(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}"), "");
        worst = worst.max(started.elapsed());
        assert_eq!(status, expect, "{body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    for t in slow {
        let _ = t.join();
    }
    eprintln!("{path}: slowest of 5 answers under 100 slow clients: {worst:?}");
    assert!(worst < Duration::from_secs(5), "{worst:?}");
}

#[test]
fn slow_clients_leave_the_agents_api_and_the_dashboard_serving() {
    let dir = tempfile::tempdir().unwrap();
    let agent = lone_agent(dir.path(), "");
    served_under_slowloris(agent.http, "/metrics", 200);
    drop(agent);

    let mut host = Host::new(dir.path());
    host.serve(0);
    let line = host
        .proc
        .as_mut()
        .unwrap()
        .wait_line("dashboard on http://", T);
    let dashboard: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|a| a.trim().trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    served_under_slowloris(dashboard, "/", 200);
}

fn push(host: &Host, args: &[&str]) -> u64 {
    let mut a = vec!["push"];
    a.extend_from_slice(args);
    host.cli_json(&a)["push"].as_u64().expect("push id")
}

/// A host serving wine@1 and wine@2 (both sound) and an agent that installed 1 then 2.
fn fleet_on_v2(dir: &Path, extra: &str) -> (Host, Agent) {
    let mut host = Host::new(dir);
    host.train_wine("wine", "logistic", 1);
    host.train_wine("wine", "logistic", 2);
    let addr = host.serve(0).to_string();
    let config = host.add_device("pi-1", "lab", &addr, extra);
    let agent = Agent::start("pi-1", &config, None);
    for v in ["wine@1", "wine@2"] {
        let id = push(&host, &[v, "--to", "pi-1"]);
        assert_eq!(host.wait_push(id, T)[0].1, "installed");
    }
    agent.wait_health("v2", T, |h| h["model"]["version"] == "2");
    (host, agent)
}

#[test]
fn inputs_no_model_answers_do_not_make_the_agent_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let (host, agent) = fleet_on_v2(dir.path(), "rollback_min_requests = 10\n");
    let width = feature_rows(&harness::corpus_dir().join("datasets/wine/wine_test.csv"))[0].len();
    let extreme: Vec<f64> = (0..width)
        .map(|i| if i % 2 == 0 { 3.0e38 } else { -3.0e38 })
        .collect();
    let body = json!({ "input": extreme }).to_string();
    let mut out_of_range = 0;
    for _ in 0..40 {
        let (status, text) = agent.post("/predict", &body);
        assert!(status == 200 || status == 422, "{status}: {text}");
        out_of_range += usize::from(status == 422);
    }
    assert!(
        out_of_range >= 10,
        "only {out_of_range} of 40 were out of range"
    );
    agent
        .proc
        .lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("not going back"))
        .cloned()
        .unwrap_or_else(|| panic!("no decision logged:\n{}", agent.proc.log()));
    assert_eq!(agent.health()["model"]["version"], "2");
    let row = json!({ "input": feature_rows(&harness::corpus_dir().join("datasets/wine/wine_test.csv"))[0] });
    let (status, text) = agent.post("/predict", &row.to_string());
    assert_eq!(status, 200, "{text}");
    let events = host.fleet().events(Some("pi-1"), 50).unwrap();
    assert!(
        !events.iter().any(|e| e.kind == "rolled-back"),
        "{events:?}"
    );
}

#[test]
fn oversized_batches_are_refused_and_large_ones_give_their_buffers_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_host, agent) = fleet_on_v2(dir.path(), "max_batch = 300\n");
    let rows = feature_rows(&harness::corpus_dir().join("datasets/wine/wine_test.csv"));
    let many: Vec<&Vec<f64>> = rows.iter().cycle().take(301).collect();
    let (status, text) = agent.post("/predict", &json!({ "inputs": many }).to_string());
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("at most 300 samples"), "{text}");
    let (status, text) = agent.post("/predict", &json!({ "inputs": &many[..300] }).to_string());
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["ids"]
            .as_array()
            .unwrap()
            .len(),
        300
    );
}

/// Waits for `needle` in the stderr of a process that has exited (its reader may lag).
fn wait_logged(proc: &Proc, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(proc: &Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_queues_the_agents_window_and_stops_the_host_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut host, mut agent) = fleet_on_v2(dir.path(), "");
    // Long windows from now on: only the stop can close the one that is open.
    let config: PathBuf = agent.config.clone();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("report_interval_s = 0.3", "report_interval_s = 3600");
    std::fs::write(&config, text).unwrap();
    sigterm(&agent.proc);
    assert!(agent.proc.wait_exit(T).success(), "{}", agent.proc.log());
    let mut host_proc = host.proc.take().unwrap();
    sigterm(&host_proc);
    let status = host_proc.wait_exit(T);
    assert!(status.success(), "{}", host_proc.log());
    wait_logged(&host_proc, "perch-host: stopped");

    // Host down: what the agent queues from now on stays queued.
    let mut agent = Agent::start("pi-1", &config, None);
    let row = json!({ "input": feature_rows(&harness::corpus_dir().join("datasets/wine/wine_test.csv"))[0] });
    for _ in 0..5 {
        assert_eq!(agent.post("/predict", &row.to_string()).0, 200);
    }
    let before = agent.health()["queued_reports"].as_u64().unwrap();
    sigterm(&agent.proc);
    assert!(agent.proc.wait_exit(T).success(), "{}", agent.proc.log());
    wait_logged(&agent.proc, "agent stopped");
    let agent = Agent::start("pi-1", &config, None);
    let after = agent.health()["queued_reports"].as_u64().unwrap();
    assert_eq!(after, before + 1, "the open window was queued at the stop");
}
