//! `perch`: the device runtime.
fn main() {}
