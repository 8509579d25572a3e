//! One [`Model`] over both backends: the native engine (`.perch`, and ONNX graphs whose ops
//! all exist natively) and tract (every other ONNX model). This is what the CLI, the agent
//! and embedding programs call.

use crate::artifact::{self, ArtifactError};
use crate::engine::{Engine, EngineError};
use crate::graph::budget::{self, BudgetError, MemoryPlan};
use crate::graph::sections::{Canary, CanaryValues};
use crate::graph::{DType, Metadata, TensorSpec};
use std::collections::BTreeMap;
use std::path::Path;

/// Why a model cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The `.perch` file is unusable.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The native engine refused the graph or the input.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model needs more memory than allowed, or something this build lacks.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// The ONNX backend failed.
    #[cfg(feature = "onnx")]
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    /// An ONNX model was given to a build without the backend.
    #[error(
        "this build of perch has no ONNX support; rebuild with --features onnx, or convert the model with `perch-host convert`"
    )]
    OnnxNotCompiled,
    /// The file is neither a `.perch` artifact nor ONNX.
    #[error("{path}: unknown model format (expected a .perch artifact or an .onnx file)")]
    UnknownFormat {
        /// The model file as given.
        path: String,
    },
    /// The input's shape does not fit the model.
    #[error(
        "input has shape {got:?}, but model input {name:?} takes samples of shape {expected:?} ({sample_len} values per row)"
    )]
    InputShape {
        /// Model input name.
        name: String,
        /// Expected per-sample shape.
        expected: Vec<u32>,
        /// Values per sample.
        sample_len: usize,
        /// The shape given: as read from the input file, or `[len]` for a flat slice of values.
        got: Vec<usize>,
    },
    /// The native engine was requested for a model it cannot run.
    #[error("the native engine cannot run this model: {0}")]
    NotNative(String),
    /// A canary cannot be recorded as asked.
    #[error("cannot record a canary: {0}")]
    Canary(String),
    /// An input value cannot be given to an input of the model's declared element type
    /// (not a whole number, or out of range, for an integer input).
    #[error("input {name:?}, row {row}, column {column}: {value} {reason}")]
    InputValue {
        /// Model input name.
        name: String,
        /// 1-based sample (row) number, counted from the first row of the call.
        row: usize,
        /// 1-based position within the sample.
        column: usize,
        /// The value as given.
        value: f32,
        /// Why it does not fit, naming the input's element type.
        reason: String,
    },
    /// Inputs of a run that do not fit the model (count, element type or length).
    #[error("{0}")]
    Inputs(String),
    /// Reading the model file failed.
    #[error("reading model {path}: {reason}")]
    Io {
        /// The model file as given.
        path: String,
        /// The error text.
        reason: String,
    },
}

/// The file format a model was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// perch's native artifact.
    Perch,
    /// An ONNX protobuf (`ModelProto`), `.onnx`.
    Onnx,
}

/// The engine executing a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// perch's native engine.
    Native,
    /// tract (ONNX backend).
    Tract,
}

impl EngineKind {
    /// Lower-case name (`native`, `tract`).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Native => "native",
            EngineKind::Tract => "tract",
        }
    }
}

/// Which engine to use for an ONNX model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// Native when every op converts, else tract.
    #[default]
    Auto,
    /// The native engine, or [`RuntimeError::NotNative`] when some op does not convert.
    Native,
    /// Always tract, even when the graph would convert to the native IR.
    Tract,
}

/// Descriptive facts about a loaded model (`perch info`).
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The format of the file it was loaded from.
    pub format: Format,
    /// Engine that runs it.
    pub engine: EngineKind,
    /// Inputs (per-sample shapes).
    pub inputs: Vec<TensorSpec>,
    /// Outputs (per-sample shapes).
    pub outputs: Vec<TensorSpec>,
    /// Nodes per op: native layer kinds (`dense`, …), or ONNX op types on tract.
    pub ops: BTreeMap<String, usize>,
    /// Size of the encoded model in bytes (file or bytes given); 0 from [`Model::from_native`].
    pub size_bytes: u64,
    /// Native metadata (for `.perch`, or converted ONNX).
    pub metadata: Option<Metadata>,
    /// Notes about how the model runs (why tract rather than native, ZipMap replaced…).
    pub notes: Vec<String>,
    /// SHA-256 of the payload, for `.perch`.
    pub sha256: Option<String>,
    /// Memory the native engine plans for it (`None` on tract).
    pub memory: Option<MemoryPlan>,
    /// Bytes of the native engine's memory plan per sample (arena and kernel scratch);
    /// none on tract.
    pub arena_bytes: Option<usize>,
}

/// One output of a run, `[batch, ...]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The graph output's name.
    pub name: String,
    /// Shape including the batch axis.
    pub shape: Vec<usize>,
    /// The values, in the element type the graph declares for the output.
    pub values: OutputValues,
}

/// An output's values, in the element type the graph declares.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputValues {
    /// float32 values, for every output but class indices.
    F32(Vec<f32>),
    /// int64 values: class indices, or an `ArgMax` layer's integer labels.
    I64(Vec<i64>),
}

/// One input's values for a run, in the element type the model declares for that input:
/// `batch × sample_len` values, row-major. Build it with [`InputValues::from_f32`] from
/// numbers read from a file, or directly from typed data.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum InputValues {
    /// float32 values, for an `F32` input.
    F32(Vec<f32>),
    /// Signed 8-bit input (quantized codes of a full-integer model).
    I8(Vec<i8>),
    /// Unsigned 8-bit input (quantized codes, or raw image bytes).
    U8(Vec<u8>),
    /// 64-bit integer input.
    I64(Vec<i64>),
}

impl InputValues {
    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            InputValues::F32(_) => DType::F32,
            InputValues::I8(_) => DType::I8,
            InputValues::U8(_) => DType::U8,
            InputValues::I64(_) => DType::I64,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            InputValues::F32(v) => v.len(),
            InputValues::I8(v) => v.len(),
            InputValues::U8(v) => v.len(),
            InputValues::I64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Converts numbers as read from a file (CSV, JSON, `.npy` all give `f32`) to the element
    /// type of `spec`. Float values must be finite; values for an integer input must be
    /// whole numbers within the type's range (no rounding, no saturation: a value that does
    /// not fit is almost always a wrong file, e.g. floats given to an int8 model).
    ///
    /// # Errors
    /// [`RuntimeError::InputValue`] for the first value that does not fit, naming its row
    /// (`first_row` + 1 for the first sample of `values`) and column within the sample.
    pub fn from_f32(
        spec: &TensorSpec,
        values: &[f32],
        first_row: usize,
    ) -> Result<InputValues, RuntimeError> {
        /// `values` as bytes when every one is a whole number in the 8-bit range
        /// (`signed`: two's complement).
        fn whole_bytes(values: &[f32], signed: bool) -> Option<Vec<u8>> {
            let mut bytes = vec![0u8; values.len()];
            crate::engine::kernels::whole_numbers_to_bytes(values, signed, &mut bytes)
                .then_some(bytes)
        }
        fn ints<T: TryFrom<i64>>(
            spec: &TensorSpec,
            values: &[f32],
            first_row: usize,
            (lo, hi): (i64, i64),
        ) -> Result<Vec<T>, RuntimeError> {
            // The common case first: every value whole and in range, checked by a
            // round trip through i64 (no `fract`, a libm call per value); anything else
            // goes through the loop below, which names the first value that does not fit.
            // Both accept the same values.
            let mut fast = Vec::with_capacity(values.len());
            for &v in values {
                let i = v as i64;
                match T::try_from(i) {
                    Ok(x) if i as f32 == v && (lo..=hi).contains(&i) => fast.push(x),
                    _ => break,
                }
            }
            if fast.len() == values.len() {
                return Ok(fast);
            }
            let sample_len = spec.sample_len().max(1);
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let whole = v.is_finite() && v.fract() == 0.0;
                    let reason = if !whole {
                        format!(
                            "is not a whole number; input {:?} takes {} values",
                            spec.name,
                            spec.dtype.name()
                        )
                    } else if (v as f64) < lo as f64 || (v as f64) > hi as f64 {
                        format!("is out of range for {} ({lo} to {hi})", spec.dtype.name())
                    } else if let Ok(x) = T::try_from(v as i64) {
                        return Ok(x);
                    } else {
                        format!("does not fit {}", spec.dtype.name())
                    };
                    Err(RuntimeError::InputValue {
                        name: spec.name.clone(),
                        row: first_row + i / sample_len + 1,
                        column: i % sample_len + 1,
                        value: v,
                        reason,
                    })
                })
                .collect()
        }
        Ok(match spec.dtype {
            DType::F32 => {
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    let sample_len = spec.sample_len().max(1);
                    return Err(RuntimeError::InputValue {
                        name: spec.name.clone(),
                        row: first_row + i / sample_len + 1,
                        column: i % sample_len + 1,
                        value: values[i],
                        reason: "is not a finite number".into(),
                    });
                }
                InputValues::F32(values.to_vec())
            }
            // The common case (every value fits) checked and converted by the kernels;
            // `ints` names the first value that does not fit.
            DType::I8 => InputValues::I8(match whole_bytes(values, true) {
                Some(b) => b.into_iter().map(|b| b as i8).collect(),
                None => ints(spec, values, first_row, (-128, 127))?,
            }),
            DType::U8 => InputValues::U8(match whole_bytes(values, false) {
                Some(b) => b,
                None => ints(spec, values, first_row, (0, 255))?,
            }),
            DType::I64 => InputValues::I64(ints(spec, values, first_row, (i64::MIN, i64::MAX))?),
        })
    }
}

enum Backend {
    Native(Box<Engine>),
    #[cfg(feature = "onnx")]
    Tract(Box<crate::onnx::OnnxModel>),
}

/// A loaded model on either backend.
pub struct Model {
    backend: Backend,
    info: ModelInfo,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("info", &self.info).finish()
    }
}

fn layer_counts(graph: &crate::graph::Graph) -> BTreeMap<String, usize> {
    let mut ops = BTreeMap::new();
    for n in &graph.nodes {
        *ops.entry(n.layer.kind().to_string()).or_insert(0) += 1;
    }
    ops
}

fn output_specs(graph: &crate::graph::Graph, engine: &Engine) -> Vec<TensorSpec> {
    graph
        .outputs
        .iter()
        .map(|o| {
            let (dtype, shape) = &engine.shapes().values[o.value as usize];
            TensorSpec {
                name: o.name.clone(),
                dtype: *dtype,
                shape: shape.iter().map(|&d| d as u32).collect(),
            }
        })
        .collect()
}

impl Model {
    /// Loads a `.perch` or `.onnx` model, choosing the engine as `choice` says.
    ///
    /// # Errors
    /// Unreadable or invalid files, ONNX without the `onnx` feature, `Native` requested for
    /// a graph with ops the native engine lacks.
    pub fn load(path: &Path, choice: EngineChoice) -> Result<Model, RuntimeError> {
        Self::load_within(path, choice, budget::DEFAULT_MAX_MEMORY_BYTES)
    }

    /// As [`Model::load`], refusing a model whose planned peak memory for one sample
    /// (weights, buffers, scratch: [`MemoryPlan`]) is over `max_memory_bytes` before the
    /// engine allocates anything for it.
    ///
    /// # Errors
    /// As [`Model::load`]; [`RuntimeError::Budget`] for a model over the limit.
    pub fn load_within(
        path: &Path,
        choice: EngineChoice,
        max_memory_bytes: u64,
    ) -> Result<Model, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if bytes.starts_with(&artifact::MAGIC) {
            return Self::from_artifact_bytes_within(&bytes, max_memory_bytes);
        }
        let is_onnx_name = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
        if !is_onnx_name && bytes.len() >= 8 && !looks_like_protobuf(&bytes) {
            return Err(RuntimeError::UnknownFormat {
                path: path.display().to_string(),
            });
        }
        Self::onnx_within(
            &bytes,
            choice,
            max_memory_bytes,
            &path.display().to_string(),
        )
    }

    /// Loads a native artifact from memory (within the default memory budget,
    /// [`budget::DEFAULT_MAX_MEMORY_BYTES`]).
    ///
    /// # Errors
    /// As [`artifact::decode`] and [`Engine::new`]; [`RuntimeError::Budget`].
    pub fn from_artifact_bytes(bytes: &[u8]) -> Result<Model, RuntimeError> {
        Self::from_artifact_bytes_within(bytes, budget::DEFAULT_MAX_MEMORY_BYTES)
    }

    /// Loads a native artifact from memory if its planned peak memory for one sample is
    /// within `max_memory_bytes`.
    ///
    /// # Errors
    /// As [`Model::from_artifact_bytes`].
    pub fn from_artifact_bytes_within(
        bytes: &[u8],
        max_memory_bytes: u64,
    ) -> Result<Model, RuntimeError> {
        let art = artifact::decode(bytes)?;
        Self::native(
            &art.model,
            bytes.len() as u64,
            Some(crate::util::to_hex(&art.sha256)),
            max_memory_bytes,
        )
    }

    /// Prepares a native model held in memory (a graph just trained or optimized, before it
    /// is written anywhere) for the native engine. Its info has no SHA-256 and a size of 0.
    ///
    /// # Errors
    /// As [`Engine::new`].
    pub fn from_native(model: &crate::graph::Model) -> Result<Model, RuntimeError> {
        Self::native(model, 0, None, budget::DEFAULT_MAX_MEMORY_BYTES)
    }

    /// Plans `graph`'s memory and checks it against `max_memory_bytes` for one sample.
    fn plan_within(
        graph: &crate::graph::Graph,
        max_memory_bytes: u64,
    ) -> Result<MemoryPlan, RuntimeError> {
        let shapes = graph.infer_shapes().map_err(EngineError::from)?;
        let plan = budget::plan_memory(graph, &shapes);
        budget::check_memory(&plan, 1, max_memory_bytes)?;
        Ok(plan)
    }

    fn native(
        model: &crate::graph::Model,
        size_bytes: u64,
        sha256: Option<String>,
        max_memory_bytes: u64,
    ) -> Result<Model, RuntimeError> {
        let plan = Self::plan_within(&model.graph, max_memory_bytes)?;
        let engine = Engine::new(&model.graph, 1)?;
        let info = ModelInfo {
            format: Format::Perch,
            engine: EngineKind::Native,
            inputs: model.graph.inputs.clone(),
            outputs: output_specs(&model.graph, &engine),
            ops: layer_counts(&model.graph),
            size_bytes,
            metadata: Some(model.metadata.clone()),
            notes: engine
                .kernel_choices()
                .iter()
                .map(|c| format!("sparse weight {c}"))
                .collect(),
            sha256,
            memory: Some(plan),
            arena_bytes: Some(engine.arena_bytes()),
        };
        Ok(Model {
            backend: Backend::Native(Box::new(engine)),
            info,
        })
    }

    /// Loads an ONNX model from memory.
    ///
    /// # Errors
    /// [`RuntimeError::OnnxNotCompiled`] without the `onnx` feature; else the backend's.
    pub fn from_onnx_bytes(bytes: &[u8], choice: EngineChoice) -> Result<Model, RuntimeError> {
        Self::onnx_within(
            bytes,
            choice,
            budget::DEFAULT_MAX_MEMORY_BYTES,
            "ONNX model",
        )
    }

    #[cfg(not(feature = "onnx"))]
    fn onnx_within(
        _bytes: &[u8],
        _choice: EngineChoice,
        _max_memory_bytes: u64,
        _label: &str,
    ) -> Result<Model, RuntimeError> {
        Err(RuntimeError::OnnxNotCompiled)
    }

    /// An ONNX model from memory; the native engine's memory plan checked against
    /// `max_memory_bytes` (tract plans its own and is not bounded here); `label` names it
    /// (its file) in tract's errors.
    #[cfg(feature = "onnx")]
    fn onnx_within(
        bytes: &[u8],
        choice: EngineChoice,
        max_memory_bytes: u64,
        label: &str,
    ) -> Result<Model, RuntimeError> {
        let proto = crate::onnx::parse(bytes)?;
        let mut notes = Vec::new();
        if choice != EngineChoice::Tract {
            match crate::convert::onnx_to_native(&proto) {
                Ok(model) => {
                    let plan = Self::plan_within(&model.graph, max_memory_bytes)?;
                    let engine = Engine::new(&model.graph, 1)?;
                    let ops = crate::onnx::op_counts(&proto);
                    let info = ModelInfo {
                        format: Format::Onnx,
                        engine: EngineKind::Native,
                        inputs: model.graph.inputs.clone(),
                        outputs: output_specs(&model.graph, &engine),
                        ops,
                        size_bytes: bytes.len() as u64,
                        metadata: Some(model.metadata.clone()),
                        notes,
                        sha256: None,
                        memory: Some(plan),
                        arena_bytes: Some(engine.arena_bytes()),
                    };
                    return Ok(Model {
                        backend: Backend::Native(Box::new(engine)),
                        info,
                    });
                }
                Err(e) if choice == EngineChoice::Native => {
                    return Err(RuntimeError::NotNative(e.to_string()));
                }
                Err(e) => notes.push(format!("runs on tract: {e}")),
            }
        }
        let onnx = crate::onnx::OnnxModel::from_proto_named(&proto, label)?;
        notes.extend(onnx.notes().iter().cloned());
        let info = ModelInfo {
            format: Format::Onnx,
            engine: EngineKind::Tract,
            inputs: onnx.inputs().to_vec(),
            outputs: onnx.outputs().to_vec(),
            ops: onnx.op_counts().clone(),
            size_bytes: bytes.len() as u64,
            metadata: None,
            notes,
            sha256: None,
            memory: None,
            arena_bytes: None,
        };
        Ok(Model {
            backend: Backend::Tract(Box::new(onnx)),
            info,
        })
    }

    /// What the model is and how it runs.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Gives back the memory a large batch made the native engine grow, or the plans tract
    /// built for batch sizes other than the one built at load.
    pub fn release_buffers(&mut self) {
        match &mut self.backend {
            Backend::Native(engine) => {
                if let Err(e) = engine.release() {
                    log::warn!("{e}");
                }
            }
            #[cfg(feature = "onnx")]
            Backend::Tract(model) => model.release_plans(),
        }
    }

    /// Checks that `shape` (as read from a file) holds whole samples for input 0 and
    /// returns the batch size.
    ///
    /// # Errors
    /// [`RuntimeError::InputShape`] naming both shapes.
    pub fn batch_of(&self, shape: &[usize], len: usize) -> Result<usize, RuntimeError> {
        let spec = &self.info.inputs[0];
        let sample_len = spec.sample_len();
        let err = || RuntimeError::InputShape {
            name: spec.name.clone(),
            expected: spec.shape.clone(),
            sample_len,
            got: shape.to_vec(),
        };
        if sample_len == 0 || len == 0 || !len.is_multiple_of(sample_len) {
            return Err(err());
        }
        let rows = shape.first().copied().unwrap_or(0);
        let per_row: usize = shape.iter().skip(1).product();
        // Whole rows of the file must be whole samples (or a single flat sample).
        if per_row != sample_len && !(shape.len() <= 2 && rows == 1 && len == sample_len) {
            return Err(err());
        }
        Ok(len / sample_len)
    }

    /// Runs a batch; `input` holds `batch × sample_len` values of the (single) input, as
    /// read from a file. For an input declared with an integer element type, the values
    /// are converted as [`InputValues::from_f32`] says.
    ///
    /// # Errors
    /// Wrong lengths, non-finite values, values that do not fit the input's element type,
    /// backend failures.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<Output>, RuntimeError> {
        let Some(spec) = self.info.inputs.first() else {
            return Err(RuntimeError::Inputs("the model has no inputs".into()));
        };
        if spec.dtype == DType::F32
            && let Backend::Native(engine) = &mut self.backend
        {
            engine.run(&[input], batch)?;
            return Ok(native_outputs(engine, &self.info.outputs, batch));
        }
        let values = InputValues::from_f32(spec, input, 0)?;
        self.run_values(std::slice::from_ref(&values), batch)
    }

    /// Runs a batch with one [`InputValues`] per model input, in the order of
    /// [`ModelInfo::inputs`], each in the element type that input declares.
    ///
    /// # Errors
    /// [`RuntimeError::Inputs`] for a wrong number of inputs or an element type other than
    /// the declared one; [`RuntimeError::InputShape`] for a length that is not `batch`
    /// samples; backend failures.
    pub fn run_values(
        &mut self,
        inputs: &[InputValues],
        batch: usize,
    ) -> Result<Vec<Output>, RuntimeError> {
        let specs = &self.info.inputs;
        if inputs.len() != specs.len() {
            return Err(RuntimeError::Inputs(format!(
                "the model takes {} inputs, {} given",
                specs.len(),
                inputs.len()
            )));
        }
        for (spec, values) in specs.iter().zip(inputs) {
            if values.dtype() != spec.dtype {
                return Err(RuntimeError::Inputs(format!(
                    "input {:?} takes {} values, {} given",
                    spec.name,
                    spec.dtype.name(),
                    values.dtype().name()
                )));
            }
            if batch == 0 || values.len() != batch * spec.sample_len() {
                return Err(RuntimeError::InputShape {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    sample_len: spec.sample_len(),
                    got: vec![values.len()],
                });
            }
        }
        match &mut self.backend {
            Backend::Native(engine) => {
                let mut typed = Vec::with_capacity(inputs.len());
                for (spec, values) in specs.iter().zip(inputs) {
                    typed.push(match values {
                        InputValues::F32(v) => crate::engine::InputData::F32(v),
                        InputValues::I8(v) => crate::engine::InputData::I8(v),
                        InputValues::U8(v) => crate::engine::InputData::U8(v),
                        InputValues::I64(_) => {
                            return Err(RuntimeError::Inputs(format!(
                                "input {:?}: the native engine takes float32, int8 or uint8 inputs, not int64",
                                spec.name
                            )));
                        }
                    });
                }
                engine.run_inputs(&typed, batch)?;
                Ok(native_outputs(engine, &self.info.outputs, batch))
            }
            #[cfg(feature = "onnx")]
            Backend::Tract(model) => {
                use tract_onnx::prelude::{Tensor, tract_ndarray::ArrayD};
                fn tensor<T: tract_onnx::prelude::Datum>(
                    shape: Vec<usize>,
                    v: &[T],
                ) -> Result<Tensor, RuntimeError> {
                    ArrayD::from_shape_vec(shape, v.to_vec())
                        .map(Tensor::from)
                        .map_err(|e| RuntimeError::Inputs(e.to_string()))
                }
                let mut tensors = Vec::with_capacity(inputs.len());
                for (spec, values) in specs.iter().zip(inputs) {
                    let mut shape = vec![batch];
                    shape.extend(spec.shape.iter().map(|&d| d as usize));
                    tensors.push(match values {
                        InputValues::F32(v) => tensor(shape, v)?,
                        InputValues::I8(v) => tensor(shape, v)?,
                        InputValues::U8(v) => tensor(shape, v)?,
                        InputValues::I64(v) => tensor(shape, v)?,
                    });
                }
                let outs = model.run(tensors)?;
                Ok(outs
                    .into_iter()
                    .zip(&self.info.outputs)
                    .map(|(v, spec)| match v {
                        crate::onnx::OnnxValue::F32(a) => Output {
                            name: spec.name.clone(),
                            shape: a.shape().to_vec(),
                            values: OutputValues::F32(a.iter().copied().collect()),
                        },
                        crate::onnx::OnnxValue::I64(a) => Output {
                            name: spec.name.clone(),
                            shape: a.shape().to_vec(),
                            values: OutputValues::I64(a.iter().copied().collect()),
                        },
                    })
                    .collect())
            }
        }
    }
}

fn native_outputs(engine: &Engine, specs: &[TensorSpec], batch: usize) -> Vec<Output> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut shape = vec![batch];
            shape.extend(spec.shape.iter().map(|&d| d as usize));
            let values = match spec.dtype {
                DType::F32 => OutputValues::F32(engine.output_f32(i).unwrap_or(&[]).to_vec()),
                DType::I64 => OutputValues::I64(engine.output_i64(i).unwrap_or(&[]).to_vec()),
                // Quantized codes, as the integers they are.
                DType::U8 => OutputValues::I64(
                    engine
                        .output_u8(i)
                        .unwrap_or(&[])
                        .iter()
                        .map(|&q| i64::from(q))
                        .collect(),
                ),
                DType::I8 => OutputValues::I64(
                    engine
                        .output_i8_bits(i)
                        .unwrap_or(&[])
                        .iter()
                        .map(|&q| i64::from(q as i8))
                        .collect(),
                ),
            };
            Output {
                name: spec.name.clone(),
                shape,
                values,
            }
        })
        .collect()
}

/// ONNX files are protobuf messages whose first field is usually `ir_version` (tag 0x08).
fn looks_like_protobuf(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x08)
}

fn canary_values(outputs: Vec<Output>) -> Vec<CanaryValues> {
    outputs
        .into_iter()
        .map(|o| match o.values {
            OutputValues::F32(v) => CanaryValues::F32(v),
            OutputValues::I64(v) => CanaryValues::I64(v),
        })
        .collect()
}

/// Runs `input` (one sample of the model's input) and records every output it gives as a
/// [`Canary`] with `tolerance` for float outputs: what `perch-host train` and `optimize`
/// attach to an artifact, and [`check_canary`] later verifies on the device.
///
/// # Errors
/// [`RuntimeError::Canary`] for a tolerance that is negative or not finite; otherwise the
/// run's errors (wrong length, non-finite input).
pub fn record_canary(
    model: &mut Model,
    input: &[f32],
    tolerance: f32,
) -> Result<Canary, RuntimeError> {
    if !tolerance.is_finite() || tolerance < 0.0 {
        return Err(RuntimeError::Canary(format!(
            "tolerance {tolerance} is not a finite number >= 0"
        )));
    }
    let outputs = canary_values(model.run(input, 1)?);
    Ok(Canary {
        input: input.to_vec(),
        outputs,
        tolerance,
    })
}

/// Runs the canary's input through `model` and compares the outputs with the recorded
/// ones: what the agent does before it installs a pushed model.
///
/// # Errors
/// A message saying why the model fails its canary: the input does not fit or does not
/// run, or the first output and position that differs.
pub fn check_canary(model: &mut Model, canary: &Canary) -> Result<(), String> {
    let outputs = model
        .run(&canary.input, 1)
        .map_err(|e| format!("canary input does not run: {e}"))?;
    canary.check(&canary_values(outputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Layer, Tensor};

    /// Two inputs → dense 3 → softmax (probabilities) and argmax (label).
    fn classifier(weight: Vec<f32>) -> crate::graph::Model {
        let dense = Layer::Dense {
            weight: Tensor::f32(vec![3, 2], weight),
            bias: None,
        };
        let mut model = crate::test_fixtures::chain(
            2,
            [
                ("dense", dense),
                ("softmax", Layer::Softmax),
                ("argmax", Layer::ArgMax { labels: None }),
            ],
            &[("probabilities", 2), ("label", 3)],
        );
        // The argmax reads the dense layer's scores, beside the softmax.
        model.graph.nodes[2].inputs = vec![1];
        model
    }

    #[test]
    fn a_recorded_canary_passes_on_its_model_and_fails_on_another() {
        let w = vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0];
        let mut m = Model::from_native(&classifier(w.clone())).unwrap();
        let canary = record_canary(&mut m, &[2.0, 0.5], 1e-4).unwrap();
        assert_eq!(canary.input, vec![2.0, 0.5]);
        assert!(
            matches!(&canary.outputs[..], [CanaryValues::F32(p), CanaryValues::I64(l)]
            if p.len() == 3 && l == &vec![0])
        );
        assert_eq!(check_canary(&mut m, &canary), Ok(()));

        // Slightly different weights: same label, probabilities beyond the tolerance.
        let mut nudged = w.clone();
        nudged[0] = 1.01;
        let mut other = Model::from_native(&classifier(nudged)).unwrap();
        let err = check_canary(&mut other, &canary).unwrap_err();
        assert!(err.contains("output 0"), "{err}");
        // Swapped rows: another label.
        let mut swapped =
            Model::from_native(&classifier(vec![0.0, 1.0, 1.0, 0.0, -1.0, -1.0])).unwrap();
        assert!(check_canary(&mut swapped, &canary).is_err());

        // A canary whose input does not fit says so rather than panicking.
        let mut short = canary.clone();
        short.input.pop();
        assert!(
            check_canary(&mut m, &short)
                .unwrap_err()
                .contains("does not run")
        );
        assert!(matches!(
            record_canary(&mut m, &[1.0, 2.0], f32::NAN),
            Err(RuntimeError::Canary(_))
        ));
        assert!(record_canary(&mut m, &[1.0, f32::INFINITY], 1e-4).is_err());
    }

    #[test]
    fn file_numbers_convert_to_the_declared_element_type_or_name_the_bad_value() {
        let spec = |dtype| TensorSpec {
            name: "x".into(),
            dtype,
            shape: vec![3],
        };
        assert_eq!(
            InputValues::from_f32(&spec(DType::I8), &[-128.0, 0.0, 127.0], 0).unwrap(),
            InputValues::I8(vec![-128, 0, 127])
        );
        assert_eq!(
            InputValues::from_f32(&spec(DType::U8), &[0.0, 255.0, 7.0], 0).unwrap(),
            InputValues::U8(vec![0, 255, 7])
        );
        let text = |dtype, values: &[f32], first_row| {
            InputValues::from_f32(&spec(dtype), values, first_row)
                .unwrap_err()
                .to_string()
        };
        // Row and column are 1-based; rows count from the call's first row.
        assert_eq!(
            text(DType::I8, &[1.0, 2.0, 3.0, 4.0, 128.0, 6.0], 10),
            "input \"x\", row 12, column 2: 128 is out of range for int8 (-128 to 127)"
        );
        assert_eq!(
            text(DType::U8, &[1.0, -1.0, 3.0], 0),
            "input \"x\", row 1, column 2: -1 is out of range for uint8 (0 to 255)"
        );
        assert_eq!(
            text(DType::I8, &[1.0, 2.0, 0.5], 0),
            "input \"x\", row 1, column 3: 0.5 is not a whole number; input \"x\" takes int8 values"
        );
        assert_eq!(
            InputValues::from_f32(&spec(DType::I8), &[-0.0, 1.0, 2.0], 0).unwrap(),
            InputValues::I8(vec![0, 1, 2])
        );
        assert!(text(DType::I8, &[1.0, -129.0, 0.0], 0).contains("column 2: -129 is out of range"));
        assert!(text(DType::U8, &[3.0, f32::NAN, 1.0], 0).contains("column 2: NaN is not a whole"));
        assert!(text(DType::F32, &[1.0, f32::NAN, 0.0], 0).contains("row 1, column 2"));
        assert!(text(DType::I64, &[1.0, 2.0, f32::INFINITY], 0).contains("column 3"));

        // run_values checks the count, element type and length before the backend.
        let mut m = Model::from_native(&classifier(vec![1.0; 6])).unwrap();
        let err = m.run_values(&[InputValues::I8(vec![1, 2])], 1).unwrap_err();
        assert!(
            err.to_string().contains("takes float32 values, int8 given"),
            "{err}"
        );
        assert!(m.run_values(&[], 1).is_err());
        assert!(matches!(
            m.run_values(&[InputValues::F32(vec![1.0; 3])], 1),
            Err(RuntimeError::InputShape { .. })
        ));
        assert_eq!(
            m.run_values(&[InputValues::F32(vec![0.3, 0.7])], 1)
                .unwrap(),
            m.run(&[0.3, 0.7], 1).unwrap()
        );
    }

    #[test]
    fn from_native_matches_the_artifact_path() {
        let model = classifier(vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0]);
        let bytes = artifact::encode(&model).unwrap();
        let mut a = Model::from_artifact_bytes(&bytes).unwrap();
        let mut b = Model::from_native(&model).unwrap();
        assert_eq!(
            a.run(&[0.3, 0.7], 1).unwrap(),
            b.run(&[0.3, 0.7], 1).unwrap()
        );
        assert_eq!(a.info().outputs, b.info().outputs);
        assert_eq!((b.info().size_bytes, b.info().sha256.as_deref()), (0, None));
        assert_eq!(a.info().size_bytes, bytes.len() as u64);
    }
}
