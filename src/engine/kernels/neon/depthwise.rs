//! NEON depthwise convolution, f32 and u8 × i8: each output pixel's channels in blocks of
//! sixteen held in registers across the kernel's taps (the portable kernels add each tap
//! into memory). Border taps read the input's zero point (int8) or are skipped (f32), as
//! in the portable kernels; the int8 sums go through the portable epilogue, so its
//! outputs are the portable ones bit for bit.

// The register blocks are indexed by vector in the same loops as the arrays beside them.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use super::super::Activation;
use super::super::conv::{ConvGeometry, depthwise_f32_sums};
use super::super::gemm::QDst;
use super::super::qconv::{QEpilogue, depthwise_u8_sums};

/// Channels per register block.
const BLOCK: usize = 16;

/// [`crate::engine::kernels::conv::depthwise_f32_portable`] on NEON (weights `[tap][c_pad]`,
/// bias at least `c` long).
///
/// # Panics
/// If a buffer is shorter than the geometry says.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn depthwise_f32(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    let c = g.in_c;
    let taps = g.k_h * g.k_w;
    assert!(c_pad >= c && w.len() >= taps * c_pad && bias.len() >= c);
    assert!(x.len() >= g.in_h * g.in_w * c && y.len() >= g.out_h * g.out_w * c);
    let full = c / BLOCK * BLOCK;
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let base = (oy * g.out_w + ox) * c;
            let mut c0 = 0;
            while c0 < full {
                // SAFETY: NEON is part of aarch64; c0 + 16 <= c, so every load and the store
                // stay inside the pixel's c values of x and y, the tap's c_pad weights and
                // the bias (lengths asserted above; `source` is a pixel of the input).
                unsafe {
                    let mut acc: [float32x4_t; 4] =
                        std::array::from_fn(|v| vld1q_f32(bias.as_ptr().add(c0 + 4 * v)));
                    for ky in 0..g.k_h {
                        for kx in 0..g.k_w {
                            let Some(s) = g.source(oy, ox, ky, kx) else {
                                continue;
                            };
                            let xp = x.as_ptr().add(s * c + c0);
                            let wp = w.as_ptr().add((ky * g.k_w + kx) * c_pad + c0);
                            for v in 0..4 {
                                acc[v] = vfmaq_f32(
                                    acc[v],
                                    vld1q_f32(xp.add(4 * v)),
                                    vld1q_f32(wp.add(4 * v)),
                                );
                            }
                        }
                    }
                    let yp = y.as_mut_ptr().add(base + c0);
                    for v in 0..4 {
                        vst1q_f32(yp.add(4 * v), acc[v]);
                    }
                }
                c0 += BLOCK;
            }
            // The last channels (fewer than a block), as the portable kernel does them.
            if c0 < c {
                let out = &mut y[base + c0..base + c];
                out.copy_from_slice(&bias[c0..c]);
                depthwise_f32_sums(g, x, w, c_pad, [oy, ox], c0, out);
            }
            if act != Activation::Identity {
                y[base..base + c]
                    .iter_mut()
                    .for_each(|v| *v = act.apply(*v));
            }
        }
    }
}

/// [`crate::engine::kernels::qconv::depthwise_u8_portable`] on NEON: u8 inputs and i8
/// weights widened to i16, `smlal` into i32 (exact).
///
/// # Panics
/// If a buffer is shorter than the geometry says, or the epilogue has fewer than `in_c`
/// channels.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn depthwise_u8(
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &QEpilogue,
    mut y: QDst<'_>,
) {
    let c = g.in_c;
    let taps = g.k_h * g.k_w;
    assert!(c_pad >= c && w.len() >= taps * c_pad && epi.channels() >= c);
    assert!(x.len() >= g.in_h * g.in_w * c);
    let y_len = y.len();
    assert!(y_len >= g.out_h * g.out_w * c);
    let zp_row = [zp; BLOCK];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let base = (oy * g.out_w + ox) * c;
            let mut c0 = 0;
            while c0 < c {
                let n = BLOCK.min(c - c0);
                let mut acc = [0i32; BLOCK];
                if n == BLOCK {
                    // SAFETY: NEON is part of aarch64; c0 + 16 <= c keeps the loads inside
                    // the pixel's c inputs and the tap's c_pad weights (lengths asserted
                    // above; `source` is a pixel of the input); `zp_row` holds 16 bytes.
                    unsafe {
                        let mut a: [int32x4_t; 4] = [vdupq_n_s32(0); 4];
                        for ky in 0..g.k_h {
                            for kx in 0..g.k_w {
                                let xp = match g.source(oy, ox, ky, kx) {
                                    Some(s) => x.as_ptr().add(s * c + c0),
                                    None => zp_row.as_ptr(),
                                };
                                let xv = vld1q_u8(xp);
                                let wv = vld1q_s8(w.as_ptr().add((ky * g.k_w + kx) * c_pad + c0));
                                let xl = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(xv)));
                                let xh = vreinterpretq_s16_u16(vmovl_high_u8(xv));
                                let wl = vmovl_s8(vget_low_s8(wv));
                                let wh = vmovl_high_s8(wv);
                                a[0] = vmlal_s16(a[0], vget_low_s16(xl), vget_low_s16(wl));
                                a[1] = vmlal_high_s16(a[1], xl, wl);
                                a[2] = vmlal_s16(a[2], vget_low_s16(xh), vget_low_s16(wh));
                                a[3] = vmlal_high_s16(a[3], xh, wh);
                            }
                        }
                        for v in 0..4 {
                            vst1q_s32(acc.as_mut_ptr().add(4 * v), a[v]);
                        }
                    }
                } else {
                    depthwise_u8_sums(g, x, &zp_row, w, c_pad, [oy, ox], c0, &mut acc[..n]);
                }
                let at = base + c0;
                match &mut y {
                    QDst::U8(y) => epi.u8_row(c0, &acc[..n], &mut y[at..at + n]),
                    QDst::F32(y) => epi.f32_row(c0, &acc[..n], &mut y[at..at + n]),
                }
                c0 += n;
            }
        }
    }
}
