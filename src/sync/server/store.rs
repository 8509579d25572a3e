//! What sessions need of the host: the [`Store`] of devices, reports, pushes and events
//! (the fleet's database implements it; tests use memory), and the values that cross it.

use crate::metrics::Report;
use crate::sync::{ModelRef, Role, auth};

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
    /// The registered device called `name` (a name [`crate::sync::valid_name`] accepts).
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
