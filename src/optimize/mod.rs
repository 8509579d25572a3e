//! Making trained models smaller and faster for the device: int8 quantization (static with
//! calibration, or dynamic) and pruning (magnitude and structured, one-shot or gradual with
//! fine-tuning).

pub mod finetune;
pub mod prune;
pub mod quantize;

pub use quantize::{Calibration, QuantizeError, QuantizeMode, QuantizeOptions, quantize};
