//! The host's side of the protocol: an accept loop with a connection limit, and one session
//! per device connection (a thread each). What sessions read and write on the host —
//! devices, reports, pushes — goes through a [`Store`], so this file knows nothing of the
//! database behind it.
//!
//! A session: `Hello` → `Challenge` → `Auth` → `Welcome`; then the device sends `Metrics`
//! (each answered by `Ack` once the store has it durably), `Heartbeat`s, and answers the
//! host's `ModelOffer` with `Fetch { offset }`, after which the host streams `Chunk`s from
//! that offset to the end. Any protocol violation closes the connection with a logged
//! reason, recorded by the store as an event; other sessions are not affected.

use super::auth;
use super::connection::{ConnectionError, FrameReader, FrameWriter, Received};
use super::{Message, ModelRef, NONCE_LEN, Role};
use crate::metrics::Report;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
}

/// What sessions need from the host's storage. Implementations are shared by every session
/// thread. A method that returns `Ok` has done its work durably (a report acknowledged to a
/// device is never lost).
pub trait Store: Send + Sync {
    /// The registered device called `name`.
    ///
    /// # Errors
    /// Storage failures (not "unknown": that is `Ok(None)`).
    fn device(&self, name: &str) -> Result<Option<DeviceRecord>, StoreError>;
    /// A device authenticated from `peer` running agent version `agent`.
    ///
    /// # Errors
    /// Storage failures.
    fn session_opened(
        &self,
        device: &DeviceRecord,
        peer: &str,
        agent: &str,
    ) -> Result<(), StoreError>;
    /// The device is alive and runs `model`.
    ///
    /// # Errors
    /// Storage failures.
    fn heartbeat(&self, device: &DeviceRecord, model: Option<&ModelRef>) -> Result<(), StoreError>;
    /// Stores reports; a `(device, seq)` stored before is kept as it was.
    ///
    /// # Errors
    /// Storage failures (nothing is acknowledged then).
    fn store_reports(
        &self,
        device: &DeviceRecord,
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
    /// The device installed push `push` (`Ok`) or refused it (`Err(reason)`).
    ///
    /// # Errors
    /// Storage failures.
    fn install_outcome(
        &self,
        device: &DeviceRecord,
        push: u64,
        outcome: Result<(), &str>,
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
    /// operator. `device` is the name the peer gave, when it gave one.
    fn event(&self, device: Option<&str>, kind: &str, detail: &str);
    /// A number that changes whenever offers may have changed (a new push, a rollout step);
    /// sessions look for a new offer when it moves.
    fn generation(&self) -> u64;
}

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Sessions at once; a connection beyond it is refused with a reason.
    pub max_connections: usize,
    /// Time a peer has for the whole handshake.
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

/// Accepts device connections on `listener` until `shutdown` is triggered, one thread per
/// session, at most `config.max_connections` at once. Returns after every session ended.
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
    let active = Arc::new(AtomicUsize::new(0));
    let config = Arc::new(config);
    let mut sessions: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !shutdown.is_triggered() {
        match listener.accept() {
            Ok((stream, peer)) => {
                sessions.retain(|h| !h.is_finished());
                if active.load(Ordering::SeqCst) >= config.max_connections {
                    refuse_busy(stream, peer, &*store, config.max_connections);
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (store, config, shutdown, counter) = (
                    store.clone(),
                    config.clone(),
                    shutdown.clone(),
                    active.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name(format!("sync {peer}"))
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        run_session(stream, peer, &*store, &config, &shutdown);
                        counter.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(h) => sessions.push(h),
                    Err(e) => {
                        log::error!("cannot start a session thread for {peer}: {e}");
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
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

fn refuse_busy(stream: TcpStream, peer: SocketAddr, store: &dyn Store, max: usize) {
    let reason = format!("host busy: {max} devices connected, try again later");
    log::warn!("refusing {peer}: {reason}");
    store.event(None, "refused", &format!("{peer}: {reason}"));
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = FrameWriter::new(stream).send(&Message::Refused { reason });
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The device closed the link, or the host is shutting down.
    Normal(&'static str),
    /// Refused at the handshake: (event kind, reason sent to the peer and logged).
    Refused(&'static str, String),
    /// The peer broke the protocol or the link failed.
    Failed(String),
}

impl From<ConnectionError> for End {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Closed => End::Normal("closed by the device"),
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
    store: &'a dyn Store,
    config: &'a ServerConfig,
    shutdown: &'a Shutdown,
    device_name: Option<String>,
}

fn run_session(
    stream: TcpStream,
    peer: SocketAddr,
    store: &dyn Store,
    config: &ServerConfig,
    shutdown: &Shutdown,
) {
    let setup = || -> std::io::Result<Session<'_>> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(config.poll))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let write_half = stream.try_clone()?;
        Ok(Session {
            reader: FrameReader::new(stream.try_clone()?),
            writer: FrameWriter::new(write_half),
            peer,
            store,
            config,
            shutdown,
            device_name: None,
        })
    };
    let mut session = match setup() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("{peer}: cannot set up the connection: {e}");
            return;
        }
    };
    let end = session.run();
    let who = match &session.device_name {
        Some(n) => format!("{n} ({peer})"),
        None => peer.to_string(),
    };
    match end {
        End::Normal(why) => log::info!("{who}: session ended: {why}"),
        End::Refused(kind, reason) => {
            log::warn!("{who}: refused: {reason}");
            store.event(
                session.device_name.as_deref(),
                kind,
                &format!("{peer}: {reason}"),
            );
            let _ = session.writer.send(&Message::Refused { reason });
        }
        End::Failed(reason) => {
            log::warn!("{who}: connection closed: {reason}");
            store.event(
                session.device_name.as_deref(),
                "protocol-error",
                &format!("{peer}: {reason}"),
            );
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

impl Session<'_> {
    fn run(&mut self) -> End {
        let device = match self.handshake() {
            Ok(d) => d,
            Err(end) => return end,
        };
        match self.serve_device(&device) {
            Ok(()) => End::Normal("host shutting down"),
            Err(end) => end,
        }
    }

    /// Waits for a message until `deadline`, waking at each poll to honour shutdown.
    fn read_until(&mut self, deadline: Instant) -> Result<Message, End> {
        loop {
            if self.shutdown.is_triggered() {
                return Err(End::Normal("host shutting down"));
            }
            match self.reader.read()? {
                Received::Message(m) => return Ok(m),
                Received::Idle if Instant::now() >= deadline => {
                    return Err(End::Failed("handshake timed out".into()));
                }
                Received::Idle => {}
            }
        }
    }

    fn handshake(&mut self) -> Result<DeviceRecord, End> {
        let deadline = Instant::now() + self.config.handshake_timeout;
        let (min, max, name, agent, device_nonce) = match self.read_until(deadline)? {
            Message::Hello {
                min_protocol,
                max_protocol,
                device,
                agent,
                nonce,
            } => (min_protocol, max_protocol, device, agent, nonce),
            other => {
                return Err(End::Failed(format!("expected Hello, got {}", other.name())));
            }
        };
        self.device_name = Some(name.clone());
        let Some(protocol) = super::negotiate(min, max) else {
            return Err(End::Refused(
                "protocol-mismatch",
                format!(
                    "device speaks protocol {min}..={max}, this host {}..={}",
                    super::MIN_PROTOCOL_VERSION,
                    super::PROTOCOL_VERSION
                ),
            ));
        };
        let Some(device) = self.store.device(&name)? else {
            return Err(End::Refused(
                "unknown-device",
                format!("unknown device {name:?} (add it with `perch-host devices add`)"),
            ));
        };
        let host_nonce: [u8; NONCE_LEN] =
            auth::random().map_err(|e| End::Failed(format!("no randomness for a nonce: {e}")))?;
        self.writer.send(&Message::Challenge {
            protocol,
            nonce: host_nonce,
        })?;
        let mac = match self.read_until(deadline)? {
            Message::Auth { mac } => mac,
            other => {
                return Err(End::Failed(format!("expected Auth, got {}", other.name())));
            }
        };
        if !auth::verify(&device.key, &name, &device_nonce, &host_nonce, &mac) {
            return Err(End::Refused(
                "auth-failed",
                format!("device {name:?} failed authentication (wrong key, or a replayed Auth)"),
            ));
        }
        self.writer.send(&Message::Welcome {
            heartbeat_s: self.config.heartbeat_s,
        })?;
        self.store
            .session_opened(&device, &self.peer.to_string(), &agent)?;
        log::info!("{name} ({}): connected, agent {agent}", self.peer);
        Ok(device)
    }

    fn serve_device(&mut self, device: &DeviceRecord) -> Result<(), End> {
        // What this session told the device to run, by role.
        let mut offered: Vec<Offer> = Vec::new();
        let mut generation = None;
        let mut last_rx = Instant::now();
        let mut pending: Option<Message> = None;
        loop {
            if self.shutdown.is_triggered() {
                return Ok(());
            }
            let gen_now = self.store.generation();
            if generation != Some(gen_now) {
                generation = Some(gen_now);
                let desired = self.store.offers(device)?;
                for o in &desired {
                    if !offered.contains(o) {
                        self.writer.send(&Message::ModelOffer {
                            push: o.push,
                            model: o.model.clone(),
                            size: o.size,
                            role: o.role,
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
                        if last_rx.elapsed() > self.config.idle_timeout {
                            return Err(End::Failed(format!(
                                "no message for {} s",
                                self.config.idle_timeout.as_secs()
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
                    self.store.store_reports(device, &batch)?;
                    let acks: Vec<Message> =
                        batch.iter().map(|&(seq, _)| Message::Ack { seq }).collect();
                    self.writer.send_all(&acks)?;
                }
                Message::Heartbeat { model } => self.store.heartbeat(device, model.as_ref())?,
                Message::Fetch { push, offset } => match offered.iter().find(|o| o.push == push) {
                    Some(o) if offset <= o.size => {
                        let o = o.clone();
                        self.stream_chunks(&o, offset)?;
                    }
                    _ => self.writer.send(&Message::Cancel {
                        push,
                        reason: format!("push {push} is not offered to this device (any more)"),
                    })?,
                },
                Message::Installed { push } => {
                    self.store.install_outcome(device, push, Ok(()))?;
                    log::info!("{}: installed push {push}", device.name);
                }
                Message::Rejected { push, reason } => {
                    self.store.install_outcome(device, push, Err(&reason))?;
                    log::warn!("{}: rejected push {push}: {reason}", device.name);
                }
                Message::RolledBack { from, to, reason } => {
                    self.store.rolled_back(device, &from, &to, &reason)?;
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
        let mut buf = Vec::with_capacity(self.config.chunk_bytes);
        while offset < offer.size {
            if self.shutdown.is_triggered() {
                return Ok(());
            }
            self.store
                .read_chunk(offer.push, offset, self.config.chunk_bytes, &mut buf)?;
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
            buf = Vec::with_capacity(self.config.chunk_bytes);
            offset += n;
        }
        Ok(())
    }
}
