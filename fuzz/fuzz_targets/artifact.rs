//! Any bytes given to the artifact decoder, and any payload behind a valid header and
//! digest, must give a model or an error, never a panic; a decoded model must plan and run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let _ = perch::artifact::decode(data);
    // Wrap the bytes as a payload so the postcard decoder and graph validation see them.
    let mut file = perch::artifact::MAGIC.to_vec();
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&0u16.to_le_bytes());
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    file.extend_from_slice(data);
    file.extend_from_slice(&Sha256::digest(data));
    file.extend_from_slice(&[0; 64]);
    if let Ok(art) = perch::artifact::decode(&file)
        && let Ok(mut engine) = perch::engine::Engine::new(&art.model.graph, 1)
    {
        let n: usize = art.model.graph.inputs.iter().map(|s| s.sample_len()).sum();
        if n <= 1 << 16 && art.model.graph.inputs.len() == 1 {
            let x = vec![0.5f32; n];
            let _ = engine.run(&[&x], 1);
        }
    }
});
