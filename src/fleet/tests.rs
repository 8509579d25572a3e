//! The fleet's pushes, retries and retention over a real database.

use super::*;
use crate::artifact::Manifest;
use crate::metrics::Report;
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

fn bucketed(requests: u32, latency_us: &[u64]) -> Report {
    let mut e = crate::metrics::ExposedBuckets::default();
    latency_us.iter().for_each(|&us| e.record(us));
    Report {
        requests,
        latency_buckets: Some(crate::metrics::LatencyBuckets::from_exposed(&e)),
        ..Report::default()
    }
}

#[test]
fn latency_totals_add_up_every_report_once_and_survive_retention() {
    let (_dir, mut f, d) = fleet();
    assert_eq!(f.latency_totals(&d).unwrap(), LatencyTotals::default());
    let (a, b, plain) = (
        bucketed(3, &[20, 30, 3_000]),
        bucketed(2, &[30, 20_000_000]),
        Report::default(),
    );
    f.store_reports(&[(d.id, 1, &a), (d.id, 2, &b), (d.id, 3, &plain)])
        .unwrap();
    // Resent after a lost Ack: stored once, counted once.
    f.store_reports(&[(d.id, 2, &b)]).unwrap();
    let t = f.latency_totals(&d).unwrap();
    let c = t.cumulative();
    assert_eq!((c[0], c[1], c[7], c[18]), (1, 3, 4, 5));
    assert_eq!(c[17], 4, "20 s is above the last bound, 10 s");
    assert_eq!(t.sum_us, 20_003_080);
    assert_eq!((t.bucketed_reports, t.unbucketed_reports), (2, 1));
    assert_eq!(
        f.reports(&d).unwrap()[0].report,
        a,
        "stored with its buckets"
    );
    f.conn
        .execute("UPDATE metrics SET received_unix_s = 0", [])
        .unwrap();
    let pruned = f
        .apply_retention(&Retention::default(), now_unix_s())
        .unwrap();
    assert_eq!(pruned.metrics, 3);
    assert_eq!(
        f.latency_totals(&d).unwrap(),
        t,
        "pruning never lowers the totals"
    );
    f.store_reports(&[(d.id, 4, &a)]).unwrap();
    assert_eq!(f.latency_totals(&d).unwrap().cumulative()[18], 8);
}

#[test]
fn report_blobs_stored_in_form_1_still_decode() {
    use crate::metrics::report_compat::{as_current, old_report};
    let (_dir, mut f, d) = fleet();
    f.store_reports(&[(d.id, 1, &Report::default())]).unwrap();
    // A row as layout 4 stored it: the old struct's bytes, form 1 (the column's default).
    let mut old = old_report();
    old.samples.clear();
    f.conn
        .execute(
            "UPDATE metrics SET report = ?1, report_form = 1",
            [postcard::to_allocvec(&old).unwrap()],
        )
        .unwrap();
    let stored = f.reports(&d).unwrap();
    assert_eq!(stored[0].report, as_current(&old));
    // The same report resent by an upgraded agent (form 2, no buckets) is no conflict.
    f.store_reports(&[(d.id, 1, &as_current(&old))]).unwrap();
    assert!(
        f.events(None, 100)
            .unwrap()
            .iter()
            .all(|e| e.kind != "report-conflict")
    );
    // A blob in form 2 whose buckets are not on the shared bounds is reported as damaged.
    let mut bad = postcard::to_allocvec(&as_current(&old)).unwrap();
    bad.push(1);
    bad.extend(postcard::to_allocvec(&(vec![1u32; 3], 0u64)).unwrap());
    f.conn
        .execute("UPDATE metrics SET report = ?1, report_form = 2", [bad])
        .unwrap();
    let e = f.reports(&d).unwrap_err().to_string();
    assert!(e.contains("3 counts, expected 19"), "{e}");
}
