//! The u8 residual add with AVX2, eight elements a step: the three fixed-point
//! multipliers (each input's rescale, then the output's) are 64-bit `vpmuldq` products.
//! Those that land in i32 (the inputs' always, the output's when its multiplier is below
//! 1, as it is for every add of the corpus) come back to 32-bit lanes and are clamped
//! there ([`Mul32`]); an output multiplier of 1 or more is shifted as [`super::qgemm`]'s
//! epilogues shift (a logical shift of `p + 2^62`, minus `2^62 >> shift`) and clamped in
//! 64 bits. The same bits as [`AddU8::one`].
//! (Table gathers were slower: `vpgatherdd` is microcoded on CPUs with the GDS
//! mitigation.)

use super::qgemm::{clamp64, pack8};
use crate::engine::kernels::eltwise::{ADD_LEFT_SHIFT, AddU8};
use std::arch::x86_64::*;

/// [`AddU8::run`] with AVX2.
///
/// # Panics
/// If the three slices differ in length, or the CPU lacks AVX2.
pub(in crate::engine::kernels) fn add_u8_avx2(add: &AddU8, a: &[u8], b: &[u8], y: &mut [u8]) {
    assert!(a.len() == y.len() && b.len() == y.len(), "qadd lengths");
    assert!(super::has_avx2(), "qadd: AVX2 kernel on a CPU without AVX2");
    // SAFETY: AVX2 is present (checked above); the lengths are equal.
    unsafe { add_u8_avx2_impl(add, a, b, y) }
}

/// One [`FixedMultiplier`](crate::engine::kernels::int8::FixedMultiplier) in the form the
/// AVX2 steps use: the mantissa in every lane, `2^(shift-1) + 2^62`, the shift count and
/// `2^62 >> shift`.
#[derive(Clone, Copy)]
struct Mul {
    m: __m256i,
    round: __m256i,
    count: __m128i,
    unbig: __m256i,
}

impl Mul {
    /// # Safety
    /// The CPU has AVX2 (registers only).
    #[inline(always)]
    unsafe fn new(m: crate::engine::kernels::int8::FixedMultiplier) -> Mul {
        let shift = m.shift as i64;
        // SAFETY: AVX2 present (the caller's target feature).
        unsafe {
            Mul {
                m: _mm256_set1_epi32(m.m),
                round: _mm256_set1_epi64x((1i64 << (shift - 1)) + (1 << 62)),
                count: _mm_set_epi64x(0, shift),
                unbig: _mm256_set1_epi64x((1i64 << 62) >> shift),
            }
        }
    }

    /// The products of the even and the odd i32 lanes of `v`, rounded and shifted, as
    /// i64 lanes: `|v · m| < 2^61` keeps `p + 2^(shift-1) + 2^62` positive.
    ///
    /// # Safety
    /// The CPU has AVX2 (registers only).
    #[inline(always)]
    unsafe fn apply(self, v: __m256i) -> (__m256i, __m256i) {
        // SAFETY: AVX2 present (the caller's target feature).
        unsafe {
            let pe = _mm256_mul_epi32(v, self.m);
            let po = _mm256_mul_epi32(_mm256_srli_epi64::<32>(v), self.m);
            (
                _mm256_sub_epi64(
                    _mm256_srl_epi64(_mm256_add_epi64(pe, self.round), self.count),
                    self.unbig,
                ),
                _mm256_sub_epi64(
                    _mm256_srl_epi64(_mm256_add_epi64(po, self.round), self.count),
                    self.unbig,
                ),
            )
        }
    }
}

/// A multiplier whose products land in i32 (the inputs' rescales, within ±2^27; the
/// output's when the multiplier is below 1, shift 31 or more), with no bias against the
/// sign and no 64-bit clamp: the rounded 64-bit product is shifted right logically by
/// `min(shift, 32)`, whose low half holds the arithmetic shift's bits, then in 32-bit lanes
/// arithmetically by the rest.
#[derive(Clone, Copy)]
struct Mul32 {
    m: __m256i,
    round: __m256i,
    wide: __m128i,
    narrow: __m128i,
}

impl Mul32 {
    /// # Safety
    /// The CPU has AVX2 (registers only).
    #[inline(always)]
    unsafe fn new(m: crate::engine::kernels::int8::FixedMultiplier) -> Mul32 {
        // SAFETY: AVX2 present (the caller's contract).
        unsafe {
            Mul32 {
                m: _mm256_set1_epi32(m.m),
                round: _mm256_set1_epi64x(1i64 << (m.shift - 1)),
                wide: _mm_set_epi64x(0, i64::from(m.shift.min(32))),
                narrow: _mm_set_epi64x(0, i64::from(m.shift.saturating_sub(32))),
            }
        }
    }

    /// `(v · m + round) >> shift` for eight i32 lanes whose results fit an i32.
    ///
    /// # Safety
    /// The CPU has AVX2 (registers only).
    #[inline(always)]
    unsafe fn apply(self, v: __m256i) -> __m256i {
        // SAFETY: AVX2 present.
        unsafe {
            let pe = _mm256_add_epi64(_mm256_mul_epi32(v, self.m), self.round);
            let po = _mm256_add_epi64(
                _mm256_mul_epi32(_mm256_srli_epi64::<32>(v), self.m),
                self.round,
            );
            let (qe, qo) = (
                _mm256_srl_epi64(pe, self.wide),
                _mm256_srl_epi64(po, self.wide),
            );
            let q = _mm256_blend_epi32::<0b1010_1010>(qe, _mm256_slli_epi64::<32>(qo));
            _mm256_sra_epi32(q, self.narrow)
        }
    }
}

/// # Safety
/// The CPU has AVX2; `a`, `b` and `y` have the same length (the wrapper asserts it).
#[target_feature(enable = "avx2")]
unsafe fn add_u8_avx2_impl(add: &AddU8, a: &[u8], b: &[u8], y: &mut [u8]) {
    // An output multiplier below 1 keeps the sum's rescale in i32 too; one of 1 or more
    // has its products clamped in 64 bits. One loop each, the choice made once.
    // SAFETY: the caller's contract; AVX2 enabled here.
    unsafe {
        if add.m_y.shift >= 31 {
            add_loop::<true>(add, a, b, y)
        } else {
            add_loop::<false>(add, a, b, y)
        }
    }
}

/// [`add_u8_avx2_impl`] with the output's rescale in 32-bit lanes (`NARROW`) or 64.
///
/// # Safety
/// As [`add_u8_avx2_impl`], inlined into it.
#[inline(always)]
unsafe fn add_loop<const NARROW: bool>(add: &AddU8, a: &[u8], b: &[u8], y: &mut [u8]) {
    // SAFETY: AVX2 is the caller's target feature; every load and store below stays
    // within `i + 8 <= n` values of the three slices (equal lengths), the tail in safe code.
    unsafe {
        let n = y.len();
        let full = n / 8 * 8;
        let (ma, mb) = (Mul32::new(add.m_a), Mul32::new(add.m_b));
        let (my32, my64) = (Mul32::new(add.m_y), Mul::new(add.m_y));
        let (zp_a, zp_b) = (
            _mm256_set1_epi32(add.zp_a as i32),
            _mm256_set1_epi32(add.zp_b as i32),
        );
        let zp = add.zp_y as i64;
        let (lo32, hi32) = (
            _mm256_set1_epi32(add.min as i32),
            _mm256_set1_epi32(add.max as i32),
        );
        let lo = _mm256_set1_epi64x(add.min as i64 - zp);
        let hi = _mm256_set1_epi64x(add.max as i64 - zp);
        let zp32 = _mm256_set1_epi32(zp as i32);
        let mut i = 0;
        while i < full {
            let va = _mm_loadl_epi64(a.as_ptr().add(i).cast());
            let vb = _mm_loadl_epi64(b.as_ptr().add(i).cast());
            // (code - zp) << 20 is within ±2^28; each rescale (a multiplier below 1) within
            // ±2^27, so the sum fits an i32 and needs no saturation.
            let xa = _mm256_slli_epi32::<{ ADD_LEFT_SHIFT as i32 }>(_mm256_sub_epi32(
                _mm256_cvtepu8_epi32(va),
                zp_a,
            ));
            let xb = _mm256_slli_epi32::<{ ADD_LEFT_SHIFT as i32 }>(_mm256_sub_epi32(
                _mm256_cvtepu8_epi32(vb),
                zp_b,
            ));
            let s = _mm256_add_epi32(ma.apply(xa), mb.apply(xb));
            let q = if NARROW {
                let q = _mm256_add_epi32(my32.apply(s), zp32);
                _mm256_min_epi32(_mm256_max_epi32(q, lo32), hi32)
            } else {
                let (qe, qo) = my64.apply(s);
                let (qe, qo) = (clamp64(qe, lo, hi), clamp64(qo, lo, hi));
                let q = _mm256_blend_epi32::<0b1010_1010>(qe, _mm256_slli_epi64::<32>(qo));
                _mm256_add_epi32(q, zp32)
            };
            _mm_storel_epi64(y.as_mut_ptr().add(i).cast(), pack8(q));
            i += 8;
        }
        for k in full..n {
            y[k] = add.one(a[k], b[k]);
        }
    }
}

/// [`AddU8::run`] with AVX-512 (F, BW, VL): sixteen elements a step, the 64-bit steps
/// with `vpsravq` and `vpminsq`/`vpmaxsq`; the same bits as [`add_u8_avx2`].
///
/// # Panics
/// If the three slices differ in length, or the CPU lacks AVX-512 F, BW and VL.
pub(in crate::engine::kernels) fn add_u8_avx512(add: &AddU8, a: &[u8], b: &[u8], y: &mut [u8]) {
    assert!(a.len() == y.len() && b.len() == y.len(), "qadd lengths");
    assert!(
        super::has_avx512_vnni(),
        "qadd: AVX-512 kernel on a CPU without AVX-512"
    );
    // SAFETY: AVX-512 F, BW and VL are present (the VNNI-512 check implies them); the
    // lengths are equal.
    unsafe { add_u8_avx512_impl(add, a, b, y) }
}

/// `round(v · m / 2^shift)` of the even and odd i32 lanes of `v`, as i64 lanes.
///
/// # Safety
/// The CPU has AVX-512 F (registers only).
#[inline(always)]
unsafe fn mul512(v: __m512i, m: __m512i, round: __m512i, shift: __m512i) -> (__m512i, __m512i) {
    // SAFETY: AVX-512 F (the caller's target feature).
    unsafe {
        let pe = _mm512_mul_epi32(v, m);
        let po = _mm512_mul_epi32(_mm512_srli_epi64::<32>(v), m);
        (
            _mm512_srav_epi64(_mm512_add_epi64(pe, round), shift),
            _mm512_srav_epi64(_mm512_add_epi64(po, round), shift),
        )
    }
}

/// # Safety
/// The CPU has AVX-512 F, BW and VL; `a`, `b` and `y` have the same length (the wrapper
/// asserts it).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn add_u8_avx512_impl(add: &AddU8, a: &[u8], b: &[u8], y: &mut [u8]) {
    let n = y.len();
    let full = n / 16 * 16;
    let consts = |m: crate::engine::kernels::int8::FixedMultiplier| {
        (
            _mm512_set1_epi32(m.m),
            _mm512_set1_epi64(1i64 << (m.shift - 1)),
            _mm512_set1_epi64(m.shift as i64),
        )
    };
    let (ma, ra, sa) = consts(add.m_a);
    let (mb, rb, sb) = consts(add.m_b);
    let (my, ry, sy) = consts(add.m_y);
    let (zp_a, zp_b) = (
        _mm512_set1_epi32(add.zp_a as i32),
        _mm512_set1_epi32(add.zp_b as i32),
    );
    let zp = add.zp_y as i64;
    let lo = _mm512_set1_epi64(add.min as i64 - zp);
    let hi = _mm512_set1_epi64(add.max as i64 - zp);
    let zp32 = _mm512_set1_epi32(zp as i32);
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 16 <= n` for all three slices; AVX-512 F, BW, VL (this function's
        // target features).
        unsafe {
            let va = _mm_loadu_si128(a.as_ptr().add(i).cast());
            let vb = _mm_loadu_si128(b.as_ptr().add(i).cast());
            // (code - zp) << 20 within ±2^28; each rescale (a multiplier below 1) within
            // ±2^27, so their sum fits an i32.
            let xa = _mm512_slli_epi32::<{ ADD_LEFT_SHIFT }>(_mm512_sub_epi32(
                _mm512_cvtepu8_epi32(va),
                zp_a,
            ));
            let xb = _mm512_slli_epi32::<{ ADD_LEFT_SHIFT }>(_mm512_sub_epi32(
                _mm512_cvtepu8_epi32(vb),
                zp_b,
            ));
            let (ae, ao) = mul512(xa, ma, ra, sa);
            let (be, bo) = mul512(xb, mb, rb, sb);
            let join = |e: __m512i, o: __m512i| {
                _mm512_mask_blend_epi32(0xaaaa, e, _mm512_slli_epi64::<32>(o))
            };
            let s = _mm512_add_epi32(join(ae, ao), join(be, bo));
            let (qe, qo) = mul512(s, my, ry, sy);
            let qe = _mm512_min_epi64(_mm512_max_epi64(qe, lo), hi);
            let qo = _mm512_min_epi64(_mm512_max_epi64(qo, lo), hi);
            let q = _mm512_add_epi32(join(qe, qo), zp32);
            _mm_storeu_si128(y.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(q));
        }
        i += 16;
    }
    for k in full..n {
        y[k] = add.one(a[k], b[k]);
    }
}
