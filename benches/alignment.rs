//! How the start of a buffer within a cache line moves the depthwise f32 kernel: each
//! layer shape run with its input and output at 0, 16, 32 and 48 bytes past a 64-byte
//! line; prints the best of 2,000 × 10 runs and cycles per pixel and 8-channel vector at an
//! assumed 3.2 GHz. The engine's arenas start on a line (src/engine/buffer.rs).
//!
//! `cargo bench --bench alignment`

use perch::engine::kernels::{Activation, ConvF32, ConvGeometry};
use std::hint::black_box;
use std::time::Instant;

/// A zeroed slice of `n` values starting `bytes` past a 64-byte line, inside `buf`.
fn at_offset(buf: &mut Vec<f32>, n: usize, bytes: usize) -> &mut [f32] {
    *buf = vec![0.0; n + 32];
    let misalign = (buf.as_ptr() as usize % 64) / 4;
    let start = (16 - misalign) % 16 + bytes / 4;
    &mut buf[start..start + n]
}

fn main() {
    // (input h, w, c; padding): keyword spotting's and MobileNet's depthwise 3×3 layers.
    let shapes: [([usize; 3], [usize; 4]); 5] = [
        ([25, 5, 64], [1; 4]),
        ([48, 48, 8], [1; 4]),
        ([24, 24, 32], [1; 4]),
        ([6, 6, 128], [1; 4]),
        ([24, 24, 32], [0; 4]),
    ];
    for (input, pad) in shapes {
        let c = input[2];
        let g = ConvGeometry::new(input, c, [3, 3], [1, 1], pad, [1, 1], c).expect("geometry");
        let w: Vec<f32> = (0..g.weight_len()).map(|k| (k % 7) as f32 * 0.1).collect();
        let conv = ConvF32::new(g, &w, &vec![0.1; c], Activation::Relu).expect("conv");
        let mut sb = Vec::new();
        let scratch = at_offset(&mut sb, conv.scratch_len(), 0);
        let vectors = (g.out_h * g.out_w * c.div_ceil(8)) as f64;
        let mut line = format!("{input:?} pad {pad:?}:");
        for bytes in [0, 16, 32, 48] {
            let (mut xb, mut yb) = (Vec::new(), Vec::new());
            let x = at_offset(&mut xb, g.input_len(), bytes);
            for (k, v) in x.iter_mut().enumerate() {
                *v = (k % 13) as f32 * 0.01;
            }
            let y = at_offset(&mut yb, g.output_len(), bytes);
            let mut best = f64::MAX;
            for _ in 0..2000 {
                let t = Instant::now();
                for _ in 0..10 {
                    conv.run(black_box(&*x), black_box(&mut *y), scratch);
                }
                best = best.min(t.elapsed().as_secs_f64() / 10.0);
            }
            line += &format!(
                "  +{bytes}: {:.2} µs ({:.1} cycles)",
                best * 1e6,
                best * 3.2e9 / vectors
            );
        }
        println!("{line}");
    }
}
