//! Int8 kernels: u8 activations × int8 weights accumulated in i32, fixed-point
//! requantization, and the float steps around them (quantize, dequantize).
//!
//! Every result here is bit-identical on every platform: the products and sums are integer
//! (exact; validation bounds the depth so the i32 accumulator never overflows), and the few
//! float steps use only IEEE-defined operations (`+ - * /`, comparisons, conversions), each
//! written once and done in scalar code by every path — no FMA, no library calls such as
//! `roundf`, no SIMD float that could flush denormals (ARMv7 NEON does).

/// `round_half_even(v)` for `|v| < 2⁵¹`: adding and subtracting 1.5 × 2⁵² leaves a value
/// whose unit is 1, rounded by the default IEEE mode (half-even); the same everywhere.
#[inline]
fn round_f64(v: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    (v + MAGIC) - MAGIC
}

/// `clamp(round_half_even(x / scale) + zero_point, 0, 255)`.
///
/// After one float division and a clamp to ±1024, adding 1.5 × 2²³ rounds half-even to an
/// integer the float's low mantissa bits hold (offset by 2²²); the rest is integer
/// arithmetic, which vectorizes.
#[inline]
pub fn quantize_one(x: f32, scale: f32, zero_point: u8) -> u8 {
    const MAGIC: f32 = 12_582_912.0;
    let r = ((x / scale).clamp(-1024.0, 1024.0) + MAGIC).to_bits();
    let q = (r & 0x7f_ffff) as i32 - 0x40_0000 + zero_point as i32;
    q.clamp(0, 255) as u8
}

/// [`quantize_one`] over a slice (SIMD float division, min/max and adds are the same IEEE
/// operations as scalar ones; on ARMv7, whose NEON is not IEEE, LLVM keeps float code
/// scalar).
pub fn quantize(x: &[f32], scale: f32, zero_point: u8, y: &mut [u8]) {
    for (q, &v) in y.iter_mut().zip(x) {
        *q = quantize_one(v, scale, zero_point);
    }
}

/// [`super::standardize`] then [`quantize`] in one pass, along the last axis
/// (`offset.len()` wide): `q = quantize_one((x - offset[i]) * scale[i])`, the same
/// operations, so the same bits, as the two steps apart.
pub fn standardize_quantize(
    x: &[f32],
    offset: &[f32],
    scale: &[f32],
    q_scale: f32,
    zero_point: u8,
    y: &mut [u8],
) {
    let n = offset.len().max(1);
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        for (((q, &v), &o), &s) in yr.iter_mut().zip(xr).zip(offset).zip(scale) {
            *q = quantize_one((v - o) * s, q_scale, zero_point);
        }
    }
}

/// `y = (q - zero_point) * scale`.
pub fn dequantize(x: &[u8], scale: f32, zero_point: u8, y: &mut [f32]) {
    for (v, &q) in y.iter_mut().zip(x) {
        *v = (q as i32 - zero_point as i32) as f32 * scale;
    }
}

/// Dynamic quantization parameters of one sample: its range widened to include 0, over
/// 255 codes. A degenerate range (all zeros, or one so wide the scale is not a normal
/// float) gives scale 1, zero point 0.
pub fn dynamic_params(x: &[f32]) -> (f32, u8) {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for &v in x {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    let scale = (hi - lo) / 255.0;
    if !scale.is_normal() {
        return (1.0, 0);
    }
    (scale, quantize_one(-lo, scale, 0))
}

/// A real multiplier `M` as `m · 2^-shift` with `m` in `[2³⁰, 2³¹)`, `shift` in `1..=62`.
/// `repr(C)`: the x86 kernel loads four of them as four 64-bit lanes (`m` low, `shift`
/// high).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct FixedMultiplier {
    /// Mantissa, `2³⁰ <= m < 2³¹`.
    pub m: i32,
    /// Right shift, `1..=62`.
    pub shift: u32,
}

impl FixedMultiplier {
    /// The nearest representation of `real` (mantissa rounded half-even from the f64's
    /// bits), or none when `real` is not a positive normal number in `[2⁻³², 2³⁰)`.
    pub fn new(real: f64) -> Option<FixedMultiplier> {
        if !(real.is_normal() && real > 0.0) {
            return None;
        }
        let bits = real.to_bits();
        let mut exp = ((bits >> 52) & 0x7ff) as i32 - 1022;
        // The mantissa as a float in [0.5, 1).
        let frac = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1022u64 << 52));
        let mut m = round_f64(frac * 2_147_483_648.0) as i64;
        if m == 1 << 31 {
            m >>= 1;
            exp += 1;
        }
        let shift = 31 - exp;
        if !(1..=62).contains(&shift) {
            return None;
        }
        Some(FixedMultiplier {
            m: m as i32,
            shift: shift as u32,
        })
    }

    /// `round(a · m / 2^shift)`, ties toward +∞, after saturating `a` to the i32 range
    /// (the product then fits an i64).
    #[inline]
    pub fn apply(self, a: i64) -> i64 {
        let a = a.clamp(i32::MIN as i64, i32::MAX as i64);
        (a * self.m as i64 + (1i64 << (self.shift - 1))) >> self.shift
    }
}

/// `round_half_even(bias / (s_in · s_w))` in f64, saturated to the i32 range: the bias on
/// the accumulator's scale.
pub fn bias_to_i32(bias: f32, s_in: f32, s_w: f32) -> i64 {
    let v = bias as f64 / (s_in as f64 * s_w as f64);
    let v = v.clamp(i32::MIN as f64, i32::MAX as f64);
    round_f64(v) as i64
}

/// What a quantized layer does with each channel's accumulator.
#[derive(Debug, Clone, PartialEq)]
pub enum Epilogue {
    /// Float output: `y = (acc - zp_in · Σw) as f32 · (s_in · s_w[c]) + bias[c]`, then ReLU.
    F32 {
        /// Per-channel weight scales.
        w_scales: Vec<f32>,
        /// Per-channel float bias.
        bias: Vec<f32>,
    },
    /// U8 output: `y = clamp(zp_out + M[c](acc + bias[c]), lo, 255)`, `lo` the zero point
    /// under ReLU, else 0. A u8 output implies a static input, so `bias[c]` holds
    /// `bias_q[c] - zp_in · Σw[c]` folded once.
    U8 {
        /// Per-channel `s_in · s_w[c] / s_out`.
        multipliers: Vec<FixedMultiplier>,
        /// Per-channel bias on the accumulator's scale, minus `zp_in · Σw[c]`.
        bias: Vec<i64>,
        /// Output zero point.
        zero_point: u8,
    },
}

/// Per-channel constants shared by the dense and conv kernels.
#[derive(Debug, Clone, PartialEq)]
pub struct QChannels {
    /// Σ of each channel's weights, for the input zero-point correction.
    pub wsum: Vec<i32>,
    /// Output transform.
    pub epilogue: Epilogue,
    /// Fused ReLU.
    pub relu: bool,
}

impl QChannels {
    /// Float output of channel `c`.
    #[inline]
    pub fn f32_out(&self, c: usize, acc: i32, zp_in: u8, s_in: f32) -> f32 {
        let Epilogue::F32 { w_scales, bias } = &self.epilogue else {
            return 0.0;
        };
        f32_one(
            acc,
            zp_in,
            self.wsum[c],
            s_in,
            w_scales[c],
            bias[c],
            self.relu,
        )
    }

    /// U8 output of channel `c`.
    #[inline]
    pub fn u8_out(&self, c: usize, acc: i32) -> u8 {
        let Epilogue::U8 {
            multipliers,
            bias,
            zero_point,
        } = &self.epilogue
        else {
            return 0;
        };
        u8_one(acc, multipliers[c], bias[c], *zero_point, self.relu)
    }

    /// [`QChannels::f32_out`] for channels `0..y.len()` at once.
    pub fn f32_all(&self, acc: &[i32], zp_in: u8, s_in: f32, y: &mut [f32]) {
        let Epilogue::F32 { w_scales, bias } = &self.epilogue else {
            return;
        };
        for ((((y, &a), &ws), &s), &b) in y
            .iter_mut()
            .zip(acc)
            .zip(&self.wsum)
            .zip(w_scales)
            .zip(bias)
        {
            *y = f32_one(a, zp_in, ws, s_in, s, b, self.relu);
        }
    }

    /// [`QChannels::u8_out`] for channels `0..y.len()` at once.
    pub fn u8_all(&self, acc: &[i32], y: &mut [u8]) {
        let Epilogue::U8 {
            multipliers,
            bias,
            zero_point,
        } = &self.epilogue
        else {
            return;
        };
        super::requant_u8(multipliers, bias, *zero_point, self.relu, acc, y);
    }
}
/// `acc - zp_in · Σw` = `Σ (q_x - zp_in) · q_w`, which fits an i32 (|q_x - zp| <= 255,
/// |q_w| <= 128, at most [`crate::graph::MAX_QUANT_DEPTH`] terms), so wrapping i32
/// arithmetic gives it exactly.
#[inline]
fn centered(acc: i32, zp_in: u8, wsum: i32) -> i32 {
    acc.wrapping_sub((zp_in as i32).wrapping_mul(wsum))
}

#[inline]
fn f32_one(acc: i32, zp_in: u8, wsum: i32, s_in: f32, s_w: f32, bias: f32, relu: bool) -> f32 {
    let v = centered(acc, zp_in, wsum) as f32 * (s_in * s_w) + bias;
    if relu && v < 0.0 { 0.0 } else { v }
}

/// The u8 requantization of a layer rewritten for 32-bit lanes, when its constants allow
/// (see [`NarrowRequant::new`]); [`super::requant_u8_narrow`] then gives exactly what
/// [`super::requant_u8`] gives with the original multipliers and biases. Arrays are padded
/// with zeros to a multiple of eight channels.
#[derive(Debug, Clone, PartialEq)]
pub struct NarrowRequant {
    channels: usize,
    /// Per-channel bias (fits i32, and so does `acc + bias` for every reachable `acc`).
    pub(super) bias: Vec<i32>,
    /// Per-channel mantissa `m`.
    pub(super) m: Vec<i32>,
    /// Per-channel `shift - 32`.
    pub(super) shift: Vec<i32>,
    /// `2^(shift - 1)` per channel, each group of eight reordered as channels
    /// 0, 2, 4, 6, 1, 3, 5, 7 (the even and the odd 64-bit lanes).
    pub(super) round: Vec<i64>,
    /// Output zero point.
    pub(super) zero_point: u8,
    /// Lower clamp: the zero point under ReLU, else 0.
    pub(super) low: u8,
}

impl NarrowRequant {
    /// The plan for channels with these constants, whose accumulators lie in `acc_range[c]`
    /// (inclusive), or none unless for every channel: `shift >= 32` and the bias and every
    /// `acc + bias` fit an i32 (so the saturation never acts). Then `M < 1/2`, so every
    /// `(t · m + 2^(shift-1)) >> shift` lies within ±2³⁰ and adding the zero point cannot
    /// overflow an i32.
    pub fn new(
        multipliers: &[FixedMultiplier],
        bias: &[i64],
        acc_range: &[(i64, i64)],
        zero_point: u8,
        relu: bool,
    ) -> Option<NarrowRequant> {
        let n = multipliers.len();
        if bias.len() != n || acc_range.len() != n {
            return None;
        }
        let padded = n.div_ceil(8) * 8;
        let mut plan = NarrowRequant {
            channels: n,
            bias: vec![0; padded],
            m: vec![0; padded],
            shift: vec![0; padded],
            round: vec![0; padded],
            zero_point,
            low: if relu { zero_point } else { 0 },
        };
        let i32_range = i32::MIN as i64..=i32::MAX as i64;
        for c in 0..n {
            let (fm, b, (lo, hi)) = (multipliers[c], bias[c], acc_range[c]);
            if fm.shift < 32 || !i32_range.contains(&b) {
                return None;
            }
            let (t_lo, t_hi) = (lo.checked_add(b)?, hi.checked_add(b)?);
            if !(i32_range.contains(&t_lo) && i32_range.contains(&t_hi)) {
                return None;
            }
            plan.bias[c] = b as i32;
            plan.m[c] = fm.m;
            plan.shift[c] = fm.shift as i32 - 32;
            let lane = c % 8;
            plan.round[c / 8 * 8 + lane / 2 + (lane % 2) * 4] = 1i64 << (fm.shift - 1);
        }
        Some(plan)
    }

    /// Channels the plan covers.
    pub fn channels(&self) -> usize {
        self.channels
    }
}

/// Portable [`super::requant_u8_narrow`]: the same 32/64-bit steps as the SIMD kernel.
pub fn requant_u8_narrow(plan: &NarrowRequant, acc: &[i32], y: &mut [u8]) {
    for (c, (y, &a)) in y.iter_mut().zip(acc).take(plan.channels).enumerate() {
        let t = a.wrapping_add(plan.bias[c]);
        let lane = c % 8;
        let round = plan.round[c / 8 * 8 + lane / 2 + (lane % 2) * 4];
        let h = ((t as i64 * plan.m[c] as i64 + round) >> 32) as i32;
        let q = (h >> plan.shift[c]) + plan.zero_point as i32;
        *y = q.clamp(plan.low as i32, 255) as u8;
    }
}

/// Per row of the `[rows, k]` matrix `w`: the smallest and largest `Σ x[i] · w[i]` over
/// u8 inputs.
pub fn acc_ranges(w: &[i8], k: usize) -> Vec<(i64, i64)> {
    w.chunks_exact(k.max(1))
        .map(|r| {
            r.iter().fold((0i64, 0i64), |(lo, hi), &v| {
                let p = 255 * v as i64;
                if p < 0 { (lo + p, hi) } else { (lo, hi + p) }
            })
        })
        .collect()
}

/// Portable [`super::requant_u8`].
pub fn requant_u8(
    multipliers: &[FixedMultiplier],
    bias: &[i64],
    zero_point: u8,
    relu: bool,
    acc: &[i32],
    y: &mut [u8],
) {
    for (((y, &a), &m), &b) in y.iter_mut().zip(acc).zip(multipliers).zip(bias) {
        *y = u8_one(a, m, b, zero_point, relu);
    }
}

/// One channel of [`requant_u8`].
#[inline]
pub fn u8_one(acc: i32, m: FixedMultiplier, bias: i64, zero_point: u8, relu: bool) -> u8 {
    let a = acc as i64 + bias;
    let lo = if relu { zero_point as i64 } else { 0 };
    (zero_point as i64 + m.apply(a)).clamp(lo, 255) as u8
}

/// Σ of each `k`-long row of `w`.
pub fn row_sums(w: &[i8], k: usize) -> Vec<i32> {
    w.chunks_exact(k.max(1))
        .map(|r| r.iter().map(|&v| v as i32).sum())
        .collect()
}

/// Portable [`super::gemv_u8i8`].
pub fn gemv_u8i8(x: &[u8], w: &[i8], acc: &mut [i32]) {
    let k = x.len();
    for (a, row) in acc.iter_mut().zip(w.chunks_exact(k.max(1))) {
        *a = dot_u8i8(x, row);
    }
}

/// `Σ x[i] · w[i]` in i32 (exact for the depths validation allows).
pub fn dot_u8i8(x: &[u8], w: &[i8]) -> i32 {
    let mut acc = [0i32; 8];
    let cx = x.chunks_exact(8);
    let cw = w.chunks_exact(8);
    let (rx, rw) = (cx.remainder(), cw.remainder());
    for (px, pw) in cx.zip(cw) {
        for i in 0..8 {
            acc[i] += px[i] as i32 * pw[i] as i32;
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (&a, &b) in rx.iter().zip(rw) {
        s += a as i32 * b as i32;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_even() {
        for (v, want) in [
            (0.5f32, 0.0f32),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
            (3.2, 3.0),
            (-3.7, -4.0),
            (5000.0, 127.0),
            (-5000.0, -128.0),
        ] {
            assert_eq!(quantize_one(v, 1.0, 128) as f32 - 128.0, want, "{v}");
        }
        assert_eq!(round_f64(2.5), 2.0);
        assert_eq!(round_f64(1073741824.5), 1073741824.0);
    }

    #[test]
    fn quantize_clamps_and_round_trips() {
        let mut q = [0u8; 5];
        quantize(&[-10.0, -0.1, 0.0, 0.26, 100.0], 0.1, 3, &mut q);
        assert_eq!(q, [0, 2, 3, 6, 255]);
        let mut y = [0.0f32; 3];
        dequantize(&[3, 6, 0], 0.5, 3, &mut y);
        assert_eq!(y, [0.0, 1.5, -1.5]);
        assert_eq!(dynamic_params(&[0.0; 4]), (1.0, 0));
        let (s, zp) = dynamic_params(&[-1.0, 3.0]);
        assert_eq!(s, 4.0 / 255.0);
        assert_eq!(zp, 64);
    }

    #[test]
    fn fixed_multiplier_matches_the_real_product() {
        for real in [1e-9, 0.000123, 0.5, 0.75, 1.0, 3.3, 1000.0] {
            let f = FixedMultiplier::new(real).expect("in range");
            assert!((1 << 30..1i64 << 31).contains(&(f.m as i64)));
            for a in [-100_000i64, -7, 0, 1, 12345, 1 << 30] {
                let want = (a as f64 * real).round();
                let got = f.apply(a) as f64;
                assert!((got - want).abs() <= 1.0, "{real} × {a}: {got} vs {want}");
            }
        }
        assert_eq!(FixedMultiplier::new(0.0), None);
        assert_eq!(FixedMultiplier::new(f64::INFINITY), None);
        assert_eq!(FixedMultiplier::new(1e-12), None);
        assert_eq!(FixedMultiplier::new(2f64.powi(31)), None);
        // Exactly 1/2: m = 2^30, shift 31; 3 × 0.5 = 1.5 rounds up to 2.
        let half = FixedMultiplier::new(0.5).expect("in range");
        assert_eq!((half.m, half.shift), (1 << 30, 31));
        assert_eq!(half.apply(3), 2);
        assert_eq!(half.apply(-3), -1);
    }

    #[test]
    fn epilogues_follow_their_formulas() {
        let ch = QChannels {
            wsum: vec![10],
            epilogue: Epilogue::F32 {
                w_scales: vec![0.5],
                bias: vec![1.0],
            },
            relu: false,
        };
        // acc 130 - zp 3 × Σw 10 = 100; × (0.1 × 0.5) + 1 = 6.
        assert!((ch.f32_out(0, 130, 3, 0.1) - 6.0).abs() < 1e-6);
        let ch = QChannels {
            wsum: vec![10],
            epilogue: Epilogue::U8 {
                multipliers: vec![FixedMultiplier::new(0.25).expect("in range")],
                // -200 - zp_in 3 × Σw 10
                bias: vec![-230],
                zero_point: 20,
            },
            relu: true,
        };
        // (130 - 30 + 0) × 0.25 + 20 = 45; with bias -200: 20 + round(-25) = -5 → relu 20.
        assert_eq!(ch.u8_out(0, 330), 45);
        assert_eq!(ch.u8_out(0, 130), 20);
    }
}
