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
