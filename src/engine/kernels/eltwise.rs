//! Element-wise kernels over NHWC maps: residual add (f32 with a fused activation; u8 with
//! each input's own scale and zero point, requantized in integer arithmetic), padding and
//! channel concatenation.

use super::int8::FixedMultiplier;
use super::qconv::{OutputQuant, U8Quant};
use super::{Activation, KernelError};

/// `y = act(a + b)`.
///
/// # Panics
/// If the three slices differ in length.
pub fn add_f32(a: &[f32], b: &[f32], act: Activation, y: &mut [f32]) {
    assert!(a.len() == y.len() && b.len() == y.len(), "add lengths");
    super::add_f32_dispatch(a, b, act, y)
}

/// Portable [`add_f32`].
pub(super) fn add_f32_portable(a: &[f32], b: &[f32], act: Activation, y: &mut [f32]) {
    let pairs = y.iter_mut().zip(a).zip(b);
    // The activation chosen once, outside the loop, so that the compiler vectorizes the
    // common cases (the same values as `act.apply`: `max(v, 0)` is Relu's definition).
    match act {
        Activation::Identity => pairs.for_each(|((y, &a), &b)| *y = a + b),
        Activation::Relu => pairs.for_each(|((y, &a), &b)| *y = Activation::Relu.apply(a + b)),
        _ => pairs.for_each(|((y, &a), &b)| *y = act.apply(a + b)),
    }
}

/// Bits the inputs are shifted left by before their rescale (TFLite's reference `Add`
/// does the same): the rescaled values keep 20 bits below the input's unit.
pub(super) const ADD_LEFT_SHIFT: u32 = 20;

/// A u8 residual add: `y = clamp(zp_y + M_y(M_a((a - zp_a) << 20) + M_b((b - zp_b) << 20)),
/// min, max)` with `M_a = s_a / 2s`, `M_b = s_b / 2s`, `M_y = 2s / (2^20 · s_y)`, `s =
/// max(s_a, s_b)`, each a [`FixedMultiplier`]: integer arithmetic only, the same bits on
/// every path.
#[derive(Debug, Clone, PartialEq)]
pub struct AddU8 {
    pub(super) zp_a: u8,
    pub(super) zp_b: u8,
    pub(super) m_a: FixedMultiplier,
    pub(super) m_b: FixedMultiplier,
    pub(super) m_y: FixedMultiplier,
    pub(super) zp_y: u8,
    pub(super) min: u8,
    pub(super) max: u8,
    /// `M_a((a - zp_a) << 20)` for every code `a` (within ±2^27), then the same for `b`:
    /// the two rescales become lookups, with the same bits.
    rescaled: Box<[i32; 512]>,
}

impl AddU8 {
    /// The add of two u8 inputs into a u8 output (`output` must be
    /// [`OutputQuant::U8`]).
    ///
    /// # Errors
    /// [`KernelError::Quant`] for a bad scale, an f32 output, or scales so far apart that a
    /// multiplier leaves `[2^-32, 2^30)`.
    pub fn new(a: U8Quant, b: U8Quant, output: OutputQuant) -> Result<AddU8, KernelError> {
        const OP: &str = "qadd";
        let OutputQuant::U8 { quant: y, min, max } = output else {
            return Err(KernelError::Quant {
                op: OP,
                reason: "a quantized add writes u8".into(),
            });
        };
        for (what, q) in [("first input", a), ("second input", b), ("output", y)] {
            if !(q.scale.is_finite() && q.scale > 0.0) {
                return Err(KernelError::Quant {
                    op: OP,
                    reason: format!("{what} scale {} is not a positive finite number", q.scale),
                });
            }
        }
        let twice = 2.0 * (a.scale as f64).max(b.scale as f64);
        let mult = |real: f64, what: &str| {
            FixedMultiplier::new(real).ok_or_else(|| KernelError::Quant {
                op: OP,
                reason: format!("{what} multiplier {real:e} is outside [2^-32, 2^30)"),
            })
        };
        let mut add = AddU8 {
            zp_a: a.zero_point,
            zp_b: b.zero_point,
            m_a: mult(a.scale as f64 / twice, "first input")?,
            m_b: mult(b.scale as f64 / twice, "second input")?,
            m_y: mult(
                twice / ((1u64 << ADD_LEFT_SHIFT) as f64 * y.scale as f64),
                "output",
            )?,
            zp_y: y.zero_point,
            min,
            max,
            rescaled: Box::new([0; 512]),
        };
        for code in 0..=255u8 {
            let i = code as usize;
            add.rescaled[i] = add.rescale_a(code) as i32;
            add.rescaled[256 + i] = add.rescale_b(code) as i32;
        }
        Ok(add)
    }

    fn rescale_a(&self, a: u8) -> i64 {
        self.m_a
            .apply((a as i64 - self.zp_a as i64) << ADD_LEFT_SHIFT)
    }

    fn rescale_b(&self, b: u8) -> i64 {
        self.m_b
            .apply((b as i64 - self.zp_b as i64) << ADD_LEFT_SHIFT)
    }

    /// One output code.
    #[inline]
    pub(super) fn one(&self, a: u8, b: u8) -> u8 {
        let ra = self.rescaled[a as usize] as i64;
        let rb = self.rescaled[256 + b as usize] as i64;
        (self.zp_y as i64 + self.m_y.apply(ra + rb)).clamp(self.min as i64, self.max as i64) as u8
    }

    /// [`AddU8::one`] without the lookup tables, as the formula is written.
    #[cfg(test)]
    pub(super) fn one_direct(&self, a: u8, b: u8) -> u8 {
        let r = self.rescale_a(a) + self.rescale_b(b);
        (self.zp_y as i64 + self.m_y.apply(r)).clamp(self.min as i64, self.max as i64) as u8
    }

    /// `y = a + b` element-wise, requantized.
    ///
    /// # Panics
    /// If the three slices differ in length.
    pub fn run(&self, a: &[u8], b: &[u8], y: &mut [u8]) {
        assert!(a.len() == y.len() && b.len() == y.len(), "qadd lengths");
        super::add_u8_dispatch(self, a, b, y)
    }
}

/// Portable [`AddU8::run`].
pub(super) fn add_u8_portable(add: &AddU8, a: &[u8], b: &[u8], y: &mut [u8]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = add.one(a, b);
    }
}

/// Pads an NHWC map `[h, w, c]` by `pad` (top, left, bottom, right) with `value` into
/// `y` (`[h + top + bottom, w + left + right, c]`).
///
/// # Panics
/// If `x` is not `h · w · c` long or `y` not the padded size.
pub fn pad_nhwc<T: Copy>(x: &[T], hwc: [usize; 3], pad: [usize; 4], value: T, y: &mut [T]) {
    let [h, w, c] = hwc;
    let (oh, ow) = (h + pad[0] + pad[2], w + pad[1] + pad[3]);
    assert_eq!(x.len(), h * w * c, "pad input length");
    assert_eq!(y.len(), oh * ow * c, "pad output length");
    let row = ow * c;
    y[..pad[0] * row].fill(value);
    y[(pad[0] + h) * row..].fill(value);
    for (iy, xr) in x.chunks_exact(w * c).enumerate() {
        let yr = &mut y[(pad[0] + iy) * row..(pad[0] + iy + 1) * row];
        yr[..pad[1] * c].fill(value);
        yr[pad[1] * c..(pad[1] + w) * c].copy_from_slice(xr);
        yr[(pad[1] + w) * c..].fill(value);
    }
}

/// Concatenates NHWC maps of the same pixels along channels: `inputs` holds each map and
/// its channel count; `y` holds `pixels · Σ channels` values.
///
/// # Panics
/// If an input is not `pixels · channels` long for the `pixels` that `y` implies.
pub fn concat_channels<T: Copy>(inputs: &[(&[T], usize)], y: &mut [T]) {
    let total: usize = inputs.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return;
    }
    let pixels = y.len() / total;
    assert_eq!(y.len(), pixels * total, "concat output length");
    let mut c0 = 0;
    for &(x, c) in inputs {
        assert_eq!(x.len(), pixels * c, "concat input length");
        if c == 0 {
            continue;
        }
        for (p, xr) in x.chunks_exact(c).enumerate() {
            y[p * total + c0..p * total + c0 + c].copy_from_slice(xr);
        }
        c0 += c;
    }
}
