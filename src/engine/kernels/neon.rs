//! aarch64 kernels (NEON is part of the base ISA there).
//!
//! - `depthwise`: depthwise convolution, f32 and u8 × i8.
//! - `gemm`: the f32 GEMM of convolution and dense layers.
//! - `qgemm`: the u8 × i8 GEMM, with `smull`/`sadalp` or, where the CPU has the dot-product
//!   extension, `sdot`.

pub(super) mod depthwise;
pub(super) mod gemm;
pub(super) mod qgemm;

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

/// NEON [`super::gemv_u8i8`]: u8 and i8 widened to i16, products widened and accumulated
/// into i32 by `smlal` (exact), four output rows per load of `x`.
pub(super) fn gemv_u8i8(x: &[u8], w: &[i8], acc: &mut [i32]) {
    let k = x.len();
    assert!(w.len() >= k * acc.len());
    let main = k / 16 * 16;
    let tail = |row: &[i8]| -> i32 {
        x[main..]
            .iter()
            .zip(&row[main..])
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum()
    };
    for (a, row) in acc.iter_mut().zip(w.chunks_exact(k.max(1))) {
        // SAFETY: NEON is mandatory on aarch64; i + 16 <= main <= k keeps every 16-byte
        // load inside `x` and `row` (both at least k long).
        let s = unsafe {
            let mut s0 = vdupq_n_s32(0);
            let mut s1 = vdupq_n_s32(0);
            let mut i = 0;
            while i < main {
                let xv = vld1q_u8(x.as_ptr().add(i));
                let wv = vld1q_s8(row.as_ptr().add(i));
                let xl = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(xv)));
                let xh = vreinterpretq_s16_u16(vmovl_high_u8(xv));
                let wl = vmovl_s8(vget_low_s8(wv));
                let wh = vmovl_high_s8(wv);
                s0 = vmlal_s16(s0, vget_low_s16(xl), vget_low_s16(wl));
                s1 = vmlal_high_s16(s1, xl, wl);
                s0 = vmlal_s16(s0, vget_low_s16(xh), vget_low_s16(wh));
                s1 = vmlal_high_s16(s1, xh, wh);
                i += 16;
            }
            vaddvq_s32(vaddq_s32(s0, s1))
        };
        *a = s + tail(row);
    }
}
