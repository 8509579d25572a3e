//! onnxruntime's `com.microsoft` quantized ops (QGemm, QLinearAdd, ...).

use tract_onnx::model::OnnxOpRegister;

/// Registers the `com.microsoft` quantized ops of this module.
pub(crate) fn register_all_ops(_reg: &mut OnnxOpRegister) {}
