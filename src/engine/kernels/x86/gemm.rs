//! f32 GEMM micro-kernels for AVX-512 and AVX2 + FMA: a tile of `MR` rows × `NV` vectors
//! of columns held in registers across the whole depth; each step loads the panel's `NV`
//! weight vectors once and broadcasts one value of each row (folded into the FMA).
//!
//! Every tile keeps `MR · NV` accumulators, `NV` weights and a broadcast in registers (16
//! on AVX2, 32 on AVX-512): AVX2's 32-column tile is 2 × 4, not 3 × 4, whose 17 registers
//! made the compiler spill an accumulator to the stack on every step (float keyword
//! spotting 162 → 107 µs on an AVX2 EPYC once it stopped).

use super::simd::{Avx2, Avx512, F32Simd};
use crate::engine::kernels::conv::{ConvGeometry, PatchOffsets, RowWalk};
use crate::engine::kernels::gemm::PanelsF32;
use crate::engine::kernels::{Activation, F32Path};

/// The activation on one vector (Sigmoid and Tanh pass through: [`finish_row`] applies
/// them in scalar code after the store).
///
/// # Safety
/// S's features are present (registers only; no memory is touched).
#[inline(always)]
pub(super) unsafe fn activate<S: F32Simd>(v: S::V, act: Activation) -> S::V {
    // SAFETY: the caller runs with S's features (the trait's contract).
    unsafe {
        match act {
            Activation::Identity | Activation::Sigmoid | Activation::Tanh => v,
            Activation::Relu => S::max(v, S::zero()),
            Activation::Clip { min, max } => S::min(S::max(v, S::splat(min)), S::splat(max)),
            Activation::LeakyRelu(a) => S::leaky(v, S::splat(a)),
            Activation::HardSwish => {
                let t = S::add(S::mul(v, S::splat(1.0 / 6.0)), S::splat(0.5));
                S::mul(v, S::min(S::max(t, S::zero()), S::splat(1.0)))
            }
        }
    }
}

/// `$body` with `$a` bound to `$act` rebuilt as a constant variant, one copy per variant
/// (a match outside the caller's loops): the kernels inline `$body`, so the activation's
/// match inside them folds away. With the activation a run-time value, each store went
/// through the match, and the scalar Sigmoid/Tanh calls reachable from the loops made the
/// compiler keep registers on the stack (the depthwise kernel's tap weights, reloaded
/// every pixel).
macro_rules! per_activation {
    ($act:expr, $a:ident => $body:expr) => {
        match $act {
            Activation::Identity => {
                let $a = Activation::Identity;
                $body
            }
            Activation::Relu => {
                let $a = Activation::Relu;
                $body
            }
            Activation::Clip { min, max } => {
                let $a = Activation::Clip { min, max };
                $body
            }
            Activation::LeakyRelu(alpha) => {
                let $a = Activation::LeakyRelu(alpha);
                $body
            }
            Activation::HardSwish => {
                let $a = Activation::HardSwish;
                $body
            }
            Activation::Sigmoid => {
                let $a = Activation::Sigmoid;
                $body
            }
            Activation::Tanh => {
                let $a = Activation::Tanh;
                $body
            }
        }
    };
}
pub(super) use per_activation;

/// Whether `act` needs the scalar pass after the vector store.
#[inline(always)]
pub(super) fn scalar_act(act: Activation) -> bool {
    matches!(act, Activation::Sigmoid | Activation::Tanh)
}

/// Applies a scalar-only activation to `n` stored values.
///
/// # Safety
/// `y` is valid for `n` values.
#[inline(always)]
pub(super) unsafe fn finish_row(y: *mut f32, n: usize, act: Activation) {
    for j in 0..n {
        // SAFETY: j < n (the caller's contract).
        unsafe { *y.add(j) = act.apply(*y.add(j)) };
    }
}

/// Rows per tile of `MR`-row kernels: whole tiles, then a tail as one tile when it fills
/// more than half of one, else tiles of 4, 2, 1 rows (the f32 and int8 kernels alike).
#[inline(always)]
pub(super) fn tile_rows(rest: usize, mr: usize) -> usize {
    if rest >= mr || rest * 2 > mr {
        rest.min(mr)
    } else if rest >= 4 {
        4
    } else if rest >= 2 {
        2
    } else {
        1
    }
}

/// One tile: rows `first..first + m` (`m <= MR`; rows past `m` repeat the last and are
/// not stored) of `a`, each at `walk`'s offset, times one panel, columns `0..ncols`
/// stored.
///
/// # Safety
/// S's features are present; `a` holds those rows, `k` values each (or, `IN_PLACE`, row
/// `q`'s value `kk` at `offs[kk]` past its start), `w` the panel's `k · NV · LANES`
/// values, `bias` `NV · LANES`, `y` `m` rows of `ncols` values `ldy` apart.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<S: F32Simd, const MR: usize, const NV: usize, const IN_PLACE: bool>(
    k: usize,
    a: *const f32,
    walk: RowWalk,
    first: usize,
    offs: *const u32,
    m: usize,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    ldy: usize,
    ncols: usize,
    act: Activation,
) {
    // SAFETY: every access below stays inside the ranges of the function's contract.
    unsafe {
        let mut acc = [[S::zero(); NV]; MR];
        for v in 0..NV {
            let b = S::load(bias.add(v * S::LANES));
            for r in 0..MR {
                acc[r][v] = b;
            }
        }
        let mut rows = [a; MR];
        let at = walk.offsets::<MR>(first, first + m - 1);
        for r in 0..MR {
            rows[r] = a.add(at[r]);
        }
        let mut wp = w;
        for kk in 0..k {
            // In place, a convolution's interior pixels: depth `kk` at `offs[kk]`.
            let o = if IN_PLACE { *offs.add(kk) as usize } else { kk };
            let mut wv = [S::zero(); NV];
            for v in 0..NV {
                wv[v] = S::load(wp.add(v * S::LANES));
            }
            for r in 0..MR {
                let av = S::splat(*rows[r].add(o));
                for v in 0..NV {
                    acc[r][v] = S::fmadd(av, wv[v], acc[r][v]);
                }
            }
            wp = wp.add(NV * S::LANES);
        }
        for r in 0..MR {
            if r >= m {
                break;
            }
            let yr = y.add(r * ldy);
            for v in 0..NV {
                let c0 = v * S::LANES;
                if c0 >= ncols {
                    break;
                }
                let out = activate::<S>(acc[r][v], act);
                if ncols - c0 >= S::LANES {
                    S::store(yr.add(c0), out);
                } else {
                    S::store_first(yr.add(c0), out, ncols - c0);
                }
            }
            if scalar_act(act) {
                finish_row(yr, ncols, act);
            }
        }
    }
}

/// Every panel over every tile of `MR` rows (`walk` and `offs` as for [`tile`]), in the
/// heights [`tile_rows`] gives, built once per activation variant ([`per_activation`]):
/// layers of small depth, whose tiles are short, gained most (MobileNet's first 1×1,
/// depth 8 to 16 channels over 48×48 pixels: 17.6 → 9.9 µs).
///
/// # Safety
/// S's features are present; the checks of [`gemm_f32_avx512`] hold.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm<S: F32Simd, const MR: usize, const NV: usize, const IN_PLACE: bool>(
    a: *const f32,
    walk: RowWalk,
    offs: *const u32,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    // SAFETY: the caller's contract.
    per_activation!(act, act => unsafe {
        panels::<S, MR, NV, IN_PLACE>(a, walk, offs, m, w, act, y, ldy)
    })
}

/// [`gemm`] for one activation variant.
///
/// # Safety
/// As [`gemm`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panels<S: F32Simd, const MR: usize, const NV: usize, const IN_PLACE: bool>(
    a: *const f32,
    walk: RowWalk,
    offs: *const u32,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    let (k, n, nr) = (w.k, w.n, NV * S::LANES);
    let yp = y.as_mut_ptr();
    for p in 0..w.panels() {
        let ncols = nr.min(n - p * nr);
        // SAFETY: panel p exists (checked by the caller); rows i.. < m of `a` and `y`
        // exist; tile reads and writes only those.
        unsafe {
            let wp = w.data.as_ptr().add(p * k * nr);
            let bp = w.bias.as_ptr().add(p * nr);
            let yc = yp.add(p * nr);
            let mut i = 0;
            while i < m {
                let mt = tile_rows(m - i, MR);
                let yi = yc.add(i * ldy);
                // The kernel height for `mt` rows: `MR` (padded when over half full) or a
                // tail of 4, 2, 1.
                macro_rules! run {
                    ($mr:expr) => {
                        tile::<S, { $mr }, NV, IN_PLACE>(
                            k, a, walk, i, offs, mt, wp, bp, yi, ldy, ncols, act,
                        )
                    };
                }
                match mt {
                    _ if mt * 2 > MR => run!(MR),
                    4 => run!(4),
                    2 => run!(2),
                    _ => run!(1),
                }
                i += mt;
            }
        }
    }
}

/// Panel widths the AVX-512 kernel has tiles for.
pub(in crate::engine::kernels) const AVX512_NR: [usize; 5] = [16, 32, 48, 64, 128];
/// Panel widths the AVX2 kernel has tiles for.
pub(in crate::engine::kernels) const AVX2_NR: [usize; 4] = [8, 16, 32, 64];

fn check(a: &[f32], lda: usize, m: usize, w: &PanelsF32, y: &[f32], ldy: usize) {
    assert!(m > 0 && w.k > 0 && w.n > 0);
    assert!(a.len() >= (m - 1) * lda + w.k && y.len() >= (m - 1) * ldy + w.n);
    assert!(w.data.len() >= w.panels() * w.k * w.nr && w.bias.len() >= w.panels() * w.nr);
    assert!(lda >= w.k && ldy >= w.n);
}

/// AVX-512 [`crate::engine::kernels::gemm::gemm_f32`].
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn gemm_f32_avx512(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    check(a, lda, m, w, y, ldy);
    assert!(AVX512_NR.contains(&w.nr) && super::has_avx512f());
    // SAFETY: AVX-512 F is present (asserted); `check` bounds every row, panel and bias
    // the kernel touches.
    unsafe {
        gemm_avx512::<false>(
            a.as_ptr(),
            RowWalk::contiguous(lda),
            std::ptr::null(),
            m,
            w,
            act,
            y,
            ldy,
        )
    }
}

/// # Safety
/// The CPU has AVX-512 F; `w.nr` is one of `AVX512_NR`; the checks of `check` hold
/// for `a`, `w` and `y` (or, `IN_PLACE`, the asserts of [`conv_rows_f32`] for the rows at
/// `offs`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx512<const IN_PLACE: bool>(
    a: *const f32,
    walk: RowWalk,
    offs: *const u32,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    // SAFETY: the caller's checks; AVX-512 F is enabled here.
    unsafe {
        match w.nr {
            16 => gemm::<Avx512, 12, 1, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
            32 => gemm::<Avx512, 12, 2, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
            48 => gemm::<Avx512, 8, 3, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
            64 => gemm::<Avx512, 6, 4, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
            _ => gemm::<Avx512, 3, 8, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
        }
    }
}

/// AVX2 + FMA [`crate::engine::kernels::gemm::gemm_f32`].
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn gemm_f32_avx2(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    check(a, lda, m, w, y, ldy);
    assert!(AVX2_NR.contains(&w.nr) && super::has_avx2_fma());
    // SAFETY: AVX2 and FMA are present (asserted); `check` bounds every access.
    unsafe {
        gemm_avx2::<false>(
            a.as_ptr(),
            RowWalk::contiguous(lda),
            std::ptr::null(),
            m,
            w,
            act,
            y,
            ldy,
        )
    }
}

/// # Safety
/// The CPU has AVX2 and FMA; `w.nr` is one of `AVX2_NR`; the checks of `check` hold
/// for `a`, `w` and `y` (or, `IN_PLACE`, the asserts of [`conv_rows_f32`] for the rows at
/// `offs`).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx2<const IN_PLACE: bool>(
    a: *const f32,
    walk: RowWalk,
    offs: *const u32,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    // SAFETY: the caller's checks; AVX2 and FMA are enabled here.
    unsafe {
        match w.nr {
            8 => gemm::<Avx2, 8, 1, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
            16 => gemm::<Avx2, 6, 2, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
            32 => gemm::<Avx2, 2, 4, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
            _ => gemm::<Avx2, 1, 8, IN_PLACE>(a, walk, offs, m, w, act, y, ldy),
        }
    }
}

/// The convolution of output pixels `rows` × `cols`, every tap of which lies inside the
/// input, read from `x` in place (no im2col): a GEMM whose rows are the pixels, each
/// patch's values at `offs` (a step of 1) from its first tap. `y` starts at pixel
/// `(rows.start, cols.start)`, rows `out_c` apart (several output rows only when `cols` is
/// the whole width, so that their pixels follow each other in `y`).
///
/// # Panics
/// If the convolution has groups, an offset leaves the patch, a pixel's kernel leaves
/// the input, a length does not match, `w` was packed for another path, or the CPU lacks
/// `path`'s features.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn conv_rows_f32(
    path: F32Path,
    g: &ConvGeometry,
    x: &[f32],
    offs: &PatchOffsets,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
) {
    assert!(g.groups == 1 && x.len() == g.input_len());
    let run = g.row_walk(&rows, &cols);
    // ok: a documented panic; ConvF32 plans in-place runs of interior pixels only
    let (first, walk) = run.expect("conv_rows_f32: pixels not interior or not in a run");
    let m = rows.len() * cols.len();
    assert!(w.k == g.taps() * g.in_c && w.n == g.out_c && offs.as_slice().len() == w.k);
    // Every value lies within the patch's span from its first tap; the last pixel's patch
    // is inside the input (interior), hence every pixel's.
    let span = ((g.k_h - 1) * g.dilation[0] * g.in_w + (g.k_w - 1) * g.dilation[1] + 1) * g.in_c;
    assert!(offs.max() < span);
    let ldy = g.out_c;
    assert!(y.len() >= (m - 1) * ldy + w.n);
    assert!(w.data.len() >= w.panels() * w.k * w.nr && w.bias.len() >= w.panels() * w.nr);
    let a = x[first..].as_ptr();
    match path {
        F32Path::Avx512 => {
            assert!(AVX512_NR.contains(&w.nr) && super::has_avx512f());
            // SAFETY: AVX-512 F is present (asserted); every pixel's patch lies in `x`
            // (interior, offsets within the span) and the rest is bounded above.
            unsafe { gemm_avx512::<true>(a, walk, offs.as_slice().as_ptr(), m, w, act, y, ldy) }
        }
        F32Path::Avx2 => {
            assert!(AVX2_NR.contains(&w.nr) && super::has_avx2_fma());
            // SAFETY: as above, with AVX2 and FMA.
            unsafe { gemm_avx2::<true>(a, walk, offs.as_slice().as_ptr(), m, w, act, y, ldy) }
        }
        F32Path::Portable => panic!("conv_rows_f32 has no portable kernel"),
    }
}
