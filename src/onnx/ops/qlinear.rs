//! onnxruntime's `com.microsoft` quantized ops, as its QOperator quantizer writes them:
//! QGemm, QLinearAdd, QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax,
//! QLinearGlobalAveragePool, QLinearAveragePool and QLinearConcat.
//!
//! Each is an expansion into tract core ops: dequantize the inputs to f32, run the float op,
//! quantize the result as onnxruntime does (`x / scale`, round half to even, add the zero
//! point, saturate). onnxruntime computes most of these in float too (lookup tables built
//! from the same formula, or float requantization), so results agree up to float rounding:
//! at most one quantization step. Scales and zero points must be constants (they always are
//! in quantizer output); a missing zero point means 0 of type uint8.

use tract_hir::internal::*;
use tract_hir::tract_core;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir;

use tract_core::ops::cast::cast;
use tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_core::ops::cnn::PoolSpec;
use tract_core::ops::math;

/// Registers the `com.microsoft` quantized ops of this module.
pub(crate) fn register_all_ops(reg: &mut OnnxOpRegister) {
    reg.insert("QGemm", qgemm);
    reg.insert("QLinearAdd", |_, n| build(n, Kind::Add));
    reg.insert("QLinearMul", |_, n| build(n, Kind::Mul));
    reg.insert("QLinearSigmoid", |_, n| build(n, Kind::Sigmoid));
    reg.insert("QLinearLeakyRelu", qlinear_leaky_relu);
    reg.insert("QLinearSoftmax", qlinear_softmax);
    reg.insert("QLinearGlobalAveragePool", qlinear_global_average_pool);
    reg.insert("QLinearAveragePool", qlinear_average_pool);
    reg.insert("QLinearConcat", qlinear_concat);
}

/// Which float op runs between dequantization and quantization.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// `(A, A_scale, A_zp?, B, B_scale, B_zp?, C_scale, C_zp?)`.
    Add,
    /// As [`Kind::Add`].
    Mul,
    /// `(X, X_scale, X_zp?, Y_scale, Y_zp?)`.
    Sigmoid,
    /// As [`Kind::Sigmoid`].
    LeakyRelu(f32),
    /// As [`Kind::Sigmoid`]; softmax over `axis` (opset ≥ 13) or over all axes from `axis`
    /// on (earlier Softmax semantics).
    Softmax { axis: isize, coerce_to_2d: bool },
    /// As [`Kind::Sigmoid`]; mean over the spatial axes.
    GlobalAveragePool { channels_last: bool },
    /// As [`Kind::Sigmoid`].
    AveragePool {
        pool: Box<PoolSpec>,
        count_include_pad: bool,
    },
    /// `(Y_scale, Y_zp, X1, X1_scale, X1_zp, ...)`.
    Concat { axis: i64 },
    /// `(A, a_scale, a_zp, B, b_scale, b_zp, C?, y_scale?, y_zp?)`.
    Gemm {
        alpha: f32,
        trans_a: bool,
        trans_b: bool,
    },
}

/// A quantized op: its [`Kind`] and where each formal input landed among the node's
/// present inputs (`None` for an absent optional input).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QLinear {
    op_type: String,
    kind: Kind,
    slots: Vec<Option<usize>>,
}

impl Eq for QLinear {}

fn build(node: &NodeProto, kind: Kind) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let mut next = 0;
    let slots = node
        .input
        .iter()
        .map(|name| {
            (!name.is_empty()).then(|| {
                next += 1;
                next - 1
            })
        })
        .collect();
    Ok((
        expand(QLinear {
            op_type: node.op_type.clone(),
            kind,
            slots,
        }),
        vec![],
    ))
}

fn qlinear_leaky_relu(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let alpha = node.get_attr_opt("alpha")?.unwrap_or(0.01f32);
    build(node, Kind::LeakyRelu(alpha))
}

fn qlinear_softmax(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let opset: i64 = node.get_attr_opt("opset")?.unwrap_or(13);
    let axis: i64 = node
        .get_attr_opt("axis")?
        .unwrap_or(if opset < 13 { 1 } else { -1 });
    build(
        node,
        Kind::Softmax {
            axis: axis as isize,
            coerce_to_2d: opset < 13,
        },
    )
}

fn qlinear_global_average_pool(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let channels_last = node.get_attr_opt::<i64>("channels_last")?.unwrap_or(0) != 0;
    build(node, Kind::GlobalAveragePool { channels_last })
}

fn qlinear_average_pool(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    use tract_core::ops::cnn::PaddingSpec;
    use tract_core::ops::nn::DataFormat;
    let name = &node.name;
    let kernel_shape: TVec<usize> = node.get_attr_tvec("kernel_shape")?;
    ensure!(
        !kernel_shape.is_empty() && kernel_shape.iter().all(|&k| k > 0),
        "QLinearAveragePool node {name:?}: kernel_shape {kernel_shape:?} must be positive"
    );
    let rank = kernel_shape.len();
    let strides: Option<TVec<usize>> = node.get_attr_opt_tvec("strides")?;
    if let Some(s) = &strides {
        ensure!(
            s.len() == rank && s.iter().all(|&s| s > 0),
            "QLinearAveragePool node {name:?}: strides {s:?} for a {rank}-d kernel"
        );
    }
    let ceil_mode = node.get_attr_opt::<i64>("ceil_mode")?.unwrap_or(0) == 1;
    let count_include_pad = node.get_attr_opt::<i64>("count_include_pad")?.unwrap_or(0) == 1;
    let channels_last = node.get_attr_opt::<i64>("channels_last")?.unwrap_or(0) != 0;
    let pads: Option<TVec<usize>> = node.get_attr_opt_tvec("pads")?;
    let auto_pad: &str = node.get_attr_opt("auto_pad")?.unwrap_or("NOTSET");
    let padding = match (auto_pad, pads) {
        ("NOTSET", Some(p)) => {
            ensure!(
                p.len() == 2 * rank,
                "QLinearAveragePool node {name:?}: pads has {} values for a {rank}-d kernel",
                p.len()
            );
            PaddingSpec::ExplicitOnnxPool(p[..rank].into(), p[rank..].into(), ceil_mode)
        }
        ("NOTSET", None) => {
            PaddingSpec::ExplicitOnnxPool(tvec![0; rank], tvec![0; rank], ceil_mode)
        }
        ("VALID", _) => PaddingSpec::Valid,
        ("SAME_UPPER", _) => PaddingSpec::SameUpper,
        ("SAME_LOWER", _) => PaddingSpec::SameLower,
        (other, _) => bail!("QLinearAveragePool node {name:?}: unknown auto_pad {other:?}"),
    };
    let format = if channels_last {
        DataFormat::NHWC
    } else {
        DataFormat::NCHW
    };
    let pool = PoolSpec::new(format, kernel_shape, padding, None, strides, 0, 0);
    build(
        node,
        Kind::AveragePool {
            pool: Box::new(pool),
            count_include_pad,
        },
    )
}

fn qlinear_concat(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let axis: i64 = node.get_attr("axis")?;
    ensure!(
        node.input.len() >= 5 && (node.input.len() - 2).is_multiple_of(3),
        "QLinearConcat node {:?}: {} inputs; expected Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input",
        node.name,
        node.input.len()
    );
    build(node, Kind::Concat { axis })
}

fn qgemm(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let alpha = node.get_attr_opt("alpha")?.unwrap_or(1f32);
    let trans_a = node.get_attr_opt::<i64>("transA")?.unwrap_or(0) != 0;
    let trans_b = node.get_attr_opt::<i64>("transB")?.unwrap_or(0) != 0;
    ensure!(
        node.input.len() >= 6,
        "QGemm node {:?}: {} inputs; expected at least A, a_scale, a_zero_point, B, b_scale, b_zero_point",
        node.name,
        node.input.len()
    );
    build(
        node,
        Kind::Gemm {
            alpha,
            trans_a,
            trans_b,
        },
    )
}

/// A quantization scale and zero point, as f32 tensors ready to broadcast.
struct QuantParams {
    scale: Tensor,
    zero_point: Tensor,
    dt: DatumType,
}

impl QLinear {
    /// The outlet of formal input `ix`, if present.
    fn input(&self, inputs: &[OutletId], ix: usize) -> Option<OutletId> {
        self.slots
            .get(ix)
            .copied()
            .flatten()
            .and_then(|i| inputs.get(i).copied())
    }

    fn required(&self, inputs: &[OutletId], ix: usize, what: &str) -> TractResult<OutletId> {
        self.input(inputs, ix)
            .with_context(|| format!("{}: input {ix} ({what}) is missing", self.op_type))
    }

    /// The constant scale and zero point at formal inputs `scale_ix` and `scale_ix + 1`,
    /// shaped to broadcast over a rank `rank` tensor along `axis` when per-axis.
    fn params(
        &self,
        model: &TypedModel,
        inputs: &[OutletId],
        scale_ix: usize,
        rank: usize,
        axis: usize,
    ) -> TractResult<QuantParams> {
        let what = |i: usize| format!("{}: input {i}", self.op_type);
        let scale = self.required(inputs, scale_ix, "scale")?;
        let scale = model
            .outlet_fact(scale)?
            .konst
            .clone()
            .with_context(|| format!("{} (a scale) must be a constant", what(scale_ix)))?;
        let zero_point = match self.input(inputs, scale_ix + 1) {
            Some(zp) => model.outlet_fact(zp)?.konst.clone().with_context(|| {
                format!("{} (a zero point) must be a constant", what(scale_ix + 1))
            })?,
            None => rctensor0(0u8),
        };
        let dt = zero_point.datum_type();
        ensure!(
            dt == u8::datum_type() || dt == i8::datum_type() || dt == i32::datum_type(),
            "{}: zero point of type {dt:?}; expected uint8 or int8",
            what(scale_ix + 1)
        );
        let shaped = |t: &Tensor, name: &str| -> TractResult<Tensor> {
            let t = t.cast_to::<f32>()?.into_owned();
            if t.len() == 1 {
                let v = t.try_as_plain_ram()?.as_slice::<f32>()?[0];
                return tensor0(v).broadcast_into_rank(rank);
            }
            ensure!(
                axis < rank,
                "{}: per-axis {name} of {} values on a rank {rank} tensor",
                self.op_type,
                t.len()
            );
            let mut shape = tvec![1; rank];
            shape[axis] = t.len();
            t.into_shape(&shape)
        };
        Ok(QuantParams {
            scale: shaped(&scale, "scale")?,
            zero_point: shaped(&zero_point, "zero point")?,
            dt,
        })
    }

    /// `(cast(x) - zero_point) * scale`.
    fn dequantize(
        &self,
        model: &mut TypedModel,
        prefix: &str,
        x: OutletId,
        q: &QuantParams,
    ) -> TractResult<OutletId> {
        let zp = model.add_const(format!("{prefix}.zero_point"), q.zero_point.clone())?;
        let scale = model.add_const(format!("{prefix}.scale"), q.scale.clone())?;
        let x = model.wire_node(format!("{prefix}.cast"), cast(f32::datum_type()), &[x])?[0];
        let x =
            wire_with_rank_broadcast(format!("{prefix}.sub_zp"), model, math::sub(), &[x, zp])?[0];
        Ok(wire_with_rank_broadcast(
            format!("{prefix}.mul_scale"),
            model,
            math::mul(),
            &[x, scale],
        )?[0])
    }

    /// `saturate(round_half_to_even(x / scale) + zero_point)` in the zero point's type.
    fn quantize(
        &self,
        model: &mut TypedModel,
        prefix: &str,
        x: OutletId,
        q: &QuantParams,
    ) -> TractResult<OutletId> {
        let (lo, hi) = match q.dt {
            DatumType::U8 => (u8::MIN as f32, u8::MAX as f32),
            DatumType::I8 => (i8::MIN as f32, i8::MAX as f32),
            dt => bail!("{}: cannot quantize to {dt:?}", self.op_type),
        };
        let scale = model.add_const(format!("{prefix}.scale"), q.scale.clone())?;
        let zp = model.add_const(format!("{prefix}.zero_point"), q.zero_point.clone())?;
        let lo = model.add_const(format!("{prefix}.lo"), tensor0(lo))?;
        let hi = model.add_const(format!("{prefix}.hi"), tensor0(hi))?;
        let mut w =
            wire_with_rank_broadcast(format!("{prefix}.div"), model, math::div(), &[x, scale])?;
        w = model.wire_node(format!("{prefix}.round"), math::round_half_to_even(), &w)?;
        w = wire_with_rank_broadcast(format!("{prefix}.add_zp"), model, math::add(), &[w[0], zp])?;
        w = wire_with_rank_broadcast(format!("{prefix}.max"), model, math::max(), &[w[0], lo])?;
        w = wire_with_rank_broadcast(format!("{prefix}.min"), model, math::min(), &[w[0], hi])?;
        Ok(model.wire_node(format!("{prefix}.cast_out"), cast(q.dt), &w)?[0])
    }

    fn rank(model: &TypedModel, x: OutletId) -> TractResult<usize> {
        Ok(model.outlet_fact(x)?.rank())
    }

    /// The formal input index of the output's zero point.
    fn output_zero_point(&self) -> Option<usize> {
        match self.kind {
            Kind::Add | Kind::Mul => Some(7),
            Kind::Concat { .. } => Some(1),
            Kind::Gemm { .. } => Some(8),
            _ => Some(4),
        }
    }
}

impl Expansion for QLinear {
    fn name(&self) -> StaticName {
        self.op_type.clone().into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        let present = self.slots.iter().flatten().count();
        check_input_arity(inputs, present)?;
        let float_gemm = matches!(self.kind, Kind::Gemm { .. })
            && self.slots.get(7).copied().flatten().is_none();
        if float_gemm {
            s.equals(&outputs[0].datum_type, f32::datum_type())?;
        } else {
            match self
                .output_zero_point()
                .and_then(|i| self.slots.get(i).copied().flatten())
            {
                Some(zp) => s.equals(&outputs[0].datum_type, &inputs[zp].datum_type)?,
                None => s.equals(&outputs[0].datum_type, u8::datum_type())?,
            }
        }
        match &self.kind {
            Kind::Sigmoid | Kind::LeakyRelu(_) | Kind::Softmax { .. } => {
                s.equals(&inputs[0].shape, &outputs[0].shape)?;
            }
            Kind::Add | Kind::Mul => {
                if let Some(b) = self.slots.get(3).copied().flatten() {
                    s.given_2(&inputs[0].shape, &inputs[b].shape, move |s, a, b| {
                        let shape = tract_core::broadcast::multi_broadcast(&[a, b])?;
                        s.equals(&outputs[0].shape, shape)
                    })?;
                }
            }
            Kind::GlobalAveragePool { .. } | Kind::AveragePool { .. } | Kind::Concat { .. } => {
                let x = if matches!(self.kind, Kind::Concat { .. }) {
                    2
                } else {
                    0
                };
                if let Some(x) = self.slots.get(x).copied().flatten() {
                    s.equals(&inputs[x].rank, &outputs[0].rank)?;
                }
            }
            Kind::Gemm { .. } => s.equals(&outputs[0].rank, 2)?,
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = self.required(inputs, 0, "X")?;
        let wire = match &self.kind {
            Kind::Add | Kind::Mul => {
                let b = self.required(inputs, 3, "B")?;
                let (ra, rb) = (Self::rank(model, x)?, Self::rank(model, b)?);
                let qa = self.params(model, inputs, 1, ra, 0)?;
                let qb = self.params(model, inputs, 4, rb, 0)?;
                let qc = self.params(model, inputs, 6, ra.max(rb), 0)?;
                let a = self.dequantize(model, &format!("{prefix}.a"), x, &qa)?;
                let b = self.dequantize(model, &format!("{prefix}.b"), b, &qb)?;
                let op = if self.kind == Kind::Add {
                    math::add()
                } else {
                    math::mul()
                };
                let y = wire_with_rank_broadcast(format!("{prefix}.float"), model, op, &[a, b])?[0];
                self.quantize(model, prefix, y, &qc)?
            }
            Kind::Sigmoid | Kind::LeakyRelu(_) | Kind::Softmax { .. } => {
                let rank = Self::rank(model, x)?;
                let qx = self.params(model, inputs, 1, rank, 0)?;
                let qy = self.params(model, inputs, 3, rank, 0)?;
                let xf = self.dequantize(model, &format!("{prefix}.x"), x, &qx)?;
                let y = match &self.kind {
                    Kind::Sigmoid => model.wire_node(
                        format!("{prefix}.sigmoid"),
                        tract_core::ops::nn::sigmoid(),
                        &[xf],
                    )?[0],
                    Kind::LeakyRelu(alpha) => model.wire_node(
                        format!("{prefix}.leaky_relu"),
                        tract_core::ops::nn::leaky_relu(*alpha),
                        &[xf],
                    )?[0],
                    Kind::Softmax { axis, coerce_to_2d } => tract_hir::ops::nn::LayerSoftmax::new(
                        *axis,
                        *coerce_to_2d,
                    )
                    .wire(&format!("{prefix}.softmax"), model, &[xf])?[0],
                    _ => unreachable!("matched above"),
                };
                self.quantize(model, prefix, y, &qy)?
            }
            Kind::GlobalAveragePool { channels_last } => {
                let fact = model.outlet_fact(x)?.clone();
                let rank = fact.rank();
                ensure!(
                    rank >= 3,
                    "{}: input of rank {rank}; expected [N, C, spatial...]",
                    self.op_type
                );
                let qx = self.params(model, inputs, 1, rank, 0)?;
                let qy = self.params(model, inputs, 3, rank, 0)?;
                let xf = self.dequantize(model, &format!("{prefix}.x"), x, &qx)?;
                let axes: TVec<usize> = if *channels_last {
                    (1..rank - 1).collect()
                } else {
                    (2..rank).collect()
                };
                let count: TDim = axes.iter().map(|&a| fact.shape[a].clone()).product();
                let sum = model.wire_node(
                    format!("{prefix}.sum"),
                    tract_core::ops::nn::Reduce::new(axes, tract_core::ops::nn::Reducer::Sum),
                    &[xf],
                )?[0];
                let count = model.add_const(format!("{prefix}.count"), tensor0(count))?;
                let count = model.wire_node(
                    format!("{prefix}.count_f32"),
                    cast(f32::datum_type()),
                    &[count],
                )?[0];
                let mean = wire_with_rank_broadcast(
                    format!("{prefix}.mean"),
                    model,
                    math::div(),
                    &[sum, count],
                )?[0];
                self.quantize(model, prefix, mean, &qy)?
            }
            Kind::AveragePool {
                pool,
                count_include_pad,
            } => {
                let rank = Self::rank(model, x)?;
                ensure!(
                    rank == pool.kernel_shape.len() + 2,
                    "{}: input of rank {rank} for a {}-d kernel",
                    self.op_type,
                    pool.kernel_shape.len()
                );
                let qx = self.params(model, inputs, 1, rank, 0)?;
                let qy = self.params(model, inputs, 3, rank, 0)?;
                let xf = self.dequantize(model, &format!("{prefix}.x"), x, &qx)?;
                let y = tract_hir::ops::cnn::HirSumPool::new(
                    (**pool).clone(),
                    *count_include_pad,
                    true,
                )
                .wire(&format!("{prefix}.pool"), model, &[xf])?[0];
                self.quantize(model, prefix, y, &qy)?
            }
            Kind::Concat { axis } => {
                let first = self.required(inputs, 2, "X")?;
                let rank = Self::rank(model, first)?;
                let axis = if *axis < 0 {
                    *axis + rank as i64
                } else {
                    *axis
                };
                ensure!(
                    (0..rank as i64).contains(&axis),
                    "{}: axis {axis} out of range for rank {rank}",
                    self.op_type
                );
                let qy = self.params(model, inputs, 0, rank, 0)?;
                let mut parts = tvec![];
                for (k, ix) in (2..self.slots.len()).step_by(3).enumerate() {
                    let xi = self.required(inputs, ix, "X")?;
                    let qi = self.params(model, inputs, ix + 1, rank, 0)?;
                    parts.push(self.dequantize(model, &format!("{prefix}.x{k}"), xi, &qi)?);
                }
                let y = model.wire_node(
                    format!("{prefix}.concat"),
                    tract_core::ops::array::TypedConcat::new(axis as usize),
                    &parts,
                )?[0];
                self.quantize(model, prefix, y, &qy)?
            }
            Kind::Gemm {
                alpha,
                trans_a,
                trans_b,
            } => {
                let b = self.required(inputs, 3, "B")?;
                ensure!(
                    Self::rank(model, x)? == 2 && Self::rank(model, b)? == 2,
                    "{}: A and B must be matrices",
                    self.op_type
                );
                let qa = self.params(model, inputs, 1, 2, 0)?;
                let qb = self.params(model, inputs, 4, 2, if *trans_b { 0 } else { 1 })?;
                // The integer products, exact in f32 for the sizes quantized models use.
                let ones = QuantParams {
                    scale: tensor0(1f32).broadcast_into_rank(2)?,
                    ..qa
                };
                let a = self.dequantize(model, &format!("{prefix}.a"), x, &ones)?;
                let ones_b = QuantParams {
                    scale: tensor0(1f32).broadcast_into_rank(2)?,
                    ..qb
                };
                let bf = self.dequantize(model, &format!("{prefix}.b"), b, &ones_b)?;
                let expr = format!(
                    "{},{}->mn",
                    if *trans_a { "km" } else { "mk" },
                    if *trans_b { "nk" } else { "kn" }
                );
                let mut acc = model.wire_node(
                    format!("{prefix}.matmul"),
                    tract_core::ops::einsum::EinSum::new(expr.parse()?, f32::datum_type()),
                    &[a, bf],
                )?[0];
                if let Some(c) = self.input(inputs, 6) {
                    let c =
                        model.wire_node(format!("{prefix}.c"), cast(f32::datum_type()), &[c])?[0];
                    acc = wire_with_rank_broadcast(
                        format!("{prefix}.add_c"),
                        model,
                        math::add(),
                        &[acc, c],
                    )?[0];
                }
                let qa_scale = self.params(model, inputs, 1, 2, 0)?.scale;
                let qb_scale = self.params(model, inputs, 4, 2, 1)?.scale;
                let scale = (qb_scale.into_tensor().into_plain_array::<f32>()?
                    * qa_scale.into_tensor().into_plain_array::<f32>()?
                    * *alpha)
                    .into_tensor();
                let scale = model.add_const(format!("{prefix}.out_scale"), scale)?;
                let y = wire_with_rank_broadcast(
                    format!("{prefix}.scaled"),
                    model,
                    math::mul(),
                    &[acc, scale],
                )?[0];
                if self.input(inputs, 7).is_some() {
                    let qy = self.params(model, inputs, 7, 2, 0)?;
                    self.quantize(model, prefix, y, &qy)?
                } else {
                    y
                }
            }
        };
        Ok(tvec!(wire))
    }
}
