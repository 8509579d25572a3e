//! NHWC f32 convolution over one sample: 1×1 convolution as a GEMM over the pixels read in
//! place, k×k through an im2col of a tile of pixels into scratch, depthwise with a kernel
//! of its own; bias and activation fused.

use super::gemm::{self, PanelsF32};
use super::{Activation, F32Path, KernelError};

/// Geometry of a 2-D convolution over one NHWC sample (`[in_h, in_w, in_c]` in,
/// `[out_h, out_w, out_c]` out). Weights are given in the IR's order, `[out_c, in_c /
/// groups, k_h, k_w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Kernel height.
    pub k_h: usize,
    /// Kernel width.
    pub k_w: usize,
    /// Vertical, horizontal stride.
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub pad: [usize; 4],
    /// Vertical, horizontal dilation.
    pub dilation: [usize; 2],
    /// Channel groups (`in_c` for a depthwise convolution).
    pub groups: usize,
}

/// `(input + pad_before + pad_after - dilation · (k - 1) - 1) / stride + 1`, or none when
/// the dilated kernel does not fit the padded input (or a value is zero or overflows).
pub fn conv_out_size(
    input: usize,
    k: usize,
    stride: usize,
    pad_before: usize,
    pad_after: usize,
    dilation: usize,
) -> Option<usize> {
    if input == 0 || k == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let span = dilation.checked_mul(k - 1)?.checked_add(1)?;
    let padded = input.checked_add(pad_before)?.checked_add(pad_after)?;
    Some(padded.checked_sub(span)? / stride + 1)
}

impl ConvGeometry {
    /// A geometry with the output size that follows from the rest.
    ///
    /// # Errors
    /// [`KernelError::Geometry`] if [`ConvGeometry::validate`] refuses it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input: [usize; 3],
        out_c: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
    ) -> Result<ConvGeometry, KernelError> {
        let [in_h, in_w, in_c] = input;
        let bad = || KernelError::Geometry {
            op: "conv2d",
            reason: format!(
                "kernel {kernel:?} (dilation {dilation:?}, stride {stride:?}) does not fit the {in_h}×{in_w} input with padding {pad:?}"
            ),
        };
        let out_h = conv_out_size(in_h, kernel[0], stride[0], pad[0], pad[2], dilation[0])
            .ok_or_else(bad)?;
        let out_w = conv_out_size(in_w, kernel[1], stride[1], pad[1], pad[3], dilation[1])
            .ok_or_else(bad)?;
        let g = ConvGeometry {
            in_h,
            in_w,
            in_c,
            out_h,
            out_w,
            out_c,
            k_h: kernel[0],
            k_w: kernel[1],
            stride,
            pad,
            dilation,
            groups,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks that every size is positive, the groups divide both channel counts, the
    /// output size follows from the input, kernel, stride, padding and dilation, and the
    /// sizes of the input, output and weights fit a `usize`.
    ///
    /// # Errors
    /// [`KernelError::Geometry`] naming the first inconsistency.
    pub fn validate(&self) -> Result<(), KernelError> {
        let err = |reason: String| {
            Err(KernelError::Geometry {
                op: "conv2d",
                reason,
            })
        };
        let g = self;
        let sizes = [
            ("in_h", g.in_h),
            ("in_w", g.in_w),
            ("in_c", g.in_c),
            ("out_h", g.out_h),
            ("out_w", g.out_w),
            ("out_c", g.out_c),
            ("k_h", g.k_h),
            ("k_w", g.k_w),
            ("stride[0]", g.stride[0]),
            ("stride[1]", g.stride[1]),
            ("dilation[0]", g.dilation[0]),
            ("dilation[1]", g.dilation[1]),
            ("groups", g.groups),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return err(format!("{name} is 0"));
        }
        if !g.in_c.is_multiple_of(g.groups) || !g.out_c.is_multiple_of(g.groups) {
            return err(format!(
                "{} groups do not divide {} input and {} output channels",
                g.groups, g.in_c, g.out_c
            ));
        }
        let want_h = conv_out_size(
            g.in_h,
            g.k_h,
            g.stride[0],
            g.pad[0],
            g.pad[2],
            g.dilation[0],
        );
        let want_w = conv_out_size(
            g.in_w,
            g.k_w,
            g.stride[1],
            g.pad[1],
            g.pad[3],
            g.dilation[1],
        );
        if want_h != Some(g.out_h) || want_w != Some(g.out_w) {
            return err(format!(
                "output {}×{} does not follow from input {}×{}, kernel {}×{}, stride {:?}, padding {:?}, dilation {:?} (expected {want_h:?}×{want_w:?})",
                g.out_h, g.out_w, g.in_h, g.in_w, g.k_h, g.k_w, g.stride, g.pad, g.dilation
            ));
        }
        let fits = [
            g.in_h
                .checked_mul(g.in_w)
                .and_then(|v| v.checked_mul(g.in_c)),
            g.out_h
                .checked_mul(g.out_w)
                .and_then(|v| v.checked_mul(g.out_c)),
            g.k_h
                .checked_mul(g.k_w)
                .and_then(|v| v.checked_mul(g.in_c))
                .and_then(|v| v.checked_mul(g.out_c)),
        ];
        if fits.iter().any(Option::is_none) {
            return err("sizes overflow usize".into());
        }
        Ok(())
    }

    /// Values in one input sample.
    pub fn input_len(&self) -> usize {
        self.in_h * self.in_w * self.in_c
    }

    /// Values in one output sample.
    pub fn output_len(&self) -> usize {
        self.out_h * self.out_w * self.out_c
    }

    /// Weight values, `out_c · in_c / groups · k_h · k_w`.
    pub fn weight_len(&self) -> usize {
        self.out_c * (self.in_c / self.groups) * self.k_h * self.k_w
    }

    /// Multiply-accumulates per sample.
    pub fn macs(&self) -> u64 {
        (self.out_h * self.out_w) as u64 * self.weight_len() as u64
    }

    /// Whether this is a depthwise convolution with one output channel per input channel.
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.in_c && self.out_c == self.in_c
    }

    /// Whether the input is the GEMM's left operand as it is (1×1, stride 1, no padding).
    pub(super) fn is_pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.stride == [1, 1] && self.pad == [0; 4]
    }

    /// This geometry over its input padded by `pad`: the same outputs from a larger input
    /// with no padding (the depthwise kernels of the SIMD families copy a padded input into
    /// scratch, so that every tap is read in place without a bounds test).
    pub(super) fn over_padded_input(&self) -> ConvGeometry {
        ConvGeometry {
            in_h: self.in_h + self.pad[0] + self.pad[2],
            in_w: self.in_w + self.pad[1] + self.pad[3],
            pad: [0; 4],
            ..*self
        }
    }

    /// Input channels per group.
    pub(super) fn icg(&self) -> usize {
        self.in_c / self.groups
    }

    /// Output channels per group.
    pub(super) fn ocg(&self) -> usize {
        self.out_c / self.groups
    }

    /// Kernel taps.
    pub(super) fn taps(&self) -> usize {
        self.k_h * self.k_w
    }

    /// The input row and column of tap `(ky, kx)` for output `(oy, ox)`, or none in the
    /// padding.
    #[inline]
    pub(super) fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
        let iy = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.pad[0])?;
        let ix = (ox * self.stride[1] + kx * self.dilation[1]).checked_sub(self.pad[1])?;
        (iy < self.in_h && ix < self.in_w).then_some(iy * self.in_w + ix)
    }

    /// Whether every kernel row of output row `oy` lies inside the input.
    #[cfg(any(test, target_arch = "x86_64"))]
    pub(super) fn row_is_interior(&self, oy: usize) -> bool {
        let top = oy * self.stride[0];
        top >= self.pad[0] && top - self.pad[0] + (self.k_h - 1) * self.dilation[0] < self.in_h
    }

    /// The output columns whose kernel lies inside the input's width.
    #[cfg(any(test, target_arch = "x86_64"))]
    pub(super) fn interior_cols(&self) -> std::ops::Range<usize> {
        let lo = self.pad[1].div_ceil(self.stride[1]);
        let span = (self.k_w - 1) * self.dilation[1];
        // ox · stride - pad + span < in_w.
        let hi = match (self.in_w + self.pad[1]).checked_sub(span + 1) {
            Some(last) => last / self.stride[1] + 1,
            None => 0,
        };
        lo..hi.min(self.out_w).max(lo)
    }

    /// The interior columns of output row `oy` when it is read in place: a
    /// [`ConvGeometry::row_is_interior`] row with interior columns whose furthest read,
    /// `reach` values past its last pixel's first tap, lies inside the input.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn in_place_cols(&self, oy: usize, reach: usize) -> Option<std::ops::Range<usize>> {
        let cols = self.interior_cols();
        if cols.is_empty() || !self.row_is_interior(oy) {
            return None;
        }
        let last = self.source(oy, cols.end - 1, 0, 0)? * self.in_c;
        (last + reach <= self.input_len()).then_some(cols)
    }

    /// Calls `f` with the output pixels in order, as runs: each output row's interior
    /// pixels ([`ConvGeometry::interior_cols`] of a [`ConvGeometry::row_is_interior`] row)
    /// in place, when the row's furthest read, `reach` values past its last pixel's first
    /// tap, lies inside the input too; every other pixel through im2col. Consecutive rows
    /// read in place whole (every column interior: a padded copy, or no padding) are one
    /// run, so that the kernels' tiles go on across row ends.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn pixel_runs(&self, reach: usize, mut f: impl FnMut(PixelRun)) {
        let mut pending = 0;
        let mut whole: Option<std::ops::Range<usize>> = None;
        let full = 0..self.out_w;
        for oy in 0..self.out_h {
            let Some(cols) = self.in_place_cols(oy, reach) else {
                continue;
            };
            let start = oy * self.out_w + cols.start;
            if pending < start {
                if let Some(rows) = whole.take() {
                    f(PixelRun::InPlace {
                        rows,
                        cols: full.clone(),
                    });
                }
                f(PixelRun::Im2col(pending..start));
            }
            pending = oy * self.out_w + cols.end;
            if cols == full {
                whole = Some(whole.map_or(oy..oy + 1, |r| r.start..oy + 1));
            } else {
                f(PixelRun::InPlace {
                    rows: oy..oy + 1,
                    cols,
                });
            }
        }
        if let Some(rows) = whole {
            f(PixelRun::InPlace { rows, cols: full });
        }
        let end = self.out_h * self.out_w;
        if pending < end {
            f(PixelRun::Im2col(pending..end));
        }
    }

    /// Where the pixels of output rows `rows`, columns `cols`, read in place start: the
    /// first pixel's first tap (a value index into the input) and how the others lie from
    /// it. `None` unless those pixels are interior (every tap inside the input) and follow
    /// each other in the output (one row, or whole rows).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn row_walk(
        &self,
        rows: &std::ops::Range<usize>,
        cols: &std::ops::Range<usize>,
    ) -> Option<(usize, RowWalk)> {
        let interior = self.interior_cols();
        let ok = !rows.is_empty()
            && !cols.is_empty()
            && (rows.len() == 1 || cols.len() == self.out_w)
            && self.row_is_interior(rows.start)
            && self.row_is_interior(rows.end - 1)
            && interior.contains(&cols.start)
            && interior.contains(&(cols.end - 1));
        let first = self.source(rows.start, cols.start, 0, 0).filter(|_| ok)?;
        let walk = RowWalk {
            lda: self.stride[1] * self.in_c,
            row_len: cols.len(),
            row_step: self.stride[0] * self.in_w * self.in_c,
        };
        Some((first * self.in_c, walk))
    }

    /// The weight index of `(oc, ic within its group, ky, kx)` in the IR's order.
    #[inline]
    pub(super) fn weight_index(&self, oc: usize, ic: usize, ky: usize, kx: usize) -> usize {
        ((oc * self.icg() + ic) * self.k_h + ky) * self.k_w + kx
    }

    /// Checks the weight and bias lengths against the geometry.
    pub(super) fn check_params(
        &self,
        op: &'static str,
        weights: usize,
        bias: usize,
    ) -> Result<(), KernelError> {
        self.validate()?;
        if weights != self.weight_len() {
            return Err(KernelError::Length {
                op,
                what: "weights",
                got: weights,
                want: self.weight_len(),
            });
        }
        if bias != self.out_c {
            return Err(KernelError::Length {
                op,
                what: "bias",
                got: bias,
                want: self.out_c,
            });
        }
        Ok(())
    }
}

/// Pixels per im2col tile: a multiple of the kernel's rows whose patches fill about 32 KiB
/// (at least one row of tiles), no more than the output has.
pub(super) fn im2col_tile(k_bytes: usize, mr: usize, pixels: usize) -> usize {
    let fit = (32 * 1024 / k_bytes.max(1) / mr).max(1) * mr;
    fit.min(pixels.div_ceil(mr) * mr)
}

/// Where each value (`step` 1) or quad (`step` 4) of a patch lies in the input, from the
/// patch's first tap, in the order the weights are packed (tap-major, then channel; each
/// tap starts a new step), with the largest offset: what a convolution reading interior
/// pixels in place ([`ConvGeometry::pixel_runs`]) needs, built once at load.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PatchOffsets {
    offs: Vec<u32>,
    max: usize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl PatchOffsets {
    /// The offsets of `g`'s patches; none when they do not fit a u32.
    pub(super) fn new(g: &ConvGeometry, step: usize) -> Option<PatchOffsets> {
        u32::try_from(g.input_len()).ok()?;
        let mut offs = Vec::with_capacity(g.taps() * g.in_c.div_ceil(step));
        for ky in 0..g.k_h {
            for kx in 0..g.k_w {
                let tap = (ky * g.dilation[0] * g.in_w + kx * g.dilation[1]) * g.in_c;
                offs.extend((0..g.in_c).step_by(step).map(|c| (tap + c) as u32));
            }
        }
        let max = offs.iter().max().map_or(0, |&o| o as usize);
        Some(PatchOffsets { offs, max })
    }

    /// The quads of `g`'s patches read a kernel row at a time: each kernel row's taps lie
    /// side by side in the input (no dilation along the row), `k_w · in_c` values, read
    /// as that many / 4 quads (the caller checks it is a multiple of 4); none when the
    /// offsets do not fit a u32.
    pub(super) fn kernel_rows(g: &ConvGeometry) -> Option<PatchOffsets> {
        u32::try_from(g.input_len()).ok()?;
        let row_len = g.k_w * g.in_c;
        let mut offs = Vec::with_capacity(g.k_h * row_len.div_ceil(4));
        for ky in 0..g.k_h {
            let row = ky * g.dilation[0] * g.in_w * g.in_c;
            offs.extend((0..row_len).step_by(4).map(|v| (row + v) as u32));
        }
        let max = offs.iter().max().map_or(0, |&o| o as usize);
        Some(PatchOffsets { offs, max })
    }

    pub(super) fn as_slice(&self) -> &[u32] {
        &self.offs
    }

    /// The largest offset.
    pub(super) fn max(&self) -> usize {
        self.max
    }
}

/// How the x86 int8 kernels (`conv_rows_u8i8`) read a patch in place, four bytes at a read; the weights are
/// packed in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PatchQuads {
    /// Each tap's channels as whole quads: channels a multiple of 4, or 3 (RGB: each tap
    /// one quad, its fourth byte the next pixel's, met by a zero weight).
    PerTap,
    /// Each kernel row's taps as whole quads: they lie side by side in the input (no
    /// dilation along the row) and hold a multiple of 4 values, as the 8-wide kernel of a
    /// one-channel spectrogram does.
    PerKernelRow,
}

impl PatchQuads {
    /// How `geom`'s patches are read in place, if they can be: one group, and channels a
    /// multiple of 4, whole kernel rows of quads, or RGB (in that order of preference:
    /// RGB's fourth bytes are wasted work).
    pub(super) fn of(geom: &ConvGeometry) -> Option<PatchQuads> {
        if geom.groups != 1 {
            None
        } else if geom.in_c.is_multiple_of(4) {
            Some(PatchQuads::PerTap)
        } else if geom.dilation[1] == 1 && (geom.k_w * geom.in_c).is_multiple_of(4) {
            Some(PatchQuads::PerKernelRow)
        } else if geom.in_c == 3 {
            Some(PatchQuads::PerTap)
        } else {
            None
        }
    }

    /// Values per tap in a packed patch.
    pub(super) fn tap_len(self, geom: &ConvGeometry) -> usize {
        match self {
            PatchQuads::PerTap => geom.in_c.next_multiple_of(4),
            PatchQuads::PerKernelRow => geom.in_c,
        }
    }

    /// Where each quad of a patch lies from the patch's first tap.
    pub(super) fn offsets(self, geom: &ConvGeometry) -> Option<PatchOffsets> {
        match self {
            PatchQuads::PerTap => PatchOffsets::new(geom, 4),
            PatchQuads::PerKernelRow => PatchOffsets::kernel_rows(geom),
        }
    }
}

/// A run of output pixels of [`ConvGeometry::pixel_runs`].
#[cfg(target_arch = "x86_64")]
pub(super) enum PixelRun {
    /// These pixels (row-major indices) through im2col.
    Im2col(std::ops::Range<usize>),
    /// Pixels `cols` of output rows `rows`, read in place (several rows only when `cols`
    /// is the whole width).
    InPlace {
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    },
}

/// Where the rows of a GEMM start in its left operand: row `q` at `q / row_len · row_step
/// + q % row_len · lda` values from the first (pixels of several output rows read in
/// place; one run of rows `lda` apart when `row_len` is `usize::MAX`).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(super) struct RowWalk {
    pub(super) lda: usize,
    pub(super) row_len: usize,
    pub(super) row_step: usize,
}

#[cfg(target_arch = "x86_64")]
impl RowWalk {
    /// Rows `lda` apart.
    pub(super) fn contiguous(lda: usize) -> RowWalk {
        RowWalk {
            lda,
            row_len: usize::MAX,
            row_step: 0,
        }
    }

    /// The offset of row `q`.
    pub(super) fn offset(&self, q: usize) -> usize {
        (q / self.row_len) * self.row_step + (q % self.row_len) * self.lda
    }

    /// The offsets of rows `first..first + MR`, each past `last` taken as `last` (a
    /// tile's unused rows repeat its last one).
    #[inline(always)]
    pub(super) fn offsets<const MR: usize>(&self, first: usize, last: usize) -> [usize; MR] {
        let mut out = [0; MR];
        // No division for rows of one run (every contiguous GEMM's).
        let (mut row, mut col) = if first < self.row_len {
            (0, first)
        } else {
            (first / self.row_len, first % self.row_len)
        };
        for (r, o) in out.iter_mut().enumerate() {
            *o = row * self.row_step + col * self.lda;
            if first + r < last {
                col += 1;
                if col == self.row_len {
                    (row, col) = (row + 1, 0);
                }
            }
        }
        out
    }
}

/// Copies the patches of output pixels `p0..p0 + rows.len() / k_pad` (group `g`) into
/// `rows`, `k_pad` values each (tap-major, then channel), `fill` in the padding and past
/// the patch.
pub(super) fn im2col<T: Copy>(
    geom: &ConvGeometry,
    x: &[T],
    g: usize,
    p0: usize,
    k_pad: usize,
    fill: T,
    rows: &mut [T],
) {
    im2col_taps(geom, x, g, p0, k_pad, geom.icg(), fill, rows)
}

/// [`im2col`] with each tap taking `tap_len` values (its channels, then `fill`): the
/// layout of weights packed with every tap padded to whole quads.
#[allow(clippy::too_many_arguments)]
pub(super) fn im2col_taps<T: Copy>(
    geom: &ConvGeometry,
    x: &[T],
    g: usize,
    p0: usize,
    k_pad: usize,
    tap_len: usize,
    fill: T,
    rows: &mut [T],
) {
    let icg = geom.icg();
    // One group, no horizontal dilation and taps unpadded: the taps of a kernel row that lie
    // inside the input are one run of the input row, copied at once, the rest filled.
    let whole_rows = geom.dilation[1] == 1 && icg == geom.in_c && tap_len == icg;
    let run = geom.k_w * tap_len;
    for (r, row) in rows.chunks_exact_mut(k_pad).enumerate() {
        let p = p0 + r;
        let (oy, ox) = (p / geom.out_w, p % geom.out_w);
        let mut at = 0;
        for ky in 0..geom.k_h {
            let iy = (oy * geom.stride[0] + ky * geom.dilation[0])
                .checked_sub(geom.pad[0])
                .filter(|&iy| iy < geom.in_h);
            let Some(iy) = iy else {
                row[at..at + run].fill(fill);
                at += run;
                continue;
            };
            if whole_rows {
                // Taps `lo..hi` of this kernel row lie inside the input (column
                // `base + kx - pad`), one run of it; the others in the padding.
                let base = ox * geom.stride[1];
                let lo = geom.pad[1].saturating_sub(base).min(geom.k_w);
                let hi = (geom.in_w + geom.pad[1])
                    .saturating_sub(base)
                    .min(geom.k_w)
                    .max(lo);
                row[at..at + lo * tap_len].fill(fill);
                if hi > lo {
                    let s = (iy * geom.in_w + base + lo - geom.pad[1]) * geom.in_c;
                    copy_run(row, at + lo * tap_len, x, s, (hi - lo) * tap_len);
                }
                row[at + hi * tap_len..at + run].fill(fill);
                at += run;
                continue;
            }
            for kx in 0..geom.k_w {
                match geom.source(oy, ox, ky, kx) {
                    Some(s) if icg == 1 => row[at] = x[s * geom.in_c + g],
                    Some(s) => copy_run(row, at, x, s * geom.in_c + g * icg, icg),
                    None => row[at..at + icg].fill(fill),
                }
                if tap_len > icg {
                    row[at + icg..at + tap_len].fill(fill);
                }
                at += tap_len;
            }
        }
        row[at..].fill(fill);
    }
}

/// `row[at..at + len] = x[s..s + len]`, where every value of `row` from `at + len` on is
/// written again afterwards (im2col fills a row in order, then pads its end): a run
/// shorter than 16 bytes is copied as 16 when both sides have them (one move instead of
/// a value at a time: RGB rows are 9 bytes).
#[inline(always)]
fn copy_run<T: Copy>(row: &mut [T], at: usize, x: &[T], s: usize, len: usize) {
    let piece = (16 / std::mem::size_of::<T>().max(1)).max(1);
    if len < piece && at + piece <= row.len() && s + piece <= x.len() {
        row[at..at + piece].copy_from_slice(&x[s..s + piece]);
    } else {
        copy_short(&mut row[at..at + len], &x[s..s + len]);
    }
}

/// `dst.copy_from_slice(src)` for the short runs of im2col (a few to a few dozen values),
/// in fixed-size pieces the compiler inlines instead of calling `memcpy` for each.
#[inline(always)]
fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    // 16 bytes a piece (4 f32, 16 u8): a constant once monomorphized.
    let piece = (16 / std::mem::size_of::<T>().max(1)).max(1);
    let src = &src[..dst.len()];
    let mut d = dst.chunks_exact_mut(piece);
    let mut s = src.chunks_exact(piece);
    for (d4, s4) in (&mut d).zip(&mut s) {
        d4.copy_from_slice(s4);
    }
    for (d1, s1) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d1 = *s1;
    }
}

/// An f32 NHWC convolution with its weights packed for this CPU, bias and activation
/// fused. Build once at load ([`ConvF32::new`]); [`ConvF32::run`] allocates nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvF32 {
    geom: ConvGeometry,
    act: Activation,
    path: F32Path,
    plan: Plan,
}

#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// One GEMM per group with the input pixels as rows (1×1, stride 1, no padding), or
    /// im2col tiles of `tile` pixels.
    Gemm {
        im2col: bool,
        tile: usize,
        panels: Vec<PanelsF32>,
        /// x86 SIMD families, one group: each output row's pixels whose kernel lies
        /// inside the input are read in place at these offsets ([`Plan::Gemm`]'s im2col
        /// only for the rest); empty otherwise.
        offsets: Option<PatchOffsets>,
        /// With `offsets`: the input is first copied into scratch with a border of zeros
        /// and every pixel read in place (offsets into that padded input).
        padded: bool,
    },
    /// Weights `[tap][c]` (channels padded to `c_pad`), bias padded likewise. With
    /// `padded` (SIMD families, a geometry with padding) the input is first copied into
    /// scratch with a border of zeros.
    Depthwise {
        c_pad: usize,
        w: Vec<f32>,
        bias: Vec<f32>,
        padded: bool,
    },
}

/// Whether a float depthwise layer with padding runs faster from a padded copy of its
/// input. On x86 a 3×3 kernel never does: it reads padding rows from a zero row and tests
/// the border columns' taps with its weights in registers (float keyword spotting's 25×5
/// maps, copied before, and MobileNet's; see `x86/depthwise.rs`). Other kernels read
/// interior pixels in place and test the border's taps, each weight loaded: the copy pays
/// off by the rule of [`border_outweighs_padding`]. The NEON kernel always reads a padded
/// copy.
fn pad_depthwise_input(g: &ConvGeometry) -> bool {
    if cfg!(target_arch = "x86_64") {
        !(g.k_h == 3 && g.k_w == 3) && border_outweighs_padding(g, g.in_c)
    } else {
        true
    }
}

/// Whether the border pixels' patches (`tap_len` values a tap) hold more values than the
/// padded input (x86; false without padding): the rule by which a depthwise layer reads a
/// padded copy rather than testing its border's taps. Keyword spotting's 25×5 maps (45 %
/// border) pass it; MobileNet's 48×48 maps do not.
pub(super) fn border_outweighs_padding(g: &ConvGeometry, tap_len: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if g.pad == [0; 4] {
            return false;
        }
        let rows = (0..g.out_h).filter(|&oy| g.row_is_interior(oy)).count();
        let border = g.out_h * g.out_w - rows * g.interior_cols().len();
        let patches = border.saturating_mul(g.taps() * tap_len);
        patches > g.over_padded_input().input_len()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, tap_len);
        false
    }
}

/// Whether a convolution read in place as a GEMM (x86) reads a padded copy of its input,
/// every pixel then in place: whenever it has padding. The copy costs one pass over the
/// input, against `taps · out_c` products per value; without it the border went through
/// im2col in runs of two pixels (a row's last and the next row's first), tiles that keep
/// too few sums to hide the FMA latency.
pub(super) fn pad_gemm_conv_input(g: &ConvGeometry) -> bool {
    cfg!(target_arch = "x86_64") && g.pad != [0; 4]
}

impl ConvF32 {
    /// Packs `weights` (`[out_c, in_c / groups, k_h, k_w]`) and `bias` (`[out_c]`) for
    /// the fastest kernel this CPU runs ([`F32Path::for_conv`]).
    ///
    /// # Errors
    /// [`KernelError`] if the geometry is inconsistent or a length does not match it.
    pub fn new(
        geom: ConvGeometry,
        weights: &[f32],
        bias: &[f32],
        act: Activation,
    ) -> Result<ConvF32, KernelError> {
        let path = if geom.is_depthwise() {
            F32Path::for_conv(true, geom.in_c)
        } else {
            F32Path::for_conv(false, geom.out_c)
        };
        ConvF32::with_path(geom, weights, bias, act, path)
    }

    /// [`ConvF32::new`] for a given implementation family (one of
    /// [`F32Path::available`]; the tests and benches compare them).
    ///
    /// # Errors
    /// As [`ConvF32::new`], and [`KernelError::Geometry`] if this CPU cannot run `path`.
    pub fn with_path(
        geom: ConvGeometry,
        weights: &[f32],
        bias: &[f32],
        act: Activation,
        path: F32Path,
    ) -> Result<ConvF32, KernelError> {
        geom.check_params("conv2d", weights.len(), bias.len())?;
        if !F32Path::available().contains(&path) {
            return Err(KernelError::Geometry {
                op: "conv2d",
                reason: format!("this CPU cannot run the {} kernels", path.name()),
            });
        }
        let plan = if geom.is_depthwise() {
            let c = geom.in_c;
            let c_pad = super::dw_channels_padded(c);
            let mut w = vec![0.0; geom.taps() * c_pad];
            for ch in 0..c {
                for ky in 0..geom.k_h {
                    for kx in 0..geom.k_w {
                        w[(ky * geom.k_w + kx) * c_pad + ch] =
                            weights[geom.weight_index(ch, 0, ky, kx)];
                    }
                }
            }
            let mut b = vec![0.0; c_pad];
            b[..c].copy_from_slice(bias);
            Plan::Depthwise {
                c_pad,
                w,
                bias: b,
                padded: path != F32Path::Portable
                    && geom.pad.iter().any(|&p| p > 0)
                    && pad_depthwise_input(&geom),
            }
        } else {
            let (icg, ocg) = (geom.icg(), geom.ocg());
            let k = geom.taps() * icg;
            let im2col = !geom.is_pointwise();
            // x86 SIMD families, one group: interior pixels read in place, or every pixel
            // from a padded copy.
            let in_place = cfg!(target_arch = "x86_64")
                && im2col
                && path != F32Path::Portable
                && geom.groups == 1;
            let nr = if in_place {
                gemm::f32_in_place_nr(path, ocg)
            } else {
                gemm::f32_nr(path, ocg, false)
            };
            let panels = (0..geom.groups)
                .map(|g| {
                    PanelsF32::pack(k, ocg, nr, &bias[g * ocg..(g + 1) * ocg], |kk, j| {
                        let (tap, ic) = (kk / icg, kk % icg);
                        weights[geom.weight_index(g * ocg + j, ic, tap / geom.k_w, tap % geom.k_w)]
                    })
                })
                .collect();
            let pixels = geom.out_h * geom.out_w;
            let tile = if im2col {
                im2col_tile(k * 4, gemm::f32_mr(path), pixels)
            } else {
                0
            };
            let padded = in_place && pad_gemm_conv_input(&geom);
            let read = if padded {
                geom.over_padded_input()
            } else {
                geom
            };
            let offsets = in_place.then(|| PatchOffsets::new(&read, 1)).flatten();
            Plan::Gemm {
                im2col,
                tile,
                panels,
                padded: padded && offsets.is_some(),
                offsets,
            }
        };
        Ok(ConvF32 {
            geom,
            act,
            path,
            plan,
        })
    }

    /// The geometry.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geom
    }

    /// The fused activation.
    pub fn activation(&self) -> Activation {
        self.act
    }

    /// The implementation family the weights were packed for.
    pub fn path(&self) -> F32Path {
        self.path
    }

    /// Scratch values [`ConvF32::run`] needs: im2col tiles, or the padded input of a
    /// depthwise layer with padding on a SIMD family; 0 for 1×1 convolutions.
    pub fn scratch_len(&self) -> usize {
        match &self.plan {
            Plan::Depthwise { padded: true, .. } => {
                self.geom.over_padded_input().input_len() + self.dw_zero_row_len()
            }
            Plan::Depthwise { .. } => self.dw_zero_row_len(),
            Plan::Gemm {
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
                copy + tile * panels[0].k
            }
            _ => 0,
        }
    }

    /// `y = act(conv(x) + bias)` for one NHWC sample.
    ///
    /// # Panics
    /// If `x` is not [`ConvGeometry::input_len`] long, `y` not
    /// [`ConvGeometry::output_len`], or `scratch` shorter than [`ConvF32::scratch_len`].
    pub fn run(&self, x: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        let g = &self.geom;
        assert_eq!(x.len(), g.input_len(), "conv2d input length");
        assert_eq!(y.len(), g.output_len(), "conv2d output length");
        assert!(scratch.len() >= self.scratch_len(), "conv2d scratch length");
        let pixels = g.out_h * g.out_w;
        match &self.plan {
            Plan::Depthwise {
                c_pad,
                w,
                bias,
                padded: true,
            } => {
                let gp = g.over_padded_input();
                let (xp, rest) = scratch.split_at_mut(gp.input_len());
                super::pad_nhwc(x, [g.in_h, g.in_w, g.in_c], g.pad, 0.0, xp);
                let zeros = self.dw_zero_row(rest);
                super::depthwise_f32(self.path, &gp, xp, zeros, w, bias, *c_pad, self.act, y)
            }
            Plan::Depthwise { c_pad, w, bias, .. } => {
                let zeros = self.dw_zero_row(scratch);
                super::depthwise_f32(self.path, g, x, zeros, w, bias, *c_pad, self.act, y)
            }
            Plan::Gemm {
                im2col: false,
                panels,
                ..
            } => {
                let icg = g.icg();
                for (gi, pn) in panels.iter().enumerate() {
                    let a = &x[gi * icg..];
                    let yo = &mut y[gi * pn.n..];
                    gemm::gemm_f32(self.path, a, g.in_c, pixels, pn, self.act, yo, g.out_c);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Plan::Gemm {
                im2col: true,
                tile,
                panels,
                offsets: Some(offsets),
                padded,
            } => {
                let pn = &panels[0];
                let (g, x, scratch) = if *padded {
                    let gp = g.over_padded_input();
                    let (xp, rest) = scratch.split_at_mut(gp.input_len());
                    super::pad_nhwc(x, [g.in_h, g.in_w, g.in_c], g.pad, 0.0, xp);
                    (gp, &*xp, rest)
                } else {
                    (*g, x, scratch)
                };
                let g = &g;
                // One value read per offset.
                g.pixel_runs(offsets.max() + 1, |run| match run {
                    PixelRun::Im2col(pixels) => {
                        self.run_im2col(g, x, y, scratch, pn, 0, *tile, pixels)
                    }
                    PixelRun::InPlace { rows, cols } => {
                        let start = rows.start * g.out_w + cols.start;
                        super::x86::gemm::conv_rows_f32(
                            self.path,
                            g,
                            x,
                            offsets,
                            rows,
                            cols,
                            pn,
                            self.act,
                            &mut y[start * g.out_c..],
                        );
                    }
                });
            }
            Plan::Gemm {
                im2col: true,
                tile,
                panels,
                ..
            } => {
                for (gi, pn) in panels.iter().enumerate() {
                    self.run_im2col(g, x, y, scratch, pn, gi, *tile, 0..pixels);
                }
            }
        }
    }

    /// Values of the zero input row the x86 depthwise kernels read for padding rows (as
    /// wide as the padded input, which covers a padded copy's rows too); none elsewhere.
    fn dw_zero_row_len(&self) -> usize {
        if cfg!(target_arch = "x86_64") && self.path != F32Path::Portable {
            self.geom.over_padded_input().in_w * self.geom.in_c
        } else {
            0
        }
    }

    /// The zero row of [`ConvF32::dw_zero_row_len`] values at the start of `scratch`,
    /// zeroed (scratch is shared by every layer).
    fn dw_zero_row<'s>(&self, scratch: &'s mut [f32]) -> &'s [f32] {
        let zeros = &mut scratch[..self.dw_zero_row_len()];
        zeros.fill(0.0);
        zeros
    }

    /// Output pixels `pixels` of group `gi` through im2col tiles of `tile` pixels.
    #[allow(clippy::too_many_arguments)]
    fn run_im2col(
        &self,
        g: &ConvGeometry,
        x: &[f32],
        y: &mut [f32],
        scratch: &mut [f32],
        pn: &PanelsF32,
        gi: usize,
        tile: usize,
        pixels: std::ops::Range<usize>,
    ) {
        let mut p0 = pixels.start;
        while p0 < pixels.end {
            let m = tile.min(pixels.end - p0);
            let rows = &mut scratch[..m * pn.k];
            im2col(g, x, gi, p0, pn.k, 0.0, rows);
            let yo = &mut y[p0 * g.out_c + gi * pn.n..];
            gemm::gemm_f32(self.path, rows, pn.k, m, pn, self.act, yo, g.out_c);
            p0 += m;
        }
    }
}

/// Adds `Σ x · w` over the taps of output pixel `[oy, ox]` inside the input (padding
/// taps add nothing) to `out`, channels `c0..c0 + out.len()`.
pub(super) fn depthwise_f32_sums(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    c_pad: usize,
    [oy, ox]: [usize; 2],
    c0: usize,
    out: &mut [f32],
) {
    let (c, n) = (g.in_c, out.len());
    for ky in 0..g.k_h {
        for kx in 0..g.k_w {
            let Some(s) = g.source(oy, ox, ky, kx) else {
                continue;
            };
            let xr = &x[s * c + c0..s * c + c0 + n];
            let wr = &w[(ky * g.k_w + kx) * c_pad + c0..][..n];
            for ((o, &xv), &wv) in out.iter_mut().zip(xr).zip(wr) {
                *o += xv * wv;
            }
        }
    }
}

/// Portable depthwise f32 convolution: for each output pixel, the bias, then every tap's
/// input row times its weights, channels innermost.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_f32_portable(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    let c = g.in_c;
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let out = &mut y[(oy * g.out_w + ox) * c..][..c];
            out.copy_from_slice(&bias[..c]);
            depthwise_f32_sums(g, x, w, c_pad, [oy, ox], 0, out);
            if act != Activation::Identity {
                out.iter_mut().for_each(|v| *v = act.apply(*v));
            }
        }
    }
}
