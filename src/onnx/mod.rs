//! The ONNX backend, on tract-onnx: load, declare input facts, optimize, run. Float and
//! quantized models (QDQ and QOperator forms); the ops tract lacks are implemented in
//! `ops` and registered with tract's ONNX op registry.
//!
//! # Plans per batch size
//! tract optimizes much better for known shapes: pinning the batch axis before
//! `into_optimized` ran the issue-12 CNNs 1.7–6× faster than one plan with a symbolic batch,
//! and a symbolic batch cannot type the `Shape → Slice → Concat → Reshape` chain tf2onnx
//! emits for a Keras `Flatten`. So an [`OnnxModel`] keeps the parsed graph and builds one
//! optimized plan per batch size it is run with: batch 1 at load (what the agent and `perch
//! bench` use, and what the model's output shapes come from; always kept), others on first
//! use, at most [`MAX_PLANS`] kept (least recently used dropped). Batches over
//! [`MAX_PLAN_BATCH`] run in chunks of that size, so the cache and each plan's buffers stay
//! bounded. A model whose file fixes its batch axis runs in chunks of that size. No plan is
//! built with a symbolic batch, so nothing here needs tract to fold a shape computation it
//! cannot.
//!
//! # Element types
//! Graph inputs keep the element type the file declares: float32, int8 and uint8 are fed
//! as such; float16/float64 inputs take float32 values (cast on entry), and 16/32-bit integer
//! inputs take int64 values (range-checked, then cast).
//!
//! # Panics inside tract
//! tract can panic on malformed graphs (a one-byte-mutated model reached `no entry found for
//! key` in its parser). Every call into tract here runs under `catch_unwind` and a panic
//! becomes [`OnnxError::Panic`] naming the model file; the known cases are refused before
//! tract sees them, which also covers builds with `panic = "abort"`.

use crate::graph::{DType, TensorSpec};
use std::collections::BTreeMap;
use std::path::Path;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

#[doc(hidden)]
pub mod fixups;
pub(crate) mod ops;

/// Why an ONNX model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The bytes are not an ONNX model tract can read, or tract could not type or
    /// optimize the graph (the message names the node).
    #[error("loading ONNX model: {0:#}")]
    Load(anyhow::Error),
    /// An input's shape is not `[batch, ...fixed dims]`, or its element type is one perch
    /// cannot feed.
    #[error("input {name:?}: {reason}")]
    InputShape {
        /// Input name.
        name: String,
        /// What is unsupported.
        reason: String,
    },
    /// The tensors given to [`OnnxModel::run`] do not fit the model's inputs.
    #[error("input {name:?}: {reason}")]
    Input {
        /// Input name.
        name: String,
        /// What does not fit.
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
    /// tract panicked; the panic was caught. Usually a damaged or unusual model file.
    #[error(
        "{model}: tract panicked while {stage}: {message}; the file is probably damaged (if onnxruntime runs it, this is a bug in tract or perch)"
    )]
    Panic {
        /// What perch asked tract to do (`loading`, `optimizing for batch 4`, `running`).
        stage: String,
        /// The model file, or `ONNX model` when loaded from memory.
        model: String,
        /// The panic's message.
        message: String,
    },
}

/// An output value of an ONNX model.
#[derive(Debug, Clone, PartialEq)]
pub enum OnnxValue {
    /// Float output.
    F32(tract_ndarray::ArrayD<f32>),
    /// Integer output (labels, and the quantized codes of int8/uint8 outputs), widened.
    I64(tract_ndarray::ArrayD<i64>),
}

/// Most optimized plans an [`OnnxModel`] keeps (one per batch size).
pub const MAX_PLANS: usize = 4;

/// Largest batch one plan is built for; larger runs go in chunks of this many samples.
pub const MAX_PLAN_BATCH: usize = 64;

/// One graph input: how perch declares and feeds it.
#[derive(Debug, Clone)]
struct InputSlot {
    /// The element type the file declares.
    declared: DatumType,
    /// Per-sample dims (after the batch axis).
    dims: Vec<usize>,
}

/// One optimized plan with a run state kept for reuse: a fresh state per call costs an
/// allocation per node.
#[derive(Debug)]
struct Plan {
    plan: Arc<TypedRunnableModel>,
    /// Idle state; a call takes it (or makes one if another call holds it) and puts it back.
    state: std::sync::Mutex<Option<TypedSimpleState>>,
}

impl Plan {
    fn new(plan: Arc<TypedRunnableModel>) -> Arc<Plan> {
        Arc::new(Plan {
            plan,
            state: std::sync::Mutex::new(None),
        })
    }

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let idle = self.state.try_lock().ok().and_then(|mut s| s.take());
        let mut state = match idle {
            Some(state) => state,
            None => self.plan.spawn()?,
        };
        let outs = state.run(inputs)?;
        // Only a state that finished its run goes back (an error or a panic drops it).
        if let Ok(mut slot) = self.state.try_lock() {
            *slot = Some(state);
        }
        Ok(outs)
    }
}

/// Optimized plans by batch size, least recently used first.
#[derive(Debug, Default)]
struct Plans {
    entries: Vec<(usize, Arc<Plan>)>,
}

impl Plans {
    fn get(&mut self, batch: usize) -> Option<Arc<Plan>> {
        let at = self.entries.iter().position(|(b, _)| *b == batch)?;
        let entry = self.entries.remove(at);
        let plan = entry.1.clone();
        self.entries.push(entry);
        Some(plan)
    }

    /// Adds `batch`'s plan, dropping the least recently used one other than `keep` (the
    /// plan built at load) when the cache is full.
    fn insert(&mut self, batch: usize, plan: Arc<Plan>, keep: usize) {
        self.entries.retain(|(b, _)| *b != batch);
        if self.entries.len() >= MAX_PLANS
            && let Some(at) = self.entries.iter().position(|(b, _)| *b != keep)
        {
            self.entries.remove(at);
        }
        self.entries.push((batch, plan));
    }
}

/// An ONNX model ready to run on tract.
#[derive(Debug)]
pub struct OnnxModel {
    /// The parsed graph, input facts not yet pinned: each plan starts from a clone.
    template: InferenceModel,
    slots: Vec<InputSlot>,
    /// The batch size the file fixes for every input, if it does.
    fixed_batch: Option<usize>,
    plans: std::sync::Mutex<Plans>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    op_counts: BTreeMap<String, usize>,
    notes: Vec<String>,
    /// Names the model in errors: its file, or `ONNX model`.
    label: String,
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
    guarded("parsing", "ONNX model", || {
        parser()
            .proto_model_for_read(&mut &bytes[..])
            .map_err(OnnxError::Load)
    })
}

thread_local! {
    /// Set while this thread runs inside [`guarded`]: the panic hook then records where a
    /// panic happened instead of printing it.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once) a panic hook that stays quiet for panics [`guarded`] catches, and hands
/// every other panic to the hook that was there before. Not in `panic = "abort"` builds,
/// where a panic ends the process and its message is all the user gets.
fn quiet_guarded_panics() {
    #[cfg(not(panic = "abort"))]
    {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if GUARDED.with(|g| g.get()) {
                    let at = info.location().map(|l| {
                        // From the crate's folder on: `tract-core-0.23.9/src/ops/...rs:75`.
                        let file = l.file();
                        let short = file.find("/tract-").map_or(file, |i| &file[i + 1..]);
                        format!("{short}:{}", l.line())
                    });
                    PANIC_AT.with(|p| *p.borrow_mut() = at);
                } else {
                    previous(info);
                }
            }));
        });
    }
}

/// Runs `f`, turning a panic into [`OnnxError::Panic`].
fn guarded<T>(
    stage: &str,
    model: &str,
    f: impl FnOnce() -> Result<T, OnnxError>,
) -> Result<T, OnnxError> {
    quiet_guarded_panics();
    let outer = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.unwrap_or_else(|payload| {
        let mut message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        if let Some(at) = PANIC_AT.with(|p| p.borrow_mut().take()) {
            message = format!("{message} (at {at})");
        }
        Err(OnnxError::Panic {
            stage: stage.into(),
            model: model.into(),
            message,
        })
    })
}

/// Refuses graphs that reach known panics in tract-onnx's parser: a graph output, node input
/// or node output that names nothing, and outputs named twice.
fn check_names(proto: &tract_onnx::pb::ModelProto) -> Result<(), OnnxError> {
    let Some(g) = &proto.graph else {
        return Err(OnnxError::Load(anyhow::anyhow!("the model has no graph")));
    };
    let mut defined: std::collections::HashSet<&str> = g
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(g.initializer.iter().map(|t| t.name.as_str()))
        .collect();
    for node in &g.node {
        defined.extend(
            node.output
                .iter()
                .filter(|o| !o.is_empty())
                .map(String::as_str),
        );
    }
    for out in &g.output {
        if !defined.contains(out.name.as_str()) {
            return Err(OnnxError::Load(anyhow::anyhow!(
                "graph output {:?} is not produced by any node, input or initializer",
                out.name
            )));
        }
    }
    Ok(())
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

/// How perch feeds an input the file declares as `dt` (`None`: it cannot).
fn fed_as(dt: DatumType) -> Option<DType> {
    use DatumType as D;
    match dt {
        D::F16 | D::F32 | D::F64 => Some(DType::F32),
        D::I8 => Some(DType::I8),
        D::U8 => Some(DType::U8),
        D::I16 | D::I32 | D::I64 | D::U16 | D::U32 => Some(DType::I64),
        _ => None,
    }
}

/// What perch reports an output of tract type `dt` as (`None`: it cannot).
fn reported_as(dt: DatumType) -> Option<DType> {
    if dt.is_float() {
        Some(DType::F32)
    } else if dt == DatumType::I8 {
        Some(DType::I8)
    } else if dt == DatumType::U8 {
        Some(DType::U8)
    } else if dt.is_integer() || dt == bool::datum_type() || dt == TDim::datum_type() {
        Some(DType::I64)
    } else {
        None
    }
}

impl OnnxModel {
    /// Loads the model at `path`, checks its inputs and builds its batch-1 plan.
    ///
    /// # Errors
    /// [`OnnxError::Load`] for unreadable files, unsupported ops or graphs tract cannot
    /// type; [`OnnxError::InputShape`] for inputs other than `[batch, fixed...]` or of an
    /// element type perch cannot feed; [`OnnxError::Panic`] when tract panics.
    pub fn load(path: &Path) -> Result<OnnxModel, OnnxError> {
        let bytes = std::fs::read(path)
            .map_err(|e| OnnxError::Load(anyhow::anyhow!("reading {}: {e}", path.display())))?;
        let proto = parse(&bytes)?;
        Self::from_proto_named(&proto, &path.display().to_string())
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
        Self::from_proto_named(proto, "ONNX model")
    }

    /// Like [`OnnxModel::from_proto`]; `label` names the model (its file) in errors.
    ///
    /// # Errors
    /// As [`OnnxModel::load`].
    pub fn from_proto_named(
        proto: &tract_onnx::pb::ModelProto,
        label: &str,
    ) -> Result<OnnxModel, OnnxError> {
        check_names(proto)?;
        let (op_counts, mut notes) = count_ops(proto);
        let template = guarded("loading", label, || {
            parser()
                .model_for_proto_model(proto)
                .map_err(OnnxError::Load)
        })?;
        let mut slots = Vec::new();
        let mut inputs = Vec::new();
        let mut fixed_batches = Vec::new();
        for ix in 0..template.inputs.len() {
            let name = template.node(template.inputs[ix].node).name.clone();
            let fact = template.input_fact(ix).map_err(OnnxError::Load)?;
            let Some(declared) = fact.datum_type.concretize() else {
                return Err(OnnxError::InputShape {
                    name,
                    reason: "the file declares no element type".into(),
                });
            };
            let Some(dtype) = fed_as(declared) else {
                return Err(OnnxError::InputShape {
                    name,
                    reason: format!(
                        "element type {declared:?} is not supported (perch feeds float, int8, uint8 and 16 to 64-bit integer inputs)"
                    ),
                });
            };
            let rank = fact.shape.rank().concretize().map(|r| r as usize);
            let Some(rank) = rank.filter(|&r| r >= 1) else {
                return Err(OnnxError::InputShape {
                    name,
                    reason: "rank unknown or 0 (perch needs a leading batch axis)".into(),
                });
            };
            let dims: Vec<Option<i64>> = fact
                .shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
                .collect();
            let mut sample = Vec::new();
            for (axis, d) in dims.iter().enumerate().take(rank).skip(1) {
                match d {
                    Some(v) if *v > 0 && *v <= u32::MAX as i64 => sample.push(*v as usize),
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
            if let Some(Some(b)) = dims.first() {
                if *b < 1 {
                    return Err(OnnxError::InputShape {
                        name,
                        reason: format!("batch axis of size {b}"),
                    });
                }
                fixed_batches.push(*b as usize);
            }
            if dtype == DType::F32 && declared != DatumType::F32 {
                notes.push(format!(
                    "input {name:?} is {declared:?} in the model: perch casts float32 values to it"
                ));
            } else if dtype == DType::I64 && declared != DatumType::I64 {
                notes.push(format!(
                    "input {name:?} is {declared:?} in the model: perch range-checks integer values and casts them"
                ));
            }
            inputs.push(TensorSpec {
                name,
                dtype,
                shape: sample.iter().map(|&d| d as u32).collect(),
            });
            slots.push(InputSlot {
                declared,
                dims: sample,
            });
        }
        // A batch the file fixes must agree across inputs to mean anything.
        let fixed_batch = match fixed_batches.first() {
            Some(&b) if fixed_batches.iter().all(|&x| x == b) => {
                if b != 1 || fixed_batches.len() == slots.len() {
                    notes.push(format!(
                        "the file fixes the batch axis at {b}: perch runs {b} sample(s) per call"
                    ));
                }
                Some(b)
            }
            Some(_) => {
                return Err(OnnxError::Load(anyhow::anyhow!(
                    "the inputs fix different batch sizes ({fixed_batches:?})"
                )));
            }
            None => None,
        };
        let mut model = OnnxModel {
            template,
            slots,
            fixed_batch,
            plans: Default::default(),
            inputs,
            outputs: Vec::new(),
            op_counts,
            notes,
            label: label.to_string(),
        };
        let first = model.fixed_batch.unwrap_or(1);
        let plan = model.build_plan(first)?;
        model.outputs = output_specs(&plan)?;
        model.plans_lock().insert(first, Plan::new(plan), first);
        Ok(model)
    }

    fn plans_lock(&self) -> std::sync::MutexGuard<'_, Plans> {
        // A panic while holding the lock cannot leave the cache inconsistent.
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Types and optimizes the graph for `batch` samples per call.
    fn build_plan(&self, batch: usize) -> Result<Arc<TypedRunnableModel>, OnnxError> {
        guarded(
            &format!("optimizing for batch {batch}"),
            &self.label,
            || {
                let mut model = self.template.clone();
                for (ix, slot) in self.slots.iter().enumerate() {
                    let shape: TVec<usize> = std::iter::once(batch)
                        .chain(slot.dims.iter().copied())
                        .collect();
                    model
                        .set_input_fact(ix, InferenceFact::dt_shape(slot.declared, shape))
                        .map_err(OnnxError::Load)?;
                }
                let mut typed = model.into_typed().map_err(OnnxError::Load)?;
                fixups::guard_quantized_softmax(&mut typed).map_err(OnnxError::Load)?;
                typed
                    .into_optimized()
                    .and_then(|t| t.into_runnable())
                    .map_err(OnnxError::Load)
            },
        )
    }

    /// The plan for `batch`, built on first use.
    fn plan(&self, batch: usize) -> Result<Arc<Plan>, OnnxError> {
        if let Some(plan) = self.plans_lock().get(batch) {
            return Ok(plan);
        }
        // Built outside the lock: other batch sizes keep running meanwhile.
        let plan = Plan::new(self.build_plan(batch)?);
        self.plans_lock()
            .insert(batch, plan.clone(), self.fixed_batch.unwrap_or(1));
        Ok(plan)
    }

    /// Drops every plan but the one built at load (batch 1, or the batch the file fixes),
    /// with their run states: what a large run left behind.
    pub fn release_plans(&self) {
        let first = self.fixed_batch.unwrap_or(1);
        self.plans_lock().entries.retain(|(b, _)| *b == first);
    }

    /// The batch sizes that have an optimized plan now, least recently used first.
    pub fn planned_batches(&self) -> Vec<usize> {
        self.plans_lock().entries.iter().map(|(b, _)| *b).collect()
    }

    /// The inputs, each `[batch, ...shape]`, with the element type perch feeds them as.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The outputs, per sample (from the batch-1 plan).
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

    /// Runs the model on one tensor per graph input, each `[batch, ...]`, in the element
    /// type [`OnnxModel::inputs`] gives for it (float32 for float inputs, int64 for 16/32-bit
    /// integer inputs). Runs of more than [`MAX_PLAN_BATCH`] samples, or of more than the
    /// batch the file fixes, go in chunks whose outputs are concatenated.
    ///
    /// # Errors
    /// [`OnnxError::Input`] for tensors that do not fit the inputs; [`OnnxError::Run`] when
    /// tract fails; [`OnnxError::Panic`] when it panics; [`OnnxError::OutputType`] for
    /// outputs of other element types.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<OnnxValue>, OnnxError> {
        let batch = self.check_inputs(&inputs)?;
        let chunk = match self.fixed_batch {
            Some(fixed) => {
                if !batch.is_multiple_of(fixed) {
                    return Err(OnnxError::Input {
                        name: self.inputs[0].name.clone(),
                        reason: format!(
                            "the model fixes its batch at {fixed}; {batch} samples given (give a multiple of {fixed})"
                        ),
                    });
                }
                fixed
            }
            None => MAX_PLAN_BATCH,
        };
        if batch <= chunk {
            return self.run_batch(inputs, batch);
        }
        let mut parts: Vec<Vec<OnnxValue>> = Vec::new();
        let mut start = 0;
        while start < batch {
            let end = (start + chunk).min(batch);
            let slice = inputs
                .iter()
                .map(|t| t.slice(0, start, end))
                .collect::<TractResult<Vec<_>>>()
                .map_err(OnnxError::Run)?;
            let outs = self.run_batch(slice, end - start)?;
            for (spec, out) in self.outputs.iter().zip(&outs) {
                let first = match out {
                    OnnxValue::F32(a) => a.shape().first().copied(),
                    OnnxValue::I64(a) => a.shape().first().copied(),
                };
                if first != Some(end - start) {
                    return Err(OnnxError::Run(anyhow::anyhow!(
                        "output {:?} has no batch axis (shape for {} samples starts with {first:?}), so runs of more than {chunk} samples cannot be split; run at most {chunk} at once",
                        spec.name,
                        end - start
                    )));
                }
            }
            parts.push(outs);
            start = end;
        }
        concat_outputs(parts)
    }

    /// Checks the tensors against the inputs, casts those fed in a wider type, and returns
    /// the batch size.
    fn check_inputs(&self, inputs: &[Tensor]) -> Result<usize, OnnxError> {
        if inputs.len() != self.slots.len() {
            return Err(OnnxError::Input {
                name: self
                    .inputs
                    .first()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                reason: format!(
                    "the model takes {} inputs, {} given",
                    self.slots.len(),
                    inputs.len()
                ),
            });
        }
        let mut batch = None;
        for ((t, slot), spec) in inputs.iter().zip(&self.slots).zip(&self.inputs) {
            let bad = |reason: String| OnnxError::Input {
                name: spec.name.clone(),
                reason,
            };
            let fed = fed_as(t.datum_type());
            if fed != Some(spec.dtype) {
                return Err(bad(format!(
                    "takes {} values, {:?} given",
                    spec.dtype.name(),
                    t.datum_type()
                )));
            }
            let shape = t.shape();
            if shape.len() != slot.dims.len() + 1 || shape[1..] != slot.dims[..] {
                return Err(bad(format!(
                    "takes [batch, {}], shape {shape:?} given",
                    slot.dims
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            match batch {
                None if shape[0] == 0 => return Err(bad("batch of 0 samples".into())),
                None => batch = Some(shape[0]),
                Some(b) if b != shape[0] => {
                    return Err(bad(format!(
                        "{} samples, but the first input has {b}",
                        shape[0]
                    )));
                }
                Some(_) => {}
            }
        }
        batch.ok_or_else(|| OnnxError::Input {
            name: String::new(),
            reason: "the model has no inputs".into(),
        })
    }

    /// Casts each input from the type perch feeds to the type the file declares.
    fn to_declared(&self, inputs: Vec<Tensor>) -> Result<TVec<TValue>, OnnxError> {
        inputs
            .into_iter()
            .zip(&self.slots)
            .zip(&self.inputs)
            .map(|((t, slot), spec)| {
                if t.datum_type() == slot.declared {
                    return Ok(t.into());
                }
                if spec.dtype == DType::I64 {
                    let (lo, hi) = int_range(slot.declared);
                    let values = t.to_plain_array_view::<i64>().map_err(OnnxError::Run)?;
                    if let Some((i, v)) = values
                        .iter()
                        .enumerate()
                        .find(|(_, v)| **v < lo || **v > hi)
                    {
                        let per_sample = slot.dims.iter().product::<usize>().max(1);
                        return Err(OnnxError::Input {
                            name: spec.name.clone(),
                            reason: format!(
                                "row {}, column {}: {} is out of range for {:?} ({lo} to {hi})",
                                i / per_sample + 1,
                                i % per_sample + 1,
                                v,
                                slot.declared
                            ),
                        });
                    }
                }
                t.cast_to_dt(slot.declared)
                    .map(|c| c.into_owned().into())
                    .map_err(OnnxError::Run)
            })
            .collect()
    }

    /// Runs one batch of at most the plan size.
    fn run_batch(&self, inputs: Vec<Tensor>, batch: usize) -> Result<Vec<OnnxValue>, OnnxError> {
        let inputs = self.to_declared(inputs)?;
        let plan = self.plan(batch)?;
        let outs = guarded("running", &self.label, || {
            plan.run(inputs).map_err(OnnxError::Run)
        })?;
        outs.into_iter()
            .zip(&self.outputs)
            .map(|(t, spec)| {
                let t = t.into_tensor();
                let dt = t.datum_type();
                match reported_as(dt) {
                    Some(DType::F32) if dt == f32::datum_type() => Ok(OnnxValue::F32(
                        t.into_plain_array::<f32>().map_err(OnnxError::Run)?,
                    )),
                    Some(DType::F32) => {
                        let t = t.cast_to::<f32>().map_err(OnnxError::Run)?.into_owned();
                        Ok(OnnxValue::F32(
                            t.into_plain_array::<f32>().map_err(OnnxError::Run)?,
                        ))
                    }
                    Some(_) => {
                        let t = t.cast_to::<i64>().map_err(OnnxError::Run)?.into_owned();
                        Ok(OnnxValue::I64(
                            t.into_plain_array::<i64>().map_err(OnnxError::Run)?,
                        ))
                    }
                    None => Err(OnnxError::OutputType {
                        name: spec.name.clone(),
                        dtype: format!("{dt:?}"),
                    }),
                }
            })
            .collect()
    }
}

/// The inclusive range of an integer datum type, as i64.
fn int_range(dt: DatumType) -> (i64, i64) {
    use DatumType as D;
    match dt {
        D::I8 => (i8::MIN.into(), i8::MAX.into()),
        D::U8 => (0, u8::MAX.into()),
        D::I16 => (i16::MIN.into(), i16::MAX.into()),
        D::U16 => (0, u16::MAX.into()),
        D::I32 => (i32::MIN.into(), i32::MAX.into()),
        D::U32 => (0, u32::MAX.into()),
        _ => (i64::MIN, i64::MAX),
    }
}

/// Output specs of a plan: per-sample shapes (the batch axis dropped) and element types.
fn output_specs(plan: &TypedRunnableModel) -> Result<Vec<TensorSpec>, OnnxError> {
    let model = plan.model();
    let mut outputs = Vec::new();
    for (ix, outlet) in model.outputs.iter().enumerate() {
        let fact = model.output_fact(ix).map_err(OnnxError::Load)?;
        let name = model
            .outlet_label(*outlet)
            .map(str::to_string)
            .unwrap_or_else(|| model.node(outlet.node).name.clone());
        let Some(dtype) = reported_as(fact.datum_type) else {
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
    Ok(outputs)
}

/// Concatenates chunked outputs along the batch axis.
fn concat_outputs(parts: Vec<Vec<OnnxValue>>) -> Result<Vec<OnnxValue>, OnnxError> {
    let n = parts.first().map_or(0, Vec::len);
    let axis = tract_ndarray::Axis(0);
    (0..n)
        .map(|i| {
            let views = || parts.iter().map(move |p| &p[i]);
            if let Some(OnnxValue::F32(_)) = parts[0].get(i) {
                let arrays: Vec<_> = views()
                    .filter_map(|v| match v {
                        OnnxValue::F32(a) => Some(a.view()),
                        OnnxValue::I64(_) => None,
                    })
                    .collect();
                tract_ndarray::concatenate(axis, &arrays).map(OnnxValue::F32)
            } else {
                let arrays: Vec<_> = views()
                    .filter_map(|v| match v {
                        OnnxValue::I64(a) => Some(a.view()),
                        OnnxValue::F32(_) => None,
                    })
                    .collect();
                tract_ndarray::concatenate(axis, &arrays).map(OnnxValue::I64)
            }
            .map_err(|e| OnnxError::Run(anyhow::anyhow!("joining chunked outputs: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_turns_a_panic_into_an_error_with_its_place_and_stays_usable() {
        let err = guarded::<()>("running", "m.onnx", || panic!("boom {}", 7)).unwrap_err();
        match &err {
            OnnxError::Panic {
                stage,
                model,
                message,
            } => {
                assert_eq!((stage.as_str(), model.as_str()), ("running", "m.onnx"));
                assert!(message.starts_with("boom 7"), "{message}");
                #[cfg(not(panic = "abort"))]
                assert!(message.contains("src/onnx/mod.rs:"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("m.onnx: tract panicked while running: boom 7")
        );
        // Nested calls restore the flag; results and errors pass through unchanged.
        let nested = guarded("outer", "m", || guarded("inner", "m", || Ok(3)));
        assert_eq!(nested.unwrap(), 3);
        assert!(!GUARDED.with(|g| g.get()));
        let plain = guarded::<()>("x", "m", || Err(OnnxError::Run(anyhow::anyhow!("no"))));
        assert!(matches!(plain, Err(OnnxError::Run(_))));
    }
}
