//! The HTTP request reader of the agent's local API and the dashboard, with any bytes:
//! requests, a refusal with a status, or the end of the stream, never a panic, and no body
//! over the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::http::{Limits, read_all};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_head_bytes: 1024,
        max_body_bytes: 4096,
        ..Limits::default()
    };
    let (_, refused) = read_all(data, limits);
    if let Some(status) = refused {
        assert!((400..500).contains(&status), "refused with {status}");
    }
});
