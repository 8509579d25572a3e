//! The sync protocol's frame decoders and the reader that buffers a stream of frames, with
//! any bytes: messages, "need more", or an error, never a panic; a decoded message survives
//! a round trip through its own frame, plain or sealed. The same bytes go to the sealed
//! decoder (a key and counter the fuzzer cannot know, so frames fail to open: they must do
//! so cleanly) and to the manifest check. Text inputs also go to the agent's configuration
//! parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::artifact::Manifest;
use perch::sync::seal::FrameKey;
use perch::sync::{FrameReader, Received, frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((m, used))) = frame::decode(rest, 1 << 16) {
        let mut again = Vec::new();
        frame::encode(&m, &mut again, 1 << 16).expect("a decoded message encodes");
        let back = frame::decode(&again, 1 << 16).expect("its own frame decodes");
        assert_eq!(back, Some((m.clone(), again.len())), "a message did not survive its own frame");
        let (mut tx, mut rx) = (FrameKey::new(&[7; 32]), FrameKey::new(&[7; 32]));
        let mut sealed = Vec::new();
        frame::encode_sealed(&m, &mut sealed, 1 << 16, &mut tx).expect("it seals");
        let opened = frame::decode_sealed(&mut sealed, 1 << 16, &mut rx).expect("it opens");
        assert_eq!(opened.map(|(o, _)| o), Some(m), "a message did not survive sealing");
        rest = &rest[used..];
    }
    let mut copy = data.to_vec();
    let _ = frame::decode_sealed(&mut copy, 1 << 16, &mut FrameKey::new(&[7; 32]));
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    let _ = Manifest::verify(data, &key);
    let mut reader = FrameReader::with_max_payload(std::io::Cursor::new(data.to_vec()), 1 << 16);
    for _ in 0..1024 {
        match reader.read() {
            // Idle: the bytes read so far do not finish a frame; the next read ends it.
            Ok(Received::Message(_) | Received::Idle) => {}
            Err(_) => break,
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = perch::agent::Config::parse(text, "fuzz", std::path::Path::new("."));
    }
});
