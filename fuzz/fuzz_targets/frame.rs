//! The sync protocol's frame decoder and the reader that buffers a stream of frames, with
//! any bytes: messages, "need more", or an error, never a panic; a decoded message survives
//! a round trip through its own frame. Text inputs also go to the agent's configuration
//! parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::sync::{FrameReader, Received, frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((m, used))) = frame::decode(rest, 1 << 16) {
        let mut again = Vec::new();
        frame::encode(&m, &mut again, 1 << 16).expect("a decoded message encodes");
        let back = frame::decode(&again, 1 << 16).expect("its own frame decodes");
        assert_eq!(back, Some((m, again.len())), "a message did not survive its own frame");
        rest = &rest[used..];
    }
    let mut reader = FrameReader::with_max_payload(std::io::Cursor::new(data.to_vec()), 1 << 16);
    for _ in 0..1024 {
        match reader.read() {
            Ok(Received::Message(_)) => {}
            Ok(Received::Idle) | Err(_) => break,
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = perch::agent::Config::parse(text, "fuzz", std::path::Path::new("."));
    }
});
