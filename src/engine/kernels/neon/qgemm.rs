//! NEON u8 × i8 GEMM ([`crate::engine::kernels::gemm::gemm_u8i8`]), two families:
//!
//! - with the dot-product extension (`sdot`, Cortex-A55/A76 and later): four products
//!   per i32 lane and instruction, each row's sixteen activations in one register and
//!   read by lane (`sdot v.4s, v.16b, v.4b[i]`);
//! - without it (Cortex-A53/A72, Pi 3 and 4): `smull` into i16 and `sadalp` into i32.
//!
//! Both need i8 × i8: the u8 activations are shifted (`x ^ 0x80 = x − 128` as i8) and
//! `128 · Σₖ w[kk, j]` (kept with the packed panels) is added back, so the i32 sums equal
//! the portable kernel's bit for bit (products of two i8 fit an i16). The sums then go
//! through the portable epilogue row by row, so the outputs are the portable ones.

// The register tiles are indexed by row and vector in the same loops as the arrays beside
// them; iterators would hide which register is which.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;
use std::arch::asm;

use super::super::gemm::{PanelsI8, QDst};
use super::super::qconv::QEpilogue;

/// Panel widths these kernels have tiles for.
pub(in crate::engine::kernels) const NEON_I8_NR: [usize; 2] = [8, 16];

/// Widest tile, in columns (the stack buffer a tile writes to).
const MAX_NR: usize = 16;

/// [`crate::engine::kernels::gemm::gemm_u8i8`] with `sdot` (`dot`) or `smull`.
///
/// # Panics
/// If `a` or `y` is too short for `m` rows, `w` was packed for another width, the
/// epilogue has fewer than `c0 + w.n` channels, or `dot` on a CPU without the extension.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn gemm_u8i8(
    dot: bool,
    a: &[u8],
    lda: usize,
    m: usize,
    w: &PanelsI8,
    epi: &QEpilogue,
    c0: usize,
    mut y: QDst<'_>,
    ldy: usize,
) {
    if m == 0 || w.n == 0 {
        return;
    }
    assert!(
        NEON_I8_NR.contains(&w.nr),
        "panels packed for another kernel"
    );
    assert!(w.k4.is_multiple_of(4) && lda >= w.k4 && a.len() >= (m - 1) * lda + w.k4);
    assert!(w.data.len() >= w.panels() * w.k4 * w.nr);
    assert!(w.shift_sums.len() >= w.panels() * w.nr && epi.channels() >= c0 + w.n);
    let y_len = y.len();
    assert!(ldy >= w.n && y_len >= (m - 1) * ldy + w.n);
    if dot {
        assert!(std::arch::is_aarch64_feature_detected!("dotprod"));
    }
    let k4 = w.k4;
    match (dot, w.nr) {
        (true, 8) => drive::<8>(a, lda, m, w, epi, c0, &mut y, ldy, |rows, wp, out| {
            // SAFETY: the extension is present (asserted); `drive` bounds rows and panel.
            unsafe { tile_dot::<8, 2>(rows, k4, wp, out) }
        }),
        (true, _) => drive::<4>(a, lda, m, w, epi, c0, &mut y, ldy, |rows, wp, out| {
            // SAFETY: as above.
            unsafe { tile_dot::<4, 4>(rows, k4, wp, out) }
        }),
        (false, 8) => drive::<4>(a, lda, m, w, epi, c0, &mut y, ldy, |rows, wp, out| {
            // SAFETY: NEON is part of aarch64; `drive` bounds rows and panel.
            unsafe { tile_mull::<4, 2>(rows, k4, wp, out) }
        }),
        (false, _) => drive::<2>(a, lda, m, w, epi, c0, &mut y, ldy, |rows, wp, out| {
            // SAFETY: as above.
            unsafe { tile_mull::<2, 4>(rows, k4, wp, out) }
        }),
    }
}

/// Every panel, `MR` rows at a time (the last tile repeats row `m - 1` for its missing
/// rows and stores only the real ones): `tile` sums a tile of shifted products, this adds
/// `128 · Σw` back and runs the epilogue.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn drive<const MR: usize>(
    a: &[u8],
    lda: usize,
    m: usize,
    w: &PanelsI8,
    epi: &QEpilogue,
    c0: usize,
    y: &mut QDst<'_>,
    ldy: usize,
    tile: impl Fn(&[&[u8]; MR], &[i8], &mut [[i32; MAX_NR]; MR]),
) {
    let (k4, nr) = (w.k4, w.nr);
    for p in 0..w.panels() {
        let n0 = p * nr;
        let nn = nr.min(w.n - n0);
        let wp = &w.data[p * k4 * nr..(p + 1) * k4 * nr];
        let sums = &w.shift_sums[n0..n0 + nr];
        let mut i = 0;
        while i < m {
            let rows: [&[u8]; MR] = std::array::from_fn(|r| {
                let ri = (i + r).min(m - 1);
                &a[ri * lda..ri * lda + k4]
            });
            let mut out = [[0i32; MAX_NR]; MR];
            tile(&rows, wp, &mut out);
            for (r, o) in out.iter_mut().enumerate().take(m - i) {
                for (v, &s) in o.iter_mut().zip(sums) {
                    *v = v.wrapping_add(s);
                }
                let at = (i + r) * ldy + n0;
                match y {
                    QDst::U8(y) => epi.u8_row(c0 + n0, &o[..nn], &mut y[at..at + nn]),
                    QDst::F32(y) => epi.f32_row(c0 + n0, &o[..nn], &mut y[at..at + nn]),
                }
            }
            i += MR;
        }
    }
}

/// `acc += Σ` over each i32 lane's four i8 products of `w` and `a`'s four bytes `LANE`.
macro_rules! sdot_lane {
    ($acc:expr, $w:expr, $a:expr, $lane:literal) => {
        asm!(
            concat!("sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[", $lane, "]"),
            acc = inout(vreg) $acc,
            w = in(vreg) $w,
            a = in(vreg) $a,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// `acc += Σ` over each i32 lane's four i8 products of `w` and `a`.
macro_rules! sdot {
    ($acc:expr, $w:expr, $a:expr) => {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
            acc = inout(vreg) $acc,
            w = in(vreg) $w,
            a = in(vreg) $a,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// The four bytes at `p`, each shifted by −128 (`x ^ 0x80` read as i8), repeated over
/// the register.
///
/// # Safety
/// Four bytes readable at `p`.
#[inline(always)]
unsafe fn shifted_quad(p: *const u8) -> int8x16_t {
    // SAFETY: the caller's contract; NEON is part of aarch64.
    unsafe {
        let quad = vdupq_n_u32(p.cast::<u32>().read_unaligned());
        vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(quad), vdupq_n_u8(0x80)))
    }
}

/// Shifted sums of one tile with `sdot`: `out[r][j] = Σₖ (rows[r][kk] − 128) · w[kk, j]`
/// for the panel `wp` of 4·NV columns.
///
/// # Safety
/// The CPU has the dot-product extension; every row holds `k4` bytes, `wp` `k4 · 4·NV`.
#[target_feature(enable = "dotprod")]
unsafe fn tile_dot<const MR: usize, const NV: usize>(
    rows: &[&[u8]; MR],
    k4: usize,
    wp: &[i8],
    out: &mut [[i32; MAX_NR]; MR],
) {
    let nr = 4 * NV;
    debug_assert!(rows.iter().all(|r| r.len() >= k4) && wp.len() >= k4 * nr);
    let quads = k4 / 4;
    // SAFETY: the caller's bounds. Sixteen-byte row loads at 4q run while q + 4 <= quads
    // (4q + 16 <= k4), four-byte ones at 4q < k4; panel loads of quad q end at
    // (q · nr + 4v + 4) · 4 <= k4 · nr.
    unsafe {
        let w = wp.as_ptr();
        let flip = vdupq_n_u8(0x80);
        let mut acc: [[int32x4_t; NV]; MR] = [[vdupq_n_s32(0); NV]; MR];
        let mut q = 0;
        while q + 4 <= quads {
            let av: [int8x16_t; MR] = std::array::from_fn(|r| {
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rows[r].as_ptr().add(4 * q)), flip))
            });
            macro_rules! step {
                ($lane:literal) => {
                    let wv: [int8x16_t; NV] =
                        std::array::from_fn(|v| vld1q_s8(w.add(((q + $lane) * nr + 4 * v) * 4)));
                    for r in 0..MR {
                        for v in 0..NV {
                            sdot_lane!(acc[r][v], wv[v], av[r], $lane);
                        }
                    }
                };
            }
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            q += 4;
        }
        while q < quads {
            let wv: [int8x16_t; NV] =
                std::array::from_fn(|v| vld1q_s8(w.add((q * nr + 4 * v) * 4)));
            for r in 0..MR {
                let a = shifted_quad(rows[r].as_ptr().add(4 * q));
                for v in 0..NV {
                    sdot!(acc[r][v], wv[v], a);
                }
            }
            q += 1;
        }
        for r in 0..MR {
            for v in 0..NV {
                vst1q_s32(out[r].as_mut_ptr().add(4 * v), acc[r][v]);
            }
        }
    }
}

/// Shifted sums of one tile with `smull` and `sadalp` (as [`tile_dot`]).
///
/// # Safety
/// Every row holds `k4` bytes, `wp` `k4 · 4·NV`.
unsafe fn tile_mull<const MR: usize, const NV: usize>(
    rows: &[&[u8]; MR],
    k4: usize,
    wp: &[i8],
    out: &mut [[i32; MAX_NR]; MR],
) {
    let nr = 4 * NV;
    debug_assert!(rows.iter().all(|r| r.len() >= k4) && wp.len() >= k4 * nr);
    // SAFETY: the caller's bounds; NEON is part of aarch64. Four-byte row loads at
    // 4q < k4; panel loads of quad q end at (q · nr + 4v + 4) · 4 <= k4 · nr.
    unsafe {
        let w = wp.as_ptr();
        // Per row and 4-column vector, two accumulators: lanes (j, t0+t1), (j, t2+t3),
        // (j+1, …) for columns j, j+1 and the same for j+2, j+3.
        let mut lo: [[int32x4_t; NV]; MR] = [[vdupq_n_s32(0); NV]; MR];
        let mut hi: [[int32x4_t; NV]; MR] = [[vdupq_n_s32(0); NV]; MR];
        for q in 0..k4 / 4 {
            let wv: [int8x16_t; NV] =
                std::array::from_fn(|v| vld1q_s8(w.add((q * nr + 4 * v) * 4)));
            for r in 0..MR {
                let a = shifted_quad(rows[r].as_ptr().add(4 * q));
                for v in 0..NV {
                    let pl = vmull_s8(vget_low_s8(wv[v]), vget_low_s8(a));
                    let ph = vmull_high_s8(wv[v], a);
                    lo[r][v] = vpadalq_s16(lo[r][v], pl);
                    hi[r][v] = vpadalq_s16(hi[r][v], ph);
                }
            }
        }
        for r in 0..MR {
            for v in 0..NV {
                vst1q_s32(
                    out[r].as_mut_ptr().add(4 * v),
                    vpaddq_s32(lo[r][v], hi[r][v]),
                );
            }
        }
    }
}
