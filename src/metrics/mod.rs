//! On-device metrics: collected in fixed memory, reported per window.

mod report;

pub use report::{Percentiles, Report};
