//! The fleet (feature `host`): devices, pushes of models to them, their metrics and
//! events, in the registry's SQLite database (layout 4): the sync server's store
//! ([`store`]), alert rules over the stored reports ([`alerts`]), quality-gated rollouts
//! ([`rollout`], judged by [`gates`]), the host signing key ([`keys`]), and the web
//! dashboard and Prometheus endpoint ([`web`]).
//!
//! Pushed artifacts (signed, so their bytes differ from the registry's) are kept
//! content-addressed beside the database in `pushes/<sha256>.perch`.

pub mod alerts;
pub mod gates;
pub mod keys;
pub mod rollout;
pub(crate) mod schema;
pub mod store;
pub mod web;

pub use crate::util::now_unix_s;
pub use store::FleetStore;

use crate::artifact::Manifest;
use crate::metrics::Report;
use crate::registry::Registry;
use crate::sync::{self, ModelRef, Role};
use crate::util::{SqliteError, from_hex, sqlite_error, to_hex, write_transaction};
use rusqlite::{Connection, OptionalExtension, params};
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

/// Moves the counter that sessions poll to learn that what devices should run changed.
fn bump_generation(tx: &Connection) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE counters SET value = value + 1 WHERE name = 'generation'",
        [],
    )
    .map(drop)
}

impl SqliteError for FleetError {
    fn sqlite(path: PathBuf, error: rusqlite::Error) -> FleetError {
        FleetError::Sqlite { path, error }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Database id.
    pub id: i64,
    /// Name (the device id in the protocol).
    pub name: String,
    /// Group.
    pub group: String,
    /// Shared secret for the handshake.
    pub key: [u8; sync::auth::KEY_LEN],
}

/// A device as `perch-host devices` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceStatus {
    /// Name.
    pub name: String,
    /// Group.
    pub group: String,
    /// Model the device last said it runs.
    pub model: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Last contact, seconds since the Unix epoch.
    pub last_seen_unix_s: Option<i64>,
    /// `ok`, `never seen`, `silent`, `errors` (error rate above 5% in its last report) or
    /// `installing` / `rejected: …` for a push in progress or refused.
    pub health: String,
    /// The push assigned to it and its state.
    pub assignment: Option<String>,
}

/// A model prepared for devices: signed bytes on disk, and which registry version they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Push id (sent in `ModelOffer`).
    pub id: u64,
    /// What it is.
    pub model: ModelRef,
    /// Size in bytes.
    pub size: u64,
    /// Where the bytes are.
    pub path: PathBuf,
    /// The host's signed manifest (`crate::artifact::manifest`); empty for a push made
    /// before manifests, which cannot be offered.
    pub manifest: Vec<u8>,
    /// The manifest's release number (0 without one).
    pub release: u64,
}

/// How long a device may keep sending the same push back for a passing cause: the delay
/// before the next offer doubles from [`RETRY_FIRST_S`] up to [`RETRY_MAX_S`], and after
/// [`RETRY_ATTEMPTS`] refusals the push counts as rejected.
pub const RETRY_ATTEMPTS: i64 = 8;
/// First delay before a push refused for a passing cause is offered again.
pub const RETRY_FIRST_S: i64 = 30;
/// Longest delay between two offers of a push refused for a passing cause.
pub const RETRY_MAX_S: i64 = 3600;

/// What the host keeps of the fleet's history, and for how long (`[retention]` in the rules
/// file, docs/alerts.md). Older rows are deleted by `perch-host serve` every hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Days metrics reports are kept.
    pub metrics_days: u32,
    /// Days labelled feedback samples are kept.
    pub samples_days: u32,
    /// Most labelled feedback samples kept (the oldest go first).
    pub max_samples: u64,
    /// Days events (installs, refusals, refused connections…) are kept.
    pub events_days: u32,
    /// Most events kept (the oldest go first).
    pub max_events: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            metrics_days: 90,
            samples_days: 90,
            max_samples: 500_000,
            events_days: 90,
            max_events: 100_000,
        }
    }
}

impl Retention {
    /// Checks the values: days in 1..=36500, row limits at least 1,000.
    ///
    /// # Errors
    /// The key and what is wrong.
    pub fn check(&self) -> Result<(), (String, String, String)> {
        for (key, days) in [
            ("metrics_days", self.metrics_days),
            ("samples_days", self.samples_days),
            ("events_days", self.events_days),
        ] {
            if !(1..=36_500).contains(&days) {
                return Err((key.into(), days.to_string(), "days from 1 to 36500".into()));
            }
        }
        for (key, n) in [
            ("max_samples", self.max_samples),
            ("max_events", self.max_events),
        ] {
            if n < 1000 {
                return Err((key.into(), n.to_string(), "at least 1000".into()));
            }
        }
        Ok(())
    }
}

/// Rows deleted by [`Fleet::apply_retention`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Metrics reports.
    pub metrics: u64,
    /// Labelled feedback samples.
    pub samples: u64,
    /// Events.
    pub events: u64,
}

/// An event in a device's history (install, rejection, rollback, refused connection…).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub unix_s: i64,
    /// Device name (also for unknown devices that tried to connect).
    pub device: Option<String>,
    /// Kind: `installed`, `rejected`, `rolled-back`, `auth-failed`, `unknown-device`,
    /// `protocol-error`, `connected`.
    pub kind: String,
    /// Details.
    pub detail: String,
}

/// One stored metrics report.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    /// The device's run: its boot epochs numbered in the order the host saw them (0 first).
    pub run: u64,
    /// Sequence number (unique within a run).
    pub seq: u64,
    /// When it arrived.
    pub received_unix_s: i64,
    /// The report.
    pub report: Report,
}

/// The database's name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Shadow => "shadow",
    }
}

fn valid_name(name: &str) -> bool {
    sync::valid_name(name)
}

/// Decodes a stored report blob (the one place that knows its encoding).
fn decode_report(device: i64, seq: i64, blob: &[u8]) -> Result<Report, FleetError> {
    postcard::from_bytes(blob).map_err(|e| FleetError::DamagedReport {
        device,
        seq: seq as u64,
        reason: e.to_string(),
    })
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

    /// Registers a device with a fresh random key.
    ///
    /// # Errors
    /// A bad or taken name, database failures.
    pub fn add_device(&mut self, name: &str, group: &str) -> Result<Device, FleetError> {
        if !valid_name(name) {
            return Err(FleetError::BadName(name.to_string()));
        }
        if !valid_name(group) {
            return Err(FleetError::BadName(group.to_string()));
        }
        if self.device(name)?.is_some() {
            return Err(FleetError::DeviceExists(name.to_string()));
        }
        let key: [u8; sync::auth::KEY_LEN] =
            sync::auth::random().map_err(|e| FleetError::Random(e.to_string()))?;
        self.conn
            .execute(
                "INSERT INTO devices (name, grp, key, created_unix_s) VALUES (?1, ?2, ?3, ?4)",
                params![name, group, &key[..], now_unix_s()],
            )
            .map_err(self.sql())?;
        Ok(Device {
            id: self.conn.last_insert_rowid(),
            name: name.to_string(),
            group: group.to_string(),
            key,
        })
    }

    /// The device called `name`, if registered.
    ///
    /// # Errors
    /// Database failures.
    pub fn device(&self, name: &str) -> Result<Option<Device>, FleetError> {
        self.conn
            .query_row(
                "SELECT id, name, grp, key FROM devices WHERE name = ?1",
                [name],
                |r| {
                    let key: Vec<u8> = r.get(3)?;
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, key))
                },
            )
            .optional()
            .map_err(self.sql())
            .map(|row| {
                row.and_then(|(id, name, group, key)| {
                    Some(Device {
                        id,
                        name,
                        group,
                        key: key.try_into().ok()?,
                    })
                })
            })
    }

    fn names(&self, sql: &str) -> Result<Vec<String>, FleetError> {
        let mut stmt = self.conn.prepare(sql).map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(self.sql())?
            .collect::<Result<Vec<String>, _>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// Every registered device name, sorted.
    ///
    /// # Errors
    /// Database failures.
    pub fn device_names(&self) -> Result<Vec<String>, FleetError> {
        self.names("SELECT name FROM devices ORDER BY name")
    }

    /// Removes a device with its assignments, metrics and events.
    ///
    /// # Errors
    /// An unknown device, database failures.
    pub fn remove_device(&mut self, name: &str) -> Result<(), FleetError> {
        let n = self
            .conn
            .execute("DELETE FROM devices WHERE name = ?1", [name])
            .map_err(self.sql())?;
        if n == 0 {
            return Err(FleetError::UnknownDevice {
                name: name.to_string(),
                known: self.device_names()?,
            });
        }
        Ok(())
    }

    /// The devices push `push` is assigned to, with the state of each (`pending`,
    /// `installed`, `rejected`, `rolled-back`, or `replaced` when a later push took its
    /// place) and the reason of a refusal.
    ///
    /// # Errors
    /// Database failures.
    pub fn push_states(
        &self,
        push: u64,
    ) -> Result<Vec<(String, String, Option<String>)>, FleetError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.name, COALESCE(a.state, 'replaced'), a.reason
                 FROM push_targets t JOIN devices d ON d.id = t.device_id
                 LEFT JOIN assignments a ON a.device_id = t.device_id AND a.push_id = ?1
                 WHERE t.push_id = ?1 ORDER BY d.name",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([push as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// Devices named `names`, or every device of `group`.
    ///
    /// # Errors
    /// An unknown name or an empty group.
    pub fn select(&self, names: &[String], group: Option<&str>) -> Result<Vec<Device>, FleetError> {
        let mut out = Vec::new();
        for n in names {
            match self.device(n)? {
                Some(d) => out.push(d),
                None => {
                    return Err(FleetError::UnknownDevice {
                        name: n.clone(),
                        known: self.names("SELECT name FROM devices ORDER BY name")?,
                    });
                }
            }
        }
        if let Some(g) = group {
            let members = {
                let mut stmt = self
                    .conn
                    .prepare("SELECT name FROM devices WHERE grp = ?1 ORDER BY name")
                    .map_err(self.sql())?;
                stmt.query_map([g], |r| r.get::<_, String>(0))
                    .map_err(self.sql())?
                    .collect::<Result<Vec<String>, _>>()
                    .map_err(self.sql())?
            };
            if members.is_empty() {
                return Err(FleetError::EmptyGroup {
                    group: g.to_string(),
                    known: self.names("SELECT DISTINCT grp FROM devices ORDER BY grp")?,
                });
            }
            for m in members {
                if let Some(d) = self.device(&m)? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Every device with its model, last contact and health, by name.
    ///
    /// # Errors
    /// Database failures.
    pub fn devices(&self) -> Result<Vec<DeviceStatus>, FleetError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.id, d.name, d.grp, d.model_name, d.model_version, d.last_seen_unix_s,
                        a.state, a.reason, p.name, p.version,
                        (SELECT requests || ' ' || errors FROM metrics m WHERE m.device_id = d.id
                         ORDER BY run DESC, seq DESC LIMIT 1)
                 FROM devices d
                 LEFT JOIN assignments a ON a.device_id = d.id AND a.role = 'active'
                 LEFT JOIN pushes p ON p.id = a.push_id
                 ORDER BY d.name",
            )
            .map_err(self.sql())?;
        let now = now_unix_s();
        let rows = stmt
            .query_map([], |r| {
                let last_seen: Option<i64> = r.get(5)?;
                let state: Option<String> = r.get(6)?;
                let reason: Option<String> = r.get(7)?;
                let pushed: Option<String> = match (
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ) {
                    (Some(n), Some(v)) => Some(format!("{n}@{v}")),
                    _ => None,
                };
                let last: Option<String> = r.get(10)?;
                let error_rate = last.and_then(|t| {
                    let (a, b) = t.split_once(' ')?;
                    let (req, err): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
                    (req > 0.0).then(|| err / req)
                });
                let health = match (last_seen, state.as_deref()) {
                    (None, _) => "never seen".to_string(),
                    (Some(t), _) if now - t > SILENT_AFTER_S => format!("silent for {}s", now - t),
                    (_, Some("rejected")) => {
                        format!("rejected: {}", reason.clone().unwrap_or_default())
                    }
                    (_, Some("rolled-back")) => {
                        format!("rolled back: {}", reason.clone().unwrap_or_default())
                    }
                    (_, Some("pending")) => "installing".to_string(),
                    (_, Some("retrying")) => {
                        format!("install retrying: {}", reason.clone().unwrap_or_default())
                    }
                    _ if error_rate.is_some_and(|e| e > 0.05) => "errors".to_string(),
                    _ => "ok".to_string(),
                };
                Ok(DeviceStatus {
                    name: r.get(1)?,
                    group: r.get(2)?,
                    model: r.get(3)?,
                    version: r.get(4)?,
                    last_seen_unix_s: last_seen,
                    health,
                    assignment: pushed.map(|p| format!("{p} ({})", state.unwrap_or_default())),
                })
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// The next release number for a manifest: larger than any given before, and at least
    /// the time in Unix seconds (so a database restored from a backup still numbers its
    /// next manifests above those the devices installed since).
    ///
    /// # Errors
    /// Database failures.
    pub fn next_release(&mut self) -> Result<u64, FleetError> {
        let release: i64 = self
            .conn
            .query_row(
                "UPDATE counters SET value = MAX(value + 1, ?1) WHERE name = 'release'
                 RETURNING value",
                [now_unix_s()],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        Ok(release as u64)
    }

    /// Signs `bytes` (a signed artifact) as a push of `name@version` with the host's key:
    /// a manifest with the next release number, marked as a deliberate step back when
    /// `rollback`, then stored with [`Fleet::create_push`].
    ///
    /// # Errors
    /// File, database or encoding failures.
    pub fn sign_push(
        &mut self,
        name: &str,
        version: &str,
        bytes: &[u8],
        version_id: Option<i64>,
        key: &ed25519_dalek::SigningKey,
        rollback: bool,
    ) -> Result<Push, FleetError> {
        use sha2::{Digest, Sha256};
        let manifest = Manifest {
            format: crate::artifact::manifest::MANIFEST_FORMAT,
            name: name.to_string(),
            version: version.to_string(),
            release: self.next_release()?,
            sha256: Sha256::digest(bytes).into(),
            size_bytes: bytes.len() as u64,
            rollback,
            requirements: stated_requirements(bytes),
        };
        let signed = manifest
            .sign(key)
            .map_err(|e| FleetError::Encode(e.to_string()))?;
        self.create_signed_push(&manifest, &signed, bytes, version_id)
    }

    /// Stores signed artifact bytes as a push of `name@version`, under a manifest signed
    /// with the host key beside the database (made when there is none): what
    /// [`Fleet::sign_push`] does with that key, not as a rollback.
    ///
    /// # Errors
    /// Key, file or database failures.
    pub fn create_push(
        &mut self,
        name: &str,
        version: &str,
        bytes: &[u8],
        version_id: Option<i64>,
    ) -> Result<Push, FleetError> {
        let key = keys::load_or_create(&self.path)?;
        self.sign_push(name, version, bytes, version_id, &key, false)
    }

    /// Stores signed artifact bytes as a push under its signed manifest (`version_id` is the
    /// registry row they came from, when known). The bytes are written to
    /// `pushes/<sha256>.perch` first, flushed to disk.
    ///
    /// # Errors
    /// A manifest that does not describe `bytes`, file or database failures.
    pub fn create_signed_push(
        &mut self,
        manifest: &Manifest,
        signed_manifest: &[u8],
        bytes: &[u8],
        version_id: Option<i64>,
    ) -> Result<Push, FleetError> {
        use sha2::{Digest, Sha256};
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        if let Some((field, offered, signed)) =
            manifest.differs_from(&manifest.name, &manifest.version, &sha, bytes.len() as u64)
        {
            return Err(FleetError::NotPushable {
                model: format!("{}@{}", manifest.name, manifest.version),
                reason: format!("its manifest says {field} {signed}, the bytes have {offered}"),
            });
        }
        let hex = to_hex(&sha);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| FleetError::Io { path, error }
        };
        std::fs::create_dir_all(&self.pushes_dir).map_err(io(&self.pushes_dir))?;
        let path = self.pushes_dir.join(format!("{hex}.perch"));
        let tmp = self
            .pushes_dir
            .join(format!("{hex}.{}.tmp", std::process::id()));
        crate::registry::write_durably(&tmp, &path, bytes).map_err(io(&path))?;
        self.conn
            .execute(
                "INSERT INTO pushes (version_id, name, version, sha256, size_bytes, created_unix_s,
                   manifest, release)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    version_id,
                    manifest.name,
                    manifest.version,
                    hex,
                    bytes.len() as i64,
                    now_unix_s(),
                    signed_manifest,
                    manifest.release as i64
                ],
            )
            .map_err(self.sql())?;
        Ok(Push {
            id: self.conn.last_insert_rowid() as u64,
            model: ModelRef {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
                sha256: sha,
            },
            size: bytes.len() as u64,
            path,
            manifest: signed_manifest.to_vec(),
            release: manifest.release,
        })
    }

    /// Assigns push `push` to `devices` as their active model; the server offers it on their
    /// next contact.
    ///
    /// # Errors
    /// Database failures.
    pub fn assign(&mut self, push: u64, devices: &[Device]) -> Result<(), FleetError> {
        self.assign_role(push, devices, Role::Active)
    }

    /// Assigns push `push` to `devices` in `role` (a shadow replaces any earlier shadow).
    ///
    /// # Errors
    /// Database failures.
    pub fn assign_role(
        &mut self,
        push: u64,
        devices: &[Device],
        role: Role,
    ) -> Result<(), FleetError> {
        let sql = sqlite_error::<FleetError>(&self.path);
        write_transaction(&mut self.conn, &self.path, |tx| {
            for d in devices {
                tx.execute(
                    "INSERT OR IGNORE INTO push_targets (push_id, device_id) VALUES (?1, ?2)",
                    params![push as i64, d.id],
                )
                .map_err(sql)?;
                tx.execute(
                "INSERT INTO assignments (device_id, role, push_id, state, reason, updated_unix_s)
                 VALUES (?1, ?2, ?3, 'pending', NULL, ?4)
                 ON CONFLICT(device_id, role) DO UPDATE SET push_id = ?3, state = 'pending',
                   reason = NULL, updated_unix_s = ?4, attempts = 0, retry_at_unix_s = NULL",
                params![d.id, role_name(role), push as i64, now_unix_s()],
            )
            .map_err(sql)?;
            }
            bump_generation(tx).map_err(sql)?;
            Ok(())
        })
    }

    /// Ends the shadow runs of `devices` (their agents unload the shadow model).
    ///
    /// # Errors
    /// Database failures.
    pub fn clear_shadow(&mut self, devices: &[Device]) -> Result<(), FleetError> {
        let sql = sqlite_error::<FleetError>(&self.path);
        write_transaction(&mut self.conn, &self.path, |tx| {
            for d in devices {
                tx.execute(
                    "DELETE FROM assignments WHERE device_id = ?1 AND role = 'shadow'",
                    [d.id],
                )
                .map_err(sql)?;
            }
            bump_generation(tx).map_err(sql)?;
            Ok(())
        })
    }

    /// A counter that grows whenever what devices should run changes (the server polls it).
    ///
    /// # Errors
    /// Database failures.
    pub fn assignment_change(&self) -> Result<i64, FleetError> {
        self.conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'generation'",
                [],
                |r| r.get(0),
            )
            .map_err(self.sql())
    }

    /// What `device` should be offered now: its active push while not yet installed or
    /// refused, and its shadow push while the shadow run lasts (pending or installed).
    ///
    /// # Errors
    /// Database failures.
    pub fn offers(&self, device: i64) -> Result<Vec<(Push, Role)>, FleetError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.id, p.name, p.version, p.sha256, p.size_bytes, p.manifest, p.release,
                        a.role
                 FROM assignments a JOIN pushes p ON p.id = a.push_id
                 WHERE a.device_id = ?1 AND p.manifest IS NOT NULL AND (a.state = 'pending'
                   OR (a.role = 'shadow' AND a.state = 'installed'))
                 ORDER BY a.role",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([device], |r| {
                Ok((self.push_row(r)?, r.get::<_, String>(7)?))
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .filter_map(|(push, role)| {
                let role = if role == "shadow" {
                    Role::Shadow
                } else {
                    Role::Active
                };
                Some((push?, role))
            })
            .collect())
    }

    /// The push with id `id`.
    ///
    /// # Errors
    /// Database failures.
    pub fn push(&self, id: u64) -> Result<Option<Push>, FleetError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, name, version, sha256, size_bytes, manifest, release FROM pushes
                 WHERE id = ?1",
                [id as i64],
                |r| self.push_row(r),
            )
            .optional()
            .map_err(self.sql())?;
        Ok(row.flatten())
    }

    /// The push in the first seven columns of `r` (`id, name, version, sha256, size_bytes,
    /// manifest, release` of `pushes`); `None` when its digest is not hex (a damaged row).
    fn push_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Push>> {
        let hex: String = r.get(3)?;
        let Ok(sha256) = from_hex(&hex) else {
            return Ok(None);
        };
        Ok(Some(Push {
            id: r.get::<_, i64>(0)? as u64,
            model: ModelRef {
                name: r.get(1)?,
                version: r.get(2)?,
                sha256,
            },
            size: r.get::<_, i64>(4)? as u64,
            path: self.pushes_dir.join(format!("{hex}.perch")),
            manifest: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
            release: r.get::<_, Option<i64>>(6)?.unwrap_or(0) as u64,
        }))
    }

    /// Records the device's answer to push `push`: installed, or refused with a reason. A
    /// refusal for a passing cause is offered again after a delay that doubles each time
    /// ([`RETRY_FIRST_S`] up to [`RETRY_MAX_S`]), at most [`RETRY_ATTEMPTS`] times.
    ///
    /// # Errors
    /// Database failures.
    pub fn record_install(
        &mut self,
        device: &Device,
        push: u64,
        outcome: sync::server::Outcome<'_>,
    ) -> Result<(), FleetError> {
        use sync::server::Outcome;
        let now = now_unix_s();
        let attempts: i64 = self
            .conn
            .query_row(
                "SELECT attempts FROM assignments WHERE device_id = ?1 AND push_id = ?2",
                params![device.id, push as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?
            .unwrap_or(0);
        let (state, reason, retry_at) = match outcome {
            Outcome::Installed => ("installed", None, None),
            Outcome::Rejected {
                reason,
                transient: true,
            } if attempts + 1 < RETRY_ATTEMPTS => {
                let delay = (RETRY_FIRST_S << attempts.min(20)).min(RETRY_MAX_S);
                (
                    "retrying",
                    Some(format!("{reason} (offered again in {delay} s)")),
                    Some(now + delay),
                )
            }
            Outcome::Rejected {
                reason,
                transient: true,
            } => (
                "rejected",
                Some(format!(
                    "{reason} (gave up after {RETRY_ATTEMPTS} attempts)"
                )),
                None,
            ),
            Outcome::Rejected { reason, .. } => ("rejected", Some(reason.to_string()), None),
        };
        let retried = i64::from(state == "retrying");
        self.conn
            .execute(
                "UPDATE assignments SET state = ?1, reason = ?2, updated_unix_s = ?3,
                   attempts = attempts + ?4, retry_at_unix_s = ?5
                 WHERE device_id = ?6 AND push_id = ?7",
                params![
                    state,
                    reason,
                    now,
                    retried,
                    retry_at,
                    device.id,
                    push as i64
                ],
            )
            .map_err(self.sql())?;
        let what = self.push(push)?.map_or_else(
            || format!("push {push}"),
            |p| format!("{}@{}", p.model.name, p.model.version),
        );
        let detail = match reason {
            None => what,
            Some(r) => format!("{what}: {r}"),
        };
        self.record_event(Some(device), None, state, &detail)
    }

    /// Offers again the pushes whose retry time has come (assignments `retrying` become
    /// `pending`, and the generation moves so sessions look). Returns how many.
    ///
    /// # Errors
    /// Database failures.
    pub fn retry_due(&mut self, now_unix_s: i64) -> Result<usize, FleetError> {
        // Asked four times a second: take the write lock only when something is due.
        let due: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM assignments
                   WHERE state = 'retrying' AND retry_at_unix_s <= ?1)",
                [now_unix_s],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        if !due {
            return Ok(0);
        }
        let sql = sqlite_error::<FleetError>(&self.path);
        write_transaction(&mut self.conn, &self.path, |tx| {
            let n = tx
                .execute(
                    "UPDATE assignments SET state = 'pending'
                 WHERE state = 'retrying' AND retry_at_unix_s <= ?1",
                    [now_unix_s],
                )
                .map_err(sql)?;
            if n > 0 {
                bump_generation(tx).map_err(sql)?;
            }
            Ok(n)
        })
    }

    /// Records that `device` went back from `from` to `to` by itself: its assignment (if it
    /// was for `from`) becomes `rolled-back` so the host stops offering it, and an event
    /// keeps the reason.
    ///
    /// # Errors
    /// Database failures.
    pub fn record_rollback(
        &mut self,
        device: &Device,
        from: &ModelRef,
        to: &ModelRef,
        reason: &str,
    ) -> Result<(), FleetError> {
        self.conn
            .execute(
                "UPDATE assignments SET state = 'rolled-back', reason = ?1, updated_unix_s = ?2
                 WHERE device_id = ?3 AND push_id IN (SELECT id FROM pushes WHERE sha256 = ?4)",
                params![reason, now_unix_s(), device.id, to_hex(&from.sha256)],
            )
            .map_err(self.sql())?;
        let detail = format!(
            "{}@{} -> {}@{}: {reason}",
            from.name, from.version, to.name, to.version
        );
        self.record_event(Some(device), None, "rolled-back", &detail)
    }

    /// Notes that `device` is connected from `address` and runs `model`.
    ///
    /// # Errors
    /// Database failures.
    pub fn seen(
        &mut self,
        device: &Device,
        address: Option<&str>,
        agent: Option<&str>,
        model: Option<Option<&ModelRef>>,
    ) -> Result<(), FleetError> {
        self.conn
            .execute(
                "UPDATE devices SET last_seen_unix_s = ?1,
                   address = COALESCE(?2, address), agent = COALESCE(?3, agent) WHERE id = ?4",
                params![now_unix_s(), address, agent, device.id],
            )
            .map_err(self.sql())?;
        if let Some(model) = model {
            self.conn
                .execute(
                    "UPDATE devices SET model_name = ?1, model_version = ?2, model_sha256 = ?3
                     WHERE id = ?4",
                    params![
                        model.map(|m| m.name.as_str()),
                        model.map(|m| m.version.as_str()),
                        model.map(|m| to_hex(&m.sha256)),
                        device.id
                    ],
                )
                .map_err(self.sql())?;
        }
        Ok(())
    }

    /// Appends an event to the log, for a known device or a name that tried to connect.
    ///
    /// # Errors
    /// Database failures.
    pub fn record_event(
        &mut self,
        device: Option<&Device>,
        name: Option<&str>,
        kind: &str,
        detail: &str,
    ) -> Result<(), FleetError> {
        self.conn
            .execute(
                "INSERT INTO events (unix_s, device_id, device_name, kind, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    now_unix_s(),
                    device.map(|d| d.id),
                    device.map(|d| d.name.as_str()).or(name),
                    kind,
                    detail
                ],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// The latest `limit` events, newest last, optionally of one device.
    ///
    /// # Errors
    /// Database failures.
    pub fn events(&self, device: Option<&str>, limit: usize) -> Result<Vec<Event>, FleetError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT unix_s, device_name, kind, detail FROM events
                 WHERE ?1 IS NULL OR device_name = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(self.sql())?;
        let mut rows = stmt
            .query_map(params![device, limit as i64], |r| {
                Ok(Event {
                    unix_s: r.get(0)?,
                    device: r.get(1)?,
                    kind: r.get(2)?,
                    detail: r.get(3)?,
                })
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        rows.reverse();
        Ok(rows)
    }

    /// The run number of `device`'s boot epoch `epoch`: its epochs numbered in the order
    /// the host first saw them, from 0. A new epoch after others (a wiped or cloned state
    /// directory) is recorded as an event.
    ///
    /// # Errors
    /// Database failures.
    pub fn open_epoch(&mut self, device: &Device, epoch: u64) -> Result<u64, FleetError> {
        let epoch = epoch as i64;
        let known: Option<i64> = self
            .conn
            .query_row(
                "SELECT run FROM epochs WHERE device_id = ?1 AND epoch = ?2",
                params![device.id, epoch],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        if let Some(run) = known {
            return Ok(run as u64);
        }
        let run: i64 = self
            .conn
            .query_row(
                "INSERT INTO epochs (device_id, epoch, run, first_seen_unix_s)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(run) + 1, 0) FROM epochs WHERE device_id = ?1), ?3)
                 RETURNING run",
                params![device.id, epoch, now_unix_s()],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        if run > 0 {
            self.record_event(
                Some(device),
                None,
                "new-epoch",
                &format!(
                    "reports now come from state directory epoch {:016x} (run {run}): it was wiped, replaced, or another device uses this identity; its sequence numbers start again and are stored apart",
                    epoch as u64
                ),
            )?;
        }
        Ok(run as u64)
    }

    /// Stores reports `(device, seq, report)` of each device's first run (see
    /// [`Fleet::store_run_reports`]). Returns how many were new.
    ///
    /// # Errors
    /// Database failures (nothing of the batch is stored then).
    pub fn store_reports(&mut self, batch: &[(i64, u64, &Report)]) -> Result<usize, FleetError> {
        let rows: Vec<(i64, u64, u64, &Report)> =
            batch.iter().map(|&(d, seq, r)| (d, 0, seq, r)).collect();
        self.store_run_reports(&rows)
    }

    /// Stores reports `(device, run, seq, report)` in one transaction, and notes each sender
    /// as seen now. A `(device, run, seq)` already stored is left as it is; when the report
    /// under that number differs, the conflict is recorded as an event. Returns how many
    /// were new.
    ///
    /// # Errors
    /// Database failures (nothing of the batch is stored then).
    pub fn store_run_reports(
        &mut self,
        batch: &[(i64, u64, u64, &Report)],
    ) -> Result<usize, FleetError> {
        let sql = sqlite_error::<FleetError>(&self.path);
        write_transaction(&mut self.conn, &self.path, |tx| {
            let mut new = 0;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO metrics (device_id, run, seq, received_unix_s,
                       window_start_ms, window_ms, model, requests, errors, p50_us, p95_us,
                       p99_us, feedback, feedback_correct, report)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                    )
                    .map_err(sql)?;
                let mut samples = tx
                .prepare_cached(
                    "INSERT INTO feedback_samples (device_id, model, received_unix_s, input, label)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql)?;
                let now = now_unix_s();
                for &(device, run, seq, r) in batch {
                    // Labelled samples go to their own table; the stored report keeps the count.
                    let blob = if r.samples.is_empty() {
                        postcard::to_allocvec(r)
                    } else {
                        let mut lean = r.clone();
                        lean.samples.clear();
                        postcard::to_allocvec(&lean)
                    }
                    .map_err(|e| FleetError::Encode(e.to_string()))?;
                    let inserted = stmt
                        .execute(params![
                            device,
                            run as i64,
                            seq as i64,
                            now,
                            r.window_start_ms as i64,
                            r.window_ms,
                            to_hex(&r.model),
                            r.requests,
                            r.errors,
                            r.latency_us.p50,
                            r.latency_us.p95,
                            r.latency_us.p99,
                            r.feedback,
                            r.feedback_correct,
                            blob
                        ])
                        .map_err(sql)?;
                    if inserted == 1 {
                        let model = to_hex(&r.model);
                        for l in &r.samples {
                            let input: Vec<u8> =
                                l.input.iter().flat_map(|v| v.to_le_bytes()).collect();
                            samples
                                .execute(params![device, model, now, input, f64::from(l.label)])
                                .map_err(sql)?;
                        }
                    } else {
                        // Sent again after a lost Ack, or another report under a used number.
                        let stored: Vec<u8> = tx
                        .query_row(
                            "SELECT report FROM metrics WHERE device_id = ?1 AND run = ?2 AND seq = ?3",
                            params![device, run as i64, seq as i64],
                            |row| row.get(0),
                        )
                        .map_err(sql)?;
                        if stored != blob {
                            let detail = format!(
                                "report {seq} of run {run} arrived again with other content (window at {} ms, {} requests; stored: {}); the first is kept. Two devices with one identity and one state directory (a cloned image)?",
                                r.window_start_ms,
                                r.requests,
                                decode_report(device, seq as i64, &stored).map_or_else(
                                    |e| e.to_string(),
                                    |s| format!(
                                        "window at {} ms, {} requests",
                                        s.window_start_ms, s.requests
                                    )
                                ),
                            );
                            tx.execute(
                            "INSERT INTO events (unix_s, device_id, device_name, kind, detail)
                             VALUES (?1, ?2, (SELECT name FROM devices WHERE id = ?2), 'report-conflict', ?3)",
                            params![now, device, detail],
                        )
                        .map_err(sql)?;
                        }
                    }
                    new += inserted;
                }
                // A report is contact: the silence rule and "last seen" count it.
                let mut seen = tx
                    .prepare_cached(
                        "UPDATE devices SET last_seen_unix_s = ?1
                     WHERE id = ?2 AND (last_seen_unix_s IS NULL OR last_seen_unix_s < ?1)",
                    )
                    .map_err(sql)?;
                let mut devices: Vec<i64> = batch.iter().map(|&(d, _, _, _)| d).collect();
                devices.sort_unstable();
                devices.dedup();
                for d in devices {
                    seen.execute(params![now, d]).map_err(sql)?;
                }
            }
            Ok(new)
        })
    }

    /// Deletes what `retention` no longer keeps: reports, labelled samples and events older
    /// than their days, and the oldest samples and events beyond their counts. Works in
    /// slices of 10,000 rows so it never holds the database long.
    ///
    /// # Errors
    /// Database failures (what was deleted before stays deleted).
    pub fn apply_retention(
        &mut self,
        retention: &Retention,
        now_unix_s: i64,
    ) -> Result<Pruned, FleetError> {
        let day = 86_400i64;
        let mut pruned = Pruned::default();
        // Rows are appended in time order, so each table is cut at the first id young
        // enough to keep (found by walking from the oldest, which is deleted anyway).
        let cut = |table: &str, time: &str, days: u32| {
            (
                format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}
                       WHERE rowid < COALESCE((SELECT rowid FROM {table} WHERE {time} >= ?1
                         ORDER BY rowid LIMIT 1), (SELECT MAX(rowid) + 1 FROM {table}))
                       ORDER BY rowid LIMIT 10000)"
                ),
                now_unix_s - i64::from(days) * day,
            )
        };
        let cap = |table: &str, max: u64| {
            (
                format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}
                       WHERE rowid <= (SELECT MAX(rowid) FROM {table}) - ?1
                       ORDER BY rowid LIMIT 10000)"
                ),
                i64::try_from(max).unwrap_or(i64::MAX),
            )
        };
        let jobs = [
            (cut("metrics", "received_unix_s", retention.metrics_days), 0),
            (
                cut(
                    "feedback_samples",
                    "received_unix_s",
                    retention.samples_days,
                ),
                1,
            ),
            (cap("feedback_samples", retention.max_samples), 1),
            (cut("events", "unix_s", retention.events_days), 2),
            (cap("events", retention.max_events), 2),
        ];
        for ((statement, value), counter) in jobs {
            loop {
                let n = self.conn.execute(&statement, [value]).map_err(self.sql())? as u64;
                match counter {
                    0 => pruned.metrics += n,
                    1 => pruned.samples += n,
                    _ => pruned.events += n,
                }
                if n < 10_000 {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    /// Labelled feedback samples devices sent while running one of `models` (first 8 bytes
    /// of the artifact digest), optionally only from `devices`: `(input, label, when it
    /// arrived in seconds since the Unix epoch)`, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub fn feedback_samples(
        &self,
        models: &[[u8; 8]],
        devices: Option<&[i64]>,
    ) -> Result<Vec<(Vec<f32>, f32, i64)>, FleetError> {
        let mut out = Vec::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT device_id, input, label, received_unix_s FROM feedback_samples
                 WHERE model = ?1 ORDER BY id",
            )
            .map_err(self.sql())?;
        for m in models {
            let rows = stmt
                .query_map([to_hex(m)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, f64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(self.sql())?;
            for row in rows {
                let (device, bytes, label, received) = row.map_err(self.sql())?;
                if devices.is_some_and(|d| !d.contains(&device)) || bytes.len() % 4 != 0 {
                    continue;
                }
                let input = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                out.push((input, label as f32, received));
            }
        }
        Ok(out)
    }

    /// How many labelled feedback samples `devices` sent for `models` since `since_unix_s`.
    ///
    /// # Errors
    /// Database failures.
    pub fn feedback_sample_count(
        &self,
        models: &[[u8; 8]],
        devices: &[i64],
        since_unix_s: i64,
    ) -> Result<u64, FleetError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM feedback_samples
                 WHERE model = ?1 AND device_id = ?2 AND received_unix_s >= ?3",
            )
            .map_err(self.sql())?;
        let mut n = 0u64;
        for m in models {
            for d in devices {
                let c: i64 = stmt
                    .query_row(params![to_hex(m), d, since_unix_s], |r| r.get(0))
                    .map_err(self.sql())?;
                n += c as u64;
            }
        }
        Ok(n)
    }

    /// A device's reports of windows that began at or after `since_ms`, by run and sequence
    /// number.
    ///
    /// # Errors
    /// Database failures, a report that no longer decodes.
    pub fn reports_since(
        &self,
        device: &Device,
        since_ms: u64,
    ) -> Result<Vec<StoredReport>, FleetError> {
        self.recent_reports(device, since_ms.checked_sub(1), usize::MAX)
    }

    /// A device's stored reports, by run and sequence number.
    ///
    /// # Errors
    /// Database failures, a report that no longer decodes.
    pub fn reports(&self, device: &Device) -> Result<Vec<StoredReport>, FleetError> {
        self.recent_reports(device, None, usize::MAX)
    }

    /// The latest `limit` reports of a device whose window started after `after_ms`
    /// (milliseconds since the Unix epoch; `None` for any), by run and sequence number.
    ///
    /// # Errors
    /// Database failures, a report that no longer decodes.
    pub fn recent_reports(
        &self,
        device: &Device,
        after_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredReport>, FleetError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT run, seq, received_unix_s, report FROM metrics
                 WHERE device_id = ?1 AND (?2 IS NULL OR window_start_ms > ?2)
                 ORDER BY run DESC, seq DESC LIMIT ?3",
            )
            .map_err(self.sql())?;
        let after = after_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query_map(params![device.id, after, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        rows.reverse();
        rows.into_iter()
            .map(|(run, seq, received, blob)| {
                let report = decode_report(device.id, seq, &blob)?;
                Ok(StoredReport {
                    run: run as u64,
                    seq: seq as u64,
                    received_unix_s: received,
                    report,
                })
            })
            .collect()
    }

    /// How many reports are stored in all.
    ///
    /// # Errors
    /// Database failures.
    pub fn report_count(&self) -> Result<u64, FleetError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM metrics", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.sql())
    }
}

/// What a signed manifest states a model needs: the artifact's format version, and, from
/// its requirements section (which the host writes into every artifact), its planned peak
/// memory and the ops and kernel families it uses, so that a device can refuse an offer it
/// cannot run before downloading it.
fn stated_requirements(bytes: &[u8]) -> crate::artifact::manifest::Requirements {
    let format_version = bytes
        .get(8..10)
        .map_or(0, |v| u16::from_le_bytes([v[0], v[1]]));
    let section = crate::artifact::decode(bytes)
        .ok()
        .and_then(|a| a.model.metadata.requirements().ok().flatten());
    match section {
        Some(req) => crate::artifact::manifest::Requirements {
            format_version,
            peak_memory_bytes: Some(req.peak_memory_bytes),
            needs: req.ops.into_iter().chain(req.kernels).collect(),
        },
        None => crate::artifact::manifest::Requirements {
            format_version,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::server::Outcome;

    fn fleet() -> (tempfile::TempDir, Fleet, Device) {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fleet::open(dir.path().join("reg.db")).unwrap();
        let d = f.add_device("pi-1", "lab").unwrap();
        (dir, f, d)
    }

    fn state(f: &Fleet, push: u64) -> (String, Option<String>) {
        let s = f.push_states(push).unwrap();
        (s[0].1.clone(), s[0].2.clone())
    }

    #[test]
    fn a_passing_refusal_is_offered_again_later_and_given_up_after_the_attempts() {
        let (_dir, mut f, d) = fleet();
        let p = f.create_push("m", "1", b"bytes", None).unwrap();
        f.assign(p.id, std::slice::from_ref(&d)).unwrap();
        let transient = Outcome::Rejected {
            reason: "disk full",
            transient: true,
        };
        let mut delays = Vec::new();
        for attempt in 1..RETRY_ATTEMPTS {
            f.record_install(&d, p.id, transient).unwrap();
            let (s, reason) = state(&f, p.id);
            assert_eq!(s, "retrying", "attempt {attempt}: {reason:?}");
            assert!(
                f.offers(d.id).unwrap().is_empty(),
                "not offered while waiting"
            );
            let due: i64 = f
                .conn
                .query_row("SELECT retry_at_unix_s FROM assignments", [], |r| r.get(0))
                .unwrap();
            delays.push(due - now_unix_s());
            assert_eq!(f.retry_due(due - 1).unwrap(), 0, "not yet");
            let g = f.assignment_change().unwrap();
            assert_eq!(f.retry_due(due).unwrap(), 1);
            assert!(f.assignment_change().unwrap() > g, "sessions look again");
            assert_eq!(state(&f, p.id).0, "pending");
            assert_eq!(f.offers(d.id).unwrap().len(), 1);
        }
        assert!(delays[0] >= RETRY_FIRST_S - 1 && delays[0] <= RETRY_FIRST_S);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
        assert!(*delays.last().unwrap() <= RETRY_MAX_S);
        f.record_install(&d, p.id, transient).unwrap();
        let (s, reason) = state(&f, p.id);
        assert_eq!(s, "rejected");
        assert!(reason.unwrap().contains("gave up after 8 attempts"));
        // A permanent refusal is final at once; a new assignment starts the count again.
        f.assign(p.id, std::slice::from_ref(&d)).unwrap();
        f.record_install(&d, p.id, transient).unwrap();
        assert_eq!(state(&f, p.id).0, "retrying");
        f.record_install(
            &d,
            p.id,
            Outcome::Rejected {
                reason: "bad signature",
                transient: false,
            },
        )
        .unwrap();
        assert_eq!(state(&f, p.id).0, "rejected");
    }

    #[test]
    fn releases_only_grow_and_manifests_describe_their_bytes() {
        let (_dir, mut f, _) = fleet();
        let a = f.next_release().unwrap();
        let b = f.next_release().unwrap();
        assert!(b > a && a >= now_unix_s() as u64, "{a} {b}");
        let key = keys::load_or_create(f.path()).unwrap();
        let p = f
            .sign_push("m", "2", b"artifact", None, &key, true)
            .unwrap();
        let m = Manifest::verify(&p.manifest, &key.verifying_key()).unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str()), ("m", "2"));
        assert!(m.rollback && m.release > b);
        assert_eq!(m.size_bytes, 8);
        assert_eq!(f.push(p.id).unwrap().unwrap().manifest, p.manifest);
        // A manifest that does not describe the bytes is refused.
        let mut other = m.clone();
        other.sha256 = [0; 32];
        let signed = other.sign(&key).unwrap();
        assert!(matches!(
            f.create_signed_push(&other, &signed, b"artifact", None),
            Err(FleetError::NotPushable { .. })
        ));
    }

    #[test]
    fn a_manifest_states_what_the_artifact_needs() {
        let (_dir, mut f, _) = fleet();
        let key = keys::load_or_create(f.path()).unwrap();
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/digits-mlp-trained/model.perch"
        ))
        .unwrap();
        let mut model = crate::artifact::decode(&bytes).unwrap().model;
        let req = model.stamp_requirements().unwrap();
        let bytes = crate::artifact::encode(&model).unwrap();
        let p = f
            .sign_push("digits", "1", &bytes, None, &key, false)
            .unwrap();
        let m = Manifest::verify(&p.manifest, &key.verifying_key()).unwrap();
        assert_eq!(
            m.requirements.peak_memory_bytes,
            Some(req.peak_memory_bytes)
        );
        assert!(m.requirements.needs.iter().any(|n| n == "dense"));
        assert!(m.requirements.needs.iter().any(|n| n == "f32"));
        assert_eq!(
            m.requirements.format_version,
            crate::artifact::FORMAT_VERSION
        );
        // Bytes without the section state only their format version.
        let p = f
            .sign_push("m", "2", b"artifact", None, &key, false)
            .unwrap();
        let m = Manifest::verify(&p.manifest, &key.verifying_key()).unwrap();
        assert_eq!(
            (m.requirements.peak_memory_bytes, m.requirements.needs.len()),
            (None, 0)
        );
    }

    #[test]
    fn retention_deletes_old_rows_and_the_oldest_beyond_the_caps() {
        let (_dir, mut f, d) = fleet();
        let r = Report::default();
        let rows: Vec<(i64, u64, &Report)> = (1..=10).map(|s| (d.id, s, &r)).collect();
        f.store_reports(&rows).unwrap();
        for i in 0..3000 {
            f.record_event(Some(&d), None, "test", &format!("event {i}"))
                .unwrap();
        }
        let now = now_unix_s();
        // Reports 1-4 and the first 100 events arrived 100 days ago.
        f.conn
            .execute(
                "UPDATE metrics SET received_unix_s = ?1 WHERE seq <= 4",
                [now - 100 * 86_400],
            )
            .unwrap();
        f.conn
            .execute(
                "UPDATE events SET unix_s = ?1 WHERE id <= 100",
                [now - 100 * 86_400],
            )
            .unwrap();
        let keep = Retention {
            max_events: 2000,
            ..Retention::default()
        };
        let pruned = f.apply_retention(&keep, now).unwrap();
        assert_eq!(pruned.metrics, 4);
        assert_eq!(pruned.events, 1000);
        let seqs: Vec<u64> = f.reports(&d).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
        let events = f.events(None, 10_000).unwrap();
        assert_eq!(events.len(), 2000);
        assert_eq!(events[0].detail, "event 1000", "the oldest went first");
        assert_eq!(f.apply_retention(&keep, now).unwrap(), Pruned::default());
        assert!(Retention::default().check().is_ok());
        assert!(
            Retention {
                metrics_days: 0,
                ..Retention::default()
            }
            .check()
            .is_err()
        );
    }
}
