//! `perch-host`: the host companion.
fn main() {}
