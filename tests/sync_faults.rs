//! Hostile and broken peers against the sync server (in process, on 127.0.0.1:0): garbage,
//! truncated frames, oversized lengths, bad CRCs, unknown devices, wrong keys, a replayed
//! `Auth`, a silent peer. Each is closed with a reason the host stores as an event, and a
//! well-behaved device keeps being served throughout.
#![cfg(feature = "host")]

use perch::fleet::{Fleet, FleetStore};
use perch::metrics::Report;
use perch::sync::client;
use perch::sync::server::{self, ServerConfig, Shutdown};
use perch::sync::{FrameReader, FrameWriter, Message, Received, auth, frame};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Host {
    addr: SocketAddr,
    db: std::path::PathBuf,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(config: ServerConfig) -> (Host, [u8; 32]) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("perch-registry.db");
    let key = Fleet::open(&db)
        .unwrap()
        .add_device("pi-1", "lab")
        .unwrap()
        .key;
    let store = Arc::new(FleetStore::open(&db).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let d = shutdown.clone();
    let thread = std::thread::spawn(move || {
        server::serve(listener, store, config, d).unwrap();
    });
    (
        Host {
            addr,
            db,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        },
        key,
    )
}

fn config() -> ServerConfig {
    ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    }
}

/// A well-behaved device: handshake, one report, its acknowledgement.
fn good_device_reports(host: &Host, key: &[u8; 32], seq: u64) {
    let mut link = client::connect(
        &host.addr.to_string(),
        "pi-1",
        key,
        "test",
        Duration::from_secs(5),
        Duration::from_millis(50),
    )
    .expect("the good device is served");
    let report = Report {
        requests: 10,
        ..Report::default()
    };
    link.writer.send(&Message::Metrics { seq, report }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match link.reader.read().unwrap() {
            Received::Message(Message::Ack { seq: s }) if s == seq => return,
            Received::Message(_) | Received::Idle => {
                assert!(Instant::now() < deadline, "no Ack for seq {seq}");
            }
        }
    }
}

/// Sends `bytes`, then waits until the server closes the connection.
fn send_and_wait_close(addr: SocketAddr, bytes: &[u8], close_write: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    if close_write {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut got = Vec::new();
    // Reads until EOF; a timeout here means the server kept the connection open.
    s.read_to_end(&mut got)
        .expect("server closes the connection");
    got
}

fn events(db: &std::path::Path) -> Vec<(String, String)> {
    Fleet::open(db)
        .unwrap()
        .events(None, 1000)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.detail))
        .collect()
}

fn wait_for_event(db: &std::path::Path, kind: &str, detail: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ev = events(db);
        if ev.iter().any(|(k, d)| k == kind && d.contains(detail)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event containing {detail:?}; events: {ev:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hello(device: &str, nonce: [u8; 16]) -> Message {
    Message::Hello {
        min_protocol: 1,
        max_protocol: 1,
        device: device.into(),
        agent: "test".into(),
        nonce,
    }
}

fn frame_of(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(m, &mut out, frame::DEFAULT_MAX_PAYLOAD).unwrap();
    out
}

#[test]
fn broken_frames_are_closed_with_a_stored_reason_and_others_are_still_served() {
    let (host, key) = start(config());
    // A well-behaved device holds a session open through all of it.
    let mut steady = client::connect(
        &host.addr.to_string(),
        "pi-1",
        &key,
        "test",
        Duration::from_secs(5),
        Duration::from_millis(50),
    )
    .unwrap();

    // Garbage: a "length" of 0x6c6c6568 ("hell") is beyond the maximum.
    send_and_wait_close(host.addr, b"hello, is this HTTP?\r\n\r\n", false);
    wait_for_event(&host.db, "protocol-error", "exceeds the maximum");
    good_device_reports(&host, &key, 1);

    // An oversized length is refused before any payload is sent.
    send_and_wait_close(host.addr, &u32::MAX.to_le_bytes(), false);
    wait_for_event(&host.db, "protocol-error", "4294967295");
    good_device_reports(&host, &key, 2);

    // A frame cut short by the peer closing.
    let whole = frame_of(&hello("pi-1", [1; 16]));
    send_and_wait_close(host.addr, &whole[..whole.len() - 5], true);
    wait_for_event(&host.db, "protocol-error", "middle of a frame");
    good_device_reports(&host, &key, 3);

    // A damaged byte: the CRC catches it.
    let mut bad = whole.clone();
    bad[10] ^= 0x40;
    send_and_wait_close(host.addr, &bad, false);
    wait_for_event(&host.db, "protocol-error", "CRC mismatch");
    good_device_reports(&host, &key, 4);

    // A valid frame whose payload is not a message.
    let mut junk = 3u32.to_le_bytes().to_vec();
    junk.extend_from_slice(&[0xff, 0xff, 0xff]);
    let crc = crc32fast::hash(&junk);
    junk.extend_from_slice(&crc.to_le_bytes());
    send_and_wait_close(host.addr, &junk, false);
    wait_for_event(&host.db, "protocol-error", "not a valid message");

    // A peer that says nothing is dropped after the handshake timeout.
    let started = Instant::now();
    send_and_wait_close(host.addr, &[], false);
    assert!(started.elapsed() >= Duration::from_millis(900));
    wait_for_event(&host.db, "protocol-error", "handshake timed out");

    // A message out of place: Auth before Hello.
    send_and_wait_close(host.addr, &frame_of(&Message::Auth { mac: [0; 32] }), false);
    wait_for_event(&host.db, "protocol-error", "expected Hello, got Auth");

    // The steady device was never disturbed.
    steady
        .writer
        .send(&Message::Metrics {
            seq: 100,
            report: Report::default(),
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match steady.reader.read().unwrap() {
            Received::Message(Message::Ack { seq: 100 }) => break,
            _ => assert!(Instant::now() < deadline, "steady device got no Ack"),
        }
    }
    let fleet = Fleet::open(&host.db).unwrap();
    let device = fleet.device("pi-1").unwrap().unwrap();
    let seqs: Vec<u64> = fleet
        .reports(&device)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 100]);
}

/// Answers a Challenge by hand, returning what the server said after the Auth.
fn handshake_by_hand(
    addr: SocketAddr,
    device: &str,
    key: &[u8; 32],
    nonce: [u8; 16],
    mac: Option<[u8; 32]>,
) -> (Option<[u8; 32]>, Message) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = FrameWriter::new(s.try_clone().unwrap());
    let mut r = FrameReader::new(s);
    w.send(&hello(device, nonce)).unwrap();
    let host_nonce = match r.read_message().unwrap() {
        Message::Challenge { nonce, .. } => nonce,
        other => return (None, other),
    };
    let mac = mac.unwrap_or_else(|| auth::sign(key, device, &nonce, &host_nonce));
    w.send(&Message::Auth { mac }).unwrap();
    (Some(mac), r.read_message().unwrap())
}

#[test]
fn unknown_devices_wrong_keys_and_replays_are_refused_with_reasons() {
    let (host, key) = start(config());

    let (_, answer) = handshake_by_hand(host.addr, "pi-404", &key, [1; 16], None);
    match answer {
        Message::Refused { reason } => assert!(reason.contains("unknown device"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    wait_for_event(&host.db, "unknown-device", "pi-404");

    let (_, answer) = handshake_by_hand(host.addr, "pi-1", &[0xAA; 32], [2; 16], None);
    match answer {
        Message::Refused { reason } => assert!(reason.contains("authentication"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    wait_for_event(&host.db, "auth-failed", "pi-1");

    // A recorded Auth is useless on a new connection: the host's nonce is fresh.
    let (mac, answer) = handshake_by_hand(host.addr, "pi-1", &key, [3; 16], None);
    assert!(matches!(answer, Message::Welcome { .. }), "{answer:?}");
    let (_, replay) = handshake_by_hand(host.addr, "pi-1", &key, [3; 16], mac);
    assert!(matches!(replay, Message::Refused { .. }), "{replay:?}");
    let failures = events(&host.db)
        .into_iter()
        .filter(|(k, _)| k == "auth-failed")
        .count();
    assert_eq!(failures, 2, "the wrong key and the replay");

    // A device speaking only a future protocol is told so.
    let s = TcpStream::connect(host.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = FrameWriter::new(s.try_clone().unwrap());
    let mut r = FrameReader::new(s);
    w.send(&Message::Hello {
        min_protocol: 7,
        max_protocol: 9,
        device: "pi-1".into(),
        agent: "future".into(),
        nonce: [4; 16],
    })
    .unwrap();
    match r.read_message().unwrap() {
        Message::Refused { reason } => assert!(reason.contains("protocol 7..=9"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    good_device_reports(&host, &key, 1);
}

#[test]
fn connections_beyond_the_limit_are_refused_and_the_rest_served() {
    let (host, key) = start(ServerConfig {
        max_connections: 2,
        ..config()
    });
    let a = TcpStream::connect(host.addr).unwrap();
    let b = TcpStream::connect(host.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = TcpStream::connect(host.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match FrameReader::new(s).read_message().unwrap() {
        Message::Refused { reason } => assert!(reason.contains("busy"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    drop((a, b));
    // The two silent peers time out of the handshake; then the device gets in.
    std::thread::sleep(Duration::from_millis(1500));
    good_device_reports(&host, &key, 1);
}
