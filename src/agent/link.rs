//! The agent's session with the host: connect (with exponential backoff and jitter while
//! the host is unreachable), send queued reports until acknowledged, answer model offers by
//! downloading from where the last download stopped, install, and say how it went.
//!
//! An offer is checked before a byte is fetched: the host's signed manifest must name what
//! the offer names, its release must not be older than the newest this device installed,
//! and a model the device went back from comes back only under a newer release.

use super::daemon::{Refusal, Shared, failpoint, failpoint_panic_once, lock};
use crate::artifact::Manifest;
use crate::sync::client::{self, ClientError, Credentials, Link};
use crate::sync::server::Shutdown;
use crate::sync::{ConnectionError, Message, ModelRef, Received, Role};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Reports sent and not yet acknowledged, at most.
const IN_FLIGHT: usize = 64;

/// How long to wait for the host during the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wake-up period of the session loop.
const POLL: Duration = Duration::from_millis(100);

/// A session that lasted this long resets the reconnection delay; shorter ones (a host
/// that drops the link at once, a session replaced by a clone of this device) let it grow.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Exponential backoff with full jitter: each delay is uniform in `[d/2, d]`, `d` doubling
/// from `initial` up to `max`.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let r: [u8; 4] = crate::sync::auth::random().unwrap_or([0x80; 4]);
        let unit = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
        d.mul_f64(0.5 + 0.5 * unit)
    }
}

/// Keeps a session with the host open until `shutdown`.
pub(crate) fn run(shared: &Shared, shutdown: &Shutdown) {
    let cfg = &shared.config;
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let agent = format!("perch {}", env!("CARGO_PKG_VERSION"));
    let epoch = lock(&shared.queue).epoch();
    let who = Credentials {
        device: &cfg.device,
        key: &cfg.key,
        agent: &agent,
        epoch,
    };
    while !shutdown.is_triggered() {
        match client::connect(&cfg.host, &who, HANDSHAKE_TIMEOUT, POLL) {
            Ok(link) => {
                {
                    let mut s = lock(&shared.link);
                    s.connected = true;
                    s.sessions += 1;
                    s.last_error = None;
                }
                log::info!("connected to {}", cfg.host);
                failpoint_panic_once("link:after-connect");
                let opened = Instant::now();
                let end = Session::new(shared, link).run(shutdown);
                if opened.elapsed() >= STABLE_SESSION {
                    backoff.reset();
                }
                let mut s = lock(&shared.link);
                s.connected = false;
                match end {
                    Ok(()) => {}
                    Err(e) => {
                        log::warn!("link to {} lost: {e}", cfg.host);
                        s.last_error = Some(e);
                    }
                }
            }
            Err(e) => {
                if matches!(e, ClientError::Refused(_) | ClientError::NotTheHost { .. }) {
                    log::error!("{e}");
                } else {
                    log::info!("host unreachable: {e}");
                }
                lock(&shared.link).last_error = Some(e.to_string());
            }
        }
        let wait = backoff.next();
        let until = Instant::now() + wait;
        while Instant::now() < until && !shutdown.is_triggered() {
            std::thread::sleep(POLL.min(until - Instant::now()));
        }
    }
}

/// A download under way.
struct Download {
    push: u64,
    model: ModelRef,
    size: u64,
    have: u64,
    role: Role,
    release: u64,
}

/// An offer waiting for the download before it to finish.
struct Queued {
    push: u64,
    model: ModelRef,
    size: u64,
    role: Role,
    manifest: Vec<u8>,
}

struct Session<'a> {
    shared: &'a Shared,
    link: Link,
    in_flight: BTreeSet<u64>,
    download: Option<Download>,
    queued: VecDeque<Queued>,
    last_sent: Instant,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, link: Link) -> Self {
        Session {
            shared,
            link,
            in_flight: BTreeSet::new(),
            download: None,
            queued: VecDeque::new(),
            last_sent: Instant::now(),
        }
    }

    fn send(&mut self, m: &Message) -> Result<(), String> {
        self.link.writer.send(m).map_err(|e| e.to_string())?;
        self.last_sent = Instant::now();
        Ok(())
    }

    fn heartbeat(&mut self) -> Result<(), String> {
        let model = lock(&self.shared.serving).active_ref().cloned();
        self.send(&Message::Heartbeat { model })
    }

    fn run(mut self, shutdown: &Shutdown) -> Result<(), String> {
        self.heartbeat()?;
        let heartbeat = Duration::from_secs(u64::from(self.link.heartbeat_s.max(1)));
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            self.send_reports()?;
            let notices = lock(&self.shared.store).notices().to_vec();
            if !notices.is_empty() {
                for n in &notices {
                    self.send(&Message::RolledBack {
                        from: n.from.clone(),
                        to: n.to.clone(),
                        reason: n.reason.clone(),
                    })?;
                }
                if let Err(e) = lock(&self.shared.store).notices_sent(notices.len()) {
                    log::error!("{e}");
                }
                self.heartbeat()?;
            }
            match self.link.reader.read() {
                Ok(Received::Message(m)) => self.handle(m)?,
                Ok(Received::Idle) => {}
                Err(ConnectionError::Closed) => return Err("the host closed the link".into()),
                Err(e) => return Err(e.to_string()),
            }
            if self.last_sent.elapsed() >= heartbeat {
                self.heartbeat()?;
            }
        }
    }

    /// Sends queued reports not yet in flight, oldest first.
    fn send_reports(&mut self) -> Result<(), String> {
        if self.in_flight.len() >= IN_FLIGHT {
            return Ok(());
        }
        let room = IN_FLIGHT - self.in_flight.len();
        let batch: Vec<Message> = {
            let mut queue = lock(&self.shared.queue);
            let seqs: Vec<u64> = queue
                .pending_seqs()
                .filter(|seq| !self.in_flight.contains(seq))
                .take(room)
                .collect();
            seqs.into_iter()
                .filter_map(|seq| {
                    queue
                        .get(seq)
                        .map(|report| Message::metrics(self.link.protocol, seq, report))
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        for m in &batch {
            if let Message::Metrics { seq, .. } | Message::MetricsV2 { seq, .. } = m {
                self.in_flight.insert(*seq);
            }
        }
        self.link
            .writer
            .send_all(&batch)
            .map_err(|e| e.to_string())?;
        self.last_sent = Instant::now();
        Ok(())
    }

    fn handle(&mut self, m: Message) -> Result<(), String> {
        match m {
            Message::Ack { seq } => {
                self.in_flight.remove(&seq);
                if let Err(e) = lock(&self.shared.queue).ack(seq) {
                    log::error!("cannot remove acknowledged report {seq}: {e}");
                }
            }
            Message::ModelOffer {
                push,
                model,
                size,
                role,
                manifest,
            } => {
                let offer = Queued {
                    push,
                    model,
                    size,
                    role,
                    manifest,
                };
                if self.download.is_some() {
                    // One download at a time; a newer offer for the same role replaces a
                    // queued one.
                    self.queued.retain(|q| q.role != role);
                    self.queued.push_back(offer);
                } else {
                    self.offer(offer)?;
                }
            }
            Message::Chunk {
                push,
                offset,
                bytes,
            } => {
                self.chunk(push, offset, &bytes)?;
                self.next_queued()?;
            }
            Message::Cancel { push, reason } => {
                self.queued.retain(|q| q.push != push);
                if let Some(d) = self.download.take_if(|d| d.push == push) {
                    log::info!("push {push} cancelled by the host: {reason}");
                    lock(&self.shared.store).discard_partial(&d.model.sha256);
                    self.next_queued()?;
                } else if let Some(model) = self.shared.end_shadow(push) {
                    // Keep the verified file only if it is about to become the active model.
                    let store = lock(&self.shared.store);
                    if store.active() != Some(&model) {
                        store.discard_partial(&model.sha256);
                    }
                }
            }
            Message::Refused { reason } => return Err(format!("host ended the session: {reason}")),
            other => return Err(format!("unexpected {} from the host", other.name())),
        }
        Ok(())
    }

    fn next_queued(&mut self) -> Result<(), String> {
        while self.download.is_none() {
            let Some(q) = self.queued.pop_front() else {
                return Ok(());
            };
            self.offer(q)?;
        }
        Ok(())
    }

    fn reject(&mut self, push: u64, refusal: Refusal) -> Result<(), String> {
        self.send(&Message::Rejected {
            push,
            reason: refusal.reason,
            transient: refusal.transient,
        })
    }

    /// The manifest's release when the offer may be installed; otherwise why not.
    fn check_offer(&self, offer: &Queued) -> Result<u64, Refusal> {
        let model = &offer.model;
        let m = Manifest::verify(&offer.manifest, &self.shared.config.host_public_key)
            .map_err(|e| Refusal::permanent(format!("the offer's manifest: {e}")))?;
        if let Some((field, offered, signed)) =
            m.differs_from(&model.name, &model.version, &model.sha256, offer.size)
        {
            return Err(Refusal::permanent(format!(
                "the offer's {field} is {offered} but the host's signed manifest says {signed} (relabelled?)"
            )));
        }
        crate::graph::budget::check_stated(
            &m.requirements,
            self.shared.config.max_model_memory_bytes,
        )
        .map_err(|e| {
            Refusal::permanent(format!(
                "{e} (stated in the offer's signed manifest; max_model_memory_bytes in this device's configuration)"
            ))
        })?;
        let store = lock(&self.shared.store);
        let floor = store.release_floor();
        if m.release < floor {
            return Err(Refusal::permanent(format!(
                "{}@{} is release {}, older than release {floor} this device installed (an old offer sent again?); push it again to sign a new release",
                model.name, model.version, m.release
            )));
        }
        if let Some((reason, release)) = store.refused(&model.sha256)
            && m.release <= release
        {
            return Err(Refusal::permanent(format!(
                "this device went back from that model before: {reason}; push it again to try it once more"
            )));
        }
        if m.rollback && offer.role == Role::Active {
            log::info!(
                "the host goes back to {}@{} on purpose (release {})",
                model.name,
                model.version,
                m.release
            );
        }
        Ok(m.release)
    }

    fn offer(&mut self, offer: Queued) -> Result<(), String> {
        let release = match self.check_offer(&offer) {
            Ok(r) => r,
            Err(refusal) => {
                log::warn!(
                    "refused the offer of {}@{} (push {}): {}",
                    offer.model.name,
                    offer.model.version,
                    offer.push,
                    refusal.reason
                );
                return self.reject(offer.push, refusal);
            }
        };
        let Queued {
            push,
            model,
            size,
            role,
            ..
        } = offer;
        let store = lock(&self.shared.store);
        let running = match role {
            Role::Active => store.active() == Some(&model),
            Role::Shadow => {
                lock(&self.shared.serving).shadow().map(|s| &s.reference) == Some(&model)
            }
        };
        if running {
            drop(store);
            return self.send(&Message::Installed { push });
        }
        if size > self.shared.config.max_model_bytes {
            drop(store);
            let reason = format!(
                "artifact of {size} bytes is larger than this device's limit of {}",
                self.shared.config.max_model_bytes
            );
            return self.reject(push, Refusal::permanent(reason));
        }
        let staged = role == Role::Active && store.has_model_file(&model.sha256);
        let mut have = store.partial_len(&model.sha256);
        if have > size {
            store.discard_partial(&model.sha256);
            have = 0;
        }
        drop(store);
        log::info!(
            "offered {}@{} ({size} bytes, push {push}, {}), {have} bytes already here",
            model.name,
            model.version,
            role_name(role)
        );
        if staged || have == size {
            return self.finish(push, &model, role, release);
        }
        self.download = Some(Download {
            push,
            model,
            size,
            have,
            role,
            release,
        });
        self.send(&Message::Fetch { push, offset: have })
    }

    fn chunk(&mut self, push: u64, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let Some(d) = self.download.as_mut().filter(|d| d.push == push) else {
            return Ok(());
        };
        if offset + bytes.len() as u64 > d.size {
            let model = d.model.clone();
            self.download = None;
            lock(&self.shared.store).discard_partial(&model.sha256);
            let reason = format!("chunk at {offset} runs past the announced size");
            return self.reject(push, Refusal::permanent(reason));
        }
        let appended = lock(&self.shared.store).append(&d.model.sha256, offset, bytes);
        match appended {
            Ok(have) => d.have = have,
            Err(e @ super::store::StoreError::OutOfOrder { .. }) => {
                // A chunk that does not continue the file: ask again from where it stands.
                log::warn!("{e}");
                let have = lock(&self.shared.store).partial_len(&d.model.sha256);
                d.have = have;
                return self.send(&Message::Fetch { push, offset: have });
            }
            Err(e) => {
                // The device's storage failed (a full disk): give the space back, and let
                // the host offer it again later.
                let model = d.model.clone();
                self.download = None;
                lock(&self.shared.store).discard_partial(&model.sha256);
                log::error!("download of push {push} stopped: {e}");
                return self.reject(
                    push,
                    Refusal::transient(format!("cannot store the download: {e}")),
                );
            }
        }
        if d.have == d.size {
            let (model, role, release) = (d.model.clone(), d.role, d.release);
            self.download = None;
            failpoint("install:after-download");
            return self.finish(push, &model, role, release);
        }
        Ok(())
    }

    fn finish(
        &mut self,
        push: u64,
        model: &ModelRef,
        role: Role,
        release: u64,
    ) -> Result<(), String> {
        let result = match role {
            Role::Active => self.shared.install(model, release),
            Role::Shadow => self.shared.install_shadow(model, push),
        };
        match result {
            Ok(()) => {
                self.send(&Message::Installed { push })?;
                self.heartbeat()
            }
            Err(refusal) => {
                log::warn!(
                    "refused {}@{} (push {push}): {}",
                    model.name,
                    model.version,
                    refusal.reason
                );
                self.reject(push, refusal)
            }
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Shadow => "shadow",
    }
}
