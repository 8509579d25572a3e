//! The [`Collector`]: what the agent calls for every prediction, closed into a [`Report`]
//! once per window, with lifetime totals for Prometheus.

use super::drift::{FeatureDrift, RunningMoments, psi_milli};
use super::histogram::LatencyHistogram;
use super::system::SystemFigures;
use super::{MetricsError, Percentiles, Report};
use crate::graph::DType;
use crate::graph::sections::DriftBaseline;
use std::fmt::Write;

/// Input features whose drift a collector tracks, at most: a model with more has its first
/// `MAX_FEATURES` tracked (see [`Collector::tracked_features`]); the report's `psi_milli`
/// then holds that many values, fewer than the model's input has.
pub const MAX_FEATURES: usize = 256;

/// Classes whose predictions a collector counts, at most: a model with more has its first
/// `MAX_CLASSES` counted (the report's `predictions` is that long) and predictions of later
/// classes counted only as requests.
pub const MAX_CLASSES: usize = 64;

/// What a collector needs to know about the model it watches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelFacts {
    /// The first 8 bytes of the artifact's SHA-256 (zeros when unknown).
    pub model: [u8; 8],
    /// Number of classes; 0 for a regressor.
    pub classes: usize,
    /// Values per input sample.
    pub sample_len: usize,
    /// The training baseline, if the artifact carries one.
    pub baseline: Option<DriftBaseline>,
}

impl ModelFacts {
    /// The facts of a loaded model: its SHA-256 prefix (`.perch` files; zeros for ONNX),
    /// its input's sample length, its drift baseline when the metadata has a valid one
    /// (an invalid one is left out), and its classes: the width of the first float output
    /// when the model also has an integer (label) output, as every classifier perch trains
    /// or converts has; else the number of class labels in the metadata; else 0.
    pub fn of(model: &crate::runtime::Model) -> ModelFacts {
        let info = model.info();
        let sample_len = info.inputs.first().map_or(0, |s| s.sample_len());
        let id = info
            .sha256
            .as_ref()
            .and_then(|hex| crate::util::from_hex::<8>(hex.get(..16)?).ok())
            .unwrap_or([0; 8]);
        let has_label = info.outputs.iter().any(|o| o.dtype == DType::I64);
        let probabilities = info.outputs.iter().find(|o| o.dtype == DType::F32);
        let labels = info.metadata.as_ref().map_or(0, |m| m.class_labels.len());
        let classes = match probabilities {
            Some(p) if has_label => p.sample_len(),
            _ => labels,
        };
        ModelFacts {
            model: id,
            classes,
            sample_len,
            baseline: info
                .metadata
                .as_ref()
                .and_then(|m| m.drift_baseline(sample_len).ok().flatten()),
        }
    }
}

/// Counts that a window and the lifetime both keep.
#[derive(Clone, Debug, Default)]
struct Counts {
    requests: u64,
    errors: u64,
    feedback: u64,
    feedback_correct: u64,
    predictions: heapless::Vec<u64, MAX_CLASSES>,
    latency: LatencyHistogram,
}

impl Counts {
    fn new(classes: usize) -> Counts {
        let mut predictions = heapless::Vec::new();
        // `classes` is at most MAX_CLASSES, so this always fits.
        let _ = predictions.resize(classes.min(MAX_CLASSES), 0);
        Counts {
            predictions,
            ..Counts::default()
        }
    }

    fn request(&mut self, latency_us: u64, class: Option<usize>) {
        self.requests = self.requests.saturating_add(1);
        self.latency.record(latency_us);
        if let Some(n) = class.and_then(|c| self.predictions.get_mut(c)) {
            *n = n.saturating_add(1);
        }
    }

    fn error(&mut self, latency_us: u64) {
        self.requests = self.requests.saturating_add(1);
        self.errors = self.errors.saturating_add(1);
        self.latency.record(latency_us);
    }

    fn feedback(&mut self, correct: bool) {
        self.feedback = self.feedback.saturating_add(1);
        self.feedback_correct = self.feedback_correct.saturating_add(u64::from(correct));
    }

    fn reset(&mut self) {
        self.requests = 0;
        self.errors = 0;
        self.feedback = 0;
        self.feedback_correct = 0;
        self.predictions.iter_mut().for_each(|n| *n = 0);
        self.latency.reset();
    }
}

/// Collects one model's figures in memory fixed at creation: a latency histogram, counters,
/// predictions per class and per-feature drift for the current window, the same totals for
/// the collector's lifetime, and the last closed window's PSI. Nothing allocates per
/// recorded prediction.
///
/// A *request* is one sample the agent was asked to predict: [`record_prediction`] counts a
/// served one, [`record_error`] a failed one, so `errors / requests` is the error rate and
/// the latency percentiles cover both.
///
/// [`record_prediction`]: Collector::record_prediction
/// [`record_error`]: Collector::record_error
#[derive(Clone, Debug)]
pub struct Collector {
    model: [u8; 8],
    classes: usize,
    sample_len: usize,
    baseline: Option<DriftBaseline>,
    window: Counts,
    window_features: Box<[FeatureDrift]>,
    lifetime: Counts,
    lifetime_moments: Box<[RunningMoments]>,
    last_psi_milli: heapless::Vec<u16, MAX_FEATURES>,
    windows: u64,
}

impl Collector {
    /// A collector for the model `facts` describe.
    ///
    /// # Errors
    /// [`MetricsError::Baseline`] when the baseline does not validate against the sample
    /// length (one feature per input value, well-formed bins).
    pub fn new(facts: ModelFacts) -> Result<Collector, MetricsError> {
        let tracked = facts.sample_len.min(MAX_FEATURES);
        let baseline = match facts.baseline {
            Some(mut b) => {
                b.validate(Some(facts.sample_len))
                    .map_err(|e| MetricsError::Baseline(e.to_string()))?;
                b.features.truncate(tracked);
                Some(b)
            }
            None => None,
        };
        Ok(Collector {
            model: facts.model,
            classes: facts.classes,
            sample_len: facts.sample_len,
            baseline,
            window: Counts::new(facts.classes),
            window_features: vec![FeatureDrift::default(); tracked].into_boxed_slice(),
            lifetime: Counts::new(facts.classes),
            lifetime_moments: vec![RunningMoments::default(); tracked].into_boxed_slice(),
            last_psi_milli: heapless::Vec::new(),
            windows: 0,
        })
    }

    /// The model id reports carry.
    pub fn model(&self) -> [u8; 8] {
        self.model
    }

    /// Input features tracked for drift: the sample length, at most [`MAX_FEATURES`].
    pub fn tracked_features(&self) -> usize {
        self.window_features.len()
    }

    /// Classes counted: the model's, at most [`MAX_CLASSES`].
    pub fn tracked_classes(&self) -> usize {
        self.window.predictions.len()
    }

    /// Counts one served prediction: its input sample (the first tracked features of it
    /// are binned and their moments updated; a sample shorter than the model's updates the
    /// features it has), its latency, and the predicted class index for a classifier
    /// (`None` for a regressor; an index beyond the counted classes counts only as a
    /// request).
    pub fn record_prediction(
        &mut self,
        input_sample: &[f32],
        latency_us: u64,
        predicted_class: Option<usize>,
    ) {
        self.window.request(latency_us, predicted_class);
        self.lifetime.request(latency_us, predicted_class);
        let features = self.baseline.as_ref().map(|b| &b.features[..]);
        for (j, (&x, (drift, moments))) in input_sample
            .iter()
            .zip(
                self.window_features
                    .iter_mut()
                    .zip(self.lifetime_moments.iter_mut()),
            )
            .enumerate()
        {
            drift.record(x, features.and_then(|f| f.get(j)));
            moments.record(f64::from(x));
        }
    }

    /// Counts one failed request (the engine refused the input, outputs were not finite…)
    /// and its latency.
    pub fn record_error(&mut self, latency_us: u64) {
        self.window.error(latency_us);
        self.lifetime.error(latency_us);
    }

    /// Counts one labelled feedback, and whether the prediction it labels was correct.
    pub fn record_feedback(&mut self, correct: bool) {
        self.window.feedback(correct);
        self.lifetime.feedback(correct);
    }

    /// Closes the window that began at `window_start_ms` (Unix milliseconds) and lasted
    /// `window_ms` milliseconds: returns its report, with this machine's [`SystemFigures`] read
    /// now, and starts a new window. The report's `dropped` is 0; the
    /// [`ReportQueue`](super::ReportQueue) fills it.
    pub fn close_window(&mut self, window_start_ms: u64, window_ms: u32) -> Report {
        self.close_window_with(window_start_ms, window_ms, SystemFigures::read())
    }

    /// [`Collector::close_window`] with the system figures given.
    pub fn close_window_with(
        &mut self,
        window_start_ms: u64,
        window_ms: u32,
        system: SystemFigures,
    ) -> Report {
        let w = &self.window;
        let pct = |q| {
            w.latency
                .percentile(q)
                .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        self.last_psi_milli.clear();
        if let Some(b) = &self.baseline {
            let served = w.requests - w.errors.min(w.requests);
            if served > 0 {
                for (d, f) in self.window_features.iter().zip(&b.features) {
                    // `tracked` ≤ MAX_FEATURES, so the push always fits.
                    let _ = self.last_psi_milli.push(d.psi(f).map_or(0, psi_milli));
                }
            }
        }
        let report = Report {
            window_start_ms,
            window_ms,
            model: self.model,
            requests: sat(w.requests),
            errors: sat(w.errors),
            latency_us: Percentiles {
                p50: pct(0.5),
                p95: pct(0.95),
                p99: pct(0.99),
            },
            predictions: w.predictions.iter().map(|&n| sat(n)).collect(),
            feedback: sat(w.feedback),
            feedback_correct: sat(w.feedback_correct),
            psi_milli: self.last_psi_milli.to_vec(),
            rss_kib: system.rss_kib.unwrap_or(0),
            cpu_temp_milli_c: system.cpu_temp_milli_c,
            dropped: 0,
            shadow: None,
            samples: Vec::new(),
            samples_dropped: 0,
        };
        self.window.reset();
        self.window_features
            .iter_mut()
            .for_each(FeatureDrift::reset);
        self.windows = self.windows.saturating_add(1);
        report
    }

    /// Appends the lifetime totals to `out` in Prometheus' text exposition format (version
    /// 0.0.4), with this machine's [`SystemFigures`] read now. See
    /// [`Collector::write_prometheus_with`] for the families.
    pub fn write_prometheus(&self, out: &mut String) {
        self.write_prometheus_with(out, &SystemFigures::read());
    }

    /// Appends the lifetime totals (the current window included) to `out` in Prometheus'
    /// text exposition format, `perch_` families:
    /// `requests_total`, `errors_total`, `latency_seconds` (summary: 0.5 / 0.95 / 0.99
    /// quantiles, `_sum`, `_count`), `predictions_total{class}`, `feedback_total`,
    /// `feedback_correct_total`, `feedback_accuracy` (once there is feedback),
    /// `feature_mean{feature}` and `feature_stddev{feature}` (over the lifetime),
    /// `feature_psi{feature}` (the last closed window's PSI), `features` and
    /// `features_tracked`, `windows_total`, `model_info{model}`, and `resident_memory_bytes` /
    /// `cpu_temperature_celsius` when known.
    pub fn write_prometheus_with(&self, out: &mut String, system: &SystemFigures) {
        let l = &self.lifetime;
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP perch_{name} {help}");
            let _ = writeln!(out, "# TYPE perch_{name} {kind}");
        };
        header(
            out,
            "requests_total",
            "counter",
            "Prediction requests (samples), failed ones included.",
        );
        let _ = writeln!(out, "perch_requests_total {}", l.requests);
        header(
            out,
            "errors_total",
            "counter",
            "Failed prediction requests.",
        );
        let _ = writeln!(out, "perch_errors_total {}", l.errors);

        header(
            out,
            "latency_seconds",
            "summary",
            "Prediction request latency (log-linear histogram, quantiles within 3.2%).",
        );
        for (q, label) in [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")] {
            if let Some(us) = l.latency.percentile(q) {
                let _ = writeln!(
                    out,
                    "perch_latency_seconds{{quantile=\"{label}\"}} {}",
                    seconds(us)
                );
            }
        }
        let _ = writeln!(
            out,
            "perch_latency_seconds_sum {}",
            seconds(l.latency.sum_us())
        );
        let _ = writeln!(out, "perch_latency_seconds_count {}", l.latency.count());

        if !l.predictions.is_empty() {
            header(
                out,
                "predictions_total",
                "counter",
                "Served predictions by predicted class index.",
            );
            for (c, n) in l.predictions.iter().enumerate() {
                let _ = writeln!(out, "perch_predictions_total{{class=\"{c}\"}} {n}");
            }
        }

        header(
            out,
            "feedback_total",
            "counter",
            "Labelled feedback received.",
        );
        let _ = writeln!(out, "perch_feedback_total {}", l.feedback);
        header(
            out,
            "feedback_correct_total",
            "counter",
            "Labelled feedback that matched the prediction.",
        );
        let _ = writeln!(out, "perch_feedback_correct_total {}", l.feedback_correct);
        header(
            out,
            "feedback_accuracy",
            "gauge",
            "Share of labelled feedback that matched the prediction.",
        );
        if l.feedback > 0 {
            let _ = writeln!(
                out,
                "perch_feedback_accuracy {}",
                number(l.feedback_correct as f64 / l.feedback as f64)
            );
        }

        let features = self.window_features.len();
        header(
            out,
            "feature_mean",
            "gauge",
            "Mean of each tracked input feature over the collector's lifetime.",
        );
        for (j, m) in self.lifetime_moments.iter().enumerate() {
            if let Some(mean) = m.mean() {
                let _ = writeln!(
                    out,
                    "perch_feature_mean{{feature=\"{j}\"}} {}",
                    number(mean)
                );
            }
        }
        header(
            out,
            "feature_stddev",
            "gauge",
            "Standard deviation of each tracked input feature over the collector's lifetime.",
        );
        for (j, m) in self.lifetime_moments.iter().enumerate() {
            if let Some(v) = m.variance() {
                let _ = writeln!(
                    out,
                    "perch_feature_stddev{{feature=\"{j}\"}} {}",
                    number(v.sqrt())
                );
            }
        }
        header(
            out,
            "feature_psi",
            "gauge",
            "Population stability index of each tracked feature against the training baseline, last closed window.",
        );
        for (j, &p) in self.last_psi_milli.iter().enumerate() {
            let _ = writeln!(
                out,
                "perch_feature_psi{{feature=\"{j}\"}} {}",
                number(f64::from(p) / 1000.0)
            );
        }
        header(
            out,
            "features",
            "gauge",
            "Values per input sample of the model.",
        );
        let _ = writeln!(out, "perch_features {}", self.sample_len);
        header(
            out,
            "features_tracked",
            "gauge",
            "Input features tracked for drift (the first ones, at most 256).",
        );
        let _ = writeln!(out, "perch_features_tracked {features}");
        header(
            out,
            "classes",
            "gauge",
            "Classes of the model (0 for a regressor).",
        );
        let _ = writeln!(out, "perch_classes {}", self.classes);
        header(out, "windows_total", "counter", "Report windows closed.");
        let _ = writeln!(out, "perch_windows_total {}", self.windows);
        header(
            out,
            "model_info",
            "gauge",
            "The model served: first 8 bytes of its artifact's SHA-256.",
        );
        let model = crate::util::to_hex(&self.model);
        let _ = writeln!(out, "perch_model_info{{model=\"{model}\"}} 1");
        if let Some(kib) = system.rss_kib {
            header(
                out,
                "resident_memory_bytes",
                "gauge",
                "Resident memory of the process.",
            );
            let _ = writeln!(out, "perch_resident_memory_bytes {}", u64::from(kib) * 1024);
        }
        if let Some(t) = system.cpu_temp_milli_c {
            header(out, "cpu_temperature_celsius", "gauge", "CPU temperature.");
            let _ = writeln!(
                out,
                "perch_cpu_temperature_celsius {}",
                number(f64::from(t) / 1000.0)
            );
        }
    }
}

fn seconds(us: u64) -> String {
    number(us as f64 / 1e6)
}

/// A sample value as the exposition format spells it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{Message, frame};
    use std::collections::{HashMap, HashSet};

    fn no_system() -> SystemFigures {
        SystemFigures::default()
    }

    /// A baseline of `n` features, feature `j` uniform on `0..100` shifted by `j`.
    fn baseline(n: usize) -> DriftBaseline {
        let cols: Vec<Vec<f64>> = (0..n)
            .map(|j| (0..1000).map(|i| f64::from(i % 100) + j as f64).collect())
            .collect();
        DriftBaseline::from_columns(cols.iter().map(|c| &c[..]))
    }

    fn facts(classes: usize, sample_len: usize, baseline: Option<DriftBaseline>) -> ModelFacts {
        ModelFacts {
            model: [1, 2, 3, 4, 5, 6, 7, 8],
            classes,
            sample_len,
            baseline,
        }
    }

    #[test]
    fn a_window_report_counts_what_was_recorded_and_the_next_starts_empty() {
        let mut c = Collector::new(facts(3, 2, None)).unwrap();
        for i in 0..100u64 {
            c.record_prediction(&[1.0, 2.0], 100 + i, Some((i % 3) as usize));
        }
        c.record_prediction(&[1.0, 2.0], 50, Some(7));
        c.record_error(5_000);
        c.record_feedback(true);
        c.record_feedback(false);
        let system = SystemFigures {
            rss_kib: Some(2048),
            cpu_temp_milli_c: Some(51_250),
        };
        let r = c.close_window_with(1_700_000_000_000, 60_000, system);
        assert_eq!(r.model, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            (r.window_start_ms, r.window_ms),
            (1_700_000_000_000, 60_000)
        );
        assert_eq!((r.requests, r.errors), (102, 1));
        assert_eq!(r.predictions, vec![34, 33, 33]);
        assert_eq!((r.feedback, r.feedback_correct), (2, 1));
        assert!(r.psi_milli.is_empty());
        assert_eq!((r.rss_kib, r.cpu_temp_milli_c), (2048, Some(51_250)));
        // 102 latencies: 50, 100..=199, 5000. The median is about 149, p99 is 199's bucket.
        assert!(
            r.latency_us.p50.abs_diff(149) <= 149 / 32,
            "{:?}",
            r.latency_us
        );
        assert!(
            r.latency_us.p99.abs_diff(199) <= 199 / 32,
            "{:?}",
            r.latency_us
        );
        assert_eq!(r.dropped, 0);

        let empty = c.close_window_with(1_700_000_060, 60, no_system());
        assert_eq!((empty.requests, empty.errors, empty.feedback), (0, 0, 0));
        assert_eq!(empty.predictions, vec![0, 0, 0]);
        assert_eq!(empty.latency_us, Percentiles::default());
        assert_eq!((empty.rss_kib, empty.cpu_temp_milli_c), (0, None));
    }

    #[test]
    fn psi_is_low_for_training_like_input_and_high_for_shifted_input() {
        let mut c = Collector::new(facts(0, 3, Some(baseline(3)))).unwrap();
        for i in 0..2000 {
            let v = (i % 100) as f32;
            // Feature 0 as in training; feature 1 shifted by 60; feature 2 constant.
            c.record_prediction(&[v, v + 1.0 + 60.0, 50.0], 10, None);
        }
        let r = c.close_window_with(0, 60, no_system());
        assert_eq!(r.psi_milli.len(), 3);
        assert!(r.psi_milli[0] < 20, "{:?}", r.psi_milli);
        assert!(r.psi_milli[1] > 1000, "{:?}", r.psi_milli);
        assert!(r.psi_milli[2] > 1000, "{:?}", r.psi_milli);
        assert!(r.predictions.is_empty());
        // A window with only errors served nothing: no PSI.
        c.record_error(10);
        assert!(
            c.close_window_with(60, 60, no_system())
                .psi_milli
                .is_empty()
        );
    }

    #[test]
    fn models_larger_than_the_capacities_have_their_first_features_and_classes_tracked() {
        let n = MAX_FEATURES + 44;
        let mut c = Collector::new(facts(MAX_CLASSES + 10, n, Some(baseline(n)))).unwrap();
        assert_eq!(
            (c.tracked_features(), c.tracked_classes()),
            (MAX_FEATURES, MAX_CLASSES)
        );
        let sample: Vec<f32> = (0..n).map(|j| j as f32 + 50.0).collect();
        c.record_prediction(&sample, 10, Some(MAX_CLASSES + 5));
        c.record_prediction(&sample, 10, Some(MAX_CLASSES - 1));
        // Samples of the wrong length update the features they have.
        c.record_prediction(&sample[..3], 10, Some(0));
        c.record_prediction(&[], 10, Some(0));
        let r = c.close_window_with(0, 60, no_system());
        assert_eq!(r.requests, 4);
        assert_eq!(r.psi_milli.len(), MAX_FEATURES);
        assert_eq!(r.predictions.len(), MAX_CLASSES);
        assert_eq!((r.predictions[0], r.predictions[MAX_CLASSES - 1]), (2, 1));
        let mut text = String::new();
        c.write_prometheus_with(&mut text, &no_system());
        assert!(text.contains(&format!("perch_features {n}\n")));
        assert!(text.contains(&format!("perch_features_tracked {MAX_FEATURES}\n")));
    }

    #[test]
    fn model_facts_come_from_the_loaded_artifact() {
        use crate::graph::{Layer, Tensor, sections};
        let dense = Layer::Dense {
            weight: Tensor::f32(vec![3, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
            bias: None,
        };
        let argmax = Layer::ArgMax { labels: None };
        let mut model = crate::test_fixtures::chain(
            2,
            [("dense", dense), ("argmax", argmax)],
            &[("scores", 1), ("label", 2)],
        );
        model
            .metadata
            .set_section(sections::DRIFT_BASELINE, &baseline(2))
            .unwrap();
        let bytes = crate::artifact::encode(&model).unwrap();
        let loaded = crate::runtime::Model::from_artifact_bytes(&bytes).unwrap();
        let f = ModelFacts::of(&loaded);
        let sha = crate::artifact::decode(&bytes).unwrap().sha256;
        assert_eq!(f.model[..], sha[..8]);
        assert_eq!((f.classes, f.sample_len), (3, 2));
        assert_eq!(f.baseline, Some(baseline(2)));
        Collector::new(f).unwrap();

        // Without the label output it is a regressor (3 values); a baseline of the wrong
        // width is left out rather than refused.
        model.graph.outputs.pop();
        model
            .metadata
            .set_section(sections::DRIFT_BASELINE, &baseline(5))
            .unwrap();
        let bytes = crate::artifact::encode(&model).unwrap();
        let f = ModelFacts::of(&crate::runtime::Model::from_artifact_bytes(&bytes).unwrap());
        assert_eq!((f.classes, f.sample_len, f.baseline), (0, 2, None));
    }

    #[test]
    fn a_baseline_that_does_not_fit_the_model_is_refused() {
        assert!(matches!(
            Collector::new(facts(2, 4, Some(baseline(3)))),
            Err(MetricsError::Baseline(_))
        ));
        let mut bad = baseline(1);
        bad.features[0].fractions_e4.pop();
        assert!(Collector::new(facts(2, 1, Some(bad))).is_err());
    }

    /// A sample: metric name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// Checks `text` line by line against the text exposition format (0.0.4): HELP and TYPE
    /// at most once per family and before its samples, each family's samples together,
    /// metric and label names well formed, label values quoted with valid escapes, values
    /// numbers; counters end in `_total`, summaries have `_sum` / `_count` and quantiles.
    /// Returns the samples.
    fn parse_exposition(text: &str) -> Vec<Sample> {
        fn metric_name(s: &str) -> bool {
            let mut c = s.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
                && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
        fn label_name(s: &str) -> bool {
            let mut c = s.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        fn value(s: &str) -> f64 {
            match s {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                _ => s.parse().unwrap_or_else(|_| panic!("value {s:?}")),
            }
        }
        assert!(text.ends_with('\n'), "the text ends with a newline");
        let (mut helped, mut typed) = (HashSet::new(), HashMap::new());
        let mut done: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, doc) = rest.split_once(' ').expect("HELP name doc");
                assert!(metric_name(name) && !doc.is_empty(), "{line}");
                assert!(helped.insert(name.to_string()), "second HELP: {line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(metric_name(name), "{line}");
                assert!(
                    ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                    "{line}"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter without _total: {line}");
                }
                assert!(
                    typed.insert(name.to_string(), kind.to_string()).is_none(),
                    "{line}"
                );
                if let Some(prev) = current.replace(name.to_string()) {
                    done.insert(prev);
                }
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let name_end = line.find(['{', ' ']).expect("sample name");
            let name = &line[..name_end];
            assert!(metric_name(name), "{line}");
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                let mut pos = 0;
                loop {
                    let eq = r[pos..].find('=').expect("label =") + pos;
                    let lname = &r[pos..eq];
                    assert!(label_name(lname), "label name {lname:?} in {line}");
                    assert_eq!(r[eq + 1..].chars().next(), Some('"'), "{line}");
                    let mut v = String::new();
                    let mut it = r[eq + 2..].char_indices();
                    let close = loop {
                        match it.next().expect("unterminated label value") {
                            (i, '"') => break eq + 2 + i,
                            (_, '\\') => match it.next().expect("escape").1 {
                                'n' => v.push('\n'),
                                c @ ('\\' | '"') => v.push(c),
                                c => panic!("bad escape \\{c} in {line}"),
                            },
                            (_, c) => v.push(c),
                        }
                    };
                    labels.push((lname.to_string(), v));
                    match r[close + 1..].chars().next() {
                        Some(',') => pos = close + 2,
                        Some('}') => {
                            rest = &r[close + 2..];
                            break;
                        }
                        _ => panic!("labels not closed in {line}"),
                    }
                }
            }
            let mut fields = rest
                .strip_prefix(' ')
                .expect("space before value")
                .split(' ');
            let v = value(fields.next().expect("value"));
            if let Some(ts) = fields.next() {
                ts.parse::<i64>().expect("timestamp");
            }
            assert!(fields.next().is_none(), "{line}");
            let family = current.clone().expect("sample before any TYPE");
            assert!(!done.contains(&family), "family {family} is not contiguous");
            let ok = match typed[&family].as_str() {
                "summary" => {
                    name == format!("{family}_sum")
                        || name == format!("{family}_count")
                        || (name == family
                            && labels
                                .iter()
                                .any(|(k, v)| k == "quantile" && value(v) <= 1.0))
                }
                _ => name == family,
            };
            assert!(ok, "sample {name} outside its family {family}");
            samples.push((name.to_string(), labels, v));
        }
        for (name, kind) in &typed {
            if kind == "summary" {
                assert!(samples.iter().any(|s| s.0 == format!("{name}_count")));
                assert!(samples.iter().any(|s| s.0 == format!("{name}_sum")));
            }
        }
        samples
    }

    #[test]
    fn prometheus_text_follows_the_exposition_format() {
        let mut c = Collector::new(facts(3, 2, Some(baseline(2)))).unwrap();
        let mut text = String::new();
        c.write_prometheus_with(&mut text, &no_system());
        parse_exposition(&text);
        for i in 0..50u64 {
            c.record_prediction(&[(i % 100) as f32, 1.0], 1000 + i, Some((i % 3) as usize));
        }
        c.close_window_with(0, 60, no_system());
        c.record_prediction(&[3.0, 5.0], 2_000_000, Some(1));
        c.record_error(10);
        c.record_feedback(true);
        c.record_feedback(true);
        c.record_feedback(false);
        text.clear();
        let system = SystemFigures {
            rss_kib: Some(10),
            cpu_temp_milli_c: Some(-5_500),
        };
        c.write_prometheus_with(&mut text, &system);
        let samples = parse_exposition(&text);
        let get = |name: &str, label: Option<(&str, &str)>| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name && label.is_none_or(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
                })
                .map(|s| s.2)
                .unwrap_or_else(|| panic!("{name} {label:?} missing from\n{text}"))
        };
        // Lifetime totals include the open window.
        assert_eq!(get("perch_requests_total", None), 52.0);
        assert_eq!(get("perch_errors_total", None), 1.0);
        assert_eq!(get("perch_latency_seconds_count", None), 52.0);
        let p50 = get("perch_latency_seconds", Some(("quantile", "0.5")));
        assert!((p50 - 0.001025).abs() < 0.001025 / 32.0, "{p50}");
        assert_eq!(get("perch_predictions_total", Some(("class", "1"))), 18.0);
        assert!((get("perch_feedback_accuracy", None) - 2.0 / 3.0).abs() < 1e-12);
        let mean = get("perch_feature_mean", Some(("feature", "1")));
        assert!((mean - 55.0 / 51.0).abs() < 1e-12, "{mean}");
        assert!(get("perch_feature_psi", Some(("feature", "1"))) > 1.0);
        assert_eq!(get("perch_resident_memory_bytes", None), 10_240.0);
        assert_eq!(get("perch_cpu_temperature_celsius", None), -5.5);
        assert_eq!(
            get("perch_model_info", Some(("model", "0102030405060708"))),
            1.0
        );
        assert_eq!(get("perch_windows_total", None), 1.0);
    }

    #[test]
    fn the_exposition_checker_rejects_malformed_text() {
        let bad = [
            "perch_x 1",                                               // no newline, no TYPE
            "# TYPE perch_x gauge\nperch_x{a=\"1} 1\n",                // unterminated value
            "# TYPE perch_x gauge\nperch_x{1a=\"1\"} 1\n",             // bad label name
            "# TYPE perch_x gauge\nperch_x one\n",                     // bad value
            "# TYPE perch_x counter\nperch_x 1\n",                     // counter without _total
            "# TYPE perch_x gauge\n# TYPE perch_y gauge\nperch_x 1\n", // not contiguous
            "# TYPE perch_x gauge\nperch_x 1\n# TYPE perch_x gauge\n", // second TYPE
            "# TYPE perch_x summary\nperch_x_sum 1\n",                 // no _count
        ];
        for text in bad {
            let caught = std::panic::catch_unwind(|| parse_exposition(text)).is_err();
            assert!(caught, "accepted {text:?}");
        }
        let good = "# HELP perch_x a\n# TYPE perch_x gauge\nperch_x{a=\"q\\\"\\\\\\n\",b=\"2\"} -1.5e3 17\n";
        assert_eq!(parse_exposition(good)[0].1[0].1, "q\"\\\n");
    }

    #[test]
    fn a_realistic_report_fits_in_256_bytes_on_the_wire() {
        let mut c = Collector::new(facts(10, 64, Some(baseline(64)))).unwrap();
        let mut x = [0f32; 64];
        for i in 0..3_000u32 {
            for (j, v) in x.iter_mut().enumerate() {
                // Drift growing with the feature index, up to a few hundred milli.
                *v = ((i * 7 + j as u32 * 13) % 100) as f32 + j as f32 * 1.15;
            }
            c.record_prediction(&x, 800 + u64::from(i % 700), Some((i % 10) as usize));
        }
        for _ in 0..12 {
            c.record_error(30_000);
        }
        for i in 0..150 {
            c.record_feedback(i % 9 != 0);
        }
        let system = SystemFigures {
            rss_kib: Some(23_456),
            cpu_temp_milli_c: Some(61_234),
        };
        let mut report = c.close_window_with(1_767_225_600_000, 300_000, system);
        report.dropped = 3;
        let max_psi = *report.psi_milli.iter().max().unwrap();
        assert!((100..1000).contains(&max_psi), "PSI up to {max_psi} milli");
        assert_eq!(report.psi_milli.len(), 64);
        let mut wire = Vec::new();
        let seq = 1_234_567;
        frame::encode(
            &Message::Metrics {
                seq,
                report: report.clone(),
            },
            &mut wire,
            1024,
        )
        .unwrap();
        println!(
            "report: {} bytes on the wire (frame overhead {}, report alone {} bytes; PSI up to {max_psi} milli)",
            wire.len(),
            frame::OVERHEAD,
            postcard::to_stdvec(&report).unwrap().len()
        );
        assert!(wire.len() <= 256, "{} bytes", wire.len());
        // Harder: every feature drifting by a few hundred milli (two varint bytes each).
        report.psi_milli = (0..64).map(|j| 300 + j).collect();
        wire.clear();
        frame::encode(&Message::Metrics { seq, report }, &mut wire, 1024).unwrap();
        println!("with every PSI in 300..364 milli: {} bytes", wire.len());
        assert!(wire.len() <= 256, "{} bytes", wire.len());
    }
}
