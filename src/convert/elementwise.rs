//! Element-wise ops: activations, and arithmetic with constants (folded into a standardize
//! or a per-channel affine layer) or between two values (residual Add).

use super::consts::Const;
use super::{ConvertError, Converter, Entry, attr_f};
use crate::graph::{Layer, Node, Tensor, ValueId};
use tract_onnx::pb::NodeProto;

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
}
