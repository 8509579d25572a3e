//! Executes a native graph. Shapes are inferred and buffers sized once, when the engine is
//! built for a batch capacity; [`Engine::run`] then performs no heap allocation for any
//! batch up to that capacity (a larger batch grows the buffers once).

use crate::graph::{DType, Graph, GraphError, Layer, QuantParams, Tensor, TensorData, ValueShapes};
use std::hint::black_box;
use std::time::{Duration, Instant};

pub mod kernels;
mod quant;

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
        /// Graph inputs.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// An input slice does not hold `batch` samples.
    #[error(
        "input {index} ({name:?}): expected {batch} × {sample_len} = {expected} values, got {got}"
    )]
    InputLength {
        /// Input position.
        index: usize,
        /// Input name.
        name: String,
        /// Batch size.
        batch: usize,
        /// Values per sample.
        sample_len: usize,
        /// `batch * sample_len`.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// An input holds NaN or infinity.
    #[error(
        "input {index} ({name:?}): value {position} (sample {sample}, feature {feature}) is {value}, not a finite number"
    )]
    NonFinite {
        /// Input position.
        index: usize,
        /// Input name.
        name: String,
        /// Flat position.
        position: usize,
        /// Sample (row) index.
        sample: usize,
        /// Index within the sample.
        feature: usize,
        /// The value.
        value: f32,
    },
    /// Batch of zero samples.
    #[error("batch size must be at least 1")]
    EmptyBatch,
    /// Buffers could not be allocated.
    #[error("out of memory: cannot allocate {bytes} bytes of buffers for this batch")]
    OutOfMemory {
        /// The allocation that failed.
        bytes: u128,
    },
}

/// `n` zeroed values, or [`EngineError::OutOfMemory`] instead of an abort.
fn zeroed<T: Clone + Default>(n: usize) -> Result<Vec<T>, EngineError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| EngineError::OutOfMemory {
            bytes: n as u128 * std::mem::size_of::<T>() as u128,
        })?;
    v.resize(n, T::default());
    Ok(v)
}

enum Buffer {
    F32(Vec<f32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

/// A layer prepared for execution: parameters copied into the layout its kernel wants.
enum Step {
    Standardize {
        offset: Vec<f32>,
        scale: Vec<f32>,
    },
    Dense {
        weight: DenseWeight,
        bias: Vec<f32>,
        inputs: usize,
        outputs: usize,
        act: kernels::Activation,
    },
    Conv2d(kernels::Conv2dParams, Vec<f32>, Vec<f32>),
    MaxPool(kernels::Pool2dParams),
    AvgPool(kernels::Pool2dParams, bool),
    GlobalAvgPool {
        channels: usize,
        spatial: usize,
    },
    Copy,
    Activation(kernels::Activation),
    Softmax {
        axis_len: usize,
    },
    ArgMax {
        axis_len: usize,
        labels: Option<Vec<i64>>,
    },
    TreeEnsemble(Box<kernels::TreeEnsemble>),
    Quantize(QuantParams),
    /// A standardize whose only reader is a quantize, fused (same operations, one pass).
    StandardizeQuantize {
        offset: Vec<f32>,
        scale: Vec<f32>,
        params: QuantParams,
    },
    Dequantize(QuantParams),
    QDense(Box<quant::QDense>),
    QConv2d(Box<quant::QConv2d>),
    /// Fused into the previous step.
    Skip,
}

/// A dense layer's weight in the layout its chosen kernel reads.
enum DenseWeight {
    /// Row-major `[outputs, inputs]`.
    Dense(Vec<f32>),
    /// Compressed sparse rows, used for batches below [`kernels::CSR_TILE`] samples when
    /// `single`, for larger ones when `batched`; `dense` (empty unless one of them is
    /// false) serves the other batches.
    Csr {
        csr: kernels::CsrMatrix,
        dense: Vec<f32>,
        single: bool,
        batched: bool,
    },
}

/// Which kernel runs a dense layer whose weight the artifact stores sparsely, and the
/// timings that chose it (see [`Engine::kernel_choices`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelChoice {
    /// Node name.
    pub node: String,
    /// `[outputs, inputs]`.
    pub shape: [usize; 2],
    /// Stored nonzeros.
    pub nonzeros: usize,
    /// Whether the sparse kernel runs batches below [`kernels::CSR_TILE`] samples.
    pub sparse: bool,
    /// Whether the batched sparse kernel runs batches of [`kernels::CSR_TILE`] or more.
    pub sparse_batched: bool,
    /// Measured time of a batch-1 run of the sparse kernel, nanoseconds.
    pub sparse_ns: f64,
    /// Measured time of a batch-1 run of the dense kernel, nanoseconds (0 when the dense
    /// copy would be too large to measure).
    pub dense_ns: f64,
    /// Measured time per sample of a [`kernels::CSR_TILE`]-sample batch, batched sparse
    /// kernel, nanoseconds.
    pub sparse_batched_ns: f64,
    /// The same for the dense kernel.
    pub dense_batched_ns: f64,
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [o, i] = self.shape;
        let density = self.nonzeros as f64 / (o * i).max(1) as f64;
        let pick = |sparse| if sparse { "sparse" } else { "dense" };
        write!(
            f,
            "{}: {o}×{i} weight, {:.1}% nonzero: {} kernel for single samples (sparse {:.0} ns, \
             dense {:.0} ns), {} kernel for batches of {}+ (sparse {:.0} ns, dense {:.0} ns \
             per sample)",
            self.node,
            density * 100.0,
            pick(self.sparse),
            self.sparse_ns,
            self.dense_ns,
            pick(self.sparse_batched),
            kernels::CSR_TILE,
            self.sparse_batched_ns,
            self.dense_batched_ns,
        )
    }
}

struct PlannedNode {
    step: Step,
    input: usize,
    output: usize,
}

/// A graph ready to run. Not `Sync`: give each thread its own engine.
pub struct Engine {
    nodes: Vec<PlannedNode>,
    choices: Vec<KernelChoice>,
    /// Transposed inputs of the batched sparse kernel.
    scratch: Vec<f32>,
    shapes: ValueShapes,
    /// Elements per sample of each value (the product of its shape), computed once.
    sample_lens: Vec<usize>,
    buffers: Vec<Buffer>,
    /// Value each buffer slot currently backs (fused-away values share their producer's).
    alias: Vec<usize>,
    input_names: Vec<String>,
    outputs: Vec<usize>,
    capacity: usize,
    batch: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("nodes", &self.nodes.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Engine {
    /// Validates `graph`, prepares every layer and sizes buffers for `batch_capacity`
    /// samples.
    ///
    /// # Errors
    /// [`EngineError::Graph`] when the graph is inconsistent.
    pub fn new(graph: &Graph, batch_capacity: usize) -> Result<Engine, EngineError> {
        let shapes = graph.infer_shapes()?;
        let n_in = graph.inputs.len();
        let n_values = shapes.values.len();
        let mut consumers = vec![0usize; n_values];
        for node in &graph.nodes {
            for &i in &node.inputs {
                consumers[i as usize] += 1;
            }
        }
        let mut is_output = vec![false; n_values];
        for o in &graph.outputs {
            is_output[o.value as usize] = true;
        }
        let mut alias: Vec<usize> = (0..n_values).collect();
        let mut nodes: Vec<PlannedNode> = Vec::with_capacity(graph.nodes.len());
        let mut choices = Vec::new();
        for (k, node) in graph.nodes.iter().enumerate() {
            let out = n_in + k;
            let input = node.inputs[0] as usize;
            let x = &shapes.values[input].1;
            let step = match &node.layer {
                Layer::Standardize { offset, scale } => {
                    let n = x.last().copied().unwrap_or(1);
                    let widen = |v: &Vec<f32>| {
                        if v.len() == 1 {
                            vec![v[0]; n]
                        } else {
                            v.clone()
                        }
                    };
                    Step::Standardize {
                        offset: widen(offset),
                        scale: widen(scale),
                    }
                }
                Layer::Dense { weight, bias } => {
                    let outputs = weight.shape[0] as usize;
                    let inputs = weight.shape[1] as usize;
                    let b = bias
                        .as_ref()
                        .and_then(|b| b.as_f32())
                        .map_or_else(|| vec![0.0; outputs], <[f32]>::to_vec);
                    let w = match &weight.data {
                        TensorData::Csr {
                            row_ptr,
                            col_idx,
                            values,
                        } => {
                            let csr = kernels::CsrMatrix::new(
                                outputs,
                                inputs,
                                row_ptr.clone(),
                                col_idx.clone(),
                                values.clone(),
                            )
                            .ok_or_else(|| GraphError::Shape {
                                node: node.name.clone(),
                                layer: "dense",
                                reason: "inconsistent sparse weight".into(),
                            })?;
                            let (w, choice) = choose_dense_kernel(&node.name, csr, &b);
                            choices.push(choice);
                            w
                        }
                        _ => DenseWeight::Dense(weight.as_f32().unwrap_or(&[]).to_vec()),
                    };
                    Step::Dense {
                        weight: w,
                        bias: b,
                        inputs,
                        outputs,
                        act: kernels::Activation::Identity,
                    }
                }
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                    dilation,
                    groups,
                } => {
                    let w = weight.as_f32().unwrap_or(&[]).to_vec();
                    let p = conv_params(
                        x,
                        &shapes.values[out].1,
                        weight,
                        *stride,
                        *padding,
                        *dilation,
                        *groups,
                    );
                    let b = bias
                        .as_ref()
                        .and_then(|b| b.as_f32())
                        .map_or_else(|| vec![0.0; p.out_c], <[f32]>::to_vec);
                    Step::Conv2d(p, w, b)
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
                    let y = &shapes.values[out].1;
                    let p = kernels::Pool2dParams {
                        c: x[0],
                        in_h: x[1],
                        in_w: x[2],
                        out_h: y[1],
                        out_w: y[2],
                        k: [kernel[0] as usize, kernel[1] as usize],
                        stride: [stride[0] as usize, stride[1] as usize],
                        pad: [padding[0] as usize, padding[1] as usize],
                    };
                    match &node.layer {
                        Layer::AvgPool2d {
                            count_include_pad, ..
                        } => Step::AvgPool(p, *count_include_pad),
                        _ => Step::MaxPool(p),
                    }
                }
                Layer::GlobalAvgPool => Step::GlobalAvgPool {
                    channels: x[0],
                    spatial: x[1] * x[2],
                },
                Layer::Flatten | Layer::Reshape { .. } => Step::Copy,
                Layer::Relu => Step::Activation(kernels::Activation::Relu),
                Layer::LeakyRelu { alpha } => {
                    Step::Activation(kernels::Activation::LeakyRelu(*alpha))
                }
                Layer::Sigmoid => Step::Activation(kernels::Activation::Sigmoid),
                Layer::Tanh => Step::Activation(kernels::Activation::Tanh),
                Layer::Softmax => Step::Softmax {
                    axis_len: x.last().copied().unwrap_or(1),
                },
                Layer::ArgMax { labels } => Step::ArgMax {
                    axis_len: x.last().copied().unwrap_or(1),
                    labels: labels.clone(),
                },
                Layer::TreeEnsemble {
                    trees,
                    n_outputs,
                    aggregate,
                    base_values,
                    post_transform,
                } => {
                    let features = x.iter().product();
                    let e = kernels::TreeEnsemble::new(
                        trees,
                        features,
                        *n_outputs as usize,
                        *aggregate,
                        base_values,
                        *post_transform,
                    )
                    .ok_or_else(|| GraphError::Shape {
                        node: node.name.clone(),
                        layer: "tree_ensemble",
                        reason: "more nodes than 32-bit indices address".into(),
                    })?;
                    Step::TreeEnsemble(Box::new(e))
                }
                Layer::Quantize(p) => Step::Quantize(*p),
                Layer::Dequantize(p) => Step::Dequantize(*p),
                Layer::QDense {
                    weight,
                    bias,
                    input,
                    output,
                    relu,
                } => {
                    let core = quant::QCore::new(
                        &node.name,
                        "qdense",
                        weight,
                        bias.as_ref(),
                        *input,
                        *output,
                        *relu,
                    )?;
                    Step::QDense(Box::new(quant::QDense::new(&node.name, core)?))
                }
                Layer::QConv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                    dilation,
                    groups,
                    input,
                    output,
                    relu,
                } => {
                    let core = quant::QCore::new(
                        &node.name,
                        "qconv2d",
                        weight,
                        bias.as_ref(),
                        *input,
                        *output,
                        *relu,
                    )?;
                    let p = conv_params(
                        x,
                        &shapes.values[out].1,
                        weight,
                        *stride,
                        *padding,
                        *dilation,
                        *groups,
                    );
                    Step::QConv2d(Box::new(quant::QConv2d::new(core, p)))
                }
            };
            // Fuse a standardize into the quantize that alone reads it.
            if let Step::Quantize(params) = &step
                && input >= n_in
                && consumers[input] == 1
                && !is_output[input]
                && let Some(prev) = nodes.last_mut()
                && prev.output == input
                && let Step::Standardize { offset, scale } = &mut prev.step
            {
                let fused = Step::StandardizeQuantize {
                    offset: std::mem::take(offset),
                    scale: std::mem::take(scale),
                    params: *params,
                };
                prev.step = Step::Skip;
                let src = prev.input;
                nodes.push(PlannedNode {
                    step: fused,
                    input: src,
                    output: out,
                });
                continue;
            }
            // Fuse an activation into the dense layer that alone feeds it.
            if let Step::Activation(act) = &step
                && input >= n_in
                && consumers[input] == 1
                && !is_output[input]
                && let Some(prev) = nodes.last_mut()
                && prev.output == input
                && let Step::Dense {
                    act: prev_act @ kernels::Activation::Identity,
                    ..
                } = &mut prev.step
            {
                *prev_act = *act;
                alias[out] = alias[input];
                nodes.push(PlannedNode {
                    step: Step::Skip,
                    input,
                    output: out,
                });
                continue;
            }
            nodes.push(PlannedNode {
                step,
                input,
                output: out,
            });
        }
        // Fused-away nodes need no turn in `run`.
        nodes.retain(|n| !matches!(n.step, Step::Skip));
        let scratch = nodes
            .iter()
            .map(|n| match &n.step {
                Step::Dense {
                    weight: DenseWeight::Csr { csr, .. },
                    ..
                } => csr.cols() * kernels::CSR_TILE,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let mut engine = Engine {
            nodes,
            choices,
            scratch: vec![0.0; scratch],
            buffers: Vec::new(),
            alias,
            input_names: graph.inputs.iter().map(|s| s.name.clone()).collect(),
            outputs: graph.outputs.iter().map(|o| o.value as usize).collect(),
            sample_lens: shapes
                .values
                .iter()
                .map(|(_, s)| s.iter().product())
                .collect(),
            shapes,
            capacity: 0,
            batch: 0,
        };
        engine.reserve(batch_capacity.max(1))?;
        Ok(engine)
    }

    /// Grows the buffers to hold `batch` samples (allocates; `run` calls it when needed).
    ///
    /// # Errors
    /// [`EngineError::OutOfMemory`] when the buffers cannot be allocated (the engine keeps
    /// none then, and grows them again at the next run).
    pub fn reserve(&mut self, batch: usize) -> Result<(), EngineError> {
        if batch <= self.capacity && !self.buffers.is_empty() {
            return Ok(());
        }
        // Free the old buffers first, and allocate fallibly: a batch or a model too large
        // for this machine is an error to report, not an abort.
        self.buffers = Vec::new();
        self.capacity = 0;
        let mut buffers = Vec::with_capacity(self.shapes.values.len());
        for (v, (dtype, _)) in self.shapes.values.iter().enumerate() {
            let n = if self.alias[v] != v {
                0
            } else {
                batch.saturating_mul(self.sample_lens[v])
            };
            let buffer = match dtype {
                DType::F32 => Buffer::F32(zeroed(n)?),
                DType::I64 => Buffer::I64(zeroed(n)?),
                DType::U8 | DType::I8 => Buffer::U8(zeroed(n)?),
            };
            buffers.push(buffer);
        }
        self.buffers = buffers;
        self.capacity = batch;
        Ok(())
    }

    /// Gives back the buffers grown for a large batch, keeping room for one sample.
    ///
    /// # Errors
    /// As [`Engine::reserve`].
    pub fn release(&mut self) -> Result<(), EngineError> {
        if self.capacity > 1 {
            self.buffers = Vec::new();
            self.capacity = 0;
            self.reserve(1)?;
        }
        Ok(())
    }

    /// The kernel chosen for each dense layer stored sparsely, in node order, with the
    /// timings that decided it.
    pub fn kernel_choices(&self) -> &[KernelChoice] {
        &self.choices
    }

    /// Largest batch that runs without allocating.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Inferred dtype and per-sample shape of every value.
    pub fn shapes(&self) -> &ValueShapes {
        &self.shapes
    }

    /// Runs `batch` samples; `inputs[i]` holds `batch × sample_len` values of graph input
    /// `i`, row-major. Results are read with [`Engine::output_f32`] / [`Engine::output_i64`].
    ///
    /// # Errors
    /// Wrong input count or length, non-finite inputs, an empty batch. Nothing is run then.
    pub fn run(&mut self, inputs: &[&[f32]], batch: usize) -> Result<(), EngineError> {
        if batch == 0 {
            return Err(EngineError::EmptyBatch);
        }
        if inputs.len() != self.input_names.len() {
            return Err(EngineError::InputCount {
                expected: self.input_names.len(),
                got: inputs.len(),
            });
        }
        for (index, data) in inputs.iter().enumerate() {
            let sample_len = self.sample_lens[index];
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
            check_finite(index, &self.input_names[index], data, sample_len)?;
        }
        self.reserve(batch)?;
        self.batch = batch;
        for (index, data) in inputs.iter().enumerate() {
            if let Buffer::F32(buf) = &mut self.buffers[index] {
                buf[..data.len()].copy_from_slice(data);
            }
        }
        for node in &self.nodes {
            let in_slot = self.alias[node.input];
            let out_slot = self.alias[node.output];
            let in_len = batch * self.sample_lens[node.input];
            let out_len = batch * self.sample_lens[node.output];
            let (before, after) = self.buffers.split_at_mut(out_slot);
            // Validation fixed every value's dtype, so each step meets the buffers it expects.
            match (&node.step, &before[in_slot], &mut after[0]) {
                (Step::ArgMax { axis_len, labels }, Buffer::F32(x), Buffer::I64(y)) => {
                    kernels::argmax(
                        &x[..in_len],
                        *axis_len,
                        labels.as_deref(),
                        &mut y[..out_len],
                    );
                }
                (Step::Quantize(p), Buffer::F32(x), Buffer::U8(y)) => {
                    kernels::quantize_u8(&x[..in_len], p.scale, p.zero_point, &mut y[..out_len]);
                }
                (
                    Step::StandardizeQuantize {
                        offset,
                        scale,
                        params,
                    },
                    Buffer::F32(x),
                    Buffer::U8(y),
                ) => {
                    kernels::standardize_quantize_u8(
                        &x[..in_len],
                        offset,
                        scale,
                        params.scale,
                        params.zero_point,
                        &mut y[..out_len],
                    );
                }
                (Step::Dequantize(p), Buffer::U8(x), Buffer::F32(y)) => {
                    kernels::int8::dequantize(
                        &x[..in_len],
                        p.scale,
                        p.zero_point,
                        &mut y[..out_len],
                    );
                }
                (Step::Copy, Buffer::U8(x), Buffer::U8(y)) => {
                    y[..out_len].copy_from_slice(&x[..in_len]);
                }
                (Step::QDense(q), x, y) => {
                    if let (Some(x), Some(y)) = (qin(x, in_len), qout(y, out_len)) {
                        q.run(x, y);
                    }
                }
                (Step::QConv2d(q), x, y) => {
                    if let (Some(x), Some(y)) = (qin(x, in_len), qout(y, out_len)) {
                        q.run(x, y, batch);
                    }
                }
                (step, Buffer::F32(x), Buffer::F32(y)) => run_step(
                    step,
                    &x[..in_len],
                    &mut y[..out_len],
                    batch,
                    &mut self.scratch,
                ),
                _ => {}
            }
        }
        Ok(())
    }

    fn output_slot(&self, index: usize) -> Option<(usize, usize)> {
        let v = *self.outputs.get(index)?;
        Some((self.alias[v], self.batch * self.sample_lens[v]))
    }

    /// Output `index` of the last run if it is float (`batch × sample` values).
    pub fn output_f32(&self, index: usize) -> Option<&[f32]> {
        let (slot, len) = self.output_slot(index)?;
        match &self.buffers[slot] {
            Buffer::F32(v) => v.get(..len),
            _ => None,
        }
    }

    /// Output `index` of the last run if it is an integer output.
    pub fn output_i64(&self, index: usize) -> Option<&[i64]> {
        let (slot, len) = self.output_slot(index)?;
        match &self.buffers[slot] {
            Buffer::I64(v) => v.get(..len),
            _ => None,
        }
    }
}

/// Largest dense copy (elements) made of a sparse weight to time the dense kernel on it.
const DENSIFY_LIMIT: usize = 1 << 22;

/// Time budget for timing each kernel on one layer.
const CHOICE_BUDGET: Duration = Duration::from_micros(250);

/// Times the sparse and the dense kernel on one batch-1 sample of this layer's shape
/// (each for at most [`CHOICE_BUDGET`], after a warm-up) and keeps the faster.
fn choose_dense_kernel(
    node: &str,
    csr: kernels::CsrMatrix,
    bias: &[f32],
) -> (DenseWeight, KernelChoice) {
    let (outputs, inputs) = (csr.rows(), csr.cols());
    let mut choice = KernelChoice {
        node: node.to_string(),
        shape: [outputs, inputs],
        nonzeros: csr.nonzeros(),
        sparse: true,
        sparse_batched: true,
        sparse_ns: 0.0,
        dense_ns: 0.0,
        sparse_batched_ns: 0.0,
        dense_batched_ns: 0.0,
    };
    if outputs.saturating_mul(inputs) > DENSIFY_LIMIT {
        let weight = DenseWeight::Csr {
            csr,
            dense: Vec::new(),
            single: true,
            batched: true,
        };
        return (weight, choice);
    }
    let tile = kernels::CSR_TILE;
    let x: Vec<f32> = (0..inputs * tile)
        .map(|i| (i % 7) as f32 * 0.25 - 0.75)
        .collect();
    let mut y = vec![0.0f32; outputs * tile];
    let mut scratch = vec![0.0f32; inputs * tile];
    let dense = csr.to_dense();
    let (x1, y1) = (&x[..inputs], outputs);
    choice.sparse_ns = time_per_run(|| {
        let y = &mut y[..y1];
        kernels::csr_dense(black_box(x1), black_box(&csr), bias, black_box(y));
    });
    choice.dense_ns = time_per_run(|| {
        let (w, y) = (black_box(&dense), &mut y[..y1]);
        kernels::dense(black_box(x1), w, bias, inputs, outputs, black_box(y));
    });
    let per_sample = tile as f64;
    choice.sparse_batched_ns = time_per_run(|| {
        let (w, y) = (black_box(&csr), black_box(&mut y));
        kernels::csr_dense_batched(black_box(&x), w, bias, y, &mut scratch);
    }) / per_sample;
    choice.dense_batched_ns = time_per_run(|| {
        let (w, y) = (black_box(&dense), black_box(&mut y));
        kernels::dense(black_box(&x), w, bias, inputs, outputs, y);
    }) / per_sample;
    choice.sparse = choice.sparse_ns < choice.dense_ns;
    choice.sparse_batched = choice.sparse_batched_ns < choice.dense_batched_ns;
    let weight = match (choice.sparse, choice.sparse_batched) {
        (false, false) => DenseWeight::Dense(dense),
        (single, batched) => DenseWeight::Csr {
            csr,
            dense: if single && batched { Vec::new() } else { dense },
            single,
            batched,
        },
    };
    (weight, choice)
}

/// Mean nanoseconds per call of `f`, by the best of a few timed batches within
/// [`CHOICE_BUDGET`].
fn time_per_run(mut f: impl FnMut()) -> f64 {
    for _ in 0..8 {
        f();
    }
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut batch = 1u32;
    while start.elapsed() < CHOICE_BUDGET {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        let per = t.elapsed().as_nanos() as f64 / f64::from(batch);
        best = best.min(per);
        if batch < 64 {
            batch *= 2;
        }
    }
    best
}

/// Rejects NaN and infinity in input `index`, naming the sample and feature.
///
/// # Errors
/// [`EngineError::NonFinite`] for the first non-finite value.
pub fn check_finite(
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

fn qin(b: &Buffer, len: usize) -> Option<quant::QIn<'_>> {
    match b {
        Buffer::U8(v) => Some(quant::QIn::U8(&v[..len])),
        Buffer::F32(v) => Some(quant::QIn::F32(&v[..len])),
        Buffer::I64(_) => None,
    }
}

fn qout(b: &mut Buffer, len: usize) -> Option<quant::QOut<'_>> {
    match b {
        Buffer::U8(v) => Some(quant::QOut::U8(&mut v[..len])),
        Buffer::F32(v) => Some(quant::QOut::F32(&mut v[..len])),
        Buffer::I64(_) => None,
    }
}

/// Geometry of a (quantized or float) convolution whose validated input and output
/// per-sample shapes are `x` and `y`.
fn conv_params(
    x: &[usize],
    y: &[usize],
    weight: &Tensor,
    stride: [u32; 2],
    padding: [u32; 4],
    dilation: [u32; 2],
    groups: u32,
) -> kernels::Conv2dParams {
    kernels::Conv2dParams {
        in_c: x[0],
        in_h: x[1],
        in_w: x[2],
        out_c: y[0],
        out_h: y[1],
        out_w: y[2],
        k_h: weight.shape[2] as usize,
        k_w: weight.shape[3] as usize,
        stride: [stride[0] as usize, stride[1] as usize],
        pad: [padding[0] as usize, padding[1] as usize],
        dilation: [dilation[0] as usize, dilation[1] as usize],
        groups: groups as usize,
    }
}

fn run_step(step: &Step, x: &[f32], y: &mut [f32], batch: usize, scratch: &mut [f32]) {
    match step {
        Step::Standardize { offset, scale } => kernels::standardize(x, offset, scale, y),
        Step::Dense {
            weight,
            bias,
            inputs,
            outputs,
            act,
        } => {
            match weight {
                DenseWeight::Csr {
                    csr, single: true, ..
                } if batch < kernels::CSR_TILE => kernels::csr_dense(x, csr, bias, y),
                DenseWeight::Csr {
                    csr, batched: true, ..
                } if batch >= kernels::CSR_TILE => {
                    kernels::csr_dense_batched(x, csr, bias, y, scratch)
                }
                DenseWeight::Dense(w) | DenseWeight::Csr { dense: w, .. } => {
                    kernels::dense(x, w, bias, *inputs, *outputs, y)
                }
            }
            kernels::activate(*act, y);
        }
        Step::Conv2d(p, w, b) => kernels::conv2d(p, x, w, b, y, batch),
        Step::MaxPool(p) => kernels::max_pool2d(p, x, y, batch),
        Step::AvgPool(p, include_pad) => kernels::avg_pool2d(p, *include_pad, x, y, batch),
        Step::GlobalAvgPool { channels, spatial } => {
            kernels::global_avg_pool(x, *channels, *spatial, y, batch)
        }
        Step::Copy => y.copy_from_slice(x),
        Step::Activation(act) => {
            y.copy_from_slice(x);
            kernels::activate(*act, y);
        }
        Step::Softmax { axis_len } => kernels::softmax(x, *axis_len, y),
        Step::TreeEnsemble(e) => e.run(x, y),
        Step::ArgMax { .. }
        | Step::Quantize(_)
        | Step::StandardizeQuantize { .. }
        | Step::Dequantize(_)
        | Step::QDense(_)
        | Step::QConv2d(_)
        | Step::Skip => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Node, Output, Tensor, TensorSpec};

    fn graph(input: Vec<u32>, layers: Vec<Layer>) -> Graph {
        let n = layers.len() as u32;
        Graph {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DType::F32,
                shape: input,
            }],
            nodes: layers
                .into_iter()
                .enumerate()
                .map(|(i, layer)| Node {
                    name: format!("n{i}"),
                    layer,
                    inputs: vec![i as u32],
                })
                .collect(),
            outputs: vec![Output {
                name: "y".into(),
                value: n,
            }],
        }
    }

    #[test]
    fn dense_relu_softmax_argmax() {
        let dense = Layer::Dense {
            weight: Tensor::f32(vec![3, 2], vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0]),
            bias: Some(Tensor::f32(vec![3], vec![0.0, 0.5, 0.0])),
        };
        let mut g = graph(
            vec![2],
            vec![
                dense,
                Layer::Relu,
                Layer::Softmax,
                Layer::ArgMax {
                    labels: Some(vec![10, 20, 30]),
                },
            ],
        );
        g.outputs.insert(
            0,
            Output {
                name: "p".into(),
                value: 3,
            },
        );
        let mut e = Engine::new(&g, 2).expect("plans");
        e.run(&[&[1.0, 2.0, -3.0, -4.0]], 2).expect("runs");
        let p = e.output_f32(0).expect("probabilities");
        // Row 0: relu([1, 2.5, -3]) = [1, 2.5, 0]; row 1: relu([-3, -3.5, 7]) = [0, 0, 7].
        let z0 = [1.0f32.exp(), 2.5f32.exp(), 1.0];
        let s0: f32 = z0.iter().sum();
        for (got, want) in p[..3].iter().zip(z0.iter().map(|v| v / s0)) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(e.output_i64(1), Some(&[20, 30][..]));
    }

    #[test]
    fn conv_and_pools_match_hand_computed_values() {
        // 1×3×3 input, one 2×2 kernel of ones, stride 1, padding 0 → 2×2 sums.
        let conv = Layer::Conv2d {
            weight: Tensor::f32(vec![1, 1, 2, 2], vec![1.0; 4]),
            bias: Some(Tensor::f32(vec![1], vec![1.0])),
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
        };
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut e = Engine::new(&graph(vec![1, 3, 3], vec![conv.clone()]), 1).expect("plans");
        e.run(&[&x], 1).expect("runs");
        assert_eq!(e.output_f32(0), Some(&[13.0, 17.0, 25.0, 29.0][..]));

        let max = Layer::MaxPool2d {
            kernel: [2, 2],
            stride: [1, 1],
            padding: [1, 1, 0, 0],
        };
        let mut e = Engine::new(&graph(vec![1, 3, 3], vec![max]), 1).expect("plans");
        e.run(&[&x], 1).expect("runs");
        assert_eq!(
            e.output_f32(0),
            Some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0][..])
        );

        let avg = |count_include_pad| Layer::AvgPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0, 1, 1],
            count_include_pad,
        };
        let mut e = Engine::new(&graph(vec![1, 3, 3], vec![avg(false)]), 1).expect("plans");
        e.run(&[&x], 1).expect("runs");
        assert_eq!(e.output_f32(0), Some(&[3.0, 4.5, 7.5, 9.0][..]));
        let mut e = Engine::new(&graph(vec![1, 3, 3], vec![avg(true)]), 1).expect("plans");
        e.run(&[&x], 1).expect("runs");
        assert_eq!(e.output_f32(0), Some(&[3.0, 2.25, 3.75, 2.25][..]));

        let mut e = Engine::new(
            &graph(vec![1, 3, 3], vec![Layer::GlobalAvgPool, Layer::Flatten]),
            1,
        )
        .expect("plans");
        e.run(&[&x], 1).expect("runs");
        assert_eq!(e.output_f32(0), Some(&[5.0][..]));
    }

    #[test]
    fn grouped_strided_padded_conv_matches_a_direct_formula() {
        let (c, h, w, oc, groups) = (4usize, 5usize, 6usize, 6usize, 2usize);
        let (kh, kw, stride, pad) = (
            3usize,
            2usize,
            [2usize, 1usize],
            [1usize, 1usize, 1usize, 0usize],
        );
        let wt: Vec<f32> = (0..oc * (c / groups) * kh * kw)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
            .collect();
        let x: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let layer = Layer::Conv2d {
            weight: Tensor::f32(
                vec![oc as u32, (c / groups) as u32, kh as u32, kw as u32],
                wt.clone(),
            ),
            bias: None,
            stride: [stride[0] as u32, stride[1] as u32],
            padding: [pad[0] as u32, pad[1] as u32, pad[2] as u32, pad[3] as u32],
            dilation: [1, 1],
            groups: groups as u32,
        };
        let mut e =
            Engine::new(&graph(vec![c as u32, h as u32, w as u32], vec![layer]), 1).expect("plans");
        e.run(&[&x], 1).expect("runs");
        let y = e.output_f32(0).expect("output");
        let oh = (h + pad[0] + pad[2] - kh) / stride[0] + 1;
        let ow = (w + pad[1] + pad[3] - kw) / stride[1] + 1;
        assert_eq!(y.len(), oc * oh * ow);
        for o in 0..oc {
            let g = o / (oc / groups);
            for yy in 0..oh {
                for xx in 0..ow {
                    let mut s = 0.0f32;
                    for ic in 0..c / groups {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (yy * stride[0] + ky) as isize - pad[0] as isize;
                                let ix = (xx * stride[1] + kx) as isize - pad[1] as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    s += wt[((o * (c / groups) + ic) * kh + ky) * kw + kx]
                                        * x[((g * (c / groups) + ic) * h + iy as usize) * w
                                            + ix as usize];
                                }
                            }
                        }
                    }
                    let got = y[(o * oh + yy) * ow + xx];
                    assert!((got - s).abs() < 1e-5, "y[{o},{yy},{xx}] = {got}, want {s}");
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let g = graph(vec![2], vec![Layer::Relu]);
        let mut e = Engine::new(&g, 1).expect("plans");
        assert_eq!(
            e.run(&[&[1.0]], 1),
            Err(EngineError::InputLength {
                index: 0,
                name: "x".into(),
                batch: 1,
                sample_len: 2,
                expected: 2,
                got: 1
            })
        );
        assert!(matches!(
            e.run(&[&[1.0, f32::NAN, 0.0, 0.0]], 2),
            Err(EngineError::NonFinite {
                sample: 0,
                feature: 1,
                ..
            })
        ));
        assert_eq!(
            e.run(&[], 1),
            Err(EngineError::InputCount {
                expected: 1,
                got: 0
            })
        );
        assert_eq!(e.run(&[&[]], 0), Err(EngineError::EmptyBatch));
    }

    #[test]
    fn shape_errors_name_the_node() {
        let g = graph(
            vec![3],
            vec![Layer::Dense {
                weight: Tensor::f32(vec![2, 4], vec![0.0; 8]),
                bias: None,
            }],
        );
        let err = Engine::new(&g, 1).expect_err("mismatch");
        assert!(
            err.to_string().contains("n0") && err.to_string().contains("expects 4"),
            "{err}"
        );
        let g = graph(
            vec![3],
            vec![Layer::Dense {
                weight: Tensor::f32(vec![2, 3], vec![0.0; 5]),
                bias: None,
            }],
        );
        assert!(Engine::new(&g, 1).is_err());
    }

    fn i8_tensor(shape: Vec<u32>, values: Vec<i8>, scales: Vec<f32>) -> Tensor {
        Tensor {
            shape,
            data: crate::graph::TensorData::I8 { values, scales },
        }
    }

    #[test]
    fn quantized_dense_chain_matches_hand_computed_codes() {
        use crate::graph::{QuantInput, QuantOutput};
        let p_in = QuantParams {
            scale: 0.5,
            zero_point: 10,
        };
        let p_mid = QuantParams {
            scale: 0.25,
            zero_point: 0,
        };
        let g = graph(
            vec![2],
            vec![
                Layer::Quantize(p_in),
                Layer::QDense {
                    weight: i8_tensor(vec![2, 2], vec![2, -1, -4, 3], vec![0.5, 1.0]),
                    bias: Some(Tensor::f32(vec![2], vec![0.25, 0.0])),
                    input: QuantInput::Static(p_in),
                    output: QuantOutput::U8(p_mid),
                    relu: true,
                },
                Layer::Dequantize(p_mid),
            ],
        );
        let mut e = Engine::new(&g, 1).expect("plans");
        // x = [1, 2] → codes [12, 14]; y0 = 1·1 + 2·(-0.5) + 0.25 = 0.25, y1 = 1·(-4) + 2·3
        // = 2 → codes 1 and 8 → [0.25, 2].
        e.run(&[&[1.0, 2.0]], 1).expect("runs");
        assert_eq!(e.output_f32(0), Some(&[0.25, 2.0][..]));
        // ReLU clamps at the zero point: x = [-1, 0] gives y = [-0.75, 4].
        e.run(&[&[-1.0, 0.0]], 1).expect("runs");
        assert_eq!(e.output_f32(0), Some(&[0.0, 4.0][..]));
    }

    #[test]
    fn quantized_conv_follows_the_float_conv() {
        use crate::graph::{QuantInput, QuantOutput};
        let wt: Vec<i8> = (0..2 * 2 * 3 * 3)
            .map(|i| ((i * 37 % 23) as i8) - 11)
            .collect();
        let scales = vec![0.02, 0.03];
        let wf: Vec<f32> = wt
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * scales[i / 18])
            .collect();
        let x: Vec<f32> = (0..2 * 5 * 5)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let geometry = |weight: Tensor, q: bool| {
            let (stride, padding, dilation, groups) = ([2, 1], [1, 1, 1, 0], [1, 1], 1);
            let bias = Some(Tensor::f32(vec![2], vec![0.1, -0.2]));
            if q {
                Layer::QConv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                    dilation,
                    groups,
                    input: QuantInput::Dynamic,
                    output: QuantOutput::F32,
                    relu: false,
                }
            } else {
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                    dilation,
                    groups,
                }
            }
        };
        let run = |layer| {
            let mut e = Engine::new(&graph(vec![2, 5, 5], vec![layer]), 1).expect("plans");
            e.run(&[&x], 1).expect("runs");
            e.output_f32(0).expect("output").to_vec()
        };
        let want = run(geometry(Tensor::f32(vec![2, 2, 3, 3], wf), false));
        let got = run(geometry(i8_tensor(vec![2, 2, 3, 3], wt, scales), true));
        assert_eq!(got.len(), want.len());
        // Only the activations are rounded (step 3.2/255): |error| <= 18 · 0.5 · step · max|w|.
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.04, "{g} vs {w}");
        }
    }

    #[test]
    fn damaged_quantized_layers_are_graph_errors() {
        use crate::graph::{QuantInput, QuantOutput};
        let p = QuantParams {
            scale: 0.1,
            zero_point: 0,
        };
        let qdense = |weight, input, output| Layer::QDense {
            weight,
            bias: None,
            input,
            output,
            relu: false,
        };
        let ok_w = || i8_tensor(vec![2, 2], vec![1; 4], vec![1.0, 1.0]);
        let bad = [
            // scales: wrong count, zero, NaN, infinite
            qdense(
                i8_tensor(vec![2, 2], vec![1; 4], vec![1.0]),
                QuantInput::Dynamic,
                QuantOutput::F32,
            ),
            qdense(
                i8_tensor(vec![2, 2], vec![1; 4], vec![1.0, 0.0]),
                QuantInput::Dynamic,
                QuantOutput::F32,
            ),
            qdense(
                i8_tensor(vec![2, 2], vec![1; 4], vec![f32::NAN, 1.0]),
                QuantInput::Dynamic,
                QuantOutput::F32,
            ),
            qdense(
                i8_tensor(vec![2, 2], vec![1; 3], vec![1.0, 1.0]),
                QuantInput::Dynamic,
                QuantOutput::F32,
            ),
            // a float weight, a u8 output from a dynamic input, a static input fed float32
            qdense(
                Tensor::f32(vec![2, 2], vec![0.0; 4]),
                QuantInput::Dynamic,
                QuantOutput::F32,
            ),
            qdense(ok_w(), QuantInput::Dynamic, QuantOutput::U8(p)),
            qdense(ok_w(), QuantInput::Static(p), QuantOutput::F32),
            qdense(
                ok_w(),
                QuantInput::Dynamic,
                QuantOutput::U8(QuantParams {
                    scale: f32::INFINITY,
                    zero_point: 0,
                }),
            ),
            Layer::Quantize(QuantParams {
                scale: -1.0,
                zero_point: 0,
            }),
            Layer::Dense {
                weight: ok_w(),
                bias: None,
            },
        ];
        for layer in bad {
            let g = graph(vec![2], vec![layer.clone()]);
            assert!(
                matches!(Engine::new(&g, 1), Err(EngineError::Graph(_))),
                "{layer:?}"
            );
        }
        // A u8 graph output needs a dequantize.
        let g = graph(vec![2], vec![Layer::Quantize(p)]);
        assert!(matches!(Engine::new(&g, 1), Err(EngineError::Graph(_))));
        // A requantization multiplier out of range is refused when the engine is built.
        let tiny = QuantParams {
            scale: 1e-30,
            zero_point: 0,
        };
        let g = graph(
            vec![2],
            vec![
                Layer::Quantize(tiny),
                qdense(ok_w(), QuantInput::Static(tiny), QuantOutput::U8(p)),
                Layer::Dequantize(p),
            ],
        );
        assert!(matches!(Engine::new(&g, 1), Err(EngineError::Graph(_))));
    }

    #[test]
    fn sparse_weights_give_the_dense_results_at_every_batch_size() {
        let (o, n) = (24usize, 40usize);
        let w: Vec<f32> = (0..o * n)
            .map(|i| {
                if i % 4 == 1 {
                    (i % 9) as f32 / 9.0 - 0.4
                } else {
                    0.0
                }
            })
            .collect();
        let layers = |weight: Tensor| {
            vec![
                Layer::Dense {
                    weight,
                    bias: Some(Tensor::f32(vec![o as u32], vec![0.25; o])),
                },
                Layer::Tanh,
            ]
        };
        let dense = graph(
            vec![n as u32],
            layers(Tensor::f32(vec![o as u32, n as u32], w.clone())),
        );
        let sparse = graph(
            vec![n as u32],
            layers(Tensor::csr_from_dense(o, n, &w).unwrap()),
        );
        let mut de = Engine::new(&dense, 1).expect("plans");
        let mut se = Engine::new(&sparse, 1).expect("plans");
        let choices = se.kernel_choices().to_vec();
        assert_eq!(choices.len(), 1);
        assert_eq!(choices[0].nonzeros, w.iter().filter(|v| **v != 0.0).count());
        assert!(choices[0].to_string().contains("24×40"), "{}", choices[0]);
        for batch in [1usize, 3, 16, 37] {
            let x: Vec<f32> = (0..batch * n)
                .map(|i| (i % 11) as f32 / 5.0 - 1.0)
                .collect();
            de.run(&[&x], batch).expect("runs");
            se.run(&[&x], batch).expect("runs");
            let (a, b) = (de.output_f32(0).expect("y"), se.output_f32(0).expect("y"));
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() < 1e-5, "batch {batch}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn larger_batches_grow_the_buffers() {
        let g = graph(vec![1], vec![Layer::Sigmoid]);
        let mut e = Engine::new(&g, 1).expect("plans");
        e.run(&[&[0.0, 0.0, 0.0]], 3).expect("runs");
        assert_eq!(e.capacity(), 3);
        assert_eq!(e.output_f32(0), Some(&[0.5, 0.5, 0.5][..]));
    }
}
