//! The host's side of the protocol: an accept loop with connection limits, and one session
//! per device connection (a thread each). What sessions read and write on the host —
//! devices, reports, pushes — goes through a [`Store`], so this file knows nothing of the
//! database behind it.
//!
//! A session: `Hello` → `Challenge` (the host's proof) → `Auth` (the device's) → sealed
//! `Welcome`; then the device sends `Metrics` (each answered by `Ack` once the store has it
//! durably), `Heartbeat`s, and answers the host's `ModelOffer` with `Fetch { offset }`, after
//! which the host streams `Chunk`s from that offset to the end. Any protocol violation
//! closes the connection with a logged reason, recorded by the store as an event; other
//! sessions are not affected.
//!
//! Before a peer has proven it holds a device's key it gets little: a frame of at most
//! [`super::HANDSHAKE_MAX_PAYLOAD`] bytes, an absolute deadline for the whole handshake, one
//! of [`ServerConfig::max_handshakes`] slots and at most
//! [`ServerConfig::max_handshakes_per_address`] of them per IP address, and a bounded number
//! of events in the host's log. A device holds one live session: a second one authenticated
//! as the same device replaces the first (with an event).

use super::auth::{Ephemeral, HostHandshake};
use super::connection::{ConnectionError, FrameReader, FrameWriter, Received};
use super::frame::FrameError;
use super::{HANDSHAKE_MAX_PAYLOAD, Message, ModelRef, Role, auth, frame, printable};
use crate::metrics::Report;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A failure of the host's store (database, files), as text for the log and the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A device as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Store's id for it.
    pub id: i64,
    /// Name (the id the device says in `Hello`).
    pub name: String,
    /// Its handshake key.
    pub key: [u8; auth::KEY_LEN],
}

/// A model the host wants a device to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Push id.
    pub push: u64,
    /// The model (with the SHA-256 of the signed bytes).
    pub model: ModelRef,
    /// Size of the signed artifact in bytes.
    pub size: u64,
    /// Active model or shadow.
    pub role: Role,
    /// The host's signed manifest of the push (`crate::artifact::manifest`).
    pub manifest: Vec<u8>,
}

/// How a device answered an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Installed (or already running).
    Installed,
    /// Refused, with the device's reason; `transient` when the cause may pass (the host
    /// offers it again later).
    Rejected {
        /// The device's reason.
        reason: &'a str,
        /// Whether to offer it again later.
        transient: bool,
    },
}

/// What sessions need from the host's storage. Implementations are shared by every session
/// thread. A method that returns `Ok` has done its work durably (a report acknowledged to a
/// device is never lost).
pub trait Store: Send + Sync {
    /// The registered device called `name` (a name [`super::valid_name`] accepts).
    ///
    /// # Errors
    /// Storage failures (not "unknown": that is `Ok(None)`).
    fn device(&self, name: &str) -> Result<Option<DeviceRecord>, StoreError>;
    /// A device authenticated from `peer` running agent version `agent`, its state
    /// directory in boot epoch `epoch`. Returns the store's number for that epoch of the
    /// device (its run), which [`Store::store_reports`] gets back.
    ///
    /// # Errors
    /// Storage failures.
    fn session_opened(
        &self,
        device: &DeviceRecord,
        peer: &str,
        agent: &str,
        epoch: u64,
    ) -> Result<u64, StoreError>;
    /// The device is alive and runs `model`.
    ///
    /// # Errors
    /// Storage failures.
    fn heartbeat(&self, device: &DeviceRecord, model: Option<&ModelRef>) -> Result<(), StoreError>;
    /// Stores reports of the device's run `run`; a `(device, run, seq)` stored before is
    /// kept as it was (a different content under the same number is recorded as an event).
    ///
    /// # Errors
    /// Storage failures (nothing is acknowledged then).
    fn store_reports(
        &self,
        device: &DeviceRecord,
        run: u64,
        reports: &[(u64, Report)],
    ) -> Result<(), StoreError>;
    /// What the device should run now: at most one active push not yet installed, and at
    /// most one shadow push for as long as the shadow run lasts.
    ///
    /// # Errors
    /// Storage failures.
    fn offers(&self, device: &DeviceRecord) -> Result<Vec<Offer>, StoreError>;
    /// Up to `max` bytes of push `push`'s artifact from `offset`, into `buf` (cleared first).
    ///
    /// # Errors
    /// An unknown push, a missing file, an offset past the end.
    fn read_chunk(
        &self,
        push: u64,
        offset: u64,
        max: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError>;
    /// The device's answer to push `push`.
    ///
    /// # Errors
    /// Storage failures.
    fn install_outcome(
        &self,
        device: &DeviceRecord,
        push: u64,
        outcome: Outcome<'_>,
    ) -> Result<(), StoreError>;
    /// The device went back from `from` to `to` by itself.
    ///
    /// # Errors
    /// Storage failures.
    fn rolled_back(
        &self,
        device: &DeviceRecord,
        from: &ModelRef,
        to: &ModelRef,
        reason: &str,
    ) -> Result<(), StoreError>;
    /// Records something that happened (a refused connection, a protocol error), for the
    /// operator. `device` is the name the peer gave, when it gave a valid one.
    fn event(&self, device: Option<&str>, kind: &str, detail: &str);
    /// A number that changes whenever offers may have changed (a new push, a rollout step);
    /// sessions look for a new offer when it moves.
    fn generation(&self) -> u64;
}

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections at once (sessions and handshakes); one beyond it is refused with a
    /// reason.
    pub max_connections: usize,
    /// Connections not yet authenticated at once: the rest of `max_connections` is kept for
    /// devices that have proven who they are.
    pub max_handshakes: usize,
    /// Connections not yet authenticated from one IP address at once.
    pub max_handshakes_per_address: usize,
    /// Time a peer has for the whole handshake, however slowly it sends.
    pub handshake_timeout: Duration,
    /// Heartbeat period asked of devices (`Welcome`).
    pub heartbeat_s: u32,
    /// A session with no message for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes per `Chunk`.
    pub chunk_bytes: usize,
    /// How often a session wakes to look at the store's generation and the shutdown flag.
    pub poll: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 4096,
            max_handshakes: 256,
            max_handshakes_per_address: 32,
            handshake_timeout: Duration::from_secs(10),
            heartbeat_s: 15,
            idle_timeout: Duration::from_secs(60),
            chunk_bytes: 64 * 1024,
            poll: Duration::from_millis(200),
        }
    }
}

/// Stops a running [`serve`] (and its sessions) when triggered; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A handle not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the server and every session to stop.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Connections counted against the limits.
#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    handshakes: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The limits on connections, shared by the accept loop and the sessions.
#[derive(Debug)]
struct Admission {
    counts: Mutex<Counts>,
    max_connections: usize,
    max_handshakes: usize,
    per_address: usize,
}

/// A connection's place under the limits; given back when dropped.
struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    handshaking: bool,
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, String> {
        let mut c = crate::lock(&self.counts);
        if c.connections >= self.max_connections {
            return Err(format!(
                "host busy: {} connections open, try again later",
                self.max_connections
            ));
        }
        if c.handshakes >= self.max_handshakes {
            return Err(format!(
                "host busy: {} handshakes in progress, try again later",
                self.max_handshakes
            ));
        }
        let from_here = c.by_address.get(&ip).copied().unwrap_or(0);
        if from_here >= self.per_address {
            return Err(format!(
                "host busy: {from_here} handshakes in progress from {ip}, try again later"
            ));
        }
        c.connections += 1;
        c.handshakes += 1;
        c.by_address.insert(ip, from_here + 1);
        Ok(Slot {
            admission: self.clone(),
            ip,
            handshaking: true,
        })
    }

    fn end_handshake(c: &mut Counts, ip: IpAddr) {
        c.handshakes = c.handshakes.saturating_sub(1);
        if let Some(n) = c.by_address.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_address.remove(&ip);
            }
        }
    }
}

impl Slot {
    /// The peer authenticated: it no longer counts as a handshake.
    fn authenticated(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            Admission::end_handshake(&mut crate::lock(&self.admission.counts), self.ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = crate::lock(&self.admission.counts);
        c.connections = c.connections.saturating_sub(1);
        if self.handshaking {
            Admission::end_handshake(&mut c, self.ip);
        }
    }
}

/// Events from peers not (yet) authenticated, at most [`EVENTS_PER_MINUTE`] per address a
/// minute; the rest are counted and summed up in one event.
const EVENTS_PER_MINUTE: u32 = 20;

/// Addresses remembered by the event budget before old ones are forgotten.
const BUDGET_ADDRESSES: usize = 4096;

#[derive(Debug, Default)]
struct EventBudget {
    windows: Mutex<HashMap<IpAddr, (Instant, u32, u64)>>,
}

impl EventBudget {
    /// Whether an event from `ip` may be stored now; when a window with suppressed events
    /// ends, the count to report.
    fn take(&self, ip: IpAddr) -> (bool, Option<u64>) {
        let mut w = crate::lock(&self.windows);
        let now = Instant::now();
        if w.len() >= BUDGET_ADDRESSES && !w.contains_key(&ip) {
            w.retain(|_, (start, _, _)| now.duration_since(*start) < Duration::from_secs(60));
            if w.len() >= BUDGET_ADDRESSES {
                return (false, None);
            }
        }
        let entry = w.entry(ip).or_insert((now, 0, 0));
        let mut summary = None;
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            if entry.2 > 0 {
                summary = Some(entry.2);
            }
            *entry = (now, 0, 0);
        }
        if entry.1 < EVENTS_PER_MINUTE {
            entry.1 += 1;
            (true, summary)
        } else {
            entry.2 += 1;
            (false, summary)
        }
    }
}

/// Records an event a peer not (yet) authenticated caused, within its address's budget.
fn peer_event(
    store: &dyn Store,
    budget: &EventBudget,
    peer: SocketAddr,
    device: Option<&str>,
    kind: &str,
    detail: &str,
) {
    let (allowed, suppressed) = budget.take(peer.ip());
    if let Some(n) = suppressed {
        store.event(
            None,
            "suppressed",
            &format!(
                "{n} more events from {} in a minute were not recorded",
                peer.ip()
            ),
        );
    }
    if allowed {
        store.event(device, kind, detail);
    }
}

/// A device's live session: its number, its peer, and the flag that tells it to end.
type LiveSession = (u64, SocketAddr, Arc<AtomicBool>);

/// The live session of each device.
#[derive(Debug, Default)]
struct Live {
    sessions: Mutex<HashMap<i64, LiveSession>>,
    next: AtomicU64,
}

impl Live {
    /// Makes this session the device's live one; the one it replaces (if any) is told to
    /// end, and its address returned.
    fn open(
        &self,
        device: i64,
        peer: SocketAddr,
        replaced: Arc<AtomicBool>,
    ) -> (u64, Option<SocketAddr>) {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let old = crate::lock(&self.sessions).insert(device, (id, peer, replaced));
        let old = old.map(|(_, addr, flag)| {
            flag.store(true, Ordering::SeqCst);
            addr
        });
        (id, old)
    }

    fn close(&self, device: i64, id: u64) {
        let mut s = crate::lock(&self.sessions);
        if s.get(&device).is_some_and(|(i, _, _)| *i == id) {
            s.remove(&device);
        }
    }
}

/// What every session shares.
struct Shared {
    store: Arc<dyn Store>,
    config: ServerConfig,
    shutdown: Shutdown,
    budget: EventBudget,
    live: Live,
}

/// Accepts device connections on `listener` until `shutdown` is triggered, one thread per
/// session, within the limits of `config`. Returns after every session ended.
///
/// # Errors
/// Only when the listener itself fails.
pub fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let admission = Arc::new(Admission {
        counts: Mutex::new(Counts::default()),
        max_connections: config.max_connections.max(1),
        max_handshakes: config.max_handshakes.max(1),
        per_address: config.max_handshakes_per_address.max(1),
    });
    let shared = Arc::new(Shared {
        store,
        config,
        shutdown: shutdown.clone(),
        budget: EventBudget::default(),
        live: Live::default(),
    });
    let mut sessions: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !shutdown.is_triggered() {
        match listener.accept() {
            Ok((stream, peer)) => {
                sessions.retain(|h| !h.is_finished());
                let slot = match admission.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(reason) => {
                        refuse_busy(stream, peer, &shared, &reason);
                        continue;
                    }
                };
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("sync {peer}"))
                    .stack_size(256 * 1024)
                    .spawn(move || run_session(stream, peer, &shared, slot));
                match spawned {
                    Ok(h) => sessions.push(h),
                    Err(e) => log::error!("cannot start a session thread for {peer}: {e}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if is_transient_accept_error(&e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
    for h in sessions {
        let _ = h.join();
    }
    Ok(())
}

/// Errors of one accept that do not end the server (a peer that reset before we took its
/// connection, running out of descriptors for a moment).
fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | TimedOut
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23) // EMFILE, ENFILE
}

/// Tells a connection over the limits why, without waiting on it: the accept loop writes
/// one small frame to a fresh socket's empty buffer and moves on.
fn refuse_busy(stream: TcpStream, peer: SocketAddr, shared: &Shared, reason: &str) {
    log::debug!("refusing {peer}: {reason}");
    peer_event(
        &*shared.store,
        &shared.budget,
        peer,
        None,
        "refused",
        &format!("{peer}: {reason}"),
    );
    let mut frame = Vec::new();
    if frame::encode(
        &Message::Refused {
            reason: reason.to_string(),
        },
        &mut frame,
        HANDSHAKE_MAX_PAYLOAD,
    )
    .is_ok()
    {
        use std::io::Write;
        let _ = stream.set_nonblocking(true);
        let _ = (&stream).write(&frame);
    }
}

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
    /// The name the peer gave, once it passed [`super::valid_name`].
    device_name: Option<String>,
    /// Whether the peer proved it holds the device's key.
    authenticated: bool,
    /// Set when a newer session of the same device replaces this one.
    replaced: Arc<AtomicBool>,
}

fn run_session(stream: TcpStream, peer: SocketAddr, shared: &Shared, slot: Slot) {
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
                            "the first frame is not a Hello of sync protocol {} (an agent older than this host? upgrade it): {e}",
                            super::PROTOCOL_VERSION
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
        if !super::valid_name(name) {
            return Err(End::Refused {
                kind: "bad-name",
                reason: format!(
                    "invalid device name {:?} ({} bytes): use 1-{} letters, digits, '-', '_' and '.'",
                    printable(name, 32),
                    name.len(),
                    super::MAX_NAME_LEN
                ),
                tell: true,
            });
        }
        self.device_name = Some(name.clone());
        let (min, max, epoch, agent) = (*min, *max, *epoch, printable(agent, 64));
        let Some(protocol) = super::negotiate(min, max) else {
            return Err(End::Refused {
                kind: "protocol-mismatch",
                reason: format!(
                    "device speaks protocol {min}..={max}, this host {}..={}",
                    super::MIN_PROTOCOL_VERSION,
                    super::PROTOCOL_VERSION
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
                Message::Metrics { seq, report } => {
                    let mut batch = vec![(seq, report)];
                    // A device back online sends its backlog in a burst: store what has
                    // already arrived together.
                    while batch.len() < 512 {
                        match self.reader.buffered()? {
                            Some(Message::Metrics { seq, report }) => batch.push((seq, report)),
                            Some(other) => {
                                pending = Some(other);
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
