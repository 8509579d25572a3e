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

/// The eight lane sums of `a[0..8]`, in order, in one vector (integer adds: exact).
#[target_feature(enable = "avx2")]
fn reduce8(a: &[__m256i; 8]) -> __m256i {
    let s01 = _mm256_hadd_epi32(a[0], a[1]);
    let s23 = _mm256_hadd_epi32(a[2], a[3]);
    let s45 = _mm256_hadd_epi32(a[4], a[5]);
    let s67 = _mm256_hadd_epi32(a[6], a[7]);
    let s0123 = _mm256_hadd_epi32(s01, s23);
    let s4567 = _mm256_hadd_epi32(s45, s67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256(s0123, s4567, 0x20),
        _mm256_permute2x128_si256(s0123, s4567, 0x31),
    )
}

/// Scalar `Σ x[i] · w[i]` over `start..x.len()`.
fn tail(x: &[u8], w: &[i8], start: usize) -> i32 {
    x[start..]
        .iter()
        .zip(&w[start..x.len()])
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

/// One 16-input step of the AVX2 kernel: `acc += widen(x) · widen(w)` pairwise.
#[target_feature(enable = "avx2")]
fn step_avx2(acc: __m256i, xv: __m256i, w: &[i8]) -> __m256i {
    let w = &w[..16];
    // SAFETY: `w` holds 16 bytes (the slice above checks it).
    let wv = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(w.as_ptr().cast()) });
    _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv))
}

/// One 32-input step of the VNNI kernel: `acc += Σ₄ x · w` per lane.
#[target_feature(enable = "avx2,avxvnni")]
fn step_vnni(acc: __m256i, xv: __m256i, w: &[i8]) -> __m256i {
    let w = &w[..32];
    // SAFETY: `w` holds 32 bytes (the slice above checks it).
    let wv = unsafe { _mm256_loadu_si256(w.as_ptr().cast()) };
    _mm256_dpbusd_avx_epi32(acc, xv, wv)
}

#[target_feature(enable = "avx2")]
unsafe fn gemv_avx2(x: &[u8], w: &[i8], acc: &mut [i32]) {
    let k = x.len();
    let main = k / 16 * 16;
    let load_x = |i: usize| {
        let xs = &x[i..i + 16];
        // SAFETY: `xs` holds 16 bytes.
        _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(xs.as_ptr().cast()) })
    };
    let mut o = 0;
    while o + 8 <= acc.len() {
        let rows = &w[o * k..(o + 8) * k];
        let mut a = [_mm256_setzero_si256(); 8];
        let mut i = 0;
        while i < main {
            let xv = load_x(i);
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = step_avx2(*aj, xv, &rows[j * k + i..]);
            }
            i += 16;
        }
        store8(&a, x, rows, k, main, &mut acc[o..o + 8]);
        o += 8;
    }
    while o < acc.len() {
        let row = &w[o * k..(o + 1) * k];
        let mut a = _mm256_setzero_si256();
        let mut i = 0;
        while i < main {
            a = step_avx2(a, load_x(i), &row[i..]);
            i += 16;
        }
        acc[o] = hsum_epi32(a).wrapping_add(tail(x, row, main));
        o += 1;
    }
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn gemv_vnni(x: &[u8], w: &[i8], acc: &mut [i32]) {
    let k = x.len();
    let main = k / 32 * 32;
    let load_x = |i: usize| {
        let xs = &x[i..i + 32];
        // SAFETY: `xs` holds 32 bytes.
        unsafe { _mm256_loadu_si256(xs.as_ptr().cast()) }
    };
    let mut o = 0;
    while o + 8 <= acc.len() {
        let rows = &w[o * k..(o + 8) * k];
        let mut a = [_mm256_setzero_si256(); 8];
        let mut i = 0;
        while i < main {
            let xv = load_x(i);
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = step_vnni(*aj, xv, &rows[j * k + i..]);
            }
            i += 32;
        }
        store8(&a, x, rows, k, main, &mut acc[o..o + 8]);
        o += 8;
    }
    while o < acc.len() {
        let row = &w[o * k..(o + 1) * k];
        let mut a = _mm256_setzero_si256();
        let mut i = 0;
        while i < main {
            a = step_vnni(a, load_x(i), &row[i..]);
            i += 32;
        }
        acc[o] = hsum_epi32(a).wrapping_add(tail(x, row, main));
        o += 1;
    }
}

/// Writes the sums of eight accumulators (rows `rows[j·k..]`) plus their scalar tails.
#[inline]
#[target_feature(enable = "avx2")]
fn store8(a: &[__m256i; 8], x: &[u8], rows: &[i8], k: usize, main: usize, out: &mut [i32]) {
    let out = &mut out[..8];
    // SAFETY: `out` holds eight i32 (the slice above checks it).
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), reduce8(a)) };
    if main < k {
        for (j, o) in out.iter_mut().enumerate() {
            *o = o.wrapping_add(tail(x, &rows[j * k..(j + 1) * k], main));
        }
    }
}

/// AVX2 [`super::requant_u8`], four channels at a time in 64-bit lanes: `vpmuldq` forms the
/// exact product; AVX2 has no 64-bit arithmetic right shift, so 2⁶² is added first (the
/// product plus rounding term lies in (−2⁶², 2⁶² + 2⁶¹)) and `2⁶² >> shift` subtracted
/// after a logical shift — the same floor division, exactly.
pub(super) fn requant_u8_avx2(
    multipliers: &[super::int8::FixedMultiplier],
    bias: &[i64],
    zero_point: u8,
    relu: bool,
    acc: &[i32],
    y: &mut [u8],
) {
    let n = y
        .len()
        .min(acc.len())
        .min(multipliers.len())
        .min(bias.len());
    // SAFETY: the caller checked `has_avx2()`; every slice is cut to the same length `n`
    // and the kernel reads and writes only below it.
    unsafe {
        requant_avx2(
            &multipliers[..n],
            &bias[..n],
            zero_point,
            relu,
            &acc[..n],
            &mut y[..n],
        )
    }
}

#[target_feature(enable = "avx2")]
unsafe fn requant_avx2(
    multipliers: &[super::int8::FixedMultiplier],
    bias: &[i64],
    zero_point: u8,
    relu: bool,
    acc: &[i32],
    y: &mut [u8],
) {
    let n = y.len();
    let zp = _mm256_set1_epi64x(zero_point as i64);
    let lo = _mm256_set1_epi64x(if relu { zero_point as i64 } else { 0 });
    let hi = _mm256_set1_epi64x(255);
    let imax = _mm256_set1_epi64x(i32::MAX as i64);
    let imin = _mm256_set1_epi64x(i32::MIN as i64);
    let one = _mm256_set1_epi64x(1);
    let big = _mm256_set1_epi64x(1 << 62);
    let pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    let mut c = 0;
    while c + 4 <= n {
        let (a4, b4, m4) = (&acc[c..c + 4], &bias[c..c + 4], &multipliers[c..c + 4]);
        // SAFETY: a4 holds 16 bytes, b4 and m4 32 (FixedMultiplier is repr(C) i32 + u32).
        let (a, b, ms) = unsafe {
            (
                _mm256_cvtepi32_epi64(_mm_loadu_si128(a4.as_ptr().cast())),
                _mm256_loadu_si256(b4.as_ptr().cast()),
                _mm256_loadu_si256(m4.as_ptr().cast()),
            )
        };
        let a = _mm256_add_epi64(a, b);
        let a = _mm256_blendv_epi8(a, imax, _mm256_cmpgt_epi64(a, imax));
        let a = _mm256_blendv_epi8(a, imin, _mm256_cmpgt_epi64(imin, a));
        let shift = _mm256_srli_epi64(ms, 32);
        let rnd = _mm256_sllv_epi64(one, _mm256_sub_epi64(shift, one));
        let p = _mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epi32(a, ms), rnd), big);
        let q = _mm256_sub_epi64(_mm256_srlv_epi64(p, shift), _mm256_srlv_epi64(big, shift));
        let q = _mm256_add_epi64(q, zp);
        let q = _mm256_blendv_epi8(q, hi, _mm256_cmpgt_epi64(q, hi));
        let q = _mm256_blendv_epi8(q, lo, _mm256_cmpgt_epi64(lo, q));
        let d = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(q, pick));
        let d = _mm_packus_epi16(_mm_packus_epi32(d, d), _mm_setzero_si128());
        let v = _mm_cvtsi128_si32(d) as u32;
        y[c..c + 4].copy_from_slice(&v.to_le_bytes());
        c += 4;
    }
    for i in c..n {
        y[i] = super::int8::u8_one(acc[i], multipliers[i], bias[i], zero_point, relu);
    }
}
