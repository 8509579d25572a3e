//! Execution: the prepared steps of a lowered graph run in order over the arenas. Nothing
//! here allocates; each step reads its inputs' slices and writes its output's.

use super::buffer::Aligned;
use super::choose::DenseWeight;
use super::kernels::{self, Activation};
use super::lower::Program;
use super::{ops, quant};
use crate::graph::{DType, QuantParams};
use std::ops::Range;

/// The operation of one step, with everything it needs prepared at load.
pub(super) enum Op {
    Standardize {
        offset: Vec<f32>,
        scale: Vec<f32>,
    },
    StandardizeQuantize {
        offset: Vec<f32>,
        scale: Vec<f32>,
        params: QuantParams,
    },
    Dense(Box<kernels::DenseF32>),
    /// A dense layer whose artifact stores the weight sparsely (the kernel chosen by
    /// timing at load).
    DenseCsr {
        weight: DenseWeight,
        bias: Vec<f32>,
        inputs: usize,
        outputs: usize,
    },
    Conv(Box<kernels::ConvF32>),
    ConvU8(Box<kernels::ConvU8>),
    /// An int8 convolution quantizing its float input per sample (NCHW, row-major).
    QConvDynamic(Box<quant::QConv2d>),
    QDense(Box<quant::QDense>),
    MaxPoolF32(kernels::PoolGeometry),
    MaxPoolU8(kernels::PoolGeometry),
    AvgPoolF32(kernels::PoolGeometry, bool),
    AvgPoolU8(Box<kernels::AvgPoolU8>),
    GlobalAvgF32 {
        channels: usize,
    },
    GlobalAvgU8(Box<kernels::GlobalAvgPoolU8>),
    Activation(Activation),
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    Softmax {
        axis_len: usize,
    },
    ArgMax {
        axis_len: usize,
        labels: Option<Vec<i64>>,
    },
    TreeEnsemble(Box<kernels::TreeEnsemble>),
    Quantize(QuantParams),
    Dequantize(QuantParams),
    AddF32(Activation),
    AddU8(Box<kernels::AddU8>),
    /// Channels outermost with `inner` values each, or innermost when `inner == 0`.
    ChannelAffine {
        scale: Vec<f32>,
        offset: Vec<f32>,
        inner: usize,
    },
    /// Each sample is `outer` rows of `row` values; input `i` gives `chunks[i]` values of
    /// each row.
    Concat {
        outer: usize,
        chunks: Vec<usize>,
        row: usize,
    },
    /// Constant padding of a sample stored with memory dims `dims`.
    Pad {
        dims: Vec<usize>,
        begin: Vec<usize>,
        end: Vec<usize>,
        value: f32,
    },
    /// Moves a sample to another layout.
    Gather(Vec<u32>),
    /// Moves a sample to another layout that is a 2-D transpose of its `rows × cols`
    /// values (NCHW ↔ NHWC): the same result as the [`Op::Gather`] it replaces, without
    /// reading an index per value (an NCHW 96×96×3 input 17 → 3 µs).
    Transpose {
        rows: usize,
        cols: usize,
    },
    Clamp {
        min: u8,
        max: u8,
    },
    Lookup(Box<[u8; 256]>),
    /// A table of 256 codes per position of the last axis (`width` of them), merged from
    /// code-to-code steps (`codemaps.rs`).
    LookupLast {
        width: usize,
        tables: Vec<u8>,
    },
    FlipSign,
}

/// Tensor storage: one arena per element type (int8 codes share the byte arena).
#[derive(Default)]
pub(super) struct Arenas {
    pub f32: Aligned<f32>,
    pub u8: Aligned<u8>,
    pub i64: Aligned<i64>,
}

/// Kernel scratch, sized at load for one sample of the hungriest step.
#[derive(Default)]
pub(super) struct Scratch {
    pub f32: Aligned<f32>,
    pub u8: Aligned<u8>,
}

/// `(input, output)` of disjoint ranges of one buffer.
fn one<T>(buf: &mut [T], x: Range<usize>, y: Range<usize>) -> (&[T], &mut [T]) {
    let (lo, rest) = buf.split_at_mut(y.start);
    let (out, hi) = rest.split_at_mut(y.end - y.start);
    let x = if x.end <= y.start {
        &lo[x]
    } else {
        &hi[x.start - y.end..x.end - y.end]
    };
    (x, out)
}

/// `(a, b, output)` with the output disjoint from both inputs.
fn two<T>(
    buf: &mut [T],
    a: Range<usize>,
    b: Range<usize>,
    y: Range<usize>,
) -> (&[T], &[T], &mut [T]) {
    let (lo, rest) = buf.split_at_mut(y.start);
    let (out, hi) = rest.split_at_mut(y.end - y.start);
    let pick = |r: Range<usize>| -> &[T] {
        if r.end <= y.start {
            &lo[r]
        } else {
            &hi[r.start - y.end..r.end - y.end]
        }
    };
    (pick(a), pick(b), out)
}

impl Program {
    /// Elements of tensor `t` for `batch` samples in its arena.
    fn range(&self, t: usize, batch: usize) -> Range<usize> {
        let off = self.offsets[self.tensors[t].root] * batch;
        off..off + self.tensors[t].len * batch
    }

    /// Runs every step for `batch` samples already written to the input tensors.
    pub(super) fn execute(&self, a: &mut Arenas, s: &mut Scratch, batch: usize) {
        for step in &self.steps {
            let y = self.range(step.output, batch);
            let x = step.inputs.first().map_or(0..0, |&t| self.range(t, batch));
            let n_in = step.inputs.first().map_or(0, |&t| self.tensors[t].len);
            let n_out = self.tensors[step.output].len;
            macro_rules! per_sample {
                ($x:expr, $y:expr, |$xs:ident, $ys:ident| $body:expr) => {
                    for ($xs, $ys) in $x
                        .chunks_exact(n_in.max(1))
                        .zip($y.chunks_exact_mut(n_out.max(1)))
                    {
                        $body
                    }
                };
            }
            // A layout move of any element type (its arena chosen by the output's type).
            macro_rules! any_dtype {
                (|$xs:ident, $ys:ident| $body:expr) => {
                    match self.tensors[step.output].dtype {
                        DType::F32 => {
                            let (x, y) = one(&mut a.f32, x, y);
                            per_sample!(x, y, |$xs, $ys| $body);
                        }
                        DType::I64 => {
                            let (x, y) = one(&mut a.i64, x, y);
                            per_sample!(x, y, |$xs, $ys| $body);
                        }
                        _ => {
                            let (x, y) = one(&mut a.u8, x, y);
                            per_sample!(x, y, |$xs, $ys| $body);
                        }
                    }
                };
            }
            match &step.op {
                Op::Standardize { offset, scale } => {
                    let (x, y) = one(&mut a.f32, x, y);
                    kernels::standardize(x, offset, scale, y);
                }
                Op::StandardizeQuantize {
                    offset,
                    scale,
                    params,
                } => kernels::standardize_quantize_u8(
                    &a.f32[x],
                    offset,
                    scale,
                    params.scale,
                    params.zero_point,
                    &mut a.u8[y],
                ),
                Op::Dense(d) => {
                    let (x, y) = one(&mut a.f32, x, y);
                    d.run(x, y);
                }
                Op::DenseCsr {
                    weight,
                    bias,
                    inputs,
                    outputs,
                } => {
                    let (x, y) = one(&mut a.f32, x, y);
                    match weight {
                        DenseWeight::Csr {
                            csr, single: true, ..
                        } if batch < kernels::CSR_TILE => kernels::csr_dense(x, csr, bias, y),
                        DenseWeight::Csr {
                            csr, batched: true, ..
                        } if batch >= kernels::CSR_TILE => {
                            kernels::csr_dense_batched(x, csr, bias, y, &mut s.f32)
                        }
                        DenseWeight::Dense(w) | DenseWeight::Csr { dense: w, .. } => {
                            kernels::dense(x, w, bias, *inputs, *outputs, y)
                        }
                    }
                }
                Op::Conv(c) => {
                    let (x, y) = one(&mut a.f32, x, y);
                    per_sample!(x, y, |xs, ys| c.run(xs, ys, &mut s.f32));
                }
                Op::ConvU8(c) => {
                    if c.output_is_u8() {
                        let (x, y) = one(&mut a.u8, x, y);
                        per_sample!(x, y, |xs, ys| c.run_u8(xs, ys, &mut s.u8));
                    } else {
                        let (x, y) = (&a.u8[x], &mut a.f32[y]);
                        per_sample!(x, y, |xs, ys| c.run_f32(xs, ys, &mut s.u8));
                    }
                }
                Op::QConvDynamic(q) => {
                    let (x, y) = one(&mut a.f32, x, y);
                    q.run(quant::QIn::F32(x), quant::QOut::F32(y), batch);
                }
                Op::QDense(q) => {
                    let x_f32 = self.tensors[step.inputs[0]].dtype == DType::F32;
                    let y_f32 = self.tensors[step.output].dtype == DType::F32;
                    match (x_f32, y_f32) {
                        (true, true) => {
                            let (x, y) = one(&mut a.f32, x, y);
                            q.run(quant::QIn::F32(x), quant::QOut::F32(y));
                        }
                        (false, true) => {
                            q.run(quant::QIn::U8(&a.u8[x]), quant::QOut::F32(&mut a.f32[y]))
                        }
                        (true, false) => {
                            q.run(quant::QIn::F32(&a.f32[x]), quant::QOut::U8(&mut a.u8[y]))
                        }
                        (false, false) => {
                            let (x, y) = one(&mut a.u8, x, y);
                            q.run(quant::QIn::U8(x), quant::QOut::U8(y));
                        }
                    }
                }
                Op::MaxPoolF32(g) => {
                    let (x, y) = one(&mut a.f32, x, y);
                    per_sample!(x, y, |xs, ys| kernels::max_pool_f32(g, xs, ys));
                }
                Op::MaxPoolU8(g) => {
                    let (x, y) = one(&mut a.u8, x, y);
                    per_sample!(x, y, |xs, ys| kernels::max_pool_u8(g, xs, ys));
                }
                Op::AvgPoolF32(g, include) => {
                    let (x, y) = one(&mut a.f32, x, y);
                    per_sample!(x, y, |xs, ys| kernels::avg_pool_f32(g, *include, xs, ys));
                }
                Op::AvgPoolU8(p) => {
                    let (x, y) = one(&mut a.u8, x, y);
                    per_sample!(x, y, |xs, ys| p.run(xs, ys));
                }
                Op::GlobalAvgF32 { channels } => {
                    let (x, y) = one(&mut a.f32, x, y);
                    per_sample!(x, y, |xs, ys| kernels::global_avg_pool_f32(
                        xs, *channels, ys
                    ));
                }
                Op::GlobalAvgU8(p) => {
                    let (x, y) = one(&mut a.u8, x, y);
                    per_sample!(x, y, |xs, ys| p.run(xs, ys));
                }
                Op::Activation(act) => {
                    let (x, y) = one(&mut a.f32, x, y);
                    y.copy_from_slice(x);
                    kernels::activate(*act, y);
                }
                Op::HardSigmoid { alpha, beta } => {
                    let (x, y) = one(&mut a.f32, x, y);
                    ops::hard_sigmoid(x, *alpha, *beta, y);
                }
                Op::Softmax { axis_len } => {
                    let (x, y) = one(&mut a.f32, x, y);
                    kernels::softmax(x, *axis_len, y);
                }
                Op::ArgMax { axis_len, labels } => {
                    kernels::argmax(&a.f32[x], *axis_len, labels.as_deref(), &mut a.i64[y])
                }
                Op::TreeEnsemble(e) => {
                    let (x, y) = one(&mut a.f32, x, y);
                    e.run(x, y);
                }
                Op::Quantize(p) => {
                    kernels::quantize_u8(&a.f32[x], p.scale, p.zero_point, &mut a.u8[y])
                }
                Op::Dequantize(p) => {
                    kernels::int8::dequantize(&a.u8[x], p.scale, p.zero_point, &mut a.f32[y])
                }
                Op::AddF32(act) => {
                    let b = self.range(step.inputs[1], batch);
                    let (xa, xb, y) = two(&mut a.f32, x, b, y);
                    kernels::add_f32(xa, xb, *act, y);
                }
                Op::AddU8(add) => {
                    let b = self.range(step.inputs[1], batch);
                    let (xa, xb, y) = two(&mut a.u8, x, b, y);
                    add.run(xa, xb, y);
                }
                Op::ChannelAffine {
                    scale,
                    offset,
                    inner,
                } => {
                    let (x, y) = one(&mut a.f32, x, y);
                    ops::channel_affine(x, scale, offset, *inner, y);
                }
                Op::Concat { outer, chunks, row } => {
                    let mut at = 0;
                    for (&t, &chunk) in step.inputs.iter().zip(chunks) {
                        let xr = self.range(t, batch);
                        let n = self.tensors[t].len.max(1);
                        let is_f32 = self.tensors[t].dtype == DType::F32;
                        if is_f32 {
                            let (x, y) = one(&mut a.f32, xr, y.clone());
                            for (xs, ys) in x.chunks_exact(n).zip(y.chunks_exact_mut(n_out.max(1)))
                            {
                                ops::concat_part(xs, *outer, chunk, *row, at, ys);
                            }
                        } else {
                            let (x, y) = one(&mut a.u8, xr, y.clone());
                            for (xs, ys) in x.chunks_exact(n).zip(y.chunks_exact_mut(n_out.max(1)))
                            {
                                ops::concat_part(xs, *outer, chunk, *row, at, ys);
                            }
                        }
                        at += chunk;
                    }
                }
                Op::Pad {
                    dims,
                    begin,
                    end,
                    value,
                } => {
                    if self.tensors[step.output].dtype == DType::F32 {
                        let (x, y) = one(&mut a.f32, x, y);
                        per_sample!(x, y, |xs, ys| ops::pad(xs, dims, begin, end, *value, ys));
                    } else {
                        let (x, y) = one(&mut a.u8, x, y);
                        let v = *value as u8;
                        per_sample!(x, y, |xs, ys| ops::pad(xs, dims, begin, end, v, ys));
                    }
                }
                Op::Transpose { rows, cols } => {
                    any_dtype!(|xs, ys| ops::transpose(xs, *rows, *cols, ys))
                }
                Op::Gather(map) => any_dtype!(|xs, ys| ops::gather(xs, map, ys)),
                Op::Clamp { min, max } => {
                    let (x, y) = one(&mut a.u8, x, y);
                    ops::clamp_codes(x, *min, *max, y);
                }
                Op::Lookup(table) => {
                    let (x, y) = one(&mut a.u8, x, y);
                    ops::lookup(x, table, y);
                }
                Op::LookupLast { width, tables } => {
                    let (x, y) = one(&mut a.u8, x, y);
                    super::codemaps::lookup_last(x, *width, tables, y);
                }
                Op::FlipSign => {
                    let (x, y) = one(&mut a.u8, x, y);
                    ops::flip_sign(x, y);
                }
            }
        }
    }
}
