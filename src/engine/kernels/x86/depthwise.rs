//! Depthwise f32 convolution over NHWC for AVX-512 and AVX2, per output row and vector of
//! channels. A 3×3 layer keeps its nine weights in registers and reads padding rows from a
//! zero row (no padded copy of the input); other kernels, and a last partial vector of
//! channels, sum each pixel's valid taps' input vectors (padding taps skipped).

use super::gemm::{activate, finish_row, per_activation, scalar_act};
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

/// A pixel's `n` outputs: the vector activation on `acc`, stored at `yp` (Sigmoid and
/// Tanh are applied to the whole output afterwards, see [`depthwise`]).
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
    }
}

/// Output row `oy` of a 3×3 layer for the whole vector of channels at `cv`, the nine
/// weights in registers. A kernel row above or below the input reads `zeros` (a zero
/// input row) instead, so that the rows of the border need no test; the pixels whose
/// kernel leaves the input's width test their three columns, and the rest run two at a
/// time, no tap tested, so that two chains of FMAs (one per pixel, bound by the FMA's
/// latency) overlap. Before, the border pixels tested every tap and loaded its weight, or,
/// where the border was large, the layer first copied its input with a border of zeros:
/// 3-17 % slower on every 3×3 layer of keyword spotting and MobileNet (Zen 3). Rows run
/// outermost (the caller's loop): taking each vector of channels over the whole map
/// instead, the weights loaded once, was slower still, every cache line of the input read
/// once per vector it holds.
///
/// # Safety
/// S's features are present; `oy < g.out_h`; `cv + S::LANES <= g.in_c`; `x`, `zeros`,
/// `w`, `bias`, `y` are as checked by [`check`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_3x3<S: F32Simd>(
    g: &ConvGeometry,
    x: *const f32,
    zeros: *const f32,
    w: *const f32,
    bias: *const f32,
    c_pad: usize,
    act: Activation,
    y: *mut f32,
    oy: usize,
    cv: usize,
) {
    // SAFETY: rows are read only inside the input or the zero row (`in_w · c` values),
    // columns only where tested or inside `interior_cols`; weights and bias inside `c_pad`;
    // outputs inside the map.
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
        let (d1, d2) = (g.dilation[1] * c, 2 * g.dilation[1] * c);
        let step = g.stride[1] * c;
        let inner = g.interior_cols();
        // The nine taps of the pixel whose kernel rows start at `p0`, `p1`, `p2`. The
        // loop below steps three such pointers along the row, so that every load is a base
        // register plus `d1` or `d2` (earlier, 18 addresses computed from one offset were
        // kept on the stack and reloaded before each load).
        macro_rules! pixel {
            ($p0:expr, $p1:expr, $p2:expr) => {{
                let (p0, p1, p2) = ($p0, $p1, $p2);
                let mut a = S::fmadd(S::load(p0), w0, b);
                a = S::fmadd(S::load(p0.add(d1)), w1, a);
                a = S::fmadd(S::load(p0.add(d2)), w2, a);
                a = S::fmadd(S::load(p1), w3, a);
                a = S::fmadd(S::load(p1.add(d1)), w4, a);
                a = S::fmadd(S::load(p1.add(d2)), w5, a);
                a = S::fmadd(S::load(p2), w6, a);
                a = S::fmadd(S::load(p2.add(d1)), w7, a);
                S::fmadd(S::load(p2.add(d2)), w8, a)
            }};
        }
        // Kernel row `ky`'s input row, or the zero row where it lies in the padding.
        let row = |ky: usize| {
            let iy = (oy * g.stride[0] + ky * g.dilation[0]).wrapping_sub(g.pad[0]);
            if iy < g.in_h {
                x.add(iy * g.in_w * c + cv)
            } else {
                zeros.add(cv)
            }
        };
        let (r0, r1, r2) = (row(0), row(1), row(2));
        let yrow = y.add(oy * g.out_w * c + cv);
        // A pixel whose kernel leaves the input's width: its columns tested (the
        // taps in the same order as `pixel!`).
        macro_rules! edge {
            ($ox:expr) => {{
                let ox = $ox;
                let ix0 = (ox * g.stride[1]).wrapping_sub(g.pad[1]);
                let ix = [
                    ix0,
                    ix0.wrapping_add(g.dilation[1]),
                    ix0.wrapping_add(2 * g.dilation[1]),
                ];
                let mut a = b;
                for (r, [wa, wb, wc]) in
                    [(r0, [w0, w1, w2]), (r1, [w3, w4, w5]), (r2, [w6, w7, w8])]
                {
                    if ix[0] < g.in_w {
                        a = S::fmadd(S::load(r.add(ix[0] * c)), wa, a);
                    }
                    if ix[1] < g.in_w {
                        a = S::fmadd(S::load(r.add(ix[1] * c)), wb, a);
                    }
                    if ix[2] < g.in_w {
                        a = S::fmadd(S::load(r.add(ix[2] * c)), wc, a);
                    }
                }
                store_pixel::<S>(yrow.add(ox * c), a, act, S::LANES);
            }};
        }
        for ox in 0..inner.start {
            edge!(ox);
        }
        if !inner.is_empty() {
            // The first tap of output column `inner.start` in each kernel row.
            let first = (inner.start * g.stride[1] - g.pad[1]) * c;
            let (mut q0, mut q1, mut q2) = (r0.add(first), r1.add(first), r2.add(first));
            let mut yp = yrow.add(inner.start * c);
            let mut left = inner.len();
            while left >= 2 {
                let a0 = pixel!(q0, q1, q2);
                let a1 = pixel!(q0.add(step), q1.add(step), q2.add(step));
                store_pixel::<S>(yp, a0, act, S::LANES);
                store_pixel::<S>(yp.add(c), a1, act, S::LANES);
                (q0, q1, q2) = (q0.add(2 * step), q1.add(2 * step), q2.add(2 * step));
                yp = yp.add(2 * c);
                left -= 2;
            }
            if left == 1 {
                store_pixel::<S>(yp, pixel!(q0, q1, q2), act, S::LANES);
            }
        }
        for ox in inner.end.max(inner.start)..g.out_w {
            edge!(ox);
        }
    }
}

/// One output row for channels `cv..cv + n`, any kernel size, each tap tested against the
/// input's bounds.
///
/// # Safety
/// S's features are present; `x`, `w`, `bias`, `y` are as checked by [`check`]; `oy <
/// g.out_h`; `cv < g.in_c` and `n <= S::LANES` channels from it.
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
    // SAFETY: taps are read only inside the input (row and column tested), weights and
    // bias inside their padded arrays, outputs inside row `oy`.
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

/// The whole layer, its row kernels built once per vector activation
/// ([`per_activation`]: with the activation a run-time value the tap weights were reloaded
/// from the stack every pixel, 13.5 cycles a pixel and vector of channels on Zen 3 for nine
/// FMAs). Sigmoid and Tanh run over the stored output at the end.
///
/// # Safety
/// S's features are present; the checks of [`check`] hold.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise<S: F32Simd>(
    g: &ConvGeometry,
    x: &[f32],
    zeros: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    let vector_act = if scalar_act(act) {
        Activation::Identity
    } else {
        act
    };
    // SAFETY: forwarded checks.
    per_activation!(vector_act, a => unsafe { rows::<S>(g, x, zeros, w, bias, c_pad, a, y) });
    if scalar_act(act) {
        // SAFETY: `y` holds the output (checked).
        unsafe { finish_row(y.as_mut_ptr(), g.output_len(), act) };
    }
}

/// Every output row with a vector activation `act` (inlined into each arm of
/// [`per_activation`] in [`depthwise`], so that the variant is a constant in its loops).
///
/// # Safety
/// As [`depthwise`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<S: F32Simd>(
    g: &ConvGeometry,
    x: &[f32],
    zeros: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    let (xp, wp, bp, yp) = (x.as_ptr(), w.as_ptr(), bias.as_ptr(), y.as_mut_ptr());
    let zp = zeros.as_ptr();
    for oy in 0..g.out_h {
        let mut cv = 0;
        while cv < g.in_c {
            let n = S::LANES.min(g.in_c - cv);
            // SAFETY: forwarded checks.
            unsafe {
                if g.k_h == 3 && g.k_w == 3 && n == S::LANES {
                    row_3x3::<S>(g, xp, zp, wp, bp, c_pad, act, yp, oy, cv);
                } else {
                    row_any::<S>(g, xp, wp, bp, c_pad, act, yp, oy, cv, n);
                }
            }
            cv += S::LANES;
        }
    }
}

fn check(
    g: &ConvGeometry,
    x: &[f32],
    zeros: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    y: &[f32],
) {
    assert!(g.validate().is_ok() && g.is_depthwise());
    assert!(zeros.len() >= g.in_w * g.in_c);
    debug_assert!(zeros.iter().all(|&v| v == 0.0));
    assert!(c_pad >= g.in_c.div_ceil(16) * 16);
    assert!(x.len() >= g.input_len() && y.len() >= g.output_len());
    assert!(w.len() >= g.k_h * g.k_w * c_pad && bias.len() >= c_pad);
}

/// AVX-512 depthwise f32 convolution (weights `[tap][c_pad]`).
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn depthwise_f32_avx512(
    g: &ConvGeometry,
    x: &[f32],
    zeros: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    check(g, x, zeros, w, bias, c_pad, y);
    assert!(super::has_avx512f());
    // SAFETY: AVX-512 F present (asserted); `check` bounds every access (taps inside the
    // input by the row and column tests, weights and bias inside `c_pad`).
    unsafe { dw_avx512(g, x, zeros, w, bias, c_pad, act, y) }
}

/// # Safety
/// The CPU has AVX-512 F; the inputs pass `check` (the wrapper runs it).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx512(
    g: &ConvGeometry,
    x: &[f32],
    zeros: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    // SAFETY: the caller's checks; AVX-512 F enabled here.
    unsafe { depthwise::<Avx512>(g, x, zeros, w, bias, c_pad, act, y) }
}

/// AVX2 + FMA depthwise f32 convolution.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn depthwise_f32_avx2(
    g: &ConvGeometry,
    x: &[f32],
    zeros: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    check(g, x, zeros, w, bias, c_pad, y);
    assert!(super::has_avx2_fma());
    // SAFETY: AVX2 and FMA present (asserted); `check` bounds every access.
    unsafe { dw_avx2(g, x, zeros, w, bias, c_pad, act, y) }
}

/// # Safety
/// The CPU has AVX2 and FMA; the inputs pass `check` (the wrapper runs it).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx2(
    g: &ConvGeometry,
    x: &[f32],
    zeros: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    // SAFETY: the caller's checks; AVX2 and FMA enabled here.
    unsafe { depthwise::<Avx2>(g, x, zeros, w, bias, c_pad, act, y) }
}
