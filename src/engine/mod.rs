//! Executes a native graph. Everything is decided once, when the engine is built for a
//! batch capacity: shapes, each value's memory layout (feature maps channels-innermost),
//! fusion, kernels with their packed weights, and one memory plan (an arena per element
//! type, sized from the graph; `arena.rs`). [`Engine::run`] then performs no heap
//! allocation for any batch up to that capacity (a larger batch grows the arena once).
//!
//! # Layout
//! [`Engine::new`] is the pipeline: infer shapes, plan fusion (`fuse.rs`), lower
//! (`lower.rs`: layouts from `layout.rs`, kernels with packed weights, the timed choice
//! between sparse and dense kernels from `choose.rs`, the memory plan from `arena.rs`).
//! - `fuse.rs`: which node folds into its producer.
//! - `lower.rs`: the graph becomes a program of prepared steps.
//! - `choose.rs`: the sparse-or-dense kernel choice, timed.
//! - `arena.rs`: the memory plan.
//! - `codemaps.rs`: chains of u8-to-u8 steps merged into lookup tables after lowering.
//! - `exec.rs`: the steps and their execution; `ops.rs`: the engine's own small loops.
//! - `quant.rs`: the int8 dense layer and the dynamically quantized convolution.
//! - `kernels/`: the compute kernels.

use crate::graph::{DType, Graph, GraphError, ValueShapes};

mod arena;
mod buffer;
mod choose;
mod codemaps;
mod exec;
mod fuse;
#[doc(hidden)] // public for the kernel benches only
pub mod kernels;
mod layout;
mod lower;
mod ops;
mod quant;

pub use choose::KernelChoice;

/// Why a graph cannot be executed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum EngineError {
    /// The graph failed validation.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// `run` got the wrong number of inputs.
    #[error("model takes {expected} input(s), got {got}")]
    InputCount {
        /// Inputs the graph declares.
        expected: usize,
        /// Inputs the caller passed.
        got: usize,
    },
    /// An input slice does not hold `batch` samples.
    #[error(
        "input {index} ({name:?}): expected {batch} × {sample_len} = {expected} values, got {got}"
    )]
    InputLength {
        /// 0-based position of the input in the graph.
        index: usize,
        /// The input's name in the graph.
        name: String,
        /// Samples in the run.
        batch: usize,
        /// Values per sample.
        sample_len: usize,
        /// `batch * sample_len`.
        expected: usize,
        /// Values the caller passed.
        got: usize,
    },
    /// An input holds NaN or infinity.
    #[error(
        "input {index} ({name:?}): value {position} (sample {sample}, feature {feature}) is {value}, not a finite number"
    )]
    NonFinite {
        /// 0-based position of the input in the graph.
        index: usize,
        /// The input's name in the graph.
        name: String,
        /// 0-based index into the input slice (`sample * sample_len + feature`).
        position: usize,
        /// 0-based sample (row) within the batch.
        sample: usize,
        /// Index within the sample.
        feature: usize,
        /// The offending value (NaN or ±infinity).
        value: f32,
    },
    /// Batch of zero samples.
    #[error("batch size must be at least 1")]
    EmptyBatch,
    /// Buffers could not be allocated.
    #[error("out of memory: cannot allocate {bytes} bytes of buffers for this batch")]
    OutOfMemory {
        /// Bytes of the allocation that failed.
        bytes: u128,
    },
    /// An input of another element type than the model's.
    #[error("input {index} ({name:?}): the model takes {} values, got {}", expected.name(), got.name())]
    InputType {
        /// 0-based position of the input in the graph.
        index: usize,
        /// The input's name in the graph.
        name: String,
        /// The model's element type.
        expected: DType,
        /// The element type of the values passed.
        got: DType,
    },
    /// A layer this engine cannot plan.
    #[error("{node}: the engine cannot run a {layer} layer here: {reason}")]
    Unsupported {
        /// The node's name in the graph.
        node: String,
        /// The layer's short name, as [`Layer::kind`](crate::graph::Layer::kind) gives it (`dense`, …).
        layer: &'static str,
        /// What about the layer or its neighbours the engine cannot plan.
        reason: String,
    },
}

/// One input of a run: float numbers, or quantized codes for a model whose input is
/// int8 / uint8.
#[derive(Debug, Clone, Copy)]
pub enum InputData<'a> {
    /// float32 values, for an `F32` input.
    F32(&'a [f32]),
    /// int8 codes, for an `I8` input (revision 1.3 graphs).
    I8(&'a [i8]),
    /// uint8 codes, for a `U8` input (revision 1.3 graphs).
    U8(&'a [u8]),
}

impl InputData<'_> {
    fn len(&self) -> usize {
        match self {
            InputData::F32(v) => v.len(),
            InputData::I8(v) => v.len(),
            InputData::U8(v) => v.len(),
        }
    }

    fn dtype(&self) -> DType {
        match self {
            InputData::F32(_) => DType::F32,
            InputData::I8(_) => DType::I8,
            InputData::U8(_) => DType::U8,
        }
    }
}

/// A graph ready to run. Not `Sync`: give each thread its own engine.
pub struct Engine {
    program: lower::Program,
    arenas: exec::Arenas,
    scratch: exec::Scratch,
    shapes: ValueShapes,
    input_names: Vec<String>,
    input_dtypes: Vec<DType>,
    capacity: usize,
    batch: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("steps", &self.program.steps.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Engine {
    /// Validates `graph`, plans layouts and memory, prepares every layer's kernel and sizes
    /// the arena for `batch_capacity` samples.
    ///
    /// # Errors
    /// [`EngineError::Graph`] when the graph is inconsistent or its memory plan too large.
    pub fn new(graph: &Graph, batch_capacity: usize) -> Result<Engine, EngineError> {
        let shapes = graph.infer_shapes()?;
        let fusion = fuse::plan(graph);
        let program = lower::lower(graph, &shapes, &fusion)?;
        let scratch = exec::Scratch {
            f32: zeroed(program.scratch_f32)?,
            u8: zeroed(program.scratch_u8)?,
        };
        let mut engine = Engine {
            program,
            arenas: exec::Arenas::default(),
            scratch,
            shapes,
            input_names: graph.inputs.iter().map(|s| s.name.clone()).collect(),
            input_dtypes: graph.inputs.iter().map(|s| s.dtype).collect(),
            capacity: 0,
            batch: 0,
        };
        engine.reserve(batch_capacity.max(1))?;
        Ok(engine)
    }

    /// Grows the arena to hold `batch` samples (allocates; `run` calls it when needed).
    ///
    /// # Errors
    /// [`EngineError::OutOfMemory`] when the arena cannot be allocated (the engine keeps
    /// none then, and grows it again at the next run).
    pub fn reserve(&mut self, batch: usize) -> Result<(), EngineError> {
        if batch <= self.capacity {
            return Ok(());
        }
        // Free the old arena first, and allocate fallibly: a batch or a model too large
        // for this machine is an error to report, not an abort.
        self.arenas = exec::Arenas::default();
        self.capacity = 0;
        let [f, b, i] = self.program.arena_len;
        self.arenas = exec::Arenas {
            f32: zeroed(f.saturating_mul(batch))?,
            u8: zeroed(b.saturating_mul(batch))?,
            i64: zeroed(i.saturating_mul(batch))?,
        };
        self.capacity = batch;
        Ok(())
    }

    /// Gives back the buffers grown for a large batch, keeping room for one sample.
    ///
    /// # Errors
    /// As [`Engine::reserve`].
    pub fn release(&mut self) -> Result<(), EngineError> {
        if self.capacity > 1 {
            self.arenas = exec::Arenas::default();
            self.capacity = 0;
            self.reserve(1)?;
        }
        Ok(())
    }

    /// Bytes of the arena per sample (every tensor, sharing memory where lifetimes allow)
    /// plus the kernels' scratch.
    pub fn arena_bytes(&self) -> usize {
        let [f, b, i] = self.program.arena_len;
        f * 4 + b + i * 8 + self.program.scratch_f32 * 4 + self.program.scratch_u8
    }

    /// Number of steps a run executes (after fusion; views of memory need none).
    pub fn steps(&self) -> usize {
        self.program.steps.len()
    }

    /// The kernel chosen for each dense layer stored sparsely, in node order, with the
    /// timings that decided it.
    pub fn kernel_choices(&self) -> &[KernelChoice] {
        &self.program.choices
    }

    /// Largest batch that runs without allocating.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Inferred dtype and per-sample shape of every value.
    pub fn shapes(&self) -> &ValueShapes {
        &self.shapes
    }

    /// Runs `batch` samples of float inputs; `inputs[i]` holds `batch × sample_len` values
    /// of graph input `i`, row-major. Results are read with [`Engine::output_f32`] and its
    /// siblings.
    ///
    /// # Errors
    /// Wrong input count, dtype or length, non-finite inputs, an empty batch. Nothing is
    /// run then.
    pub fn run(&mut self, inputs: &[&[f32]], batch: usize) -> Result<(), EngineError> {
        match inputs {
            [x] => self.run_inputs(&[InputData::F32(x)], batch),
            _ => {
                if inputs.len() != self.input_names.len() {
                    return Err(EngineError::InputCount {
                        expected: self.input_names.len(),
                        got: inputs.len(),
                    });
                }
                // Graphs have one input (validation of converted models); several float
                // inputs are checked the same way.
                for (index, data) in inputs.iter().enumerate() {
                    self.check_input(index, InputData::F32(data), batch)?;
                }
                self.write_and_run(inputs.iter().map(|d| InputData::F32(d)), batch)
            }
        }
    }

    /// [`Engine::run`] for inputs of any supported element type.
    ///
    /// # Errors
    /// As [`Engine::run`], and [`EngineError::InputType`] when an input's element type is
    /// not the model's.
    pub fn run_inputs(
        &mut self,
        inputs: &[InputData<'_>],
        batch: usize,
    ) -> Result<(), EngineError> {
        if inputs.len() != self.input_names.len() {
            return Err(EngineError::InputCount {
                expected: self.input_names.len(),
                got: inputs.len(),
            });
        }
        for (index, data) in inputs.iter().enumerate() {
            self.check_input(index, *data, batch)?;
        }
        self.write_and_run(inputs.iter().copied(), batch)
    }

    fn check_input(
        &self,
        index: usize,
        data: InputData<'_>,
        batch: usize,
    ) -> Result<(), EngineError> {
        if batch == 0 {
            return Err(EngineError::EmptyBatch);
        }
        let want = self.input_dtypes[index];
        if data.dtype() != want {
            return Err(EngineError::InputType {
                index,
                name: self.input_names[index].clone(),
                expected: want,
                got: data.dtype(),
            });
        }
        let sample_len = self.program.tensors[self.program.inputs[index]].len;
        if data.len() != batch * sample_len {
            return Err(EngineError::InputLength {
                index,
                name: self.input_names[index].clone(),
                batch,
                sample_len,
                expected: batch * sample_len,
                got: data.len(),
            });
        }
        if let InputData::F32(x) = data {
            check_finite(index, &self.input_names[index], x, sample_len)?;
        }
        Ok(())
    }

    fn write_and_run<'a>(
        &mut self,
        inputs: impl Iterator<Item = InputData<'a>>,
        batch: usize,
    ) -> Result<(), EngineError> {
        self.reserve(batch)?;
        self.batch = batch;
        let p = &self.program;
        for (index, data) in inputs.enumerate() {
            let t = p.inputs[index];
            let off = p.offsets[p.tensors[t].root] * batch;
            match data {
                InputData::F32(x) => self.arenas.f32[off..off + x.len()].copy_from_slice(x),
                InputData::U8(x) => self.arenas.u8[off..off + x.len()].copy_from_slice(x),
                InputData::I8(x) => {
                    for (d, &s) in self.arenas.u8[off..off + x.len()].iter_mut().zip(x) {
                        *d = s as u8;
                    }
                }
            }
        }
        self.program
            .execute(&mut self.arenas, &mut self.scratch, batch);
        Ok(())
    }

    fn output_range(&self, index: usize, class: usize) -> Option<std::ops::Range<usize>> {
        let p = &self.program;
        let t = *p.outputs.get(index)?;
        let info = &p.tensors[t];
        if arena::dtype_class(info.dtype) != class {
            return None;
        }
        let off = p.offsets[info.root] * self.batch;
        Some(off..off + info.len * self.batch)
    }

    /// Output `index` of the last run if it is float (`batch × sample` values).
    pub fn output_f32(&self, index: usize) -> Option<&[f32]> {
        self.arenas.f32.get(self.output_range(index, 0)?)
    }

    /// Output `index` of the last run if it is an integer output.
    pub fn output_i64(&self, index: usize) -> Option<&[i64]> {
        self.arenas.i64.get(self.output_range(index, 2)?)
    }

    /// Output `index` of the last run if it holds uint8 codes.
    pub fn output_u8(&self, index: usize) -> Option<&[u8]> {
        let t = *self.program.outputs.get(index)?;
        if self.program.tensors[t].dtype != DType::U8 {
            return None;
        }
        self.arenas.u8.get(self.output_range(index, 1)?)
    }

    /// Output `index` of the last run if it holds int8 codes (as their bits).
    pub fn output_i8_bits(&self, index: usize) -> Option<&[u8]> {
        let t = *self.program.outputs.get(index)?;
        if self.program.tensors[t].dtype != DType::I8 {
            return None;
        }
        self.arenas.u8.get(self.output_range(index, 1)?)
    }
}

/// `n` zeroed values on a cache line, or [`EngineError::OutOfMemory`] instead of an abort.
fn zeroed<T: Clone + Default>(n: usize) -> Result<buffer::Aligned<T>, EngineError> {
    buffer::Aligned::zeroed(n)
}

/// Rejects NaN and infinity in input `index`, naming the sample and feature.
///
/// # Errors
/// [`EngineError::NonFinite`] for the first non-finite value.
pub(crate) fn check_finite(
    index: usize,
    name: &str,
    data: &[f32],
    sample_len: usize,
) -> Result<(), EngineError> {
    // A branch-free scan (it vectorizes) first; the position only when something is wrong.
    const EXP: u32 = 0x7f80_0000;
    let bad = |c: &[f32]| {
        c.iter()
            .fold(0u32, |b, v| b | (v.to_bits() & EXP == EXP) as u32)
    };
    if data.chunks(64).all(|c| bad(c) == 0) {
        return Ok(());
    }
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(position) => Err(EngineError::NonFinite {
            index,
            name: name.to_string(),
            position,
            sample: position / sample_len.max(1),
            feature: position % sample_len.max(1),
            value: data[position],
        }),
    }
}

#[cfg(test)]
mod tests;
