//! Float CNN ops: convolution (with BatchNormalization, Pad and per-channel Mul/Add by
//! constants folded into it), pooling, activations, residual Add, Concat, Transpose, the
//! Reshape family, Gemm/MatMul and Softmax. Each hands a quantized input (QDQ or
//! QOperator codes) to `quant.rs`, or works on the codes directly where the op only moves
//! them (Reshape, Transpose, MaxPool, Pad, Concat).

use super::consts::{Const, Dim};
use super::{ConvertError, Converter, Entry, Kind, Val, attr_f, attr_i, attr_ints, attr_s};
use crate::graph::{Layer, Node, Tensor, TensorData, ValueId};
use tract_onnx::pb::NodeProto;

/// Stride, padding (top, left, bottom, right) and dilation of a window op.
pub(super) type WindowAttrs = ([u32; 2], [u32; 4], [u32; 2]);

/// How a constant operand broadcasts against a value's sample shape.
enum Broadcast {
    /// One number for every element.
    Scalar(f32),
    /// One number per index of the sample's first axis.
    Channel(Vec<f32>),
    /// One number per index of the sample's last axis.
    Last(Vec<f32>),
}

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
    fn scale_shift(
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

    /// The u8 code of the constant zero point at input `ix` of `node`.
    pub(super) fn zero_code(&self, node: &NodeProto, ix: usize, signed: bool) -> Option<f64> {
        let shift = if signed { 128.0 } else { 0.0 };
        match node.input.get(ix).and_then(|n| self.entries.get(n)) {
            Some(Entry::Const(z)) => z.data.first().map(|&z| z + shift),
            None if !Self::has_input(node, ix) => Some(shift),
            _ => None,
        }
    }

    pub(super) fn pad(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let mode = attr_s(node, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(Self::unsupported(
                node,
                format!("{mode} padding; only constant padding is native"),
            ));
        }
        if Self::has_input(node, 3) {
            return Err(Self::unsupported(
                node,
                "the axes input of Pad is not native",
            ));
        }
        let pads = match attr_ints(node, "pads") {
            Some(p) => p,
            None => self
                .konst(node, 1)?
                .ints()
                .ok_or_else(|| Self::unsupported(node, "pads are not integers"))?,
        };
        let value = if Self::has_input(node, 2) {
            self.konst(node, 2)?.data.first().copied().unwrap_or(0.0)
        } else {
            attr_f(node, "value", 0.0) as f64
        };
        let s = self.input_shape(node, 0)?;
        let rank = s.len() + 1;
        if pads.len() != 2 * rank || pads.iter().any(|&p| p < 0 || p > u32::MAX as i64) {
            return Err(Self::unsupported(
                node,
                format!("pads {pads:?} for a rank-{rank} tensor (negative pads are not native)"),
            ));
        }
        if pads[0] != 0 || pads[rank] != 0 {
            return Err(Self::unsupported(node, "padding the batch axis"));
        }
        let begin: Vec<u32> = pads[1..rank].iter().map(|&p| p as u32).collect();
        let end: Vec<u32> = pads[rank + 1..].iter().map(|&p| p as u32).collect();
        let entry = self.entry(node, 0)?.clone();
        // The code standing for `value`, for quantized inputs.
        let code = |signed: bool, params: Option<crate::graph::QuantParams>| -> Option<f64> {
            match params {
                // ONNX pads the codes of a quantized tensor with the value itself.
                None => Some(value + if signed { 128.0 } else { 0.0 }),
                Some(p) => (value == 0.0).then_some(p.zero_point as f64),
            }
        };
        let (pad_value, zero_code) = match &entry {
            Entry::Value(Val {
                kind: Kind::Codes { signed },
                ..
            }) => (code(*signed, None), None),
            Entry::Dequant { codes, params } => {
                let Kind::Codes { signed } = codes.kind else {
                    return Err(Self::unsupported(node, "dequantized non-codes"));
                };
                (code(signed, Some(*params)), Some(params.zero_point as f64))
            }
            _ => (Some(value), None),
        };
        // Spatial zero padding in front of a convolution becomes its padding.
        let spatial_only = s.len() == 3 && begin[0] == 0 && end[0] == 0;
        let consumer = node
            .output
            .first()
            .and_then(|o| self.sole_consumer(o))
            .map(|k| &self.onnx_nodes[k])
            .filter(|c| c.input.first() == node.output.first());
        let folds_into_conv = spatial_only
            && consumer.is_some_and(|c| match &entry {
                Entry::Value(Val {
                    kind: Kind::F32, ..
                }) => c.op_type == "Conv" && value == 0.0,
                Entry::Dequant { .. } => c.op_type == "Conv" && pad_value == zero_code,
                Entry::Value(Val {
                    kind: Kind::Codes { signed },
                    ..
                }) => {
                    // QLinearConv pads with its input zero point.
                    c.op_type == "QLinearConv"
                        && pad_value.is_some()
                        && self.zero_code(c, 2, *signed) == pad_value
                }
                _ => false,
            });
        if folds_into_conv {
            let p = [begin[1], begin[2], end[1], end[2]];
            self.pending_pads.insert(node.output[0].clone(), p);
            self.bind_entry(node, 0, entry);
            return Ok(());
        }
        let Some(pad_value) = pad_value else {
            let (x, _) = self.value(node, 0)?;
            let id = self.push(
                node,
                Layer::Pad {
                    begin,
                    end,
                    value: value as f32,
                },
                x,
            )?;
            self.bind(node, 0, id, false);
            return Ok(());
        };
        let layer = Layer::Pad {
            begin,
            end,
            value: pad_value as f32,
        };
        let e = self.map_entry(node, entry, layer)?;
        self.bind_entry(node, 0, e);
        Ok(())
    }

    /// Applies a layer that moves values without changing them (reshape, transpose, pad
    /// with an exact code, max pooling) to whatever an entry holds.
    fn map_entry(
        &mut self,
        node: &NodeProto,
        e: Entry,
        layer: Layer,
    ) -> Result<Entry, ConvertError> {
        match e {
            Entry::Value(
                v @ Val {
                    kind: Kind::Codes { .. },
                    ..
                },
            ) => {
                let src = self.u8_codes(node, v)?;
                let id = self.push(node, layer, src)?;
                Ok(Entry::Value(Val { id, kind: v.kind }))
            }
            Entry::Dequant { codes, params } => {
                let src = self.u8_codes(node, codes)?;
                let id = self.push(node, layer, src)?;
                Ok(Entry::Dequant {
                    codes: Val {
                        id,
                        kind: codes.kind,
                    },
                    params,
                })
            }
            Entry::Value(v) => {
                let id = self.push(node, layer, v.id)?;
                Ok(Entry::Value(Val { id, kind: v.kind }))
            }
            Entry::Const(_) | Entry::Shape(_) => Err(Self::unsupported(
                node,
                "a constant where a computed value is expected",
            )),
        }
    }

    pub(super) fn activation(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let layer = match node.op_type.as_str() {
            "Relu" => Layer::Relu,
            "Sigmoid" => Layer::Sigmoid,
            "Tanh" => Layer::Tanh,
            "LeakyRelu" => Layer::LeakyRelu {
                alpha: attr_f(node, "alpha", 0.01),
            },
            "HardSigmoid" => Layer::HardSigmoid {
                alpha: attr_f(node, "alpha", 0.2),
                beta: attr_f(node, "beta", 0.5),
            },
            "HardSwish" => Layer::HardSwish,
            _ => {
                let (min, max) = self.clip_bounds(node)?;
                if min == 0.0 && max == f32::INFINITY {
                    Layer::Relu
                } else {
                    Layer::Clip { min, max }
                }
            }
        };
        if matches!(self.entry(node, 0)?, Entry::Dequant { .. }) && self.qdq_unary(node, &layer)? {
            return Ok(());
        }
        let (x, int) = self.value(node, 0)?;
        if int {
            return Err(Self::unsupported(node, "activation of an integer value"));
        }
        let id = self.push(node, layer, x)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    /// Clip's bounds, from attributes (opset < 11) or constant inputs; absent bounds are
    /// infinite.
    pub(super) fn clip_bounds(&self, node: &NodeProto) -> Result<(f32, f32), ConvertError> {
        let bound = |ix: usize, attr: &str, default: f32| -> Result<f32, ConvertError> {
            if Self::has_input(node, ix) {
                let c = self.konst(node, ix)?;
                c.data
                    .first()
                    .map(|&v| v as f32)
                    .ok_or_else(|| Self::unsupported(node, "empty bound"))
            } else {
                Ok(attr_f(node, attr, default))
            }
        };
        Ok((
            bound(1, "min", f32::NEG_INFINITY)?,
            bound(2, "max", f32::INFINITY)?,
        ))
    }

    /// How constant `c` broadcasts against a value of sample shape `s`.
    fn broadcast(node: &NodeProto, c: &Const, s: &[usize]) -> Result<Broadcast, ConvertError> {
        let v = c.f32s();
        if v.len() == 1 {
            return Ok(Broadcast::Scalar(v[0]));
        }
        // Drop leading ones (the batch axis among them) down to the sample's rank.
        let mut shape: Vec<usize> = c.shape.clone();
        while shape.len() > s.len() && shape.first() == Some(&1) {
            shape.remove(0);
        }
        let mut padded = vec![1usize; s.len().saturating_sub(shape.len())];
        padded.extend(shape);
        let bad = || {
            Self::unsupported(
                node,
                format!(
                    "constant of shape {:?} against samples of shape {s:?}: only scalars, per-channel and last-axis constants are native",
                    c.shape
                ),
            )
        };
        if padded.len() != s.len() {
            return Err(bad());
        }
        let non_one: Vec<usize> = (0..padded.len()).filter(|&i| padded[i] != 1).collect();
        match non_one[..] {
            [i] if padded[i] == s[i] && i == s.len() - 1 => Ok(Broadcast::Last(v)),
            [0] if padded[0] == s[0] => Ok(Broadcast::Channel(v)),
            _ => Err(bad()),
        }
    }

    pub(super) fn arith(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let op = node.op_type.as_str();
        let (a_const, b_const) = (self.is_const(node, 0), self.is_const(node, 1));
        if !a_const && !b_const {
            return self.binary(node);
        }
        if a_const && b_const {
            return Err(Self::unsupported(node, "both operands are constant"));
        }
        let (xi, ci) = if a_const { (1, 0) } else { (0, 1) };
        if a_const && !(op == "Add" || op == "Mul" || op == "Sub") {
            return Err(Self::unsupported(node, "dividing a constant by a value"));
        }
        let (x, int) = self.value(node, xi)?;
        if int {
            return Err(Self::unsupported(node, "arithmetic on an integer value"));
        }
        let s = self.shape_of(x).to_vec();
        let c = self.konst(node, ci)?.clone();
        let b = Self::broadcast(node, &c, &s)?;
        // y = x · scale + offset, per first axis (channel) or per last axis.
        let (per_last, n) = match &b {
            Broadcast::Last(v) => (true, v.len()),
            _ if s.len() == 1 => (true, s[0]),
            _ => (false, s.first().copied().unwrap_or(1)),
        };
        let full = |v: f32| vec![v; n];
        let cv = match b {
            Broadcast::Scalar(v) => full(v),
            Broadcast::Channel(v) | Broadcast::Last(v) => v,
        };
        let (scale, offset): (Vec<f32>, Vec<f32>) = match (op, a_const) {
            ("Add", _) => (full(1.0), cv),
            ("Sub", false) => (full(1.0), cv.iter().map(|v| -v).collect()),
            ("Sub", true) => (full(-1.0), cv),
            ("Mul", _) => (cv, full(0.0)),
            _ => {
                if cv.contains(&0.0) {
                    return Err(Self::unsupported(
                        node,
                        "division by a constant containing 0",
                    ));
                }
                (cv.iter().map(|v| 1.0 / v).collect(), full(0.0))
            }
        };
        let x_name = node.input[xi].clone();
        let single = self.single_use(&x_name);
        // A bias after a bias-less dense layer that only feeds this node.
        if op == "Add"
            && per_last
            && single
            && let Some(Node {
                layer: Layer::Dense {
                    bias: bias @ None, ..
                },
                ..
            }) = self.producer(x)
        {
            *bias = Some(Tensor::f32(vec![n as u32], offset));
            self.bind(node, 0, x, false);
            return Ok(());
        }
        let dense_producer = matches!(
            self.producer(x),
            Some(Node {
                layer: Layer::Dense { .. },
                ..
            })
        );
        if per_last && !(single && s.len() == 1 && dense_producer) {
            return self.standardize(node, x, single, scale, offset);
        }
        // Per channel (or per output of a dense layer): into the producing layer, or a
        // channel-affine layer.
        let mut fake = node.clone();
        fake.input = vec![x_name];
        let id = self.scale_shift(&fake, x, &scale, &offset)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    /// `x · scale + offset` on the last axis as a standardize layer, merged into a
    /// standardize that alone feeds it.
    fn standardize(
        &mut self,
        node: &NodeProto,
        x: ValueId,
        single: bool,
        scale: Vec<f32>,
        offset: Vec<f32>,
    ) -> Result<(), ConvertError> {
        // Standardize is (x - o) · s: o = -offset / scale where scale != 0.
        if scale.contains(&0.0) {
            return Err(Self::unsupported(node, "multiplication by 0"));
        }
        let o2: Vec<f32> = offset.iter().zip(&scale).map(|(b, s)| -b / s).collect();
        // ((x - o1) · s1 - o2) · s2 = (x - (o1 + o2 / s1)) · (s1 · s2) when s1 != 0.
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
            && s1.len() == o2.len()
        {
            let o: Vec<f32> = o1
                .iter()
                .zip(s1.iter())
                .zip(&o2)
                .map(|((o1, s1), o2)| o1 + o2 / s1)
                .collect();
            let s: Vec<f32> = s1.iter().zip(&scale).map(|(a, b)| a * b).collect();
            *o1 = o;
            *s1 = s;
            self.bind(node, 0, x, false);
            return Ok(());
        }
        let id = self.push(node, Layer::Standardize { offset: o2, scale }, x)?;
        self.bind(node, 0, id, false);
        Ok(())
    }

    /// Add and Mul of two computed values.
    fn binary(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let op = node.op_type.as_str();
        if op == "Add"
            && (self.is_quantized(node, 0) || self.is_quantized(node, 1))
            && self.qdq_add(node)?
        {
            return Ok(());
        }
        let (a, ai) = self.value(node, 0)?;
        let (b, bi) = self.value(node, 1)?;
        if ai || bi {
            return Err(Self::unsupported(node, "arithmetic on integer values"));
        }
        match op {
            "Add" => {
                let (sa, sb) = (self.shape_of(a).to_vec(), self.shape_of(b).to_vec());
                if sa != sb {
                    return Err(Self::unsupported(
                        node,
                        format!(
                            "adding samples of shapes {sa:?} and {sb:?}: only equal shapes are native"
                        ),
                    ));
                }
                let id = self.push_n(node, Layer::Add, vec![a, b])?;
                self.bind(node, 0, id, false);
                Ok(())
            }
            "Mul" => {
                // x · HardSigmoid(x) with alpha 1/6, beta 1/2 is HardSwish.
                for (x, g) in [(a, b), (b, a)] {
                    if let Some(Node {
                        layer: Layer::HardSigmoid { alpha, beta },
                        inputs,
                        ..
                    }) = self.producer(g)
                        && inputs[..] == [x]
                        && (*alpha - 1.0 / 6.0).abs() < 1e-6
                        && (*beta - 0.5).abs() < 1e-6
                    {
                        let id = self.push(node, Layer::HardSwish, x)?;
                        self.bind(node, 0, id, false);
                        return Ok(());
                    }
                }
                Err(Self::unsupported(
                    node,
                    "multiplying two computed values is native only as x · HardSigmoid(x) (HardSwish)",
                ))
            }
            _ => Err(Self::unsupported(
                node,
                format!("{op} of two computed values is not native"),
            )),
        }
    }

    pub(super) fn concat(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let n = node.input.len();
        let s = self.input_shape(node, 0)?;
        let axis = Self::sample_axis(node, attr_i(node, "axis", 1), s.len() + 1)? as u32;
        let any_dequant = (0..n).any(|i| {
            matches!(
                node.input.get(i).and_then(|nm| self.entries.get(nm)),
                Some(Entry::Dequant { .. })
            )
        });
        if any_dequant && self.qdq_concat(node, axis)? {
            return Ok(());
        }
        let codes = (0..n).all(|i| {
            matches!(
                node.input.get(i).and_then(|nm| self.entries.get(nm)),
                Some(Entry::Value(Val {
                    kind: Kind::Codes { .. },
                    ..
                }))
            )
        });
        let mut ids = Vec::with_capacity(n);
        let mut kind = Kind::F32;
        for i in 0..n {
            if codes {
                let Entry::Value(v) = self.entry(node, i)?.clone() else {
                    unreachable!("checked above")
                };
                kind = v.kind;
                ids.push(self.u8_codes(node, v)?);
            } else {
                let (id, int) = self.value(node, i)?;
                if int {
                    return Err(Self::unsupported(node, "concatenating integer values"));
                }
                ids.push(id);
            }
        }
        let id = self.push_n(node, Layer::Concat { axis }, ids)?;
        self.bind_val(node, 0, Val { id, kind });
        Ok(())
    }

    /// Applies a transpose of the sample axes to an entry (nothing for the identity).
    pub(super) fn transpose_entry(
        &mut self,
        node: &NodeProto,
        e: Entry,
        perm: &[u32],
    ) -> Result<Entry, ConvertError> {
        if perm.iter().enumerate().all(|(i, &p)| i as u32 == p) {
            return Ok(e);
        }
        self.map_entry(
            node,
            e,
            Layer::Transpose {
                perm: perm.to_vec(),
            },
        )
    }

    pub(super) fn transpose(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let s = self.input_shape(node, 0)?;
        let rank = s.len() + 1;
        let perm: Vec<i64> =
            attr_ints(node, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
        if perm.len() != rank || perm.first() != Some(&0) {
            return Err(Self::unsupported(
                node,
                format!("perm {perm:?}: the batch axis must stay first"),
            ));
        }
        let sample: Vec<u32> = perm[1..]
            .iter()
            .map(|&p| u32::try_from(p - 1).unwrap_or(u32::MAX))
            .collect();
        let e = self.entry(node, 0)?.clone();
        let out = self.transpose_entry(node, e, &sample)?;
        self.bind_entry(node, 0, out);
        Ok(())
    }

    /// Applies a reshape to the sample shape `to` (nothing when it is the same).
    pub(super) fn reshape_entry(
        &mut self,
        node: &NodeProto,
        e: Entry,
        to: Vec<u32>,
    ) -> Result<Entry, ConvertError> {
        let from: Vec<usize> = match &e {
            Entry::Value(v) => self.shape_of(v.id).to_vec(),
            Entry::Dequant { codes, .. } => self.shape_of(codes.id).to_vec(),
            _ => return Err(Self::unsupported(node, "reshape of a constant")),
        };
        if from.iter().map(|&d| d as u32).eq(to.iter().copied()) {
            return Ok(e);
        }
        self.map_entry(node, e, Layer::Reshape { shape: to })
    }

    pub(super) fn reshape(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let e = self.entry(node, 0)?.clone();
        if let Entry::Value(Val {
            id,
            kind: Kind::I64,
        }) = e
        {
            // Labels from an argmax are already one value per sample.
            let ok = match node.op_type.as_str() {
                "Reshape" => matches!(
                    self.dims(node, 1)?[..],
                    [Dim::Known(-1)] | [Dim::Known(-1) | Dim::Known(0) | Dim::Batch, Dim::Known(1)]
                ),
                "Squeeze" | "Unsqueeze" => true,
                _ => false,
            };
            if ok && self.shape_of(id).is_empty() {
                self.bind(node, 0, id, true);
                return Ok(());
            }
            return Err(Self::unsupported(node, "reshape of labels"));
        }
        let s = self.input_shape(node, 0)?;
        let numel: usize = s.iter().product();
        let to: Vec<usize> = match node.op_type.as_str() {
            "Flatten" => {
                let axis = attr_i(node, "axis", 1);
                let rank = s.len() as i64 + 1;
                let axis = if axis < 0 { axis + rank } else { axis };
                if axis < 1 || axis > rank {
                    return Err(Self::unsupported(
                        node,
                        format!("Flatten(axis={axis}) merges the batch axis"),
                    ));
                }
                let lead: usize = s[..axis as usize - 1].iter().product();
                if lead == 1 {
                    vec![numel]
                } else {
                    vec![lead, numel / lead.max(1)]
                }
            }
            "Squeeze" | "Unsqueeze" => {
                let axes = match attr_ints(node, "axes") {
                    Some(a) => a,
                    None if Self::has_input(node, 1) => self
                        .konst(node, 1)?
                        .ints()
                        .ok_or_else(|| Self::unsupported(node, "axes are not integers"))?,
                    None => vec![],
                };
                if node.op_type == "Squeeze" {
                    let rank = s.len() + 1;
                    let mut drop = Vec::new();
                    if axes.is_empty() {
                        drop.extend((0..s.len()).filter(|&i| s[i] == 1));
                    }
                    for &a in &axes {
                        let a = Self::sample_axis(node, a, rank)?;
                        if s[a] != 1 {
                            return Err(Self::unsupported(
                                node,
                                format!("axis {a} has size {}, not 1", s[a]),
                            ));
                        }
                        drop.push(a);
                    }
                    s.iter()
                        .enumerate()
                        .filter(|(i, _)| !drop.contains(i))
                        .map(|(_, &d)| d)
                        .collect()
                } else {
                    let rank = s.len() + 1 + axes.len();
                    let mut at: Vec<usize> = axes
                        .iter()
                        .map(|&a| Self::sample_axis(node, a, rank))
                        .collect::<Result<_, _>>()?;
                    at.sort_unstable();
                    let mut out = s.clone();
                    for a in at {
                        if a > out.len() {
                            return Err(Self::unsupported(node, format!("axis {a}")));
                        }
                        out.insert(a, 1);
                    }
                    out
                }
            }
            _ => self.reshape_target(node, &s)?,
        };
        if to.iter().product::<usize>() != numel || to.iter().any(|&d| d > u32::MAX as usize) {
            return Err(Self::unsupported(
                node,
                format!("cannot reshape samples of shape {s:?} into {to:?}"),
            ));
        }
        let out = self.reshape_entry(node, e, to.iter().map(|&d| d as u32).collect())?;
        self.bind_entry(node, 0, out);
        Ok(())
    }

    /// The per-sample shape a Reshape gives, from a constant or computed target in which
    /// the batch size may be symbolic; the batch axis must stay first.
    fn reshape_target(&self, node: &NodeProto, s: &[usize]) -> Result<Vec<usize>, ConvertError> {
        let target = self.dims(node, 1)?;
        let numel: usize = s.iter().product();
        let bad = |why: String| Self::unsupported(node, why);
        let Some((&first, rest)) = target.split_first() else {
            return Err(bad("empty target shape".into()));
        };
        let allow_zero = attr_i(node, "allowzero", 0) != 0;
        let mut dims: Vec<usize> = Vec::with_capacity(rest.len());
        let mut infer = None;
        for (i, d) in rest.iter().enumerate() {
            match *d {
                Dim::Known(-1) if infer.is_none() => infer = Some(i),
                Dim::Known(0) if !allow_zero => dims.push(s.get(i).copied().unwrap_or(1)),
                Dim::Known(d) if d > 0 => dims.push(d as usize),
                _ => {
                    return Err(bad(format!(
                        "target shape {target:?}: dimension {} is not native",
                        i + 1
                    )));
                }
            }
        }
        let known: usize = dims.iter().product();
        match (first, infer) {
            (Dim::Batch | Dim::Known(0), None) | (Dim::Known(-1), None) if known == numel => {}
            (Dim::Batch | Dim::Known(0), Some(i)) if known > 0 && numel.is_multiple_of(known) => {
                dims.insert(i, numel / known);
            }
            // A graph exported for batch 1 spells the batch out.
            (Dim::Known(1), None) if known == numel => {}
            (Dim::Known(1), Some(i)) if known > 0 && numel.is_multiple_of(known) => {
                dims.insert(i, numel / known);
            }
            _ => {
                return Err(bad(format!(
                    "target shape {target:?} does not keep the batch axis first for samples of shape {s:?}"
                )));
            }
        }
        Ok(dims)
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
