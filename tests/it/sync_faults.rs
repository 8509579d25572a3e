//! Hostile and broken peers against the sync server (in process, on 127.0.0.1:0): garbage,
//! truncated frames, oversized lengths, bad CRCs, bad names, unknown devices, wrong keys, a
//! replayed `Auth`, an agent of an older protocol, a silent peer, a slowloris crowd, two
//! sessions as one device, a report number reused with other content. Each is closed with
//! a reason the host stores as an event, and a well-behaved device keeps being served.
use perch::fleet::{Fleet, FleetStore};
use perch::metrics::Report;
use perch::sync::auth::{DeviceHandshake, Ephemeral};
use perch::sync::client::{self, Credentials, Link};
use perch::sync::server::{self, ServerConfig, Shutdown};
use perch::sync::{FrameReader, FrameWriter, Message, Received, frame};
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

/// A host with devices `pi-1` and `pi-2`; their keys.
fn start(config: ServerConfig) -> (Host, [u8; 32], [u8; 32]) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("perch-registry.db");
    let mut fleet = Fleet::open(&db).unwrap();
    let key = fleet.add_device("pi-1", "lab").unwrap().key;
    let key2 = fleet.add_device("pi-2", "lab").unwrap().key;
    drop(fleet);
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
        key2,
    )
}

fn config() -> ServerConfig {
    ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    }
}

fn connect(host: &Host, device: &str, key: &[u8; 32], epoch: u64) -> Link {
    let who = Credentials {
        device,
        key,
        agent: "test",
        epoch,
    };
    client::connect(
        &host.addr.to_string(),
        &who,
        Duration::from_secs(5),
        Duration::from_millis(50),
    )
    .unwrap_or_else(|e| panic!("{device} is not served: {e}"))
}

fn report(requests: u32) -> Report {
    Report {
        requests,
        ..Report::default()
    }
}

/// Sends one report and waits for its acknowledgement.
fn report_acked(link: &mut Link, seq: u64, r: Report) {
    link.writer
        .send(&Message::Metrics { seq, report: r })
        .unwrap();
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

/// A well-behaved device (pi-1): handshake, one report, its acknowledgement.
fn good_device_reports(host: &Host, key: &[u8; 32], seq: u64) {
    let mut link = connect(host, "pi-1", key, 1);
    report_acked(&mut link, seq, report(10));
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

fn handshake(device: &str, key: &[u8; 32], secret: u8) -> DeviceHandshake {
    DeviceHandshake::new(
        (2, 2),
        device,
        "test",
        1,
        key,
        Ephemeral::from_secret([secret; 32]),
    )
}

fn frame_of(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(m, &mut out, frame::DEFAULT_MAX_PAYLOAD).unwrap();
    out
}

fn refused_reason(m: Message) -> String {
    match m {
        Message::Refused { reason } => reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn broken_frames_are_closed_with_a_stored_reason_and_others_are_still_served() {
    let (host, key, key2) = start(config());
    // A well-behaved device holds a session open through all of it.
    let mut steady = connect(&host, "pi-2", &key2, 1);

    // Garbage: a "length" of 0x6c6c6568 ("hell") is beyond the maximum.
    send_and_wait_close(host.addr, b"hello, is this HTTP?\r\n\r\n", false);
    wait_for_event(&host.db, "protocol-error", "exceeds the maximum");
    good_device_reports(&host, &key, 1);

    // An oversized length is refused before any payload is sent.
    send_and_wait_close(host.addr, &u32::MAX.to_le_bytes(), false);
    wait_for_event(&host.db, "protocol-error", "4294967295");
    good_device_reports(&host, &key, 2);

    // Before the handshake, a frame beyond 512 bytes is refused as soon as its length
    // arrives (a 256 KiB Hello held a slot for long under protocol 1).
    send_and_wait_close(host.addr, &(256u32 * 1024).to_le_bytes(), false);
    wait_for_event(
        &host.db,
        "protocol-error",
        "262144 exceeds the maximum of 512",
    );

    // A frame cut short by the peer closing.
    let whole = frame_of(handshake("pi-1", &key, 1).hello());
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
    wait_for_event(
        &host.db,
        "protocol-mismatch",
        "not a Hello of sync protocol 2",
    );

    // A peer that says nothing is dropped after the handshake timeout.
    let started = Instant::now();
    send_and_wait_close(host.addr, &[], false);
    assert!(started.elapsed() >= Duration::from_millis(900));
    wait_for_event(&host.db, "protocol-error", "handshake timed out");

    // A message out of place: Auth before Hello.
    send_and_wait_close(
        host.addr,
        &frame_of(&Message::Auth { proof: [0; 32] }),
        false,
    );
    wait_for_event(&host.db, "protocol-error", "expected Hello, got Auth");

    // A name that is not a device name is refused before it is looked up, stored or logged
    // whole.
    let long = "x".repeat(300) + "\u{1b}[31m";
    let hello = DeviceHandshake::new(
        (2, 2),
        &long,
        "test",
        1,
        &key,
        Ephemeral::from_secret([9; 32]),
    );
    let answer = send_and_wait_close(host.addr, &frame_of(hello.hello()), false);
    let (m, _) = frame::decode(&answer, 1024).unwrap().unwrap();
    assert!(refused_reason(m).contains("invalid device name"));
    wait_for_event(&host.db, "bad-name", "invalid device name");
    let stored = events(&host.db);
    let bad_name = stored.iter().find(|(k, _)| k == "bad-name").unwrap();
    assert!(bad_name.1.len() < 300, "{bad_name:?}");
    assert!(!bad_name.1.contains('\u{1b}'), "{bad_name:?}");

    // The steady device was never disturbed.
    report_acked(&mut steady, 100, report(1));
    let fleet = Fleet::open(&host.db).unwrap();
    let seqs = |name: &str| -> Vec<u64> {
        let device = fleet.device(name).unwrap().unwrap();
        fleet
            .reports(&device)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    };
    assert_eq!(seqs("pi-1"), vec![1, 2, 3, 4]);
    assert_eq!(seqs("pi-2"), vec![100]);
}

/// Sends `hello`; when the host answers with a Challenge, sends `auth(challenge)` and
/// returns what the host said next.
fn handshake_by_hand(
    addr: SocketAddr,
    hello: &Message,
    auth: impl FnOnce(&Message) -> Option<Message>,
) -> (Message, Option<Message>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = FrameWriter::new(s.try_clone().unwrap());
    let mut r = FrameReader::new(s);
    w.send(hello).unwrap();
    let first = r.read_message().unwrap();
    if !matches!(first, Message::Challenge { .. }) {
        return (first, None);
    }
    let Some(a) = auth(&first) else {
        return (first, None);
    };
    w.send(&a).unwrap();
    // The host's answer to a bad Auth is a plain Refused; a good one is sealed (which this
    // reader cannot open: an error).
    let next = r.read_message().ok();
    (first, next)
}

#[test]
fn unknown_devices_wrong_keys_replays_and_old_agents_are_refused_with_reasons() {
    let (host, key, _) = start(config());

    let (answer, _) = handshake_by_hand(host.addr, handshake("pi-404", &key, 1).hello(), |_| None);
    assert!(refused_reason(answer).contains("unknown device"));
    wait_for_event(&host.db, "unknown-device", "pi-404");

    // A device with the wrong key finds that the host cannot prove it holds its key, and
    // closes without a word; the host records why.
    let wrong = handshake("pi-1", &[0xAA; 32], 2);
    let (challenge, _) = handshake_by_hand(host.addr, wrong.hello(), |c| {
        let Message::Challenge {
            protocol,
            ephemeral,
            proof,
        } = c
        else {
            unreachable!()
        };
        let e = wrong.answer(*protocol, ephemeral, proof).unwrap_err();
        assert!(e.to_string().contains("did not prove"), "{e}");
        None
    });
    assert!(matches!(challenge, Message::Challenge { .. }));
    wait_for_event(
        &host.db,
        "auth-failed",
        "closed the connection at the Challenge",
    );

    // An impostor that ignores the host's proof and sends some Auth is refused.
    let (_, next) = handshake_by_hand(host.addr, wrong.hello(), |_| {
        Some(Message::Auth { proof: [7; 32] })
    });
    assert!(refused_reason(next.unwrap()).contains("failed authentication"));
    wait_for_event(&host.db, "auth-failed", "wrong key, or a replayed Auth");

    // A recorded Hello and Auth are useless on a new connection: the host's ephemeral key
    // is fresh, so the proof it expects is another.
    let good = handshake("pi-1", &key, 3);
    let mut recorded = None;
    let (_, welcome) = handshake_by_hand(host.addr, good.hello(), |c| {
        let Message::Challenge {
            protocol,
            ephemeral,
            proof,
        } = c
        else {
            unreachable!()
        };
        let (auth, _) = good.answer(*protocol, ephemeral, proof).unwrap();
        recorded = Some(auth.clone());
        Some(auth)
    });
    assert!(welcome.is_none(), "the Welcome is sealed: {welcome:?}");
    let (_, replay) = handshake_by_hand(host.addr, good.hello(), |_| recorded);
    assert!(refused_reason(replay.unwrap()).contains("failed authentication"));
    let failures = events(&host.db)
        .into_iter()
        .filter(|(k, _)| k == "auth-failed")
        .count();
    assert_eq!(failures, 3, "the wrong key, the impostor and the replay");

    // A device speaking only a future protocol is told so.
    let future = DeviceHandshake::new(
        (7, 9),
        "pi-1",
        "future",
        1,
        &key,
        Ephemeral::from_secret([4; 32]),
    );
    let (answer, _) = handshake_by_hand(host.addr, future.hello(), |_| None);
    assert!(refused_reason(answer).contains("protocol 7..=9"));

    // An agent of protocol 1 (its Hello ends in a 16-byte nonce) is told to upgrade.
    let v1_hello =
        postcard::to_allocvec(&(0u8, 1u16, 1u16, "pi-1", "perch 0.1.0", [5u8; 16])).unwrap();
    let mut v1 = (v1_hello.len() as u32).to_le_bytes().to_vec();
    v1.extend_from_slice(&v1_hello);
    let crc = crc32fast::hash(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    let answer = send_and_wait_close(host.addr, &v1, false);
    let (m, _) = frame::decode(&answer, 1024).unwrap().unwrap();
    assert!(refused_reason(m).contains("upgrade"));
    good_device_reports(&host, &key, 1);
}

#[test]
fn connections_beyond_the_limit_are_refused_and_the_rest_served() {
    let (host, key, _) = start(ServerConfig {
        max_connections: 2,
        ..config()
    });
    let a = TcpStream::connect(host.addr).unwrap();
    let b = TcpStream::connect(host.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = TcpStream::connect(host.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(refused_reason(FrameReader::new(s).read_message().unwrap()).contains("busy"));
    drop((a, b));
    // The two silent peers time out of the handshake; then the device gets in.
    std::thread::sleep(Duration::from_millis(1500));
    good_device_reports(&host, &key, 1);
}

/// A connection from `source` (another loopback address) to `addr`.
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

#[test]
fn a_slowloris_crowd_is_cut_off_at_the_deadline_and_the_real_device_is_served() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let deadline = Duration::from_secs(3);
    let (host, key, _) = start(ServerConfig {
        handshake_timeout: deadline,
        max_connections: 64,
        max_handshakes: 16,
        max_handshakes_per_address: 8,
        ..ServerConfig::default()
    });
    // 24 peers from 127.0.0.2 announce a Hello of 500 bytes (under the 512-byte cap) and
    // send it a byte every 150 ms, as the review's attack did (it would take 75 s): only 8
    // get a handshake slot, the rest are refused at once, and those 8 are cut off at the
    // deadline however busy they keep the connection.
    let addr = host.addr;
    let refusals = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<std::thread::JoinHandle<(bool, Duration, Instant)>> = (0..24)
        .map(|_| {
            let refusals = refusals.clone();
            std::thread::spawn(move || {
                let mut s = connect_from("127.0.0.2", addr);
                s.set_read_timeout(Some(Duration::from_millis(150)))
                    .unwrap();
                let mut refused = false;
                let mut buf = [0u8; 512];
                let opened = Instant::now();
                if s.write_all(&500u32.to_le_bytes()).is_ok() {
                    loop {
                        if s.write_all(&[0x41]).is_err() {
                            break;
                        }
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                refused = buf[..n].windows(4).any(|w| w == b"busy");
                                break;
                            }
                            Err(_) => {}
                        }
                        // Without a deadline on the host, this peer would hold on this long.
                        if opened.elapsed() > Duration::from_secs(12) {
                            break;
                        }
                    }
                }
                if refused {
                    refusals.fetch_add(1, Ordering::SeqCst);
                }
                (refused, opened.elapsed(), Instant::now())
            })
        })
        .collect();
    // Once the crowd holds every slot its address may have (16 were refused), the real
    // device, from 127.0.0.1, connects.
    let waited = Instant::now();
    while refusals.load(Ordering::SeqCst) < 16 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "{} refusals",
            refusals.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    good_device_reports(&host, &key, 1);
    let served_at = Instant::now();
    let results: Vec<(bool, Duration, Instant)> =
        attackers.into_iter().map(|a| a.join().unwrap()).collect();
    let held: Vec<&(bool, Duration, Instant)> = results.iter().filter(|r| !r.0).collect();
    assert_eq!(held.len(), 8, "8 per address get a slot: {results:?}");
    for (_, for_how_long, closed_at) in held {
        assert!(
            *closed_at > served_at,
            "the device was served while the crowd held its slots"
        );
        assert!(
            *for_how_long >= deadline - Duration::from_millis(100)
                && *for_how_long < Duration::from_secs(11),
            "a slow peer was cut off after {for_how_long:?} (deadline {deadline:?})"
        );
    }
    wait_for_event(&host.db, "protocol-error", "handshake timed out");
    wait_for_event(&host.db, "refused", "handshakes in progress from 127.0.0.2");
}

#[test]
fn a_second_session_as_the_same_device_replaces_the_first() {
    let (host, key, _) = start(config());
    let mut first = connect(&host, "pi-1", &key, 1);
    report_acked(&mut first, 1, report(1));
    let mut second = connect(&host, "pi-1", &key, 1);
    report_acked(&mut second, 2, report(2));
    // The first is told, then closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let told = loop {
        match first.reader.read() {
            Ok(Received::Message(Message::Refused { reason })) => break reason,
            Ok(_) => assert!(Instant::now() < deadline, "the first session stays open"),
            Err(e) => panic!("closed without a reason: {e}"),
        }
    };
    assert!(told.contains("replaced"), "{told}");
    assert!(matches!(
        first.reader.read(),
        Err(perch::sync::ConnectionError::Closed)
    ));
    wait_for_event(&host.db, "session-replaced", "replaced the one from");
    report_acked(&mut second, 3, report(3));
}

#[test]
fn a_reused_number_with_other_content_is_an_event_and_a_new_epoch_is_stored_apart() {
    let (host, key, _) = start(config());
    let mut link = connect(&host, "pi-1", &key, 77);
    report_acked(&mut link, 1, report(10));
    // The same report again (its Ack was lost): stored once, no event.
    report_acked(&mut link, 1, report(10));
    // Another report under the same number and epoch (a cloned state directory): acked,
    // the first kept, the conflict recorded.
    report_acked(&mut link, 1, report(99));
    wait_for_event(&host.db, "report-conflict", "report 1 of run 0");
    drop(link);
    // A wiped state directory: a new epoch, numbers from 1 again, both stored.
    let mut link = connect(&host, "pi-1", &key, 78);
    report_acked(&mut link, 1, report(20));
    wait_for_event(&host.db, "new-epoch", "000000000000004e");
    let fleet = Fleet::open(&host.db).unwrap();
    let d = fleet.device("pi-1").unwrap().unwrap();
    let stored: Vec<(u64, u64, u32)> = fleet
        .reports(&d)
        .unwrap()
        .iter()
        .map(|r| (r.run, r.seq, r.report.requests))
        .collect();
    assert_eq!(stored, vec![(0, 1, 10), (1, 1, 20)]);
    let conflicts = events(&host.db)
        .into_iter()
        .filter(|(k, _)| k == "report-conflict")
        .count();
    assert_eq!(conflicts, 1);
}
