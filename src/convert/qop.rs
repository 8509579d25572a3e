//! QOperator nodes (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinear…Pool,
//! QLinearConcat, QLinearSoftmax, QLinearLeakyRelu, QLinearSigmoid): each reads its codes'
//! scale and zero point from constant inputs and becomes one int8 layer (or a lookup
//! table), through the helpers the QDQ path shares (`quant.rs`).

use super::consts::ElemKind;
use super::quant::{activation_fn, lookup, scale_weight};
use super::{ConvertError, Converter, Entry, Kind, QWeight, Val, attr_f, attr_i};
use crate::graph::{Layer, QuantInput, QuantOutput, QuantParams, Tensor};
use tract_onnx::pb::NodeProto;

impl Converter {
    /// A QOperator weight: constant codes with their scale and zero-point inputs.
    fn qop_weight(
        &self,
        node: &NodeProto,
        w: usize,
        s: usize,
        zp: usize,
    ) -> Result<QWeight, ConvertError> {
        let q = self.konst(node, w)?;
        if !matches!(q.kind, ElemKind::Int8 | ElemKind::Uint8) {
            return Err(Self::unsupported(node, "weight is not int8 or uint8"));
        }
        let scale = self.konst(node, s)?.data.clone();
        let z = if Self::has_input(node, zp) {
            self.konst(node, zp)?.data.clone()
        } else {
            vec![0.0]
        };
        if scale.is_empty() || z.is_empty() || (z.len() != 1 && z.len() != scale.len()) {
            return Err(Self::unsupported(node, "weight scale / zero point sizes"));
        }
        let per_out = |axis: usize| (scale.len() > 1).then_some(axis);
        // Conv weights are [oc, …]: axis 0; matmul weights [in, out]: axis 1.
        let axis = per_out(if q.shape.len() == 4 { 0 } else { 1 });
        let mut cx = QWeight {
            shape: q.shape.clone(),
            values: vec![],
            scales: scale.iter().map(|&v| v as f32).collect(),
            axis,
        };
        cx.values = q
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = super::consts::channel_of(&q.shape, axis, i);
                (v - z[ch.min(z.len() - 1)]) as i32
            })
            .collect();
        Ok(cx)
    }

    /// Input 0 of a QOperator node, which must hold codes, and its quantization (scale and
    /// zero point at inputs 1 and 2).
    fn qop_input(&self, node: &NodeProto) -> Result<(Val, QuantParams), ConvertError> {
        let Entry::Value(
            v @ Val {
                kind: Kind::Codes { signed },
                ..
            },
        ) = self.entry(node, 0)?.clone()
        else {
            return Err(Self::unsupported(node, "input holds no int8/uint8 codes"));
        };
        let (pin, _) = self.qparams(node, 1, 2, signed)?;
        Ok((v, pin))
    }

    pub(super) fn qlinear_conv(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (v, pin) = self.qop_input(node)?;
        let (pout, out_signed) = self.qparams(node, 6, 7, false)?;
        let q = self.qop_weight(node, 3, 4, 5)?;
        let weight = Self::int8_weight(node, &q, 0, false)?;
        let bias = if Self::has_input(node, 8) {
            Some(Self::int_bias(self.konst(node, 8)?, pin.scale, &weight))
        } else {
            None
        };
        let src = self.u8_codes(node, v)?;
        self.conv_common(node, src, pin, weight, bias, Some((pout, out_signed)))
    }

    pub(super) fn qlinear_matmul(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (v, pin) = self.qop_input(node)?;
        let (pout, out_signed) = self.qparams(node, 6, 7, false)?;
        let q = self.qop_weight(node, 3, 4, 5)?;
        let weight = Self::int8_weight(node, &q, 1, true)?;
        let src = self.u8_codes(node, v)?;
        self.dense_common(node, src, pin, weight, None, Some((pout, out_signed)))
    }

    /// com.microsoft QGemm: A, a_scale, a_zp, B, b_scale, b_zp, C (int32), y_scale, y_zp.
    pub(super) fn qgemm(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let Entry::Value(
            v @ Val {
                kind: Kind::Codes { signed },
                ..
            },
        ) = self.entry(node, 0)?.clone()
        else {
            return Err(Self::unsupported(node, "input holds no int8/uint8 codes"));
        };
        if attr_i(node, "transA", 0) != 0 {
            return Err(Self::unsupported(node, "transA=1"));
        }
        let (pin, _) = self.qparams(node, 1, 2, signed)?;
        let trans_b = attr_i(node, "transB", 0) != 0;
        let mut q = self.qop_weight(node, 3, 4, 5)?;
        if trans_b && q.axis.is_some() {
            q.axis = Some(0);
        }
        let mut weight = Self::int8_weight(node, &q, if trans_b { 0 } else { 1 }, !trans_b)?;
        scale_weight(&mut weight, attr_f(node, "alpha", 1.0));
        let bias = if Self::has_input(node, 6) {
            Some(Self::int_bias(self.konst(node, 6)?, pin.scale, &weight))
        } else {
            None
        };
        let out = if Self::has_input(node, 7) {
            Some(self.qparams(node, 7, 8, false)?)
        } else {
            None
        };
        let src = self.u8_codes(node, v)?;
        match out {
            Some(o) => self.dense_common(node, src, pin, weight, bias, Some(o)),
            None => {
                let layer = Layer::QDense {
                    weight,
                    bias: bias.map(|b| Tensor::f32(vec![b.len() as u32], b)),
                    input: QuantInput::Static(pin),
                    output: QuantOutput::F32,
                    relu: false,
                };
                let id = self.push(node, layer, src)?;
                self.bind(node, 0, id, false);
                Ok(())
            }
        }
    }

    /// com.microsoft QLinearAdd / QLinearMul: A, A_scale, A_zp, B, B_scale, B_zp, C_scale,
    /// C_zp. A constant operand (a MatMul's quantized bias, a batch normalization) folds
    /// into the int8 dense layer that alone produces the other.
    pub(super) fn qlinear_add(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (pc, out_signed) = self.qparams(node, 6, 7, false)?;
        let codes = |cx: &Self, ix: usize| match cx.entry(node, ix) {
            Ok(Entry::Value(
                v @ Val {
                    kind: Kind::Codes { .. },
                    ..
                },
            )) => Some(*v),
            _ => None,
        };
        let (va, vb) = (codes(self, 0), codes(self, 3));
        let kind = Kind::Codes { signed: out_signed };
        match (va, vb) {
            (Some(a), Some(b)) => {
                let Kind::Codes { signed: sa } = a.kind else {
                    unreachable!()
                };
                let Kind::Codes { signed: sb } = b.kind else {
                    unreachable!()
                };
                if node.op_type == "QLinearMul" {
                    return Err(Self::unsupported(
                        node,
                        "multiplying two computed values is not native",
                    ));
                }
                let (pa, _) = self.qparams(node, 1, 2, sa)?;
                let (pb, _) = self.qparams(node, 4, 5, sb)?;
                let (a, b) = (self.u8_codes(node, a)?, self.u8_codes(node, b)?);
                let id = self.push_n(
                    node,
                    Layer::QAdd {
                        a: pa,
                        b: pb,
                        output: pc,
                    },
                    vec![a, b],
                )?;
                self.bind_val(node, 0, Val { id, kind });
                Ok(())
            }
            (Some(v), None) | (None, Some(v)) => {
                let (vi, ci) = if va.is_some() { (0, 3) } else { (3, 0) };
                let Kind::Codes { signed } = v.kind else {
                    unreachable!()
                };
                let c = self.konst(node, ci)?.clone();
                let (pk, _) = self.qparams(node, ci + 1, ci + 2, c.kind == ElemKind::Int8)?;
                let zk = pk.zero_point as f64 - if c.kind == ElemKind::Int8 { 128.0 } else { 0.0 };
                let real: Vec<f32> = c
                    .data
                    .iter()
                    .map(|&q| ((q - zk) as f32) * pk.scale)
                    .collect();
                // Dequantize, the constant in float, quantize: the rounding both
                // onnxruntime and the spec make (folding the constant into the layer
                // before would skip it).
                let (pv, _) = self.qparams(node, vi + 1, vi + 2, signed)?;
                if c.shape.iter().rev().skip(1).any(|&d| d != 1) {
                    return Err(Self::unsupported(
                        node,
                        "only a constant along the last axis is native",
                    ));
                }
                let x = self.dequantize(node, v, pv)?;
                let n = self.last_axis(x);
                let at = |i: usize| {
                    if real.len() == 1 {
                        real[0]
                    } else {
                        real.get(i).copied().unwrap_or(0.0)
                    }
                };
                let layer = if node.op_type == "QLinearMul" {
                    Layer::Standardize {
                        offset: vec![0.0; n],
                        scale: (0..n).map(at).collect(),
                    }
                } else {
                    Layer::Standardize {
                        offset: (0..n).map(|i| -at(i)).collect(),
                        scale: vec![1.0; n],
                    }
                };
                let y = self.push(node, layer, x)?;
                let id = self.push(node, Layer::Quantize(pc), y)?;
                self.bind_val(node, 0, Val { id, kind });
                Ok(())
            }
            _ => Err(Self::unsupported(node, "inputs hold no int8/uint8 codes")),
        }
    }

    /// com.microsoft QLinearGlobalAveragePool / QLinearAveragePool: X, x_scale, x_zp,
    /// y_scale, y_zp; `channels_last` inputs are N×H×W×C.
    pub(super) fn qlinear_pool(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (v, pin) = self.qop_input(node)?;
        let (pout, out_signed) = self.qparams(node, 3, 4, false)?;
        let channels_last = attr_i(node, "channels_last", 0) != 0;
        let src = self.u8_codes(node, v)?;
        let mut e = Entry::Value(Val {
            id: src,
            kind: v.kind,
        });
        if channels_last {
            e = self.transpose_entry(node, e, &[2, 0, 1])?;
        }
        let Entry::Value(x) = e else { unreachable!() };
        let s = self.shape_of(x.id).to_vec();
        let layer = if node.op_type == "QLinearGlobalAveragePool" {
            Layer::QGlobalAvgPool {
                input: pin,
                output: pout,
            }
        } else {
            let k = super::attr_ints(node, "kernel_shape").unwrap_or_default();
            if k.len() != 2 || k.iter().any(|&v| v <= 0 || v > u32::MAX as i64) {
                return Err(Self::unsupported(node, format!("kernel_shape {k:?}")));
            }
            if attr_i(node, "ceil_mode", 0) != 0 {
                return Err(Self::unsupported(node, "ceil_mode=1 average pooling"));
            }
            let (stride, padding, _) =
                self.window_attrs(node, &s, [k[0] as usize, k[1] as usize])?;
            Layer::QAvgPool2d {
                kernel: [k[0] as u32, k[1] as u32],
                stride,
                padding,
                count_include_pad: attr_i(node, "count_include_pad", 0) != 0,
                input: pin,
                output: pout,
            }
        };
        let id = self.push(node, layer, x.id)?;
        let kind = Kind::Codes { signed: out_signed };
        let mut out = Entry::Value(Val { id, kind });
        if channels_last {
            out = self.transpose_entry(node, out, &[1, 2, 0])?;
        }
        self.bind_entry(node, 0, out);
        Ok(())
    }

    /// com.microsoft QLinearConcat: Y_scale, Y_zp, then (X, X_scale, X_zp) per input.
    pub(super) fn qlinear_concat(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (pout, out_signed) = self.qparams(node, 0, 1, false)?;
        let n = node.input.len().saturating_sub(2) / 3;
        if n == 0 || node.input.len() != 2 + 3 * n {
            return Err(Self::unsupported(
                node,
                "inputs are not (X, scale, zero point) triples",
            ));
        }
        let mut ids = Vec::with_capacity(n);
        let mut rank = 0;
        for i in 0..n {
            let ix = 2 + 3 * i;
            let Entry::Value(
                v @ Val {
                    kind: Kind::Codes { signed },
                    ..
                },
            ) = self.entry(node, ix)?.clone()
            else {
                return Err(Self::unsupported(
                    node,
                    format!("input {ix} holds no codes"),
                ));
            };
            let (p, _) = self.qparams(node, ix + 1, ix + 2, signed)?;
            let src = self.u8_codes(node, v)?;
            rank = self.shape_of(src).len() + 1;
            ids.push(self.requantize(node, src, p, pout)?);
        }
        let axis = Self::sample_axis(node, attr_i(node, "axis", 1), rank)? as u32;
        let id = self.push_n(node, Layer::Concat { axis }, ids)?;
        self.bind_codes(node, id, out_signed);
        Ok(())
    }

    /// com.microsoft QLinearSoftmax (X, X_scale, x_zp, y_scale, y_zp): a float softmax
    /// between a dequantize and a quantize.
    pub(super) fn qlinear_softmax(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (v, pin) = self.qop_input(node)?;
        let (pout, out_signed) = self.qparams(node, 3, 4, false)?;
        let rank = self.shape_of(v.id).len() + 1;
        let axis = attr_i(node, "axis", -1);
        if Self::sample_axis(node, axis, rank)? != rank - 2 {
            return Err(Self::unsupported(
                node,
                "softmax over an axis other than the last",
            ));
        }
        let x = self.dequantize(node, v, pin)?;
        let p = self.push(node, Layer::Softmax, x)?;
        let id = self.push(node, Layer::Quantize(pout), p)?;
        self.bind_codes(node, id, out_signed);
        Ok(())
    }

    /// com.microsoft QLinearLeakyRelu / QLinearSigmoid: X, X_scale, X_zp, Y_scale, Y_zp.
    pub(super) fn qlinear_unary(&mut self, node: &NodeProto) -> Result<(), ConvertError> {
        let (v, pin) = self.qop_input(node)?;
        let (pout, out_signed) = self.qparams(node, 3, 4, false)?;
        let layer = if node.op_type == "QLinearSigmoid" {
            Layer::Sigmoid
        } else {
            Layer::LeakyRelu {
                alpha: attr_f(node, "alpha", 0.01),
            }
        };
        let f = activation_fn(&layer).ok_or_else(|| Self::unsupported(node, "activation"))?;
        let src = self.u8_codes(node, v)?;
        let id = self.push(
            node,
            Layer::QLookup {
                table: lookup(pin, pout, f),
            },
            src,
        )?;
        self.bind_codes(node, id, out_signed);
        Ok(())
    }
}
