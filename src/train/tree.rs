//! CART decision trees (scikit-learn's algorithm): classification with gini or entropy,
//! regression with squared error; `max_depth`, `min_samples_split`, `min_samples_leaf`,
//! `max_features`. A fitted tree exports to the native [`Layer::TreeEnsemble`].
//!
//! Features are cast to f32 before fitting, as scikit-learn does, and thresholds are f32
//! midpoints between neighbouring values, so the exported layer, which compares f32
//! inputs, takes exactly the branches the training code takes.
//!
//! Split search sorts the node's samples along each candidate feature and scans the sorted
//! order once, updating the impurity of both sides in O(1) per sample.

use crate::graph::{
    DType, Graph, Layer, Metadata, Model, Node, Output, SplitMode, Tree, TreeAggregate,
    TreePostTransform,
};
use ndarray::ArrayView2;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Why a tree or forest cannot be fitted.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum TreeError {
    /// Features and targets disagree, or there is nothing to fit.
    #[error("training data: {0}")]
    Data(String),
    /// A feature value is NaN or infinite.
    #[error("training data: feature {column} of row {row} is {value}, not a finite number")]
    NonFinite {
        /// 0-based row of the feature matrix.
        row: usize,
        /// 0-based feature (column) of the row.
        column: usize,
        /// The offending value (NaN or ±infinity).
        value: f64,
    },
    /// A hyper-parameter is out of its range.
    #[error("parameter {name}: {reason}")]
    Param {
        /// The parameter's name as `perch-host train` spells it (`max_features`, …).
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A worker thread failed.
    #[error("training thread failed: {0}")]
    Thread(String),
}

/// Impurity measure a split minimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// Gini impurity (classification).
    Gini,
    /// Shannon entropy (classification).
    Entropy,
    /// Mean squared error (regression).
    SquaredError,
}

/// How many features each split considers (drawn at random per node).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxFeatures {
    /// Every feature, as a single decision tree uses by default.
    All,
    /// `max(1, floor(sqrt(n_features)))`, the usual choice for classification forests.
    Sqrt,
    /// `max(1, floor(log2(n_features)))`: fewer than `Sqrt` once there are more than 16.
    Log2,
    /// A fixed count (at least 1, at most the feature count).
    Count(usize),
    /// A fraction of the features in `(0, 1]`, at least one.
    Fraction(f64),
}

impl MaxFeatures {
    fn resolve(self, n_features: usize) -> Result<usize, TreeError> {
        let bad = |reason: String| TreeError::Param {
            name: "max_features",
            reason,
        };
        let k = match self {
            MaxFeatures::All => n_features,
            MaxFeatures::Sqrt => (n_features as f64).sqrt() as usize,
            MaxFeatures::Log2 => (n_features as f64).log2() as usize,
            MaxFeatures::Count(k) if (1..=n_features).contains(&k) => k,
            MaxFeatures::Count(k) => {
                return Err(bad(format!("{k} is outside 1..={n_features}")));
            }
            MaxFeatures::Fraction(f) if f > 0.0 && f <= 1.0 => (f * n_features as f64) as usize,
            MaxFeatures::Fraction(f) => return Err(bad(format!("fraction {f} is outside (0, 1]"))),
        };
        Ok(k.clamp(1, n_features.max(1)))
    }
}

/// Hyper-parameters of one tree.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeParams {
    /// Impurity measure; it must suit the task (gini/entropy classify, squared error
    /// regresses).
    pub criterion: Criterion,
    /// Deepest level a node may sit at (the root is depth 0); none for no limit.
    pub max_depth: Option<usize>,
    /// A node with fewer samples becomes a leaf (at least 2).
    pub min_samples_split: usize,
    /// Each child of a split keeps at least this many samples (at least 1).
    pub min_samples_leaf: usize,
    /// Features each split considers.
    pub max_features: MaxFeatures,
    /// Seed of the feature draws.
    pub seed: u64,
}

impl Default for TreeParams {
    /// scikit-learn's defaults for a classifier: gini, unlimited depth, 2, 1, all features.
    fn default() -> TreeParams {
        TreeParams {
            criterion: Criterion::Gini,
            max_depth: None,
            min_samples_split: 2,
            min_samples_leaf: 1,
            max_features: MaxFeatures::All,
            seed: 0,
        }
    }
}

/// Training targets: class indices with the class count, or real values.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Classes { y: &'a [usize], n_classes: usize },
    Values(&'a [f64]),
}

impl Target<'_> {
    fn n_outputs(&self) -> usize {
        match self {
            Target::Classes { n_classes, .. } => *n_classes,
            Target::Values(_) => 1,
        }
    }
}

/// Features cast to f32, column-major, with their targets.
pub(crate) struct Dataset<'a> {
    cols: Vec<f32>,
    n_samples: usize,
    n_features: usize,
    target: Target<'a>,
}

impl<'a> Dataset<'a> {
    pub(crate) fn classes(x: ArrayView2<f64>, y: &'a [usize]) -> Result<Dataset<'a>, TreeError> {
        let n_classes = y.iter().max().map_or(0, |&m| m + 1);
        if n_classes > 1 << 16 {
            return Err(TreeError::Data(format!(
                "class id {} is too large (classes are numbered 0..n)",
                n_classes - 1
            )));
        }
        Dataset::new(x, y.len(), Target::Classes { y, n_classes })
    }

    pub(crate) fn values(x: ArrayView2<f64>, y: &'a [f64]) -> Result<Dataset<'a>, TreeError> {
        if let Some(row) = y.iter().position(|v| !v.is_finite()) {
            return Err(TreeError::Data(format!(
                "target of row {row} is {}, not a finite number",
                y[row]
            )));
        }
        Dataset::new(x, y.len(), Target::Values(y))
    }

    fn new(
        x: ArrayView2<f64>,
        n_targets: usize,
        target: Target<'a>,
    ) -> Result<Dataset<'a>, TreeError> {
        let (n_samples, n_features) = x.dim();
        if n_samples != n_targets {
            return Err(TreeError::Data(format!(
                "{n_samples} feature rows but {n_targets} targets"
            )));
        }
        if n_samples == 0 || n_features == 0 {
            return Err(TreeError::Data(format!(
                "nothing to fit: {n_samples} rows × {n_features} features"
            )));
        }
        if n_samples >= u32::MAX as usize || n_features >= u32::MAX as usize {
            return Err(TreeError::Data(format!(
                "{n_samples} rows × {n_features} features is beyond 32-bit indices"
            )));
        }
        let mut cols = vec![0.0f32; n_samples * n_features];
        for ((row, column), &v) in x.indexed_iter() {
            let f = v as f32;
            if !f.is_finite() {
                return Err(TreeError::NonFinite {
                    row,
                    column,
                    value: v,
                });
            }
            cols[column * n_samples + row] = f;
        }
        Ok(Dataset {
            cols,
            n_samples,
            n_features,
            target,
        })
    }

    pub(crate) fn n_samples(&self) -> usize {
        self.n_samples
    }

    pub(crate) fn n_features(&self) -> usize {
        self.n_features
    }

    pub(crate) fn n_outputs(&self) -> usize {
        self.target.n_outputs()
    }

    fn column(&self, f: usize) -> &[f32] {
        &self.cols[f * self.n_samples..(f + 1) * self.n_samples]
    }
}

/// Casts one row for prediction, refusing non-finite values as the engine does.
pub(crate) fn row_f32(
    x: &ArrayView2<f64>,
    row: usize,
    out: &mut Vec<f32>,
) -> Result<(), TreeError> {
    out.clear();
    for (column, &v) in x.row(row).iter().enumerate() {
        let f = v as f32;
        if !f.is_finite() {
            return Err(TreeError::NonFinite {
                row,
                column,
                value: v,
            });
        }
        out.push(f);
    }
    Ok(())
}

/// Running statistics of one side of a split.
#[derive(Clone)]
struct Side {
    weight: f64,
    /// Per class weight (classification) or `[Σ w·y]` (regression).
    sums: Vec<f64>,
    /// Gini: Σ count²; entropy: Σ count·ln(count); regression: Σ w·y².
    acc: f64,
}

impl Side {
    fn new(n: usize) -> Side {
        Side {
            weight: 0.0,
            sums: vec![0.0; n],
            acc: 0.0,
        }
    }

    fn reset(&mut self) {
        self.weight = 0.0;
        self.sums.iter_mut().for_each(|s| *s = 0.0);
        self.acc = 0.0;
    }
}

fn xlnx(v: f64) -> f64 {
    if v > 0.0 { v * v.ln() } else { 0.0 }
}

/// Adds weight `w` of sample `i` to `side` (negative `w` removes it).
#[inline]
fn update(side: &mut Side, criterion: Criterion, target: &Target, i: usize, w: f64) {
    side.weight += w;
    match (target, criterion) {
        (Target::Classes { y, .. }, Criterion::Gini) => {
            let c = &mut side.sums[y[i]];
            side.acc += (*c + w) * (*c + w) - *c * *c;
            *c += w;
        }
        (Target::Classes { y, .. }, _) => {
            let c = &mut side.sums[y[i]];
            side.acc += xlnx(*c + w) - xlnx(*c);
            *c += w;
        }
        (Target::Values(y), _) => {
            side.sums[0] += w * y[i];
            side.acc += w * y[i] * y[i];
        }
    }
}

/// A quantity whose maximum over splits is the minimum of the children's weighted impurity.
fn proxy(side: &Side, criterion: Criterion) -> f64 {
    if side.weight <= 0.0 {
        return 0.0;
    }
    match criterion {
        Criterion::Gini => side.acc / side.weight,
        Criterion::Entropy => side.acc - xlnx(side.weight),
        Criterion::SquaredError => side.sums[0] * side.sums[0] / side.weight,
    }
}

/// Impurity of a node holding `side`.
fn impurity(side: &Side, criterion: Criterion) -> f64 {
    let w = side.weight;
    if w <= 0.0 {
        return 0.0;
    }
    match criterion {
        Criterion::Gini => 1.0 - side.acc / (w * w),
        Criterion::Entropy => (xlnx(w) - side.acc) / w,
        Criterion::SquaredError => (side.acc / w - (side.sums[0] / w).powi(2)).max(0.0),
    }
}

/// `v`'s bits mapped so that unsigned order is [`f32::total_cmp`]'s order: sorting plain
/// integers is faster than sorting pairs through a float comparison.
fn sort_key(v: f32) -> u32 {
    let bits = v.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The value and sample index packed by `best_split`.
fn unpack_key(packed: u64) -> (f32, u32) {
    let key = (packed >> 32) as u32;
    let bits = if key & 0x8000_0000 != 0 {
        key & 0x7FFF_FFFF
    } else {
        !key
    };
    (f32::from_bits(bits), packed as u32)
}

struct Split {
    feature: usize,
    threshold: f32,
    proxy: f64,
}

/// A node waiting to be grown: its samples `start..end`, its depth, and its parent with
/// whether it is the parent's left child.
struct Pending {
    start: usize,
    end: usize,
    depth: usize,
    parent: Option<(usize, bool)>,
}

/// Grows trees; owns the scratch buffers one tree needs.
struct Grower<'d, 'a> {
    data: &'d Dataset<'a>,
    params: &'d TreeParams,
    max_features: usize,
    /// Per sample weight (bootstrap counts; 0 for samples left out).
    weights: Vec<f64>,
    features: Vec<usize>,
    /// The node's samples along one feature: [`sort_key`] of the value, then the index.
    sorted: Vec<u64>,
    left: Side,
    right: Side,
    total: Side,
    rng: ChaCha8Rng,
}

impl Grower<'_, '_> {
    fn best_split(&mut self, samples: &[u32]) -> Option<Split> {
        let criterion = self.params.criterion;
        let target = self.data.target;
        let n = samples.len();
        let min_leaf = self.params.min_samples_leaf;
        let d = self.data.n_features;
        let mut best: Option<Split> = None;
        let mut visited = 0;
        let mut k = 0;
        while k < d && visited < self.max_features {
            let j = self.rng.random_range(k..d);
            self.features.swap(k, j);
            let f = self.features[k];
            k += 1;
            let col = self.data.column(f);
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &i in samples {
                let v = col[i as usize];
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if lo >= hi {
                continue;
            }
            visited += 1;
            self.sorted.clear();
            self.sorted.extend(
                samples
                    .iter()
                    .map(|&i| (u64::from(sort_key(col[i as usize])) << 32) | u64::from(i)),
            );
            self.sorted.sort_unstable();
            self.left.reset();
            self.right.clone_from(&self.total);
            for p in 0..n - 1 {
                let (v, i) = unpack_key(self.sorted[p]);
                let w = self.weights[i as usize];
                update(&mut self.left, criterion, &target, i as usize, w);
                update(&mut self.right, criterion, &target, i as usize, -w);
                let next = unpack_key(self.sorted[p + 1]).0;
                if next <= v || p + 1 < min_leaf || n - p - 1 < min_leaf {
                    continue;
                }
                let score = proxy(&self.left, criterion) + proxy(&self.right, criterion);
                if best.as_ref().is_none_or(|b| score > b.proxy) {
                    let mid = ((v as f64 + next as f64) / 2.0) as f32;
                    let threshold = if mid >= v && mid < next { mid } else { v };
                    best = Some(Split {
                        feature: f,
                        threshold,
                        proxy: score,
                    });
                }
            }
        }
        best
    }

    fn node_stats(&mut self, samples: &[u32]) {
        self.total.reset();
        for &i in samples {
            let w = self.weights[i as usize];
            update(
                &mut self.total,
                self.params.criterion,
                &self.data.target,
                i as usize,
                w,
            );
        }
    }

    fn leaf_values(&self, out: &mut Vec<f32>) {
        let w = self.total.weight.max(f64::MIN_POSITIVE);
        match self.data.target {
            Target::Classes { .. } => out.extend(self.total.sums.iter().map(|&c| (c / w) as f32)),
            Target::Values(_) => out.push((self.total.sums[0] / w) as f32),
        }
    }

    /// Grows a tree over the samples with positive weight.
    fn grow(&mut self) -> Tree {
        let mut samples: Vec<u32> = (0..self.data.n_samples as u32)
            .filter(|&i| self.weights[i as usize] > 0.0)
            .collect();
        let mut tree = Tree {
            mode: SplitMode::Leq,
            ..Tree::default()
        };
        let mut stack = vec![Pending {
            start: 0,
            end: samples.len(),
            depth: 0,
            parent: None,
        }];
        while let Some(Pending {
            start,
            end,
            depth,
            parent,
        }) = stack.pop()
        {
            let id = tree.left.len();
            match parent {
                Some((p, true)) => tree.left[p] = id as u32,
                Some((p, false)) => tree.right[p] = id as u32,
                None => {}
            }
            let node = &mut samples[start..end];
            self.node_stats(node);
            let n = node.len();
            let p = self.params;
            let is_leaf = n < p.min_samples_split
                || n < 2 * p.min_samples_leaf
                || p.max_depth.is_some_and(|m| depth >= m)
                || impurity(&self.total, p.criterion) <= f64::EPSILON;
            let split = if is_leaf { None } else { self.best_split(node) };
            let Some(split) = split else {
                self.leaf_values(&mut tree.leaf_values);
                tree.feature.push(0);
                tree.threshold.push(0.0);
                tree.left.push(0);
                tree.right.push(0);
                continue;
            };
            let col = self.data.column(split.feature);
            let mut mid = 0;
            for k in 0..n {
                if col[node[k] as usize] <= split.threshold {
                    node.swap(k, mid);
                    mid += 1;
                }
            }
            tree.feature.push(split.feature as u32);
            tree.threshold.push(split.threshold);
            // Placeholders until the children get their ids (always larger than `id`).
            tree.left.push(u32::MAX);
            tree.right.push(u32::MAX);
            stack.push(Pending {
                start: start + mid,
                end,
                depth: depth + 1,
                parent: Some((id, false)),
            });
            stack.push(Pending {
                start,
                end: start + mid,
                depth: depth + 1,
                parent: Some((id, true)),
            });
        }
        tree
    }
}

/// Grows one tree on `data` with per-sample `weights`.
pub(crate) fn grow(
    data: &Dataset,
    params: &TreeParams,
    weights: Vec<f64>,
    rng: ChaCha8Rng,
) -> Result<Tree, TreeError> {
    check_params(data, params)?;
    let n_outputs = data.target.n_outputs();
    let mut grower = Grower {
        data,
        params,
        max_features: params.max_features.resolve(data.n_features)?,
        weights,
        features: (0..data.n_features).collect(),
        sorted: Vec::with_capacity(data.n_samples),
        left: Side::new(n_outputs),
        right: Side::new(n_outputs),
        total: Side::new(n_outputs),
        rng,
    };
    Ok(grower.grow())
}

fn check_params(data: &Dataset, params: &TreeParams) -> Result<(), TreeError> {
    let classification = matches!(data.target, Target::Classes { .. });
    if classification == (params.criterion == Criterion::SquaredError) {
        return Err(TreeError::Param {
            name: "criterion",
            reason: format!(
                "{:?} does not suit {}",
                params.criterion,
                if classification {
                    "classification"
                } else {
                    "regression"
                }
            ),
        });
    }
    if params.min_samples_split < 2 {
        return Err(TreeError::Param {
            name: "min_samples_split",
            reason: format!("{} (must be at least 2)", params.min_samples_split),
        });
    }
    if params.min_samples_leaf < 1 {
        return Err(TreeError::Param {
            name: "min_samples_leaf",
            reason: "0 (must be at least 1)".into(),
        });
    }
    Ok(())
}

/// Rows [`FittedTree::leaves`] walks together.
pub(crate) const LANES: usize = 8;

/// One node as [`FittedTree::leaf`] reads it: a branch's test and children, or for a leaf
/// (`left == 0`) the offset of its values in `right`. One load per level instead of four.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PackedNode {
    feature: u32,
    threshold: f32,
    left: u32,
    right: u32,
}

/// The nodes of `tree` packed, leaves pointing at their values.
fn pack(tree: &Tree, n_outputs: usize) -> Vec<PackedNode> {
    let mut next = 0u32;
    (0..tree.len())
        .map(|i| {
            if tree.left[i] == 0 {
                let at = next;
                next += n_outputs as u32;
                PackedNode {
                    feature: 0,
                    threshold: 0.0,
                    left: 0,
                    right: at,
                }
            } else {
                PackedNode {
                    feature: tree.feature[i],
                    threshold: tree.threshold[i],
                    left: tree.left[i],
                    right: tree.right[i],
                }
            }
        })
        .collect()
}

/// A tree with its leaf lookup, as the training code evaluates it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FittedTree {
    pub(crate) tree: Tree,
    nodes: Vec<PackedNode>,
    n_outputs: usize,
}

impl FittedTree {
    pub(crate) fn new(tree: Tree, n_outputs: usize) -> FittedTree {
        FittedTree {
            nodes: pack(&tree, n_outputs),
            tree,
            n_outputs,
        }
    }

    /// The leaf values `row` reaches (`x <= threshold` goes left, as the engine does).
    pub(crate) fn leaf(&self, row: &[f32]) -> &[f32] {
        let mut node = self.nodes[0];
        while node.left != 0 {
            node = self.nodes[if row[node.feature as usize] <= node.threshold {
                node.left
            } else {
                node.right
            } as usize];
        }
        let at = node.right as usize;
        &self.tree.leaf_values[at..at + self.n_outputs]
    }

    /// [`FittedTree::leaf`] for up to [`LANES`] rows of width `d` at once (`rows` holds
    /// them back to back), walked in lockstep so that their node loads overlap instead of
    /// waiting on each other; `visit(r, values)` receives each row's leaf values in order.
    pub(crate) fn leaves(&self, rows: &[f32], d: usize, mut visit: impl FnMut(usize, &[f32])) {
        let m = (rows.len() / d.max(1)).min(LANES);
        let mut nodes = [self.nodes[0]; LANES];
        loop {
            let mut moved = false;
            for (r, node) in nodes.iter_mut().enumerate().take(m) {
                if node.left != 0 {
                    let next = if rows[r * d + node.feature as usize] <= node.threshold {
                        node.left
                    } else {
                        node.right
                    };
                    *node = self.nodes[next as usize];
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        for (r, node) in nodes.iter().enumerate().take(m) {
            let at = node.right as usize;
            visit(r, &self.tree.leaf_values[at..at + self.n_outputs]);
        }
    }

    fn depth(&self) -> usize {
        let t = &self.tree;
        let mut depth = vec![0usize; t.len()];
        for i in 0..t.len() {
            if t.left[i] != 0 {
                depth[t.left[i] as usize] = depth[i] + 1;
                depth[t.right[i] as usize] = depth[i] + 1;
            }
        }
        depth.into_iter().max().unwrap_or(0)
    }
}

/// Index of the first largest value.
pub(crate) fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in v.iter().enumerate() {
        if s > v[best] {
            best = i;
        }
    }
    best
}

/// A native model of one tree ensemble layer on an `X` input of `n_features`: outputs
/// `label` (int64) and `probabilities` for classifiers, `variable` for regressors, as
/// skl2onnx names them.
pub(crate) fn ensemble_model(
    name: &str,
    trees: Vec<Tree>,
    n_features: usize,
    n_outputs: usize,
    classification: bool,
) -> Model {
    let mut nodes = vec![Node {
        name: "tree_ensemble".into(),
        layer: Layer::TreeEnsemble {
            trees,
            n_outputs: n_outputs as u32,
            aggregate: TreeAggregate::Average,
            base_values: Vec::new(),
            post_transform: TreePostTransform::None,
        },
        inputs: vec![0],
    }];
    let mut metadata = Metadata {
        name: name.to_string(),
        producer: format!("perch {} train", env!("CARGO_PKG_VERSION")),
        ..Metadata::default()
    };
    let outputs = if classification {
        let labels: Vec<i64> = (0..n_outputs as i64).collect();
        metadata.class_labels = labels.iter().map(i64::to_string).collect();
        nodes.push(Node {
            name: "label".into(),
            layer: Layer::ArgMax {
                labels: Some(labels),
            },
            inputs: vec![1],
        });
        vec![
            Output {
                name: "label".into(),
                value: 2,
            },
            Output {
                name: "probabilities".into(),
                value: 1,
            },
        ]
    } else {
        vec![Output {
            name: "variable".into(),
            value: 1,
        }]
    };
    Model {
        metadata,
        graph: Graph {
            inputs: vec![crate::graph::TensorSpec {
                name: "X".into(),
                dtype: DType::F32,
                shape: vec![n_features as u32],
            }],
            nodes,
            outputs,
        },
    }
}

/// A fitted CART decision tree.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionTree {
    fitted: FittedTree,
    n_features: usize,
    classification: bool,
}

impl DecisionTree {
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
    /// Mismatched lengths, no data, non-finite features, parameters out of range or a
    /// regression criterion.
    pub fn fit_classifier(
        x: ArrayView2<f64>,
        y: &[usize],
        params: &TreeParams,
    ) -> Result<DecisionTree, TreeError> {
        DecisionTree::fit(Dataset::classes(x, y)?, params)
    }

    /// Fits a regressor on `x` and targets `y` (`params.criterion` must be
    /// [`Criterion::SquaredError`]).
    ///
    /// # Errors
    /// As [`DecisionTree::fit_classifier`], and for non-finite targets.
    pub fn fit_regressor(
        x: ArrayView2<f64>,
        y: &[f64],
        params: &TreeParams,
    ) -> Result<DecisionTree, TreeError> {
        DecisionTree::fit(Dataset::values(x, y)?, params)
    }

    fn fit(data: Dataset, params: &TreeParams) -> Result<DecisionTree, TreeError> {
        let tree = grow(
            &data,
            params,
            vec![1.0; data.n_samples],
            ChaCha8Rng::seed_from_u64(params.seed),
        )?;
        Ok(DecisionTree {
            fitted: FittedTree::new(tree, data.target.n_outputs()),
            n_features: data.n_features,
            classification: matches!(data.target, Target::Classes { .. }),
        })
    }

    /// The tree in the native layer's form (leaf values: class probabilities, or the mean
    /// target).
    pub fn tree(&self) -> &Tree {
        &self.fitted.tree
    }

    /// Number of leaves.
    pub fn n_leaves(&self) -> usize {
        self.fitted.tree.left.iter().filter(|&&l| l == 0).count()
    }

    /// Depth of the deepest leaf (a lone root has depth 0).
    pub fn depth(&self) -> usize {
        self.fitted.depth()
    }

    /// Leaf values for each row of `x`: class probabilities (`n_classes` per row) or the
    /// predicted value (one per row).
    ///
    /// # Errors
    /// A row of the wrong width or with a non-finite value.
    pub fn predict_scores(&self, x: ArrayView2<f64>) -> Result<Vec<f32>, TreeError> {
        check_width(&x, self.n_features)?;
        let mut row = Vec::with_capacity(self.n_features);
        let mut out = Vec::with_capacity(x.nrows() * self.fitted.n_outputs);
        for r in 0..x.nrows() {
            row_f32(&x, r, &mut row)?;
            out.extend_from_slice(self.fitted.leaf(&row));
        }
        Ok(out)
    }

    /// Predicted class ids (classifiers: the first most probable class) or values.
    ///
    /// # Errors
    /// As [`DecisionTree::predict_scores`].
    pub fn predict(&self, x: ArrayView2<f64>) -> Result<Vec<f64>, TreeError> {
        let scores = self.predict_scores(x)?;
        Ok(if self.classification {
            scores
                .chunks_exact(self.fitted.n_outputs)
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
            vec![self.fitted.tree.clone()],
            self.n_features,
            self.fitted.n_outputs,
            self.classification,
        )
    }
}

pub(crate) fn check_width(x: &ArrayView2<f64>, n_features: usize) -> Result<(), TreeError> {
    if x.ncols() != n_features {
        return Err(TreeError::Data(format!(
            "rows have {} features, the model was fitted on {n_features}",
            x.ncols()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn separates_a_threshold_and_exports_a_valid_layer() {
        let x = array![[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]];
        let y = [0, 0, 1, 1];
        let t = DecisionTree::fit_classifier(x.view(), &y, &TreeParams::default()).expect("fits");
        assert_eq!(t.n_leaves(), 2);
        assert_eq!(t.tree().feature[0], 0);
        assert_eq!(t.tree().threshold[0], 1.5);
        assert_eq!(
            t.predict(x.view()).expect("predicts"),
            vec![0.0, 0.0, 1.0, 1.0]
        );
        let model = t.to_model("t");
        model.graph.infer_shapes().expect("valid graph");
    }

    #[test]
    fn regression_leaves_hold_means_and_depth_is_capped() {
        let x = array![[0.0], [1.0], [2.0], [3.0]];
        let y = [1.0, 3.0, 10.0, 12.0];
        let params = TreeParams {
            criterion: Criterion::SquaredError,
            max_depth: Some(1),
            ..TreeParams::default()
        };
        let t = DecisionTree::fit_regressor(x.view(), &y, &params).expect("fits");
        assert_eq!(t.depth(), 1);
        assert_eq!(
            t.predict(x.view()).expect("predicts"),
            vec![2.0, 2.0, 11.0, 11.0]
        );
    }

    #[test]
    fn sort_keys_order_as_total_cmp_and_round_trip() {
        let mut values = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            2.25,
            f32::MAX,
            f32::INFINITY,
        ];
        let keys: Vec<u32> = values.iter().map(|&v| sort_key(v)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:x?}");
        for (i, &v) in values.iter().enumerate() {
            let (back, index) = unpack_key((u64::from(sort_key(v)) << 32) | i as u64);
            assert_eq!((back.to_bits(), index), (v.to_bits(), i as u32));
        }
        values.reverse();
        let mut packed: Vec<u64> = values
            .iter()
            .map(|&v| u64::from(sort_key(v)) << 32)
            .collect();
        packed.sort_unstable();
        values.sort_by(f32::total_cmp);
        let sorted: Vec<u32> = packed.iter().map(|&k| unpack_key(k).0.to_bits()).collect();
        assert_eq!(
            sorted,
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = array![[0.0], [f64::NAN]];
        assert!(matches!(
            DecisionTree::fit_classifier(x.view(), &[0, 1], &TreeParams::default()),
            Err(TreeError::NonFinite { row: 1, .. })
        ));
        let x = array![[0.0], [1.0]];
        assert!(DecisionTree::fit_classifier(x.view(), &[0], &TreeParams::default()).is_err());
        assert!(
            DecisionTree::fit_regressor(x.view(), &[0.0, 1.0], &TreeParams::default()).is_err()
        );
        let params = TreeParams {
            max_features: MaxFeatures::Count(3),
            ..TreeParams::default()
        };
        assert!(DecisionTree::fit_classifier(x.view(), &[0, 1], &params).is_err());
    }
}
