//! Pooling over NHWC maps (channels innermost, so every window step is a run of channels):
//! max, average and global average, f32 and u8.

use super::KernelError;
use super::conv::conv_out_size;
use super::int8::FixedMultiplier;
use super::qconv::{OutputQuant, U8Quant};

/// Geometry of a pooling window over one NHWC sample (`[in_h, in_w, c]` in, `[out_h,
/// out_w, c]` out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Channels.
    pub c: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Window height.
    pub k_h: usize,
    /// Window width.
    pub k_w: usize,
    /// Vertical, horizontal stride.
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right (each below the window's size, so every window
    /// holds at least one input value).
    pub pad: [usize; 4],
}

impl PoolGeometry {
    /// A geometry with the output size that follows from the rest.
    ///
    /// # Errors
    /// [`KernelError::Geometry`] if [`PoolGeometry::validate`] refuses it.
    pub fn new(
        input: [usize; 3],
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 4],
    ) -> Result<PoolGeometry, KernelError> {
        let [in_h, in_w, c] = input;
        let bad = || KernelError::Geometry {
            op: "pool",
            reason: format!(
                "window {kernel:?} (stride {stride:?}) does not fit the {in_h}×{in_w} input with padding {pad:?}"
            ),
        };
        let g = PoolGeometry {
            in_h,
            in_w,
            c,
            out_h: conv_out_size(in_h, kernel[0], stride[0], pad[0], pad[2], 1).ok_or_else(bad)?,
            out_w: conv_out_size(in_w, kernel[1], stride[1], pad[1], pad[3], 1).ok_or_else(bad)?,
            k_h: kernel[0],
            k_w: kernel[1],
            stride,
            pad,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks that every size is positive, each padding is smaller than the window, the
    /// output size follows from the rest, and the sizes fit a `usize`.
    ///
    /// # Errors
    /// [`KernelError::Geometry`] naming the first inconsistency.
    pub fn validate(&self) -> Result<(), KernelError> {
        let g = self;
        let err = |reason: String| Err(KernelError::Geometry { op: "pool", reason });
        if [g.in_h, g.in_w, g.c, g.k_h, g.k_w, g.stride[0], g.stride[1]].contains(&0) {
            return err(format!("a size is 0 in {g:?}"));
        }
        if g.pad[0] >= g.k_h || g.pad[2] >= g.k_h || g.pad[1] >= g.k_w || g.pad[3] >= g.k_w {
            return err(format!(
                "padding {:?} must be smaller than the {}×{} window",
                g.pad, g.k_h, g.k_w
            ));
        }
        let want_h = conv_out_size(g.in_h, g.k_h, g.stride[0], g.pad[0], g.pad[2], 1);
        let want_w = conv_out_size(g.in_w, g.k_w, g.stride[1], g.pad[1], g.pad[3], 1);
        if want_h != Some(g.out_h) || want_w != Some(g.out_w) {
            return err(format!(
                "output {}×{} does not follow from the input, window, stride and padding (expected {want_h:?}×{want_w:?})",
                g.out_h, g.out_w
            ));
        }
        let sizes = [
            g.in_h.checked_mul(g.in_w).and_then(|v| v.checked_mul(g.c)),
            g.out_h
                .checked_mul(g.out_w)
                .and_then(|v| v.checked_mul(g.c)),
            g.k_h.checked_mul(g.k_w),
        ];
        if sizes.iter().any(Option::is_none) {
            return err("sizes overflow usize".into());
        }
        Ok(())
    }

    /// Values in one input sample.
    pub fn input_len(&self) -> usize {
        self.in_h * self.in_w * self.c
    }

    /// Values in one output sample.
    pub fn output_len(&self) -> usize {
        self.out_h * self.out_w * self.c
    }

    /// The input rows and columns of the window of output `(oy, ox)` (never empty).
    #[inline]
    pub(super) fn window(
        &self,
        oy: usize,
        ox: usize,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let y0 = oy * self.stride[0];
        let x0 = ox * self.stride[1];
        let ys = y0.saturating_sub(self.pad[0])..(y0 + self.k_h - self.pad[0]).min(self.in_h);
        let xs = x0.saturating_sub(self.pad[1])..(x0 + self.k_w - self.pad[1]).min(self.in_w);
        (ys, xs)
    }

    fn check(&self, x: usize, y: usize) {
        assert_eq!(x, self.input_len(), "pool input length");
        assert_eq!(y, self.output_len(), "pool output length");
    }
}

/// Max pooling (padding never wins).
///
/// # Panics
/// If `x` or `y` does not match the geometry.
pub fn max_pool_f32(g: &PoolGeometry, x: &[f32], y: &mut [f32]) {
    g.check(x.len(), y.len());
    let c = g.c;
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let (ys, xs) = g.window(oy, ox);
            let out = &mut y[(oy * g.out_w + ox) * c..][..c];
            out.fill(f32::NEG_INFINITY);
            for iy in ys {
                for ix in xs.clone() {
                    for (o, &v) in out.iter_mut().zip(&x[(iy * g.in_w + ix) * c..][..c]) {
                        *o = o.max(v);
                    }
                }
            }
        }
    }
}

/// Max pooling of u8 codes (input and output share their quantization).
///
/// # Panics
/// If `x` or `y` does not match the geometry.
pub fn max_pool_u8(g: &PoolGeometry, x: &[u8], y: &mut [u8]) {
    g.check(x.len(), y.len());
    let c = g.c;
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let (ys, xs) = g.window(oy, ox);
            let out = &mut y[(oy * g.out_w + ox) * c..][..c];
            out.fill(0);
            for iy in ys {
                for ix in xs.clone() {
                    for (o, &v) in out.iter_mut().zip(&x[(iy * g.in_w + ix) * c..][..c]) {
                        *o = (*o).max(v);
                    }
                }
            }
        }
    }
}

/// Average pooling; the divisor counts the padded cells when `count_include_pad`.
///
/// # Panics
/// If `x` or `y` does not match the geometry.
pub fn avg_pool_f32(g: &PoolGeometry, count_include_pad: bool, x: &[f32], y: &mut [f32]) {
    g.check(x.len(), y.len());
    let c = g.c;
    let window = g.k_h * g.k_w;
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let (ys, xs) = g.window(oy, ox);
            let count = if count_include_pad {
                window
            } else {
                ys.len() * xs.len()
            };
            let out = &mut y[(oy * g.out_w + ox) * c..][..c];
            out.fill(0.0);
            for iy in ys {
                for ix in xs.clone() {
                    for (o, &v) in out.iter_mut().zip(&x[(iy * g.in_w + ix) * c..][..c]) {
                        *o += v;
                    }
                }
            }
            let inv = 1.0 / count as f32;
            out.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// Mean over the `x.len() / c` pixels of each of the `c` channels.
///
/// # Panics
/// If `x` is not a whole number of pixels or `y` does not hold `c` values.
pub fn global_avg_pool_f32(x: &[f32], c: usize, y: &mut [f32]) {
    assert_eq!(y.len(), c, "global pool output length");
    let pixels = x.len() / c.max(1);
    assert_eq!(x.len(), pixels * c, "global pool input length");
    y.fill(0.0);
    for xr in x.chunks_exact(c.max(1)) {
        for (o, &v) in y.iter_mut().zip(xr) {
            *o += v;
        }
    }
    let inv = 1.0 / pixels.max(1) as f32;
    y.iter_mut().for_each(|v| *v *= inv);
}

/// u8 output code of a window sum: `clamp(zp_y + M_n(sum - n · zp_x), min, max)` with
/// `M_n = s_x / (n · s_y)`.
#[derive(Debug, Clone, PartialEq)]
struct AvgRequant {
    zp_x: u8,
    zp_y: u8,
    min: u8,
    max: u8,
    /// `M_n` for `n = 1..=mult.len()`.
    mult: Vec<FixedMultiplier>,
}

impl AvgRequant {
    fn new(
        op: &'static str,
        counts: usize,
        input: U8Quant,
        output: OutputQuant,
    ) -> Result<AvgRequant, KernelError> {
        let OutputQuant::U8 { quant, min, max } = output else {
            return Err(KernelError::Quant {
                op,
                reason: "a quantized pool writes u8".into(),
            });
        };
        for (what, q) in [("input", input), ("output", quant)] {
            if !(q.scale.is_finite() && q.scale > 0.0) {
                return Err(KernelError::Quant {
                    op,
                    reason: format!("{what} scale {} is not a positive finite number", q.scale),
                });
            }
        }
        let mult = (1..=counts)
            .map(|n| {
                let real = input.scale as f64 / (n as f64 * quant.scale as f64);
                FixedMultiplier::new(real).ok_or_else(|| KernelError::Quant {
                    op,
                    reason: format!("multiplier {real:e} for {n} cells is outside [2^-32, 2^30)"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AvgRequant {
            zp_x: input.zero_point,
            zp_y: quant.zero_point,
            min,
            max,
            mult,
        })
    }

    #[inline]
    fn code(&self, sum: i64, n: usize) -> u8 {
        let centered = sum - n as i64 * self.zp_x as i64;
        (self.zp_y as i64 + self.mult[n - 1].apply(centered))
            .clamp(self.min as i64, self.max as i64) as u8
    }
}

/// Average pooling of u8 codes into u8 codes of another quantization, in integer
/// arithmetic (the same bits on every path).
#[derive(Debug, Clone, PartialEq)]
pub struct AvgPoolU8 {
    geom: PoolGeometry,
    count_include_pad: bool,
    requant: AvgRequant,
}

impl AvgPoolU8 {
    /// `output` must be [`OutputQuant::U8`]; with `count_include_pad`, padded cells count
    /// as the input's zero point (real 0).
    ///
    /// # Errors
    /// [`KernelError`] for an inconsistent geometry or quantization parameters the
    /// integer kernel cannot represent.
    pub fn new(
        geom: PoolGeometry,
        count_include_pad: bool,
        input: U8Quant,
        output: OutputQuant,
    ) -> Result<AvgPoolU8, KernelError> {
        geom.validate()?;
        let requant = AvgRequant::new("qavgpool", geom.k_h * geom.k_w, input, output)?;
        Ok(AvgPoolU8 {
            geom,
            count_include_pad,
            requant,
        })
    }

    /// Pools one sample.
    ///
    /// # Panics
    /// If `x` or `y` does not match the geometry.
    pub fn run(&self, x: &[u8], y: &mut [u8]) {
        let g = &self.geom;
        g.check(x.len(), y.len());
        let rq = &self.requant;
        let window = g.k_h * g.k_w;
        let mut acc = [0i32; 64];
        for c0 in (0..g.c).step_by(64) {
            let n = 64.min(g.c - c0);
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let (ys, xs) = g.window(oy, ox);
                    let count = ys.len() * xs.len();
                    let acc = &mut acc[..n];
                    acc.fill(0);
                    for iy in ys {
                        for ix in xs.clone() {
                            let xr = &x[(iy * g.in_w + ix) * g.c + c0..][..n];
                            for (a, &v) in acc.iter_mut().zip(xr) {
                                *a += v as i32;
                            }
                        }
                    }
                    let (sum_pad, n_div) = if self.count_include_pad {
                        ((window - count) as i64 * rq.zp_x as i64, window)
                    } else {
                        (0, count)
                    };
                    let out = &mut y[(oy * g.out_w + ox) * g.c + c0..][..n];
                    for (o, &a) in out.iter_mut().zip(acc.iter()) {
                        *o = rq.code(a as i64 + sum_pad, n_div);
                    }
                }
            }
        }
    }
}

/// Global average pooling of u8 codes into u8 codes of another quantization.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalAvgPoolU8 {
    pixels: usize,
    c: usize,
    requant: AvgRequant,
}

impl GlobalAvgPoolU8 {
    /// The mean over `pixels` pixels of `c` channels; `output` must be
    /// [`OutputQuant::U8`].
    ///
    /// # Errors
    /// [`KernelError`] for zero sizes, more than 2^23 pixels, or quantization parameters
    /// the integer kernel cannot represent.
    pub fn new(
        pixels: usize,
        c: usize,
        input: U8Quant,
        output: OutputQuant,
    ) -> Result<GlobalAvgPoolU8, KernelError> {
        const OP: &str = "qglobalavgpool";
        if pixels == 0 || c == 0 || pixels > 1 << 23 {
            return Err(KernelError::Geometry {
                op: OP,
                reason: format!("{pixels} pixels of {c} channels (1 to 2^23 pixels)"),
            });
        }
        let mut requant = AvgRequant::new(OP, 1, input, output)?;
        let real = input.scale as f64 / (pixels as f64 * requant_scale(output));
        requant.mult = vec![
            FixedMultiplier::new(real).ok_or_else(|| KernelError::Quant {
                op: OP,
                reason: format!("multiplier {real:e} for {pixels} pixels is outside [2^-32, 2^30)"),
            })?,
        ];
        Ok(GlobalAvgPoolU8 { pixels, c, requant })
    }

    /// Pools one sample (`pixels · c` codes) into `c` codes.
    ///
    /// # Panics
    /// If `x` or `y` has the wrong length.
    pub fn run(&self, x: &[u8], y: &mut [u8]) {
        assert_eq!(x.len(), self.pixels * self.c, "global pool input length");
        assert_eq!(y.len(), self.c, "global pool output length");
        let rq = &self.requant;
        let zp = rq.zp_x as i64 * self.pixels as i64;
        let mut acc = [0i32; 64];
        for c0 in (0..self.c).step_by(64) {
            let n = 64.min(self.c - c0);
            let acc = &mut acc[..n];
            acc.fill(0);
            for xr in x.chunks_exact(self.c) {
                for (a, &v) in acc.iter_mut().zip(&xr[c0..c0 + n]) {
                    *a += v as i32;
                }
            }
            for (o, &a) in y[c0..c0 + n].iter_mut().zip(acc.iter()) {
                *o = (rq.zp_y as i64 + rq.mult[0].apply(a as i64 - zp))
                    .clamp(rq.min as i64, rq.max as i64) as u8;
            }
        }
    }
}

fn requant_scale(output: OutputQuant) -> f64 {
    match output {
        OutputQuant::U8 { quant, .. } => quant.scale as f64,
        OutputQuant::F32(_) => 1.0,
    }
}
