//! What a model needs before anything is allocated for it: the memory it can take
//! ([`MemoryPlan`], from the weights and the inferred shapes) and what a runtime must know
//! to run it ([`Requirements`]: format version, ops, kernels, planned peak memory), the
//! metadata section the host writes into every artifact it produces.
//!
//! The plan is an upper bound of what the native engine allocates: the decoded weights,
//! the engine's prepared copy of them (a sparse weight may also be kept dense), one buffer
//! per value for every sample of a batch, and fixed scratch. Loading checks it against a
//! budget ([`check_memory`]) before the engine plans anything, so a small file that
//! describes huge tensors is refused with the figures instead of exhausting memory.

use super::sections::SectionError;
use super::{DType, Graph, Layer, Metadata, Model, Tensor, TensorData, ValueShapes};
use serde::{Deserialize, Serialize};

/// Section kind of the [`Requirements`].
pub const REQUIREMENTS: u32 = 4;

/// Default memory budget of `perch run` and of loading a model from the library, 1 GiB:
/// above what edge models need (the largest sample model plans under 10 MB), below what
/// a Raspberry Pi 4 has.
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 1 << 30;

/// Rows of the batched sparse kernel's transposed input tile (the engine's `CSR_TILE`, or
/// more).
const SPARSE_TILE_BOUND: u64 = 16;

/// Ops this build runs natively (every [`Layer::kind`]).
pub const SUPPORTED_OPS: &[&str] = &[
    "standardize",
    "dense",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool",
    "flatten",
    "reshape",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "softmax",
    "argmax",
    "tree_ensemble",
    "quantize",
    "dequantize",
    "qdense",
    "qconv2d",
    "add",
    "clip",
    "hard_sigmoid",
    "hard_swish",
    "channel_affine",
    "concat",
    "pad",
    "transpose",
    "qadd",
    "qclamp",
    "qlookup",
    "qavg_pool2d",
    "qglobal_avg_pool",
    "to_u8",
    "to_i8",
];

/// Kernel families this build has (see [`Requirements::kernels`]).
pub const SUPPORTED_KERNELS: &[&str] = &["f32", "int8", "sparse", "tree"];

/// Memory a graph can take on the native engine, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// The weights as decoded from the artifact.
    pub weights_bytes: u64,
    /// At most what the engine's prepared copy of the weights takes (layouts, widened
    /// vectors, quantization tables, a dense copy of each sparse weight).
    pub prepared_bytes: u64,
    /// Buffers per sample of a batch: every value of the graph.
    pub per_sample_bytes: u64,
    /// Fixed scratch (transposed tiles, quantized rows and patches).
    pub scratch_bytes: u64,
}

impl MemoryPlan {
    /// The planned peak for a batch of `batch` samples.
    pub fn peak_bytes(&self, batch: usize) -> u128 {
        u128::from(self.weights_bytes)
            + u128::from(self.prepared_bytes)
            + u128::from(self.scratch_bytes)
            + batch as u128 * u128::from(self.per_sample_bytes)
    }

    /// The largest batch whose peak stays within `max_bytes` (0 when not even one sample
    /// fits).
    pub fn max_batch_within(&self, max_bytes: u64) -> usize {
        let fixed = self.peak_bytes(0);
        if u128::from(max_bytes) < fixed + u128::from(self.per_sample_bytes) {
            return 0;
        }
        let room = u128::from(max_bytes) - fixed;
        usize::try_from(room / u128::from(self.per_sample_bytes.max(1))).unwrap_or(usize::MAX)
    }
}

/// Why a model does not fit a budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// The planned peak memory is over the budget.
    #[error(
        "the model needs {needed} bytes ({}) for a batch of {batch} (weights {weights}, \
         prepared weights {prepared}, buffers {per_sample} per sample, scratch {scratch}); \
         the limit is {limit} bytes ({})",
        mib(*needed), mib(u128::from(*limit))
    )]
    Memory {
        /// Planned peak in bytes, [`MemoryPlan::peak_bytes`] for `batch`.
        needed: u128,
        /// The batch it was planned for.
        batch: usize,
        /// The budget in bytes (`--max-memory`, or [`DEFAULT_MAX_MEMORY_BYTES`]).
        limit: u64,
        /// Bytes of the decoded weights ([`MemoryPlan::weights_bytes`]).
        weights: u64,
        /// Bytes of the prepared weights ([`MemoryPlan::prepared_bytes`]).
        prepared: u64,
        /// Bytes of buffers per sample ([`MemoryPlan::per_sample_bytes`]).
        per_sample: u64,
        /// Bytes of fixed scratch ([`MemoryPlan::scratch_bytes`]).
        scratch: u64,
    },
    /// The planned peak memory a manifest states is over the budget.
    #[error(
        "the model states it needs {needed} bytes ({}) for one sample; the limit is {limit} bytes ({})",
        mib(u128::from(*needed)), mib(u128::from(*limit))
    )]
    StatedMemory {
        /// Planned peak the manifest states.
        needed: u64,
        /// The budget in bytes.
        limit: u64,
    },
    /// The model needs something this build does not have.
    #[error("the model needs {what} {name:?}, which this perch does not have (upgrade perch)")]
    Unsupported {
        /// "op", "kernel" or "format version".
        what: &'static str,
        /// The missing op's, kernel's or version's name.
        name: String,
    },
}

fn mib(bytes: u128) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn f32_bytes(n: usize) -> u64 {
    (n as u64).saturating_mul(4)
}

fn bias_bytes(bias: Option<&Tensor>, channels: u64) -> u64 {
    bias.map_or(0, |b| b.size_bytes() as u64)
        .max(channels.saturating_mul(4))
}

/// Plans `graph`'s memory from its tensors and the `shapes` validation inferred.
pub fn plan_memory(graph: &Graph, shapes: &ValueShapes) -> MemoryPlan {
    let mut plan = MemoryPlan::default();
    for node in &graph.nodes {
        let layer = &node.layer;
        plan.weights_bytes = plan
            .weights_bytes
            .saturating_add(layer.param_bytes() as u64);
        let in_shape = node
            .inputs
            .first()
            .and_then(|&v| shapes.values.get(v as usize))
            .map(|(_, s)| s.as_slice());
        let input_len: u64 = in_shape.map_or(0, |s| s.iter().map(|&d| d as u64).product());
        let last_axis = in_shape.and_then(|s| s.last().copied()).unwrap_or(1) as u64;
        // Values of the input padded by `padding` (`[.., h, w]`): a depthwise layer with
        // padding copies its input, padded, into scratch.
        let padded_len = |padding: [u32; 4]| {
            let (h, w) = match in_shape.unwrap_or(&[]) {
                [.., h, w] => (*h as u64, *w as u64),
                _ => (1, 1),
            };
            let c = input_len / (h * w).max(1);
            let [t, l, b, r] = padding.map(u64::from);
            h.saturating_add(t + b)
                .saturating_mul(w.saturating_add(l + r))
                .saturating_mul(c)
        };
        let (prepared, scratch) = match layer {
            Layer::Standardize { .. } => (last_axis.saturating_mul(8), 0),
            Layer::Dense { weight, bias } => {
                let out = u64::from(weight.shape.first().copied().unwrap_or(0));
                let cols = u64::from(weight.shape.get(1).copied().unwrap_or(0));
                let dense = out.saturating_mul(cols).saturating_mul(4);
                let w = match &weight.data {
                    // The sparse form, and a dense copy when the dense kernel wins.
                    TensorData::Csr { .. } => (weight.size_bytes() as u64).saturating_add(dense),
                    _ => dense,
                };
                let scratch = if weight.is_sparse() {
                    cols.saturating_mul(SPARSE_TILE_BOUND).saturating_mul(4)
                } else {
                    0
                };
                (w.saturating_add(bias_bytes(bias.as_ref(), out)), scratch)
            }
            Layer::Conv2d {
                weight,
                bias,
                padding,
                ..
            } => {
                let oc = u64::from(weight.shape.first().copied().unwrap_or(0));
                let depth = (weight.numel() as u64) / oc.max(1);
                // A layer with padding may copy its input, padded, into scratch, besides an
                // im2col tile (32 KiB, or one 24-row tile of patches when those are larger).
                let im2col = (24 * 4 * depth).max(32 * 1024);
                (
                    f32_bytes(weight.numel()).saturating_add(bias_bytes(bias.as_ref(), oc)),
                    padded_len(*padding)
                        .saturating_mul(4)
                        .saturating_add(im2col),
                )
            }
            Layer::QDense { weight, bias, .. } | Layer::QConv2d { weight, bias, .. } => {
                let channels = u64::from(weight.shape.first().copied().unwrap_or(0));
                let depth = (weight.numel() as u64) / channels.max(1);
                // A convolution's input padded and an im2col tile (32 KiB, or 24 patches
                // of quads when those are larger); a dense layer has neither.
                let conv_scratch = match layer {
                    Layer::QConv2d { padding, .. } => {
                        padded_len(*padding).saturating_add((24 * 4 * depth).max(32 * 1024))
                    }
                    _ => 0,
                };
                // Two layouts of the int8 weights, per-channel tables (sums, multipliers,
                // biases, shifts, rounding, padded to 8 lanes) and an accumulator per channel.
                let tables = channels.div_ceil(8).saturating_mul(8).saturating_mul(48);
                let prepared = (weight.numel() as u64)
                    .saturating_mul(2)
                    .saturating_add(tables)
                    .saturating_add(bias_bytes(bias.as_ref(), channels));
                // A quantized row or sample under a dynamic input.
                let scratch = input_len.saturating_add(conv_scratch);
                (prepared, scratch)
            }
            Layer::TreeEnsemble { .. } => ((layer.param_bytes() as u64).saturating_mul(2), 0),
            Layer::ArgMax { labels } => (labels.as_ref().map_or(0, |l| l.len() as u64 * 8), 0),
            _ => (0, 0),
        };
        plan.prepared_bytes = plan.prepared_bytes.saturating_add(prepared);
        plan.scratch_bytes = plan.scratch_bytes.max(scratch);
    }
    plan.per_sample_bytes = shapes
        .values
        .iter()
        .map(|(dtype, shape)| {
            let n: u64 = shape.iter().map(|&d| d as u64).product();
            n.saturating_mul(match dtype {
                DType::F32 => 4,
                DType::I64 => 8,
                DType::U8 | DType::I8 => 1,
            })
        })
        .fold(0u64, u64::saturating_add);
    plan
}

/// Checks that `plan` fits `max_bytes` for a batch of `batch` samples.
///
/// # Errors
/// [`BudgetError::Memory`] with the figures.
pub fn check_memory(plan: &MemoryPlan, batch: usize, max_bytes: u64) -> Result<(), BudgetError> {
    let needed = plan.peak_bytes(batch);
    if needed <= u128::from(max_bytes) {
        return Ok(());
    }
    Err(BudgetError::Memory {
        needed,
        batch,
        limit: max_bytes,
        weights: plan.weights_bytes,
        prepared: plan.prepared_bytes,
        per_sample: plan.per_sample_bytes,
        scratch: plan.scratch_bytes,
    })
}

/// What running a model takes: the artifact's [`REQUIREMENTS`] section, written by the host
/// into every artifact it produces, shown by `perch info`, and checked by the agent against
/// its budget before it installs a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// The artifact format version the payload needs.
    pub format_version: u16,
    /// The graph's op kinds ([`Layer::kind`]), sorted, each once.
    pub ops: Vec<String>,
    /// Kernel families: `f32`, `int8`, `sparse`, `tree`.
    pub kernels: Vec<String>,
    /// The memory plan on the native engine.
    pub memory: MemoryPlan,
    /// Planned peak for one sample, bytes (`memory.peak_bytes(1)`).
    pub peak_memory_bytes: u64,
}

impl Requirements {
    /// Computes the requirements of `graph` from its tensors and inferred `shapes`.
    pub fn of(graph: &Graph, shapes: &ValueShapes) -> Requirements {
        let memory = plan_memory(graph, shapes);
        let mut ops: Vec<String> = graph
            .nodes
            .iter()
            .map(|n| n.layer.kind().to_string())
            .collect();
        ops.sort();
        ops.dedup();
        let mut kernels = Vec::new();
        let mut add = |k: &str| {
            if !kernels.iter().any(|x| x == k) {
                kernels.push(k.to_string());
            }
        };
        for n in &graph.nodes {
            match &n.layer {
                Layer::QDense { .. }
                | Layer::QConv2d { .. }
                | Layer::Quantize(_)
                | Layer::Dequantize(_)
                | Layer::QAdd { .. }
                | Layer::QClamp { .. }
                | Layer::QLookup { .. }
                | Layer::QAvgPool2d { .. }
                | Layer::QGlobalAvgPool { .. }
                | Layer::ToU8
                | Layer::ToI8 => add("int8"),
                Layer::TreeEnsemble { .. } => add("tree"),
                Layer::Dense { weight, .. } if weight.is_sparse() => add("sparse"),
                _ => add("f32"),
            }
        }
        kernels.sort();
        Requirements {
            format_version: 1,
            ops,
            kernels,
            peak_memory_bytes: u64::try_from(memory.peak_bytes(1)).unwrap_or(u64::MAX),
            memory,
        }
    }

    /// Checks that this build can run a model with these requirements within
    /// `max_memory_bytes` (for one sample).
    ///
    /// # Errors
    /// The first thing missing or over the budget.
    pub fn check(&self, max_memory_bytes: u64) -> Result<(), BudgetError> {
        if self.format_version > crate::artifact::FORMAT_VERSION {
            return Err(BudgetError::Unsupported {
                what: "format version",
                name: self.format_version.to_string(),
            });
        }
        if let Some(op) = self
            .ops
            .iter()
            .find(|o| !SUPPORTED_OPS.contains(&o.as_str()))
        {
            return Err(BudgetError::Unsupported {
                what: "op",
                name: op.clone(),
            });
        }
        if let Some(k) = self
            .kernels
            .iter()
            .find(|k| !SUPPORTED_KERNELS.contains(&k.as_str()))
        {
            return Err(BudgetError::Unsupported {
                what: "kernel",
                name: k.clone(),
            });
        }
        let peak = u128::from(self.peak_memory_bytes).max(self.memory.peak_bytes(1));
        if peak > u128::from(max_memory_bytes) {
            return Err(BudgetError::Memory {
                needed: peak,
                batch: 1,
                limit: max_memory_bytes,
                weights: self.memory.weights_bytes,
                prepared: self.memory.prepared_bytes,
                per_sample: self.memory.per_sample_bytes,
                scratch: self.memory.scratch_bytes,
            });
        }
        Ok(())
    }
}

/// Checks what a signed manifest states a model needs ([`crate::artifact::manifest::Requirements`]:
/// format version, planned peak memory for one sample, op and kernel names) against this
/// build and `max_memory_bytes`, before the artifact is downloaded.
///
/// # Errors
/// The first thing missing or over the budget.
#[cfg_attr(not(feature = "device"), allow(dead_code))] // the agent's
pub(crate) fn check_stated(
    stated: &crate::artifact::manifest::Requirements,
    max_memory_bytes: u64,
) -> Result<(), BudgetError> {
    if stated.format_version > crate::artifact::FORMAT_VERSION {
        return Err(BudgetError::Unsupported {
            what: "format version",
            name: stated.format_version.to_string(),
        });
    }
    if let Some(need) = stated
        .needs
        .iter()
        .find(|n| !SUPPORTED_OPS.contains(&n.as_str()) && !SUPPORTED_KERNELS.contains(&n.as_str()))
    {
        return Err(BudgetError::Unsupported {
            what: "op or kernel",
            name: need.clone(),
        });
    }
    if let Some(peak) = stated.peak_memory_bytes
        && peak > max_memory_bytes
    {
        return Err(BudgetError::StatedMemory {
            needed: peak,
            limit: max_memory_bytes,
        });
    }
    Ok(())
}

impl Metadata {
    /// The [`Requirements`] section, if the artifact has one.
    ///
    /// # Errors
    /// [`SectionError::Decode`] when its bytes are not [`Requirements`].
    pub fn requirements(&self) -> Result<Option<Requirements>, SectionError> {
        self.section(REQUIREMENTS)
    }
}

impl Model {
    /// Computes the graph's [`Requirements`] and writes them into the metadata (replacing
    /// any stated before), as the host does for every artifact it writes.
    ///
    /// # Errors
    /// The graph does not validate.
    pub fn stamp_requirements(&mut self) -> Result<Requirements, super::GraphError> {
        let shapes = self.graph.infer_shapes()?;
        let req = Requirements::of(&self.graph, &shapes);
        self.metadata
            .set_section(REQUIREMENTS, &req)
            .map_err(|e| super::GraphError::Shape {
                node: "metadata".into(),
                layer: "requirements",
                reason: e.to_string(),
            })?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense_graph(inputs: u32, outputs: u32) -> Graph {
        let dense = Layer::Dense {
            weight: Tensor::f32(
                vec![outputs, inputs],
                vec![0.5; (inputs * outputs) as usize],
            ),
            bias: None,
        };
        let layers = [("d", dense), ("s", Layer::Softmax)];
        crate::test_fixtures::chain(inputs, layers, &[("y", 2)]).graph
    }

    #[test]
    fn a_dense_layer_plans_its_weights_copies_and_buffers() {
        let g = dense_graph(100, 10);
        let plan = plan_memory(&g, &g.infer_shapes().unwrap());
        assert_eq!(plan.weights_bytes, 4000);
        // The engine's copy of the weight and a zero bias.
        assert_eq!(plan.prepared_bytes, 4000 + 40);
        // x (100), dense (10), softmax (10) floats per sample.
        assert_eq!(plan.per_sample_bytes, 480);
        assert_eq!(plan.peak_bytes(2), 8040 + 960);
        assert_eq!(plan.max_batch_within(8040 + 960), 2);
        assert_eq!(plan.max_batch_within(8040 + 959), 1);
        assert_eq!(plan.max_batch_within(100), 0);
        let e = check_memory(&plan, 1, 1000).unwrap_err();
        assert!(e.to_string().contains("limit is 1000 bytes"), "{e}");
        assert!(check_memory(&plan, 1, 1 << 20).is_ok());
    }

    #[test]
    fn requirements_name_ops_kernels_and_memory_and_are_checked() {
        let mut m = Model {
            metadata: Metadata::default(),
            graph: dense_graph(4, 3),
        };
        let req = m.stamp_requirements().unwrap();
        assert_eq!(req.ops, vec!["dense", "softmax"]);
        assert_eq!(req.kernels, vec!["f32"]);
        assert_eq!(req.peak_memory_bytes as u128, req.memory.peak_bytes(1));
        assert_eq!(m.metadata.requirements().unwrap(), Some(req.clone()));
        assert!(req.check(1 << 20).is_ok());
        assert!(matches!(
            req.check(10),
            Err(BudgetError::Memory { batch: 1, .. })
        ));
        let mut newer = req.clone();
        newer.ops.push("attention".into());
        let e = newer.check(1 << 20).unwrap_err();
        assert!(e.to_string().contains("op \"attention\""), "{e}");
        let mut newer = req;
        newer.format_version = 2;
        assert!(newer.check(1 << 20).is_err());
    }

    #[test]
    fn what_a_manifest_states_is_checked_before_download() {
        use crate::artifact::manifest::Requirements as Stated;
        let stated = |peak, needs: &[&str]| Stated {
            format_version: crate::artifact::FORMAT_VERSION,
            peak_memory_bytes: peak,
            needs: needs.iter().map(|n| n.to_string()).collect(),
        };
        assert!(check_stated(&stated(Some(1000), &["dense", "f32"]), 1000).is_ok());
        assert!(check_stated(&stated(None, &[]), 0).is_ok());
        let e = check_stated(&stated(Some(1001), &["dense"]), 1000).unwrap_err();
        assert_eq!(
            e,
            BudgetError::StatedMemory {
                needed: 1001,
                limit: 1000
            }
        );
        let e = check_stated(&stated(Some(10), &["dense", "attention"]), 1000).unwrap_err();
        assert!(e.to_string().contains("\"attention\""), "{e}");
        let mut newer = stated(None, &[]);
        newer.format_version = crate::artifact::FORMAT_VERSION + 1;
        assert!(check_stated(&newer, 1000).is_err());
    }

    #[test]
    fn every_layer_kind_is_listed_as_supported() {
        let kinds = [
            Layer::Relu.kind(),
            Layer::Softmax.kind(),
            Layer::Flatten.kind(),
            Layer::GlobalAvgPool.kind(),
            Layer::Sigmoid.kind(),
            Layer::Tanh.kind(),
            Layer::Add.kind(),
            Layer::HardSwish.kind(),
            Layer::ToU8.kind(),
            Layer::ToI8.kind(),
        ];
        for k in kinds {
            assert!(SUPPORTED_OPS.contains(&k), "{k}");
        }
        assert_eq!(SUPPORTED_OPS.len(), 34, "one entry per Layer variant");
    }
}
