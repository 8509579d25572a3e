//! Translates ONNX graphs built from the ops the native IR has into a native
//! [`Model`](crate::graph::Model).

use crate::graph::Model;

/// Why an ONNX graph cannot become a native model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The bytes are not an ONNX model.
    #[error("reading ONNX: {0:#}")]
    Parse(anyhow::Error),
    /// A node has no native equivalent.
    #[error("node {node:?} ({op}): {reason}")]
    Unsupported {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// Why.
        reason: String,
    },
}

/// Converts the ONNX model in `bytes`.
///
/// # Errors
/// [`ConvertError::Unsupported`] naming the first node that has no native translation.
pub fn onnx_bytes_to_native(_bytes: &[u8]) -> Result<Model, ConvertError> {
    Err(ConvertError::Unsupported {
        node: String::new(),
        op: String::new(),
        reason: "conversion not implemented yet".into(),
    })
}
