//! Quality-gated rollouts in the fleet database: the `rollouts` table, the figures a gate
//! judges (what the canaries' shadow runs and the group's feedback reported), and the gate
//! itself. The controller that moves a rollout from step to step is
//! `host_cli::lifecycle`, which also makes the pushes.
//!
//! A rollout's states: `canary` (the candidate runs in shadow on the canary devices) →
//! `promoted` (every device of the group was given the candidate; its quality is watched)
//! → `complete`; or `aborted` (a gate failed, with the reason) or `rolled-back` (quality
//! dropped after promotion; the group was given the previous version again).

use super::{Device, Fleet, FleetError, now_unix_s};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// What a candidate must show on the canaries before it is promoted, and how it is watched
/// afterwards. Every field has a default (the `[rollout]` table of the rules file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Shadow requests (all canaries together) before the gate is judged.
    pub min_shadow_requests: u32,
    /// Share of shadow answers equal to the active model's, at least.
    pub min_agreement: f64,
    /// Shadow p95 latency over the active model's p95 on the same requests, at most.
    pub max_latency_ratio: f64,
    /// Shadow model heap over the active model's, at most.
    pub max_memory_ratio: f64,
    /// Shadow error rate, at most.
    pub max_error_rate: f64,
    /// A canary phase without enough shadow traffic for this long is aborted.
    pub canary_timeout_s: u64,
    /// After promotion, how long the group's quality is watched.
    pub watch_s: u64,
    /// Feedback accuracy may fall this much below the previous model's before the group is
    /// rolled back.
    pub max_accuracy_drop: f64,
    /// Labelled feedback needed before accuracy is judged.
    pub min_feedback: u32,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_shadow_requests: 200,
            min_agreement: 0.9,
            max_latency_ratio: 3.0,
            max_memory_ratio: 3.0,
            max_error_rate: 0.02,
            canary_timeout_s: 600,
            watch_s: 120,
            max_accuracy_drop: 0.1,
            min_feedback: 20,
        }
    }
}

impl Gates {
    /// Checks every value's range.
    ///
    /// # Errors
    /// The first gate out of range: its key (as in the `[rollout]` table), its value, and
    /// what it must be.
    pub fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        for (key, v) in [
            ("min_agreement", self.min_agreement),
            ("max_error_rate", self.max_error_rate),
            ("max_accuracy_drop", self.max_accuracy_drop),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((key, v.to_string(), "a fraction in [0, 1]"));
            }
        }
        for (key, v) in [
            ("max_latency_ratio", self.max_latency_ratio),
            ("max_memory_ratio", self.max_memory_ratio),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err((key, v.to_string(), "a positive ratio"));
            }
        }
        Ok(())
    }
}

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

/// What the canaries' shadow runs reported since a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ShadowTotals {
    /// Shadow requests.
    pub requests: u64,
    /// Failed shadow requests.
    pub errors: u64,
    /// Shadow answers equal to the active model's.
    pub agreed: u64,
    /// Request-weighted mean of the windows' shadow p95 latency, µs.
    pub p95_us: f64,
    /// The same for the active model on those requests, µs.
    pub active_p95_us: f64,
    /// Largest shadow heap reported, KiB.
    pub memory_kib: u32,
    /// Largest active-model heap reported, KiB.
    pub active_memory_kib: u32,
    /// Labelled feedback on requests the shadow also answered.
    pub feedback: u64,
    /// Of those, right according to the shadow.
    pub feedback_correct: u64,
    /// Of those, right according to the active model.
    pub active_feedback_correct: u64,
}

impl ShadowTotals {
    /// Shadow and active feedback accuracy on the same labels.
    pub fn accuracies(&self) -> Option<(f64, f64)> {
        (self.feedback > 0).then(|| {
            (
                self.feedback_correct as f64 / self.feedback as f64,
                self.active_feedback_correct as f64 / self.feedback as f64,
            )
        })
    }

    /// Agreement among the shadow answers that did not fail.
    pub fn agreement(&self) -> f64 {
        let answered = self.requests.saturating_sub(self.errors);
        if answered == 0 {
            0.0
        } else {
            self.agreed as f64 / answered as f64
        }
    }
}

/// What devices reported of a model's quality: labelled feedback and requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QualityTotals {
    /// Labels received.
    pub feedback: u64,
    /// Labels that matched the prediction.
    pub correct: u64,
    /// Requests served.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
}

/// Judges a canary phase: `Ok` to promote, `Err(reason)` naming every gate that failed.
pub fn judge(gates: &Gates, t: &ShadowTotals) -> Result<(), String> {
    let mut failed = Vec::new();
    // With enough labels, the candidate is judged on being right, not on agreeing: a model
    // retrained for drifted inputs should disagree where the current one is wrong.
    match t.accuracies() {
        Some((shadow, active)) if t.feedback >= u64::from(gates.min_feedback) => {
            if shadow < active - gates.max_accuracy_drop {
                failed.push(format!(
                    "feedback accuracy {shadow:.3} against the current model's {active:.3} on the same {} labels (at most {:.3} lower)",
                    t.feedback, gates.max_accuracy_drop
                ));
            }
        }
        _ => {
            let agreement = t.agreement();
            if agreement < gates.min_agreement {
                failed.push(format!(
                    "agreement {agreement:.3} < {:.3}",
                    gates.min_agreement
                ));
            }
        }
    }
    let error_rate = if t.requests == 0 {
        0.0
    } else {
        t.errors as f64 / t.requests as f64
    };
    if error_rate > gates.max_error_rate {
        failed.push(format!(
            "shadow error rate {error_rate:.3} > {:.3}",
            gates.max_error_rate
        ));
    }
    if t.active_p95_us > 0.0 {
        let ratio = t.p95_us / t.active_p95_us;
        if ratio > gates.max_latency_ratio {
            failed.push(format!(
                "p95 latency {:.0} us is {ratio:.2}x the current model's {:.0} us (limit {:.2}x)",
                t.p95_us, t.active_p95_us, gates.max_latency_ratio
            ));
        }
    }
    if t.active_memory_kib > 0 {
        let ratio = f64::from(t.memory_kib) / f64::from(t.active_memory_kib);
        if ratio > gates.max_memory_ratio {
            failed.push(format!(
                "memory {} KiB is {ratio:.2}x the current model's {} KiB (limit {:.2}x)",
                t.memory_kib, t.active_memory_kib, gates.max_memory_ratio
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
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
            .filter_map(|h| crate::sync::auth::from_hex::<8>(h.get(..16)?).ok())
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
    pub fn shadow_totals(
        &self,
        devices: &[Device],
        name: &str,
        version: &str,
        since_ms: u64,
    ) -> Result<ShadowTotals, FleetError> {
        let ids = model_ids(self, name, version)?;
        let mut t = ShadowTotals::default();
        let (mut p95, mut active_p95) = (0.0, 0.0);
        for d in devices {
            for r in self.reports_since(d, since_ms)? {
                let Some(s) = r.report.shadow.filter(|s| ids.contains(&s.model)) else {
                    continue;
                };
                t.requests += u64::from(s.requests);
                t.errors += u64::from(s.errors);
                t.agreed += u64::from(s.agreed);
                p95 += f64::from(s.latency_us.p95) * f64::from(s.requests);
                active_p95 += f64::from(s.active_latency_us.p95) * f64::from(s.requests);
                t.memory_kib = t.memory_kib.max(s.memory_kib);
                t.active_memory_kib = t.active_memory_kib.max(s.active_memory_kib);
                t.feedback += u64::from(s.feedback);
                t.feedback_correct += u64::from(s.feedback_correct);
                t.active_feedback_correct += u64::from(s.active_feedback_correct);
            }
        }
        if t.requests > 0 {
            t.p95_us = p95 / t.requests as f64;
            t.active_p95_us = active_p95 / t.requests as f64;
        }
        Ok(t)
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

    fn totals(agreed: u64, p95: f64, mem: u32) -> ShadowTotals {
        ShadowTotals {
            requests: 100,
            errors: 0,
            agreed,
            p95_us: p95,
            active_p95_us: 100.0,
            memory_kib: mem,
            active_memory_kib: 100,
            ..ShadowTotals::default()
        }
    }

    #[test]
    fn the_gate_names_every_failure() {
        let g = Gates::default();
        assert_eq!(judge(&g, &totals(95, 120.0, 150)), Ok(()));
        let e = judge(&g, &totals(50, 500.0, 400)).unwrap_err();
        assert!(e.contains("agreement 0.500"), "{e}");
        assert!(e.contains("p95 latency"), "{e}");
        assert!(e.contains("memory 400 KiB"), "{e}");
        let mut failing = totals(95, 100.0, 100);
        failing.errors = 10;
        let e = judge(&g, &failing).unwrap_err();
        assert!(e.contains("error rate"), "{e}");
        // Agreement counts only answers that did not fail.
        assert!((failing.agreement() - 95.0 / 90.0).abs() < 1e-9);
    }

    #[test]
    fn with_enough_labels_accuracy_decides_instead_of_agreement() {
        let g = Gates::default();
        // A retrained model that disagrees where the current one is wrong passes.
        let mut t = totals(40, 100.0, 100);
        t.feedback = 100;
        t.feedback_correct = 90;
        t.active_feedback_correct = 45;
        assert_eq!(judge(&g, &t), Ok(()));
        // One that is less right fails, naming both accuracies.
        t.feedback_correct = 30;
        let e = judge(&g, &t).unwrap_err();
        assert!(e.contains("0.300") && e.contains("0.450"), "{e}");
        // Too few labels: agreement decides again.
        t.feedback = 5;
        assert!(judge(&g, &t).unwrap_err().contains("agreement"));
    }

    #[test]
    fn gates_parse_with_defaults_and_refuse_unknown_keys() {
        let g: Gates = toml::from_str("min_agreement = 0.99").unwrap();
        assert_eq!(g.min_agreement, 0.99);
        assert_eq!(g.watch_s, Gates::default().watch_s);
        assert!(toml::from_str::<Gates>("min_agreemnt = 0.99").is_err());
    }

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
