//! The fleet (feature `host`): devices, pushes of models to them, their metrics and
//! events, in the registry's SQLite database (layout 3): the sync server's store
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
pub mod store;
pub mod web;

pub use store::FleetStore;

use crate::metrics::Report;
use crate::registry::Registry;
use crate::sync::{self, ModelRef, Role};
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
    /// Sequence number.
    pub seq: u64,
    /// When it arrived.
    pub received_unix_s: i64,
    /// The report.
    pub report: Report,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The database's name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Shadow => "shadow",
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
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
        let sql = |error| FleetError::Sqlite {
            path: path.clone(),
            error,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        // WAL lets `perch-host push` write while `serve` reads; NORMAL sync keeps every
        // committed transaction through a process crash (only a power cut can lose the last).
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
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
        move |error| FleetError::Sqlite {
            path: self.path.clone(),
            error,
        }
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
                         ORDER BY seq DESC LIMIT 1)
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

    /// Stores signed artifact bytes as a push of `model` (`version_id` is the registry row
    /// they came from, when known). The bytes are written to `pushes/<sha256>.perch` first.
    ///
    /// # Errors
    /// File or database failures.
    pub fn create_push(
        &mut self,
        name: &str,
        version: &str,
        bytes: &[u8],
        version_id: Option<i64>,
    ) -> Result<Push, FleetError> {
        use sha2::{Digest, Sha256};
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        let hex = sync::auth::to_hex(&sha);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| FleetError::Io { path, error }
        };
        std::fs::create_dir_all(&self.pushes_dir).map_err(io(&self.pushes_dir))?;
        let path = self.pushes_dir.join(format!("{hex}.perch"));
        let tmp = self.pushes_dir.join(format!("{hex}.tmp"));
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        self.conn
            .execute(
                "INSERT INTO pushes (version_id, name, version, sha256, size_bytes, created_unix_s)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    version_id,
                    name,
                    version,
                    hex,
                    bytes.len() as i64,
                    now_unix_s()
                ],
            )
            .map_err(self.sql())?;
        Ok(Push {
            id: self.conn.last_insert_rowid() as u64,
            model: ModelRef {
                name: name.to_string(),
                version: version.to_string(),
                sha256: sha,
            },
            size: bytes.len() as u64,
            path,
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
        let path = self.path.clone();
        let sql = |error| FleetError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self.conn.transaction().map_err(sql)?;
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
                   reason = NULL, updated_unix_s = ?4",
                params![d.id, role_name(role), push as i64, now_unix_s()],
            )
            .map_err(sql)?;
        }
        tx.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'generation'",
            [],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Ends the shadow runs of `devices` (their agents unload the shadow model).
    ///
    /// # Errors
    /// Database failures.
    pub fn clear_shadow(&mut self, devices: &[Device]) -> Result<(), FleetError> {
        let path = self.path.clone();
        let sql = |error| FleetError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        for d in devices {
            tx.execute(
                "DELETE FROM assignments WHERE device_id = ?1 AND role = 'shadow'",
                [d.id],
            )
            .map_err(sql)?;
        }
        tx.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'generation'",
            [],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
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
                "SELECT p.id, p.name, p.version, p.sha256, p.size_bytes, a.role FROM assignments a
                 JOIN pushes p ON p.id = a.push_id
                 WHERE a.device_id = ?1 AND (a.state = 'pending'
                   OR (a.role = 'shadow' AND a.state = 'installed'))
                 ORDER BY a.role",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([device], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, name, version, hex, size, role)| {
                Some((
                    Push {
                        id: id as u64,
                        model: ModelRef {
                            name,
                            version,
                            sha256: sync::auth::from_hex(&hex).ok()?,
                        },
                        size: size as u64,
                        path: self.pushes_dir.join(format!("{hex}.perch")),
                    },
                    if role == "shadow" {
                        Role::Shadow
                    } else {
                        Role::Active
                    },
                ))
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
                "SELECT name, version, sha256, size_bytes FROM pushes WHERE id = ?1",
                [id as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sql())?;
        Ok(row.and_then(|(name, version, hex, size)| {
            Some(Push {
                id,
                model: ModelRef {
                    name,
                    version,
                    sha256: sync::auth::from_hex(&hex).ok()?,
                },
                size: size as u64,
                path: self.pushes_dir.join(format!("{hex}.perch")),
            })
        }))
    }

    /// Records the device's answer to push `push`: installed, or refused with a reason.
    ///
    /// # Errors
    /// Database failures.
    pub fn record_install(
        &mut self,
        device: &Device,
        push: u64,
        outcome: Result<(), &str>,
    ) -> Result<(), FleetError> {
        let (state, reason) = match outcome {
            Ok(()) => ("installed", None),
            Err(r) => ("rejected", Some(r)),
        };
        self.conn
            .execute(
                "UPDATE assignments SET state = ?1, reason = ?2, updated_unix_s = ?3
                 WHERE device_id = ?4 AND push_id = ?5",
                params![state, reason, now_unix_s(), device.id, push as i64],
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
                params![
                    reason,
                    now_unix_s(),
                    device.id,
                    sync::auth::to_hex(&from.sha256)
                ],
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
                        model.map(|m| sync::auth::to_hex(&m.sha256)),
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

    /// Stores reports in one transaction, and notes each sender as seen now; a `(device,
    /// seq)` already stored is left as it is.
    /// Returns how many were new.
    ///
    /// # Errors
    /// Database failures (nothing of the batch is stored then).
    pub fn store_reports(&mut self, batch: &[(i64, u64, &Report)]) -> Result<usize, FleetError> {
        let path = self.path.clone();
        let sql = |error| FleetError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let mut new = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO metrics (device_id, seq, received_unix_s, window_start_ms,
                       window_ms, model, requests, errors, p50_us, p95_us, p99_us, feedback,
                       feedback_correct, report)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(sql)?;
            let mut samples = tx
                .prepare_cached(
                    "INSERT INTO feedback_samples (device_id, model, received_unix_s, input, label)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql)?;
            let now = now_unix_s();
            for &(device, seq, r) in batch {
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
                        seq as i64,
                        now,
                        r.window_start_ms as i64,
                        r.window_ms,
                        sync::auth::to_hex(&r.model),
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
                    let model = sync::auth::to_hex(&r.model);
                    for l in &r.samples {
                        let input: Vec<u8> = l.input.iter().flat_map(|v| v.to_le_bytes()).collect();
                        samples
                            .execute(params![device, model, now, input, f64::from(l.label)])
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
            let mut devices: Vec<i64> = batch.iter().map(|&(d, _, _)| d).collect();
            devices.sort_unstable();
            devices.dedup();
            for d in devices {
                seen.execute(params![now, d]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(new)
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
                .query_map([sync::auth::to_hex(m)], |r| {
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
                    .query_row(params![sync::auth::to_hex(m), d, since_unix_s], |r| {
                        r.get(0)
                    })
                    .map_err(self.sql())?;
                n += c as u64;
            }
        }
        Ok(n)
    }

    /// A device's reports of windows that began at or after `since_ms`, by sequence number.
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

    /// A device's stored reports, by sequence number.
    ///
    /// # Errors
    /// Database failures, a report that no longer decodes.
    pub fn reports(&self, device: &Device) -> Result<Vec<StoredReport>, FleetError> {
        self.recent_reports(device, None, usize::MAX)
    }

    /// The latest `limit` reports of a device whose window started after `after_ms`
    /// (milliseconds since the Unix epoch; `None` for any), by sequence number.
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
                "SELECT seq, received_unix_s, report FROM metrics
                 WHERE device_id = ?1 AND (?2 IS NULL OR window_start_ms > ?2)
                 ORDER BY seq DESC LIMIT ?3",
            )
            .map_err(self.sql())?;
        let after = after_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query_map(params![device.id, after, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        rows.reverse();
        rows.into_iter()
            .map(|(seq, received, blob)| {
                let report = decode_report(device.id, seq, &blob)?;
                Ok(StoredReport {
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
