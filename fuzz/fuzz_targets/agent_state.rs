//! The agent's files in its state directory, with any bytes: the report queue (its state
//! file and report files, one of them behind a valid CRC so the decoder sees its payload)
//! and the model store's state.json. Opening gives a usable queue / store or an error,
//! never a panic; a queue that opens takes a new report with a sequence number above every
//! pending one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicU64, Ordering};

static RUN: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!(
        "perch-fuzz-state-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let queue = dir.join("queue");
    if std::fs::create_dir_all(&queue).is_err() {
        return;
    }
    // Split the input: queue state | report | report with a valid CRC | store state.json.
    let parts: Vec<&[u8]> = data.splitn(4, |&b| b == 0xff).collect();
    let part = |i: usize| parts.get(i).copied().unwrap_or(&[]);
    let _ = std::fs::write(queue.join("state"), part(0));
    let _ = std::fs::write(queue.join(format!("{:020}.report", 7)), part(1));
    let mut framed = part(2).to_vec();
    framed.extend_from_slice(&crc32fast::hash(part(2)).to_le_bytes());
    let _ = std::fs::write(queue.join(format!("{:020}.report", 8)), &framed);
    let _ = std::fs::write(dir.join("state.json"), part(3));

    if let Ok(mut q) = perch::metrics::ReportQueue::open(&queue, 8) {
        let pending = q.pending();
        let top = pending.iter().map(|(s, _)| *s).max().unwrap_or(0);
        if let Ok(seq) = q.push(perch::metrics::Report::default()) {
            assert!(seq > top, "new seq {seq} not above pending {top}");
        }
        for (seq, _) in pending {
            let _ = q.ack(seq);
        }
    }
    if let Ok(store) = perch::agent::store::ModelStore::open(&dir) {
        let _ = (store.active(), store.previous(), store.notices().len());
        if let Some(a) = store.active() {
            let _ = store.model_path(a);
            let _ = store.refused(&a.sha256);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
