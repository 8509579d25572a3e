//! Evaluation end to end over a real database: rules, reads, decisions and the writes.

use super::*;
use crate::fleet::Device;
use crate::metrics::Report;
use rusqlite::params;

const MODEL_A: [u8; 8] = [0xa1; 8];
const MODEL_B: [u8; 8] = [0xb2; 8];

struct Bench {
    _dir: tempfile::TempDir,
    fleet: Fleet,
    seq: HashMap<i64, u64>,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let fleet = Fleet::open(dir.path().join("reg.db")).expect("fleet");
        Bench {
            _dir: dir,
            fleet,
            seq: HashMap::new(),
        }
    }

    fn device(&mut self, name: &str) -> Device {
        self.fleet.add_device(name, "lab").expect("device")
    }

    fn store(&mut self, device: &Device, report: Report) {
        let seq = self.seq.entry(device.id).or_insert(0);
        *seq += 1;
        let n = self
            .fleet
            .store_reports(&[(device.id, *seq, &report)])
            .expect("store");
        assert_eq!(n, 1);
    }

    fn eval(&mut self, rules: &Rules) -> Vec<AlertChange> {
        evaluate(&mut self.fleet, rules, crate::fleet::now_unix_s()).expect("evaluate")
    }

    fn open(&self) -> Vec<Alert> {
        self.fleet.alerts(true, 100).expect("alerts")
    }
}

fn window(requests: u32) -> Report {
    Report {
        window_start_ms: 1_700_000_000_000,
        window_ms: 60_000,
        model: MODEL_A,
        requests,
        ..Report::default()
    }
}

fn drifting(requests: u32, psi_milli: Vec<u16>) -> Report {
    Report {
        psi_milli,
        ..window(requests)
    }
}

fn kinds(changes: &[AlertChange]) -> Vec<(Change, Rule, String)> {
    changes
        .iter()
        .map(|c| (c.change, c.rule, c.subject.clone()))
        .collect()
}

#[test]
fn drift_opens_stays_open_once_and_resolves() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    let rules = Rules::only(Rule::Drift);
    b.store(&d, drifting(230, vec![50, 410, 90]));
    let changes = b.eval(&rules);
    assert_eq!(kinds(&changes), [(Change::Opened, Rule::Drift, "1".into())]);
    let c = &changes[0];
    assert_eq!((c.device.as_str(), c.group.as_str()), ("pi-1", "lab"));
    assert_eq!(c.value, 0.41);
    assert_eq!(c.threshold, 0.2);
    assert_eq!(c.detail, "feature 1 PSI 0.41 > 0.20 over 230 requests");

    b.store(&d, drifting(300, vec![60, 520, 80]));
    assert!(b.eval(&rules).is_empty());
    assert!(b.eval(&rules).is_empty());
    let open = b.open();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, c.id);
    assert_eq!(open[0].value, Some(0.52));
    assert_eq!(open[0].state, "open");

    b.store(&d, drifting(300, vec![60, 120, 80]));
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Resolved, Rule::Drift, "1".into())]
    );
    assert_eq!(changes[0].id, c.id);
    assert_eq!(changes[0].value, 0.12);
    assert!(b.open().is_empty());
    let all = b.fleet.alerts(false, 10).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, "resolved");
    assert!(all[0].resolved_unix_s.is_some());
    assert_eq!(all[0].value, Some(0.52), "keeps the last value that held");

    let events: Vec<(String, String)> = b
        .fleet
        .events(Some("pi-1"), 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.detail))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "alert");
    assert!(events[0].1.contains("PSI 0.41 > 0.20"), "{events:?}");
    assert_eq!(events[1].0, "alert-resolved");
    assert!(events[1].1.contains("PSI 0.12 <= 0.20"), "{events:?}");

    b.store(&d, drifting(300, vec![60, 700, 80]));
    let changes = b.eval(&rules);
    assert_eq!(kinds(&changes), [(Change::Opened, Rule::Drift, "1".into())]);
    assert_ne!(changes[0].id, c.id, "a new alert after a resolved one");
}

#[test]
fn drift_threshold_is_strict_and_per_feature() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    let rules = Rules::only(Rule::Drift);
    b.store(&d, drifting(100, vec![200, 200]));
    assert!(b.eval(&rules).is_empty(), "PSI exactly at the threshold");
    b.store(&d, drifting(100, vec![201, 200]));
    let changes = b.eval(&rules);
    assert_eq!(kinds(&changes), [(Change::Opened, Rule::Drift, "0".into())]);
    assert_eq!(
        changes[0].detail,
        "feature 0 PSI 0.201 > 0.20 over 100 requests"
    );
    b.store(&d, drifting(100, vec![201, 250]));
    assert_eq!(
        kinds(&b.eval(&rules)),
        [(Change::Opened, Rule::Drift, "1".into())]
    );
    assert_eq!(b.open().len(), 2);
}

#[test]
fn drift_ignores_windows_with_too_few_requests() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    let rules = Rules::only(Rule::Drift);
    b.store(&d, drifting(99, vec![900]));
    assert!(b.eval(&rules).is_empty(), "99 requests < min_requests 100");
    b.store(&d, drifting(100, vec![300]));
    b.store(&d, drifting(5, vec![0]));
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Opened, Rule::Drift, "0".into())],
        "the latest eligible window decides, not the small latest one"
    );
    b.store(&d, drifting(5, vec![0]));
    b.store(&d, drifting(5, vec![0]));
    assert!(
        b.eval(&rules).is_empty(),
        "no eligible window among the latest 3: no evidence, the alert stays"
    );
    assert_eq!(b.open().len(), 1);
}

#[test]
fn accuracy_sums_the_latest_windows_of_the_current_model() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    let rules = Rules::only(Rule::Accuracy);
    let fb = |feedback, correct, model| Report {
        feedback,
        feedback_correct: correct,
        model,
        ..window(50)
    };
    b.store(&d, fb(19, 0, MODEL_A));
    assert!(b.eval(&rules).is_empty(), "19 labels < min_feedback 20");
    b.store(&d, fb(1, 1, MODEL_A));
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Opened, Rule::Accuracy, String::new())]
    );
    assert_eq!(changes[0].value, 0.05);
    assert_eq!(
        changes[0].detail,
        "accuracy 5.0% < 80.0% (1 of 20 labels correct)"
    );
    b.store(&d, fb(10, 10, MODEL_A));
    assert!(b.eval(&rules).is_empty(), "11 of 30 still below");
    b.store(&d, fb(10, 10, MODEL_A));
    b.store(&d, fb(10, 10, MODEL_A));
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Resolved, Rule::Accuracy, String::new())],
        "only the latest 3 windows count: 30 of 30"
    );
}

#[test]
fn accuracy_boundary_and_a_new_model_starts_afresh() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    let rules = Rules::only(Rule::Accuracy);
    let fb = |feedback, correct, model| Report {
        feedback,
        feedback_correct: correct,
        model,
        ..window(50)
    };
    b.store(&d, fb(20, 16, MODEL_A));
    assert!(b.eval(&rules).is_empty(), "0.8 exactly is not below 0.8");
    b.store(&d, fb(20, 15, MODEL_A));
    assert_eq!(
        kinds(&b.eval(&rules)),
        [(Change::Opened, Rule::Accuracy, String::new())],
        "31 of 40"
    );
    b.store(&d, fb(10, 0, MODEL_B));
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Resolved, Rule::Accuracy, String::new())],
        "the alert was about model A; B has 10 labels, too few to judge"
    );
    assert!(
        changes[0].detail.contains("runs b2b2b2b2b2b2b2b2 now"),
        "{}",
        changes[0].detail
    );
    b.store(&d, fb(10, 0, MODEL_B));
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Opened, Rule::Accuracy, String::new())]
    );
    assert_eq!(
        changes[0].value, 0.0,
        "A's 35 right answers are not counted for B"
    );
    assert_eq!(changes[0].model.as_deref(), Some("b2b2b2b2b2b2b2b2"));
}

#[test]
fn latency_uses_the_latest_window_with_requests() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    let rules = Rules::only(Rule::Latency);
    let slow = |requests, p95| {
        let mut r = window(requests);
        r.latency_us.p95 = p95;
        r
    };
    b.store(&d, slow(10, 250_000));
    assert!(b.eval(&rules).is_empty(), "at the threshold");
    b.store(&d, slow(10, 250_001));
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Opened, Rule::Latency, String::new())]
    );
    assert_eq!(changes[0].value, 250_001.0);
    assert_eq!(changes[0].threshold, 250_000.0);
    b.store(&d, slow(0, 0));
    assert!(b.eval(&rules).is_empty(), "an idle window says nothing");
    b.store(&d, slow(10, 300_000));
    assert!(b.eval(&rules).is_empty());
    assert_eq!(b.open()[0].value, Some(300_000.0), "updated while it holds");
    b.store(&d, slow(10, 100_000));
    assert_eq!(
        kinds(&b.eval(&rules)),
        [(Change::Resolved, Rule::Latency, String::new())]
    );
}

#[test]
fn error_rate_sums_requests_over_the_latest_windows() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    let rules = Rules::only(Rule::Errors);
    let failing = |requests, errors| Report {
        errors,
        ..window(requests)
    };
    b.store(&d, failing(99, 50));
    assert!(b.eval(&rules).is_empty(), "99 requests < min_requests 100");
    b.store(&d, failing(1, 0));
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Opened, Rule::Errors, String::new())]
    );
    assert_eq!(changes[0].value, 0.5);
    assert_eq!(
        changes[0].detail,
        "error rate 50.00% > 5.00% (50 of 100 requests failed)"
    );
    b.store(&d, failing(1000, 0));
    b.store(&d, failing(1000, 0));
    assert_eq!(
        kinds(&b.eval(&rules)),
        [(Change::Resolved, Rule::Errors, String::new())],
        "1 + 1000 + 1000 requests, 0 errors"
    );

    let d2 = b.device("pi-2");
    b.store(&d2, failing(100, 5));
    assert!(b.eval(&rules).is_empty(), "5% exactly is not above 5%");
    b.store(&d2, failing(100, 6));
    assert_eq!(
        kinds(&b.eval(&rules)),
        [(Change::Opened, Rule::Errors, String::new())],
        "11 of 200"
    );
}

#[test]
fn silence_only_for_devices_seen_before() {
    let mut b = Bench::new();
    let never = b.device("never");
    let d = b.device("pi-1");
    let rules = Rules::only(Rule::Silence);
    let t0 = 1_800_000_000;
    let seen_at = |b: &mut Bench, t: i64| {
        b.fleet
            .conn
            .execute(
                "UPDATE devices SET last_seen_unix_s = ?1 WHERE id = ?2",
                params![t, d.id],
            )
            .unwrap();
    };
    seen_at(&mut b, t0);
    let eval = |b: &mut Bench, now| evaluate(&mut b.fleet, &rules, now).unwrap();
    assert!(
        eval(&mut b, t0 + 90).is_empty(),
        "90 s is not more than 90 s"
    );
    let changes = eval(&mut b, t0 + 91);
    assert_eq!(
        kinds(&changes),
        [(Change::Opened, Rule::Silence, String::new())]
    );
    assert_eq!(changes[0].device, "pi-1");
    assert_eq!(changes[0].value, 91.0);
    assert!(eval(&mut b, t0 + 10_000).is_empty());
    assert_eq!(b.open()[0].value, Some(10_000.0));
    seen_at(&mut b, t0 + 10_001);
    let changes = eval(&mut b, t0 + 10_002);
    assert_eq!(
        kinds(&changes),
        [(Change::Resolved, Rule::Silence, String::new())]
    );
    assert_eq!(changes[0].detail, "seen 1 s ago");
    assert!(b.open().is_empty());
    assert!(
        b.fleet
            .alerts(false, 10)
            .unwrap()
            .iter()
            .all(|a| a.device.as_deref() != Some(never.name.as_str()))
    );
}

#[test]
fn a_report_counts_as_contact() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    b.store(&d, window(10));
    let now = crate::fleet::now_unix_s();
    let rules = Rules::only(Rule::Silence);
    assert!(evaluate(&mut b.fleet, &rules, now + 5).unwrap().is_empty());
    assert_eq!(
        kinds(&evaluate(&mut b.fleet, &rules, now + 1000).unwrap()),
        [(Change::Opened, Rule::Silence, String::new())]
    );
}

#[test]
fn disabling_a_rule_resolves_its_alerts() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    b.store(
        &d,
        Report {
            errors: 50,
            ..drifting(100, vec![900])
        },
    );
    let mut rules = Rules::default();
    rules.silence.enabled = false;
    let mut opened = kinds(&b.eval(&rules));
    opened.sort_by_key(|k| k.1.as_str());
    assert_eq!(
        opened,
        [
            (Change::Opened, Rule::Drift, "0".into()),
            (Change::Opened, Rule::Errors, String::new()),
        ]
    );
    rules.errors.enabled = false;
    let changes = b.eval(&rules);
    assert_eq!(
        kinds(&changes),
        [(Change::Resolved, Rule::Errors, String::new())]
    );
    assert_eq!(changes[0].detail, "rule errors is disabled");
    assert_eq!(b.open().len(), 1);
}

#[test]
fn alerts_name_the_model_by_device_or_push() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    let p = b
        .fleet
        .create_push("iris", "3", b"signed bytes", None)
        .unwrap();
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&p.model.sha256[..8]);
    b.store(
        &d,
        Report {
            model: hash,
            ..drifting(100, vec![900])
        },
    );
    let rules = Rules::only(Rule::Drift);
    let changes = b.eval(&rules);
    assert_eq!(changes[0].model.as_deref(), Some("iris"));
    assert_eq!(changes[0].version.as_deref(), Some("3"));
    b.fleet.seen(&d, None, None, Some(Some(&p.model))).unwrap();
    assert!(b.eval(&rules).is_empty(), "same model either way");
    let a = &b.open()[0];
    assert_eq!(
        (a.model.as_deref(), a.version.as_deref()),
        (Some("iris"), Some("3"))
    );
}

#[test]
fn a_device_without_a_model_raises_no_report_alerts() {
    let mut b = Bench::new();
    let d = b.device("pi-1");
    b.store(
        &d,
        Report {
            model: [0; 8],
            errors: 100,
            ..drifting(100, vec![900])
        },
    );
    let mut rules = Rules::default();
    rules.silence.enabled = false;
    assert!(b.eval(&rules).is_empty());
}

#[test]
fn latest_reports_are_read_through_the_device_seq_index() {
    let b = Bench::new();
    let plan: Vec<String> = b
        .fleet
        .conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT seq, received_unix_s, report FROM metrics
             WHERE device_id = ?1 ORDER BY run DESC, seq DESC LIMIT ?2",
        )
        .unwrap()
        .query_map(params![1, 3], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|p| p.contains("USING INDEX metrics_by_device_run_seq")),
        "{plan:?}"
    );
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
}

/// Prints the cost of one evaluation on 1,000 devices with 10 reports each (no timing
/// assertion; `cargo test --release -- --nocapture evaluation_time` for real figures).
#[test]
fn evaluation_time_on_a_thousand_devices() {
    let mut b = Bench::new();
    let mut batch = Vec::new();
    for i in 0..1000 {
        let d = b.device(&format!("pi-{i:04}"));
        for seq in 1..=10u64 {
            let mut r = drifting(200, vec![(i % 300) as u16; 16]);
            r.errors = if i % 10 == 0 { 40 } else { 1 };
            r.latency_us.p95 = 1000 * (i as u32 % 400);
            r.feedback = 10;
            r.feedback_correct = if i % 7 == 0 { 5 } else { 10 };
            batch.push((d.id, seq, r));
        }
    }
    let refs: Vec<(i64, u64, &Report)> = batch.iter().map(|(d, s, r)| (*d, *s, r)).collect();
    assert_eq!(b.fleet.store_reports(&refs).unwrap(), 10_000);
    let rules = Rules::default();
    let now = crate::fleet::now_unix_s();
    let t = std::time::Instant::now();
    let opened = evaluate(&mut b.fleet, &rules, now).unwrap();
    let first = t.elapsed();
    let t = std::time::Instant::now();
    let again = evaluate(&mut b.fleet, &rules, now + 1).unwrap();
    let steady = t.elapsed();
    assert!(again.is_empty());
    let open = b.fleet.alerts(true, usize::MAX).unwrap().len();
    assert_eq!(open, opened.len());
    println!(
        "alerts::evaluate on 1,000 devices x 10 reports: {first:?} opening {} alerts, \
         then {steady:?} with them open ({} build)",
        opened.len(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}
