//! The fleet (feature `host`): devices, pushes of models to them, their metrics and
//! events, in the registry's SQLite database (layout 4): the sync server's store
//! ([`store`]), alert rules over the stored reports ([`alerts`]), quality-gated rollouts
//! ([`rollout`], judged by [`gates`]), the host signing key ([`keys`]), and the web
//! dashboard and Prometheus endpoint ([`web`]).
//!
//! Pushed artifacts (signed, so their bytes differ from the registry's) are kept
//! content-addressed beside the database in `pushes/<sha256>.perch`.
//!
//! [`Fleet`] is one connection; its methods are written by concern: `devices` (register,
//! select, status, contact, events), `pushes` (sign, assign, offer, install outcomes and
//! retries), `reports` (metrics windows, labelled samples, retention), and `schema` (the
//! fleet's tables in the registry's database).

pub mod alerts;
pub mod gates;
pub mod keys;
pub mod rollout;
pub(crate) mod schema;
pub mod store;
pub mod web;

mod devices;
mod pushes;
mod reports;
#[cfg(test)]
mod tests;

pub use crate::util::now_unix_s;
pub use devices::{Device, DeviceStatus, Event};
pub use pushes::{Push, RETRY_ATTEMPTS, RETRY_FIRST_S, RETRY_MAX_S, role_name};
pub use reports::{LatencyTotals, Pruned, Retention, StoredReport};
pub use store::FleetStore;

use reports::decode_report;

use crate::registry::Registry;
use crate::util::{SqliteError, sqlite_error};
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// Seconds without a heartbeat or report after which a device counts as silent.
pub const SILENT_AFTER_S: i64 = 90;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The database failed.
    #[error("fleet database {path:?}: {error}")]
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// The cause.
        error: rusqlite::Error,
    },
    /// Opening or migrating the database through the registry failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// A pushed artifact could not be written or read.
    #[error("{path:?}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// No device of that name.
    #[error("unknown device {name:?} (known devices: {known:?})")]
    UnknownDevice {
        /// Requested name.
        name: String,
        /// Registered names.
        known: Vec<String>,
    },
    /// No device in that group.
    #[error("group {group:?} has no devices (groups: {known:?})")]
    EmptyGroup {
        /// Requested group.
        group: String,
        /// Groups with devices.
        known: Vec<String>,
    },
    /// A device of that name exists already.
    #[error("device {0:?} exists already")]
    DeviceExists(String),
    /// A device name that cannot be used.
    #[error("invalid device name {0:?}: use letters, digits, '-', '_' and '.' (1-64 characters)")]
    BadName(String),
    /// The OS gave no randomness for a key.
    #[error("no randomness for a device key: {0}")]
    Random(String),
    /// The host key file is damaged.
    #[error(
        "{path:?}: damaged host key ({reason}); restore it from a backup (devices trust only this key)"
    )]
    DamagedKey {
        /// Key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A version cannot be pushed.
    #[error("cannot push {model}: {reason}")]
    NotPushable {
        /// The reference.
        model: String,
        /// Why.
        reason: String,
    },
    /// A value could not be encoded for storage.
    #[error("cannot encode for the fleet database: {0}")]
    Encode(String),
    /// An alert rules file cannot be read.
    #[error("alert rules {path:?}: cannot read the file")]
    RulesUnreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An alert rules file is not valid TOML or has a key perch does not know.
    #[error("alert rules {path:?}: {reason}")]
    RulesSyntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and its line).
        reason: String,
    },
    /// An alert rule has a value out of its range.
    #[error("alert rules {path:?}: {key} = {value}: {reason}")]
    BadRule {
        /// The file.
        path: PathBuf,
        /// The key, as `section.key`.
        key: String,
        /// The value found.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// A stored report does not decode.
    #[error("stored report of device {device} seq {seq} is damaged: {reason}")]
    DamagedReport {
        /// Device id.
        device: i64,
        /// Sequence number.
        seq: u64,
        /// Decoder message.
        reason: String,
    },
}

impl SqliteError for FleetError {
    fn sqlite(path: PathBuf, error: rusqlite::Error) -> FleetError {
        FleetError::Sqlite { path, error }
    }
}

/// A connection to the fleet tables.
pub struct Fleet {
    conn: Connection,
    path: PathBuf,
    pushes_dir: PathBuf,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("path", &self.path).finish()
    }
}

impl Fleet {
    /// Opens the database at `path` (the registry's), creating or migrating it first.
    ///
    /// # Errors
    /// When the database cannot be opened, created or migrated.
    pub fn open(path: impl AsRef<Path>) -> Result<Fleet, FleetError> {
        let path = path.as_ref().to_path_buf();
        drop(Registry::open(&path)?);
        let sql = sqlite_error::<FleetError>(&path);
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        // WAL lets `perch-host push` write while `serve` reads. FULL syncs the WAL at every
        // commit: a report is acknowledged only after its transaction commits, and the
        // device then deletes it, so a commit must survive a power cut (NORMAL's does not).
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sql)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Fleet {
            conn,
            pushes_dir: dir.join("pushes"),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory beside the database holding host files (keys, pushed artifacts).
    pub fn dir(&self) -> PathBuf {
        self.pushes_dir
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> FleetError + '_ {
        sqlite_error(&self.path)
    }
}
