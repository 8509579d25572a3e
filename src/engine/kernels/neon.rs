//! aarch64 kernels (NEON is part of the base ISA there).

use std::arch::aarch64::*;

/// NEON [`super::dense`]: four output rows at a time share each load of `x`.
pub(super) fn dense(x: &[f32], w: &[f32], b: &[f32], inputs: usize, outputs: usize, y: &mut [f32]) {
    assert!(w.len() >= inputs * outputs && b.len() >= outputs);
    let rows = x.len() / inputs.max(1);
    assert!(y.len() >= rows * outputs);
    let main = inputs / 4 * 4;
    for r in 0..rows {
        let xr = &x[r * inputs..(r + 1) * inputs];
        let yr = &mut y[r * outputs..(r + 1) * outputs];
        let mut o = 0;
        while o + 4 <= outputs {
            let ws = [
                &w[o * inputs..(o + 1) * inputs],
                &w[(o + 1) * inputs..(o + 2) * inputs],
                &w[(o + 2) * inputs..(o + 3) * inputs],
                &w[(o + 3) * inputs..(o + 4) * inputs],
            ];
            // SAFETY: NEON is mandatory on aarch64; every pointer below is offset by
            // i + 4 <= main <= inputs into slices of length `inputs`.
            let mut s = unsafe {
                let (mut a0, mut a1, mut a2, mut a3) = (
                    vdupq_n_f32(0.0),
                    vdupq_n_f32(0.0),
                    vdupq_n_f32(0.0),
                    vdupq_n_f32(0.0),
                );
                let mut i = 0;
                while i < main {
                    let xv = vld1q_f32(xr.as_ptr().add(i));
                    a0 = vfmaq_f32(a0, vld1q_f32(ws[0].as_ptr().add(i)), xv);
                    a1 = vfmaq_f32(a1, vld1q_f32(ws[1].as_ptr().add(i)), xv);
                    a2 = vfmaq_f32(a2, vld1q_f32(ws[2].as_ptr().add(i)), xv);
                    a3 = vfmaq_f32(a3, vld1q_f32(ws[3].as_ptr().add(i)), xv);
                    i += 4;
                }
                [
                    vaddvq_f32(a0),
                    vaddvq_f32(a1),
                    vaddvq_f32(a2),
                    vaddvq_f32(a3),
                ]
            };
            for i in main..inputs {
                for k in 0..4 {
                    s[k] += ws[k][i] * xr[i];
                }
            }
            for k in 0..4 {
                yr[o + k] = s[k] + b[o + k];
            }
            o += 4;
        }
        while o < outputs {
            yr[o] = b[o] + super::generic::dot(xr, &w[o * inputs..(o + 1) * inputs]);
            o += 1;
        }
    }
}
