//! Reports: the devices' metrics windows stored once per (device, run, seq), the labelled
//! feedback samples they carry, reading them back, and the retention that prunes them.

use super::{Device, Fleet, FleetError};
use crate::metrics::{LATENCY_BUCKETS, LatencyBuckets, Report, ReportV2, ReportV2Ref};
use crate::util::{now_unix_s, sqlite_error, to_hex, write_transaction};
use rusqlite::{OptionalExtension, params};

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

/// The form new report blobs are stored in (`metrics.report_form`): 2, with the latency
/// buckets. Rows stored before layout 5 say 1 (see [`crate::metrics::Report`]'s module).
const REPORT_FORM: i64 = 2;

/// Encodes a report as a blob in [`REPORT_FORM`].
fn encode_report(r: &Report) -> Result<Vec<u8>, FleetError> {
    postcard::to_allocvec(&ReportV2Ref(r)).map_err(|e| FleetError::Encode(e.to_string()))
}

/// Decodes a stored report blob of form `form` (the one place that knows its encoding).
pub(super) fn decode_report(
    device: i64,
    seq: i64,
    form: i64,
    blob: &[u8],
) -> Result<Report, FleetError> {
    let decoded = match form {
        1 => postcard::from_bytes(blob).map_err(|e| e.to_string()),
        2 => ReportV2::decode(blob).map_err(|e| e.to_string()),
        other => Err(format!("unknown report form {other}")),
    };
    decoded.map_err(|reason| FleetError::DamagedReport {
        device,
        seq: seq as u64,
        reason,
    })
}

/// A device's latency over every report it sent with buckets, on
/// [`EXPOSED_BOUNDS_US`](crate::metrics::EXPOSED_BOUNDS_US) (see [`Fleet::latency_totals`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyTotals {
    /// Latencies per interval (not cumulative), the last above every bound.
    pub counts: [u64; LATENCY_BUCKETS],
    /// Their sum, µs (saturating).
    pub sum_us: u64,
    /// Reports that carried buckets.
    pub bucketed_reports: u64,
    /// Reports without buckets (from agents older than protocol 3), not in the counts.
    pub unbucketed_reports: u64,
}

impl LatencyTotals {
    /// How many latencies were at most each bound (cumulative), then all of them (`+Inf`).
    pub fn cumulative(&self) -> [u64; LATENCY_BUCKETS] {
        let mut out = self.counts;
        let mut seen = 0u64;
        for c in &mut out {
            seen = seen.saturating_add(*c);
            *c = seen;
        }
        out
    }
}

/// Adds a newly stored report's latency buckets to its device's running totals (or counts
/// it as a report without buckets), in the transaction that stores it.
fn add_latency(
    tx: &rusqlite::Transaction<'_>,
    device: i64,
    buckets: Option<&LatencyBuckets>,
) -> rusqlite::Result<()> {
    // SQLite integers are i64: sums stop at i64::MAX rather than wrap.
    let sum = buckets.map_or(0, |b| i64::try_from(b.sum_us()).unwrap_or(i64::MAX));
    tx.prepare_cached(
        "INSERT INTO latency_totals (device_id, sum_us, bucketed_reports, unbucketed_reports)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_id) DO UPDATE SET
           sum_us = MIN(sum_us + excluded.sum_us, 9223372036854775807),
           bucketed_reports = bucketed_reports + excluded.bucketed_reports,
           unbucketed_reports = unbucketed_reports + excluded.unbucketed_reports",
    )?
    .execute(params![
        device,
        sum,
        i64::from(buckets.is_some()),
        i64::from(buckets.is_none())
    ])?;
    let Some(b) = buckets else {
        return Ok(());
    };
    let mut add = tx.prepare_cached(
        "INSERT INTO latency_bucket_totals (device_id, bucket, count) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id, bucket) DO UPDATE SET count = count + excluded.count",
    )?;
    for (i, &c) in b.counts().iter().enumerate() {
        if c > 0 {
            add.execute(params![device, i as i64, i64::from(c)])?;
        }
    }
    Ok(())
}

impl Fleet {
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
                       p99_us, feedback, feedback_correct, report, report_form)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                       ?16)",
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
                    // (Copied without them only when it has samples.)
                    let lean = |r: &Report| {
                        let mut lean = r.clone();
                        lean.samples.clear();
                        lean
                    };
                    let blob = if r.samples.is_empty() {
                        encode_report(r)?
                    } else {
                        encode_report(&lean(r))?
                    };
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
                            blob,
                            REPORT_FORM
                        ])
                        .map_err(sql)?;
                    if inserted == 1 {
                        add_latency(tx, device, r.latency_buckets.as_ref()).map_err(sql)?;
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
                        let (stored, form): (Vec<u8>, i64) = tx
                            .query_row(
                                "SELECT report, report_form FROM metrics
                             WHERE device_id = ?1 AND run = ?2 AND seq = ?3",
                                params![device, run as i64, seq as i64],
                                |row| Ok((row.get(0)?, row.get(1)?)),
                            )
                            .map_err(sql)?;
                        let decoded = decode_report(device, seq as i64, form, &stored);
                        // A report stored in form 1 and queued again by an upgraded agent
                        // comes back in form 2: compare what they say, not their bytes.
                        let same = if form == REPORT_FORM {
                            stored == blob
                        } else {
                            decoded.as_ref().is_ok_and(|s| *s == lean(r))
                        };
                        if !same {
                            let detail = format!(
                                "report {seq} of run {run} arrived again with other content (window at {} ms, {} requests; stored: {}); the first is kept. Two devices with one identity and one state directory (a cloned image)?",
                                r.window_start_ms,
                                r.requests,
                                decoded.map_or_else(
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
                "SELECT run, seq, received_unix_s, report, report_form FROM metrics
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
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        rows.reverse();
        rows.into_iter()
            .map(|(run, seq, received, blob, form)| {
                let report = decode_report(device.id, seq, form, &blob)?;
                Ok(StoredReport {
                    run: run as u64,
                    seq: seq as u64,
                    received_unix_s: received,
                    report,
                })
            })
            .collect()
    }

    /// The latency histogram of every report stored for `device` since it was added,
    /// reports deleted by retention included: running totals kept beside the reports, so
    /// they only grow.
    ///
    /// # Errors
    /// Database failures.
    pub fn latency_totals(&self, device: &Device) -> Result<LatencyTotals, FleetError> {
        let mut t = LatencyTotals::default();
        let row: Option<(i64, i64, i64)> = self
            .conn
            .query_row(
                "SELECT sum_us, bucketed_reports, unbucketed_reports FROM latency_totals
                 WHERE device_id = ?1",
                [device.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.sql())?;
        let Some((sum_us, bucketed, unbucketed)) = row else {
            return Ok(t);
        };
        let as_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
        t.sum_us = as_u64(sum_us);
        t.bucketed_reports = as_u64(bucketed);
        t.unbucketed_reports = as_u64(unbucketed);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bucket, count FROM latency_bucket_totals WHERE device_id = ?1")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([device.id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(self.sql())?;
        for row in rows {
            let (bucket, count) = row.map_err(self.sql())?;
            if let Some(c) = usize::try_from(bucket)
                .ok()
                .and_then(|b| t.counts.get_mut(b))
            {
                *c = as_u64(count);
            }
        }
        Ok(t)
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
