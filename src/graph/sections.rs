//! Typed metadata sections: what a [`Section`]'s bytes hold for each registered kind.
//!
//! | kind | type | written by | read by |
//! |---|---|---|---|
//! | 1 | reserved (training metrics) | | |
//! | 2 | [`DriftBaseline`] | `perch-host train`, `push` | the agent's drift figures (PSI) |
//! | 3 | [`Canary`] | `perch-host train`, `push` | the agent, before it installs a model |
//! | 4 | [`super::budget::Requirements`] | the host, for every artifact it writes | `perch info`, the agent's budget check |
//!
//! Each section's bytes are the postcard encoding of its type. A reader skips kinds it does
//! not know; a known kind that fails to decode or validate is an error naming the kind.

use super::{Metadata, Section};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Section kind of the [`DriftBaseline`].
pub const DRIFT_BASELINE: u32 = 2;
/// Section kind of the [`Canary`].
pub const CANARY: u32 = 3;

/// Largest number of bins a baseline feature may have.
pub const MAX_BINS: usize = 16;

/// Why a section cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SectionError {
    /// The bytes are not the postcard encoding of the kind's type.
    #[error("metadata section kind {kind} does not decode: {reason}")]
    Decode {
        /// The section's kind (`docs/artifact.md` lists the registered ones).
        kind: u32,
        /// postcard's error message.
        reason: String,
    },
    /// The section decodes but contradicts itself or the model.
    #[error("metadata section kind {kind} is invalid: {reason}")]
    Invalid {
        /// The section's kind (`docs/artifact.md` lists the registered ones).
        kind: u32,
        /// What is wrong.
        reason: String,
    },
}

/// The training data's distribution of each input feature, for drift (PSI) on the device.
///
/// Bins are the training data's decile cut points with duplicates removed: a value `v`
/// falls in bin `i` = the number of cut points strictly below `v`, so bin 0 is
/// `(-inf, cuts[0]]`, bin `i` is `(cuts[i-1], cuts[i]]` and the last is `(cuts[last], inf)`.
/// Values equal to a cut point go to the lower bin, which keeps a zero-inflated feature's
/// zeros in a bin of their own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DriftBaseline {
    /// One entry per element of the model's (first) input, in order.
    pub features: Vec<FeatureBaseline>,
}

/// One feature's baseline: its moments and the binned distribution PSI compares against.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FeatureBaseline {
    /// Mean over the training rows.
    pub mean: f32,
    /// Training (population) standard deviation.
    pub std: f32,
    /// Strictly increasing cut points (at most `MAX_BINS - 1`).
    pub cuts: Vec<f32>,
    /// Share of the training rows in each bin, in units of 1/10000: `cuts.len() + 1` values.
    pub fractions_e4: Vec<u16>,
}

impl FeatureBaseline {
    /// The bin of `value` (see [`DriftBaseline`]); NaN goes to the last bin.
    pub fn bin(&self, value: f32) -> usize {
        if value.is_nan() {
            return self.cuts.len();
        }
        self.cuts.partition_point(|&c| c < value)
    }

    /// The bin shares as fractions of 1.
    pub fn fractions(&self) -> impl Iterator<Item = f64> + '_ {
        self.fractions_e4.iter().map(|&f| f64::from(f) / 10_000.0)
    }
}

impl DriftBaseline {
    /// Builds a baseline from training columns: `columns[j]` holds feature `j`'s values.
    /// Cut points are the 10 %, 20 %, … 90 % quantiles (linear interpolation), deduplicated.
    pub fn from_columns<'a>(columns: impl IntoIterator<Item = &'a [f64]>) -> DriftBaseline {
        let features = columns
            .into_iter()
            .map(|col| {
                let finite: Vec<f64> = col.iter().copied().filter(|v| v.is_finite()).collect();
                let n = finite.len().max(1) as f64;
                let mean = finite.iter().sum::<f64>() / n;
                let var = finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                let mut sorted = finite.clone();
                sorted.sort_by(f64::total_cmp);
                let mut cuts: Vec<f32> = Vec::new();
                if !sorted.is_empty() {
                    for q in 1..10 {
                        let c = quantile(&sorted, f64::from(q) / 10.0) as f32;
                        if cuts.last().is_none_or(|&last| c > last) {
                            cuts.push(c);
                        }
                    }
                }
                let mut counts = vec![0u64; cuts.len() + 1];
                for &v in &finite {
                    counts[cuts.partition_point(|&c| c < v as f32)] += 1;
                }
                let fractions_e4 = counts
                    .iter()
                    .map(|&c| ((c as f64 / n) * 10_000.0).round() as u16)
                    .collect();
                FeatureBaseline {
                    mean: mean as f32,
                    std: var.sqrt() as f32,
                    cuts,
                    fractions_e4,
                }
            })
            .collect();
        DriftBaseline { features }
    }

    /// Checks the invariants: per feature, finite strictly increasing cuts, at most
    /// [`MAX_BINS`] bins, one fraction per bin, fractions summing to about 1; and, when
    /// `sample_len` is given, one feature per input element.
    ///
    /// # Errors
    /// [`SectionError::Invalid`] naming the feature and the defect.
    pub fn validate(&self, sample_len: Option<usize>) -> Result<(), SectionError> {
        let bad = |reason: String| SectionError::Invalid {
            kind: DRIFT_BASELINE,
            reason,
        };
        if let Some(n) = sample_len
            && n != self.features.len()
        {
            return Err(bad(format!(
                "{} features, but the model's input has {n} values per sample",
                self.features.len()
            )));
        }
        for (j, f) in self.features.iter().enumerate() {
            if !f.mean.is_finite() || !f.std.is_finite() || f.std < 0.0 {
                return Err(bad(format!("feature {j}: mean {} / std {}", f.mean, f.std)));
            }
            if f.cuts.len() >= MAX_BINS {
                return Err(bad(format!(
                    "feature {j}: {} cut points (at most {})",
                    f.cuts.len(),
                    MAX_BINS - 1
                )));
            }
            if f.cuts.iter().any(|c| !c.is_finite()) || f.cuts.windows(2).any(|w| w[0] >= w[1]) {
                return Err(bad(format!(
                    "feature {j}: cut points {:?} are not finite and strictly increasing",
                    f.cuts
                )));
            }
            if f.fractions_e4.len() != f.cuts.len() + 1 {
                return Err(bad(format!(
                    "feature {j}: {} fractions for {} bins",
                    f.fractions_e4.len(),
                    f.cuts.len() + 1
                )));
            }
            let total: u32 = f.fractions_e4.iter().map(|&x| u32::from(x)).sum();
            // Each share is rounded to 1/10000 on its own.
            if total.abs_diff(10_000) > MAX_BINS as u32 {
                return Err(bad(format!(
                    "feature {j}: bin fractions sum to {total}/10000"
                )));
            }
        }
        Ok(())
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A known input and the outputs the model must give for it, checked on the device before
/// a pushed model is installed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Canary {
    /// One sample of the model's (first) input.
    pub input: Vec<f32>,
    /// Expected outputs, in the graph's output order.
    pub outputs: Vec<CanaryValues>,
    /// Largest absolute difference allowed on float outputs (integer outputs must match).
    pub tolerance: f32,
}

/// Expected values of one output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum CanaryValues {
    /// A float output.
    F32(Vec<f32>),
    /// An integer output (labels).
    I64(Vec<i64>),
}

impl Canary {
    /// Compares actual outputs (as the runtime gives them, one sample) with the expected ones.
    ///
    /// # Errors
    /// A message naming the first output and position that differs.
    pub fn check(&self, actual: &[CanaryValues]) -> Result<(), String> {
        if actual.len() != self.outputs.len() {
            return Err(format!(
                "canary expects {} outputs, the model gave {}",
                self.outputs.len(),
                actual.len()
            ));
        }
        for (i, (want, got)) in self.outputs.iter().zip(actual).enumerate() {
            match (want, got) {
                (CanaryValues::F32(w), CanaryValues::F32(g)) if w.len() == g.len() => {
                    if let Some((k, (a, b))) = w.iter().zip(g).enumerate().find(|(_, (a, b))| {
                        // NaN on either side is a difference.
                        (*a - *b)
                            .abs()
                            .partial_cmp(&self.tolerance)
                            .is_none_or(|o| o.is_gt())
                    }) {
                        return Err(format!(
                            "canary output {i} value {k}: expected {a}, got {b} (tolerance {})",
                            self.tolerance
                        ));
                    }
                }
                (CanaryValues::I64(w), CanaryValues::I64(g)) if w.len() == g.len() => {
                    if let Some((k, (a, b))) =
                        w.iter().zip(g).enumerate().find(|(_, (a, b))| a != b)
                    {
                        return Err(format!(
                            "canary output {i} value {k}: expected {a}, got {b}"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "canary output {i}: expected {}, got {}",
                        describe(want),
                        describe(got)
                    ));
                }
            }
        }
        Ok(())
    }
}

fn describe(v: &CanaryValues) -> String {
    match v {
        CanaryValues::F32(x) => format!("{} float values", x.len()),
        CanaryValues::I64(x) => format!("{} integer values", x.len()),
    }
}

impl Metadata {
    /// Decodes the section of `kind`, if the metadata has one (the first, if several).
    ///
    /// # Errors
    /// [`SectionError::Decode`] when its bytes are not a `T`.
    pub fn section<T: DeserializeOwned>(&self, kind: u32) -> Result<Option<T>, SectionError> {
        self.sections
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| {
                postcard::from_bytes(&s.bytes).map_err(|e| SectionError::Decode {
                    kind,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Stores `value` as the section of `kind`, replacing any section of that kind.
    ///
    /// # Errors
    /// [`SectionError::Decode`] if postcard cannot encode it (it always can for the
    /// registered types).
    pub fn set_section<T: Serialize>(&mut self, kind: u32, value: &T) -> Result<(), SectionError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| SectionError::Decode {
            kind,
            reason: e.to_string(),
        })?;
        self.sections.retain(|s| s.kind != kind);
        self.sections.push(Section { kind, bytes });
        Ok(())
    }

    /// The drift baseline, checked against the input's `sample_len`.
    ///
    /// # Errors
    /// A section that does not decode or validate.
    pub fn drift_baseline(&self, sample_len: usize) -> Result<Option<DriftBaseline>, SectionError> {
        let b: Option<DriftBaseline> = self.section(DRIFT_BASELINE)?;
        if let Some(b) = &b {
            b.validate(Some(sample_len))?;
        }
        Ok(b)
    }

    /// The canary, checked against the input's `sample_len`.
    ///
    /// # Errors
    /// A section that does not decode, or whose input has the wrong length.
    pub fn canary(&self, sample_len: usize) -> Result<Option<Canary>, SectionError> {
        let c: Option<Canary> = self.section(CANARY)?;
        if let Some(c) = &c {
            if c.input.len() != sample_len {
                return Err(SectionError::Invalid {
                    kind: CANARY,
                    reason: format!(
                        "canary input has {} values, the model takes {sample_len}",
                        c.input.len()
                    ),
                });
            }
            if c.tolerance.is_nan() || c.tolerance < 0.0 || c.input.iter().any(|v| !v.is_finite()) {
                return Err(SectionError::Invalid {
                    kind: CANARY,
                    reason: "canary input or tolerance is not finite".into(),
                });
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_inflated_feature_keeps_its_zeros_in_one_bin() {
        let col: Vec<f64> = (0..100)
            .map(|i| if i < 70 { 0.0 } else { i as f64 })
            .collect();
        let b = DriftBaseline::from_columns([&col[..]]);
        let f = &b.features[0];
        assert_eq!(f.cuts[0], 0.0);
        assert_eq!(f.bin(0.0), 0);
        assert_eq!(f.fractions_e4[0], 7000);
        assert_eq!(
            f.fractions_e4.iter().map(|&x| u32::from(x)).sum::<u32>(),
            10_000
        );
        b.validate(Some(1)).unwrap();
        assert!(b.validate(Some(2)).is_err());
    }

    #[test]
    fn constant_feature_splits_at_its_value_and_bins_are_ordered() {
        let b = DriftBaseline::from_columns([&[3.0; 10][..], &[1.0, 2.0, 3.0, 4.0][..]]);
        // Any later value above the constant lands in the empty upper bin: drift.
        assert_eq!(b.features[0].cuts, vec![3.0]);
        assert_eq!(b.features[0].fractions_e4, vec![10_000, 0]);
        assert_eq!(b.features[0].bin(3.5), 1);
        let f = &b.features[1];
        assert!(f.bin(-10.0) == 0 && f.bin(100.0) == f.cuts.len());
        assert!(f.bin(f32::NAN) == f.cuts.len());
    }

    #[test]
    fn sections_round_trip_and_damage_is_an_error() {
        let mut m = Metadata::default();
        let c = Canary {
            input: vec![1.0, 2.0],
            outputs: vec![CanaryValues::F32(vec![0.25]), CanaryValues::I64(vec![1])],
            tolerance: 1e-4,
        };
        m.set_section(CANARY, &c).unwrap();
        m.set_section(CANARY, &c).unwrap();
        assert_eq!(m.sections.len(), 1);
        assert_eq!(m.canary(2).unwrap(), Some(c.clone()));
        assert!(m.canary(3).is_err());
        assert_eq!(m.drift_baseline(2).unwrap(), None);
        m.sections[0].bytes.truncate(3);
        assert!(matches!(
            m.canary(2),
            Err(SectionError::Decode { kind: CANARY, .. })
        ));
    }

    #[test]
    fn canary_check_names_the_difference() {
        let c = Canary {
            input: vec![0.0],
            outputs: vec![
                CanaryValues::F32(vec![0.5, 0.5]),
                CanaryValues::I64(vec![2]),
            ],
            tolerance: 1e-3,
        };
        let ok = [
            CanaryValues::F32(vec![0.5004, 0.4996]),
            CanaryValues::I64(vec![2]),
        ];
        assert_eq!(c.check(&ok), Ok(()));
        let off = [
            CanaryValues::F32(vec![0.6, 0.4]),
            CanaryValues::I64(vec![2]),
        ];
        assert!(c.check(&off).unwrap_err().contains("output 0 value 0"));
        let nan = [
            CanaryValues::F32(vec![f32::NAN, 0.5]),
            CanaryValues::I64(vec![2]),
        ];
        assert!(c.check(&nan).is_err());
        let label = [
            CanaryValues::F32(vec![0.5, 0.5]),
            CanaryValues::I64(vec![1]),
        ];
        assert!(c.check(&label).unwrap_err().contains("expected 2, got 1"));
        assert!(c.check(&ok[..1]).is_err());
    }
}
