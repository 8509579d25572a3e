//! The CSV, JSON and .npy input readers never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::io::{InputFormat, parse_input};

fuzz_target!(|data: &[u8]| {
    for format in [InputFormat::Csv, InputFormat::Json, InputFormat::Npy] {
        let _ = parse_input(data, format, "fuzz");
    }
});
