//! Workarounds for tract behaviour that gives wrong results on real models.
//!
//! tract-core 0.23.9 folds a `DequantizeLinear → … → QuantizeLinear` chain into a 256-entry
//! lookup table whenever every op between them *looks* element-wise by its axes mapping.
//! Softmax declares a natural (one-to-one) mapping, so `DequantizeLinear → Softmax →
//! QuantizeLinear` (what onnxruntime's QDQ quantizer emits) is tabulated as if softmax were
//! element-wise, and every probability comes out as 1. Measured on the corpus models
//! `*_qdq_s8s8_*`. Before decluttering a quantized graph, perch swaps each float Softmax
//! for [`GuardedSoftmax`], which computes the same thing but declares no axis mapping, so
//! the fold stops there.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Softmax over `axes` for f32 tensors, opaque to tract's quantization folding.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct GuardedSoftmax {
    axes: TVec<usize>,
}

impl Op for GuardedSoftmax {
    fn name(&self) -> StaticName {
        "PerchGuardedSoftmax".into()
    }

    op_as_typed_op!();
}

impl EvalOp for GuardedSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut x = input.into_tensor().into_plain_array::<f32>()?;
        for &axis in &self.axes {
            ensure!(
                axis < x.ndim(),
                "softmax axis {axis} out of range for rank {}",
                x.ndim()
            );
            for mut lane in x.lanes_mut(tract_ndarray::Axis(axis)) {
                let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                lane.iter_mut().for_each(|v| {
                    *v = (*v - max).exp();
                    sum += *v;
                });
                lane.iter_mut().for_each(|v| *v /= sum);
            }
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for GuardedSoftmax {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].datum_type == f32::datum_type(),
            "GuardedSoftmax takes f32"
        );
        Ok(tvec!(inputs[0].without_value()))
    }
}

/// Replaces float softmax nodes of a graph that holds quantize/dequantize ops.
///
/// # Errors
/// If tract refuses the patch.
pub fn guard_quantized_softmax(model: &mut TypedModel) -> TractResult<()> {
    let quantized = model
        .nodes()
        .iter()
        .any(|n| n.op.name().contains("Dequantize") || n.op.name().contains("Quantize"));
    if !quantized {
        return Ok(());
    }
    let targets: Vec<(usize, TVec<usize>)> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            let sm = n.op_as::<Softmax>()?;
            (sm.kind == SoftmaxKind::Softmax
                && sm.quant_output_dt.is_none()
                && n.outputs[0].fact.datum_type == f32::datum_type())
            .then(|| (n.id, sm.axes.clone()))
        })
        .collect();
    for (id, axes) in targets {
        let node = &model.nodes()[id];
        let patch =
            TypedModelPatch::replace_single_op(model, node, &node.inputs, GuardedSoftmax { axes })?;
        patch.apply(model)?;
    }
    Ok(())
}
