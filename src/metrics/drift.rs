//! Per-feature drift: running moments and counts in the training baseline's bins, and the
//! population stability index (PSI) against the baseline's bin shares.

use crate::graph::sections::{FeatureBaseline, MAX_BINS};

/// Share used in place of an empty bin's (observed or training) share in [`psi`]: 1/10000,
/// the resolution of the baseline's `fractions_e4`. Without it a bin empty on one side
/// would make the index infinite; with it such a bin adds at most about
/// `share · ln(share / 0.0001)`.
pub const PSI_EPSILON: f64 = 1e-4;

/// Running count, mean and variance of a stream of values (Welford's algorithm, f64).
/// Non-finite values are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunningMoments {
    count: u64,
    mean: f64,
    m2: f64,
}

impl RunningMoments {
    /// Adds one value (ignored unless finite).
    pub fn record(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean of the values, `None` before the first.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    /// Population variance, `None` before the first value.
    pub fn variance(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.m2 / self.count as f64).max(0.0))
    }

    /// Combines the moments of two disjoint streams (Chan et al.'s parallel update).
    pub fn merge(&mut self, other: &RunningMoments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let n = self.count + other.count;
        let delta = other.mean - self.mean;
        let (na, nb) = (self.count as f64, other.count as f64);
        self.mean += delta * nb / n as f64;
        self.m2 += other.m2 + delta * delta * na * nb / n as f64;
        self.count = n;
    }
}

/// One feature's figures for a window: its moments and how many values fell in each of
/// the baseline's bins.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FeatureDrift {
    /// Moments of the finite values.
    pub moments: RunningMoments,
    bins: [u32; MAX_BINS],
    binned: u32,
}

impl FeatureDrift {
    /// Adds one value; bins it when a baseline is given (NaN goes to the last bin, as
    /// [`FeatureBaseline::bin`] says). Bin counts saturate at `u32::MAX`.
    pub fn record(&mut self, value: f32, baseline: Option<&FeatureBaseline>) {
        self.moments.record(f64::from(value));
        if let Some(b) = baseline {
            // A validated baseline has at most MAX_BINS bins; clamp for any other.
            let bin = b.bin(value).min(MAX_BINS - 1);
            self.bins[bin] = self.bins[bin].saturating_add(1);
            self.binned = self.binned.saturating_add(1);
        }
    }

    /// Values counted in each bin (all [`MAX_BINS`] slots; those past the baseline's bins
    /// stay 0).
    pub fn bin_counts(&self) -> &[u32; MAX_BINS] {
        &self.bins
    }

    /// The PSI of the binned values against `baseline`; `None` when nothing was binned.
    pub fn psi(&self, baseline: &FeatureBaseline) -> Option<f64> {
        let n = self.bins[..baseline.fractions_e4.len().min(MAX_BINS)]
            .iter()
            .map(|&c| u64::from(c))
            .sum::<u64>();
        if n == 0 {
            return None;
        }
        Some(psi(self
            .bins
            .iter()
            .zip(baseline.fractions())
            .map(|(&c, e)| (f64::from(c) / n as f64, e))))
    }

    /// Forgets everything recorded.
    pub fn reset(&mut self) {
        *self = FeatureDrift::default();
    }
}

/// Population stability index of observed shares against expected ones, pairs `(a, e)` per
/// bin: `Σ (a − e) · ln(a / e)`, each share raised to at least [`PSI_EPSILON`] first.
/// 0 means the same distribution; by a common rule of thumb below 0.1 is stable, 0.1–0.25 a
/// moderate shift and above 0.25 a major one.
pub fn psi(shares: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    shares
        .into_iter()
        .map(|(a, e)| {
            let (a, e) = (a.max(PSI_EPSILON), e.max(PSI_EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// A PSI as the report carries it: times 1000, rounded, saturating at `u16::MAX`
/// (65.535); NaN becomes `u16::MAX`.
pub fn psi_milli(psi: f64) -> u16 {
    if psi.is_nan() {
        return u16::MAX;
    }
    (psi * 1000.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::sections::DriftBaseline;
    use proptest::prelude::*;

    fn baseline_0_to_99() -> FeatureBaseline {
        let col: Vec<f64> = (0..100).map(f64::from).collect();
        DriftBaseline::from_columns([&col[..]]).features.remove(0)
    }

    #[test]
    fn same_distribution_has_psi_near_zero_and_a_shift_does_not() {
        let b = baseline_0_to_99();
        let mut same = FeatureDrift::default();
        let mut shifted = FeatureDrift::default();
        for i in 0..1000 {
            same.record((i % 100) as f32, Some(&b));
            shifted.record((i % 100) as f32 + 50.0, Some(&b));
        }
        assert!(same.psi(&b).unwrap() < 0.01, "{:?}", same.psi(&b));
        // Half the mass leaves the training range entirely: a major shift.
        assert!(shifted.psi(&b).unwrap() > 1.0, "{:?}", shifted.psi(&b));
        assert_eq!(FeatureDrift::default().psi(&b), None);
    }

    #[test]
    fn psi_matches_a_hand_computation() {
        // Two bins, 50/50 expected, 80/20 observed.
        let want = (0.8f64 - 0.5) * (0.8f64 / 0.5).ln() + (0.2f64 - 0.5) * (0.2f64 / 0.5).ln();
        assert!((psi([(0.8, 0.5), (0.2, 0.5)]) - want).abs() < 1e-12);
        // An empty observed bin uses the epsilon, so the index stays finite.
        let empty = psi([(1.0, 0.5), (0.0, 0.5)]);
        let want = 0.5 * 2f64.ln() + (PSI_EPSILON - 0.5) * (PSI_EPSILON / 0.5).ln();
        assert!((empty - want).abs() < 1e-12);
        assert_eq!(psi_milli(want), 4_604);
        assert_eq!(psi_milli(1e9), u16::MAX);
        assert_eq!(psi_milli(f64::NAN), u16::MAX);
        assert_eq!(psi_milli(-1e-18), 0);
    }

    #[test]
    fn moments_skip_non_finite_values() {
        let mut m = RunningMoments::default();
        assert_eq!((m.mean(), m.variance()), (None, None));
        for v in [1.0, f64::NAN, 2.0, f64::INFINITY, 3.0] {
            m.record(v);
        }
        assert_eq!(m.count(), 3);
        assert_eq!(m.mean(), Some(2.0));
        assert!((m.variance().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn welford_matches_two_pass_and_merge_matches_one_stream(
            a in prop::collection::vec(-1e6f64..1e6, 0..200),
            b in prop::collection::vec(-1e6f64..1e6, 1..200),
        ) {
            let (mut ma, mut mb, mut all) =
                (RunningMoments::default(), RunningMoments::default(), RunningMoments::default());
            a.iter().for_each(|&v| { ma.record(v); all.record(v); });
            b.iter().for_each(|&v| { mb.record(v); all.record(v); });
            let values: Vec<f64> = a.iter().chain(&b).copied().collect();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let tol = |x: f64| 1e-9 * x.abs().max(1.0);
            prop_assert!((all.mean().unwrap() - mean).abs() <= tol(1e6));
            prop_assert!((all.variance().unwrap() - var).abs() <= tol(var) * 1e3);
            ma.merge(&mb);
            prop_assert_eq!(ma.count(), all.count());
            prop_assert!((ma.mean().unwrap() - mean).abs() <= tol(1e6));
            prop_assert!((ma.variance().unwrap() - var).abs() <= tol(var) * 1e3);
        }

        #[test]
        fn psi_is_never_negative_or_nan(
            counts in prop::collection::vec(0u32..1000, 10),
            values in prop::collection::vec(any::<f32>(), 1..100),
        ) {
            let b = baseline_0_to_99();
            let mut d = FeatureDrift::default();
            for v in values {
                d.record(v, Some(&b));
            }
            let p = d.psi(&b).unwrap();
            prop_assert!(p >= 0.0 && p.is_finite(), "{p}");
            let total: u32 = counts.iter().sum();
            if total > 0 {
                let p = psi(counts.iter().zip(b.fractions())
                    .map(|(&c, e)| (f64::from(c) / f64::from(total), e)));
                prop_assert!(p >= 0.0 && p.is_finite());
            }
        }
    }
}
