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
    /// Window start, seconds since the Unix epoch.
    pub window_start_s: u64,
    /// Window length in seconds.
    pub window_s: u32,
    /// The model that served the window: the first 8 bytes of its artifact's SHA-256
    /// (all zeros when no model was loaded).
    pub model: [u8; 8],
    /// Prediction requests (samples), the failed ones included.
    pub requests: u32,
    /// Failed requests (engine errors, non-finite outputs); `errors / requests` is the
    /// window's error rate.
    pub errors: u32,
    /// Latency percentiles per request, within 3.125 % (see
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
}
