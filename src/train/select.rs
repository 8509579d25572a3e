//! Model selection: k-fold cross-validation and grid search over hyper-parameters given as
//! text (`lr=0.1,0.01;hidden=32,64`).

use super::data::{DataError, Dataset, permutation};
use super::{Fitted, ModelSpec, TrainError, fit};

/// Scores of one setting across folds (accuracy for classifiers, R² for regressors).
#[derive(Clone, Debug, PartialEq)]
pub struct CvScores {
    /// Score of each held-out fold.
    pub folds: Vec<f64>,
}

impl CvScores {
    /// Mean over folds.
    pub fn mean(&self) -> f64 {
        self.folds.iter().sum::<f64>() / self.folds.len().max(1) as f64
    }

    /// Population standard deviation over folds.
    pub fn std(&self) -> f64 {
        let m = self.mean();
        (self.folds.iter().map(|v| (v - m).powi(2)).sum::<f64>() / self.folds.len().max(1) as f64)
            .sqrt()
    }
}

/// Row indices of one fold: `(train, held_out)`.
pub type Fold = (Vec<usize>, Vec<usize>);

/// Row indices `(train, held_out)` of `k` folds over a seeded permutation of `n` rows; fold
/// sizes differ by at most one.
///
/// # Errors
/// [`DataError::BadSplit`] unless `2 <= k <= n`.
pub fn folds(n: usize, k: usize, seed: u64) -> Result<Vec<Fold>, DataError> {
    if k < 2 || k > n {
        return Err(DataError::BadSplit {
            rows: n,
            what: format!("into {k} folds (need 2 <= k <= rows)"),
        });
    }
    let order = permutation(n, seed);
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for f in 0..k {
        let len = n / k + usize::from(f < n % k);
        let held: Vec<usize> = order[start..start + len].to_vec();
        let train: Vec<usize> = order[..start]
            .iter()
            .chain(&order[start + len..])
            .copied()
            .collect();
        out.push((train, held));
        start += len;
    }
    Ok(out)
}

/// k-fold cross-validation of `spec` on `data`: fits on k-1 folds, scores the held-out one.
///
/// # Errors
/// A bad `k`, or any training error.
pub fn cv(spec: &ModelSpec, data: &Dataset, k: usize, seed: u64) -> Result<CvScores, TrainError> {
    let mut scores = Vec::with_capacity(k);
    for (train, held) in folds(data.n_rows(), k, seed)? {
        let model = fit(spec, &data.select(&train), None)?;
        scores.push(model.evaluate(&data.select(&held))?.primary());
    }
    Ok(CvScores { folds: scores })
}

/// Hyper-parameter values to try: each name with its candidates, in spec order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    /// `(name, values)` per parameter.
    pub params: Vec<(String, Vec<String>)>,
}

impl Grid {
    /// Parses `name=v1,v2;name2=v3` (spaces ignored).
    ///
    /// # Errors
    /// [`TrainError::BadParam`] for a part without `=`, an empty name or no values.
    pub fn parse(spec: &str) -> Result<Grid, TrainError> {
        let mut params = Vec::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, values)) = part.split_once('=') else {
                return Err(TrainError::BadParam {
                    name: part.to_string(),
                    value: String::new(),
                    reason: "expected name=value1,value2 (parameters separated by ';')".into(),
                });
            };
            let values: Vec<String> = values
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if name.trim().is_empty() || values.is_empty() {
                return Err(TrainError::BadParam {
                    name: name.trim().to_string(),
                    value: part.to_string(),
                    reason: "a parameter needs a name and at least one value".into(),
                });
            }
            params.push((name.trim().to_string(), values));
        }
        Ok(Grid { params })
    }

    /// Every combination, the last parameter varying fastest.
    pub fn combinations(&self) -> Vec<Vec<(String, String)>> {
        let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for (name, values) in &self.params {
            out = out
                .into_iter()
                .flat_map(|prefix| {
                    values.iter().map(move |v| {
                        let mut p = prefix.clone();
                        p.push((name.clone(), v.clone()));
                        p
                    })
                })
                .collect();
        }
        out
    }
}

/// One grid setting and its cross-validated score.
#[derive(Clone, Debug, PartialEq)]
pub struct GridRow {
    /// This row's setting: (parameter name, value) pairs as the grid spells them.
    pub params: Vec<(String, String)>,
    /// The score of each held-out fold (accuracy or R², as [`Evaluation::primary`](super::Evaluation::primary)).
    pub scores: CvScores,
}

/// The grid table, the winner and the winner refitted on all the data.
#[derive(Debug)]
pub struct GridResult {
    /// One row per combination, in grid order.
    pub table: Vec<GridRow>,
    /// Index of the best mean score in `table` (first on ties).
    pub best: usize,
    /// The best setting refitted on every row.
    pub model: Fitted,
}

/// Cross-validates every combination of `grid` applied to `base`, then refits the best
/// on all of `data`.
///
/// # Errors
/// A parameter `base` does not have, a bad `k`, or any training error.
pub fn grid_search(
    base: &ModelSpec,
    grid: &Grid,
    data: &Dataset,
    k: usize,
    seed: u64,
) -> Result<GridResult, TrainError> {
    let mut table = Vec::new();
    let mut best: Option<(usize, f64, ModelSpec)> = None;
    for params in grid.combinations() {
        let mut spec = base.clone();
        for (name, value) in &params {
            spec.set(name, value)?;
        }
        let scores = cv(&spec, data, k, seed)?;
        let mean = scores.mean();
        if best.as_ref().is_none_or(|(_, m, _)| mean > *m) {
            best = Some((table.len(), mean, spec));
        }
        table.push(GridRow { params, scores });
    }
    let (best, _, spec) = match best {
        Some(b) => b,
        None => (0, f64::NAN, base.clone()),
    };
    let model = fit(&spec, data, None)?;
    Ok(GridResult { table, best, model })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_parses_and_expands() {
        let g = Grid::parse("lr=0.1,0.01; hidden = 32,64").unwrap();
        assert_eq!(
            g.params[1],
            (
                "hidden".to_string(),
                vec!["32".to_string(), "64".to_string()]
            )
        );
        let c = g.combinations();
        assert_eq!(c.len(), 4);
        assert_eq!(
            c[1],
            vec![("lr".into(), "0.1".into()), ("hidden".into(), "64".into())]
        );
        assert!(Grid::parse("lr").is_err());
        assert!(Grid::parse("lr=").is_err());
    }

    #[test]
    fn folds_partition_rows() {
        let f = folds(10, 3, 1).unwrap();
        let mut all: Vec<usize> = f.iter().flat_map(|(_, h)| h.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(
            f.iter().map(|(_, h)| h.len()).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert!(f.iter().all(|(t, h)| t.len() + h.len() == 10));
        assert!(folds(3, 4, 0).is_err());
    }
}
