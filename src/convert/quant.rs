//! Quantized graphs into int8 layers.
//!
//! - QDQ (onnxruntime's quantizer, TFLite full-integer models through tf2onnx): a
//!   DequantizeLinear of codes stays lazy (`Entry::Dequant`); a Conv, MatMul/Gemm, Add or
//!   average pool reading such inputs looks ahead along the single-consumer chain for
//!   `[Relu | Clip]* → QuantizeLinear` and becomes one int8 layer writing codes with that
//!   QuantizeLinear's parameters (the activation a clamp of the codes). A MatMul's bias
//!   `Add` is folded into it, skipping the Q→DQ pair between them. An element-wise
//!   activation between a DequantizeLinear and a QuantizeLinear becomes a 256-entry lookup
//!   table. Where no QuantizeLinear follows, the layer writes float32.
//! - QOperator (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinear…Pool,
//!   QLinearConcat, QLinearLeakyRelu, QLinearSigmoid): one layer each (`qop.rs`, over the
//!   shared helpers here).
//!
//! int8 activations become `U8` codes + 128 with the zero point + 128 (exact); weights must
//! be int8 with zero point 0 (uint8 weights with zero point 128 shift exactly), one scale
//! per output channel or one for all.

use super::consts::{Const, ElemKind};
use super::{ConvertError, Converter, Entry, Kind, QWeight, Val, attr_f, attr_i};
use crate::engine::kernels::int8::quantize_one;
use crate::graph::{Layer, QuantInput, QuantOutput, QuantParams, Tensor, TensorData};
use tract_onnx::pb::NodeProto;

/// What follows a quantizable op up to the QuantizeLinear that ends its pattern.
struct Tail {
    /// ONNX nodes the pattern covers (marked done when it is used).
    nodes: Vec<usize>,
    /// Output name of the final QuantizeLinear.
    out: String,
    params: QuantParams,
    signed: bool,
    /// Real-valued clamp from Relu / Clip nodes.
    lo: f32,
    hi: f32,
    /// `y · scale + offset` on the last axis (a MatMul's bias, a batch normalization),
    /// each vector of length 1 or the layer's outputs.
    affine: Option<(Vec<f32>, Vec<f32>)>,
}

impl Tail {
    /// The activation as `(relu, clamp of the codes)`.
    fn activation(&self) -> (bool, Option<(u8, u8)>) {
        let p = self.params;
        if self.lo == 0.0 && self.hi == f32::INFINITY {
            return (true, None);
        }
        let lo = if self.lo == f32::NEG_INFINITY {
            0
        } else {
            quantize_one(self.lo, p.scale, p.zero_point)
        };
        let hi = if self.hi == f32::INFINITY {
            255
        } else {
            quantize_one(self.hi, p.scale, p.zero_point)
        };
        (false, (lo > 0 || hi < 255).then_some((lo, hi.max(lo))))
    }
}

/// `f` on real values between two quantizations, as a table over the 256 input codes.
pub(super) fn lookup(p_in: QuantParams, p_out: QuantParams, f: impl Fn(f32) -> f32) -> Vec<u8> {
    (0..=255u8)
        .map(|c| {
            let x = (c as i32 - p_in.zero_point as i32) as f32 * p_in.scale;
            quantize_one(f(x), p_out.scale, p_out.zero_point)
        })
        .collect()
}

/// The real-valued function of a float activation layer.
pub(super) fn activation_fn(layer: &Layer) -> Option<Box<dyn Fn(f32) -> f32>> {
    Some(match *layer {
        Layer::Relu => Box::new(|x: f32| x.max(0.0)),
        Layer::Clip { min, max } => Box::new(move |x: f32| x.max(min).min(max)),
        Layer::LeakyRelu { alpha } => Box::new(move |x: f32| if x < 0.0 { alpha * x } else { x }),
        Layer::Sigmoid => Box::new(|x: f32| 1.0 / (1.0 + (-x).exp())),
        Layer::Tanh => Box::new(f32::tanh),
        Layer::HardSigmoid { alpha, beta } => {
            Box::new(move |x: f32| (alpha * x + beta).clamp(0.0, 1.0))
        }
        Layer::HardSwish => Box::new(|x: f32| x * (x + 3.0).clamp(0.0, 6.0) / 6.0),
        _ => return None,
    })
}

impl Converter {
    /// Binds output 0 of `node` to the codes of value `id`.
    pub(super) fn bind_codes(&mut self, node: &NodeProto, id: crate::graph::ValueId, signed: bool) {
        self.bind_val(
            node,
            0,
            Val {
                id,
                kind: Kind::Codes { signed },
            },
        );
    }

    /// Per-tensor parameters from a scale input and an optional zero-point input, as u8
    /// codes; `signed` when the zero point (or, without one, `default_signed`) is int8.
    pub(super) fn qparams(
        &self,
        node: &NodeProto,
        s_ix: usize,
        zp_ix: usize,
        default_signed: bool,
    ) -> Result<(QuantParams, bool), ConvertError> {
        let s = self.konst(node, s_ix)?;
        if s.numel() != 1 {
            return Err(Self::unsupported(
                node,
                format!(
                    "activation scale of shape {:?}: only per-tensor activation quantization is native",
                    s.shape
                ),
            ));
        }
        let scale = s.data[0] as f32;
        if !(scale.is_normal() && scale > 0.0) {
            return Err(Self::unsupported(node, format!("scale {scale}")));
        }
        let (zp, signed) = if Self::has_input(node, zp_ix) {
            let z = self.konst(node, zp_ix)?;
            if z.numel() != 1 {
                return Err(Self::unsupported(node, "per-axis activation zero point"));
            }
            match z.kind {
                ElemKind::Int8 => (z.data[0], true),
                ElemKind::Uint8 => (z.data[0], false),
                _ => {
                    return Err(Self::unsupported(
                        node,
                        "only int8 and uint8 quantization is native",
                    ));
                }
            }
        } else {
            (0.0, default_signed)
        };
        let code = zp + if signed { 128.0 } else { 0.0 };
        if !(0.0..=255.0).contains(&code) || code.fract() != 0.0 {
            return Err(Self::unsupported(node, format!("zero point {zp}")));
        }
        Ok((
            QuantParams {
                scale,
                zero_point: code as u8,
            },
            signed,
        ))
    }

    /// Records the exact codes behind a constant DequantizeLinear (called when it folds).
    pub(super) fn record_qweight(
        &mut self,
        name: &str,
        q: &Const,
        scale: &[f64],
        zp: &[f64],
        axis: Option<usize>,
    ) {
        let per = |i: usize| super::consts::channel_of(&q.shape, axis, i);
        let values = q
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let z = zp[per(i).min(zp.len() - 1)];
                (v - z) as i32
            })
            .collect();
        self.qweights.insert(
            name.to_string(),
            QWeight {
                shape: q.shape.clone(),
                values,
                scales: scale.iter().map(|&s| s as f32).collect(),
                axis,
            },
        );
    }

    /// The single-consumer chain from `from` up to a QuantizeLinear: Relu and Clip fold
    /// into a clamp; with `allow_affine`, Add/Sub/Mul/Div by constants on the last axis
    /// before any activation (a bias the exporter left outside the MatMul, with no
    /// quantization between) fold into the layer's weights and bias.
    fn quant_tail(&self, from: &str, allow_affine: bool) -> Option<Tail> {
        let mut cur = from.to_string();
        let mut nodes = Vec::new();
        let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
        let mut affine: Option<(Vec<f32>, Vec<f32>)> = None;
        loop {
            let k = self.sole_consumer(&cur)?;
            let c = &self.onnx_nodes[k];
            let first = c.input.first() == Some(&cur);
            match c.op_type.as_str() {
                "Relu" if first => lo = lo.max(0.0),
                "Clip" if first => {
                    let (a, b) = self.clip_bounds(c).ok()?;
                    lo = lo.max(a);
                    hi = hi.min(b);
                }
                op @ ("Add" | "Sub" | "Mul" | "Div")
                    if allow_affine && lo == f32::NEG_INFINITY && hi == f32::INFINITY =>
                {
                    let other = if first { 1 } else { 0 };
                    let Some(Entry::Const(b)) =
                        c.input.get(other).and_then(|n| self.entries.get(n))
                    else {
                        return None;
                    };
                    if b.shape.iter().rev().skip(1).any(|&d| d != 1) {
                        return None;
                    }
                    let v = b.f32s();
                    let (mut sc, mut off) = affine.take().unwrap_or((vec![1.0], vec![0.0]));
                    let n = sc.len().max(off.len()).max(v.len());
                    let widen = |x: Vec<f32>| if x.len() == 1 { vec![x[0]; n] } else { x };
                    sc = widen(sc);
                    off = widen(off);
                    let v = widen(v);
                    if sc.len() != n || off.len() != n || v.len() != n {
                        return None;
                    }
                    for i in 0..n {
                        match (op, first) {
                            ("Add", _) => off[i] += v[i],
                            ("Sub", true) => off[i] -= v[i],
                            ("Sub", false) => {
                                sc[i] = -sc[i];
                                off[i] = v[i] - off[i];
                            }
                            ("Mul", _) => {
                                sc[i] *= v[i];
                                off[i] *= v[i];
                            }
                            ("Div", true) if v[i] != 0.0 => {
                                sc[i] /= v[i];
                                off[i] /= v[i];
                            }
                            _ => return None,
                        }
                    }
                    affine = Some((sc, off));
                }
                "QuantizeLinear" if first => {
                    let (params, signed) = self.qparams(c, 1, 2, false).ok()?;
                    let out = c.output.first()?.clone();
                    // A Q → DQ pair after this stays: onnxruntime and the spec round there,
                    // and skipping that rounding moves deep int8 outputs by several steps.
                    nodes.push(k);
                    return Some(Tail {
                        nodes,
                        out,
                        params,
                        signed,
                        lo,
                        hi,
                        affine,
                    });
                }
                _ => return None,
            }
            nodes.push(k);
            cur = c.output.first()?.clone();
        }
    }

    /// Binds a quantized layer's result to its tail's QuantizeLinear output, adding the
    /// clamp, and marks the tail's nodes done.
    fn finish_tail(
        &mut self,
        node: &NodeProto,
        id: crate::graph::ValueId,
        tail: Tail,
        clamp: Option<(u8, u8)>,
    ) -> Result<(), ConvertError> {
        let id = match clamp {
            Some((min, max)) => self.push(node, Layer::QClamp { min, max }, id)?,
            None => id,
        };
        self.done.extend(tail.nodes.iter().copied());
        self.entries.insert(
            tail.out,
            Entry::Value(Val {
                id,
                kind: Kind::Codes {
                    signed: tail.signed,
                },
            }),
        );
        Ok(())
    }

    pub(super) fn quantize_linear(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (p, signed) = self.qparams(node, 1, 2, false)?;
        let kind = Kind::Codes { signed };
        match self.entry(node, 0)?.clone() {
            Entry::Value(Val {
                id,
                kind: Kind::F32,
            }) => {
                let id = self.push(node, Layer::Quantize(p), id)?;
                self.bind_val(node, 0, Val { id, kind });
            }
            Entry::Dequant { codes, params } => {
                let src = self.u8_codes(node, codes)?;
                let id = if params == p {
                    src
                } else {
                    let table = lookup(params, p, |x| x);
                    self.push(node, Layer::QLookup { table }, src)?
                };
                self.bind_val(node, 0, Val { id, kind });
            }
            _ => {
                return Err(Self::unsupported(
                    node,
                    "quantizes a value that is not float",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn dequantize_linear(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let Entry::Value(
            v @ Val {
                kind: Kind::Codes { signed },
                ..
            },
        ) = self.entry(node, 0)?.clone()
        else {
            return Err(Self::unsupported(
                node,
                "dequantizes a value that holds no int8/uint8 codes",
            ));
        };
        let (params, zsigned) = self.qparams(node, 1, 2, signed)?;
        if zsigned != signed {
            return Err(Self::unsupported(
                node,
                "zero point type differs from the input's",
            ));
        }
        let id = self.u8_codes(node, v)?;
        self.bind_entry(
            node,
            0,
            Entry::Dequant {
                codes: Val { id, kind: v.kind },
                params,
            },
        );
        Ok(())
    }

    /// The dequantized input `ix` as codes and parameters.
    fn dq_input(
        &mut self,
        node: &NodeProto,
        ix: usize,
    ) -> Result<(crate::graph::ValueId, QuantParams), ConvertError> {
        match self.entry(node, ix)?.clone() {
            Entry::Dequant { codes, params } => Ok((self.u8_codes(node, codes)?, params)),
            _ => Err(Self::unsupported(
                node,
                format!("input {ix} is not dequantized codes"),
            )),
        }
    }

    /// An int8 weight `[out, …]` (the output channel first) with one scale per output
    /// channel, from exact codes whose quantization axis is `axis` of `q.shape` after the
    /// weight is arranged so; `transpose2d` turns a `[in, out]` matrix into `[out, in]`.
    pub(super) fn int8_weight(
        node: &NodeProto,
        q: &QWeight,
        out_axis: usize,
        transpose2d: bool,
    ) -> Result<Tensor, ConvertError> {
        let bad = |why: String| Self::unsupported(node, why);
        if let Some(a) = q.axis
            && a != out_axis
        {
            return Err(bad(format!(
                "weight quantized along axis {a}; only per-output-channel (axis {out_axis}) or per-tensor scales are native"
            )));
        }
        let (shape, mut values) = if transpose2d {
            let [r, c] = q.shape[..] else {
                return Err(bad(format!("weight of shape {:?} is not 2-D", q.shape)));
            };
            let mut t = vec![0i32; q.values.len()];
            for i in 0..r {
                for j in 0..c {
                    t[j * r + i] = q.values[i * c + j];
                }
            }
            (vec![c, r], t)
        } else {
            (q.shape.clone(), q.values.clone())
        };
        let oc = shape.first().copied().unwrap_or(0);
        let mut scales: Vec<f32> = if q.scales.len() == 1 {
            vec![q.scales[0]; oc]
        } else {
            q.scales.clone()
        };
        if scales.len() != oc || oc == 0 {
            return Err(bad(format!(
                "{} weight scales for {oc} channels",
                scales.len()
            )));
        }
        let per = values.len() / oc;
        for (c, s) in scales.iter_mut().enumerate() {
            if !(s.is_normal() && *s > 0.0) {
                // A channel whose scale is 0 stands for zeros.
                values[c * per..(c + 1) * per]
                    .iter_mut()
                    .for_each(|v| *v = 0);
                *s = 1.0;
            }
        }
        let values: Vec<i8> = values
            .iter()
            .map(|&v| i8::try_from(v))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                bad("weight codes minus zero point leave the int8 range (asymmetric uint8 weights are not native)".into())
            })?;
        Ok(Tensor {
            shape: shape.iter().map(|&d| d as u32).collect(),
            data: TensorData::I8 { values, scales },
        })
    }

    fn qweight(&self, node: &NodeProto, ix: usize) -> Result<QWeight, ConvertError> {
        let name = self.input_name(node, ix)?;
        self.qweights.get(name).cloned().ok_or_else(|| {
            Self::unsupported(
                node,
                format!("weight {name:?} must be a constant int8 tensor behind a DequantizeLinear"),
            )
        })
    }

    /// Integer bias `b` on the accumulator's scale `s_in · s_w[c]`, as float32.
    pub(super) fn int_bias(b: &Const, s_in: f32, w: &Tensor) -> Vec<f32> {
        let scales = match &w.data {
            TensorData::I8 { scales, .. } => scales.clone(),
            _ => vec![],
        };
        b.data
            .iter()
            .enumerate()
            .map(|(c, &v)| (v * s_in as f64 * scales.get(c).copied().unwrap_or(1.0) as f64) as f32)
            .collect()
    }

    /// Pushes a quantized conv or dense layer with its output: codes for the tail's
    /// QuantizeLinear, or float32 bound to `node`'s output.
    #[allow(clippy::too_many_arguments)]
    fn q_layer(
        &mut self,
        node: &NodeProto,
        src: crate::graph::ValueId,
        pin: QuantParams,
        make: impl Fn(QuantOutput, bool, Option<(Vec<f32>, Vec<f32>)>) -> Result<Layer, ConvertError>,
        allow_bias: bool,
    ) -> Result<(), ConvertError> {
        let out = node.output.first().cloned().unwrap_or_default();
        let _ = pin;
        match self.quant_tail(&out, allow_bias) {
            Some(tail) => {
                let (relu, clamp) = tail.activation();
                let layer = make(QuantOutput::U8(tail.params), relu, tail.affine.clone())?;
                let id = self.push(node, layer, src)?;
                self.finish_tail(node, id, tail, clamp)
            }
            None => {
                let id = self.push(node, make(QuantOutput::F32, false, None)?, src)?;
                self.bind(node, 0, id, false);
                Ok(())
            }
        }
    }

    pub(super) fn qdq_conv(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (src, pin) = self.dq_input(node, 0)?;
        let q = self.qweight(node, 1)?;
        let weight = Self::int8_weight(node, &q, 0, false)?;
        let bias = if Self::has_input(node, 2) {
            Some(self.konst_f32(node, 2)?.1)
        } else {
            None
        };
        self.conv_common(node, src, pin, weight, bias, None)
    }

    pub(super) fn conv_common(
        &mut self,
        node: &NodeProto,
        src: crate::graph::ValueId,
        pin: QuantParams,
        weight: Tensor,
        bias: Option<Vec<f32>>,
        out: Option<(QuantParams, bool)>,
    ) -> Result<(), ConvertError> {
        let [_, _, kh, kw] = weight.shape[..] else {
            return Err(Self::unsupported(
                node,
                format!(
                    "weight of shape {:?}: only 2-D convolution is native",
                    weight.shape
                ),
            ));
        };
        let s = self.shape_of(src).to_vec();
        let ((stride, padding, dilation), groups) =
            self.conv_attrs(node, &s, [kh as usize, kw as usize])?;
        let make = |output: QuantOutput, relu: bool, _: Option<(Vec<f32>, Vec<f32>)>| {
            Ok(Layer::QConv2d {
                weight: weight.clone(),
                bias: bias
                    .as_ref()
                    .map(|b| Tensor::f32(vec![b.len() as u32], b.clone())),
                stride,
                padding,
                dilation,
                groups,
                input: QuantInput::Static(pin),
                output,
                relu,
            })
        };
        match out {
            Some((pout, signed)) => {
                let id = self.push(node, make(QuantOutput::U8(pout), false, None)?, src)?;
                self.bind_codes(node, id, signed);
                Ok(())
            }
            None => self.q_layer(node, src, pin, make, false),
        }
    }

    pub(super) fn qdq_matmul(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (src, pin) = self.dq_input(node, 0)?;
        let gemm = node.op_type == "Gemm";
        if gemm && attr_i(node, "transA", 0) != 0 {
            return Err(Self::unsupported(node, "transA=1"));
        }
        let q = self.qweight(node, 1)?;
        let trans_b = gemm && attr_i(node, "transB", 0) != 0;
        let mut weight = Self::int8_weight(node, &q, if trans_b { 0 } else { 1 }, !trans_b)?;
        let alpha = if gemm {
            attr_f(node, "alpha", 1.0)
        } else {
            1.0
        };
        scale_weight(&mut weight, alpha);
        let bias = if gemm && Self::has_input(node, 2) {
            let beta = attr_f(node, "beta", 1.0);
            let b = self.konst_f32(node, 2)?.1;
            Some(b.iter().map(|v| v * beta).collect())
        } else {
            None
        };
        self.dense_common(node, src, pin, weight, bias, None)
    }

    pub(super) fn dense_common(
        &mut self,
        node: &NodeProto,
        src: crate::graph::ValueId,
        pin: QuantParams,
        weight: Tensor,
        bias: Option<Vec<f32>>,
        out: Option<(QuantParams, bool)>,
    ) -> Result<(), ConvertError> {
        let outputs = weight.shape[0] as usize;
        let make = |output: QuantOutput, relu: bool, affine: Option<(Vec<f32>, Vec<f32>)>| {
            let mut w = weight.clone();
            let mut b = bias.clone();
            if let Some((scale, offset)) = affine {
                let base = b.get_or_insert_with(|| vec![0.0; outputs]);
                apply_affine(&mut w, base, &scale, &offset)
                    .map_err(|e| Self::unsupported(node, e))?;
            }
            Ok(Layer::QDense {
                weight: w,
                bias: b.map(|b| Tensor::f32(vec![b.len() as u32], b)),
                input: QuantInput::Static(pin),
                output,
                relu,
            })
        };
        match out {
            Some((pout, signed)) => {
                let id = self.push(node, make(QuantOutput::U8(pout), false, None)?, src)?;
                self.bind_codes(node, id, signed);
                Ok(())
            }
            None => self.q_layer(node, src, pin, make, true),
        }
    }

    /// Add of two dequantized values followed by a QuantizeLinear: an int8 add.
    pub(super) fn qdq_add(&mut self, node: &NodeProto) -> Result<bool, ConvertError> {
        if !(matches!(self.entry(node, 0)?, Entry::Dequant { .. })
            && matches!(self.entry(node, 1)?, Entry::Dequant { .. }))
        {
            return Ok(false);
        }
        let Some(tail) = self.quant_tail(node.output.first().map_or("", String::as_str), false)
        else {
            return Ok(false);
        };
        let (a, pa) = self.dq_input(node, 0)?;
        let (b, pb) = self.dq_input(node, 1)?;
        let (relu, clamp) = tail.activation();
        let clamp = if relu {
            Some((tail.params.zero_point, 255))
        } else {
            clamp
        };
        let id = self.push_n(
            node,
            Layer::QAdd {
                a: pa,
                b: pb,
                output: tail.params,
            },
            vec![a, b],
        )?;
        self.finish_tail(node, id, tail, clamp)?;
        Ok(true)
    }

    /// An average pool of a dequantized value followed by a QuantizeLinear.
    pub(super) fn qdq_pool(
        &mut self,
        node: &NodeProto,
        layer: &Layer,
    ) -> Result<bool, ConvertError> {
        let Some(tail) = self.quant_tail(node.output.first().map_or("", String::as_str), false)
        else {
            return Ok(false);
        };
        let (src, pin) = self.dq_input(node, 0)?;
        let q = match *layer {
            Layer::AvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad,
            } => Layer::QAvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad,
                input: pin,
                output: tail.params,
            },
            Layer::GlobalAvgPool => Layer::QGlobalAvgPool {
                input: pin,
                output: tail.params,
            },
            _ => return Ok(false),
        };
        let (relu, clamp) = tail.activation();
        let clamp = if relu {
            Some((tail.params.zero_point, 255))
        } else {
            clamp
        };
        let id = self.push(node, q, src)?;
        self.finish_tail(node, id, tail, clamp)?;
        Ok(true)
    }

    /// Concat of dequantized values followed by a QuantizeLinear: the codes of each input
    /// requantized to the output's parameters where they differ, then joined.
    pub(super) fn qdq_concat(&mut self, node: &NodeProto, axis: u32) -> Result<bool, ConvertError> {
        let all_dq =
            (0..node.input.len()).all(|i| matches!(self.entry(node, i), Ok(Entry::Dequant { .. })));
        if !all_dq {
            return Ok(false);
        }
        let Some(tail) = self.quant_tail(node.output.first().map_or("", String::as_str), false)
        else {
            return Ok(false);
        };
        let mut ids = Vec::with_capacity(node.input.len());
        for i in 0..node.input.len() {
            let (src, p) = self.dq_input(node, i)?;
            ids.push(self.requantize(node, src, p, tail.params)?);
        }
        let (relu, clamp) = tail.activation();
        let clamp = if relu {
            Some((tail.params.zero_point, 255))
        } else {
            clamp
        };
        let id = self.push_n(node, Layer::Concat { axis }, ids)?;
        self.finish_tail(node, id, tail, clamp)?;
        Ok(true)
    }

    pub(super) fn requantize(
        &mut self,
        node: &NodeProto,
        src: crate::graph::ValueId,
        from: QuantParams,
        to: QuantParams,
    ) -> Result<crate::graph::ValueId, ConvertError> {
        if from == to {
            return Ok(src);
        }
        let table = lookup(from, to, |x| x);
        self.push(node, Layer::QLookup { table }, src)
    }

    /// An element-wise activation between a DequantizeLinear and a QuantizeLinear: a
    /// lookup table (a clamp when Relu/Clip keep the parameters).
    pub(super) fn qdq_unary(
        &mut self,
        node: &NodeProto,
        layer: &Layer,
    ) -> Result<bool, ConvertError> {
        let Some(f) = activation_fn(layer) else {
            return Ok(false);
        };
        let Some(tail) = self.quant_tail(node.output.first().map_or("", String::as_str), false)
        else {
            return Ok(false);
        };
        let (src, pin) = self.dq_input(node, 0)?;
        let (lo, hi) = (tail.lo, tail.hi);
        let pout = tail.params;
        let id = if pin == pout
            && matches!(layer, Layer::Relu | Layer::Clip { .. })
            && lo == f32::NEG_INFINITY
            && hi == f32::INFINITY
        {
            let (a, b) = match *layer {
                Layer::Clip { min, max } => (min, max),
                _ => (0.0, f32::INFINITY),
            };
            let min = if a == f32::NEG_INFINITY {
                0
            } else {
                quantize_one(a, pout.scale, pout.zero_point)
            };
            let max = if b == f32::INFINITY {
                255
            } else {
                quantize_one(b, pout.scale, pout.zero_point)
            };
            self.push(
                node,
                Layer::QClamp {
                    min,
                    max: max.max(min),
                },
                src,
            )?
        } else {
            let table = lookup(pin, pout, |x| f(x).max(lo).min(hi));
            self.push(node, Layer::QLookup { table }, src)?
        };
        self.finish_tail(node, id, tail, None)?;
        Ok(true)
    }
}

/// `y · scale + offset` per output folded into an int8 dense layer: weight scales times
/// `|scale|` (rows negated where it is negative), bias times `scale` plus `offset`.
fn apply_affine(
    w: &mut Tensor,
    bias: &mut [f32],
    scale: &[f32],
    offset: &[f32],
) -> Result<(), String> {
    let n = bias.len();
    let at = |v: &[f32], i: usize| {
        if v.len() == 1 {
            v[0]
        } else {
            v.get(i).copied().unwrap_or(0.0)
        }
    };
    if !(scale.len() == 1 || scale.len() == n) || !(offset.len() == 1 || offset.len() == n) {
        return Err(format!(
            "{} scales and {} offsets for {n} outputs",
            scale.len(),
            offset.len()
        ));
    }
    let TensorData::I8 { values, scales } = &mut w.data else {
        return Err("weight is not int8".into());
    };
    let per = values.len() / n.max(1);
    for o in 0..n {
        let s = at(scale, o);
        let row = &mut values[o * per..(o + 1) * per];
        if s == 0.0 || !s.is_finite() {
            return Err(format!("a multiplier of {s} on output {o}"));
        }
        if s < 0.0 {
            if row.contains(&i8::MIN) {
                return Err(format!(
                    "output {o}: a negative multiplier on a weight holding -128"
                ));
            }
            row.iter_mut().for_each(|v| *v = -*v);
        }
        scales[o] *= s.abs();
        bias[o] = bias[o] * s + at(offset, o);
    }
    Ok(())
}

pub(super) fn scale_weight(w: &mut Tensor, alpha: f32) {
    if alpha != 1.0
        && let TensorData::I8 { scales, .. } = &mut w.data
    {
        scales.iter_mut().for_each(|s| *s *= alpha);
    }
}
