//! x86-64 kernels (AVX2 + FMA), chosen at run time.

use std::arch::x86_64::*;
use std::sync::OnceLock;

pub(super) mod depthwise;
pub(super) mod gemm;
pub(super) mod qadd;
pub(super) mod qdepthwise;
pub(super) mod qgemm;
mod simd;

/// Whether the CPU has AVX-512 F, BW, VL and VNNI (cached).
pub(super) fn has_avx512_vnni() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        has_avx512f()
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// Whether the CPU has AVX-512 VBMI (`vpermb`) besides [`has_avx512_vnni`] (cached).
pub(super) fn has_avx512_vbmi() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| has_avx512_vnni() && is_x86_feature_detected!("avx512vbmi"))
}

/// Whether the CPU has AVX-512 F (cached after the first call).
pub(super) fn has_avx512f() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && has_avx2_fma())
}

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

/// # Safety
/// The CPU has AVX2 and FMA (registers only; no memory is touched).
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let hi = _mm256_extractf128_ps(v, 1);
    let lo = _mm256_castps256_ps128(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU has AVX2 and FMA; `x` holds `rows · inputs` values, `w` `outputs · inputs`,
/// `b` `outputs` and `y` `rows · outputs` (the wrapper [`dense`] asserts all four).
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
        // SAFETY: r < rows, and the caller checked x holds rows × inputs values and y
        // rows × outputs, so both offsets stay inside their slices.
        let xr = unsafe { xp.add(r * inputs) };
        // SAFETY: as above.
        let yr = unsafe { yp.add(r * outputs) };
        let mut o = 0;
        while o + 4 <= outputs {
            // SAFETY: o + 4 <= outputs and w holds outputs × inputs values, so rows o..o+4
            // of w start inside it.
            let w0 = unsafe { wp.add(o * inputs) };
            // SAFETY: as above (row o + 1).
            let w1 = unsafe { w0.add(inputs) };
            // SAFETY: as above (row o + 2).
            let w2 = unsafe { w1.add(inputs) };
            // SAFETY: as above (row o + 3).
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
            // SAFETY: hsum needs AVX2, which this function's callers checked.
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
            // SAFETY: o < outputs, so row o of w starts inside it.
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
            // SAFETY: as for the four-row hsum above.
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

/// Whether the CPU runs a 256-bit `vpdpbusd` in either encoding: AVX-VNNI (VEX), or
/// AVX-512 VNNI with VL (EVEX; Ice Lake, Sapphire Rapids, Zen 4, which may lack AVX-VNNI).
pub(super) fn has_vnni_256() -> bool {
    has_avx_vnni() || has_avx512_vnni()
}

/// A 256-bit `vpdpbusd` (four u8 × i8 products added to each i32 lane, exact: no
/// saturation) in one of its two encodings. Its one method is `#[inline(always)]` and only
/// ever runs inlined into a `#[target_feature]` function enabling the encoding.
trait Dpbusd {
    /// `acc + Σ₄ x · w` per 32-bit lane.
    ///
    /// # Safety
    /// The CPU has the encoding's features.
    unsafe fn dp(acc: __m256i, x: __m256i, w: __m256i) -> __m256i;
}

/// AVX-VNNI (VEX-encoded `vpdpbusd`).
struct AvxVnni;
/// AVX-512 VNNI + VL (EVEX-encoded `vpdpbusd` on 256-bit registers).
struct Avx512Vnni;

impl Dpbusd for AvxVnni {
    #[inline(always)]
    unsafe fn dp(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        // SAFETY: the trait's contract (AVX-VNNI present).
        unsafe { _mm256_dpbusd_avx_epi32(acc, x, w) }
    }
}

impl Dpbusd for Avx512Vnni {
    #[inline(always)]
    unsafe fn dp(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        // SAFETY: the trait's contract (AVX-512 VNNI and VL present).
        unsafe { _mm256_dpbusd_epi32(acc, x, w) }
    }
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

/// VNNI [`super::gemv_u8i8`]: `vpdpbusd` adds four u8 × i8 products into each i32 lane
/// without saturation (exact), 32 inputs per instruction; AVX-VNNI's encoding where the CPU
/// has it, else AVX-512 VNNI's.
///
/// # Panics
/// Unless [`has_vnni_256`].
pub(super) fn gemv_u8i8_vnni(x: &[u8], w: &[i8], acc: &mut [i32]) {
    check_gemv(x, w, acc);
    if has_avx_vnni() {
        // SAFETY: AVX-VNNI is present; `check_gemv` bounds every row read.
        unsafe { gemv_vnni_avx(x, w, acc) }
    } else {
        gemv_u8i8_vnni_evex(x, w, acc)
    }
}

/// [`gemv_u8i8_vnni`] in the AVX-512 encoding, whatever else the CPU has.
///
/// # Panics
/// Unless [`has_avx512_vnni`].
pub(super) fn gemv_u8i8_vnni_evex(x: &[u8], w: &[i8], acc: &mut [i32]) {
    check_gemv(x, w, acc);
    assert!(has_avx512_vnni());
    // SAFETY: AVX-512 VNNI and VL are present; `check_gemv` bounds every row read.
    unsafe { gemv_vnni_evex(x, w, acc) }
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
///
/// # Safety
/// The CPU has `D`'s encoding (inlined into a function enabling it).
#[inline(always)]
unsafe fn step_vnni<D: Dpbusd>(acc: __m256i, xv: __m256i, w: &[i8]) -> __m256i {
    let w = &w[..32];
    // SAFETY: `w` holds 32 bytes (the slice above checks it); `D`'s features per the
    // contract.
    unsafe { D::dp(acc, xv, _mm256_loadu_si256(w.as_ptr().cast())) }
}

/// # Safety
/// The CPU has AVX2. Every load reads a slice cut (and so bounds-checked) just before it.
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

/// # Safety
/// The CPU has AVX2 and AVX-VNNI; [`gemv_vnni`]'s.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn gemv_vnni_avx(x: &[u8], w: &[i8], acc: &mut [i32]) {
    // SAFETY: the function's contract.
    unsafe { gemv_vnni::<AvxVnni>(x, w, acc) }
}

/// # Safety
/// The CPU has AVX-512 VNNI and VL; [`gemv_vnni`]'s.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn gemv_vnni_evex(x: &[u8], w: &[i8], acc: &mut [i32]) {
    // SAFETY: the function's contract.
    unsafe { gemv_vnni::<Avx512Vnni>(x, w, acc) }
}

/// # Safety
/// Inlined into a function enabling AVX2 and `D`'s encoding. Every load reads a slice cut
/// (and so bounds-checked) just before it.
#[inline(always)]
unsafe fn gemv_vnni<D: Dpbusd>(x: &[u8], w: &[i8], acc: &mut [i32]) {
    // SAFETY: the function's contract (AVX2 and `D`'s features; bounds as documented).
    unsafe {
        let k = x.len();
        let main = k / 32 * 32;
        let load_x = |i: usize| {
            let xs = &x[i..i + 32];
            // `xs` holds 32 bytes.
            _mm256_loadu_si256(xs.as_ptr().cast())
        };
        let mut o = 0;
        while o + 8 <= acc.len() {
            let rows = &w[o * k..(o + 8) * k];
            let mut a = [_mm256_setzero_si256(); 8];
            let mut i = 0;
            while i < main {
                let xv = load_x(i);
                for (j, aj) in a.iter_mut().enumerate() {
                    *aj = step_vnni::<D>(*aj, xv, &rows[j * k + i..]);
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
                a = step_vnni::<D>(a, load_x(i), &row[i..]);
                i += 32;
            }
            acc[o] = hsum_epi32(a).wrapping_add(tail(x, row, main));
            o += 1;
        }
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

/// # Safety
/// The CPU has AVX2. Every load reads a four-value slice cut (and so bounds-checked) just
/// before it; `FixedMultiplier` is `repr(C)` (i32, u32), eight bytes a value.
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

/// Rows per group of the packed int8 layouts: one i32 lane per row in a 256-bit vector.
const PACK_ROWS: usize = 8;

/// The VNNI layout of a row-major `[rows, depth]` int8 matrix: for each group of eight
/// rows and each chunk of four inputs, 32 bytes holding row `j`'s four weights at `4j`
/// (rows and inputs beyond the matrix are zero).
pub(super) fn pack_vnni(w: &[i8], rows: usize, depth: usize) -> Vec<i8> {
    let chunks = depth.div_ceil(4);
    let mut p = vec![0i8; rows.div_ceil(PACK_ROWS) * chunks * 32];
    for (r, row) in w.chunks_exact(depth.max(1)).take(rows).enumerate() {
        let (g, j) = (r / PACK_ROWS, r % PACK_ROWS);
        for (i, &v) in row.iter().enumerate() {
            p[(g * chunks + i / 4) * 32 + j * 4 + i % 4] = v;
        }
    }
    p
}

/// The AVX2 layout: for each group of eight rows and each pair of inputs, eight pairs of
/// i8 (row `j`'s two weights at `2j`), zero beyond the matrix; the kernel widens each
/// 16-byte block to i16 as it loads it (`vpmovsxbw`), which reads half the bytes of
/// weights stored as i16 (the int8 autoencoder's 0.26 M weights then fit in a 512 KiB L2).
pub(super) fn pack_avx2(w: &[i8], rows: usize, depth: usize) -> Vec<i8> {
    let pairs = depth.div_ceil(2);
    let mut p = vec![0i8; rows.div_ceil(PACK_ROWS) * pairs * 16];
    for (r, row) in w.chunks_exact(depth.max(1)).take(rows).enumerate() {
        let (g, j) = (r / PACK_ROWS, r % PACK_ROWS);
        for (i, &v) in row.iter().enumerate() {
            p[(g * pairs + i / 2) * 16 + j * 2 + i % 2] = v;
        }
    }
    p
}

/// `x[4c..4c + 4]` as one little-endian word, zero-padded past the end of `x`.
#[inline]
fn x_quad(x: &[u8], c: usize) -> i32 {
    let mut b = [0u8; 4];
    for (k, v) in b.iter_mut().enumerate() {
        *v = x.get(4 * c + k).copied().unwrap_or(0);
    }
    i32::from_le_bytes(b)
}

/// `x[2c]` and `x[2c + 1]` as two i16 in one word, zero-padded past the end of `x`.
#[inline]
fn x_pair(x: &[u8], c: usize) -> i32 {
    let lo = x.get(2 * c).copied().unwrap_or(0) as i32;
    let hi = x.get(2 * c + 1).copied().unwrap_or(0) as i32;
    lo | (hi << 16)
}

/// A mask of the first `n` (at most 8) 32-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn first_lanes(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Stores the eight lanes of `v` (rows `8g..8g + 8`) into `acc`, as many as it holds.
#[inline]
#[target_feature(enable = "avx2")]
fn store_group(v: __m256i, acc: &mut [i32], g: usize) {
    let start = g * PACK_ROWS;
    if let Some(out) = acc.get_mut(start..start + PACK_ROWS) {
        // SAFETY: `out` holds eight i32.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
    } else if let Some(out) = acc.get_mut(start..) {
        // SAFETY: the mask enables only the first `out.len()` lanes (< 8), which `out`
        // holds; masked-off lanes are not written.
        unsafe { _mm256_maskstore_epi32(out.as_mut_ptr(), first_lanes(out.len()), v) };
    }
}

/// Packed-VNNI [`super::gemv_u8i8`]: each `vpdpbusd` adds one broadcast chunk of four
/// inputs times the matching four weights of eight rows into the eight rows' lanes, so no
/// horizontal sums are needed; four row groups share each broadcast.
pub(super) fn gemv_u8i8_vnni_packed(x: &[u8], p: &[i8], rows: usize, acc: &mut [i32]) {
    let chunks = x.len().div_ceil(4);
    assert!(p.len() >= rows.div_ceil(PACK_ROWS) * chunks * 32 && acc.len() == rows);
    if has_avx_vnni() {
        // SAFETY: AVX-VNNI is present; the assert bounds every 32-byte load at
        // `(g · chunks + c) · 32` for g < rows / 8 rounded up and c < chunks.
        unsafe { gemv_vnni_packed_avx(x, p, rows, acc) }
    } else {
        gemv_u8i8_vnni_packed_evex(x, p, rows, acc)
    }
}

/// [`gemv_u8i8_vnni_packed`] in the AVX-512 encoding, whatever else the CPU has.
///
/// # Panics
/// Unless [`has_avx512_vnni`], or if `p` or `acc` is too short.
pub(super) fn gemv_u8i8_vnni_packed_evex(x: &[u8], p: &[i8], rows: usize, acc: &mut [i32]) {
    let chunks = x.len().div_ceil(4);
    assert!(p.len() >= rows.div_ceil(PACK_ROWS) * chunks * 32 && acc.len() == rows);
    assert!(has_avx512_vnni());
    // SAFETY: AVX-512 VNNI and VL are present; the assert bounds every load as above.
    unsafe { gemv_vnni_packed_evex(x, p, rows, acc) }
}

/// # Safety
/// The CPU has AVX2 and AVX-VNNI; [`gemv_packed`]'s bounds for [`Quads`].
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn gemv_vnni_packed_avx(x: &[u8], p: &[i8], rows: usize, acc: &mut [i32]) {
    // SAFETY: the function's contract.
    unsafe { gemv_packed::<Quads<AvxVnni>>(x, p, rows, acc) }
}

/// # Safety
/// The CPU has AVX-512 VNNI and VL; [`gemv_packed`]'s bounds for [`Quads`].
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn gemv_vnni_packed_evex(x: &[u8], p: &[i8], rows: usize, acc: &mut [i32]) {
    // SAFETY: the function's contract.
    unsafe { gemv_packed::<Quads<Avx512Vnni>>(x, p, rows, acc) }
}

/// One step of a packed GEMV kernel: a chunk of inputs broadcast to every lane, times the
/// matching weights of eight rows (one row per 32-bit lane), added to the rows' sums.
trait PackedStep {
    /// Inputs per chunk.
    const INPUTS: usize;
    /// Bytes of weights per chunk of a group of eight rows.
    const BYTES: usize;
    /// Chunk `c` of `x`, zero-padded past its end, broadcast.
    ///
    /// # Safety
    /// (Every method.) Inlined into a function enabling the step's features; pointers are
    /// valid for what the method reads.
    unsafe fn chunk(x: &[u8], c: usize) -> __m256i;
    /// The weights of one chunk of a row group at `p`.
    unsafe fn weights(p: *const i8) -> __m256i;
    /// `acc` plus the chunk's products, per row.
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i;
}

/// VNNI chunks: four inputs, `vpdpbusd` in `D`'s encoding.
struct Quads<D>(std::marker::PhantomData<D>);
/// AVX2 chunks: two inputs widened to i16, `vpmaddwd` (exact: |2 · 255 · 128| < 2³¹).
struct Pairs;

impl<D: Dpbusd> PackedStep for Quads<D> {
    const INPUTS: usize = 4;
    const BYTES: usize = 32;
    #[inline(always)]
    unsafe fn chunk(x: &[u8], c: usize) -> __m256i {
        let word = if 4 * c + 4 <= x.len() {
            // SAFETY: 4c + 4 <= x.len().
            unsafe { x.as_ptr().add(4 * c).cast::<i32>().read_unaligned() }
        } else {
            x_quad(x, c)
        };
        // SAFETY: the trait's contract (AVX2).
        unsafe { _mm256_set1_epi32(word) }
    }
    #[inline(always)]
    unsafe fn weights(p: *const i8) -> __m256i {
        // SAFETY: the trait's contract: 32 readable bytes.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        // SAFETY: the trait's contract (`D`'s encoding).
        unsafe { D::dp(acc, x, w) }
    }
}

impl PackedStep for Pairs {
    const INPUTS: usize = 2;
    const BYTES: usize = 16;
    #[inline(always)]
    unsafe fn chunk(x: &[u8], c: usize) -> __m256i {
        let word = if 2 * c + 2 <= x.len() {
            // SAFETY: 2c + 2 <= x.len().
            let v = unsafe { x.as_ptr().add(2 * c).cast::<u16>().read_unaligned() } as i32;
            (v & 0xff) | ((v >> 8) << 16)
        } else {
            x_pair(x, c)
        };
        // SAFETY: the trait's contract (AVX2).
        unsafe { _mm256_set1_epi32(word) }
    }
    #[inline(always)]
    unsafe fn weights(p: *const i8) -> __m256i {
        // SAFETY: the trait's contract: 16 readable bytes, widened as loaded (`vpmovsxbw`).
        unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        // SAFETY: the trait's contract (AVX2).
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(x, w)) }
    }
}

/// # Safety
/// Inlined into a function enabling AVX2 and `S`'s features; `p` holds `rows / 8` (rounded
/// up) groups of `x.len() / S::INPUTS` (rounded up) chunks of `S::BYTES` and `acc` holds
/// `rows` sums (the wrappers assert both).
#[inline(always)]
unsafe fn gemv_packed<S: PackedStep>(x: &[u8], p: &[i8], rows: usize, acc: &mut [i32]) {
    let groups = rows.div_ceil(PACK_ROWS);
    let mut g = 0;
    while g + 4 <= groups {
        // SAFETY: groups g..g + 4 exist (the caller's bounds hold for every g < groups).
        unsafe { packed_block::<S, 4, 2>(x, p, g, acc) };
        g += 4;
    }
    // SAFETY: as above, for the remaining groups.
    unsafe {
        match groups - g {
            3 => packed_block::<S, 3, 2>(x, p, g, acc),
            2 => packed_block::<S, 2, 4>(x, p, g, acc),
            1 => packed_block::<S, 1, 4>(x, p, g, acc),
            _ => {}
        }
    }
}

/// Row groups `g0..g0 + G` of [`gemv_packed`], each in `CH` chains (chunk `c` goes to chain
/// `c mod CH`) that hide the step's latency; every broadcast of `x` serves all groups.
///
/// # Safety
/// Inlined into a function enabling AVX2 and `S`'s features; `p` must hold groups
/// `g0..g0 + G` of the packed layout for `x.len()` inputs.
#[inline(always)]
unsafe fn packed_block<S: PackedStep, const G: usize, const CH: usize>(
    x: &[u8],
    p: &[i8],
    g0: usize,
    acc: &mut [i32],
) {
    // SAFETY: the function's contract (AVX2 and `S`'s features; bounds as documented).
    unsafe {
        let chunks = x.len().div_ceil(S::INPUTS);
        let pp = p.as_ptr();
        // Group g0 + j and chunk c exist (the function's contract).
        let load = |j: usize, c: usize| S::weights(pp.add(((g0 + j) * chunks + c) * S::BYTES));
        let mut a = [[_mm256_setzero_si256(); G]; CH];
        let mut c = 0;
        while c + CH <= chunks {
            for (k, ak) in a.iter_mut().enumerate() {
                let xv = S::chunk(x, c + k);
                for (j, aj) in ak.iter_mut().enumerate() {
                    *aj = S::dot(*aj, xv, load(j, c + k));
                }
            }
            c += CH;
        }
        while c < chunks {
            let xv = S::chunk(x, c);
            for (j, aj) in a[0].iter_mut().enumerate() {
                *aj = S::dot(*aj, xv, load(j, c));
            }
            c += 1;
        }
        for j in 0..G {
            let mut sum = a[0][j];
            for ak in &a[1..] {
                sum = _mm256_add_epi32(sum, ak[j]);
            }
            store_group(sum, acc, g0 + j);
        }
    }
}

/// Packed-AVX2 [`super::gemv_u8i8`]: each `vpmaddwd` multiplies one broadcast pair of
/// inputs (widened to i16) by the matching two weights of eight rows and sums each pair
/// into the row's lane (exact: |2 · 255 · 128| < 2³¹); four row groups share a broadcast.
pub(super) fn gemv_u8i8_avx2_packed(x: &[u8], p: &[i8], rows: usize, acc: &mut [i32]) {
    let pairs = x.len().div_ceil(2);
    assert!(p.len() >= rows.div_ceil(PACK_ROWS) * pairs * 16 && acc.len() == rows);
    // SAFETY: the caller checked `has_avx2()`; the assert bounds every 16-byte load at
    // `(g · pairs + c) · 16` for g < rows / 8 rounded up and c < pairs.
    unsafe { gemv_avx2_packed(x, p, rows, acc) }
}

/// # Safety
/// The CPU has AVX2; [`gemv_packed`]'s bounds for [`Pairs`].
#[target_feature(enable = "avx2")]
unsafe fn gemv_avx2_packed(x: &[u8], p: &[i8], rows: usize, acc: &mut [i32]) {
    // SAFETY: the function's contract.
    unsafe { gemv_packed::<Pairs>(x, p, rows, acc) }
}

/// AVX2 [`super::requant_u8_narrow`], eight channels per step in 32-bit lanes: `vpmuldq`
/// forms the exact 64-bit products of the even and the odd lanes, the high halves of
/// `product + 2^(shift-1)` are `floor(· / 2³²)`, and `vpsravd` by `shift − 32` finishes the
/// floor division (the plan guarantees `shift >= 32` and that no step overflows).
pub(super) fn requant_u8_narrow_avx2(plan: &super::int8::NarrowRequant, acc: &[i32], y: &mut [u8]) {
    let n = y.len().min(acc.len()).min(plan.channels());
    let padded = n.div_ceil(8) * 8;
    assert!(
        plan.bias.len() >= padded
            && plan.m.len() >= padded
            && plan.shift.len() >= padded
            && plan.round.len() >= padded
    );
    // SAFETY: the caller checked `has_avx2()`; the assert bounds the plan's arrays for
    // every group of eight the kernel reads, and it reads `acc` and writes `y` below `n`.
    unsafe { requant_narrow(plan, &acc[..n], &mut y[..n]) }
}

/// # Safety
/// The CPU has AVX2; `acc` holds at least `y.len()` sums and every array of `plan` holds
/// `y.len()` rounded up to eight values (the wrapper asserts it).
#[target_feature(enable = "avx2")]
unsafe fn requant_narrow(plan: &super::int8::NarrowRequant, acc: &[i32], y: &mut [u8]) {
    let n = y.len();
    let zp = _mm256_set1_epi32(plan.zero_point as i32);
    let lo = _mm256_set1_epi32(plan.low as i32);
    let hi = _mm256_set1_epi32(255);
    // SAFETY (both loads): every plan array holds n rounded up to eight values (the
    // caller's assert), and `acc` is read this way only when c + 8 <= n.
    let load = |v: &[i32], c: usize| unsafe { _mm256_loadu_si256(v.as_ptr().add(c).cast()) };
    // SAFETY: as for `load`: `plan.bias` holds n rounded up to eight values.
    let load64 = |v: &[i64], c: usize| unsafe { _mm256_loadu_si256(v.as_ptr().add(c).cast()) };
    let mut c = 0;
    while c < n {
        let take = (n - c).min(8);
        let a = if take == 8 {
            load(acc, c)
        } else {
            let rest = &acc[c..];
            // SAFETY: the mask enables only the first `rest.len()` lanes (< 8), which `rest`
            // holds; masked-off lanes are neither read nor faulted on.
            unsafe { _mm256_maskload_epi32(rest.as_ptr(), first_lanes(rest.len())) }
        };
        let t = _mm256_add_epi32(a, load(&plan.bias, c));
        let m = load(&plan.m, c);
        let pe = _mm256_add_epi64(_mm256_mul_epi32(t, m), load64(&plan.round, c));
        let po = _mm256_add_epi64(
            _mm256_mul_epi32(_mm256_srli_epi64(t, 32), _mm256_srli_epi64(m, 32)),
            load64(&plan.round, c + 4),
        );
        let h = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0b1010_1010);
        let q = _mm256_add_epi32(_mm256_srav_epi32(h, load(&plan.shift, c)), zp);
        let q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
        let w = _mm256_packs_epi32(q, q);
        let b = _mm256_packus_epi16(w, w);
        let v = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        let bytes = _mm_cvtsi128_si64(_mm256_castsi256_si128(v)) as u64;
        if take == 8 {
            y[c..c + 8].copy_from_slice(&bytes.to_le_bytes());
        } else {
            for (k, out) in y[c..].iter_mut().enumerate() {
                *out = (bytes >> (8 * k)) as u8;
            }
        }
        c += 8;
    }
}

/// AVX2 [`super::generic::exp_in_place`] (the tests' handle on [`exp4`]): four lanes of [`super::generic::exp`] at a time,
/// the same f64 operations in the same order per lane (no FMA), so the same bits.
#[cfg(test)]
pub(super) fn exp_in_place_avx2(y: &mut [f32]) {
    // SAFETY: the caller checked `has_avx2()`; the kernel loads and stores whole groups of
    // four inside `y` and masks the last, shorter one.
    unsafe { exp_avx2(y) }
}

/// # Safety
/// The CPU has AVX2. Loads and stores touch whole chunks of `y` or the masked remainder.
#[cfg(test)]
#[target_feature(enable = "avx2")]
unsafe fn exp_avx2(y: &mut [f32]) {
    let mut chunks = y.chunks_exact_mut(4);
    for c in &mut chunks {
        // SAFETY: `c` holds four f32.
        unsafe { _mm_storeu_ps(c.as_mut_ptr(), exp4(_mm_loadu_ps(c.as_ptr()))) };
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mask = _mm256_castsi256_si128(first_lanes(rest.len()));
        // SAFETY: the mask enables only the first `rest.len()` (< 4) lanes, which `rest`
        // holds; masked-off lanes are neither read nor written.
        unsafe {
            let v = _mm_maskload_ps(rest.as_ptr(), mask);
            _mm_maskstore_ps(rest.as_mut_ptr(), mask, exp4(v));
        }
    }
}

/// Four lanes of [`super::generic::exp`]. `n` comes from the bits of `x · K + 1.5 · 2⁵²`
/// (whose low bits hold it exactly), biased by 1023 · 32 so that the shifts are logical;
/// lanes outside the finite range compute garbage that the final blends replace, and
/// their table index is masked to 0..32.
#[inline]
#[target_feature(enable = "avx2")]
fn exp4(x: __m128) -> __m128 {
    use super::generic::{
        EXP_C, EXP_K, EXP_MAGIC, EXP_MAX, EXP_MIN, EXP2_32THS, LN2_32_HI, LN2_32_LO,
    };
    let xd = _mm256_cvtps_pd(x);
    let magic = _mm256_set1_pd(EXP_MAGIC);
    let s = _mm256_add_pd(_mm256_mul_pd(xd, _mm256_set1_pd(EXP_K)), magic);
    let nf = _mm256_sub_pd(s, magic);
    let n = _mm256_sub_epi64(
        _mm256_castpd_si256(s),
        _mm256_set1_epi64x(EXP_MAGIC.to_bits() as i64),
    );
    let r = _mm256_sub_pd(
        _mm256_sub_pd(xd, _mm256_mul_pd(nf, _mm256_set1_pd(LN2_32_HI))),
        _mm256_mul_pd(nf, _mm256_set1_pd(LN2_32_LO)),
    );
    let c = |i: usize| _mm256_set1_pd(EXP_C[i]);
    let (add, mul) = (_mm256_add_pd, _mm256_mul_pd);
    let r2 = mul(r, r);
    let r4 = mul(r2, r2);
    let lo = add(add(c(0), mul(r, c(1))), mul(r2, add(c(2), mul(r, c(3)))));
    let hi = add(add(c(4), mul(r, c(5))), mul(r2, c(6)));
    let p = add(lo, mul(r4, hi));
    let biased = _mm256_add_epi64(n, _mm256_set1_epi64x(1023 * 32));
    let j = _mm256_and_si256(biased, _mm256_set1_epi64x(31));
    // SAFETY: every index is masked to 0..32, inside the 32-entry table.
    let t = unsafe { _mm256_i64gather_pd::<8>(EXP2_32THS.as_ptr().cast(), j) };
    let scale = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_srli_epi64(biased, 5), 52));
    let e = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_mul_pd(p, t), scale));
    let small = _mm_cmplt_ps(x, _mm_set1_ps(EXP_MIN));
    let big = _mm_cmpgt_ps(x, _mm_set1_ps(EXP_MAX));
    let nan = _mm_cmpunord_ps(x, x);
    let e = _mm_blendv_ps(e, _mm_setzero_ps(), small);
    let e = _mm_blendv_ps(e, _mm_set1_ps(f32::INFINITY), big);
    _mm_blendv_ps(e, x, nan)
}

/// AVX2 [`super::int8::standardize_quantize`] (or, without `offset` and `scale`,
/// [`super::int8::quantize`]), eight lanes at a time with the same IEEE operations in the
/// same order: `vmaxps(-1024, v)` and `vminps(1024, v)` return `v` when it is NaN, as
/// `f32::clamp` does, and the signed-then-unsigned saturating packs are the clamp to 0..255.
pub(super) fn quantize_avx2(
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    q_scale: f32,
    zero_point: u8,
    y: &mut [u8],
) {
    let n = x.len().min(y.len());
    if let Some((offset, scale)) = affine {
        // The portable version's chunking: rows of `offset.len()`, each written as far as
        // `offset` and `scale` both reach.
        let width = offset.len().max(1);
        let k = offset.len().min(scale.len());
        for (xr, yr) in x[..n].chunks_exact(width).zip(y.chunks_exact_mut(width)) {
            let affine = Some((&offset[..k], &scale[..k]));
            // SAFETY: the caller checked `has_avx2()`; the kernel reads `offset`, `scale`
            // and `xr` and writes `yr` below `k`, which they all hold.
            unsafe { quantize_row(&xr[..k], affine, q_scale, zero_point, &mut yr[..k]) }
        }
    } else {
        // SAFETY: as above, below `n`.
        unsafe { quantize_row(&x[..n], None, q_scale, zero_point, &mut y[..n]) }
    }
}

/// # Safety
/// The CPU has AVX2; `x` and, when given, both affine slices hold at least `y.len()`
/// values.
#[target_feature(enable = "avx2")]
unsafe fn quantize_row(
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    q_scale: f32,
    zero_point: u8,
    y: &mut [u8],
) {
    let n = y.len();
    let qs = _mm256_set1_ps(q_scale);
    let (lo, hi) = (_mm256_set1_ps(-1024.0), _mm256_set1_ps(1024.0));
    let magic = _mm256_set1_ps(12_582_912.0);
    let mant = _mm256_set1_epi32(0x7f_ffff);
    let bias = _mm256_set1_epi32(zero_point as i32 - 0x40_0000);
    let one = |i: usize| {
        let v = match affine {
            Some((o, s)) => (x[i] - o[i]) * s[i],
            None => x[i],
        };
        super::int8::quantize_one(v, q_scale, zero_point)
    };
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, the length of every slice read here.
        let v = unsafe {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            match affine {
                Some((o, s)) => _mm256_mul_ps(
                    _mm256_sub_ps(v, _mm256_loadu_ps(o.as_ptr().add(i))),
                    _mm256_loadu_ps(s.as_ptr().add(i)),
                ),
                None => v,
            }
        };
        let d = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_div_ps(v, qs)));
        let r = _mm256_castps_si256(_mm256_add_ps(d, magic));
        let q = _mm256_add_epi32(_mm256_and_si256(r, mant), bias);
        let w = _mm256_packs_epi32(q, q);
        let b = _mm256_packus_epi16(w, w);
        let v = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        let bytes = (_mm_cvtsi128_si64(_mm256_castsi256_si128(v)) as u64).to_le_bytes();
        y[i..i + 8].copy_from_slice(&bytes);
        i += 8;
    }
    while i < n {
        y[i] = one(i);
        i += 1;
    }
}

/// AVX2 [`super::generic::softmax`], one row at a time: the maximum over eight lanes (exact
/// in any order; a row holding NaN goes to the portable code, whose `f32::max` skips NaN
/// where `vmaxps` would not), `exp` four lanes at a time, then the sum in index order and
/// the scaling as the portable code does them — the same bits.
pub(super) fn softmax_avx2(x: &[f32], axis_len: usize, y: &mut [f32]) {
    for (xr, yr) in x
        .chunks_exact(axis_len.max(1))
        .zip(y.chunks_exact_mut(axis_len.max(1)))
    {
        // SAFETY: the caller checked `has_avx2()`; the kernel reads `xr` and writes `yr`,
        // which have the same length, with whole or masked loads and stores inside them.
        if !unsafe { softmax_row(xr, yr) } {
            super::generic::softmax(xr, xr.len(), yr);
        }
    }
}

/// One row of [`softmax_avx2`]; false (and nothing written) if the row holds NaN.
///
/// # Safety
/// The CPU has AVX2; `x` and `y` have the same length.
#[target_feature(enable = "avx2")]
unsafe fn softmax_row(x: &[f32], y: &mut [f32]) -> bool {
    let n = x.len();
    let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut m = neg_inf;
    let mut nan = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        let v = if i + 8 <= n {
            // SAFETY: i + 8 <= n.
            unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }
        } else {
            let mask = first_lanes(n - i);
            // SAFETY: the mask enables only the n - i (< 8) lanes left in `x`.
            let v = unsafe { _mm256_maskload_ps(x.as_ptr().add(i), mask) };
            _mm256_blendv_ps(neg_inf, v, _mm256_castsi256_ps(mask))
        };
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        m = _mm256_max_ps(m, v);
        i += 8;
    }
    if _mm256_movemask_ps(nan) != 0 {
        return false;
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let max = _mm_max_ss(m2, _mm_shuffle_ps::<0b01>(m2, m2));
    let max4 = _mm_shuffle_ps::<0>(max, max);
    let mut i = 0;
    while i < n {
        if i + 4 <= n {
            // SAFETY: i + 4 <= n for both slices.
            unsafe {
                let d = _mm_sub_ps(_mm_loadu_ps(x.as_ptr().add(i)), max4);
                _mm_storeu_ps(y.as_mut_ptr().add(i), exp4(d));
            }
        } else {
            let mask = _mm256_castsi256_si128(first_lanes(n - i));
            // SAFETY: the mask enables only the n - i (< 4) lanes left in both slices.
            unsafe {
                let d = _mm_sub_ps(_mm_maskload_ps(x.as_ptr().add(i), mask), max4);
                _mm_maskstore_ps(y.as_mut_ptr().add(i), mask, exp4(d));
            }
        }
        i += 4;
    }
    let mut sum = 0.0f32;
    for &v in y.iter() {
        sum += v;
    }
    let inv = 1.0 / sum;
    y.iter_mut().for_each(|v| *v *= inv);
    true
}

/// AVX2 [`super::whole_numbers_to_bytes`]: [`whole_numbers_to_bytes_sse2`]'s checks and
/// conversion sixteen values per step, the rest by the SSE2 kernel (the same comparisons).
pub(super) fn whole_numbers_to_bytes_avx2(x: &[f32], signed: bool, y: &mut [u8]) -> bool {
    assert_eq!(x.len(), y.len());
    let main = x.len() / 16 * 16;
    // SAFETY: the caller checked `has_avx2()`; the kernel reads and writes below `main`.
    let ok = unsafe { whole_bytes_avx2(&x[..main], signed, &mut y[..main]) };
    let rest_ok = whole_numbers_to_bytes_sse2(&x[main..], signed, &mut y[main..]);
    ok && rest_ok
}

/// # Safety
/// The CPU has AVX2; `x` and `y` hold the same multiple of 16 values.
#[target_feature(enable = "avx2")]
unsafe fn whole_bytes_avx2(x: &[f32], signed: bool, y: &mut [u8]) -> bool {
    let (lo, hi) = if signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    };
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let mut good = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    // Dwords of the packed bytes: q0 0-3, q1 0-3 (low lane), q0 4-7, q1 4-7 (high lane).
    let order = _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0);
    let check = |v: __m256, q: __m256i| {
        // Ordered comparisons: NaN fails them.
        let whole = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_cvtepi32_ps(q), v);
        let inside = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GE_OQ>(v, vlo),
            _mm256_cmp_ps::<_CMP_LE_OQ>(v, vhi),
        );
        _mm256_and_ps(whole, inside)
    };
    let mut i = 0;
    while i < x.len() {
        // SAFETY: i + 16 <= x.len() == y.len() (the function's contract).
        unsafe {
            let (v0, v1) = (
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(x.as_ptr().add(i + 8)),
            );
            let (q0, q1) = (_mm256_cvttps_epi32(v0), _mm256_cvttps_epi32(v1));
            good = _mm256_and_ps(good, _mm256_and_ps(check(v0, q0), check(v1, q1)));
            let w = _mm256_packs_epi32(q0, q1);
            let b = if signed {
                _mm256_packs_epi16(w, w)
            } else {
                _mm256_packus_epi16(w, w)
            };
            let b = _mm256_permutevar8x32_epi32(b, order);
            _mm_storeu_si128(y.as_mut_ptr().add(i).cast(), _mm256_castsi256_si128(b));
        }
        i += 16;
    }
    _mm256_movemask_ps(good) == 0xff
}

/// SSE2 (part of x86_64) [`super::whole_numbers_to_bytes`]: four values per step, the range
/// and wholeness checked by comparisons (`cvttps2dq` and back), then packed to bytes with
/// saturation (in range, so exact).
pub(super) fn whole_numbers_to_bytes_sse2(x: &[f32], signed: bool, y: &mut [u8]) -> bool {
    assert_eq!(x.len(), y.len());
    let main = x.len() / 4 * 4;
    let (lo, hi) = if signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    };
    // SAFETY: SSE2 is part of x86_64; loads of four values at i + 4 <= main <= x.len(), and
    // stores of four bytes at the same offsets into y (as long as x).
    let ok = unsafe {
        let (vlo, vhi) = (_mm_set1_ps(lo), _mm_set1_ps(hi));
        let mut good = _mm_castsi128_ps(_mm_set1_epi32(-1));
        let mut i = 0;
        while i < main {
            let v = _mm_loadu_ps(x.as_ptr().add(i));
            let q = _mm_cvttps_epi32(v);
            let whole = _mm_cmpeq_ps(_mm_cvtepi32_ps(q), v);
            let inside = _mm_and_ps(_mm_cmpge_ps(v, vlo), _mm_cmple_ps(v, vhi));
            good = _mm_and_ps(good, _mm_and_ps(whole, inside));
            let w = _mm_packs_epi32(q, q);
            let b = if signed {
                _mm_packs_epi16(w, w)
            } else {
                _mm_packus_epi16(w, w)
            };
            y.as_mut_ptr()
                .add(i)
                .cast::<i32>()
                .write_unaligned(_mm_cvtsi128_si32(b));
            i += 4;
        }
        _mm_movemask_ps(good) == 0xf
    };
    let tail_ok = super::generic::whole_numbers_to_bytes(&x[main..], signed, &mut y[main..]);
    ok && tail_ok
}
