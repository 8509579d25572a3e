//! Depthwise int8 convolution with AVX2 (every x86 int8 family has it): per block of 16
//! channels and output pixel, the taps' codes and weights as i16, pairs of taps through
//! `vpmaddwd` (exact), then the GEMM kernels' epilogues (two 256-bit ones, or one 512-bit
//! one on VNNI-512). With AVX-512 VBMI besides VNNI, 3×3 layers of whole 16-channel blocks
//! run [`dw3x3_vbmi`] instead: one `vpermb` and one `vpdpbusd` per kernel row. Same bits as
//! [`crate::engine::kernels::qconv::depthwise_u8_portable`].

use super::qgemm::{I8Dot, Requant512, Vnni512, store_f32_256, store_u8_256_x2};
use crate::engine::kernels::conv::ConvGeometry;
use crate::engine::kernels::gemm::QDst;
use crate::engine::kernels::qconv::QEpilogue;
use std::arch::x86_64::*;

/// Taps the kernel plans on the stack; larger kernels take the portable path.
pub(in crate::engine::kernels) const MAX_TAPS: usize = 64;

/// Whether [`depthwise_u8_x86`] runs this layer: AVX2 present, at most [`MAX_TAPS`]
/// taps, and the epilogue's lane constants laid out over all channels 8 wide, or 16 wide
/// with AVX-512 (the VNNI-512 family's epilogue then stores each block at once).
pub(in crate::engine::kernels) fn supports(g: &ConvGeometry, epi: &QEpilogue) -> bool {
    super::has_avx2_fma()
        && g.k_h * g.k_w <= MAX_TAPS
        && epi.lanes.as_ref().is_some_and(|l| {
            l.group >= g.out_c && (l.width == 8 || (l.width == 16 && super::has_avx512_vnni()))
        })
}

/// Depthwise convolution of one NHWC sample; weights `[tap][c_pad]`.
///
/// # Panics
/// If [`supports`] is false, or a length does not match the geometry.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn depthwise_u8_x86(
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &QEpilogue,
    mut y: QDst<'_>,
) {
    assert!(
        supports(g, epi),
        "qconv2d: the AVX2 depthwise kernel cannot run this layer"
    );
    let c = g.in_c;
    assert!(c_pad >= c.div_ceil(16) * 16 && w.len() >= g.k_h * g.k_w * c_pad);
    assert_eq!(x.len(), g.in_h * g.in_w * c, "qconv2d input length");
    let out_len = g.out_h * g.out_w * c;
    assert_eq!(y.len(), out_len, "qconv2d output length");
    if let (QDst::U8(yv), Some(l)) = (&mut y, epi.lanes.as_ref())
        && vbmi_runs(g, l)
    {
        // SAFETY: `vbmi_runs` checked the features, the lane layout, the kernel shape and
        // that no tap reads padding; the lengths just checked bound the rest.
        unsafe {
            if g.in_c == 8 {
                dw3x3_vbmi_c8(g, x, w, c_pad, l, yv)
            } else {
                dw3x3_vbmi(g, x, w, c_pad, l, yv)
            }
        };
        return;
    }
    // SAFETY: AVX2 (and AVX-512 for 16-wide lanes) checked by `supports`; the lengths
    // just checked bound every access (see the kernel).
    unsafe {
        if epi.lanes.as_ref().is_some_and(|l| l.width == 16) {
            dw_avx512(g, x, zp, w, c_pad, epi, y)
        } else {
            dw_avx2(g, x, zp, w, c_pad, epi, y)
        }
    }
}

/// Whether [`dw3x3_vbmi`] (or, for 8 channels, [`dw3x3_vbmi_c8`]) runs a layer with these
/// lanes: AVX-512 VNNI and VBMI, a 3×3 kernel with no padding (the caller pads a copy of the
/// input first), and whole blocks of 16 channels under the VNNI-512 epilogue's 16-wide lanes
/// (or 8 channels under 8-wide ones).
fn vbmi_runs(g: &ConvGeometry, l: &crate::engine::kernels::qconv::Lanes) -> bool {
    let blocks = (g.in_c.is_multiple_of(16) && l.width == 16) || (g.in_c == 8 && l.width == 8);
    super::has_avx512_vbmi()
        && (g.k_h, g.k_w) == (3, 3)
        && g.pad == [0; 4]
        && blocks
        && g.out_c == g.in_c
        && l.group >= g.out_c
}

/// [`dw3x3_vbmi`] for 8 channels: two neighbouring pixels of a row fill the 16 lanes (each
/// tap's two 8-byte runs gathered into one 16-byte one), their constants the 8-wide ones
/// twice ([`Requant512::load_twice8`]); a row's odd last pixel runs alone and stores 8
/// codes.
///
/// # Safety
/// As for [`dw3x3_vbmi`] with `in_c == 8` and lanes 8 wide.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn dw3x3_vbmi_c8(
    g: &ConvGeometry,
    x: &[u8],
    w: &[i8],
    c_pad: usize,
    l: &crate::engine::kernels::qconv::Lanes,
    y: &mut [u8],
) {
    const C: usize = 8;
    // SAFETY (every intrinsic): the features of this function; every 8-byte read lies inside
    // `x` (no padding: each tap of each output pixel is an input pixel of 8 channels) or
    // `w` (9 taps of `c_pad >= 16` weights), and every store inside `y` (16 codes: two
    // output pixels, or 8 for the last one alone).
    unsafe {
        let index = _mm512_loadu_si512(TAP_QUADS.as_ptr().cast());
        let (dx, step) = (g.dilation[1] * C, g.stride[1] * C);
        // Each kernel row's weights, interleaved as the codes will be (both pixels' lanes
        // hold the same 8 channels' weights).
        let rows: [__m512i; 3] = std::array::from_fn(|ky| {
            let taps = three_run_pairs(w[ky * 3 * c_pad..].as_ptr().cast(), c_pad, 0);
            _mm512_maskz_permutexvar_epi8(THREE_OF_FOUR, index, taps)
        });
        let rq = Requant512::load_twice8(l, l.bias.as_ptr());
        // The quads of the pixels at `p` and `p + next`, 8 channels each, side by side.
        let gather = |p: *const u8, next: usize| {
            _mm512_permutexvar_epi8(index, three_run_pairs(p, dx, next))
        };
        let sum = |at: usize, next: usize, r: [*const u8; 3]| {
            let mut a = _mm512_setzero_si512();
            for (ky, &rp) in r.iter().enumerate() {
                a = _mm512_dpbusd_epi32(a, gather(rp.add(at), next), rows[ky]);
            }
            a
        };
        for oy in 0..g.out_h {
            let row_at = |ky: usize| {
                x.as_ptr()
                    .add(((oy * g.stride[0] + ky * g.dilation[0]) * g.in_w) * C)
            };
            let r = [row_at(0), row_at(1), row_at(2)];
            let yrow = y.as_mut_ptr().add(oy * g.out_w * C);
            let mut ox = 0;
            while ox + 4 <= g.out_w {
                let a0 = sum(ox * step, step, r);
                let a1 = sum((ox + 2) * step, step, r);
                rq.store(a0, yrow.add(ox * C), 16);
                rq.store(a1, yrow.add((ox + 2) * C), 16);
                ox += 4;
            }
            while ox + 2 <= g.out_w {
                rq.store(sum(ox * step, step, r), yrow.add(ox * C), 16);
                ox += 2;
            }
            if ox < g.out_w {
                // The last pixel alone: its own codes in both halves, 8 stored.
                rq.store(sum(ox * step, 0, r), yrow.add(ox * C), 8);
            }
        }
    }
}

/// The `vpermb` index that turns three taps' 16 bytes (lanes 0-2 of a vector) into 16
/// quads: byte `4j + k` is tap `k`'s byte `j`; the fourth byte repeats tap 0 (its weight is
/// 0).
const TAP_QUADS: [u8; 64] = {
    let mut index = [0u8; 64];
    let mut b = 0;
    while b < 64 {
        let (j, k) = (b / 4, b % 4);
        index[b] = (16 * (k % 3) + j) as u8;
        b += 1;
    }
    index
};

/// Every byte of the quads but the fourth: the weights' mask (the fourth tap's weight is 0).
const THREE_OF_FOUR: u64 = 0x7777_7777_7777_7777;

/// The 16 bytes at `p`, `p + step` and `p + 2 · step` as lanes 0-2 of a vector (lane 3
/// zero): a kernel row's three taps of one block of 16 channels, codes or weights.
///
/// # Safety
/// Inlined into a function enabling AVX-512 F; the 48 bytes are readable.
#[inline(always)]
unsafe fn three_runs(p: *const u8, step: usize) -> __m512i {
    // SAFETY: the function's contract.
    unsafe {
        let a = _mm512_zextsi128_si512(_mm_loadu_si128(p.cast()));
        let a = _mm512_inserti32x4::<1>(a, _mm_loadu_si128(p.add(step).cast()));
        _mm512_inserti32x4::<2>(a, _mm_loadu_si128(p.add(2 * step).cast()))
    }
}

/// [`three_runs`] of 8 bytes for two pixels `next` apart: lane `k` holds tap `k`'s 8 bytes
/// at `p + k · step`, then those at `p + k · step + next`.
///
/// # Safety
/// Inlined into a function enabling AVX-512 F; the six runs of 8 bytes are readable.
#[inline(always)]
unsafe fn three_run_pairs(p: *const u8, step: usize, next: usize) -> __m512i {
    // SAFETY: the function's contract.
    unsafe {
        let run = |q: *const u8| q.cast::<i64>().read_unaligned();
        let tap = |k: usize| {
            let q = p.add(k * step);
            _mm_insert_epi64::<1>(_mm_cvtsi64_si128(run(q)), run(q.add(next)))
        };
        let a = _mm512_zextsi128_si512(tap(0));
        let a = _mm512_inserti32x4::<1>(a, tap(1));
        _mm512_inserti32x4::<2>(a, tap(2))
    }
}

/// 3×3 depthwise with `vpdpbusd`: for each output pixel and block of 16 channels, a kernel
/// row's three taps (three 16-byte loads, `vinserti32x4`) are interleaved by one `vpermb`
/// into each channel's quad of codes (tap 0, 1, 2, and tap 0 again against a zero weight),
/// so one `vpdpbusd` adds a kernel row's three products per channel, exact: three per
/// pixel where the AVX2 kernel widens every code to i16 and runs five `vpmaddwd` per 16
/// channels over two 8-channel halves. Four pixels of a row in flight hide the latency.
/// The sums are the raw `Σ x · w` over the taps (the padding, already in the copy, reads
/// the zero point), as the AVX2 kernel's; the VNNI-512 epilogue stores them.
///
/// # Safety
/// [`vbmi_runs`] holds; `x` is the layer's input and `y` its output (lengths checked by
/// the caller); `w` holds `9 · c_pad` weights, `c_pad >= in_c`.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn dw3x3_vbmi(
    g: &ConvGeometry,
    x: &[u8],
    w: &[i8],
    c_pad: usize,
    l: &crate::engine::kernels::qconv::Lanes,
    y: &mut [u8],
) {
    let c = g.in_c;
    // SAFETY (every intrinsic): the features of this function; every pointer read below
    // lies inside `x` (no padding: each tap of each output pixel is an input pixel, and
    // the block's 16 channels lie inside it, `c` a multiple of 16) or `w` (9 taps of
    // `c_pad >= c` weights), and every store inside `y` (one block of 16 channels of an
    // output pixel).
    unsafe {
        let index = _mm512_loadu_si512(TAP_QUADS.as_ptr().cast());
        let (dx, step) = (g.dilation[1] * c, g.stride[1] * c);
        let bias = l.bias.as_ptr();
        let mut c0 = 0;
        while c0 < c {
            // Each kernel row's weights, interleaved as the codes will be.
            let rows: [__m512i; 3] = std::array::from_fn(|ky| {
                let taps = three_runs(w[ky * 3 * c_pad + c0..].as_ptr().cast(), c_pad);
                _mm512_maskz_permutexvar_epi8(THREE_OF_FOUR, index, taps)
            });
            let rq = Requant512::load(l, bias, c0);
            let gather = |p: *const u8| _mm512_permutexvar_epi8(index, three_runs(p, dx));
            for oy in 0..g.out_h {
                // Row ky's first tap of the row's first pixel, block c0.
                let row_at = |ky: usize| {
                    x.as_ptr()
                        .add(((oy * g.stride[0] + ky * g.dilation[0]) * g.in_w) * c + c0)
                };
                let (r0, r1, r2) = (row_at(0), row_at(1), row_at(2));
                let yrow = y.as_mut_ptr().add(oy * g.out_w * c + c0);
                let mut ox = 0;
                while ox + 4 <= g.out_w {
                    let mut acc = [_mm512_setzero_si512(); 4];
                    for (k, a) in acc.iter_mut().enumerate() {
                        let o = (ox + k) * step;
                        *a = _mm512_dpbusd_epi32(*a, gather(r0.add(o)), rows[0]);
                        *a = _mm512_dpbusd_epi32(*a, gather(r1.add(o)), rows[1]);
                        *a = _mm512_dpbusd_epi32(*a, gather(r2.add(o)), rows[2]);
                    }
                    for (k, a) in acc.into_iter().enumerate() {
                        rq.store(a, yrow.add((ox + k) * c), 16);
                    }
                    ox += 4;
                }
                while ox < g.out_w {
                    let o = ox * step;
                    let mut a = _mm512_setzero_si512();
                    a = _mm512_dpbusd_epi32(a, gather(r0.add(o)), rows[0]);
                    a = _mm512_dpbusd_epi32(a, gather(r1.add(o)), rows[1]);
                    a = _mm512_dpbusd_epi32(a, gather(r2.add(o)), rows[2]);
                    rq.store(a, yrow.add(ox * c), 16);
                    ox += 1;
                }
            }
            c0 += 16;
        }
    }
}

/// # Safety
/// The CPU has AVX2, FMA and AVX-512 F, BW, VL and VNNI; the lengths [`dw`] asserts hold.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx512(
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &QEpilogue,
    y: QDst<'_>,
) {
    // SAFETY: the features (this function's); the caller's checks.
    unsafe { by_taps::<true>(g, x, zp, w, c_pad, epi, y) }
}

/// # Safety
/// The CPU has AVX2 and FMA; the lengths [`dw`] asserts hold.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx2(
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &QEpilogue,
    y: QDst<'_>,
) {
    // SAFETY: AVX2 (this function's feature); the caller's checks.
    unsafe { by_taps::<false>(g, x, zp, w, c_pad, epi, y) }
}

/// [`dw`] with 3×3 kernels (nearly every depthwise layer) in a loop the compiler unrolls,
/// the weights held in registers.
///
/// # Safety
/// As for [`dw`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn by_taps<const WIDE: bool>(
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &QEpilogue,
    y: QDst<'_>,
) {
    // SAFETY: the caller's contract.
    unsafe {
        if g.k_h * g.k_w == 9 {
            dw::<5, WIDE>(g, x, zp, w, c_pad, epi, y)
        } else {
            dw::<0, WIDE>(g, x, zp, w, c_pad, epi, y)
        }
    }
}

/// The kernel; `P` tap pairs when nonzero, else as many as the geometry has; `WIDE`: the
/// 16-wide VNNI-512 epilogue (lanes prepared 16 wide, AVX-512 present) stores each block
/// at once, else two 8-wide AVX2 ones.
///
/// # Safety
/// AVX2 present; the checks of [`depthwise_u8_x86`] hold.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw<const P: usize, const WIDE: bool>(
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
    let pairs = if P > 0 { P } else { taps.div_ceil(2) };
    debug_assert!(P == 0 || taps.div_ceil(2) == P);
    // SAFETY (every intrinsic below): AVX2, the caller's contract.
    let zp16 = unsafe { _mm256_set1_epi16(zp as i16) };
    let bias = l.bias.as_ptr();
    // The sum over every tap of `x · w`, the padding reading the zero point, is
    // `zp · Σw + Σ over the taps inside the input of (x - zp) · w`: padding taps add
    // nothing, and `|x - zp| ≤ 255` times `|w| ≤ 128` fits an i16. Taps go in pairs through
    // `vpmaddwd` (two exact products summed into an i32), 16 channels a block, the block's
    // weights held for all its pixels. `vpunpck*wd` interleave within 128-bit lanes, so
    // the low sums hold channels 0-3 and 8-11 and the high ones 4-7 and 12-15 until the
    // final permutes. Each tap reads 16 codes through a pointer: into `x`, or, for a tap
    // in the padding (and the odd tap past the last), a row of the zero point (`x - zp`
    // = 0); a block that would read past the end of `x` reads a copy.
    // Where each tap reads, relative to the kernel's top-left input pixel.
    let mut offs = [0usize; MAX_TAPS];
    for (tap, o) in offs[..taps].iter_mut().enumerate() {
        let (ky, kx) = (tap / g.k_w, tap % g.k_w);
        *o = (ky * g.dilation[0] * g.in_w + kx * g.dilation[1]) * c;
    }
    let (span_h, span_w) = ((g.k_h - 1) * g.dilation[0], (g.k_w - 1) * g.dilation[1]);
    let cols = g.interior_cols();
    let zp_row = [zp; 16];
    let mut tails = [[zp; 16]; MAX_TAPS];
    let mut ptrs = [zp_row.as_ptr(); MAX_TAPS];
    // SAFETY: AVX2 (the contract of this function); registers only.
    let mut wl = [unsafe { _mm256_setzero_si256() }; MAX_TAPS / 2];
    let mut wh = wl;
    let mut c0 = 0;
    while c0 < c {
        let n = 16.min(c - c0);
        // SAFETY: as for `wl`.
        let (mut zl, mut zh) = unsafe { (_mm256_setzero_si256(), _mm256_setzero_si256()) };
        for k in 0..pairs {
            // SAFETY: AVX2; `w` holds `taps · c_pad` weights.
            unsafe {
                let (a, b) = (
                    tap_w(w, taps, c_pad, c0, 2 * k),
                    tap_w(w, taps, c_pad, c0, 2 * k + 1),
                );
                wl[k] = _mm256_unpacklo_epi16(a, b);
                wh[k] = _mm256_unpackhi_epi16(a, b);
                zl = _mm256_add_epi32(zl, _mm256_madd_epi16(zp16, wl[k]));
                zh = _mm256_add_epi32(zh, _mm256_madd_epi16(zp16, wh[k]));
            }
        }
        // Eight channels on AVX2: the weights of each tap pair for two pixels side by side.
        let pair_w = (!WIDE && c == 8).then(|| {
            let mut pw = PairWeights {
                lo: [wl[0]; MAX_TAPS / 2],
                hi: [wl[0]; MAX_TAPS / 2],
            };
            for k in 0..pairs {
                // SAFETY: AVX2; `w` holds `taps · c_pad` weights, c_pad >= 16.
                unsafe {
                    let (a, b) = (
                        tap_w_twice(w, taps, c_pad, 2 * k),
                        tap_w_twice(w, taps, c_pad, 2 * k + 1),
                    );
                    pw.lo[k] = _mm256_unpacklo_epi16(a, b);
                    pw.hi[k] = _mm256_unpackhi_epi16(a, b);
                }
            }
            pw
        });
        // SAFETY (the constants): AVX-512 under WIDE; the lane arrays hold whole blocks of
        // 16 from c0 (a multiple of 16; 128 slots past the last channel).
        let requant = WIDE.then(|| unsafe { Requant512::load(l, bias, c0) });
        for oy in 0..g.out_h {
            let mut ox = 0;
            while ox < g.out_w {
                // A row's interior pixels at once (3×3, AVX-512, u8 output): pointers step
                // along the row, the epilogue's constants stay loaded.
                if let (Some(rq), QDst::U8(yv)) = (&requant, &mut y)
                    && P > 0
                    && ox == cols.start
                {
                    // 16 codes read at the last tap of the row's last pixel, block c0.
                    if let Some(cols) = g.in_place_cols(oy, c0 + offs[taps - 1] + 16)
                        && let Some(first) = g.source(oy, ox, 0, 0).map(|s| s * c + c0)
                    {
                        let count = cols.len();
                        let y0 = (oy * g.out_w + ox) * c + c0;
                        let ylen = (count - 1) * c + n;
                        // SAFETY: AVX-512 (WIDE); every pixel's taps lie from `first` to
                        // 16 bytes past the last pixel's last tap, inside `x`
                        // (`in_place_cols`); the outputs in `yv[y0..y0 + ylen]`.
                        unsafe {
                            interior_row::<P>(
                                x[first..].as_ptr(),
                                g.stride[1] * c,
                                &offs,
                                count,
                                &wl,
                                &wh,
                                rq,
                                yv[y0..y0 + ylen].as_mut_ptr(),
                                c,
                                n,
                            );
                        }
                        ox = cols.end;
                        continue;
                    }
                }
                // Inside the input for every tap: where the top-left tap reads.
                let iy0 = (oy * g.stride[0]).checked_sub(g.pad[0]);
                let ix0 = (ox * g.stride[1]).checked_sub(g.pad[1]);
                // Eight channels: this pixel and the next fill one block of 16 lanes, when
                // every tap of both lies inside the input (MobileNet's first depthwise
                // layer would leave half of each block idle).
                if let (Some(pair_w), Some(iy), Some(ix)) = (&pair_w, iy0, ix0) {
                    let step = g.stride[1] * c;
                    let at0 = (iy * g.in_w + ix) * c;
                    if ox + 1 < g.out_w
                        && iy + span_h < g.in_h
                        && ix + g.stride[1] + span_w < g.in_w
                        && at0 + step + offs[taps - 1] + 8 <= x.len()
                    {
                        // SAFETY: AVX2; both pixels' taps lie inside `x`, 8 bytes
                        // readable at the second one's last (checked just above).
                        let (first, second) = unsafe {
                            let (lo, hi) = sum_inside_pair(
                                x[at0..].as_ptr(),
                                step,
                                &offs,
                                pairs,
                                taps,
                                pair_w,
                            );
                            in_order(lo, hi)
                        };
                        let at = (oy * g.out_w + ox) * c;
                        // SAFETY: the lane arrays hold channels 0..8 (one block); the 16
                        // outputs of both pixels are written from `at`, inside y (pixel
                        // ox + 1 exists).
                        unsafe {
                            match &mut y {
                                QDst::U8(y) => {
                                    let yp = y[at..][..16].as_mut_ptr();
                                    store_u8_256_x2(first, 0, second, 0, l, bias, yp, 16)
                                }
                                QDst::F32(y) => {
                                    let yp = y[at..][..16].as_mut_ptr();
                                    store_f32_256(first, l, bias, 0, yp, 8);
                                    store_f32_256(second, l, bias, 0, yp.add(8), 8);
                                }
                            }
                        }
                        ox += 2;
                        continue;
                    }
                }
                let (mut lo, mut hi) = (zl, zh);
                match (iy0, ix0) {
                    (Some(iy), Some(ix))
                        if iy + span_h < g.in_h
                            && ix + span_w < g.in_w
                            && (iy * g.in_w + ix) * c + c0 + offs[taps - 1] + 16 <= x.len() =>
                    {
                        // Every tap inside the input and 16 codes readable at the last:
                        // the loads go straight from the input, and with no padding the
                        // sum is `Σ x · w` itself (codes as they are, no zero point).
                        let base = x[(iy * g.in_w + ix) * c + c0..].as_ptr();
                        // SAFETY: AVX2; every tap lies at most `offs[taps - 1]` past
                        // `base`, with 16 bytes readable there.
                        (lo, hi) = unsafe { sum_inside(base, &offs, pairs, taps, &wl, &wh) };
                    }
                    _ => {
                        // The input row of each kernel row and column of each kernel
                        // column (`usize::MAX` in the padding), then each tap's pointer.
                        let mut rows = [usize::MAX; MAX_TAPS];
                        let mut cols_x = [usize::MAX; MAX_TAPS];
                        for (ky, r) in rows[..g.k_h].iter_mut().enumerate() {
                            if let Some(iy) = (oy * g.stride[0] + ky * g.dilation[0])
                                .checked_sub(g.pad[0])
                                .filter(|&iy| iy < g.in_h)
                            {
                                *r = iy * g.in_w;
                            }
                        }
                        for (kx, cx) in cols_x[..g.k_w].iter_mut().enumerate() {
                            if let Some(ix) = (ox * g.stride[1] + kx * g.dilation[1])
                                .checked_sub(g.pad[1])
                                .filter(|&ix| ix < g.in_w)
                            {
                                *cx = ix;
                            }
                        }
                        for t in 0..taps {
                            let (r, cx) = (rows[t / g.k_w], cols_x[t % g.k_w]);
                            ptrs[t] = if r == usize::MAX || cx == usize::MAX {
                                zp_row.as_ptr()
                            } else {
                                read_at(x, (r + cx) * c + c0, n, &mut tails[t])
                            };
                        }
                        for k in 0..pairs {
                            // SAFETY: AVX2; every pointer names 16 readable bytes
                            // (`read_at`; the entry past the last tap stays the zero
                            // point's row).
                            unsafe {
                                let a = load_centered(ptrs[2 * k], zp16);
                                let b = load_centered(ptrs[2 * k + 1], zp16);
                                (lo, hi) = pair_sum(lo, hi, a, b, wl[k], wh[k]);
                            }
                        }
                    }
                }
                // SAFETY: AVX2.
                let (first, second) = unsafe { in_order(lo, hi) };
                let at = (oy * g.out_w + ox) * c;
                if WIDE {
                    // SAFETY: AVX-512 (WIDE's contract); the lane arrays hold whole blocks
                    // of 16 from c0 (a multiple of 16; 128 slots past the last channel); n
                    // outputs are written from position at + c0, inside y.
                    unsafe {
                        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first), second);
                        match &mut y {
                            QDst::U8(y) => {
                                Vnni512::store_u8(v, l, bias, c0, y[at + c0..][..n].as_mut_ptr(), n)
                            }
                            QDst::F32(y) => Vnni512::store_f32(
                                v,
                                l,
                                bias,
                                c0,
                                y[at + c0..][..n].as_mut_ptr(),
                                n,
                            ),
                        }
                    }
                    ox += 1;
                    continue;
                }
                // SAFETY: the lane arrays run 128 slots past the last channel (one group of
                // all channels, 8 wide, so channel cc is slot cc); n outputs are written from
                // position at + c0, inside y.
                unsafe {
                    match &mut y {
                        QDst::U8(y) => {
                            let yp = y[at + c0..][..n].as_mut_ptr();
                            store_u8_256_x2(first, c0, second, c0 + 8, l, bias, yp, n);
                        }
                        QDst::F32(y) => {
                            for (half, v) in [(0, first), (8, second)] {
                                if half >= n {
                                    break;
                                }
                                let (cc, nn) = (c0 + half, (n - half).min(8));
                                let yp = y[at + cc..][..nn].as_mut_ptr();
                                store_f32_256(v, l, bias, cc, yp, nn);
                            }
                        }
                    }
                }
                ox += 1;
            }
        }
        c0 += n;
    }
}

/// The weights of each tap pair for eight channels, twice (for two pixels), interleaved
/// as [`pair_sum`] takes them.
struct PairWeights {
    lo: [__m256i; MAX_TAPS / 2],
    hi: [__m256i; MAX_TAPS / 2],
}

/// A tap's eight weights (channels 0..8), widened to i16, in both halves; zero past the
/// last tap.
///
/// # Safety
/// AVX2 present.
#[inline(always)]
unsafe fn tap_w_twice(w: &[i8], taps: usize, c_pad: usize, tap: usize) -> __m256i {
    if tap >= taps {
        // SAFETY: AVX2 by the caller's contract.
        return unsafe { _mm256_setzero_si256() };
    }
    let wp = w[tap * c_pad..][..8].as_ptr();
    // SAFETY: 8 readable bytes (the slice above); AVX2 by the caller's contract.
    unsafe { _mm256_cvtepi8_epi16(_mm_set1_epi64x(wp.cast::<i64>().read_unaligned())) }
}

/// The sums of two pixels of eight channels whose taps all lie inside the input, the
/// second `step` bytes after the first: pixel one's in lanes 0-7, pixel two's in 8-15 (in
/// [`pair_sum`]'s order); `pairs` tap pairs as for [`sum_inside`].
///
/// # Safety
/// AVX2 present; 8 bytes readable at every tap of both pixels (and, when `step` is 8, the
/// 16 bytes from each tap of the first, the same bytes).
#[inline(always)]
unsafe fn sum_inside_pair(
    base: *const u8,
    step: usize,
    offs: &[usize; MAX_TAPS],
    pairs: usize,
    taps: usize,
    w: &PairWeights,
) -> (__m256i, __m256i) {
    // SAFETY: the caller's contract; the odd tap past the last reads nothing.
    unsafe {
        let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for k in 0..pairs {
            let a = pair_codes(base.add(offs[2 * k]), step);
            let b = if 2 * k + 1 < taps {
                pair_codes(base.add(offs[2 * k + 1]), step)
            } else {
                _mm256_setzero_si256()
            };
            (lo, hi) = pair_sum(lo, hi, a, b, w.lo[k], w.hi[k]);
        }
        (lo, hi)
    }
}

/// Eight codes at `p` and eight at `p + step`, widened to i16 (one 16-byte load when
/// `step` is 8).
///
/// # Safety
/// AVX2 present; 8 bytes readable at both places.
#[inline(always)]
unsafe fn pair_codes(p: *const u8, step: usize) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe {
        let v = if step == 8 {
            _mm_loadu_si128(p.cast())
        } else {
            _mm_unpacklo_epi64(
                _mm_loadl_epi64(p.cast()),
                _mm_loadl_epi64(p.add(step).cast()),
            )
        };
        _mm256_cvtepu8_epi16(v)
    }
}

/// `count` pixels of a row whose every tap lies inside the input: pixel `i`'s tap `t` at
/// `x + i · step + offs[t]`, its `n` outputs at `y + i · ldy`; sums of the codes as they are
/// (no padding, so no zero point), requantized by `rq`.
///
/// # Safety
/// AVX-512 F, BW, VL and AVX2 present; 16 bytes readable at every tap of every pixel;
/// `n <= 16` writable bytes at every pixel's output; `P` pairs cover the taps (the odd
/// tap past the last reads nothing).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn interior_row<const P: usize>(
    x: *const u8,
    step: usize,
    offs: &[usize; MAX_TAPS],
    count: usize,
    wl: &[__m256i; MAX_TAPS / 2],
    wh: &[__m256i; MAX_TAPS / 2],
    rq: &Requant512,
    y: *mut u8,
    ldy: usize,
    n: usize,
) {
    let taps = 2 * P - 1;
    let mut o = [0usize; MAX_TAPS];
    o[..2 * P].copy_from_slice(&offs[..2 * P]);
    let (mut xp, mut yp) = (x, y);
    for _ in 0..count {
        // SAFETY: the caller's contract.
        unsafe {
            let (lo, hi) = sum_inside(xp, &o, P, taps, wl, wh);
            let (first, second) = in_order(lo, hi);
            let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first), second);
            rq.store(v, yp, n);
            xp = xp.add(step);
            yp = yp.add(ldy);
        }
    }
}

/// The pair sums of one pixel whose every tap lies inside the input: `Σ x · w` of the
/// codes as they are (no padding, so no zero point), tap `t` at `base + offs[t]`.
///
/// # Safety
/// AVX2 present; 16 bytes readable at every tap.
#[inline(always)]
unsafe fn sum_inside(
    base: *const u8,
    offs: &[usize; MAX_TAPS],
    pairs: usize,
    taps: usize,
    wl: &[__m256i; MAX_TAPS / 2],
    wh: &[__m256i; MAX_TAPS / 2],
) -> (__m256i, __m256i) {
    // SAFETY: the caller's contract; the odd tap past the last reads nothing.
    unsafe {
        let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for k in 0..pairs {
            let a = load_codes(base.add(offs[2 * k]));
            let b = if 2 * k + 1 < taps {
                load_codes(base.add(offs[2 * k + 1]))
            } else {
                _mm256_setzero_si256()
            };
            (lo, hi) = pair_sum(lo, hi, a, b, wl[k], wh[k]);
        }
        (lo, hi)
    }
}

/// `lo`, `hi` plus the products of two taps' i16 values `a`, `b` with their interleaved
/// weights (`vpmaddwd`: each i32 lane sums one channel's two exact products).
///
/// # Safety
/// AVX2 present.
#[inline(always)]
unsafe fn pair_sum(
    lo: __m256i,
    hi: __m256i,
    a: __m256i,
    b: __m256i,
    wl: __m256i,
    wh: __m256i,
) -> (__m256i, __m256i) {
    // SAFETY: the caller's contract.
    unsafe {
        (
            _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), wl)),
            _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), wh)),
        )
    }
}

/// Channels 0-7 and 8-15 of a block from the pair sums, whose 128-bit lanes hold channels
/// 0-3 and 8-11 (`lo`), 4-7 and 12-15 (`hi`).
///
/// # Safety
/// AVX2 present.
#[inline(always)]
unsafe fn in_order(lo: __m256i, hi: __m256i) -> (__m256i, __m256i) {
    // SAFETY: the caller's contract.
    unsafe {
        (
            _mm256_permute2x128_si256::<0x20>(lo, hi),
            _mm256_permute2x128_si256::<0x31>(lo, hi),
        )
    }
}

/// A pointer to 16 readable codes starting with `x[at..at + n]`: into `x` when 16 bytes
/// remain there (lanes past `n` read the next pixel's codes and are never stored), else
/// into `tail`, a copy (its lanes past `n` are never stored either).
#[inline(always)]
fn read_at(x: &[u8], at: usize, n: usize, tail: &mut [u8; 16]) -> *const u8 {
    if at + 16 <= x.len() {
        x[at..at + 16].as_ptr()
    } else {
        tail[..n].copy_from_slice(&x[at..at + n]);
        tail.as_ptr()
    }
}

/// The 16 codes at `p`, as i16.
///
/// # Safety
/// AVX2 present; 16 readable bytes at `p`.
#[inline(always)]
unsafe fn load_codes(p: *const u8) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe { _mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast())) }
}

/// `x - zp` of the 16 codes at `p`, as i16.
///
/// # Safety
/// AVX2 present; 16 readable bytes at `p`.
#[inline(always)]
unsafe fn load_centered(p: *const u8, zp16: __m256i) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe { _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast())), zp16) }
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
