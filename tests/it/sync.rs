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
use crate::harness;

use harness::{Agent, Host, feature_rows};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn wine_test() -> std::path::PathBuf {
    harness::corpus_dir().join("datasets/wine/wine_test.csv")
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

/// Waits until the host stored an event of `kind` for `device` whose detail has `needle`.
fn wait_for_event(host: &Host, device: &str, kind: &str, needle: &str) -> perch::fleet::Event {
    let deadline = Instant::now() + T;
    loop {
        let events = host.fleet().events(Some(device), 100).unwrap();
        if let Some(e) = events
            .iter()
            .find(|e| e.kind == kind && e.detail.contains(needle))
        {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event with {needle:?} for {device}: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// What a proxy does with a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    Forward,
    /// Forward it with one bit of its last byte flipped.
    Flip,
    /// Forward it, then cut the connection.
    Cut,
}

/// Which way a frame goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ToDevice,
    ToHost,
}

/// Splits one direction of a session into frames: the first `plain` frames (the handshake:
/// Challenge to the device; Hello and Auth to the host) end in a CRC, every later one is
/// sealed (length, ciphertext, tag).
struct Splitter {
    pending: Vec<u8>,
    plain: usize,
    index: usize,
}

impl Splitter {
    fn next(&mut self) -> Option<Vec<u8>> {
        let head = self.pending.get(..4)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let total = if self.index < self.plain {
            4 + len + 4
        } else {
            4 + len
        };
        if self.pending.len() < total {
            return None;
        }
        self.index += 1;
        Some(self.pending.drain(..total).collect())
    }
}

/// A TCP proxy between devices and `upstream`: splits both directions into frames and asks
/// `judge(connection, direction, frame index, frame length)` what to do with each.
fn start_proxy(
    upstream: std::net::SocketAddr,
    judge: impl Fn(usize, Dir, usize, usize) -> Act + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let judge = Arc::new(judge);
    std::thread::spawn(move || {
        for (n, device) in listener.incoming().flatten().enumerate() {
            let Ok(host) = TcpStream::connect(upstream) else {
                continue;
            };
            let pipes = [
                (
                    device.try_clone().unwrap(),
                    host.try_clone().unwrap(),
                    Dir::ToHost,
                    2,
                ),
                (host, device, Dir::ToDevice, 1),
            ];
            for (mut from, mut to, dir, plain) in pipes {
                let judge = judge.clone();
                std::thread::spawn(move || {
                    let mut split = Splitter {
                        pending: Vec::new(),
                        plain,
                        index: 0,
                    };
                    let mut buf = [0u8; 8192];
                    'conn: while let Ok(k) = from.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        split.pending.extend_from_slice(&buf[..k]);
                        while let Some(mut frame) = split.next() {
                            let act = judge(n, dir, split.index - 1, frame.len());
                            if act == Act::Flip {
                                let last = frame.len() - 1;
                                frame[last] ^= 0x01;
                            }
                            if to.write_all(&frame).is_err() {
                                break 'conn;
                            }
                            if act == Act::Cut {
                                // Everything forwarded reaches the peer before the FIN.
                                let _ = to.shutdown(std::net::Shutdown::Write);
                                std::thread::sleep(Duration::from_millis(300));
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                break 'conn;
                            }
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    addr
}

/// Whether a sealed frame of `len` bytes is a `Chunk` (the only large frames to a device).
fn is_chunk(len: usize) -> bool {
    len > 16 * 1024
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
    // (connection, sealed frame length) of every chunk forwarded; the first connection is
    // cut after 5 chunks.
    let chunks = Arc::new(Mutex::new(Vec::<(usize, usize)>::new()));
    let seen = chunks.clone();
    let proxy = start_proxy(upstream, move |conn, dir, _, len| {
        if dir != Dir::ToDevice || !is_chunk(len) {
            return Act::Forward;
        }
        let mut c = seen.lock().unwrap();
        c.push((conn, len));
        if conn == 0 && c.len() == 5 {
            Act::Cut
        } else {
            Act::Forward
        }
    });
    let config = host.add_device("pi-1", "lab", &proxy.to_string(), "");
    let agent = Agent::start("pi-1", &config, None);
    let id = push(&host, &["big@1", "--to", "pi-1"]);
    let states = host.wait_push(id, T);
    assert_eq!(states[0].1, "installed", "{states:?}");
    let size = host.fleet().push(id).unwrap().unwrap().size;
    let chunks = chunks.lock().unwrap().clone();
    let first = chunks.iter().filter(|c| c.0 == 0).count();
    assert_eq!(first, 5, "the first connection was cut after 5 chunks");
    assert!(
        chunks.iter().any(|c| c.0 > 0),
        "the rest came over a new connection"
    );
    // The host says where each transfer starts: 0, then where the cut left it.
    let log = host.proc.as_ref().unwrap().log();
    let starts: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("from byte ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(starts, vec![0, 5 * 64 * 1024], "{log}");
    // Every chunk once: one frame per 64 KiB of the artifact, and their payloads add up to
    // its size (a chunk sent twice would add 64 KiB).
    assert_eq!(chunks.len() as u64, size.div_ceil(64 * 1024), "{chunks:?}");
    let carried: u64 = chunks.iter().map(|&(_, len)| len as u64).sum();
    let per_frame = 4 + 16 + 16; // length, tag, message header (variant, push, offset, length)
    assert!(
        carried >= size && carried <= size + per_frame * chunks.len() as u64,
        "{carried} bytes of chunk frames for {size} bytes"
    );
    let h = agent.wait_health("the model", T, |h| h["model"]["name"] == "big");
    assert!(h["sessions"].as_u64().unwrap() >= 2);
    let (status, body) = agent.post("/predict", &json!({"input": vec![0.5; 16]}).to_string());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_byte_flipped_after_the_handshake_ends_the_session_with_nothing_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let upstream = host.serve(0);
    // Connection 0: the host's third frame (the first after Welcome: the model offer) has
    // a bit flipped. Connection 1: the device's fourth frame (the first after its
    // Heartbeat: the Fetch) has. Later connections are left alone.
    let log = Arc::new(Mutex::new(Vec::<(usize, Dir, usize, usize)>::new()));
    let seen = log.clone();
    let proxy = start_proxy(upstream, move |conn, dir, index, len| {
        seen.lock().unwrap().push((conn, dir, index, len));
        match (conn, dir, index) {
            (0, Dir::ToDevice, 2) | (1, Dir::ToHost, 3) => Act::Flip,
            _ => Act::Forward,
        }
    });
    let config = host.add_device("pi-1", "lab", &proxy.to_string(), "");
    let id = push(&host, &["wine@1", "--to", "pi-1"]);
    let agent = Agent::start("pi-1", &config, None);
    // The agent throws the first session away at the altered offer, the host the second
    // at the altered Fetch; the third installs.
    let states = host.wait_push(id, T);
    assert_eq!(states[0].1, "installed", "{states:?}");
    let frames = log.lock().unwrap().clone();
    for conn in [0, 1] {
        let to_device: Vec<&(usize, Dir, usize, usize)> = frames
            .iter()
            .filter(|f| f.0 == conn && f.1 == Dir::ToDevice)
            .collect();
        assert!(
            !to_device.iter().any(|f| is_chunk(f.3)),
            "connection {conn} carried a chunk: {frames:?}"
        );
    }
    // The device said nothing after the altered offer on connection 0: Hello, Auth and its
    // first Heartbeat only (the offer came after that Heartbeat).
    let from_device_0 = frames
        .iter()
        .filter(|f| f.0 == 0 && f.1 == Dir::ToHost)
        .count();
    assert!(from_device_0 <= 4, "{frames:?}");
    assert!(
        agent
            .proc
            .log()
            .contains("failed authentication (altered, replayed, reordered"),
        "{}",
        agent.proc.log()
    );
    wait_for_event(&host, "pi-1", "protocol-error", "failed authentication");
    wait_for_event(&host, "pi-1", "installed", "wine@1");
    agent.wait_health("the model", T, |h| h["model"]["name"] == "wine");
    let events = host.fleet().events(Some("pi-1"), 50).unwrap();
    // One install event: nothing was applied from the altered sessions.
    assert_eq!(
        events.iter().filter(|e| e.kind == "installed").count(),
        1,
        "{events:?}"
    );
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

    // A device with a wrong key never gets a session: the host cannot prove it holds the
    // key the device has, so the device closes at once; the host keeps why.
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
        h["last_error"]
            .as_str()
            .unwrap()
            .contains("did not prove it holds this device's key"),
        "{h}"
    );
    wait_for_event(
        &host,
        "pi-badkey",
        "auth-failed",
        "closed the connection at the Challenge",
    );
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
        // The refusal's event is written beside the push state, not in its transaction:
        // wait for it, then check `devices show` lists it.
        wait_for_event(host, "pi-1", "rejected", needle);
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
    wait_for_event(&host, "pi-1", "rolled-back", "error rate");
    // The same push offered again (stale, or replayed) is refused at once.
    let mut f = host.fleet();
    let device = f.select(&["pi-1".to_string()], None).unwrap();
    f.assign(id, &device).unwrap();
    let states = host.wait_push(id, T);
    assert_eq!(states[0].1, "rejected", "{states:?}");
    assert!(
        states[0].2.as_deref().unwrap_or("").contains("went back"),
        "{states:?}"
    );
    assert_eq!(agent.health()["model"]["version"], "1");
    // Pushing it again is the host's decision to try it once more: a new release.
    let again = push(&host, &["wine@2", "--to", "pi-1"]);
    assert_eq!(host.wait_push(again, T)[0].1, "installed");
    agent.wait_health("v2 again", T, |h| h["model"]["version"] == "2");
}

/// Serves `n` predictions on an agent.
fn traffic(agent: &Agent, n: usize) {
    let body = json!({ "inputs": feature_rows(&wine_test())[..n] }).to_string();
    assert_eq!(agent.post("/predict", &body).0, 200);
}

/// A host that does not hold the device's key: its first connection answers the Hello
/// with a Challenge whose proof is made with another key, the next ones skip the Challenge
/// and say Welcome at once (the fake host of the review), offer a model and acknowledge
/// reports. Records what each connection received after the Hello.
fn start_rogue_host() -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    use perch::sync::auth::{Ephemeral, HostHandshake};
    use perch::sync::{Message, ModelRef, Role, frame};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().flatten().enumerate() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let hello = loop {
                    if let Ok(Some((m, used))) = frame::decode(&buf, 4096) {
                        buf.drain(..used);
                        break m;
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                };
                let mut out = Vec::new();
                let say = |m: &Message, out: &mut Vec<u8>| {
                    frame::encode(m, out, frame::DEFAULT_MAX_PAYLOAD).unwrap()
                };
                if n == 0 {
                    let (_, challenge) = HostHandshake::challenge(
                        &hello,
                        2,
                        &[0xEE; 32],
                        Ephemeral::generate().unwrap(),
                    )
                    .unwrap();
                    say(&challenge, &mut out);
                } else {
                    say(&Message::Welcome { heartbeat_s: 15 }, &mut out);
                    say(
                        &Message::ModelOffer {
                            push: 1,
                            model: ModelRef {
                                name: "wine".into(),
                                version: "999".into(),
                                sha256: [1; 32],
                            },
                            size: 100,
                            role: Role::Active,
                            manifest: vec![0; 100],
                        },
                        &mut out,
                    );
                    for seq in 1..=25 {
                        say(&Message::Ack { seq }, &mut out);
                    }
                }
                let _ = conn.write_all(&out);
                // Everything the device sends from here on, until it closes.
                loop {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                log.lock().unwrap().push(buf);
            });
        }
    });
    (addr, received)
}

#[test]
fn a_rogue_host_without_the_key_gets_no_report_and_no_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let addr = host.serve(0).to_string();
    let config = host.add_device("pi-1", "lab", &addr, "");
    {
        let agent = Agent::start("pi-1", &config, None);
        let id = push(&host, &["wine@1", "--to", "pi-1"]);
        assert_eq!(host.wait_push(id, T)[0].1, "installed");
        agent.wait_health("v1", T, |h| h["model"]["version"] == "1");
    }
    // The device is pointed at a host that does not hold its key, and serves traffic: its
    // reports wait for the real host.
    let (rogue, received) = start_rogue_host();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&addr, &rogue.to_string())).unwrap();
    let agent = Agent::start("pi-1", &config, None);
    traffic(&agent, 5);
    let deadline = Instant::now() + T;
    while received.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the agent stopped trying");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every connection: the device sent its Hello and nothing more, and closed it.
    for (n, bytes) in received.lock().unwrap().iter().enumerate() {
        assert!(
            bytes.is_empty(),
            "connection {n}: the device sent {bytes:?}"
        );
    }
    let h = agent.wait_health("reports queued", T, |h| {
        h["queued_reports"].as_u64() > Some(0)
    });
    assert_eq!(h["connected"], false);
    assert_eq!(h["model"]["version"], "1", "nothing installed: {h}");
    let log = agent.proc.log();
    assert!(
        log.contains("did not prove it holds this device's key"),
        "{log}"
    );
    assert!(log.contains("expected Challenge, got Welcome"), "{log}");
}

#[test]
fn an_offer_relabelled_or_older_than_installed_is_refused_with_the_reason_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    host.train_wine("wine", "logistic", 2);
    let addr = host.serve(0).to_string();
    let config = host.add_device("pi-1", "lab", &addr, "");
    let agent = Agent::start("pi-1", &config, None);
    let old = push(&host, &["wine@1", "--to", "pi-1"]);
    assert_eq!(host.wait_push(old, T)[0].1, "installed");
    let new = push(&host, &["wine@2", "--to", "pi-1"]);
    assert_eq!(host.wait_push(new, T)[0].1, "installed");
    agent.wait_health("v2", T, |h| h["model"]["version"] == "2");
    let refused = |id: u64, needle: &str| {
        let states = host.wait_push(id, T);
        assert_eq!(states[0].1, "rejected", "{states:?}");
        let reason = states[0].2.clone().unwrap_or_default();
        assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
        wait_for_event(&host, "pi-1", "rejected", needle);
    };
    let mut f = host.fleet();
    let device = f.select(&["pi-1".to_string()], None).unwrap();
    let db = rusqlite::Connection::open(&host.db).unwrap();
    // The old push relabelled in the database as a new version: its signed manifest still
    // says wine@1.
    db.execute(
        "UPDATE pushes SET version = '999' WHERE id = ?1",
        [old as i64],
    )
    .unwrap();
    f.assign(old, &device).unwrap();
    refused(
        old,
        "the offer's model is wine@999 but the host's signed manifest says wine@1",
    );
    // The old push offered again as it was: an older release than installed.
    db.execute(
        "UPDATE pushes SET version = '1' WHERE id = ?1",
        [old as i64],
    )
    .unwrap();
    f.assign(old, &device).unwrap();
    refused(old, "older than release");
    assert_eq!(agent.health()["model"]["version"], "2");
    // Going back on purpose: the host refuses a plain push of the older version, and signs
    // one with --rollback.
    let out = std::process::Command::new(harness::host_bin())
        .arg("--registry")
        .arg(&host.db)
        .args(["push", "wine@1", "--to", "pi-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pi-1 runs wine@2") && err.contains("--rollback"),
        "{err}"
    );
    let back = push(&host, &["wine@1", "--to", "pi-1", "--rollback"]);
    assert_eq!(host.wait_push(back, T)[0].1, "installed");
    agent.wait_health("v1", T, |h| h["model"]["version"] == "1");
}

#[test]
fn seq_reuse_after_a_wiped_state_directory_stores_both_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let addr = host.serve(0).to_string();
    let config = host.add_device("pi-1", "lab", &addr, "");
    let served_in = |run: u64| -> (Vec<u64>, u32) {
        let f = host.fleet();
        let d = f.device("pi-1").unwrap().unwrap();
        let reports: Vec<_> = f
            .reports(&d)
            .unwrap()
            .into_iter()
            .filter(|r| r.run == run)
            .collect();
        (
            reports.iter().map(|r| r.seq).collect(),
            reports.iter().map(|r| r.report.requests).sum(),
        )
    };
    let wait_served = |run: u64, n: u32| {
        let deadline = Instant::now() + T;
        while served_in(run).1 < n {
            assert!(Instant::now() < deadline, "run {run}: {:?}", served_in(run));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for round in 0..2u64 {
        let agent = Agent::start("pi-1", &config, None);
        let id = push(&host, &["wine@1", "--to", "pi-1"]);
        assert_eq!(host.wait_push(id, T)[0].1, "installed");
        traffic(&agent, 5 + round as usize);
        wait_served(round, 5 + round as u32);
        drop(agent);
        // The state directory is lost: models, queue, sequence numbers.
        std::fs::remove_dir_all(host.dir.join("state-pi-1")).unwrap();
    }
    let (first, served_first) = served_in(0);
    let (second, served_second) = served_in(1);
    assert_eq!(first[0], 1);
    assert_eq!(second[0], 1, "numbers started again");
    assert_eq!(served_first, 5, "the first run's reports are all kept");
    assert_eq!(served_second, 6);
    wait_for_event(&host, "pi-1", "new-epoch", "run 1");
}

#[test]
fn a_panicked_link_thread_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let addr = host.serve(0).to_string();
    let config = host.add_device("pi-1", "lab", &addr, "");
    let agent = Agent::start("pi-1", &config, Some("link:after-connect"));
    let h = agent.wait_health("a restarted link", T, |h| {
        h["link_restarts"] == 1 && h["connected"] == true
    });
    assert_eq!(h["status"], "no model");
    assert!(agent.proc.log().contains("the link thread panicked"));
    let id = push(&host, &["wine@1", "--to", "pi-1"]);
    assert_eq!(host.wait_push(id, T)[0].1, "installed");
}

#[test]
fn a_push_refused_for_a_passing_cause_is_offered_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::new(dir.path());
    host.train_wine("wine", "logistic", 1);
    let addr = host.serve(0).to_string();
    let config = host.add_device("pi-1", "lab", &addr, "");
    let agent = Agent::start("pi-1", &config, None);
    agent.wait_health("a session", T, |h| h["connected"] == true);
    // The device cannot store downloads for a while (its incoming directory is a file).
    let incoming = host.dir.join("state-pi-1/incoming");
    std::fs::remove_dir_all(&incoming).unwrap();
    std::fs::write(&incoming, b"in the way").unwrap();
    let id = push(&host, &["wine@1", "--to", "pi-1"]);
    let states = host.wait_push(id, T);
    assert_eq!(states[0].1, "retrying", "{states:?}");
    let reason = states[0].2.clone().unwrap_or_default();
    assert!(
        reason.contains("cannot store the download") && reason.contains("offered again in 30 s"),
        "{reason}"
    );
    wait_for_event(&host, "pi-1", "retrying", "cannot store the download");
    // The cause passes; the retry time is brought forward instead of waited for.
    std::fs::remove_file(&incoming).unwrap();
    std::fs::create_dir(&incoming).unwrap();
    let due = host
        .fleet()
        .retry_due(perch::fleet::now_unix_s() + 3600)
        .unwrap();
    assert_eq!(due, 1);
    assert_eq!(host.wait_push(id, T)[0].1, "installed");
    agent.wait_health("the model", T, |h| h["model"]["name"] == "wine");
}
