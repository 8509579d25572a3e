//! Translates ONNX graphs into a native [`Model`].
//!
//! One pass over the nodes in their (topological) order, by op family:
//! - `consts.rs`: initializers, `Constant` nodes, and whatever can be evaluated at
//!   conversion time, including the shape subgraphs exporters emit (`Shape → Slice →
//!   Concat → Reshape`), where the batch size stays symbolic;
//! - `cnn.rs`: convolution (BatchNormalization, Pad and per-channel Mul/Add by constants
//!   folded into it), pooling, activations, residual Add, Concat, Transpose, Reshape and its
//!   relatives, Gemm/MatMul, Softmax;
//! - `quant.rs`: QDQ graphs (QuantizeLinear/DequantizeLinear around Conv, MatMul, Add,
//!   pooling…) and QOperator graphs (QLinearConv, QLinearMatMul, QLinearAdd…) folded into
//!   int8 layers with per-channel weight scales; int8 and uint8 graph inputs and outputs;
//! - `classic.rs` and `trees.rs`: the ai.onnx.ml models (Scaler, linear models, tree
//!   ensembles, class-label lookups).
//!
//! Layout is not the converter's business: the IR keeps ONNX's logical axes and tf2onnx's
//! NHWC↔NCHW `Transpose`s stay in it; the engine makes them free when it plans memory.
//! Anything without a native equivalent is an error naming the node.

use crate::graph::{
    DType, Graph, Layer, Metadata, Model, Node, Output, QuantParams, TensorSpec, ValueId,
};
use std::collections::{HashMap, HashSet};
use tract_onnx::pb::{self, NodeProto};

mod classic;
mod cnn;
mod consts;
mod elementwise;
mod qop;
mod quant;
mod shape;
mod trees;

use consts::{Const, Dim};

/// Why an ONNX graph cannot become a native model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The bytes are not an ONNX model.
    #[error("reading ONNX: {0:#}")]
    Parse(anyhow::Error),
    /// A graph input or output is not of a supported form.
    #[error("{0}")]
    Signature(String),
    /// A node has no native equivalent.
    #[error("node {node:?} ({op}): {reason}")]
    Unsupported {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// Why.
        reason: String,
    },
    /// The translated graph does not validate (a converter bug or an inconsistent model).
    #[error("translated graph is invalid: {0}")]
    Graph(crate::graph::GraphError),
}

// Not `#[from]`: that would also make the inner error the `source()`, and `{:#}` would print
// it twice (the message already holds it).
impl From<crate::graph::GraphError> for ConvertError {
    fn from(e: crate::graph::GraphError) -> Self {
        ConvertError::Graph(e)
    }
}

/// Converts the ONNX model in `bytes`.
///
/// # Errors
/// [`ConvertError::Unsupported`] naming the first node that has no native translation.
pub fn onnx_bytes_to_native(bytes: &[u8]) -> Result<Model, ConvertError> {
    let proto = crate::onnx::parse(bytes).map_err(|e| ConvertError::Parse(e.into()))?;
    onnx_to_native(&proto)
}

/// Converts a parsed ONNX model.
///
/// # Errors
/// As [`onnx_bytes_to_native`].
pub fn onnx_to_native(proto: &pb::ModelProto) -> Result<Model, ConvertError> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| ConvertError::Signature("model has no graph".into()))?;
    let mut cx = Converter::default();
    for init in &graph.initializer {
        let c = consts::load(init)
            .map_err(|e| ConvertError::Signature(format!("initializer {:?}: {e}", init.name)))?;
        cx.entries.insert(init.name.clone(), Entry::Const(c));
    }
    for input in &graph.input {
        if cx.entries.contains_key(&input.name) {
            continue;
        }
        let (spec, kind) = input_spec(input)?;
        let id = cx.graph.inputs.len() as ValueId;
        cx.shapes
            .push((spec.dtype, spec.shape.iter().map(|&d| d as usize).collect()));
        cx.graph.inputs.push(spec);
        cx.entries
            .insert(input.name.clone(), Entry::Value(Val { id, kind }));
    }
    if cx.graph.inputs.len() != 1 {
        return Err(ConvertError::Signature(format!(
            "native models take one input, this graph has {}",
            cx.graph.inputs.len()
        )));
    }
    for (k, node) in graph.node.iter().enumerate() {
        for name in &node.input {
            if !name.is_empty() {
                *cx.uses.entry(name.clone()).or_insert(0) += 1;
                cx.consumers.entry(name.clone()).or_default().push(k);
            }
        }
    }
    for out in &graph.output {
        *cx.uses.entry(out.name.clone()).or_insert(0) += 1;
        cx.graph_outputs.insert(out.name.clone());
    }
    cx.onnx_nodes = graph.node.clone();
    for k in 0..graph.node.len() {
        if cx.done.contains(&k) {
            continue;
        }
        let node = &graph.node[k];
        cx.convert_node(node)?;
    }
    for out in &graph.output {
        let value = cx.output_value(&out.name)?;
        cx.graph.outputs.push(Output {
            name: out.name.clone(),
            value,
        });
    }
    cx.graph = prune_unused(std::mem::take(&mut cx.graph));
    cx.graph.infer_shapes()?;
    let mut metadata = Metadata {
        name: graph.name.clone(),
        version: proto.model_version.to_string(),
        producer: format!("{} {}", proto.producer_name, proto.producer_version)
            .trim()
            .to_string(),
        description: proto.doc_string.clone(),
        ..Metadata::default()
    };
    metadata
        .properties
        .insert("converted_from".into(), "onnx".into());
    for kv in &proto.metadata_props {
        metadata
            .properties
            .insert(format!("onnx.{}", kv.key), kv.value.clone());
    }
    if let Some(labels) = cx.labels.take() {
        metadata.class_labels = labels.iter().map(i64::to_string).collect();
    }
    Ok(Model {
        metadata,
        graph: cx.graph,
    })
}

fn input_spec(input: &pb::ValueInfoProto) -> Result<(TensorSpec, Kind), ConvertError> {
    use pb::tensor_proto::DataType as D;
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value as Ty;
    let bad = |why: &str| ConvertError::Signature(format!("input {:?}: {why}", input.name));
    let Some(Ty::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("not a tensor"));
    };
    let (dtype, kind) = match D::try_from(t.elem_type) {
        Ok(D::Float) => (DType::F32, Kind::F32),
        Ok(D::Int8) => (DType::I8, Kind::Codes { signed: true }),
        Ok(D::Uint8) => (DType::U8, Kind::Codes { signed: false }),
        _ => return Err(bad("native models take float32, int8 or uint8 inputs")),
    };
    let dims = t.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    if dims.len() < 2 {
        return Err(bad("expected [batch, features...]"));
    }
    let mut shape = Vec::new();
    for d in &dims[1..] {
        match d.value {
            Some(Dim::DimValue(v)) if v > 0 && v <= u32::MAX as i64 => shape.push(v as u32),
            _ => return Err(bad("only the first (batch) axis may be symbolic")),
        }
    }
    Ok((
        TensorSpec {
            name: input.name.clone(),
            dtype,
            shape,
        },
        kind,
    ))
}

/// Removes nodes no output depends on (shape computations, a HardSigmoid folded into a
/// HardSwish…) and renumbers the values.
fn prune_unused(mut g: Graph) -> Graph {
    let n_in = g.inputs.len();
    let mut live = vec![false; n_in + g.nodes.len()];
    for o in &g.outputs {
        if let Some(l) = live.get_mut(o.value as usize) {
            *l = true;
        }
    }
    for k in (0..g.nodes.len()).rev() {
        if live[n_in + k] {
            for &i in &g.nodes[k].inputs {
                if let Some(l) = live.get_mut(i as usize) {
                    *l = true;
                }
            }
        }
    }
    let mut new_id: Vec<ValueId> = (0..n_in as ValueId).collect();
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (k, mut node) in std::mem::take(&mut g.nodes).into_iter().enumerate() {
        if !live[n_in + k] {
            new_id.push(ValueId::MAX);
            continue;
        }
        for i in &mut node.inputs {
            *i = new_id.get(*i as usize).copied().unwrap_or(*i);
        }
        new_id.push((n_in + nodes.len()) as ValueId);
        nodes.push(node);
    }
    for o in &mut g.outputs {
        o.value = new_id.get(o.value as usize).copied().unwrap_or(o.value);
    }
    g.nodes = nodes;
    g
}

/// What an ONNX tensor holds, seen from the IR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// float32.
    F32,
    /// int64 labels.
    I64,
    /// Quantized codes: an IR `U8` value (or the `I8` graph input) holding what ONNX types
    /// as int8 (`signed`, codes stored + 128) or uint8.
    Codes { signed: bool },
}

/// An IR value and what it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Val {
    pub id: ValueId,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
enum Entry {
    Const(Const),
    /// A 1-D integer tensor computed from shapes; may hold the symbolic batch size.
    Shape(Vec<Dim>),
    Value(Val),
    /// A DequantizeLinear of codes: float in ONNX, made an IR `Dequantize` only when a
    /// float layer reads it; quantized layers read the codes.
    Dequant {
        codes: Val,
        params: QuantParams,
    },
}

/// An int8 constant weight behind a DequantizeLinear, kept exact for quantized layers.
#[derive(Debug, Clone)]
struct QWeight {
    pub shape: Vec<usize>,
    /// Codes minus the zero point.
    pub values: Vec<i32>,
    pub scales: Vec<f32>,
    pub axis: Option<usize>,
}

#[derive(Default)]
struct Converter {
    graph: Graph,
    entries: HashMap<String, Entry>,
    /// Per-sample dtype and shape of each IR value.
    shapes: Vec<(DType, Vec<usize>)>,
    /// How many times each ONNX name is read (node inputs and graph outputs).
    uses: HashMap<String, usize>,
    /// The nodes reading each name, by index.
    consumers: HashMap<String, Vec<usize>>,
    graph_outputs: HashSet<String>,
    onnx_nodes: Vec<NodeProto>,
    /// Nodes already translated as part of an earlier node's pattern.
    done: HashSet<usize>,
    /// Exact int8 weights of constant DequantizeLinear outputs.
    qweights: HashMap<String, QWeight>,
    /// Padding a Pad node left for the convolution that alone reads it.
    pending_pads: HashMap<String, [u32; 4]>,
    /// Materialized Dequantize of (codes value, scale bits, zero point).
    dequantized: HashMap<(ValueId, u32, u8), ValueId>,
    /// `ToU8` of each int8 graph input.
    to_u8: HashMap<ValueId, ValueId>,
    labels: Option<Vec<i64>>,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_floats(node: &NodeProto, name: &str) -> Option<Vec<f32>> {
    attr(node, name).map(|a| a.floats.clone())
}

fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

impl Converter {
    fn unsupported(node: &NodeProto, reason: impl Into<String>) -> ConvertError {
        ConvertError::Unsupported {
            node: node.name.clone(),
            op: node.op_type.clone(),
            reason: reason.into(),
        }
    }

    fn input_name<'a>(&self, node: &'a NodeProto, ix: usize) -> Result<&'a str, ConvertError> {
        node.input
            .get(ix)
            .filter(|n| !n.is_empty())
            .map(String::as_str)
            .ok_or_else(|| Self::unsupported(node, format!("missing input {ix}")))
    }

    fn has_input(node: &NodeProto, ix: usize) -> bool {
        node.input.get(ix).is_some_and(|n| !n.is_empty())
    }

    fn entry(&self, node: &NodeProto, ix: usize) -> Result<&Entry, ConvertError> {
        let name = self.input_name(node, ix)?;
        self.entries
            .get(name)
            .ok_or_else(|| Self::unsupported(node, format!("input {name:?} is not defined")))
    }

    /// A float or int64 IR value (a dequantized input is made float here).
    fn value(&mut self, node: &NodeProto, ix: usize) -> Result<(ValueId, bool), ConvertError> {
        match self.entry(node, ix)?.clone() {
            Entry::Value(Val {
                id,
                kind: Kind::F32,
            }) => Ok((id, false)),
            Entry::Value(Val {
                id,
                kind: Kind::I64,
            }) => Ok((id, true)),
            Entry::Dequant { codes, params } => Ok((self.dequantize(node, codes, params)?, false)),
            Entry::Value(Val {
                kind: Kind::Codes { .. },
                ..
            }) => Err(Self::unsupported(
                node,
                format!(
                    "input {:?} holds quantized codes where a float value is expected",
                    node.input[ix]
                ),
            )),
            Entry::Const(_) | Entry::Shape(_) => Err(Self::unsupported(
                node,
                format!(
                    "input {:?} is a constant where a computed value is expected",
                    node.input[ix]
                ),
            )),
        }
    }

    fn konst(&self, node: &NodeProto, ix: usize) -> Result<&Const, ConvertError> {
        match self.entry(node, ix)? {
            Entry::Const(t) => Ok(t),
            _ => Err(Self::unsupported(
                node,
                format!("input {:?} must be a constant", node.input[ix]),
            )),
        }
    }

    fn is_const(&self, node: &NodeProto, ix: usize) -> bool {
        matches!(
            node.input.get(ix).and_then(|n| self.entries.get(n)),
            Some(Entry::Const(_))
        )
    }

    /// A constant input as f32, with its shape.
    fn konst_f32(
        &self,
        node: &NodeProto,
        ix: usize,
    ) -> Result<(Vec<usize>, Vec<f32>), ConvertError> {
        let t = self.konst(node, ix)?;
        Ok((t.shape.clone(), t.f32s()))
    }

    /// Whether `name` is read exactly once and is not a graph output.
    fn single_use(&self, name: &str) -> bool {
        self.uses.get(name).copied().unwrap_or(0) <= 1 && !self.graph_outputs.contains(name)
    }

    /// The one node reading `name`, if exactly one does and `name` is no graph output.
    fn sole_consumer(&self, name: &str) -> Option<usize> {
        if !self.single_use(name) {
            return None;
        }
        match self.consumers.get(name).map(Vec::as_slice) {
            Some([k]) if !self.done.contains(k) => Some(*k),
            _ => None,
        }
    }

    fn push(
        &mut self,
        node: &NodeProto,
        layer: Layer,
        input: ValueId,
    ) -> Result<ValueId, ConvertError> {
        self.push_n(node, layer, vec![input])
    }

    fn push_n(
        &mut self,
        node: &NodeProto,
        layer: Layer,
        inputs: Vec<ValueId>,
    ) -> Result<ValueId, ConvertError> {
        self.graph.nodes.push(Node {
            name: node.name.clone(),
            layer,
            inputs,
        });
        let id = (self.graph.inputs.len() + self.graph.nodes.len() - 1) as ValueId;
        // Validate the new node now so errors name the ONNX node that caused them.
        let out =
            crate::graph::infer_node(&self.graph.nodes[self.graph.nodes.len() - 1], &self.shapes)
                .map_err(|e| {
                self.graph.nodes.pop();
                Self::unsupported(node, e.to_string())
            })?;
        self.shapes.push(out);
        Ok(id)
    }

    fn bind_entry(&mut self, node: &NodeProto, ix: usize, e: Entry) {
        if let Some(name) = node.output.get(ix).filter(|n| !n.is_empty()) {
            self.entries.insert(name.clone(), e);
        }
    }

    fn bind(&mut self, node: &NodeProto, ix: usize, id: ValueId, int: bool) {
        let kind = if int { Kind::I64 } else { Kind::F32 };
        self.bind_entry(node, ix, Entry::Value(Val { id, kind }));
    }

    fn bind_val(&mut self, node: &NodeProto, ix: usize, v: Val) {
        self.bind_entry(node, ix, Entry::Value(v));
    }

    fn producer(&mut self, id: ValueId) -> Option<&mut Node> {
        let k = (id as usize).checked_sub(self.graph.inputs.len())?;
        self.graph.nodes.get_mut(k)
    }

    fn shape_of(&self, id: ValueId) -> &[usize] {
        &self.shapes[id as usize].1
    }

    fn last_axis(&self, id: ValueId) -> usize {
        self.shapes[id as usize].1.last().copied().unwrap_or(1)
    }

    /// The sample axis of ONNX axis `axis` of a tensor of `rank` (batch included): the
    /// batch axis itself is refused.
    fn sample_axis(node: &NodeProto, axis: i64, rank: usize) -> Result<usize, ConvertError> {
        let a = if axis < 0 { axis + rank as i64 } else { axis };
        if a <= 0 || a >= rank as i64 {
            return Err(Self::unsupported(
                node,
                format!(
                    "axis {axis} of a rank-{rank} tensor: only axes after the batch axis are native"
                ),
            ));
        }
        Ok(a as usize - 1)
    }

    /// The IR `U8` value of codes (an int8 graph input gets a `ToU8`, once).
    fn u8_codes(&mut self, node: &NodeProto, v: Val) -> Result<ValueId, ConvertError> {
        if self.shapes[v.id as usize].0 != DType::I8 {
            return Ok(v.id);
        }
        if let Some(&id) = self.to_u8.get(&v.id) {
            return Ok(id);
        }
        let id = self.push(node, Layer::ToU8, v.id)?;
        self.to_u8.insert(v.id, id);
        Ok(id)
    }

    /// A float IR value for a dequantized entry (one `Dequantize` per codes and params).
    fn dequantize(
        &mut self,
        node: &NodeProto,
        codes: Val,
        params: QuantParams,
    ) -> Result<ValueId, ConvertError> {
        let key = (codes.id, params.scale.to_bits(), params.zero_point);
        if let Some(&id) = self.dequantized.get(&key) {
            return Ok(id);
        }
        let src = self.u8_codes(node, codes)?;
        let id = self.push(node, Layer::Dequantize(params), src)?;
        self.dequantized.insert(key, id);
        Ok(id)
    }

    fn output_value(&mut self, name: &str) -> Result<ValueId, ConvertError> {
        let stub = NodeProto {
            name: format!("output {name}"),
            op_type: "Output".into(),
            ..NodeProto::default()
        };
        match self.entries.get(name).cloned() {
            Some(Entry::Value(Val {
                id,
                kind: Kind::F32 | Kind::I64,
            })) => Ok(id),
            Some(Entry::Value(
                v @ Val {
                    kind: Kind::Codes { signed },
                    ..
                },
            )) => {
                let dtype = self.shapes[v.id as usize].0;
                match (signed, dtype) {
                    (true, DType::I8) | (false, DType::U8) => Ok(v.id),
                    (true, _) => self.push(&stub, Layer::ToI8, v.id),
                    (false, _) => Err(Self::unsupported(&stub, "uint8 output from int8 codes")),
                }
            }
            Some(Entry::Dequant { codes, params }) => self.dequantize(&stub, codes, params),
            _ => Err(ConvertError::Signature(format!(
                "output {name:?} is not computed from the input"
            ))),
        }
    }

    fn convert_node(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let op = node.op_type.as_str();
        let domain = node.domain.as_str();
        let ms = domain == "com.microsoft";
        if !(domain.is_empty() || domain == "ai.onnx" || domain == "ai.onnx.ml" || ms) {
            return Err(Self::unsupported(
                node,
                format!("domain {domain:?} has no native equivalent"),
            ));
        }
        if !ms && self.fold(node)? {
            return Ok(());
        }
        if ms {
            return self.convert_microsoft(node);
        }
        match op {
            "Identity" | "Dropout" => {
                let e = self.entry(node, 0)?.clone();
                self.bind_entry(node, 0, e);
            }
            "QuantizeLinear" => self.quantize_linear(node)?,
            "DequantizeLinear" => self.dequantize_linear(node)?,
            "QLinearConv" => self.qlinear_conv(node)?,
            "QLinearMatMul" => self.qlinear_matmul(node)?,
            "Conv" => self.conv(node)?,
            "BatchNormalization" => self.batch_norm(node)?,
            "MaxPool" | "AveragePool" => self.pool(node)?,
            "GlobalAveragePool" | "GlobalMaxPool" => self.global_pool(node)?,
            "ReduceMean" | "ReduceMax" => self.reduce(node)?,
            "Pad" => self.pad(node)?,
            "Relu" | "Sigmoid" | "Tanh" | "LeakyRelu" | "HardSigmoid" | "HardSwish" | "Clip" => {
                self.activation(node)?
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arith(node)?,
            "Concat" => self.concat(node)?,
            "Transpose" => self.transpose(node)?,
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => self.reshape(node)?,
            "MatMul" | "Gemm" => self.matmul(node)?,
            "Softmax" => self.softmax(node)?,
            _ => self.convert_classic(node)?,
        }
        Ok(())
    }

    fn convert_microsoft(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        match node.op_type.as_str() {
            "QLinearAdd" | "QLinearMul" => self.qlinear_add(node),
            "QLinearGlobalAveragePool" | "QLinearAveragePool" => self.qlinear_pool(node),
            "QLinearConcat" => self.qlinear_concat(node),
            "QLinearLeakyRelu" | "QLinearSigmoid" => self.qlinear_unary(node),
            "QGemm" => self.qgemm(node),
            "QLinearSoftmax" => self.qlinear_softmax(node),
            _ => Err(Self::unsupported(
                node,
                "this com.microsoft op has no native equivalent",
            )),
        }
    }
}
