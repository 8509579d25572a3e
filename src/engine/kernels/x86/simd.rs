//! The f32 vector operations the generic x86 kernels are written over, for AVX-512
//! (`__m512`, 16 lanes) and AVX2 + FMA (`__m256`, 8 lanes). Every method is
//! `#[inline(always)]` and only ever runs inlined into a `#[target_feature]` function of
//! the matching family (the callers' contract), where the intrinsics inline in turn.

use std::arch::x86_64::*;

/// f32 vectors of one x86 family.
pub(super) trait F32Simd {
    /// One vector.
    type V: Copy;
    /// Lanes per vector.
    const LANES: usize;
    /// # Safety
    /// (Every method, and so every implementation's.) The CPU has the family's features;
    /// pointers are valid for the lanes touched.
    unsafe fn zero() -> Self::V;
    unsafe fn splat(v: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Stores the first `n` (< LANES) lanes.
    unsafe fn store_first(p: *mut f32, v: Self::V, n: usize);
    /// Loads the first `n` (< LANES) lanes, zero in the others.
    unsafe fn load_first(p: *const f32, n: usize) -> Self::V;
    /// `a · b + c`, one rounding.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `max(a, b)`; `b` when `a` is NaN.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `min(a, b)`; `b` when `a` is NaN.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `a · alpha` where `a < 0`, else `a`.
    unsafe fn leaky(a: Self::V, alpha: Self::V) -> Self::V;
}

/// AVX-512 F.
pub(super) struct Avx512;
/// AVX2 + FMA.
pub(super) struct Avx2;

impl F32Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: the trait's contract (AVX-512 F present).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable values at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: the caller guarantees 16 writable values at `p`.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: __m512, n: usize) {
        // SAFETY: masked lanes beyond `n` are neither written nor faulted on.
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> __m512 {
        // SAFETY: masked lanes beyond `n` are neither read nor faulted on.
        unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn leaky(a: __m512, alpha: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe {
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_setzero_ps());
            _mm512_mask_mul_ps(a, neg, a, alpha)
        }
    }
}

/// A mask of the first `n` (at most 8) 32-bit lanes.
///
/// # Safety
/// The CPU has AVX2 (registers only).
#[inline(always)]
unsafe fn first8(n: usize) -> __m256i {
    // SAFETY: AVX2 present (the trait's contract).
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

impl F32Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: the trait's contract (AVX2 and FMA present).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        // SAFETY: as above.
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable values at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: the caller guarantees 8 writable values at `p`.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: __m256, n: usize) {
        // SAFETY: masked lanes beyond `n` are neither written nor faulted on.
        unsafe { _mm256_maskstore_ps(p, first8(n), v) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> __m256 {
        // SAFETY: masked lanes beyond `n` are neither read nor faulted on.
        unsafe { _mm256_maskload_ps(p, first8(n)) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn leaky(a: __m256, alpha: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe {
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_setzero_ps());
            _mm256_blendv_ps(a, _mm256_mul_ps(a, alpha), neg)
        }
    }
}
