//! Serving, shadow comparison, feedback and the rollback watch on real models.

use super::*;

/// The bundled digits MLP (64 inputs), serving with room for `recent` predictions.
fn serving(recent: usize) -> Serving {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/digits-mlp/model.perch"
    ))
    .unwrap();
    let loaded = Loaded::from_bytes(&bytes, 1 << 30).unwrap();
    let reference = ModelRef {
        name: "digits".into(),
        version: "1".into(),
        sha256: [0; 32],
    };
    let mut s = Serving::new(RollbackPolicy {
        min_requests: 100,
        error_rate: 0.5,
    });
    s.replace(Active::new(loaded, reference, recent), false);
    s
}

/// Predicts `n` samples whose first value is `first + i`, labelling each.
fn predict_and_label(s: &mut Serving, first: f32, n: usize) {
    for i in 0..n {
        let mut x = vec![0.0f32; 64];
        x[0] = first + i as f32;
        let p = s.predict(&x, &[1, 64]).unwrap();
        s.feedback(p.ids[0], 3.0).unwrap();
    }
}

#[test]
fn a_shadow_is_timed_alternately_and_reports_the_paired_feedback_table() {
    let mut s = serving(64);
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/digits-mlp/model.perch"
    ))
    .unwrap();
    let reference = ModelRef {
        name: "digits".into(),
        version: "2".into(),
        sha256: [9; 32],
    };
    s.set_shadow(Shadow::new(
        Loaded::from_bytes(&bytes, 1 << 30).unwrap(),
        reference,
        7,
    ));
    let mut order = Vec::new();
    for i in 0..6 {
        let mut x = vec![0.0f32; 64];
        x[i] = 16.0;
        let p = s.predict(&x, &[1, 64]).unwrap();
        order.push(s.shadow().unwrap().ran_first);
        // The same model: both right on label `predicted`, both wrong on any other.
        let predicted = match predicted_outcome(&p.outputs, s.active().unwrap().label_output, 0) {
            Outcome::Class(c) => c as f64,
            Outcome::Value(_) => panic!("a classifier"),
        };
        let label = if i % 3 == 0 {
            predicted
        } else {
            predicted + 1.0
        };
        s.feedback(p.ids[0], label).unwrap();
    }
    assert_eq!(order, [true, false, true, false, true, false]);
    let r = s.close_window().unwrap().shadow.unwrap();
    assert_eq!((r.requests, r.agreed, r.errors), (6, 6, 0));
    assert_eq!(r.feedback, 6);
    assert_eq!(
        (
            r.feedback_correct,
            r.active_feedback_correct,
            r.feedback_both_correct
        ),
        (2, 2, 2)
    );
    assert!(r.latency_us.p50 >= 1 && r.active_latency_us.p50 >= 1);
}

/// A model of `layers` identity dense layers of width `width`: every one computes the
/// same answer, in time proportional to `layers`.
#[cfg(feature = "host")]
fn identity_chain(width: usize, layers: usize) -> Loaded {
    use crate::graph::{Layer, Tensor};
    let mut eye = vec![0.0f32; width * width];
    for i in 0..width {
        eye[i * width + i] = 1.0;
    }
    let dense = |i| {
        let layer = Layer::Dense {
            weight: Tensor::f32(vec![width as u32; 2], eye.clone()),
            bias: None,
        };
        (format!("d{i}"), layer)
    };
    let model = crate::test_fixtures::chain(
        width as u32,
        (0..layers).map(dense),
        &[("y", layers as u32)],
    );
    Loaded::from_bytes(&crate::artifact::encode(&model).unwrap(), 1 << 30).unwrap()
}

/// The acceptance's real-timing half: two threads spin on this 2-core machine while the
/// agent's serving path times an active model and a shadow in 100 canary phases of 5
/// windows of 10 requests each. A shadow equal to the active model is promoted in at
/// least 99; one doing 5 times the work, at a latency 4 times the gate's margin above
/// the active one's, is rejected in at least 99. The models are sized at run time so
/// that the active one takes about 50 us whatever the build's optimization.
#[cfg(feature = "host")]
#[test]
fn shadow_timing_under_cpu_hogs_promotes_equals_and_rejects_5x() {
    use crate::fleet::gates::{Gates, ShadowEvidence, Verdict, judge};
    const WIDTH: usize = 64;
    let reference = |v: &str| ModelRef {
        name: "chain".into(),
        version: v.into(),
        sha256: [v.as_bytes()[0]; 32],
    };
    // Layers for about 50 us: time a 4-layer chain (best of 20).
    let mut probe = identity_chain(WIDTH, 4).model;
    let x = vec![0.5f32; WIDTH];
    let best_us = (0..20).map(|_| timed(|| probe.run(&x, 1)).1).min().unwrap();
    let layers = ((50.0 / (best_us as f64 / 4.0)).round() as usize).clamp(1, 2000);
    let gates = Gates {
        min_shadow_requests: 50,
        max_latency_increase_us: 50,
        max_error_rate: 0.1,
        ..Gates::DEFAULT
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut v = i as u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    v = std::hint::black_box(v.wrapping_mul(6_364_136_223_846_793_005) + 1);
                }
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for (slowdown, version) in [(1, "1"), (5, "5")] {
        let mut s = Serving::new(RollbackPolicy {
            min_requests: 100,
            error_rate: 0.5,
        });
        s.replace(
            Active::new(identity_chain(WIDTH, layers), reference("0"), 16),
            false,
        );
        let mut shadow = Shadow::new(
            identity_chain(WIDTH, layers * slowdown),
            reference(version),
            1,
        );
        let started = Instant::now();
        let (mut promoted, mut rejected, mut medians) = (0, 0, Vec::new());
        for _ in 0..100 {
            s.set_shadow(shadow);
            let mut evidence = ShadowEvidence::default();
            for _ in 0..5 {
                for _ in 0..10 {
                    s.predict(&x, &[1, WIDTH]).unwrap();
                }
                let r = s.close_window().unwrap().shadow.unwrap();
                medians.push(f64::from(r.latency_us.p50) / f64::from(r.active_latency_us.p50));
                evidence.add(&r);
            }
            match judge(&gates, &evidence) {
                Verdict::Promote(_) => promoted += 1,
                Verdict::Reject(_) => rejected += 1,
                Verdict::Wait(w) => panic!("5 windows of 10 requests decide: {w}"),
            }
            shadow = s.end_shadow(1).unwrap();
        }
        medians.sort_by(f64::total_cmp);
        let spoilt = medians
            .iter()
            .filter(|r| (**r > 3.0) != (slowdown > 3))
            .count();
        eprintln!(
            "shadow doing {slowdown}x the work ({layers} layers of {WIDTH}x{WIDTH} for the active model, {best_us} us per 4 at best): {promoted} promoted, {rejected} rejected of 100 in {:.1} s; window median ratio p1 {:.2}, p50 {:.2}, p99 {:.2}; {spoilt} of 500 windows on the wrong side of 3x",
            started.elapsed().as_secs_f64(),
            medians[5],
            medians[250],
            medians[495]
        );
        outcomes.push((promoted, rejected));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    assert!(outcomes[0].0 >= 99, "equal models: {outcomes:?}");
    assert!(outcomes[1].1 >= 99, "5x the work: {outcomes:?}");
}

#[test]
fn a_model_whose_samples_are_too_large_to_keep_serves_without_feedback() {
    use crate::graph::{Graph, Layer, Metadata, Model, Node, Output, TensorSpec};
    let n = crate::metrics::MAX_RECENT_VALUES + 1;
    let graph = Graph {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![n as u32],
        }],
        nodes: vec![Node {
            name: "relu".into(),
            layer: Layer::Relu,
            inputs: vec![0],
        }],
        outputs: vec![Output {
            name: "y".into(),
            value: 1,
        }],
    };
    let model = runtime::Model::from_native(&Model {
        metadata: Metadata::default(),
        graph,
    })
    .unwrap();
    let loaded = Loaded {
        model,
        memory_kib: 0,
    };
    let reference = ModelRef {
        name: "wide".into(),
        version: "1".into(),
        sha256: [0; 32],
    };
    let mut s = Serving::new(RollbackPolicy {
        min_requests: 100,
        error_rate: 0.5,
    });
    // This used to hit `unreachable!` (and did at every agent start).
    s.replace(Active::new(loaded, reference, 256), false);
    let p = s.predict(&vec![-1.0; n], &[1, n]).unwrap();
    assert_eq!(p.ids.len(), 1);
    let e = s.feedback(p.ids[0], 1.0).unwrap_err();
    assert!(e.contains("too large to keep"), "{e}");
    assert!(s.close_window().unwrap().samples.is_empty());
}

#[test]
fn a_report_carries_its_own_windows_samples_evenly_spaced() {
    let mut s = serving(1024);
    predict_and_label(&mut s, 0.0, 10);
    let r = s.close_window().unwrap();
    let firsts: Vec<f32> = r.samples.iter().map(|l| l.input[0]).collect();
    assert_eq!(firsts, (0..10).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(r.samples_dropped, 0);
    assert!(r.samples.iter().all(|l| l.input.len() == 64));

    // 256 in the next window: 64 of them, one every four, and nothing of the last one.
    predict_and_label(&mut s, 1000.0, 256);
    let r = s.close_window().unwrap();
    let firsts: Vec<f32> = r.samples.iter().map(|l| l.input[0]).collect();
    assert_eq!(firsts.len(), MAX_REPORT_SAMPLES);
    assert_eq!(
        firsts,
        (0..64).map(|i| 1000.0 + 4.0 * i as f32).collect::<Vec<_>>()
    );
    assert_eq!(r.samples_dropped, 256 - 64);

    // A window without feedback carries nothing, not leftovers.
    let r = s.close_window().unwrap();
    assert!(r.samples.is_empty());
    assert_eq!(r.samples_dropped, 0);
}
