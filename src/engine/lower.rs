//! Lowering: a validated graph becomes a [`Program`] of prepared steps over tensors with
//! planned layouts, once, when the engine is built.
//!
//! - **Layout planning** (`layout.rs`): feature maps live channels-innermost (NHWC) for the
//!   convolution and pooling kernels; `Reshape`, `Flatten` and `Transpose` become views of
//!   their input's memory (no step) whenever the memory order allows, so tf2onnx's
//!   NHWC↔NCHW transposes cost nothing; a dense layer reading a flattened feature map gets
//!   its weight columns permuted instead; where a consumer needs another order than a value
//!   has, one gather step moves it (an NCHW graph input on entry, a graph output on exit).
//! - **Fusion** (planned by `fuse.rs`): a folded node runs no step; its producer's kernel
//!   takes the activation, clamp or quantize.
//! - **Kernels**: the compute kernels (`kernels/`) pack their weights here; a sparse dense
//!   weight gets the kernel `choose.rs` times fastest.
//! - **Memory plan** (`arena.rs`): offsets for every tensor that owns memory.

use super::choose::{self, DenseWeight};
use super::exec::Op;
use super::fuse::{Fused, Fusion, act_of};
use super::kernels::{self, Activation, KernelError, OutputQuant, U8Quant};
use super::layout::Layout;
use super::{EngineError, KernelChoice, arena, ops, quant};
use crate::graph::{
    DType, Graph, GraphError, Layer, QuantInput, QuantOutput, Tensor as IrTensor, TensorData,
    ValueShapes,
};
use std::collections::HashMap;

/// A planned tensor: an IR value in some layout, or a copy of one in another layout.
#[derive(Debug, Clone)]
pub(super) struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Elements per sample.
    pub len: usize,
    pub layout: Layout,
    /// The tensor whose memory this one uses (itself unless it is a view).
    pub root: usize,
}

pub(super) struct Step {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// A graph lowered for execution.
pub(super) struct Program {
    pub tensors: Vec<TensorInfo>,
    pub steps: Vec<Step>,
    /// Tensor of each graph input, and of each graph output (plain layout).
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// Per tensor root: offset in its arena, per sample.
    pub offsets: Vec<usize>,
    /// Per-sample arena sizes: f32, u8, i64 elements.
    pub arena_len: [usize; 3],
    pub scratch_f32: usize,
    pub scratch_u8: usize,
    pub choices: Vec<KernelChoice>,
}

/// What a consumer needs of a value's memory order.
#[derive(Clone)]
enum Need {
    Any,
    Plain,
    /// Channels innermost (a C×H×W value).
    Nhwc,
    /// The value itself, not a reshape of another tensor (any axis order).
    Direct,
    Same(Layout),
}

struct Lowerer<'g> {
    graph: &'g Graph,
    shapes: &'g ValueShapes,
    tensors: Vec<TensorInfo>,
    steps: Vec<Step>,
    /// Tensor of each IR value as produced.
    value: Vec<usize>,
    /// Copies of tensors in other layouts.
    copies: HashMap<(usize, Layout), usize>,
    fusion: &'g Fusion,
    choices: Vec<KernelChoice>,
    scratch_f32: usize,
    scratch_u8: usize,
}

fn kernel_err(node: &str, e: KernelError) -> EngineError {
    EngineError::Graph(GraphError::Shape {
        node: node.to_string(),
        layer: "kernel",
        reason: e.to_string(),
    })
}

fn u8q(p: crate::graph::QuantParams) -> U8Quant {
    U8Quant {
        scale: p.scale,
        zero_point: p.zero_point,
    }
}

fn bias_vec(b: Option<&IrTensor>, n: usize) -> Vec<f32> {
    b.and_then(IrTensor::as_f32)
        .map_or_else(|| vec![0.0; n], <[f32]>::to_vec)
}

impl<'g> Lowerer<'g> {
    fn new_tensor(&mut self, dtype: DType, shape: Vec<usize>, layout: Layout) -> usize {
        let id = self.tensors.len();
        self.tensors.push(TensorInfo {
            dtype,
            len: shape.iter().product(),
            shape,
            layout,
            root: id,
        });
        id
    }

    fn view(&mut self, of: usize, shape: Vec<usize>, layout: Layout) -> usize {
        let root = self.tensors[of].root;
        let dtype = self.tensors[of].dtype;
        let id = self.new_tensor(dtype, shape, layout);
        self.tensors[id].root = root;
        id
    }

    /// The tensor of value `v` in a layout meeting `need` (a gather step when none does).
    fn want(&mut self, v: u32, need: Need) -> usize {
        let t = self.value[v as usize];
        let info = &self.tensors[t];
        let shape = info.shape.clone();
        let target = match need {
            Need::Any => return t,
            Need::Plain if info.layout.is_plain() => return t,
            Need::Plain => Layout::plain(&shape),
            Need::Nhwc if shape.len() == 3 && info.layout.same_as(&Layout::nhwc(&shape)) => {
                if info.layout.is_direct(&shape) {
                    return t;
                }
                return self.view(t, shape.clone(), Layout::nhwc(&shape));
            }
            Need::Nhwc => Layout::nhwc(&shape),
            Need::Direct if info.layout.is_direct(&shape) => return t,
            Need::Direct if info.layout.is_plain() => {
                return self.view(t, shape.clone(), Layout::plain(&shape));
            }
            Need::Direct => Layout::plain(&shape),
            Need::Same(l) if info.layout.same_as(&l) => {
                return self.view(t, shape.clone(), l);
            }
            Need::Same(l) => l,
        };
        if let Some(&c) = self.copies.get(&(t, target.clone())) {
            return c;
        }
        let map = target.gather_from(&self.tensors[t].layout);
        let dtype = self.tensors[t].dtype;
        let c = self.new_tensor(dtype, shape, target.clone());
        let op = match ops::as_transpose(&map) {
            Some((rows, cols)) if ops::FAST_TRANSPOSE_ROWS.contains(&rows) => {
                Op::Transpose { rows, cols }
            }
            _ => Op::Gather(map),
        };
        self.steps.push(Step {
            op,
            inputs: vec![t],
            output: c,
        });
        self.copies.insert((t, target), c);
        c
    }

    fn lower(&mut self) -> Result<(), EngineError> {
        let g = self.graph;
        for (i, spec) in g.inputs.iter().enumerate() {
            let shape = self.shapes.values[i].1.clone();
            let t = self.new_tensor(spec.dtype, shape.clone(), Layout::plain(&shape));
            self.value.push(t);
        }
        for (k, node) in g.nodes.iter().enumerate() {
            let v_out = g.inputs.len() + k;
            let (dtype, shape) = self.shapes.values[v_out].clone();
            if self.fusion.fused_away[k] {
                let t = self.value[node.inputs[0] as usize];
                self.value.push(t);
                continue;
            }
            let t = self.lower_node(k, dtype, shape)?;
            self.value.push(t);
        }
        Ok(())
    }

    /// Pushes the step(s) for node `k` and returns its output tensor.
    fn lower_node(
        &mut self,
        k: usize,
        dtype: DType,
        shape: Vec<usize>,
    ) -> Result<usize, EngineError> {
        let node = &self.graph.nodes[k];
        let name = node.name.as_str();
        let x_val = node.inputs[0];
        let x_shape = self.shapes.values[x_val as usize].1.clone();
        let fold = self.fusion.fold[k];
        let act = match fold {
            Some(Fused::Act(a)) => a,
            _ => Activation::Identity,
        };
        let ker = |e| kernel_err(name, e);
        let (op, inputs, layout): (Op, Vec<usize>, Layout) = match &node.layer {
            Layer::Flatten | Layer::Reshape { .. } => {
                let t = self.want(x_val, Need::Any);
                let l = self.tensors[t].layout.clone();
                return Ok(self.view(t, shape, l));
            }
            Layer::Transpose { perm } => {
                let t = self.want(x_val, Need::Direct);
                let p: Vec<usize> = perm.iter().map(|&a| a as usize).collect();
                let l = self.tensors[t].layout.transposed(&p);
                return Ok(self.view(t, shape, l));
            }
            Layer::Standardize { offset, scale } => {
                let t = self.want(x_val, Need::Plain);
                let n = x_shape.last().copied().unwrap_or(1);
                let widen = |v: &Vec<f32>| {
                    if v.len() == 1 {
                        vec![v[0]; n]
                    } else {
                        v.clone()
                    }
                };
                let op = match fold {
                    Some(Fused::Quantize(params)) => Op::StandardizeQuantize {
                        offset: widen(offset),
                        scale: widen(scale),
                        params,
                    },
                    _ => Op::Standardize {
                        offset: widen(offset),
                        scale: widen(scale),
                    },
                };
                let dtype = if matches!(fold, Some(Fused::Quantize(_))) {
                    DType::U8
                } else {
                    dtype
                };
                let out = self.new_tensor(dtype, shape.clone(), Layout::plain(&shape));
                self.steps.push(Step {
                    op,
                    inputs: vec![t],
                    output: out,
                });
                return Ok(out);
            }
            Layer::Dense { weight, bias } => {
                let (t, perm) = self.dense_input(x_val, &x_shape);
                let outputs = weight.shape[0] as usize;
                let inputs = weight.shape[1] as usize;
                let b = bias_vec(bias.as_ref(), outputs);
                let op = if let TensorData::Csr {
                    row_ptr,
                    col_idx,
                    values,
                } = &weight.data
                {
                    let mut csr = kernels::CsrMatrix::new(
                        outputs,
                        inputs,
                        row_ptr.clone(),
                        col_idx.clone(),
                        values.clone(),
                    )
                    .ok_or_else(|| GraphError::Shape {
                        node: name.to_string(),
                        layer: "dense",
                        reason: "inconsistent sparse weight".into(),
                    })?;
                    if let Some(p) = &perm {
                        let d = permute_columns(&csr.to_dense(), outputs, inputs, p);
                        csr = kernels::CsrMatrix::from_dense(outputs, inputs, &d).ok_or_else(
                            || GraphError::Shape {
                                node: name.to_string(),
                                layer: "dense",
                                reason: "sparse weight too large".into(),
                            },
                        )?;
                    }
                    let (w, choice) = choose::choose_dense_kernel(name, csr, &b);
                    if let DenseWeight::Csr { csr, .. } = &w {
                        self.scratch_f32 = self.scratch_f32.max(csr.cols() * kernels::CSR_TILE);
                    }
                    self.choices.push(choice);
                    Op::DenseCsr {
                        weight: w,
                        bias: b,
                        inputs,
                        outputs,
                    }
                } else {
                    let w = weight.as_f32().unwrap_or(&[]);
                    let w = match &perm {
                        Some(p) => permute_columns(w, outputs, inputs, p),
                        None => w.to_vec(),
                    };
                    Op::Dense(Box::new(
                        kernels::DenseF32::new(inputs, outputs, &w, &b, act).map_err(ker)?,
                    ))
                };
                let out = self.new_tensor(dtype, shape.clone(), Layout::plain(&shape));
                self.steps.push(Step {
                    op,
                    inputs: vec![t],
                    output: out,
                });
                if matches!(fold, Some(Fused::Act(_)))
                    && matches!(weight.data, TensorData::Csr { .. })
                {
                    return Err(EngineError::Unsupported {
                        node: name.to_string(),
                        layer: "dense",
                        reason: "activation fused into a sparse layer".into(),
                    });
                }
                return Ok(out);
            }
            Layer::QDense {
                weight,
                bias,
                input,
                output,
                relu,
            } => {
                let (t, perm) = self.dense_input(x_val, &x_shape);
                let weight = match &perm {
                    Some(p) => permute_i8_columns(weight, p),
                    None => weight.clone(),
                };
                let core = quant::QCore::new(
                    name,
                    "qdense",
                    &weight,
                    bias.as_ref(),
                    *input,
                    *output,
                    *relu,
                )?;
                let op = Op::QDense(Box::new(quant::QDense::new(name, core)?));
                (op, vec![t], Layout::plain(&shape))
            }
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
            } => {
                let t = self.want(x_val, Need::Nhwc);
                let geom = conv_geometry(
                    &x_shape, &shape, weight, *stride, *padding, *dilation, *groups,
                )
                .map_err(ker)?;
                let b = bias_vec(bias.as_ref(), shape[0]);
                let conv = kernels::ConvF32::new(geom, weight.as_f32().unwrap_or(&[]), &b, act)
                    .map_err(ker)?;
                self.scratch_f32 = self.scratch_f32.max(conv.scratch_len());
                (Op::Conv(Box::new(conv)), vec![t], Layout::nhwc(&shape))
            }
            Layer::QConv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
                input: QuantInput::Static(pin),
                output,
                relu,
            } => {
                let t = self.want(x_val, Need::Nhwc);
                let geom = conv_geometry(
                    &x_shape, &shape, weight, *stride, *padding, *dilation, *groups,
                )
                .map_err(ker)?;
                let (values, scales) = weight.as_i8().ok_or_else(|| GraphError::Shape {
                    node: name.to_string(),
                    layer: "qconv2d",
                    reason: "weight must be int8".into(),
                })?;
                let b = bias_vec(bias.as_ref(), shape[0]);
                let bias_q: Vec<i32> = b
                    .iter()
                    .zip(scales)
                    .map(|(&b, &s)| {
                        kernels::int8::bias_to_i32(b, pin.scale, s)
                            .clamp(i32::MIN as i64, i32::MAX as i64) as i32
                    })
                    .collect();
                let out_q = match output {
                    QuantOutput::U8(p) => {
                        let base = if *relu {
                            Activation::Relu
                        } else {
                            Activation::Identity
                        };
                        let mut o = OutputQuant::u8_with(u8q(*p), base).map_err(ker)?;
                        if let (Some(Fused::Clamp(lo, hi)), OutputQuant::U8 { min, max, .. }) =
                            (fold, &mut o)
                        {
                            *min = (*min).max(lo);
                            *max = (*max).min(hi).max(*min);
                        }
                        o
                    }
                    QuantOutput::F32 => {
                        OutputQuant::F32(if *relu { Activation::Relu } else { act })
                    }
                };
                let conv = kernels::ConvU8::new(geom, values, scales, &bias_q, u8q(*pin), out_q)
                    .map_err(ker)?;
                self.scratch_u8 = self.scratch_u8.max(conv.scratch_len());
                (Op::ConvU8(Box::new(conv)), vec![t], Layout::nhwc(&shape))
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
                let t = self.want(x_val, Need::Plain);
                let core = quant::QCore::new(
                    name,
                    "qconv2d",
                    weight,
                    bias.as_ref(),
                    *input,
                    *output,
                    *relu,
                )?;
                let p = old_conv_params(
                    &x_shape, &shape, weight, *stride, *padding, *dilation, *groups,
                );
                let op = Op::QConvDynamic(Box::new(quant::QConv2d::new(core, p)));
                (op, vec![t], Layout::plain(&shape))
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
            }
            | Layer::QAvgPool2d {
                kernel,
                stride,
                padding,
                ..
            } => {
                let t = self.want(x_val, Need::Nhwc);
                let geom = kernels::PoolGeometry::new(
                    [x_shape[1], x_shape[2], x_shape[0]],
                    [kernel[0] as usize, kernel[1] as usize],
                    [stride[0] as usize, stride[1] as usize],
                    padding.map(|p| p as usize),
                )
                .map_err(ker)?;
                let op = match &node.layer {
                    Layer::MaxPool2d { .. } if dtype == DType::F32 => Op::MaxPoolF32(geom),
                    Layer::MaxPool2d { .. } => Op::MaxPoolU8(geom),
                    Layer::AvgPool2d {
                        count_include_pad, ..
                    } => Op::AvgPoolF32(geom, *count_include_pad),
                    Layer::QAvgPool2d {
                        count_include_pad,
                        input,
                        output,
                        ..
                    } => {
                        let o = self.clamped_u8(*output, fold).map_err(ker)?;
                        Op::AvgPoolU8(Box::new(
                            kernels::AvgPoolU8::new(geom, *count_include_pad, u8q(*input), o)
                                .map_err(ker)?,
                        ))
                    }
                    _ => unreachable!("matched above"),
                };
                (op, vec![t], Layout::nhwc(&shape))
            }
            Layer::GlobalAvgPool | Layer::QGlobalAvgPool { .. } => {
                let t = self.want(x_val, Need::Nhwc);
                let channels = x_shape[0];
                let op = match &node.layer {
                    Layer::QGlobalAvgPool { input, output } => {
                        let o = self.clamped_u8(*output, fold).map_err(ker)?;
                        Op::GlobalAvgU8(Box::new(
                            kernels::GlobalAvgPoolU8::new(
                                x_shape[1] * x_shape[2],
                                channels,
                                u8q(*input),
                                o,
                            )
                            .map_err(ker)?,
                        ))
                    }
                    _ => Op::GlobalAvgF32 { channels },
                };
                (op, vec![t], Layout::nhwc(&shape))
            }
            Layer::Relu
            | Layer::LeakyRelu { .. }
            | Layer::Sigmoid
            | Layer::Tanh
            | Layer::Clip { .. }
            | Layer::HardSwish => {
                let t = self.want(x_val, Need::Any);
                let a = act_of(&node.layer).unwrap_or(Activation::Identity);
                (Op::Activation(a), vec![t], self.tensors[t].layout.clone())
            }
            Layer::HardSigmoid { alpha, beta } => {
                let t = self.want(x_val, Need::Any);
                let op = Op::HardSigmoid {
                    alpha: *alpha,
                    beta: *beta,
                };
                (op, vec![t], self.tensors[t].layout.clone())
            }
            Layer::Softmax => {
                let t = self.want(x_val, Need::Plain);
                let axis_len = x_shape.last().copied().unwrap_or(1);
                (Op::Softmax { axis_len }, vec![t], Layout::plain(&shape))
            }
            Layer::ArgMax { labels } => {
                let t = self.want(x_val, Need::Plain);
                let op = Op::ArgMax {
                    axis_len: x_shape.last().copied().unwrap_or(1),
                    labels: labels.clone(),
                };
                (op, vec![t], Layout::plain(&shape))
            }
            Layer::TreeEnsemble {
                trees,
                n_outputs,
                aggregate,
                base_values,
                post_transform,
            } => {
                let t = self.want(x_val, Need::Plain);
                let e = kernels::TreeEnsemble::new(
                    trees,
                    x_shape.iter().product(),
                    *n_outputs as usize,
                    *aggregate,
                    base_values,
                    *post_transform,
                )
                .ok_or_else(|| GraphError::Shape {
                    node: name.to_string(),
                    layer: "tree_ensemble",
                    reason: "more nodes than 32-bit indices address".into(),
                })?;
                (
                    Op::TreeEnsemble(Box::new(e)),
                    vec![t],
                    Layout::plain(&shape),
                )
            }
            Layer::Quantize(p) | Layer::Dequantize(p) => {
                let t = self.want(x_val, Need::Any);
                let op = if matches!(node.layer, Layer::Quantize(_)) {
                    Op::Quantize(*p)
                } else {
                    Op::Dequantize(*p)
                };
                (op, vec![t], self.tensors[t].layout.clone())
            }
            Layer::ToU8 | Layer::ToI8 => {
                let t = self.want(x_val, Need::Any);
                (Op::FlipSign, vec![t], self.tensors[t].layout.clone())
            }
            Layer::QClamp { min, max } => {
                let t = self.want(x_val, Need::Any);
                let op = Op::Clamp {
                    min: *min,
                    max: *max,
                };
                (op, vec![t], self.tensors[t].layout.clone())
            }
            Layer::QLookup { table } => {
                let t = self.want(x_val, Need::Any);
                let mut tab = [0u8; 256];
                tab.copy_from_slice(&table[..256]);
                (
                    Op::Lookup(Box::new(tab)),
                    vec![t],
                    self.tensors[t].layout.clone(),
                )
            }
            Layer::Add | Layer::QAdd { .. } => {
                let a = self.want(x_val, Need::Any);
                let l = self.tensors[a].layout.clone();
                let b = self.want(node.inputs[1], Need::Same(l.clone()));
                let op = match &node.layer {
                    Layer::QAdd {
                        a: pa,
                        b: pb,
                        output,
                    } => {
                        let o = self.clamped_u8(*output, fold).map_err(ker)?;
                        Op::AddU8(Box::new(
                            kernels::AddU8::new(u8q(*pa), u8q(*pb), o).map_err(ker)?,
                        ))
                    }
                    _ => Op::AddF32(act),
                };
                (op, vec![a, b], l)
            }
            Layer::ChannelAffine { scale, offset } => {
                let mut t = self.want(x_val, Need::Any);
                let l = self.tensors[t].layout.clone();
                let inner = if l.is_plain() {
                    x_shape.iter().skip(1).product::<usize>()
                } else if x_shape.len() == 3 && l.same_as(&Layout::nhwc(&x_shape)) {
                    0
                } else {
                    t = self.want(x_val, Need::Plain);
                    x_shape.iter().skip(1).product::<usize>()
                };
                let layout = self.tensors[t].layout.clone();
                let op = Op::ChannelAffine {
                    scale: scale.clone(),
                    offset: offset.clone(),
                    inner,
                };
                (op, vec![t], layout)
            }
            Layer::Concat { axis } => {
                let first = self.want(x_val, Need::Direct);
                let l = self.tensors[first].layout.clone();
                let mut ins = vec![first];
                for &v in &node.inputs[1..] {
                    let s = &self.shapes.values[v as usize].1;
                    let mut want_l = l.clone();
                    want_l.base = s.clone();
                    let t = self.want(v, Need::Same(want_l));
                    ins.push(t);
                }
                // Memory position of the joined axis; rows are what lies outside it.
                let axis = *axis as usize;
                let j = l.perm.iter().position(|&a| a == axis).unwrap_or(0);
                let phys_out: Vec<usize> = l.perm.iter().map(|&a| shape[a]).collect();
                let outer: usize = phys_out[..j].iter().product();
                let inner: usize = phys_out[j + 1..].iter().product();
                let chunks: Vec<usize> = node
                    .inputs
                    .iter()
                    .map(|&v| self.shapes.values[v as usize].1[axis] * inner)
                    .collect();
                let row = shape[axis] * inner;
                let layout = Layout {
                    base: shape.clone(),
                    perm: l.perm.clone(),
                };
                (Op::Concat { outer, chunks, row }, ins, layout)
            }
            Layer::Pad { begin, end, value } => {
                let t = self.want(x_val, Need::Direct);
                let l = self.tensors[t].layout.clone();
                let op = Op::Pad {
                    dims: l.physical_dims(),
                    begin: l.perm.iter().map(|&a| begin[a] as usize).collect(),
                    end: l.perm.iter().map(|&a| end[a] as usize).collect(),
                    value: *value,
                };
                let layout = Layout {
                    base: shape.clone(),
                    perm: l.perm.clone(),
                };
                (op, vec![t], layout)
            }
        };
        let out = self.new_tensor(dtype, shape, layout);
        self.steps.push(Step {
            op,
            inputs,
            output: out,
        });
        Ok(out)
    }

    /// A u8 output with a folded clamp.
    fn clamped_u8(
        &self,
        p: crate::graph::QuantParams,
        fold: Option<Fused>,
    ) -> Result<OutputQuant, KernelError> {
        let mut o = OutputQuant::u8_with(u8q(p), Activation::Identity)?;
        if let (Some(Fused::Clamp(lo, hi)), OutputQuant::U8 { min, max, .. }) = (fold, &mut o) {
            *min = lo;
            *max = hi.max(lo);
        }
        Ok(o)
    }

    /// The input of a dense layer: a flat value in any layout (the weight columns follow
    /// its memory order), else plain rows.
    fn dense_input(&mut self, v: u32, shape: &[usize]) -> (usize, Option<Vec<u32>>) {
        if shape.len() == 1 {
            let t = self.want(v, Need::Any);
            let l = &self.tensors[t].layout;
            if l.is_plain() {
                return (t, None);
            }
            return (t, Some(l.memory_to_logical()));
        }
        (self.want(v, Need::Plain), None)
    }
}

/// `w'[o, i] = w[o, perm[i]]`: the weight reading an input stored in another order.
fn permute_columns(w: &[f32], outputs: usize, inputs: usize, perm: &[u32]) -> Vec<f32> {
    let mut out = vec![0.0; outputs * inputs];
    for o in 0..outputs {
        for (i, &p) in perm.iter().enumerate() {
            out[o * inputs + i] = w[o * inputs + p as usize];
        }
    }
    out
}

fn permute_i8_columns(w: &IrTensor, perm: &[u32]) -> IrTensor {
    let mut t = w.clone();
    if let TensorData::I8 { values, .. } = &mut t.data {
        let inputs = perm.len();
        let src = values.clone();
        for (o, row) in values.chunks_mut(inputs.max(1)).enumerate() {
            for (i, &p) in perm.iter().enumerate() {
                row[i] = src[o * inputs + p as usize];
            }
        }
    }
    t
}

fn conv_geometry(
    x: &[usize],
    y: &[usize],
    weight: &IrTensor,
    stride: [u32; 2],
    padding: [u32; 4],
    dilation: [u32; 2],
    groups: u32,
) -> Result<kernels::ConvGeometry, KernelError> {
    kernels::ConvGeometry::new(
        [x[1], x[2], x[0]],
        y[0],
        [weight.shape[2] as usize, weight.shape[3] as usize],
        [stride[0] as usize, stride[1] as usize],
        padding.map(|p| p as usize),
        [dilation[0] as usize, dilation[1] as usize],
        groups as usize,
    )
}

fn old_conv_params(
    x: &[usize],
    y: &[usize],
    weight: &IrTensor,
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

/// Largest arena a graph may plan, bytes per sample (with the kernels' scratch).
const MAX_ARENA_BYTES: usize = 1 << 30;

/// Lowers a validated graph with its fusion plan: layouts, kernels, memory plan.
pub(super) fn lower(
    graph: &Graph,
    shapes: &ValueShapes,
    fusion: &Fusion,
) -> Result<Program, EngineError> {
    let mut l = Lowerer {
        graph,
        shapes,
        tensors: Vec::new(),
        steps: Vec::new(),
        value: Vec::new(),
        copies: HashMap::new(),
        fusion,
        choices: Vec::new(),
        scratch_f32: 0,
        scratch_u8: 0,
    };
    l.lower()?;
    let inputs: Vec<usize> = (0..graph.inputs.len()).map(|i| l.value[i]).collect();
    let mut outputs = Vec::with_capacity(graph.outputs.len());
    for o in &graph.outputs {
        outputs.push(l.want(o.value, Need::Plain));
    }
    super::codemaps::merge(&l.tensors, &mut l.steps, &outputs);
    let (offsets, arena_len) = arena::place(&l.tensors, &l.steps, &inputs, &outputs);
    let bytes =
        arena_len[0] * 4 + arena_len[1] + arena_len[2] * 8 + l.scratch_f32 * 4 + l.scratch_u8;
    if bytes > MAX_ARENA_BYTES {
        return Err(EngineError::Graph(GraphError::Shape {
            node: graph
                .nodes
                .last()
                .map_or_else(String::new, |n| n.name.clone()),
            layer: "graph",
            reason: format!(
                "the memory plan needs {bytes} bytes per sample (limit {MAX_ARENA_BYTES})"
            ),
        }));
    }
    Ok(Program {
        tensors: l.tensors,
        steps: l.steps,
        inputs,
        outputs,
        offsets,
        arena_len,
        scratch_f32: l.scratch_f32,
        scratch_u8: l.scratch_u8,
        choices: l.choices,
    })
}
