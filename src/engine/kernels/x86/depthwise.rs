//! Depthwise f32 convolution over NHWC for AVX-512 and AVX2: per output row and vector of
//! channels, the tap weights are loaded once (held in registers for 3×3) and every output
//! pixel of the row sums its valid taps' input vectors (padding taps are skipped).

use super::gemm::{activate, finish_row, scalar_act};
use super::simd::{Avx2, Avx512, F32Simd};
use crate::engine::kernels::{Activation, ConvGeometry};

/// The input vector of a tap, the first `n` lanes.
///
/// # Safety
/// S's features are present; `n <= S::LANES` values are readable at `p`.
#[inline(always)]
unsafe fn load_n<S: F32Simd>(p: *const f32, n: usize) -> S::V {
    // SAFETY: `n` values readable at `p` (the callers' contract).
    unsafe {
        if n == S::LANES {
            S::load(p)
        } else {
            S::load_first(p, n)
        }
    }
}

/// A pixel's `n` outputs: the activation on `acc`, stored at `yp`.
///
/// # Safety
/// S's features are present; `n <= S::LANES` values writable at `yp`.
#[inline(always)]
unsafe fn store_pixel<S: F32Simd>(yp: *mut f32, acc: S::V, act: Activation, n: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let out = activate::<S>(acc, act);
        if n == S::LANES {
            S::store(yp, out);
        } else {
            S::store_first(yp, out, n);
        }
        if scalar_act(act) {
            finish_row(yp, n, act);
        }
    }
}

/// One output row for channels `cv..cv + n`, taps `KH × KW` known at compile time.
///
/// # Safety
/// S's features are present; `x`, `w`, `bias`, `y` are as checked by
/// [`depthwise_f32_avx512`].
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn row_fixed<S: F32Simd, const KH: usize, const KW: usize>(
    g: &ConvGeometry,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    c_pad: usize,
    act: Activation,
    y: *mut f32,
    oy: usize,
    cv: usize,
    n: usize,
) {
    // SAFETY: taps are read only inside the input (row and column checked), weights and
    // bias inside their padded arrays, outputs inside row `oy`.
    unsafe {
        let c = g.in_c;
        let mut wr = [[S::zero(); KW]; KH];
        for ky in 0..KH {
            for kx in 0..KW {
                wr[ky][kx] = S::load(w.add((ky * KW + kx) * c_pad + cv));
            }
        }
        let b = S::load(bias.add(cv));
        let mut rows = [None; KH];
        for ky in 0..KH {
            let iy = (oy * g.stride[0] + ky * g.dilation[0]).wrapping_sub(g.pad[0]);
            if iy < g.in_h {
                rows[ky] = Some(x.add(iy * g.in_w * c + cv));
            }
        }
        // Columns whose every tap lies inside the input, on a row whose every kernel row
        // does, with a whole vector of channels: two pixels at a time with no checks, so
        // that two chains of FMAs (one per pixel, bound by the FMA's latency) overlap.
        let inner = if n == S::LANES && rows.iter().all(Option::is_some) {
            g.interior_cols()
        } else {
            0..0
        };
        let step = g.stride[1] * c;
        let mut ox = inner.start;
        while ox + 2 <= inner.end {
            let ix0 = ox * g.stride[1] - g.pad[1];
            let (mut a0, mut a1) = (b, b);
            for ky in 0..KH {
                let Some(row) = rows[ky] else { continue };
                for kx in 0..KW {
                    let p = row.add((ix0 + kx * g.dilation[1]) * c);
                    a0 = S::fmadd(S::load(p), wr[ky][kx], a0);
                    a1 = S::fmadd(S::load(p.add(step)), wr[ky][kx], a1);
                }
            }
            for (i, acc) in [(0, a0), (1, a1)] {
                store_pixel::<S>(y.add((oy * g.out_w + ox + i) * c + cv), acc, act, n);
            }
            ox += 2;
        }
        let rest = ox;
        for ox in (0..inner.start).chain(rest..g.out_w) {
            let mut acc = b;
            let ix0 = (ox * g.stride[1]).wrapping_sub(g.pad[1]);
            for ky in 0..KH {
                let Some(row) = rows[ky] else { continue };
                for kx in 0..KW {
                    let ix = ix0.wrapping_add(kx * g.dilation[1]);
                    if ix < g.in_w {
                        acc = S::fmadd(load_n::<S>(row.add(ix * c), n), wr[ky][kx], acc);
                    }
                }
            }
            store_pixel::<S>(y.add((oy * g.out_w + ox) * c + cv), acc, act, n);
        }
    }
}

/// One output row for a whole vector of channels at `cv`, 3×3 taps, no padding (the
/// SIMD families pad the input into scratch first): the nine weights stay in registers and
/// the row's pixels run two at a time, no tap tested, so that two chains of FMAs (one per
/// pixel, bound by the FMA's latency) overlap.
///
/// # Safety
/// S's features are present; `g.pad` is zero; `cv + S::LANES <= c_pad`; `x`, `w`, `bias`,
/// `y` are as checked by [`check`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_3x3_valid<S: F32Simd>(
    g: &ConvGeometry,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    c_pad: usize,
    act: Activation,
    y: *mut f32,
    oy: usize,
    cv: usize,
) {
    // SAFETY: with no padding every tap of every output pixel lies inside the input
    // (`validate` bounds the output by the input); weights and bias inside `c_pad`.
    unsafe {
        // Macros, not closures: a closure would not inherit the caller's target features
        // and each vector operation would become a call.
        let c = g.in_c;
        macro_rules! wt {
            ($t:expr) => {
                S::load(w.add($t * c_pad + cv))
            };
        }
        let (w0, w1, w2, w3, w4, w5, w6, w7, w8) = (
            wt!(0),
            wt!(1),
            wt!(2),
            wt!(3),
            wt!(4),
            wt!(5),
            wt!(6),
            wt!(7),
            wt!(8),
        );
        let b = S::load(bias.add(cv));
        let row0 = oy * g.stride[0];
        let (r0, r1, r2) = (
            x.add((row0 * g.in_w) * c + cv),
            x.add(((row0 + g.dilation[0]) * g.in_w) * c + cv),
            x.add(((row0 + 2 * g.dilation[0]) * g.in_w) * c + cv),
        );
        let (d1, d2) = (g.dilation[1] * c, 2 * g.dilation[1] * c);
        let step = g.stride[1] * c;
        // The nine taps of the pixel whose first tap is at offset `o` of each row.
        macro_rules! pixel {
            ($o:expr) => {{
                let o = $o;
                let mut a = S::fmadd(S::load(r0.add(o)), w0, b);
                a = S::fmadd(S::load(r0.add(o + d1)), w1, a);
                a = S::fmadd(S::load(r0.add(o + d2)), w2, a);
                a = S::fmadd(S::load(r1.add(o)), w3, a);
                a = S::fmadd(S::load(r1.add(o + d1)), w4, a);
                a = S::fmadd(S::load(r1.add(o + d2)), w5, a);
                a = S::fmadd(S::load(r2.add(o)), w6, a);
                a = S::fmadd(S::load(r2.add(o + d1)), w7, a);
                S::fmadd(S::load(r2.add(o + d2)), w8, a)
            }};
        }
        let yr = y.add(oy * g.out_w * c + cv);
        let mut ox = 0;
        while ox + 2 <= g.out_w {
            let o = ox * step;
            let (a0, a1) = (pixel!(o), pixel!(o + step));
            store_pixel::<S>(yr.add(ox * c), a0, act, S::LANES);
            store_pixel::<S>(yr.add((ox + 1) * c), a1, act, S::LANES);
            ox += 2;
        }
        if ox < g.out_w {
            store_pixel::<S>(yr.add(ox * c), pixel!(ox * step), act, S::LANES);
        }
    }
}

/// One output row for channels `cv..cv + n`, any kernel size.
///
/// # Safety
/// As [`row_fixed`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_any<S: F32Simd>(
    g: &ConvGeometry,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    c_pad: usize,
    act: Activation,
    y: *mut f32,
    oy: usize,
    cv: usize,
    n: usize,
) {
    // SAFETY: as in `row_fixed`.
    unsafe {
        let c = g.in_c;
        let b = S::load(bias.add(cv));
        for ox in 0..g.out_w {
            let mut acc = b;
            for ky in 0..g.k_h {
                let iy = (oy * g.stride[0] + ky * g.dilation[0]).wrapping_sub(g.pad[0]);
                if iy >= g.in_h {
                    continue;
                }
                for kx in 0..g.k_w {
                    let ix = (ox * g.stride[1] + kx * g.dilation[1]).wrapping_sub(g.pad[1]);
                    if ix < g.in_w {
                        let xv = load_n::<S>(x.add((iy * g.in_w + ix) * c + cv), n);
                        let wv = S::load(w.add((ky * g.k_w + kx) * c_pad + cv));
                        acc = S::fmadd(xv, wv, acc);
                    }
                }
            }
            store_pixel::<S>(y.add((oy * g.out_w + ox) * c + cv), acc, act, n);
        }
    }
}

/// # Safety
/// S's features are present; the checks of [`check`] hold.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise<S: F32Simd>(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    let (xp, wp, bp, yp) = (x.as_ptr(), w.as_ptr(), bias.as_ptr(), y.as_mut_ptr());
    for oy in 0..g.out_h {
        let mut cv = 0;
        while cv < g.in_c {
            let n = S::LANES.min(g.in_c - cv);
            // SAFETY: forwarded checks.
            unsafe {
                if g.k_h == 3 && g.k_w == 3 && n == S::LANES && g.pad == [0; 4] {
                    row_3x3_valid::<S>(g, xp, wp, bp, c_pad, act, yp, oy, cv);
                } else if g.k_h == 3 && g.k_w == 3 {
                    row_fixed::<S, 3, 3>(g, xp, wp, bp, c_pad, act, yp, oy, cv, n);
                } else {
                    row_any::<S>(g, xp, wp, bp, c_pad, act, yp, oy, cv, n);
                }
            }
            cv += S::LANES;
        }
    }
}

fn check(g: &ConvGeometry, x: &[f32], w: &[f32], bias: &[f32], c_pad: usize, y: &[f32]) {
    assert!(g.validate().is_ok() && g.is_depthwise());
    assert!(c_pad >= g.in_c.div_ceil(16) * 16);
    assert!(x.len() >= g.input_len() && y.len() >= g.output_len());
    assert!(w.len() >= g.k_h * g.k_w * c_pad && bias.len() >= c_pad);
}

/// AVX-512 depthwise f32 convolution (weights `[tap][c_pad]`).
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn depthwise_f32_avx512(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    check(g, x, w, bias, c_pad, y);
    assert!(super::has_avx512f());
    // SAFETY: AVX-512 F present (asserted); `check` bounds every access (taps inside the
    // input by the row and column tests, weights and bias inside `c_pad`).
    unsafe { dw_avx512(g, x, w, bias, c_pad, act, y) }
}

/// # Safety
/// The CPU has AVX-512 F; the inputs pass `check` (the wrapper runs it).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx512(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    // SAFETY: the caller's checks; AVX-512 F enabled here.
    unsafe { depthwise::<Avx512>(g, x, w, bias, c_pad, act, y) }
}

/// AVX2 + FMA depthwise f32 convolution.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn depthwise_f32_avx2(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    check(g, x, w, bias, c_pad, y);
    assert!(super::has_avx2_fma());
    // SAFETY: AVX2 and FMA present (asserted); `check` bounds every access.
    unsafe { dw_avx2(g, x, w, bias, c_pad, act, y) }
}

/// # Safety
/// The CPU has AVX2 and FMA; the inputs pass `check` (the wrapper runs it).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx2(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    // SAFETY: the caller's checks; AVX2 and FMA enabled here.
    unsafe { depthwise::<Avx2>(g, x, w, bias, c_pad, act, y) }
}
