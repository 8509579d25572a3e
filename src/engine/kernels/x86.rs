//! x86-64 kernels (AVX2 + FMA), chosen at run time.

use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Whether the CPU has AVX2 and FMA (cached after the first call).
pub(super) fn has_avx2_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// AVX2 [`super::dense`]: four output rows at a time share each load of `x`.
pub(super) fn dense(x: &[f32], w: &[f32], b: &[f32], inputs: usize, outputs: usize, y: &mut [f32]) {
    assert!(w.len() >= inputs * outputs && b.len() >= outputs);
    let rows = x.len() / inputs.max(1);
    assert!(y.len() >= rows * outputs);
    // SAFETY: `has_avx2_fma()` was checked by the caller; the asserts above bound every
    // index the kernel computes (row r < rows, output o < outputs, input i < inputs).
    unsafe { dense_avx2(x, w, b, inputs, outputs, y, rows) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let hi = _mm256_extractf128_ps(v, 1);
    let lo = _mm256_castps256_ps128(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dense_avx2(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    inputs: usize,
    outputs: usize,
    y: &mut [f32],
    rows: usize,
) {
    let xp = x.as_ptr();
    let wp = w.as_ptr();
    let yp = y.as_mut_ptr();
    let main = inputs / 8 * 8;
    for r in 0..rows {
        let xr = unsafe { xp.add(r * inputs) };
        let yr = unsafe { yp.add(r * outputs) };
        let mut o = 0;
        while o + 4 <= outputs {
            let w0 = unsafe { wp.add(o * inputs) };
            let w1 = unsafe { w0.add(inputs) };
            let w2 = unsafe { w1.add(inputs) };
            let w3 = unsafe { w2.add(inputs) };
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            let mut i = 0;
            while i < main {
                // SAFETY: i + 8 <= main <= inputs, so every load stays inside row r of x and
                // rows o..o+4 of w.
                unsafe {
                    let xv = _mm256_loadu_ps(xr.add(i));
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add(i)), xv, a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1.add(i)), xv, a1);
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2.add(i)), xv, a2);
                    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3.add(i)), xv, a3);
                }
                i += 8;
            }
            let mut s = unsafe { [hsum(a0), hsum(a1), hsum(a2), hsum(a3)] };
            while i < inputs {
                // SAFETY: i < inputs.
                unsafe {
                    let xv = *xr.add(i);
                    s[0] += *w0.add(i) * xv;
                    s[1] += *w1.add(i) * xv;
                    s[2] += *w2.add(i) * xv;
                    s[3] += *w3.add(i) * xv;
                }
                i += 1;
            }
            for (k, sk) in s.iter().enumerate() {
                // SAFETY: o + k < outputs.
                unsafe { *yr.add(o + k) = sk + b[o + k] };
            }
            o += 4;
        }
        while o < outputs {
            let wo = unsafe { wp.add(o * inputs) };
            let mut a = _mm256_setzero_ps();
            let mut i = 0;
            while i < main {
                // SAFETY: as above, for one row.
                unsafe {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(wo.add(i)), _mm256_loadu_ps(xr.add(i)), a)
                };
                i += 8;
            }
            let mut s = unsafe { hsum(a) };
            while i < inputs {
                // SAFETY: i < inputs.
                unsafe { s += *wo.add(i) * *xr.add(i) };
                i += 1;
            }
            // SAFETY: o < outputs.
            unsafe { *yr.add(o) = s + b[o] };
            o += 1;
        }
    }
}

/// Whether the CPU has AVX2 (cached after the first call).
pub(super) fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
}

/// Whether the CPU has AVX-VNNI (256-bit `vpdpbusd`) besides AVX2 (cached).
pub(super) fn has_avx_vnni() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni"))
}

fn check_gemv(x: &[u8], w: &[i8], acc: &[i32]) {
    assert!(w.len() >= x.len() * acc.len());
}

/// AVX2 [`super::gemv_u8i8`]: u8 and i8 widened to i16, `vpmaddwd` sums pairs of
/// products into i32 exactly (|255 · 127 · 2| < 2¹⁵ · 2), four output rows per load of `x`.
pub(super) fn gemv_u8i8_avx2(x: &[u8], w: &[i8], acc: &mut [i32]) {
    check_gemv(x, w, acc);
    // SAFETY: the caller checked `has_avx2()`; `check_gemv` bounds every row the kernel reads.
    unsafe { gemv_avx2(x, w, acc) }
}

/// AVX-VNNI [`super::gemv_u8i8`]: `vpdpbusd` adds four u8 × i8 products into each i32 lane
/// without saturation (exact), 32 inputs per instruction.
pub(super) fn gemv_u8i8_vnni(x: &[u8], w: &[i8], acc: &mut [i32]) {
    check_gemv(x, w, acc);
    // SAFETY: the caller checked `has_avx_vnni()`; `check_gemv` bounds every row read.
    unsafe { gemv_vnni(x, w, acc) }
}

#[target_feature(enable = "avx2")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Scalar tail of one row from `start`.
fn tail(x: &[u8], w: &[i8], start: usize) -> i32 {
    x[start..]
        .iter()
        .zip(&w[start..x.len()])
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

#[target_feature(enable = "avx2")]
unsafe fn gemv_avx2(x: &[u8], w: &[i8], acc: &mut [i32]) {
    let k = x.len();
    let main = k / 16 * 16;
    let xp = x.as_ptr();
    let mut o = 0;
    while o + 4 <= acc.len() {
        let rows = [
            &w[o * k..(o + 1) * k],
            &w[(o + 1) * k..(o + 2) * k],
            &w[(o + 2) * k..(o + 3) * k],
            &w[(o + 3) * k..(o + 4) * k],
        ];
        let mut a = [_mm256_setzero_si256(); 4];
        let mut i = 0;
        while i < main {
            // SAFETY: i + 16 <= main <= k: the 16-byte loads stay inside x and each row.
            unsafe {
                let xv = _mm256_cvtepu8_epi16(_mm_loadu_si128(xp.add(i).cast()));
                for (ak, row) in a.iter_mut().zip(&rows) {
                    let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.as_ptr().add(i).cast()));
                    *ak = _mm256_add_epi32(*ak, _mm256_madd_epi16(xv, wv));
                }
            }
            i += 16;
        }
        for (j, row) in rows.iter().enumerate() {
            acc[o + j] = hsum_epi32(a[j]) + tail(x, row, main);
        }
        o += 4;
    }
    while o < acc.len() {
        let row = &w[o * k..(o + 1) * k];
        let mut a = _mm256_setzero_si256();
        let mut i = 0;
        while i < main {
            // SAFETY: as above, for one row.
            unsafe {
                let xv = _mm256_cvtepu8_epi16(_mm_loadu_si128(xp.add(i).cast()));
                let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.as_ptr().add(i).cast()));
                a = _mm256_add_epi32(a, _mm256_madd_epi16(xv, wv));
            }
            i += 16;
        }
        acc[o] = hsum_epi32(a) + tail(x, row, main);
        o += 1;
    }
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn gemv_vnni(x: &[u8], w: &[i8], acc: &mut [i32]) {
    let k = x.len();
    let main = k / 32 * 32;
    let xp = x.as_ptr();
    let mut o = 0;
    while o + 4 <= acc.len() {
        let rows = [
            &w[o * k..(o + 1) * k],
            &w[(o + 1) * k..(o + 2) * k],
            &w[(o + 2) * k..(o + 3) * k],
            &w[(o + 3) * k..(o + 4) * k],
        ];
        let mut a = [_mm256_setzero_si256(); 4];
        let mut i = 0;
        while i < main {
            // SAFETY: i + 32 <= main <= k: the 32-byte loads stay inside x and each row.
            unsafe {
                let xv = _mm256_loadu_si256(xp.add(i).cast());
                for (ak, row) in a.iter_mut().zip(&rows) {
                    let wv = _mm256_loadu_si256(row.as_ptr().add(i).cast());
                    *ak = _mm256_dpbusd_avx_epi32(*ak, xv, wv);
                }
            }
            i += 32;
        }
        for (j, row) in rows.iter().enumerate() {
            acc[o + j] = hsum_epi32(a[j]) + tail(x, row, main);
        }
        o += 4;
    }
    while o < acc.len() {
        let row = &w[o * k..(o + 1) * k];
        let mut a = _mm256_setzero_si256();
        let mut i = 0;
        while i < main {
            // SAFETY: as above, for one row.
            unsafe {
                let xv = _mm256_loadu_si256(xp.add(i).cast());
                let wv = _mm256_loadu_si256(row.as_ptr().add(i).cast());
                a = _mm256_dpbusd_avx_epi32(a, xv, wv);
            }
            i += 32;
        }
        acc[o] = hsum_epi32(a) + tail(x, row, main);
        o += 1;
    }
}
