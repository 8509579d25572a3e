//! Random forests: bootstrap samples, a random feature subset per split (`sqrt` of the
//! feature count by default for classification), trees grown in parallel with
//! `std::thread::scope`. Each tree has its own generator, seeded from the forest's seed
//! and the tree's index, so a fit is reproducible whatever the number of threads.
//!
//! The forest exports to one [`Layer::TreeEnsemble`](crate::graph::Layer) that averages
//! its trees; its predictions here use the same f32 arithmetic in the same order as the
//! engine, so both agree exactly.

use super::tree::{
    Criterion, Dataset, FittedTree, LANES, MaxFeatures, TreeError, TreeParams, argmax, check_width,
    ensemble_model, grow, row_f32,
};
use crate::graph::{Model, Tree};
use ndarray::ArrayView2;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Rows scored together, tree by tree (their f32 copy stays in L1).
const BLOCK_ROWS: usize = 64;

/// Fewest rows per thread worth spawning a scoring thread for.
const PARALLEL_ROWS: usize = 4096;

/// Hyper-parameters of a random forest.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestParams {
    /// Number of trees (at least 1).
    pub n_estimators: usize,
    /// Parameters of each tree; its `seed` is ignored (see [`ForestParams::seed`]).
    pub tree: TreeParams,
    /// Whether each tree sees a bootstrap sample (drawn with replacement) of the rows.
    pub bootstrap: bool,
    /// Seed of the whole forest.
    pub seed: u64,
    /// Worker threads; none for the machine's available parallelism.
    pub n_threads: Option<usize>,
}

impl ForestParams {
    /// scikit-learn's classifier defaults: 100 trees, gini, `sqrt` features, bootstrap.
    pub fn classifier() -> ForestParams {
        ForestParams {
            n_estimators: 100,
            tree: TreeParams {
                max_features: MaxFeatures::Sqrt,
                ..TreeParams::default()
            },
            bootstrap: true,
            seed: 0,
            n_threads: None,
        }
    }

    /// scikit-learn's regressor defaults: 100 trees, squared error, all features,
    /// bootstrap.
    pub fn regressor() -> ForestParams {
        ForestParams {
            tree: TreeParams {
                criterion: Criterion::SquaredError,
                max_features: MaxFeatures::All,
                ..TreeParams::default()
            },
            ..ForestParams::classifier()
        }
    }
}

/// A fitted random forest.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomForest {
    trees: Vec<FittedTree>,
    n_features: usize,
    n_outputs: usize,
    classification: bool,
}

impl RandomForest {
    /// Width of the rows the model takes.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Whether it predicts classes (else values).
    pub fn is_classifier(&self) -> bool {
        self.classification
    }

    /// Fits a classifier on `x` (`n_samples × n_features`) and class ids `y` (`0..n`).
    ///
    /// # Errors
    /// Mismatched lengths, no data, non-finite features, parameters out of range.
    pub fn fit_classifier(
        x: ArrayView2<f64>,
        y: &[usize],
        params: &ForestParams,
    ) -> Result<RandomForest, TreeError> {
        RandomForest::fit(Dataset::classes(x, y)?, params, true)
    }

    /// Fits a regressor on `x` and targets `y`.
    ///
    /// # Errors
    /// As [`RandomForest::fit_classifier`], and for non-finite targets.
    pub fn fit_regressor(
        x: ArrayView2<f64>,
        y: &[f64],
        params: &ForestParams,
    ) -> Result<RandomForest, TreeError> {
        RandomForest::fit(Dataset::values(x, y)?, params, false)
    }

    fn fit(
        data: Dataset,
        params: &ForestParams,
        classification: bool,
    ) -> Result<RandomForest, TreeError> {
        let n_trees = params.n_estimators;
        if n_trees == 0 {
            return Err(TreeError::Param {
                name: "n_estimators",
                reason: "0 (must be at least 1)".into(),
            });
        }
        let n = data.n_samples();
        let mut seeder = ChaCha8Rng::seed_from_u64(params.seed);
        let seeds: Vec<u64> = (0..n_trees).map(|_| seeder.random()).collect();
        let threads = params
            .n_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get()))
            .clamp(1, n_trees);
        let next = AtomicUsize::new(0);
        let grow_one = |k: usize| -> Result<Tree, TreeError> {
            let mut rng = ChaCha8Rng::seed_from_u64(seeds[k]);
            let weights = if params.bootstrap {
                let mut w = vec![0.0; n];
                for _ in 0..n {
                    w[rng.random_range(0..n)] += 1.0;
                }
                w
            } else {
                vec![1.0; n]
            };
            grow(&data, &params.tree, weights, rng)
        };
        let worker = || -> Result<Vec<(usize, Tree)>, TreeError> {
            let mut done = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n_trees {
                    return Ok(done);
                }
                done.push((k, grow_one(k)?));
            }
        };
        let results: Vec<Result<Vec<(usize, Tree)>, TreeError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(TreeError::Thread("a worker panicked".into())))
                })
                .collect()
        });
        let mut grown: Vec<(usize, Tree)> = Vec::with_capacity(n_trees);
        for r in results {
            grown.extend(r?);
        }
        grown.sort_by_key(|t| t.0);
        let n_outputs = data.n_outputs();
        Ok(RandomForest {
            trees: grown
                .into_iter()
                .map(|(_, t)| FittedTree::new(t, n_outputs))
                .collect(),
            n_features: data.n_features(),
            n_outputs,
            classification,
        })
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// The trees in the native layer's form.
    pub fn trees(&self) -> impl Iterator<Item = &Tree> {
        self.trees.iter().map(|t| &t.tree)
    }

    /// Mean of the trees' leaf values for each row: class probabilities (`n_classes` per
    /// row) or the predicted value.
    ///
    /// # Errors
    /// A row of the wrong width or with a non-finite value (the first such row).
    pub fn predict_scores(&self, x: ArrayView2<f64>) -> Result<Vec<f32>, TreeError> {
        check_width(&x, self.n_features)?;
        let k = self.n_outputs;
        let n = x.nrows();
        let mut out = vec![0.0f32; n * k];
        let threads = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(n / PARALLEL_ROWS)
            .max(1);
        if threads == 1 {
            self.score_rows(&x, 0, &mut out)?;
            return Ok(out);
        }
        let per_thread = n.div_ceil(threads);
        let x = &x;
        std::thread::scope(|s| {
            let handles: Vec<_> = out
                .chunks_mut(per_thread * k)
                .enumerate()
                .map(|(c, o)| s.spawn(move || self.score_rows(x, c * per_thread, o)))
                .collect();
            // Joined in row order, so the error reported is the first bad row's.
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(TreeError::Thread("a worker panicked".into())))
            })
        })?;
        Ok(out)
    }

    /// Scores rows `first..` of `x` into `out` (`n_outputs` per row), a block of rows at a
    /// time and tree by tree within a block, [`LANES`] rows walking a tree together so
    /// their cache misses overlap. Each row still sums its trees in order, as the engine
    /// does.
    fn score_rows(
        &self,
        x: &ArrayView2<f64>,
        first: usize,
        out: &mut [f32],
    ) -> Result<(), TreeError> {
        let (k, d) = (self.n_outputs, self.n_features);
        let n_trees = self.trees.len() as f32;
        let mut row = Vec::with_capacity(d);
        let mut block = Vec::with_capacity(BLOCK_ROWS * d);
        for (b, o) in out.chunks_mut(BLOCK_ROWS * k).enumerate() {
            let start = first + b * BLOCK_ROWS;
            block.clear();
            for r in start..start + o.len() / k {
                row_f32(x, r, &mut row)?;
                block.extend_from_slice(&row);
            }
            for t in &self.trees {
                for (o, rows) in o.chunks_mut(LANES * k).zip(block.chunks(LANES * d)) {
                    t.leaves(rows, d, |r, values| {
                        for (s, v) in o[r * k..(r + 1) * k].iter_mut().zip(values) {
                            *s += v;
                        }
                    });
                }
            }
            o.iter_mut().for_each(|s| *s /= n_trees);
        }
        Ok(())
    }

    /// Predicted class ids (the first most probable class) or values.
    ///
    /// # Errors
    /// As [`RandomForest::predict_scores`].
    pub fn predict(&self, x: ArrayView2<f64>) -> Result<Vec<f64>, TreeError> {
        let scores = self.predict_scores(x)?;
        Ok(if self.classification {
            scores
                .chunks_exact(self.n_outputs)
                .map(|s| argmax(s) as f64)
                .collect()
        } else {
            scores.iter().map(|&v| v as f64).collect()
        })
    }

    /// The native model: input `X`, outputs `label` and `probabilities` (classifier) or
    /// `variable` (regressor).
    pub fn to_model(&self, name: &str) -> Model {
        ensemble_model(
            name,
            self.trees.iter().map(|t| t.tree.clone()).collect(),
            self.n_features,
            self.n_outputs,
            self.classification,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tree::row_f32;
    use ndarray::Array2;

    /// Scoring in blocks, lanes and threads gives each row exactly the mean of its trees'
    /// leaves summed in tree order, and reports the first bad row.
    #[test]
    fn batched_scores_equal_row_by_row() {
        let n = 2 * PARALLEL_ROWS + 77;
        let mut x = Array2::from_shape_fn((n, 3), |(i, j)| {
            ((i * 7919 + j * 104_729) % 1000) as f64 / 10.0
        });
        let y: Vec<usize> = (0..n).map(|i| (i * 31 % 97) % 3).collect();
        let params = ForestParams {
            n_estimators: 5,
            ..ForestParams::classifier()
        };
        let forest = RandomForest::fit_classifier(x.view(), &y, &params).expect("fits");
        let got = forest.predict_scores(x.view()).expect("scores");
        let mut row = Vec::new();
        for r in 0..n {
            row_f32(&x.view(), r, &mut row).expect("finite");
            let mut want = [0.0f32; 3];
            for t in &forest.trees {
                for (s, v) in want.iter_mut().zip(t.leaf(&row)) {
                    *s += v;
                }
            }
            want.iter_mut().for_each(|s| *s /= 5.0);
            assert_eq!(&got[r * 3..r * 3 + 3], &want[..], "row {r}");
        }
        x[[n - 5, 1]] = f64::NAN;
        x[[100, 2]] = f64::INFINITY;
        assert!(matches!(
            forest.predict_scores(x.view()),
            Err(TreeError::NonFinite {
                row: 100,
                column: 2,
                ..
            })
        ));
    }
}
