//! One device connection: the handshake, then metrics, heartbeats and model transfers
//! until the link ends; how it ended is logged and, for a refusal or a failure, recorded.

use super::{DeviceRecord, Offer, Outcome, StoreError};
use super::{Shared, Slot, peer_event};
use crate::metrics::ReportV2;
use crate::sync::auth::{Ephemeral, HostHandshake};
use crate::sync::connection::{ConnectionError, FrameReader, FrameWriter, Received};
use crate::sync::frame::FrameError;
use crate::sync::{HANDSHAKE_MAX_PAYLOAD, Message, ModelRef, Role, frame, printable};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The device closed the link, the host is shutting down, or a newer session of the
    /// same device took over.
    Normal(String),
    /// Refused at the handshake: the event kind, the reason (logged, stored), and whether
    /// to send it to the peer.
    Refused {
        kind: &'static str,
        reason: String,
        tell: bool,
    },
    /// The peer broke the protocol or the link failed.
    Failed(String),
}

impl From<ConnectionError> for End {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Closed => End::Normal("closed by the device".into()),
            other => End::Failed(other.to_string()),
        }
    }
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        End::Failed(format!("host storage: {e}"))
    }
}

struct Session<'a> {
    reader: FrameReader<TcpStream>,
    writer: FrameWriter<TcpStream>,
    peer: SocketAddr,
    shared: &'a Shared,
    slot: Slot,
    /// The name the peer gave, once it passed [`crate::sync::valid_name`].
    device_name: Option<String>,
    /// Whether the peer proved it holds the device's key.
    authenticated: bool,
    /// Set when a newer session of the same device replaces this one.
    replaced: Arc<AtomicBool>,
}

pub(super) fn run_session(stream: TcpStream, peer: SocketAddr, shared: &Shared, slot: Slot) {
    let config = &shared.config;
    let setup = || -> std::io::Result<(FrameReader<TcpStream>, FrameWriter<TcpStream>)> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(config.poll))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok((
            FrameReader::with_max_payload(stream.try_clone()?, HANDSHAKE_MAX_PAYLOAD),
            FrameWriter::new(stream.try_clone()?),
        ))
    };
    let (reader, writer) = match setup() {
        Ok(halves) => halves,
        Err(e) => {
            log::warn!("{peer}: cannot set up the connection: {e}");
            return;
        }
    };
    let mut session = Session {
        reader,
        writer,
        peer,
        shared,
        slot,
        device_name: None,
        authenticated: false,
        replaced: Arc::new(AtomicBool::new(false)),
    };
    let end = session.run();
    let who = match &session.device_name {
        Some(n) => format!("{n} ({peer})"),
        None => peer.to_string(),
    };
    let event = |kind: &str, detail: &str| {
        let name = session.device_name.as_deref();
        if session.authenticated {
            shared.store.event(name, kind, detail);
        } else {
            peer_event(&*shared.store, &shared.budget, peer, name, kind, detail);
        }
    };
    match end {
        End::Normal(why) => log::info!("{who}: session ended: {why}"),
        End::Refused { kind, reason, tell } => {
            log::warn!("{who}: refused: {reason}");
            event(kind, &format!("{peer}: {reason}"));
            if tell {
                let _ = session.writer.send(&Message::Refused { reason });
            }
        }
        End::Failed(reason) => {
            log::warn!("{who}: connection closed: {reason}");
            event("protocol-error", &format!("{peer}: {reason}"));
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

impl Session<'_> {
    fn run(&mut self) -> End {
        let (device, epoch, agent) = match self.handshake() {
            Ok(d) => d,
            Err(end) => return end,
        };
        let (id, replaced) = self
            .shared
            .live
            .open(device.id, self.peer, self.replaced.clone());
        let end = self.open(&device, epoch, &agent, replaced);
        self.shared.live.close(device.id, id);
        end
    }

    fn open(
        &mut self,
        device: &DeviceRecord,
        epoch: u64,
        agent: &str,
        replaced: Option<SocketAddr>,
    ) -> End {
        if let Some(old) = replaced {
            let detail = format!(
                "a session from {} replaced the one from {old} (a reconnect before the old link timed out, or two devices with one identity)",
                self.peer
            );
            log::warn!("{}: {detail}", device.name);
            self.shared
                .store
                .event(Some(&device.name), "session-replaced", &detail);
        }
        let run =
            match self
                .shared
                .store
                .session_opened(device, &self.peer.to_string(), agent, epoch)
            {
                Ok(run) => run,
                Err(e) => return e.into(),
            };
        log::info!("{} ({}): connected, agent {agent}", device.name, self.peer);
        match self.serve_device(device, run) {
            Ok(()) => End::Normal("host shutting down".into()),
            Err(end) => end,
        }
    }

    /// Waits for a handshake message until `deadline`, however slowly the peer sends,
    /// waking at each poll to honour shutdown.
    fn read_until(&mut self, deadline: Instant, waiting_for: &str) -> Result<Message, End> {
        loop {
            if self.shared.shutdown.is_triggered() {
                return Err(End::Normal("host shutting down".into()));
            }
            let read = match self.reader.read() {
                // An older agent's Hello does not decode as this version's.
                Err(ConnectionError::Frame(FrameError::Payload(e))) if waiting_for == "Hello" => {
                    return Err(End::Refused {
                        kind: "protocol-mismatch",
                        reason: format!(
                            "the first frame is not a Hello of sync protocol {} or later (an agent older than this host? upgrade it): {e}",
                            crate::sync::MIN_PROTOCOL_VERSION
                        ),
                        tell: true,
                    });
                }
                other => other?,
            };
            match read {
                Received::Message(m) => return Ok(m),
                Received::Idle if Instant::now() >= deadline => {
                    return Err(End::Failed(format!(
                        "handshake timed out waiting for {waiting_for} ({} s)",
                        self.shared.config.handshake_timeout.as_secs_f64()
                    )));
                }
                Received::Idle => {}
            }
        }
    }

    /// The handshake; the device, its boot epoch and agent string when it authenticated.
    fn handshake(&mut self) -> Result<(DeviceRecord, u64, String), End> {
        let deadline = Instant::now() + self.shared.config.handshake_timeout;
        let hello = self.read_until(deadline, "Hello")?;
        let Message::Hello {
            min_protocol: min,
            max_protocol: max,
            device: name,
            agent,
            epoch,
            ..
        } = &hello
        else {
            return Err(End::Failed(format!("expected Hello, got {}", hello.name())));
        };
        if !crate::sync::valid_name(name) {
            return Err(End::Refused {
                kind: "bad-name",
                reason: format!(
                    "invalid device name {:?} ({} bytes): use 1-{} letters, digits, '-', '_' and '.'",
                    printable(name, 32),
                    name.len(),
                    crate::sync::MAX_NAME_LEN
                ),
                tell: true,
            });
        }
        self.device_name = Some(name.clone());
        let (min, max, epoch, agent) = (*min, *max, *epoch, printable(agent, 64));
        let Some(protocol) = crate::sync::negotiate(min, max) else {
            return Err(End::Refused {
                kind: "protocol-mismatch",
                reason: format!(
                    "device speaks protocol {min}..={max}, this host {}..={}",
                    crate::sync::MIN_PROTOCOL_VERSION,
                    crate::sync::PROTOCOL_VERSION
                ),
                tell: true,
            });
        };
        let Some(device) = self.shared.store.device(name)? else {
            return Err(End::Refused {
                kind: "unknown-device",
                reason: format!("unknown device {name:?} (add it with `perch-host devices add`)"),
                tell: true,
            });
        };
        let ephemeral = Ephemeral::generate().map_err(|e| End::Failed(e.to_string()))?;
        let (pending, challenge) =
            HostHandshake::challenge(&hello, protocol, &device.key, ephemeral)
                .map_err(|e| End::Failed(e.to_string()))?;
        self.writer.send(&challenge)?;
        let proof = match self.read_until(deadline, "Auth") {
            Ok(Message::Auth { proof }) => proof,
            Ok(other) => {
                return Err(End::Failed(format!("expected Auth, got {}", other.name())));
            }
            Err(End::Normal(_)) if !self.shared.shutdown.is_triggered() => {
                return Err(End::Refused {
                    kind: "auth-failed",
                    reason: "the device closed the connection at the Challenge: the host's proof did not verify with its key (its configuration holds another key than this host's database)".into(),
                    tell: false,
                });
            }
            Err(e) => return Err(e),
        };
        let keys = pending.verify(&proof).map_err(|e| End::Refused {
            kind: "auth-failed",
            reason: format!("device {name:?} {e}"),
            tell: true,
        })?;
        self.writer.protect(keys.send);
        self.reader.protect(keys.receive);
        self.reader.set_max_payload(frame::DEFAULT_MAX_PAYLOAD);
        self.authenticated = true;
        self.slot.authenticated();
        self.writer.send(&Message::Welcome {
            heartbeat_s: self.shared.config.heartbeat_s,
        })?;
        Ok((device, epoch, agent))
    }

    /// Ends this session if a newer one of the same device took over, telling the device.
    fn check_replaced(&mut self) -> Result<(), End> {
        if self.replaced.load(Ordering::SeqCst) {
            let reason = "a newer session of this device replaced this one".to_string();
            let _ = self.writer.send(&Message::Refused {
                reason: reason.clone(),
            });
            return Err(End::Normal(reason));
        }
        Ok(())
    }

    fn serve_device(&mut self, device: &DeviceRecord, run: u64) -> Result<(), End> {
        let store = &*self.shared.store;
        let config = &self.shared.config;
        // What this session told the device to run, by role.
        let mut offered: Vec<Offer> = Vec::new();
        let mut generation = None;
        let mut last_rx = Instant::now();
        let mut pending: Option<Message> = None;
        loop {
            if self.shared.shutdown.is_triggered() {
                return Ok(());
            }
            self.check_replaced()?;
            let gen_now = store.generation();
            if generation != Some(gen_now) {
                generation = Some(gen_now);
                let desired = store.offers(device)?;
                for o in &desired {
                    if !offered.contains(o) {
                        self.writer.send(&Message::ModelOffer {
                            push: o.push,
                            model: o.model.clone(),
                            size: o.size,
                            role: o.role,
                            manifest: o.manifest.clone(),
                        })?;
                    }
                }
                // A shadow run that ended: the device unloads it. (An active push that is no
                // longer offered was installed or refused; nothing to undo.)
                for o in &offered {
                    if o.role == Role::Shadow && !desired.iter().any(|d| d.push == o.push) {
                        self.writer.send(&Message::Cancel {
                            push: o.push,
                            reason: "the shadow run ended".into(),
                        })?;
                    }
                }
                offered = desired;
            }
            let message = match pending.take() {
                Some(m) => m,
                None => match self.reader.read()? {
                    Received::Message(m) => m,
                    Received::Idle => {
                        if last_rx.elapsed() > config.idle_timeout {
                            return Err(End::Failed(format!(
                                "no message for {} s",
                                config.idle_timeout.as_secs()
                            )));
                        }
                        continue;
                    }
                },
            };
            last_rx = Instant::now();
            match message {
                Message::Metrics { seq, report }
                | Message::MetricsV2 {
                    seq,
                    report: ReportV2(report),
                } => {
                    let mut batch = vec![(seq, report)];
                    // A device back online sends its backlog in a burst: store what has
                    // already arrived together.
                    while batch.len() < 512 {
                        match self.reader.buffered()?.map(Message::into_report) {
                            Some(Ok(r)) => batch.push(r),
                            Some(Err(other)) => {
                                pending = Some(*other);
                                break;
                            }
                            None => break,
                        }
                    }
                    store.store_reports(device, run, &batch)?;
                    let acks: Vec<Message> =
                        batch.iter().map(|&(seq, _)| Message::Ack { seq }).collect();
                    self.writer.send_all(&acks)?;
                }
                Message::Heartbeat { model } => {
                    store.heartbeat(device, model.map(tidy).as_ref())?;
                }
                Message::Fetch { push, offset } => match offered.iter().find(|o| o.push == push) {
                    Some(o) if offset <= o.size => {
                        let o = o.clone();
                        log::info!(
                            "{}: sending push {push} from byte {offset} of {}",
                            device.name,
                            o.size
                        );
                        self.stream_chunks(&o, offset)?;
                    }
                    _ => self.writer.send(&Message::Cancel {
                        push,
                        reason: format!("push {push} is not offered to this device (any more)"),
                    })?,
                },
                Message::Installed { push } => {
                    // An active push is done once installed: offered again only if the
                    // host assigns it again (a shadow stays offered while it runs).
                    offered.retain(|o| o.push != push || o.role == Role::Shadow);
                    store.install_outcome(device, push, Outcome::Installed)?;
                    log::info!("{}: installed push {push}", device.name);
                }
                Message::Rejected {
                    push,
                    reason,
                    transient,
                } => {
                    // Offered again if the host assigns it again (or retries it).
                    offered.retain(|o| o.push != push);
                    let reason = printable(&reason, 1024);
                    store.install_outcome(
                        device,
                        push,
                        Outcome::Rejected {
                            reason: &reason,
                            transient,
                        },
                    )?;
                    let again = if transient {
                        " (will offer it again)"
                    } else {
                        ""
                    };
                    log::warn!("{}: rejected push {push}{again}: {reason}", device.name);
                }
                Message::RolledBack { from, to, reason } => {
                    let (from, to, reason) = (tidy(from), tidy(to), printable(&reason, 1024));
                    store.rolled_back(device, &from, &to, &reason)?;
                    log::warn!(
                        "{}: rolled back from {}@{} to {}@{}: {reason}",
                        device.name,
                        from.name,
                        from.version,
                        to.name,
                        to.version
                    );
                }
                other => {
                    return Err(End::Failed(format!(
                        "unexpected {} from a device",
                        other.name()
                    )));
                }
            }
        }
    }

    fn stream_chunks(&mut self, offer: &Offer, mut offset: u64) -> Result<(), End> {
        let (store, chunk_bytes) = (&*self.shared.store, self.shared.config.chunk_bytes);
        let mut buf = Vec::with_capacity(chunk_bytes);
        while offset < offer.size {
            if self.shared.shutdown.is_triggered() {
                return Ok(());
            }
            self.check_replaced()?;
            store.read_chunk(offer.push, offset, chunk_bytes, &mut buf)?;
            if buf.is_empty() {
                return Err(End::Failed(format!(
                    "push {} ends at {offset} bytes, before its size {}",
                    offer.push, offer.size
                )));
            }
            let n = buf.len() as u64;
            self.writer.send(&Message::Chunk {
                push: offer.push,
                offset,
                bytes: std::mem::take(&mut buf),
            })?;
            buf = Vec::with_capacity(chunk_bytes);
            offset += n;
        }
        Ok(())
    }
}

/// A model as a device named it, made safe to store and log.
fn tidy(m: ModelRef) -> ModelRef {
    ModelRef {
        name: printable(&m.name, 64),
        version: printable(&m.version, 64),
        sha256: m.sha256,
    }
}
