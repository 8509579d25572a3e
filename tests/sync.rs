//! Devices and host in sync, end to end on loopback: `perch-host serve` and `perch agent`
//! processes started here, each on a port the OS picked.
//!
//! - a push to a group installs on every agent, and their HTTP API predicts what `perch
//!   run` predicts;
//! - a link cut mid-transfer resumes without resending a received chunk;
//! - an agent killed at each install step serves a working model after restarting;
//! - the host killed while agents report: nothing acknowledged lost, nothing stored twice;
//! - wrong key, tampered, unsigned and foreign-signed artifacts are refused, with the
//!   reason stored on the host;
//! - a model whose error rate jumps after activation is rolled back by the device.
#![cfg(all(feature = "host", feature = "device"))]

mod harness;

use harness::{Agent, Host, feature_rows};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn wine_test() -> std::path::PathBuf {
    harness::corpus().join("datasets/wine/wine_test.csv")
}

/// `perch run` of the exported version on the wine test features, as JSON outputs.
fn perch_run_outputs(host: &Host, version: &str) -> Value {
    let model = host
        .dir
        .join(format!("{}.perch", version.replace('@', "-")));
    host.cli(&[
        "models",
        "export",
        version,
        "--format",
        "perch",
        "-o",
        model.to_str().unwrap(),
    ]);
    let rows = feature_rows(&wine_test());
    let csv = host.dir.join("wine_features.csv");
    let text: String = rows
        .iter()
        .map(|r| r.iter().map(f64::to_string).collect::<Vec<_>>().join(",") + "\n")
        .collect();
    std::fs::write(&csv, text).unwrap();
    let out = std::process::Command::new(harness::perch_bin())
        .arg("run")
        .arg(&model)
        .arg("--input")
        .arg(&csv)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["outputs"].clone()
}

fn predict_wine(agent: &Agent) -> Value {
    let body = json!({ "inputs": feature_rows(&wine_test()) }).to_string();
    let (status, text) = agent.post("/predict", &body);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn push(host: &Host, args: &[&str]) -> u64 {
    let mut a = vec!["push"];
    a.extend_from_slice(args);
    host.cli_json(&a)["push"].as_u64().expect("push id")
}

#[test]
fn a_push_to_a_group_installs_everywhere_and_agents_predict_like_perch_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let addr = host.serve(0).to_string();
    let agents: Vec<Agent> = (1..=3)
        .map(|i| {
            let name = format!("pi-{i}");
            let config = host.add_device(&name, "lab", &addr, "");
            Agent::start(&name, &config, None)
        })
        .collect();
    // A device of another group is left alone.
    let other = host.add_device("pi-other", "field", &addr, "");
    let other = Agent::start("pi-other", &other, None);
    for a in &agents {
        a.wait_health("a session", T, |h| h["connected"] == true);
        let (status, _) = a.post("/predict", r#"{"input": [1.0]}"#);
        assert_eq!(status, 503, "no model yet");
    }
    let id = push(&host, &["wine@1", "--group", "lab"]);
    let states = host.wait_push(id, T);
    assert_eq!(states.len(), 3);
    assert!(
        states.iter().all(|(_, s, _)| s == "installed"),
        "{states:?}"
    );

    let expected = perch_run_outputs(&host, "wine@1");
    for a in &agents {
        let h = a.wait_health("the model", T, |h| h["model"]["name"] == "wine");
        assert_eq!(h["model"]["version"], "1");
        let got = predict_wine(a);
        assert_eq!(
            got["outputs"], expected,
            "{} predicts unlike perch run",
            a.proc.name
        );
        assert_eq!(got["ids"].as_array().unwrap().len(), 45);
    }
    assert_eq!(other.health()["status"], "no model");
    // The host lists the devices with their model.
    let listed = host.cli_json(&["devices"]);
    let lab: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["group"] == "lab")
        .collect();
    assert!(
        lab.iter()
            .all(|d| d["model"] == "wine" && d["version"] == "1"),
        "{listed}"
    );

    // Reports reach the host with what was served.
    let deadline = Instant::now() + T;
    loop {
        let f = host.fleet();
        let d = f.device("pi-1").unwrap().unwrap();
        let served: u32 = f
            .reports(&d)
            .unwrap()
            .iter()
            .map(|r| r.report.requests)
            .sum();
        if served >= 45 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reports of pi-1 hold {served} requests"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP proxy that forwards both ways, decodes the host's frames to note every `Chunk`
/// it forwards, and breaks the first connection after `cut_after` chunks.
struct Proxy {
    addr: std::net::SocketAddr,
    /// (connection number, chunk offset) for every chunk forwarded whole.
    chunks: Arc<Mutex<Vec<(usize, u64)>>>,
}

fn start_proxy(upstream: std::net::SocketAddr, cut_after: usize) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let seen = chunks.clone();
    std::thread::spawn(move || {
        for (n, device) in listener.incoming().flatten().enumerate() {
            let Ok(host) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut d_in, mut h_out) = (device.try_clone().unwrap(), host.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(k) = d_in.read(&mut buf) {
                    if k == 0 || h_out.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
                let _ = h_out.shutdown(std::net::Shutdown::Write);
            });
            let seen = seen.clone();
            std::thread::spawn(move || {
                let (mut h_in, mut d_out) = (host, device);
                let mut pending = Vec::new();
                let mut buf = [0u8; 8192];
                let mut forwarded = 0usize;
                'conn: while let Ok(k) = h_in.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..k]);
                    // Forward whole frames only, noting the chunks.
                    while let Ok(Some((m, used))) = perch::sync::frame::decode(&pending, 1 << 20) {
                        if d_out.write_all(&pending[..used]).is_err() {
                            break 'conn;
                        }
                        pending.drain(..used);
                        if let perch::sync::Message::Chunk { offset, .. } = m {
                            seen.lock().unwrap().push((n, offset));
                            forwarded += 1;
                            if n == 0 && forwarded == cut_after {
                                // Everything forwarded reaches the device before the FIN.
                                let _ = d_out.shutdown(std::net::Shutdown::Write);
                                std::thread::sleep(Duration::from_millis(300));
                                let _ = d_out.shutdown(std::net::Shutdown::Both);
                                let _ = h_in.shutdown(std::net::Shutdown::Both);
                                break 'conn;
                            }
                        }
                    }
                }
            });
        }
    });
    Proxy { addr, chunks }
}

/// A dense model big enough for many 64 KiB chunks (about 1.3 MB).
fn register_big_model(host: &Host) {
    use perch::graph::{DType, Graph, Layer, Metadata, Model, Node, Output, Tensor, TensorSpec};
    let (n_in, hidden) = (16usize, 20_000usize);
    let w: Vec<f32> = (0..n_in * hidden)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let w2: Vec<f32> = (0..hidden)
        .map(|i| ((i % 13) as f32 - 6.0) / 1000.0)
        .collect();
    let model = Model {
        metadata: Metadata::default(),
        graph: Graph {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DType::F32,
                shape: vec![n_in as u32],
            }],
            nodes: vec![
                Node {
                    name: "hidden".into(),
                    layer: Layer::Dense {
                        weight: Tensor::f32(vec![hidden as u32, n_in as u32], w),
                        bias: None,
                    },
                    inputs: vec![0],
                },
                Node {
                    name: "out".into(),
                    layer: Layer::Dense {
                        weight: Tensor::f32(vec![1, hidden as u32], w2),
                        bias: None,
                    },
                    inputs: vec![1],
                },
            ],
            outputs: vec![Output {
                name: "y".into(),
                value: 2,
            }],
        },
    };
    let mut reg = perch::registry::Registry::open(&host.db).unwrap();
    reg.register(
        "big",
        perch::registry::Payload::Native(Box::new(model)),
        perch::registry::VersionInfo::default(),
    )
    .unwrap();
}

#[test]
fn a_transfer_cut_midway_resumes_from_the_last_received_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    register_big_model(&host);
    let upstream = host.serve(0);
    let proxy = start_proxy(upstream, 5);
    let config = host.add_device("pi-1", "lab", &proxy.addr.to_string(), "");
    let agent = Agent::start("pi-1", &config, None);
    let id = push(&host, &["big@1", "--to", "pi-1"]);
    let states = host.wait_push(id, T);
    assert_eq!(states[0].1, "installed", "{states:?}");
    let size = host.fleet().push(id).unwrap().unwrap().size;
    let chunks = proxy.chunks.lock().unwrap().clone();
    let first: Vec<u64> = chunks.iter().filter(|c| c.0 == 0).map(|c| c.1).collect();
    assert_eq!(
        first.len(),
        5,
        "the first connection was cut after 5 chunks"
    );
    let later: Vec<&(usize, u64)> = chunks.iter().filter(|c| c.0 > 0).collect();
    assert!(!later.is_empty(), "the rest came over a new connection");
    assert_eq!(later[0].1, 5 * 64 * 1024, "resumed where the cut left it");
    let mut offsets: Vec<u64> = chunks.iter().map(|c| c.1).collect();
    let n = offsets.len();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), n, "a chunk was sent twice: {chunks:?}");
    assert_eq!(n as u64, size.div_ceil(64 * 1024), "every chunk once");
    let h = agent.wait_health("the model", T, |h| h["model"]["name"] == "big");
    assert!(h["sessions"].as_u64().unwrap() >= 2);
    let (status, body) = agent.post("/predict", &json!({"input": vec![0.5; 16]}).to_string());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn an_agent_killed_at_any_install_step_restarts_with_a_working_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    host.train_wine("wine", "forest", 2);
    let v1 = perch_run_outputs(&host, "wine@1");
    let v2 = perch_run_outputs(&host, "wine@2");
    assert_ne!(
        v1, v2,
        "the two versions must be told apart by their outputs"
    );
    let addr = host.serve(0).to_string();
    for (i, step) in [
        "after-download",
        "after-verify",
        "before-rename",
        "after-rename",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("pi-{i}");
        let config = host.add_device(&name, "lab", &addr, "");
        {
            let agent = Agent::start(&name, &config, None);
            let id = push(&host, &["wine@1", "--to", &name]);
            assert_eq!(host.wait_push(id, T)[0].1, "installed");
            agent.wait_health("v1", T, |h| h["model"]["version"] == "1");
        }
        let mut agent = Agent::start(&name, &config, Some(&format!("install:{step}")));
        let id = push(&host, &["wine@2", "--to", &name]);
        let status = agent.proc.wait_exit(T);
        assert!(!status.success(), "{step}: the failpoint stops the agent");
        assert!(
            agent
                .proc
                .log()
                .contains(&format!("failpoint install:{step}"))
        );
        drop(agent);

        // What a restart finds on disk: before the rename the old model, after it the new.
        let state: Value = serde_json::from_slice(
            &std::fs::read(host.dir.join(format!("state-{name}/state.json"))).unwrap(),
        )
        .unwrap();
        let on_disk = state["active"]["version"].as_str().unwrap().to_string();
        let want = if *step == "after-rename" { "2" } else { "1" };
        assert_eq!(on_disk, want, "{step}: active model on disk");

        // Restarted: a working model at once (the host may already have completed the
        // install, so either version, but whole).
        let agent = Agent::start(&name, &config, None);
        let h = agent.health();
        assert_eq!(h["status"], "ok", "{step}: {h}");
        let out = predict_wine(&agent);
        let version = out["version"].as_str().unwrap().to_string();
        let expected = if version == "1" { &v1 } else { &v2 };
        assert_eq!(out["outputs"], *expected, "{step}: v{version}");
        // The host offers the push again and the install completes.
        let states = host.wait_push(id, T);
        assert_eq!(states[0].1, "installed", "{step}: {states:?}");
        agent.wait_health("v2", T, |h| h["model"]["version"] == "2");
        assert_eq!(predict_wine(&agent)["outputs"], v2);
    }
}

#[test]
fn a_host_killed_while_agents_report_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let addr = host.serve(0);
    let port = addr.port();
    let names = ["pi-1", "pi-2"];
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| {
            let c = host.add_device(n, "lab", &addr.to_string(), "");
            Agent::start(n, &c, None)
        })
        .collect();
    let id = push(&host, &["wine@1", "--group", "lab"]);
    host.wait_push(id, T);
    let body = json!({ "inputs": feature_rows(&wine_test())[..3] }).to_string();
    let serve_some = |agents: &[Agent]| {
        for a in agents {
            assert_eq!(a.post("/predict", &body).0, 200);
        }
    };
    for _ in 0..5 {
        serve_some(&agents);
        std::thread::sleep(Duration::from_millis(200));
    }
    host.proc.as_mut().unwrap().kill();
    let down_at = perch::fleet::now_unix_s();
    // While the host is down the agents go on serving and queue their reports.
    for _ in 0..8 {
        serve_some(&agents);
        std::thread::sleep(Duration::from_millis(250));
    }
    for a in &agents {
        let h = a.wait_health("reports queued", T, |h| {
            h["queued_reports"].as_u64() > Some(2)
        });
        assert_eq!(h["connected"], false);
    }
    host.serve(port);
    // Let the windows of the last requests close.
    std::thread::sleep(Duration::from_millis(600));
    for a in &agents {
        a.wait_health("the queue drained", T, |h| {
            h["connected"] == true && h["queued_reports"] == 0
        });
    }
    let f = host.fleet();
    for n in names {
        let d = f.device(n).unwrap().unwrap();
        let reports = f.reports(&d).unwrap();
        let seqs: Vec<u64> = reports.iter().map(|r| r.seq).collect();
        let expected: Vec<u64> = (1..=*seqs.last().unwrap()).collect();
        assert_eq!(seqs, expected, "{n}: every report once, none missing");
        assert!(
            reports
                .iter()
                .any(|r| r.report.window_start_ms >= down_at as u64 * 1000 && r.report.requests > 0),
            "{n}: windows served while the host was down arrived"
        );
        let served: u32 = reports.iter().map(|r| r.report.requests).sum();
        assert!(served >= 13 * 3 - 3, "{n}: {served} requests reported");
        assert!(reports.iter().all(|r| r.report.dropped == 0));
    }
}

#[test]
fn wrong_keys_tampered_unsigned_and_foreign_artifacts_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let addr = host.serve(0).to_string();

    // A device with a wrong key never gets a session; the host keeps why.
    let config = host.add_device("pi-badkey", "lab", &addr, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let key_line = text.lines().find(|l| l.starts_with("key = ")).unwrap();
    std::fs::write(
        &config,
        text.replace(key_line, &format!("key = \"{}\"", "ab".repeat(32))),
    )
    .unwrap();
    let bad = Agent::start("pi-badkey", &config, None);
    let h = bad.wait_health("a refusal", T, |h| h["last_error"].is_string());
    assert!(
        h["last_error"].as_str().unwrap().contains("authentication"),
        "{h}"
    );
    let events = host.fleet().events(Some("pi-badkey"), 10).unwrap();
    assert!(events.iter().any(|e| e.kind == "auth-failed"), "{events:?}");
    drop(bad);

    let config = host.add_device("pi-1", "lab", &addr, "");
    let refused = |host: &Host, id: u64, needle: &str| {
        let states = host.wait_push(id, T);
        assert_eq!(states[0].1, "rejected", "{states:?}");
        let reason = states[0].2.clone().unwrap_or_default();
        assert!(
            reason.contains(needle),
            "reason {reason:?} lacks {needle:?}"
        );
        let shown = host.cli_json(&["devices", "show", "pi-1"]);
        assert!(
            shown["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "rejected" && e["detail"].as_str().unwrap().contains(needle)),
            "{shown}"
        );
    };

    // Tampered after signing: the bytes no longer match what the host offers.
    let id = push(&host, &["wine@1", "--to", "pi-1"]);
    let path = host.fleet().push(id).unwrap().unwrap().path;
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let agent = Agent::start("pi-1", &config, None);
    refused(&host, id, "SHA-256");

    // Tampered and re-announced with the new digest: the signature catches it.
    let mut f = host.fleet();
    let mut body = bytes.clone();
    // Fix the payload digest so the file is a valid artifact again, signature stale.
    let payload_len = u64::from_le_bytes(body[12..20].try_into().unwrap()) as usize;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&body[20..20 + payload_len]);
    body[20 + payload_len..52 + payload_len].copy_from_slice(&digest);
    let p = f.create_push("wine", "1", &body, None).unwrap();
    let d = f.select(&["pi-1".to_string()], None).unwrap();
    f.assign(p.id, &d).unwrap();
    refused(&host, p.id, "signature does not verify");

    // Unsigned.
    host.cli(&["models", "export", "wine@1", "-o", "wine-1.perch"]);
    let model = perch::artifact::read(&host.dir.join("wine-1.perch"))
        .unwrap()
        .model;
    let unsigned = perch::artifact::encode(&model).unwrap();
    let p = f.create_push("wine", "1", &unsigned, None).unwrap();
    f.assign(p.id, &d).unwrap();
    refused(&host, p.id, "not signed");

    // Signed by another host.
    let other = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let foreign = perch::artifact::sign(&unsigned, &other).unwrap();
    let p = f.create_push("wine", "1", &foreign, None).unwrap();
    f.assign(p.id, &d).unwrap();
    refused(&host, p.id, "signature does not verify");

    // Through all of it the device stayed without a model, and a good push still works.
    assert_eq!(agent.health()["status"], "no model");
    let id = push(&host, &["wine@1", "--to", "pi-1"]);
    assert_eq!(host.wait_push(id, T)[0].1, "installed");
}

#[test]
fn a_model_whose_error_rate_jumps_is_rolled_back_by_the_device() {
    use perch::graph::sections::{CANARY, Canary, CanaryValues};
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    // wine@2: the same shape, but weights so large that real inputs overflow to infinity,
    // while its canary passes.
    host.cli(&["models", "export", "wine@1", "-o", "good.perch"]);
    let mut bad = perch::artifact::read(&host.dir.join("good.perch"))
        .unwrap()
        .model;
    for node in &mut bad.graph.nodes {
        if let perch::graph::Layer::Dense { weight, .. } = &mut node.layer
            && let perch::graph::TensorData::F32(w) = &mut weight.data
        {
            w.iter_mut().for_each(|v| *v = 3.0e38);
        }
    }
    // The canary input reaches the dense layer as zeros (the training mean where the model
    // standardizes first), so its outputs are finite.
    let n = bad.graph.inputs[0].sample_len();
    let mean = bad
        .graph
        .nodes
        .iter()
        .find_map(|n| match &n.layer {
            perch::graph::Layer::Standardize { offset, .. } => Some(offset.clone()),
            _ => None,
        })
        .unwrap_or_else(|| vec![0.0; n]);
    let mut probe = perch::runtime::Model::from_native(&bad).unwrap();
    let canary = perch::runtime::record_canary(&mut probe, &mean, 1e-4).unwrap();
    assert!(canary.outputs.iter().all(|o| match o {
        CanaryValues::F32(v) => v.iter().all(|x| x.is_finite()),
        CanaryValues::I64(_) => true,
    }));
    bad.metadata.set_section(CANARY, &canary).unwrap();
    let _: Option<Canary> = bad.metadata.section(CANARY).unwrap();
    let mut reg = perch::registry::Registry::open(&host.db).unwrap();
    reg.register(
        "wine",
        perch::registry::Payload::Native(Box::new(bad)),
        perch::registry::VersionInfo::default(),
    )
    .unwrap();
    drop(reg);

    let addr = host.serve(0).to_string();
    let config = host.add_device("pi-1", "lab", &addr, "rollback_min_requests = 10\n");
    let agent = Agent::start("pi-1", &config, None);
    let id = push(&host, &["wine@1", "--to", "pi-1"]);
    assert_eq!(host.wait_push(id, T)[0].1, "installed");
    let v1 = predict_wine(&agent)["outputs"].clone();
    let id = push(&host, &["wine@2", "--to", "pi-1"]);
    assert_eq!(host.wait_push(id, T)[0].1, "installed");
    agent.wait_health("v2", T, |h| h["model"]["version"] == "2");
    let row = json!({ "input": feature_rows(&wine_test())[0] }).to_string();
    let mut failures = 0;
    for _ in 0..10 {
        let (status, body) = agent.post("/predict", &row);
        if status == 422 {
            failures += 1;
            assert!(body.contains("not finite"), "{body}");
        }
    }
    assert_eq!(failures, 10, "every request fails on the broken model");
    agent.wait_health("back on v1", T, |h| h["model"]["version"] == "1");
    assert_eq!(predict_wine(&agent)["outputs"], v1);
    // The host hears of it and stops offering the model.
    let deadline = Instant::now() + T;
    loop {
        let states = host.fleet().push_states(id).unwrap();
        if states[0].1 == "rolled-back" {
            assert!(
                states[0].2.as_deref().unwrap_or("").contains("error rate"),
                "{states:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{states:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = host.fleet().events(Some("pi-1"), 20).unwrap();
    assert!(events.iter().any(|e| e.kind == "rolled-back"), "{events:?}");
    // A second offer of the same model is refused at once.
    let again = push(&host, &["wine@2", "--to", "pi-1"]);
    let states = host.wait_push(again, T);
    assert_eq!(states[0].1, "rejected", "{states:?}");
    assert!(
        states[0].2.as_deref().unwrap_or("").contains("went back"),
        "{states:?}"
    );
}
