//! Quality-gated rollouts in the fleet database: the `rollouts` table and the figures the
//! gates judge (what the canaries' shadow runs and the group's feedback reported). The gates
//! and the decision itself are [`super::gates`] (re-exported here). The controller that
//! moves a rollout from step to step is `host_cli::lifecycle`, which also makes the pushes.
//!
//! A rollout's states: `canary` (the candidate runs in shadow on the canary devices) →
//! `promoted` (every device of the group was given the candidate; its quality is watched)
//! → `complete`; or `aborted` (a gate failed, with the reason) or `rolled-back` (quality
//! dropped after promotion; the group was given the previous version again).

pub use super::gates::{Gates, QualityTotals, ShadowEvidence, Verdict, judge};
use super::{Device, Fleet, FleetError, now_unix_s};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

/// One rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    /// Id.
    pub id: i64,
    /// Candidate model name.
    pub name: String,
    /// Candidate version number.
    pub version: String,
    /// The group it rolls out to.
    pub group: String,
    /// How many canary devices run it in shadow.
    pub canary: u32,
    /// `canary`, `promoted`, `complete`, `aborted`, `rolled-back`.
    pub state: String,
    /// Why it was aborted or rolled back.
    pub reason: Option<String>,
    /// The shadow push to the canaries.
    pub shadow_push: Option<u64>,
    /// The active push to the group, once promoted.
    pub active_push: Option<u64>,
    /// `NAME@VERSION` the group ran before (what a rollback restores).
    pub previous: Option<String>,
    /// The gates it is judged by.
    pub gates: Gates,
    /// Figures gathered at each step (JSON).
    pub results: serde_json::Value,
    /// Who started it: `operator`, or the alert that led to a retraining.
    pub origin: Option<String>,
    /// Start, Unix seconds.
    pub created_unix_s: i64,
    /// Last change, Unix seconds.
    pub updated_unix_s: i64,
}

const COLUMNS: &str = "id, name, version, grp, canary, state, reason, shadow_push, active_push,
    previous, gates, results, origin, created_unix_s, updated_unix_s";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rollout> {
    let gates: String = r.get(10)?;
    let results: Option<String> = r.get(11)?;
    Ok(Rollout {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        group: r.get(3)?,
        canary: r.get(4)?,
        state: r.get(5)?,
        reason: r.get(6)?,
        shadow_push: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        active_push: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        previous: r.get(9)?,
        gates: serde_json::from_str(&gates).unwrap_or_default(),
        results: results
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null),
        origin: r.get(12)?,
        created_unix_s: r.get(13)?,
        updated_unix_s: r.get(14)?,
    })
}

fn model_ids(fleet: &Fleet, name: &str, version: &str) -> Result<Vec<[u8; 8]>, FleetError> {
    fleet.push_model_ids(name, version)
}

impl Fleet {
    /// The first 8 bytes of the artifact digest of every push of `name@version`: how
    /// reports name the model they measured.
    ///
    /// # Errors
    /// Database failures.
    pub fn push_model_ids(&self, name: &str, version: &str) -> Result<Vec<[u8; 8]>, FleetError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT sha256 FROM pushes WHERE name = ?1 AND version = ?2")
            .map_err(self.sql())?;
        let hexes = stmt
            .query_map(params![name, version], |r| r.get::<_, String>(0))
            .map_err(self.sql())?
            .collect::<Result<Vec<String>, _>>()
            .map_err(self.sql())?;
        Ok(hexes
            .iter()
            .filter_map(|h| crate::util::from_hex::<8>(h.get(..16)?).ok())
            .collect())
    }

    /// Starts recording a rollout in state `canary`.
    ///
    /// # Errors
    /// Database failures.
    #[allow(clippy::too_many_arguments)]
    pub fn create_rollout(
        &mut self,
        name: &str,
        version: &str,
        group: &str,
        canary: u32,
        shadow_push: u64,
        previous: Option<&str>,
        gates: &Gates,
        results: &serde_json::Value,
        origin: &str,
    ) -> Result<i64, FleetError> {
        let now = now_unix_s();
        self.conn
            .execute(
                "INSERT INTO rollouts (name, version, grp, canary, state, shadow_push, previous,
                   gates, results, origin, created_unix_s, updated_unix_s)
                 VALUES (?1, ?2, ?3, ?4, 'canary', ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                params![
                    name,
                    version,
                    group,
                    canary,
                    shadow_push as i64,
                    previous,
                    serde_json::to_string(gates).map_err(|e| FleetError::Encode(e.to_string()))?,
                    results.to_string(),
                    origin,
                    now
                ],
            )
            .map_err(self.sql())?;
        let id = self.conn.last_insert_rowid();
        self.record_event(
            None,
            None,
            "rollout",
            &format!("rollout {id}: {name}@{version} to group {group}, {canary} canary device(s) in shadow ({origin})"),
        )?;
        Ok(id)
    }

    /// Rollouts, newest first; only those still under way (`canary`, `promoted`) when
    /// `active_only`.
    ///
    /// # Errors
    /// Database failures.
    pub fn rollouts(&self, active_only: bool, limit: usize) -> Result<Vec<Rollout>, FleetError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM rollouts WHERE ?1 = 0 OR state IN ('canary', 'promoted')
             ORDER BY id DESC LIMIT ?2"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.sql())?;
        let rows = stmt
            .query_map(params![i64::from(active_only), limit as i64], row)
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// Rollout `id`.
    ///
    /// # Errors
    /// Database failures.
    pub fn rollout(&self, id: i64) -> Result<Option<Rollout>, FleetError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM rollouts WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
            .map_err(self.sql())
    }

    /// Moves rollout `id` to `state`, with its reason, figures and pushes; records an event.
    ///
    /// # Errors
    /// Database failures.
    pub fn update_rollout(
        &mut self,
        id: i64,
        state: &str,
        reason: Option<&str>,
        results: &serde_json::Value,
        active_push: Option<u64>,
    ) -> Result<(), FleetError> {
        self.conn
            .execute(
                "UPDATE rollouts SET state = ?1, reason = COALESCE(?2, reason), results = ?3,
                   active_push = COALESCE(?4, active_push), updated_unix_s = ?5 WHERE id = ?6",
                params![
                    state,
                    reason,
                    results.to_string(),
                    active_push.map(|p| p as i64),
                    now_unix_s(),
                    id
                ],
            )
            .map_err(self.sql())?;
        let detail = match reason {
            Some(r) => format!("rollout {id}: {state}: {r}"),
            None => format!("rollout {id}: {state}"),
        };
        self.record_event(None, None, "rollout", &detail)
    }

    /// Every device of `group`, by name.
    ///
    /// # Errors
    /// Database failures (an empty group is an empty list).
    pub fn group_devices(&self, group: &str) -> Result<Vec<Device>, FleetError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, grp, key FROM devices WHERE grp = ?1 ORDER BY name")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([group], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, name, group, key)| {
                Some(Device {
                    id,
                    name,
                    group,
                    key: key.try_into().ok()?,
                })
            })
            .collect())
    }

    /// What the shadow runs of `name@version` on `devices` reported in windows that began at
    /// or after `since_ms`.
    ///
    /// # Errors
    /// Database failures, a damaged report.
    pub fn shadow_evidence(
        &self,
        devices: &[Device],
        name: &str,
        version: &str,
        since_ms: u64,
    ) -> Result<ShadowEvidence, FleetError> {
        let ids = model_ids(self, name, version)?;
        let mut e = ShadowEvidence::default();
        for d in devices {
            for r in self.reports_since(d, since_ms)? {
                if let Some(s) = r.report.shadow.filter(|s| ids.contains(&s.model)) {
                    e.add(&s);
                }
            }
        }
        Ok(e)
    }

    /// Labelled feedback and requests that `devices`
    /// reported while running `name@version`, in windows from `since_ms` on.
    ///
    /// # Errors
    /// Database failures, a damaged report.
    pub fn quality_totals(
        &self,
        devices: &[Device],
        name: &str,
        version: &str,
        since_ms: u64,
    ) -> Result<QualityTotals, FleetError> {
        let ids = model_ids(self, name, version)?;
        let (mut fb, mut ok, mut req, mut err) = (0u64, 0u64, 0u64, 0u64);
        for d in devices {
            for r in self.reports_since(d, since_ms)? {
                if ids.contains(&r.report.model) {
                    fb += u64::from(r.report.feedback);
                    ok += u64::from(r.report.feedback_correct);
                    req += u64::from(r.report.requests);
                    err += u64::from(r.report.errors);
                }
            }
        }
        Ok(QualityTotals {
            feedback: fb,
            correct: ok,
            requests: req,
            errors: err,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollouts_are_recorded_and_moved() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fleet::open(dir.path().join("r.db")).unwrap();
        let p = f.create_push("m", "2", &[1, 2, 3], None).unwrap();
        let id = f
            .create_rollout(
                "m",
                "2",
                "lab",
                1,
                p.id,
                Some("m@1"),
                &Gates::default(),
                &serde_json::json!({}),
                "operator",
            )
            .unwrap();
        assert_eq!(f.rollouts(true, 10).unwrap()[0].state, "canary");
        f.update_rollout(
            id,
            "aborted",
            Some("agreement 0.5 < 0.9"),
            &serde_json::json!({"a": 1}),
            None,
        )
        .unwrap();
        assert!(f.rollouts(true, 10).unwrap().is_empty());
        let r = f.rollout(id).unwrap().unwrap();
        assert_eq!(
            (r.state.as_str(), r.reason.as_deref()),
            ("aborted", Some("agreement 0.5 < 0.9"))
        );
        assert_eq!(r.previous.as_deref(), Some("m@1"));
        let events = f.events(None, 10).unwrap();
        assert_eq!(events.iter().filter(|e| e.kind == "rollout").count(), 2);
    }
}
