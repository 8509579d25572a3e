//! Model optimization on the host: post-training int8 quantization ([`quantize`]).

pub mod quantize;

pub use quantize::{Calibration, QuantizeError, QuantizeMode, QuantizeOptions, quantize};
