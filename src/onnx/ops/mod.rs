//! ONNX ops tract-onnx lacks, by family, one registration function each.

/// Registers every perch-provided op with tract's ONNX op registry.
pub(crate) fn register_all_ops(_reg: &mut tract_onnx::model::OnnxOpRegister) {}
