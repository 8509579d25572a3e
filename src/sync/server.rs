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
//!
//! This file holds the accept loop and its limits; a session is in `session`, the
//! [`Store`] it works through in `store`.

mod session;
mod store;

pub use store::{DeviceRecord, Offer, Outcome, Store, StoreError};

use super::{HANDSHAKE_MAX_PAYLOAD, Message, frame};
use session::run_session;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
