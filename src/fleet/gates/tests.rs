//! The gates' decisions on hand-made evidence.

use super::*;
use crate::metrics::Percentiles;

fn window(requests: u32, p50: u32, active_p50: u32) -> ShadowReport {
    ShadowReport {
        requests,
        agreed: requests,
        latency_us: Percentiles {
            p50,
            p95: p50 * 3,
            p99: p50 * 9,
        },
        active_latency_us: Percentiles {
            p50: active_p50,
            p95: active_p50 * 3,
            p99: active_p50 * 9,
        },
        memory_kib: 100,
        active_memory_kib: 100,
        ..ShadowReport::default()
    }
}

fn evidence(windows: &[ShadowReport]) -> ShadowEvidence {
    ShadowEvidence::from_reports(windows)
}

#[test]
fn too_few_requests_or_windows_wait() {
    let g = Gates::DEFAULT;
    let e = evidence(&[window(150, 100, 100)]);
    assert!(matches!(judge(&g, &e), Verdict::Wait(w) if w.contains("150 of the 200")));
    let e = evidence(&vec![window(400, 100, 100); 4]);
    match judge(&g, &e) {
        Verdict::Wait(w) => assert!(w.contains("must lead by 5 windows"), "{w}"),
        v => panic!("{v:?}"),
    }
    // Windows under 10 requests do not vote.
    let mut w: Vec<ShadowReport> = vec![window(400, 100, 100); 4];
    w.push(window(9, 100, 100));
    assert!(matches!(judge(&g, &evidence(&w)), Verdict::Wait(_)));
    w.push(window(10, 100, 100));
    assert!(
        matches!(judge(&g, &evidence(&w)), Verdict::Promote(_)),
        "{:?}",
        judge(&g, &evidence(&w))
    );
}

#[test]
fn latency_decides_when_slow_or_fast_windows_lead_by_five() {
    let g = Gates::DEFAULT;
    // 5 ms against 1 ms in seven windows of nine: rejected, whatever the other two say.
    let mut w = vec![window(100, 5000, 1000); 7];
    w.extend([window(100, 900, 1000), window(100, 40, 60_000)]);
    match judge(&g, &evidence(&w)) {
        Verdict::Reject(r) => assert!(r.contains("7 of 9 windows"), "{r}"),
        v => panic!("{v:?}"),
    }
    // Two spoilt windows: the lead is 3 of 5 needed, it waits; two more good ones pass.
    let mut w = vec![window(100, 1000, 1000); 5];
    w.extend([window(100, 9000, 1000), window(100, 20_000, 1000)]);
    assert!(matches!(judge(&g, &evidence(&w)), Verdict::Wait(t) if t.contains("lead by 5")));
    w.extend(vec![window(100, 1000, 1000); 2]);
    assert!(matches!(judge(&g, &evidence(&w)), Verdict::Promote(_)));
    // Five times slower at 5 us is 20 us more: below the margin, it passes.
    let w = vec![window(100, 25, 5); 5];
    assert!(matches!(judge(&g, &evidence(&w)), Verdict::Promote(_)));
    // Five times slower at 1 ms in five windows: rejected.
    let w = vec![window(100, 5000, 1000); 5];
    assert!(matches!(judge(&g, &evidence(&w)), Verdict::Reject(_)));
}

fn labelled(n: u32, shadow: u32, active: u32, both: u32) -> ShadowReport {
    ShadowReport {
        feedback: n,
        feedback_correct: shadow,
        active_feedback_correct: active,
        feedback_both_correct: both,
        ..window(400, 100, 100)
    }
}

#[test]
fn accuracy_needs_its_bound_beyond_the_allowed_drop() {
    let g = Gates::DEFAULT;
    // 20 labels: 16 right against 18 can neither pass nor fail.
    let mut w = vec![labelled(20, 16, 18, 16)];
    w.extend(vec![window(400, 100, 100); 4]);
    match judge(&g, &evidence(&w)) {
        Verdict::Wait(t) => assert!(t.contains("more labels needed"), "{t}"),
        v => panic!("{v:?}"),
    }
    // 20 labels, 20 against 2 right: a retrained model, promoted although it disagrees.
    let mut w = vec![ShadowReport {
        agreed: 2,
        ..labelled(20, 20, 2, 2)
    }];
    w.extend(vec![window(400, 100, 100); 4]);
    assert!(matches!(judge(&g, &evidence(&w)), Verdict::Promote(_)));
    // 5000 labels, 85 % against 90 %: rejected.
    let mut w = vec![labelled(5000, 4250, 4500, 4000)];
    w.extend(vec![window(400, 100, 100); 4]);
    match judge(&g, &evidence(&w)) {
        Verdict::Reject(r) => assert!(r.contains("0.850 vs the current model's 0.900"), "{r}"),
        v => panic!("{v:?}"),
    }
    // The same accuracies with the same answers everywhere but 1 %: passed.
    let mut w = vec![labelled(5000, 4500, 4500, 4480)];
    w.extend(vec![window(400, 100, 100); 4]);
    assert!(matches!(judge(&g, &evidence(&w)), Verdict::Promote(_)));
}

#[test]
fn agreement_and_errors_decide_on_their_bounds() {
    let g = Gates::DEFAULT;
    let mut w = vec![window(100, 100, 100); 5];
    for r in &mut w {
        r.agreed = 50;
    }
    match judge(&g, &evidence(&w)) {
        Verdict::Reject(r) => assert!(r.contains("agreement 0.500"), "{r}"),
        v => panic!("{v:?}"),
    }
    // Some labels arrived: they will judge instead; wait for them.
    w[0].feedback = 3;
    w[0].feedback_correct = 3;
    assert!(
        matches!(judge(&g, &evidence(&w)), Verdict::Wait(t) if t.contains("3 of the 20 labels"))
    );
    // 2 errors in 250 requests: the rate's bounds straddle 2 %; 30 in 250 fail.
    let mut w = vec![window(50, 100, 100); 5];
    w[0].errors = 2;
    w[0].agreed = 48;
    assert!(matches!(judge(&g, &evidence(&w)), Verdict::Wait(t) if t.contains("error rate")));
    w[0].errors = 30;
    w[0].agreed = 20;
    w[1].errors = 0;
    match judge(&g, &evidence(&w)) {
        Verdict::Reject(r) => assert!(r.contains("shadow error rate 0.120"), "{r}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn memory_and_every_failure_are_named() {
    let g = Gates::DEFAULT;
    let mut w = vec![window(100, 9000, 1000); 5];
    for r in &mut w {
        r.memory_kib = 400;
        r.agreed = 10;
    }
    match judge(&g, &evidence(&w)) {
        Verdict::Reject(r) => {
            for part in ["agreement", "median latency", "memory 400 KiB"] {
                assert!(r.contains(part), "{part} in {r}");
            }
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn contradictory_counts_are_clamped() {
    let r = ShadowReport {
        requests: 10,
        errors: 50,
        agreed: 99,
        feedback: 5,
        feedback_correct: 9,
        active_feedback_correct: 1,
        feedback_both_correct: 4,
        ..ShadowReport::default()
    };
    let e = evidence(&[r]);
    assert_eq!((e.requests, e.errors, e.agreed), (10, 10, 0));
    assert_eq!(
        (
            e.feedback_correct,
            e.active_feedback_correct,
            e.feedback_both_correct
        ),
        (5, 1, 1)
    );
    assert!(e.windows.is_empty());
}

#[test]
fn a_promoted_model_is_rolled_back_only_when_shown_worse() {
    let g = Gates::DEFAULT;
    let base = Some(Baseline {
        accuracy: 0.95,
        labels: Some(400),
    });
    let q = |feedback, correct| QualityTotals {
        feedback,
        correct,
        requests: 1000,
        errors: 0,
    };
    // 18 of 20 right against 95 %: could be luck.
    assert_eq!(watch(&g, base, &q(20, 18)), None);
    // Every label wrong: shown.
    let why = watch(&g, base, &q(20, 0)).unwrap();
    assert!(
        why.contains("feedback accuracy 0.000 over 20 labels"),
        "{why}"
    );
    // 80 % over 1000 labels against an exact 95 %: shown.
    let exact = Some(Baseline {
        accuracy: 0.95,
        labels: None,
    });
    assert!(watch(&g, exact, &q(1000, 800)).is_some());
    assert_eq!(watch(&g, exact, &q(1000, 945)), None);
    // Errors: 5 of 100 could be 2 %; 50 of 100 cannot.
    let errs = |errors| QualityTotals {
        requests: 100,
        errors,
        ..QualityTotals::default()
    };
    assert_eq!(watch(&g, None, &errs(5)), None);
    assert!(
        watch(&g, None, &errs(50))
            .unwrap()
            .contains("error rate 0.500")
    );
}

#[test]
fn gates_parse_with_defaults_check_ranges_and_refuse_unknown_keys() {
    let g: Gates = toml::from_str("min_agreement = 0.99").unwrap();
    assert_eq!(g.min_agreement, 0.99);
    assert_eq!(g.watch_s, Gates::DEFAULT.watch_s);
    assert!(toml::from_str::<Gates>("min_agreemnt = 0.99").is_err());
    assert_eq!(Gates::DEFAULT.check(), Ok(()));
    for (text, key) in [
        ("confidence = 1.0", "confidence"),
        ("confidence = 0.4", "confidence"),
        ("max_error_rate = 1.0", "max_error_rate"),
        ("min_agreement = 1.5", "min_agreement"),
        ("max_latency_ratio = 0.0", "max_latency_ratio"),
        ("latency_lead_windows = 0", "latency_lead_windows"),
        ("min_feedback = 0", "min_feedback"),
        ("canary_timeout_s = 0", "canary_timeout_s"),
    ] {
        let g: Gates = toml::from_str(text).unwrap();
        assert_eq!(g.check().unwrap_err().0, key, "{text}");
    }
}

/// docs/alerts.md's `[rollout]` rows give each key's default: the same as the code's.
#[test]
fn the_documented_defaults_are_the_codes() {
    let doc = include_str!("../../../docs/alerts.md");
    let documented: Vec<(String, String)> = doc
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `rollout.")?;
            let (key, rest) = rest.split_once("` | `")?;
            let (value, _) = rest.split_once('`')?;
            Some((key.to_string(), value.to_string()))
        })
        .collect();
    let code = serde_json::to_value(Gates::DEFAULT).unwrap();
    let code = code.as_object().unwrap();
    assert_eq!(documented.len(), code.len(), "{documented:?}");
    for (key, value) in documented {
        let want: f64 = value.parse().unwrap();
        assert_eq!(code[&key].as_f64(), Some(want), "rollout.{key}");
    }
}
