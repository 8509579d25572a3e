//! Pushes: signing a registry version for devices, assigning it (active or shadow), the
//! offers a session makes from the assignments, and what devices answered (installed,
//! refused and retried, rolled back).

use super::{Device, Fleet, FleetError, keys};
use crate::artifact::Manifest;
use crate::sync::{self, ModelRef, Role};
use crate::util::{from_hex, now_unix_s, sqlite_error, to_hex, write_transaction};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};

/// Moves the counter that sessions poll to learn that what devices should run changed.
fn bump_generation(tx: &Connection) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE counters SET value = value + 1 WHERE name = 'generation'",
        [],
    )
    .map(drop)
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

/// The database's name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Shadow => "shadow",
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

impl Fleet {
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
}
