//! What the areas' tests share: the binaries under test, the corpus and reference outputs
//! ([`corpus`]), and, in host builds, a fleet on loopback ([`fleet`]).

// Each feature set compiles only some of the areas, so some helpers go unused in it.
#![allow(dead_code)]

mod corpus;
#[cfg(feature = "host")]
mod fleet;

pub use corpus::*;
#[cfg(feature = "host")]
pub use fleet::*;

/// The device binary `cargo test` built beside this test binary.
pub fn perch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_perch")
}

/// The host binary `cargo test` built beside this test binary.
pub fn host_bin() -> &'static str {
    env!("CARGO_BIN_EXE_perch-host")
}
