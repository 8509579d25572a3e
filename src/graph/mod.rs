//! The native model IR: typed tensors, layers and the graph that wires them, plus model
//! metadata.
//!
//! A [`Graph`] is a list of [`Node`]s in topological order. Every value carries a leading
//! batch axis that the IR does not store: shapes here are *per sample*. Value ids number
//! the graph inputs first (`0..inputs.len()`), then each node's single output in node order.
//! Most layers read one value; [`Layer::Add`], [`Layer::QAdd`] and [`Layer::Concat`] read
//! several.
//!
//! # Compatibility
//! The artifact stores these types with postcard, which is not self-describing. New layer
//! kinds and tensor encodings are only ever appended as new enum variants, so files written
//! by an older perch keep decoding; a file using a variant this build does not know fails
//! with a clear error instead of being misread.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod budget;
pub mod sections;
mod validate;

#[cfg(feature = "onnx")]
pub(crate) use validate::infer_node;
pub use validate::{GraphError, MAX_QUANT_DEPTH, ValueShapes};

/// Element type of a graph value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float: every float input, output and activation.
    F32,
    /// 64-bit signed integer (class indices and labels).
    I64,
    /// Unsigned 8-bit quantized activations (with the [`QuantParams`] of the layer that
    /// makes them). Between layers, and since revision 1.3 as a graph input or output
    /// (the codes themselves, as an ONNX `uint8` tensor holds them).
    U8,
    /// Signed 8-bit quantized codes: only as a graph input or output (TFLite full-integer
    /// exports). Inside the graph they become `U8` through [`Layer::ToU8`] (`q + 128`, the
    /// zero point moving with them) and come back through [`Layer::ToI8`]. New in
    /// revision 1.3.
    I8,
}

impl DType {
    /// The ONNX-style lower case name (`float32`, `int64`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::I8 => "int8",
        }
    }
}

/// Name, element type and per-sample shape of a graph input or output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// Name used by callers (`--format json` output keys, ONNX input names).
    pub name: String,
    /// Element type: `F32`, or since revision 1.3 `U8` / `I8` codes; `I64` only as an output.
    pub dtype: DType,
    /// Shape of one sample; the batch axis is implicit and comes first.
    pub shape: Vec<u32>,
}

impl TensorSpec {
    /// Number of elements in one sample.
    pub fn sample_len(&self) -> usize {
        self.shape.iter().map(|&d| d as usize).product()
    }
}

/// A constant tensor (weights, biases, statistics).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Full shape (no implicit batch axis).
    pub shape: Vec<u32>,
    /// The elements in their encoding.
    pub data: TensorData,
}

/// Encodings of a constant tensor's elements. Append-only (see module docs): int8 with
/// per-channel quantization parameters and sparse (pruned) encodings come as new variants.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Dense row-major f32.
    F32(Vec<f32>),
    /// Symmetric int8 per output channel (axis 0): element `i` of channel `c` stands for
    /// `values[i] * scales[c]`. `values` is row-major; `scales` has one entry per index of
    /// the first axis, each finite and > 0. New in format revision 1.2.
    I8 {
        /// Quantized elements, row-major.
        values: Vec<i8>,
        /// One scale per output channel (first axis).
        scales: Vec<f32>,
    },
    /// A 2-D `[rows, cols]` f32 matrix in compressed sparse row form (pruned weights; rows
    /// are output channels): row `r`'s nonzeros are `values[row_ptr[r]..row_ptr[r + 1]]` at
    /// columns `col_idx[..]` (same range), columns strictly increasing within a row.
    /// Validation checks every invariant, so a damaged file is an error, not a panic.
    Csr {
        /// `rows + 1` offsets into `col_idx` / `values`: starts at 0, never decreases, ends
        /// at the nonzero count.
        row_ptr: Vec<u32>,
        /// Column of each stored value, below `cols`.
        col_idx: Vec<u32>,
        /// The stored (nonzero) values, row by row.
        values: Vec<f32>,
    },
}

/// Asymmetric u8 quantization of an activation: `real = (q - zero_point) * scale`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct QuantParams {
    /// Step between consecutive codes; finite, normal and > 0.
    pub scale: f32,
    /// The code that stands for 0.0.
    pub zero_point: u8,
}

impl QuantParams {
    /// Parameters covering `[min, max]` widened to include 0, so that 0.0 (padding, ReLU's
    /// floor) has an exact code. An empty or degenerate range gives scale 1.
    pub fn from_range(min: f32, max: f32) -> QuantParams {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = (hi - lo) / 255.0;
        if !(scale.is_normal() && scale > 0.0) {
            return QuantParams {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        QuantParams {
            scale,
            zero_point: zp,
        }
    }
}

/// What a quantized layer ([`Layer::QDense`], [`Layer::QConv2d`]) reads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub enum QuantInput {
    /// A `U8` value quantized with these (calibrated) parameters.
    Static(QuantParams),
    /// A float32 value, quantized on every call to u8 per sample from that sample's
    /// minimum and maximum (widened to include 0); per row of the last axis for a dense
    /// layer whose samples hold several rows.
    Dynamic,
}

/// What a quantized layer writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub enum QuantOutput {
    /// float32: `y[c] = acc[c] * (s_in * s_w[c]) + bias[c]`, then the activation.
    F32,
    /// `U8` with these parameters, requantized with an integer fixed-point multiplier per
    /// channel (see docs/artifact.md); the activation is a clamp at the zero point.
    U8(QuantParams),
}

impl Tensor {
    /// A dense f32 tensor. The caller keeps `shape` and `data.len()` consistent; validation
    /// checks it when a graph is loaded.
    pub fn f32(shape: Vec<u32>, data: Vec<f32>) -> Tensor {
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }

    /// Number of elements the shape implies (`usize::MAX` when that does not fit: the
    /// shape may come from a hostile file).
    pub fn numel(&self) -> usize {
        let n = crate::util::element_count(self.shape.iter().map(|&d| u64::from(d)));
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// The f32 elements, if the tensor is stored densely as f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I8 { .. } | TensorData::Csr { .. } => None,
        }
    }

    /// The int8 elements and per-channel scales, if the tensor is stored as int8.
    pub fn as_i8(&self) -> Option<(&[i8], &[f32])> {
        match &self.data {
            TensorData::I8 { values, scales } => Some((values, scales)),
            TensorData::F32(_) | TensorData::Csr { .. } => None,
        }
    }

    /// Size of the stored elements in bytes (for CSR: offsets, columns and values).
    pub fn size_bytes(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len() * 4,
            TensorData::I8 { values, scales } => values.len() + scales.len() * 4,
            TensorData::Csr {
                row_ptr,
                col_idx,
                values,
            } => (row_ptr.len() + col_idx.len() + values.len()) * 4,
        }
    }

    /// Whether the elements are stored sparsely.
    pub fn is_sparse(&self) -> bool {
        matches!(self.data, TensorData::Csr { .. })
    }

    /// Number of nonzero elements (stored CSR values count even when zero).
    pub fn nonzeros(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.iter().filter(|&&x| x != 0.0).count(),
            TensorData::Csr { values, .. } => values.len(),
            TensorData::I8 { values, .. } => values.iter().filter(|&&q| q != 0).count(),
        }
    }

    /// The elements as dense row-major f32, whatever their encoding; `None` when the data
    /// disagrees with the shape (a tensor that failed validation). Never panics.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        match &self.data {
            TensorData::F32(v) => (v.len() == self.numel()).then(|| v.clone()),
            TensorData::I8 { values, scales } => {
                let channels = scales.len();
                if values.len() != self.numel() || channels == 0 || values.len() % channels != 0 {
                    return None;
                }
                let per = values.len() / channels;
                Some(
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, &q)| q as f32 * scales[i / per])
                        .collect(),
                )
            }
            TensorData::Csr {
                row_ptr,
                col_idx,
                values,
            } => {
                let [rows, cols] = match self.shape[..] {
                    [r, c] => [r as usize, c as usize],
                    _ => return None,
                };
                if row_ptr.len() != rows.checked_add(1)?
                    || col_idx.len() != values.len()
                    || rows.checked_mul(cols)? > validate::MAX_VALUE_ELEMENTS
                {
                    return None;
                }
                let mut dense = vec![0.0f32; rows * cols];
                for r in 0..rows {
                    let (lo, hi) = (row_ptr[r] as usize, row_ptr[r + 1] as usize);
                    let cs = col_idx.get(lo..hi)?;
                    let vs = values.get(lo..hi)?;
                    for (&c, &v) in cs.iter().zip(vs) {
                        if c as usize >= cols {
                            return None;
                        }
                        dense[r * cols + c as usize] = v;
                    }
                }
                Some(dense)
            }
        }
    }

    /// A `[rows, cols]` matrix in CSR form, keeping the nonzeros of the row-major `dense`;
    /// `None` when a dimension or the count of nonzeros does not fit the format's `u32`.
    ///
    /// # Panics
    /// If `dense.len() != rows * cols`.
    pub fn csr_from_dense(rows: usize, cols: usize, dense: &[f32]) -> Option<Tensor> {
        assert_eq!(dense.len(), rows * cols, "dense data must be rows × cols");
        let shape = vec![u32::try_from(rows).ok()?, u32::try_from(cols).ok()?];
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let mut col_idx = Vec::new();
        let mut values = Vec::new();
        row_ptr.push(0u32);
        for row in dense.chunks_exact(cols.max(1)).take(rows) {
            for (c, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    // c < cols, which fits u32 (checked above).
                    col_idx.push(c as u32);
                    values.push(v);
                }
            }
            row_ptr.push(u32::try_from(values.len()).ok()?);
        }
        if cols == 0 {
            row_ptr.resize(rows + 1, 0);
        }
        Some(Tensor {
            shape,
            data: TensorData::Csr {
                row_ptr,
                col_idx,
                values,
            },
        })
    }
}

/// Spatial padding of a 2-D window op: top, left, bottom, right.
pub type Padding2d = [u32; 4];

/// One operation of the graph. Layers work on the last axis (dense, softmax, argmax,
/// standardize), on NCHW feature maps (conv and pooling) or on flat feature vectors (tree
/// ensembles). Shapes and axes are *logical* (ONNX semantics, per sample): the engine picks
/// each value's memory layout when it loads the graph. Append-only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Layer {
    /// `y[..., j] = (x[..., j] - offset[j]) * scale[j]` on the last axis; `offset` and
    /// `scale` have the last axis' length, or length 1 to broadcast.
    Standardize {
        /// Per-element offset, subtracted first (the training mean).
        offset: Vec<f32>,
        /// Per-element factor, multiplied second (1 / the training standard deviation).
        scale: Vec<f32>,
    },
    /// `y = x · Wᵀ + b` on the last axis; `weight` is `[out, in]`, `bias` is `[out]`.
    Dense {
        /// `[out, in]`, in any [`TensorData`] encoding (float32, int8 per channel, sparse).
        weight: Tensor,
        /// `[out]`, or none.
        bias: Option<Tensor>,
    },
    /// 2-D convolution over NCHW input; `weight` is `[out, in / groups, kh, kw]`.
    Conv2d {
        /// `[out_channels, in_channels / groups, kh, kw]`.
        weight: Tensor,
        /// `[out_channels]`, or none.
        bias: Option<Tensor>,
        /// Vertical, horizontal stride.
        stride: [u32; 2],
        /// Top, left, bottom, right zero padding.
        padding: Padding2d,
        /// Vertical, horizontal dilation.
        dilation: [u32; 2],
        /// Channel groups (1 = dense conv, `in_channels` = depthwise).
        groups: u32,
    },
    /// Max pooling over NCHW input; padded cells never win.
    MaxPool2d {
        /// Window height, width.
        kernel: [u32; 2],
        /// Vertical, horizontal stride.
        stride: [u32; 2],
        /// Top, left, bottom, right padding.
        padding: Padding2d,
    },
    /// Average pooling over NCHW input.
    AvgPool2d {
        /// Window height, width.
        kernel: [u32; 2],
        /// Vertical, horizontal stride.
        stride: [u32; 2],
        /// Top, left, bottom, right padding.
        padding: Padding2d,
        /// Whether padded cells count in the divisor (ONNX `count_include_pad`).
        count_include_pad: bool,
    },
    /// Mean over the spatial axes of NCHW input, giving `[C, 1, 1]` per sample.
    GlobalAvgPool,
    /// Collapses each sample to one axis.
    Flatten,
    /// Gives each sample a new shape with the same number of elements.
    Reshape {
        /// New per-sample shape; it holds as many elements as the input's.
        shape: Vec<u32>,
    },
    /// `max(x, 0)`, element by element.
    Relu,
    /// `x` if `x >= 0`, else `alpha * x`.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`, element by element.
    Tanh,
    /// Softmax over the last axis.
    Softmax,
    /// Index of the largest value on the last axis (first one on ties), as `int64`,
    /// mapped through `labels` when given. Removes the last axis.
    ArgMax {
        /// Class label for each index, or none for the raw index.
        labels: Option<Vec<i64>>,
    },
    /// A tree ensemble (decision tree, random forest, gradient boosting) on a flat
    /// `[features]` sample, giving `[n_outputs]` scores: the trees' leaf values are summed
    /// per output (divided by the tree count for [`TreeAggregate::Average`]), `base_values`
    /// are added, then `post_transform` is applied. New in format 1's second revision;
    /// files without it are unchanged.
    TreeEnsemble {
        /// The trees, evaluated and summed in order.
        trees: Vec<Tree>,
        /// Scores per sample (classes or regression targets).
        n_outputs: u32,
        /// How the trees' leaf values combine.
        aggregate: TreeAggregate,
        /// Added to the aggregated scores: `n_outputs` values, or none for zeros.
        base_values: Vec<f32>,
        /// Applied last, over each sample's scores.
        post_transform: TreePostTransform,
    },
    /// float32 → `U8`: `q = clamp(round_half_even(x / scale) + zero_point, 0, 255)`.
    /// New in revision 1.2, as are the three variants after it.
    Quantize(QuantParams),
    /// `U8` → float32: `x = (q - zero_point) * scale`.
    Dequantize(QuantParams),
    /// Int8 [`Layer::Dense`]: u8 activations × int8 weights accumulated in i32.
    QDense {
        /// `[out, in]`, [`TensorData::I8`].
        weight: Tensor,
        /// `[out]` float32, or none.
        bias: Option<Tensor>,
        /// How the input is quantized.
        input: QuantInput,
        /// What the layer writes.
        output: QuantOutput,
        /// Fused `max(y, 0)`.
        relu: bool,
    },
    /// Int8 [`Layer::Conv2d`] (NCHW; padding stands for 0.0, the input's zero point).
    QConv2d {
        /// `[out_channels, in_channels / groups, kh, kw]`, [`TensorData::I8`].
        weight: Tensor,
        /// `[out_channels]` float32, or none.
        bias: Option<Tensor>,
        /// Vertical, horizontal stride.
        stride: [u32; 2],
        /// Top, left, bottom, right zero padding.
        padding: Padding2d,
        /// Vertical, horizontal dilation.
        dilation: [u32; 2],
        /// Channel groups, `>= 1`, dividing both channel counts.
        groups: u32,
        /// How the input is quantized.
        input: QuantInput,
        /// What the layer writes.
        output: QuantOutput,
        /// Fused `max(y, 0)`.
        relu: bool,
    },
    /// `y = a + b` element by element; both inputs float32 with the same shape (residual
    /// connections). New in revision 1.3, as are all the variants after it.
    Add,
    /// `min(max(x, min), max)` (Relu6 is `Clip { min: 0, max: 6 }`).
    Clip {
        /// Lower bound, finite.
        min: f32,
        /// Upper bound, `>= min`.
        max: f32,
    },
    /// `max(0, min(1, alpha · x + beta))`.
    HardSigmoid {
        /// Slope `alpha` applied to `x`.
        alpha: f32,
        /// Offset `beta` added after the slope.
        beta: f32,
    },
    /// `x · min(max(x + 3, 0), 6) / 6`.
    HardSwish,
    /// `y[c, ...] = x[c, ...] · scale[c] + offset[c]` along the sample's first axis (the
    /// channels of a C×H×W map; each element of a flat vector). `scale` and `offset` have
    /// that axis' length (a batch normalization with no layer to fold into).
    ChannelAffine {
        /// Per-channel factor, multiplied first.
        scale: Vec<f32>,
        /// Per-channel offset, added after the factor.
        offset: Vec<f32>,
    },
    /// Joins its inputs along a sample axis; every other axis must agree. The inputs are
    /// all float32 or all `U8` (then with the same quantization parameters).
    Concat {
        /// Sample axis (0 is the first axis after the batch).
        axis: u32,
    },
    /// Constant padding: `begin[i]` values before and `end[i]` after sample axis `i`. For a
    /// `U8` input, `value` is the code written (an integer in 0..=255).
    Pad {
        /// Values added before each sample axis.
        begin: Vec<u32>,
        /// Values added after each sample axis.
        end: Vec<u32>,
        /// The padding value.
        value: f32,
    },
    /// Permutes the sample axes: output axis `i` is input axis `perm[i]` (float32 or `U8`).
    Transpose {
        /// A permutation of `0..rank`.
        perm: Vec<u32>,
    },
    /// `U8 + U8 → U8`: `y = clamp(round(out.zp + ((a - a.zp)·a.scale + (b - b.zp)·b.scale)
    /// / out.scale), 0, 255)` in fixed point (see docs/artifact.md).
    QAdd {
        /// First input's parameters.
        a: QuantParams,
        /// Second input's parameters.
        b: QuantParams,
        /// Parameters of the output codes.
        output: QuantParams,
    },
    /// `U8 → U8`: clamps the codes to `[min, max]` (Relu6 or Clip after a quantized layer).
    QClamp {
        /// Lowest code kept.
        min: u8,
        /// Highest code kept, `>= min`.
        max: u8,
    },
    /// `U8 → U8`: `y = table[x]` (an activation, or a change of quantization parameters,
    /// computed once when the graph was made). Exactly 256 entries.
    QLookup {
        /// Output code for each input code.
        table: Vec<u8>,
    },
    /// Int8 [`Layer::AvgPool2d`]: sums of codes requantized from `input` to `output`
    /// parameters in fixed point.
    QAvgPool2d {
        /// Window height, width.
        kernel: [u32; 2],
        /// Vertical, horizontal stride.
        stride: [u32; 2],
        /// Top, left, bottom, right padding.
        padding: Padding2d,
        /// Whether padded cells count in the divisor.
        count_include_pad: bool,
        /// Parameters of the input codes.
        input: QuantParams,
        /// Parameters of the output codes.
        output: QuantParams,
    },
    /// Int8 [`Layer::GlobalAvgPool`]: the mean of each channel's codes, requantized from `input`
    /// to `output` parameters in fixed point.
    QGlobalAvgPool {
        /// Parameters of the input codes.
        input: QuantParams,
        /// Parameters of the output codes.
        output: QuantParams,
    },
    /// `I8 → U8`: `q + 128` (the same real values, zero point moved by 128).
    ToU8,
    /// `U8 → I8`: `q - 128`.
    ToI8,
}

/// One decision tree in flat arrays, indexed by node id; node 0 is the root.
///
/// Node `i` is a leaf when `left[i] == 0` (the root is never a child); otherwise a sample
/// whose feature `feature[i]` compares true with `threshold[i]` under `mode` goes to
/// `left[i]`, else to `right[i]`. Children have larger ids than their parent, so a walk
/// always ends. `leaf_values` holds `n_outputs` values per leaf, leaves in node-id order.
/// A leaf's `feature`, `threshold` and `right` are 0.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Tree {
    /// Feature index each branch tests.
    pub feature: Vec<u32>,
    /// Threshold each branch compares with.
    pub threshold: Vec<f32>,
    /// Child taken when the comparison holds; 0 marks a leaf.
    pub left: Vec<u32>,
    /// Child taken otherwise.
    pub right: Vec<u32>,
    /// `n_leaves × n_outputs` values, leaves in node-id order.
    pub leaf_values: Vec<f32>,
    /// The comparison every branch of this tree makes.
    pub mode: SplitMode,
}

impl Tree {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.left.len()
    }

    /// Whether the tree has no node (never valid).
    pub fn is_empty(&self) -> bool {
        self.left.is_empty()
    }

    /// Bytes of constant data.
    pub fn size_bytes(&self) -> usize {
        (self.feature.len()
            + self.threshold.len()
            + self.left.len()
            + self.right.len()
            + self.leaf_values.len())
            * 4
    }
}

/// The test a tree's branches make; true goes left.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SplitMode {
    /// `x <= threshold` (scikit-learn, ONNX `BRANCH_LEQ`).
    #[default]
    Leq,
    /// `x < threshold` (ONNX `BRANCH_LT`).
    Lt,
}

/// How a [`Layer::TreeEnsemble`] combines its trees.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeAggregate {
    /// Sum of the leaf values (gradient boosting).
    Sum,
    /// Mean of the leaf values (random forest).
    Average,
}

/// Transform applied to a [`Layer::TreeEnsemble`]'s scores.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreePostTransform {
    /// Scores as they are.
    None,
    /// Softmax over each sample's scores.
    Softmax,
    /// `1 / (1 + e^-x)` on each score.
    Logistic,
}

impl Layer {
    /// Short name for listings (`perch info`).
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Standardize { .. } => "standardize",
            Layer::Dense { .. } => "dense",
            Layer::Conv2d { .. } => "conv2d",
            Layer::MaxPool2d { .. } => "max_pool2d",
            Layer::AvgPool2d { .. } => "avg_pool2d",
            Layer::GlobalAvgPool => "global_avg_pool",
            Layer::Flatten => "flatten",
            Layer::Reshape { .. } => "reshape",
            Layer::Relu => "relu",
            Layer::LeakyRelu { .. } => "leaky_relu",
            Layer::Sigmoid => "sigmoid",
            Layer::Tanh => "tanh",
            Layer::Softmax => "softmax",
            Layer::ArgMax { .. } => "argmax",
            Layer::TreeEnsemble { .. } => "tree_ensemble",
            Layer::Quantize(_) => "quantize",
            Layer::Dequantize(_) => "dequantize",
            Layer::QDense { .. } => "qdense",
            Layer::QConv2d { .. } => "qconv2d",
            Layer::Add => "add",
            Layer::Clip { .. } => "clip",
            Layer::HardSigmoid { .. } => "hard_sigmoid",
            Layer::HardSwish => "hard_swish",
            Layer::ChannelAffine { .. } => "channel_affine",
            Layer::Concat { .. } => "concat",
            Layer::Pad { .. } => "pad",
            Layer::Transpose { .. } => "transpose",
            Layer::QAdd { .. } => "qadd",
            Layer::QClamp { .. } => "qclamp",
            Layer::QLookup { .. } => "qlookup",
            Layer::QAvgPool2d { .. } => "qavg_pool2d",
            Layer::QGlobalAvgPool { .. } => "qglobal_avg_pool",
            Layer::ToU8 => "to_u8",
            Layer::ToI8 => "to_i8",
        }
    }

    /// Bytes of constant data the layer carries.
    pub fn param_bytes(&self) -> usize {
        match self {
            Layer::Standardize { offset, scale } => (offset.len() + scale.len()) * 4,
            Layer::Dense { weight, bias }
            | Layer::Conv2d { weight, bias, .. }
            | Layer::QDense { weight, bias, .. }
            | Layer::QConv2d { weight, bias, .. } => {
                weight.size_bytes() + bias.as_ref().map_or(0, Tensor::size_bytes)
            }
            Layer::ArgMax { labels } => labels.as_ref().map_or(0, |l| l.len() * 8),
            Layer::TreeEnsemble {
                trees, base_values, ..
            } => trees.iter().map(Tree::size_bytes).sum::<usize>() + base_values.len() * 4,
            Layer::Quantize(_) | Layer::Dequantize(_) => 5,
            Layer::ChannelAffine { scale, offset } => (scale.len() + offset.len()) * 4,
            Layer::QLookup { table } => table.len(),
            _ => 0,
        }
    }
}

/// Index of a value: graph inputs first, then one per node.
pub type ValueId = u32;

/// One layer applied to earlier values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Node {
    /// Name for error messages (the ONNX node name when converted).
    pub name: String,
    /// The operation and its parameters (weights included).
    pub layer: Layer,
    /// The values it reads; each must come earlier in the graph.
    pub inputs: Vec<ValueId>,
}

/// A named graph output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Output {
    /// The name callers see (`perch run` output keys, ONNX output names).
    pub name: String,
    /// The id of the value it exposes: a graph input or a node's output.
    pub value: ValueId,
}

/// A model's computation: inputs, nodes in topological order, outputs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// Graph inputs: float32, or (revision 1.3) int8 / uint8 codes.
    pub inputs: Vec<TensorSpec>,
    /// Nodes, each after the values it reads.
    pub nodes: Vec<Node>,
    /// Named outputs, in the order callers see them.
    pub outputs: Vec<Output>,
}

/// Descriptive data about a model. Schema lives in the graph; everything here is for people
/// and tools.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Metadata {
    /// Model name (`digits-mlp`).
    pub name: String,
    /// Version string chosen by the producer.
    pub version: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// Tool that made it (`perch-host 0.1.0 convert`).
    pub producer: String,
    /// Free text for people; no tool reads it.
    pub description: String,
    /// Class names in class-index order, for classifiers.
    pub class_labels: Vec<String>,
    /// Free key-values; `train.*` keys are perch's own ([`FEATURES_PROPERTY`],
    /// [`TARGET_PROPERTY`]), others pass through untouched.
    pub properties: BTreeMap<String, String>,
    /// Optional tagged sections (training metrics, drift baselines, canary input…). A
    /// reader skips kinds it does not know, so sections can be added without a format break.
    pub sections: Vec<Section>,
}

/// Property holding the names of the model's input features, in input order, as one CSV
/// record (`perch-host train` writes it; see `docs/artifact.md`).
pub const FEATURES_PROPERTY: &str = "train.features";
/// Property holding the name of the column the model was trained to predict.
pub const TARGET_PROPERTY: &str = "train.target";

impl Metadata {
    /// The recorded names of the input features, in input order: the `train.features`
    /// property (or `onnx.train.features`, for a perch model that went through ONNX and was
    /// converted back). `None` when not recorded or not one CSV record of names.
    pub fn feature_names(&self) -> Option<Vec<String>> {
        let text = self
            .properties
            .get(FEATURES_PROPERTY)
            .or_else(|| self.properties.get(&format!("onnx.{FEATURES_PROPERTY}")))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        let record = reader.records().next()?.ok()?;
        let names: Vec<String> = record.iter().map(str::to_string).collect();
        (!names.is_empty() && names.iter().all(|n| !n.is_empty())).then_some(names)
    }

    /// The recorded name of the training target column (`train.target`), if any.
    pub fn target_name(&self) -> Option<&str> {
        self.properties
            .get(TARGET_PROPERTY)
            .or_else(|| self.properties.get(&format!("onnx.{TARGET_PROPERTY}")))
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }

    /// Records the feature names (as one CSV record, so that names holding commas or
    /// quotes survive) and the target column's name.
    pub fn set_feature_names(&mut self, features: &[String], target: &str) {
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        let text = writer
            .write_record(features)
            .ok()
            .and_then(|()| writer.into_inner().ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(|t| t.trim_end_matches('\n').to_string())
            .unwrap_or_else(|| features.join(","));
        self.properties.insert(FEATURES_PROPERTY.into(), text);
        self.properties
            .insert(TARGET_PROPERTY.into(), target.to_string());
    }
}

/// An opaque, tagged block of metadata; `kind` says how to read `bytes`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Section {
    /// What the bytes hold; see `docs/artifact.md` for the registered kinds.
    pub kind: u32,
    /// The encoded content; its layout depends on `kind`.
    pub bytes: Vec<u8>,
}

/// A complete native model: what a `.perch` artifact's payload holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Model {
    /// Descriptive metadata: names, labels, properties, sections.
    pub metadata: Metadata,
    /// The computation that [`crate::Engine`] runs.
    pub graph: Graph,
}
