//! A log-linear latency histogram in fixed memory.
//!
//! Values below [`SUB_BUCKETS`] µs get a bucket each; above, every power of two
//! `[2^e, 2^(e+1))` is split into [`SUB_BUCKETS`] equal buckets of width `2^(e-4)`. A bucket's
//! width is therefore at most 1/16 of its lower bound, and reporting its midpoint is within
//! 1/32 of any value in it: [`LatencyHistogram::percentile`] is within **3.125 %** of the exact
//! nearest-rank percentile (exact below 32 µs). Values from [`MAX_TRACKED_US`] up (about 19
//! hours) share the last bucket.

/// Sub-buckets per power of two (log2: 4).
pub const SUB_BUCKETS: usize = 16;
const SUB_BITS: u32 = 4;

/// Powers of two covered above the exact range: `2^4 µs` … `2^36 µs`.
const GROUPS: usize = 32;

/// Number of buckets: the exact range, then [`SUB_BUCKETS`] per power of two.
pub const BUCKETS: usize = SUB_BUCKETS + GROUPS * SUB_BUCKETS;

/// Lowest value of the last bucket, which also holds everything larger (`2^36 - 2^31` µs,
/// about 19 hours).
pub const MAX_TRACKED_US: u64 = ((2 * SUB_BUCKETS - 1) as u64) << (GROUPS - 1);

/// Upper bounds, in microseconds, of the latency histogram the agent exposes on `/metrics`
/// (`le` 25 µs … 10 s). Every device uses these same bounds, so a scraper can sum the
/// buckets of a whole fleet before taking a quantile.
pub const EXPOSED_BOUNDS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Latencies counted exactly against [`EXPOSED_BOUNDS_US`] (the log-linear buckets do not
/// end on those bounds): how many were at most each bound, and how many in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExposedBuckets {
    /// Latencies in `(bound[i-1], bound[i]]`; index `len` holds those above the last bound.
    counts: [u64; EXPOSED_BOUNDS_US.len() + 1],
    sum_us: u64,
}

impl ExposedBuckets {
    /// Counts one latency.
    pub fn record(&mut self, latency_us: u64) {
        let i = EXPOSED_BOUNDS_US.partition_point(|&b| b < latency_us);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.sum_us = self.sum_us.saturating_add(latency_us);
    }

    /// How many latencies were at most each bound of [`EXPOSED_BOUNDS_US`] (cumulative).
    pub fn cumulative(&self) -> [u64; EXPOSED_BOUNDS_US.len()] {
        let mut out = [0; EXPOSED_BOUNDS_US.len()];
        let mut seen = 0u64;
        for (o, &c) in out.iter_mut().zip(&self.counts) {
            seen = seen.saturating_add(c);
            *o = seen;
        }
        out
    }

    /// Latencies in each interval (not cumulative): `(bound[i-1], bound[i]]` at index `i`,
    /// those above the last bound at the end.
    pub fn counts(&self) -> &[u64; EXPOSED_BOUNDS_US.len() + 1] {
        &self.counts
    }

    /// Latencies counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// Their sum, µs (saturating).
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }
}

/// Counts of latencies in microseconds, in [`BUCKETS`] log-linear buckets (see the module
/// docs for the error bound). About 4 KiB inline, no heap.
#[derive(Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [u64; BUCKETS],
    count: u64,
    sum_us: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count)
            .field("sum_us", &self.sum_us)
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket of `us`.
fn bucket_of(us: u64) -> usize {
    if us < SUB_BUCKETS as u64 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros();
    let group = (e - SUB_BITS) as usize;
    if group >= GROUPS {
        return BUCKETS - 1;
    }
    let sub = ((us >> (e - SUB_BITS)) as usize) & (SUB_BUCKETS - 1);
    SUB_BUCKETS + group * SUB_BUCKETS + sub
}

/// Lowest value and width of bucket `index`.
fn bucket_range(index: usize) -> (u64, u64) {
    if index < SUB_BUCKETS {
        return (index as u64, 1);
    }
    let group = (index - SUB_BUCKETS) / SUB_BUCKETS;
    let sub = ((index - SUB_BUCKETS) % SUB_BUCKETS) as u64;
    let width = 1u64 << group;
    ((SUB_BUCKETS as u64 + sub) << group, width)
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> LatencyHistogram {
        LatencyHistogram {
            counts: [0; BUCKETS],
            count: 0,
            sum_us: 0,
        }
    }

    /// Counts one latency.
    pub fn record(&mut self, latency_us: u64) {
        let b = bucket_of(latency_us);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum_us = self.sum_us.saturating_add(latency_us);
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the latencies recorded, µs (saturating).
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// The nearest-rank `q`-quantile (`q` in `[0, 1]`, clamped): the value of rank
    /// `max(1, ceil(q · n))` in sorted order, estimated as the midpoint of its bucket,
    /// within 3.125 % of the exact value; `None` when empty or `q` is NaN.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let rank = nearest_rank(q, self.count);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = bucket_range(i);
                return Some(lo + width / 2);
            }
        }
        // Unreachable while `count` is the sum of the buckets; saturated counts end here.
        let (lo, width) = bucket_range(BUCKETS - 1);
        Some(lo + width / 2)
    }

    /// Adds `other`'s counts to this one's.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Forgets everything recorded.
    pub fn reset(&mut self) {
        *self = LatencyHistogram::new();
    }
}

/// The 1-based rank of the nearest-rank `q`-quantile of `n` values.
fn nearest_rank(q: f64, n: u64) -> u64 {
    let q = q.clamp(0.0, 1.0);
    ((q * n as f64).ceil() as u64).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(sorted: &[u64], q: f64) -> u64 {
        sorted[nearest_rank(q, sorted.len() as u64) as usize - 1]
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (lo, width) = bucket_range(i);
            assert_eq!(lo, next, "bucket {i}");
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(lo + width - 1), i);
            if i >= SUB_BUCKETS {
                assert!(width * 16 <= lo, "bucket {i}: width {width} at {lo}");
            }
            next = lo + width;
        }
        assert_eq!(bucket_range(BUCKETS - 1).0, MAX_TRACKED_US);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact_and_empty_has_no_percentile() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.percentile(0.5), None);
        for v in [3, 1, 2, 9, 31] {
            h.record(v);
        }
        assert_eq!(h.percentile(0.5), Some(3));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(h.percentile(1.0), Some(31));
        assert_eq!(h.percentile(f64::NAN), None);
        assert_eq!((h.count(), h.sum_us()), (5, 46));
        h.reset();
        assert_eq!((h.count(), h.percentile(0.99)), (0, None));
    }

    #[test]
    fn hours_saturate_into_the_last_bucket() {
        let mut h = LatencyHistogram::new();
        h.record(u64::MAX);
        h.record(u64::MAX);
        let p = h.percentile(0.5).unwrap();
        assert!(p >= MAX_TRACKED_US);
        assert_eq!(h.sum_us(), u64::MAX);
    }

    #[test]
    fn exposed_buckets_count_each_latency_at_its_bound_and_above() {
        let mut b = ExposedBuckets::default();
        for us in [0, 25, 26, 1_000, 10_000_000, 10_000_001, u64::MAX] {
            b.record(us);
        }
        let c = b.cumulative();
        assert_eq!((c[0], c[1], c[5]), (2, 3, 4));
        assert_eq!(c[EXPOSED_BOUNDS_US.len() - 1], 5);
        assert_eq!(b.count(), 7);
        assert_eq!(b.sum_us(), u64::MAX);
        assert!(EXPOSED_BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
    }

    fn latencies() -> impl Strategy<Value = Vec<u64>> {
        // Log-uniform from 1 µs to about an hour, so every power of two gets exercised.
        prop::collection::vec((0u32..32, any::<u64>()), 1..400).prop_map(|v| {
            v.into_iter()
                .map(|(e, r)| (1u64 << e) + r % (1u64 << e))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn percentiles_are_within_the_stated_bound(values in latencies(), q in 0.0f64..=1.0) {
            let mut h = LatencyHistogram::new();
            for &v in &values {
                h.record(v);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            for q in [0.5, 0.95, 0.99, q] {
                let want = exact(&sorted, q);
                let got = h.percentile(q).unwrap();
                prop_assert!(
                    got.abs_diff(want) as f64 <= want as f64 / 32.0,
                    "q {q}: histogram {got}, exact {want}"
                );
            }
        }

        #[test]
        fn merge_equals_recording_both(a in latencies(), b in latencies()) {
            let (mut ha, mut hb, mut all) =
                (LatencyHistogram::new(), LatencyHistogram::new(), LatencyHistogram::new());
            for &v in &a {
                ha.record(v);
                all.record(v);
            }
            for &v in &b {
                hb.record(v);
                all.record(v);
            }
            ha.merge(&hb);
            prop_assert_eq!(ha, all);
        }
    }
}
