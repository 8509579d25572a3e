//! The ONNX load path, with any bytes (libFuzzer's mutations of the real models in
//! tests/data/corpus/models, which `fuzz/run.sh` gives as the seed corpus): a model or an
//! error, never a panic that escapes perch; a model that loads runs one sample.
//!
//! libfuzzer-sys installs a panic hook that aborts even on panics perch catches (tract
//! panics on some damaged files; perch turns those into errors at the load/run boundary),
//! so this target puts back a hook that only prints: a panic that reaches the target still
//! aborts the run, through libfuzzer-sys' own catch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::runtime::{EngineChoice, Model};

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    },
    |data: &[u8]| {
        let Ok(mut model) = Model::from_onnx_bytes(data, EngineChoice::Auto) else {
            return;
        };
        let n = model.info().inputs.first().map_or(0, |s| s.sample_len());
        if (1..=1 << 16).contains(&n) && model.info().inputs.len() == 1 {
            let x = vec![0.5f32; n];
            let _ = model.run(&x, 1);
        }
    }
);
