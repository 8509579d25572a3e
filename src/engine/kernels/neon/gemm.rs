//! NEON f32 GEMM ([`crate::engine::kernels::gemm::gemm_f32`]): tiles of 8 rows × 8
//! columns or 4 rows × 16, sixteen accumulator registers either way; four depths per
//! step, each row's four activations in one register and multiplied by lane
//! (`fmla v.4s, v.4s, v.s[i]`).

// The register tiles are indexed by row and vector in the same loops as the arrays beside
// them; iterators would hide which register is which.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use super::super::Activation;
use super::super::gemm::PanelsF32;

/// Panel widths this kernel has tiles for.
pub(in crate::engine::kernels) const NEON_F32_NR: [usize; 2] = [8, 16];

/// Widest tile, in columns (the stack buffer a tile writes to).
const MAX_NR: usize = 16;

/// `y[i · ldy + j] = act(bias[j] + Σₖ a[i · lda + kk] · w[kk, j])` for `i < m`, `j < w.n`.
///
/// # Panics
/// If `a` or `y` is too short for `m` rows, or `w` was packed for another width.
pub(in crate::engine::kernels) fn gemm_f32(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    if m == 0 || w.n == 0 {
        return;
    }
    assert!(
        NEON_F32_NR.contains(&w.nr),
        "panels packed for another kernel"
    );
    assert!(lda >= w.k && a.len() >= (m - 1) * lda + w.k);
    assert!(ldy >= w.n && y.len() >= (m - 1) * ldy + w.n);
    assert!(w.data.len() >= w.panels() * w.k * w.nr && w.bias.len() >= w.panels() * w.nr);
    match w.nr {
        8 => drive::<8, 2>(a, lda, m, w, act, y, ldy),
        _ => drive::<4, 4>(a, lda, m, w, act, y, ldy),
    }
}

/// Every panel, `MR` rows at a time (the last tile repeats row `m - 1` for its missing
/// rows and stores only the real ones).
fn drive<const MR: usize, const NV: usize>(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PanelsF32,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) {
    let (k, nr) = (w.k, w.nr);
    debug_assert_eq!(nr, 4 * NV);
    for p in 0..w.panels() {
        let n0 = p * nr;
        let nn = nr.min(w.n - n0);
        let wp = &w.data[p * k * nr..(p + 1) * k * nr];
        let bias = &w.bias[n0..n0 + nr];
        let mut i = 0;
        while i < m {
            let rows: [&[f32]; MR] = std::array::from_fn(|r| {
                let ri = (i + r).min(m - 1);
                &a[ri * lda..ri * lda + k]
            });
            let mut out = [[0.0f32; MAX_NR]; MR];
            // SAFETY: NEON is part of aarch64; each row holds k values, the panel k · nr,
            // the bias nr (sliced above), and `out` rows MAX_NR ≥ nr.
            unsafe { tile::<MR, NV>(&rows, k, wp, bias, &mut out) };
            for (r, o) in out.iter().enumerate().take(m - i) {
                let dst = &mut y[(i + r) * ldy + n0..(i + r) * ldy + n0 + nn];
                for (d, &v) in dst.iter_mut().zip(o) {
                    *d = act.apply(v);
                }
            }
            i += MR;
        }
    }
}

/// One tile: `out[r][j] = bias[j] + Σₖ rows[r][kk] · wp[kk · 4·NV + j]`.
///
/// # Safety
/// Every row holds `k` values; `wp` holds `k · 4·NV`, `bias` 4·NV.
#[inline]
unsafe fn tile<const MR: usize, const NV: usize>(
    rows: &[&[f32]; MR],
    k: usize,
    wp: &[f32],
    bias: &[f32],
    out: &mut [[f32; MAX_NR]; MR],
) {
    let nr = 4 * NV;
    debug_assert!(rows.iter().all(|r| r.len() >= k) && wp.len() >= k * nr && bias.len() >= nr);
    // SAFETY: the caller's bounds; NEON is part of aarch64. Loads of four values at `kk`
    // run while kk + 4 <= k, those of a panel row at kk · nr + 4v + 4 <= k · nr.
    unsafe {
        let w = wp.as_ptr();
        let mut acc: [[float32x4_t; NV]; MR] =
            [std::array::from_fn(|v| vld1q_f32(bias.as_ptr().add(4 * v))); MR];
        let mut kk = 0;
        while kk + 4 <= k {
            let av: [float32x4_t; MR] =
                std::array::from_fn(|r| vld1q_f32(rows[r].as_ptr().add(kk)));
            macro_rules! step {
                ($lane:literal) => {
                    let wv: [float32x4_t; NV] =
                        std::array::from_fn(|v| vld1q_f32(w.add((kk + $lane) * nr + 4 * v)));
                    for r in 0..MR {
                        for v in 0..NV {
                            acc[r][v] = vfmaq_laneq_f32::<$lane>(acc[r][v], wv[v], av[r]);
                        }
                    }
                };
            }
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            kk += 4;
        }
        while kk < k {
            let wv: [float32x4_t; NV] = std::array::from_fn(|v| vld1q_f32(w.add(kk * nr + 4 * v)));
            for r in 0..MR {
                let x = *rows[r].get_unchecked(kk);
                for v in 0..NV {
                    acc[r][v] = vfmaq_n_f32(acc[r][v], wv[v], x);
                }
            }
            kk += 1;
        }
        for r in 0..MR {
            for v in 0..NV {
                vst1q_f32(out[r].as_mut_ptr().add(4 * v), acc[r][v]);
            }
        }
    }
}
