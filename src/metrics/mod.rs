//! On-device metrics: collected in fixed memory, reported per window.
//!
//! - [`LatencyHistogram`]: log-linear buckets, percentiles within 3.125 %.
//! - [`FeatureDrift`] / [`RunningMoments`] / [`psi`]: per-feature moments and the population
//!   stability index against the artifact's [`DriftBaseline`](crate::graph::sections::DriftBaseline).
//! - [`SystemFigures`]: resident memory and CPU temperature, where the OS tells.
//!
//! Capacities are constants ([`BUCKETS`]) or fixed when a value is created.

mod drift;
mod histogram;
mod report;
mod system;

pub use drift::{FeatureDrift, PSI_EPSILON, RunningMoments, psi, psi_milli};
pub use histogram::{BUCKETS, LatencyHistogram, MAX_TRACKED_US, SUB_BUCKETS};
pub use report::{Percentiles, Report};
pub use system::{SystemFigures, cpu_temp_milli_c, rss_kib};
