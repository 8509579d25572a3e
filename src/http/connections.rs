//! The open connections: the connection limit, and which connection gives up its slot
//! (the one that has waited longest without a request in hand, after [`EVICT_AFTER`]) when
//! a new one arrives and every slot is taken.

use super::EVICT_AFTER;
use std::net::{Shutdown as SocketShutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The open connections, for the connection limit and for eviction.
#[derive(Default)]
pub(super) struct Connections {
    open: Mutex<Vec<Tracked>>,
    next_id: AtomicU64,
}

struct Tracked {
    id: u64,
    /// A handle on the socket, to shut it down when the connection is evicted.
    stream: TcpStream,
    /// A request has been read and is being answered: the connection is not evicted.
    busy: bool,
    /// When the connection was accepted or last answered a request.
    since: Instant,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Tracked>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot for `stream`: a free one, else the slot of the connection that has
    /// waited longest without a request in hand (shut down), if that is over
    /// [`EVICT_AFTER`]. `None`: every slot is in use.
    pub(super) fn admit(self: &Arc<Self>, stream: &TcpStream, max: usize) -> Option<Slot> {
        let handle = stream.try_clone().ok()?;
        let mut open = self.lock();
        if open.len() >= max.max(1) {
            let victim = open
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.busy && c.since.elapsed() >= EVICT_AFTER)
                .min_by_key(|(_, c)| c.since)
                .map(|(i, _)| i)?;
            let evicted = open.swap_remove(victim);
            log::debug!("http: all {max} connections in use; closing the one idle longest");
            let _ = evicted.stream.shutdown(SocketShutdown::Both);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        open.push(Tracked {
            id,
            stream: handle,
            busy: false,
            since: Instant::now(),
        });
        Some(Slot {
            connections: self.clone(),
            id,
        })
    }
}

/// A connection's place among the open ones; given back when the connection thread ends.
pub(super) struct Slot {
    connections: Arc<Connections>,
    id: u64,
}

impl Slot {
    /// Marks the connection as answering a request (`true`) or waiting for one.
    pub(super) fn set_busy(&self, busy: bool) {
        if let Some(c) = self.connections.lock().iter_mut().find(|c| c.id == self.id) {
            c.busy = busy;
            c.since = Instant::now();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().retain(|c| c.id != self.id);
    }
}
