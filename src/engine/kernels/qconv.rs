//! NHWC int8 convolution over one sample: u8 activations with a zero point × i8 weights
//! with one scale per output channel, exact i32 sums, then requantization to u8 with
//! [`FixedMultiplier`] (the same bits on every path) or dequantization to f32.

#[cfg(target_arch = "x86_64")]
use super::conv::PixelRun;
use super::conv::{ConvGeometry, PatchOffsets, PatchQuads, im2col_taps, im2col_tile};
use super::gemm::{self, PanelsI8, QDst};
use super::int8::FixedMultiplier;
use super::{Activation, I8Path, KernelError};

/// The quantization of a u8 tensor: `real = scale · (code - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct U8Quant {
    /// Positive, finite.
    pub scale: f32,
    /// The code of 0.0.
    pub zero_point: u8,
}

impl U8Quant {
    fn check(self, op: &'static str, what: &str) -> Result<(), KernelError> {
        if self.scale.is_finite() && self.scale > 0.0 {
            Ok(())
        } else {
            Err(KernelError::Quant {
                op,
                reason: format!(
                    "{what} scale {} is not a positive finite number",
                    self.scale
                ),
            })
        }
    }
}

/// What an int8 convolution or dense layer writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputQuant {
    /// u8 codes of `quant`, clamped to `[min, max]` (the fused activation: Relu is
    /// `[zero_point, 255]`; see [`OutputQuant::u8_with`]).
    U8 {
        /// Output scale and zero point.
        quant: U8Quant,
        /// Lowest code.
        min: u8,
        /// Highest code.
        max: u8,
    },
    /// Dequantized f32, then the activation.
    F32(Activation),
}

impl OutputQuant {
    /// A u8 output with `act` as a clamp of the codes: Identity `[0, 255]`, Relu
    /// `[zp, 255]`, Clip `[zp + round(min / scale), zp + round(max / scale)]` within
    /// `0..=255`.
    ///
    /// # Errors
    /// [`KernelError::Quant`] for an activation that is not a clamp (Sigmoid, Tanh,
    /// LeakyRelu, HardSwish) or a bad scale.
    pub fn u8_with(quant: U8Quant, act: Activation) -> Result<OutputQuant, KernelError> {
        quant.check("requantize", "output")?;
        let code = |v: f32| {
            (quant.zero_point as f64 + (v as f64 / quant.scale as f64).round_ties_even())
                .clamp(0.0, 255.0) as u8
        };
        let (min, max) = match act {
            Activation::Identity => (0, 255),
            Activation::Relu => (quant.zero_point, 255),
            Activation::Clip { min, max } if min <= max => (code(min), code(max)),
            other => {
                return Err(KernelError::Quant {
                    op: "requantize",
                    reason: format!(
                        "activation {other:?} is not a clamp of the output codes; keep an f32 output"
                    ),
                });
            }
        };
        Ok(OutputQuant::U8 { quant, min, max })
    }
}

/// Per output channel: the bias on the accumulator's scale with `-zp_in · Σw` folded in,
/// and the output transform. The portable kernels compute in i64 as written here; the
/// SIMD kernels in i32 when [`QEpilogue::exact32`] says no sum can leave the i32 range.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct QEpilogue {
    /// `bias[c] - zp_in · Σw[c]`.
    pub(super) bias: Vec<i64>,
    /// Whether `acc + bias[c]` fits an i32 for every u8 input.
    pub(super) exact32: bool,
    pub(super) out: QOut,
    /// The constants in the layout of a SIMD epilogue of `lanes.width` channels, when
    /// [`QEpilogue::exact32`] holds and a SIMD family runs the layer.
    pub(super) lanes: Option<Lanes>,
}

/// Per-channel constants for SIMD epilogues: i32 bias and mantissa, f32 scale, and for
/// the 64-bit steps of the u8 requantization `2^(shift-1)` and `shift` as i64, arranged
/// per block of `width` channels as the family's widening multiply produces its products
/// (x86 `vpmuldq`: the even channels, then the odd ones; NEON `smull`/`smull2`: in
/// order). Each group's channels start a block (a group of `group` channels takes
/// `group_pad` slots); the arrays run 128 zero slots past the last group, so a kernel may
/// read whole panels there.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Lanes {
    pub(super) width: usize,
    pub(super) group: usize,
    pub(super) group_pad: usize,
    pub(super) bias: Vec<i32>,
    pub(super) mult: Vec<i32>,
    pub(super) round: Vec<i64>,
    pub(super) shift: Vec<i64>,
    /// `shift - 32` as i32, in channel order, when no multiplier is 1/2 or more (not
    /// [`Lanes::wide`]): AVX2 then requantizes in 32-bit lanes.
    pub(super) shift32: Vec<i32>,
    pub(super) scale: Vec<f32>,
    pub(super) zero_point: i32,
    pub(super) min: i32,
    pub(super) max: i32,
    /// Whether some channel's multiplier is 1/2 or more, so `M(t)` may leave the i32
    /// range and must be clamped in 64 bits.
    pub(super) wide: bool,
    pub(super) act: Activation,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum QOut {
    U8 {
        /// Per channel `s_in · s_w[c] / s_out`.
        mult: Vec<FixedMultiplier>,
        zero_point: u8,
        min: u8,
        max: u8,
    },
    F32 {
        /// Per channel `s_in · s_w[c]`.
        scale: Vec<f32>,
        act: Activation,
    },
}

/// `clamp(zero_point + M(saturate_i32(a)), min, max)`: the u8 requantization every path
/// gives.
#[inline]
pub(super) fn requant_one(a: i64, m: FixedMultiplier, zero_point: u8, min: u8, max: u8) -> u8 {
    (zero_point as i64 + m.apply(a)).clamp(min as i64, max as i64) as u8
}

impl QEpilogue {
    /// The epilogue of channels whose i8 weights are `w(c, kk)` for `kk < depth`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        op: &'static str,
        channels: usize,
        depth: usize,
        w: impl Fn(usize, usize) -> i8,
        weight_scales: &[f32],
        bias: &[i32],
        input: U8Quant,
        output: OutputQuant,
    ) -> Result<QEpilogue, KernelError> {
        input.check(op, "input")?;
        if weight_scales.len() != channels && weight_scales.len() != 1 {
            return Err(KernelError::Length {
                op,
                what: "weight scales",
                got: weight_scales.len(),
                want: channels,
            });
        }
        if bias.len() != channels {
            return Err(KernelError::Length {
                op,
                what: "bias",
                got: bias.len(),
                want: channels,
            });
        }
        let s_w = |c: usize| weight_scales[if weight_scales.len() == 1 { 0 } else { c }];
        for c in 0..channels {
            let s = s_w(c);
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::Quant {
                    op,
                    reason: format!(
                        "channel {c}: weight scale {s} is not a positive finite number"
                    ),
                });
            }
        }
        let mut folded = Vec::with_capacity(channels);
        let mut exact32 = true;
        let i32_range = i32::MIN as i64..=i32::MAX as i64;
        for (c, &b) in bias.iter().enumerate() {
            let (mut lo, mut hi, mut sum) = (0i64, 0i64, 0i64);
            for kk in 0..depth {
                let v = w(c, kk) as i64;
                sum += v;
                if v < 0 {
                    lo += 255 * v;
                } else {
                    hi += 255 * v;
                }
            }
            let f = b as i64 - input.zero_point as i64 * sum;
            exact32 &= i32_range.contains(&(lo + f)) && i32_range.contains(&(hi + f));
            folded.push(f);
        }
        let out = match output {
            OutputQuant::U8 { quant, min, max } => {
                quant.check(op, "output")?;
                if min > max {
                    return Err(KernelError::Quant {
                        op,
                        reason: format!("output clamp [{min}, {max}] is empty"),
                    });
                }
                let mut mult = Vec::with_capacity(channels);
                for c in 0..channels {
                    let real = input.scale as f64 * s_w(c) as f64 / quant.scale as f64;
                    mult.push(FixedMultiplier::new(real).ok_or_else(|| KernelError::Quant {
                        op,
                        reason: format!(
                            "channel {c}: requantization multiplier {real:e} (input scale × weight scale / output scale) is outside [2^-32, 2^30)"
                        ),
                    })?);
                }
                QOut::U8 {
                    mult,
                    zero_point: quant.zero_point,
                    min,
                    max,
                }
            }
            OutputQuant::F32(act) => QOut::F32 {
                scale: (0..channels).map(|c| input.scale * s_w(c)).collect(),
                act,
            },
        };
        Ok(QEpilogue {
            bias: folded,
            exact32,
            out,
            lanes: None,
        })
    }

    /// Prepares [`QEpilogue::lanes`] for SIMD epilogues `width` channels wide
    /// (`even_odd`: x86's arrangement). Without [`QEpilogue::exact32`] nothing is
    /// prepared and the layer must run the portable epilogue.
    pub(super) fn prepare_lanes(&mut self, width: usize, even_odd: bool, group: usize) {
        if !self.exact32 {
            return;
        }
        let channels = self.bias.len();
        let group_pad = group.div_ceil(width) * width;
        let slot = |c: usize| c / group * group_pad + c % group;
        let padded = (channels / group * group_pad).div_ceil(64) * 64 + 128;
        let mut l = Lanes {
            width,
            group,
            group_pad,
            bias: vec![0; padded],
            mult: vec![0; padded],
            round: vec![0; padded],
            // Padding channels shift by 1 (never stored; any valid shift would do).
            shift: vec![1; padded],
            shift32: vec![0; padded],
            scale: vec![0.0; padded],
            zero_point: 0,
            min: 0,
            max: 0,
            wide: false,
            act: Activation::Identity,
        };
        match &self.out {
            QOut::U8 {
                mult,
                zero_point,
                min,
                max,
            } => {
                for (c, m) in mult.iter().enumerate() {
                    let s = slot(c);
                    let at = if even_odd {
                        let (block, j) = (s / width * width, s % width);
                        block + if j % 2 == 0 { j / 2 } else { width / 2 + j / 2 }
                    } else {
                        s
                    };
                    l.mult[s] = m.m;
                    l.round[at] = 1i64 << (m.shift - 1);
                    l.shift[at] = m.shift as i64;
                    l.shift32[s] = m.shift as i32 - 32;
                    l.wide |= m.shift < 32;
                }
                (l.zero_point, l.min, l.max) = (*zero_point as i32, *min as i32, *max as i32);
            }
            QOut::F32 { scale, act } => {
                for (c, &v) in scale.iter().enumerate() {
                    l.scale[slot(c)] = v;
                }
                l.act = *act;
            }
        }
        for (c, &b) in self.bias.iter().enumerate() {
            l.bias[slot(c)] = b as i32;
        }
        self.lanes = Some(l);
    }

    /// `path` with the lane constants prepared for it, or the portable family when some
    /// sum could leave the i32 range (the SIMD epilogues add in 32 bits).
    /// `group`: channels per group (all of them for one group).
    pub(super) fn simd_path(&mut self, path: I8Path, group: usize) -> I8Path {
        match path.epilogue_lanes() {
            Some((width, even_odd)) if self.exact32 => {
                self.prepare_lanes(width, even_odd, group);
                path
            }
            None if path.portable_epilogue() => path,
            _ => I8Path::Portable,
        }
    }

    /// The epilogue channel a kernel's `c0` names for the first channel of group `g`
    /// (the SIMD layouts start each group on a block).
    pub(super) fn group_base(&self, g: usize, group: usize) -> usize {
        match &self.lanes {
            Some(l) => g * l.group_pad,
            None => g * group,
        }
    }

    pub(super) fn channels(&self) -> usize {
        self.bias.len()
    }

    pub(super) fn is_u8(&self) -> bool {
        matches!(self.out, QOut::U8 { .. })
    }

    /// u8 outputs of channels `c0..c0 + acc.len()`.
    #[inline]
    pub(super) fn u8_row(&self, c0: usize, acc: &[i32], y: &mut [u8]) {
        let QOut::U8 {
            mult,
            zero_point,
            min,
            max,
        } = &self.out
        else {
            unreachable!("a u8 destination for an f32 epilogue")
        };
        for (i, (y, &a)) in y.iter_mut().zip(acc).enumerate() {
            let c = c0 + i;
            *y = requant_one(a as i64 + self.bias[c], mult[c], *zero_point, *min, *max);
        }
    }

    /// f32 outputs of channels `c0..c0 + acc.len()`.
    #[inline]
    pub(super) fn f32_row(&self, c0: usize, acc: &[i32], y: &mut [f32]) {
        let QOut::F32 { scale, act } = &self.out else {
            unreachable!("an f32 destination for a u8 epilogue")
        };
        for (i, (y, &a)) in y.iter_mut().zip(acc).enumerate() {
            let c = c0 + i;
            *y = act.apply((a as i64 + self.bias[c]) as f32 * scale[c]);
        }
    }
}

/// An int8 NHWC convolution: u8 input with a zero point, i8 weights with per-channel
/// scales, i32 sums, u8 or f32 output. Build once at load ([`ConvU8::new`]);
/// [`ConvU8::run_u8`] / [`ConvU8::run_f32`] allocate nothing. Every implementation family
/// gives the same bits.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvU8 {
    geom: ConvGeometry,
    path: I8Path,
    input: U8Quant,
    epi: QEpilogue,
    plan: QPlan,
}

#[derive(Debug, Clone, PartialEq)]
enum QPlan {
    /// One GEMM per group, over the input pixels in place (1×1, stride 1, no padding,
    /// channels per group a multiple of 4) or over im2col tiles of `tile` pixels whose
    /// patches (each tap `tap_len` values) are padded to a multiple of 4 with the input
    /// zero point. With `offsets` (x86 SIMD families, one group, channels a multiple of 4
    /// or RGB): the pixels whose kernel lies inside the input are read in place, a row of
    /// them at a time, each patch's quads at these offsets, and only the border goes
    /// through im2col; with `padded` too, the input is first copied into scratch with a
    /// border of the zero point and every pixel read in place.
    Gemm {
        im2col: bool,
        tile: usize,
        panels: Vec<PanelsI8>,
        /// Values per tap in a patch: the channels per group, or 4 for RGB read in place
        /// (a zero weight after the 3 channels).
        tap_len: usize,
        offsets: Option<PatchOffsets>,
        padded: bool,
    },
    /// Weights `[tap][c]` (channels padded to `c_pad`). With `padded` (SIMD families, a
    /// layer with padding), the input is first copied into scratch with its border filled
    /// with the zero point, so that the kernel reads every tap in place and takes no
    /// border path: on the small maps of keyword spotting and MobileNet most pixels touch
    /// the border.
    Depthwise {
        c_pad: usize,
        w: Vec<i8>,
        padded: bool,
    },
}

impl ConvU8 {
    /// Packs `weights` (`[out_c, in_c / groups, k_h, k_w]`, i8) for the fastest kernel this
    /// CPU runs. `weight_scales` holds one scale per output channel (or one for all),
    /// `bias` one i32 per output channel on the scale `input.scale · weight_scale[c]`.
    ///
    /// # Errors
    /// [`KernelError`] if the geometry is inconsistent, a length does not match it, or the
    /// quantization parameters cannot be represented.
    pub fn new(
        geom: ConvGeometry,
        weights: &[i8],
        weight_scales: &[f32],
        bias: &[i32],
        input: U8Quant,
        output: OutputQuant,
    ) -> Result<ConvU8, KernelError> {
        ConvU8::with_path(
            geom,
            weights,
            weight_scales,
            bias,
            input,
            output,
            I8Path::detect(),
        )
    }

    /// [`ConvU8::new`] for a given implementation family (one of [`I8Path::available`]).
    ///
    /// # Errors
    /// As [`ConvU8::new`], and [`KernelError::Geometry`] if this CPU cannot run `path`.
    pub fn with_path(
        geom: ConvGeometry,
        weights: &[i8],
        weight_scales: &[f32],
        bias: &[i32],
        input: U8Quant,
        output: OutputQuant,
        path: I8Path,
    ) -> Result<ConvU8, KernelError> {
        const OP: &str = "qconv2d";
        geom.check_params(OP, weights.len(), bias.len())?;
        if !I8Path::available().contains(&path) {
            return Err(KernelError::Geometry {
                op: OP,
                reason: format!("this CPU cannot run the {} kernels", path.name()),
            });
        }
        let (icg, ocg, taps) = (geom.icg(), geom.ocg(), geom.taps());
        let depth = taps * icg;
        check_depth(OP, depth)?;
        // Channel c's weight kk in (tap, input channel) order.
        let w_at = |c: usize, kk: usize| {
            let (tap, ic) = (kk / icg, kk % icg);
            weights[geom.weight_index(c, ic, tap / geom.k_w, tap % geom.k_w)]
        };
        let mut epi = QEpilogue::new(
            OP,
            geom.out_c,
            depth,
            w_at,
            weight_scales,
            bias,
            input,
            output,
        )?;
        let path = if geom.is_depthwise() {
            // The depthwise kernels store 16 channels at a time with the VNNI-512
            // epilogue, else 8 with the 256-bit ones, over all channels as one group.
            match path.epilogue_lanes() {
                Some((width, _)) if epi.exact32 => {
                    // 16 wide where the VNNI-512 family's epilogue can store a block.
                    // Not for 8 channels: a 16-wide block would leave half its lanes idle,
                    // where the 8-wide kernel runs two pixels per block (int8 MobileNet's
                    // first depthwise layer; the whole model 153 -> 145 µs, p10 on a Zen 4).
                    let wide = width == 16 && geom.out_c != 8;
                    epi.prepare_lanes(if wide { 16 } else { 8 }, true, geom.out_c);
                    path
                }
                None if path.portable_epilogue() => path,
                _ => I8Path::Portable,
            }
        } else {
            epi.simd_path(path, ocg)
        };
        let plan = if geom.is_depthwise() {
            let c = geom.in_c;
            let c_pad = super::dw_channels_padded(c);
            let mut w = vec![0; taps * c_pad];
            for ch in 0..c {
                for tap in 0..taps {
                    w[tap * c_pad + ch] = w_at(ch, tap);
                }
            }
            QPlan::Depthwise {
                c_pad,
                w,
                padded: path != I8Path::Portable && geom.pad.iter().any(|&p| p > 0),
            }
        } else {
            let nr = gemm::i8_nr(path, ocg, false);
            let im2col = !(geom.is_pointwise() && icg.is_multiple_of(4));
            // x86 SIMD families read the pixels whose kernel lies inside the input in place,
            // four bytes at a read (`PatchQuads`: a tap's channels or a kernel row's taps;
            // RGB packs a zero weight after each tap's 3 channels).
            let quads = (cfg!(target_arch = "x86_64") && im2col && path != I8Path::Portable)
                .then(|| PatchQuads::of(&geom))
                .flatten();
            let tap_len = quads.map_or(icg, |q| q.tap_len(&geom));
            let panels: Vec<PanelsI8> = (0..geom.groups)
                .map(|g| {
                    PanelsI8::pack(taps * tap_len, ocg, nr, |kk, j| {
                        let (tap, ic) = (kk / tap_len, kk % tap_len);
                        if ic < icg {
                            w_at(g * ocg + j, tap * icg + ic)
                        } else {
                            0
                        }
                    })
                })
                .collect();
            let padded = quads.is_some() && super::conv::pad_gemm_conv_input(&geom);
            let read = if padded {
                geom.over_padded_input()
            } else {
                geom
            };
            let offsets = quads.and_then(|q| q.offsets(&read));
            let k4 = panels[0].k4;
            let tile = if im2col {
                im2col_tile(k4, gemm::i8_mr(path), geom.out_h * geom.out_w)
            } else {
                0
            };
            QPlan::Gemm {
                im2col,
                tile,
                panels,
                tap_len,
                padded: padded && offsets.is_some(),
                offsets,
            }
        };
        Ok(ConvU8 {
            geom,
            path,
            input,
            epi,
            plan,
        })
    }

    /// The geometry.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geom
    }

    /// The implementation family the weights were packed for.
    pub fn path(&self) -> I8Path {
        self.path
    }

    /// Whether the output is u8 ([`ConvU8::run_u8`]) rather than f32 ([`ConvU8::run_f32`]).
    pub fn output_is_u8(&self) -> bool {
        self.epi.is_u8()
    }

    /// Scratch bytes a run needs: im2col tiles (and the padded input of a layer read in
    /// place from one), or the padded input of a depthwise layer with padding on a SIMD
    /// family; 0 for 1×1 convolutions.
    pub fn scratch_len(&self) -> usize {
        match &self.plan {
            QPlan::Gemm {
                im2col: true,
                tile,
                panels,
                padded,
                ..
            } => {
                let copy = if *padded {
                    self.geom.over_padded_input().input_len()
                } else {
                    0
                };
                copy + tile * panels[0].k4
            }
            QPlan::Depthwise { padded: true, .. } => self.geom.over_padded_input().input_len(),
            _ => 0,
        }
    }

    /// The convolution of one NHWC sample into u8 codes.
    ///
    /// # Panics
    /// If the output is f32, `x` is not [`ConvGeometry::input_len`] long, `y` not
    /// [`ConvGeometry::output_len`], or `scratch` shorter than [`ConvU8::scratch_len`].
    pub fn run_u8(&self, x: &[u8], y: &mut [u8], scratch: &mut [u8]) {
        assert!(self.epi.is_u8(), "qconv2d: this layer writes f32");
        assert_eq!(y.len(), self.geom.output_len(), "qconv2d output length");
        self.run(x, QDst::U8(y), scratch)
    }

    /// The convolution of one NHWC sample, dequantized to f32.
    ///
    /// # Panics
    /// If the output is u8, or a length is wrong as for [`ConvU8::run_u8`].
    pub fn run_f32(&self, x: &[u8], y: &mut [f32], scratch: &mut [u8]) {
        assert!(!self.epi.is_u8(), "qconv2d: this layer writes u8");
        assert_eq!(y.len(), self.geom.output_len(), "qconv2d output length");
        self.run(x, QDst::F32(y), scratch)
    }

    fn run(&self, x: &[u8], mut y: QDst<'_>, scratch: &mut [u8]) {
        let g = &self.geom;
        assert_eq!(x.len(), g.input_len(), "qconv2d input length");
        assert!(
            scratch.len() >= self.scratch_len(),
            "qconv2d scratch length"
        );
        let pixels = g.out_h * g.out_w;
        let zp = self.input.zero_point;
        match &self.plan {
            QPlan::Depthwise {
                c_pad,
                w,
                padded: true,
            } => {
                let gp = g.over_padded_input();
                let xp = &mut scratch[..gp.input_len()];
                super::pad_nhwc(x, [g.in_h, g.in_w, g.in_c], g.pad, zp, xp);
                super::depthwise_u8(self.path, &gp, xp, zp, w, *c_pad, &self.epi, y)
            }
            QPlan::Depthwise { c_pad, w, .. } => {
                super::depthwise_u8(self.path, g, x, zp, w, *c_pad, &self.epi, y)
            }
            QPlan::Gemm {
                im2col: false,
                panels,
                ..
            } => {
                let icg = g.icg();
                for (gi, pn) in panels.iter().enumerate() {
                    let (a, c0) = (&x[gi * icg..], self.epi.group_base(gi, pn.n));
                    let dst = sub_dst(&mut y, gi * pn.n);
                    gemm::gemm_u8i8(
                        self.path, a, g.in_c, pixels, pn, &self.epi, c0, dst, g.out_c,
                    );
                }
            }
            #[cfg(target_arch = "x86_64")]
            QPlan::Gemm {
                im2col: true,
                tile,
                panels,
                tap_len,
                offsets: Some(offsets),
                padded,
            } => {
                let pn = &panels[0];
                let (g, x, scratch) = if *padded {
                    let gp = g.over_padded_input();
                    let (xp, rest) = scratch.split_at_mut(gp.input_len());
                    super::pad_nhwc(x, [g.in_h, g.in_w, g.in_c], g.pad, zp, xp);
                    (gp, &*xp, rest)
                } else {
                    (*g, x, scratch)
                };
                let g = &g;
                // Each offset starts a 4-byte read.
                g.pixel_runs(offsets.max() + 4, |run| match run {
                    PixelRun::Im2col(pixels) => {
                        self.run_im2col(g, x, &mut y, scratch, pn, 0, *tile, *tap_len, pixels)
                    }
                    PixelRun::InPlace { rows, cols } => {
                        let dst = sub_dst(&mut y, (rows.start * g.out_w + cols.start) * g.out_c);
                        super::x86::qgemm::conv_rows_u8i8(
                            self.path, g, x, offsets, rows, cols, pn, &self.epi, dst,
                        );
                    }
                });
            }
            QPlan::Gemm {
                im2col: true,
                tile,
                panels,
                tap_len,
                ..
            } => {
                for (gi, pn) in panels.iter().enumerate() {
                    self.run_im2col(g, x, &mut y, scratch, pn, gi, *tile, *tap_len, 0..pixels);
                }
            }
        }
    }

    /// Output pixels `pixels` of group `gi` through im2col tiles of `tile` pixels.
    #[allow(clippy::too_many_arguments)]
    fn run_im2col(
        &self,
        g: &ConvGeometry,
        x: &[u8],
        y: &mut QDst<'_>,
        scratch: &mut [u8],
        pn: &PanelsI8,
        gi: usize,
        tile: usize,
        tap_len: usize,
        pixels: std::ops::Range<usize>,
    ) {
        let c0 = self.epi.group_base(gi, pn.n);
        let mut p0 = pixels.start;
        while p0 < pixels.end {
            let m = tile.min(pixels.end - p0);
            let rows = &mut scratch[..m * pn.k4];
            im2col_taps(g, x, gi, p0, pn.k4, tap_len, self.input.zero_point, rows);
            let dst = sub_dst(y, p0 * g.out_c + gi * pn.n);
            gemm::gemm_u8i8(self.path, rows, pn.k4, m, pn, &self.epi, c0, dst, g.out_c);
            p0 += m;
        }
    }
}

/// Products per output the int8 kernels accept: `255 · 128 · depth` fits an i32, so the
/// raw sums never overflow.
pub const MAX_I8_DEPTH: usize = 65536;

pub(super) fn check_depth(op: &'static str, depth: usize) -> Result<(), KernelError> {
    if depth > MAX_I8_DEPTH {
        return Err(KernelError::Geometry {
            op,
            reason: format!(
                "each output sums {depth} products; int8 kernels allow at most {MAX_I8_DEPTH}"
            ),
        });
    }
    Ok(())
}

/// `y[at..]`.
pub(super) fn sub_dst<'a>(y: &'a mut QDst<'_>, at: usize) -> QDst<'a> {
    match y {
        QDst::U8(y) => QDst::U8(&mut y[at..]),
        QDst::F32(y) => QDst::F32(&mut y[at..]),
    }
}

/// The sums `Σ x · w` over the taps of output pixel `[oy, ox]` for channels
/// `c0..c0 + acc.len()`, added to `acc`; taps in the padding read `zp_row` (the input's
/// zero point, at least `acc.len()` long).
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_u8_sums(
    g: &ConvGeometry,
    x: &[u8],
    zp_row: &[u8],
    w: &[i8],
    c_pad: usize,
    [oy, ox]: [usize; 2],
    c0: usize,
    acc: &mut [i32],
) {
    let (c, n) = (g.in_c, acc.len());
    for ky in 0..g.k_h {
        for kx in 0..g.k_w {
            let xr = match g.source(oy, ox, ky, kx) {
                Some(s) => &x[s * c + c0..s * c + c0 + n],
                None => &zp_row[..n],
            };
            let wr = &w[(ky * g.k_w + kx) * c_pad + c0..][..n];
            for ((a, &xv), &wv) in acc.iter_mut().zip(xr).zip(wr) {
                *a += xv as i32 * wv as i32;
            }
        }
    }
}

/// Portable depthwise int8 convolution: per output pixel and block of 64 channels, the
/// exact i32 sum over every tap (the input zero point in the padding), then the epilogue.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_u8_portable(
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &QEpilogue,
    mut y: QDst<'_>,
) {
    const BLOCK: usize = 64;
    let c = g.in_c;
    let zp_row = [zp; BLOCK];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let p = oy * g.out_w + ox;
            let mut c0 = 0;
            while c0 < c {
                let n = BLOCK.min(c - c0);
                let mut acc = [0i32; BLOCK];
                depthwise_u8_sums(g, x, &zp_row, w, c_pad, [oy, ox], c0, &mut acc[..n]);
                let at = p * c + c0;
                match &mut y {
                    QDst::U8(y) => epi.u8_row(c0, &acc[..n], &mut y[at..at + n]),
                    QDst::F32(y) => epi.f32_row(c0, &acc[..n], &mut y[at..at + n]),
                }
                c0 += n;
            }
        }
    }
}
