//! Tree ensemble evaluation over a flat node array prepared once at load.

use crate::graph::{SplitMode, Tree, TreeAggregate, TreePostTransform};

/// Marks a leaf in [`TreeNode::feature`].
const LEAF: u32 = u32::MAX;

/// One node of a [`TreeEnsemble`]; children are absolute indices into its node array.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeNode {
    /// Feature tested, or `u32::MAX` for a leaf.
    pub feature: u32,
    /// Go left when `x <= threshold`.
    pub threshold: f32,
    /// Left child; for a leaf, the offset of its values.
    pub left: u32,
    /// Right child.
    pub right: u32,
}

/// A validated tree ensemble laid out for evaluation: every tree's nodes in one array,
/// `x < t` branches rewritten as `x <= next_down(t)` (equal for finite inputs, which the
/// engine guarantees).
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    nodes: Vec<TreeNode>,
    roots: Vec<u32>,
    leaf_values: Vec<f32>,
    base_values: Vec<f32>,
    n_outputs: usize,
    n_features: usize,
    average: bool,
    post_transform: TreePostTransform,
}

impl TreeEnsemble {
    /// Lays out trees that passed graph validation (`Graph::infer_shapes`); `n_features` is
    /// the input width they were validated against. Returns `None` for trees that would not
    /// pass it, or too many nodes for 32-bit indices.
    pub fn new(
        trees: &[Tree],
        n_features: usize,
        n_outputs: usize,
        aggregate: TreeAggregate,
        base_values: &[f32],
        post_transform: TreePostTransform,
    ) -> Option<TreeEnsemble> {
        let total: usize = trees.iter().map(Tree::len).sum();
        let mut nodes = Vec::with_capacity(total);
        let mut roots = Vec::with_capacity(trees.len());
        let mut leaf_values = Vec::new();
        for tree in trees {
            let start = u32::try_from(nodes.len()).ok()?;
            roots.push(start);
            let mut leaf = 0usize;
            for i in 0..tree.len() {
                let left = *tree.left.get(i)?;
                if left == 0 {
                    let values = tree
                        .leaf_values
                        .get(leaf * n_outputs..(leaf + 1) * n_outputs)?;
                    nodes.push(TreeNode {
                        feature: LEAF,
                        threshold: 0.0,
                        left: u32::try_from(leaf_values.len()).ok()?,
                        right: 0,
                    });
                    leaf_values.extend_from_slice(values);
                    leaf += 1;
                    continue;
                }
                let right = *tree.right.get(i)?;
                let feature = *tree.feature.get(i)?;
                let t = *tree.threshold.get(i)?;
                if left as usize <= i || right as usize <= i || feature as usize >= n_features {
                    return None;
                }
                nodes.push(TreeNode {
                    feature,
                    threshold: match tree.mode {
                        SplitMode::Leq => t,
                        SplitMode::Lt => t.next_down(),
                    },
                    left: start.checked_add(left)?,
                    right: start.checked_add(right)?,
                });
            }
        }
        if nodes.len() >= LEAF as usize {
            return None;
        }
        let base_values = if base_values.is_empty() {
            vec![0.0; n_outputs]
        } else {
            base_values.to_vec()
        };
        Some(TreeEnsemble {
            nodes,
            roots,
            leaf_values,
            base_values,
            n_outputs,
            n_features,
            average: aggregate == TreeAggregate::Average,
            post_transform,
        })
    }

    /// Scores per sample.
    pub fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    /// The leaf values `row` reaches in the tree rooted at `root`.
    fn leaf(&self, root: u32, row: &[f32]) -> &[f32] {
        let mut node = self.nodes[root as usize];
        // Children have larger ids than their parent (validated), so this ends.
        while node.feature != LEAF {
            node = self.nodes[if row[node.feature as usize] <= node.threshold {
                node.left
            } else {
                node.right
            } as usize];
        }
        let start = node.left as usize;
        &self.leaf_values[start..start + self.n_outputs]
    }

    /// Scores of every row of `x` (`n_features` wide) into `y` (`n_outputs` wide).
    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        let n_trees = self.roots.len() as f32;
        for (row, out) in x
            .chunks_exact(self.n_features)
            .zip(y.chunks_exact_mut(self.n_outputs))
        {
            out.fill(0.0);
            for &root in &self.roots {
                for (o, v) in out.iter_mut().zip(self.leaf(root, row)) {
                    *o += v;
                }
            }
            for (o, b) in out.iter_mut().zip(&self.base_values) {
                if self.average {
                    *o /= n_trees;
                }
                *o += b;
            }
            match self.post_transform {
                TreePostTransform::None => {}
                TreePostTransform::Logistic => {
                    super::generic::activate(super::Activation::Sigmoid, out)
                }
                TreePostTransform::Softmax => {
                    let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for o in out.iter_mut() {
                        *o = super::generic::exp(*o - max);
                        sum += *o;
                    }
                    out.iter_mut().for_each(|o| *o /= sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x0 <= 0.5 ? [1, 0] : (x1 < 2 ? [0, 1] : [0.5, 0.5])`.
    fn stump() -> Tree {
        Tree {
            feature: vec![0, 0, 1, 0, 0],
            threshold: vec![0.5, 0.0, 2.0, 0.0, 0.0],
            left: vec![1, 0, 3, 0, 0],
            right: vec![2, 0, 4, 0, 0],
            leaf_values: vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5],
            mode: SplitMode::Leq,
        }
    }

    #[test]
    fn walks_sums_and_averages() {
        let mut lt = stump();
        lt.mode = SplitMode::Lt;
        let e = TreeEnsemble::new(
            &[stump(), lt],
            2,
            2,
            TreeAggregate::Average,
            &[],
            TreePostTransform::None,
        )
        .expect("valid");
        let x = [0.5, 0.0, 1.0, 2.0, 1.0, 1.0];
        let mut y = [0.0; 6];
        e.run(&x, &mut y);
        // Row 0: x0 = 0.5 goes left under <=, right (x1 = 0 < 2 → [0, 1]) under <.
        // Row 1: x1 = 2 goes left under <= ([0, 1]), right under < ([0.5, 0.5]).
        assert_eq!(y, [0.5, 0.5, 0.25, 0.75, 0.0, 1.0]);
    }

    #[test]
    fn base_values_and_transforms() {
        let e = TreeEnsemble::new(
            &[stump()],
            2,
            2,
            TreeAggregate::Sum,
            &[0.0, 1.0],
            TreePostTransform::Softmax,
        )
        .expect("valid");
        let mut y = [0.0; 2];
        e.run(&[0.0, 0.0], &mut y);
        assert!(
            (y[0] - 0.5).abs() < 1e-7 && (y[1] - 0.5).abs() < 1e-7,
            "{y:?}"
        );
        let e = TreeEnsemble::new(
            &[stump()],
            2,
            2,
            TreeAggregate::Sum,
            &[],
            TreePostTransform::Logistic,
        )
        .expect("valid");
        e.run(&[0.0, 0.0], &mut y);
        assert!((y[0] - 0.731_058_6).abs() < 1e-6 && y[1] == 0.5, "{y:?}");
    }

    #[test]
    fn refuses_what_validation_refuses() {
        let mut t = stump();
        t.left[2] = 1;
        assert!(
            TreeEnsemble::new(&[t], 2, 2, TreeAggregate::Sum, &[], TreePostTransform::None)
                .is_none()
        );
        assert!(
            TreeEnsemble::new(
                &[stump()],
                1,
                2,
                TreeAggregate::Sum,
                &[],
                TreePostTransform::None
            )
            .is_none()
        );
    }
}
