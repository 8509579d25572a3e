//! Compute kernels. One dispatch function per op: it picks the fastest implementation the
//! CPU supports at run time and falls back to the portable one in [`generic`].
//! `unsafe` lives only in the architecture files, each block with a `SAFETY:` line.
//!
//! # Layout
//! - [`generic`], [`int8`], `tree`: the portable kernels of the MLP and tree layers (NCHW
//!   convolution and pooling for the older engine path).
//! - `conv`, `qconv`: NHWC convolution, f32 ([`ConvF32`]) and u8 × i8 ([`ConvU8`]), weights
//!   packed at load into panels the micro-kernels read; depthwise kernels of their own.
//! - `gemm`: the GEMM micro-kernels behind 1×1 / im2col convolution and dense layers, and
//!   the packing of weight panels.
//! - `dense`: [`DenseF32`] and [`DenseU8`] (GEMV at batch 1, GEMM above).
//! - `eltwise`, `pool`: element-wise add (f32 and requantized u8), pad, channel concat;
//!   max / average / global-average pooling over NHWC.
//! - `x86`, `neon`: the SIMD implementations, chosen once per CPU ([`F32Path`],
//!   [`I8Path`]).

pub mod generic;
pub mod int8;
#[cfg(target_arch = "aarch64")]
mod neon;
mod tree;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod battery;
mod conv;
mod dense;
mod eltwise;
mod gemm;
mod paths;
mod pool;
mod qconv;

pub use conv::conv_out_size;
pub use conv::{ConvF32, ConvGeometry};
pub use dense::{DenseF32, DenseU8};
pub use eltwise::{AddU8, add_f32, concat_channels, pad_nhwc};
pub use paths::{F32Path, I8Path};
pub use pool::{
    AvgPoolU8, GlobalAvgPoolU8, PoolGeometry, avg_pool_f32, global_avg_pool_f32, max_pool_f32,
    max_pool_u8,
};
pub use qconv::{ConvU8, MAX_I8_DEPTH, OutputQuant, U8Quant};

/// Why a kernel could not be built from the parameters it was given. Running a built
/// kernel does not fail (its slices are checked against the geometry and a mismatch is a
/// programming error that panics, as the `# Panics` sections say).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The geometry is inconsistent (zero sizes, an output size that does not follow from
    /// the input, padding, stride and dilation, channels not divisible by the groups…).
    #[error("{op}: {reason}")]
    Geometry {
        /// The kernel, e.g. `"conv2d"`.
        op: &'static str,
        /// What is wrong, with the values.
        reason: String,
    },
    /// A parameter slice has the wrong length.
    #[error("{op}: {what} holds {got} values, expected {want}")]
    Length {
        /// The kernel.
        op: &'static str,
        /// Which parameter, e.g. `"weights"`.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the geometry implies.
        want: usize,
    },
    /// Quantization parameters the integer kernels cannot represent (a scale that is not a
    /// positive finite number, a requantization multiplier outside `[2^-32, 2^30)`…).
    #[error("{op}: {reason}")]
    Quant {
        /// The kernel.
        op: &'static str,
        /// What is wrong, with the values.
        reason: String,
    },
}

/// Element-wise activation, applied in place or fused into a kernel's epilogue (after the
/// bias).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// No-op.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x` or `alpha * x` below 0.
    LeakyRelu(f32),
    /// Logistic function.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// `min(max(x, min), max)`; Relu6 is `Clip { min: 0.0, max: 6.0 }`.
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `x · min(max(x / 6 + 1/2, 0), 1)` (ONNX HardSwish).
    HardSwish,
}

impl Activation {
    /// The activation of one value (the portable definition every path follows: Relu,
    /// Clip, LeakyRelu and HardSwish exactly; Sigmoid with perch's own [`generic::exp`];
    /// Tanh with the platform's `tanh`).
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::LeakyRelu(a) => {
                if v < 0.0 {
                    v * a
                } else {
                    v
                }
            }
            Activation::Sigmoid => generic::sigmoid(v),
            Activation::Tanh => v.tanh(),
            Activation::Clip { min, max } => v.max(min).min(max),
            Activation::HardSwish => v * (v * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
        }
    }
}

/// Geometry of a 2-D convolution over one NCHW sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dParams {
    /// Input channels.
    pub in_c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Kernel height.
    pub k_h: usize,
    /// Kernel width.
    pub k_w: usize,
    /// Vertical, horizontal stride.
    pub stride: [usize; 2],
    /// Top, left padding (bottom and right follow from the output size).
    pub pad: [usize; 2],
    /// Vertical, horizontal dilation.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

/// Geometry of a 2-D pooling window over one NCHW sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pool2dParams {
    /// Channels.
    pub c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Window height, width.
    pub k: [usize; 2],
    /// Vertical, horizontal stride.
    pub stride: [usize; 2],
    /// Top, left padding.
    pub pad: [usize; 2],
}

/// `y[r] = W · x[r] + b` for every row `r`; `W` is `[outputs, inputs]` row-major.
pub fn dense(x: &[f32], w: &[f32], b: &[f32], inputs: usize, outputs: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        return x86::dense(x, w, b, inputs, outputs, y);
    }
    #[cfg(target_arch = "aarch64")]
    {
        return neon::dense(x, w, b, inputs, outputs, y);
    }
    #[allow(unreachable_code)]
    generic::dense(x, w, b, inputs, outputs, y)
}

/// `acc[o] = Σᵢ x[i] · w[o · k + i]` for every `o < acc.len()`, `k = x.len()`: u8
/// activations times int8 weights, exact in i32 for `k` up to
/// [`crate::graph::MAX_QUANT_DEPTH`]. Every implementation gives identical results.
///
/// # Panics
/// If `w` is shorter than `k · acc.len()`.
pub fn gemv_u8i8(x: &[u8], w: &[i8], acc: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_vnni_256() {
            return x86::gemv_u8i8_vnni(x, w, acc);
        }
        if x86::has_avx2() {
            return x86::gemv_u8i8_avx2(x, w, acc);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return neon::gemv_u8i8(x, w, acc);
    }
    #[allow(unreachable_code)]
    int8::gemv_u8i8(x, w, acc)
}

/// `y[c] = clamp(zero_point + M[c](saturate_i32(acc[c] + bias[c])), lo, 255)` for every
/// channel, `lo` the zero point under `relu`, else 0 (the u8 epilogue of the int8 layers;
/// see [`int8::FixedMultiplier::apply`]). Every implementation gives identical results.
pub fn requant_u8(
    multipliers: &[int8::FixedMultiplier],
    bias: &[i64],
    zero_point: u8,
    relu: bool,
    acc: &[i32],
    y: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return x86::requant_u8_avx2(multipliers, bias, zero_point, relu, acc, y);
    }
    int8::requant_u8(multipliers, bias, zero_point, relu, acc, y)
}

/// An int8 `[rows, depth]` weight matrix in the layout the fastest [`gemv_u8i8`] kernel
/// on this CPU reads: on x86-64, eight rows interleaved per 256-bit vector (VNNI: four
/// bytes per row, AVX2: two i16 per row), so a product needs no horizontal sums; elsewhere
/// row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedI8 {
    rows: usize,
    depth: usize,
    layout: PackedLayout,
}

#[derive(Debug, Clone, PartialEq)]
enum PackedLayout {
    RowMajor(Vec<i8>),
    #[cfg(target_arch = "x86_64")]
    Vnni(Vec<i8>),
    #[cfg(target_arch = "x86_64")]
    Avx2(Vec<i8>),
}

impl PackedI8 {
    /// Packs the row-major `w` for this CPU; `None` unless `w` holds `rows · depth` values.
    pub fn new(w: &[i8], rows: usize, depth: usize) -> Option<PackedI8> {
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_vnni_256() {
                return PackedI8::with_layout(w, rows, depth, PackKind::Vnni);
            }
            if x86::has_avx2() {
                return PackedI8::with_layout(w, rows, depth, PackKind::Avx2);
            }
        }
        PackedI8::with_layout(w, rows, depth, PackKind::RowMajor)
    }

    fn with_layout(w: &[i8], rows: usize, depth: usize, kind: PackKind) -> Option<PackedI8> {
        if w.len() != rows.checked_mul(depth)? {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        let supported = match kind {
            PackKind::RowMajor => true,
            PackKind::Vnni => x86::has_vnni_256(),
            PackKind::Avx2 => x86::has_avx2(),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let supported = true;
        if !supported {
            return None;
        }
        let layout = match kind {
            PackKind::RowMajor => PackedLayout::RowMajor(w.to_vec()),
            #[cfg(target_arch = "x86_64")]
            PackKind::Vnni => PackedLayout::Vnni(x86::pack_vnni(w, rows, depth)),
            #[cfg(target_arch = "x86_64")]
            PackKind::Avx2 => PackedLayout::Avx2(x86::pack_avx2(w, rows, depth)),
        };
        Some(PackedI8 {
            rows,
            depth,
            layout,
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per row.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

#[derive(Debug, Clone, Copy)]
enum PackKind {
    RowMajor,
    #[cfg(target_arch = "x86_64")]
    Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

/// [`gemv_u8i8`] over packed weights: `acc[o] = Σᵢ x[i] · w[o, i]` for `o < w.rows()`.
/// Every layout gives identical results.
///
/// # Panics
/// If `x.len()` is not `w.depth()` or `acc` holds fewer than `w.rows()` values.
pub fn gemv_u8i8_packed(x: &[u8], w: &PackedI8, acc: &mut [i32]) {
    assert!(x.len() == w.depth && acc.len() >= w.rows);
    match &w.layout {
        PackedLayout::RowMajor(v) => gemv_u8i8(x, v, &mut acc[..w.rows]),
        #[cfg(target_arch = "x86_64")]
        PackedLayout::Vnni(p) => x86::gemv_u8i8_vnni_packed(x, p, w.rows, &mut acc[..w.rows]),
        #[cfg(target_arch = "x86_64")]
        PackedLayout::Avx2(p) => x86::gemv_u8i8_avx2_packed(x, p, w.rows, &mut acc[..w.rows]),
    }
}

/// [`requant_u8`] by a [`int8::NarrowRequant`] plan, for the first `plan.channels()`
/// channels: identical results, in 32-bit lanes where the CPU has them.
pub fn requant_u8_narrow(plan: &int8::NarrowRequant, acc: &[i32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return x86::requant_u8_narrow_avx2(plan, acc, y);
    }
    int8::requant_u8_narrow(plan, acc, y)
}

/// Numerically stable softmax over rows of `axis_len` (last axis), with perch's own
/// [`generic::exp`]; every implementation gives identical results.
pub fn softmax(x: &[f32], axis_len: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return x86::softmax_avx2(x, axis_len, y);
    }
    generic::softmax(x, axis_len, y)
}

/// Whether every value of `x` is a whole number in `-128..=127` (`signed`) or `0..=255`,
/// writing each, as its byte (two's complement for signed), to `y` (as long as `x`) if so;
/// `y` holds unspecified bytes when not. The int8 and uint8 inputs of a model, given as
/// numbers: a check and a conversion per value, which AVX2 does sixteen at a time (SSE2
/// four).
pub fn whole_numbers_to_bytes(x: &[f32], signed: bool, y: &mut [u8]) -> bool {
    assert_eq!(x.len(), y.len(), "whole_numbers_to_bytes lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx2() {
            return x86::whole_numbers_to_bytes_avx2(x, signed, y);
        }
        x86::whole_numbers_to_bytes_sse2(x, signed, y)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        generic::whole_numbers_to_bytes(x, signed, y)
    }
}

/// [`int8::quantize`]: `y = clamp(round_half_even(x / scale) + zero_point, 0, 255)`;
/// every implementation gives identical results.
pub fn quantize_u8(x: &[f32], scale: f32, zero_point: u8, y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return x86::quantize_avx2(x, None, scale, zero_point, y);
    }
    int8::quantize(x, scale, zero_point, y)
}

/// [`int8::standardize_quantize`]: the standardize and the quantize in one pass, along
/// the last axis (`offset.len()` wide); every implementation gives identical results.
pub fn standardize_quantize_u8(
    x: &[f32],
    offset: &[f32],
    scale: &[f32],
    q_scale: f32,
    zero_point: u8,
    y: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return x86::quantize_avx2(x, Some((offset, scale)), q_scale, zero_point, y);
    }
    int8::standardize_quantize(x, offset, scale, q_scale, zero_point, y)
}

/// A `[rows, cols]` matrix in compressed sparse row form whose invariants were checked
/// when it was built, so the sparse kernels index it without further checks.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix {
    rows: usize,
    cols: usize,
    row_ptr: Vec<u32>,
    col_idx: Vec<u32>,
    values: Vec<f32>,
}

impl CsrMatrix {
    /// Takes the three CSR arrays of a `[rows, cols]` matrix; `None` unless `row_ptr` has
    /// `rows + 1` entries from 0 to `values.len()` that never decrease, `col_idx` is as long
    /// as `values` and every column is below `cols`.
    pub fn new(
        rows: usize,
        cols: usize,
        row_ptr: Vec<u32>,
        col_idx: Vec<u32>,
        values: Vec<f32>,
    ) -> Option<CsrMatrix> {
        let ok = row_ptr.len() == rows.checked_add(1)?
            && col_idx.len() == values.len()
            && row_ptr.first() == Some(&0)
            && row_ptr.last().map(|&v| v as usize) == Some(values.len())
            && row_ptr.windows(2).all(|w| w[0] <= w[1])
            && col_idx.iter().all(|&c| (c as usize) < cols);
        ok.then_some(CsrMatrix {
            rows,
            cols,
            row_ptr,
            col_idx,
            values,
        })
    }

    /// The CSR form of the row-major `[rows, cols]` `dense`, keeping its nonzeros.
    pub fn from_dense(rows: usize, cols: usize, dense: &[f32]) -> Option<CsrMatrix> {
        if dense.len() != rows.checked_mul(cols)? {
            return None;
        }
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let (mut col_idx, mut values) = (Vec::new(), Vec::new());
        row_ptr.push(0);
        for r in 0..rows {
            for (c, &v) in dense[r * cols..(r + 1) * cols].iter().enumerate() {
                if v != 0.0 {
                    col_idx.push(u32::try_from(c).ok()?);
                    values.push(v);
                }
            }
            row_ptr.push(u32::try_from(values.len()).ok()?);
        }
        CsrMatrix::new(rows, cols, row_ptr, col_idx, values)
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Stored values.
    pub fn nonzeros(&self) -> usize {
        self.values.len()
    }

    /// The matrix as dense row-major values.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut dense = vec![0.0; self.rows * self.cols];
        for (r, span) in self.row_ptr.windows(2).enumerate() {
            let range = span[0] as usize..span[1] as usize;
            for (&c, &v) in self.col_idx[range.clone()].iter().zip(&self.values[range]) {
                dense[r * self.cols + c as usize] = v;
            }
        }
        dense
    }
}

/// `y[r] = W · x[r] + b` for every row `r` with a sparse `W` (`[outputs, inputs]`).
pub fn csr_dense(x: &[f32], w: &CsrMatrix, b: &[f32], y: &mut [f32]) {
    generic::csr_dense(x, w, b, y)
}

/// [`csr_dense`] for batches: the same result, several samples per pass over the weight.
/// `scratch` holds at least `w.cols() * CSR_TILE` values.
pub fn csr_dense_batched(x: &[f32], w: &CsrMatrix, b: &[f32], y: &mut [f32], scratch: &mut [f32]) {
    generic::csr_dense_batched(x, w, b, y, scratch)
}

pub use generic::CSR_TILE;

pub use tree::{TreeEnsemble, TreeNode};

pub use generic::{activate, argmax, avg_pool2d, conv2d, global_avg_pool, max_pool2d, standardize};

/// Channels a depthwise kernel's packed weights are padded to (whole SIMD vectors).
pub(crate) fn dw_channels_padded(c: usize) -> usize {
    c.div_ceil(64) * 64
}

/// Depthwise f32 convolution (weights `[tap][c_pad]`, bias `[c_pad]`; `zeros`, at least
/// `in_w · in_c` zeros, is the x86 kernels' zero input row).
#[allow(clippy::too_many_arguments)]
fn depthwise_f32(
    path: F32Path,
    g: &ConvGeometry,
    x: &[f32],
    zeros: &[f32],
    w: &[f32],
    bias: &[f32],
    c_pad: usize,
    act: Activation,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    use x86::depthwise as dw;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = zeros;
    match path {
        F32Path::Portable => conv::depthwise_f32_portable(g, x, w, bias, c_pad, act, y),
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx512 => dw::depthwise_f32_avx512(g, x, zeros, w, bias, c_pad, act, y),
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx2 => dw::depthwise_f32_avx2(g, x, zeros, w, bias, c_pad, act, y),
        #[cfg(target_arch = "aarch64")]
        F32Path::Neon => neon::depthwise::depthwise_f32(g, x, w, bias, c_pad, act, y),
    }
}

/// Depthwise int8 convolution (weights `[tap][c_pad]`).
#[allow(clippy::too_many_arguments)]
fn depthwise_u8(
    path: I8Path,
    g: &ConvGeometry,
    x: &[u8],
    zp: u8,
    w: &[i8],
    c_pad: usize,
    epi: &qconv::QEpilogue,
    y: gemm::QDst<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if path != I8Path::Portable && x86::qdepthwise::supports(g, epi) {
        return x86::qdepthwise::depthwise_u8_x86(g, x, zp, w, c_pad, epi, y);
    }
    #[cfg(target_arch = "aarch64")]
    if path.portable_epilogue() {
        return neon::depthwise::depthwise_u8(g, x, zp, w, c_pad, epi, y);
    }
    let _ = path;
    qconv::depthwise_u8_portable(g, x, zp, w, c_pad, epi, y)
}

/// [`add_f32`] on the fastest path.
fn add_f32_dispatch(a: &[f32], b: &[f32], act: Activation, y: &mut [f32]) {
    eltwise::add_f32_portable(a, b, act, y)
}

/// [`AddU8::run`] on the fastest path.
fn add_u8_dispatch(add: &AddU8, a: &[u8], b: &[u8], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx512_vnni() {
        return x86::qadd::add_u8_avx512(add, a, b, y);
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return x86::qadd::add_u8_avx2(add, a, b, y);
    }
    eltwise::add_u8_portable(add, a, b, y)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Whole numbers in range convert to their bytes on every path; anything else (a
    /// fraction, out of range, NaN, infinite) anywhere, in the SIMD part or the tail,
    /// fails the whole slice.
    #[test]
    fn whole_numbers_convert_to_bytes_or_fail() {
        let signed: Vec<f32> = (-128..=127).map(|v| v as f32).chain([-0.0]).collect();
        let unsigned: Vec<f32> = (0..=255).map(|v| v as f32).collect();
        for (values, is_signed) in [(&signed, true), (&unsigned, false)] {
            for len in [0, 1, 3, 4, 5, 7, 8, 15, 16, 17, 33, values.len()] {
                let x = &values[..len];
                let want: Vec<u8> = x.iter().map(|&v| v as i32 as u8).collect();
                let mut y = vec![0xa5; len];
                assert!(super::whole_numbers_to_bytes(x, is_signed, &mut y));
                assert_eq!(y, want);
                let mut y = vec![0xa5; len];
                assert!(super::generic::whole_numbers_to_bytes(x, is_signed, &mut y));
                assert_eq!(y, want);
            }
            let bad_values = if is_signed {
                [
                    127.5,
                    128.0,
                    -129.0,
                    0.25,
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    1e10,
                ]
            } else {
                [
                    255.5,
                    256.0,
                    -1.0,
                    0.25,
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    -0.5,
                ]
            };
            for bad in bad_values {
                // In the 16-value steps (0-31), the 4-value steps (32-35) and the tail.
                for at in [0, 2, 5, 9, 15, 16, 31, 33, 37] {
                    let mut x = values[..38].to_vec();
                    x[at] = bad;
                    let mut y = vec![0; 38];
                    assert!(
                        !super::whole_numbers_to_bytes(&x, is_signed, &mut y),
                        "{bad} at {at}"
                    );
                    assert!(
                        !super::generic::whole_numbers_to_bytes(&x, is_signed, &mut y),
                        "{bad} at {at}"
                    );
                }
            }
        }
    }

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        (0..n)
            .map(|i| {
                ((i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503))
                    >> 13) as u8
            })
            .collect()
    }

    /// Every int8 implementation this CPU can run, by name.
    #[allow(clippy::type_complexity)]
    fn gemv_paths() -> Vec<(&'static str, fn(&[u8], &[i8], &mut [i32]))> {
        #[allow(unused_mut)]
        let mut paths: Vec<(&'static str, fn(&[u8], &[i8], &mut [i32]))> =
            vec![("dispatch", super::gemv_u8i8)];
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2() {
                paths.push(("avx2", super::x86::gemv_u8i8_avx2));
            }
            if super::x86::has_avx_vnni() {
                paths.push(("avx-vnni", super::x86::gemv_u8i8_vnni));
            }
            if super::x86::has_avx512_vnni() {
                paths.push(("avx512-vnni", super::x86::gemv_u8i8_vnni_evex));
            }
        }
        #[cfg(target_arch = "aarch64")]
        paths.push(("neon", super::neon::gemv_u8i8));
        paths
    }

    #[test]
    fn gemv_extremes_are_exact() {
        // The largest magnitudes at the deepest allowed depth: no overflow, no saturation.
        let k = crate::graph::MAX_QUANT_DEPTH;
        let x = vec![255u8; k];
        let w: Vec<i8> = [vec![-128i8; k], vec![127i8; k]].concat();
        let mut want = [0i32; 2];
        super::int8::gemv_u8i8(&x, &w, &mut want);
        assert_eq!(want, [-255 * 128 * k as i32, 255 * 127 * k as i32]);
        for (name, f) in gemv_paths() {
            let mut got = [0i32; 2];
            f(&x, &w, &mut got);
            assert_eq!(got, want, "{name}");
        }
    }

    proptest! {
        /// The dispatched requantization equals the portable one exactly, extremes included.
        #[test]
        fn requant_u8_matches_portable(
            n in 1usize..40,
            seed in 0u32..10_000,
            zero_point in 0u8..=255,
            relu: bool,
            big in 0u32..3,
        ) {
            let b = bytes(n * 16, seed);
            let word = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
            let acc: Vec<i32> = (0..n).map(|i| match big { 0 => word(i) as i32, _ => (word(i) as i32) >> (8 * big) }).collect();
            let bias: Vec<i64> = (0..n).map(|i| (word(n + i) as i32 as i64) * if i % 3 == 0 { 3 } else { 1 }).collect();
            let multipliers: Vec<super::int8::FixedMultiplier> = (0..n)
                .map(|i| {
                    let real = 2f64.powi((word(2 * n + i) % 60) as i32 - 31) * (1.0 + (word(3 * n + i) % 1000) as f64 / 1000.0);
                    super::int8::FixedMultiplier::new(real).unwrap_or(super::int8::FixedMultiplier { m: 1 << 30, shift: 31 })
                })
                .collect();
            let mut want = vec![0u8; n];
            super::int8::requant_u8(&multipliers, &bias, zero_point, relu, &acc, &mut want);
            let mut got = vec![0u8; n];
            super::requant_u8(&multipliers, &bias, zero_point, relu, &acc, &mut got);
            prop_assert_eq!(got, want);
        }

        /// Every SIMD int8 path equals the portable one exactly.
        #[test]
        fn gemv_u8i8_paths_match_portable(k in 1usize..300, outputs in 1usize..13, seed in 0u32..10_000) {
            let x = bytes(k, seed);
            let w: Vec<i8> = bytes(k * outputs, seed ^ 0x5555).into_iter().map(|b| b as i8).collect();
            let mut want = vec![0i32; outputs];
            super::int8::gemv_u8i8(&x, &w, &mut want);
            for (name, f) in gemv_paths() {
                let mut got = vec![0i32; outputs];
                f(&x, &w, &mut got);
                prop_assert_eq!(&got, &want, "{}", name);
            }
        }
    }

    /// Every packed layout this CPU can run, by name.
    fn packed_kinds() -> Vec<(&'static str, super::PackKind)> {
        #[allow(unused_mut)]
        let mut kinds = vec![("row-major", super::PackKind::RowMajor)];
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2() {
                kinds.push(("avx2 packed", super::PackKind::Avx2));
            }
            if super::x86::has_vnni_256() {
                kinds.push(("vnni packed", super::PackKind::Vnni));
            }
        }
        kinds
    }

    #[test]
    fn packed_gemv_extremes_are_exact() {
        let k = crate::graph::MAX_QUANT_DEPTH;
        let x = vec![255u8; k];
        let rows = 9;
        let w: Vec<i8> = (0..rows)
            .flat_map(|r| vec![if r % 2 == 0 { -128i8 } else { 127 }; k])
            .collect();
        let mut want = vec![0i32; rows];
        super::int8::gemv_u8i8(&x, &w, &mut want);
        assert_eq!(want[0], -255 * 128 * k as i32);
        for (name, kind) in packed_kinds() {
            let p = super::PackedI8::with_layout(&w, rows, k, kind).expect("packs");
            let mut got = vec![0i32; rows];
            super::gemv_u8i8_packed(&x, &p, &mut got);
            assert_eq!(got, want, "{name}");
        }
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx512_vnni() {
            let p = super::x86::pack_vnni(&w, rows, k);
            let mut got = vec![0i32; rows];
            super::x86::gemv_u8i8_vnni_packed_evex(&x, &p, rows, &mut got);
            assert_eq!(got, want, "avx512-vnni packed");
        }
        assert_eq!(super::PackedI8::new(&w, rows, k + 1), None);
    }

    #[test]
    fn narrow_requant_refuses_what_it_cannot_do_exactly() {
        use super::int8::{FixedMultiplier, NarrowRequant};
        let m = |real| FixedMultiplier::new(real).expect("in range");
        let ok = NarrowRequant::new(&[m(0.01)], &[-5], &[(-1000, 1000)], 3, false);
        assert!(ok.is_some());
        // shift < 32 (a multiplier of 1/2 or more)
        assert!(NarrowRequant::new(&[m(0.75)], &[0], &[(0, 10)], 3, false).is_none());
        // bias or bias + acc outside i32
        assert!(NarrowRequant::new(&[m(0.01)], &[1 << 31], &[(0, 10)], 3, false).is_none());
        assert!(NarrowRequant::new(&[m(0.01)], &[i32::MAX as i64], &[(0, 1)], 0, false).is_none());
        // the widest accumulators still fit (M < 1/2 keeps results within ±2^30)
        assert!(
            NarrowRequant::new(
                &[m(0.499)],
                &[0],
                &[(i32::MIN as i64, i32::MAX as i64)],
                0,
                false
            )
            .is_some()
        );
        // lengths that disagree
        assert!(NarrowRequant::new(&[m(0.01)], &[], &[], 0, false).is_none());
    }

    type ExpInPlace = fn(&mut [f32]);

    /// Every exp-of-a-slice implementation this CPU can run, by name.
    fn exp_paths() -> Vec<(&'static str, ExpInPlace)> {
        #[allow(unused_mut)]
        let mut paths: Vec<(&'static str, ExpInPlace)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx2() {
            paths.push(("avx2", super::x86::exp_in_place_avx2));
        }
        paths
    }

    #[test]
    fn simd_exp_gives_the_scalar_bits() {
        use super::generic::{EXP_MAX, EXP_MIN, exp};
        // Every 4099th bit pattern (all signs, exponents and the NaNs), plus the edges.
        let mut xs: Vec<f32> = (0..=u32::MAX / 4099)
            .map(|i| f32::from_bits(i * 4099))
            .collect();
        for e in [
            EXP_MAX,
            EXP_MIN,
            0.0,
            f32::MIN_POSITIVE,
            1e-45,
            88.72,
            -87.33,
            -103.97,
        ] {
            for v in [e, -e, e.next_up(), e.next_down()] {
                xs.push(v);
            }
        }
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ]);
        xs.extend((0..20_000).map(|i| -104.0 + i as f32 * 0.0096));
        for (name, f) in exp_paths() {
            // Odd lengths exercise the masked tail.
            for chunk in xs.chunks(4093) {
                let mut got = chunk.to_vec();
                f(&mut got);
                for (&x, &g) in chunk.iter().zip(&got) {
                    let want = exp(x);
                    assert!(
                        g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                        "{name}: exp({x:e}) = {g:e}, scalar {want:e}"
                    );
                }
            }
        }
    }

    proptest! {
        /// The dispatched softmax gives the portable one's bits.
        #[test]
        fn softmax_matches_portable(axis_len in 1usize..24, rows in 1usize..4, seed in 0u32..10_000, spread in 0u32..4) {
            let b = bytes(axis_len * rows * 4, seed);
            let x: Vec<f32> = b
                .chunks_exact(4)
                .map(|w| (u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as i32 as f32) / 2f32.powi(31 - 4 * spread as i32))
                .collect();
            let mut x = x;
            let at = seed as usize % x.len();
            match seed % 7 {
                0 => x[at] = f32::NAN,
                1 => x[at] = f32::INFINITY,
                2 => x[at] = f32::NEG_INFINITY,
                _ => {}
            }
            let mut want = vec![0.0; x.len()];
            super::generic::softmax(&x, axis_len, &mut want);
            let mut got = vec![0.0; x.len()];
            super::softmax(&x, axis_len, &mut got);
            let bits = |v: &[f32]| v.iter().map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() }).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want));
        }
    }

    proptest! {
        /// The dispatched quantize and standardize-quantize give the portable codes,
        /// out-of-range, tiny, huge and overflowing values included.
        #[test]
        fn quantize_matches_portable(width in 1usize..40, rows in 1usize..4, seed in 0u32..10_000, q_exp in -12i32..8, zero_point in 0u8..=255) {
            let b = bytes(width * (rows + 2) * 4, seed);
            let word = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
            // Finite values of every magnitude (the exponent field avoids 255).
            let value = |i: usize| {
                let w = word(i);
                f32::from_bits((w & 0x807f_ffff) | (((w >> 23) % 255) << 23))
            };
            let x: Vec<f32> = (0..width * rows).map(|i| if i % 3 == 0 { value(i) } else { (word(i) as i32 >> 20) as f32 / 64.0 }).collect();
            let offset: Vec<f32> = (0..width).map(|i| if i % 5 == 4 { value(width * rows + i) } else { (word(width * rows + i) as i32 >> 24) as f32 / 8.0 }).collect();
            let scale: Vec<f32> = (0..width).map(|i| if i % 7 == 6 { 0.0 } else { (word(width * (rows + 1) + i) >> 24) as f32 / 16.0 }).collect();
            let q_scale = 2f32.powi(q_exp) * 0.77;
            let mut want = vec![0u8; x.len()];
            super::int8::quantize(&x, q_scale, zero_point, &mut want);
            let mut got = vec![0u8; x.len()];
            super::quantize_u8(&x, q_scale, zero_point, &mut got);
            prop_assert_eq!(&got, &want);
            super::int8::standardize_quantize(&x, &offset, &scale, q_scale, zero_point, &mut want);
            super::standardize_quantize_u8(&x, &offset, &scale, q_scale, zero_point, &mut got);
            prop_assert_eq!(&got, &want);
        }
    }

    proptest! {
        /// Every packed int8 layout equals the portable product exactly.
        #[test]
        fn packed_gemv_matches_portable(k in 1usize..300, rows in 1usize..70, seed in 0u32..10_000) {
            let x = bytes(k, seed);
            let w: Vec<i8> = bytes(k * rows, seed ^ 0x3333).into_iter().map(|b| b as i8).collect();
            let mut want = vec![0i32; rows];
            super::int8::gemv_u8i8(&x, &w, &mut want);
            for (name, kind) in packed_kinds() {
                let p = super::PackedI8::with_layout(&w, rows, k, kind).expect("packs");
                let mut got = vec![-1i32; rows + 3];
                super::gemv_u8i8_packed(&x, &p, &mut got);
                prop_assert_eq!(&got[..rows], &want[..], "{}", name);
                prop_assert_eq!(&got[rows..], &[-1, -1, -1][..], "{} wrote past its rows", name);
            }
            // The AVX-512 encoding of the VNNI kernel, also where AVX-VNNI would be picked.
            #[cfg(target_arch = "x86_64")]
            if super::x86::has_avx512_vnni() {
                let p = super::x86::pack_vnni(&w, rows, k);
                let mut got = vec![-1i32; rows];
                super::x86::gemv_u8i8_vnni_packed_evex(&x, &p, rows, &mut got);
                prop_assert_eq!(&got[..], &want[..], "avx512-vnni packed");
            }
        }

        /// The narrow requantization (portable and dispatched) equals the reference one on
        /// every accumulator its plan admits, the ends of each range included.
        #[test]
        fn narrow_requant_matches_reference(
            n in 1usize..40,
            k in 1usize..200,
            seed in 0u32..10_000,
            zero_point in 0u8..=255,
            relu: bool,
            log_m in 1u32..31,
        ) {
            use super::int8::{acc_ranges, FixedMultiplier, NarrowRequant};
            let w: Vec<i8> = bytes(k * n, seed).into_iter().map(|b| b as i8).collect();
            let ranges = acc_ranges(&w, k);
            let b = bytes(n * 8, seed ^ 0x7777);
            let word = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
            let multipliers: Vec<FixedMultiplier> = (0..n)
                .map(|c| {
                    let real = 2f64.powi(-((word(c) % log_m) as i32) - 1) * (1.0 - (word(c) >> 8) as f64 / 2f64.powi(25));
                    FixedMultiplier::new(real).expect("in range")
                })
                .collect();
            let bias: Vec<i64> = (0..n).map(|c| (word(n + c) as i32 >> 6) as i64).collect();
            let plan = NarrowRequant::new(&multipliers, &bias, &ranges, zero_point, relu);
            prop_assert!(plan.is_some(), "depth {} layers always fit", k);
            let plan = plan.expect("checked");
            for pick in 0..4 {
                let acc: Vec<i32> = ranges
                    .iter()
                    .enumerate()
                    .map(|(c, &(lo, hi))| match pick {
                        0 => lo as i32,
                        1 => hi as i32,
                        _ => (lo + (word(c) as i64 ^ pick as i64).rem_euclid(hi - lo + 1)) as i32,
                    })
                    .collect();
                let mut want = vec![0u8; n];
                super::int8::requant_u8(&multipliers, &bias, zero_point, relu, &acc, &mut want);
                let mut portable = vec![0u8; n];
                super::int8::requant_u8_narrow(&plan, &acc, &mut portable);
                prop_assert_eq!(&portable, &want);
                let mut got = vec![0u8; n];
                super::requant_u8_narrow(&plan, &acc, &mut got);
                prop_assert_eq!(&got, &want);
            }
        }
    }

    proptest! {
        /// The dispatched (SIMD) dense kernel agrees with the portable one.
        #[test]
        fn dense_dispatch_matches_generic(inputs in 1usize..70, outputs in 1usize..20, rows in 1usize..4, seed in 0u32..1000) {
            let values = |n: usize, k: u32| -> Vec<f32> { (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(k * 97)) % 2001) as f32 / 1000.0 - 1.0).collect() };
            let x = values(inputs * rows, seed);
            let w = values(inputs * outputs, seed + 1);
            let b = values(outputs, seed + 2);
            let mut fast = vec![0.0; rows * outputs];
            let mut slow = vec![0.0; rows * outputs];
            super::dense(&x, &w, &b, inputs, outputs, &mut fast);
            super::generic::dense(&x, &w, &b, inputs, outputs, &mut slow);
            for (f, s) in fast.iter().zip(&slow) {
                prop_assert!((f - s).abs() <= 1e-5 * (1.0 + s.abs()) * inputs as f32, "{} vs {}", f, s);
            }
        }

        /// The sparse kernel gives what the dense one gives on the same (pruned) matrix.
        #[test]
        fn csr_dense_matches_dense(inputs in 1usize..70, outputs in 1usize..20, rows in 1usize..40, keep in 0u32..100, seed in 0u32..1000) {
            let values = |n: usize, k: u32| -> Vec<f32> { (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(k * 97)) % 2001) as f32 / 1000.0 - 1.0).collect() };
            let x = values(inputs * rows, seed);
            let mut w = values(inputs * outputs, seed + 1);
            for (i, v) in w.iter_mut().enumerate() {
                if ((i as u32).wrapping_mul(2246822519).wrapping_add(seed) >> 8) % 100 >= keep {
                    *v = 0.0;
                }
            }
            let b = values(outputs, seed + 2);
            let csr = super::CsrMatrix::from_dense(outputs, inputs, &w).expect("valid");
            prop_assert_eq!(csr.to_dense(), w.clone());
            let mut sparse = vec![0.0; rows * outputs];
            let mut dense = vec![0.0; rows * outputs];
            let mut batched = vec![0.0; rows * outputs];
            let mut scratch = vec![0.0; inputs * super::CSR_TILE];
            super::csr_dense_batched(&x, &csr, &b, &mut batched, &mut scratch);
            super::csr_dense(&x, &csr, &b, &mut sparse);
            for (s, t) in sparse.iter().zip(&batched) {
                prop_assert!((s - t).abs() <= 1e-5 * (1.0 + s.abs()) * inputs as f32, "{} vs {}", s, t);
            }
            super::generic::dense(&x, &w, &b, inputs, outputs, &mut dense);
            for (s, d) in sparse.iter().zip(&dense) {
                prop_assert!((s - d).abs() <= 1e-5 * (1.0 + d.abs()) * inputs as f32, "{} vs {}", s, d);
            }
        }
    }
}
