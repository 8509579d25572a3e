//! TreeEnsembleRegressor and TreeEnsembleClassifier (ai.onnx.ml opsets 1 and 3).
//!
//! The trees are flattened into one node array at load time, checked (children in range, one
//! root per tree, leaves' targets in range) so that a malformed model is an error at load,
//! not a panic or an endless walk at run time. Evaluation and the score finalization
//! (base values, binary layouts, post transforms) follow onnxruntime's tree ensemble kernels.

use super::{PostTransform, SecondClass, input_rows, write_scores};
use std::collections::HashMap;
use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir;

/// A branch test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

/// One node of the flattened forest.
#[derive(Debug, Clone, PartialEq)]
enum TreeNode {
    Branch {
        feature: usize,
        threshold: f32,
        cmp: Cmp,
        missing_goes_true: bool,
        if_true: usize,
        if_false: usize,
    },
    /// Its `(target, weight)` pairs are `leaf_weights[start..end]`.
    Leaf { start: usize, end: usize },
}

/// A parsed, validated forest.
#[derive(Debug, Clone, PartialEq)]
struct Forest {
    roots: Vec<usize>,
    nodes: Vec<TreeNode>,
    leaf_weights: Vec<(usize, f32)>,
    /// One more than the largest feature index a branch reads.
    n_features: usize,
}

impl Forest {
    /// Parses the node and leaf attributes; `leaf` is `class` or `target`.
    fn parse(node: &NodeProto, leaf: &str, n_targets: usize) -> TractResult<Forest> {
        let name = &node.name;
        let op = &node.op_type;
        let tree_ids: Vec<i64> = node.get_attr_vec("nodes_treeids")?;
        let n = tree_ids.len();
        ensure!(n > 0, "{op} node {name:?}: nodes_treeids is empty");
        if node.get_attr_opt_vec::<f32>("nodes_values")?.is_none()
            && node
                .attribute
                .iter()
                .any(|a| a.name == "nodes_values_as_tensor")
        {
            bail!(
                "{op} node {name:?}: nodes_values_as_tensor (double thresholds) is not supported"
            );
        }
        let ints = |attr: &str| -> TractResult<Vec<i64>> {
            let v: Vec<i64> = node.get_attr_vec(attr)?;
            ensure!(
                v.len() == n,
                "{op} node {name:?}: {attr} has {} values, nodes_treeids {n}",
                v.len()
            );
            Ok(v)
        };
        let node_ids = ints("nodes_nodeids")?;
        let feature_ids = ints("nodes_featureids")?;
        let true_ids = ints("nodes_truenodeids")?;
        let false_ids = ints("nodes_falsenodeids")?;
        let values: Vec<f32> = node.get_attr_vec("nodes_values")?;
        ensure!(
            values.len() == n,
            "{op} node {name:?}: nodes_values has {} values, nodes_treeids {n}",
            values.len()
        );
        let modes: Vec<&str> = node.get_attr_vec("nodes_modes")?;
        ensure!(
            modes.len() == n,
            "{op} node {name:?}: nodes_modes has {} values, nodes_treeids {n}",
            modes.len()
        );
        let missing: Vec<i64> = node
            .get_attr_opt_vec("nodes_missing_value_tracks_true")?
            .unwrap_or_default();
        ensure!(
            missing.is_empty() || missing.len() == n,
            "{op} node {name:?}: nodes_missing_value_tracks_true has {} values, nodes_treeids {n}",
            missing.len()
        );

        let mut index = HashMap::with_capacity(n);
        for (ix, key) in tree_ids.iter().zip(&node_ids).enumerate() {
            if index.insert((*key.0, *key.1), ix).is_some() {
                bail!(
                    "{op} node {name:?}: tree {} has node {} twice",
                    key.0,
                    key.1
                );
            }
        }

        let l_tree: Vec<i64> = node.get_attr_vec(&format!("{leaf}_treeids"))?;
        let m = l_tree.len();
        let leaf_ints = |attr: String| -> TractResult<Vec<i64>> {
            let v: Vec<i64> = node.get_attr_vec(&attr)?;
            ensure!(
                v.len() == m,
                "{op} node {name:?}: {attr} has {} values, {leaf}_treeids {m}",
                v.len()
            );
            Ok(v)
        };
        let l_node = leaf_ints(format!("{leaf}_nodeids"))?;
        let l_target = leaf_ints(format!("{leaf}_ids"))?;
        let l_weight: Vec<f32> = node.get_attr_vec(&format!("{leaf}_weights"))?;
        ensure!(
            l_weight.len() == m,
            "{op} node {name:?}: {leaf}_weights has {} values, {leaf}_treeids {m}",
            l_weight.len()
        );
        let mut per_leaf: Vec<Vec<(usize, f32)>> = vec![vec![]; n];
        for i in 0..m {
            let Some(&ix) = index.get(&(l_tree[i], l_node[i])) else {
                bail!(
                    "{op} node {name:?}: a {leaf} weight names tree {} node {}, which does not exist",
                    l_tree[i],
                    l_node[i]
                );
            };
            let target = usize::try_from(l_target[i])
                .ok()
                .filter(|&t| t < n_targets)
                .with_context(|| {
                    format!(
                        "{op} node {name:?}: {leaf}_ids value {} out of range 0..{n_targets}",
                        l_target[i]
                    )
                })?;
            per_leaf[ix].push((target, l_weight[i]));
        }

        let mut nodes = Vec::with_capacity(n);
        let mut leaf_weights = Vec::with_capacity(m);
        let mut has_parent = vec![false; n];
        let mut n_features = 0;
        for ix in 0..n {
            let child = |id: i64, which: &str| -> TractResult<usize> {
                index.get(&(tree_ids[ix], id)).copied().with_context(|| {
                    format!(
                        "{op} node {name:?}: tree {} node {} has {which} node {id}, which does not exist",
                        tree_ids[ix], node_ids[ix]
                    )
                })
            };
            let cmp = match modes[ix] {
                "LEAF" => None,
                "BRANCH_LEQ" => Some(Cmp::Leq),
                "BRANCH_LT" => Some(Cmp::Lt),
                "BRANCH_GTE" => Some(Cmp::Gte),
                "BRANCH_GT" => Some(Cmp::Gt),
                "BRANCH_EQ" => Some(Cmp::Eq),
                "BRANCH_NEQ" => Some(Cmp::Neq),
                other => bail!("{op} node {name:?}: unknown node mode {other:?}"),
            };
            match cmp {
                None => {
                    let start = leaf_weights.len();
                    leaf_weights.extend(per_leaf[ix].iter().copied());
                    nodes.push(TreeNode::Leaf {
                        start,
                        end: leaf_weights.len(),
                    });
                }
                Some(cmp) => {
                    ensure!(
                        per_leaf[ix].is_empty(),
                        "{op} node {name:?}: tree {} node {} is a branch but has {leaf} weights",
                        tree_ids[ix],
                        node_ids[ix]
                    );
                    let feature = usize::try_from(feature_ids[ix]).with_context(|| {
                        format!(
                            "{op} node {name:?}: negative feature id {}",
                            feature_ids[ix]
                        )
                    })?;
                    n_features = n_features.max(feature + 1);
                    let if_true = child(true_ids[ix], "true")?;
                    let if_false = child(false_ids[ix], "false")?;
                    has_parent[if_true] = true;
                    has_parent[if_false] = true;
                    nodes.push(TreeNode::Branch {
                        feature,
                        threshold: values[ix],
                        cmp,
                        missing_goes_true: missing.get(ix).is_some_and(|&v| v != 0),
                        if_true,
                        if_false,
                    });
                }
            }
        }
        let mut roots: Vec<(i64, usize)> = (0..n)
            .filter(|&ix| !has_parent[ix])
            .map(|ix| (tree_ids[ix], ix))
            .collect();
        roots.sort();
        let mut trees: Vec<i64> = tree_ids.clone();
        trees.sort();
        trees.dedup();
        ensure!(
            roots.len() == trees.len() && roots.iter().map(|r| r.0).eq(trees.iter().copied()),
            "{op} node {name:?}: each tree needs exactly one root (a node no other node points to); found {} roots for {} trees",
            roots.len(),
            trees.len()
        );
        Ok(Forest {
            roots: roots.into_iter().map(|r| r.1).collect(),
            nodes,
            leaf_weights,
            n_features,
        })
    }

    /// The leaf `row` reaches in the tree rooted at `root`.
    fn leaf(&self, root: usize, row: &[f32]) -> TractResult<(usize, usize)> {
        let mut ix = root;
        // A cycle among the children would otherwise loop for ever.
        for _ in 0..=self.nodes.len() {
            match &self.nodes[ix] {
                TreeNode::Leaf { start, end } => return Ok((*start, *end)),
                TreeNode::Branch {
                    feature,
                    threshold,
                    cmp,
                    missing_goes_true,
                    if_true,
                    if_false,
                } => {
                    let x = row[*feature];
                    let t = *threshold;
                    let go_true = match cmp {
                        Cmp::Leq => x <= t,
                        Cmp::Lt => x < t,
                        Cmp::Gte => x >= t,
                        Cmp::Gt => x > t,
                        Cmp::Eq => x == t,
                        Cmp::Neq => x != t,
                    } || (*missing_goes_true && x.is_nan());
                    ix = if go_true { *if_true } else { *if_false };
                }
            }
        }
        bail!("tree ensemble: the tree rooted at node {root} has a cycle")
    }

    /// Sums (or aggregates) the leaf weights `row` reaches: `(score, has_score)` per target.
    fn scores(&self, row: &[f32], n: usize, agg: Aggregate) -> TractResult<Vec<(f32, bool)>> {
        let mut scores = vec![(0f32, false); n];
        for &root in &self.roots {
            let (start, end) = self.leaf(root, row)?;
            for &(target, w) in &self.leaf_weights[start..end] {
                let s = &mut scores[target];
                s.0 = match agg {
                    Aggregate::Sum | Aggregate::Average => s.0 + w,
                    Aggregate::Min if s.1 => s.0.min(w),
                    Aggregate::Max if s.1 => s.0.max(w),
                    Aggregate::Min | Aggregate::Max => w,
                };
                s.1 = true;
            }
        }
        Ok(scores)
    }
}

/// How a regressor combines its trees' leaf weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// What the ensemble outputs.
#[derive(Debug, Clone, PartialEq)]
enum Head {
    Regressor {
        n_targets: usize,
        aggregate: Aggregate,
    },
    Classifier {
        labels: Vec<i64>,
        /// Only one class has leaf weights in a two-class model (gradient boosting).
        binary_case: bool,
        weights_all_positive: bool,
    },
}

/// A tree ensemble, regressor or classifier, as a typed tract op.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TreeEnsemble {
    forest: Arc<Forest>,
    head: Head,
    base_values: Vec<f32>,
    post_transform: PostTransform,
}

impl Eq for TreeEnsemble {}

/// Builds a TreeEnsembleRegressor.
///
/// # Errors
/// For malformed or inconsistent attributes (named in the message with the node).
pub(crate) fn tree_ensemble_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let name = &node.name;
    let n_targets: i64 = node.get_attr_opt("n_targets")?.unwrap_or(1);
    let n_targets = usize::try_from(n_targets)
        .ok()
        .filter(|&n| (1..=1 << 20).contains(&n))
        .with_context(|| format!("TreeEnsembleRegressor node {name:?}: n_targets {n_targets}"))?;
    let aggregate = match node
        .get_attr_opt::<&str>("aggregate_function")?
        .unwrap_or("SUM")
    {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => bail!("TreeEnsembleRegressor node {name:?}: unknown aggregate_function {other:?}"),
    };
    let base_values: Vec<f32> = node.get_attr_opt_vec("base_values")?.unwrap_or_default();
    ensure!(
        base_values.is_empty() || base_values.len() == n_targets,
        "TreeEnsembleRegressor node {name:?}: base_values has {} values for {n_targets} targets",
        base_values.len()
    );
    let forest = Forest::parse(node, "target", n_targets)?;
    let op = TreeEnsemble {
        forest: Arc::new(forest),
        head: Head::Regressor {
            n_targets,
            aggregate,
        },
        base_values,
        post_transform: PostTransform::from_node(node)?,
    };
    Ok((expand(op), vec![]))
}

/// Builds a TreeEnsembleClassifier (integer class labels).
///
/// # Errors
/// For malformed or inconsistent attributes, and for string class labels.
pub(crate) fn tree_ensemble_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let name = &node.name;
    let labels: Vec<i64> = match node.get_attr_opt_vec("classlabels_int64s")? {
        Some(l) => l,
        None if node
            .get_attr_opt_vec::<&str>("classlabels_strings")?
            .is_some() =>
        {
            bail!(
                "TreeEnsembleClassifier node {name:?}: string class labels are not supported; export with integer labels"
            )
        }
        None => bail!("TreeEnsembleClassifier node {name:?}: classlabels_int64s is missing"),
    };
    let n_classes = labels.len();
    ensure!(
        n_classes >= 1,
        "TreeEnsembleClassifier node {name:?}: no class labels"
    );
    let base_values: Vec<f32> = node.get_attr_opt_vec("base_values")?.unwrap_or_default();
    ensure!(
        base_values.is_empty()
            || base_values.len() == n_classes
            || (n_classes == 2 && base_values.len() == 1),
        "TreeEnsembleClassifier node {name:?}: base_values has {} values for {n_classes} classes",
        base_values.len()
    );
    let forest = Forest::parse(node, "class", n_classes)?;
    let mut classes: Vec<usize> = forest.leaf_weights.iter().map(|w| w.0).collect();
    classes.sort();
    classes.dedup();
    let op = TreeEnsemble {
        head: Head::Classifier {
            labels,
            binary_case: n_classes == 2 && classes.len() == 1,
            weights_all_positive: forest.leaf_weights.iter().all(|w| w.1 >= 0.0),
        },
        forest: Arc::new(forest),
        base_values,
        post_transform: PostTransform::from_node(node)?,
    };
    Ok((expand(op), vec![]))
}

impl TreeEnsemble {
    fn n_scores(&self) -> usize {
        match &self.head {
            Head::Regressor { n_targets, .. } => *n_targets,
            Head::Classifier { labels, .. } => labels.len(),
        }
    }

    /// Finalizes a regressor row: aggregate, base values, post transform.
    fn regress(&self, scores: Vec<(f32, bool)>, aggregate: Aggregate) -> Vec<f32> {
        let n_trees = self.forest.roots.len() as f32;
        let mut out: Vec<f32> = scores
            .iter()
            .enumerate()
            .map(|(j, &(s, _))| {
                let s = if aggregate == Aggregate::Average {
                    s / n_trees
                } else {
                    s
                };
                s + self.base_values.get(j).copied().unwrap_or(0.0)
            })
            .collect();
        write_scores(&mut out, self.post_transform, SecondClass::None);
        out
    }

    /// Finalizes a classifier row: `(label, scores)`, as onnxruntime's classifier aggregator.
    fn classify(
        &self,
        mut scores: Vec<(f32, bool)>,
        labels: &[i64],
        binary_case: bool,
        all_positive: bool,
    ) -> (i64, Vec<f32>) {
        let n = labels.len();
        let bv = &self.base_values;
        let mut second = SecondClass::None;
        let label;
        if n > 2 || n == 1 {
            for (k, &b) in bv.iter().enumerate() {
                let s = &mut scores[k];
                s.0 = if s.1 { s.0 + b } else { b };
                s.1 = true;
            }
            let mut best: Option<(usize, f32)> = None;
            for (k, &(s, has)) in scores.iter().enumerate() {
                if has && best.is_none_or(|b| s > b.1) {
                    best = Some((k, s));
                }
            }
            label = labels[best.map_or(0, |b| b.0)];
        } else {
            if bv.len() == 2 {
                if scores[1].1 {
                    scores[1].0 = bv[1] + scores[0].0;
                    scores[0].0 = -scores[1].0;
                } else {
                    scores[1].0 += bv[1];
                    scores[0].0 += bv[0];
                }
                scores[1].1 = true;
            } else {
                if let Some(&b) = bv.first() {
                    scores[0].0 += b;
                } else {
                    second = SecondClass::Negation;
                }
                if !scores[1].1 {
                    scores.pop();
                }
            }
            let pos = match scores[..] {
                [_, (s1, true)] => s1,
                [(s0, has0), ..] if has0 => s0,
                _ => 0.0,
            };
            label = if binary_case {
                if all_positive {
                    second = SecondClass::Complement;
                    if pos > 0.5 { labels[1] } else { labels[0] }
                } else {
                    second = SecondClass::Negation;
                    if pos > 0.0 { labels[1] } else { labels[0] }
                }
            } else if pos > 0.0 {
                1
            } else {
                0
            };
        }
        let mut out: Vec<f32> = scores.into_iter().map(|s| s.0).collect();
        write_scores(&mut out, self.post_transform, second);
        out.resize(n, 0.0);
        (label, out)
    }
}

impl Expansion for TreeEnsemble {
    fn name(&self) -> StaticName {
        match self.head {
            Head::Regressor { .. } => "TreeEnsembleRegressor".into(),
            Head::Classifier { .. } => "TreeEnsembleClassifier".into(),
        }
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(match self.head {
            Head::Regressor { .. } => 1,
            Head::Classifier { .. } => 2,
        })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        let scores = match self.head {
            Head::Regressor { .. } => {
                check_output_arity(outputs, 1)?;
                &outputs[0]
            }
            Head::Classifier { .. } => {
                check_output_arity(outputs, 2)?;
                s.equals(&outputs[0].datum_type, i64::datum_type())?;
                s.equals(&outputs[0].rank, 1)?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                &outputs[1]
            }
        };
        s.equals(&scores.datum_type, f32::datum_type())?;
        s.equals(&scores.rank, 2)?;
        s.equals(&scores.shape[0], &inputs[0].shape[0])?;
        s.equals(&scores.shape[1], self.n_scores().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), &[inputs[0]])
    }
}

impl Op for TreeEnsemble {
    fn name(&self) -> StaticName {
        Expansion::name(self)
    }

    op_as_typed_op!();
}

impl EvalOp for TreeEnsemble {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let op = Expansion::name(self);
        let (rows, columns, x) = input_rows(&op, &input, self.forest.n_features)?;
        let x = x.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let n = self.n_scores();
        let mut all_scores = Vec::with_capacity(rows * n);
        let mut labels = Vec::with_capacity(rows);
        for r in 0..rows {
            let row = &x[r * columns..(r + 1) * columns];
            match &self.head {
                Head::Regressor { aggregate, .. } => {
                    let s = self.forest.scores(row, n, *aggregate)?;
                    all_scores.extend(self.regress(s, *aggregate));
                }
                Head::Classifier {
                    labels: l,
                    binary_case,
                    weights_all_positive,
                } => {
                    let s = self.forest.scores(row, n, Aggregate::Sum)?;
                    let (label, s) = self.classify(s, l, *binary_case, *weights_all_positive);
                    labels.push(label);
                    all_scores.extend(s);
                }
            }
        }
        let scores = tract_ndarray::Array2::from_shape_vec((rows, n), all_scores)?;
        Ok(match self.head {
            Head::Regressor { .. } => tvec!(scores.into_tvalue()),
            Head::Classifier { .. } => {
                tvec!(
                    tract_ndarray::Array1::from(labels).into_tvalue(),
                    scores.into_tvalue()
                )
            }
        })
    }
}

impl TypedOp for TreeEnsemble {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = inputs[0]
            .shape
            .first()
            .cloned()
            .unwrap_or_else(|| 1.to_dim());
        let scores = f32::fact([rows.clone(), self.n_scores().to_dim()]);
        Ok(match self.head {
            Head::Regressor { .. } => tvec!(scores),
            Head::Classifier { .. } => tvec!(i64::fact([rows]), scores),
        })
    }

    as_op!();
}
