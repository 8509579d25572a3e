//! On-device metrics: collected in fixed memory, reported per window.
//!
//! - [`Collector`]: what the agent calls for every prediction (latency, errors, predicted
//!   class, input sample) and for every labelled feedback; closes windows into [`Report`]s
//!   and renders lifetime totals for Prometheus (`GET /metrics`).
//! - [`LatencyHistogram`]: log-linear buckets, percentiles within 3.125 %;
//!   [`ExposedBuckets`]: the same latencies counted at the fixed Prometheus bounds
//!   [`EXPOSED_BOUNDS_US`] every device shares.
//! - [`exposition`]: the one Prometheus / OpenMetrics text writer, used by the agent's and
//!   the host's `GET /metrics`.
//! - [`FeatureDrift`] / [`RunningMoments`] / [`psi`]: per-feature moments and the population
//!   stability index against the artifact's [`DriftBaseline`](crate::graph::sections::DriftBaseline).
//! - [`SystemFigures`]: resident memory and CPU temperature, where the OS tells.
//! - [`ReportQueue`]: reports persisted to a directory until the host acknowledges them.
//! - [`RecentPredictions`]: the last N predictions, for matching feedback and collecting
//!   labelled samples.
//!
//! Capacities are constants ([`MAX_FEATURES`], [`MAX_CLASSES`], [`BUCKETS`]) or fixed when
//! a value is created; a model larger than a capacity has its first features / classes
//! tracked and the rest left out, never more memory.
//!
//! ```
//! use perch::metrics::{Collector, ModelFacts, SystemFigures};
//!
//! let mut c = Collector::new(ModelFacts { classes: 3, sample_len: 2, ..ModelFacts::default() })?;
//! c.record_prediction(&[0.5, 1.0], 120, Some(2));
//! c.record_error(40);
//! c.record_feedback(true);
//! let report = c.close_window_with(1_700_000_000_000, 60_000, SystemFigures::default());
//! assert_eq!((report.requests, report.errors), (2, 1));
//! assert_eq!(report.predictions, vec![0, 0, 1]);
//! let mut text = String::new();
//! c.write_prometheus_with(&mut text, &SystemFigures::default());
//! assert!(text.contains("perch_requests_total 2\n"));
//! # Ok::<(), perch::metrics::MetricsError>(())
//! ```

mod collector;
mod drift;
pub mod exposition;
mod histogram;
mod queue;
mod recent;
mod report;
mod system;

pub use collector::{Collector, MAX_CLASSES, MAX_FEATURES, ModelFacts};
pub use drift::{FeatureDrift, PSI_EPSILON, RunningMoments, psi, psi_milli};
pub use exposition::{Exposition, Format, Kind};
pub use histogram::{
    BUCKETS, EXPOSED_BOUNDS_US, ExposedBuckets, LatencyHistogram, MAX_TRACKED_US, SUB_BUCKETS,
};
pub use queue::{MAX_QUEUE_CAPACITY, MAX_REPORT_FILE_BYTES, ReportQueue};
pub use recent::{Feedback, LabelledSample, MAX_RECENT_VALUES, Outcome, RecentPredictions};
#[cfg(test)]
pub(crate) use report::compat as report_compat;
pub use report::{
    BucketCountMismatch, LATENCY_BUCKETS, LabelledInput, LatencyBuckets, MAX_REPORT_SAMPLE_VALUES,
    MAX_REPORT_SAMPLES, Percentiles, Report, ReportDecodeError, ReportV2, ReportV2Ref,
    ShadowReport,
};
pub use system::{SystemFigures, cpu_temp_milli_c, rss_kib};

use std::path::PathBuf;

/// Why a metrics operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The drift baseline given to a [`Collector`] does not fit the model.
    #[error("drift baseline unusable: {0}")]
    Baseline(String),
    /// A file operation of the [`ReportQueue`] failed.
    #[error("report queue: {op} {path:?}: {error}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// [`ReportQueue::open`] was given a capacity of 0 or above the maximum.
    #[error("report queue capacity {capacity} is out of range (1 ..= {max})")]
    QueueCapacity {
        /// The capacity given.
        capacity: usize,
        /// [`MAX_QUEUE_CAPACITY`].
        max: usize,
    },
    /// The queue has handed out every sequence number `u64` holds.
    #[error("report queue sequence numbers are exhausted")]
    SequenceExhausted,
    /// A report could not be encoded.
    #[error("report does not encode: {0}")]
    Encode(String),
    /// [`RecentPredictions`] was given a capacity of 0 or one whose samples are too large.
    #[error(
        "recent-predictions capacity {capacity} × {sample_len} values exceeds {max_values} values (or is 0)"
    )]
    RecentCapacity {
        /// Predictions asked for.
        capacity: usize,
        /// Values per sample.
        sample_len: usize,
        /// [`MAX_RECENT_VALUES`].
        max_values: usize,
    },
    /// Feedback for a prediction id that was never issued or has been forgotten.
    #[error(
        "no recent prediction has id {id} (it was never issued, or is older than the ones kept)"
    )]
    UnknownPrediction {
        /// The id.
        id: u64,
    },
    /// A second label for the same prediction.
    #[error("prediction {id} is already labelled")]
    AlreadyLabelled {
        /// The id.
        id: u64,
    },
    /// A class label for a regression, a value label for a classification, or a label
    /// that is not a finite number.
    #[error(
        "the label of prediction {id} is not of its kind (a class index for a classifier, a finite number for a regressor)"
    )]
    LabelKind {
        /// The id.
        id: u64,
    },
}
