//! The fleet's tables in the registry's database. The registry opens the database and owns
//! its layout number ([`crate::registry::SCHEMA_VERSION`]); the fleet's part of each layout
//! (3: devices, pushes, assignments, metrics, events, alerts, rollouts, labelled samples;
//! 4: signed manifests, retries, reports per boot epoch; 5: report forms, latency totals) is
//! created and migrated here, inside
//! the registry's migration transaction.

use rusqlite::Transaction;

/// The fleet's tables as layout 3 made them ([`LAYOUT_4`] changes them).
const LAYOUT_3: &str = "
CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    grp TEXT NOT NULL,
    key BLOB NOT NULL,
    created_unix_s INTEGER NOT NULL,
    last_seen_unix_s INTEGER,
    address TEXT,
    agent TEXT,
    model_name TEXT,
    model_version TEXT,
    model_sha256 TEXT
);
CREATE TABLE pushes (
    id INTEGER PRIMARY KEY,
    version_id INTEGER REFERENCES versions(id) ON DELETE SET NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_unix_s INTEGER NOT NULL
);
CREATE TABLE assignments (
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    push_id INTEGER NOT NULL REFERENCES pushes(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    reason TEXT,
    updated_unix_s INTEGER NOT NULL,
    PRIMARY KEY (device_id, role)
);
-- `generation` grows with every change of what devices should run; the server polls it.
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters VALUES ('generation', 0);
CREATE TABLE push_targets (
    push_id INTEGER NOT NULL REFERENCES pushes(id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    PRIMARY KEY (push_id, device_id)
) WITHOUT ROWID;
CREATE TABLE metrics (
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    received_unix_s INTEGER NOT NULL,
    window_start_ms INTEGER NOT NULL,
    window_ms INTEGER NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    p50_us INTEGER NOT NULL,
    p95_us INTEGER NOT NULL,
    p99_us INTEGER NOT NULL,
    feedback INTEGER NOT NULL,
    feedback_correct INTEGER NOT NULL,
    report BLOB NOT NULL
);
-- Rows arrive in time order, so they are appended; the unique index keeps each (device,
-- seq) once (a table clustered on it took a random page write per report).
CREATE UNIQUE INDEX metrics_by_device_seq ON metrics(device_id, seq);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    unix_s INTEGER NOT NULL,
    device_id INTEGER REFERENCES devices(id) ON DELETE CASCADE,
    device_name TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_by_device ON events(device_id, id);
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    device_id INTEGER REFERENCES devices(id) ON DELETE CASCADE,
    subject TEXT NOT NULL DEFAULT '',
    model TEXT,
    version TEXT,
    value REAL,
    threshold REAL,
    state TEXT NOT NULL,
    opened_unix_s INTEGER NOT NULL,
    updated_unix_s INTEGER NOT NULL,
    resolved_unix_s INTEGER,
    detail TEXT NOT NULL
);
CREATE INDEX alerts_open ON alerts(state, rule, device_id, subject);
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    grp TEXT NOT NULL,
    canary INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    shadow_push INTEGER REFERENCES pushes(id) ON DELETE SET NULL,
    active_push INTEGER REFERENCES pushes(id) ON DELETE SET NULL,
    previous TEXT,
    gates TEXT NOT NULL,
    results TEXT,
    origin TEXT,
    created_unix_s INTEGER NOT NULL,
    updated_unix_s INTEGER NOT NULL
);
CREATE TABLE feedback_samples (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    received_unix_s INTEGER NOT NULL,
    input BLOB NOT NULL,
    label REAL NOT NULL
);
CREATE INDEX feedback_by_model ON feedback_samples(model, id);
";

/// Layout 4: pushes carry the host's signed manifest and its release; an assignment refused
/// for a passing cause is offered again (`attempts`, `retry_at_unix_s`); reports are kept
/// per boot epoch of the device's state directory (`epochs` numbers them per device as
/// runs; `(device, run, seq)` is unique). Reports stored before epochs are run 0, which a
/// device still on its old queue (epoch 0) continues. Pending pushes without a manifest
/// cannot be offered any more.
const LAYOUT_4: &str = "
ALTER TABLE pushes ADD COLUMN manifest BLOB;
ALTER TABLE pushes ADD COLUMN release INTEGER;
ALTER TABLE assignments ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE assignments ADD COLUMN retry_at_unix_s INTEGER;
ALTER TABLE metrics ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
DROP INDEX metrics_by_device_seq;
CREATE UNIQUE INDEX metrics_by_device_run_seq ON metrics(device_id, run, seq);
CREATE TABLE epochs (
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    run INTEGER NOT NULL,
    first_seen_unix_s INTEGER NOT NULL,
    PRIMARY KEY (device_id, epoch)
) WITHOUT ROWID;
INSERT INTO epochs (device_id, epoch, run, first_seen_unix_s)
    SELECT DISTINCT device_id, 0, 0, CAST(strftime('%s', 'now') AS INTEGER) FROM metrics;
INSERT INTO counters VALUES ('release', 0);
UPDATE assignments SET state = 'rejected',
    reason = 'pushed by an older perch-host, without a signed manifest: push it again'
    WHERE state = 'pending' AND push_id IN (SELECT id FROM pushes WHERE manifest IS NULL);
";

/// Layout 5: a report blob says its form (`report_form`: 1 for the rows before, form 2
/// carries the latency buckets), and each device's latency histogram is kept as running
/// totals, added to in the transaction that stores a report: retention deletes old reports
/// but never lowers the totals, so the host exports them as counters.
const LAYOUT_5: &str = "
ALTER TABLE metrics ADD COLUMN report_form INTEGER NOT NULL DEFAULT 1;
CREATE TABLE latency_totals (
    device_id INTEGER PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    sum_us INTEGER NOT NULL,
    bucketed_reports INTEGER NOT NULL,
    unbucketed_reports INTEGER NOT NULL
);
CREATE TABLE latency_bucket_totals (
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    bucket INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (device_id, bucket)
) WITHOUT ROWID;
";

/// Brings the fleet's tables from layout `found` (the database's `user_version`, 0 for a new
/// database) to [`crate::registry::SCHEMA_VERSION`], inside the registry's migration
/// transaction `tx` (which runs the registry's own steps first and commits).
///
/// # Errors
/// The SQLite error of the first statement that fails (the caller then rolls back).
pub(crate) fn migrate(tx: &Transaction<'_>, found: i64) -> rusqlite::Result<()> {
    if found < 3 {
        tx.execute_batch(LAYOUT_3)?;
    }
    if found < 4 {
        tx.execute_batch(LAYOUT_4)?;
    }
    if found < 5 {
        tx.execute_batch(LAYOUT_5)?;
    }
    Ok(())
}
