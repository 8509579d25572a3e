//! ONNX ops tract-onnx lacks, by family, one registration function each.
//!
//! - [`ml`]: the `ai.onnx.ml` ops scikit-learn exporters emit (Scaler, ZipMap, SVMClassifier,
//!   TreeEnsembleRegressor, TreeEnsembleClassifier).
//! - [`qlinear`]: onnxruntime's `com.microsoft` quantized ops (QGemm, QLinearAdd, ...), as
//!   written by its QOperator quantizer.
//!
//! tract's registry is keyed by op type alone, so a name registered here replaces tract's
//! builder for that name whatever the node's domain.

pub(crate) mod ml;
pub(crate) mod qlinear;

/// Registers every perch-provided op with tract's ONNX op registry.
pub(crate) fn register_all_ops(reg: &mut tract_onnx::model::OnnxOpRegister) {
    ml::register_all_ops(reg);
    qlinear::register_all_ops(reg);
}
