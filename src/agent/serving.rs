//! The model that answers local requests, and what is measured about it: the metrics
//! collector of the current window, the recent predictions that feedback refers to, and the
//! watch on a newly installed model's error rate.

use crate::graph::DType;
use crate::metrics::{
    Collector, LabelledInput, LabelledSample, LatencyHistogram, MAX_REPORT_SAMPLE_VALUES,
    MAX_REPORT_SAMPLES, ModelFacts, Outcome, Percentiles, RecentPredictions, Report, ShadowReport,
};
use crate::runtime::{self, Output, OutputValues};
use crate::sync::ModelRef;
use crate::util::now_unix_ms;
use std::time::Instant;

/// A model ready to serve, with the facts the metrics need.
pub(crate) struct Active {
    pub model: runtime::Model,
    pub reference: ModelRef,
    collector: Collector,
    /// `None` when the model's samples are too large to keep (feedback is refused then).
    recent: Option<RecentPredictions>,
    /// The integer output holding predicted labels, if any.
    label_output: Option<usize>,
    /// The float output whose argmax is the class index (classifiers).
    score_output: Option<usize>,
    sample_len: usize,
    lifetime_requests: u64,
    lifetime_errors: u64,
    /// Ids handed out when `recent` is `None`.
    unkept_ids: u64,
    /// Heap the model holds, KiB (see [`Loaded`]).
    memory_kib: u32,
}

/// A model loaded from artifact bytes, with the heap it kept (what the loading thread
/// allocated and did not free, when the binary tracks its heap; else the artifact's size).
pub(crate) struct Loaded {
    pub model: runtime::Model,
    pub memory_kib: u32,
}

impl Loaded {
    /// Loads artifact bytes if the model's planned peak memory for one sample is within
    /// `max_memory_bytes`.
    ///
    /// # Errors
    /// As [`runtime::Model::from_artifact_bytes_within`].
    pub fn from_bytes(
        bytes: &[u8],
        max_memory_bytes: u64,
    ) -> Result<Loaded, runtime::RuntimeError> {
        let before = crate::memory::thread_net_bytes();
        let model = runtime::Model::from_artifact_bytes_within(bytes, max_memory_bytes)?;
        let kept = match (before, crate::memory::thread_net_bytes()) {
            (Some(a), Some(b)) => usize::try_from(b.wrapping_sub(a)).unwrap_or(0),
            _ => bytes.len(),
        };
        Ok(Loaded {
            model,
            memory_kib: u32::try_from(kept.div_ceil(1024)).unwrap_or(u32::MAX),
        })
    }
}

/// A candidate running beside the active model: same inputs, answers compared and timed,
/// never returned.
pub(crate) struct Shadow {
    pub model: runtime::Model,
    pub reference: ModelRef,
    pub push: u64,
    memory_kib: u32,
    label_output: Option<usize>,
    requests: u32,
    errors: u32,
    agreed: u32,
    latency: LatencyHistogram,
    active_latency: LatencyHistogram,
    /// The shadow's answers to recent predictions, by id, for feedback (bounded).
    answers: std::collections::VecDeque<(u64, Outcome)>,
    feedback: u32,
    feedback_correct: u32,
    active_feedback_correct: u32,
    feedback_both_correct: u32,
    /// Whether the shadow ran first on the last request (the order alternates).
    ran_first: bool,
}

/// Shadow answers remembered for feedback.
const SHADOW_ANSWERS: usize = 1024;

impl Shadow {
    pub fn new(loaded: Loaded, reference: ModelRef, push: u64) -> Shadow {
        let label_output = loaded
            .model
            .info()
            .outputs
            .iter()
            .position(|o| o.dtype == DType::I64);
        Shadow {
            model: loaded.model,
            reference,
            push,
            memory_kib: loaded.memory_kib,
            label_output,
            requests: 0,
            errors: 0,
            agreed: 0,
            latency: LatencyHistogram::new(),
            active_latency: LatencyHistogram::new(),
            answers: std::collections::VecDeque::with_capacity(SHADOW_ANSWERS),
            feedback: 0,
            feedback_correct: 0,
            active_feedback_correct: 0,
            feedback_both_correct: 0,
            ran_first: false,
        }
    }

    fn report(&mut self, active_memory_kib: u32) -> ShadowReport {
        let pct = |h: &LatencyHistogram| {
            let q = |p| {
                h.percentile(p)
                    .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
            };
            Percentiles {
                p50: q(0.5),
                p95: q(0.95),
                p99: q(0.99),
            }
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.reference.sha256[..8]);
        let r = ShadowReport {
            model: id,
            requests: self.requests,
            errors: self.errors,
            agreed: self.agreed,
            latency_us: pct(&self.latency),
            active_latency_us: pct(&self.active_latency),
            memory_kib: self.memory_kib,
            active_memory_kib,
            feedback: self.feedback,
            feedback_correct: self.feedback_correct,
            active_feedback_correct: self.active_feedback_correct,
            feedback_both_correct: self.feedback_both_correct,
        };
        self.feedback = 0;
        self.feedback_correct = 0;
        self.active_feedback_correct = 0;
        self.feedback_both_correct = 0;
        self.requests = 0;
        self.errors = 0;
        self.agreed = 0;
        self.latency.reset();
        self.active_latency.reset();
        r
    }
}

impl Active {
    /// Wraps a loaded model; `recent` predictions are kept for feedback.
    pub fn new(loaded: Loaded, reference: ModelRef, recent: usize) -> Active {
        let Loaded { model, memory_kib } = loaded;
        let info = model.info();
        let sample_len = info.inputs.first().map_or(0, |s| s.sample_len());
        let label_output = info.outputs.iter().position(|o| o.dtype == DType::I64);
        let score_output = label_output.and_then(|_| {
            info.outputs
                .iter()
                .position(|o| o.dtype == DType::F32 && o.sample_len() > 1)
        });
        let mut facts = ModelFacts::of(&model);
        // Reports name the model by the artifact as pushed (the host's push digest).
        facts.model.copy_from_slice(&reference.sha256[..8]);
        let collector = match Collector::new(facts.clone()) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("model {}: {e}; drift is not measured", reference.name);
                facts.baseline = None;
                Collector::new(facts).unwrap_or_else(|_| unreachable!("no baseline to refuse"))
            }
        };
        // A sample too large for the ring even once (over 16 Mi values) means no feedback
        // for this model, not a model that cannot be served.
        let recent = RecentPredictions::new(recent.max(1), sample_len.max(1))
            .or_else(|_| RecentPredictions::new(1, sample_len.max(1)))
            .map_err(|e| {
                log::warn!(
                    "model {}: {e}; its predictions are not kept, so feedback is refused",
                    reference.name
                );
            })
            .ok();
        Active {
            model,
            reference,
            collector,
            recent,
            label_output,
            score_output,
            sample_len,
            lifetime_requests: 0,
            lifetime_errors: 0,
            unkept_ids: 0,
            memory_kib,
        }
    }

    fn error_rate(&self) -> Option<f64> {
        (self.lifetime_requests > 0)
            .then(|| self.lifetime_errors as f64 / self.lifetime_requests as f64)
    }
}

/// Why a prediction was not made.
#[derive(Debug)]
pub(crate) enum PredictError {
    /// No model is installed yet.
    NoModel,
    /// The request does not fit the model (the caller's fault; not a model error).
    BadInput(String),
    /// The model gave non-finite outputs for these inputs: counted as an error of the
    /// model's, but the inputs are kept so that a rollback can tell whether they, not the
    /// model, were at fault (see [`Serving::rollback_due`]).
    OutOfRange(String),
    /// The model failed (counted as an error).
    Model(String),
}

/// Samples of failed requests kept for the rollback check, at most.
const FAILING_KEPT: usize = 16;
/// Values of those samples kept, at most.
const FAILING_VALUES_KEPT: usize = 1 << 20;
/// Batches larger than this give their buffers back after they ran.
pub(crate) const RELEASE_ABOVE_BATCH: usize = 64;

/// A watched model whose error rate calls for going back to the previous one.
#[derive(Debug)]
pub(crate) struct RollbackCandidate {
    /// Why, with the figures.
    pub reason: String,
    /// Input samples the watched model failed on (a bounded selection), to run through
    /// the previous model before going back to it.
    pub failing: Vec<Vec<f32>>,
    /// The previous model's error rate when it was replaced.
    before: Option<f64>,
}

/// One answered request.
pub(crate) struct Prediction {
    pub model: ModelRef,
    pub ids: Vec<u64>,
    pub outputs: Vec<Output>,
}

/// When to give up on a newly installed model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RollbackPolicy {
    pub min_requests: u32,
    pub error_rate: f64,
}

/// Requests served by a new model since it was activated by a push.
#[derive(Debug, Clone, Default)]
struct Watch {
    requests: u32,
    errors: u32,
    /// The replaced model's error rate, when it served anything.
    before: Option<f64>,
    /// Samples the model failed on, the first [`FAILING_KEPT`].
    failing: Vec<Vec<f32>>,
}

/// The serving state, behind the agent's mutex.
pub(crate) struct Serving {
    active: Option<Active>,
    shadow: Option<Shadow>,
    bad_requests: u64,
    window_start_ms: u64,
    watch: Option<Watch>,
    policy: RollbackPolicy,
}

impl Serving {
    pub fn new(policy: RollbackPolicy) -> Serving {
        Serving {
            active: None,
            shadow: None,
            bad_requests: 0,
            window_start_ms: now_unix_ms(),
            watch: None,
            policy,
        }
    }

    pub fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    pub fn active_ref(&self) -> Option<&ModelRef> {
        self.active.as_ref().map(|a| &a.reference)
    }

    /// Values per sample of the active model's input.
    pub fn sample_len(&self) -> Option<usize> {
        self.active.as_ref().map(|a| a.sample_len)
    }

    /// Counts a request refused before it reached the model (malformed, too large).
    pub fn count_bad_request(&mut self) {
        self.bad_requests += 1;
    }

    /// Puts `next` in service. `watched` (a push, not a restart) starts the error-rate
    /// watch. Returns the report of the replaced model's unfinished window.
    pub fn replace(&mut self, next: Active, watched: bool) -> Option<Report> {
        let report = self.close_window();
        let before = self.active.as_ref().and_then(Active::error_rate);
        self.watch = watched.then_some(Watch {
            before,
            ..Watch::default()
        });
        self.active = Some(next);
        report
    }

    /// Ends the current window: its report (`None` with no model), and a fresh window.
    pub fn close_window(&mut self) -> Option<Report> {
        let now = now_unix_ms();
        let start = std::mem::replace(&mut self.window_start_ms, now);
        let active = self.active.as_mut()?;
        let window_ms = u32::try_from(now.saturating_sub(start)).unwrap_or(u32::MAX);
        let mut report = active.collector.close_window(start, window_ms);
        report.shadow = self.shadow.as_mut().map(|s| s.report(active.memory_kib));
        // The window's own labelled samples, evenly spaced through it when there are more
        // than a report carries: the host retrains on them and, after a drift alert, takes
        // the drifted group's recent inputs as the new model's baseline, so a report holds
        // its window's inputs, not leftovers of an older one.
        let mut labelled: Vec<LabelledSample> = Vec::new();
        if let Some(recent) = active.recent.as_mut() {
            recent.take_labelled(&mut labelled);
        }
        let n = labelled.len();
        let per_sample = labelled.iter().map(|l| l.input.len()).max().unwrap_or(0);
        let room = MAX_REPORT_SAMPLES.min(MAX_REPORT_SAMPLE_VALUES / per_sample.max(1));
        let keep = n.min(room);
        report.samples = (0..keep)
            .map(|i| {
                let l = &mut labelled[i * n / keep];
                LabelledInput {
                    input: std::mem::take(&mut l.input),
                    label: outcome_value(l.label),
                }
            })
            .collect();
        report.samples_dropped = u32::try_from(n - keep).unwrap_or(u32::MAX);
        Some(report)
    }

    /// Starts running `shadow` beside the active model (replacing any other shadow).
    pub fn set_shadow(&mut self, shadow: Shadow) {
        self.shadow = Some(shadow);
    }

    /// The shadow model, if one runs.
    pub fn shadow(&self) -> Option<&Shadow> {
        self.shadow.as_ref()
    }

    /// Stops the shadow run of push `push`; returns it if it was running.
    pub fn end_shadow(&mut self, push: u64) -> Option<Shadow> {
        self.shadow.take_if(|s| s.push == push)
    }

    /// Counts a request refused before it reached the model (its columns did not fit).
    pub fn refuse_input(&mut self) {
        self.bad_requests += 1;
    }

    /// Runs `data` (`shape` as parsed from the request) and records the metrics.
    pub fn predict(&mut self, data: &[f32], shape: &[usize]) -> Result<Prediction, PredictError> {
        let Some(active) = self.active.as_mut() else {
            return Err(PredictError::NoModel);
        };
        let batch = match active.model.batch_of(shape, data.len()) {
            Ok(b) => b,
            Err(e) => {
                self.bad_requests += 1;
                return Err(PredictError::BadInput(e.to_string()));
            }
        };
        if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            self.bad_requests += 1;
            let n = active.sample_len.max(1);
            return Err(PredictError::BadInput(format!(
                "value {i} (sample {}, feature {}) is {v}, not a finite number",
                i / n,
                i % n
            )));
        }
        // A shadow runs on the same thread and input buffer as the active model, right before
        // or right after it, alternately: each pays the other's cache misses equally often, and
        // a preemption or a busy neighbour falls on either as often.
        let shadow_first = self.shadow.as_mut().is_some_and(|s| {
            s.ran_first = !s.ran_first;
            s.ran_first
        });
        let mut shadow_run = None;
        if shadow_first && let Some(shadow) = self.shadow.as_mut() {
            shadow_run = Some(timed(|| shadow.model.run(data, batch)));
        }
        let (result, elapsed_us) = timed(|| active.model.run(data, batch));
        if !shadow_first && let Some(shadow) = self.shadow.as_mut() {
            shadow_run = Some(timed(|| shadow.model.run(data, batch)));
        }
        // Every sample of a request waited for the whole request.
        let per_sample_us = elapsed_us;
        active.lifetime_requests += batch as u64;
        if batch > RELEASE_ABOVE_BATCH {
            active.model.release_buffers();
        }
        let outcome = result
            .map_err(|e| PredictError::Model(e.to_string()))
            .and_then(|outs| {
                if all_finite(&outs) {
                    Ok(outs)
                } else {
                    Err(PredictError::OutOfRange(
                        "the model's outputs for these inputs are not finite numbers (inputs far outside the range it was trained on?)"
                            .to_string(),
                    ))
                }
            });
        let outs = match outcome {
            Ok(o) => o,
            Err(e) => {
                active.lifetime_errors += batch as u64;
                for _ in 0..batch {
                    active.collector.record_error(per_sample_us);
                }
                if let Some(w) = self.watch.as_mut() {
                    w.requests = w.requests.saturating_add(batch as u32);
                    w.errors = w.errors.saturating_add(batch as u32);
                    let n = active.sample_len.max(1);
                    for sample in data.chunks(n) {
                        let kept: usize = w.failing.iter().map(Vec::len).sum();
                        if w.failing.len() >= FAILING_KEPT || kept + n > FAILING_VALUES_KEPT {
                            break;
                        }
                        w.failing.push(sample.to_vec());
                    }
                }
                return Err(e);
            }
        };
        if let Some(w) = self.watch.as_mut() {
            w.requests = w.requests.saturating_add(batch as u32);
        }
        let mut shadow_answers: Vec<Outcome> = Vec::new();
        if let (Some(shadow), Some((result, us))) = (self.shadow.as_mut(), shadow_run) {
            if batch > RELEASE_ABOVE_BATCH {
                shadow.model.release_buffers();
            }
            shadow.requests = shadow.requests.saturating_add(batch as u32);
            for _ in 0..batch {
                shadow.latency.record(us);
                shadow.active_latency.record(per_sample_us);
            }
            match result {
                Ok(theirs) if all_finite(&theirs) => {
                    for s in 0..batch {
                        let a = predicted_outcome(&outs, active.label_output, s);
                        let b = predicted_outcome(&theirs, shadow.label_output, s);
                        if agree(a, b) {
                            shadow.agreed = shadow.agreed.saturating_add(1);
                        }
                        shadow_answers.push(b);
                    }
                }
                _ => shadow.errors = shadow.errors.saturating_add(batch as u32),
            }
        }
        let n = active.sample_len;
        let mut ids = Vec::with_capacity(batch);
        for s in 0..batch {
            let sample = &data[s * n..(s + 1) * n];
            let class = active.score_output.and_then(|i| argmax_row(&outs[i], s));
            active
                .collector
                .record_prediction(sample, per_sample_us, class);
            let predicted = predicted_outcome(&outs, active.label_output, s);
            let id = match active.recent.as_mut() {
                Some(recent) => recent.record(predicted, sample),
                None => {
                    active.unkept_ids += 1;
                    active.unkept_ids
                }
            };
            if let (Some(shadow), Some(&b)) = (self.shadow.as_mut(), shadow_answers.get(s)) {
                if shadow.answers.len() == SHADOW_ANSWERS {
                    shadow.answers.pop_front();
                }
                shadow.answers.push_back((id, b));
            }
            ids.push(id);
        }
        Ok(Prediction {
            model: active.reference.clone(),
            ids,
            outputs: outs,
        })
    }

    /// Whether the watched model's error rate calls for a rollback: why, and the inputs it
    /// failed on. Ends the watch once the model has served ten times the minimum without
    /// tripping it.
    ///
    /// Errors alone are not enough to go back: a client can send inputs that no model
    /// answers (values near ±3e38 overflow any dense layer). The caller runs the failing
    /// inputs through the previous model and goes back only if it answers them where the
    /// new one did not (see [`Serving::inputs_at_fault`]).
    pub fn rollback_due(&mut self) -> Option<RollbackCandidate> {
        let w = self.watch.as_ref()?;
        let min = self.policy.min_requests;
        if w.requests < min {
            return None;
        }
        let rate = f64::from(w.errors) / f64::from(w.requests);
        let before = w.before.unwrap_or(0.0);
        if rate >= self.policy.error_rate && rate > before + 0.05 {
            let w = self.watch.take()?;
            return Some(RollbackCandidate {
                reason: format!(
                    "error rate {rate:.2} over its first {} requests (previous model {before:.2}, limit {:.2})",
                    w.requests, self.policy.error_rate
                ),
                failing: w.failing,
                before: w.before,
            });
        }
        if w.requests >= min.saturating_mul(10) {
            self.watch = None;
        }
        None
    }

    /// The previous model failed on the inputs that tripped the watch too: they were the
    /// client's fault. Their errors count as bad requests, and the watch starts again.
    pub fn inputs_at_fault(&mut self, candidate: &RollbackCandidate) {
        self.bad_requests += candidate.failing.len() as u64;
        self.watch = Some(Watch {
            before: candidate.before,
            ..Watch::default()
        });
    }

    /// Records feedback for prediction `id`: whether it was right, or why it cannot be
    /// used (an unknown or forgotten id, a second label, a label of the wrong kind).
    pub fn feedback(&mut self, id: u64, label: f64) -> Result<bool, String> {
        let active = self.active.as_mut().ok_or("no model installed")?;
        let label = if active.label_output.is_some() {
            match label_outcome(label) {
                Some(l) => l,
                None => return Err(format!("label {label} is not a class label")),
            }
        } else {
            Outcome::Value(label as f32)
        };
        let feedback = active
            .recent
            .as_mut()
            .ok_or("this model's samples are too large to keep, so it takes no feedback")?
            .label(id, label)
            .map_err(|e| e.to_string())?;
        let correct = match feedback.correct {
            Some(c) => c,
            None => is_correct(feedback.predicted, label),
        };
        active.collector.record_feedback(correct);
        if let Some(shadow) = self.shadow.as_mut()
            && let Some(&(_, theirs)) = shadow.answers.iter().find(|(i, _)| *i == id)
        {
            shadow.feedback = shadow.feedback.saturating_add(1);
            shadow.feedback_correct = shadow
                .feedback_correct
                .saturating_add(u32::from(is_correct(theirs, label)));
            shadow.active_feedback_correct = shadow
                .active_feedback_correct
                .saturating_add(u32::from(correct));
            shadow.feedback_both_correct = shadow
                .feedback_both_correct
                .saturating_add(u32::from(correct && is_correct(theirs, label)));
        }
        Ok(correct)
    }

    /// Adds the serving figures to `e`: `perch_agent_bad_requests_total` and the active
    /// model's collector ([`Collector::expose`](crate::metrics::Collector::expose)).
    pub fn expose(&self, e: &mut crate::metrics::Exposition) {
        e.family(
            "perch_agent_bad_requests",
            crate::metrics::Kind::Counter,
            "Requests refused because their input did not fit the model.",
        );
        e.sample("perch_agent_bad_requests", &[], self.bad_requests as f64);
        if let Some(a) = &self.active {
            a.collector
                .expose(e, &crate::metrics::SystemFigures::read());
        }
    }
}

/// Runs `f`; its result and how long it took, in microseconds rounded to the nearest (at
/// least 1).
fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let started = Instant::now();
    let out = f();
    let us = started.elapsed().as_nanos().saturating_add(500) / 1000;
    (out, u64::try_from(us).unwrap_or(u64::MAX).max(1))
}

/// Whether every float output value is finite.
pub(crate) fn all_finite(outs: &[Output]) -> bool {
    outs.iter().all(|o| match &o.values {
        OutputValues::F32(v) => v.iter().all(|x| x.is_finite()),
        OutputValues::I64(_) => true,
    })
}

fn argmax_row(out: &Output, sample: usize) -> Option<usize> {
    let OutputValues::F32(v) = &out.values else {
        return None;
    };
    let w: usize = out.shape.iter().skip(1).product();
    let row = v.get(sample * w..(sample + 1) * w)?;
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// Whether a prediction matches its label: the same class; a regression within 10 % of
/// the true value.
fn is_correct(predicted: Outcome, label: Outcome) -> bool {
    match (predicted, label) {
        (Outcome::Class(p), Outcome::Class(l)) => p == l,
        (Outcome::Value(p), Outcome::Value(l)) => (p - l).abs() <= 0.1 * l.abs() + 1e-6,
        _ => false,
    }
}

/// Whether two predictions of the same sample agree: same class, or values within 1 %.
fn agree(a: Outcome, b: Outcome) -> bool {
    match (a, b) {
        (Outcome::Class(x), Outcome::Class(y)) => x == y,
        (Outcome::Value(x), Outcome::Value(y)) => {
            (x - y).abs() <= 0.01 * x.abs().max(y.abs()) + 1e-6
        }
        _ => false,
    }
}

/// A label as reports carry it.
fn outcome_value(o: Outcome) -> f32 {
    match o {
        Outcome::Class(c) => c as f32,
        Outcome::Value(v) => v,
    }
}

/// A class label (the model's integer label output) as the ring stores it.
fn label_outcome(label: f64) -> Option<Outcome> {
    (label >= 0.0 && label.fract() == 0.0 && label < 9.0e15)
        .then_some(Outcome::Class(label as usize))
}

/// The sample's prediction: its label for classifiers, else the first output value.
fn predicted_outcome(outs: &[Output], label_output: Option<usize>, sample: usize) -> Outcome {
    let out = label_output.and_then(|i| outs.get(i)).or(outs.first());
    let Some(out) = out else {
        return Outcome::Value(f32::NAN);
    };
    let w: usize = out.shape.iter().skip(1).product::<usize>().max(1);
    match &out.values {
        OutputValues::I64(v) => v
            .get(sample * w)
            .and_then(|&x| label_outcome(x as f64))
            .unwrap_or(Outcome::Value(f32::NAN)),
        OutputValues::F32(v) => Outcome::Value(v.get(sample * w).copied().unwrap_or(f32::NAN)),
    }
}

#[cfg(test)]
mod tests;
