//! Gradual magnitude pruning with fine-tuning (Zhu & Gupta 2017, "To prune, or not to
//! prune"): the network is rebuilt from a native dense chain (standardize → dense /
//! activation … → softmax / argmax, or a regression output), trained on the training data
//! while its sparsity is ramped from 0 to the target on a cubic schedule, with the pruned
//! weights' masks re-applied after every optimizer step.

use super::prune::{
    PruneError, PruneOptions, PruneReport, PruneScope, check_sparsity, magnitude_masks, prune,
    store_weights,
};
use crate::graph::{Graph, Layer, Model, Tensor};
use crate::train::data::{Dataset, Target, TargetEncoding};
use crate::train::net::{Activation, Head, Labels, NetObjective, Network};
use crate::train::optim::{Objective, Optimizer, OptimizerKind};
use ndarray::Array2;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// How to prune and fine-tune.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinetuneOptions {
    /// Training epochs. Sparsity ramps up over the first two thirds of them (at least one);
    /// the rest train at the target. 0 prunes once without training.
    pub epochs: usize,
    /// Target fraction of weights (magnitude) or hidden neurons (structured) removed, `0..1`.
    pub sparsity: f32,
    /// Global or per-layer ranking.
    pub scope: PruneScope,
    /// Remove whole hidden neurons once, up front, then fine-tune the smaller network.
    pub structured: bool,
    /// Seed of the mini-batch order.
    pub seed: u64,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Rows per mini-batch.
    pub batch_size: usize,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions {
            epochs: 30,
            sparsity: 0.8,
            scope: PruneScope::Global,
            structured: false,
            seed: 0,
            learning_rate: 1e-3,
            batch_size: 64,
        }
    }
}

/// A native graph read back as a trainable [`Network`].
struct DenseChain {
    /// `(offset, scale)` of a leading standardize layer, widened to the input width.
    scaler: Option<(Vec<f64>, Vec<f64>)>,
    /// Node index of each dense layer, in order.
    dense: Vec<usize>,
    net: Network,
    /// ArgMax labels, when the graph has them.
    labels: Option<Vec<i64>>,
}

fn unsupported(node: &str, reason: impl Into<String>) -> PruneError {
    PruneError::Unsupported {
        node: node.to_string(),
        reason: reason.into(),
    }
}

/// Reads `input → [standardize] → dense → act → … → dense → [softmax → [argmax]]`.
fn dense_chain(graph: &Graph) -> Result<DenseChain, PruneError> {
    const SHAPE: &str = "fine-tuning needs a dense chain: [standardize →] dense → activation → \
                         … → dense [→ softmax [→ argmax]] on one flat input";
    let [input] = &graph.inputs[..] else {
        return Err(unsupported("input", SHAPE));
    };
    let [d] = input.shape[..] else {
        return Err(unsupported(&input.name, SHAPE));
    };
    let d = d as usize;
    let mut scaler = None;
    let mut dense = Vec::new();
    let mut sizes = vec![d];
    let mut params: Vec<f64> = Vec::new();
    let mut activation: Option<(Activation, &'static str)> = None;
    let mut softmax = false;
    let mut labels = None;
    let mut argmax = false;
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.inputs != [i as u32] || argmax {
            return Err(unsupported(&node.name, SHAPE));
        }
        let prev_dense = i > 0 && graph.nodes[i - 1].layer.kind() == "dense";
        match &node.layer {
            Layer::Standardize { offset, scale } if i == 0 => {
                let widen = |v: &[f32]| -> Vec<f64> {
                    (0..d)
                        .map(|j| f64::from(if v.len() == 1 { v[0] } else { v[j] }))
                        .collect()
                };
                scaler = Some((widen(offset), widen(scale)));
            }
            Layer::Dense { weight, bias } if !softmax => {
                if prev_dense {
                    return Err(unsupported(
                        &node.name,
                        "two dense layers without an activation between them",
                    ));
                }
                let w = weight
                    .to_f32_vec()
                    .ok_or_else(|| unsupported(&node.name, "weight disagrees with its shape"))?;
                let out = weight.shape[0] as usize;
                let b = match bias {
                    Some(b) => b
                        .to_f32_vec()
                        .ok_or_else(|| unsupported(&node.name, "bias disagrees with its shape"))?,
                    None => vec![0.0; out],
                };
                params.extend(w.iter().map(|&v| f64::from(v)));
                params.extend(b.iter().map(|&v| f64::from(v)));
                sizes.push(out);
                dense.push(i);
            }
            Layer::Relu | Layer::Tanh | Layer::Sigmoid if prev_dense && !softmax => {
                let a = match node.layer {
                    Layer::Relu => Activation::Relu,
                    Layer::Tanh => Activation::Tanh,
                    _ => Activation::Sigmoid,
                };
                let kind = node.layer.kind();
                if activation.is_some_and(|(prev, _)| prev != a) {
                    return Err(unsupported(
                        &node.name,
                        format!("hidden layers mix activations ({kind} after another kind)"),
                    ));
                }
                activation = Some((a, kind));
            }
            Layer::Softmax if prev_dense => softmax = true,
            Layer::ArgMax { labels: l } if softmax => {
                labels = l.clone();
                argmax = true;
            }
            other => {
                return Err(unsupported(
                    &node.name,
                    format!("{SHAPE}; found {}", other.kind()),
                ));
            }
        }
    }
    // The last dense layer must end the chain or feed the softmax.
    let last_kind = |i: usize| graph.nodes[i].layer.kind();
    let n = graph.nodes.len();
    let ends_well = match dense.last() {
        Some(&l) => l + 1 == n || last_kind(l + 1) == "softmax",
        None => false,
    };
    if !ends_well || dense.len() != sizes.len() - 1 {
        return Err(unsupported(
            graph.nodes.last().map_or("graph", |n| n.name.as_str()),
            SHAPE,
        ));
    }
    let head = if softmax {
        Head::Softmax
    } else {
        if sizes.last() != Some(&1) {
            return Err(unsupported(
                &graph.nodes[n - 1].name,
                "a regression chain must end in one output",
            ));
        }
        Head::Regression
    };
    let mut net = Network::new(sizes, activation.map_or(Activation::Relu, |(a, _)| a), head);
    net.params = params;
    Ok(DenseChain {
        scaler,
        dense,
        net,
        labels,
    })
}

/// Ranges of the weight (not bias) parameters of each layer in the packed vector.
fn weight_ranges(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut off = 0;
    sizes
        .windows(2)
        .map(|w| {
            let r = off..off + w[0] * w[1];
            off += w[1] * (w[0] + 1);
            r
        })
        .collect()
}

/// Prunes `model` gradually while training it on `train` (see the module docs), or, when
/// `options.structured`, removes hidden neurons once and then fine-tunes. Returns the
/// pruned model, dense weights stored as CSR where that is smaller, and a report against
/// the original.
///
/// # Errors
/// A sparsity outside `0..1`; a graph that is not a dense chain (named node); training
/// data whose width, task or classes do not fit the model.
pub fn finetune(
    model: &Model,
    train: &Dataset,
    options: &FinetuneOptions,
) -> Result<(Model, PruneReport), PruneError> {
    check_sparsity(options.sparsity)?;
    model.graph.infer_shapes()?;
    let base = if options.structured {
        prune(
            model,
            &PruneOptions {
                sparsity: options.sparsity,
                scope: options.scope,
                structured: true,
            },
        )?
        .0
    } else {
        model.clone()
    };
    let DenseChain {
        scaler,
        dense,
        mut net,
        labels,
    } = dense_chain(&base.graph)?;
    let d = net.sizes[0];
    if train.n_features() != d {
        return Err(PruneError::Data(format!(
            "{} feature columns, the model takes {d}",
            train.n_features()
        )));
    }
    let mut x: Array2<f64> = train.features.clone();
    if let Some((offset, scale)) = &scaler {
        for mut row in x.rows_mut() {
            for ((v, o), s) in row.iter_mut().zip(offset).zip(scale) {
                *v = (*v - o) * s;
            }
        }
    }
    let outputs = net.sizes.last().copied().unwrap_or(0);
    let y = match (&train.target, net.head) {
        (Target::Classes(c), Head::Softmax) => {
            if let Some(k) = train.schema.n_classes()
                && k != outputs
            {
                return Err(PruneError::Data(format!(
                    "{k} classes, the model has {outputs} outputs"
                )));
            }
            if let (
                Some(l),
                TargetEncoding::Classes {
                    numeric: Some(n), ..
                },
            ) = (&labels, &train.schema.target_encoding)
                && l != n
            {
                return Err(PruneError::Data(format!(
                    "class labels {n:?} differ from the model's {l:?}"
                )));
            }
            Labels::Classes(c)
        }
        (Target::Values(v), Head::Regression) => Labels::Values(v),
        _ => {
            return Err(PruneError::Data(
                "the target's task (classification or regression) differs from the model's".into(),
            ));
        }
    };
    let ranges = weight_ranges(&net.sizes);
    let mut mask = vec![true; net.params.len()];
    let apply_mask = |params: &mut [f64], mask: &[bool]| {
        for (p, &keep) in params.iter_mut().zip(mask) {
            if !keep {
                *p = 0.0;
            }
        }
    };
    let prune_to = |params: &mut [f64], mask: &mut [bool], sparsity: f32| {
        let mut groups: Vec<(usize, Vec<f32>)> = ranges
            .iter()
            .enumerate()
            .map(|(l, r)| (l, params[r.clone()].iter().map(|&v| v as f32).collect()))
            .collect();
        magnitude_masks(&mut groups, sparsity, options.scope);
        for ((_, g), r) in groups.iter().zip(&ranges) {
            for (k, &v) in r.clone().zip(g) {
                mask[k] = v != 0.0;
            }
        }
        apply_mask(params, mask);
    };
    let gradual = !options.structured;
    let ramp = (options.epochs * 2).div_ceil(3).max(1);
    if gradual && options.epochs == 0 {
        prune_to(&mut net.params, &mut mask, options.sparsity);
    }
    let n_rows = x.nrows();
    let mut rows: Vec<usize> = (0..n_rows).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x9E37_79B9);
    let mut optimizer = Optimizer::new(OptimizerKind::ADAM, net.params.len());
    let mut grad = vec![0.0; net.params.len()];
    let batch = options.batch_size.clamp(1, n_rows.max(1));
    for epoch in 0..options.epochs {
        if gradual && epoch < ramp {
            // Zhu & Gupta's cubic ramp: s_t = s_f · (1 - (1 - t/T)³).
            let t = (epoch + 1) as f64 / ramp as f64;
            let s = f64::from(options.sparsity) * (1.0 - (1.0 - t).powi(3));
            prune_to(&mut net.params, &mut mask, s as f32);
        }
        rows.shuffle(&mut rng);
        let mut params = std::mem::take(&mut net.params);
        for chunk in rows.chunks(batch) {
            let objective = NetObjective {
                net: &net,
                x: x.view(),
                y: match &y {
                    Labels::Classes(c) => Labels::Classes(c),
                    Labels::Values(v) => Labels::Values(v),
                },
                l2: 0.0,
            };
            objective.loss_grad(&params, chunk, &mut grad);
            for (g, &keep) in grad.iter_mut().zip(&mask) {
                if !keep {
                    *g = 0.0;
                }
            }
            optimizer.step(&mut params, &grad, options.learning_rate);
            apply_mask(&mut params, &mask);
        }
        net.params = params;
    }
    // Write the trained parameters back into the graph.
    let mut out = base.clone();
    let mut weights = Vec::with_capacity(dense.len());
    let mut off = 0;
    for (l, &node) in dense.iter().enumerate() {
        let (din, dout) = (net.sizes[l], net.sizes[l + 1]);
        let w: Vec<f32> = net.params[off..off + din * dout]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let b: Vec<f32> = net.params[off + din * dout..off + dout * (din + 1)]
            .iter()
            .map(|&v| v as f32)
            .collect();
        off += dout * (din + 1);
        if let Layer::Dense { bias, .. } = &mut out.graph.nodes[node].layer {
            *bias = Some(Tensor::f32(vec![dout as u32], b));
        }
        weights.push((node, w));
    }
    let report = store_weights(&mut out.graph, &model.graph, weights)?;
    out.graph.infer_shapes()?;
    Ok((out, report))
}
