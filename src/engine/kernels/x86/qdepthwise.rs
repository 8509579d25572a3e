//! Depthwise int8 convolution with AVX2 (every x86 int8 family has it): per block of 16
//! channels and output pixel, the taps' `x - zp` and weights as i16, pairs of taps through
//! `vpmaddwd` (exact), then the 256-bit epilogues of the GEMM kernels, 8 channels at a
//! time. Same bits as [`crate::engine::kernels::qconv::depthwise_u8_portable`].

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
    let pairs = taps.div_ceil(2);
    let zp16 = _mm256_set1_epi16(zp as i16);
    let bias = l.bias.as_ptr();
    // The sum over every tap of `x · w`, the padding reading the zero point, is
    // `zp · Σw + Σ over the taps inside the input of (x - zp) · w`: padding taps add
    // nothing, and `|x - zp| ≤ 255` times `|w| ≤ 128` fits an i16. Taps go in pairs through
    // `vpmaddwd` (two exact products summed into an i32), 16 channels a block, the block's
    // weights held for all its pixels. `vpunpck*wd` interleave within 128-bit lanes, so
    // the low sums hold channels 0-3 and 8-11 and the high ones 4-7 and 12-15 until the
    // final permutes.
    // Where each tap reads, relative to the kernel's top-left input pixel.
    let mut offs = [0usize; MAX_TAPS];
    for (tap, o) in offs[..taps].iter_mut().enumerate() {
        let (ky, kx) = (tap / g.k_w, tap % g.k_w);
        *o = (ky * g.dilation[0] * g.in_w + kx * g.dilation[1]) * c;
    }
    let (span_h, span_w) = ((g.k_h - 1) * g.dilation[0], (g.k_w - 1) * g.dilation[1]);
    let mut wl = [_mm256_setzero_si256(); MAX_TAPS / 2];
    let mut wh = [_mm256_setzero_si256(); MAX_TAPS / 2];
    let mut c0 = 0;
    while c0 < c {
        let n = 16.min(c - c0);
        let (mut zl, mut zh) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for k in 0..pairs {
            // SAFETY: AVX2 (this function's feature); `w` holds `taps · c_pad` weights.
            let (a, b) = unsafe {
                (
                    tap_w(w, taps, c_pad, c0, 2 * k),
                    tap_w(w, taps, c_pad, c0, 2 * k + 1),
                )
            };
            wl[k] = _mm256_unpacklo_epi16(a, b);
            wh[k] = _mm256_unpackhi_epi16(a, b);
            zl = _mm256_add_epi32(zl, _mm256_madd_epi16(zp16, wl[k]));
            zh = _mm256_add_epi32(zh, _mm256_madd_epi16(zp16, wh[k]));
        }
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                // Inside the input for every tap: where the top-left tap reads.
                let iy0 = (oy * g.stride[0]).checked_sub(g.pad[0]);
                let ix0 = (ox * g.stride[1]).checked_sub(g.pad[1]);
                let base = match (iy0, ix0) {
                    (Some(iy), Some(ix)) if iy + span_h < g.in_h && ix + span_w < g.in_w => {
                        Some((iy * g.in_w + ix) * c + c0)
                    }
                    _ => None,
                };
                let (mut lo, mut hi) = (zl, zh);
                for k in 0..pairs {
                    let at = |tap| Tap {
                        g,
                        x,
                        zp,
                        c0,
                        n,
                        oy,
                        ox,
                        tap,
                        taps,
                        base,
                        offs: &offs,
                    };
                    // SAFETY: AVX2 (this function's feature).
                    let (a, b) = unsafe { (at(2 * k).load(zp16), at(2 * k + 1).load(zp16)) };
                    lo =
                        _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), wl[k]));
                    hi =
                        _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), wh[k]));
                }
                let first = _mm256_permute2x128_si256::<0x20>(lo, hi);
                let second = _mm256_permute2x128_si256::<0x31>(lo, hi);
                let at = (oy * g.out_w + ox) * c;
                for (half, v) in [(0, first), (8, second)] {
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
            }
        }
        c0 += n;
    }
}

/// The i8 weights of `tap` for channels `c0..c0 + 16`, as i16 (zero past the last tap).
///
/// # Safety
/// AVX2 present; `w` holds `taps · c_pad` values with `c0 + 16 <= c_pad` (checked by
/// slicing).
#[inline(always)]
unsafe fn tap_w(w: &[i8], taps: usize, c_pad: usize, c0: usize, tap: usize) -> __m256i {
    if tap >= taps {
        // SAFETY: AVX2 by the caller's contract.
        return unsafe { _mm256_setzero_si256() };
    }
    let wp = w[tap * c_pad + c0..][..16].as_ptr();
    // SAFETY: 16 readable bytes (the slice above); AVX2 by the caller's contract.
    unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.cast())) }
}

/// One tap of one output pixel, for a block of channels.
struct Tap<'a> {
    g: &'a ConvGeometry,
    x: &'a [u8],
    zp: u8,
    c0: usize,
    n: usize,
    oy: usize,
    ox: usize,
    tap: usize,
    taps: usize,
    /// Where the top-left tap reads, when every tap is inside the input.
    base: Option<usize>,
    offs: &'a [usize; MAX_TAPS],
}

impl Tap<'_> {
    /// `x - zp` of channels `c0..c0 + 16` as i16, 0 outside the input or past the last
    /// tap. Past the last channel a block reads the next pixel's codes (or copies, at the
    /// end of the map): those lanes are never stored.
    ///
    /// # Safety
    /// AVX2 present.
    #[inline(always)]
    unsafe fn load(&self, zp16: __m256i) -> __m256i {
        let (g, x, c) = (self.g, self.x, self.g.in_c);
        // SAFETY (both returns): AVX2 by the caller's contract.
        if self.tap >= self.taps {
            return unsafe { _mm256_setzero_si256() };
        }
        let at = match self.base {
            Some(base) => base + self.offs[self.tap],
            None => match g.source(self.oy, self.ox, self.tap / g.k_w, self.tap % g.k_w) {
                Some(s) => s * c + self.c0,
                None => return unsafe { _mm256_setzero_si256() },
            },
        };
        // SAFETY: each load reads 16 bytes of a slice at least that long; AVX2 by the
        // caller's contract.
        unsafe {
            let v = if at + 16 <= x.len() {
                _mm_loadu_si128(x[at..][..16].as_ptr().cast())
            } else {
                let mut tail = [self.zp; 16];
                tail[..self.n].copy_from_slice(&x[at..][..self.n]);
                _mm_loadu_si128(tail.as_ptr().cast())
            };
            _mm256_sub_epi16(_mm256_cvtepu8_epi16(v), zp16)
        }
    }
}
