//! [`ReportQueue`]: reports waiting for the host, persisted to a directory so they survive
//! restarts, crashes and power cuts.
//!
//! # On disk
//! One file per report and one state file, all little-endian:
//!
//! ```text
//! {seq:020}.report   magic "PRQ2" | seq u64 | postcard(ReportV2) | CRC-32 of all before
//! state              magic "PRQE" | next_seq u64 | carried_dropped u32 | epoch u64
//!                    | CRC-32 of all before
//! *.tmp              a write in progress (removed on open)
//! ```
//!
//! The epoch is a random number made with the state file: a queue that starts over (a wiped
//! or new directory, numbers from 1 again) has another one, so the host tells its reports
//! from the old ones with the same numbers. A state file of the first layout (magic
//! "PRQS", without the epoch) is read as epoch 0. A report file of the first layout (magic
//! "PRQR", the report in form 1, before latency buckets) is read as a report without buckets
//! (see [`super::report`] for the two forms).
//!
//! Every write goes to a `.tmp` file, is fsynced, renamed over its name, and the directory is
//! fsynced, so after a power cut or `kill -9` each file holds either its old or its new
//! content. A push writes the state (`next_seq` advanced, drops counted) *before* the report
//! that uses the sequence number, so a number is never handed out twice. A file that is
//! truncated, damaged or not a report (wrong magic, CRC, sequence, or too large) is logged
//! to stderr, removed and skipped; it never stops the rest of the queue from loading.
//!
//! A crash in the middle of a push that drops the oldest report can leave that report on
//! disk and counted as dropped (it is then both sent and counted, once); nothing else is
//! lost or counted twice.

use super::{MetricsError, Report, ReportV2, ReportV2Ref};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const REPORT_MAGIC: &[u8; 4] = b"PRQ2";
const REPORT_MAGIC_V1: &[u8; 4] = b"PRQR";
const STATE_MAGIC: &[u8; 4] = b"PRQE";
const STATE_MAGIC_V1: &[u8; 4] = b"PRQS";
const STATE_FILE: &str = "state";
const STATE_LEN: usize = 4 + 8 + 4 + 8 + 4;
const STATE_LEN_V1: usize = 4 + 8 + 4 + 4;
const REPORT_SUFFIX: &str = ".report";

/// Largest report file read back (a report of the largest model is a few KiB).
pub const MAX_REPORT_FILE_BYTES: u64 = 64 * 1024;

/// Largest queue capacity accepted by [`ReportQueue::open`].
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

/// A bounded queue of reports, persisted to a directory. In memory it holds only the
/// pending sequence numbers (at most `capacity`) and two counters.
#[derive(Debug)]
pub struct ReportQueue {
    dir: PathBuf,
    capacity: usize,
    pending: VecDeque<u64>,
    next_seq: u64,
    carried_dropped: u32,
    skipped: u64,
    epoch: u64,
}

/// A random epoch other than 0 (which stands for queues older than epochs); a clock-based
/// one if the OS has no randomness.
fn new_epoch() -> u64 {
    let mut b = [0u8; 8];
    let random = getrandom::fill(&mut b).map(|()| u64::from_le_bytes(b));
    let e = random.unwrap_or_else(|_| crate::util::now_unix_ns());
    e.max(1)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MetricsError {
    let path = path.to_path_buf();
    move |error| MetricsError::Io { op, path, error }
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync of `dir`.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), MetricsError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(bytes).map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), MetricsError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The body of `bytes` when its trailing CRC-32 matches.
fn check_crc(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < 4 {
        return Err(format!("{} bytes, too short", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(format!(
            "CRC mismatch (stored {stored:08x}, computed {computed:08x}): damaged or truncated"
        ));
    }
    Ok(body)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn report_name(seq: u64) -> String {
    format!("{seq:020}{REPORT_SUFFIX}")
}

fn encode_report(seq: u64, report: &Report) -> Result<Vec<u8>, MetricsError> {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(REPORT_MAGIC);
    bytes.extend_from_slice(&seq.to_le_bytes());
    let bytes = postcard::to_extend(&ReportV2Ref(report), bytes)
        .map_err(|e| MetricsError::Encode(e.to_string()))?;
    Ok(with_crc(bytes))
}

fn decode_report(bytes: &[u8], seq: u64) -> Result<Report, String> {
    let body = check_crc(bytes)?;
    let form2 = match body.get(..4) {
        Some(m) if m == REPORT_MAGIC => true,
        Some(m) if m == REPORT_MAGIC_V1 => false,
        _ => return Err("not a queued report (bad magic)".into()),
    };
    let stored = u64_at(body, 4).ok_or("too short for a sequence number")?;
    if stored != seq {
        return Err(format!(
            "holds sequence number {stored}, its name says {seq}"
        ));
    }
    if form2 {
        ReportV2::decode(&body[12..]).map_err(|e| e.to_string())
    } else {
        postcard::from_bytes(&body[12..]).map_err(|e| format!("report does not decode: {e}"))
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_REPORT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_REPORT_FILE_BYTES {
        return Err(format!("larger than {MAX_REPORT_FILE_BYTES} bytes"));
    }
    Ok(bytes)
}

impl ReportQueue {
    /// Opens (creating it if needed) the queue in `dir`, holding at most `capacity` reports.
    /// Loads the pending sequence numbers and the counter; removes leftover temporary files
    /// and damaged report files (logging why); if more than `capacity` reports are on disk,
    /// drops the oldest and counts them for the next report.
    ///
    /// A damaged state file (only media damage can cause one) is logged and the counter
    /// continues after the highest sequence number on disk.
    ///
    /// # Errors
    /// `capacity` of 0 or above [`MAX_QUEUE_CAPACITY`]; a directory that cannot be created
    /// or listed; failing writes.
    pub fn open(dir: impl AsRef<Path>, capacity: usize) -> Result<ReportQueue, MetricsError> {
        let dir = dir.as_ref().to_path_buf();
        if capacity == 0 || capacity > MAX_QUEUE_CAPACITY {
            return Err(MetricsError::QueueCapacity {
                capacity,
                max: MAX_QUEUE_CAPACITY,
            });
        }
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let mut queue = ReportQueue {
            dir,
            capacity,
            pending: VecDeque::new(),
            next_seq: 1,
            carried_dropped: 0,
            skipped: 0,
            epoch: 0,
        };
        let (next, carried, epoch) = queue.read_state();
        queue.epoch = epoch.unwrap_or_else(new_epoch);
        let mut seqs = Vec::new();
        let listing = fs::read_dir(&queue.dir).map_err(io_err("listing", &queue.dir))?;
        for entry in listing {
            let entry = entry.map_err(io_err("listing", &queue.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(seq) = name
                .strip_suffix(REPORT_SUFFIX)
                .filter(|s| s.len() == 20)
                .and_then(|s| s.parse::<u64>().ok())
            {
                match read_limited(&entry.path()).and_then(|b| decode_report(&b, seq).map(|_| ())) {
                    Ok(()) => seqs.push(seq),
                    Err(reason) => queue.skip(seq, &reason),
                }
            }
        }
        seqs.sort_unstable();
        let on_disk_next = seqs.last().map_or(1, |s| s + 1);
        queue.next_seq = next.unwrap_or(on_disk_next).max(on_disk_next);
        queue.carried_dropped = carried;
        // The last push crashed after writing its report but before clearing the count it
        // carried: that report holds the count already.
        if carried > 0 && seqs.last() == Some(&(queue.next_seq - 1)) {
            queue.carried_dropped = 0;
        }
        let excess = seqs.len().saturating_sub(capacity);
        for &seq in &seqs[..excess] {
            queue.remove_file(seq)?;
        }
        queue.carried_dropped = queue
            .carried_dropped
            .saturating_add(u32::try_from(excess).unwrap_or(u32::MAX));
        queue.pending = seqs[excess..].iter().copied().collect();
        queue.write_state()?;
        Ok(queue)
    }

    fn skip(&mut self, seq: u64, reason: &str) {
        let path = self.dir.join(report_name(seq));
        eprintln!(
            "perch: report queue: skipping {}: {reason}; removing it",
            path.display()
        );
        let _ = fs::remove_file(&path);
        self.skipped += 1;
    }

    /// `(next_seq, carried_dropped, epoch)` from the state file; `None` for the counter and
    /// the epoch when it is missing or damaged.
    fn read_state(&self) -> (Option<u64>, u32, Option<u64>) {
        let path = self.dir.join(STATE_FILE);
        let bytes = match read_limited(&path) {
            Ok(b) => b,
            Err(_) if !path.exists() => return (None, 0, None),
            Err(e) => {
                eprintln!("perch: report queue: {}: {e}", path.display());
                return (None, 0, None);
            }
        };
        let parsed = check_crc(&bytes).and_then(|body| {
            let epoch = match (body.len() + 4, body.get(..4)) {
                (STATE_LEN, Some(m)) if m == STATE_MAGIC => u64_at(body, 16).ok_or("short")?,
                (STATE_LEN_V1, Some(m)) if m == STATE_MAGIC_V1 => 0,
                _ => return Err("not a queue state file".into()),
            };
            let next = u64_at(body, 4).ok_or("short")?;
            let carried = u32::from_le_bytes(body[12..16].try_into().map_err(|_| "short")?);
            Ok((next, carried, epoch))
        });
        match parsed {
            Ok((next, carried, epoch)) => (Some(next), carried, Some(epoch)),
            Err(e) => {
                eprintln!(
                    "perch: report queue: {}: {e}; continuing after the highest queued sequence number, in a new epoch",
                    path.display()
                );
                (None, 0, None)
            }
        }
    }

    fn write_state(&self) -> Result<(), MetricsError> {
        let mut bytes = Vec::with_capacity(STATE_LEN);
        bytes.extend_from_slice(STATE_MAGIC);
        bytes.extend_from_slice(&self.next_seq.to_le_bytes());
        bytes.extend_from_slice(&self.carried_dropped.to_le_bytes());
        bytes.extend_from_slice(&self.epoch.to_le_bytes());
        write_atomic(&self.dir, STATE_FILE, &with_crc(bytes))
    }

    fn remove_file(&self, seq: u64) -> Result<(), MetricsError> {
        let path = self.dir.join(report_name(seq));
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Queues `report` under the next sequence number and returns it. When the queue is
    /// full the oldest report is dropped first; the number of reports dropped since the
    /// last push is added to this report's `dropped`. The report is on disk when this
    /// returns.
    ///
    /// # Errors
    /// Failing writes. The sequence number may then be used up (never reused) and the
    /// report not queued.
    pub fn push(&mut self, mut report: Report) -> Result<u64, MetricsError> {
        let seq = self.next_seq;
        let full = self.pending.len() >= self.capacity;
        self.next_seq = seq.checked_add(1).ok_or(MetricsError::SequenceExhausted)?;
        if full {
            self.carried_dropped = self.carried_dropped.saturating_add(1);
        }
        self.write_state()?;
        if full && let Some(oldest) = self.pending.pop_front() {
            self.remove_file(oldest)?;
        }
        report.dropped = report.dropped.saturating_add(self.carried_dropped);
        write_atomic(&self.dir, &report_name(seq), &encode_report(seq, &report)?)?;
        self.pending.push_back(seq);
        if self.carried_dropped > 0 {
            self.carried_dropped = 0;
            self.write_state()?;
        }
        Ok(seq)
    }

    /// The pending sequence numbers, oldest first.
    pub fn pending_seqs(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.pending.iter().copied()
    }

    /// Number of pending reports.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no report is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The capacity given to [`ReportQueue::open`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The sequence number the next push will use.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The queue's epoch: random, made with its state file (0 for a queue older than
    /// epochs). Sequence numbers are unique within an epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Damaged files skipped (and removed) since the queue was opened.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Reads the pending report `seq`; `None` when it is not pending, or its file has been
    /// damaged since (it is then logged, removed and forgotten).
    pub fn get(&mut self, seq: u64) -> Option<Report> {
        let at = self.pending.iter().position(|&s| s == seq)?;
        let path = self.dir.join(report_name(seq));
        match read_limited(&path).and_then(|b| decode_report(&b, seq)) {
            Ok(r) => Some(r),
            Err(reason) => {
                self.skip(seq, &reason);
                self.pending.remove(at);
                None
            }
        }
    }

    /// Every pending report with its sequence number, oldest first (damaged files skipped
    /// as [`ReportQueue::get`] does).
    pub fn pending(&mut self) -> Vec<(u64, Report)> {
        let seqs: Vec<u64> = self.pending.iter().copied().collect();
        seqs.into_iter()
            .filter_map(|s| self.get(s).map(|r| (s, r)))
            .collect()
    }

    /// Removes report `seq` (the host stored it). Returns whether it was pending; acking a
    /// number twice, or one never queued, is harmless.
    ///
    /// # Errors
    /// The file cannot be removed (it stays pending).
    pub fn ack(&mut self, seq: u64) -> Result<bool, MetricsError> {
        let Some(at) = self.pending.iter().position(|&s| s == seq) else {
            return Ok(false);
        };
        self.remove_file(seq)?;
        self.pending.remove(at);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(requests: u32) -> Report {
        Report {
            window_start_ms: 1_700_000_000 + u64::from(requests),
            window_ms: 60,
            requests,
            predictions: vec![requests, 1],
            psi_milli: vec![12, 340],
            ..Report::default()
        }
    }

    fn requests(q: &mut ReportQueue) -> Vec<(u64, u32)> {
        q.pending()
            .into_iter()
            .map(|(s, r)| (s, r.requests))
            .collect()
    }

    #[test]
    fn restart_keeps_pending_reports_and_the_counter() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        assert_eq!(q.push(report(10)).unwrap(), 1);
        assert_eq!(q.push(report(20)).unwrap(), 2);
        assert!(q.ack(1).unwrap());
        assert_eq!(q.push(report(30)).unwrap(), 3);
        drop(q);
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        assert_eq!(requests(&mut q), vec![(2, 20), (3, 30)]);
        assert_eq!(q.get(2).unwrap(), report(20));
        // Acks survive a restart; the counter never goes back, even once all are acked.
        assert!(q.ack(2).unwrap() && q.ack(3).unwrap());
        assert!(!q.ack(3).unwrap());
        drop(q);
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        assert!(q.is_empty());
        assert_eq!(q.push(report(40)).unwrap(), 4);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_the_next_report_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = ReportQueue::open(dir.path(), 3).unwrap();
        for r in 1..=5 {
            q.push(report(r)).unwrap();
        }
        let got = q.pending();
        assert_eq!(
            got.iter().map(|(s, r)| (*s, r.dropped)).collect::<Vec<_>>(),
            vec![(3, 0), (4, 1), (5, 1)]
        );
        // The count is carried once, not again.
        q.ack(3).unwrap();
        q.push(report(6)).unwrap();
        assert_eq!(q.get(6).unwrap().dropped, 0);
        // Reopening with a smaller capacity drops the oldest and carries the count.
        drop(q);
        let mut q = ReportQueue::open(dir.path(), 1).unwrap();
        assert_eq!(q.pending_seqs().collect::<Vec<_>>(), vec![6]);
        q.push(report(7)).unwrap();
        assert_eq!(q.get(7).unwrap().dropped, 2 + 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn damaged_files_are_skipped_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        for r in 1..=4 {
            q.push(report(r)).unwrap();
        }
        drop(q);
        let path = |s| dir.path().join(report_name(s));
        let mut b = fs::read(path(2)).unwrap();
        b[14] ^= 0x40;
        fs::write(path(2), &b).unwrap();
        let b = fs::read(path(3)).unwrap();
        fs::write(path(3), &b[..b.len() / 2]).unwrap();
        fs::write(path(4), b"").unwrap();
        // A report file under another seq's name, a stray temp file, and an unrelated file.
        fs::copy(path(1), path(9)).unwrap();
        fs::write(dir.path().join("state.tmp"), b"half a write").unwrap();
        fs::write(dir.path().join("README"), b"not ours").unwrap();
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        assert_eq!(q.skipped(), 4);
        assert_eq!(requests(&mut q), vec![(1, 1)]);
        assert_eq!(q.push(report(5)).unwrap(), 5);
        assert!(!dir.path().join("state.tmp").exists());
        assert!(dir.path().join("README").exists());
        // Damage after opening is caught when the report is read.
        fs::write(path(5), b"PRQR").unwrap();
        assert_eq!(q.get(5), None);
        assert_eq!(q.pending_seqs().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_damaged_state_file_continues_after_the_highest_queued_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        for r in 1..=3 {
            q.push(report(r)).unwrap();
        }
        q.ack(1).unwrap();
        drop(q);
        fs::write(dir.path().join(STATE_FILE), b"\x00garbage").unwrap();
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        assert_eq!(q.push(report(4)).unwrap(), 4);
    }

    #[test]
    fn the_epoch_survives_restarts_and_a_wiped_queue_gets_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let q = ReportQueue::open(dir.path(), 8).unwrap();
        let epoch = q.epoch();
        assert_ne!(epoch, 0);
        drop(q);
        assert_eq!(ReportQueue::open(dir.path(), 8).unwrap().epoch(), epoch);
        // A state file of the first layout is epoch 0, and keeps its counter.
        let mut v1 = STATE_MAGIC_V1.to_vec();
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.extend_from_slice(&0u32.to_le_bytes());
        fs::write(dir.path().join(STATE_FILE), with_crc(v1)).unwrap();
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        assert_eq!((q.epoch(), q.push(report(1)).unwrap()), (0, 5));
        drop(q);
        assert_eq!(ReportQueue::open(dir.path(), 8).unwrap().epoch(), 0);
        let wiped = tempfile::tempdir().unwrap();
        let q = ReportQueue::open(wiped.path(), 8).unwrap();
        assert_ne!(q.epoch(), epoch);
        assert_eq!(q.next_seq(), 1);
    }

    #[test]
    fn a_crash_after_the_report_but_before_the_state_does_not_count_drops_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = ReportQueue::open(dir.path(), 1).unwrap();
        q.push(report(1)).unwrap();
        // Simulate the crash: push 2 dropped 1 and wrote its report (dropped = 1), but the
        // state still carries the drop.
        let state = fs::read(dir.path().join(STATE_FILE)).unwrap();
        q.push(report(2)).unwrap();
        let mut body = state[..STATE_LEN - 4].to_vec();
        body[4..12].copy_from_slice(&3u64.to_le_bytes());
        body[12..16].copy_from_slice(&1u32.to_le_bytes());
        fs::write(dir.path().join(STATE_FILE), with_crc(body)).unwrap();
        drop(q);
        let mut q = ReportQueue::open(dir.path(), 1).unwrap();
        assert_eq!(q.get(2).unwrap().dropped, 1);
        q.ack(2).unwrap();
        assert_eq!(q.push(report(3)).unwrap(), 3);
        assert_eq!(q.get(3).unwrap().dropped, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_bytes_in_the_directory_open_without_panicking(
            report_bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            state_bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut q = ReportQueue::open(dir.path(), 4).unwrap();
            q.push(report(1)).unwrap();
            let mut forged = encode_report(2, &report(2)).unwrap();
            forged.truncate(12);
            forged.extend_from_slice(&report_bytes);
            let forged = with_crc(forged);
            fs::write(dir.path().join(report_name(2)), &forged).unwrap();
            fs::write(dir.path().join(report_name(3)), &report_bytes).unwrap();
            fs::write(dir.path().join(STATE_FILE), &state_bytes).unwrap();
            drop(q);
            let mut q = ReportQueue::open(dir.path(), 4).unwrap();
            let pending = q.pending();
            proptest::prop_assert!(pending.iter().any(|(s, r)| *s == 1 && *r == report(1)));
            let seq = q.push(report(9)).unwrap();
            proptest::prop_assert!(seq > pending.iter().map(|p| p.0).max().unwrap_or(0));
        }
    }

    #[test]
    fn reports_queued_in_form_1_still_load_and_form_2_keeps_the_buckets() {
        use crate::metrics::report::compat::{as_current, old_report};
        let dir = tempfile::tempdir().unwrap();
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        let mut with_buckets = report(5);
        with_buckets.latency_buckets = Some(
            crate::metrics::LatencyBuckets::new(vec![1; crate::metrics::LATENCY_BUCKETS], 9)
                .unwrap(),
        );
        assert_eq!(q.push(with_buckets.clone()).unwrap(), 1);
        drop(q);
        // What an agent from before latency buckets left in its queue: "PRQR", form 1.
        let old = old_report();
        let mut bytes = REPORT_MAGIC_V1.to_vec();
        bytes.extend_from_slice(&7u64.to_le_bytes());
        let bytes = with_crc(postcard::to_extend(&old, bytes).unwrap());
        fs::write(dir.path().join(report_name(7)), bytes).unwrap();
        let mut q = ReportQueue::open(dir.path(), 8).unwrap();
        assert_eq!(q.skipped(), 0);
        assert_eq!(q.get(1), Some(with_buckets));
        assert_eq!(q.get(7), Some(as_current(&old)));
        let file = fs::read(dir.path().join(report_name(1))).unwrap();
        assert_eq!(&file[..4], b"PRQ2");
    }

    #[test]
    fn a_queued_report_with_a_wrong_bucket_count_is_skipped_naming_it() {
        let r = report(5);
        let mut bytes = REPORT_MAGIC.to_vec();
        bytes.extend_from_slice(&3u64.to_le_bytes());
        let mut bytes = postcard::to_extend(&r, bytes).unwrap();
        bytes.push(1);
        let bytes = with_crc(postcard::to_extend(&(vec![0u32; 4], 0u64), bytes).unwrap());
        let e = decode_report(&bytes, 3).unwrap_err();
        assert!(e.contains("4 counts, expected 19"), "{e}");
    }

    #[test]
    fn bad_capacities_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ReportQueue::open(dir.path(), 0),
            Err(MetricsError::QueueCapacity { capacity: 0, .. })
        ));
        assert!(ReportQueue::open(dir.path(), MAX_QUEUE_CAPACITY + 1).is_err());
    }
}
