//! Ops that move values without arithmetic: Pad, Concat, Transpose and the Reshape family
//! (Reshape, Flatten, Squeeze, Unsqueeze), on floats or directly on quantized codes.

use super::consts::Dim;
use super::{ConvertError, Converter, Entry, Kind, Val, attr_f, attr_i, attr_ints, attr_s};
use crate::graph::Layer;
use tract_onnx::pb::NodeProto;

impl Converter {
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
}
