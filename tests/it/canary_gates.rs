//! The canary gate's acceptance: 100 simulated canary phases per case, with the noise of a
//! busy device (preemptions on either model, bursts that spoil a window for one of them;
//! see tests/it/canary_sim.rs), judged after every window by `perch::fleet::gates::judge` as the
//! host's monitor does. A good candidate is promoted in at least 99 of 100 phases; one truly
//! 5x slower (at 1-20 ms) or 5 points less accurate (on up to 20 windows of 100-400
//! labels) is rejected in at least 99 of 100. The real-timing half, with CPU hogs, is the
//! agent's unit test `shadow_timing_under_cpu_hogs_promotes_equals_and_rejects_5x`; the
//! end-to-end one is tests/it/lifecycle.rs.
use crate::canary_sim;

use canary_sim::{Case, Noise, cases, run};
use perch::fleet::gates::Gates;

fn case(name: &str) -> Case {
    *cases()
        .iter()
        .find(|c| c.name.starts_with(name))
        .unwrap_or_else(|| panic!("no case {name}"))
}

fn tally(c: &Case, seed: u64) -> canary_sim::Tally {
    let t = run(&Gates::DEFAULT, c, 100, seed);
    eprintln!(
        "{}: {} promoted, {} rejected, {} timed out of 100 (mean {:.1} windows to a decision); {:?}",
        c.name,
        t.promoted,
        t.rejected,
        t.timed_out,
        t.mean_windows(),
        t.reasons.first()
    );
    t
}

#[test]
fn good_candidates_are_promoted_in_99_of_100_phases() {
    for (i, name) in [
        "good, no labels",
        "good, labels",
        "good, retrained",
        "good, 3x slower at 5-100 us",
        "good, error rate 1 %",
    ]
    .into_iter()
    .enumerate()
    {
        let t = tally(&case(name), 1 + i as u64);
        assert!(t.promoted >= 99, "{name}: {t:?}");
    }
}

#[test]
fn a_candidate_5x_slower_is_rejected_in_99_of_100_phases() {
    let t = tally(&case("5x slower"), 11);
    assert!(t.rejected >= 99, "{t:?}");
    assert!(
        t.reasons.iter().all(|r| r.contains("median latency")),
        "{t:?}"
    );
}

#[test]
fn a_candidate_5_points_less_accurate_is_rejected_in_99_of_100_phases() {
    let t = tally(&case("5 points less accurate"), 12);
    assert!(t.rejected >= 99, "{t:?}");
    assert!(
        t.reasons.iter().all(|r| r.contains("feedback accuracy")),
        "{t:?}"
    );
}

#[test]
fn disagreement_and_errors_are_rejected() {
    for (name, seed, why) in [
        ("agreement 0.80", 13, "agreement"),
        ("error rate 5 %", 14, "error rate"),
    ] {
        let t = tally(&case(name), seed);
        assert!(t.rejected >= 99, "{name}: {t:?}");
        assert!(t.reasons.iter().all(|r| r.contains(why)), "{t:?}");
    }
}

/// 20 labels cannot decide a 5-point difference either way: the phase waits for more.
#[test]
fn twenty_labels_decide_nothing_on_luck() {
    for (cells, seed) in [
        (canary_sim::SAME_QUALITY, 21),
        (canary_sim::FIVE_POINTS_WORSE, 22),
    ] {
        let c = Case {
            name: "20 labels",
            cells: Some(cells),
            requests: (20, 20),
            max_windows: 1,
            noise: Noise::NONE,
            ..case("good, labels")
        };
        let gates = Gates {
            min_shadow_requests: 20,
            latency_lead_windows: 1,
            ..Gates::DEFAULT
        };
        let t = run(&gates, &c, 100, seed);
        assert_eq!(t.timed_out, 100, "{t:?}");
    }
}
