//! Depthwise int8 convolution with AVX2 (every x86 int8 family has it): per output pixel
//! and block of 16 channels, each tap's u8 inputs and i8 weights widened to i16 and
//! multiplied exactly (`|255 · 128|` fits an i16), the products widened to i32 and summed;
//! then the 256-bit epilogues of the GEMM kernels, 8 channels at a time. Same bits as
//! [`crate::engine::kernels::qconv::depthwise_u8_portable`].

use super::qgemm::{store_f32_256, store_u8_256};
use crate::engine::kernels::conv::ConvGeometry;
use crate::engine::kernels::gemm::QDst;
use crate::engine::kernels::qconv::QEpilogue;
use std::arch::x86_64::*;

/// Taps the kernel plans on the stack; larger kernels take the portable path.
pub(in crate::engine::kernels) const MAX_TAPS: usize = 64;

/// Whether [`depthwise_u8_avx2`] runs this layer: AVX2 present, at most [`MAX_TAPS`]
/// taps, and the epilogue's lane constants laid out 8 wide over all channels.
pub(in crate::engine::kernels) fn supports(g: &ConvGeometry, epi: &QEpilogue) -> bool {
    super::has_avx2_fma()
        && g.k_h * g.k_w <= MAX_TAPS
        && epi
            .lanes
            .as_ref()
            .is_some_and(|l| l.width == 8 && l.group >= g.out_c)
}

/// Depthwise convolution of one NHWC sample; weights `[tap][c_pad]`.
///
/// # Panics
/// If [`supports`] is false, or a length does not match the geometry.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn depthwise_u8_avx2(
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &QEpilogue,
    y: QDst<'_>,
) {
    assert!(
        supports(g, epi),
        "qconv2d: the AVX2 depthwise kernel cannot run this layer"
    );
    let c = g.in_c;
    assert!(c_pad >= c.div_ceil(16) * 16 && w.len() >= g.k_h * g.k_w * c_pad);
    assert_eq!(x.len(), g.in_h * g.in_w * c, "qconv2d input length");
    let out_len = g.out_h * g.out_w * c;
    match &y {
        QDst::U8(y) => assert_eq!(y.len(), out_len, "qconv2d output length"),
        QDst::F32(y) => assert_eq!(y.len(), out_len, "qconv2d output length"),
    }
    // SAFETY: AVX2 checked by `supports`; the lengths just checked bound every access
    // (see the kernel).
    unsafe { dw_avx2(g, x, zp, w, c_pad, epi, y) }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx2(
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &QEpilogue,
    mut y: QDst<'_>,
) {
    let Some(l) = epi.lanes.as_ref() else {
        return;
    };
    let c = g.in_c;
    let taps = g.k_h * g.k_w;
    let zp_row = [zp; 16];
    let mut src = [None::<usize>; MAX_TAPS];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for ky in 0..g.k_h {
                for kx in 0..g.k_w {
                    src[ky * g.k_w + kx] = g.source(oy, ox, ky, kx);
                }
            }
            let at = (oy * g.out_w + ox) * c;
            let mut c0 = 0;
            while c0 < c {
                let n = 16.min(c - c0);
                let mut tail = [zp; 16];
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for (tap, s) in src[..taps].iter().enumerate() {
                    // Past the last channel a block reads the next pixel's codes (or the
                    // zero point at the end of the map): those lanes are never stored.
                    let xp: *const u8 = match s {
                        Some(s) if s * c + c0 + 16 <= x.len() => x[s * c + c0..][..16].as_ptr(),
                        Some(s) => {
                            tail[..n].copy_from_slice(&x[s * c + c0..][..n]);
                            tail.as_ptr()
                        }
                        None => zp_row.as_ptr(),
                    };
                    let wp = w[tap * c_pad + c0..][..16].as_ptr();
                    // SAFETY: both pointers address 16 readable bytes (the slices above).
                    unsafe {
                        let xv = _mm256_cvtepu8_epi16(_mm_loadu_si128(xp.cast()));
                        let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.cast()));
                        let p = _mm256_mullo_epi16(xv, wv);
                        lo = _mm256_add_epi32(lo, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)));
                        hi = _mm256_add_epi32(
                            hi,
                            _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(p)),
                        );
                    }
                }
                let bias = l.bias.as_ptr();
                for (half, v) in [(0, lo), (8, hi)] {
                    if half >= n {
                        break;
                    }
                    let (cc, nn) = (c0 + half, (n - half).min(8));
                    // SAFETY: the lane arrays run 128 slots past the last channel (one
                    // group of all channels, 8 wide, so channel cc is slot cc); at most nn
                    // outputs are written from position at + cc, inside y.
                    unsafe {
                        match &mut y {
                            QDst::U8(y) => {
                                store_u8_256(v, l, bias, cc, y[at + cc..][..nn].as_mut_ptr(), nn)
                            }
                            QDst::F32(y) => {
                                store_f32_256(v, l, bias, cc, y[at + cc..][..nn].as_mut_ptr(), nn)
                            }
                        }
                    }
                }
                c0 += n;
            }
        }
    }
}
