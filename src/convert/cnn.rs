//! Float CNN ops: convolution (with BatchNormalization, Pad and per-channel Mul/Add by
//! constants folded into it), pooling and reductions, Gemm/MatMul and Softmax; the
//! element-wise ops are in `elementwise.rs`, the ops that only move values (Pad, Concat,
//! Transpose, the Reshape family) in `shape.rs`. Each hands a quantized input (QDQ or
//! QOperator codes) to `quant.rs`, or works on the codes directly where the op only moves
//! them (Reshape, Transpose, MaxPool, Pad, Concat).

use super::{ConvertError, Converter, Entry, Kind, Val, attr_f, attr_i, attr_ints, attr_s};
use crate::graph::{Layer, Node, Tensor, TensorData, ValueId};
use tract_onnx::pb::NodeProto;

/// Stride, padding (top, left, bottom, right) and dilation of a window op.
pub(super) type WindowAttrs = ([u32; 2], [u32; 4], [u32; 2]);

impl Converter {
    /// Whether input `ix` holds quantized codes or their (lazy) dequantization.
    pub(super) fn is_quantized(&self, node: &NodeProto, ix: usize) -> bool {
        matches!(
            node.input.get(ix).and_then(|n| self.entries.get(n)),
            Some(
                Entry::Dequant { .. }
                    | Entry::Value(Val {
                        kind: Kind::Codes { .. },
                        ..
                    })
            )
        )
    }

    /// The sample shape of an input, whatever it holds.
    pub(super) fn input_shape(
        &self,
        node: &NodeProto,
        ix: usize,
    ) -> Result<Vec<usize>, ConvertError> {
        match self.entry(node, ix)? {
            Entry::Value(v) => Ok(self.shape_of(v.id).to_vec()),
            Entry::Dequant { codes, .. } => Ok(self.shape_of(codes.id).to_vec()),
            Entry::Const(_) | Entry::Shape(_) => Err(Self::unsupported(
                node,
                format!(
                    "input {:?} must be computed from the graph input",
                    node.input[ix]
                ),
            )),
        }
    }

    pub(super) fn window_attrs(
        &self,
        node: &NodeProto,
        s: &[usize],
        kernel: [usize; 2],
    ) -> Result<WindowAttrs, ConvertError> {
        let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1, 1]);
        let dil = attr_ints(node, "dilations").unwrap_or_else(|| vec![1, 1]);
        if strides.len() != 2 || dil.len() != 2 || s.len() != 3 {
            return Err(Self::unsupported(
                node,
                format!("only 2-D windows over N×C×H×W input are native (sample shape {s:?})"),
            ));
        }
        if strides
            .iter()
            .chain(&dil)
            .any(|&v| v < 1 || v > u32::MAX as i64)
        {
            return Err(Self::unsupported(
                node,
                format!("strides {strides:?} or dilations {dil:?}"),
            ));
        }
        let stride = [strides[0] as u32, strides[1] as u32];
        let dilation = [dil[0] as u32, dil[1] as u32];
        let auto_pad = attr_s(node, "auto_pad").unwrap_or_else(|| "NOTSET".into());
        let pads = match auto_pad.as_str() {
            "NOTSET" => {
                let p = attr_ints(node, "pads").unwrap_or_else(|| vec![0; 4]);
                if p.len() != 4 || p.iter().any(|&v| v < 0 || v > u32::MAX as i64) {
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
                    let eff = kernel[ax]
                        .saturating_sub(1)
                        .saturating_mul(dilation[ax] as usize)
                        + 1;
                    let total = (out.saturating_sub(1))
                        .saturating_mul(stride[ax] as usize)
                        .saturating_add(eff)
                        .saturating_sub(input);
                    let (lo, hi) = if auto_pad == "SAME_UPPER" {
                        (total / 2, total - total / 2)
                    } else {
                        (total - total / 2, total / 2)
                    };
                    p[ax] = u32::try_from(lo).unwrap_or(u32::MAX);
                    p[ax + 2] = u32::try_from(hi).unwrap_or(u32::MAX);
                }
                p
            }
            other => return Err(Self::unsupported(node, format!("auto_pad {other}"))),
        };
        Ok((stride, pads, dilation))
    }

    /// Padding a folded Pad node left for this node's input 0, and the input's shape
    /// before it.
    pub(super) fn take_pads(&self, node: &NodeProto, s: &mut [usize]) -> [u32; 4] {
        let p = node
            .input
            .first()
            .and_then(|n| self.pending_pads.get(n))
            .copied()
            .unwrap_or([0; 4]);
        if s.len() == 3 {
            s[1] += (p[0] + p[2]) as usize;
            s[2] += (p[1] + p[3]) as usize;
        }
        p
    }

    /// Convolution geometry for a Conv-like node whose input 0 has sample shape `s`:
    /// stride, padding (a folded Pad's included), dilation, groups.
    pub(super) fn conv_attrs(
        &self,
        node: &NodeProto,
        s: &[usize],
        kernel: [usize; 2],
    ) -> Result<(WindowAttrs, u32), ConvertError> {
        let mut padded = s.to_vec();
        let extra = self.take_pads(node, &mut padded);
        let (stride, mut padding, dilation) = self.window_attrs(node, &padded, kernel)?;
        for (p, e) in padding.iter_mut().zip(extra) {
            *p = p.saturating_add(e);
        }
        let groups = attr_i(node, "group", 1);
        if groups < 1 || groups > u32::MAX as i64 {
            return Err(Self::unsupported(node, format!("group {groups}")));
        }
        Ok(((stride, padding, dilation), groups as u32))
    }

    pub(super) fn conv(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        if self.is_quantized(node, 0) {
            return self.qdq_conv(node);
        }
        let (x, _) = self.value(node, 0)?;
        let (shape, w) = self.konst_f32(node, 1)?;
        let [_, _, kh, kw] = shape[..] else {
            return Err(Self::unsupported(
                node,
                format!("weight of shape {shape:?}: only 2-D convolution is native"),
            ));
        };
        let s = self.shape_of(x).to_vec();
        let ((stride, padding, dilation), groups) = self.conv_attrs(node, &s, [kh, kw])?;
        let bias = if Self::has_input(node, 2) {
            let (_, b) = self.konst_f32(node, 2)?;
            Some(Tensor::f32(vec![b.len() as u32], b))
        } else {
            None
        };
        let weight = Tensor::f32(shape.iter().map(|&d| d as u32).collect(), w);
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

    pub(super) fn batch_norm(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        if attr_i(node, "training_mode", 0) != 0
            || node.output.iter().skip(1).any(|o| !o.is_empty())
        {
            return Err(Self::unsupported(
                node,
                "only inference-mode batch normalization is native",
            ));
        }
        let (x, _) = self.value(node, 0)?;
        let c = self.shape_of(x).first().copied().unwrap_or(0);
        let eps = attr_f(node, "epsilon", 1e-5);
        let mut vecs = Vec::with_capacity(4);
        for ix in 1..5 {
            let (_, v) = self.konst_f32(node, ix)?;
            if v.len() != c {
                return Err(Self::unsupported(
                    node,
                    format!("{} values for {c} channels", v.len()),
                ));
            }
            vecs.push(v);
        }
        let g: Vec<f32> = vecs[0]
            .iter()
            .zip(&vecs[3])
            .map(|(s, v)| s / (v + eps).sqrt())
            .collect();
        let h: Vec<f32> = vecs[1]
            .iter()
            .zip(&vecs[2])
            .zip(&g)
            .map(|((b, m), g)| b - m * g)
            .collect();
        let id = self.scale_shift(node, x, &g, &h)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    /// `x · g[c] + h[c]` along the first sample axis: folded into the conv or dense layer
    /// that alone produces `x`, else a channel-affine layer.
    pub(super) fn scale_shift(
        &mut self,
        node: &NodeProto,
        x: ValueId,
        g: &[f32],
        h: &[f32],
    ) -> Result<ValueId, ConvertError> {
        let x_name = node.input[0].clone();
        let single = self.single_use(&x_name);
        let rank1 = self.shape_of(x).len() == 1;
        if single
            && let Some(Node {
                layer: Layer::Conv2d { weight, bias, .. } | Layer::Dense { weight, bias },
                ..
            }) = self.producer(x)
            && let TensorData::F32(w) = &mut weight.data
            && (rank1 || weight.shape.len() == 4)
            && w.len() % g.len().max(1) == 0
            && weight.shape.first().map(|&d| d as usize) == Some(g.len())
        {
            let per = w.len() / g.len().max(1);
            for (o, row) in w.chunks_mut(per.max(1)).enumerate() {
                row.iter_mut().for_each(|v| *v *= g[o]);
            }
            let old = bias
                .as_ref()
                .and_then(|b| b.as_f32().map(<[f32]>::to_vec))
                .unwrap_or_else(|| vec![0.0; g.len()]);
            let b: Vec<f32> = old
                .iter()
                .zip(g)
                .zip(h)
                .map(|((b, g), h)| b * g + h)
                .collect();
            *bias = Some(Tensor::f32(vec![b.len() as u32], b));
            return Ok(x);
        }
        self.push(
            node,
            Layer::ChannelAffine {
                scale: g.to_vec(),
                offset: h.to_vec(),
            },
            x,
        )
    }

    pub(super) fn pool(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        if node.output.len() > 1 && node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(Self::unsupported(node, "the Indices output is not native"));
        }
        let k = attr_ints(node, "kernel_shape").unwrap_or_default();
        if k.len() != 2 || k.iter().any(|&v| v <= 0 || v > u32::MAX as i64) {
            return Err(Self::unsupported(
                node,
                format!("kernel_shape {k:?}: only 2-D pooling is native"),
            ));
        }
        let max = node.op_type == "MaxPool";
        let s = self.input_shape(node, 0)?;
        let kernel = [k[0] as u32, k[1] as u32];
        let (stride, mut padding, dilation) =
            self.window_attrs(node, &s, [k[0] as usize, k[1] as usize])?;
        if dilation != [1, 1] {
            return Err(Self::unsupported(node, "dilated pooling"));
        }
        if attr_i(node, "ceil_mode", 0) != 0 {
            if !max {
                return Err(Self::unsupported(node, "ceil_mode=1 average pooling"));
            }
            // Extra bottom/right padding gives the ceil-mode size; padded cells never win.
            for ax in 0..2 {
                let padded = s[ax + 1] + (padding[ax] + padding[ax + 2]) as usize;
                let k = kernel[ax] as usize;
                let st = stride[ax] as usize;
                if padded >= k {
                    let rem = (padded - k) % st;
                    if rem != 0 {
                        padding[ax + 2] += (st - rem) as u32;
                    }
                }
            }
        }
        let layer = if max {
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
        self.window_layer(node, layer)
    }

    /// A pooling layer on whatever input 0 holds: codes move through max pooling
    /// unchanged; a dequantized input goes to the int8 average pools.
    fn window_layer(&mut self, node: &NodeProto, layer: Layer) -> Result<(), ConvertError> {
        let is_max = matches!(layer, Layer::MaxPool2d { .. });
        match self.entry(node, 0)?.clone() {
            Entry::Value(
                v @ Val {
                    kind: Kind::Codes { .. },
                    ..
                },
            ) if is_max => {
                let src = self.u8_codes(node, v)?;
                let id = self.push(node, layer, src)?;
                self.bind_val(node, 0, Val { id, kind: v.kind });
                Ok(())
            }
            Entry::Dequant { codes, params } if is_max => {
                let src = self.u8_codes(node, codes)?;
                let id = self.push(node, layer, src)?;
                self.bind_entry(
                    node,
                    0,
                    Entry::Dequant {
                        codes: Val {
                            id,
                            kind: codes.kind,
                        },
                        params,
                    },
                );
                Ok(())
            }
            Entry::Dequant { .. } if self.qdq_pool(node, &layer)? => Ok(()),
            _ => {
                let (x, _) = self.value(node, 0)?;
                let id = self.push(node, layer, x)?;
                self.bind(node, 0, id, false);
                Ok(())
            }
        }
    }

    pub(super) fn global_pool(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let s = self.input_shape(node, 0)?;
        let layer = if node.op_type == "GlobalMaxPool" {
            let [_, h, w] = s[..] else {
                return Err(Self::unsupported(
                    node,
                    format!("sample shape {s:?} is not C×H×W"),
                ));
            };
            Layer::MaxPool2d {
                kernel: [h as u32, w as u32],
                stride: [1, 1],
                padding: [0; 4],
            }
        } else {
            Layer::GlobalAvgPool
        };
        self.window_layer(node, layer)
    }

    /// ReduceMean / ReduceMax over the spatial axes of a feature map (Keras'
    /// GlobalAveragePooling2D through tf2onnx), in NCHW or NHWC.
    pub(super) fn reduce(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let s = self.input_shape(node, 0)?;
        let rank = s.len() + 1;
        let axes = match attr_ints(node, "axes") {
            Some(a) => a,
            None if Self::has_input(node, 1) => self
                .konst(node, 1)?
                .ints()
                .ok_or_else(|| Self::unsupported(node, "axes are not integers"))?,
            None => vec![],
        };
        let mut axes: Vec<usize> = axes
            .iter()
            .map(|&a| Self::sample_axis(node, a, rank))
            .collect::<Result<_, _>>()?;
        axes.sort_unstable();
        let keep = attr_i(node, "keepdims", 1) != 0;
        if s.len() != 3 || !(axes == [1, 2] || axes == [0, 1]) {
            return Err(Self::unsupported(
                node,
                format!(
                    "only a reduction over the two spatial axes of a feature map is native (sample shape {s:?}, axes {axes:?})"
                ),
            ));
        }
        let nhwc = axes == [0, 1];
        let mut e = self.entry(node, 0)?.clone();
        if nhwc {
            // A free transpose to C×H×W first.
            e = self.transpose_entry(node, e, &[2, 0, 1])?;
        }
        let x = match e {
            Entry::Value(Val {
                id,
                kind: Kind::F32,
            }) => id,
            Entry::Dequant { codes, params } => self.dequantize(node, codes, params)?,
            _ => return Err(Self::unsupported(node, "reduction of a non-float value")),
        };
        let c = if nhwc { s[2] } else { s[0] };
        let (h, w) = if nhwc { (s[0], s[1]) } else { (s[1], s[2]) };
        let out_shape: Vec<u32> = match (keep, nhwc) {
            (false, _) => vec![c as u32],
            (true, false) => vec![c as u32, 1, 1],
            (true, true) => vec![1, 1, c as u32],
        };
        let layer = if node.op_type == "ReduceMean" {
            Layer::GlobalAvgPool
        } else {
            Layer::MaxPool2d {
                kernel: [h as u32, w as u32],
                stride: [1, 1],
                padding: [0; 4],
            }
        };
        let id = self.push(node, layer, x)?;
        let out = self.reshape_entry(
            node,
            Entry::Value(Val {
                id,
                kind: Kind::F32,
            }),
            out_shape,
        )?;
        self.bind_entry(node, 0, out);
        Ok(())
    }

    pub(super) fn matmul(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        if self.is_quantized(node, 0) {
            return self.qdq_matmul(node);
        }
        let (x, _) = self.value(node, 0)?;
        let gemm = node.op_type == "Gemm";
        if gemm && attr_i(node, "transA", 0) != 0 {
            return Err(Self::unsupported(node, "transA=1"));
        }
        let (shape, w) = self.konst_f32(node, 1)?;
        let [r, c] = shape[..] else {
            return Err(Self::unsupported(
                node,
                format!("weight of shape {shape:?} is not 2-D"),
            ));
        };
        let alpha = if gemm {
            attr_f(node, "alpha", 1.0)
        } else {
            1.0
        };
        let beta = attr_f(node, "beta", 1.0);
        let (out, inp, mut wt) = if gemm && attr_i(node, "transB", 0) != 0 {
            (r, c, w)
        } else {
            (c, r, transpose(&w, r, c))
        };
        if alpha != 1.0 {
            wt.iter_mut().for_each(|v| *v *= alpha);
        }
        let bias = if gemm && Self::has_input(node, 2) {
            let (bshape, b) = self.konst_f32(node, 2)?;
            let mut b = match b.len() {
                1 => vec![b[0]; out],
                n if n == out && bshape.iter().rev().skip(1).all(|&d| d == 1) => b,
                _ => {
                    return Err(Self::unsupported(
                        node,
                        format!("bias of shape {bshape:?} for {out} outputs"),
                    ));
                }
            };
            b.iter_mut().for_each(|v| *v *= beta);
            Some(Tensor::f32(vec![out as u32], b))
        } else {
            None
        };
        let layer = Layer::Dense {
            weight: Tensor::f32(vec![out as u32, inp as u32], wt),
            bias,
        };
        let id = self.push(node, layer, x)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    pub(super) fn softmax(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (x, _) = self.value(node, 0)?;
        let s = self.shape_of(x).to_vec();
        let rank = s.len() + 1;
        let axis = attr_i(node, "axis", -1);
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        // Before opset 13, axis 1 meant "flatten from axis 1": the last axis for rank 2.
        let last =
            axis == rank as i64 - 1 || (axis == 1 && s.iter().rev().skip(1).all(|&d| d == 1));
        if !last {
            return Err(Self::unsupported(
                node,
                format!(
                    "softmax over axis {axis} of samples of shape {s:?}; only the last axis is native"
                ),
            ));
        }
        let id = self.push(node, Layer::Softmax, x)?;
        self.bind(node, 0, id, false);
        Ok(())
    }
}

pub(super) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}
