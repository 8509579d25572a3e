//! The metrics report a device sends to the host for one window, in its two encoded forms.
//!
//! Postcard is not self-describing, so a field cannot simply be added to [`Report`]: the
//! bytes already stored (the device's queue, the host's report blobs) and those sent by
//! devices not yet upgraded would no longer decode. A report therefore has two forms:
//!
//! - **form 1**, `postcard(Report)`: what [`Report`]'s own `Serialize`/`Deserialize` write
//!   and read, the layout of protocol 2's `Metrics` message, of queue files `PRQR` and of
//!   host blobs with `report_form = 1`. It has no latency buckets (they decode as `None`).
//! - **form 2**, `postcard(ReportV2)`: form 1's bytes followed by
//!   `Option<LatencyBuckets>` (postcard writes a struct's fields one after the other, so
//!   the new field can only be appended). Protocol 3's `MetricsV2` message, queue files
//!   `PRQ2` and host blobs with `report_form = 2`.

use super::histogram::{EXPOSED_BOUNDS_US, ExposedBuckets};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    /// The window's latencies counted on the bounds every device shares, so the host can
    /// add them up across reports and devices. `None` for a report in form 1 (from an agent
    /// older than protocol 3, or queued or stored before it). Not part of form 1's
    /// encoding: only [`ReportV2`] carries it.
    #[serde(skip)]
    pub latency_buckets: Option<LatencyBuckets>,
}

/// How many counts [`LatencyBuckets`] holds: one per bound of [`EXPOSED_BOUNDS_US`] and one
/// for the latencies above the last bound.
pub const LATENCY_BUCKETS: usize = EXPOSED_BOUNDS_US.len() + 1;

/// A window's latencies on the shared bounds [`EXPOSED_BOUNDS_US`]: how many fell in each
/// interval `(bound[i-1], bound[i]]` (not cumulative; the last count is those above the
/// last bound), and their sum. Always exactly [`LATENCY_BUCKETS`] counts: decoding refuses
/// any other length. Counts saturate at `u32::MAX`, the sum at `u64::MAX`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "LatencyBucketsWire")]
pub struct LatencyBuckets {
    counts: Vec<u32>,
    sum_us: u64,
}

/// [`LatencyBuckets`] as decoded, before its length is checked.
#[derive(Deserialize)]
pub(crate) struct LatencyBucketsWire {
    counts: Vec<u32>,
    sum_us: u64,
}

/// A [`LatencyBuckets`] whose number of counts is not [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "latency buckets: {found} counts, expected {LATENCY_BUCKETS} (one per bound of the shared latency histogram and one above); the sender uses other bounds"
)]
pub struct BucketCountMismatch {
    /// The number of counts the report carried.
    pub found: usize,
}

impl TryFrom<LatencyBucketsWire> for LatencyBuckets {
    type Error = BucketCountMismatch;

    fn try_from(w: LatencyBucketsWire) -> Result<Self, Self::Error> {
        LatencyBuckets::new(w.counts, w.sum_us)
    }
}

impl LatencyBuckets {
    /// Counts per interval and their sum.
    ///
    /// # Errors
    /// [`BucketCountMismatch`] unless `counts` has exactly [`LATENCY_BUCKETS`] entries.
    pub fn new(counts: Vec<u32>, sum_us: u64) -> Result<LatencyBuckets, BucketCountMismatch> {
        if counts.len() != LATENCY_BUCKETS {
            return Err(BucketCountMismatch {
                found: counts.len(),
            });
        }
        Ok(LatencyBuckets { counts, sum_us })
    }

    /// A window's exact counts, each saturated to `u32`.
    pub fn from_exposed(exposed: &ExposedBuckets) -> LatencyBuckets {
        let counts = exposed
            .counts()
            .iter()
            .map(|&c| u32::try_from(c).unwrap_or(u32::MAX))
            .collect();
        LatencyBuckets {
            counts,
            sum_us: exposed.sum_us(),
        }
    }

    /// Latencies per interval: [`LATENCY_BUCKETS`] counts, the last above every bound.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// Sum of the window's latencies, µs.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Latencies counted (all intervals).
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }
}

/// Why a stored report in form 2 does not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportDecodeError {
    /// The bytes are not a report.
    #[error("report does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    /// It decodes, but its latency buckets are not on the shared bounds.
    #[error(transparent)]
    Buckets(#[from] BucketCountMismatch),
}

impl ReportV2 {
    /// Decodes `bytes` in form 2, naming a wrong number of bucket counts (postcard keeps
    /// only a generic "custom error" for errors raised inside a `Deserialize`, which is what
    /// decoding a [`ReportV2`] directly gives).
    ///
    /// # Errors
    /// [`ReportDecodeError`] when the bytes are not a form-2 report or the bucket count is
    /// not [`LATENCY_BUCKETS`].
    pub fn decode(bytes: &[u8]) -> Result<Report, ReportDecodeError> {
        let (mut report, raw): (Report, Option<LatencyBucketsWire>) = postcard::from_bytes(bytes)?;
        report.latency_buckets = raw.map(LatencyBuckets::try_from).transpose()?;
        Ok(report)
    }
}

/// A [`Report`] in form 2 (see the module docs): its form-1 fields, then its
/// `latency_buckets`. The sync protocol's `MetricsV2` carries it; the device's queue and the
/// host's blobs store it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportV2(pub Report);

impl Serialize for ReportV2 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ReportV2Ref(&self.0).serialize(s)
    }
}

/// A borrowed [`Report`] serialized in form 2, as [`ReportV2`] is: what the device's queue
/// and the host's blobs write, without copying the report (its samples can be 32 KiB).
#[derive(Clone, Copy, Debug)]
pub struct ReportV2Ref<'a>(pub &'a Report);

impl Serialize for ReportV2Ref<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.0, &self.0.latency_buckets).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ReportV2 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (mut report, buckets): (Report, Option<LatencyBuckets>) = Deserialize::deserialize(d)?;
        report.latency_buckets = buckets;
        Ok(ReportV2(report))
    }
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

/// The report as it was before latency buckets (form 1), kept verbatim so tests can encode
/// what older agents and hosts wrote and check that it still decodes everywhere.
#[cfg(test)]
pub(crate) mod compat {
    use super::{LabelledInput, Percentiles, ShadowReport};
    use serde::Serialize;

    /// `Report` as protocol 2 defined it.
    #[derive(Serialize, Clone, Debug, Default)]
    pub(crate) struct ReportV1 {
        pub window_start_ms: u64,
        pub window_ms: u32,
        pub model: [u8; 8],
        pub requests: u32,
        pub errors: u32,
        pub latency_us: Percentiles,
        pub predictions: Vec<u32>,
        pub feedback: u32,
        pub feedback_correct: u32,
        pub psi_milli: Vec<u16>,
        pub rss_kib: u32,
        pub cpu_temp_milli_c: Option<i32>,
        pub dropped: u32,
        pub shadow: Option<ShadowReport>,
        pub samples: Vec<LabelledInput>,
        pub samples_dropped: u32,
    }

    /// A form-1 report with every field set.
    pub(crate) fn old_report() -> ReportV1 {
        ReportV1 {
            window_start_ms: 1_700_000_000_000,
            window_ms: 60_000,
            model: [1, 2, 3, 4, 5, 6, 7, 8],
            requests: 42,
            errors: 2,
            latency_us: Percentiles {
                p50: 150,
                p95: 900,
                p99: 2_000,
            },
            predictions: vec![30, 12],
            feedback: 5,
            feedback_correct: 4,
            psi_milli: vec![12, 250],
            rss_kib: 4_096,
            cpu_temp_milli_c: Some(51_000),
            dropped: 1,
            shadow: None,
            samples: vec![LabelledInput {
                input: vec![0.5, -1.0],
                label: 1.0,
            }],
            samples_dropped: 3,
        }
    }

    /// What `old` decodes to now: the same figures, no buckets.
    pub(crate) fn as_current(old: &ReportV1) -> super::Report {
        super::Report {
            window_start_ms: old.window_start_ms,
            window_ms: old.window_ms,
            model: old.model,
            requests: old.requests,
            errors: old.errors,
            latency_us: old.latency_us,
            predictions: old.predictions.clone(),
            feedback: old.feedback,
            feedback_correct: old.feedback_correct,
            psi_milli: old.psi_milli.clone(),
            rss_kib: old.rss_kib,
            cpu_temp_milli_c: old.cpu_temp_milli_c,
            dropped: old.dropped,
            shadow: old.shadow.clone(),
            samples: old.samples.clone(),
            samples_dropped: old.samples_dropped,
            latency_buckets: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compat::{as_current, old_report};
    use super::*;

    fn buckets() -> LatencyBuckets {
        let mut e = ExposedBuckets::default();
        for us in [10, 30, 30, 700, 20_000_000] {
            e.record(us);
        }
        LatencyBuckets::from_exposed(&e)
    }

    #[test]
    fn form_1_is_the_old_layout_and_decodes_without_buckets() {
        let old = old_report();
        let bytes = postcard::to_allocvec(&old).unwrap();
        let now = as_current(&old);
        assert_eq!(postcard::to_allocvec(&now).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<Report>(&bytes).unwrap(), now);
    }

    #[test]
    fn form_2_is_form_1_then_the_buckets() {
        let mut r = as_current(&old_report());
        r.latency_buckets = Some(buckets());
        let form1 = postcard::to_allocvec(&r).unwrap();
        let form2 = postcard::to_allocvec(&ReportV2(r.clone())).unwrap();
        assert_eq!(&form2[..form1.len()], &form1[..]);
        // Some, 19 counts, the counts, the sum as a varint.
        assert_eq!(form2[form1.len()..form1.len() + 2], [1, 19]);
        let back: ReportV2 = postcard::from_bytes(&form2).unwrap();
        assert_eq!(back.0, r);
        assert_eq!(ReportV2::decode(&form2).unwrap(), r);
        r.latency_buckets = None;
        let none = postcard::to_allocvec(&ReportV2(r.clone())).unwrap();
        assert_eq!(none.len(), form1.len() + 1);
        assert_eq!(ReportV2::decode(&none).unwrap(), r);
        let b = back.0.latency_buckets.unwrap();
        assert_eq!((b.count(), b.counts()[0], b.counts()[1]), (5, 1, 2));
        assert_eq!(b.counts()[LATENCY_BUCKETS - 1], 1);
        assert_eq!(b.sum_us(), 20_000_770);
    }

    #[test]
    fn a_bucket_vector_of_another_length_is_refused() {
        let r = as_current(&old_report());
        for n in [0, 1, LATENCY_BUCKETS - 1, LATENCY_BUCKETS + 1, 400] {
            let mut bytes = postcard::to_allocvec(&r).unwrap();
            let wrong = (vec![1u32; n], 7u64);
            bytes.push(1);
            bytes.extend(postcard::to_allocvec(&wrong).unwrap());
            let e = postcard::from_bytes::<ReportV2>(&bytes).unwrap_err();
            assert!(matches!(e, postcard::Error::SerdeDeCustom), "{n}: {e:?}");
            assert_eq!(
                ReportV2::decode(&bytes).unwrap_err().to_string(),
                format!(
                    "latency buckets: {n} counts, expected 19 (one per bound of the shared latency histogram and one above); the sender uses other bounds"
                )
            );
        }
        assert!(LatencyBuckets::new(vec![0; LATENCY_BUCKETS], 0).is_ok());
        assert!(LatencyBuckets::new(vec![0; 3], 0).is_err());
    }
}
