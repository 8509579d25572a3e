//! The ONNX backend, on tract-onnx: load, declare input facts, optimize, run. Float and
//! quantized models (QDQ and QOperator forms); the ops tract lacks are implemented in
//! `ops` and registered with tract's ONNX op registry.

use crate::graph::{DType, TensorSpec};
use std::collections::BTreeMap;
use std::path::Path;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

mod fixups;
pub(crate) mod ops;

/// Why an ONNX model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The bytes are not an ONNX model tract can read, or tract could not type or
    /// optimize the graph (the message names the node).
    #[error("loading ONNX model: {0:#}")]
    Load(anyhow::Error),
    /// An input's shape is not `[batch, ...fixed dims]`.
    #[error("input {name:?}: {reason}")]
    InputShape {
        /// Input name.
        name: String,
        /// What is unsupported.
        reason: String,
    },
    /// tract failed while running.
    #[error("running ONNX model: {0:#}")]
    Run(anyhow::Error),
    /// An output has an element type perch does not report.
    #[error("output {name:?} has element type {dtype:?}; perch reports float and integer outputs")]
    OutputType {
        /// Output name.
        name: String,
        /// Its tract datum type.
        dtype: String,
    },
}

/// An output value of an ONNX model.
#[derive(Debug, Clone, PartialEq)]
pub enum OnnxValue {
    /// Float output.
    F32(tract_ndarray::ArrayD<f32>),
    /// Integer output (labels).
    I64(tract_ndarray::ArrayD<i64>),
}

/// An ONNX model ready to run on tract.
#[derive(Debug)]
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    op_counts: BTreeMap<String, usize>,
    notes: Vec<String>,
}

/// The ONNX parser with perch's extra ops registered.
pub fn parser() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
    ops::register_all_ops(&mut onnx.op_register);
    onnx
}

/// Parses ONNX protobuf bytes (with perch's op registry) without typing the graph.
///
/// # Errors
/// [`OnnxError::Load`] when the bytes are not an ONNX model.
pub fn parse(bytes: &[u8]) -> Result<tract_onnx::pb::ModelProto, OnnxError> {
    parser()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(OnnxError::Load)
}

/// How many nodes of each op type a parsed ONNX model has (`domain::Op` outside the
/// default domain).
pub fn op_counts(proto: &tract_onnx::pb::ModelProto) -> BTreeMap<String, usize> {
    count_ops(proto).0
}

fn count_ops(proto: &tract_onnx::pb::ModelProto) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut op_counts = BTreeMap::new();
    let mut notes = Vec::new();
    if let Some(g) = &proto.graph {
        for node in &g.node {
            let name = if node.domain.is_empty() || node.domain == "ai.onnx" {
                node.op_type.clone()
            } else {
                format!("{}::{}", node.domain, node.op_type)
            };
            *op_counts.entry(name).or_insert(0) += 1;
            if node.op_type == "ZipMap" {
                notes.push(format!(
                    "ZipMap node {:?}: its map output is replaced by its tensor input (one column per class)",
                    node.name
                ));
            }
        }
    }
    (op_counts, notes)
}

impl OnnxModel {
    /// Loads, types and optimizes the model at `path` with a symbolic batch axis.
    ///
    /// # Errors
    /// [`OnnxError::Load`] for unreadable files, unsupported ops or graphs tract cannot
    /// type; [`OnnxError::InputShape`] for inputs other than `[batch, fixed...]`.
    pub fn load(path: &Path) -> Result<OnnxModel, OnnxError> {
        let bytes = std::fs::read(path)
            .map_err(|e| OnnxError::Load(anyhow::anyhow!("reading {}: {e}", path.display())))?;
        Self::from_bytes(&bytes)
    }

    /// Like [`OnnxModel::load`], from the model's bytes.
    ///
    /// # Errors
    /// As [`OnnxModel::load`].
    pub fn from_bytes(bytes: &[u8]) -> Result<OnnxModel, OnnxError> {
        Self::from_proto(&parse(bytes)?)
    }

    /// Like [`OnnxModel::load`], from an already parsed model.
    ///
    /// # Errors
    /// As [`OnnxModel::load`].
    pub fn from_proto(proto: &tract_onnx::pb::ModelProto) -> Result<OnnxModel, OnnxError> {
        let onnx = parser();
        let (op_counts, notes) = count_ops(proto);
        let mut model = onnx.model_for_proto_model(proto).map_err(OnnxError::Load)?;
        let batch = model.symbols.sym("N");
        let mut inputs = Vec::new();
        for ix in 0..model.inputs.len() {
            let name = model.node(model.inputs[ix].node).name.clone();
            let fact = model.input_fact(ix).map_err(OnnxError::Load)?.clone();
            let dims = fact
                .shape
                .dims()
                .map(|d| d.concretize())
                .collect::<Vec<_>>();
            let rank = fact.shape.rank().concretize().map(|r| r as usize);
            let Some(rank) = rank.filter(|&r| r >= 1) else {
                return Err(OnnxError::InputShape {
                    name,
                    reason: "rank unknown or 0".into(),
                });
            };
            let mut shape = Vec::new();
            let mut tdims: TVec<TDim> = tvec![batch.clone().into()];
            for (axis, d) in dims.iter().enumerate().take(rank).skip(1) {
                match d.as_ref().and_then(|d| d.to_i64().ok()) {
                    Some(v) if v > 0 => {
                        shape.push(v as u32);
                        tdims.push(v.into());
                    }
                    _ => {
                        return Err(OnnxError::InputShape {
                            name,
                            reason: format!(
                                "axis {axis} has no fixed size (only the first, batch, axis may vary)"
                            ),
                        });
                    }
                }
            }
            let fact = f32::fact(tdims);
            model
                .set_input_fact(ix, fact.into())
                .map_err(OnnxError::Load)?;
            inputs.push(TensorSpec {
                name,
                dtype: DType::F32,
                shape,
            });
        }
        let mut typed = model.into_typed().map_err(OnnxError::Load)?;
        fixups::guard_quantized_softmax(&mut typed).map_err(OnnxError::Load)?;
        let typed = typed.into_optimized().map_err(OnnxError::Load)?;
        let mut outputs = Vec::new();
        for (ix, outlet) in typed.outputs.iter().enumerate() {
            let fact = typed.output_fact(ix).map_err(OnnxError::Load)?;
            let name = typed
                .outlet_label(*outlet)
                .map(str::to_string)
                .unwrap_or_else(|| typed.node(outlet.node).name.clone());
            let dtype = if fact.datum_type.is_float() {
                DType::F32
            } else if fact.datum_type.is_integer() || fact.datum_type == TDim::datum_type() {
                DType::I64
            } else {
                return Err(OnnxError::OutputType {
                    name,
                    dtype: format!("{:?}", fact.datum_type),
                });
            };
            let shape = fact
                .shape
                .iter()
                .skip(1)
                .map(|d| d.to_i64().map(|v| v as u32).unwrap_or(0))
                .collect();
            outputs.push(TensorSpec { name, dtype, shape });
        }
        let plan = typed.into_runnable().map_err(OnnxError::Load)?;
        Ok(OnnxModel {
            plan,
            inputs,
            outputs,
            op_counts,
            notes,
        })
    }

    /// The inputs, each `[batch, ...shape]`.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The outputs (a shape axis of 0 means tract could not fix it ahead of a run).
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// How many nodes of each op type the ONNX graph has (`domain::Op` outside the default
    /// domain).
    pub fn op_counts(&self) -> &BTreeMap<String, usize> {
        &self.op_counts
    }

    /// Things the user should know about how the model runs (ZipMap replaced…).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Runs the model on one tensor per graph input, each `[batch, ...]` in the element type
    /// the input declares.
    ///
    /// # Errors
    /// [`OnnxError::Run`] when tract fails (wrong shapes included);
    /// [`OnnxError::OutputType`] for outputs of other element types.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<OnnxValue>, OnnxError> {
        let inputs: TVec<TValue> = inputs.into_iter().map(TValue::from).collect();
        let outs = self.plan.run(inputs).map_err(OnnxError::Run)?;
        outs.into_iter()
            .zip(&self.outputs)
            .map(|(t, spec)| {
                let t = t.into_tensor();
                let dt = t.datum_type();
                if dt.is_float() {
                    let t = t.cast_to::<f32>().map_err(OnnxError::Run)?.into_owned();
                    Ok(OnnxValue::F32(
                        t.into_plain_array::<f32>().map_err(OnnxError::Run)?,
                    ))
                } else if dt.is_integer() || dt == bool::datum_type() || dt == TDim::datum_type() {
                    let t = t.cast_to::<i64>().map_err(OnnxError::Run)?.into_owned();
                    Ok(OnnxValue::I64(
                        t.into_plain_array::<i64>().map_err(OnnxError::Run)?,
                    ))
                } else {
                    Err(OnnxError::OutputType {
                        name: spec.name.clone(),
                        dtype: format!("{dt:?}"),
                    })
                }
            })
            .collect()
    }
}
