//! Model optimization on the host: post-training int8 quantization ([`quantize`]).

mod quantize;

pub use quantize::{Calibration, QuantizeError, QuantizeMode, QuantizeOptions, quantize};
