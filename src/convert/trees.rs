//! ai.onnx.ml TreeEnsembleClassifier and TreeEnsembleRegressor → [`Layer::TreeEnsemble`].
//!
//! Trees are renumbered in preorder from their root, so children get larger ids than their
//! parent as the native layer requires; a node reached twice (a cycle or a shared child) or
//! never reached is an error. `BRANCH_GTE` / `BRANCH_GT` become `<` / `<=` with the children swapped; a tree
//! that mixes `<=` and `<` rewrites the minority as the other with the next float, which
//! is the same test on the finite inputs the engine accepts. Classifier labels come from an
//! argmax over the raw scores, before any post transform, as in onnxruntime.

use super::{ConvertError, Converter, attr, attr_floats, attr_i, attr_ints, attr_s};
use crate::graph::{Layer, SplitMode, Tree, TreeAggregate, TreePostTransform};
use std::collections::{BTreeMap, HashMap};
use tract_onnx::pb::NodeProto;

/// One ONNX branch test, as `(mode, swap children)`.
fn branch_mode(mode: &[u8]) -> Option<(SplitMode, bool)> {
    match mode {
        b"BRANCH_LEQ" => Some((SplitMode::Leq, false)),
        b"BRANCH_LT" => Some((SplitMode::Lt, false)),
        b"BRANCH_GT" => Some((SplitMode::Leq, true)),
        b"BRANCH_GTE" => Some((SplitMode::Lt, true)),
        _ => None,
    }
}

/// The flat attributes of an ONNX tree ensemble node.
struct OnnxForest {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    features: Vec<i64>,
    values: Vec<f32>,
    modes: Vec<Vec<u8>>,
    true_ids: Vec<i64>,
    false_ids: Vec<i64>,
    /// `(tree, node, output, weight)`.
    weights: Vec<(i64, i64, i64, f32)>,
}

impl Converter {
    pub(super) fn tree_ensemble(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let bad = |reason: String| Self::unsupported(node, reason);
        let classifier = node.op_type == "TreeEnsembleClassifier";
        let (x, int) = self.value(node, 0)?;
        let width = match self.shapes[x as usize].1[..] {
            [w] if !int => w,
            ref s => {
                return Err(bad(format!(
                    "input must be float [batch, features], got a sample of shape {s:?}"
                )));
            }
        };
        let labels = if classifier {
            match attr_ints(node, "classlabels_int64s") {
                Some(l) if !l.is_empty() => Some(l),
                _ if attr(node, "classlabels_strings").is_some() => {
                    return Err(bad(
                        "string class labels are not native; export with integer labels".into(),
                    ));
                }
                _ => return Err(bad("classlabels_int64s is missing".into())),
            }
        } else {
            None
        };
        let n_outputs = match &labels {
            Some(l) => l.len(),
            None => usize::try_from(attr_i(node, "n_targets", 1))
                .ok()
                .filter(|&n| (1..=1 << 16).contains(&n))
                .ok_or_else(|| bad(format!("n_targets {}", attr_i(node, "n_targets", 1))))?,
        };
        let forest =
            OnnxForest::read(node, if classifier { "class" } else { "target" }).map_err(&bad)?;
        let mut trees = forest.trees(width, n_outputs).map_err(&bad)?;
        let mut base_values = attr_floats(node, "base_values").unwrap_or_default();
        let post = attr_s(node, "post_transform").unwrap_or_else(|| "NONE".into());
        let mut used: Vec<i64> = forest.weights.iter().map(|w| w.2).collect();
        used.sort_unstable();
        used.dedup();

        let Some(labels) = labels else {
            let aggregate = match attr_s(node, "aggregate_function").as_deref() {
                None | Some("SUM") => TreeAggregate::Sum,
                Some("AVERAGE") => TreeAggregate::Average,
                Some(other) => {
                    return Err(bad(format!(
                        "aggregate_function {other} is not native (SUM and AVERAGE are)"
                    )));
                }
            };
            if post != "NONE" {
                return Err(bad(format!(
                    "post_transform {post} on a regressor is not native"
                )));
            }
            if !(base_values.is_empty() || base_values.len() == n_outputs) {
                return Err(bad(format!(
                    "{} base values for {n_outputs} targets",
                    base_values.len()
                )));
            }
            let layer = Layer::TreeEnsemble {
                trees,
                n_outputs: n_outputs as u32,
                aggregate,
                base_values,
                post_transform: TreePostTransform::None,
            };
            let id = self.push(node, layer, x)?;
            self.bind(node, 0, id, false);
            return Ok(());
        };

        let n = labels.len();
        let transform = if n == 2 && used == [0] {
            // onnxruntime's binary layout (gradient boosting): one score s for class 1,
            // reported as [-s, s] (then LOGISTIC on each), or [1 - s, s] when every weight
            // is positive and there is no transform.
            if base_values.len() > 1 {
                return Err(bad(format!(
                    "{} base values for a one-score binary classifier",
                    base_values.len()
                )));
            }
            let b = base_values.first().copied().unwrap_or(0.0);
            let all_positive = forest.weights.iter().all(|w| w.3 >= 0.0);
            for tree in &mut trees {
                for pair in tree.leaf_values.chunks_exact_mut(2) {
                    pair[1] = pair[0];
                    pair[0] = -pair[0];
                }
            }
            match post.as_str() {
                "NONE" if all_positive => {
                    base_values = vec![1.0 - b, b];
                    None
                }
                "NONE" => {
                    base_values = vec![-b, b];
                    None
                }
                "LOGISTIC" if !all_positive => {
                    base_values = vec![-b, b];
                    Some(Layer::Sigmoid)
                }
                other => {
                    return Err(bad(format!(
                        "post_transform {other} on a one-score binary classifier{} is not native",
                        if all_positive {
                            " with positive weights"
                        } else {
                            ""
                        }
                    )));
                }
            }
        } else if n == 2 {
            return Err(bad(
                "two-class ensembles with scores for both classes are not native yet".into(),
            ));
        } else {
            if !(base_values.is_empty() || base_values.len() == n) {
                return Err(bad(format!(
                    "{} base values for {n} classes",
                    base_values.len()
                )));
            }
            // onnxruntime only lets a class win the argmax if it has a weight or a base value.
            if base_values.is_empty() && used.len() != n {
                return Err(bad(format!(
                    "only {} of the {n} classes have leaf weights and there are no base values",
                    used.len()
                )));
            }
            match post.as_str() {
                "NONE" => None,
                "SOFTMAX" => Some(Layer::Softmax),
                "LOGISTIC" => Some(Layer::Sigmoid),
                other => {
                    return Err(bad(format!(
                        "post_transform {other} is not native (NONE, SOFTMAX, LOGISTIC are)"
                    )));
                }
            }
        };
        let scores = self.push(
            node,
            Layer::TreeEnsemble {
                trees,
                n_outputs: n as u32,
                aggregate: TreeAggregate::Sum,
                base_values,
                post_transform: TreePostTransform::None,
            },
            x,
        )?;
        let label = self.push(
            node,
            Layer::ArgMax {
                labels: Some(labels.clone()),
            },
            scores,
        )?;
        let probabilities = match transform {
            Some(layer) => self.push(node, layer, scores)?,
            None => scores,
        };
        self.labels = Some(labels);
        self.bind(node, 0, label, true);
        self.bind(node, 1, probabilities, false);
        Ok(())
    }
}

impl OnnxForest {
    fn read(node: &NodeProto, leaf: &str) -> Result<OnnxForest, String> {
        let ints = |name: &str| attr_ints(node, name).unwrap_or_default();
        let tree_ids = ints("nodes_treeids");
        let n = tree_ids.len();
        if n == 0 {
            return Err("nodes_treeids is empty".into());
        }
        let values = match attr_floats(node, "nodes_values") {
            Some(v) => v,
            None if attr(node, "nodes_values_as_tensor").is_some() => {
                return Err("nodes_values_as_tensor (double thresholds) is not native".into());
            }
            None => return Err("nodes_values is missing".into()),
        };
        let modes = attr(node, "nodes_modes")
            .map(|a| a.strings.clone())
            .unwrap_or_default();
        let forest = OnnxForest {
            node_ids: ints("nodes_nodeids"),
            features: ints("nodes_featureids"),
            true_ids: ints("nodes_truenodeids"),
            false_ids: ints("nodes_falsenodeids"),
            tree_ids,
            values,
            modes,
            weights: Vec::new(),
        };
        for (what, len) in [
            ("nodes_nodeids", forest.node_ids.len()),
            ("nodes_featureids", forest.features.len()),
            ("nodes_truenodeids", forest.true_ids.len()),
            ("nodes_falsenodeids", forest.false_ids.len()),
            ("nodes_values", forest.values.len()),
            ("nodes_modes", forest.modes.len()),
        ] {
            if len != n {
                return Err(format!("{what} has {len} values, nodes_treeids {n}"));
            }
        }
        let l_tree = ints(&format!("{leaf}_treeids"));
        let l_node = ints(&format!("{leaf}_nodeids"));
        let l_ids = ints(&format!("{leaf}_ids"));
        let l_weights = attr_floats(node, &format!("{leaf}_weights")).unwrap_or_default();
        let m = l_tree.len();
        if l_node.len() != m || l_ids.len() != m || l_weights.len() != m {
            return Err(format!(
                "{leaf}_treeids, _nodeids, _ids and _weights have {m}, {}, {} and {} values",
                l_node.len(),
                l_ids.len(),
                l_weights.len()
            ));
        }
        let weights = (0..m)
            .map(|i| (l_tree[i], l_node[i], l_ids[i], l_weights[i]))
            .collect();
        Ok(OnnxForest { weights, ..forest })
    }

    /// Native trees in ascending tree id order.
    fn trees(&self, width: usize, n_outputs: usize) -> Result<Vec<Tree>, String> {
        let mut by_tree: BTreeMap<i64, HashMap<i64, usize>> = BTreeMap::new();
        for (ix, (&t, &id)) in self.tree_ids.iter().zip(&self.node_ids).enumerate() {
            if by_tree.entry(t).or_default().insert(id, ix).is_some() {
                return Err(format!("tree {t} has node {id} twice"));
            }
        }
        let mut leaf_weights: HashMap<usize, Vec<(usize, f32)>> = HashMap::new();
        for &(t, id, output, w) in &self.weights {
            let ix = by_tree
                .get(&t)
                .and_then(|nodes| nodes.get(&id))
                .ok_or_else(|| {
                    format!("a leaf weight names tree {t} node {id}, which does not exist")
                })?;
            let output = usize::try_from(output)
                .ok()
                .filter(|&o| o < n_outputs)
                .ok_or_else(|| {
                    format!("leaf weight for output {output}, outside 0..{n_outputs}")
                })?;
            leaf_weights.entry(*ix).or_default().push((output, w));
        }
        let mut trees = Vec::with_capacity(by_tree.len());
        for (&t, nodes) in &by_tree {
            trees.push(self.tree(t, nodes, &leaf_weights, width, n_outputs)?);
        }
        Ok(trees)
    }

    /// Children of ONNX node `ix` as ONNX indices, `(true, false)`, or none for a leaf.
    fn children(
        &self,
        t: i64,
        ix: usize,
        nodes: &HashMap<i64, usize>,
    ) -> Result<Option<(usize, usize)>, String> {
        if self.modes[ix] == b"LEAF" {
            return Ok(None);
        }
        let child = |id: i64| {
            nodes.get(&id).copied().ok_or_else(|| {
                format!(
                    "tree {t} node {} points to node {id}, which does not exist",
                    self.node_ids[ix]
                )
            })
        };
        Ok(Some((
            child(self.true_ids[ix])?,
            child(self.false_ids[ix])?,
        )))
    }

    fn tree(
        &self,
        t: i64,
        nodes: &HashMap<i64, usize>,
        leaf_weights: &HashMap<usize, Vec<(usize, f32)>>,
        width: usize,
        n_outputs: usize,
    ) -> Result<Tree, String> {
        let mut is_child: HashMap<usize, bool> = nodes.values().map(|&ix| (ix, false)).collect();
        let mut tree_modes: [usize; 2] = [0, 0];
        for &ix in nodes.values() {
            if let Some((a, b)) = self.children(t, ix, nodes)? {
                is_child.insert(a, true);
                is_child.insert(b, true);
                let (mode, _) = branch_mode(&self.modes[ix]).ok_or_else(|| {
                    format!(
                        "tree {t} node {}: mode {} is not native (BRANCH_LEQ, _LT, _GTE, _GT are)",
                        self.node_ids[ix],
                        String::from_utf8_lossy(&self.modes[ix])
                    )
                })?;
                tree_modes[(mode == SplitMode::Lt) as usize] += 1;
            }
        }
        let roots: Vec<usize> = is_child.iter().filter(|e| !e.1).map(|e| *e.0).collect();
        let [root] = roots[..] else {
            return Err(format!(
                "tree {t} has {} roots (nodes no other node points to); it needs exactly one",
                roots.len()
            ));
        };
        let mode = if tree_modes[1] > tree_modes[0] {
            SplitMode::Lt
        } else {
            SplitMode::Leq
        };
        // Preorder: every node gets its id before its children are reached.
        let mut order: Vec<usize> = Vec::with_capacity(nodes.len());
        let mut new_id: HashMap<usize, u32> = HashMap::with_capacity(nodes.len());
        let mut stack = vec![root];
        while let Some(ix) = stack.pop() {
            if new_id.insert(ix, order.len() as u32).is_some() {
                return Err(format!(
                    "tree {t} reaches node {} twice (a cycle or a shared child)",
                    self.node_ids[ix]
                ));
            }
            order.push(ix);
            if let Some((a, b)) = self.children(t, ix, nodes)? {
                stack.push(b);
                stack.push(a);
            }
        }
        if order.len() != nodes.len() {
            return Err(format!(
                "tree {t}: {} of its {} nodes are not reachable from its root (a cycle?)",
                nodes.len() - order.len(),
                nodes.len()
            ));
        }
        let mut tree = Tree {
            mode,
            ..Tree::default()
        };
        for &ix in &order {
            match self.children(t, ix, nodes)? {
                None => {
                    let start = tree.leaf_values.len();
                    tree.leaf_values.resize(start + n_outputs, 0.0);
                    for &(o, w) in leaf_weights.get(&ix).map_or(&[][..], Vec::as_slice) {
                        tree.leaf_values[start + o] += w;
                    }
                    tree.feature.push(0);
                    tree.threshold.push(0.0);
                    tree.left.push(0);
                    tree.right.push(0);
                }
                Some((a, b)) => {
                    if leaf_weights.contains_key(&ix) {
                        return Err(format!(
                            "tree {t} node {} is a branch but has leaf weights",
                            self.node_ids[ix]
                        ));
                    }
                    let feature = usize::try_from(self.features[ix])
                        .ok()
                        .filter(|&f| f < width)
                        .ok_or_else(|| {
                            format!(
                                "tree {t} node {} tests feature {}, the input has {width}",
                                self.node_ids[ix], self.features[ix]
                            )
                        })?;
                    let (node_mode, swap) = branch_mode(&self.modes[ix]).unwrap_or_default();
                    let v = self.values[ix];
                    let threshold = match (node_mode, mode) {
                        (SplitMode::Lt, SplitMode::Leq) => v.next_down(),
                        (SplitMode::Leq, SplitMode::Lt) => v.next_up(),
                        _ => v,
                    };
                    let (a, b) = if swap { (b, a) } else { (a, b) };
                    tree.feature.push(feature as u32);
                    tree.threshold.push(threshold);
                    tree.left.push(new_id[&a]);
                    tree.right.push(new_id[&b]);
                }
            }
        }
        Ok(tree)
    }
}
