//! The sync protocol's figures, printed (not criterion: these are whole-system rates):
//!
//! 1. bytes per metrics report on the wire (sealed frame included: length, ChaCha20-Poly1305
//!    ciphertext, tag) for the digits MLP (64 input features, 10 classes) after a window of
//!    real traffic, alone and with a candidate in shadow beside it (a canary): target ≤ 256;
//! 2. reports per second the host (sync server + SQLite fleet store, in this process)
//!    ingests from 1,000 simulated devices on loopback, each waiting for its `Ack` before
//!    its next report, and again with each device sending a backlog of 20: target ≥ 20,000;
//! 3. push throughput: a 5 MB artifact from `perch-host push` to installed (downloaded,
//!    SHA-256 and signature checked, loaded, canary run, renamed into place) on an agent.
//!
//! `cargo bench --bench sync [-- report|ingest|push]` (each simulated device holds about
//! four descriptors, its socket and the host's, each cloned for reading and writing: 1,000
//! devices need a limit above 4,100, `ulimit -n 8192`).
//! The simulated devices and the host share this machine's two cores, so the rates are
//! lower bounds for a host that has its machine to itself.

use perch::fleet::{Fleet, FleetStore};
use perch::graph::sections::DriftBaseline;
use perch::metrics::{Collector, ModelFacts, Percentiles, Report, ShadowReport, SystemFigures};
use perch::sync::server::{self, ServerConfig, Shutdown};
use perch::sync::{Message, Received, client, frame, seal};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus")
}

fn csv_rows(path: &Path) -> Vec<Vec<f64>> {
    let mut r = csv::Reader::from_path(path).expect("corpus csv");
    r.records()
        .map(|rec| {
            let rec = rec.expect("row");
            let n = rec.len();
            rec.iter()
                .take(n - 1)
                .map(|v| v.parse().expect("number"))
                .collect()
        })
        .collect()
}

/// A window of the digits test set (450 predictions) through a collector with the training
/// set's baseline: what a digits device reports.
fn digits_report() -> Report {
    let data = corpus().join("datasets/digits");
    let train = csv_rows(&data.join("digits_train.csv"));
    let cols: Vec<Vec<f64>> = (0..64)
        .map(|j| train.iter().map(|r| r[j]).collect())
        .collect();
    let baseline = DriftBaseline::from_columns(cols.iter().map(Vec::as_slice));
    let mut c = Collector::new(ModelFacts {
        model: [7; 8],
        classes: 10,
        sample_len: 64,
        baseline: Some(baseline),
        ..ModelFacts::default()
    })
    .expect("collector");
    for (i, row) in csv_rows(&data.join("digits_test.csv")).iter().enumerate() {
        let x: Vec<f32> = row.iter().map(|&v| v as f32).collect();
        c.record_prediction(&x, 180 + (i as u64 * 37) % 400, Some(i % 10));
    }
    for i in 0..60 {
        c.record_feedback(i % 7 != 0);
    }
    c.close_window_with(
        1_796_000_000_000,
        60_000,
        SystemFigures {
            rss_kib: Some(3_412),
            cpu_temp_milli_c: Some(51_540),
        },
    )
}

fn wire_bytes(report: &Report) -> usize {
    let mut buf = Vec::new();
    let mut key = seal::FrameKey::new(&[0x5a; 32]);
    frame::encode_sealed(
        &Message::Metrics {
            seq: 123_456,
            report: report.clone(),
        },
        &mut buf,
        frame::DEFAULT_MAX_PAYLOAD,
        &mut key,
    )
    .expect("encodes");
    buf.len()
}

fn report_size() {
    let report = digits_report();
    let message = Message::Metrics {
        seq: 123_456,
        report: report.clone(),
    };
    let mut sealed = Vec::new();
    let mut key = seal::FrameKey::new(&[0x5a; 32]);
    frame::encode_sealed(&message, &mut sealed, frame::DEFAULT_MAX_PAYLOAD, &mut key)
        .expect("encodes");
    let mut plain = Vec::new();
    frame::encode(&message, &mut plain, frame::DEFAULT_MAX_PAYLOAD).expect("encodes");
    let psi_max = report.psi_milli.iter().max().copied().unwrap_or(0);
    println!(
        "1. metrics report, digits MLP (64 features, 10 classes, 450 requests, PSI up to {psi_max}/1000): {} bytes on the wire, sealed frame included (target <= 256; {} as a CRC frame of protocol 1)",
        sealed.len(),
        plain.len()
    );
    // What sealing costs a side, beside encoding: one report framed and read back, sealed
    // (ChaCha20-Poly1305) and with the CRC of protocol 1.
    let n = 200_000u32;
    let max = frame::DEFAULT_MAX_PAYLOAD;
    let (mut tx, mut rx) = (seal::FrameKey::new(&[1; 32]), seal::FrameKey::new(&[1; 32]));
    let mut buf = Vec::with_capacity(256);
    let t = Instant::now();
    for _ in 0..n {
        buf.clear();
        frame::encode_sealed(&message, &mut buf, max, &mut tx).expect("seals");
        std::hint::black_box(frame::decode_sealed(&mut buf, max, &mut rx).expect("opens"));
    }
    let sealed_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        buf.clear();
        frame::encode(&message, &mut buf, max).expect("encodes");
        std::hint::black_box(frame::decode(&buf, max).expect("decodes"));
    }
    let plain_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "   framing it and reading it back: {sealed_us:.2} us sealed, {plain_us:.2} us with a CRC ({:.2} us of sealing per report, both ends together)",
        sealed_us - plain_us
    );
    // A canary's window: the same, with a candidate in shadow on all 450 requests and 60
    // labels (figures of the size a real one has: latencies in the hundreds of µs, heaps in
    // tens of KiB).
    let mut canary = report.clone();
    canary.shadow = Some(ShadowReport {
        model: [9; 8],
        requests: 450,
        errors: 0,
        agreed: 441,
        latency_us: Percentiles {
            p50: 212,
            p95: 388,
            p99: 610,
        },
        active_latency_us: Percentiles {
            p50: 205,
            p95: 371,
            p99: 598,
        },
        memory_kib: 41,
        active_memory_kib: 40,
        feedback: 60,
        feedback_correct: 52,
        active_feedback_correct: 51,
        feedback_both_correct: 49,
    });
    println!(
        "1b. the same report of a canary, with a candidate in shadow: {} bytes on the wire (target <= 256)",
        wire_bytes(&canary)
    );
}

struct Host {
    addr: std::net::SocketAddr,
    db: std::path::PathBuf,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_host(dir: &Path, devices: usize) -> (Host, Vec<(String, [u8; 32])>) {
    let db = dir.join("perch-registry.db");
    let mut fleet = Fleet::open(&db).expect("fleet db");
    let keys = (0..devices)
        .map(|i| {
            let name = format!("sim-{i:04}");
            let d = fleet.add_device(&name, "sim").expect("add device");
            (name, d.key)
        })
        .collect();
    drop(fleet);
    let store = Arc::new(FleetStore::open(&db).expect("store"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    let d = shutdown.clone();
    let config = ServerConfig {
        handshake_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(600),
        ..ServerConfig::default()
    };
    let thread = std::thread::spawn(move || {
        server::serve(listener, store, config, d).expect("server");
    });
    (
        Host {
            addr,
            db,
            shutdown,
            thread: Some(thread),
        },
        keys,
    )
}

/// Runs `per_device` reports from each device, `in_flight` at a time; returns reports/s.
fn ingest(devices: usize, per_device: u64, in_flight: u64, threads: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, keys) = start_host(dir.path(), devices);
    let report = digits_report();
    let addr = host.addr.to_string();
    // Connect everyone first: the rate is of reports, not of handshakes.
    let mut links: Vec<Vec<client::Link>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, (name, key)) in keys.iter().enumerate() {
        let who = client::Credentials {
            device: name,
            key,
            agent: "bench",
            epoch: 1,
        };
        let link = client::connect(&addr, &who, Duration::from_secs(60), Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{name}: {e} (raise the descriptor limit: ulimit -n 8192)"));
        links[i % threads].push(link);
    }
    let started = Instant::now();
    let workers: Vec<_> = links
        .into_iter()
        .map(|mut group| {
            let report = report.clone();
            std::thread::spawn(move || {
                let mut acked = 0u64;
                let mut next = vec![1u64; group.len()];
                while next.iter().any(|&n| n <= per_device) {
                    for (link, seq) in group.iter_mut().zip(next.iter_mut()) {
                        let burst: Vec<Message> = (*seq..(*seq + in_flight).min(per_device + 1))
                            .map(|s| Message::Metrics {
                                seq: s,
                                report: report.clone(),
                            })
                            .collect();
                        if !burst.is_empty() {
                            link.writer.send_all(&burst).expect("send");
                        }
                    }
                    for (link, seq) in group.iter_mut().zip(next.iter_mut()) {
                        let want = (per_device + 1 - *seq).min(in_flight);
                        let mut got = 0;
                        let deadline = Instant::now() + Duration::from_secs(30);
                        while got < want {
                            match link.reader.read().expect("read") {
                                Received::Message(Message::Ack { .. }) => got += 1,
                                Received::Message(_) => {}
                                Received::Idle => {
                                    assert!(Instant::now() < deadline, "no Ack within 30 s")
                                }
                            }
                        }
                        *seq += want;
                        acked += want;
                    }
                }
                acked
            })
        })
        .collect();
    let acked: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let secs = started.elapsed().as_secs_f64();
    let stored = Fleet::open(&host.db)
        .expect("fleet")
        .report_count()
        .expect("count");
    assert_eq!(stored, acked, "every acknowledged report is stored once");
    (acked as f64 / secs, stored)
}

#[cfg(feature = "device")]
fn push_throughput() {
    use perch::graph::{DType, Graph, Layer, Metadata, Model, Node, Output, Tensor, TensorSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("perch-registry.db");
    let (n_in, hidden) = (64usize, 19_500usize);
    let w: Vec<f32> = (0..n_in * hidden)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let model = Model {
        metadata: Metadata::default(),
        graph: Graph {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DType::F32,
                shape: vec![n_in as u32],
            }],
            nodes: vec![Node {
                name: "dense".into(),
                layer: Layer::Dense {
                    weight: Tensor::f32(vec![hidden as u32, n_in as u32], w),
                    bias: None,
                },
                inputs: vec![0],
            }],
            outputs: vec![Output {
                name: "y".into(),
                value: 1,
            }],
        },
    };
    let mut reg = perch::registry::Registry::open(&db).expect("registry");
    reg.register(
        "big",
        perch::registry::Payload::Native(Box::new(model)),
        perch::registry::VersionInfo::default(),
    )
    .expect("register");
    let (host, _) = start_host(dir.path(), 0);
    let device = Fleet::open(&db)
        .expect("fleet")
        .add_device("pi", "lab")
        .expect("add");
    let key = perch::fleet::keys::load_or_create(&db).expect("host key");
    let text = perch::agent::config::render(
        "pi",
        &device.key,
        &host.addr.to_string(),
        &key.verifying_key().to_bytes(),
    )
    .replace("127.0.0.1:7471", "127.0.0.1:0");
    let cfg_path = dir.path().join("pi.toml");
    std::fs::write(&cfg_path, text).expect("config");
    let cfg = perch::agent::Config::load(&cfg_path).expect("config parses");
    let agent = perch::agent::Agent::start(cfg, Shutdown::new()).expect("agent");
    // Wait for the agent's session.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Fleet::open(&db).expect("fleet").devices().expect("devices")[0]
        .last_seen_unix_s
        .is_none()
    {
        assert!(Instant::now() < deadline, "agent never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let v = perch::host_cli::fleet::push(
        &reg,
        &"big@1".parse().expect("ref"),
        &["pi".to_string()],
        None,
        false,
    )
    .expect("push");
    let (push, size) = (v.push, v.size_bytes);
    let states =
        perch::host_cli::fleet::wait_for_push(&db, push, Duration::from_secs(120)).expect("wait");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(states[0].state, "installed", "{states:?}");
    println!(
        "3. push of a {:.1} MB artifact, perch-host push to installed (sign, transfer in 64 KiB chunks, SHA-256, signature, load, canary, rename): {:.2} s, {:.1} MB/s",
        size as f64 / 1e6,
        secs,
        size as f64 / 1e6 / secs
    );
    agent.stop();
}

fn main() {
    // `cargo bench --bench sync [-- report|ingest|push]` runs one part; `--bench` is cargo's.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    if wanted("report") {
        report_size();
    }
    if wanted("ingest") {
        let (steady, n) = ingest(1000, 30, 1, 8);
        println!(
            "2a. ingest, 1000 devices each waiting for its Ack: {steady:.0} reports/s ({n} reports stored once each; target >= 20,000)"
        );
        let (burst, n) = ingest(1000, 60, 20, 8);
        println!(
            "2b. ingest, 1000 devices sending backlogs of 20: {burst:.0} reports/s ({n} reports stored once each)"
        );
    }
    #[cfg(feature = "device")]
    if wanted("push") {
        push_throughput();
    }
}
