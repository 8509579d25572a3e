//! [`RecentPredictions`]: the last N predictions the agent served, so that feedback sent
//! later (`POST /feedback {id, label}`) can be matched to what was predicted, and the
//! labelled samples handed to the host for retraining.

use super::MetricsError;

/// A prediction or a label: a class index (classifiers) or a value (regressors).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Class index.
    Class(usize),
    /// Regression value.
    Value(f32),
}

/// What [`RecentPredictions::label`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Feedback {
    /// What the model predicted.
    pub predicted: Outcome,
    /// Whether the label matches it: `Some` for classes, `None` for values (a regression
    /// is not right or wrong; compare `predicted` with the label as the application sees fit).
    pub correct: Option<bool>,
}

/// A prediction's input with its true label.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledSample {
    /// The prediction's id.
    pub id: u64,
    /// The input sample.
    pub input: Vec<f32>,
    /// What the model predicted.
    pub predicted: Outcome,
    /// The true label.
    pub label: Outcome,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u64,
    len: u32,
    predicted: Outcome,
    label: Option<Outcome>,
    taken: bool,
}

/// Ids are below 2^53, so JSON readers that hold numbers as doubles keep them exact.
const ID_MASK: u64 = (1 << 53) - 1;

/// A ring of the last `capacity` predictions: id, predicted outcome, input sample. Memory is
/// fixed at creation (about `capacity × (sample_len × 4 + 56)` bytes); recording the
/// `capacity + 1`-th prediction forgets the oldest, labelled or not.
///
/// Ids are consecutive from a random start (so that ids handed out before a restart do not
/// match predictions made after it), below 2^53.
#[derive(Clone, Debug)]
pub struct RecentPredictions {
    entries: Box<[Option<Entry>]>,
    samples: Box<[f32]>,
    sample_len: usize,
    next_id: u64,
    /// Slot the next prediction goes to.
    next_slot: usize,
    lost_labels: u64,
}

impl RecentPredictions {
    /// An empty ring of `capacity` predictions of `sample_len` values each, with ids from
    /// a random start.
    ///
    /// # Errors
    /// [`MetricsError::RecentCapacity`] when `capacity` is 0 or `capacity × sample_len`
    /// exceeds [`MAX_RECENT_VALUES`].
    pub fn new(capacity: usize, sample_len: usize) -> Result<RecentPredictions, MetricsError> {
        let start = getrandom::u64().unwrap_or_else(|_| crate::util::now_unix_ns());
        // Leave room below 2^53 so the ids do not wrap in practice.
        Self::with_first_id(capacity, sample_len, start & (ID_MASK >> 1))
    }

    /// As [`RecentPredictions::new`], with the first id given (tests, reproducible runs).
    ///
    /// # Errors
    /// As [`RecentPredictions::new`].
    pub fn with_first_id(
        capacity: usize,
        sample_len: usize,
        first_id: u64,
    ) -> Result<RecentPredictions, MetricsError> {
        let values = capacity.checked_mul(sample_len.max(1));
        if capacity == 0 || values.is_none_or(|v| v > MAX_RECENT_VALUES) {
            return Err(MetricsError::RecentCapacity {
                capacity,
                sample_len,
                max_values: MAX_RECENT_VALUES,
            });
        }
        Ok(RecentPredictions {
            entries: vec![None; capacity].into_boxed_slice(),
            samples: vec![0.0; capacity * sample_len].into_boxed_slice(),
            sample_len,
            next_id: first_id & ID_MASK,
            next_slot: 0,
            lost_labels: 0,
        })
    }

    /// Predictions the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Where `id` would be if the ring still held it.
    fn slot(&self, id: u64) -> Option<usize> {
        let cap = self.entries.len();
        let age = (self.next_id.wrapping_sub(id) & ID_MASK) as usize;
        (1..=cap)
            .contains(&age)
            .then(|| (self.next_slot + cap - age) % cap)
    }

    /// Remembers a prediction and returns its id. `input_sample` values beyond the sample
    /// length are not kept; a shorter sample is kept as it is.
    pub fn record(&mut self, predicted: Outcome, input_sample: &[f32]) -> u64 {
        let id = self.next_id;
        self.next_id = (id + 1) & ID_MASK;
        let slot = self.next_slot;
        self.next_slot = (slot + 1) % self.entries.len();
        if let Some(old) = &self.entries[slot]
            && old.label.is_some()
            && !old.taken
        {
            self.lost_labels += 1;
        }
        let len = input_sample.len().min(self.sample_len);
        let at = slot * self.sample_len;
        self.samples[at..at + len].copy_from_slice(&input_sample[..len]);
        self.entries[slot] = Some(Entry {
            id,
            len: len as u32,
            predicted,
            label: None,
            taken: false,
        });
        id
    }

    fn entry(&self, id: u64) -> Option<(usize, &Entry)> {
        let slot = self.slot(id)?;
        self.entries[slot]
            .as_ref()
            .filter(|e| e.id == id)
            .map(|e| (slot, e))
    }

    /// The prediction `id` and its input, while the ring remembers it.
    pub fn get(&self, id: u64) -> Option<(Outcome, &[f32])> {
        let (slot, e) = self.entry(id)?;
        let at = slot * self.sample_len;
        Some((e.predicted, &self.samples[at..at + e.len as usize]))
    }

    /// Attaches the true `label` to prediction `id` and says whether it was right.
    ///
    /// # Errors
    /// [`MetricsError::UnknownPrediction`] when the id was never issued or has been
    /// forgotten, [`MetricsError::AlreadyLabelled`] for a second label,
    /// [`MetricsError::LabelKind`] for a value label on a class prediction or the reverse.
    pub fn label(&mut self, id: u64, label: Outcome) -> Result<Feedback, MetricsError> {
        let slot = self
            .entry(id)
            .map(|(s, _)| s)
            .ok_or(MetricsError::UnknownPrediction { id })?;
        let Some(e) = self.entries[slot].as_mut() else {
            return Err(MetricsError::UnknownPrediction { id });
        };
        if e.label.is_some() {
            return Err(MetricsError::AlreadyLabelled { id });
        }
        let correct = match (e.predicted, label) {
            (Outcome::Class(p), Outcome::Class(l)) => Some(p == l),
            (Outcome::Value(_), Outcome::Value(l)) if l.is_finite() => None,
            _ => return Err(MetricsError::LabelKind { id }),
        };
        e.label = Some(label);
        Ok(Feedback {
            predicted: e.predicted,
            correct,
        })
    }

    /// Moves every labelled prediction the ring still holds and has not handed out yet
    /// into `out`, oldest first. Each is handed out once; the prediction stays in the ring
    /// (and keeps its label) until it is forgotten.
    pub fn take_labelled(&mut self, out: &mut Vec<LabelledSample>) {
        let start = out.len();
        for (slot, e) in self.entries.iter_mut().enumerate() {
            if let Some(e) = e
                && let Some(label) = e.label
                && !e.taken
            {
                e.taken = true;
                let at = slot * self.sample_len;
                out.push(LabelledSample {
                    id: e.id,
                    input: self.samples[at..at + e.len as usize].to_vec(),
                    predicted: e.predicted,
                    label,
                });
            }
        }
        out[start..].sort_by_key(|s| s.id.wrapping_sub(self.next_id) & ID_MASK);
    }

    /// Labelled predictions forgotten before [`RecentPredictions::take_labelled`] took them.
    pub fn lost_labels(&self) -> u64 {
        self.lost_labels
    }
}

/// Largest `capacity × sample_len` a [`RecentPredictions`] accepts (64 MiB of samples).
pub const MAX_RECENT_VALUES: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn feedback_matches_the_prediction_and_is_taken_once() {
        let mut r = RecentPredictions::with_first_id(4, 3, 100).unwrap();
        let a = r.record(Outcome::Class(2), &[1.0, 2.0, 3.0]);
        let b = r.record(Outcome::Class(0), &[4.0, 5.0, 6.0]);
        assert_eq!((a, b), (100, 101));
        assert_eq!(r.get(a), Some((Outcome::Class(2), &[1.0, 2.0, 3.0][..])));
        assert_eq!(
            r.label(b, Outcome::Class(1)).unwrap(),
            Feedback {
                predicted: Outcome::Class(0),
                correct: Some(false)
            }
        );
        assert_eq!(r.label(a, Outcome::Class(2)).unwrap().correct, Some(true));
        assert!(matches!(
            r.label(a, Outcome::Class(2)),
            Err(MetricsError::AlreadyLabelled { id: 100 })
        ));
        assert!(matches!(
            r.label(99, Outcome::Class(0)),
            Err(MetricsError::UnknownPrediction { id: 99 })
        ));
        let mut out = Vec::new();
        r.take_labelled(&mut out);
        assert_eq!(
            out.iter().map(|s| (s.id, s.label)).collect::<Vec<_>>(),
            vec![(100, Outcome::Class(2)), (101, Outcome::Class(1))]
        );
        assert_eq!(out[1].input, vec![4.0, 5.0, 6.0]);
        r.take_labelled(&mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn the_oldest_is_forgotten_first_and_lost_labels_are_counted() {
        let mut r = RecentPredictions::with_first_id(2, 1, 0).unwrap();
        let a = r.record(Outcome::Value(1.5), &[1.0]);
        r.label(a, Outcome::Value(1.0)).unwrap();
        let b = r.record(Outcome::Value(0.0), &[2.0]);
        assert!(matches!(
            r.label(b, Outcome::Class(1)),
            Err(MetricsError::LabelKind { .. })
        ));
        let c = r.record(Outcome::Value(3.0), &[3.0, 99.0]);
        assert_eq!(r.get(a), None);
        assert_eq!(r.get(c), Some((Outcome::Value(3.0), &[3.0][..])));
        assert_eq!(r.lost_labels(), 1);
        // A short sample is kept as it is.
        let d = r.record(Outcome::Value(4.0), &[]);
        assert_eq!(r.get(d).unwrap().1, &[] as &[f32]);
    }

    #[test]
    fn ids_wrap_below_2_pow_53_and_bad_sizes_are_refused() {
        let mut r = RecentPredictions::with_first_id(3, 1, ID_MASK).unwrap();
        let a = r.record(Outcome::Class(0), &[0.0]);
        let b = r.record(Outcome::Class(1), &[1.0]);
        assert_eq!((a, b), (ID_MASK, 0));
        r.label(b, Outcome::Class(1)).unwrap();
        r.label(a, Outcome::Class(1)).unwrap();
        let mut out = Vec::new();
        r.take_labelled(&mut out);
        assert_eq!(out.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a, b]);
        assert!(RecentPredictions::new(0, 4).is_err());
        assert!(RecentPredictions::new(usize::MAX, 4).is_err());
        assert!(
            RecentPredictions::new(8, 4)
                .unwrap()
                .record(Outcome::Class(0), &[0.0; 4])
                <= ID_MASK
        );
    }

    proptest! {
        #[test]
        fn the_ring_remembers_exactly_the_last_capacity_ids(
            capacity in 1usize..20, n in 0usize..100, first in any::<u64>(),
        ) {
            let mut r = RecentPredictions::with_first_id(capacity, 2, first).unwrap();
            let ids: Vec<u64> = (0..n)
                .map(|i| r.record(Outcome::Class(i), &[i as f32, 0.0]))
                .collect();
            for (i, &id) in ids.iter().enumerate() {
                let remembered = i + capacity >= n;
                prop_assert_eq!(r.get(id).is_some(), remembered, "{} of {}", i, n);
                if remembered {
                    prop_assert_eq!(r.get(id).unwrap().1[0], i as f32);
                }
            }
        }
    }
}
