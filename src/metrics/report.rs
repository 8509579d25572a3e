//! The metrics report a device sends to the host for one window.

use serde::{Deserialize, Serialize};

/// Latency percentiles of a window, in microseconds (0 when the window had no requests).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// Median.
    pub p50: u32,
    /// 95th percentile.
    pub p95: u32,
    /// 99th percentile.
    pub p99: u32,
}

/// What a device measured over one reporting window. Postcard encodes integers as varints,
/// so small counts cost one byte; vectors are bounded by the model (classes, features) and
/// by the collector's capacities ([`MAX_CLASSES`](super::MAX_CLASSES),
/// [`MAX_FEATURES`](super::MAX_FEATURES)): a model with more classes or features has the
/// first ones reported, so a vector shorter than the model's count means it was capped.
/// Counts saturate at `u32::MAX`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Window start, milliseconds since the Unix epoch.
    pub window_start_ms: u64,
    /// Window length in milliseconds.
    pub window_ms: u32,
    /// The model that served the window: the first 8 bytes of its artifact's SHA-256
    /// (all zeros when no model was loaded).
    pub model: [u8; 8],
    /// Prediction requests (samples), the failed ones included.
    pub requests: u32,
    /// Failed requests (engine errors, non-finite outputs); `errors / requests` is the
    /// window's error rate.
    pub errors: u32,
    /// Latency percentiles of the requests (each sample of a batched request counts with
    /// the whole request's latency), within 3.125 % (see
    /// [`LatencyHistogram`](super::LatencyHistogram)).
    pub latency_us: Percentiles,
    /// Predictions per class index (empty for regressors).
    pub predictions: Vec<u32>,
    /// Labelled feedback received in the window.
    pub feedback: u32,
    /// Of those, how many matched the prediction.
    pub feedback_correct: u32,
    /// Population stability index per input feature against the artifact's training
    /// baseline, times 1000, saturating (empty when the artifact carries no baseline or the
    /// window served no request; see [`psi`](super::psi) for the formula).
    pub psi_milli: Vec<u16>,
    /// Resident memory of the process, KiB (0 when the OS does not tell).
    pub rss_kib: u32,
    /// CPU temperature in millidegrees Celsius, where the board reports one.
    pub cpu_temp_milli_c: Option<i32>,
    /// Reports dropped from the device's queue (oldest first) since the last report, because
    /// the host was unreachable for longer than the queue holds.
    pub dropped: u32,
    /// The candidate model that ran in shadow beside the active one during this window (a
    /// canary rollout), if any.
    pub shadow: Option<ShadowReport>,
    /// Labelled feedback of the window with its inputs, for retraining on the host: at most
    /// [`MAX_REPORT_SAMPLES`] samples and [`MAX_REPORT_SAMPLE_VALUES`] input values, evenly
    /// spaced through the window when it had more (the others are counted in
    /// `samples_dropped`).
    pub samples: Vec<LabelledInput>,
    /// Labelled samples left out of this report for lack of room.
    pub samples_dropped: u32,
}

/// Most labelled samples one report carries.
pub const MAX_REPORT_SAMPLES: usize = 64;
/// Most input values (all samples together) one report carries: 32 KiB of `f32`.
pub const MAX_REPORT_SAMPLE_VALUES: usize = 8192;

/// How a shadow model compared with the active one on the same requests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ShadowReport {
    /// The shadow model: first 8 bytes of its artifact's SHA-256.
    pub model: [u8; 8],
    /// Requests (samples) it ran.
    pub requests: u32,
    /// Of those, how many failed (engine error or non-finite output).
    pub errors: u32,
    /// Of the rest, how many gave the active model's answer (same label; regressors within
    /// 1 % or 1e-6).
    pub agreed: u32,
    /// Its latency per request. The agent times both models on the same thread and input,
    /// one right after the other, the order alternating from request to request.
    pub latency_us: Percentiles,
    /// The active model's latency per request over the same requests, timed alike.
    pub active_latency_us: Percentiles,
    /// Heap the shadow model holds (parameters and buffers), KiB.
    pub memory_kib: u32,
    /// Heap the active model holds, KiB.
    pub active_memory_kib: u32,
    /// Labelled feedback on requests the shadow also answered.
    pub feedback: u32,
    /// Of those labels, how many the shadow got right.
    pub feedback_correct: u32,
    /// And how many the active model got right.
    pub active_feedback_correct: u32,
    /// And how many both got right: with the two counts above, the whole 2×2 table of a
    /// paired comparison (which labels only one of the two models got right).
    pub feedback_both_correct: u32,
}

/// One labelled feedback sample: the input that was predicted and its true label (a class
/// label, or a regression target).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LabelledInput {
    /// The input sample.
    pub input: Vec<f32>,
    /// The true label.
    pub label: f32,
}
