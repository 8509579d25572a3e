//! Devices: registering and removing them, selecting them by name or group, their status
//! as `perch-host devices` lists it, their last contact and their event history.

use super::{Fleet, FleetError, SILENT_AFTER_S};
use crate::sync::{self, ModelRef};
use crate::util::{now_unix_s, to_hex};
use rusqlite::{OptionalExtension, params};

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

fn valid_name(name: &str) -> bool {
    sync::valid_name(name)
}

impl Fleet {
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
}
