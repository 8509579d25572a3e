//! Translates ONNX graphs built from the ops the native IR has into a native
//! [`Model`]: Gemm and MatMul+Add become dense layers; Conv, pooling,
//! Flatten/Reshape, the activations, Softmax and ArgMax map one to one; Add/Sub/Mul/Div by a
//! constant fold into standardize layers; ai.onnx.ml Scaler, LinearRegressor and
//! LinearClassifier become standardize, dense and activation layers; TreeEnsembleClassifier
//! and TreeEnsembleRegressor become a tree ensemble layer (with an argmax for the labels,
//! see `trees.rs`); an ArrayFeatureExtractor or Gather of constant class labels by an argmax
//! becomes that argmax's labels. Anything else is an error naming the node.

use crate::graph::{
    DType, Graph, Layer, Metadata, Model, Node, Output, Tensor, TensorSpec, ValueId,
};
use std::collections::HashMap;
use tract_onnx::pb::{self, NodeProto};

mod trees;

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
    let resolver = tract_onnx::data_resolver::default();
    for init in &graph.initializer {
        let t = tract_onnx::tensor::load_tensor(&*resolver, init, None)
            .map_err(|e| ConvertError::Signature(format!("initializer {:?}: {e:#}", init.name)))?;
        cx.entries.insert(init.name.clone(), Entry::Const(t));
    }
    for input in &graph.input {
        if cx.entries.contains_key(&input.name) {
            continue;
        }
        let spec = input_spec(input)?;
        let id = cx.graph.inputs.len() as ValueId;
        cx.shapes
            .push((DType::F32, spec.shape.iter().map(|&d| d as usize).collect()));
        cx.graph.inputs.push(spec);
        cx.entries
            .insert(input.name.clone(), Entry::Value { id, int: false });
    }
    if cx.graph.inputs.len() != 1 {
        return Err(ConvertError::Signature(format!(
            "native models take one input, this graph has {}",
            cx.graph.inputs.len()
        )));
    }
    for node in &graph.node {
        for name in node.input.iter().chain(&node.output) {
            if !name.is_empty() {
                *cx.uses.entry(name.clone()).or_insert(0) += 1;
            }
        }
    }
    for out in &graph.output {
        *cx.uses.entry(out.name.clone()).or_insert(0) += 1;
    }
    for node in &graph.node {
        cx.convert_node(node)?;
    }
    for out in &graph.output {
        match cx.entries.get(&out.name) {
            Some(Entry::Value { id, .. }) => cx.graph.outputs.push(Output {
                name: out.name.clone(),
                value: *id,
            }),
            _ => {
                return Err(ConvertError::Signature(format!(
                    "output {:?} is not computed from the input",
                    out.name
                )));
            }
        }
    }
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

fn input_spec(input: &pb::ValueInfoProto) -> Result<TensorSpec, ConvertError> {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value as Ty;
    let bad = |why: &str| ConvertError::Signature(format!("input {:?}: {why}", input.name));
    let Some(Ty::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("not a tensor"));
    };
    if t.elem_type != pb::tensor_proto::DataType::Float as i32 {
        return Err(bad("native models take float32 inputs"));
    }
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
    Ok(TensorSpec {
        name: input.name.clone(),
        dtype: DType::F32,
        shape,
    })
}

/// Stride, padding (top, left, bottom, right) and dilation of a window op.
type WindowAttrs = ([u32; 2], [u32; 4], [u32; 2]);

enum Entry {
    Const(TractTensor),
    Value { id: ValueId, int: bool },
}

type TractTensor = tract_onnx::prelude::Tensor;

#[derive(Default)]
struct Converter {
    graph: Graph,
    entries: HashMap<String, Entry>,
    /// Per-sample shape of each value.
    shapes: Vec<(DType, Vec<usize>)>,
    /// How many times each ONNX name is used (as node input, output or graph output).
    uses: HashMap<String, usize>,
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

    fn value(&self, node: &NodeProto, ix: usize) -> Result<(ValueId, bool), ConvertError> {
        let name = node
            .input
            .get(ix)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Self::unsupported(node, format!("missing input {ix}")))?;
        match self.entries.get(name) {
            Some(Entry::Value { id, int }) => Ok((*id, *int)),
            Some(Entry::Const(_)) => Err(Self::unsupported(
                node,
                format!("input {name:?} is a constant where a computed value is expected"),
            )),
            None => Err(Self::unsupported(
                node,
                format!("input {name:?} is not defined"),
            )),
        }
    }

    fn konst(&self, node: &NodeProto, ix: usize) -> Result<&TractTensor, ConvertError> {
        let name = node
            .input
            .get(ix)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Self::unsupported(node, format!("missing input {ix}")))?;
        match self.entries.get(name) {
            Some(Entry::Const(t)) => Ok(t),
            _ => Err(Self::unsupported(
                node,
                format!("input {name:?} must be a constant"),
            )),
        }
    }

    fn konst_f32(
        &self,
        node: &NodeProto,
        ix: usize,
    ) -> Result<(Vec<usize>, Vec<f32>), ConvertError> {
        let t = self.konst(node, ix)?;
        let f = t
            .cast_to::<f32>()
            .map_err(|e| Self::unsupported(node, format!("constant input {ix}: {e}")))?;
        let v = f
            .try_as_plain_ram()
            .and_then(|r| r.as_slice::<f32>().map(<[f32]>::to_vec))
            .map_err(|e| Self::unsupported(node, format!("constant input {ix}: {e}")))?;
        Ok((t.shape().to_vec(), v))
    }

    fn single_use(&self, name: &str) -> bool {
        self.uses.get(name).copied().unwrap_or(0) <= 2
    }

    fn push(
        &mut self,
        node: &NodeProto,
        layer: Layer,
        input: ValueId,
    ) -> Result<ValueId, ConvertError> {
        self.graph.nodes.push(Node {
            name: node.name.clone(),
            layer,
            inputs: vec![input],
        });
        let id = (self.graph.inputs.len() + self.graph.nodes.len() - 1) as ValueId;
        // Validate the new node now so errors name the ONNX node that caused them.
        let out =
            crate::graph::infer_node(&self.graph.nodes[self.graph.nodes.len() - 1], &self.shapes)
                .map_err(|e| Self::unsupported(node, e.to_string()))?;
        self.shapes.push(out);
        Ok(id)
    }

    fn bind(&mut self, node: &NodeProto, ix: usize, id: ValueId, int: bool) {
        if let Some(name) = node.output.get(ix) {
            self.entries.insert(name.clone(), Entry::Value { id, int });
        }
    }

    fn producer(&mut self, id: ValueId) -> Option<&mut Node> {
        let k = (id as usize).checked_sub(self.graph.inputs.len())?;
        self.graph.nodes.get_mut(k)
    }

    fn last_axis(&self, id: ValueId) -> usize {
        self.shapes[id as usize].1.last().copied().unwrap_or(1)
    }

    /// A per-last-axis vector from a constant that broadcasts along the last axis.
    fn axis_vector(&self, node: &NodeProto, ix: usize, n: usize) -> Result<Vec<f32>, ConvertError> {
        let (shape, v) = self.konst_f32(node, ix)?;
        let leading_ones = shape.iter().rev().skip(1).all(|&d| d == 1);
        if !(leading_ones && (v.len() == 1 || v.len() == n)) {
            return Err(Self::unsupported(
                node,
                format!("constant of shape {shape:?} does not broadcast along a last axis of {n}"),
            ));
        }
        Ok(if v.len() == 1 { vec![v[0]; n] } else { v })
    }

    fn dense(
        &mut self,
        node: &NodeProto,
        x: ValueId,
        weight: Tensor,
        bias: Option<Vec<f32>>,
    ) -> Result<ValueId, ConvertError> {
        let bias = bias.map(|b| Tensor::f32(vec![b.len() as u32], b));
        self.push(node, Layer::Dense { weight, bias }, x)
    }

    fn convert_node(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let op = node.op_type.as_str();
        let domain = node.domain.as_str();
        if !(domain.is_empty() || domain == "ai.onnx" || domain == "ai.onnx.ml") {
            return Err(Self::unsupported(
                node,
                format!("domain {domain:?} has no native equivalent"),
            ));
        }
        match op {
            "Identity" | "Dropout" => {
                let (id, int) = self.value(node, 0)?;
                self.bind(node, 0, id, int);
            }
            "Cast" => {
                let (id, int) = self.value(node, 0)?;
                let to = attr_i(node, "to", 0);
                let float = to == pb::tensor_proto::DataType::Float as i32 as i64;
                let i64_ = to == pb::tensor_proto::DataType::Int64 as i32 as i64;
                if (float && !int) || (i64_ && int) {
                    self.bind(node, 0, id, int);
                } else {
                    return Err(Self::unsupported(
                        node,
                        format!(
                            "cast to type {to} of a {} value",
                            if int { "int64" } else { "float" }
                        ),
                    ));
                }
            }
            "MatMul" => {
                let (x, _) = self.value(node, 0)?;
                let (shape, w) = self.konst_f32(node, 1)?;
                let [inp, out] = shape[..] else {
                    return Err(Self::unsupported(
                        node,
                        format!("weight of shape {shape:?} is not 2-D"),
                    ));
                };
                let wt = transpose(&w, inp, out);
                let id =
                    self.dense(node, x, Tensor::f32(vec![out as u32, inp as u32], wt), None)?;
                self.bind(node, 0, id, false);
            }
            "Gemm" => {
                let (x, _) = self.value(node, 0)?;
                if attr_i(node, "transA", 0) != 0 {
                    return Err(Self::unsupported(node, "transA=1"));
                }
                let (shape, w) = self.konst_f32(node, 1)?;
                let [r, c] = shape[..] else {
                    return Err(Self::unsupported(
                        node,
                        format!("B of shape {shape:?} is not 2-D"),
                    ));
                };
                let alpha = attr_f(node, "alpha", 1.0);
                let beta = attr_f(node, "beta", 1.0);
                let (out, inp, mut wt) = if attr_i(node, "transB", 0) != 0 {
                    (r, c, w)
                } else {
                    (c, r, transpose(&w, r, c))
                };
                wt.iter_mut().for_each(|v| *v *= alpha);
                let bias = if node.input.get(2).is_some_and(|n| !n.is_empty()) {
                    let mut b = self.axis_vector(node, 2, out)?;
                    b.iter_mut().for_each(|v| *v *= beta);
                    Some(b)
                } else {
                    None
                };
                let id =
                    self.dense(node, x, Tensor::f32(vec![out as u32, inp as u32], wt), bias)?;
                self.bind(node, 0, id, false);
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arith(node)?,
            "Relu" => self.unary(node, Layer::Relu)?,
            "Sigmoid" => self.unary(node, Layer::Sigmoid)?,
            "Tanh" => self.unary(node, Layer::Tanh)?,
            "LeakyRelu" => self.unary(
                node,
                Layer::LeakyRelu {
                    alpha: attr_f(node, "alpha", 0.01),
                },
            )?,
            "Softmax" => {
                let (x, _) = self.value(node, 0)?;
                let rank = self.shapes[x as usize].1.len() + 1;
                let axis = attr_i(node, "axis", -1);
                if !(axis == -1 || axis == rank as i64 - 1) {
                    return Err(Self::unsupported(
                        node,
                        format!("softmax over axis {axis}; only the last axis is native"),
                    ));
                }
                let id = self.push(node, Layer::Softmax, x)?;
                self.bind(node, 0, id, false);
            }
            "ArgMax" => {
                let (x, _) = self.value(node, 0)?;
                let rank = self.shapes[x as usize].1.len() + 1;
                let axis = attr_i(node, "axis", 0);
                if !(axis == -1 || axis == rank as i64 - 1)
                    || attr_i(node, "select_last_index", 0) != 0
                {
                    return Err(Self::unsupported(
                        node,
                        format!(
                            "argmax over axis {axis}; only the last axis (first index on ties) is native"
                        ),
                    ));
                }
                let id = self.push(node, Layer::ArgMax { labels: None }, x)?;
                self.bind(node, 0, id, true);
            }
            // skl2onnx looks class labels up with ArrayFeatureExtractor, perch's exporter
            // with Gather (axis 0): both index a constant label list by the argmax.
            "ArrayFeatureExtractor" | "Gather" => {
                if node.op_type == "Gather" && attr_i(node, "axis", 0) != 0 {
                    return Err(Self::unsupported(
                        node,
                        "only a gather on axis 0 (a class-label lookup) is native",
                    ));
                }
                let t = self.konst(node, 0)?;
                if node.op_type == "Gather" && t.rank() != 1 {
                    return Err(Self::unsupported(
                        node,
                        "only a gather from a 1-D label list is native",
                    ));
                }
                let classes: Vec<i64> = t
                    .cast_to::<i64>()
                    .ok()
                    .and_then(|c| {
                        c.try_as_plain_ram()
                            .ok()
                            .and_then(|r| r.as_slice::<i64>().ok().map(<[i64]>::to_vec))
                    })
                    .filter(|_| t.datum_type().is_integer())
                    .ok_or_else(|| {
                        Self::unsupported(node, "only integer class labels are native")
                    })?;
                let (id, int) = self.value(node, 1)?;
                let name = node.input[1].clone();
                let single = self.single_use(&name);
                match self.producer(id) {
                    Some(Node {
                        layer:
                            Layer::ArgMax {
                                labels: labels @ None,
                            },
                        ..
                    }) if int && single => {
                        *labels = Some(classes.clone());
                    }
                    _ => {
                        return Err(Self::unsupported(
                            node,
                            "only a class-label lookup on an argmax is native",
                        ));
                    }
                }
                self.labels = Some(classes);
                self.bind(node, 0, id, true);
            }
            "Reshape" | "Flatten" => self.reshape(node)?,
            "Conv" => self.conv(node)?,
            "MaxPool" | "AveragePool" => self.pool(node)?,
            "GlobalAveragePool" => self.unary(node, Layer::GlobalAvgPool)?,
            "Scaler" => {
                let (x, _) = self.value(node, 0)?;
                let n = self.last_axis(x);
                let widen = |v: Option<Vec<f32>>, d: f32| -> Result<Vec<f32>, ConvertError> {
                    match v {
                        None => Ok(vec![d; n]),
                        Some(v) if v.len() == 1 => Ok(vec![v[0]; n]),
                        Some(v) if v.len() == n => Ok(v),
                        Some(v) => Err(Self::unsupported(
                            node,
                            format!("{} values for {n} features", v.len()),
                        )),
                    }
                };
                let offset = widen(attr_floats(node, "offset"), 0.0)?;
                let scale = widen(attr_floats(node, "scale"), 1.0)?;
                let id = self.push(node, Layer::Standardize { offset, scale }, x)?;
                self.bind(node, 0, id, false);
            }
            "LinearRegressor" => {
                let (x, _) = self.value(node, 0)?;
                if attr_s(node, "post_transform").is_some_and(|p| p != "NONE") {
                    return Err(Self::unsupported(node, "post_transform other than NONE"));
                }
                let targets = attr_i(node, "targets", 1).max(1) as usize;
                let id = self.linear_dense(node, x, targets, "targets")?;
                self.bind(node, 0, id, false);
            }
            "LinearClassifier" => self.linear_classifier(node)?,
            "TreeEnsembleClassifier" | "TreeEnsembleRegressor" => self.tree_ensemble(node)?,
            "Normalizer" => {
                let (x, _) = self.value(node, 0)?;
                let norm = attr_s(node, "norm").unwrap_or_else(|| "MAX".into());
                let is_prob = matches!(
                    self.producer(x),
                    Some(Node {
                        layer: Layer::Softmax,
                        ..
                    })
                );
                if norm == "L1" && is_prob {
                    // L1-normalizing a softmax output is the identity.
                    self.bind(node, 0, x, false);
                } else {
                    return Err(Self::unsupported(
                        node,
                        format!("{norm} normalization is only native after a softmax (L1)"),
                    ));
                }
            }
            _ => return Err(Self::unsupported(node, "no native equivalent")),
        }
        Ok(())
    }

    fn unary(&mut self, node: &NodeProto, layer: Layer) -> Result<(), ConvertError> {
        let (x, _) = self.value(node, 0)?;
        let id = self.push(node, layer, x)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    fn arith(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let op = node.op_type.as_str();
        let a_const = matches!(
            node.input.first().and_then(|n| self.entries.get(n)),
            Some(Entry::Const(_))
        );
        let (xi, ci) = if a_const && (op == "Add" || op == "Mul") {
            (1, 0)
        } else {
            (0, 1)
        };
        let (x, _) = self.value(node, xi)?;
        let n = self.last_axis(x);
        let c = self.axis_vector(node, ci, n)?;
        // Bias after a bias-less dense layer that only feeds this node.
        let x_name = node.input[xi].clone();
        let single = self.single_use(&x_name);
        if op == "Add"
            && single
            && let Some(Node {
                layer: Layer::Dense {
                    bias: bias @ None, ..
                },
                ..
            }) = self.producer(x)
        {
            *bias = Some(Tensor::f32(vec![n as u32], c));
            self.bind(node, 0, x, false);
            return Ok(());
        }
        let (offset, scale): (Vec<f32>, Vec<f32>) = match op {
            "Add" => (c.iter().map(|v| -v).collect(), vec![1.0; n]),
            "Sub" => (c, vec![1.0; n]),
            "Mul" => (vec![0.0; n], c),
            _ => {
                if c.contains(&0.0) {
                    return Err(Self::unsupported(
                        node,
                        "division by a constant containing 0",
                    ));
                }
                (vec![0.0; n], c.iter().map(|v| 1.0 / v).collect())
            }
        };
        // Fold into a standardize layer that only feeds this node:
        // ((x - o1) * s1 - o2) * s2 = (x - (o1 + o2 / s1)) * (s1 * s2) when s1 != 0.
        if single
            && let Some(Node {
                layer:
                    Layer::Standardize {
                        offset: o1,
                        scale: s1,
                    },
                ..
            }) = self.producer(x)
            && s1.iter().all(|&v| v != 0.0)
        {
            let o: Vec<f32> = o1
                .iter()
                .zip(s1.iter())
                .zip(&offset)
                .map(|((o1, s1), o2)| o1 + o2 / s1)
                .collect();
            let s: Vec<f32> = s1.iter().zip(&scale).map(|(a, b)| a * b).collect();
            *o1 = o;
            *s1 = s;
            self.bind(node, 0, x, false);
            return Ok(());
        }
        let id = self.push(node, Layer::Standardize { offset, scale }, x)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    fn reshape(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (x, int) = self.value(node, 0)?;
        let shape = &self.shapes[x as usize].1;
        let numel: usize = shape.iter().product();
        if node.op_type == "Flatten" {
            if attr_i(node, "axis", 1) != 1 || int {
                return Err(Self::unsupported(
                    node,
                    "only Flatten(axis=1) of float values is native",
                ));
            }
            let id = self.push(node, Layer::Flatten, x)?;
            self.bind(node, 0, id, false);
            return Ok(());
        }
        let t = self.konst(node, 1)?;
        let target: Vec<i64> = t
            .cast_to::<i64>()
            .ok()
            .and_then(|c| {
                c.try_as_plain_ram()
                    .ok()
                    .and_then(|r| r.as_slice::<i64>().ok().map(<[i64]>::to_vec))
            })
            .ok_or_else(|| Self::unsupported(node, "shape must be an int64 constant"))?;
        if int {
            // Labels from an argmax are already one value per sample.
            if target.len() == 1 && target[0] == -1 || target == [-1, 1] || target == [0, 1] {
                self.bind(node, 0, x, true);
                return Ok(());
            }
            return Err(Self::unsupported(
                node,
                format!("reshape of labels to {target:?}"),
            ));
        }
        let Some((&first, rest)) = target.split_first() else {
            return Err(Self::unsupported(node, "empty target shape"));
        };
        if !(first == -1 || first == 0) {
            return Err(Self::unsupported(
                node,
                format!("target shape {target:?} must keep the batch axis first (-1 or 0)"),
            ));
        }
        if first == -1 && rest.contains(&-1) {
            return Err(Self::unsupported(
                node,
                format!("target shape {target:?} has two -1"),
            ));
        }
        let mut dims: Vec<usize> = Vec::new();
        let mut infer = None;
        for (i, &d) in rest.iter().enumerate() {
            match d {
                -1 => infer = Some(i),
                0 => dims.push(shape.get(i).copied().unwrap_or(1)),
                d if d > 0 => dims.push(d as usize),
                _ => return Err(Self::unsupported(node, format!("bad dimension {d}"))),
            }
        }
        if let Some(i) = infer {
            let known: usize = dims.iter().product();
            if known == 0 || !numel.is_multiple_of(known) {
                return Err(Self::unsupported(
                    node,
                    format!("cannot reshape {shape:?} into {target:?}"),
                ));
            }
            dims.insert(i, numel / known);
        }
        if first == -1 && dims.iter().product::<usize>() != numel {
            return Err(Self::unsupported(
                node,
                format!("target shape {target:?} changes the batch size"),
            ));
        }
        let layer = Layer::Reshape {
            shape: dims.iter().map(|&d| d as u32).collect(),
        };
        let id = self.push(node, layer, x)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    fn window_attrs(
        &self,
        node: &NodeProto,
        kernel: [usize; 2],
    ) -> Result<WindowAttrs, ConvertError> {
        let (x, _) = self.value(node, 0)?;
        let s = &self.shapes[x as usize].1;
        let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1, 1]);
        let dil = attr_ints(node, "dilations").unwrap_or_else(|| vec![1, 1]);
        if strides.len() != 2 || dil.len() != 2 || s.len() != 3 {
            return Err(Self::unsupported(
                node,
                "only 2-D windows over NCHW input are native",
            ));
        }
        let stride = [strides[0].max(1) as u32, strides[1].max(1) as u32];
        let dilation = [dil[0].max(1) as u32, dil[1].max(1) as u32];
        let auto_pad = attr_s(node, "auto_pad").unwrap_or_else(|| "NOTSET".into());
        let pads = match auto_pad.as_str() {
            "NOTSET" => {
                let p = attr_ints(node, "pads").unwrap_or_else(|| vec![0; 4]);
                if p.len() != 4 || p.iter().any(|&v| v < 0) {
                    return Err(Self::unsupported(node, format!("pads {p:?}")));
                }
                [p[0] as u32, p[1] as u32, p[2] as u32, p[3] as u32]
            }
            "VALID" => [0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = [0u32; 4];
                for ax in 0..2 {
                    let input = s[ax + 1];
                    let out = input.div_ceil(stride[ax] as usize);
                    let eff = (kernel[ax] - 1) * dilation[ax] as usize + 1;
                    let total = ((out - 1) * stride[ax] as usize + eff).saturating_sub(input);
                    let (lo, hi) = if auto_pad == "SAME_UPPER" {
                        (total / 2, total - total / 2)
                    } else {
                        (total - total / 2, total / 2)
                    };
                    p[ax] = lo as u32;
                    p[ax + 2] = hi as u32;
                }
                p
            }
            other => return Err(Self::unsupported(node, format!("auto_pad {other}"))),
        };
        Ok((stride, pads, dilation))
    }

    fn conv(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (x, _) = self.value(node, 0)?;
        let (shape, w) = self.konst_f32(node, 1)?;
        let [_, _, kh, kw] = shape[..] else {
            return Err(Self::unsupported(
                node,
                format!("weight of shape {shape:?}: only 2-D convolution is native"),
            ));
        };
        let (stride, padding, dilation) = self.window_attrs(node, [kh, kw])?;
        let bias = if node.input.get(2).is_some_and(|n| !n.is_empty()) {
            let (_, b) = self.konst_f32(node, 2)?;
            Some(Tensor::f32(vec![b.len() as u32], b))
        } else {
            None
        };
        let weight = Tensor::f32(shape.iter().map(|&d| d as u32).collect(), w);
        let groups = attr_i(node, "group", 1).max(1) as u32;
        let id = self.push(
            node,
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
            },
            x,
        )?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    fn pool(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (x, _) = self.value(node, 0)?;
        if node.output.len() > 1 && node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(Self::unsupported(node, "the Indices output is not native"));
        }
        if attr_i(node, "ceil_mode", 0) != 0 {
            return Err(Self::unsupported(node, "ceil_mode=1"));
        }
        let k = attr_ints(node, "kernel_shape").unwrap_or_default();
        if k.len() != 2 || k.iter().any(|&v| v <= 0) {
            return Err(Self::unsupported(
                node,
                format!("kernel_shape {k:?}: only 2-D pooling is native"),
            ));
        }
        let kernel = [k[0] as u32, k[1] as u32];
        let (stride, padding, dilation) =
            self.window_attrs(node, [k[0] as usize, k[1] as usize])?;
        if dilation != [1, 1] {
            return Err(Self::unsupported(node, "dilated pooling"));
        }
        let layer = if node.op_type == "MaxPool" {
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
            }
        } else {
            Layer::AvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad: attr_i(node, "count_include_pad", 0) != 0,
            }
        };
        let id = self.push(node, layer, x)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    /// A dense layer from an ai.onnx.ml linear model's `coefficients` (`rows × features`)
    /// and `intercepts` (`rows`).
    fn linear_dense(
        &mut self,
        node: &NodeProto,
        x: ValueId,
        rows: usize,
        what: &str,
    ) -> Result<ValueId, ConvertError> {
        let n = self.last_axis(x);
        let coef = attr_floats(node, "coefficients").unwrap_or_default();
        if coef.len() != rows * n {
            return Err(Self::unsupported(
                node,
                format!(
                    "{} coefficients for {rows} {what} × {n} features",
                    coef.len()
                ),
            ));
        }
        let bias = attr_floats(node, "intercepts").unwrap_or_else(|| vec![0.0; rows]);
        if bias.len() != rows {
            return Err(Self::unsupported(
                node,
                format!("{} intercepts for {rows} {what}", bias.len()),
            ));
        }
        self.dense(
            node,
            x,
            Tensor::f32(vec![rows as u32, n as u32], coef),
            Some(bias),
        )
    }

    fn linear_classifier(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (x, _) = self.value(node, 0)?;
        let labels = attr_ints(node, "classlabels_ints")
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                Self::unsupported(
                    node,
                    "only integer class labels (classlabels_ints) are native",
                )
            })?;
        let classes = labels.len();
        let scores = self.linear_dense(node, x, classes, "classes")?;
        let post = attr_s(node, "post_transform").unwrap_or_else(|| "NONE".into());
        let out = match post.as_str() {
            "NONE" => scores,
            "SOFTMAX" => self.push(node, Layer::Softmax, scores)?,
            "LOGISTIC" => self.push(node, Layer::Sigmoid, scores)?,
            other => return Err(Self::unsupported(node, format!("post_transform {other}"))),
        };
        let label = self.push(
            node,
            Layer::ArgMax {
                labels: Some(labels.clone()),
            },
            out,
        )?;
        self.labels = Some(labels);
        self.bind(node, 0, label, true);
        self.bind(node, 1, out, false);
        Ok(())
    }
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}
