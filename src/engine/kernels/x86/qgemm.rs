//! u8 × i8 GEMM micro-kernels: AVX-512 VNNI (`vpdpbusd zmm`, 16 channels per vector),
//! VNNI at 256 bits (`vpdpbusd ymm`, AVX-VNNI), and AVX2 without VNNI (u8 and i8 widened
//! to i16, `vpmaddwd` on pairs: `vpmaddubsw` would saturate). Weights are in the K4
//! panel layout (each channel's four consecutive depths side by side); each step
//! broadcasts four bytes of a row and multiplies them into every channel of the panel.
//! The epilogues requantize exactly as [`crate::engine::kernels::qconv::requant_one`]
//! (64-bit products, arithmetic shifts), or dequantize to f32, then store.

use super::gemm::{activate, finish_row, scalar_act, tile_rows};
use super::simd::{Avx2 as F256, Avx512 as F512, F32Simd};
use crate::engine::kernels::I8Path;
use crate::engine::kernels::conv::{ConvGeometry, PatchOffsets, PatchQuads, RowWalk};
use crate::engine::kernels::gemm::{PanelsI8, QDst};
use crate::engine::kernels::qconv::{Lanes, QEpilogue};
use std::arch::x86_64::*;

/// One x86 int8 family: how a step multiplies, and how a vector of i32 sums is stored.
pub(super) trait I8Dot {
    /// A broadcast quad of the row (as the family's multiply reads it).
    type A: Copy;
    /// One panel vector of weights.
    type W: Copy;
    /// The running sums of one vector of channels.
    type Acc: Copy;
    /// The finished i32 sums, one lane per channel.
    type V: Copy;
    /// Channels per vector.
    const LANES: usize;
    /// # Safety
    /// (Every method, and so every implementation's.) The family's features are present;
    /// pointers are valid for what they touch.
    unsafe fn zero() -> Self::Acc;
    /// Four bytes at `p`, broadcast.
    unsafe fn quad(p: *const u8) -> Self::A;
    /// `LANES · 4` weights at `p`.
    unsafe fn weights(p: *const i8) -> Self::W;
    unsafe fn dot(acc: Self::Acc, a: Self::A, w: Self::W) -> Self::Acc;
    unsafe fn finish(acc: Self::Acc) -> Self::V;
    /// Requantizes channels `c..c + n` (`n <= LANES`, `c` a multiple of `LANES`) into
    /// `y`.
    unsafe fn store_u8(v: Self::V, l: &Lanes, bias: *const i32, c: usize, y: *mut u8, n: usize);
    /// [`I8Dot::store_u8`] of two vectors side by side: `v0` on channels `c..c + LANES`,
    /// `v1` on the next `LANES`, `LANES < n <= 2 · LANES` values in all.
    #[inline(always)]
    unsafe fn store_u8_x2(
        v0: Self::V,
        v1: Self::V,
        l: &Lanes,
        bias: *const i32,
        c: usize,
        y: *mut u8,
        n: usize,
    ) {
        // SAFETY: the trait's contract.
        unsafe {
            Self::store_u8(v0, l, bias, c, y, Self::LANES);
            Self::store_u8(
                v1,
                l,
                bias,
                c + Self::LANES,
                y.add(Self::LANES),
                n - Self::LANES,
            );
        }
    }
    /// Dequantizes channels `c..c + n` into `y`.
    unsafe fn store_f32(v: Self::V, l: &Lanes, bias: *const i32, c: usize, y: *mut f32, n: usize);
}

/// AVX-512 F, BW, VL and VNNI.
pub(super) struct Vnni512;
/// AVX2 and AVX-VNNI.
pub(super) struct Vnni256;
/// AVX2 alone.
pub(super) struct Avx2I8;

impl I8Dot for Vnni512 {
    type A = __m512i;
    type W = __m512i;
    type Acc = __m512i;
    type V = __m512i;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        // SAFETY: the trait's contract.
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn quad(p: *const u8) -> __m512i {
        // SAFETY: four readable bytes at `p` (the trait's contract).
        unsafe { _mm512_set1_epi32(p.cast::<i32>().read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn weights(p: *const i8) -> __m512i {
        // SAFETY: 64 readable bytes at `p`.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, a: __m512i, w: __m512i) -> __m512i {
        // SAFETY: the trait's contract (AVX-512 VNNI present).
        unsafe { _mm512_dpbusd_epi32(acc, a, w) }
    }
    #[inline(always)]
    unsafe fn finish(acc: __m512i) -> __m512i {
        acc
    }
    #[inline(always)]
    unsafe fn store_u8(v: __m512i, l: &Lanes, bias: *const i32, c: usize, y: *mut u8, n: usize) {
        // SAFETY: the lane arrays hold whole blocks of 16 from `c` (padded to 64 channels);
        // the store writes `n` bytes.
        unsafe { Requant512::load(l, bias, c).store(v, y, n) }
    }
    #[inline(always)]
    unsafe fn store_f32(v: __m512i, l: &Lanes, bias: *const i32, c: usize, y: *mut f32, n: usize) {
        // SAFETY: as for `store_u8`; the store writes `n` values.
        unsafe {
            let t = _mm512_add_epi32(v, _mm512_loadu_si512(bias.add(c).cast()));
            let f = _mm512_mul_ps(
                _mm512_cvtepi32_ps(t),
                _mm512_loadu_ps(l.scale.as_ptr().add(c)),
            );
            let f = activate::<F512>(f, l.act);
            if n == 16 {
                F512::store(y, f);
            } else {
                F512::store_first(y, f, n);
            }
            if scalar_act(l.act) {
                finish_row(y, n, l.act);
            }
        }
    }
}

/// The u8 requantization of one block of 16 channels with AVX-512, its constants loaded
/// once (a depthwise kernel keeps them across a row of pixels): 64-bit products of the
/// even and odd channels (`vpmuldq`), then, when every multiplier is below 1/2, their high
/// halves shifted in 32-bit lanes (`vpsravd`), else arithmetic 64-bit shifts (`vpsravq`) and
/// the clamp in 64 bits (a multiplier may leave the i32 range). The bits of
/// [`crate::engine::kernels::qconv::requant_one`].
#[derive(Clone, Copy)]
pub(super) struct Requant512 {
    bias: __m512i,
    mult: __m512i,
    mult_odd: __m512i,
    round_even: __m512i,
    round_odd: __m512i,
    shift_even: __m512i,
    shift_odd: __m512i,
    /// `shift - 32` per channel (in order), for the 32-bit path when not `wide`.
    shift32: __m512i,
    zero_point: __m512i,
    lo: __m512i,
    hi: __m512i,
    wide: bool,
}

impl Requant512 {
    /// The clamp's bounds: of the shifted products before the zero point (64-bit lanes)
    /// when some multiplier may leave the i32 range, else of the codes (32-bit lanes).
    ///
    /// # Safety
    /// AVX-512 F present (registers only).
    #[inline(always)]
    unsafe fn bounds(l: &Lanes) -> (__m512i, __m512i) {
        // SAFETY: the caller's contract.
        unsafe {
            if l.wide {
                (
                    _mm512_set1_epi64((l.min - l.zero_point) as i64),
                    _mm512_set1_epi64((l.max - l.zero_point) as i64),
                )
            } else {
                (_mm512_set1_epi32(l.min), _mm512_set1_epi32(l.max))
            }
        }
    }

    /// The constants of channels `c..c + 16`.
    ///
    /// # Safety
    /// AVX-512 F present; the lane arrays (and `bias`) hold a whole block of 16 from `c`, a
    /// multiple of 16 (the even/odd layout of [`Lanes`]).
    #[inline(always)]
    pub(super) unsafe fn load(l: &Lanes, bias: *const i32, c: usize) -> Requant512 {
        // SAFETY: the caller's contract.
        unsafe {
            let mult = _mm512_loadu_si512(l.mult.as_ptr().add(c).cast());
            let (r, s) = (l.round.as_ptr().add(c), l.shift.as_ptr().add(c));
            let (lo, hi) = Requant512::bounds(l);
            Requant512 {
                bias: _mm512_loadu_si512(bias.add(c).cast()),
                mult,
                mult_odd: _mm512_srli_epi64::<32>(mult),
                round_even: _mm512_loadu_si512(r.cast()),
                round_odd: _mm512_loadu_si512(r.add(8).cast()),
                shift_even: _mm512_loadu_si512(s.cast()),
                shift_odd: _mm512_loadu_si512(s.add(8).cast()),
                shift32: _mm512_loadu_si512(l.shift32.as_ptr().add(c).cast()),
                zero_point: _mm512_set1_epi32(l.zero_point),
                lo,
                hi,
                wide: l.wide,
            }
        }
    }

    /// The constants of channels 0-7 twice (lanes 0-7 and 8-15: two pixels of an
    /// 8-channel layer side by side), from lanes laid out 8 wide.
    ///
    /// # Safety
    /// AVX-512 F present; `l` is laid out 8 wide (even/odd) and, with `bias`, holds
    /// channels 0-7.
    #[inline(always)]
    pub(super) unsafe fn load_twice8(l: &Lanes, bias: *const i32) -> Requant512 {
        // SAFETY: the caller's contract: eight i32 (or four i64 twice) at each pointer.
        unsafe {
            let i32x8 = |p: *const i32| _mm512_broadcast_i32x8(_mm256_loadu_si256(p.cast()));
            let i64x4 = |p: *const i64| _mm512_broadcast_i64x4(_mm256_loadu_si256(p.cast()));
            let mult = i32x8(l.mult.as_ptr());
            let (r, s) = (l.round.as_ptr(), l.shift.as_ptr());
            let (lo, hi) = Requant512::bounds(l);
            Requant512 {
                bias: i32x8(bias),
                mult,
                mult_odd: _mm512_srli_epi64::<32>(mult),
                // 8 wide, the even channels' constants come first (0, 2, 4, 6), then the
                // odd ones: each half of a 16-wide block's even (odd) lanes.
                round_even: i64x4(r),
                round_odd: i64x4(r.add(4)),
                shift_even: i64x4(s),
                shift_odd: i64x4(s.add(4)),
                shift32: i32x8(l.shift32.as_ptr()),
                zero_point: _mm512_set1_epi32(l.zero_point),
                lo,
                hi,
                wide: l.wide,
            }
        }
    }

    /// The 16 codes of the i32 sums `v` (bias not yet added), stored: `n <= 16` bytes at
    /// `y`.
    ///
    /// # Safety
    /// AVX-512 F, BW and VL present; `n` writable bytes at `y`.
    #[inline(always)]
    pub(super) unsafe fn store(&self, v: __m512i, y: *mut u8, n: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            let t = _mm512_add_epi32(v, self.bias);
            let pe = _mm512_add_epi64(_mm512_mul_epi32(t, self.mult), self.round_even);
            let po = _mm512_add_epi64(
                _mm512_mul_epi32(_mm512_srli_epi64::<32>(t), self.mult_odd),
                self.round_odd,
            );
            let q = if self.wide {
                let qe = _mm512_srav_epi64(pe, self.shift_even);
                let qo = _mm512_srav_epi64(po, self.shift_odd);
                let qe = _mm512_min_epi64(_mm512_max_epi64(qe, self.lo), self.hi);
                let qo = _mm512_min_epi64(_mm512_max_epi64(qo, self.lo), self.hi);
                _mm512_add_epi32(
                    _mm512_mask_blend_epi32(0xaaaa, qe, _mm512_slli_epi64::<32>(qo)),
                    self.zero_point,
                )
            } else {
                // Every shift is 32 or more: the high halves of the rounded products
                // (within ±2^30), shifted in 32-bit lanes by `shift - 32`, are the same
                // floor division in two steps (as the AVX2 epilogue's `vpsravd`).
                let h = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64::<32>(pe), po);
                let q = _mm512_add_epi32(_mm512_srav_epi32(h, self.shift32), self.zero_point);
                _mm512_min_epi32(_mm512_max_epi32(q, self.lo), self.hi)
            };
            let b = _mm512_cvtepi32_epi8(q);
            if n == 16 {
                _mm_storeu_si128(y.cast(), b);
            } else {
                _mm_mask_storeu_epi8(y.cast(), ((1u32 << n) - 1) as u16, b);
            }
        }
    }
}

/// AVX2 epilogue of eight channels (shared by both 256-bit families), stored: `n <= 8`
/// codes at `y` (see [`requant_256`]).
///
/// # Safety
/// The CPU has AVX2; `bias` and the lane arrays of `l` hold eight values from `c`;
/// `y` is valid for `n <= 8` bytes.
#[inline(always)]
pub(super) unsafe fn store_u8_256(
    v: __m256i,
    l: &Lanes,
    bias: *const i32,
    c: usize,
    y: *mut u8,
    n: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let b = pack8(requant_256(v, l, bias, c));
        if n == 8 {
            _mm_storel_epi64(y.cast(), b);
        } else {
            let bytes = _mm_cvtsi128_si64(b) as u64;
            for k in 0..n {
                *y.add(k) = (bytes >> (8 * k)) as u8;
            }
        }
    }
}

/// [`store_u8_256`] of sixteen values side by side: `v0` on channels `c0..c0 + 8`, `v1`
/// on `c1..c1 + 8`, stored as `n <= 16` bytes at `y` (one 16-byte store when whole).
///
/// # Safety
/// The CPU has AVX2; `bias` and the lane arrays of `l` hold eight values from `c0` and
/// from `c1`; `y` is valid for `n` bytes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn store_u8_256_x2(
    v0: __m256i,
    c0: usize,
    v1: __m256i,
    c1: usize,
    l: &Lanes,
    bias: *const i32,
    y: *mut u8,
    n: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        if n <= 8 {
            return store_u8_256(v0, l, bias, c0, y, n);
        }
        let (q0, q1) = (requant_256(v0, l, bias, c0), requant_256(v1, l, bias, c1));
        // i16 per 128-bit lane: q0 0-3, q1 0-3 | q0 4-7, q1 4-7; then bytes, and the four
        // dwords q0 0-3, q0 4-7, q1 0-3, q1 4-7 gathered first.
        let w = _mm256_packs_epi32(q0, q1);
        let b = _mm256_packus_epi16(w, w);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0));
        let b = _mm256_castsi256_si128(b);
        if n == 16 {
            _mm_storeu_si128(y.cast(), b);
        } else {
            let mut tmp = [0u8; 16];
            _mm_storeu_si128(tmp.as_mut_ptr().cast(), b);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), y, n);
        }
    }
}

/// The u8 codes (as i32 lanes) of eight channels' sums `v` (bias not yet added): 64-bit
/// products with `vpmuldq`. With every multiplier below 1/2 the high halves of the rounded
/// products are shifted in 32-bit lanes; otherwise the arithmetic 64-bit shift AVX2 lacks
/// is a logical one of `p + 2^62` (positive, below 2^64) minus `2^62 >> shift`, the same
/// floor division. The bits of [`crate::engine::kernels::qconv::requant_one`].
///
/// # Safety
/// The CPU has AVX2; `bias` and the lane arrays of `l` hold eight values from `c`.
#[inline(always)]
unsafe fn requant_256(v: __m256i, l: &Lanes, bias: *const i32, c: usize) -> __m256i {
    // SAFETY: the lane arrays hold whole blocks of 8 from `c`.
    unsafe {
        let t = _mm256_add_epi32(v, _mm256_loadu_si256(bias.add(c).cast()));
        let m = _mm256_loadu_si256(l.mult.as_ptr().add(c).cast());
        let pe = _mm256_mul_epi32(t, m);
        let po = _mm256_mul_epi32(_mm256_srli_epi64::<32>(t), _mm256_srli_epi64::<32>(m));
        let r = l.round.as_ptr().add(c);
        let q = if !l.wide {
            // Every shift is 32 or more (multipliers below 1/2): `(p + 2^(s-1)) >> s` is
            // the sum's high half (within ±2^30) shifted right by `s - 32`, the same floor
            // division in two steps, the second in 32-bit lanes.
            let pe = _mm256_add_epi64(pe, _mm256_loadu_si256(r.cast()));
            let po = _mm256_add_epi64(po, _mm256_loadu_si256(r.add(4).cast()));
            let h = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(pe), po);
            _mm256_srav_epi32(h, _mm256_loadu_si256(l.shift32.as_ptr().add(c).cast()))
        } else {
            let s = l.shift.as_ptr().add(c);
            let big = _mm256_set1_epi64x(1 << 62);
            let (se, so) = (
                _mm256_loadu_si256(s.cast()),
                _mm256_loadu_si256(s.add(4).cast()),
            );
            let pe = _mm256_add_epi64(_mm256_add_epi64(pe, _mm256_loadu_si256(r.cast())), big);
            let po = _mm256_add_epi64(
                _mm256_add_epi64(po, _mm256_loadu_si256(r.add(4).cast())),
                big,
            );
            let qe = _mm256_sub_epi64(_mm256_srlv_epi64(pe, se), _mm256_srlv_epi64(big, se));
            let qo = _mm256_sub_epi64(_mm256_srlv_epi64(po, so), _mm256_srlv_epi64(big, so));
            let lo = _mm256_set1_epi64x((l.min - l.zero_point) as i64);
            let hi = _mm256_set1_epi64x((l.max - l.zero_point) as i64);
            let (qe, qo) = (clamp64(qe, lo, hi), clamp64(qo, lo, hi));
            _mm256_blend_epi32::<0b1010_1010>(qe, _mm256_slli_epi64::<32>(qo))
        };
        let q = _mm256_add_epi32(q, _mm256_set1_epi32(l.zero_point));
        _mm256_min_epi32(
            _mm256_max_epi32(q, _mm256_set1_epi32(l.min)),
            _mm256_set1_epi32(l.max),
        )
    }
}

/// Eight i32 lanes holding codes `0..=255`, as the low eight bytes of a vector (lane 0
/// lowest).
///
/// # Safety
/// The CPU has AVX2 (registers only).
#[inline(always)]
pub(super) unsafe fn pack8(q: __m256i) -> __m128i {
    // SAFETY: AVX2 present (the callers' contract).
    unsafe {
        let w = _mm256_packs_epi32(q, q);
        let b = _mm256_packus_epi16(w, w);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        _mm256_castsi256_si128(b)
    }
}

/// `min(max(q, lo), hi)` in 64-bit lanes (AVX2 has no 64-bit min and max).
///
/// # Safety
/// The CPU has AVX2 (registers only).
#[inline(always)]
pub(super) unsafe fn clamp64(q: __m256i, lo: __m256i, hi: __m256i) -> __m256i {
    // SAFETY: AVX2 present (the callers' contract).
    unsafe {
        let q = _mm256_blendv_epi8(q, lo, _mm256_cmpgt_epi64(lo, q));
        _mm256_blendv_epi8(q, hi, _mm256_cmpgt_epi64(q, hi))
    }
}

/// # Safety
/// The CPU has AVX2 and FMA; `bias` and the lane arrays of `l` hold eight values from
/// `c`; `y` is valid for `n <= 8` f32.
#[inline(always)]
pub(super) unsafe fn store_f32_256(
    v: __m256i,
    l: &Lanes,
    bias: *const i32,
    c: usize,
    y: *mut f32,
    n: usize,
) {
    // SAFETY: as for `store_u8_256`; at most `n` values are written.
    unsafe {
        let t = _mm256_add_epi32(v, _mm256_loadu_si256(bias.add(c).cast()));
        let f = _mm256_mul_ps(
            _mm256_cvtepi32_ps(t),
            _mm256_loadu_ps(l.scale.as_ptr().add(c)),
        );
        let f = activate::<F256>(f, l.act);
        if n == 8 {
            F256::store(y, f);
        } else {
            F256::store_first(y, f, n);
        }
        if scalar_act(l.act) {
            finish_row(y, n, l.act);
        }
    }
}

/// The store methods of the two 256-bit families, which share the AVX2 epilogues.
macro_rules! epilogue_256 {
    () => {
        #[inline(always)]
        unsafe fn store_u8(
            v: __m256i,
            l: &Lanes,
            bias: *const i32,
            c: usize,
            y: *mut u8,
            n: usize,
        ) {
            // SAFETY: forwarded contract.
            unsafe { store_u8_256(v, l, bias, c, y, n) }
        }
        #[inline(always)]
        unsafe fn store_u8_x2(
            v0: __m256i,
            v1: __m256i,
            l: &Lanes,
            bias: *const i32,
            c: usize,
            y: *mut u8,
            n: usize,
        ) {
            // SAFETY: forwarded contract.
            unsafe { store_u8_256_x2(v0, c, v1, c + 8, l, bias, y, n) }
        }
        #[inline(always)]
        unsafe fn store_f32(
            v: __m256i,
            l: &Lanes,
            bias: *const i32,
            c: usize,
            y: *mut f32,
            n: usize,
        ) {
            // SAFETY: forwarded contract.
            unsafe { store_f32_256(v, l, bias, c, y, n) }
        }
    };
}

impl I8Dot for Vnni256 {
    type A = __m256i;
    type W = __m256i;
    type Acc = __m256i;
    type V = __m256i;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        // SAFETY: the trait's contract.
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn quad(p: *const u8) -> __m256i {
        // SAFETY: four readable bytes at `p`.
        unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn weights(p: *const i8) -> __m256i {
        // SAFETY: 32 readable bytes at `p`.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        // SAFETY: the trait's contract (AVX-VNNI present).
        unsafe { _mm256_dpbusd_avx_epi32(acc, a, w) }
    }
    #[inline(always)]
    unsafe fn finish(acc: __m256i) -> __m256i {
        acc
    }
    epilogue_256!();
}

impl I8Dot for Avx2I8 {
    /// The quad widened to i16 and repeated four times.
    type A = __m256i;
    /// Channels 0-3 and 4-7, widened to i16.
    type W = (__m256i, __m256i);
    /// Per channel two partial sums (depths 0-1 and 2-3), for channels 0-3 and 4-7.
    type Acc = (__m256i, __m256i);
    type V = __m256i;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> (__m256i, __m256i) {
        // SAFETY: the trait's contract.
        unsafe { (_mm256_setzero_si256(), _mm256_setzero_si256()) }
    }
    #[inline(always)]
    unsafe fn quad(p: *const u8) -> __m256i {
        // SAFETY: four readable bytes at `p`.
        // Unpacked with zero within each 128-bit lane (`vpunpcklbw`, any shuffle port)
        // rather than widened by `vpmovzxbw`, which crosses lanes: int8 ResNet-8 314 → 276
        // µs on Zen 3 (criterion, `whole/resnet8/int8`).
        unsafe {
            let q = _mm256_set1_epi32(p.cast::<i32>().read_unaligned());
            _mm256_unpacklo_epi8(q, _mm256_setzero_si256())
        }
    }
    #[inline(always)]
    unsafe fn weights(p: *const i8) -> (__m256i, __m256i) {
        // SAFETY: 32 readable bytes at `p`.
        unsafe {
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast())),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16).cast())),
            )
        }
    }
    #[inline(always)]
    unsafe fn dot(
        acc: (__m256i, __m256i),
        a: __m256i,
        w: (__m256i, __m256i),
    ) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract (AVX2). |2 · 255 · 128| fits the i32 lanes exactly.
        unsafe {
            (
                _mm256_add_epi32(acc.0, _mm256_madd_epi16(a, w.0)),
                _mm256_add_epi32(acc.1, _mm256_madd_epi16(a, w.1)),
            )
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: (__m256i, __m256i)) -> __m256i {
        // SAFETY: the trait's contract. `vphaddd` gives channels 0 1 4 5 | 2 3 6 7.
        unsafe { _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(acc.0, acc.1)) }
    }
    epilogue_256!();
}

/// Where a tile stores: u8 or f32 rows `ldy` apart.
#[derive(Clone, Copy)]
enum Out {
    U8(*mut u8),
    F32(*mut f32),
}

impl Out {
    /// # Safety
    /// `n` elements past the pointer stay inside (or one past) the destination.
    #[inline(always)]
    unsafe fn add(self, n: usize) -> Out {
        // SAFETY: the caller stays inside the destination.
        unsafe {
            match self {
                Out::U8(p) => Out::U8(p.add(n)),
                Out::F32(p) => Out::F32(p.add(n)),
            }
        }
    }
}

/// Rows of the left operand a tile reads: row `r` starts where `walk` puts it from `base` and
/// holds `len` bytes (a multiple of 4) — contiguous for a GEMM, or, for a convolution over
/// interior pixels, quad `q` at `offs[q]` (each tap's channels where the input holds them).
#[derive(Clone, Copy)]
struct Rows {
    base: *const u8,
    walk: RowWalk,
    len: usize,
    /// Read only by in-place tiles (null for a GEMM's contiguous rows).
    offs: *const u32,
}

/// One tile: rows `first..first + m` (`m <= MR`) times one panel (`len / 4` quads),
/// channels `c0..c0 + ncols` of the epilogue stored.
///
/// # Safety
/// D's features are present; `a` names `m` rows whose quads are readable (at `offs` when
/// `IN_PLACE`), `w` the panel's `len · NV · LANES` bytes, `y` `m` rows of `ncols` values `ldy` apart; the
/// lane arrays and `bias` hold the panel's channels.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<D: I8Dot, const MR: usize, const NV: usize, const IN_PLACE: bool>(
    a: Rows,
    first: usize,
    m: usize,
    w: *const i8,
    l: &Lanes,
    bias: *const i32,
    c0: usize,
    y: Out,
    ldy: usize,
    ncols: usize,
) {
    // SAFETY: every access stays inside the ranges of the function's contract.
    unsafe {
        let mut acc = [[D::zero(); NV]; MR];
        let mut wp = w;
        let mut rows = [a.base; MR];
        let at = a.walk.offsets::<MR>(first, first + m - 1);
        for r in 0..MR {
            rows[r] = a.base.add(at[r]);
        }
        for q in 0..a.len / 4 {
            // In place, a convolution's interior pixels: quad `q` at `offs[q]`.
            let o = if IN_PLACE {
                *a.offs.add(q) as usize
            } else {
                4 * q
            };
            let mut wv = [D::weights(wp); NV];
            for v in 1..NV {
                wv[v] = D::weights(wp.add(v * D::LANES * 4));
            }
            for r in 0..MR {
                let av = D::quad(rows[r].add(o));
                for v in 0..NV {
                    acc[r][v] = D::dot(acc[r][v], av, wv[v]);
                }
            }
            wp = wp.add(NV * D::LANES * 4);
        }
        // The rows one by one with constant indices (no tile is taller than 12): a loop
        // over the rows indexed the sums at run time, which kept them in a stack array that
        // a `memset` zeroed per tile (2-4 % of the int8 CNNs).
        macro_rules! rows {
            ($($r:literal)*) => {
                $(
                    if $r < MR && $r < m {
                        store_row::<D, NV>(acc[$r], y.add($r * ldy), l, bias, c0, ncols);
                    }
                )*
            };
        }
        const { assert!(MR <= 12) };
        rows!(0 1 2 3 4 5 6 7 8 9 10 11);
    }
}

/// The epilogue of one tile row: `row`'s vectors of sums requantized (or dequantized) into
/// channels `c0..c0 + ncols` at `y`.
///
/// # Safety
/// As for [`tile`]: D's features are present (inlined into a function enabling them), `y`
/// holds `ncols` values, the lane arrays and `bias` the channels.
#[inline(always)]
unsafe fn store_row<D: I8Dot, const NV: usize>(
    row: [D::Acc; NV],
    y: Out,
    l: &Lanes,
    bias: *const i32,
    c0: usize,
    ncols: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let mut v = 0;
        while v < NV {
            let j = v * D::LANES;
            if j >= ncols {
                break;
            }
            let n = (ncols - j).min(D::LANES);
            let sums = D::finish(row[v]);
            match y.add(j) {
                // Two vectors' codes at once where both hold channels.
                Out::U8(p) if v + 1 < NV && ncols - j > D::LANES => {
                    let next = D::finish(row[v + 1]);
                    let n2 = (ncols - j).min(2 * D::LANES);
                    D::store_u8_x2(sums, next, l, bias, c0 + j, p, n2);
                    v += 2;
                    continue;
                }
                Out::U8(p) => D::store_u8(sums, l, bias, c0 + j, p, n),
                Out::F32(p) => D::store_f32(sums, l, bias, c0 + j, p, n),
            }
            v += 1;
        }
    }
}

/// [`tile`] for `mt` rows (as [`tile_rows`] gives) with the matching kernel height.
///
/// # Safety
/// As for [`tile`] with `m = mt`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run_tile<D: I8Dot, const MR: usize, const NV: usize, const IN_PLACE: bool>(
    mt: usize,
    rows: Rows,
    first: usize,
    wp: *const i8,
    l: &Lanes,
    bp: *const i32,
    cp: usize,
    yi: Out,
    ldy: usize,
    ncols: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        if mt * 2 > MR {
            tile::<D, MR, NV, IN_PLACE>(rows, first, mt, wp, l, bp, cp, yi, ldy, ncols)
        } else if mt == 4 {
            tile::<D, 4, NV, IN_PLACE>(rows, first, 4, wp, l, bp, cp, yi, ldy, ncols)
        } else if mt == 2 {
            tile::<D, 2, NV, IN_PLACE>(rows, first, 2, wp, l, bp, cp, yi, ldy, ncols)
        } else {
            tile::<D, 1, NV, IN_PLACE>(rows, first, 1, wp, l, bp, cp, yi, ldy, ncols)
        }
    }
}

/// Every panel over every tile of rows (tails as in the f32 kernel).
///
/// # Safety
/// D's features are present; the checks of [`check`] (or [`conv_rows_u8i8`]'s) hold.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm<D: I8Dot, const MR: usize, const NV: usize, const IN_PLACE: bool>(
    a: Rows,
    m: usize,
    w: &PanelsI8,
    l: &Lanes,
    c0: usize,
    y: Out,
    ldy: usize,
) {
    let (k4, n, nr) = (w.k4, w.n, NV * D::LANES);
    for p in 0..w.panels() {
        let ncols = nr.min(n - p * nr);
        // SAFETY: panel p exists and rows i.. < m of `a` and `y` exist (the caller's
        // checks); the epilogue arrays cover channel c0 + p · nr + nr.
        unsafe {
            let wp = w.data.as_ptr().add(p * k4 * nr);
            let yc = y.add(p * nr);
            let cp = c0 + p * nr;
            let bp = l.bias.as_ptr();
            let mut i = 0;
            while i < m {
                let mt = tile_rows(m - i, MR);
                let yi = yc.add(i * ldy);
                run_tile::<D, MR, NV, IN_PLACE>(mt, a, i, wp, l, bp, cp, yi, ldy, ncols);
                i += mt;
            }
        }
    }
}

/// The convolution of output pixels `rows` × `cols`, every tap of which lies inside the
/// input (no padding), read from `x` in place: a GEMM whose rows are the pixels, each
/// patch's quads at `offs` (a step of 4) from its first tap. `y` starts at pixel
/// `(rows.start, cols.start)`, rows `out_c` apart (several output rows only when `cols` is
/// the whole width).
///
/// # Panics
/// If [`PatchQuads::of`] is none, `offs` is not the geometry's, a pixel's kernel
/// leaves the input, a length does not match the geometry, `w` was packed for another
/// path, or the CPU lacks `path`'s features.
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn conv_rows_u8i8(
    path: I8Path,
    g: &ConvGeometry,
    x: &[u8],
    offs: &PatchOffsets,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    w: &PanelsI8,
    epi: &QEpilogue,
    mut y: QDst<'_>,
) {
    // ok: a documented panic; ConvU8 plans in-place rows only where `of` gives a layout
    let quads = PatchQuads::of(g).expect("conv_rows_u8i8: the patches are not read in quads");
    assert!(x.len() == g.input_len());
    let run = g.row_walk(&rows, &cols);
    // ok: a documented panic; ConvU8 plans in-place runs of interior pixels only
    let (first, walk) = run.expect("conv_rows_u8i8: pixels not interior or not in a run");
    let m = rows.len() * cols.len();
    assert!(w.k4 == g.taps() * quads.tap_len(g) && w.n == g.out_c);
    assert!(offs.as_slice().len() * 4 == w.k4);
    // Every quad lies within 4 bytes past the last pixel's first tap plus the largest
    // offset: inside the input (checked), hence every pixel's.
    assert!(
        first + walk.offset(m - 1) + offs.max() + 4 <= x.len(),
        "the run's reads leave the input"
    );
    let rows = Rows {
        base: x[first..].as_ptr(),
        walk,
        len: w.k4,
        offs: offs.as_slice().as_ptr(),
    };
    let ldy = g.out_c;
    match path {
        I8Path::Vnni512 => {
            let (l, out) = check_out(w, epi, 0, &mut y, m, ldy, 16);
            assert!(VNNI512_NR.contains(&w.nr) && super::has_avx512_vnni());
            // SAFETY: the features are present (asserted); every pixel's taps lie in `x`
            // (interior pixels, offsets checked against the geometry), and `check_out`
            // bounds the rest.
            unsafe { gemm_vnni512_impl::<true>(rows, m, w, l, 0, out, ldy) }
        }
        I8Path::Vnni256 => {
            let (l, out) = check_out(w, epi, 0, &mut y, m, ldy, 8);
            assert!(VNNI256_NR.contains(&w.nr) && super::has_avx_vnni());
            // SAFETY: as above.
            unsafe { gemm_vnni256_impl::<true>(rows, m, w, l, 0, out, ldy) }
        }
        I8Path::Avx2 => {
            let (l, out) = check_out(w, epi, 0, &mut y, m, ldy, 8);
            assert!(AVX2_I8_NR.contains(&w.nr) && super::has_avx2_fma());
            // SAFETY: as above.
            unsafe { gemm_avx2_i8_impl::<true>(rows, m, w, l, 0, out, ldy) }
        }
        I8Path::Portable => panic!("conv_rows_u8i8 has no portable kernel"),
    }
}

/// Panel widths the VNNI-512 kernel has tiles for.
pub(in crate::engine::kernels) const VNNI512_NR: [usize; 5] = [16, 32, 48, 64, 128];
/// Panel widths the 256-bit VNNI kernel has tiles for.
pub(in crate::engine::kernels) const VNNI256_NR: [usize; 4] = [8, 16, 32, 64];
/// Panel widths the AVX2 kernel has tiles for.
pub(in crate::engine::kernels) const AVX2_I8_NR: [usize; 3] = [8, 16, 32];

/// Bounds every access of the kernels to `a`; returns the destination and its lane
/// layout.
#[allow(clippy::too_many_arguments)]
fn check<'a>(
    a: &[u8],
    lda: usize,
    m: usize,
    w: &PanelsI8,
    epi: &'a QEpilogue,
    c0: usize,
    y: &mut QDst<'_>,
    ldy: usize,
    lanes: usize,
) -> (&'a Lanes, Out) {
    assert!(m > 0 && w.k4 > 0 && w.n > 0 && w.k4.is_multiple_of(4));
    assert!(a.len() >= (m - 1) * lda + w.k4 && lda >= w.k4);
    check_out(w, epi, c0, y, m, ldy, lanes)
}

/// Bounds the panels, the lane arrays and `m` rows of the destination.
fn check_out<'a>(
    w: &PanelsI8,
    epi: &'a QEpilogue,
    c0: usize,
    y: &mut QDst<'_>,
    m: usize,
    ldy: usize,
    lanes: usize,
) -> (&'a Lanes, Out) {
    assert!(m > 0 && w.n > 0 && w.k4.is_multiple_of(4));
    assert!(w.data.len() >= w.panels() * w.k4 * w.nr);
    let l = epi.lanes.as_ref().expect("lanes"); // ok: SIMD paths are chosen with their lanes
    assert!(l.width == lanes && epi.exact32 && c0.is_multiple_of(lanes));
    let reach = c0 + w.panels() * w.nr;
    assert!(
        l.bias.len() >= reach
            && l.mult.len() >= reach
            && l.round.len() >= reach
            && l.shift.len() >= reach
            && l.scale.len() >= reach
    );
    let out = match y {
        QDst::U8(y) => {
            assert!(epi.is_u8() && y.len() >= (m - 1) * ldy + w.n);
            Out::U8(y.as_mut_ptr())
        }
        QDst::F32(y) => {
            assert!(!epi.is_u8() && y.len() >= (m - 1) * ldy + w.n);
            Out::F32(y.as_mut_ptr())
        }
    };
    assert!(ldy >= w.n);
    (l, out)
}

/// VNNI-512 [`crate::engine::kernels::gemm::gemm_u8i8`].
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn gemm_vnni512(
    a: &[u8],
    lda: usize,
    m: usize,
    w: &PanelsI8,
    epi: &QEpilogue,
    c0: usize,
    mut y: QDst<'_>,
    ldy: usize,
) {
    let (l, out) = check(a, lda, m, w, epi, c0, &mut y, ldy, 16);
    assert!(VNNI512_NR.contains(&w.nr) && super::has_avx512_vnni());
    let rows = Rows {
        base: a.as_ptr(),
        walk: RowWalk::contiguous(lda),
        len: w.k4,
        offs: std::ptr::null(),
    };
    // SAFETY: the features are present (asserted); `check` bounds every access.
    unsafe { gemm_vnni512_impl::<false>(rows, m, w, l, c0, out, ldy) }
}

/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI; `w.nr` is one of `VNNI512_NR`; the checks of
/// [`check`] hold (or, `IN_PLACE`, those of [`conv_rows_u8i8`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_vnni512_impl<const IN_PLACE: bool>(
    a: Rows,
    m: usize,
    w: &PanelsI8,
    l: &Lanes,
    c0: usize,
    y: Out,
    ldy: usize,
) {
    // SAFETY: the caller's checks; the features are enabled here.
    unsafe {
        match w.nr {
            16 => gemm::<Vnni512, 12, 1, IN_PLACE>(a, m, w, l, c0, y, ldy),
            32 => gemm::<Vnni512, 12, 2, IN_PLACE>(a, m, w, l, c0, y, ldy),
            48 => gemm::<Vnni512, 8, 3, IN_PLACE>(a, m, w, l, c0, y, ldy),
            64 => gemm::<Vnni512, 6, 4, IN_PLACE>(a, m, w, l, c0, y, ldy),
            _ => gemm::<Vnni512, 3, 8, IN_PLACE>(a, m, w, l, c0, y, ldy),
        }
    }
}

/// 256-bit VNNI [`crate::engine::kernels::gemm::gemm_u8i8`].
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn gemm_vnni256(
    a: &[u8],
    lda: usize,
    m: usize,
    w: &PanelsI8,
    epi: &QEpilogue,
    c0: usize,
    mut y: QDst<'_>,
    ldy: usize,
) {
    let (l, out) = check(a, lda, m, w, epi, c0, &mut y, ldy, 8);
    assert!(VNNI256_NR.contains(&w.nr) && super::has_avx_vnni());
    let rows = Rows {
        base: a.as_ptr(),
        walk: RowWalk::contiguous(lda),
        len: w.k4,
        offs: std::ptr::null(),
    };
    // SAFETY: the features are present (asserted); `check` bounds every access.
    unsafe { gemm_vnni256_impl::<false>(rows, m, w, l, c0, out, ldy) }
}

/// # Safety
/// The CPU has AVX2, FMA and AVX-VNNI; `w.nr` is one of `VNNI256_NR`; the checks of
/// [`check`] hold (or, `IN_PLACE`, those of [`conv_rows_u8i8`]).
#[target_feature(enable = "avx2,fma,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_vnni256_impl<const IN_PLACE: bool>(
    a: Rows,
    m: usize,
    w: &PanelsI8,
    l: &Lanes,
    c0: usize,
    y: Out,
    ldy: usize,
) {
    // SAFETY: the caller's checks; the features are enabled here.
    unsafe {
        match w.nr {
            8 => gemm::<Vnni256, 8, 1, IN_PLACE>(a, m, w, l, c0, y, ldy),
            16 => gemm::<Vnni256, 6, 2, IN_PLACE>(a, m, w, l, c0, y, ldy),
            32 => gemm::<Vnni256, 2, 4, IN_PLACE>(a, m, w, l, c0, y, ldy),
            _ => gemm::<Vnni256, 1, 8, IN_PLACE>(a, m, w, l, c0, y, ldy),
        }
    }
}

/// AVX2 [`crate::engine::kernels::gemm::gemm_u8i8`].
#[allow(clippy::too_many_arguments)]
pub(in crate::engine::kernels) fn gemm_avx2_i8(
    a: &[u8],
    lda: usize,
    m: usize,
    w: &PanelsI8,
    epi: &QEpilogue,
    c0: usize,
    mut y: QDst<'_>,
    ldy: usize,
) {
    let (l, out) = check(a, lda, m, w, epi, c0, &mut y, ldy, 8);
    assert!(AVX2_I8_NR.contains(&w.nr) && super::has_avx2_fma());
    let rows = Rows {
        base: a.as_ptr(),
        walk: RowWalk::contiguous(lda),
        len: w.k4,
        offs: std::ptr::null(),
    };
    // SAFETY: the features are present (asserted); `check` bounds every access.
    unsafe { gemm_avx2_i8_impl::<false>(rows, m, w, l, c0, out, ldy) }
}

/// # Safety
/// The CPU has AVX2 and FMA; `w.nr` is one of `AVX2_I8_NR`; the checks of [`check`] hold
/// (or, `IN_PLACE`, those of [`conv_rows_u8i8`]).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx2_i8_impl<const IN_PLACE: bool>(
    a: Rows,
    m: usize,
    w: &PanelsI8,
    l: &Lanes,
    c0: usize,
    y: Out,
    ldy: usize,
) {
    // SAFETY: the caller's checks; the features are enabled here.
    unsafe {
        match w.nr {
            8 => gemm::<Avx2I8, 4, 1, IN_PLACE>(a, m, w, l, c0, y, ldy),
            16 => gemm::<Avx2I8, 2, 2, IN_PLACE>(a, m, w, l, c0, y, ldy),
            _ => gemm::<Avx2I8, 1, 4, IN_PLACE>(a, m, w, l, c0, y, ldy),
        }
    }
}
