//! Writes a native [`Model`] as an ONNX model that onnxruntime and perch's ONNX path both
//! run with the native engine's outputs: the reverse of [`crate::convert`].
//!
//! Every layer maps to standard ops (opset 17): standardize to `Sub` then `Mul`, dense to
//! `Gemm` (or `MatMul` + `Add` above rank 2), conv and pooling one to one, argmax to `ArgMax`
//! with a `Gather` of the class labels. Tree ensembles become ai.onnx.ml (opset 3)
//! `TreeEnsembleClassifier` when their scores feed a label argmax and there are three or more
//! classes, else `TreeEnsembleRegressor` (with `ArgMax` + `Gather` for labels): onnxruntime's
//! classifier gives two-class ensembles a label rule of its own (the positive class whenever
//! its score is above zero), which would not match the native argmax.
//!
//! Int8 models export in QDQ form: `Quantize`/`Dequantize` become QuantizeLinear /
//! DequantizeLinear, a quantized dense layer dequantizes its u8 input (or quantizes a float
//! one with DynamicQuantizeLinear — one range per tensor, where the engine takes one per
//! sample, so the two agree at batch 1) and its int8 weight (per output channel, axis 0)
//! around a float Gemm (Conv for a quantized conv layer), then applies its ReLU and
//! requantizes a u8 output.
//!
//! The batch axis is the symbolic dimension `N`. Metadata (name, version, description,
//! producer, class labels, properties) goes into the model's `metadata_props`.

//!
//! # Layout
//! This file assembles the model (inputs, outputs, node names, metadata, opsets);
//! `layers.rs` writes each native layer as ONNX nodes and initializers; `proto.rs` builds
//! the protobuf pieces (nodes, attributes, value infos).

use crate::graph::{GraphError, Model};
use prost::Message;
use tract_onnx::pb::{GraphProto, ModelProto, OperatorSetIdProto};

mod layers;
mod proto;

use layers::Writer;
use proto::{entry, op, sanitize, value_info};

/// Standard-domain opset the exported models import.
pub const OPSET: i64 = 17;
/// ai.onnx.ml opset (TreeEnsembleClassifier/Regressor version 3).
pub const ML_OPSET: i64 = 3;
/// ONNX IR version written (the one opset 17 came with).
pub const IR_VERSION: i64 = 8;

/// Why a model cannot be written as ONNX.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The native graph does not validate.
    #[error("the model's graph is invalid: {0}")]
    Graph(GraphError),
    /// A tensor is not stored in an encoding ONNX export handles.
    #[error("node {node:?}: {reason}")]
    Unsupported {
        /// Node name.
        node: String,
        /// What is missing.
        reason: String,
    },
}

// Not `#[from]`: that would also make the inner error the `source()`, and `{:#}` would print
// it twice (the message already holds it).
impl From<GraphError> for ExportError {
    fn from(e: GraphError) -> Self {
        ExportError::Graph(e)
    }
}

/// Encodes `model` as ONNX protobuf bytes.
///
/// # Errors
/// As [`to_onnx_proto`].
pub fn to_onnx(model: &Model) -> Result<Vec<u8>, ExportError> {
    Ok(to_onnx_proto(model)?.encode_to_vec())
}

/// Builds the ONNX model for `model`.
///
/// # Errors
/// [`ExportError::Graph`] when the graph does not validate; [`ExportError::Unsupported`] for a
/// tensor encoding without an ONNX form.
pub fn to_onnx_proto(model: &Model) -> Result<ModelProto, ExportError> {
    let g = &model.graph;
    let shapes = g.infer_shapes()?;
    let mut cx = Writer::new(g);
    for (i, node) in g.nodes.iter().enumerate() {
        cx.node(g, &shapes.values, i, node)?;
    }
    let mut graph = GraphProto {
        name: sanitize(if model.metadata.name.is_empty() {
            "perch"
        } else {
            &model.metadata.name
        }),
        doc_string: model.metadata.description.clone(),
        ..GraphProto::default()
    };
    for (i, spec) in g.inputs.iter().enumerate() {
        let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        graph
            .input
            .push(value_info(&cx.names[i], spec.dtype, &shape));
    }
    for out in &g.outputs {
        let src = cx.names[out.value as usize].clone();
        let (dtype, shape) = &shapes.values[out.value as usize];
        if src != out.name {
            cx.nodes
                .push(op("Identity", &out.name, vec![src], vec![out.name.clone()]));
        }
        graph.output.push(value_info(&out.name, *dtype, shape));
    }
    // tract names a node after each initializer and input too: node names stay distinct from
    // those and from each other.
    let mut taken: std::collections::HashSet<String> = cx
        .initializers
        .iter()
        .map(|t| t.name.clone())
        .chain(graph.input.iter().map(|v| v.name.clone()))
        .collect();
    for n in &mut cx.nodes {
        let base = std::mem::take(&mut n.name);
        let mut name = base.clone();
        let mut k = 1;
        while !taken.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        n.name = name;
    }
    graph.node = cx.nodes;
    graph.initializer = cx.initializers;

    let meta = &model.metadata;
    let mut props = vec![
        entry("perch.name", &meta.name),
        entry("perch.version", &meta.version),
    ];
    if !meta.class_labels.is_empty() {
        props.push(entry("perch.class_labels", &meta.class_labels.join(",")));
    }
    props.extend(meta.properties.iter().map(|(k, v)| entry(k, v)));
    let mut opset_import = vec![OperatorSetIdProto {
        domain: String::new(),
        version: OPSET,
    }];
    if cx.uses_ml {
        opset_import.push(OperatorSetIdProto {
            domain: "ai.onnx.ml".into(),
            version: ML_OPSET,
        });
    }
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import,
        producer_name: "perch".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "dev.perch".into(),
        model_version: meta.version.parse().unwrap_or(1),
        doc_string: meta.description.clone(),
        graph: Some(graph),
        metadata_props: props,
        ..ModelProto::default()
    })
}
