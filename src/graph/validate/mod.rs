//! Shape inference and validation: every check that makes executing a graph safe happens
//! here, once, when a model is loaded.
//!
//! This file infers each layer's output shape from its inputs and attributes, bounding
//! every size; `data.rs` checks the data layers carry (dense, sparse and int8 tensors,
//! quantization parameters, trees) against the shapes they claim.

use super::{
    DType, Graph, Layer, Node, QuantInput, QuantOutput, QuantParams, Tensor, TensorData, Tree,
};

mod data;

pub use data::MAX_QUANT_DEPTH;
use data::{check_params, check_quant, check_tensor, check_tree, tensor_i8};

/// Why a graph cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum GraphError {
    /// The graph declares no input or no output.
    #[error("graph has no {0}")]
    Empty(&'static str),
    /// A node or output reads a value that does not exist yet.
    #[error("{node}: reads value {value}, but only values 0..{available} exist before it")]
    UnknownValue {
        /// Node (or output) name.
        node: String,
        /// The id it reads.
        value: u32,
        /// How many values exist at that point.
        available: usize,
    },
    /// A node has the wrong number of inputs.
    #[error("{node}: {layer} takes {expected} input(s), got {got}")]
    Arity {
        /// The node's name in the graph.
        node: String,
        /// The layer's short name ([`Layer::kind`](crate::graph::Layer::kind)).
        layer: &'static str,
        /// Inputs the layer takes: 2 for `Add` and `QAdd`, 1 for the others.
        expected: usize,
        /// Inputs the node lists.
        got: usize,
    },
    /// Input shape or dtype does not fit the layer, or parameters disagree with each other.
    #[error("{node}: {layer}: {reason}")]
    Shape {
        /// The node's name, or the graph input's name.
        node: String,
        /// The layer's short name ([`Layer::kind`](crate::graph::Layer::kind)), or `input`.
        layer: &'static str,
        /// What is wrong, with the values.
        reason: String,
    },
    /// A value is larger than this build is willing to plan.
    #[error("{node}: a sample of this value would hold {elements} elements (limit {limit})")]
    TooLarge {
        /// The node (or graph input) whose value is too large.
        node: String,
        /// Elements one sample of the value would hold.
        elements: u128,
        /// The per-value limit, 2^28 elements.
        limit: usize,
    },
    /// All the values of a graph together are larger than this build plans.
    #[error(
        "{node}: the graph's values up to this node hold {elements} elements per sample (limit {limit})"
    )]
    GraphTooLarge {
        /// Node where the total passed the limit.
        node: String,
        /// Total elements per sample so far.
        elements: u128,
        /// The per-graph limit, 2^28 elements.
        limit: usize,
    },
}

/// Largest per-sample value the engine plans (elements).
pub const MAX_VALUE_ELEMENTS: usize = 1 << 28;

/// Inferred dtype and per-sample shape of every value of a graph, indexed by value id.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueShapes {
    /// Per value: element type and per-sample shape.
    pub values: Vec<(DType, Vec<usize>)>,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    pad_lo: usize,
    pad_hi: usize,
    dilation: usize,
) -> Option<usize> {
    let eff = dilation
        .checked_mul(kernel.checked_sub(1)?)?
        .checked_add(1)?;
    let padded = input.checked_add(pad_lo)?.checked_add(pad_hi)?;
    if stride == 0 || padded < eff {
        return None;
    }
    Some((padded - eff) / stride + 1)
}

impl Graph {
    /// Checks the graph and infers every value's dtype and per-sample shape.
    ///
    /// # Errors
    /// Any inconsistency: dangling value ids, wrong arity, shapes that do not fit, tensors
    /// whose data length disagrees with their shape, oversized values.
    pub fn infer_shapes(&self) -> Result<ValueShapes, GraphError> {
        if self.inputs.is_empty() {
            return Err(GraphError::Empty("inputs"));
        }
        if self.outputs.is_empty() {
            return Err(GraphError::Empty("outputs"));
        }
        let mut values: Vec<(DType, Vec<usize>)> =
            Vec::with_capacity(self.inputs.len() + self.nodes.len());
        for spec in &self.inputs {
            if !matches!(spec.dtype, DType::F32 | DType::I8 | DType::U8) {
                return Err(GraphError::Shape {
                    node: spec.name.clone(),
                    layer: "input",
                    reason: format!(
                        "inputs must be float32, int8 or uint8, found {}",
                        spec.dtype.name()
                    ),
                });
            }
            let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
            check_size(&spec.name, &shape)?;
            values.push((spec.dtype, shape));
        }
        let mut budget = GraphBudget::default();
        for (spec, (_, shape)) in self.inputs.iter().zip(&values) {
            budget.add(&spec.name, shape)?;
        }
        for node in &self.nodes {
            let out = infer_node(node, &values)?;
            budget.add(&node.name, &out.1)?;
            values.push(out);
        }
        for out in &self.outputs {
            if values.get(out.value as usize).is_none() {
                return Err(GraphError::UnknownValue {
                    node: format!("output {:?}", out.name),
                    value: out.value,
                    available: values.len(),
                });
            }
        }
        Ok(ValueShapes { values })
    }
}

/// Checks one node against the values before it (graph inputs first, then earlier nodes)
/// and infers its output's dtype and per-sample shape.
///
/// # Errors
/// As [`Graph::infer_shapes`], for this node.
pub(crate) fn infer_node(
    node: &Node,
    values: &[(DType, Vec<usize>)],
) -> Result<(DType, Vec<usize>), GraphError> {
    let kind = node.layer.kind();
    let arity_err = |expected: usize| GraphError::Arity {
        node: node.name.clone(),
        layer: kind,
        expected,
        got: node.inputs.len(),
    };
    match &node.layer {
        Layer::Add | Layer::QAdd { .. } => {
            if node.inputs.len() != 2 {
                return Err(arity_err(2));
            }
        }
        Layer::Concat { .. } => {
            if node.inputs.is_empty() || node.inputs.len() > MAX_CONCAT_INPUTS {
                return Err(GraphError::Shape {
                    node: node.name.clone(),
                    layer: kind,
                    reason: format!(
                        "takes 1 to {MAX_CONCAT_INPUTS} inputs, got {}",
                        node.inputs.len()
                    ),
                });
            }
        }
        _ => {
            if node.inputs.len() != 1 {
                return Err(arity_err(1));
            }
        }
    }
    let mut ins: Vec<&(DType, Vec<usize>)> = Vec::with_capacity(node.inputs.len());
    for &id in &node.inputs {
        ins.push(
            values
                .get(id as usize)
                .ok_or_else(|| GraphError::UnknownValue {
                    node: node.name.clone(),
                    value: id,
                    available: values.len(),
                })?,
        );
    }
    let (dtype, x) = (&ins[0].0, &ins[0].1);
    let err = |reason: String| GraphError::Shape {
        node: node.name.clone(),
        layer: kind,
        reason,
    };
    let accepts: &[DType] = match &node.layer {
        Layer::Dequantize(_)
        | Layer::QDense {
            input: QuantInput::Static(_),
            ..
        }
        | Layer::QConv2d {
            input: QuantInput::Static(_),
            ..
        }
        | Layer::QAdd { .. }
        | Layer::QClamp { .. }
        | Layer::QLookup { .. }
        | Layer::QAvgPool2d { .. }
        | Layer::QGlobalAvgPool { .. }
        | Layer::ToI8 => &[DType::U8],
        Layer::ToU8 => &[DType::I8],
        Layer::Flatten
        | Layer::Reshape { .. }
        | Layer::Transpose { .. }
        | Layer::Concat { .. }
        | Layer::Pad { .. }
        | Layer::MaxPool2d { .. } => &[DType::F32, DType::U8],
        _ => &[DType::F32],
    };
    for (d, _) in &ins {
        if !accepts.contains(d) || d != dtype {
            return Err(err(format!(
                "input must be {}, found {}",
                if accepts.contains(dtype) {
                    dtype.name()
                } else {
                    accepts[0].name()
                },
                d.name()
            )));
        }
    }
    let mut out = match &node.layer {
        Layer::Add | Layer::QAdd { .. } | Layer::Concat { .. } => {
            infer_multi(&node.layer, &ins, &err)?
        }
        _ => infer_layer(&node.layer, &node.name, x, &err)?,
    };
    if matches!(
        node.layer,
        Layer::Flatten
            | Layer::Reshape { .. }
            | Layer::Transpose { .. }
            | Layer::Concat { .. }
            | Layer::Pad { .. }
            | Layer::MaxPool2d { .. }
    ) {
        out.0 = *dtype;
    }
    check_size(&node.name, &out.1)?;
    Ok(out)
}

/// Most inputs a [`Layer::Concat`] may join.
pub const MAX_CONCAT_INPUTS: usize = 1024;

/// Output of the layers that read several values: [`Layer::Add`], [`Layer::QAdd`] (equal
/// shapes) and [`Layer::Concat`] (equal ranks, equal shapes off the axis).
fn infer_multi(
    layer: &Layer,
    ins: &[&(DType, Vec<usize>)],
    err: &dyn Fn(String) -> GraphError,
) -> Result<(DType, Vec<usize>), GraphError> {
    let x = &ins[0].1;
    match layer {
        Layer::Add | Layer::QAdd { .. } => {
            if let Layer::QAdd { a, b, output } = layer {
                check_params(a, "first input").map_err(err)?;
                check_params(b, "second input").map_err(err)?;
                check_params(output, "output").map_err(err)?;
            }
            if ins[1].1 != *x {
                return Err(err(format!(
                    "inputs have shapes {x:?} and {:?}; they must be equal",
                    ins[1].1
                )));
            }
            let dtype = if matches!(layer, Layer::QAdd { .. }) {
                DType::U8
            } else {
                DType::F32
            };
            Ok((dtype, x.clone()))
        }
        Layer::Concat { axis } => {
            let axis = *axis as usize;
            if axis >= x.len() {
                return Err(err(format!(
                    "axis {axis} is out of range for samples of shape {x:?}"
                )));
            }
            let mut total: usize = 0;
            for (i, (_, s)) in ins.iter().enumerate() {
                let same_rank = s.len() == x.len();
                let same_off_axis = same_rank
                    && s.iter()
                        .zip(x)
                        .enumerate()
                        .all(|(k, (a, b))| k == axis || a == b);
                if !same_off_axis {
                    return Err(err(format!(
                        "input {i} has shape {s:?}, which does not join {x:?} along axis {axis}"
                    )));
                }
                total = total
                    .checked_add(s[axis])
                    .ok_or_else(|| err("joined axis overflows".into()))?;
            }
            let mut y = x.clone();
            y[axis] = total;
            Ok((ins[0].0, y))
        }
        _ => Err(err("not a multi-input layer".into())),
    }
}

/// Largest sum of per-sample elements over all of a graph's values: bounds what a model
/// file can make the engine allocate (its arena is at most this many elements per sample,
/// before values that do not live at the same time share memory).
pub const MAX_GRAPH_ELEMENTS: usize = 1 << 28;

/// Running total of the per-sample elements of a graph's values, against
/// [`MAX_GRAPH_ELEMENTS`].
#[derive(Default)]
struct GraphBudget {
    elements: u128,
}

impl GraphBudget {
    fn add(&mut self, node: &str, shape: &[usize]) -> Result<(), GraphError> {
        self.elements = self
            .elements
            .saturating_add(crate::util::element_count(shape.iter().map(|&d| d as u64)));
        if self.elements > MAX_GRAPH_ELEMENTS as u128 {
            return Err(GraphError::GraphTooLarge {
                node: node.to_string(),
                elements: self.elements,
                limit: MAX_GRAPH_ELEMENTS,
            });
        }
        Ok(())
    }
}

fn check_size(node: &str, shape: &[usize]) -> Result<(), GraphError> {
    // Zero dimensions left out: in [2^32, 2^32, 0] the product is 0, but the engine's
    // product from the left overflows before it reaches the 0.
    let n = crate::util::element_count(shape.iter().filter(|&&d| d != 0).map(|&d| d as u64));
    if n > MAX_VALUE_ELEMENTS as u128 {
        return Err(GraphError::TooLarge {
            node: node.to_string(),
            elements: n,
            limit: MAX_VALUE_ELEMENTS,
        });
    }
    Ok(())
}

fn infer_layer(
    layer: &Layer,
    name: &str,
    x: &[usize],
    err: &dyn Fn(String) -> GraphError,
) -> Result<(DType, Vec<usize>), GraphError> {
    let kind = layer.kind();
    let last = || {
        x.last()
            .copied()
            .ok_or_else(|| err("input has no axis".into()))
    };
    let nchw = || -> Result<[usize; 3], GraphError> {
        match *x {
            [c, h, w] => Ok([c, h, w]),
            _ => Err(err(format!("expects a C×H×W sample, got shape {x:?}"))),
        }
    };
    match layer {
        Layer::Standardize { offset, scale } => {
            let n = last()?;
            for (what, v) in [("offset", offset), ("scale", scale)] {
                if v.len() != n && v.len() != 1 {
                    return Err(err(format!(
                        "{what} has {} values for a last axis of {n}",
                        v.len()
                    )));
                }
            }
            Ok((DType::F32, x.to_vec()))
        }
        Layer::Dense { weight, bias } | Layer::QDense { weight, bias, .. } => {
            match layer {
                Layer::QDense { input, output, .. } => {
                    tensor_i8(weight, name, kind)?;
                    let depth = weight.shape.get(1).copied().unwrap_or(0) as usize;
                    check_quant(input, output, depth).map_err(err)?;
                }
                _ => {
                    check_tensor(weight, name, kind, "weight", true)?;
                }
            }
            let [out, inp] = match weight.shape[..] {
                [o, i] => [o as usize, i as usize],
                _ => {
                    return Err(err(format!(
                        "weight must be [out, in], got {:?}",
                        weight.shape
                    )));
                }
            };
            let n = last()?;
            if n != inp {
                return Err(err(format!(
                    "input's last axis is {n}, weight expects {inp}"
                )));
            }
            if let Some(b) = bias {
                let b = check_tensor(b, name, kind, "bias", false)?;
                if b != out {
                    return Err(err(format!("bias has {b} values for {out} outputs")));
                }
            }
            let mut y = x.to_vec();
            if let Some(l) = y.last_mut() {
                *l = out;
            }
            Ok((output_dtype(layer), y))
        }
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
            dilation,
            groups,
        }
        | Layer::QConv2d {
            weight,
            bias,
            stride,
            padding,
            dilation,
            groups,
            ..
        } => {
            match layer {
                Layer::QConv2d { input, output, .. } => {
                    tensor_i8(weight, name, kind)?;
                    let depth =
                        crate::util::element_count(weight.shape.iter().skip(1).map(|&d| d as u64));
                    check_quant(input, output, depth.min(usize::MAX as u128) as usize)
                        .map_err(err)?;
                }
                _ => {
                    check_tensor(weight, name, kind, "weight", false)?;
                }
            }
            let [c, h, w] = nchw()?;
            let [oc, icg, kh, kw] = match weight.shape[..] {
                [a, b, c, d] => [a as usize, b as usize, c as usize, d as usize],
                _ => {
                    return Err(err(format!(
                        "weight must be [out, in/groups, kh, kw], got {:?}",
                        weight.shape
                    )));
                }
            };
            let g = *groups as usize;
            if g == 0 || c % g != 0 || oc % g != 0 || c / g != icg {
                return Err(err(format!(
                    "{c} input channels, {oc} output channels and {g} groups do not fit weight {:?}",
                    weight.shape
                )));
            }
            if let Some(b) = bias {
                let b = check_tensor(b, name, kind, "bias", false)?;
                if b != oc {
                    return Err(err(format!("bias has {b} values for {oc} channels")));
                }
            }
            // Padding beyond the kernel's reach only adds outputs that see nothing but
            // padding; bounding it keeps a few bytes of file from describing a huge output.
            let reach = |k: usize, d: u32| (d as usize).saturating_mul(k.saturating_sub(1)) + 1;
            let (reach_h, reach_w) = (reach(kh, dilation[0]), reach(kw, dilation[1]));
            if padding[0] as usize >= reach_h
                || padding[2] as usize >= reach_h
                || padding[1] as usize >= reach_w
                || padding[3] as usize >= reach_w
            {
                return Err(err(format!(
                    "padding {padding:?} (top, left, bottom, right) reaches beyond the kernel's \
                     extent {reach_h}×{reach_w}: each pad must be smaller than it"
                )));
            }
            let oh = window_out(
                h,
                kh,
                stride[0] as usize,
                padding[0] as usize,
                padding[2] as usize,
                dilation[0] as usize,
            );
            let ow = window_out(
                w,
                kw,
                stride[1] as usize,
                padding[1] as usize,
                padding[3] as usize,
                dilation[1] as usize,
            );
            match (oh, ow) {
                (Some(oh), Some(ow)) if oh > 0 && ow > 0 && dilation.iter().all(|&d| d > 0) => {
                    Ok((output_dtype(layer), vec![oc, oh, ow]))
                }
                _ => Err(err(format!(
                    "kernel {kh}×{kw}, stride {stride:?}, padding {padding:?}, dilation {dilation:?} do not fit a {h}×{w} input"
                ))),
            }
        }
        Layer::MaxPool2d {
            kernel,
            stride,
            padding,
        }
        | Layer::AvgPool2d {
            kernel,
            stride,
            padding,
            ..
        } => {
            let [c, h, w] = nchw()?;
            let oh = window_out(
                h,
                kernel[0] as usize,
                stride[0] as usize,
                padding[0] as usize,
                padding[2] as usize,
                1,
            );
            let ow = window_out(
                w,
                kernel[1] as usize,
                stride[1] as usize,
                padding[1] as usize,
                padding[3] as usize,
                1,
            );
            let pads_ok = padding[0] < kernel[0]
                && padding[2] < kernel[0]
                && padding[1] < kernel[1]
                && padding[3] < kernel[1];
            match (oh, ow) {
                (Some(oh), Some(ow)) if pads_ok && kernel.iter().all(|&k| k > 0) => {
                    Ok((DType::F32, vec![c, oh, ow]))
                }
                _ => Err(err(format!(
                    "kernel {kernel:?}, stride {stride:?}, padding {padding:?} do not fit a {h}×{w} input"
                ))),
            }
        }
        Layer::GlobalAvgPool => {
            let [c, h, w] = nchw()?;
            if h * w == 0 {
                return Err(err("empty spatial extent".into()));
            }
            Ok((DType::F32, vec![c, 1, 1]))
        }
        Layer::Flatten => Ok((DType::F32, vec![numel(x)])),
        Layer::Reshape { shape } => {
            let to: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            let to_n = crate::util::element_count(to.iter().map(|&d| d as u64));
            if to_n != numel(x) as u128 {
                return Err(err(format!("cannot reshape {x:?} into {to:?}")));
            }
            Ok((DType::F32, to))
        }
        Layer::Relu | Layer::Sigmoid | Layer::Tanh => Ok((DType::F32, x.to_vec())),
        Layer::LeakyRelu { alpha } => {
            if !alpha.is_finite() {
                return Err(err(format!("alpha is {alpha}")));
            }
            Ok((DType::F32, x.to_vec()))
        }
        Layer::Softmax => {
            if last()? == 0 {
                return Err(err("softmax over an empty axis".into()));
            }
            Ok((DType::F32, x.to_vec()))
        }
        Layer::ArgMax { labels } => {
            let n = last()?;
            if n == 0 {
                return Err(err("argmax over an empty axis".into()));
            }
            if let Some(l) = labels
                && l.len() != n
            {
                return Err(err(format!("{} labels for {n} classes", l.len())));
            }
            Ok((DType::I64, x[..x.len() - 1].to_vec()))
        }
        Layer::TreeEnsemble {
            trees,
            n_outputs,
            base_values,
            ..
        } => {
            let [width] = *x else {
                return Err(err(format!(
                    "expects a flat [features] sample, got shape {x:?}"
                )));
            };
            let n_outputs = *n_outputs as usize;
            if n_outputs == 0 {
                return Err(err("n_outputs is 0".into()));
            }
            if trees.is_empty() {
                return Err(err("the ensemble has no tree".into()));
            }
            if !(base_values.is_empty() || base_values.len() == n_outputs) {
                return Err(err(format!(
                    "{} base values for {n_outputs} outputs",
                    base_values.len()
                )));
            }
            for (t, tree) in trees.iter().enumerate() {
                check_tree(tree, width, n_outputs)
                    .map_err(|reason| err(format!("tree {t}: {reason}")))?;
            }
            Ok((DType::F32, vec![n_outputs]))
        }
        Layer::Clip { min, max } => {
            if min.is_nan() || max.is_nan() || min > max {
                return Err(err(format!(
                    "bounds [{min}, {max}] are not ordered numbers"
                )));
            }
            Ok((DType::F32, x.to_vec()))
        }
        Layer::HardSigmoid { alpha, beta } => {
            if !(alpha.is_finite() && beta.is_finite()) {
                return Err(err(format!("alpha {alpha} and beta {beta} must be finite")));
            }
            Ok((DType::F32, x.to_vec()))
        }
        Layer::HardSwish => Ok((DType::F32, x.to_vec())),
        Layer::ChannelAffine { scale, offset } => {
            let n = x
                .first()
                .copied()
                .ok_or_else(|| err("input has no axis".into()))?;
            if scale.len() != n || offset.len() != n {
                return Err(err(format!(
                    "{} scales and {} offsets for a first axis of {n}",
                    scale.len(),
                    offset.len()
                )));
            }
            Ok((DType::F32, x.to_vec()))
        }
        Layer::Pad { begin, end, value } => {
            if begin.len() != x.len() || end.len() != x.len() {
                return Err(err(format!(
                    "{} begin and {} end pads for samples of rank {}",
                    begin.len(),
                    end.len(),
                    x.len()
                )));
            }
            if !value.is_finite() {
                return Err(err(format!("pad value {value} is not finite")));
            }
            let mut y = Vec::with_capacity(x.len());
            for ((&d, &b), &e) in x.iter().zip(begin).zip(end) {
                let n = (d as u128) + (b as u128) + (e as u128);
                if n > MAX_VALUE_ELEMENTS as u128 {
                    return Err(err(format!("padded axis of {n} values is too large")));
                }
                y.push(n as usize);
            }
            Ok((DType::F32, y))
        }
        Layer::Transpose { perm } => {
            let mut seen = vec![false; x.len()];
            if perm.len() != x.len()
                || !perm.iter().all(|&p| {
                    let fresh = seen.get(p as usize).is_some_and(|s| !s);
                    if fresh {
                        seen[p as usize] = true;
                    }
                    fresh
                })
            {
                return Err(err(format!(
                    "perm {perm:?} is not a permutation of the {} sample axes",
                    x.len()
                )));
            }
            Ok((DType::F32, perm.iter().map(|&p| x[p as usize]).collect()))
        }
        Layer::QClamp { min, max } => {
            if min > max {
                return Err(err(format!("clamp [{min}, {max}] is empty")));
            }
            Ok((DType::U8, x.to_vec()))
        }
        Layer::QLookup { table } => {
            if table.len() != 256 {
                return Err(err(format!(
                    "lookup table has {} entries, not 256",
                    table.len()
                )));
            }
            Ok((DType::U8, x.to_vec()))
        }
        Layer::QAvgPool2d {
            kernel,
            stride,
            padding,
            count_include_pad,
            input,
            output,
        } => {
            check_params(input, "input").map_err(err)?;
            check_params(output, "output").map_err(err)?;
            let window = kernel[0] as u128 * kernel[1] as u128;
            if window > MAX_QUANT_DEPTH as u128 {
                return Err(err(format!(
                    "a {}×{} window sums more than {MAX_QUANT_DEPTH} codes",
                    kernel[0], kernel[1]
                )));
            }
            let float = Layer::AvgPool2d {
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
                count_include_pad: *count_include_pad,
            };
            let (_, y) = infer_layer(&float, name, x, err)?;
            Ok((DType::U8, y))
        }
        Layer::QGlobalAvgPool { input, output } => {
            check_params(input, "input").map_err(err)?;
            check_params(output, "output").map_err(err)?;
            if x.iter().skip(1).product::<usize>() > MAX_QUANT_DEPTH {
                return Err(err(format!(
                    "a {x:?} map sums more than {MAX_QUANT_DEPTH} codes per channel"
                )));
            }
            let (_, y) = infer_layer(&Layer::GlobalAvgPool, name, x, err)?;
            Ok((DType::U8, y))
        }
        Layer::ToU8 => Ok((DType::U8, x.to_vec())),
        Layer::ToI8 => Ok((DType::I8, x.to_vec())),
        Layer::Add | Layer::QAdd { .. } | Layer::Concat { .. } => {
            Err(err("reads several values".into()))
        }
        Layer::Quantize(p) => {
            check_params(p, "quantize").map_err(err)?;
            Ok((DType::U8, x.to_vec()))
        }
        Layer::Dequantize(p) => {
            check_params(p, "dequantize").map_err(err)?;
            Ok((DType::F32, x.to_vec()))
        }
    }
}

fn output_dtype(layer: &Layer) -> DType {
    match layer {
        Layer::QDense {
            output: QuantOutput::U8(_),
            ..
        }
        | Layer::QConv2d {
            output: QuantOutput::U8(_),
            ..
        } => DType::U8,
        _ => DType::F32,
    }
}

#[cfg(test)]
mod tests;
