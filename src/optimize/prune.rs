//! Pruning: magnitude pruning zeroes the smallest weights of dense and conv2d layers (across
//! the model or layer by layer) and stores a dense layer's weight as CSR when that makes
//! the artifact smaller; structured pruning removes whole neurons of hidden dense layers,
//! which shrinks the dense shapes instead.

use crate::graph::{Graph, GraphError, Layer, Model, Tensor};

/// Which weights compete for pruning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PruneScope {
    /// One threshold across every prunable layer: layers with small weights lose more.
    #[default]
    Global,
    /// Each layer loses the same fraction.
    PerLayer,
}

/// What to prune and how much.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneOptions {
    /// Fraction to remove, in `0..1`: of the weights (magnitude) or of the hidden neurons
    /// (structured).
    pub sparsity: f32,
    /// Global or per-layer ranking.
    pub scope: PruneScope,
    /// Remove whole neurons of hidden dense layers (ranked by the L2 norm of their incoming
    /// weights) instead of single weights.
    pub structured: bool,
}

/// What pruning did to one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPruning {
    /// Node name.
    pub node: String,
    /// Layer kind (`dense`, `conv2d`).
    pub kind: &'static str,
    /// Weight shape before.
    pub shape_before: Vec<u32>,
    /// Weight shape after (smaller only under structured pruning).
    pub shape_after: Vec<u32>,
    /// Nonzero weights before.
    pub nonzeros_before: usize,
    /// Nonzero weights after.
    pub nonzeros_after: usize,
    /// Whether the weight is now stored sparsely (CSR).
    pub sparse: bool,
}

/// What pruning did to the model.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PruneReport {
    /// One entry per dense or conv2d layer.
    pub layers: Vec<LayerPruning>,
    /// Fraction of the original weight elements that are now zero or removed.
    pub sparsity: f32,
}

/// Why a model cannot be pruned (or fine-tuned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// The requested sparsity is not in `0..1`.
    #[error("sparsity {0} is outside 0..1 (0.8 removes 80% of the weights)")]
    Sparsity(f32),
    /// Nothing in the model can be pruned this way.
    #[error("nothing to prune: {0}")]
    NothingToPrune(String),
    /// A node the operation cannot handle.
    #[error("{node}: {reason}")]
    Unsupported {
        /// Node name.
        node: String,
        /// What is not supported, and what to do instead.
        reason: String,
    },
    /// The model (before or after) fails validation.
    #[error("pruned graph is invalid: {0}")]
    Graph(GraphError),
    /// Training data that does not fit the model (fine-tuning).
    #[error("training data: {0}")]
    Data(String),
}

// Not `#[from]`: that would also make the inner error the `source()`, and `{:#}` would print
// it twice (the message already holds it).
impl From<GraphError> for PruneError {
    fn from(e: GraphError) -> Self {
        PruneError::Graph(e)
    }
}

/// Prunes `model` as `options` say and returns the pruned model with a report.
///
/// # Errors
/// A sparsity outside `0..1`, a model without dense or conv2d weights, a model that fails
/// validation; for structured pruning also a graph without hidden dense layers or with
/// conv2d layers (structured pruning is dense-only).
pub fn prune(model: &Model, options: &PruneOptions) -> Result<(Model, PruneReport), PruneError> {
    check_sparsity(options.sparsity)?;
    model.graph.infer_shapes()?;
    let mut out = model.clone();
    let report = if options.structured {
        prune_structured(&mut out.graph, options)?
    } else {
        let mut weights = dense_weights(&model.graph)?;
        magnitude_masks(&mut weights, options.sparsity, options.scope);
        store_weights(&mut out.graph, &model.graph, weights)?
    };
    out.graph.infer_shapes()?;
    Ok((out, report))
}

pub(crate) fn check_sparsity(s: f32) -> Result<(), PruneError> {
    if (0.0..1.0).contains(&s) {
        Ok(())
    } else {
        Err(PruneError::Sparsity(s))
    }
}

/// The weights of every dense and conv2d node, densified: `(node index, values)`.
pub(crate) fn dense_weights(graph: &Graph) -> Result<Vec<(usize, Vec<f32>)>, PruneError> {
    let mut v = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Layer::Dense { weight, .. } | Layer::Conv2d { weight, .. } = &node.layer {
            let w = weight.to_f32_vec().ok_or_else(|| PruneError::Unsupported {
                node: node.name.clone(),
                reason: "weight data disagrees with its shape".into(),
            })?;
            v.push((i, w));
        }
    }
    if v.is_empty() {
        return Err(PruneError::NothingToPrune(
            "the model has no dense or conv2d layer".into(),
        ));
    }
    Ok(v)
}

/// Zeroes the `sparsity` fraction of smallest-magnitude values, over all groups together
/// (`Global`) or within each group. Values already zero count as pruned first; ties go by
/// position, so the result is deterministic.
pub(crate) fn magnitude_masks(groups: &mut [(usize, Vec<f32>)], sparsity: f32, scope: PruneScope) {
    match scope {
        PruneScope::Global => {
            let mut all: Vec<(f32, usize, usize)> = groups
                .iter()
                .enumerate()
                .flat_map(|(g, (_, w))| w.iter().enumerate().map(move |(i, v)| (v.abs(), g, i)))
                .collect();
            let k = count_to_prune(all.len(), sparsity);
            all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            for &(_, g, i) in &all[..k] {
                groups[g].1[i] = 0.0;
            }
        }
        PruneScope::PerLayer => {
            for (_, w) in groups.iter_mut() {
                let mut order: Vec<(f32, usize)> =
                    w.iter().enumerate().map(|(i, v)| (v.abs(), i)).collect();
                let k = count_to_prune(order.len(), sparsity);
                order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for &(_, i) in &order[..k] {
                    w[i] = 0.0;
                }
            }
        }
    }
}

fn count_to_prune(n: usize, sparsity: f32) -> usize {
    ((n as f64 * f64::from(sparsity)).round() as usize).min(n)
}

/// Writes pruned weights back into `graph` (whose weight shapes they have): conv2d weights
/// dense, dense-layer weights as CSR when that encodes smaller. Reports against `before`,
/// the graph before pruning, node for node.
pub(crate) fn store_weights(
    graph: &mut Graph,
    before: &Graph,
    weights: Vec<(usize, Vec<f32>)>,
) -> Result<PruneReport, PruneError> {
    let mut report = PruneReport::default();
    let (mut total, mut nonzero) = (0usize, 0usize);
    for (i, w) in weights {
        let old = match &before.nodes[i].layer {
            Layer::Dense { weight, .. } | Layer::Conv2d { weight, .. } => weight,
            _ => continue,
        };
        let node = &mut graph.nodes[i];
        let kind = node.layer.kind();
        let shape = match &node.layer {
            Layer::Dense { weight, .. } | Layer::Conv2d { weight, .. } => weight.shape.clone(),
            _ => continue,
        };
        let nnz = w.iter().filter(|&&v| v != 0.0).count();
        total += old.numel();
        nonzero += nnz;
        let (new, sparse) = match &node.layer {
            Layer::Dense { .. } => smaller_encoding(&shape, w),
            _ => (Tensor::f32(shape.clone(), w), false),
        };
        if let Layer::Dense { weight, .. } | Layer::Conv2d { weight, .. } = &mut node.layer {
            *weight = new;
        }
        report.layers.push(LayerPruning {
            node: node.name.clone(),
            kind,
            shape_before: old.shape.clone(),
            shape_after: shape,
            nonzeros_before: old.nonzeros(),
            nonzeros_after: nnz,
            sparse,
        });
    }
    report.sparsity = 1.0 - (nonzero as f64 / total.max(1) as f64) as f32;
    Ok(report)
}

/// A `[rows, cols]` weight as CSR if its postcard encoding is smaller than the dense one.
fn smaller_encoding(shape: &[u32], w: Vec<f32>) -> (Tensor, bool) {
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    let csr = Tensor::csr_from_dense(rows, cols, &w);
    let dense = Tensor::f32(shape.to_vec(), w);
    let size = |t: &Tensor| postcard::to_allocvec(t).map_or(usize::MAX, |b| b.len());
    match csr {
        Some(csr) if size(&csr) < size(&dense) => (csr, true),
        _ => (dense, false),
    }
}

/// A hidden dense layer: its node, the activation node after it (if any) and the dense
/// node that reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HiddenDense {
    pub dense: usize,
    pub activation: Option<usize>,
    pub next: usize,
}

/// The dense layers whose outputs feed, through at most one element-wise activation and
/// nothing else, exactly one other dense layer; none of these values is a graph output.
pub(crate) fn hidden_dense_layers(graph: &Graph) -> Vec<HiddenDense> {
    let n_in = graph.inputs.len();
    let readers = |value: usize| -> Vec<usize> {
        graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.iter().any(|&v| v as usize == value))
            .map(|(j, _)| j)
            .collect()
    };
    let is_output = |value: usize| graph.outputs.iter().any(|o| o.value as usize == value);
    let only_reader = |value: usize| match readers(value)[..] {
        [j] if !is_output(value) => Some(j),
        _ => None,
    };
    let mut hidden = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if !matches!(node.layer, Layer::Dense { .. }) {
            continue;
        }
        let Some(j) = only_reader(n_in + i) else {
            continue;
        };
        let (activation, next) = match graph.nodes[j].layer {
            Layer::Dense { .. } => (None, Some(j)),
            Layer::Relu | Layer::LeakyRelu { .. } | Layer::Sigmoid | Layer::Tanh => {
                (Some(j), only_reader(n_in + j))
            }
            _ => (None, None),
        };
        if let Some(k) = next
            && matches!(graph.nodes[k].layer, Layer::Dense { .. })
        {
            hidden.push(HiddenDense {
                dense: i,
                activation,
                next: k,
            });
        }
    }
    hidden
}

fn activation_value(layer: &Layer, v: f32) -> f32 {
    match layer {
        Layer::Relu => v.max(0.0),
        Layer::LeakyRelu { alpha } => {
            if v < 0.0 {
                v * alpha
            } else {
                v
            }
        }
        Layer::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Layer::Tanh => v.tanh(),
        _ => v,
    }
}

/// Dense weight and bias of node `i` (densified; zero bias when absent) and `[out, in]`.
fn dense_parts(graph: &Graph, i: usize) -> Option<(Vec<f32>, Vec<f32>, usize, usize)> {
    let Layer::Dense { weight, bias } = &graph.nodes[i].layer else {
        return None;
    };
    let (o, n) = (weight.shape[0] as usize, weight.shape[1] as usize);
    let w = weight.to_f32_vec()?;
    let b = match bias {
        Some(b) => b.to_f32_vec()?,
        None => vec![0.0; o],
    };
    Some((w, b, o, n))
}

fn prune_structured(graph: &mut Graph, options: &PruneOptions) -> Result<PruneReport, PruneError> {
    if let Some(conv) = graph
        .nodes
        .iter()
        .find(|n| matches!(n.layer, Layer::Conv2d { .. }))
    {
        return Err(PruneError::Unsupported {
            node: conv.name.clone(),
            reason: "structured pruning is dense-only (it removes neurons of hidden dense \
                     layers); prune conv2d layers by magnitude (without --structured)"
                .into(),
        });
    }
    let hidden = hidden_dense_layers(graph);
    if hidden.is_empty() {
        return Err(PruneError::NothingToPrune(
            "no hidden dense layer (structured pruning removes neurons between two dense \
             layers; the output layer keeps its outputs)"
                .into(),
        ));
    }
    let before = graph.clone();
    let bad = |i: usize| PruneError::Unsupported {
        node: before.nodes[i].name.clone(),
        reason: "weight or bias data disagrees with its shape".into(),
    };
    // Rank each hidden layer's neurons by the L2 norm of their incoming weights (divided by
    // √inputs under global scope, so layers of different widths compare).
    let mut scored: Vec<(f32, usize, usize)> = Vec::new();
    let mut widths = Vec::new();
    for (h, hd) in hidden.iter().enumerate() {
        let (w, _, o, n) = dense_parts(&before, hd.dense).ok_or_else(|| bad(hd.dense))?;
        widths.push(o);
        for r in 0..o {
            let norm = w[r * n..(r + 1) * n]
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt();
            let score = match options.scope {
                PruneScope::Global => norm / (n.max(1) as f32).sqrt(),
                PruneScope::PerLayer => norm,
            };
            scored.push((score, h, r));
        }
    }
    let mut removed: Vec<Vec<bool>> = widths.iter().map(|&o| vec![false; o]).collect();
    match options.scope {
        PruneScope::Global => {
            let k = count_to_prune(scored.len(), options.sparsity);
            scored.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            let mut left = widths.clone();
            let mut done = 0;
            for &(_, h, r) in &scored {
                if done == k {
                    break;
                }
                if left[h] > 1 {
                    removed[h][r] = true;
                    left[h] -= 1;
                    done += 1;
                }
            }
        }
        PruneScope::PerLayer => {
            for (h, &o) in widths.iter().enumerate() {
                let mut mine: Vec<(f32, usize)> = scored
                    .iter()
                    .filter(|s| s.1 == h)
                    .map(|s| (s.0, s.2))
                    .collect();
                mine.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let k = count_to_prune(o, options.sparsity).min(o - 1);
                for &(_, r) in &mine[..k] {
                    removed[h][r] = true;
                }
            }
        }
    }
    // Each dense node: rows kept (if hidden) and columns kept (if it reads a hidden layer).
    let mut rows_kept: Vec<Option<Vec<usize>>> = vec![None; before.nodes.len()];
    let mut cols_kept: Vec<Option<Vec<usize>>> = vec![None; before.nodes.len()];
    let mut bias_shift: Vec<Vec<f32>> = vec![Vec::new(); before.nodes.len()];
    for (h, hd) in hidden.iter().enumerate() {
        let keep: Vec<usize> = (0..widths[h]).filter(|&r| !removed[h][r]).collect();
        // A removed neuron's output, taken at its bias alone, moves into the next bias:
        // exact when its incoming weights were all zero, a first-order fix otherwise.
        let (_, b, _, _) = dense_parts(&before, hd.dense).ok_or_else(|| bad(hd.dense))?;
        let (wn, _, on, nn) = dense_parts(&before, hd.next).ok_or_else(|| bad(hd.next))?;
        let mut shift = vec![0.0f32; on];
        for r in (0..widths[h]).filter(|&r| removed[h][r]) {
            let a = match hd.activation {
                Some(j) => activation_value(&before.nodes[j].layer, b[r]),
                None => b[r],
            };
            for (o, s) in shift.iter_mut().enumerate() {
                *s += wn[o * nn + r] * a;
            }
        }
        bias_shift[hd.next] = shift;
        rows_kept[hd.dense] = Some(keep.clone());
        cols_kept[hd.next] = Some(keep);
    }
    let mut report = PruneReport::default();
    let (mut total, mut nonzero) = (0usize, 0usize);
    for i in 0..before.nodes.len() {
        let Some((w, mut b, o, n)) = dense_parts(&before, i) else {
            continue;
        };
        let had_bias = matches!(&before.nodes[i].layer, Layer::Dense { bias: Some(_), .. });
        let nonzeros_before = w.iter().filter(|&&v| v != 0.0).count();
        total += w.len();
        for (bv, s) in b.iter_mut().zip(&bias_shift[i]) {
            *bv += s;
        }
        let rows: Vec<usize> = rows_kept[i].clone().unwrap_or_else(|| (0..o).collect());
        let cols: Vec<usize> = cols_kept[i].clone().unwrap_or_else(|| (0..n).collect());
        let mut nw = Vec::with_capacity(rows.len() * cols.len());
        for &r in &rows {
            nw.extend(cols.iter().map(|&c| w[r * n + c]));
        }
        let nb: Vec<f32> = rows.iter().map(|&r| b[r]).collect();
        let nnz = nw.iter().filter(|&&v| v != 0.0).count();
        nonzero += nnz;
        let shape = vec![rows.len() as u32, cols.len() as u32];
        let node = &mut graph.nodes[i];
        node.layer = Layer::Dense {
            weight: Tensor::f32(shape.clone(), nw),
            bias: (had_bias || !bias_shift[i].is_empty())
                .then(|| Tensor::f32(vec![rows.len() as u32], nb)),
        };
        report.layers.push(LayerPruning {
            node: node.name.clone(),
            kind: "dense",
            shape_before: vec![o as u32, n as u32],
            shape_after: shape,
            nonzeros_before,
            nonzeros_after: nnz,
            sparse: false,
        });
    }
    report.sparsity = 1.0 - (nonzero as f64 / total.max(1) as f64) as f32;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::graph::Node;

    fn values(n: usize, k: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(k * 97)) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    /// input[d] → dense h → relu → dense h → tanh → dense 3 → softmax.
    fn mlp(d: usize, h: usize) -> Model {
        let dense = |o: usize, n: usize, k: u32| Layer::Dense {
            weight: Tensor::f32(vec![o as u32, n as u32], values(o * n, k)),
            bias: Some(Tensor::f32(vec![o as u32], values(o, k + 1))),
        };
        let layers = [
            dense(h, d, 1),
            Layer::Relu,
            dense(h, h, 3),
            Layer::Tanh,
            dense(3, h, 5),
            Layer::Softmax,
        ];
        let n = layers.len() as u32;
        let named = layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| (format!("n{i}"), l));
        crate::test_fixtures::chain(d as u32, named, &[("p", n)])
    }

    fn run(model: &Model, x: &[f32]) -> Vec<f32> {
        let mut e = Engine::new(&model.graph, 1).expect("plans");
        e.run(&[x], 1).expect("runs");
        e.output_f32(0).expect("output").to_vec()
    }

    #[test]
    fn magnitude_pruning_hits_the_target_sparsity() {
        let model = mlp(40, 48);
        for scope in [PruneScope::Global, PruneScope::PerLayer] {
            for s in [0.0f32, 0.5, 0.8, 0.95] {
                let opts = PruneOptions {
                    sparsity: s,
                    scope,
                    structured: false,
                };
                let (pruned, report) = prune(&model, &opts).expect("prunes");
                assert!(
                    (report.sparsity - s).abs() < 1e-3,
                    "{scope:?} {s}: {report:?}"
                );
                if scope == PruneScope::PerLayer {
                    for l in &report.layers {
                        let n: u32 = l.shape_before.iter().product();
                        let got = 1.0 - l.nonzeros_after as f32 / n as f32;
                        assert!((got - s).abs() < 0.02, "{}: {got}", l.node);
                    }
                }
                // Sparse storage kicks in once CSR is smaller; the model still runs.
                assert_eq!(report.layers[0].sparse, s >= 0.5, "{report:?}");
                let p = run(&pruned, &values(40, 9));
                assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                let bytes = crate::artifact::encode(&pruned).expect("encodes");
                let back = crate::artifact::decode(&bytes).expect("decodes").model;
                assert_eq!(back, pruned);
            }
        }
    }

    #[test]
    fn magnitude_pruning_keeps_the_largest_weights() {
        let model = mlp(8, 6);
        let opts = PruneOptions {
            sparsity: 0.5,
            scope: PruneScope::PerLayer,
            structured: false,
        };
        let (pruned, _) = prune(&model, &opts).expect("prunes");
        let before = dense_weights(&model.graph).expect("weights");
        let after = dense_weights(&pruned.graph).expect("weights");
        for ((_, b), (_, a)) in before.iter().zip(&after) {
            let kept_min = a
                .iter()
                .filter(|v| **v != 0.0)
                .fold(f32::INFINITY, |m, v| m.min(v.abs()));
            let dropped_max = b
                .iter()
                .zip(a)
                .filter(|(_, a)| **a == 0.0)
                .fold(0.0f32, |m, (b, _)| m.max(b.abs()));
            assert!(dropped_max <= kept_min, "{dropped_max} > {kept_min}");
        }
    }

    #[test]
    fn structured_pruning_shrinks_hidden_layers_and_still_runs() {
        let model = mlp(10, 20);
        for scope in [PruneScope::Global, PruneScope::PerLayer] {
            let opts = PruneOptions {
                sparsity: 0.5,
                scope,
                structured: true,
            };
            let (pruned, report) = prune(&model, &opts).expect("prunes");
            let shapes: Vec<Vec<u32>> = report
                .layers
                .iter()
                .map(|l| l.shape_after.clone())
                .collect();
            if scope == PruneScope::PerLayer {
                assert_eq!(shapes, vec![vec![10, 10], vec![10, 10], vec![3, 10]]);
            } else {
                assert_eq!(shapes[0][0] + shapes[1][0], 20, "{shapes:?}");
                assert_eq!(shapes[2][0], 3, "the output layer keeps its outputs");
            }
            let p = run(&pruned, &values(10, 4));
            assert_eq!(p.len(), 3);
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn removing_dead_neurons_changes_nothing() {
        // Zero the incoming weights of half the first layer's neurons: structured pruning
        // removes exactly those, and folding their constant output into the next bias
        // keeps every output.
        let mut model = mlp(6, 8);
        if let Layer::Dense { weight, .. } = &mut model.graph.nodes[0].layer {
            let mut w = weight.to_f32_vec().expect("dense");
            for r in [1usize, 2, 5, 6] {
                w[r * 6..(r + 1) * 6].fill(0.0);
            }
            *weight = Tensor::f32(vec![8, 6], w);
        }
        // Leave the second hidden layer whole: only per-layer scope on layer 0 matters, so
        // use a graph with one hidden layer.
        model.graph.nodes.drain(2..4);
        for (i, n) in model.graph.nodes.iter_mut().enumerate() {
            n.inputs = vec![i as u32];
        }
        model.graph.outputs[0].value = model.graph.nodes.len() as u32;
        if let Layer::Dense { weight, bias } = &mut model.graph.nodes[2].layer {
            *weight = Tensor::f32(vec![3, 8], values(24, 7));
            *bias = Some(Tensor::f32(vec![3], values(3, 8)));
        }
        let opts = PruneOptions {
            sparsity: 0.5,
            scope: PruneScope::PerLayer,
            structured: true,
        };
        let (pruned, report) = prune(&model, &opts).expect("prunes");
        assert_eq!(report.layers[0].shape_after, vec![4, 6]);
        let x = values(6, 11);
        for (a, b) in run(&model, &x).iter().zip(run(&pruned, &x)) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn bad_requests_are_named_errors() {
        let model = mlp(4, 4);
        let opts = |sparsity, structured| PruneOptions {
            sparsity,
            scope: PruneScope::Global,
            structured,
        };
        assert!(matches!(
            prune(&model, &opts(1.0, false)),
            Err(PruneError::Sparsity(_))
        ));
        assert!(matches!(
            prune(&model, &opts(-0.1, false)),
            Err(PruneError::Sparsity(_))
        ));
        let mut single = mlp(4, 4);
        single.graph.nodes.truncate(1);
        single.graph.outputs[0].value = 1;
        let err = prune(&single, &opts(0.5, true)).expect_err("no hidden layer");
        assert!(err.to_string().contains("no hidden dense layer"), "{err}");
        let mut conv = mlp(4, 4);
        conv.graph.inputs[0].shape = vec![1, 2, 2];
        conv.graph.nodes.insert(
            0,
            Node {
                name: "conv".into(),
                layer: Layer::Conv2d {
                    weight: Tensor::f32(vec![1, 1, 1, 1], vec![1.0]),
                    bias: None,
                    stride: [1, 1],
                    padding: [0; 4],
                    dilation: [1, 1],
                    groups: 1,
                },
                inputs: vec![0],
            },
        );
        conv.graph.nodes.insert(
            1,
            Node {
                name: "flat".into(),
                layer: Layer::Flatten,
                inputs: vec![1],
            },
        );
        for (i, n) in conv.graph.nodes.iter_mut().enumerate() {
            n.inputs = vec![i as u32];
        }
        conv.graph.outputs[0].value = conv.graph.nodes.len() as u32;
        let err = prune(&conv, &opts(0.5, true)).expect_err("conv");
        assert!(err.to_string().contains("dense-only"), "{err}");
        let (_, report) = prune(&conv, &opts(0.5, false)).expect("magnitude prunes conv");
        assert_eq!(report.layers[0].kind, "conv2d");
    }
}
