//! The [`Collector`]: what the agent calls for every prediction, closed into a [`Report`]
//! once per window, with lifetime totals for Prometheus.

use super::drift::{FeatureDrift, RunningMoments, psi_milli};
use super::exposition::{Exposition, Format, Kind};
use super::histogram::{EXPOSED_BOUNDS_US, ExposedBuckets, LatencyHistogram};
use super::system::SystemFigures;
use super::{LatencyBuckets, MetricsError, Percentiles, Report};
use crate::graph::DType;
use crate::graph::sections::DriftBaseline;

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
    /// Names of the input features, one per value of a sample, when the model's metadata
    /// records them (empty otherwise: features are then labelled by index).
    pub feature_names: Vec<String>,
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
            feature_names: info
                .metadata
                .as_ref()
                .and_then(|m| m.feature_names())
                .filter(|names| names.len() == sample_len)
                .unwrap_or_default(),
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
    exposed: ExposedBuckets,
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
        self.exposed.record(latency_us);
        if let Some(n) = class.and_then(|c| self.predictions.get_mut(c)) {
            *n = n.saturating_add(1);
        }
    }

    fn error(&mut self, latency_us: u64) {
        self.request(latency_us, None);
        self.errors = self.errors.saturating_add(1);
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
        self.exposed = ExposedBuckets::default();
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
    feature_names: Vec<String>,
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
            feature_names: facts.feature_names,
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
            latency_buckets: Some(LatencyBuckets::from_exposed(&w.exposed)),
        };
        self.window.reset();
        self.window_features
            .iter_mut()
            .for_each(FeatureDrift::reset);
        self.windows = self.windows.saturating_add(1);
        report
    }

    /// Appends the lifetime totals to `out` in Prometheus' text exposition format (version
    /// 0.0.4), with this machine's [`SystemFigures`] read now. See [`Collector::expose`]
    /// for the families.
    pub fn write_prometheus(&self, out: &mut String) {
        self.write_prometheus_with(out, &SystemFigures::read());
    }

    /// [`Collector::write_prometheus`] with the system figures given.
    pub fn write_prometheus_with(&self, out: &mut String, system: &SystemFigures) {
        let mut e = Exposition::new();
        self.expose(&mut e, system);
        out.push_str(&e.render(Format::Prometheus));
    }

    /// Adds the lifetime totals (the current window included) to `e`, `perch_` families:
    /// counters `requests`, `errors`, `predictions{class}`, `feedback`, `feedback_correct`,
    /// `windows`; the histogram `latency_seconds` (buckets at [`EXPOSED_BOUNDS_US`], the
    /// same on every device); gauges `feedback_accuracy` (once there is feedback),
    /// `feature_mean{feature}` and `feature_stddev{feature}` (over the lifetime),
    /// `feature_psi{feature}` (the last closed window's PSI), `features`,
    /// `features_tracked`, `classes`, and `resident_memory_bytes` /
    /// `cpu_temperature_celsius` when known. `feature` is the feature's name when the
    /// model records names, else its index.
    pub fn expose(&self, e: &mut Exposition, system: &SystemFigures) {
        use Kind::{Counter, Gauge, Histogram};
        let l = &self.lifetime;
        e.family(
            "perch_requests",
            Counter,
            "Prediction requests (samples), failed ones included.",
        );
        e.sample("perch_requests", &[], l.requests as f64);
        e.family("perch_errors", Counter, "Failed prediction requests.");
        e.sample("perch_errors", &[], l.errors as f64);

        e.family(
            "perch_latency_seconds",
            Histogram,
            "Prediction request latency (each sample of a batch counts with the batch's latency).",
        );
        let bounds = EXPOSED_BOUNDS_US.map(|us| us as f64 / 1e6);
        e.histogram(
            "perch_latency_seconds",
            &[],
            &bounds,
            &l.exposed.cumulative(),
            l.exposed.sum_us() as f64 / 1e6,
            l.exposed.count(),
        );

        if !l.predictions.is_empty() {
            e.family(
                "perch_predictions",
                Counter,
                "Served predictions by predicted class index.",
            );
            for (c, n) in l.predictions.iter().enumerate() {
                e.sample("perch_predictions", &[("class", &c.to_string())], *n as f64);
            }
        }

        e.family("perch_feedback", Counter, "Labelled feedback received.");
        e.sample("perch_feedback", &[], l.feedback as f64);
        e.family(
            "perch_feedback_correct",
            Counter,
            "Labelled feedback that matched the prediction.",
        );
        e.sample("perch_feedback_correct", &[], l.feedback_correct as f64);
        e.family(
            "perch_feedback_accuracy",
            Gauge,
            "Share of labelled feedback that matched the prediction.",
        );
        if l.feedback > 0 {
            e.sample(
                "perch_feedback_accuracy",
                &[],
                l.feedback_correct as f64 / l.feedback as f64,
            );
        }

        e.family(
            "perch_feature_mean",
            Gauge,
            "Mean of each tracked input feature over the collector's lifetime.",
        );
        for (j, m) in self.lifetime_moments.iter().enumerate() {
            if let Some(mean) = m.mean() {
                e.sample("perch_feature_mean", &[("feature", &self.feature(j))], mean);
            }
        }
        e.family(
            "perch_feature_stddev",
            Gauge,
            "Standard deviation of each tracked input feature over the collector's lifetime.",
        );
        for (j, m) in self.lifetime_moments.iter().enumerate() {
            if let Some(v) = m.variance() {
                let f = self.feature(j);
                e.sample("perch_feature_stddev", &[("feature", &f)], v.sqrt());
            }
        }
        e.family(
            "perch_feature_psi",
            Gauge,
            "Population stability index of each tracked feature against the training baseline, last closed window.",
        );
        for (j, &p) in self.last_psi_milli.iter().enumerate() {
            let f = self.feature(j);
            e.sample(
                "perch_feature_psi",
                &[("feature", &f)],
                f64::from(p) / 1000.0,
            );
        }
        e.family(
            "perch_features",
            Gauge,
            "Values per input sample of the model.",
        );
        e.sample("perch_features", &[], self.sample_len as f64);
        e.family(
            "perch_features_tracked",
            Gauge,
            "Input features tracked for drift (the first ones, at most 256).",
        );
        e.sample(
            "perch_features_tracked",
            &[],
            self.window_features.len() as f64,
        );
        e.family(
            "perch_classes",
            Gauge,
            "Classes of the model (0 for a regressor).",
        );
        e.sample("perch_classes", &[], self.classes as f64);
        e.family("perch_windows", Counter, "Report windows closed.");
        e.sample("perch_windows", &[], self.windows as f64);
        if let Some(kib) = system.rss_kib {
            e.family(
                "perch_resident_memory_bytes",
                Gauge,
                "Resident memory of the process.",
            );
            e.sample("perch_resident_memory_bytes", &[], f64::from(kib) * 1024.0);
        }
        if let Some(t) = system.cpu_temp_milli_c {
            e.family("perch_cpu_temperature_celsius", Gauge, "CPU temperature.");
            e.sample("perch_cpu_temperature_celsius", &[], f64::from(t) / 1000.0);
        }
    }

    /// The `feature` label of tracked feature `j`: its name, or its index when the model
    /// records no names.
    fn feature(&self, j: usize) -> String {
        self.feature_names
            .get(j)
            .cloned()
            .unwrap_or_else(|| j.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition::tests::check_exposition;
    use crate::sync::{Message, frame};

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
            feature_names: Vec::new(),
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

    #[test]
    fn prometheus_text_follows_the_exposition_format() {
        let mut c = Collector::new(facts(3, 2, Some(baseline(2)))).unwrap();
        let mut text = String::new();
        c.write_prometheus_with(&mut text, &no_system());
        check_exposition(&text);
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
        let samples = check_exposition(&text);
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
        assert_eq!(
            get("perch_latency_seconds_bucket", Some(("le", "0.000025"))),
            1.0
        );
        assert_eq!(
            get("perch_latency_seconds_bucket", Some(("le", "0.00005"))),
            1.0
        );
        assert_eq!(
            get("perch_latency_seconds_bucket", Some(("le", "0.001"))),
            2.0
        );
        assert_eq!(
            get("perch_latency_seconds_bucket", Some(("le", "0.0025"))),
            51.0
        );
        assert_eq!(
            get("perch_latency_seconds_bucket", Some(("le", "1.0"))),
            51.0
        );
        assert_eq!(
            get("perch_latency_seconds_bucket", Some(("le", "2.5"))),
            52.0
        );
        assert_eq!(
            get("perch_latency_seconds_bucket", Some(("le", "+Inf"))),
            52.0
        );
        let sum = 50.0 * 1000.0 + 49.0 * 25.0 + 2_000_000.0 + 10.0;
        assert!((get("perch_latency_seconds_sum", None) - sum / 1e6).abs() < 1e-9);
        assert_eq!(get("perch_predictions_total", Some(("class", "1"))), 18.0);
        assert!((get("perch_feedback_accuracy", None) - 2.0 / 3.0).abs() < 1e-12);
        let mean = get("perch_feature_mean", Some(("feature", "1")));
        assert!((mean - 55.0 / 51.0).abs() < 1e-12, "{mean}");
        assert!(get("perch_feature_psi", Some(("feature", "1"))) > 1.0);
        assert_eq!(get("perch_resident_memory_bytes", None), 10_240.0);
        assert_eq!(get("perch_cpu_temperature_celsius", None), -5.5);
        assert_eq!(get("perch_windows_total", None), 1.0);
        assert!(
            !text.contains("_info"),
            "model facts are the agent's info metric\n{text}"
        );

        // Features are labelled by name when the model records names.
        let named = ModelFacts {
            feature_names: vec!["width_cm".into(), "height \"cm\"".into()],
            ..facts(3, 2, None)
        };
        let mut c = Collector::new(named).unwrap();
        c.record_prediction(&[1.0, 2.0], 5, Some(0));
        text.clear();
        c.write_prometheus_with(&mut text, &no_system());
        let samples = check_exposition(&text);
        let mean = |f: &str| {
            samples
                .iter()
                .find(|(n, l, _)| n == "perch_feature_mean" && l[0].1 == f)
                .map(|s| s.2)
        };
        assert_eq!(
            (mean("width_cm"), mean("height \"cm\"")),
            (Some(1.0), Some(2.0))
        );
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
